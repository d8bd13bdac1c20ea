//! One thin function per route: extract (caller, ids, body), call the repository on a blocking
//! thread, answer. Checks that refuse from the path and headers live in the extractors
//! ([`super::extract`]), bodies are read and streamed by [`super::body`].

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use schema::api::{
    Capabilities, CommitRequest, CommitResponse, CreateSession, Digests, JobStarted, PruneRequest,
};
use schema::{BackupId, ChunkId, DiskName, ErrorCode, SessionId, API_VERSION, BLOCK_SIZES};

use super::body::{self, JsonBody, OptionalJson, OCTET};
use super::extract::{blocking, header as hdr, Id, Ids, RawPath};
use super::upload::{ChunkUpload, DigestList, Records};
use super::AppState;
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::repo::ingest::Stored;
use crate::repo::read::{Cursor, ListQuery};

const ZSTD: &str = "application/zstd";
const SEALED: &str = schema::sealed::CONTENT_TYPE;

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
        tls_fingerprint: st.tls_fingerprint,
    };
    json_body(&caps, StatusCode::OK)
}

pub(super) async fn whoami(caller: Caller) -> Response {
    use crate::config::Role;
    let role = match caller.role {
        Role::Backup => schema::api::TokenRole::Backup,
        Role::Reader => schema::api::TokenRole::Reader,
        Role::Admin => schema::api::TokenRole::Admin,
    };
    let me = schema::api::Identity {
        tenant: caller.tenant,
        role,
    };
    json_body(&me, StatusCode::OK)
}

pub(super) async fn openapi() -> Response {
    with_header(
        super::openapi::text().into_response(),
        "content-type",
        "application/json",
    )
}

pub(super) async fn create_session(
    State(st): State<AppState>,
    caller: Caller,
    Id(s): Id<SessionId>,
    JsonBody(params): JsonBody<CreateSession>,
) -> Result<Response> {
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
    Id(s): Id<SessionId>,
) -> Result<Response> {
    let repo = st.repo.clone();
    let status = blocking(move || repo.session_status(&caller, &s)).await?;
    Ok(json_body(&status, StatusCode::OK))
}

pub(super) async fn delete_session(
    State(st): State<AppState>,
    caller: Caller,
    Id(s): Id<SessionId>,
) -> Result<StatusCode> {
    let repo = st.repo.clone();
    blocking(move || repo.delete_session(&caller, &s)).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn find_missing(
    State(st): State<AppState>,
    caller: Caller,
    Id(s): Id<SessionId>,
    list: DigestList,
) -> Result<Response> {
    let repo = st.repo.clone();
    let missing = blocking(move || repo.find_missing(&caller, &s, list.ids)).await?;
    if list.json {
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
    up: ChunkUpload,
) -> Result<Response> {
    let (s, id, enc, len) = (up.session, up.id, up.encoding, up.len);
    // A chunk the tenant already has is pinned without reading the body.
    let (repo, c2) = (st.repo.clone(), caller.clone());
    if blocking(move || repo.pin_if_present(&c2, &s, &id)).await? {
        return Ok(StatusCode::OK.into_response());
    }
    let (_permit, body) = up.receive(&st, &caller.tenant).await?;
    let repo = st.repo.clone();
    let stored = blocking(move || repo.put_chunk(&caller, &s, &id, enc, len, &body)).await?;
    Ok(match stored {
        Stored::Created => StatusCode::CREATED,
        Stored::Present => StatusCode::OK,
    }
    .into_response())
}

pub(super) async fn put_entries(
    State(st): State<AppState>,
    caller: Caller,
    Ids(s, disk): Ids<SessionId, DiskName>,
    r: Records,
) -> Result<Response> {
    let repo = st.repo.clone();
    let total =
        blocking(move || repo.append_entries(&caller, &s, &disk, r.start, &r.bytes)).await?;
    Ok(with_header(
        StatusCode::NO_CONTENT.into_response(),
        "index-entries",
        total,
    ))
}

pub(super) async fn commit(
    State(st): State<AppState>,
    caller: Caller,
    Id(s): Id<SessionId>,
    JsonBody(req): JsonBody<CommitRequest>,
) -> Result<Response> {
    let repo = st.repo.clone();
    let done = blocking(move || repo.commit(&caller, &s, req)).await?;
    let code = if done.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let r = json_body(
        &CommitResponse {
            backup_id: done.backup_id.clone(),
        },
        code,
    );
    Ok(with_header(
        r,
        "location",
        format!("/v1/backups/{}", done.backup_id),
    ))
}

pub(super) async fn head_chunk(
    State(st): State<AppState>,
    caller: Caller,
    Id(id): Id<ChunkId>,
) -> Result<Response> {
    let repo = st.repo.clone();
    let m = blocking(move || repo.chunk_meta(&caller, &id)).await?;
    let mut r = StatusCode::OK.into_response();
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(m.stored_len));
    let kind = if m.sealed.is_some() { SEALED } else { ZSTD };
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    Ok(with_header(r, "chunk-length", m.raw_len))
}

pub(super) async fn get_chunk(
    State(st): State<AppState>,
    caller: Caller,
    Id(id): Id<ChunkId>,
    headers: HeaderMap,
) -> Result<Response> {
    let raw = hdr(&headers, "accept").is_some_and(|a| a.contains(OCTET) && !a.contains(ZSTD));
    let repo = st.repo.clone();
    let (bytes, raw_len, sealed) = blocking(move || {
        let m = repo.chunk_meta(&caller, &id)?;
        let b = if raw {
            repo.read_chunk(&id, m.raw_len)?
        } else {
            repo.chunk_frame(&caller, &id)?
        };
        Ok((b, m.raw_len, m.sealed.is_some()))
    })
    .await?;
    let kind = match (raw, sealed) {
        (true, _) => OCTET,
        (false, true) => SEALED,
        (false, false) => ZSTD,
    };
    let r = with_header(bytes.into_response(), "content-type", kind);
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
    Id(id): Id<BackupId>,
) -> Result<Response> {
    let repo = st.repo.clone();
    let m = blocking(move || repo.manifest(&caller, &id)).await?;
    Ok(json_body(&m, StatusCode::OK))
}

pub(super) async fn delete_backup(
    State(st): State<AppState>,
    caller: Caller,
    Id(id): Id<BackupId>,
) -> Result<StatusCode> {
    let repo = st.repo.clone();
    blocking(move || repo.delete_backup(&caller, &id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn get_index(
    State(st): State<AppState>,
    caller: Caller,
    Ids(id, disk): Ids<BackupId, DiskName>,
) -> Result<Response> {
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
    Ids(id, disk): Ids<BackupId, DiskName>,
    headers: HeaderMap,
) -> Result<Response> {
    let repo = st.repo.clone();
    let img = blocking(move || repo.plain_image(&caller, &id, &disk)).await?;
    let repo = st.repo.clone();
    body::ranged(&headers, img.disk.size, move |first, last, send| {
        let bs = u64::from(img.disk.block_size);
        for b in first / bs..=last / bs {
            let start = b * bs;
            let piece = repo.read_block(&img, b).map(|data| {
                let a = first.saturating_sub(start) as usize;
                let z = ((last + 1).min(start + data.len() as u64) - start) as usize;
                Bytes::from(data).slice(a..z)
            });
            if let Err(e) = &piece {
                tracing::error!(block = b, error = %e, "image stream broken off");
            }
            if !send(piece) {
                return;
            }
        }
    })
}

pub(super) async fn create_export(
    State(st): State<AppState>,
    caller: Caller,
    Ids(id, disk): Ids<BackupId, DiskName>,
    OptionalJson(req): OptionalJson<schema::api::CreateExport>,
) -> Result<Response> {
    let ttl = req.unwrap_or_default().ttl_s;
    let repo = st.repo.clone();
    let info = blocking(move || repo.create_export(&caller, &id, &disk, ttl)).await?;
    Ok(json_body(&info, StatusCode::CREATED))
}

pub(super) async fn delete_export(
    State(st): State<AppState>,
    caller: Caller,
    path: RawPath,
) -> Result<StatusCode> {
    let (id, disk): (BackupId, DiskName) = (path.param(0)?, path.param(1)?);
    let name = path.0.get(2).cloned().unwrap_or_default();
    let repo = st.repo.clone();
    blocking(move || repo.delete_export(&caller, &id, &disk, &name)).await?;
    Ok(StatusCode::NO_CONTENT)
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
    OptionalJson(req): OptionalJson<schema::api::VerifyRequest>,
) -> Result<Response> {
    let job = st.repo.start_verify(&caller, req.unwrap_or_default())?;
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

pub(super) async fn prune(
    State(st): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<PruneRequest>,
) -> Result<Response> {
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
    JsonBody(policy): JsonBody<schema::retention::Policy>,
) -> Result<Response> {
    let source = path.0.first().cloned().unwrap_or_default();
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
    Id(id): Id<BackupId>,
    uri: http::Uri,
) -> Result<Response> {
    let q: crate::repo::files::FilesQuery = query(&uri)?;
    let repo = st.repo.clone();
    let v = blocking(move || repo.list_files(&caller, &id, &q)).await?;
    Ok(json_body(&v, StatusCode::OK))
}

pub(super) async fn file_content(
    State(st): State<AppState>,
    caller: Caller,
    Id(id): Id<BackupId>,
    uri: http::Uri,
    headers: HeaderMap,
) -> Result<Response> {
    let q: crate::repo::files::FilesQuery = query(&uri)?;
    let repo = st.repo.clone();
    let (entry, img) = blocking(move || repo.file_content(&caller, &id, &q)).await?;
    let repo = st.repo.clone();
    body::ranged(&headers, entry.size, move |first, last, send| {
        const PIECE: u64 = 1 << 20;
        let mut at = first;
        while at <= last {
            let end = (at + PIECE - 1).min(last);
            let piece = repo.read_file_range(&img, &entry, at, end).map(Bytes::from);
            if let Err(e) = &piece {
                tracing::error!(path = %entry.path, error = %e, "file stream broken off");
            }
            if !send(piece) {
                return;
            }
            at = end + 1;
        }
    })
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
