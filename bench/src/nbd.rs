//! `bench nbd`: a full backup of the dataset's `disk.raw` read as a file against the same image
//! served by `qemu-nbd` over a Unix socket (`--disk disk0=nbd+unix:///?socket=…`): wall time,
//! the mover's CPU, `qemu-nbd`'s CPU and the server's, median over runs, runs alternating
//! between the two. Each backup goes into a fresh repository (a second full backup into the
//! same one would upload nothing). Goal: NBD within 10 % of the file path.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};
use tests::{ChildServer, Launch};

use crate::measure::{median, proc_cpu, timed};

/// One full backup's figures.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    wall: f64,
    mover_cpu: f64,
    nbd_cpu: f64,
    server_cpu: f64,
    read: u64,
}

/// `qemu-nbd`, killed when dropped.
struct QemuNbd(Child);

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the comparison on `ds` (`disk.raw`; with `quick`, a small dataset is built there when
/// it has none), `runs` runs of each method, scratch in `work`.
pub fn run(ds: &Path, quick: bool, runs: Option<usize>, work: &Path) -> Result<()> {
    crate::compare::dataset(ds, quick)?;
    let runs = runs.unwrap_or(if quick { 1 } else { 3 });
    std::fs::create_dir_all(work)?;
    let img = ds.join("disk.raw");
    // Warm the page cache.
    std::io::copy(
        &mut std::io::BufReader::new(std::fs::File::open(&img)?),
        &mut std::io::sink(),
    )?;
    let sock = work.join("nbd.sock");
    let _ = std::fs::remove_file(&sock);
    let child = Command::new("qemu-nbd")
        .args([
            "-r",
            "-t",
            "-e",
            "4",
            "-f",
            "raw",
            "--cache=writeback",
            "-k",
        ])
        .arg(&sock)
        .arg(&img)
        .stdin(Stdio::null())
        .spawn()
        .context("qemu-nbd (qemu-utils; scripts/setup.sh installs it)")?;
    let nbd = QemuNbd(child);
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    wait_for(&uri)?;
    let (mut file, mut over_nbd) = (Vec::new(), Vec::new());
    for i in 0..runs {
        eprintln!("bench nbd: run {}/{runs}", i + 1);
        let order: [bool; 2] = if i % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for use_nbd in order {
            let disk = if use_nbd {
                uri.clone()
            } else {
                img.display().to_string()
            };
            let r = backup(&disk, work, nbd.0.id())?;
            if use_nbd {
                over_nbd.push(r);
            } else {
                file.push(r);
            }
        }
    }
    drop(nbd);
    let med = |v: &[Run], f: fn(&Run) -> f64| median(v.iter().map(f).collect());
    println!(
        "bench nbd: full backup of {} ({} MB), {runs} run(s) per method, median",
        img.display(),
        std::fs::metadata(&img)?.len() / 1_000_000
    );
    println!("Method: the source-mover binary, --base none, a fresh repo-server per backup on loopback; file: --disk disk0={}; nbd: --disk disk0={uri} served by qemu-nbd -r -f raw --cache=writeback; warm page cache; CPU = user+sys (mover from /usr/bin/time; qemu-nbd and server from /proc over the backup).", img.display());
    println!();
    println!("| source | wall s | mover CPU s | qemu-nbd CPU s | server CPU s | read MB |");
    println!("|---|---|---|---|---|---|");
    for (name, v) in [("file", &file), ("nbd+unix", &over_nbd)] {
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
            med(v, |r| r.wall),
            med(v, |r| r.mover_cpu),
            med(v, |r| r.nbd_cpu),
            med(v, |r| r.server_cpu),
            v[0].read / 1_000_000
        );
    }
    let (fw, nw) = (med(&file, |r| r.wall), med(&over_nbd, |r| r.wall));
    let (fc, nc) = (
        med(&file, |r| r.mover_cpu + r.server_cpu),
        med(&over_nbd, |r| r.mover_cpu + r.server_cpu + r.nbd_cpu),
    );
    println!();
    println!(
        "nbd/file: wall {:.2}× ({:+.1} %), CPU incl. qemu-nbd {:.2}× ({:+.1} %); goal: wall within 10 %",
        nw / fw,
        (nw / fw - 1.0) * 100.0,
        nc / fc,
        (nc / fc - 1.0) * 100.0
    );
    if file[0].read != over_nbd[0].read {
        eprintln!(
            "bench nbd: note: the file path read {} bytes, NBD {} (allocation seen through SEEK_DATA vs base:allocation)",
            file[0].read, over_nbd[0].read
        );
    }
    Ok(())
}

/// Waits until the export answers a handshake.
fn wait_for(uri: &str) -> Result<()> {
    let u = source_mover::nbd::NbdUri::parse(uri)?;
    for _ in 0..400 {
        if source_mover::nbd::Client::connect(&u, &[], Default::default()).is_ok() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    bail!("qemu-nbd never served {uri}")
}

/// One full backup of `disk` into a fresh repository.
fn backup(disk: &str, work: &Path, nbd_pid: u32) -> Result<Run> {
    let repo = work.join("nbd-repo");
    let _ = std::fs::remove_dir_all(&repo);
    let _ = std::fs::remove_dir_all(work.join("nbd-state"));
    let server = ChildServer::spawn(&Launch {
        test_tokens: false,
        ..Launch::new(&repo)
    })
    .context("start repo-server (cargo build --release --workspace first)")?;
    let pid = server.pid();
    let mut c = Command::new(tests::mover_binary());
    c.arg("backup")
        .arg("--repo")
        .arg(server.url())
        .arg("--token-file")
        .arg(server.admin_token_file())
        .args([
            "--source",
            "bench-nbd",
            "--base",
            "none",
            "--json",
            "--state-dir",
        ])
        .arg(work.join("nbd-state"))
        .arg("--disk")
        .arg(format!("disk0={disk}"));
    let (cpu0, n0) = (proc_cpu(pid), proc_cpu(nbd_pid));
    let (wall, cpu, _, out) = timed(&mut c, None)?;
    let v: serde_json::Value = serde_json::from_slice(&out)?;
    let r = Run {
        wall,
        mover_cpu: cpu,
        nbd_cpu: proc_cpu(nbd_pid) - n0,
        server_cpu: proc_cpu(pid) - cpu0,
        read: v["read_bytes"].as_u64().context("read_bytes")?,
    };
    drop(server);
    Ok(r)
}
