//! Fail points: named places in the server's write paths where a crash-test server aborts the
//! process, to prove that a crash at exactly that point loses nothing.
//!
//! The points are always compiled in and always inert: [`hit`] does nothing until [`arm`] was
//! called, and nothing in the shipped binaries (`repo-server`, `gateway`) calls it. Only the
//! crash-test binary of the `tests` crate (`repo-server-failpoints`, the same command line as
//! `repo-server`) arms a point, from its environment variable `REPO_FAILPOINT=NAME[:N]`; this
//! library reads no environment. Armed, the `N`th time (default 1) the server passes `NAME` it
//! prints `fail point NAME hit N: aborting` to stderr and calls `abort()` (SIGABRT, no
//! destructors, no flushing — like a power cut for the process).
//!
//! Why not a cargo feature: `cargo build --workspace` unifies features, so a feature the tests
//! crate turns on is compiled into the `repo-server` users run. Arming by a function call that
//! only a test binary makes keeps the shipped binaries unable to fire a point whatever their
//! environment, and the crash campaign runs the same code the users run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Every fail point, in write-path order.
pub const POINTS: &[&str] = &[
    // store::local::BlobDir::put (chunk files and index blobs)
    "blob.before_fsync",
    "blob.before_rename",
    "blob.after_rename",
    // catalog::Catalog::write (every durable batch)
    "catalog.before_write",
    "catalog.after_write",
    // repo::commit: index blobs written, manifest not yet
    "commit.before_batch",
    "commit.after_batch",
    // repo::gc
    "gc.after_mark",
    "gc.after_row_delete",
    "gc.before_index_removal",
    // repo::retention: a backup deleted, others not yet
    "prune.after_delete",
];

/// The armed point: which, at which hit, and the hits so far.
#[derive(Debug)]
struct Armed {
    point: &'static str,
    nth: u64,
    hits: AtomicU64,
}

static ARMED: OnceLock<Armed> = OnceLock::new();

/// Why [`arm`] refused.
#[derive(Debug, thiserror::Error)]
pub enum ArmError {
    /// Not one of [`POINTS`].
    #[error("unknown fail point {0:?} (known: {known})", known = POINTS.join(", "))]
    UnknownPoint(String),
    /// `N` of `NAME:N` is not a positive integer.
    #[error("fail point hit count {0:?} is not a positive integer")]
    BadCount(String),
    /// A point is armed already (one per process).
    #[error("a fail point is armed already")]
    AlreadyArmed,
}

/// Arms one fail point for the rest of the process, from `NAME` or `NAME:N`: the `N`th pass
/// (default 1) through `NAME` aborts the process. Only the crash-test binary calls this.
///
/// # Errors
/// [`ArmError`] for a name not in [`POINTS`], a count that is not a positive integer, or a
/// second call.
pub fn arm(spec: &str) -> Result<(), ArmError> {
    let (name, nth) = match spec.split_once(':') {
        Some((name, n)) => (
            name,
            n.parse::<u64>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| ArmError::BadCount(n.to_owned()))?,
        ),
        None => (spec, 1),
    };
    let point = POINTS
        .iter()
        .copied()
        .find(|p| *p == name)
        .ok_or_else(|| ArmError::UnknownPoint(name.to_owned()))?;
    ARMED
        .set(Armed {
            point,
            nth,
            hits: AtomicU64::new(0),
        })
        .map_err(|_| ArmError::AlreadyArmed)
}

/// Passes the fail point `name`: aborts the process when [`arm`] armed it and this is the armed
/// hit; otherwise (always, in the shipped binaries) one atomic load.
#[inline]
pub fn hit(name: &'static str) {
    if let Some(a) = ARMED.get() {
        if a.point == name && a.hits.fetch_add(1, Ordering::SeqCst) + 1 == a.nth {
            eprintln!("fail point {name} hit {}: aborting", a.nth);
            std::process::abort();
        }
    }
}

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

    /// `arm` refuses what it cannot honour, takes `NAME` and `NAME:N`, and arms once.
    #[test]
    fn arm_checks_its_spec_and_arms_once() {
        use super::{arm, ArmError, ARMED};
        assert!(matches!(
            arm("blob.nowhere"),
            Err(ArmError::UnknownPoint(_))
        ));
        assert!(matches!(
            arm("blob.before_fsync:0"),
            Err(ArmError::BadCount(_))
        ));
        assert!(matches!(
            arm("blob.before_fsync:x"),
            Err(ArmError::BadCount(_))
        ));
        assert!(ARMED.get().is_none(), "a refused spec armed something");
        // Armed at a hit no test reaches, so the other tests of this process run on.
        arm(&format!("prune.after_delete:{}", u64::MAX)).expect("a valid spec");
        let armed = ARMED.get().expect("armed");
        assert_eq!((armed.point, armed.nth), ("prune.after_delete", u64::MAX));
        super::hit("prune.after_delete");
        assert!(armed.hits.load(super::Ordering::SeqCst) >= 1);
        assert!(matches!(
            arm("blob.before_fsync"),
            Err(ArmError::AlreadyArmed)
        ));
    }
}
