//! The mover's NBD client: how it reads VM disks over the network (QEMU's `qemu-nbd` and
//! `qemu-storage-daemon`, any NBD server), takes changed blocks from QEMU dirty bitmaps, and
//! restores into a hypervisor's disk.
//!
//! - [`uri`]: `nbd://HOST[:PORT]/EXPORT` and `nbd+unix:///EXPORT?socket=PATH`.
//! - [`client`]: one connection shared by threads, many requests in flight (reads, block
//!   status, writes, zeroes, flush), every reply bounded and checked.
//!
//! The wire format itself is the `nbd` crate's pure codec, shared with the repository's
//! export server. [`crate::source::nbd`] makes an export a [`crate::source::BlockSource`];
//! [`crate::cbt::DirtyBitmap`] reads `qemu:dirty-bitmap:NAME` over the same connection.

pub mod client;
pub mod uri;

pub use client::{Client, ExportInfo, Timeouts};
pub use uri::NbdUri;
