//! The NBD wire protocol, as `doc/proto.md` of the NetworkBlockDevice project defines it: the
//! fixed newstyle handshake, options and their replies, transmission requests, simple and
//! structured replies.
//!
//! Pure codec: every function works on byte slices and never does I/O, so the mover's client
//! (blocking sockets) and the repository's export server (tokio) share it, and it is tested
//! without a peer. Decoders never trust a length from the wire: callers pass the most they
//! accept, and a larger length is [`WireError::TooLarge`].
//!
//! All integers are big-endian on the wire.

pub mod wire;

pub use wire::*;
