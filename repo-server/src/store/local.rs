//! Content-addressed files: chunks (`chunks/ab/cd/<64 hex>`, one zstd frame each) and index
//! blobs (`indexes/ab/<64 hex>`, one 32-byte id per block).
//!
//! Durability: a file is written to `tmp/` under a unique name, fsynced, renamed into place and
//! its directory fsynced before [`BlobDir::put`] returns, so a name that exists always holds
//! complete content. Duplicate policy: the name is the blake3 of the content, so writing a name
//! that already exists is a no-op that reports `false`. Names come only from parsed [`ChunkId`]s,
//! never from request text, so nothing outside the data dir can be named.
//!
//! Every function here blocks; callers run them off the async runtime.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use schema::ChunkId;

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

    /// Calls `f` with the ids of each leaf directory in turn (memory: one directory's names).
    ///
    /// # Errors
    /// I/O errors reading directories; errors from `f`.
    pub fn for_each_leaf<E: From<io::Error>>(
        &self,
        mut f: impl FnMut(Vec<ChunkId>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut stack = vec![(self.root.clone(), 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            let mut ids = Vec::new();
            for entry in fs::read_dir(&dir)? {
                let entry = entry?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if depth < self.levels {
                    if entry.file_type()?.is_dir() && name.len() == 2 {
                        stack.push((entry.path(), depth + 1));
                    }
                } else if let Some(raw) = schema::id::from_hex::<32>(&name) {
                    ids.push(ChunkId(raw));
                }
            }
            if !ids.is_empty() {
                f(ids)?;
            }
        }
        Ok(())
    }

    /// Where the file of `id` lives.
    pub fn path(&self, id: &ChunkId) -> PathBuf {
        let hex = id.hex();
        let mut p = self.root.clone();
        for level in 0..self.levels {
            p.push(&hex[level * 2..level * 2 + 2]);
        }
        p.push(hex);
        p
    }

    /// Whether the file of `id` exists.
    pub fn exists(&self, id: &ChunkId) -> bool {
        self.path(id).is_file()
    }

    /// Reads the whole file of `id`.
    ///
    /// # Errors
    /// `NotFound` when absent, other I/O errors.
    pub fn get(&self, id: &ChunkId) -> io::Result<Vec<u8>> {
        fs::read(self.path(id))
    }

    /// Size of the file of `id`.
    ///
    /// # Errors
    /// `NotFound` when absent.
    pub fn len(&self, id: &ChunkId) -> io::Result<u64> {
        fs::metadata(self.path(id)).map(|m| m.len())
    }

    /// Writes `bytes` as the file of `id`, durably. Returns `false` when it already existed.
    ///
    /// # Errors
    /// I/O errors (a full disk among them); nothing is left behind on error.
    pub fn put(&self, id: &ChunkId, bytes: &[u8]) -> io::Result<bool> {
        self.write(id, bytes, false)
    }

    /// Writes `bytes` as the file of `id` durably, replacing it in one rename if it exists.
    ///
    /// # Errors
    /// I/O errors; the old file or the new one is in place, never a mix.
    pub fn replace(&self, id: &ChunkId, bytes: &[u8]) -> io::Result<()> {
        self.write(id, bytes, true).map(|_| ())
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

    /// Removes the file of `id` (absent is fine).
    ///
    /// # Errors
    /// I/O errors other than `NotFound`.
    pub fn delete(&self, id: &ChunkId) -> io::Result<()> {
        match fs::remove_file(self.path(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every id with a file, in no particular order (file names that are not ids are skipped).
    ///
    /// # Errors
    /// I/O errors reading directories.
    pub fn list(&self) -> io::Result<Vec<ChunkId>> {
        let mut out = Vec::new();
        self.for_each_leaf(|ids| {
            out.extend(ids);
            Ok::<(), io::Error>(())
        })?;
        Ok(out)
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

impl crate::store::BlobStore for BlobDir {
    fn put(&self, id: &ChunkId, bytes: &[u8]) -> io::Result<bool> {
        BlobDir::put(self, id, bytes)
    }

    fn replace(&self, id: &ChunkId, bytes: &[u8]) -> io::Result<()> {
        BlobDir::replace(self, id, bytes)
    }

    fn get(&self, id: &ChunkId) -> io::Result<Vec<u8>> {
        BlobDir::get(self, id)
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
        match BlobDir::len(self, id) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn delete(&self, id: &ChunkId) -> io::Result<()> {
        BlobDir::delete(self, id)
    }

    fn list(&self) -> io::Result<Vec<ChunkId>> {
        BlobDir::list(self)
    }

    fn quarantine(&self, id: &ChunkId) -> io::Result<()> {
        let q = self.root.parent().unwrap_or(&self.root).join("quarantine");
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

fn root_tag(root: &Path) -> String {
    root.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// fsync of a directory, so a rename or create inside it is durable.
///
/// # Errors
/// I/O errors.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
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
        assert_eq!(s.list().expect("list"), vec![id]);
        assert_eq!(fs::read_dir(d.path().join("tmp")).expect("tmp").count(), 0);
        s.delete(&id).expect("delete");
        s.delete(&id).expect("delete again");
        assert!(!s.exists(&id));
    }
}
