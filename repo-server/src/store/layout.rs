//! The layout of the stores that keep a tree of files — the local directory ([`super::local`])
//! and the gateway's SMB share, which share it so a share can be copied to a disk and served
//! locally:
//!
//! ```text
//! chunks/ab/cd/<64 hex>     one zstd frame per chunk (two fan-out levels)
//! indexes/ab/<64 hex>       one 32-byte id per block of a committed disk (one level)
//! manifests/<backup id>.json
//! tmp/                      writes in progress
//! quarantine/<64 hex>       suspect blobs moved aside
//! ```
//!
//! Listing such a tree in [`Page`]s ([`list_tree`], [`list_manifests`]) keeps the contract's
//! order: fan-out directories are walked in name order and each leaf's ids sorted, so the ids
//! come out ascending; a page costs the directories on the way to `after` and one leaf's names
//! at a time.

use std::io;

use schema::{BackupId, ChunkId};

use super::Page;

/// Chunk frames: the directory and its fan-out levels.
pub const CHUNKS: (&str, usize) = ("chunks", 2);
/// Index blobs: the directory and its fan-out levels.
pub const INDEXES: (&str, usize) = ("indexes", 1);
/// Manifests.
pub const MANIFESTS: &str = "manifests";
/// Temp files of writes in progress.
pub const TMP: &str = "tmp";
/// Blobs moved aside.
pub const QUARANTINE: &str = "quarantine";

/// The path of blob `id` inside its store's directory, with `levels` fan-out directories of
/// two hex digits each (`ab/cd/<hex>` for two).
pub fn blob_path(id: &ChunkId, levels: usize) -> String {
    let hex = id.hex();
    let mut p = String::with_capacity(hex.len() + 3 * levels);
    for level in 0..levels {
        p.push_str(&hex[level * 2..level * 2 + 2]);
        p.push('/');
    }
    p.push_str(&hex);
    p
}

/// The file name of the manifest of `id`.
pub fn manifest_name(id: &BackupId) -> String {
    format!("{id}.json")
}

/// The backup whose manifest file is `name`, if it is one.
pub fn manifest_id(name: &str) -> Option<BackupId> {
    name.strip_suffix(".json").and_then(|n| n.parse().ok())
}

/// The entries of one directory of a tree: (name, is a directory), without `.` and `..`;
/// empty when the directory does not exist. `dir` is relative to the tree's root (`""` for the
/// root, then `ab`, `ab/cd`).
pub type ReadDir<'a> = dyn FnMut(&str) -> io::Result<Vec<(String, bool)>> + 'a;

/// One page of the blob ids in a fan-out tree of `levels` levels, read with `read_dir`: at most
/// `limit` ids after `after`, ascending.
///
/// # Errors
/// Errors of `read_dir`.
pub fn list_tree(
    levels: usize,
    after: Option<&ChunkId>,
    limit: usize,
    read_dir: &mut ReadDir<'_>,
) -> io::Result<Page<ChunkId>> {
    let limit = limit.max(1);
    let after_hex = after.map(ChunkId::hex);
    let mut out = Vec::new();
    let mut walk = Walk {
        levels,
        after,
        after_hex: after_hex.as_deref(),
        limit,
        read_dir,
        out: &mut out,
    };
    walk.dir("", 0, after.is_some())?;
    Ok(Page::of(out, limit))
}

struct Walk<'a, 'b> {
    levels: usize,
    after: Option<&'a ChunkId>,
    after_hex: Option<&'a str>,
    limit: usize,
    read_dir: &'a mut ReadDir<'b>,
    out: &'a mut Vec<ChunkId>,
}

impl Walk<'_, '_> {
    /// Lists `dir` at `depth`; `on_path` says whether `dir` is on the way to `after` (only then
    /// may it hold ids at or before it).
    fn dir(&mut self, dir: &str, depth: usize, on_path: bool) -> io::Result<()> {
        let entries = (self.read_dir)(dir)?;
        if depth == self.levels {
            let mut ids: Vec<ChunkId> = entries
                .into_iter()
                .filter_map(|(name, _)| schema::id::from_hex::<32>(&name).map(ChunkId))
                .filter(|id| !on_path || self.after.is_none_or(|a| id > a))
                .collect();
            ids.sort_unstable();
            ids.truncate(self.limit - self.out.len());
            self.out.extend(ids);
            return Ok(());
        }
        let mut subs: Vec<String> = entries
            .into_iter()
            .filter(|(name, is_dir)| *is_dir && is_fanout_name(name))
            .map(|(name, _)| name)
            .collect();
        subs.sort_unstable();
        let bound = self
            .after_hex
            .filter(|_| on_path)
            .map(|h| &h[depth * 2..depth * 2 + 2]);
        for sub in subs {
            let on_path = match bound {
                Some(b) if sub.as_str() < b => continue,
                Some(b) => sub == b,
                None => false,
            };
            let path = if dir.is_empty() {
                sub
            } else {
                format!("{dir}/{sub}")
            };
            self.dir(&path, depth + 1, on_path)?;
            if self.out.len() >= self.limit {
                break;
            }
        }
        Ok(())
    }
}

/// Whether `name` is a fan-out directory: two lowercase hex digits.
fn is_fanout_name(name: &str) -> bool {
    name.len() == 2
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// One page of the manifests among the file `names` of the manifest directory: at most `limit`
/// backups whose file name sorts after `after`'s, in file-name order.
pub fn list_manifests(
    names: Vec<String>,
    after: Option<&BackupId>,
    limit: usize,
) -> Page<BackupId> {
    let limit = limit.max(1);
    let after = after.map(manifest_name);
    let mut names: Vec<String> = names
        .into_iter()
        .filter(|n| after.as_ref().is_none_or(|a| n > a))
        .filter(|n| manifest_id(n).is_some())
        .collect();
    names.sort_unstable();
    names.truncate(limit);
    Page::of(names.iter().filter_map(|n| manifest_id(n)).collect(), limit)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn paths_fan_out_by_hex_prefix() {
        let id = ChunkId::of(b"x");
        let hex = id.hex();
        assert_eq!(
            blob_path(&id, 2),
            format!("{}/{}/{hex}", &hex[..2], &hex[2..4])
        );
        assert_eq!(blob_path(&id, 0), hex);
        let b: BackupId = "20261125T000000Z-00000001".parse().expect("id");
        assert_eq!(manifest_id(&manifest_name(&b)), Some(b));
        assert_eq!(manifest_id("x.tmp"), None);
    }

    /// A fake tree of directories, listed page by page, gives every id once, in order.
    #[test]
    fn a_tree_lists_in_id_order_page_by_page() {
        let ids: Vec<ChunkId> = (0..300u32).map(|i| ChunkId::of(&i.to_le_bytes())).collect();
        let mut tree: BTreeMap<String, Vec<(String, bool)>> = BTreeMap::new();
        for id in &ids {
            let p = blob_path(id, 2);
            let parts: Vec<&str> = p.split('/').collect();
            let mut dir = String::new();
            for (i, part) in parts.iter().enumerate() {
                let entry = (part.to_string(), i + 1 < parts.len());
                let e = tree.entry(dir.clone()).or_default();
                if !e.contains(&entry) {
                    e.push(entry);
                }
                dir = if dir.is_empty() {
                    part.to_string()
                } else {
                    format!("{dir}/{part}")
                };
            }
        }
        // Noise the listing must skip.
        tree.entry(String::new())
            .or_default()
            .extend([("tmp".into(), true), ("README".into(), false)]);
        let mut read_dir = |d: &str| -> io::Result<Vec<(String, bool)>> {
            Ok(tree.get(d).cloned().unwrap_or_default())
        };
        let mut want = ids.clone();
        want.sort();
        for limit in [1, 7, 64, 300, 1000] {
            let mut got = Vec::new();
            let mut after = None;
            loop {
                let page = list_tree(2, after.as_ref(), limit, &mut read_dir).expect("page");
                assert!(page.ids.len() <= limit);
                got.extend(page.ids);
                match page.next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            assert_eq!(got, want, "limit {limit}");
        }
        // Starting after an id that is not stored.
        let page = list_tree(2, Some(&ChunkId([0xff; 32])), 10, &mut read_dir).expect("page");
        assert_eq!(
            page,
            Page {
                ids: vec![],
                next: None
            }
        );
    }

    #[test]
    fn manifests_list_in_name_order() {
        let names: Vec<String> = ["b.json", "a.json", "a.b.json", "c.tmp", "d.json"]
            .into_iter()
            .map(String::from)
            .collect();
        let p = list_manifests(names.clone(), None, 2);
        let s = |p: &Page<BackupId>| p.ids.iter().map(|b| b.to_string()).collect::<Vec<_>>();
        assert_eq!(s(&p), ["a.b", "a"]);
        let p = list_manifests(names.clone(), p.next.as_ref(), 2);
        assert_eq!(s(&p), ["b", "d"]);
        let p = list_manifests(names, p.next.as_ref(), 2);
        assert_eq!((s(&p).len(), p.next), (0, None));
    }
}
