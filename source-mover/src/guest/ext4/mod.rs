//! ext2/3/4 as a guest file system: the probe, what it lets the plan drop (`free` blocks, the
//! data of `excluded` files) and its file walk. Nothing outside this module knows about ext4.
//!
//! - [`fs`]: the on-disk structures (superblock, group descriptors, block bitmaps, inodes,
//!   extent trees and indirect maps, directories), every metadata read through the journal.
//! - [`jbd2`]: the journal, replayed in memory when the file system needs recovery.
//! - [`walk`]: the metadata walk (file index, excluded files' blocks, protected blocks).
//! - `crc`: crc32c and crc16 of the metadata checksums.
//!
//! What is dropped, and only then: blocks free in both the journal-replayed and the on-disk
//! bitmap (of bitmaps and descriptors whose checksums hold), and excluded files' data blocks
//! that are in use and neither metadata nor any other walked inode's (of files whose inode and
//! extent blocks pass their checksums), and nothing excluded while a bitmap fails its checksum.
//! A journal this reader cannot replay makes the partition [`Probed::ReadInFull`]; a
//! `bigalloc` file system or unknown features make it not ext4 at all (read in full too).

mod crc;
pub mod fs;
pub mod jbd2;
pub mod walk;

use std::cell::OnceCell;

use fs::{Ext4, FreeBlocks, Opened};

use super::partition::Partition;
use super::{Droppable, FileTree, FileWalk, Guest, Probe, Probed, Reason};
use crate::error::Result;
use crate::ranges::Ranges;
use crate::source::BlockSource;

/// The ext2/3/4 probe.
#[derive(Debug, Clone, Copy)]
pub struct Ext4Probe;

impl Probe for Ext4Probe {
    fn name(&self) -> &'static str {
        "ext2/3/4"
    }

    fn probe<'a>(&self, disk: &'a dyn BlockSource, part: &Partition) -> Result<Probed<'a>> {
        Ok(match Ext4::open(disk, part.start, part.len)? {
            Opened::NotExt4 => Probed::NotMine,
            Opened::ReadInFull(why) => Probed::ReadInFull(format!("ext2/3/4, read in full: {why}")),
            Opened::Ext4(fs) => Probed::Found(Box::new(Ext4Guest {
                fs,
                free: OnceCell::new(),
            })),
        })
    }
}

/// An opened ext2/3/4 file system.
#[derive(Debug)]
struct Ext4Guest<'a> {
    fs: Ext4<'a>,
    /// Its free blocks, read once (the summary and the excludes both need them).
    free: OnceCell<FreeBlocks>,
}

impl Ext4Guest<'_> {
    fn free(&self) -> Result<&FreeBlocks> {
        if let Some(f) = self.free.get() {
            return Ok(f);
        }
        let f = self.fs.free_ranges()?;
        Ok(self.free.get_or_init(|| f))
    }
}

impl Guest for Ext4Guest<'_> {
    fn droppable(&self) -> Result<Droppable> {
        let fs = &self.fs;
        let FreeBlocks {
            ranges: free,
            bad_bitmaps,
        } = self.free()?;
        let mut line = format!(
            "ext2/3/4, {} KiB blocks, {} MiB free",
            fs.block_size / 1024,
            free.total() >> 20
        );
        if let Some(r) = fs.replay() {
            line.push_str(&format!(
                ", journal replayed in memory ({} transaction{}, {} blocks)",
                r.transactions,
                if r.transactions == 1 { "" } else { "s" },
                r.blocks()
            ));
        }
        if *bad_bitmaps > 0 {
            line.push_str(&format!(
                ", {bad_bitmaps} block bitmaps or group descriptors failed their checksum (those groups read in full)"
            ));
        }
        Ok(Droppable {
            summary: line,
            dropped: vec![(Reason::Free, free.clone())],
        })
    }

    fn files(&self) -> Option<&dyn FileTree> {
        Some(self)
    }
}

impl FileTree for Ext4Guest<'_> {
    fn walk(&self, excludes: &[String]) -> Result<FileWalk> {
        let mut w = walk::build(&self.fs, excludes)?;
        let mut out = FileWalk {
            entries: std::mem::take(&mut w.entries),
            ..FileWalk::default()
        };
        if excludes.is_empty() {
            return Ok(out);
        }
        let free = self.free()?;
        let ex = excluded_bytes(
            &self.fs,
            std::mem::take(&mut w.excluded_blocks),
            std::mem::take(&mut w.protected_blocks),
            &free.ranges,
            free.bad_bitmaps > 0,
        )?;
        out.notes.push(format!(
            "{} excluded files ({} MiB)",
            w.excluded_files,
            ex.dropped.total() >> 20
        ));
        if w.unverified_files > 0 {
            out.notes.push(format!(
                "{} excluded files read all the same (their inode or an extent block failed its checksum)",
                w.unverified_files
            ));
        }
        out.notes.extend(ex.kept);
        out.excluded = ex.dropped;
        Ok(out)
    }
}

/// What of the excluded files' blocks is dropped, and why the rest is read.
struct Excluded {
    /// Bytes dropped.
    dropped: Ranges,
    /// What was read although an excluded file names it, for the plan line.
    kept: Option<String>,
}

/// The excluded files' blocks (`excluded_blocks`) that may be dropped: those the bitmap marks
/// in use (one it marks `free` is dropped as such anyway) that are neither file-system metadata
/// ([`Ext4::metadata_blocks`]) nor blocks the walk saw in use otherwise (`protected_blocks`:
/// directories, extent trees, other files' data; see [`walk::Walk`]). With a bitmap that failed
/// its checksum (`untrusted`) nothing is dropped: which blocks are in use is then unknown.
fn excluded_bytes(
    fs: &Ext4<'_>,
    excluded_blocks: Vec<(u64, u64)>,
    protected_blocks: Vec<(u64, u64)>,
    free: &Ranges,
    untrusted: bool,
) -> Result<Excluded> {
    let named = fs
        .to_bytes(&Ranges::from_unsorted(excluded_blocks))
        .subtract(free);
    if untrusted {
        let kept = (!named.is_empty()).then(|| {
            format!(
                "their {} KiB read as the block bitmaps are not trusted",
                named.total() >> 10
            )
        });
        return Ok(Excluded {
            dropped: Ranges::new(),
            kept,
        });
    }
    let protected = fs
        .metadata_blocks()?
        .union(&Ranges::from_unsorted(protected_blocks));
    let protected = fs.to_bytes(&protected);
    let dropped = named.subtract(&protected);
    let overlap = named.intersect(&protected).total();
    Ok(Excluded {
        dropped,
        kept: (overlap > 0).then(|| {
            format!(
                "{} KiB of their blocks read: file-system metadata or other files' blocks",
                overlap >> 10
            )
        }),
    })
}
