//! The HTTP face of the repository: routes, thin handlers, extractors.
//!
//! - [`extract`]: the caller (bearer token), ids from the path.
//! - [`upload`]: the ingest routes' requests as extractors — the chunk upload (path and headers
//!   checked before its body is read, which only happens when the chunk is needed), the
//!   find-missing digest list, index records.
//! - [`body`]: request bodies read under limits (and the JSON body extractors), streamed answers
//!   with `Range`.
//! - [`drain`]: an HTTP/2 request body left unread by an early answer is read to its end (and
//!   discarded) after the answer, so the stream ends cleanly (curl shows the error).
//! - [`handlers`]: one function per route; each parses, calls one [`Repository`] method on a
//!   blocking thread, and maps the result.
//! - [`range`]: single-range `Range` parsing for image downloads.
//!
//! - [`openapi`]: the OpenAPI document of `/v1/openapi.json`, generated from the schema types and
//!   one operation per route.
//! - [`console`]: the storage admin's web console at `/` (assets compiled in, strict headers).
//!
//! [`ROUTES`] is the list of (method, path) pairs the router serves; the OpenAPI document's
//! operations are checked against it by the tests.

pub mod body;
pub mod console;
pub mod drain;
pub mod extract;
pub mod handlers;
pub mod openapi;
pub mod range;
pub mod upload;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::Router;
use schema::ErrorCode;
use tokio::sync::Semaphore;

use crate::auth::Tokens;
use crate::config::Config;
use crate::error::Error;
use crate::repo::Repository;

/// Shared state of every handler.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The repository.
    pub repo: Arc<Repository>,
    /// Token table.
    pub tokens: Arc<Tokens>,
    /// Bounds chunk bytes in flight (permits are KiB).
    pub inflight: Arc<Semaphore>,
    /// Permits of `inflight` in all (one request never asks for more).
    pub inflight_total: u32,
    /// Limits from the configuration.
    pub limits: crate::config::Limits,
    /// Whether `/metrics` needs a token.
    pub metrics_need_token: bool,
    /// Per-tenant ingest pacing.
    pub ingest: Arc<crate::rate::IngestLimits>,
    /// Most bytes of an unread request body [`drain`] reads after an early answer: the largest
    /// body any route accepts, or one stream window if that is more (what a client may have in
    /// flight when it sees the answer).
    pub drain_limit: u64,
    /// The TLS certificate's fingerprint when the server serves TLS (`/v1/capabilities`).
    pub tls_fingerprint: Option<schema::fingerprint::Fingerprint>,
}

impl AppState {
    /// State for `repo` under `config`.
    pub fn new(repo: Arc<Repository>, tokens: Arc<Tokens>, config: &Config) -> AppState {
        let kib = (config.limits.max_inflight_chunk_bytes / 1024).clamp(1, u64::from(u32::MAX >> 3))
            as usize;
        AppState {
            repo,
            tokens,
            inflight: Arc::new(Semaphore::new(kib)),
            inflight_total: kib as u32,
            limits: config.limits.clone(),
            metrics_need_token: config.metrics_need_token,
            ingest: Arc::new(crate::rate::IngestLimits::new(
                config
                    .tenants
                    .iter()
                    .filter_map(|(t, c)| c.ingest_rate.map(|r| (t, r))),
            )),
            drain_limit: [
                config.limits.max_json_body,
                config.limits.max_entries_body,
                upload::zstd_body_limit(config.limits.max_chunk_bytes),
                config.http2.stream_window,
            ]
            .into_iter()
            .max()
            .unwrap_or(0),
            tls_fingerprint: None,
        }
    }

    /// The body idle timeout.
    pub fn idle(&self) -> Duration {
        self.limits.body_idle_timeout
    }
}

/// Every (method, path) the router serves, in OpenAPI path syntax.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/metrics"),
    ("get", "/v1/capabilities"),
    ("get", "/v1/openapi.json"),
    ("get", "/v1/whoami"),
    ("put", "/v1/sessions/{id}"),
    ("get", "/v1/sessions/{id}"),
    ("delete", "/v1/sessions/{id}"),
    ("post", "/v1/sessions/{id}/find-missing"),
    ("put", "/v1/sessions/{id}/chunks/{digest}"),
    ("put", "/v1/sessions/{id}/disks/{name}/entries"),
    ("post", "/v1/sessions/{id}/commit"),
    ("head", "/v1/chunks/{digest}"),
    ("get", "/v1/chunks/{digest}"),
    ("get", "/v1/sources"),
    ("get", "/v1/backups"),
    ("get", "/v1/backups/{id}"),
    ("delete", "/v1/backups/{id}"),
    ("get", "/v1/backups/{id}/disks/{name}/index"),
    ("get", "/v1/backups/{id}/disks/{name}/image"),
    ("post", "/v1/backups/{id}/disks/{name}/exports"),
    ("delete", "/v1/backups/{id}/disks/{name}/exports/{export}"),
    ("get", "/v1/backups/{id}/files"),
    ("get", "/v1/backups/{id}/files/content"),
    ("get", "/v1/search"),
    ("get", "/v1/stats"),
    ("post", "/v1/admin/gc"),
    ("post", "/v1/admin/verify"),
    ("post", "/v1/admin/prune"),
    ("get", "/v1/admin/jobs/{id}"),
    ("get", "/v1/admin/retention"),
    ("put", "/v1/admin/retention/{source}"),
    ("delete", "/v1/admin/retention/{source}"),
];

/// The router.
pub fn router(state: AppState) -> Router {
    use handlers as h;
    Router::new()
        .route("/healthz", get(h::healthz))
        .route("/metrics", get(h::metrics))
        .route("/v1/capabilities", get(h::capabilities))
        .route("/v1/openapi.json", get(h::openapi))
        .route("/v1/whoami", get(h::whoami))
        .route(
            "/v1/sessions/{id}",
            put(h::create_session)
                .get(h::get_session)
                .delete(h::delete_session),
        )
        .route("/v1/sessions/{id}/find-missing", post(h::find_missing))
        .route("/v1/sessions/{id}/chunks/{digest}", put(h::put_chunk))
        .route(
            "/v1/sessions/{id}/disks/{name}/entries",
            put(h::put_entries),
        )
        .route("/v1/sessions/{id}/commit", post(h::commit))
        .route("/v1/chunks/{digest}", get(h::get_chunk).head(h::head_chunk))
        .route("/v1/sources", get(h::sources))
        .route("/v1/backups", get(h::list_backups))
        .route(
            "/v1/backups/{id}",
            get(h::get_backup).delete(h::delete_backup),
        )
        .route("/v1/backups/{id}/disks/{name}/index", get(h::get_index))
        .route("/v1/backups/{id}/disks/{name}/image", get(h::get_image))
        .route(
            "/v1/backups/{id}/disks/{name}/exports",
            post(h::create_export),
        )
        .route(
            "/v1/backups/{id}/disks/{name}/exports/{export}",
            axum::routing::delete(h::delete_export),
        )
        .route("/v1/backups/{id}/files", get(h::list_files))
        .route("/v1/backups/{id}/files/content", get(h::file_content))
        .route("/v1/search", get(h::search))
        .route("/v1/stats", get(h::stats))
        .route("/v1/admin/gc", post(h::start_gc))
        .route("/v1/admin/verify", post(h::start_verify))
        .route("/v1/admin/prune", post(h::prune))
        .route("/v1/admin/jobs/{id}", get(h::get_job))
        .route("/v1/admin/retention", get(h::get_retention))
        .route(
            "/v1/admin/retention/{source}",
            put(h::put_retention).delete(h::delete_retention),
        )
        .merge(console::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Outermost, so every early answer is covered: 401/403 of the extractors, 404, 405.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            drain::drain_unread_body,
        ))
        .with_state(state)
}

async fn count_requests(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let method = req.method().as_str().to_owned();
    let resp = next.run(req).await;
    st.repo
        .metrics
        .request(&method, &route, resp.status().as_u16());
    resp
}

async fn not_found(req: Request) -> Error {
    Error::new(
        ErrorCode::NotFound,
        format!("no route {} {}", req.method(), req.uri().path()),
    )
}

async fn method_not_allowed(req: Request) -> Error {
    Error::new(
        ErrorCode::MethodNotAllowed,
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}
