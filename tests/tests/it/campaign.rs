//! The crash campaign: many runs that each start the server, push concurrent backups of small
//! images with shared chunks while GC and prune loop, and kill the server — at a random fail point
//! (`REPO_FAILPOINT`, an `abort()` inside a write path, in the crash-test binary
//! `repo-server-failpoints`) or with SIGKILL at a random moment. After
//! each death: `repo-server check` finds no inconsistency; after a restart every backup ever
//! acknowledged as committed either streams back byte-for-byte or was legitimately pruned (three
//! newer backups of its source exist), and every interrupted session resumes to a commit (odd
//! ones) or is aborted cleanly (even ones).
//!
//! `CRASH_RUNS` sets the number of runs (default 30, which CI runs; the acceptance run uses 200:
//! `CRASH_RUNS=200 cargo test --release -p tests --test it campaign -- --nocapture`).
//! `CRASH_SEED` replays a campaign.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use schema::{ChunkId, IndexRecord, SessionId};
use serde_json::{json, Value};
use tests::backup::{blocks, new_session};
use tests::{failpoint_server_binary, ChildServer, Client, ADMIN, BACKUP_A};

const BS: u32 = 256 << 10;
const SOURCES: [&str; 3] = ["vm-a", "vm-b", "vm-c"];
const KEEP_LAST: usize = 3;

/// xorshift64*, seeded per campaign.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// An image of 16 blocks: most shared between sources and generations, some unique, a few holes.
fn image(source: usize, generation: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 * BS as usize);
    for b in 0..16u64 {
        let tag = match b % 6 {
            0 => None,                                          // a hole
            1 | 2 => Some(format!("shared {b}")),               // every source, every day
            3 => Some(format!("source {source} block {b}")),    // per source
            _ => Some(format!("s{source} g{generation} b{b}")), // changes every generation
        };
        let mut block = vec![0u8; BS as usize];
        if let Some(t) = tag {
            let h = blake3::hash(t.as_bytes());
            let mut x = blake3::Hasher::new_keyed(h.as_bytes()).finalize_xof();
            x.fill(&mut block[..BS as usize / 2]); // half random, half zeros: compressible
        }
        out.extend_from_slice(&block);
    }
    out
}

/// What one backup attempt was about.
#[derive(Debug, Clone)]
struct Attempt {
    session: SessionId,
    source: &'static str,
    image: Arc<Vec<u8>>,
    /// Set once the server acknowledged the commit.
    backup: Option<String>,
    /// Acknowledgement time order (for the pruning rule).
    acked_at: Option<u64>,
}

/// Why a backup attempt stopped.
#[derive(Debug)]
enum Failure {
    /// The connection failed: the server died (expected in this test).
    Transport,
    /// The server answered something it should not have (never expected).
    Status(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

async fn expect(r: Result<tests::Resp, String>, ok: &[StatusCode]) -> Result<tests::Resp, Failure> {
    let r = r.map_err(|_| Failure::Transport)?;
    if ok.contains(&r.status) {
        Ok(r)
    } else {
        Err(Failure::Status(format!(
            "{} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        )))
    }
}

/// One whole backup, every step safe to repeat (it is also how an interrupted session resumes).
async fn try_backup(c: &Client, a: &Attempt) -> Result<String, Failure> {
    let s = a.session;
    let spec = json!({"source": a.source, "disks": [{"name": "d", "size": a.image.len(), "block_size": BS}]});
    expect(
        c.try_send(
            Method::PUT,
            &format!("/v1/sessions/{s}"),
            &[("content-type", "application/json")],
            spec.to_string(),
        )
        .await,
        &[StatusCode::CREATED, StatusCode::OK],
    )
    .await?;
    let bl = blocks(&a.image, BS);
    let ids: Vec<u8> = bl
        .iter()
        .filter(|(_, id, _)| !id.is_hole())
        .flat_map(|(_, id, _)| id.0)
        .collect();
    let r = expect(
        c.try_send(
            Method::POST,
            &format!("/v1/sessions/{s}/find-missing"),
            &[],
            ids,
        )
        .await,
        &[StatusCode::OK],
    )
    .await?;
    let missing: std::collections::HashSet<ChunkId> = r
        .body
        .chunks_exact(32)
        .filter_map(ChunkId::from_slice)
        .collect();
    let mut set = tokio::task::JoinSet::new();
    let mut sent = std::collections::HashSet::new();
    for (_, id, data) in &bl {
        if !missing.contains(id) || !sent.insert(*id) {
            continue;
        }
        let c = c.clone();
        let path = format!("/v1/sessions/{s}/chunks/{id}");
        let frame = zstd::bulk::compress(data, 3).unwrap();
        let len = data.len().to_string();
        set.spawn(async move {
            expect(
                c.try_send(
                    Method::PUT,
                    &path,
                    &[("content-type", "application/zstd"), ("chunk-length", &len)],
                    frame,
                )
                .await,
                &[StatusCode::CREATED, StatusCode::OK],
            )
            .await
            .map(|_| ())
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap()?;
    }
    let recs: Vec<IndexRecord> = bl
        .iter()
        .map(|(block, id, _)| IndexRecord {
            block: *block,
            id: *id,
        })
        .collect();
    let body = IndexRecord::encode_all(&recs);
    expect(
        c.try_send(
            Method::PUT,
            &format!("/v1/sessions/{s}/disks/d/entries?start=0"),
            &[],
            body.clone(),
        )
        .await,
        &[StatusCode::NO_CONTENT],
    )
    .await?;
    let commit = json!({"disks": {"d": {"entries": recs.len(), "records_blake3": blake3::hash(&body).to_hex().as_str()}}});
    let r = expect(
        c.try_send(
            Method::POST,
            &format!("/v1/sessions/{s}/commit"),
            &[("content-type", "application/json")],
            commit.to_string(),
        )
        .await,
        &[StatusCode::CREATED, StatusCode::OK],
    )
    .await?;
    r.json()["backup_id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| Failure::Status("commit answer without backup_id".into()))
}

fn check_offline(data: &Path) -> Value {
    let out = std::process::Command::new(tests::server::server_binary())
        .args(["check", "--data"])
        .arg(data)
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "check printed no report: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(
        out.status.code(),
        Some(0),
        "check found problems: {report:#}"
    );
    assert_eq!(report["consistent"], true, "{report:#}");
    report
}

/// How often each fail point is passed in a run decides how far into the run it may fire.
fn max_hit(point: &str) -> u64 {
    match point.split('.').next().unwrap_or("") {
        "blob" => 40,
        "catalog" => 90,
        "commit" => 4,
        "gc" => 3,
        _ => 2,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_campaign_loses_nothing() {
    let runs: usize = std::env::var("CRASH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("crash campaign: {runs} runs, CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let extra =
        format!("[store]\ngc_margin = \"0s\"\n[retention.default]\nkeep_last = {KEEP_LAST}\n");
    let points = repo_server::fail::POINTS;
    let mut attempts: Vec<Attempt> = Vec::new();
    let mut generation = 0u64;
    let mut ack_seq = 0u64;
    let mut stats: BTreeMap<String, u64> = BTreeMap::new();
    let mut verified_images = 0u64;
    let (mut armed_runs, mut aborted_runs) = (0usize, 0usize);
    let started = Instant::now();

    for run in 0..runs {
        // Arm a fail point (7 runs in 10) or plan a SIGKILL.
        let (env, plan) = if rng.below(10) < 7 {
            let p = points[rng.below(points.len() as u64) as usize];
            let n = 1 + rng.below(max_hit(p));
            (
                vec![("REPO_FAILPOINT".to_owned(), format!("{p}:{n}"))],
                format!("fail point {p}:{n}"),
            )
        } else {
            let ms = 50 + rng.below(1500);
            (vec![], format!("SIGKILL after {ms} ms"))
        };
        let env_ref: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut srv = ChildServer::start_bin(
            &failpoint_server_binary(),
            &data,
            "127.0.0.1:0",
            &extra,
            &env_ref,
        );
        let url = srv.url();

        // The workload: three movers in a loop, and GC + prune in a loop, until the server dies.
        let log: Arc<Mutex<Vec<Attempt>>> = Arc::new(Mutex::new(Vec::new()));
        let acks = Arc::new(std::sync::atomic::AtomicU64::new(ack_seq));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let unexpected: Arc<Mutex<Vec<String>>> = Arc::default();
        let mut tasks = tokio::task::JoinSet::new();
        for (si, source) in SOURCES.iter().enumerate() {
            let c = Client::h2(&url, Some(BACKUP_A));
            let log = log.clone();
            let acks = acks.clone();
            let stop = stop.clone();
            let unexpected = unexpected.clone();
            let gen0 = generation;
            tasks.spawn(async move {
                let mut g = gen0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    g += 1;
                    let a = Attempt {
                        session: new_session(),
                        source,
                        image: Arc::new(image(si, g)),
                        backup: None,
                        acked_at: None,
                    };
                    let i = {
                        let mut l = log.lock().unwrap();
                        l.push(a.clone());
                        l.len() - 1
                    };
                    match try_backup(&c, &a).await {
                        Ok(id) => {
                            let mut l = log.lock().unwrap();
                            l[i].backup = Some(id);
                            l[i].acked_at =
                                Some(acks.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
                        }
                        Err(Failure::Transport) => break,
                        Err(Failure::Status(e)) => {
                            unexpected.lock().unwrap().push(format!("{source}: {e}"));
                            break;
                        }
                    }
                }
                g
            });
        }
        {
            let admin = Client::h2(&url, Some(ADMIN));
            let stop = stop.clone();
            let unexpected = unexpected.clone();
            tasks.spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let prune = expect(
                        admin
                            .try_send(
                                Method::POST,
                                "/v1/admin/prune",
                                &[("content-type", "application/json")],
                                r#"{"dry_run":false}"#,
                            )
                            .await,
                        &[StatusCode::OK],
                    )
                    .await;
                    let gc = expect(
                        admin.try_send(Method::POST, "/v1/admin/gc", &[], "").await,
                        &[StatusCode::ACCEPTED],
                    )
                    .await;
                    if let Err(e) = prune.and(gc) {
                        if let Failure::Status(e) = e {
                            unexpected.lock().unwrap().push(format!("admin: {e}"));
                        }
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
                0
            });
        }
        // Wait for the server to die, or kill it.
        let t0 = Instant::now();
        let kill_after = plan
            .strip_prefix("SIGKILL after ")
            .and_then(|s| s.trim_end_matches(" ms").parse::<u64>().ok())
            .map(Duration::from_millis)
            .unwrap_or(Duration::from_secs(4));
        let how = loop {
            if let Some(st) = srv.try_exit() {
                break match st.signal() {
                    Some(6) => format!("aborted at {}", env[0].1),
                    other => format!("died otherwise ({st:?}, signal {other:?})"),
                };
            }
            if t0.elapsed() >= kill_after {
                srv.kill9_in_place();
                break if env.is_empty() {
                    plan.clone()
                } else {
                    format!("fail point {} not reached; SIGKILL after 4 s", env[0].1)
                };
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert!(
            !how.starts_with("died otherwise"),
            "run {run}: the server {how}"
        );
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        while let Some(r) = tasks.join_next().await {
            generation = generation.max(r.unwrap());
        }
        ack_seq = acks.load(std::sync::atomic::Ordering::SeqCst);
        let unexpected = std::mem::take(&mut *unexpected.lock().unwrap());
        assert!(
            unexpected.is_empty(),
            "run {run} ({plan}): unexpected answers: {unexpected:?}"
        );
        let kind = if how.starts_with("SIGKILL") {
            "SIGKILL at a random moment".to_owned()
        } else if how.contains("not reached") {
            "fail point not reached, SIGKILL at 4 s".to_owned()
        } else {
            how.split(':').next().unwrap_or("").to_owned()
        };
        *stats.entry(kind).or_default() += 1;
        armed_runs += usize::from(!env.is_empty());
        aborted_runs += usize::from(how.starts_with("aborted at"));
        attempts.extend(log.lock().unwrap().drain(..));

        // Offline: the catalog, indexes and files agree.
        let report = check_offline(&data);
        for (k, v) in report["leftovers"].as_object().unwrap() {
            *stats.entry(format!("leftover {k}")).or_default() += v.as_u64().unwrap_or(0);
        }

        // Restart and account for everything.
        let srv = ChildServer::start_with(&data, "127.0.0.1:0", &extra, &[]);
        let c = Client::h2(&srv.url(), Some(BACKUP_A));
        let mut interrupted = 0;
        for (i, a) in attempts.iter_mut().enumerate() {
            if a.backup.is_some() {
                continue;
            }
            let st = c.get(&format!("/v1/sessions/{}", a.session)).await;
            match (st.status, st.json()["state"].as_str()) {
                (StatusCode::NOT_FOUND, _) => {} // never created
                (StatusCode::OK, Some("committed")) => {
                    // Committed, but the answer was lost with the server.
                    a.backup = st.json()["backup_id"].as_str().map(str::to_owned);
                    a.acked_at = Some(ack_seq);
                    ack_seq += 1;
                }
                (StatusCode::OK, Some("open")) if i % 2 == 1 => {
                    interrupted += 1;
                    let id = try_backup(&c, a).await.unwrap_or_else(|e| {
                        panic!("run {run}: session {} did not resume: {e}", a.session)
                    });
                    a.backup = Some(id);
                    a.acked_at = Some(ack_seq);
                    ack_seq += 1;
                    *stats
                        .entry("sessions resumed to a commit".into())
                        .or_default() += 1;
                }
                (StatusCode::OK, Some("open")) => {
                    interrupted += 1;
                    let r = c
                        .send(
                            Method::DELETE,
                            &format!("/v1/sessions/{}", a.session),
                            &[],
                            "",
                        )
                        .await;
                    assert_eq!(
                        r.status,
                        StatusCode::NO_CONTENT,
                        "run {run}: abort: {:?}",
                        r.body
                    );
                    *stats.entry("sessions aborted cleanly".into()).or_default() += 1;
                }
                (status, state) => {
                    // Aborted or expired earlier: nothing to account for.
                    assert!(
                        status == StatusCode::OK,
                        "run {run}: session {}: {status} {state:?}",
                        a.session
                    );
                }
            }
        }
        let _ = interrupted;
        attempts.retain(|a| a.backup.is_some());
        // Every acknowledged backup is there and exact, or has three newer ones of its source.
        let mut present: HashMap<&str, Vec<u64>> = HashMap::new();
        let mut gone = Vec::new();
        for a in &attempts {
            let id = a.backup.as_deref().unwrap();
            let r = c.get(&format!("/v1/backups/{id}/disks/d/image")).await;
            match r.status {
                StatusCode::OK => {
                    assert!(
                        r.body[..] == a.image[..],
                        "run {run}: backup {id} came back different"
                    );
                    verified_images += 1;
                    present
                        .entry(a.source)
                        .or_default()
                        .push(a.acked_at.unwrap());
                }
                StatusCode::NOT_FOUND => gone.push(a),
                s => panic!("run {run}: backup {id}: {s} {:?}", r.body),
            }
        }
        for a in gone {
            let newer = present.get(a.source).map_or(0, |v| {
                v.iter().filter(|&&t| t > a.acked_at.unwrap()).count()
            });
            assert!(
                newer >= KEEP_LAST,
                "run {run}: backup {} of {} is gone with only {newer} newer backups kept: LOST",
                a.backup.as_deref().unwrap(),
                a.source
            );
        }
        attempts.retain(|a| {
            present
                .get(a.source)
                .is_some_and(|v| v.contains(&a.acked_at.unwrap()))
        });
        assert_eq!(
            srv.terminate(Duration::from_secs(20)),
            Some(0),
            "run {run}: clean shutdown"
        );
        println!("run {run:>3}: {plan:<40} → {how}");
    }
    println!(
        "crash campaign: {runs} runs in {:.0} s, {verified_images} backup images verified byte-for-byte after restarts, data lost: 0",
        started.elapsed().as_secs_f64()
    );
    for (k, v) in &stats {
        println!("  {k}: {v}");
    }
    // A server whose fail points cannot fire (the shipped binary) would pass every run as
    // "not reached" and prove nothing: with a few armed runs, some must have aborted.
    assert!(
        armed_runs < 5 || aborted_runs > 0,
        "{armed_runs} runs armed a fail point and none aborted: is the crash-test binary running?"
    );
}
