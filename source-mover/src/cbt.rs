//! Changed-block lists: `{"base": "<backup id>", "changed": [[offset, length], ...]}`.
//!
//! A list means something only relative to the backup it counts from: the changes since
//! backup X are not the changes since backup Y. So every list names its `base`, and the mover
//! applies it only to an incremental over exactly that backup (see [`ChangedBlocks::check_base`]).
//! `shared/bench/make-dataset.sh` writes lists without a base (it cannot know the backup id);
//! [`set_base`] adds it once the full backup exists. Other fields are ignored.

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::ranges::Ranges;

#[derive(Deserialize)]
struct CbtFile {
    base: Option<String>,
    changed: Vec<(u64, u64)>,
}

/// A changed-block list: the backup it counts from and the changed byte ranges.
#[derive(Debug, Clone)]
pub struct ChangedBlocks {
    /// The backup the changes count from.
    pub base: String,
    /// Changed byte ranges.
    pub changed: Ranges,
    /// Where the list came from (for messages).
    pub path: std::path::PathBuf,
}

/// Reads a changed-block list.
///
/// # Errors
/// The file cannot be read, is not a list, or names no base ([`Error::Refused`]).
pub fn load(path: &std::path::Path) -> Result<ChangedBlocks> {
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
        path: path.to_owned(),
    })
}

impl ChangedBlocks {
    /// Checks that the list counts from `base`, the backup this incremental builds on.
    ///
    /// # Errors
    /// [`Error::Refused`] naming both backups and what to do.
    pub fn check_base(&self, disk: &str, base: &str) -> Result<()> {
        if self.base == base {
            return Ok(());
        }
        Err(Error::Refused(format!(
            "disk {disk}: the changed-block list {} counts from backup {}, but this backup \
             builds on {base}; the changes since one backup are not the changes since another. \
             Use the list that counts from {base}, pass --base {} if that backup still exists, \
             or leave out --cbt to read every block. Nothing was sent",
            self.path.display(),
            self.base,
            self.base
        )))
    }
}

/// Writes `base` into the changed-block list at `path` (a temp file renamed over it), keeping
/// its other fields: for lists made before the backup they count from existed.
///
/// # Errors
/// The file cannot be read, parsed or written.
pub fn set_base(path: &std::path::Path, base: &str) -> Result<()> {
    let text = std::fs::read(path).map_err(|e| Error::io(path.display(), e))?;
    let mut v: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| Error::Refused(format!("{}: not JSON: {e}", path.display())))?;
    let obj = v
        .as_object_mut()
        .ok_or_else(|| Error::Refused(format!("{}: not a JSON object", path.display())))?;
    obj.insert("base".into(), serde_json::Value::String(base.to_owned()));
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, v.to_string()).map_err(|e| Error::io(tmp.display(), e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path.display(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &std::path::Path, body: &str) -> std::path::PathBuf {
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
        let l = load(&p).expect("load");
        assert_eq!(l.base, id);
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
