//! The metadata walk of an ext2/3/4 file system: every file, directory and link for the guest
//! file index, with the disk byte ranges that hold each regular file's data (so the repository
//! can list, search and serve single files without the mover), and in the same pass the blocks
//! of excluded files and of everything else (directories and inodes only; file data is never
//! read here).

use schema::files::{FileEntry, FileKind};

use super::fs::{Ext4, Inode};
use crate::error::Result;
use crate::guest::glob;

/// What one walk of a file system gives: the index, and the blocks of the excluded files.
#[derive(Debug, Default)]
pub struct Walk {
    /// Every entry, in walk order.
    pub entries: Vec<FileEntry>,
    /// Data blocks (unwritten extents included) of excluded regular files, as
    /// (first, end) file-system block ranges.
    pub excluded_blocks: Vec<(u64, u64)>,
    /// Excluded regular files.
    pub excluded_files: u64,
    /// Excluded regular files read all the same: their inode or an extent block failed its
    /// checksum, so their block map is not trusted (not counted in `excluded_files`).
    pub unverified_files: u64,
    /// Blocks the walk saw that are not excluded files' data, as (first, end) file-system block
    /// ranges: directory blocks, extent-tree and indirect blocks and extended-attribute blocks
    /// of every inode walked, symlink blocks, and the data of files not excluded (a block an
    /// excluded file shares with one of these is read). Collected only when there are excludes.
    pub protected_blocks: Vec<(u64, u64)>,
}

/// Walks the file system from its root. Entries come in walk order; files matching an exclude
/// pattern (or under a directory that matches) are flagged `excluded`, and their data blocks
/// collected so the plan can drop them.
///
/// # Errors
/// I/O errors reading metadata.
pub fn build(fs: &Ext4<'_>, excludes: &[String]) -> Result<Walk> {
    let mut walk = Walk::default();
    let mut stack = vec![(2u64, String::new(), false)];
    let mut seen = std::collections::HashSet::new();
    let protect = !excludes.is_empty();
    while let Some((ino, path, inherited)) = stack.pop() {
        if !seen.insert(ino) {
            continue; // a directory loop (corruption): never walk it twice
        }
        let Some(dir) = fs.inode(ino)? else { continue };
        if protect {
            protect_blocks(fs, &dir, &mut walk.protected_blocks)?;
        }
        for (name, child, _) in fs.read_dir(&dir)? {
            if name == b"." || name == b".." || name.contains(&b'/') || name.is_empty() {
                continue;
            }
            let child_path = format!("{path}/{}", String::from_utf8_lossy(&name));
            let excluded = inherited || excludes.iter().any(|p| glob::matches(p, &child_path));
            let Some(inode) = fs.inode(child)? else {
                continue;
            };
            let kind = match inode.mode() & 0xF000 {
                0x8000 => FileKind::File,
                0x4000 => FileKind::Dir,
                0xA000 => FileKind::Symlink,
                _ => FileKind::Other,
            };
            let mut e = FileEntry {
                path: child_path.clone(),
                kind,
                size: inode.size(),
                mode: u32::from(inode.mode()),
                uid: inode.uid(),
                gid: inode.gid(),
                mtime: inode.mtime(),
                excluded: excluded && kind == FileKind::File,
                extents: Vec::new(),
                inline: inode.fast_symlink_target(),
            };
            match kind {
                FileKind::Dir => stack.push((child, child_path, excluded)),
                FileKind::File => {
                    e.extents = extents(fs, &inode)?;
                    if excluded {
                        match fs.verified_runs(&inode)? {
                            Some((runs, tree)) => {
                                walk.excluded_blocks
                                    .extend(runs.into_iter().map(|(_, phys, n)| (phys, phys + n)));
                                walk.protected_blocks.extend(metadata_of(&inode, &tree));
                                walk.excluded_files += 1;
                            }
                            None => {
                                e.excluded = false; // its blocks are read: it can be restored
                                walk.unverified_files += 1;
                                protect_blocks(fs, &inode, &mut walk.protected_blocks)?;
                            }
                        }
                    } else if protect {
                        protect_blocks(fs, &inode, &mut walk.protected_blocks)?;
                    }
                }
                FileKind::Symlink if protect => {
                    protect_blocks(fs, &inode, &mut walk.protected_blocks)?;
                }
                FileKind::Other if protect => {
                    // Device numbers, not blocks, fill a device's block map: only the xattrs.
                    walk.protected_blocks
                        .extend(inode.xattr_block().map(|b| (b, b + 1)));
                }
                _ => {}
            }
            walk.entries.push(e);
        }
    }
    Ok(walk)
}

/// Adds every block of `inode` (data, extent-tree or indirect, extended attributes) to `out`.
fn protect_blocks(fs: &Ext4<'_>, inode: &Inode, out: &mut Vec<(u64, u64)>) -> Result<()> {
    let (runs, tree) = fs.block_map(inode)?;
    out.extend(runs.iter().map(|&(_, phys, n)| (phys, phys + n)));
    out.extend(metadata_of(inode, &tree));
    Ok(())
}

/// An inode's extent-tree or indirect blocks (`tree`, from its block map) and its
/// extended-attribute block, as one-block ranges.
fn metadata_of<'a>(inode: &Inode, tree: &'a [u64]) -> impl Iterator<Item = (u64, u64)> + 'a {
    tree.iter()
        .copied()
        .chain(inode.xattr_block())
        .map(|b| (b, b + 1))
}

/// `[file offset, disk offset, length]` runs of a regular file, clipped to its size and merged
/// where contiguous on both sides.
fn extents(fs: &Ext4<'_>, inode: &Inode) -> Result<Vec<[u64; 3]>> {
    let bs = fs.block_size;
    let size = inode.size();
    let mut runs = fs.content_runs(inode)?;
    runs.sort_unstable();
    let mut out: Vec<[u64; 3]> = Vec::new();
    for (logical, phys, count) in runs {
        let foff = logical * bs;
        if foff >= size {
            continue;
        }
        let len = (count * bs).min(size - foff);
        let doff = fs.offset + phys * bs;
        match out.last_mut() {
            Some(last) if last[0] + last[2] == foff && last[1] + last[2] == doff => last[2] += len,
            _ => out.push([foff, doff, len]),
        }
    }
    Ok(out)
}
