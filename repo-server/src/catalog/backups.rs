//! Committed backups: their manifests (`backups`), the time indexes that list them newest first
//! (`backup_time`), and the retention policies set over the API (`policies`).

use std::collections::{BTreeMap, HashSet};

use rocksdb::IteratorMode;
use schema::api::Manifest;
use schema::BackupId;

use super::keys;
use super::{Batch, Catalog, Cf, Snapshot};
use crate::error::{Error, Result};

/// Which backups a time-index walk lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupScope<'a> {
    /// Every backup.
    All,
    /// One tenant's.
    Tenant(&'a str),
    /// One source's of one tenant.
    Source {
        /// The tenant.
        tenant: &'a str,
        /// The source.
        source: &'a str,
    },
}

/// A time-index key the offline check found stale or missing (opaque; shown in hex).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TimeKey(Box<[u8]>);

impl std::fmt::Display for TimeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0.iter() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for TimeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TimeKey({self})")
    }
}

/// What the time indexes hold that the manifests do not explain, and what they lack.
#[derive(Debug, Default)]
pub struct TimeIndexCheck {
    /// Keys of no backup (in key order).
    pub stale: Vec<TimeKey>,
    /// Keys of a backup that are not there.
    pub missing: Vec<TimeKey>,
}

impl Batch<'_> {
    /// Stores a manifest and its time-index keys.
    ///
    /// # Errors
    /// Encoding errors.
    pub fn put_backup(&mut self, m: &Manifest, created_ms: i64) -> Result<()> {
        let v = serde_json::to_vec(m).map_err(|e| Error::internal("encoding a manifest", e))?;
        self.put(Cf::Backups, m.id.as_str(), v);
        for k in keys::backup_time(m, created_ms) {
            self.put(Cf::BackupTime, k, []);
        }
        Ok(())
    }

    /// Removes a manifest and its time-index keys.
    pub fn delete_backup(&mut self, m: &Manifest, created_ms: i64) {
        self.delete(Cf::Backups, m.id.as_str());
        for k in keys::backup_time(m, created_ms) {
            self.delete(Cf::BackupTime, k);
        }
    }

    /// Removes a stale time-index key (offline repair).
    pub fn delete_time_key(&mut self, k: &TimeKey) {
        self.delete(Cf::BackupTime, &k.0);
    }

    /// Writes a missing time-index key (offline repair).
    pub fn put_time_key(&mut self, k: &TimeKey) {
        self.put(Cf::BackupTime, &k.0, []);
    }

    /// Stores a retention policy set over the API.
    ///
    /// # Errors
    /// Encoding errors.
    pub fn put_policy(&mut self, source: &str, p: &schema::retention::Policy) -> Result<()> {
        let v = serde_json::to_vec(p).map_err(|e| Error::internal("encoding a policy", e))?;
        self.put(Cf::Policies, source, v);
        Ok(())
    }

    /// Removes a policy set over the API.
    pub fn delete_policy(&mut self, source: &str) {
        self.delete(Cf::Policies, source);
    }
}

impl Catalog {
    /// A manifest.
    ///
    /// # Errors
    /// RocksDB or decoding errors.
    pub fn backup(&self, id: &BackupId) -> Result<Option<Manifest>> {
        self.get_json(Cf::Backups, id.as_str(), "decoding a manifest")
    }

    /// Every manifest.
    ///
    /// # Errors
    /// RocksDB or decoding errors; errors from `f`.
    pub fn for_each_backup(&self, f: impl FnMut(Manifest) -> Result<()>) -> Result<()> {
        each_manifest(
            self.db
                .iterator_cf(self.cf(Cf::Backups), IteratorMode::Start),
            f,
        )
    }

    /// Every manifest in a snapshot.
    ///
    /// # Errors
    /// RocksDB or decoding errors; errors from `f`.
    pub fn for_each_backup_in(
        &self,
        snap: &Snapshot<'_>,
        f: impl FnMut(Manifest) -> Result<()>,
    ) -> Result<()> {
        each_manifest(
            snap.iterator_cf(self.cf(Cf::Backups), IteratorMode::Start),
            f,
        )
    }

    /// Walks the backups of `scope` newest first, starting strictly below `before` (a time and
    /// a backup id; the empty id stands below every backup of that time) when given; `f` gets
    /// each (ms, id) and returns whether to go on.
    ///
    /// # Errors
    /// RocksDB errors; errors from `f`.
    pub fn backups_newest_first(
        &self,
        scope: BackupScope<'_>,
        before: Option<(i64, &str)>,
        mut f: impl FnMut(i64, &str) -> Result<bool>,
    ) -> Result<()> {
        let prefix = match scope {
            BackupScope::All => keys::time_prefix_all(),
            BackupScope::Tenant(t) => keys::time_prefix_tenant(t),
            BackupScope::Source { tenant, source } => keys::time_prefix_source(tenant, source),
        };
        let mut it = self.db.raw_iterator_cf(self.cf(Cf::BackupTime));
        let mut seek = prefix.clone();
        match before {
            Some((ms, id)) => {
                seek.extend_from_slice(&keys::time_suffix(ms, id));
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
            if !k.starts_with(&prefix) {
                break;
            }
            let Some((ms, id)) = keys::parse_time_suffix(&k[prefix.len()..]) else {
                break;
            };
            if !f(ms, id)? {
                break;
            }
            it.prev();
        }
        it.status()?;
        Ok(())
    }

    /// The time indexes against `manifests` (every backup of the catalog): keys no backup
    /// explains, and keys a backup should have and has not. Reads the index a page at a time;
    /// holds three keys per backup.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn check_time_index(&self, manifests: &[Manifest]) -> Result<TimeIndexCheck> {
        let mut expected = HashSet::new();
        for m in manifests {
            let created = schema::time::parse_rfc3339(&m.created).unwrap_or(0);
            for k in keys::backup_time(m, created) {
                expected.insert(k.into_boxed_slice());
            }
        }
        let mut out = TimeIndexCheck::default();
        let mut present = HashSet::new();
        for page in self.pages(Cf::BackupTime, 4_096, |k, _| {
            Some(k.to_vec().into_boxed_slice())
        }) {
            for k in page?.rows {
                if expected.contains(&k) {
                    present.insert(k);
                } else {
                    out.stale.push(TimeKey(k));
                }
            }
        }
        out.missing = expected
            .difference(&present)
            .map(|k| TimeKey(k.clone()))
            .collect();
        Ok(out)
    }

    /// Policies set over the API, by source.
    ///
    /// # Errors
    /// RocksDB or decoding errors.
    pub fn policies(&self) -> Result<BTreeMap<String, schema::retention::Policy>> {
        let mut out = BTreeMap::new();
        for kv in self
            .db
            .iterator_cf(self.cf(Cf::Policies), IteratorMode::Start)
        {
            let (k, v) = kv?;
            out.insert(
                String::from_utf8_lossy(&k).into_owned(),
                serde_json::from_slice(&v).map_err(|e| Error::internal("decoding a policy", e))?,
            );
        }
        Ok(out)
    }
}

type Kv = std::result::Result<super::RawRow, rocksdb::Error>;

fn each_manifest(
    rows: impl Iterator<Item = Kv>,
    mut f: impl FnMut(Manifest) -> Result<()>,
) -> Result<()> {
    for kv in rows {
        let (_, v) = kv?;
        f(serde_json::from_slice(&v).map_err(|e| Error::internal("decoding a manifest", e))?)?;
    }
    Ok(())
}
