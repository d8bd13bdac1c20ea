//! Verified ingest through the real stack: the built `repo-server` binary on loopback, one
//! HTTP/2 connection with 32 concurrent streams of 1 MiB zstd chunks made from real files
//! (partly compressible: libraries, documentation, binaries), compared with the floor on the
//! same machine: the same decompress + blake3 + durable write in one process, no HTTP, no catalog.
//!
//! `cargo bench -p repo-server --bench ingest [-- --mib N] [-- --quick]`
//! Setup (reading files, compressing) is outside every timing. Prints its method with its numbers.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use schema::ChunkId;

const BLOCK: usize = 1 << 20;
const TOKEN: &str = "bench-token-0123456789";

fn collect_blocks(mib: usize) -> Vec<Vec<u8>> {
    let mut files = Vec::new();
    let mut stack: Vec<PathBuf> = ["/usr/lib/x86_64-linux-gnu", "/usr/share", "/usr/bin"]
        .iter()
        .map(PathBuf::from)
        .collect();
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                files.push(e.path());
            }
        }
    }
    files.sort();
    let mut stream = Vec::with_capacity(mib * BLOCK);
    for f in files {
        if stream.len() >= mib * BLOCK {
            break;
        }
        if let Ok(b) = std::fs::read(&f) {
            stream.extend_from_slice(&b);
        }
    }
    let mut seen = std::collections::HashSet::new();
    stream
        .chunks_exact(BLOCK)
        .filter(|b| b.iter().any(|&x| x != 0) && seen.insert(ChunkId::of(b)))
        .map(<[u8]>::to_vec)
        .take(mib)
        .collect()
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (1-based) of the whole line: 12 and 13 after ")".
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn self_cpu() -> f64 {
    cpu_seconds(std::process::id())
}

fn server_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("repo-server");
    assert!(
        bin.is_file(),
        "build the server first: cargo build --release -p repo-server"
    );
    bin
}

/// The floor: decompress, hash, write temp + fsync + rename + fsync dir, on `threads` threads.
fn floor(frames: &[(ChunkId, Bytes, usize)], dir: &Path, threads: usize, fsync: bool) -> f64 {
    let t = Instant::now();
    std::thread::scope(|s| {
        for k in 0..threads {
            s.spawn(move || {
                for (i, (id, frame, len)) in frames.iter().enumerate().skip(k).step_by(threads) {
                    let raw = zstd::bulk::decompress(frame, *len).unwrap();
                    assert_eq!(ChunkId::of(&raw), *id);
                    let (tmp, dest) = (dir.join(format!("t{i}")), dir.join(id.hex()));
                    let mut f = std::fs::File::create(&tmp).unwrap();
                    f.write_all(frame).unwrap();
                    if fsync {
                        // fsync, rename, fsync the directory: the server's durable write.
                        stdx::durable::persist(f, &tmp, &dest).unwrap();
                    } else {
                        std::fs::rename(&tmp, &dest).unwrap();
                    }
                }
            });
        }
    });
    t.elapsed().as_secs_f64()
}

/// One upload of every frame to a fresh server process; returns (wall s, server CPU s, client CPU s).
fn server_run(
    dir: &Path,
    run: usize,
    frames: &Arc<Vec<(ChunkId, Bytes, usize)>>,
    raw_bytes: usize,
    streams: usize,
) -> (f64, f64, f64) {
    let data = dir.join(format!("data{run}"));
    std::fs::create_dir_all(&data).unwrap();
    let cfg = dir.join("repo.toml");
    std::fs::write(&cfg, format!("listen = \"127.0.0.1:0\"\ndata = \"{}\"\n[[tokens]]\ntoken = \"{TOKEN}\"\ntenant = \"bench\"\nrole = \"backup\"\n", data.display())).unwrap();
    let mut child = Command::new(server_binary())
        .arg("--config")
        .arg(&cfg)
        .env("REPO_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();
    let pid = child.id();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let out = rt.block_on(async {
        let mut b = hyper_util::client::legacy::Client::builder(TokioExecutor::new());
        b.http2_only(true)
            .http2_initial_stream_window_size(8 << 20)
            .http2_initial_connection_window_size(64 << 20)
            .http2_max_frame_size(1 << 20)
            .http2_max_send_buf_size(4 << 20);
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        let client = b.build::<_, Full<Bytes>>(conn);
        let sid = "5f0e2f1a-1111-4222-8333-444455556666";
        let body = format!("{{\"source\":\"bench\",\"disks\":[{{\"name\":\"d\",\"size\":{},\"block_size\":{BLOCK}}}]}}", raw_bytes);
        let req = http::Request::put(format!("http://{addr}/v1/sessions/{sid}"))
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let r = client.request(req).await.unwrap();
        assert_eq!(r.status(), 201);
        let (cpu0, self0) = (cpu_seconds(pid), self_cpu());
        let t = Instant::now();
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..streams {
            let (client, frames, next, addr) = (client.clone(), frames.clone(), next.clone(), addr.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((id, frame, len)) = frames.get(i) else { break };
                    let req = http::Request::put(format!("http://{addr}/v1/sessions/{sid}/chunks/{id}"))
                        .header("authorization", format!("Bearer {TOKEN}"))
                        .header("content-type", "application/zstd")
                        .header("chunk-length", len.to_string())
                        .body(Full::new(frame.clone()))
                        .unwrap();
                    let r = client.request(req).await.unwrap();
                    let status = r.status();
                    let body = r.into_body().collect().await.unwrap().to_bytes();
                    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        (t.elapsed().as_secs_f64(), cpu_seconds(pid) - cpu0, self_cpu() - self0)
    });
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&data);
    out
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick") || std::env::var("CI").is_ok();
    let mib = args
        .windows(2)
        .find(|w| w[0] == "--mib")
        .map(|w| w[1].parse().unwrap())
        .unwrap_or(if quick { 64 } else { 1024 });
    let streams = args
        .windows(2)
        .find(|w| w[0] == "--streams")
        .map(|w| w[1].parse().unwrap())
        .unwrap_or(32usize);
    let level = 3;
    let blocks = collect_blocks(mib);
    let raw_bytes: usize = blocks.iter().map(Vec::len).sum();
    let frames: Vec<(ChunkId, Bytes, usize)> = blocks
        .iter()
        .map(|b| {
            (
                ChunkId::of(b),
                Bytes::from(zstd::bulk::compress(b, level).unwrap()),
                b.len(),
            )
        })
        .collect();
    drop(blocks);
    let wire: usize = frames.iter().map(|f| f.1.len()).sum();
    let dir =
        tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()))
            .unwrap();

    let runs = if quick { 1 } else { 3 };
    let frames = Arc::new(frames);
    let (mut walls, mut scpu, mut ccpu, mut f1s, mut f2s, mut f2ns) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for run in 0..runs {
        let (w, s, c) = server_run(dir.path(), run, &frames, raw_bytes, streams);
        walls.push(w);
        scpu.push(s);
        ccpu.push(c);
        let fdir = dir.path().join(format!("floor{run}"));
        for (threads, fsync, out) in [
            (1, true, &mut f1s),
            (2, true, &mut f2s),
            (2, false, &mut f2ns),
        ] {
            std::fs::create_dir_all(&fdir).unwrap();
            out.push(floor(&frames, &fdir, threads, fsync));
            std::fs::remove_dir_all(&fdir).unwrap();
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (wall, server_cpu, client_cpu) = (med(&mut walls), med(&mut scpu), med(&mut ccpu));
    let (f1, f2, f2n) = (med(&mut f1s), med(&mut f2s), med(&mut f2ns));
    let mb = raw_bytes as f64 / 1e6;
    println!("# repo-server ingest benchmark");
    println!();
    println!("method: {} unique 1 MiB blocks ({mb:.0} MB) cut from real files under /usr (libraries, docs,", frames.len());
    println!("binaries), compressed with zstd level {level} beforehand ({:.0} MB on the wire, ratio {:.2});", wire as f64 / 1e6, raw_bytes as f64 / wire as f64);
    println!("uploaded as PUT /v1/sessions/{{id}}/chunks/{{digest}} over one h2c connection with {streams} concurrent");
    println!(
        "streams to the repo-server binary on 127.0.0.1 (data dir on {}). The server verifies each",
        dir.path().display()
    );
    println!("chunk (decompress capped at Chunk-Length, blake3), writes it durably (temp, fsync, rename,");
    println!("dir fsync) and records it in RocksDB with a synced write batch. MB = 10^6 bytes of");
    println!("uncompressed data. Server CPU from /proc/PID/stat (user+sys). Floor: the same decompress +");
    println!("blake3 + temp/fsync/rename/dir-fsync of the same frames in one process, no HTTP, no catalog.");
    println!(
        "machine: {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!();
    println!("median of {runs} runs each, alternating server and floor");
    println!();
    println!("| what | seconds | MB/s uncompressed | CPU s |");
    println!("|---|---|---|---|");
    println!("| repo-server over HTTP/2 ({streams} streams) | {wall:.2} | {:.0} | server {server_cpu:.2}, client {client_cpu:.2} |", mb / wall);
    println!("| floor, 1 thread, durable | {f1:.2} | {:.0} | |", mb / f1);
    println!("| floor, 2 threads, durable | {f2:.2} | {:.0} | |", mb / f2);
    println!(
        "| floor, 2 threads, no fsync | {f2n:.2} | {:.0} | |",
        mb / f2n
    );
    println!();
    println!(
        "server ÷ floor (2 threads, durable): {:.0} %",
        100.0 * f2 / wall
    );
}
