//! Where disk bytes come from: the [`BlockSource`] seam.
//!
//! Everything that reads a source disk — partition tables, the guest file-system probes, the
//! backup pipeline's block reads, re-reads when a commit is healed — reads through
//! `&dyn BlockSource` and never opens a path itself, so a new kind of source is one module
//! that implements the trait:
//!
//! - [`file::FileSource`]: raw image files (holes found with `SEEK_DATA`/`SEEK_HOLE`, never
//!   read) and block devices (everything allocated).
//! - [`nbd::NbdSource`]: an NBD export (`nbd://HOST[:PORT]/EXPORT`,
//!   `nbd+unix:///EXPORT?socket=PATH`): `read_at` as `NBD_CMD_READ` (many in flight on one
//!   connection), [`BlockSource::allocated`] from `NBD_CMD_BLOCK_STATUS` with the
//!   `base:allocation` context (extents flagged `HOLE` or `ZERO` are not allocated).
//!
//! What changed since a base is the other half of a source, and a seam of its own:
//! [`crate::cbt::ChangeList`] (a JSON list tied to its base, or a QEMU dirty bitmap read
//! through the disk's NBD connection).

pub mod file;
pub mod nbd;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::Result;
use crate::ranges::Ranges;

pub use file::FileSource;
pub use nbd::NbdSource;

use crate::nbd::NbdUri;

/// A source disk, read-only.
///
/// Implementations are shared between threads (`Send + Sync`, positional reads through
/// `&self`): the backup plans a disk on one thread, walks its guest file systems on another
/// and reads its blocks on a third, at the same time.
pub trait BlockSource: Send + Sync + fmt::Debug {
    /// What this source is, for people and for the resume journal's key: a file's path as
    /// given, an NBD export's URI. Stable across runs of the same command.
    fn describe(&self) -> String;

    /// Size in bytes.
    fn size(&self) -> u64;

    /// Reads exactly `buf.len()` bytes at `offset` (`offset + buf.len()` never exceeds
    /// [`BlockSource::size`] when the caller asks).
    ///
    /// # Errors
    /// I/O errors, naming the source and offset ([`crate::Error::Io`]); a short read is an
    /// error, never zeros.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;

    /// The byte ranges that may hold data. Everything else is known to read as zeros (holes of
    /// a sparse file, unallocated or zero extents an NBD server reports) and is never read: the
    /// plan counts it as `hole`. Asked once per backup, before any block is read. A source that
    /// cannot tell answers the whole disk (the default).
    ///
    /// # Errors
    /// Errors asking the source; none for one that cannot tell.
    fn allocated(&self) -> Result<Ranges> {
        Ok(Ranges::single(0, self.size()))
    }
}

/// Opens an image file or block device as a shared source: what `--disk NAME=PATH` gives.
///
/// # Errors
/// The path cannot be opened or sized.
pub fn open(path: &Path) -> Result<Arc<dyn BlockSource>> {
    Ok(Arc::new(FileSource::open(path)?))
}

/// What `--disk NAME=SPEC` names: an image file or block device, or an NBD export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSpec {
    /// A path.
    File(PathBuf),
    /// An NBD URI.
    Nbd(NbdUri),
}

impl DiskSpec {
    /// An NBD URI when `p` starts with an NBD scheme (`nbd://`, `nbd+unix://`), else a path.
    ///
    /// # Errors
    /// A malformed NBD URI.
    pub fn parse(p: &Path) -> Result<DiskSpec> {
        match p.to_str() {
            Some(s) if NbdUri::looks_like(s) => Ok(DiskSpec::Nbd(NbdUri::parse(s)?)),
            _ => Ok(DiskSpec::File(p.to_owned())),
        }
    }
}
