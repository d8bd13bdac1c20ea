//! Lifecycle safety: GC racing live backups, and corruption found, named and healed.

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::json;
use tests::backup::test_data;
use tests::jobs::{assert_verify_clean, run_job, run_job_with};
use tests::{backup_disk, Client, DiskUpload, TestServer, ADMIN, BACKUP_A};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_looping_during_eight_movers_loses_nothing() {
    // No safety margin: GC may remove any chunk nothing references, at any moment.
    let srv = TestServer::start_with(|c| c.store.gc_margin = Duration::ZERO).await;
    let c = Client::h2(&srv.url(), Some(BACKUP_A));
    let admin = c.with_token(Some(ADMIN));
    let bs = 256usize << 10;
    let pool: Vec<Vec<u8>> = (0..16).map(|i| test_data(bs, 300 + i)).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gc = {
        let (admin, stop) = (admin.clone(), stop.clone());
        tokio::spawn(async move {
            let mut runs = 0u64;
            let mut removed = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let rep = run_job(&admin, "gc").await;
                removed += rep["result"]["chunks_removed"].as_u64().unwrap_or(0);
                runs += 1;
            }
            (runs, removed)
        })
    };
    let mut movers = Vec::new();
    for m in 0..8u64 {
        let (c, admin, pool) = (c.clone(), admin.clone(), pool.clone());
        movers.push(tokio::spawn(async move {
            let mut kept = Vec::new();
            let mut previous: Option<String> = None;
            for round in 0..3u64 {
                // Shared blocks (overlapping between movers and rounds) plus blocks of this round.
                let mut disk = Vec::new();
                for k in 0..10u64 {
                    disk.extend_from_slice(&pool[((m + k * 3 + round) % 16) as usize]);
                }
                disk.extend_from_slice(&test_data(2 * bs, 1000 + m * 10 + round));
                let id = backup_disk(
                    &c,
                    &format!("vm-{m}"),
                    None,
                    &[DiskUpload {
                        name: "d",
                        data: &disk,
                        block_size: bs as u32,
                    }],
                )
                .await;
                // The previous backup goes away: its chunks become garbage unless shared.
                if let Some(p) = previous.take() {
                    assert_eq!(
                        admin
                            .send(Method::DELETE, &format!("/v1/backups/{p}"), &[], vec![])
                            .await
                            .status,
                        StatusCode::NO_CONTENT
                    );
                }
                previous = Some(id.clone());
                kept = vec![(id, disk)];
            }
            kept
        }));
    }
    let mut survivors = Vec::new();
    for m in movers {
        survivors.extend(m.await.unwrap());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (runs, removed) = gc.await.unwrap();
    assert!(runs >= 2, "GC ran {runs} times");
    assert!(
        removed > 0,
        "GC removed nothing: the race was not exercised"
    );
    let rep = run_job(&admin, "gc").await;
    eprintln!(
        "gc race: {runs} GC runs during the backups removed {removed} chunks; final GC {}",
        rep["result"]
    );
    for (id, disk) in &survivors {
        assert!(
            c.get(&format!("/v1/backups/{id}/disks/d/image")).await.body == *disk,
            "backup {id} differs after GC"
        );
    }
    assert_verify_clean(&admin).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_damage_names_backups_and_a_new_backup_heals() {
    let srv = TestServer::start().await;
    let c = Client::h2(&srv.url(), Some(BACKUP_A));
    let admin = c.with_token(Some(ADMIN));
    let bs = 256usize << 10;
    let disk = test_data(12 * bs, 55);
    let other = test_data(4 * bs, 56);
    fn d(data: &[u8]) -> DiskUpload<'_> {
        DiskUpload {
            name: "d",
            data,
            block_size: 256 << 10,
        }
    }
    let b1 = backup_disk(&c, "vm-c", None, &[d(&disk)]).await;
    let b2 = backup_disk(&c, "vm-other", None, &[d(&other)]).await;
    // Flip bytes in two chunk files of vm-c and delete a third.
    let ids: Vec<schema::ChunkId> = disk.chunks(bs).map(schema::ChunkId::of).collect();
    let path = |id: &schema::ChunkId| {
        let h = id.hex();
        srv.store_dir()
            .join(format!("chunks/{}/{}/{h}", &h[..2], &h[2..4]))
    };
    for id in &ids[..2] {
        let mut b = std::fs::read(path(id)).unwrap();
        let n = b.len();
        b[n / 2] ^= 0xff;
        b[n - 1] ^= 0x01;
        std::fs::write(path(id), b).unwrap();
    }
    std::fs::remove_file(path(&ids[2])).unwrap();
    let v = run_job(&admin, "verify").await;
    let mut corrupt: Vec<String> = serde_json::from_value(v["result"]["corrupt"].clone()).unwrap();
    corrupt.sort();
    let mut want: Vec<String> = ids[..2].iter().map(|i| i.to_string()).collect();
    want.sort();
    assert_eq!(corrupt, want, "{v}");
    assert_eq!(v["result"]["missing"], json!([ids[2]]));
    assert_eq!(
        v["result"]["affected_backups"],
        json!([b1]),
        "only the backup that references them"
    );
    // A restore of the damaged backup fails loudly rather than returning wrong bytes.
    let r = c
        .try_send(
            Method::GET,
            &format!("/v1/backups/{b1}/disks/d/image"),
            &[],
            vec![],
        )
        .await;
    assert!(
        r.is_err(),
        "the image stream must break off at the damaged chunk, not return bytes"
    );
    assert!(c.get(&format!("/v1/backups/{b2}/disks/d/image")).await.body == other);
    // The next backup of the same data re-sends exactly the damaged chunks and heals them.
    let b3 = backup_disk(&c, "vm-c", None, &[d(&disk)]).await;
    let m = c.get(&format!("/v1/backups/{b3}")).await.json();
    assert_eq!(
        m["stats"]["new_chunks"], 3,
        "exactly the three damaged chunks are sent again: {m}"
    );
    for b in [&b1, &b3] {
        assert!(
            c.get(&format!("/v1/backups/{b}/disks/d/image")).await.body == disk,
            "backup {b} after healing"
        );
    }
    assert_verify_clean(&admin).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_by_fraction_and_by_age() {
    let srv = TestServer::start().await;
    let c = Client::h2(&srv.url(), Some(BACKUP_A));
    let admin = c.with_token(Some(ADMIN));
    let bs = 256usize << 10;
    // 40 distinct chunks (test_data's zero runs make holes; count what is stored).
    let disk = test_data(48 * bs, 57);
    backup_disk(
        &c,
        "vm-v",
        None,
        &[DiskUpload {
            name: "d",
            data: &disk,
            block_size: bs as u32,
        }],
    )
    .await;
    let stored = c.with_token(Some(ADMIN)).get("/v1/stats").await.json()["chunks"]
        .as_u64()
        .unwrap();
    assert!(stored >= 30, "{stored}");
    // Never verified: an age-limited verify checks them all, a second one none.
    let v = run_job_with(&admin, "verify", &json!({"not_verified_days": 7})).await;
    assert_eq!(
        (
            v["result"]["chunks_checked"].as_u64(),
            v["result"]["chunks_skipped"].as_u64()
        ),
        (Some(stored), Some(0)),
        "{v}"
    );
    let v = run_job_with(&admin, "verify", &json!({"not_verified_days": 7})).await;
    assert_eq!(
        (
            v["result"]["chunks_checked"].as_u64(),
            v["result"]["chunks_skipped"].as_u64()
        ),
        (Some(0), Some(stored)),
        "{v}"
    );
    // Eight days later they are due again.
    srv.repo
        .set_clock(repo_server::repo::now_ms() + 8 * 86_400_000);
    let v = run_job_with(&admin, "verify", &json!({"not_verified_days": 7})).await;
    assert_eq!(v["result"]["chunks_checked"].as_u64(), Some(stored), "{v}");
    // A quarter: a sample, neither none nor all (P(0 or all of ≥30) < 2e-4).
    let v = run_job_with(&admin, "verify", &json!({"fraction": 0.25})).await;
    let checked = v["result"]["chunks_checked"].as_u64().unwrap();
    assert!(checked > 0 && checked < stored, "{v}");
    assert_eq!(
        checked + v["result"]["chunks_skipped"].as_u64().unwrap(),
        stored
    );
    // Bad options are refused before any job starts.
    for body in [
        json!({"fraction": 0}),
        json!({"fraction": 1.5}),
        json!({"not_verified_days": -1}),
        json!({"every": true}),
    ] {
        let r = admin.json(Method::POST, "/v1/admin/verify", &body).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::UNPROCESSABLE_ENTITY, "INVALID_BODY".into()),
            "{body}"
        );
    }
    srv.stop().await;
}
