//! The RocksDB catalog: sessions, pins, index records in flight, chunk metadata, tenant
//! ownership of chunks, backups (manifests) with time indexes, counters, job results and the
//! guest file catalog.
//!
//! - this module: opening, the typed column-family list [`Cf`], [`Batch`] and [`Catalog::write`],
//!   snapshots, paged scans ([`Pages`]), counters and job reports;
//! - `keys` (private): the byte layout of every key (nothing outside it builds one);
//! - [`sessions`]: sessions, pins, record runs;
//! - [`chunks`]: chunk metadata, owners, GC's mark set, verify times;
//! - [`backups`]: manifests, their time indexes, retention policies;
//! - [`files`]: the guest file catalog (`files`, `names`, `name_set`).
//!
//! Callers never see key bytes: they read and write typed rows, page through column families
//! with [`Pages`] (whose resume position is opaque), and get undecodable rows as [`BadRow`]s.
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
//! | `backups` | backup id | JSON [`Manifest`](schema::api::Manifest) |
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

pub mod backups;
pub mod chunks;
pub mod files;
mod keys;
pub mod sessions;

use std::path::Path;

use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, Direction, IteratorMode,
    MergeOperands, Options, WriteBatch, WriteOptions, DB,
};

use crate::error::{Error, Result};

pub use backups::{BackupScope, TimeIndexCheck, TimeKey};
pub use chunks::{ChunkMeta, OwnerRow};
pub use files::{DistinctName, NameHit, NameRow};
pub use sessions::{EntriesRow, Pin, PinRow, SessionRecord};

/// The column families, each named as on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cf {
    /// Session records.
    Sessions,
    /// Chunks pinned to sessions.
    Pins,
    /// Record runs of open sessions.
    Entries,
    /// Chunk metadata.
    Chunks,
    /// Which tenant owns which chunk.
    Owners,
    /// Manifests of committed backups.
    Backups,
    /// The time indexes of backups (all, per tenant, per source).
    BackupTime,
    /// Counters, summed by a merge operator.
    Counters,
    /// Job reports.
    Jobs,
    /// GC's mark set.
    GcMark,
    /// Retention policies set over the API.
    Policies,
    /// When verify last found each chunk sound.
    Verified,
    /// The guest file catalog, by directory.
    Files,
    /// The guest file catalog, by file name.
    Names,
    /// The distinct file names of each tenant.
    NameSet,
}

impl Cf {
    /// Every column family, in the order they are created.
    pub const ALL: [Cf; 15] = [
        Cf::Sessions,
        Cf::Pins,
        Cf::Entries,
        Cf::Chunks,
        Cf::Owners,
        Cf::Backups,
        Cf::BackupTime,
        Cf::Counters,
        Cf::Jobs,
        Cf::GcMark,
        Cf::Policies,
        Cf::Verified,
        Cf::Files,
        Cf::Names,
        Cf::NameSet,
    ];

    /// The name on disk (existing catalogs hold these names; never change one).
    pub const fn name(self) -> &'static str {
        match self {
            Cf::Sessions => "sessions",
            Cf::Pins => "pins",
            Cf::Entries => "entries",
            Cf::Chunks => "chunks",
            Cf::Owners => "owners",
            Cf::Backups => "backups",
            Cf::BackupTime => "backup_time",
            Cf::Counters => "counters",
            Cf::Jobs => "jobs",
            Cf::GcMark => "gcmark",
            Cf::Policies => "policies",
            Cf::Verified => "verified",
            Cf::Files => "files",
            Cf::Names => "names",
            Cf::NameSet => "name_set",
        }
    }
}

impl std::fmt::Display for Cf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A key and its value as RocksDB returns them.
type RawRow = (Box<[u8]>, Box<[u8]>);

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

fn add_merge(_key: &[u8], existing: Option<&[u8]>, ops: &MergeOperands) -> Option<Vec<u8>> {
    let mut v = existing.map(keys::parse_i64).unwrap_or(0);
    for op in ops {
        v = v.wrapping_add(keys::parse_i64(op));
    }
    Some(v.to_le_bytes().to_vec())
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

impl Drop for Catalog {
    /// Flushes the memtables on close, so the WAL is empty and the next open replays nothing.
    /// Nothing depends on it: every acknowledged write is already in the synced WAL.
    fn drop(&mut self) {
        for cf in Cf::ALL {
            if let Some(h) = self.db.cf_handle(cf.name()) {
                let _ = self.db.flush_cf(&h);
            }
        }
    }
}

/// A set of changes written atomically by [`Catalog::write`]. Its methods live beside the rows
/// they write ([`sessions`], [`chunks`], [`backups`], [`files`]).
pub struct Batch<'a> {
    cat: &'a Catalog,
    wb: WriteBatch,
}

impl std::fmt::Debug for Batch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("ops", &self.wb.len())
            .finish()
    }
}

impl Batch<'_> {
    /// Number of operations in the batch.
    pub fn len(&self) -> usize {
        self.wb.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.wb.is_empty()
    }

    /// Adds `delta` to a counter.
    pub fn add(&mut self, name: &str, delta: i64) {
        if delta != 0 {
            self.wb
                .merge_cf(self.cat.cf(Cf::Counters), name, delta.to_le_bytes());
        }
    }

    /// Sets a counter (offline repair).
    pub fn set_counter(&mut self, name: &str, value: i64) {
        self.wb
            .put_cf(self.cat.cf(Cf::Counters), name, value.to_le_bytes());
    }

    /// Stores a job report.
    pub fn put_job(&mut self, id: &str, report: &schema::api::JobStatus) {
        let text = serde_json::to_string(report).unwrap_or_default();
        self.wb.put_cf(self.cat.cf(Cf::Jobs), id, text);
    }

    /// Removes a row that does not decode (offline repair).
    pub fn delete_bad_row(&mut self, row: &BadRow) {
        self.wb.delete_cf(self.cat.cf(row.cf), &row.key);
    }

    fn put(&mut self, cf: Cf, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.wb.put_cf(self.cat.cf(cf), key, value);
    }

    fn delete(&mut self, cf: Cf, key: impl AsRef<[u8]>) {
        self.wb.delete_cf(self.cat.cf(cf), key);
    }
}

/// A row whose key or value does not decode. The catalog never writes one; the offline check
/// reports them (and `--repair` may remove them with [`Batch::delete_bad_row`]).
#[derive(Clone, PartialEq, Eq)]
pub struct BadRow {
    cf: Cf,
    key: Box<[u8]>,
}

impl BadRow {
    /// The column family it is in.
    pub fn cf(&self) -> Cf {
        self.cf
    }
}

impl std::fmt::Display for BadRow {
    /// The key in hex.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.key.iter() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for BadRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BadRow({}: {self})", self.cf)
    }
}

/// One page of a paged scan: the rows that decode, in key order, and those that do not.
#[derive(Debug)]
pub struct Page<T> {
    /// Decoded rows.
    pub rows: Vec<T>,
    /// Rows that do not decode.
    pub bad: Vec<BadRow>,
}

impl<T> Page<T> {
    /// Rows in the page, decoded or not.
    pub fn len(&self) -> usize {
        self.rows.len() + self.bad.len()
    }

    /// Whether the page holds no row at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A scan of one column family a page at a time, for work that must not hold everything at
/// once nor one RocksDB iterator for long (GC, verify, check): each page is read afresh after
/// the last key of the page before (an opaque position kept inside), so it sees writes made
/// meanwhile. Ends after the first empty page.
pub struct Pages<'c, T> {
    cat: &'c Catalog,
    cf: Cf,
    n: usize,
    after: Option<Box<[u8]>>,
    done: bool,
    decode: fn(&[u8], &[u8]) -> Option<T>,
}

impl<T> std::fmt::Debug for Pages<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pages")
            .field("cf", &self.cf)
            .field("n", &self.n)
            .field("done", &self.done)
            .finish()
    }
}

impl<T> Iterator for Pages<'_, T> {
    type Item = Result<Page<T>>;

    fn next(&mut self) -> Option<Result<Page<T>>> {
        if self.done {
            return None;
        }
        let raw = match self.cat.slice(self.cf, self.after.as_deref(), self.n) {
            Ok(raw) => raw,
            Err(e) => {
                self.done = true;
                return Some(Err(e));
            }
        };
        let Some((last, _)) = raw.last() else {
            self.done = true;
            return None;
        };
        self.after = Some(last.clone());
        let mut page = Page {
            rows: Vec::with_capacity(raw.len()),
            bad: Vec::new(),
        };
        for (k, v) in raw {
            match (self.decode)(&k, &v) {
                Some(row) => page.rows.push(row),
                None => page.bad.push(BadRow {
                    cf: self.cf,
                    key: k,
                }),
            }
        }
        Some(Ok(page))
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
        let cfs = Cf::ALL.iter().map(|cf| {
            let mut o = Options::default();
            // LZ4 on the upper levels, zstd at the bottom, where most bytes rest: the guest
            // catalog's rows (paths, JSON entries) shrink several times; without this RocksDB
            // stores them raw (its default, Snappy, is not compiled in).
            o.set_compression_type(DBCompressionType::Lz4);
            o.set_bottommost_compression_type(DBCompressionType::Zstd);
            if *cf == Cf::Counters {
                o.set_merge_operator_associative("add_i64", add_merge);
            }
            ColumnFamilyDescriptor::new(cf.name(), o)
        });
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        Ok(Catalog { db, sync })
    }

    fn cf(&self, cf: Cf) -> &ColumnFamily {
        // Every column family in `Cf::ALL` is created at open.
        #[allow(clippy::expect_used)]
        self.db
            .cf_handle(cf.name())
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

    /// A consistent view of the catalog as of now.
    pub fn snapshot(&self) -> Snapshot<'_> {
        self.db.snapshot()
    }

    /// A counter's value.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn counter(&self, name: &str) -> Result<i64> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(Cf::Counters), name)?
            .map(|v| keys::parse_i64(&v))
            .unwrap_or(0))
    }

    /// A job report.
    ///
    /// # Errors
    /// RocksDB or decoding errors.
    pub fn job(&self, id: &str) -> Result<Option<schema::api::JobStatus>> {
        self.get_json(Cf::Jobs, id, "decoding a job")
    }

    /// Pages of `cf` in key order, `n` rows each, decoded by `decode`.
    fn pages<T>(&self, cf: Cf, n: usize, decode: fn(&[u8], &[u8]) -> Option<T>) -> Pages<'_, T> {
        Pages {
            cat: self,
            cf,
            n: n.max(1),
            after: None,
            done: false,
            decode,
        }
    }

    /// Keys of a column family in order, from `after` (exclusive) on, at most `n` of them, with
    /// values.
    fn slice(&self, cf: Cf, after: Option<&[u8]>, n: usize) -> Result<Vec<RawRow>> {
        let mode = match after {
            Some(k) => IteratorMode::From(k, Direction::Forward),
            None => IteratorMode::Start,
        };
        let mut out = Vec::with_capacity(n.min(65_536));
        for kv in self.db.iterator_cf(self.cf(cf), mode) {
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

    /// Whether `cf` holds any row.
    fn any(&self, cf: Cf) -> Result<bool> {
        match self.db.iterator_cf(self.cf(cf), IteratorMode::Start).next() {
            Some(kv) => kv.map(|_| true).map_err(Into::into),
            None => Ok(false),
        }
    }

    /// A JSON value by key.
    fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        cf: Cf,
        key: impl AsRef<[u8]>,
        what: &str,
    ) -> Result<Option<T>> {
        match self.db.get_pinned_cf(self.cf(cf), key)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| Error::internal(what, e)),
        }
    }

    /// Whether each of `keys` is present in `cf`.
    fn present<K: AsRef<[u8]>>(
        &self,
        cf: Cf,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<Vec<bool>> {
        let h = self.cf(cf);
        self.db
            .multi_get_cf(keys.into_iter().map(|k| (h, k)))
            .into_iter()
            .map(|r| Ok(r?.is_some()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The on-disk names of the column families, as every existing catalog holds them.
    #[test]
    fn column_family_names_are_the_on_disk_names() {
        let names: Vec<&str> = Cf::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(
            names,
            [
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
            ]
        );
        let distinct: std::collections::HashSet<_> = Cf::ALL.iter().collect();
        assert_eq!(distinct.len(), Cf::ALL.len());
    }

    /// A catalog created with the old string list (the same names, without the typed list)
    /// opens, and one created now holds exactly those families.
    #[test]
    fn a_catalog_made_with_the_string_names_opens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("catalog");
        {
            let mut opts = Options::default();
            opts.create_if_missing(true);
            opts.create_missing_column_families(true);
            let names: Vec<&str> = Cf::ALL.iter().map(|c| c.name()).collect();
            let db = DB::open_cf(&opts, &path, &names).expect("old-style open");
            let cf = db.cf_handle("counters").expect("counters");
            db.put_cf(&cf, counter::BACKUPS, 3i64.to_le_bytes())
                .expect("put");
        }
        let cat = Catalog::open(&path).expect("opens");
        assert_eq!(cat.counter(counter::BACKUPS).expect("counter"), 3);
        drop(cat);
        let mut listed = DB::list_cf(&Options::default(), &path).expect("list");
        listed.sort();
        let mut want: Vec<String> = Cf::ALL.iter().map(|c| c.name().to_owned()).collect();
        want.push("default".into());
        want.sort();
        assert_eq!(listed, want);
    }
}
