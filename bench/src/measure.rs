//! Measuring a step: wall time, CPU and peak RSS of a child under `/usr/bin/time`, CPU and peak
//! RSS of a running process from `/proc`, a repository's bytes on disk, medians over runs.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// One measured step.
#[derive(Debug, Clone, Default)]
pub struct Step {
    /// Wall seconds.
    pub wall: f64,
    /// CPU seconds, user + sys.
    pub cpu: f64,
    /// Peak resident set, MiB.
    pub rss_mib: f64,
    /// Bytes read from the source, where known.
    pub read: Option<u64>,
    /// Bytes sent over the network, where known.
    pub sent: Option<u64>,
    /// Bytes of the repository's files after the step.
    pub repo: u64,
}

/// The median of `v` (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The bytes of every file under `p`.
pub fn du(p: &Path) -> u64 {
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
pub fn timed(cmd: &mut Command, stdin: Option<&Path>) -> Result<(f64, f64, f64, Vec<u8>)> {
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

/// CPU seconds (user + sys) process `pid` has used so far.
pub fn proc_cpu(pid: u32) -> f64 {
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

/// Peak resident set of process `pid` so far, MiB.
pub fn proc_rss_mib(pid: u32) -> f64 {
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

/// Step by step, the median wall, CPU and RSS of `runs`; bytes from the first run (they do not vary).
pub fn med_steps(runs: Vec<Vec<Step>>) -> Vec<Step> {
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
