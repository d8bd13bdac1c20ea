//! One gateway per repository: a lease file `gateway.lock` on the share names its holder (an id
//! kept in the gateway's data directory, the host, the pid) and when the lease ends. A gateway
//! takes the lease when there is none, when it has ended, or when it is its own (a restart with
//! the same data directory); it renews it every third of its length while it runs and removes
//! it on a clean stop. Another gateway pointed at the same share refuses to start while the
//! lease runs, saying who holds it and until when.
//!
//! Limits: two gateways starting in the same instant can both see no lease; each re-reads the
//! file after writing it and only the last writer keeps going. Lease times compare the clocks
//! of two machines, so they must be roughly in sync (the lease is minutes, not milliseconds).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::share::Share;

/// Name of the lease file in the repository directory of the share.
pub const LOCK_FILE: &str = "gateway.lock";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LockFile {
    owner: String,
    host: String,
    pid: u32,
    expires_ms: i64,
}

/// A held lease; renewed until dropped, then released.
#[derive(Debug)]
pub struct Lease {
    share: Arc<Share>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
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
fn owner_id(data: &Path) -> std::io::Result<String> {
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

impl Lease {
    /// Takes the lease of `share` for this gateway (id kept in `data`) for `ttl`, renewing it in
    /// the background.
    ///
    /// # Errors
    /// Another gateway holds the lease (the message says who and until when), or I/O errors.
    pub fn acquire(share: Arc<Share>, data: &Path, ttl: Duration) -> anyhow::Result<Lease> {
        let owner = owner_id(data)?;
        let held_by_other = |share: &Share| -> anyhow::Result<Option<LockFile>> {
            match share.read_named(LOCK_FILE) {
                Ok(bytes) => {
                    let l: LockFile = serde_json::from_slice(&bytes).map_err(|e| {
                        anyhow::anyhow!("{LOCK_FILE} on {} is unreadable ({e}); if no gateway uses this share, remove it", share.describe())
                    })?;
                    Ok((l.owner != owner && l.expires_ms > now_ms()).then_some(l))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.into()),
            }
        };
        let refuse = |l: LockFile, share: &Share| {
            anyhow::anyhow!(
                "the repository on {} is in use by gateway {} (host {}, pid {}) until {}; stop that gateway first (its lease then ends) or wait for the lease to run out",
                share.describe(),
                l.owner,
                l.host,
                l.pid,
                schema::time::rfc3339(l.expires_ms)
            )
        };
        if let Some(l) = held_by_other(&share)? {
            return Err(refuse(l, &share));
        }
        let write = {
            let owner = owner.clone();
            move |share: &Share| -> std::io::Result<()> {
                let l = LockFile {
                    owner: owner.clone(),
                    host: host(),
                    pid: std::process::id(),
                    expires_ms: now_ms() + ttl.as_millis() as i64,
                };
                share.write_named(
                    LOCK_FILE,
                    &serde_json::to_vec_pretty(&l).unwrap_or_default(),
                )
            }
        };
        write(&share)?;
        // Another gateway that wrote in the same instant: the last writer wins.
        if let Some(l) = held_by_other(&share)? {
            return Err(refuse(l, &share));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (share, stop) = (share.clone(), stop.clone());
            std::thread::Builder::new()
                .name("lease".into())
                .spawn(move || {
                    let step = Duration::from_millis(200);
                    let mut waited = Duration::ZERO;
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(step);
                        waited += step;
                        if waited >= ttl / 3 {
                            waited = Duration::ZERO;
                            if let Err(e) = write(&share) {
                                tracing::error!(error = %e, "cannot renew the lease on the share");
                            }
                        }
                    }
                })?
        };
        tracing::info!(share = %share.describe(), owner, "lease taken");
        Ok(Lease {
            share,
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
        if let Err(e) = self.share.remove_named(LOCK_FILE) {
            tracing::warn!(error = %e, "could not remove the lease file");
        }
    }
}
