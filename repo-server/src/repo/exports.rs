//! NBD exports as capabilities: which committed disk a random export name opens, for whom, until
//! when.
//!
//! An export is created by an admin or the backup's tenant (whoever may read the backup) and is
//! named by 192 random bits: knowing the name is the permission to read the disk, so the NBD
//! server needs no token (NBD has none). The table lives in memory only: a restart ends every
//! export (a client then gets "unknown export" and asks for a new one). While an export of a
//! backup is live the backup is pinned: `delete_checked` (API delete and prune) refuses it with
//! `BACKUP_IN_USE`, so GC keeps its chunks (they stay reachable from the catalog). The check and
//! the deletion happen under the table's lock, which export creation takes too, so an export is
//! never made for a backup that is being deleted. An expired export stops pinning at once (the
//! check compares with [`Repository::now`]); it is dropped from the table on the next creation.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use schema::api::ExportInfo;
use schema::{BackupId, DiskName, ErrorCode};

use super::read::DiskImage;
use super::Repository;
use crate::auth::Caller;
use crate::error::{Error, Result};

/// Random bytes in an export name.
const NAME_BYTES: usize = 24;

/// One live (or just ended) export.
#[derive(Debug)]
pub struct Export {
    /// The capability: hex of [`NAME_BYTES`] random bytes.
    pub name: String,
    /// The backup.
    pub backup: BackupId,
    /// The backup's tenant (who may delete the export besides an admin).
    pub tenant: String,
    /// The disk, opened: its manifest entry and one chunk id per block.
    pub image: DiskImage,
    /// End of life, Unix ms (the repository's clock).
    pub expires_ms: i64,
    revoked: AtomicBool,
}

impl Export {
    /// Whether the export may still be read at `now_ms`: neither deleted nor expired.
    pub fn live(&self, now_ms: i64) -> bool {
        !self.revoked.load(Ordering::Relaxed) && now_ms < self.expires_ms
    }
}

/// The table's contents.
#[derive(Debug, Default)]
struct Inner {
    by_name: HashMap<String, Arc<Export>>,
    /// `host:port` for URIs, set by [`crate::nbd`] once it has bound; none while no NBD
    /// server runs.
    address: Option<String>,
}

/// The export table (in memory).
#[derive(Debug, Default)]
pub struct ExportTable {
    inner: Mutex<Inner>,
}

/// The table, locked: held by a deletion across its check and its catalog write.
#[derive(Debug)]
pub(crate) struct Locked<'a>(MutexGuard<'a, Inner>);

impl Locked<'_> {
    /// The latest expiry of a live export of `backup`, if any.
    pub(crate) fn pinned_until(&self, backup: &BackupId, now_ms: i64) -> Option<i64> {
        self.0
            .by_name
            .values()
            .filter(|e| &e.backup == backup && e.live(now_ms))
            .map(|e| e.expires_ms)
            .max()
    }
}

impl ExportTable {
    pub(crate) fn lock(&self) -> Locked<'_> {
        Locked(self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Records that the NBD server serves at `host_port` (what export URIs name).
    pub fn set_address(&self, host_port: String) {
        self.lock().0.address = Some(host_port);
    }

    /// The export called `name`, if it is live at `now_ms`.
    pub fn open(&self, name: &str, now_ms: i64) -> Option<Arc<Export>> {
        self.lock()
            .0
            .by_name
            .get(name)
            .filter(|e| e.live(now_ms))
            .cloned()
    }

    /// Exports in the table (live or not yet purged).
    pub fn len(&self) -> usize {
        self.lock().0.by_name.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn random_name() -> Result<String> {
    let mut raw = [0u8; NAME_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut raw))
        .map_err(|e| Error::internal("drawing an export name", e))?;
    Ok(schema::id::to_hex(&raw))
}

impl Repository {
    /// `POST /v1/backups/{id}/disks/{name}/exports`: serves one disk of a committed backup over
    /// NBD until the export expires (`ttl_s`, at most and by default `[nbd] ttl`) or is deleted.
    ///
    /// # Errors
    /// 404 for a backup or disk the caller may not see, 409 `EXPORTS_DISABLED` without an NBD
    /// server, 409 `ENCRYPTED` for an encrypted backup, 422 for a ttl of 0 or over the limit, 503 when `[nbd] max_exports` are live.
    pub fn create_export(
        &self,
        caller: &Caller,
        id: &BackupId,
        disk: &DiskName,
        ttl_s: Option<u64>,
    ) -> Result<ExportInfo> {
        let max_ms = self.settings.export_ttl_ms;
        let ttl_ms = match ttl_s {
            None => max_ms,
            Some(s) if s > 0 && (s as i64).saturating_mul(1000) <= max_ms => s as i64 * 1000,
            Some(s) => {
                return Err(Error::new(
                    ErrorCode::InvalidBody,
                    format!(
                        "ttl_s {s} must be between 1 and {} (the repository's [nbd] ttl)",
                        max_ms / 1000
                    ),
                ))
            }
        };
        if self.exports.lock().0.address.is_none() {
            return Err(Error::new(
                ErrorCode::ExportsDisabled,
                "this repository serves no NBD exports (set [nbd] listen in its configuration)",
            ));
        }
        let tenant = self.manifest(caller, id)?.tenant;
        // An encrypted backup's chunks are sealed: the repository cannot serve their bytes.
        let image = self.plain_image(caller, id, disk)?;
        let name = random_name()?;
        let now = self.now();
        let mut t = self.exports.lock();
        t.0.by_name.retain(|_, e| e.live(now));
        if t.0.by_name.len() >= self.settings.max_exports {
            return Err(Error::new(
                ErrorCode::Unavailable,
                format!(
                    "{} exports are open, the most this repository serves ([nbd] max_exports); delete one or wait for one to expire",
                    t.0.by_name.len()
                ),
            ));
        }
        // Under the table's lock, which deletions hold across their check and write: the
        // backup is either still there (and now pinned) or gone.
        if self.catalog.backup(id)?.is_none() {
            return Err(Error::not_found(format!("backup {id}")));
        }
        let address = t.0.address.clone().unwrap_or_default();
        let export = Arc::new(Export {
            name: name.clone(),
            backup: id.clone(),
            tenant,
            expires_ms: now + ttl_ms,
            revoked: AtomicBool::new(false),
            image,
        });
        let info = ExportInfo {
            uri: format!("nbd://{address}/{name}"),
            name: name.clone(),
            backup_id: id.clone(),
            disk: disk.clone(),
            size: export.image.disk.size,
            expires: schema::time::rfc3339(export.expires_ms),
        };
        t.0.by_name.insert(name, export);
        tracing::info!(backup = %id, disk = %disk, expires = %info.expires, "NBD export created");
        Ok(info)
    }

    /// `DELETE /v1/backups/{id}/disks/{name}/exports/{export}`: ends an export. Its open
    /// connections get `ESHUTDOWN` on their next request and are closed.
    ///
    /// # Errors
    /// 404 when no such export of that disk exists for the caller (expired ones included).
    pub fn delete_export(
        &self,
        caller: &Caller,
        id: &BackupId,
        disk: &DiskName,
        name: &str,
    ) -> Result<()> {
        let now = self.now();
        let mut t = self.exports.lock();
        let found = t.0.by_name.get(name).filter(|e| {
            e.live(now) && &e.backup == id && &e.image.disk.name == disk && caller.sees(&e.tenant)
        });
        let Some(e) = found.cloned() else {
            return Err(Error::not_found(format!(
                "export of disk {disk} in backup {id}"
            )));
        };
        e.revoked.store(true, Ordering::Relaxed);
        t.0.by_name.remove(name);
        tracing::info!(backup = %id, disk = %disk, "NBD export deleted");
        Ok(())
    }
}
