//! Durable file writes: the bytes reach the disk before the name does, and the name is durable
//! before the call returns. Readers see the old file or the new one, never a torn one.
//!
//! The recipe is the one every crash-safe store uses: write a temporary sibling, `fsync` it,
//! `rename` it over the destination, `fsync` the directory.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// `fsync` of a directory, so a create, rename or unlink inside it is durable.
///
/// # Errors
/// I/O errors.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The directory holding `path` (`.` for a bare file name).
pub fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The temporary sibling [`write`] uses for `path`: `.NAME.tmp.PID` in the same directory (same
/// file system, so the rename is atomic).
pub fn temp_for(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    parent_of(path).join(format!(".{name}.tmp.{}", std::process::id()))
}

/// Makes the already written `file` at `tmp` durable under the name `dest`: `fsync` the file,
/// rename, `fsync` the destination's directory. `tmp` and `dest` must be on one file system.
///
/// # Errors
/// I/O errors; on error `dest` is unchanged or already the complete new file.
pub fn persist(file: File, tmp: &Path, dest: &Path) -> io::Result<()> {
    file.sync_all()?;
    drop(file);
    std::fs::rename(tmp, dest)?;
    sync_dir(parent_of(dest))
}

/// Replaces `path` with `bytes`, durably and atomically. `mode` sets the permission bits of a new
/// file on Unix (for example `0o600` for secrets).
///
/// # Errors
/// I/O errors; the temporary file is removed and `path` is unchanged on a failed write.
pub fn write_with_mode(path: &Path, bytes: &[u8], mode: Option<u32>) -> io::Result<()> {
    let tmp = temp_for(path);
    let mut opts = OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if let Some(m) = mode {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(m);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let written = opts.open(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        Ok(f)
    });
    match written.and_then(|f| persist(f, &tmp, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Replaces `path` with `bytes`, durably and atomically.
///
/// # Errors
/// I/O errors; `path` is unchanged on a failed write.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_with_mode(path, bytes, None)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn write_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        write(&p, b"one").unwrap();
        write(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "only the destination is left");
    }

    #[cfg(unix)]
    #[test]
    fn mode_applies_to_the_new_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        write_with_mode(&p, b"secret", Some(0o600)).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_failed_write_leaves_the_destination() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing-dir").join("f");
        assert!(write(&p, b"x").is_err());
        assert!(!p.exists());
    }
}
