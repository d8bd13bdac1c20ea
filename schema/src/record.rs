//! The positional index record: which block of a disk holds which chunk.
//!
//! Wire and storage form: 40 bytes, a little-endian `u64` block number followed by the 32-byte
//! digest. A body of records is a plain concatenation; anything that is not a whole number of
//! records is rejected.

use crate::ChunkId;

/// Size of one record in bytes.
pub const RECORD_LEN: usize = 40;

/// One index record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexRecord {
    /// Block number within the disk (offset ÷ block size).
    pub block: u64,
    /// The block's content id, or [`ChunkId::HOLE`].
    pub id: ChunkId,
}

/// A body that is not a whole number of records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("body of {len} bytes is not a whole number of {RECORD_LEN}-byte records")]
pub struct RecordError {
    /// Length of the offending body.
    pub len: usize,
}

impl IndexRecord {
    /// Appends the 40-byte form to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.block.to_le_bytes());
        out.extend_from_slice(&self.id.0);
    }

    /// Decodes one record from exactly 40 bytes.
    pub fn decode(raw: &[u8; RECORD_LEN]) -> IndexRecord {
        let mut block = [0u8; 8];
        block.copy_from_slice(&raw[..8]);
        let mut id = [0u8; 32];
        id.copy_from_slice(&raw[8..]);
        IndexRecord {
            block: u64::from_le_bytes(block),
            id: ChunkId(id),
        }
    }

    /// Encodes many records into one body.
    pub fn encode_all(records: &[IndexRecord]) -> Vec<u8> {
        let mut out = Vec::with_capacity(records.len() * RECORD_LEN);
        for r in records {
            r.encode_into(&mut out);
        }
        out
    }

    /// Decodes a body of records.
    ///
    /// # Errors
    /// [`RecordError`] when the body is not a whole number of records.
    pub fn decode_all(body: &[u8]) -> Result<Vec<IndexRecord>, RecordError> {
        if !body.len().is_multiple_of(RECORD_LEN) {
            return Err(RecordError { len: body.len() });
        }
        Ok(body
            .chunks_exact(RECORD_LEN)
            .map(|c| {
                let raw: &[u8; RECORD_LEN] = c.try_into().unwrap_or(&[0; RECORD_LEN]);
                IndexRecord::decode(raw)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_ragged_bodies() {
        // A deterministic spread of values, including the extremes of the block number.
        let mut recs = Vec::new();
        for i in 0..200u64 {
            let block = match i {
                0 => 0,
                1 => u64::MAX,
                _ => i.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            };
            recs.push(IndexRecord {
                block,
                id: ChunkId::of(&i.to_le_bytes()),
            });
        }
        let body = IndexRecord::encode_all(&recs);
        assert_eq!(body.len(), recs.len() * RECORD_LEN);
        assert_eq!(IndexRecord::decode_all(&body), Ok(recs.clone()));
        assert_eq!(&body[..8], &0u64.to_le_bytes());
        for cut in [1, 39, 41, RECORD_LEN * 3 - 1] {
            assert_eq!(
                IndexRecord::decode_all(&body[..cut]),
                Err(RecordError { len: cut })
            );
        }
        assert_eq!(IndexRecord::decode_all(&[]), Ok(vec![]));
    }
}
