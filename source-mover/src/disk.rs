//! Source disks: raw image files (sparse-aware) and block devices.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::ranges::Ranges;

/// An open source disk.
#[derive(Debug)]
pub struct Disk {
    file: File,
    /// Path as given.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Byte ranges that hold data; the rest are holes of a sparse file (never read).
    pub data: Ranges,
}

impl Disk {
    /// Opens a disk image or block device read-only.
    ///
    /// # Errors
    /// The path cannot be opened or sized.
    pub fn open(path: &Path) -> Result<Disk> {
        let file = File::open(path).map_err(|e| Error::io(path.display(), e))?;
        let meta = file.metadata().map_err(|e| Error::io(path.display(), e))?;
        let size = if meta.is_file() {
            meta.len()
        } else {
            // Block devices report size 0 in metadata; seeking to the end gives it.
            use std::io::Seek;
            (&file)
                .seek(std::io::SeekFrom::End(0))
                .map_err(|e| Error::io(path.display(), e))?
        };
        let data = if meta.is_file() {
            data_ranges(&file, size)
        } else {
            Ranges::single(0, size)
        };
        Ok(Disk {
            file,
            path: path.to_owned(),
            size,
            data,
        })
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    ///
    /// # Errors
    /// I/O errors, naming the disk and offset.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| Error::io(format!("{} at offset {offset}", self.path.display()), e))
    }
}

/// The data extents of a file, from `SEEK_DATA`/`SEEK_HOLE`; the whole file where the file
/// system cannot tell.
fn data_ranges(file: &File, size: u64) -> Ranges {
    use rustix::fs::{seek, SeekFrom};
    let mut v = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let start = match seek(file, SeekFrom::Data(pos)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => break,
            Err(_) => return Ranges::single(0, size),
        };
        let end = match seek(file, SeekFrom::Hole(start)) {
            Ok(e) => e.min(size),
            Err(_) => size,
        };
        if end <= start {
            break;
        }
        v.push((start, end));
        pos = end;
    }
    Ranges::from_unsorted(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn sparse_file_data_ranges() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("d.raw");
        let mut f = File::create(&p).expect("create");
        f.set_len(64 << 20).expect("len");
        f.write_all_at(&[1u8; 8192], 10 << 20).expect("write");
        f.flush().expect("flush");
        drop(f);
        let d = Disk::open(&p).expect("open");
        assert_eq!(d.size, 64 << 20);
        // The file system may round to its block size, but must not claim the whole file.
        assert!(
            d.data.total() >= 8192 && d.data.total() < 1 << 20,
            "{:?}",
            d.data
        );
        let mut buf = [0u8; 4];
        d.read_at(&mut buf, 10 << 20).expect("read");
        assert_eq!(buf, [1; 4]);
    }
}
