//! Long jobs do not stall ingest. A verify paced to run for several seconds (`[store]
//! verify_rate`), a GC started behind it, and meanwhile small backups one after another against
//! the `repo-server` binary over HTTP/2: every request of every backup must complete within
//! [`BOUND`], backups must keep completing while verify runs, and verify and GC must still finish
//! with exact results (the one damaged chunk found, exactly the garbage removed, every backup
//! readable).

use std::future::Future;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use schema::{ChunkId, IndexRecord};
use serde_json::{json, Value};
use tests::backup::new_session;
use tests::images::noise;
use tests::{backup_disk, ChildServer, Client, DiskUpload, ADMIN, BACKUP_A};

const BS: u32 = 256 << 10;
/// Longest any one request may take while the jobs run: generous for a loaded 2-core machine
/// (they take milliseconds when nothing holds them back; a stalled upload waits for the whole
/// verify, several seconds).
const BOUND: Duration = Duration::from_secs(2);
/// Chunks of the backup that stays: 5 MiB of incompressible data.
const LIVE_BLOCKS: usize = 20;
/// Chunks of the backup deleted before the jobs: what GC must remove.
const GARBAGE_BLOCKS: usize = 4;

/// Runs `f`, adding how long it took to `slowest`.
async fn timed<T>(slowest: &mut Duration, f: impl Future<Output = T>) -> T {
    let t = Instant::now();
    let out = f.await;
    *slowest = (*slowest).max(t.elapsed());
    out
}

/// One small backup (two fresh blocks), each request timed. Returns its id.
async fn small_backup(c: &Client, data: &[u8], slowest: &mut Duration) -> String {
    let s = new_session();
    let spec = json!({"source": "vm-busy", "disks": [{"name": "d", "size": data.len(), "block_size": BS}]});
    let r = timed(
        slowest,
        c.json(Method::PUT, &format!("/v1/sessions/{s}"), &spec),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let mut recs = Vec::new();
    for (i, block) in data.chunks(BS as usize).enumerate() {
        let id = ChunkId::of(block);
        let len = block.len().to_string();
        let r = timed(
            slowest,
            c.send(
                Method::PUT,
                &format!("/v1/sessions/{s}/chunks/{id}"),
                &[("content-type", "application/zstd"), ("chunk-length", &len)],
                zstd::bulk::compress(block, 1).unwrap(),
            ),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        recs.push(IndexRecord {
            block: i as u64,
            id,
        });
    }
    let body = IndexRecord::encode_all(&recs);
    let sum = blake3::hash(&body).to_hex().to_string();
    let r = timed(
        slowest,
        c.send(
            Method::PUT,
            &format!("/v1/sessions/{s}/disks/d/entries?start=0"),
            &[("content-type", "application/octet-stream")],
            body,
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    let commit = json!({"disks": {"d": {"entries": recs.len(), "records_blake3": sum}}});
    let r = timed(
        slowest,
        c.json(Method::POST, &format!("/v1/sessions/{s}/commit"), &commit),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    r.json()["backup_id"].as_str().unwrap().to_owned()
}

async fn start_job(admin: &Client, kind: &str) -> String {
    let r = admin
        .send(Method::POST, &format!("/v1/admin/{kind}"), &[], Vec::new())
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{kind}: {:?}", r.body);
    r.json()["job"].as_str().unwrap().to_owned()
}

/// The job's report once it is no longer running, else `None`.
async fn finished(admin: &Client, job: &str) -> Option<Value> {
    let rep = admin.get(&format!("/v1/admin/jobs/{job}")).await.json();
    (rep["state"] != "running").then(|| {
        assert_eq!(rep["state"], "done", "{rep}");
        rep
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_keep_completing_while_a_long_verify_runs_and_a_gc_waits() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    // Verify reads 1 MB/s: the ~6.3 MB of chunks below take it about six seconds.
    let srv = ChildServer::start_with(
        &data_dir,
        "127.0.0.1:0",
        "[store]\ngc_margin = \"0s\"\nverify_rate = \"1MB\"\n",
        &[],
    );
    let c = Client::h2(&srv.url(), Some(BACKUP_A));
    let admin = c.with_token(Some(ADMIN));
    let live = noise(LIVE_BLOCKS * BS as usize, 7);
    let live_id = backup_disk(
        &c,
        "vm-live",
        None,
        &[DiskUpload {
            name: "d",
            data: &live,
            block_size: BS,
        }],
    )
    .await;
    let garbage = noise(GARBAGE_BLOCKS * BS as usize, 8);
    let old = backup_disk(
        &c,
        "vm-old",
        None,
        &[DiskUpload {
            name: "d",
            data: &garbage,
            block_size: BS,
        }],
    )
    .await;
    let r = admin
        .send(
            Method::DELETE,
            &format!("/v1/backups/{old}"),
            &[],
            Vec::new(),
        )
        .await;
    assert!(r.status.is_success(), "{:?}", r.body);
    // One chunk of the live backup is damaged on disk: verify must find it.
    let damaged = ChunkId::of(&live[5 * BS as usize..6 * BS as usize]);
    let hex = damaged.hex();
    let file = data_dir.join(format!("chunks/{}/{}/{hex}", &hex[..2], &hex[2..4]));
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&file, bytes).unwrap();

    let t0 = Instant::now();
    let verify = start_job(&admin, "verify").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let gc = start_job(&admin, "gc").await;
    let mut slowest = Duration::ZERO;
    let mut made: Vec<(String, Vec<u8>)> = Vec::new();
    let (mut verify_report, mut gc_report) = (None, None);
    let mut during_verify = 0;
    while verify_report.is_none() || gc_report.is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "jobs still running"
        );
        let data = noise(2 * BS as usize, 1000 + made.len() as u64);
        let id = small_backup(&c, &data, &mut slowest).await;
        made.push((id, data));
        if verify_report.is_none() {
            during_verify += 1;
            verify_report = finished(&admin, &verify).await;
        }
        if gc_report.is_none() {
            gc_report = finished(&admin, &gc).await;
        }
    }
    let verify_secs = t0.elapsed().as_secs_f64();
    let (verify_report, gc_report) = (verify_report.unwrap(), gc_report.unwrap());
    eprintln!(
        "verify ran {verify_secs:.1} s; {during_verify} backups committed meanwhile; \
         slowest request {:.0} ms; gc {}",
        slowest.as_secs_f64() * 1000.0,
        gc_report["result"]
    );
    assert!(
        slowest < BOUND,
        "a request took {slowest:?} while verify and GC ran (bound {BOUND:?}); \
         {during_verify} backups completed during the {verify_secs:.1} s verify"
    );
    assert!(
        verify_secs > 3.0 && during_verify >= 5,
        "verify ran {verify_secs:.1} s with {during_verify} backups meanwhile: too short to show anything"
    );
    // Verify: the damaged chunk and nothing else (the garbage GC removed under it is no loss).
    let v = &verify_report["result"];
    assert_eq!(
        (&v["corrupt"], &v["missing"], &v["affected_backups"]),
        (&json!([damaged]), &json!([]), &json!([live_id])),
        "{verify_report}"
    );
    // GC: exactly the deleted backup's chunks and index blob.
    let g = &gc_report["result"];
    assert_eq!(
        (g["chunks_removed"].as_u64(), g["indexes_removed"].as_u64()),
        (Some(GARBAGE_BLOCKS as u64), Some(1)),
        "{gc_report}"
    );
    let stats = admin.get("/v1/stats").await.json();
    assert_eq!(
        stats["chunks"].as_u64(),
        Some((LIVE_BLOCKS + 2 * made.len()) as u64),
        "{stats}"
    );
    // Every backup made while the jobs ran reads back whole.
    for (id, data) in &made {
        let img = c.get(&format!("/v1/backups/{id}/disks/d/image")).await;
        assert_eq!(img.status, StatusCode::OK);
        assert!(img.body[..] == data[..], "backup {id} reads back wrong");
    }
    drop(srv);
}
