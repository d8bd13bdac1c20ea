//! `bench export --dataset DIR [--quick]`: instant recovery's read throughput — a committed
//! backup read as an NBD export by `nbdcopy` (to `null:` and to a file) and `qemu-img convert`,
//! beside the mover's restore of the same backup to a file.
//!
//! Method (printed with the table): the `repo-server` binary on loopback with `[nbd] listen`,
//! a full backup of disk.raw by the `source-mover` binary (1 MiB blocks), one export of it made
//! over the API; then, per run, a cold start of each reader with a warm page cache (the chunk
//! files were just written): `source-mover restore --to FILE` (8 streams, sparse writes),
//! `nbdcopy URI null:` (libnbd's defaults: 4 connections when the server offers multi-conn, 64
//! requests in flight each), `nbdcopy URI FILE`, and `qemu-img convert -f raw -O raw URI FILE`.
//! Wall and CPU (user+sys of the client plus the server's own CPU over the step) from
//! `/usr/bin/time` and `/proc`; MB/s is the disk's apparent size over the wall time (holes
//! included: every reader skips them); medians over runs. The NBD server's block cache is the
//! default 64 MiB (on the 4 GiB dataset far less than the disk: later runs do not read from it).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use tests::{ChildServer, Launch};

use crate::measure::{median, proc_cpu, timed};

const METHOD: &str = "the repo-server binary on loopback with [nbd] listen; a full backup of disk.raw by the source-mover binary (1 MiB blocks); one export made over the API; per run, each reader with a warm page cache: `source-mover restore --to FILE` (8 streams, sparse writes), `nbdcopy URI null:` (libnbd defaults: multi-conn, 64 requests in flight per connection), `nbdcopy URI FILE`, `qemu-img convert -f raw -O raw URI FILE`. Wall and CPU (client user+sys plus the server's CPU over the step) from /usr/bin/time and /proc; MB/s = apparent disk size / wall (holes included, every reader skips them); medians over runs; the export's block cache is the default 64 MiB.";

/// Makes the command of one reader (fresh for every run).
type Reader<'a> = Box<dyn Fn() -> Command + 'a>;

/// Runs the benchmark on `ds/disk.raw` (built with `quick` if absent), `runs` times.
pub fn run(ds: &Path, quick: bool, runs: usize, work: Option<PathBuf>) -> Result<()> {
    if quick && !ds.join("disk.raw").exists() {
        std::fs::create_dir_all(ds)?;
        source_mover::demo::build_disk(ds)?;
    }
    let disk = ds.join("disk.raw");
    if !disk.exists() {
        bail!(
            "{} has no disk.raw: build it with ../shared/bench/make-dataset.sh {} 4",
            ds.display(),
            ds.display()
        );
    }
    let size = std::fs::metadata(&disk)?.len();
    let work = work.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("bench-export-{}", std::process::id()))
    });
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let port = tests::free_port();
    let server = ChildServer::spawn(&Launch {
        test_tokens: false,
        extra: format!("[nbd]\nlisten = \"127.0.0.1:{port}\"\n"),
        ..Launch::new(&work.join("repo"))
    })
    .context("start repo-server (cargo build --release --workspace first)")?;
    let (url, pid, token) = (server.url(), server.pid(), server.admin_token_file());
    let mover = tests::mover_binary();
    let out = Command::new(&mover)
        .arg("backup")
        .arg("--repo")
        .arg(&url)
        .arg("--token-file")
        .arg(&token)
        .args([
            "--source",
            "bench-vm",
            "--json",
            "--base",
            "none",
            "--state-dir",
        ])
        .arg(work.join("state"))
        .arg("--disk")
        .arg(format!("disk0={}", disk.display()))
        .output()?;
    if !out.status.success() {
        bail!("backup failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let id = v["backup_id"].as_str().context("backup id")?.to_owned();
    let tok = std::fs::read_to_string(&token)?.trim().to_owned();
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", "-X", "POST", "-H"])
        .arg(format!("Authorization: Bearer {tok}"))
        .arg(format!("{url}/v1/backups/{id}/disks/disk0/exports"))
        .output()?;
    if !out.status.success() {
        bail!(
            "creating the export failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let e: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let uri = e["uri"].as_str().context("export uri")?.to_owned();
    let file = work.join("out.raw");
    let steps: Vec<(&str, Reader<'_>)> = vec![
        (
            "source-mover restore → file",
            Box::new(|| {
                let mut c = Command::new(&mover);
                c.arg("restore")
                    .arg("--repo")
                    .arg(&url)
                    .arg("--token-file")
                    .arg(&token)
                    .args(["--backup", &id, "--disk", "disk0", "--json", "--to"])
                    .arg(&file);
                c
            }),
        ),
        (
            "nbdcopy export → null:",
            Box::new(|| {
                let mut c = Command::new("nbdcopy");
                c.arg(&uri).arg("null:");
                c
            }),
        ),
        (
            "nbdcopy export → file",
            Box::new(|| {
                let mut c = Command::new("nbdcopy");
                c.arg(&uri).arg(&file);
                c
            }),
        ),
        (
            "qemu-img convert export → file",
            Box::new(|| {
                let mut c = Command::new("qemu-img");
                c.args(["convert", "-f", "raw", "-O", "raw", &uri])
                    .arg(&file);
                c
            }),
        ),
    ];
    let mut table = String::new();
    writeln!(table, "## Export read throughput (`bench export`)\n")?;
    writeln!(table, "Method: {METHOD}\n")?;
    writeln!(
        table,
        "Disk: {} ({:.0} MiB apparent); runs: {runs}\n",
        disk.display(),
        size as f64 / f64::from(1 << 20)
    )?;
    writeln!(
        table,
        "| reader | wall s | MB/s | CPU s (client + server) |"
    )?;
    writeln!(table, "|---|---|---|---|")?;
    for (name, make) in &steps {
        let (mut walls, mut cpus) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let _ = std::fs::remove_file(&file);
            let cpu0 = proc_cpu(pid);
            let (wall, cpu, _, _) = timed(&mut make(), None)?;
            walls.push(wall);
            cpus.push(cpu + proc_cpu(pid) - cpu0);
        }
        let (w, c) = (median(walls), median(cpus));
        writeln!(
            table,
            "| {name} | {w:.2} | {:.0} | {c:.2} |",
            size as f64 / w / 1e6
        )?;
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&work);
    print!("{table}");
    Ok(())
}
