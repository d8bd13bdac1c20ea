//! Counters for `GET /metrics` (Prometheus text format, version 0.0.4).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

/// A monotonic counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Everything `/metrics` reports.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    /// Chunk body bytes received.
    pub bytes_received: Counter,
    /// Chunks written to the store for the first time.
    pub chunks_stored: Counter,
    /// Chunk uploads or pins that found the chunk already stored.
    pub chunks_deduplicated: Counter,
    /// Uploads refused for a wrong digest, length or frame, plus damaged chunks found by reads and verify.
    pub verification_failures: Counter,
    /// Open sessions.
    pub open_sessions: AtomicI64,
    /// Sessions whose lock entry exists (those with a request in flight).
    pub session_locks: AtomicI64,
    /// Open NBD connections.
    pub nbd_connections: AtomicI64,
    /// NBD read replies' data bytes sent (holes included).
    pub nbd_bytes_sent: Counter,
    /// NBD requests answered with EIO (a block missing or failing its blake3).
    pub nbd_read_errors: Counter,
    /// NBD connections closed for breaking the protocol or a limit, or refused over the cap.
    pub nbd_refused: Counter,
}

impl Metrics {
    /// Counts one answered request.
    pub fn request(&self, method: &str, route: &str, status: u16) {
        let mut m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((method.to_owned(), route.to_owned(), status))
            .or_default() += 1;
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP repo_http_requests_total HTTP requests answered, by route and status.\n",
        );
        out.push_str("# TYPE repo_http_requests_total counter\n");
        for ((method, route, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(out, "repo_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {n}");
        }
        let mut one = |name: &str, kind: &str, help: &str, v: i64| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
            );
        };
        one(
            "repo_bytes_received_total",
            "counter",
            "Chunk body bytes received.",
            self.bytes_received.get() as i64,
        );
        one(
            "repo_chunks_stored_total",
            "counter",
            "Chunks stored for the first time.",
            self.chunks_stored.get() as i64,
        );
        one(
            "repo_chunks_deduplicated_total",
            "counter",
            "Chunk uploads and pins that found the chunk already stored.",
            self.chunks_deduplicated.get() as i64,
        );
        one(
            "repo_verification_failures_total",
            "counter",
            "Blocks that failed verification (uploads refused, damaged chunks found).",
            self.verification_failures.get() as i64,
        );
        one(
            "repo_open_sessions",
            "gauge",
            "Open backup sessions.",
            self.open_sessions.load(Ordering::Relaxed),
        );
        one(
            "repo_session_locks",
            "gauge",
            "Sessions with a lock entry in memory (those with a request in flight).",
            self.session_locks.load(Ordering::Relaxed),
        );
        one(
            "repo_nbd_connections",
            "gauge",
            "Open NBD connections.",
            self.nbd_connections.load(Ordering::Relaxed),
        );
        one(
            "repo_nbd_bytes_sent_total",
            "counter",
            "Data bytes of NBD read replies (holes included).",
            self.nbd_bytes_sent.get() as i64,
        );
        one(
            "repo_nbd_read_errors_total",
            "counter",
            "NBD requests answered EIO (a block missing or failing its blake3; never sent).",
            self.nbd_read_errors.get() as i64,
        );
        one(
            "repo_nbd_refused_total",
            "counter",
            "NBD connections closed for a protocol violation or limit, or refused over the cap.",
            self.nbd_refused.get() as i64,
        );
        out
    }
}
