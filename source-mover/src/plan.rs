//! The plan of a disk: which bytes must be read, and which are dropped and why.
//!
//! It combines the two seams: the guest file systems ([`crate::guest`]: partition table, then
//! the ordered probes) say what of each partition may be dropped, and the source
//! ([`BlockSource::allocated`]) says which bytes are known zeros without reading them. What
//! changed since a base ([`crate::cbt`]) narrows this further in the backup, per block.
//!
//! Dropped, by reason (each byte counted under the first that applies):
//! - `swap`: partitions (or a whole disk) that start with a valid Linux swap header
//!   ([`crate::guest::swap`]): its pages 1..=`last_page`, so the restored partition keeps its
//!   header/UUID. A partition table's swap type alone proves nothing: without the header the
//!   partition is read in full;
//! - `free`: blocks a file system's allocation bitmaps mark free (ext2/3/4: both the replayed
//!   and the on-disk bitmap, of bitmaps whose checksums hold);
//! - `pagefile`: data clusters of a Windows guest's `\pagefile.sys`, `\swapfile.sys` and
//!   `\hiberfil.sys` that no other MFT record names ([`crate::guest::ntfs`]; NTFS free clusters
//!   count as `free`);
//! - `excluded`: data blocks of guest files matching an `--exclude` glob, where the bitmap marks
//!   them in use and they are neither file-system metadata nor blocks of other inodes the walk
//!   saw (a forged or cross-linked extent drops nothing it should not); none at all while a
//!   block bitmap of that file system fails its checksum;
//! - `hole`: bytes the source knows are zeros (holes of a sparse image file): never read.
//!
//! Everything else is read: unknown partitions, gaps, unpartitioned space, file systems no probe
//! understands (among them a file system that needs recovery whose journal it cannot replay:
//! its `found` line says "read in full" and why), and partitions whose bytes are not their own
//! (they overlap another partition or the partition table, or run past the disk's end; see
//! [`crate::guest::partition`]).

use std::collections::BTreeMap;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::guest::partition::{self, Partition};
use crate::guest::{self, Probed, Reason};
use crate::ranges::Ranges;
use crate::source::BlockSource;

/// The plan for one disk.
#[derive(Debug, Clone)]
pub struct DiskPlan {
    /// Disk size.
    pub size: u64,
    /// Bytes to read.
    pub read: Ranges,
    /// Bytes not read, by reason (`swap`, `free`, `pagefile`, `excluded`, `hole`; every key
    /// present);
    /// disjoint.
    pub dropped: BTreeMap<&'static str, Ranges>,
    /// One line per partition or file system found, for the summary.
    pub found: Vec<String>,
    /// The file index of each guest file system walked: (partition number, entries).
    pub files: Vec<(u32, Vec<schema::files::FileEntry>)>,
    /// Seconds spent walking file systems (the one walk gives the index and the excluded files).
    pub files_seconds: f64,
    /// The [`guest::Probe::name`] of each file system with a file index (walked now or left
    /// unindexed), by partition number: the commit records it (`NTFS` paths match
    /// case-insensitively).
    pub fs_names: BTreeMap<u32, &'static str>,
    /// File systems whose index is still to be built by [`index_files`]. Only
    /// [`plan_deferred`] leaves any.
    pub unindexed: Vec<Unindexed>,
}

/// A file system whose file walk [`plan_deferred`] left for [`index_files`].
#[derive(Debug, Clone)]
pub struct Unindexed {
    /// Where it is.
    pub part: Partition,
    /// The [`guest::Probe::name`] of the probe that found it.
    pub probe: &'static str,
}

/// The file indexes [`index_files`] builds: (partition number, entries) per file system, and
/// the seconds the walks took.
pub type FileIndexes = (Vec<(u32, Vec<schema::files::FileEntry>)>, f64);

/// The name of the bytes the source knows are zeros, in [`DiskPlan::dropped`].
pub const HOLE: &str = "hole";

/// Builds the plan of `disk`, dropping the data blocks of files matching `excludes`, with the
/// file index of every guest file system in [`DiskPlan::files`].
///
/// # Errors
/// I/O errors reading the disk's metadata.
pub fn plan(disk: &dyn BlockSource, excludes: &[String]) -> Result<DiskPlan> {
    plan_with(disk, excludes, true)
}

/// [`plan`], except that a file system with no excludes is not walked: the block map needs only
/// its allocation bitmaps, so its file index is left in [`DiskPlan::unindexed`] for
/// [`index_files`], which the backup runs beside its data pipeline instead of before it.
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
pub fn index_files(disk: &dyn BlockSource, unindexed: &[Unindexed]) -> Result<FileIndexes> {
    let t = Instant::now();
    let mut files = Vec::new();
    for u in unindexed {
        let gone = || {
            Error::Invalid(format!(
                "the {} file system at byte {} is gone since the plan read it",
                u.probe, u.part.start
            ))
        };
        let probe = guest::probes::probe_named(u.probe).ok_or_else(gone)?;
        let Probed::Found(g) = probe.probe(disk, &u.part)? else {
            return Err(gone());
        };
        let tree = g.files().ok_or_else(gone)?;
        files.push((u.part.number, tree.walk(&[])?.entries));
    }
    Ok((files, t.elapsed().as_secs_f64()))
}

/// What the partitions of one disk add up to while they are planned.
#[derive(Default)]
struct Tally {
    dropped: BTreeMap<Reason, Ranges>,
    found: Vec<String>,
    files: Vec<(u32, Vec<schema::files::FileEntry>)>,
    files_seconds: f64,
    fs_names: BTreeMap<u32, &'static str>,
    unindexed: Vec<Unindexed>,
}

fn plan_with(disk: &dyn BlockSource, excludes: &[String], walk_now: bool) -> Result<DiskPlan> {
    let size = disk.size();
    let mut parts = partition::read(disk)?;
    let whole_disk = parts.is_empty();
    if whole_disk {
        parts.push(Partition {
            number: 0,
            start: 0,
            len: size,
            kind: partition::Kind::Mbr(0),
            conflict: None,
        });
    }
    let mut tally = Tally::default();
    for p in &parts {
        let name = if whole_disk {
            "whole disk".to_string()
        } else {
            format!("partition {}", p.number)
        };
        if let Some(why) = &p.conflict {
            tally.found.push(format!("{name}: {why}: read in full"));
            continue;
        }
        if !probe_partition(disk, p, &name, excludes, walk_now, &mut tally)? && !whole_disk {
            tally
                .found
                .push(format!("{name}: read in full ({:?})", p.kind));
        }
    }
    // Each byte under the first reason that applies; the rest is read where the source may
    // hold data, and is a hole elsewhere.
    let mut taken = Ranges::new();
    let mut dropped = BTreeMap::new();
    for reason in Reason::ALL {
        let r = tally
            .dropped
            .remove(&reason)
            .unwrap_or_default()
            .subtract(&taken);
        taken = taken.union(&r);
        dropped.insert(reason.as_str(), r);
    }
    let keep = Ranges::single(0, size).subtract(&taken);
    let data = disk.allocated()?;
    dropped.insert(HOLE, keep.subtract(&data));
    Ok(DiskPlan {
        size,
        read: keep.intersect(&data),
        dropped,
        found: tally.found,
        files: tally.files,
        files_seconds: tally.files_seconds,
        fs_names: tally.fs_names,
        unindexed: tally.unindexed,
    })
}

/// Offers partition `p` to the probes in order and adds what the first that recognises it
/// says to `tally`; `false` when none does.
fn probe_partition(
    disk: &dyn BlockSource,
    p: &Partition,
    name: &str,
    excludes: &[String],
    walk_now: bool,
    tally: &mut Tally,
) -> Result<bool> {
    for probe in guest::probes::PROBES {
        let g = match probe.probe(disk, p)? {
            Probed::NotMine => continue,
            Probed::ReadInFull(why) => {
                tally.found.push(format!("{name}: {why}"));
                return Ok(true);
            }
            Probed::Found(g) => g,
        };
        let d = g.droppable()?;
        let mut line = format!("{name}: {}", d.summary);
        for (reason, r) in d.dropped {
            let all = tally.dropped.entry(reason).or_default();
            *all = all.union(&r);
        }
        if let Some(tree) = g.files() {
            tally.fs_names.insert(p.number, probe.name());
            if !walk_now && excludes.is_empty() {
                tally.unindexed.push(Unindexed {
                    part: p.clone(),
                    probe: probe.name(),
                });
            } else {
                let t = Instant::now();
                let walk = tree.walk(excludes)?;
                tally.files_seconds += t.elapsed().as_secs_f64();
                for note in &walk.notes {
                    line.push_str(", ");
                    line.push_str(note);
                }
                let all = tally.dropped.entry(Reason::Excluded).or_default();
                *all = all.union(&walk.excluded);
                line.push_str(&format!(", {} files indexed", walk.entries.len()));
                tally.files.push((p.number, walk.entries));
            }
        }
        tally.found.push(line);
        return Ok(true);
    }
    Ok(false)
}
