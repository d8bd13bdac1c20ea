//! A minimal mover for tests: cut, hash, find-missing, upload, record, commit.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{Method, StatusCode};
use schema::{ChunkId, IndexRecord, SessionId};
use serde_json::json;

use crate::Client;

/// One disk to back up.
#[derive(Debug, Clone, Copy)]
pub struct DiskUpload<'a> {
    /// Disk name.
    pub name: &'a str,
    /// Its bytes.
    pub data: &'a [u8],
    /// Block size.
    pub block_size: u32,
}

/// A fresh random session id.
pub fn new_session() -> SessionId {
    static N: AtomicU64 = AtomicU64::new(0);
    let seed = format!(
        "{:?}{}{}",
        std::time::SystemTime::now(),
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let h = blake3::hash(seed.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h.as_bytes()[..16]);
    SessionId::from_random(b)
}

/// The blocks of a disk: (block number, id, bytes), holes with [`ChunkId::HOLE`].
pub fn blocks(data: &[u8], bs: u32) -> Vec<(u64, ChunkId, &[u8])> {
    data.chunks(bs as usize)
        .enumerate()
        .map(|(i, b)| {
            let id = if b.iter().all(|&x| x == 0) {
                ChunkId::HOLE
            } else {
                ChunkId::of(b)
            };
            (i as u64, id, b)
        })
        .collect()
}

/// Uploads the blocks of `disks` that the server lacks into session `s` (created by the caller).
pub async fn upload_chunks(c: &Client, s: &SessionId, disks: &[DiskUpload<'_>]) {
    let mut ids: Vec<(ChunkId, Bytes)> = Vec::new();
    for d in disks {
        for (_, id, b) in blocks(d.data, d.block_size) {
            if !id.is_hole() {
                ids.push((id, Bytes::copy_from_slice(b)));
            }
        }
    }
    let mut body = Vec::new();
    for (id, _) in &ids {
        body.extend_from_slice(&id.0);
    }
    let r = c
        .send(
            Method::POST,
            &format!("/v1/sessions/{s}/find-missing"),
            &[("content-type", "application/octet-stream")],
            body,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let missing: std::collections::HashSet<ChunkId> = r
        .body
        .chunks_exact(32)
        .filter_map(ChunkId::from_slice)
        .collect();
    let mut set = tokio::task::JoinSet::new();
    let mut sent = std::collections::HashSet::new();
    for (id, data) in ids {
        if !missing.contains(&id) || !sent.insert(id) {
            continue;
        }
        let c = c.clone();
        let path = format!("/v1/sessions/{s}/chunks/{id}");
        set.spawn(async move {
            let frame = zstd::bulk::compress(&data, 3).unwrap();
            let len = data.len().to_string();
            let r = c
                .send(
                    Method::PUT,
                    &path,
                    &[("content-type", "application/zstd"), ("chunk-length", &len)],
                    frame,
                )
                .await;
            assert!(
                r.status == StatusCode::CREATED || r.status == StatusCode::OK,
                "{} {:?}",
                r.status,
                r.body
            );
        });
        while set.len() >= 32 {
            set.join_next().await.unwrap().unwrap();
        }
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
}

/// Sends every block's record of `d` and returns (entries, records_blake3).
pub async fn send_records(c: &Client, s: &SessionId, d: &DiskUpload<'_>) -> (u64, String) {
    let recs: Vec<IndexRecord> = blocks(d.data, d.block_size)
        .into_iter()
        .map(|(block, id, _)| IndexRecord { block, id })
        .collect();
    let body = IndexRecord::encode_all(&recs);
    let r = c
        .send(
            Method::PUT,
            &format!("/v1/sessions/{s}/disks/{}/entries?start=0", d.name),
            &[("content-type", "application/octet-stream")],
            body.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    (recs.len() as u64, blake3::hash(&body).to_hex().to_string())
}

/// A whole backup of `disks` under `source`; returns the backup id.
pub async fn backup_disk(
    c: &Client,
    source: &str,
    base: Option<&str>,
    disks: &[DiskUpload<'_>],
) -> String {
    let s = new_session();
    let spec: Vec<_> = disks
        .iter()
        .map(|d| json!({"name": d.name, "size": d.data.len(), "block_size": d.block_size}))
        .collect();
    let r = c
        .json(
            Method::PUT,
            &format!("/v1/sessions/{s}"),
            &json!({"source": source, "base": base, "disks": spec}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    upload_chunks(c, &s, disks).await;
    let mut commit = serde_json::Map::new();
    for d in disks {
        let (entries, sum) = send_records(c, &s, d).await;
        commit.insert(
            d.name.into(),
            json!({"entries": entries, "records_blake3": sum}),
        );
    }
    let r = c
        .json(
            Method::POST,
            &format!("/v1/sessions/{s}/commit"),
            &json!({"disks": commit}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    r.json()["backup_id"].as_str().unwrap().to_owned()
}

/// Deterministic, partly compressible test data: runs of text-like bytes, random bytes and zeros.
pub fn test_data(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    while out.len() < len {
        let kind = next() % 4;
        let run = 4096 + (next() % 60_000) as usize;
        for i in 0..run.min(len - out.len()) {
            out.push(match kind {
                0 => 0,
                1 => (next() & 0xff) as u8,
                _ => b"the quick brown fox jumps over the lazy dog 0123456789\n"[i % 55],
            });
        }
    }
    out
}
