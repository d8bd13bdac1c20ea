//! The handshake: fixed newstyle negotiation up to `NBD_OPT_GO` or `NBD_OPT_EXPORT_NAME`.
//!
//! Options served: `EXPORT_NAME`, `ABORT`, `LIST` (refused by policy: export names are
//! capabilities and are never listed), `INFO` and `GO` (`NBD_INFO_EXPORT` and
//! `NBD_INFO_BLOCK_SIZE`), `STRUCTURED_REPLY`, `LIST_META_CONTEXT` and `SET_META_CONTEXT`
//! (`base:allocation`). Everything else is `NBD_REP_ERR_UNSUP` (TLS and extended headers
//! included). A name that is not a live export is `NBD_REP_ERR_UNKNOWN`, whether it never existed,
//! expired or was deleted. Malformed options end the connection.

use std::io;
use std::sync::Arc;

use nbd::{client_flags, handshake, opt, rep, tflags, BASE_ALLOCATION};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Context;
use crate::repo::exports::Export;

/// Most bytes of option data accepted (names and context queries are far shorter).
const MAX_OPTION_LEN: u32 = 16 << 10;
/// Longest export name or context query.
const MAX_NAME: usize = 4096;
/// Most meta-context queries in one option.
const MAX_QUERIES: usize = 32;
/// Most options in one negotiation.
const MAX_OPTIONS: usize = 64;
/// The id this server gives `base:allocation`.
pub const ALLOCATION_CONTEXT: u32 = 1;

/// What the negotiation settled.
#[derive(Debug)]
pub struct Session {
    /// The export being served.
    pub export: Arc<Export>,
    /// Whether replies are structured.
    pub structured: bool,
    /// Whether `base:allocation` was selected for this export (block status allowed).
    pub allocation: bool,
    /// Transmission flags sent to the client.
    pub flags: u16,
}

fn violation(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Sends one option reply, flushed (the client waits for it).
async fn reply<W: AsyncWrite + Unpin>(
    w: &mut W,
    option: u32,
    kind: u32,
    data: &[u8],
) -> io::Result<()> {
    w.write_all(&nbd::encode_option_reply(option, kind, data))
        .await?;
    w.flush().await
}

/// Runs the negotiation on a fresh connection. `Ok(None)`: the client aborted.
///
/// # Errors
/// I/O errors and protocol violations (the caller logs them and closes).
pub async fn negotiate<R, W>(r: &mut R, w: &mut W, ctx: &Context) -> io::Result<Option<Session>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    w.write_all(&nbd::encode_greeting(
        handshake::FIXED_NEWSTYLE | handshake::NO_ZEROES,
    ))
    .await?;
    w.flush().await?;
    let cflags = r.read_u32().await?;
    if cflags & client_flags::FIXED_NEWSTYLE == 0 {
        return Err(violation(
            "the client does not speak fixed newstyle negotiation",
        ));
    }
    if cflags & !(client_flags::FIXED_NEWSTYLE | client_flags::NO_ZEROES) != 0 {
        return Err(violation(format!("unknown client flags {cflags:#x}")));
    }
    let no_zeroes = cflags & client_flags::NO_ZEROES != 0;
    let mut structured = false;
    // The export the selected contexts were set for, and whether base:allocation is among them.
    let mut contexts: Option<(String, bool)> = None;
    for _ in 0..MAX_OPTIONS {
        let mut head = [0u8; nbd::OPTION_HEADER_LEN];
        r.read_exact(&mut head).await?;
        let (option, len) = nbd::decode_option_header(&head, MAX_OPTION_LEN)
            .map_err(|e| violation(e.to_string()))?;
        let mut data = vec![0u8; len as usize];
        r.read_exact(&mut data).await?;
        match option {
            opt::EXPORT_NAME => {
                let name = String::from_utf8_lossy(&data);
                let Some(export) = ctx.open(&name) else {
                    // The protocol has no error reply for EXPORT_NAME: the server closes.
                    return Err(violation("NBD_OPT_EXPORT_NAME of an unknown export"));
                };
                let flags = transmission_flags(structured);
                let mut out = Vec::with_capacity(134);
                out.extend_from_slice(&export.image.disk.size.to_be_bytes());
                out.extend_from_slice(&flags.to_be_bytes());
                if !no_zeroes {
                    out.extend_from_slice(&[0u8; 124]);
                }
                w.write_all(&out).await?;
                w.flush().await?;
                let allocation = contexts.is_some_and(|(n, a)| a && n == export.name);
                return Ok(Some(Session {
                    export,
                    structured,
                    allocation,
                    flags,
                }));
            }
            opt::ABORT => {
                reply(w, option, rep::ACK, &[]).await?;
                w.flush().await?;
                return Ok(None);
            }
            opt::LIST => {
                reply(
                    w,
                    option,
                    rep::ERR_POLICY,
                    b"exports are not listed: ask the repository's API for one",
                )
                .await?;
            }
            opt::STRUCTURED_REPLY => {
                if data.is_empty() {
                    structured = true;
                    reply(w, option, rep::ACK, &[]).await?;
                } else {
                    reply(
                        w,
                        option,
                        rep::ERR_INVALID,
                        b"NBD_OPT_STRUCTURED_REPLY takes no data",
                    )
                    .await?;
                }
            }
            opt::LIST_META_CONTEXT | opt::SET_META_CONTEXT => {
                let set = option == opt::SET_META_CONTEXT;
                let Ok((name, queries)) = nbd::decode_meta_context(&data, MAX_NAME, MAX_QUERIES)
                else {
                    reply(
                        w,
                        option,
                        rep::ERR_INVALID,
                        b"malformed meta context request",
                    )
                    .await?;
                    continue;
                };
                if !structured {
                    reply(
                        w,
                        option,
                        rep::ERR_INVALID,
                        b"negotiate NBD_OPT_STRUCTURED_REPLY first",
                    )
                    .await?;
                    continue;
                }
                if ctx.open(&name).is_none() {
                    reply(w, option, rep::ERR_UNKNOWN, b"unknown export").await?;
                    continue;
                }
                let wanted = if set {
                    queries.iter().any(|q| q == BASE_ALLOCATION)
                } else {
                    queries.is_empty()
                        || queries.iter().any(|q| q == "base:" || q == BASE_ALLOCATION)
                };
                if wanted {
                    let data = nbd::encode_meta_context_reply(ALLOCATION_CONTEXT, BASE_ALLOCATION);
                    reply(w, option, rep::META_CONTEXT, &data).await?;
                }
                if set {
                    contexts = Some((name, wanted));
                }
                reply(w, option, rep::ACK, &[]).await?;
            }
            opt::INFO | opt::GO => {
                let Ok((name, _requested)) = nbd::decode_go(&data, MAX_NAME) else {
                    reply(w, option, rep::ERR_INVALID, b"malformed NBD_OPT_INFO/GO").await?;
                    continue;
                };
                let Some(export) = ctx.open(&name) else {
                    reply(
                        w,
                        option,
                        rep::ERR_UNKNOWN,
                        b"unknown export (a wrong name, or one that expired or was deleted)",
                    )
                    .await?;
                    continue;
                };
                let flags = transmission_flags(structured);
                let size = export.image.disk.size;
                reply(w, option, rep::INFO, &nbd::encode_info_export(size, flags)).await?;
                let preferred = preferred_block(export.image.disk.block_size, ctx.max_request);
                let bsize = nbd::encode_info_block_size(1, preferred, ctx.max_request);
                reply(w, option, rep::INFO, &bsize).await?;
                reply(w, option, rep::ACK, &[]).await?;
                if option == opt::GO {
                    w.flush().await?;
                    let allocation = contexts.is_some_and(|(n, a)| a && n == name);
                    return Ok(Some(Session {
                        export,
                        structured,
                        allocation,
                        flags,
                    }));
                }
            }
            _ => {
                reply(
                    w,
                    option,
                    rep::ERR_UNSUP,
                    b"option not supported by this server",
                )
                .await?;
            }
        }
    }
    Err(violation(format!("more than {MAX_OPTIONS} options")))
}

/// Read-only, flush accepted (a no-op), consistent across connections; `DF` only with
/// structured replies.
fn transmission_flags(structured: bool) -> u16 {
    let mut f = tflags::HAS_FLAGS | tflags::READ_ONLY | tflags::SEND_FLUSH | tflags::CAN_MULTI_CONN;
    if structured {
        f |= tflags::SEND_DF;
    }
    f
}

/// The preferred request size: the backup's block size, or the largest power of two within
/// `max_request`.
fn preferred_block(block_size: u32, max_request: u32) -> u32 {
    let cap = 1u32 << (31 - max_request.leading_zeros());
    block_size.min(cap).max(4096)
}
