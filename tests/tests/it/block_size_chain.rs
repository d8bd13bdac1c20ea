//! A block-size change starts a new chain: `--base latest` over a backup with another block size
//! commits a full backup and says why; an explicit `--base ID` with another block size is
//! refused before anything is created.

use std::os::unix::fs::FileExt;
use std::process::Command;

use source_mover::backup::backup;
use tests::images::noise;
use tests::mover::{client, opts, restore_to};
use tests::{TestServer, BACKUP_A};

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_size_change_starts_a_new_chain() {
    let srv = TestServer::start().await;
    let c = client(&srv.url());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let disk = d.join("disk.raw");
    std::fs::write(&disk, noise(12 * MIB as usize, 1)).unwrap();
    // Day 1: 1 MiB blocks.
    let full = backup(&c, &opts("vm-bs", &disk, &d.join("s1")))
        .await
        .unwrap();
    let day1 = std::fs::read(&disk).unwrap();
    // Day 2: some bytes changed, and the mover now runs with 256 KiB blocks over `latest`.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .unwrap()
        .write_all_at(&noise(300_000, 2), 5 * MIB + 123)
        .unwrap();
    let day2 = std::fs::read(&disk).unwrap();
    let token = d.join("token");
    std::fs::write(&token, BACKUP_A).unwrap();
    let mover = |base: &str| {
        Command::new(tests::mover_binary())
            .args(["backup", "--repo", &srv.url(), "--token-file"])
            .arg(&token)
            .args(["--source", "vm-bs", "--disk"])
            .arg(format!("disk0={}", disk.display()))
            .arg("--state-dir")
            .arg(d.join("s2"))
            .args(["--json", "--block-size", "256K", "--base", base])
            .output()
            .unwrap()
    };
    // An explicit base with another block size: a clear error, and no backup is made.
    let refused = mover(&full.backup_id);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(
        refused.status.code(),
        Some(2),
        "refused before anything: {stderr}"
    );
    assert!(
        stderr.contains("has block size 1M, this backup 256K") && stderr.contains("--base none"),
        "{stderr}"
    );
    let listed: schema::api::BackupList = c.get_json("/v1/backups?source=vm-bs").await.unwrap();
    assert_eq!(listed.backups.len(), 1, "the refused run made no backup");
    // `--base latest`: a full backup, with the reason on stderr.
    let out = mover("latest");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "base {} has block size 1M, this backup 256K: starting a new chain with a full backup",
            full.backup_id
        )),
        "{stderr}"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["base"].is_null(), "a full backup: {report}");
    assert_eq!(report["read_bytes"], 12 * MIB, "{report}");
    let second = report["backup_id"].as_str().unwrap().to_owned();
    let m: schema::api::Manifest = c.get_json(&format!("/v1/backups/{second}")).await.unwrap();
    assert_eq!(m.disks[0].block_size, 256 << 10);
    assert!(m.base.is_none());
    // Both restore byte for byte.
    for (id, want) in [(&full.backup_id, &day1), (&second, &day2)] {
        let out = d.join(format!("{id}.raw"));
        restore_to(&c, id, &out).await;
        assert!(std::fs::read(&out).unwrap() == *want, "backup {id}");
    }
    // The next run over `latest` with the new block size is an incremental of the new chain.
    let out = mover("latest");
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["base"].as_str(), Some(second.as_str()), "{report}");
    srv.stop().await;
}
