//! Errors of the mover. Policy: every error names what it concerns (the disk and offset, the
//! chunk, the repository URL, the file); repository refusals keep the protocol's error code;
//! [`Error::is_retryable`] decides what the client retries (network faults, 429, 502-504).

/// A mover error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A local file or device.
    #[error("{path}: {source}")]
    Io {
        /// What was being accessed (with offset where it matters).
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The repository refused a request.
    #[error("repository answered {status} {code}: {message}")]
    Repo {
        /// HTTP status.
        status: u16,
        /// Stable error code from the protocol.
        code: String,
        /// Its message.
        message: String,
        /// The error's `detail` object, when it has one (`MISSING_CHUNKS` lists the chunks).
        detail: Option<Box<serde_json::Value>>,
    },
    /// The repository could not be reached or the connection broke.
    #[error("cannot reach the repository at {url}: {message}")]
    Network {
        /// Repository URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The TLS handshake with the repository failed a check (unknown CA, name mismatch,
    /// fingerprint mismatch, expired): never retried, it would fail the same way.
    #[error("TLS with the repository at {url} refused: {message}")]
    Tls {
        /// Repository URL.
        url: String,
        /// Which check failed.
        message: String,
    },
    /// A block read back does not match its digest.
    #[error("chunk {chunk} (block {block} of disk {disk}): {message}")]
    Corrupt {
        /// Disk.
        disk: String,
        /// Block number.
        block: u64,
        /// Chunk id.
        chunk: String,
        /// What is wrong.
        message: String,
    },
    /// An NBD server (a source disk or a restore target) failed a request, refused the export
    /// or broke the protocol.
    #[error("NBD server {uri}: {message}")]
    Nbd {
        /// The export's URI.
        uri: String,
        /// What went wrong.
        message: String,
    },
    /// Bad arguments or input files.
    #[error("{0}")]
    Invalid(String),
    /// The command's input cannot be used as given (a changed-block list that names no base or
    /// another base than the backup this one builds on): refused before anything is committed.
    /// The binary exits with code 2 for it.
    #[error("{0}")]
    Refused(String),
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether retrying the same request may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Network { .. } => true,
            Error::Repo { status, .. } => matches!(status, 429 | 502 | 503 | 504),
            _ => false,
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl std::fmt::Display, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_string(),
            source,
        }
    }
}

/// Runs blocking work (file reads and writes, fsyncs, hashing, compression) on tokio's blocking
/// pool, so it never stalls the async coordinator; `what` names the work if its thread dies.
///
/// # Errors
/// The work's own error, or [`Error::Invalid`] when its thread panicked.
pub(crate) async fn blocking<T, F>(what: &str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Invalid(format!("{what} failed: {e}")))?
}
