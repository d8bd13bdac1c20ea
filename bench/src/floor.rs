//! The floors in `bench compare`: the least any tool must do for each step, in one process on
//! both cores, with no network, no catalog and no protocol.
//!
//! - **full**: read the bytes this project must read of disk.raw (its plan), blake3 and compress
//!   them at the project's default zstd level, then what the repository must do before it
//!   acknowledges (decompress, blake3 again) and write the compressed bytes to a file (one fsync
//!   per file at the end).
//! - **incremental**: the same for the bytes of disk2.raw that both changed (cbt.json) and must be
//!   read (day 2's plan), in the changed extents as they are listed, cut at 1 MiB.
//! - **restore**: read back every compressed piece the two floors wrote (day 1's blocks, then day
//!   2's changes over them), decompress, blake3 and write it at its offset into a sparse image.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result};
use source_mover::ranges::Ranges;
use source_mover::source::BlockSource;

use crate::measure::{proc_cpu, Step};

/// The three floors, in the order of [`crate::report::STEPS`].
pub fn run(ds: &Path, work: &Path, level: i32) -> Result<Vec<Step>> {
    let mb = 1u64 << 20;
    let day1 = source_mover::source::FileSource::open(&ds.join("disk.raw"))?;
    let plan1 = source_mover::plan::plan(&day1, &[])?;
    let pieces1: Vec<(u64, u64)> = (0..plan1.size.div_ceil(mb))
        .map(|b| (b * mb, ((b + 1) * mb).min(plan1.size)))
        .filter(|&(s, e)| !plan1.read.clip(s, e).is_empty())
        .collect();
    let (full, stored1) = ingest(&day1, &plan1.read, &pieces1, level, &work.join("floor-1"))?;

    let day2 = source_mover::source::FileSource::open(&ds.join("disk2.raw"))?;
    let plan2 = source_mover::plan::plan(&day2, &[])?;
    let cbt = changed(&ds.join("cbt.json"))?;
    let mut pieces2 = Vec::new();
    for (s, e) in cbt.as_slice() {
        let mut at = *s;
        while at < *e {
            let end = (at + mb).min(*e);
            if !plan2.read.clip(at, end).is_empty() {
                pieces2.push((at, end));
            }
            at = end;
        }
    }
    let (incremental, stored2) =
        ingest(&day2, &plan2.read, &pieces2, level, &work.join("floor-2"))?;

    let restore = restore(
        &[
            (&work.join("floor-1"), stored1),
            (&work.join("floor-2"), stored2),
        ],
        &work.join("floor-restored.raw"),
        plan1.size,
    )?;
    for f in ["floor-1", "floor-2", "floor-restored.raw"] {
        let _ = std::fs::remove_file(work.join(f));
    }
    Ok(vec![full, incremental, restore])
}

/// Where each compressed piece was written: (image offset, length, file offset, stored length).
type Stored = Vec<(u64, u64, u64, u64)>;

/// The changed ranges of a cbt.json (the base is not needed here).
fn changed(path: &Path) -> Result<Ranges> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path)?)?;
    let list = v["changed"]
        .as_array()
        .with_context(|| format!("{}: no \"changed\" list", path.display()))?;
    let mut out = Vec::with_capacity(list.len());
    for r in list {
        let (o, n) = (r[0].as_u64(), r[1].as_u64());
        let (o, n) = o
            .zip(n)
            .context("a changed range is not [offset, length]")?;
        out.push((o, o + n));
    }
    Ok(Ranges::from_unsorted(out))
}

/// Reads `pieces` of `disk` (only the bytes in `needed`, zeros elsewhere), hashes, compresses,
/// verifies as the repository does and appends the compressed bytes to `out`, on two threads.
fn ingest(
    disk: &dyn BlockSource,
    needed: &Ranges,
    pieces: &[(u64, u64)],
    level: i32,
    out: &Path,
) -> Result<(Step, Stored)> {
    let file = std::fs::File::create(out)?;
    let tail = Mutex::new((0u64, Stored::new()));
    let read = std::sync::atomic::AtomicU64::new(0);
    let t = Instant::now();
    let c0 = proc_cpu(std::process::id());
    std::thread::scope(|s| -> Result<()> {
        let mut threads = Vec::new();
        for k in 0..2 {
            let (file, tail, read) = (&file, &tail, &read);
            threads.push(s.spawn(move || -> Result<()> {
                let mut buf = Vec::new();
                let mut back = Vec::new();
                let mut z = zstd::bulk::Compressor::new(level)?;
                let mut d = zstd::bulk::Decompressor::new()?;
                for &(start, end) in pieces.iter().skip(k).step_by(2) {
                    buf.clear();
                    buf.resize((end - start) as usize, 0);
                    for (x, y) in needed.clip(start, end) {
                        disk.read_at(&mut buf[(x - start) as usize..(y - start) as usize], x)?;
                        read.fetch_add(y - x, std::sync::atomic::Ordering::Relaxed);
                    }
                    let id = blake3::hash(&buf);
                    let packed = z.compress(&buf)?;
                    back.clear();
                    back.reserve(buf.len());
                    d.decompress_to_buffer(&packed, &mut back)?;
                    anyhow::ensure!(blake3::hash(&back) == id, "floor: round trip differs");
                    let at = {
                        let mut t = tail.lock().expect("floor tail lock");
                        let at = t.0;
                        t.0 += packed.len() as u64;
                        t.1.push((start, end - start, at, packed.len() as u64));
                        at
                    };
                    file.write_all_at(&packed, at)?;
                }
                Ok(())
            }));
        }
        for t in threads {
            t.join().expect("floor thread")?;
        }
        Ok(())
    })?;
    file.sync_all()?;
    let step = Step {
        wall: t.elapsed().as_secs_f64(),
        cpu: proc_cpu(std::process::id()) - c0,
        rss_mib: 0.0,
        read: Some(read.into_inner()),
        sent: None,
        repo: std::fs::metadata(out)?.len(),
    };
    Ok((step, tail.into_inner().expect("floor tail lock").1))
}

/// Reads every piece back from its file (later files over earlier ones), decompresses, hashes
/// and writes it into a sparse image of `size` bytes at `out`, on two threads.
fn restore(files: &[(&Path, Stored)], out: &Path, size: u64) -> Result<Step> {
    let image = std::fs::File::create(out)?;
    image.set_len(size)?;
    let t = Instant::now();
    let c0 = proc_cpu(std::process::id());
    for (path, stored) in files {
        let src = std::fs::File::open(path)?;
        std::thread::scope(|s| -> Result<()> {
            let mut threads = Vec::new();
            for k in 0..2 {
                let (src, image) = (&src, &image);
                threads.push(s.spawn(move || -> Result<()> {
                    let (mut packed, mut plain) = (Vec::new(), Vec::new());
                    let mut d = zstd::bulk::Decompressor::new()?;
                    for &(at, len, from, n) in stored.iter().skip(k).step_by(2) {
                        packed.resize(n as usize, 0);
                        src.read_exact_at(&mut packed, from)?;
                        plain.clear();
                        plain.reserve(len as usize);
                        d.decompress_to_buffer(&packed, &mut plain)?;
                        let _ = blake3::hash(&plain);
                        image.write_all_at(&plain, at)?;
                    }
                    Ok(())
                }));
            }
            for t in threads {
                t.join().expect("floor thread")?;
            }
            Ok(())
        })?;
    }
    image.sync_all()?;
    Ok(Step {
        wall: t.elapsed().as_secs_f64(),
        cpu: proc_cpu(std::process::id()) - c0,
        rss_mib: 0.0,
        read: None,
        sent: None,
        repo: 0,
    })
}
