//! Tenants share one chunk store but see nothing of each other.

use http::{Method, StatusCode};
use serde_json::json;
use tests::backup::{new_session, test_data};
use tests::{backup_disk, Client, DiskUpload, TestServer, ADMIN, BACKUP_A, BACKUP_B};

fn count_files(dir: &std::path::Path) -> usize {
    tests::files_under(dir).len()
}

#[tokio::test]
async fn find_missing_is_no_oracle_across_tenants() {
    let srv = TestServer::start().await;
    let a = Client::h2(&srv.url(), Some(BACKUP_A));
    let b = a.with_token(Some(BACKUP_B));
    let bs = 256 << 10;
    let data = test_data(4 * bs, 21);
    let d = DiskUpload {
        name: "d",
        data: &data,
        block_size: bs as u32,
    };
    let id_a = backup_disk(&a, "shared-vm", None, &[d]).await;
    let files = count_files(&srv.store_dir().join("chunks"));
    assert!(files >= 3);

    // globex asks about acme's chunks: all reported missing.
    let s = new_session();
    let spec = json!({"source": "shared-vm", "disks": [{"name": "d", "size": data.len(), "block_size": bs}]});
    assert_eq!(
        b.json(Method::PUT, &format!("/v1/sessions/{s}"), &spec)
            .await
            .status,
        StatusCode::CREATED
    );
    let ids: Vec<u8> = tests::backup::blocks(&data, bs as u32)
        .iter()
        .filter(|x| !x.1.is_hole())
        .flat_map(|x| x.1 .0)
        .collect();
    let r = b
        .send(
            Method::POST,
            &format!("/v1/sessions/{s}/find-missing"),
            &[],
            ids.clone(),
        )
        .await;
    assert_eq!(
        r.body.len(),
        ids.len(),
        "every digest must be reported missing to another tenant"
    );
    // Uploading them answers 201 (not 200), and the store still keeps one copy.
    let blk = &data[..bs];
    let id = schema::ChunkId::of(blk);
    let r = b
        .send(
            Method::PUT,
            &format!("/v1/sessions/{s}/chunks/{id}"),
            &[
                ("content-type", "application/octet-stream"),
                ("chunk-length", &bs.to_string()),
            ],
            blk.to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    // A forged upload claiming another of acme's digests with other bytes is refused.
    let id1 = schema::ChunkId::of(&data[bs..2 * bs]);
    let r = b
        .send(
            Method::PUT,
            &format!("/v1/sessions/{s}/chunks/{id1}"),
            &[
                ("content-type", "application/octet-stream"),
                ("chunk-length", &bs.to_string()),
            ],
            vec![1u8; bs],
        )
        .await;
    assert_eq!(r.code(), "DIGEST_MISMATCH");
    let id_b = backup_disk(&b, "shared-vm", None, &[d]).await;
    assert_eq!(
        count_files(&srv.store_dir().join("chunks")),
        files,
        "cross-tenant dedup keeps one copy"
    );
    // Once uploaded by globex, its own find-missing finds them.
    let s2 = new_session();
    b.json(Method::PUT, &format!("/v1/sessions/{s2}"), &spec)
        .await;
    let r = b
        .send(
            Method::POST,
            &format!("/v1/sessions/{s2}/find-missing"),
            &[],
            ids,
        )
        .await;
    assert!(r.body.is_empty());

    // Each tenant lists only its own; admin sees both.
    let la = a.get("/v1/backups").await.json();
    assert_eq!(la["backups"].as_array().unwrap().len(), 1);
    assert_eq!(la["backups"][0]["id"], json!(id_a));
    assert_eq!(
        b.get(&format!("/v1/backups/{id_a}")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        a.get(&format!("/v1/backups/{id_b}")).await.status,
        StatusCode::NOT_FOUND
    );
    let admin = a.with_token(Some(ADMIN));
    assert_eq!(
        admin.get("/v1/backups").await.json()["backups"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let sources = admin.get("/v1/sources").await.json();
    let tenants: Vec<&str> = sources
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["tenant"].as_str().unwrap())
        .collect();
    assert_eq!(tenants, ["acme", "globex"]);
    assert!(
        b.get(&format!("/v1/backups/{id_b}/disks/d/image"))
            .await
            .body
            == data
    );
    srv.stop().await;
}
