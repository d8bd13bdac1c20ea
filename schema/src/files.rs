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
}
