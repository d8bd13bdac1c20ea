//! Crash-consistent ext4 snapshots (`needs_recovery`, the newest metadata only in committed jbd2
//! transactions), built with debugfs's journal commands as `../shared/recipes/crash-consistent-ext4.md`
//! shows, backed up through a real repository and restored: the new files' data blocks are read
//! (the mover replays the journal in memory), e2fsck recovers the restored disk and every new
//! file matches, and the catalog lists them. A journal the mover does not understand (torn
//! transaction, bad checksum, unknown feature, external journal) makes it read that file system
//! in full, and says so. A revoked block is not replayed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use source_mover::backup::backup;
use source_mover::client::RepoClient;
use source_mover::plan::{plan, DiskPlan};
use source_mover::source::FileSource;
use tests::images::{
    assemble, crash_snapshot, debugfs_script, dump, extract, flip_bits, fsck_repair, journal_block,
    rdump, run, Image, Snapshot, Table,
};
use tests::mover::{client, opts};
use tests::{Client, TestServer, BACKUP_A};

use crate::mover::restore_to;

const BS: u64 = 4096;
const EXT4: &[&str] = &["-t", "ext4"];

/// Today's new files: in an old directory, in the root, in a new directory, and one in `/gone`
/// (the directory whose block the revoke test revokes).
const NEW_FILES: &[(&str, usize)] = &[
    ("/keep/n1.bin", 3_000_000),
    ("/keep/n2.bin", 1_500_000),
    ("/new.bin", 700_000),
    ("/fresh/deep.bin", 240_000),
    ("/gone/g.bin", 300_000),
];

fn snapshot(dir: &Path, mkfs: &[&str]) -> Snapshot {
    crash_snapshot(dir, mkfs, &["/keep", "/gone"], &["/fresh"], NEW_FILES)
}

/// The snapshot's file system in partition 1 of an MBR disk, with an 8 MiB swap partition.
fn disk(s: &Snapshot, dir: &Path, name: &str) -> Image {
    assemble(dir, name, Table::Dos, false, &s.fs_img, 8, 0, &s.tree)
}

/// The plan's line for partition 1.
fn found_line(p: &DiskPlan) -> String {
    p.found
        .iter()
        .find(|l| l.starts_with("partition 1:"))
        .cloned()
        .unwrap_or_else(|| panic!("no line for partition 1: {:?}", p.found))
}

/// New files' data blocks the plan does not read (dropped as free).
fn lost_blocks(p: &DiskPlan, img: &Image, s: &Snapshot) -> usize {
    s.data_blocks
        .iter()
        .filter(|&&b| {
            let at = img.fs.0 + b * BS;
            !p.dropped["free"].clip(at, at + BS).is_empty()
        })
        .count()
}

/// Backs `img` up as `source`, restores it and returns the backup id and the restored file
/// system, extracted into `dir`.
async fn round_trip(mc: &RepoClient, img: &Image, source: &str, dir: &Path) -> (String, PathBuf) {
    let r = backup(mc, &opts(source, &img.path, &dir.join("state")))
        .await
        .unwrap();
    let out = dir.join("restored.raw");
    restore_to(mc, &r.backup_id, &out).await;
    let fs = dir.join("restored.ext4");
    extract(&out, img.fs, &fs);
    (r.backup_id, fs)
}

/// The source's file system after `e2fsck -fy` (its journal recovered), for comparisons.
fn source_recovered(img: &Image, dir: &Path) -> PathBuf {
    let fs = dir.join("source-recovered.ext4");
    extract(&img.path, img.fs, &fs);
    fsck_repair(&fs);
    fs
}

/// Every new file named in `want` reads back from `fs_img` (with `debugfs dump`) as written.
fn compare_new_files(s: &Snapshot, fs_img: &Path, dir: &Path, want: &[&str]) -> usize {
    for path in want {
        let got = dump(fs_img, path, &dir.join("dump.bin"))
            .unwrap_or_else(|| panic!("{path} is missing from {}", fs_img.display()));
        let host = std::fs::read(s.tree.join(path.trim_start_matches('/'))).unwrap();
        assert_eq!(got.len(), host.len(), "{path}: size");
        let zeros = got.iter().all(|&b| b == 0);
        assert!(got == host, "{path} differs (all zeros: {zeros})");
    }
    want.len()
}

/// The catalog's listing of directory `path`: name → size.
async fn listing(c: &Client, backup: &str, path: &str) -> BTreeMap<String, u64> {
    let r = c
        .get(&format!(
            "/v1/backups/{backup}/files?path={}",
            schema::query::encode(path)
        ))
        .await;
    assert_eq!(r.status, http::StatusCode::OK, "{path}: {:?}", r.body);
    r.json()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e["size"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn needs_recovery(fs_img: &Path) -> bool {
    run(Command::new("dumpe2fs")
        .arg("-h")
        .arg(fs_img)
        .stderr(Stdio::null()))
    .lines()
    .any(|l| l.starts_with("Filesystem features:") && l.contains("needs_recovery"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_consistent_snapshots_keep_their_new_files() {
    let srv = TestServer::start().await;
    let mc = client(&srv.url());
    let c = Client::h2(&srv.url(), Some(BACKUP_A));
    let dir = tempfile::tempdir().unwrap();
    // Checksums v3 with 64-bit tags (what the kernel writes with metadata_csum), v2, none,
    // 32-bit tags on a file system without 64bit, and ext3 (indirect maps, the journal too).
    let variants: [(&str, &[&str], &str); 5] = [
        ("csum-v3", EXT4, "jo -c"),
        ("csum-v2", EXT4, "jo -c -v 2"),
        ("plain", EXT4, "jo"),
        (
            "32bit",
            &["-t", "ext4", "-O", "^64bit,^metadata_csum"],
            "jo",
        ),
        ("ext3", &["-t", "ext3"], "jo"),
    ];
    let want: Vec<&str> = NEW_FILES.iter().map(|(p, _)| *p).collect();
    for (name, mkfs, open) in variants {
        let d = dir.path().join(name);
        let s = snapshot(&d, mkfs);
        debugfs_script(
            &s.fs_img,
            &format!(
                "{open}\njw -b {} {}\njc\n",
                s.meta_list(),
                s.meta_file.display()
            ),
        );
        // The image is crash-consistent: without a replay the new files do not exist.
        assert!(needs_recovery(&s.fs_img), "{name}");
        assert!(
            dump(&s.fs_img, "/keep/n1.bin", &d.join("x")).is_none(),
            "{name}"
        );
        let img = disk(&s, &d, name);
        let p = plan(&FileSource::open(&img.path).unwrap(), &[]).unwrap();
        let line = found_line(&p);
        let lost = lost_blocks(&p, &img, &s);
        eprintln!(
            "{name}: {} new data blocks, {lost} dropped; {} metadata blocks journaled; {line}",
            s.data_blocks.len(),
            s.meta_blocks.len()
        );
        assert!(
            line.contains("journal replayed in memory"),
            "{name}: {line}"
        );
        assert_eq!(lost, 0, "{name}: new files' data blocks dropped as free");
        assert!(p.dropped["free"].total() > 40 << 20, "{name}: {line}");

        let (id, restored) = round_trip(&mc, &img, name, &d).await;
        let fsck = fsck_repair(&restored);
        assert!(fsck.contains("recovering journal"), "{name}: {fsck}");
        let n = compare_new_files(&s, &restored, &d, &want);
        // Every file of the restored file system, against the source recovered the same way.
        let got = rdump(&restored, &d.join("rdump-restored"));
        let expect = rdump(&source_recovered(&img, &d), &d.join("rdump-source"));
        assert_eq!(got, expect, "{name}");
        eprintln!(
            "{name}: {n} new files and {} files in all compared",
            got.len()
        );
        // The guest catalog sees the replayed file system.
        let keep = listing(&c, &id, "/keep").await;
        assert_eq!(keep.get("n1.bin"), Some(&3_000_000), "{name}: {keep:?}");
        assert_eq!(keep.get("n2.bin"), Some(&1_500_000), "{name}: {keep:?}");
        let root = listing(&c, &id, "/").await;
        assert_eq!(root.get("new.bin"), Some(&700_000), "{name}: {root:?}");
        assert!(root.contains_key("fresh"), "{name}: {root:?}");
        let fresh = listing(&c, &id, "/fresh").await;
        assert_eq!(fresh.get("deep.bin"), Some(&240_000), "{name}: {fresh:?}");
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journals_not_understood_are_read_in_full() {
    let srv = TestServer::start().await;
    let mc = client(&srv.url());
    let dir = tempfile::tempdir().unwrap();
    let want: Vec<&str> = NEW_FILES.iter().map(|(p, _)| *p).collect();
    for case in ["torn", "bad-checksum", "unknown-feature", "external"] {
        let d = dir.path().join(case);
        let s = snapshot(&d, EXT4);
        let commit = format!("jw -b {} {}\n", s.meta_list(), s.meta_file.display());
        let expect_reason = match case {
            "torn" => {
                // A second transaction whose commit block never reached the disk.
                let one = d.join("one.bin");
                std::fs::write(&one, &std::fs::read(&s.meta_file).unwrap()[..BS as usize]).unwrap();
                let torn = format!("jw -c -b {} {}\n", s.meta_blocks[0], one.display());
                debugfs_script(&s.fs_img, &format!("jo -c\n{commit}{torn}jc\n"));
                "has no commit block"
            }
            "bad-checksum" => {
                debugfs_script(&s.fs_img, &format!("jo -c\n{commit}jc\n"));
                // The log starts at journal block 1 (descriptor); flip a byte of the copy of
                // the last journaled block.
                let last = 2 + s.meta_blocks.len() as u64 - 1;
                flip_bits(&s.fs_img, journal_block(&s.fs_img, last) * BS + 100, 0xFF);
                "fails its checksum"
            }
            "unknown-feature" => {
                debugfs_script(&s.fs_img, &format!("jo\n{commit}jc\n"));
                // feature_incompat (big-endian, offset 40 of the journal superblock) |= 0x80;
                // without checksums the superblock has none to fix.
                flip_bits(&s.fs_img, journal_block(&s.fs_img, 0) * BS + 43, 0x80);
                "unknown journal features 0x80"
            }
            _ => {
                debugfs_script(
                    &s.fs_img,
                    &format!("jo -c\n{commit}jc\nssv journal_inum 0\n"),
                );
                "external device"
            }
        };
        assert!(needs_recovery(&s.fs_img), "{case}");
        let img = disk(&s, &d, case);
        let p = plan(&FileSource::open(&img.path).unwrap(), &[]).unwrap();
        let line = found_line(&p);
        eprintln!("{case}: {line}");
        assert!(
            line.contains("read in full: journal not replayed") && line.contains(expect_reason),
            "{case}: {line}"
        );
        let fs_range = (img.fs.0, img.fs.0 + img.fs.1);
        assert!(
            p.dropped["free"].clip(fs_range.0, fs_range.1).is_empty(),
            "{case}: dropped blocks of a file system read in full"
        );
        let (_, restored) = round_trip(&mc, &img, case, &d).await;
        let source = d.join("source.ext4");
        extract(&img.path, img.fs, &source);
        assert!(
            std::fs::read(&restored).unwrap() == std::fs::read(&source).unwrap(),
            "{case}: the restored file system is not the source's"
        );
        if case == "torn" {
            // e2fsck replays the committed transaction and drops the torn one.
            fsck_repair(&restored);
            compare_new_files(&s, &restored, &d, &want);
        }
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_block_is_not_replayed() {
    let srv = TestServer::start().await;
    let mc = client(&srv.url());
    let c = Client::h2(&srv.url(), Some(BACKUP_A));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = snapshot(d, EXT4);
    // /gone's directory block: journaled in transaction 1 (with g.bin's entry), revoked by 2.
    let gone = run(Command::new("debugfs")
        .arg("-R")
        .arg("blocks /gone")
        .arg(&s.today)
        .stderr(Stdio::null()));
    let gone: u64 = gone.trim().parse().unwrap();
    assert!(s.meta_blocks.contains(&gone));
    debugfs_script(
        &s.fs_img,
        &format!(
            "jo -c\njw -b {} {}\njw -r {gone}\njc\n",
            s.meta_list(),
            s.meta_file.display()
        ),
    );
    let img = disk(&s, d, "revoke");
    let p = plan(&FileSource::open(&img.path).unwrap(), &[]).unwrap();
    let line = found_line(&p);
    assert!(
        line.contains("journal replayed in memory (2 transactions"),
        "{line}"
    );
    assert_eq!(lost_blocks(&p, &img, &s), 0, "{line}");
    let (id, restored) = round_trip(&mc, &img, "revoke", d).await;
    // The catalog is what e2fsck makes of the journal: /gone's old block, without g.bin.
    let gone_listing = listing(&c, &id, "/gone").await;
    assert!(!gone_listing.contains_key("g.bin"), "{gone_listing:?}");
    let keep = listing(&c, &id, "/keep").await;
    assert!(
        keep.contains_key("n1.bin") && keep.contains_key("n2.bin"),
        "{keep:?}"
    );
    let fsck = fsck_repair(&restored);
    assert!(fsck.contains("Unattached inode"), "{fsck}");
    assert!(dump(&restored, "/gone/g.bin", &d.join("x")).is_none());
    compare_new_files(
        &s,
        &restored,
        d,
        &[
            "/keep/n1.bin",
            "/keep/n2.bin",
            "/new.bin",
            "/fresh/deep.bin",
        ],
    );
    // g.bin's inode and blocks were replayed: e2fsck reconnects it, whole, in lost+found.
    let ls = run(Command::new("debugfs")
        .arg("-R")
        .arg("ls -p /gone")
        .arg(&s.today)
        .stderr(Stdio::null()));
    let ino = ls
        .lines()
        .find(|l| l.contains("/g.bin/"))
        .and_then(|l| l.trim().split('/').nth(1))
        .unwrap()
        .to_owned();
    let found = dump(&restored, &format!("/lost+found/#{ino}"), &d.join("x")).unwrap();
    assert!(found == std::fs::read(s.tree.join("gone/g.bin")).unwrap());
    let got = rdump(&restored, &d.join("rdump-restored"));
    let expect = rdump(&source_recovered(&img, d), &d.join("rdump-source"));
    assert_eq!(got, expect);
    srv.stop().await;
}
