//! The store conformance suite: the contract of `repo_server::store` (durable put-if-absent,
//! replace, get/stream/len, idempotent delete, list in pages, quarantine, manifests; concurrent writers;
//! nothing left half-written) checked against every implementation: the local directory of
//! `repo-server` and the gateway's SMB share on a real Samba server.

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::path::Path;
use std::sync::Arc;

use gateway::samba::Samba;
use gateway::share::Share;
use repo_server::repo::Stores;
use repo_server::store::{list_all, pages, Page};
use schema::{BackupId, ChunkId};
use tests::images::noise;

fn blob(n: usize, seed: u64) -> (ChunkId, Vec<u8>) {
    let b = noise(n, seed);
    (ChunkId::of(&b), b)
}

/// Every rule of the contract, on `s`; `tmp_files` counts what is left in the temp directory.
fn conformance(s: &Stores, tmp_files: &dyn Fn() -> usize) {
    let (id, a) = blob(100_000, 1);
    // Put if absent.
    assert!(s.chunks.put(&id, &a).unwrap(), "first put stores");
    assert!(
        !s.chunks.put(&id, b"other").unwrap(),
        "second put is a no-op"
    );
    assert_eq!(s.chunks.get(&id).unwrap(), a);
    assert_eq!(s.chunks.len(&id).unwrap(), Some(a.len() as u64));
    // Replace, whole.
    let b = noise(70_000, 2);
    s.chunks.replace(&id, &b).unwrap();
    assert_eq!(s.chunks.get(&id).unwrap(), b);
    // Absent names.
    let (absent, _) = blob(10, 3);
    assert_eq!(
        s.chunks.get(&absent).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(s.chunks.len(&absent).unwrap(), None);
    s.chunks.delete(&absent).unwrap();
    s.chunks.quarantine(&absent).unwrap();
    // Streaming equals reading, for a blob larger than one piece.
    let (big, bb) = blob(3 << 20 | 17, 4);
    s.indexes.put(&big, &bb).unwrap();
    let mut streamed = Vec::new();
    s.indexes
        .stream(&big, &mut |p| {
            streamed.extend_from_slice(p);
            Ok(())
        })
        .unwrap();
    assert!(streamed == bb, "stream = get");
    // Two stores, two namespaces.
    assert_eq!(s.chunks.len(&big).unwrap(), None);
    // Many names across the fan-out directories; list says exactly which.
    let mut want: BTreeSet<ChunkId> = BTreeSet::from([id]);
    for i in 0..60u64 {
        let (c, d) = blob(1000 + i as usize, 100 + i);
        assert!(s.chunks.put(&c, &d).unwrap());
        want.insert(c);
    }
    let listed: BTreeSet<ChunkId> = list_all(|a, n| s.chunks.list(a, n))
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(listed, want);
    // In pages: ascending, each id once, `next` until the end.
    let paged: Vec<ChunkId> = pages(7, |a, n| s.chunks.list(a, n))
        .inspect(|p| assert!(p.as_ref().unwrap().len() <= 7))
        .flat_map(Result::unwrap)
        .collect();
    assert_eq!(paged, want.iter().copied().collect::<Vec<_>>());
    let first = s.chunks.list(None, 3).unwrap();
    assert_eq!(first.ids.len(), 3);
    assert_eq!(first.next.as_ref(), first.ids.last());
    let rest = s.chunks.list(first.next.as_ref(), 1000).unwrap();
    assert_eq!((rest.ids.len(), rest.next), (want.len() - 3, None));
    assert_eq!(
        s.chunks.list(want.last(), 10).unwrap(),
        Page {
            ids: vec![],
            next: None
        }
    );
    // Delete is idempotent; quarantine moves aside.
    let victim = *want.iter().nth(5).unwrap();
    s.chunks.delete(&victim).unwrap();
    s.chunks.delete(&victim).unwrap();
    assert_eq!(s.chunks.len(&victim).unwrap(), None);
    let suspect = *want.iter().nth(6).unwrap();
    s.chunks.quarantine(&suspect).unwrap();
    assert_eq!(s.chunks.len(&suspect).unwrap(), None);
    assert_eq!(
        list_all(|a, n| s.chunks.list(a, n)).unwrap().len(),
        want.len() - 2
    );
    // Manifests: write, replace, list, read, delete (twice).
    let m1: BackupId = "20261125T000000Z-00000001".parse().unwrap();
    let m2: BackupId = "20261125T000001Z-00000002".parse().unwrap();
    let manifests = || list_all(|a, n| s.manifests.list_manifests(a, n)).unwrap();
    assert!(manifests().is_empty());
    s.manifests.put_manifest(&m1, b"{\"v\":1}").unwrap();
    s.manifests.put_manifest(&m1, b"{\"v\":2}").unwrap();
    s.manifests.put_manifest(&m2, b"{}").unwrap();
    let mut l = manifests();
    l.sort();
    assert_eq!(l, vec![m1.clone(), m2.clone()]);
    let one = s.manifests.list_manifests(None, 1).unwrap();
    assert_eq!(one.ids.len(), 1);
    let two = s.manifests.list_manifests(one.next.as_ref(), 1).unwrap();
    assert_ne!(one.ids, two.ids, "the second page starts after the first");
    assert_eq!(s.manifests.get_manifest(&m1).unwrap(), b"{\"v\":2}");
    s.manifests.delete_manifest(&m1).unwrap();
    s.manifests.delete_manifest(&m1).unwrap();
    assert_eq!(
        s.manifests.get_manifest(&m1).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(manifests(), vec![m2]);
    // Concurrent writers, overlapping names: every name ends up whole.
    let names: Vec<(ChunkId, Vec<u8>)> = (0..40).map(|i| blob(50_000, 1000 + i)).collect();
    let names = Arc::new(names);
    std::thread::scope(|sc| {
        for t in 0..8 {
            let (names, chunks) = (names.clone(), s.chunks.clone());
            sc.spawn(move || {
                for i in 0..names.len() {
                    let (c, d) = &names[(i + t * 5) % names.len()];
                    chunks.put(c, d).unwrap();
                }
            });
        }
    });
    for (c, d) in names.iter() {
        assert!(
            &s.chunks.get(c).unwrap() == d,
            "{c} whole after racing puts"
        );
    }
    assert_eq!(tmp_files(), 0, "nothing left half-written in tmp/");
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn local_directory_keeps_the_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let s = Stores::local(dir.path()).unwrap();
    assert_eq!(s.chunks.kind(), "local");
    conformance(&s, &|| count(&dir.path().join("tmp")));
    // The layout the design names.
    assert!(dir.path().join("manifests").is_dir());
    assert!(count(&dir.path().join("quarantine")) == 1);
}

#[test]
fn smb_share_keeps_the_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let samba = Samba::start(dir.path()).unwrap();
    let share = Arc::new(Share::open(&samba.share_config("repo/one")).unwrap());
    let s = gateway::stores(&share);
    assert_eq!(s.chunks.kind(), "smb");
    let root = samba.share_dir().join("repo/one");
    conformance(&s, &|| count(&root.join("tmp")));
    // The files on the share are the local layout: chunks/ab/cd/<hex>, one zstd frame each.
    let (id, _) = blob(100_000, 1);
    let hex = id.hex();
    assert!(root
        .join("chunks")
        .join(&hex[..2])
        .join(&hex[2..4])
        .join(&hex)
        .is_file());
    assert_eq!(count(&root.join("quarantine")), 1);
    assert!(root
        .join("manifests/20261125T000001Z-00000002.json")
        .is_file());
    // The password may come from a credentials file (its first line) instead of the config.
    let cred = dir.path().join("smb.pass");
    std::fs::write(&cred, format!("{}\nignored\n", gateway::samba::PASSWORD)).unwrap();
    let mut from_file = samba.share_config("repo/one");
    from_file.password = None;
    from_file.credentials_file = Some(cred);
    let s2 = gateway::stores(&Arc::new(Share::open(&from_file).unwrap()));
    assert_eq!(
        s2.chunks.get(&id).unwrap().len(),
        70_000,
        "the replaced blob, read again"
    );
    let mut neither = samba.share_config("repo");
    neither.password = None;
    let e = Share::open(&neither).unwrap_err().to_string();
    assert!(e.contains("password or credentials_file"), "{e}");
    // Wrong credentials and a missing share are refused at open, naming the cause.
    let mut bad = samba.share_config("repo");
    bad.password = Some("wrong".into());
    let e = Share::open(&bad).unwrap_err().to_string();
    assert!(e.contains("connecting"), "{e}");
    let mut bad = samba.share_config("repo");
    bad.share = "nope".into();
    assert!(Share::open(&bad).is_err());
}
