//! `source-mover`: backup, restore, verify, list, demo. Parses the command line, calls the library.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use schema::api::BackupList;
use source_mover::backup::{backup, encode, BackupOptions, Base};
use source_mover::client::RepoClient;
use source_mover::files::{self, FileSystem};
use source_mover::restore::{resolve, restore};

/// The backup proxy: reads only the blocks of VM disks that matter and pushes what the
/// repository lacks over HTTP/2; restores and verifies backups.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Back up disks of one source (full, or incremental over a base).
    Backup(BackupArgs),
    /// Restore one disk of a backup to a file or block device.
    Restore(RestoreArgs),
    /// Re-read a backup from the repository and check every block.
    Verify(VerifyArgs),
    /// List backups.
    List(ListArgs),
    /// Guest files of backups: list a directory, fetch a file, search names across backups.
    #[command(subcommand)]
    Files(FilesCmd),
    /// Start a repository, back up a freshly built VM disk, change it, back up incrementally,
    /// restore and check both: the whole product in one command.
    Demo {
        /// Keep the demo's files here instead of a temporary directory.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
struct Repo {
    /// Repository URL (http://host:port).
    #[arg(long)]
    repo: String,
    /// File holding the bearer token.
    #[arg(long)]
    token_file: PathBuf,
    /// How long network errors and 429/503 answers are retried.
    #[arg(long, default_value = "30m", value_parser = duration)]
    retry_for: Duration,
}

#[derive(Debug, Args)]
struct BackupArgs {
    #[command(flatten)]
    repo: Repo,
    /// Source name (the VM).
    #[arg(long)]
    source: String,
    /// A disk: NAME=PATH (image file or block device). Repeatable.
    #[arg(long = "disk", required = true, value_parser = pair)]
    disks: Vec<(String, PathBuf)>,
    /// Changed-block list of a disk: NAME=FILE ({"base": "<backup id>", "changed": [[offset,
    /// length], ...]}); refused (exit code 2) unless its base is the backup this one builds on.
    #[arg(long = "cbt", value_parser = pair)]
    cbt: Vec<(String, PathBuf)>,
    /// Base of an incremental: latest (of this source), none, or a backup id.
    #[arg(long, default_value = "latest")]
    base: String,
    /// Block size: 256K, 512K, 1M or 4M [default: 1M; wan profile: 256K].
    #[arg(long, value_parser = block_size)]
    block_size: Option<u32>,
    /// zstd level for uploaded chunks [default: 3; wan profile: 6].
    #[arg(long)]
    zstd_level: Option<i32>,
    /// Files to drop at block level: NAME:GLOB (inside ext2/3/4 partitions of disk NAME). Repeatable.
    #[arg(long = "exclude", value_parser = exclude)]
    excludes: Vec<(String, String)>,
    /// Concurrent chunk uploads (HTTP/2 streams) [default: 32; wan profile: 64].
    #[arg(long)]
    streams: Option<usize>,
    /// Do not index guest files: the backup can still be restored whole, but not browsed,
    /// searched or restored file by file (excludes still apply).
    #[arg(long)]
    no_file_index: bool,
    /// HTTP/2 connections, used round-robin [default: 1; wan profile: 4].
    #[arg(long)]
    connections: Option<usize>,
    /// Presets: lan (1M blocks, zstd 3, 32 streams, 1 connection) or wan (256K blocks, zstd 6,
    /// 64 streams, 4 connections); explicit options override the preset.
    #[arg(long, default_value = "lan", value_parser = ["lan", "wan"])]
    profile: String,
    /// Cap on upload bytes per second (e.g. 50M).
    #[arg(long, value_parser = size)]
    limit_rate: Option<u64>,
    /// Where the resumable journal is kept.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct RestoreArgs {
    #[command(flatten)]
    repo: Repo,
    /// Backup id, or latest.
    #[arg(long)]
    backup: String,
    /// Source name, to pick the latest of.
    #[arg(long)]
    source: Option<String>,
    /// Disk name.
    #[arg(long)]
    disk: String,
    /// Output file (created sparse) or block device.
    #[arg(long)]
    to: PathBuf,
    /// Concurrent chunk fetches.
    #[arg(long, default_value_t = 16)]
    streams: usize,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct VerifyArgs {
    #[command(flatten)]
    repo: Repo,
    /// Backup id, or latest.
    #[arg(long)]
    backup: String,
    /// Source name, to pick the latest of.
    #[arg(long)]
    source: Option<String>,
    /// Concurrent chunk fetches.
    #[arg(long, default_value_t = 16)]
    streams: usize,
}

#[derive(Debug, Subcommand)]
enum FilesCmd {
    /// List a directory of a backed-up guest file system, like `ls -l`.
    Ls {
        #[command(flatten)]
        at: FilesAt,
        /// Directory (or file) inside the guest file system.
        #[arg(long, default_value = "/")]
        path: String,
        /// Levels to descend (1: the directory's own entries).
        #[arg(long, default_value_t = 1)]
        depth: u32,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write one guest file of a backup to a file, or to standard output.
    Get {
        #[command(flatten)]
        at: FilesAt,
        /// The file inside the guest file system.
        #[arg(long)]
        path: String,
        /// Output file [default: standard output].
        #[arg(long)]
        to: Option<PathBuf>,
    },
    /// Find files by name across backups, newest backup first.
    Search {
        #[command(flatten)]
        repo: Repo,
        /// Glob on the file name: nginx.conf, *.conf, log?.txt.
        #[arg(long)]
        name: String,
        /// Only under this directory.
        #[arg(long)]
        path: Option<String>,
        /// Only backups of this source.
        #[arg(long)]
        source: Option<String>,
        /// Only backups created at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Only backups created before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// At most this many results.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct FilesAt {
    #[command(flatten)]
    repo: Repo,
    /// Backup id, or latest.
    #[arg(long, default_value = "latest")]
    backup: String,
    /// Source name, to pick the latest of.
    #[arg(long)]
    source: Option<String>,
    /// Disk [default: the first disk with an indexed file system].
    #[arg(long)]
    disk: Option<String>,
    /// Partition number, 0 for a file system on the whole disk [default: the first indexed].
    #[arg(long)]
    partition: Option<u32>,
}

impl FilesAt {
    fn fs(&self) -> FileSystem {
        FileSystem {
            disk: self.disk.clone(),
            partition: self.partition,
        }
    }
}

#[derive(Debug, Args)]
struct ListArgs {
    #[command(flatten)]
    repo: Repo,
    /// Only this source.
    #[arg(long)]
    source: Option<String>,
}

fn pair(s: &str) -> Result<(String, PathBuf), String> {
    let (n, p) = s.split_once('=').ok_or("expected NAME=PATH")?;
    n.parse::<schema::DiskName>().map_err(|e| e.to_string())?;
    Ok((n.to_owned(), PathBuf::from(p)))
}

fn exclude(s: &str) -> Result<(String, String), String> {
    let (n, g) = s
        .split_once(':')
        .ok_or("expected NAME:GLOB, e.g. disk0:/var/cache/**")?;
    Ok((n.to_owned(), g.to_owned()))
}

fn size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let n: u64 = t[..split]
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as 50M"))?;
    let m = match t[split..].trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KIB" => 1 << 10,
        "M" | "MIB" => 1 << 20,
        "G" | "GIB" => 1 << 30,
        "KB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(format!("{s:?}: unknown unit")),
    };
    n.checked_mul(m)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn block_size(s: &str) -> Result<u32, String> {
    let n = size(s)?;
    match u32::try_from(n) {
        Ok(b) if schema::BLOCK_SIZES.contains(&b) => Ok(b),
        _ => Err(format!("block size must be 256K, 512K, 1M or 4M, not {s}")),
    }
}

fn duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 30m"))?;
    Ok(Duration::from_secs(match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{s:?}: use s, m or h")),
    }))
}

fn client(r: &Repo, limit: Option<u64>, connections: usize) -> anyhow::Result<RepoClient> {
    let token = std::fs::read_to_string(&r.token_file)
        .with_context(|| format!("cannot read token file {}", r.token_file.display()))?;
    Ok(RepoClient::with_connections(
        &r.repo,
        &token,
        r.retry_for,
        limit,
        connections,
    )?)
}

fn state_dir(given: Option<PathBuf>) -> PathBuf {
    given.unwrap_or_else(|| {
        let base = std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
            .unwrap_or_else(|| PathBuf::from("."));
        base.join("source-mover")
    })
}

fn mb(b: u64) -> String {
    format!("{:.1} MB", b as f64 / 1e6)
}

/// Exit codes: 0 done, 1 failed, 2 refused before anything was committed because the command's
/// input cannot be used as given (clap's usage errors exit 2 as well).
fn main() -> std::process::ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(Cli::parse())) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:?}");
            let refused = matches!(
                e.downcast_ref::<source_mover::error::Error>(),
                Some(source_mover::error::Error::Refused(_))
            );
            std::process::ExitCode::from(if refused { 2 } else { 1 })
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    match cli.cmd {
        Cmd::Backup(a) => {
            let wan = a.profile == "wan";
            let connections = a.connections.unwrap_or(if wan { 4 } else { 1 });
            let c = client(&a.repo, a.limit_rate, connections)?;
            let base = match a.base.as_str() {
                "latest" => Base::Latest,
                "none" => Base::None,
                id => {
                    id.parse::<schema::BackupId>()
                        .map_err(|e| anyhow::anyhow!("--base: {e}"))?;
                    Base::Id(id.to_owned())
                }
            };
            let file_index = !a.no_file_index;
            let opts = BackupOptions {
                source: a.source,
                disks: a
                    .disks
                    .iter()
                    .map(|(n, p)| Ok((n.clone(), source_mover::source::open(p)?)))
                    .collect::<source_mover::Result<_>>()?,
                cbt: a
                    .cbt
                    .iter()
                    .map(|(n, p)| (n.clone(), source_mover::cbt::json_file(p)))
                    .collect::<BTreeMap<_, _>>(),
                base,
                block_size: a
                    .block_size
                    .unwrap_or(if wan { 256 << 10 } else { 1 << 20 }),
                zstd_level: a.zstd_level.unwrap_or(if wan { 6 } else { 3 }),
                excludes: a.excludes,
                file_index,
                streams: a.streams.unwrap_or(if wan { 64 } else { 32 }),
                state_dir: state_dir(a.state_dir),
                progress: tty || !a.json,
            };
            let r = backup(&c, &opts).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "backup {} of {} committed{}",
                    r.backup_id,
                    r.source,
                    r.base
                        .as_ref()
                        .map(|b| format!(" (incremental over {b})"))
                        .unwrap_or_default()
                );
                for d in &r.disks {
                    println!(
                        "  disk {} = {} ({}){}",
                        d.name,
                        d.path,
                        mb(d.size),
                        if d.cbt { ", CBT" } else { "" }
                    );
                    for f in &d.found {
                        println!("    {f}");
                    }
                }
                println!(
                    "  read {} of {}; skipped {}",
                    mb(r.read_bytes),
                    mb(r.logical_bytes),
                    r.skipped_bytes
                        .iter()
                        .map(|(k, v)| format!("{k} {}", mb(*v)))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                println!("  uploaded {} chunks, {} compressed; repository stored {} new chunks ({}), reused {}", r.chunks_uploaded, mb(r.sent_bytes), r.new_chunks, mb(r.stored_bytes), r.reused_chunks);
                if file_index {
                    println!(
                        "  guest files indexed: {} ({:.2} s walking and uploading, beside the data)",
                        r.files_indexed, r.file_index_seconds
                    );
                } else {
                    println!("  guest files not indexed (--no-file-index)");
                }
                println!(
                    "  {:.2} s, peak RSS {}{}",
                    r.duration_ms as f64 / 1000.0,
                    mb(r.peak_rss_bytes),
                    if r.resumed { ", resumed" } else { "" }
                );
            }
        }
        Cmd::Restore(a) => {
            let c = client(&a.repo, None, 1)?;
            let m = resolve(&c, &a.backup, a.source.as_deref()).await?;
            let r = restore(&c, &m, &a.disk, Some(&a.to), a.streams, tty).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!("restored disk {} of {} to {}: {}, {} blocks ({} holes not fetched), every block verified, {:.2} s", r.disk, r.backup_id, a.to.display(), mb(r.size), r.blocks, r.holes, r.duration_ms as f64 / 1000.0);
            }
        }
        Cmd::Verify(a) => {
            let c = client(&a.repo, None, 1)?;
            let m = resolve(&c, &a.backup, a.source.as_deref()).await?;
            for d in &m.disks {
                let r = restore(&c, &m, d.name.as_str(), None, a.streams, tty).await?;
                println!(
                    "verified disk {} of {}: {} blocks ({} holes), all match their digests",
                    r.disk, r.backup_id, r.blocks, r.holes
                );
            }
        }
        Cmd::List(a) => {
            let c = client(&a.repo, None, 1)?;
            let mut path = String::from("/v1/backups?limit=1000");
            if let Some(s) = &a.source {
                path.push_str(&format!("&source={}", encode(s)));
            }
            let list: BackupList = c.get_json(&path).await?;
            if list.backups.is_empty() {
                bail!(
                    "no backups{}",
                    a.source.map(|s| format!(" of {s}")).unwrap_or_default()
                );
            }
            println!(
                "{:<28} {:<16} {:<25} {:>10} {:>10}  base",
                "backup", "source", "created", "logical", "stored"
            );
            for m in &list.backups {
                println!(
                    "{:<28} {:<16} {:<25} {:>10} {:>10}  {}",
                    m.id.as_str(),
                    m.source,
                    m.created,
                    mb(m.stats.logical_bytes),
                    mb(m.stats.stored_bytes),
                    m.base.as_ref().map(|b| b.as_str()).unwrap_or("-")
                );
            }
        }
        Cmd::Files(f) => files_cmd(f).await?,
        Cmd::Demo { dir } => source_mover::demo::demo(dir).await?,
    }
    Ok(())
}

async fn files_cmd(f: FilesCmd) -> anyhow::Result<()> {
    match f {
        FilesCmd::Ls {
            at,
            path,
            depth,
            json,
        } => {
            let c = client(&at.repo, None, 1)?;
            let l =
                files::list(&c, &at.backup, at.source.as_deref(), &path, depth, &at.fs()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&l)?);
            } else {
                eprintln!(
                    "backup {}, disk {}, partition {}: {}",
                    l.backup, l.disk, l.partition, l.path
                );
                print!("{}", files::format_listing(&l));
            }
        }
        FilesCmd::Get { at, path, to } => {
            let c = client(&at.repo, None, 1)?;
            // A file is written beside its name and renamed once complete: a failed fetch never
            // leaves a truncated file under the asked-for name.
            let part = to.as_ref().map(|p| p.with_extension("part"));
            let mut file = match &part {
                Some(t) => Some(
                    std::fs::File::create(t)
                        .with_context(|| format!("cannot create {}", t.display()))?,
                ),
                None => None,
            };
            let mut stdout = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout());
            let out: &mut (dyn std::io::Write + Send) = match &mut file {
                Some(f) => f,
                None => &mut stdout,
            };
            let got = files::get(&c, &at.backup, at.source.as_deref(), &path, &at.fs(), out).await;
            let n = match (got, file, &to, &part) {
                (Ok(n), Some(f), Some(p), Some(t)) => {
                    f.sync_all()?;
                    std::fs::rename(t, p).with_context(|| {
                        format!("cannot rename {} to {}", t.display(), p.display())
                    })?;
                    n
                }
                (Ok(n), _, _, _) => {
                    std::io::Write::flush(&mut stdout)?;
                    n
                }
                (Err(e), _, _, part) => {
                    if let Some(t) = part {
                        let _ = std::fs::remove_file(t);
                    }
                    return Err(e.into());
                }
            };
            eprintln!(
                "{path}: {n} bytes{}",
                to.map(|p| format!(" written to {}", p.display()))
                    .unwrap_or_default()
            );
        }
        FilesCmd::Search {
            repo,
            name,
            path,
            source,
            since,
            until,
            limit,
            json,
        } => {
            let c = client(&repo, None, 1)?;
            let q = files::Search {
                name,
                path,
                source,
                since,
                until,
            };
            let r = files::search(&c, &q, limit.max(1)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                for h in &r.results {
                    println!("{}", files::format_hit(h));
                }
                eprintln!(
                    "{} of {} matches shown{}",
                    r.results.len(),
                    r.total,
                    if r.truncated {
                        " (the scan stopped at its limit; narrow the name)"
                    } else {
                        ""
                    }
                );
            }
        }
    }
    Ok(())
}
