//! The one integration test binary: full-stack scenarios on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod concurrency;
mod crash;
mod hostile;
mod lifecycle;
mod limits;
mod mover;
mod protocol;
mod retention;
mod tenancy;
mod tls;
mod wan;
