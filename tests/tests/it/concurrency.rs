//! Eight sessions upload overlapping chunk sets at once: shared chunks are stored once.

use std::collections::HashSet;

use schema::ChunkId;
use tests::backup::test_data;
use tests::{backup_disk, Client, DiskUpload, TestServer, BACKUP_A};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_overlapping_sessions_store_each_chunk_once() {
    let srv = TestServer::start().await;
    let c = Client::h2(&srv.url(), Some(BACKUP_A));
    let bs = 256usize << 10;
    // A pool of 24 distinct blocks; each disk takes 16 of them (overlapping) plus 2 of its own.
    let pool: Vec<Vec<u8>> = (0..24).map(|i| test_data(bs, 1000 + i)).collect();
    let disks: Vec<Vec<u8>> = (0..8u64)
        .map(|n| {
            let mut d = Vec::new();
            for k in 0..16 {
                d.extend_from_slice(&pool[((n * 3 + k * 5) % 24) as usize]);
            }
            d.extend_from_slice(&test_data(2 * bs, 5000 + n));
            d.extend_from_slice(&vec![0u8; bs]);
            d
        })
        .collect();
    let mut distinct = HashSet::new();
    for d in &disks {
        for b in d.chunks(bs) {
            if b.iter().any(|&x| x != 0) {
                distinct.insert(ChunkId::of(b));
            }
        }
    }
    let mut tasks = Vec::new();
    for (n, d) in disks.iter().enumerate() {
        let c = c.clone();
        let d = d.clone();
        tasks.push(tokio::spawn(async move {
            backup_disk(
                &c,
                &format!("vm-{n}"),
                None,
                &[DiskUpload {
                    name: "disk0",
                    data: &d,
                    block_size: bs as u32,
                }],
            )
            .await
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    let files = tests::files_under(&srv.store_dir().join("chunks")).len();
    assert_eq!(
        files,
        distinct.len(),
        "each distinct chunk stored exactly once"
    );
    let stats = c
        .with_token(Some(tests::ADMIN))
        .get("/v1/stats")
        .await
        .json();
    assert_eq!(stats["chunks"], distinct.len());
    assert_eq!(stats["backups"], 8);
    for (id, d) in ids.iter().zip(&disks) {
        let r = c.get(&format!("/v1/backups/{id}/disks/disk0/image")).await;
        assert!(r.body == *d, "backup {id} differs");
    }
    srv.stop().await;
}
