//! Background jobs: GC (mark and sweep) and verify.
//!
//! GC holds the repository's `gc` lock for writing from the start of marking to the end of the
//! sweep, so no chunk can be found present, uploaded, pinned or committed in between: the mark
//! set (committed backups' indexes and open sessions' pins) is exact for the sweep. It also never
//! removes a chunk touched after the oldest open session began, minus the configured margin.
//! The mark set is held in memory (32 bytes per referenced chunk).
//!
//! Verify re-reads every chunk, decompresses and re-hashes it; a corrupt or missing chunk is
//! marked bad (find-missing then reports it missing, so the next backup re-sends and heals it),
//! its file moved to `quarantine/`, and the report names every backup that references it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use schema::api::SessionState;
use schema::ChunkId;
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

/// Progress of a running job, shared with its thread.
#[derive(Debug, Default)]
struct Progress {
    done: AtomicU64,
    total: AtomicU64,
}

impl Repository {
    /// `POST /v1/admin/gc`: starts GC in the background and returns the job id.
    ///
    /// # Errors
    /// 403 for non-admins.
    pub fn start_gc(self: &Arc<Self>, caller: &Caller) -> Result<String> {
        caller.require_admin()?;
        Ok(self.start_job("gc", |repo, p| repo.gc(p)))
    }

    /// `POST /v1/admin/verify`: starts verify in the background and returns the job id.
    ///
    /// # Errors
    /// 403 for non-admins.
    pub fn start_verify(self: &Arc<Self>, caller: &Caller) -> Result<String> {
        caller.require_admin()?;
        Ok(self.start_job("verify", |repo, p| repo.verify(p)))
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
        work: fn(&Repository, &Progress) -> Result<Value>,
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
                        j["progress"] = json!({ "done": p2.done.load(Ordering::Relaxed), "total": p2.total.load(Ordering::Relaxed) });
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
                "progress": { "done": progress.done.load(Ordering::Relaxed), "total": progress.total.load(Ordering::Relaxed) },
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

    /// Mark and sweep. Blocks uploads for its duration.
    fn gc(&self, p: &Progress) -> Result<Value> {
        let _w = self.gc.write().unwrap_or_else(|e| e.into_inner());
        let now = self.now();
        let mut marked: HashSet<ChunkId> = HashSet::new();
        let mut live_indexes: HashSet<String> = HashSet::new();
        let mut backups = 0u64;
        self.catalog.for_each_backup(|m| {
            backups += 1;
            for d in &m.disks {
                live_indexes.insert(d.index_blake3.clone());
                marked.extend(self.index_of(&m, d)?.into_iter().filter(|c| !c.is_hole()));
            }
            Ok(())
        })?;
        self.catalog.for_each_pin(|_, c| {
            marked.insert(c);
        })?;
        let oldest_open = self
            .catalog
            .sessions()?
            .iter()
            .filter(|s| s.state == SessionState::Open)
            .map(|s| s.created_ms)
            .min()
            .unwrap_or(now);
        let cutoff = oldest_open.min(now) - self.settings.gc_margin_ms;
        let (mut removed, mut freed, mut kept, mut young) = (0u64, 0u64, 0u64, 0u64);
        let mut gone: HashSet<ChunkId> = HashSet::new();
        let mut b = self.catalog.batch();
        self.catalog.for_each_chunk(|c, m| {
            p.done.fetch_add(1, Ordering::Relaxed);
            if marked.contains(&c) {
                kept += 1;
            } else if m.touched_ms >= cutoff {
                young += 1;
            } else {
                self.chunks.delete(&c)?;
                b.delete_chunk(&c);
                removed += 1;
                freed += m.stored_len;
                gone.insert(c);
            }
            Ok(())
        })?;
        b.add(counter::CHUNKS, -(removed as i64));
        b.add(counter::STORED_BYTES, -(freed as i64));
        self.catalog.for_each_owner(|k, c| {
            if gone.contains(&c) {
                b.delete_owner_key(k);
            }
        })?;
        self.catalog.write(b)?;
        let mut indexes_removed = 0u64;
        for h in self.indexes.list()? {
            if !live_indexes.contains(&h.hex()) {
                self.indexes.delete(&h)?;
                indexes_removed += 1;
            }
        }
        Ok(json!({
            "backups": backups, "chunks_marked": marked.len(), "chunks_kept": kept,
            "chunks_too_young": young, "chunks_removed": removed, "bytes_freed": freed,
            "indexes_removed": indexes_removed,
        }))
    }

    /// Re-reads and re-hashes every chunk.
    fn verify(&self, p: &Progress) -> Result<Value> {
        let _r = self.gc_read();
        let mut all = Vec::new();
        self.catalog.for_each_chunk(|c, m| {
            all.push((c, m));
            Ok(())
        })?;
        p.total.store(all.len() as u64, Ordering::Relaxed);
        let (mut corrupt, mut missing) = (Vec::new(), Vec::new());
        for (c, m) in &all {
            p.done.fetch_add(1, Ordering::Relaxed);
            match self.chunk_health(c, m)? {
                Health::Sound => {}
                Health::Missing => missing.push(*c),
                Health::Corrupt => corrupt.push(*c),
            }
        }
        let mut bad: HashSet<ChunkId> = corrupt.iter().chain(&missing).copied().collect();
        if !bad.is_empty() {
            let q = self.data.join("quarantine");
            std::fs::create_dir_all(&q)?;
            // Under the chunk's stripe lock (the one uploads write under), check again: an upload
            // may have healed it since, and a sound copy must not be quarantined.
            let mut healed = HashSet::new();
            for c in &bad {
                let _stripe = self.stripe(c);
                match self.catalog.chunk(c)? {
                    Some(m) if self.chunk_health(c, &m)? != Health::Sound => {
                        let _ = std::fs::rename(self.chunks.path(c), q.join(c.hex()));
                        let mut b = self.catalog.batch();
                        b.put_chunk(
                            c,
                            ChunkMeta {
                                flags: m.flags | ChunkMeta::BAD,
                                ..m
                            },
                        );
                        self.catalog.write(b)?;
                    }
                    _ => {
                        healed.insert(*c);
                    }
                }
            }
            bad.retain(|c| !healed.contains(c));
            corrupt.retain(|c| !healed.contains(c));
            missing.retain(|c| !healed.contains(c));
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
            "chunks_checked": all.len(), "corrupt": corrupt, "missing": missing, "affected_backups": affected,
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
