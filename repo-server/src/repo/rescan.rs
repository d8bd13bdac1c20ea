//! Rebuilding a lost catalog from the store alone: every manifest the store holds becomes a
//! backup again, with its chunk rows (each chunk read back and re-hashed), owner rows, counters
//! and guest file catalog. This is how a new gateway takes over a share whose old gateway (and
//! its local catalog) is gone.

use std::collections::BTreeSet;

use schema::api::Manifest;
use schema::ChunkId;
use serde::Serialize;

use super::Repository;
use crate::catalog::{counter, ChunkMeta};
use crate::error::{Error, Result};

/// What a rescan found and did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RescanReport {
    /// Manifests in the store.
    pub manifests: u64,
    /// Backups added to the catalog.
    pub adopted: u64,
    /// Backups the catalog already had.
    pub already_known: u64,
    /// Chunk rows added (each chunk read back and found sound).
    pub chunks: u64,
    /// Their stored bytes.
    pub stored_bytes: u64,
    /// Backups left out, with the reason (a missing or damaged chunk, an unreadable manifest).
    pub skipped: Vec<String>,
}

impl Repository {
    /// Adds every backup whose manifest is in the store but not in the catalog. Safe to repeat;
    /// meant for a stopped server (it holds GC off while it runs).
    ///
    /// # Errors
    /// Store or catalog errors (a single bad backup is skipped and reported instead).
    pub fn rescan(&self, progress: &mut dyn FnMut(&RescanReport)) -> Result<RescanReport> {
        let _gc = self.gc.write().unwrap_or_else(|e| e.into_inner());
        let mut report = RescanReport::default();
        let mut ids = crate::store::list_all(|after, n| self.manifests.list_manifests(after, n))
            .map_err(|e| Error::storage("listing manifests", e))?;
        ids.sort();
        report.manifests = ids.len() as u64;
        for id in ids {
            if self.catalog.backup(&id)?.is_some() {
                report.already_known += 1;
                continue;
            }
            match self.adopt(&id, &mut report) {
                Ok(()) => report.adopted += 1,
                Err(e) => report.skipped.push(format!("{id}: {}", e.message)),
            }
            progress(&report);
        }
        Ok(report)
    }

    /// Brings one backup from its stored manifest into the catalog.
    fn adopt(&self, id: &schema::BackupId, report: &mut RescanReport) -> Result<()> {
        let json = self
            .manifests
            .get_manifest(id)
            .map_err(|e| Error::storage("reading a manifest", e))?;
        let m: Manifest =
            serde_json::from_slice(&json).map_err(|e| Error::internal("decoding a manifest", e))?;
        if &m.id != id {
            return Err(Error::internal(
                "reading a manifest",
                format!("the file of {id} holds backup {}", m.id),
            ));
        }
        let mut chunks: BTreeSet<ChunkId> = BTreeSet::new();
        for d in &m.disks {
            self.for_each_index_id(&m, d, |c| {
                if !c.is_hole() {
                    chunks.insert(c);
                }
                Ok(())
            })?;
        }
        chunks.extend(m.extra_chunks().copied());
        // Chunk rows first (a crash here leaves rows that GC collects as garbage).
        let now = self.now();
        let mut b = self.catalog.batch();
        // Chunks new to the catalog, and the change of the stored-bytes counter.
        let (mut added, mut bytes) = (0u64, 0i64);
        for c in &chunks {
            let known = self.catalog.chunk(c)?;
            if known.is_some_and(|m| !m.is_bad()) {
                b.put_owner(&m.tenant, c);
                continue;
            }
            let frame = self
                .chunks
                .get(c)
                .map_err(|e| Error::storage(&format!("reading chunk {c}"), e))?;
            // A sealed frame cannot be opened here: its header must name it, and the digest of
            // its bytes now becomes the one verify checks.
            if schema::sealed::is_sealed(&frame) {
                let h = schema::sealed::Header::parse(&frame)
                    .ok()
                    .filter(|h| h.chunk == *c)
                    .ok_or_else(|| {
                        Error::internal(
                            "reading chunks",
                            format!("sealed chunk {c} does not name itself"),
                        )
                    })?;
                b.put_chunk(
                    c,
                    ChunkMeta {
                        raw_len: h.raw_len,
                        stored_len: frame.len() as u64,
                        touched_ms: now,
                        flags: 0,
                        sealed: Some(schema::sealed::stored_digest(&frame)),
                    },
                );
                b.put_owner(&m.tenant, c);
                match known {
                    Some(old) => bytes += frame.len() as i64 - old.stored_len as i64,
                    None => {
                        added += 1;
                        bytes += frame.len() as i64;
                    }
                }
                continue;
            }
            let data = zstd::stream::decode_all(&frame[..])
                .map_err(|e| Error::internal(&format!("decoding chunk {c}"), e))?;
            if ChunkId::of(&data) != *c {
                return Err(Error::internal(
                    "reading chunks",
                    format!("chunk {c} does not match its id"),
                ));
            }
            b.put_chunk(
                c,
                ChunkMeta {
                    raw_len: data.len() as u64,
                    stored_len: frame.len() as u64,
                    touched_ms: now,
                    flags: 0,
                    sealed: None,
                },
            );
            b.put_owner(&m.tenant, c);
            match known {
                // A row verify had marked bad, now found sound: counted already.
                Some(old) => bytes += frame.len() as i64 - old.stored_len as i64,
                None => {
                    added += 1;
                    bytes += frame.len() as i64;
                }
            }
        }
        b.add(counter::CHUNKS, added as i64);
        b.add(counter::STORED_BYTES, bytes);
        self.catalog.write(b)?;
        report.chunks += added;
        report.stored_bytes = report.stored_bytes.saturating_add_signed(bytes);
        // Then the backup and its guest file catalog, in one batch.
        let created = schema::time::parse_rfc3339(&m.created).unwrap_or(0);
        let mut parsed = Vec::new();
        for r in &m.file_indexes {
            let what = format!("file index of disk {} partition {}", r.disk, r.partition);
            let disk_size = m
                .disks
                .iter()
                .find(|d| d.name == r.disk)
                .map_or(0, |d| d.size);
            parsed.push(self.load_file_index(r, &what, disk_size)?);
        }
        let mut b = self.catalog.batch();
        b.put_backup(&m, created)?;
        Self::put_file_indexes(&mut b, &m, created, &parsed)?;
        b.add(counter::BACKUPS, 1);
        b.add(counter::LOGICAL_BYTES, m.stats.logical_bytes as i64);
        self.catalog.write(b)?;
        tracing::info!(backup = %m.id, source = %m.source, chunks = chunks.len(), "backup adopted from the store");
        Ok(())
    }
}
