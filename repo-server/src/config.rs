//! The server's configuration: one serde struct, parsed first, then turned into runtime objects.
//!
//! Every field has a default, so an empty file (or none at all) is a working configuration.
//! Sizes are human-readable (`16MiB`, `512 KiB`, `1GB`, or a plain number of bytes); durations
//! too (`30s`, `24h`). `config.example.toml` beside this crate documents every field.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Create sessions, upload, commit; read its own tenant's backups.
    Backup,
    /// Read its tenant's catalog and data.
    Reader,
    /// Everything, across tenants.
    Admin,
}

/// One bearer token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The secret as sent in `Authorization: Bearer ...` (at least 16 characters).
    pub token: String,
    /// Tenant the token acts for.
    pub tenant: String,
    /// What it may do.
    pub role: Role,
}

/// TLS certificate and key (PEM). With TLS, the port speaks HTTP/2 (ALPN `h2`) and HTTP/1.1.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain, PEM.
    pub cert: PathBuf,
    /// Private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Defensive limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest uncompressed chunk accepted (also the cap on decompression output).
    #[serde(deserialize_with = "size")]
    pub max_chunk_bytes: u64,
    /// Chunk body bytes being received or verified at once, across all clients.
    #[serde(deserialize_with = "size")]
    pub max_inflight_chunk_bytes: u64,
    /// Most digests in one find-missing request.
    pub max_find_missing: u64,
    /// Largest JSON body (session creation, commit).
    #[serde(deserialize_with = "size")]
    pub max_json_body: u64,
    /// Largest body of index records in one request.
    #[serde(deserialize_with = "size")]
    pub max_entries_body: u64,
    /// A request body that sends nothing for this long is cut with 408.
    #[serde(deserialize_with = "duration")]
    pub body_idle_timeout: Duration,
    /// An open session with no activity for this long expires (its pins are released).
    #[serde(deserialize_with = "duration")]
    pub session_idle_ttl: Duration,
    /// Connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// On SIGINT/SIGTERM, how long open requests may take to finish.
    #[serde(deserialize_with = "duration")]
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_chunk_bytes: 16 << 20,
            max_inflight_chunk_bytes: 512 << 20,
            max_find_missing: 65_536,
            max_json_body: 4 << 20,
            max_entries_body: 64 << 20,
            body_idle_timeout: Duration::from_secs(60),
            session_idle_ttl: Duration::from_secs(86_400),
            max_connections: 1024,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// HTTP/2 settings. The defaults fill a LAN and a moderately long WAN link with 1 MiB chunks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http2Config {
    /// Initial flow-control window per stream.
    #[serde(deserialize_with = "size")]
    pub stream_window: u64,
    /// Initial flow-control window per connection.
    #[serde(deserialize_with = "size")]
    pub connection_window: u64,
    /// Streams a client may have open at once on one connection.
    pub max_concurrent_streams: u32,
    /// Largest HTTP/2 frame the server accepts (16 KiB to 16 MiB - 1).
    #[serde(deserialize_with = "size")]
    pub max_frame_size: u64,
}

impl Default for Http2Config {
    fn default() -> Self {
        Http2Config {
            stream_window: 8 << 20,
            connection_window: 32 << 20,
            max_concurrent_streams: 256,
            max_frame_size: 1 << 20,
        }
    }
}

/// Chunk store settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// zstd level the server uses for raw (`application/octet-stream`) uploads.
    pub raw_upload_zstd_level: i32,
    /// GC never removes a chunk touched less than this long before the oldest open session began.
    #[serde(deserialize_with = "duration")]
    pub gc_margin: Duration,
    /// Stored bytes per second verify reads at most, so it leaves the disks to backups (none:
    /// as fast as it can).
    #[serde(deserialize_with = "opt_size")]
    pub verify_rate: Option<u64>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            raw_upload_zstd_level: 3,
            gc_margin: Duration::from_secs(3600),
            verify_rate: None,
        }
    }
}

/// Retention: GFS policies per source, applied by `POST /v1/admin/prune`, and the
/// immutability window.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Backups younger than this cannot be deleted by anyone, admins included; prune skips them.
    #[serde(deserialize_with = "opt_duration")]
    pub min_age: Option<Duration>,
    /// How often the server applies the policies by itself (none: only `POST /v1/admin/prune`).
    #[serde(deserialize_with = "opt_duration")]
    pub schedule: Option<Duration>,
    /// Policy of sources without their own (none: such sources are never pruned).
    pub default: Option<schema::retention::Policy>,
    /// Policies by source name.
    pub sources: std::collections::BTreeMap<String, schema::retention::Policy>,
}

/// Limits of one tenant.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantConfig {
    /// Chunk bytes per second the tenant may upload, across all its clients (none: unlimited).
    #[serde(deserialize_with = "opt_size")]
    pub ingest_rate: Option<u64>,
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Data directory: chunks, indexes, catalog.
    pub data: PathBuf,
    /// Bearer tokens. When empty, an admin token is generated into `DATA/admin.token`.
    pub tokens: Vec<TokenConfig>,
    /// Whether `/metrics` needs a token (any role).
    pub metrics_need_token: bool,
    /// TLS; absent means plain HTTP (h2c and HTTP/1.1).
    pub tls: Option<TlsConfig>,
    /// Limits.
    pub limits: Limits,
    /// HTTP/2 settings.
    pub http2: Http2Config,
    /// Chunk store settings.
    pub store: StoreConfig,
    /// Per-tenant limits, keyed by tenant name.
    pub tenants: std::collections::BTreeMap<String, TenantConfig>,
    /// Retention policies and the immutability window.
    pub retention: RetentionConfig,
    /// The SMB share that holds the data (the `gateway` only; `repo-server` refuses it).
    pub share: Option<ShareConfig>,
    /// Instant recovery: committed backups' disks served read-only over NBD.
    pub nbd: NbdConfig,
}

/// `[nbd]`: committed backups' disks served read-only as NBD exports (instant recovery). Off
/// unless `listen` is set. Exports are created over the API and live in memory: a restart ends
/// them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NbdConfig {
    /// Address the NBD server listens on (none: no NBD server, and creating an export is refused).
    pub listen: Option<SocketAddr>,
    /// `host:port` put in the URIs of new exports (none: the bound listen address).
    pub advertise: Option<String>,
    /// Lifetime of an export, and the most a request may ask for.
    #[serde(deserialize_with = "duration")]
    pub ttl: Duration,
    /// Exports open at once, across all tenants.
    pub max_exports: usize,
    /// NBD connections served at once; further ones are closed at once.
    pub max_connections: usize,
    /// Largest read (and block status range) one request may ask for.
    #[serde(deserialize_with = "size")]
    pub max_request: u64,
    /// Bytes of read replies being prepared or sent at once, across all connections.
    #[serde(deserialize_with = "size")]
    pub max_inflight: u64,
    /// Decoded, verified blocks kept in memory for repeated reads.
    #[serde(deserialize_with = "size")]
    pub cache: u64,
    /// A client that has not finished negotiating after this long is disconnected.
    #[serde(deserialize_with = "duration")]
    pub handshake_timeout: Duration,
    /// A connection that sends no request for this long is closed.
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
}

impl Default for NbdConfig {
    fn default() -> Self {
        NbdConfig {
            listen: None,
            advertise: None,
            ttl: Duration::from_secs(3600),
            max_exports: 256,
            max_connections: 64,
            max_request: 32 << 20,
            max_inflight: 256 << 20,
            cache: 64 << 20,
            handshake_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(3600),
        }
    }
}

/// `[share]`: where the gateway keeps a repository's data (chunks, indexes, manifests).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareConfig {
    /// File server, `host` or `host:port` (port 445 by default).
    pub server: String,
    /// Share name.
    pub share: String,
    /// Directory inside the share that holds the repository (created; empty: the share's root).
    #[serde(default)]
    pub path: String,
    /// User name.
    pub user: String,
    /// Password; or give `credentials_file`.
    #[serde(default)]
    pub password: Option<String>,
    /// File whose first line is the password (kept out of the config file).
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// SMB sessions to the server, used concurrently (one request at a time each). SMB3
    /// signing is always used.
    #[serde(default = "default_share_connections")]
    pub connections: usize,
    /// Length of the gateway's lease on the repository directory (`gateway.lock`, at least
    /// 3 s): renewed every third of it; the gateway stops writing and deleting when it has not
    /// confirmed the lease for two thirds of it; another gateway may take over this long after
    /// a crash.
    #[serde(default = "default_share_lease", deserialize_with = "duration")]
    pub lease: Duration,
}

fn default_share_connections() -> usize {
    4
}

fn default_share_lease() -> Duration {
    Duration::from_secs(60)
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data: PathBuf::from("./repo-data"),
            tokens: Vec::new(),
            metrics_need_token: false,
            tls: None,
            limits: Limits::default(),
            http2: Http2Config::default(),
            store: StoreConfig::default(),
            tenants: std::collections::BTreeMap::new(),
            retention: RetentionConfig::default(),
            share: None,
            nbd: NbdConfig::default(),
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config {path}: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// What is wrong, with line and column.
        message: String,
    },
    /// A value out of its range.
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// The file at `path` (read and validated), or the defaults without one.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and what is wrong.
    pub fn load(path: Option<&std::path::Path>) -> Result<Config, ConfigError> {
        path.map_or_else(|| Ok(Config::default()), Config::from_file)
    }

    /// Reads and validates a TOML file.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and what is wrong.
    pub fn from_file(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let cfg: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks ranges that serde cannot express.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        for t in &self.tokens {
            if t.token.len() < 16 || t.token.bytes().any(|c| !c.is_ascii_graphic()) {
                return bad("tokens: each token must be at least 16 printable characters");
            }
            if t.tenant.is_empty() || t.tenant.bytes().any(|c| c.is_ascii_control()) {
                return bad("tokens: tenant must be non-empty without control characters");
            }
        }
        let l = &self.limits;
        if l.max_chunk_bytes == 0 || l.max_chunk_bytes > (1 << 30) {
            return bad("limits.max_chunk_bytes must be between 1 byte and 1 GiB");
        }
        if l.max_inflight_chunk_bytes < l.max_chunk_bytes {
            return bad("limits.max_inflight_chunk_bytes must be at least limits.max_chunk_bytes");
        }
        if l.max_find_missing == 0 || l.max_connections == 0 {
            return bad("limits.max_find_missing and limits.max_connections must be positive");
        }
        let h = &self.http2;
        if !(16_384..=16_777_215).contains(&h.max_frame_size) {
            return bad("http2.max_frame_size must be between 16KiB and 16MiB-1");
        }
        if h.stream_window > u64::from(u32::MAX >> 1)
            || h.connection_window > u64::from(u32::MAX >> 1)
        {
            return bad("http2 windows must be below 2GiB");
        }
        if !(1..=22).contains(&self.store.raw_upload_zstd_level) {
            return bad("store.raw_upload_zstd_level must be between 1 and 22");
        }
        if self.store.verify_rate == Some(0) {
            return bad("store.verify_rate must be above 0 (leave it out for no limit)");
        }
        let n = &self.nbd;
        if !(4096..=(64 << 20)).contains(&n.max_request) {
            return bad("nbd.max_request must be between 4KiB and 64MiB");
        }
        if n.max_inflight < n.max_request {
            return bad("nbd.max_inflight must be at least nbd.max_request");
        }
        if n.ttl < Duration::from_secs(1) || n.max_exports == 0 || n.max_connections == 0 {
            return bad(
                "nbd.ttl must be at least 1s, nbd.max_exports and nbd.max_connections positive",
            );
        }
        Ok(())
    }
}

/// Parses `16MiB`, `512 KiB`, `1GB`, `4096` into bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "kb" => 1000,
        "m" | "mib" => 1 << 20,
        "mb" => 1_000_000,
        "g" | "gib" => 1 << 30,
        "gb" => 1_000_000_000,
        "t" | "tib" => 1 << 40,
        "tb" => 1_000_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeOrText {
    Num(u64),
    Text(String),
}

fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match SizeOrText::deserialize(d)? {
        SizeOrText::Num(n) => Ok(n),
        SizeOrText::Text(t) => parse_size(&t)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid size {t:?} (try \"16MiB\")"))),
    }
}

fn opt_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    size(d).map(Some)
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let t = String::deserialize(d)?;
    humantime::parse_duration(&t)
        .map_err(|e| serde::de::Error::custom(format!("invalid duration {t:?} ({e}; try \"30s\")")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("16MiB"), Some(16 << 20));
        assert_eq!(parse_size("512 KiB"), Some(512 << 10));
        assert_eq!(parse_size("1GB"), Some(1_000_000_000));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("99999999999TiB"), None);
    }

    #[test]
    fn example_config_parses_and_unknown_fields_fail() {
        let text = include_str!("../config.example.toml");
        let cfg: Config = toml::from_str(text).expect("example config parses");
        cfg.validate().expect("example config is valid");
        assert_eq!(cfg.nbd.listen, None, "NBD is off by default");
        assert_eq!(cfg.nbd.ttl, Duration::from_secs(3600));
        let on: Config = toml::from_str(&text.replace(
            "# listen = \"127.0.0.1:10809\"",
            "listen = \"127.0.0.1:10809\"",
        ))
        .expect("example config with NBD on parses");
        assert_eq!(
            on.nbd.listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 10809)))
        );
        on.validate().expect("valid");
        assert!(toml::from_str::<Config>("listen = \"127.0.0.1:1\"\nlisten_typo = 1\n").is_err());
        assert!(toml::from_str::<Config>("[limits]\nmax_chunk_bytes = \"huge\"\n").is_err());
    }
}
