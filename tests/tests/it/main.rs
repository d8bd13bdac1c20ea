//! The one integration test binary: full-stack scenarios on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod block_size_chain;
mod block_source;
mod blockmap_safety;
mod campaign;
mod catalog;
mod chains;
mod check;
mod concurrency;
mod console;
mod crash;
mod curl_errors;
mod encryption;
mod failpoints;
mod gateway;
mod gateway_fence;
mod gc_scale;
mod hostile;
mod jobs_latency;
mod journal;
mod lifecycle;
mod limits;
mod metadata_checksums;
mod mover;
mod nbd;
mod nbd_export;
mod ntfs;
mod openapi;
mod protocol;
mod retention;
mod store;
mod tenancy;
mod tls;
mod wan;
