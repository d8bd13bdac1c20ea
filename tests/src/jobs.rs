//! Admin jobs (GC, verify) driven to completion.

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::Client;

/// Starts `POST /v1/admin/{kind}` and polls until the job is no longer running (at most 60 s);
/// panics unless it finished `done`. Returns the job report.
pub async fn run_job(admin: &Client, kind: &str) -> Value {
    run_job_with(admin, kind, &Value::Null).await
}

/// [`run_job`] with a JSON request body (none when `body` is null).
pub async fn run_job_with(admin: &Client, kind: &str, body: &Value) -> Value {
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    let r = admin
        .send(Method::POST, &format!("/v1/admin/{kind}"), &[], body)
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{kind}: {:?}", r.body);
    let job = r.json()["job"].as_str().unwrap().to_owned();
    for _ in 0..3000 {
        let rep = admin.get(&format!("/v1/admin/jobs/{job}")).await.json();
        if rep["state"] != "running" {
            assert_eq!(rep["state"], "done", "{rep}");
            return rep;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("job {job} still running after 60 s");
}

/// `repo-server check --data DIR [--repair]` with the built binary: (exit code, JSON report).
pub fn offline_check(data: &std::path::Path, repair: bool) -> (Option<i32>, Value) {
    let mut cmd = std::process::Command::new(crate::server::server_binary());
    cmd.args(["check", "--data"]).arg(data);
    if repair {
        cmd.arg("--repair");
    }
    let out = cmd.output().unwrap();
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| json!({ "stderr": String::from_utf8_lossy(&out.stderr) }));
    (out.status.code(), report)
}

/// Runs verify and asserts it found no corrupt and no missing chunk.
pub async fn assert_verify_clean(admin: &Client) {
    let v = run_job(admin, "verify").await;
    assert_eq!(
        (
            v["result"]["corrupt"].clone(),
            v["result"]["missing"].clone()
        ),
        (json!([]), json!([])),
        "{v}"
    );
}
