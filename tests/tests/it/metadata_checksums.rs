//! Metadata that fails its checksum is not trusted to drop data: an excluded file whose inode
//! or extent block fails its `metadata_csum` checksum is read all the same (and restores
//! intact), and a group whose descriptor fails its crc16 `gdt_csum` (`uninit_bg` without
//! `metadata_csum`) is kept whole. Forged with single-byte flips on images made by mke2fs.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};

use source_mover::backup::backup;
use source_mover::plan::plan;
use source_mover::ranges::Ranges;
use source_mover::source::FileSource;
use tests::images::{
    assemble, build, dumpe2fs_free, extract, flip_bits, make_tree, noise, run, Layout, Table,
};
use tests::mover::{client, opts};
use tests::TestServer;

use crate::mover::restore_to;

/// `debugfs -n` (checksums not verified) on a file-system image.
fn debugfs(fs_img: &Path, request: &str) -> String {
    run(Command::new("debugfs")
        .arg("-n")
        .arg("-R")
        .arg(request)
        .arg(fs_img)
        .stderr(Stdio::null()))
}

/// A file's data blocks, as byte ranges of the disk.
fn file_bytes(fs_img: &Path, path: &str, fs_offset: u64, bs: u64) -> Ranges {
    Ranges::from_unsorted(
        debugfs(fs_img, &format!("blocks {path}"))
            .split_whitespace()
            .map(|w| w.parse::<u64>().unwrap())
            .map(|b| (fs_offset + b * bs, fs_offset + (b + 1) * bs))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excluded_files_failing_their_checksums_are_read() {
    let srv = TestServer::start().await;
    let mc = client(&srv.url());
    let dir = tempfile::tempdir().unwrap();
    let tree = make_tree(dir.path());
    // Forty islands of data: forty extents, so the extent tree has a leaf block.
    let f = std::fs::File::create(tree.join("srv/many-extents.bin")).unwrap();
    for i in 0..40u64 {
        f.write_all_at(&noise(8192, 300 + i), i * 64 * 1024)
            .unwrap();
    }
    let img = build(
        dir.path(),
        "csum",
        Layout::ext4(Table::Dos, 4096, 48, 8, 0),
        &tree,
    );
    let fs_img = dir.path().join("clean.ext4");
    extract(&img.path, img.fs, &fs_img);
    let bs = 4096;
    // large.bin: a byte of i_checksum_lo.
    let imap = debugfs(&fs_img, "imap /srv/large.bin");
    let word = |after: &str| -> u64 {
        let w = imap
            .split(after)
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap();
        let w = w.trim_end_matches(',');
        match w.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16).unwrap(),
            None => w.parse().unwrap(),
        }
    };
    let (iblock, ioff) = (word("located at block"), word("offset"));
    flip_bits(&img.path, img.fs.0 + iblock * bs + ioff + 0x7C, 0xFF);
    // many-extents.bin: a byte of its extent leaf's tail checksum (after 340 slots of 12 bytes).
    let stat = debugfs(&fs_img, "stat /srv/many-extents.bin");
    let leaf: u64 = stat
        .split("(ETB0):")
        .nth(1)
        .unwrap_or_else(|| panic!("no extent block: {stat}"))
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap();
    flip_bits(&img.path, img.fs.0 + leaf * bs + 12 + 12 * 340, 0xFF);

    let globs = [
        "large.bin".to_string(),
        "many-extents.bin".to_string(),
        "/var/cache/**".to_string(),
    ];
    let p = plan(&FileSource::open(&img.path).unwrap(), &globs).unwrap();
    let line = p
        .found
        .iter()
        .find(|l| l.starts_with("partition 1:"))
        .unwrap();
    assert!(
        line.contains("2 excluded files read all the same"),
        "{line}"
    );
    let large = file_bytes(&fs_img, "/srv/large.bin", img.fs.0, bs);
    let many = file_bytes(&fs_img, "/srv/many-extents.bin", img.fs.0, bs);
    let cache = file_bytes(&fs_img, "/var/cache/app/blob-0.bin", img.fs.0, bs);
    assert!(large.total() >= 6 << 20 && many.total() >= 40 * 8192);
    for (name, r) in [("large.bin", &large), ("many-extents.bin", &many)] {
        assert!(
            p.dropped["excluded"].intersect(r).is_empty(),
            "{name}: blocks dropped on the word of metadata that fails its checksum"
        );
    }
    assert_eq!(p.dropped["excluded"].intersect(&cache), cache, "{line}");

    let mut o = opts("csum", &img.path, &dir.path().join("state"));
    o.excludes = globs.iter().map(|g| ("disk0".into(), g.clone())).collect();
    let r = backup(&mc, &o).await.unwrap();
    let out = dir.path().join("restored.raw");
    restore_to(&mc, &r.backup_id, &out).await;
    let (src, got) = (
        std::fs::read(&img.path).unwrap(),
        std::fs::read(&out).unwrap(),
    );
    for (name, r) in [("large.bin", &large), ("many-extents.bin", &many)] {
        for &(a, b) in r.as_slice() {
            assert!(
                src[a as usize..b as usize] == got[a as usize..b as usize],
                "{name}: bytes {a}..{b} not restored"
            );
        }
    }
    for &(a, b) in cache.as_slice() {
        assert!(got[a as usize..b as usize].iter().all(|&x| x == 0));
    }
    srv.stop().await;
}

#[test]
fn a_group_whose_descriptor_fails_its_crc16_is_kept_whole() {
    let dir = tempfile::tempdir().unwrap();
    let tree = make_tree(dir.path());
    // 1 KiB blocks: 8192 blocks a group, six groups in 48 MiB; crc16 descriptor checksums.
    let fs_img = dir.path().join("gdt.ext4");
    std::fs::File::create(&fs_img)
        .unwrap()
        .set_len(48 << 20)
        .unwrap();
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-b", "1024"])
        .args([
            "-O",
            "^metadata_csum,uninit_bg",
            "-E",
            "root_owner=0:0",
            "-d",
        ])
        .arg(&tree)
        .arg(&fs_img));
    let features = run(Command::new("dumpe2fs")
        .arg("-h")
        .arg(&fs_img)
        .stderr(Stdio::null()));
    assert!(features.contains("uninit_bg") && !features.contains("metadata_csum"));
    let img = assemble(dir.path(), "gdt", Table::Dos, false, &fs_img, 8, 0, &tree);
    let (bs, per_group, group) = (1024u64, 8192u64, 3u64);
    let group_bytes = Ranges::single(
        img.fs.0 + (1 + group * per_group) * bs,
        img.fs.0 + (1 + (group + 1) * per_group) * bs,
    );
    // The group has free blocks, so keeping it whole is visible.
    let free = Ranges::from_unsorted(
        dumpe2fs_free(&fs_img)
            .into_iter()
            .map(|(a, b)| (a + img.fs.0, b + img.fs.0))
            .collect(),
    );
    assert!(free.intersect(&group_bytes).total() > 4 << 20);
    let before = plan(&FileSource::open(&img.path).unwrap(), &[]).unwrap();
    assert!(before.dropped["free"].intersect(&group_bytes).total() > 4 << 20);
    // Descriptors of 64 bytes (64bit) from block 2; flip a byte of group 3's bg_checksum.
    let desc_size = 64;
    flip_bits(
        &img.path,
        img.fs.0 + 2 * bs + group * desc_size + 0x1E,
        0xFF,
    );
    let after = plan(&FileSource::open(&img.path).unwrap(), &[]).unwrap();
    let line = after
        .found
        .iter()
        .find(|l| l.starts_with("partition 1:"))
        .unwrap();
    assert!(
        after.dropped["free"].intersect(&group_bytes).is_empty(),
        "group {group} dropped on the word of a descriptor that fails its checksum: {line}"
    );
    assert!(
        line.contains("1 block bitmaps or group descriptors failed"),
        "{line}"
    );
    // The other groups still drop their free blocks.
    assert!(
        after.dropped["free"].total() + free.intersect(&group_bytes).total()
            >= before.dropped["free"].total()
    );
}
