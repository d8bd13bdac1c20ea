//! Backups across the WAN emulator: cut connections and restarted servers are survived, and
//! only what was in flight is sent again.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use source_mover::backup::{backup, BackupOptions, Base};
use source_mover::client::RepoClient;
use source_mover::restore::{resolve, restore};
use tests::images::noise;
use tests::wan::{Link, WanProxy};
use tests::{ChildServer, TestServer, BACKUP_A};

const MIB: u64 = 1 << 20;

fn opts(disk: &std::path::Path, state: &std::path::Path, streams: usize) -> BackupOptions {
    BackupOptions {
        source: "vm-wan".into(),
        disks: vec![("disk0".into(), source_mover::source::open(disk).unwrap())],
        cbt: BTreeMap::new(),
        cbt_points: BTreeMap::new(),
        base: Base::None,
        block_size: 256 << 10,
        zstd_level: 3,
        excludes: Vec::new(),
        streams,
        state_dir: state.to_owned(),
        progress: false,
        file_index: true,
        encryption_key: None,
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
    // 4 MB/s each way, 10 ms one-way delay: about 6 s of upload.
    let link = Link {
        delay: Duration::from_millis(10),
        rate: Some(4_000_000),
    };
    let proxy = Arc::new(WanProxy::start(srv.addr, link).await.unwrap());
    // Cuts at random times, 1.5 s apart on average (seeded: a failure can be replayed).
    let cutter = proxy.cut_randomly(Duration::from_millis(1500), 42);
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
    let port = tests::free_port();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_survives_an_outage_within_the_retry_window() {
    let srv = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    std::fs::write(&disk, noise(12 * MIB as usize, 13)).unwrap();
    let link = Link {
        delay: Duration::from_millis(10),
        rate: Some(4_000_000),
    };
    let proxy = Arc::new(WanProxy::start(srv.addr, link).await.unwrap());
    let c = RepoClient::new(
        &format!("http://{}", proxy.addr),
        BACKUP_A,
        Duration::from_secs(120),
        None,
    )
    .unwrap();
    let o = opts(&disk, &dir.path().join("state"), 8);
    let job = tokio::spawn(async move { backup(&c, &o).await });
    // One second in: the link goes down for 6 s (every connection cut, new ones refused).
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.refuse_for(Duration::from_secs(6)).await;
    proxy.cut_all();
    let r = job.await.unwrap().unwrap();
    assert!(proxy.stats.cuts.load(Ordering::Relaxed) >= 1);
    restored_equals(&srv.url(), &r.backup_id, &disk, dir.path()).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_mover_resends_under_5_percent_of_what_was_acknowledged() {
    let srv = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    let blocks = 96u64;
    let bs = 256u64 << 10;
    std::fs::write(&disk, noise((blocks * bs) as usize, 14)).unwrap();
    let link = Link {
        delay: Duration::from_millis(25),
        rate: Some(3_000_000),
    };
    let proxy = Arc::new(WanProxy::start(srv.addr, link).await.unwrap());
    let token = dir.path().join("token");
    std::fs::write(&token, BACKUP_A).unwrap();
    let state = dir.path().join("state");
    let url = format!("http://{}", proxy.addr);
    let (st, dk) = (state.clone(), disk.clone());
    let cmd = move || {
        let mut c = std::process::Command::new(tests::mover_binary());
        c.args(["backup", "--repo", &url, "--token-file"])
            .arg(&token);
        c.args([
            "--source",
            "vm-wan-restart",
            "--base",
            "none",
            "--block-size",
            "256K",
            "--streams",
            "8",
            "--json",
            "--state-dir",
        ])
        .arg(&st);
        c.arg("--disk").arg(format!("disk0={}", dk.display()));
        c
    };
    // Run 1: killed once the repository acknowledged at least 32 records.
    let mut child = cmd()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut acked = 0;
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let j = std::fs::read_dir(&state).ok().and_then(|mut d| {
            d.find_map(|e| {
                e.ok()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            })
        });
        if let Some(j) = j {
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(j.path()).unwrap_or_default())
                    .unwrap_or_default();
            acked = v["disks"]["disk0"]["entries"].as_u64().unwrap_or(0);
            if acked >= 32 {
                break;
            }
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        (32..blocks).contains(&acked),
        "kill point: {acked} records acknowledged"
    );
    // What the repository holds now (acknowledged or not), asked directly.
    let admin = tests::Client::h2(&srv.url(), Some(tests::ADMIN));
    let data = std::fs::read(&disk).unwrap();
    let mut present = 0u64;
    for b in data.chunks(bs as usize) {
        let r = admin
            .send(
                http::Method::HEAD,
                &format!("/v1/chunks/{}", schema::ChunkId::of(b)),
                &[],
                vec![],
            )
            .await;
        present += u64::from(r.status == http::StatusCode::OK);
    }
    assert!(present >= acked);
    // Run 2 continues the session; count what crosses the link.
    let before = proxy.stats.up.load(Ordering::Relaxed);
    let out = tokio::task::spawn_blocking(move || {
        cmd().stderr(std::process::Stdio::null()).output().unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["resumed"], true);
    let run2 = proxy.stats.up.load(Ordering::Relaxed) - before;
    let uploaded = report["chunks_uploaded"].as_u64().unwrap();
    assert_eq!(
        uploaded,
        blocks - present,
        "run 2 uploads exactly the chunks the repository lacked"
    );
    let needed = (blocks - present) * (bs + 64);
    let acked_bytes = acked * bs;
    let resent = run2.saturating_sub(needed);
    eprintln!("mover restart: {acked} records acknowledged, {present} chunks held; run 2 sent {run2} bytes, {resent} beyond the missing chunks ({:.2} % of acknowledged)", 100.0 * resent as f64 / acked_bytes as f64);
    assert!(
        resent * 20 < acked_bytes,
        "re-sent {resent} bytes, 5 % of acknowledged is {}",
        acked_bytes / 20
    );
    restored_equals(
        &srv.url(),
        report["backup_id"].as_str().unwrap(),
        &disk,
        dir.path(),
    )
    .await;
    srv.stop().await;
}
