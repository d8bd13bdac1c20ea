//! Disk images for tests, made with the real tools: `sfdisk`, `mke2fs -d`, `mkswap`, and checks
//! made with others: `dumpe2fs` (free blocks), `debugfs -R rdump` (files), `e2fsck -fn`.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const MIB: u64 = 1 << 20;

/// Partition table kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// MBR.
    Dos,
    /// GPT.
    Gpt,
}

/// A built image.
#[derive(Debug, Clone)]
pub struct Image {
    /// The disk image.
    pub path: PathBuf,
    /// The tree the ext4 file system was made from.
    pub tree: PathBuf,
    /// The ext4 partition: offset and length.
    pub fs: (u64, u64),
    /// The swap partition: offset and length.
    pub swap: (u64, u64),
}

/// Runs a command, panicking with its stderr on failure.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deterministic pseudo-random bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A file tree: small text files, a large random file, a sparse file, a `cache/` directory.
pub fn make_tree(dir: &Path) -> PathBuf {
    let t = dir.join("tree");
    for sub in ["etc", "home/user/docs", "var/cache/app", "srv"] {
        std::fs::create_dir_all(t.join(sub)).unwrap();
    }
    std::fs::write(t.join("etc/hostname"), "test-vm\n").unwrap();
    for i in 0..150 {
        let text = format!("document {i}\n").repeat(50 + i * 7);
        std::fs::write(t.join(format!("home/user/docs/note-{i}.txt")), text).unwrap();
    }
    std::fs::write(t.join("srv/large.bin"), noise(6 * MIB as usize, 1)).unwrap();
    let f = std::fs::File::create(t.join("srv/sparse.img")).unwrap();
    f.set_len(8 * MIB).unwrap();
    f.write_all_at(&noise(100_000, 2), 3 * MIB).unwrap();
    for i in 0..3 {
        std::fs::write(
            t.join(format!("var/cache/app/blob-{i}.bin")),
            noise(MIB as usize, 10 + i),
        )
        .unwrap();
    }
    t
}

/// The layout of a test disk.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// Partition table.
    pub table: Table,
    /// ext4 block size.
    pub fs_block: u32,
    /// ext4 partition size.
    pub fs_mib: u64,
    /// Swap partition size.
    pub swap_mib: u64,
    /// Unpartitioned space at the end.
    pub tail_mib: u64,
    /// File system type for `mke2fs -t` (ext2, ext3 or ext4).
    pub fs_type: &'static str,
    /// MBR only: put both partitions inside an extended partition (logical partitions 5, 6).
    pub logical: bool,
}

impl Layout {
    /// ext4 on MBR with the given block size and sizes.
    pub fn ext4(table: Table, fs_block: u32, fs_mib: u64, swap_mib: u64, tail_mib: u64) -> Layout {
        Layout {
            table,
            fs_block,
            fs_mib,
            swap_mib,
            tail_mib,
            fs_type: "ext4",
            logical: false,
        }
    }
}

/// Builds a disk: 1 MiB gap, ext4 (`fs_mib`, `fs_block` bytes per block) from `tree`, swap
/// (`swap_mib`) with 4 MiB of dirty pages, then `tail_mib` unpartitioned.
pub fn build(dir: &Path, name: &str, l: Layout, tree: &Path) -> Image {
    let Layout {
        table,
        fs_block,
        fs_mib,
        swap_mib,
        tail_mib,
        fs_type,
        logical,
    } = l;

    let fs_img = dir.join(format!("{name}.ext4"));
    std::fs::File::create(&fs_img)
        .unwrap()
        .set_len(fs_mib * MIB)
        .unwrap();
    run(Command::new("mke2fs")
        .args([
            "-q",
            "-F",
            "-t",
            fs_type,
            "-b",
            &fs_block.to_string(),
            "-E",
            "root_owner=0:0",
            "-d",
        ])
        .arg(tree)
        .arg(&fs_img));
    assemble(dir, name, table, logical, &fs_img, swap_mib, tail_mib, tree)
}

/// Builds a disk around an existing file-system image: 1 MiB gap, `fs_img` in a Linux
/// partition of its size, swap (`swap_mib`) with 4 MiB of dirty pages, then `tail_mib`
/// unpartitioned; `logical` (MBR only) puts both inside an extended partition. `tree` is
/// recorded as the image's [`Image::tree`].
#[allow(clippy::too_many_arguments)]
pub fn assemble(
    dir: &Path,
    name: &str,
    table: Table,
    logical: bool,
    fs_img: &Path,
    swap_mib: u64,
    tail_mib: u64,
    tree: &Path,
) -> Image {
    let fs_mib = std::fs::metadata(fs_img).unwrap().len().div_ceil(MIB);
    let swap_img = dir.join(format!("{name}.swap"));
    std::fs::File::create(&swap_img)
        .unwrap()
        .set_len(swap_mib * MIB)
        .unwrap();
    run(Command::new("mkswap").arg("-q").arg(&swap_img));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&swap_img)
        .unwrap()
        .write_all_at(&noise(4 * MIB as usize, 3), MIB)
        .unwrap();
    let path = dir.join(format!("{name}.raw"));
    let size = (4 + fs_mib + swap_mib + tail_mib) * MIB;
    std::fs::File::create(&path).unwrap().set_len(size).unwrap();
    let label = if table == Table::Dos { "dos" } else { "gpt" };
    let script = if logical {
        // Named nodes: sfdisk only makes logical partitions when told their numbers.
        let node = path.display();
        format!(
            "label: dos\n{node}1 : start=2048, size={}, type=5\n{node}5 : size={}, type=L\n{node}6 : size={}, type=S\n",
            (fs_mib + swap_mib + 3) * 2048,
            fs_mib * 2048,
            swap_mib * 2048
        )
    } else {
        format!(
            "label: {label}\nstart=2048, size={}, type=L\nstart={}, size={}, type=S\n",
            fs_mib * 2048,
            2048 + fs_mib * 2048,
            swap_mib * 2048
        )
    };
    // Where sfdisk put the partitions (logical ones sit behind their extended boot records).
    let parts = sfdisk(&path, &script);
    let find = |types: &[&str]| {
        let p = parts
            .iter()
            .find(|p| types.contains(&p["type"].as_str().unwrap_or("")))
            .unwrap();
        (
            p["start"].as_u64().unwrap() * 512,
            p["size"].as_u64().unwrap() * 512,
        )
    };
    let fs = find(&["83", "0FC63DAF-8483-4772-8E79-3D69D8477DE4"]);
    let swap = find(&["82", "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"]);
    let disk = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    for (img, off) in [(fs_img, fs.0), (swap_img.as_path(), swap.0)] {
        let data = std::fs::read(img).unwrap();
        for (i, c) in data.chunks(64 << 10).enumerate() {
            if c.iter().any(|&b| b != 0) {
                disk.write_all_at(c, off + (i as u64) * (64 << 10)).unwrap();
            }
        }
    }
    Image {
        path,
        tree: tree.to_owned(),
        fs,
        swap,
    }
}

/// XORs the byte at `at` of the image `img` with `mask` (forging damage in place).
pub fn flip_bits(img: &Path, at: u64, mask: u8) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= mask;
    f.write_all_at(&b, at).unwrap();
}

/// Writes the partition table `script` onto the image at `path` with `sfdisk`, and returns the
/// partitions as `sfdisk -J` lists them (start and size in 512-byte sectors, type).
pub fn sfdisk(path: &Path, script: &str) -> Vec<serde_json::Value> {
    let mut sf = Command::new("sfdisk")
        .arg("-q")
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    sf.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(sf.wait().unwrap().success(), "sfdisk {script}");
    let table: serde_json::Value =
        serde_json::from_str(&run(Command::new("sfdisk").arg("-J").arg(path))).unwrap();
    table["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .clone()
}

/// Copies a partition out of a disk image into its own file.
pub fn extract(disk: &Path, (off, len): (u64, u64), out: &Path) {
    let f = std::fs::File::open(disk).unwrap();
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, off).unwrap();
    std::fs::write(out, buf).unwrap();
}

/// Free blocks of an ext4 image as byte ranges, as `dumpe2fs` reports them.
pub fn dumpe2fs_free(fs_img: &Path) -> Vec<(u64, u64)> {
    let out = run(Command::new("dumpe2fs").arg(fs_img).stderr(Stdio::null()));
    let bs: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("Block size:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut v = Vec::new();
    for l in out.lines() {
        let Some(list) = l.trim().strip_prefix("Free blocks: ") else {
            continue;
        };
        for part in list.split(", ").filter(|p| !p.is_empty()) {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let (a, b): (u64, u64) = (a.trim().parse().unwrap(), b.trim().parse().unwrap());
            v.push((a * bs, (b + 1) * bs));
        }
    }
    v
}

/// `e2fsck -fn` on an ext4 image; panics with its output unless clean.
pub fn fsck_clean(fs_img: &Path) {
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(fs_img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "e2fsck -fn {}: {}{}",
        fs_img.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every regular file under `dir` with its content hash.
pub fn tree_files(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.insert(
                    e.path().strip_prefix(dir).unwrap().to_path_buf(),
                    blake3::hash(&std::fs::read(e.path()).unwrap())
                        .to_hex()
                        .to_string(),
                );
            }
        }
    }
    out
}

/// The files of an ext4 image, extracted with `debugfs -R "rdump / OUT"`.
pub fn rdump(fs_img: &Path, out: &Path) -> BTreeMap<PathBuf, String> {
    std::fs::create_dir_all(out).unwrap();
    run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("rdump / {}", out.display()))
        .arg(fs_img)
        .stderr(Stdio::null()));
    let mut files = tree_files(out);
    files.retain(|p, _| !p.starts_with("lost+found"));
    files
}

/// The parts of a crash-consistent ext4 snapshot, made as `../shared/recipes/crash-consistent-ext4.md`
/// shows: yesterday's file system with today's new files' data blocks already at home (written
/// in data=ordered mode before their metadata), and today's metadata blocks, still to be
/// written as journal transactions with [`debugfs_script`].
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Yesterday's file system with the new files' data at home (the recipe's `c.img` before
    /// the journal is written).
    pub fs_img: PathBuf,
    /// Today's file system, fully written (the recipe's `b.img`).
    pub today: PathBuf,
    /// Host copies of the new files, at their guest paths under this directory.
    pub tree: PathBuf,
    /// The new files' guest paths.
    pub files: Vec<String>,
    /// Data blocks of the new files.
    pub data_blocks: Vec<u64>,
    /// The other blocks that differ between yesterday and today, block 0 excepted (bitmaps,
    /// group descriptors, inode tables, directories), in block order.
    pub meta_blocks: Vec<u64>,
    /// Today's contents of `meta_blocks`, one block after another (for `jw -b`).
    pub meta_file: PathBuf,
}

impl Snapshot {
    /// `meta_blocks` as `jw -b` takes them.
    pub fn meta_list(&self) -> String {
        let list: Vec<String> = self.meta_blocks.iter().map(u64::to_string).collect();
        list.join(",")
    }
}

/// Makes the parts of a crash-consistent snapshot in `dir`: a 96 MiB file system with 4 KiB
/// blocks (`mkfs`: the `mke2fs` arguments besides those, `-t ext4` and the like) holding the
/// directories `yesterday`; today, the
/// directories `new_dirs` and the files `new_files` (guest path, size; random content) are
/// written with `debugfs -w`.
pub fn crash_snapshot(
    dir: &Path,
    mkfs: &[&str],
    yesterday: &[&str],
    new_dirs: &[&str],
    new_files: &[(&str, usize)],
) -> Snapshot {
    const BS: usize = 4096;
    std::fs::create_dir_all(dir).unwrap();
    let a = dir.join("yesterday.ext4");
    std::fs::File::create(&a)
        .unwrap()
        .set_len(96 * MIB)
        .unwrap();
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-b", "4096"])
        .args(mkfs)
        .arg(&a));
    let mkdirs = |img: &Path, dirs: &[&str]| {
        if !dirs.is_empty() {
            let script: String = dirs.iter().map(|d| format!("mkdir {d}\n")).collect();
            debugfs_script(img, &script);
        }
    };
    mkdirs(&a, yesterday);
    let b = dir.join("today.ext4");
    std::fs::copy(&a, &b).unwrap();
    mkdirs(&b, new_dirs);
    let tree = dir.join("new-files");
    let mut script = String::new();
    for (i, (path, size)) in new_files.iter().enumerate() {
        let host = tree.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(host.parent().unwrap()).unwrap();
        std::fs::write(&host, noise(*size, 500 + i as u64)).unwrap();
        script.push_str(&format!("write {} {path}\n", host.display()));
    }
    debugfs_script(&b, &script);
    let mut data_blocks = Vec::new();
    for (path, _) in new_files {
        let out = run(Command::new("debugfs")
            .arg("-R")
            .arg(format!("blocks {path}"))
            .arg(&b)
            .stderr(Stdio::null()));
        data_blocks.extend(out.split_whitespace().map(|w| w.parse::<u64>().unwrap()));
    }
    data_blocks.sort_unstable();
    let (old, new) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let mut at_home = old.clone();
    let (mut meta_blocks, mut meta) = (Vec::new(), Vec::new());
    for (i, (x, y)) in old.chunks(BS).zip(new.chunks(BS)).enumerate() {
        if x == y {
            continue;
        }
        if data_blocks.binary_search(&(i as u64)).is_ok() {
            at_home[i * BS..(i + 1) * BS].copy_from_slice(y);
        } else if i != 0 {
            meta_blocks.push(i as u64);
            meta.extend_from_slice(y);
        }
    }
    let fs_img = dir.join("snapshot.ext4");
    std::fs::write(&fs_img, at_home).unwrap();
    let meta_file = dir.join("meta.bin");
    std::fs::write(&meta_file, meta).unwrap();
    Snapshot {
        fs_img,
        today: b,
        tree,
        files: new_files.iter().map(|(p, _)| (*p).to_owned()).collect(),
        data_blocks,
        meta_blocks,
        meta_file,
    }
}

/// Runs a `debugfs -w -f -` script on `img` (file writes, `mkdir`, the journal commands `jo`,
/// `jw`, `jc`), panicking on any error it prints; returns its output.
pub fn debugfs_script(img: &Path, script: &str) -> String {
    let mut child = Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg("-")
        .arg(img)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !text.contains("while ") && !text.contains("not open"),
        "debugfs -w {}: {script}\n{text}",
        img.display()
    );
    text
}

/// The file-system block that holds block `n` of the journal (inode 8).
pub fn journal_block(img: &Path, n: u64) -> u64 {
    run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("bmap <8> {n}"))
        .arg(img)
        .stderr(Stdio::null()))
    .trim()
    .parse()
    .unwrap()
}

/// `e2fsck -fy`: recovers the journal and repairs; panics unless it ends with a consistent file
/// system (exit status 0 or 1). Returns its output.
pub fn fsck_repair(fs_img: &Path) -> String {
    let out = Command::new("e2fsck")
        .arg("-fy")
        .arg(fs_img)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "e2fsck -fy {}: {text}",
        fs_img.display()
    );
    text
}

/// One file of an ext4 image, as `debugfs -R "dump PATH OUT"` reads it; `None` if absent.
pub fn dump(fs_img: &Path, path: &str, out: &Path) -> Option<Vec<u8>> {
    let _ = std::fs::remove_file(out);
    let o = Command::new("debugfs")
        .arg("-R")
        .arg(format!("dump {path} {}", out.display()))
        .arg(fs_img)
        .output()
        .unwrap();
    assert!(o.status.success(), "debugfs dump {path}");
    if String::from_utf8_lossy(&o.stderr).contains("File not found") {
        return None;
    }
    std::fs::read(out).ok()
}
