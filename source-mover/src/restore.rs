//! Restore and verify: read a backup's index, fetch its chunks concurrently, check each block's
//! blake3 and length against the index, and write it (sparse: holes are not written to a file;
//! a block device gets zeros; an NBD export gets `NBD_CMD_WRITE_ZEROES` and a flush at the
//! end) or, for verify, only check it. Decompression, checks, positional
//! writes and the final fsync run on the blocking pool, never on the async loop that fetches.
//! An encrypted backup needs its key ([`restore_with`]): it is checked against the manifest's
//! key id before the target is opened, and every chunk is opened with it ([`crate::seal::open`]:
//! AEAD tag, then the keyed digest of the plaintext).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use schema::api::{Manifest, ManifestDisk};
use schema::ChunkId;

use crate::client::RepoClient;
use crate::error::{blocking, Error, Result};
use crate::key::MasterKey;
use crate::nbd::{Client, Timeouts};
use crate::progress::Progress;
use crate::report::peak_rss;
pub use crate::report::RestoreReport;
use crate::source::DiskSpec;

/// Resolves `latest` (for `source`) or checks a backup id.
///
/// # Errors
/// No backup, or repository errors.
pub async fn resolve(client: &RepoClient, backup: &str, source: Option<&str>) -> Result<Manifest> {
    let id = if backup == "latest" {
        client
            .latest(source)
            .await?
            .map(|m| m.id.to_string())
            .ok_or_else(|| Error::Invalid("no backup to restore".into()))?
    } else {
        backup.to_owned()
    };
    client.manifest(&id).await
}

/// Where restored blocks go.
#[derive(Debug, Clone)]
struct Target {
    file: Option<Arc<File>>,
    /// An NBD export instead of a file.
    nbd: Option<Arc<Client>>,
    path: PathBuf,
    /// A block device or NBD export: holes are written as zeros (a file is created sparse
    /// instead).
    is_dev: bool,
}

impl Target {
    /// Opens `p`: a block device as it is, a file created (or truncated) to `size`, an NBD
    /// export (writable, at least `size` bytes) connected to.
    fn open(p: &Path, size: u64) -> Result<Target> {
        if let DiskSpec::Nbd(uri) = DiskSpec::parse(p)? {
            let c = Client::connect(&uri, &[], Timeouts::default())?;
            if c.info().flags & nbd::tflags::READ_ONLY != 0 {
                return Err(Error::Nbd {
                    uri: uri.to_string(),
                    message: "the export is read-only; a restore needs a writable one (qemu-nbd without -r)".into(),
                });
            }
            if c.info().size < size {
                return Err(Error::Nbd {
                    uri: uri.to_string(),
                    message: format!(
                        "the export has {} bytes, the disk {size}; make the image at least that large (qemu-img create -f qcow2 IMG {size})",
                        c.info().size
                    ),
                });
            }
            return Ok(Target {
                file: None,
                nbd: Some(Arc::new(c)),
                path: p.to_owned(),
                is_dev: true,
            });
        }
        let is_dev = std::fs::metadata(p)
            .map(|md| !md.is_file() && !md.is_dir())
            .unwrap_or(false);
        let f = OpenOptions::new()
            .write(true)
            .create(!is_dev)
            .truncate(!is_dev)
            .open(p)
            .map_err(|e| Error::io(p.display(), e))?;
        if !is_dev {
            f.set_len(size).map_err(|e| Error::io(p.display(), e))?;
        }
        Ok(Target {
            file: Some(Arc::new(f)),
            nbd: None,
            path: p.to_owned(),
            is_dev,
        })
    }

    /// Writes `data` at `offset` of disk `disk`.
    fn write_at(&self, disk: &str, data: &[u8], offset: u64) -> Result<()> {
        if let Some(c) = &self.nbd {
            return c.write(data, offset);
        }
        match &self.file {
            Some(f) => f
                .write_all_at(data, offset)
                .map_err(|e| Error::io(format!("{disk} at offset {offset}"), e)),
            None => Ok(()),
        }
    }

    /// Makes `len` bytes at `offset` read as zeros (a hole of the backup on a device or export).
    fn zero_at(&self, disk: &str, len: u64, offset: u64) -> Result<()> {
        match &self.nbd {
            Some(c) => c.write_zeroes(offset, len),
            None => self.write_at(disk, &vec![0u8; len as usize], offset),
        }
    }

    /// Makes what was written durable: fsync, or `NBD_CMD_FLUSH`.
    fn sync(&self) -> Result<()> {
        if let Some(c) = &self.nbd {
            return c.flush();
        }
        match &self.file {
            Some(f) => f.sync_all().map_err(|e| Error::io(self.path.display(), e)),
            None => Ok(()),
        }
    }
}

/// Restores disk `disk` of `m` to `to`, or only verifies it when `to` is `None`.
///
/// # Errors
/// A block that does not match its digest, repository or file errors; an encrypted backup
/// ([`restore_with`] takes its key).
pub async fn restore(
    client: &RepoClient,
    m: &Manifest,
    disk: &str,
    to: Option<&Path>,
    streams: usize,
    progress: bool,
) -> Result<RestoreReport> {
    restore_with(client, m, disk, to, streams, progress, None).await
}

/// Checks that `key` can read backup `m`: an encrypted backup needs the key whose id its
/// manifest names.
///
/// # Errors
/// [`Error::Refused`] saying which key the backup needs.
pub fn check_key(m: &Manifest, key: Option<&MasterKey>) -> Result<()> {
    match (m.key_id(), key) {
        (None, _) => Ok(()),
        (Some(want), None) => Err(Error::Refused(format!(
            "backup {} is encrypted with key {want}: give its key with --encryption-key FILE",
            m.id
        ))),
        (Some(want), Some(k)) if k.id_hex() != want => Err(Error::Refused(format!(
            "backup {} is encrypted with key {want}, not with the given key {}",
            m.id,
            k.id_hex()
        ))),
        _ => Ok(()),
    }
}

/// [`restore`] with the key of an encrypted backup; the key is checked against the manifest
/// before anything is fetched or written.
///
/// # Errors
/// As [`restore`]; [`Error::Refused`] for a missing or wrong key.
pub async fn restore_with(
    client: &RepoClient,
    m: &Manifest,
    disk: &str,
    to: Option<&Path>,
    streams: usize,
    progress: bool,
    key: Option<Arc<MasterKey>>,
) -> Result<RestoreReport> {
    check_key(m, key.as_deref())?;
    let key = key.filter(|_| m.encrypted || m.key_id().is_some());
    let started = Instant::now();
    let d = m
        .disks
        .iter()
        .find(|d| d.name.as_str() == disk)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "backup {} has no disk {disk} (it has {:?})",
                m.id,
                m.disks.iter().map(|d| d.name.as_str()).collect::<Vec<_>>()
            ))
        })?
        .clone();
    let index = index(client, m, &d).await?;
    let target = match to {
        None => None,
        Some(p) => {
            let (p, size) = (p.to_owned(), d.size);
            Some(blocking("opening the target", move || Target::open(&p, size)).await?)
        }
    };
    let prog = Progress::start(d.size, progress);
    let copied = copy(client, &d, &index, target.clone(), streams, &prog, key).await;
    prog.finish();
    let (holes, fetched, mut written) = copied?;
    if let Some(t) = target {
        blocking("syncing the target", move || t.sync()).await?;
        written += prog.sent.load(Ordering::Relaxed);
    }
    Ok(RestoreReport {
        backup_id: m.id.to_string(),
        disk: disk.to_owned(),
        to: to.map(|p| p.display().to_string()),
        size: d.size,
        blocks: d.blocks,
        holes,
        fetched_bytes: fetched,
        written_bytes: written,
        duration_ms: started.elapsed().as_millis() as u64,
        peak_rss_bytes: peak_rss(),
    })
}

/// The index of disk `d` of `m`, checked against the manifest (block count and blake3).
async fn index(client: &RepoClient, m: &Manifest, d: &ManifestDisk) -> Result<Vec<ChunkId>> {
    let raw = client.disk_index(m.id.as_str(), d.name.as_str()).await?;
    let index: Vec<ChunkId> = raw
        .chunks_exact(32)
        .filter_map(ChunkId::from_slice)
        .collect();
    if index.len() as u64 != d.blocks || blake3::hash(&raw).to_hex().as_str() != d.index_blake3 {
        return Err(Error::Invalid(format!(
            "the index of backup {} disk {} does not match its manifest",
            m.id,
            d.name.as_str()
        )));
    }
    Ok(index)
}

/// Fetches, checks and writes (to `target`, if any) every block of `index`, up to `streams`
/// at once; returns (holes, bytes fetched, bytes of zeros written for holes).
async fn copy(
    client: &RepoClient,
    d: &ManifestDisk,
    index: &[ChunkId],
    target: Option<Target>,
    streams: usize,
    prog: &Arc<Progress>,
    key: Option<Arc<MasterKey>>,
) -> Result<(u64, u64, u64)> {
    let bs = u64::from(d.block_size);
    let disk = d.name.as_str();
    let sem = Arc::new(tokio::sync::Semaphore::new(streams.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let (mut holes, mut written, mut fetched) = (0u64, 0u64, 0u64);
    for (b, id) in index.iter().enumerate() {
        let b = b as u64;
        let len = d.size.saturating_sub(b * bs).min(bs) as usize;
        if id.is_hole() {
            holes += 1;
            prog.done.fetch_add(len as u64, Ordering::Relaxed);
            if let Some(t) = target.as_ref().filter(|t| t.is_dev) {
                let (t, disk) = (t.clone(), disk.to_owned());
                blocking("writing zeros", move || {
                    t.zero_at(&disk, len as u64, b * bs)
                })
                .await?;
                written += len as u64;
            }
            continue;
        }
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let block = Block {
            disk: disk.to_owned(),
            number: b,
            offset: b * bs,
            len,
            id: *id,
        };
        let (client, target, prog) = (client.clone(), target.clone(), prog.clone());
        let key = key.clone();
        tasks.spawn(async move {
            let n = fetch(&client, block, target, &prog, key).await?;
            drop(permit);
            Ok::<u64, Error>(n)
        });
        while tasks.len() > streams * 2 {
            if let Some(r) = tasks.join_next().await {
                fetched += r.map_err(|e| Error::Invalid(e.to_string()))??;
            }
        }
    }
    while let Some(r) = tasks.join_next().await {
        fetched += r.map_err(|e| Error::Invalid(e.to_string()))??;
    }
    Ok((holes, fetched, written))
}

/// One block to restore.
#[derive(Debug)]
struct Block {
    disk: String,
    number: u64,
    offset: u64,
    len: usize,
    id: ChunkId,
}

/// Fetches one block's chunk, then decompresses, checks and writes it on the blocking pool;
/// returns the fetched (compressed) size.
async fn fetch(
    client: &RepoClient,
    b: Block,
    target: Option<Target>,
    prog: &Arc<Progress>,
    key: Option<Arc<MasterKey>>,
) -> Result<u64> {
    let frame: Bytes = client.chunk(&b.id).await?;
    let n = frame.len() as u64;
    let prog = prog.clone();
    blocking("checking a block", move || {
        let corrupt = |message: String| Error::Corrupt {
            disk: b.disk.clone(),
            block: b.number,
            chunk: b.id.to_string(),
            message,
        };
        let data = match &key {
            Some(k) => crate::seal::open(k, &b.id, b.len, &frame).map_err(corrupt)?,
            None if schema::sealed::is_sealed(&frame) => {
                return Err(corrupt("is sealed, but its backup is not encrypted".into()))
            }
            None => zstd::bulk::decompress(&frame, b.len)
                .map_err(|e| corrupt(format!("does not decompress: {e}")))?,
        };
        if key.is_none() && (data.len() != b.len || ChunkId::of(&data) != b.id) {
            return Err(corrupt(
                "content does not match the digest in the index".into(),
            ));
        }
        if let Some(t) = &target {
            t.write_at(&b.disk, &data, b.offset)?;
        }
        prog.done.fetch_add(b.len as u64, Ordering::Relaxed);
        prog.sent.fetch_add(b.len as u64, Ordering::Relaxed);
        Ok(n)
    })
    .await
}
