//! The guest file index: what the source mover found inside each ext2/3/4 file system of a disk,
//! uploaded with the backup (as ordinary chunks, one JSON object per line) and turned by the
//! repository into a searchable catalog.

use serde::{Deserialize, Serialize};

/// What kind of object an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Device, FIFO or socket.
    Other,
}

/// One object of a guest file system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Absolute path inside the file system (`/etc/hosts`), `/`-separated, never `/` itself.
    pub path: String,
    /// Kind.
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
    /// `st_mode` (type and permission bits).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, Unix seconds.
    pub mtime: i64,
    /// Matched an `--exclude` pattern: listed, but its data was not backed up.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub excluded: bool,
    /// For regular files: `[offset in the file, offset on the disk, length]` runs, sorted by
    /// file offset; bytes of the file outside every run read as zeros (sparse files,
    /// unwritten extents).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extents: Vec<[u64; 3]>,
    /// Data the file system keeps inside the inode (fast symlink targets), when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<String>,
}

impl FileEntry {
    /// The directory holding the entry (`/etc` for `/etc/hosts`, `/` for `/etc`).
    pub fn parent(&self) -> &str {
        split(&self.path).0
    }

    /// The entry's own name (`hosts`).
    pub fn name(&self) -> &str {
        split(&self.path).1
    }
}

/// Matches one path segment (a file name) against a glob: `*` any run of bytes, `?` one byte.
pub fn name_match(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(b'*') => (0..=s.len()).any(|k| name_match(&p[1..], &s[k..])),
        Some(b'?') => !s.is_empty() && name_match(&p[1..], &s[1..]),
        Some(c) => s.first() == Some(c) && name_match(&p[1..], &s[1..]),
    }
}

/// Whether the file system a guest file index came from (its probe's name, as in
/// [`crate::api::FileIndexRef::fs`]) matches paths case-insensitively: NTFS, as Windows does.
/// Every other (ext2/3/4, or an index from before the name was recorded) is case-sensitive.
pub fn case_insensitive(fs: Option<&str>) -> bool {
    fs.is_some_and(|f| f.eq_ignore_ascii_case("ntfs"))
}

/// `s` with each character upper-cased where Unicode maps it to exactly one character (NTFS's
/// `$UpCase` maps each UTF-16 unit to one; `ß` stays `ß`). Two names are the same on a
/// case-insensitive file system when their folds are equal.
pub fn fold(s: &str) -> String {
    s.chars()
        .map(|c| {
            let mut u = c.to_uppercase();
            match (u.next(), u.next()) {
                (Some(x), None) => x,
                _ => c,
            }
        })
        .collect()
}

/// Whether names or paths `a` and `b` are the same on a file system that is case-insensitive
/// when `ci` (the one comparison every catalog lookup uses): byte-equal, or equal after
/// [`fold`].
pub fn same_name(a: &str, b: &str, ci: bool) -> bool {
    a == b || (ci && fold(a) == fold(b))
}

/// [`name_match`] of glob `glob` against name `name`, ignoring case when `ci`.
pub fn name_match_in(glob: &str, name: &str, ci: bool) -> bool {
    name_match(glob.as_bytes(), name.as_bytes())
        || (ci && name_match(fold(glob).as_bytes(), fold(name).as_bytes()))
}

/// The part of a glob before its first wildcard (what a name index can seek to).
pub fn literal_prefix(glob: &str) -> &str {
    &glob[..glob.find(['*', '?']).unwrap_or(glob.len())]
}

/// Splits an absolute path into (parent directory, name).
pub fn split(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(0) => ("/", &path[1..]),
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("/", path),
    }
}

/// Whether `path` is a well-formed absolute path as the index stores it: starts with `/`, no
/// empty, `.` or `..` segment, no NUL, not `/` itself, at most 4096 bytes.
pub fn valid_path(path: &str) -> bool {
    path.len() > 1
        && path.len() <= 4096
        && path.starts_with('/')
        && !path.contains('\0')
        && path[1..]
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(split("/etc/hosts"), ("/etc", "hosts"));
        assert_eq!(split("/etc"), ("/", "etc"));
        assert!(valid_path("/a/b"));
        for bad in ["/", "", "a/b", "/a//b", "/a/../b", "/a/./b", "/a/"] {
            assert!(!valid_path(bad), "{bad}");
        }
    }

    #[test]
    fn case_folding() {
        assert!(case_insensitive(Some("NTFS")) && !case_insensitive(Some("ext2/3/4")));
        assert!(!case_insensitive(None));
        assert!(same_name("/Windows/System32", "/WINDOWS/system32", true));
        assert!(!same_name("/Windows/System32", "/WINDOWS/system32", false));
        assert!(same_name("/Users/Zoë", "/users/ZOË", true));
        assert!(!same_name("/straße", "/STRASSE", true));
        assert!(name_match_in("*.SYS", "pagefile.sys", true));
        assert!(!name_match_in("*.SYS", "pagefile.sys", false));
        assert!(name_match_in("page?ile.sys", "pagefile.sys", false));
    }
}
