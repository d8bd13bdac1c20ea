//! One backup, as stages: plan → session → base → pipeline (read → hash → find-missing →
//! compress → upload → record), with the guest file indexes beside it → commit (healing what
//! the repository lost) → report.
//!
//! Each stage is a module: [`crate::plan`] plans each disk, [`crate::session`] opens
//! (creates or resumes) and commits the session, [`crate::base`] resolves the base and narrows
//! the work with changed-block lists, [`crate::pipeline`] moves the blocks,
//! [`crate::guest_files`] walks and uploads the file indexes, [`crate::report`] says what
//! happened. This function only strings them together.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use schema::api::{ClientStats, Encryption};
use schema::ChunkId;

use crate::cbt::ChangedBlocks;
use crate::client::RepoClient;
use crate::error::{blocking, Error, Result};
use crate::pipeline::{self, Inputs, Stages, Tally};
use crate::plan::{self, DiskPlan};
use crate::progress::Progress;
use crate::ranges::Ranges;
use crate::session::{missing_chunks, Opened, Session};
use crate::source::BlockSource;

pub use crate::options::{BackupOptions, Base};
pub use crate::report::{peak_rss, BackupReport, DiskReport};
/// Percent-encodes a query value (see [`schema::query::encode`]).
pub use schema::query::encode;

/// How often a commit refused for `MISSING_CHUNKS` is healed and repeated (each round heals
/// up to the 1,000 chunks a refusal lists).
const HEAL_ROUNDS: usize = 64;

/// Runs a backup (or continues the interrupted one of the same command).
///
/// # Errors
/// Disk, repository and journal errors, each naming what it concerns.
pub async fn backup(client: &RepoClient, opts: &BackupOptions) -> Result<BackupReport> {
    let started = Instant::now();
    let names: Vec<String> = opts.disks.iter().map(|d| d.0.clone()).collect();
    let (disks, plans, mut cbt) = plan_disks(opts).await?;
    let mut session = match Session::open(client, opts, &plans, &cbt).await? {
        Opened::Open(s) => s,
        Opened::Committed(id) => {
            let used = Used {
                cbt: opts.cbt.keys().cloned().collect(),
                unused: BTreeMap::new(),
            };
            return report(
                client,
                &id,
                opts,
                &plans,
                true,
                started,
                BTreeMap::new(),
                &used,
            )
            .await;
        }
    };
    let base = session.journal.base.clone();
    let base_manifest = match (&base, cbt.is_empty()) {
        (Some(b), false) => Some(client.manifest(b).await?),
        _ => None,
    };
    let unused = crate::base::tie(&mut cbt, base_manifest.as_ref(), opts.block_size);
    for (disk, why) in &unused {
        eprintln!("source-mover: disk {disk}: reading it in full: {why}");
    }
    let used = Used {
        cbt: cbt.keys().cloned().collect(),
        unused,
    };
    let base_index = crate::base::indexes(client, base.as_deref(), &names, opts.block_size).await?;
    let work = crate::base::work(opts, &plans, &cbt, &base_index);
    let inputs = Inputs {
        names: Arc::new(names),
        disks: Arc::new(disks),
        plans: Arc::new(plans),
        base_index: Arc::new(base_index),
        block_size: u64::from(opts.block_size),
        level: opts.zstd_level,
        key: opts.encryption_key.clone(),
    };
    let (starts, total) = resume_points(&session, &inputs, &work);
    let progress = Progress::start(total, opts.progress);
    let mut stages = Stages::start(&inputs, work.clone(), starts, progress.clone());
    let index_job =
        crate::guest_files::index_and_upload(client, session.id, &inputs, opts.file_index);
    let data = pipeline::coordinate(
        &mut stages.rx,
        &mut session,
        &inputs,
        opts.streams,
        &progress,
    );
    let outcome = tokio::try_join!(data, index_job);
    stages.stop().await;
    progress.finish();
    let (mut tally, indexed) = outcome?;
    for s in session.journal.disks.values_mut() {
        s.done = true;
    }
    session.save().await?;

    let skipped = skipped(&inputs, &work, &tally);
    let (files_indexed, file_index_seconds) = (indexed.entries, indexed.seconds);
    let id = commit(
        &mut session,
        &inputs,
        &mut tally,
        &progress,
        opts,
        &skipped,
        indexed,
    )
    .await?;
    let read_bytes = progress.read.load(Ordering::Relaxed);
    let resumed = session.resumed;
    session.finish().await?;
    let mut r = report(
        client,
        &id,
        opts,
        &inputs.plans,
        resumed,
        started,
        skipped,
        &used,
    )
    .await?;
    r.read_bytes = read_bytes;
    r.files_indexed = files_indexed;
    r.file_index_seconds = file_index_seconds;
    r.records = tally.records;
    r.chunks_uploaded = tally.uploaded;
    r.sent_bytes = tally.sent;
    r.blocks = tally.blocks;
    Ok(r)
}

/// Checks the options, opens the disks and plans them (metadata reads only), and reads the
/// changed-block lists, all before anything is sent: a list that cannot be used stops the run
/// here.
async fn plan_disks(
    opts: &BackupOptions,
) -> Result<(
    Vec<Arc<dyn BlockSource>>,
    Vec<DiskPlan>,
    BTreeMap<String, ChangedBlocks>,
)> {
    let names: Vec<&String> = opts.disks.iter().map(|d| &d.0).collect();
    for n in opts
        .cbt
        .keys()
        .chain(opts.cbt_points.keys())
        .chain(opts.excludes.iter().map(|e| &e.0))
    {
        if !names.contains(&n) {
            return Err(Error::Invalid(format!(
                "--cbt/--cbt-point/--exclude name disk {n}, which is not one of the --disk names {names:?}"
            )));
        }
    }
    let o = opts.clone();
    blocking("planning", move || {
        let mut disks = Vec::new();
        let mut plans = Vec::new();
        for (name, d) in &o.disks {
            let ex: Vec<String> = o
                .excludes
                .iter()
                .filter(|e| &e.0 == name)
                .map(|e| e.1.clone())
                .collect();
            plans.push(plan::plan_deferred(d.as_ref(), &ex)?);
            disks.push(d.clone());
        }
        let cbt = o
            .cbt
            .iter()
            .map(|(n, list)| Ok((n.clone(), list.load()?)))
            .collect::<Result<_>>()?;
        Ok((disks, plans, cbt))
    })
    .await
}

/// Where each disk's reading starts (`u64::MAX`: done) after what the journal acknowledged,
/// and the bytes of blocks left to look at.
fn resume_points(session: &Session, inputs: &Inputs, work: &[Ranges]) -> (Vec<u64>, u64) {
    let states: Vec<_> = inputs
        .names
        .iter()
        .map(|n| session.journal.disks.get(n).cloned().unwrap_or_default())
        .collect();
    let total = work
        .iter()
        .zip(&states)
        .map(|(w, st)| w.subtract(&Ranges::single(0, st.next_block)).total() * inputs.block_size)
        .sum();
    let starts = states
        .iter()
        .map(|s| if s.done { u64::MAX } else { s.next_block })
        .collect();
    (starts, total)
}

/// Skipped bytes by reason, over the bytes this run covered.
fn skipped(inputs: &Inputs, work: &[Ranges], tally: &Tally) -> BTreeMap<String, u64> {
    let bs = inputs.block_size;
    let mut skipped: BTreeMap<String, u64> = BTreeMap::new();
    for (i, plan) in inputs.plans.iter().enumerate() {
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
    *skipped.entry("zero".into()).or_default() += tally.zero_bytes;
    *skipped.entry("unchanged".into()).or_default() += tally.unchanged_read;
    skipped
}

/// Commits the session. A chunk the repository lost or found damaged since the base was made
/// (verify marks it bad) is named in a `MISSING_CHUNKS` refusal: the blocks that reference it
/// are read again from the disk and sent, and the commit is repeated.
async fn commit(
    session: &mut Session,
    inputs: &Inputs,
    tally: &mut Tally,
    progress: &Progress,
    opts: &BackupOptions,
    skipped: &BTreeMap<String, u64>,
    indexed: crate::guest_files::Indexed,
) -> Result<String> {
    let mut rounds = 0;
    loop {
        let stats = ClientStats {
            read_bytes: progress.read.load(Ordering::Relaxed),
            skipped_bytes: skipped.clone(),
        };
        let mut req = session
            .commit_request(opts, stats, indexed.refs.clone())
            .await?;
        req.encryption = opts.encryption_key.as_ref().map(|k| Encryption {
            key_id: k.id_hex(),
            file_index: indexed.sealed.clone(),
        });
        let e = match session.commit(&req).await {
            Ok(id) => return Ok(id.to_string()),
            Err(e) => e,
        };
        let missing: HashSet<ChunkId> = match missing_chunks(&e) {
            Some(m) if rounds < HEAL_ROUNDS => m,
            _ => return Err(e),
        };
        rounds += 1;
        let healed = pipeline::heal(session, inputs, tally, progress, &missing).await?;
        if healed == 0 {
            return Err(match e {
                Error::Repo {
                    status,
                    code,
                    message,
                    detail,
                } => Error::Repo {
                    status,
                    code,
                    message: format!("{message} (none of them is a block of these disks, so the mover cannot send it again)"),
                    detail,
                },
                other => other,
            });
        }
        eprintln!(
            "source-mover: the repository lacks {} chunks this backup inherits from its base (lost or damaged since); read {healed} blocks again from the disks and sent them",
            missing.len()
        );
    }
}

/// Which disks' changes this run used, and why the others' were not.
#[derive(Debug)]
struct Used {
    cbt: HashSet<String>,
    unused: BTreeMap<String, String>,
}

/// The report of committed backup `id`, from its manifest.
#[allow(clippy::too_many_arguments)]
async fn report(
    client: &RepoClient,
    id: &str,
    opts: &BackupOptions,
    plans: &[DiskPlan],
    resumed: bool,
    started: Instant,
    skipped: BTreeMap<String, u64>,
    used: &Used,
) -> Result<BackupReport> {
    let m = client.manifest(id).await?;
    let disks = opts
        .disks
        .iter()
        .zip(plans)
        .map(|((n, d), plan)| DiskReport {
            name: n.clone(),
            path: d.describe(),
            size: plan.size,
            found: plan.found.clone(),
            cbt: used.cbt.contains(n),
            cbt_unused: used.unused.get(n).cloned(),
        })
        .collect();
    let mut r = BackupReport::from_manifest(id, &m, disks, skipped);
    r.resumed = resumed;
    r.file_index = opts.file_index;
    r.duration_ms = started.elapsed().as_millis() as u64;
    Ok(r)
}
