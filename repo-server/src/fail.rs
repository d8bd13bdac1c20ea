//! Fail points: named places in the server's write paths where a test build aborts the process,
//! to prove that a crash at exactly that point loses nothing.
//!
//! Compiled in only with the `failpoints` cargo feature (the `tests` crate turns it on; a plain
//! `cargo build -p repo-server` or `cargo install` leaves it out, and then [`hit`] is an empty
//! inline function). Armed by the environment variable `REPO_FAILPOINT=NAME[:N]`: the `N`th time
//! (default 1) the server passes `NAME`, it prints `fail point NAME hit N: aborting` to stderr and
//! calls `abort()` (SIGABRT, no destructors, no flushing — like a power cut for the process).

/// Every fail point, in write-path order.
pub const POINTS: &[&str] = &[
    // chunk_store::BlobDir::put (chunk files and index blobs)
    "blob.before_fsync",
    "blob.before_rename",
    "blob.after_rename",
    // catalog::Catalog::write (every durable batch)
    "catalog.before_write",
    "catalog.after_write",
    // repo::commit: index blobs written, manifest not yet
    "commit.before_batch",
    "commit.after_batch",
    // repo::jobs::gc
    "gc.after_mark",
    "gc.after_row_delete",
    "gc.before_index_removal",
    // repo::retention: a backup deleted, others not yet
    "prune.after_delete",
];

/// Passes the fail point `name`: aborts when it is armed and this is the armed hit.
#[cfg(feature = "failpoints")]
pub fn hit(name: &'static str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let armed = ARMED.get_or_init(|| {
        let v = std::env::var("REPO_FAILPOINT").ok()?;
        let (point, n) = match v.split_once(':') {
            Some((p, n)) => (p.to_owned(), n.parse().unwrap_or(1)),
            None => (v, 1),
        };
        Some((point, n))
    });
    if let Some((point, n)) = armed {
        if point == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *n {
            eprintln!("fail point {name} hit {n}: aborting");
            std::process::abort();
        }
    }
}

/// Passes the fail point `name` (fail points are not compiled in).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &'static str) {}

#[cfg(test)]
mod tests {
    /// Every listed point is passed somewhere in the sources, and every point passed is listed.
    #[test]
    fn points_are_listed_and_used() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut used = std::collections::BTreeSet::new();
        let mut stack = vec![root];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).expect("src dir") {
                let p = e.expect("entry").path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") && !p.ends_with("fail.rs") {
                    let text = std::fs::read_to_string(&p).expect("source");
                    for part in text.split("fail::hit(\"").skip(1) {
                        used.insert(part.split('"').next().unwrap_or("").to_owned());
                    }
                }
            }
        }
        let listed: std::collections::BTreeSet<String> =
            super::POINTS.iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(used, listed);
    }
}
