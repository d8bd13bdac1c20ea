//! What the block map may drop: only what is proven unused. A swap type code without a valid
//! swap header is read in full; a valid header drops its pages whatever the type code says.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use source_mover::backup::backup;
use source_mover::plan::{plan, DiskPlan};
use source_mover::ranges::Ranges;
use source_mover::source::FileSource;
use tests::images::{self, noise, run};
use tests::mover::{client, opts, restore_to};
use tests::TestServer;

const MIB: u64 = 1 << 20;

/// A disk with a partition table made by `sfdisk` from `script` (whose `{node}` stands for the
/// image path, for naming logical partitions) and each partition's content written in table
/// order; returns the image and each partition's (offset, length) as `sfdisk -J` reports them.
fn partitioned(
    dir: &Path,
    name: &str,
    size: u64,
    script: &str,
    contents: &[Vec<u8>],
) -> (PathBuf, Vec<(u64, u64)>) {
    let path = dir.join(format!("{name}.raw"));
    std::fs::File::create(&path).unwrap().set_len(size).unwrap();
    let script = script.replace("{node}", &path.display().to_string());
    let table = images::sfdisk(&path, &script);
    let parts: Vec<(u64, u64)> = table
        .iter()
        .filter(|p| !matches!(p["type"].as_str(), Some("5" | "f" | "85")))
        .map(|p| {
            (
                p["start"].as_u64().unwrap() * 512,
                p["size"].as_u64().unwrap() * 512,
            )
        })
        .collect();
    assert_eq!(parts.len(), contents.len(), "{table:?}");
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    for (&(off, len), c) in parts.iter().zip(contents) {
        assert!(c.len() as u64 <= len);
        f.write_all_at(c, off).unwrap();
    }
    (path, parts)
}

/// A swap area made by `mkswap` for `made_for` bytes, cut or padded to `len`, with random
/// "dirty pages" after its header page.
fn swap_area(dir: &Path, made_for: u64, len: u64, seed: u64) -> Vec<u8> {
    let p = dir.join(format!("swap-{seed}.img"));
    std::fs::File::create(&p)
        .unwrap()
        .set_len(made_for)
        .unwrap();
    run(Command::new("mkswap").arg("-q").arg(&p));
    let mut area = std::fs::read(&p).unwrap();
    area.resize(len as usize, 0);
    let dirty = noise((len - 4096) as usize / 2, seed);
    area[4096..4096 + dirty.len()].copy_from_slice(&dirty);
    area
}

fn plan_of(path: &Path) -> DiskPlan {
    plan(&FileSource::open(path).unwrap(), &[]).unwrap()
}

/// Backs the disk up, restores it, and checks the restored disk equals the source outside the
/// plan's dropped bytes and is zero inside them. Returns the restored bytes.
async fn round_trip(url: &str, source: &str, path: &Path, state: &Path) -> Vec<u8> {
    let c = client(url);
    let r = backup(&c, &opts(source, path, state)).await.unwrap();
    let out = state.with_extension("restored");
    restore_to(&c, &r.backup_id, &out).await;
    let (src, got) = (std::fs::read(path).unwrap(), std::fs::read(&out).unwrap());
    assert_eq!(src.len(), got.len());
    let mut expect = src;
    for (reason, r) in &plan_of(path).dropped {
        for &(a, b) in r.as_slice() {
            if *reason != "hole" {
                expect[a as usize..b as usize].fill(0);
            }
        }
    }
    let at = expect.iter().zip(&got).position(|(a, b)| a != b);
    assert!(
        at.is_none(),
        "{source}: restored disk differs at byte {at:?}"
    );
    got
}

/// Four partitions: random data typed swap, a mkswap'd area typed Linux, a swap header whose
/// `last_page` lies past its partition (typed swap), and a swap area smaller than its partition
/// (typed swap, random data after it). Only the two valid areas' swap pages are dropped; on MBR,
/// GPT and in logical partitions alike, and every partition read in full comes back byte for
/// byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swap_is_dropped_only_behind_a_valid_swap_header() {
    let srv = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = 8 * MIB;
    let mut small_area = swap_area(d, 4 * MIB, p, 4);
    small_area[4 * MIB as usize..].copy_from_slice(&noise(4 * MIB as usize, 5));
    let contents = vec![
        noise(p as usize, 1),
        swap_area(d, p, p, 2),
        swap_area(d, 2 * p, p, 3),
        small_area,
    ];
    let sectors = p / 512;
    let primary = |label: &str| {
        format!(
            "label: {label}\nstart=2048, size={sectors}, type=S\nsize={sectors}, type=L\nsize={sectors}, type=S\nsize={sectors}, type=S\n"
        )
    };
    let logical = format!(
        "label: dos\n{{node}}1 : start=2048, size={}, type=5\n{{node}}5 : size={sectors}, type=S\n{{node}}6 : size={sectors}, type=L\n{{node}}7 : size={sectors}, type=S\n{{node}}8 : size={sectors}, type=S\n",
        4 * sectors + 8 * 2048
    );
    for (name, script) in [
        ("mbr", primary("dos")),
        ("gpt", primary("gpt")),
        ("logical", logical),
    ] {
        let (path, parts) = partitioned(d, name, 4 * p + 16 * MIB, &script, &contents);
        let pl = plan_of(&path);
        let expect = Ranges::from_unsorted(vec![
            (parts[1].0 + 4096, parts[1].0 + parts[1].1),
            (parts[3].0 + 4096, parts[3].0 + 4 * MIB),
        ]);
        assert_eq!(pl.dropped["swap"], expect, "{name}: {:?}", pl.found);
        assert!(
            pl.found
                .iter()
                .filter(|f| f.contains("no valid swap header: read in full"))
                .count()
                == 2,
            "{name}: {:?}",
            pl.found
        );
        let got = round_trip(&srv.url(), name, &path, &d.join(format!("{name}-state"))).await;
        for i in [0, 2] {
            let (a, b) = (parts[i].0 as usize, (parts[i].0 + parts[i].1) as usize);
            assert!(
                got[a..b] == contents[i][..],
                "{name}: partition {i} comes back byte for byte"
            );
        }
        let tail = (parts[3].0 + 4 * MIB) as usize..(parts[3].0 + p) as usize;
        assert!(
            got[tail] == contents[3][4 * MIB as usize..],
            "{name}: the bytes past a swap area's last page come back"
        );
    }
    srv.stop().await;
}

/// A disk without a partition table: a valid swap header drops the swap pages, a header that
/// claims more pages than the disk has does not.
#[test]
fn a_whole_disk_is_swap_only_with_a_header_that_fits() {
    let dir = tempfile::tempdir().unwrap();
    for (name, made_for, dropped) in [("fits", 8 * MIB, true), ("too-long", 16 * MIB, false)] {
        let path = dir.path().join(format!("{name}.raw"));
        std::fs::write(&path, swap_area(dir.path(), made_for, 8 * MIB, 7)).unwrap();
        let pl = plan_of(&path);
        let want = if dropped {
            Ranges::single(4096, 8 * MIB)
        } else {
            Ranges::new()
        };
        assert_eq!(pl.dropped["swap"], want, "{name}: {:?}", pl.found);
    }
}

/// Writes MBR entry `i` (0-based) of `disk`: type, first sector, sector count.
fn mbr_entry(disk: &Path, i: u64, kind: u8, lba: u64, sectors: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
    let at = 446 + 16 * i;
    f.write_all_at(&[kind], at + 4).unwrap();
    f.write_all_at(&(lba as u32).to_le_bytes(), at + 8).unwrap();
    f.write_all_at(&(sectors as u32).to_le_bytes(), at + 12)
        .unwrap();
}

/// An ext4 file system of `len` bytes whose free blocks hold random bytes (a used disk), so that
/// dropping them is visible after a restore.
fn used_ext4(dir: &Path, len: u64, seed: u64) -> Vec<u8> {
    let p = dir.join(format!("used-{seed}.ext4"));
    std::fs::write(&p, noise(len as usize, seed)).unwrap();
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-E", "nodiscard"])
        .arg(&p));
    std::fs::read(&p).unwrap()
}

/// A case: name, image, the (offset, length) of what must be read in full, the reason shown.
type Case = (&'static str, PathBuf, Vec<(u64, u64)>, &'static str);

/// Partitions that overlap each other or the partition table, or run past the end of the disk,
/// are read in full (the plan line says why), and the disk restores byte for byte there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_whose_bytes_are_not_their_own_are_read_in_full() {
    let srv = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (fs_len, swap_len) = (16 * MIB, 8 * MIB);
    let two = format!(
        "label: dos\nstart=2048, size={}, type=L\nsize={}, type=S\n",
        fs_len / 512,
        swap_len / 512
    );
    let contents = vec![used_ext4(d, fs_len, 1), swap_area(d, swap_len, swap_len, 2)];
    let size = 32 * MIB;
    let mut cases: Vec<Case> = Vec::new();

    // 1. The ext4 partition's entry grown by 1 MiB, over the swap partition.
    let (p, parts) = partitioned(d, "overlap", size, &two, &contents);
    mbr_entry(&p, 0, 0x83, parts[0].0 / 512, (parts[0].1 + MIB) / 512);
    let grown = (parts[0].0, parts[0].1 + MIB);
    cases.push(("overlap", p, vec![grown, parts[1]], "overlaps partition"));

    // 2. A third entry over the MBR and the gap after it, holding a swap header (the gap holds
    //    a boot loader, say).
    let (p, _) = partitioned(d, "table", size, &two, &contents);
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    let header = swap_area(d, MIB, MIB, 3);
    f.write_all_at(&header[1024..4096], 1024).unwrap();
    f.write_all_at(&noise((MIB - 4096) as usize, 5), 4096)
        .unwrap();
    drop(f);
    mbr_entry(&p, 2, 0x82, 0, 2048);
    cases.push(("table", p, vec![(0, MIB)], "overlaps the partition table"));

    // 3. The swap partition's entry running 4 MiB past the end of the disk (its swap header
    //    fits in the part that is on the disk).
    let (p, parts) = partitioned(d, "past-end", 25 * MIB, &two, &contents);
    mbr_entry(&p, 1, 0x82, parts[1].0 / 512, (parts[1].1 + 4 * MIB) / 512);
    let on_disk = (parts[1].0, 25 * MIB - parts[1].0);
    cases.push(("past-end", p, vec![on_disk], "past the end of the disk"));

    // 4. GPT: the last partition's entry stretched over the backup entry array and header at
    //    the end of the disk, and a swap area made for that length.
    let gpt = format!("label: gpt\nstart=2048, size={}, type=S\n", swap_len / 512);
    // The area stops short of the backup entry array and header (33 sectors), which stay.
    let area = swap_area(d, size - MIB, size - MIB - 33 * 512, 4);
    let (p, parts) = partitioned(d, "gpt-end", size, &gpt, &[vec![0u8; 0]]);
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all_at(&(size / 512 - 1).to_le_bytes(), 1024 + 40)
        .unwrap();
    f.write_all_at(&area, parts[0].0).unwrap();
    drop(f);
    cases.push((
        "gpt-end",
        p,
        vec![(MIB, size - MIB)],
        "overlaps the partition table",
    ));

    for (name, path, whole, why) in cases {
        let pl = plan_of(&path);
        let dropped = pl
            .dropped
            .iter()
            .filter(|(r, _)| **r != "hole")
            .fold(Ranges::new(), |acc, (_, r)| acc.union(r));
        for &(a, len) in &whole {
            assert!(
                dropped.intersect(&Ranges::single(a, a + len)).is_empty(),
                "{name}: nothing of [{a}, {}) is dropped: {:?} {:?}",
                a + len,
                pl.dropped,
                pl.found
            );
        }
        assert!(
            pl.found
                .iter()
                .any(|f| f.contains(why) && f.ends_with("read in full")),
            "{name}: {:?}",
            pl.found
        );
        let got = round_trip(&srv.url(), name, &path, &d.join(format!("{name}-state"))).await;
        let src = std::fs::read(&path).unwrap();
        for &(a, len) in &whole {
            let r = a as usize..(a + len) as usize;
            assert!(
                got[r.clone()] == src[r],
                "{name}: [{a}, {}) comes back byte for byte",
                a + len
            );
        }
    }
    srv.stop().await;
}

/// The blocks of `path` in an ext4 image, from `debugfs -R blocks`.
fn blocks_of(fs_img: &Path, path: &str) -> Vec<u64> {
    run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("blocks {path}"))
        .arg(fs_img)
        .stderr(Stdio::null()))
    .split_whitespace()
    .map(|b| b.parse().unwrap())
    .collect()
}

/// Points the first extent of an extent-mapped file at `count` blocks from `start`
/// (`debugfs sif`, on a file system without metadata checksums, so nothing stops it).
fn forge_extent(fs_img: &Path, path: &str, start: u64, count: u64) {
    for (field, value) in [("block[4]", count), ("block[5]", start)] {
        run(Command::new("debugfs")
            .arg("-w")
            .arg("-R")
            .arg(format!("sif {path} {field} {value}"))
            .arg(fs_img)
            .stderr(Stdio::null()));
    }
}

/// Excluded files whose (forged) extents name an inode table, a directory, the journal and
/// another file's data drop none of them; an honest excluded file is still dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excluded_files_drop_only_blocks_that_are_theirs() {
    let srv = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tree = tests::images::make_tree(d);
    std::fs::write(
        tree.join("var/cache/app/honest.bin"),
        noise(MIB as usize, 9),
    )
    .unwrap();
    let fs_len = 40 * MIB;
    let fs_img = d.join("forged.ext4");
    std::fs::File::create(&fs_img)
        .unwrap()
        .set_len(fs_len)
        .unwrap();
    run(Command::new("mke2fs")
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-O",
            "^metadata_csum",
            "-b",
            "4096",
        ])
        .args(["-E", "root_owner=0:0", "-d"])
        .arg(&tree)
        .arg(&fs_img));
    let dumpe2fs = run(Command::new("dumpe2fs").arg(&fs_img).stderr(Stdio::null()));
    let itable: u64 = dumpe2fs
        .lines()
        .find_map(|l| l.trim().strip_prefix("Inode table at "))
        .and_then(|r| r.split('-').next())
        .unwrap()
        .parse()
        .unwrap();
    let dir_block = blocks_of(&fs_img, "/home/user/docs")[0];
    let journal = blocks_of(&fs_img, "<8>")[0];
    let other = blocks_of(&fs_img, "/srv/large.bin")[0];
    let honest: Vec<u64> = blocks_of(&fs_img, "/var/cache/app/honest.bin");
    let targets = [
        ("/var/cache/app/blob-0.bin", itable, 8),
        ("/var/cache/app/blob-1.bin", dir_block, 1),
        ("/var/cache/app/blob-2.bin", journal, 8),
        ("/etc/hostname", other, 8),
    ];
    for (path, start, count) in targets {
        forge_extent(&fs_img, path, start, count);
    }
    let script = format!("label: dos\nstart=2048, size={}, type=L\n", fs_len / 512);
    let (path, parts) = partitioned(
        d,
        "forged",
        fs_len + 2 * MIB,
        &script,
        &[std::fs::read(&fs_img).unwrap()],
    );
    let off = parts[0].0;
    let bytes =
        |start: u64, count: u64| Ranges::single(off + start * 4096, off + (start + count) * 4096);
    let globs = vec!["/var/cache/**".to_string(), "hostname".to_string()];
    let pl = plan(&FileSource::open(&path).unwrap(), &globs).unwrap();
    let excluded = &pl.dropped["excluded"];
    for (p, start, count) in targets {
        assert!(
            excluded.intersect(&bytes(start, count)).is_empty(),
            "{p}'s forged extent drops nothing: {:?}",
            pl.found
        );
    }
    let honest_bytes = Ranges::from_unsorted(
        honest
            .iter()
            .map(|&b| (off + b * 4096, off + (b + 1) * 4096))
            .collect(),
    );
    assert_eq!(*excluded, honest_bytes, "{:?}", pl.found);
    assert!(
        pl.found.iter().any(
            |f| f.contains("of their blocks read: file-system metadata or other files' blocks")
        ),
        "{:?}",
        pl.found
    );
    // Backed up with the same excludes and restored: the named blocks come back.
    let c = client(&srv.url());
    let mut o = opts("forged", &path, &d.join("state"));
    o.excludes = globs
        .iter()
        .map(|g| ("disk0".to_string(), g.clone()))
        .collect();
    let r = backup(&c, &o).await.unwrap();
    assert_eq!(r.skipped_bytes["excluded"], honest_bytes.total());
    let out = d.join("restored.raw");
    restore_to(&c, &r.backup_id, &out).await;
    let (src, got) = (std::fs::read(&path).unwrap(), std::fs::read(&out).unwrap());
    for (p, start, count) in targets {
        let (a, b) = bytes(start, count).as_slice()[0];
        assert!(
            src[a as usize..b as usize] == got[a as usize..b as usize],
            "{p}: the blocks its extent names come back byte for byte"
        );
    }
    srv.stop().await;
}

/// Which blocks are in use is known only from a bitmap that holds its checksum: while one fails
/// it, no excluded file's block is dropped on that file system.
#[test]
fn excluded_files_are_read_while_a_bitmap_fails_its_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let tree = tests::images::make_tree(dir.path());
    let img = tests::images::build(
        dir.path(),
        "csum",
        tests::images::Layout::ext4(tests::images::Table::Dos, 4096, 48, 4, 1),
        &tree,
    );
    let globs = vec!["/var/cache/**".to_string()];
    let excluded_of = |path: &Path| {
        let pl = plan(&FileSource::open(path).unwrap(), &globs).unwrap();
        (pl.dropped["excluded"].total(), pl.found)
    };
    let (sound, _) = excluded_of(&img.path);
    assert!(sound >= 3 * MIB, "the excludes drop data: {sound}");
    // Zero group 0's block bitmap: it no longer matches its metadata_csum checksum.
    let fs_img = dir.path().join("csum.ext4");
    tests::images::extract(&img.path, img.fs, &fs_img);
    let bitmap: u64 = run(Command::new("dumpe2fs").arg(&fs_img).stderr(Stdio::null()))
        .lines()
        .find_map(|l| l.trim().strip_prefix("Block bitmap at "))
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img.path)
        .unwrap()
        .write_all_at(&[0u8; 4096], img.fs.0 + bitmap * 4096)
        .unwrap();
    let (damaged, found) = excluded_of(&img.path);
    assert_eq!(damaged, 0, "{found:?}");
    assert!(
        found
            .iter()
            .any(|f| f.contains("read as the block bitmaps are not trusted")),
        "{found:?}"
    );
}
