//! The accept loop: plain TCP (HTTP/2 prior knowledge and HTTP/1.1 on one port, detected per
//! connection) or TLS (ALPN `h2` and `http/1.1`), with the configured HTTP/2 windows, a cap on
//! concurrent connections, a session-expiry worker, and graceful shutdown with a drain timeout.

use std::future::Future;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::auth::{load_or_create_admin_token, Tokens};
use crate::config::{Config, TlsConfig};
use crate::http::{router, AppState};
use crate::metrics::Metrics;
use crate::repo::{Repository, Settings};
use schema::fingerprint::Fingerprint;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory or catalog could not be opened.
    #[error("cannot open the repository at {path}: {message}")]
    Repository {
        /// Data directory.
        path: std::path::PathBuf,
        /// Cause.
        message: String,
    },
    /// The admin token file could not be read or written.
    #[error("cannot create {path}: {source}")]
    AdminToken {
        /// File.
        path: std::path::PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// TLS certificate or key unusable.
    #[error("TLS: {0}")]
    Tls(String),
}

/// A ready-to-serve application: the repository and everything the router needs.
pub struct App {
    /// The repository.
    pub repo: Arc<Repository>,
    /// Router state.
    pub state: AppState,
    /// TLS acceptor when configured.
    tls: Option<tokio_rustls::TlsAcceptor>,
    config: Config,
    /// Where the generated admin token was written, if one was generated or loaded.
    pub admin_token_file: Option<std::path::PathBuf>,
}

impl App {
    /// Opens the repository and builds the runtime objects from `config`.
    ///
    /// # Errors
    /// [`StartError`] naming what could not be opened.
    pub fn open(config: Config) -> Result<App, StartError> {
        App::open_with(config, None)
    }

    /// [`App::open`] with the data in `stores` (the catalog stays under `config.data`); `None`
    /// keeps everything in `config.data`.
    ///
    /// # Errors
    /// [`StartError`] naming what could not be opened.
    pub fn open_with(
        mut config: Config,
        stores: Option<crate::repo::Stores>,
    ) -> Result<App, StartError> {
        let repo_err = |message: String| StartError::Repository {
            path: config.data.clone(),
            message,
        };
        std::fs::create_dir_all(&config.data).map_err(|e| repo_err(e.to_string()))?;
        let mut admin_token_file = None;
        if config.tokens.is_empty() {
            let path = config.data.join("admin.token");
            let (token, created) = load_or_create_admin_token(&config.data).map_err(|source| {
                StartError::AdminToken {
                    path: path.clone(),
                    source,
                }
            })?;
            if created {
                tracing::info!(file = %path.display(), "no tokens configured: generated an admin token");
            } else {
                tracing::info!(file = %path.display(), "no tokens configured: using the admin token");
            }
            config.tokens.push(token);
            admin_token_file = Some(path);
        }
        let metrics = Arc::new(Metrics::default());
        let stores = match stores {
            Some(s) => s,
            None => {
                crate::repo::Stores::local(&config.data).map_err(|e| repo_err(e.to_string()))?
            }
        };
        let repo = Repository::open_with(
            config.data.clone(),
            Settings::from(&config),
            metrics,
            stores,
        )
        .map_err(|e| repo_err(e.to_string()))?;
        let repo = Arc::new(repo);
        let tokens = Arc::new(Tokens::new(&config.tokens));
        let mut state = AppState::new(repo.clone(), tokens, &config);
        let tls = config.tls.as_ref().map(tls_acceptor).transpose()?;
        if let Some((_, fp)) = &tls {
            tracing::info!(fingerprint = %fp, "TLS certificate (pin it with source-mover --fingerprint)");
            state.tls_fingerprint = Some(*fp);
        }
        let tls = tls.map(|(acceptor, _)| acceptor);
        Ok(App {
            repo,
            state,
            tls,
            config,
            admin_token_file,
        })
    }
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("data", &self.config.data)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// The acceptor for `t`, and the SHA-256 fingerprint of its certificate (the first of the
/// chain: the one a client pins).
fn tls_acceptor(t: &TlsConfig) -> Result<(tokio_rustls::TlsAcceptor, Fingerprint), StartError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&t.cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| StartError::Tls(format!("certificate {}: {e}", t.cert.display())))?;
    if certs.is_empty() {
        return Err(StartError::Tls(format!(
            "no certificate in {}",
            t.cert.display()
        )));
    }
    let mut digest = [0u8; 32];
    digest.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &certs[0]).as_ref());
    let fingerprint = Fingerprint(digest);
    let key = PrivateKeyDer::from_pem_file(&t.key)
        .map_err(|e| StartError::Tls(format!("key {}: {e}", t.key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| StartError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((tokio_rustls::TlsAcceptor::from(Arc::new(cfg)), fingerprint))
}

/// Whether the first byte a client sent on the TLS port is a TLS handshake record (22); a
/// client that sends nothing within 10 s is left to the TLS acceptor's own handling.
async fn starts_like_tls(tcp: &tokio::net::TcpStream) -> bool {
    let mut first = [0u8; 1];
    match tokio::time::timeout(std::time::Duration::from_secs(10), tcp.peek(&mut first)).await {
        Ok(Ok(1)) => first[0] == 22,
        _ => true,
    }
}

/// Answers a plain-text client on the TLS port in words it can show: an HTTP/1.1 400 saying to
/// use `https://` (curl shows it; the mover's probe, `source_mover::tls::answers_like_tls`,
/// recognises it). What the client sent is read first and the write side shut
/// before closing, so the answer is not lost to a reset.
async fn refuse_plaintext(mut tcp: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let secs = std::time::Duration::from_secs;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(secs(1), tcp.read(&mut sink)).await;
    let body = "this port speaks TLS only: use https://\n";
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tcp.write_all(answer.as_bytes()).await;
    let _ = tcp.shutdown().await;
    let _ = tokio::time::timeout(secs(2), async {
        while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains open requests for up to
/// the configured drain timeout.
///
/// # Errors
/// Only errors of the listener itself; connection errors are logged and do not stop the server.
pub async fn run(
    listener: TcpListener,
    app: App,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let cfg = &app.config;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .initial_stream_window_size(cfg.http2.stream_window as u32)
        .initial_connection_window_size(cfg.http2.connection_window as u32)
        .max_concurrent_streams(cfg.http2.max_concurrent_streams)
        .max_frame_size(cfg.http2.max_frame_size as u32)
        .max_send_buf_size(1 << 20);
    let service = router(app.state.clone());
    let graceful = GracefulShutdown::new();
    let conn_limit = Arc::new(Semaphore::new(cfg.limits.max_connections));
    let (nbd_stop, nbd_stopped) = tokio::sync::watch::channel(false);
    let nbd = crate::nbd::start(&cfg.nbd, app.repo.clone(), nbd_stopped).await?;
    let expiry = spawn_expiry(app.repo.clone());
    let pruner = cfg
        .retention
        .schedule
        .map(|every| spawn_pruner(app.repo.clone(), every));
    tokio::pin!(shutdown);
    tracing::info!(addr = %listener.local_addr()?, tls = app.tls.is_some(), "repository listening");
    loop {
        let permit = tokio::select! {
            p = conn_limit.clone().acquire_owned() => p.map_err(std::io::Error::other)?,
            () = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let svc = TowerToHyperService::new(service.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = app.tls.clone();
        tokio::spawn(async move {
            let result = match tls {
                None => {
                    watcher
                        .watch(
                            builder
                                .serve_connection(TokioIo::new(tcp), svc)
                                .into_owned(),
                        )
                        .await
                }
                Some(_) if !starts_like_tls(&tcp).await => {
                    refuse_plaintext(tcp).await;
                    Ok(())
                }
                Some(acceptor) => match acceptor.accept(tcp).await {
                    Ok(stream) => {
                        watcher
                            .watch(
                                builder
                                    .serve_connection(TokioIo::new(stream), svc)
                                    .into_owned(),
                            )
                            .await
                    }
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        Ok(())
                    }
                },
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = nbd_stop.send(true);
    expiry.abort();
    if let Some(p) = pruner {
        p.abort();
    }
    tracing::info!(
        connections = graceful.count(),
        "shutting down; draining open requests"
    );
    if tokio::time::timeout(cfg.limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout reached; closing remaining connections");
    }
    if let Some(mut nbd) = nbd {
        if tokio::time::timeout(cfg.limits.drain_timeout, &mut nbd)
            .await
            .is_err()
        {
            tracing::warn!("drain timeout reached; closing remaining NBD connections");
            nbd.abort();
        }
    }
    Ok(())
}

fn spawn_expiry(repo: Arc<Repository>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let every = std::time::Duration::from_millis(
            (repo.settings.session_ttl_ms / 4).clamp(1000, 60_000) as u64,
        );
        loop {
            tokio::time::sleep(every).await;
            let r = repo.clone();
            match tokio::task::spawn_blocking(move || r.expire_sessions()).await {
                Ok(Ok(n)) if n > 0 => tracing::info!(expired = n, "expired idle sessions"),
                Ok(Err(e)) => tracing::warn!(error = %e, "session expiry failed"),
                _ => {}
            }
        }
    })
}

/// Applies the retention policies every `every` (`retention.schedule`).
fn spawn_pruner(repo: Arc<Repository>, every: std::time::Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let r = repo.clone();
            match tokio::task::spawn_blocking(move || r.apply_retention(false, None)).await {
                Ok(Ok(report)) => {
                    let pruned: usize = report.sources.iter().map(|s| s.pruned.len()).sum();
                    if pruned > 0 {
                        tracing::info!(pruned, "scheduled prune");
                    }
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "scheduled prune failed"),
                Err(e) => tracing::warn!(error = %e, "scheduled prune panicked"),
            }
        }
    })
}

/// Resolves on SIGINT or SIGTERM (the binaries' graceful shutdown).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("signal received");
}

/// Logs to stderr, filtered by `REPO_LOG` (default `info`), coloured on a terminal.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REPO_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
