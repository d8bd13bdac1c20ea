//! The generated OpenAPI document against real answers: every route of the router is an
//! operation of the document; every route answers, at least once with success and once with an
//! error, to a client that checks each answer's status, media type and JSON body against the
//! served document (closed objects: a field the document lacks fails); and the check itself
//! refuses a body with an unknown field, a missing field or a wrong type.

use std::sync::Arc;

use http::{Method, StatusCode};
use serde_json::{json, Value};
use source_mover::backup::backup;
use tests::backup::{new_session, test_data};
use tests::contract::Contract;
use tests::images::{build, make_tree, Layout, Table};
use tests::mover::{client, opts};
use tests::{backup_disk, Client, DiskUpload, TestServer, ADMIN, BACKUP_A, BACKUP_B};

async fn contract(srv: &TestServer) -> Arc<Contract> {
    let doc = Client::h2(&srv.url(), None)
        .get("/v1/openapi.json")
        .await
        .json();
    Arc::new(Contract::new(doc))
}

#[tokio::test]
async fn document_lists_every_route_and_error_code() {
    let srv = TestServer::start().await;
    let c = contract(&srv).await;
    let doc = c.doc();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            documented.push((method.clone(), path.clone()));
        }
    }
    documented.sort();
    let mut served: Vec<(String, String)> = repo_server::http::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    served.sort();
    assert_eq!(documented, served);
    let mut codes: Vec<String> = doc["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let mut ours: Vec<String> = schema::ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    ours.sort();
    codes.sort();
    assert_eq!(ours, codes);
    // Generated from the types: the manifest's schema names every field the type serialises.
    let manifest = &doc["components"]["schemas"]["Manifest"]["properties"];
    for f in [
        "id",
        "tenant",
        "source",
        "created",
        "base",
        "disks",
        "stats",
        "file_indexes",
    ] {
        assert!(
            manifest.get(f).is_some(),
            "Manifest.{f} missing: {manifest}"
        );
    }
    srv.stop().await;
}

#[tokio::test]
async fn the_check_refuses_unknown_missing_and_mistyped_fields() {
    let srv = TestServer::start().await;
    let c = contract(&srv).await;
    let a = Client::h2(&srv.url(), Some(BACKUP_A));
    let data = test_data(700_000, 1);
    let id = backup_disk(
        &a,
        "vm-check",
        None,
        &[DiskUpload {
            name: "d0",
            data: &data,
            block_size: 256 << 10,
        }],
    )
    .await;
    let path = format!("/v1/backups/{id}");
    let real = a.get(&path).await.body;
    let ct = Some("application/json");
    c.check("GET", &path, StatusCode::OK, ct, &real)
        .expect("the real manifest matches");
    let v: Value = serde_json::from_slice(&real).unwrap();
    let mut added = v.clone();
    added["stats"]["surprise"] = json!(1);
    let mut dropped = v.clone();
    dropped.as_object_mut().unwrap().remove("tenant");
    let mut mistyped = v.clone();
    mistyped["disks"][0]["size"] = json!("big");
    let mut negative = v.clone();
    negative["stats"]["new_chunks"] = json!(-1);
    for (what, bad) in [
        ("unknown field", added),
        ("missing field", dropped),
        ("wrong type", mistyped),
        ("negative count", negative),
    ] {
        let body = serde_json::to_vec(&bad).unwrap();
        let e = c.check("GET", &path, StatusCode::OK, ct, &body);
        assert!(e.is_err(), "{what} passed the check");
    }
    // An undocumented status or media type, and a route that is not in the document.
    assert!(c
        .check("GET", &path, StatusCode::CONFLICT, ct, b"{}")
        .is_err());
    assert!(c
        .check("GET", &path, StatusCode::OK, Some("text/html"), &real)
        .is_err());
    assert!(c
        .check("GET", "/v1/nowhere", StatusCode::OK, ct, b"{}")
        .is_err());
    srv.stop().await;
}

async fn job_done(admin: &Client, job: &str) -> Value {
    loop {
        let r = admin.get(&format!("/v1/admin/jobs/{job}")).await;
        assert_eq!(r.status, StatusCode::OK);
        let j = r.json();
        if j["state"] != "running" {
            assert_eq!(j["state"], "done", "{j}");
            return j;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn expect(r: &tests::Resp, status: StatusCode, code: &str) {
    assert_eq!(r.status, status, "{:?}", String::from_utf8_lossy(&r.body));
    if !code.is_empty() {
        assert_eq!(r.code(), code);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_success_and_errors_as_documented() {
    let srv = TestServer::start_with(|c| {
        c.retention.min_age = Some(std::time::Duration::from_secs(3600));
        c.nbd.listen = Some("127.0.0.1:0".parse().expect("an address"));
    })
    .await;
    let contract = contract(&srv).await;
    let url = srv.url();
    let anon = Client::h2(&url, None).checked(contract.clone());
    let a = anon.with_token(Some(BACKUP_A));
    let b = anon.with_token(Some(BACKUP_B));
    let admin = anon.with_token(Some(ADMIN));
    use StatusCode as S;

    // Public routes.
    expect(&anon.get("/healthz").await, S::OK, "");
    expect(&anon.get("/metrics").await, S::OK, "");
    expect(&anon.get("/v1/capabilities").await, S::OK, "");
    expect(&anon.get("/v1/openapi.json").await, S::OK, "");
    expect(&a.get("/v1/whoami").await, S::OK, "");
    expect(
        &anon.get("/v1/whoami").await,
        S::UNAUTHORIZED,
        "UNAUTHORIZED",
    );

    // A whole session through the checked client: create, find-missing, chunks, entries, commit.
    let data = test_data(900_000, 7);
    let disk = [DiskUpload {
        name: "d0",
        data: &data,
        block_size: 256 << 10,
    }];
    let full = backup_disk(&a, "vm-a", None, &disk).await;
    let mut data2 = data.clone();
    data2[10] ^= 1;
    let incr = backup_disk(
        &a,
        "vm-a",
        Some(&full),
        &[DiskUpload {
            name: "d0",
            data: &data2,
            block_size: 256 << 10,
        }],
    )
    .await;

    // NBD exports: create (and a ttl over the limit), end, end again (gone: 404).
    let exports = format!("/v1/backups/{full}/disks/d0/exports");
    let created = a.json(Method::POST, &exports, &json!({})).await;
    expect(&created, S::CREATED, "");
    expect(
        &a.json(Method::POST, &exports, &json!({"ttl_s": 0})).await,
        S::UNPROCESSABLE_ENTITY,
        "INVALID_BODY",
    );
    let name = created.json()["name"].as_str().expect("a name").to_owned();
    let one = format!("{exports}/{name}");
    expect(
        &a.send(Method::DELETE, &one, &[], Vec::new()).await,
        S::NO_CONTENT,
        "",
    );
    expect(
        &a.send(Method::DELETE, &one, &[], Vec::new()).await,
        S::NOT_FOUND,
        "NOT_FOUND",
    );

    // Sessions: 200 on an identical create, state, abort, and their errors.
    let s = new_session();
    let spec =
        json!({"source": "vm-s", "disks": [{"name": "d0", "size": 10, "block_size": 262144}]});
    let sp = format!("/v1/sessions/{s}");
    expect(&a.json(Method::PUT, &sp, &spec).await, S::CREATED, "");
    expect(&a.json(Method::PUT, &sp, &spec).await, S::OK, "");
    expect(&a.get(&sp).await, S::OK, "");
    let other =
        json!({"source": "vm-t", "disks": [{"name": "d0", "size": 10, "block_size": 262144}]});
    expect(
        &a.json(Method::PUT, &sp, &other).await,
        S::CONFLICT,
        "SESSION_CONFLICT",
    );
    expect(
        &a.json(Method::PUT, "/v1/sessions/not-a-uuid", &spec).await,
        S::BAD_REQUEST,
        "BAD_ID",
    );
    let bad_body = json!({"source": "vm-s", "disks": [], "colour": "red"});
    let s2 = new_session();
    expect(
        &a.json(Method::PUT, &format!("/v1/sessions/{s2}"), &bad_body)
            .await,
        S::UNPROCESSABLE_ENTITY,
        "INVALID_BODY",
    );
    let chunk = schema::ChunkId::of(&[1u8; 10]);
    let zero = [0u8; 32];
    expect(
        &a.send(
            Method::POST,
            &format!("{sp}/find-missing"),
            &[("content-type", "application/octet-stream")],
            zero[..31].to_vec(),
        )
        .await,
        S::BAD_REQUEST,
        "BAD_BODY",
    );
    expect(
        &a.send(
            Method::PUT,
            &format!("{sp}/chunks/{chunk}"),
            &[("content-type", "application/zstd")],
            vec![1u8; 4],
        )
        .await,
        S::BAD_REQUEST,
        "MISSING_CHUNK_LENGTH",
    );
    expect(
        &a.send(
            Method::PUT,
            &format!("{sp}/disks/d0/entries?start=5"),
            &[("content-type", "application/octet-stream")],
            Vec::new(),
        )
        .await,
        S::CONFLICT,
        "POSITION_CONFLICT",
    );
    expect(
        &a.send(Method::DELETE, &sp, &[], Vec::new()).await,
        S::NO_CONTENT,
        "",
    );
    let gone = new_session();
    expect(
        &a.get(&format!("/v1/sessions/{gone}")).await,
        S::NOT_FOUND,
        "NOT_FOUND",
    );
    expect(
        &a.json(
            Method::POST,
            &format!("/v1/sessions/{gone}/commit"),
            &json!({"disks": {}}),
        )
        .await,
        S::NOT_FOUND,
        "NOT_FOUND",
    );
    expect(
        &a.send(Method::DELETE, "/v1/sessions/zzz", &[], Vec::new())
            .await,
        S::BAD_REQUEST,
        "BAD_ID",
    );

    // Chunks.
    let m = a.get(&format!("/v1/backups/{full}")).await.json();
    let idx = a.get(&format!("/v1/backups/{full}/disks/d0/index")).await;
    expect(&idx, S::OK, "");
    let first = schema::ChunkId::from_slice(&idx.body[..32]).unwrap();
    expect(
        &a.send(
            Method::HEAD,
            &format!("/v1/chunks/{first}"),
            &[],
            Vec::new(),
        )
        .await,
        S::OK,
        "",
    );
    expect(
        &a.send(
            Method::HEAD,
            &format!("/v1/chunks/{chunk}"),
            &[],
            Vec::new(),
        )
        .await,
        S::NOT_FOUND,
        "",
    );
    expect(&a.get(&format!("/v1/chunks/{first}")).await, S::OK, "");
    expect(
        &a.get("/v1/chunks/blake3:xyz").await,
        S::BAD_REQUEST,
        "BAD_DIGEST",
    );

    // Catalog.
    expect(&a.get("/v1/sources").await, S::OK, "");
    expect(
        &anon.get("/v1/sources").await,
        S::UNAUTHORIZED,
        "UNAUTHORIZED",
    );
    expect(&a.get("/v1/backups?limit=1").await, S::OK, "");
    expect(
        &a.get("/v1/backups?limit=0").await,
        S::BAD_REQUEST,
        "BAD_REQUEST",
    );
    expect(&a.get(&format!("/v1/backups/{incr}")).await, S::OK, "");
    expect(
        &b.get(&format!("/v1/backups/{full}")).await,
        S::NOT_FOUND,
        "NOT_FOUND",
    );
    expect(
        &a.get(&format!("/v1/backups/{full}/disks/nope/index")).await,
        S::NOT_FOUND,
        "NOT_FOUND",
    );
    let img = format!("/v1/backups/{full}/disks/d0/image");
    expect(&a.get(&img).await, S::OK, "");
    expect(
        &a.send(Method::GET, &img, &[("range", "bytes=0-99")], Vec::new())
            .await,
        S::PARTIAL_CONTENT,
        "",
    );
    expect(
        &a.send(
            Method::GET,
            &img,
            &[("range", "bytes=99999999-")],
            Vec::new(),
        )
        .await,
        S::RANGE_NOT_SATISFIABLE,
        "RANGE_NOT_SATISFIABLE",
    );
    assert_eq!(m["id"], full.as_str());

    // Guest files: a real ext4 image through the real mover.
    let dir = tempfile::tempdir().unwrap();
    let tree = make_tree(dir.path());
    let image = build(
        dir.path(),
        "g",
        Layout::ext4(Table::Gpt, 4096, 24, 2, 1),
        &tree,
    );
    let mc = client(&url);
    let rep = backup(
        &mc,
        &opts("vm-files", &image.path, &dir.path().join("state")),
    )
    .await
    .unwrap();
    let g = &rep.backup_id;
    expect(
        &a.get(&format!("/v1/backups/{g}/files?path=/")).await,
        S::OK,
        "",
    );
    expect(
        &a.get(&format!("/v1/backups/{g}/files?path=/nope")).await,
        S::NOT_FOUND,
        "NOT_FOUND",
    );
    expect(
        &a.get(&format!("/v1/backups/{g}/files?colour=red")).await,
        S::BAD_REQUEST,
        "BAD_REQUEST",
    );
    let listing = a
        .get(&format!("/v1/backups/{g}/files?path=/&depth=64"))
        .await
        .json();
    let file = listing["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["kind"] == "file" && e["size"].as_u64().unwrap() > 100 && e["excluded"] == false
        })
        .expect("a regular file")["path"]
        .as_str()
        .unwrap()
        .to_owned();
    let content = format!(
        "/v1/backups/{g}/files/content?path={}",
        schema::query::encode(&file)
    );
    expect(&a.get(&content).await, S::OK, "");
    expect(
        &a.send(
            Method::GET,
            &content,
            &[("range", "bytes=1-10")],
            Vec::new(),
        )
        .await,
        S::PARTIAL_CONTENT,
        "",
    );
    expect(
        &a.get(&format!("/v1/backups/{g}/files/content?path=/etc"))
            .await,
        S::BAD_REQUEST,
        "BAD_REQUEST",
    );
    expect(&a.get("/v1/search?name=*").await, S::OK, "");
    expect(&a.get("/v1/search?name=*&limit=1").await, S::OK, "");
    expect(
        &a.get("/v1/search?limit=zero").await,
        S::BAD_REQUEST,
        "BAD_REQUEST",
    );
    expect(
        &a.get("/v1/search?name=x&tenant=globex").await,
        S::FORBIDDEN,
        "FORBIDDEN",
    );

    // Admin: stats, jobs, retention, prune, delete.
    expect(&admin.get("/v1/stats").await, S::OK, "");
    expect(&a.get("/v1/stats").await, S::FORBIDDEN, "FORBIDDEN");
    let gc = admin
        .send(Method::POST, "/v1/admin/gc", &[], Vec::new())
        .await;
    expect(&gc, S::ACCEPTED, "");
    let gc_job = job_done(&admin, gc.json()["job"].as_str().unwrap()).await;
    assert!(gc_job["result"].is_object(), "{gc_job}");
    expect(
        &a.send(Method::POST, "/v1/admin/gc", &[], Vec::new()).await,
        S::FORBIDDEN,
        "FORBIDDEN",
    );
    let v = admin
        .json(Method::POST, "/v1/admin/verify", &json!({"fraction": 1.0}))
        .await;
    expect(&v, S::ACCEPTED, "");
    job_done(&admin, v.json()["job"].as_str().unwrap()).await;
    expect(
        &admin
            .json(
                Method::POST,
                "/v1/admin/verify",
                &json!({"fraction": "all"}),
            )
            .await,
        S::UNPROCESSABLE_ENTITY,
        "INVALID_BODY",
    );
    expect(
        &admin.get("/v1/admin/jobs/gc-0-0").await,
        S::NOT_FOUND,
        "NOT_FOUND",
    );
    expect(
        &a.get("/v1/admin/jobs/gc-0-0").await,
        S::FORBIDDEN,
        "FORBIDDEN",
    );
    let policy = json!({"keep_last": 1});
    expect(
        &admin
            .json(Method::PUT, "/v1/admin/retention/vm-a", &policy)
            .await,
        S::OK,
        "",
    );
    expect(
        &admin
            .json(Method::PUT, "/v1/admin/retention/vm-a", &json!({"keep": 1}))
            .await,
        S::UNPROCESSABLE_ENTITY,
        "INVALID_BODY",
    );
    expect(&admin.get("/v1/admin/retention").await, S::OK, "");
    expect(
        &a.get("/v1/admin/retention").await,
        S::FORBIDDEN,
        "FORBIDDEN",
    );
    // The dry run names the full backup the policy would drop, immutable for an hour.
    let dry = admin
        .json(Method::POST, "/v1/admin/prune", &json!({"dry_run": true}))
        .await;
    expect(&dry, S::OK, "");
    let report = dry.json();
    let vm_a = report["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["source"] == "vm-a")
        .expect("vm-a in the report")
        .clone();
    assert_eq!(vm_a["kept"], json!([incr]));
    assert_eq!(vm_a["skipped"][0]["reason"], "BACKUP_IMMUTABLE", "{vm_a}");
    expect(
        &admin
            .json(Method::POST, "/v1/admin/prune", &json!({}))
            .await,
        S::UNPROCESSABLE_ENTITY,
        "INVALID_BODY",
    );
    expect(
        &admin
            .send(Method::DELETE, "/v1/admin/retention/vm-a", &[], Vec::new())
            .await,
        S::NO_CONTENT,
        "",
    );
    expect(
        &admin
            .send(Method::DELETE, "/v1/admin/retention/vm-a", &[], Vec::new())
            .await,
        S::NOT_FOUND,
        "NOT_FOUND",
    );
    expect(
        &admin
            .send(
                Method::DELETE,
                &format!("/v1/backups/{full}"),
                &[],
                Vec::new(),
            )
            .await,
        S::CONFLICT,
        "BACKUP_IMMUTABLE",
    );
    expect(
        &a.send(
            Method::DELETE,
            &format!("/v1/backups/{full}"),
            &[],
            Vec::new(),
        )
        .await,
        S::FORBIDDEN,
        "FORBIDDEN",
    );

    // A second server without the immutability window (same document): a deletion that
    // succeeds, and metrics that need a token.
    let srv2 = TestServer::start_with(|c| c.metrics_need_token = true).await;
    let anon2 = Client::h2(&srv2.url(), None).checked(contract.clone());
    let one = backup_disk(&anon2.with_token(Some(BACKUP_A)), "vm-d", None, &disk).await;
    expect(
        &anon2
            .with_token(Some(ADMIN))
            .send(
                Method::DELETE,
                &format!("/v1/backups/{one}"),
                &[],
                Vec::new(),
            )
            .await,
        S::NO_CONTENT,
        "",
    );
    expect(
        &anon2.get("/metrics").await,
        S::UNAUTHORIZED,
        "UNAUTHORIZED",
    );
    srv2.stop().await;

    // Coverage: every route answered with success, and with an error where it has any.
    let seen = contract.seen();
    let mut missing = Vec::new();
    for (method, path) in repo_server::http::ROUTES {
        let op = &contract.doc()["paths"][*path][*method];
        let statuses: Vec<u16> = seen
            .iter()
            .filter(|(m, p, _)| m == method && p == path)
            .map(|(_, _, s)| *s)
            .collect();
        if !statuses.iter().any(|s| (200..300).contains(s)) {
            missing.push(format!("{method} {path}: no success"));
        }
        let documents_errors = op["responses"]
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.starts_with('4'));
        if documents_errors && !statuses.iter().any(|s| (400..500).contains(s)) {
            missing.push(format!("{method} {path}: no error"));
        }
    }
    assert!(missing.is_empty(), "not covered: {missing:#?}");
    srv.stop().await;
}
