//! The `source-mover` command line as data: the clap grammar ([`Cli`] and its subcommands) and
//! the parsers of its values (sizes, durations, `NAME=PATH`). The binary parses it, applies a
//! [`crate::profile::Profile`] and calls the library.
//!
//! Doc comments here are the `--help` text (clap reads them), so items that must not show in the
//! help carry none; the lint for missing docs is off in this module for that reason.
#![allow(missing_docs)]

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::files::FileSystem;

/// The backup proxy: reads only the blocks of VM disks that matter and pushes what the
/// repository lacks over HTTP/2; restores and verifies backups.
#[derive(Debug, Parser)]
#[command(version)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
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
    /// Encryption keys: create, show, change the passphrase, export and import a paper key.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Start a repository, back up a freshly built VM disk, change it, back up incrementally,
    /// restore and check both: the whole product in one command.
    Demo {
        /// Keep the demo's files here instead of a temporary directory.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct Repo {
    /// Repository URL (https://host:port, or http://host:port on a trusted network).
    #[arg(long)]
    pub repo: String,
    /// Also trust the CA certificates in this PEM file for https:// (beside the system's).
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Accept exactly the server certificate with this SHA-256 fingerprint (self-signed
    /// repositories; repo-server prints it at start and in /v1/capabilities).
    #[arg(long, value_name = "SHA256:HEX")]
    pub fingerprint: Option<schema::fingerprint::Fingerprint>,
    /// File holding the bearer token.
    #[arg(long)]
    pub token_file: PathBuf,
    /// How long network errors and 429/503 answers are retried.
    #[arg(long, default_value = "30m", value_parser = duration)]
    pub retry_for: Duration,
}

/// The key of encrypted backups, as the commands that make or read them take it.
#[derive(Debug, Args, Clone, Default)]
pub struct Encryption {
    /// Key file (`source-mover key create`): a backup made with it is encrypted (an incremental
    /// builds only on a backup of the same key); restore, verify and files need it to read one.
    #[arg(long)]
    pub encryption_key: Option<PathBuf>,
    /// File holding the key file's passphrase [default: $SOURCE_MOVER_PASSPHRASE].
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum KeyCmd {
    /// Create a key file: a random 256-bit key wrapped by a passphrase (argon2id), or raw.
    Create {
        /// The new key file (mode 0600; never overwritten).
        file: PathBuf,
        /// Store the key unwrapped (for automation: protect the file itself).
        #[arg(long)]
        raw: bool,
        /// File holding the passphrase [default: $SOURCE_MOVER_PASSPHRASE].
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// Print the key's id and fingerprint (the same for every copy of the key).
    Show {
        file: PathBuf,
        /// File holding the passphrase [default: $SOURCE_MOVER_PASSPHRASE].
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// Wrap the key with a new passphrase (or store it raw); the key and its backups stay.
    ChangePassphrase {
        file: PathBuf,
        /// File holding the current passphrase [default: $SOURCE_MOVER_PASSPHRASE].
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
        /// File holding the new passphrase [default: $SOURCE_MOVER_NEW_PASSPHRASE].
        #[arg(long)]
        new_passphrase_file: Option<PathBuf>,
        /// Store the key unwrapped instead.
        #[arg(long)]
        raw: bool,
    },
    /// Print the paper key (the raw key with a checksum) for disaster recovery.
    Export {
        file: PathBuf,
        /// Print it as a paper key (the only export form).
        #[arg(long, required = true)]
        paper: bool,
        /// File holding the passphrase [default: $SOURCE_MOVER_PASSPHRASE].
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// Make a key file again from a paper key.
    Import {
        /// The new key file.
        file: PathBuf,
        /// File holding the paper key (- for standard input).
        #[arg(long)]
        paper: PathBuf,
        /// Store the key unwrapped.
        #[arg(long)]
        raw: bool,
        /// File holding the new file's passphrase [default: $SOURCE_MOVER_PASSPHRASE].
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub repo: Repo,
    #[command(flatten)]
    pub encryption: Encryption,
    /// Source name (the VM).
    #[arg(long)]
    pub source: String,
    /// A disk: NAME=PATH (raw image file or block device), NAME=nbd://HOST[:PORT]/EXPORT or
    /// NAME=nbd+unix:///EXPORT?socket=PATH (an NBD export, e.g. qemu-nbd or
    /// qemu-storage-daemon). Repeatable.
    #[arg(long = "disk", required = true, value_parser = pair)]
    pub disks: Vec<(String, PathBuf)>,
    /// Changed blocks of a disk: NAME=FILE, a list ({"base": "<backup id>", "changed":
    /// [[offset, length], ...]}), refused (exit code 2) unless its base is the backup this one
    /// builds on; or NAME=bitmap:BITMAP, the QEMU dirty bitmap qemu:dirty-bitmap:BITMAP of the
    /// disk's NBD export, used only if the base recorded BITMAP as its --cbt-point (else the
    /// disk is read in full and the summary says why).
    #[arg(long = "cbt", value_parser = pair)]
    pub cbt: Vec<(String, PathBuf)>,
    /// NAME=BITMAP: the dirty bitmap started at this backup's point (added just before it, or
    /// in the QMP transaction that froze the previous one); recorded in the backup, so that the
    /// next incremental can use --cbt NAME=bitmap:BITMAP. Repeatable.
    #[arg(long = "cbt-point", value_parser = bitmap_point)]
    pub cbt_points: Vec<(String, String)>,
    /// Base of an incremental: latest (of this source), none, or a backup id.
    #[arg(long, default_value = "latest")]
    pub base: String,
    /// Block size: 256K, 512K, 1M or 4M [default: 1M; wan profile: 256K].
    #[arg(long, value_parser = block_size)]
    pub block_size: Option<u32>,
    /// zstd level for uploaded chunks [default: 1; wan profile: 6].
    #[arg(long)]
    pub zstd_level: Option<i32>,
    /// Files to drop at block level: NAME:GLOB (inside ext2/3/4 partitions of disk NAME). Repeatable.
    #[arg(long = "exclude", value_parser = exclude)]
    pub excludes: Vec<(String, String)>,
    /// Concurrent chunk uploads (HTTP/2 streams) [default: 32; wan profile: 64].
    #[arg(long)]
    pub streams: Option<usize>,
    /// Do not index guest files: the backup can still be restored whole, but not browsed,
    /// searched or restored file by file (excludes still apply).
    #[arg(long)]
    pub no_file_index: bool,
    /// HTTP/2 connections, used round-robin [default: 1; wan profile: 4].
    #[arg(long)]
    pub connections: Option<usize>,
    /// Presets: lan (1M blocks, zstd 1, 32 streams, 1 connection) or wan (256K blocks, zstd 6,
    /// 64 streams, 4 connections); explicit options override the preset.
    #[arg(long, default_value = "lan", value_parser = ["lan", "wan"])]
    pub profile: String,
    /// Cap on upload bytes per second (e.g. 50M).
    #[arg(long, value_parser = size)]
    pub limit_rate: Option<u64>,
    /// Where the resumable journal is kept.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub repo: Repo,
    #[command(flatten)]
    pub encryption: Encryption,
    /// Backup id, or latest.
    #[arg(long)]
    pub backup: String,
    /// Source name, to pick the latest of.
    #[arg(long)]
    pub source: Option<String>,
    /// Disk name.
    #[arg(long)]
    pub disk: String,
    /// Output: a file (created sparse) or block device, or an NBD export
    /// (nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH; holes are written as
    /// WRITE_ZEROES), e.g. qemu-nbd -f qcow2 serving a qcow2 image.
    #[arg(long)]
    pub to: PathBuf,
    /// Concurrent chunk fetches.
    #[arg(long, default_value_t = 16)]
    pub streams: usize,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub repo: Repo,
    #[command(flatten)]
    pub encryption: Encryption,
    /// Backup id, or latest.
    #[arg(long)]
    pub backup: String,
    /// Source name, to pick the latest of.
    #[arg(long)]
    pub source: Option<String>,
    /// Concurrent chunk fetches.
    #[arg(long, default_value_t = 16)]
    pub streams: usize,
}

#[derive(Debug, Subcommand)]
pub enum FilesCmd {
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
        #[command(flatten)]
        encryption: Encryption,
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
pub struct FilesAt {
    #[command(flatten)]
    pub repo: Repo,
    #[command(flatten)]
    pub encryption: Encryption,
    /// Backup id, or latest.
    #[arg(long, default_value = "latest")]
    pub backup: String,
    /// Source name, to pick the latest of.
    #[arg(long)]
    pub source: Option<String>,
    /// Disk [default: the first disk with an indexed file system].
    #[arg(long)]
    pub disk: Option<String>,
    /// Partition number, 0 for a file system on the whole disk [default: the first indexed].
    #[arg(long)]
    pub partition: Option<u32>,
}

impl FilesAt {
    /// The file system these options select.
    pub fn fs(&self) -> FileSystem {
        FileSystem {
            disk: self.disk.clone(),
            partition: self.partition,
        }
    }
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub repo: Repo,
    /// Only this source.
    #[arg(long)]
    pub source: Option<String>,
}

/// `NAME=PATH` (a `--disk` or `--cbt`), the name a valid disk name.
///
/// # Errors
/// The message clap shows.
pub fn pair(s: &str) -> Result<(String, PathBuf), String> {
    let (n, p) = s.split_once('=').ok_or("expected NAME=PATH")?;
    n.parse::<schema::DiskName>().map_err(|e| e.to_string())?;
    Ok((n.to_owned(), PathBuf::from(p)))
}

/// `NAME=BITMAP` (a `--cbt-point`): a disk name and a QEMU bitmap name (1 to 1023 bytes, no
/// control characters).
///
/// # Errors
/// The message clap shows.
pub fn bitmap_point(s: &str) -> Result<(String, String), String> {
    let (n, b) = s.split_once('=').ok_or("expected NAME=BITMAP")?;
    n.parse::<schema::DiskName>().map_err(|e| e.to_string())?;
    if b.is_empty() || b.len() > 1023 || b.chars().any(char::is_control) {
        return Err(format!("{b:?} is not a bitmap name"));
    }
    Ok((n.to_owned(), b.to_owned()))
}

/// `NAME:GLOB` (an `--exclude`).
///
/// # Errors
/// The message clap shows.
pub fn exclude(s: &str) -> Result<(String, String), String> {
    let (n, g) = s
        .split_once(':')
        .ok_or("expected NAME:GLOB, e.g. disk0:/var/cache/**")?;
    Ok((n.to_owned(), g.to_owned()))
}

/// A size such as `50M` (K, M, G binary; KB, MB, GB decimal).
///
/// # Errors
/// The message clap shows.
pub fn size(s: &str) -> Result<u64, String> {
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

/// A block size: 256K, 512K, 1M or 4M.
///
/// # Errors
/// The message clap shows.
pub fn block_size(s: &str) -> Result<u32, String> {
    let n = size(s)?;
    match u32::try_from(n) {
        Ok(b) if schema::BLOCK_SIZES.contains(&b) => Ok(b),
        _ => Err(format!("block size must be 256K, 512K, 1M or 4M, not {s}")),
    }
}

/// A duration such as `30m` (s, m, h).
///
/// # Errors
/// The message clap shows.
pub fn duration(s: &str) -> Result<Duration, String> {
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
