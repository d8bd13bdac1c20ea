//! Encrypted backups against the real server and the real mover: a full and a CBT incremental
//! restore byte for byte while nothing of the plaintext (no block, no blake3 of a block, no
//! file name) is anywhere in the repository's data directory (chunk files and the RocksDB
//! catalog); keys never dedup across each other and do with themselves; a flipped byte in a
//! stored sealed chunk is found by the server's verify (stored-bytes digest) and by the mover's
//! verify (AEAD); a wrong passphrase, a wrong key and a missing key fail clearly before anything
//! is written; the file catalog works through the mover only, and the server says the index is
//! encrypted. The key commands run through the shipped binary.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use http::StatusCode;
use source_mover::backup::{backup, Base};
use source_mover::files::{self, FileSystem, Search};
use source_mover::key::MasterKey;
use source_mover::restore::{resolve, restore_with};
use source_mover::Error;
use tests::images::{build, make_tree, Image, Layout, Table};
use tests::jobs::run_job;
use tests::mover::{client, opts};
use tests::{Client, TestServer, ADMIN, BACKUP_A};

const MIB: u64 = 1 << 20;

fn image(d: &Path) -> Image {
    build(
        d,
        "enc",
        Layout::ext4(Table::Dos, 4096, 48, 8, 8),
        &make_tree(d),
    )
}

fn key() -> Arc<MasterKey> {
    Arc::new(MasterKey::generate().unwrap())
}

/// What a restore of `disk` must give: its bytes with zeros where the plan dropped them.
fn expected(disk: &Path) -> Vec<u8> {
    let src = source_mover::source::open(disk).unwrap();
    let plan = source_mover::plan::plan(src.as_ref(), &[]).unwrap();
    let mut want = std::fs::read(disk).unwrap();
    for r in plan.dropped.values() {
        for &(a, b) in r.as_slice() {
            want[a as usize..b as usize].fill(0);
        }
    }
    want
}

fn assert_same(want: &[u8], got: &Path) {
    let got = std::fs::read(got).unwrap();
    assert_eq!(want.len(), got.len());
    let at = want.iter().zip(&got).position(|(a, b)| a != b);
    assert!(at.is_none(), "restored disk differs at byte {at:?}");
}

async fn restore(
    c: &source_mover::client::RepoClient,
    id: &str,
    out: &Path,
    key: Option<Arc<MasterKey>>,
) -> source_mover::Result<()> {
    let m = resolve(c, id, None).await?;
    restore_with(c, &m, "disk0", Some(out), 8, false, key)
        .await
        .map(drop)
}

/// Byte strings searched for in the data directory, by what they are.
struct Needles {
    by_prefix: HashMap<[u8; 8], Vec<(String, Vec<u8>)>>,
}

impl Needles {
    fn new() -> Needles {
        Needles {
            by_prefix: HashMap::new(),
        }
    }

    fn add(&mut self, what: String, bytes: Vec<u8>) {
        assert!(bytes.len() >= 8);
        let p: [u8; 8] = bytes[..8].try_into().unwrap();
        self.by_prefix.entry(p).or_default().push((what, bytes));
    }

    /// The needles found in any file under `dir` (its contents or its path).
    fn found_under(&self, dir: &Path) -> Vec<String> {
        let mut found = Vec::new();
        for f in tests::files_under(dir) {
            let mut hay = std::fs::read(&f).unwrap_or_default();
            hay.push(b'\n');
            hay.extend_from_slice(f.to_string_lossy().as_bytes());
            for i in 0..hay.len().saturating_sub(8) {
                let p: [u8; 8] = hay[i..i + 8].try_into().unwrap();
                if let Some(v) = self.by_prefix.get(&p) {
                    for (what, n) in v {
                        if hay[i..].starts_with(n) {
                            found.push(format!("{what} in {}", f.display()));
                        }
                    }
                }
            }
        }
        found.sort();
        found.dedup();
        found
    }
}

/// The plaintext a repository must never hold: each stored block's blake3 (hex and raw), a
/// piece of incompressible file data, and guest file names.
fn plaintext_needles(want: &[u8], tree: &Path) -> Needles {
    let mut n = Needles::new();
    for (b, block) in want.chunks(MIB as usize).enumerate() {
        if block.iter().all(|&x| x == 0) {
            continue;
        }
        let h = blake3::hash(block);
        n.add(
            format!("blake3 of block {b} (hex)"),
            h.to_hex().as_bytes().to_vec(),
        );
        n.add(format!("blake3 of block {b} (raw)"), h.as_bytes().to_vec());
    }
    let large = std::fs::read(tree.join("srv/large.bin")).unwrap();
    for at in [100_000usize, 3_000_000, 5_000_000] {
        n.add(format!("large.bin at {at}"), large[at..at + 64].to_vec());
    }
    for name in ["large.bin", "note-17.txt", "blob-1.bin"] {
        n.add(format!("file name {name}"), name.as_bytes().to_vec());
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_full_and_cbt_incremental_restore_and_leave_no_plaintext_in_the_repository() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = image(d);
    let k = key();

    // Control: a plain backup of the same disk leaves the plaintext digests and data in its
    // repository, so the search below can find what it looks for.
    let plain_srv = TestServer::start().await;
    let pc = client(&plain_srv.url());
    backup(&pc, &opts("vm-plain", &img.path, &d.join("state-plain")))
        .await
        .unwrap();
    let want = expected(&img.path);
    let needles = plaintext_needles(&want, &img.tree);
    let in_plain = needles.found_under(&plain_srv.store_dir());
    assert!(
        in_plain
            .iter()
            .any(|f| f.contains("blake3 of block") && f.contains("(hex)")),
        "the control found no digest: {in_plain:?}"
    );
    assert!(
        in_plain.iter().any(|f| f.contains("large.bin at")),
        "the control found no data: {in_plain:?}"
    );
    plain_srv.stop().await;

    let srv = TestServer::start().await;
    let c = client(&srv.url());
    let mut o = opts("vm-enc", &img.path, &d.join("state"));
    o.encryption_key = Some(k.clone());
    let full = backup(&c, &o).await.unwrap();
    assert!(full.files_indexed > 150, "{}", full.files_indexed);
    let m = resolve(&c, &full.backup_id, None).await.unwrap();
    assert!(m.encrypted);
    assert_eq!(m.key_id(), Some(k.id_hex().as_str()));
    assert!(m.file_indexes.is_empty(), "no plaintext file index");
    assert!(m.encryption.as_ref().unwrap().file_index.is_some());
    let out = d.join("restored-full.raw");
    restore(&c, &full.backup_id, &out, Some(k.clone()))
        .await
        .unwrap();
    assert_same(&want, &out);

    // Day 2: 4 KiB of large.bin change, with a changed-block list counting from day 1.
    let src = source_mover::source::open(&img.path).unwrap();
    let plan = source_mover::plan::plan(src.as_ref(), &[]).unwrap();
    let large = plan
        .files
        .iter()
        .flat_map(|(_, e)| e)
        .find(|e| e.path == "/srv/large.bin")
        .unwrap()
        .clone();
    let [_, at, _] = large.extents[0];
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&img.path)
            .unwrap();
        f.write_all_at(&[0x5A; 4096], at).unwrap();
        f.sync_all().unwrap();
    }
    let cbt = d.join("cbt.json");
    let list = serde_json::json!({"base": full.backup_id, "changed": [[at, 4096]]});
    std::fs::write(&cbt, list.to_string()).unwrap();
    let mut o = opts("vm-enc", &img.path, &d.join("state"));
    o.encryption_key = Some(k.clone());
    o.cbt
        .insert("disk0".into(), source_mover::cbt::json_file(&cbt));
    let inc = backup(&c, &o).await.unwrap();
    assert_eq!(inc.base.as_deref(), Some(full.backup_id.as_str()));
    assert!(inc.read_bytes <= MIB, "read {}", inc.read_bytes);
    assert_eq!(inc.records, 1);
    let out = d.join("restored-inc.raw");
    restore(&c, &inc.backup_id, &out, Some(k.clone()))
        .await
        .unwrap();
    let want2 = expected(&img.path);
    assert_same(&want2, &out);

    // Nothing of either day's plaintext is in the data directory.
    let mut needles = plaintext_needles(&want, &img.tree);
    for (b, block) in want2.chunks(MIB as usize).enumerate() {
        if block.iter().any(|&x| x != 0) {
            let h = blake3::hash(block);
            needles.add(
                format!("day-2 blake3 of block {b}"),
                h.to_hex().as_bytes().to_vec(),
            );
        }
    }
    let found = needles.found_under(&srv.store_dir());
    assert!(found.is_empty(), "plaintext in the repository: {found:?}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_keys_never_dedup_and_one_key_dedups_with_itself() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = image(d);
    let srv = TestServer::start().await;
    let c = client(&srv.url());
    let (a, b) = (key(), key());
    let run = |k: Option<Arc<MasterKey>>, base: Base, state: &str| {
        let mut o = opts("vm-keys", &img.path, &d.join(state));
        o.encryption_key = k;
        o.base = base;
        o
    };
    let stats = |id: String| {
        let c = c.clone();
        async move {
            let m = resolve(&c, &id, None).await.unwrap();
            (
                m.stats.new_chunks,
                m.stats.reused_chunks,
                m.base.map(|b| b.to_string()),
            )
        }
    };
    let a1 = backup(&c, &run(Some(a.clone()), Base::None, "s1"))
        .await
        .unwrap();
    let (new1, reused1, _) = stats(a1.backup_id.clone()).await;
    assert!(new1 > 10 && reused1 == 0, "{new1} {reused1}");
    // The same key again, as a full backup: everything is found stored.
    let a2 = backup(&c, &run(Some(a.clone()), Base::None, "s2"))
        .await
        .unwrap();
    let (new2, reused2, _) = stats(a2.backup_id.clone()).await;
    assert_eq!((new2, reused2), (0, new1));
    // Another key: nothing is shared, and `latest` (a backup of key A) is no base for it.
    let b1 = backup(&c, &run(Some(b.clone()), Base::Latest, "s3"))
        .await
        .unwrap();
    let (new3, reused3, base3) = stats(b1.backup_id.clone()).await;
    assert_eq!((new3, reused3, base3), (new1, 0, None));
    // No key: nothing shared with either, and an encrypted base is no base for it.
    let p1 = backup(&c, &run(None, Base::Latest, "s4")).await.unwrap();
    let (new4, reused4, base4) = stats(p1.backup_id.clone()).await;
    assert_eq!((reused4, base4), (0, None));
    assert!(new4 > 10, "{new4}");
    // An encrypted incremental on that plain latest starts a new chain, a full backup...
    let a3 = backup(&c, &run(Some(a.clone()), Base::Latest, "s5"))
        .await
        .unwrap();
    assert_eq!(a3.base, None);
    // ... and one named by id is refused before anything is sent.
    let e = backup(
        &c,
        &run(Some(a.clone()), Base::Id(p1.backup_id.clone()), "s6"),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&e, Error::Refused(m) if m.contains("encryption")),
        "{e}"
    );
    // An incremental with the same key over its own latest builds on it.
    let a4 = backup(&c, &run(Some(a.clone()), Base::Latest, "s7"))
        .await
        .unwrap();
    assert_eq!(a4.base.as_deref(), Some(a3.backup_id.as_str()));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_a_sealed_chunk_is_found_by_both_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = image(d);
    let srv = TestServer::start().await;
    let c = client(&srv.url());
    let k = key();
    let mut o = opts("vm-rot", &img.path, &d.join("state"));
    o.encryption_key = Some(k.clone());
    let full = backup(&c, &o).await.unwrap();
    let m = resolve(&c, &full.backup_id, None).await.unwrap();
    // One chunk of the disk's index, flipped in the middle of its ciphertext.
    let index = c.disk_index(&full.backup_id, "disk0").await.unwrap();
    let victim = index
        .chunks_exact(32)
        .filter_map(schema::ChunkId::from_slice)
        .find(|i| !i.is_hole())
        .unwrap();
    let hex = victim.hex();
    let path: PathBuf = srv
        .store_dir()
        .join("chunks")
        .join(&hex[..2])
        .join(&hex[2..4])
        .join(&hex);
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(schema::sealed::is_sealed(&bytes));
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    // The mover's verify opens every chunk: the tag fails.
    let e = restore_with(&c, &m, "disk0", None, 8, false, Some(k.clone()))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Corrupt { chunk, message, .. } if *chunk == victim.to_string() && message.contains("AEAD")),
        "{e}"
    );
    // The server cannot open it, but the stored bytes no longer hash to the digest sent.
    let admin = Client::h2(&srv.url(), Some(ADMIN));
    let v = run_job(&admin, "verify").await;
    assert_eq!(
        v["result"]["corrupt"],
        serde_json::json!([victim.to_string()]),
        "{v}"
    );
    assert_eq!(
        v["result"]["affected_backups"],
        serde_json::json!([full.backup_id]),
        "{v}"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passphrase_wrong_key_and_missing_key_fail_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = image(d);
    let srv = TestServer::start_with(|c| c.nbd.listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let c = client(&srv.url());
    let k = key();
    let file = d.join("backup.key");
    k.save_new(&file, Some(b"s3cret passphrase")).unwrap();
    let e = MasterKey::load(&file, Some(b"not it")).unwrap_err();
    assert!(
        matches!(&e, Error::Refused(m) if m.contains("wrong passphrase")),
        "{e}"
    );
    let e = MasterKey::load(&file, None).unwrap_err();
    assert!(
        matches!(&e, Error::Refused(m) if m.contains("passphrase")),
        "{e}"
    );
    let loaded = Arc::new(MasterKey::load(&file, Some(b"s3cret passphrase")).unwrap());
    let mut o = opts("vm-keyed", &img.path, &d.join("state"));
    o.encryption_key = Some(loaded);
    let full = backup(&c, &o).await.unwrap();

    let out = d.join("never.raw");
    let e = restore(&c, &full.backup_id, &out, None).await.unwrap_err();
    assert!(
        matches!(&e, Error::Refused(m) if m.contains("is encrypted with key") && m.contains(&k.id_hex())),
        "{e}"
    );
    assert!(!out.exists(), "nothing written without the key");
    let e = restore(&c, &full.backup_id, &out, Some(key()))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Refused(m) if m.contains("not with the given key")),
        "{e}"
    );
    assert!(!out.exists(), "nothing written with a wrong key");
    // The server will not stream an encrypted disk.
    let reader = Client::h2(&srv.url(), Some(BACKUP_A));
    let r = reader
        .get(&format!("/v1/backups/{}/disks/disk0/image", full.backup_id))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "ENCRYPTED".to_string())
    );
    // Nor serve it as an NBD export.
    let r = reader
        .json(
            http::Method::POST,
            &format!("/v1/backups/{}/disks/disk0/exports", full.backup_id),
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "ENCRYPTED".to_string())
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_commands_work_through_the_mover_and_the_server_says_the_index_is_encrypted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = image(d);
    let srv = TestServer::start().await;
    let c = client(&srv.url());
    let k = key();
    let mut o = opts("vm-files", &img.path, &d.join("state"));
    o.encryption_key = Some(k.clone());
    let full = backup(&c, &o).await.unwrap();
    let fs = FileSystem::default();

    let l = files::list(&c, &full.backup_id, None, "/srv", 1, &fs, Some(&k))
        .await
        .unwrap();
    let names: Vec<&str> = l.entries.iter().map(|e| e.name.as_str()).collect();
    assert!(
        names.contains(&"large.bin") && names.contains(&"sparse.img"),
        "{names:?}"
    );
    let to = d.join("large.bin");
    let n = files::get_to(
        &c,
        "latest",
        Some("vm-files"),
        "/srv/large.bin",
        &fs,
        Some(&to),
        Some(&k),
    )
    .await
    .unwrap();
    assert_eq!(n, 6 * MIB);
    assert_eq!(
        std::fs::read(&to).unwrap(),
        std::fs::read(img.tree.join("srv/large.bin")).unwrap()
    );
    let sparse = d.join("sparse.img");
    files::get_to(
        &c,
        &full.backup_id,
        None,
        "/srv/sparse.img",
        &fs,
        Some(&sparse),
        Some(&k),
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::read(&sparse).unwrap(),
        std::fs::read(img.tree.join("srv/sparse.img")).unwrap()
    );
    let q = Search {
        name: "note-1?.txt".into(),
        ..Search::default()
    };
    let hits = files::search(&c, &q, 100, Some(&k)).await.unwrap();
    assert_eq!(hits.total, 10, "{hits:?}");
    assert!(hits.results.iter().all(|h| h.backup == full.backup_id));

    // Without the key the mover says which key is needed; the server cannot list names.
    let e = files::list(&c, &full.backup_id, None, "/", 1, &fs, None)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Refused(m) if m.contains(&k.id_hex())),
        "{e}"
    );
    let api = Client::h2(&srv.url(), Some(BACKUP_A));
    for path in [
        format!("/v1/backups/{}/files?path=/srv", full.backup_id),
        format!(
            "/v1/backups/{}/files/content?path=/srv/large.bin",
            full.backup_id
        ),
    ] {
        let r = api.get(&path).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::CONFLICT, "ENCRYPTED".to_string()),
            "{path}"
        );
        assert!(r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("encrypted"));
    }
    let r = api.get("/v1/search?name=large.bin").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["total"], 0, "{}", r.json());
    // The catalog shows the backup, encrypted, with its key id and sizes.
    let m = api
        .get(&format!("/v1/backups/{}", full.backup_id))
        .await
        .json();
    assert_eq!(m["encrypted"], true);
    assert_eq!(m["encryption"]["key_id"], k.id_hex());
    assert!(m["stats"]["logical_bytes"].as_u64().unwrap() > 0);
    srv.stop().await;
}

#[test]
fn key_commands_create_show_change_export_and_import() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = Command::new(tests::mover_binary());
        cmd.args(args)
            .env_remove(source_mover::key::PASSPHRASE_ENV)
            .env_remove(source_mover::key::NEW_PASSPHRASE_ENV);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let file = d.join("k.key");
    let f = file.to_str().unwrap();
    let pass = d.join("pass");
    std::fs::write(&pass, "first passphrase\n").unwrap();
    let p = pass.to_str().unwrap();
    // No passphrase and no --raw: refused.
    let (code, _, err) = run(&["key", "create", f], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("passphrase"), "{err}");
    assert!(!file.exists());
    let (code, out, err) = run(&["key", "create", f, "--passphrase-file", p], &[]);
    assert_eq!(code, Some(0), "{err}");
    let id = out.split_whitespace().nth(2).unwrap().to_owned();
    assert_eq!(id.len(), 16, "{out}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (code, _, _) = run(&["key", "create", f, "--raw"], &[]);
    assert_eq!(code, Some(2), "an existing key file is never overwritten");

    let (code, shown, err) = run(
        &["key", "show", f],
        &[("SOURCE_MOVER_PASSPHRASE", "first passphrase")],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        shown.contains(&id) && shown.contains("fingerprint"),
        "{shown}"
    );
    let fingerprint = shown
        .lines()
        .find(|l| l.starts_with("fingerprint"))
        .unwrap()
        .to_owned();
    let (code, _, err) = run(&["key", "show", f], &[("SOURCE_MOVER_PASSPHRASE", "wrong")]);
    assert_eq!(code, Some(2));
    assert!(err.contains("wrong passphrase"), "{err}");

    // A new passphrase: the old one no longer opens it, the key (id, fingerprint) is the same.
    let (code, _, err) = run(
        &["key", "change-passphrase", f, "--passphrase-file", p],
        &[("SOURCE_MOVER_NEW_PASSPHRASE", "second passphrase")],
    );
    assert_eq!(code, Some(0), "{err}");
    let (code, _, _) = run(&["key", "show", f, "--passphrase-file", p], &[]);
    assert_eq!(code, Some(2));
    let env = [("SOURCE_MOVER_PASSPHRASE", "second passphrase")];
    let (code, again, _) = run(&["key", "show", f], &env);
    assert_eq!(code, Some(0));
    assert!(again.contains(&fingerprint), "{again}");

    // The paper key makes the same key again; a wrong digit is caught.
    let (code, paper, err) = run(&["key", "export", f, "--paper"], &env);
    assert_eq!(code, Some(0), "{err}");
    let paper_file = d.join("paper.txt");
    std::fs::write(&paper_file, &paper).unwrap();
    let copy = d.join("copy.key");
    let (code, out, err) = run(
        &[
            "key",
            "import",
            copy.to_str().unwrap(),
            "--paper",
            paper_file.to_str().unwrap(),
            "--raw",
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&id), "{out}");
    let (_, copied, _) = run(&["key", "show", copy.to_str().unwrap()], &[]);
    assert!(copied.contains(&fingerprint), "{copied}");
    let line = paper.lines().find(|l| l.starts_with("smk1")).unwrap();
    let mut bad = line.as_bytes().to_vec();
    bad[7] = if bad[7] == b'0' { b'1' } else { b'0' };
    std::fs::write(&paper_file, &bad).unwrap();
    let (code, _, err) = run(
        &[
            "key",
            "import",
            d.join("bad.key").to_str().unwrap(),
            "--paper",
            paper_file.to_str().unwrap(),
            "--raw",
        ],
        &[],
    );
    assert_eq!(code, Some(2));
    assert!(err.contains("checksum"), "{err}");
}
