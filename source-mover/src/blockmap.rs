//! The block map of a disk: which bytes must be read, and which are dropped and why.
//!
//! Dropped, by reason (each byte counted under the first that applies):
//! - `swap`: partitions (or a whole disk) that start with a valid Linux swap header
//!   ([`crate::swap::Header`]): its pages 1..=`last_page`, so the restored partition keeps its
//!   header/UUID. A partition table's swap type alone proves nothing: without the header the
//!   partition is read in full;
//! - `free`: blocks an ext2/3/4 block bitmap marks free;
//! - `excluded`: data blocks of guest files matching an `--exclude` glob, where the bitmap marks
//!   them in use and they are neither file-system metadata nor blocks of other inodes the walk
//!   saw (a forged or cross-linked extent drops nothing it should not); none at all while a
//!   block bitmap of that file system fails its checksum;
//! - `hole`: holes of a sparse image file (never read; they are zeros anyway).
//!
//! Everything else is read: unknown partitions, gaps, unpartitioned space, file systems this
//! reader does not understand (among them a file system that needs recovery whose journal it
//! cannot replay: its `found` line says "read in full" and why), and partitions whose bytes are
//! not their own (they overlap another partition or the partition table, or run past the disk's
//! end; see [`crate::partition`]).

use std::collections::BTreeMap;

use crate::source::BlockSource;
use crate::error::Result;
use crate::ext4::{Ext4, FreeBlocks, Opened};
use crate::partition::{self, Partition};
use crate::ranges::Ranges;
use crate::swap;

/// The plan for one disk.
#[derive(Debug, Clone)]
pub struct DiskPlan {
    /// Disk size.
    pub size: u64,
    /// Bytes to read.
    pub read: Ranges,
    /// Bytes not read, by reason (`swap`, `free`, `excluded`, `hole`); disjoint.
    pub dropped: BTreeMap<&'static str, Ranges>,
    /// One line per partition or file system found, for the summary.
    pub found: Vec<String>,
    /// The file index of each ext2/3/4 file system: (partition number, entries).
    pub files: Vec<(u32, Vec<schema::files::FileEntry>)>,
    /// Seconds spent walking file systems (the one walk gives the index and the excluded files).
    pub files_seconds: f64,
    /// File systems whose index is still to be built by [`index_files`]: (partition number,
    /// byte offset, length). Only [`plan_deferred`] leaves any.
    pub unindexed: Vec<(u32, u64, u64)>,
}

/// The file indexes [`index_files`] builds: (partition number, entries) per file system, and
/// the seconds the walks took.
pub type FileIndexes = (Vec<(u32, Vec<schema::files::FileEntry>)>, f64);

/// Builds the plan of `disk`, dropping the data blocks of files matching `excludes`, with the
/// file index of every ext2/3/4 file system in [`DiskPlan::files`].
///
/// # Errors
/// I/O errors reading the disk's metadata.
pub fn plan(disk: &dyn BlockSource, excludes: &[String]) -> Result<DiskPlan> {
    plan_with(disk, excludes, true)
}

/// [`plan`], except that a file system with no excludes is not walked: the block map needs only
/// its bitmaps, so its file index is left in [`DiskPlan::unindexed`] for [`index_files`], which
/// the backup runs beside its data pipeline instead of before it.
///
/// # Errors
/// I/O errors reading the disk's metadata.
pub fn plan_deferred(disk: &dyn BlockSource, excludes: &[String]) -> Result<DiskPlan> {
    plan_with(disk, excludes, false)
}

/// Walks the file systems `plan_deferred` left unindexed (metadata reads only).
///
/// # Errors
/// I/O errors reading metadata; a file system that no longer opens is an error (the plan found
/// it a moment ago).
pub fn index_files(disk: &dyn BlockSource, unindexed: &[(u32, u64, u64)]) -> Result<FileIndexes> {
    let t = std::time::Instant::now();
    let mut files = Vec::new();
    for &(number, start, len) in unindexed {
        let Opened::Ext4(fs) = Ext4::open(disk, start, len)? else {
            return Err(crate::error::Error::Invalid(format!(
                "the ext2/3/4 file system at byte {start} is gone since the plan read it"
            )));
        };
        files.push((number, crate::file_index::build(&fs, &[])?.entries));
    }
    Ok((files, t.elapsed().as_secs_f64()))
}

fn plan_with(disk: &dyn BlockSource, excludes: &[String], walk_now: bool) -> Result<DiskPlan> {
    let mut parts = partition::read(disk)?;
    let whole_disk = parts.is_empty();
    if whole_disk {
        parts.push(Partition {
            number: 0,
            start: 0,
            len: disk.size(),
            kind: partition::Kind::Mbr(0),
            conflict: None,
        });
    }
    let (mut swap, mut free, mut excluded) = (Ranges::new(), Ranges::new(), Ranges::new());
    let mut found = Vec::new();
    let mut files = Vec::new();
    let mut files_seconds = 0.0;
    let mut unindexed = Vec::new();
    for p in &parts {
        let name = if whole_disk {
            "whole disk".to_string()
        } else {
            format!("partition {}", p.number)
        };
        if let Some(why) = &p.conflict {
            found.push(format!("{name}: {why}: read in full"));
            continue;
        }
        let opened = Ext4::open(disk, p.start, p.len)?;
        if let Opened::ReadInFull(why) = &opened {
            found.push(format!("{name}: ext2/3/4, read in full: {why}"));
        } else if let Opened::Ext4(fs) = opened {
            let FreeBlocks {
                ranges: f,
                bad_bitmaps,
            } = fs.free_ranges()?;
            let mut line = format!(
                "{name}: ext2/3/4, {} KiB blocks, {} MiB free",
                fs.block_size / 1024,
                f.total() >> 20
            );
            if let Some(r) = fs.replay() {
                line.push_str(&format!(
                    ", journal replayed in memory ({} transaction{}, {} blocks)",
                    r.transactions,
                    if r.transactions == 1 { "" } else { "s" },
                    r.blocks()
                ));
            }
            if bad_bitmaps > 0 {
                line.push_str(&format!(
                    ", {bad_bitmaps} block bitmaps or group descriptors failed their checksum (those groups read in full)"
                ));
            }
            free = free.union(&f);
            if !walk_now && excludes.is_empty() {
                unindexed.push((p.number, p.start, p.len));
                found.push(line);
                continue;
            }
            let t = std::time::Instant::now();
            let mut walk = crate::file_index::build(&fs, excludes)?;
            files_seconds += t.elapsed().as_secs_f64();
            if !excludes.is_empty() {
                let ex = excluded_bytes(
                    &fs,
                    std::mem::take(&mut walk.excluded_blocks),
                    std::mem::take(&mut walk.protected_blocks),
                    &f,
                    bad_bitmaps > 0,
                )?;
                line.push_str(&format!(
                    ", {} excluded files ({} MiB)",
                    walk.excluded_files,
                    ex.dropped.total() >> 20
                ));
                if walk.unverified_files > 0 {
                    line.push_str(&format!(
                        ", {} excluded files read all the same (their inode or an extent block failed its checksum)",
                        walk.unverified_files
                    ));
                }
                if let Some(why) = ex.kept {
                    line.push_str(&format!(", {why}"));
                }
                excluded = excluded.union(&ex.dropped);
            }
            line.push_str(&format!(", {} files indexed", walk.entries.len()));
            files.push((p.number, walk.entries));
            found.push(line);
        } else if let Some(h) = swap::Header::read(disk, p.start, p.len)? {
            let (a, b) = h.swap_bytes();
            swap = swap.union(&Ranges::single(p.start + a, p.start + b));
            let mut line = format!("{name}: Linux swap, {} MiB dropped", (b - a) >> 20);
            if b < p.len {
                line.push_str(&format!(
                    ", {} KiB past its last page read",
                    (p.len - b) >> 10
                ));
            }
            found.push(line);
        } else if p.kind.is_swap() {
            found.push(format!(
                "{name}: typed Linux swap but no valid swap header: read in full"
            ));
        } else if !whole_disk {
            found.push(format!("{name}: read in full ({:?})", p.kind));
        }
    }
    let all = Ranges::single(0, disk.size());
    let free = free.subtract(&swap);
    let excluded = excluded.subtract(&swap).subtract(&free);
    let keep = all.subtract(&swap).subtract(&free).subtract(&excluded);
    let data = disk.allocated()?;
    let read = keep.intersect(&data);
    let hole = keep.subtract(&data);
    let dropped = BTreeMap::from([
        ("swap", swap),
        ("free", free),
        ("excluded", excluded),
        ("hole", hole),
    ]);
    Ok(DiskPlan {
        size: disk.size(),
        read,
        dropped,
        found,
        files,
        files_seconds,
        unindexed,
    })
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
/// directories, extent trees, other files' data; see [`crate::file_index::Walk`]). With a
/// bitmap that failed its checksum (`untrusted`) nothing is dropped: which blocks are in use is
/// then unknown.
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

/// Matches a path such as `/var/log/syslog` against a pattern: `*` within one path segment,
/// `**` across segments, `?` one character. A pattern without `/` matches the last segment
/// anywhere; one with `/` is anchored at the file system's root. A pattern that matches a
/// directory matches everything below it.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    if !pattern.contains('/') {
        let name = path.rsplit('/').next().unwrap_or(path);
        return seg_match(pattern.as_bytes(), name.as_bytes());
    }
    let pat: Vec<&str> = pattern
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    path_match(&pat, &segs)
}

fn path_match(pat: &[&str], segs: &[&str]) -> bool {
    match pat.first() {
        None => segs.is_empty(),
        Some(&"**") => (0..=segs.len()).any(|k| path_match(&pat[1..], &segs[k..])),
        Some(p) => {
            !segs.is_empty()
                && seg_match(p.as_bytes(), segs[0].as_bytes())
                && path_match(&pat[1..], &segs[1..])
        }
    }
}

fn seg_match(p: &[u8], s: &[u8]) -> bool {
    schema::files::name_match(p, s)
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("/var/log", "/var/log"));
        assert!(glob_match("/var/log/**", "/var/log/a/b.txt"));
        assert!(glob_match("/var/*/x", "/var/log/x"));
        assert!(!glob_match("/var/*/x", "/var/log/y/x"));
        assert!(glob_match("*.iso", "/home/u/dl/file.iso"));
        assert!(!glob_match("*.iso", "/home/u/dl/file.isox"));
        assert!(glob_match("/home/?/dl", "/home/u/dl"));
        assert!(glob_match("/**/cache", "/a/b/cache"));
        assert!(!glob_match("/var/log", "/var/logs"));
    }
}
