//! The source mover (backup proxy): reads only the blocks of a VM disk that matter, hashes them,
//! sends the repository only what it lacks, and restores disks back.
//!
//! Module map:
//! - [`source`]: where disk bytes come from ([`source::BlockSource`]): raw images (sparse-aware)
//!   and block devices.
//! - [`guest`]: what the guest keeps in those bytes: the partition table, then an ordered list
//!   of probes ([`guest::Probe`]: ext2/3/4 read through its journal, Linux swap), each saying
//!   what may be dropped and why, and walking its files for the guest catalog.
//! - [`plan`]: per disk, the bytes to read and the bytes dropped by reason (swap, free,
//!   excluded, hole), from the guests and the source's allocation.
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
pub mod cbt;
pub mod client;
pub mod demo;
pub mod error;
pub mod files;
pub mod guest;
pub mod journal;
pub mod plan;
pub mod progress;
pub mod ranges;
pub mod restore;
pub mod source;

pub use error::{Error, Result};
