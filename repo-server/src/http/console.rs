//! The storage admin's web console: static HTML, CSS and plain JavaScript modules compiled into
//! the binary (`repo-server/console/`), served at `/` and `/console/{file}`. The console uses
//! only the public HTTP API, with the token the user signs in with kept in `sessionStorage` and
//! sent as a bearer header (no cookies, so no CSRF surface).
//!
//! Every console answer carries strict headers: a Content-Security-Policy that allows scripts,
//! styles and connections to this origin only (no inline script, no `eval`), no framing
//! (`frame-ancestors 'none'` and `X-Frame-Options: DENY`), `nosniff` and no referrer.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::AppState;
use crate::error::Error;
use schema::ErrorCode;

/// The Content-Security-Policy of every console answer.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The assets: name under `/console/`, media type, bytes.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "console.css",
        "text/css; charset=utf-8",
        include_str!("../../console/console.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../console/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_str!("../../console/api.js"),
    ),
    (
        "views.js",
        "text/javascript; charset=utf-8",
        include_str!("../../console/views.js"),
    ),
    (
        "chart.js",
        "text/javascript; charset=utf-8",
        include_str!("../../console/chart.js"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("../../console/favicon.svg"),
    ),
];

const INDEX: &str = include_str!("../../console/index.html");

/// The console's routes (merged into the API router; not part of the API document).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/console/{file}", get(asset))
}

/// The strict headers every console answer carries.
pub fn secure(mut r: Response, media: &'static str, cache: &'static str) -> Response {
    let h = r.headers_mut();
    for (name, value) in [
        ("content-type", media),
        ("content-security-policy", CSP),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
        (
            "permissions-policy",
            "camera=(), microphone=(), geolocation=()",
        ),
        ("cache-control", cache),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    r
}

async fn index() -> Response {
    secure(
        (StatusCode::OK, INDEX).into_response(),
        "text/html; charset=utf-8",
        "no-cache",
    )
}

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, media, body)) => {
            secure((StatusCode::OK, *body).into_response(), media, "no-cache")
        }
        None => {
            let e = Error::new(ErrorCode::NotFound, format!("no console asset {file:?}"));
            secure(e.into_response(), "application/json", "no-store")
        }
    }
}
