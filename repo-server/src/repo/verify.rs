//! Verify: re-read every chunk (or a sample, or those not verified lately), decompress and
//! re-hash it; a sealed chunk (which the repository cannot open) is re-hashed as stored and
//! compared with the stored-bytes digest its upload carried, and its frame header re-checked.
//!
//! Reading and hashing take no lock (paced by `[store] verify_rate` when set; a chunk GC
//! removes meanwhile just reads as missing). A corrupt or missing chunk is checked again under
//! the `gc` read lock and its stripe lock, then marked bad (find-missing then reports it
//! missing, so the next backup re-sends and heals it), its file moved to `quarantine/`, and the
//! report names every backup that references it.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use schema::api::VerifyRequest;
use schema::{ChunkId, ErrorCode};
use serde_json::{json, Value};

use super::jobs::Progress;
use super::{now_ms, Repository};
use crate::auth::Caller;
use crate::catalog::{counter, ChunkMeta, Page};
use crate::error::{Error, Result};

/// Chunk rows read per slice (and per hold of the `gc` read lock when writing their results).
const VERIFY_SLICE: usize = 4_096;

/// What verify found for one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    Sound,
    Missing,
    Corrupt,
}

/// Which chunks one verify run reads.
#[derive(Debug)]
struct Selection {
    /// Seed of the sample (fixed per run).
    seed: [u8; 8],
    /// Chunks whose seeded hash is at most this are sampled; `None`: all.
    threshold: Option<u64>,
    /// Chunks verified at or after this time (Unix ms) are skipped; `None`: none are.
    fresh_after: Option<i64>,
}

impl Selection {
    fn sampled(&self, c: &ChunkId) -> bool {
        self.threshold.is_none_or(|t| {
            let mut h = blake3::Hasher::new();
            h.update(&self.seed);
            h.update(&c.0);
            let x = h.finalize();
            u64::from_le_bytes(x.as_bytes()[..8].try_into().unwrap_or([0; 8])) <= t
        })
    }

    fn due(&self, verified: Option<i64>) -> bool {
        match (self.fresh_after, verified) {
            (Some(limit), Some(t)) => t < limit,
            _ => true,
        }
    }
}

/// Running totals of one verify run.
#[derive(Debug, Default)]
struct Findings {
    checked: u64,
    skipped: u64,
    corrupt: Vec<ChunkId>,
    missing: Vec<ChunkId>,
}

impl Repository {
    /// `POST /v1/admin/verify`: starts verify in the background and returns the job id.
    ///
    /// # Errors
    /// 403 for non-admins; 422 for a fraction outside (0, 1] or a negative age.
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
        let sel = Selection {
            seed: now_ms().to_le_bytes(),
            threshold: req.fraction.map(|f| (f * u64::MAX as f64) as u64),
            fresh_after: req
                .not_verified_days
                .map(|d| now - (d * 86_400_000.0) as i64),
        };
        let mut pace = self.settings.verify_rate.map(crate::rate::Pacer::new);
        let mut found = Findings::default();
        for page in self.catalog.chunk_pages(VERIFY_SLICE) {
            let page = page?;
            p.done.fetch_add(page.len() as u64, Ordering::Relaxed);
            self.verify_page(&page, &sel, now, &mut pace, &mut found)?;
        }
        let Findings {
            checked,
            skipped,
            corrupt,
            missing,
        } = found;
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

    /// Verifies the selected chunks of one page and writes what it found.
    fn verify_page(
        &self,
        page: &Page<(ChunkId, ChunkMeta)>,
        sel: &Selection,
        now: i64,
        pace: &mut Option<crate::rate::Pacer>,
        found: &mut Findings,
    ) -> Result<()> {
        let ids: Vec<ChunkId> = page.rows.iter().map(|(c, _)| *c).collect();
        let verified = match sel.fresh_after {
            Some(_) => self.catalog.verified(&ids)?,
            None => vec![None; ids.len()],
        };
        let (mut sound, mut damaged) = (Vec::new(), Vec::new());
        for ((c, m), when) in page.rows.iter().zip(verified) {
            if !(sel.sampled(c) && sel.due(when)) {
                found.skipped += 1;
                continue;
            }
            found.checked += 1;
            if let Some(pace) = pace {
                pace.take(m.stored_len);
            }
            match self.chunk_health(c, m)? {
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
                Some(Health::Missing) => found.missing.push(c),
                Some(Health::Corrupt) => found.corrupt.push(c),
                Some(Health::Sound) | None => {}
            }
        }
        Ok(())
    }

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

    /// Reads, decompresses and re-hashes one chunk's file (a sealed one: re-hashes it as stored).
    fn chunk_health(&self, c: &ChunkId, m: &ChunkMeta) -> Result<Health> {
        match self.chunks.get(c) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Health::Missing),
            Err(e) => Err(e.into()),
            Ok(frame) if m.sealed.is_some() => {
                let ok = m.sealed == Some(schema::sealed::stored_digest(&frame))
                    && schema::sealed::Header::parse(&frame)
                        .is_ok_and(|h| h.chunk == *c && h.raw_len == m.raw_len);
                Ok(if ok { Health::Sound } else { Health::Corrupt })
            }
            Ok(frame) => {
                let ok = zstd::bulk::decompress(&frame, m.raw_len as usize)
                    .is_ok_and(|d| d.len() as u64 == m.raw_len && ChunkId::of(&d) == *c);
                Ok(if ok { Health::Sound } else { Health::Corrupt })
            }
        }
    }
}
