//! `bench encryption --dataset DIR [--quick] [--runs N]`: the cost of encryption at rest, the
//! full backup of disk.raw with and without `--encryption-key`.
//!
//! Method: the `repo-server` and `source-mover` binaries as `bench compare` runs them (a fresh
//! repository per run, warm page cache), runs alternating plain and encrypted so drift hits
//! both alike; wall and CPU (the mover's user+sys from `/usr/bin/time` plus the server's CPU over
//! the step from `/proc`), medians. The key file is raw (`key create --raw`), so the figures are
//! the cost of keyed hashing and sealing; a passphrase-wrapped key adds its argon2id unwrapping
//! once per command (about 0.2 s).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use tests::{ChildServer, Launch};

use crate::measure::{du, median, proc_cpu, timed, Step};

/// Runs the comparison and prints the table.
pub fn run(ds: &Path, quick: bool, runs: Option<usize>, work: Option<PathBuf>) -> Result<()> {
    crate::compare::dataset(ds, quick)?;
    let runs = runs.unwrap_or(if quick { 1 } else { 5 });
    let work = work.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("bench-encryption-{}", std::process::id()))
    });
    std::fs::create_dir_all(&work)?;
    let mut r = std::io::BufReader::new(std::fs::File::open(ds.join("disk.raw"))?);
    std::io::copy(&mut r, &mut std::io::sink())?;
    let key = work.join("bench.key");
    let _ = std::fs::remove_file(&key);
    let out = Command::new(tests::mover_binary())
        .args(["key", "create", "--raw"])
        .arg(&key)
        .output()?;
    anyhow::ensure!(out.status.success(), "key create: {out:?}");
    let (mut plain, mut sealed) = (Vec::new(), Vec::new());
    for i in 0..runs {
        eprintln!("bench: encryption run {}/{runs}", i + 1);
        plain.push(full(ds, &work, None)?);
        sealed.push(full(ds, &work, Some(&key))?);
    }
    let _ = std::fs::remove_dir_all(&work);
    let med = |v: &[Step], f: fn(&Step) -> f64| median(v.iter().map(f).collect());
    let (pw, ew) = (med(&plain, |s| s.wall), med(&sealed, |s| s.wall));
    let (pc, ec) = (med(&plain, |s| s.cpu), med(&sealed, |s| s.cpu));
    let mib = |b: Option<u64>| b.map_or(0.0, |b| b as f64 / (1 << 20) as f64);
    println!(
        "full backup of {} ({} runs each, medians; alternating plain and encrypted)",
        ds.join("disk.raw").display(),
        runs
    );
    println!("| backup | wall s | CPU s | read MiB | sent MiB | repo MiB |");
    println!("|---|---|---|---|---|---|");
    for (name, v, w, c) in [("plain", &plain, pw, pc), ("encrypted", &sealed, ew, ec)] {
        let s = &v[0];
        println!(
            "| {name} | {w:.2} | {c:.2} | {:.0} | {:.0} | {:.0} |",
            mib(s.read),
            mib(s.sent),
            mib(Some(s.repo))
        );
    }
    let pct = |a: f64, b: f64| if a > 0.0 { (b - a) / a * 100.0 } else { 0.0 };
    println!(
        "cost of encryption: wall {:+.1} %, CPU {:+.1} % (goal: under 10 %)",
        pct(pw, ew),
        pct(pc, ec)
    );
    Ok(())
}

/// One full backup of disk.raw into a fresh repository, encrypted with `key` if given.
fn full(ds: &Path, work: &Path, key: Option<&Path>) -> Result<Step> {
    let repo = work.join("repo");
    let state = work.join("state");
    let _ = std::fs::remove_dir_all(&repo);
    let _ = std::fs::remove_dir_all(&state);
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
            "bench-vm",
            "--json",
            "--base",
            "none",
            "--state-dir",
        ])
        .arg(&state)
        .arg("--disk")
        .arg(format!("disk0={}", ds.join("disk.raw").display()));
    if let Some(k) = key {
        c.arg("--encryption-key").arg(k);
    }
    let cpu0 = proc_cpu(pid);
    let (wall, cpu, rss, out) = timed(&mut c, None)?;
    let cpu = cpu + proc_cpu(pid) - cpu0;
    let v: serde_json::Value = serde_json::from_slice(&out)?;
    drop(server);
    Ok(Step {
        wall,
        cpu,
        rss_mib: rss,
        read: v["read_bytes"].as_u64(),
        sent: v["sent_bytes"].as_u64(),
        repo: du(&repo),
    })
}
