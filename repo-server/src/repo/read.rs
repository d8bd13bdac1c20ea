//! Reading the catalog and the data: sources, backup listings, manifests, indexes, disk images,
//! chunks, stats, and deleting a backup.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use schema::api::{BackupList, Manifest, ManifestDisk, RepoStats, SourceSummary};
use schema::{BackupId, ChunkId, DiskName, ErrorCode};

use super::Repository;
use crate::auth::Caller;
use crate::catalog::{counter, BackupScope, ChunkMeta};
use crate::error::{Error, Result};

/// Filters of `GET /v1/backups`.
#[derive(Debug, Default, Clone)]
pub struct ListQuery {
    /// Only this source.
    pub source: Option<String>,
    /// Only backups at or after this time (Unix ms).
    pub since_ms: Option<i64>,
    /// Only backups at or before this time (Unix ms).
    pub until_ms: Option<i64>,
    /// Page size.
    pub limit: usize,
    /// Where the previous page ended.
    pub cursor: Option<Cursor>,
}

/// A position in the newest-first listing: (time, id) of the last backup returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    ms: i64,
    id: BackupId,
}

impl Cursor {
    /// Opaque text form (hex).
    pub fn encode(&self) -> String {
        let mut raw = (self.ms.max(0) as u64).to_be_bytes().to_vec();
        raw.extend_from_slice(self.id.as_str().as_bytes());
        schema::id::to_hex(&raw)
    }

    /// Parses the text form.
    ///
    /// # Errors
    /// 400 for anything that is not a cursor this server made.
    pub fn decode(s: &str) -> Result<Cursor> {
        let bad = || {
            Error::new(
                ErrorCode::BadRequest,
                "cursor is not one this server returned",
            )
        };
        if !s.len().is_multiple_of(2) || s.len() < 18 || s.len() > 16 + 256 {
            return Err(bad());
        }
        let raw: Vec<u8> = (0..s.len() / 2)
            .map(|i| schema::id::from_hex::<1>(&s[i * 2..i * 2 + 2]).map(|b| b[0]))
            .collect::<Option<_>>()
            .ok_or_else(bad)?;
        let ms = i64::from_be_bytes(raw[..8].try_into().map_err(|_| bad())?);
        let id = std::str::from_utf8(&raw[8..])
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or_else(bad)?;
        Ok(Cursor { ms, id })
    }
}

/// One disk of a backup, opened for reading.
#[derive(Debug)]
pub struct DiskImage {
    /// The disk as in the manifest.
    pub disk: ManifestDisk,
    /// One id per block.
    pub index: Vec<ChunkId>,
}

impl DiskImage {
    /// Length of block `b` (the last one may be short).
    pub fn block_len(&self, b: u64) -> u64 {
        let bs = u64::from(self.disk.block_size);
        self.disk.size.saturating_sub(b * bs).min(bs)
    }
}

impl Repository {
    /// A manifest the caller may see, or 404.
    ///
    /// # Errors
    /// 404, RocksDB errors.
    pub fn manifest(&self, caller: &Caller, id: &BackupId) -> Result<Manifest> {
        match self.catalog.backup(id)? {
            Some(m) if caller.sees(&m.tenant) => Ok(m),
            _ => Err(Error::not_found(format!("backup {id}"))),
        }
    }

    /// The index of one disk of a manifest, checked against its recorded hash.
    pub(crate) fn index_of(&self, m: &Manifest, d: &ManifestDisk) -> Result<Vec<ChunkId>> {
        let mut out = Vec::with_capacity(d.blocks as usize);
        self.for_each_index_id(m, d, |c| {
            out.push(c);
            Ok(())
        })?;
        Ok(out)
    }

    /// Streams the chunk ids of one disk's index blob in block order, reading it a piece at a
    /// time; the blob's length and blake3 are checked at the end (an error then means some ids
    /// already given to `f` came from a corrupt blob).
    ///
    /// # Errors
    /// Internal errors for a missing, short or corrupt blob; errors from `f`.
    pub(crate) fn for_each_index_id(
        &self,
        m: &Manifest,
        d: &ManifestDisk,
        f: impl FnMut(ChunkId) -> Result<()>,
    ) -> Result<()> {
        index_ids(self.indexes.as_ref(), m, d, f)
    }
}

/// [`Repository::for_each_index_id`] on any index directory (the offline check has no
/// repository).
///
/// # Errors
/// As there.
pub(crate) fn index_ids(
    indexes: &dyn crate::store::BlobStore,
    m: &Manifest,
    d: &ManifestDisk,
    mut f: impl FnMut(ChunkId) -> Result<()>,
) -> Result<()> {
    let context = || format!("reading the index of backup {} disk {}", m.id, d.name);
    let raw = schema::id::from_hex::<32>(&d.index_blake3)
        .ok_or_else(|| Error::internal(&context(), "bad index hash in the manifest"))?;
    let mut hasher = blake3::Hasher::new();
    let mut carry: Vec<u8> = Vec::with_capacity(32);
    let mut total = 0u64;
    let mut failed: Option<Error> = None;
    let streamed = indexes.stream(&ChunkId(raw), &mut |piece: &[u8]| {
        hasher.update(piece);
        total += piece.len() as u64;
        let mut rest = piece;
        if !carry.is_empty() {
            let take = (32 - carry.len()).min(rest.len());
            carry.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if carry.len() < 32 {
                return Ok(());
            }
            let id = ChunkId::from_slice(&carry).unwrap_or(ChunkId::HOLE);
            carry.clear();
            if let Err(e) = f(id) {
                failed = Some(e);
                return Err(std::io::Error::other("stopped"));
            }
        }
        let whole = rest.len() - rest.len() % 32;
        for id in rest[..whole].chunks_exact(32) {
            if let Err(e) = f(ChunkId::from_slice(id).unwrap_or(ChunkId::HOLE)) {
                failed = Some(e);
                return Err(std::io::Error::other("stopped"));
            }
        }
        carry.extend_from_slice(&rest[whole..]);
        Ok(())
    });
    if let Some(e) = failed {
        return Err(e);
    }
    streamed.map_err(|e| Error::storage(&context(), e))?;
    if !carry.is_empty() {
        return Err(Error::internal(&context(), "index blob has a ragged end"));
    }
    if total != d.blocks * 32 || hasher.finalize().as_bytes() != &raw {
        return Err(Error::internal(&context(), "index blob is corrupt"));
    }
    Ok(())
}

impl Repository {
    /// Opens one disk of a backup for reading.
    ///
    /// # Errors
    /// 404 for an unknown backup or disk.
    pub fn disk_image(&self, caller: &Caller, id: &BackupId, disk: &DiskName) -> Result<DiskImage> {
        let m = self.manifest(caller, id)?;
        let d = m
            .disks
            .iter()
            .find(|d| &d.name == disk)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("disk {disk} in backup {id}")))?;
        let index = self.index_of(&m, &d)?;
        Ok(DiskImage { disk: d, index })
    }

    /// [`Repository::disk_image`] of a backup the repository can read: an encrypted backup's
    /// data is sealed (409 `ENCRYPTED`, before anything is streamed).
    ///
    /// # Errors
    /// 404 for an unknown backup or disk, 409 `ENCRYPTED`.
    pub fn plain_image(
        &self,
        caller: &Caller,
        id: &BackupId,
        disk: &DiskName,
    ) -> Result<DiskImage> {
        let m = self.manifest(caller, id)?;
        if let Some(key) = m.key_id() {
            return Err(Error::new(
                schema::ErrorCode::Encrypted,
                format!(
                    "backup {id} is encrypted (key {key}): the repository cannot read its disks; \
                     restore it with source-mover restore --encryption-key"
                ),
            ));
        }
        self.disk_image(caller, id, disk)
    }

    /// The bytes of block `b` of an opened disk (zeros for a hole).
    ///
    /// # Errors
    /// Internal errors when a chunk is missing or corrupt.
    pub fn read_block(&self, img: &DiskImage, b: u64) -> Result<Vec<u8>> {
        let len = img.block_len(b);
        // Callers stay inside the disk (commit bounds-checks file extents); a manifest from
        // before those checks could still point past it, and that is an error, not a panic.
        let Some(&id) = usize::try_from(b).ok().and_then(|i| img.index.get(i)) else {
            return Err(Error::internal(
                &format!("reading block {b} of disk {}", img.disk.name),
                format!("the disk has {} blocks", img.index.len()),
            ));
        };
        if id.is_hole() {
            return Ok(vec![0; len as usize]);
        }
        let data = self.read_chunk(&id, len)?;
        if ChunkId::of(&data) != id {
            self.metrics.verification_failures.inc();
            return Err(Error::internal(
                &format!("reading chunk {id}"),
                "stored chunk does not match its id",
            ));
        }
        Ok(data)
    }

    /// `GET /v1/sources`.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn sources(&self, caller: &Caller) -> Result<Vec<SourceSummary>> {
        let mut groups: BTreeMap<(String, String), SourceSummary> = BTreeMap::new();
        let tenants: Option<&str> = (!caller.is_admin()).then_some(caller.tenant.as_str());
        self.catalog.for_each_backup(|m| {
            if tenants.is_some_and(|t| t != m.tenant) {
                return Ok(());
            }
            let e = groups
                .entry((m.tenant.clone(), m.source.clone()))
                .or_insert_with(|| SourceSummary {
                    source: m.source.clone(),
                    tenant: m.tenant.clone(),
                    backups: 0,
                    last_backup: String::new(),
                    logical_bytes: 0,
                });
            e.backups += 1;
            e.logical_bytes += m.stats.logical_bytes;
            if m.created > e.last_backup {
                e.last_backup = m.created.clone();
            }
            Ok(())
        })?;
        Ok(groups.into_values().collect())
    }

    /// `GET /v1/backups`: newest first, one page.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn list_backups(&self, caller: &Caller, q: &ListQuery) -> Result<BackupList> {
        let mut filter_source = None;
        let scope = match (&q.source, caller.is_admin()) {
            (None, true) => BackupScope::All,
            (Some(src), true) => {
                filter_source = Some(src.as_str());
                BackupScope::All
            }
            (None, false) => BackupScope::Tenant(&caller.tenant),
            (Some(src), false) => BackupScope::Source {
                tenant: &caller.tenant,
                source: src,
            },
        };
        // Strictly below the cursor's backup, and below every backup after `until`.
        let cursor = q.cursor.as_ref().map(|c| (c.ms.max(0), c.id.as_str()));
        let until = q.until_ms.map(|u| (u.saturating_add(1).max(0), ""));
        let before = match (cursor, until) {
            (Some(c), Some(u)) => Some(c.min(u)),
            (c, u) => c.or(u),
        };
        let mut out: Vec<(i64, Manifest)> = Vec::new();
        let mut more = false;
        self.catalog.backups_newest_first(scope, before, |ms, id| {
            if q.since_ms.is_some_and(|s| ms < s) {
                return Ok(false);
            }
            let Ok(id) = id.parse::<BackupId>() else {
                return Ok(true);
            };
            let Some(m) = self.catalog.backup(&id)? else {
                return Ok(true);
            };
            if filter_source.is_some_and(|s| s != m.source) {
                return Ok(true);
            }
            if out.len() == q.limit {
                more = true;
                return Ok(false);
            }
            out.push((ms, m));
            Ok(true)
        })?;
        let next = if more {
            out.last().map(|(ms, m)| {
                Cursor {
                    ms: *ms,
                    id: m.id.clone(),
                }
                .encode()
            })
        } else {
            None
        };
        Ok(BackupList {
            backups: out.into_iter().map(|(_, m)| m).collect(),
            next,
        })
    }

    /// `DELETE /v1/backups/{id}` (admin).
    ///
    /// # Errors
    /// 403, 404, 409 `BACKUP_IN_USE` while it is the base of an open session, 409
    /// `BACKUP_IMMUTABLE` inside the immutability window.
    pub fn delete_backup(&self, caller: &Caller, id: &BackupId) -> Result<()> {
        caller.require_admin()?;
        let m = self.manifest(caller, id)?;
        self.delete_checked(&m)
    }

    /// `GET /v1/stats` (admin: the whole repository).
    ///
    /// # Errors
    /// 403, RocksDB errors.
    pub fn stats(&self, caller: &Caller) -> Result<RepoStats> {
        caller.require_admin()?;
        let c = |n| self.catalog.counter(n).map(|v| v.max(0) as u64);
        let (stored, logical) = (c(counter::STORED_BYTES)?, c(counter::LOGICAL_BYTES)?);
        Ok(RepoStats {
            chunks: c(counter::CHUNKS)?,
            stored_bytes: stored,
            logical_bytes: logical,
            dedup_ratio: if stored == 0 {
                0.0
            } else {
                (logical as f64 / stored as f64 * 100.0).round() / 100.0
            },
            backups: c(counter::BACKUPS)?,
            sources: self.sources(caller)?.len() as u64,
            open_sessions: self.open_sessions.load(Ordering::Relaxed).max(0) as u64,
        })
    }

    /// Metadata of a chunk the caller may read (its tenant uploaded or references it), or 404.
    ///
    /// # Errors
    /// 404, RocksDB errors.
    pub fn chunk_meta(&self, caller: &Caller, id: &ChunkId) -> Result<ChunkMeta> {
        let meta = self.catalog.chunk(id)?.filter(|m| !m.is_bad());
        match meta {
            Some(m) if caller.is_admin() || self.catalog.owned(&caller.tenant, &[*id])?[0] => Ok(m),
            _ => Err(Error::not_found(format!("chunk {id}"))),
        }
    }

    /// The stored zstd frame of a chunk.
    ///
    /// # Errors
    /// 404, internal errors.
    pub fn chunk_frame(&self, caller: &Caller, id: &ChunkId) -> Result<Vec<u8>> {
        self.chunk_meta(caller, id)?;
        self.chunks
            .get(id)
            .map_err(|e| Error::storage(&format!("reading chunk {id}"), e))
    }
}
