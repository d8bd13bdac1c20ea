//! Identifiers. Each kind of id is its own type so they cannot be mixed up, and each parses
//! strictly: anything that would need normalising is rejected rather than guessed at.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a textual id was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// A digest that is not `blake3:` followed by exactly 64 lowercase hex digits.
    #[error("digest must be 'blake3:' followed by 64 lowercase hex digits")]
    Digest,
    /// A session id that is not a hyphenated UUID.
    #[error("session id must be a UUID such as 123e4567-e89b-12d3-a456-426614174000")]
    Session,
    /// A backup id or disk name outside `[A-Za-z0-9._-]{1,128}`, or `.`/`..`.
    #[error("{0} must be 1-128 characters of [A-Za-z0-9._-] and not '.' or '..'")]
    Name(&'static str),
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Lowercase hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

/// Parses lowercase hex into exactly `N` bytes.
pub fn from_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        out[i] = (hex_val(pair[0])? << 4) | hex_val(pair[1])?;
    }
    Some(out)
}

/// The content address of a block: blake3 of its uncompressed bytes.
///
/// Text form `blake3:<64 lowercase hex>`; the all-zero id ([`ChunkId::HOLE`]) stands for a block of
/// zeros that is never stored.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The hole: a block that reads as zeros and is never stored.
    pub const HOLE: ChunkId = ChunkId([0; 32]);
    /// Prefix of the text form.
    pub const PREFIX: &'static str = "blake3:";

    /// The id of `data`.
    pub fn of(data: &[u8]) -> ChunkId {
        ChunkId(*blake3::hash(data).as_bytes())
    }

    /// Whether this is the hole id.
    pub fn is_hole(&self) -> bool {
        self.0 == [0; 32]
    }

    /// The 64 hex digits without prefix (used for file names).
    pub fn hex(&self) -> String {
        to_hex(&self.0)
    }

    /// Builds an id from the first 32 bytes of `raw`.
    pub fn from_slice(raw: &[u8]) -> Option<ChunkId> {
        raw.try_into().ok().map(ChunkId)
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", Self::PREFIX, self.hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for ChunkId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let hex = s.strip_prefix(Self::PREFIX).ok_or(IdError::Digest)?;
        from_hex::<32>(hex).map(ChunkId).ok_or(IdError::Digest)
    }
}

impl Serialize for ChunkId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ChunkId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A session id: a UUID chosen by the client, so that a lost response is harmless.
///
/// Parsed from the hyphenated form (either case); displayed in lowercase.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub [u8; 16]);

impl SessionId {
    /// A random (version 4) session id from 16 random bytes supplied by the caller.
    pub fn from_random(mut b: [u8; 16]) -> SessionId {
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        SessionId(b)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = to_hex(&self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for SessionId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let b = s.as_bytes();
        if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
            return Err(IdError::Session);
        }
        let hex: String = s
            .chars()
            .filter(|&c| c != '-')
            .collect::<String>()
            .to_ascii_lowercase();
        from_hex::<16>(&hex).map(SessionId).ok_or(IdError::Session)
    }
}

impl Serialize for SessionId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SessionId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Checks the URL-safe name rule shared by backup ids and disk names.
fn valid_name(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The validated text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                if valid_name(s) {
                    Ok($name(s.to_owned()))
                } else {
                    Err(IdError::Name($what))
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// A backup id, chosen by the server: `[A-Za-z0-9._-]{1,128}`, never `.` or `..`.
    BackupId,
    "backup id"
);
name_type!(
    /// A disk name inside a session or backup; appears in URLs, so it follows the backup-id rule.
    DiskName,
    "disk name"
);

/// The ids' OpenAPI schemas: strings with the patterns their parsers accept.
#[cfg(feature = "openapi")]
mod openapi {
    use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
    use utoipa::openapi::RefOr;

    fn string(pattern: &str, description: &str) -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(pattern))
            .description(Some(description))
            .into()
    }

    macro_rules! string_schema {
        ($ty:path, $pattern:literal, $description:literal) => {
            impl utoipa::PartialSchema for $ty {
                fn schema() -> RefOr<Schema> {
                    string($pattern, $description)
                }
            }
            impl utoipa::ToSchema for $ty {}
        };
    }

    string_schema!(
        super::ChunkId,
        "^blake3:[0-9a-f]{64}$",
        "A chunk id: blake3 of the uncompressed block."
    );
    string_schema!(
        super::SessionId,
        "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
        "A session id (a UUID, chosen by the client)."
    );
    string_schema!(
        super::BackupId,
        "^[A-Za-z0-9._-]{1,128}$",
        "A backup id, chosen by the server (never `.` or `..`)."
    );
    string_schema!(
        crate::fingerprint::Fingerprint,
        "^SHA256:[0-9a-f]{64}$",
        "The SHA-256 fingerprint of a TLS certificate."
    );
    string_schema!(
        super::DiskName,
        "^[A-Za-z0-9._-]{1,128}$",
        "A disk name (never `.` or `..`)."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_id_round_trips_and_rejects_variants() {
        let id = ChunkId::of(b"hello");
        let text = id.to_string();
        assert_eq!(text, format!("blake3:{}", blake3::hash(b"hello").to_hex()));
        assert_eq!(text.parse::<ChunkId>(), Ok(id));
        assert_eq!(serde_json::to_string(&id).ok(), Some(format!("\"{text}\"")));
        for bad in [
            text.to_uppercase(),
            text.replace("blake3:", "sha256:"),
            text[..text.len() - 1].to_string(),
            format!("{text}0"),
            text.replace("blake3:", ""),
            format!(" {text}"),
        ] {
            assert_eq!(bad.parse::<ChunkId>(), Err(IdError::Digest), "{bad}");
        }
        assert!(format!("blake3:{}", "0".repeat(64))
            .parse::<ChunkId>()
            .is_ok_and(|i| i.is_hole()));
    }

    #[test]
    fn session_id_parses_uuid_forms_only() {
        let s: SessionId = "123E4567-e89b-12d3-a456-426614174000"
            .parse()
            .expect("uuid");
        assert_eq!(s.to_string(), "123e4567-e89b-12d3-a456-426614174000");
        for bad in [
            "123e4567e89b12d3a456426614174000",
            "123e4567-e89b-12d3-a456-42661417400g",
            "../../etc/passwd-aaaaaaaaaaaaaaaaaaaaaaaa",
            "",
        ] {
            assert!(bad.parse::<SessionId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn names_reject_path_tricks() {
        for bad in [".", "..", "a/b", "a%2Fb", "", "a b", &"x".repeat(129), "é"] {
            assert!(bad.parse::<BackupId>().is_err(), "{bad:?}");
            assert!(bad.parse::<DiskName>().is_err(), "{bad:?}");
        }
        for good in ["disk0", "20261125T011305Z-3f9a", "a.b_c-d", "..."] {
            assert!(good.parse::<BackupId>().is_ok(), "{good}");
        }
    }
}
