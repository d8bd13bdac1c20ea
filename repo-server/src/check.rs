//! The offline check (`repo-server check --data DIR [--repair]`): with the server stopped, does
//! the catalog agree with the index blobs and chunk files?
//!
//! Findings come in two kinds:
//! - **problems**: the catalog names something that is not there or not right — a backup
//!   referencing a chunk with no row, a chunk row whose file is missing or has the wrong size
//!   without being marked bad, an index blob missing or corrupt, counters or time-index keys that
//!   disagree with the rows, pins of missing chunks. A crash must never cause one.
//! - **leftovers**: harmless remains of an interrupted write — temp files, chunk files with no row
//!   (written but not yet recorded, or unlinked by GC after their row went), index blobs no backup
//!   names, owner rows and session data of chunks and sessions that are gone, GC's scratch marks.
//!
//! `--repair` fixes what can be fixed without losing anything: removes temp files and GC marks,
//! moves orphan chunk files into `quarantine/` (nothing is deleted that might be data), marks
//! chunks with missing or wrong-sized files bad (find-missing then asks movers to re-send them),
//! rebuilds counters and time-index keys, drops stale owner rows, pins and session data, and
//! removes unreferenced index blobs. It cannot conjure a chunk no file holds: a backup that
//! references such a chunk stays reported until a mover re-sends it.
//!
//! Memory is bounded: everything is read in slices (the store's listing, page by page).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use schema::api::SessionState;
use schema::{ChunkId, SessionId};
use serde_json::{json, Value};

use crate::catalog::{counter, Catalog, ChunkMeta, PinRow};
use crate::error::{Error, Result};
use crate::store::local::{BlobDir, ManifestDir};
use crate::store::{BlobStore, ManifestStore};

const SLICE: usize = 4_096;
/// Problems listed in full in the report (the counts are always complete).
const MAX_LISTED: usize = 100;

/// What the check found (and, with `--repair`, did).
#[derive(Debug, Default)]
pub struct Report {
    /// Problems by kind: count and the first examples.
    pub problems: BTreeMap<&'static str, (u64, Vec<String>)>,
    /// Leftovers by kind: count.
    pub leftovers: BTreeMap<&'static str, u64>,
    /// Repairs done, by kind.
    pub repaired: BTreeMap<&'static str, u64>,
    /// What was examined.
    pub examined: BTreeMap<&'static str, u64>,
}

impl Report {
    fn problem(&mut self, kind: &'static str, what: String) {
        let e = self.problems.entry(kind).or_default();
        e.0 += 1;
        if e.1.len() < MAX_LISTED {
            e.1.push(what);
        }
    }

    fn leftover(&mut self, kind: &'static str, n: u64) {
        if n > 0 {
            *self.leftovers.entry(kind).or_default() += n;
        }
    }

    fn repaired(&mut self, kind: &'static str, n: u64) {
        if n > 0 {
            *self.repaired.entry(kind).or_default() += n;
        }
    }

    /// One row of session data whose session is not open (or that does not decode).
    fn stale_session_data(&mut self, repair: bool) {
        self.leftover("stale_session_data", 1);
        if repair {
            self.repaired("stale_session_data_removed", 1);
        }
    }

    /// Whether no problem was found.
    pub fn consistent(&self) -> bool {
        self.problems.is_empty()
    }

    /// The report as JSON.
    pub fn to_json(&self) -> Value {
        let problems: serde_json::Map<String, Value> = self
            .problems
            .iter()
            .map(|(k, (n, ex))| ((*k).to_owned(), json!({ "count": n, "examples": ex })))
            .collect();
        json!({
            "consistent": self.consistent(),
            "problems": problems,
            "leftovers": self.leftovers,
            "repaired": self.repaired,
            "examined": self.examined,
        })
    }
}

/// Checks the repository under `data`; with `repair`, also repairs.
///
/// # Errors
/// A data dir that is not a repository, a catalog in use by a running server, I/O and RocksDB
/// errors.
pub fn check(data: &Path, repair: bool) -> Result<Report> {
    let catalog_dir = data.join("catalog");
    if !catalog_dir.join("CURRENT").is_file() {
        return Err(Error::new(
            schema::ErrorCode::NotFound,
            format!("{} is not a repository (no catalog/)", data.display()),
        ));
    }
    let catalog = Catalog::open_raw(&catalog_dir).map_err(|e| {
        let why = if e.to_string().contains("lock") {
            format!(
                "the catalog in {} is in use; stop repo-server first",
                data.display()
            )
        } else {
            format!("cannot open the catalog in {}: {e}", data.display())
        };
        Error::new(schema::ErrorCode::Unavailable, why)
    })?;
    let tmp = data.join("tmp");
    let chunks = BlobDir::existing(data.join("chunks"), tmp.clone(), 2);
    let indexes = BlobDir::existing(data.join("indexes"), tmp, 1);
    let mut c = Checker {
        catalog,
        chunks,
        indexes,
        manifests: data.join("manifests"),
        quarantine: data.join("quarantine"),
        repair,
        r: Report::default(),
    };
    c.temp_files()?;
    c.marks()?;
    c.chunk_rows()?;
    c.chunk_files()?;
    c.backups()?;
    c.manifest_files()?;
    c.sessions()?;
    c.owners()?;
    Ok(c.r)
}

struct Checker {
    catalog: Catalog,
    chunks: BlobDir,
    indexes: BlobDir,
    manifests: PathBuf,
    quarantine: PathBuf,
    repair: bool,
    r: Report,
}

impl Checker {
    /// Stored manifests against catalog rows: a backup without its manifest file (one committed
    /// before manifests were written, or whose manifest write was lost) is a leftover that
    /// `--repair` writes from the catalog; a manifest without a backup (a crash between the
    /// manifest and the commit's batch) is a leftover too: `rescan` would adopt it, `--repair`
    /// removes it.
    fn manifest_files(&mut self) -> Result<()> {
        let Ok(dir) = ManifestDir::open_existing(self.manifests.clone()) else {
            return Ok(());
        };
        let stored: HashSet<String> = crate::store::list_all(|a, n| dir.list_manifests(a, n))?
            .iter()
            .map(|b| b.to_string())
            .collect();
        let mut in_catalog = Vec::new();
        self.catalog.for_each_backup(|m| {
            in_catalog.push(m);
            Ok(())
        })?;
        let known: HashSet<String> = in_catalog.iter().map(|m| m.id.to_string()).collect();
        for m in &in_catalog {
            if !stored.contains(m.id.as_str()) {
                self.r.leftover("backups_without_manifest_file", 1);
                if self.repair {
                    let json = serde_json::to_vec(m)
                        .map_err(|e| Error::internal("encoding a manifest", e))?;
                    dir.put_manifest(&m.id, &json)?;
                    self.r.repaired("manifest_files_written", 1);
                }
            }
        }
        for id in stored.difference(&known) {
            self.r.leftover("manifest_files_without_backup", 1);
            if self.repair {
                if let Ok(b) = id.parse() {
                    dir.delete_manifest(&b)?;
                    self.r.repaired("manifest_files_removed", 1);
                }
            }
        }
        Ok(())
    }

    fn temp_files(&mut self) -> Result<()> {
        let mut files = self.chunks.temp_files()?;
        files.extend(self.indexes.temp_files()?);
        self.r.leftover("temp_files", files.len() as u64);
        if self.repair {
            for f in &files {
                std::fs::remove_file(f)?;
            }
            self.r.repaired("temp_files_removed", files.len() as u64);
        }
        Ok(())
    }

    fn marks(&mut self) -> Result<()> {
        if self.catalog.has_marks()? {
            self.r.leftover("gc_marks", 1);
            if self.repair {
                self.catalog.clear_marks()?;
                self.r.repaired("gc_marks_cleared", 1);
            }
        }
        Ok(())
    }

    /// Every chunk row has a file of the recorded size, unless it is marked bad; the chunk
    /// counters match the rows.
    fn chunk_rows(&mut self) -> Result<()> {
        let (mut rows, mut bytes) = (0i64, 0i64);
        for page in self.catalog.chunk_pages(SLICE) {
            let page = page?;
            for bad in &page.bad {
                self.r.problem("undecodable_chunk_rows", bad.to_string());
            }
            let mut b = self.catalog.batch();
            for &(id, m) in &page.rows {
                rows += 1;
                bytes += m.stored_len as i64;
                if m.is_bad() {
                    self.r.leftover("chunks_marked_bad", 1);
                    continue;
                }
                let kind = match self.chunks.len(&id)? {
                    Some(n) if n == m.stored_len => continue,
                    Some(_) => "chunk_files_wrong_size",
                    None => "chunk_files_missing",
                };
                self.r.problem(kind, id.to_string());
                if self.repair {
                    if kind == "chunk_files_wrong_size" {
                        std::fs::create_dir_all(&self.quarantine)?;
                        std::fs::rename(self.chunks.path(&id), self.quarantine.join(id.hex()))?;
                    }
                    b.put_chunk(
                        &id,
                        ChunkMeta {
                            flags: m.flags | ChunkMeta::BAD,
                            ..m
                        },
                    );
                    self.r.repaired("chunks_marked_bad", 1);
                }
            }
            if !b.is_empty() {
                self.catalog.write(b)?;
            }
        }
        self.r.examined.insert("chunk_rows", rows as u64);
        self.counter(counter::CHUNKS, rows)?;
        self.counter(counter::STORED_BYTES, bytes)
    }

    fn counter(&mut self, name: &'static str, actual: i64) -> Result<()> {
        let stored = self.catalog.counter(name)?;
        if stored != actual {
            self.r.problem(
                "counters",
                format!("{name}: catalog says {stored}, rows say {actual}"),
            );
            if self.repair {
                let mut b = self.catalog.batch();
                b.set_counter(name, actual);
                self.catalog.write(b)?;
                self.r.repaired("counters_rebuilt", 1);
            }
        }
        Ok(())
    }

    /// Chunk files without a row: leftovers, moved to quarantine by `--repair` (a slice of the
    /// listing at a time).
    fn chunk_files(&mut self) -> Result<()> {
        let (mut files, mut orphans) = (0u64, 0u64);
        let (catalog, chunks, quarantine, repair) =
            (&self.catalog, &self.chunks, &self.quarantine, self.repair);
        chunks.for_each_slice(SLICE, |ids| {
            files += ids.len() as u64;
            let metas = catalog.chunks(&ids)?;
            for (c, _) in ids.iter().zip(metas).filter(|(_, m)| m.is_none()) {
                orphans += 1;
                if repair {
                    std::fs::create_dir_all(quarantine)?;
                    std::fs::rename(chunks.path(c), quarantine.join(c.hex()))?;
                }
            }
            Ok::<(), Error>(())
        })?;
        self.r.examined.insert("chunk_files", files);
        self.r.leftover("orphan_chunk_files", orphans);
        if repair {
            self.r.repaired("orphan_chunk_files_quarantined", orphans);
        }
        Ok(())
    }

    /// Every backup's index blobs are whole and every chunk they name has a row; the time index
    /// and the backup counters agree with the manifests; unreferenced index blobs are leftovers.
    fn backups(&mut self) -> Result<()> {
        let (mut n, mut logical) = (0i64, 0i64);
        let mut live_indexes = HashSet::new();
        let mut manifests = Vec::new();
        self.catalog.for_each_backup(|m| {
            manifests.push(m);
            Ok(())
        })?;
        for m in &manifests {
            n += 1;
            logical += m.stats.logical_bytes as i64;
            let file_index_chunks: Vec<ChunkId> = m.extra_chunks().copied().collect();
            for c in self.absent(&file_index_chunks)? {
                self.r.problem(
                    "dangling_references",
                    format!("backup {} file index → chunk {c}", m.id),
                );
            }
            for d in &m.disks {
                live_indexes.insert(d.index_blake3.clone());
                let mut ids = Vec::with_capacity(SLICE);
                let mut missing = Vec::new();
                let walk = crate::repo::index_ids(&self.indexes, m, d, |c| {
                    if !c.is_hole() {
                        ids.push(c);
                    }
                    if ids.len() == SLICE {
                        missing.extend(self.absent(&std::mem::take(&mut ids))?);
                    }
                    Ok(())
                });
                if let Err(e) = walk {
                    self.r.problem(
                        "index_blobs_bad",
                        format!("backup {} disk {}: {}", m.id, d.name, e.message),
                    );
                    continue;
                }
                missing.extend(self.absent(&ids)?);
                for c in missing {
                    self.r.problem(
                        "dangling_references",
                        format!("backup {} disk {} → chunk {c}", m.id, d.name),
                    );
                }
            }
        }
        self.r.examined.insert("backups", n as u64);
        self.counter(counter::BACKUPS, n)?;
        self.counter(counter::LOGICAL_BYTES, logical)?;
        // Time index: every key of every backup, and no other.
        let time = self.catalog.check_time_index(&manifests)?;
        let mut b = self.catalog.batch();
        for k in &time.stale {
            self.r.problem("time_index_stale_keys", k.to_string());
            if self.repair {
                b.delete_time_key(k);
                self.r.repaired("time_index_keys_fixed", 1);
            }
        }
        for k in &time.missing {
            self.r.problem("time_index_missing_keys", k.to_string());
            if self.repair {
                b.put_time_key(k);
                self.r.repaired("time_index_keys_fixed", 1);
            }
        }
        if !b.is_empty() {
            self.catalog.write(b)?;
        }
        // Index blobs no backup names.
        let mut orphans = Vec::new();
        self.indexes.for_each_slice(SLICE, |ids| {
            orphans.extend(ids.into_iter().filter(|h| !live_indexes.contains(&h.hex())));
            Ok::<(), Error>(())
        })?;
        self.r.leftover("orphan_index_blobs", orphans.len() as u64);
        if self.repair {
            for h in &orphans {
                self.indexes.delete(h)?;
            }
            self.r
                .repaired("orphan_index_blobs_removed", orphans.len() as u64);
        }
        Ok(())
    }

    /// Chunks among `ids` with no row.
    fn absent(&self, ids: &[ChunkId]) -> Result<Vec<ChunkId>> {
        let metas = self.catalog.chunks(ids)?;
        Ok(ids
            .iter()
            .zip(metas)
            .filter(|(_, m)| m.is_none())
            .map(|(c, _)| *c)
            .collect())
    }

    /// Pins and records belong to open sessions; pins name chunks that have rows.
    fn sessions(&mut self) -> Result<()> {
        let open: HashSet<SessionId> = self
            .catalog
            .sessions()?
            .into_iter()
            .filter(|s| s.state == SessionState::Open)
            .map(|s| s.id)
            .collect();
        self.r.examined.insert("open_sessions", open.len() as u64);
        // Record runs of sessions that are not open; malformed rows count as theirs.
        for page in self.catalog.entries_pages(SLICE) {
            let page = page?;
            let mut b = self.catalog.batch();
            for r in page.rows.iter().filter(|r| !open.contains(&r.session)) {
                self.r.stale_session_data(self.repair);
                if self.repair {
                    b.delete_entries(r);
                }
            }
            for bad in &page.bad {
                self.r.stale_session_data(self.repair);
                if self.repair {
                    b.delete_bad_row(bad);
                }
            }
            if !b.is_empty() {
                self.catalog.write(b)?;
            }
        }
        // Pins: of open sessions only, and of chunks that have rows.
        for page in self.catalog.pin_pages(SLICE) {
            let page = page?;
            let mut b = self.catalog.batch();
            let (live, stale): (Vec<&PinRow>, Vec<&PinRow>) =
                page.rows.iter().partition(|p| open.contains(&p.session));
            for p in stale {
                self.r.stale_session_data(self.repair);
                if self.repair {
                    b.delete_pin(&p.session, &p.chunk);
                }
            }
            for bad in &page.bad {
                self.r.stale_session_data(self.repair);
                if self.repair {
                    b.delete_bad_row(bad);
                }
            }
            let ids: Vec<ChunkId> = live.iter().map(|p| p.chunk).collect();
            for (p, m) in live.iter().zip(self.catalog.chunks(&ids)?) {
                if m.is_none() {
                    self.r
                        .problem("pins_of_missing_chunks", p.chunk.to_string());
                    if self.repair {
                        b.delete_pin(&p.session, &p.chunk);
                        self.r.repaired("pins_removed", 1);
                    }
                }
            }
            if !b.is_empty() {
                self.catalog.write(b)?;
            }
        }
        Ok(())
    }

    /// Owner rows name chunks that exist.
    fn owners(&mut self) -> Result<()> {
        for page in self.catalog.owner_pages(SLICE) {
            let page = page?;
            let stale = self.catalog.stale_owners(&page.rows)?;
            let mut b = self.catalog.batch();
            for o in &stale {
                self.r.leftover("stale_owner_rows", 1);
                if self.repair {
                    b.delete_owner(o);
                    self.r.repaired("stale_owner_rows_removed", 1);
                }
            }
            // A row that does not decode names no chunk that exists.
            for bad in &page.bad {
                self.r.leftover("stale_owner_rows", 1);
                if self.repair {
                    b.delete_bad_row(bad);
                    self.r.repaired("stale_owner_rows_removed", 1);
                }
            }
            if !b.is_empty() {
                self.catalog.write(b)?;
            }
        }
        Ok(())
    }
}
