//! An NBD export as a [`BlockSource`]: reads are `NBD_CMD_READ` on one shared connection
//! (many in flight), [`BlockSource::allocated`] is `base:allocation` (extents flagged `HOLE`
//! or `ZERO` are never read). The same connection serves the export's dirty bitmaps to
//! [`crate::cbt::DirtyBitmap`].
//!
//! Small reads (the partition table, file-system metadata: thousands of 1–4 KiB reads while
//! the plan and the file walk run) would each cost a round trip where a file has the page
//! cache; they go through a small cache of [`CACHE_CHUNK`]-sized pieces instead, fetched
//! whole. It holds bytes read during this backup only (the export is read after the backup's
//! point, so a cached byte is no older than the point), and large reads bypass it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use super::BlockSource;
use crate::error::Result;
use crate::nbd::{Client, NbdUri, Timeouts};
use crate::ranges::Ranges;

/// Reads of at most this many bytes go through the cache.
pub const SMALL_READ: usize = 64 << 10;
/// The cache's unit: aligned pieces of this size.
pub const CACHE_CHUNK: u64 = 256 << 10;
/// Pieces the cache keeps (16 MiB).
const CACHE_SLOTS: usize = 64;

/// An open NBD export, read-only.
#[derive(Debug)]
pub struct NbdSource {
    client: Arc<Client>,
    uri: NbdUri,
    cache: Mutex<Cache>,
}

/// Recently read pieces, oldest first in `order`.
#[derive(Debug, Default)]
struct Cache {
    pieces: HashMap<u64, Arc<Vec<u8>>>,
    order: VecDeque<u64>,
}

impl NbdSource {
    /// Piece `i` (bytes `i·CACHE_CHUNK..`, clipped to the export), from the cache or the server.
    fn piece(&self, i: u64) -> Result<Arc<Vec<u8>>> {
        if let Some(p) = self.lock().pieces.get(&i) {
            return Ok(p.clone());
        }
        let start = i * CACHE_CHUNK;
        let len = CACHE_CHUNK.min(self.size() - start) as usize;
        let mut v = vec![0u8; len];
        self.client.read(&mut v, start)?;
        let v = Arc::new(v);
        let mut c = self.lock();
        if c.pieces.insert(i, v.clone()).is_none() {
            c.order.push_back(i);
        }
        while c.order.len() > CACHE_SLOTS {
            if let Some(old) = c.order.pop_front() {
                c.pieces.remove(&old);
            }
        }
        Ok(v)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl NbdSource {
    /// Connects to `uri` and negotiates `base:allocation` and `qemu:dirty-bitmap:B` for each
    /// of `bitmaps` (a bitmap the server does not offer is simply not there:
    /// [`NbdSource::has_context`]).
    ///
    /// # Errors
    /// [`crate::Error::Nbd`]: the server cannot be reached or refuses the export.
    pub fn open(uri: &NbdUri, bitmaps: &[String]) -> Result<NbdSource> {
        let mut contexts = vec![nbd::BASE_ALLOCATION.to_owned()];
        contexts.extend(
            bitmaps
                .iter()
                .map(|b| format!("{}{b}", nbd::QEMU_DIRTY_BITMAP)),
        );
        let client = Client::connect(uri, &contexts, Timeouts::default())?;
        Ok(NbdSource {
            client: Arc::new(client),
            uri: uri.clone(),
            cache: Mutex::new(Cache::default()),
        })
    }

    /// The connection (for the dirty bitmaps it carries).
    pub fn client(&self) -> &Arc<Client> {
        &self.client
    }

    /// Whether the server agreed to meta context `name`.
    pub fn has_context(&self, name: &str) -> bool {
        self.client.info().contexts.contains_key(name)
    }
}

impl BlockSource for NbdSource {
    fn describe(&self) -> String {
        self.uri.to_string()
    }

    fn size(&self) -> u64 {
        self.client.info().size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if buf.len() > SMALL_READ || end.is_none_or(|e| e > self.size()) {
            // Large reads, and reads past the end (the client names the error).
            return self.client.read(buf, offset);
        }
        let mut at = offset;
        let mut done = 0;
        while done < buf.len() {
            let i = at / CACHE_CHUNK;
            let p = self.piece(i)?;
            let rel = (at - i * CACHE_CHUNK) as usize;
            let n = (p.len() - rel).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&p[rel..rel + n]);
            done += n;
            at += n as u64;
        }
        Ok(())
    }

    /// `base:allocation`'s extents that are neither holes nor zeros; the whole export when the
    /// server offers no allocation context.
    fn allocated(&self) -> Result<Ranges> {
        if !self.has_context(nbd::BASE_ALLOCATION) {
            return Ok(Ranges::single(0, self.size()));
        }
        Ok(Ranges::from_unsorted(self.client.allocated()?))
    }
}
