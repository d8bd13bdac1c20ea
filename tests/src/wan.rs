//! A WAN emulator: a TCP proxy that adds one-way delay, caps bandwidth with a token bucket per
//! direction (shared by all connections, like a link), counts bytes, and can cut every connection
//! (now, or every N seconds) and refuse new ones for a while. The kernel here has `tbf`/`htb` but
//! no `netem`, so delay and cuts live here.
//!
//! For operators rehearsing their own links: `bench wan-proxy --listen ADDR --upstream ADDR
//! --delay-ms 50 --rate 12500000 --cut-every 5` (or `--cut-random 5`) and point the mover at `--listen`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stdx::rate::TokenBucket;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Mutex};

/// Link settings.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    /// One-way delay added to every byte in each direction.
    pub delay: Duration,
    /// Bytes per second in each direction (`None`: unlimited).
    pub rate: Option<u64>,
}

/// Counters of the proxy.
#[derive(Debug, Default)]
pub struct Stats {
    /// Bytes from clients to the upstream.
    pub up: AtomicU64,
    /// Bytes from the upstream to clients.
    pub down: AtomicU64,
    /// Connections cut.
    pub cuts: AtomicU64,
    /// Connections accepted.
    pub connections: AtomicU64,
}

/// A running emulator.
#[derive(Debug)]
pub struct WanProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Counters.
    pub stats: Arc<Stats>,
    cut: watch::Sender<u64>,
    refuse_until: Arc<Mutex<Option<Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

/// A token bucket for one direction of the link, shared by all its connections; a sender holds
/// the lock while it waits, so bytes leave in order of arrival.
type Bucket = Mutex<TokenBucket>;

/// The bucket of one direction at `rate` bytes per second: bursts of 10 ms worth (at least
/// 16 KiB), like a shaped link's small queue, starting empty like an idle link's queue.
fn link_bucket(rate: u64) -> Arc<Bucket> {
    let rate = rate as f64;
    let burst = (rate / 100.0).max(16_384.0);
    let mut bucket = TokenBucket::with_burst(rate, burst);
    let _ = bucket.take(burst as u64, Instant::now());
    Arc::new(Mutex::new(bucket))
}

/// Waits until `n` bytes may pass `bucket`.
async fn take(bucket: &Bucket, n: usize) {
    let mut b = bucket.lock().await;
    let wait = b.take(n as u64, Instant::now());
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
}

impl WanProxy {
    /// Starts a proxy on 127.0.0.1 (ephemeral port) in front of `upstream`.
    ///
    /// # Errors
    /// Binding the port.
    pub async fn start(upstream: SocketAddr, link: Link) -> std::io::Result<WanProxy> {
        Self::start_on(
            "127.0.0.1:0".parse().map_err(std::io::Error::other)?,
            upstream,
            link,
        )
        .await
    }

    /// Starts a proxy on `listen` in front of `upstream`.
    ///
    /// # Errors
    /// Binding the port.
    pub async fn start_on(
        listen: SocketAddr,
        upstream: SocketAddr,
        link: Link,
    ) -> std::io::Result<WanProxy> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(Stats::default());
        let (cut, cut_rx) = watch::channel(0u64);
        let refuse_until: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
        let buckets = link.rate.map(|r| (link_bucket(r), link_bucket(r)));
        let (st, refuse) = (stats.clone(), refuse_until.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if refuse.lock().await.is_some_and(|t| Instant::now() < t) {
                    drop(client);
                    continue;
                }
                st.connections.fetch_add(1, Ordering::Relaxed);
                let (st, mut cut_rx, buckets) = (st.clone(), cut_rx.clone(), buckets.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let (up_b, down_b) = match &buckets {
                        Some((u, d)) => (Some(u.clone()), Some(d.clone())),
                        None => (None, None),
                    };
                    let up = pump(cr, sw, link.delay, up_b, st.clone(), true);
                    let down = pump(sr, cw, link.delay, down_b, st.clone(), false);
                    cut_rx.borrow_and_update();
                    tokio::select! {
                        _ = async { tokio::join!(up, down) } => {}
                        _ = cut_rx.changed() => { st.cuts.fetch_add(1, Ordering::Relaxed); }
                    }
                });
            }
        });
        Ok(WanProxy {
            addr,
            stats,
            cut,
            refuse_until,
            task,
        })
    }

    /// Cuts every open connection now.
    pub fn cut_all(&self) {
        self.cut.send_modify(|g| *g += 1);
    }

    /// Refuses new connections for `d` (existing ones are not touched; combine with [`WanProxy::cut_all`]).
    pub async fn refuse_for(&self, d: Duration) {
        *self.refuse_until.lock().await = Some(Instant::now() + d);
    }

    /// Cuts every connection every `every`, until the returned task is aborted.
    pub fn cut_every(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                me.cut_all();
            }
        })
    }
}

impl WanProxy {
    /// Cuts every connection at random times, each gap uniform in [mean/2, 3·mean/2], drawn
    /// from `seed` (so a failing run can be replayed), until the returned task is aborted.
    pub fn cut_randomly(
        self: &Arc<Self>,
        mean: Duration,
        seed: u64,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            loop {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let f = 0.5 + (x % 1_000_000) as f64 / 1_000_000.0;
                tokio::time::sleep(mean.mul_f64(f)).await;
                me.cut_all();
            }
        })
    }
}

impl Drop for WanProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut_all();
    }
}

/// Moves bytes one way: read, stamp, wait out the delay, take link tokens, write.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    bucket: Option<Arc<Bucket>>,
    stats: Arc<Stats>,
    up: bool,
) {
    // A reader task stamps chunks with their arrival time; the writer delivers them `delay` later.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Instant, Vec<u8>)>(1024);
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.send((Instant::now(), buf[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    while let Some((at, data)) = rx.recv().await {
        let due = at + delay;
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        if let Some(b) = &bucket {
            for piece in data.chunks(16 << 10) {
                take(b, piece.len()).await;
            }
        }
        if to.write_all(&data).await.is_err() {
            break;
        }
        let c = if up { &stats.up } else { &stats.down };
        c.fetch_add(data.len() as u64, Ordering::Relaxed);
    }
    reader.abort();
    let _ = to.shutdown().await;
}
