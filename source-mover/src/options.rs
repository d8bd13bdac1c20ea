//! What to back up and how: [`BackupOptions`], with the [`Base`] an incremental builds on. The
//! command line fills them from a [`crate::profile::Profile`] and its options; tests and the
//! demo build them directly.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::cbt::{ChangeList, DirtyBitmap, JsonList};
use crate::error::{Error, Result};
use crate::source::{BlockSource, DiskSpec, FileSource, NbdSource};

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
    /// The dirty bitmap started at this backup's point, per disk name (`--cbt-point`):
    /// recorded in the backup's metadata (`cbt_points`), so that a later incremental over this
    /// backup knows that `--cbt NAME=bitmap:BITMAP` counts from it.
    pub cbt_points: BTreeMap<String, String>,
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
    /// Encrypt the backup with this key (`--encryption-key`): keyed chunk ids, sealed chunks,
    /// a sealed file index. An incremental builds only on a backup of the same key.
    pub encryption_key: Option<Arc<crate::key::MasterKey>>,
}

impl Base {
    /// `latest`, `none` or a backup id, as `--base` takes it.
    ///
    /// # Errors
    /// Not a valid backup id.
    pub fn parse(s: &str) -> Result<Base, schema::IdError> {
        Ok(match s {
            "latest" => Base::Latest,
            "none" => Base::None,
            id => {
                id.parse::<schema::BackupId>()?;
                Base::Id(id.to_owned())
            }
        })
    }
}

/// The sources and change lists of `--disk NAME=SPEC` and `--cbt NAME=FILE|bitmap:BITMAP`:
/// files and block devices are opened, NBD exports connected to, negotiating the dirty bitmaps
/// their `--cbt` names on the same connection.
///
/// # Errors
/// A disk that cannot be opened or reached, a bitmap for a disk that is not an NBD export, a
/// `--cbt` for no `--disk`.
#[allow(clippy::type_complexity)]
pub fn open_disks(
    disks: &[(String, PathBuf)],
    cbt: &[(String, PathBuf)],
) -> Result<(
    Vec<(String, Arc<dyn BlockSource>)>,
    BTreeMap<String, Arc<dyn ChangeList>>,
)> {
    let bitmap_of = |v: &std::path::Path| {
        v.to_str()
            .and_then(|s| s.strip_prefix("bitmap:"))
            .map(str::to_owned)
    };
    for (n, v) in cbt {
        if !disks.iter().any(|d| &d.0 == n) {
            return Err(Error::Invalid(format!(
                "--cbt {n}={}: no --disk is named {n}",
                v.display()
            )));
        }
        if bitmap_of(v).is_some_and(|b| b.is_empty()) {
            return Err(Error::Invalid(format!("--cbt {n}=bitmap: names no bitmap")));
        }
    }
    let mut sources = Vec::new();
    let mut lists: BTreeMap<String, Arc<dyn ChangeList>> = BTreeMap::new();
    for (n, p) in disks {
        let bitmaps: Vec<String> = cbt
            .iter()
            .filter(|c| &c.0 == n)
            .filter_map(|c| bitmap_of(&c.1))
            .collect();
        let src: Arc<dyn BlockSource> = match DiskSpec::parse(p)? {
            DiskSpec::File(path) => {
                if let Some(b) = bitmaps.first() {
                    return Err(Error::Invalid(format!(
                        "--cbt {n}=bitmap:{b}: a dirty bitmap is read over NBD, but disk {n} is the file {}",
                        path.display()
                    )));
                }
                Arc::new(FileSource::open(&path)?)
            }
            DiskSpec::Nbd(uri) => {
                let s = Arc::new(NbdSource::open(&uri, &bitmaps)?);
                for b in bitmaps {
                    lists.insert(n.clone(), Arc::new(DirtyBitmap::new(s.clone(), &b)));
                }
                s
            }
        };
        sources.push((n.clone(), src));
    }
    for (n, v) in cbt {
        if bitmap_of(v).is_none() {
            lists.insert(n.clone(), Arc::new(JsonList::new(v)));
        }
    }
    Ok((sources, lists))
}
