//! The encryption key of encrypted backups: a random 256-bit master key, kept in a key file
//! wrapped by a passphrase (argon2id, then AES-256-GCM) or raw (for automation), with a public
//! key id; everything else is derived from it with `blake3::derive_key`:
//!
//! - the key id (8 bytes, 16 hex digits: in every sealed frame and the manifest) and the
//!   fingerprint (32 bytes, what `key show` prints to compare two copies of a key);
//! - the chunk-id key: chunk ids of encrypted backups are `blake3::keyed_hash` of the plaintext
//!   under it, so the repository never sees a plaintext digest and cannot confirm a guess;
//! - the sealing key, from which each chunk's AES-256-GCM key is derived with its chunk id
//!   ([`MasterKey::chunk_key`]).
//!
//! The paper key ([`MasterKey::paper`], [`MasterKey::from_paper`]) is the raw key as hex groups
//! with a checksum, for disaster recovery: whoever holds it can read every backup of the key;
//! whoever loses every copy of the key can read none (nothing else can decrypt them).

use std::path::Path;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The environment variable a passphrase may come from (tests, automation).
pub const PASSPHRASE_ENV: &str = "SOURCE_MOVER_PASSPHRASE";

/// The environment variable a new passphrase may come from (`key change-passphrase`).
pub const NEW_PASSPHRASE_ENV: &str = "SOURCE_MOVER_NEW_PASSPHRASE";

const CONTEXT_ID: &str = "source-mover 2026-12 encryption key id v1";
const CONTEXT_FINGERPRINT: &str = "source-mover 2026-12 encryption key fingerprint v1";
const CONTEXT_CHUNK_ID: &str = "source-mover 2026-12 chunk id v1";
const CONTEXT_SEAL: &str = "source-mover 2026-12 chunk sealing v1";
const FORMAT: &str = "source-mover encryption key";

/// The argon2id cost of a new key file: 64 MiB, 3 passes, 1 lane (about 0.2 s).
const KDF_MEMORY_KIB: u32 = 64 * 1024;
const KDF_ITERATIONS: u32 = 3;

/// A master key and the keys derived from it.
pub struct MasterKey {
    secret: [u8; 32],
    id: [u8; 8],
    id_key: [u8; 32],
    seal_key: [u8; 32],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({})", self.id_hex())
    }
}

/// How a key file protects the key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Kdf {
    algorithm: String,
    memory_kib: u32,
    iterations: u32,
    parallelism: u32,
    salt: String,
}

/// The key file (JSON, mode 0600).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    format: String,
    version: u32,
    id: String,
    /// `None`: the key is stored raw in `key`.
    kdf: Option<Kdf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nonce: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    wrapped: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
}

fn hex(b: &[u8]) -> String {
    schema::sealed::hex(b)
}

fn unhex(s: &str, what: &str) -> Result<Vec<u8>> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return Err(Error::Invalid(format!("{what}: odd number of hex digits")));
    }
    (0..s.len() / 2)
        .map(|i| {
            s.get(2 * i..2 * i + 2)
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| Error::Invalid(format!("{what}: not hex")))
        })
        .collect()
}

fn random(buf: &mut [u8]) -> Result<()> {
    SystemRandom::new()
        .fill(buf)
        .map_err(|_| Error::Invalid("the system's random number generator failed".into()))
}

/// Fills `buf` with random bytes (nonces).
///
/// # Errors
/// When the system's generator fails.
pub fn fill_random(buf: &mut [u8]) -> Result<()> {
    random(buf)
}

impl MasterKey {
    /// The key of `secret`, with its derived keys.
    pub fn from_bytes(secret: [u8; 32]) -> MasterKey {
        let fp = blake3::derive_key(CONTEXT_ID, &secret);
        let mut id = [0u8; 8];
        id.copy_from_slice(&fp[..8]);
        MasterKey {
            secret,
            id,
            id_key: blake3::derive_key(CONTEXT_CHUNK_ID, &secret),
            seal_key: blake3::derive_key(CONTEXT_SEAL, &secret),
        }
    }

    /// A new random key.
    ///
    /// # Errors
    /// When the system's generator fails.
    pub fn generate() -> Result<MasterKey> {
        let mut s = [0u8; 32];
        random(&mut s)?;
        Ok(MasterKey::from_bytes(s))
    }

    /// The public key id (in sealed frames and manifests).
    pub fn id(&self) -> [u8; 8] {
        self.id
    }

    /// The key id as 16 hex digits.
    pub fn id_hex(&self) -> String {
        hex(&self.id)
    }

    /// The fingerprint: 64 hex digits in groups of four, the same for every copy of the key.
    pub fn fingerprint(&self) -> String {
        let fp = blake3::derive_key(CONTEXT_FINGERPRINT, &self.secret);
        group(&hex(&fp))
    }

    /// The chunk id of a plaintext block under this key.
    pub fn chunk_id(&self, data: &[u8]) -> schema::ChunkId {
        schema::ChunkId(*blake3::keyed_hash(&self.id_key, data).as_bytes())
    }

    /// The AES-256-GCM key of one chunk.
    pub(crate) fn chunk_key(&self, id: &schema::ChunkId) -> Result<LessSafeKey> {
        let k = blake3::keyed_hash(&self.seal_key, &id.0);
        aead_key(k.as_bytes())
    }

    /// The paper key: the raw key as 16 groups of four hex digits and a checksum group, for
    /// printing and keeping apart from the repository.
    pub fn paper(&self) -> String {
        let check = &blake3::hash(&self.secret).to_hex()[..8];
        format!("smk1-{}-{check}", group(&hex(&self.secret)))
    }

    /// A key back from its paper form (spaces, line breaks, dashes and case do not matter).
    ///
    /// # Errors
    /// Not a paper key, or a digit is wrong (the checksum does not match).
    pub fn from_paper(text: &str) -> Result<MasterKey> {
        let digits: String = text
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        let Some(rest) = digits.strip_prefix("smk1") else {
            return Err(Error::Refused(
                "not a paper key (it starts with smk1-)".into(),
            ));
        };
        if rest.len() != 72 {
            return Err(Error::Refused(format!(
                "a paper key has 72 hex digits after smk1-, this one {}",
                rest.len()
            )));
        }
        let raw = unhex(&rest[..64], "paper key")?;
        let mut secret = [0u8; 32];
        secret.copy_from_slice(&raw);
        if blake3::hash(&secret).to_hex()[..8] != rest[64..] {
            return Err(Error::Refused(
                "the paper key's checksum does not match: a digit is wrong".into(),
            ));
        }
        Ok(MasterKey::from_bytes(secret))
    }

    /// Writes the key to a new file `path` (mode 0600): wrapped by `passphrase`, or raw.
    ///
    /// # Errors
    /// The file exists already (a key is never overwritten by `create`), I/O errors.
    pub fn save_new(&self, path: &Path, passphrase: Option<&[u8]>) -> Result<()> {
        if path.exists() {
            return Err(Error::Refused(format!(
                "{} exists; a key file is never overwritten",
                path.display()
            )));
        }
        self.save(path, passphrase)
    }

    /// Writes the key to `path` (mode 0600, replacing it durably): wrapped by `passphrase`, or
    /// raw.
    ///
    /// # Errors
    /// I/O errors.
    pub fn save(&self, path: &Path, passphrase: Option<&[u8]>) -> Result<()> {
        let file = match passphrase {
            None => KeyFile {
                format: FORMAT.into(),
                version: 1,
                id: self.id_hex(),
                kdf: None,
                nonce: None,
                wrapped: None,
                key: Some(hex(&self.secret)),
            },
            Some(p) => {
                let mut salt = [0u8; 16];
                random(&mut salt)?;
                let kdf = Kdf {
                    algorithm: "argon2id".into(),
                    memory_kib: KDF_MEMORY_KIB,
                    iterations: KDF_ITERATIONS,
                    parallelism: 1,
                    salt: hex(&salt),
                };
                let kek = derive_kek(&kdf, p)?;
                let mut nonce = [0u8; 12];
                random(&mut nonce)?;
                let mut data = self.secret.to_vec();
                kek.seal_in_place_append_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(self.id_hex().as_bytes()),
                    &mut data,
                )
                .map_err(|_| Error::Invalid("wrapping the key failed".into()))?;
                KeyFile {
                    format: FORMAT.into(),
                    version: 1,
                    id: self.id_hex(),
                    kdf: Some(kdf),
                    nonce: Some(hex(&nonce)),
                    wrapped: Some(hex(&data)),
                    key: None,
                }
            }
        };
        let mut json =
            serde_json::to_vec_pretty(&file).map_err(|e| Error::Invalid(e.to_string()))?;
        json.push(b'\n');
        stdx::durable::write_with_mode(path, &json, Some(0o600))
            .map_err(|e| Error::io(path.display(), e))
    }

    /// Reads the key file `path`, unwrapping it with `passphrase` when it is wrapped.
    ///
    /// # Errors
    /// [`Error::Refused`] for a wrong or missing passphrase or a file that is not a key file;
    /// I/O errors.
    pub fn load(path: &Path, passphrase: Option<&[u8]>) -> Result<MasterKey> {
        let shown = path.display();
        let bytes = std::fs::read(path).map_err(|e| Error::io(format!("key file {shown}"), e))?;
        let f: KeyFile = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Refused(format!("{shown} is not a source-mover key file: {e}")))?;
        if f.format != FORMAT || f.version != 1 {
            return Err(Error::Refused(format!(
                "{shown} is not a version-1 source-mover key file"
            )));
        }
        let secret: Vec<u8> = match (&f.kdf, &f.key) {
            (None, Some(k)) => unhex(k, "key file")?,
            (Some(kdf), None) => {
                let Some(p) = passphrase else {
                    return Err(Error::Refused(format!(
                        "key file {shown} is protected by a passphrase: give --passphrase-file FILE or set {PASSPHRASE_ENV}"
                    )));
                };
                let kek = derive_kek(kdf, p)?;
                let nonce = unhex(f.nonce.as_deref().unwrap_or(""), "key file nonce")?;
                let nonce = Nonce::try_assume_unique_for_key(&nonce)
                    .map_err(|_| Error::Refused(format!("{shown}: bad nonce")))?;
                let mut data = unhex(f.wrapped.as_deref().unwrap_or(""), "wrapped key")?;
                kek.open_in_place(nonce, Aad::from(f.id.as_bytes()), &mut data)
                    .map_err(|_| {
                        Error::Refused(format!(
                            "wrong passphrase for key file {shown} (key {})",
                            f.id
                        ))
                    })?
                    .to_vec()
            }
            _ => {
                return Err(Error::Refused(format!(
                    "{shown}: neither a wrapped nor a raw key"
                )))
            }
        };
        let secret: [u8; 32] = secret
            .try_into()
            .map_err(|_| Error::Refused(format!("{shown}: the key is not 32 bytes")))?;
        let k = MasterKey::from_bytes(secret);
        if k.id_hex() != f.id {
            return Err(Error::Refused(format!(
                "{shown}: the key does not match the id {} the file names",
                f.id
            )));
        }
        Ok(k)
    }

    /// Whether the key file at `path` is wrapped by a passphrase.
    ///
    /// # Errors
    /// I/O errors, not a key file.
    pub fn is_wrapped(path: &Path) -> Result<bool> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path.display(), e))?;
        let f: KeyFile = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Refused(format!("{} is not a key file: {e}", path.display())))?;
        Ok(f.kdf.is_some())
    }
}

/// Groups hex digits by four, dash-separated.
fn group(h: &str) -> String {
    h.as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("-")
}

fn aead_key(k: &[u8; 32]) -> Result<LessSafeKey> {
    UnboundKey::new(&AES_256_GCM, k)
        .map(LessSafeKey::new)
        .map_err(|_| Error::Invalid("bad AES key".into()))
}

/// The key-encryption key of a passphrase: argon2id with the file's parameters (bounded, so a
/// made-up file cannot ask for unbounded memory).
fn derive_kek(kdf: &Kdf, passphrase: &[u8]) -> Result<LessSafeKey> {
    if kdf.algorithm != "argon2id"
        || kdf.memory_kib > 4 << 20
        || kdf.iterations > 100
        || kdf.parallelism > 16
    {
        return Err(Error::Refused(format!(
            "key file: unsupported key derivation {} (m={} KiB, t={}, p={})",
            kdf.algorithm, kdf.memory_kib, kdf.iterations, kdf.parallelism
        )));
    }
    let salt = unhex(&kdf.salt, "key file salt")?;
    let params = argon2::Params::new(kdf.memory_kib, kdf.iterations, kdf.parallelism, Some(32))
        .map_err(|e| Error::Refused(format!("key file: bad argon2id parameters: {e}")))?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = [0u8; 32];
    a.hash_password_into(passphrase, &salt, &mut out)
        .map_err(|e| Error::Refused(format!("key file: argon2id failed: {e}")))?;
    aead_key(&out)
}

/// A passphrase from `file` (its last line break dropped), else from the environment variable
/// `env`, else none.
///
/// # Errors
/// An unreadable or empty file.
pub fn passphrase(file: Option<&Path>, env: &str) -> Result<Option<Vec<u8>>> {
    let mut p = match file {
        Some(f) => std::fs::read(f)
            .map_err(|e| Error::io(format!("passphrase file {}", f.display()), e))?,
        None => match std::env::var_os(env) {
            Some(v) => v.into_encoded_bytes(),
            None => return Ok(None),
        },
    };
    if p.last() == Some(&b'\n') {
        p.pop();
        if p.last() == Some(&b'\r') {
            p.pop();
        }
    }
    if p.is_empty() {
        return Err(Error::Refused("the passphrase is empty".into()));
    }
    Ok(Some(p))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn key_files_round_trip_and_refuse_wrong_passphrases() {
        let dir = tempfile::tempdir().unwrap();
        let k = MasterKey::generate().unwrap();
        let (wrapped, raw) = (dir.path().join("w.key"), dir.path().join("r.key"));
        k.save_new(&wrapped, Some(b"correct horse")).unwrap();
        k.save_new(&raw, None).unwrap();
        assert!(k.save_new(&raw, None).is_err(), "never overwritten");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&wrapped).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&wrapped).unwrap();
        assert!(
            !text.contains(&hex(&k.secret)),
            "the wrapped file holds no raw key"
        );
        let back = MasterKey::load(&wrapped, Some(b"correct horse")).unwrap();
        assert_eq!(back.secret, k.secret);
        assert_eq!(MasterKey::load(&raw, None).unwrap().secret, k.secret);
        let wrong = MasterKey::load(&wrapped, Some(b"wrong")).unwrap_err();
        assert!(wrong.to_string().contains("wrong passphrase"), "{wrong}");
        let none = MasterKey::load(&wrapped, None).unwrap_err();
        assert!(none.to_string().contains(PASSPHRASE_ENV), "{none}");
        // Ids and derived keys differ per key; chunk ids are not plain blake3.
        let other = MasterKey::generate().unwrap();
        assert_ne!(k.id(), other.id());
        assert_ne!(k.chunk_id(b"x"), other.chunk_id(b"x"));
        assert_ne!(k.chunk_id(b"x"), schema::ChunkId::of(b"x"));
        assert_eq!(k.fingerprint().len(), 64 + 15);
    }

    #[test]
    fn paper_keys_round_trip_and_catch_a_wrong_digit() {
        let k = MasterKey::generate().unwrap();
        let p = k.paper();
        assert!(p.starts_with("smk1-"));
        let back =
            MasterKey::from_paper(&format!("  {}\n", p.to_uppercase().replace('-', " "))).unwrap();
        assert_eq!(back.secret, k.secret);
        let mut bad = p.clone().into_bytes();
        let i = 10;
        bad[i] = if bad[i] == b'0' { b'1' } else { b'0' };
        let e = MasterKey::from_paper(&String::from_utf8(bad).unwrap()).unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
        assert!(MasterKey::from_paper("hello").is_err());
    }
}
