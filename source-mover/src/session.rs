//! The backup session on the mover's side: opened by continuing the interrupted run of the same
//! command (from its [`Journal`]) or by creating a new one, fed with index records in order
//! ([`Session::append`]), and committed. Every journal write (fsync) runs on the blocking pool.

use std::collections::{BTreeMap, HashSet};

use schema::api::SessionState;
use schema::api::{ClientStats, CommitRequest, CreateSession, DiskCommit, DiskSpec, FileIndexRef};
use schema::{BackupId, ChunkId, IndexRecord, SessionId};
use serde::Serialize;

use crate::cbt::ChangedBlocks;
use crate::client::RepoClient;
use crate::error::{blocking, Error, Result};
use crate::journal::{self, Journal};
use crate::options::BackupOptions;
use crate::plan::DiskPlan;

/// An open session and the journal that makes it resumable.
#[derive(Debug)]
pub struct Session {
    client: RepoClient,
    /// The session's id.
    pub id: SessionId,
    /// What the repository acknowledged, saved after every batch.
    pub journal: Journal,
    /// Whether this run continues an interrupted one.
    pub resumed: bool,
}

/// What [`Session::open`] found.
#[derive(Debug)]
pub enum Opened {
    /// A session to send blocks into.
    Open(Session),
    /// The interrupted run had already committed this backup (its journal is removed).
    Committed(String),
}

/// The commit's free-form `metadata`: how the mover made the backup.
#[derive(Debug, Serialize)]
struct CommitMetadata<'a> {
    mover: &'static str,
    paths: BTreeMap<&'a str, String>,
    block_size: u32,
    zstd_level: i32,
    resumed: bool,
    /// The dirty bitmap started at this backup's point, per disk (see [`crate::cbt`]).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    cbt_points: BTreeMap<&'a str, &'a str>,
}

impl Session {
    /// Continues the interrupted run of the same command if the repository still has its
    /// session open, else creates a session over the resolved base. Changed-block lists must
    /// count from the session's base.
    ///
    /// # Errors
    /// A changed-block list for another base ([`Error::Refused`]), journal and repository errors.
    pub async fn open(
        client: &RepoClient,
        opts: &BackupOptions,
        plans: &[DiskPlan],
        cbt: &BTreeMap<String, ChangedBlocks>,
    ) -> Result<Opened> {
        // An encrypted run never continues a plain one (or one of another key), nor the reverse.
        let source = match &opts.encryption_key {
            Some(k) => format!("{}\0key {}", opts.source, k.id_hex()),
            None => opts.source.clone(),
        };
        let key = journal::key(client.url(), &source, &opts.disks);
        let (dir, k) = (opts.state_dir.clone(), key.clone());
        if let Some(j) = blocking("loading the journal", move || Journal::load(&dir, &k)).await? {
            if let Some(opened) = Self::resume(client, j, cbt).await? {
                return Ok(opened);
            }
        }
        let base = crate::base::resolve(client, opts).await?;
        crate::base::check_cbt(cbt, base.as_deref())?;
        let id = random_session()?;
        let sizes: Vec<u64> = plans.iter().map(|p| p.size).collect();
        client
            .create_session(&id, &create_body(opts, &sizes, &base)?)
            .await?;
        let names: Vec<String> = opts.disks.iter().map(|d| d.0.clone()).collect();
        let journal = Journal::new(&opts.state_dir, &key, id.to_string(), base, &names);
        let s = Session {
            client: client.clone(),
            id,
            journal,
            resumed: false,
        };
        s.save().await?;
        Ok(Opened::Open(s))
    }

    /// The interrupted session of `j`: open (continue it), committed (report it), or gone
    /// (`None`: start over).
    async fn resume(
        client: &RepoClient,
        j: Journal,
        cbt: &BTreeMap<String, ChangedBlocks>,
    ) -> Result<Option<Opened>> {
        let id: SessionId = j.session.parse().map_err(|e| {
            Error::Invalid(format!(
                "the journal names a bad session id {}: {e}",
                j.session
            ))
        })?;
        match client.session_status(&id).await {
            Ok(st) if st.state == SessionState::Open => {
                crate::base::check_cbt(cbt, j.base.as_deref())?;
                eprintln!("source-mover: continuing interrupted session {}", j.session);
                Ok(Some(Opened::Open(Session {
                    client: client.clone(),
                    id,
                    journal: j,
                    resumed: true,
                })))
            }
            Ok(st) if st.state == SessionState::Committed => {
                let id = st.backup_id.map(|b| b.to_string()).unwrap_or_default();
                eprintln!("source-mover: the interrupted run had already committed backup {id}");
                remove(j).await?;
                Ok(Some(Opened::Committed(id)))
            }
            Ok(_) | Err(Error::Repo { status: 404, .. }) => {
                eprintln!(
                    "source-mover: the interrupted session {} is gone; starting over",
                    j.session
                );
                remove(j).await?;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The repository client the session was opened with.
    pub fn client(&self) -> &RepoClient {
        &self.client
    }

    /// Saves the journal durably (on the blocking pool).
    ///
    /// # Errors
    /// I/O errors.
    pub async fn save(&self) -> Result<()> {
        let j = self.journal.clone();
        blocking("saving the journal", move || j.save()).await
    }

    /// Appends `recs` to disk `name`'s records in the session after the journal's acknowledged
    /// ones, checks the count the repository then holds, and adds them to the journal's records
    /// (the caller saves the journal).
    ///
    /// # Errors
    /// A count the repository disagrees with, journal and repository errors.
    pub async fn append(&mut self, name: &str, recs: &[IndexRecord]) -> Result<()> {
        let before = self
            .journal
            .disks
            .entry(name.to_owned())
            .or_default()
            .entries;
        if recs.is_empty() {
            return Ok(());
        }
        let body = IndexRecord::encode_all(recs);
        let held = self
            .client
            .append(&self.id, name, before, body.clone().into())
            .await?;
        let expect = before + recs.len() as u64;
        if held != expect {
            return Err(Error::Invalid(format!(
                "disk {name}: the repository holds {held} records, expected {expect}; the session is inconsistent"
            )));
        }
        let (j, disk) = (self.journal.clone(), name.to_owned());
        blocking("writing the journal's records", move || {
            j.append_records(&disk, before, &body)
        })
        .await?;
        if let Some(s) = self.journal.disks.get_mut(name) {
            s.entries = expect;
        }
        Ok(())
    }

    /// The acknowledged records of disk `name` (read on the blocking pool).
    ///
    /// # Errors
    /// I/O errors, or a records file shorter than the journal says.
    pub async fn records(&self, name: &str) -> Result<Vec<IndexRecord>> {
        let entries = self.journal.disks.get(name).map(|s| s.entries).unwrap_or(0);
        let (j, disk) = (self.journal.clone(), name.to_owned());
        blocking("reading the journal's records", move || {
            j.records(&disk, entries)
        })
        .await
    }

    /// The commit request: per disk the acknowledged record count and checksum, and the run's
    /// figures.
    ///
    /// # Errors
    /// The journal's records cannot be read.
    pub async fn commit_request(
        &self,
        opts: &BackupOptions,
        client_stats: ClientStats,
        file_indexes: Vec<FileIndexRef>,
    ) -> Result<CommitRequest> {
        let names: Vec<String> = opts.disks.iter().map(|d| d.0.clone()).collect();
        let j = self.journal.clone();
        let disks = blocking("checksumming the journal's records", move || {
            names
                .into_iter()
                .map(|n| {
                    let entries = j.disks.get(&n).map(|s| s.entries).unwrap_or(0);
                    let records_blake3 = j.records_blake3(&n, entries)?;
                    Ok((
                        n,
                        DiskCommit {
                            entries,
                            records_blake3,
                        },
                    ))
                })
                .collect::<Result<BTreeMap<_, _>>>()
        })
        .await?;
        let metadata = CommitMetadata {
            mover: concat!("source-mover ", env!("CARGO_PKG_VERSION")),
            paths: opts
                .disks
                .iter()
                .map(|(n, d)| (n.as_str(), d.describe()))
                .collect(),
            block_size: opts.block_size,
            zstd_level: opts.zstd_level,
            resumed: self.resumed,
            cbt_points: opts
                .cbt_points
                .iter()
                .map(|(d, b)| (d.as_str(), b.as_str()))
                .collect(),
        };
        Ok(CommitRequest {
            disks,
            metadata: serde_json::to_value(&metadata).map_err(|e| Error::Invalid(e.to_string()))?,
            client_stats: Some(client_stats),
            file_indexes,
            encryption: None,
        })
    }

    /// Commits once.
    ///
    /// # Errors
    /// Repository errors; see [`missing_chunks`] for the refusal a heal can answer.
    pub async fn commit(&self, req: &CommitRequest) -> Result<BackupId> {
        self.client.commit(&self.id, req).await
    }

    /// Removes the journal of a committed session.
    ///
    /// # Errors
    /// Only if the blocking pool fails (removal itself is best effort).
    pub async fn finish(self) -> Result<()> {
        remove(self.journal).await
    }
}

/// The chunks a `MISSING_CHUNKS` refusal of a commit lists (`None` for any other error).
pub fn missing_chunks(e: &Error) -> Option<HashSet<ChunkId>> {
    match e {
        Error::Repo {
            status: 422,
            code,
            detail,
            ..
        } if code == "MISSING_CHUNKS" => Some(
            detail
                .as_deref()
                .and_then(|d| d.get("chunks"))
                .and_then(|c| serde_json::from_value::<Vec<ChunkId>>(c.clone()).ok())
                .unwrap_or_default()
                .into_iter()
                .collect(),
        ),
        _ => None,
    }
}

/// The body of `PUT /v1/sessions/{id}`: the disks of `opts` with their `sizes`.
fn create_body(
    opts: &BackupOptions,
    sizes: &[u64],
    base: &Option<String>,
) -> Result<CreateSession> {
    let names: Vec<&str> = opts.disks.iter().map(|d| d.0.as_str()).collect();
    create_body_of(&opts.source, &names, sizes, opts.block_size, base)
}

fn create_body_of(
    source: &str,
    names: &[&str],
    sizes: &[u64],
    block_size: u32,
    base: &Option<String>,
) -> Result<CreateSession> {
    let invalid = |e: schema::IdError| Error::Invalid(e.to_string());
    let disks = names
        .iter()
        .zip(sizes)
        .map(|(n, &size)| {
            Ok(DiskSpec {
                name: n.parse().map_err(invalid)?,
                size,
                block_size,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(CreateSession {
        source: source.to_owned(),
        base: base
            .as_deref()
            .map(str::parse::<BackupId>)
            .transpose()
            .map_err(invalid)?,
        disks,
        labels: [("mover".to_owned(), "source-mover".to_owned())].into(),
    })
}

fn random_session() -> Result<SessionId> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .map_err(|e| Error::io("/dev/urandom", e))?;
    Ok(SessionId::from_random(b))
}

/// Removes a journal and its records files, on the blocking pool.
async fn remove(j: Journal) -> Result<()> {
    blocking("removing the journal", move || {
        j.remove();
        Ok(())
    })
    .await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The typed bodies serialize as the `json!` bodies the mover sent before (the repository
    /// deserializes the same `schema` types).
    #[test]
    fn bodies_keep_their_wire_form() {
        let base = Some("b-1".to_owned());
        let typed = create_body_of("vm 1", &["disk0", "d1"], &[10, 20], 1 << 20, &base).unwrap();
        let disks = json!([
            {"name": "disk0", "size": 10, "block_size": 1 << 20},
            {"name": "d1", "size": 20, "block_size": 1 << 20},
        ]);
        let before = json!({"source": "vm 1", "base": base, "disks": disks, "labels": {"mover": "source-mover"}});
        assert_eq!(serde_json::to_value(&typed).unwrap(), before);
        let full = create_body_of("vm", &["disk0"], &[1], 1 << 20, &None).unwrap();
        assert_eq!(serde_json::to_value(&full).unwrap()["base"], json!(null));

        let paths: BTreeMap<&str, String> = [("disk0", "/x.raw".to_owned())].into();
        let m = CommitMetadata {
            mover: "source-mover 1",
            paths: paths.clone(),
            block_size: 4096,
            zstd_level: 3,
            resumed: true,
            cbt_points: BTreeMap::new(),
        };
        let before = json!({"mover": "source-mover 1", "paths": paths, "block_size": 4096, "zstd_level": 3, "resumed": true});
        assert_eq!(serde_json::to_value(&m).unwrap(), before);
    }
}
