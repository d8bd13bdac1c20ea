//! The repository client: HTTP/2 (with prior knowledge over `http://`, through ALPN over
//! `https://`, see [`crate::tls`]) over one connection or several (many concurrent streams each),
//! large flow-control windows, retries with exponential backoff for network faults and
//! 429/502/503/504, and an optional byte-rate limit on chunk uploads.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use schema::api::{
    BackupList, CommitRequest, CommitResponse, CreateSession, FileListing, Manifest, SearchResults,
    SessionStatus,
};
use schema::query::encode;
use schema::{BackupId, ChunkId, SessionId};
use serde::de::DeserializeOwned;
use stdx::backoff::Backoff;
use stdx::rate::TokenBucket;

use crate::error::{Error, Result};
use crate::tls::{Connector, Trust};

/// An answer read whole.
#[derive(Debug)]
pub struct Answer {
    /// Status (always 2xx; other statuses are errors).
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON.
    ///
    /// # Errors
    /// When it is not the expected JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Error::Invalid(format!("unexpected answer from the repository: {e}")))
    }
}

/// Limits upload bytes per second with a [`TokenBucket`] (burst: one second's worth).
#[derive(Debug)]
pub struct RateLimit {
    bucket: tokio::sync::Mutex<TokenBucket>,
}

impl RateLimit {
    /// A limit of `bytes_per_second`.
    pub fn new(bytes_per_second: u64) -> RateLimit {
        RateLimit {
            bucket: tokio::sync::Mutex::new(TokenBucket::new(bytes_per_second)),
        }
    }

    /// Waits until `n` bytes may be sent.
    pub async fn take(&self, n: usize) {
        let mut b = self.bucket.lock().await;
        let wait = b.take(n as u64, Instant::now());
        if !wait.is_zero() {
            // Holding the lock while sleeping serialises senders, which is what a limit means.
            tokio::time::sleep(wait).await;
        }
    }
}

/// A client of one repository with one token.
#[derive(Debug, Clone)]
pub struct RepoClient {
    base: String,
    auth: String,
    /// One HTTP/2 connection each; requests go round-robin (several TCP connections fill long
    /// fat links better than one, and one lost connection stalls only its share).
    http: Arc<Vec<Client<Connector, Full<Bytes>>>>,
    next: Arc<std::sync::atomic::AtomicUsize>,
    /// Whether [`RepoClient::tls_port_behind_http`] has been asked.
    probed: Arc<std::sync::atomic::AtomicBool>,
    /// How long retryable failures are retried before giving up.
    pub retry_for: Duration,
    limit: Option<Arc<RateLimit>>,
}

impl RepoClient {
    /// A client for `url` (`http://host:port`, HTTP/2 prior knowledge).
    ///
    /// # Errors
    /// An unsupported URL.
    pub fn new(
        url: &str,
        token: &str,
        retry_for: Duration,
        limit_rate: Option<u64>,
    ) -> Result<RepoClient> {
        Self::with_connections(url, token, retry_for, limit_rate, 1)
    }

    /// A client with `connections` HTTP/2 connections used round-robin, trusting the system's
    /// roots for `https://`.
    ///
    /// # Errors
    /// An unsupported URL.
    pub fn with_connections(
        url: &str,
        token: &str,
        retry_for: Duration,
        limit_rate: Option<u64>,
        connections: usize,
    ) -> Result<RepoClient> {
        Self::with_trust(
            url,
            token,
            retry_for,
            limit_rate,
            connections,
            &Trust::default(),
        )
    }

    /// A client for `http://host:port` or `https://host:port` with `connections` HTTP/2
    /// connections used round-robin; `trust` says which server certificates `https://` accepts.
    /// Plain `http://` to another machine works but prints a warning: the token and the data
    /// cross the network in clear text.
    ///
    /// # Errors
    /// An unsupported URL, or a `trust` that cannot be loaded.
    pub fn with_trust(
        url: &str,
        token: &str,
        retry_for: Duration,
        limit_rate: Option<u64>,
        connections: usize,
        trust: &Trust,
    ) -> Result<RepoClient> {
        let base = url.trim_end_matches('/').to_owned();
        let uri: http::Uri = base
            .parse()
            .map_err(|e| Error::Invalid(format!("repository URL {url:?}: {e}")))?;
        let tls = match uri.scheme_str() {
            Some("https") => Some(trust.client_config()?),
            Some("http") => {
                if !crate::tls::is_loopback(uri.host().unwrap_or_default()) {
                    eprintln!(
                        "source-mover: warning: {base} is plain HTTP: the token and the data cross \
                         the network unencrypted (use https://)"
                    );
                }
                None
            }
            _ => {
                return Err(Error::Invalid(format!(
                    "repository URL {url:?}: expected http://host:port or https://host:port"
                )))
            }
        };
        let build = || {
            let mut b = Client::builder(TokioExecutor::new());
            b.http2_only(true)
                .http2_initial_stream_window_size(8 << 20)
                .http2_initial_connection_window_size(64 << 20)
                .http2_max_frame_size(1 << 20)
                .http2_max_send_buf_size(4 << 20)
                .http2_keep_alive_interval(Duration::from_secs(20))
                .http2_keep_alive_timeout(Duration::from_secs(20))
                .timer(hyper_util::rt::TokioTimer::new());
            b.build(Connector::new(tls.clone()))
        };
        Ok(RepoClient {
            base,
            auth: format!("Bearer {}", token.trim()),
            http: Arc::new((0..connections.max(1)).map(|_| build()).collect()),
            next: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            probed: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            retry_for,
            limit: limit_rate.map(|r| Arc::new(RateLimit::new(r))),
        })
    }

    /// For an `http://` client whose request failed at the network level: whether the port
    /// answers like a TLS server (a plain HTTP/2 preface is met with a TLS alert, or with
    /// `repo-server`'s plain-text refusal). Asked once per client; never for `https://`.
    async fn tls_port_behind_http(&self) -> bool {
        if !self.base.starts_with("http://")
            || self.probed.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            return false;
        }
        let authority = self.base.trim_start_matches("http://");
        let authority = authority.split('/').next().unwrap_or(authority);
        crate::tls::answers_like_tls(authority).await
    }

    /// The repository URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Sends a request, retrying retryable failures with backoff for up to `retry_for`.
    ///
    /// # Errors
    /// The repository's refusal, or the last network error once the retry time is spent.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Answer> {
        let mut backoff = Backoff::new(self.retry_for);
        loop {
            match self.once(method.clone(), path, headers, body.clone()).await {
                Err(e @ Error::Network { .. }) if self.tls_port_behind_http().await => {
                    return Err(Error::Invalid(format!(
                        "the repository at {} serves TLS on that port: use https:// ({e})",
                        self.base
                    )));
                }
                Err(e) if e.is_retryable() => {
                    let Some(delay) = backoff.next_delay() else {
                        return Err(e);
                    };
                    eprintln!(
                        "source-mover: {e}; retrying {method} {path} in {:.1}s",
                        delay.as_secs_f64()
                    );
                    tokio::time::sleep(delay).await;
                }
                other => return other,
            }
        }
    }

    async fn once(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Answer> {
        let resp = self.request(method, path, headers, body).await?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| self.network(&e))?
            .to_bytes();
        if !parts.status.is_success() {
            return Err(refusal(parts.status, &body));
        }
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// Sends one request and returns the answer with its body unread.
    async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<http::Response<hyper::body::Incoming>> {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", &self.auth);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b
            .body(Full::new(body))
            .map_err(|e| Error::Invalid(format!("bad request {path}: {e}")))?;
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.http.len();
        self.http[i].request(req).await.map_err(|e| {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                if let Some(refused) = s.downcast_ref::<crate::tls::Refused>() {
                    return Error::Tls {
                        url: self.base.clone(),
                        message: refused.0.clone(),
                    };
                }
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            self.network(&msg)
        })
    }

    fn network(&self, e: &dyn std::fmt::Display) -> Error {
        Error::Network {
            url: self.base.clone(),
            message: e.to_string(),
        }
    }

    /// Streams the body of `GET path` into `out` and returns its length. A connection that breaks
    /// mid-body is retried like any network fault, asking with `Range` for the rest only, so a
    /// large file is never fetched twice and never written twice.
    ///
    /// # Errors
    /// The repository's refusal, a write error on `out`, or the last network error once the retry
    /// time is spent.
    pub async fn download(&self, path: &str, out: &mut (dyn std::io::Write + Send)) -> Result<u64> {
        let mut backoff = Backoff::new(self.retry_for);
        let mut done = 0u64;
        loop {
            match self.download_from(path, &mut done, out).await {
                Ok(()) => return Ok(done),
                Err(e) if e.is_retryable() => {
                    let Some(delay) = backoff.next_delay() else {
                        return Err(e);
                    };
                    eprintln!(
                        "source-mover: {e}; resuming GET {path} at byte {done} in {:.1}s",
                        delay.as_secs_f64()
                    );
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn download_from(
        &self,
        path: &str,
        done: &mut u64,
        out: &mut (dyn std::io::Write + Send),
    ) -> Result<()> {
        let range = format!("bytes={done}-");
        let headers: &[(&str, &str)] = if *done > 0 {
            &[("range", range.as_str())]
        } else {
            &[]
        };
        let resp = self
            .request(Method::GET, path, headers, Bytes::new())
            .await?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| self.network(&e))?
                .to_bytes();
            return Err(refusal(status, &body));
        }
        if *done > 0 && status != StatusCode::PARTIAL_CONTENT {
            return Err(Error::Invalid(format!(
                "GET {path}: the repository ignored a Range request when resuming at byte {done}"
            )));
        }
        // The whole length: Content-Length of a 200, the part after '/' of a 206's Content-Range.
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let total = if status == StatusCode::PARTIAL_CONTENT {
            header("content-range").and_then(|r| r.rsplit('/').next()?.parse::<u64>().ok())
        } else {
            header("content-length").and_then(|l| l.parse::<u64>().ok())
        };
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.network(&e))?;
            if let Ok(data) = frame.into_data() {
                out.write_all(&data).map_err(|e| Error::io("output", e))?;
                *done += data.len() as u64;
            }
        }
        match total {
            Some(t) if t != *done => Err(self.network(&format!(
                "GET {path}: the answer ended at byte {done} of {t}"
            ))),
            _ => Ok(()),
        }
    }

    /// GET and decode JSON.
    ///
    /// # Errors
    /// See [`RepoClient::send`].
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send(Method::GET, path, &[], Bytes::new())
            .await?
            .json()
    }

    /// Sends JSON.
    ///
    /// # Errors
    /// See [`RepoClient::send`].
    pub async fn send_json(
        &self,
        method: Method,
        path: &str,
        v: &impl serde::Serialize,
    ) -> Result<Answer> {
        let body = serde_json::to_vec(v).map_err(|e| Error::Invalid(e.to_string()))?;
        self.send(
            method,
            path,
            &[("content-type", "application/json")],
            body.into(),
        )
        .await
    }
}

/// The protocol's calls, typed: request bodies are the `schema` types, answers are decoded
/// into them. Session ids are [`SessionId`]s, backups [`BackupId`]s.
impl RepoClient {
    /// `PUT /v1/sessions/{id}`: creates the session (repeating it with the same parameters is
    /// harmless).
    ///
    /// # Errors
    /// See [`RepoClient::send`].
    pub async fn create_session(&self, id: &SessionId, body: &CreateSession) -> Result<()> {
        self.send_json(Method::PUT, &format!("/v1/sessions/{id}"), body)
            .await
            .map(drop)
    }

    /// `GET /v1/sessions/{id}`.
    ///
    /// # Errors
    /// See [`RepoClient::send`] (404 for a session the repository does not know).
    pub async fn session_status(&self, id: &SessionId) -> Result<SessionStatus> {
        self.get_json(&format!("/v1/sessions/{id}")).await
    }

    /// `POST /v1/sessions/{id}/find-missing` (binary form): which of `ids` the repository lacks;
    /// the others are pinned to the session. Asks in parts of at most 65,536 digests.
    ///
    /// # Errors
    /// See [`RepoClient::send`].
    pub async fn find_missing(
        &self,
        session: &SessionId,
        ids: &[ChunkId],
    ) -> Result<HashSet<ChunkId>> {
        let mut missing = HashSet::new();
        for part in ids.chunks(65_536) {
            let body: Vec<u8> = part.iter().flat_map(|c| c.0).collect();
            let a = self
                .send(
                    Method::POST,
                    &format!("/v1/sessions/{session}/find-missing"),
                    &[("content-type", OCTET)],
                    body.into(),
                )
                .await?;
            missing.extend(a.body.chunks_exact(32).filter_map(ChunkId::from_slice));
        }
        Ok(missing)
    }

    /// Uploads one chunk frame (zstd) of `raw_len` uncompressed bytes, under the rate limit.
    ///
    /// # Errors
    /// See [`RepoClient::send`].
    pub async fn put_chunk(
        &self,
        session: &SessionId,
        id: &ChunkId,
        frame: Bytes,
        raw_len: usize,
    ) -> Result<Answer> {
        if let Some(l) = &self.limit {
            l.take(frame.len()).await;
        }
        let len = raw_len.to_string();
        let h = [
            ("content-type", "application/zstd"),
            ("chunk-length", len.as_str()),
        ];
        self.send(
            Method::PUT,
            &format!("/v1/sessions/{session}/chunks/{id}"),
            &h,
            frame,
        )
        .await
    }

    /// Uploads one sealed frame (`schema::sealed`, a chunk of an encrypted backup) of `raw_len`
    /// plaintext bytes with the blake3 of its bytes, under the rate limit.
    ///
    /// # Errors
    /// See [`RepoClient::send`].
    pub async fn put_sealed(
        &self,
        session: &SessionId,
        id: &ChunkId,
        frame: Bytes,
        raw_len: usize,
    ) -> Result<Answer> {
        if let Some(l) = &self.limit {
            l.take(frame.len()).await;
        }
        let len = raw_len.to_string();
        let digest = schema::sealed::hex(&schema::sealed::stored_digest(&frame));
        let h = [
            ("content-type", schema::sealed::CONTENT_TYPE),
            ("chunk-length", len.as_str()),
            (schema::sealed::STORED_DIGEST_HEADER, digest.as_str()),
        ];
        self.send(
            Method::PUT,
            &format!("/v1/sessions/{session}/chunks/{id}"),
            &h,
            frame,
        )
        .await
    }

    /// `PUT /v1/sessions/{id}/disks/{disk}/entries?start=N`: appends encoded index records after
    /// the first `start`; returns how many records the repository then holds (`Index-Entries`).
    ///
    /// # Errors
    /// See [`RepoClient::send`].
    pub async fn append(
        &self,
        session: &SessionId,
        disk: &str,
        start: u64,
        records: Bytes,
    ) -> Result<u64> {
        let path = format!("/v1/sessions/{session}/disks/{disk}/entries?start={start}");
        let a = self
            .send(Method::PUT, &path, &[("content-type", OCTET)], records)
            .await?;
        Ok(a.headers
            .get("index-entries")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0))
    }

    /// `POST /v1/sessions/{id}/commit`.
    ///
    /// # Errors
    /// See [`RepoClient::send`]; `MISSING_CHUNKS` (422) lists chunks the repository lacks.
    pub async fn commit(&self, session: &SessionId, body: &CommitRequest) -> Result<BackupId> {
        self.send_json(
            Method::POST,
            &format!("/v1/sessions/{session}/commit"),
            body,
        )
        .await?
        .json::<CommitResponse>()
        .map(|r| r.backup_id)
    }

    /// `GET /v1/backups/{id}`: the manifest.
    ///
    /// # Errors
    /// See [`RepoClient::send`] (404 for an unknown backup).
    pub async fn manifest(&self, id: &str) -> Result<Manifest> {
        self.get_json(&format!("/v1/backups/{id}")).await
    }

    /// `GET /v1/backups`: up to `limit` manifests, newest first, of `source` or of all sources.
    ///
    /// # Errors
    /// See [`RepoClient::send`].
    pub async fn backups(&self, source: Option<&str>, limit: usize) -> Result<BackupList> {
        let mut path = format!("/v1/backups?limit={limit}");
        if let Some(s) = source {
            path.push_str(&format!("&source={}", encode(s)));
        }
        self.get_json(&path).await
    }

    /// The newest backup of `source` (or of any source), if there is one.
    ///
    /// # Errors
    /// See [`RepoClient::send`].
    pub async fn latest(&self, source: Option<&str>) -> Result<Option<Manifest>> {
        let q = match source {
            Some(s) => format!("/v1/backups?source={}&limit=1", encode(s)),
            None => "/v1/backups?limit=1".to_string(),
        };
        Ok(self
            .get_json::<BackupList>(&q)
            .await?
            .backups
            .into_iter()
            .next())
    }

    /// `GET /v1/backups/{id}/disks/{disk}/index`: the index blob, one 32-byte id per block.
    ///
    /// # Errors
    /// See [`RepoClient::send`].
    pub async fn disk_index(&self, backup: &str, disk: &str) -> Result<Bytes> {
        let path = format!("/v1/backups/{backup}/disks/{disk}/index");
        Ok(self.send(Method::GET, &path, &[], Bytes::new()).await?.body)
    }

    /// `GET /v1/chunks/{id}`: the stored frame of one chunk.
    ///
    /// # Errors
    /// See [`RepoClient::send`].
    pub async fn chunk(&self, id: &ChunkId) -> Result<Bytes> {
        let path = format!("/v1/chunks/{id}");
        Ok(self.send(Method::GET, &path, &[], Bytes::new()).await?.body)
    }

    /// `GET /v1/backups/{id}/files?path=..&depth=..` (`fs_query` selects disk and partition).
    ///
    /// # Errors
    /// See [`RepoClient::send`].
    pub async fn files(
        &self,
        backup: &BackupId,
        path: &str,
        depth: u32,
        fs_query: &str,
    ) -> Result<FileListing> {
        self.get_json(&format!(
            "/v1/backups/{backup}/files?path={}&depth={depth}{fs_query}",
            encode(path)
        ))
        .await
    }

    /// Streams the content of guest file `path` of `backup` into `out`; returns its length.
    ///
    /// # Errors
    /// See [`RepoClient::download`].
    pub async fn file_content(
        &self,
        backup: &BackupId,
        path: &str,
        fs_query: &str,
        out: &mut (dyn std::io::Write + Send),
    ) -> Result<u64> {
        let url = format!(
            "/v1/backups/{backup}/files/content?path={}{fs_query}",
            encode(path)
        );
        self.download(&url, out).await
    }

    /// One page of `GET /v1/search` (`query`: the encoded `name=..&..` filters).
    ///
    /// # Errors
    /// See [`RepoClient::send`].
    pub async fn search(&self, query: &str, limit: usize, after: usize) -> Result<SearchResults> {
        self.get_json(&format!("/v1/search?{query}&limit={limit}&after={after}"))
            .await
    }
}

/// The content type of chunk-id lists and index records.
const OCTET: &str = "application/octet-stream";

/// The error for a non-2xx answer: the protocol's code and message when the body has them.
fn refusal(status: StatusCode, body: &[u8]) -> Error {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    Error::Repo {
        status: status.as_u16(),
        code: v["error"]["code"].as_str().unwrap_or("").to_owned(),
        message: v["error"]["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned()),
        detail: v["error"]
            .get("detail")
            .filter(|d| !d.is_null())
            .map(|d| Box::new(d.clone())),
    }
}
