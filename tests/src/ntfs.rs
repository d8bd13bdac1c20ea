//! NTFS disk images for tests, made with the real tools and no mount: `mkntfs -F -Q` on a
//! partition built as a file, files copied in with `ntfscp`, directories made (and files
//! deleted or written fragmented) by a small libntfs-3g helper (`tests/ntfs/helper.c`, built
//! here with gcc into the target directory), the partition then spliced into an MBR or GPT
//! disk laid out by `sfdisk`. Checks use `ntfscat`, `ntfsls`, `ntfsinfo`, `ntfsfix -n`.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::images::{noise, run, sfdisk, Table};

const MIB: u64 = 1 << 20;

/// GPT type GUID of Microsoft basic data, as `sfdisk -J` prints it.
pub const GPT_BASIC_DATA: &str = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7";

/// The helper binary, compiled once per test run next to the test executable.
pub fn helper() -> &'static Path {
    static HELPER: OnceLock<PathBuf> = OnceLock::new();
    HELPER.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test executable");
        let dir = exe.parent().expect("its directory").to_owned();
        let out = dir.join("ntfs-helper");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("ntfs/helper.c");
        let tmp = dir.join(format!("ntfs-helper.{}", std::process::id()));
        run(Command::new("gcc")
            .args(["-O2", "-Wall", "-Werror", "-o"])
            .arg(&tmp)
            .arg(&src)
            .arg("-lntfs-3g"));
        std::fs::rename(&tmp, &out).expect("install the helper");
        out
    })
}

/// Runs the helper on `img`.
pub fn helper_run(img: &Path, args: &[&str]) {
    run(Command::new(helper()).arg(img).args(args));
}

/// Copies `data` into the NTFS image `img` as `path` with `ntfscp`.
pub fn ntfscp(img: &Path, path: &str, data: &[u8], scratch: &Path) {
    std::fs::write(scratch, data).expect("scratch file");
    run(Command::new("ntfscp")
        .arg("-q")
        .arg(img)
        .arg(scratch)
        .arg(path));
}

/// A file's bytes as `ntfscat` reads them from the NTFS image `img`.
pub fn ntfscat(img: &Path, path: &str) -> Vec<u8> {
    let out = Command::new("ntfscat")
        .arg(img)
        .arg(path)
        .output()
        .expect("ntfscat");
    assert!(
        out.status.success(),
        "ntfscat {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `ntfsfix -n` on `img`: panics unless it reports the volume processed successfully.
pub fn ntfsfix_clean(img: &Path) {
    let out = Command::new("ntfsfix")
        .arg("-n")
        .arg(img)
        .output()
        .expect("ntfsfix");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && text.contains("processed successfully"),
        "ntfsfix -n: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The figures `ntfsinfo -m` gives for `img`: (cluster size, free clusters).
pub fn ntfsinfo_free(img: &Path) -> (u64, u64) {
    let out = run(Command::new("ntfsinfo").arg("-m").arg(img));
    let num = |key: &str| -> u64 {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(key))
            .unwrap_or_else(|| panic!("ntfsinfo -m has no {key}: {out}"));
        line[line.find(':').expect("a colon") + 1..]
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{line}"))
    };
    (num("Cluster Size:"), num("Free Clusters:"))
}

/// The unnamed `$DATA` of `path` as `ntfsinfo -v -F` describes it: (allocated size in bytes,
/// fragments).
pub fn ntfsinfo_data(img: &Path, path: &str) -> (u64, u64) {
    let out = run(Command::new("ntfsinfo").args(["-v", "-F", path]).arg(img));
    let data = out
        .rfind("Dumping attribute $DATA")
        .map_or(out.as_str(), |i| &out[i..]);
    let alloc = data
        .lines()
        .find(|l| l.trim_start().starts_with("Allocated size:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no allocated size for {path}: {data}"));
    let frags = data
        .lines()
        .find_map(|l| l.split("fragments: ").nth(1))
        .and_then(|n| n.trim_end_matches(')').parse().ok())
        .unwrap_or(0);
    (alloc, frags)
}

/// What a test NTFS image holds.
#[derive(Debug, Clone)]
pub struct NtfsImage {
    /// The disk image.
    pub path: PathBuf,
    /// The NTFS partition: offset and length.
    pub part: (u64, u64),
    /// Cluster size.
    pub cluster: u64,
    /// Every regular file but the page files, by NTFS path, with its bytes.
    pub files: BTreeMap<String, Vec<u8>>,
    /// Directories made.
    pub dirs: Vec<String>,
    /// The page and hibernation files (dropped as `pagefile`): path and size.
    pub pagefiles: Vec<(String, u64)>,
    /// The directory tests exclude.
    pub excluded_dir: String,
    /// The fragmented files.
    pub fragmented: Vec<String>,
}

/// The directories of the test tree, in the order they are made.
pub const DIRS: [&str; 12] = [
    "/Windows",
    "/Windows/System32",
    "/Windows/System32/drivers",
    "/Windows/System32/drivers/etc",
    "/Users",
    "/Users/Zoë",
    "/Users/Zoë/Documents",
    "/Users/Zoë/AppData",
    "/Users/Zoë/AppData/Local",
    "/Users/Zoë/AppData/Local/Temp",
    "/Program Files",
    "/Program Files/Ωmega App",
];

/// Builds a Windows-like NTFS volume of `mib` MiB (`cluster` bytes per cluster) in a partition
/// of an MBR (type 0x07) or GPT (Microsoft basic data) disk: small resident files, text files,
/// two large files written interleaved (fragmented), names in several scripts, a 6 MiB
/// `pagefile.sys` and a 4 MiB `hiberfil.sys` of random bytes, a deleted 2 MiB file whose
/// stale clusters are free, and 3 MiB in `/Users/Zoë/AppData/Local/Temp` (the tests' exclude).
pub fn build_ntfs(dir: &Path, name: &str, table: Table, cluster: u64, mib: u64) -> NtfsImage {
    let part_img = dir.join(format!("{name}.ntfs"));
    let scratch = dir.join(format!("{name}.scratch"));
    std::fs::File::create(&part_img)
        .and_then(|f| f.set_len(mib * MIB))
        .expect("partition file");
    run(Command::new("mkntfs")
        .args(["-F", "-Q", "-q", "-c", &cluster.to_string(), "-L", name])
        .args(["-p", "2048", "-H", "16", "-S", "63"])
        .arg(&part_img));
    helper_run(&part_img, &[&["mkdir"], &DIRS[..]].concat());
    let mut files = BTreeMap::new();
    let mut put = |path: &str, data: Vec<u8>| {
        ntfscp(&part_img, path, &data, &scratch);
        files.insert(path.to_string(), data);
    };
    // Small files, resident in their MFT records.
    put(
        "/Windows/System32/drivers/etc/hosts",
        b"127.0.0.1 localhost\r\n::1 localhost\r\n".to_vec(),
    );
    for i in 0..12 {
        put(
            &format!("/Windows/System32/config-{i}.ini"),
            format!("[section{i}]\r\nkey={i}\r\n")
                .repeat(1 + i * 3)
                .into_bytes(),
        );
    }
    // Text files of a few KiB, and names in several scripts.
    for i in 0..20 {
        put(
            &format!("/Users/Zoë/Documents/note-{i}.txt"),
            format!("note {i}: the quick brown fox\r\n")
                .repeat(40 + i * 30)
                .into_bytes(),
        );
    }
    put(
        "/Users/Zoë/Documents/日本語.txt",
        "こんにちは\r\n".repeat(500).into_bytes(),
    );
    put("/Program Files/Ωmega App/Ωmega.dll", noise(300_000, 7));
    put(
        "/Program Files/Ωmega App/readme.TXT",
        b"read me\r\n".repeat(100),
    );
    // The page and hibernation files.
    let pagefiles = vec![
        ("/pagefile.sys".to_string(), 6 * MIB),
        ("/hiberfil.sys".to_string(), 4 * MIB),
    ];
    for (i, (p, n)) in pagefiles.iter().enumerate() {
        ntfscp(&part_img, p, &noise(*n as usize, 100 + i as u64), &scratch);
    }
    // The excluded directory.
    put(
        "/Users/Zoë/AppData/Local/Temp/cache-1.bin",
        noise(2 * MIB as usize, 20),
    );
    put(
        "/Users/Zoë/AppData/Local/Temp/cache-2.bin",
        noise(MIB as usize, 21),
    );
    // A deleted file: its clusters are free, its bytes still there.
    ntfscp(
        &part_img,
        "/Users/Zoë/deleted.bin",
        &noise(2 * MIB as usize, 30),
        &scratch,
    );
    helper_run(&part_img, &["rm", "/Users/Zoë/deleted.bin"]);
    // Two large files, each written 64 KiB at a time from its end back, in turn with a pad
    // file that is deleted afterwards: both fragmented, the pads' clusters free and stale.
    let (a, b) = (noise(3 * MIB as usize, 40), noise(5 * MIB as usize / 2, 41));
    let (sa, sb) = (dir.join(format!("{name}.a")), dir.join(format!("{name}.b")));
    let pad = dir.join(format!("{name}.pad"));
    std::fs::write(&sa, &a).expect("a");
    std::fs::write(&sb, &b).expect("b");
    std::fs::write(&pad, noise(MIB as usize, 42)).expect("pad");
    let fragmented = vec![
        "/Users/Zoë/Documents/video.mkv".to_string(),
        "/Program Files/Ωmega App/data.pak".to_string(),
    ];
    let piece = (64 << 10).max(cluster).to_string();
    for (i, (f, src)) in fragmented.iter().zip([&sa, &sb]).enumerate() {
        let pad_path = format!("/Users/pad-{i}.tmp");
        helper_run(
            &part_img,
            &[
                "interleave",
                &piece,
                f,
                &src.to_string_lossy(),
                &pad_path,
                &pad.to_string_lossy(),
            ],
        );
        helper_run(&part_img, &["rm", &pad_path]);
    }
    files.insert(fragmented[0].clone(), a);
    files.insert(fragmented[1].clone(), b);
    for p in [&scratch, &sa, &sb, &pad] {
        let _ = std::fs::remove_file(p);
    }
    for f in &fragmented {
        let (_, frags) = ntfsinfo_data(&part_img, f);
        assert!(frags > 1, "{f} is not fragmented ({frags} fragments)");
    }
    ntfsfix_clean(&part_img);

    // The disk: 1 MiB gap, the partition, 1 MiB tail.
    let path = dir.join(format!("{name}.raw"));
    let size = (mib + 2) * MIB;
    std::fs::File::create(&path)
        .and_then(|f| f.set_len(size))
        .expect("disk file");
    let (label, ty) = match table {
        Table::Dos => ("dos", "7"),
        Table::Gpt => ("gpt", GPT_BASIC_DATA),
    };
    let parts = sfdisk(
        &path,
        &format!(
            "label: {label}\nstart=2048, size={}, type={ty}\n",
            mib * 2048
        ),
    );
    let p = &parts[0];
    let part = (
        p["start"].as_u64().expect("start") * 512,
        p["size"].as_u64().expect("size") * 512,
    );
    splice(&part_img, &path, part.0);
    let _ = std::fs::remove_file(&part_img);
    NtfsImage {
        path,
        part,
        cluster,
        files,
        dirs: DIRS.iter().map(|d| d.to_string()).collect(),
        pagefiles,
        excluded_dir: "/Users/Zoë/AppData/Local/Temp".into(),
        fragmented,
    }
}

/// Writes the non-zero 64 KiB pieces of the file `from` into `to` at `at` (sparse stays sparse).
pub fn splice(from: &Path, to: &Path, at: u64) {
    let data = std::fs::read(from).expect("read the partition");
    let disk = std::fs::OpenOptions::new()
        .write(true)
        .open(to)
        .expect("open the disk");
    for (i, c) in data.chunks(64 << 10).enumerate() {
        if c.iter().any(|&b| b != 0) {
            disk.write_all_at(c, at + (i as u64) * (64 << 10))
                .expect("write the disk");
        }
    }
}
