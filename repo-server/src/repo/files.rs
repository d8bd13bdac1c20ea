//! The guest file catalog: the file indexes movers upload with a backup become rows of the
//! `files` column family (browse one backup's directories, read one file) and of `names`
//! (search by file name across backups, newest first), written in the commit batch so they
//! appear and disappear with the backup.

use std::collections::{BinaryHeap, HashMap};

use schema::api::{
    DiskSpec, FileIndexRef, FileListing, ListedFile, Manifest, SearchHit, SearchResults,
};
use schema::files::{self, FileEntry, FileKind};
use schema::{BackupId, ChunkId, DiskName, ErrorCode, SessionId};

use super::read::DiskImage;
use super::Repository;
use crate::auth::Caller;
use crate::catalog::Batch;
use crate::error::{Error, Result};

/// Largest file index accepted for one file system (bytes of JSON lines).
const MAX_INDEX_BYTES: u64 = 2 << 30;
/// Most entries one listing returns.
pub const MAX_LISTING: usize = 100_000;
/// Most `names` rows one search examines.
const MAX_SCANNED: usize = 2_000_000;

/// Deepest page offset of a search (what it ranks is bounded by `after + limit`).
const MAX_AFTER: usize = 100_000;

/// A parsed file index, waiting for the commit batch.
#[derive(Debug)]
pub(crate) struct ParsedIndex {
    disk: DiskName,
    partition: u32,
    entries: Vec<FileEntry>,
}

/// `GET /v1/backups/{id}/files` parameters.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesQuery {
    /// Directory (or file) to list; `/` by default.
    #[serde(default)]
    pub path: Option<String>,
    /// Disk; by default the first with a file index.
    #[serde(default)]
    pub disk: Option<DiskName>,
    /// Partition; by default the disk's first file system.
    #[serde(default)]
    pub partition: Option<u32>,
    /// Levels below `path` (1: its children).
    #[serde(default)]
    pub depth: Option<u32>,
    /// Most entries (default and maximum 100,000).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// `GET /v1/search` parameters.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    /// Glob on the file name (`*`, `?`); every name when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// Only paths under this directory.
    #[serde(default)]
    pub path: Option<String>,
    /// Only backups of this source.
    #[serde(default)]
    pub source: Option<String>,
    /// Only backups created at or after (RFC 3339).
    #[serde(default)]
    pub since: Option<String>,
    /// Only backups created before (RFC 3339).
    #[serde(default)]
    pub until: Option<String>,
    /// Page size (default 100, at most 1,000).
    #[serde(default)]
    pub limit: Option<usize>,
    /// The `next` cursor of the previous page.
    #[serde(default)]
    pub after: Option<usize>,
    /// Tenant to search (admins only; others search their own).
    #[serde(default)]
    pub tenant: Option<String>,
}

fn invalid(msg: String) -> Error {
    Error::new(ErrorCode::InvalidBody, msg)
}

impl Repository {
    /// Reads and checks the file indexes a commit names (their chunks must be pinned by the
    /// session), before anything of the commit is written.
    ///
    /// # Errors
    /// 422 `INVALID_BODY` / `UNKNOWN_CHUNK` / `LENGTH_MISMATCH`, 409 `COUNT_MISMATCH`, 413.
    pub(crate) fn parse_file_indexes(
        &self,
        s: &SessionId,
        disks: &[DiskSpec],
        refs: &[FileIndexRef],
    ) -> Result<Vec<ParsedIndex>> {
        let mut out: Vec<ParsedIndex> = Vec::new();
        for r in refs {
            let what = format!("file index of disk {} partition {}", r.disk, r.partition);
            let Some(disk) = disks.iter().find(|d| d.name == r.disk) else {
                return Err(invalid(format!("{what}: the session has no such disk")));
            };
            if out
                .iter()
                .any(|p| p.disk == r.disk && p.partition == r.partition)
            {
                return Err(invalid(format!("{what}: given twice")));
            }
            if r.bytes > MAX_INDEX_BYTES {
                return Err(Error::new(
                    ErrorCode::TooLarge,
                    format!("{what}: {} bytes; at most {MAX_INDEX_BYTES}", r.bytes),
                ));
            }
            if self.catalog.pins(s, &r.chunks)?.iter().any(Option::is_none) {
                return Err(Error::new(
                    ErrorCode::UnknownChunk,
                    format!("{what}: its chunks must be uploaded (or found present) in this session first"),
                ));
            }
            out.push(self.load_file_index(r, &what, disk.size)?);
        }
        Ok(out)
    }

    /// Reads and parses the file index `r` names from its stored chunks; every extent must lie
    /// inside its file and inside the disk of `disk_size` bytes.
    ///
    /// # Errors
    /// 422 `LENGTH_MISMATCH` / `INVALID_BODY` / `UNKNOWN_CHUNK`, 409 `COUNT_MISMATCH`.
    pub(crate) fn load_file_index(
        &self,
        r: &FileIndexRef,
        what: &str,
        disk_size: u64,
    ) -> Result<ParsedIndex> {
        {
            let metas = self.catalog.chunks(&r.chunks)?;
            let total: u64 = metas.iter().flatten().map(|m| m.raw_len).sum();
            if total != r.bytes {
                return Err(Error::new(
                    ErrorCode::LengthMismatch,
                    format!("{what}: its chunks hold {total} bytes, not {}", r.bytes),
                ));
            }
            let mut bytes = Vec::with_capacity(total as usize);
            for (c, m) in r.chunks.iter().zip(&metas) {
                let m = m.ok_or_else(|| {
                    Error::new(
                        ErrorCode::UnknownChunk,
                        format!("{what}: chunk {c} is not stored"),
                    )
                })?;
                let data = self.read_chunk(c, m.raw_len)?;
                if ChunkId::of(&data) != *c {
                    return Err(Error::internal(
                        "reading a file index",
                        format!("chunk {c} does not match its id"),
                    ));
                }
                bytes.extend_from_slice(&data);
            }
            let mut entries = Vec::new();
            for (n, line) in bytes.split(|&b| b == b'\n').enumerate() {
                if line.is_empty() {
                    continue;
                }
                let e: FileEntry = serde_json::from_slice(line)
                    .map_err(|e| invalid(format!("{what}, line {}: {e}", n + 1)))?;
                if !files::valid_path(&e.path) {
                    return Err(invalid(format!(
                        "{what}, line {}: bad path {:?}",
                        n + 1,
                        e.path
                    )));
                }
                check_extents(&e, disk_size)
                    .map_err(|why| invalid(format!("{what}, line {}: {}: {why}", n + 1, e.path)))?;
                entries.push(e);
            }
            if entries.len() as u64 != r.files {
                return Err(Error::new(
                    ErrorCode::CountMismatch,
                    format!(
                        "{what}: {} entries, the commit says {}",
                        entries.len(),
                        r.files
                    ),
                ));
            }
            Ok(ParsedIndex {
                disk: r.disk.clone(),
                partition: r.partition,
                entries,
            })
        }
    }

    /// Adds the rows of parsed file indexes to the commit batch.
    ///
    /// # Errors
    /// Encoding errors.
    pub(crate) fn put_file_indexes(
        b: &mut Batch<'_>,
        m: &Manifest,
        created_ms: i64,
        parsed: &[ParsedIndex],
    ) -> Result<()> {
        for p in parsed {
            for e in &p.entries {
                b.put_file(m, created_ms, p.disk.as_str(), p.partition, e)?;
            }
        }
        Ok(())
    }

    fn file_index<'m>(
        &self,
        m: &'m Manifest,
        disk: Option<&DiskName>,
        part: Option<u32>,
    ) -> Result<&'m FileIndexRef> {
        if let Some(key) = m.key_id() {
            return Err(Error::new(
                ErrorCode::Encrypted,
                format!(
                    "the guest file index of backup {} is encrypted (key {key}): the repository \
                     cannot read file names; use source-mover files ls|get|search --encryption-key",
                    m.id
                ),
            ));
        }
        if m.file_indexes.is_empty() {
            return Err(Error::new(
                ErrorCode::NotFound,
                format!(
                    "backup {} has no guest file index (it was made with --no-file-index, or its \
                     disks hold no ext2/3/4 file system)",
                    m.id
                ),
            ));
        }
        m.file_indexes
            .iter()
            .find(|r| disk.is_none_or(|d| *d == r.disk) && part.is_none_or(|p| p == r.partition))
            .ok_or_else(|| {
                Error::not_found(format!(
                    "a file index in backup {} for disk {} partition {}",
                    m.id,
                    disk.map_or("(any)".into(), ToString::to_string),
                    part.map_or("(any)".into(), |p| p.to_string())
                ))
            })
    }

    /// The entry at `path` in index `r` of backup `id`: the one stored with exactly that path,
    /// else, on a case-insensitive file system (NTFS), the one whose path differs only in case,
    /// found segment by segment from the root among each directory's stored names (the first in
    /// key order when several differ only in case).
    ///
    /// # Errors
    /// RocksDB or decoding errors.
    fn lookup(&self, id: &BackupId, r: &FileIndexRef, path: &str) -> Result<Option<FileEntry>> {
        let (b, disk, part) = (id.as_str(), r.disk.as_str(), r.partition);
        let exact = self.catalog.file(b, disk, part, path)?;
        if exact.is_some() || !files::case_insensitive(r.fs.as_deref()) {
            return Ok(exact);
        }
        let mut found: Option<FileEntry> = None;
        for seg in path.split('/').filter(|s| !s.is_empty()) {
            let dir = found.as_ref().map_or("/", |e| e.path.as_str()).to_owned();
            let mut hit = None;
            self.catalog
                .files_in(b, disk, part, Some(&dir), usize::MAX, |e| {
                    if hit.is_none() && files::same_name(e.name(), seg, true) {
                        hit = Some(e);
                    }
                    Ok(())
                })?;
            match hit {
                Some(e) => found = Some(e),
                None => return Ok(None),
            }
        }
        Ok(found)
    }

    /// `GET /v1/backups/{id}/files`: a directory listing (or one file's entry).
    ///
    /// # Errors
    /// 404 for an unknown backup, index or path; 400 for a malformed path.
    pub fn list_files(
        &self,
        caller: &Caller,
        id: &BackupId,
        q: &FilesQuery,
    ) -> Result<FileListing> {
        let m = self.manifest(caller, id)?;
        let r = self.file_index(&m, q.disk.as_ref(), q.partition)?;
        let path = q.path.clone().unwrap_or_else(|| "/".into());
        let path = if path.len() > 1 {
            path.trim_end_matches('/').to_owned()
        } else {
            path
        };
        if path != "/" && !files::valid_path(&path) {
            return Err(Error::new(
                ErrorCode::BadRequest,
                format!("bad path {path:?}: give an absolute path such as /etc"),
            ));
        }
        let depth = q.depth.unwrap_or(1).min(64);
        let limit = q.limit.unwrap_or(MAX_LISTING).clamp(1, MAX_LISTING);
        let mut entries = Vec::new();
        let mut truncated = false;
        let mut path = path;
        if path != "/" {
            let e = self
                .lookup(id, r, &path)?
                .ok_or_else(|| Error::not_found(format!("{path} in backup {id}")))?;
            path.clone_from(&e.path);
            if e.kind != FileKind::Dir || depth == 0 {
                return Ok(listing(&m, r, &path, vec![ListedFile::from(&e)], false));
            }
        }
        let mut queue = std::collections::VecDeque::from([(path.clone(), 1u32)]);
        while let Some((dir, level)) = queue.pop_front() {
            let left = limit - entries.len();
            let (disk, part) = (r.disk.as_str(), r.partition);
            let more = self
                .catalog
                .files_in(id.as_str(), disk, part, Some(&dir), left, |e| {
                    if e.kind == FileKind::Dir && level < depth {
                        queue.push_back((e.path.clone(), level + 1));
                    }
                    entries.push(ListedFile::from(&e));
                    Ok(())
                })?;
            if more || (entries.len() == limit && !queue.is_empty()) {
                truncated = true;
                break;
            }
        }
        Ok(listing(&m, r, &path, entries, truncated))
    }

    /// `GET /v1/backups/{id}/files/content`: the entry of a regular file and the disk image its
    /// extents point into.
    ///
    /// # Errors
    /// 404, 409 `FILE_EXCLUDED`, 400 for what is not a regular file.
    pub fn file_content(
        &self,
        caller: &Caller,
        id: &BackupId,
        q: &FilesQuery,
    ) -> Result<(FileEntry, DiskImage)> {
        let m = self.manifest(caller, id)?;
        let r = self.file_index(&m, q.disk.as_ref(), q.partition)?;
        let path = q.path.clone().unwrap_or_default();
        if !files::valid_path(&path) {
            return Err(Error::new(
                ErrorCode::BadRequest,
                format!("bad path {path:?}: give the file's absolute path"),
            ));
        }
        let e = self
            .lookup(id, r, &path)?
            .ok_or_else(|| Error::not_found(format!("{path} in backup {id}")))?;
        if e.kind != FileKind::File {
            return Err(Error::new(
                ErrorCode::BadRequest,
                format!("{path} is a {:?}, not a regular file", e.kind).to_lowercase(),
            ));
        }
        if e.excluded {
            return Err(Error::new(ErrorCode::FileExcluded, format!("{path} matched an exclude pattern when backup {id} was made: its data is not in the backup")));
        }
        let img = self.disk_image(caller, id, &r.disk)?;
        Ok((e, img))
    }

    /// Bytes `[first, last]` of a file: its extents read from the image, zeros between them.
    ///
    /// # Errors
    /// Read errors of the underlying chunks.
    pub fn read_file_range(
        &self,
        img: &DiskImage,
        e: &FileEntry,
        first: u64,
        last: u64,
    ) -> Result<Vec<u8>> {
        let mut out = vec![0u8; (last - first + 1) as usize];
        let bs = u64::from(img.disk.block_size);
        for &[foff, doff, len] in &e.extents {
            let a = foff.max(first);
            let z = foff.saturating_add(len).min(last + 1);
            if a >= z {
                continue;
            }
            // Disk bytes [doff + (a - foff), doff + (z - foff)) into out[a - first..].
            let (mut d, dend) = (doff.saturating_add(a - foff), doff.saturating_add(z - foff));
            let mut o = (a - first) as usize;
            while d < dend {
                let b = d / bs;
                let block = self.read_block(img, b)?;
                let from = (d - b * bs) as usize;
                let n = ((dend - d) as usize).min(block.len().saturating_sub(from));
                if n == 0 {
                    break;
                }
                out[o..o + n].copy_from_slice(&block[from..from + n]);
                d += n as u64;
                o += n;
            }
        }
        Ok(out)
    }

    /// `GET /v1/search`: files by name across backups the caller may see, newest backup first.
    ///
    /// # Errors
    /// 400 for bad parameters, 403 when a non-admin names another tenant.
    pub fn search(&self, caller: &Caller, q: &SearchQuery) -> Result<SearchResults> {
        let tenant = match &q.tenant {
            Some(t) if caller.sees(t) => t.clone(),
            Some(_) => {
                return Err(Error::new(
                    ErrorCode::Forbidden,
                    "only admins may search another tenant's catalog",
                ))
            }
            None => caller.tenant.clone(),
        };
        let time = |s: &Option<String>, what: &str| -> Result<Option<i64>> {
            s.as_deref()
                .map(|t| {
                    schema::time::parse_rfc3339(t).ok_or_else(|| {
                        Error::new(
                            ErrorCode::BadRequest,
                            format!("{what} must be an RFC 3339 time such as 2026-11-25T00:00:00Z"),
                        )
                    })
                })
                .transpose()
        };
        let (since, until) = (time(&q.since, "since")?, time(&q.until, "until")?);
        let glob = q.name.clone().unwrap_or_else(|| "*".into());
        if glob.is_empty() || glob.contains('/') {
            return Err(Error::new(
                ErrorCode::BadRequest,
                "name is a glob on the file name (no '/'): nginx.conf, *.conf, log?.txt",
            ));
        }
        let under = q
            .path
            .as_deref()
            .map(|p| format!("{}/", p.trim_end_matches('/')));
        let limit = q.limit.unwrap_or(100).clamp(1, 1000);
        let skip = q.after.unwrap_or(0);
        if skip > MAX_AFTER {
            // The answer keeps `after + limit` hits in memory to rank them.
            return Err(Error::new(
                ErrorCode::BadRequest,
                format!("after is at most {MAX_AFTER}; narrow the search (path, source, since, until) instead of paging that deep"),
            ));
        }
        // Only the best `skip + limit` hits are kept (a max-heap whose top is the worst kept);
        // every other matching row is only counted, without being copied.
        let keep = skip.saturating_add(limit);
        // Per backup: its source, creation time and case-insensitive (NTFS) file indexes.
        let mut sources: HashMap<Vec<u8>, Option<Seen>> = HashMap::new();
        let mut best: BinaryHeap<Ranked> = BinaryHeap::new();
        let mut total = 0usize;
        // `other_case`: the row's name matches only when case is ignored, which counts on a
        // case-insensitive index only.
        let mut consider = |row: &crate::catalog::NameRow<'_>, other_case: bool| -> Result<()> {
            if since.is_some_and(|s| row.created_ms < s)
                || until.is_some_and(|u| row.created_ms >= u)
            {
                return Ok(());
            }
            if !sources.contains_key(row.backup) {
                let info = match std::str::from_utf8(row.backup)
                    .ok()
                    .and_then(|b| b.parse::<BackupId>().ok())
                {
                    Some(b) => self.catalog.backup(&b)?.map(|m| Seen {
                        ci: m
                            .file_indexes
                            .iter()
                            .filter(|r| files::case_insensitive(r.fs.as_deref()))
                            .map(|r| (r.disk.to_string(), r.partition))
                            .collect(),
                        source: m.source,
                        created: m.created,
                    }),
                    None => None,
                };
                sources.insert(row.backup.to_vec(), info);
            }
            let Some(Some(seen)) = sources.get(row.backup) else {
                return Ok(());
            };
            let ci = seen
                .ci
                .iter()
                .any(|(d, p)| d.as_bytes() == row.disk && *p == row.partition);
            let under_ok = under.as_deref().is_none_or(|u| {
                row.path.starts_with(u.as_bytes())
                    || (ci
                        && row.path.get(..u.len()).is_some_and(|at| {
                            std::str::from_utf8(at).is_ok_and(|at| files::same_name(at, u, true))
                        }))
            });
            if (other_case && !ci)
                || !under_ok
                || q.source.as_deref().is_some_and(|s| s != seen.source)
            {
                return Ok(());
            }
            total += 1;
            let better =
                best.len() < keep || best.peek().is_some_and(|w| Ranked::key_of(row) < w.key());
            if better {
                if let Some(hit) = row.to_hit() {
                    best.push(Ranked {
                        hit,
                        source: seen.source.clone(),
                        created: seen.created.clone(),
                    });
                    if best.len() > keep {
                        best.pop();
                    }
                }
            }
            Ok(())
        };
        let mut truncated = self
            .catalog
            .search_names(&tenant, &glob, MAX_SCANNED, |row| consider(row, false))?;
        // Names that match only when case is ignored (a glob with no cased letter has none).
        if files::fold(&glob) != glob || glob.to_lowercase() != glob {
            truncated |=
                self.catalog
                    .search_names_other_case(&tenant, &glob, MAX_SCANNED, |row| {
                        consider(row, true)
                    })?;
        }
        let results: Vec<SearchHit> = best
            .into_sorted_vec()
            .into_iter()
            .skip(skip)
            .take(limit)
            .map(
                |Ranked {
                     hit: h,
                     source,
                     created,
                 }| SearchHit {
                    backup: h.backup,
                    source,
                    created,
                    disk: h.disk,
                    partition: h.partition,
                    path: h.path,
                    size: h.size,
                    mtime: schema::time::rfc3339(h.mtime * 1000),
                },
            )
            .collect();
        let next = (skip + limit < total).then_some(skip + limit);
        Ok(SearchResults {
            tenant,
            results,
            total,
            next,
            truncated,
        })
    }
}

/// Why an entry's extents cannot be read back from a disk of `disk_size` bytes, if they cannot:
/// each must be non-empty and end inside both the file (its size) and the disk, without
/// overflow.
fn check_extents(e: &FileEntry, disk_size: u64) -> std::result::Result<(), String> {
    for (i, &[foff, doff, len]) in e.extents.iter().enumerate() {
        let ext = format!("extent {i} [{foff}, {doff}, {len}]");
        if len == 0 {
            return Err(format!("{ext} is empty"));
        }
        if foff.checked_add(len).is_none_or(|end| end > e.size) {
            return Err(format!(
                "{ext} ends past the file's size of {} bytes",
                e.size
            ));
        }
        if doff.checked_add(len).is_none_or(|end| end > disk_size) {
            return Err(format!(
                "{ext} ends past the disk's end at {disk_size} bytes"
            ));
        }
    }
    Ok(())
}

fn listing(
    m: &Manifest,
    r: &FileIndexRef,
    path: &str,
    entries: Vec<ListedFile>,
    truncated: bool,
) -> FileListing {
    FileListing {
        backup: m.id.clone(),
        disk: r.disk.clone(),
        partition: r.partition,
        path: path.to_owned(),
        entries,
        truncated,
    }
}

/// What a search knows of a backup its rows name.
struct Seen {
    source: String,
    created: String,
    /// Its case-insensitive (NTFS) file indexes: (disk, partition).
    ci: Vec<(String, u32)>,
}

/// A kept search hit, ordered by rank: newest backup first, then path, backup, disk,
/// partition (smaller is better).
struct Ranked {
    hit: crate::catalog::NameHit,
    source: String,
    created: String,
}

impl Ranked {
    fn key(&self) -> (std::cmp::Reverse<i64>, &[u8], &[u8], &[u8], u32) {
        let h = &self.hit;
        (
            std::cmp::Reverse(h.created_ms),
            h.path.as_bytes(),
            h.backup.as_bytes(),
            h.disk.as_bytes(),
            h.partition,
        )
    }

    fn key_of<'a>(
        r: &crate::catalog::NameRow<'a>,
    ) -> (std::cmp::Reverse<i64>, &'a [u8], &'a [u8], &'a [u8], u32) {
        (
            std::cmp::Reverse(r.created_ms),
            r.path,
            r.backup,
            r.disk,
            r.partition,
        )
    }
}

impl PartialEq for Ranked {
    fn eq(&self, o: &Self) -> bool {
        self.key() == o.key()
    }
}
impl Eq for Ranked {}
impl PartialOrd for Ranked {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Ranked {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.key().cmp(&o.key())
    }
}
