//! `bench settings --dataset DIR --variant NAME=ARGS ...`: this project's three steps under
//! different mover settings (zstd level, block size, ...), the variants alternating run by run
//! on the same machine so that drift hits them alike; medians per variant.
//!
//! Besides wall and CPU it reports what a setting trades: the bytes the incremental reads and
//! stores against the bytes `cbt.json` lists as changed (the amplification of small changes),
//! chunks uploaded (requests), and the repository's size.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::measure::{median, Step};
use crate::project;

/// One variant's runs: steps and the mover's answers of its two backups.
struct Runs {
    name: String,
    args: Vec<String>,
    steps: Vec<Vec<Step>>,
    answers: Vec<Vec<serde_json::Value>>,
    rss: Vec<f64>,
}

/// Runs every variant `runs` times, alternating, and prints the table.
pub fn run(
    ds: &Path,
    quick: bool,
    variants: &[String],
    runs: Option<usize>,
    work: Option<PathBuf>,
) -> Result<()> {
    crate::compare::dataset(ds, quick)?;
    if variants.is_empty() {
        bail!("give at least one --variant NAME=ARGS (ARGS may be empty: the defaults)");
    }
    let runs = runs.unwrap_or(if quick { 1 } else { 3 });
    let work = work.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("bench-settings-{}", std::process::id()))
    });
    std::fs::create_dir_all(&work)?;
    let mut all: Vec<Runs> = variants
        .iter()
        .map(|v| {
            let (name, args) = v.split_once('=').unwrap_or((v, ""));
            Runs {
                name: name.to_owned(),
                args: args.split_whitespace().map(str::to_owned).collect(),
                steps: vec![],
                answers: vec![],
                rss: vec![],
            }
        })
        .collect();
    for f in ["disk.raw", "disk2.raw"] {
        let mut r = std::io::BufReader::new(std::fs::File::open(ds.join(f))?);
        std::io::copy(&mut r, &mut std::io::sink())?;
    }
    for i in 0..runs {
        // Alternate the order too (ABBA), so no variant always runs right after another.
        let order: Vec<usize> = if i % 2 == 0 {
            (0..all.len()).collect()
        } else {
            (0..all.len()).rev().collect()
        };
        for k in order {
            let v = &mut all[k];
            eprintln!(
                "bench: run {}/{runs}, variant {} {:?}",
                i + 1,
                v.name,
                v.args
            );
            let (steps, rss, answers) = project::run_with(ds, &work, &v.args)?;
            v.steps.push(steps);
            v.answers.push(answers);
            v.rss.push(rss);
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    let cbt: serde_json::Value = serde_json::from_slice(&std::fs::read(ds.join("cbt.json"))?)?;
    let changed = cbt["bytes"].as_u64().unwrap_or_else(|| {
        cbt["changed"]
            .as_array()
            .map(|a| a.iter().filter_map(|r| r[1].as_u64()).sum())
            .unwrap_or(0)
    });
    println!("# bench settings");
    println!();
    println!(
        "dataset: {}; runs per figure: {runs} (median), variants alternating ABBA; changed bytes \
         listed in cbt.json: {:.1} MB",
        ds.display(),
        changed as f64 / 1e6
    );
    println!();
    println!(
        "Method: as `bench compare` for this project (fresh repository per run; full backup of \
         disk.raw, CBT incremental of disk2.raw, restore of the incremental checked against the \
         image), with ARGS added to both backups. read/sent = the mover's read_bytes/sent_bytes; \
         stored = the repository's stored_bytes for the backup; chunks = chunks uploaded \
         (requests); amplification = incremental bytes ÷ changed bytes of cbt.json."
    );
    println!();
    println!(
        "| variant | args | full s | full CPU s | full sent MB | full chunks | repo MB | \
         incr s | incr CPU s | incr read MB | incr stored MB | incr chunks | read ampl. | \
         stored ampl. | restore s | restore CPU s | server RSS MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for v in &all {
        let st = |i: usize, f: fn(&Step) -> f64| median(v.steps.iter().map(|s| f(&s[i])).collect());
        let ans = |i: usize, key: &str| {
            median(
                v.answers
                    .iter()
                    .map(|a| a[i][key].as_u64().unwrap_or(0) as f64)
                    .collect(),
            )
        };
        let repo = median(v.steps.iter().map(|s| s[0].repo as f64).collect());
        let (incr_read, incr_stored) = (ans(1, "read_bytes"), ans(1, "stored_bytes"));
        let ampl = |b: f64| {
            if changed == 0 {
                "–".to_owned()
            } else {
                format!("{:.2}×", b / changed as f64)
            }
        };
        println!(
            "| {} | `{}` | {:.2} | {:.2} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.0} | {:.0} | \
             {:.0} | {} | {} | {:.2} | {:.2} | {:.0} |",
            v.name,
            v.args.join(" "),
            st(0, |s| s.wall),
            st(0, |s| s.cpu),
            ans(0, "sent_bytes") / 1e6,
            ans(0, "chunks_uploaded"),
            repo / 1e6,
            st(1, |s| s.wall),
            st(1, |s| s.cpu),
            incr_read / 1e6,
            incr_stored / 1e6,
            ans(1, "chunks_uploaded"),
            ampl(incr_read),
            ampl(incr_stored),
            st(2, |s| s.wall),
            st(2, |s| s.cpu),
            median(v.rss.clone()),
        );
    }
    Ok(())
}
