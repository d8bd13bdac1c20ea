//! `bench compare --dataset DIR [--quick]`: this project, restic and borg on the same VM image,
//! in one process tree, with a warm page cache, each figure the median of N runs.
//!
//! Method (printed with the table, [`crate::report`]): for every tool, a fresh repository per
//! run; steps full backup of disk.raw, incremental of disk2.raw (this project with the CBT list),
//! restore of the incremental. Wall, CPU (user+sys of the whole process tree: for this project
//! the mover plus the server's own CPU over the step) and peak RSS come from `/usr/bin/time` and
//! `/proc`; repository bytes from the sizes of its files after the step. The floors
//! ([`crate::floor`]) do each step's least work on both cores, in process.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::measure::{med_steps, median};
use crate::report::Comparison;
use crate::{floor, peers, project};

/// Runs the comparison on the dataset `ds` (built here with `quick` if absent), `runs` times
/// (default 3, 1 with `quick`), scratch in `work`, and prints the table.
pub fn run(ds: &Path, quick: bool, runs: Option<usize>, work: Option<PathBuf>) -> Result<()> {
    dataset(ds, quick)?;
    let runs = runs.unwrap_or(if quick { 1 } else { 3 });
    let work = work
        .unwrap_or_else(|| std::env::temp_dir().join(format!("bench-work-{}", std::process::id())));
    std::fs::create_dir_all(&work)?;
    // Warm the page cache.
    for f in ["disk.raw", "disk2.raw"] {
        let mut r = std::io::BufReader::new(std::fs::File::open(ds.join(f))?);
        std::io::copy(&mut r, &mut std::io::sink())?;
    }
    let mut tools = BTreeMap::new();
    let (mut o, mut r, mut b, mut bf, mut srv) = (vec![], vec![], vec![], vec![], vec![]);
    for i in 0..runs {
        eprintln!("bench: run {}/{runs}", i + 1);
        // Each tool's repository and restore are removed once measured, so the scratch holds one
        // tool's at a time (an incompressible dataset's repositories are GBs each).
        let (steps, s) = project::run(ds, &work)?;
        clear(&work)?;
        o.push(steps);
        srv.push(s);
        r.push(peers::restic(ds, &work)?);
        clear(&work)?;
        b.push(peers::borg(ds, &work, false)?);
        clear(&work)?;
        bf.push(peers::borg(ds, &work, true)?);
        clear(&work)?;
    }
    tools.insert("1 this project", med_steps(o));
    tools.insert("2 restic", med_steps(r));
    tools.insert("3 borg", med_steps(b));
    tools.insert("4 borg fixed 4 MiB", med_steps(bf));
    let level = source_mover::profile::Profile::LAN.zstd_level;
    let floor = floor::run(ds, &work, level)?;
    let _ = std::fs::remove_dir_all(&work);
    let report = Comparison {
        dataset: ds.to_owned(),
        apparent: std::fs::metadata(ds.join("disk.raw"))?.len(),
        runs,
        tools,
        floor,
        level,
        server_rss_mib: median(srv),
    };
    print!("{report}");
    Ok(())
}

/// Empties the scratch directory `work`.
fn clear(work: &Path) -> Result<()> {
    for e in std::fs::read_dir(work)? {
        let p = e?.path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p)?;
        } else {
            std::fs::remove_file(&p)?;
        }
    }
    Ok(())
}

/// Checks that `ds` holds disk.raw, disk2.raw and cbt.json; with `quick`, builds a small one
/// with real tools first if it has none.
pub(crate) fn dataset(ds: &Path, quick: bool) -> Result<()> {
    if quick && !ds.join("disk.raw").exists() {
        eprintln!(
            "bench: building a small dataset in {} with real tools",
            ds.display()
        );
        std::fs::create_dir_all(ds)?;
        let (disk, p1_off, p1) = source_mover::demo::build_disk(ds)?;
        source_mover::demo::make_day_two(ds, &disk, p1_off, &p1)?;
    }
    for f in ["disk.raw", "disk2.raw", "cbt.json"] {
        if !ds.join(f).exists() {
            bail!(
                "{} has no {f}: build it with ../shared/bench/make-dataset.sh {} 4",
                ds.display(),
                ds.display()
            );
        }
    }
    Ok(())
}
