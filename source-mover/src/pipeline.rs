//! The data pipeline of a backup: read → hash → find-missing → compress → upload → record.
//!
//! [`Stages`] are two threads joined by bounded channels: a reader reads the planned bytes of
//! each block (dropped bytes stay zero) and a hasher computes blake3 (an all-zero block is
//! recognised by its digest). [`coordinate`] is the async coordinator: it batches blocks, asks
//! the repository which chunks it lacks, compresses those on blocking threads and uploads them
//! over up to `streams` concurrent HTTP/2 streams, shared by up to [`DEPTH`] batches in flight;
//! each batch's records are appended, in order, once all its chunks are acknowledged, then the
//! journal is saved. Memory is bounded by the batch size, the depth and the stream count, not by
//! the disk. [`heal`] sends again the blocks whose chunks a commit found missing.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use schema::{ChunkId, IndexRecord};
use tokio::sync::mpsc::Receiver;
use tokio::task::JoinSet;

use crate::base::DiskIndex;
use crate::client::RepoClient;
use crate::error::{blocking, Error, Result};
use crate::key::MasterKey;
use crate::plan::DiskPlan;
use crate::progress::Progress;
use crate::ranges::Ranges;
use crate::session::Session;
use crate::source::BlockSource;

/// What the pipeline reads from and compares against, shared by its threads.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// Disk names, in `--disk` order.
    pub names: Arc<Vec<String>>,
    /// The disks.
    pub disks: Arc<Vec<Arc<dyn BlockSource>>>,
    /// Their plans (what to read of each).
    pub plans: Arc<Vec<DiskPlan>>,
    /// The base's index of each disk, when it has one with this block size.
    pub base_index: Arc<Vec<Option<DiskIndex>>>,
    /// Block size in bytes.
    pub block_size: u64,
    /// zstd level of uploaded chunks.
    pub level: i32,
    /// The key of an encrypted backup: chunk ids are keyed hashes, chunks are sealed.
    pub key: Option<Arc<MasterKey>>,
}

impl Inputs {
    /// The chunk id of a block: blake3, or the keyed hash of an encrypted backup.
    pub fn chunk_id(&self, data: &[u8]) -> ChunkId {
        chunk_id(self.key.as_deref(), data)
    }
}

/// The chunk id of `data`: blake3, or its keyed hash under `key`.
pub fn chunk_id(key: Option<&MasterKey>, data: &[u8]) -> ChunkId {
    match key {
        Some(k) => k.chunk_id(data),
        None => ChunkId::of(data),
    }
}

/// The pipeline's figures of one run.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Chunks uploaded.
    pub uploaded: u64,
    /// Compressed bytes uploaded.
    pub sent: u64,
    /// Index records appended.
    pub records: u64,
    /// Bytes read that were all zeros.
    pub zero_bytes: u64,
    /// Bytes read whose block is unchanged since the base.
    pub unchanged_read: u64,
    /// Blocks looked at.
    pub blocks: u64,
}

/// A block on its way through the pipeline.
#[derive(Debug)]
pub struct Item {
    disk: usize,
    block: u64,
    /// Bytes read from the source for this block.
    read: u64,
    /// `None` for a hole (nothing to read, or all zeros).
    data: Option<Vec<u8>>,
    id: ChunkId,
    zero: bool,
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

/// The reader and hasher threads, and the channel the coordinator takes hashed blocks from.
#[derive(Debug)]
pub struct Stages {
    reader: std::thread::JoinHandle<()>,
    hasher: std::thread::JoinHandle<()>,
    /// Hashed blocks, in disk and block order.
    pub rx: Receiver<Result<Item>>,
}

impl Stages {
    /// Starts reading `work` of each disk, from block `starts[d]` on (`u64::MAX`: disk done).
    pub fn start(
        inputs: &Inputs,
        work: Vec<Ranges>,
        starts: Vec<u64>,
        progress: Arc<Progress>,
    ) -> Stages {
        let (raw_tx, raw_rx) = tokio::sync::mpsc::channel::<Result<Item>>(8);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Item>>(8);
        let (disks, plans, bs) = (
            inputs.disks.clone(),
            inputs.plans.clone(),
            inputs.block_size,
        );
        let reader = std::thread::spawn(move || {
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
        });
        let key = inputs.key.clone();
        let hasher = std::thread::spawn(move || hash_all(raw_rx, tx, key));
        Stages { reader, hasher, rx }
    }

    /// Stops the threads (they end at their next send) and waits for them off the runtime.
    pub async fn stop(self) {
        let Stages { reader, hasher, rx } = self;
        drop(rx);
        let _ = tokio::task::spawn_blocking(move || {
            let _ = reader.join();
            let _ = hasher.join();
        })
        .await;
    }
}

/// The hasher thread: blake3 (or the keyed hash under `key`) of each block read; an all-zero
/// block becomes a hole.
fn hash_all(
    mut raw_rx: Receiver<Result<Item>>,
    tx: tokio::sync::mpsc::Sender<Result<Item>>,
    key: Option<Arc<MasterKey>>,
) {
    // Digests of all-zero blocks, per length (the block size and a short last block).
    let mut zero_ids: HashMap<usize, ChunkId> = HashMap::new();
    while let Some(mut item) = raw_rx.blocking_recv() {
        if let Ok(it) = &mut item {
            if let Some(d) = &it.data {
                let id = chunk_id(key.as_deref(), d);
                let zero = *zero_ids
                    .entry(d.len())
                    .or_insert_with(|| chunk_id(key.as_deref(), &vec![0u8; d.len()]));
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
}

/// Batches allowed in flight at once: enough to keep reading, compressing and uploading busy
/// together, few enough to bound memory (depth × 32 MiB of block data).
pub const DEPTH: usize = 3;

/// Takes every hashed block from `rx`, in batches, until the stages are done; returns the run's
/// figures once every batch is recorded and the journal saved.
///
/// # Errors
/// The first read, repository or journal error.
pub async fn coordinate(
    rx: &mut Receiver<Result<Item>>,
    session: &mut Session,
    inputs: &Inputs,
    streams: usize,
    progress: &Arc<Progress>,
) -> Result<Tally> {
    let bs = inputs.block_size;
    // A batch is the unit of acknowledgement: small enough that an interrupted run loses little
    // (at most 32 MiB or 64 blocks), large enough that find-missing and record round trips stay rare.
    let batch_max = ((32u64 << 20) / bs).clamp(8, 64) as usize;
    let client = session.client().clone();
    let mut c = Coordinator {
        client,
        session,
        inputs,
        known: HashSet::new(),
        uploads: Arc::new(tokio::sync::Semaphore::new(streams.max(1))),
        in_flight: VecDeque::new(),
        progress,
        tally: Tally::default(),
    };
    let mut batch: Vec<Item> = Vec::with_capacity(batch_max);
    while let Some(item) = rx.recv().await {
        let item = item?;
        if batch.last().is_some_and(|l| l.disk != item.disk) || batch.len() >= batch_max {
            c.submit(std::mem::take(&mut batch)).await?;
        }
        batch.push(item);
    }
    c.submit(batch).await?;
    c.drain().await?;
    Ok(c.tally)
}

struct Coordinator<'a> {
    client: RepoClient,
    session: &'a mut Session,
    inputs: &'a Inputs,
    /// Chunks pinned to the session by find-missing, or being or having been uploaded.
    known: HashSet<ChunkId>,
    /// Bounds concurrent uploads across all batches in flight.
    uploads: Arc<tokio::sync::Semaphore>,
    /// Batches whose uploads run while later batches are read and prepared (oldest first).
    in_flight: VecDeque<Pending>,
    progress: &'a Arc<Progress>,
    tally: Tally,
}

/// A batch whose chunks are being uploaded; its records wait until they are all acknowledged.
struct Pending {
    name: String,
    recs: Vec<IndexRecord>,
    last_block: u64,
    uploads: JoinSet<Result<u64>>,
}

impl Coordinator<'_> {
    /// Decides the batch's records, asks which chunks the repository lacks, and starts their
    /// compression and upload; the records are sent by [`Coordinator::finish_oldest`], in
    /// batch order.
    async fn submit(&mut self, batch: Vec<Item>) -> Result<()> {
        let Some(d) = batch.first().map(|i| i.disk) else {
            return Ok(());
        };
        if self.in_flight.len() >= DEPTH {
            self.finish_oldest().await?;
        }
        let name = self.inputs.names[d].clone();
        let recs = self.records(&batch);
        // Ask about what this session has neither pinned nor started uploading.
        let mut need: Vec<ChunkId> = recs
            .iter()
            .map(|r| r.id)
            .filter(|c| !c.is_hole() && !self.known.contains(c))
            .collect();
        need.sort_unstable();
        need.dedup();
        let mut missing = self.client.find_missing(&self.session.id, &need).await?;
        // Everything asked about is now pinned or on its way: later batches need not ask again.
        // Their records are sent only after this batch's uploads are acknowledged.
        self.known.extend(need);
        let last_block = batch.last().map(|i| i.block + 1).unwrap_or(0);
        let mut uploads = JoinSet::new();
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
            let upload = upload(
                self.client.clone(),
                self.session.id,
                self.inputs.level,
                self.inputs.key.clone(),
                format!("block {} of disk {name}", it.block),
                it.id,
                data,
            );
            uploads.spawn(async move {
                let n = upload.await?;
                drop(permit);
                Ok(n)
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

    /// The records of a batch: every block whose chunk differs from the base's (or, without a
    /// base, that is not a hole); counts what is zero or unchanged.
    fn records(&mut self, batch: &[Item]) -> Vec<IndexRecord> {
        let Some(d) = batch.first().map(|i| i.disk) else {
            return Vec::new();
        };
        let base = self.inputs.base_index[d].as_ref();
        let mut recs = Vec::new();
        for it in batch {
            self.tally.blocks += 1;
            if it.zero {
                self.tally.zero_bytes += it.read;
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
                self.tally.unchanged_read += it.read;
            }
            self.progress
                .done
                .fetch_add(self.inputs.block_size, Ordering::Relaxed);
        }
        recs
    }

    /// Waits for the oldest batch's uploads, then appends its records and saves the journal.
    async fn finish_oldest(&mut self) -> Result<()> {
        let Some(mut p) = self.in_flight.pop_front() else {
            return Ok(());
        };
        while let Some(r) = p.uploads.join_next().await {
            let n = r.map_err(|e| Error::Invalid(format!("upload task failed: {e}")))??;
            self.tally.uploaded += 1;
            self.tally.sent += n;
            self.progress.sent.fetch_add(n, Ordering::Relaxed);
        }
        self.session.append(&p.name, &p.recs).await?;
        self.tally.records += p.recs.len() as u64;
        let state = self.session.journal.disks.entry(p.name).or_default();
        state.next_block = state.next_block.max(p.last_block);
        self.session.save().await
    }

    /// Finishes every batch in flight, oldest first.
    async fn drain(&mut self) -> Result<()> {
        while !self.in_flight.is_empty() {
            self.finish_oldest().await?;
        }
        Ok(())
    }
}

/// Compresses `data` (chunk `id`) on the blocking pool, seals it when the backup is encrypted
/// (`key`), and uploads it; returns the uploaded size. `what` names the block in errors.
pub(crate) async fn upload(
    client: RepoClient,
    session: schema::SessionId,
    level: i32,
    key: Option<Arc<MasterKey>>,
    what: String,
    id: ChunkId,
    data: Vec<u8>,
) -> Result<u64> {
    let len = data.len();
    let sealed = key.is_some();
    let frame = blocking("compressing", move || match key {
        Some(k) => crate::seal::seal(&k, &id, &data, level),
        None => zstd::bulk::compress(&data, level)
            .map_err(|e| Error::io(format!("compressing {what}"), e)),
    })
    .await?;
    let n = frame.len() as u64;
    if sealed {
        client
            .put_sealed(&session, &id, Bytes::from(frame), len)
            .await?;
    } else {
        client
            .put_chunk(&session, &id, Bytes::from(frame), len)
            .await?;
    }
    Ok(n)
}

/// Reads again, hashes and sends every block whose chunk (this session's newest record for
/// it, else the base's) is in `missing`, recording those whose content is no longer the
/// chunk's; returns how many blocks it sent. The repository replaces a damaged chunk with a
/// sound upload of it.
///
/// # Errors
/// Read, repository and journal errors.
pub async fn heal(
    session: &mut Session,
    inputs: &Inputs,
    tally: &mut Tally,
    progress: &Progress,
    missing: &HashSet<ChunkId>,
) -> Result<u64> {
    let bs = inputs.block_size;
    let mut healed = 0;
    for (d, name) in inputs.names.iter().enumerate() {
        let nblocks = inputs.plans[d].size.div_ceil(bs);
        let mut current: BTreeMap<u64, ChunkId> = BTreeMap::new();
        if let Some(base) = &inputs.base_index[d] {
            for (block, id) in base.iter().enumerate().take(nblocks as usize) {
                if missing.contains(id) {
                    current.insert(block as u64, *id);
                }
            }
        }
        for r in session.records(name).await? {
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
        let (disks, plans) = (inputs.disks.clone(), inputs.plans.clone());
        let key = inputs.key.clone();
        // Read and hash on the blocking pool: (what the block was, what it is now, its item).
        let items = blocking("re-reading blocks", move || {
            blocks
                .into_iter()
                .map(|(block, was)| {
                    let it = read_block(disks[d].as_ref(), &plans[d], d, block, bs)?;
                    let id = match &it.data {
                        Some(data) if data.iter().any(|&b| b != 0) => {
                            chunk_id(key.as_deref(), data)
                        }
                        _ => ChunkId::HOLE,
                    };
                    Ok((was, id, it))
                })
                .collect::<Result<Vec<_>>>()
        })
        .await?;
        let mut recs = Vec::new();
        for (was, id, mut it) in items {
            progress.read.fetch_add(it.read, Ordering::Relaxed);
            let data = it.data.take().unwrap_or_default();
            if !id.is_hole() {
                let what = format!("block {} of disk {name}", it.block);
                tally.sent += upload(
                    session.client().clone(),
                    session.id,
                    inputs.level,
                    inputs.key.clone(),
                    what,
                    id,
                    data,
                )
                .await?;
                tally.uploaded += 1;
            }
            if id != was {
                recs.push(IndexRecord {
                    block: it.block,
                    id,
                });
            }
            healed += 1;
        }
        tally.records += recs.len() as u64;
        session.append(name, &recs).await?;
        session.save().await?;
    }
    Ok(healed)
}
