//! Sealing and opening chunks of encrypted backups (the frame is `schema::sealed`): a block is
//! compressed, then sealed with AES-256-GCM under its chunk's key ([`MasterKey::chunk_key`]),
//! a random nonce, and the frame header (format version, key id, length, chunk id) as associated
//! data. Opening checks the header against what the index expects, the tag, the length and the
//! keyed digest of the plaintext, so a repository that changed, swapped or replayed a frame is
//! caught.

use ring::aead::{Aad, Nonce};
use schema::sealed::{Compression, Header, HEADER_LEN, TAG_LEN};
use schema::ChunkId;

use crate::error::{Error, Result};
use crate::key::{fill_random, MasterKey};

/// Seals `data` (chunk `id` of `key`): compressed with zstd at `level`, then encrypted.
///
/// # Errors
/// Compression or the random generator failing.
pub fn seal(key: &MasterKey, id: &ChunkId, data: &[u8], level: i32) -> Result<Vec<u8>> {
    let compressed = zstd::bulk::compress(data, level)
        .map_err(|e| Error::Invalid(format!("compressing chunk {id}: {e}")))?;
    let mut nonce = [0u8; 12];
    fill_random(&mut nonce)?;
    let header = Header {
        compression: Compression::Zstd,
        key_id: key.id(),
        raw_len: data.len() as u64,
        chunk: *id,
        nonce,
    }
    .encode();
    let mut frame = Vec::with_capacity(HEADER_LEN + compressed.len() + TAG_LEN);
    frame.extend_from_slice(&header);
    frame.extend_from_slice(&compressed);
    let (head, body) = frame.split_at_mut(HEADER_LEN);
    let tag = key
        .chunk_key(id)?
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&head[..]),
            body,
        )
        .map_err(|_| Error::Invalid(format!("sealing chunk {id} failed")))?;
    frame.extend_from_slice(tag.as_ref());
    Ok(frame)
}

/// Opens a sealed `frame` expected to be chunk `id` of `len` bytes under `key`: checks the
/// header, the tag, the length and the keyed digest; returns the plaintext. The message says
/// what failed (for [`Error::Corrupt`]).
///
/// # Errors
/// The reason, as text.
pub fn open(
    key: &MasterKey,
    id: &ChunkId,
    len: usize,
    frame: &[u8],
) -> std::result::Result<Vec<u8>, String> {
    if !schema::sealed::is_sealed(frame) {
        return Err("is not sealed, but its backup is encrypted".into());
    }
    let h = Header::parse(frame)?;
    if h.key_id != key.id() {
        return Err(format!(
            "is sealed with key {}, not {}",
            schema::sealed::hex(&h.key_id),
            key.id_hex()
        ));
    }
    if h.chunk != *id || h.raw_len != len as u64 {
        return Err(format!(
            "its frame names chunk {} of {} bytes, the index {id} of {len}",
            h.chunk, h.raw_len
        ));
    }
    let mut body = frame[HEADER_LEN..].to_vec();
    let plain = key
        .chunk_key(id)
        .map_err(|e| e.to_string())?
        .open_in_place(
            Nonce::assume_unique_for_key(h.nonce),
            Aad::from(&frame[..HEADER_LEN]),
            &mut body,
        )
        .map_err(|_| "fails its AEAD tag (changed, or sealed with another key)".to_string())?;
    let data = match h.compression {
        Compression::None => plain.to_vec(),
        Compression::Zstd => {
            zstd::bulk::decompress(plain, len).map_err(|e| format!("does not decompress: {e}"))?
        }
    };
    if data.len() != len || key.chunk_id(&data) != *id {
        return Err("content does not match the keyed digest in the index".into());
    }
    Ok(data)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sealed_chunks_open_only_unchanged_and_with_their_key() {
        let k = MasterKey::generate().unwrap();
        let data = b"some plaintext block, some plaintext block".repeat(100);
        let id = k.chunk_id(&data);
        let frame = seal(&k, &id, &data, 3).unwrap();
        assert!(schema::sealed::is_sealed(&frame));
        assert!(
            !frame.windows(16).any(|w| w == &data[..16]),
            "no plaintext in the frame"
        );
        assert_eq!(open(&k, &id, data.len(), &frame).unwrap(), data);
        // Two seals of the same block differ (random nonce) and both open.
        let again = seal(&k, &id, &data, 3).unwrap();
        assert_ne!(frame, again);
        assert_eq!(open(&k, &id, data.len(), &again).unwrap(), data);
        for at in [5, 20, 40, HEADER_LEN + 1, frame.len() - 1] {
            let mut bad = frame.clone();
            bad[at] ^= 1;
            assert!(open(&k, &id, data.len(), &bad).is_err(), "byte {at}");
        }
        let other = MasterKey::generate().unwrap();
        let e = open(&other, &id, data.len(), &frame).unwrap_err();
        assert!(e.contains("key"), "{e}");
        assert!(open(&k, &k.chunk_id(b"x"), data.len(), &frame).is_err());
        assert!(open(&k, &id, data.len() - 1, &frame).is_err());
    }
}
