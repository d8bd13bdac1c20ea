//! The sealed chunk frame: how a chunk of an encrypted backup is stored, and the part of it a
//! repository can check without the key.
//!
//! A mover with an encryption key names each block by a keyed hash of its plaintext, compresses
//! it, and seals it with AES-256-GCM under a key derived from the master key and the chunk id.
//! The frame is:
//!
//! ```text
//! offset  size  field
//!      0     4  magic "SEAL"
//!      4     1  version (1)
//!      5     1  compression of the plaintext inside (0 none, 1 zstd)
//!      6     2  reserved, zero
//!      8     8  key id (which master key sealed it; public)
//!     16     8  plaintext length (the block's bytes, little-endian; equals Chunk-Length)
//!     24    32  chunk id (the digest in the upload's URL)
//!     56    12  nonce (random per frame)
//!     68     n  ciphertext of the (compressed) plaintext
//!   68+n    16  GCM tag
//! ```
//!
//! The whole 68-byte header is the AEAD's associated data, so none of it can be changed without
//! the mover noticing. A repository checks the syntax ([`Header::parse`]): magic, version,
//! compression, reserved bytes, that the chunk id and length are the upload's, and the length
//! bounds; and a digest of the stored bytes that the mover sends with the upload
//! ([`STORED_DIGEST_HEADER`]) and that verify re-checks later. It cannot open the frame.

use crate::ChunkId;

/// The content type of a sealed chunk body.
pub const CONTENT_TYPE: &str = "application/vnd.backup.sealed";

/// The request header carrying the blake3 (64 lowercase hex digits) of the sealed body, as
/// stored: the repository checks the body against it and keeps it, and verify re-checks it.
pub const STORED_DIGEST_HEADER: &str = "stored-blake3";

/// The frame's first four bytes.
pub const MAGIC: [u8; 4] = *b"SEAL";

/// The frame format this crate describes.
pub const VERSION: u8 = 1;

/// Bytes before the ciphertext.
pub const HEADER_LEN: usize = 68;

/// The AEAD tag after the ciphertext.
pub const TAG_LEN: usize = 16;

/// Compression of the plaintext inside the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Stored as is.
    None,
    /// One zstd frame.
    Zstd,
}

/// The public header of a sealed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Compression of the plaintext inside.
    pub compression: Compression,
    /// Which master key sealed it.
    pub key_id: [u8; 8],
    /// The block's plaintext length.
    pub raw_len: u64,
    /// The chunk id.
    pub chunk: ChunkId,
    /// The AEAD nonce.
    pub nonce: [u8; 12],
}

impl Header {
    /// The 68 header bytes (the AEAD's associated data).
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5] = match self.compression {
            Compression::None => 0,
            Compression::Zstd => 1,
        };
        b[8..16].copy_from_slice(&self.key_id);
        b[16..24].copy_from_slice(&self.raw_len.to_le_bytes());
        b[24..56].copy_from_slice(&self.chunk.0);
        b[56..68].copy_from_slice(&self.nonce);
        b
    }

    /// Parses the header of `frame` and checks the frame's syntax: magic, version, compression,
    /// reserved bytes, and room for a tag.
    ///
    /// # Errors
    /// What is wrong, for the error message.
    pub fn parse(frame: &[u8]) -> Result<Header, String> {
        if frame.len() < HEADER_LEN + TAG_LEN {
            return Err(format!(
                "a sealed frame is at least {} bytes, this one {}",
                HEADER_LEN + TAG_LEN,
                frame.len()
            ));
        }
        if frame[..4] != MAGIC {
            return Err("not a sealed frame (bad magic)".into());
        }
        if frame[4] != VERSION {
            return Err(format!(
                "sealed frame version {} (this repository knows {VERSION})",
                frame[4]
            ));
        }
        let compression = match frame[5] {
            0 => Compression::None,
            1 => Compression::Zstd,
            c => return Err(format!("unknown compression {c} in a sealed frame")),
        };
        if frame[6..8] != [0, 0] {
            return Err("reserved bytes of a sealed frame are not zero".into());
        }
        let take = |a: usize, b: usize| frame[a..b].to_vec();
        let mut key_id = [0u8; 8];
        key_id.copy_from_slice(&take(8, 16));
        let mut len = [0u8; 8];
        len.copy_from_slice(&take(16, 24));
        let chunk = ChunkId::from_slice(&frame[24..56])
            .ok_or_else(|| "bad chunk id in a sealed frame".to_string())?;
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&take(56, 68));
        Ok(Header {
            compression,
            key_id,
            raw_len: u64::from_le_bytes(len),
            chunk,
            nonce,
        })
    }
}

/// Whether `frame` starts like a sealed frame (its magic).
pub fn is_sealed(frame: &[u8]) -> bool {
    frame.len() >= 4 && frame[..4] == MAGIC
}

/// The largest sealed body for a block of `raw_len` bytes whose compressed form may take up to
/// `compressed_max` bytes.
pub fn max_len(compressed_max: u64) -> u64 {
    compressed_max + (HEADER_LEN + TAG_LEN) as u64
}

/// The blake3 of stored bytes, as [`STORED_DIGEST_HEADER`] spells it (lowercase hex).
pub fn stored_digest(bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(bytes).as_bytes()
}

/// Parses a [`STORED_DIGEST_HEADER`] value.
pub fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    if hex.bytes().any(|c| c.is_ascii_uppercase()) {
        return None;
    }
    Some(out)
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_bad_frames_are_named() {
        let h = Header {
            compression: Compression::Zstd,
            key_id: [1, 2, 3, 4, 5, 6, 7, 8],
            raw_len: 1 << 20,
            chunk: ChunkId::of(b"x"),
            nonce: [9; 12],
        };
        let mut frame = h.encode().to_vec();
        frame.extend_from_slice(&[0u8; TAG_LEN]);
        assert_eq!(Header::parse(&frame), Ok(h));
        assert!(is_sealed(&frame));
        assert!(Header::parse(&frame[..HEADER_LEN]).is_err());
        for (at, v) in [(0, b'X'), (4, 2), (5, 7), (6, 1)] {
            let mut bad = frame.clone();
            bad[at] = v;
            assert!(Header::parse(&bad).is_err(), "byte {at}");
        }
        let d = stored_digest(&frame);
        assert_eq!(parse_digest(&hex(&d)), Some(d));
        assert_eq!(parse_digest("ab"), None);
        assert_eq!(parse_digest(&hex(&d).to_uppercase()), None);
    }
}
