//! Backups across the WAN emulator: cut connections and restarted servers are survived, and
//! only what was in flight is sent again.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bench::wan::{Link, WanProxy};
use source_mover::backup::{backup, BackupOptions, Base};
use source_mover::client::RepoClient;
use source_mover::restore::{resolve, restore};
use tests::images::noise;
use tests::{ChildServer, TestServer, BACKUP_A};

const MIB: u64 = 1 << 20;

fn opts(disk: &std::path::Path, state: &std::path::Path, streams: usize) -> BackupOptions {
    BackupOptions {
        source: "vm-wan".into(),
        disks: vec![("disk0".into(), disk.to_owned())],
        cbt: BTreeMap::new(),
        base: Base::None,
        block_size: 256 << 10,
        zstd_level: 3,
        excludes: Vec::new(),
        streams,
        state_dir: state.to_owned(),
        progress: false,
    }
}

async fn restored_equals(url: &str, id: &str, disk: &std::path::Path, dir: &std::path::Path) {
    let c = RepoClient::new(url, BACKUP_A, Duration::from_secs(30), None).unwrap();
    let m = resolve(&c, id, None).await.unwrap();
    let out = dir.join("restored.raw");
    restore(&c, &m, "disk0", Some(&out), 8, false)
        .await
        .unwrap();
    assert!(
        std::fs::read(&out).unwrap() == std::fs::read(disk).unwrap(),
        "restored image differs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_completes_across_cuts_and_resends_only_what_was_in_flight() {
    let srv = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    std::fs::write(&disk, noise(24 * MIB as usize, 11)).unwrap();
    // 4 MB/s each way, 10 ms one-way delay: about 6 s of upload, cut every 1.5 s.
    let link = Link {
        delay: Duration::from_millis(10),
        rate: Some(4_000_000),
    };
    let proxy = Arc::new(WanProxy::start(srv.addr, link).await.unwrap());
    let cutter = proxy.cut_every(Duration::from_millis(1500));
    let c = RepoClient::with_connections(
        &format!("http://{}", proxy.addr),
        BACKUP_A,
        Duration::from_secs(120),
        None,
        2,
    )
    .unwrap();
    let streams = 8;
    let r = backup(&c, &opts(&disk, &dir.path().join("state"), streams))
        .await
        .unwrap();
    cutter.abort();
    let cuts = proxy.stats.cuts.load(Ordering::Relaxed);
    let up = proxy.stats.up.load(Ordering::Relaxed);
    assert!(cuts >= 2, "the backup must have seen cuts ({cuts})");
    // Each cut can lose at most the chunks in flight: `streams` chunks of 256 KiB (incompressible).
    let bound = r.sent_bytes + cuts * (streams as u64 + 1) * (256 << 10) + 2 * MIB;
    eprintln!("wan cuts: {cuts} connections cut; {up} bytes over the wire for {} bytes of chunks ({:.3}×)", r.sent_bytes, up as f64 / r.sent_bytes as f64);
    assert!(
        up <= bound,
        "{up} bytes over the wire; at most {bound} expected"
    );
    restored_equals(&srv.url(), &r.backup_id, &disk, dir.path()).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_survives_two_server_restarts_across_the_emulator() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let data = dir.path().join("repo");
    let mut srv = ChildServer::start_at(&data, &listen);
    let disk = dir.path().join("disk.raw");
    std::fs::write(&disk, noise(16 * MIB as usize, 12)).unwrap();
    let link = Link {
        delay: Duration::from_millis(20),
        rate: Some(3_000_000),
    };
    let proxy = WanProxy::start(listen.parse().unwrap(), link)
        .await
        .unwrap();
    let c = RepoClient::new(
        &format!("http://{}", proxy.addr),
        BACKUP_A,
        Duration::from_secs(120),
        None,
    )
    .unwrap();
    let o = opts(&disk, &dir.path().join("state"), 8);
    let job = tokio::spawn(async move { backup(&c, &o).await });
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        srv.kill9_in_place();
        tokio::time::sleep(Duration::from_millis(400)).await;
        srv = ChildServer::start_at(&data, &listen);
    }
    let r = job.await.unwrap().unwrap();
    restored_equals(&srv.url(), &r.backup_id, &disk, dir.path()).await;
}
