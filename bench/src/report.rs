//! The table `bench compare` prints: its method, then every tool's median figures per step with
//! the ratio to this project's wall time, the floor, and the server's peak RSS (markdown).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use crate::measure::Step;

/// The steps of a comparison, in the order of each tool's figures.
pub const STEPS: [&str; 3] = ["full", "incremental", "restore"];

/// The figures of one `bench compare`, printed by `Display`.
#[derive(Debug)]
pub struct Comparison {
    /// The dataset directory.
    pub dataset: PathBuf,
    /// Apparent size of `disk.raw` in bytes.
    pub apparent: u64,
    /// Runs per figure.
    pub runs: usize,
    /// Each tool's median steps (see [`STEPS`]), keyed by a digit (the row order) and its name;
    /// `1 this project` is the reference of the ratios.
    pub tools: BTreeMap<&'static str, Vec<Step>>,
    /// The floor of each step (see [`crate::floor`]), in the order of [`STEPS`].
    pub floor: Vec<Step>,
    /// The zstd level the floors compressed at (the project's default).
    pub level: i32,
    /// The repo-server's peak RSS in MiB (median over runs).
    pub server_rss_mib: f64,
}

/// Megabytes (10^6 bytes) or a dash for unknown.
fn mb(b: Option<u64>) -> String {
    b.map(|b| format!("{:.0}", b as f64 / 1e6))
        .unwrap_or_else(|| "–".into())
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ours = &self.tools["1 this project"];
        writeln!(f, "# bench compare")?;
        writeln!(f)?;
        writeln!(
            f,
            "dataset: {} ({:.0} MB apparent); runs per figure: {} (median); {} cores",
            self.dataset.display(),
            self.apparent as f64 / 1e6,
            self.runs,
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0)
        )?;
        writeln!(f)?;
        writeln!(f, "{}", METHOD.trim())?;
        writeln!(f)?;
        writeln!(
            f,
            "| step | tool | wall s | ratio | CPU s | peak RSS MiB | read MB | sent MB | repo MB |"
        )?;
        writeln!(f, "|---|---|---|---|---|---|---|---|---|")?;
        for (i, step) in STEPS.iter().enumerate() {
            for (tool, steps) in &self.tools {
                let s = &steps[i];
                let ratio = if tool.starts_with('1') {
                    "1".to_string()
                } else {
                    format!("{:.1}×", s.wall / ours[i].wall)
                };
                writeln!(
                    f,
                    "| {step} | {} | {:.2} | {ratio} | {:.2} | {:.0} | {} | {} | {:.0} |",
                    &tool[2..],
                    s.wall,
                    s.cpu,
                    s.rss_mib,
                    mb(s.read),
                    mb(s.sent),
                    s.repo as f64 / 1e6
                )?;
            }
        }
        for (i, step) in STEPS.iter().enumerate() {
            let fl = &self.floor[i];
            writeln!(
                f,
                "| {step} | floor (zstd {}, 2 threads) | {:.2} | {:.1}× | {:.2} | | {} | | {:.0} |",
                self.level,
                fl.wall,
                fl.wall / ours[i].wall,
                fl.cpu,
                mb(fl.read),
                fl.repo as f64 / 1e6
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "This project against its floors (ratio = this project ÷ floor):"
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "| step | wall s | floor wall s | wall ÷ floor | CPU s | floor CPU s | CPU ÷ floor |"
        )?;
        writeln!(f, "|---|---|---|---|---|---|---|")?;
        for (i, step) in STEPS.iter().enumerate() {
            let (o, fl) = (&ours[i], &self.floor[i]);
            writeln!(
                f,
                "| {step} | {:.2} | {:.2} | {:.2}× | {:.2} | {:.2} | {:.2}× |",
                o.wall,
                fl.wall,
                o.wall / fl.wall,
                o.cpu,
                fl.cpu,
                o.cpu / fl.cpu
            )?;
        }
        writeln!(f)?;
        writeln!(f, "repo-server peak RSS: {:.0} MiB", self.server_rss_mib)
    }
}

/// How the figures are made, printed above the table.
const METHOD: &str = "
Method: a fresh repository per run and tool; full backup of disk.raw, incremental of disk2.raw
(this project with cbt.json; restic and borg read the whole image through stdin under one name,
so day 2 has day 1 as parent), restore of the incremental (this project: sparse, every block's
blake3 checked, then compared with disk2.raw outside dropped ranges; restic: `restic dump`;
borg: `borg extract`, `--sparse` for the fixed-chunk run). Wall, CPU (user+sys; for this project
the mover plus the server's CPU over the step) and peak RSS from /usr/bin/time and /proc; repo =
bytes of the repository's files after the step; read = bytes read from the source (restic and
borg read the whole file); sent = compressed bytes over HTTP/2 (the peers write locally). Ratio =
peer wall ÷ this project's wall. Warm page cache. Floors, in one process on 2 threads, no
network, no catalog: full = read the bytes this project reads of disk.raw, blake3, zstd at the
project's default level, then the repository's check (decompress, blake3) and a write of the
compressed bytes (one fsync at the end); incremental = the same for the bytes of disk2.raw that
cbt.json lists as changed and day 2's plan must read; restore = read back every piece both floors
wrote, decompress, blake3, write it into a sparse image.
";
