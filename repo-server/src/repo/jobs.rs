//! Background jobs' bookkeeping: the registry of jobs started since the server began, their
//! progress while they run, and their reports, kept in the catalog when they finish. The jobs
//! themselves are [`super::gc`] and [`super::verify`].
//!
//! No job holds the repository's `gc` lock across more than one slice of its work, so uploads,
//! pins and commits (which take it for reading) wait at most that long, even while a GC waits
//! for the write lock (std's `RwLock` then holds new readers back).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use schema::api::{JobProgress, JobState, JobStatus};
use serde_json::Value;

use super::{now_ms, Repository};
use crate::auth::Caller;
use crate::error::{Error, Result};

/// Jobs started since the server began (finished ones are also kept in the catalog).
#[derive(Debug, Default)]
pub struct JobTable {
    jobs: Mutex<HashMap<String, JobStatus>>,
    seq: AtomicU64,
}

/// Progress of a running job, shared with its thread.
#[derive(Debug, Default)]
pub(super) struct Progress {
    pub(super) done: AtomicU64,
    pub(super) total: AtomicU64,
    phase: Mutex<&'static str>,
}

impl Progress {
    pub(super) fn set_phase(&self, phase: &'static str) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = phase;
    }

    fn snapshot(&self) -> JobProgress {
        JobProgress {
            phase: (*self.phase.lock().unwrap_or_else(|e| e.into_inner())).to_owned(),
            done: self.done.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
        }
    }
}

impl Repository {
    /// `GET /v1/admin/jobs/{id}`.
    ///
    /// # Errors
    /// 403, 404.
    pub fn job(&self, caller: &Caller, id: &str) -> Result<JobStatus> {
        caller.require_admin()?;
        if let Some(j) = self
            .jobs
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
        {
            return Ok(j.clone());
        }
        if id.len() <= 64 && id.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-') {
            if let Some(j) = self.catalog.job(id)? {
                return Ok(j);
            }
        }
        Err(Error::not_found(format!("job {id}")))
    }

    /// Runs `work` on a thread of its own as a job of `kind`; returns the job id at once.
    pub(super) fn start_job(
        self: &Arc<Self>,
        kind: &'static str,
        work: impl FnOnce(&Repository, &Progress) -> Result<Value> + Send + 'static,
    ) -> String {
        let n = self.jobs.seq.fetch_add(1, Ordering::Relaxed);
        let id = format!("{kind}-{}-{n}", now_ms());
        let started = schema::time::rfc3339(now_ms());
        let running = JobStatus {
            id: id.clone(),
            kind: kind.to_owned(),
            state: JobState::Running,
            started: started.clone(),
            finished: None,
            progress: None,
            result: None,
            error: None,
        };
        self.jobs
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), running);
        let repo = Arc::clone(self);
        let job_id = id.clone();
        let progress = Arc::new(Progress::default());
        let p2 = progress.clone();
        // Progress is published into the table by a small ticker while the job runs.
        let repo_t = Arc::clone(self);
        let tick_id = id.clone();
        let done_flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done_t = done_flag.clone();
        std::thread::spawn(move || {
            while !done_t.load(Ordering::Relaxed) {
                if let Some(j) = repo_t
                    .jobs
                    .jobs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_mut(&tick_id)
                {
                    if j.state == JobState::Running {
                        j.progress = Some(p2.snapshot());
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        });
        std::thread::spawn(move || {
            let outcome = work(&repo, &progress);
            done_flag.store(true, Ordering::Relaxed);
            let mut report = JobStatus {
                id: job_id.clone(),
                kind: kind.to_owned(),
                state: JobState::Done,
                started,
                finished: Some(schema::time::rfc3339(now_ms())),
                progress: Some(progress.snapshot()),
                result: None,
                error: None,
            };
            match outcome {
                Ok(result) => report.result = Some(result),
                Err(e) => {
                    tracing::error!(job = %job_id, error = %e, "job failed");
                    report.state = JobState::Failed;
                    report.error = Some(e.to_string());
                }
            }
            let mut b = repo.catalog.batch();
            b.put_job(&job_id, &report);
            if let Err(e) = repo.catalog.write(b) {
                tracing::error!(job = %job_id, error = %e, "could not persist job report");
            }
            tracing::info!(job = %job_id, report = ?report, "job finished");
            repo.jobs
                .jobs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(job_id, report);
        });
        id
    }
}
