//! Early answers reach the real `curl` binary: every request the server refuses before reading
//! its body (400, 401, 403, 404, 405, 413, 415), and the 200 for a chunk the repository already
//! holds, shows curl its status and JSON body over h2c (`--http2-prior-knowledge`) and over
//! HTTP/1.1, with small bodies and with bodies of several MiB, far over the limit. curl exits 0;
//! before the drain (`repo_server::http::drain`) curl 7.88 printed `(92) Stream error in the
//! HTTP/2 framing layer` and nothing else.

use std::path::{Path, PathBuf};

use http::Method;
use schema::{ChunkId, ErrorCode};
use serde_json::{json, Value};
use tests::backup::new_session;
use tests::{Client, TestServer, BACKUP_A, READER_A};

const MIB: usize = 1 << 20;

/// The largest chunk the test server takes, so that 8 MiB is far over it.
const MAX_CHUNK: u64 = MIB as u64;

/// What curl printed and how it ended.
struct Curl {
    exit: Option<i32>,
    status: u16,
    version: String,
    body: String,
    stderr: String,
}

/// `curl -sS -X PUT --data-binary @file` of `body_file` to `url` with `headers`, over h2c or
/// HTTP/1.1; curl appends the status and HTTP version on a last line.
async fn curl_put(url: &str, h2: bool, headers: &[String], body_file: &Path) -> Curl {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.arg("-sS")
        .arg(if h2 {
            "--http2-prior-knowledge"
        } else {
            "--http1.1"
        })
        .args(["-X", "PUT", "--max-time", "60"])
        .arg("--data-binary")
        .arg(format!("@{}", body_file.display()))
        .args(["-w", "\n%{http_code} %{http_version}"]);
    for h in headers {
        cmd.arg("-H").arg(h);
    }
    let out = cmd.arg(url).output().await.expect("run curl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, last) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let (status, version) = last.split_once(' ').unwrap_or((last, ""));
    Curl {
        exit: out.status.code(),
        status: status.parse().unwrap_or(0),
        version: version.to_owned(),
        body: body.to_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// One refused request: what to send and what curl must show.
struct Case {
    what: &'static str,
    path: String,
    token: Option<&'static str>,
    headers: Vec<String>,
    status: u16,
    code: Option<ErrorCode>,
}

impl Case {
    fn new(what: &'static str, path: String, status: u16, code: Option<ErrorCode>) -> Case {
        Case {
            what,
            path,
            token: Some(BACKUP_A),
            headers: vec!["Content-Type: application/zstd".into()],
            status,
            code,
        }
    }

    fn token(mut self, token: Option<&'static str>) -> Case {
        self.token = token;
        self
    }

    fn header(mut self, h: impl Into<String>) -> Case {
        self.headers.push(h.into());
        self
    }

    fn content_type(mut self, ct: &str) -> Case {
        self.headers[0] = format!("Content-Type: {ct}");
        self
    }
}

/// Writes `n` bytes of noise (incompressible, like a real chunk body) to `dir/name`.
fn body_file(dir: &Path, name: &str, n: usize) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, tests::images::noise(n, n as u64)).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_errors_reach_curl_over_h2c_and_http1() {
    let srv = TestServer::start_with(|c| {
        c.limits.max_chunk_bytes = MAX_CHUNK;
        c.limits.max_entries_body = MAX_CHUNK;
    })
    .await;
    let url = srv.url();
    let dir = tempfile::tempdir().unwrap();
    let small = body_file(dir.path(), "small", 1000);
    let large = body_file(dir.path(), "large", 8 * MIB);

    // A session, and one chunk the repository holds (a second upload of it is answered 200
    // from the headers alone).
    let c = Client::h2(&url, Some(BACKUP_A));
    let s = new_session();
    let spec = json!({"source": "vm-curl", "disks": [{"name": "d", "size": MAX_CHUNK, "block_size": MAX_CHUNK}]});
    let r = c
        .json(Method::PUT, &format!("/v1/sessions/{s}"), &spec)
        .await;
    assert_eq!(r.status.as_u16(), 201, "{:?}", r.body);
    let held = vec![5u8; 4096];
    let held_id = ChunkId::of(&held);
    let r = c
        .send(
            Method::PUT,
            &format!("/v1/sessions/{s}/chunks/{held_id}"),
            &[
                ("content-type", "application/octet-stream"),
                ("chunk-length", "4096"),
            ],
            held,
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "{:?}", r.body);

    let id = ChunkId::of(b"a chunk nobody sent");
    let chunk = format!("/v1/sessions/{s}/chunks/{id}");
    let len = |n: u64| format!("Chunk-Length: {n}");
    let cases = [
        Case::new(
            "no Chunk-Length",
            chunk.clone(),
            400,
            Some(ErrorCode::MissingChunkLength),
        ),
        Case::new(
            "a bad chunk id",
            format!("/v1/sessions/{s}/chunks/blake3:not-hex"),
            400,
            Some(ErrorCode::BadDigest),
        )
        .header(len(4096)),
        Case::new(
            "a bad session id",
            format!("/v1/sessions/nope/chunks/{id}"),
            400,
            Some(ErrorCode::BadId),
        )
        .header(len(4096)),
        Case::new(
            "no token",
            chunk.clone(),
            401,
            Some(ErrorCode::Unauthorized),
        )
        .token(None)
        .header(len(4096)),
        Case::new(
            "an unknown token",
            chunk.clone(),
            401,
            Some(ErrorCode::Unauthorized),
        )
        .token(Some("not-a-token-of-this-server"))
        .header(len(4096)),
        Case::new(
            "a reader token",
            chunk.clone(),
            403,
            Some(ErrorCode::Forbidden),
        )
        .token(Some(READER_A))
        .header(len(4096)),
        Case::new(
            "a session that does not exist",
            format!("/v1/sessions/{}/chunks/{id}", new_session()),
            404,
            Some(ErrorCode::NotFound),
        )
        .header(len(4096)),
        Case::new(
            "no such route",
            "/v1/no-such-route".into(),
            404,
            Some(ErrorCode::NotFound),
        ),
        Case::new(
            "a method the path does not allow",
            "/v1/stats".into(),
            405,
            Some(ErrorCode::MethodNotAllowed),
        ),
        Case::new(
            "a Chunk-Length over the limit",
            chunk.clone(),
            413,
            Some(ErrorCode::TooLarge),
        )
        .header(len(MAX_CHUNK + 1)),
        Case::new(
            "records over the limit",
            format!("/v1/sessions/{s}/disks/d/entries?start=0"),
            413,
            Some(ErrorCode::TooLarge),
        )
        .content_type("application/octet-stream"),
        Case::new(
            "a content type chunks do not have",
            chunk.clone(),
            415,
            Some(ErrorCode::UnsupportedType),
        )
        .content_type("text/plain")
        .header(len(4096)),
        Case::new(
            "a chunk the repository holds (200 from the headers)",
            format!("/v1/sessions/{s}/chunks/{held_id}"),
            200,
            None,
        )
        .content_type("application/octet-stream")
        .header(len(4096)),
    ];

    let mut failures = Vec::new();
    for case in &cases {
        for (h2, version) in [(true, "2"), (false, "1.1")] {
            for (size, file) in [("1000 B", &small), ("8 MiB", &large)] {
                // Over the records limit only when the body is.
                if case.what == "records over the limit" && file == &small {
                    continue;
                }
                let mut headers = case.headers.clone();
                if let Some(t) = case.token {
                    headers.push(format!("Authorization: Bearer {t}"));
                }
                let got = curl_put(&format!("{url}{}", case.path), h2, &headers, file).await;
                let code = serde_json::from_str::<Value>(&got.body)
                    .ok()
                    .and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
                let want_code = case.code.map(ErrorCode::as_str);
                let ok = got.exit == Some(0)
                    && got.status == case.status
                    && got.version == version
                    && code == want_code
                    && (case.code.is_some() || got.body.is_empty());
                if !ok {
                    failures.push(format!(
                        "{} (HTTP/{version}, {size} body): curl exit {:?}, status {} HTTP/{}, body {:?}, stderr {:?}; want exit 0, {} {:?}",
                        case.what,
                        got.exit,
                        got.status,
                        got.version,
                        got.body,
                        got.stderr.trim(),
                        case.status,
                        want_code
                    ));
                }
            }
        }
    }
    // The connection-level state is sound afterwards: the session carries on.
    let r = c.get(&format!("/v1/sessions/{s}")).await;
    assert_eq!(r.status.as_u16(), 200, "{:?}", r.body);
    assert!(
        failures.is_empty(),
        "{} of {} curl runs did not show the answer:\n{}",
        failures.len(),
        cases.len() * 4 - 2,
        failures.join("\n")
    );
    srv.stop().await;
}
