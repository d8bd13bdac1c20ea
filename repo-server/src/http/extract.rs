//! Extractors: the caller, typed ids from the path ([`Id`], [`Ids`]); headers as text. Bodies
//! are read by [`super::body`]; the ingest routes' requests are [`super::upload`]'s.

use std::str::FromStr;

use axum::extract::{FromRequestParts, Path};
use http::request::Parts;
use http::HeaderMap;
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

impl RawPath {
    /// Path parameter `i` parsed as an id (400 `BAD_ID`/`BAD_DIGEST` when malformed).
    ///
    /// # Errors
    /// 400 with the rule the id breaks.
    pub fn param<T: FromStr<Err = IdError>>(&self, i: usize) -> Result<T> {
        parse_id(self.0.get(i).map(String::as_str).unwrap_or(""))
    }
}

/// The first path parameter as an id (a session, a chunk digest, a backup).
#[derive(Debug)]
pub struct Id<T>(pub T);

impl<T: FromStr<Err = IdError>> FromRequestParts<AppState> for Id<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Id<T>> {
        RawPath::from_request_parts(parts, st)
            .await?
            .param(0)
            .map(Id)
    }
}

/// The first two path parameters as ids (a session and a disk, a backup and a disk), checked
/// in that order.
#[derive(Debug)]
pub struct Ids<A, B>(pub A, pub B);

impl<A, B> FromRequestParts<AppState> for Ids<A, B>
where
    A: FromStr<Err = IdError>,
    B: FromStr<Err = IdError>,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Ids<A, B>> {
        let p = RawPath::from_request_parts(parts, st).await?;
        Ok(Ids(p.param(0)?, p.param(1)?))
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

/// Runs blocking repository work off the async runtime.
///
/// # Errors
/// The work's own error, or 500 if the task panicked.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}
