//! The gateway: the target-side data mover for a repository whose data lives on an SMB share.
//! It serves the repository's HTTP/2 API (the `repo-server` crate's, unchanged) with the
//! repository's chunks, index blobs and manifests on the share and its RocksDB catalog on local
//! disk (RocksDB must not live on a network share). See ARCHITECTURE.md.
//!
//! Module map:
//! - [`share`]: the SMB store ([`repo_server::store::BlobStore`] and
//!   [`repo_server::store::ManifestStore`] over SMB2/3).
//! - [`lease`]: one gateway per share.
//! - [`samba`]: a throwaway Samba server for tests, benchmarks and the demo.
//!
//! The binary (`src/bin/gateway.rs`) opens the share, takes the lease, and serves or rescans.

pub mod lease;
pub mod samba;
pub mod share;

use std::sync::Arc;

use repo_server::repo::Stores;

/// The repository stores of a share.
pub fn stores(share: &Arc<share::Share>) -> Stores {
    Stores {
        chunks: Arc::new(share.chunks()),
        indexes: Arc::new(share.indexes()),
        manifests: share.clone(),
    }
}
