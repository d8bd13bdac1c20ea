//! Shared vocabulary of the backup data path: the bottom layer every mover and repository builds on.
//!
//! Module map:
//! - [`id`]: [`ChunkId`] (blake3 of an uncompressed block), [`SessionId`], [`BackupId`] and the
//!   validated names ([`DiskName`]) that may appear in URLs.
//! - [`record`]: the 40-byte positional index record and its codec.
//! - [`api`]: request and response bodies of PROTOCOL.md, version 1.
//! - [`error`]: the stable error codes and the JSON error body.
//! - [`fingerprint`]: the SHA-256 fingerprint of a TLS certificate, as printed and pinned.
//! - [`query`]: percent-encoding of URL query values.
//! - [`sealed`]: the sealed (encrypted) chunk frame and what a repository checks of it.
//! - [`retention`]: GFS retention policies (which backups to keep).
//! - [`time`]: RFC 3339 UTC formatting of timestamps kept as Unix milliseconds.
//!
//! This crate has no async runtime and no HTTP stack: it is plain data and binary formats.

pub mod api;
pub mod error;
pub mod files;
pub mod fingerprint;
pub mod id;
pub mod query;
pub mod record;
pub mod retention;
pub mod sealed;
pub mod time;

pub use error::{ErrorBody, ErrorCode};
pub use id::{BackupId, ChunkId, DiskName, IdError, SessionId};
pub use record::{IndexRecord, RecordError, RECORD_LEN};

/// Block sizes a job may choose (PROTOCOL.md, capabilities).
pub const BLOCK_SIZES: [u32; 4] = [256 << 10, 512 << 10, 1 << 20, 4 << 20];

/// The protocol version this crate describes.
pub const API_VERSION: u32 = 1;
