//! Fail points never fire in the binaries users run: the shipped `repo-server` and `gateway`,
//! started with `REPO_FAILPOINT` naming a point on the upload path, store the chunk and keep
//! serving, while the crash-test binary `repo-server-failpoints` aborts at that very point during
//! the same requests (so the requests do pass it, and the crash campaign's binary still fires).

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use schema::ChunkId;
use serde_json::json;
use tests::backup::new_session;
use tests::server::server_binary;
use tests::{failpoint_server_binary, gateway_binary, ChildServer, Client, BACKUP_A};

/// A point every chunk upload passes, in the catalog code the repository and the gateway share.
const POINT: &str = "catalog.before_write";

/// Creates a session and uploads one chunk; the status of each step, or `Err` once the
/// connection broke (the server died).
async fn create_session_and_upload_a_chunk(url: &str) -> Result<(), String> {
    let c = Client::h2(url, Some(BACKUP_A));
    let s = new_session();
    let spec =
        json!({"source": "vm-fp", "disks": [{"name": "d", "size": 262144, "block_size": 262144}]});
    let r = c
        .try_send(
            Method::PUT,
            &format!("/v1/sessions/{s}"),
            &[("content-type", "application/json")],
            spec.to_string(),
        )
        .await?;
    if r.status != StatusCode::CREATED {
        return Err(format!("create session: {} {:?}", r.status, r.body));
    }
    let block = vec![7u8; 4096];
    let id = ChunkId::of(&block);
    let r = c
        .try_send(
            Method::PUT,
            &format!("/v1/sessions/{s}/chunks/{id}"),
            &[
                ("content-type", "application/octet-stream"),
                ("chunk-length", "4096"),
            ],
            block,
        )
        .await?;
    if r.status != StatusCode::CREATED {
        return Err(format!("upload: {} {:?}", r.status, r.body));
    }
    let r = c
        .try_send(Method::GET, &format!("/v1/chunks/{id}"), &[], "")
        .await?;
    if r.status != StatusCode::OK {
        return Err(format!("read back: {} {:?}", r.status, r.body));
    }
    Ok(())
}

/// Waits up to `within` for the child to exit.
fn exit_within(srv: &mut ChildServer, within: Duration) -> Option<std::process::ExitStatus> {
    let t = Instant::now();
    while t.elapsed() < within {
        if let Some(st) = srv.try_exit() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Starts `bin` on a fresh data dir with `REPO_FAILPOINT` armed at [`POINT`], runs the upload,
/// and returns its outcome and how the process ended (`None`: still running after 2 s).
async fn upload_with_failpoint(
    bin: &Path,
    extra: &str,
    dir: &Path,
) -> (Result<(), String>, Option<std::process::ExitStatus>) {
    let mut srv = ChildServer::start_bin(
        bin,
        &dir.join("data"),
        "127.0.0.1:0",
        extra,
        &[("REPO_FAILPOINT", POINT)],
    );
    let outcome = create_session_and_upload_a_chunk(&srv.url()).await;
    let exit = tokio::task::spawn_blocking(move || {
        let st = exit_within(&mut srv, Duration::from_secs(2));
        (st, srv)
    })
    .await
    .unwrap();
    (outcome, exit.0)
}

#[tokio::test]
async fn the_shipped_repo_server_never_fires_a_fail_point() {
    let dir = tempfile::tempdir().unwrap();
    let (outcome, exit) = upload_with_failpoint(&server_binary(), "", dir.path()).await;
    assert_eq!(
        outcome,
        Ok(()),
        "the shipped repo-server with REPO_FAILPOINT={POINT} must serve the upload"
    );
    assert!(
        exit.is_none(),
        "the shipped repo-server with REPO_FAILPOINT={POINT} ended: {exit:?}"
    );

    // The control: the crash-test build aborts at that point during the same requests.
    let dir = tempfile::tempdir().unwrap();
    let (outcome, exit) = upload_with_failpoint(&failpoint_server_binary(), "", dir.path()).await;
    assert!(outcome.is_err(), "the crash-test binary served the upload");
    assert_eq!(
        exit.and_then(|st| st.signal()),
        Some(libc::SIGABRT),
        "the crash-test binary must abort at {POINT}: {exit:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_gateway_never_fires_a_fail_point() {
    let dir = tempfile::tempdir().unwrap();
    let samba = gateway::samba::Samba::start(&dir.path().join("samba")).unwrap();
    let (outcome, exit) =
        upload_with_failpoint(&gateway_binary(), &samba.share_toml("repo"), dir.path()).await;
    assert_eq!(
        outcome,
        Ok(()),
        "the gateway with REPO_FAILPOINT={POINT} must serve the upload"
    );
    assert!(
        exit.is_none(),
        "the gateway with REPO_FAILPOINT={POINT} ended: {exit:?}"
    );
}

/// Nothing in the shipped binaries even reads the variable: its name is not in them (it is in
/// the crash-test binary, which reads it).
#[test]
fn the_shipped_binaries_do_not_read_repo_failpoint() {
    let has = |bin: &Path| {
        let bytes = std::fs::read(bin).unwrap();
        bytes.windows(14).any(|w| w == b"REPO_FAILPOINT")
    };
    assert!(has(&failpoint_server_binary()));
    for bin in [server_binary(), gateway_binary()] {
        assert!(!has(&bin), "{} reads REPO_FAILPOINT", bin.display());
    }
}
