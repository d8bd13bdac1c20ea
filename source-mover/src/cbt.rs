//! Changed-block tracking: what changed on a disk since a base backup.
//!
//! Changes mean something only relative to the backup they count from: the changes since
//! backup X are not the changes since backup Y. So every [`ChangeList`] names its base, and the
//! mover applies it only to an incremental over exactly that backup (see
//! [`ChangedBlocks::check_base`]), before a session is created.
//!
//! [`ChangeList`] is the seam (next to [`crate::source::BlockSource`]): where the changes come
//! from. [`JsonList`] is a file
//! `{"base": "<backup id>", "changed": [[offset, length], ...]}` (other fields are ignored);
//! [`DirtyBitmap`] is QEMU's `qemu:dirty-bitmap:NAME` read over the disk's NBD connection.
//!
//! A bitmap cannot name a backup (it exists before the backup it marks does), so the tie goes
//! the other way: a backup made with `--cbt-point NAME=BITMAP` records in its metadata
//! (`cbt_points`) that BITMAP was started at its point, and a bitmap is used only for an
//! incremental whose base recorded exactly that bitmap ([`crate::base::tie`]). A bitmap the
//! export does not offer, or that the base did not record, makes the mover read the disk in
//! full and say why in the summary: never skip, never refuse.
//! `shared/bench/make-dataset.sh` writes lists without a base (it cannot know the backup id);
//! [`set_base`] adds it once the full backup exists.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::ranges::Ranges;
use crate::source::{BlockSource, NbdSource};

#[derive(Deserialize)]
struct CbtFile {
    base: Option<String>,
    changed: Vec<(u64, u64)>,
}

/// Where the changes of one disk come from.
///
/// The backup loads every list before anything is sent (one that cannot be loaded stops the
/// run there) and then checks, on a new session and on a resumed one, that it counts from
/// exactly the backup the incremental builds on.
pub trait ChangeList: Send + Sync + fmt::Debug {
    /// Where the changes come from, for messages (a list's path).
    fn describe(&self) -> String;

    /// Reads the changes: the backup they count from and the changed byte ranges.
    ///
    /// # Errors
    /// The changes cannot be read, or name no base ([`Error::Refused`]).
    fn load(&self) -> Result<ChangedBlocks>;
}

/// Changes read from a [`ChangeList`]: the backup they count from and the changed byte ranges.
#[derive(Debug, Clone)]
pub struct ChangedBlocks {
    /// The backup the changes count from.
    pub base: String,
    /// Changed byte ranges.
    pub changed: Ranges,
    /// Where the changes came from (for messages): [`ChangeList::describe`].
    pub from: String,
    /// For a dirty bitmap: its name. It counts from the backup that recorded it as its
    /// point ([`crate::base::tie`] checks that against the base; `base` is empty). `None` for
    /// a list, which names its base itself.
    pub bitmap: Option<String>,
    /// Why these changes cannot be used (a bitmap the export does not offer): the disk is read
    /// in full and the summary says why. `None` when they can.
    pub unusable: Option<String>,
}

/// A changed-block list in a JSON file (see the module documentation).
#[derive(Debug, Clone)]
pub struct JsonList {
    path: PathBuf,
}

impl JsonList {
    /// The list at `path` (read by [`ChangeList::load`]).
    pub fn new(path: &Path) -> JsonList {
        JsonList {
            path: path.to_owned(),
        }
    }
}

impl ChangeList for JsonList {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn load(&self) -> Result<ChangedBlocks> {
        load(&self.path)
    }
}

/// The JSON list at `path` as a shared change list: what `--cbt NAME=PATH` gives (read only
/// when the backup loads it).
pub fn json_file(path: &Path) -> Arc<dyn ChangeList> {
    Arc::new(JsonList::new(path))
}

/// Reads a changed-block list.
///
/// # Errors
/// The file cannot be read, is not a list, or names no base ([`Error::Refused`]).
pub fn load(path: &Path) -> Result<ChangedBlocks> {
    let text = std::fs::read(path).map_err(|e| Error::io(path.display(), e))?;
    let f: CbtFile = serde_json::from_slice(&text).map_err(|e| {
        Error::Refused(format!(
            "{}: not a changed-block list {{\"base\": \"<backup id>\", \"changed\": [[offset, length], ...]}}: {e}",
            path.display()
        ))
    })?;
    let base = f.base.filter(|b| !b.is_empty()).ok_or_else(|| {
        Error::Refused(format!(
            "{}: the changed-block list names no base backup. A list of changes only means \
             something relative to the backup it counts from; add \"base\": \"<id of that \
             backup>\" (see `source-mover list`), or leave out --cbt to read every block",
            path.display()
        ))
    })?;
    base.parse::<schema::BackupId>().map_err(|e| {
        Error::Refused(format!(
            "{}: \"base\" is not a backup id: {e}",
            path.display()
        ))
    })?;
    let mut v = Vec::with_capacity(f.changed.len());
    for (off, len) in f.changed {
        let end = off.checked_add(len).ok_or_else(|| {
            Error::Refused(format!("{}: range {off}+{len} overflows", path.display()))
        })?;
        v.push((off, end));
    }
    Ok(ChangedBlocks {
        base,
        changed: Ranges::from_unsorted(v),
        from: path.display().to_string(),
        bitmap: None,
        unusable: None,
    })
}

impl ChangedBlocks {
    /// Checks that the list counts from `base`, the backup this incremental builds on.
    ///
    /// # Errors
    /// [`Error::Refused`] naming both backups and what to do.
    pub fn check_base(&self, disk: &str, base: &str) -> Result<()> {
        // A bitmap is tied through the base's recorded point instead, and never refused.
        if self.base == base || self.bitmap.is_some() {
            return Ok(());
        }
        Err(Error::Refused(format!(
            "disk {disk}: the changed-block list {} counts from backup {}, but this backup \
             builds on {base}; the changes since one backup are not the changes since another. \
             Use the list that counts from {base}, pass --base {} if that backup still exists, \
             or leave out --cbt to read every block. Nothing was sent",
            self.from, self.base, self.base
        )))
    }
}

/// A QEMU dirty bitmap, `qemu:dirty-bitmap:NAME`, of an NBD disk: the changes since the bitmap
/// was started (or cleared), at the bitmap's granularity (64 KiB by default).
#[derive(Debug, Clone)]
pub struct DirtyBitmap {
    source: Arc<NbdSource>,
    bitmap: String,
}

impl DirtyBitmap {
    /// Bitmap `bitmap` of `source` (negotiated when the source connected:
    /// [`NbdSource::open`]).
    pub fn new(source: Arc<NbdSource>, bitmap: &str) -> DirtyBitmap {
        DirtyBitmap {
            source,
            bitmap: bitmap.to_owned(),
        }
    }

    /// The meta context's name.
    pub fn context(&self) -> String {
        format!("{}{}", nbd::QEMU_DIRTY_BITMAP, self.bitmap)
    }
}

impl ChangeList for DirtyBitmap {
    fn describe(&self) -> String {
        format!("dirty bitmap {} of {}", self.bitmap, self.source.describe())
    }

    /// The dirty extents; a bitmap the export does not offer is [`ChangedBlocks::unusable`],
    /// not an error.
    fn load(&self) -> Result<ChangedBlocks> {
        let ctx = self.context();
        let mut out = ChangedBlocks {
            base: String::new(),
            changed: Ranges::new(),
            from: self.describe(),
            bitmap: Some(self.bitmap.clone()),
            unusable: None,
        };
        if !self.source.has_context(&ctx) {
            out.unusable = Some(format!(
                "the export does not offer {ctx} (no such bitmap, or not exported: qemu-nbd -B {b}, \"bitmaps\": [\"{b}\"] in block-export-add)",
                b = self.bitmap
            ));
            return Ok(out);
        }
        let size = self.source.size();
        let dirty = self
            .source
            .client()
            .extents(&ctx, 0, size)?
            .into_iter()
            .filter(|e| e.2 & nbd::dirty_flags::DIRTY != 0)
            .map(|e| (e.0, e.1))
            .collect();
        out.changed = Ranges::from_unsorted(dirty);
        Ok(out)
    }
}

/// Writes `base` into the changed-block list at `path` (durably: a temp file, fsynced and
/// renamed over it), keeping its other fields: for lists made before the backup they count
/// from existed.
///
/// # Errors
/// The file cannot be read, parsed or written.
pub fn set_base(path: &Path, base: &str) -> Result<()> {
    let text = std::fs::read(path).map_err(|e| Error::io(path.display(), e))?;
    let mut v: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| Error::Refused(format!("{}: not JSON: {e}", path.display())))?;
    let obj = v
        .as_object_mut()
        .ok_or_else(|| Error::Refused(format!("{}: not a JSON object", path.display())))?;
    obj.insert("base".into(), serde_json::Value::String(base.to_owned()));
    stdx::durable::write(path, v.to_string().as_bytes()).map_err(|e| Error::io(path.display(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, body: &str) -> PathBuf {
        let p = dir.join("cbt.json");
        std::fs::write(&p, body).expect("write");
        p
    }

    #[test]
    fn a_list_names_its_base() {
        let dir = tempfile::tempdir().expect("tmp");
        let id = "20261201T120000Z-0123456789abcdef";
        let p = write(dir.path(), r#"{"changed": [[0, 4096], [65536, 10]]}"#);
        assert!(matches!(load(&p), Err(Error::Refused(m)) if m.contains("names no base")));
        set_base(&p, id).expect("set base");
        let l = JsonList::new(&p).load().expect("load");
        assert_eq!(l.base, id);
        assert_eq!(l.from, p.display().to_string());
        assert_eq!(l.changed.as_slice(), &[(0, 4096), (65536, 65546)]);
        l.check_base("disk0", id).expect("same base");
        let other = "20261202T120000Z-0123456789abcdef";
        assert!(
            matches!(l.check_base("disk0", other), Err(Error::Refused(m)) if m.contains(other))
        );
        let p = write(dir.path(), r#"{"base": "../x", "changed": []}"#);
        assert!(matches!(load(&p), Err(Error::Refused(_))));
        let p = write(
            dir.path(),
            &format!(r#"{{"base": "{id}", "changed": [[18446744073709551615, 2]]}}"#),
        );
        assert!(matches!(load(&p), Err(Error::Refused(m)) if m.contains("overflows")));
    }
}
