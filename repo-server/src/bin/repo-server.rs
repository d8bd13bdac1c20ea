//! `repo-server [--config FILE] [--listen ADDR] [--data DIR]`: parse, open, serve.
//! `repo-server check --data DIR [--repair]`: the offline consistency check.
//! `repo-server rescan --data DIR`: rebuild catalog rows from the stored manifests.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use repo_server::{App, Config};

/// The backup repository: a content-addressed chunk store with a RocksDB catalog, served over
/// HTTP/2 (h2c and TLS) and HTTP/1.1.
#[derive(Debug, Parser)]
#[command(version)]
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    repo_server::server::init_logging();
    let args = Args::parse();
    if let Some(Command::Check { data, repair }) = &args.command {
        std::process::exit(match repo_server::check::check(data, *repair) {
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
        let repo = repo_server::repo::Repository::open(
            data.clone(),
            repo_server::repo::Settings::from(&config),
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
    repo_server::run(listener, app, repo_server::server::shutdown_signal()).await?;
    Ok(())
}

/// Whether a repair fixed every problem found (each kind has a matching repair).
fn report_fixed(r: &repo_server::check::Report) -> bool {
    r.problems.keys().all(|k| {
        !matches!(
            *k,
            "dangling_references" | "index_blobs_bad" | "undecodable_chunk_rows"
        )
    })
}
