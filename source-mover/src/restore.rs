//! Restore and verify: read a backup's index, fetch its chunks concurrently, check each block's
//! blake3 and length against the index, and write it (sparse: holes are not written to a file;
//! a block device gets zeros) or, for verify, only check it.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::Method;
use schema::api::{BackupList, Manifest};
use schema::ChunkId;
use serde::Serialize;

use crate::backup::{encode, peak_rss};
use crate::client::RepoClient;
use crate::error::{Error, Result};
use crate::progress::Progress;

/// What a restore or verify did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    /// Backup.
    pub backup_id: String,
    /// Disk.
    pub disk: String,
    /// Where it was written (`None` for verify).
    pub to: Option<String>,
    /// Disk size.
    pub size: u64,
    /// Blocks.
    pub blocks: u64,
    /// Blocks that are holes.
    pub holes: u64,
    /// Bytes fetched (compressed).
    pub fetched_bytes: u64,
    /// Bytes written.
    pub written_bytes: u64,
    /// Wall time.
    pub duration_ms: u64,
    /// Peak resident memory.
    pub peak_rss_bytes: u64,
}

/// Resolves `latest` (for `source`) or checks a backup id.
///
/// # Errors
/// No backup, or repository errors.
pub async fn resolve(client: &RepoClient, backup: &str, source: Option<&str>) -> Result<Manifest> {
    let id = if backup == "latest" {
        let q = match source {
            Some(s) => format!("/v1/backups?source={}&limit=1", encode(s)),
            None => "/v1/backups?limit=1".to_string(),
        };
        let list: BackupList = client.get_json(&q).await?;
        list.backups
            .first()
            .map(|m| m.id.to_string())
            .ok_or_else(|| Error::Invalid("no backup to restore".into()))?
    } else {
        backup.to_owned()
    };
    client.get_json(&format!("/v1/backups/{id}")).await
}

/// Restores disk `disk` of `m` to `to`, or only verifies it when `to` is `None`.
///
/// # Errors
/// A block that does not match its digest, repository or file errors.
pub async fn restore(
    client: &RepoClient,
    m: &Manifest,
    disk: &str,
    to: Option<&Path>,
    streams: usize,
    progress: bool,
) -> Result<RestoreReport> {
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
    let raw = client
        .send(
            Method::GET,
            &format!("/v1/backups/{}/disks/{disk}/index", m.id),
            &[],
            Bytes::new(),
        )
        .await?
        .body;
    let index: Vec<ChunkId> = raw
        .chunks_exact(32)
        .filter_map(ChunkId::from_slice)
        .collect();
    if index.len() as u64 != d.blocks || blake3::hash(&raw).to_hex().as_str() != d.index_blake3 {
        return Err(Error::Invalid(format!(
            "the index of backup {} disk {disk} does not match its manifest",
            m.id
        )));
    }
    let (file, is_dev) = match to {
        None => (None, false),
        Some(p) => {
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
                f.set_len(d.size).map_err(|e| Error::io(p.display(), e))?;
            }
            (Some(Arc::new(f)), is_dev)
        }
    };
    let bs = u64::from(d.block_size);
    let prog = Progress::start(d.size, progress);
    let sem = Arc::new(tokio::sync::Semaphore::new(streams.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let (mut holes, mut written) = (0u64, 0u64);
    let mut fetched = 0u64;
    for (b, id) in index.iter().enumerate() {
        let b = b as u64;
        let len = d.size.saturating_sub(b * bs).min(bs) as usize;
        if id.is_hole() {
            holes += 1;
            prog.done.fetch_add(len as u64, Ordering::Relaxed);
            if let (Some(f), true) = (&file, is_dev) {
                f.write_all_at(&vec![0u8; len], b * bs)
                    .map_err(|e| Error::io(format!("{disk} at offset {}", b * bs), e))?;
                written += len as u64;
            }
            continue;
        }
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let (client, id, file, prog, disk) = (
            client.clone(),
            *id,
            file.clone(),
            prog.clone(),
            disk.to_owned(),
        );
        tasks.spawn(async move {
            let frame = client
                .send(Method::GET, &format!("/v1/chunks/{id}"), &[], Bytes::new())
                .await?
                .body;
            let n = frame.len() as u64;
            tokio::task::spawn_blocking(move || -> Result<u64> {
                let data = zstd::bulk::decompress(&frame, len).map_err(|e| Error::Corrupt {
                    disk: disk.clone(),
                    block: b,
                    chunk: id.to_string(),
                    message: format!("does not decompress: {e}"),
                })?;
                if data.len() != len || ChunkId::of(&data) != id {
                    return Err(Error::Corrupt {
                        disk,
                        block: b,
                        chunk: id.to_string(),
                        message: "content does not match the digest in the index".into(),
                    });
                }
                if let Some(f) = &file {
                    f.write_all_at(&data, b * bs)
                        .map_err(|e| Error::io(format!("{disk} at offset {}", b * bs), e))?;
                }
                prog.done.fetch_add(len as u64, Ordering::Relaxed);
                prog.sent.fetch_add(len as u64, Ordering::Relaxed);
                drop(permit);
                Ok(n)
            })
            .await
            .map_err(|e| Error::Invalid(e.to_string()))?
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
    prog.finish();
    if let (Some(f), Some(p)) = (&file, to) {
        f.sync_all().map_err(|e| Error::io(p.display(), e))?;
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
