//! The mover over NBD, against QEMU's own tools: a qcow2 VM disk (GPT, ext4, swap) served by
//! `qemu-nbd` over a Unix socket and over TCP, changes made with `qemu-io` and tracked by
//! persistent dirty bitmaps (`qemu-img bitmap`), a running block layer (`qemu-storage-daemon`
//! driven over QMP) written to while it is backed up, restores into qcow2 through `qemu-nbd`,
//! every result checked with `qemu-img compare`. And a hostile NBD server written here, whose
//! broken replies must end the backup with a clear error.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use source_mover::backup::{backup, BackupOptions, BackupReport};
use source_mover::client::RepoClient;
use source_mover::nbd::{Client, NbdUri, Timeouts};
use source_mover::ranges::Ranges;
use source_mover::restore::{resolve, restore};
use source_mover::source::{BlockSource, FileSource};
use tests::images::{build, make_tree, run, Layout, Table};
use tests::mover::{client, opts_for};
use tests::{free_port, TestServer};

const MIB: u64 = 1 << 20;

/// A QEMU process started here (`qemu-nbd`, `qemu-storage-daemon`), ended when dropped.
struct Qemu {
    child: Child,
    what: String,
}

impl Drop for Qemu {
    /// SIGTERM (QEMU flushes and closes its images), SIGKILL if it is still there after 10 s.
    fn drop(&mut self) {
        // The `kill` command: the workspace forbids `unsafe`.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..400 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Qemu {
    /// Ends it and waits, so its image lock is released.
    fn stop(self) {
        drop(self);
    }
}

/// Starts `qemu-nbd ARGS IMG` (persistent, up to 8 clients) and waits until `uri` completes an
/// NBD handshake.
fn qemu_nbd(args: &[&str], img: &Path, uri: &str) -> Qemu {
    let child = Command::new("qemu-nbd")
        .args(["-t", "-e", "8"])
        .args(args)
        .arg(img)
        .stdin(Stdio::null())
        .spawn()
        .expect("qemu-nbd (qemu-utils) is installed: scripts/setup.sh");
    let q = Qemu {
        child,
        what: format!("qemu-nbd {args:?} {}", img.display()),
    };
    wait_for_export(&q, uri);
    q
}

fn wait_for_export(q: &Qemu, uri: &str) {
    let u = NbdUri::parse(uri).unwrap();
    for _ in 0..400 {
        if Client::connect(&u, &[], Timeouts::default()).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("{} never served {uri}", q.what);
}

fn unix_uri(sock: &Path, export: &str) -> String {
    format!("nbd+unix:///{export}?socket={}", sock.display())
}

/// `qemu-io -c CMD` on an image or NBD URI (`-f FMT`).
fn qemu_io(fmt: &str, target: &str, cmds: &[String]) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", fmt]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    run(c.arg(target));
}

/// `qemu-img compare` exits 0 when the guest-visible contents are equal.
fn assert_compare(a: &Path, a_fmt: &str, b: &Path, b_fmt: &str) {
    let out = Command::new("qemu-img")
        .args(["compare", "-f", a_fmt, "-F", b_fmt])
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img compare {} {}: {}{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What a restore of the raw image `src` must equal: its bytes, with zeros where the mover's
/// plan drops them (swap pages, free blocks), written to `out`.
fn expected(src: &Path, out: &Path) -> PathBuf {
    let disk = FileSource::open(src).unwrap();
    let plan = source_mover::plan::plan(&disk, &[]).unwrap();
    std::fs::copy(src, out).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(out).unwrap();
    for (reason, r) in &plan.dropped {
        if *reason == "hole" {
            continue;
        }
        for &(a, b) in r.as_slice() {
            std::os::unix::fs::FileExt::write_all_at(&f, &vec![0u8; (b - a) as usize], a).unwrap();
        }
    }
    out.to_owned()
}

/// Converts an image (or NBD URI) to a raw file.
fn to_raw(fmt: &str, src: &str, out: &Path) -> PathBuf {
    run(Command::new("qemu-img")
        .args(["convert", "-U", "-f", fmt, "-O", "raw", src])
        .arg(out));
    out.to_owned()
}

/// A GPT disk (ext4 48 MiB, swap 8 MiB, 8 MiB unpartitioned) as qcow2, and the offset of the
/// first 4 KiB of `/srv/large.bin`.
fn vm_qcow2(d: &Path) -> (PathBuf, u64, u64) {
    let img = build(
        d,
        "vm",
        Layout::ext4(Table::Gpt, 4096, 48, 8, 8),
        &make_tree(d),
    );
    let q = d.join("vm.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&img.path)
        .arg(&q));
    let plan = source_mover::plan::plan(&FileSource::open(&img.path).unwrap(), &[]).unwrap();
    let large = plan
        .files
        .iter()
        .flat_map(|(_, e)| e)
        .find(|e| e.path == "/srv/large.bin")
        .expect("large.bin indexed");
    let size = std::fs::metadata(&img.path).unwrap().len();
    std::fs::remove_file(&img.path).unwrap();
    (q, large.extents[0][1], size)
}

/// Options for one NBD disk `disk0` with `--cbt disk0=bitmap:FROM` and `--cbt-point disk0=POINT`.
fn nbd_opts(
    source: &str,
    uri: &str,
    from: Option<&str>,
    point: Option<&str>,
    state: &Path,
) -> BackupOptions {
    let cbt: Vec<(String, PathBuf)> = from
        .map(|b| vec![("disk0".to_owned(), PathBuf::from(format!("bitmap:{b}")))])
        .unwrap_or_default();
    let (disks, lists) =
        source_mover::options::open_disks(&[("disk0".to_owned(), PathBuf::from(uri))], &cbt)
            .unwrap();
    let mut o = opts_for(source, disks[0].1.clone(), state);
    o.cbt = lists;
    if let Some(p) = point {
        o.cbt_points.insert("disk0".into(), p.into());
    }
    o
}

async fn restore_file(c: &RepoClient, id: &str, out: &Path) {
    let m = resolve(c, id, None).await.unwrap();
    restore(c, &m, "disk0", Some(out), 8, false).await.unwrap();
}

/// The bytes the plan of `disk` reads inside the 1 MiB blocks that overlap `changed`.
fn planned_in_blocks(disk: &dyn BlockSource, changed: &[(u64, u64)]) -> u64 {
    let plan = source_mover::plan::plan(disk, &[]).unwrap();
    let blocks = Ranges::from_unsorted(
        changed
            .iter()
            .map(|&(a, b)| (a / MIB * MIB, b.div_ceil(MIB) * MIB))
            .collect(),
    );
    plan.read.intersect(&blocks).total()
}

fn summary(r: &BackupReport) -> String {
    r.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qcow2_over_qemu_nbd_full_then_bitmap_incremental_restore_exactly() {
    let srv = TestServer::start().await;
    let c = client(&srv.url());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let state = d.join("state");
    let (qcow2, large_at, size) = vm_qcow2(d);
    let q = qcow2.to_str().unwrap().to_owned();

    // Night 1: the point bitmap b1 starts tracking, then a full backup over a Unix socket.
    run(Command::new("qemu-img").args(["bitmap", "--add", &q, "b1"]));
    let day1 = to_raw("qcow2", &q, &d.join("day1.raw"));
    let sock = d.join("nbd.sock");
    let uri = unix_uri(&sock, "");
    let nbd = qemu_nbd(
        &["-r", "-f", "qcow2", "-k", sock.to_str().unwrap()],
        &qcow2,
        &uri,
    );
    let full = backup(&c, &nbd_opts("vm", &uri, None, Some("b1"), &state))
        .await
        .unwrap();
    nbd.stop();
    assert_eq!(full.base, None);
    assert_eq!(full.disks[0].path, uri);
    let found = full.disks[0].found.join("\n");
    assert!(
        found.contains("ext2/3/4") && found.contains("swap"),
        "{found}"
    );
    assert!(full.skipped_bytes["swap"] > 0 && full.skipped_bytes["free"] > 0);
    // The qcow2's unallocated clusters are base:allocation holes: never read.
    assert!(full.skipped_bytes["hole"] > 0, "{:?}", full.skipped_bytes);
    let m = c.manifest(&full.backup_id).await.unwrap();
    assert_eq!(m.metadata["cbt_points"]["disk0"], "b1");
    let out1 = d.join("restored-1.raw");
    restore_file(&c, &full.backup_id, &out1).await;
    assert_compare(&expected(&day1, &d.join("want-1.raw")), "raw", &out1, "raw");

    // Day 2: guest writes with qemu-io: a file's first 4 KiB, 64 KiB of unpartitioned space, a
    // swap page (dropped, so never read). The image is offline; b1 records them.
    let tail = size - 5 * MIB;
    let swap_page = (4 + 48) * MIB + 2 * MIB;
    qemu_io(
        "qcow2",
        &q,
        &[
            format!("write -P 0x5a {large_at} 4k"),
            format!("write -P 0xa5 {tail} 64k"),
            format!("write -P 0x33 {swap_page} 4k"),
        ],
    );
    run(Command::new("qemu-img").args(["bitmap", "--add", &q, "b2"]));
    let day2 = to_raw("qcow2", &q, &d.join("day2.raw"));

    // Night 2: an incremental from bitmap b1 over TCP, recording b2 as its point.
    let port = free_port();
    let tcp = format!("nbd://127.0.0.1:{port}/vm");
    let nbd = qemu_nbd(
        &[
            "-r",
            "-f",
            "qcow2",
            "-b",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-x",
            "vm",
            "-B",
            "b1",
        ],
        &qcow2,
        &tcp,
    );
    let inc = backup(&c, &nbd_opts("vm", &tcp, Some("b1"), Some("b2"), &state))
        .await
        .unwrap();
    assert_eq!(inc.base.as_deref(), Some(full.backup_id.as_str()));
    assert!(inc.disks[0].cbt, "{}", summary(&inc));
    assert_eq!(inc.disks[0].cbt_unused, None);
    // Only the bitmap's blocks are read: exactly what the plan reads inside the 1 MiB blocks of
    // the three writes, which is at least the two writes outside swap and at most three blocks.
    let src = FileSource::open(&day2).unwrap();
    let want = planned_in_blocks(
        &src,
        &[
            (large_at, large_at + 4096),
            (tail, tail + 65536),
            (swap_page, swap_page + 4096),
        ],
    );
    assert_eq!(inc.read_bytes, want, "{}", summary(&inc));
    assert!((4096 + 65536..=3 * MIB).contains(&want), "{want}");
    let out2 = d.join("restored-2.raw");
    restore_file(&c, &inc.backup_id, &out2).await;
    let want2 = expected(&day2, &d.join("want-2.raw"));
    assert_compare(&want2, "raw", &out2, "raw");

    // A stale bitmap (b1 again: the base now recorded b2) and a missing one: read in full, and
    // the summary says why; nothing is skipped.
    let stale = backup(&c, &nbd_opts("vm", &tcp, Some("b1"), None, &state))
        .await
        .unwrap();
    assert!(!stale.disks[0].cbt);
    let why = stale.disks[0].cbt_unused.clone().expect("a reason");
    assert!(why.contains("not tied") && why.contains("b2"), "{why}");
    assert!(
        summary(&stale).contains("read in full"),
        "{}",
        summary(&stale)
    );
    let plan = source_mover::plan::plan(&src, &[]).unwrap();
    assert!(stale.read_bytes >= plan.read.total(), "{}", summary(&stale));
    nbd.stop();
    let nbd = qemu_nbd(
        &[
            "-r",
            "-f",
            "qcow2",
            "-b",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-x",
            "vm",
        ],
        &qcow2,
        &tcp,
    );
    let missing = backup(&c, &nbd_opts("vm", &tcp, Some("b2"), None, &state))
        .await
        .unwrap();
    let why = missing.disks[0].cbt_unused.clone().expect("a reason");
    assert!(why.contains("does not offer qemu:dirty-bitmap:b2"), "{why}");
    assert_eq!(missing.read_bytes, stale.read_bytes);
    nbd.stop();

    // Restore into a qcow2 through qemu-nbd: holes as WRITE_ZEROES, flushed; equal to the source.
    let target = d.join("restored.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&target)
        .arg(size.to_string()));
    // Dirty the target first: a hole of the backup must be written as zeros, not left alone.
    qemu_io(
        "qcow2",
        target.to_str().unwrap(),
        &[format!("write -P 0xee {} 1M", size - 2 * MIB)],
    );
    let tsock = d.join("target.sock");
    let turi = unix_uri(&tsock, "");
    let nbd = qemu_nbd(
        &["-f", "qcow2", "-k", tsock.to_str().unwrap()],
        &target,
        &turi,
    );
    let m = resolve(&c, &inc.backup_id, None).await.unwrap();
    let r = restore(&c, &m, "disk0", Some(Path::new(&turi)), 8, false)
        .await
        .unwrap();
    assert_eq!(r.to.as_deref(), Some(turi.as_str()));
    assert!(r.holes > 0);
    nbd.stop();
    assert_compare(&want2, "raw", &target, "qcow2");
}

/// A QMP connection to `qemu-storage-daemon`.
struct Qmp {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Qmp {
    fn connect(sock: &Path) -> Qmp {
        let mut s = None;
        for _ in 0..400 {
            if let Ok(c) = UnixStream::connect(sock) {
                s = Some(c);
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let w = s.expect("the QMP socket");
        let mut q = Qmp {
            r: BufReader::new(w.try_clone().unwrap()),
            w,
        };
        let mut greeting = String::new();
        q.r.read_line(&mut greeting).unwrap();
        assert!(greeting.contains("QMP"), "{greeting}");
        q.cmd("qmp_capabilities", serde_json::json!({}));
        q
    }

    /// Runs a command; its `return`, panicking on an `error`.
    fn cmd(&mut self, execute: &str, arguments: serde_json::Value) -> serde_json::Value {
        let msg = serde_json::json!({"execute": execute, "arguments": arguments});
        writeln!(self.w, "{msg}").unwrap();
        loop {
            let mut line = String::new();
            assert!(self.r.read_line(&mut line).unwrap() > 0, "QMP closed");
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if let Some(r) = v.get("return") {
                return r.clone();
            }
            assert!(v.get("error").is_none(), "{execute} {msg}: {v}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_storage_daemon_rotation_over_qmp_loses_no_write_across_three_nights() {
    let srv = TestServer::start().await;
    let c = client(&srv.url());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let state = d.join("state");
    let (qcow2, large_at, size) = vm_qcow2(d);
    let (nbd_sock, qmp_sock) = (d.join("nbd.sock"), d.join("qmp.sock"));
    let child = Command::new("qemu-storage-daemon")
        .arg("--blockdev")
        .arg(format!(
            "driver=file,node-name=f,filename={}",
            qcow2.display()
        ))
        .args(["--blockdev", "driver=qcow2,node-name=q,file=f"])
        .arg("--nbd-server")
        .arg(format!("addr.type=unix,addr.path={}", nbd_sock.display()))
        .args([
            "--export",
            "type=nbd,id=guest,node-name=q,name=vm,writable=on",
        ])
        .arg("--chardev")
        .arg(format!(
            "socket,id=qmp,path={},server=on,wait=off",
            qmp_sock.display()
        ))
        .args(["--monitor", "chardev=qmp"])
        .stdin(Stdio::null())
        .spawn()
        .expect("qemu-storage-daemon (qemu-utils) is installed: scripts/setup.sh");
    let daemon = Qemu {
        child,
        what: "qemu-storage-daemon".into(),
    };
    let guest = unix_uri(&nbd_sock, "vm");
    wait_for_export(&daemon, &guest);
    let mut qmp = Qmp::connect(&qmp_sock);
    // Guest writes go through the writable export, as a VM's would.
    let write = |at: u64, pattern: u8| {
        qemu_io("raw", &guest, &[format!("write -P {pattern} {at} 64k")]);
    };
    let spot = |night: u64, k: u64| size - 7 * MIB + night * MIB + k * 128 * 1024;

    // Night 0: a full backup; b0 is started at its point.
    qmp.cmd(
        "transaction",
        serde_json::json!({"actions": [
            {"type": "block-dirty-bitmap-add", "data": {"node": "q", "name": "b0", "persistent": true}}
        ]}),
    );
    let export = |qmp: &mut Qmp, night: u64, bitmap: Option<&str>| {
        let mut a = serde_json::json!({"type": "nbd", "id": format!("backup{night}"),
            "node-name": "q", "name": format!("backup{night}"), "writable": false});
        if let Some(b) = bitmap {
            a["bitmaps"] = serde_json::json!([b]);
        }
        qmp.cmd("block-export-add", a);
        unix_uri(&nbd_sock, &format!("backup{night}"))
    };
    let uri = export(&mut qmp, 0, None);
    // A write inside the backup window, after the point: b0 has it, whatever this night reads.
    write(spot(0, 0), 0x10);
    let mut prev = backup(&c, &nbd_opts("vm-live", &uri, None, Some("b0"), &state))
        .await
        .unwrap();
    qmp.cmd("block-export-del", serde_json::json!({"id": "backup0"}));
    // After the window: also b0's.
    write(spot(0, 1), 0x11);
    write(large_at, 0x12);

    for night in 1..=3u64 {
        let (from, point) = (format!("b{}", night - 1), format!("b{night}"));
        // Writes before the point: this night's backup must have them.
        write(spot(night, 0), 0x20 + night as u8);
        let before = to_raw("raw", &guest, &d.join(format!("before-{night}.raw")));
        // The point: the new bitmap starts and the old one freezes, atomically.
        qmp.cmd(
            "transaction",
            serde_json::json!({"actions": [
                {"type": "block-dirty-bitmap-add", "data": {"node": "q", "name": point, "persistent": true}},
                {"type": "block-dirty-bitmap-disable", "data": {"node": "q", "name": from}}
            ]}),
        );
        let uri = export(&mut qmp, night, Some(&from));
        // A write in the window (after the point, before the mover reads): the next night's.
        write(spot(night, 1), 0x30 + night as u8);
        // And one while the mover reads, from another process.
        let mut during = Command::new("qemu-io")
            .args(["-f", "raw", "-c"])
            .arg(format!("write -P {} {} 64k", 0x40 + night, spot(night, 2)))
            .arg(&guest)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let r = backup(
            &c,
            &nbd_opts("vm-live", &uri, Some(&from), Some(&point), &state),
        )
        .await
        .unwrap();
        assert!(during.wait().unwrap().success());
        qmp.cmd(
            "block-export-del",
            serde_json::json!({"id": format!("backup{night}")}),
        );
        qmp.cmd(
            "block-dirty-bitmap-remove",
            serde_json::json!({"node": "q", "name": from}),
        );
        assert_eq!(r.base.as_deref(), Some(prev.backup_id.as_str()));
        assert!(r.disks[0].cbt, "night {night}: {}", summary(&r));
        assert!(r.read_bytes <= 8 * MIB, "night {night}: {}", summary(&r));
        // Everything written before the point is in this night's backup.
        let out = d.join(format!("restored-{night}.raw"));
        restore_file(&c, &r.backup_id, &out).await;
        let got = std::fs::read(&out).unwrap();
        let want = std::fs::read(&before).unwrap();
        let earlier_during = (1..night).map(|n| spot(n, 2));
        for at in (0..=night)
            .flat_map(|n| [spot(n, 0), spot(n, 1)])
            .chain(earlier_during)
            .chain([large_at])
        {
            if at == spot(night, 1) {
                continue;
            }
            let (a, b) = (at as usize, at as usize + 65536);
            assert!(
                got[a..b] == want[a..b],
                "night {night}: the write at {at} is lost"
            );
        }
        prev = r;
    }

    // A quiet night: nothing written in its window; its restore is the disk exactly.
    qmp.cmd(
        "transaction",
        serde_json::json!({"actions": [
            {"type": "block-dirty-bitmap-add", "data": {"node": "q", "name": "b4", "persistent": true}},
            {"type": "block-dirty-bitmap-disable", "data": {"node": "q", "name": "b3"}}
        ]}),
    );
    let uri = export(&mut qmp, 4, Some("b3"));
    let last = backup(
        &c,
        &nbd_opts("vm-live", &uri, Some("b3"), Some("b4"), &state),
    )
    .await
    .unwrap();
    assert!(last.disks[0].cbt);
    let now = to_raw("raw", &guest, &d.join("now.raw"));
    drop(qmp);
    daemon.stop();
    let out = d.join("restored-last.raw");
    restore_file(&c, &last.backup_id, &out).await;
    assert_compare(
        &expected(&now, &d.join("want-last.raw")),
        "raw",
        &out,
        "raw",
    );
}

/// How the hostile server breaks its replies to reads.
#[derive(Debug, Clone, Copy)]
enum Hostile {
    /// A data chunk longer than the read asked for.
    Oversized,
    /// A reply for a handle the client never used.
    WrongHandle,
    /// A second reply to a read already answered (out of order with its own DONE).
    AfterDone,
    /// A reply with a bad magic.
    BadMagic,
    /// A block status reply with more extents than any server sends.
    TooManyExtents,
    /// An option reply of 1 MiB during the handshake.
    HugeOptionReply,
    /// Not hostile: the four requests of each 1 MiB read answered in reverse order, in 64 KiB
    /// chunks interleaved across them, holes among them; bytes are [`pattern`].
    Reorder,
}

/// The byte at `offset` of the reordering server's export (zero in its holes: every fourth
/// 64 KiB piece).
fn pattern(offset: u64) -> u8 {
    if (offset >> 16) % 4 == 3 {
        0
    } else {
        (offset / 7 % 251) as u8 + 1
    }
}

/// Serves one connection: a correct handshake (structured replies, base:allocation, a 64 MiB
/// read-only export), then replies broken as `mode` says.
fn hostile(listener: TcpListener, mode: Hostile) {
    let Ok((mut s, _)) = listener.accept() else {
        return;
    };
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = serve_hostile(&mut s, mode);
}

fn serve_hostile(s: &mut std::net::TcpStream, mode: Hostile) -> std::io::Result<()> {
    use nbd::*;
    s.write_all(&encode_greeting(
        handshake::FIXED_NEWSTYLE | handshake::NO_ZEROES,
    ))?;
    let mut flags = [0u8; 4];
    s.read_exact(&mut flags)?;
    loop {
        let mut h = [0u8; OPTION_HEADER_LEN];
        s.read_exact(&mut h)?;
        let (option, len) = decode_option_header(&h, 4096).unwrap();
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data)?;
        match option {
            opt::STRUCTURED_REPLY => {
                if let Hostile::HugeOptionReply = mode {
                    s.write_all(&encode_option_reply(option, rep::ACK, &vec![0u8; 1 << 20]))?;
                    return Ok(());
                }
                s.write_all(&encode_option_reply(option, rep::ACK, &[]))?;
            }
            opt::SET_META_CONTEXT => {
                s.write_all(&encode_option_reply(
                    option,
                    rep::META_CONTEXT,
                    &encode_meta_context_reply(7, BASE_ALLOCATION),
                ))?;
                s.write_all(&encode_option_reply(option, rep::ACK, &[]))?;
            }
            opt::GO => {
                let info = encode_info_export(64 << 20, tflags::HAS_FLAGS | tflags::READ_ONLY);
                s.write_all(&encode_option_reply(option, rep::INFO, &info))?;
                s.write_all(&encode_option_reply(option, rep::ACK, &[]))?;
                break;
            }
            _ => s.write_all(&encode_option_reply(option, rep::ERR_UNSUP, &[]))?,
        }
    }
    let chunk = |kind: u16, flags: u16, handle: u64, payload: &[u8]| {
        let mut v = ChunkHeader {
            flags,
            kind,
            handle,
            length: payload.len() as u32,
        }
        .encode()
        .to_vec();
        v.extend_from_slice(payload);
        v
    };
    let read_req = |s: &mut std::net::TcpStream| -> std::io::Result<Request> {
        let mut h = [0u8; REQUEST_LEN];
        s.read_exact(&mut h)?;
        Ok(Request::decode(&h).unwrap())
    };
    loop {
        let r = read_req(s)?;
        if let (Hostile::Reorder, cmd::READ) = (mode, r.command) {
            // The other three pieces of the same 1 MiB read follow at once.
            let mut reqs = vec![r];
            if r.length == 256 << 10 {
                for _ in 0..3 {
                    reqs.push(read_req(s)?);
                }
            }
            reqs.reverse();
            let mut out = Vec::new();
            let max = reqs
                .iter()
                .map(|q| q.length.div_ceil(65536))
                .max()
                .unwrap_or(0);
            for k in 0..max {
                for q in &reqs {
                    let at = u64::from(k) * 65536;
                    if at >= u64::from(q.length) {
                        continue;
                    }
                    let n = (u64::from(q.length) - at).min(65536);
                    let off = q.offset + at;
                    let flags = if at + n >= u64::from(q.length) {
                        reply_flags::DONE
                    } else {
                        0
                    };
                    let mut p = off.to_be_bytes().to_vec();
                    if (off >> 16) % 4 == 3 && n == 65536 && off % 65536 == 0 {
                        p.extend_from_slice(&(n as u32).to_be_bytes());
                        out.extend(chunk(reply_type::OFFSET_HOLE, flags, q.handle, &p));
                    } else {
                        p.extend((off..off + n).map(pattern));
                        out.extend(chunk(reply_type::OFFSET_DATA, flags, q.handle, &p));
                    }
                }
            }
            s.write_all(&out)?;
            continue;
        }
        let data = |len: usize| {
            let mut p = r.offset.to_be_bytes().to_vec();
            p.extend(std::iter::repeat_n(0u8, len));
            p
        };
        match (r.command, mode) {
            (cmd::BLOCK_STATUS, Hostile::TooManyExtents) => {
                let ext = vec![
                    Extent {
                        length: 512,
                        flags: 0
                    };
                    200_000
                ];
                s.write_all(&chunk(
                    reply_type::BLOCK_STATUS,
                    reply_flags::DONE,
                    r.handle,
                    &encode_block_status(7, &ext),
                ))?;
            }
            (cmd::BLOCK_STATUS, _) => {
                let ext = [Extent {
                    length: r.length,
                    flags: 0,
                }];
                s.write_all(&chunk(
                    reply_type::BLOCK_STATUS,
                    reply_flags::DONE,
                    r.handle,
                    &encode_block_status(7, &ext),
                ))?;
            }
            (cmd::READ, Hostile::Oversized) => {
                s.write_all(&chunk(
                    reply_type::OFFSET_DATA,
                    reply_flags::DONE,
                    r.handle,
                    &data(r.length as usize + (1 << 20)),
                ))?;
            }
            (cmd::READ, Hostile::WrongHandle) => {
                s.write_all(&chunk(
                    reply_type::OFFSET_DATA,
                    reply_flags::DONE,
                    r.handle ^ 0x5555,
                    &data(r.length as usize),
                ))?;
            }
            (cmd::READ, Hostile::AfterDone) => {
                let d = data(r.length as usize);
                s.write_all(&chunk(
                    reply_type::OFFSET_DATA,
                    reply_flags::DONE,
                    r.handle,
                    &d,
                ))?;
                s.write_all(&chunk(
                    reply_type::OFFSET_DATA,
                    reply_flags::DONE,
                    r.handle,
                    &d,
                ))?;
            }
            (cmd::READ, Hostile::BadMagic) => {
                let mut v = chunk(reply_type::OFFSET_DATA, reply_flags::DONE, r.handle, &[]);
                v[0] ^= 0xff;
                s.write_all(&v)?;
            }
            (cmd::READ, _) => {
                s.write_all(&chunk(
                    reply_type::OFFSET_DATA,
                    reply_flags::DONE,
                    r.handle,
                    &data(r.length as usize),
                ))?;
            }
            (cmd::DISC, _) => return Ok(()),
            _ => s.write_all(&encode_simple_reply(errno::EINVAL, r.handle))?,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_nbd_server_ends_the_backup_with_a_clear_error() {
    let srv = TestServer::start().await;
    let c = client(&srv.url());
    let dir = tempfile::tempdir().unwrap();
    for (mode, says) in [
        (Hostile::Oversized, "exceeds the limit"),
        (Hostile::WrongHandle, "no request in flight has"),
        (Hostile::AfterDone, "no request in flight has"),
        (Hostile::BadMagic, "bad magic"),
        (Hostile::TooManyExtents, "block status"),
        (Hostile::HugeOptionReply, "exceeds the limit"),
    ] {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let uri = format!("nbd://127.0.0.1:{}/x", l.local_addr().unwrap().port());
        let server = std::thread::spawn(move || hostile(l, mode));
        let opened = NbdUri::parse(&uri).and_then(|u| {
            source_mover::source::NbdSource::open(&u, &[])
                .map(|s| Arc::new(s) as Arc<dyn BlockSource>)
        });
        let err = match opened {
            Err(e) => e,
            Ok(src) => {
                let o = opts_for("hostile", src, &dir.path().join("state"));
                backup(&c, &o)
                    .await
                    .expect_err("a hostile server's backup fails")
            }
        };
        let msg = err.to_string();
        assert!(msg.contains(&uri) && msg.contains(says), "{mode:?}: {msg}");
        server.join().unwrap();
    }
}

#[test]
fn replies_out_of_order_split_and_interleaved_reach_each_reader_exactly() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let uri = format!("nbd://127.0.0.1:{}/x", l.local_addr().unwrap().port());
    let server = std::thread::spawn(move || hostile(l, Hostile::Reorder));
    let src = Arc::new(
        source_mover::source::NbdSource::open(&NbdUri::parse(&uri).unwrap(), &[]).unwrap(),
    );
    // Three threads read 1 MiB blocks at once; each reply arrives in pieces, some read by the
    // thread that asked, some by another.
    let readers: Vec<_> = (0..3u64)
        .map(|t| {
            let src = src.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0xEEu8; MIB as usize];
                for i in 0..20u64 {
                    let off = ((i * 3 + t) % 60) * MIB;
                    buf.fill(0xEE);
                    src.read_at(&mut buf, off).unwrap();
                    let bad = (0..MIB).find(|&k| buf[k as usize] != pattern(off + k));
                    assert!(
                        bad.is_none(),
                        "thread {t}, block at {off}: wrong byte at {bad:?}"
                    );
                }
            })
        })
        .collect();
    for r in readers {
        r.join().unwrap();
    }
    drop(src);
    server.join().unwrap();
}
