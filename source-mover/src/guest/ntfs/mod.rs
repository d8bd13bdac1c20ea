//! NTFS as a guest file system (Windows guests): the probe, what it lets the plan drop (`free`
//! clusters, the `pagefile` data of `\pagefile.sys`, `\swapfile.sys` and `\hiberfil.sys`, the
//! data of `excluded` files) and its file walk. Nothing outside this module knows about NTFS.
//!
//! - [`volume`]: the on-disk structures (boot sector, MFT records with their fixups, attributes
//!   and data runs, `$Volume`'s flags, `$LogFile`'s restart pages).
//! - [`scan`]: one pass over every MFT record: files, names, streams, and every cluster any
//!   record in use names.
//!
//! A partition is NTFS when its boot sector carries the `NTFS    ` OEM id (the partition type,
//! MBR 0x07 or GPT Microsoft basic data, is not consulted). One whose boot sector, `$MFT` or
//! `$MFT`'s record 0 is not sane is [`Probed::ReadInFull`]; so is a volume whose `$Volume`
//! dirty flag is set or whose `$LogFile` is not clean (a crash-consistent snapshot of a running
//! Windows: its log is not replayed here), and one whose `$MFT` has an attribute list.
//!
//! What is dropped, and only then:
//! - `free`: clusters `$Bitmap` marks free. None at all when `$Bitmap` marks free a cluster
//!   that an MFT record in use names (the two disagree: a flipped bit, a torn write), when
//!   `$Bitmap`'s record fails its fixup check, or when its size does not cover the volume.
//!   Cluster 0 (the boot sector) is never dropped.
//! - `pagefile`: the clusters of the unnamed `$DATA` of the root's `pagefile.sys`,
//!   `swapfile.sys` and `hiberfil.sys` (names matched case-insensitively) that no other record
//!   names. Their MFT records stay: the restored volume has the files, reading as zeros, and
//!   Windows recreates them at boot.
//! - `excluded`: likewise, the unnamed `$DATA` clusters of files whose every name matches an
//!   `--exclude` glob (case-insensitively, as Windows matches names).
//!
//! Nothing is dropped by name (`pagefile`, `excluded`) while any MFT record in use fails its
//! fixup check or cannot be parsed: which clusters it names is then unknown. Compressed, sparse
//! and encrypted streams drop exactly their own allocated clusters (sparse runs have none).
//! Alternate data streams are never dropped and not listed; a hard link is listed under each of
//! its names (an excluded file must be excluded under all of them to be dropped).

pub mod scan;
pub mod volume;

use std::cell::OnceCell;
use std::collections::HashMap;

use schema::files::{FileEntry, FileKind};

use super::partition::Partition;
use super::{glob, Droppable, FileTree, FileWalk, Guest, Probe, Probed, Reason};
use crate::error::Result;
use crate::ranges::Ranges;
use crate::source::BlockSource;
use scan::{Node, Scan};
use volume::{attr, le16, logfile_state, name_to_utf8, Body, Fault, Log, Slot, Volume};

/// Record numbers of the metadata files this module reads.
const LOGFILE: u64 = 2;
const VOLUME: u64 = 3;
const ROOT: u64 = 5;
const BITMAP: u64 = 6;
const EXTEND: u64 = 11;
/// Records below this are the file system's own (`$MFT` … and the reserved ones).
const FIRST_USER: u64 = 16;

/// The files whose data Windows recreates: dropped as `pagefile`.
const PAGEFILES: [&str; 3] = ["pagefile.sys", "swapfile.sys", "hiberfil.sys"];

/// `$VOLUME_INFORMATION` flag: the volume is dirty (chkdsk pending, not cleanly unmounted).
const VOLUME_IS_DIRTY: u16 = 0x0001;

/// The NTFS probe.
#[derive(Debug, Clone, Copy)]
pub struct NtfsProbe;

impl Probe for NtfsProbe {
    fn name(&self) -> &'static str {
        "NTFS"
    }

    fn probe<'a>(&self, disk: &'a dyn BlockSource, part: &Partition) -> Result<Probed<'a>> {
        match open(disk, part) {
            Ok(p) => Ok(p),
            Err(Fault::Io(e)) => Err(e),
            Err(Fault::Bad(why)) => Ok(Probed::ReadInFull(format!("NTFS, read in full: {why}"))),
        }
    }
}

fn open<'a>(disk: &'a dyn BlockSource, part: &Partition) -> volume::R<Probed<'a>> {
    let Some(v) = Volume::open(disk, part.start, part.len)? else {
        return Ok(Probed::NotMine);
    };
    let full = |why: String| Ok(Probed::ReadInFull(format!("NTFS, read in full: {why}")));
    // $Volume: the dirty flag.
    match v.record(VOLUME)? {
        Slot::Record(r) => {
            let flags = r
                .unnamed(attr::VOLUME_INFORMATION)
                .and_then(|a| r.value(a))
                .and_then(|val| le16(val, 10));
            match flags {
                Some(f) if f & VOLUME_IS_DIRTY != 0 => {
                    return full(format!(
                        "the volume is marked dirty (flags {f:#06x}: not cleanly unmounted or chkdsk pending)"
                    ))
                }
                Some(_) => {}
                None => return full("$Volume has no volume information".into()),
            }
        }
        _ => return full("$Volume's record is unreadable".into()),
    }
    // $LogFile: its restart area must say the volume was shut down cleanly.
    let Slot::Record(r) = v.record(LOGFILE)? else {
        return full("$LogFile's record is unreadable".into());
    };
    let Some(Body::NonResident {
        runs, data_size, ..
    }) = r.unnamed(attr::DATA).map(|a| &a.body)
    else {
        return full("$LogFile has no non-resident data".into());
    };
    let head = v.read_value(runs, (*data_size).min(8192), 8192)?;
    if let Log::NotClean(why) = logfile_state(&head) {
        return full(format!("$LogFile is not clean: {why}"));
    }
    let scan = Scan::read(&v)?;
    Ok(Probed::Found(Box::new(NtfsGuest {
        v,
        scan,
        free: OnceCell::new(),
    })))
}

/// An opened NTFS volume.
#[derive(Debug)]
struct NtfsGuest<'a> {
    v: Volume<'a>,
    scan: Scan,
    /// Free clusters (cluster ranges) and why none are when `$Bitmap` is not trusted.
    free: OnceCell<(Ranges, Option<String>)>,
}

impl NtfsGuest<'_> {
    /// Cluster ranges to partition-relative bytes, then to absolute disk bytes.
    fn to_bytes(&self, clusters: &Ranges) -> Ranges {
        let c = self.v.boot.cluster;
        let o = self.v.offset;
        Ranges::from_unsorted(
            clusters
                .as_slice()
                .iter()
                .map(|&(a, b)| (o + a * c, o + b * c))
                .collect(),
        )
    }

    fn free(&self) -> Result<&(Ranges, Option<String>)> {
        if let Some(f) = self.free.get() {
            return Ok(f);
        }
        let f = match self.free_clusters() {
            Ok(r) => (r, None),
            Err(Fault::Bad(why)) => (Ranges::new(), Some(why)),
            Err(Fault::Io(e)) => return Err(e),
        };
        Ok(self.free.get_or_init(|| f))
    }

    /// Clusters `$Bitmap` marks free (less cluster 0); [`Fault::Bad`] when it is not trusted.
    fn free_clusters(&self) -> volume::R<Ranges> {
        let v = &self.v;
        if self.scan.bad_records.iter().any(|(n, _)| *n == BITMAP) {
            return Err(Fault::Bad("$Bitmap's record fails its check".into()));
        }
        let Slot::Record(r) = v.record(BITMAP)? else {
            return Err(Fault::Bad("$Bitmap's record is unreadable".into()));
        };
        let Some(Body::NonResident {
            runs,
            start_vcn: 0,
            data_size,
            init_size,
        }) = r.unnamed(attr::DATA).map(|a| &a.body)
        else {
            return Err(Fault::Bad("$Bitmap has no non-resident data".into()));
        };
        let clusters = v.boot.clusters;
        let need = clusters.div_ceil(8);
        if *init_size < need || *data_size < need {
            return Err(Fault::Bad(format!(
                "$Bitmap holds {init_size} bytes, {need} needed for {clusters} clusters"
            )));
        }
        let mut free = Vec::new();
        let mut run: Option<u64> = None;
        let chunk = 1u64 << 20;
        let mut buf = Vec::new();
        let mut at = 0u64;
        while at < need {
            let n = chunk.min(need - at);
            buf.resize(n as usize, 0);
            v.read_runs(runs, at, &mut buf)?;
            for (i, &byte) in buf.iter().enumerate() {
                let first = (at + i as u64) * 8;
                if byte == 0xFF {
                    if let Some(s) = run.take() {
                        free.push((s, first));
                    }
                    continue;
                }
                for bit in 0..8 {
                    let cl = first + bit;
                    if cl >= clusters {
                        break;
                    }
                    match (byte & (1 << bit) != 0, run) {
                        (false, None) => run = Some(cl),
                        (true, Some(s)) => {
                            free.push((s, cl));
                            run = None;
                        }
                        _ => {}
                    }
                }
            }
            at += n;
        }
        if let Some(s) = run {
            free.push((s, clusters));
        }
        let free = Ranges::from_unsorted(free);
        // A cluster both free in $Bitmap and named by a record in use: the two disagree, and
        // neither can be trusted to say what is free.
        let both = free.intersect(&self.scan.claimed()).total();
        if both > 0 {
            return Err(Fault::Bad(format!(
                "$Bitmap marks {both} clusters free that MFT records in use name"
            )));
        }
        Ok(free.subtract(&Ranges::single(0, 1)))
    }

    /// Why nothing may be dropped by name, if so: records in use that fail their checks.
    fn untrusted(&self) -> Option<String> {
        let bad = &self.scan.bad_records;
        let (n, why) = bad.first()?;
        Some(format!(
            "{} MFT record{} in use unreadable (record {n} {why})",
            bad.len(),
            if bad.len() == 1 { "" } else { "s" }
        ))
    }

    /// The clusters of `node`'s unnamed `$DATA` that it alone names.
    fn own_data(&self, node: &Node, shared: &Ranges) -> Ranges {
        let Some(d) = &node.data else {
            return Ranges::new();
        };
        Ranges::from_unsorted(
            d.runs
                .iter()
                .filter_map(|r| r.lcn.map(|l| (l, l + r.count)))
                .collect(),
        )
        .subtract(shared)
    }

    /// The root's page, swap and hibernation files: (name as stored, record number).
    fn pagefiles(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = self
            .scan
            .nodes
            .iter()
            .filter(|(no, n)| **no >= FIRST_USER && !n.dir)
            .flat_map(|(no, n)| {
                n.names.iter().filter_map(move |nm| {
                    let s = name_to_utf8(&nm.name);
                    (nm.parent == ROOT && PAGEFILES.contains(&s.to_lowercase().as_str()))
                        .then_some((s, *no))
                })
            })
            .collect();
        out.sort();
        out
    }
}

impl Guest for NtfsGuest<'_> {
    fn droppable(&self) -> Result<Droppable> {
        let (free, why) = self.free()?;
        let free_bytes = self.to_bytes(free);
        let mut line = format!(
            "NTFS, {} KiB clusters, {} MiB free",
            self.v.boot.cluster / 1024,
            free_bytes.total() >> 20
        );
        if let Some(why) = why {
            line.push_str(&format!(", free clusters read ({why})"));
        }
        let mut dropped = vec![(Reason::Free, free_bytes)];
        let pf = self.pagefiles();
        if !pf.is_empty() {
            let names: Vec<String> = pf.iter().map(|(s, _)| format!("\\{s}")).collect();
            if let Some(why) = self.untrusted() {
                line.push_str(&format!(", {} read: {why}", names.join(", ")));
            } else {
                let shared = self.scan.shared();
                let mut cl = Ranges::new();
                for (_, no) in &pf {
                    if let Some(n) = self.scan.nodes.get(no) {
                        cl = cl.union(&self.own_data(n, &shared));
                    }
                }
                let bytes = self.to_bytes(&cl.subtract(free));
                line.push_str(&format!(
                    ", {} MiB pagefile ({})",
                    bytes.total() >> 20,
                    names.join(", ")
                ));
                dropped.push((Reason::Pagefile, bytes));
            }
        }
        Ok(Droppable {
            summary: line,
            dropped,
        })
    }

    fn files(&self) -> Option<&dyn FileTree> {
        Some(self)
    }
}

impl FileTree for NtfsGuest<'_> {
    fn walk(&self, excludes: &[String]) -> Result<FileWalk> {
        let nodes = &self.scan.nodes;
        let mut paths: HashMap<u64, Option<String>> = HashMap::new();
        paths.insert(ROOT, Some(String::new()));
        let mut out = FileWalk::default();
        let mut excluded_nodes = Vec::new();
        let mut transformed = 0u64;
        let mut skipped_names = 0u64;
        let mut numbers: Vec<u64> = nodes.keys().copied().collect();
        numbers.sort_unstable();
        for no in numbers {
            let node = &nodes[&no];
            if no < FIRST_USER {
                continue;
            }
            // Each name's path, and whether it is excluded.
            let mut named = Vec::new();
            let mut all_excluded = !node.names.is_empty();
            for nm in &node.names {
                let Some(parent) = dir_path(nodes, &mut paths, nm.parent, 0) else {
                    all_excluded = false;
                    continue; // an orphan, or under $Extend
                };
                let name = name_to_utf8(&nm.name);
                if name.is_empty() || name.contains(['/', '\0']) {
                    skipped_names += 1;
                    all_excluded = false;
                    continue;
                }
                let path = format!("{parent}/{name}");
                all_excluded &= excludes.iter().any(|g| excluded_by(g, &path));
                named.push(path);
            }
            if named.is_empty() {
                continue;
            }
            let excluded = all_excluded && !node.dir && !excludes.is_empty();
            if excluded {
                excluded_nodes.push(no);
            }
            let ext = match &node.data {
                Some(d) if !node.dir && d.transformed => {
                    transformed += 1;
                    Vec::new()
                }
                Some(d) if !node.dir => self.extents(d),
                _ => Vec::new(),
            };
            for path in named {
                out.entries.push(entry(node, path, excluded, ext.clone()));
            }
        }
        out.entries.sort_by(|a, b| a.path.cmp(&b.path));
        if transformed > 0 {
            out.notes.push(format!(
                "{transformed} compressed or encrypted files indexed without their data"
            ));
        }
        if skipped_names > 0 {
            out.notes
                .push(format!("{skipped_names} names with '/' or NUL not indexed"));
        }
        if excludes.is_empty() {
            return Ok(out);
        }
        if let Some(why) = self.untrusted() {
            out.notes.push(format!(
                "{} excluded files read: {why}",
                excluded_nodes.len()
            ));
            for e in &mut out.entries {
                e.excluded = false; // their data is read: they can be restored
            }
            return Ok(out);
        }
        let shared = self.scan.shared();
        let (free, _) = self.free()?;
        let mut cl = Ranges::new();
        for no in &excluded_nodes {
            cl = cl.union(&self.own_data(&nodes[no], &shared));
        }
        out.excluded = self.to_bytes(&cl.subtract(free));
        out.notes.push(format!(
            "{} excluded files ({} MiB)",
            excluded_nodes.len(),
            out.excluded.total() >> 20
        ));
        Ok(out)
    }
}

impl NtfsGuest<'_> {
    /// `[file offset, disk offset, length]` runs of a stream, clipped to the bytes written
    /// (past them it reads zeros) and merged where contiguous on both sides.
    fn extents(&self, d: &scan::Data) -> Vec<[u64; 3]> {
        let o = self.v.offset;
        if let Some(pieces) = &d.resident {
            return pieces.iter().map(|&[f, p, n]| [f, o + p, n]).collect();
        }
        let c = self.v.boot.cluster;
        let limit = d.init.min(d.size);
        let mut runs: Vec<_> = d.runs.iter().filter(|r| r.lcn.is_some()).collect();
        runs.sort_by_key(|r| r.vcn);
        let mut out: Vec<[u64; 3]> = Vec::new();
        for r in runs {
            let Some(l) = r.lcn else { continue };
            let foff = r.vcn * c;
            if foff >= limit {
                continue;
            }
            let len = (r.count * c).min(limit - foff);
            let doff = o + l * c;
            match out.last_mut() {
                Some(last) if last[0] + last[2] == foff && last[1] + last[2] == doff => {
                    last[2] += len
                }
                _ => out.push([foff, doff, len]),
            }
        }
        out
    }
}

/// Whether `path` or a directory above it matches `glob`, case-insensitively.
fn excluded_by(glob: &str, path: &str) -> bool {
    let (g, p) = (glob.to_lowercase(), path.to_lowercase());
    p.match_indices('/')
        .map(|(i, _)| i)
        .skip(1)
        .chain([p.len()])
        .any(|end| glob::matches(&g, &p[..end]))
}

/// The path of directory `no` from the root (`""` for the root), memoised in `paths`; `None`
/// for a directory that is not reachable from the root (orphans, loops, `$Extend`).
fn dir_path(
    nodes: &HashMap<u64, Node>,
    paths: &mut HashMap<u64, Option<String>>,
    no: u64,
    depth: u32,
) -> Option<String> {
    if let Some(p) = paths.get(&no) {
        return p.clone();
    }
    if depth > 512 || no == EXTEND {
        return None;
    }
    paths.insert(no, None); // a loop comes back here and finds None
    let node = nodes.get(&no).filter(|n| n.dir)?;
    let nm = node.names.first()?;
    let parent = dir_path(nodes, paths, nm.parent, depth + 1)?;
    let name = name_to_utf8(&nm.name);
    if name.is_empty() || name.contains(['/', '\0']) {
        return None;
    }
    let p = format!("{parent}/{name}");
    paths.insert(no, Some(p.clone()));
    Some(p)
}

/// FILE_ATTRIBUTE_READONLY.
const READONLY: u32 = 0x1;

/// The index entry of one name of `node`.
fn entry(node: &Node, path: String, excluded: bool, extents: Vec<[u64; 3]>) -> FileEntry {
    let ro = node.attributes & READONLY != 0;
    let (kind, mode) = if node.dir {
        (FileKind::Dir, 0o040_755)
    } else {
        (FileKind::File, if ro { 0o100_444 } else { 0o100_644 })
    };
    let size = match &node.data {
        Some(d) if !node.dir => d.size,
        _ => 0,
    };
    FileEntry {
        path,
        kind,
        size,
        mode,
        uid: 0,
        gid: 0,
        mtime: node.mtime,
        excluded,
        extents,
        inline: None,
    }
}

#[cfg(test)]
mod tests {
    use super::excluded_by;

    #[test]
    fn excludes_match_case_insensitively_and_cover_what_is_below() {
        assert!(excluded_by(
            "/Users/*/AppData/**",
            "/users/zoë/appdata/x/y.tmp"
        ));
        assert!(excluded_by("/temp", "/TEMP/a/b.bin"));
        assert!(excluded_by("*.ISO", "/Users/a/Win.iso"));
        assert!(!excluded_by("/temp", "/temporary/a"));
    }
}
