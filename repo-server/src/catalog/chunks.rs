//! Stored chunks: their metadata (`chunks`), which tenants own them (`owners`), GC's mark set
//! (`gcmark`) and when verify last found them sound (`verified`).

use schema::ChunkId;

use super::{keys, Batch, Catalog, Cf, Pages};
use crate::error::Result;

/// Metadata of a stored chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkMeta {
    /// Uncompressed length.
    pub raw_len: u64,
    /// Bytes of the stored file.
    pub stored_len: u64,
    /// When the file was written (stored or healed), Unix ms: GC's age test. Pins, not this
    /// time, protect chunks in use; the row is never rewritten just to refresh it.
    pub touched_ms: i64,
    /// Bit 0: marked bad by verify (treated as missing until a fresh copy arrives). Bit 1:
    /// sealed (set exactly when `sealed` is).
    pub flags: u8,
    /// For a sealed chunk (`schema::sealed`, opaque to the repository): the blake3 of its stored
    /// bytes, which the mover sent with the upload and verify re-checks.
    pub sealed: Option<[u8; 32]>,
}

impl ChunkMeta {
    /// Flag: verify found the file corrupt or missing.
    pub const BAD: u8 = 1;

    /// Flag: a sealed frame, stored opaque; the value carries its stored digest.
    pub const SEALED: u8 = 2;

    /// Whether verify marked it bad.
    pub fn is_bad(&self) -> bool {
        self.flags & Self::BAD != 0
    }

    /// The stored value: raw length (8) + stored length (8) + touched ms (8) + flags (1), LE;
    /// a sealed chunk adds its stored digest (32). Rows written before sealed chunks existed
    /// are the 25-byte form and decode unchanged.
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(57);
        b.extend_from_slice(&self.raw_len.to_le_bytes());
        b.extend_from_slice(&self.stored_len.to_le_bytes());
        b.extend_from_slice(&self.touched_ms.to_le_bytes());
        match &self.sealed {
            None => b.push(self.flags & !Self::SEALED),
            Some(d) => {
                b.push(self.flags | Self::SEALED);
                b.extend_from_slice(d);
            }
        }
        b
    }

    /// A stored value back (`None` for another length, or a sealed flag without a digest).
    fn decode(b: &[u8]) -> Option<ChunkMeta> {
        if b.len() != 25 && b.len() != 57 {
            return None;
        }
        let flags = b[24];
        let sealed = match (b.len(), flags & Self::SEALED != 0) {
            (25, false) => None,
            (57, true) => Some(b[25..57].try_into().ok()?),
            _ => return None,
        };
        Some(ChunkMeta {
            raw_len: keys::parse_u64(&b[0..8]),
            stored_len: keys::parse_u64(&b[8..16]),
            touched_ms: keys::parse_i64(&b[16..24]),
            flags,
            sealed,
        })
    }
}

/// One `owners` row: `tenant` uploaded or references `chunk`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerRow {
    /// The tenant.
    pub tenant: String,
    /// The chunk.
    pub chunk: ChunkId,
}

impl Batch<'_> {
    /// Stores chunk metadata.
    pub fn put_chunk(&mut self, c: &ChunkId, m: ChunkMeta) {
        self.put(Cf::Chunks, c.0, m.encode());
    }

    /// Removes chunk metadata.
    pub fn delete_chunk(&mut self, c: &ChunkId) {
        self.delete(Cf::Chunks, c.0);
    }

    /// Records that `tenant` owns `c`.
    pub fn put_owner(&mut self, tenant: &str, c: &ChunkId) {
        self.put(Cf::Owners, keys::owner(tenant, c), []);
    }

    /// Removes an owner row.
    pub fn delete_owner(&mut self, o: &OwnerRow) {
        self.delete(Cf::Owners, keys::owner(&o.tenant, &o.chunk));
    }

    /// Adds a chunk (or an index blob, by its hash) to GC's mark set.
    pub fn put_mark(&mut self, c: &ChunkId) {
        self.put(Cf::GcMark, c.0, []);
    }

    /// Records when verify last found `c` sound.
    pub fn put_verified(&mut self, c: &ChunkId, ms: i64) {
        self.put(Cf::Verified, c.0, ms.to_le_bytes());
    }

    /// Forgets a chunk's verify time (the chunk is gone).
    pub fn delete_verified(&mut self, c: &ChunkId) {
        self.delete(Cf::Verified, c.0);
    }
}

impl Catalog {
    /// Chunk metadata for many ids.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn chunks(&self, ids: &[ChunkId]) -> Result<Vec<Option<ChunkMeta>>> {
        let cf = self.cf(Cf::Chunks);
        let wanted: Vec<_> = ids.iter().map(|c| (cf, c.0)).collect();
        self.db
            .multi_get_cf(wanted)
            .into_iter()
            .map(|r| Ok(r?.and_then(|v| ChunkMeta::decode(&v))))
            .collect()
    }

    /// Chunk metadata for one id.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn chunk(&self, id: &ChunkId) -> Result<Option<ChunkMeta>> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(Cf::Chunks), id.0)?
            .and_then(|v| ChunkMeta::decode(&v)))
    }

    /// Every chunk with its metadata, `n` a page (GC's sweep, verify, the offline check).
    pub fn chunk_pages(&self, n: usize) -> Pages<'_, (ChunkId, ChunkMeta)> {
        self.pages(Cf::Chunks, n, |k, v| {
            Some((ChunkId::from_slice(k)?, ChunkMeta::decode(v)?))
        })
    }

    /// Whether `tenant` owns each of `ids`.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn owned(&self, tenant: &str, ids: &[ChunkId]) -> Result<Vec<bool>> {
        self.present(Cf::Owners, ids.iter().map(|c| keys::owner(tenant, c)))
    }

    /// Every owner row, `n` a page.
    pub fn owner_pages(&self, n: usize) -> Pages<'_, OwnerRow> {
        self.pages(Cf::Owners, n, |k, _| {
            keys::parse_owner(k).map(|(tenant, chunk)| OwnerRow { tenant, chunk })
        })
    }

    /// The rows among `rows` whose chunk has no metadata row (any more).
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn stale_owners(&self, rows: &[OwnerRow]) -> Result<Vec<OwnerRow>> {
        let ids: Vec<ChunkId> = rows.iter().map(|o| o.chunk).collect();
        Ok(rows
            .iter()
            .zip(self.chunks(&ids)?)
            .filter(|(_, m)| m.is_none())
            .map(|(o, _)| o.clone())
            .collect())
    }

    /// Whether each of `ids` is in GC's mark set.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn marked(&self, ids: &[ChunkId]) -> Result<Vec<bool>> {
        self.present(Cf::GcMark, ids.iter().map(|c| c.0))
    }

    /// Whether GC's mark set holds anything (left by a GC that did not finish).
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn has_marks(&self) -> Result<bool> {
        self.any(Cf::GcMark)
    }

    /// Empties GC's mark set and compacts it away.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn clear_marks(&self) -> Result<()> {
        let cf = self.cf(Cf::GcMark);
        self.db
            .delete_range_cf(cf, &[0u8; 32][..], &[0xffu8; 33][..])?;
        self.db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        Ok(())
    }

    /// When verify last found each of `ids` sound (Unix ms).
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn verified(&self, ids: &[ChunkId]) -> Result<Vec<Option<i64>>> {
        let cf = self.cf(Cf::Verified);
        let wanted: Vec<_> = ids.iter().map(|c| (cf, c.0)).collect();
        self.db
            .multi_get_cf(wanted)
            .into_iter()
            .map(|r| Ok(r?.map(|v| keys::parse_i64(&v))))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::ChunkMeta;

    /// The value layout is the on-disk format.
    #[test]
    fn chunk_meta_layout() {
        let m = ChunkMeta {
            raw_len: 1,
            stored_len: 2,
            touched_ms: -3,
            flags: 1,
            sealed: None,
        };
        assert_eq!(m.encode()[..9], [1, 0, 0, 0, 0, 0, 0, 0, 2]);
        assert_eq!(
            m.encode()[16..],
            [0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1]
        );
        assert_eq!(ChunkMeta::decode(&m.encode()), Some(m));
        assert_eq!(ChunkMeta::decode(&[0; 24]), None);
        // A sealed row carries its stored digest; the flag and the length must agree.
        let s = ChunkMeta {
            flags: 0,
            sealed: Some([7; 32]),
            ..m
        };
        let enc = s.encode();
        assert_eq!(enc.len(), 57);
        assert_eq!(enc[24], ChunkMeta::SEALED);
        assert_eq!(
            ChunkMeta::decode(&enc),
            Some(ChunkMeta {
                flags: ChunkMeta::SEALED,
                ..s
            })
        );
        assert_eq!(ChunkMeta::decode(&enc[..25]), None);
        let mut plain = m.encode();
        plain[24] |= ChunkMeta::SEALED;
        assert_eq!(ChunkMeta::decode(&plain), None);
    }
}
