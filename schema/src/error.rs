//! Stable error codes of the protocol and the JSON error body.
//!
//! Every error a repository returns is `{"error": {"code", "message", "detail"}}`. The code is
//! the stable, machine-readable part; the message is for people; `detail` carries structured
//! context (the expected count, the missing chunks, ...). Codes never change meaning.

use serde::{Deserialize, Serialize};

macro_rules! codes {
    ($($(#[$doc:meta])* $variant:ident = $status:literal),* $(,)?) => {
        /// A stable error code with its HTTP status.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)*
        }

        impl ErrorCode {
            /// Every code, for documentation and tests.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The HTTP status that goes with the code.
            pub fn status(self) -> u16 {
                match self { $(ErrorCode::$variant => $status,)* }
            }
        }
    };
}

codes! {
    /// The request is malformed (query, header, path).
    BadRequest = 400,
    /// A digest that is not `blake3:<64 lowercase hex>` (or the hole id where a block is required).
    BadDigest = 400,
    /// A malformed session id, backup id or disk name.
    BadId = 400,
    /// A chunk upload without `Chunk-Length`.
    MissingChunkLength = 400,
    /// A body that is not whole records or whole digests.
    BadBody = 400,
    /// No token, or an unknown token.
    Unauthorized = 401,
    /// The token's role may not do this.
    Forbidden = 403,
    /// No such object (or the token may not see it).
    NotFound = 404,
    /// The base backup of a new session does not exist.
    BaseNotFound = 404,
    /// Method not allowed on this path.
    MethodNotAllowed = 405,
    /// The request body stalled longer than the idle timeout.
    BodyTimeout = 408,
    /// The session exists with other parameters.
    SessionConflict = 409,
    /// Index records sent at a position other than the current count.
    PositionConflict = 409,
    /// Commit: the entry count differs from what the server holds.
    CountMismatch = 409,
    /// Commit: the records checksum differs from what the server holds.
    ChecksumMismatch = 409,
    /// The session is not in a state that allows this (committed, aborted).
    SessionState = 409,
    /// The backup is the base of an open session.
    BackupInUse = 409,
    /// The backup is younger than the immutability window; nobody may delete it yet.
    BackupImmutable = 409,
    /// The guest file matched an exclude pattern at backup time: its data is not in the backup.
    FileExcluded = 409,
    /// The repository serves no NBD exports (no `[nbd] listen` in its configuration).
    ExportsDisabled = 409,
    /// The backup is encrypted: the repository cannot read its data or its file index (the
    /// mover with the backup's key can).
    Encrypted = 409,
    /// A body or count over the limit.
    TooLarge = 413,
    /// A content type the route does not accept.
    UnsupportedType = 415,
    /// A `Range` that cannot be satisfied.
    RangeNotSatisfiable = 416,
    /// A JSON body that does not match the schema, or violates a rule.
    InvalidBody = 422,
    /// The block's blake3 is not the digest in the URL.
    DigestMismatch = 422,
    /// The block is not `Chunk-Length` bytes.
    LengthMismatch = 422,
    /// The body is not exactly one valid zstd frame.
    BadFrame = 422,
    /// An index record names a chunk neither pinned to the session nor in the base.
    UnknownChunk = 422,
    /// An index record names a block beyond the disk's end.
    BlockOutOfRange = 422,
    /// Commit: referenced chunks are not stored.
    MissingChunks = 422,
    /// The server is overloaded or shutting down; retry later.
    Unavailable = 503,
    /// The repository's disk is full.
    StorageFull = 507,
    /// A server fault; details are in the server log.
    Internal = 500,
}

impl ErrorCode {
    /// The text form, e.g. `DIGEST_MISMATCH`.
    pub fn as_str(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

/// The JSON error body: `{"error": {...}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorInfo,
}

/// The inside of [`ErrorBody`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorInfo {
    /// Stable code.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
    /// Structured context, when there is any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_protocol_names_and_statuses() {
        assert_eq!(ErrorCode::DigestMismatch.as_str(), "DIGEST_MISMATCH");
        assert_eq!(
            ErrorCode::MissingChunkLength.as_str(),
            "MISSING_CHUNK_LENGTH"
        );
        assert_eq!(ErrorCode::StorageFull.status(), 507);
        for c in ErrorCode::ALL {
            assert!((400..600).contains(&c.status()));
            let back: ErrorCode =
                serde_json::from_value(serde_json::Value::String(c.as_str())).expect("round trip");
            assert_eq!(back, *c);
        }
    }
}
