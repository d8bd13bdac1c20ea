//! SIGKILL in the middle of a session and right after a commit: nothing committed is lost and
//! the open session carries on to a commit after the restart.

use http::{Method, StatusCode};
use schema::IndexRecord;
use serde_json::json;
use tests::backup::{blocks, new_session, test_data, upload_chunks};
use tests::{backup_disk, ChildServer, Client, DiskUpload, BACKUP_A};

#[tokio::test]
async fn sigkill_mid_session_and_after_commit() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let bs = 256u32 << 10;
    let disk1 = test_data(12 * bs as usize + 999, 31);
    let disk2 = test_data(7 * bs as usize, 32);

    // Session 1: half the chunks and half the records, then SIGKILL.
    let srv = ChildServer::start(&data_dir);
    let c = Client::h2(&srv.url(), Some(BACKUP_A));
    let s = new_session();
    let spec = json!({"source": "vm-crash", "disks": [{"name": "d", "size": disk1.len(), "block_size": bs}]});
    assert_eq!(
        c.json(Method::PUT, &format!("/v1/sessions/{s}"), &spec)
            .await
            .status,
        StatusCode::CREATED
    );
    let half = 6 * bs as usize;
    upload_chunks(
        &c,
        &s,
        &[DiskUpload {
            name: "d",
            data: &disk1[..half],
            block_size: bs,
        }],
    )
    .await;
    let recs: Vec<IndexRecord> = blocks(&disk1, bs)
        .into_iter()
        .map(|(block, id, _)| IndexRecord { block, id })
        .collect();
    let all = IndexRecord::encode_all(&recs);
    let r = c
        .send(
            Method::PUT,
            &format!("/v1/sessions/{s}/disks/d/entries?start=0"),
            &[],
            all[..6 * 40].to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    srv.kill9();

    // Restart: the session is open with its 6 records; finish and commit it.
    let srv = ChildServer::start(&data_dir);
    let c = Client::h2(&srv.url(), Some(BACKUP_A));
    let st = c.get(&format!("/v1/sessions/{s}")).await.json();
    assert_eq!(st["state"], "open");
    assert_eq!(st["disks"]["d"]["entries"], 6);
    assert_eq!(
        st["disks"]["d"]["records_blake3"],
        blake3::hash(&all[..240]).to_hex().as_str()
    );
    // Re-sending only what is missing: the first half is already there.
    let first_half: Vec<u8> = recs[..6]
        .iter()
        .filter(|r| !r.id.is_hole())
        .flat_map(|r| r.id.0)
        .collect();
    let r = c
        .send(
            Method::POST,
            &format!("/v1/sessions/{s}/find-missing"),
            &[],
            first_half,
        )
        .await;
    assert!(
        r.body.is_empty(),
        "chunks acknowledged before the crash were lost"
    );
    upload_chunks(
        &c,
        &s,
        &[DiskUpload {
            name: "d",
            data: &disk1,
            block_size: bs,
        }],
    )
    .await;
    let r = c
        .send(
            Method::PUT,
            &format!("/v1/sessions/{s}/disks/d/entries?start=6"),
            &[],
            all[6 * 40..].to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    let sum = blake3::hash(&all).to_hex().to_string();
    let r = c
        .json(
            Method::POST,
            &format!("/v1/sessions/{s}/commit"),
            &json!({"disks": {"d": {"entries": recs.len(), "records_blake3": sum}}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let id1 = r.json()["backup_id"].as_str().unwrap().to_owned();

    // A second backup, SIGKILL right after its commit is acknowledged.
    let id2 = backup_disk(
        &c,
        "vm-crash-2",
        None,
        &[DiskUpload {
            name: "d",
            data: &disk2,
            block_size: bs,
        }],
    )
    .await;
    srv.kill9();

    let srv = ChildServer::start(&data_dir);
    let c = Client::h2(&srv.url(), Some(BACKUP_A));
    assert!(
        c.get(&format!("/v1/backups/{id1}/disks/d/image"))
            .await
            .body
            == disk1,
        "backup 1 differs after restart"
    );
    assert!(
        c.get(&format!("/v1/backups/{id2}/disks/d/image"))
            .await
            .body
            == disk2,
        "backup 2 differs after restart"
    );
    let list = c.get("/v1/backups").await.json();
    assert_eq!(list["backups"].as_array().unwrap().len(), 2);
    // Committing again after the crash returns the same backup.
    let r = c.json(Method::POST, &format!("/v1/sessions/{s}/commit"), &json!({"disks": {"d": {"entries": recs.len(), "records_blake3": blake3::hash(&all).to_hex().to_string()}}})).await;
    assert_eq!(
        (r.status, r.json()["backup_id"].as_str()),
        (StatusCode::OK, Some(id1.as_str()))
    );
}
