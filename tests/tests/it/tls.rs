//! TLS with certificates generated at test time: the server's ALPN h2 and http/1.1, and the
//! mover over `https://` (a CA file, a pinned fingerprint, each refusal by name, plain HTTP
//! against a TLS port, cuts on the WAN emulator).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use repo_server::config::TlsConfig;
use schema::api::Capabilities;
use source_mover::backup::backup;
use source_mover::client::RepoClient;
use source_mover::tls::{fingerprint_of, Trust};
use tests::backup::test_data;
use tests::images::noise;
use tests::mover::{opts, restore_to};
use tests::wan::{Link, WanProxy};
use tests::{backup_disk, Client, DiskUpload, TestServer, BACKUP_A};

#[tokio::test]
async fn tls_serves_h2_and_http1() {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let srv = TestServer::start_with(|c| {
        c.tls = Some(TlsConfig {
            cert: cert.clone(),
            key: key.clone(),
        })
    })
    .await;
    let der = ck.cert.der().to_vec();

    let h2 = Client::tls(srv.addr, der.clone(), "h2", Some(BACKUP_A)).await;
    let r = h2.get("/v1/capabilities").await;
    assert_eq!(
        (r.status, r.version),
        (StatusCode::OK, http::Version::HTTP_2)
    );
    let data = test_data(600_000, 4);
    let id = backup_disk(
        &h2,
        "tls-vm",
        None,
        &[DiskUpload {
            name: "d",
            data: &data,
            block_size: 256 << 10,
        }],
    )
    .await;
    assert!(
        h2.get(&format!("/v1/backups/{id}/disks/d/image"))
            .await
            .body
            == data
    );

    let h1 = Client::tls(srv.addr, der, "http/1.1", Some(BACKUP_A)).await;
    let r = h1.get(&format!("/v1/backups/{id}")).await;
    assert_eq!(
        (r.status, r.version),
        (StatusCode::OK, http::Version::HTTP_11)
    );
    assert_eq!(r.json()["source"], "tls-vm");
    srv.stop().await;
}

/// A TLS-only test server with a self-signed certificate for `localhost`: the server, the
/// certificate's DER and the PEM file's path (kept alive by the returned directory).
async fn tls_server() -> (TestServer, Vec<u8>, std::path::PathBuf, tempfile::TempDir) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let (c2, k2) = (cert.clone(), key.clone());
    let srv = TestServer::start_with(move |c| c.tls = Some(TlsConfig { cert: c2, key: k2 })).await;
    (srv, ck.cert.der().to_vec(), cert, dir)
}

fn mover(url: &str, trust: &Trust, connections: usize) -> RepoClient {
    RepoClient::with_trust(
        url,
        BACKUP_A,
        Duration::from_secs(120),
        None,
        connections,
        trust,
    )
    .unwrap()
}

async fn backed_up_and_restored(c: &RepoClient, disk: &std::path::Path, dir: &std::path::Path) {
    let r = backup(c, &opts("tls-mover", disk, &dir.join("state")))
        .await
        .unwrap();
    let out = dir.join("restored.raw");
    restore_to(c, &r.backup_id, &out).await;
    assert!(
        std::fs::read(&out).unwrap() == std::fs::read(disk).unwrap(),
        "restored image differs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mover_backs_up_over_https_with_a_ca_file_or_a_pinned_fingerprint() {
    let (srv, der, cert, dir) = tls_server().await;
    let disk = dir.path().join("disk.raw");
    std::fs::write(&disk, noise(6 << 20, 5)).unwrap();
    let url = format!("https://localhost:{}", srv.addr.port());

    let with_ca = mover(
        &url,
        &Trust {
            ca_file: Some(cert),
            fingerprint: None,
        },
        2,
    );
    backed_up_and_restored(&with_ca, &disk, dir.path()).await;

    // The fingerprint the server advertises is its certificate's; pinning it alone works.
    let caps: Capabilities = with_ca
        .send(
            http::Method::GET,
            "/v1/capabilities",
            &[],
            Default::default(),
        )
        .await
        .unwrap()
        .json()
        .unwrap();
    let fp = fingerprint_of(&der);
    assert_eq!(caps.tls_fingerprint, Some(fp));
    let pinned = mover(
        &url,
        &Trust {
            ca_file: None,
            fingerprint: Some(fp),
        },
        1,
    );
    std::fs::write(&disk, noise(6 << 20, 6)).unwrap();
    backed_up_and_restored(&pinned, &disk, dir.path()).await;
    srv.stop().await;
}

/// Backs up through `c` and expects a TLS refusal naming `check`, with nothing committed.
async fn refused(c: &RepoClient, check: &str, disk: &std::path::Path, dir: &std::path::Path) {
    let err = backup(c, &opts("tls-refused", disk, &dir.join("state-refused")))
        .await
        .expect_err("the handshake must be refused");
    assert!(
        matches!(&err, source_mover::Error::Tls { message, .. } if message.contains(check)),
        "expected a TLS refusal naming {check:?}, got: {err}"
    );
    assert!(!err.is_retryable(), "a TLS verdict is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_fingerprint_unknown_ca_and_name_mismatch_are_refused_by_name() {
    let (srv, _der, cert, dir) = tls_server().await;
    let disk = dir.path().join("disk.raw");
    std::fs::write(&disk, noise(1 << 20, 7)).unwrap();
    let port = srv.addr.port();
    let localhost = format!("https://localhost:{port}");
    let wrong_pin = Trust {
        ca_file: None,
        fingerprint: Some(schema::fingerprint::Fingerprint([7; 32])),
    };
    refused(
        &mover(&localhost, &wrong_pin, 1),
        "fingerprint mismatch",
        &disk,
        dir.path(),
    )
    .await;
    refused(
        &mover(&localhost, &Trust::default(), 1),
        "unknown CA",
        &disk,
        dir.path(),
    )
    .await;
    let by_ip = format!("https://127.0.0.1:{port}");
    let ca = Trust {
        ca_file: Some(cert.clone()),
        fingerprint: None,
    };
    refused(&mover(&by_ip, &ca, 1), "name mismatch", &disk, dir.path()).await;

    // Nothing reached the repository: no backup of that source exists.
    let ok = mover(&localhost, &ca, 1);
    let list = ok
        .send(
            http::Method::GET,
            "/v1/backups?source=tls-refused",
            &[],
            Default::default(),
        )
        .await
        .unwrap();
    let list: serde_json::Value = list.json().unwrap();
    assert_eq!(list["backups"].as_array().map(Vec::len), Some(0), "{list}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_mover_against_a_tls_server_gets_a_clear_error() {
    let (srv, _der, _cert, dir) = tls_server().await;
    let disk = dir.path().join("disk.raw");
    std::fs::write(&disk, noise(1 << 20, 8)).unwrap();
    let c = RepoClient::new(
        &format!("http://localhost:{}", srv.addr.port()),
        BACKUP_A,
        Duration::from_secs(5),
        None,
    )
    .unwrap();
    let err = backup(&c, &opts("tls-plain", &disk, &dir.path().join("state")))
        .await
        .expect_err("plain HTTP/2 to a TLS port fails");
    let msg = err.to_string();
    assert!(
        msg.contains("https://"),
        "the error must say to use https://: {msg}"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_over_tls_completes_across_cuts() {
    let (srv, _der, cert, dir) = tls_server().await;
    let disk = dir.path().join("disk.raw");
    // 8 MiB at 2 MB/s: about 4 s of upload, with a cut every 2 s on average.
    std::fs::write(&disk, noise(8 << 20, 9)).unwrap();
    let link = Link {
        delay: Duration::from_millis(10),
        rate: Some(2_000_000),
    };
    let proxy = Arc::new(WanProxy::start(srv.addr, link).await.unwrap());
    let cutter = proxy.cut_randomly(Duration::from_millis(2000), 43);
    let c = mover(
        &format!("https://localhost:{}", proxy.addr.port()),
        &Trust {
            ca_file: Some(cert),
            fingerprint: None,
        },
        2,
    );
    let r = backup(&c, &opts("tls-wan", &disk, &dir.path().join("state")))
        .await
        .unwrap();
    cutter.abort();
    let cuts = proxy.stats.cuts.load(Ordering::Relaxed);
    assert!(cuts >= 1, "the backup must have seen cuts ({cuts})");
    let out = dir.path().join("restored.raw");
    restore_to(&c, &r.backup_id, &out).await;
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&disk).unwrap());
    srv.stop().await;
}
