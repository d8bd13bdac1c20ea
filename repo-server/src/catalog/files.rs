//! The guest file catalog: each backup's file entries by directory (`files`), every entry by
//! file name across a tenant's backups, newest first (`names`), and each tenant's distinct file
//! names (`name_set`), which a glob search walks instead of every row.

use rocksdb::{Direction, IteratorMode, WriteBatch};
use schema::api::Manifest;
use schema::files::FileEntry;

use super::{keys, Batch, Catalog, Cf, Pages};
use crate::error::{Error, Result};

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

impl<'a> NameRow<'a> {
    fn parse(tenant_len: usize, k: &'a [u8], v: &'a [u8]) -> Option<NameRow<'a>> {
        let k = keys::parse_name(tenant_len, k)?;
        Some(NameRow {
            name: k.name,
            created_ms: k.created_ms,
            backup: k.backup,
            disk: k.disk,
            partition: k.partition,
            path: k.path,
            value: v,
        })
    }

    /// The row as an owned hit (`None` for a row that is not UTF-8, which commit never writes).
    pub fn to_hit(&self) -> Option<NameHit> {
        let s = |b: &[u8]| std::str::from_utf8(b).ok().map(str::to_owned);
        let (size, mtime) = keys::parse_name_value(self.value)?;
        Some(NameHit {
            name: s(self.name)?,
            created_ms: self.created_ms,
            backup: s(self.backup)?,
            disk: s(self.disk)?,
            partition: self.partition,
            path: s(self.path)?,
            size,
            mtime,
        })
    }
}

/// One `name_set` row: `name` occurs (or occurred) in a backup of `tenant`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistinctName {
    /// The tenant.
    pub tenant: String,
    /// The file name.
    pub name: String,
}

impl Batch<'_> {
    /// Stores one entry of a backup's file index: its `files` row, its `names` row and its
    /// name in `name_set`.
    ///
    /// # Errors
    /// Encoding errors.
    pub fn put_file(
        &mut self,
        m: &Manifest,
        created_ms: i64,
        disk: &str,
        part: u32,
        e: &FileEntry,
    ) -> Result<()> {
        let id = m.id.as_str();
        let k = keys::file(id, disk, part, e.parent(), e.name());
        let v = serde_json::to_vec(e).map_err(|e| Error::internal("encoding a file entry", e))?;
        self.put(Cf::Files, k, v);
        let nk = keys::name(&m.tenant, e.name(), created_ms, id, disk, part, &e.path);
        self.put(Cf::Names, nk, keys::name_value(e.size, e.mtime));
        self.put(
            Cf::NameSet,
            keys::name_set(&m.tenant, e.name().as_bytes()),
            [],
        );
        Ok(())
    }

    /// Adds the removal of a backup's whole file catalog: its `names` rows (found through its
    /// `files` rows, read now) and its `files` rows. Distinct names stay; GC removes those no
    /// backup has any more.
    ///
    /// # Errors
    /// RocksDB or decoding errors.
    pub fn delete_file_catalog(&mut self, m: &Manifest, created_ms: i64) -> Result<()> {
        let cat = self.cat;
        let id = m.id.as_str();
        for r in &m.file_indexes {
            let (disk, part) = (r.disk.as_str(), r.partition);
            cat.files_in(id, disk, part, None, usize::MAX, |e| {
                let k = keys::name(&m.tenant, e.name(), created_ms, id, disk, part, &e.path);
                self.delete(Cf::Names, k);
                Ok(())
            })?;
        }
        let (start, end) = (keys::files_of_backup(id), keys::files_of_backup_end(id));
        self.wb
            .delete_range_cf(cat.cf(Cf::Files), start.as_slice(), end.as_slice());
        Ok(())
    }

    /// Removes a distinct name (GC, once no `names` row has it).
    pub fn delete_distinct_name(&mut self, n: &DistinctName) {
        self.delete(Cf::NameSet, keys::name_set(&n.tenant, n.name.as_bytes()));
    }
}

impl Catalog {
    /// The entries of one file system of a backup in key order: a directory's children when
    /// `dir` is given, else every entry. Calls `f` with at most `limit` of them; returns whether
    /// more were left.
    ///
    /// # Errors
    /// RocksDB or decoding errors; errors from `f`.
    pub fn files_in(
        &self,
        backup: &str,
        disk: &str,
        part: u32,
        dir: Option<&str>,
        limit: usize,
        mut f: impl FnMut(FileEntry) -> Result<()>,
    ) -> Result<bool> {
        let prefix = keys::files_prefix(backup, disk, part, dir);
        for (n, kv) in self
            .db
            .iterator_cf(
                self.cf(Cf::Files),
                IteratorMode::From(&prefix, Direction::Forward),
            )
            .enumerate()
        {
            let (k, v) = kv?;
            if !k.starts_with(&prefix) {
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
    ) -> Result<Option<FileEntry>> {
        let (parent, name) = schema::files::split(path);
        let k = keys::file(backup, disk, part, parent, name);
        self.get_json(Cf::Files, k, "decoding a file entry")
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
        let start = keys::name_set(tenant, literal.as_bytes());
        let names_at = tenant.len() + 1;
        let mut it = self.db.raw_iterator_cf(self.cf(Cf::NameSet));
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

    /// Calls `f` with every `names` row of `tenant` whose file name matches `glob` only when
    /// case is ignored ([`schema::files::name_match_in`]): what [`Catalog::search_names`] does
    /// not find, for a search that covers case-insensitive (NTFS) indexes. It walks `name_set`
    /// from each case variant of the glob's first three literal characters (at most 27 seeks),
    /// so its cost follows the distinct names sharing that folded prefix. Returns `true` when
    /// it stopped after `max_steps` steps.
    ///
    /// # Errors
    /// RocksDB errors; errors from `f`.
    pub fn search_names_other_case(
        &self,
        tenant: &str,
        glob: &str,
        max_steps: usize,
        mut f: impl FnMut(&NameRow<'_>) -> Result<()>,
    ) -> Result<bool> {
        let mut steps = 0usize;
        let mut starts = vec![String::new()];
        for c in schema::files::literal_prefix(glob).chars().take(3) {
            let mut cs: Vec<char> = [c]
                .into_iter()
                .chain(c.to_uppercase())
                .chain(c.to_lowercase())
                .collect();
            cs.sort_unstable();
            cs.dedup();
            starts = starts
                .iter()
                .flat_map(|s| cs.iter().map(move |c| format!("{s}{c}")))
                .collect();
        }
        let names_at = tenant.len() + 1;
        let mut it = self.db.raw_iterator_cf(self.cf(Cf::NameSet));
        for s in &starts {
            let start = keys::name_set(tenant, s.as_bytes());
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
                let other_case = std::str::from_utf8(name).is_ok_and(|n| {
                    !schema::files::name_match(glob.as_bytes(), name)
                        && schema::files::name_match_in(glob, n, true)
                });
                if other_case && self.rows_of_name(tenant, name, &mut steps, max_steps, &mut f)? {
                    return Ok(true);
                }
                it.next();
            }
            it.status()?;
        }
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
        let prefix = keys::name_rows(tenant, name);
        let mut it = self.db.raw_iterator_cf(self.cf(Cf::Names));
        it.seek(&prefix);
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if !k.starts_with(&prefix) {
                break;
            }
            *steps += 1;
            if *steps > max_steps {
                return Ok(true);
            }
            if let Some(row) = NameRow::parse(tenant.len(), k, v) {
                f(&row)?;
            }
            it.next();
        }
        it.status()?;
        Ok(false)
    }

    /// Every distinct name, `n` a page.
    pub fn name_set_pages(&self, n: usize) -> Pages<'_, DistinctName> {
        self.pages(Cf::NameSet, n, |k, _| {
            keys::parse_name_set(k).map(|(tenant, name)| DistinctName { tenant, name })
        })
    }

    /// The names among `names` with no row left in `names`.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn unused_names(&self, names: &[DistinctName]) -> Result<Vec<DistinctName>> {
        let mut out = Vec::new();
        let mut it = self.db.raw_iterator_cf(self.cf(Cf::Names));
        for n in names {
            let prefix = keys::name_rows(&n.tenant, n.name.as_bytes());
            it.seek(&prefix);
            if !it.key().is_some_and(|r| r.starts_with(&prefix)) {
                out.push(n.clone());
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
        if self.any(Cf::NameSet)? {
            return Ok(0);
        }
        let cf = self.cf(Cf::NameSet);
        let mut wb = WriteBatch::default();
        let mut last: Vec<u8> = Vec::new();
        let mut added = 0u64;
        for kv in self.db.iterator_cf(self.cf(Cf::Names), IteratorMode::Start) {
            let (k, _) = kv?;
            let Some(key) = keys::name_set_of_name(&k) else {
                continue;
            };
            if key != last.as_slice() {
                wb.put_cf(cf, key, []);
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
}
