//! The gateway binary in front of a real Samba share: full and CBT incremental backups restore
//! byte for byte and leave on the share exactly the design's layout; Samba killed and restarted
//! mid-backup; a mover behind a proxy that cuts connections; `gateway rescan` rebuilding a lost
//! catalog; the lease keeping a second gateway off the share.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use gateway::samba::Samba;
use schema::ChunkId;
use serde_json::Value;
use source_mover::backup::backup;
use source_mover::client::RepoClient;
use source_mover::restore::{resolve, restore};
use tests::images::{build, make_tree, noise, Layout, Table};
use tests::mover::{client, opts};
use tests::wan::{Link, WanProxy};
use tests::{gateway_binary, ChildServer, Client, ADMIN, BACKUP_A};

const MIB: usize = 1 << 20;

fn start_gateway(samba: &Samba, data: &Path) -> ChildServer {
    ChildServer::start_bin(
        &gateway_binary(),
        data,
        "127.0.0.1:0",
        &samba.share_toml("repo"),
        &[],
    )
}

/// A raw image: noise with a zero stretch (never read, restored as a hole).
pub(crate) fn raw_image(path: &Path, mib: usize, seed: u64) -> Vec<u8> {
    let mut d = noise(mib * MIB, seed);
    d[2 * MIB..3 * MIB].fill(0);
    std::fs::write(path, &d).unwrap();
    d
}

pub(crate) async fn restored(url: &str, id: &str, to: &Path) -> Vec<u8> {
    let c = client(url);
    let m = resolve(&c, id, None).await.unwrap();
    restore(&c, &m, "disk0", Some(to), 8, false).await.unwrap();
    std::fs::read(to).unwrap()
}

/// Every chunk file under the share's `chunks/`: name → sound (decodes to bytes with that
/// blake3). Also counts files in `tmp/`.
pub(crate) fn share_chunks(root: &Path) -> (BTreeMap<String, bool>, usize) {
    let mut out = BTreeMap::new();
    for p in tests::files_under(&root.join("chunks")) {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let frame = std::fs::read(&p).unwrap();
        let sound =
            zstd::stream::decode_all(&frame[..]).is_ok_and(|d| ChunkId::of(&d).hex() == name);
        out.insert(name, sound);
    }
    let tmp = std::fs::read_dir(root.join("tmp")).unwrap().count();
    (out, tmp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_and_cbt_incremental_through_the_gateway_restore_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let samba = Samba::start(&dir.path().join("samba")).unwrap();
    let gw = start_gateway(&samba, &dir.path().join("gw"));
    let url = gw.url();
    let caps = Client::h2(&url, None).get("/v1/capabilities").await.json();
    assert_eq!(caps["store"], "smb", "{caps}");
    // The gateway serves the same console and generated API document as repo-server.
    let page = Client::h1(&url, None).get("/").await;
    assert_eq!(page.status, http::StatusCode::OK);
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert_eq!(csp, repo_server::http::console::CSP);
    let doc = Client::h2(&url, None).get("/v1/openapi.json").await.json();
    let paths: std::collections::BTreeSet<&str> =
        repo_server::http::ROUTES.iter().map(|r| r.1).collect();
    assert_eq!(doc["paths"].as_object().map(|p| p.len()), Some(paths.len()));
    let mc = client(&url);
    let img = dir.path().join("disk.raw");
    let day1 = raw_image(&img, 24, 7);
    let mut o = opts("vm-gw", &img, &dir.path().join("state"));
    o.block_size = 256 << 10;
    let full = backup(&mc, &o).await.unwrap();
    // Day two: three changed extents, named in a change list.
    let mut day2 = day1.clone();
    let changed = [(1 << 20, 300_000), (9 << 20, 4096), (20 << 20, 1 << 20)];
    for (i, (off, len)) in changed.iter().enumerate() {
        day2[*off..off + len].copy_from_slice(&noise(*len, 100 + i as u64));
    }
    std::fs::write(&img, &day2).unwrap();
    let cbt = dir.path().join("cbt.json");
    let list: Vec<[usize; 2]> = changed.iter().map(|&(o, l)| [o, l]).collect();
    std::fs::write(
        &cbt,
        serde_json::json!({ "base": full.backup_id, "changed": list }).to_string(),
    )
    .unwrap();
    o.cbt = [("disk0".to_string(), source_mover::cbt::json_file(&cbt))]
        .into_iter()
        .collect();
    let incr = backup(&mc, &o).await.unwrap();
    assert_eq!(incr.base.as_deref(), Some(full.backup_id.as_str()));
    assert!(
        incr.read_bytes <= 3 << 20,
        "CBT reads only changed blocks: {}",
        incr.read_bytes
    );
    assert!(restored(&url, &full.backup_id, &dir.path().join("r1")).await == day1);
    assert!(restored(&url, &incr.backup_id, &dir.path().join("r2")).await == day2);

    // The share holds what the design says, and nothing else.
    let root = samba.share_dir().join("repo");
    let (chunks, tmp) = share_chunks(&root);
    let admin = Client::h2(&url, Some(ADMIN));
    let stats = admin.get("/v1/stats").await.json();
    assert_eq!(
        chunks.len() as u64,
        stats["chunks"].as_u64().unwrap(),
        "{stats}"
    );
    assert!(
        chunks.values().all(|s| *s),
        "every chunk file decodes to its name"
    );
    assert_eq!(tmp, 0, "no temp files left");
    let c = Client::h2(&url, Some(BACKUP_A));
    for id in [&full.backup_id, &incr.backup_id] {
        let api: Value = c.get(&format!("/v1/backups/{id}")).await.json();
        let stored: Value = serde_json::from_slice(
            &std::fs::read(root.join(format!("manifests/{id}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(stored["id"], api["id"]);
        assert_eq!(stored["disks"], api["disks"]);
        let h = api["disks"][0]["index_blake3"].as_str().unwrap();
        assert!(root.join(format!("indexes/{}/{h}", &h[..2])).is_file());
    }
    let names: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for n in &names {
        assert!(
            [
                "chunks",
                "indexes",
                "manifests",
                "tmp",
                "quarantine",
                "gateway.lock"
            ]
            .contains(&n.as_str()),
            "unexpected {n} on the share (the catalog stays local)"
        );
    }
    assert!(dir.path().join("gw/catalog").is_dir());
    assert_eq!(gw.terminate(Duration::from_secs(20)), Some(0));
    assert!(
        !root.join("gateway.lock").exists(),
        "a clean stop releases the lease"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samba_killed_and_restarted_mid_backup_the_backup_completes() {
    let dir = tempfile::tempdir().unwrap();
    let mut samba = Samba::start(&dir.path().join("samba")).unwrap();
    let gw = start_gateway(&samba, &dir.path().join("gw"));
    let url = gw.url();
    let img = dir.path().join("disk.raw");
    let data = raw_image(&img, 48, 21);
    // 6 MB/s: the 48 MiB take about 8 s, so the outage falls in the middle.
    let mc = RepoClient::new(&url, BACKUP_A, Duration::from_secs(120), Some(6_000_000)).unwrap();
    let mut o = opts("vm-outage", &img, &dir.path().join("state"));
    o.block_size = 256 << 10;
    let job = tokio::spawn(async move { backup(&mc, &o).await });
    let root = samba.share_dir().join("repo");
    let count = |root: &Path| share_chunks(root).0.len();
    while count(&root) < 30 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = count(&root);
    samba.kill();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!job.is_finished(), "the outage must fall inside the backup");
    samba.start_again().unwrap();
    let r = job.await.unwrap().unwrap();
    assert!(before < 190, "killed after {before} of ~190 chunks");
    assert!(restored(&url, &r.backup_id, &dir.path().join("r")).await == data);
    // Nothing half-written is visible: every chunk file on the share is whole.
    let (chunks, _) = share_chunks(&root);
    assert!(chunks.values().all(|s| *s), "a torn chunk file is visible");
    tests::jobs::assert_verify_clean(&Client::h2(&url, Some(ADMIN))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mover_behind_a_cutting_proxy_completes_through_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let samba = Samba::start(&dir.path().join("samba")).unwrap();
    let gw = start_gateway(&samba, &dir.path().join("gw"));
    let img = dir.path().join("disk.raw");
    let data = raw_image(&img, 24, 31);
    let link = Link {
        delay: Duration::from_millis(10),
        rate: Some(4_000_000),
    };
    let proxy = Arc::new(WanProxy::start(gw.addr, link).await.unwrap());
    let cutter = proxy.cut_randomly(Duration::from_millis(1500), 7);
    let mc = RepoClient::with_connections(
        &format!("http://{}", proxy.addr),
        BACKUP_A,
        Duration::from_secs(120),
        None,
        2,
    )
    .unwrap();
    let mut o = opts("vm-wan-gw", &img, &dir.path().join("state"));
    o.block_size = 256 << 10;
    let r = backup(&mc, &o).await.unwrap();
    cutter.abort();
    let cuts = proxy.stats.cuts.load(Ordering::Relaxed);
    assert!(cuts >= 2, "the backup must have seen cuts ({cuts})");
    assert!(restored(&gw.url(), &r.backup_id, &dir.path().join("r")).await == data);
}

fn rescan(cfg: &Path, data: &Path) -> (std::process::ExitStatus, Value, String) {
    let out = Command::new(gateway_binary())
        .arg("--config")
        .arg(cfg)
        .arg("--data")
        .arg(data)
        .arg("rescan")
        .env("REPO_LOG", "warn")
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or_default();
    (
        out.status,
        report,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescan_rebuilds_a_lost_catalog_from_the_share() {
    let dir = tempfile::tempdir().unwrap();
    let samba = Samba::start(&dir.path().join("samba")).unwrap();
    let old = dir.path().join("gw-old");
    let gw = start_gateway(&samba, &old);
    let url = gw.url();
    let mc = client(&url);
    // An ext4 disk (so there is a guest file catalog) backed up twice, a raw disk of another
    // source, and one backup deleted.
    let tree = make_tree(dir.path());
    let ext = build(
        dir.path(),
        "ext",
        Layout::ext4(Table::Dos, 4096, 32, 4, 1),
        &tree,
    );
    let st = dir.path().join("state");
    let a1 = backup(&mc, &opts("vm-a", &ext.path, &st)).await.unwrap();
    let a2 = backup(&mc, &opts("vm-a", &ext.path, &st)).await.unwrap();
    let raw = dir.path().join("raw.raw");
    let raw_data = raw_image(&raw, 8, 41);
    let b1 = backup(&mc, &opts("vm-b", &raw, &st)).await.unwrap();
    let admin = Client::h2(&url, Some(ADMIN));
    let del = admin
        .send(
            http::Method::DELETE,
            &format!("/v1/backups/{}", a1.backup_id),
            &[],
            "",
        )
        .await;
    assert_eq!(del.status.as_u16(), 204, "{:?}", del.body);
    let c = Client::h2(&url, Some(BACKUP_A));
    let before = c.get("/v1/backups?limit=100").await.json();
    let listing = c
        .get(&format!("/v1/backups/{}/files?path=/etc", a2.backup_id))
        .await
        .json();
    let ext_before = restored(&url, &a2.backup_id, &dir.path().join("e1")).await;
    assert_eq!(gw.terminate(Duration::from_secs(20)), Some(0));

    // The old gateway's local disk is lost: a new data dir, the same share.
    let new = dir.path().join("gw-new");
    let cfg = old.with_extension("toml");
    let (status, report, err) = rescan(&cfg, &new);
    assert!(status.success(), "{err}");
    assert_eq!(report["manifests"], 2, "{report}");
    assert_eq!(report["adopted"], 2, "{report}");
    assert!(report["chunks"].as_u64().unwrap() > 0);
    // Repeating it adds nothing.
    let (status, report, _) = rescan(&cfg, &new);
    assert!(status.success());
    assert_eq!(
        (report["adopted"].clone(), report["already_known"].clone()),
        (0.into(), 2.into())
    );

    let gw = start_gateway(&samba, &new);
    let url = gw.url();
    let c = Client::h2(&url, Some(BACKUP_A));
    let after = c.get("/v1/backups?limit=100").await.json();
    let ids = |v: &Value| -> Vec<String> {
        v["backups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&after), ids(&before), "the same backups, newest first");
    assert!(
        !ids(&after).contains(&a1.backup_id),
        "a deleted backup stays deleted"
    );
    assert_eq!(
        c.get(&format!("/v1/backups/{}/files?path=/etc", a2.backup_id))
            .await
            .json(),
        listing,
        "the guest file catalog is back"
    );
    assert!(restored(&url, &a2.backup_id, &dir.path().join("e2")).await == ext_before);
    assert!(restored(&url, &b1.backup_id, &dir.path().join("r2")).await == raw_data);
    // New backups build on the adopted ones and send nothing already on the share.
    let a3 = backup(&client(&url), &opts("vm-a", &ext.path, &st))
        .await
        .unwrap();
    assert_eq!(a3.base.as_deref(), Some(a2.backup_id.as_str()));
    assert_eq!(a3.chunks_uploaded, 0, "{a3:?}");
    let stats = Client::h2(&url, Some(ADMIN)).get("/v1/stats").await.json();
    assert_eq!(stats["backups"], 3, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_keeps_a_second_gateway_off_the_share() {
    let dir = tempfile::tempdir().unwrap();
    let samba = Samba::start(&dir.path().join("samba")).unwrap();
    let first = start_gateway(&samba, &dir.path().join("gw1"));
    // A second gateway, another data dir, the same repository on the share.
    let second: PathBuf = dir.path().join("gw2");
    std::fs::create_dir_all(&second).unwrap();
    let cfg = second.with_extension("toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\ndata = \"{}\"\n{}",
            second.display(),
            samba.share_toml("repo")
        ),
    )
    .unwrap();
    let out = Command::new(gateway_binary())
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("is in use by gateway"), "{err}");
    // Another directory of the same share is another repository: no conflict.
    let other = ChildServer::start_bin(
        &gateway_binary(),
        &dir.path().join("gw3"),
        "127.0.0.1:0",
        &samba.share_toml("other-repo"),
        &[],
    );
    drop(other);
    // Once the first stops, the second starts.
    assert_eq!(first.terminate(Duration::from_secs(20)), Some(0));
    let g2 = ChildServer::start_bin(
        &gateway_binary(),
        &second,
        "127.0.0.1:0",
        &samba.share_toml("repo"),
        &[],
    );
    let caps = Client::h2(&g2.url(), None)
        .get("/v1/capabilities")
        .await
        .json();
    assert_eq!(caps["store"], "smb");
}
