//! The `--exclude` glob matcher, the one used for every guest file system: `*` within one path
//! segment, `**` across segments, `?` one character (a segment is matched by
//! [`schema::files::name_match`], which the repository's file search shares).

/// Matches a path such as `/var/log/syslog` against a pattern: `*` within one path segment,
/// `**` across segments, `?` one character. A pattern without `/` matches the last segment
/// anywhere; one with `/` is anchored at the file system's root. A pattern that matches a
/// directory matches everything below it (the walk passes the exclusion down).
pub fn matches(pattern: &str, path: &str) -> bool {
    if !pattern.contains('/') {
        let name = path.rsplit('/').next().unwrap_or(path);
        return seg_match(pattern.as_bytes(), name.as_bytes());
    }
    let pat: Vec<&str> = pattern
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    path_match(&pat, &segs)
}

fn path_match(pat: &[&str], segs: &[&str]) -> bool {
    match pat.first() {
        None => segs.is_empty(),
        Some(&"**") => (0..=segs.len()).any(|k| path_match(&pat[1..], &segs[k..])),
        Some(p) => {
            !segs.is_empty()
                && seg_match(p.as_bytes(), segs[0].as_bytes())
                && path_match(&pat[1..], &segs[1..])
        }
    }
}

fn seg_match(p: &[u8], s: &[u8]) -> bool {
    schema::files::name_match(p, s)
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn globs() {
        assert!(matches("/var/log", "/var/log"));
        assert!(matches("/var/log/**", "/var/log/a/b.txt"));
        assert!(matches("/var/*/x", "/var/log/x"));
        assert!(!matches("/var/*/x", "/var/log/y/x"));
        assert!(matches("*.iso", "/home/u/dl/file.iso"));
        assert!(!matches("*.iso", "/home/u/dl/file.isox"));
        assert!(matches("/home/?/dl", "/home/u/dl"));
        assert!(matches("/**/cache", "/a/b/cache"));
        assert!(!matches("/var/log", "/var/logs"));
    }
}
