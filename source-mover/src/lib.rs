//! The source mover (backup proxy): reads only the blocks of a VM disk that matter, hashes them,
//! sends the repository only what it lacks, and restores disks back.
//!
//! Module map:
//! - [`source`]: where disk bytes come from ([`source::BlockSource`]): raw images (sparse-aware)
//!   and block devices.
//! - [`partition`], [`ext4`] (read through [`jbd2`], its journal), [`swap`], [`blockmap`]: what
//!   must be read — partitions, swap, free blocks, excluded files, holes.
//! - [`ranges`]: byte-range arithmetic. [`cbt`]: what changed since a base
//!   ([`cbt::ChangeList`]).
//! - [`client`]: the HTTP/2 repository client (retries, rate limit).
//! - [`backup`]: the read → hash → find-missing → compress → upload → record → commit pipeline.
//! - [`journal`]: what makes an interrupted backup resumable.
//! - [`restore`]: restore and verify.
//! - [`files`]: the guest file catalog from the command line (`files ls|get|search`).
//! - [`progress`]: progress on stderr.
//! - [`demo`]: the end-to-end demonstration behind `source-mover demo`.

pub mod backup;
pub mod blockmap;
pub mod cbt;
pub mod client;
pub mod demo;
pub mod error;
pub mod ext4;
pub mod file_index;
pub mod files;
pub mod jbd2;
pub mod journal;
pub mod partition;
pub mod progress;
pub mod ranges;
pub mod restore;
pub mod source;
pub mod swap;

pub use error::{Error, Result};
