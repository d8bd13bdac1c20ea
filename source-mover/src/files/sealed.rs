//! The guest file catalog of encrypted backups, read by the mover: the repository holds only
//! the sealed file index ([`crate::guest_files::SealedIndex`] as sealed chunks named by the
//! manifest's `encryption.file_index`), so `files ls|get|search` fetch it, open it with the key
//! and answer here what the repository answers for a plain backup (the same [`FileListing`] and
//! [`SearchResults`]); a file's content is read from its extents through the disk index, each
//! chunk opened with the key.

use std::sync::Arc;

use schema::api::{FileListing, ListedFile, Manifest, SearchHit, SearchResults};
use schema::files::{self, FileEntry, FileKind};
use schema::ChunkId;

use super::{FileSystem, Search};
use crate::client::RepoClient;
use crate::error::{blocking, Error, Result};
use crate::guest_files::SealedIndex;
use crate::key::MasterKey;

/// Most entries a listing returns (as the repository).
const MAX_LISTING: usize = 10_000;

/// One file system's entries, opened.
#[derive(Debug)]
pub struct Opened {
    /// Disk.
    pub disk: String,
    /// Partition.
    pub partition: u32,
    /// Entries, in index order.
    pub entries: Vec<FileEntry>,
    /// Paths match case-insensitively (an NTFS volume).
    pub ci: bool,
}

impl Opened {
    /// The entry at `path`: the one stored with exactly that path, else, on a case-insensitive
    /// file system, one whose path differs only in case.
    fn find(&self, path: &str) -> Option<&FileEntry> {
        let e = &self.entries;
        e.iter().find(|e| e.path == path).or_else(|| {
            e.iter()
                .find(|e| self.ci && files::same_name(&e.path, path, true))
        })
    }
}

/// Fetches and opens the sealed file index of `m` (every file system in it).
///
/// # Errors
/// A backup without a sealed index, a chunk that does not open, repository errors.
pub async fn load(client: &RepoClient, m: &Manifest, key: &Arc<MasterKey>) -> Result<Vec<Opened>> {
    crate::restore::check_key(m, Some(key))?;
    let blob = m
        .encryption
        .as_ref()
        .and_then(|e| e.file_index.clone())
        .ok_or_else(|| {
            Error::Invalid(format!(
                "backup {} has no guest file index (made with --no-file-index, or no ext2/3/4 file system on its disks)",
                m.id
            ))
        })?;
    let mut bytes = Vec::with_capacity(blob.bytes as usize);
    for id in &blob.chunks {
        let frame = client.chunk(id).await?;
        let (k, id) = (key.clone(), *id);
        let len = schema::sealed::Header::parse(&frame)
            .map(|h| h.raw_len as usize)
            .unwrap_or(0);
        let piece = blocking("opening the file index", move || {
            crate::seal::open(&k, &id, len, &frame)
                .map_err(|e| Error::Invalid(format!("file index chunk {id} {e}")))
        })
        .await?;
        bytes.extend_from_slice(&piece);
    }
    if bytes.len() as u64 != blob.bytes {
        return Err(Error::Invalid(format!(
            "the file index of backup {} is {} bytes, its manifest says {}",
            m.id,
            bytes.len(),
            blob.bytes
        )));
    }
    blocking("parsing the file index", move || {
        SealedIndex::decode(&bytes)?
            .parts
            .into_iter()
            .map(|(p, lines)| {
                let entries = lines
                    .split(|&c| c == b'\n')
                    .filter(|l| !l.is_empty())
                    .map(|l| {
                        serde_json::from_slice::<FileEntry>(l).map_err(|e| {
                            Error::Invalid(format!("a line of the file index does not parse: {e}"))
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Opened {
                    ci: files::case_insensitive(p.fs.as_deref()),
                    disk: p.disk,
                    partition: p.partition,
                    entries,
                })
            })
            .collect()
    })
    .await
}

/// The file system `fs` selects (by default the first).
fn pick<'a>(m: &Manifest, all: &'a [Opened], fs: &FileSystem) -> Result<&'a Opened> {
    all.iter()
        .find(|o| {
            fs.disk.as_ref().is_none_or(|d| *d == o.disk)
                && fs.partition.is_none_or(|p| p == o.partition)
        })
        .ok_or_else(|| {
            Error::Invalid(format!(
                "backup {} has no file index for disk {} partition {}",
                m.id,
                fs.disk.as_deref().unwrap_or("(any)"),
                fs.partition.map_or("(any)".into(), |p| p.to_string())
            ))
        })
}

/// Lists `path` down to `depth` levels, as `GET /v1/backups/{id}/files` does for a plain
/// backup (entries sorted by path within each directory).
///
/// # Errors
/// A malformed or missing path.
pub fn list(
    m: &Manifest,
    all: &[Opened],
    fs: &FileSystem,
    path: &str,
    depth: u32,
) -> Result<FileListing> {
    let o = pick(m, all, fs)?;
    let path = if path.len() > 1 {
        path.trim_end_matches('/').to_owned()
    } else {
        path.to_owned()
    };
    if path != "/" && !files::valid_path(&path) {
        return Err(Error::Invalid(format!(
            "bad path {path:?}: give an absolute path such as /etc"
        )));
    }
    // The path as stored (it may differ in case on NTFS).
    let path = match o.find(&path) {
        Some(e) if path != "/" => e.path.clone(),
        _ => path,
    };
    let depth = depth.min(64);
    let mut children: std::collections::BTreeMap<&str, Vec<&FileEntry>> = Default::default();
    for e in &o.entries {
        children.entry(e.parent()).or_default().push(e);
    }
    for v in children.values_mut() {
        v.sort_by(|a, b| a.path.cmp(&b.path));
    }
    let answer = |entries, truncated| FileListing {
        backup: m.id.clone(),
        disk: o
            .disk
            .parse()
            .unwrap_or_else(|_| "disk".parse().expect("a valid name")),
        partition: o.partition,
        path: path.clone(),
        entries,
        truncated,
    };
    if path != "/" {
        let e = o
            .find(&path)
            .ok_or_else(|| Error::Invalid(format!("{path} is not in backup {}", m.id)))?;
        if e.kind != FileKind::Dir || depth == 0 {
            return Ok(answer(vec![ListedFile::from(e)], false));
        }
    }
    let mut entries = Vec::new();
    let mut queue = std::collections::VecDeque::from([(path.as_str(), 1u32)]);
    while let Some((dir, level)) = queue.pop_front() {
        for e in children.get(dir).into_iter().flatten() {
            if entries.len() == MAX_LISTING {
                return Ok(answer(entries, true));
            }
            if e.kind == FileKind::Dir && level < depth {
                queue.push_back((e.path.as_str(), level + 1));
            }
            entries.push(ListedFile::from(*e));
        }
    }
    Ok(answer(entries, false))
}

/// Writes guest file `path` of `m` to `out`: its extents read from the disk's blocks (each
/// chunk fetched and opened with the key), zeros between them; returns its length.
///
/// # Errors
/// A missing, excluded or non-regular file; a chunk that does not open; repository errors.
pub async fn get(
    client: &RepoClient,
    m: &Manifest,
    all: &[Opened],
    fs: &FileSystem,
    path: &str,
    key: &Arc<MasterKey>,
    out: &mut (dyn std::io::Write + Send),
) -> Result<u64> {
    let o = pick(m, all, fs)?;
    let e = o
        .find(path)
        .ok_or_else(|| Error::Invalid(format!("{path} is not in backup {}", m.id)))?;
    if e.kind != FileKind::File {
        return Err(Error::Invalid(format!("{path} is not a regular file")));
    }
    if e.excluded {
        return Err(Error::Invalid(format!(
            "{path} matched an exclude pattern when backup {} was made: its data is not in the backup",
            m.id
        )));
    }
    let d = m
        .disks
        .iter()
        .find(|d| d.name.as_str() == o.disk)
        .ok_or_else(|| Error::Invalid(format!("backup {} has no disk {}", m.id, o.disk)))?;
    let raw = client.disk_index(m.id.as_str(), d.name.as_str()).await?;
    let index: Vec<ChunkId> = raw
        .chunks_exact(32)
        .filter_map(ChunkId::from_slice)
        .collect();
    let bs = u64::from(d.block_size);
    let block = |b: u64| {
        let (client, key) = (client.clone(), key.clone());
        let id = index.get(b as usize).copied();
        let len = d.size.saturating_sub(b * bs).min(bs) as usize;
        async move {
            let Some(id) = id.filter(|i| !i.is_hole()) else {
                return Ok(vec![0u8; len]);
            };
            let frame = client.chunk(&id).await?;
            blocking("opening a block", move || {
                crate::seal::open(&key, &id, len, &frame)
                    .map_err(|e| Error::Invalid(format!("block {b}: chunk {id} {e}")))
            })
            .await
        }
    };
    let mut written = 0u64;
    let mut write = |buf: &[u8], written: &mut u64| {
        out.write_all(buf).map_err(|e| Error::io("output", e))?;
        *written += buf.len() as u64;
        Ok::<(), Error>(())
    };
    for &[foff, doff, len] in &e.extents {
        if foff > written {
            let gap = vec![0u8; (foff - written) as usize];
            write(&gap, &mut written)?;
        }
        let (mut at, end) = (doff, doff.saturating_add(len));
        while at < end {
            let b = at / bs;
            let data = block(b).await?;
            let from = (at - b * bs) as usize;
            let n = ((end - at) as usize).min(data.len().saturating_sub(from));
            if n == 0 {
                return Err(Error::Invalid(format!(
                    "{path}: an extent runs past the disk"
                )));
            }
            write(&data[from..from + n], &mut written)?;
            at += n as u64;
        }
    }
    if e.size > written {
        let gap = vec![0u8; (e.size - written) as usize];
        write(&gap, &mut written)?;
    }
    Ok(written)
}

/// Searches the encrypted backups of `key` (newest first) for names matching `s.name`: each
/// backup's index is fetched and opened here. At most `max` results.
///
/// # Errors
/// Repository errors, an index that does not open.
pub async fn search(
    client: &RepoClient,
    key: &Arc<MasterKey>,
    s: &Search,
    max: usize,
) -> Result<SearchResults> {
    let since = s.since.as_deref().and_then(schema::time::parse_rfc3339);
    let until = s.until.as_deref().and_then(schema::time::parse_rfc3339);
    let list = client.backups(s.source.as_deref(), 1000).await?;
    let mut results = Vec::new();
    let mut total = 0usize;
    let mut tenant = String::new();
    for m in list.backups {
        if m.key_id() != Some(key.id_hex().as_str()) {
            continue;
        }
        let created = schema::time::parse_rfc3339(&m.created).unwrap_or(0);
        if since.is_some_and(|t| created < t) || until.is_some_and(|t| created > t) {
            continue;
        }
        if m.encryption.as_ref().is_none_or(|e| e.file_index.is_none()) {
            continue;
        }
        tenant = m.tenant.clone();
        for o in load(client, &m, key).await? {
            for e in &o.entries {
                let under = s.path.as_deref().is_none_or(|p| {
                    let at = e.path.get(..p.len()).unwrap_or("");
                    files::same_name(at, p, o.ci)
                        && (p.ends_with('/') || e.path[p.len()..].starts_with('/'))
                });
                if !under || !files::name_match_in(&s.name, e.name(), o.ci) {
                    continue;
                }
                total += 1;
                if results.len() < max {
                    results.push(SearchHit {
                        backup: m.id.to_string(),
                        source: m.source.clone(),
                        created: m.created.clone(),
                        disk: o.disk.clone(),
                        partition: o.partition,
                        path: e.path.clone(),
                        size: e.size,
                        mtime: schema::time::rfc3339(e.mtime * 1000),
                    });
                }
            }
        }
    }
    Ok(SearchResults {
        tenant,
        next: (results.len() < total).then_some(results.len()),
        results,
        total,
        truncated: false,
    })
}
