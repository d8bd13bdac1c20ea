//! Pacing. Ingest: a token bucket per tenant with a configured rate; a chunk upload takes its
//! body's bytes from the bucket before the body is read, so HTTP/2 flow control slows the sender
//! instead of the server buffering it. Jobs: a [`Pacer`] holds a blocking job (verify) to its
//! configured rate.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use stdx::rate::TokenBucket;
use tokio::sync::Mutex;

/// One tenant's bucket: bursts of up to one second's worth, behind an async lock so the tenant's
/// uploads pass in order of arrival.
#[derive(Debug)]
struct TenantBucket(Mutex<TokenBucket>);

impl TenantBucket {
    /// Waits until `n` bytes may pass.
    async fn take(&self, n: u64) {
        let mut bucket = self.0.lock().await;
        let wait = bucket.take(n, Instant::now());
        if !wait.is_zero() {
            // Holding the lock while waiting keeps the tenant's uploads in order of arrival.
            tokio::time::sleep(wait).await;
        }
    }
}

/// The buckets of every limited tenant.
#[derive(Debug, Default)]
pub struct IngestLimits(HashMap<String, TenantBucket>);

impl IngestLimits {
    /// Buckets for `(tenant, bytes per second)` pairs.
    pub fn new<'a>(limits: impl IntoIterator<Item = (&'a String, u64)>) -> IngestLimits {
        IngestLimits(
            limits
                .into_iter()
                .map(|(t, r)| (t.clone(), TenantBucket(Mutex::new(TokenBucket::new(r)))))
                .collect(),
        )
    }

    /// Paces `n` bytes of `tenant` (no-op for tenants without a limit).
    pub async fn take(&self, tenant: &str, n: u64) {
        if let Some(b) = self.0.get(tenant) {
            b.take(n).await;
        }
    }
}

/// Holds one blocking job to `rate` bytes per second on average since it began.
#[derive(Debug)]
pub struct Pacer {
    rate: f64,
    start: Instant,
    bytes: f64,
}

impl Pacer {
    /// A pacer of `bytes_per_second`, starting now.
    pub fn new(bytes_per_second: u64) -> Pacer {
        Pacer {
            rate: bytes_per_second.max(1) as f64,
            start: Instant::now(),
            bytes: 0.0,
        }
    }

    /// Counts `n` bytes about to be processed and blocks the calling thread while the job is
    /// ahead of its rate. Callers hold no lock.
    pub fn take(&mut self, n: u64) {
        self.bytes += n as f64;
        let due = Duration::from_secs_f64(self.bytes / self.rate);
        if let Some(ahead) = due.checked_sub(self.start.elapsed()) {
            std::thread::sleep(ahead);
        }
    }
}
