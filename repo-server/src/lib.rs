//! The backup repository (`repo-server`): the target-side data mover of protocol v1.
//!
//! Module map, bottom-up:
//! - [`config`]: the TOML configuration (one struct, defaults for everything).
//! - [`error`]: the one error policy; [`error::Error`] maps to status and JSON body.
//! - [`auth`]: bearer tokens → tenant and role; the generated admin token.
//! - [`store`]: where the data lives — the `BlobStore` and `ManifestStore` traits and their
//!   contract ([`store::layout`]: the directory layout; [`store::local`]: the local
//!   directory; the gateway implements them on an SMB share).
//! - [`catalog`]: the RocksDB catalog: the typed column-family list, key layouts, typed rows
//!   and write batches (by what is stored: sessions, chunks, backups, guest files).
//! - [`check`]: the offline consistency check and repair (`repo-server check`).
//! - [`repo`]: the repository's operations (sessions, ingest, commit, reads, GC, verify),
//!   blocking.
//! - [`http`]: the axum router; thin handlers that parse, call [`repo::Repository`], answer.
//! - [`nbd`]: instant recovery — committed disks served read-only over NBD to the holders of
//!   export names made over the API.
//! - [`server`]: the accept loop (h2c + HTTP/1.1 + TLS), limits, graceful shutdown.
//! - [`fail`]: fail points for crash tests, inert unless a test binary arms one.
//! - [`metrics`]: Prometheus counters.
//! - [`rate`]: per-tenant ingest pacing, and the pace of verify.
//!
//! - [`cli`]: the `repo-server` command line (serve, `check`, `rescan`).
//!
//! The binary (`src/bin/repo-server.rs`) only calls [`cli::main`], which parses the command line
//! and calls [`server::run`].

pub mod auth;
pub mod catalog;
pub mod check;
pub mod cli;
pub mod config;
pub mod error;
pub mod fail;
pub mod http;
pub mod metrics;
pub mod nbd;
pub mod rate;
pub mod repo;
pub mod server;
pub mod store;

pub use config::Config;
pub use server::{run, App};
