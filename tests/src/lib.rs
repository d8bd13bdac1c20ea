//! Harness of the integration tests: real servers on loopback and real HTTP clients.
//!
//! - [`TestServer`]: a repository served in-process (real sockets, real RocksDB) on `127.0.0.1:0`.
//! - [`ChildServer`]: a built server binary as a child process, for crash tests (the shipped
//!   `repo-server`, the gateway, or `repo-server-failpoints` with a fail point armed), started
//!   from a [`Launch`]; the `bench` binary starts its servers with it too.
//! - [`Client`]: an HTTP client (h2c prior knowledge, HTTP/1.1, or HTTP/2 over TLS) built on hyper.
//! - [`contract`]: the served OpenAPI document as an oracle: a [`Client`] made
//!   [`Client::checked`] checks every answer's status, media type and JSON body against it.
//! - [`backup`]: a minimal mover used to drive whole sessions.
//! - [`images`]: disk images made with real tools ([`ntfs`]: NTFS ones, through ntfs-3g). [`jobs`]:
//!   GC and verify to completion.
//! - [`wan`]: the WAN emulator (delay, bandwidth, cuts), for the WAN tests and `bench wan`.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

pub mod backup;
pub mod client;
pub mod contract;
pub mod images;
pub mod jobs;
pub mod mover;
pub mod ntfs;
pub mod server;
pub mod wan;

pub use backup::{backup_disk, DiskUpload};
pub use client::{Client, Resp};
pub use server::{
    failpoint_server_binary, files_under, free_port, gateway_binary, mover_binary, smb_store,
    snapshot, ChildServer, Launch, TestServer, ADMIN, BACKUP_A, BACKUP_B, READER_A,
};
