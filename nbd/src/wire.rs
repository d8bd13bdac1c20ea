//! Constants and codecs of the NBD protocol (fixed newstyle negotiation, transmission phase
//! with simple and structured replies). Names follow `doc/proto.md` without the `NBD_` prefix.

use std::fmt;

/// `NBDMAGIC`: the first 8 bytes a server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: the newstyle magic after `NBDMAGIC`, and the magic of every client option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// The magic of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// The magic of a transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// The magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// The magic of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flags (server → client, 16 bits).
pub mod handshake {
    pub const FIXED_NEWSTYLE: u16 = 1 << 0;
    pub const NO_ZEROES: u16 = 1 << 1;
}

/// Client flags (client → server, 32 bits, right after the server's handshake flags).
pub mod client_flags {
    pub const FIXED_NEWSTYLE: u32 = 1 << 0;
    pub const NO_ZEROES: u32 = 1 << 1;
}

/// Transmission flags of an export (16 bits).
pub mod tflags {
    pub const HAS_FLAGS: u16 = 1 << 0;
    pub const READ_ONLY: u16 = 1 << 1;
    pub const SEND_FLUSH: u16 = 1 << 2;
    pub const SEND_FUA: u16 = 1 << 3;
    pub const ROTATIONAL: u16 = 1 << 4;
    pub const SEND_TRIM: u16 = 1 << 5;
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    pub const SEND_DF: u16 = 1 << 7;
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
    pub const SEND_RESIZE: u16 = 1 << 9;
    pub const SEND_CACHE: u16 = 1 << 10;
    pub const SEND_FAST_ZERO: u16 = 1 << 11;
}

/// Option types (`NBD_OPT_*`).
pub mod opt {
    pub const EXPORT_NAME: u32 = 1;
    pub const ABORT: u32 = 2;
    pub const LIST: u32 = 3;
    pub const STARTTLS: u32 = 5;
    pub const INFO: u32 = 6;
    pub const GO: u32 = 7;
    pub const STRUCTURED_REPLY: u32 = 8;
    pub const LIST_META_CONTEXT: u32 = 9;
    pub const SET_META_CONTEXT: u32 = 10;
    pub const EXTENDED_HEADERS: u32 = 11;
}

/// Option reply types (`NBD_REP_*`); errors have bit 31 set.
pub mod rep {
    pub const ACK: u32 = 1;
    pub const SERVER: u32 = 2;
    pub const INFO: u32 = 3;
    pub const META_CONTEXT: u32 = 4;
    pub const ERR_BIT: u32 = 1 << 31;
    pub const ERR_UNSUP: u32 = ERR_BIT | 1;
    pub const ERR_POLICY: u32 = ERR_BIT | 2;
    pub const ERR_INVALID: u32 = ERR_BIT | 3;
    pub const ERR_PLATFORM: u32 = ERR_BIT | 4;
    pub const ERR_TLS_REQD: u32 = ERR_BIT | 5;
    pub const ERR_UNKNOWN: u32 = ERR_BIT | 6;
    pub const ERR_SHUTDOWN: u32 = ERR_BIT | 7;
    pub const ERR_BLOCK_SIZE_REQD: u32 = ERR_BIT | 8;
    pub const ERR_TOO_BIG: u32 = ERR_BIT | 9;
    pub const ERR_EXT_HEADER_REQD: u32 = ERR_BIT | 10;
}

/// Information types of `NBD_OPT_INFO`/`NBD_OPT_GO` (`NBD_INFO_*`).
pub mod info {
    pub const EXPORT: u16 = 0;
    pub const NAME: u16 = 1;
    pub const DESCRIPTION: u16 = 2;
    pub const BLOCK_SIZE: u16 = 3;
}

/// Transmission commands (`NBD_CMD_*`).
pub mod cmd {
    pub const READ: u16 = 0;
    pub const WRITE: u16 = 1;
    pub const DISC: u16 = 2;
    pub const FLUSH: u16 = 3;
    pub const TRIM: u16 = 4;
    pub const CACHE: u16 = 5;
    pub const WRITE_ZEROES: u16 = 6;
    pub const BLOCK_STATUS: u16 = 7;
}

/// Command flags (`NBD_CMD_FLAG_*`).
pub mod cmd_flags {
    pub const FUA: u16 = 1 << 0;
    pub const NO_HOLE: u16 = 1 << 1;
    pub const DF: u16 = 1 << 2;
    pub const REQ_ONE: u16 = 1 << 3;
    pub const FAST_ZERO: u16 = 1 << 4;
}

/// Structured reply flags.
pub mod reply_flags {
    /// The last chunk of the reply to one request.
    pub const DONE: u16 = 1 << 0;
}

/// Structured reply chunk types (`NBD_REPLY_TYPE_*`).
pub mod reply_type {
    pub const NONE: u16 = 0;
    pub const OFFSET_DATA: u16 = 1;
    pub const OFFSET_HOLE: u16 = 2;
    pub const BLOCK_STATUS: u16 = 5;
    pub const ERROR_BIT: u16 = 1 << 15;
    pub const ERROR: u16 = ERROR_BIT | 1;
    pub const ERROR_OFFSET: u16 = ERROR_BIT | 2;
}

/// Error values on the wire (errno numbers of Linux, fixed by the protocol).
pub mod errno {
    pub const EPERM: u32 = 1;
    pub const EIO: u32 = 5;
    pub const ENOMEM: u32 = 12;
    pub const EINVAL: u32 = 22;
    pub const ENOSPC: u32 = 28;
    pub const EOVERFLOW: u32 = 75;
    pub const ENOTSUP: u32 = 95;
    pub const ESHUTDOWN: u32 = 108;
}

/// Flags of `base:allocation` extents.
pub mod alloc_flags {
    pub const HOLE: u32 = 1 << 0;
    pub const ZERO: u32 = 1 << 1;
}

/// Flags of `qemu:dirty-bitmap:NAME` extents.
pub mod dirty_flags {
    pub const DIRTY: u32 = 1 << 0;
}

/// The meta context of allocation state.
pub const BASE_ALLOCATION: &str = "base:allocation";
/// The prefix of QEMU's dirty-bitmap meta contexts (`qemu:dirty-bitmap:NAME`).
pub const QEMU_DIRTY_BITMAP: &str = "qemu:dirty-bitmap:";

/// Bytes of the server's greeting: `NBDMAGIC`, `IHAVEOPT`, handshake flags.
pub const GREETING_LEN: usize = 18;
/// Bytes of an option header: `IHAVEOPT`, option, length.
pub const OPTION_HEADER_LEN: usize = 16;
/// Bytes of an option reply header: magic, option, reply type, length.
pub const OPTION_REPLY_HEADER_LEN: usize = 20;
/// Bytes of a transmission request header.
pub const REQUEST_LEN: usize = 28;
/// Bytes of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Bytes of a structured reply chunk header.
pub const STRUCTURED_REPLY_LEN: usize = 20;

/// What is wrong with bytes from the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// A magic number is not the expected one.
    BadMagic { what: &'static str, got: u64 },
    /// Fewer bytes than the structure needs.
    Short {
        what: &'static str,
        need: usize,
        got: usize,
    },
    /// A length field exceeds what the caller accepts.
    TooLarge {
        what: &'static str,
        len: u64,
        max: u64,
    },
    /// A field that must hold one of a few values holds another, or lengths disagree.
    Invalid { what: &'static str, detail: String },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::BadMagic { what, got } => write!(f, "{what}: bad magic {got:#x}"),
            WireError::Short { what, need, got } => {
                write!(f, "{what}: {got} bytes where {need} are needed")
            }
            WireError::TooLarge { what, len, max } => {
                write!(f, "{what}: length {len} exceeds the limit of {max}")
            }
            WireError::Invalid { what, detail } => write!(f, "{what}: {detail}"),
        }
    }
}

impl std::error::Error for WireError {}

/// A result of decoding.
pub type WireResult<T> = Result<T, WireError>;

/// A cursor over received bytes; every read checks the length.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// Reads `buf`, naming it `what` in errors.
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, what }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// The next `n` bytes.
    ///
    /// # Errors
    /// [`WireError::Short`] when fewer remain.
    pub fn bytes(&mut self, n: usize) -> WireResult<&'a [u8]> {
        if self.buf.len() < n {
            return Err(WireError::Short {
                what: self.what,
                need: n,
                got: self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> WireResult<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    /// A big-endian `u16`.
    ///
    /// # Errors
    /// [`WireError::Short`].
    pub fn u16(&mut self) -> WireResult<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// A big-endian `u32`.
    ///
    /// # Errors
    /// [`WireError::Short`].
    pub fn u32(&mut self) -> WireResult<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// A big-endian `u64`.
    ///
    /// # Errors
    /// [`WireError::Short`].
    pub fn u64(&mut self) -> WireResult<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A string prefixed by its `u32` length, at most `max` bytes, valid UTF-8.
    ///
    /// # Errors
    /// Short, too large, or not UTF-8.
    pub fn string32(&mut self, max: usize) -> WireResult<String> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(WireError::TooLarge {
                what: self.what,
                len: len as u64,
                max: max as u64,
            });
        }
        let bytes = self.bytes(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| WireError::Invalid {
            what: self.what,
            detail: "a string is not UTF-8".into(),
        })
    }

    /// The rest, as a (lossy) UTF-8 string: error messages of option and structured replies.
    pub fn rest_lossy(&mut self) -> String {
        let s = String::from_utf8_lossy(self.buf).into_owned();
        self.buf = &[];
        s
    }
}

/// The server's greeting: `NBDMAGIC`, `IHAVEOPT`, handshake flags.
pub fn encode_greeting(flags: u16) -> [u8; GREETING_LEN] {
    let mut out = [0u8; GREETING_LEN];
    out[..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    out[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    out[16..].copy_from_slice(&flags.to_be_bytes());
    out
}

/// Decodes the server's greeting into its handshake flags. Oldstyle servers (no `IHAVEOPT`)
/// and servers without fixed newstyle are refused.
///
/// # Errors
/// Wrong magics, or no [`handshake::FIXED_NEWSTYLE`].
pub fn decode_greeting(buf: &[u8; GREETING_LEN]) -> WireResult<u16> {
    let mut r = Reader::new(buf, "server greeting");
    let magic = r.u64()?;
    if magic != NBDMAGIC {
        return Err(WireError::BadMagic {
            what: "server greeting",
            got: magic,
        });
    }
    let opt = r.u64()?;
    if opt != IHAVEOPT {
        return Err(WireError::Invalid {
            what: "server greeting",
            detail: format!("not a newstyle server (magic {opt:#x}; oldstyle is not supported)"),
        });
    }
    let flags = r.u16()?;
    if flags & handshake::FIXED_NEWSTYLE == 0 {
        return Err(WireError::Invalid {
            what: "server greeting",
            detail: "the server does not offer fixed newstyle negotiation".into(),
        });
    }
    Ok(flags)
}

/// An option header followed by its data.
pub fn encode_option(option: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(OPTION_HEADER_LEN + data.len());
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// An option header received by a server: the option and the length of its data.
///
/// # Errors
/// Wrong magic, or data longer than `max_len`.
pub fn decode_option_header(buf: &[u8; OPTION_HEADER_LEN], max_len: u32) -> WireResult<(u32, u32)> {
    let mut r = Reader::new(buf, "option");
    let magic = r.u64()?;
    if magic != IHAVEOPT {
        return Err(WireError::BadMagic {
            what: "option",
            got: magic,
        });
    }
    let option = r.u32()?;
    let len = r.u32()?;
    if len > max_len {
        return Err(WireError::TooLarge {
            what: "option",
            len: len.into(),
            max: max_len.into(),
        });
    }
    Ok((option, len))
}

/// An option reply header followed by its data.
pub fn encode_option_reply(option: u32, reply: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(OPTION_REPLY_HEADER_LEN + data.len());
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// An option reply header received by a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReply {
    /// The option this replies to.
    pub option: u32,
    /// The reply type ([`rep`]).
    pub reply: u32,
    /// Bytes of data that follow.
    pub len: u32,
}

impl OptionReply {
    /// Whether this is an error reply.
    pub fn is_error(&self) -> bool {
        self.reply & rep::ERR_BIT != 0
    }
}

/// Decodes an option reply header, checking that it answers `expected` and carries at most
/// `max_len` bytes.
///
/// # Errors
/// Wrong magic, another option, or too long.
pub fn decode_option_reply(
    buf: &[u8; OPTION_REPLY_HEADER_LEN],
    expected: u32,
    max_len: u32,
) -> WireResult<OptionReply> {
    let mut r = Reader::new(buf, "option reply");
    let magic = r.u64()?;
    if magic != OPTION_REPLY_MAGIC {
        return Err(WireError::BadMagic {
            what: "option reply",
            got: magic,
        });
    }
    let reply = OptionReply {
        option: r.u32()?,
        reply: r.u32()?,
        len: r.u32()?,
    };
    if reply.option != expected {
        return Err(WireError::Invalid {
            what: "option reply",
            detail: format!("answers option {} where {expected} was asked", reply.option),
        });
    }
    if reply.len > max_len {
        return Err(WireError::TooLarge {
            what: "option reply",
            len: reply.len.into(),
            max: max_len.into(),
        });
    }
    Ok(reply)
}

/// The name of an option reply error, for messages.
pub fn rep_error_name(reply: u32) -> &'static str {
    match reply {
        rep::ERR_UNSUP => "unsupported",
        rep::ERR_POLICY => "refused by policy",
        rep::ERR_INVALID => "invalid",
        rep::ERR_PLATFORM => "not supported on this platform",
        rep::ERR_TLS_REQD => "TLS required",
        rep::ERR_UNKNOWN => "unknown export",
        rep::ERR_SHUTDOWN => "server shutting down",
        rep::ERR_BLOCK_SIZE_REQD => "block size negotiation required",
        rep::ERR_TOO_BIG => "request too big",
        rep::ERR_EXT_HEADER_REQD => "extended headers required",
        _ => "error",
    }
}

/// The data of `NBD_OPT_GO`/`NBD_OPT_INFO`: export name and the information requested.
pub fn encode_go(export: &str, infos: &[u16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(6 + export.len() + 2 * infos.len());
    out.extend_from_slice(&(export.len() as u32).to_be_bytes());
    out.extend_from_slice(export.as_bytes());
    out.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        out.extend_from_slice(&i.to_be_bytes());
    }
    out
}

/// Decodes the data of `NBD_OPT_GO`/`NBD_OPT_INFO` (server side).
///
/// # Errors
/// Malformed data or a name over `max_name` bytes.
pub fn decode_go(data: &[u8], max_name: usize) -> WireResult<(String, Vec<u16>)> {
    let mut r = Reader::new(data, "NBD_OPT_GO");
    let name = r.string32(max_name)?;
    let n = r.u16()? as usize;
    let mut infos = Vec::with_capacity(n.min(16));
    for _ in 0..n {
        infos.push(r.u16()?);
    }
    if r.remaining() != 0 {
        return Err(WireError::Invalid {
            what: "NBD_OPT_GO",
            detail: "trailing bytes".into(),
        });
    }
    Ok((name, infos))
}

/// The data of `NBD_OPT_SET_META_CONTEXT`/`NBD_OPT_LIST_META_CONTEXT`.
pub fn encode_meta_context(export: &str, queries: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(export.len() as u32).to_be_bytes());
    out.extend_from_slice(export.as_bytes());
    out.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        out.extend_from_slice(&(q.len() as u32).to_be_bytes());
        out.extend_from_slice(q.as_bytes());
    }
    out
}

/// Decodes the data of `NBD_OPT_SET_META_CONTEXT` (server side): export name and queries, at
/// most `max_queries` of them.
///
/// # Errors
/// Malformed data or limits exceeded.
pub fn decode_meta_context(
    data: &[u8],
    max_name: usize,
    max_queries: usize,
) -> WireResult<(String, Vec<String>)> {
    let mut r = Reader::new(data, "NBD_OPT_SET_META_CONTEXT");
    let name = r.string32(max_name)?;
    let n = r.u32()? as usize;
    if n > max_queries {
        return Err(WireError::TooLarge {
            what: "NBD_OPT_SET_META_CONTEXT",
            len: n as u64,
            max: max_queries as u64,
        });
    }
    let mut queries = Vec::with_capacity(n);
    for _ in 0..n {
        queries.push(r.string32(max_name)?);
    }
    if r.remaining() != 0 {
        return Err(WireError::Invalid {
            what: "NBD_OPT_SET_META_CONTEXT",
            detail: "trailing bytes".into(),
        });
    }
    Ok((name, queries))
}

/// The data of an `NBD_REP_META_CONTEXT` reply: the server-assigned id and the context name.
pub fn encode_meta_context_reply(id: u32, name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + name.len());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out
}

/// Decodes an `NBD_REP_META_CONTEXT` reply's data.
///
/// # Errors
/// Short, or the name is not UTF-8.
pub fn decode_meta_context_reply(data: &[u8]) -> WireResult<(u32, String)> {
    let mut r = Reader::new(data, "NBD_REP_META_CONTEXT");
    let id = r.u32()?;
    let name = std::str::from_utf8(r.bytes(r.remaining())?)
        .map_err(|_| WireError::Invalid {
            what: "NBD_REP_META_CONTEXT",
            detail: "the context name is not UTF-8".into(),
        })?
        .to_owned();
    Ok((id, name))
}

/// `NBD_INFO_EXPORT`: size and transmission flags.
pub fn encode_info_export(size: u64, flags: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    out.extend_from_slice(&info::EXPORT.to_be_bytes());
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out
}

/// `NBD_INFO_BLOCK_SIZE`: minimum, preferred and maximum block sizes.
pub fn encode_info_block_size(min: u32, preferred: u32, max: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(14);
    out.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
    out.extend_from_slice(&min.to_be_bytes());
    out.extend_from_slice(&preferred.to_be_bytes());
    out.extend_from_slice(&max.to_be_bytes());
    out
}

/// An `NBD_REP_INFO` reply's data, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Info {
    /// Export size and transmission flags.
    Export { size: u64, flags: u16 },
    /// Block size constraints.
    BlockSize { min: u32, preferred: u32, max: u32 },
    /// Information this codec does not interpret (name, description, future types).
    Other(u16),
}

/// Decodes an `NBD_REP_INFO` reply's data.
///
/// # Errors
/// Short or wrongly sized data.
pub fn decode_info(data: &[u8]) -> WireResult<Info> {
    let mut r = Reader::new(data, "NBD_REP_INFO");
    let kind = r.u16()?;
    let info = match kind {
        info::EXPORT => Info::Export {
            size: r.u64()?,
            flags: r.u16()?,
        },
        info::BLOCK_SIZE => Info::BlockSize {
            min: r.u32()?,
            preferred: r.u32()?,
            max: r.u32()?,
        },
        other => return Ok(Info::Other(other)),
    };
    if r.remaining() != 0 {
        return Err(WireError::Invalid {
            what: "NBD_REP_INFO",
            detail: format!("{} trailing bytes", r.remaining()),
        });
    }
    Ok(info)
}

/// A transmission request (the header; a write's data follows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags ([`cmd_flags`]).
    pub flags: u16,
    /// The command ([`cmd`]).
    pub command: u16,
    /// The client's handle (cookie), echoed in the reply.
    pub handle: u64,
    /// Byte offset.
    pub offset: u64,
    /// Length in bytes.
    pub length: u32,
}

impl Request {
    /// The request's 28 bytes.
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut out = [0u8; REQUEST_LEN];
        out[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        out[4..6].copy_from_slice(&self.flags.to_be_bytes());
        out[6..8].copy_from_slice(&self.command.to_be_bytes());
        out[8..16].copy_from_slice(&self.handle.to_be_bytes());
        out[16..24].copy_from_slice(&self.offset.to_be_bytes());
        out[24..].copy_from_slice(&self.length.to_be_bytes());
        out
    }

    /// Decodes a request header (server side).
    ///
    /// # Errors
    /// Wrong magic.
    pub fn decode(buf: &[u8; REQUEST_LEN]) -> WireResult<Request> {
        let mut r = Reader::new(buf, "request");
        let magic = r.u32()?;
        if magic != REQUEST_MAGIC {
            return Err(WireError::BadMagic {
                what: "request",
                got: magic.into(),
            });
        }
        Ok(Request {
            flags: r.u16()?,
            command: r.u16()?,
            handle: r.u64()?,
            offset: r.u64()?,
            length: r.u32()?,
        })
    }
}

/// A simple reply header (a read's data follows a successful one).
pub fn encode_simple_reply(error: u32, handle: u64) -> [u8; SIMPLE_REPLY_LEN] {
    let mut out = [0u8; SIMPLE_REPLY_LEN];
    out[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.to_be_bytes());
    out[8..].copy_from_slice(&handle.to_be_bytes());
    out
}

/// A structured reply chunk header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    /// [`reply_flags`].
    pub flags: u16,
    /// [`reply_type`].
    pub kind: u16,
    /// The request's handle.
    pub handle: u64,
    /// Bytes of payload that follow.
    pub length: u32,
}

impl ChunkHeader {
    /// The header's 20 bytes.
    pub fn encode(&self) -> [u8; STRUCTURED_REPLY_LEN] {
        let mut out = [0u8; STRUCTURED_REPLY_LEN];
        out[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        out[4..6].copy_from_slice(&self.flags.to_be_bytes());
        out[6..8].copy_from_slice(&self.kind.to_be_bytes());
        out[8..16].copy_from_slice(&self.handle.to_be_bytes());
        out[16..].copy_from_slice(&self.length.to_be_bytes());
        out
    }

    /// Whether this is the last chunk of its reply.
    pub fn done(&self) -> bool {
        self.flags & reply_flags::DONE != 0
    }
}

/// A reply header as a client reads it: simple or structured. Both start with a 4-byte magic;
/// read 16 bytes, decode, and for [`ReplyHeader::Structured`] read 4 more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyHeader {
    /// A simple reply: error and handle.
    Simple { error: u32, handle: u64 },
    /// The start of a structured reply chunk; its length is in the next 4 bytes
    /// ([`finish_structured`]).
    Structured { flags: u16, kind: u16, handle: u64 },
}

/// Decodes the first 16 bytes of any reply.
///
/// # Errors
/// A magic that is neither simple nor structured.
pub fn decode_reply_start(buf: &[u8; SIMPLE_REPLY_LEN]) -> WireResult<ReplyHeader> {
    let mut r = Reader::new(buf, "reply");
    let magic = r.u32()?;
    match magic {
        SIMPLE_REPLY_MAGIC => Ok(ReplyHeader::Simple {
            error: r.u32()?,
            handle: r.u64()?,
        }),
        STRUCTURED_REPLY_MAGIC => Ok(ReplyHeader::Structured {
            flags: r.u16()?,
            kind: r.u16()?,
            handle: r.u64()?,
        }),
        other => Err(WireError::BadMagic {
            what: "reply",
            got: other.into(),
        }),
    }
}

/// Completes a structured chunk header with its 4-byte length, refusing more than `max_len`.
///
/// # Errors
/// A payload longer than `max_len`.
pub fn finish_structured(
    flags: u16,
    kind: u16,
    handle: u64,
    len_bytes: [u8; 4],
    max_len: u32,
) -> WireResult<ChunkHeader> {
    let length = u32::from_be_bytes(len_bytes);
    if length > max_len {
        return Err(WireError::TooLarge {
            what: "structured reply",
            len: length.into(),
            max: max_len.into(),
        });
    }
    Ok(ChunkHeader {
        flags,
        kind,
        handle,
        length,
    })
}

/// One extent of a block status reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Bytes it covers.
    pub length: u32,
    /// Context-specific flags ([`alloc_flags`], [`dirty_flags`]).
    pub flags: u32,
}

/// The payload of an `NBD_REPLY_TYPE_BLOCK_STATUS` chunk.
pub fn encode_block_status(context: u32, extents: &[Extent]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 8 * extents.len());
    out.extend_from_slice(&context.to_be_bytes());
    for e in extents {
        out.extend_from_slice(&e.length.to_be_bytes());
        out.extend_from_slice(&e.flags.to_be_bytes());
    }
    out
}

/// Decodes an `NBD_REPLY_TYPE_BLOCK_STATUS` payload: the context id and at most `max_extents`
/// extents, none of length zero.
///
/// # Errors
/// A payload that is not 4 + 8·n bytes, too many extents, or an empty extent.
pub fn decode_block_status(payload: &[u8], max_extents: usize) -> WireResult<(u32, Vec<Extent>)> {
    if payload.len() < 12 || !(payload.len() - 4).is_multiple_of(8) {
        return Err(WireError::Invalid {
            what: "block status",
            detail: format!(
                "a payload of {} bytes is not 4 + 8·n with n ≥ 1",
                payload.len()
            ),
        });
    }
    let n = (payload.len() - 4) / 8;
    if n > max_extents {
        return Err(WireError::TooLarge {
            what: "block status",
            len: n as u64,
            max: max_extents as u64,
        });
    }
    let mut r = Reader::new(payload, "block status");
    let context = r.u32()?;
    let mut extents = Vec::with_capacity(n);
    for _ in 0..n {
        let e = Extent {
            length: r.u32()?,
            flags: r.u32()?,
        };
        if e.length == 0 {
            return Err(WireError::Invalid {
                what: "block status",
                detail: "an extent of length 0".into(),
            });
        }
        extents.push(e);
    }
    Ok((context, extents))
}

/// The payload of `NBD_REPLY_TYPE_ERROR`: error value and message.
pub fn encode_error_payload(error: u32, message: &str) -> Vec<u8> {
    let msg = &message.as_bytes()[..message.len().min(4096)];
    let mut out = Vec::with_capacity(6 + msg.len());
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

/// Decodes an `NBD_REPLY_TYPE_ERROR`/`ERROR_OFFSET` payload: error value and message.
///
/// # Errors
/// A message length beyond the payload.
pub fn decode_error_payload(payload: &[u8]) -> WireResult<(u32, String)> {
    let mut r = Reader::new(payload, "error reply");
    let error = r.u32()?;
    let len = r.u16()? as usize;
    let msg = String::from_utf8_lossy(r.bytes(len)?).into_owned();
    Ok((error, msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_round_trips_and_oldstyle_is_refused() {
        let g = encode_greeting(handshake::FIXED_NEWSTYLE | handshake::NO_ZEROES);
        assert_eq!(decode_greeting(&g), Ok(3));
        let mut old = g;
        old[8..16].copy_from_slice(&0x0000_4202_8186_1253u64.to_be_bytes());
        assert!(matches!(
            decode_greeting(&old),
            Err(WireError::Invalid { .. })
        ));
        let no_fixed = encode_greeting(0);
        assert!(decode_greeting(&no_fixed).is_err());
    }

    #[test]
    fn request_round_trips() {
        let req = Request {
            flags: cmd_flags::REQ_ONE,
            command: cmd::BLOCK_STATUS,
            handle: 0xdead_beef_0102_0304,
            offset: 1 << 40,
            length: 65536,
        };
        assert_eq!(Request::decode(&req.encode()), Ok(req));
        let mut bad = req.encode();
        bad[0] ^= 1;
        assert!(matches!(
            Request::decode(&bad),
            Err(WireError::BadMagic { .. })
        ));
    }

    #[test]
    fn go_and_meta_context_round_trip() {
        let data = encode_go("vm", &[info::BLOCK_SIZE]);
        assert_eq!(
            decode_go(&data, 4096),
            Ok(("vm".into(), vec![info::BLOCK_SIZE]))
        );
        let data = encode_meta_context("vm", &[BASE_ALLOCATION, "qemu:dirty-bitmap:b0"]);
        let (name, q) = decode_meta_context(&data, 4096, 8).expect("decodes");
        assert_eq!(name, "vm");
        assert_eq!(q, vec![BASE_ALLOCATION, "qemu:dirty-bitmap:b0"]);
        assert!(decode_meta_context(&data, 4096, 1).is_err());
        assert!(decode_go(&data[..3], 4096).is_err());
    }

    #[test]
    fn replies_decode_with_limits() {
        let simple = encode_simple_reply(errno::EIO, 7);
        assert_eq!(
            decode_reply_start(&simple),
            Ok(ReplyHeader::Simple {
                error: errno::EIO,
                handle: 7
            })
        );
        let h = ChunkHeader {
            flags: reply_flags::DONE,
            kind: reply_type::OFFSET_DATA,
            handle: 9,
            length: 1 << 20,
        };
        let bytes = h.encode();
        let mut start = [0u8; SIMPLE_REPLY_LEN];
        start.copy_from_slice(&bytes[..16]);
        let ReplyHeader::Structured {
            flags,
            kind,
            handle,
        } = decode_reply_start(&start).expect("structured")
        else {
            panic!("not structured")
        };
        let len = [bytes[16], bytes[17], bytes[18], bytes[19]];
        assert_eq!(finish_structured(flags, kind, handle, len, 1 << 20), Ok(h));
        assert!(finish_structured(flags, kind, handle, len, 4096).is_err());
    }

    #[test]
    fn block_status_is_bounded_and_rejects_empty_extents() {
        let ext = [
            Extent {
                length: 4096,
                flags: alloc_flags::HOLE | alloc_flags::ZERO,
            },
            Extent {
                length: 8192,
                flags: 0,
            },
        ];
        let p = encode_block_status(3, &ext);
        assert_eq!(decode_block_status(&p, 16), Ok((3, ext.to_vec())));
        assert!(decode_block_status(&p, 1).is_err());
        assert!(decode_block_status(&p[..p.len() - 1], 16).is_err());
        let zero = encode_block_status(
            3,
            &[Extent {
                length: 0,
                flags: 0,
            }],
        );
        assert!(decode_block_status(&zero, 16).is_err());
    }

    #[test]
    fn option_replies_check_the_option_and_length() {
        let r = encode_option_reply(opt::GO, rep::ERR_UNKNOWN, b"no such export");
        let mut head = [0u8; OPTION_REPLY_HEADER_LEN];
        head.copy_from_slice(&r[..OPTION_REPLY_HEADER_LEN]);
        let rep = decode_option_reply(&head, opt::GO, 1024).expect("decodes");
        assert!(rep.is_error());
        assert_eq!(rep_error_name(rep.reply), "unknown export");
        assert!(decode_option_reply(&head, opt::INFO, 1024).is_err());
        assert!(decode_option_reply(&head, opt::GO, 4).is_err());
        let info = encode_info_export(1 << 30, tflags::HAS_FLAGS | tflags::READ_ONLY);
        assert_eq!(
            decode_info(&info),
            Ok(Info::Export {
                size: 1 << 30,
                flags: 3
            })
        );
        let (e, m) =
            decode_error_payload(&encode_error_payload(errno::EIO, "bad block")).expect("decodes");
        assert_eq!((e, m.as_str()), (errno::EIO, "bad block"));
    }
}
