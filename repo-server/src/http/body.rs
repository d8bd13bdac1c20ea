//! Bodies: the one reader of request bodies ([`read`]: under a byte limit and an idle timeout),
//! the JSON body extractors built on it ([`JsonBody`], [`OptionalJson`]), and the one streamed
//! answer ([`ranged`]: `Range`-aware, fed from a blocking thread).

use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue, StatusCode};
use http_body_util::BodyExt;
use schema::ErrorCode;

use super::extract::header as hdr;
use super::{range, AppState};
use crate::error::{Error, Result};

/// The media type of streamed answers.
pub const OCTET: &str = "application/octet-stream";

/// Reads a whole body, refusing with 413 before reading when `Content-Length` is over `limit`,
/// and with 408 when no data arrives for `idle`.
///
/// # Errors
/// 413 `TOO_LARGE`, 408 `BODY_TIMEOUT`, 400 when the body breaks off.
pub async fn read(headers: &HeaderMap, body: Body, limit: u64, idle: Duration) -> Result<Bytes> {
    let declared = hdr(headers, "content-length").and_then(|v| v.parse::<u64>().ok());
    let too_large = |n: u64| {
        Error::new(
            ErrorCode::TooLarge,
            format!("body of {n} bytes is over this route's limit of {limit} bytes"),
        )
    };
    if let Some(n) = declared.filter(|&n| n > limit) {
        return Err(too_large(n));
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0).min(limit) as usize);
    let mut body = body;
    loop {
        let frame = tokio::time::timeout(idle, body.frame())
            .await
            .map_err(|_| {
                Error::new(
                    ErrorCode::BodyTimeout,
                    format!("request body sent nothing for {}s", idle.as_secs()),
                )
            })?;
        match frame {
            None => break,
            Some(Err(e)) => {
                return Err(Error::new(
                    ErrorCode::BadRequest,
                    format!("request body broke off: {e}"),
                ))
            }
            Some(Ok(f)) => {
                if let Ok(data) = f.into_data() {
                    if (buf.len() + data.len()) as u64 > limit {
                        return Err(too_large((buf.len() + data.len()) as u64));
                    }
                    buf.extend_from_slice(&data);
                }
            }
        }
    }
    Ok(buf.freeze())
}

/// Parses a JSON body as `T`.
///
/// # Errors
/// 422 `INVALID_BODY` with serde's reason.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body)
        .map_err(|e| Error::new(ErrorCode::InvalidBody, format!("invalid JSON body: {e}")))
}

/// A JSON request body as `T`, read under `limits.max_json_body` (413) and the idle timeout
/// (408); 422 `INVALID_BODY` when it is not a `T`. Put it last among a handler's arguments: the
/// headers and path are checked before the body is read.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: serde::de::DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = Error;

    async fn from_request(req: Request, st: &AppState) -> Result<JsonBody<T>> {
        let body = json_bytes(req, st).await?;
        parse_json(&body).map(JsonBody)
    }
}

/// [`JsonBody`] where an empty (or all-whitespace) body means `None`.
#[derive(Debug)]
pub struct OptionalJson<T>(pub Option<T>);

impl<T: serde::de::DeserializeOwned> FromRequest<AppState> for OptionalJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, st: &AppState) -> Result<OptionalJson<T>> {
        let body = json_bytes(req, st).await?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(None));
        }
        parse_json(&body).map(|v| OptionalJson(Some(v)))
    }
}

async fn json_bytes(req: Request, st: &AppState) -> Result<Bytes> {
    let (parts, body) = req.into_parts();
    read(&parts.headers, body, st.limits.max_json_body, st.idle()).await
}

/// Sends the pieces of a streamed answer, in order; `false` once the client has gone or after
/// an error (the producer stops then).
pub type Sink<'a> = dyn FnMut(Result<Bytes>) -> bool + 'a;

/// A streamed `application/octet-stream` answer for a resource of `size` bytes that honours
/// one `Range` (206 with `Content-Range`; 416 when unsatisfiable): `produce(first, last, send)`
/// runs on a blocking thread and sends the pieces covering `first..=last`, in order. An error
/// piece breaks the stream off (the client sees a truncated body, never wrong bytes); the
/// producer logs it.
///
/// # Errors
/// 416 `RANGE_NOT_SATISFIABLE`.
pub fn ranged<F>(headers: &HeaderMap, size: u64, produce: F) -> Result<Response>
where
    F: FnOnce(u64, u64, &mut Sink<'_>) + Send + 'static,
{
    let range = range::resolve(hdr(headers, "range"), size)?;
    let (first, last) = range.unwrap_or((0, size.saturating_sub(1)));
    let len = if size == 0 { 0 } else { last - first + 1 };
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    if len > 0 {
        tokio::task::spawn_blocking(move || {
            let mut send = |piece: Result<Bytes>| {
                let piece = piece.map_err(|e| std::io::Error::other(e.to_string()));
                let failed = piece.is_err();
                tx.blocking_send(piece).is_ok() && !failed
            };
            produce(first, last, &mut send);
        });
    }
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut r = Response::new(Body::from_stream(stream));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(OCTET));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if range.is_some() {
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {first}-{last}/{size}")) {
            r.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(r)
}
