//! The peers in `bench compare`: restic and borg on local repositories, each image read whole
//! through stdin under one name, so day 2 has day 1 as parent.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Result};

use crate::measure::{du, timed, Step};

/// restic, local repository, both days through stdin under one name (so day 2 has day 1 as parent).
pub fn restic(ds: &Path, work: &Path) -> Result<Vec<Step>> {
    let repo = work.join("restic-repo");
    let _ = std::fs::remove_dir_all(&repo);
    let env = |c: &mut Command| {
        c.env("RESTIC_REPOSITORY", &repo)
            .env("RESTIC_PASSWORD", "bench")
            .env("RESTIC_CACHE_DIR", work.join("restic-cache"));
    };
    let mut init = Command::new("restic");
    init.args(["init", "-q"]);
    env(&mut init);
    timed(&mut init, None)?;
    let mut steps = Vec::new();
    for disk in ["disk.raw", "disk2.raw"] {
        let mut c = Command::new("restic");
        c.args([
            "backup",
            "-q",
            "--stdin",
            "--stdin-filename",
            "disk.raw",
            "--host",
            "bench",
        ]);
        env(&mut c);
        let (wall, cpu, rss, _) = timed(&mut c, Some(&ds.join(disk)))?;
        steps.push(Step {
            wall,
            cpu,
            rss_mib: rss,
            read: Some(std::fs::metadata(ds.join(disk))?.len()),
            sent: None,
            repo: du(&repo),
        });
    }
    let out = work.join("restic-restored.raw");
    let mut c = Command::new("sh");
    c.arg("-c").arg(format!(
        "restic dump -q latest disk.raw > {}",
        out.display()
    ));
    env(&mut c);
    let (wall, cpu, rss, _) = timed(&mut c, None)?;
    if std::fs::metadata(&out)?.len() != std::fs::metadata(ds.join("disk2.raw"))?.len() {
        bail!("restic restore has the wrong size");
    }
    steps.push(Step {
        wall,
        cpu,
        rss_mib: rss,
        read: None,
        sent: None,
        repo: du(&repo),
    });
    Ok(steps)
}

/// borg, unencrypted local repository, zstd 3; `fixed` uses 4 MiB fixed chunks and sparse extract.
pub fn borg(ds: &Path, work: &Path, fixed: bool) -> Result<Vec<Step>> {
    let repo = work.join(if fixed {
        "borg-fixed-repo"
    } else {
        "borg-repo"
    });
    let _ = std::fs::remove_dir_all(&repo);
    let env = |c: &mut Command| {
        c.env("BORG_BASE_DIR", work.join("borg-home"))
            .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes");
    };
    let mut init = Command::new("borg");
    init.args(["init", "-e", "none"]).arg(&repo);
    env(&mut init);
    timed(&mut init, None)?;
    let mut steps = Vec::new();
    for (i, disk) in ["disk.raw", "disk2.raw"].iter().enumerate() {
        let mut c = Command::new("borg");
        c.args([
            "create",
            "--compression",
            "zstd,3",
            "--stdin-name",
            "disk.raw",
        ]);
        if fixed {
            c.args(["--chunker-params", "fixed,4194304"]);
        }
        c.arg(format!("{}::day{}", repo.display(), i + 1)).arg("-");
        env(&mut c);
        let (wall, cpu, rss, _) = timed(&mut c, Some(&ds.join(disk)))?;
        steps.push(Step {
            wall,
            cpu,
            rss_mib: rss,
            read: Some(std::fs::metadata(ds.join(disk))?.len()),
            sent: None,
            repo: du(&repo),
        });
    }
    let dir = work.join(if fixed { "borg-fixed-out" } else { "borg-out" });
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut c = Command::new("borg");
    c.arg("extract");
    if fixed {
        c.arg("--sparse");
    }
    c.arg(format!("{}::day2", repo.display())).current_dir(&dir);
    env(&mut c);
    let (wall, cpu, rss, _) = timed(&mut c, None)?;
    if std::fs::metadata(dir.join("disk.raw"))?.len()
        != std::fs::metadata(ds.join("disk2.raw"))?.len()
    {
        bail!("borg restore has the wrong size");
    }
    steps.push(Step {
        wall,
        cpu,
        rss_mib: rss,
        read: None,
        sent: None,
        repo: du(&repo),
    });
    Ok(steps)
}
