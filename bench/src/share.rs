//! `bench share`: chunk ingest into a real Samba share on loopback through the gateway's SMB
//! store — the rate at which 1 MiB chunk frames become durable files on the share.
//!
//! Method (printed with the table): Samba (Debian's smbd, SMB 3.1.1, signing mandatory) on
//! 127.0.0.1 with its share on this machine's disk; the gateway's `Share` store puts N distinct
//! incompressible 1 MiB blobs (what zstd frames of incompressible blocks are) from T threads over
//! C SMB connections, each put a temp-file write (compound CREATE+WRITE+FLUSH, CLOSE) and a
//! rename into `chunks/ab/cd/`, as the gateway does for every chunk; then reads them all back.
//! Wall time from the first put to the last acknowledgement; blobs are generated beforehand.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use gateway::samba::Samba;
use gateway::share::Share;
use repo_server::store::BlobStore;
use schema::ChunkId;
use tests::images::noise;

/// Runs the ingest benchmark with `mib` chunks per configuration.
pub fn run(mib: usize) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("bench-share-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let samba = Samba::start(&dir)?;
    let blobs: Arc<Vec<(ChunkId, Vec<u8>)>> = Arc::new(
        (0..mib as u64)
            .map(|seed| {
                let b = noise(1 << 20, seed + 1);
                (ChunkId::of(&b), b)
            })
            .collect(),
    );
    println!("## Chunk ingest into a Samba share on loopback (`bench share`)\n");
    println!("Method: {}\n", METHOD.trim());
    println!("| threads | SMB connections | chunks | write MB/s | put median ms | put p95 ms | read MB/s |");
    println!("|---|---|---|---|---|---|---|");
    for (i, (threads, conns)) in [(1, 1), (8, 1), (8, 4), (16, 4)].into_iter().enumerate() {
        let mut cfg = samba.share_config(&format!("run{i}"));
        cfg.connections = conns;
        let share = Arc::new(Share::open(&cfg)?);
        let store = Arc::new(share.chunks());
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut lat: Vec<f64> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                .map(|_| {
                    let (store, next, blobs) = (store.clone(), next.clone(), blobs.clone());
                    s.spawn(move || {
                        let mut l = Vec::new();
                        loop {
                            let k = next.fetch_add(1, Ordering::Relaxed);
                            let Some((id, b)) = blobs.get(k) else { break };
                            let t = Instant::now();
                            store.put(id, b).map(|_| ())?;
                            l.push(t.elapsed().as_secs_f64() * 1000.0);
                        }
                        anyhow::Ok(l)
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().map_err(|_| anyhow::anyhow!("writer panicked"))?)
                .collect::<Result<Vec<_>>>()
                .map(|v| v.concat())
        })?;
        let write_s = started.elapsed().as_secs_f64();
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                let (store, next, blobs) = (store.clone(), next.clone(), blobs.clone());
                s.spawn(move || loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some((id, b)) = blobs.get(k) else { break };
                    let got = store.get(id).unwrap_or_default();
                    assert!(got.len() == b.len(), "chunk {id} read back short");
                });
            }
        });
        let read_s = started.elapsed().as_secs_f64();
        lat.sort_by(f64::total_cmp);
        let mb = (mib << 20) as f64 / 1e6;
        println!(
            "| {threads} | {conns} | {mib} × 1 MiB | {:.0} | {:.1} | {:.1} | {:.0} |",
            mb / write_s,
            lat[lat.len() / 2],
            lat[lat.len() * 95 / 100],
            mb / read_s
        );
    }
    drop(samba);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

const METHOD: &str = "Samba 4.17 (smbd, SMB 3.1.1, signing mandatory) on 127.0.0.1, share on \
local disk; the gateway's SMB store (smb2 crate) puts distinct incompressible 1 MiB blobs from T \
threads over C connections: temp file by compound CREATE+WRITE+FLUSH then CLOSE, rename into \
chunks/ab/cd/ (directories created on first use); MB/s = 10^6 bytes per second of wall time from \
first put to last acknowledgement; then every blob read back (CREATE+READ+CLOSE).";
