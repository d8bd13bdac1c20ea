//! A blocking NBD client on one connection, shared by threads.
//!
//! Negotiation: fixed newstyle, `NBD_OPT_STRUCTURED_REPLY`, `NBD_OPT_SET_META_CONTEXT` (the
//! server assigns the ids), `NBD_OPT_GO` asking for block sizes. Transmission: every call may
//! have many requests in flight, from many threads at once. Requests are written under a mutex;
//! replies are read by whichever waiting caller holds the reading turn (a flag in the shared
//! state, so no wake-up is lost): a chunk for one of its own reads goes straight into its
//! buffer, a chunk for another caller's request into that request's slot, and the other caller
//! is woken. Replies may come in any order, as the protocol allows.
//!
//! Limits, so that a broken or hostile server gets an error, never a hang or unbounded memory:
//! every socket read and write has a timeout; reply lengths are checked against what the
//! request can carry before anything is allocated; a block status reply carries at most
//! [`MAX_EXTENTS`] extents; data chunks must lie inside their request and not overlap, and a
//! read is complete only when its chunks cover it. A reply with a bad magic, for a handle no
//! request in flight has, or of a type its request cannot get ends the connection: every
//! caller gets the error.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use nbd::{
    alloc_flags, client_flags, cmd, handshake, info, opt, rep, reply_type, tflags, ChunkHeader,
    Extent, Info, ReplyHeader, Request,
};

use super::uri::{Address, NbdUri};
use crate::error::{Error, Result};

/// The most extents one block status chunk may carry (QEMU sends at most 2^17).
pub const MAX_EXTENTS: usize = 1 << 17;
/// The largest request a client should send when the server names no maximum
/// (`doc/proto.md`: 32 MiB).
pub const DEFAULT_MAX_PAYLOAD: u32 = 32 << 20;
/// Reads are split into requests of at most this size, sent together.
pub const READ_PIECE: u32 = 256 << 10;
/// The most bytes of an option reply the client accepts.
const MAX_OPTION_REPLY: u32 = 64 << 10;
/// The most replies to one option (infos, meta contexts).
const MAX_OPTION_REPLIES: usize = 64;
/// The most bytes of an error chunk's payload.
const MAX_ERROR_PAYLOAD: u32 = 4096 + 6 + 8;
/// The longest a block status request asks about.
const MAX_STATUS_LEN: u64 = 1 << 30;

/// How long the client waits.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Connecting (TCP).
    pub connect: Duration,
    /// Any one socket read or write: a server that sends nothing for this long while a
    /// request is in flight is dead.
    pub io: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(30),
            io: Duration::from_secs(60),
        }
    }
}

/// What `NBD_OPT_GO` told about the export.
#[derive(Debug, Clone)]
pub struct ExportInfo {
    /// Size in bytes.
    pub size: u64,
    /// Transmission flags ([`nbd::tflags`]).
    pub flags: u16,
    /// Minimum block size (requests are aligned to it); 1 when the server names none.
    pub min_block: u32,
    /// Preferred block size.
    pub preferred_block: u32,
    /// Largest request payload.
    pub max_payload: u32,
    /// Whether structured replies were negotiated.
    pub structured: bool,
    /// The meta contexts the server agreed to, by name, with the ids it assigned.
    pub contexts: BTreeMap<String, u32>,
}

/// A socket to the server.
#[derive(Debug)]
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn try_clone(&self) -> std::io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }

    fn set_timeouts(&self, t: Duration) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => {
                s.set_read_timeout(Some(t))?;
                s.set_write_timeout(Some(t))?;
                s.set_nodelay(true)
            }
            Stream::Unix(s) => {
                s.set_read_timeout(Some(t))?;
                s.set_write_timeout(Some(t))
            }
        }
    }

    fn shutdown(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

/// A request in flight.
#[derive(Debug)]
struct Pending {
    command: u16,
    offset: u64,
    length: u32,
    /// A read's bytes, when a chunk of it was read by another caller (allocated then).
    data: Option<Vec<u8>>,
    /// The ranges of `data` (relative to the read) that chunks filled; the rest went straight
    /// into the caller's buffer.
    in_slot: Vec<(usize, usize)>,
    /// Data and hole chunks received: start → end (absolute offsets), never overlapping.
    covered: BTreeMap<u64, u64>,
    /// Block status chunks: context id → extents.
    extents: Vec<(u32, Vec<Extent>)>,
    /// The first error the server reported for it.
    error: Option<String>,
    done: bool,
}

/// What the callers share.
#[derive(Debug, Default)]
struct State {
    next_handle: u64,
    pending: HashMap<u64, Pending>,
    /// A caller is reading replies.
    reading: bool,
    /// The connection is unusable, and why.
    dead: Option<String>,
}

/// A finished request.
#[derive(Debug)]
struct Finished {
    data: Option<Vec<u8>>,
    /// Which ranges of `data` hold the reply (relative to the read).
    in_slot: Vec<(usize, usize)>,
    extents: Vec<(u32, Vec<Extent>)>,
}

/// One NBD connection in the transmission phase.
#[derive(Debug)]
pub struct Client {
    uri: String,
    info: ExportInfo,
    writer: Mutex<Stream>,
    reader: Mutex<Stream>,
    /// A third handle on the socket, to shut it down while another thread blocks on it.
    control: Stream,
    state: Mutex<State>,
    wake: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads exactly `buf.len()` bytes, naming a timeout or an early end as such.
fn read_full(s: &mut impl Read, buf: &mut [u8], what: &str) -> std::result::Result<(), String> {
    s.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            format!("the server closed the connection while sending {what}")
        }
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            format!("no {what} from the server within the timeout")
        }
        _ => format!("reading {what}: {e}"),
    })
}

impl Client {
    /// Connects to `uri`, negotiates structured replies and the meta `contexts` (those the
    /// server does not know are left out of [`ExportInfo::contexts`]), and opens the export.
    ///
    /// # Errors
    /// [`Error::Nbd`]: the server cannot be reached, refuses the export, or breaks the
    /// protocol.
    pub fn connect(uri: &NbdUri, contexts: &[String], t: Timeouts) -> Result<Client> {
        let name = uri.to_string();
        let err = |m: String| Error::Nbd {
            uri: name.clone(),
            message: m,
        };
        let stream = match &uri.address {
            Address::Tcp { host, port } => {
                let addrs: Vec<_> = (host.as_str(), *port)
                    .to_socket_addrs()
                    .map_err(|e| err(format!("cannot resolve {host}: {e}")))?
                    .collect();
                let mut last = None;
                let mut s = None;
                for a in addrs {
                    match TcpStream::connect_timeout(&a, t.connect) {
                        Ok(c) => {
                            s = Some(c);
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                }
                Stream::Tcp(s.ok_or_else(|| {
                    err(format!(
                        "cannot connect to {host}:{port}: {}",
                        last.map(|e| e.to_string())
                            .unwrap_or_else(|| "no address".into())
                    ))
                })?)
            }
            Address::Unix(p) => Stream::Unix(
                UnixStream::connect(p)
                    .map_err(|e| err(format!("cannot connect to {}: {e}", p.display())))?,
            ),
        };
        stream
            .set_timeouts(t.io)
            .map_err(|e| err(format!("setting socket timeouts: {e}")))?;
        let mut s = stream;
        let info = negotiate(&mut s, &uri.export, contexts).map_err(err)?;
        let reader = s
            .try_clone()
            .map_err(|e| err(format!("cloning the socket: {e}")))?;
        let control = s
            .try_clone()
            .map_err(|e| err(format!("cloning the socket: {e}")))?;
        Ok(Client {
            uri: name,
            info,
            writer: Mutex::new(s),
            reader: Mutex::new(reader),
            control,
            state: Mutex::new(State {
                next_handle: 1,
                ..State::default()
            }),
            wake: Condvar::new(),
        })
    }

    /// The export's negotiated properties.
    pub fn info(&self) -> &ExportInfo {
        &self.info
    }

    /// The URI connected to.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    fn err(&self, message: impl Into<String>) -> Error {
        Error::Nbd {
            uri: self.uri.clone(),
            message: message.into(),
        }
    }

    /// Reads `buf.len()` bytes at `offset`, as requests of at most [`READ_PIECE`] bytes all
    /// sent at once; unaligned reads (for a server with a minimum block size) read the aligned
    /// range around them.
    ///
    /// # Errors
    /// [`Error::Nbd`] for server errors and protocol violations; beyond the export's end.
    pub fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.info.size)
            .ok_or_else(|| {
                self.err(format!(
                    "read of {} bytes at {offset} runs past the export's end ({})",
                    buf.len(),
                    self.info.size
                ))
            })?;
        if buf.is_empty() {
            return Ok(());
        }
        let m = u64::from(self.info.min_block.max(1));
        let (a, b) = (offset / m * m, end.div_ceil(m) * m);
        if a != offset || b != end {
            let b = b.min(self.info.size.div_ceil(m) * m);
            let mut tmp = vec![0u8; (b - a) as usize];
            self.read_aligned(&mut tmp, a)?;
            let at = (offset - a) as usize;
            buf.copy_from_slice(&tmp[at..at + buf.len()]);
            return Ok(());
        }
        self.read_aligned(buf, offset)
    }

    fn read_aligned(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let m = self.info.min_block.max(1);
        let piece = (READ_PIECE.min(self.info.max_payload) / m * m).max(m) as usize;
        let mut reqs = Vec::with_capacity(buf.len().div_ceil(piece));
        let mut sinks: Vec<&mut [u8]> = Vec::with_capacity(reqs.capacity());
        for (i, chunk) in buf.chunks_mut(piece).enumerate() {
            reqs.push((
                cmd::READ,
                0,
                offset + (i * piece) as u64,
                chunk.len() as u32,
                None,
            ));
            sinks.push(chunk);
        }
        let handles = self.submit(&reqs)?;
        let mut mine: HashMap<u64, &mut [u8]> = handles.iter().copied().zip(sinks).collect();
        let finished = self.wait(&handles, &mut mine)?;
        for (h, f) in handles.iter().zip(finished) {
            if let (Some(data), Some(sink)) = (f.data, mine.get_mut(h)) {
                // Only what another caller received for this read: the rest is in place.
                for &(a, b) in &f.in_slot {
                    sink[a..b].copy_from_slice(&data[a..b]);
                }
            }
        }
        Ok(())
    }

    /// The extents of meta context `context` over `offset..offset+len`, as (start, end, flags),
    /// contiguous from `offset` to the end (asked in pieces until covered). Adjacent extents with
    /// the same flags are merged.
    ///
    /// # Errors
    /// The context was not negotiated, server errors, protocol violations.
    pub fn extents(&self, context: &str, offset: u64, len: u64) -> Result<Vec<(u64, u64, u32)>> {
        let id = *self.info.contexts.get(context).ok_or_else(|| {
            self.err(format!(
                "the server did not agree to the meta context {context}"
            ))
        })?;
        let end = offset.saturating_add(len).min(self.info.size);
        let m = u64::from(self.info.min_block.max(1));
        let mut out: Vec<(u64, u64, u32)> = Vec::new();
        let mut at = offset;
        while at < end {
            let want = (end - at).min(MAX_STATUS_LEN);
            let want = if want > m { want / m * m } else { want };
            let h = self.submit(&[(cmd::BLOCK_STATUS, 0, at, want as u32, None)])?;
            let f = self.wait(&h, &mut HashMap::new())?;
            let mut got = 0u64;
            for (ctx, ext) in f.into_iter().flat_map(|f| f.extents) {
                if ctx != id {
                    continue;
                }
                for e in ext {
                    let s = at + got;
                    let e_end = (s + u64::from(e.length)).min(end);
                    if s >= end {
                        break;
                    }
                    match out.last_mut() {
                        Some(last) if last.1 == s && last.2 == e.flags => last.1 = e_end,
                        _ => out.push((s, e_end, e.flags)),
                    }
                    got = e_end - at;
                }
                break;
            }
            if got == 0 {
                return Err(self.err(format!(
                    "block status at {at} for {context} answered no extent"
                )));
            }
            at += got;
        }
        Ok(out)
    }

    /// The byte ranges `base:allocation` does not report as holes or zeros.
    ///
    /// # Errors
    /// As [`Client::extents`].
    pub fn allocated(&self) -> Result<Vec<(u64, u64)>> {
        Ok(self
            .extents(nbd::BASE_ALLOCATION, 0, self.info.size)?
            .into_iter()
            .filter(|e| e.2 & (alloc_flags::HOLE | alloc_flags::ZERO) == 0)
            .map(|e| (e.0, e.1))
            .collect())
    }

    /// Writes `data` at `offset`, in requests of at most the server's maximum payload, all in
    /// flight at once.
    ///
    /// # Errors
    /// A read-only export, server errors, protocol violations.
    pub fn write(&self, data: &[u8], offset: u64) -> Result<()> {
        self.writable()?;
        let piece = (self.info.max_payload.min(4 << 20)) as usize;
        let reqs: Vec<_> = data
            .chunks(piece)
            .enumerate()
            .map(|(i, c)| {
                (
                    cmd::WRITE,
                    0,
                    offset + (i * piece) as u64,
                    c.len() as u32,
                    Some(c),
                )
            })
            .collect();
        let h = self.submit(&reqs)?;
        self.wait(&h, &mut HashMap::new()).map(|_| ())
    }

    /// Makes `offset..offset+len` read as zeros: `NBD_CMD_WRITE_ZEROES` (letting the server
    /// punch holes) where the export supports it, else writes of zeros.
    ///
    /// # Errors
    /// As [`Client::write`].
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.writable()?;
        if self.info.flags & tflags::SEND_WRITE_ZEROES == 0 {
            let zeros = vec![0u8; len.min(4 << 20) as usize];
            let mut at = offset;
            while at < offset + len {
                let n = (offset + len - at).min(zeros.len() as u64) as usize;
                self.write(&zeros[..n], at)?;
                at += n as u64;
            }
            return Ok(());
        }
        let step = 1u64 << 30;
        let reqs: Vec<_> = (0..len.div_ceil(step))
            .map(|i| {
                let a = offset + i * step;
                let n = (offset + len - a).min(step);
                (cmd::WRITE_ZEROES, 0, a, n as u32, None)
            })
            .collect();
        let h = self.submit(&reqs)?;
        self.wait(&h, &mut HashMap::new()).map(|_| ())
    }

    /// `NBD_CMD_FLUSH` when the export takes it (written data is durable after it).
    ///
    /// # Errors
    /// Server errors.
    pub fn flush(&self) -> Result<()> {
        if self.info.flags & tflags::SEND_FLUSH == 0 {
            return Ok(());
        }
        let h = self.submit(&[(cmd::FLUSH, 0, 0, 0, None)])?;
        self.wait(&h, &mut HashMap::new()).map(|_| ())
    }

    fn writable(&self) -> Result<()> {
        if self.info.flags & tflags::READ_ONLY != 0 {
            return Err(self.err("the export is read-only"));
        }
        Ok(())
    }

    /// Registers and sends requests (command, flags, offset, length, data); their handles.
    #[allow(clippy::type_complexity)]
    fn submit(&self, reqs: &[(u16, u16, u64, u32, Option<&[u8]>)]) -> Result<Vec<u64>> {
        let mut handles = Vec::with_capacity(reqs.len());
        {
            let mut st = lock(&self.state);
            if let Some(d) = &st.dead {
                return Err(self.err(d.clone()));
            }
            for &(command, _, offset, length, _) in reqs {
                let h = st.next_handle;
                st.next_handle += 1;
                st.pending.insert(
                    h,
                    Pending {
                        command,
                        offset,
                        length,
                        data: None,
                        in_slot: Vec::new(),
                        covered: BTreeMap::new(),
                        extents: Vec::new(),
                        error: None,
                        done: false,
                    },
                );
                handles.push(h);
            }
        }
        let mut w = lock(&self.writer);
        let mut headers = Vec::new();
        let mut sent = Ok(());
        for (&(command, flags, offset, length, data), &handle) in reqs.iter().zip(&handles) {
            let r = Request {
                flags,
                command,
                handle,
                offset,
                length,
            };
            headers.extend_from_slice(&r.encode());
            if let Some(d) = data {
                sent = w.write_all(&headers).and_then(|_| w.write_all(d));
                headers.clear();
                if sent.is_err() {
                    break;
                }
            }
        }
        if sent.is_ok() && !headers.is_empty() {
            sent = w.write_all(&headers);
        }
        drop(w);
        if let Err(e) = sent {
            let m = format!("sending requests: {e}");
            self.kill(&m);
            return Err(self.err(m));
        }
        Ok(handles)
    }

    /// Marks the connection dead and wakes every caller.
    fn kill(&self, why: &str) {
        let mut st = lock(&self.state);
        if st.dead.is_none() {
            st.dead = Some(why.to_owned());
        }
        drop(st);
        self.control.shutdown();
        self.wake.notify_all();
    }

    /// Waits until every one of `handles` is answered, reading replies while no other caller
    /// does. Chunks of reads in `mine` go straight into those buffers.
    fn wait(&self, handles: &[u64], mine: &mut HashMap<u64, &mut [u8]>) -> Result<Vec<Finished>> {
        let mut st = lock(&self.state);
        loop {
            if let Some(d) = &st.dead {
                let d = d.clone();
                for h in handles {
                    st.pending.remove(h);
                }
                return Err(self.err(d));
            }
            if handles
                .iter()
                .all(|h| st.pending.get(h).is_none_or(|p| p.done))
            {
                let mut out = Vec::with_capacity(handles.len());
                let mut first_err = None;
                for h in handles {
                    let Some(p) = st.pending.remove(h) else {
                        continue;
                    };
                    if let Some(e) = p.error {
                        first_err.get_or_insert(e);
                    }
                    out.push(Finished {
                        data: p.data,
                        in_slot: p.in_slot,
                        extents: p.extents,
                    });
                }
                return match first_err {
                    Some(e) => Err(self.err(e)),
                    None => Ok(out),
                };
            }
            if st.reading {
                st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            st.reading = true;
            drop(st);
            let r = self.read_chunk(mine);
            st = lock(&self.state);
            st.reading = false;
            if let Err(m) = r {
                if st.dead.is_none() {
                    st.dead = Some(m);
                }
                self.control.shutdown();
            }
            self.wake.notify_all();
        }
    }

    /// Reads one reply (simple) or chunk (structured) and files it; an error ends the
    /// connection.
    fn read_chunk(&self, mine: &mut HashMap<u64, &mut [u8]>) -> std::result::Result<(), String> {
        let mut rd = lock(&self.reader);
        let mut head = [0u8; nbd::SIMPLE_REPLY_LEN];
        read_full(&mut *rd, &mut head, "a reply")?;
        let start = nbd::decode_reply_start(&head).map_err(|e| e.to_string())?;
        let handle = match start {
            ReplyHeader::Simple { handle, .. } | ReplyHeader::Structured { handle, .. } => handle,
        };
        let (command, offset, length) = {
            let st = lock(&self.state);
            match st.pending.get(&handle) {
                Some(p) if !p.done => (p.command, p.offset, p.length),
                _ => {
                    return Err(format!(
                        "a reply for handle {handle:#x}, which no request in flight has (unknown, or already answered)"
                    ))
                }
            }
        };
        match start {
            ReplyHeader::Simple { error, .. } => {
                let mut data = None;
                if error == 0 && command == cmd::READ {
                    if self.info.structured {
                        return Err("a simple reply with data to a read, after structured replies were negotiated".into());
                    }
                    data = Some(receive(&mut rd, handle, mine, length as usize)?);
                }
                let mut st = lock(&self.state);
                let p = st.pending.get_mut(&handle).ok_or("request vanished")?;
                if error != 0 {
                    p.error = Some(format!(
                        "{} at {offset}+{length} failed: error {error} ({})",
                        name(command),
                        errno_name(error)
                    ));
                } else if let Some(d) = data.flatten() {
                    p.in_slot.push((0, d.len()));
                    p.data = Some(d);
                }
                if p.error.is_none() && command == cmd::READ {
                    p.covered.insert(offset, offset + u64::from(length));
                }
                p.done = true;
            }
            ReplyHeader::Structured { flags, kind, .. } => {
                let mut lb = [0u8; 4];
                read_full(&mut *rd, &mut lb, "a reply chunk's length")?;
                let max = match kind {
                    reply_type::NONE => 0,
                    reply_type::OFFSET_DATA if command == cmd::READ => 8 + length,
                    reply_type::OFFSET_HOLE if command == cmd::READ => 12,
                    reply_type::BLOCK_STATUS if command == cmd::BLOCK_STATUS => {
                        4 + 8 * MAX_EXTENTS as u32
                    }
                    k if k & reply_type::ERROR_BIT != 0 => MAX_ERROR_PAYLOAD,
                    k => {
                        return Err(format!(
                        "a reply chunk of type {k} to {} (handle {handle:#x}), which it cannot get",
                        name(command)
                    ))
                    }
                };
                let h = nbd::finish_structured(flags, kind, handle, lb, max)
                    .map_err(|e| format!("{e} (a reply to {} of {length} bytes)", name(command)))?;
                self.structured_chunk(&mut rd, h, mine, command, offset, length)?;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn structured_chunk(
        &self,
        rd: &mut Stream,
        h: ChunkHeader,
        mine: &mut HashMap<u64, &mut [u8]>,
        command: u16,
        offset: u64,
        length: u32,
    ) -> std::result::Result<(), String> {
        let req_end = offset + u64::from(length);
        // (start, end) of data or hole this chunk fills, checked against the request.
        let mut filled = None;
        let mut extents = None;
        let mut error = None;
        match h.kind {
            reply_type::NONE => {
                if !h.done() {
                    return Err("an NBD_REPLY_TYPE_NONE chunk without the DONE flag".into());
                }
            }
            reply_type::OFFSET_DATA | reply_type::OFFSET_HOLE => {
                let mut ob = [0u8; 8];
                read_full(rd, &mut ob, "a chunk's offset")?;
                let at = u64::from_be_bytes(ob);
                let n = if h.kind == reply_type::OFFSET_DATA {
                    u64::from(
                        h.length
                            .checked_sub(8)
                            .ok_or("a data chunk shorter than its offset")?,
                    )
                } else {
                    if h.length != 12 {
                        return Err(format!("a hole chunk of {} bytes (12 expected)", h.length));
                    }
                    let mut lb = [0u8; 4];
                    read_full(rd, &mut lb, "a hole's length")?;
                    u64::from(u32::from_be_bytes(lb))
                };
                if n == 0 || at < offset || at.checked_add(n).is_none_or(|e| e > req_end) {
                    return Err(format!(
                        "a chunk for {at}+{n}, outside its read of {offset}+{length}"
                    ));
                }
                let rel = (at - offset) as usize;
                let dst_len = n as usize;
                // Where its bytes go: the caller's buffer, or the request's slot.
                if let Some(sink) = mine.get_mut(&h.handle) {
                    let dst = &mut sink[rel..rel + dst_len];
                    if h.kind == reply_type::OFFSET_DATA {
                        read_full(rd, dst, "read data")?;
                    } else {
                        dst.fill(0);
                    }
                } else {
                    let mut slot = {
                        let mut st = lock(&self.state);
                        let p = st.pending.get_mut(&h.handle).ok_or("request vanished")?;
                        p.data.take().unwrap_or_else(|| vec![0u8; length as usize])
                    };
                    let dst = &mut slot[rel..rel + dst_len];
                    let r = if h.kind == reply_type::OFFSET_DATA {
                        read_full(rd, dst, "read data")
                    } else {
                        dst.fill(0);
                        Ok(())
                    };
                    let mut st = lock(&self.state);
                    if let Some(p) = st.pending.get_mut(&h.handle) {
                        p.data = Some(slot);
                        p.in_slot.push((rel, rel + dst_len));
                    }
                    r?;
                }
                filled = Some((at, at + n));
            }
            reply_type::BLOCK_STATUS => {
                let mut payload = vec![0u8; h.length as usize];
                read_full(rd, &mut payload, "block status")?;
                let (ctx, ext) =
                    nbd::decode_block_status(&payload, MAX_EXTENTS).map_err(|e| e.to_string())?;
                if !self.info.contexts.values().any(|&id| id == ctx) {
                    return Err(format!(
                        "block status for context id {ctx}, which was not negotiated"
                    ));
                }
                extents = Some((ctx, ext));
            }
            _ => {
                // An error chunk (the type's error bit is set; its length was bounded).
                let mut payload = vec![0u8; h.length as usize];
                read_full(rd, &mut payload, "an error reply")?;
                let (e, msg) = nbd::decode_error_payload(&payload).map_err(|e| e.to_string())?;
                error = Some(format!(
                    "{} at {offset}+{length} failed: error {e} ({}){}",
                    name(command),
                    errno_name(e),
                    if msg.is_empty() {
                        String::new()
                    } else {
                        format!(": {msg}")
                    }
                ));
            }
        }
        let mut st = lock(&self.state);
        let p = st.pending.get_mut(&h.handle).ok_or("request vanished")?;
        if let Some((a, b)) = filled {
            let before = p.covered.range(..b).next_back();
            if before.is_some_and(|(_, &e)| e > a) {
                return Err(format!(
                    "chunks of the read of {offset}+{length} overlap at {a}"
                ));
            }
            p.covered.insert(a, b);
        }
        if let Some(x) = extents {
            if p.extents.iter().any(|(c, _)| *c == x.0) {
                return Err("two block status chunks for one context".into());
            }
            p.extents.push(x);
        }
        if let Some(e) = error {
            p.error.get_or_insert(e);
        }
        if h.done() {
            p.done = true;
            if p.error.is_none() && command == cmd::READ {
                let got: u64 = p.covered.iter().map(|(a, b)| b - a).sum();
                if got != u64::from(length) {
                    p.error = Some(format!(
                        "the server ended its reply to the read of {offset}+{length} after {got} bytes"
                    ));
                }
            }
            if p.error.is_none() && command == cmd::BLOCK_STATUS && p.extents.is_empty() {
                p.error = Some(format!(
                    "block status at {offset}+{length} answered no extents"
                ));
            }
        }
        Ok(())
    }

    /// Ends the connection politely (`NBD_CMD_DISC`); also done when the client is dropped.
    pub fn disconnect(&self) {
        let dead = lock(&self.state).dead.is_some();
        if !dead {
            let r = Request {
                flags: 0,
                command: cmd::DISC,
                handle: 0,
                offset: 0,
                length: 0,
            };
            let _ = lock(&self.writer).write_all(&r.encode());
            self.control.shutdown();
        }
        let mut st = lock(&self.state);
        st.dead.get_or_insert_with(|| "disconnected".into());
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.disconnect();
    }
}

/// Receives `len` bytes of a read: into the caller's own buffer when the read is in `mine`
/// (`None` returned), else into a new vector.
fn receive(
    rd: &mut Stream,
    handle: u64,
    mine: &mut HashMap<u64, &mut [u8]>,
    len: usize,
) -> std::result::Result<Option<Vec<u8>>, String> {
    match mine.get_mut(&handle) {
        Some(sink) => {
            read_full(rd, &mut sink[..len], "read data")?;
            Ok(None)
        }
        None => {
            let mut v = vec![0u8; len];
            read_full(rd, &mut v, "read data")?;
            Ok(Some(v))
        }
    }
}

/// A command's name, for messages.
fn name(command: u16) -> &'static str {
    match command {
        cmd::READ => "read",
        cmd::WRITE => "write",
        cmd::FLUSH => "flush",
        cmd::WRITE_ZEROES => "write zeroes",
        cmd::BLOCK_STATUS => "block status",
        _ => "request",
    }
}

/// An NBD error value's name.
fn errno_name(e: u32) -> &'static str {
    match e {
        nbd::errno::EPERM => "EPERM",
        nbd::errno::EIO => "EIO",
        nbd::errno::ENOMEM => "ENOMEM",
        nbd::errno::EINVAL => "EINVAL",
        nbd::errno::ENOSPC => "ENOSPC",
        nbd::errno::EOVERFLOW => "EOVERFLOW",
        nbd::errno::ENOTSUP => "ENOTSUP",
        nbd::errno::ESHUTDOWN => "ESHUTDOWN",
        _ => "unknown",
    }
}

/// Sends one option and reads its replies until the final one (ACK or an error);
/// `on_reply` sees every non-final reply (type and data).
fn option(
    s: &mut Stream,
    option: u32,
    data: &[u8],
    mut on_reply: impl FnMut(u32, &[u8]) -> std::result::Result<(), String>,
) -> std::result::Result<std::result::Result<(), (u32, String)>, String> {
    s.write_all(&nbd::encode_option(option, data))
        .map_err(|e| format!("sending option {option}: {e}"))?;
    for _ in 0..MAX_OPTION_REPLIES {
        let mut head = [0u8; nbd::OPTION_REPLY_HEADER_LEN];
        read_full(s, &mut head, "an option reply")?;
        let r =
            nbd::decode_option_reply(&head, option, MAX_OPTION_REPLY).map_err(|e| e.to_string())?;
        let mut body = vec![0u8; r.len as usize];
        read_full(s, &mut body, "an option reply's data")?;
        if r.is_error() {
            let msg = String::from_utf8_lossy(&body).into_owned();
            return Ok(Err((r.reply, msg)));
        }
        if r.reply == rep::ACK {
            return Ok(Ok(()));
        }
        on_reply(r.reply, &body)?;
    }
    Err(format!(
        "more than {MAX_OPTION_REPLIES} replies to option {option}"
    ))
}

/// The handshake: greeting, flags, options; the export's properties.
fn negotiate(
    s: &mut Stream,
    export: &str,
    contexts: &[String],
) -> std::result::Result<ExportInfo, String> {
    let mut g = [0u8; nbd::GREETING_LEN];
    read_full(s, &mut g, "the greeting")?;
    let flags = nbd::decode_greeting(&g).map_err(|e| format!("not an NBD server: {e}"))?;
    let mut cf = client_flags::FIXED_NEWSTYLE;
    if flags & handshake::NO_ZEROES != 0 {
        cf |= client_flags::NO_ZEROES;
    }
    s.write_all(&cf.to_be_bytes())
        .map_err(|e| format!("sending client flags: {e}"))?;
    let structured = option(s, opt::STRUCTURED_REPLY, &[], |t, _| {
        Err(format!(
            "an unexpected reply {t} to NBD_OPT_STRUCTURED_REPLY"
        ))
    })?
    .is_ok();
    let mut agreed = BTreeMap::new();
    if structured && !contexts.is_empty() {
        let queries: Vec<&str> = contexts.iter().map(String::as_str).collect();
        let r = option(
            s,
            opt::SET_META_CONTEXT,
            &nbd::encode_meta_context(export, &queries),
            |t, data| {
                if t != rep::META_CONTEXT {
                    return Err(format!(
                        "an unexpected reply {t} to NBD_OPT_SET_META_CONTEXT"
                    ));
                }
                let (id, name) = nbd::decode_meta_context_reply(data).map_err(|e| e.to_string())?;
                if !contexts.contains(&name) {
                    return Err(format!(
                        "the server chose meta context {name:?}, which was not asked"
                    ));
                }
                agreed.insert(name, id);
                Ok(())
            },
        )?;
        if let Err((code, msg)) = r {
            // Servers without meta contexts: every byte is data, no bitmaps.
            if code != rep::ERR_UNSUP {
                return Err(format!(
                    "NBD_OPT_SET_META_CONTEXT refused: {} {msg}",
                    nbd::rep_error_name(code)
                ));
            }
            agreed.clear();
        }
    }
    let mut export_info = None;
    let mut block = None;
    let r = option(
        s,
        opt::GO,
        &nbd::encode_go(export, &[info::BLOCK_SIZE]),
        |t, data| {
            if t != rep::INFO {
                return Err(format!("an unexpected reply {t} to NBD_OPT_GO"));
            }
            match nbd::decode_info(data).map_err(|e| e.to_string())? {
                Info::Export { size, flags } => export_info = Some((size, flags)),
                Info::BlockSize {
                    min,
                    preferred,
                    max,
                } => block = Some((min, preferred, max)),
                Info::Other(_) => {}
            }
            Ok(())
        },
    )?;
    if let Err((code, msg)) = r {
        return Err(format!(
            "export {export:?}: {}{}",
            nbd::rep_error_name(code),
            if msg.is_empty() {
                String::new()
            } else {
                format!(": {msg}")
            }
        ));
    }
    let (size, tflags) = export_info.ok_or("NBD_OPT_GO ended without the export's size")?;
    let (min, preferred, max) = block.unwrap_or((1, 4096, DEFAULT_MAX_PAYLOAD));
    if min == 0 || !min.is_power_of_two() || min > 64 << 10 || max < min {
        return Err(format!(
            "implausible block sizes: minimum {min}, maximum {max}"
        ));
    }
    Ok(ExportInfo {
        size,
        flags: tflags,
        min_block: min,
        preferred_block: preferred,
        max_payload: max.min(DEFAULT_MAX_PAYLOAD),
        structured,
        contexts: agreed,
    })
}
