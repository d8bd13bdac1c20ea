//! Instant recovery: a committed backup's disk served read-only over NBD, read by the real
//! clients (`qemu-img`, `qemu-io`, `nbdinfo`, `nbdcopy` from qemu-utils and libnbd-bin).
//!
//! Every backup here is made by the real mover from a real disk image (GPT, ext4, swap, an
//! unpartitioned tail) and restored by the real restore; the export must read exactly as the
//! restore does. Then: holes in `nbdinfo --map`; a qcow2 overlay takes writes and leaves the
//! backup unchanged; wrong, expired and deleted names are refused; a damaged chunk makes the
//! reads of its block fail with an I/O error while the other blocks still read; tenancy on
//! export creation; the backup is pinned while exported; a raw client sees `ESHUTDOWN` after
//! the export is deleted and hostile input closes only its own connection; and the gateway
//! serves the same.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use http::{Method, StatusCode};
use serde_json::{json, Value};
use source_mover::backup::backup;
use tests::images::{build, make_tree, Layout, Table};
use tests::mover::{client, opts, restore_to};
use tests::{Client, TestServer, ADMIN, BACKUP_A, BACKUP_B, READER_A};

const MIB: u64 = 1 << 20;

/// A server with NBD on an ephemeral port.
async fn nbd_server() -> TestServer {
    TestServer::start_with(|c| c.nbd.listen = Some("127.0.0.1:0".parse().unwrap())).await
}

/// A backed-up disk: the backup id and the restore of it (what the export must read as).
struct Backed {
    id: String,
    restored: PathBuf,
}

/// Builds a GPT disk (ext4, swap, 8 MiB unpartitioned), backs it up with the mover (1 MiB
/// blocks) and restores it.
async fn backed_up(url: &str, d: &Path) -> Backed {
    let img = build(
        d,
        "vm",
        Layout::ext4(Table::Gpt, 4096, 48, 8, 8),
        &make_tree(d),
    );
    let c = client(url);
    let report = backup(&c, &opts("vm-nbd", &img.path, &d.join("state")))
        .await
        .unwrap();
    let restored = d.join("restored.raw");
    restore_to(&c, &report.backup_id, &restored).await;
    Backed {
        id: report.backup_id,
        restored,
    }
}

async fn create_export(
    url: &str,
    token: &str,
    id: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let c = Client::h2(url, Some(token));
    let path = format!("/v1/backups/{id}/disks/disk0/exports");
    let r = match body {
        Some(b) => c.json(Method::POST, &path, &b).await,
        None => c.send(Method::POST, &path, &[], bytes::Bytes::new()).await,
    };
    (r.status, r.json())
}

/// An export made with the backup tenant's token: its URI.
async fn export_uri(url: &str, id: &str) -> (String, Value) {
    let (status, v) = create_export(url, BACKUP_A, id, None).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    (v["uri"].as_str().unwrap().to_owned(), v)
}

/// Runs a tool (bounded by `timeout`, so a server that hangs fails the test instead of hanging
/// it) on a blocking thread.
async fn tool(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .arg("300")
            .args(&args)
            .output()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    })
    .await
    .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn ok(args: &[&str]) -> String {
    let o = tool(args).await;
    assert!(o.status.success(), "{args:?}: {}", text(&o));
    text(&o)
}

fn same_bytes(a: &Path, b: &Path) {
    let (x, y) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    assert_eq!(x.len(), y.len(), "{} vs {}", a.display(), b.display());
    let at = x.iter().zip(&y).position(|(p, q)| p != q);
    assert!(
        at.is_none(),
        "{} and {} differ at byte {at:?}",
        a.display(),
        b.display()
    );
}

/// Bytes of all-zero 1 MiB blocks (the last one may be short) of a file.
fn zero_block_bytes(path: &Path) -> u64 {
    std::fs::read(path)
        .unwrap()
        .chunks(MIB as usize)
        .filter(|b| b.iter().all(|&x| x == 0))
        .map(|b| b.len() as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn qemu_img_nbdinfo_and_nbdcopy_read_the_backup_exactly() {
    let srv = nbd_server().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let b = backed_up(&srv.url(), d).await;
    let (uri, info) = export_uri(&srv.url(), &b.id).await;
    let size = std::fs::metadata(&b.restored).unwrap().len();
    assert_eq!(info["size"], size);
    assert_eq!(info["backup_id"], b.id.as_str());
    let name = info["name"].as_str().unwrap();
    assert_eq!(name.len(), 48, "192 bits in hex: {name}");
    assert!(
        uri.starts_with("nbd://127.0.0.1:") && uri.ends_with(name),
        "{uri}"
    );

    // qemu-img convert to raw and to qcow2.
    let raw = d.join("convert.raw");
    ok(&[
        "qemu-img",
        "convert",
        "-f",
        "raw",
        "-O",
        "raw",
        &uri,
        raw.to_str().unwrap(),
    ])
    .await;
    same_bytes(&raw, &b.restored);
    let qcow = d.join("convert.qcow2");
    ok(&[
        "qemu-img",
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        &uri,
        qcow.to_str().unwrap(),
    ])
    .await;
    ok(&[
        "qemu-img",
        "compare",
        "-f",
        "qcow2",
        "-F",
        "raw",
        qcow.to_str().unwrap(),
        b.restored.to_str().unwrap(),
    ])
    .await;

    // nbdinfo: read-only, the size, and a map whose holes are exactly the zero blocks.
    let i = ok(&["nbdinfo", &uri]).await;
    assert!(i.contains("is_read_only: true"), "{i}");
    assert!(i.contains(&format!("export-size: {size}")), "{i}");
    let map = ok(&["nbdinfo", "--map", &uri]).await;
    let (mut holes, mut data, mut covered) = (0u64, 0u64, 0u64);
    for line in map.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (off, len, kind): (u64, u64, u32) = (
            f[0].parse().unwrap(),
            f[1].parse().unwrap(),
            f[2].parse().unwrap(),
        );
        assert_eq!(off, covered, "extents are contiguous: {map}");
        covered += len;
        match kind {
            3 => holes += len,
            0 => data += len,
            other => panic!("unexpected extent type {other}: {map}"),
        }
    }
    assert_eq!(covered, size, "{map}");
    assert!(holes > 8 * MIB && data > 0, "{map}");
    assert_eq!(
        holes,
        zero_block_bytes(&b.restored),
        "holes are the zero blocks: {map}"
    );

    // nbdcopy to a file.
    let copy = d.join("nbdcopy.raw");
    ok(&["nbdcopy", &uri, copy.to_str().unwrap()]).await;
    same_bytes(&copy, &b.restored);

    // Everything sent was counted; nothing failed.
    let m = Client::h2(&srv.url(), None).get("/metrics").await;
    let m = String::from_utf8_lossy(&m.body).into_owned();
    assert!(m.contains("repo_nbd_read_errors_total 0"), "{m}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_qcow2_overlay_takes_the_writes_and_the_backup_stays_unchanged() {
    let srv = nbd_server().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let b = backed_up(&srv.url(), d).await;
    let (uri, _) = export_uri(&srv.url(), &b.id).await;
    let overlay = d.join("overlay.qcow2");
    let ov = overlay.to_str().unwrap();
    ok(&[
        "qemu-img", "create", "-f", "qcow2", "-b", &uri, "-F", "raw", ov,
    ])
    .await;
    let out = ok(&[
        "qemu-io",
        "-c",
        "write -P 0xab 0 1M",
        "-c",
        "read -P 0xab 0 1M",
        ov,
    ])
    .await;
    assert!(
        out.contains("wrote 1048576/1048576") && out.contains("read 1048576/1048576"),
        "{out}"
    );
    // The overlay reads the write, and the backup elsewhere.
    let ov_raw = d.join("overlay.raw");
    ok(&[
        "qemu-img",
        "convert",
        "-O",
        "raw",
        ov,
        ov_raw.to_str().unwrap(),
    ])
    .await;
    let (got, want) = (
        std::fs::read(&ov_raw).unwrap(),
        std::fs::read(&b.restored).unwrap(),
    );
    assert!(got[..MIB as usize].iter().all(|&x| x == 0xab));
    assert!(got[MIB as usize..] == want[MIB as usize..]);
    // Writing to the export itself is refused.
    let w = tool(&["qemu-io", "-f", "raw", "-c", "write -P 0xcd 0 4k", &uri]).await;
    let t = text(&w);
    assert!(!t.contains("wrote "), "{t}");
    assert!(
        t.contains("read-only")
            || t.contains("Operation not permitted")
            || t.contains("Permission denied"),
        "{t}"
    );
    // The export still reads as the backup.
    let again = d.join("again.raw");
    ok(&[
        "qemu-img",
        "convert",
        "-f",
        "raw",
        "-O",
        "raw",
        &uri,
        again.to_str().unwrap(),
    ])
    .await;
    same_bytes(&again, &b.restored);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_expired_and_deleted_names_are_refused_and_the_backup_is_pinned() {
    let srv = nbd_server().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let b = backed_up(&srv.url(), d).await;
    let (uri, info) = export_uri(&srv.url(), &b.id).await;
    let base = uri.rsplit_once('/').unwrap().0.to_owned();
    let name = info["name"].as_str().unwrap().to_owned();
    ok(&["qemu-img", "info", "-f", "raw", &uri]).await;

    // A wrong name (one character off), and the list of exports, reveal nothing.
    let mut wrong = name.clone().into_bytes();
    wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
    let wrong = format!("{base}/{}", String::from_utf8(wrong).unwrap());
    let o = tool(&["qemu-img", "info", "-f", "raw", &wrong]).await;
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("unknown export"), "{}", text(&o));
    let l = tool(&["nbdinfo", "--list", &format!("{base}/")]).await;
    assert!(!text(&l).contains(&name), "{}", text(&l));

    // While exported, the backup cannot be deleted.
    let admin = Client::h2(&srv.url(), Some(ADMIN));
    let r = admin
        .send(
            Method::DELETE,
            &format!("/v1/backups/{}", b.id),
            &[],
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::CONFLICT, "BACKUP_IN_USE")
    );
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("NBD export"));

    // Expired: the repository's clock moves past the expiry.
    let (_, short) = create_export(&srv.url(), BACKUP_A, &b.id, Some(json!({"ttl_s": 60}))).await;
    let short_uri = short["uri"].as_str().unwrap().to_owned();
    ok(&["qemu-img", "info", "-f", "raw", &short_uri]).await;
    let expires = schema::time::parse_rfc3339(short["expires"].as_str().unwrap()).unwrap();
    srv.repo.set_clock(expires + 1);
    let o = tool(&["qemu-img", "info", "-f", "raw", &short_uri]).await;
    assert!(
        !o.status.success() && text(&o).contains("unknown export"),
        "{}",
        text(&o)
    );
    ok(&["qemu-img", "info", "-f", "raw", &uri]).await;
    srv.repo.set_clock(0);

    // Deleted: the name is refused at once; a second delete is 404.
    let a = Client::h2(&srv.url(), Some(BACKUP_A));
    let del = format!("/v1/backups/{}/disks/disk0/exports/{name}", b.id);
    let other = Client::h2(&srv.url(), Some(BACKUP_B));
    assert_eq!(
        other
            .send(Method::DELETE, &del, &[], bytes::Bytes::new())
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        a.send(Method::DELETE, &del, &[], bytes::Bytes::new())
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let o = tool(&["qemu-img", "info", "-f", "raw", &uri]).await;
    assert!(
        !o.status.success() && text(&o).contains("unknown export"),
        "{}",
        text(&o)
    );
    assert_eq!(
        a.send(Method::DELETE, &del, &[], bytes::Bytes::new())
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    // Who may create one: the tenant's tokens and an admin; not another tenant, not anonymous.
    let (s, v) = create_export(&srv.url(), BACKUP_B, &b.id, None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("NOT_FOUND")),
        "{v}"
    );
    assert_eq!(
        create_export(&srv.url(), READER_A, &b.id, None).await.0,
        StatusCode::CREATED
    );
    let (s, admin_export) = create_export(&srv.url(), ADMIN, &b.id, None).await;
    assert_eq!(s, StatusCode::CREATED);
    let anon = Client::h2(&srv.url(), None)
        .send(
            Method::POST,
            &format!("/v1/backups/{}/disks/disk0/exports", b.id),
            &[],
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(anon.status, StatusCode::UNAUTHORIZED);
    for bad in [
        json!({"ttl_s": 0}),
        json!({"ttl_s": 3601}),
        json!({"ttl": 5}),
    ] {
        let (s, v) = create_export(&srv.url(), BACKUP_A, &b.id, Some(bad.clone())).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {v}");
    }
    let (s, _) = create_export(
        &srv.url(),
        BACKUP_A,
        "20200101T000000Z-0123456789abcdef",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let r = Client::h2(&srv.url(), Some(BACKUP_A))
        .send(
            Method::POST,
            &format!("/v1/backups/{}/disks/nope/exports", b.id),
            &[],
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // With every export gone (expired by the clock), the backup can be deleted again.
    srv.repo.set_clock(
        schema::time::parse_rfc3339(admin_export["expires"].as_str().unwrap()).unwrap() + 1,
    );
    let r = admin
        .send(
            Method::DELETE,
            &format!("/v1/backups/{}", b.id),
            &[],
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.json());
    srv.repo.set_clock(0);
    srv.stop().await;
}

#[tokio::test]
async fn a_repository_without_nbd_refuses_exports() {
    let srv = TestServer::start().await;
    let (s, v) = create_export(&srv.url(), ADMIN, "20200101T000000Z-0123456789abcdef", None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("EXPORTS_DISABLED")),
        "{v}"
    );
    srv.stop().await;
}

/// The chunk ids of disk0 of backup `id`, in block order.
async fn index(url: &str, id: &str) -> Vec<schema::ChunkId> {
    let r = Client::h2(url, Some(BACKUP_A))
        .get(&format!("/v1/backups/{id}/disks/disk0/index"))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    r.body
        .chunks(32)
        .map(|c| schema::ChunkId::from_slice(c).unwrap())
        .collect()
}

fn chunk_path(store: &Path, id: &schema::ChunkId) -> PathBuf {
    let h = id.hex();
    store.join("chunks").join(&h[..2]).join(&h[2..4]).join(&h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_damaged_chunk_fails_its_block_with_an_io_error_and_never_sends_wrong_data() {
    let srv = nbd_server().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let b = backed_up(&srv.url(), d).await;
    let ids = index(&srv.url(), &b.id).await;
    // Two stored blocks, each whose id appears once: one re-encoded with a flipped byte (a
    // sound zstd frame of the wrong bytes: only the blake3 check can tell), one with a flipped
    // byte in the frame itself.
    let once: Vec<usize> = (0..ids.len())
        .filter(|&i| !ids[i].is_hole() && ids.iter().filter(|x| **x == ids[i]).count() == 1)
        .collect();
    assert!(once.len() > 4, "{} distinct stored blocks", once.len());
    let (bad, bad2, good) = (once[1], once[once.len() / 2], once[once.len() - 1]);
    let p = chunk_path(&srv.store_dir(), &ids[bad]);
    let mut raw = zstd::stream::decode_all(&std::fs::read(&p).unwrap()[..]).unwrap();
    raw[1000] ^= 0x01;
    std::fs::write(&p, zstd::bulk::compress(&raw, 3).unwrap()).unwrap();
    let p2 = chunk_path(&srv.store_dir(), &ids[bad2]);
    let mut frame = std::fs::read(&p2).unwrap();
    let mid = frame.len() / 2;
    frame[mid] ^= 0x40;
    std::fs::write(&p2, frame).unwrap();

    let (uri, _) = export_uri(&srv.url(), &b.id).await;
    let out = d.join("out.raw");
    let o = tool(&[
        "qemu-img",
        "convert",
        "-f",
        "raw",
        "-O",
        "raw",
        &uri,
        out.to_str().unwrap(),
    ])
    .await;
    assert!(
        !o.status.success(),
        "convert over a damaged chunk must fail: {}",
        text(&o)
    );
    assert!(text(&o).contains("Input/output error"), "{}", text(&o));
    for blk in [bad, bad2] {
        let cmd = format!("read {} 1M", blk as u64 * MIB);
        let o = tool(&["qemu-io", "-r", "-f", "raw", "-c", &cmd, &uri]).await;
        let t = text(&o);
        assert!(
            t.contains("Input/output error") && !t.contains("read 1048576/1048576"),
            "{t}"
        );
        // A 4 KiB piece of the block fails too (the whole block is verified).
        let cmd = format!("read {} 4k", blk as u64 * MIB + 8192);
        let t = text(&tool(&["qemu-io", "-r", "-f", "raw", "-c", &cmd, &uri]).await);
        assert!(t.contains("Input/output error"), "{t}");
    }
    // Other blocks still read, with the right bytes.
    let want = std::fs::read(&b.restored).unwrap();
    let at = good as u64 * MIB;
    let pattern = want[at as usize];
    let cmd = format!("read -P {pattern} {at} 1");
    let t = text(&tool(&["qemu-io", "-r", "-f", "raw", "-c", &cmd, &uri]).await);
    assert!(t.contains("read 1/1 bytes"), "{t}");
    // nbdcopy of the whole disk fails as well.
    let o = tool(&["nbdcopy", &uri, "null:"]).await;
    assert!(!o.status.success(), "{}", text(&o));
    let m = Client::h2(&srv.url(), None).get("/metrics").await;
    let m = String::from_utf8_lossy(&m.body).into_owned();
    let count = |name: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert!(count("repo_nbd_read_errors_total") >= 5, "{m}");
    assert!(count("repo_verification_failures_total") >= 1, "{m}");
    srv.stop().await;
}

/// A minimal NBD client on the `nbd` codec: negotiates `NBD_OPT_GO` for `name` (no structured
/// replies) and returns the stream, or the error reply type.
fn raw_go(addr: &str, name: &str) -> Result<TcpStream, u32> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let mut g = [0u8; nbd::GREETING_LEN];
    s.read_exact(&mut g).unwrap();
    nbd::decode_greeting(&g).unwrap();
    s.write_all(&(nbd::client_flags::FIXED_NEWSTYLE | nbd::client_flags::NO_ZEROES).to_be_bytes())
        .unwrap();
    s.write_all(&nbd::encode_option(
        nbd::opt::GO,
        &nbd::encode_go(name, &[]),
    ))
    .unwrap();
    loop {
        let mut h = [0u8; nbd::OPTION_REPLY_HEADER_LEN];
        s.read_exact(&mut h).unwrap();
        let r = nbd::decode_option_reply(&h, nbd::opt::GO, 1 << 16).unwrap();
        let mut data = vec![0u8; r.len as usize];
        s.read_exact(&mut data).unwrap();
        if r.is_error() {
            return Err(r.reply);
        }
        if r.reply == nbd::rep::ACK {
            return Ok(s);
        }
    }
}

/// Sends one read and returns the simple reply's error (and reads the data on success).
fn raw_read(s: &mut TcpStream, handle: u64, offset: u64, length: u32) -> u32 {
    let req = nbd::Request {
        flags: 0,
        command: nbd::cmd::READ,
        handle,
        offset,
        length,
    };
    s.write_all(&req.encode()).unwrap();
    let mut h = [0u8; nbd::SIMPLE_REPLY_LEN];
    s.read_exact(&mut h).unwrap();
    let nbd::ReplyHeader::Simple { error, handle: got } = nbd::decode_reply_start(&h).unwrap()
    else {
        panic!("structured reply without negotiation")
    };
    assert_eq!(got, handle);
    if error == 0 {
        let mut data = vec![0u8; length as usize];
        s.read_exact(&mut data).unwrap();
    }
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn open_connections_end_with_the_export_and_hostile_input_closes_only_its_connection() {
    let srv = nbd_server().await;
    let dir = tempfile::tempdir().unwrap();
    let b = backed_up(&srv.url(), dir.path()).await;
    let (uri, info) = export_uri(&srv.url(), &b.id).await;
    let name = info["name"].as_str().unwrap().to_owned();
    let addr = uri
        .trim_start_matches("nbd://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let (a2, n2) = (addr.clone(), name.clone());
    let mut conn = tokio::task::spawn_blocking(move || raw_go(&a2, &n2).unwrap())
        .await
        .unwrap();
    let (mut conn, e) = tokio::task::spawn_blocking(move || {
        let e = raw_read(&mut conn, 1, 0, 65536);
        (conn, e)
    })
    .await
    .unwrap();
    assert_eq!(e, 0);
    // Writes are EPERM; a read past the end is EINVAL; the connection goes on.
    let (mut conn, errs) = tokio::task::spawn_blocking(move || {
        let w = nbd::Request {
            flags: 0,
            command: nbd::cmd::WRITE,
            handle: 2,
            offset: 0,
            length: 4096,
        };
        conn.write_all(&w.encode()).unwrap();
        conn.write_all(&[0xee; 4096]).unwrap();
        let mut h = [0u8; nbd::SIMPLE_REPLY_LEN];
        conn.read_exact(&mut h).unwrap();
        let nbd::ReplyHeader::Simple { error: werr, .. } = nbd::decode_reply_start(&h).unwrap()
        else {
            panic!()
        };
        let past = raw_read(&mut conn, 3, 1 << 40, 4096);
        let fine = raw_read(&mut conn, 4, 4096, 4096);
        (conn, (werr, past, fine))
    })
    .await
    .unwrap();
    assert_eq!(errs, (nbd::errno::EPERM, nbd::errno::EINVAL, 0));

    // Hostile clients: garbage instead of client flags, an oversized option, a bad request
    // magic after GO. Each is disconnected; the server goes on.
    let (a2, n2) = (addr.clone(), name.clone());
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(&a2).unwrap();
        let mut g = [0u8; nbd::GREETING_LEN];
        s.read_exact(&mut g).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let mut rest = Vec::new();
        assert!(s.read_to_end(&mut rest).is_ok() && rest.is_empty());
        let mut s = TcpStream::connect(&a2).unwrap();
        s.read_exact(&mut g).unwrap();
        s.write_all(&nbd::client_flags::FIXED_NEWSTYLE.to_be_bytes())
            .unwrap();
        let mut huge = Vec::new();
        huge.extend_from_slice(&nbd::IHAVEOPT.to_be_bytes());
        huge.extend_from_slice(&nbd::opt::GO.to_be_bytes());
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        s.write_all(&huge).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(rest.is_empty());
        let mut s = raw_go(&a2, &n2).unwrap();
        s.write_all(&[0x55; nbd::REQUEST_LEN]).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(rest.is_empty());
    })
    .await
    .unwrap();

    // Deleting the export: the open connection's next request is ESHUTDOWN, then it closes.
    let del = format!("/v1/backups/{}/disks/disk0/exports/{name}", b.id);
    let r = Client::h2(&srv.url(), Some(ADMIN))
        .send(Method::DELETE, &del, &[], bytes::Bytes::new())
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    tokio::task::spawn_blocking(move || {
        assert_eq!(raw_read(&mut conn, 5, 0, 4096), nbd::errno::ESHUTDOWN);
        let mut rest = Vec::new();
        let _ = conn.read_to_end(&mut rest);
        assert!(rest.is_empty());
        assert_eq!(raw_go(&addr, &name).err(), Some(nbd::rep::ERR_UNKNOWN));
    })
    .await
    .unwrap();
    let m = Client::h2(&srv.url(), None).get("/metrics").await;
    let m = String::from_utf8_lossy(&m.body).into_owned();
    assert!(!m.contains("repo_nbd_refused_total 0"), "{m}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gateway_serves_exports_from_the_share() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let samba = gateway::samba::Samba::start(&d.join("samba")).unwrap();
    let port = tests::free_port();
    let extra = format!(
        "{}[nbd]\nlisten = \"127.0.0.1:{port}\"\n",
        samba.share_toml("repo")
    );
    let gw = tests::ChildServer::start_bin(
        &tests::gateway_binary(),
        &d.join("gw"),
        "127.0.0.1:0",
        &extra,
        &[],
    );
    let b = backed_up(&gw.url(), d).await;
    let (uri, _) = export_uri(&gw.url(), &b.id).await;
    assert!(
        uri.starts_with(&format!("nbd://127.0.0.1:{port}/")),
        "{uri}"
    );
    let raw = d.join("gw.raw");
    ok(&[
        "qemu-img",
        "convert",
        "-f",
        "raw",
        "-O",
        "raw",
        &uri,
        raw.to_str().unwrap(),
    ])
    .await;
    same_bytes(&raw, &b.restored);
    let copy = d.join("gw-nbdcopy.raw");
    ok(&["nbdcopy", &uri, copy.to_str().unwrap()]).await;
    same_bytes(&copy, &b.restored);
    let map = ok(&["nbdinfo", "--map", &uri]).await;
    assert!(map.contains("hole,zero") && map.contains("data"), "{map}");
}
