//! Retention with a controlled clock: a year of daily backups pruned to exactly what the GFS
//! policy defines; the immutability window holds against an admin token; an open session's base
//! is never pruned.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use http::{Method, StatusCode};
use schema::retention::Policy;
use serde_json::{json, Value};
use tests::backup::{new_session, test_data};
use tests::{backup_disk, Client, DiskUpload, TestServer, ADMIN, BACKUP_A};

const DAY: i64 = 86_400_000;

fn ids(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| {
            x.as_str()
                .unwrap_or_else(|| x["id"].as_str().unwrap())
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_year_of_daily_backups_pruned_by_gfs_with_an_immutability_window() {
    let policy = Policy {
        keep_last: 1,
        keep_daily: 7,
        keep_weekly: 4,
        keep_monthly: 12,
        keep_yearly: 2,
    };
    let srv = TestServer::start_with(|c| {
        c.retention.default = Some(policy.clone());
        c.retention.min_age = Some(Duration::from_secs(30 * 86_400));
    })
    .await;
    let c = Client::h2(&srv.url(), Some(BACKUP_A));
    let admin = c.with_token(Some(ADMIN));
    let data = test_data(256 << 10, 9);
    let start = schema::time::parse_rfc3339("2025-01-01T02:00:00Z").unwrap();
    // Date (YYYY-MM-DD) -> backup id, one backup a day through 2025.
    let mut by_date: BTreeMap<String, String> = BTreeMap::new();
    for i in 0..365 {
        srv.repo.set_clock(start + i * DAY);
        let id = backup_disk(
            &c,
            "vm-daily",
            None,
            &[DiskUpload {
                name: "d",
                data: &data,
                block_size: 256 << 10,
            }],
        )
        .await;
        by_date.insert(schema::time::rfc3339(start + i * DAY)[..10].to_string(), id);
    }
    // What the policy keeps, from the calendar (2025-12-29 is a Monday):
    // daily 7: Dec 25-31; weekly 4: Dec 31, 28, 21, 14; monthly 12: every month's last day;
    // yearly 2 and last 1: Dec 31.
    let mut keep: BTreeSet<&str> = [
        "2025-12-25",
        "2025-12-26",
        "2025-12-27",
        "2025-12-28",
        "2025-12-29",
        "2025-12-30",
        "2025-12-31",
    ]
    .into();
    keep.extend(["2025-12-21", "2025-12-14"]);
    keep.extend([
        "2025-01-31",
        "2025-02-28",
        "2025-03-31",
        "2025-04-30",
        "2025-05-31",
        "2025-06-30",
    ]);
    keep.extend([
        "2025-07-31",
        "2025-08-31",
        "2025-09-30",
        "2025-10-31",
        "2025-11-30",
    ]);
    assert_eq!(keep.len(), 20);
    let kept_ids: BTreeSet<String> = keep.iter().map(|d| by_date[*d].clone()).collect();

    // An open session whose base (Nov 15) the policy would prune.
    let nov15 = by_date["2025-11-15"].clone();
    let s = new_session();
    let spec = json!({"source": "vm-daily", "base": nov15, "disks": [{"name": "d", "size": 262_144, "block_size": 262_144}]});
    assert_eq!(
        c.json(Method::PUT, &format!("/v1/sessions/{s}"), &spec)
            .await
            .status,
        StatusCode::CREATED
    );

    // 2026-01-01: backups from Dec 2 02:00 on are inside the 30-day window.
    srv.repo
        .set_clock(schema::time::parse_rfc3339("2026-01-01T00:00:00Z").unwrap());
    let dry = admin
        .json(Method::POST, "/v1/admin/prune", &json!({"dry_run": true}))
        .await
        .json();
    assert_eq!(
        c.get("/v1/backups?limit=1000").await.json()["backups"]
            .as_array()
            .unwrap()
            .len(),
        365,
        "dry run deleted something"
    );
    let real = admin
        .json(Method::POST, "/v1/admin/prune", &json!({"dry_run": false}))
        .await
        .json();
    for rep in [&dry, &real] {
        let src = &rep["sources"][0];
        let kept: BTreeSet<String> = ids(&src["kept"]).into_iter().collect();
        assert_eq!(kept, kept_ids, "kept set");
        let skipped = src["skipped"].as_array().unwrap();
        let immutable: Vec<&Value> = skipped
            .iter()
            .filter(|x| x["reason"] == "BACKUP_IMMUTABLE")
            .collect();
        let in_use: Vec<&Value> = skipped
            .iter()
            .filter(|x| x["reason"] == "BACKUP_IN_USE")
            .collect();
        // Dec 2-13, 15-20, 22-24 are neither kept nor old enough.
        assert_eq!(immutable.len(), 12 + 6 + 3, "{rep}");
        assert_eq!(in_use.len(), 1);
        assert_eq!(in_use[0]["id"], json!(nov15));
        assert_eq!(ids(&src["pruned"]).len(), 365 - 20 - 21 - 1);
    }
    let left: BTreeSet<String> = ids(&c.get("/v1/backups?limit=1000").await.json()["backups"])
        .into_iter()
        .collect();
    assert_eq!(left.len(), 20 + 21 + 1);
    assert!(kept_ids.is_subset(&left));
    // The window holds against an admin token.
    let r = admin
        .send(
            Method::DELETE,
            &format!("/v1/backups/{}", by_date["2025-12-20"]),
            &[],
            vec![],
        )
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::CONFLICT, "BACKUP_IMMUTABLE")
    );

    // Mid-February, with the session gone: the rest goes, the kept set stays.
    assert_eq!(
        c.send(Method::DELETE, &format!("/v1/sessions/{s}"), &[], vec![])
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    srv.repo
        .set_clock(schema::time::parse_rfc3339("2026-02-15T00:00:00Z").unwrap());
    let again = admin
        .json(Method::POST, "/v1/admin/prune", &json!({"dry_run": false}))
        .await
        .json();
    assert_eq!(ids(&again["sources"][0]["pruned"]).len(), 22, "{again}");
    let left: BTreeSet<String> = ids(&c.get("/v1/backups?limit=1000").await.json()["backups"])
        .into_iter()
        .collect();
    assert_eq!(left, kept_ids);
    // Everything kept still restores.
    for id in &kept_ids {
        assert!(c.get(&format!("/v1/backups/{id}/disks/d/image")).await.body == data);
    }
    // Bad requests change nothing: no body, unknown fields, a non-admin token.
    assert_eq!(
        admin
            .send(Method::POST, "/v1/admin/prune", &[], vec![])
            .await
            .code(),
        "INVALID_BODY"
    );
    assert_eq!(
        admin
            .json(
                Method::POST,
                "/v1/admin/prune",
                &json!({"dry_run": false, "force": true})
            )
            .await
            .code(),
        "INVALID_BODY"
    );
    assert_eq!(
        c.json(Method::POST, "/v1/admin/prune", &json!({"dry_run": false}))
            .await
            .code(),
        "FORBIDDEN"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_prune_applies_the_policy_by_itself() {
    let srv = TestServer::start_with(|c| {
        c.retention.default = Some(Policy {
            keep_last: 2,
            ..Policy::default()
        });
        c.retention.schedule = Some(Duration::from_millis(300));
    })
    .await;
    let c = Client::h2(&srv.url(), Some(BACKUP_A));
    let data = test_data(256 << 10, 10);
    let mut made = Vec::new();
    for i in 0..5 {
        srv.repo
            .set_clock(schema::time::parse_rfc3339("2026-03-01T00:00:00Z").unwrap() + i * DAY);
        made.push(
            backup_disk(
                &c,
                "vm-sched",
                None,
                &[DiskUpload {
                    name: "d",
                    data: &data,
                    block_size: 256 << 10,
                }],
            )
            .await,
        );
    }
    let mut left = Vec::new();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = ids(&c.get("/v1/backups?source=vm-sched").await.json()["backups"]);
        if left.len() == 2 {
            break;
        }
    }
    assert_eq!(
        left,
        vec![made[4].clone(), made[3].clone()],
        "the scheduled prune keeps the two newest"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_set_over_the_api_override_the_config() {
    let srv = TestServer::start_with(|c| {
        c.retention.default = Some(Policy {
            keep_last: 1,
            ..Policy::default()
        });
        c.retention.sources.insert(
            "vm-cfg".into(),
            Policy {
                keep_last: 2,
                ..Policy::default()
            },
        );
    })
    .await;
    let c = Client::h2(&srv.url(), Some(BACKUP_A));
    let admin = c.with_token(Some(ADMIN));
    let data = test_data(256 << 10, 11);
    for source in ["vm-cfg", "vm-api", "vm-off"] {
        for i in 0..4 {
            srv.repo
                .set_clock(schema::time::parse_rfc3339("2026-05-01T00:00:00Z").unwrap() + i * DAY);
            backup_disk(
                &c,
                source,
                None,
                &[DiskUpload {
                    name: "d",
                    data: &data,
                    block_size: 256 << 10,
                }],
            )
            .await;
        }
    }
    // Only admins may read or set policies; bodies are checked.
    assert_eq!(
        c.get("/v1/admin/retention").await.status,
        StatusCode::FORBIDDEN
    );
    let set = |who: &Client, source: &str, body: &str| {
        let who = who.clone();
        let path = format!("/v1/admin/retention/{source}");
        let body = body.to_owned();
        async move {
            who.send(
                Method::PUT,
                &path,
                &[("content-type", "application/json")],
                body,
            )
            .await
        }
    };
    assert_eq!(
        set(&c, "vm-api", r#"{"keep_last":3}"#).await.status,
        StatusCode::FORBIDDEN
    );
    let bad = set(&admin, "vm-api", r#"{"keep_lots":3}"#).await;
    assert_eq!(
        (bad.status, bad.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "INVALID_BODY".into())
    );
    let bad = set(&admin, "vm-api", r#"{"keep_last":-1}"#).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    // vm-api keeps 3 by API policy; vm-off is opted out by an empty one; vm-cfg keeps 2 (config).
    let r = set(&admin, "vm-api", r#"{"keep_last":3}"#).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(set(&admin, "vm-off", "{}").await.status, StatusCode::OK);
    let got = admin.get("/v1/admin/retention").await.json();
    assert_eq!(got["default"]["keep_last"], 1, "{got}");
    assert_eq!(
        got["sources"]["vm-cfg"],
        json!({"policy": {"keep_last": 2, "keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0, "keep_yearly": 0}, "origin": "config"})
    );
    assert_eq!(got["sources"]["vm-api"]["origin"], "api");
    assert_eq!(got["sources"]["vm-api"]["policy"]["keep_last"], 3);
    let report = admin
        .json(Method::POST, "/v1/admin/prune", &json!({"dry_run": false}))
        .await
        .json();
    let left = |src: &'static str| {
        let c = c.clone();
        async move { ids(&c.get(&format!("/v1/backups?source={src}")).await.json()["backups"]).len() }
    };
    assert_eq!(
        (
            left("vm-cfg").await,
            left("vm-api").await,
            left("vm-off").await
        ),
        (2, 3, 4),
        "{report}"
    );
    // Dropping the API policy brings back the default (keep 1); dropping it again is 404.
    let r = admin
        .send(Method::DELETE, "/v1/admin/retention/vm-api", &[], "")
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = admin
        .send(Method::DELETE, "/v1/admin/retention/vm-api", &[], "")
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::NOT_FOUND, "NOT_FOUND".into())
    );
    admin
        .json(Method::POST, "/v1/admin/prune", &json!({"dry_run": false}))
        .await;
    assert_eq!(left("vm-api").await, 1);
    srv.stop().await;
}
