//! Hostile input: every bad request gets its documented 4xx and changes nothing on disk.

use std::io::{Read, Write};
use std::time::Duration;

use http::{Method, StatusCode};
use schema::{ChunkId, IndexRecord};
use serde_json::json;
use tests::backup::{new_session, test_data};
use tests::{
    backup_disk, snapshot, Client, DiskUpload, Resp, TestServer, ADMIN, BACKUP_A, BACKUP_B,
};

const BS: u32 = 256 << 10;

fn expect(r: &Resp, status: u16, code: &str, what: &str) {
    assert_eq!(
        r.status.as_u16(),
        status,
        "{what}: {:?}",
        String::from_utf8_lossy(&r.body)
    );
    if !code.is_empty() {
        assert_eq!(r.code(), code, "{what}");
    }
}

/// Streams a zstd frame of `n` zeros without a declared content size.
fn bomb(n: usize) -> Vec<u8> {
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..n >> 20 {
        enc.write_all(&zeros).unwrap();
    }
    enc.finish().unwrap()
}

/// Sends raw bytes over HTTP/1.1 and returns what came back before the server closed or `wait` passed.
fn raw_http1(addr: std::net::SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn hostile_requests_get_4xx_and_change_nothing() {
    let srv = TestServer::start_with(|c| {
        c.limits.max_entries_body = 4096;
        c.limits.max_find_missing = 16;
        c.limits.max_json_body = 8192;
        c.limits.body_idle_timeout = Duration::from_secs(1);
    })
    .await;
    let c = Client::h2(&srv.url(), Some(BACKUP_A));
    // Setup: a committed backup of acme and an open session with one chunk uploaded.
    let data = test_data(2 * BS as usize, 5);
    let committed = backup_disk(
        &c,
        "vm-h",
        None,
        &[DiskUpload {
            name: "disk0",
            data: &data,
            block_size: BS,
        }],
    )
    .await;
    let s = new_session();
    let spec =
        json!({"source": "vm-h", "disks": [{"name": "disk0", "size": 2 * BS, "block_size": BS}]});
    expect(
        &c.json(Method::PUT, &format!("/v1/sessions/{s}"), &spec)
            .await,
        201,
        "",
        "create",
    );
    let block = &data[..BS as usize];
    let id = ChunkId::of(block);
    let other = ChunkId::of(b"something else");
    let frame = zstd::bulk::compress(block, 3).unwrap();
    let len = BS.to_string();
    let chunk = |d: &ChunkId| format!("/v1/sessions/{s}/chunks/{d}");
    let zh = [
        ("content-type", "application/zstd"),
        ("chunk-length", len.as_str()),
    ];
    expect(
        &c.send(Method::PUT, &chunk(&id), &zh, frame.clone()).await,
        200,
        "",
        "setup upload (already stored by the backup)",
    );
    let before = (snapshot(&srv.data), snapshot(&srv.store_dir()));

    // Digests and chunk bodies.
    expect(
        &c.send(Method::PUT, &chunk(&other), &zh, frame.clone())
            .await,
        422,
        "DIGEST_MISMATCH",
        "wrong digest",
    );
    let hex = id.hex();
    for bad in [
        format!("blake3:{}", &hex[..63]),
        format!("sha256:{hex}"),
        format!("blake3:{}", hex.to_uppercase()),
        hex.clone(),
        format!("blake3:{}", "0".repeat(64)),
    ] {
        expect(
            &c.send(
                Method::PUT,
                &format!("/v1/sessions/{s}/chunks/{bad}"),
                &zh,
                frame.clone(),
            )
            .await,
            400,
            "BAD_DIGEST",
            &bad,
        );
    }
    let fresh = test_data(BS as usize, 77);
    let fid = ChunkId::of(&fresh);
    let ff = zstd::bulk::compress(&fresh, 3).unwrap();
    expect(
        &c.send(
            Method::PUT,
            &chunk(&fid),
            &[("content-type", "application/zstd")],
            ff.clone(),
        )
        .await,
        400,
        "MISSING_CHUNK_LENGTH",
        "no length",
    );
    expect(
        &c.send(
            Method::PUT,
            &chunk(&fid),
            &[
                ("content-type", "application/zstd"),
                ("chunk-length", "abc"),
            ],
            ff.clone(),
        )
        .await,
        400,
        "BAD_REQUEST",
        "length text",
    );
    expect(
        &c.send(
            Method::PUT,
            &chunk(&fid),
            &[
                ("content-type", "application/zstd"),
                ("chunk-length", "99999999999"),
            ],
            ff.clone(),
        )
        .await,
        413,
        "TOO_LARGE",
        "huge length",
    );
    expect(
        &c.send(
            Method::PUT,
            &chunk(&fid),
            &[("content-type", "text/plain"), ("chunk-length", &len)],
            ff.clone(),
        )
        .await,
        415,
        "UNSUPPORTED_TYPE",
        "type",
    );
    let short = (BS - 1).to_string();
    expect(
        &c.send(
            Method::PUT,
            &chunk(&fid),
            &[
                ("content-type", "application/zstd"),
                ("chunk-length", &short),
            ],
            ff.clone(),
        )
        .await,
        422,
        "LENGTH_MISMATCH",
        "declared size differs",
    );
    let raw_h = [
        ("content-type", "application/octet-stream"),
        ("chunk-length", "1000"),
    ];
    expect(
        &c.send(Method::PUT, &chunk(&fid), &raw_h, fresh.clone())
            .await,
        413,
        "TOO_LARGE",
        "raw body longer than Chunk-Length",
    );
    expect(
        &c.send(
            Method::PUT,
            &chunk(&fid),
            &[
                ("content-type", "application/octet-stream"),
                ("chunk-length", &len),
            ],
            fresh[..1000].to_vec(),
        )
        .await,
        422,
        "LENGTH_MISMATCH",
        "raw body short",
    );
    // A zstd bomb: ~1 GiB of zeros in a few KiB, no declared size, small Chunk-Length.
    let b = bomb(1 << 30);
    assert!(b.len() < 64 << 10, "bomb is {} bytes", b.len());
    let bid = ChunkId::of(&[0u8; 4096]);
    let t = std::time::Instant::now();
    // Decompression stops at Chunk-Length: the bomb costs 1 MiB of output, not 1 GiB.
    expect(
        &c.send(
            Method::PUT,
            &chunk(&bid),
            &[
                ("content-type", "application/zstd"),
                ("chunk-length", "1048576"),
            ],
            b.clone(),
        )
        .await,
        422,
        "LENGTH_MISMATCH",
        "bomb",
    );
    // With a tiny Chunk-Length the body is larger than any frame of that size: refused unread.
    expect(
        &c.send(
            Method::PUT,
            &chunk(&bid),
            &[
                ("content-type", "application/zstd"),
                ("chunk-length", "4096"),
            ],
            b,
        )
        .await,
        413,
        "TOO_LARGE",
        "bomb, small length",
    );
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "bomb took {:?}",
        t.elapsed()
    );
    let declared = zstd::bulk::compress(&vec![0u8; 64 << 20], 1).unwrap();
    expect(
        &c.send(
            Method::PUT,
            &chunk(&bid),
            &[
                ("content-type", "application/zstd"),
                ("chunk-length", "4096"),
            ],
            declared,
        )
        .await,
        422,
        "LENGTH_MISMATCH",
        "declared bomb",
    );
    let mut two = ff.clone();
    two.extend_from_slice(&ff);
    expect(
        &c.send(Method::PUT, &chunk(&fid), &zh, two).await,
        422,
        "BAD_FRAME",
        "two frames",
    );
    let mut garbage = vec![0x28, 0xb5, 0x2f, 0xfd];
    garbage.extend_from_slice(&[0xff; 64]);
    expect(
        &c.send(Method::PUT, &chunk(&fid), &zh, garbage).await,
        422,
        "BAD_FRAME",
        "garbage frame",
    );
    expect(
        &c.send(Method::PUT, &chunk(&fid), &zh, ff[..ff.len() / 2].to_vec())
            .await,
        422,
        "BAD_FRAME",
        "truncated frame",
    );

    // Records.
    let ep = format!("/v1/sessions/{s}/disks/disk0/entries");
    expect(
        &c.send(Method::PUT, &format!("{ep}?start=0"), &[], vec![0u8; 41])
            .await,
        400,
        "BAD_BODY",
        "ragged records",
    );
    expect(
        &c.send(Method::PUT, &format!("{ep}?start=0"), &[], vec![0u8; 4120])
            .await,
        413,
        "TOO_LARGE",
        "records over limit",
    );
    expect(
        &c.send(Method::PUT, &ep, &[], vec![0u8; 40]).await,
        400,
        "BAD_REQUEST",
        "no start",
    );
    let rec = |block: u64, id: ChunkId| IndexRecord::encode_all(&[IndexRecord { block, id }]);
    expect(
        &c.send(Method::PUT, &format!("{ep}?start=0"), &[], rec(2, id))
            .await,
        422,
        "BLOCK_OUT_OF_RANGE",
        "block 2 of 2",
    );
    expect(
        &c.send(Method::PUT, &format!("{ep}?start=0"), &[], rec(1, fid))
            .await,
        422,
        "UNKNOWN_CHUNK",
        "unpinned chunk",
    );
    expect(
        &c.send(
            Method::PUT,
            &format!("{ep}?start=0"),
            &[("content-type", "text/plain")],
            rec(0, id),
        )
        .await,
        415,
        "UNSUPPORTED_TYPE",
        "records type",
    );
    expect(
        &c.send(
            Method::PUT,
            &format!("/v1/sessions/{s}/disks/nodisk/entries?start=0"),
            &[],
            rec(0, id),
        )
        .await,
        404,
        "NOT_FOUND",
        "unknown disk",
    );

    // find-missing.
    let fm = format!("/v1/sessions/{s}/find-missing");
    expect(
        &c.send(Method::POST, &fm, &[], vec![1u8; 33]).await,
        400,
        "BAD_BODY",
        "ragged digests",
    );
    expect(
        &c.send(Method::POST, &fm, &[], vec![1u8; 32 * 17]).await,
        413,
        "TOO_LARGE",
        "too many digests",
    );
    expect(
        &c.json(Method::POST, &fm, &json!({"digests": ["blake3:nope"]}))
            .await,
        422,
        "INVALID_BODY",
        "bad json digest",
    );
    expect(
        &c.send(Method::POST, &fm, &[("content-type", "text/csv")], vec![])
            .await,
        415,
        "UNSUPPORTED_TYPE",
        "find-missing type",
    );

    // JSON bodies.
    let s2 = new_session();
    let sp = format!("/v1/sessions/{s2}");
    expect(
        &c.send(Method::PUT, &sp, &[], "{not json").await,
        422,
        "INVALID_BODY",
        "malformed json",
    );
    expect(
        &c.json(
            Method::PUT,
            &sp,
            &json!({"source": "x", "disks": [], "surprise": 1}),
        )
        .await,
        422,
        "INVALID_BODY",
        "unknown field",
    );
    expect(
        &c.json(
            Method::PUT,
            &sp,
            &json!({"source": "x", "disks": [{"name": "d", "size": 1, "block_size": 12345}]}),
        )
        .await,
        422,
        "INVALID_BODY",
        "block size",
    );
    expect(
        &c.json(
            Method::PUT,
            &sp,
            &json!({"source": "x", "disks": [{"name": "../d", "size": 1, "block_size": BS}]}),
        )
        .await,
        422,
        "INVALID_BODY",
        "disk name",
    );
    expect(&c.json(Method::PUT, &sp, &json!({"source": "x", "base": "nope", "disks": [{"name": "d", "size": 1, "block_size": BS}]})).await, 404, "BASE_NOT_FOUND", "base");
    expect(
        &c.send(Method::PUT, &sp, &[], vec![b' '; 9000]).await,
        413,
        "TOO_LARGE",
        "json over limit",
    );
    expect(
        &c.send(Method::POST, &format!("/v1/sessions/{s}/commit"), &[], "[]")
            .await,
        422,
        "INVALID_BODY",
        "commit body",
    );

    // Ids with path tricks.
    for path in [
        "/v1/sessions/..%2F..%2Fetc/chunks/x".to_string(),
        "/v1/sessions/not-a-uuid".to_string(),
        "/v1/backups/..".to_string(),
        "/v1/backups/%2e%2e".to_string(),
        "/v1/backups/..%2Fcatalog".to_string(),
        format!("/v1/backups/{committed}/disks/..%2F..%2Fchunks/image"),
        format!("/v1/sessions/{s}/disks/..%2Fx/entries?start=0"),
    ] {
        let r = c.send(Method::PUT, &path, &[], rec(0, id)).await;
        let g = c.get(&path).await;
        for r in [r, g] {
            assert!(r.status.is_client_error(), "{path}: {}", r.status);
            assert!(
                matches!(
                    r.code().as_str(),
                    "BAD_ID" | "BAD_DIGEST" | "METHOD_NOT_ALLOWED" | "NOT_FOUND"
                ),
                "{path}: {}",
                r.code()
            );
        }
    }
    expect(
        &c.get(&format!(
            "/v1/backups/{committed}/disks/..%2F..%2Fchunks/image"
        ))
        .await,
        400,
        "BAD_ID",
        "disk name trick",
    );
    expect(
        &c.get("/v1/backups/%2e%2e").await,
        400,
        "BAD_ID",
        "dot-dot id",
    );

    // Tokens.
    let anon = c.with_token(None);
    expect(
        &anon.get(&format!("/v1/sessions/{s}")).await,
        401,
        "UNAUTHORIZED",
        "no token",
    );
    expect(
        &c.with_token(Some("wrong-token-000000000"))
            .get("/v1/backups")
            .await,
        401,
        "UNAUTHORIZED",
        "wrong token",
    );
    let r = anon
        .send(
            Method::GET,
            "/v1/backups",
            &[("authorization", "Basic Zm9vOmJhcg==")],
            vec![],
        )
        .await;
    expect(&r, 401, "UNAUTHORIZED", "basic auth");
    expect(
        &c.get("/v1/stats").await,
        403,
        "FORBIDDEN",
        "stats needs admin",
    );
    expect(
        &c.send(Method::POST, "/v1/admin/gc", &[], vec![]).await,
        403,
        "FORBIDDEN",
        "gc needs admin",
    );
    expect(
        &c.send(
            Method::DELETE,
            &format!("/v1/backups/{committed}"),
            &[],
            vec![],
        )
        .await,
        403,
        "FORBIDDEN",
        "delete needs admin",
    );

    // Another tenant sees none of acme's objects.
    let b = c.with_token(Some(BACKUP_B));
    expect(
        &b.get(&format!("/v1/sessions/{s}")).await,
        404,
        "NOT_FOUND",
        "other tenant session",
    );
    expect(
        &b.send(Method::PUT, &chunk(&id), &zh, frame.clone()).await,
        404,
        "NOT_FOUND",
        "other tenant upload",
    );
    expect(
        &b.send(Method::PUT, &format!("{ep}?start=0"), &[], rec(0, id))
            .await,
        404,
        "NOT_FOUND",
        "other tenant records",
    );
    expect(
        &b.send(Method::POST, &fm, &[], id.0.to_vec()).await,
        404,
        "NOT_FOUND",
        "other tenant find-missing",
    );
    expect(
        &b.json(
            Method::POST,
            &format!("/v1/sessions/{s}/commit"),
            &json!({"disks": {}}),
        )
        .await,
        404,
        "NOT_FOUND",
        "other tenant commit",
    );
    expect(
        &b.send(Method::DELETE, &format!("/v1/sessions/{s}"), &[], vec![])
            .await,
        404,
        "NOT_FOUND",
        "other tenant delete",
    );
    expect(
        &b.get(&format!("/v1/backups/{committed}")).await,
        404,
        "NOT_FOUND",
        "other tenant backup",
    );
    expect(
        &b.get(&format!("/v1/backups/{committed}/disks/disk0/image"))
            .await,
        404,
        "NOT_FOUND",
        "other tenant image",
    );
    expect(
        &b.get(&format!("/v1/chunks/{id}")).await,
        404,
        "NOT_FOUND",
        "other tenant chunk",
    );
    expect(
        &b.send(Method::HEAD, &format!("/v1/chunks/{id}"), &[], vec![])
            .await,
        404,
        "",
        "other tenant chunk head",
    );
    assert_eq!(b.get("/v1/backups").await.json()["backups"], json!([]));
    assert_eq!(b.get("/v1/sources").await.json(), json!([]));
    let r = b
        .json(Method::PUT, &format!("/v1/sessions/{s}"), &spec)
        .await;
    expect(
        &r,
        409,
        "SESSION_CONFLICT",
        "other tenant reusing a session id",
    );

    // Routing and query errors.
    expect(
        &c.send(Method::PATCH, &format!("/v1/sessions/{s}"), &[], vec![])
            .await,
        405,
        "METHOD_NOT_ALLOWED",
        "patch",
    );
    expect(&c.get("/v1/nothing").await, 404, "NOT_FOUND", "no route");
    expect(
        &c.get("/v1/backups?limit=0").await,
        400,
        "BAD_REQUEST",
        "limit",
    );
    expect(
        &c.get("/v1/backups?since=yesterday").await,
        400,
        "BAD_REQUEST",
        "since",
    );
    expect(
        &c.get("/v1/backups?cursor=zz").await,
        400,
        "BAD_REQUEST",
        "cursor",
    );
    expect(
        &c.with_token(Some(ADMIN))
            .get("/v1/admin/jobs/..%2F..")
            .await,
        404,
        "NOT_FOUND",
        "job id",
    );

    // Bodies that stall or break off, over raw HTTP/1.1.
    let head = format!(
        "PUT /v1/sessions/{s}/chunks/{fid} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {BACKUP_A}\r\ncontent-type: application/zstd\r\nchunk-length: {len}\r\ncontent-length: {}\r\n\r\n",
        ff.len()
    );
    let mut partial = head.clone().into_bytes();
    partial.extend_from_slice(&ff[..100]);
    let addr = srv.addr;
    let answer =
        tokio::task::spawn_blocking(move || raw_http1(addr, &partial, Duration::from_secs(5)))
            .await
            .unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "stalled body: {answer:?}"
    );
    assert!(answer.contains("BODY_TIMEOUT"), "{answer}");
    let mut cut = head.into_bytes();
    cut.extend_from_slice(&ff[..100]);
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(&cut).unwrap();
        s.shutdown(std::net::Shutdown::Both).unwrap();
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Nothing of the above changed the data directory, and the session is intact.
    let after = (snapshot(&srv.data), snapshot(&srv.store_dir()));
    assert_eq!(before, after, "data dir changed");
    let st = c.get(&format!("/v1/sessions/{s}")).await.json();
    assert_eq!(
        (
            st["state"].as_str(),
            st["disks"]["disk0"]["entries"].as_u64()
        ),
        (Some("open"), Some(0))
    );
    srv.stop().await;
}

#[tokio::test]
async fn commit_refuses_missing_chunks_and_heals_after_reupload() {
    let srv = TestServer::start().await;
    let c = Client::h2(&srv.url(), Some(BACKUP_A));
    let admin = c.with_token(Some(ADMIN));
    let data = test_data(BS as usize, 9);
    let id = ChunkId::of(&data);
    let s = new_session();
    let spec = json!({"source": "vm-m", "disks": [{"name": "d", "size": BS, "block_size": BS}]});
    c.json(Method::PUT, &format!("/v1/sessions/{s}"), &spec)
        .await;
    let d = DiskUpload {
        name: "d",
        data: &data,
        block_size: BS,
    };
    tests::backup::upload_chunks(&c, &s, &[d]).await;
    let (n, sum) = tests::backup::send_records(&c, &s, &d).await;
    // Damage the stored chunk and let verify find it.
    let hex = id.hex();
    let file = srv
        .store_dir()
        .join(format!("chunks/{}/{}/{hex}", &hex[..2], &hex[2..4]));
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&file, bytes).unwrap();
    let report = tests::jobs::run_job(&admin, "verify").await;
    assert_eq!(report["result"]["corrupt"], json!([id]), "{report}");
    let commit = json!({"disks": {"d": {"entries": n, "records_blake3": sum}}});
    let r = c
        .json(Method::POST, &format!("/v1/sessions/{s}/commit"), &commit)
        .await;
    expect(&r, 422, "MISSING_CHUNKS", "commit with a bad chunk");
    assert_eq!(r.json()["error"]["detail"]["chunks"], json!([id]));
    // find-missing now reports it missing; a fresh upload heals it and the commit goes through.
    tests::backup::upload_chunks(&c, &s, &[d]).await;
    let r = c
        .json(Method::POST, &format!("/v1/sessions/{s}/commit"), &commit)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let b = r.json()["backup_id"].as_str().unwrap().to_owned();
    assert!(c.get(&format!("/v1/backups/{b}/disks/d/image")).await.body == data);
    srv.stop().await;
}

/// Uploads `bytes` as one chunk of session `s` (what a mover does with a file index).
async fn upload_blob(c: &Client, s: &schema::SessionId, bytes: &[u8]) -> ChunkId {
    let id = ChunkId::of(bytes);
    let len = bytes.len().to_string();
    let r = c
        .send(
            Method::PUT,
            &format!("/v1/sessions/{s}/chunks/{id}"),
            &[("content-type", "application/zstd"), ("chunk-length", &len)],
            zstd::bulk::compress(bytes, 3).unwrap(),
        )
        .await;
    assert!(r.status.is_success(), "{:?}", r.body);
    id
}

#[tokio::test]
async fn file_index_extents_outside_the_file_or_the_disk_get_422_naming_the_line() {
    let srv = TestServer::start().await;
    let c = Client::h2(&srv.url(), Some(BACKUP_A));
    let data = test_data(2 * BS as usize, 21);
    let disk_size = data.len() as u64;
    let s = new_session();
    let spec =
        json!({"source": "vm-x", "disks": [{"name": "d", "size": disk_size, "block_size": BS}]});
    expect(
        &c.json(Method::PUT, &format!("/v1/sessions/{s}"), &spec)
            .await,
        201,
        "",
        "create",
    );
    let d = DiskUpload {
        name: "d",
        data: &data,
        block_size: BS,
    };
    tests::backup::upload_chunks(&c, &s, &[d]).await;
    let (n, sum) = tests::backup::send_records(&c, &s, &d).await;
    // A file index whose second line is a 4 KiB file with `extents`.
    let index = |extents: serde_json::Value| {
        let dir = json!({"path": "/etc", "kind": "dir", "size": 4096, "mode": 0o40755, "uid": 0, "gid": 0, "mtime": 0});
        let file = json!({"path": "/etc/f", "kind": "file", "size": 4096, "mode": 0o100644, "uid": 0, "gid": 0, "mtime": 0, "extents": extents});
        format!("{dir}\n{file}\n").into_bytes()
    };
    let m = u64::MAX;
    let bad = [
        (json!([[0, disk_size - 100, 4096]]), "past the disk's end"),
        (json!([[0, disk_size, 1]]), "past the disk's end"),
        (json!([[0, m - 10, 100]]), "past the disk's end"),
        (json!([[m - 10, 0, 100]]), "past the file's size"),
        (json!([[0, 0, 8192]]), "past the file's size"),
        (json!([[0, 0, 4096], [100, 0, 0]]), "is empty"),
    ];
    let mut refs = Vec::new();
    for (extents, _) in &bad {
        let bytes = index(extents.clone());
        let id = upload_blob(&c, &s, &bytes).await;
        refs.push(
            json!({"disk": "d", "partition": 0, "files": 2, "bytes": bytes.len(), "chunks": [id]}),
        );
    }
    let good = index(json!([[0, disk_size - 4096, 4096]]));
    let good_id = upload_blob(&c, &s, &good).await;
    let before = (snapshot(&srv.data), snapshot(&srv.store_dir()));
    let commit = |file_index: &serde_json::Value| json!({"disks": {"d": {"entries": n, "records_blake3": sum}}, "file_indexes": [file_index]});
    for ((extents, why), r) in bad.iter().zip(&refs) {
        let resp = c
            .json(
                Method::POST,
                &format!("/v1/sessions/{s}/commit"),
                &commit(r),
            )
            .await;
        let what = format!("extents {extents}");
        expect(&resp, 422, "INVALID_BODY", &what);
        let msg = resp.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(
            msg.contains("line 2") && msg.contains("/etc/f") && msg.contains(why),
            "{what}: {msg}"
        );
    }
    let after = (snapshot(&srv.data), snapshot(&srv.store_dir()));
    assert_eq!(before, after, "a refused commit changed the data dir");
    // The session is still open; a sound index commits and its file reads back from the disk.
    let r = c
        .json(
            Method::POST,
            &format!("/v1/sessions/{s}/commit"),
            &commit(&json!({"disk": "d", "partition": 0, "files": 2, "bytes": good.len(), "chunks": [good_id]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let b = r.json()["backup_id"].as_str().unwrap().to_owned();
    let f = c
        .get(&format!("/v1/backups/{b}/files/content?path=/etc/f"))
        .await;
    assert_eq!(f.status, StatusCode::OK);
    assert!(f.body[..] == data[data.len() - 4096..]);
    srv.stop().await;
}

/// `repo_session_locks` from `/metrics`.
async fn session_locks(c: &Client) -> i64 {
    let text = String::from_utf8(c.get("/metrics").await.body.to_vec()).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("repo_session_locks "))
        .unwrap_or_else(|| panic!("no repo_session_locks in {text}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_session_ids_and_ended_sessions_leave_no_session_locks() {
    let srv = TestServer::start().await;
    let c = Client::h2(&srv.url(), Some(BACKUP_A));
    let data = test_data(BS as usize, 22);
    let id = ChunkId::of(&data);
    let frame = bytes::Bytes::from(zstd::bulk::compress(&data, 3).unwrap());
    // 10,000 requests naming sessions that do not exist, every kind that takes a session lock.
    let mut set = tokio::task::JoinSet::new();
    for i in 0..10_000u32 {
        let c = c.clone();
        let frame = frame.clone();
        set.spawn(async move {
            let s = new_session();
            let len = BS.to_string();
            let r = match i % 4 {
                0 => {
                    c.send(
                        Method::PUT,
                        &format!("/v1/sessions/{s}/chunks/{id}"),
                        &[("content-type", "application/zstd"), ("chunk-length", &len)],
                        frame,
                    )
                    .await
                }
                1 => {
                    c.send(
                        Method::POST,
                        &format!("/v1/sessions/{s}/find-missing"),
                        &[("content-type", "application/octet-stream")],
                        id.0.to_vec(),
                    )
                    .await
                }
                2 => {
                    let rec = IndexRecord { block: 0, id };
                    c.send(
                        Method::PUT,
                        &format!("/v1/sessions/{s}/disks/d/entries?start=0"),
                        &[("content-type", "application/octet-stream")],
                        IndexRecord::encode_all(&[rec]),
                    )
                    .await
                }
                _ => {
                    c.json(
                        Method::POST,
                        &format!("/v1/sessions/{s}/commit"),
                        &json!({"disks": {}}),
                    )
                    .await
                }
            };
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{:?}", r.body);
        });
        while set.len() >= 64 {
            set.join_next().await.unwrap().unwrap();
        }
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    assert_eq!(
        session_locks(&c).await,
        0,
        "made-up sessions left lock entries"
    );
    // A committed backup, an aborted session and an expired one leave none either.
    backup_disk(
        &c,
        "vm-l",
        None,
        &[DiskUpload {
            name: "d",
            data: &data,
            block_size: BS,
        }],
    )
    .await;
    let spec = json!({"source": "vm-l", "disks": [{"name": "d", "size": BS, "block_size": BS}]});
    let aborted = new_session();
    c.json(Method::PUT, &format!("/v1/sessions/{aborted}"), &spec)
        .await;
    let r = c
        .send(
            Method::DELETE,
            &format!("/v1/sessions/{aborted}"),
            &[],
            vec![],
        )
        .await;
    assert!(r.status.is_success(), "{:?}", r.body);
    let idle = new_session();
    c.json(Method::PUT, &format!("/v1/sessions/{idle}"), &spec)
        .await;
    srv.repo
        .set_clock(repo_server::repo::now_ms() + 30 * 86_400_000);
    let repo = srv.repo.clone();
    // (The server's own expiry worker may get there first.)
    tokio::task::spawn_blocking(move || repo.expire_sessions())
        .await
        .unwrap()
        .unwrap();
    let st = c.get(&format!("/v1/sessions/{idle}")).await.json();
    assert_eq!(st["state"], "aborted", "{st}");
    assert_eq!(
        session_locks(&c).await,
        0,
        "ended sessions left lock entries"
    );
    srv.stop().await;
}
