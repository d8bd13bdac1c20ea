//! Instant recovery: committed backups' disks served read-only over NBD (`doc/proto.md` of the
//! NetworkBlockDevice project), so `qemu-img`, `nbdcopy`, `nbdinfo` and a VM booting from a
//! qcow2 overlay read a backup without restoring it first.
//!
//! - [`negotiation`]: the fixed newstyle handshake up to `NBD_OPT_GO`.
//! - [`transmission`]: the request loop (reads, block status, refused writes).
//! - [`blocks`]: reading an export's ranges, every block verified; `base:allocation` extents.
//! - [`cache`]: the bounded cache of verified blocks.
//!
//! Which export a name opens is [`crate::repo::exports`]: names are capabilities made over the
//! HTTP API, live in memory and expire. The wire codec is the `nbd` crate. Invariants: the
//! export is read-only (the flag is sent, and writes are `EPERM`); no byte of a block is sent
//! before its blake3 matched the index (a mismatch makes the request `EIO` and counts in
//! `repo_nbd_read_errors_total`); every length from the wire is checked against a limit before
//! anything is allocated; a malformed client is logged and disconnected, never a panic.

pub mod blocks;
pub mod cache;
pub mod negotiation;
pub mod transmission;

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::config::NbdConfig;
use crate::repo::exports::Export;
use crate::repo::Repository;

/// What every connection shares.
#[derive(Debug)]
pub struct Context {
    /// The repository.
    pub repo: Arc<Repository>,
    /// Reads through the block cache.
    pub blocks: Arc<blocks::Blocks>,
    /// Read reply bytes in flight, across connections (permits are KiB).
    pub inflight: Arc<Semaphore>,
    /// Largest read or block status range.
    pub max_request: u32,
    /// A connection idle this long is closed.
    pub idle_timeout: Duration,
    /// Negotiation must finish within this.
    pub handshake_timeout: Duration,
}

impl Context {
    /// The export called `name` if it is live now.
    pub fn open(&self, name: &str) -> Option<Arc<Export>> {
        self.repo.exports.open(name, self.repo.now())
    }
}

/// Binds `[nbd] listen`, records the address export URIs name, and serves until `shutdown`
/// turns true; then stops accepting and waits for open connections to finish their current
/// request.
///
/// # Errors
/// The listen address cannot be bound.
pub async fn start(
    cfg: &NbdConfig,
    repo: Arc<Repository>,
    shutdown: watch::Receiver<bool>,
) -> io::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(addr) = cfg.listen else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen for NBD on {addr}: {e}")))?;
    let bound = listener.local_addr()?;
    repo.exports
        .set_address(cfg.advertise.clone().unwrap_or_else(|| bound.to_string()));
    tracing::info!(addr = %bound, "NBD exports listening");
    let ctx = Arc::new(Context {
        blocks: Arc::new(blocks::Blocks::new(repo.clone(), cfg.cache)),
        repo,
        inflight: Arc::new(Semaphore::new((cfg.max_inflight / 1024) as usize)),
        max_request: cfg.max_request as u32,
        idle_timeout: cfg.idle_timeout,
        handshake_timeout: cfg.handshake_timeout,
    });
    Ok(Some(tokio::spawn(accept(
        listener,
        ctx,
        cfg.max_connections,
        shutdown,
    ))))
}

async fn accept(
    listener: TcpListener,
    ctx: Arc<Context>,
    max_connections: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let cap = Arc::new(Semaphore::new(max_connections));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.changed() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "NBD accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let Ok(permit) = cap.clone().try_acquire_owned() else {
            ctx.repo.metrics.nbd_refused.inc();
            tracing::warn!(%peer, max_connections, "NBD connection refused: too many open");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (ctx, stop) = (ctx.clone(), shutdown.clone());
        conns.spawn(async move {
            ctx.repo
                .metrics
                .nbd_connections
                .fetch_add(1, Ordering::Relaxed);
            if let Err(e) = connection(tcp, &ctx, stop).await {
                ctx.repo.metrics.nbd_refused.inc();
                tracing::info!(%peer, error = %e, "NBD connection closed");
            }
            ctx.repo
                .metrics
                .nbd_connections
                .fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

async fn connection(
    tcp: tokio::net::TcpStream,
    ctx: &Arc<Context>,
    shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let (r, w) = tcp.into_split();
    let mut r = tokio::io::BufReader::new(r);
    let mut w = tokio::io::BufWriter::with_capacity(256 << 10, w);
    let negotiated = tokio::time::timeout(
        ctx.handshake_timeout,
        negotiation::negotiate(&mut r, &mut w, ctx),
    )
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "negotiation timed out"))??;
    let Some(session) = negotiated else {
        return Ok(());
    };
    tracing::debug!(backup = %session.export.backup, structured = session.structured, "NBD transmission");
    transmission::serve(r, w, session, ctx.clone(), shutdown).await
}
