//! `bench`: this project measured the way users run it. `main` parses the command line and
//! dispatches; every command is a module.
//!
//! - [`compare`]: `bench compare`, this project against restic and borg on one VM image:
//!   [`project`] (this project's steps), [`peers`] (restic, borg), [`floor`] (read + hash +
//!   compress, the least any tool does), [`measure`] (wall, CPU, RSS, bytes, medians),
//!   [`report`] (the table).
//! - [`settings`]: `bench settings`, this project's steps under different mover settings
//!   (zstd level, block size), alternating, with the amplification of small changes.
//! - [`encryption`]: `bench encryption`, the full backup with and without encryption at rest.
//! - [`wan`]: `bench wan` (goodput through the WAN emulator) and `bench wan-proxy`.
//! - [`catalog`]: `bench catalog`, the guest file catalog at scale.
//! - [`share`]: `bench share`, chunk ingest into a Samba share through the gateway's store.
//! - [`nbd`]: `bench nbd`, a full backup read through `qemu-nbd` against the same image as a
//!   file.
//! - [`export`]: `bench export`, a backup read as an NBD export (`nbdcopy`, `qemu-img`) beside
//!   the mover's restore.
//!
//! Servers are started with the integration tests' harness ([`tests::ChildServer`]), the WAN
//! emulator is [`tests::wan`].

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

mod catalog;
mod compare;
mod encryption;
mod export;
mod floor;
mod measure;
mod nbd;
mod peers;
mod project;
mod report;
mod settings;
mod share;
mod wan;

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Compare this project with restic and borg on a dataset from make-dataset.sh.
    Compare {
        /// Directory with disk.raw, disk2.raw and cbt.json (built here with --quick if absent).
        #[arg(long)]
        dataset: PathBuf,
        /// Small dataset built by the bench itself, one run of each step: for CI.
        #[arg(long)]
        quick: bool,
        /// Runs per figure (median); default 3, 1 with --quick.
        #[arg(long)]
        runs: Option<usize>,
        /// Scratch directory for repositories and restores.
        #[arg(long)]
        work: Option<PathBuf>,
    },
    /// This project's steps under different mover settings, alternating run by run.
    Settings {
        /// Directory with disk.raw, disk2.raw and cbt.json (built here with --quick if absent).
        #[arg(long)]
        dataset: PathBuf,
        /// Small dataset built by the bench itself, one run: for CI.
        #[arg(long)]
        quick: bool,
        /// NAME=ARGS: mover arguments added to both backups, e.g. `zstd1=--zstd-level 1`
        /// (repeat; `default=` for the defaults).
        #[arg(long = "variant", required = true)]
        variants: Vec<String>,
        /// Runs per figure (median); default 3, 1 with --quick.
        #[arg(long)]
        runs: Option<usize>,
        /// Scratch directory for repositories and restores.
        #[arg(long)]
        work: Option<PathBuf>,
    },
    /// The cost of encryption at rest: the full backup of disk.raw with and without
    /// --encryption-key (wall, CPU), runs alternating.
    Encryption {
        /// Directory with disk.raw (built here with --quick if absent).
        #[arg(long)]
        dataset: PathBuf,
        /// Small dataset built by the bench itself, one run each: for CI.
        #[arg(long)]
        quick: bool,
        /// Runs per figure (median); default 5, 1 with --quick.
        #[arg(long)]
        runs: Option<usize>,
        /// Scratch directory for repositories.
        #[arg(long)]
        work: Option<PathBuf>,
    },
    /// Goodput through the WAN emulator at several round-trip times, for the lan and wan presets
    /// and for a single-stream client against a server with default (64 KiB) HTTP/2 windows.
    Wan {
        /// MiB of incompressible data per run.
        #[arg(long, default_value_t = 512)]
        mib: usize,
        /// Link rate per direction in bytes per second (default 100 Mbit/s).
        #[arg(long, default_value_t = 12_500_000)]
        rate: u64,
        /// Round-trip times to measure, in ms.
        #[arg(long, value_delimiter = ',', default_value = "1,20,100,300")]
        rtts: Vec<u64>,
    },
    /// The guest file catalog at scale: N backups of an ext4 image with M files, search latency
    /// and catalog size.
    Catalog {
        /// Backups to make (spread over 10 sources).
        #[arg(long, default_value_t = 100)]
        backups: usize,
        /// Files in the image's file system.
        #[arg(long, default_value_t = 100_000)]
        files: usize,
        /// 10 backups × 3,000 files: for CI.
        #[arg(long)]
        quick: bool,
        /// Churn mode: every backup of one source, this percentage of the files changing in
        /// the image before each backup after the first (1 for 1 %).
        #[arg(long)]
        churn: Option<f64>,
        /// Scratch directory.
        #[arg(long)]
        work: Option<PathBuf>,
        /// Keep the scratch directory.
        #[arg(long)]
        keep: bool,
    },
    /// Chunk ingest into a real Samba share on loopback through the gateway's SMB store.
    Share {
        /// 1 MiB chunks per configuration.
        #[arg(long, default_value_t = 512)]
        chunks: usize,
        /// 64 chunks: for CI.
        #[arg(long)]
        quick: bool,
    },
    /// A full backup of the dataset's disk.raw served by qemu-nbd over a Unix socket against
    /// the same image read as a file: wall and CPU.
    Nbd {
        /// Directory with disk.raw (built here with --quick if absent).
        #[arg(long)]
        dataset: PathBuf,
        /// Small dataset built by the bench itself, one run of each: for CI.
        #[arg(long)]
        quick: bool,
        /// Runs per method (median); default 3, 1 with --quick.
        #[arg(long)]
        runs: Option<usize>,
    },
    /// Read throughput of a backup served as an NBD export (nbdcopy, qemu-img convert) beside
    /// the mover's restore to a file.
    Export {
        /// Directory with disk.raw (built here with --quick if absent).
        #[arg(long)]
        dataset: PathBuf,
        /// Small disk built by the bench itself: for CI.
        #[arg(long)]
        quick: bool,
        /// Runs per figure (median).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Scratch directory.
        #[arg(long)]
        work: Option<PathBuf>,
    },
    /// Run the WAN emulator in front of a repository until interrupted.
    WanProxy {
        /// Address clients connect to.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// The repository's address.
        #[arg(long)]
        upstream: std::net::SocketAddr,
        /// One-way delay in milliseconds (round trip = twice this).
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
        /// Bandwidth per direction in bytes per second (e.g. 12500000 for 100 Mbit/s); none by default.
        #[arg(long)]
        rate: Option<u64>,
        /// Cut every connection every this many seconds (0: never).
        #[arg(long, default_value_t = 0)]
        cut_every: u64,
        /// Cut every connection at random times, this many seconds apart on average (0: never).
        #[arg(long, default_value_t = 0)]
        cut_random: u64,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Compare {
            dataset,
            quick,
            runs,
            work,
        } => compare::run(&dataset, quick, runs, work),
        Cmd::Settings {
            dataset,
            quick,
            variants,
            runs,
            work,
        } => settings::run(&dataset, quick, &variants, runs, work),
        Cmd::Encryption {
            dataset,
            quick,
            runs,
            work,
        } => encryption::run(&dataset, quick, runs, work),
        Cmd::Wan { mib, rate, rtts } => wan::goodput(mib, rate, &rtts),
        Cmd::Nbd {
            dataset,
            quick,
            runs,
        } => {
            let work = std::env::temp_dir().join(format!("bench-nbd-{}", std::process::id()));
            let r = nbd::run(&dataset, quick, runs, &work);
            let _ = std::fs::remove_dir_all(&work);
            r
        }
        Cmd::Export {
            dataset,
            quick,
            runs,
            work,
        } => export::run(&dataset, quick, runs.max(1), work),
        Cmd::Share { chunks, quick } => share::run(if quick { 64 } else { chunks }),
        Cmd::Catalog {
            backups,
            files,
            quick,
            churn,
            work,
            keep,
        } => {
            let (backups, files) = if quick { (10, 3000) } else { (backups, files) };
            let work = work.unwrap_or_else(|| {
                std::env::temp_dir().join(format!("bench-catalog-{}", std::process::id()))
            });
            catalog::run(backups, files, churn, &work, keep)
        }
        Cmd::WanProxy {
            listen,
            upstream,
            delay_ms,
            rate,
            cut_every,
            cut_random,
        } => wan::proxy(listen, upstream, delay_ms, rate, (cut_every, cut_random)),
    }
}
