//! The local store: content-addressed files in a directory tree ([`BlobDir`]: chunks as
//! `chunks/ab/cd/<64 hex>`, one zstd frame each; index blobs as `indexes/ab/<64 hex>`, one
//! 32-byte id per block) and manifests as `manifests/<backup id>.json` ([`ManifestDir`]), in the
//! [`layout`] the SMB share uses too.
//!
//! Durability: a file is written to `tmp/` under a unique name, fsynced, renamed into place and
//! its directory fsynced before [`BlobStore::put`] returns, so a name that exists always holds
//! complete content. Duplicate policy: the name is the blake3 of the content, so writing a name
//! that already exists is a no-op that reports `false`. Names come only from parsed [`ChunkId`]s,
//! never from request text, so nothing outside the data dir can be named.
//!
//! Every function here blocks; callers run them off the async runtime.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use schema::{BackupId, ChunkId};
use stdx::durable::sync_dir;

use super::{layout, BlobStore, ManifestStore, Page};

/// One directory of content-addressed files.
#[derive(Debug)]
pub struct BlobDir {
    root: PathBuf,
    tmp: PathBuf,
    /// Levels of two-hex-digit fan-out directories (2 for chunks, 1 for indexes).
    levels: usize,
    seq: AtomicU64,
}

/// Deletes a temp file unless it was renamed into place.
struct TempGuard<'a>(Option<&'a Path>);

impl Drop for TempGuard<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

impl BlobDir {
    /// Opens (creating) `root` with its `tmp/` directory, and removes leftover temp files.
    ///
    /// # Errors
    /// I/O errors creating the directories.
    pub fn open(root: PathBuf, tmp: PathBuf, levels: usize) -> io::Result<BlobDir> {
        fs::create_dir_all(&root)?;
        fs::create_dir_all(&tmp)?;
        let dir = BlobDir::existing(root, tmp, levels);
        for p in dir.temp_files()? {
            let _ = fs::remove_file(p);
        }
        sync_dir(dir.root.parent().unwrap_or(&dir.root))?;
        Ok(dir)
    }

    /// A handle on an existing directory that changes nothing on disk (no creation, no
    /// clean-up of temp files): for the offline check, which must report before it repairs.
    pub fn existing(root: PathBuf, tmp: PathBuf, levels: usize) -> BlobDir {
        BlobDir {
            root,
            tmp,
            levels,
            seq: AtomicU64::new(0),
        }
    }

    /// Where the file of `id` lives.
    pub fn path(&self, id: &ChunkId) -> PathBuf {
        self.root.join(layout::blob_path(id, self.levels))
    }

    /// Whether the file of `id` exists.
    pub fn exists(&self, id: &ChunkId) -> bool {
        self.path(id).is_file()
    }

    fn write(&self, id: &ChunkId, bytes: &[u8], replace: bool) -> io::Result<bool> {
        let dest = self.path(id);
        if !replace && dest.is_file() {
            return Ok(false);
        }
        let dir = dest.parent().unwrap_or(&self.root).to_owned();
        if !dir.is_dir() {
            fs::create_dir_all(&dir)?;
            // Make the new fan-out directories themselves durable.
            let mut d = dir.as_path();
            while d != self.root {
                let parent = d.parent().unwrap_or(&self.root);
                sync_dir(parent)?;
                d = parent;
            }
        }
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self.tmp.join(format!(
            "{}.{}.{}.{}",
            root_tag(&self.root),
            id.hex(),
            std::process::id(),
            n
        ));
        // The steps of `stdx::durable::persist`, spelt out so the crash tests' fail points sit
        // between them.
        let mut guard = TempGuard(Some(&tmp));
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        crate::fail::hit("blob.before_fsync");
        f.sync_all()?;
        drop(f);
        crate::fail::hit("blob.before_rename");
        fs::rename(&tmp, &dest)?;
        guard.0 = None;
        sync_dir(&dir)?;
        crate::fail::hit("blob.after_rename");
        Ok(true)
    }

    /// The ids with a file, in slices of at most `slice` (ascending; memory: one slice and one
    /// directory's names).
    ///
    /// # Errors
    /// I/O errors reading directories; errors from `f`.
    pub fn for_each_slice<E: From<io::Error>>(
        &self,
        slice: usize,
        mut f: impl FnMut(Vec<ChunkId>) -> Result<(), E>,
    ) -> Result<(), E> {
        for ids in super::pages(slice, |after, n| self.list(after, n)) {
            f(ids?)?;
        }
        Ok(())
    }

    /// The temp directory's files that belong to this directory (left by an interrupted write).
    ///
    /// # Errors
    /// I/O errors.
    pub fn temp_files(&self) -> io::Result<Vec<PathBuf>> {
        let tag = format!("{}.", root_tag(&self.root));
        let mut out = Vec::new();
        if self.tmp.is_dir() {
            for entry in fs::read_dir(&self.tmp)? {
                let entry = entry?;
                if entry.file_name().to_string_lossy().starts_with(&tag) {
                    out.push(entry.path());
                }
            }
        }
        Ok(out)
    }
}

impl BlobStore for BlobDir {
    fn put(&self, id: &ChunkId, bytes: &[u8]) -> io::Result<bool> {
        self.write(id, bytes, false)
    }

    fn replace(&self, id: &ChunkId, bytes: &[u8]) -> io::Result<()> {
        self.write(id, bytes, true).map(|_| ())
    }

    fn get(&self, id: &ChunkId) -> io::Result<Vec<u8>> {
        fs::read(self.path(id))
    }

    fn stream(
        &self,
        id: &ChunkId,
        sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        use std::io::Read;
        let mut f = File::open(self.path(id))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            sink(&buf[..n])?;
        }
    }

    fn len(&self, id: &ChunkId) -> io::Result<Option<u64>> {
        match fs::metadata(self.path(id)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn delete(&self, id: &ChunkId) -> io::Result<()> {
        remove(&self.path(id))
    }

    fn list(&self, after: Option<&ChunkId>, limit: usize) -> io::Result<Page<ChunkId>> {
        layout::list_tree(self.levels, after, limit, &mut |dir| {
            read_dir(&self.root.join(dir))
        })
    }

    fn quarantine(&self, id: &ChunkId) -> io::Result<()> {
        let q = self
            .root
            .parent()
            .unwrap_or(&self.root)
            .join(layout::QUARANTINE);
        fs::create_dir_all(&q)?;
        match fs::rename(self.path(id), q.join(id.hex())) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn kind(&self) -> &'static str {
        "local"
    }
}

/// Manifests as `manifests/<backup id>.json` in a local directory.
#[derive(Debug)]
pub struct ManifestDir {
    root: PathBuf,
    tmp: PathBuf,
}

impl ManifestDir {
    /// Opens (creating) `root`; temp files go to `tmp`.
    ///
    /// # Errors
    /// I/O errors creating the directory.
    pub fn open(root: PathBuf, tmp: PathBuf) -> io::Result<ManifestDir> {
        fs::create_dir_all(&root)?;
        fs::create_dir_all(&tmp)?;
        Ok(ManifestDir { root, tmp })
    }

    /// A handle on an existing directory that creates nothing (for the offline check).
    ///
    /// # Errors
    /// `NotFound` when the directory does not exist.
    pub fn open_existing(root: PathBuf) -> io::Result<ManifestDir> {
        if !root.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "no manifests directory",
            ));
        }
        let tmp = root.parent().unwrap_or(&root).join(layout::TMP);
        Ok(ManifestDir { root, tmp })
    }

    fn path(&self, id: &BackupId) -> PathBuf {
        self.root.join(layout::manifest_name(id))
    }
}

impl ManifestStore for ManifestDir {
    fn put_manifest(&self, id: &BackupId, json: &[u8]) -> io::Result<()> {
        let tmp = self
            .tmp
            .join(format!("manifest.{id}.{}", std::process::id()));
        let written = File::create(&tmp).and_then(|mut f| {
            f.write_all(json)?;
            stdx::durable::persist(f, &tmp, &self.path(id))
        });
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written
    }

    fn get_manifest(&self, id: &BackupId) -> io::Result<Vec<u8>> {
        fs::read(self.path(id))
    }

    fn delete_manifest(&self, id: &BackupId) -> io::Result<()> {
        remove(&self.path(id))?;
        sync_dir(&self.root)
    }

    fn list_manifests(&self, after: Option<&BackupId>, limit: usize) -> io::Result<Page<BackupId>> {
        let names = read_dir(&self.root)?
            .into_iter()
            .filter(|(_, is_dir)| !is_dir)
            .map(|(name, _)| name)
            .collect();
        Ok(layout::list_manifests(names, after, limit))
    }
}

/// Removes `path`; absent is fine.
fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The entries of `dir` as (name, is a directory); empty when it does not exist. Names that are
/// not UTF-8 are left out (no store writes them).
fn read_dir(dir: &Path) -> io::Result<Vec<(String, bool)>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        if let Ok(name) = entry.file_name().into_string() {
            out.push((name, entry.file_type()?.is_dir()));
        }
    }
    Ok(out)
}

fn root_tag(root: &Path) -> String {
    root.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_list_delete() {
        let d = tempfile::tempdir().expect("tempdir");
        let s = BlobDir::open(d.path().join("chunks"), d.path().join("tmp"), 2).expect("open");
        let id = ChunkId::of(b"x");
        assert!(s.put(&id, b"frame").expect("put"));
        assert!(!s.put(&id, b"frame").expect("second put is a no-op"));
        assert_eq!(s.get(&id).expect("get"), b"frame");
        let hex = id.hex();
        assert!(d
            .path()
            .join(format!("chunks/{}/{}/{hex}", &hex[..2], &hex[2..4]))
            .is_file());
        assert_eq!(s.list(None, 10).expect("list"), Page::of(vec![id], 10));
        assert_eq!(fs::read_dir(d.path().join("tmp")).expect("tmp").count(), 0);
        s.delete(&id).expect("delete");
        s.delete(&id).expect("delete again");
        assert!(!s.exists(&id));
    }
}
