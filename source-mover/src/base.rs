//! The base a backup builds on: which backup it is ([`resolve`], before any session exists),
//! its index of each disk ([`indexes`]), the changed-block lists that must count from it
//! ([`check_cbt`]) or, for dirty bitmaps, be the point it recorded ([`tie`]), and from those
//! which blocks of each disk this run looks at ([`work`]).

use std::collections::BTreeMap;

use schema::ChunkId;

use crate::cbt::ChangedBlocks;
use crate::client::RepoClient;
use crate::error::{Error, Result};
use crate::options::{BackupOptions, Base};
use crate::plan::DiskPlan;
use crate::ranges::Ranges;

/// The base's chunk id of each block of one disk.
pub type DiskIndex = Vec<ChunkId>;

/// The base of a new session: `opts.base` resolved to a backup id. A base with another block
/// size on a disk of the same name cannot be built on (the repository refuses the session):
/// with [`Base::Latest`] this backup starts a new chain, a full backup, and says why on stderr;
/// a base named by id is an error, before anything is created. The same holds for a base of
/// another encryption (plain, or another key): an encrypted backup builds only on one of its key.
///
/// # Errors
/// A base named by id with another block size or encryption ([`Error::Refused`]), repository
/// errors.
pub async fn resolve(client: &RepoClient, opts: &BackupOptions) -> Result<Option<String>> {
    let m = match &opts.base {
        Base::None => return Ok(None),
        Base::Latest => match client.latest(Some(&opts.source)).await? {
            Some(m) => m,
            None => return Ok(None),
        },
        Base::Id(id) => match client.manifest(id).await {
            Ok(m) => m,
            // Creating the session names the missing base in the protocol's terms.
            Err(Error::Repo { status: 404, .. }) => return Ok(Some(id.clone())),
            Err(e) => return Err(e),
        },
    };
    let ours = opts.encryption_key.as_ref().map(|k| k.id_hex());
    if m.key_id() != ours.as_deref() {
        let name = |k: Option<&str>| k.map_or("no encryption".to_string(), |k| format!("key {k}"));
        let (theirs, ours) = (name(m.key_id()), name(ours.as_deref()));
        if let Base::Id(id) = &opts.base {
            return Err(Error::Refused(format!(
                "--base {id}: that backup has {theirs}, this backup {ours}; an incremental keeps \
                 its base's encryption (use its key, or --base none for a full backup)"
            )));
        }
        eprintln!(
            "source-mover: base {} has {theirs}, this backup {ours}: starting a new chain with a full backup",
            m.id
        );
        return Ok(None);
    }
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

/// Refuses changed-block lists that do not count from `base`, the backup this run builds on
/// (a list from another base would silently leave out changes). Without a base the lists are
/// not used: every block is read.
///
/// # Errors
/// [`Error::Refused`] naming the disk whose list counts from another backup.
pub fn check_cbt(cbt: &BTreeMap<String, ChangedBlocks>, base: Option<&str>) -> Result<()> {
    match base {
        Some(b) => cbt.iter().try_for_each(|(disk, l)| l.check_base(disk, b)),
        None => Ok(()),
    }
}

/// The key of a backup's metadata that records, per disk, the dirty bitmap started at its
/// point (`--cbt-point`).
pub const CBT_POINTS: &str = "cbt_points";

/// Keeps only the changes this incremental can use, and says for each other disk with `--cbt`
/// why it is read in full: no base (a full backup), changes that cannot be read (a bitmap the
/// export does not offer), a dirty bitmap its base did not record as its point (stale, or from
/// another chain), or a base without this disk at this block size. `base` is the base's
/// manifest. JSON lists were already checked against the base ([`check_cbt`]).
pub fn tie(
    cbt: &mut BTreeMap<String, ChangedBlocks>,
    base: Option<&schema::api::Manifest>,
    block_size: u32,
) -> BTreeMap<String, String> {
    let mut unused = BTreeMap::new();
    for (disk, l) in cbt.iter() {
        let why = match (base, &l.unusable, &l.bitmap) {
            (None, _, _) => Some("no base: a full backup reads every block".to_owned()),
            (_, Some(why), _) => Some(format!("{}: {why}", l.from)),
            (Some(m), None, bitmap) => {
                let has_disk = m
                    .disks
                    .iter()
                    .any(|d| d.name.as_str() == disk && d.block_size == block_size);
                let recorded = m
                    .metadata
                    .get(CBT_POINTS)
                    .and_then(|p| p.get(disk))
                    .and_then(|v| v.as_str());
                match bitmap {
                    _ if !has_disk => Some(format!(
                        "base {} has no disk {disk} with this block size to apply the changes to",
                        m.id
                    )),
                    Some(b) if recorded != Some(b.as_str()) => Some(format!(
                        "dirty bitmap {b} is not tied to base {}: {}",
                        m.id,
                        match recorded {
                            Some(r) => format!(
                                "that backup recorded bitmap {r} as its point (--cbt-point)"
                            ),
                            None =>
                                "that backup recorded no bitmap point for this disk (--cbt-point)"
                                    .to_owned(),
                        }
                    )),
                    _ => None,
                }
            }
        };
        if let Some(w) = why {
            unused.insert(disk.clone(), w);
        }
    }
    cbt.retain(|d, _| !unused.contains_key(d));
    unused
}

/// The base's index of each of `names`, when the base has that disk with `block_size`.
///
/// # Errors
/// Repository errors.
pub async fn indexes(
    client: &RepoClient,
    base: Option<&str>,
    names: &[String],
    block_size: u32,
) -> Result<Vec<Option<DiskIndex>>> {
    let manifest = match base {
        Some(b) => Some(client.manifest(b).await?),
        None => None,
    };
    let mut out = Vec::new();
    for name in names {
        let idx = match &manifest {
            Some(m)
                if m.disks
                    .iter()
                    .any(|d| d.name.as_str() == name && d.block_size == block_size) =>
            {
                let raw = client.disk_index(m.id.as_str(), name).await?;
                Some(
                    raw.chunks_exact(32)
                        .filter_map(ChunkId::from_slice)
                        .collect(),
                )
            }
            _ => None,
        };
        out.push(idx);
    }
    Ok(out)
}

/// Which blocks each disk processes: all, or with CBT those overlapping changed extents (plus
/// any the base does not have).
pub fn work(
    opts: &BackupOptions,
    plans: &[DiskPlan],
    cbt: &BTreeMap<String, ChangedBlocks>,
    base_index: &[Option<DiskIndex>],
) -> Vec<Ranges> {
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
            // No base index ([`tie`] said why) or no changes: every block.
            _ => all,
        };
        work.push(w);
    }
    work
}
