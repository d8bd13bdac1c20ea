//! The guest file indexes of a backup: the metadata walk of each disk's file systems, run on a
//! blocking thread beside the data pipeline (the block map did not need it without excludes),
//! and their upload into the session as chunks as soon as it is done. The commit names them
//! ([`FileIndexRef`]).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use schema::api::FileIndexRef;
use schema::files::FileEntry;
use schema::{ChunkId, SessionId};

use crate::client::RepoClient;
use crate::error::{blocking, Error, Result};
use crate::plan::{self, DiskPlan, FileIndexes};
use crate::source::BlockSource;

/// What the file index job produced.
#[derive(Debug, Clone, Default)]
pub struct Indexed {
    /// The commit's `file_indexes`.
    pub refs: Vec<FileIndexRef>,
    /// Entries over all indexes.
    pub entries: u64,
    /// Seconds spent walking and uploading.
    pub seconds: f64,
}

/// One file system's index, encoded: JSON lines and the ids of its 1 MiB chunks.
struct Encoded {
    disk: usize,
    partition: u32,
    files: u64,
    bytes: Vec<u8>,
    ids: Vec<ChunkId>,
}

/// The size of the pieces an index is cut into.
const PIECE: usize = 1 << 20;

/// Walks every disk (unless `wanted` is off: then nothing is indexed) and uploads the indexes
/// into `session`. The walk, the encoding and the compression run on the blocking pool.
///
/// # Errors
/// Walk errors (on the disks), repository errors.
pub async fn index_and_upload(
    client: &RepoClient,
    session: SessionId,
    names: &[String],
    disks: Arc<Vec<Arc<dyn BlockSource>>>,
    plans: Arc<Vec<DiskPlan>>,
    wanted: bool,
    level: i32,
) -> Result<Indexed> {
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
            out.extend(
                files
                    .into_iter()
                    .map(|(partition, entries)| encode(d, partition, &entries)),
            );
        }
        Ok((out, seconds))
    })
    .await?;
    let t = Instant::now();
    let entries = encoded.iter().map(|e| e.files).sum();
    let mut refs = Vec::new();
    for e in encoded {
        refs.push(upload(client, &session, &names[e.disk], e, level).await?);
    }
    Ok(Indexed {
        refs,
        entries,
        seconds: t.elapsed().as_secs_f64() + walk_seconds,
    })
}

fn encode(disk: usize, partition: u32, entries: &[FileEntry]) -> Encoded {
    let bytes = crate::guest::to_json_lines(entries);
    let ids = bytes.chunks(PIECE).map(ChunkId::of).collect();
    Encoded {
        disk,
        partition,
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
    })
}
