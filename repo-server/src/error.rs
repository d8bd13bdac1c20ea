//! The one error policy of the repository.
//!
//! - Everything the repository refuses is an [`Error`] carrying a stable [`ErrorCode`] from the
//!   protocol, a message for people and optional structured detail. Handlers never choose status
//!   codes themselves: [`Error`]'s `IntoResponse` maps the code to its status and JSON body.
//! - Faults of our own (I/O, RocksDB, a task that panicked) become [`ErrorCode::Internal`] with
//!   the cause logged server-side and a generic message sent to the client, except a full disk,
//!   which is [`ErrorCode::StorageFull`] (507) because the operator can act on it.
//! - Store errors are answered by what they mean ([`crate::store::Fault`], [`Error::storage`]):
//!   storage that cannot be reached, or a fenced store, is [`ErrorCode::Unavailable`] (503, retry
//!   later); full is 507; absent, corrupt or anything else is internal.
//! - Bad input is decided before anything is written, so an error never leaves partial state.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};
use schema::error::{ErrorBody, ErrorInfo};
use schema::ErrorCode;

use crate::store::Fault;

/// A refused or failed request.
#[derive(Debug)]
pub struct Error {
    /// Stable code.
    pub code: ErrorCode,
    /// Message for people.
    pub message: String,
    /// Structured context.
    pub detail: Option<serde_json::Value>,
    /// Extra headers (`Index-Entries` on a position conflict, `Content-Range` on 416).
    pub headers: Vec<(&'static str, String)>,
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Error {
        Error {
            code,
            message: message.into(),
            detail: None,
            headers: Vec::new(),
        }
    }

    /// Adds structured detail.
    #[must_use]
    pub fn detail(mut self, detail: serde_json::Value) -> Error {
        self.detail = Some(detail);
        self
    }

    /// Adds a response header.
    #[must_use]
    pub fn header(mut self, name: &'static str, value: impl ToString) -> Error {
        self.headers.push((name, value.to_string()));
        self
    }

    /// 404 for anything the caller may not see or that does not exist.
    pub fn not_found(what: impl std::fmt::Display) -> Error {
        Error::new(ErrorCode::NotFound, format!("{what} not found"))
    }

    /// A fault of our own: logged here, generic to the client.
    pub fn internal(context: &str, cause: impl std::fmt::Display) -> Error {
        let text = cause.to_string();
        if text.contains("No space left") || text.contains("Disk quota exceeded") {
            tracing::error!(%context, error = %text, "storage full");
            return Error::new(ErrorCode::StorageFull, "the repository's storage is full");
        }
        tracing::error!(%context, error = %text, "internal error");
        Error::new(
            ErrorCode::Internal,
            format!("internal error while {context}; see the server log"),
        )
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::storage("doing I/O", e)
    }
}

impl Error {
    /// An I/O error of the data store while `context`, answered by its [`Fault`]: 507 when the
    /// storage is full, 503 when it cannot be reached (a share whose server is down: clients
    /// retry) or refuses to write because it is fenced (a gateway without its share's lease; the
    /// message says why), else internal (absent where the catalog names it, corrupt, other).
    pub fn storage(context: &str, e: std::io::Error) -> Error {
        match crate::store::fault(&e) {
            Fault::Full => {
                tracing::error!(error = %e, "storage full");
                Error::new(ErrorCode::StorageFull, "the repository's storage is full")
            }
            Fault::Fenced => {
                tracing::warn!(error = %e, context, "store refuses to write");
                Error::new(ErrorCode::Unavailable, format!("{e} (while {context})"))
            }
            Fault::Unreachable => {
                tracing::warn!(error = %e, context, "storage unreachable");
                Error::new(
                    ErrorCode::Unavailable,
                    format!(
                        "the repository's storage cannot be reached while {context} ({e}); retry later"
                    ),
                )
            }
            Fault::NotFound | Fault::Corrupt | Fault::Other => Error::internal(context, e),
        }
    }
}

impl From<rocksdb::Error> for Error {
    fn from(e: rocksdb::Error) -> Error {
        Error::internal("using the catalog", e)
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Error {
        Error::internal("running a blocking task", e)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for Error {}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody {
            error: ErrorInfo {
                code: self.code,
                message: self.message,
                detail: self.detail,
            },
        };
        let mut resp = json_response(&body, status);
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                resp.headers_mut().insert(name, v);
            }
        }
        resp
    }
}

/// A JSON response, newline-terminated so it reads well in a terminal (curl).
pub fn json_response(value: &impl serde::Serialize, status: StatusCode) -> Response {
    match serde_json::to_vec(value) {
        Ok(mut v) => {
            v.push(b'\n');
            (
                status,
                [(http::header::CONTENT_TYPE, "application/json")],
                v,
            )
                .into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a response");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
