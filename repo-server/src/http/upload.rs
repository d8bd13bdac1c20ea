//! The requests of the ingest routes, each an extractor that refuses from the path, query and
//! headers before it reads a byte of the body: a chunk upload ([`ChunkUpload`], whose body is
//! read only when the repository lacks the chunk), a find-missing digest list ([`DigestList`]),
//! a run of index records ([`Records`]).

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use bytes::Bytes;
use http::HeaderMap;
use schema::api::Digests;
use schema::{ChunkId, ErrorCode, SessionId};
use tokio::sync::SemaphorePermit;

use super::body::{self, parse_json, OCTET};
use super::extract::{content_type, header, RawPath};
use super::AppState;
use crate::error::{Error, Result};
use crate::repo::ingest::Encoding;

const ZSTD: &str = "application/zstd";
const SEALED: &str = schema::sealed::CONTENT_TYPE;

/// `PUT /v1/sessions/{id}/chunks/{digest}`, checked from its path and headers before any of its
/// body is read, in this order: the session id and the digest (400 `BAD_ID`/`BAD_DIGEST`; the
/// all-zero digest is a hole and never stored), `Content-Type` (415 unless `application/zstd`,
/// `application/octet-stream` or `application/vnd.backup.sealed`, which needs a valid
/// `Stored-Blake3`: 400), `Chunk-Length` (400 `MISSING_CHUNK_LENGTH` when absent, 400
/// when not a number, 413 over `limits.max_chunk_bytes`). The body stays unread until
/// [`ChunkUpload::receive`], so a chunk the repository holds is answered without it.
#[derive(Debug)]
pub struct ChunkUpload {
    /// The session it is uploaded into.
    pub session: SessionId,
    /// The digest in the path.
    pub id: ChunkId,
    /// How the body is encoded.
    pub encoding: Encoding,
    /// `Chunk-Length`: the block's uncompressed bytes.
    pub len: u64,
    headers: HeaderMap,
    body: Body,
}

impl FromRequest<AppState> for ChunkUpload {
    type Rejection = Error;

    async fn from_request(req: Request, st: &AppState) -> Result<ChunkUpload> {
        let (mut parts, body) = req.into_parts();
        let path = RawPath::from_request_parts(&mut parts, st).await?;
        let session = path.param(0)?;
        let id: ChunkId = path.param(1)?;
        if id.is_hole() {
            return Err(Error::new(
                ErrorCode::BadDigest,
                "the all-zero digest is a hole and is never stored",
            ));
        }
        let headers = parts.headers;
        let encoding = match content_type(&headers).as_deref() {
            Some(ZSTD) => Encoding::Zstd,
            Some(OCTET) => Encoding::Raw,
            Some(SEALED) => {
                let name = schema::sealed::STORED_DIGEST_HEADER;
                let v = header(&headers, name).ok_or_else(|| {
                    Error::new(
                        ErrorCode::BadRequest,
                        format!("a sealed chunk needs the {name} header (blake3 of the body, 64 lowercase hex digits)"),
                    )
                })?;
                let stored = schema::sealed::parse_digest(v).ok_or_else(|| {
                    Error::new(
                        ErrorCode::BadRequest,
                        format!("{name} {v:?} is not 64 lowercase hex digits"),
                    )
                })?;
                Encoding::Sealed { stored }
            }
            other => {
                return Err(Error::new(
                    ErrorCode::UnsupportedType,
                    format!(
                        "chunk bodies are {ZSTD}, {OCTET} or {SEALED}, not {}",
                        other.unwrap_or("(none)")
                    ),
                ))
            }
        };
        let len: u64 = match header(&headers, "chunk-length") {
            None => {
                return Err(Error::new(
                    ErrorCode::MissingChunkLength,
                    "Chunk-Length header (uncompressed bytes) is required",
                ))
            }
            Some(v) => v.trim().parse().map_err(|_| {
                Error::new(
                    ErrorCode::BadRequest,
                    format!("Chunk-Length {v:?} is not a number"),
                )
            })?,
        };
        let max = st.limits.max_chunk_bytes;
        if len > max {
            return Err(Error::new(
                ErrorCode::TooLarge,
                format!("Chunk-Length {len} is over the limit of {max} bytes"),
            ));
        }
        Ok(ChunkUpload {
            session,
            id,
            encoding,
            len,
            headers,
            body,
        })
    }
}

impl ChunkUpload {
    /// The most body bytes this upload may send: the block itself when raw, zstd's worst case
    /// when compressed.
    pub fn body_limit(&self) -> u64 {
        match self.encoding {
            Encoding::Raw => self.len,
            Encoding::Zstd => zstd_body_limit(self.len),
            Encoding::Sealed { .. } => schema::sealed::max_len(zstd_body_limit(self.len)),
        }
    }

    /// Receives the body: paces a rate-limited `tenant` first (before taking in-flight capacity
    /// others could use), then takes in-flight capacity for the body and the block (bounded
    /// memory), then reads the body under [`ChunkUpload::body_limit`] and the idle timeout.
    /// Keep the permit until the chunk is stored.
    ///
    /// # Errors
    /// 503 when the server is shutting down; the errors of [`body::read`].
    pub async fn receive<'a>(
        self,
        st: &'a AppState,
        tenant: &str,
    ) -> Result<(SemaphorePermit<'a>, Bytes)> {
        let limit = self.body_limit();
        let declared = header(&self.headers, "content-length")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(limit)
            .min(limit);
        let kib = ((declared + self.len) / 1024 + 1).min(u64::from(u32::MAX)) as u32;
        st.ingest.take(tenant, declared).await;
        let permit = st
            .inflight
            .acquire_many(kib.clamp(1, st.inflight_total))
            .await
            .map_err(|_| Error::new(ErrorCode::Unavailable, "server is shutting down"))?;
        let body = body::read(&self.headers, self.body, limit, st.idle()).await?;
        Ok((permit, body))
    }
}

/// The largest zstd body accepted for a chunk of `len` uncompressed bytes: zstd's worst case
/// plus room for frame headers.
pub fn zstd_body_limit(len: u64) -> u64 {
    zstd::zstd_safe::compress_bound(len as usize) as u64 + 1024
}

/// The body of `POST /v1/sessions/{id}/find-missing`: 32-byte raw digests
/// (`application/octet-stream`, the default) or `{"digests": [...]}` (`application/json`), at
/// most `limits.max_find_missing` of them (413 naming the limit; 415 for another type; 400 for a
/// raw body that is not whole digests).
#[derive(Debug)]
pub struct DigestList {
    /// The digests, in the order sent.
    pub ids: Vec<ChunkId>,
    /// Whether they came as JSON (and so the answer goes back as JSON).
    pub json: bool,
}

impl FromRequest<AppState> for DigestList {
    type Rejection = Error;

    async fn from_request(req: Request, st: &AppState) -> Result<DigestList> {
        let (parts, body) = req.into_parts();
        let max = st.limits.max_find_missing;
        let json = match content_type(&parts.headers).as_deref() {
            None | Some(OCTET) => false,
            Some("application/json") => true,
            Some(other) => {
                return Err(Error::new(
                    ErrorCode::UnsupportedType,
                    format!("find-missing takes {OCTET} or application/json, not {other}"),
                ))
            }
        };
        let limit = if json { max * 80 + 4096 } else { max * 32 };
        let body = body::read(&parts.headers, body, limit, st.idle())
            .await
            .map_err(|e| {
                if e.code == ErrorCode::TooLarge {
                    Error::new(
                        ErrorCode::TooLarge,
                        format!("at most {max} digests per find-missing request"),
                    )
                } else {
                    e
                }
            })?;
        let ids = if json {
            parse_json::<Digests>(&body)?.digests
        } else {
            if !body.len().is_multiple_of(32) {
                return Err(Error::new(
                    ErrorCode::BadBody,
                    format!("body of {} bytes is not whole 32-byte digests", body.len()),
                ));
            }
            body.chunks_exact(32)
                .filter_map(ChunkId::from_slice)
                .collect()
        };
        Ok(DigestList { ids, json })
    }
}

/// The request of `PUT /v1/sessions/{id}/disks/{name}/entries?start=N`: `start` (400 when
/// absent or not a number), then the body of 40-byte records (`application/octet-stream`, the
/// default; 415 for another type) under `limits.max_entries_body`.
#[derive(Debug)]
pub struct Records {
    /// The records the client believes the server holds.
    pub start: u64,
    /// The records, as sent (the repository checks they are whole).
    pub bytes: Bytes,
}

impl FromRequest<AppState> for Records {
    type Rejection = Error;

    async fn from_request(req: Request, st: &AppState) -> Result<Records> {
        let (mut parts, body) = req.into_parts();
        let Query(q) = Query::<HashMap<String, String>>::from_request_parts(&mut parts, st)
            .await
            .map_err(|e| {
                Error::new(
                    ErrorCode::BadRequest,
                    format!("bad query: {}", e.body_text()),
                )
            })?;
        let start: u64 = q
            .get("start")
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::BadRequest,
                    "query parameter start (records the server holds) is required",
                )
            })?
            .parse()
            .map_err(|_| {
                Error::new(
                    ErrorCode::BadRequest,
                    "start must be a non-negative integer",
                )
            })?;
        match content_type(&parts.headers).as_deref() {
            None | Some(OCTET) => {}
            Some(other) => {
                return Err(Error::new(
                    ErrorCode::UnsupportedType,
                    format!("records are {OCTET}, not {other}"),
                ))
            }
        }
        let bytes = body::read(&parts.headers, body, st.limits.max_entries_body, st.idle()).await?;
        Ok(Records { start, bytes })
    }
}
