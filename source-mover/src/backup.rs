//! One backup: plan → read → hash → find-missing → compress → upload → record → commit.
//!
//! Threads and channels: a reader thread reads the planned bytes of each block (dropped bytes
//! stay zero) and spots all-zero blocks; a hasher thread computes blake3; the async coordinator
//! batches blocks, asks the repository which chunks it lacks, compresses those on blocking
//! threads and uploads them over up to `streams` concurrent HTTP/2 streams, then appends the
//! batch's index records and saves the journal. Channels are bounded, so memory is bounded by
//! the batch size and the stream count, not by the disk.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::Method;
use schema::api::{BackupList, Manifest, SessionStatus};
use schema::files::FileEntry;
use schema::{ChunkId, IndexRecord, SessionId};
use serde::Serialize;
use serde_json::json;

use crate::cbt::{ChangeList, ChangedBlocks};
use crate::client::RepoClient;
use crate::error::{Error, Result};
use crate::journal::{self, Journal};
use crate::plan::{self, DiskPlan};
use crate::progress::Progress;
use crate::ranges::Ranges;
use crate::source::BlockSource;

/// Which backup an incremental builds on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    /// The newest backup of the same source, if any.
    Latest,
    /// None: a full backup.
    None,
    /// This backup.
    Id(String),
}

/// What to back up and how.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// Source name.
    pub source: String,
    /// Disks: (name, source). Every byte of a disk is read through its source.
    pub disks: Vec<(String, Arc<dyn BlockSource>)>,
    /// What changed since the base, per disk name.
    pub cbt: BTreeMap<String, Arc<dyn ChangeList>>,
    /// Base choice.
    pub base: Base,
    /// Block size.
    pub block_size: u32,
    /// zstd level.
    pub zstd_level: i32,
    /// Exclusions: (disk name, glob).
    pub excludes: Vec<(String, String)>,
    /// Concurrent uploads.
    pub streams: usize,
    /// Where the journal lives.
    pub state_dir: PathBuf,
    /// Show progress on stderr.
    pub progress: bool,
    /// Index the guest files of every ext2/3/4 file system (file listing, single-file restore
    /// and search in the catalog). Off: the backup has no file index; excludes still apply.
    pub file_index: bool,
}

/// One disk in the report.
#[derive(Debug, Clone, Serialize)]
pub struct DiskReport {
    /// Name.
    pub name: String,
    /// The source read ([`BlockSource::describe`]: an image's or device's path).
    pub path: String,
    /// Size.
    pub size: u64,
    /// Partitions and file systems found.
    pub found: Vec<String>,
    /// Whether a CBT list limited what was read.
    pub cbt: bool,
}

/// What a backup did.
#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    /// The committed backup.
    pub backup_id: String,
    /// Source.
    pub source: String,
    /// Base backup.
    pub base: Option<String>,
    /// Whether this run continued an interrupted one.
    pub resumed: bool,
    /// Sum of disk sizes.
    pub logical_bytes: u64,
    /// Bytes read from the disks.
    pub read_bytes: u64,
    /// Bytes not read or not sent, by reason.
    pub skipped_bytes: BTreeMap<String, u64>,
    /// Blocks looked at.
    pub blocks: u64,
    /// Index records sent.
    pub records: u64,
    /// Entries of the guest file indexes uploaded with the backup.
    pub files_indexed: u64,
    /// Seconds spent walking file systems for the file indexes and uploading them.
    pub file_index_seconds: f64,
    /// Chunks this run uploaded.
    pub chunks_uploaded: u64,
    /// Compressed bytes this run uploaded.
    pub sent_bytes: u64,
    /// Chunks the backup stored for the first time (repository's count).
    pub new_chunks: u64,
    /// Chunks the backup found already stored (repository's count).
    pub reused_chunks: u64,
    /// Bytes the backup added to the repository.
    pub stored_bytes: u64,
    /// Wall time of this run.
    pub duration_ms: u64,
    /// Peak resident memory of the mover.
    pub peak_rss_bytes: u64,
    /// Disks.
    pub disks: Vec<DiskReport>,
}

/// A block on its way through the pipeline.
struct Item {
    disk: usize,
    block: u64,
    /// Bytes read from the source for this block.
    read: u64,
    /// `None` for a hole (nothing to read, or all zeros).
    data: Option<Vec<u8>>,
    id: ChunkId,
    zero: bool,
}

fn random_session() -> Result<SessionId> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .map_err(|e| Error::io("/dev/urandom", e))?;
    Ok(SessionId::from_random(b))
}

/// Peak resident set size of this process (`VmHWM`).
pub fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

/// Runs a backup (or continues the interrupted one of the same command).
///
/// # Errors
/// Disk, repository and journal errors, each naming what it concerns.
pub async fn backup(client: &RepoClient, opts: &BackupOptions) -> Result<BackupReport> {
    let started = Instant::now();
    let names: Vec<String> = opts.disks.iter().map(|d| d.0.clone()).collect();
    for n in opts.cbt.keys().chain(opts.excludes.iter().map(|e| &e.0)) {
        if !names.contains(n) {
            return Err(Error::Invalid(format!(
                "--cbt/--exclude name disk {n}, which is not one of the --disk names {names:?}"
            )));
        }
    }
    // Plan the disks (metadata reads only, through each disk's source).
    let o = opts.clone();
    let disks: Vec<Arc<dyn BlockSource>> = opts.disks.iter().map(|d| d.1.clone()).collect();
    let plans = tokio::task::spawn_blocking(move || -> Result<Vec<DiskPlan>> {
        let mut plans = Vec::new();
        for (name, d) in &o.disks {
            let ex: Vec<String> = o
                .excludes
                .iter()
                .filter(|e| &e.0 == name)
                .map(|e| e.1.clone())
                .collect();
            plans.push(plan::plan_deferred(d.as_ref(), &ex)?);
        }
        Ok(plans)
    })
    .await
    .map_err(|e| Error::Invalid(format!("planning failed: {e}")))??;

    // Changed-block lists are read before anything is sent: one that cannot be used stops the
    // run here.
    let cbt: BTreeMap<String, ChangedBlocks> = opts
        .cbt
        .iter()
        .map(|(n, list)| Ok((n.clone(), list.load()?)))
        .collect::<Result<_>>()?;

    // Continue an interrupted run, or start a session.
    let key = journal::key(client.url(), &opts.source, &opts.disks);
    let mut resumed = false;
    let mut journal = None;
    if let Some(j) = Journal::load(&opts.state_dir, &key)? {
        match client
            .get_json::<SessionStatus>(&format!("/v1/sessions/{}", j.session))
            .await
        {
            Ok(st) if st.state == schema::api::SessionState::Open => {
                check_cbt_bases(&cbt, j.base.as_deref())?;
                eprintln!("source-mover: continuing interrupted session {}", j.session);
                resumed = true;
                journal = Some(j);
            }
            Ok(st) if st.state == schema::api::SessionState::Committed => {
                let id = st.backup_id.map(|b| b.to_string()).unwrap_or_default();
                eprintln!("source-mover: the interrupted run had already committed backup {id}");
                j.remove();
                return report_from_manifest(
                    client,
                    &id,
                    opts,
                    &plans,
                    true,
                    started,
                    Default::default(),
                )
                .await;
            }
            Ok(_) | Err(Error::Repo { status: 404, .. }) => {
                eprintln!(
                    "source-mover: the interrupted session {} is gone; starting over",
                    j.session
                );
                j.remove();
            }
            Err(e) => return Err(e),
        }
    }
    let mut journal = match journal {
        Some(j) => j,
        None => {
            let base = resolve_base(client, opts).await?;
            check_cbt_bases(&cbt, base.as_deref())?;
            let s = random_session()?;
            let disks_json: Vec<_> = opts
                .disks
                .iter()
                .zip(&plans)
                .map(
                    |((n, _), p)| json!({"name": n, "size": p.size, "block_size": opts.block_size}),
                )
                .collect();
            let body = json!({"source": opts.source, "base": base, "disks": disks_json, "labels": {"mover": "source-mover"}});
            client
                .send_json(Method::PUT, &format!("/v1/sessions/{s}"), &body)
                .await?;
            let j = Journal::new(&opts.state_dir, &key, s.to_string(), base, &names);
            j.save()?;
            j
        }
    };
    let session = journal.session.clone();

    // The base's index of each disk, when it has one with the same block size.
    let base_manifest = match &journal.base {
        Some(b) => Some(
            client
                .get_json::<Manifest>(&format!("/v1/backups/{b}"))
                .await?,
        ),
        None => None,
    };
    let mut base_index: Vec<Option<Vec<ChunkId>>> = Vec::new();
    for name in &names {
        let idx = match &base_manifest {
            Some(m)
                if m.disks
                    .iter()
                    .any(|d| d.name.as_str() == name && d.block_size == opts.block_size) =>
            {
                let raw = client
                    .send(
                        Method::GET,
                        &format!("/v1/backups/{}/disks/{name}/index", m.id),
                        &[],
                        Bytes::new(),
                    )
                    .await?
                    .body;
                Some(
                    raw.chunks_exact(32)
                        .filter_map(ChunkId::from_slice)
                        .collect(),
                )
            }
            _ => None,
        };
        base_index.push(idx);
    }

    // Which blocks each disk processes: all, or with CBT those overlapping changed extents
    // (plus any the base does not have).
    let bs = u64::from(opts.block_size);
    let mut work: Vec<Ranges> = Vec::new();
    for (i, (name, _)) in opts.disks.iter().enumerate() {
        let nblocks = plans[i].size.div_ceil(bs);
        let all = Ranges::single(0, nblocks);
        let w = match (cbt.get(name), &base_index[i]) {
            (Some(list), Some(base)) => {
                let blocks: Vec<(u64, u64)> = list
                    .changed
                    .as_slice()
                    .iter()
                    .map(|&(a, b)| (a / bs, b.div_ceil(bs)))
                    .collect();
                Ranges::from_unsorted(blocks)
                    .union(&Ranges::single(base.len() as u64, nblocks))
                    .intersect(&all)
            }
            (Some(_), None) => {
                eprintln!("source-mover: disk {name}: no base to apply the CBT list to; reading it in full");
                all
            }
            _ => all,
        };
        work.push(w);
    }
    let states: Vec<crate::journal::DiskState> = names
        .iter()
        .map(|n| journal.disks.get(n).cloned().unwrap_or_default())
        .collect();
    let total: u64 = work
        .iter()
        .zip(&states)
        .map(|(w, st)| w.subtract(&Ranges::single(0, st.next_block)).total() * bs)
        .sum();
    let progress = Progress::start(total, opts.progress);

    // Reader and hasher threads.
    let disks = Arc::new(disks);
    let plans = Arc::new(plans);
    // The guest file systems' metadata walk for the file indexes runs beside the data pipeline
    // (the block map did not need it without excludes), and its upload as soon as it is done.
    let walker = {
        let (disks, plans, wanted) = (disks.clone(), plans.clone(), opts.file_index);
        tokio::task::spawn_blocking(move || -> Result<Vec<plan::FileIndexes>> {
            if !wanted {
                return Ok(vec![(Vec::new(), 0.0); disks.len()]);
            }
            disks
                .iter()
                .zip(plans.iter())
                .map(|(d, p)| {
                    let (mut files, secs) = plan::index_files(d.as_ref(), &p.unindexed)?;
                    files.splice(0..0, p.files.iter().cloned());
                    Ok((files, secs + p.files_seconds))
                })
                .collect()
        })
    };
    let index_job = async {
        let walked = walker
            .await
            .map_err(|e| Error::Invalid(format!("the file index walk failed: {e}")))??;
        let t = Instant::now();
        let files: Vec<_> = walked.iter().map(|(f, _)| f.as_slice()).collect();
        let refs = upload_file_indexes(
            client,
            &session.to_string(),
            &names,
            &files,
            opts.zstd_level,
        )
        .await?;
        let entries: u64 = files
            .iter()
            .flat_map(|f| f.iter())
            .map(|(_, e)| e.len() as u64)
            .sum();
        let secs = t.elapsed().as_secs_f64() + walked.iter().map(|(_, s)| s).sum::<f64>();
        Ok::<_, Error>((refs, entries, secs))
    };
    let (raw_tx, mut raw_rx) = tokio::sync::mpsc::channel::<Result<Item>>(8);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Item>>(8);
    let reader = {
        let (disks, plans, work, progress) =
            (disks.clone(), plans.clone(), work.clone(), progress.clone());
        let starts: Vec<u64> = states
            .iter()
            .map(|s| if s.done { u64::MAX } else { s.next_block })
            .collect();
        std::thread::spawn(move || {
            for (d, disk) in disks.iter().enumerate() {
                for &(a, b) in work[d].as_slice() {
                    for block in a.max(starts[d])..b {
                        let item = read_block(disk.as_ref(), &plans[d], d, block, bs);
                        if let Ok(it) = &item {
                            progress.read.fetch_add(it.read, Ordering::Relaxed);
                        }
                        if raw_tx.blocking_send(item).is_err() {
                            return;
                        }
                    }
                }
            }
        })
    };
    let hasher = std::thread::spawn(move || {
        // Digests of all-zero blocks, per length (the block size and a short last block).
        let mut zero_ids: std::collections::HashMap<usize, ChunkId> =
            std::collections::HashMap::new();
        while let Some(mut item) = raw_rx.blocking_recv() {
            if let Ok(it) = &mut item {
                if let Some(d) = &it.data {
                    let id = ChunkId::of(d);
                    let zero = *zero_ids
                        .entry(d.len())
                        .or_insert_with(|| ChunkId::of(&vec![0u8; d.len()]));
                    if id == zero {
                        it.zero = true;
                        it.data = None;
                    } else {
                        it.id = id;
                    }
                }
            }
            if tx.blocking_send(item).is_err() {
                return;
            }
        }
    });

    // The coordinator.
    // A batch is the unit of acknowledgement: small enough that an interrupted run loses little
    // (at most 32 MiB or 64 blocks), large enough that find-missing and record round trips stay rare.
    let batch_max = ((32u64 << 20) / bs).clamp(8, 64) as usize;
    let mut ctx = Coordinator {
        client,
        session: &session,
        journal: &mut journal,
        names: &names,
        base_index: &base_index,
        known: HashSet::new(),
        level: opts.zstd_level,
        uploads: Arc::new(tokio::sync::Semaphore::new(opts.streams.max(1))),
        in_flight: std::collections::VecDeque::new(),
        progress: &progress,
        uploaded: 0,
        sent: 0,
        records: 0,
        zero_bytes: 0,
        unchanged_read: 0,
        blocks: 0,
    };
    let mut batch: Vec<Item> = Vec::with_capacity(batch_max);
    let pipeline = async {
        while let Some(item) = rx.recv().await {
            let item = item?;
            if batch.last().is_some_and(|l| l.disk != item.disk) || batch.len() >= batch_max {
                ctx.submit(std::mem::take(&mut batch), bs).await?;
            }
            batch.push(item);
        }
        ctx.submit(std::mem::take(&mut batch), bs).await?;
        ctx.drain().await
    };
    let outcome = tokio::try_join!(pipeline, index_job);
    drop(rx);
    let _ = reader.join();
    let _ = hasher.join();
    progress.finish();
    let ((), (file_indexes, files_indexed, file_index_seconds)) = outcome?;
    for n in &names {
        if let Some(s) = ctx.journal.disks.get_mut(n) {
            s.done = true;
        }
    }
    ctx.journal.save()?;

    // Skipped bytes by reason, over the bytes this run covered.
    let mut skipped: BTreeMap<String, u64> = BTreeMap::new();
    for (i, plan) in plans.iter().enumerate() {
        let covered = Ranges::from_unsorted(
            work[i]
                .as_slice()
                .iter()
                .map(|&(a, b)| (a * bs, (b * bs).min(plan.size)))
                .collect(),
        );
        for (reason, r) in &plan.dropped {
            *skipped.entry((*reason).to_string()).or_default() += r.intersect(&covered).total();
        }
        *skipped.entry("unchanged".into()).or_default() += plan.size - covered.total();
    }
    *skipped.entry("zero".into()).or_default() += ctx.zero_bytes;
    *skipped.entry("unchanged".into()).or_default() += ctx.unchanged_read;

    // Commit. A chunk the repository lost or found damaged since the base was made (verify
    // marks it bad) is named in a `MISSING_CHUNKS` refusal: the blocks that reference it are
    // read again from the disk and sent, and the commit is repeated.
    let read_bytes = || progress.read.load(Ordering::Relaxed);
    let mut rounds = 0;
    let answer = loop {
        let body = commit_body(
            ctx.journal,
            &names,
            opts,
            resumed,
            read_bytes(),
            &skipped,
            &file_indexes,
        )?;
        let path = format!("/v1/sessions/{session}/commit");
        match client.send_json(Method::POST, &path, &body).await {
            Err(Error::Repo {
                status: 422,
                code,
                detail,
                message,
            }) if code == "MISSING_CHUNKS" && rounds < HEAL_ROUNDS => {
                rounds += 1;
                let missing: HashSet<ChunkId> = detail
                    .as_deref()
                    .and_then(|d| d.get("chunks"))
                    .and_then(|c| serde_json::from_value::<Vec<ChunkId>>(c.clone()).ok())
                    .unwrap_or_default()
                    .into_iter()
                    .collect();
                let healed = heal(&mut ctx, &disks, &plans, &missing, bs).await?;
                if healed == 0 {
                    return Err(Error::Repo {
                        status: 422,
                        code,
                        message: format!("{message} (none of them is a block of these disks, so the mover cannot send it again)"),
                        detail,
                    });
                }
                eprintln!(
                    "source-mover: the repository lacks {} chunks this backup inherits from its base (lost or damaged since); read {healed} blocks again from the disks and sent them",
                    missing.len()
                );
            }
            r => break r?,
        }
    };
    let id = answer.json::<serde_json::Value>()?["backup_id"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let read_bytes = read_bytes();
    let (records, uploaded, sent, blocks) = (ctx.records, ctx.uploaded, ctx.sent, ctx.blocks);
    journal.remove();
    let mut r = report_from_manifest(client, &id, opts, &plans, resumed, started, skipped).await?;
    r.read_bytes = read_bytes;
    r.files_indexed = files_indexed;
    r.file_index_seconds = file_index_seconds;
    r.records = records;
    r.chunks_uploaded = uploaded;
    r.sent_bytes = sent;
    r.blocks = blocks;
    Ok(r)
}

/// How often a commit refused for `MISSING_CHUNKS` is healed and repeated (each round heals
/// up to the 1,000 chunks a refusal lists).
const HEAL_ROUNDS: usize = 64;

/// The commit request: per disk the acknowledged record count and checksum, and the run's figures.
fn commit_body(
    journal: &Journal,
    names: &[String],
    opts: &BackupOptions,
    resumed: bool,
    read_bytes: u64,
    skipped: &BTreeMap<String, u64>,
    file_indexes: &[serde_json::Value],
) -> Result<serde_json::Value> {
    let mut commit_disks = serde_json::Map::new();
    for n in names {
        let entries = journal.disks.get(n).map(|s| s.entries).unwrap_or(0);
        commit_disks.insert(
            n.clone(),
            json!({"entries": entries, "records_blake3": journal.records_blake3(n, entries)?}),
        );
    }
    let paths: BTreeMap<&str, String> = opts
        .disks
        .iter()
        .map(|(n, d)| (n.as_str(), d.describe()))
        .collect();
    Ok(json!({
        "disks": commit_disks,
        "metadata": {"mover": concat!("source-mover ", env!("CARGO_PKG_VERSION")), "paths": paths, "block_size": opts.block_size, "zstd_level": opts.zstd_level, "resumed": resumed},
        "client_stats": {"read_bytes": read_bytes, "skipped_bytes": skipped},
        "file_indexes": file_indexes,
    }))
}

/// Reads again, hashes and sends every block whose chunk (this session's newest record for
/// it, else the base's) is in `missing`, recording those whose content is no longer the
/// chunk's; returns how many blocks it sent. The repository replaces a damaged chunk with a
/// sound upload of it.
async fn heal(
    ctx: &mut Coordinator<'_>,
    disks: &Arc<Vec<Arc<dyn BlockSource>>>,
    plans: &Arc<Vec<DiskPlan>>,
    missing: &HashSet<ChunkId>,
    bs: u64,
) -> Result<u64> {
    let mut healed = 0;
    for (d, name) in ctx.names.iter().enumerate() {
        let nblocks = plans[d].size.div_ceil(bs);
        let mut current: BTreeMap<u64, ChunkId> = BTreeMap::new();
        if let Some(base) = &ctx.base_index[d] {
            for (block, id) in base.iter().enumerate().take(nblocks as usize) {
                if missing.contains(id) {
                    current.insert(block as u64, *id);
                }
            }
        }
        let entries = ctx.journal.disks.get(name).map(|s| s.entries).unwrap_or(0);
        for r in ctx.journal.records(name, entries)? {
            if missing.contains(&r.id) {
                current.insert(r.block, r.id);
            } else {
                current.remove(&r.block);
            }
        }
        if current.is_empty() {
            continue;
        }
        let blocks: Vec<(u64, ChunkId)> = current.into_iter().collect();
        let (disks, plans) = (disks.clone(), plans.clone());
        let items = tokio::task::spawn_blocking(move || -> Result<Vec<(ChunkId, Item)>> {
            blocks
                .into_iter()
                .map(|(block, was)| {
                    Ok((was, read_block(disks[d].as_ref(), &plans[d], d, block, bs)?))
                })
                .collect()
        })
        .await
        .map_err(|e| Error::Invalid(format!("re-reading blocks failed: {e}")))??;
        let mut recs = Vec::new();
        for (was, mut it) in items {
            ctx.progress.read.fetch_add(it.read, Ordering::Relaxed);
            let data = it.data.take().unwrap_or_default();
            let id = if data.iter().all(|&b| b == 0) {
                ChunkId::HOLE
            } else {
                ChunkId::of(&data)
            };
            if !id.is_hole() {
                let len = data.len();
                let level = ctx.level;
                let frame = tokio::task::spawn_blocking(move || zstd::bulk::compress(&data, level))
                    .await
                    .map_err(|e| Error::Invalid(e.to_string()))?
                    .map_err(|e| {
                        Error::io(format!("compressing block {} of disk {name}", it.block), e)
                    })?;
                ctx.sent += frame.len() as u64;
                ctx.uploaded += 1;
                ctx.client
                    .put_chunk(ctx.session, &id, Bytes::from(frame), len)
                    .await?;
                ctx.known.insert(id);
            }
            if id != was {
                recs.push(IndexRecord {
                    block: it.block,
                    id,
                });
            }
            healed += 1;
        }
        ctx.records += recs.len() as u64;
        append_records(ctx.client, ctx.session, ctx.journal, name, &recs).await?;
        ctx.journal.save()?;
    }
    Ok(healed)
}

/// Appends `recs` to disk `name`'s records in the session after the journal's acknowledged
/// ones, checks the count the repository then holds, and adds them to the journal's records
/// (the caller saves the journal).
async fn append_records(
    client: &RepoClient,
    session: &str,
    journal: &mut Journal,
    name: &str,
    recs: &[IndexRecord],
) -> Result<()> {
    let state = journal.disks.entry(name.to_owned()).or_default();
    let before = state.entries;
    if recs.is_empty() {
        return Ok(());
    }
    let body = IndexRecord::encode_all(recs);
    let path = format!("/v1/sessions/{session}/disks/{name}/entries?start={before}");
    let a = client
        .send(
            Method::PUT,
            &path,
            &[("content-type", "application/octet-stream")],
            body.clone().into(),
        )
        .await?;
    let held: u64 = a
        .headers
        .get("index-entries")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    let expect = before + recs.len() as u64;
    if held != expect {
        return Err(Error::Invalid(format!(
            "disk {name}: the repository holds {held} records, expected {expect}; the session is inconsistent"
        )));
    }
    journal.append_records(name, before, &body)?;
    if let Some(s) = journal.disks.get_mut(name) {
        s.entries = expect;
    }
    Ok(())
}

/// Refuses changed-block lists that do not count from `base`, the backup this run builds on
/// (a list from another base would silently leave out changes). Without a base the lists are
/// not used: every block is read.
fn check_cbt_bases(cbt: &BTreeMap<String, ChangedBlocks>, base: Option<&str>) -> Result<()> {
    match base {
        Some(b) => cbt.iter().try_for_each(|(disk, l)| l.check_base(disk, b)),
        None => Ok(()),
    }
}

/// The base of a new session: `opts.base` resolved to a backup id. A base with another block
/// size on a disk of the same name cannot be built on (the repository refuses the session):
/// with [`Base::Latest`] this backup starts a new chain, a full backup, and says why on stderr;
/// a base named by id is an error, before anything is created.
async fn resolve_base(client: &RepoClient, opts: &BackupOptions) -> Result<Option<String>> {
    let m = match &opts.base {
        Base::None => return Ok(None),
        Base::Latest => {
            let q = format!("/v1/backups?source={}&limit=1", encode(&opts.source));
            match client
                .get_json::<BackupList>(&q)
                .await?
                .backups
                .into_iter()
                .next()
            {
                Some(m) => m,
                None => return Ok(None),
            }
        }
        Base::Id(id) => match client
            .get_json::<Manifest>(&format!("/v1/backups/{id}"))
            .await
        {
            Ok(m) => m,
            // Creating the session names the missing base in the protocol's terms.
            Err(Error::Repo { status: 404, .. }) => return Ok(Some(id.clone())),
            Err(e) => return Err(e),
        },
    };
    let other = m.disks.iter().find(|d| {
        d.block_size != opts.block_size && opts.disks.iter().any(|(n, _)| n == d.name.as_str())
    });
    let Some(d) = other else {
        return Ok(Some(m.id.to_string()));
    };
    // As --block-size spells them: 256K, 512K, 1M, 4M.
    let human = |b: u32| match b % (1 << 20) {
        0 => format!("{}M", b >> 20),
        _ => format!("{}K", b >> 10),
    };
    let (theirs, ours) = (human(d.block_size), human(opts.block_size));
    if let Base::Id(id) = &opts.base {
        return Err(Error::Refused(format!(
            "--base {id}: disk {} of that backup has block size {theirs}, this backup {ours}; an \
             incremental keeps its base's block size (use --block-size {theirs}, or --base none \
             for a full backup)",
            d.name.as_str()
        )));
    }
    eprintln!(
        "source-mover: base {} has block size {theirs}, this backup {ours}: starting a new chain with a full backup",
        m.id
    );
    Ok(None)
}

/// Uploads each file system's index (JSON lines, cut into 1 MiB chunks) into the session and
/// returns the commit's `file_indexes`; `files` holds each disk's (partition, entries). Safe to
/// repeat: find-missing pins what is already there.
async fn upload_file_indexes(
    client: &RepoClient,
    session: &str,
    names: &[String],
    files: &[&[(u32, Vec<FileEntry>)]],
    level: i32,
) -> Result<Vec<serde_json::Value>> {
    let mut refs = Vec::new();
    for (name, disk_files) in names.iter().zip(files) {
        for (part, entries) in disk_files.iter() {
            let bytes = crate::guest::to_json_lines(entries);
            let pieces: Vec<&[u8]> = bytes.chunks(1 << 20).collect();
            let ids: Vec<ChunkId> = pieces.iter().map(|p| ChunkId::of(p)).collect();
            if !ids.is_empty() {
                let body: Vec<u8> = ids.iter().flat_map(|c| c.0).collect();
                let a = client
                    .send(
                        Method::POST,
                        &format!("/v1/sessions/{session}/find-missing"),
                        &[("content-type", "application/octet-stream")],
                        body.into(),
                    )
                    .await?;
                let mut missing: HashSet<ChunkId> = a
                    .body
                    .chunks_exact(32)
                    .filter_map(ChunkId::from_slice)
                    .collect();
                for (id, piece) in ids.iter().zip(&pieces) {
                    if missing.remove(id) {
                        let frame = zstd::bulk::compress(piece, level).map_err(|e| {
                            Error::Invalid(format!("compressing a file index: {e}"))
                        })?;
                        client
                            .put_chunk(session, id, Bytes::from(frame), piece.len())
                            .await?;
                    }
                }
            }
            refs.push(json!({
                "disk": name, "partition": part, "files": entries.len(),
                "bytes": bytes.len(), "chunks": ids,
            }));
        }
    }
    Ok(refs)
}

async fn report_from_manifest(
    client: &RepoClient,
    id: &str,
    opts: &BackupOptions,
    plans: &[DiskPlan],
    resumed: bool,
    started: Instant,
    skipped: BTreeMap<String, u64>,
) -> Result<BackupReport> {
    let m: Manifest = client.get_json(&format!("/v1/backups/{id}")).await?;
    Ok(BackupReport {
        backup_id: id.to_owned(),
        source: m.source.clone(),
        base: m.base.as_ref().map(|b| b.to_string()),
        resumed,
        logical_bytes: m.stats.logical_bytes,
        read_bytes: m.stats.read_bytes,
        skipped_bytes: if skipped.is_empty() {
            m.stats.skipped_bytes.clone()
        } else {
            skipped
        },
        blocks: 0,
        records: 0,
        files_indexed: 0,
        file_index_seconds: 0.0,
        chunks_uploaded: 0,
        sent_bytes: 0,
        new_chunks: m.stats.new_chunks,
        reused_chunks: m.stats.reused_chunks,
        stored_bytes: m.stats.stored_bytes,
        duration_ms: started.elapsed().as_millis() as u64,
        peak_rss_bytes: peak_rss(),
        disks: opts
            .disks
            .iter()
            .zip(plans)
            .map(|((n, d), plan)| DiskReport {
                name: n.clone(),
                path: d.describe(),
                size: plan.size,
                found: plan.found.clone(),
                cbt: opts.cbt.contains_key(n),
            })
            .collect(),
    })
}

/// Reads the planned bytes of one block; dropped bytes stay zero.
fn read_block(
    disk: &dyn BlockSource,
    plan: &DiskPlan,
    d: usize,
    block: u64,
    bs: u64,
) -> Result<Item> {
    let start = block * bs;
    let end = (start + bs).min(plan.size);
    let parts = plan.read.clip(start, end);
    let mut item = Item {
        disk: d,
        block,
        read: 0,
        data: None,
        id: ChunkId::HOLE,
        zero: false,
    };
    if parts.is_empty() {
        return Ok(item);
    }
    let mut buf = vec![0u8; (end - start) as usize];
    for (a, b) in parts {
        disk.read_at(&mut buf[(a - start) as usize..(b - start) as usize], a)?;
        item.read += b - a;
    }
    // Whether it is all zeros is decided by the hasher, from the digest (no second pass).
    item.data = Some(buf);
    Ok(item)
}

struct Coordinator<'a> {
    client: &'a RepoClient,
    session: &'a str,
    journal: &'a mut Journal,
    names: &'a [String],
    base_index: &'a [Option<Vec<ChunkId>>],
    /// Chunks pinned to the session by find-missing, or being or having been uploaded.
    known: HashSet<ChunkId>,
    level: i32,
    /// Bounds concurrent uploads across all batches in flight.
    uploads: Arc<tokio::sync::Semaphore>,
    /// Batches whose uploads run while later batches are read and prepared (oldest first).
    in_flight: std::collections::VecDeque<Pending>,
    progress: &'a Arc<Progress>,
    uploaded: u64,
    sent: u64,
    records: u64,
    zero_bytes: u64,
    unchanged_read: u64,
    blocks: u64,
}

/// A batch whose chunks are being uploaded; its records wait until they are all acknowledged.
struct Pending {
    name: String,
    recs: Vec<IndexRecord>,
    last_block: u64,
    uploads: tokio::task::JoinSet<Result<u64>>,
}

/// Batches allowed in flight at once: enough to keep reading, compressing and uploading busy
/// together, few enough to bound memory (depth × 32 MiB of block data).
const DEPTH: usize = 3;

impl Coordinator<'_> {
    /// Decides the batch's records, asks which chunks the repository lacks, and starts their
    /// compression and upload; the records are sent by [`Coordinator::finish`], in batch order.
    async fn submit(&mut self, batch: Vec<Item>, bs: u64) -> Result<()> {
        let Some(d) = batch.first().map(|i| i.disk) else {
            return Ok(());
        };
        if self.in_flight.len() >= DEPTH {
            self.finish_oldest().await?;
        }
        let name = self.names[d].clone();
        let base = self.base_index[d].as_ref();
        let mut recs = Vec::new();
        for it in &batch {
            self.blocks += 1;
            if it.zero {
                self.zero_bytes += it.read;
            }
            let in_base = base.and_then(|b| b.get(it.block as usize)).copied();
            let record = match in_base {
                Some(prev) => prev != it.id,
                None => !it.id.is_hole(),
            };
            if record {
                recs.push(IndexRecord {
                    block: it.block,
                    id: it.id,
                });
            } else if !it.id.is_hole() {
                self.unchanged_read += it.read;
            }
            self.progress.done.fetch_add(bs, Ordering::Relaxed);
        }
        // Ask about what this session has neither pinned nor started uploading.
        let mut need: Vec<ChunkId> = recs
            .iter()
            .map(|r| r.id)
            .filter(|c| !c.is_hole() && !self.known.contains(c))
            .collect();
        need.sort_unstable();
        need.dedup();
        let mut missing = HashSet::new();
        for part in need.chunks(65_536) {
            let body: Vec<u8> = part.iter().flat_map(|c| c.0).collect();
            let path = format!("/v1/sessions/{}/find-missing", self.session);
            let a = self
                .client
                .send(
                    Method::POST,
                    &path,
                    &[("content-type", "application/octet-stream")],
                    body.into(),
                )
                .await?;
            missing.extend(a.body.chunks_exact(32).filter_map(ChunkId::from_slice));
        }
        // Everything asked about is now pinned or on its way: later batches need not ask again.
        // Their records are sent only after this batch's uploads are acknowledged.
        self.known.extend(need);
        let last_block = batch.last().map(|i| i.block + 1).unwrap_or(0);
        let mut uploads = tokio::task::JoinSet::new();
        for it in batch {
            let Some(data) = it.data else { continue };
            if !missing.remove(&it.id) {
                continue;
            }
            let permit = self
                .uploads
                .clone()
                .acquire_owned()
                .await
                .map_err(|e| Error::Invalid(e.to_string()))?;
            let (client, session, level, disk) = (
                self.client.clone(),
                self.session.to_owned(),
                self.level,
                name.clone(),
            );
            let (id, block) = (it.id, it.block);
            uploads.spawn(async move {
                let len = data.len();
                let frame = tokio::task::spawn_blocking(move || zstd::bulk::compress(&data, level))
                    .await
                    .map_err(|e| Error::Invalid(e.to_string()))?
                    .map_err(|e| {
                        Error::io(format!("compressing block {block} of disk {disk}"), e)
                    })?;
                let n = frame.len() as u64;
                client
                    .put_chunk(&session, &id, Bytes::from(frame), len)
                    .await?;
                drop(permit);
                Ok::<u64, Error>(n)
            });
        }
        self.in_flight.push_back(Pending {
            name,
            recs,
            last_block,
            uploads,
        });
        Ok(())
    }

    /// Waits for the oldest batch's uploads, then appends its records and saves the journal.
    async fn finish_oldest(&mut self) -> Result<()> {
        let Some(mut p) = self.in_flight.pop_front() else {
            return Ok(());
        };
        while let Some(r) = p.uploads.join_next().await {
            let n = r.map_err(|e| Error::Invalid(format!("upload task failed: {e}")))??;
            self.uploaded += 1;
            self.sent += n;
            self.progress.sent.fetch_add(n, Ordering::Relaxed);
        }
        append_records(self.client, self.session, self.journal, &p.name, &p.recs).await?;
        self.records += p.recs.len() as u64;
        let state = self.journal.disks.entry(p.name).or_default();
        state.next_block = state.next_block.max(p.last_block);
        self.journal.save()
    }

    /// Finishes every batch in flight, oldest first.
    async fn drain(&mut self) -> Result<()> {
        while !self.in_flight.is_empty() {
            self.finish_oldest().await?;
        }
        Ok(())
    }
}

/// Percent-encodes a query value (see [`schema::query::encode`]).
pub use schema::query::encode;
