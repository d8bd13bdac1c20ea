//! Admin jobs (GC, verify) driven to completion.

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::Client;

/// Starts `POST /v1/admin/{kind}` and polls until the job is no longer running (at most 60 s);
/// panics unless it finished `done`. Returns the job report.
pub async fn run_job(admin: &Client, kind: &str) -> Value {
    let r = admin
        .send(Method::POST, &format!("/v1/admin/{kind}"), &[], vec![])
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
