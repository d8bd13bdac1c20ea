//! The source mover (backup proxy): reads only the blocks of a VM disk that matter, hashes them,
//! sends the repository only what it lacks, and restores disks back.
//!
//! Module map:
//! - [`source`]: where disk bytes come from ([`source::BlockSource`]): raw images (sparse-aware),
//!   block devices, NBD exports.
//! - [`nbd`]: the NBD client (URIs, one shared connection with many requests in flight) behind
//!   NBD sources, dirty-bitmap changes and restores into NBD exports.
//! - [`guest`]: what the guest keeps in those bytes: the partition table, then an ordered list
//!   of probes ([`guest::Probe`]: ext2/3/4 read through its journal, Linux swap), each saying
//!   what may be dropped and why, and walking its files for the guest catalog.
//! - [`plan`]: per disk, the bytes to read and the bytes dropped by reason (swap, free,
//!   excluded, hole), from the guests and the source's allocation.
//! - [`ranges`]: byte-range arithmetic. [`cbt`]: what changed since a base
//!   ([`cbt::ChangeList`]: a JSON list, or a QEMU dirty bitmap over NBD).
//! - [`client`]: the HTTP/2 repository client (retries, rate limit) and the protocol's calls,
//!   typed with the `schema` bodies; [`tls`]: `https://` (trusted roots, `--ca-file`,
//!   `--fingerprint` pinning) and the connector both schemes share.
//! - [`backup`]: one backup as a short string of stages, each a module: [`options`] (what to
//!   back up), [`session`] (create, resume from the [`journal`], append, commit), [`base`]
//!   (the base, its index, CBT narrowing), [`pipeline`] (read → hash → find-missing →
//!   compress → upload → record, bounded; heal), [`guest_files`] (the file indexes beside it),
//!   [`report`] (what a job did, with `Display` for the command line).
//! - [`journal`]: what makes an interrupted backup resumable.
//! - [`key`]: the master key of encrypted backups (key files, derived keys, the paper key);
//!   [`seal`]: sealing and opening the chunks of encrypted backups; [`keys`]: the
//!   `source-mover key` commands.
//! - [`restore`]: restore and verify.
//! - [`files`]: the guest file catalog from the command line (`files ls|get|search`);
//!   [`files::sealed`]: the same for encrypted backups, whose index only the mover can open.
//! - [`cli`]: the command-line grammar; [`profile`]: the `lan`/`wan` presets.
//! - [`progress`]: progress on stderr.
//! - [`demo`]: the end-to-end demonstration behind `source-mover demo`.

pub mod backup;
pub mod base;
pub mod cbt;
pub mod cli;
pub mod client;
pub mod demo;
pub mod error;
pub mod files;
pub mod guest;
pub mod guest_files;
pub mod journal;
pub mod key;
pub mod keys;
pub mod nbd;
pub mod options;
pub mod pipeline;
pub mod plan;
pub mod profile;
pub mod progress;
pub mod ranges;
pub mod report;
pub mod restore;
pub mod seal;
pub mod session;
pub mod source;
pub mod tls;

pub use error::{Error, Result};
