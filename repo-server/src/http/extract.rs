//! Extractors: the caller, typed ids from the path, and bodies read under limits.

use std::str::FromStr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequestParts, Path};
use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::HeaderMap;
use http_body_util::BodyExt;
use schema::{ErrorCode, IdError};

use super::AppState;
use crate::auth::Caller;
use crate::error::{Error, Result};

impl FromRequestParts<AppState> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Caller> {
        let header = parts
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        st.tokens.authenticate(header)
    }
}

/// Path parameters as raw strings, with axum's rejection turned into our JSON error.
#[derive(Debug)]
pub struct RawPath(pub Vec<String>);

impl FromRequestParts<AppState> for RawPath {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<RawPath> {
        let Path(params) = Path::<Vec<(String, String)>>::from_request_parts(parts, st)
            .await
            .map_err(|e| Error::new(ErrorCode::BadId, format!("malformed path: {e}")))?;
        Ok(RawPath(params.into_iter().map(|(_, v)| v).collect()))
    }
}

/// Parses one id from the path, mapping a bad digest to `BAD_DIGEST` and anything else to `BAD_ID`.
///
/// # Errors
/// 400 with the rule the id breaks.
pub fn parse_id<T: FromStr<Err = IdError>>(text: &str) -> Result<T> {
    text.parse::<T>().map_err(|e| {
        let code = if e == IdError::Digest {
            ErrorCode::BadDigest
        } else {
            ErrorCode::BadId
        };
        Error::new(code, format!("{e} (got {text:?})"))
    })
}

/// A header as text.
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The media type of `Content-Type`, without parameters, lowercase.
pub fn content_type(headers: &HeaderMap) -> Option<String> {
    header(headers, "content-type").map(|v| {
        v.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    })
}

/// Reads a whole body, refusing with 413 before reading when `Content-Length` is over `limit`,
/// and with 408 when no data arrives for `idle`.
///
/// # Errors
/// 413 `TOO_LARGE`, 408 `BODY_TIMEOUT`, 400 when the body breaks off.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: u64,
    idle: Duration,
) -> Result<Bytes> {
    let declared = header(headers, "content-length").and_then(|v| v.parse::<u64>().ok());
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

/// Runs blocking repository work off the async runtime.
///
/// # Errors
/// The work's own error, or 500 if the task panicked.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}
