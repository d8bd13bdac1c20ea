//! `gateway [--config FILE] [--listen ADDR] [--data DIR]`: serve a repository on an SMB share.
//! `gateway rescan --config FILE [--data DIR]`: rebuild the local catalog from the share.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use gateway::lease::Lease;
use gateway::share::Share;
use repo_server::{App, Config};

/// The gateway: the backup repository's HTTP/2 API, with the repository's data on an SMB share
/// (config section `[share]`) and its catalog on local disk (`--data`).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// TOML configuration file: repo-server's (see config.example.toml) plus a [share] section.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Local data directory for the catalog and the admin token [default: ./repo-data].
    #[arg(long, global = true)]
    data: Option<PathBuf>,
    /// Lease length on the share, overriding `[share] lease` (default 60 s; another gateway may
    /// take over this long after a crash; writes stop when a third of it is left unrenewed).
    #[arg(long, global = true)]
    lease_secs: Option<u64>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Rebuild the catalog in --data from the manifests, indexes and chunks on the share (every
    /// chunk is read back and checked). Prints a JSON report.
    Rescan,
}

fn main() -> anyhow::Result<()> {
    repo_server::server::init_logging();
    let args = Args::parse();
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(d) = &args.data {
        config.data = d.clone();
    }
    let share_cfg = config.share.clone().context(
        "the gateway needs a [share] section in its config (server, share, path, user, password or credentials_file)",
    )?;
    std::fs::create_dir_all(&config.data)
        .with_context(|| format!("cannot create {}", config.data.display()))?;
    // Outside any async runtime: the share runs its own.
    let share = Arc::new(Share::open(&share_cfg).with_context(|| {
        format!(
            "cannot open the share //{}/{}",
            share_cfg.server, share_cfg.share
        )
    })?);
    let ttl = args.lease_secs.map_or(share_cfg.lease, Duration::from_secs);
    let lease = Lease::acquire(share.clone(), &config.data, ttl)?;
    let left = share.clean_tmp()?;
    if left > 0 {
        tracing::info!(
            files = left,
            "removed temp files of interrupted writes from the share"
        );
    }
    let stores = gateway::stores(&share);
    match args.command {
        Some(Command::Rescan) => {
            let repo = repo_server::repo::Repository::open_with(
                config.data.clone(),
                repo_server::repo::Settings::from(&config),
                Arc::default(),
                stores,
            )?;
            let report = repo.rescan(&mut |r| {
                eprintln!(
                    "rescan: {} of {} manifests adopted, {} chunks read back",
                    r.adopted, r.manifests, r.chunks
                );
            })?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            drop(repo);
            drop(lease);
            if !report.skipped.is_empty() {
                std::process::exit(1);
            }
            Ok(())
        }
        None => {
            let listen = config.listen;
            let app = App::open_with(config, Some(stores))?;
            tracing::info!(share = %share.describe(), "gateway: repository data on the share");
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("cannot listen on {listen}"))?;
                println!("listening on {}", listener.local_addr()?);
                repo_server::run(listener, app, repo_server::server::shutdown_signal()).await?;
                anyhow::Ok(())
            })?;
            drop(rt);
            drop(lease);
            Ok(())
        }
    }
}
