//! `bench wan` (goodput through the WAN emulator, [`tests::wan`]) and `bench wan-proxy` (the
//! emulator alone in front of a repository, for rehearsing a link).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tests::images::noise;
use tests::wan::{Link, WanProxy};
use tests::{ChildServer, Launch};

/// `bench wan-proxy`: the emulator between `listen` and `upstream` until interrupted, printing
/// its counters every 10 s.
pub fn proxy(
    listen: SocketAddr,
    upstream: SocketAddr,
    delay_ms: u64,
    rate: Option<u64>,
    (cut_every, cut_random): (u64, u64),
) -> Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let link = Link {
            delay: Duration::from_millis(delay_ms),
            rate,
        };
        let p = Arc::new(WanProxy::start_on(listen, upstream, link).await?);
        eprintln!(
            "wan-proxy: {} -> {upstream}, one-way delay {delay_ms} ms, rate {rate:?} B/s, cut every {cut_every} s",
            p.addr
        );
        let _cuts = (cut_every > 0).then(|| p.cut_every(Duration::from_secs(cut_every)));
        let seed = std::process::id().into();
        let _random =
            (cut_random > 0).then(|| p.cut_randomly(Duration::from_secs(cut_random), seed));
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            let s = &p.stats;
            eprintln!(
                "wan-proxy: up {} MB, down {} MB, {} connections, {} cut",
                s.up.load(Relaxed) / 1_000_000,
                s.down.load(Relaxed) / 1_000_000,
                s.connections.load(Relaxed),
                s.cuts.load(Relaxed)
            );
        }
    })
}

/// `bench wan`: goodput of `mib` MiB backups through the emulator at `rate` bytes/s for each
/// round-trip time in `rtts`, lan and wan presets, then one single-stream run against a server with
/// default HTTP/2 windows; prints the table.
pub fn goodput(mib: usize, rate: u64, rtts: &[u64]) -> Result<()> {
    use source_mover::backup::{backup, BackupOptions, Base};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let work = std::env::temp_dir().join(format!("bench-wan-{}", std::process::id()));
    let mut rows = Vec::new();
    let mut run = |label: String,
                   rtt: u64,
                   server_extra: &str,
                   mib: usize,
                   block: u32,
                   level: i32,
                   streams: usize,
                   connections: usize|
     -> Result<()> {
        let dir = work.join(format!("run{}", rows.len()));
        std::fs::create_dir_all(&dir)?;
        let server = ChildServer::spawn(&Launch {
            extra: server_extra.into(),
            test_tokens: false,
            ..Launch::new(&dir.join("data"))
        })?;
        let (addr, token) = (server.addr, server.admin_token_file());
        let disk = dir.join("disk.raw");
        std::fs::write(&disk, noise(mib << 20, rows.len() as u64 + 1))?;
        let result = rt.block_on(async {
            let link = Link {
                delay: Duration::from_millis(rtt / 2),
                rate: Some(rate),
            };
            let proxy = WanProxy::start(addr, link).await?;
            let tok = std::fs::read_to_string(&token)?;
            let c = source_mover::client::RepoClient::with_connections(
                &format!("http://{}", proxy.addr),
                &tok,
                Duration::from_secs(60),
                None,
                connections,
            )?;
            let o = BackupOptions {
                source: "wan".into(),
                disks: vec![("disk0".into(), source_mover::source::open(&disk)?)],
                cbt: BTreeMap::new(),
                cbt_points: BTreeMap::new(),
                base: Base::None,
                block_size: block,
                zstd_level: level,
                excludes: Vec::new(),
                streams,
                state_dir: dir.join("state"),
                progress: false,
                file_index: true,
                encryption_key: None,
            };
            let t = Instant::now();
            let r = backup(&c, &o).await?;
            let secs = t.elapsed().as_secs_f64();
            let wire = proxy.stats.up.load(std::sync::atomic::Ordering::Relaxed);
            anyhow::Ok((r.sent_bytes, wire, secs))
        });
        drop(server);
        let _ = std::fs::remove_dir_all(&dir);
        let (sent, wire, secs) = result?;
        let goodput = sent as f64 / secs;
        eprintln!("bench wan: {label} rtt {rtt} ms: {:.2} MB/s", goodput / 1e6);
        rows.push(format!(
            "| {label} | {rtt} | {mib} | {:.1} | {:.2} | {:.0} % | {:.3} |",
            secs,
            goodput / 1e6,
            100.0 * goodput / rate as f64,
            wire as f64 / sent as f64
        ));
        Ok(())
    };
    for &rtt in rtts {
        run(
            "default (lan preset: 1M blocks, zstd 3, 32 streams, 1 connection)".into(),
            rtt,
            "",
            mib,
            1 << 20,
            3,
            32,
            1,
        )?;
        run(
            "wan preset (256K blocks, zstd 6, 64 streams, 4 connections)".into(),
            rtt,
            "",
            mib,
            256 << 10,
            6,
            64,
            4,
        )?;
    }
    let small = (mib / 16).max(8);
    let windows = "[http2]\nstream_window = \"64KiB\"\nconnection_window = \"64KiB\"\n";
    run(
        "single stream, server with default 64 KiB HTTP/2 windows".into(),
        100,
        windows,
        small,
        1 << 20,
        3,
        1,
        1,
    )?;
    let _ = std::fs::remove_dir_all(&work);
    println!("# bench wan");
    println!();
    println!("Method: the repo-server binary on loopback behind the project's WAN emulator (tests::wan: one-way");
    println!("delay = RTT/2 each way, token bucket of {:.1} MB/s = {:.0} Mbit/s per direction); a full backup of an", rate as f64 / 1e6, rate as f64 * 8.0 / 1e6);
    println!("image of incompressible data with the mover library; goodput = compressed chunk bytes ÷ backup");
    println!("wall time; wire = bytes the emulator carried upstream ÷ chunk bytes.");
    println!();
    println!("| client | RTT ms | MiB | seconds | goodput MB/s | of link | wire ÷ chunks |");
    println!("|---|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    Ok(())
}
