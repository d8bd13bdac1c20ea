//! Request and response bodies of the repository HTTP API, version 1 (PROTOCOL.md).
//!
//! Request bodies deny unknown fields, so a misspelt field is a clear 422 instead of a silently
//! ignored setting.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{BackupId, ChunkId, DiskName};

/// `GET /v1/capabilities`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Capabilities {
    /// Protocol version.
    pub api: u32,
    /// Digest algorithm of chunk ids.
    pub digest: String,
    /// Accepted chunk encodings.
    pub compression: Vec<String>,
    /// Block sizes a session may use.
    pub block_sizes: Vec<u32>,
    /// Largest uncompressed chunk accepted.
    pub max_chunk_bytes: u64,
    /// Most digests in one find-missing request.
    pub max_find_missing: u64,
    /// Seconds of inactivity after which an open session expires.
    pub session_idle_ttl_s: u64,
    /// Which store keeps the data (`local` for repo-server).
    pub store: String,
    /// The SHA-256 fingerprint of the server's TLS certificate, when it serves TLS: what
    /// `source-mover --fingerprint` pins for a self-signed repository. Absent over plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_fingerprint: Option<crate::fingerprint::Fingerprint>,
}

/// One disk of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    /// Name, unique within the session.
    pub name: DiskName,
    /// Size in bytes (need not be a multiple of the block size).
    pub size: u64,
    /// Block size in bytes, one of [`crate::BLOCK_SIZES`].
    pub block_size: u32,
}

impl DiskSpec {
    /// Number of blocks, the last one possibly partial.
    pub fn blocks(&self) -> u64 {
        self.size.div_ceil(u64::from(self.block_size))
    }
}

/// `PUT /v1/sessions/{uuid}` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// Name of the backed-up source (a VM, a host).
    pub source: String,
    /// Backup this one is an incremental of.
    #[serde(default)]
    pub base: Option<BackupId>,
    /// Disks of the source.
    pub disks: Vec<DiskSpec>,
    /// Free-form labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Session state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    /// Accepting chunks and records.
    Open,
    /// Committed into a backup.
    Committed,
    /// Deleted by the client or expired.
    Aborted,
}

/// Per-disk progress of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DiskProgress {
    /// Records held.
    pub entries: u64,
    /// blake3 over all record bytes in order, hex.
    pub records_blake3: String,
}

/// `GET /v1/sessions/{uuid}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionStatus {
    /// Session id.
    pub id: String,
    /// State.
    pub state: SessionState,
    /// Source name.
    pub source: String,
    /// Base backup.
    pub base: Option<BackupId>,
    /// Progress per disk.
    pub disks: BTreeMap<String, DiskProgress>,
    /// Chunks pinned to the session (found present or uploaded).
    pub chunks_pinned: u64,
    /// Chunk body bytes received.
    pub bytes_received: u64,
    /// The backup, once committed.
    pub backup_id: Option<BackupId>,
    /// When the session expires if idle (RFC 3339).
    pub expires: String,
}

/// JSON form of find-missing, request and response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Digests {
    /// Chunk ids.
    pub digests: Vec<ChunkId>,
}

/// What the client says it holds for one disk at commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DiskCommit {
    /// Number of records sent.
    pub entries: u64,
    /// blake3 over all record bytes in order, hex.
    pub records_blake3: String,
}

/// Figures only the source side knows, reported at commit and kept in the manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ClientStats {
    /// Bytes read from the source disks.
    #[serde(default)]
    pub read_bytes: u64,
    /// Bytes not read or not sent, by reason (hole, zero, swap, free, excluded, unchanged).
    #[serde(default)]
    pub skipped_bytes: BTreeMap<String, u64>,
}

/// `POST /v1/sessions/{uuid}/commit` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CommitRequest {
    /// Per disk: count and checksum of records sent.
    pub disks: BTreeMap<String, DiskCommit>,
    /// Free-form metadata kept in the manifest.
    #[serde(default)]
    pub metadata: serde_json::Value,
    /// Source-side statistics (an extension of protocol v1; optional).
    #[serde(default)]
    pub client_stats: Option<ClientStats>,
    /// Guest file indexes uploaded as chunks of this session (an extension; optional).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub file_indexes: Vec<FileIndexRef>,
    /// Set by a mover that encrypts (an extension; optional): the key id and the sealed file
    /// index. Every chunk of such a backup is sealed (`schema::sealed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
}

/// How a backup is encrypted: which key, and where its sealed guest file index is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Encryption {
    /// The master key's public id (16 hex digits).
    pub key_id: String,
    /// The guest file indexes, encrypted: only a mover with the key reads them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_index: Option<SealedBlob>,
}

/// A blob stored as sealed chunks of the session: the concatenation of their plaintexts is
/// `bytes` bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SealedBlob {
    /// Plaintext length.
    pub bytes: u64,
    /// Its chunks, in order.
    pub chunks: Vec<ChunkId>,
}

/// A guest file index of one file system, stored as chunks: the concatenation of `chunks` is
/// `bytes` bytes of JSON lines, one [`crate::files::FileEntry`] each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct FileIndexRef {
    /// Disk holding the file system.
    pub disk: DiskName,
    /// Partition number in the disk's partition table (0: a file system on the whole disk).
    pub partition: u32,
    /// Entries in the index.
    pub files: u64,
    /// Length of the index.
    pub bytes: u64,
    /// Its chunks, in order.
    pub chunks: Vec<ChunkId>,
    /// The file system, as the mover's probe names it (`ext2/3/4`, `NTFS`); absent in indexes
    /// from before it was recorded. Paths on an `NTFS` index match case-insensitively.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs: Option<String>,
}

/// Commit answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CommitResponse {
    /// The new backup.
    pub backup_id: BackupId,
}

/// One disk of a committed backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ManifestDisk {
    /// Name.
    pub name: DiskName,
    /// Size in bytes.
    pub size: u64,
    /// Block size in bytes.
    pub block_size: u32,
    /// Number of blocks.
    pub blocks: u64,
    /// Blocks that are holes (read as zeros, not stored).
    pub holes: u64,
    /// blake3 of the index blob (one 32-byte id per block), hex.
    pub index_blake3: String,
}

/// Statistics of a backup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BackupStats {
    /// Sum of disk sizes.
    pub logical_bytes: u64,
    /// Bytes the mover read from the source (reported by the mover).
    pub read_bytes: u64,
    /// Bytes the mover skipped, by reason (reported by the mover).
    pub skipped_bytes: BTreeMap<String, u64>,
    /// Chunks this backup stored: for the first time, or replacing a copy verify found damaged.
    pub new_chunks: u64,
    /// Chunks this backup found already stored.
    pub reused_chunks: u64,
    /// Chunk body bytes received.
    pub sent_bytes: u64,
    /// Bytes newly stored in the chunk store.
    pub stored_bytes: u64,
    /// From session creation to commit.
    pub duration_ms: u64,
}

/// `GET /v1/backups/{id}`: the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Manifest {
    /// Backup id.
    pub id: BackupId,
    /// Tenant that owns it.
    pub tenant: String,
    /// Source name.
    pub source: String,
    /// Commit time, RFC 3339.
    pub created: String,
    /// Base backup, for an incremental.
    pub base: Option<BackupId>,
    /// Labels given at session creation.
    pub labels: BTreeMap<String, String>,
    /// Disks.
    pub disks: Vec<ManifestDisk>,
    /// Statistics.
    pub stats: BackupStats,
    /// Free-form metadata from the commit.
    pub metadata: serde_json::Value,
    /// The session that produced it.
    pub session: String,
    /// Guest file indexes (searchable through `/v1/search` and browsable through
    /// `/v1/backups/{id}/files`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub file_indexes: Vec<FileIndexRef>,
    /// Whether the backup is encrypted (its chunks sealed, its file index too).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub encrypted: bool,
    /// The key id and the sealed file index of an encrypted backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
}

impl Manifest {
    /// The key id of an encrypted backup.
    pub fn key_id(&self) -> Option<&str> {
        self.encryption.as_ref().map(|e| e.key_id.as_str())
    }

    /// Every chunk the manifest names outside its disk indexes: the guest file indexes' and the
    /// sealed file index's (GC roots, like the indexes).
    pub fn extra_chunks(&self) -> impl Iterator<Item = &ChunkId> {
        self.file_indexes.iter().flat_map(|r| &r.chunks).chain(
            self.encryption
                .iter()
                .flat_map(|e| e.file_index.iter().flat_map(|b| &b.chunks)),
        )
    }
}

/// `GET /v1/backups` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BackupList {
    /// Manifests, newest first.
    pub backups: Vec<Manifest>,
    /// Cursor for the next page.
    pub next: Option<String>,
}

/// One row of `GET /v1/sources`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SourceSummary {
    /// Source name.
    pub source: String,
    /// Tenant (shown to admins; sources of different tenants are listed apart).
    pub tenant: String,
    /// Number of backups.
    pub backups: u64,
    /// Time of the newest backup.
    pub last_backup: String,
    /// Sum of the backups' logical bytes.
    pub logical_bytes: u64,
}

/// `GET /v1/stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RepoStats {
    /// Chunks stored.
    pub chunks: u64,
    /// Bytes of stored chunk files.
    pub stored_bytes: u64,
    /// Logical bytes of all backups.
    pub logical_bytes: u64,
    /// logical ÷ stored.
    pub dedup_ratio: f64,
    /// Backups.
    pub backups: u64,
    /// Distinct sources.
    pub sources: u64,
    /// Open sessions.
    pub open_sessions: u64,
}

/// `POST /v1/admin/verify` body (optional; empty or `{}` verifies every chunk).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct VerifyRequest {
    /// Verify a random sample of about this fraction of the chunks, in (0, 1].
    pub fraction: Option<f64>,
    /// Only chunks not found sound by a verify in this many days (never verified included).
    pub not_verified_days: Option<f64>,
}

/// `POST /v1/admin/gc` and `/verify` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobStarted {
    /// Job id.
    pub job: String,
}

/// One entry of a guest file listing (`GET /v1/backups/{id}/files`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ListedFile {
    /// Absolute path inside the file system.
    pub path: String,
    /// Last component of the path.
    pub name: String,
    /// Kind.
    pub kind: crate::files::FileKind,
    /// Size in bytes.
    pub size: u64,
    /// `st_mode` in octal text (`100644`).
    pub mode: String,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, RFC 3339.
    pub mtime: String,
    /// Matched an exclude: listed, data not backed up.
    pub excluded: bool,
}

impl From<&crate::files::FileEntry> for ListedFile {
    /// An index entry as listings show it: mode in octal, mtime in RFC 3339.
    fn from(e: &crate::files::FileEntry) -> ListedFile {
        ListedFile {
            path: e.path.clone(),
            name: e.name().to_owned(),
            kind: e.kind,
            size: e.size,
            mode: format!("{:o}", e.mode),
            uid: e.uid,
            gid: e.gid,
            mtime: crate::time::rfc3339(e.mtime * 1000),
            excluded: e.excluded,
        }
    }
}

/// A guest directory listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FileListing {
    /// Backup.
    pub backup: BackupId,
    /// Disk.
    pub disk: DiskName,
    /// Partition number (0: a file system on the whole disk).
    pub partition: u32,
    /// The listed path.
    pub path: String,
    /// Entries, breadth first.
    pub entries: Vec<ListedFile>,
    /// More entries than the limit.
    pub truncated: bool,
}

/// One search result (`GET /v1/search`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SearchHit {
    /// Backup.
    pub backup: String,
    /// Its source.
    pub source: String,
    /// When the backup was committed, RFC 3339.
    pub created: String,
    /// Disk.
    pub disk: String,
    /// Partition number.
    pub partition: u32,
    /// Path of the file inside the file system.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, RFC 3339.
    pub mtime: String,
}

/// A page of search results, newest backup first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SearchResults {
    /// The tenant searched.
    pub tenant: String,
    /// This page.
    pub results: Vec<SearchHit>,
    /// Matches in all pages.
    pub total: usize,
    /// `after=` value of the next page, if there is one.
    pub next: Option<usize>,
    /// The scan stopped at its limit: there may be matches not counted.
    pub truncated: bool,
}

/// State of a background job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Still working.
    Running,
    /// Finished; `result` holds its report.
    Done,
    /// Stopped by an error; `error` says which.
    Failed,
}

/// Progress of a job: `done` of `total` units of its current phase.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobProgress {
    /// What the job is doing (`mark`, `sweep`, `chunks`, ...).
    pub phase: String,
    /// Units done.
    pub done: u64,
    /// Units in all (0 while unknown).
    pub total: u64,
}

/// `GET /v1/admin/jobs/{id}`: a job, running or finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobStatus {
    /// Job id.
    pub id: String,
    /// `gc` or `verify`.
    pub kind: String,
    /// State.
    pub state: JobState,
    /// Start time, RFC 3339.
    pub started: String,
    /// End time, RFC 3339, once finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
    /// Progress (published about every 200 ms while running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<JobProgress>,
    /// The job's report, once done (its fields depend on the kind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `POST /v1/admin/prune` body: `dry_run` is required, so an empty request deletes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PruneRequest {
    /// Report what would be deleted, delete nothing.
    pub dry_run: bool,
    /// Only this source.
    #[serde(default)]
    pub source: Option<String>,
}

/// A backup a prune would delete but may not (yet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PruneSkip {
    /// Backup.
    pub id: BackupId,
    /// `BACKUP_IMMUTABLE` or `BACKUP_IN_USE`.
    pub reason: crate::ErrorCode,
    /// Why, for people (until when it is immutable).
    pub message: String,
}

/// What a prune did (or would do) to one source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PruneSource {
    /// Tenant.
    pub tenant: String,
    /// Source.
    pub source: String,
    /// The policy applied (none: the source is not pruned and every backup is kept).
    pub policy: Option<crate::retention::Policy>,
    /// Backups kept, newest first.
    pub kept: Vec<BackupId>,
    /// Backups deleted (or, in a dry run, that would be).
    pub pruned: Vec<BackupId>,
    /// Backups the policy would delete that may not be deleted yet.
    pub skipped: Vec<PruneSkip>,
}

/// `POST /v1/admin/prune` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PruneReport {
    /// Whether nothing was deleted.
    pub dry_run: bool,
    /// Per source (tenant, source order).
    pub sources: Vec<PruneSource>,
}

/// Where a source's retention policy comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum PolicyOrigin {
    /// The configuration file.
    Config,
    /// Set over the API (overrides the configuration's).
    Api,
}

/// A source's retention policy and its origin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SourcePolicy {
    /// The policy.
    pub policy: crate::retention::Policy,
    /// Where it comes from.
    pub origin: PolicyOrigin,
}

/// `PUT /v1/admin/retention/{source}` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PolicySet {
    /// Source.
    pub source: String,
    /// The policy now in force.
    pub policy: crate::retention::Policy,
    /// Always `api`.
    pub origin: PolicyOrigin,
}

/// `GET /v1/admin/retention`: the immutability window, the schedule, the default policy and every
/// source's own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RetentionView {
    /// No backup younger than this may be deleted, by anyone (0: no window).
    pub min_age_seconds: u64,
    /// Interval of the scheduled prune (none: only on request).
    pub schedule_seconds: Option<u64>,
    /// Policy of sources without their own.
    pub default: Option<crate::retention::Policy>,
    /// Sources with their own policy.
    pub sources: BTreeMap<String, SourcePolicy>,
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum TokenRole {
    /// Create sessions, upload, commit; read its own tenant's backups.
    Backup,
    /// Read its tenant's catalog and data.
    Reader,
    /// Everything, across tenants.
    Admin,
}

/// `GET /v1/whoami`: the tenant and role of the calling token (what a console shows follows them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Identity {
    /// Tenant the token acts for.
    pub tenant: String,
    /// Its role.
    pub role: TokenRole,
}

/// `POST /v1/backups/{id}/disks/{name}/exports` body (optional): how long the export lives.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateExport {
    /// Seconds until the export expires, at most the repository's `[nbd] ttl` (absent: that
    /// ttl).
    #[serde(default)]
    pub ttl_s: Option<u64>,
}

/// A backup's disk served read-only over NBD: the answer of
/// `POST /v1/backups/{id}/disks/{name}/exports`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExportInfo {
    /// The export name: a capability (192 random bits, hex); whoever knows it can read the disk
    /// until it expires or is deleted.
    pub name: String,
    /// The NBD URI (`nbd://HOST:PORT/NAME`), as `qemu-img`, `nbdinfo` and `nbdcopy` take it.
    pub uri: String,
    /// The backup.
    pub backup_id: BackupId,
    /// The disk.
    pub disk: DiskName,
    /// The disk's size in bytes (the export's size).
    pub size: u64,
    /// When the export ends (RFC 3339).
    pub expires: String,
}
