//! The guest file indexes of a backup: the metadata walk of each disk's file systems, run on a
//! blocking thread beside the data pipeline (the block map did not need it without excludes),
//! and their upload into the session as chunks as soon as it is done. The commit names them
//! ([`FileIndexRef`]).
//!
//! An encrypted backup's indexes go up as one sealed blob instead ([`SealedIndex`]: each
//! index's header line, then its JSON lines), cut into sealed chunks that the commit names in
//! its `encryption` extension: the repository stores them and never sees a file name.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use schema::api::{FileIndexRef, SealedBlob};
use schema::files::FileEntry;
use schema::{ChunkId, SessionId};

use crate::client::RepoClient;
use crate::error::{blocking, Error, Result};
use crate::key::MasterKey;
use crate::pipeline::Inputs;
use crate::plan::{self, FileIndexes};

/// What the file index job produced.
#[derive(Debug, Clone, Default)]
pub struct Indexed {
    /// The commit's `file_indexes`.
    pub refs: Vec<FileIndexRef>,
    /// Entries over all indexes.
    pub entries: u64,
    /// The sealed file index of an encrypted backup (then `refs` is empty).
    pub sealed: Option<SealedBlob>,
    /// Seconds spent walking and uploading.
    pub seconds: f64,
}

/// One file system's index, encoded: JSON lines and the ids of its 1 MiB chunks.
struct Encoded {
    disk: usize,
    partition: u32,
    fs: Option<&'static str>,
    files: u64,
    bytes: Vec<u8>,
    ids: Vec<ChunkId>,
}

/// The size of the pieces an index is cut into.
const PIECE: usize = 1 << 20;

/// Walks every disk (unless `wanted` is off: then nothing is indexed) and uploads the indexes
/// into `session`, with the disks, plans, zstd level and key of `inputs`. The walk, the encoding
/// and the compression run on the blocking pool.
///
/// # Errors
/// Walk errors (on the disks), repository errors.
pub async fn index_and_upload(
    client: &RepoClient,
    session: SessionId,
    inputs: &Inputs,
    wanted: bool,
) -> Result<Indexed> {
    let (names, level, key) = (&inputs.names[..], inputs.level, inputs.key.clone());
    let (disks, plans) = (inputs.disks.clone(), inputs.plans.clone());
    let (encoded, walk_seconds) = blocking("the file index walk", move || {
        let mut out = Vec::new();
        let mut seconds = 0.0;
        if !wanted {
            return Ok((out, seconds));
        }
        for (d, (disk, p)) in disks.iter().zip(plans.iter()).enumerate() {
            let (mut files, secs): FileIndexes = plan::index_files(disk.as_ref(), &p.unindexed)?;
            files.splice(0..0, p.files.iter().cloned());
            seconds += secs + p.files_seconds;
            out.extend(files.into_iter().map(|(partition, entries)| {
                encode(d, partition, p.fs_names.get(&partition).copied(), &entries)
            }));
        }
        Ok((out, seconds))
    })
    .await?;
    let t = Instant::now();
    let entries = encoded.iter().map(|e| e.files).sum();
    if let Some(key) = key {
        let sealed = if encoded.is_empty() {
            None
        } else {
            Some(upload_sealed(client, &session, names, encoded, level, key).await?)
        };
        return Ok(Indexed {
            refs: Vec::new(),
            entries,
            sealed,
            seconds: t.elapsed().as_secs_f64() + walk_seconds,
        });
    }
    let mut refs = Vec::new();
    for e in encoded {
        refs.push(upload(client, &session, &names[e.disk], e, level).await?);
    }
    Ok(Indexed {
        refs,
        entries,
        sealed: None,
        seconds: t.elapsed().as_secs_f64() + walk_seconds,
    })
}

/// One file system's index inside a [`SealedIndex`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SealedPart {
    /// Disk name.
    pub disk: String,
    /// Partition number (0: the whole disk).
    pub partition: u32,
    /// Entries.
    pub files: u64,
    /// Bytes of JSON lines that follow the header line.
    pub bytes: u64,
    /// The file system (as [`FileIndexRef::fs`]); absent in indexes sealed before it was
    /// recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs: Option<String>,
}

/// The plaintext of an encrypted backup's file index: per file system, a header line (JSON
/// [`SealedPart`]) followed by its `bytes` of JSON lines ([`FileEntry`] each).
#[derive(Debug, Clone, Default)]
pub struct SealedIndex {
    /// The file systems and their JSON lines.
    pub parts: Vec<(SealedPart, Vec<u8>)>,
}

impl SealedIndex {
    /// The blob's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (p, lines) in &self.parts {
            out.extend_from_slice(&serde_json::to_vec(p).unwrap_or_default());
            out.push(b'\n');
            out.extend_from_slice(lines);
        }
        out
    }

    /// The blob back.
    ///
    /// # Errors
    /// A header line that does not parse or a part longer than the blob.
    pub fn decode(mut b: &[u8]) -> Result<SealedIndex> {
        let bad = |m: &str| Error::Invalid(format!("the sealed file index is malformed: {m}"));
        let mut parts = Vec::new();
        while !b.is_empty() {
            let nl = b
                .iter()
                .position(|&c| c == b'\n')
                .ok_or_else(|| bad("no header line"))?;
            let p: SealedPart =
                serde_json::from_slice(&b[..nl]).map_err(|e| bad(&e.to_string()))?;
            let rest = &b[nl + 1..];
            let n = usize::try_from(p.bytes)
                .ok()
                .filter(|&n| n <= rest.len())
                .ok_or_else(|| bad("a part runs past the end"))?;
            parts.push((p, rest[..n].to_vec()));
            b = &rest[n..];
        }
        Ok(SealedIndex { parts })
    }
}

/// Uploads the indexes of an encrypted backup as one sealed blob cut into sealed chunks (only
/// those find-missing asks for) and returns the commit's reference to it.
async fn upload_sealed(
    client: &RepoClient,
    session: &SessionId,
    names: &[String],
    encoded: Vec<Encoded>,
    level: i32,
    key: Arc<MasterKey>,
) -> Result<SealedBlob> {
    let blob = SealedIndex {
        parts: encoded
            .into_iter()
            .map(|e| {
                let part = SealedPart {
                    disk: names[e.disk].clone(),
                    partition: e.partition,
                    files: e.files,
                    bytes: e.bytes.len() as u64,
                    fs: e.fs.map(str::to_owned),
                };
                (part, e.bytes)
            })
            .collect(),
    }
    .encode();
    let k = key.clone();
    let pieces: Vec<(ChunkId, Vec<u8>)> = blocking("hashing the file index", move || {
        Ok(blob
            .chunks(PIECE)
            .map(|p| (k.chunk_id(p), p.to_vec()))
            .collect())
    })
    .await?;
    let ids: Vec<ChunkId> = pieces.iter().map(|p| p.0).collect();
    let bytes = pieces.iter().map(|p| p.1.len() as u64).sum();
    let mut missing = client.find_missing(session, &ids).await?;
    for (id, piece) in pieces {
        if !missing.remove(&id) {
            continue;
        }
        crate::pipeline::upload(
            client.clone(),
            *session,
            level,
            Some(key.clone()),
            "the sealed file index".into(),
            id,
            piece,
        )
        .await?;
    }
    Ok(SealedBlob { bytes, chunks: ids })
}

fn encode(disk: usize, partition: u32, fs: Option<&'static str>, entries: &[FileEntry]) -> Encoded {
    let bytes = crate::guest::to_json_lines(entries);
    let ids = bytes.chunks(PIECE).map(ChunkId::of).collect();
    Encoded {
        disk,
        partition,
        fs,
        files: entries.len() as u64,
        bytes,
        ids,
    }
}

/// Uploads one file system's index into the session (only the pieces find-missing asks for)
/// and returns the commit's reference to it. Safe to repeat: find-missing pins what is already
/// there.
async fn upload(
    client: &RepoClient,
    session: &SessionId,
    name: &str,
    e: Encoded,
    level: i32,
) -> Result<FileIndexRef> {
    let mut missing = if e.ids.is_empty() {
        Default::default()
    } else {
        client.find_missing(session, &e.ids).await?
    };
    let Encoded {
        partition,
        fs,
        files,
        bytes,
        ids,
        ..
    } = e;
    let len = bytes.len() as u64;
    // Each missing piece once, even if the index repeats it.
    let wanted: Vec<bool> = ids.iter().map(|id| missing.remove(id)).collect();
    let sent: Vec<ChunkId> = ids
        .iter()
        .zip(&wanted)
        .filter(|(_, w)| **w)
        .map(|(id, _)| *id)
        .collect();
    let frames = blocking("compressing a file index", move || {
        bytes
            .chunks(PIECE)
            .zip(wanted)
            .filter(|(_, w)| *w)
            .map(|(piece, _)| {
                zstd::bulk::compress(piece, level)
                    .map(|f| (f, piece.len()))
                    .map_err(|e| Error::Invalid(format!("compressing a file index: {e}")))
            })
            .collect::<Result<Vec<_>>>()
    })
    .await?;
    for (id, (frame, raw)) in sent.iter().zip(frames) {
        client
            .put_chunk(session, id, Bytes::from(frame), raw)
            .await?;
    }
    Ok(FileIndexRef {
        disk: name
            .parse()
            .map_err(|e: schema::IdError| Error::Invalid(e.to_string()))?,
        partition,
        files,
        bytes: len,
        chunks: ids,
        fs: fs.map(str::to_owned),
    })
}
