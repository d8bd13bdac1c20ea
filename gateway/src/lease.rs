//! One gateway per repository, and a fence around its writes.
//!
//! The lease file `gateway.lock` on the share names its holder — the gateway's persistent id
//! (kept in `data/gateway.id`), a generation number, the host and pid — and when the lease
//! ends. A gateway takes the lease at start when there is none, when it has ended, or when it
//! names this gateway's id (a restart with the same data directory); each take bumps the
//! generation. Another gateway pointed at the same share refuses to start while the lease runs,
//! saying who holds it and until when.
//!
//! While it runs, the gateway renews every third of the lease's length: it re-reads the file
//! and writes a new end only if the file still names its own (id, generation), then reads it
//! back. A renewal that finds another holder (or no file) has lost the lease; one that fails on
//! I/O is retried every second.
//!
//! **The fence.** Every write and delete on the share (chunks, indexes, manifests, quarantine,
//! temp cleanup) first asks the [`Fence`]: it lets them through only while the last confirmed
//! renewal is less than two thirds of the lease old, by the gateway's monotonic clock and by its
//! wall clock both (the monotonic clock does not count a suspended machine; the wall clock can
//! step). Otherwise they fail with "this gateway does not hold the share's lease: <why>", which
//! the repository answers with 503; GC and prune refuse before they start, and a GC sweep stops
//! before it drops any catalog row. Reads go on: they change nothing on the share. A gateway that
//! lost the lease keeps trying to take it back; once the other holder is gone and its lease has
//! ended, it takes it (a new generation) and writes resume. On a clean stop the gateway removes
//! the lease file only if it still names its own (id, generation) and its fence is still open;
//! otherwise it leaves the file to run out.
//!
//! **What remains.** SMB has no compare-and-swap, so the checks are read-then-write:
//! - A takeover (start, or taking the lease back) writes, waits a moment (a twentieth of the
//!   lease, at most 1 s), and reads the file back; of two gateways taking an ended lease at once
//!   the last writer keeps it. Both can believe they hold it only if one stalls for longer than
//!   that moment between reading the ended lease and writing its own.
//! - The holder stops writing a third of the lease before the end recorded in the file, so a
//!   successor (which waits for that end) never overlaps it as long as the two machines' clocks
//!   differ by less than that third minus the longest request in flight (the SMB request timeout
//!   is 10 s; a request retried on a fresh connection asks the fence again first). With the
//!   default 60 s lease that leaves 10 s for clock skew.
//! - A renewal reads and writes while the lease still runs, so no other gateway may take it in
//!   between; the read-back after writing catches one that did anyway.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::share::Share;

/// Name of the lease file in the repository directory of the share.
pub const LOCK_FILE: &str = "gateway.lock";

/// The shortest lease: renewals every second at least.
pub const MIN_LEASE: Duration = Duration::from_secs(3);

/// What `gateway.lock` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LockFile {
    owner: String,
    /// Bumped by every take; lease files of older gateways have none (0).
    #[serde(default)]
    generation: u64,
    host: String,
    pid: u32,
    expires_ms: i64,
}

impl LockFile {
    fn running(&self) -> bool {
        self.expires_ms > now_ms()
    }

    fn is(&self, me: &Holder) -> bool {
        self.owner == me.id && self.generation == me.generation
    }

    fn describe(&self) -> String {
        format!(
            "gateway {} (host {}, pid {}, generation {}) until {}",
            self.owner,
            self.host,
            self.pid,
            self.generation,
            schema::time::rfc3339(self.expires_ms)
        )
    }
}

/// This gateway's claim: its id and the generation it took.
#[derive(Debug, Clone)]
struct Holder {
    id: String,
    generation: u64,
}

/// The timings of a lease of length `ttl`.
#[derive(Debug, Clone, Copy)]
struct Timings {
    ttl: Duration,
    /// Between renewals.
    renew_every: Duration,
    /// How long before the recorded end the holder stops writing.
    margin: Duration,
    /// Between writing a takeover and reading it back.
    settle: Duration,
    /// Between attempts after a failure.
    retry_every: Duration,
}

impl Timings {
    fn new(ttl: Duration) -> anyhow::Result<Timings> {
        anyhow::ensure!(
            ttl >= MIN_LEASE,
            "the lease must be at least {MIN_LEASE:?} long (it is {ttl:?})"
        );
        Ok(Timings {
            ttl,
            renew_every: ttl / 3,
            margin: ttl / 3,
            settle: (ttl / 20).min(Duration::from_secs(1)),
            retry_every: Duration::from_secs(1).min(ttl / 3),
        })
    }
}

/// Whether this gateway may write to its share now: open while its lease is confirmed, closed
/// otherwise, with the reason. See the module documentation.
#[derive(Debug, Default)]
pub struct Fence {
    state: Mutex<FenceState>,
}

#[derive(Debug, Default)]
struct FenceState {
    /// Writes may go on until both: by the monotonic clock, and by the wall clock (Unix ms).
    until: Option<(Instant, i64)>,
    /// Why the fence is closed, or the last renewal's failure while it is still open.
    why: String,
}

impl Fence {
    /// `Ok` while this gateway holds the lease; else the error every write fails with.
    ///
    /// # Errors
    /// A [`repo_server::store::Fenced`] error saying why the gateway does not hold the lease.
    pub fn check(&self) -> io::Result<()> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let why = match s.until {
            Some((mono, wall)) => {
                let (now, now_wall) = (Instant::now(), now_ms());
                if now < mono && now_wall < wall {
                    return Ok(());
                }
                let late = now
                    .saturating_duration_since(mono)
                    .max(Duration::from_millis(
                        now_wall.saturating_sub(wall).max(0) as u64
                    ));
                let cause = if s.why.is_empty() {
                    String::new()
                } else {
                    format!(": {}", s.why)
                };
                format!(
                    "it could not renew the lease in time (its confirmation ran out {late:.1?} ago{cause})"
                )
            }
            None => s.why.clone(),
        };
        Err(repo_server::store::fenced(format!(
            "this gateway does not hold the share's lease: {why}; it writes and deletes nothing until it holds the lease again"
        )))
    }

    fn is_open(&self) -> bool {
        self.check().is_ok()
    }

    fn open_until(&self, mono: Instant, wall: i64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.until = Some((mono, wall));
        s.why.clear();
    }

    fn close(&self, why: String) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.until = None;
        s.why = why;
    }

    /// Records why the last renewal failed (the fence stays open until its time runs out).
    fn note(&self, why: String) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).why = why;
    }
}

impl repo_server::store::WriteFence for Fence {
    fn check(&self) -> io::Result<()> {
        Fence::check(self)
    }
}

/// A held lease; renewed (and taken back when lost) until dropped, then released.
#[derive(Debug)]
pub struct Lease {
    keeper: Arc<Keeper>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the renewal thread and the release share.
#[derive(Debug)]
struct Keeper {
    share: Arc<Share>,
    fence: Arc<Fence>,
    timings: Timings,
    me: Mutex<Holder>,
}

/// Why a renewal or takeover did not confirm the lease.
enum Miss {
    /// Another gateway holds it (or the file is gone or unreadable): the fence closes now.
    Lost(String),
    /// The share did not answer: the fence stays open until its time runs out.
    Io(io::Error),
}

impl From<io::Error> for Miss {
    fn from(e: io::Error) -> Miss {
        Miss::Io(e)
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown-host".into())
}

/// This gateway's id: created once in `data/gateway.id`.
fn owner_id(data: &Path) -> io::Result<String> {
    let f = data.join("gateway.id");
    if let Ok(id) = std::fs::read_to_string(&f) {
        if !id.trim().is_empty() {
            return Ok(id.trim().to_owned());
        }
    }
    let seed = format!("{}.{}.{}", now_ms(), std::process::id(), host());
    let id = blake3_hex(seed.as_bytes());
    std::fs::write(&f, format!("{id}\n"))?;
    Ok(id)
}

fn blake3_hex(b: &[u8]) -> String {
    schema::ChunkId::of(b).hex()[..24].to_owned()
}

impl Keeper {
    /// The lease file, `None` when there is none.
    fn read(&self) -> Result<Option<LockFile>, Miss> {
        match self.share.read_named(LOCK_FILE) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Miss::Lost(format!(
                    "{LOCK_FILE} on {} is unreadable ({e}); if no gateway uses this share, remove it",
                    self.share.describe()
                ))
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Miss::Io(e)),
        }
    }

    fn write(&self, me: &Holder, expires_ms: i64) -> io::Result<LockFile> {
        let l = LockFile {
            owner: me.id.clone(),
            generation: me.generation,
            host: host(),
            pid: std::process::id(),
            expires_ms,
        };
        let json = serde_json::to_vec_pretty(&l).map_err(io::Error::other)?;
        self.share.write_named(LOCK_FILE, &json)?;
        Ok(l)
    }

    /// Reads the file back after writing `wrote`; the lease is confirmed only if it is there.
    fn confirm(&self, wrote: &LockFile, started: Instant, started_ms: i64) -> Result<(), Miss> {
        match self.read()? {
            Some(l) if l == *wrote => {
                let keep = self.timings.ttl - self.timings.margin;
                self.fence
                    .open_until(started + keep, started_ms + keep.as_millis() as i64);
                Ok(())
            }
            other => Err(self.lost_to(other)),
        }
    }

    fn lost_to(&self, l: Option<LockFile>) -> Miss {
        Miss::Lost(match l {
            Some(l) => format!(
                "the lease on {} is held by {}",
                self.share.describe(),
                l.describe()
            ),
            None => format!(
                "its lease file on {} is gone (removed by someone else)",
                self.share.describe()
            ),
        })
    }

    /// Renews the lease while it is ours and confirmed; takes it back otherwise when it is
    /// free (none, ended, or our own id).
    fn renew(&self) -> Result<(), Miss> {
        let (started, started_ms) = (Instant::now(), now_ms());
        let expires = started_ms + self.timings.ttl.as_millis() as i64;
        let me = self.me.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let current = self.read()?;
        if self.fence.is_open() {
            // Renewal: only a lease that still names us, while it still runs.
            return match current {
                Some(l) if l.is(&me) => {
                    let wrote = self.write(&me, expires)?;
                    self.confirm(&wrote, started, started_ms)
                }
                other => Err(self.lost_to(other)),
            };
        }
        // Our confirmation ran out (a pause, an outage) or another gateway took the lease: a
        // takeover, as at start.
        // Unlike at start, a running lease of our id but another generation is not taken: that
        // is another process with this data directory, and the two must not take turns.
        if let Some(l) = current.as_ref().filter(|l| !l.is(&me) && l.running()) {
            return Err(self.lost_to(Some(l.clone())));
        }
        let took = self.take(current.as_ref(), started, started_ms)?;
        tracing::warn!(share = %self.share.describe(), generation = took.generation, "lease taken back; writes resume");
        Ok(())
    }

    /// Writes a new generation over `current` (which the caller found free), waits, and reads
    /// it back.
    fn take(
        &self,
        current: Option<&LockFile>,
        started: Instant,
        started_ms: i64,
    ) -> Result<Holder, Miss> {
        let mut me = self.me.lock().unwrap_or_else(|e| e.into_inner()).clone();
        me.generation = current.map_or(0, |l| l.generation).max(me.generation) + 1;
        let wrote = self.write(&me, started_ms + self.timings.ttl.as_millis() as i64)?;
        *self.me.lock().unwrap_or_else(|e| e.into_inner()) = me.clone();
        // Another gateway that took the same ended lease in the same moment: the last writer
        // keeps it.
        std::thread::sleep(self.timings.settle);
        self.confirm(&wrote, started, started_ms)?;
        Ok(me)
    }

    /// The renewal thread's loop.
    fn run(&self, stop: &AtomicBool) {
        let step = Duration::from_millis(100).min(self.timings.retry_every);
        let mut next = Instant::now() + self.timings.renew_every;
        let mut lost = false;
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(step);
            if Instant::now() < next {
                continue;
            }
            match self.renew() {
                Ok(()) => {
                    lost = false;
                    next = Instant::now() + self.timings.renew_every;
                }
                Err(Miss::Lost(why)) => {
                    if !lost {
                        tracing::error!(reason = %why, "lost the lease on the share; writes and deletes stop until this gateway holds it again");
                        lost = true;
                    }
                    self.fence.close(why);
                    next = Instant::now() + self.timings.retry_every;
                }
                Err(Miss::Io(e)) => {
                    tracing::warn!(error = %e, "cannot renew the lease on the share; retrying");
                    self.fence
                        .note(format!("cannot reach the share to renew it: {e}"));
                    next = Instant::now() + self.timings.retry_every;
                }
            }
        }
    }

    /// On a clean stop: closes the fence, then removes the lease file if it is still ours.
    fn release(&self) {
        let ours = self.fence.is_open();
        self.fence.close("the gateway is stopping".into());
        let me = self.me.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if !ours {
            tracing::warn!(
                "not removing {LOCK_FILE}: this gateway does not hold the lease now (it runs out by itself)"
            );
            return;
        }
        match self.read() {
            Ok(Some(l)) if l.is(&me) => {
                if let Err(e) = self.share.remove_named(LOCK_FILE) {
                    tracing::warn!(error = %e, "could not remove the lease file");
                }
            }
            Ok(Some(l)) => {
                tracing::warn!(holder = %l.describe(), "not removing {LOCK_FILE}: it names another holder");
            }
            Ok(None) => {}
            Err(Miss::Lost(why)) => tracing::warn!(reason = %why, "not removing {LOCK_FILE}"),
            Err(Miss::Io(e)) => {
                tracing::warn!(error = %e, "could not read the lease file to release it")
            }
        }
    }
}

impl Lease {
    /// Takes the lease of `share` for this gateway (id kept in `data`) for `ttl`, fences the
    /// share's writes with it, and keeps it in the background.
    ///
    /// # Errors
    /// Another gateway holds the lease (the message says who and until when), a lease shorter
    /// than [`MIN_LEASE`], a share that already has a lease, or I/O errors.
    pub fn acquire(share: Arc<Share>, data: &Path, ttl: Duration) -> anyhow::Result<Lease> {
        let timings = Timings::new(ttl)?;
        let fence = Arc::new(Fence::default());
        fence.close("it has not taken the lease yet".into());
        share.fence_with(fence.clone())?;
        let keeper = Arc::new(Keeper {
            share: share.clone(),
            fence,
            timings,
            me: Mutex::new(Holder {
                id: owner_id(data)?,
                generation: 0,
            }),
        });
        let refuse = |l: &LockFile| {
            anyhow::anyhow!(
                "the repository on {} is in use by {}; stop that gateway first (its lease then ends) or wait for the lease to run out",
                share.describe(),
                l.describe()
            )
        };
        let miss = |m: Miss| match m {
            Miss::Lost(why) => anyhow::anyhow!(why),
            Miss::Io(e) => anyhow::Error::from(e),
        };
        let (started, started_ms) = (Instant::now(), now_ms());
        let current = keeper.read().map_err(miss)?;
        let id = keeper
            .me
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .id
            .clone();
        if let Some(l) = current.as_ref().filter(|l| l.owner != id && l.running()) {
            return Err(refuse(l));
        }
        let me = keeper
            .take(current.as_ref(), started, started_ms)
            .map_err(|m| match m {
                Miss::Lost(_) => match keeper.read() {
                    Ok(Some(l)) => refuse(&l),
                    _ => miss(m),
                },
                m => miss(m),
            })?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (keeper, stop) = (keeper.clone(), stop.clone());
            std::thread::Builder::new()
                .name("lease".into())
                .spawn(move || keeper.run(&stop))?
        };
        tracing::info!(share = %share.describe(), owner = me.id, generation = me.generation, "lease taken");
        Ok(Lease {
            keeper,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.keeper.release();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_fence_opens_only_until_its_time_and_says_why_it_is_closed() {
        let f = Fence::default();
        f.close("it has not taken the lease yet".into());
        let e = f.check().unwrap_err();
        assert!(repo_server::store::is_fenced(&e));
        assert!(
            e.to_string()
                .contains("does not hold the share's lease: it has not taken the lease yet"),
            "{e}"
        );
        f.open_until(Instant::now() + Duration::from_secs(60), now_ms() + 60_000);
        assert!(f.check().is_ok());
        // Either clock running past its limit closes it.
        f.open_until(Instant::now() + Duration::from_secs(60), now_ms() - 1);
        let e = f.check().unwrap_err().to_string();
        assert!(e.contains("could not renew the lease in time"), "{e}");
        f.open_until(Instant::now(), now_ms() + 60_000);
        f.note("cannot reach the share to renew it: down".into());
        let e = f.check().unwrap_err().to_string();
        assert!(
            e.contains("cannot reach the share to renew it: down"),
            "{e}"
        );
    }

    #[test]
    fn a_lease_shorter_than_the_minimum_is_refused_and_the_margins_hold() {
        assert!(Timings::new(Duration::from_secs(2)).is_err());
        let t = Timings::new(Duration::from_secs(60)).unwrap();
        // The holder stops writing a third before the recorded end, and renews twice in the
        // time it may write.
        assert_eq!(t.margin, Duration::from_secs(20));
        assert!(t.renew_every * 2 <= t.ttl - t.margin);
        assert!(t.settle <= Duration::from_secs(1));
    }

    #[test]
    fn a_lease_file_of_an_older_gateway_reads_as_generation_zero() {
        let l: LockFile =
            serde_json::from_str(r#"{"owner":"abc","host":"h","pid":1,"expires_ms":0}"#).unwrap();
        assert_eq!(l.generation, 0);
        assert!(!l.running());
        assert!(!l.is(&Holder {
            id: "abc".into(),
            generation: 1
        }));
    }
}
