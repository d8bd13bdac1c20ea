//! The real source mover as a library, set up the way the tests use it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use source_mover::backup::{BackupOptions, Base};
use source_mover::client::RepoClient;
use source_mover::source::BlockSource;

use crate::BACKUP_A;

/// Options for a backup of one disk (`disk0`) of `source`, 1 MiB blocks, the latest backup as
/// base, 16 streams, no progress output.
pub fn opts(source: &str, disk: &Path, state: &Path) -> BackupOptions {
    opts_for(source, source_mover::source::open(disk).unwrap(), state)
}

/// [`opts`] for a disk behind any [`BlockSource`] (not necessarily a file).
pub fn opts_for(source: &str, disk: Arc<dyn BlockSource>, state: &Path) -> BackupOptions {
    BackupOptions {
        source: source.into(),
        disks: vec![("disk0".into(), disk)],
        cbt: BTreeMap::new(),
        cbt_points: BTreeMap::new(),
        base: Base::Latest,
        block_size: 1 << 20,
        zstd_level: 3,
        excludes: Vec::new(),
        streams: 16,
        state_dir: state.to_owned(),
        progress: false,
        file_index: true,
        encryption_key: None,
    }
}

/// A client of tenant `acme` (backup role) with a 120 s retry window.
pub fn client(url: &str) -> RepoClient {
    RepoClient::new(url, BACKUP_A, Duration::from_secs(120), None).unwrap()
}

/// Restores disk `disk0` of backup `id` to the file `out`.
pub async fn restore_to(c: &RepoClient, id: &str, out: &Path) {
    let m = source_mover::restore::resolve(c, id, None).await.unwrap();
    source_mover::restore::restore(c, &m, "disk0", Some(out), 8, false)
        .await
        .unwrap();
}
