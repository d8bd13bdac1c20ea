//! The gateway's lease is a fence: two real gateway processes on one real Samba share and a
//! stolen lease. The gateway that lost the lease answers 503 with the reason to writes, its GC
//! and prune refuse and delete nothing, the other gateway's backups restore, and its stop leaves
//! the other's lease alone; once the lease is free again it takes it back and writes resume. A
//! gateway frozen past its lease wakes up fenced: its first write is refused.

use std::path::Path;
use std::time::{Duration, Instant};

use gateway::samba::Samba;
use http::{Method, StatusCode};
use schema::{ChunkId, SessionId};
use serde_json::{json, Value};
use source_mover::backup::backup;
use tests::backup::new_session;
use tests::images::noise;
use tests::mover::{client, opts};
use tests::{gateway_binary, ChildServer, Client, Resp, ADMIN, BACKUP_A};

use super::gateway::{raw_image, restored, share_chunks};

/// A gateway on directory `repo` of the share with a 6 s lease (renewed every 2 s, writes stop
/// 2 s before its end) and no GC margin, so unreferenced chunks are GC's at once.
fn start_gateway(samba: &Samba, data: &Path) -> ChildServer {
    let extra = format!(
        "{}lease = \"6s\"\n[store]\ngc_margin = \"0s\"\n",
        samba.share_toml("repo")
    );
    ChildServer::start_bin(&gateway_binary(), data, "127.0.0.1:0", &extra, &[])
}

fn read_lease(root: &Path) -> Option<Value> {
    let bytes = std::fs::read(root.join("gateway.lock")).ok()?;
    Some(serde_json::from_slice(&bytes).unwrap())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Overwrites the lease file by hand (as another gateway would: whole, through a rename), owned
/// by the share's user like the files Samba writes.
fn write_lease(root: &Path, owner: &str, generation: u64, for_ms: i64) {
    use std::os::unix::fs::MetadataExt;
    let now = now_ms();
    let l = json!({
        "owner": owner, "generation": generation, "host": "elsewhere", "pid": 1,
        "expires_ms": now + for_ms,
    });
    let tmp = root.join("tmp/gateway.lock.by-hand");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&l).unwrap()).unwrap();
    let meta = std::fs::metadata(root).unwrap();
    std::os::unix::fs::chown(&tmp, Some(meta.uid()), Some(meta.gid())).unwrap();
    std::fs::rename(&tmp, root.join("gateway.lock")).unwrap();
}

/// Takes the running lease from the gateway holding it, for `owner`: writes the lease file and
/// checks a moment later that it still names `owner` (a renewal that read the old file just
/// before may write over it once). Returns the generation written.
fn steal_lease(root: &Path, owner: &str, for_ms: i64) -> u64 {
    for _ in 0..10 {
        let generation = read_lease(root).unwrap()["generation"].as_u64().unwrap() + 1;
        write_lease(root, owner, generation, for_ms);
        std::thread::sleep(Duration::from_millis(300));
        if read_lease(root).is_some_and(|l| l["owner"] == owner) {
            return generation;
        }
    }
    panic!("the gateway holding the lease keeps writing over another holder's lease");
}

/// An open session on `c` for probing uploads.
async fn probe_session(c: &Client) -> SessionId {
    let s = new_session();
    let r = c
        .json(
            Method::PUT,
            &format!("/v1/sessions/{s}"),
            &json!({"source": "vm-probe", "base": null,
                    "disks": [{"name": "disk0", "size": 262144, "block_size": 262144}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    s
}

/// Uploads a chunk nobody has stored yet (so it must be written to the share).
async fn upload_new_chunk(c: &Client, s: &SessionId, seed: u64) -> Resp {
    let data = noise(65536, seed);
    let id = ChunkId::of(&data);
    let frame = zstd::bulk::compress(&data, 3).unwrap();
    c.send(
        Method::PUT,
        &format!("/v1/sessions/{s}/chunks/{id}"),
        &[
            ("content-type", "application/zstd"),
            ("chunk-length", &data.len().to_string()),
        ],
        frame,
    )
    .await
}

/// Uploads fresh chunks until one is answered `want` (at most `within`); returns that answer.
async fn upload_until(
    c: &Client,
    s: &SessionId,
    seed: &mut u64,
    want: StatusCode,
    within: Duration,
) -> Resp {
    let deadline = Instant::now() + within;
    loop {
        *seed += 1;
        let r = upload_new_chunk(c, s, *seed).await;
        if r.status == want || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn message(r: &Resp) -> String {
    serde_json::from_slice::<Value>(&r.body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&r.body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_whose_lease_was_taken_writes_and_deletes_nothing_and_leaves_the_new_lease() {
    let dir = tempfile::tempdir().unwrap();
    let samba = Samba::start(&dir.path().join("samba")).unwrap();
    let root = samba.share_dir().join("repo");
    let a = start_gateway(&samba, &dir.path().join("gw-a"));
    let a_url = a.url();
    let a_admin = Client::h2(&a_url, Some(ADMIN));

    // On A: a backup it keeps, and one it deletes (so A's GC has chunks to remove).
    let kept_img = dir.path().join("kept.raw");
    let kept = raw_image(&kept_img, 4, 61);
    let st = dir.path().join("state-a");
    let k = backup(&client(&a_url), &opts("vm-kept", &kept_img, &st))
        .await
        .unwrap();
    let img = dir.path().join("shared.raw");
    let shared = raw_image(&img, 8, 62);
    let gone = backup(&client(&a_url), &opts("vm-shared", &img, &st))
        .await
        .unwrap();
    let del = a_admin
        .send(
            Method::DELETE,
            &format!("/v1/backups/{}", gone.backup_id),
            &[],
            "",
        )
        .await;
    assert_eq!(del.status, StatusCode::NO_CONTENT, "{:?}", del.body);
    let a_backup = Client::h2(&a_url, Some(BACKUP_A));
    let probe = probe_session(&a_backup).await;
    let mut seed = 1000;
    let r = upload_new_chunk(&a_backup, &probe, seed).await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "A holds the lease: {:?}",
        r.body
    );

    // Gateway B takes the lease: its identity is written into the lease file (a new
    // generation), then B starts and takes it as its own.
    let a_lease = read_lease(&root).expect("A holds a lease");
    let a_id = a_lease["owner"].as_str().unwrap().to_owned();
    let b_data = dir.path().join("gw-b");
    std::fs::create_dir_all(&b_data).unwrap();
    let b_id = "b0b0b0b0b0b0b0b0b0b0b0b0";
    std::fs::write(b_data.join("gateway.id"), format!("{b_id}\n")).unwrap();
    steal_lease(&root, b_id, 3000);
    let b = start_gateway(&samba, &b_data);
    let b_lease = read_lease(&root).unwrap();
    assert_eq!(b_lease["owner"], b_id, "{b_lease}");

    // A's next renewal finds B's lease: A refuses writes, saying why.
    let r = upload_until(
        &a_backup,
        &probe,
        &mut seed,
        StatusCode::SERVICE_UNAVAILABLE,
        Duration::from_secs(6),
    )
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    let why = message(&r);
    assert!(
        why.contains("this gateway does not hold the share's lease") && why.contains(b_id),
        "{why}"
    );

    // B backs up the same disk: its backup references the chunk files A's catalog no longer
    // needs.
    let b_url = b.url();
    let on_b = backup(
        &client(&b_url),
        &opts("vm-shared", &img, &dir.path().join("state-b")),
    )
    .await
    .unwrap();
    let (before, _) = share_chunks(&root);
    assert!(before.values().all(|sound| *sound));

    // A's GC and prune refuse, with the reason; nothing on the share goes.
    let gc = a_admin.send(Method::POST, "/v1/admin/gc", &[], "").await;
    assert_eq!(gc.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", gc.body);
    assert!(
        message(&gc).contains("does not hold the share's lease"),
        "{}",
        message(&gc)
    );
    let prune = a_admin
        .json(Method::POST, "/v1/admin/prune", &json!({"dry_run": false}))
        .await;
    assert_eq!(
        prune.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{:?}",
        prune.body
    );
    let del = a_admin
        .send(
            Method::DELETE,
            &format!("/v1/backups/{}", k.backup_id),
            &[],
            "",
        )
        .await;
    assert_eq!(
        del.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{:?}",
        del.body
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (after, _) = share_chunks(&root);
    assert_eq!(
        after, before,
        "the fenced gateway deleted or changed chunk files"
    );
    assert!(
        root.join(format!("manifests/{}.json", k.backup_id))
            .is_file(),
        "a refused delete leaves the manifest"
    );
    assert!(restored(&b_url, &on_b.backup_id, &dir.path().join("rb")).await == shared);
    // Reads go on at A.
    assert!(restored(&a_url, &k.backup_id, &dir.path().join("ra")).await == kept);

    // A stops: B's lease stays as B wrote it; B's own stop removes it.
    assert_eq!(a.terminate(Duration::from_secs(20)), Some(0));
    let now = read_lease(&root).expect("A's stop removed B's lease");
    assert_eq!(now["owner"], b_id, "{now}");
    assert_ne!(now["owner"], a_id.as_str());
    assert_eq!(now["generation"], b_lease["generation"], "{now}");
    assert_eq!(b.terminate(Duration::from_secs(20)), Some(0));
    assert!(read_lease(&root).is_none(), "B releases its own lease");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_takes_its_lease_back_once_the_other_holders_lease_ends() {
    let dir = tempfile::tempdir().unwrap();
    let samba = Samba::start(&dir.path().join("samba")).unwrap();
    let root = samba.share_dir().join("repo");
    let a_data = dir.path().join("gw-a");
    let a = start_gateway(&samba, &a_data);
    let a_url = a.url();
    let a_backup = Client::h2(&a_url, Some(BACKUP_A));
    let probe = probe_session(&a_backup).await;
    let mut seed = 2000;
    // Another gateway holds the lease for 4 s and then is gone (no process renews it).
    let taken = Instant::now();
    let generation = steal_lease(&root, "intruder0000000000000000", 4000);
    let r = upload_until(
        &a_backup,
        &probe,
        &mut seed,
        StatusCode::SERVICE_UNAVAILABLE,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    assert!(
        message(&r).contains("intruder0000000000000000"),
        "{}",
        message(&r)
    );

    // Once that lease has ended, A takes it back (a newer generation) and writes resume.
    let r = upload_until(
        &a_backup,
        &probe,
        &mut seed,
        StatusCode::CREATED,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert!(
        taken.elapsed() >= Duration::from_millis(3500),
        "A wrote again {:?} after the lease was taken, before it ended",
        taken.elapsed()
    );
    let back = read_lease(&root).unwrap();
    let a_id = std::fs::read_to_string(a_data.join("gateway.id")).unwrap();
    assert_eq!(back["owner"], a_id.trim(), "{back}");
    assert!(back["generation"].as_u64().unwrap() > generation, "{back}");
    let img = dir.path().join("disk.raw");
    let data = raw_image(&img, 4, 71);
    let after = backup(
        &client(&a_url),
        &opts("vm-after", &img, &dir.path().join("st")),
    )
    .await
    .unwrap();
    assert!(restored(&a_url, &after.backup_id, &dir.path().join("r")).await == data);
    assert_eq!(a.terminate(Duration::from_secs(20)), Some(0));
    assert!(
        read_lease(&root).is_none(),
        "a clean stop releases its own lease"
    );
}

/// Sends `sig` (`STOP`, `CONT`) to the gateway process.
fn signal(gw: &ChildServer, sig: &str) {
    let ok = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(gw.pid().to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_paused_past_its_lease_resumes_fenced_and_leaves_the_successors_lease() {
    let dir = tempfile::tempdir().unwrap();
    let samba = Samba::start(&dir.path().join("samba")).unwrap();
    let root = samba.share_dir().join("repo");
    let a = start_gateway(&samba, &dir.path().join("gw-a"));
    let a_backup = Client::h2(&a.url(), Some(BACKUP_A));
    let probe = probe_session(&a_backup).await;
    let mut seed = 3000;
    let r = upload_new_chunk(&a_backup, &probe, seed).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);

    // A freezes (a stalled VM, a long pause) until its lease has ended; B then takes it the
    // ordinary way.
    signal(&a, "STOP");
    let ends = read_lease(&root).unwrap()["expires_ms"].as_i64().unwrap();
    while now_ms() <= ends + 200 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let b = start_gateway(&samba, &dir.path().join("gw-b"));
    let b_lease = read_lease(&root).unwrap();
    let b_id = std::fs::read_to_string(dir.path().join("gw-b/gateway.id")).unwrap();
    assert_eq!(b_lease["owner"], b_id.trim(), "{b_lease}");

    // A wakes: its very first write is refused (its confirmation ran out while it was frozen).
    signal(&a, "CONT");
    seed += 1;
    let r = upload_new_chunk(&a_backup, &probe, seed).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    assert!(
        message(&r).contains("this gateway does not hold the share's lease"),
        "{}",
        message(&r)
    );
    // Its renewals find B's lease and leave it as B keeps it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = upload_new_chunk(&a_backup, &probe, seed + 1).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    assert!(message(&r).contains(b_id.trim()), "{}", message(&r));
    let now = read_lease(&root).unwrap();
    assert_eq!(now["owner"], b_id.trim(), "{now}");
    assert_eq!(now["generation"], b_lease["generation"], "{now}");
    assert_eq!(a.terminate(Duration::from_secs(20)), Some(0));
    assert_eq!(read_lease(&root).unwrap()["owner"], b_id.trim());
    assert_eq!(b.terminate(Duration::from_secs(20)), Some(0));
}
