//! GC on a repository of a million chunks: the mark set lives in RocksDB, not in memory, so the
//! server's peak RSS stays under 256 MiB; the report's figures match what was planted.
//!
//! The repository is synthetic (planting a million chunks through HTTP would take an hour of
//! fsyncs): chunk rows, owner rows, index blobs and manifests are written with the server's own
//! catalog and blob-store code, and files exist for every chunk GC must remove. Then the real
//! `repo-server` binary runs GC over HTTP and `repo-server check` confirms the result.
//! `GC_SCALE_CHUNKS` overrides the million.

use std::time::{Duration, Instant};

use repo_server::catalog::{counter, Catalog, ChunkMeta};
use repo_server::store::local::BlobDir;
use repo_server::store::BlobStore;
use schema::api::{BackupStats, Manifest, ManifestDisk};
use schema::ChunkId;
use tests::jobs::run_job;
use tests::{ChildServer, Client, ADMIN};

fn id(n: u64) -> ChunkId {
    ChunkId::of(&n.to_le_bytes())
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_of_a_million_chunks_stays_under_256_mib() {
    let total: u64 = std::env::var("GC_SCALE_CHUNKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let backups = 10u64;
    let garbage = total / 10;
    let per_backup = (total - garbage) / backups;
    let live = per_backup * backups;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let t = Instant::now();
    {
        let cat = Catalog::open(&data.join("catalog")).unwrap();
        let tmp = data.join("tmp");
        let chunks = BlobDir::open(data.join("chunks"), tmp.clone(), 2).unwrap();
        let indexes = BlobDir::open(data.join("indexes"), tmp, 1).unwrap();
        let meta = ChunkMeta {
            raw_len: 4096,
            stored_len: 16,
            touched_ms: 0,
            flags: 0,
            sealed: None,
        };
        let mut b = cat.batch();
        for n in 0..live + garbage {
            b.put_chunk(&id(n), meta);
            b.put_owner("acme", &id(n));
            if b.len() >= 200_000 {
                cat.write(std::mem::replace(&mut b, cat.batch())).unwrap();
            }
        }
        b.add(counter::CHUNKS, (live + garbage) as i64);
        b.add(counter::STORED_BYTES, (16 * (live + garbage)) as i64);
        for k in 0..backups {
            let mut blob = Vec::with_capacity(per_backup as usize * 32);
            for n in k * per_backup..(k + 1) * per_backup {
                blob.extend_from_slice(&id(n).0);
            }
            let h = ChunkId::of(&blob);
            indexes.put(&h, &blob).unwrap();
            let created = 1_700_000_000_000 + k as i64 * 86_400_000;
            let m = Manifest {
                id: format!("20231114T{:02}0000Z-{:08x}", k, k).parse().unwrap(),
                tenant: "acme".into(),
                source: format!("vm-{k}"),
                created: schema::time::rfc3339(created),
                base: None,
                labels: Default::default(),
                disks: vec![ManifestDisk {
                    name: "d".parse().unwrap(),
                    size: per_backup * 4096,
                    block_size: 4096,
                    blocks: per_backup,
                    holes: 0,
                    index_blake3: h.hex(),
                }],
                stats: BackupStats {
                    logical_bytes: per_backup * 4096,
                    ..Default::default()
                },
                metadata: serde_json::Value::Null,
                session: "planted".into(),
                file_indexes: vec![],
                encrypted: false,
                encryption: None,
            };
            b.put_backup(&m, created).unwrap();
            b.add(counter::BACKUPS, 1);
            b.add(counter::LOGICAL_BYTES, (per_backup * 4096) as i64);
        }
        cat.write(b).unwrap();
        // Files for the chunks GC must remove (16 bytes each; GC only unlinks them).
        for n in live..live + garbage {
            let p = chunks.path(&id(n));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, [0u8; 16]).unwrap();
        }
    }
    println!(
        "planted {total} chunks ({live} in {backups} backups, {garbage} garbage) in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let srv = ChildServer::start(&data);
    let admin = Client::h2(&srv.url(), Some(ADMIN));
    let before = vm_hwm_kib(srv.pid());
    let t = Instant::now();
    let job = run_job(&admin, "gc").await;
    let took = t.elapsed();
    let peak = vm_hwm_kib(srv.pid());
    let r = &job["result"];
    println!(
        "GC of {total} chunks: {:.1} s (server's own figure {:.1} s), server peak RSS {} MiB (before GC {} MiB); {r}",
        took.as_secs_f64(),
        r["seconds"].as_f64().unwrap_or(0.0),
        peak / 1024,
        before / 1024
    );
    assert_eq!(r["chunks_removed"], garbage, "{job}");
    assert_eq!(r["chunks_kept"], live, "{job}");
    assert_eq!(r["bytes_freed"], garbage * 16, "{job}");
    assert_eq!(r["owner_rows_removed"], garbage, "{job}");
    assert!(
        peak < 256 * 1024,
        "server peak RSS {} MiB ≥ 256 MiB",
        peak / 1024
    );
    assert_eq!(srv.terminate(Duration::from_secs(30)), Some(0));
    // Offline, everything agrees: counters, rows and files (no planted file is left over, but
    // the live chunks have no files — planted rows only — so those count as missing files).
    let out = std::process::Command::new(tests::server::server_binary())
        .args(["check", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["examined"]["chunk_rows"], live, "{report:#}");
    assert_eq!(
        report["examined"]["chunk_files"], 0,
        "every garbage file was unlinked"
    );
    assert!(report["problems"].get("counters").is_none(), "{report:#}");
}
