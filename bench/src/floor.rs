//! The floor in `bench compare`: the least any tool must do for a full backup of the dataset —
//! read the bytes this project reads, blake3 and zstd them, on two threads in one process.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use source_mover::source::BlockSource;

use crate::measure::{proc_cpu, Step};

/// The floor: read the bytes this project reads for a full backup, blake3 and zstd them, 2 threads.
pub fn run(ds: &Path) -> Result<Step> {
    let disk = source_mover::source::FileSource::open(&ds.join("disk.raw"))?;
    let plan = source_mover::plan::plan(&disk, &[])?;
    let bs = 1u64 << 20;
    let blocks: Vec<u64> = (0..plan.size.div_ceil(bs))
        .filter(|b| !plan.read.clip(b * bs, (b + 1) * bs).is_empty())
        .collect();
    let t = Instant::now();
    let c0 = proc_cpu(std::process::id());
    let read = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for k in 0..2 {
            let (blocks, plan, disk, read) = (&blocks, &plan, &disk, &read);
            s.spawn(move || {
                let mut buf = vec![0u8; bs as usize];
                for b in blocks.iter().skip(k).step_by(2) {
                    buf.fill(0);
                    for (x, y) in plan.read.clip(b * bs, (b + 1) * bs) {
                        let _ =
                            disk.read_at(&mut buf[(x - b * bs) as usize..(y - b * bs) as usize], x);
                        read.fetch_add(y - x, std::sync::atomic::Ordering::Relaxed);
                    }
                    let _ = blake3::hash(&buf);
                    let _ = zstd::bulk::compress(&buf, 3);
                }
            });
        }
    });
    Ok(Step {
        wall: t.elapsed().as_secs_f64(),
        cpu: proc_cpu(std::process::id()) - c0,
        rss_mib: 0.0,
        read: Some(read.into_inner()),
        sent: None,
        repo: 0,
    })
}
