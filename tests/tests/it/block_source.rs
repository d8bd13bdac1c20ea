//! The source seam is the only thing a source needs: a disk that is not a file at all (its bytes
//! live in memory, behind a `BlockSource` written here) backs up through the real pipeline
//! against the real server, full and then incremental over an in-memory `ChangeList`, and
//! restores byte for byte.
//!
//! The image it is loaded from is deleted before the backup and the source names no path, so a
//! read that went around the trait has nothing to open. The source's holes are declared, not
//! stored: their bytes in memory are garbage, and a read that touches one fails, so the plan
//! must take them from `allocated` and never read them.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use source_mover::backup::{backup, BackupOptions};
use source_mover::cbt::{ChangeList, ChangedBlocks};
use source_mover::ranges::Ranges;
use source_mover::source::BlockSource;
use source_mover::Error;
use tests::images::{build, make_tree, Layout, Table};
use tests::mover::{client, opts_for, restore_to};
use tests::TestServer;

const MIB: u64 = 1 << 20;

/// A disk in memory: `bytes`, except `holes`, which are known zeros the source never hands out.
#[derive(Debug)]
struct MemoryDisk {
    bytes: Vec<u8>,
    holes: Ranges,
    /// Bytes handed out by `read_at`.
    read: AtomicU64,
    /// Calls of `read_at`.
    reads: AtomicU64,
}

impl MemoryDisk {
    /// `bytes` with `holes` declared as zeros; their bytes are overwritten with garbage, which a
    /// restore would show if anything read them.
    fn new(mut bytes: Vec<u8>, holes: Ranges) -> MemoryDisk {
        for &(a, b) in holes.as_slice() {
            bytes[a as usize..b as usize].fill(0xA5);
        }
        MemoryDisk {
            bytes,
            holes,
            read: AtomicU64::new(0),
            reads: AtomicU64::new(0),
        }
    }
}

impl BlockSource for MemoryDisk {
    fn describe(&self) -> String {
        "memory:disk0".into()
    }

    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> source_mover::Result<()> {
        let end = offset + buf.len() as u64;
        let fail = |why: String| {
            Err(Error::io(
                format!("memory disk at offset {offset}"),
                std::io::Error::other(why),
            ))
        };
        if end > self.size() {
            return fail(format!("read to {end} past the end {}", self.size()));
        }
        if !self.holes.clip(offset, end).is_empty() {
            return fail(format!("read of {offset}..{end} touches a declared hole"));
        }
        buf.copy_from_slice(&self.bytes[offset as usize..end as usize]);
        self.read.fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.reads.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn allocated(&self) -> source_mover::Result<Ranges> {
        Ok(Ranges::single(0, self.size()).subtract(&self.holes))
    }
}

/// Changes held in memory, counting from `base`.
#[derive(Debug)]
struct MemoryChanges {
    base: String,
    changed: Ranges,
}

impl ChangeList for MemoryChanges {
    fn describe(&self) -> String {
        "memory changes".into()
    }

    fn load(&self) -> source_mover::Result<ChangedBlocks> {
        Ok(ChangedBlocks {
            base: self.base.clone(),
            changed: self.changed.clone(),
            from: self.describe(),
            bitmap: None,
            unusable: None,
        })
    }
}

fn options(disk: &Arc<MemoryDisk>, state: &Path) -> BackupOptions {
    opts_for("vm-memory", disk.clone(), state)
}

/// What a restore of `disk` must give: its bytes, with zeros where the plan dropped them (free
/// blocks, swap pages) and in its holes.
fn expected(disk: &MemoryDisk) -> Vec<u8> {
    let plan = source_mover::plan::plan(disk, &[]).unwrap();
    let mut want = disk.bytes.clone();
    for r in plan.dropped.values() {
        for &(a, b) in r.as_slice() {
            want[a as usize..b as usize].fill(0);
        }
    }
    want
}

fn assert_same(want: &[u8], got_path: &Path) {
    let got = std::fs::read(got_path).unwrap();
    assert_eq!(want.len(), got.len());
    let at = want.iter().zip(&got).position(|(a, b)| a != b);
    assert!(at.is_none(), "restored disk differs at byte {at:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_in_memory_backs_up_and_restores_through_the_block_source_alone() {
    let srv = TestServer::start().await;
    let c = client(&srv.url());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A real disk: MBR, ext4 from a tree, swap, then 8 MiB unpartitioned (zeros), loaded into
    // memory; the file is gone before the mover runs.
    let img = build(
        d,
        "mem",
        Layout::ext4(Table::Dos, 4096, 48, 8, 8),
        &make_tree(d),
    );
    let bytes = std::fs::read(&img.path).unwrap();
    std::fs::remove_file(&img.path).unwrap();
    let size = bytes.len() as u64;
    // The unpartitioned tail and the gap before the first partition (but the MBR) are holes.
    let holes = Ranges::from_unsorted(vec![(4096, img.fs.0), (size - 8 * MIB, size)]);
    for &(a, b) in holes.as_slice() {
        assert!(bytes[a as usize..b as usize].iter().all(|&x| x == 0));
    }
    let disk = Arc::new(MemoryDisk::new(bytes, holes.clone()));

    // Day 1: a full backup.
    let full = backup(&c, &options(&disk, &d.join("state"))).await.unwrap();
    let report = &full.disks[0];
    assert_eq!(report.path, "memory:disk0");
    assert!(
        report.found.iter().any(|l| l.contains("ext2/3/4"))
            && report.found.iter().any(|l| l.contains("Linux swap")),
        "{:?}",
        report.found
    );
    assert!(full.files_indexed > 150, "{}", full.files_indexed);
    assert!(
        full.skipped_bytes["hole"] >= holes.total(),
        "{:?}",
        full.skipped_bytes
    );
    assert!(full.skipped_bytes["swap"] > 0 && full.skipped_bytes["free"] > 0);
    // Every byte the pipeline read (and the metadata the plan and the walk read) came through
    // the trait.
    assert!(full.read_bytes > 0);
    assert!(
        disk.read.load(Ordering::Relaxed) >= full.read_bytes,
        "the source handed out {} bytes, the backup read {}",
        disk.read.load(Ordering::Relaxed),
        full.read_bytes
    );
    let out = d.join("restored-1.raw");
    restore_to(&c, &full.backup_id, &out).await;
    let want = expected(&disk);
    assert_same(&want, &out);

    // Day 2: one 4 KiB piece of a file changes; the change list, in memory, counts from day 1.
    let plan = source_mover::plan::plan(&*disk, &[]).unwrap();
    let large = plan
        .files
        .iter()
        .flat_map(|(_, entries)| entries)
        .find(|e| e.path == "/srv/large.bin")
        .expect("large.bin in the file index");
    let [_, at, len] = large.extents[0];
    assert!(len >= 4096, "{:?}", large.extents);
    let mut bytes = disk.bytes.clone();
    for b in &mut bytes[at as usize..at as usize + 4096] {
        *b ^= 0xFF;
    }
    let day2 = Arc::new(MemoryDisk::new(bytes, holes));
    let changed = Ranges::single(at, at + 4096);
    let mut o = options(&day2, &d.join("state"));
    o.cbt.insert(
        "disk0".into(),
        Arc::new(MemoryChanges {
            base: full.backup_id.clone(),
            changed: changed.clone(),
        }),
    );
    let inc = backup(&c, &o).await.unwrap();
    assert_eq!(inc.base.as_deref(), Some(full.backup_id.as_str()));
    assert!(inc.disks[0].cbt);
    // Only the block holding the change is read.
    assert!(inc.read_bytes <= MIB, "read {}", inc.read_bytes);
    assert_eq!(inc.records, 1, "one changed block");
    let out = d.join("restored-2.raw");
    restore_to(&c, &inc.backup_id, &out).await;
    assert_same(&expected(&day2), &out);

    // A change list that counts from another backup is refused before anything is sent.
    let mut o = options(&day2, &d.join("state"));
    o.cbt.insert(
        "disk0".into(),
        Arc::new(MemoryChanges {
            base: "20200101T000000Z-0123456789abcdef".into(),
            changed,
        }),
    );
    let err = backup(&c, &o).await.unwrap_err();
    assert!(
        matches!(err, Error::Refused(ref m) if m.contains("memory changes")),
        "{err}"
    );
}
