//! One thin function per route: parse, call the repository on a blocking thread, answer.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use schema::api::{Capabilities, CommitRequest, CreateSession, Digests, JobStarted};
use schema::{BackupId, ChunkId, DiskName, ErrorCode, SessionId, API_VERSION, BLOCK_SIZES};
use serde_json::json;

use super::extract::{blocking, content_type, header as hdr, parse_id, read_body, RawPath};
use super::{range, AppState};
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::repo::ingest::{Encoding, Stored};
use crate::repo::read::{Cursor, ListQuery};

const OCTET: &str = "application/octet-stream";
const ZSTD: &str = "application/zstd";
const OPENAPI: &str = include_str!("../../openapi.json");

fn with_header(mut r: Response, name: &'static str, value: impl ToString) -> Response {
    if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
        r.headers_mut().insert(name, v);
    }
    r
}

/// A JSON response, newline-terminated so it reads well in a terminal.
pub(crate) fn json_body(value: &impl serde::Serialize, status: StatusCode) -> Response {
    crate::error::json_response(value, status)
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body)
        .map_err(|e| Error::new(ErrorCode::InvalidBody, format!("invalid JSON body: {e}")))
}

pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

pub(super) async fn metrics(State(st): State<AppState>, headers: HeaderMap) -> Result<Response> {
    if st.metrics_need_token {
        st.tokens.authenticate(hdr(&headers, "authorization"))?;
    }
    let r = st.repo.metrics.render().into_response();
    Ok(with_header(r, "content-type", "text/plain; version=0.0.4"))
}

pub(super) async fn capabilities(State(st): State<AppState>) -> Response {
    let caps = Capabilities {
        api: API_VERSION,
        digest: "blake3".into(),
        compression: vec!["zstd".into(), "none".into()],
        block_sizes: BLOCK_SIZES.to_vec(),
        max_chunk_bytes: st.limits.max_chunk_bytes,
        max_find_missing: st.limits.max_find_missing,
        session_idle_ttl_s: st.limits.session_idle_ttl.as_secs(),
        store: st.repo.chunks.kind().into(),
    };
    json_body(&caps, StatusCode::OK)
}

pub(super) async fn openapi() -> Response {
    with_header(OPENAPI.into_response(), "content-type", "application/json")
}

/// Path parameter `i` parsed as an id (400 `BAD_ID`/`BAD_DIGEST` when malformed).
fn param<T: std::str::FromStr<Err = schema::IdError>>(p: &RawPath, i: usize) -> Result<T> {
    parse_id(p.0.get(i).map(String::as_str).unwrap_or(""))
}

fn session_id(p: &RawPath) -> Result<SessionId> {
    param(p, 0)
}

pub(super) async fn create_session(
    State(st): State<AppState>,
    caller: Caller,
    path: RawPath,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let s = session_id(&path)?;
    let body = read_body(&headers, body, st.limits.max_json_body, st.idle()).await?;
    let params: CreateSession = parse_json(&body)?;
    let repo = st.repo.clone();
    let c2 = caller.clone();
    let created = blocking(move || repo.create_session(&c2, s, params)).await?;
    let repo = st.repo.clone();
    let status = blocking(move || repo.session_status(&caller, &s)).await?;
    let code = if created.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(with_header(
        json_body(&status, code),
        "session-expires",
        schema::time::rfc3339(created.expires_ms),
    ))
}

pub(super) async fn get_session(
    State(st): State<AppState>,
    caller: Caller,
    path: RawPath,
) -> Result<Response> {
    let s = session_id(&path)?;
    let repo = st.repo.clone();
    let status = blocking(move || repo.session_status(&caller, &s)).await?;
    Ok(json_body(&status, StatusCode::OK))
}

pub(super) async fn delete_session(
    State(st): State<AppState>,
    caller: Caller,
    path: RawPath,
) -> Result<StatusCode> {
    let s = session_id(&path)?;
    let repo = st.repo.clone();
    blocking(move || repo.delete_session(&caller, &s)).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn find_missing(
    State(st): State<AppState>,
    caller: Caller,
    path: RawPath,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let s = session_id(&path)?;
    let max = st.limits.max_find_missing;
    let json = match content_type(&headers).as_deref() {
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
    let body = read_body(&headers, body, limit, st.idle())
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
    let ids: Vec<ChunkId> = if json {
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
    let repo = st.repo.clone();
    let missing = blocking(move || repo.find_missing(&caller, &s, ids)).await?;
    if json {
        return Ok(json_body(&Digests { digests: missing }, StatusCode::OK));
    }
    let mut out = Vec::with_capacity(missing.len() * 32);
    for c in &missing {
        out.extend_from_slice(&c.0);
    }
    Ok(with_header(out.into_response(), "content-type", OCTET))
}

pub(super) async fn put_chunk(
    State(st): State<AppState>,
    caller: Caller,
    path: RawPath,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let s = session_id(&path)?;
    let id: ChunkId = param(&path, 1)?;
    if id.is_hole() {
        return Err(Error::new(
            ErrorCode::BadDigest,
            "the all-zero digest is a hole and is never stored",
        ));
    }
    let enc = match content_type(&headers).as_deref() {
        Some(ZSTD) => Encoding::Zstd,
        Some(OCTET) => Encoding::Raw,
        other => {
            return Err(Error::new(
                ErrorCode::UnsupportedType,
                format!(
                    "chunk bodies are {ZSTD} or {OCTET}, not {}",
                    other.unwrap_or("(none)")
                ),
            ))
        }
    };
    let len: u64 = match hdr(&headers, "chunk-length") {
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
    // A chunk the tenant already has is pinned without reading the body.
    let (repo, c2) = (st.repo.clone(), caller.clone());
    if blocking(move || repo.pin_if_present(&c2, &s, &id)).await? {
        return Ok(StatusCode::OK.into_response());
    }
    let limit = match enc {
        Encoding::Raw => len,
        Encoding::Zstd => zstd_body_limit(len),
    };
    let declared = hdr(&headers, "content-length")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(limit)
        .min(limit);
    let kib = ((declared + len) / 1024 + 1).min(u64::from(u32::MAX)) as u32;
    // Pace a rate-limited tenant before taking in-flight capacity others could use.
    st.ingest.take(&caller.tenant, declared).await;
    let _permit = st
        .inflight
        .acquire_many(kib.clamp(1, st.inflight_total))
        .await
        .map_err(|_| Error::new(ErrorCode::Unavailable, "server is shutting down"))?;
    let body = read_body(&headers, body, limit, st.idle()).await?;
    let repo = st.repo.clone();
    let stored = blocking(move || repo.put_chunk(&caller, &s, &id, enc, len, &body)).await?;
    Ok(match stored {
        Stored::Created => StatusCode::CREATED,
        Stored::Present => StatusCode::OK,
    }
    .into_response())
}

/// The largest zstd body accepted for a chunk of `len` uncompressed bytes: zstd's worst case
/// plus room for frame headers.
pub(super) fn zstd_body_limit(len: u64) -> u64 {
    zstd::zstd_safe::compress_bound(len as usize) as u64 + 1024
}

pub(super) async fn put_entries(
    State(st): State<AppState>,
    caller: Caller,
    path: RawPath,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let s = session_id(&path)?;
    let disk: DiskName = param(&path, 1)?;
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
    match content_type(&headers).as_deref() {
        None | Some(OCTET) => {}
        Some(other) => {
            return Err(Error::new(
                ErrorCode::UnsupportedType,
                format!("records are {OCTET}, not {other}"),
            ))
        }
    }
    let body = read_body(&headers, body, st.limits.max_entries_body, st.idle()).await?;
    let repo = st.repo.clone();
    let total = blocking(move || repo.append_entries(&caller, &s, &disk, start, &body)).await?;
    Ok(with_header(
        StatusCode::NO_CONTENT.into_response(),
        "index-entries",
        total,
    ))
}

pub(super) async fn commit(
    State(st): State<AppState>,
    caller: Caller,
    path: RawPath,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let s = session_id(&path)?;
    let body = read_body(&headers, body, st.limits.max_json_body, st.idle()).await?;
    let req: CommitRequest = parse_json(&body)?;
    let repo = st.repo.clone();
    let done = blocking(move || repo.commit(&caller, &s, req)).await?;
    let code = if done.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let r = json_body(&json!({ "backup_id": done.backup_id }), code);
    Ok(with_header(
        r,
        "location",
        format!("/v1/backups/{}", done.backup_id),
    ))
}

pub(super) async fn head_chunk(
    State(st): State<AppState>,
    caller: Caller,
    path: RawPath,
) -> Result<Response> {
    let id: ChunkId = param(&path, 0)?;
    let repo = st.repo.clone();
    let m = blocking(move || repo.chunk_meta(&caller, &id)).await?;
    let mut r = StatusCode::OK.into_response();
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(m.stored_len));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ZSTD));
    Ok(with_header(r, "chunk-length", m.raw_len))
}

pub(super) async fn get_chunk(
    State(st): State<AppState>,
    caller: Caller,
    path: RawPath,
    headers: HeaderMap,
) -> Result<Response> {
    let id: ChunkId = param(&path, 0)?;
    let raw = hdr(&headers, "accept").is_some_and(|a| a.contains(OCTET) && !a.contains(ZSTD));
    let repo = st.repo.clone();
    let (bytes, raw_len) = blocking(move || {
        let m = repo.chunk_meta(&caller, &id)?;
        let b = if raw {
            repo.read_chunk(&id, m.raw_len)?
        } else {
            repo.chunk_frame(&caller, &id)?
        };
        Ok((b, m.raw_len))
    })
    .await?;
    let r = with_header(
        bytes.into_response(),
        "content-type",
        if raw { OCTET } else { ZSTD },
    );
    Ok(with_header(r, "chunk-length", raw_len))
}

pub(super) async fn sources(State(st): State<AppState>, caller: Caller) -> Result<Response> {
    let repo = st.repo.clone();
    let list = blocking(move || repo.sources(&caller)).await?;
    Ok(json_body(&list, StatusCode::OK))
}

fn time_param(q: &HashMap<String, String>, name: &str) -> Result<Option<i64>> {
    match q.get(name).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => schema::time::parse_rfc3339(v).map(Some).ok_or_else(|| {
            Error::new(
                ErrorCode::BadRequest,
                format!("{name}={v:?} is not an RFC 3339 time such as 2026-11-25T00:00:00Z"),
            )
        }),
    }
}

pub(super) async fn list_backups(
    State(st): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response> {
    let limit = match q.get("limit") {
        None => 100,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => {
                return Err(Error::new(
                    ErrorCode::BadRequest,
                    "limit must be between 1 and 1000",
                ))
            }
        },
    };
    let query = ListQuery {
        source: q.get("source").filter(|v| !v.is_empty()).cloned(),
        since_ms: time_param(&q, "since")?,
        until_ms: time_param(&q, "until")?,
        limit,
        cursor: q
            .get("cursor")
            .filter(|v| !v.is_empty())
            .map(|c| Cursor::decode(c))
            .transpose()?,
    };
    let repo = st.repo.clone();
    let list = blocking(move || repo.list_backups(&caller, &query)).await?;
    let mut link = None;
    if let Some(next) = &list.next {
        let mut url = format!("/v1/backups?limit={limit}&cursor={next}");
        for k in ["source", "since", "until"] {
            if let Some(v) = q.get(k).filter(|v| !v.is_empty()) {
                url.push_str(&format!("&{k}={}", schema::query::encode(v)));
            }
        }
        link = Some(format!("<{url}>; rel=\"next\""));
    }
    let r = json_body(&list, StatusCode::OK);
    Ok(match link {
        Some(l) => with_header(r, "link", l),
        None => r,
    })
}

pub(super) async fn get_backup(
    State(st): State<AppState>,
    caller: Caller,
    path: RawPath,
) -> Result<Response> {
    let id: BackupId = param(&path, 0)?;
    let repo = st.repo.clone();
    let m = blocking(move || repo.manifest(&caller, &id)).await?;
    Ok(json_body(&m, StatusCode::OK))
}

pub(super) async fn delete_backup(
    State(st): State<AppState>,
    caller: Caller,
    path: RawPath,
) -> Result<StatusCode> {
    let id: BackupId = param(&path, 0)?;
    let repo = st.repo.clone();
    blocking(move || repo.delete_backup(&caller, &id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn get_index(
    State(st): State<AppState>,
    caller: Caller,
    path: RawPath,
) -> Result<Response> {
    let id: BackupId = param(&path, 0)?;
    let disk: DiskName = param(&path, 1)?;
    let repo = st.repo.clone();
    let img = blocking(move || repo.disk_image(&caller, &id, &disk)).await?;
    let mut blob = Vec::with_capacity(img.index.len() * 32);
    for c in &img.index {
        blob.extend_from_slice(&c.0);
    }
    Ok(with_header(blob.into_response(), "content-type", OCTET))
}

pub(super) async fn get_image(
    State(st): State<AppState>,
    caller: Caller,
    path: RawPath,
    headers: HeaderMap,
) -> Result<Response> {
    let id: BackupId = param(&path, 0)?;
    let disk: DiskName = param(&path, 1)?;
    let repo = st.repo.clone();
    let img = blocking(move || repo.disk_image(&caller, &id, &disk)).await?;
    let size = img.disk.size;
    let range = range::resolve(hdr(&headers, "range"), size)?;
    let (first, last) = range.unwrap_or((0, size.saturating_sub(1)));
    let len = if size == 0 { 0 } else { last - first + 1 };
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    let repo = st.repo.clone();
    if len > 0 {
        tokio::task::spawn_blocking(move || {
            let bs = u64::from(img.disk.block_size);
            for b in first / bs..=last / bs {
                let start = b * bs;
                let piece = match repo.read_block(&img, b) {
                    Ok(data) => {
                        let a = first.saturating_sub(start) as usize;
                        let z = ((last + 1).min(start + data.len() as u64) - start) as usize;
                        Ok(Bytes::from(data).slice(a..z))
                    }
                    Err(e) => {
                        tracing::error!(block = b, error = %e, "image stream broken off");
                        Err(std::io::Error::other(e.to_string()))
                    }
                };
                let failed = piece.is_err();
                if tx.blocking_send(piece).is_err() || failed {
                    return;
                }
            }
        });
    }
    Ok(byte_stream(rx, len, range.map(|_| (first, last, size))))
}

pub(super) async fn stats(State(st): State<AppState>, caller: Caller) -> Result<Response> {
    let repo = st.repo.clone();
    let s = blocking(move || repo.stats(&caller)).await?;
    Ok(json_body(&s, StatusCode::OK))
}

pub(super) async fn start_gc(State(st): State<AppState>, caller: Caller) -> Result<Response> {
    let job = st.repo.start_gc(&caller)?;
    Ok(json_body(&JobStarted { job }, StatusCode::ACCEPTED))
}

pub(super) async fn start_verify(
    State(st): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let body = read_body(&headers, body, st.limits.max_json_body, st.idle()).await?;
    let req: schema::api::VerifyRequest = if body.iter().all(u8::is_ascii_whitespace) {
        schema::api::VerifyRequest::default()
    } else {
        parse_json(&body)?
    };
    let job = st.repo.start_verify(&caller, req)?;
    Ok(json_body(&JobStarted { job }, StatusCode::ACCEPTED))
}

pub(super) async fn get_job(
    State(st): State<AppState>,
    caller: Caller,
    path: RawPath,
) -> Result<Response> {
    let id = path.0.first().cloned().unwrap_or_default();
    let repo = st.repo.clone();
    let j = blocking(move || repo.job(&caller, &id)).await?;
    Ok(json_body(&j, StatusCode::OK))
}

/// `POST /v1/admin/prune` body: `dry_run` is required, so an empty request deletes nothing.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PruneRequest {
    dry_run: bool,
    #[serde(default)]
    source: Option<String>,
}

pub(super) async fn prune(
    State(st): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let body = read_body(&headers, body, st.limits.max_json_body, st.idle()).await?;
    let req: PruneRequest = parse_json(&body)?;
    let repo = st.repo.clone();
    let report = blocking(move || repo.prune(&caller, req.dry_run, req.source.as_deref())).await?;
    Ok(json_body(&report, StatusCode::OK))
}

pub(super) async fn get_retention(State(st): State<AppState>, caller: Caller) -> Result<Response> {
    let repo = st.repo.clone();
    let r = blocking(move || repo.retention(&caller)).await?;
    Ok(json_body(&r, StatusCode::OK))
}

pub(super) async fn put_retention(
    State(st): State<AppState>,
    caller: Caller,
    path: RawPath,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let source = path.0.first().cloned().unwrap_or_default();
    let body = read_body(&headers, body, st.limits.max_json_body, st.idle()).await?;
    let policy: schema::retention::Policy = parse_json(&body)?;
    let repo = st.repo.clone();
    let r = blocking(move || repo.set_policy(&caller, &source, &policy)).await?;
    Ok(json_body(&r, StatusCode::OK))
}

pub(super) async fn delete_retention(
    State(st): State<AppState>,
    caller: Caller,
    path: RawPath,
) -> Result<Response> {
    let source = path.0.first().cloned().unwrap_or_default();
    let repo = st.repo.clone();
    blocking(move || repo.delete_policy(&caller, &source)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Typed query parameters; unknown or malformed ones are 400 with serde's reason.
fn query<T: serde::de::DeserializeOwned>(uri: &http::Uri) -> Result<T> {
    Query::<T>::try_from_uri(uri).map(|q| q.0).map_err(|e| {
        Error::new(
            ErrorCode::BadRequest,
            format!("bad query: {}", e.body_text()),
        )
    })
}

pub(super) async fn list_files(
    State(st): State<AppState>,
    caller: Caller,
    path: RawPath,
    uri: http::Uri,
) -> Result<Response> {
    let id: BackupId = param(&path, 0)?;
    let q: crate::repo::files::FilesQuery = query(&uri)?;
    let repo = st.repo.clone();
    let v = blocking(move || repo.list_files(&caller, &id, &q)).await?;
    Ok(json_body(&v, StatusCode::OK))
}

pub(super) async fn file_content(
    State(st): State<AppState>,
    caller: Caller,
    path: RawPath,
    uri: http::Uri,
    headers: HeaderMap,
) -> Result<Response> {
    let id: BackupId = param(&path, 0)?;
    let q: crate::repo::files::FilesQuery = query(&uri)?;
    let repo = st.repo.clone();
    let (entry, img) = blocking(move || repo.file_content(&caller, &id, &q)).await?;
    let size = entry.size;
    let range = range::resolve(hdr(&headers, "range"), size)?;
    let (first, last) = range.unwrap_or((0, size.saturating_sub(1)));
    let len = if size == 0 { 0 } else { last - first + 1 };
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    let repo = st.repo.clone();
    if len > 0 {
        tokio::task::spawn_blocking(move || {
            const PIECE: u64 = 1 << 20;
            let mut at = first;
            while at <= last {
                let end = (at + PIECE - 1).min(last);
                let piece = repo
                    .read_file_range(&img, &entry, at, end)
                    .map(Bytes::from)
                    .map_err(|e| {
                        tracing::error!(path = %entry.path, error = %e, "file stream broken off");
                        std::io::Error::other(e.to_string())
                    });
                let failed = piece.is_err();
                if tx.blocking_send(piece).is_err() || failed {
                    return;
                }
                at = end + 1;
            }
        });
    }
    Ok(byte_stream(rx, len, range.map(|_| (first, last, size))))
}

pub(super) async fn search(
    State(st): State<AppState>,
    caller: Caller,
    uri: http::Uri,
) -> Result<Response> {
    let q: crate::repo::files::SearchQuery = query(&uri)?;
    let repo = st.repo.clone();
    let v = blocking(move || repo.search(&caller, &q)).await?;
    Ok(json_body(&v, StatusCode::OK))
}

/// A streamed `application/octet-stream` answer of `len` bytes fed by `rx`; with `partial`
/// (first, last, size) it is a 206 with `Content-Range`.
fn byte_stream(
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    len: u64,
    partial: Option<(u64, u64, u64)>,
) -> Response {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut r = Response::new(Body::from_stream(stream));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(OCTET));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some((first, last, size)) = partial {
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {first}-{last}/{size}")) {
            r.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    r
}
