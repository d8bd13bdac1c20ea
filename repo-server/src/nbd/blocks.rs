//! Reading an export: byte ranges as data and hole pieces, every data block's blake3 checked
//! before a byte of it is handed out (through [`Repository::read_block`]), and `base:allocation`
//! extents from the disk's index. Blocking: callers run it on blocking threads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use nbd::{alloc_flags, Extent};
use schema::ChunkId;

use super::cache::BlockCache;
use crate::error::Result;
use crate::repo::exports::Export;
use crate::repo::Repository;

/// One piece of a read, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Verified bytes.
    Data(Bytes),
    /// This many zero bytes (a hole or a zero block: nothing was read).
    Zeros(u64),
}

impl Piece {
    /// Bytes it covers.
    pub fn len(&self) -> u64 {
        match self {
            Piece::Data(b) => b.len() as u64,
            Piece::Zeros(n) => *n,
        }
    }

    /// Whether it covers nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The reading side of the NBD server, shared by every connection.
#[derive(Debug)]
pub struct Blocks {
    repo: Arc<Repository>,
    cache: BlockCache,
    /// blake3 of an all-zero block, by length (the few block sizes and last-block lengths).
    zero_ids: Mutex<HashMap<u64, ChunkId>>,
}

impl Blocks {
    /// Reads from `repo`, keeping up to `cache` bytes of decoded blocks.
    pub fn new(repo: Arc<Repository>, cache: u64) -> Blocks {
        Blocks {
            repo,
            cache: BlockCache::new(cache),
            zero_ids: Mutex::default(),
        }
    }

    /// Whether block `b` of `e` reads as zeros without being read: a hole in the index, or the
    /// id of an all-zero block of its length.
    fn is_zero(&self, e: &Export, b: u64, id: &ChunkId) -> bool {
        if id.is_hole() {
            return true;
        }
        let len = e.image.block_len(b);
        let mut ids = self.zero_ids.lock().unwrap_or_else(|x| x.into_inner());
        let zero = ids
            .entry(len)
            .or_insert_with(|| ChunkId::of(&crate::repo::ZEROS[..len as usize]));
        zero == id
    }

    /// Bytes `offset..offset + len` of `e` (inside the disk: the caller checked), as pieces in
    /// order; adjacent zero pieces are merged.
    ///
    /// # Errors
    /// A chunk that is missing, does not decode, or fails its blake3 (counted in
    /// `repo_verification_failures_total`): nothing of the range is returned then.
    pub fn read(&self, e: &Export, offset: u64, len: u64) -> Result<Vec<Piece>> {
        let bs = u64::from(e.image.disk.block_size);
        let end = offset + len;
        let mut out: Vec<Piece> = Vec::new();
        let mut at = offset;
        while at < end {
            let b = at / bs;
            let start = b * bs;
            let stop = (start + e.image.block_len(b)).min(end);
            let id = e
                .image
                .index
                .get(b as usize)
                .copied()
                .unwrap_or(ChunkId::HOLE);
            let piece = if self.is_zero(e, b, &id) {
                Piece::Zeros(stop - at)
            } else {
                let block = match self.cache.get(&id) {
                    Some(hit) => hit,
                    None => {
                        let data = Bytes::from(self.repo.read_block(&e.image, b)?);
                        self.cache.insert(id, data.clone());
                        data
                    }
                };
                Piece::Data(block.slice((at - start) as usize..(stop - start) as usize))
            };
            match (out.last_mut(), &piece) {
                (Some(Piece::Zeros(n)), Piece::Zeros(m)) => *n += m,
                _ => out.push(piece),
            }
            at = stop;
        }
        Ok(out)
    }

    /// `base:allocation` of `offset..offset + len` of `e` (inside the disk): runs of blocks
    /// that are holes or zero blocks (`HOLE | ZERO`) and of stored blocks (0), clipped to the
    /// range; at most `max` extents (`REQ_ONE`: 1), the last one ending where they stop.
    pub fn extents(&self, e: &Export, offset: u64, len: u64, max: usize) -> Vec<Extent> {
        let bs = u64::from(e.image.disk.block_size);
        let end = offset + len;
        let mut out: Vec<(u64, u32)> = Vec::new();
        let mut at = offset;
        while at < end {
            let b = at / bs;
            let stop = (b * bs + e.image.block_len(b)).min(end);
            let id = e
                .image
                .index
                .get(b as usize)
                .copied()
                .unwrap_or(ChunkId::HOLE);
            let flags = if self.is_zero(e, b, &id) {
                alloc_flags::HOLE | alloc_flags::ZERO
            } else {
                0
            };
            match out.last_mut() {
                Some((n, f)) if *f == flags && *n + (stop - at) <= u64::from(u32::MAX) => {
                    *n += stop - at;
                }
                _ => {
                    if out.len() == max {
                        break;
                    }
                    out.push((stop - at, flags));
                }
            }
            at = stop;
        }
        out.into_iter()
            .map(|(n, flags)| Extent {
                length: n as u32,
                flags,
            })
            .collect()
    }
}
