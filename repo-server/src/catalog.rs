//! The RocksDB catalog: sessions, pins, index records in flight, chunk metadata, tenant
//! ownership of chunks, backups (manifests) with time indexes, counters and job results.
//!
//! Column families and keys (all integers big-endian unless said otherwise, so keys sort):
//!
//! | cf | key | value |
//! |---|---|---|
//! | `sessions` | session id (16) | JSON [`SessionRecord`] |
//! | `pins` | session (16) + chunk (32) | [`Pin`] (17 bytes) |
//! | `entries` | session (16) + disk index (2) + first record number (8) | raw 40-byte records |
//! | `chunks` | chunk (32) | [`ChunkMeta`] (25 bytes) |
//! | `owners` | tenant + 0x00 + chunk (32) | empty: the tenant uploaded or references it |
//! | `backups` | backup id | JSON [`Manifest`] |
//! | `backup_time` | `a` ms id / `t` tenant 0 ms id / `s` tenant 0 source 0 ms id | empty |
//! | `counters` | name | i64 little-endian, summed by a merge operator |
//! | `jobs` | job id | JSON job report |
//! | `gcmark` | chunk (32) | empty: GC's mark set while a GC runs (not logged, cleared after) |
//! | `policies` | source | JSON [`schema::retention::Policy`] set over the API |
//! | `verified` | chunk (32) | i64 LE: when verify last found the chunk sound (Unix ms) |
//! | `files` | backup 0 disk 0 partition (4) parent 0 name | JSON [`schema::files::FileEntry`] |
//! | `names` | tenant 0 name 0 !ms (8) backup 0 disk 0 partition (4) path | size (8) mtime (8) LE |
//! | `name_set` | tenant 0 name | empty: the name occurs (or occurred) in a backup of the tenant |
//!
//! Every state change is one [`rocksdb::WriteBatch`] written with `sync = true` before the
//! request that caused it is acknowledged. Chunk files are durable before a batch names them.
//! All calls block; callers run them off the async runtime.

use std::path::Path;

use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, Direction, IteratorMode,
    MergeOperands, Options, WriteBatch, WriteOptions, DB,
};
use schema::api::{CreateSession, Manifest, SessionState};
use schema::{BackupId, ChunkId, SessionId};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

const CFS: [&str; 15] = [
    "sessions",
    "pins",
    "entries",
    "chunks",
    "owners",
    "backups",
    "backup_time",
    "counters",
    "jobs",
    "gcmark",
    "policies",
    "verified",
    "files",
    "names",
    "name_set",
];

/// Prefix of a backup's rows in `files` (all its disks and partitions).
pub fn files_backup_prefix(backup: &str) -> Vec<u8> {
    let mut k = backup.as_bytes().to_vec();
    k.push(0);
    k
}

/// Prefix of one file system's rows in `files`, or of one directory's when `parent` is given.
pub fn files_prefix(backup: &str, disk: &str, part: u32, parent: Option<&str>) -> Vec<u8> {
    let mut k = files_backup_prefix(backup);
    k.extend_from_slice(disk.as_bytes());
    k.push(0);
    k.extend_from_slice(&part.to_be_bytes());
    if let Some(p) = parent {
        k.extend_from_slice(p.as_bytes());
        k.push(0);
    }
    k
}

/// Key of one entry in `names`.
pub fn names_key(
    tenant: &str,
    name: &str,
    created_ms: i64,
    backup: &str,
    disk: &str,
    part: u32,
    path: &str,
) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + name.len() + backup.len() + path.len() + 24);
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k.extend_from_slice(&(!(created_ms.max(0) as u64)).to_be_bytes());
    k.extend_from_slice(backup.as_bytes());
    k.push(0);
    k.extend_from_slice(disk.as_bytes());
    k.push(0);
    k.extend_from_slice(&part.to_be_bytes());
    k.extend_from_slice(path.as_bytes());
    k
}

/// Key of a name in `name_set`.
pub fn name_set_key(tenant: &str, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + name.len() + 1);
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(name.as_bytes());
    k
}

/// One hit of the `names` index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameHit {
    /// File name.
    pub name: String,
    /// Backup creation time, Unix ms.
    pub created_ms: i64,
    /// Backup id.
    pub backup: String,
    /// Disk.
    pub disk: String,
    /// Partition.
    pub partition: u32,
    /// Path.
    pub path: String,
    /// Size.
    pub size: u64,
    /// Modification time, Unix seconds.
    pub mtime: i64,
}

/// One row of `names` as it lies in the iterator (nothing copied): searches filter and rank
/// rows with this and copy out only the hits they keep.
#[derive(Debug, Clone, Copy)]
pub struct NameRow<'a> {
    /// File name.
    pub name: &'a [u8],
    /// Backup creation time, Unix ms.
    pub created_ms: i64,
    /// Backup id.
    pub backup: &'a [u8],
    /// Disk.
    pub disk: &'a [u8],
    /// Partition.
    pub partition: u32,
    /// Path.
    pub path: &'a [u8],
    value: &'a [u8],
}

impl NameRow<'_> {
    /// The row as an owned hit (`None` for a row that is not UTF-8, which commit never writes).
    pub fn to_hit(&self) -> Option<NameHit> {
        let s = |b: &[u8]| std::str::from_utf8(b).ok().map(str::to_owned);
        Some(NameHit {
            name: s(self.name)?,
            created_ms: self.created_ms,
            backup: s(self.backup)?,
            disk: s(self.disk)?,
            partition: self.partition,
            path: s(self.path)?,
            size: u64::from_le_bytes(self.value.get(..8)?.try_into().ok()?),
            mtime: i64::from_le_bytes(self.value.get(8..16)?.try_into().ok()?),
        })
    }
}

fn name_row<'a>(tenant_len: usize, k: &'a [u8], v: &'a [u8]) -> Option<NameRow<'a>> {
    let rest = k.get(tenant_len + 1..)?;
    let z = rest.iter().position(|&b| b == 0)?;
    let name = &rest[..z];
    let rest = &rest[z + 1..];
    let ms = !u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
    let rest = &rest[8..];
    let z = rest.iter().position(|&b| b == 0)?;
    let backup = &rest[..z];
    let rest = &rest[z + 1..];
    let z = rest.iter().position(|&b| b == 0)?;
    let disk = &rest[..z];
    let rest = &rest[z + 1..];
    let partition = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
    Some(NameRow {
        name,
        created_ms: ms as i64,
        backup,
        disk,
        partition,
        path: &rest[4..],
        value: v,
    })
}

/// A raw key and value.
pub type Row = (Box<[u8]>, Box<[u8]>);

/// A consistent read view of the catalog (GC marks from one).
pub type Snapshot<'a> = rocksdb::SnapshotWithThreadMode<'a, DB>;

/// Counter names.
pub mod counter {
    /// Stored chunks.
    pub const CHUNKS: &str = "chunks";
    /// Bytes of stored chunk files.
    pub const STORED_BYTES: &str = "stored_bytes";
    /// Committed backups.
    pub const BACKUPS: &str = "backups";
    /// Logical bytes of committed backups.
    pub const LOGICAL_BYTES: &str = "logical_bytes";
}

/// A session as persisted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Id.
    pub id: SessionId,
    /// Owner tenant.
    pub tenant: String,
    /// Parameters as created (compared on repeated creation).
    pub params: CreateSession,
    /// State.
    pub state: SessionState,
    /// Creation time, Unix ms.
    pub created_ms: i64,
    /// Last persisted activity, Unix ms.
    pub last_active_ms: i64,
    /// Records held, per disk (same order as `params.disks`).
    pub entries: Vec<u64>,
    /// The backup once committed.
    pub backup_id: Option<BackupId>,
}

/// Metadata of a stored chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkMeta {
    /// Uncompressed length.
    pub raw_len: u64,
    /// Bytes of the stored file.
    pub stored_len: u64,
    /// When the file was written (stored or healed), Unix ms: GC's age test. Pins, not this
    /// time, protect chunks in use; the row is never rewritten just to refresh it.
    pub touched_ms: i64,
    /// Bit 0: marked bad by verify (treated as missing until a fresh copy arrives).
    pub flags: u8,
}

impl ChunkMeta {
    /// Flag: verify found the file corrupt or missing.
    pub const BAD: u8 = 1;

    fn encode(&self) -> [u8; 25] {
        let mut b = [0u8; 25];
        b[..8].copy_from_slice(&self.raw_len.to_le_bytes());
        b[8..16].copy_from_slice(&self.stored_len.to_le_bytes());
        b[16..24].copy_from_slice(&self.touched_ms.to_le_bytes());
        b[24] = self.flags;
        b
    }

    /// Decodes a stored row.
    pub fn decode(b: &[u8]) -> Option<ChunkMeta> {
        if b.len() != 25 {
            return None;
        }
        let u = |r: std::ops::Range<usize>| -> [u8; 8] { b[r].try_into().unwrap_or([0; 8]) };
        Some(ChunkMeta {
            raw_len: u64::from_le_bytes(u(0..8)),
            stored_len: u64::from_le_bytes(u(8..16)),
            touched_ms: i64::from_le_bytes(u(16..24)),
            flags: b[24],
        })
    }

    /// Whether verify marked it bad.
    pub fn is_bad(&self) -> bool {
        self.flags & Self::BAD != 0
    }
}

/// A chunk pinned to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pin {
    /// Whether this session stored the chunk for the first time.
    pub new: bool,
    /// Body bytes received for it (0 when found present by find-missing).
    pub sent: u64,
    /// Bytes this session added to the store for it.
    pub stored: u64,
}

impl Pin {
    fn encode(&self) -> [u8; 17] {
        let mut b = [0u8; 17];
        b[0] = u8::from(self.new);
        b[1..9].copy_from_slice(&self.sent.to_le_bytes());
        b[9..17].copy_from_slice(&self.stored.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Pin {
        if b.len() != 17 {
            return Pin::default();
        }
        let u = |r: std::ops::Range<usize>| -> [u8; 8] { b[r].try_into().unwrap_or([0; 8]) };
        Pin {
            new: b[0] == 1,
            sent: u64::from_le_bytes(u(1..9)),
            stored: u64::from_le_bytes(u(9..17)),
        }
    }
}

fn add_merge(_key: &[u8], existing: Option<&[u8]>, ops: &MergeOperands) -> Option<Vec<u8>> {
    let mut v = existing.map(decode_i64).unwrap_or(0);
    for op in ops {
        v = v.wrapping_add(decode_i64(op));
    }
    Some(v.to_le_bytes().to_vec())
}

fn decode_i64(b: &[u8]) -> i64 {
    b.try_into().map(i64::from_le_bytes).unwrap_or(0)
}

/// Key of a pin.
pub fn pin_key(s: &SessionId, c: &ChunkId) -> [u8; 48] {
    let mut k = [0u8; 48];
    k[..16].copy_from_slice(&s.0);
    k[16..].copy_from_slice(&c.0);
    k
}

/// Key of an owner row.
pub fn owner_key(tenant: &str, c: &ChunkId) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + 33);
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(&c.0);
    k
}

fn entries_key(s: &SessionId, disk: u16, start: u64) -> [u8; 26] {
    let mut k = [0u8; 26];
    k[..16].copy_from_slice(&s.0);
    k[16..18].copy_from_slice(&disk.to_be_bytes());
    k[18..].copy_from_slice(&start.to_be_bytes());
    k
}

/// The time-index keys of one backup.
pub fn backup_time_keys(m: &Manifest, created_ms: i64) -> [Vec<u8>; 3] {
    let ms = (created_ms.max(0) as u64).to_be_bytes();
    let id = m.id.as_str().as_bytes();
    let mut a = vec![b'a'];
    a.extend_from_slice(&ms);
    a.extend_from_slice(id);
    let mut t = vec![b't'];
    t.extend_from_slice(m.tenant.as_bytes());
    t.push(0);
    t.extend_from_slice(&ms);
    t.extend_from_slice(id);
    let mut s = vec![b's'];
    s.extend_from_slice(m.tenant.as_bytes());
    s.push(0);
    s.extend_from_slice(m.source.as_bytes());
    s.push(0);
    s.extend_from_slice(&ms);
    s.extend_from_slice(id);
    [a, t, s]
}

/// The RocksDB catalog.
pub struct Catalog {
    db: DB,
    sync: WriteOptions,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("path", &self.db.path())
            .finish()
    }
}

/// A set of changes written atomically by [`Catalog::write`].
pub struct Batch<'a> {
    cat: &'a Catalog,
    wb: WriteBatch,
}

impl Drop for Catalog {
    /// Flushes the memtables on close, so the WAL is empty and the next open replays nothing.
    /// Nothing depends on it: every acknowledged write is already in the synced WAL.
    fn drop(&mut self) {
        for name in CFS {
            if let Some(cf) = self.db.cf_handle(name) {
                let _ = self.db.flush_cf(&cf);
            }
        }
    }
}

impl std::fmt::Debug for Batch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("ops", &self.wb.len())
            .finish()
    }
}

impl Batch<'_> {
    /// Stores a session record.
    pub fn put_session(&mut self, r: &SessionRecord) -> Result<()> {
        let v = serde_json::to_vec(r).map_err(|e| Error::internal("encoding a session", e))?;
        self.wb.put_cf(&self.cat.cf("sessions"), r.id.0, v);
        Ok(())
    }
    /// Pins a chunk to a session.
    pub fn put_pin(&mut self, s: &SessionId, c: &ChunkId, p: Pin) {
        self.wb
            .put_cf(&self.cat.cf("pins"), pin_key(s, c), p.encode());
    }
    /// Removes one pin.
    pub fn delete_pin_key(&mut self, key: &[u8]) {
        self.wb.delete_cf(&self.cat.cf("pins"), key);
    }
    /// Appends a run of records for a disk, starting at record number `start`.
    pub fn put_entries(&mut self, s: &SessionId, disk: u16, start: u64, records: &[u8]) {
        self.wb.put_cf(
            &self.cat.cf("entries"),
            entries_key(s, disk, start),
            records,
        );
    }
    /// Removes every pin and record run of a session.
    pub fn delete_session_data(&mut self, s: &SessionId) {
        let mut end = s.0.to_vec();
        end.extend_from_slice(&[0xff; 40]);
        self.wb
            .delete_range_cf(&self.cat.cf("pins"), s.0.as_slice(), end.as_slice());
        self.wb
            .delete_range_cf(&self.cat.cf("entries"), s.0.as_slice(), end.as_slice());
    }
    /// Stores chunk metadata.
    pub fn put_chunk(&mut self, c: &ChunkId, m: ChunkMeta) {
        self.wb.put_cf(&self.cat.cf("chunks"), c.0, m.encode());
    }
    /// Removes chunk metadata.
    pub fn delete_chunk(&mut self, c: &ChunkId) {
        self.wb.delete_cf(&self.cat.cf("chunks"), c.0);
    }
    /// Records that `tenant` owns `c`.
    pub fn put_owner(&mut self, tenant: &str, c: &ChunkId) {
        self.wb
            .put_cf(&self.cat.cf("owners"), owner_key(tenant, c), []);
    }
    /// Removes an owner row by key.
    pub fn delete_owner_key(&mut self, key: &[u8]) {
        self.wb.delete_cf(&self.cat.cf("owners"), key);
    }
    /// Stores a manifest and its time-index keys.
    pub fn put_backup(&mut self, m: &Manifest, created_ms: i64) -> Result<()> {
        let v = serde_json::to_vec(m).map_err(|e| Error::internal("encoding a manifest", e))?;
        self.wb.put_cf(&self.cat.cf("backups"), m.id.as_str(), v);
        for k in backup_time_keys(m, created_ms) {
            self.wb.put_cf(&self.cat.cf("backup_time"), k, []);
        }
        Ok(())
    }
    /// Removes a manifest and its time-index keys.
    pub fn delete_backup(&mut self, m: &Manifest, created_ms: i64) {
        self.wb.delete_cf(&self.cat.cf("backups"), m.id.as_str());
        for k in backup_time_keys(m, created_ms) {
            self.wb.delete_cf(&self.cat.cf("backup_time"), k);
        }
    }
    /// Adds `delta` to a counter.
    pub fn add(&mut self, name: &str, delta: i64) {
        if delta != 0 {
            self.wb
                .merge_cf(&self.cat.cf("counters"), name, delta.to_le_bytes());
        }
    }
    /// Sets a counter (offline repair).
    pub fn set_counter(&mut self, name: &str, value: i64) {
        self.wb
            .put_cf(&self.cat.cf("counters"), name, value.to_le_bytes());
    }
    /// Puts a raw key (offline repair only).
    pub(crate) fn put_raw(&mut self, cf: &str, key: &[u8], value: &[u8]) {
        self.wb.put_cf(&self.cat.cf(cf), key, value);
    }
    /// Deletes a raw key (offline repair; GC for `name_set`).
    pub(crate) fn delete_raw(&mut self, cf: &str, key: &[u8]) {
        self.wb.delete_cf(&self.cat.cf(cf), key);
    }
    /// Stores one entry of a backup's file index, and its `names` row.
    pub fn put_file(
        &mut self,
        m: &Manifest,
        created_ms: i64,
        disk: &str,
        part: u32,
        e: &schema::files::FileEntry,
    ) -> Result<()> {
        let mut k = files_prefix(m.id.as_str(), disk, part, Some(e.parent()));
        k.extend_from_slice(e.name().as_bytes());
        let v = serde_json::to_vec(e).map_err(|e| Error::internal("encoding a file entry", e))?;
        self.wb.put_cf(&self.cat.cf("files"), k, v);
        let nk = names_key(
            &m.tenant,
            e.name(),
            created_ms,
            m.id.as_str(),
            disk,
            part,
            &e.path,
        );
        let mut nv = [0u8; 16];
        nv[..8].copy_from_slice(&e.size.to_le_bytes());
        nv[8..].copy_from_slice(&e.mtime.to_le_bytes());
        self.wb.put_cf(&self.cat.cf("names"), nk, nv);
        self.wb.put_cf(
            &self.cat.cf("name_set"),
            name_set_key(&m.tenant, e.name()),
            [],
        );
        Ok(())
    }
    /// Removes one entry's `names` row.
    pub fn delete_name(&mut self, key: &[u8]) {
        self.wb.delete_cf(&self.cat.cf("names"), key);
    }
    /// Removes every `files` row of a backup.
    pub fn delete_files_of(&mut self, backup: &str) {
        let start = files_backup_prefix(backup);
        let mut end = backup.as_bytes().to_vec();
        end.push(1);
        self.wb
            .delete_range_cf(&self.cat.cf("files"), start.as_slice(), end.as_slice());
    }
    /// Adds a chunk to GC's mark set.
    pub fn put_mark(&mut self, c: &ChunkId) {
        self.wb.put_cf(&self.cat.cf("gcmark"), c.0, []);
    }
    /// Stores a retention policy set over the API.
    pub fn put_policy(&mut self, source: &str, p: &schema::retention::Policy) -> Result<()> {
        let v = serde_json::to_vec(p).map_err(|e| Error::internal("encoding a policy", e))?;
        self.wb.put_cf(&self.cat.cf("policies"), source, v);
        Ok(())
    }
    /// Removes a policy set over the API.
    pub fn delete_policy(&mut self, source: &str) {
        self.wb.delete_cf(&self.cat.cf("policies"), source);
    }
    /// Records when verify last found `c` sound.
    pub fn put_verified(&mut self, c: &ChunkId, ms: i64) {
        self.wb
            .put_cf(&self.cat.cf("verified"), c.0, ms.to_le_bytes());
    }
    /// Forgets a chunk's verify time (the chunk is gone).
    pub fn delete_verified(&mut self, c: &ChunkId) {
        self.wb.delete_cf(&self.cat.cf("verified"), c.0);
    }
    /// Number of operations in the batch.
    pub fn len(&self) -> usize {
        self.wb.len()
    }
    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.wb.is_empty()
    }
    /// Stores a job report.
    pub fn put_job(&mut self, id: &str, report: &serde_json::Value) {
        self.wb.put_cf(&self.cat.cf("jobs"), id, report.to_string());
    }
}

impl Catalog {
    /// Opens (creating) the catalog at `path`.
    ///
    /// # Errors
    /// RocksDB errors (a second process holding the lock among them).
    pub fn open(path: &Path) -> Result<Catalog> {
        Ok(Self::open_raw(path)?)
    }

    /// [`Catalog::open`] with RocksDB's own error (the offline check words it for people).
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn open_raw(path: &Path) -> std::result::Result<Catalog, rocksdb::Error> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_keep_log_file_num(4);
        // A WAL file is kept until every column family with writes in it has flushed; small,
        // rarely written families (counters, policies) would otherwise pin every WAL file for
        // ever (seen: 3.3 GB of WAL beside 0.4 GB of tables). Past this size RocksDB flushes them.
        opts.set_max_total_wal_size(256 << 20);
        let cfs = CFS.iter().map(|name| {
            let mut o = Options::default();
            // LZ4 on the upper levels, zstd at the bottom, where most bytes rest: the guest
            // catalog's rows (paths, JSON entries) shrink several times; without this RocksDB
            // stores them raw (its default, Snappy, is not compiled in).
            o.set_compression_type(DBCompressionType::Lz4);
            o.set_bottommost_compression_type(DBCompressionType::Zstd);
            if *name == "counters" {
                o.set_merge_operator_associative("add_i64", add_merge);
            }
            ColumnFamilyDescriptor::new(*name, o)
        });
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        Ok(Catalog { db, sync })
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        // Every name used is in CFS, created at open.
        #[allow(clippy::expect_used)]
        self.db
            .cf_handle(name)
            .expect("column family created at open")
    }

    /// A new empty batch.
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            cat: self,
            wb: WriteBatch::default(),
        }
    }

    /// Writes a batch atomically and durably.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn write(&self, b: Batch<'_>) -> Result<()> {
        crate::fail::hit("catalog.before_write");
        self.db.write_opt(b.wb, &self.sync)?;
        crate::fail::hit("catalog.after_write");
        Ok(())
    }

    /// Writes a batch without the write-ahead log or fsync: for GC's mark set only, which is
    /// rebuilt by every GC and worthless after a crash.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn write_scratch(&self, b: Batch<'_>) -> Result<()> {
        let mut o = WriteOptions::default();
        o.disable_wal(true);
        self.db.write_opt(b.wb, &o)?;
        Ok(())
    }

    /// Empties GC's mark set and compacts it away.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn clear_marks(&self) -> Result<()> {
        let cf = self.cf("gcmark");
        self.db
            .delete_range_cf(&cf, &[0u8; 32][..], &[0xffu8; 33][..])?;
        self.db.compact_range_cf(&cf, None::<&[u8]>, None::<&[u8]>);
        Ok(())
    }

    /// Whether each of `ids` is in GC's mark set.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn marked(&self, ids: &[ChunkId]) -> Result<Vec<bool>> {
        let cf = self.cf("gcmark");
        let keys: Vec<_> = ids.iter().map(|c| (&cf, c.0)).collect();
        self.db
            .multi_get_cf(keys)
            .into_iter()
            .map(|r| Ok(r?.is_some()))
            .collect()
    }

    /// A consistent view of the catalog as of now.
    pub fn snapshot(&self) -> Snapshot<'_> {
        self.db.snapshot()
    }

    /// Every manifest in a snapshot.
    ///
    /// # Errors
    /// RocksDB or decoding errors.
    pub fn for_each_backup_in(
        &self,
        snap: &Snapshot<'_>,
        mut f: impl FnMut(Manifest) -> Result<()>,
    ) -> Result<()> {
        for kv in snap.iterator_cf(&self.cf("backups"), IteratorMode::Start) {
            let (_, v) = kv?;
            f(serde_json::from_slice(&v)
                .map_err(|e| Error::internal("decoding a manifest", e))?)?;
        }
        Ok(())
    }

    /// Every pinned chunk in a snapshot.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn for_each_pin_in(
        &self,
        snap: &Snapshot<'_>,
        mut f: impl FnMut(ChunkId) -> Result<()>,
    ) -> Result<()> {
        for kv in snap.iterator_cf(&self.cf("pins"), IteratorMode::Start) {
            let (k, _) = kv?;
            if let Some(c) = ChunkId::from_slice(&k[16.min(k.len())..]) {
                f(c)?;
            }
        }
        Ok(())
    }

    /// The entries under `prefix` in `files` (a directory's children, or every entry of a
    /// backup), in key order after `after` (a key suffix), at most `limit`.
    ///
    /// # Errors
    /// RocksDB or decoding errors.
    pub fn files_under(
        &self,
        prefix: &[u8],
        after: Option<&str>,
        limit: usize,
        mut f: impl FnMut(schema::files::FileEntry) -> Result<()>,
    ) -> Result<bool> {
        let mut start = prefix.to_vec();
        if let Some(a) = after {
            start.extend_from_slice(a.as_bytes());
            start.push(0);
        }
        for (n, kv) in self
            .db
            .iterator_cf(
                &self.cf("files"),
                IteratorMode::From(&start, Direction::Forward),
            )
            .enumerate()
        {
            let (k, v) = kv?;
            if !k.starts_with(prefix) {
                break;
            }
            if n == limit {
                return Ok(true);
            }
            f(serde_json::from_slice(&v)
                .map_err(|e| Error::internal("decoding a file entry", e))?)?;
        }
        Ok(false)
    }

    /// One entry of a backup's file index.
    ///
    /// # Errors
    /// RocksDB or decoding errors.
    pub fn file(
        &self,
        backup: &str,
        disk: &str,
        part: u32,
        path: &str,
    ) -> Result<Option<schema::files::FileEntry>> {
        let (parent, name) = schema::files::split(path);
        let mut k = files_prefix(backup, disk, part, Some(parent));
        k.extend_from_slice(name.as_bytes());
        match self.db.get_pinned_cf(&self.cf("files"), k)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| Error::internal("decoding a file entry", e)),
        }
    }

    /// Calls `f` with every `names` row of `tenant` whose file name matches `glob` (`*`, `?`).
    /// A glob without wildcards is one seek; one with wildcards walks the tenant's distinct
    /// names (`name_set`, from the glob's literal prefix) and seeks the rows of each name that
    /// matches, so its cost follows the distinct names, not the rows. Rows of one name come
    /// newest first. Returns `true` when it stopped after `max_steps` steps (names plus rows).
    ///
    /// # Errors
    /// RocksDB errors; errors from `f`.
    pub fn search_names(
        &self,
        tenant: &str,
        glob: &str,
        max_steps: usize,
        mut f: impl FnMut(&NameRow<'_>) -> Result<()>,
    ) -> Result<bool> {
        let mut steps = 0usize;
        let literal = schema::files::literal_prefix(glob);
        if literal.len() == glob.len() {
            return self.rows_of_name(tenant, glob.as_bytes(), &mut steps, max_steps, &mut f);
        }
        let start = name_set_key(tenant, literal);
        let names_at = tenant.len() + 1;
        let mut it = self.db.raw_iterator_cf(&self.cf("name_set"));
        it.seek(&start);
        while let Some(k) = it.key() {
            if !k.starts_with(&start) {
                break;
            }
            steps += 1;
            if steps > max_steps {
                return Ok(true);
            }
            let name = &k[names_at..];
            if schema::files::name_match(glob.as_bytes(), name)
                && self.rows_of_name(tenant, name, &mut steps, max_steps, &mut f)?
            {
                return Ok(true);
            }
            it.next();
        }
        it.status()?;
        Ok(false)
    }

    fn rows_of_name(
        &self,
        tenant: &str,
        name: &[u8],
        steps: &mut usize,
        max_steps: usize,
        f: &mut impl FnMut(&NameRow<'_>) -> Result<()>,
    ) -> Result<bool> {
        let mut prefix = name_set_key(tenant, "");
        prefix.extend_from_slice(name);
        prefix.push(0);
        let mut it = self.db.raw_iterator_cf(&self.cf("names"));
        it.seek(&prefix);
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if !k.starts_with(&prefix) {
                break;
            }
            *steps += 1;
            if *steps > max_steps {
                return Ok(true);
            }
            if let Some(row) = name_row(tenant.len(), k, v) {
                f(&row)?;
            }
            it.next();
        }
        it.status()?;
        Ok(false)
    }

    /// The `name_set` keys among `keys` with no row left in `names`.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn unused_names(&self, keys: &[Box<[u8]>]) -> Result<Vec<Box<[u8]>>> {
        let mut out = Vec::new();
        let mut it = self.db.raw_iterator_cf(&self.cf("names"));
        for k in keys {
            let mut prefix = k.to_vec();
            prefix.push(0);
            it.seek(&prefix);
            if !it.key().is_some_and(|r| r.starts_with(&prefix)) {
                out.push(k.clone());
            }
        }
        it.status()?;
        Ok(out)
    }

    /// Fills `name_set` from `names` when it is empty and `names` is not (a catalog from before
    /// `name_set` existed). Returns the names added.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn backfill_name_set(&self) -> Result<u64> {
        let cf = self.cf("name_set");
        if self
            .db
            .iterator_cf(&cf, IteratorMode::Start)
            .next()
            .is_some()
        {
            return Ok(0);
        }
        let mut wb = WriteBatch::default();
        let mut last: Vec<u8> = Vec::new();
        let mut added = 0u64;
        for kv in self.db.iterator_cf(&self.cf("names"), IteratorMode::Start) {
            let (k, _) = kv?;
            // tenant 0 name 0 ...: the key up to the second zero.
            let Some(t) = k.iter().position(|&b| b == 0) else {
                continue;
            };
            let Some(n) = k[t + 1..].iter().position(|&b| b == 0) else {
                continue;
            };
            let key = &k[..t + 1 + n];
            if key != last.as_slice() {
                wb.put_cf(&cf, key, []);
                last = key.to_vec();
                added += 1;
                if wb.len() >= 10_000 {
                    self.db.write_opt(std::mem::take(&mut wb), &self.sync)?;
                }
            }
        }
        self.db.write_opt(wb, &self.sync)?;
        Ok(added)
    }

    /// Policies set over the API, by source.
    ///
    /// # Errors
    /// RocksDB or decoding errors.
    pub fn policies(
        &self,
    ) -> Result<std::collections::BTreeMap<String, schema::retention::Policy>> {
        let mut out = std::collections::BTreeMap::new();
        for kv in self
            .db
            .iterator_cf(&self.cf("policies"), IteratorMode::Start)
        {
            let (k, v) = kv?;
            out.insert(
                String::from_utf8_lossy(&k).into_owned(),
                serde_json::from_slice(&v).map_err(|e| Error::internal("decoding a policy", e))?,
            );
        }
        Ok(out)
    }

    /// When verify last found each of `ids` sound (Unix ms).
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn verified(&self, ids: &[ChunkId]) -> Result<Vec<Option<i64>>> {
        let cf = self.cf("verified");
        let keys: Vec<_> = ids.iter().map(|c| (&cf, c.0)).collect();
        self.db
            .multi_get_cf(keys)
            .into_iter()
            .map(|r| Ok(r?.map(|v| decode_i64(&v))))
            .collect()
    }

    /// Keys of a column family in order, from `from` (exclusive) on, at most `n` of them, with
    /// values; for scans done in slices (GC, check) that must not hold everything at once.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn slice(&self, cf: &str, after: Option<&[u8]>, n: usize) -> Result<Vec<Row>> {
        let cf = self.cf(cf);
        let mode = match after {
            Some(k) => IteratorMode::From(k, Direction::Forward),
            None => IteratorMode::Start,
        };
        let mut out = Vec::with_capacity(n.min(65_536));
        for kv in self.db.iterator_cf(&cf, mode) {
            let (k, v) = kv?;
            if after.is_some_and(|a| *k == *a) {
                continue;
            }
            out.push((k, v));
            if out.len() == n {
                break;
            }
        }
        Ok(out)
    }

    /// A session record.
    ///
    /// # Errors
    /// RocksDB or decoding errors.
    pub fn session(&self, s: &SessionId) -> Result<Option<SessionRecord>> {
        match self.db.get_pinned_cf(&self.cf("sessions"), s.0)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| Error::internal("decoding a session", e)),
        }
    }

    /// Every session record.
    ///
    /// # Errors
    /// RocksDB or decoding errors.
    pub fn sessions(&self) -> Result<Vec<SessionRecord>> {
        let mut out = Vec::new();
        for kv in self
            .db
            .iterator_cf(&self.cf("sessions"), IteratorMode::Start)
        {
            let (_, v) = kv?;
            out.push(
                serde_json::from_slice(&v).map_err(|e| Error::internal("decoding a session", e))?,
            );
        }
        Ok(out)
    }

    /// The pins among `ids` for session `s` (`None` where not pinned).
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn pins(&self, s: &SessionId, ids: &[ChunkId]) -> Result<Vec<Option<Pin>>> {
        let cf = self.cf("pins");
        let keys: Vec<_> = ids.iter().map(|c| (&cf, pin_key(s, c))).collect();
        self.db
            .multi_get_cf(keys)
            .into_iter()
            .map(|r| Ok(r?.map(|v| Pin::decode(&v))))
            .collect()
    }

    /// Every pin of a session, as (key, chunk, pin).
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn session_pins(&self, s: &SessionId) -> Result<Vec<(ChunkId, Pin)>> {
        let mut out = Vec::new();
        for kv in self.db.iterator_cf(
            &self.cf("pins"),
            IteratorMode::From(&s.0, Direction::Forward),
        ) {
            let (k, v) = kv?;
            if !k.starts_with(&s.0) {
                break;
            }
            if let Some(c) = ChunkId::from_slice(&k[16..]) {
                out.push((c, Pin::decode(&v)));
            }
        }
        Ok(out)
    }

    /// Every pinned chunk of every session (for GC marking).
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn for_each_pin(&self, mut f: impl FnMut(&SessionId, ChunkId)) -> Result<()> {
        for kv in self.db.iterator_cf(&self.cf("pins"), IteratorMode::Start) {
            let (k, _) = kv?;
            if let (Ok(s), Some(c)) = (
                <[u8; 16]>::try_from(&k[..16]),
                ChunkId::from_slice(&k[16..]),
            ) {
                f(&SessionId(s), c);
            }
        }
        Ok(())
    }

    /// The record runs of one disk of a session, in order: (first record number, bytes).
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn entries(&self, s: &SessionId, disk: u16) -> Result<Vec<(u64, Vec<u8>)>> {
        let prefix = entries_key(s, disk, 0);
        let mut out = Vec::new();
        for kv in self.db.iterator_cf(
            &self.cf("entries"),
            IteratorMode::From(&prefix, Direction::Forward),
        ) {
            let (k, v) = kv?;
            if !k.starts_with(&prefix[..18]) {
                break;
            }
            let start = u64::from_be_bytes(k[18..26].try_into().unwrap_or([0; 8]));
            out.push((start, v.to_vec()));
        }
        Ok(out)
    }

    /// Chunk metadata for many ids.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn chunks(&self, ids: &[ChunkId]) -> Result<Vec<Option<ChunkMeta>>> {
        let cf = self.cf("chunks");
        let keys: Vec<_> = ids.iter().map(|c| (&cf, c.0)).collect();
        self.db
            .multi_get_cf(keys)
            .into_iter()
            .map(|r| Ok(r?.and_then(|v| ChunkMeta::decode(&v))))
            .collect()
    }

    /// Chunk metadata for one id.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn chunk(&self, id: &ChunkId) -> Result<Option<ChunkMeta>> {
        Ok(self
            .db
            .get_pinned_cf(&self.cf("chunks"), id.0)?
            .and_then(|v| ChunkMeta::decode(&v)))
    }

    /// Every chunk with its metadata.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn for_each_chunk(
        &self,
        mut f: impl FnMut(ChunkId, ChunkMeta) -> Result<()>,
    ) -> Result<()> {
        for kv in self.db.iterator_cf(&self.cf("chunks"), IteratorMode::Start) {
            let (k, v) = kv?;
            if let (Some(c), Some(m)) = (ChunkId::from_slice(&k), ChunkMeta::decode(&v)) {
                f(c, m)?;
            }
        }
        Ok(())
    }

    /// Whether `tenant` owns each of `ids`.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn owned(&self, tenant: &str, ids: &[ChunkId]) -> Result<Vec<bool>> {
        let cf = self.cf("owners");
        let keys: Vec<_> = ids.iter().map(|c| (&cf, owner_key(tenant, c))).collect();
        self.db
            .multi_get_cf(keys)
            .into_iter()
            .map(|r| Ok(r?.is_some()))
            .collect()
    }

    /// Every owner row as (key, chunk).
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn for_each_owner(&self, mut f: impl FnMut(&[u8], ChunkId)) -> Result<()> {
        for kv in self.db.iterator_cf(&self.cf("owners"), IteratorMode::Start) {
            let (k, _) = kv?;
            if k.len() > 32 {
                if let Some(c) = ChunkId::from_slice(&k[k.len() - 32..]) {
                    f(&k, c);
                }
            }
        }
        Ok(())
    }

    /// A manifest.
    ///
    /// # Errors
    /// RocksDB or decoding errors.
    pub fn backup(&self, id: &BackupId) -> Result<Option<Manifest>> {
        match self.db.get_pinned_cf(&self.cf("backups"), id.as_str())? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| Error::internal("decoding a manifest", e)),
        }
    }

    /// Every manifest.
    ///
    /// # Errors
    /// RocksDB or decoding errors.
    pub fn for_each_backup(&self, mut f: impl FnMut(Manifest) -> Result<()>) -> Result<()> {
        for kv in self
            .db
            .iterator_cf(&self.cf("backups"), IteratorMode::Start)
        {
            let (_, v) = kv?;
            f(serde_json::from_slice(&v)
                .map_err(|e| Error::internal("decoding a manifest", e))?)?;
        }
        Ok(())
    }

    /// Walks the time index under `prefix` newest first, starting strictly below `before`
    /// (a key suffix of ms + id) when given; `f` gets the (ms, id) suffix and returns whether to go on.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn backups_newest_first(
        &self,
        prefix: &[u8],
        before: Option<&[u8]>,
        mut f: impl FnMut(i64, &str) -> Result<bool>,
    ) -> Result<()> {
        let mut it = self.db.raw_iterator_cf(&self.cf("backup_time"));
        let mut seek = prefix.to_vec();
        match before {
            Some(b) => {
                seek.extend_from_slice(b);
                it.seek_for_prev(&seek);
                if it.key() == Some(seek.as_slice()) {
                    it.prev();
                }
            }
            None => {
                seek.extend_from_slice(&[0xff; 9]);
                it.seek_for_prev(&seek);
            }
        }
        while let Some(k) = it.key() {
            if !k.starts_with(prefix) || k.len() < prefix.len() + 8 {
                break;
            }
            let rest = &k[prefix.len()..];
            let ms = i64::from_be_bytes(rest[..8].try_into().unwrap_or([0; 8]));
            let id = std::str::from_utf8(&rest[8..]).unwrap_or("");
            if !f(ms, id)? {
                break;
            }
            it.prev();
        }
        it.status()?;
        Ok(())
    }

    /// A counter's value.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn counter(&self, name: &str) -> Result<i64> {
        Ok(self
            .db
            .get_pinned_cf(&self.cf("counters"), name)?
            .map(|v| decode_i64(&v))
            .unwrap_or(0))
    }

    /// A job report.
    ///
    /// # Errors
    /// RocksDB or decoding errors.
    pub fn job(&self, id: &str) -> Result<Option<serde_json::Value>> {
        match self.db.get_pinned_cf(&self.cf("jobs"), id)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| Error::internal("decoding a job", e)),
        }
    }
}
