//! Benchmark tooling shared by the `bench` binary and the integration tests.
//!
//! - [`wan`]: the WAN emulator (delay, bandwidth, cuts) used by the WAN tests and benchmarks.

pub mod wan;
