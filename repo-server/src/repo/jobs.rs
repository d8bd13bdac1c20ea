//! Background jobs: GC (mark and sweep) and verify.
//!
//! No job holds the repository's `gc` lock across more than one slice of its work, so uploads,
//! pins and commits (which take it for reading) wait at most that long, even while a GC waits
//! for the write lock (std's `RwLock` then holds new readers back). GC refuses to start, and
//! stops before each slice's rows and the index blobs go, while the stores refuse writes
//! ([`crate::store::Fenced`]: a gateway that does not hold its share's lease).
//!
//! GC takes the write lock only for moments: to set `gc_active` and take a snapshot (from then
//! on every pin, upload and commit also writes its chunks and index blobs into the mark set, in
//! its own batch); then it marks, without the lock, every chunk of every backup and every pin in
//! the snapshot (the `gcmark` column family, streamed); then it sweeps the chunk table, owner
//! rows, distinct names and index blobs a slice at a time, finding candidates without the lock
//! and taking it only for a slice with candidates, which it checks again before removing them.
//! It never removes a chunk touched after the oldest open session began, minus the configured
//! margin.
//!
//! Verify re-reads every chunk, decompresses and re-hashes it, without a lock (paced by
//! `[store] verify_rate` when set); a corrupt or missing chunk is checked again under the read
//! lock and its stripe lock, then marked bad (find-missing then reports it missing, so the next
//! backup re-sends and heals it), its file moved to `quarantine/`, and the report names every
//! backup that references it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use schema::api::{SessionState, VerifyRequest};
use schema::{ChunkId, ErrorCode};
use serde_json::{json, Value};

use super::{now_ms, Repository};
use crate::auth::Caller;
use crate::catalog::{counter, ChunkMeta};
use crate::error::{Error, Result};

/// Jobs started since the server began (finished ones are also kept in the catalog).
#[derive(Debug, Default)]
pub struct JobTable {
    jobs: Mutex<HashMap<String, Value>>,
    seq: AtomicU64,
}

/// Chunk ids written to the mark set per (unlogged) batch.
const MARK_BATCH: usize = 65_536;
/// Chunk rows examined per sweep slice (and per write-lock hold when some are deleted).
const SWEEP_SLICE: usize = 4_096;

/// Progress of a running job, shared with its thread.
#[derive(Debug, Default)]
struct Progress {
    done: AtomicU64,
    total: AtomicU64,
    phase: Mutex<&'static str>,
}

impl Progress {
    fn set_phase(&self, phase: &'static str) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = phase;
    }

    fn json(&self) -> Value {
        json!({
            "phase": *self.phase.lock().unwrap_or_else(|e| e.into_inner()),
            "done": self.done.load(Ordering::Relaxed),
            "total": self.total.load(Ordering::Relaxed),
        })
    }
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

    /// `POST /v1/admin/verify`: starts verify in the background and returns the job id.
    ///
    /// # Errors
    /// 403 for non-admins.
    pub fn start_verify(self: &Arc<Self>, caller: &Caller, req: VerifyRequest) -> Result<String> {
        caller.require_admin()?;
        if let Some(f) = req.fraction {
            if !(f > 0.0 && f <= 1.0) {
                return Err(Error::new(
                    ErrorCode::InvalidBody,
                    format!("fraction {f} is not in (0, 1]"),
                ));
            }
        }
        if req
            .not_verified_days
            .is_some_and(|d| !(d >= 0.0 && d.is_finite()))
        {
            return Err(Error::new(
                ErrorCode::InvalidBody,
                "not_verified_days must be a number of days ≥ 0",
            ));
        }
        Ok(self.start_job("verify", move |repo, p| repo.verify(p, &req)))
    }

    /// `GET /v1/admin/jobs/{id}`.
    ///
    /// # Errors
    /// 403, 404.
    pub fn job(&self, caller: &Caller, id: &str) -> Result<Value> {
        caller.require_admin()?;
        if let Some(j) = self
            .jobs
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
        {
            return Ok(j.clone());
        }
        if id.len() <= 64 && id.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-') {
            if let Some(j) = self.catalog.job(id)? {
                return Ok(j);
            }
        }
        Err(Error::not_found(format!("job {id}")))
    }

    fn start_job(
        self: &Arc<Self>,
        kind: &'static str,
        work: impl FnOnce(&Repository, &Progress) -> Result<Value> + Send + 'static,
    ) -> String {
        let n = self.jobs.seq.fetch_add(1, Ordering::Relaxed);
        let id = format!("{kind}-{}-{n}", now_ms());
        let started = schema::time::rfc3339(now_ms());
        let running = json!({ "id": id, "kind": kind, "state": "running", "started": started });
        self.jobs
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), running);
        let repo = Arc::clone(self);
        let job_id = id.clone();
        let progress = Arc::new(Progress::default());
        let p2 = progress.clone();
        // Progress is published into the table by a small ticker while the job runs.
        let repo_t = Arc::clone(self);
        let tick_id = id.clone();
        let done_flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done_t = done_flag.clone();
        std::thread::spawn(move || {
            while !done_t.load(Ordering::Relaxed) {
                if let Some(j) = repo_t
                    .jobs
                    .jobs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_mut(&tick_id)
                {
                    if j["state"] == "running" {
                        j["progress"] = p2.json();
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        });
        std::thread::spawn(move || {
            let outcome = work(&repo, &progress);
            done_flag.store(true, Ordering::Relaxed);
            let mut report = json!({
                "id": job_id, "kind": kind, "started": started, "finished": schema::time::rfc3339(now_ms()),
                "progress": progress.json(),
            });
            match outcome {
                Ok(result) => {
                    report["state"] = json!("done");
                    report["result"] = result;
                }
                Err(e) => {
                    tracing::error!(job = %job_id, error = %e, "job failed");
                    report["state"] = json!("failed");
                    report["error"] = json!(e.to_string());
                }
            }
            let mut b = repo.catalog.batch();
            b.put_job(&job_id, &report);
            if let Err(e) = repo.catalog.write(b) {
                tracing::error!(job = %job_id, error = %e, "could not persist job report");
            }
            tracing::info!(job = %job_id, report = %report, "job finished");
            repo.jobs
                .jobs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(job_id, report);
        });
        id
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

    fn gc_mark_and_sweep(
        &self,
        p: &Progress,
        snap: &crate::catalog::Snapshot<'_>,
        cutoff: i64,
    ) -> Result<Value> {
        // Mark: every chunk of every backup in the snapshot, and every pin in it.
        p.set_phase("mark");
        let mut backups = 0u64;
        let mut references = 0u64;
        let mut live_indexes = HashSet::new();
        let mut b = self.catalog.batch();
        self.catalog.for_each_backup_in(snap, |m| {
            backups += 1;
            live_indexes.extend(m.disks.iter().map(|d| d.index_blake3.clone()));
            for d in &m.disks {
                self.for_each_index_id(&m, d, |c| {
                    if !c.is_hole() {
                        references += 1;
                        b.put_mark(&c);
                    }
                    Ok(())
                })?;
                if b.len() >= MARK_BATCH {
                    self.catalog
                        .write_scratch(std::mem::replace(&mut b, self.catalog.batch()))?;
                }
            }
            for c in m.file_indexes.iter().flat_map(|r| &r.chunks) {
                references += 1;
                b.put_mark(c);
            }
            p.done.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })?;
        self.catalog.for_each_pin_in(snap, |c| {
            references += 1;
            b.put_mark(&c);
            if b.len() >= MARK_BATCH {
                self.catalog
                    .write_scratch(std::mem::replace(&mut b, self.catalog.batch()))?;
            }
            Ok(())
        })?;
        self.catalog.write_scratch(b)?;
        crate::fail::hit("gc.after_mark");

        // Sweep, a slice of the chunk table at a time. Candidates are found without any lock;
        // each slice's deletions happen under the write lock after checking the marks again.
        p.set_phase("sweep");
        p.done.store(0, Ordering::Relaxed);
        p.total.store(
            self.catalog.counter(counter::CHUNKS)?.max(0) as u64,
            Ordering::Relaxed,
        );
        let (mut removed, mut freed, mut kept, mut young) = (0u64, 0u64, 0u64, 0u64);
        let mut after: Option<Box<[u8]>> = None;
        loop {
            let rows = self
                .catalog
                .slice("chunks", after.as_deref(), SWEEP_SLICE)?;
            let Some((last, _)) = rows.last() else { break };
            after = Some(last.clone());
            p.done.fetch_add(rows.len() as u64, Ordering::Relaxed);
            let ids: Vec<ChunkId> = rows
                .iter()
                .filter_map(|(k, _)| ChunkId::from_slice(k))
                .collect();
            let marked = self.catalog.marked(&ids)?;
            let mut candidates = Vec::new();
            for ((c, (_, v)), m) in ids.iter().zip(&rows).zip(marked) {
                match ChunkMeta::decode(v) {
                    _ if m => kept += 1,
                    Some(meta) if meta.touched_ms >= cutoff => young += 1,
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
                    _ => kept += 1,
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
            removed += n as u64;
            freed += bytes as u64;
        }

        // Owner rows of chunks that are gone.
        p.set_phase("owners");
        let mut owners_removed = 0u64;
        let mut after: Option<Box<[u8]>> = None;
        loop {
            let rows = self
                .catalog
                .slice("owners", after.as_deref(), SWEEP_SLICE)?;
            let Some((last, _)) = rows.last() else { break };
            after = Some(last.clone());
            let keys: Vec<Box<[u8]>> = rows.into_iter().map(|(k, _)| k).collect();
            let stale = self.stale_owner_keys(&keys)?;
            if stale.is_empty() {
                continue;
            }
            // Checked again under the lock: an upload may have stored the chunk meanwhile.
            let _w = self.gc.write().unwrap_or_else(|e| e.into_inner());
            let mut b = self.catalog.batch();
            for k in self.stale_owner_keys(&stale)? {
                b.delete_owner_key(&k);
                owners_removed += 1;
            }
            self.catalog.write(b)?;
        }

        // Distinct names (`name_set`) no backup's file catalog has any more. A commit writes a
        // name's row in its batch under the gc read lock, so checking again under the write
        // lock cannot remove a name that is in use.
        p.set_phase("names");
        let mut names_removed = 0u64;
        let mut after: Option<Box<[u8]>> = None;
        loop {
            let rows = self
                .catalog
                .slice("name_set", after.as_deref(), SWEEP_SLICE)?;
            let Some((last, _)) = rows.last() else { break };
            after = Some(last.clone());
            let keys: Vec<Box<[u8]>> = rows.into_iter().map(|(k, _)| k).collect();
            let unused = self.catalog.unused_names(&keys)?;
            if unused.is_empty() {
                continue;
            }
            let _w = self.gc.write().unwrap_or_else(|e| e.into_inner());
            let mut b = self.catalog.batch();
            for k in self.catalog.unused_names(&unused)? {
                b.delete_raw("name_set", &k);
                names_removed += 1;
            }
            self.catalog.write(b)?;
        }

        // Index blobs that no backup of the snapshot names and no commit since has marked,
        // found without any lock; each slice of them is removed under the write lock after
        // checking the marks again (then no commit is half-way, and every commit after the
        // snapshot marked its index blobs in its batch).
        p.set_phase("indexes");
        crate::fail::hit("gc.before_index_removal");
        let mut indexes_removed = 0u64;
        let unnamed: Vec<ChunkId> = self
            .indexes
            .list()?
            .into_iter()
            .filter(|h| !live_indexes.contains(&h.hex()))
            .collect();
        for slice in unnamed.chunks(SWEEP_SLICE) {
            let candidates: Vec<ChunkId> = slice
                .iter()
                .zip(self.catalog.marked(slice)?)
                .filter(|(_, m)| !m)
                .map(|(h, _)| *h)
                .collect();
            if candidates.is_empty() {
                continue;
            }
            let _w = self.gc.write().unwrap_or_else(|e| e.into_inner());
            self.stores_writable("removing index blobs")?;
            for (h, m) in candidates.iter().zip(self.catalog.marked(&candidates)?) {
                if !m {
                    self.indexes.delete(h)?;
                    indexes_removed += 1;
                }
            }
        }
        Ok(json!({
            "backups": backups, "references_marked": references, "chunks_kept": kept,
            "chunks_too_young": young, "chunks_removed": removed, "bytes_freed": freed,
            "owner_rows_removed": owners_removed, "indexes_removed": indexes_removed,
            "names_removed": names_removed,
        }))
    }

    /// The owner rows among `rows` whose chunk no longer exists.
    fn stale_owner_keys(&self, keys: &[Box<[u8]>]) -> Result<Vec<Box<[u8]>>> {
        let ids: Vec<ChunkId> = keys
            .iter()
            .map(|k| ChunkId::from_slice(&k[k.len().saturating_sub(32)..]).unwrap_or(ChunkId::HOLE))
            .collect();
        let metas = self.catalog.chunks(&ids)?;
        Ok(keys
            .iter()
            .zip(metas)
            .filter(|(_, m)| m.is_none())
            .map(|(k, _)| k.clone())
            .collect())
    }

    /// Re-reads and re-hashes every chunk, or the part `req` selects, a slice at a time.
    ///
    /// Reading and hashing take no lock (a chunk GC removes meanwhile just reads as missing);
    /// only writing a slice's results does, each a moment: the verified times under the `gc`
    /// read lock, for rows that still exist; each damaged chunk's quarantine under the `gc`
    /// read lock and its stripe lock, after checking it again.
    fn verify(&self, p: &Progress, req: &VerifyRequest) -> Result<Value> {
        p.set_phase("verify");
        p.total.store(
            self.catalog.counter(counter::CHUNKS)?.max(0) as u64,
            Ordering::Relaxed,
        );
        let now = self.now();
        let seed = now_ms().to_le_bytes();
        let threshold = req.fraction.map(|f| (f * u64::MAX as f64) as u64);
        let fresh_after = req
            .not_verified_days
            .map(|d| now - (d * 86_400_000.0) as i64);
        let mut pace = self.settings.verify_rate.map(crate::rate::Pacer::new);
        let (mut checked, mut skipped) = (0u64, 0u64);
        let (mut corrupt, mut missing) = (Vec::new(), Vec::new());
        let mut after: Option<Box<[u8]>> = None;
        loop {
            let rows = self
                .catalog
                .slice("chunks", after.as_deref(), SWEEP_SLICE)?;
            let Some((last, _)) = rows.last() else { break };
            after = Some(last.clone());
            let ids: Vec<ChunkId> = rows
                .iter()
                .filter_map(|(k, _)| ChunkId::from_slice(k))
                .collect();
            let verified = match fresh_after {
                Some(_) => self.catalog.verified(&ids)?,
                None => vec![None; ids.len()],
            };
            let (mut sound, mut damaged) = (Vec::new(), Vec::new());
            for ((c, (_, v)), when) in ids.iter().zip(&rows).zip(verified) {
                p.done.fetch_add(1, Ordering::Relaxed);
                let sampled = threshold.is_none_or(|t| {
                    let mut h = blake3::Hasher::new();
                    h.update(&seed);
                    h.update(&c.0);
                    let x = h.finalize();
                    u64::from_le_bytes(x.as_bytes()[..8].try_into().unwrap_or([0; 8])) <= t
                });
                let due = match (fresh_after, when) {
                    (Some(limit), Some(t)) => t < limit,
                    _ => true,
                };
                let Some(m) = ChunkMeta::decode(v) else {
                    continue;
                };
                if !(sampled && due) {
                    skipped += 1;
                    continue;
                }
                checked += 1;
                if let Some(pace) = &mut pace {
                    pace.take(m.stored_len);
                }
                match self.chunk_health(c, &m)? {
                    Health::Sound => sound.push(*c),
                    _ => damaged.push(*c),
                }
            }
            if !sound.is_empty() {
                // Under the read lock no sweep slice runs, so no row is gone between this check
                // and the write (a verified time without its chunk would outlive it).
                let _gc = self.gc_read();
                let mut b = self.catalog.batch();
                for (c, m) in sound.iter().zip(self.catalog.chunks(&sound)?) {
                    if m.is_some() {
                        b.put_verified(c, now);
                    }
                }
                if !b.is_empty() {
                    self.catalog.write(b)?;
                }
            }
            for c in damaged {
                match self.quarantine_if_damaged(&c)? {
                    Some(Health::Missing) => missing.push(c),
                    Some(Health::Corrupt) => corrupt.push(c),
                    Some(Health::Sound) | None => {}
                }
            }
        }
        let bad: HashSet<ChunkId> = corrupt.iter().chain(&missing).copied().collect();
        if !bad.is_empty() {
            self.metrics.verification_failures.add(bad.len() as u64);
            tracing::warn!(
                corrupt = corrupt.len(),
                missing = missing.len(),
                "verify found damaged chunks"
            );
        }
        let mut affected = Vec::new();
        if !bad.is_empty() {
            self.catalog.for_each_backup(|m| {
                for d in &m.disks {
                    if self.index_of(&m, d)?.iter().any(|c| bad.contains(c)) {
                        affected.push(m.id.to_string());
                        break;
                    }
                }
                Ok(())
            })?;
        }
        Ok(json!({
            "chunks_checked": checked, "chunks_skipped": skipped, "corrupt": corrupt, "missing": missing, "affected_backups": affected,
        }))
    }
}

/// What verify found for one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    Sound,
    Missing,
    Corrupt,
}

impl Repository {
    /// Checks a chunk verify found damaged again, under the `gc` read lock (no sweep removes
    /// it meanwhile) and its stripe lock (the one uploads write under): if its row is still
    /// there and its file still damaged, moves the file to quarantine and marks the row bad.
    /// Returns what it found then, or `None` when an upload healed the chunk since (a sound copy
    /// must not be quarantined) or GC removed it.
    fn quarantine_if_damaged(&self, c: &ChunkId) -> Result<Option<Health>> {
        let _gc = self.gc_read();
        let _stripe = self.stripe(c);
        let Some(m) = self.catalog.chunk(c)? else {
            return Ok(None);
        };
        let health = self.chunk_health(c, &m)?;
        if health == Health::Sound {
            return Ok(None);
        }
        self.chunks.quarantine(c)?;
        let mut b = self.catalog.batch();
        b.put_chunk(
            c,
            ChunkMeta {
                flags: m.flags | ChunkMeta::BAD,
                ..m
            },
        );
        self.catalog.write(b)?;
        Ok(Some(health))
    }

    /// Reads, decompresses and re-hashes one chunk's file.
    fn chunk_health(&self, c: &ChunkId, m: &ChunkMeta) -> Result<Health> {
        match self.chunks.get(c) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Health::Missing),
            Err(e) => Err(e.into()),
            Ok(frame) => {
                let ok = zstd::bulk::decompress(&frame, m.raw_len as usize)
                    .is_ok_and(|d| d.len() as u64 == m.raw_len && ChunkId::of(&d) == *c);
                Ok(if ok { Health::Sound } else { Health::Corrupt })
            }
        }
    }
}
