//! A token bucket: `rate` units per second with bursts of up to `burst` units. Pure arithmetic on
//! instants the caller supplies; the caller waits the returned time (holding whatever lock keeps
//! its senders in order).

use std::time::{Duration, Instant};

/// A bucket of `rate` units (bytes) per second, holding at most `burst` units.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A bucket of `per_second` units with a burst of one second's worth, starting full.
    pub fn new(per_second: u64) -> TokenBucket {
        let rate = per_second.max(1) as f64;
        TokenBucket::with_burst(rate, rate)
    }

    /// A bucket of `per_second` units holding at most `burst` units, starting full.
    pub fn with_burst(per_second: f64, burst: f64) -> TokenBucket {
        let rate = per_second.max(1.0);
        TokenBucket {
            rate,
            burst: burst.max(1.0),
            tokens: burst.max(1.0),
            at: Instant::now(),
        }
    }

    /// The configured rate in units per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Takes `n` units at `now` and returns how long the caller must wait before using them
    /// (zero when the bucket held enough). The debt is kept, so a caller that takes more than the
    /// bucket holds waits in proportion.
    pub fn take(&mut self, n: u64, now: Instant) -> Duration {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.at = now.max(self.at);
        self.tokens -= n as f64;
        if self.tokens < 0.0 {
            Duration::from_secs_f64(-self.tokens / self.rate)
        } else {
            Duration::ZERO
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_lets_a_burst_through_then_charges_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000);
        b.at = t0;
        assert_eq!(b.take(1000, t0), Duration::ZERO);
        // Empty now: 500 more units cost half a second.
        assert_eq!(b.take(500, t0), Duration::from_millis(500));
        // A second later the debt is paid and half the burst is back.
        assert_eq!(b.take(500, t0 + Duration::from_secs(1)), Duration::ZERO);
        assert_eq!(
            b.take(1, t0 + Duration::from_secs(1)),
            Duration::from_millis(1)
        );
    }

    #[test]
    fn refill_is_capped_at_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::with_burst(100.0, 10.0);
        b.at = t0;
        let later = t0 + Duration::from_secs(60);
        assert_eq!(b.take(10, later), Duration::ZERO);
        assert_eq!(b.take(10, later), Duration::from_millis(100));
    }
}
