//! The transmission phase: requests read in order, answered as they complete (replies may
//! overtake each other, as the protocol allows).
//!
//! - `READ`: inside the export and at most `[nbd] max_request`; the blocks are read (verified)
//!   on a blocking thread; the reply is simple (holes as zeros) or structured (`OFFSET_DATA`
//!   and `OFFSET_HOLE` chunks, one `OFFSET_DATA` with `DF`). A block that is missing or fails
//!   its blake3 makes the whole request `EIO`: no byte of it is sent.
//! - `BLOCK_STATUS`: `base:allocation` from the index (holes and zero blocks `HOLE | ZERO`).
//! - `FLUSH`: a no-op. `DISC`: pending replies are sent, then the connection closes.
//! - `WRITE`, `WRITE_ZEROES`, `TRIM`: `EPERM` (the export is read-only; a write's payload is read
//!   and dropped). Anything else: `EINVAL`.
//! - Before each request the export must still be live: after its deletion or expiry the next
//!   request is answered `ESHUTDOWN` and the connection closes.
//!
//! Bounded: at most [`MAX_REQUESTS`] requests of a connection in flight, and read replies take
//! their length from the server-wide `[nbd] max_inflight` budget until they are written.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use nbd::{cmd, cmd_flags, errno, reply_flags, reply_type, ChunkHeader, Request};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use super::blocks::Piece;
use super::negotiation::{Session, ALLOCATION_CONTEXT};
use super::Context;

/// Requests of one connection in flight at once.
pub const MAX_REQUESTS: usize = 64;
/// Most extents in one block status reply.
const MAX_EXTENTS: usize = 1 << 16;

/// One reply, written whole.
struct Reply {
    parts: Vec<Bytes>,
    /// Data bytes (for the counter).
    data: u64,
    _budget: Option<OwnedSemaphorePermit>,
    _slot: Option<OwnedSemaphorePermit>,
}

impl Reply {
    fn new(parts: Vec<Bytes>) -> Reply {
        Reply {
            parts,
            data: 0,
            _budget: None,
            _slot: None,
        }
    }
}

fn simple(error: u32, handle: u64) -> Reply {
    Reply::new(vec![Bytes::copy_from_slice(&nbd::encode_simple_reply(
        error, handle,
    ))])
}

fn structured_error(error: u32, handle: u64, message: &str) -> Reply {
    let payload = nbd::encode_error_payload(error, message);
    let head = ChunkHeader {
        flags: reply_flags::DONE,
        kind: reply_type::ERROR,
        handle,
        length: payload.len() as u32,
    };
    Reply::new(vec![
        Bytes::copy_from_slice(&head.encode()),
        Bytes::from(payload),
    ])
}

/// An error answer: structured for the commands that must be answered so once structured
/// replies are on (reads, block status), simple otherwise.
fn error_reply(s: &Session, req: &Request, error: u32, message: &str) -> Reply {
    if s.structured && matches!(req.command, cmd::READ | cmd::BLOCK_STATUS) {
        structured_error(error, req.handle, message)
    } else {
        simple(error, req.handle)
    }
}

fn zeros(mut n: u64, out: &mut Vec<Bytes>) {
    while n > 0 {
        let k = n.min(crate::repo::ZEROS.len() as u64);
        out.push(Bytes::from_static(&crate::repo::ZEROS[..k as usize]));
        n -= k;
    }
}

/// The reply to a successful read of `pieces` at `offset`.
fn read_reply(s: &Session, req: &Request, pieces: Vec<Piece>) -> Reply {
    let total: u64 = pieces.iter().map(Piece::len).sum();
    let mut parts = Vec::with_capacity(pieces.len() * 2 + 1);
    if !s.structured {
        parts.push(Bytes::copy_from_slice(&nbd::encode_simple_reply(
            0, req.handle,
        )));
        for p in pieces {
            match p {
                Piece::Data(b) => parts.push(b),
                Piece::Zeros(n) => zeros(n, &mut parts),
            }
        }
    } else if req.flags & cmd_flags::DF != 0 {
        let head = ChunkHeader {
            flags: reply_flags::DONE,
            kind: reply_type::OFFSET_DATA,
            handle: req.handle,
            length: (8 + total) as u32,
        };
        parts.push(Bytes::copy_from_slice(&head.encode()));
        parts.push(Bytes::copy_from_slice(&req.offset.to_be_bytes()));
        for p in pieces {
            match p {
                Piece::Data(b) => parts.push(b),
                Piece::Zeros(n) => zeros(n, &mut parts),
            }
        }
    } else {
        let last = pieces.len().saturating_sub(1);
        let mut at = req.offset;
        for (i, p) in pieces.into_iter().enumerate() {
            let flags = if i == last { reply_flags::DONE } else { 0 };
            let len = p.len();
            match p {
                Piece::Data(b) => {
                    let head = ChunkHeader {
                        flags,
                        kind: reply_type::OFFSET_DATA,
                        handle: req.handle,
                        length: (8 + len) as u32,
                    };
                    parts.push(Bytes::copy_from_slice(&head.encode()));
                    parts.push(Bytes::copy_from_slice(&at.to_be_bytes()));
                    parts.push(b);
                }
                Piece::Zeros(n) => {
                    let head = ChunkHeader {
                        flags,
                        kind: reply_type::OFFSET_HOLE,
                        handle: req.handle,
                        length: 12,
                    };
                    let mut body = Vec::with_capacity(32);
                    body.extend_from_slice(&head.encode());
                    body.extend_from_slice(&at.to_be_bytes());
                    body.extend_from_slice(&(n as u32).to_be_bytes());
                    parts.push(Bytes::from(body));
                }
            }
            at += len;
        }
    }
    let mut r = Reply::new(parts);
    r.data = total;
    r
}

/// Serves requests until the client disconnects, breaks the protocol, idles out, the export
/// ends or the server shuts down.
///
/// # Errors
/// I/O errors and protocol violations (the caller logs them).
pub async fn serve<R, W>(
    mut r: R,
    w: W,
    s: Session,
    ctx: Arc<Context>,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Reply>(MAX_REQUESTS);
    let writer = tokio::spawn(write_replies(w, rx, ctx.clone()));
    let slots = Arc::new(Semaphore::new(MAX_REQUESTS));
    let s = Arc::new(s);
    let size = s.export.image.disk.size;
    let outcome: io::Result<()> = async {
        loop {
            let mut head = [0u8; nbd::REQUEST_LEN];
            tokio::select! {
                _ = shutdown.changed() => return Ok(()),
                got = tokio::time::timeout(ctx.idle_timeout, r.read_exact(&mut head)) => match got {
                    Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout")),
                    Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                    Ok(Err(e)) => return Err(e),
                    Ok(Ok(_)) => {}
                },
            }
            let req = Request::decode(&head)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let slot = slots
                .clone()
                .acquire_owned()
                .await
                .map_err(io::Error::other)?;
            if req.command == cmd::DISC {
                return Ok(());
            }
            if req.command == cmd::WRITE {
                // The payload follows the header; read and drop it to stay in step.
                if u64::from(req.length) > u64::from(ctx.max_request) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("a write of {} bytes (over the request limit)", req.length),
                    ));
                }
                let mut left = u64::from(req.length);
                let mut sink = vec![0u8; 64 << 10];
                while left > 0 {
                    let k = left.min(sink.len() as u64) as usize;
                    tokio::time::timeout(ctx.idle_timeout, r.read_exact(&mut sink[..k]))
                        .await
                        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "idle timeout"))??;
                    left -= k as u64;
                }
            }
            if !s.export.live(ctx.repo.now()) {
                push(&tx, slot, error_reply(&s, &req, errno::ESHUTDOWN, "the export was deleted or expired")).await?;
                return Ok(());
            }
            let in_range = req.length > 0
                && req.offset.checked_add(u64::from(req.length)).is_some_and(|e| e <= size);
            match req.command {
                cmd::READ => {
                    if !in_range || req.length > ctx.max_request {
                        push(&tx, slot, error_reply(&s, &req, errno::EINVAL, "read outside the export or over the request limit")).await?;
                        continue;
                    }
                    let kib = u64::from(req.length).div_ceil(1024).max(1) as u32;
                    let budget = ctx
                        .inflight
                        .clone()
                        .acquire_many_owned(kib)
                        .await
                        .map_err(io::Error::other)?;
                    let (ctx2, s2, tx2) = (ctx.clone(), s.clone(), tx.clone());
                    tokio::spawn(async move {
                        let blocks = ctx2.blocks.clone();
                        let export = s2.export.clone();
                        let (off, len) = (req.offset, u64::from(req.length));
                        let read = tokio::task::spawn_blocking(move || blocks.read(&export, off, len)).await;
                        let mut reply = match read {
                            Ok(Ok(pieces)) => read_reply(&s2, &req, pieces),
                            Ok(Err(e)) => {
                                ctx2.repo.metrics.nbd_read_errors.inc();
                                tracing::warn!(export = %s2.export.backup, offset = off, length = len, error = %e, "NBD read answered EIO");
                                error_reply(&s2, &req, errno::EIO, "a block of this range failed verification or could not be read")
                            }
                            Err(e) => {
                                ctx2.repo.metrics.nbd_read_errors.inc();
                                tracing::error!(error = %e, "NBD read task failed");
                                error_reply(&s2, &req, errno::EIO, "internal error")
                            }
                        };
                        reply._budget = Some(budget);
                        reply._slot = Some(slot);
                        let _ = tx2.send(reply).await;
                    });
                }
                cmd::BLOCK_STATUS => {
                    if !s.structured || !s.allocation {
                        push(&tx, slot, error_reply(&s, &req, errno::EINVAL, "no meta context was negotiated")).await?;
                        continue;
                    }
                    if !in_range {
                        push(&tx, slot, error_reply(&s, &req, errno::EINVAL, "block status outside the export")).await?;
                        continue;
                    }
                    let max = if req.flags & cmd_flags::REQ_ONE != 0 { 1 } else { MAX_EXTENTS };
                    let extents = ctx.blocks.extents(&s.export, req.offset, u64::from(req.length), max);
                    let payload = nbd::encode_block_status(ALLOCATION_CONTEXT, &extents);
                    let head = ChunkHeader {
                        flags: reply_flags::DONE,
                        kind: reply_type::BLOCK_STATUS,
                        handle: req.handle,
                        length: payload.len() as u32,
                    };
                    push(&tx, slot, Reply::new(vec![Bytes::copy_from_slice(&head.encode()), Bytes::from(payload)])).await?;
                }
                cmd::FLUSH => push(&tx, slot, simple(0, req.handle)).await?,
                cmd::WRITE | cmd::WRITE_ZEROES | cmd::TRIM => {
                    push(&tx, slot, error_reply(&s, &req, errno::EPERM, "the export is read-only")).await?;
                }
                _ => push(&tx, slot, error_reply(&s, &req, errno::EINVAL, "command not supported")).await?,
            }
        }
    }
    .await;
    drop(tx);
    // Pending replies go out before the connection closes.
    match writer.await {
        Ok(Err(e)) if outcome.is_ok() => return Err(e),
        Err(e) if outcome.is_ok() => return Err(io::Error::other(e)),
        _ => {}
    }
    outcome
}

async fn push(
    tx: &mpsc::Sender<Reply>,
    slot: OwnedSemaphorePermit,
    mut reply: Reply,
) -> io::Result<()> {
    reply._slot = Some(slot);
    tx.send(reply)
        .await
        .map_err(|_| io::Error::other("the reply writer stopped"))
}

async fn write_replies<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::Receiver<Reply>,
    ctx: Arc<Context>,
) -> io::Result<()> {
    while let Some(reply) = rx.recv().await {
        for p in &reply.parts {
            w.write_all(p).await?;
        }
        ctx.repo.metrics.nbd_bytes_sent.add(reply.data);
        if rx.is_empty() {
            w.flush().await?;
        }
    }
    w.shutdown().await
}
