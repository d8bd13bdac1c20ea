//! Servers for tests.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use repo_server::config::{Role, TokenConfig};
use repo_server::{App, Config};

/// Admin token (tenant `ops`).
pub const ADMIN: &str = "admin-token-0123456789";
/// Backup token of tenant `acme`.
pub const BACKUP_A: &str = "backup-acme-0123456789";
/// Reader token of tenant `acme`.
pub const READER_A: &str = "reader-acme-0123456789";
/// Backup token of tenant `globex`.
pub const BACKUP_B: &str = "backup-globex-0123456789";

/// The tokens every test server knows.
pub fn tokens() -> Vec<TokenConfig> {
    let t = |token: &str, tenant: &str, role| TokenConfig {
        token: token.into(),
        tenant: tenant.into(),
        role,
    };
    vec![
        t(ADMIN, "ops", Role::Admin),
        t(BACKUP_A, "acme", Role::Backup),
        t(READER_A, "acme", Role::Reader),
        t(BACKUP_B, "globex", Role::Backup),
    ]
}

/// A repository served in-process.
#[derive(Debug)]
pub struct TestServer {
    /// Bound address.
    pub addr: SocketAddr,
    /// Data directory (inside `_dir`).
    pub data: PathBuf,
    /// The repository being served (to set its clock in tests).
    pub repo: std::sync::Arc<repo_server::repo::Repository>,
    /// The Samba server holding the data when `TEST_STORE=smb`.
    pub samba: Option<gateway::samba::Samba>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: Option<tempfile::TempDir>,
}

/// Whether the tests run against the gateway's store: `TEST_STORE=smb` puts every
/// [`TestServer`]'s data on a real Samba share (the catalog stays local), so the protocol suite
/// runs unchanged against the gateway.
pub fn smb_store() -> bool {
    std::env::var("TEST_STORE").is_ok_and(|v| v == "smb")
}

impl TestServer {
    /// Starts a server on a fresh data dir with the test tokens.
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// Starts a server after `tweak` adjusted the configuration.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Self::start_in(dir.path().join("data"), tweak).await;
        s._dir = Some(dir);
        s
    }

    /// Starts a server on `data` (kept by the caller).
    pub async fn start_in(data: PathBuf, tweak: impl FnOnce(&mut Config)) -> TestServer {
        let mut cfg = Config {
            data: data.clone(),
            tokens: tokens(),
            ..Config::default()
        };
        tweak(&mut cfg);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (app, samba) = if smb_store() {
            let dir = data.join("samba");
            let (samba, share) = tokio::task::spawn_blocking(move || {
                let samba = gateway::samba::Samba::start(&dir).unwrap();
                let share = gateway::share::Share::open(&samba.share_config("repo")).unwrap();
                (samba, std::sync::Arc::new(share))
            })
            .await
            .unwrap();
            let stores = gateway::stores(&share);
            (App::open_with(cfg, Some(stores)).unwrap(), Some(samba))
        } else {
            (App::open(cfg).unwrap(), None)
        };
        let repo = app.repo.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(repo_server::run(listener, app, async {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            data,
            repo,
            samba,
            stop: Some(tx),
            task: Some(task),
            _dir: None,
        }
    }

    /// Base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where the chunk files, index blobs and manifests are on this machine: the data
    /// directory, or the repository directory of the Samba share with `TEST_STORE=smb`.
    pub fn store_dir(&self) -> PathBuf {
        match &self.samba {
            Some(s) => s.share_dir().join("repo"),
            None => self.data.clone(),
        }
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }
}

/// The directory holding this workspace's built binaries: the target directory's `release/`,
/// where the bench binary lives and whose `deps/` holds the test executables.
///
/// # Panics
/// When the running executable's path has no parent.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap();
    match dir.file_name() {
        Some(n) if n == "deps" => dir.parent().unwrap().to_path_buf(),
        _ => dir.to_path_buf(),
    }
}

/// Path of the built binary `name` of this workspace (see [`bin_dir`]).
fn built_binary(name: &str) -> PathBuf {
    let bin = bin_dir().join(name);
    assert!(
        bin.is_file(),
        "{} is missing: build it first with `cargo build --release --workspace` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// Path of the built `repo-server` binary: the one users run (no fail point can fire in it).
pub fn server_binary() -> PathBuf {
    built_binary("repo-server")
}

/// Path of the crash-test build of `repo-server` (`src/bin/repo-server-failpoints.rs` of this
/// crate): the same program with the fail point named by `REPO_FAILPOINT` armed.
pub fn failpoint_server_binary() -> PathBuf {
    built_binary("repo-server-failpoints")
}

/// Path of the built `gateway` binary.
pub fn gateway_binary() -> PathBuf {
    built_binary("gateway")
}

/// Path of the built `source-mover` binary.
pub fn mover_binary() -> PathBuf {
    built_binary("source-mover")
}

/// A free TCP port on 127.0.0.1 (bound, then released): for a server that must come back on the
/// same address after a restart.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How to start a server binary as a child process ([`ChildServer::spawn`]). Start from
/// [`Launch::new`] and change fields with struct update syntax.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The binary: [`server_binary`], [`gateway_binary`] or [`failpoint_server_binary`] (all
    /// take the same command line).
    pub bin: PathBuf,
    /// The data directory (created). The configuration file is written beside it, `DATA.toml`.
    pub data: PathBuf,
    /// The address to listen on; the bound address is read back from the server's first line.
    pub listen: String,
    /// TOML appended to the configuration.
    pub extra: String,
    /// Environment of the child, beside `REPO_LOG=warn`.
    pub env: Vec<(String, String)>,
    /// Whether the configuration lists the test tokens ([`ADMIN`] and the others). Without them
    /// the server generates `DATA/admin.token`, as on a fresh install
    /// ([`ChildServer::admin_token_file`]).
    pub test_tokens: bool,
}

impl Launch {
    /// The shipped `repo-server` on `data`, on an ephemeral port, with the test tokens.
    pub fn new(data: &Path) -> Launch {
        Launch {
            bin: server_binary(),
            data: data.to_owned(),
            listen: "127.0.0.1:0".into(),
            extra: String::new(),
            env: Vec::new(),
            test_tokens: true,
        }
    }

    /// The configuration file's text.
    fn config(&self) -> String {
        let mut text = format!(
            "listen = \"{}\"\ndata = \"{}\"\n",
            self.listen,
            self.data.display()
        );
        for t in tokens().iter().filter(|_| self.test_tokens) {
            let role = match t.role {
                Role::Admin => "admin",
                Role::Backup => "backup",
                Role::Reader => "reader",
            };
            text.push_str(&format!(
                "[[tokens]]\ntoken = \"{}\"\ntenant = \"{}\"\nrole = \"{role}\"\n",
                t.token, t.tenant
            ));
        }
        text.push_str(&self.extra);
        text
    }
}

/// A server binary as a child process, killed when dropped.
#[derive(Debug)]
pub struct ChildServer {
    /// Bound address.
    pub addr: SocketAddr,
    /// Data directory.
    pub data: PathBuf,
    child: Child,
}

impl ChildServer {
    /// Starts the binary on `data` with the test tokens, listening on an ephemeral port.
    pub fn start(data: &Path) -> ChildServer {
        Self::start_at(data, "127.0.0.1:0")
    }

    /// Starts the binary on `data`, listening on `listen`.
    pub fn start_at(data: &Path, listen: &str) -> ChildServer {
        Self::start_with(data, listen, "", &[])
    }

    /// Starts the binary on `data`, listening on `listen`, with `extra` appended to its TOML
    /// configuration and `env` in its environment.
    pub fn start_with(data: &Path, listen: &str, extra: &str, env: &[(&str, &str)]) -> ChildServer {
        Self::start_bin(&server_binary(), data, listen, extra, env)
    }

    /// [`ChildServer::start_with`] for another binary of the same command line (the gateway,
    /// or [`failpoint_server_binary`] with `REPO_FAILPOINT` in `env`).
    pub fn start_bin(
        bin: &Path,
        data: &Path,
        listen: &str,
        extra: &str,
        env: &[(&str, &str)],
    ) -> ChildServer {
        let launch = Launch {
            bin: bin.to_owned(),
            data: data.to_owned(),
            listen: listen.into(),
            extra: extra.into(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            test_tokens: true,
        };
        Self::spawn(&launch).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Writes the configuration, starts the binary and waits until it listens (its first line
    /// of output, `listening on ADDR`).
    ///
    /// # Errors
    /// Writing the configuration, starting the process, or a first line that is not the address
    /// (the server failed to start; its errors went to stderr).
    pub fn spawn(launch: &Launch) -> anyhow::Result<ChildServer> {
        use anyhow::Context;
        std::fs::create_dir_all(&launch.data)?;
        let cfg_path = launch.data.with_extension("toml");
        std::fs::write(&cfg_path, launch.config())?;
        let mut child = Command::new(&launch.bin)
            .arg("--config")
            .arg(&cfg_path)
            .envs(launch.env.iter().cloned())
            .env("REPO_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", launch.bin.display()))?;
        match listening_address(&mut child) {
            Ok(addr) => Ok(ChildServer {
                addr,
                data: launch.data.clone(),
                child,
            }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    /// Where the server keeps the admin token it generates when no tokens are configured
    /// ([`Launch::test_tokens`] off).
    pub fn admin_token_file(&self) -> PathBuf {
        self.data.join("admin.token")
    }

    /// Base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// SIGTERM, then waits up to `within` for the exit code.
    pub fn terminate(mut self, within: std::time::Duration) -> Option<i32> {
        // SAFETY: not needed; `kill` is a plain syscall on our own child's pid.
        let pid = self.child.id() as libc::pid_t;
        assert_eq!(unsafe_free_kill(pid, libc::SIGTERM), 0);
        let t = std::time::Instant::now();
        while t.elapsed() < within {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        None
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has ended.
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// SIGKILL, keeping the value (to be replaced by a restarted server).
    pub fn kill9_in_place(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every regular file under `dir` (recursively), in no particular order.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// Every file under `dir` with the blake3 of its content, except RocksDB's own info logs and
/// a test Samba server's directory (its state and logs change by themselves).
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                if e.file_name() != "samba" {
                    stack.push(p);
                }
            } else {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("LOG") {
                    continue;
                }
                let content = std::fs::read(&p).unwrap();
                out.insert(
                    p.strip_prefix(dir).unwrap().to_path_buf(),
                    blake3::hash(&content).to_hex().to_string(),
                );
            }
        }
    }
    out
}

/// Reads a server's first line of output, `listening on ADDR`, and parses the address.
fn listening_address(child: &mut Child) -> anyhow::Result<SocketAddr> {
    use anyhow::Context;
    let stdout = child.stdout.take().context("the child's stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .with_context(|| format!("unexpected output {line:?}"))?;
    Ok(addr.parse()?)
}

/// Sends a signal with the `kill` command (the workspace forbids `unsafe`).
fn unsafe_free_kill(pid: libc::pid_t, sig: i32) -> i32 {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    if status.success() {
        0
    } else {
        -1
    }
}
