//! The source mover against the real server, on disk images made with real tools.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use source_mover::backup::{backup, BackupReport, Base};
use source_mover::client::RepoClient;
use source_mover::restore::{resolve, restore};
use tests::images::{
    self, build, dumpe2fs_free, extract, fsck_clean, make_tree, noise, rdump, Image, Layout, Table,
};
use tests::mover::{client, opts};
use tests::{ChildServer, TestServer, BACKUP_A};

const MIB: u64 = 1 << 20;

/// Restores `disk0` of backup `id` into the file `out`.
pub(crate) async fn restore_to(c: &RepoClient, id: &str, out: &Path) {
    let m = resolve(c, id, None).await.unwrap();
    restore(c, &m, "disk0", Some(out), 8, false).await.unwrap();
}

/// The restored disk equals the source outside the mover's dropped ranges and is zero inside
/// them; those ranges are independently justified (swap minus its header page, free blocks as
/// dumpe2fs lists them, excluded files); the file system is clean and its files are the tree's.
fn check(img: &Image, restored: &Path, dir: &Path, excludes: &[String]) {
    std::fs::create_dir_all(dir).unwrap();
    let disk = source_mover::source::FileSource::open(&img.path).unwrap();
    let plan = source_mover::plan::plan(&disk, excludes).unwrap();
    let src = std::fs::read(&img.path).unwrap();
    let got = std::fs::read(restored).unwrap();
    assert_eq!(src.len(), got.len());
    let mut expect = src.clone();
    for (reason, r) in &plan.dropped {
        for &(a, b) in r.as_slice() {
            if *reason != "hole" {
                expect[a as usize..b as usize].fill(0);
            }
        }
    }
    let at = expect.iter().zip(&got).position(|(a, b)| a != b);
    assert!(at.is_none(), "restored disk differs at byte {at:?}");
    // Swap: everything but the 4 KiB header page was dropped, and the header survived.
    assert_eq!(
        plan.dropped["swap"].as_slice(),
        &[(img.swap.0 + 4096, img.swap.0 + img.swap.1)]
    );
    assert_eq!(
        &got[img.swap.0 as usize..img.swap.0 as usize + 4096],
        &src[img.swap.0 as usize..img.swap.0 as usize + 4096]
    );
    // Free: every dropped byte is free according to dumpe2fs.
    let fs_img = dir.join("source.ext4");
    extract(&img.path, img.fs, &fs_img);
    let free = source_mover::ranges::Ranges::from_unsorted(
        dumpe2fs_free(&fs_img)
            .into_iter()
            .map(|(a, b)| (a + img.fs.0, b + img.fs.0))
            .collect(),
    );
    assert!(
        plan.dropped["free"].subtract(&free).is_empty(),
        "dropped blocks that dumpe2fs says are in use"
    );
    assert!(plan.dropped["free"].total() > 0);
    // The restored file system.
    let restored_fs = dir.join("restored.ext4");
    extract(restored, img.fs, &restored_fs);
    fsck_clean(&restored_fs);
    let files = rdump(&restored_fs, &dir.join("rdump"));
    let want = images::tree_files(&img.tree);
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (p, h) in &want {
        let excluded = excludes
            .iter()
            .any(|g| source_mover::guest::glob::matches(g, &format!("/{}", p.display())));
        if excluded {
            let bytes = std::fs::read(dir.join("rdump").join(p)).unwrap();
            assert!(
                bytes.iter().all(|&b| b == 0),
                "excluded file {} is not zeros",
                p.display()
            );
        } else {
            assert_eq!(&files[p], h, "file {} differs", p.display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_backup_and_restore_mbr_4k_and_gpt_1k() {
    let srv = TestServer::start().await;
    let c = client(&srv.url());
    let dir = tempfile::tempdir().unwrap();
    let tree = make_tree(dir.path());
    for (name, table, block) in [("mbr4k", Table::Dos, 4096), ("gpt1k", Table::Gpt, 1024)] {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        let img = build(&d, name, Layout::ext4(table, block, 48, 16, 8), &tree);
        let r = backup(&c, &opts(name, &img.path, &d.join("state")))
            .await
            .unwrap();
        let out = d.join("restored.raw");
        restore_to(&c, &r.backup_id, &out).await;
        check(&img, &out, &d, &[]);
        // Less is read than the image holds: swap and free space are not read.
        let allocated = std::fs::metadata(&img.path)
            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
            .unwrap();
        assert!(
            r.read_bytes < allocated,
            "{name}: read {} of {allocated} allocated",
            r.read_bytes
        );
        assert!(
            r.skipped_bytes["swap"] >= 15 * MIB && r.skipped_bytes["free"] > 0,
            "{name}: {:?}",
            r.skipped_bytes
        );
        let sum: u64 = r.read_bytes
            + r.skipped_bytes
                .iter()
                .filter(|(k, _)| *k != "zero")
                .map(|(_, v)| v)
                .sum::<u64>();
        assert_eq!(
            sum, r.logical_bytes,
            "{name}: read + skipped covers the disk: {r:?}"
        );
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_partitions_and_ext3_indirect_maps() {
    let srv = TestServer::start().await;
    let c = client(&srv.url());
    let dir = tempfile::tempdir().unwrap();
    let tree = make_tree(dir.path());
    let layout = Layout {
        fs_type: "ext3",
        logical: true,
        ..Layout::ext4(Table::Dos, 1024, 40, 8, 2)
    };
    let img = build(dir.path(), "ext3", layout, &tree);
    assert!(
        img.fs.0 >= 2 << 20,
        "the file system is in a logical partition, behind its boot record: {:?}",
        img.fs
    );
    let globs = vec!["/var/cache/**".to_string(), "large.bin".to_string()];
    let mut o = opts("vm-ext3", &img.path, &dir.path().join("s"));
    o.excludes = globs
        .iter()
        .map(|g| ("disk0".to_string(), g.clone()))
        .collect();
    let r = backup(&c, &o).await.unwrap();
    assert!(
        r.skipped_bytes["excluded"] >= 9 * MIB,
        "indirect-mapped files excluded: {:?}",
        r.skipped_bytes
    );
    assert!(r.skipped_bytes["swap"] >= 7 * MIB, "{:?}", r.skipped_bytes);
    let out = dir.path().join("restored.raw");
    restore_to(&c, &r.backup_id, &out).await;
    check(&img, &out, dir.path(), &globs);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excluded_directory_reads_as_zeros() {
    let srv = TestServer::start().await;
    let c = client(&srv.url());
    let dir = tempfile::tempdir().unwrap();
    let tree = make_tree(dir.path());
    let img = build(
        dir.path(),
        "ex",
        Layout::ext4(Table::Dos, 4096, 48, 16, 0),
        &tree,
    );
    let full = backup(&c, &opts("ex-full", &img.path, &dir.path().join("s1")))
        .await
        .unwrap();
    let mut o = opts("ex", &img.path, &dir.path().join("s2"));
    let globs = vec!["/var/cache/**".to_string()];
    o.excludes = globs
        .iter()
        .map(|g| ("disk0".to_string(), g.clone()))
        .collect();
    let r = backup(&c, &o).await.unwrap();
    assert!(
        r.skipped_bytes["excluded"] >= 3 * MIB,
        "{:?}",
        r.skipped_bytes
    );
    assert!(
        r.read_bytes + 3 * MIB <= full.read_bytes,
        "excluding 3 MiB must read at least 3 MiB less: {} vs {}",
        r.read_bytes,
        full.read_bytes
    );
    let out = dir.path().join("restored.raw");
    restore_to(&c, &r.backup_id, &out).await;
    check(&img, &out, dir.path(), &globs);
    srv.stop().await;
}

/// Day 2: the file system changed with `debugfs -w`; returns (day-2 image, CBT file counting
/// from backup `base`, changed ranges).
fn day_two(dir: &Path, img: &Image, base: &str) -> (Image, PathBuf, source_mover::ranges::Ranges) {
    let fs = dir.join("day2.ext4");
    extract(&img.path, img.fs, &fs);
    std::fs::write(dir.join("new.bin"), noise(3 * MIB as usize, 77)).unwrap();
    std::fs::write(dir.join("hostname"), "test-vm-day2\n").unwrap();
    let script = format!("rm /etc/hostname\nwrite {} /etc/hostname\nwrite {} /srv/new.bin\nrm /home/user/docs/note-3.txt\n", dir.join("hostname").display(), dir.join("new.bin").display());
    std::fs::write(dir.join("day2.cmds"), script).unwrap();
    images::run(
        Command::new("debugfs")
            .arg("-w")
            .arg("-f")
            .arg(dir.join("day2.cmds"))
            .arg(&fs),
    );
    let path = dir.join("day2.raw");
    std::fs::copy(&img.path, &path).unwrap();
    let data = std::fs::read(&fs).unwrap();
    std::os::unix::fs::FileExt::write_all_at(
        &std::fs::OpenOptions::new().write(true).open(&path).unwrap(),
        &data,
        img.fs.0,
    )
    .unwrap();
    // The day-2 tree, as the file system now holds it.
    let tree = dir.join("day2-tree");
    images::run(
        Command::new("debugfs")
            .arg("-R")
            .arg(format!("rdump / {}", {
                std::fs::create_dir_all(&tree).unwrap();
                tree.display()
            }))
            .arg(&fs),
    );
    let _ = std::fs::remove_dir_all(tree.join("lost+found"));
    // CBT: 64 KiB extents that differ.
    let (a, b) = (
        std::fs::read(&img.path).unwrap(),
        std::fs::read(&path).unwrap(),
    );
    let mut changed = Vec::new();
    for (i, (x, y)) in a.chunks(64 << 10).zip(b.chunks(64 << 10)).enumerate() {
        if x != y {
            changed.push(((i as u64) << 16, ((i as u64) << 16) + x.len() as u64));
        }
    }
    let cbt = dir.join("cbt.json");
    let list: Vec<[u64; 2]> = changed.iter().map(|&(s, e)| [s, e - s]).collect();
    std::fs::write(
        &cbt,
        serde_json::json!({ "base": base, "changed": list }).to_string(),
    )
    .unwrap();
    (
        Image {
            path,
            tree,
            ..img.clone()
        },
        cbt,
        source_mover::ranges::Ranges::from_unsorted(changed),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incrementals_with_and_without_cbt() {
    let srv = TestServer::start().await;
    let c = client(&srv.url());
    let dir = tempfile::tempdir().unwrap();
    let tree = make_tree(dir.path());
    let img = build(
        dir.path(),
        "inc",
        Layout::ext4(Table::Dos, 4096, 48, 16, 4),
        &tree,
    );
    let full = backup(&c, &opts("vm-inc", &img.path, &dir.path().join("s")))
        .await
        .unwrap();
    let (day2, cbt, changed) = day_two(dir.path(), &img, &full.backup_id);
    let bs = MIB;
    let changed_blocks = source_mover::ranges::Ranges::from_unsorted(
        changed
            .as_slice()
            .iter()
            .map(|&(a, b)| (a / bs, b.div_ceil(bs)))
            .collect(),
    );

    // With CBT: reads at most the changed extents rounded up to whole blocks.
    let mut o = opts("vm-inc", &day2.path, &dir.path().join("s"));
    o.cbt
        .insert("disk0".into(), source_mover::cbt::json_file(&cbt));
    let inc = backup(&c, &o).await.unwrap();
    assert_eq!(inc.base.as_deref(), Some(full.backup_id.as_str()));
    assert!(
        inc.read_bytes <= changed_blocks.total() * bs,
        "read {} > {}",
        inc.read_bytes,
        changed_blocks.total() * bs
    );
    assert!(inc.chunks_uploaded as u64 <= changed_blocks.total());
    let out = dir.path().join("inc.raw");
    restore_to(&c, &inc.backup_id, &out).await;
    check(&day2, &out, &dir.path().join("chk-cbt"), &[]);

    // Without CBT over the same base: everything is read, only changed blocks are sent.
    let mut o = opts("vm-inc", &day2.path, &dir.path().join("s"));
    o.base = Base::Id(full.backup_id.clone());
    let nocbt = backup(&c, &o).await.unwrap();
    assert!(nocbt.read_bytes > inc.read_bytes);
    assert!(
        nocbt.records <= changed_blocks.total(),
        "records {} > changed blocks {}",
        nocbt.records,
        changed_blocks.total()
    );
    assert_eq!(
        nocbt.chunks_uploaded, 0,
        "the CBT incremental already stored every changed block"
    );
    let out2 = dir.path().join("nocbt.raw");
    restore_to(&c, &nocbt.backup_id, &out2).await;
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&out2).unwrap());

    // A clone of the disk under another source sends nothing new.
    let mut o = opts("vm-clone", &img.path, &dir.path().join("s"));
    o.base = Base::None;
    let clone: BackupReport = backup(&c, &o).await.unwrap();
    assert_eq!(clone.chunks_uploaded, 0);
    assert_eq!(clone.new_chunks, 0);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_size_boundaries() {
    let srv = TestServer::start().await;
    let c = client(&srv.url());
    let dir = tempfile::tempdir().unwrap();
    let bs = 256u64 << 10;
    for (i, len) in [0, 1, bs - 1, bs, bs + 1, 5 * bs - 1, 5 * bs, 5 * bs + 1]
        .into_iter()
        .enumerate()
    {
        let p = dir.path().join(format!("d{len}.raw"));
        std::fs::write(&p, noise(len as usize, 100 + i as u64)).unwrap();
        let mut o = opts(&format!("edge-{len}"), &p, &dir.path().join("s"));
        o.block_size = bs as u32;
        let r = backup(&c, &o).await.unwrap();
        let out = dir.path().join(format!("r{len}.raw"));
        restore_to(&c, &r.backup_id, &out).await;
        assert!(
            std::fs::read(&out).unwrap() == std::fs::read(&p).unwrap(),
            "length {len}"
        );
        assert_eq!(r.read_bytes, len);
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mover_resumes_and_server_restart_is_survived() {
    let dir = tempfile::tempdir().unwrap();
    let port = tests::free_port();
    let listen = format!("127.0.0.1:{port}");
    let data = dir.path().join("repo");
    let mut srv = ChildServer::start_at(&data, &listen);
    let url = format!("http://{listen}");
    let disk = dir.path().join("disk.raw");
    std::fs::write(&disk, noise(48 * MIB as usize, 5)).unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, BACKUP_A).unwrap();
    let state = dir.path().join("state");
    let args = |limit: &str| {
        let mut cmd = Command::new(tests::mover_binary());
        cmd.args(["backup", "--repo", &url, "--token-file"])
            .arg(&token)
            .args(["--source", "vm-kill", "--disk"])
            .arg(format!("disk0={}", disk.display()));
        cmd.args(["--state-dir"]).arg(&state).args([
            "--json",
            "--limit-rate",
            limit,
            "--block-size",
            "1M",
        ]);
        cmd
    };
    // 1. Kill the mover once the repository acknowledged some records.
    let mut child = args("8M")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut acked = 0;
    for _ in 0..300 {
        std::thread::sleep(Duration::from_millis(50));
        if let Some(j) = std::fs::read_dir(&state).ok().and_then(|mut d| {
            d.find_map(|e| {
                e.ok()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            })
        }) {
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(j.path()).unwrap_or_default())
                    .unwrap_or_default();
            acked = v["disks"]["disk0"]["entries"].as_u64().unwrap_or(0);
            if acked > 0 {
                break;
            }
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        acked > 0 && acked < 48,
        "kill point: {acked} records acknowledged"
    );

    // 2. Run it again; while it runs, SIGKILL the server and restart it on the same port.
    let child = args("4M")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    srv.kill9_in_place();
    std::thread::sleep(Duration::from_millis(500));
    srv = ChildServer::start_at(&data, &listen);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "second run failed");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["resumed"], true);
    // Less than the acknowledged part was sent again: only chunks the server lacked.
    assert!(
        report["chunks_uploaded"].as_u64().unwrap() <= 48 - acked + 2,
        "{report}"
    );
    let c = client(&srv.url());
    let restored = dir.path().join("restored.raw");
    restore_to(&c, report["backup_id"].as_str().unwrap(), &restored).await;
    assert!(std::fs::read(&restored).unwrap() == std::fs::read(&disk).unwrap());
    drop(srv);
}

/// The group (number, first block, block count, bitmap block) with the fewest free blocks whose
/// bitmap is initialised, from `dumpe2fs`.
fn fullest_group(fs_img: &Path) -> (u64, u64, u64, u64) {
    let out = tests::images::run(
        std::process::Command::new("dumpe2fs")
            .arg(fs_img)
            .stderr(std::process::Stdio::null()),
    );
    let mut groups = Vec::new();
    let mut cur: Option<(u64, u64, u64, bool)> = None;
    let mut bitmap = 0;
    for l in out.lines() {
        let t = l.trim();
        if let Some((n, rest)) = t
            .strip_prefix("Group ")
            .and_then(|r| r.split_once(": (Blocks "))
        {
            let (range, _) = rest.split_once(')').unwrap();
            let (a, b) = range.split_once('-').unwrap();
            let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
            cur = Some((n.parse().unwrap(), a, b + 1 - a, t.contains("BLOCK_UNINIT")));
        } else if let Some(rest) = t.strip_prefix("Block bitmap at ") {
            bitmap = rest.split_whitespace().next().unwrap().parse().unwrap();
        } else if t.contains(" free blocks, ") {
            let free: u64 = t.split_whitespace().next().unwrap().parse().unwrap();
            let (n, first, count, uninit) = cur.take().unwrap();
            if !uninit {
                groups.push((free, n, first, count, bitmap));
            }
        }
    }
    let (_, n, first, count, bitmap) = groups.into_iter().min().unwrap();
    (n, first, count, bitmap)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_bitmap_failing_its_checksum_keeps_its_group() {
    let srv = TestServer::start().await;
    let c = client(&srv.url());
    let dir = tempfile::tempdir().unwrap();
    let tree = make_tree(dir.path());
    let built = build(
        dir.path(),
        "badbitmap",
        Layout::ext4(Table::Dos, 1024, 48, 4, 1),
        &tree,
    );
    let fs_img = dir.path().join("source.ext4");
    extract(&built.path, built.fs, &fs_img);
    let (group, first, count, bitmap) = fullest_group(&fs_img);
    let desc_size: u64 = tests::images::run(Command::new("dumpe2fs").arg("-h").arg(&fs_img))
        .lines()
        .find_map(|l| l.strip_prefix("Group descriptor size:"))
        .map_or(32, |v| v.trim().parse().unwrap());
    let plan_of = |img: &Image| {
        let disk = source_mover::source::FileSource::open(&img.path).unwrap();
        source_mover::plan::plan(&disk, &[]).unwrap()
    };
    let pristine = plan_of(&built);
    assert!(
        !pristine.found.iter().any(|f| f.contains("checksum")),
        "a sound file system has no bad bitmaps: {:?}",
        pristine.found
    );
    let group_bytes = source_mover::ranges::Ranges::single(
        built.fs.0 + first * 1024,
        built.fs.0 + (first + count) * 1024,
    );
    // Two damages that would each make group `group` look free: a zeroed block bitmap, and a
    // BLOCK_UNINIT flag in its descriptor (which would skip the bitmap altogether). 1 KiB
    // blocks: the descriptors start at block 2.
    let desc_flags = built.fs.0 + 2048 + group * desc_size + 18;
    for (case, at, bytes) in [
        ("bitmap", built.fs.0 + bitmap * 1024, vec![0u8; 1024]),
        ("descriptor", desc_flags, vec![0x02, 0x00]),
    ] {
        let d = dir.path().join(case);
        std::fs::create_dir_all(&d).unwrap();
        let img = Image {
            path: d.join("disk.raw"),
            ..built.clone()
        };
        std::fs::copy(&built.path, &img.path).unwrap();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&img.path)
            .unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &bytes, at).unwrap();
        drop(f);
        let plan = plan_of(&img);
        assert!(
            plan.found
                .iter()
                .any(|f| f.contains("1 block bitmaps or group descriptors failed their checksum")),
            "{case}: {:?}",
            plan.found
        );
        let free = &plan.dropped["free"];
        assert!(
            free.intersect(&group_bytes).is_empty(),
            "{case}: nothing of group {group} is dropped"
        );
        assert_eq!(
            *free,
            pristine.dropped["free"].subtract(&group_bytes),
            "{case}: the other groups' free blocks are still dropped"
        );
        // Backed up and restored, the group comes back byte for byte and every file is intact.
        let r = backup(
            &c,
            &opts(&format!("vm-{case}"), &img.path, &d.join("state")),
        )
        .await
        .unwrap();
        let out = d.join("restored.raw");
        restore_to(&c, &r.backup_id, &out).await;
        let (src, got) = (
            std::fs::read(&img.path).unwrap(),
            std::fs::read(&out).unwrap(),
        );
        let (a, b) = group_bytes.as_slice()[0];
        assert!(
            src[a as usize..b as usize] == got[a as usize..b as usize],
            "{case}: group {group} comes back byte for byte"
        );
        // debugfs refuses a file system that fails its checksums unless told not to check.
        let restored_fs = d.join("restored.ext4");
        extract(&out, img.fs, &restored_fs);
        let rd = d.join("rdump");
        std::fs::create_dir_all(&rd).unwrap();
        tests::images::run(
            Command::new("debugfs")
                .arg("-n")
                .arg("-R")
                .arg(format!("rdump / {}", rd.display()))
                .arg(&restored_fs)
                .stderr(std::process::Stdio::null()),
        );
        let mut files = images::tree_files(&rd);
        files.retain(|p, _| !p.starts_with("lost+found"));
        assert_eq!(
            files,
            images::tree_files(&img.tree),
            "{case}: every file is intact"
        );
    }
}

/// bigalloc's bitmaps count clusters, not blocks: the mover does not read them and drops
/// nothing of such a file system (the same file system without bigalloc drops its free space).
#[test]
fn bigalloc_file_systems_are_read_in_full() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str], bool); 2] = [
        ("plain", &[], true),
        ("bigalloc", &["-O", "bigalloc", "-C", "65536"], false),
    ];
    for (name, extra, expect_free) in cases {
        let img = dir.path().join(format!("{name}.ext4"));
        std::fs::File::create(&img)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        tests::images::run(
            Command::new("mke2fs")
                .args(["-q", "-F", "-t", "ext4", "-b", "4096"])
                .args(extra)
                .arg(&img),
        );
        let disk = source_mover::source::FileSource::open(&img).unwrap();
        let plan = source_mover::plan::plan(&disk, &[]).unwrap();
        assert_eq!(
            !plan.dropped["free"].is_empty(),
            expect_free,
            "{name}: {:?}",
            plan.found
        );
    }
}
