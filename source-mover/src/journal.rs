//! The mover's journal: enough to continue an interrupted backup with the same command.
//!
//! `STATE_DIR/<key>.json` holds the session id, the base and, per disk, how many records the
//! repository acknowledged and the first block not yet covered by them; `STATE_DIR/<key>.<disk>.records`
//! holds the acknowledged record bytes (so the commit checksum is computed from our own copy).
//! Both are written durably after each acknowledgement (the journal with
//! [`stdx::durable::write`], the records appended and fsynced); the key is a hash of
//! the repository URL, the source and the disks, so the same command finds its journal.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::source::BlockSource;

/// Progress of one disk.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DiskState {
    /// Records the repository acknowledged.
    pub entries: u64,
    /// First block not yet covered by acknowledged records.
    pub next_block: u64,
    /// Whether every block was processed.
    pub done: bool,
}

/// The journal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Journal {
    /// Session id.
    pub session: String,
    /// Base backup, if any.
    pub base: Option<String>,
    /// Per disk.
    pub disks: BTreeMap<String, DiskState>,
    #[serde(skip)]
    path: PathBuf,
}

/// The journal file for a job: the repository, the source and each disk's name and
/// [`BlockSource::describe`] (for a file, its path as given).
pub fn key(url: &str, source: &str, disks: &[(String, Arc<dyn BlockSource>)]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(url.as_bytes());
    h.update(&[0]);
    h.update(source.as_bytes());
    for (n, d) in disks {
        h.update(&[0]);
        h.update(n.as_bytes());
        h.update(&[0]);
        h.update(d.describe().as_bytes());
    }
    h.finalize().to_hex()[..24].to_string()
}

impl Journal {
    /// A new journal at `dir/<key>.json`.
    pub fn new(
        dir: &Path,
        key: &str,
        session: String,
        base: Option<String>,
        disks: &[String],
    ) -> Journal {
        Journal {
            session,
            base,
            disks: disks
                .iter()
                .map(|d| (d.clone(), DiskState::default()))
                .collect(),
            path: dir.join(format!("{key}.json")),
        }
    }

    /// Loads `dir/<key>.json` if present.
    ///
    /// # Errors
    /// The file exists but cannot be read.
    pub fn load(dir: &Path, key: &str) -> Result<Option<Journal>> {
        let path = dir.join(format!("{key}.json"));
        match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path.display(), e)),
            Ok(b) => {
                let mut j: Journal = serde_json::from_slice(&b).map_err(|e| {
                    Error::Invalid(format!(
                        "{}: damaged journal ({e}); delete it to start over",
                        path.display()
                    ))
                })?;
                j.path = path;
                Ok(Some(j))
            }
        }
    }

    /// Where the records of `disk` are kept.
    pub fn records_path(&self, disk: &str) -> PathBuf {
        self.path.with_extension(format!("{disk}.records"))
    }

    /// Writes the journal durably.
    ///
    /// # Errors
    /// I/O errors.
    pub fn save(&self) -> Result<()> {
        let dir = stdx::durable::parent_of(&self.path);
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display(), e))?;
        let body = serde_json::to_vec_pretty(self).map_err(|e| Error::Invalid(e.to_string()))?;
        stdx::durable::write(&self.path, &body).map_err(|e| Error::io(self.path.display(), e))
    }

    /// Appends acknowledged records of `disk` to its records file and truncates it to `entries`
    /// records first (dropping anything a crash left past the acknowledged count).
    ///
    /// # Errors
    /// I/O errors.
    pub fn append_records(&self, disk: &str, entries_before: u64, bytes: &[u8]) -> Result<()> {
        let p = self.records_path(disk);
        let io = |e| Error::io(p.display(), e);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io)?;
        f.set_len(entries_before * schema::RECORD_LEN as u64)
            .map_err(io)?;
        use std::io::Seek;
        f.seek(std::io::SeekFrom::End(0)).map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)
    }

    /// The first `entries` acknowledged records of `disk`.
    ///
    /// # Errors
    /// I/O errors, or a records file shorter than the journal says.
    pub fn records(&self, disk: &str, entries: u64) -> Result<Vec<schema::IndexRecord>> {
        let bytes = self.record_bytes(disk, entries)?;
        schema::IndexRecord::decode_all(&bytes)
            .map_err(|e| Error::Invalid(format!("{}: {e}", self.records_path(disk).display())))
    }

    /// blake3 of the first `entries` records of `disk`.
    ///
    /// # Errors
    /// I/O errors, or a records file shorter than the journal says.
    pub fn records_blake3(&self, disk: &str, entries: u64) -> Result<String> {
        Ok(blake3::hash(&self.record_bytes(disk, entries)?)
            .to_hex()
            .to_string())
    }

    /// The bytes of the first `entries` records of `disk`.
    ///
    /// # Errors
    /// I/O errors, or a records file shorter than the journal says.
    fn record_bytes(&self, disk: &str, entries: u64) -> Result<Vec<u8>> {
        let p = self.records_path(disk);
        let bytes = match std::fs::read(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && entries == 0 => Vec::new(),
            r => r.map_err(|e| Error::io(p.display(), e))?,
        };
        let n = entries as usize * schema::RECORD_LEN;
        if bytes.len() < n {
            return Err(Error::Invalid(format!(
                "{}: holds fewer records than the journal says",
                p.display()
            )));
        }
        let mut bytes = bytes;
        bytes.truncate(n);
        Ok(bytes)
    }

    /// Removes the journal and its records files (after a commit).
    pub fn remove(&self) {
        for d in self.disks.keys() {
            let _ = std::fs::remove_file(self.records_path(d));
        }
        let _ = std::fs::remove_file(&self.path);
    }
}
