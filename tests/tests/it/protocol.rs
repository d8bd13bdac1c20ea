//! Every endpoint of PROTOCOL.md, over h2c and HTTP/1.1.

use http::{Method, StatusCode};
use schema::{ChunkId, IndexRecord};
use serde_json::json;
use tests::backup::{new_session, test_data};
use tests::{backup_disk, Client, DiskUpload, TestServer, ADMIN, BACKUP_A, READER_A};

const MIB: u32 = 1 << 20;

#[tokio::test]
async fn walkthrough_h2c() {
    let srv = TestServer::start().await;
    walkthrough(
        &Client::h2(&srv.url(), Some(BACKUP_A)),
        http::Version::HTTP_2,
    )
    .await;
    srv.stop().await;
}

#[tokio::test]
async fn walkthrough_http1() {
    let srv = TestServer::start().await;
    walkthrough(
        &Client::h1(&srv.url(), Some(BACKUP_A)),
        http::Version::HTTP_11,
    )
    .await;
    srv.stop().await;
}

async fn walkthrough(c: &Client, version: http::Version) {
    let anon = c.with_token(None);
    let admin = c.with_token(Some(ADMIN));
    // Unauthenticated endpoints.
    let r = anon.get("/healthz").await;
    assert_eq!((r.status, r.version), (StatusCode::OK, version));
    let caps = anon.get("/v1/capabilities").await.json();
    assert_eq!(caps["api"], 1);
    assert_eq!(
        caps["block_sizes"],
        json!([262_144, 524_288, 1_048_576, 4_194_304])
    );
    assert_eq!(caps["max_chunk_bytes"], 16 << 20);
    assert_eq!(
        anon.get("/v1/openapi.json").await.json()["openapi"],
        "3.1.0"
    );

    // Session: 201, identical repeat 200, different parameters 409.
    let s = new_session();
    let disk = test_data(3 * MIB as usize + 12345, 1);
    let body = json!({"source": "vm-1", "base": null, "disks": [{"name": "disk0", "size": disk.len(), "block_size": MIB}], "labels": {"job": "nightly"}});
    let r = c
        .json(Method::PUT, &format!("/v1/sessions/{s}"), &body)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert!(r.header("session-expires").is_some());
    assert_eq!(
        c.json(Method::PUT, &format!("/v1/sessions/{s}"), &body)
            .await
            .status,
        StatusCode::OK
    );
    let mut other = body.clone();
    other["source"] = json!("vm-2");
    let r = c
        .json(Method::PUT, &format!("/v1/sessions/{s}"), &other)
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::CONFLICT, "SESSION_CONFLICT")
    );

    // find-missing, binary and JSON.
    let blocks = tests::backup::blocks(&disk, MIB);
    assert_eq!(blocks.len(), 4);
    let ids: Vec<ChunkId> = blocks.iter().map(|b| b.1).collect();
    let raw: Vec<u8> = ids.iter().flat_map(|i| i.0).collect();
    let r = c
        .send(
            Method::POST,
            &format!("/v1/sessions/{s}/find-missing"),
            &[("content-type", "application/octet-stream")],
            raw.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.body.len(),
        ids.iter()
            .filter(|i| !i.is_hole())
            .collect::<std::collections::HashSet<_>>()
            .len()
            * 32
    );
    let r = c
        .json(
            Method::POST,
            &format!("/v1/sessions/{s}/find-missing"),
            &json!({"digests": [ids[0]]}),
        )
        .await;
    assert_eq!(r.json()["digests"], json!([ids[0]]));

    // Upload block 0 as zstd (201 then 200), block 1 raw, the rest through the helper.
    let frame = zstd::bulk::compress(blocks[0].2, 3).unwrap();
    let path0 = format!("/v1/sessions/{s}/chunks/{}", ids[0]);
    let len0 = blocks[0].2.len().to_string();
    let h = [
        ("content-type", "application/zstd"),
        ("chunk-length", len0.as_str()),
    ];
    assert_eq!(
        c.send(Method::PUT, &path0, &h, frame.clone()).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        c.send(Method::PUT, &path0, &h, frame.clone()).await.status,
        StatusCode::OK
    );
    let len1 = blocks[1].2.len().to_string();
    let r = c
        .send(
            Method::PUT,
            &format!("/v1/sessions/{s}/chunks/{}", ids[1]),
            &[
                ("content-type", "application/octet-stream"),
                ("chunk-length", &len1),
            ],
            blocks[1].2.to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let d = DiskUpload {
        name: "disk0",
        data: &disk,
        block_size: MIB,
    };
    tests::backup::upload_chunks(c, &s, &[d]).await;
    // Now nothing is missing.
    let r = c
        .send(
            Method::POST,
            &format!("/v1/sessions/{s}/find-missing"),
            &[],
            raw,
        )
        .await;
    assert!(r.body.is_empty());

    // Chunk reads: HEAD sizes, GET frame, GET raw.
    let r = c
        .send(Method::HEAD, &format!("/v1/chunks/{}", ids[0]), &[], vec![])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("chunk-length"), Some(len0.clone()));
    assert_eq!(r.header("content-length"), Some(frame.len().to_string()));
    let r = c.get(&format!("/v1/chunks/{}", ids[0])).await;
    assert_eq!(
        zstd::bulk::decompress(&r.body, MIB as usize).unwrap(),
        blocks[0].2
    );
    let r = c
        .send(
            Method::GET,
            &format!("/v1/chunks/{}", ids[1]),
            &[("accept", "application/octet-stream")],
            vec![],
        )
        .await;
    assert_eq!(&r.body[..], blocks[1].2);

    // Records in two appends, with an identical replay and a conflicting one.
    let recs: Vec<IndexRecord> = blocks
        .iter()
        .map(|(b, id, _)| IndexRecord { block: *b, id: *id })
        .collect();
    let all = IndexRecord::encode_all(&recs);
    let ep = format!("/v1/sessions/{s}/disks/disk0/entries");
    let r = c
        .send(
            Method::PUT,
            &format!("{ep}?start=0"),
            &[],
            all[..80].to_vec(),
        )
        .await;
    assert_eq!(
        (r.status, r.header("index-entries")),
        (StatusCode::NO_CONTENT, Some("2".into()))
    );
    let r = c
        .send(
            Method::PUT,
            &format!("{ep}?start=0"),
            &[],
            all[..80].to_vec(),
        )
        .await;
    assert_eq!(
        (r.status, r.header("index-entries")),
        (StatusCode::NO_CONTENT, Some("2".into()))
    );
    let r = c
        .send(
            Method::PUT,
            &format!("{ep}?start=1"),
            &[],
            all[..40].to_vec(),
        )
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::CONFLICT, "POSITION_CONFLICT")
    );
    assert_eq!(r.header("index-entries"), Some("2".into()));
    let r = c
        .send(
            Method::PUT,
            &format!("{ep}?start=5"),
            &[],
            all[80..].to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = c
        .send(
            Method::PUT,
            &format!("{ep}?start=2"),
            &[],
            all[80..].to_vec(),
        )
        .await;
    assert_eq!(
        (r.status, r.header("index-entries")),
        (StatusCode::NO_CONTENT, Some("4".into()))
    );
    let st = c.get(&format!("/v1/sessions/{s}")).await.json();
    assert_eq!(st["state"], "open");
    assert_eq!(st["disks"]["disk0"]["entries"], 4);
    assert_eq!(
        st["disks"]["disk0"]["records_blake3"],
        blake3::hash(&all).to_hex().as_str()
    );
    assert!(st["chunks_pinned"].as_u64().unwrap() >= 3);

    // Commit: wrong count, wrong checksum, then 201 and a repeat 200.
    let sum = blake3::hash(&all).to_hex().to_string();
    let commit = |n: u64, sum: &str| json!({"disks": {"disk0": {"entries": n, "records_blake3": sum}}, "metadata": {"by": "test"}});
    let r = c
        .json(
            Method::POST,
            &format!("/v1/sessions/{s}/commit"),
            &commit(3, &sum),
        )
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::CONFLICT, "COUNT_MISMATCH")
    );
    let r = c
        .json(
            Method::POST,
            &format!("/v1/sessions/{s}/commit"),
            &commit(4, &"0".repeat(64)),
        )
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::CONFLICT, "CHECKSUM_MISMATCH")
    );
    let r = c
        .json(
            Method::POST,
            &format!("/v1/sessions/{s}/commit"),
            &commit(4, &sum),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let id = r.json()["backup_id"].as_str().unwrap().to_owned();
    assert_eq!(r.header("location"), Some(format!("/v1/backups/{id}")));
    let r = c
        .json(
            Method::POST,
            &format!("/v1/sessions/{s}/commit"),
            &commit(4, &sum),
        )
        .await;
    assert_eq!(
        (r.status, r.json()["backup_id"].as_str()),
        (StatusCode::OK, Some(id.as_str()))
    );
    let r = c
        .send(Method::DELETE, &format!("/v1/sessions/{s}"), &[], vec![])
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::CONFLICT, "SESSION_STATE")
    );
    let st = c.get(&format!("/v1/sessions/{s}")).await.json();
    assert_eq!(
        (st["state"].as_str(), st["backup_id"].as_str()),
        (Some("committed"), Some(id.as_str()))
    );

    // Catalog: manifest, index, image (whole and ranges), listing, sources.
    let m = c.get(&format!("/v1/backups/{id}")).await.json();
    assert_eq!(m["source"], "vm-1");
    assert_eq!(m["labels"]["job"], "nightly");
    assert_eq!(m["metadata"]["by"], "test");
    assert_eq!(m["disks"][0]["blocks"], 4);
    assert_eq!(m["stats"]["logical_bytes"], disk.len());
    assert!(m["stats"]["new_chunks"].as_u64().unwrap() >= 3);
    let r = c.get(&format!("/v1/backups/{id}/disks/disk0/index")).await;
    assert_eq!(
        r.body.to_vec(),
        ids.iter().flat_map(|i| i.0).collect::<Vec<u8>>()
    );
    let r = c.get(&format!("/v1/backups/{id}/disks/disk0/image")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-length"), Some(disk.len().to_string()));
    assert!(r.body == disk, "image differs");
    let img = format!("/v1/backups/{id}/disks/disk0/image");
    for (spec, a, z) in [
        ("bytes=0-99", 0, 99),
        ("bytes=1048570-1048600", 1_048_570, 1_048_600),
        ("bytes=-5", disk.len() - 5, disk.len() - 1),
    ] {
        let r = c.send(Method::GET, &img, &[("range", spec)], vec![]).await;
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{spec}");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {a}-{z}/{}", disk.len()))
        );
        assert!(r.body == disk[a..=z], "{spec}");
    }
    let r = c
        .send(
            Method::GET,
            &img,
            &[("range", &format!("bytes={}-", disk.len()))],
            vec![],
        )
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::RANGE_NOT_SATISFIABLE, "RANGE_NOT_SATISFIABLE")
    );
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{}", disk.len()))
    );

    // A second, incremental backup with the first as base: only changed blocks recorded.
    let mut day2 = disk.clone();
    day2[MIB as usize + 10] ^= 0xff;
    let s2 = new_session();
    let body2 = json!({"source": "vm-1", "base": id, "disks": [{"name": "disk0", "size": day2.len(), "block_size": MIB}]});
    assert_eq!(
        c.json(Method::PUT, &format!("/v1/sessions/{s2}"), &body2)
            .await
            .status,
        StatusCode::CREATED
    );
    let changed = &day2[MIB as usize..2 * MIB as usize];
    let cid = ChunkId::of(changed);
    let len = changed.len().to_string();
    let r = c
        .send(
            Method::PUT,
            &format!("/v1/sessions/{s2}/chunks/{cid}"),
            &[("content-type", "application/zstd"), ("chunk-length", &len)],
            zstd::bulk::compress(changed, 1).unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    // While s2 is open its base cannot be deleted.
    let r = admin
        .send(Method::DELETE, &format!("/v1/backups/{id}"), &[], vec![])
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::CONFLICT, "BACKUP_IN_USE")
    );
    // A record may also name a chunk of the base (a moved block).
    let recs2 = IndexRecord::encode_all(&[
        IndexRecord { block: 1, id: cid },
        IndexRecord {
            block: 3,
            id: ids[0],
        },
    ]);
    let r = c
        .send(
            Method::PUT,
            &format!("/v1/sessions/{s2}/disks/disk0/entries?start=0"),
            &[],
            recs2.clone(),
        )
        .await;
    // Block 3 is the short last block: a 1 MiB chunk cannot stand there.
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "LENGTH_MISMATCH")
    );
    let recs2 = IndexRecord::encode_all(&[IndexRecord { block: 1, id: cid }]);
    let r = c
        .send(
            Method::PUT,
            &format!("/v1/sessions/{s2}/disks/disk0/entries?start=0"),
            &[],
            recs2.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    let sum2 = blake3::hash(&recs2).to_hex().to_string();
    let r = c
        .json(
            Method::POST,
            &format!("/v1/sessions/{s2}/commit"),
            &json!({"disks": {"disk0": {"entries": 1, "records_blake3": sum2}}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let id2 = r.json()["backup_id"].as_str().unwrap().to_owned();
    let r = c.get(&format!("/v1/backups/{id2}/disks/disk0/image")).await;
    assert!(r.body == day2, "incremental image differs");
    assert_eq!(
        c.get(&format!("/v1/backups/{id2}")).await.json()["base"],
        json!(id)
    );

    // Listing newest first with pagination and Link.
    let r = c.get("/v1/backups?source=vm-1&limit=1").await;
    let l = r.json();
    assert_eq!(l["backups"][0]["id"], json!(id2));
    let next = l["next"].as_str().unwrap().to_owned();
    assert!(r.header("link").unwrap().contains("rel=\"next\""));
    let l2 = c
        .get(&format!("/v1/backups?source=vm-1&limit=1&cursor={next}"))
        .await
        .json();
    assert_eq!(
        (l2["backups"][0]["id"].clone(), l2["next"].clone()),
        (json!(id), json!(null))
    );
    let all = c.get("/v1/backups").await.json();
    assert_eq!(all["backups"].as_array().unwrap().len(), 2);
    let none = c.get("/v1/backups?since=2999-01-01T00:00:00Z").await.json();
    assert_eq!(none["backups"], json!([]));
    let old = c.get("/v1/backups?until=2000-01-01T00:00:00Z").await.json();
    assert_eq!(old["backups"], json!([]));
    let src = c.get("/v1/sources").await.json();
    assert_eq!(src[0]["source"], "vm-1");
    assert_eq!(src[0]["backups"], 2);

    // Reader may read, not write.
    let reader = c.with_token(Some(READER_A));
    assert_eq!(
        reader.get(&format!("/v1/backups/{id}")).await.status,
        StatusCode::OK
    );
    let r = reader
        .json(
            Method::PUT,
            &format!("/v1/sessions/{}", new_session()),
            &body,
        )
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::FORBIDDEN, "FORBIDDEN")
    );

    // Admin: stats, metrics, delete, GC, verify, jobs.
    let stats = admin.get("/v1/stats").await.json();
    assert_eq!(stats["backups"], 2);
    assert!(stats["chunks"].as_u64().unwrap() >= 4);
    assert_eq!(stats["open_sessions"], 0);
    assert_eq!(c.get("/v1/stats").await.code(), "FORBIDDEN");
    let metrics = String::from_utf8(anon.get("/metrics").await.body.to_vec()).unwrap();
    assert!(metrics.contains("repo_chunks_stored_total"), "{metrics}");
    assert!(
        metrics.contains("route=\"/v1/sessions/{id}/chunks/{digest}\",status=\"201\""),
        "{metrics}"
    );
    let r = admin
        .send(Method::DELETE, &format!("/v1/backups/{id}"), &[], vec![])
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        c.get(&format!("/v1/backups/{id}")).await.status,
        StatusCode::NOT_FOUND
    );
    // The incremental is self-contained and still restores.
    assert!(
        c.get(&format!("/v1/backups/{id2}/disks/disk0/image"))
            .await
            .body
            == day2
    );
    let gc = tests::jobs::run_job(&admin, "gc").await;
    assert!(gc["result"]["backups"] == 1, "{gc}");
    tests::jobs::assert_verify_clean(&admin).await;
    assert_eq!(
        admin.get("/v1/admin/jobs/nope").await.status,
        StatusCode::NOT_FOUND
    );
    assert!(
        c.get(&format!("/v1/backups/{id2}/disks/disk0/image"))
            .await
            .body
            == day2
    );

    // Delete an open session: 204, repeatable; afterwards it refuses uploads.
    let s3 = new_session();
    assert_eq!(
        c.json(Method::PUT, &format!("/v1/sessions/{s3}"), &body)
            .await
            .status,
        StatusCode::CREATED
    );
    assert_eq!(
        c.send(Method::DELETE, &format!("/v1/sessions/{s3}"), &[], vec![])
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        c.send(Method::DELETE, &format!("/v1/sessions/{s3}"), &[], vec![])
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        c.get(&format!("/v1/sessions/{s3}")).await.json()["state"],
        "aborted"
    );
    let r = c
        .send(
            Method::PUT,
            &path0.replace(&s.to_string(), &s3.to_string()),
            &h,
            frame,
        )
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::CONFLICT, "SESSION_STATE")
    );
}

#[tokio::test]
async fn block_size_boundaries_round_trip() {
    let srv = TestServer::start().await;
    let c = Client::h2(&srv.url(), Some(BACKUP_A));
    let bs = 256 << 10;
    for (i, len) in [
        0usize,
        1,
        bs - 1,
        bs,
        bs + 1,
        3 * bs - 1,
        3 * bs,
        3 * bs + 1,
    ]
    .into_iter()
    .enumerate()
    {
        let data = test_data(len, i as u64 + 10);
        let id = backup_disk(
            &c,
            &format!("edge-{len}"),
            None,
            &[DiskUpload {
                name: "d",
                data: &data,
                block_size: bs as u32,
            }],
        )
        .await;
        let r = c.get(&format!("/v1/backups/{id}/disks/d/image")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.body == data, "length {len}");
        let m = c.get(&format!("/v1/backups/{id}")).await.json();
        assert_eq!(m["disks"][0]["blocks"], len.div_ceil(bs));
    }
    srv.stop().await;
}

#[tokio::test]
async fn grown_and_shrunk_disks_over_a_base() {
    let srv = TestServer::start().await;
    let c = Client::h2(&srv.url(), Some(BACKUP_A));
    let bs = 256 << 10;
    let day1 = test_data(5 * bs + 7, 3);
    let id1 = backup_disk(
        &c,
        "vm-g",
        None,
        &[DiskUpload {
            name: "d",
            data: &day1,
            block_size: bs as u32,
        }],
    )
    .await;
    for new_len in [7 * bs + 3, 2 * bs + 1] {
        let mut day2 = day1.clone();
        day2.resize(new_len, 0);
        if new_len > day1.len() {
            day2[6 * bs..6 * bs + 100].fill(9);
        }
        let id2 = backup_disk(
            &c,
            "vm-g",
            Some(&id1),
            &[DiskUpload {
                name: "d",
                data: &day2,
                block_size: bs as u32,
            }],
        )
        .await;
        assert!(
            c.get(&format!("/v1/backups/{id2}/disks/d/image"))
                .await
                .body
                == day2,
            "{new_len}"
        );
    }
    srv.stop().await;
}
