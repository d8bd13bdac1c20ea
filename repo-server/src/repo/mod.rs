//! The repository: every operation of protocol v1 as a blocking method, independent of HTTP.
//!
//! - [`session`]: creating, reading, aborting and expiring sessions; find-missing; index records.
//! - [`ingest`]: verifying and storing uploaded chunks.
//! - [`commit`]: turning a session into a durable, visible backup.
//! - [`read`]: the catalog as seen by storage admins, index and image reads, chunk reads.
//! - [`exports`]: NBD exports as capabilities (random names that expire), pinning their backups.
//! - [`files`]: the guest file catalog (browse a backup's files, read one, search by name).
//! - [`jobs`]: the registry of background jobs and their reports.
//! - [`gc`]: mark and sweep while backups run (its module documentation argues why it is safe).
//! - [`verify`]: re-reading and re-hashing stored chunks; quarantine of damaged ones.
//! - [`retention`]: prune by policy, within the immutability window.
//! - [`rescan`]: rebuilding a lost catalog from the manifests in the store.
//!
//! Locking, outermost first (never taken the other way round):
//! 1. `gc` (read by every operation that pins or references chunks; write by GC only for
//!    moments: to start live marking and take its snapshot, and around each slice it deletes),
//!    so a sweep never runs between a chunk being found present and it being pinned or marked.
//!    Long jobs (verify, prune) take the read lock per slice only: a GC waiting for the write
//!    lock holds every new reader back, so a reader held for long would stall all ingest;
//! 2. the session's own lock (read by find-missing and chunk uploads, write by record appends,
//!    commit and abort), so nothing pins into a session that is being committed; its entry
//!    exists only while a request holds it;
//! 3. a stripe lock per chunk id while its file and row are created.
//!
//! All methods block (RocksDB, files, zstd, blake3); the HTTP layer calls them from blocking
//! threads.

pub mod commit;
pub mod exports;
pub mod files;
pub mod gc;
pub mod ingest;
pub mod jobs;
pub mod read;
pub mod rescan;
pub mod retention;
pub mod session;
pub mod verify;

pub(crate) use read::index_ids;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use schema::{ChunkId, SessionId};

use crate::catalog::Catalog;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::store::local::{BlobDir, ManifestDir};
use crate::store::{layout, BlobStore, ManifestStore};

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Static zeros for holes and padding (the largest block size).
pub static ZEROS: [u8; 4 << 20] = [0; 4 << 20];

/// Settings the repository needs, taken from [`Config`].
#[derive(Debug, Clone)]
pub struct Settings {
    /// Largest uncompressed chunk.
    pub max_chunk_bytes: u64,
    /// Most digests per find-missing.
    pub max_find_missing: u64,
    /// Idle session expiry, ms.
    pub session_ttl_ms: i64,
    /// zstd level for raw uploads.
    pub raw_level: i32,
    /// GC safety margin, ms.
    pub gc_margin_ms: i64,
    /// Stored bytes per second verify reads at most (none: unpaced).
    pub verify_rate: Option<u64>,
    /// Immutability window, ms: younger backups cannot be deleted by anyone.
    pub min_age_ms: i64,
    /// Retention policies by source, and the default.
    pub retention: crate::config::RetentionConfig,
    /// Lifetime of an NBD export (and the most one may ask), ms.
    pub export_ttl_ms: i64,
    /// NBD exports live at once.
    pub max_exports: usize,
}

impl From<&Config> for Settings {
    fn from(c: &Config) -> Settings {
        Settings {
            max_chunk_bytes: c.limits.max_chunk_bytes,
            max_find_missing: c.limits.max_find_missing,
            session_ttl_ms: c.limits.session_idle_ttl.as_millis() as i64,
            raw_level: c.store.raw_upload_zstd_level,
            gc_margin_ms: c.store.gc_margin.as_millis() as i64,
            verify_rate: c.store.verify_rate,
            min_age_ms: c
                .retention
                .min_age
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
            retention: c.retention.clone(),
            export_ttl_ms: c.nbd.ttl.as_millis() as i64,
            max_exports: c.nbd.max_exports,
        }
    }
}

/// The repository.
#[derive(Debug)]
pub struct Repository {
    /// Settings.
    pub settings: Settings,
    /// The catalog.
    pub catalog: Catalog,
    /// Chunk frames.
    pub chunks: Arc<dyn BlobStore>,
    /// Index blobs of committed disks.
    pub indexes: Arc<dyn BlobStore>,
    /// Manifests of committed backups (what `rescan` rebuilds a catalog from).
    pub manifests: Arc<dyn ManifestStore>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Data directory.
    pub data: PathBuf,
    /// NBD exports (in memory), which pin their backups against deletion.
    pub exports: exports::ExportTable,
    gc: RwLock<()>,
    /// Set while a GC runs: every pin and upload then also adds its chunk to the mark set.
    gc_active: AtomicBool,
    /// One GC at a time.
    gc_job: Mutex<()>,
    session_locks: Mutex<HashMap<SessionId, Arc<RwLock<()>>>>,
    stripes: Vec<Mutex<()>>,
    /// Last activity per session not yet persisted (ms).
    touched: Mutex<HashMap<SessionId, i64>>,
    /// Sorted chunk ids of each open session's base, loaded on first use.
    base_sets: Mutex<HashMap<SessionId, Arc<Vec<ChunkId>>>>,
    open_sessions: AtomicI64,
    jobs: jobs::JobTable,
    /// A fixed time for tests (Unix ms); 0 means the real clock.
    clock: AtomicI64,
}

/// A handle on one session's lock (see [`Repository::session_lock`]): dropping the last handle
/// removes the session's entry.
#[derive(Debug)]
struct SessionLock<'r> {
    repo: &'r Repository,
    id: SessionId,
    lock: Option<Arc<RwLock<()>>>,
}

impl std::ops::Deref for SessionLock<'_> {
    type Target = RwLock<()>;

    fn deref(&self) -> &RwLock<()> {
        // Only `drop` takes it out.
        self.lock.as_deref().unwrap_or(&NO_LOCK)
    }
}

/// What a [`SessionLock`] derefs to once dropped (never observed).
static NO_LOCK: RwLock<()> = RwLock::new(());

impl Drop for SessionLock<'_> {
    fn drop(&mut self) {
        // Handles are cloned and released only under the map's mutex, so the count is exact.
        let mut m = self
            .repo
            .session_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        drop(self.lock.take());
        if m.get(&self.id).is_some_and(|l| Arc::strong_count(l) == 1) {
            m.remove(&self.id);
        }
        self.repo
            .metrics
            .session_locks
            .store(m.len() as i64, Ordering::Relaxed);
    }
}

/// Where a repository keeps its data: chunk frames, index blobs, manifests.
#[derive(Debug, Clone)]
pub struct Stores {
    /// Chunk frames.
    pub chunks: Arc<dyn BlobStore>,
    /// Index blobs.
    pub indexes: Arc<dyn BlobStore>,
    /// Manifests.
    pub manifests: Arc<dyn ManifestStore>,
}

impl Stores {
    /// The local layout under `data`: `chunks/ab/cd/<hex>`, `indexes/ab/<hex>`,
    /// `manifests/<id>.json`, temp files in `tmp/`.
    ///
    /// # Errors
    /// I/O errors creating the directories.
    pub fn local(data: &std::path::Path) -> Result<Stores> {
        let tmp = data.join(layout::TMP);
        let blobs =
            |(dir, levels): (&str, usize)| BlobDir::open(data.join(dir), tmp.clone(), levels);
        Ok(Stores {
            chunks: Arc::new(blobs(layout::CHUNKS)?),
            indexes: Arc::new(blobs(layout::INDEXES)?),
            manifests: Arc::new(ManifestDir::open(data.join(layout::MANIFESTS), tmp)?),
        })
    }
}

impl Repository {
    /// Opens the repository under `data` (creating it).
    ///
    /// # Errors
    /// I/O or RocksDB errors.
    pub fn open(data: PathBuf, settings: Settings, metrics: Arc<Metrics>) -> Result<Repository> {
        let stores = Stores::local(&data)?;
        Repository::open_with(data, settings, metrics, stores)
    }

    /// Opens the repository with its catalog under `data` and its data in `stores`.
    ///
    /// # Errors
    /// I/O or RocksDB errors.
    pub fn open_with(
        data: PathBuf,
        settings: Settings,
        metrics: Arc<Metrics>,
        stores: Stores,
    ) -> Result<Repository> {
        std::fs::create_dir_all(&data)?;
        let Stores {
            chunks,
            indexes,
            manifests,
        } = stores;
        let catalog = Catalog::open(&data.join("catalog"))?;
        let added = catalog.backfill_name_set()?;
        if added > 0 {
            tracing::info!(
                names = added,
                "filled the distinct-name index of the file catalog"
            );
        }
        let open = catalog
            .sessions()?
            .iter()
            .filter(|s| s.state == schema::api::SessionState::Open)
            .count() as i64;
        metrics.open_sessions.store(open, Ordering::Relaxed);
        Ok(Repository {
            settings,
            catalog,
            chunks,
            indexes,
            manifests,
            metrics,
            data,
            exports: exports::ExportTable::default(),
            gc: RwLock::new(()),
            gc_active: AtomicBool::new(false),
            gc_job: Mutex::new(()),
            session_locks: Mutex::new(HashMap::new()),
            stripes: (0..256).map(|_| Mutex::new(())).collect(),
            touched: Mutex::new(HashMap::new()),
            base_sets: Mutex::new(HashMap::new()),
            open_sessions: AtomicI64::new(open),
            jobs: jobs::JobTable::default(),
            clock: AtomicI64::new(0),
        })
    }

    /// The repository's time: the real clock, or the one a test set.
    pub fn now(&self) -> i64 {
        match self.clock.load(Ordering::Relaxed) {
            0 => now_ms(),
            t => t,
        }
    }

    /// Fixes the repository's clock at `ms` (Unix ms) — for tests of time-based behaviour
    /// (retention, immutability, expiry); 0 returns to the real clock.
    pub fn set_clock(&self, ms: i64) {
        self.clock.store(ms, Ordering::Relaxed);
    }

    /// The lock of session `s`. Its entry in `session_locks` lives only while some request
    /// holds the returned handle, so neither ended sessions nor made-up session ids leave
    /// anything behind.
    fn session_lock(&self, s: &SessionId) -> SessionLock<'_> {
        let mut m = self.session_locks.lock().unwrap_or_else(|e| e.into_inner());
        let lock = m.entry(*s).or_default().clone();
        self.metrics
            .session_locks
            .store(m.len() as i64, Ordering::Relaxed);
        SessionLock {
            repo: self,
            id: *s,
            lock: Some(lock),
        }
    }

    fn stripe(&self, c: &ChunkId) -> std::sync::MutexGuard<'_, ()> {
        self.stripes[c.0[0] as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn gc_read(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.gc.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `c` to a running GC's mark set, in the same batch that pins or stores it. Callers
    /// hold the `gc` read lock, so GC sees either the pin in its snapshot or this mark.
    fn mark_live(&self, b: &mut crate::catalog::Batch<'_>, c: &ChunkId) {
        if self.gc_active.load(Ordering::SeqCst) {
            b.put_mark(c);
        }
    }

    fn touch(&self, s: &SessionId) {
        self.touched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(*s, self.now());
    }

    fn last_touch(&self, s: &SessionId) -> Option<i64> {
        self.touched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(s)
            .copied()
    }

    fn forget_session(&self, s: &SessionId) {
        self.touched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(s);
        self.base_sets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(s);
    }

    fn session_closed(&self) {
        self.open_sessions.fetch_sub(1, Ordering::Relaxed);
        self.metrics.open_sessions.fetch_sub(1, Ordering::Relaxed);
    }

    /// Open sessions right now.
    pub fn open_session_count(&self) -> i64 {
        self.open_sessions.load(Ordering::Relaxed)
    }

    /// Refuses work that writes or deletes in the stores while one of them is fenced (a gateway
    /// without its share's lease): 503 with the store's reason.
    ///
    /// # Errors
    /// 503 `UNAVAILABLE`.
    pub fn stores_writable(&self, context: &str) -> Result<()> {
        self.chunks
            .may_write()
            .and_then(|()| self.indexes.may_write())
            .map_err(|e| Error::storage(context, e))
    }

    /// Reads and decompresses a stored chunk, checking its length.
    ///
    /// # Errors
    /// 409 `ENCRYPTED` for a sealed chunk (only the mover with its key can open it); internal
    /// errors when the file is missing or does not decode to `raw_len` bytes.
    pub fn read_chunk(&self, id: &ChunkId, raw_len: u64) -> Result<Vec<u8>> {
        let frame = self
            .chunks
            .get(id)
            .map_err(|e| Error::storage(&format!("reading chunk {id}"), e))?;
        if schema::sealed::is_sealed(&frame) {
            return Err(Error::new(
                schema::ErrorCode::Encrypted,
                format!("chunk {id} is sealed: only a mover with its backup's key can read it"),
            ));
        }
        let data = zstd::bulk::decompress(&frame, raw_len as usize)
            .map_err(|e| Error::internal(&format!("decompressing chunk {id}"), e))?;
        if data.len() as u64 != raw_len {
            return Err(Error::internal(
                &format!("reading chunk {id}"),
                "stored chunk has the wrong length",
            ));
        }
        Ok(data)
    }
}
