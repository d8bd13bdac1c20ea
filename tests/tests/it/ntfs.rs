//! Windows guests: NTFS volumes made with mkntfs/ntfscp and the libntfs-3g helper, on MBR and
//! GPT disks with 4 KiB and 64 KiB clusters. Full and CBT incremental backups restore so that
//! every kept file equals the original (`ntfscat`), the page and hibernation files and the
//! excluded directory read as zeros with their records intact, and `ntfsfix -n` is clean; the
//! bytes dropped equal the volume's own figures (`ntfsinfo`); a dirty volume is read in full;
//! fuzzed boot sector, MFT records and `$Bitmap` never panic and never drop more; the catalog
//! lists and serves what `ntfsls`/`ntfscat` do.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use http::StatusCode;
use serde_json::{json, Value};
use source_mover::backup::backup;
use source_mover::ranges::Ranges;
use source_mover::source::{BlockSource, FileSource};
use tests::images::{extract, noise, run, Table};
use tests::mover::{client, opts, restore_to};
use tests::ntfs::{
    build_ntfs, ntfscat, ntfscp, ntfsfix_clean, ntfsinfo_data, ntfsinfo_free, NtfsImage,
};
use tests::{Client, TestServer, BACKUP_A};

/// The exclude the tests use: the temp directory, in another case than stored.
const EXCLUDE: &str = "/users/*/appdata/local/TEMP";

const MIB: u64 = 1 << 20;

fn excludes() -> Vec<String> {
    vec![EXCLUDE.to_string()]
}

/// What the volume's own tools say should be dropped: (free, pagefile, excluded) bytes.
fn expected_drops(img: &NtfsImage, part: &Path) -> (u64, u64, u64) {
    let (cluster, free) = ntfsinfo_free(part);
    assert_eq!(cluster, img.cluster);
    let pagefile = img
        .pagefiles
        .iter()
        .map(|(p, _)| ntfsinfo_data(part, p).0)
        .sum();
    let excluded = img
        .files
        .keys()
        .filter(|p| p.starts_with(&img.excluded_dir))
        .map(|p| ntfsinfo_data(part, p).0)
        .sum();
    (free * cluster, pagefile, excluded)
}

/// The restored disk equals the source outside what the plan dropped and is zero inside it
/// (`exact`; after an incremental, a dropped block may also hold the source's bytes);
/// the restored volume is clean; every kept file equals the original, the page files and the
/// excluded files read as zeros at their sizes.
fn check_restored(
    img: &NtfsImage,
    files: &BTreeMap<String, Vec<u8>>,
    restored: &Path,
    dir: &Path,
    exact: bool,
) {
    let disk = FileSource::open(&img.path).expect("open");
    let plan = source_mover::plan::plan(&disk, &excludes()).expect("plan");
    let src = std::fs::read(&img.path).expect("source");
    let got = std::fs::read(restored).expect("restored");
    let mut want = src.clone();
    for (reason, r) in &plan.dropped {
        if *reason != "hole" {
            for &(a, b) in r.as_slice() {
                want[a as usize..b as usize].fill(0);
            }
        }
    }
    // After an incremental, a block dropped today but unchanged since the base comes from the
    // base: zeros or its old bytes.
    for (i, ((w, g), s)) in want
        .chunks(4096)
        .zip(got.chunks(4096))
        .zip(src.chunks(4096))
        .enumerate()
    {
        assert!(
            w == g || (!exact && g == s),
            "restored disk differs in its 4 KiB block {i}"
        );
    }
    let part = dir.join("restored.ntfs");
    extract(restored, img.part, &part);
    ntfsfix_clean(&part);
    for (p, data) in files {
        let back = ntfscat(&part, p);
        if p.starts_with(&img.excluded_dir) {
            assert_eq!(back.len(), data.len(), "{p}");
            assert!(back.iter().all(|&b| b == 0), "excluded {p} is not zeros");
        } else {
            assert!(back == *data, "{p} differs from the original");
        }
    }
    for (p, size) in &img.pagefiles {
        let back = ntfscat(&part, p);
        assert_eq!(back.len() as u64, *size, "{p}: its record stays");
        assert!(back.iter().all(|&b| b == 0), "{p} is not zeros");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_and_cbt_incremental_restore_mbr_4k_and_gpt_64k() {
    let srv = TestServer::start().await;
    let c = client(&srv.url());
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, table, cluster) in [("mbr4k", Table::Dos, 4096), ("gpt64k", Table::Gpt, 65536)] {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).expect("dir");
        let img = build_ntfs(&d, name, table, cluster, 72);
        let part = d.join("source.ntfs");
        extract(&img.path, img.part, &part);
        let (free, pagefile, excluded) = expected_drops(&img, &part);

        // The plan: what it drops is what ntfsinfo says, to the byte.
        let disk = FileSource::open(&img.path).expect("open");
        let plan = source_mover::plan::plan(&disk, &excludes()).expect("plan");
        let line = plan.found.join("; ");
        assert!(line.contains("NTFS") && line.contains("pagefile"), "{line}");
        assert_eq!(plan.dropped["free"].total(), free, "{name}: free: {line}");
        assert_eq!(plan.dropped["pagefile"].total(), pagefile, "{name}: {line}");
        assert_eq!(plan.dropped["excluded"].total(), excluded, "{name}: {line}");
        assert!(pagefile >= 10 << 20 && excluded >= 3 << 20, "{line}");
        for d in ["free", "pagefile", "excluded"] {
            let r = &plan.dropped[d];
            assert!(
                r.subtract(&Ranges::single(img.part.0, img.part.0 + img.part.1))
                    .is_empty(),
                "{d} inside the partition"
            );
        }

        // Full backup, with the exclude.
        let mut o = opts(name, &img.path, &d.join("state"));
        o.excludes = vec![("disk0".into(), EXCLUDE.into())];
        let full = backup(&c, &o).await.expect("full backup");
        assert_eq!(full.skipped_bytes["free"], free, "{:?}", full.skipped_bytes);
        assert_eq!(full.skipped_bytes["pagefile"], pagefile);
        assert_eq!(full.skipped_bytes["excluded"], excluded);
        assert_eq!(full.read_bytes, plan.read.total(), "{name}");
        assert!(
            full.read_bytes + free + pagefile + excluded <= disk.size(),
            "{name}: {full:?}"
        );
        let out = d.join("restored-1.raw");
        restore_to(&c, &full.backup_id, &out).await;
        check_restored(&img, &img.files, &out, &d, true);

        // Day two: one file rewritten, one added; the change list covers what changed.
        let before = std::fs::read(&img.path).expect("day one");
        let mut files = img.files.clone();
        let scratch = d.join("scratch");
        let changed_file = "/Users/Zoë/Documents/note-3.txt".to_string();
        let added = "/Users/Zoë/Documents/day-two.bin".to_string();
        for (p, data) in [
            (&changed_file, b"rewritten on day two\r\n".repeat(300)),
            (&added, noise(700_000, 77)),
        ] {
            ntfscp(&part, p, &data, &scratch);
            files.insert(p.clone(), data);
        }
        let new_part = std::fs::read(&part).expect("day two partition");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&img.path)
            .expect("disk");
        std::os::unix::fs::FileExt::write_all_at(&f, &new_part, img.part.0).expect("write");
        drop(f);
        let after = std::fs::read(&img.path).expect("day two");
        let mut changed = Vec::new();
        for (i, (a, b)) in before.chunks(4096).zip(after.chunks(4096)).enumerate() {
            if a != b {
                changed.push(json!([i * 4096, a.len()]));
            }
        }
        assert!(!changed.is_empty());
        let list = d.join("cbt.json");
        std::fs::write(
            &list,
            json!({"base": full.backup_id, "changed": changed}).to_string(),
        )
        .expect("cbt list");
        let mut o = opts(name, &img.path, &d.join("state"));
        o.excludes = vec![("disk0".into(), EXCLUDE.into())];
        o.cbt = [("disk0".to_string(), source_mover::cbt::json_file(&list))]
            .into_iter()
            .collect();
        let inc = backup(&c, &o).await.expect("incremental");
        assert_eq!(inc.base.as_deref(), Some(full.backup_id.as_str()));
        assert!(inc.disks[0].cbt);
        // Only the 1 MiB blocks the change list touches are read.
        let touched: std::collections::BTreeSet<u64> = changed
            .iter()
            .filter_map(|c| c[0].as_u64())
            .map(|at| at >> 20)
            .collect();
        assert!(
            inc.read_bytes <= touched.len() as u64 * MIB && inc.read_bytes < full.read_bytes,
            "{name}: the incremental reads only what changed: {} in {} blocks, full {}",
            inc.read_bytes,
            touched.len(),
            full.read_bytes
        );
        let out = d.join("restored-2.raw");
        restore_to(&c, &inc.backup_id, &out).await;
        check_restored(&img, &files, &out, &d, false);
    }
    srv.stop().await;
}

#[test]
fn a_dirty_volume_is_read_in_full() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = build_ntfs(dir.path(), "dirty", Table::Dos, 4096, 40);
    let disk = FileSource::open(&img.path).expect("open");
    let clean = source_mover::plan::plan(&disk, &excludes()).expect("plan");
    assert!(clean.dropped["free"].total() > 0);
    // ntfsfix (without -n) sets the dirty flag so that Windows runs chkdsk.
    let part = dir.path().join("dirty.ntfs");
    extract(&img.path, img.part, &part);
    run(Command::new("ntfsfix").arg(&part));
    let info = run(Command::new("ntfsinfo").args(["-f", "-m"]).arg(&part));
    assert!(info.contains("Volume Flags: 0x0001"), "{info}");
    tests::ntfs::splice(&part, &img.path, img.part.0);
    let disk = FileSource::open(&img.path).expect("open");
    let plan = source_mover::plan::plan(&disk, &excludes()).expect("plan");
    let line = plan.found.join("; ");
    assert!(
        line.contains("NTFS, read in full") && line.contains("dirty"),
        "{line}"
    );
    for reason in ["free", "pagefile", "excluded"] {
        assert!(plan.dropped[reason].is_empty(), "{reason}: {line}");
    }
    // Every byte of the partition is read, but for the image file's own holes (zeros).
    let whole = Ranges::single(img.part.0, img.part.0 + img.part.1);
    assert_eq!(
        plan.read.union(&plan.dropped["hole"]).intersect(&whole),
        whole,
        "the whole partition is read"
    );
    assert!(plan.read.intersect(&whole).total() > 20 << 20);
    assert!(plan.files.is_empty(), "no index of an untrusted volume");
}

/// A disk in memory, for fuzzing without a file per case.
#[derive(Debug)]
struct Mem(Vec<u8>);

impl BlockSource for Mem {
    fn describe(&self) -> String {
        "memory".into()
    }
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> source_mover::Result<()> {
        let at = offset as usize;
        let src = self.0.get(at..at + buf.len()).ok_or_else(|| {
            source_mover::Error::Invalid(format!("read past the end at {offset}"))
        })?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn allocated(&self) -> source_mover::Result<Ranges> {
        Ok(Ranges::single(0, self.size()))
    }
}

fn dropped(p: &source_mover::plan::DiskPlan) -> Ranges {
    ["free", "pagefile", "excluded"]
        .iter()
        .fold(Ranges::new(), |acc, r| acc.union(&p.dropped[*r]))
}

#[test]
fn fuzzed_boot_sector_mft_records_and_bitmap_never_panic_nor_drop_more() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = build_ntfs(dir.path(), "fuzz", Table::Gpt, 4096, 40);
    let pristine = std::fs::read(&img.path).expect("image");
    let base = source_mover::plan::plan(&Mem(pristine.clone()), &excludes()).expect("plan");
    let allowed = dropped(&base);
    assert!(allowed.total() > 10 << 20);
    // Where the metadata is: the boot sector, the first 64 MFT records, $Bitmap's clusters.
    let disk = Mem(pristine.clone());
    let v = source_mover::guest::ntfs::volume::Volume::open(&disk, img.part.0, img.part.1)
        .ok()
        .flatten()
        .expect("the volume opens");
    let mut targets: Vec<(String, u64, u64)> = vec![("boot sector".into(), img.part.0, 512)];
    let rs = v.boot.record;
    let mft = v.map(&v.mft_runs, 0).expect("record 0");
    targets.push(("MFT records".into(), img.part.0 + mft, 64 * rs));
    let source_mover::guest::ntfs::volume::Slot::Record(bm) = v.record(6).expect("record 6") else {
        panic!("$Bitmap's record")
    };
    let runs = match &bm.unnamed(0x80).expect("$DATA").body {
        source_mover::guest::ntfs::volume::Body::NonResident { runs, .. } => runs.clone(),
        other => panic!("{other:?}"),
    };
    let at = v.map(&runs, 0).expect("$Bitmap's first cluster");
    targets.push((
        "$Bitmap".into(),
        img.part.0 + at,
        v.boot.clusters.div_ceil(8),
    ));
    let mut cases = 0;
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for (what, start, len) in &targets {
        for _ in 0..60 {
            let mut bytes = pristine.clone();
            // One to four bytes changed, anywhere in the structure.
            for _ in 0..1 + next() % 4 {
                let i = (start + next() % len) as usize;
                bytes[i] ^= (next() % 255 + 1) as u8;
            }
            let p = source_mover::plan::plan(&Mem(bytes), &excludes()).expect("plan");
            let more = dropped(&p).subtract(&allowed);
            assert!(
                more.is_empty(),
                "{what}: fuzzed metadata dropped {} bytes more: {:?}",
                more.total(),
                p.found
            );
            cases += 1;
        }
    }
    assert_eq!(cases, 180);
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

/// `ntfsls -l` of a directory: name → size (directories 0), without `.` and `..`.
fn ntfsls(part: &Path, dir: &str) -> BTreeMap<String, u64> {
    let out = run(Command::new("ntfsls").args(["-l", "-p", dir]).arg(part));
    out.lines()
        .filter_map(|l| {
            // "   size Mon DD HH:MM YYYY name", the name possibly with spaces.
            let mut rest = l.trim_start();
            let mut fields = Vec::new();
            for _ in 0..5 {
                let end = rest.find(char::is_whitespace)?;
                fields.push(&rest[..end]);
                rest = rest[end..].trim_start();
            }
            let size = fields[0].parse().ok()?;
            (rest != "." && rest != "..").then(|| (rest.to_string(), size))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_lists_and_serves_what_ntfsls_and_ntfscat_do() {
    let srv = TestServer::start().await;
    let mc = client(&srv.url());
    let c = Client::h2(&srv.url(), Some(BACKUP_A));
    let dir = tempfile::tempdir().expect("tempdir");
    let img = build_ntfs(dir.path(), "cat", Table::Dos, 4096, 48);
    let part = dir.path().join("source.ntfs");
    extract(&img.path, img.part, &part);
    let mut o = opts("win-vm", &img.path, &dir.path().join("state"));
    o.excludes = vec![("disk0".into(), EXCLUDE.into())];
    let r = backup(&mc, &o).await.expect("backup");
    assert!(
        r.files_indexed as usize >= img.files.len() + img.dirs.len(),
        "{r:?}"
    );
    let m = c.get(&format!("/v1/backups/{}", r.backup_id)).await.json();
    assert_eq!(m["file_indexes"][0]["fs"], "NTFS", "{m}");
    let mut dirs = vec!["/".to_string()];
    let mut served = 0;
    let mut kept = Vec::new();
    while let Some(p) = dirs.pop() {
        let l = list(&c, &r.backup_id, &p).await;
        let entries = l["entries"].as_array().expect("entries");
        let got: BTreeMap<String, u64> = entries
            .iter()
            .map(|e| {
                let size = if e["kind"] == "dir" {
                    0
                } else {
                    e["size"].as_u64().expect("size")
                };
                (e["name"].as_str().expect("name").to_string(), size)
            })
            .collect();
        assert_eq!(got, ntfsls(&part, &p), "listing of {p}");
        for e in entries {
            let path = e["path"].as_str().expect("path").to_string();
            if e["kind"] == "dir" {
                dirs.push(path);
                continue;
            }
            let resp = c
                .get(&format!(
                    "/v1/backups/{}/files/content?path={}",
                    r.backup_id,
                    schema::query::encode(&path)
                ))
                .await;
            if path.starts_with(&img.excluded_dir) {
                assert_eq!(resp.status, StatusCode::CONFLICT, "{path}");
                continue;
            }
            assert_eq!(resp.status, StatusCode::OK, "{path}: {:?}", resp.body);
            if img.pagefiles.iter().any(|(pf, _)| *pf == path) {
                assert!(resp.body.iter().all(|&b| b == 0), "{path} reads zeros");
            } else {
                assert!(
                    resp.body[..] == ntfscat(&part, &path)[..],
                    "{path} differs from ntfscat"
                );
                kept.push(path.clone());
            }
            served += 1;
        }
    }
    assert!(served >= img.files.len() - 2, "{served} files served");
    // Paths match case-insensitively, as on Windows: every kept file in another case serves
    // the bytes ntfscat gives; a listing in another case answers the stored names and path.
    let mut other_case = 0;
    for path in &kept {
        let swapped = swap_case(path);
        if swapped == *path {
            continue;
        }
        let resp = c
            .get(&format!(
                "/v1/backups/{}/files/content?path={}",
                r.backup_id,
                schema::query::encode(&swapped)
            ))
            .await;
        assert_eq!(resp.status, StatusCode::OK, "{swapped}: {:?}", resp.body);
        assert!(
            resp.body[..] == ntfscat(&part, path)[..],
            "{swapped} differs from ntfscat of {path}"
        );
        other_case += 1;
    }
    assert!(other_case >= 3, "{other_case} files read in another case");
    let deep = kept
        .iter()
        .max_by_key(|p| p.matches('/').count())
        .expect("a kept file");
    let parent = &deep[..deep.rfind('/').expect("a parent")];
    let (a, b) = (
        list(&c, &r.backup_id, parent).await,
        list(&c, &r.backup_id, &swap_case(parent)).await,
    );
    assert_eq!(a["entries"], b["entries"], "{parent} in another case");
    assert_eq!(b["path"], parent, "the stored path is answered");
    let none = c
        .get(&format!(
            "/v1/backups/{}/files/content?path={}",
            r.backup_id,
            schema::query::encode(&format!("{}-nope", swap_case(deep)))
        ))
        .await;
    assert_eq!(none.status, StatusCode::NOT_FOUND);
    // Search finds names in any script, in any case (readme.TXT too), as Windows does.
    let s = c
        .get("/v1/search?name=*.txt&source=win-vm&limit=1000")
        .await
        .json();
    let mut hits: Vec<&str> = s["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter_map(|h| h["path"].as_str())
        .collect();
    hits.sort_unstable();
    let mut want: Vec<&str> = img
        .files
        .keys()
        .filter(|p| p.to_lowercase().ends_with(".txt"))
        .map(String::as_str)
        .collect();
    want.sort_unstable();
    assert_eq!(hits, want, "{s}");
    // The same search in another case finds the same files (names as stored), also under a
    // directory given in another case; one name without wildcards in another case finds it.
    let hits_of = |s: &Value| {
        let mut h: Vec<String> = s["results"]
            .as_array()
            .expect("results")
            .iter()
            .filter_map(|h| h["path"].as_str().map(str::to_owned))
            .collect();
        h.sort_unstable();
        h
    };
    let s2 = c
        .get("/v1/search?name=*.TXT&source=win-vm&limit=1000")
        .await
        .json();
    let want: Vec<String> = want.into_iter().map(str::to_owned).collect();
    assert!(want.iter().any(|p| p.ends_with(".TXT")), "{want:?}");
    assert_eq!(hits_of(&s2), want, "{s2}");
    let name = &deep[deep.rfind('/').expect("a name") + 1..];
    let s3 = c
        .get(&format!(
            "/v1/search?name={}&path={}&source=win-vm",
            schema::query::encode(&swap_case(name)),
            schema::query::encode(&swap_case(parent))
        ))
        .await
        .json();
    assert_eq!(hits_of(&s3), vec![deep.clone()], "{s3}");
    srv.stop().await;
}

/// `s` with the case of every letter flipped (where it maps to one character).
fn swap_case(s: &str) -> String {
    s.chars()
        .map(|c| {
            let v: Vec<char> = if c.is_uppercase() {
                c.to_lowercase().collect()
            } else {
                c.to_uppercase().collect()
            };
            if v.len() == 1 {
                v[0]
            } else {
                c
            }
        })
        .collect()
}
