//! Guest file systems: the seam between a disk's bytes and what the guest keeps in them.
//!
//! The plan ([`crate::plan`]) reads the partition table ([`partition`]), then offers each sound
//! partition (the whole disk when there is no table) to the probes of [`probes::PROBES`], in
//! order. The first probe that recognises the partition answers for it ([`Probe::probe`]):
//!
//! - [`Probed::NotMine`]: not this file system; the next probe is asked;
//! - [`Probed::ReadInFull`]: this file system (or labelled as it) but not one this reader can
//!   trust (a journal it cannot replay, a type code without the header that proves it): the
//!   partition is read in full and no later probe is asked;
//! - [`Probed::Found`]: a [`Guest`], which tells what of the partition may be dropped and why
//!   ([`Guest::droppable`], by [`Reason`]) and, if it has files, the walk of its file tree for
//!   the guest catalog and for `--exclude` ([`Guest::files`], [`FileTree::walk`]).
//!
//! A partition no probe recognises is read in full. Every probe keeps the one rule: a doubt
//! reads more, never less (metadata that fails a checksum never drops a block).
//!
//! Adding a file system (as [`ntfs`] was, after [`ext4`]) is one module here that implements [`Probe`] and [`Guest`]
//! (and [`FileTree`] when it has files to index), and one line in [`probes::PROBES`]; nothing
//! else knows about any file system. The order of [`probes::PROBES`] matters only for a
//! partition that two probes would both claim: the first one wins.

pub mod ext4;
pub mod glob;
pub mod ntfs;
pub mod partition;
pub mod probes;
pub mod swap;

use schema::files::FileEntry;

use crate::error::Result;
use crate::ranges::Ranges;
use crate::source::BlockSource;
use partition::Partition;

/// Why a probe lets bytes go unread. Each byte counts under the first reason that applies, in
/// this order (the plan's own reason, `hole`, comes last).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// Swap pages behind a valid swap header.
    Swap,
    /// Blocks the file system's allocation bitmaps mark free.
    Free,
    /// Data clusters of a Windows guest's `\pagefile.sys`, `\swapfile.sys` and
    /// `\hiberfil.sys` (their MFT records are kept: restored, they read as zeros).
    Pagefile,
    /// Data blocks of guest files matching an `--exclude` glob.
    Excluded,
}

impl Reason {
    /// Every reason, in precedence order.
    pub const ALL: [Reason; 4] = [
        Reason::Swap,
        Reason::Free,
        Reason::Pagefile,
        Reason::Excluded,
    ];

    /// The name in reports and manifests (`skipped_bytes`).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Swap => "swap",
            Reason::Free => "free",
            Reason::Pagefile => "pagefile",
            Reason::Excluded => "excluded",
        }
    }
}

/// What one probe says about one partition.
#[derive(Debug)]
pub enum Probed<'a> {
    /// Not this file system.
    NotMine,
    /// This file system, or labelled as it, but not one that can be trusted: read in full. The
    /// summary line after "partition N: ", saying why (e.g. "ext2/3/4, read in full: …").
    ReadInFull(String),
    /// A file system (or swap area) this probe understands.
    Found(Box<dyn Guest + 'a>),
}

/// Recognises one kind of file system. Probes are stateless values in [`probes::PROBES`].
pub trait Probe: Sync {
    /// The file system's name, for messages ("ext2/3/4", "Linux swap").
    fn name(&self) -> &'static str;

    /// Whether `part` of `disk` holds this file system; reads only its metadata.
    ///
    /// # Errors
    /// I/O errors reading the disk. A structure it does not understand is never an error:
    /// [`Probed::NotMine`] or [`Probed::ReadInFull`].
    fn probe<'a>(&self, disk: &'a dyn BlockSource, part: &Partition) -> Result<Probed<'a>>;
}

/// What a [`Guest`] lets the plan drop, and the line that says so.
#[derive(Debug, Clone, Default)]
pub struct Droppable {
    /// The summary line after "partition N: " (e.g. "ext2/3/4, 4 KiB blocks, 80 MiB free").
    pub summary: String,
    /// Bytes that need not be read, as absolute byte ranges on the disk, by reason. Only what is
    /// proven unneeded: unknown means read.
    pub dropped: Vec<(Reason, Ranges)>,
}

/// A file system (or swap area) a probe found.
pub trait Guest: std::fmt::Debug {
    /// What may be dropped, and why.
    ///
    /// # Errors
    /// I/O errors reading metadata.
    fn droppable(&self) -> Result<Droppable>;

    /// Its file tree, for the guest catalog and for `--exclude`; `None` when it has no files
    /// (swap).
    fn files(&self) -> Option<&dyn FileTree> {
        None
    }
}

/// One walk of a file tree.
#[derive(Debug, Default)]
pub struct FileWalk {
    /// Every entry for the guest catalog, in walk order (paths from the file system's root;
    /// regular files' extents as absolute disk bytes; excluded files flagged).
    pub entries: Vec<FileEntry>,
    /// Bytes of excluded files that may be dropped ([`Reason::Excluded`]): blocks in use by
    /// those files only, never metadata or blocks another file or directory also names.
    pub excluded: Ranges,
    /// Pieces of the summary line (each appended after ", "): excluded files, what was read
    /// all the same and why.
    pub notes: Vec<String>,
}

/// The files of a guest file system.
pub trait FileTree {
    /// Walks the tree from its root (metadata reads only); files matching a glob of `excludes`
    /// (see [`glob::matches`]) or under a directory that matches are excluded.
    ///
    /// # Errors
    /// I/O errors reading metadata.
    fn walk(&self, excludes: &[String]) -> Result<FileWalk>;
}

/// Serialises a file index as JSON lines (what is uploaded).
pub fn to_json_lines(entries: &[FileEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * 160);
    for e in entries {
        // A FileEntry always serialises (plain strings and numbers).
        if serde_json::to_writer(&mut out, e).is_ok() {
            out.push(b'\n');
        }
    }
    out
}
