//! The guest file catalog on images built with mke2fs/sfdisk: every directory listing matches
//! `debugfs -R 'ls -p'` of the source file system, every regular file streamed back through
//! `files/content` matches `debugfs rdump` (many extents, sparse, empty, 1 KiB blocks), excluded
//! files answer 409, a file changed between two days comes back in each day's form, and search
//! finds files across 30 backups of 3 sources, newest first, within the caller's tenant.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};

use http::StatusCode;
use serde_json::Value;
use source_mover::backup::backup;
use tests::images::{build, extract, make_tree, noise, rdump, run, Layout, Table};
use tests::mover::{client, opts};
use tests::{Client, TestServer, BACKUP_A, BACKUP_B};

/// `debugfs -R 'ls -p DIR'`: name → (mode, uid, gid, size; None for directories).
fn debugfs_ls(fs_img: &Path, dir: &str) -> BTreeMap<String, (u32, u32, u32, Option<u64>)> {
    let out = run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("ls -p \"{dir}\""))
        .arg(fs_img)
        .stderr(Stdio::null()));
    let mut m = BTreeMap::new();
    for line in out.lines() {
        // /ino/mode/uid/gid/name/size/
        let f: Vec<&str> = line.trim().split('/').collect();
        if f.len() < 7 || f[1] == "0" || f[5].is_empty() || f[5] == "." || f[5] == ".." {
            continue;
        }
        m.insert(
            f[5].to_owned(),
            (
                u32::from_str_radix(f[2], 8).unwrap(),
                f[3].parse().unwrap(),
                f[4].parse().unwrap(),
                f[6].parse().ok(),
            ),
        );
    }
    m
}

fn tree_with_extras(dir: &Path, hostname: &str) -> std::path::PathBuf {
    let t = make_tree(dir);
    std::fs::write(t.join("etc/hostname"), hostname).unwrap();
    std::fs::write(t.join("etc/empty"), b"").unwrap();
    std::os::unix::fs::symlink("hostname", t.join("etc/link")).unwrap();
    // Forty islands of data in a sparse file: forty extents.
    let f = std::fs::File::create(t.join("srv/many-extents.bin")).unwrap();
    f.set_len(40 * 64 * 1024 + 5).unwrap();
    for i in 0..40u64 {
        f.write_all_at(&noise(8192, 100 + i), i * 64 * 1024)
            .unwrap();
    }
    t
}

async fn list(c: &Client, b: &str, path: &str) -> Value {
    let r = c
        .get(&format!(
            "/v1/backups/{b}/files?path={}",
            schema::query::encode(path)
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{path}: {:?}", r.body);
    r.json()
}

async fn content(c: &Client, b: &str, path: &str) -> tests::Resp {
    c.get(&format!(
        "/v1/backups/{b}/files/content?path={}",
        schema::query::encode(path)
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_and_file_contents_match_debugfs() {
    let srv = TestServer::start().await;
    let mc = client(&srv.url());
    let c = Client::h2(&srv.url(), Some(BACKUP_A));
    let dir = tempfile::tempdir().unwrap();
    for (name, table, block) in [("mbr4k", Table::Dos, 4096), ("gpt1k", Table::Gpt, 1024)] {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        let tree = tree_with_extras(&d, "day-one\n");
        let img = build(&d, name, Layout::ext4(table, block, 48, 8, 2), &tree);
        let mut o = opts(name, &img.path, &d.join("state"));
        o.excludes = vec![("disk0".into(), "/var/cache/**".into())];
        let r = backup(&mc, &o).await.unwrap();
        assert!(r.files_indexed > 150, "{r:?}");
        let fs_img = d.join("source.ext4");
        extract(&img.path, img.fs, &fs_img);
        let want = rdump(&fs_img, &d.join("rdump"));

        // The manifest lists the index; the listing of every directory matches debugfs.
        let m = c.get(&format!("/v1/backups/{}", r.backup_id)).await.json();
        assert_eq!(m["file_indexes"].as_array().unwrap().len(), 1, "{m}");
        let mut dirs = vec!["/".to_owned()];
        let mut files = Vec::new();
        while let Some(p) = dirs.pop() {
            let l = list(&c, &r.backup_id, &p).await;
            let got: BTreeMap<String, (u32, u32, u32, Option<u64>)> = l["entries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    let is_dir = e["kind"] == "dir";
                    (
                        e["name"].as_str().unwrap().to_owned(),
                        (
                            u32::from_str_radix(e["mode"].as_str().unwrap(), 8).unwrap(),
                            e["uid"].as_u64().unwrap() as u32,
                            e["gid"].as_u64().unwrap() as u32,
                            (!is_dir).then(|| e["size"].as_u64().unwrap()),
                        ),
                    )
                })
                .collect();
            assert_eq!(got, debugfs_ls(&fs_img, &p), "{name}: listing of {p}");
            for e in l["entries"].as_array().unwrap() {
                let path = e["path"].as_str().unwrap().to_owned();
                match e["kind"].as_str().unwrap() {
                    "dir" => dirs.push(path),
                    "file" => files.push((path, e["excluded"] == true)),
                    _ => {}
                }
            }
        }
        // Every regular file comes back byte for byte; excluded ones are refused.
        let mut checked = 0;
        for (path, excluded) in &files {
            let r2 = content(&c, &r.backup_id, path).await;
            if *excluded {
                assert_eq!(
                    (r2.status, r2.code()),
                    (StatusCode::CONFLICT, "FILE_EXCLUDED".into()),
                    "{path}"
                );
                assert!(path.starts_with("/var/cache/"));
                continue;
            }
            assert_eq!(r2.status, StatusCode::OK, "{path}: {:?}", r2.body);
            let rel = Path::new(&path[1..]);
            if let Some(h) = want.get(rel) {
                assert_eq!(
                    blake3::hash(&r2.body).to_hex().as_str(),
                    h,
                    "{name}: {path} differs from debugfs rdump"
                );
                checked += 1;
            }
        }
        assert!(checked >= 155, "{name}: {checked} files compared");
        let empty = content(&c, &r.backup_id, "/etc/empty").await;
        assert_eq!((empty.status, empty.body.len()), (StatusCode::OK, 0));
        // Ranges inside a sparse file with forty extents.
        let whole = std::fs::read(tree.join("srv/many-extents.bin")).unwrap();
        let part = c
            .send(
                http::Method::GET,
                &format!(
                    "/v1/backups/{}/files/content?path=/srv/many-extents.bin",
                    r.backup_id
                ),
                &[("range", "bytes=60000-200000")],
                "",
            )
            .await;
        assert_eq!(part.status, StatusCode::PARTIAL_CONTENT);
        assert!(part.body[..] == whole[60000..=200_000]);
        // Errors: a missing path, a directory, a bad path, another tenant.
        let miss = content(&c, &r.backup_id, "/etc/nope").await;
        assert_eq!(miss.status, StatusCode::NOT_FOUND);
        // ext4 paths are case-sensitive (NTFS ones are not: the ntfs module).
        assert_eq!(m["file_indexes"][0]["fs"], "ext2/3/4", "{m}");
        let upper = content(&c, &r.backup_id, "/ETC/hostname").await;
        assert_eq!(upper.status, StatusCode::NOT_FOUND);
        assert_eq!(
            content(&c, &r.backup_id, "/etc").await.status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            content(&c, &r.backup_id, "etc/../x").await.status,
            StatusCode::BAD_REQUEST
        );
        let other = c.with_token(Some(BACKUP_B));
        assert_eq!(
            content(&other, &r.backup_id, "/etc/hostname").await.status,
            StatusCode::NOT_FOUND
        );
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn day_one_and_day_two_and_search_across_backups() {
    let srv = TestServer::start().await;
    let mc = client(&srv.url());
    let c = Client::h2(&srv.url(), Some(BACKUP_A));
    let dir = tempfile::tempdir().unwrap();
    let mut ids = Vec::new();
    for (day, text) in [("day1", "day-one\n"), ("day2", "day-two, changed\n")] {
        let d = dir.path().join(day);
        std::fs::create_dir_all(&d).unwrap();
        let tree = tree_with_extras(&d, text);
        let img = build(&d, day, Layout::ext4(Table::Dos, 4096, 32, 4, 1), &tree);
        let r = backup(&mc, &opts("vm-days", &img.path, &d.join("state")))
            .await
            .unwrap();
        ids.push((r.backup_id, text));
        // Later days of other sources, from the same image (everything deduplicates).
        for i in 0..if day == "day2" { 28 } else { 0 } {
            let src = ["vm-x", "vm-y"][i % 2];
            let r = backup(&mc, &opts(src, &img.path, &d.join(format!("s{i}"))))
                .await
                .unwrap();
            ids.push((r.backup_id, text));
        }
    }
    for (b, text) in &ids[..2] {
        let r = content(&c, b, "/etc/hostname").await;
        assert_eq!(r.body, text.as_bytes(), "backup {b}");
    }
    // 30 backups of 3 sources; every one has /etc/hostname; newest first.
    let s = c.get("/v1/search?name=hostname&limit=1000").await.json();
    let got: Vec<&str> = s["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["backup"].as_str().unwrap())
        .collect();
    let mut want: Vec<&str> = ids.iter().map(|(b, _)| b.as_str()).collect();
    want.reverse();
    assert_eq!(got, want, "{s}");
    assert!(s["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|h| h["path"] == "/etc/hostname"));
    // Globs, a path prefix, a source, pagination.
    let s = c
        .get("/v1/search?name=note-1?.txt&source=vm-days")
        .await
        .json();
    assert_eq!(s["total"], 20, "note-10..note-19 in two backups: {s}");
    let s = c
        .get("/v1/search?name=*.bin&path=/srv&limit=5")
        .await
        .json();
    assert_eq!(s["results"].as_array().unwrap().len(), 5);
    assert_eq!(
        s["total"],
        2 * 30,
        "large.bin and many-extents.bin in 30 backups: {s}"
    );
    let page2 = c
        .get(&format!(
            "/v1/search?name=*.bin&path=/srv&limit=5&after={}",
            s["next"]
        ))
        .await
        .json();
    assert_ne!(page2["results"][0], s["results"][0]);
    // Another tenant sees nothing; bad parameters are 400.
    let other = c
        .with_token(Some(BACKUP_B))
        .get("/v1/search?name=hostname")
        .await
        .json();
    assert_eq!(other["total"], 0);
    for q in [
        "name=a/b",
        "since=yesterday",
        "bogus=1",
        "limit=x",
        "after=100001",
    ] {
        let r = c.get(&format!("/v1/search?{q}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}: {:?}", r.body);
    }

    // The same through `source-mover files ls|get|search`.
    let token = dir.path().join("token");
    std::fs::write(&token, BACKUP_A).unwrap();
    let cli = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(tests::mover_binary());
        cmd.arg("files")
            .arg(args[0])
            .args(["--repo", &srv.url(), "--token-file"])
            .arg(&token)
            .args(&args[1..]);
        async move { cmd.output().await.unwrap() }
    };
    let out = cli(&["search", "--name", "hostname", "--limit", "1000", "--json"]).await;
    assert!(out.status.success(), "{out:?}");
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    let got: Vec<&str> = s["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["backup"].as_str().unwrap())
        .collect();
    assert_eq!(got, want, "cli search: {s}");
    let out = cli(&[
        "search", "--name", "*.bin", "--path", "/srv", "--limit", "7",
    ])
    .await;
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 7, "{text}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("7 of 60 matches"));
    let day1 = ids[0].0.as_str();
    let out = cli(&["ls", "--backup", day1, "--path", "/etc", "--json"]).await;
    assert!(out.status.success(), "{out:?}");
    let l: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(l, list(&c, day1, "/etc").await, "cli ls = API listing");
    let out = cli(&["ls", "--backup", day1, "--path", "/etc"]).await;
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("-rw-r--r--") && l.ends_with(" /etc/hostname")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("l") && l.ends_with(" /etc/link")),
        "{text}"
    );
    let to = dir.path().join("hostname.day1");
    let out = cli(&["get", "--backup", day1, "--path", "/etc/hostname", "--to"]).await;
    assert!(!out.status.success(), "--to needs a value");
    let out = cli(&[
        "get",
        "--backup",
        day1,
        "--path",
        "/etc/hostname",
        "--to",
        to.to_str().unwrap(),
    ])
    .await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(&to).unwrap(), b"day-one\n");
    // The latest of vm-days is day two; to standard output; a file of forty extents.
    let out = cli(&["get", "--source", "vm-days", "--path", "/etc/hostname"]).await;
    assert_eq!(out.stdout, b"day-two, changed\n", "{out:?}");
    let out = cli(&["get", "--backup", day1, "--path", "/srv/many-extents.bin"]).await;
    let tree = dir.path().join("day1/tree/srv/many-extents.bin");
    assert!(out.stdout == std::fs::read(&tree).unwrap(), "{out:?}");
    // A missing file: the repository's 404 is named and nothing is left under the name.
    let gone = dir.path().join("nope.out");
    let out = cli(&[
        "get",
        "--backup",
        day1,
        "--path",
        "/etc/nope",
        "--to",
        gone.to_str().unwrap(),
    ])
    .await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("404 NOT_FOUND"),
        "{out:?}"
    );
    assert!(!gone.exists() && !gone.with_extension("part").exists());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_forgets_names_that_no_backup_has_any_more() {
    let srv = TestServer::start().await;
    let mc = client(&srv.url());
    let c = Client::h2(&srv.url(), Some(BACKUP_A));
    let admin = Client::h2(&srv.url(), Some(tests::ADMIN));
    let dir = tempfile::tempdir().unwrap();
    let mut ids = Vec::new();
    for (name, extra) in [("vm-gone", true), ("vm-stays", false)] {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        let tree = tree_with_extras(&d, "x\n");
        if extra {
            std::fs::write(tree.join("srv/only-in-gone.txt"), "bye\n").unwrap();
        }
        let img = build(&d, name, Layout::ext4(Table::Dos, 4096, 32, 4, 1), &tree);
        ids.push(
            backup(&mc, &opts(name, &img.path, &d.join("state")))
                .await
                .unwrap()
                .backup_id,
        );
    }
    let hits = |q: &'static str| {
        let c = c.clone();
        async move { c.get(&format!("/v1/search?{q}")).await.json()["total"].clone() }
    };
    assert_eq!(hits("name=*-in-gone.txt").await, 1);
    let del = admin
        .send(
            http::Method::DELETE,
            &format!("/v1/backups/{}", ids[0]),
            &[],
            "",
        )
        .await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    assert_eq!(
        hits("name=*-in-gone.txt").await,
        0,
        "the rows went with the backup"
    );
    let gc = tests::jobs::run_job(&admin, "gc").await;
    assert!(gc["result"]["names_removed"].as_u64().unwrap() >= 1, "{gc}");
    assert_eq!(hits("name=*-in-gone.txt").await, 0);
    // Names the other backup has stay searchable by wildcard.
    assert_eq!(hits("name=note-1?.txt").await, 10);
    assert_eq!(hits("name=*hostname").await, 1);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_file_index_the_data_is_the_same_and_nothing_is_listed() {
    let srv = TestServer::start().await;
    let mc = client(&srv.url());
    let c = Client::h2(&srv.url(), Some(BACKUP_A));
    let dir = tempfile::tempdir().unwrap();
    let tree = tree_with_extras(dir.path(), "no-index\n");
    let img = build(
        dir.path(),
        "noidx",
        Layout::ext4(Table::Dos, 4096, 32, 4, 1),
        &tree,
    );
    let mut restored = Vec::new();
    for (source, indexed) in [("vm-indexed", true), ("vm-unindexed", false)] {
        let mut o = opts(source, &img.path, &dir.path().join(source));
        o.excludes = vec![("disk0".into(), "/var/cache/**".into())];
        o.file_index = indexed;
        let r = backup(&mc, &o).await.unwrap();
        assert_eq!(r.files_indexed > 0, indexed, "{r:?}");
        assert!(r.skipped_bytes["excluded"] > 0, "excludes apply: {r:?}");
        let m = c.get(&format!("/v1/backups/{}", r.backup_id)).await.json();
        // The manifest leaves `file_indexes` out when there are none.
        let n = m["file_indexes"].as_array().map_or(0, Vec::len);
        assert_eq!(n, usize::from(indexed), "{m}");
        let l = c
            .get(&format!("/v1/backups/{}/files?path=/etc", r.backup_id))
            .await;
        let want = if indexed {
            StatusCode::OK
        } else {
            StatusCode::NOT_FOUND
        };
        assert_eq!(l.status, want, "{:?}", l.body);
        if !indexed {
            let why = String::from_utf8_lossy(&l.body);
            assert!(why.contains("--no-file-index"), "the 404 says why: {why}");
        }
        let to = dir.path().join(format!("{source}.raw"));
        let m = source_mover::restore::resolve(&mc, &r.backup_id, None)
            .await
            .unwrap();
        source_mover::restore::restore(&mc, &m, "disk0", Some(&to), 8, false)
            .await
            .unwrap();
        restored.push((r.skipped_bytes, std::fs::read(&to).unwrap()));
    }
    assert_eq!(restored[0].0, restored[1].0, "the same bytes were dropped");
    assert!(restored[0].1 == restored[1].1, "the same image comes back");
    let s = c
        .get("/v1/search?name=hostname&source=vm-unindexed")
        .await
        .json();
    assert_eq!(s["total"], 0, "{s}");
    srv.stop().await;
}
