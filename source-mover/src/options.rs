//! What to back up and how: [`BackupOptions`], with the [`Base`] an incremental builds on. The
//! command line fills them from a [`crate::profile::Profile`] and its options; tests and the
//! demo build them directly.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::cbt::ChangeList;
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
