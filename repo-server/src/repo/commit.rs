//! Commit: the one step that makes a backup durable and visible.
//!
//! Order of durable effects: index blobs are written as files (durable, content-addressed,
//! harmless if a crash leaves them unreferenced), then one RocksDB batch inserts the manifest,
//! its time-index keys and counters, marks the session committed and releases its pins and
//! record runs. Before that batch nothing of the backup is visible; after it, all of it is.
//! A repeated commit of a committed session returns the same backup id.

use std::collections::{BTreeMap, HashSet};

use schema::api::{BackupStats, CommitRequest, Manifest, ManifestDisk, SessionState};
use schema::{BackupId, ChunkId, ErrorCode, IndexRecord, SessionId, RECORD_LEN};
use serde_json::json;

use super::Repository;
use crate::auth::Caller;
use crate::catalog::{counter, SessionRecord};
use crate::error::{Error, Result};

/// What a commit did.
#[derive(Debug)]
pub struct Committed {
    /// `true` for 201, `false` for a repeat (200).
    pub created: bool,
    /// The backup.
    pub backup_id: BackupId,
}

/// Most missing chunks listed in a `MISSING_CHUNKS` error.
const MAX_LISTED: usize = 1000;

impl Repository {
    /// `POST /v1/sessions/{id}/commit`.
    ///
    /// # Errors
    /// 409 `COUNT_MISMATCH` / `CHECKSUM_MISMATCH` / `SESSION_STATE`, 422 `MISSING_CHUNKS`,
    /// 422 for disks that do not match the session, 404.
    pub fn commit(&self, caller: &Caller, s: &SessionId, req: CommitRequest) -> Result<Committed> {
        caller.require_writer()?;
        let _gc = self.gc_read();
        let lock = self.session_lock(s);
        let _g = lock.write().unwrap_or_else(|e| e.into_inner());
        let r = self.visible_session(caller, s)?;
        match (r.state, &r.backup_id) {
            (SessionState::Committed, Some(id)) => {
                return Ok(Committed {
                    created: false,
                    backup_id: id.clone(),
                })
            }
            (SessionState::Open, _) => {}
            (state, _) => {
                return Err(Error::new(
                    ErrorCode::SessionState,
                    format!("session {s} is {state:?}; it cannot be committed"),
                ))
            }
        }
        self.check_disks(&r, &req)?;
        let file_indexes = self.parse_file_indexes(s, &r.params.disks, &req.file_indexes)?;
        let base =
            match &r.params.base {
                Some(b) => Some(self.catalog.backup(b)?.ok_or_else(|| {
                    Error::new(ErrorCode::BaseNotFound, format!("base {b} is gone"))
                })?),
                None => None,
            };
        self.check_encryption(s, &req, base.as_ref())?;
        // Build each disk's full index: the base's (resized), then the records in order.
        let mut indexes = Vec::with_capacity(r.params.disks.len());
        for (i, d) in r.params.disks.iter().enumerate() {
            let blocks = d.blocks() as usize;
            let mut index = match base.as_ref().and_then(|m| {
                m.disks
                    .iter()
                    .find(|bd| bd.name == d.name)
                    .map(|bd| (m, bd))
            }) {
                Some((m, bd)) => self.index_of(m, bd)?,
                None => Vec::new(),
            };
            index.resize(blocks, ChunkId::HOLE);
            for (_, bytes) in self.catalog.entries(s, i as u16)? {
                for raw in bytes.chunks_exact(RECORD_LEN) {
                    let raw: &[u8; RECORD_LEN] = raw
                        .try_into()
                        .map_err(|_| Error::internal("reading records", "ragged"))?;
                    let rec = IndexRecord::decode(raw);
                    // Records were range-checked on arrival; a shrunk base is cut above.
                    if let Some(slot) = index.get_mut(rec.block as usize) {
                        *slot = rec.id;
                    }
                }
            }
            indexes.push(index);
        }
        // Every referenced chunk must be stored and sound.
        let mut referenced: Vec<ChunkId> = indexes
            .iter()
            .flatten()
            .filter(|c| !c.is_hole())
            .copied()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        referenced.sort_unstable();
        let metas = self.catalog.chunks(&referenced)?;
        let missing: Vec<&ChunkId> = referenced
            .iter()
            .zip(&metas)
            .filter(|(_, m)| !m.is_some_and(|m| !m.is_bad()))
            .map(|(c, _)| c)
            .collect();
        if !missing.is_empty() {
            return Err(Error::new(
                ErrorCode::MissingChunks,
                format!("{} referenced chunks are not stored; upload them and commit again", missing.len()),
            )
            .detail(json!({ "count": missing.len(), "chunks": missing.iter().take(MAX_LISTED).collect::<Vec<_>>() })));
        }
        // Durable index blobs first.
        let now = self.now();
        let mut disks = Vec::new();
        let mut indexes_written = Vec::new();
        let mut logical = 0u64;
        for (d, index) in r.params.disks.iter().zip(&indexes) {
            let mut blob = Vec::with_capacity(index.len() * 32);
            for c in index {
                blob.extend_from_slice(&c.0);
            }
            let h = ChunkId::of(&blob);
            self.indexes.put(&h, &blob)?;
            indexes_written.push(h);
            logical += d.size;
            disks.push(ManifestDisk {
                name: d.name.clone(),
                size: d.size,
                block_size: d.block_size,
                blocks: index.len() as u64,
                holes: index.iter().filter(|c| c.is_hole()).count() as u64,
                index_blake3: h.hex(),
            });
        }
        let pins = self.catalog.session_pins(s)?;
        let client = req.client_stats.clone().unwrap_or_default();
        let stats = BackupStats {
            logical_bytes: logical,
            read_bytes: client.read_bytes,
            skipped_bytes: client.skipped_bytes,
            new_chunks: pins.iter().filter(|(_, p)| p.new).count() as u64,
            reused_chunks: pins.iter().filter(|(_, p)| !p.new).count() as u64,
            sent_bytes: pins.iter().map(|(_, p)| p.sent).sum(),
            stored_bytes: pins.iter().map(|(_, p)| p.stored).sum(),
            duration_ms: (now - r.created_ms).max(0) as u64,
        };
        let backup_id = backup_id_for(s, now)?;
        let manifest = Manifest {
            id: backup_id.clone(),
            tenant: r.tenant.clone(),
            source: r.params.source.clone(),
            created: schema::time::rfc3339(now),
            base: r.params.base.clone(),
            labels: r.params.labels.clone(),
            disks,
            stats,
            metadata: req.metadata,
            session: s.to_string(),
            file_indexes: req.file_indexes,
            encrypted: req.encryption.is_some(),
            encryption: req.encryption,
        };
        let mut done = r.clone();
        done.state = SessionState::Committed;
        done.backup_id = Some(backup_id.clone());
        done.last_active_ms = now;
        // The manifest beside the data before the catalog names the backup: a catalog rebuilt
        // from the store (`rescan`) finds every acknowledged backup. A crash in between leaves a
        // manifest of a complete backup that was never acknowledged; rescan takes it in.
        let json = serde_json::to_vec(&manifest)
            .map_err(|e| Error::internal("encoding the manifest", e))?;
        self.manifests
            .put_manifest(&manifest.id, &json)
            .map_err(|e| Error::storage("writing the manifest", e))?;
        let mut b = self.catalog.batch();
        for d in &indexes_written {
            // A running GC keeps the index blobs of backups committed after its snapshot.
            self.mark_live(&mut b, d);
        }
        b.put_backup(&manifest, now)?;
        Self::put_file_indexes(&mut b, &manifest, now, &file_indexes)?;
        b.add(counter::BACKUPS, 1);
        b.add(counter::LOGICAL_BYTES, logical as i64);
        b.put_session(&done)?;
        b.delete_session_data(s);
        crate::fail::hit("commit.before_batch");
        self.catalog.write(b)?;
        crate::fail::hit("commit.after_batch");
        self.forget_session(s);
        self.session_closed();
        tracing::info!(session = %s, backup = %backup_id, source = %manifest.source, "backup committed");
        Ok(Committed {
            created: true,
            backup_id,
        })
    }

    /// The encryption extension of a commit: an encrypted backup has no plaintext file index,
    /// builds only on a backup of the same key (and a plain one only on a plain one), and its
    /// sealed file index is made of sealed chunks pinned by the session holding `bytes` bytes.
    fn check_encryption(
        &self,
        s: &SessionId,
        req: &CommitRequest,
        base: Option<&Manifest>,
    ) -> Result<()> {
        let ours = req.encryption.as_ref().map(|e| e.key_id.as_str());
        if let Some(b) = base {
            if b.key_id() != ours {
                let name = |k: Option<&str>| k.map_or("no key".to_string(), |k| format!("key {k}"));
                return Err(Error::new(
                    ErrorCode::InvalidBody,
                    format!(
                        "base {} is encrypted with {}, this backup with {}: an incremental keeps \
                         its base's encryption (start a new chain with a full backup)",
                        b.id,
                        name(b.key_id()),
                        name(ours)
                    ),
                ));
            }
        }
        let Some(e) = &req.encryption else {
            return Ok(());
        };
        let hex_id = e.key_id.len() == 16 && e.key_id.bytes().all(|c| c.is_ascii_hexdigit());
        if !hex_id {
            return Err(Error::new(
                ErrorCode::InvalidBody,
                format!("key id {:?} is not 16 hex digits", e.key_id),
            ));
        }
        if !req.file_indexes.is_empty() {
            return Err(Error::new(
                ErrorCode::InvalidBody,
                "an encrypted backup names no plaintext file_indexes (its file index is sealed)",
            ));
        }
        let Some(blob) = &e.file_index else {
            return Ok(());
        };
        let pinned = self.catalog.pins(s, &blob.chunks)?;
        let metas = self.catalog.chunks(&blob.chunks)?;
        let mut total = 0u64;
        for ((c, p), m) in blob.chunks.iter().zip(pinned).zip(metas) {
            match m.filter(|m| p.is_some() && m.sealed.is_some() && !m.is_bad()) {
                Some(m) => total += m.raw_len,
                None => {
                    return Err(Error::new(
                        ErrorCode::UnknownChunk,
                        format!(
                            "sealed file index chunk {c} is not a sealed chunk of this session"
                        ),
                    ))
                }
            }
        }
        if total != blob.bytes {
            return Err(Error::new(
                ErrorCode::LengthMismatch,
                format!(
                    "the sealed file index's chunks hold {total} bytes, the commit says {}",
                    blob.bytes
                ),
            ));
        }
        Ok(())
    }

    fn check_disks(&self, r: &SessionRecord, req: &CommitRequest) -> Result<()> {
        let names: BTreeMap<String, usize> = r
            .params
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| (d.name.to_string(), i))
            .collect();
        if let Some(extra) = req.disks.keys().find(|k| !names.contains_key(*k)) {
            return Err(Error::new(
                ErrorCode::InvalidBody,
                format!("disk {extra} is not part of session {}", r.id),
            ));
        }
        for (name, &i) in &names {
            let held = r.entries[i];
            let Some(claim) = req.disks.get(name) else {
                return Err(Error::new(
                    ErrorCode::InvalidBody,
                    format!("commit body lacks disk {name}"),
                ));
            };
            if claim.entries != held {
                return Err(Error::new(
                    ErrorCode::CountMismatch,
                    format!(
                        "disk {name}: the server holds {held} records, the client says {}",
                        claim.entries
                    ),
                )
                .detail(json!({ "disk": name, "server": held, "client": claim.entries })));
            }
            let mut h = blake3::Hasher::new();
            for (_, bytes) in self.catalog.entries(&r.id, i as u16)? {
                h.update(&bytes);
            }
            let ours = h.finalize().to_hex().to_string();
            if ours != claim.records_blake3 {
                return Err(Error::new(
                    ErrorCode::ChecksumMismatch,
                    format!("disk {name}: records checksum differs"),
                )
                .detail(json!({ "disk": name, "server": ours, "client": claim.records_blake3 })));
            }
        }
        Ok(())
    }
}

/// A backup id: commit time (sortable, readable) and a tag derived from the session.
fn backup_id_for(s: &SessionId, now: i64) -> Result<BackupId> {
    let t = schema::time::rfc3339(now);
    // 2026-11-25T01:13:05.123Z -> 20261125T011305Z
    let compact: String = t[..19]
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let tag = &blake3::hash(&s.0).to_hex()[..8];
    format!("{compact}Z-{tag}")
        .parse()
        .map_err(|e| Error::internal("naming a backup", e))
}
