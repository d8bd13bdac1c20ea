//! The storage admin's console: its assets are served with strict security headers and hold
//! no inline script, style or handler and nothing from another origin; and, in a real headless
//! Chromium over WebDriver (tests/browser/console.py), a wrong token shows the API's error, an
//! admin sees the repository and a source's chain of three real mover backups with the API's
//! counts (and the overview does not scroll sideways at a phone's width), opens a backup, browses to a file and downloads it byte for byte, searches a name
//! across the three backups page by page, runs a prune dry run and a verify to its end, and a
//! backup token of another tenant sees its own source only. The browser run saves the
//! screenshots in docs/console/.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use http::StatusCode;
use serde_json::{json, Value};
use source_mover::backup::backup;
use tests::backup::test_data;
use tests::images::{build, make_tree, Layout, Table};
use tests::mover::{client, opts};
use tests::{backup_disk, Client, DiskUpload, TestServer, ADMIN, BACKUP_A, BACKUP_B};

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn strict_headers(r: &tests::Resp, what: &str) {
    for (name, want) in [
        ("content-security-policy", CSP),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
    ] {
        assert_eq!(r.header(name).as_deref(), Some(want), "{what}: {name}");
    }
    assert!(r.header("set-cookie").is_none(), "{what} sets a cookie");
}

#[tokio::test]
async fn console_assets_are_served_with_strict_headers_and_no_inline_code() {
    let srv = TestServer::start().await;
    let c = Client::h1(&srv.url(), None);
    let index = c.get("/").await;
    assert_eq!(index.status, StatusCode::OK);
    assert_eq!(
        index.header("content-type").as_deref(),
        Some("text/html; charset=utf-8")
    );
    strict_headers(&index, "/");
    let html = String::from_utf8(index.body.to_vec()).unwrap();
    // Every script is an external module of this origin; no inline style or handler.
    let scripts: Vec<&str> = html.split("<script").skip(1).collect();
    assert!(!scripts.is_empty());
    for s in &scripts {
        let tag = &s[..s.find('>').unwrap()];
        assert!(
            tag.contains("src=\"/console/"),
            "inline or foreign script: {tag}"
        );
        assert!(
            s[s.find('>').unwrap() + 1..].starts_with("</script>"),
            "script with a body"
        );
    }
    assert!(!html.contains(" style="), "inline style");
    for (i, _) in html.match_indices(" on") {
        let name: String = html[i + 3..]
            .chars()
            .take_while(char::is_ascii_lowercase)
            .collect();
        let after = html[i + 3 + name.len()..].chars().next();
        assert!(
            name.is_empty() || after != Some('='),
            "inline handler on{name}"
        );
    }
    let mut assets = vec!["console.css".to_owned(), "favicon.svg".to_owned()];
    for m in ["app.js", "api.js", "views.js", "chart.js"] {
        assets.push(m.into());
    }
    for a in &assets {
        let r = c.get(&format!("/console/{a}")).await;
        assert_eq!(r.status, StatusCode::OK, "{a}");
        strict_headers(&r, a);
        let text = String::from_utf8(r.body.to_vec()).unwrap();
        let media = r.header("content-type").unwrap();
        let want = match a.rsplit('.').next() {
            Some("js") => "text/javascript",
            Some("css") => "text/css",
            _ => "image/svg+xml",
        };
        assert!(media.starts_with(want), "{a}: {media}");
        // Nothing from the network: no absolute URL but the SVG namespace.
        for word in text.split(['\'', '"', ' ', '(', ')']) {
            if word.starts_with("http://") || word.starts_with("https://") {
                assert_eq!(word, "http://www.w3.org/2000/svg", "{a} refers to {word}");
            }
        }
        assert!(!text.contains("eval("), "{a} evaluates code");
        assert!(!text.contains("innerHTML"), "{a} writes HTML");
    }
    // Every module the page imports is served.
    for a in &assets {
        let body = c.get(&format!("/console/{a}")).await.body;
        for line in String::from_utf8_lossy(&body).lines() {
            if let Some(rest) = line.strip_prefix("import ") {
                let file = rest.rsplit("'./").next().unwrap().trim_end_matches("';");
                assert!(assets.iter().any(|x| x == file), "{a} imports {file}");
            }
        }
    }
    let missing = c.get("/console/nope.js").await;
    assert_eq!(
        (missing.status, missing.code().as_str()),
        (StatusCode::NOT_FOUND, "NOT_FOUND")
    );
    strict_headers(&missing, "a missing asset");
    // The API itself stays as it was: JSON errors without the console's headers needed.
    let api = c.get("/v1/whoami").await;
    assert_eq!(api.status, StatusCode::UNAUTHORIZED);
    srv.stop().await;
}

/// The target directory the test binary runs from (`…/release/deps/it-…` → `…`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_owned()
}

/// The venv `scripts/setup.sh` makes, with selenium.
fn python() -> PathBuf {
    let p = target_dir().join("browser-venv/bin/python3");
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup.sh (it installs chromium, chromium-driver and selenium)",
        p.display()
    );
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_headless_chromium() {
    let srv = TestServer::start_with(|c| {
        c.retention.min_age = Some(std::time::Duration::from_secs(86_400));
    })
    .await;
    let url = srv.url();
    let a = Client::h2(&url, Some(BACKUP_A));
    let admin = a.with_token(Some(ADMIN));
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mc = client(&url);
    // Three days of one guest, each a real ext4 image, backed up by the real mover: a full
    // backup, then two incrementals on it.
    let mut reports = Vec::new();
    let mut trees = Vec::new();
    for day in 1..=3 {
        let d = dir.path().join(format!("day{day}"));
        std::fs::create_dir_all(&d).unwrap();
        let tree = make_tree(&d);
        std::fs::create_dir_all(tree.join("etc/nginx")).unwrap();
        std::fs::write(
            tree.join("etc/nginx/nginx.conf"),
            format!("worker_processes {day};\n"),
        )
        .unwrap();
        std::fs::write(tree.join("etc/hostname"), format!("web-1 day {day}\n")).unwrap();
        let img = build(&d, "web", Layout::ext4(Table::Gpt, 4096, 40, 4, 1), &tree);
        let r = backup(&mc, &opts("web-1", &img.path, &state))
            .await
            .unwrap();
        assert!(r.files_indexed > 150, "{r:?}");
        reports.push(r);
        trees.push(tree);
    }
    assert!(reports[0].base.is_none());
    assert_eq!(
        reports[1].base.as_deref(),
        Some(reports[0].backup_id.as_str())
    );
    assert_eq!(
        reports[2].base.as_deref(),
        Some(reports[1].backup_id.as_str())
    );
    // Another tenant's source.
    let b = a.with_token(Some(BACKUP_B));
    let data = test_data(600_000, 3);
    backup_disk(
        &b,
        "globex-db",
        None,
        &[DiskUpload {
            name: "d0",
            data: &data,
            block_size: 256 << 10,
        }],
    )
    .await;
    // What the console must show is what the API says.
    let list = a.get("/v1/backups?source=web-1").await.json();
    let chain: Vec<&Value> = list["backups"].as_array().unwrap().iter().collect();
    let ids: Vec<String> = chain
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    let newest_first: Vec<String> = reports.iter().rev().map(|r| r.backup_id.clone()).collect();
    assert_eq!(ids, newest_first);
    let search = a.get("/v1/search?name=nginx.conf").await.json();
    assert_eq!(search["total"], 3, "{search}");
    let latest = &reports[2];
    let m = a
        .get(&format!("/v1/backups/{}", latest.backup_id))
        .await
        .json();
    let fs = &m["file_indexes"][0];
    assert_eq!(
        admin.get("/v1/stats").await.json()["backups"],
        4,
        "four backups in all"
    );

    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/console");
    std::fs::create_dir_all(&docs).unwrap();
    let downloads = dir.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let cfg = json!({
        "url": url,
        "admin": ADMIN,
        "backup_a": BACKUP_A,
        "backup_b": BACKUP_B,
        "source": "web-1",
        "foreign_source": "globex-db",
        "all_backups": 4,
        "total": 3,
        "full": 1,
        "incremental": 2,
        "chain": ids,
        "kinds": chain.iter().map(|m| if m["base"].is_null() { "full" } else { "incremental" }).collect::<Vec<_>>(),
        "new_chunks": chain.iter().map(|m| m["stats"]["new_chunks"].clone()).collect::<Vec<_>>(),
        "reused_chunks": chain.iter().map(|m| m["stats"]["reused_chunks"].clone()).collect::<Vec<_>>(),
        "latest": latest.backup_id,
        "file": {
            "disk": fs["disk"], "partition": fs["partition"], "path": "/srv/large.bin",
            "original": trees[2].join("srv/large.bin"),
        },
        "search": { "name": "nginx.conf", "total": 3, "tenant": "acme" },
        "screenshots": docs,
        "downloads": downloads,
        "profile": dir.path().join("chromium-profile"),
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/console.py");
    let mut child = Command::new(python())
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python of the browser venv");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(cfg.to_string().as_bytes())
        .unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "console.py failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
    for shot in [
        "signin-error",
        "overview",
        "overview-phone",
        "chain",
        "backup",
        "files",
        "file",
        "search",
        "jobs",
    ] {
        let p = docs.join(format!("{shot}.png"));
        let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        assert!(len > 5_000, "screenshot {} is {len} bytes", p.display());
    }
    srv.stop().await;
}
