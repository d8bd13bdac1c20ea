//! The missing bits every crate of the workspace needs and none should copy: a token bucket
//! ([`rate`]), the retry backoff policy ([`backoff`]) and durable file writes ([`durable`]).
//!
//! No async runtime and no dependencies: callers sleep with their own runtime (the bucket and the
//! backoff say *how long*, never sleep themselves).

pub mod backoff;
pub mod durable;
pub mod rate;
