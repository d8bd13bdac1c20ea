//! GC: mark and sweep, while backups run.
//!
//! GC refuses to start, and stops before each slice's rows and the index blobs go, while the
//! stores refuse writes ([`crate::store::Fenced`]: a gateway that does not hold its share's
//! lease).
//!
//! # Phases and locks
//!
//! 1. **Start** (write lock, a moment): set `gc_active` and take a catalog snapshot. From then
//!    on every pin and upload also writes its chunk into the mark set (`gcmark`), and every
//!    commit its index blobs, in the same batch, under the `gc` read lock
//!    (`Repository::mark_live`).
//! 2. **Mark** (no lock): every chunk of every backup and every pin *in the snapshot* goes into
//!    the mark set (streamed from the index blobs, unlogged writes); the snapshot's index blobs
//!    are the live set.
//! 3. **Sweep** the chunk table, owner rows and distinct names a slice at a time: candidates
//!    are found without the lock; the write lock is taken only for a slice with candidates,
//!    which are checked again under it before their rows go (and then the chunk files). A chunk
//!    touched after the oldest open session began, minus the configured margin, is never
//!    removed.
//! 4. **Index blobs**: the store is listed without the lock (a listing may be slow and paged),
//!    and each slice of candidates is checked again and removed under the write lock.
//!
//! # Why listing the index blobs outside the lock is safe
//!
//! GC removes index blob `X` only when `X` is (a) not named by a backup of the snapshot and
//! (b) not in the mark set when GC checks it again *under the write lock*, and it removes `X`
//! within that same hold of the lock. The listing only proposes candidates; nothing is decided
//! from it alone. Take any backup `B` that names `X` and exists at some time after the snapshot:
//!
//! - `B` committed before the snapshot: it is in the snapshot, so `X` fails (a). Deleting `B`
//!   later does not matter: the live set is fixed for this GC (its blob waits for the next).
//! - `B` committed after the snapshot: its commit holds the `gc` read lock from before it puts
//!   `X` into the store (put-if-absent: it may find `X` there already) until its batch is
//!   durable, and it started after `gc_active` was set (the flag is set under the write lock),
//!   so that batch carries a mark of `X`. The read hold of the commit and the write hold of
//!   GC's check-and-remove exclude each other: either the commit's batch came first, then the
//!   mark is there and `X` fails (b); or the removal came first, then the commit's put finds
//!   `X` absent and writes it again, so `B` is whole.
//!
//! So a backup committed while the listing runs (or before, or after it) keeps its index blob
//! whether or not the listing saw it; a blob written after the listing is simply not a
//! candidate this time. Its chunks are safe for the same reason as every chunk of a live
//! session: they were pinned (in the snapshot, or marked when pinned after it) or inherited
//! from a base that is in the snapshot or was committed after it (and so marked in turn), and
//! the chunk sweep is over before the index phase begins. A listed blob that is gone by the
//! time GC removes it is fine: removal is idempotent.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use schema::api::SessionState;
use schema::ChunkId;
use serde_json::{json, Value};

use super::jobs::Progress;
use super::Repository;
use crate::auth::Caller;
use crate::catalog::{counter, Snapshot};
use crate::error::{Error, Result};

/// Chunk ids written to the mark set per (unlogged) batch.
const MARK_BATCH: usize = 65_536;
/// Rows (or listed index blobs) examined per sweep slice, and the most removed per write-lock
/// hold.
const SWEEP_SLICE: usize = 4_096;

/// What the mark phase found.
#[derive(Debug, Default)]
struct Marked {
    backups: u64,
    references: u64,
    /// Index blobs (hex) of the snapshot's backups.
    live_indexes: HashSet<String>,
}

/// What the chunk sweep did.
#[derive(Debug, Default)]
struct Swept {
    removed: u64,
    freed: u64,
    kept: u64,
    young: u64,
}

impl Repository {
    /// `POST /v1/admin/gc`: starts GC in the background and returns the job id.
    ///
    /// # Errors
    /// 403 for non-admins; 503 while the stores refuse to delete (a fenced gateway).
    pub fn start_gc(self: &Arc<Self>, caller: &Caller) -> Result<String> {
        caller.require_admin()?;
        self.stores_writable("starting GC")?;
        Ok(self.start_job("gc", |repo, p| repo.gc(p)))
    }

    /// Mark and sweep, while backups run. See the module documentation for why it is safe.
    fn gc(&self, p: &Progress) -> Result<Value> {
        let _one = self.gc_job.lock().unwrap_or_else(|e| e.into_inner());
        self.stores_writable("running GC")?;
        let started = std::time::Instant::now();
        self.catalog.clear_marks()?;
        // Under the write lock (a moment): from here on every pin and upload also marks its
        // chunk, and the snapshot is the state those live marks start from.
        let (snap, cutoff) = {
            let _w = self.gc.write().unwrap_or_else(|e| e.into_inner());
            self.gc_active.store(true, Ordering::SeqCst);
            let now = self.now();
            let oldest_open = self
                .catalog
                .sessions()?
                .iter()
                .filter(|s| s.state == SessionState::Open)
                .map(|s| s.created_ms)
                .min()
                .unwrap_or(now);
            (
                self.catalog.snapshot(),
                oldest_open.min(now) - self.settings.gc_margin_ms,
            )
        };
        let outcome = self.gc_mark_and_sweep(p, &snap, cutoff);
        {
            let _w = self.gc.write().unwrap_or_else(|e| e.into_inner());
            self.gc_active.store(false, Ordering::SeqCst);
        }
        drop(snap);
        self.catalog.clear_marks()?;
        let mut report = outcome?;
        report["seconds"] = json!(started.elapsed().as_secs_f64());
        Ok(report)
    }

    fn gc_mark_and_sweep(&self, p: &Progress, snap: &Snapshot<'_>, cutoff: i64) -> Result<Value> {
        let marked = self.gc_mark(p, snap)?;
        crate::fail::hit("gc.after_mark");
        let swept = self.gc_sweep_chunks(p, cutoff)?;
        let owners_removed = self.gc_sweep_owners(p)?;
        let names_removed = self.gc_sweep_names(p)?;
        let indexes_removed = self.gc_sweep_indexes(p, &marked.live_indexes)?;
        Ok(json!({
            "backups": marked.backups, "references_marked": marked.references,
            "chunks_kept": swept.kept, "chunks_too_young": swept.young,
            "chunks_removed": swept.removed, "bytes_freed": swept.freed,
            "owner_rows_removed": owners_removed, "indexes_removed": indexes_removed,
            "names_removed": names_removed,
        }))
    }

    /// Marks every chunk of every backup in the snapshot, and every pin in it.
    fn gc_mark(&self, p: &Progress, snap: &Snapshot<'_>) -> Result<Marked> {
        p.set_phase("mark");
        let mut out = Marked::default();
        let mut b = self.catalog.batch();
        self.catalog.for_each_backup_in(snap, |m| {
            out.backups += 1;
            out.live_indexes
                .extend(m.disks.iter().map(|d| d.index_blake3.clone()));
            for d in &m.disks {
                self.for_each_index_id(&m, d, |c| {
                    if !c.is_hole() {
                        out.references += 1;
                        b.put_mark(&c);
                    }
                    Ok(())
                })?;
                if b.len() >= MARK_BATCH {
                    self.catalog
                        .write_scratch(std::mem::replace(&mut b, self.catalog.batch()))?;
                }
            }
            for c in m.extra_chunks() {
                out.references += 1;
                b.put_mark(c);
            }
            p.done.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })?;
        self.catalog.for_each_pin_in(snap, |c| {
            out.references += 1;
            b.put_mark(&c);
            if b.len() >= MARK_BATCH {
                self.catalog
                    .write_scratch(std::mem::replace(&mut b, self.catalog.batch()))?;
            }
            Ok(())
        })?;
        self.catalog.write_scratch(b)?;
        Ok(out)
    }

    /// Sweeps the chunk table a slice at a time. Candidates are found without any lock; each
    /// slice's deletions happen under the write lock after checking the marks again.
    fn gc_sweep_chunks(&self, p: &Progress, cutoff: i64) -> Result<Swept> {
        p.set_phase("sweep");
        p.done.store(0, Ordering::Relaxed);
        p.total.store(
            self.catalog.counter(counter::CHUNKS)?.max(0) as u64,
            Ordering::Relaxed,
        );
        let mut out = Swept::default();
        for page in self.catalog.chunk_pages(SWEEP_SLICE) {
            let page = page?;
            p.done.fetch_add(page.len() as u64, Ordering::Relaxed);
            // A row that does not decode is never removed (the offline check reports it).
            out.kept += page.bad.len() as u64;
            let ids: Vec<ChunkId> = page.rows.iter().map(|(c, _)| *c).collect();
            let marked = self.catalog.marked(&ids)?;
            let mut candidates = Vec::new();
            for ((c, meta), m) in page.rows.iter().zip(marked) {
                match meta {
                    _ if m => out.kept += 1,
                    meta if meta.touched_ms >= cutoff => out.young += 1,
                    _ => candidates.push(*c),
                }
            }
            if candidates.is_empty() {
                continue;
            }
            let _w = self.gc.write().unwrap_or_else(|e| e.into_inner());
            let marked = self.catalog.marked(&candidates)?;
            let metas = self.catalog.chunks(&candidates)?;
            let mut gone = Vec::new();
            let mut b = self.catalog.batch();
            let (mut n, mut bytes) = (0i64, 0i64);
            for ((c, m), meta) in candidates.iter().zip(marked).zip(metas) {
                match meta {
                    Some(meta) if !m && meta.touched_ms < cutoff => {
                        b.delete_chunk(c);
                        b.delete_verified(c);
                        n += 1;
                        bytes += meta.stored_len as i64;
                        gone.push(*c);
                    }
                    _ => out.kept += 1,
                }
            }
            b.add(counter::CHUNKS, -n);
            b.add(counter::STORED_BYTES, -bytes);
            // A store fenced since the sweep began (a gateway that lost its lease) stops the
            // sweep before any row goes: another gateway may be using these chunks now.
            self.stores_writable("sweeping chunks")?;
            // Rows first: the catalog never names a file that is gone. A crash before the
            // unlinks leaves orphan files, which `check --repair` clears away.
            self.catalog.write(b)?;
            crate::fail::hit("gc.after_row_delete");
            for c in &gone {
                self.chunks.delete(c)?;
            }
            out.removed += n as u64;
            out.freed += bytes as u64;
        }
        Ok(out)
    }

    /// Owner rows of chunks that are gone.
    fn gc_sweep_owners(&self, p: &Progress) -> Result<u64> {
        p.set_phase("owners");
        let mut removed = 0u64;
        for page in self.catalog.owner_pages(SWEEP_SLICE) {
            let stale = self.catalog.stale_owners(&page?.rows)?;
            if stale.is_empty() {
                continue;
            }
            // Checked again under the lock: an upload may have stored the chunk meanwhile.
            let _w = self.gc.write().unwrap_or_else(|e| e.into_inner());
            let mut b = self.catalog.batch();
            for o in self.catalog.stale_owners(&stale)? {
                b.delete_owner(&o);
                removed += 1;
            }
            self.catalog.write(b)?;
        }
        Ok(removed)
    }

    /// Distinct names (`name_set`) no backup's file catalog has any more. A commit writes a
    /// name's row in its batch under the gc read lock, so checking again under the write lock
    /// cannot remove a name that is in use.
    fn gc_sweep_names(&self, p: &Progress) -> Result<u64> {
        p.set_phase("names");
        let mut removed = 0u64;
        for page in self.catalog.name_set_pages(SWEEP_SLICE) {
            let unused = self.catalog.unused_names(&page?.rows)?;
            if unused.is_empty() {
                continue;
            }
            let _w = self.gc.write().unwrap_or_else(|e| e.into_inner());
            let mut b = self.catalog.batch();
            for n in self.catalog.unused_names(&unused)? {
                b.delete_distinct_name(&n);
                removed += 1;
            }
            self.catalog.write(b)?;
        }
        Ok(removed)
    }

    /// Index blobs that no backup of the snapshot names and no commit since has marked. The
    /// store is listed without any lock, page by page, and consumed a slice at a time; each slice
    /// of candidates is removed under the write lock after checking the marks again (see the
    /// module documentation for why this is safe).
    fn gc_sweep_indexes(&self, p: &Progress, live: &HashSet<String>) -> Result<u64> {
        p.set_phase("indexes");
        crate::fail::hit("gc.before_index_removal");
        let mut removed = 0u64;
        let mut unnamed = Vec::with_capacity(SWEEP_SLICE);
        for listed in crate::store::pages(SWEEP_SLICE, |after, n| self.indexes.list(after, n)) {
            for h in listed.map_err(|e| Error::storage("listing index blobs", e))? {
                if !live.contains(&h.hex()) {
                    unnamed.push(h);
                }
                if unnamed.len() == SWEEP_SLICE {
                    removed += self.remove_unmarked_indexes(&std::mem::take(&mut unnamed))?;
                }
            }
        }
        removed += self.remove_unmarked_indexes(&unnamed)?;
        Ok(removed)
    }

    /// Removes the index blobs among `unnamed` that are not marked, checking the marks again
    /// under the write lock (no commit is then half-way). Returns how many went.
    fn remove_unmarked_indexes(&self, unnamed: &[ChunkId]) -> Result<u64> {
        let candidates: Vec<ChunkId> = unnamed
            .iter()
            .zip(self.catalog.marked(unnamed)?)
            .filter(|(_, m)| !m)
            .map(|(h, _)| *h)
            .collect();
        if candidates.is_empty() {
            return Ok(0);
        }
        let _w = self.gc.write().unwrap_or_else(|e| e.into_inner());
        self.stores_writable("removing index blobs")?;
        let mut removed = 0u64;
        for (h, m) in candidates.iter().zip(self.catalog.marked(&candidates)?) {
            if !m {
                self.indexes.delete(h)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}
