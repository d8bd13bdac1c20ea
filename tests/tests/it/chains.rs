//! Backup chains: a changed-block list counts from the backup it names, and a chunk the base
//! lost does not block the chain (the next incremental sends it again).

use std::path::Path;
use std::process::Command;

use schema::ChunkId;
use serde_json::json;
use source_mover::backup::backup;
use source_mover::client::RepoClient;
use source_mover::restore::{resolve, restore};
use tests::images::noise;
use tests::jobs::{assert_verify_clean, run_job};
use tests::mover::{client, opts};
use tests::{mover_binary, Client, TestServer, ADMIN, BACKUP_A};

const BS: usize = 256 << 10;

async fn restored(c: &RepoClient, id: &str, out: &Path) -> Vec<u8> {
    let m = resolve(c, id, None).await.unwrap();
    restore(c, &m, "disk0", Some(out), 8, false).await.unwrap();
    std::fs::read(out).unwrap()
}

async fn backup_count(admin: &Client, source: &str) -> usize {
    let v = admin
        .get(&format!("/v1/backups?source={source}&limit=100"))
        .await
        .json();
    v["backups"].as_array().map(Vec::len).unwrap_or(0)
}

/// The mover binary's CBT incremental of `disk` over the latest backup: (exit code, stderr).
fn mover_cbt(url: &str, dir: &Path, disk: &Path, list: &Path) -> (Option<i32>, String) {
    let token = dir.join("token");
    std::fs::write(&token, BACKUP_A).unwrap();
    let out = Command::new(mover_binary())
        .args(["backup", "--repo", url, "--token-file"])
        .arg(&token)
        .args(["--source", "vm-cbt", "--block-size", "256K", "--json"])
        .arg("--disk")
        .arg(format!("disk0={}", disk.display()))
        .arg("--cbt")
        .arg(format!("disk0={}", list.display()))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Fails without the fix: a list without `base`, or counting from another backup, was applied
/// to whatever the newest backup was, and the incremental silently left out changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_block_list_is_used_only_over_the_base_it_names() {
    let srv = TestServer::start().await;
    let c = client(&srv.url());
    let admin = Client::h2(&srv.url(), Some(ADMIN));
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.raw");
    let day1 = noise(12 * BS, 3);
    std::fs::write(&img, &day1).unwrap();
    let mut o = opts("vm-cbt", &img, &dir.path().join("state"));
    o.block_size = BS as u32;
    let a = backup(&c, &o).await.unwrap().backup_id;
    // Day 2 changes block 2 (the list says so) and block 7 (which a list counting from a later
    // backup would not name).
    let mut day2 = day1.clone();
    day2[2 * BS..2 * BS + 1000].copy_from_slice(&noise(1000, 4));
    std::fs::write(&img, &day2).unwrap();
    let list = dir.path().join("cbt.json");

    // No base: refused with exit code 2, nothing committed.
    std::fs::write(&list, json!({"changed": [[2 * BS, 1000]]}).to_string()).unwrap();
    let (code, err) = mover_cbt(&srv.url(), dir.path(), &img, &list);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("names no base backup"), "{err}");
    assert_eq!(backup_count(&admin, "vm-cbt").await, 1);

    // A later backup B exists; a list counting from A does not describe the changes since B.
    day2[7 * BS..7 * BS + 10].copy_from_slice(b"0123456789");
    std::fs::write(&img, &day2).unwrap();
    let b = backup(&c, &o).await.unwrap().backup_id;
    std::fs::write(
        &list,
        json!({"base": a, "changed": [[2 * BS, 1000]]}).to_string(),
    )
    .unwrap();
    let (code, err) = mover_cbt(&srv.url(), dir.path(), &img, &list);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!("counts from backup {a}")) && err.contains(&b),
        "{err}"
    );
    assert_eq!(backup_count(&admin, "vm-cbt").await, 2);

    // The list that counts from B is used, and the backup is exact.
    day2[9 * BS..9 * BS + 10].copy_from_slice(b"abcdefghij");
    std::fs::write(&img, &day2).unwrap();
    std::fs::write(
        &list,
        json!({"base": b, "changed": [[9 * BS, 10]]}).to_string(),
    )
    .unwrap();
    let (code, err) = mover_cbt(&srv.url(), dir.path(), &img, &list);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(backup_count(&admin, "vm-cbt").await, 3);
    let latest = resolve(&c, "latest", Some("vm-cbt")).await.unwrap();
    assert_eq!(latest.base.as_ref().map(ToString::to_string), Some(b));
    let got = restored(&c, &latest.id.to_string(), &dir.path().join("r.raw")).await;
    assert!(got == day2, "the incremental over B restores day 2");
    srv.stop().await;
}

/// Fails without the fix: the commit answered 422 `MISSING_CHUNKS` for the damaged chunk the
/// incremental inherits, and every later incremental failed the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_base_chunk_is_sent_again_by_the_next_cbt_incremental() {
    let srv = TestServer::start().await;
    let c = client(&srv.url());
    let admin = Client::h2(&srv.url(), Some(ADMIN));
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.raw");
    let day1 = noise(16 * BS, 11);
    std::fs::write(&img, &day1).unwrap();
    let mut o = opts("vm-heal", &img, &dir.path().join("state"));
    o.block_size = BS as u32;
    let full = backup(&c, &o).await.unwrap();

    // Damage block 3's chunk and let verify find it; delete block 5's.
    let path = |id: &ChunkId| {
        let h = id.hex();
        srv.store_dir()
            .join(format!("chunks/{}/{}/{h}", &h[..2], &h[2..4]))
    };
    let bad = ChunkId::of(&day1[3 * BS..4 * BS]);
    let gone = ChunkId::of(&day1[5 * BS..6 * BS]);
    let mut frame = std::fs::read(path(&bad)).unwrap();
    let n = frame.len();
    frame[n / 2] ^= 0xff;
    std::fs::write(path(&bad), frame).unwrap();
    std::fs::remove_file(path(&gone)).unwrap();
    let v = run_job(&admin, "verify").await;
    assert_eq!(v["result"]["corrupt"], json!([bad]), "{v}");
    assert_eq!(v["result"]["missing"], json!([gone]), "{v}");

    // Day 2 touches block 10 only, and the list says so.
    let mut day2 = day1.clone();
    day2[10 * BS..10 * BS + 5000].copy_from_slice(&noise(5000, 12));
    std::fs::write(&img, &day2).unwrap();
    let list = dir.path().join("cbt.json");
    std::fs::write(
        &list,
        json!({"base": full.backup_id, "changed": [[10 * BS, 5000]]}).to_string(),
    )
    .unwrap();
    o.cbt = [("disk0".to_string(), source_mover::cbt::json_file(&list))]
        .into_iter()
        .collect();
    let inc = backup(&c, &o).await.unwrap();
    assert_eq!(inc.base.as_deref(), Some(full.backup_id.as_str()));
    assert_eq!(
        inc.read_bytes,
        3 * BS as u64,
        "the changed block and the two inherited blocks whose chunks were lost"
    );
    assert_eq!(inc.chunks_uploaded, 3);

    // Both backups are whole again.
    assert_verify_clean(&admin).await;
    assert!(restored(&c, &full.backup_id, &dir.path().join("r1.raw")).await == day1);
    assert!(restored(&c, &inc.backup_id, &dir.path().join("r2.raw")).await == day2);
    srv.stop().await;
}
