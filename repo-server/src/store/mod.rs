//! Where a repository's data lives: chunk frames, index blobs and manifests, behind two small
//! traits, so the same repository logic runs on a local directory ([`local`]) or on an SMB
//! share (the `gateway` crate), and an object store can be added the same way. One
//! conformance suite (`tests/tests/it/store.rs`) runs against every implementation.
//!
//! - this module: the contract — [`BlobStore`], [`ManifestStore`], listing in [`Page`]s
//!   ([`pages`] walks them), what an error means ([`Fault`], [`fault`]) and fencing
//!   ([`Fenced`], [`WriteFence`]);
//! - [`layout`]: the names shared by the stores that keep a directory tree (local, SMB):
//!   `chunks/ab/cd/<hex>`, `indexes/ab/<hex>`, `manifests/<id>.json`, and listing such a tree
//!   in pages;
//! - [`local`]: the local directory ([`local::BlobDir`], [`local::ManifestDir`]).
//!
//! # The contract every implementation keeps
//!
//! The repository's invariants (ARCHITECTURE.md) rest on it:
//! - **Durable before `Ok`.** When `put`, `replace` or `put_manifest` returns `Ok`, the object
//!   survives a crash of the process and of the machine or server that stores it.
//! - **Atomic visibility.** A reader never sees a partial object: a name shows nothing, the old
//!   content or the new content (write beside, flush, rename into place; or one PUT).
//! - **Content-addressed put.** Blob names are the blake3 of their content, so `put` of a name
//!   that exists is `Ok(false)` and rewrites nothing; `replace` overwrites (to heal a suspect
//!   object whose content is not what its name says).
//! - **Idempotent delete.** Deleting (or quarantining) an absent object is `Ok`.
//! - **Listing in pages, in name order.** `list(after, limit)` returns at most `limit` ids
//!   strictly after `after`, in ascending order of the object names (for blobs the hex of the
//!   id, so id order), and `next` when more may follow; walking from `None` through each `next`
//!   sees every object that existed throughout the walk exactly once. An object written or
//!   deleted during the walk may or may not be seen. This is S3's `ListObjectsV2` with
//!   `StartAfter` and `MaxKeys`.
//! - **Errors say what they mean.** Errors are `io::Error`s whose [`Fault`] is one of: absent
//!   (`NotFound`), storage unreachable (a network kind such as `ConnectionReset` or
//!   `TimedOut`, see [`unreachable`]), fenced ([`fenced`]), full (`StorageFull`/`ENOSPC`),
//!   corrupt (`InvalidData`, see [`corrupt`]), or anything else. The HTTP layer answers
//!   unreachable and fenced with 503 (clients retry later), full with 507, the rest with 500.
//!   A backend maps its own errors to these kinds; it retries transient failures itself for as
//!   long as it sees fit and reports "unreachable" after that.
//! - **Fenced stores refuse, they do not guess.** A store that cannot prove it is the only
//!   writer (the gateway whose lease on its share is lost or not renewed in time) fails every
//!   write, replace, delete and quarantine with a [`Fenced`] error, and [`BlobStore::may_write`]
//!   says so before work that deletes (GC, prune). Reads go on.
//!
//! Every call blocks; callers run them off the async runtime.
//!
//! # Adding a backend
//!
//! 1. Write one module with a type implementing [`BlobStore`] (one instance for chunks, one for
//!    index blobs: two namespaces) and one implementing [`ManifestStore`].
//! 2. `put`: make the object durable and visible whole in one step (temp name then rename, or
//!    one conditional PUT such as S3's `If-None-Match: *`); an existing id is `Ok(false)`.
//! 3. `list`: one page of names after `after`, ascending (S3: `ListObjectsV2` with `StartAfter`
//!    and `MaxKeys`); `delete` and `quarantine` of a missing object are `Ok`.
//! 4. Map the backend's errors to the kinds of [`Fault`] ([`unreachable`] after the backend's
//!    own retries, paced with `stdx::backoff::Backoff`; [`corrupt`]; `NotFound`; `StorageFull`).
//! 5. Hand `repo::Stores { chunks, indexes, manifests }` to `server::App::open_with` (as the
//!    gateway does) and run the conformance suite `tests/tests/it/store.rs` against it.

pub mod layout;
pub mod local;

use std::io;

use schema::{BackupId, ChunkId};

/// One page of a listing: at most the `limit` asked for, in name order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The ids of this page, ascending.
    pub ids: Vec<T>,
    /// Where the next page starts (pass it as `after`), or `None` when the listing is done.
    pub next: Option<T>,
}

impl<T: Clone> Page<T> {
    /// The page of `ids` (ascending) asked for with `limit`: it may continue when it is full.
    pub fn of(ids: Vec<T>, limit: usize) -> Page<T> {
        let next = if ids.len() >= limit {
            ids.last().cloned()
        } else {
            None
        };
        Page { ids, next }
    }
}

/// Content-addressed blobs (chunk frames, or index blobs), named by [`ChunkId`].
pub trait BlobStore: Send + Sync + std::fmt::Debug {
    /// Stores `bytes` as `id`, durable and visible whole when it returns; `false` when `id`
    /// already existed (nothing is written: the name is the blake3 of the content).
    ///
    /// # Errors
    /// See [`Fault`]; nothing is visible under `id` after an error.
    fn put(&self, id: &ChunkId, bytes: &[u8]) -> io::Result<bool>;

    /// Stores `bytes` as `id` durably, replacing what is there.
    ///
    /// # Errors
    /// See [`Fault`]; the old content or the new one is visible after an error, never a mix.
    fn replace(&self, id: &ChunkId, bytes: &[u8]) -> io::Result<()>;

    /// The whole content of `id`.
    ///
    /// # Errors
    /// `NotFound` when absent; see [`Fault`].
    fn get(&self, id: &ChunkId) -> io::Result<Vec<u8>>;

    /// Feeds the content of `id` to `sink` in pieces (large index blobs are not held whole).
    ///
    /// # Errors
    /// `NotFound` when absent; errors from `sink`.
    fn stream(
        &self,
        id: &ChunkId,
        sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        sink(&self.get(id)?)
    }

    /// Size of `id`, `None` when absent.
    ///
    /// # Errors
    /// See [`Fault`] (absence is not an error here).
    fn len(&self, id: &ChunkId) -> io::Result<Option<u64>>;

    /// Removes `id`; absent is fine. (A delete lost in a crash leaves an object nothing
    /// names, which is harmless: the catalog row goes first.)
    ///
    /// # Errors
    /// See [`Fault`].
    fn delete(&self, id: &ChunkId) -> io::Result<()>;

    /// At most `limit` stored ids strictly after `after`, ascending (see the module's contract);
    /// names that are not ids are skipped.
    ///
    /// # Errors
    /// See [`Fault`].
    fn list(&self, after: Option<&ChunkId>, limit: usize) -> io::Result<Page<ChunkId>>;

    /// Moves `id` aside (into a `quarantine/` place beside the store, out of every listing) for
    /// a person to look at; absent is fine.
    ///
    /// # Errors
    /// See [`Fault`].
    fn quarantine(&self, id: &ChunkId) -> io::Result<()>;

    /// What kind of storage this is, for `/v1/capabilities` (`local`, `smb`).
    fn kind(&self) -> &'static str;

    /// Whether writes and deletions may go ahead now. A fenced store (see [`Fenced`]) answers
    /// with the error its writes would fail with; an unfenced store always may.
    ///
    /// # Errors
    /// A [`Fenced`] error saying why not.
    fn may_write(&self) -> io::Result<()> {
        Ok(())
    }
}

/// Manifests of committed backups (JSON), kept beside the data so a lost catalog can be rebuilt
/// from the store alone (`rescan`). The same guarantees as [`BlobStore`], except that a
/// manifest is replaced by `put_manifest` (it is not content-addressed).
pub trait ManifestStore: Send + Sync + std::fmt::Debug {
    /// Writes the manifest of `id` durably (replacing an older copy).
    ///
    /// # Errors
    /// See [`Fault`]; the old copy or the new one is visible after an error.
    fn put_manifest(&self, id: &BackupId, json: &[u8]) -> io::Result<()>;

    /// The manifest of `id`.
    ///
    /// # Errors
    /// `NotFound` when absent; see [`Fault`].
    fn get_manifest(&self, id: &BackupId) -> io::Result<Vec<u8>>;

    /// Removes the manifest of `id`, durably (a rescan must not bring a deleted backup back);
    /// absent is fine.
    ///
    /// # Errors
    /// See [`Fault`].
    fn delete_manifest(&self, id: &BackupId) -> io::Result<()>;

    /// At most `limit` backups with a manifest strictly after `after`, in the order of their
    /// object names (see the module's contract; for `manifests/<id>.json` that is not always
    /// id order, so callers that need id order sort).
    ///
    /// # Errors
    /// See [`Fault`].
    fn list_manifests(&self, after: Option<&BackupId>, limit: usize) -> io::Result<Page<BackupId>>;
}

/// Walks a listing page by page: `list(after, limit)` is called with each page's `next` until
/// there is none. Each item is one page's ids (never empty) or the error that ended the walk.
///
/// ```ignore
/// for ids in store::pages(4096, |after, n| chunks.list(after, n)) {
///     for id in ids? { ... }
/// }
/// ```
pub fn pages<T, F>(limit: usize, list: F) -> Pages<T, F>
where
    F: FnMut(Option<&T>, usize) -> io::Result<Page<T>>,
{
    Pages {
        list,
        limit: limit.max(1),
        after: None,
        done: false,
    }
}

/// The iterator of [`pages`].
#[derive(Debug)]
pub struct Pages<T, F> {
    list: F,
    limit: usize,
    after: Option<T>,
    done: bool,
}

impl<T, F> Iterator for Pages<T, F>
where
    F: FnMut(Option<&T>, usize) -> io::Result<Page<T>>,
{
    type Item = io::Result<Vec<T>>;

    fn next(&mut self) -> Option<io::Result<Vec<T>>> {
        if self.done {
            return None;
        }
        match (self.list)(self.after.as_ref(), self.limit) {
            Ok(page) => {
                self.done = page.next.is_none();
                self.after = page.next;
                if page.ids.is_empty() {
                    self.done = true;
                    return None;
                }
                Some(Ok(page.ids))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Every id of a listing, in its order (for small listings and tests; large ones go page by
/// page with [`pages`]).
///
/// # Errors
/// The first error of the walk.
pub fn list_all<T, F>(list: F) -> io::Result<Vec<T>>
where
    F: FnMut(Option<&T>, usize) -> io::Result<Page<T>>,
{
    let mut out = Vec::new();
    for ids in pages(4096, list) {
        out.extend(ids?);
    }
    Ok(out)
}

/// What a store's error means to the repository, and so the answer a request gets. Every error
/// of every backend falls in exactly one (see [`fault`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The object does not exist (`io::ErrorKind::NotFound`). Reads that may miss check for
    /// it; one that reaches the HTTP layer means the catalog names something absent: 500.
    NotFound,
    /// The storage cannot be reached now (server down, network cut, timeouts): a network kind
    /// of `io::Error` ([`unreachable`] makes one). 503: clients retry later.
    Unreachable,
    /// The store refuses to write because it cannot prove it is the only writer ([`fenced`]).
    /// 503 with the reason.
    Fenced,
    /// The storage is full (`StorageFull`, `ENOSPC`, `EDQUOT`). 507: the operator can act.
    Full,
    /// The storage answered with something that fails its own integrity check, such as a
    /// checksum an object store keeps (`InvalidData`, [`corrupt`] makes one). 500, logged.
    Corrupt,
    /// Anything else: 500, logged.
    Other,
}

/// The [`Fault`] of a store's error.
pub fn fault(e: &io::Error) -> Fault {
    use io::ErrorKind::*;
    if is_fenced(e) {
        return Fault::Fenced;
    }
    if matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
        return Fault::Full;
    }
    match e.kind() {
        NotFound => Fault::NotFound,
        ConnectionReset | ConnectionAborted | ConnectionRefused | NotConnected | BrokenPipe
        | TimedOut | HostUnreachable | NetworkUnreachable | NetworkDown => Fault::Unreachable,
        StorageFull | QuotaExceeded => Fault::Full,
        InvalidData => Fault::Corrupt,
        _ => Fault::Other,
    }
}

/// The error of a store that cannot reach its storage (after its own retries): `what` says
/// what failed, for people.
pub fn unreachable(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, what.into())
}

/// The error of a store whose storage returned an object that fails an integrity check.
pub fn corrupt(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Why a store refuses to write or delete: it cannot prove it is the only writer (a gateway
/// that does not hold its share's lease). Carried inside an `io::Error` (see [`fenced`]).
#[derive(Debug)]
pub struct Fenced(pub String);

impl std::fmt::Display for Fenced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Fenced {}

/// The `io::Error` of a store that refuses to write: `reason` says why, for people.
pub fn fenced(reason: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::ResourceBusy, Fenced(reason.into()))
}

/// Whether `e` is a store's refusal to write ([`fenced`]).
pub fn is_fenced(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Fenced>())
}

/// What a fenced store asks before every write, rename and delete (the gateway's lease
/// implements it): `Ok` while this process may write, else a [`fenced`] error saying why.
pub trait WriteFence: Send + Sync + std::fmt::Debug {
    /// Whether a write may go now.
    ///
    /// # Errors
    /// A [`fenced`] error with the reason.
    fn check(&self) -> io::Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_fall_in_one_fault() {
        use io::ErrorKind as K;
        assert_eq!(fault(&io::Error::from(K::NotFound)), Fault::NotFound);
        assert_eq!(fault(&unreachable("down")), Fault::Unreachable);
        assert_eq!(fault(&io::Error::from(K::TimedOut)), Fault::Unreachable);
        assert_eq!(fault(&fenced("lost the lease")), Fault::Fenced);
        assert_eq!(
            fault(&io::Error::from_raw_os_error(libc::ENOSPC)),
            Fault::Full
        );
        assert_eq!(fault(&io::Error::from(K::StorageFull)), Fault::Full);
        assert_eq!(fault(&corrupt("bad checksum")), Fault::Corrupt);
        assert_eq!(fault(&io::Error::other("?")), Fault::Other);
        // Fenced wins over its carrier kind.
        assert_eq!(fenced("x").kind(), K::ResourceBusy);
    }

    #[test]
    fn pages_walk_a_listing_once() {
        let all: Vec<u32> = (0..10).collect();
        let list = |after: Option<&u32>, n: usize| {
            let ids: Vec<u32> = all
                .iter()
                .copied()
                .filter(|i| after.is_none_or(|a| i > a))
                .take(n)
                .collect();
            Ok(Page::of(ids, n))
        };
        let got: Vec<Vec<u32>> = pages(4, list).map(|p| p.expect("page")).collect();
        assert_eq!(got, vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]);
        // A listing that ends on a full page ends with an empty one, which is not yielded.
        assert_eq!(pages(5, list).count(), 2);
        assert_eq!(list_all(list).expect("all"), all);
        // An error ends the walk.
        let mut calls = 0;
        let failing = |_: Option<&u32>, _: usize| {
            calls += 1;
            Err::<Page<u32>, _>(unreachable("down"))
        };
        assert_eq!(pages(3, failing).count(), 1);
        assert_eq!(calls, 1);
    }
}
