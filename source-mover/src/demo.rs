//! `source-mover demo`: the whole product in one command, on real parts.
//!
//! Starts the built `repo-server` as a child process (ephemeral port, temporary data dir,
//! embedded RocksDB), builds a small VM disk with real tools (`sfdisk`, `mke2fs -d`, `mkswap`:
//! MBR, ext4 with real files, swap with dirty pages, free space), runs a full backup, changes
//! files with `debugfs -w`, derives the changed-block list, runs a CBT incremental, restores
//! both, checks them (`e2fsck -fn`, byte comparison outside dropped ranges), and prints the
//! catalog and the repository's stats.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use schema::api::{BackupList, RepoStats};

use crate::backup::{backup, BackupOptions, BackupReport, Base};
use crate::client::RepoClient;
use crate::error::{Error, Result};
use crate::restore::{resolve, restore};

const MIB: u64 = 1 << 20;

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().map_err(|e| {
        Error::Invalid(format!(
            "cannot run {cmd:?}: {e} (the README's set-up installs it)"
        ))
    })?;
    if !out.status.success() {
        return Err(Error::Invalid(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The repository server for the demo.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn server_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| Error::io("current executable", e))?;
    let beside = exe.with_file_name("repo-server");
    if beside.is_file() {
        return Ok(beside);
    }
    Err(Error::Invalid(format!(
        "repo-server not found beside {}; build it with `cargo build --release --workspace`",
        exe.display()
    )))
}

/// Copies `src` into `dst` at `offset`, skipping all-zero runs (keeps `dst` sparse).
fn place(src: &Path, dst: &std::fs::File, offset: u64) -> Result<()> {
    let data = std::fs::read(src).map_err(|e| Error::io(src.display(), e))?;
    for (i, chunk) in data.chunks(64 << 10).enumerate() {
        if chunk.iter().any(|&b| b != 0) {
            dst.write_all_at(chunk, offset + (i as u64) * (64 << 10))
                .map_err(|e| Error::io("demo disk", e))?;
        }
    }
    Ok(())
}

fn xorshift_fill(buf: &mut [u8], mut x: u64) {
    for b in buf.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
}

/// Copies regular files from `src` into `dst` (recursively, sorted) until `budget` bytes are used.
fn copy_budget(src: &Path, dst: &Path, budget: &mut u64) -> Result<()> {
    let Ok(rd) = std::fs::read_dir(src) else {
        return Ok(());
    };
    let mut entries: Vec<_> = rd.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let Ok(ft) = e.file_type() else { continue };
        let target = dst.join(e.file_name());
        if ft.is_dir() {
            copy_budget(&e.path(), &target, budget)?;
        } else if ft.is_file() {
            let len = e.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
            if len > *budget {
                continue;
            }
            std::fs::create_dir_all(dst).map_err(|e| Error::io(dst.display(), e))?;
            if std::fs::copy(e.path(), &target).is_ok() {
                *budget -= len;
            }
        }
        if *budget < 4096 {
            break;
        }
    }
    Ok(())
}

/// Builds the demo disk (`disk.raw` in `dir`): 160 MiB, MBR, p1 ext4 (112 MiB) from a tree of real files, p2 swap
/// (47 MiB) with 16 MiB of dirty pages. Returns (disk path, ext4 partition offset, ext4 image).
pub fn build_disk(dir: &Path) -> Result<(PathBuf, u64, PathBuf)> {
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("etc")).map_err(|e| Error::io(tree.display(), e))?;
    std::fs::create_dir_all(tree.join("var/log")).map_err(|e| Error::io(tree.display(), e))?;
    std::fs::create_dir_all(tree.join("srv/data")).map_err(|e| Error::io(tree.display(), e))?;
    // Real files: documentation and libraries of this machine, plus generated data.
    copy_budget(
        Path::new("/usr/share/doc"),
        &tree.join("usr/share/doc"),
        &mut (32 * MIB),
    )?;
    copy_budget(
        Path::new("/usr/lib/x86_64-linux-gnu"),
        &tree.join("usr/lib"),
        &mut (16 * MIB),
    )?;
    let mut big = vec![0u8; 24 * MIB as usize];
    xorshift_fill(&mut big, 42);
    std::fs::write(tree.join("srv/data/blob.bin"), &big).map_err(|e| Error::io("demo tree", e))?;
    std::fs::write(tree.join("etc/hostname"), b"demo-vm\n")
        .map_err(|e| Error::io("demo tree", e))?;
    std::fs::write(tree.join("var/log/syslog"), "boot ok\n".repeat(20_000))
        .map_err(|e| Error::io("demo tree", e))?;
    let p1 = dir.join("p1.ext4");
    let f = std::fs::File::create(&p1).map_err(|e| Error::io(p1.display(), e))?;
    f.set_len(112 * MIB)
        .map_err(|e| Error::io(p1.display(), e))?;
    drop(f);
    run(Command::new("mke2fs")
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-L",
            "demo-root",
            "-E",
            "root_owner=0:0",
            "-d",
        ])
        .arg(&tree)
        .arg(&p1))?;
    let swap = dir.join("swap.img");
    let f = std::fs::File::create(&swap).map_err(|e| Error::io(swap.display(), e))?;
    f.set_len(47 * MIB)
        .map_err(|e| Error::io(swap.display(), e))?;
    drop(f);
    run(Command::new("mkswap")
        .args(["-q", "-U", "11111111-2222-3333-4444-555555555555"])
        .arg(&swap))?;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&swap)
        .map_err(|e| Error::io(swap.display(), e))?;
    let mut pages = vec![0u8; 16 * MIB as usize];
    xorshift_fill(&mut pages, 7);
    f.write_all_at(&pages, MIB)
        .map_err(|e| Error::io(swap.display(), e))?;
    drop(f);
    let disk = dir.join("disk.raw");
    let f = std::fs::File::create(&disk).map_err(|e| Error::io(disk.display(), e))?;
    f.set_len(160 * MIB)
        .map_err(|e| Error::io(disk.display(), e))?;
    let mut sf = Command::new("sfdisk")
        .arg("-q")
        .arg(&disk)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| Error::Invalid(format!("sfdisk: {e}")))?;
    if let Some(mut stdin) = sf.stdin.take() {
        let table = format!(
            "label: dos\nstart=2048, size={}, type=83\nstart={}, type=82\n",
            112 * 2048,
            2048 + 112 * 2048
        );
        stdin
            .write_all(table.as_bytes())
            .map_err(|e| Error::io("sfdisk", e))?;
    }
    if !sf.wait().map_err(|e| Error::io("sfdisk", e))?.success() {
        return Err(Error::Invalid("sfdisk failed".into()));
    }
    place(&p1, &f, MIB)?;
    place(&swap, &f, MIB + 112 * MIB)?;
    Ok((disk, MIB, p1))
}

/// Checks a restored disk: `e2fsck -fn` of its ext4 partition is clean, and every byte equals
/// the source except in ranges the block map dropped, which read as zeros.
fn check(source: &Path, restored: &Path, p1_offset: u64, dir: &Path, tag: &str) -> Result<String> {
    let d = crate::source::FileSource::open(source)?;
    let plan = crate::plan::plan(&d, &[])?;
    let src = std::fs::read(source).map_err(|e| Error::io(source.display(), e))?;
    let got = std::fs::read(restored).map_err(|e| Error::io(restored.display(), e))?;
    if src.len() != got.len() {
        return Err(Error::Invalid(format!(
            "{tag}: restored size {} differs from {}",
            got.len(),
            src.len()
        )));
    }
    let mut expect = src.clone();
    for (reason, r) in &plan.dropped {
        if *reason != "hole" {
            for &(a, b) in r.as_slice() {
                expect[a as usize..b as usize].fill(0);
            }
        }
    }
    if expect != got {
        let at = expect
            .iter()
            .zip(&got)
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        return Err(Error::Invalid(format!(
            "{tag}: restored disk differs at byte {at}"
        )));
    }
    let part = dir.join(format!("{tag}-p1.ext4"));
    std::fs::write(
        &part,
        &got[p1_offset as usize..(p1_offset + 112 * MIB) as usize],
    )
    .map_err(|e| Error::io(part.display(), e))?;
    run(Command::new("e2fsck").arg("-fn").arg(&part))?;
    Ok(format!(
        "{tag}: identical outside dropped ranges; e2fsck -fn clean"
    ))
}

/// Day 2 of the demo disk: changes files inside its ext4 partition image `p1` with
/// `debugfs -w`, writes `disk2.raw` (disk.raw with the changed partition) and the changed-block
/// list `cbt.json` (64 KiB extents that differ; without a `base`, like
/// `shared/bench/make-dataset.sh`'s: add it with [`crate::cbt::set_base`] once the backup it
/// counts from exists). Returns (disk2, cbt, changed bytes).
///
/// # Errors
/// A tool or file operation that fails.
pub fn make_day_two(
    dir: &Path,
    disk: &Path,
    p1_off: u64,
    p1: &Path,
) -> Result<(PathBuf, PathBuf, u64)> {
    let mut new = vec![0u8; 6 * MIB as usize];
    xorshift_fill(&mut new, 99);
    std::fs::write(dir.join("report.bin"), &new).map_err(|e| Error::io("demo", e))?;
    std::fs::write(dir.join("hostname"), b"demo-vm-day2\n").map_err(|e| Error::io("demo", e))?;
    let script = format!("rm /etc/hostname\nwrite {} /etc/hostname\nwrite {} /srv/data/report.bin\nrm /var/log/syslog\n", dir.join("hostname").display(), dir.join("report.bin").display());
    std::fs::write(dir.join("day2.debugfs"), script).map_err(|e| Error::io("demo", e))?;
    run(Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(dir.join("day2.debugfs"))
        .arg(p1))?;
    let disk2 = dir.join("disk2.raw");
    std::fs::copy(disk, &disk2).map_err(|e| Error::io(disk2.display(), e))?;
    let f2 = std::fs::OpenOptions::new()
        .write(true)
        .open(&disk2)
        .map_err(|e| Error::io(disk2.display(), e))?;
    let p1_bytes = std::fs::read(p1).map_err(|e| Error::io(p1.display(), e))?;
    f2.write_all_at(&p1_bytes, p1_off)
        .map_err(|e| Error::io(disk2.display(), e))?;
    drop(f2);
    let cbt = dir.join("cbt.json");
    let changed = diff_cbt(disk, &disk2, &cbt)?;
    Ok((disk2, cbt, changed))
}

/// Changed 64 KiB extents between two images, as a CBT list.
fn diff_cbt(a: &Path, b: &Path, out: &Path) -> Result<u64> {
    let (x, y) = (
        std::fs::read(a).map_err(|e| Error::io(a.display(), e))?,
        std::fs::read(b).map_err(|e| Error::io(b.display(), e))?,
    );
    let g = 64 << 10;
    let mut changed = Vec::new();
    for (i, (p, q)) in x.chunks(g).zip(y.chunks(g)).enumerate() {
        if p != q {
            changed.push([i * g, p.len()]);
        }
    }
    let bytes = changed.iter().map(|c| c[1] as u64).sum();
    std::fs::write(
        out,
        serde_json::json!({ "changed": changed, "bytes": bytes }).to_string(),
    )
    .map_err(|e| Error::io(out.display(), e))?;
    Ok(bytes)
}

fn say(s: &str) {
    println!("\n== {s}");
}

fn summary(r: &BackupReport) -> String {
    format!(
        "backup {}: read {:.1} MB of {:.1} MB, uploaded {} chunks ({:.1} MB compressed), stored {:.1} MB new, in {} ms; skipped {:?}",
        r.backup_id,
        r.read_bytes as f64 / 1e6,
        r.logical_bytes as f64 / 1e6,
        r.chunks_uploaded,
        r.sent_bytes as f64 / 1e6,
        r.stored_bytes as f64 / 1e6,
        r.duration_ms,
        r.skipped_bytes.iter().map(|(k, v)| format!("{k}={:.1}MB", *v as f64 / 1e6)).collect::<Vec<_>>()
    )
}

/// Runs the demo in `dir` (a fresh temporary directory when `None`).
///
/// # Errors
/// Any step that fails, named.
pub async fn demo(dir: Option<PathBuf>) -> Result<()> {
    let keep = dir.is_some();
    let dir = dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("source-mover-demo-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(dir.display(), e))?;
    say(&format!(
        "starting repo-server (data in {})",
        dir.join("repo").display()
    ));
    let mut child = Command::new(server_binary()?)
        .args(["--listen", "127.0.0.1:0", "--data"])
        .arg(dir.join("repo"))
        .env("REPO_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Invalid(format!("cannot start repo-server: {e}")))?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        BufReader::new(out)
            .read_line(&mut line)
            .map_err(|e| Error::io("repo-server output", e))?;
    }
    let _server = Server(child);
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .ok_or_else(|| Error::Invalid(format!("repo-server said {line:?}")))?
        .to_owned();
    let token = std::fs::read_to_string(dir.join("repo/admin.token"))
        .map_err(|e| Error::io("admin.token", e))?;
    let client = RepoClient::new(
        &format!("http://{addr}"),
        &token,
        std::time::Duration::from_secs(60),
        None,
    )?;
    println!("repo-server on http://{addr}");

    say("building a VM disk with sfdisk, mke2fs -d, mkswap (MBR, ext4 with real files, swap with dirty pages, free space)");
    let (disk, p1_off, p1) = build_disk(&dir)?;
    println!(
        "{}",
        run(Command::new("sfdisk").arg("-l").arg(&disk))?.trim_end()
    );

    let opts = |path: &Path, cbt: Option<PathBuf>, base: Base| -> Result<BackupOptions> {
        Ok(BackupOptions {
            source: "demo-vm".into(),
            disks: vec![("disk0".into(), crate::source::open(path)?)],
            cbt_points: BTreeMap::new(),
            cbt: cbt
                .map(|c| BTreeMap::from([("disk0".to_string(), crate::cbt::json_file(&c))]))
                .unwrap_or_default(),
            base,
            block_size: crate::profile::Profile::LAN.block_size,
            zstd_level: crate::profile::Profile::LAN.zstd_level,
            excludes: Vec::new(),
            streams: 32,
            state_dir: dir.join("state"),
            progress: false,
            file_index: true,
            encryption_key: None,
        })
    };
    say("day 1: full backup");
    let full = backup(&client, &opts(&disk, None, Base::None)?).await?;
    for d in &full.disks {
        for f in &d.found {
            println!("  {f}");
        }
    }
    println!("{}", summary(&full));

    say("day 2: changing files inside the guest file system with debugfs -w, deriving the changed-block list");
    let (disk2, cbt, changed) = make_day_two(&dir, &disk, p1_off, &p1)?;
    // The list counts from day 1's backup, as a hypervisor's tracking reset at that backup would.
    crate::cbt::set_base(&cbt, &full.backup_id)?;
    println!(
        "changed: {:.2} MB in 64 KiB extents ({}, counting from backup {})",
        changed as f64 / 1e6,
        cbt.display(),
        full.backup_id
    );

    say("day 2: CBT incremental backup");
    let inc = backup(&client, &opts(&disk2, Some(cbt), Base::Latest)?).await?;
    println!("{}", summary(&inc));

    say("restoring both backups (sparse, every block's blake3 checked) and checking them");
    for (r, src, tag) in [(&full, &disk, "day1"), (&inc, &disk2, "day2")] {
        let m = resolve(&client, &r.backup_id, None).await?;
        let out = dir.join(format!("{tag}-restored.raw"));
        let rr = restore(&client, &m, "disk0", Some(&out), 16, false).await?;
        println!(
            "restored {} to {} in {} ms ({} holes not written)",
            rr.backup_id,
            out.display(),
            rr.duration_ms,
            rr.holes
        );
        println!("{}", check(src, &out, p1_off, &dir, tag)?);
    }

    say("catalog: GET /v1/backups?source=demo-vm");
    let list: BackupList = client.get_json("/v1/backups?source=demo-vm").await?;
    for m in &list.backups {
        println!(
            "  {}  {}  base={}  logical {:.0} MB  new chunks {}  reused {}  stored {:.1} MB",
            m.id,
            m.created,
            m.base.as_ref().map(|b| b.as_str()).unwrap_or("-"),
            m.stats.logical_bytes as f64 / 1e6,
            m.stats.new_chunks,
            m.stats.reused_chunks,
            m.stats.stored_bytes as f64 / 1e6
        );
    }
    say("repository: GET /v1/stats");
    let stats: RepoStats = client.get_json("/v1/stats").await?;
    println!(
        "{}",
        serde_json::to_string_pretty(&stats).unwrap_or_default()
    );
    if keep {
        say(&format!(
            "demo finished: everything checked. Files are in {}",
            dir.display()
        ));
    } else {
        drop(_server);
        let _ = std::fs::remove_dir_all(&dir);
        say("demo finished: everything checked (run with --dir DIR to keep the images and the repository)");
    }
    Ok(())
}
