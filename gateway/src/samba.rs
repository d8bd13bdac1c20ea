//! A throwaway Samba server on loopback for the tests, the benchmarks and the demo: Debian's
//! `smbd` (installed by `scripts/setup.sh`) in the foreground with a `smb.conf` in a temp
//! directory, one share `backup` on a free port, SMB3 signing mandatory, user `smbuser`
//! (a Unix account is created when missing, which needs root). Not used in production.

use std::io;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use repo_server::config::ShareConfig;

/// User and password of the test share.
pub const USER: &str = "smbuser";
/// Password of [`USER`].
pub const PASSWORD: &str = "backup-pass-123";
/// Share name.
pub const SHARE: &str = "backup";

/// A running `smbd`; stopped on drop.
#[derive(Debug)]
pub struct Samba {
    dir: PathBuf,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    child: Option<Child>,
}

fn run(cmd: &mut Command) -> io::Result<()> {
    let out = cmd.output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

impl Samba {
    /// Writes the configuration under `dir` and starts `smbd` on a free port.
    ///
    /// # Errors
    /// `smbd` missing (run scripts/setup.sh), no root for the user, or it does not come up.
    pub fn start(dir: &Path) -> io::Result<Samba> {
        let share = dir.join("share");
        for d in [
            "share",
            "state/lock",
            "state/state",
            "state/cache",
            "state/private",
            "state/pid",
            "state/ncalrpc",
            "log",
        ] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        if Command::new("id")
            .arg(USER)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            run(Command::new("useradd").args(["-M", "-s", "/usr/sbin/nologin", USER]))?;
        }
        run(Command::new("chown").arg(USER).arg(&share))?;
        let free_port = || -> io::Result<u16> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port())
        };
        let port = free_port()?;
        std::fs::write(dir.join("smb.conf"), conf(dir, &share, port))?;
        let mut pw = Command::new("smbpasswd")
            .arg("-c")
            .arg(dir.join("smb.conf"))
            .args(["-s", "-a", USER])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                io::Error::new(e.kind(), format!("smbpasswd (run scripts/setup.sh): {e}"))
            })?;
        if let Some(mut stdin) = pw.stdin.take() {
            use std::io::Write;
            stdin.write_all(format!("{PASSWORD}\n{PASSWORD}\n").as_bytes())?;
        }
        let out = pw.wait_with_output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "smbpasswd: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let mut s = Samba {
            dir: dir.to_owned(),
            port,
            child: None,
        };
        // The port was free a moment ago; another process may take it first: then smbd exits
        // and another port is tried.
        let mut tries = 0;
        loop {
            match s.start_again() {
                Ok(()) => return Ok(s),
                Err(e) if tries >= 3 => return Err(e),
                Err(_) => {
                    tries += 1;
                    s.port = free_port()?;
                    std::fs::write(dir.join("smb.conf"), conf(dir, &share, s.port))?;
                }
            }
        }
    }

    /// Starts `smbd` again (after [`Samba::kill`]) on the same port and share.
    ///
    /// # Errors
    /// It does not come up within 15 s.
    pub fn start_again(&mut self) -> io::Result<()> {
        let child = Command::new("smbd")
            .args(["-F", "--no-process-group", "-s"])
            .arg(self.dir.join("smb.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("smbd (run scripts/setup.sh): {e}")))?;
        self.child = Some(child);
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(io::Error::other(format!(
                    "smbd exited ({status}) before listening on port {}; see {}",
                    self.port,
                    self.dir.join("log").display()
                )));
            }
            if started.elapsed() > Duration::from_secs(15) {
                return Err(io::Error::other("smbd did not start listening within 15 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Kills `smbd` and every child it forked for a client (SIGKILL: a crash, not a shutdown).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // smbd forks one process per client connection; they share the parent's pid file
            // directory but not its pid, so kill by the config file they all run with.
            let conf = self.dir.join("smb.conf");
            let _ = Command::new("pkill")
                .arg("-KILL")
                .arg("-f")
                .arg(format!("smbd.*{}", conf.display()))
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The share's directory on this machine (the tests look at the files).
    pub fn share_dir(&self) -> PathBuf {
        self.dir.join("share")
    }

    /// A `[share]` configuration for directory `path` of the share.
    pub fn share_config(&self, path: &str) -> ShareConfig {
        ShareConfig {
            server: format!("127.0.0.1:{}", self.port),
            share: SHARE.into(),
            path: path.into(),
            user: USER.into(),
            password: Some(PASSWORD.into()),
            credentials_file: None,
            connections: 4,
            lease: std::time::Duration::from_secs(60),
        }
    }

    /// The same as TOML, for a gateway's config file.
    pub fn share_toml(&self, path: &str) -> String {
        format!(
            "[share]\nserver = \"127.0.0.1:{}\"\nshare = \"{SHARE}\"\npath = \"{path}\"\nuser = \"{USER}\"\npassword = \"{PASSWORD}\"\n",
            self.port
        )
    }
}

impl Drop for Samba {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `smb.conf` of a test server in `dir` sharing `share` on `port`.
fn conf(dir: &Path, share: &Path, port: u16) -> String {
    let d = dir.display();
    format!(
        "[global]
  server role = standalone server
  interfaces = lo
  bind interfaces only = yes
  smb ports = {port}
  disable netbios = yes
  lock directory = {d}/state/lock
  state directory = {d}/state/state
  cache directory = {d}/state/cache
  private dir = {d}/state/private
  pid directory = {d}/state/pid
  ncalrpc dir = {d}/state/ncalrpc
  log file = {d}/log/log.%m
  passdb backend = tdbsam:{d}/state/private/passdb.tdb
  map to guest = never
  load printers = no
  printing = bsd
  printcap name = /dev/null
  disable spoolss = yes
  server min protocol = SMB3
  server signing = mandatory
[{SHARE}]
  path = {}
  read only = no
  valid users = {USER}
  force user = {USER}
",
        share.display()
    )
}
