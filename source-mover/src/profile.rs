//! Presets of the backup's tuning: [`Profile::LAN`] (the default) and [`Profile::WAN`] (smaller
//! blocks, stronger compression, more streams and connections for long fat links). Explicit
//! options override the preset's values.

/// The tuning a `--profile` stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Profile {
    /// Block size in bytes.
    pub block_size: u32,
    /// zstd level of uploaded chunks.
    pub zstd_level: i32,
    /// Concurrent chunk uploads (HTTP/2 streams).
    pub streams: usize,
    /// HTTP/2 connections, used round-robin.
    pub connections: usize,
}

impl Profile {
    /// `lan`: 1M blocks, zstd 1, 32 streams, 1 connection. zstd 1 rather than 3 was measured
    /// (bench/RESULTS.md, 2026-12-03): the full backup's wall −22 % and CPU −30 %, the
    /// repository +10 % and still below 0.8 × the smallest peer's.
    pub const LAN: Profile = Profile {
        block_size: 1 << 20,
        zstd_level: 1,
        streams: 32,
        connections: 1,
    };

    /// `wan`: 256K blocks, zstd 6, 64 streams, 4 connections.
    pub const WAN: Profile = Profile {
        block_size: 256 << 10,
        zstd_level: 6,
        streams: 64,
        connections: 4,
    };

    /// The profile called `name` (`lan` or `wan`).
    pub fn named(name: &str) -> Option<Profile> {
        match name {
            "lan" => Some(Profile::LAN),
            "wan" => Some(Profile::WAN),
            _ => None,
        }
    }
}

impl Default for Profile {
    fn default() -> Profile {
        Profile::LAN
    }
}

/// Where the resumable journal is kept when `--state-dir` is not given:
/// `$XDG_STATE_HOME/source-mover`, else `$HOME/.local/state/source-mover`, else
/// `./source-mover`. The caller passes the environment's values (the library reads none).
pub fn default_state_dir(
    xdg_state_home: Option<std::path::PathBuf>,
    home: Option<std::path::PathBuf>,
) -> std::path::PathBuf {
    xdg_state_home
        .or_else(|| home.map(|h| h.join(".local/state")))
        .unwrap_or_else(|| std::path::PathBuf::from("."))
        .join("source-mover")
}
