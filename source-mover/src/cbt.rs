//! Changed-block lists: `{"changed": [[offset, length], ...], ...}` as written by
//! `shared/bench/make-dataset.sh` (other fields are ignored).

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::ranges::Ranges;

#[derive(Deserialize)]
struct CbtFile {
    changed: Vec<(u64, u64)>,
}

/// Reads a CBT file into the changed byte ranges.
///
/// # Errors
/// The file cannot be read or is not a CBT list.
pub fn load(path: &std::path::Path) -> Result<Ranges> {
    let text = std::fs::read(path).map_err(|e| Error::io(path.display(), e))?;
    let f: CbtFile = serde_json::from_slice(&text).map_err(|e| {
        Error::Invalid(format!(
            "{}: not a CBT list {{\"changed\": [[offset, length], ...]}}: {e}",
            path.display()
        ))
    })?;
    let mut v = Vec::with_capacity(f.changed.len());
    for (off, len) in f.changed {
        let end = off.checked_add(len).ok_or_else(|| {
            Error::Invalid(format!("{}: range {off}+{len} overflows", path.display()))
        })?;
        v.push((off, end));
    }
    Ok(Ranges::from_unsorted(v))
}
