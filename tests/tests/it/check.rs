//! The offline check: clean on a healthy repository; on a damaged one it names every problem
//! and changes nothing; `--repair` fixes what it can without deleting data, after which a new
//! backup heals the rest; and it refuses to run beside a live server.

use std::time::Duration;

use repo_server::catalog::{counter, Catalog};
use schema::ChunkId;
use serde_json::json;
use tests::backup::test_data;
use tests::jobs::{assert_verify_clean, offline_check};
use tests::{backup_disk, snapshot, ChildServer, Client, DiskUpload, ADMIN, BACKUP_A};

fn d(data: &[u8]) -> DiskUpload<'_> {
    DiskUpload {
        name: "d",
        data,
        block_size: 256 << 10,
    }
}

// Multi-threaded: `terminate` blocks its thread, and the client must still answer the server's
// HTTP/2 shutdown PING for the graceful drain to finish before its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_check_names_damage_and_repair_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let bs = 256usize << 10;
    let disk = test_data(10 * bs, 71);
    let other = test_data(3 * bs, 72);
    let srv = ChildServer::start(&data);
    let c = Client::h2(&srv.url(), Some(BACKUP_A));
    let b1 = backup_disk(&c, "vm-k", None, &[d(&disk)]).await;
    backup_disk(&c, "vm-l", None, &[d(&other)]).await;

    // While the server runs, the check refuses (exit 2) and says why.
    let (code, report) = offline_check(&data, false);
    assert_eq!(code, Some(2), "{report}");
    assert!(
        report["stderr"]
            .as_str()
            .unwrap()
            .contains("stop repo-server"),
        "{report}"
    );
    assert_eq!(srv.terminate(Duration::from_secs(20)), Some(0));

    // Healthy: consistent, nothing left over.
    let (code, report) = offline_check(&data, false);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["problems"], json!({}), "{report:#}");
    assert_eq!(report["leftovers"], json!({}), "{report:#}");
    assert_eq!(report["examined"]["backups"], 2);

    // Damage: a chunk file deleted, one truncated, a temp file, an orphan chunk file, and a
    // counter off by 5.
    let ids: Vec<ChunkId> = disk.chunks(bs).map(ChunkId::of).collect();
    let path = |id: &ChunkId| {
        let h = id.hex();
        data.join(format!("chunks/{}/{}/{h}", &h[..2], &h[2..4]))
    };
    std::fs::remove_file(path(&ids[0])).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path(&ids[1]))
        .unwrap();
    f.set_len(10).unwrap();
    drop(f);
    std::fs::write(data.join("tmp/chunks.left-by-a-crash"), b"half").unwrap();
    let orphan = ChunkId::of(b"never recorded");
    std::fs::create_dir_all(path(&orphan).parent().unwrap()).unwrap();
    std::fs::write(path(&orphan), b"frame").unwrap();
    {
        let cat = Catalog::open(&data.join("catalog")).unwrap();
        let mut b = cat.batch();
        b.add(counter::BACKUPS, 5);
        cat.write(b).unwrap();
    }
    let files = |d: &std::path::Path| {
        let mut s = snapshot(d);
        s.retain(|p, _| !p.starts_with("catalog"));
        s
    };
    let before = files(&data);
    let (code, report) = offline_check(&data, false);
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(report["consistent"], false);
    let p = &report["problems"];
    assert_eq!(
        p["chunk_files_missing"]["examples"],
        json!([ids[0]]),
        "{report:#}"
    );
    assert_eq!(
        p["chunk_files_wrong_size"]["examples"],
        json!([ids[1]]),
        "{report:#}"
    );
    assert_eq!(p["counters"]["count"], 1, "{report:#}");
    assert!(p["counters"]["examples"][0]
        .as_str()
        .unwrap()
        .contains("backups: catalog says 7, rows say 2"));
    assert_eq!(report["leftovers"]["temp_files"], 1);
    assert_eq!(report["leftovers"]["orphan_chunk_files"], 1);
    assert_eq!(
        files(&data),
        before,
        "a check without --repair changes no file"
    );

    // Repair: exit 0, nothing deleted that could be data (the orphan and the short file are in
    // quarantine/), and a second check is clean apart from the two chunks now marked bad.
    let (code, report) = offline_check(&data, true);
    assert_eq!(code, Some(0), "{report:#}");
    let r = &report["repaired"];
    assert_eq!(
        (
            r["chunks_marked_bad"].clone(),
            r["temp_files_removed"].clone(),
            r["orphan_chunk_files_quarantined"].clone(),
            r["counters_rebuilt"].clone()
        ),
        (json!(2), json!(1), json!(1), json!(1)),
        "{report:#}"
    );
    assert!(data.join("quarantine").join(orphan.hex()).is_file());
    assert!(data.join("quarantine").join(ids[1].hex()).is_file());
    let (code, report) = offline_check(&data, false);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["problems"], json!({}));
    assert_eq!(report["leftovers"], json!({ "chunks_marked_bad": 2 }));

    // The next backup of the same data re-sends exactly the two bad chunks and heals them.
    let srv = ChildServer::start(&data);
    let c = Client::h2(&srv.url(), Some(BACKUP_A));
    let b2 = backup_disk(&c, "vm-k", None, &[d(&disk)]).await;
    let m = c.get(&format!("/v1/backups/{b2}")).await.json();
    assert_eq!(m["stats"]["new_chunks"], 2, "{m}");
    for b in [&b1, &b2] {
        assert!(c.get(&format!("/v1/backups/{b}/disks/d/image")).await.body == disk);
    }
    assert_verify_clean(&c.with_token(Some(ADMIN))).await;
    assert_eq!(srv.terminate(Duration::from_secs(20)), Some(0));
    let (code, report) = offline_check(&data, false);
    assert_eq!(
        (code, report["leftovers"].clone()),
        (Some(0), json!({})),
        "{report:#}"
    );
}

#[test]
fn check_refuses_what_is_not_a_repository() {
    let dir = tempfile::tempdir().unwrap();
    let (code, report) = offline_check(dir.path(), false);
    assert_eq!(code, Some(2));
    assert!(
        report["stderr"]
            .as_str()
            .unwrap()
            .contains("is not a repository"),
        "{report}"
    );
    assert!(!dir.path().join("catalog").exists(), "nothing was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescan_rebuilds_a_lost_catalog_from_the_manifests() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let bs = 256usize << 10;
    let disk = test_data(6 * bs, 81);
    let other = test_data(2 * bs, 82);
    let srv = ChildServer::start(&data);
    let c = Client::h2(&srv.url(), Some(BACKUP_A));
    let b1 = backup_disk(&c, "vm-r", None, &[d(&disk)]).await;
    let b2 = backup_disk(&c, "vm-s", None, &[d(&other)]).await;
    let before = c.get("/v1/backups").await.json();
    assert_eq!(srv.terminate(Duration::from_secs(20)), Some(0));
    // The catalog is lost; chunks, indexes and manifests remain.
    std::fs::remove_dir_all(data.join("catalog")).unwrap();
    let out = std::process::Command::new(tests::server::server_binary())
        .args(["rescan", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (report["manifests"].clone(), report["adopted"].clone()),
        (json!(2), json!(2)),
        "{report}"
    );
    let srv = ChildServer::start(&data);
    let c = Client::h2(&srv.url(), Some(BACKUP_A));
    assert_eq!(
        c.get("/v1/backups").await.json()["backups"],
        before["backups"]
    );
    for (b, want) in [(&b1, &disk), (&b2, &other)] {
        let img = c.get(&format!("/v1/backups/{b}/disks/d/image")).await;
        assert!(img.body[..] == want[..], "backup {b} restores after rescan");
    }
    assert_verify_clean(&Client::h2(&srv.url(), Some(ADMIN))).await;
    assert_eq!(srv.terminate(Duration::from_secs(20)), Some(0));
    let (code, report) = offline_check(&data, false);
    assert_eq!(code, Some(0), "the rebuilt catalog is consistent: {report}");
}
