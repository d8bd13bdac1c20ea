//! Progress on stderr: a line rewritten in place on a terminal, a plain log line every 10 s
//! otherwise.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Shared counters of a running job.
#[derive(Debug)]
pub struct Progress {
    /// Bytes of blocks to look at.
    pub total: u64,
    /// Bytes of blocks looked at.
    pub done: AtomicU64,
    /// Bytes read from the source.
    pub read: AtomicU64,
    /// Bytes sent (compressed) or written.
    pub sent: AtomicU64,
    started: Instant,
    stop: AtomicBool,
    tty: bool,
    enabled: bool,
}

fn mb(b: u64) -> f64 {
    b as f64 / 1e6
}

impl Progress {
    /// Starts reporting (when `enabled`).
    pub fn start(total: u64, enabled: bool) -> Arc<Progress> {
        let p = Arc::new(Progress {
            total,
            done: AtomicU64::new(0),
            read: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            started: Instant::now(),
            stop: AtomicBool::new(false),
            tty: std::io::stderr().is_terminal(),
            enabled,
        });
        if enabled {
            let q = p.clone();
            std::thread::spawn(move || {
                let every = if q.tty {
                    Duration::from_millis(500)
                } else {
                    Duration::from_secs(10)
                };
                let mut next = Instant::now() + every;
                while !q.stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    if Instant::now() >= next {
                        q.print(false);
                        next += every;
                    }
                }
            });
        }
        p
    }

    fn print(&self, last: bool) {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let done = self.done.load(Ordering::Relaxed);
        let rate = done as f64 / secs;
        let eta = if rate > 0.0 && self.total > done {
            (self.total - done) as f64 / rate
        } else {
            0.0
        };
        let pct = if self.total == 0 {
            100.0
        } else {
            100.0 * done as f64 / self.total as f64
        };
        let line = format!(
            "{pct:5.1}%  {:.0}/{:.0} MB  read {:.0} MB  sent {:.0} MB  {:.0} MB/s  ETA {eta:.0}s",
            mb(done),
            mb(self.total),
            mb(self.read.load(Ordering::Relaxed)),
            mb(self.sent.load(Ordering::Relaxed)),
            rate / 1e6
        );
        let mut e = std::io::stderr();
        if self.tty {
            let _ = write!(e, "\r{line}\x1b[K{}", if last { "\n" } else { "" });
        } else {
            let _ = writeln!(e, "source-mover: {line}");
        }
        let _ = e.flush();
    }

    /// Stops reporting and prints the final line.
    pub fn finish(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if self.enabled && self.tty {
            self.print(true);
        }
    }
}
