//! `bench catalog`: the guest file catalog at scale — N backups of a real ext4 image holding M
//! files (made by `mke2fs -d`), pushed by the real mover into a real `repo-server`, then search
//! latency over HTTP/2 for typical queries and the catalog's size on disk.
//!
//! Method (printed with the table): the tree has M files in directories of 100, names drawn
//! so that some occur once per file system (`nginx.conf`), some in every directory
//! (`README`), most once (`f-<n>.dat`). Backups are spread over 10 sources; each source's first
//! backup is a full one, the others are CBT incrementals with an empty change list (no data
//! read, but the file index is walked, uploaded and cataloged in full, as for every backup).
//! Each query runs 20 times after one warm-up; the table gives median and 95th percentile of the
//! round trip measured by the client. Catalog size is the RocksDB directory after the server
//! stops (its memtables flushed).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use schema::api::SearchResults;
use source_mover::backup::{backup, BackupOptions, Base};
use source_mover::client::RepoClient;
use tests::{ChildServer, Launch};

/// Runs the benchmark in `work` (created; removed afterwards unless `keep`). With `churn`
/// (a percentage of the files), every backup is of one source and before each one after the
/// first that share of the files changes in the image (see [`CHURN_METHOD`]).
pub fn run(
    backups: usize,
    files: usize,
    churn: Option<f64>,
    work: &Path,
    keep: bool,
) -> Result<()> {
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work)?;
    let t = Instant::now();
    let tree = work.join("tree");
    let mut tree_dirs = make_tree(&tree, files)?;
    let dirs = tree_dirs.len() + 5;
    let img = work.join("disk.raw");
    // Blocks for the data (≤ 1 KiB per file in 1 KiB blocks, plus directories) and room.
    let blocks_k = (files as u64 * 2 + dirs as u64 * 8 + 32 * 1024).max(64 * 1024);
    let out = std::process::Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-b", "1024", "-I", "256", "-N"])
        .arg((files + dirs + 1024).to_string())
        .arg("-d")
        .arg(&tree)
        .arg(&img)
        .arg(format!("{blocks_k}k"))
        .output()
        .context("mke2fs (apt-get install e2fsprogs)")?;
    if !out.status.success() {
        bail!("mke2fs: {}", String::from_utf8_lossy(&out.stderr));
    }
    std::fs::remove_dir_all(&tree)?;
    eprintln!(
        "catalog bench: {files} files in {dirs} directories, image {} MiB, built in {:.1} s",
        blocks_k / 1024,
        t.elapsed().as_secs_f64()
    );

    let server = ChildServer::spawn(&Launch {
        test_tokens: false,
        ..Launch::new(&work.join("data"))
    })?;
    let (addr, token) = (server.addr, server.admin_token_file());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let token = std::fs::read_to_string(&token)?;
        let client = RepoClient::new(
            &format!("http://{addr}"),
            &token,
            Duration::from_secs(60),
            None,
        )?;
        let mut commit_secs = Vec::new();
        let started = Instant::now();
        // Each source's newest backup: its next incremental's empty changed-block list counts from it.
        let mut latest: std::collections::BTreeMap<String, String> = Default::default();
        let mut changed_entries = 0usize;
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        for b in 0..backups {
            let source = match churn {
                Some(_) => "vm-00".to_string(),
                None => format!("vm-{:02}", b % 10),
            };
            let first = if churn.is_some() { b == 0 } else { b < 10 };
            if let (Some(pct), false) = (churn, first) {
                changed_entries +=
                    churn_image(&img, work, &mut tree_dirs, files, pct, b, &mut rng)?;
            }
            let cbt = work.join(format!("cbt-{source}.json"));
            if let Some(base) = latest.get(&source) {
                std::fs::write(
                    &cbt,
                    serde_json::json!({"base": base, "changed": []}).to_string(),
                )?;
            }
            let opts = BackupOptions {
                source: source.clone(),
                disks: vec![("disk0".into(), source_mover::source::open(&img)?)],
                cbt_points: std::collections::BTreeMap::new(),
                cbt: if first {
                    Default::default()
                } else {
                    [("disk0".to_string(), source_mover::cbt::json_file(&cbt))]
                        .into_iter()
                        .collect()
                },
                base: if first { Base::None } else { Base::Latest },
                block_size: 1 << 20,
                zstd_level: 3,
                excludes: Vec::new(),
                streams: 16,
                state_dir: work.join("state"),
                progress: false,
                file_index: true,
                encryption_key: None,
            };
            let t = Instant::now();
            let r = backup(&client, &opts).await?;
            latest.insert(source.clone(), r.backup_id.clone());
            if r.files_indexed < files as u64 {
                bail!(
                    "backup {} indexed {} entries, fewer than the {files} files made",
                    r.backup_id,
                    r.files_indexed
                );
            }
            commit_secs.push(t.elapsed().as_secs_f64());
            if (b + 1) % 10 == 0 || b + 1 == backups {
                eprintln!(
                    "catalog bench: {} backups, {:.0} s (last: {:.2} s, {} entries, index {:.2} s)",
                    b + 1,
                    started.elapsed().as_secs_f64(),
                    t.elapsed().as_secs_f64(),
                    r.files_indexed,
                    r.file_index_seconds
                );
            }
        }
        let queries: Vec<(&str, String)> = vec![
            ("one name, every backup", "name=nginx.conf".into()),
            (
                "one name, one source",
                "name=nginx.conf&source=vm-03".into(),
            ),
            (
                "one name, a time window",
                format!(
                    "name=nginx.conf&since={}",
                    schema::time::rfc3339(
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)?
                            .as_millis() as i64
                            - started.elapsed().as_millis() as i64 / 2
                    )
                    .replace(':', "%3A")
                ),
            ),
            ("name prefix glob", "name=f-00012*".into()),
            (
                "common name under a path",
                format!("name=README&path={}", middle_dir(files)),
            ),
            ("common name, first page", "name=README".into()),
            ("leading wildcard", "name=*.conf".into()),
        ];
        let mut rows = Vec::new();
        for (what, q) in &queries {
            let path = format!("/v1/search?{q}&limit=100");
            let _: SearchResults = client.get_json(&path).await?;
            let mut ms = Vec::new();
            let mut last = None;
            for _ in 0..20 {
                let t = Instant::now();
                let r: SearchResults = client.get_json(&path).await?;
                ms.push(t.elapsed().as_secs_f64() * 1000.0);
                last = Some(r);
            }
            ms.sort_by(f64::total_cmp);
            let r = last.context("no answer")?;
            rows.push((
                *what,
                q.clone(),
                r,
                ms[ms.len() / 2],
                ms[ms.len() * 95 / 100],
            ));
        }
        commit_secs.sort_by(f64::total_cmp);
        anyhow::Ok((rows, commit_secs, changed_entries))
    });
    // SIGTERM: the server flushes its memtables before the catalog is measured.
    server.terminate(Duration::from_secs(600));
    let (rows, backup_secs, changed) = result?;
    let catalog = crate::measure::du(&work.join("data/catalog"));
    let rows_total = (backups * files) as f64;
    match churn {
        Some(pct) => {
            println!("## Guest catalog with churn: {backups} backups × {files} files, {pct} % changing per backup\n");
            println!("Method: {} {}\n", METHOD.trim(), CHURN_METHOD.trim());
            println!(
                "Changed entries: {changed} over {} backups ({:.0} per backup). Catalog bytes per backup: {:.0} KB.\n",
                backups.saturating_sub(1),
                changed as f64 / backups.saturating_sub(1).max(1) as f64,
                catalog as f64 / backups.max(1) as f64 / 1e3
            );
        }
        None => {
            println!("## Guest catalog: {backups} backups × {files} files\n");
            println!("Method: {}\n", METHOD.trim());
        }
    }
    println!(
        "Backups: median {:.2} s each (walk, index upload, commit of {files} entries), slowest {:.2} s.\n",
        backup_secs[backup_secs.len() / 2],
        backup_secs[backup_secs.len() - 1]
    );
    println!("| query | hits (total) | median ms | p95 ms |");
    println!("|---|---|---|---|");
    for (what, q, r, med, p95) in &rows {
        println!(
            "| {what}: `{q}` | {} ({}{}) | {med:.1} | {p95:.1} |",
            r.results.len(),
            r.total,
            if r.truncated { ", scan truncated" } else { "" }
        );
    }
    println!(
        "\nCatalog on disk (RocksDB, all column families, after shutdown): {:.1} MB = {:.0} bytes per cataloged file entry ({} entries).",
        catalog as f64 / 1e6,
        catalog as f64 / rows_total,
        backups * files
    );
    if !keep {
        let _ = std::fs::remove_dir_all(work);
    }
    Ok(())
}

const METHOD: &str = "real ext4 image (mke2fs -d, 1 KiB blocks) of M files in directories of 100; \
N backups by the real mover into a real repo-server over HTTP/2 on loopback, 10 sources, \
first backup of each source full, then CBT incrementals with an empty change list (the file \
index is walked, uploaded and cataloged in full every time); each query 1 warm-up + 20 timed \
round trips from an HTTP/2 client, limit=100; catalog size = du of the RocksDB directory \
after a graceful shutdown.";

const CHURN_METHOD: &str = "Churn mode: every backup is of one source (vm-00); before each \
backup after the first, debugfs (-w, one command file) changes `churn` % of the files in the \
image, clustered in whole directories of 100 as real change is (a log or an application's \
directory): in each chosen directory the mtime of every file but one is set anew, one file is \
removed and one new file is written. Directories are drawn at random (fixed seed). The CBT \
list stays empty (the data blocks are not what is measured); the file index is walked in full.";

/// Changes about `pct` % of `files` entries in `img` with debugfs (see [`CHURN_METHOD`]) before
/// backup `b`; returns the entries changed (each file whose mtime changed, removed or added).
fn churn_image(
    img: &Path,
    work: &Path,
    dirs: &mut [(String, Vec<String>)],
    files: usize,
    pct: f64,
    b: usize,
    rng: &mut u64,
) -> Result<usize> {
    let want = ((files as f64 * pct / 100.0).round() as usize).max(1);
    let mut cmds = String::new();
    let mut changed = 0usize;
    let empty = work.join("empty");
    std::fs::write(&empty, b"")?;
    while changed < want && !dirs.is_empty() {
        let (dir, names) = &mut dirs[(xorshift(rng) % dirs.len() as u64) as usize];
        cmds.push_str(&format!("cd {dir}\n"));
        let gone = names.pop();
        for n in names.iter() {
            cmds.push_str(&format!(
                "sif {n} mtime @{}\n",
                1_800_000_000 + b as u64 * 60
            ));
            changed += 1;
        }
        if let Some(g) = gone {
            cmds.push_str(&format!("rm {g}\n"));
            changed += 1;
        }
        let new = format!("new-{b:04}-{changed:06}.dat");
        cmds.push_str(&format!("write {} {new}\n", empty.display()));
        names.insert(0, new);
        changed += 1;
    }
    let cmd_file = work.join("churn.debugfs");
    std::fs::write(&cmd_file, cmds)?;
    let out = std::process::Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&cmd_file)
        .arg(img)
        .output()
        .context("debugfs (apt-get install e2fsprogs)")?;
    if !out.status.success() {
        bail!("debugfs: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(changed)
}

/// One step of xorshift64 (the bench's fixed-seed randomness): advances `x` and returns it.
fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// Writes `files` files into `tree` in directories of 100 (under `/usr/share/dNNNNN`), plus
/// `/etc/nginx/nginx.conf` and a few `.conf` files; returns the directories of 100 with the
/// names of their files.
fn make_tree(tree: &Path, files: usize) -> Result<Vec<(String, Vec<String>)>> {
    let mut made = 0usize;
    let mut out = Vec::new();
    let etc = tree.join("etc/nginx");
    std::fs::create_dir_all(&etc)?;
    std::fs::write(etc.join("nginx.conf"), "worker_processes auto;\n")?;
    for n in ["resolv.conf", "host.conf", "ld.so.conf", "sysctl.conf"] {
        std::fs::write(tree.join("etc").join(n), format!("# {n}\n"))?;
    }
    made += 5;
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut k = 0usize;
    while made < files {
        let rel = format!("/usr/share/d{k:05}");
        let d = tree.join(&rel[1..]);
        std::fs::create_dir_all(&d)?;
        k += 1;
        std::fs::write(d.join("README"), format!("directory {k}\n"))?;
        made += 1;
        let mut names = Vec::new();
        for _ in 0..99 {
            if made >= files {
                break;
            }
            xorshift(&mut x);
            let len = (x % 1024) as usize;
            let body: Vec<u8> = (0..len).map(|i| (x >> (i % 56)) as u8).collect();
            let name = format!("f-{made:07}.dat");
            std::fs::write(d.join(&name), body)?;
            names.push(name);
            made += 1;
        }
        out.push((rel, names));
    }
    Ok(out)
}

/// The directory in the middle of the tree `make_tree` made for `files` files.
fn middle_dir(files: usize) -> String {
    format!("/usr/share/d{:05}", (files.saturating_sub(5) / 100) / 2)
}
