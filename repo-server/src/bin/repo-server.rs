//! `repo-server [--config FILE] [--listen ADDR] [--data DIR]`: parse, open, serve.
//! `repo-server check --data DIR [--repair]`: the offline consistency check.

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REPO_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
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
    let mut config = match &args.config {
        Some(p) => Config::from_file(p)?,
        None => Config::default(),
    };
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(d) = args.data {
        config.data = d;
    }
    let listen = config.listen;
    let app = App::open(config)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    // Tell a parent process (tests, the demo) the real port when listening on :0.
    println!("listening on {}", listener.local_addr()?);
    repo_server::run(listener, app, shutdown_signal()).await?;
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

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("signal received");
}
