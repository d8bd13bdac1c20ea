//! The byte layouts of the catalog's keys (and of its plain-number values): the only place that
//! builds or parses a key. Integers in keys are big-endian (so keys sort by them); integers in
//! values are little-endian. The fixed-size records [`super::ChunkMeta`] and [`super::Pin`]
//! carry their own codecs beside their types. The layouts are the on-disk format: a change here
//! needs a migration, and the tests at the bottom pin them.
//!
//! Every function here is a pair: `x(..)` builds the key (or value) of a row, `parse_x` reads
//! one back (`None` for bytes the catalog never writes).

use schema::api::Manifest;
use schema::{ChunkId, SessionId};

// ---- sessions, pins, entries --------------------------------------------------------------

/// `pins`: session (16) + chunk (32).
pub(super) fn pin(s: &SessionId, c: &ChunkId) -> [u8; 48] {
    let mut k = [0u8; 48];
    k[..16].copy_from_slice(&s.0);
    k[16..].copy_from_slice(&c.0);
    k
}

/// A `pins` key back as (session, chunk).
pub(super) fn parse_pin(k: &[u8]) -> Option<(SessionId, ChunkId)> {
    let s = <[u8; 16]>::try_from(k.get(..16)?).ok()?;
    Some((SessionId(s), ChunkId::from_slice(&k[16..])?))
}

/// `entries`: session (16) + disk index (2) + first record number (8).
pub(super) fn entries(s: &SessionId, disk: u16, start: u64) -> [u8; 26] {
    let mut k = [0u8; 26];
    k[..16].copy_from_slice(&s.0);
    k[16..18].copy_from_slice(&disk.to_be_bytes());
    k[18..].copy_from_slice(&start.to_be_bytes());
    k
}

/// An `entries` key back as (session, disk index, first record number).
pub(super) fn parse_entries(k: &[u8]) -> Option<(SessionId, u16, u64)> {
    if k.len() != 26 {
        return None;
    }
    let s = SessionId(k[..16].try_into().ok()?);
    let disk = u16::from_be_bytes(k[16..18].try_into().ok()?);
    let start = u64::from_be_bytes(k[18..26].try_into().ok()?);
    Some((s, disk, start))
}

/// The key range `[start, end)` holding every pin and record run of a session (both column
/// families start their keys with the session id).
pub(super) fn session_range(s: &SessionId) -> ([u8; 16], Vec<u8>) {
    let mut end = s.0.to_vec();
    end.extend_from_slice(&[0xff; 40]);
    (s.0, end)
}

// ---- chunks, owners, marks, verified ----------------------------------------------------

/// `owners`: tenant + 0x00 + chunk (32).
pub(super) fn owner(tenant: &str, c: &ChunkId) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + 33);
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(&c.0);
    k
}

/// An `owners` key back as (tenant, chunk).
pub(super) fn parse_owner(k: &[u8]) -> Option<(String, ChunkId)> {
    let split = k.len().checked_sub(33)?;
    if k[split] != 0 {
        return None;
    }
    let tenant = std::str::from_utf8(&k[..split]).ok()?.to_owned();
    Some((tenant, ChunkId::from_slice(&k[split + 1..])?))
}

// ---- backups and their time index -------------------------------------------------------

/// The three `backup_time` keys of one backup: `a` ms id (all), `t` tenant 0 ms id (a tenant's),
/// `s` tenant 0 source 0 ms id (a source's). Times below 0 count as 0.
pub(super) fn backup_time(m: &Manifest, created_ms: i64) -> [Vec<u8>; 3] {
    let suffix = time_suffix(created_ms, m.id.as_str());
    let mut a = time_prefix_all();
    a.extend_from_slice(&suffix);
    let mut t = time_prefix_tenant(&m.tenant);
    t.extend_from_slice(&suffix);
    let mut s = time_prefix_source(&m.tenant, &m.source);
    s.extend_from_slice(&suffix);
    [a, t, s]
}

/// The prefix of the time index of every backup.
pub(super) fn time_prefix_all() -> Vec<u8> {
    vec![b'a']
}

/// The prefix of the time index of one tenant's backups.
pub(super) fn time_prefix_tenant(tenant: &str) -> Vec<u8> {
    let mut k = vec![b't'];
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k
}

/// The prefix of the time index of one source's backups.
pub(super) fn time_prefix_source(tenant: &str, source: &str) -> Vec<u8> {
    let mut k = vec![b's'];
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(source.as_bytes());
    k.push(0);
    k
}

/// What follows the prefix: ms (8) + backup id. With an empty id, the position just before
/// every backup made at `ms`.
pub(super) fn time_suffix(ms: i64, id: &str) -> Vec<u8> {
    let mut k = (ms.max(0) as u64).to_be_bytes().to_vec();
    k.extend_from_slice(id.as_bytes());
    k
}

/// A suffix back as (ms, id); an id that is not UTF-8 reads as empty.
pub(super) fn parse_time_suffix(rest: &[u8]) -> Option<(i64, &str)> {
    let ms = i64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
    Some((ms, std::str::from_utf8(&rest[8..]).unwrap_or("")))
}

// ---- guest files, names, name_set -------------------------------------------------------

/// Prefix of a backup's rows in `files` (all its disks and partitions): backup 0.
pub(super) fn files_of_backup(backup: &str) -> Vec<u8> {
    let mut k = backup.as_bytes().to_vec();
    k.push(0);
    k
}

/// The end (exclusive) of [`files_of_backup`]'s range: backup 1.
pub(super) fn files_of_backup_end(backup: &str) -> Vec<u8> {
    let mut k = backup.as_bytes().to_vec();
    k.push(1);
    k
}

/// Prefix of one file system's rows in `files` (backup 0 disk 0 partition (4)), or of one
/// directory's when `parent` is given (… parent 0).
pub(super) fn files_prefix(backup: &str, disk: &str, part: u32, parent: Option<&str>) -> Vec<u8> {
    let mut k = files_of_backup(backup);
    k.extend_from_slice(disk.as_bytes());
    k.push(0);
    k.extend_from_slice(&part.to_be_bytes());
    if let Some(p) = parent {
        k.extend_from_slice(p.as_bytes());
        k.push(0);
    }
    k
}

/// The `files` key of one entry: its directory's prefix, then its name.
pub(super) fn file(backup: &str, disk: &str, part: u32, parent: &str, name: &str) -> Vec<u8> {
    let mut k = files_prefix(backup, disk, part, Some(parent));
    k.extend_from_slice(name.as_bytes());
    k
}

/// The `names` key of one entry: tenant 0 name 0 !ms (8) backup 0 disk 0 partition (4) path.
/// The inverted time puts the rows of one name newest first.
pub(super) fn name(
    tenant: &str,
    name: &str,
    created_ms: i64,
    backup: &str,
    disk: &str,
    part: u32,
    path: &str,
) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + name.len() + backup.len() + path.len() + 24);
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k.extend_from_slice(&(!(created_ms.max(0) as u64)).to_be_bytes());
    k.extend_from_slice(backup.as_bytes());
    k.push(0);
    k.extend_from_slice(disk.as_bytes());
    k.push(0);
    k.extend_from_slice(&part.to_be_bytes());
    k.extend_from_slice(path.as_bytes());
    k
}

/// The prefix of every `names` row of one (tenant, name): tenant 0 name 0.
pub(super) fn name_rows(tenant: &str, name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + name.len() + 2);
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(name);
    k.push(0);
    k
}

/// The parts of a `names` key after the tenant, borrowed from it.
#[derive(Debug, Clone, Copy)]
pub(super) struct NameKey<'a> {
    pub name: &'a [u8],
    pub created_ms: i64,
    pub backup: &'a [u8],
    pub disk: &'a [u8],
    pub partition: u32,
    pub path: &'a [u8],
}

/// A `names` key of a tenant whose name is `tenant_len` bytes long, back in parts.
pub(super) fn parse_name(tenant_len: usize, k: &[u8]) -> Option<NameKey<'_>> {
    let rest = k.get(tenant_len + 1..)?;
    let z = rest.iter().position(|&b| b == 0)?;
    let name = &rest[..z];
    let rest = &rest[z + 1..];
    let ms = !u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
    let rest = &rest[8..];
    let z = rest.iter().position(|&b| b == 0)?;
    let backup = &rest[..z];
    let rest = &rest[z + 1..];
    let z = rest.iter().position(|&b| b == 0)?;
    let disk = &rest[..z];
    let rest = &rest[z + 1..];
    let partition = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
    Some(NameKey {
        name,
        created_ms: ms as i64,
        backup,
        disk,
        partition,
        path: &rest[4..],
    })
}

/// The `name_set` key of the `names` key `k`: the key up to its second zero (tenant 0 name).
pub(super) fn name_set_of_name(k: &[u8]) -> Option<&[u8]> {
    let t = k.iter().position(|&b| b == 0)?;
    let n = k[t + 1..].iter().position(|&b| b == 0)?;
    Some(&k[..t + 1 + n])
}

/// A `names` value: size (8) + mtime (8).
pub(super) fn name_value(size: u64, mtime: i64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&size.to_le_bytes());
    v[8..].copy_from_slice(&mtime.to_le_bytes());
    v
}

/// A `names` value back as (size, mtime).
pub(super) fn parse_name_value(v: &[u8]) -> Option<(u64, i64)> {
    Some((
        u64::from_le_bytes(v.get(..8)?.try_into().ok()?),
        i64::from_le_bytes(v.get(8..16)?.try_into().ok()?),
    ))
}

/// `name_set`: tenant 0 name.
pub(super) fn name_set(tenant: &str, name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + name.len() + 1);
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(name);
    k
}

/// A `name_set` key back as (tenant, name).
pub(super) fn parse_name_set(k: &[u8]) -> Option<(String, String)> {
    let z = k.iter().position(|&b| b == 0)?;
    let tenant = std::str::from_utf8(&k[..z]).ok()?;
    let name = std::str::from_utf8(&k[z + 1..]).ok()?;
    Some((tenant.to_owned(), name.to_owned()))
}

// ---- integers ---------------------------------------------------------------------------

/// An i64 value (counters, verified times): 8 bytes little-endian; other lengths read as 0.
pub(super) fn parse_i64(b: &[u8]) -> i64 {
    b.try_into().map(i64::from_le_bytes).unwrap_or(0)
}

/// A u64 value: 8 bytes little-endian; other lengths read as 0.
pub(super) fn parse_u64(b: &[u8]) -> u64 {
    b.try_into().map(u64::from_le_bytes).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cid(n: u8) -> ChunkId {
        ChunkId([n; 32])
    }

    /// The layouts are the on-disk format: these bytes are what catalogs already hold.
    #[test]
    fn layouts_are_the_on_disk_format() {
        let s = SessionId([7; 16]);
        let p = pin(&s, &cid(9));
        assert_eq!((&p[..16], &p[16..]), (&[7u8; 16][..], &[9u8; 32][..]));
        assert_eq!(parse_pin(&p), Some((s, cid(9))));

        let e = entries(&s, 0x0102, 0x0304);
        assert_eq!(&e[16..], &[1, 2, 0, 0, 0, 0, 0, 0, 3, 4]);
        assert_eq!(parse_entries(&e), Some((s, 0x0102, 0x0304)));

        let o = owner("acme", &cid(3));
        assert_eq!(&o[..5], b"acme\0");
        assert_eq!(parse_owner(&o), Some(("acme".into(), cid(3))));
        assert_eq!(parse_owner(&o[1..]), Some(("cme".into(), cid(3))));
        assert_eq!(parse_owner(&[0; 32]), None);

        let n = name("t", "f.txt", 1, "b", "d", 2, "/x/f.txt");
        let mut want = b"t\0f.txt\0".to_vec();
        want.extend_from_slice(&(!1u64).to_be_bytes());
        want.extend_from_slice(b"b\0d\0\0\0\0\x02/x/f.txt");
        assert_eq!(n, want);
        let k = parse_name(1, &n).expect("parses");
        assert_eq!(
            (k.name, k.created_ms, k.backup, k.disk, k.partition, k.path),
            (&b"f.txt"[..], 1, &b"b"[..], &b"d"[..], 2, &b"/x/f.txt"[..])
        );
        assert_eq!(name_set_of_name(&n), Some(&b"t\0f.txt"[..]));
        assert!(n.starts_with(&name_rows("t", b"f.txt")));
        assert_eq!(name_set("t", b"f.txt"), b"t\0f.txt");
        assert_eq!(
            parse_name_set(b"t\0f.txt"),
            Some(("t".into(), "f.txt".into()))
        );

        assert_eq!(file("b", "d", 1, "/x", "f"), b"b\0d\0\0\0\0\x01/x\0f");
        assert!(files_of_backup("b") < files_prefix("b", "d", 0, None));
        assert!(files_prefix("b", "\u{10ffff}", u32::MAX, Some("/z")) < files_of_backup_end("b"));

        assert_eq!(parse_name_value(&name_value(7, -8)), Some((7, -8)));
    }

    /// Time keys sort by time within each index, and a suffix with an empty id sits just
    /// below every backup of that millisecond.
    #[test]
    fn time_keys_sort_by_time_within_each_index() {
        assert_eq!(time_prefix_all(), b"a");
        assert_eq!(time_prefix_tenant("t"), b"tt\0");
        assert_eq!(time_prefix_source("t", "s"), b"st\0s\0");
        assert!(time_suffix(1, "zz") < time_suffix(2, ""));
        assert!(time_suffix(2, "") < time_suffix(2, "a"));
        assert_eq!(time_suffix(-5, "x"), time_suffix(0, "x"));
        assert_eq!(parse_time_suffix(&time_suffix(9, "id")), Some((9, "id")));
    }
}
