//! A real full disk, idle-session expiry, and graceful shutdown.

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::json;
use tests::backup::{backup_disk, new_session, test_data};
use tests::{ChildServer, Client, DiskUpload, TestServer, BACKUP_A};

/// Unmounts on drop.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test]
async fn full_disk_answers_507_and_keeps_what_was_committed() {
    // SAFETY of the check: only root can mount the small filesystem this test needs.
    if !std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
    {
        eprintln!("SKIPPED full_disk_answers_507: needs root to mount a 40 MiB tmpfs");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=40m", "tmpfs"])
        .arg(&data)
        .status()
        .unwrap();
    assert!(ok.success(), "mount tmpfs");
    let _m = Mount(data.clone());
    let srv = TestServer::start_in(data.clone(), |_| {}).await;
    let c = Client::h2(&srv.url(), Some(BACKUP_A));
    let small = test_data(300_000, 3);
    let kept = backup_disk(
        &c,
        "vm-full",
        None,
        &[DiskUpload {
            name: "d",
            data: &small,
            block_size: 256 << 10,
        }],
    )
    .await;

    let bs = 1usize << 20;
    let s = new_session();
    let spec =
        json!({"source": "vm-full", "disks": [{"name": "d", "size": 64 * bs, "block_size": bs}]});
    assert_eq!(
        c.json(Method::PUT, &format!("/v1/sessions/{s}"), &spec)
            .await
            .status,
        StatusCode::CREATED
    );
    let mut full = None;
    for i in 0..64u64 {
        let block = pseudo_random(bs, 1000 + i);
        let id = schema::ChunkId::of(&block);
        let r = c
            .send(
                Method::PUT,
                &format!("/v1/sessions/{s}/chunks/{id}"),
                &[
                    ("content-type", "application/octet-stream"),
                    ("chunk-length", &bs.to_string()),
                ],
                block,
            )
            .await;
        if r.status != StatusCode::CREATED {
            full = Some(r);
            break;
        }
    }
    let r = full.expect("a 40 MiB filesystem cannot take 64 MiB of incompressible chunks");
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (507, "STORAGE_FULL"),
        "{:?}",
        r.body
    );
    // No temp file is left behind, and what was committed still reads back.
    assert_eq!(
        std::fs::read_dir(srv.store_dir().join("tmp"))
            .unwrap()
            .count(),
        0,
        "temp files left after ENOSPC"
    );
    assert!(
        c.get(&format!("/v1/backups/{kept}/disks/d/image"))
            .await
            .body
            == small
    );
    srv.stop().await;
}

#[tokio::test]
async fn idle_sessions_expire_and_release_pins() {
    let srv = TestServer::start_with(|c| c.limits.session_idle_ttl = Duration::from_secs(1)).await;
    let c = Client::h2(&srv.url(), Some(BACKUP_A));
    let s = new_session();
    let spec =
        json!({"source": "vm-idle", "disks": [{"name": "d", "size": 1, "block_size": 262_144}]});
    let r = c
        .json(Method::PUT, &format!("/v1/sessions/{s}"), &spec)
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.json()["state"], "open");
    let mut state = String::new();
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        state = c.get(&format!("/v1/sessions/{s}")).await.json()["state"]
            .as_str()
            .unwrap()
            .to_owned();
        if state == "aborted" {
            break;
        }
    }
    assert_eq!(
        state, "aborted",
        "an idle session must expire after its TTL"
    );
    srv.stop().await;
}

/// SIGTERM with a client connected: the server stops accepting, drains for at most its drain
/// timeout (3 s here) and exits 0. The wait allows for that timeout, so a slow drain on a loaded
/// machine (the suite runs in parallel) cannot fail it, while a server that ignores the signal
/// or exits otherwise still does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_server_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let srv = ChildServer::start_with(
        &dir.path().join("data"),
        "127.0.0.1:0",
        "[limits]\ndrain_timeout = \"3s\"\n",
        &[],
    );
    let c = Client::h2(&srv.url(), None);
    assert_eq!(c.get("/healthz").await.status, StatusCode::OK);
    // Wait off the runtime thread, so the client keeps running and sees the server's GOAWAY.
    let code = tokio::task::spawn_blocking(move || srv.terminate(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "repo-server must exit 0 after SIGTERM");
}

#[tokio::test]
async fn a_tenant_ingest_rate_paces_only_that_tenant() {
    let srv = TestServer::start_with(|c| {
        let limited = repo_server::config::TenantConfig {
            ingest_rate: Some(2_000_000),
        };
        c.tenants.insert("acme".into(), limited);
    })
    .await;
    let bs = 256usize << 10;
    let data = pseudo_random(24 * bs, 77);
    let other = pseudo_random(24 * bs, 78);
    let a = Client::h2(&srv.url(), Some(BACKUP_A));
    let b = a.with_token(Some(tests::BACKUP_B));
    // Both tenants upload 6 MiB of incompressible chunks at the same time.
    let t = std::time::Instant::now();
    let (ta, tb) = tokio::join!(
        async {
            backup_disk(
                &a,
                "paced",
                None,
                &[DiskUpload {
                    name: "d",
                    data: &data,
                    block_size: bs as u32,
                }],
            )
            .await;
            t.elapsed()
        },
        async {
            backup_disk(
                &b,
                "free",
                None,
                &[DiskUpload {
                    name: "d",
                    data: &other,
                    block_size: bs as u32,
                }],
            )
            .await;
            t.elapsed()
        }
    );
    // 6 MiB at 2 MB/s with a 2 MB burst cannot take less than about 2 s; the other tenant is not paced.
    assert!(
        ta >= Duration::from_millis(2000),
        "limited tenant took only {ta:?}"
    );
    assert!(
        tb < ta,
        "the unlimited tenant ({tb:?}) must not wait for the limited one ({ta:?})"
    );
    srv.stop().await;
}
