//! This project in `bench compare`: the `repo-server` binary on loopback and the `source-mover`
//! binary, full backup, CBT incremental, restore of the incremental checked against the image.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use tests::{ChildServer, Launch};

use crate::measure::{du, proc_cpu, proc_rss_mib, timed, Step};

/// This project's three steps on the dataset `ds`, scratch in `work`: the `repo-server` binary
/// (as installed: no tokens configured, so it generates its admin token) and the `source-mover`
/// binary. Returns the steps and the server's peak RSS in MiB.
pub fn run(ds: &Path, work: &Path) -> Result<(Vec<Step>, f64)> {
    let (steps, rss, _) = run_with(ds, work, &[])?;
    Ok((steps, rss))
}

/// [`run`] with `extra_args` to both backups (`--zstd-level 1`, `--block-size 256K`, ...);
/// also returns the mover's JSON answers of the two backups.
pub fn run_with(
    ds: &Path,
    work: &Path,
    extra_args: &[String],
) -> Result<(Vec<Step>, f64, Vec<serde_json::Value>)> {
    let repo = work.join("ours-repo");
    let _ = std::fs::remove_dir_all(&repo);
    let _ = std::fs::remove_dir_all(work.join("ours-state"));
    let server = ChildServer::spawn(&Launch {
        test_tokens: false,
        ..Launch::new(&repo)
    })
    .context("start repo-server (cargo build --release --workspace first)")?;
    let url = server.url();
    let pid = server.pid();
    let token = server.admin_token_file();
    let mover = tests::mover_binary();
    let common = |c: &mut Command| {
        c.arg("--repo").arg(&url).arg("--token-file").arg(&token);
    };
    let mut steps = Vec::new();
    let mut answers = Vec::new();
    let result = (|| -> Result<()> {
        let mut full_id = String::new();
        for (i, (disk, extra)) in [
            ("disk.raw", vec!["--base", "none"]),
            ("disk2.raw", vec!["--cbt"]),
        ]
        .iter()
        .enumerate()
        {
            let mut c = Command::new(&mover);
            c.arg("backup");
            common(&mut c);
            c.args(["--source", "bench-vm", "--json", "--state-dir"])
                .arg(work.join("ours-state"));
            c.arg("--disk")
                .arg(format!("disk0={}", ds.join(disk).display()));
            if i == 1 {
                // The dataset's list has no base: it counts from the full backup just made.
                let list = work.join("cbt.json");
                std::fs::copy(ds.join("cbt.json"), &list)?;
                source_mover::cbt::set_base(&list, &full_id)?;
                c.arg(extra[0]).arg(format!("disk0={}", list.display()));
            } else {
                c.args(extra);
            }
            c.args(extra_args);
            let cpu0 = proc_cpu(pid);
            let (wall, cpu, rss, out) = timed(&mut c, None)?;
            let v: serde_json::Value = serde_json::from_slice(&out)?;
            if i == 0 {
                full_id = v["backup_id"].as_str().context("backup id")?.to_owned();
            }
            steps.push(Step {
                wall,
                cpu: cpu + proc_cpu(pid) - cpu0,
                rss_mib: rss,
                read: v["read_bytes"].as_u64(),
                sent: v["sent_bytes"].as_u64(),
                repo: du(&repo),
            });
            answers.push(v);
        }
        let out = work.join("ours-restored.raw");
        let _ = std::fs::remove_file(&out);
        let mut c = Command::new(&mover);
        c.arg("restore");
        common(&mut c);
        c.args([
            "--backup", "latest", "--source", "bench-vm", "--disk", "disk0", "--json", "--to",
        ])
        .arg(&out);
        let cpu0 = proc_cpu(pid);
        let (wall, cpu, rss, _) = timed(&mut c, None)?;
        steps.push(Step {
            wall,
            cpu: cpu + proc_cpu(pid) - cpu0,
            rss_mib: rss,
            read: None,
            sent: None,
            repo: du(&repo),
        });
        verify_restore(ds, &out)?;
        Ok(())
    })();
    let server_rss = proc_rss_mib(pid);
    drop(server);
    result?;
    Ok((steps, server_rss, answers))
}

/// The restored day-2 image equals disk2.raw except where a plan dropped bytes: where day 2's
/// plan dropped them, zeros or the base's bytes (disk.raw) that a block unchanged per the CBT
/// list inherits (a cluster a file gave up on day 2 still holds its day-1 bytes); where day 1's
/// plan dropped them, zeros that an unchanged block inherits (a cluster allocated on day 2 but
/// never written keeps stale bytes the base did not store). Compared per 4 KiB.
fn verify_restore(ds: &Path, restored: &Path) -> Result<()> {
    let dropped = |img: &str| -> Result<source_mover::ranges::Ranges> {
        let disk = source_mover::source::FileSource::open(&ds.join(img))?;
        let plan = source_mover::plan::plan(&disk, &[])?;
        Ok(plan
            .dropped
            .iter()
            .filter(|(k, _)| **k != "hole")
            .fold(source_mover::ranges::Ranges::new(), |a, (_, r)| a.union(r)))
    };
    let (today, base_dropped) = (dropped("disk2.raw")?, dropped("disk.raw")?);
    let size = std::fs::metadata(ds.join("disk2.raw"))?.len();
    let (a, b, base) = (
        std::fs::File::open(ds.join("disk2.raw"))?,
        std::fs::File::open(restored)?,
        std::fs::File::open(ds.join("disk.raw"))?,
    );
    let bs = 1u64 << 20;
    let (mut x, mut y, mut z) = (
        vec![0u8; bs as usize],
        vec![0u8; bs as usize],
        vec![0u8; bs as usize],
    );
    use std::os::unix::fs::FileExt;
    let mut off = 0;
    while off < size {
        let n = bs.min(size - off) as usize;
        a.read_exact_at(&mut x[..n], off)?;
        b.read_exact_at(&mut y[..n], off)?;
        for (s, e) in today.clip(off, off + n as u64) {
            x[(s - off) as usize..(e - off) as usize].fill(0);
        }
        if x[..n] != y[..n] {
            base.read_exact_at(&mut z[..n], off)?;
        }
        for i in (0..n).step_by(4096) {
            let e = (i + 4096).min(n);
            let (at, end) = (off + i as u64, off + e as u64);
            if x[i..e] == y[i..e] {
                continue;
            }
            let zero = y[i..e].iter().all(|&v| v == 0);
            let whole = |r: &source_mover::ranges::Ranges| {
                r.clip(at, end).iter().map(|(p, q)| q - p).sum::<u64>() == end - at
            };
            let ok = (whole(&today) && y[i..e] == z[i..e]) || (whole(&base_dropped) && zero);
            if ok {
                x[i..e].copy_from_slice(&y[i..e]);
            }
        }
        if x[..n] != y[..n] {
            bail!("restored image differs from disk2.raw near offset {off}");
        }
        off += n as u64;
    }
    Ok(())
}
