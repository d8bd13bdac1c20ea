//! The retry policy: exponential backoff from a first delay, doubling to a cap, within a time
//! budget counted from the first attempt. Callers sleep the delay with their own runtime.

use std::time::{Duration, Instant};

/// Delays between retries of one operation.
#[derive(Debug, Clone)]
pub struct Backoff {
    started: Instant,
    delay: Duration,
    cap: Duration,
    budget: Duration,
}

impl Backoff {
    /// The mover's policy: 200 ms doubling to 30 s, retrying while the next try would start
    /// within `budget` of the first.
    pub fn new(budget: Duration) -> Backoff {
        Backoff::with(Duration::from_millis(200), Duration::from_secs(30), budget)
    }

    /// A policy starting at `first`, doubling to `cap`, within `budget`.
    pub fn with(first: Duration, cap: Duration, budget: Duration) -> Backoff {
        Backoff {
            started: Instant::now(),
            delay: first,
            cap: cap.max(first),
            budget,
        }
    }

    /// The time since the first attempt.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The delay to wait before the next attempt, or `None` when the next attempt would start
    /// past the budget (give up and report the last error).
    pub fn next_delay(&mut self) -> Option<Duration> {
        let delay = self.delay;
        if self.started.elapsed() + delay >= self.budget {
            return None;
        }
        self.delay = (self.delay * 2).min(self.cap);
        Some(delay)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_to_the_cap() {
        let mut b = Backoff::with(
            Duration::from_millis(100),
            Duration::from_millis(350),
            Duration::from_secs(3600),
        );
        let got: Vec<_> = (0..5).map(|_| b.next_delay()).collect();
        let ms = |m| Some(Duration::from_millis(m));
        assert_eq!(got, vec![ms(100), ms(200), ms(350), ms(350), ms(350)]);
    }

    #[test]
    fn gives_up_when_the_next_try_would_pass_the_budget() {
        let mut b = Backoff::with(
            Duration::from_secs(1),
            Duration::from_secs(1),
            Duration::ZERO,
        );
        assert_eq!(b.next_delay(), None);
        let mut b = Backoff::new(Duration::from_millis(150));
        assert_eq!(
            b.next_delay(),
            None,
            "a first delay of 200 ms is past a 150 ms budget"
        );
    }
}
