//! `Range: bytes=...` for image downloads: one range is served as 206; several ranges, or a
//! header that is not a byte range, are ignored (the whole image is sent, as RFC 9110 allows);
//! a range that starts past the end is 416.

use schema::ErrorCode;

use crate::error::{Error, Result};

/// Resolves a `Range` header against a resource of `size` bytes: `Some((first, last))`
/// inclusive for a single satisfiable range, `None` to send everything.
///
/// # Errors
/// 416 with `Content-Range: bytes */size` when the range cannot be satisfied.
pub fn resolve(header: Option<&str>, size: u64) -> Result<Option<(u64, u64)>> {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let unsatisfiable = || {
        Error::new(
            ErrorCode::RangeNotSatisfiable,
            format!("range {spec} is outside the {size} bytes of this image"),
        )
        .header("Content-Range", format!("bytes */{size}"))
    };
    let (first, last) = match (a.trim(), b.trim()) {
        ("", "") => return Ok(None),
        ("", n) => {
            let Ok(n) = n.parse::<u64>() else {
                return Ok(None);
            };
            if n == 0 || size == 0 {
                return Err(unsatisfiable());
            }
            (size.saturating_sub(n), size - 1)
        }
        (a, b) => {
            let Ok(first) = a.parse::<u64>() else {
                return Ok(None);
            };
            let last = if b.is_empty() {
                u64::MAX
            } else {
                match b.parse::<u64>() {
                    Ok(l) if l >= first => l,
                    _ => return Ok(None),
                }
            };
            if first >= size {
                return Err(unsatisfiable());
            }
            (first, last.min(size - 1))
        }
    };
    Ok(Some((first, last)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(resolve(None, 100).ok(), Some(None));
        assert_eq!(resolve(Some("bytes=0-9"), 100).ok(), Some(Some((0, 9))));
        assert_eq!(resolve(Some("bytes=90-"), 100).ok(), Some(Some((90, 99))));
        assert_eq!(resolve(Some("bytes=-10"), 100).ok(), Some(Some((90, 99))));
        assert_eq!(resolve(Some("bytes=-1000"), 100).ok(), Some(Some((0, 99))));
        assert_eq!(
            resolve(Some("bytes=50-1000"), 100).ok(),
            Some(Some((50, 99)))
        );
        assert_eq!(resolve(Some("bytes=0-1,5-6"), 100).ok(), Some(None));
        assert_eq!(resolve(Some("bytes=9-1"), 100).ok(), Some(None));
        assert_eq!(resolve(Some("items=0-1"), 100).ok(), Some(None));
        assert_eq!(
            resolve(Some("bytes=100-"), 100).err().map(|e| e.code),
            Some(ErrorCode::RangeNotSatisfiable)
        );
        assert_eq!(
            resolve(Some("bytes=-0"), 100).err().map(|e| e.code),
            Some(ErrorCode::RangeNotSatisfiable)
        );
        assert_eq!(
            resolve(Some("bytes=0-"), 0).err().map(|e| e.code),
            Some(ErrorCode::RangeNotSatisfiable)
        );
    }
}
