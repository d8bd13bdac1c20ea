//! `bench compare --dataset DIR [--quick]`: this project, restic and borg on the same VM image,
//! in one process tree, with a warm page cache, each figure the median of N runs.
//!
//! Method (printed with the table): for every tool, a fresh repository per run; steps full
//! backup of disk.raw, incremental of disk2.raw (this project with the CBT list), restore of the
//! incremental. Wall, CPU (user+sys of the whole process tree: for this project the mover plus
//! the server's own CPU over the step) and peak RSS come from `/usr/bin/time` and `/proc`;
//! repository bytes from the sizes of its files after the step. The floor reads the bytes this
//! project had to read and hashes (blake3) and compresses (zstd, the project's level) them on
//! both cores, in process.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

mod catalog;
mod share;

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

/// One measured step.
#[derive(Debug, Clone, Default)]
struct Step {
    wall: f64,
    cpu: f64,
    rss_mib: f64,
    read: Option<u64>,
    sent: Option<u64>,
    repo: u64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn du(p: &Path) -> u64 {
    let mut n = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(_) => n += e.metadata().map(|m| m.len()).unwrap_or(0),
                Err(_) => {}
            }
        }
    }
    n
}

/// Runs `cmd` under /usr/bin/time; returns (wall, cpu, rss MiB, stdout).
fn timed(cmd: &mut Command, stdin: Option<&Path>) -> Result<(f64, f64, f64, Vec<u8>)> {
    let tf = std::env::temp_dir().join(format!("bench-time-{}", std::process::id()));
    let mut t = Command::new("/usr/bin/time");
    t.arg("-f")
        .arg("%e %U %S %M")
        .arg("-o")
        .arg(&tf)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            t.env(k, v);
        }
    }
    if let Some(d) = cmd.get_current_dir() {
        t.current_dir(d);
    }
    if let Some(p) = stdin {
        t.stdin(std::fs::File::open(p)?);
    }
    let out = t
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = std::fs::read_to_string(&tf)?;
    let f: Vec<f64> = text
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    if f.len() < 4 {
        bail!("unexpected /usr/bin/time output {text:?}");
    }
    Ok((f[0], f[1] + f[2], f[3] / 1024.0, out.stdout))
}

fn proc_cpu(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let f: Vec<String> = s[s.rfind(')')? + 2..]
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(0.0)
}

fn proc_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
        .map(|k| k / 1024.0)
        .unwrap_or(0.0)
}

fn bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe.parent().context("exe dir")?.to_path_buf())
}

/// This project: repo-server + source-mover.
fn ours(ds: &Path, work: &Path) -> Result<(Vec<Step>, f64)> {
    let bins = bin_dir()?;
    let repo = work.join("ours-repo");
    let _ = std::fs::remove_dir_all(&repo);
    let _ = std::fs::remove_dir_all(work.join("ours-state"));
    let mut child = Command::new(bins.join("repo-server"))
        .args(["--listen", "127.0.0.1:0", "--data"])
        .arg(&repo)
        .env("REPO_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .context("start repo-server (cargo build --release --workspace first)")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let url = format!(
        "http://{}",
        line.trim()
            .strip_prefix("listening on ")
            .context("server address")?
    );
    let pid = child.id();
    let token = repo.join("admin.token");
    let mover = bins.join("source-mover");
    let common = |c: &mut Command| {
        c.arg("--repo").arg(&url).arg("--token-file").arg(&token);
    };
    let mut steps = Vec::new();
    let result = (|| -> Result<()> {
        let mut full_id = String::new();
        for (i, (disk, extra)) in [
            ("disk.raw", vec!["--base", "none"]),
            ("disk2.raw", vec!["--cbt"]),
        ]
        .iter()
        .enumerate()
        {
            let mut c = Command::new(&mover);
            c.arg("backup");
            common(&mut c);
            c.args(["--source", "bench-vm", "--json", "--state-dir"])
                .arg(work.join("ours-state"));
            c.arg("--disk")
                .arg(format!("disk0={}", ds.join(disk).display()));
            if i == 1 {
                // The dataset's list has no base: it counts from the full backup just made.
                let list = work.join("cbt.json");
                std::fs::copy(ds.join("cbt.json"), &list)?;
                source_mover::cbt::set_base(&list, &full_id)?;
                c.arg(extra[0]).arg(format!("disk0={}", list.display()));
            } else {
                c.args(extra);
            }
            let cpu0 = proc_cpu(pid);
            let (wall, cpu, rss, out) = timed(&mut c, None)?;
            let v: serde_json::Value = serde_json::from_slice(&out)?;
            if i == 0 {
                full_id = v["backup_id"].as_str().context("backup id")?.to_owned();
            }
            steps.push(Step {
                wall,
                cpu: cpu + proc_cpu(pid) - cpu0,
                rss_mib: rss,
                read: v["read_bytes"].as_u64(),
                sent: v["sent_bytes"].as_u64(),
                repo: du(&repo),
            });
        }
        let out = work.join("ours-restored.raw");
        let _ = std::fs::remove_file(&out);
        let mut c = Command::new(&mover);
        c.arg("restore");
        common(&mut c);
        c.args([
            "--backup", "latest", "--source", "bench-vm", "--disk", "disk0", "--json", "--to",
        ])
        .arg(&out);
        let cpu0 = proc_cpu(pid);
        let (wall, cpu, rss, _) = timed(&mut c, None)?;
        steps.push(Step {
            wall,
            cpu: cpu + proc_cpu(pid) - cpu0,
            rss_mib: rss,
            read: None,
            sent: None,
            repo: du(&repo),
        });
        verify_restore(ds, &out)?;
        Ok(())
    })();
    let server_rss = proc_rss_mib(pid);
    let _ = child.kill();
    let _ = child.wait();
    result?;
    Ok((steps, server_rss))
}

/// The restored day-2 image equals disk2.raw except where the mover dropped bytes (zeros there).
fn verify_restore(ds: &Path, restored: &Path) -> Result<()> {
    let disk = source_mover::source::FileSource::open(&ds.join("disk2.raw"))?;
    let plan = source_mover::plan::plan(&disk, &[])?;
    let dropped = plan
        .dropped
        .iter()
        .filter(|(k, _)| **k != "hole")
        .fold(source_mover::ranges::Ranges::new(), |a, (_, r)| a.union(r));
    let (a, b) = (
        std::fs::File::open(ds.join("disk2.raw"))?,
        std::fs::File::open(restored)?,
    );
    let bs = 1u64 << 20;
    let (mut x, mut y) = (vec![0u8; bs as usize], vec![0u8; bs as usize]);
    use std::os::unix::fs::FileExt;
    let mut off = 0;
    while off < plan.size {
        let n = bs.min(plan.size - off) as usize;
        a.read_exact_at(&mut x[..n], off)?;
        b.read_exact_at(&mut y[..n], off)?;
        for (s, e) in dropped.clip(off, off + n as u64) {
            x[(s - off) as usize..(e - off) as usize].fill(0);
        }
        if x[..n] != y[..n] {
            bail!("restored image differs from disk2.raw near offset {off}");
        }
        off += n as u64;
    }
    Ok(())
}

/// restic, local repository, both days through stdin under one name (so day 2 has day 1 as parent).
fn restic(ds: &Path, work: &Path) -> Result<Vec<Step>> {
    let repo = work.join("restic-repo");
    let _ = std::fs::remove_dir_all(&repo);
    let env = |c: &mut Command| {
        c.env("RESTIC_REPOSITORY", &repo)
            .env("RESTIC_PASSWORD", "bench")
            .env("RESTIC_CACHE_DIR", work.join("restic-cache"));
    };
    let mut init = Command::new("restic");
    init.args(["init", "-q"]);
    env(&mut init);
    timed(&mut init, None)?;
    let mut steps = Vec::new();
    for disk in ["disk.raw", "disk2.raw"] {
        let mut c = Command::new("restic");
        c.args([
            "backup",
            "-q",
            "--stdin",
            "--stdin-filename",
            "disk.raw",
            "--host",
            "bench",
        ]);
        env(&mut c);
        let (wall, cpu, rss, _) = timed(&mut c, Some(&ds.join(disk)))?;
        steps.push(Step {
            wall,
            cpu,
            rss_mib: rss,
            read: Some(std::fs::metadata(ds.join(disk))?.len()),
            sent: None,
            repo: du(&repo),
        });
    }
    let out = work.join("restic-restored.raw");
    let mut c = Command::new("sh");
    c.arg("-c").arg(format!(
        "restic dump -q latest disk.raw > {}",
        out.display()
    ));
    env(&mut c);
    let (wall, cpu, rss, _) = timed(&mut c, None)?;
    if std::fs::metadata(&out)?.len() != std::fs::metadata(ds.join("disk2.raw"))?.len() {
        bail!("restic restore has the wrong size");
    }
    steps.push(Step {
        wall,
        cpu,
        rss_mib: rss,
        read: None,
        sent: None,
        repo: du(&repo),
    });
    Ok(steps)
}

/// borg, unencrypted local repository, zstd 3; `fixed` uses 4 MiB fixed chunks and sparse extract.
fn borg(ds: &Path, work: &Path, fixed: bool) -> Result<Vec<Step>> {
    let repo = work.join(if fixed {
        "borg-fixed-repo"
    } else {
        "borg-repo"
    });
    let _ = std::fs::remove_dir_all(&repo);
    let env = |c: &mut Command| {
        c.env("BORG_BASE_DIR", work.join("borg-home"))
            .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes");
    };
    let mut init = Command::new("borg");
    init.args(["init", "-e", "none"]).arg(&repo);
    env(&mut init);
    timed(&mut init, None)?;
    let mut steps = Vec::new();
    for (i, disk) in ["disk.raw", "disk2.raw"].iter().enumerate() {
        let mut c = Command::new("borg");
        c.args([
            "create",
            "--compression",
            "zstd,3",
            "--stdin-name",
            "disk.raw",
        ]);
        if fixed {
            c.args(["--chunker-params", "fixed,4194304"]);
        }
        c.arg(format!("{}::day{}", repo.display(), i + 1)).arg("-");
        env(&mut c);
        let (wall, cpu, rss, _) = timed(&mut c, Some(&ds.join(disk)))?;
        steps.push(Step {
            wall,
            cpu,
            rss_mib: rss,
            read: Some(std::fs::metadata(ds.join(disk))?.len()),
            sent: None,
            repo: du(&repo),
        });
    }
    let dir = work.join(if fixed { "borg-fixed-out" } else { "borg-out" });
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut c = Command::new("borg");
    c.arg("extract");
    if fixed {
        c.arg("--sparse");
    }
    c.arg(format!("{}::day2", repo.display())).current_dir(&dir);
    env(&mut c);
    let (wall, cpu, rss, _) = timed(&mut c, None)?;
    if std::fs::metadata(dir.join("disk.raw"))?.len()
        != std::fs::metadata(ds.join("disk2.raw"))?.len()
    {
        bail!("borg restore has the wrong size");
    }
    steps.push(Step {
        wall,
        cpu,
        rss_mib: rss,
        read: None,
        sent: None,
        repo: du(&repo),
    });
    Ok(steps)
}

/// The floor: read the bytes this project reads for a full backup, blake3 and zstd them, 2 threads.
fn floor(ds: &Path) -> Result<Step> {
    use source_mover::source::BlockSource;
    let disk = source_mover::source::FileSource::open(&ds.join("disk.raw"))?;
    let plan = source_mover::plan::plan(&disk, &[])?;
    let bs = 1u64 << 20;
    let blocks: Vec<u64> = (0..plan.size.div_ceil(bs))
        .filter(|b| !plan.read.clip(b * bs, (b + 1) * bs).is_empty())
        .collect();
    let t = Instant::now();
    let c0 = proc_cpu(std::process::id());
    let read = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for k in 0..2 {
            let (blocks, plan, disk, read) = (&blocks, &plan, &disk, &read);
            s.spawn(move || {
                let mut buf = vec![0u8; bs as usize];
                for b in blocks.iter().skip(k).step_by(2) {
                    buf.fill(0);
                    for (x, y) in plan.read.clip(b * bs, (b + 1) * bs) {
                        let _ =
                            disk.read_at(&mut buf[(x - b * bs) as usize..(y - b * bs) as usize], x);
                        read.fetch_add(y - x, std::sync::atomic::Ordering::Relaxed);
                    }
                    let _ = blake3::hash(&buf);
                    let _ = zstd::bulk::compress(&buf, 3);
                }
            });
        }
    });
    Ok(Step {
        wall: t.elapsed().as_secs_f64(),
        cpu: proc_cpu(std::process::id()) - c0,
        rss_mib: 0.0,
        read: Some(read.into_inner()),
        sent: None,
        repo: 0,
    })
}

fn med_steps(runs: Vec<Vec<Step>>) -> Vec<Step> {
    (0..runs[0].len())
        .map(|i| Step {
            wall: median(runs.iter().map(|r| r[i].wall).collect()),
            cpu: median(runs.iter().map(|r| r[i].cpu).collect()),
            rss_mib: median(runs.iter().map(|r| r[i].rss_mib).collect()),
            read: runs[0][i].read,
            sent: runs[0][i].sent,
            repo: runs[0][i].repo,
        })
        .collect()
}

fn mb(b: Option<u64>) -> String {
    b.map(|b| format!("{:.0}", b as f64 / 1e6))
        .unwrap_or_else(|| "–".into())
}

fn compare(ds: &Path, quick: bool, runs: Option<usize>, work: Option<PathBuf>) -> Result<()> {
    if quick && !ds.join("disk.raw").exists() {
        eprintln!(
            "bench: building a small dataset in {} with real tools",
            ds.display()
        );
        std::fs::create_dir_all(ds)?;
        let (disk, p1_off, p1) = source_mover::demo::build_disk(ds)?;
        source_mover::demo::make_day_two(ds, &disk, p1_off, &p1)?;
    }
    for f in ["disk.raw", "disk2.raw", "cbt.json"] {
        if !ds.join(f).exists() {
            bail!(
                "{} has no {f}: build it with ../shared/bench/make-dataset.sh {} 4",
                ds.display(),
                ds.display()
            );
        }
    }
    let runs = runs.unwrap_or(if quick { 1 } else { 3 });
    let work = work
        .unwrap_or_else(|| std::env::temp_dir().join(format!("bench-work-{}", std::process::id())));
    std::fs::create_dir_all(&work)?;
    // Warm the page cache.
    for f in ["disk.raw", "disk2.raw"] {
        let mut r = std::io::BufReader::new(std::fs::File::open(ds.join(f))?);
        std::io::copy(&mut r, &mut std::io::sink())?;
    }
    let mut table: BTreeMap<&str, Vec<Step>> = BTreeMap::new();
    let (mut o, mut r, mut b, mut bf, mut srv) = (vec![], vec![], vec![], vec![], vec![]);
    for i in 0..runs {
        eprintln!("bench: run {}/{runs}", i + 1);
        let (steps, s) = ours(ds, &work)?;
        o.push(steps);
        srv.push(s);
        r.push(restic(ds, &work)?);
        b.push(borg(ds, &work, false)?);
        bf.push(borg(ds, &work, true)?);
    }
    table.insert("1 this project", med_steps(o));
    table.insert("2 restic", med_steps(r));
    table.insert("3 borg", med_steps(b));
    table.insert("4 borg fixed 4 MiB", med_steps(bf));
    let fl = floor(ds)?;
    let _ = std::fs::remove_dir_all(&work);

    let ours_steps = table["1 this project"].clone();
    let size = std::fs::metadata(ds.join("disk.raw"))?.len();
    println!("# bench compare");
    println!();
    println!(
        "dataset: {} ({:.0} MB apparent); runs per figure: {runs} (median); {} cores",
        ds.display(),
        size as f64 / 1e6,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!();
    println!("Method: a fresh repository per run and tool; full backup of disk.raw, incremental of disk2.raw");
    println!("(this project with cbt.json; restic and borg read the whole image through stdin under one name,");
    println!("so day 2 has day 1 as parent), restore of the incremental (this project: sparse, every block's");
    println!("blake3 checked, then compared with disk2.raw outside dropped ranges; restic: `restic dump`;");
    println!("borg: `borg extract`, `--sparse` for the fixed-chunk run). Wall, CPU (user+sys; for this project");
    println!("the mover plus the server's CPU over the step) and peak RSS from /usr/bin/time and /proc; repo =");
    println!("bytes of the repository's files after the step; read = bytes read from the source (restic and");
    println!("borg read the whole file); sent = compressed bytes over HTTP/2 (the peers write locally). Ratio =");
    println!("peer wall ÷ this project's wall. Warm page cache. Floor: the bytes this project reads for a full");
    println!("backup, read + blake3 + zstd 3 on 2 threads in one process.");
    println!();
    println!(
        "| step | tool | wall s | ratio | CPU s | peak RSS MiB | read MB | sent MB | repo MB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (i, step) in ["full", "incremental", "restore"].iter().enumerate() {
        for (tool, steps) in &table {
            let s = &steps[i];
            let ratio = if tool.starts_with('1') {
                "1".to_string()
            } else {
                format!("{:.1}×", s.wall / ours_steps[i].wall)
            };
            println!(
                "| {step} | {} | {:.2} | {ratio} | {:.2} | {:.0} | {} | {} | {:.0} |",
                &tool[2..],
                s.wall,
                s.cpu,
                s.rss_mib,
                mb(s.read),
                mb(s.sent),
                s.repo as f64 / 1e6
            );
        }
    }
    println!(
        "| full | floor (read+blake3+zstd, 2 threads) | {:.2} | {:.1}× | {:.2} | | {} | | |",
        fl.wall,
        fl.wall / ours_steps[0].wall,
        fl.cpu,
        mb(fl.read)
    );
    println!();
    println!("repo-server peak RSS: {:.0} MiB", median(srv));
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Compare {
            dataset,
            quick,
            runs,
            work,
        } => compare(&dataset, quick, runs, work),
        Cmd::Wan { mib, rate, rtts } => wan_goodput(mib, rate, &rtts),
        Cmd::Share { chunks, quick } => share::run(if quick { 64 } else { chunks }),
        Cmd::Catalog {
            backups,
            files,
            quick,
            work,
            keep,
        } => {
            let (backups, files) = if quick { (10, 3000) } else { (backups, files) };
            let work = work.unwrap_or_else(|| {
                std::env::temp_dir().join(format!("bench-catalog-{}", std::process::id()))
            });
            catalog::run(backups, files, &work, keep)
        }
        Cmd::WanProxy {
            listen,
            upstream,
            delay_ms,
            rate,
            cut_every,
            cut_random,
        } => wan_proxy(listen, upstream, delay_ms, rate, (cut_every, cut_random)),
    }
}

fn wan_proxy(
    listen: std::net::SocketAddr,
    upstream: std::net::SocketAddr,
    delay_ms: u64,
    rate: Option<u64>,
    (cut_every, cut_random): (u64, u64),
) -> Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let link = bench::wan::Link { delay: std::time::Duration::from_millis(delay_ms), rate };
        let p = std::sync::Arc::new(bench::wan::WanProxy::start_on(listen, upstream, link).await?);
        eprintln!("wan-proxy: {} -> {upstream}, one-way delay {delay_ms} ms, rate {rate:?} B/s, cut every {cut_every} s", p.addr);
        let _cuts = (cut_every > 0).then(|| p.cut_every(std::time::Duration::from_secs(cut_every)));
        let _random = (cut_random > 0).then(|| p.cut_randomly(std::time::Duration::from_secs(cut_random), std::process::id().into()));
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(10)).await;
            let s = &p.stats;
            eprintln!(
                "wan-proxy: up {} MB, down {} MB, {} connections, {} cut",
                s.up.load(Relaxed) / 1_000_000,
                s.down.load(Relaxed) / 1_000_000,
                s.connections.load(Relaxed),
                s.cuts.load(Relaxed)
            );
        }
    })
}

/// A repo-server child with an optional extra config snippet; returns (child, address, token file).
fn spawn_server(
    dir: &Path,
    extra: &str,
) -> Result<(std::process::Child, std::net::SocketAddr, PathBuf)> {
    let data = dir.join("data");
    std::fs::create_dir_all(&data)?;
    let cfg = dir.join("repo.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\ndata = \"{}\"\n{extra}",
            data.display()
        ),
    )?;
    let mut child = Command::new(bin_dir()?.join("repo-server"))
        .arg("--config")
        .arg(&cfg)
        .env("REPO_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .context("server address")?
        .parse()?;
    Ok((child, addr, data.join("admin.token")))
}

fn wan_goodput(mib: usize, rate: u64, rtts: &[u64]) -> Result<()> {
    use source_mover::backup::{backup, BackupOptions, Base};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let work = std::env::temp_dir().join(format!("bench-wan-{}", std::process::id()));
    let mut rows = Vec::new();
    let mut run = |label: String,
                   rtt: u64,
                   server_extra: &str,
                   mib: usize,
                   block: u32,
                   level: i32,
                   streams: usize,
                   connections: usize|
     -> Result<()> {
        let dir = work.join(format!("run{}", rows.len()));
        std::fs::create_dir_all(&dir)?;
        let (mut child, addr, token) = spawn_server(&dir, server_extra)?;
        let disk = dir.join("disk.raw");
        let mut data = vec![0u8; mib << 20];
        let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ rows.len() as u64;
        for b in data.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = (x >> 24) as u8;
        }
        std::fs::write(&disk, &data)?;
        drop(data);
        let result = rt.block_on(async {
            let link = bench::wan::Link {
                delay: std::time::Duration::from_millis(rtt / 2),
                rate: Some(rate),
            };
            let proxy = bench::wan::WanProxy::start(addr, link).await?;
            let tok = std::fs::read_to_string(&token)?;
            let c = source_mover::client::RepoClient::with_connections(
                &format!("http://{}", proxy.addr),
                &tok,
                std::time::Duration::from_secs(60),
                None,
                connections,
            )?;
            let o = BackupOptions {
                source: "wan".into(),
                disks: vec![("disk0".into(), source_mover::source::open(&disk)?)],
                cbt: BTreeMap::new(),
                base: Base::None,
                block_size: block,
                zstd_level: level,
                excludes: Vec::new(),
                streams,
                state_dir: dir.join("state"),
                progress: false,
                file_index: true,
            };
            let t = Instant::now();
            let r = backup(&c, &o).await?;
            let secs = t.elapsed().as_secs_f64();
            let wire = proxy.stats.up.load(std::sync::atomic::Ordering::Relaxed);
            anyhow::Ok((r.sent_bytes, wire, secs))
        });
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
        let (sent, wire, secs) = result?;
        let goodput = sent as f64 / secs;
        eprintln!("bench wan: {label} rtt {rtt} ms: {:.2} MB/s", goodput / 1e6);
        rows.push(format!(
            "| {label} | {rtt} | {mib} | {:.1} | {:.2} | {:.0} % | {:.3} |",
            secs,
            goodput / 1e6,
            100.0 * goodput / rate as f64,
            wire as f64 / sent as f64
        ));
        Ok(())
    };
    for &rtt in rtts {
        run(
            "default (lan preset: 1M blocks, zstd 3, 32 streams, 1 connection)".into(),
            rtt,
            "",
            mib,
            1 << 20,
            3,
            32,
            1,
        )?;
        run(
            "wan preset (256K blocks, zstd 6, 64 streams, 4 connections)".into(),
            rtt,
            "",
            mib,
            256 << 10,
            6,
            64,
            4,
        )?;
    }
    let small = (mib / 16).max(8);
    let windows = "[http2]\nstream_window = \"64KiB\"\nconnection_window = \"64KiB\"\n";
    run(
        "single stream, server with default 64 KiB HTTP/2 windows".into(),
        100,
        windows,
        small,
        1 << 20,
        3,
        1,
        1,
    )?;
    let _ = std::fs::remove_dir_all(&work);
    println!("# bench wan");
    println!();
    println!("Method: the repo-server binary on loopback behind the project's WAN emulator (bench::wan: one-way");
    println!("delay = RTT/2 each way, token bucket of {:.1} MB/s = {:.0} Mbit/s per direction); a full backup of an", rate as f64 / 1e6, rate as f64 * 8.0 / 1e6);
    println!("image of incompressible data with the mover library; goodput = compressed chunk bytes ÷ backup");
    println!("wall time; wire = bytes the emulator carried upstream ÷ chunk bytes.");
    println!();
    println!("| client | RTT ms | MiB | seconds | goodput MB/s | of link | wire ÷ chunks |");
    println!("|---|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    Ok(())
}
