//! Sessions: one backup of one source, from creation to commit or abort, plus find-missing and
//! positional index records.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use schema::api::{CreateSession, DiskProgress, SessionState, SessionStatus};
use schema::{ChunkId, DiskName, ErrorCode, IndexRecord, SessionId, BLOCK_SIZES, RECORD_LEN};
use serde_json::json;

use super::Repository;
use crate::auth::Caller;
use crate::catalog::{Pin, SessionRecord};
use crate::error::{Error, Result};

/// What creating a session did.
#[derive(Debug)]
pub struct Created {
    /// `true` for 201, `false` for an identical repeat (200).
    pub created: bool,
    /// When it expires if idle, Unix ms.
    pub expires_ms: i64,
}

impl Repository {
    /// Loads a session the caller may see, or 404.
    pub(crate) fn visible_session(&self, caller: &Caller, s: &SessionId) -> Result<SessionRecord> {
        match self.catalog.session(s)? {
            Some(r) if caller.sees(&r.tenant) => Ok(r),
            _ => Err(Error::not_found(format!("session {s}"))),
        }
    }

    /// Loads an open session the caller may write, or 404 / 409 `SESSION_STATE`.
    pub(crate) fn open_session(&self, caller: &Caller, s: &SessionId) -> Result<SessionRecord> {
        caller.require_writer()?;
        let r = self.visible_session(caller, s)?;
        if r.state != SessionState::Open {
            return Err(Error::new(
                ErrorCode::SessionState,
                format!("session {s} is {:?}, not open", r.state),
            )
            .detail(json!({ "state": r.state })));
        }
        Ok(r)
    }

    fn expires_ms(&self, r: &SessionRecord) -> i64 {
        let last = self.last_touch(&r.id).unwrap_or(0).max(r.last_active_ms);
        last.saturating_add(self.settings.session_ttl_ms)
    }

    /// `PUT /v1/sessions/{id}`.
    ///
    /// # Errors
    /// 403 for readers, 422 for invalid parameters, 404 `BASE_NOT_FOUND`, 409 `SESSION_CONFLICT`.
    pub fn create_session(
        &self,
        caller: &Caller,
        s: SessionId,
        params: CreateSession,
    ) -> Result<Created> {
        caller.require_writer()?;
        validate_params(&params)?;
        let lock = self.session_lock(&s);
        let _g = lock.write().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = self.catalog.session(&s)? {
            if existing.tenant == caller.tenant && existing.params == params {
                return Ok(Created {
                    created: false,
                    expires_ms: self.expires_ms(&existing),
                });
            }
            return Err(Error::new(
                ErrorCode::SessionConflict,
                format!("session {s} already exists with other parameters"),
            ));
        }
        if let Some(base) = &params.base {
            let m = match self.catalog.backup(base)? {
                Some(m) if m.tenant == caller.tenant => m,
                _ => {
                    return Err(Error::new(
                        ErrorCode::BaseNotFound,
                        format!("base backup {base} not found"),
                    ))
                }
            };
            for d in &params.disks {
                if let Some(bd) = m.disks.iter().find(|bd| bd.name == d.name) {
                    if bd.block_size != d.block_size {
                        return Err(Error::new(
                            ErrorCode::InvalidBody,
                            format!(
                                "disk {}: block_size {} differs from the base's {}",
                                d.name, d.block_size, bd.block_size
                            ),
                        ));
                    }
                }
            }
        }
        let now = self.now();
        let rec = SessionRecord {
            id: s,
            tenant: caller.tenant.clone(),
            entries: vec![0; params.disks.len()],
            params,
            state: SessionState::Open,
            created_ms: now,
            last_active_ms: now,
            backup_id: None,
        };
        let mut b = self.catalog.batch();
        b.put_session(&rec)?;
        self.catalog.write(b)?;
        self.open_sessions.fetch_add(1, Ordering::Relaxed);
        self.metrics.open_sessions.fetch_add(1, Ordering::Relaxed);
        Ok(Created {
            created: true,
            expires_ms: now + self.settings.session_ttl_ms,
        })
    }

    /// `GET /v1/sessions/{id}`.
    ///
    /// # Errors
    /// 404.
    pub fn session_status(&self, caller: &Caller, s: &SessionId) -> Result<SessionStatus> {
        let r = self.visible_session(caller, s)?;
        let mut disks = std::collections::BTreeMap::new();
        for (i, d) in r.params.disks.iter().enumerate() {
            let mut h = blake3::Hasher::new();
            for (_, bytes) in self.catalog.entries(s, i as u16)? {
                h.update(&bytes);
            }
            disks.insert(
                d.name.to_string(),
                DiskProgress {
                    entries: r.entries[i],
                    records_blake3: h.finalize().to_hex().to_string(),
                },
            );
        }
        let pins = self.catalog.session_pins(s)?;
        Ok(SessionStatus {
            id: s.to_string(),
            state: r.state,
            source: r.params.source.clone(),
            base: r.params.base.clone(),
            disks,
            chunks_pinned: pins.len() as u64,
            bytes_received: pins.iter().map(|(_, p)| p.sent).sum(),
            backup_id: r.backup_id.clone(),
            expires: schema::time::rfc3339(self.expires_ms(&r)),
        })
    }

    /// `DELETE /v1/sessions/{id}`: aborts and releases pins; repeatable.
    ///
    /// # Errors
    /// 404, 409 `SESSION_STATE` when committed.
    pub fn delete_session(&self, caller: &Caller, s: &SessionId) -> Result<()> {
        caller.require_writer()?;
        let lock = self.session_lock(s);
        let _g = lock.write().unwrap_or_else(|e| e.into_inner());
        let r = self.visible_session(caller, s)?;
        match r.state {
            SessionState::Committed => Err(Error::new(
                ErrorCode::SessionState,
                format!(
                    "session {s} is committed as backup {}; delete the backup instead",
                    r.backup_id.map(|b| b.to_string()).unwrap_or_default()
                ),
            )),
            SessionState::Aborted => Ok(()),
            SessionState::Open => self.abort(r),
        }
    }

    fn abort(&self, mut r: SessionRecord) -> Result<()> {
        r.state = SessionState::Aborted;
        let mut b = self.catalog.batch();
        b.put_session(&r)?;
        b.delete_session_data(&r.id);
        self.catalog.write(b)?;
        self.forget_session(&r.id);
        self.session_closed();
        Ok(())
    }

    /// Aborts open sessions idle for longer than the TTL. Returns how many.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn expire_sessions(&self) -> Result<usize> {
        let now = self.now();
        let mut n = 0;
        for r in self.catalog.sessions()? {
            if r.state != SessionState::Open || self.expires_ms(&r) > now {
                continue;
            }
            let lock = self.session_lock(&r.id);
            let _g = lock.write().unwrap_or_else(|e| e.into_inner());
            // Re-read under the lock: it may have been used or committed meanwhile.
            if let Some(r) = self.catalog.session(&r.id)? {
                if r.state == SessionState::Open && self.expires_ms(&r) <= now {
                    tracing::info!(session = %r.id, source = %r.params.source, "session expired after idling");
                    self.abort(r)?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// `POST /v1/sessions/{id}/find-missing`: returns the ids the caller must upload and pins
    /// the rest. Only chunks the caller's tenant already owns count as present, so the answer
    /// reveals nothing about other tenants' data.
    ///
    /// # Errors
    /// 413 over the limit, 404, 409 `SESSION_STATE`.
    pub fn find_missing(
        &self,
        caller: &Caller,
        s: &SessionId,
        ids: Vec<ChunkId>,
    ) -> Result<Vec<ChunkId>> {
        if ids.len() as u64 > self.settings.max_find_missing {
            return Err(Error::new(
                ErrorCode::TooLarge,
                format!(
                    "{} digests; at most {} per request",
                    ids.len(),
                    self.settings.max_find_missing
                ),
            ));
        }
        let _gc = self.gc_read();
        let lock = self.session_lock(s);
        let _g = lock.read().unwrap_or_else(|e| e.into_inner());
        let r = self.open_session(caller, s)?;
        self.touch(s);
        let mut seen = HashSet::with_capacity(ids.len());
        let ids: Vec<ChunkId> = ids
            .into_iter()
            .filter(|c| !c.is_hole() && seen.insert(*c))
            .collect();
        let metas = self.catalog.chunks(&ids)?;
        let owned = self.catalog.owned(&r.tenant, &ids)?;
        let pins = self.catalog.pins(s, &ids)?;
        let mut missing = Vec::new();
        let mut b = self.catalog.batch();
        for (i, id) in ids.iter().enumerate() {
            match metas[i] {
                // The pin alone protects it from GC; the chunk's row is not rewritten (a rewrite
                // could undo a bad mark verify sets meanwhile).
                Some(m) if owned[i] && !m.is_bad() => {
                    if pins[i].is_none() {
                        b.put_pin(s, id, Pin::default());
                        self.mark_live(&mut b, id);
                    }
                }
                _ => missing.push(*id),
            }
        }
        self.catalog.write(b)?;
        Ok(missing)
    }

    /// Sorted ids of the session's base backup (all disks), cached per session.
    pub(crate) fn base_set(&self, r: &SessionRecord) -> Result<Arc<Vec<ChunkId>>> {
        if let Some(v) = self
            .base_sets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&r.id)
        {
            return Ok(v.clone());
        }
        let mut ids = Vec::new();
        if let Some(base) = &r.params.base {
            let m = self.catalog.backup(base)?.ok_or_else(|| {
                Error::new(ErrorCode::BaseNotFound, format!("base {base} is gone"))
            })?;
            for d in &m.disks {
                ids.extend(self.index_of(&m, d)?.into_iter().filter(|c| !c.is_hole()));
            }
        }
        ids.sort_unstable();
        ids.dedup();
        let v = Arc::new(ids);
        self.base_sets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(r.id, v.clone());
        Ok(v)
    }

    /// `PUT /v1/sessions/{id}/disks/{name}/entries?start=N`. Returns the records now held.
    ///
    /// A body whose first records repeat what the server holds from `start` on is an identical
    /// replay: that part is accepted again, and any records after it are appended.
    ///
    /// # Errors
    /// 400 for a ragged body, 409 `POSITION_CONFLICT` (with `Index-Entries`), 422
    /// `BLOCK_OUT_OF_RANGE` / `UNKNOWN_CHUNK`, 404, 409 `SESSION_STATE`.
    pub fn append_entries(
        &self,
        caller: &Caller,
        s: &SessionId,
        disk: &DiskName,
        start: u64,
        body: &[u8],
    ) -> Result<u64> {
        let records = IndexRecord::decode_all(body)
            .map_err(|e| Error::new(ErrorCode::BadBody, e.to_string()))?;
        let lock = self.session_lock(s);
        let _g = lock.write().unwrap_or_else(|e| e.into_inner());
        let mut r = self.open_session(caller, s)?;
        let di = r
            .params
            .disks
            .iter()
            .position(|d| &d.name == disk)
            .ok_or_else(|| Error::not_found(format!("disk {disk} in session {s}")))?;
        let held = r.entries[di];
        let conflict = |why: String| {
            Error::new(ErrorCode::PositionConflict, why)
                .detail(json!({ "entries": held }))
                .header("Index-Entries", held)
        };
        if start > held {
            return Err(conflict(format!(
                "start={start} but the server holds {held} records for disk {disk}"
            )));
        }
        let overlap = (held - start).min(records.len() as u64) as usize;
        if overlap > 0 {
            let stored = self.stored_records(s, di as u16, start, start + overlap as u64)?;
            if stored != body[..overlap * RECORD_LEN] {
                return Err(conflict(format!(
                    "records from {start} differ from those the server holds ({held}); resend from {held}"
                )));
            }
        }
        let new = &records[overlap..];
        self.touch(s);
        if new.is_empty() {
            return Ok(held);
        }
        let spec = &r.params.disks[di];
        let blocks = spec.blocks();
        if let Some(bad) = new.iter().find(|rec| rec.block >= blocks) {
            return Err(Error::new(
                ErrorCode::BlockOutOfRange,
                format!(
                    "disk {disk} has {blocks} blocks; record names block {}",
                    bad.block
                ),
            )
            .detail(json!({ "block": bad.block, "blocks": blocks })));
        }
        let ids: Vec<ChunkId> = new.iter().map(|r| r.id).filter(|c| !c.is_hole()).collect();
        let pins = self.catalog.pins(s, &ids)?;
        let mut base: Option<Arc<Vec<ChunkId>>> = None;
        for (id, pin) in ids.iter().zip(pins) {
            if pin.is_some() {
                continue;
            }
            if base.is_none() {
                base = Some(self.base_set(&r)?);
            }
            if base.as_ref().is_some_and(|b| b.binary_search(id).is_err()) {
                return Err(Error::new(
                    ErrorCode::UnknownChunk,
                    format!("chunk {id} is neither pinned to session {s} nor in its base; upload it or find-missing it first"),
                )
                .detail(json!({ "chunk": id })));
            }
        }
        // Every referenced chunk must decode to exactly its block's length.
        let metas = self.catalog.chunks(&ids)?;
        let bs = u64::from(spec.block_size);
        for (rec, meta) in new.iter().filter(|r| !r.id.is_hole()).zip(&metas) {
            let want = spec.size.saturating_sub(rec.block * bs).min(bs);
            match meta {
                Some(m) if m.raw_len == want => {}
                Some(m) => {
                    return Err(Error::new(
                        ErrorCode::LengthMismatch,
                        format!("block {} of disk {disk} is {want} bytes but chunk {} is {}", rec.block, rec.id, m.raw_len),
                    )
                    .detail(json!({ "block": rec.block, "chunk": rec.id, "block_length": want, "chunk_length": m.raw_len })))
                }
                None => {
                    return Err(Error::new(ErrorCode::UnknownChunk, format!("chunk {} is not stored", rec.id))
                        .detail(json!({ "chunk": rec.id })))
                }
            }
        }
        let total = held + new.len() as u64;
        r.entries[di] = total;
        r.last_active_ms = self.now();
        let mut b = self.catalog.batch();
        b.put_entries(s, di as u16, held, &body[overlap * RECORD_LEN..]);
        b.put_session(&r)?;
        self.catalog.write(b)?;
        Ok(total)
    }

    /// Record bytes `[from, to)` of a disk of a session.
    pub(crate) fn stored_records(
        &self,
        s: &SessionId,
        disk: u16,
        from: u64,
        to: u64,
    ) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(((to - from) as usize) * RECORD_LEN);
        for (start, bytes) in self.catalog.entries(s, disk)? {
            let end = start + (bytes.len() / RECORD_LEN) as u64;
            if end <= from || start >= to {
                continue;
            }
            let a = from.max(start) - start;
            let z = to.min(end) - start;
            out.extend_from_slice(&bytes[a as usize * RECORD_LEN..z as usize * RECORD_LEN]);
        }
        Ok(out)
    }
}

/// Rules on session parameters that serde cannot express.
fn validate_params(p: &CreateSession) -> Result<()> {
    let bad = |m: String| Err(Error::new(ErrorCode::InvalidBody, m));
    if p.source.is_empty() || p.source.len() > 256 || p.source.chars().any(char::is_control) {
        return bad("source must be 1-256 characters without control characters".into());
    }
    if p.disks.is_empty() || p.disks.len() > 256 {
        return bad("a session needs 1 to 256 disks".into());
    }
    let mut names = HashSet::new();
    for d in &p.disks {
        if !names.insert(&d.name) {
            return bad(format!("disk name {} appears twice", d.name));
        }
        if !BLOCK_SIZES.contains(&d.block_size) {
            return bad(format!(
                "disk {}: block_size {} is not one of {BLOCK_SIZES:?}",
                d.name, d.block_size
            ));
        }
        if d.size > (1 << 50) {
            return bad(format!("disk {}: size {} is over 1 PiB", d.name, d.size));
        }
    }
    if p.labels.len() > 64
        || p.labels
            .iter()
            .any(|(k, v)| k.len() > 128 || v.len() > 1024)
    {
        return bad("at most 64 labels, keys up to 128 and values up to 1024 bytes".into());
    }
    Ok(())
}
