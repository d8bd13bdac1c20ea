//! A bounded cache of decoded, verified blocks, shared by every export and connection: a VM
//! booting from an export reads the same few blocks in small pieces, and each piece would
//! otherwise decompress and hash its whole block again.
//!
//! Only bytes that passed their blake3 enter it, keyed by that id, so a hit is as good as a
//! verified read. Least recently used blocks leave first once `capacity` bytes are held.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use bytes::Bytes;
use schema::ChunkId;

#[derive(Debug, Default)]
struct Inner {
    /// Block, and the tick of its last use.
    blocks: HashMap<ChunkId, (Bytes, u64)>,
    /// Last-use tick → block (oldest first).
    order: BTreeMap<u64, ChunkId>,
    held: u64,
    tick: u64,
}

/// The cache.
#[derive(Debug)]
pub struct BlockCache {
    capacity: u64,
    inner: Mutex<Inner>,
}

impl BlockCache {
    /// A cache holding at most `capacity` bytes (0: nothing is kept).
    pub fn new(capacity: u64) -> BlockCache {
        BlockCache {
            capacity,
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The verified bytes of `id`, if held.
    pub fn get(&self, id: &ChunkId) -> Option<Bytes> {
        let mut g = self.lock();
        g.tick += 1;
        let tick = g.tick;
        let (bytes, old) = {
            let (b, t) = g.blocks.get_mut(id)?;
            let old = std::mem::replace(t, tick);
            (b.clone(), old)
        };
        g.order.remove(&old);
        g.order.insert(tick, *id);
        Some(bytes)
    }

    /// Keeps the verified bytes of `id`, evicting the least recently used blocks.
    pub fn insert(&self, id: ChunkId, bytes: Bytes) {
        let len = bytes.len() as u64;
        if len > self.capacity / 4 {
            return;
        }
        let mut g = self.lock();
        if g.blocks.contains_key(&id) {
            return;
        }
        while g.held + len > self.capacity {
            let Some((_, victim)) = g.order.pop_first() else {
                break;
            };
            if let Some((b, _)) = g.blocks.remove(&victim) {
                g.held -= b.len() as u64;
            }
        }
        g.tick += 1;
        let tick = g.tick;
        g.order.insert(tick, id);
        g.blocks.insert(id, (bytes, tick));
        g.held += len;
    }

    /// Bytes held.
    pub fn held(&self) -> u64 {
        self.lock().held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_within_capacity() {
        let c = BlockCache::new(400);
        let id = |n: u8| ChunkId([n; 32]);
        for n in 1..=4 {
            c.insert(id(n), Bytes::from(vec![n; 100]));
        }
        assert_eq!(c.held(), 400);
        assert!(c.get(&id(1)).is_some());
        c.insert(id(5), Bytes::from(vec![5; 100]));
        assert!(
            c.get(&id(2)).is_none(),
            "the least recently used block left"
        );
        assert_eq!(c.get(&id(1)).as_deref(), Some(&[1u8; 100][..]));
        assert!(c.held() <= 400);
        c.insert(id(6), Bytes::from(vec![6; 101]));
        assert!(
            c.get(&id(6)).is_none(),
            "a block over a quarter of the cache is not kept"
        );
    }
}
