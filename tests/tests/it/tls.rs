//! TLS with a certificate generated at test time: ALPN h2 and http/1.1.

use http::StatusCode;
use repo_server::config::TlsConfig;
use tests::backup::test_data;
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
