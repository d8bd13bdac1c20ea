//! Raw image files (sparse-aware) and block devices as a [`BlockSource`].

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::BlockSource;
use crate::error::{Error, Result};
use crate::ranges::Ranges;

/// An open image file or block device.
#[derive(Debug)]
pub struct FileSource {
    file: File,
    path: PathBuf,
    size: u64,
    /// A regular file (holes can be asked for); a block device is all data.
    regular: bool,
}

impl FileSource {
    /// Opens a disk image or block device read-only.
    ///
    /// # Errors
    /// The path cannot be opened or sized.
    pub fn open(path: &Path) -> Result<FileSource> {
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
        Ok(FileSource {
            file,
            path: path.to_owned(),
            size,
            regular: meta.is_file(),
        })
    }

    /// The path as given.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl BlockSource for FileSource {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| Error::io(format!("{} at offset {offset}", self.path.display()), e))
    }

    /// The data extents of a regular file, from `SEEK_DATA`/`SEEK_HOLE` (the whole file where
    /// the file system cannot tell); all of a block device.
    fn allocated(&self) -> Result<Ranges> {
        Ok(if self.regular {
            data_ranges(&self.file, self.size)
        } else {
            Ranges::single(0, self.size)
        })
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
        let d = FileSource::open(&p).expect("open");
        assert_eq!(d.size(), 64 << 20);
        assert_eq!(d.describe(), p.display().to_string());
        // The file system may round to its block size, but must not claim the whole file.
        let data = d.allocated().expect("allocated");
        assert!(data.total() >= 8192 && data.total() < 1 << 20, "{data:?}");
        let mut buf = [0u8; 4];
        d.read_at(&mut buf, 10 << 20).expect("read");
        assert_eq!(buf, [1; 4]);
        // Reading past the end is an error, never zeros.
        assert!(d.read_at(&mut buf, (64 << 20) - 2).is_err());
    }
}
