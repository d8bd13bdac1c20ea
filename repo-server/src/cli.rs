//! The `repo-server` command line: `repo-server [--config FILE] [--listen ADDR] [--data DIR]`
//! serves; `repo-server check --data DIR [--repair]` runs the offline consistency check;
//! `repo-server rescan --data DIR` rebuilds catalog rows from the stored manifests.
//!
//! This is the body of the binary (`src/bin/repo-server.rs` only calls [`main`]), kept in the
//! library so that the crash-test binary of the `tests` crate runs exactly the same program after
//! arming a fail point ([`crate::fail`]). Like a binary, it reports errors with `anyhow`.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::{App, Config};
use anyhow::Context;
use clap::Parser;

/// The backup repository: a content-addressed chunk store with a RocksDB catalog, served over
/// HTTP/2 (h2c and TLS) and HTTP/1.1.
#[derive(Debug, Parser)]
#[command(name = "repo-server", version)]
struct Args {
    /// TOML configuration file (see config.example.toml); every field has a default.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory [default: ./repo-data].
    #[arg(long)]
    data: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// With the server stopped: check that the catalog, index blobs and chunk files agree.
    /// Prints a JSON report; exits 0 when consistent (leftovers of interrupted writes allowed),
    /// 1 when problems remain, 2 when the check could not run.
    Check {
        /// Data directory of the repository.
        #[arg(long)]
        data: PathBuf,
        /// Also repair what can be repaired without losing anything (see the report's
        /// `repaired`).
        #[arg(long)]
        repair: bool,
    },
    /// With the server stopped: add to the catalog every backup whose manifest is in
    /// DATA/manifests but not in the catalog (each chunk is read back and checked). Prints a JSON
    /// report; exits 0, or 1 when a backup had to be left out.
    Rescan {
        /// Data directory of the repository.
        #[arg(long)]
        data: PathBuf,
    },
}

/// The `repo-server` program: parses the command line (`std::env::args`) and serves, checks or
/// rescans until done. Logging goes to stderr (`REPO_LOG`).
///
/// # Errors
/// What kept the server from starting or a subcommand from running, with context for people.
#[tokio::main]
pub async fn main() -> anyhow::Result<()> {
    crate::server::init_logging();
    let args = Args::parse();
    if let Some(Command::Check { data, repair }) = &args.command {
        std::process::exit(match crate::check::check(data, *repair) {
            Ok(report) => {
                println!("{:#}", report.to_json());
                if report.consistent() || (*repair && report_fixed(&report)) {
                    0
                } else {
                    1
                }
            }
            Err(e) => {
                eprintln!("repo-server check: {}", e.message);
                2
            }
        });
    }
    if let Some(Command::Rescan { data }) = &args.command {
        let config = Config {
            data: data.clone(),
            ..Config::default()
        };
        let repo = crate::repo::Repository::open(
            data.clone(),
            crate::repo::Settings::from(&config),
            Default::default(),
        )
        .with_context(|| {
            format!(
                "cannot open the repository in {} (is the server running?)",
                data.display()
            )
        })?;
        let report = repo.rescan(&mut |r| {
            eprintln!("rescan: {} of {} manifests adopted", r.adopted, r.manifests);
        })?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        std::process::exit(i32::from(!report.skipped.is_empty()));
    }
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(d) = args.data {
        config.data = d;
    }
    if config.share.is_some() {
        anyhow::bail!("the config has a [share] section: a repository on an SMB share is served by the gateway (`gateway --config ...`), not by repo-server");
    }
    let listen = config.listen;
    let app = App::open(config)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    // Tell a parent process (tests, the demo) the real port when listening on :0.
    println!("listening on {}", listener.local_addr()?);
    crate::run(listener, app, crate::server::shutdown_signal()).await?;
    Ok(())
}

/// Whether a repair fixed every problem found (each kind has a matching repair).
fn report_fixed(r: &crate::check::Report) -> bool {
    r.problems.keys().all(|k| {
        !matches!(
            *k,
            "dangling_references" | "index_blobs_bad" | "undecodable_chunk_rows"
        )
    })
}
