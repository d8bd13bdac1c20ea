//! Chunk uploads: verify, then store once.
//!
//! The server never trusts a client's digest: a zstd body must be exactly one frame that
//! decompresses (output capped at `Chunk-Length`, so a zstd bomb costs at most that much) to
//! `Chunk-Length` bytes whose blake3 is the digest in the URL. Raw bodies are hashed and
//! compressed here. Only then is the file written (durably) and its row inserted.
//!
//! A sealed body (`schema::sealed`, a chunk of an encrypted backup) cannot be opened here: the
//! frame's syntax is checked (magic, version, the chunk id and length in its header equal the
//! upload's, length bounds) and the blake3 of the body must equal the stored-bytes digest the
//! mover sent; the frame is stored as it came and its digest kept in the row for verify.
//!
//! Duplicate policy: a chunk the caller's tenant already owns answers 200 without reading the
//! body. A chunk stored by another tenant is verified from the body like a new one and answers
//! 201, so the status code reveals nothing across tenants; the file is not written twice.

use schema::{ChunkId, ErrorCode, SessionId};
use serde_json::json;
use zstd::zstd_safe;

use super::Repository;
use crate::auth::Caller;
use crate::catalog::{counter, ChunkMeta, Pin};
use crate::error::{Error, Result};

/// How an uploaded chunk body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `application/zstd`: exactly one zstd frame.
    Zstd,
    /// `application/octet-stream`: the raw block.
    Raw,
    /// `application/vnd.backup.sealed`: a sealed frame, with the blake3 of the body the mover
    /// declared (`Stored-Blake3`).
    Sealed {
        /// The declared digest of the body.
        stored: [u8; 32],
    },
}

/// The result of an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// 201: stored (or verified, for another tenant's chunk).
    Created,
    /// 200: the tenant already had it.
    Present,
}

impl Repository {
    /// The part of an upload that needs no body: if the caller's tenant already owns a sound
    /// copy of `id`, pins it and returns `true` (answer 200, skip the body).
    ///
    /// # Errors
    /// 404, 409 `SESSION_STATE`, 403.
    pub fn pin_if_present(&self, caller: &Caller, s: &SessionId, id: &ChunkId) -> Result<bool> {
        let _gc = self.gc_read();
        let lock = self.session_lock(s);
        let _g = lock.read().unwrap_or_else(|e| e.into_inner());
        let r = self.open_session(caller, s)?;
        self.touch(s);
        let meta = self.catalog.chunk(id)?;
        if meta.filter(|m| !m.is_bad()).is_none() {
            return Ok(false);
        }
        if !self.catalog.owned(&r.tenant, &[*id])?[0] {
            return Ok(false);
        }
        let mut b = self.catalog.batch();
        if self.catalog.pins(s, &[*id])?[0].is_none() {
            b.put_pin(s, id, Pin::default());
            self.mark_live(&mut b, id);
        }
        self.catalog.write(b)?;
        self.metrics.chunks_deduplicated.inc();
        Ok(true)
    }

    /// `PUT /v1/sessions/{id}/chunks/{digest}` with the body in hand.
    ///
    /// # Errors
    /// 422 `DIGEST_MISMATCH` / `LENGTH_MISMATCH` / `BAD_FRAME`, 413 `TOO_LARGE`, 404,
    /// 409 `SESSION_STATE`, 507 `STORAGE_FULL`.
    pub fn put_chunk(
        &self,
        caller: &Caller,
        s: &SessionId,
        id: &ChunkId,
        enc: Encoding,
        chunk_len: u64,
        body: &[u8],
    ) -> Result<Stored> {
        if chunk_len > self.settings.max_chunk_bytes {
            return Err(Error::new(
                ErrorCode::TooLarge,
                format!(
                    "Chunk-Length {chunk_len} is over the limit of {} bytes",
                    self.settings.max_chunk_bytes
                ),
            ));
        }
        // Verify before taking any lock: this is the expensive part and needs no shared state.
        let sealed = match enc {
            Encoding::Sealed { stored } => Some(stored),
            _ => None,
        };
        let frame = match enc {
            Encoding::Sealed { stored } => {
                verify_sealed(id, chunk_len, body, &stored)
                    .inspect_err(|e| self.count_failure(e))?;
                std::borrow::Cow::Borrowed(body)
            }
            Encoding::Zstd => {
                verify_frame(id, chunk_len, body).inspect_err(|e| self.count_failure(e))?;
                std::borrow::Cow::Borrowed(body)
            }
            Encoding::Raw => {
                verify_raw(id, chunk_len, body).inspect_err(|e| self.count_failure(e))?;
                std::borrow::Cow::Owned(
                    zstd::bulk::compress(body, self.settings.raw_level)
                        .map_err(|e| Error::internal("compressing a chunk", e))?,
                )
            }
        };
        let _gc = self.gc_read();
        let lock = self.session_lock(s);
        let _g = lock.read().unwrap_or_else(|e| e.into_inner());
        let r = self.open_session(caller, s)?;
        self.touch(s);
        let _stripe = self.stripe(id);
        let existing = self.catalog.chunk(id)?;
        let now = self.now();
        let mut b = self.catalog.batch();
        let sent = body.len() as u64;
        let (pin, status) = match existing {
            // A verified plain upload replaces a sealed copy of the same id (which could not be
            // verified; honest ids of the two kinds never meet); the other way round the sealed
            // upload is taken as a duplicate, so the answer says nothing of what is stored.
            Some(m) if !(m.is_bad() || (m.sealed.is_some() && sealed.is_none())) => {
                let owned = self.catalog.owned(&r.tenant, &[*id])?[0];
                self.metrics.chunks_deduplicated.inc();
                (
                    Pin {
                        new: false,
                        sent,
                        stored: 0,
                    },
                    if owned {
                        Stored::Present
                    } else {
                        Stored::Created
                    },
                )
            }
            previous => {
                // New, or a fresh copy healing a chunk verify marked bad: replace the file. A file
                // with no sound row is a leftover (GC unlinks after deleting the row; a crash can
                // fall in between) and may hold another frame of the same bytes, so it goes too.
                self.chunks.replace(id, &frame)?;
                let stored = frame.len() as u64;
                b.put_chunk(
                    id,
                    ChunkMeta {
                        raw_len: chunk_len,
                        stored_len: stored,
                        touched_ms: now,
                        flags: 0,
                        sealed,
                    },
                );
                match previous {
                    None => {
                        b.add(counter::CHUNKS, 1);
                        b.add(counter::STORED_BYTES, stored as i64);
                    }
                    Some(old) => {
                        b.add(counter::STORED_BYTES, stored as i64 - old.stored_len as i64)
                    }
                }
                self.metrics.chunks_stored.inc();
                (
                    // A healed chunk counts as new: this session stored it again.
                    Pin {
                        new: true,
                        sent,
                        stored,
                    },
                    Stored::Created,
                )
            }
        };
        b.put_owner(&r.tenant, id);
        b.put_pin(s, id, pin);
        self.mark_live(&mut b, id);
        self.catalog.write(b)?;
        self.metrics.bytes_received.add(sent);
        Ok(status)
    }

    fn count_failure(&self, e: &Error) {
        if matches!(
            e.code,
            ErrorCode::DigestMismatch | ErrorCode::LengthMismatch | ErrorCode::BadFrame
        ) {
            self.metrics.verification_failures.inc();
        }
    }
}

fn mismatch(id: &ChunkId, actual: ChunkId) -> Error {
    Error::new(
        ErrorCode::DigestMismatch,
        format!("block hashes to {actual}, not {id}"),
    )
    .detail(json!({ "expected": id, "actual": actual }))
}

fn length_mismatch(expected: u64, actual: Option<u64>) -> Error {
    let msg = match actual {
        Some(a) => format!("block is {a} bytes, Chunk-Length says {expected}"),
        None => format!("block is longer than Chunk-Length {expected}"),
    };
    Error::new(ErrorCode::LengthMismatch, msg)
        .detail(json!({ "chunk_length": expected, "actual": actual }))
}

/// Checks a raw block against its id and length.
fn verify_raw(id: &ChunkId, len: u64, body: &[u8]) -> Result<()> {
    if body.len() as u64 != len {
        return Err(length_mismatch(len, Some(body.len() as u64)));
    }
    let actual = ChunkId::of(body);
    if &actual != id {
        return Err(mismatch(id, actual));
    }
    Ok(())
}

/// Checks a sealed body: its syntax, its header against the upload (`id`, `len`), its size
/// against the largest sealed frame of `len` bytes, and its blake3 against `stored`.
fn verify_sealed(id: &ChunkId, len: u64, body: &[u8], stored: &[u8; 32]) -> Result<()> {
    let bad = |m: String| Error::new(ErrorCode::BadFrame, m);
    let h = schema::sealed::Header::parse(body).map_err(bad)?;
    if &h.chunk != id {
        return Err(bad(format!(
            "the sealed frame names chunk {}, the upload {id}",
            h.chunk
        )));
    }
    if h.raw_len != len {
        return Err(length_mismatch(len, Some(h.raw_len)));
    }
    let max = schema::sealed::max_len(zstd_safe::compress_bound(len as usize) as u64 + 1024);
    if body.len() as u64 > max {
        return Err(Error::new(
            ErrorCode::TooLarge,
            format!("a sealed frame of a {len}-byte block is at most {max} bytes"),
        ));
    }
    let actual = schema::sealed::stored_digest(body);
    if &actual != stored {
        return Err(Error::new(
            ErrorCode::DigestMismatch,
            format!(
                "the sealed body hashes to {}, Stored-Blake3 says {}",
                schema::sealed::hex(&actual),
                schema::sealed::hex(stored)
            ),
        ));
    }
    Ok(())
}

/// Checks that `frame` is exactly one zstd frame decoding to `len` bytes hashing to `id`.
fn verify_frame(id: &ChunkId, len: u64, frame: &[u8]) -> Result<()> {
    let bad = |m: String| Error::new(ErrorCode::BadFrame, m);
    let size = zstd_safe::find_frame_compressed_size(frame).map_err(|c| {
        bad(format!(
            "body is not a zstd frame ({})",
            zstd_safe::get_error_name(c)
        ))
    })?;
    if size != frame.len() {
        return Err(bad(format!(
            "body holds {} bytes after its first zstd frame; send exactly one frame",
            frame.len() - size
        )));
    }
    // A declared content size that disagrees is refused before any decompression.
    if let Ok(Some(declared)) = zstd_safe::get_frame_content_size(frame) {
        if declared != len {
            return Err(length_mismatch(len, Some(declared)));
        }
    }
    SCRATCH.with_borrow_mut(|(dctx, out)| {
        out.clear();
        out.reserve(len as usize + 1);
        let result = match dctx.decompress(out, frame) {
            Ok(n) if n as u64 == len => {
                let actual = ChunkId::of(out);
                if &actual == id {
                    Ok(())
                } else {
                    Err(mismatch(id, actual))
                }
            }
            Ok(n) => Err(length_mismatch(len, Some(n as u64))),
            Err(c) if zstd_safe::get_error_name(c).contains("too small") => {
                Err(length_mismatch(len, None))
            }
            Err(c) => Err(bad(format!(
                "zstd frame does not decode ({})",
                zstd_safe::get_error_name(c)
            ))),
        };
        // Keep the buffer for the next chunk on this thread unless it is unusually large.
        if out.capacity() > SCRATCH_KEEP {
            *out = Vec::new();
        }
        result
    })
}

/// Largest decompression buffer a thread keeps between chunks (4 MiB blocks + 1).
const SCRATCH_KEEP: usize = (4 << 20) + 1;

thread_local! {
    /// Per-thread decompression context and output buffer: a fresh 1 MiB buffer per chunk
    /// costs page faults and zeroing that showed in profiles.
    static SCRATCH: std::cell::RefCell<(zstd_safe::DCtx<'static>, Vec<u8>)> =
        std::cell::RefCell::new((zstd_safe::DCtx::create(), Vec::new()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_checked() {
        let data = vec![7u8; 100_000];
        let id = ChunkId::of(&data);
        let frame = zstd::bulk::compress(&data, 3).expect("compress");
        assert!(verify_frame(&id, 100_000, &frame).is_ok());
        let code = |r: Result<()>| r.err().map(|e| e.code);
        assert_eq!(
            code(verify_frame(&id, 99_999, &frame)),
            Some(ErrorCode::LengthMismatch)
        );
        assert_eq!(
            code(verify_frame(&ChunkId::of(b"x"), 100_000, &frame)),
            Some(ErrorCode::DigestMismatch)
        );
        let mut two = frame.clone();
        two.extend_from_slice(&frame);
        assert_eq!(
            code(verify_frame(&id, 100_000, &two)),
            Some(ErrorCode::BadFrame)
        );
        assert_eq!(
            code(verify_frame(&id, 100_000, b"not zstd at all")),
            Some(ErrorCode::BadFrame)
        );
        assert_eq!(
            code(verify_frame(&id, 100_000, &frame[..frame.len() - 3])),
            Some(ErrorCode::BadFrame)
        );
        // A frame without a declared size that expands past Chunk-Length is cut off.
        let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).expect("encoder");
        std::io::Write::write_all(&mut enc, &vec![0u8; 10 << 20]).expect("write");
        let bomb = enc.finish().expect("finish");
        assert_eq!(
            code(verify_frame(&id, 4096, &bomb)),
            Some(ErrorCode::LengthMismatch)
        );
        assert_eq!(code(verify_raw(&id, 100_000, &data)), None);
        // A sealed frame: its header must name the upload, its digest the body.
        let h = schema::sealed::Header {
            compression: schema::sealed::Compression::Zstd,
            key_id: [1; 8],
            raw_len: 100_000,
            chunk: id,
            nonce: [2; 12],
        };
        let mut sealed = h.encode().to_vec();
        sealed.extend_from_slice(&[3u8; 200]);
        let d = schema::sealed::stored_digest(&sealed);
        assert_eq!(code(verify_sealed(&id, 100_000, &sealed, &d)), None);
        assert_eq!(
            code(verify_sealed(&id, 100_000, &sealed, &[0; 32])),
            Some(ErrorCode::DigestMismatch)
        );
        assert_eq!(
            code(verify_sealed(&id, 99_999, &sealed, &d)),
            Some(ErrorCode::LengthMismatch)
        );
        assert_eq!(
            code(verify_sealed(&ChunkId::of(b"y"), 100_000, &sealed, &d)),
            Some(ErrorCode::BadFrame)
        );
        assert_eq!(
            code(verify_sealed(&id, 100_000, &frame, &d)),
            Some(ErrorCode::BadFrame)
        );
        assert_eq!(
            code(verify_raw(&id, 100_001, &data)),
            Some(ErrorCode::LengthMismatch)
        );
    }
}
