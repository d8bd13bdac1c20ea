//! Lifecycle safety: GC racing live backups, and corruption found, named and healed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
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
    let stop = Arc::new(AtomicBool::new(false));
    // GC runs completed so far: a mover that deleted a backup waits for two more, so at least one
    // whole run starts after the delete and finds its garbage while the other movers upload.
    // Without this, on a slow store (the SMB share) every run could finish before any delete and
    // the race would not be exercised.
    let completed = Arc::new(AtomicU64::new(0));
    let gc = {
        let (admin, stop, completed) = (admin.clone(), stop.clone(), completed.clone());
        tokio::spawn(async move {
            let mut removed = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let rep = run_job(&admin, "gc").await;
                removed += rep["result"]["chunks_removed"].as_u64().unwrap_or(0);
                completed.fetch_add(1, Ordering::SeqCst);
            }
            (completed.load(Ordering::SeqCst), removed)
        })
    };
    let mut movers = Vec::new();
    for m in 0..8u64 {
        let (c, admin, pool) = (c.clone(), admin.clone(), pool.clone());
        let completed = completed.clone();
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
                    let target = completed.load(Ordering::SeqCst) + 2;
                    let waited = std::time::Instant::now();
                    while completed.load(Ordering::SeqCst) < target {
                        assert!(
                            waited.elapsed() < Duration::from_secs(300),
                            "GC made no progress in 300 s"
                        );
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
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
    stop.store(true, Ordering::Relaxed);
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

/// The index store of [`commits_while_gc_lists_index_blobs_keep_their_index_blobs`]: the first
/// listing (GC's index phase; nothing else lists index blobs) tells the test it has begun and
/// waits until the test has committed backups, then lists, so the listing holds index blobs of
/// backups that GC's snapshot does not know. Everything else goes straight to the local store.
#[derive(Debug)]
struct ListingGate {
    inner: std::sync::Arc<dyn repo_server::store::BlobStore>,
    gate: std::sync::Mutex<Option<ListingSignals>>,
}

/// (tell the test the listing began, wait for the test to let it go on).
type ListingSignals = (std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>);

impl repo_server::store::BlobStore for ListingGate {
    fn put(&self, id: &schema::ChunkId, bytes: &[u8]) -> std::io::Result<bool> {
        self.inner.put(id, bytes)
    }
    fn replace(&self, id: &schema::ChunkId, bytes: &[u8]) -> std::io::Result<()> {
        self.inner.replace(id, bytes)
    }
    fn get(&self, id: &schema::ChunkId) -> std::io::Result<Vec<u8>> {
        self.inner.get(id)
    }
    fn stream(
        &self,
        id: &schema::ChunkId,
        sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        self.inner.stream(id, sink)
    }
    fn len(&self, id: &schema::ChunkId) -> std::io::Result<Option<u64>> {
        self.inner.len(id)
    }
    fn delete(&self, id: &schema::ChunkId) -> std::io::Result<()> {
        self.inner.delete(id)
    }
    fn list(
        &self,
        after: Option<&schema::ChunkId>,
        limit: usize,
    ) -> std::io::Result<repo_server::store::Page<schema::ChunkId>> {
        let signals = self.gate.lock().unwrap().take();
        if let Some((began, go_on)) = signals {
            let _ = began.send(());
            let _ = go_on.recv_timeout(Duration::from_secs(60));
        }
        self.inner.list(after, limit)
    }
    fn quarantine(&self, id: &schema::ChunkId) -> std::io::Result<()> {
        self.inner.quarantine(id)
    }
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn may_write(&self) -> std::io::Result<()> {
        self.inner.may_write()
    }
}

/// GC lists the index blobs without holding the `gc` lock, and backups committed while it
/// lists keep their index blobs: one of a new incremental, and one of a backup whose disk is
/// byte for byte a deleted backup's (its commit finds that garbage index blob still in the store
/// and only marks it). Neither is in GC's snapshot, both are in its listing; only the marks
/// their commits wrote save them. A blob that really is garbage still goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commits_while_gc_lists_index_blobs_keep_their_index_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut stores = repo_server::repo::Stores::local(&data).unwrap();
    let (began_tx, began_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel();
    stores.indexes = std::sync::Arc::new(ListingGate {
        inner: stores.indexes.clone(),
        gate: std::sync::Mutex::new(Some((began_tx, go_rx))),
    });
    let mut cfg = repo_server::Config {
        data: data.clone(),
        tokens: tests::server::tokens(),
        ..Default::default()
    };
    cfg.store.gc_margin = Duration::ZERO;
    let app = repo_server::App::open_with(cfg, Some(stores)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(repo_server::run(listener, app, async {
        let _ = stop_rx.await;
    }));
    let c = Client::h2(&url, Some(BACKUP_A));
    let admin = c.with_token(Some(ADMIN));
    let bs = 256usize << 10;
    fn disk(data: &[u8]) -> DiskUpload<'_> {
        DiskUpload {
            name: "d",
            data,
            block_size: 256 << 10,
        }
    }
    let delete = |id: String| {
        let admin = admin.clone();
        async move {
            let r = admin
                .send(Method::DELETE, &format!("/v1/backups/{id}"), &[], vec![])
                .await;
            assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
        }
    };
    // Two deleted backups (garbage: their chunks and index blobs) and a kept base.
    let revived = test_data(6 * bs, 71);
    let gone = test_data(5 * bs, 72);
    let base = test_data(8 * bs, 73);
    delete(backup_disk(&c, "vm-revived", None, &[disk(&revived)]).await).await;
    delete(backup_disk(&c, "vm-gone", None, &[disk(&gone)]).await).await;
    let base_id = backup_disk(&c, "vm-base", None, &[disk(&base)]).await;

    let r = admin
        .send(Method::POST, "/v1/admin/gc", &[], Vec::new())
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let job = r.json()["job"].as_str().unwrap().to_owned();
    tokio::task::spawn_blocking(move || began_rx.recv_timeout(Duration::from_secs(60)))
        .await
        .unwrap()
        .expect("GC reached its index listing");
    // GC is inside its listing now. Two backups are made and committed meanwhile; were GC
    // holding the write lock, their uploads and commits could not finish.
    let mut incremental = base.clone();
    incremental[..bs].copy_from_slice(&test_data(bs, 74));
    let during = tokio::time::timeout(Duration::from_secs(30), async {
        let inc = backup_disk(&c, "vm-base", Some(&base_id), &[disk(&incremental)]).await;
        let again = backup_disk(&c, "vm-revived", None, &[disk(&revived)]).await;
        (inc, again)
    })
    .await;
    go_tx.send(()).unwrap();
    let (inc_id, again_id) =
        during.expect("backups must complete while GC lists index blobs (no lock is held)");
    let rep = loop {
        let rep = admin.get(&format!("/v1/admin/jobs/{job}")).await.json();
        if rep["state"] != "running" {
            break rep;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(rep["state"], "done", "{rep}");
    assert_eq!(
        rep["result"]["indexes_removed"], 1,
        "only the deleted backup's index blob goes: {rep}"
    );
    let chunks_of = |data: &[u8]| -> std::collections::HashSet<schema::ChunkId> {
        data.chunks(bs)
            .filter(|b| b.iter().any(|&x| x != 0))
            .map(schema::ChunkId::of)
            .collect()
    };
    let garbage = &(&chunks_of(&revived) | &chunks_of(&gone)) - &chunks_of(&base);
    assert_eq!(
        rep["result"]["chunks_removed"],
        garbage.len(),
        "the deleted backups' chunks went, in the sweep before the listing: {rep}"
    );
    for (id, want) in [
        (&base_id, &base),
        (&inc_id, &incremental),
        (&again_id, &revived),
    ] {
        let r = c.get(&format!("/v1/backups/{id}/disks/d/image")).await;
        assert_eq!(r.status, StatusCode::OK, "backup {id}: {:?}", r.body);
        assert!(r.body == *want, "backup {id} differs after GC");
    }
    // The next GC, with no race, finds nothing more to remove of them.
    let rep = run_job(&admin, "gc").await;
    assert_eq!(rep["result"]["indexes_removed"], 0, "{rep}");
    assert_eq!(rep["result"]["chunks_removed"], 0, "{rep}");
    assert_verify_clean(&admin).await;
    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
}
