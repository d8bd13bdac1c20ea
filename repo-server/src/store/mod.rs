//! Where a repository's data lives: chunk frames, index blobs and manifests, behind two small
//! traits so the same repository logic runs on a local directory ([`crate::chunk_store::BlobDir`],
//! [`ManifestDir`]) or on an SMB share (the `gateway` crate). One conformance suite
//! (`tests/tests/it/store.rs`) runs against every implementation.
//!
//! The contract every implementation keeps (the repository's invariants rest on it):
//! - **Durable before success.** When `put`, `replace` or `put_manifest` returns `Ok`, the
//!   object survives a crash of the process and of the file server; a name never shows partial
//!   content (write beside, flush, then rename into place).
//! - **Put if absent.** Blob names are the blake3 of the content, so `put` of a name that exists
//!   changes nothing and returns `false`; `replace` overwrites (to heal a suspect file).
//! - **Idempotent removal.** `delete` of an absent name is `Ok`.
//! - **Errors say what kind.** Unreachable storage is an `io::Error` of a network kind
//!   (`ConnectionReset`, `TimedOut`, ...), which the HTTP layer answers with 503 so clients retry;
//!   `NotFound` means absent.
//! - **Fenced stores refuse, they do not guess.** A store that cannot prove it is the only
//!   writer (the gateway whose lease on its share is lost or not renewed in time) fails every
//!   write, replace, delete and quarantine with a [`Fenced`] error, and [`BlobStore::may_write`]
//!   says so before work that deletes (GC, prune); the HTTP layer answers 503 with the reason.
//!   Reads go on.
//!
//! Every call blocks; callers run them off the async runtime.

use std::io;

use schema::{BackupId, ChunkId};

/// Content-addressed blobs (chunk frames, or index blobs).
pub trait BlobStore: Send + Sync + std::fmt::Debug {
    /// Stores `bytes` as `id` durably; `false` when it already existed (nothing written).
    ///
    /// # Errors
    /// I/O errors; nothing is visible under `id` after an error.
    fn put(&self, id: &ChunkId, bytes: &[u8]) -> io::Result<bool>;

    /// Stores `bytes` as `id` durably, replacing what is there.
    ///
    /// # Errors
    /// I/O errors; the old content or the new one is visible after an error, never a mix.
    fn replace(&self, id: &ChunkId, bytes: &[u8]) -> io::Result<()>;

    /// The whole content of `id`.
    ///
    /// # Errors
    /// `NotFound` when absent.
    fn get(&self, id: &ChunkId) -> io::Result<Vec<u8>>;

    /// Feeds the content of `id` to `sink` in pieces (large index blobs are not held whole).
    ///
    /// # Errors
    /// `NotFound` when absent; errors from `sink`.
    fn stream(
        &self,
        id: &ChunkId,
        sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        sink(&self.get(id)?)
    }

    /// Size of `id`, `None` when absent.
    ///
    /// # Errors
    /// I/O errors other than absence.
    fn len(&self, id: &ChunkId) -> io::Result<Option<u64>>;

    /// Removes `id`; absent is fine.
    ///
    /// # Errors
    /// I/O errors.
    fn delete(&self, id: &ChunkId) -> io::Result<()>;

    /// Every stored id, in no particular order.
    ///
    /// # Errors
    /// I/O errors.
    fn list(&self) -> io::Result<Vec<ChunkId>>;

    /// Moves `id` aside (into a `quarantine/` directory beside the store) for a person to look
    /// at; absent is fine.
    ///
    /// # Errors
    /// I/O errors.
    fn quarantine(&self, id: &ChunkId) -> io::Result<()>;

    /// What kind of storage this is, for `/v1/capabilities` (`local`, `smb`).
    fn kind(&self) -> &'static str;

    /// Whether writes and deletions may go ahead now. A fenced store (see [`Fenced`]) answers
    /// with the error its writes would fail with; local storage always may.
    ///
    /// # Errors
    /// A [`Fenced`] error saying why not.
    fn may_write(&self) -> io::Result<()> {
        Ok(())
    }
}

/// Manifests of committed backups, kept beside the data so a lost catalog can be rebuilt from
/// the store alone (`rescan`).
pub trait ManifestStore: Send + Sync + std::fmt::Debug {
    /// Writes the manifest of `id` durably (replacing an older copy).
    ///
    /// # Errors
    /// I/O errors; the old copy or the new one is visible after an error.
    fn put_manifest(&self, id: &BackupId, json: &[u8]) -> io::Result<()>;

    /// The manifest of `id`.
    ///
    /// # Errors
    /// `NotFound` when absent.
    fn get_manifest(&self, id: &BackupId) -> io::Result<Vec<u8>>;

    /// Removes the manifest of `id`; absent is fine.
    ///
    /// # Errors
    /// I/O errors.
    fn delete_manifest(&self, id: &BackupId) -> io::Result<()>;

    /// Every backup with a manifest.
    ///
    /// # Errors
    /// I/O errors.
    fn list_manifests(&self) -> io::Result<Vec<BackupId>>;
}

/// Manifests as `manifests/<backup id>.json` in a local directory.
#[derive(Debug)]
pub struct ManifestDir {
    root: std::path::PathBuf,
    tmp: std::path::PathBuf,
}

impl ManifestDir {
    /// Opens (creating) `root`; temp files go to `tmp`.
    ///
    /// # Errors
    /// I/O errors creating the directory.
    pub fn open(root: std::path::PathBuf, tmp: std::path::PathBuf) -> io::Result<ManifestDir> {
        std::fs::create_dir_all(&root)?;
        std::fs::create_dir_all(&tmp)?;
        Ok(ManifestDir { root, tmp })
    }

    /// A handle on an existing directory that creates nothing (for the offline check).
    ///
    /// # Errors
    /// `NotFound` when the directory does not exist.
    pub fn open_existing(root: std::path::PathBuf) -> io::Result<ManifestDir> {
        if !root.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "no manifests directory",
            ));
        }
        let tmp = root.parent().unwrap_or(&root).join("tmp");
        Ok(ManifestDir { root, tmp })
    }

    fn path(&self, id: &BackupId) -> std::path::PathBuf {
        self.root.join(format!("{id}.json"))
    }
}

impl ManifestStore for ManifestDir {
    fn put_manifest(&self, id: &BackupId, json: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let tmp = self
            .tmp
            .join(format!("manifest.{id}.{}", std::process::id()));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(json)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, self.path(id))?;
        crate::chunk_store::sync_dir(&self.root)
    }

    fn get_manifest(&self, id: &BackupId) -> io::Result<Vec<u8>> {
        std::fs::read(self.path(id))
    }

    fn delete_manifest(&self, id: &BackupId) -> io::Result<()> {
        match std::fs::remove_file(self.path(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => crate::chunk_store::sync_dir(&self.root),
        }
    }

    fn list_manifests(&self) -> io::Result<Vec<BackupId>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.root)? {
            let name = e?.file_name();
            if let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.parse().ok())
            {
                out.push(id);
            }
        }
        Ok(out)
    }
}

/// Why a store refuses to write or delete: it cannot prove it is the only writer (a gateway
/// that does not hold its share's lease). Carried inside an `io::Error` (see [`fenced`]).
#[derive(Debug)]
pub struct Fenced(pub String);

impl std::fmt::Display for Fenced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Fenced {}

/// The `io::Error` of a store that refuses to write: `reason` says why, for people.
pub fn fenced(reason: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::ResourceBusy, Fenced(reason.into()))
}

/// Whether `e` is a store's refusal to write ([`fenced`]); the HTTP layer answers it with 503.
pub fn is_fenced(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Fenced>())
}

/// Whether an I/O error means the storage could not be reached (answer 503, retry later)
/// rather than that something is wrong with the data.
pub fn is_unreachable(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionReset
            | ConnectionAborted
            | ConnectionRefused
            | NotConnected
            | BrokenPipe
            | TimedOut
            | HostUnreachable
            | NetworkUnreachable
            | NetworkDown
    )
}
