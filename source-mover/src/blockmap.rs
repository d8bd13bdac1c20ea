//! The block map of a disk: which bytes must be read, and which are dropped and why.
//!
//! Dropped, by reason (each byte counted under the first that applies):
//! - `swap`: Linux swap partitions (MBR type 0x82, the GPT Linux-swap GUID, or the `SWAPSPACE2`
//!   signature) except their first 4 KiB page, so the restored partition keeps its header/UUID;
//! - `free`: blocks an ext2/3/4 block bitmap marks free;
//! - `excluded`: data blocks of guest files matching an `--exclude` glob (metadata stays);
//! - `hole`: holes of a sparse image file (never read; they are zeros anyway).
//!
//! Everything else is read: unknown partitions, gaps, unpartitioned space, file systems this
//! reader does not understand.

use std::collections::BTreeMap;

use crate::disk::Disk;
use crate::error::Result;
use crate::ext4::Ext4;
use crate::partition::{self, Partition};
use crate::ranges::Ranges;

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
    /// Seconds spent building the file indexes.
    pub files_seconds: f64,
}

/// Builds the plan of `disk`, dropping the data blocks of files matching `excludes`.
///
/// # Errors
/// I/O errors reading the disk's metadata.
pub fn plan(disk: &Disk, excludes: &[String]) -> Result<DiskPlan> {
    let mut parts = partition::read(disk)?;
    let whole_disk = parts.is_empty();
    if whole_disk {
        parts.push(Partition {
            number: 0,
            start: 0,
            len: disk.size,
            kind: partition::Kind::Mbr(0),
        });
    }
    let (mut swap, mut free, mut excluded) = (Ranges::new(), Ranges::new(), Ranges::new());
    let mut found = Vec::new();
    let mut files = Vec::new();
    let mut files_seconds = 0.0;
    for p in &parts {
        let name = if whole_disk {
            "whole disk".to_string()
        } else {
            format!("partition {}", p.number)
        };
        if let Some(fs) = Ext4::open(disk, p.start, p.len)? {
            let f = fs.free_ranges()?;
            let mut line = format!(
                "{name}: ext2/3/4, {} KiB blocks, {} MiB free",
                fs.block_size / 1024,
                f.total() >> 20
            );
            if !excludes.is_empty() {
                let (ex, files) = excluded_ranges(&fs, excludes)?;
                line.push_str(&format!(
                    ", {files} excluded files ({} MiB)",
                    ex.total() >> 20
                ));
                excluded = excluded.union(&ex);
            }
            free = free.union(&f);
            let t = std::time::Instant::now();
            let index = crate::file_index::build(&fs, excludes)?;
            files_seconds += t.elapsed().as_secs_f64();
            line.push_str(&format!(", {} files indexed", index.len()));
            files.push((p.number, index));
            found.push(line);
        } else if p.len > 4096 && (has_swap_signature(disk, p.start)? || p.kind.is_swap()) {
            swap = swap.union(&Ranges::single(p.start + 4096, p.start + p.len));
            found.push(format!(
                "{name}: Linux swap, {} MiB dropped",
                (p.len - 4096) >> 20
            ));
        } else if !whole_disk {
            found.push(format!("{name}: read in full ({:?})", p.kind));
        }
    }
    let all = Ranges::single(0, disk.size);
    let free = free.subtract(&swap);
    let excluded = excluded.subtract(&swap).subtract(&free);
    let keep = all.subtract(&swap).subtract(&free).subtract(&excluded);
    let read = keep.intersect(&disk.data);
    let hole = keep.subtract(&disk.data);
    let dropped = BTreeMap::from([
        ("swap", swap),
        ("free", free),
        ("excluded", excluded),
        ("hole", hole),
    ]);
    Ok(DiskPlan {
        size: disk.size,
        read,
        dropped,
        found,
        files,
        files_seconds,
    })
}

fn has_swap_signature(disk: &Disk, start: u64) -> Result<bool> {
    if start + 4096 > disk.size {
        return Ok(false);
    }
    let mut sig = [0u8; 10];
    disk.read_at(&mut sig, start + 4086)?;
    Ok(&sig == b"SWAPSPACE2" || &sig == b"SWAP-SPACE")
}

/// Data blocks of every regular file under the root whose path matches a pattern.
fn excluded_ranges(fs: &Ext4<'_>, patterns: &[String]) -> Result<(Ranges, u64)> {
    let mut blocks = Vec::new();
    let mut files = 0u64;
    // (inode, path, whether an ancestor directory already matched)
    let mut stack = vec![(2u64, String::new(), false)];
    let mut seen = std::collections::HashSet::new();
    while let Some((ino, path, inherited)) = stack.pop() {
        if !seen.insert(ino) || seen.len() > 50_000_000 {
            continue;
        }
        let Some(dir) = fs.inode(ino)? else { continue };
        for (name, child, _) in fs.read_dir(&dir)? {
            if name == b"." || name == b".." {
                continue;
            }
            let child_path = format!("{path}/{}", String::from_utf8_lossy(&name));
            let hit = inherited || patterns.iter().any(|p| glob_match(p, &child_path));
            let Some(inode) = fs.inode(child)? else {
                continue;
            };
            if inode.is_dir() {
                stack.push((child, child_path, hit));
            } else if inode.is_file() && hit {
                let (runs, _) = fs.block_map(&inode)?;
                blocks.extend(runs.into_iter().map(|(_, phys, n)| (phys, phys + n)));
                files += 1;
            }
        }
    }
    Ok((fs.to_bytes(&Ranges::from_unsorted(blocks)), files))
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
