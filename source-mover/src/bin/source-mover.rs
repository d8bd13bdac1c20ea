//! `source-mover`: backup, restore, verify, list, files, demo. Parses the command line
//! ([`source_mover::cli`]), applies a [`Profile`], calls the library and prints its reports.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Parser;
use source_mover::backup::{backup, BackupOptions, Base};
use source_mover::cli::{BackupArgs, Cli, Cmd, FilesCmd, Repo};
use source_mover::client::RepoClient;
use source_mover::files::{self, Hits, Listing};
use source_mover::profile::{default_state_dir, Profile};
use source_mover::report::BackupTable;
use source_mover::restore::{resolve, restore_with};
use source_mover::tls::Trust;

fn client(r: &Repo, limit: Option<u64>, connections: usize) -> anyhow::Result<RepoClient> {
    let token = std::fs::read_to_string(&r.token_file)
        .with_context(|| format!("cannot read token file {}", r.token_file.display()))?;
    let trust = Trust {
        ca_file: r.ca_file.clone(),
        fingerprint: r.fingerprint,
    };
    Ok(RepoClient::with_trust(
        &r.repo,
        &token,
        r.retry_for,
        limit,
        connections,
        &trust,
    )?)
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

/// The backup options: the profile's values unless given, the journal's default place.
fn backup_options(a: BackupArgs, p: Profile, tty: bool) -> anyhow::Result<BackupOptions> {
    let base = Base::parse(&a.base).map_err(|e| anyhow::anyhow!("--base: {e}"))?;
    let state_dir = a.state_dir.unwrap_or_else(|| {
        default_state_dir(
            std::env::var_os("XDG_STATE_HOME").map(PathBuf::from),
            std::env::var_os("HOME").map(PathBuf::from),
        )
    });
    let (disks, cbt) = source_mover::options::open_disks(&a.disks, &a.cbt)?;
    Ok(BackupOptions {
        source: a.source,
        disks,
        cbt,
        cbt_points: a.cbt_points.into_iter().collect(),
        base,
        block_size: a.block_size.unwrap_or(p.block_size),
        zstd_level: a.zstd_level.unwrap_or(p.zstd_level),
        excludes: a.excludes,
        file_index: !a.no_file_index,
        encryption_key: source_mover::keys::from_args(&a.encryption)?,
        streams: a.streams.unwrap_or(p.streams),
        state_dir,
        progress: tty || !a.json,
    })
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// A report as JSON or as text.
fn report(json: bool, r: &(impl serde::Serialize + std::fmt::Display)) -> anyhow::Result<()> {
    if json {
        return print_json(r);
    }
    println!("{r}");
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    match cli.cmd {
        Cmd::Backup(a) => {
            let p = Profile::named(&a.profile).unwrap_or_default();
            let connections = a.connections.unwrap_or(p.connections);
            let c = client(&a.repo, a.limit_rate, connections)?;
            let json = a.json;
            report(json, &backup(&c, &backup_options(a, p, tty)?).await?)?;
        }
        Cmd::Restore(a) => {
            let c = client(&a.repo, None, 1)?;
            let m = resolve(&c, &a.backup, a.source.as_deref()).await?;
            let key = source_mover::keys::from_args(&a.encryption)?;
            let r = restore_with(&c, &m, &a.disk, Some(&a.to), a.streams, tty, key).await?;
            report(a.json, &r)?;
        }
        Cmd::Verify(a) => {
            let c = client(&a.repo, None, 1)?;
            let m = resolve(&c, &a.backup, a.source.as_deref()).await?;
            let key = source_mover::keys::from_args(&a.encryption)?;
            for d in &m.disks {
                let (n, k) = (d.name.as_str(), key.clone());
                let r = restore_with(&c, &m, n, None, a.streams, tty, k).await?;
                println!("{r}");
            }
        }
        Cmd::List(a) => {
            let c = client(&a.repo, None, 1)?;
            let list = c.backups(a.source.as_deref(), 1000).await?;
            if list.backups.is_empty() {
                let of = a.source.map(|s| format!(" of {s}")).unwrap_or_default();
                bail!("no backups{of}");
            }
            println!("{}", BackupTable(&list.backups));
        }
        Cmd::Files(f) => files_cmd(f).await?,
        Cmd::Key(k) => println!("{}", source_mover::keys::command(k)?),
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
            let key = source_mover::keys::from_args(&at.encryption)?;
            let (b, s) = (&at.backup, at.source.as_deref());
            let l = files::list(&c, b, s, &path, depth, &at.fs(), key.as_ref()).await?;
            if json {
                print_json(&l)?;
            } else {
                eprintln!(
                    "backup {}, disk {}, partition {}: {}",
                    l.backup, l.disk, l.partition, l.path
                );
                print!("{}", Listing(&l));
            }
        }
        FilesCmd::Get { at, path, to } => {
            let c = client(&at.repo, None, 1)?;
            let (backup, source) = (&at.backup, at.source.as_deref());
            let key = source_mover::keys::from_args(&at.encryption)?;
            let (fs, out, k) = (at.fs(), to.as_deref(), key.as_ref());
            let n = files::get_to(&c, backup, source, &path, &fs, out, k).await?;
            let written = to.map(|p| format!(" written to {}", p.display()));
            eprintln!("{path}: {n} bytes{}", written.unwrap_or_default());
        }
        FilesCmd::Search {
            repo,
            encryption,
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
            let key = source_mover::keys::from_args(&encryption)?;
            let r = files::search(&c, &q, limit.max(1), key.as_ref()).await?;
            if json {
                print_json(&r)?;
            } else {
                print!("{}", Hits(&r));
                eprintln!("{}", Hits(&r).summary());
            }
        }
    }
    Ok(())
}
