//! Pruning by retention policy, and the immutability window that no deletion may cross.

use std::collections::BTreeMap;

use schema::api::{
    Manifest, PolicyOrigin, PolicySet, PruneReport, PruneSkip, PruneSource, RetentionView,
    SessionState, SourcePolicy,
};
use schema::retention::{self, Policy};
use schema::ErrorCode;
use serde_json::json;

use super::Repository;
use crate::auth::Caller;
use crate::catalog::counter;
use crate::error::{Error, Result};

impl Repository {
    /// Deletes a backup after the checks every deletion passes: not younger than the
    /// immutability window, not the base of an open session.
    ///
    /// # Errors
    /// 409 `BACKUP_IMMUTABLE`, 409 `BACKUP_IN_USE`, RocksDB errors.
    pub(crate) fn delete_checked(&self, m: &Manifest) -> Result<()> {
        // One deletion at a time under the `gc` read lock: a prune of many backups never holds
        // it across more than one of them.
        let _gc = self.gc_read();
        // Held until the catalog write: no export of this backup can be created in between.
        let exports = self.exports.lock();
        self.deletable(m, &exports)?;
        let created = schema::time::parse_rfc3339(&m.created).unwrap_or(0);
        // The stored manifest goes first: a crash after it leaves the backup in the catalog (a
        // repeated delete finishes), never a manifest that would bring a deleted backup back.
        self.manifests
            .delete_manifest(&m.id)
            .map_err(|e| Error::storage("removing the manifest", e))?;
        let mut b = self.catalog.batch();
        b.delete_backup(m, created);
        b.delete_file_catalog(m, created)?;
        b.add(counter::BACKUPS, -1);
        b.add(counter::LOGICAL_BYTES, -(m.stats.logical_bytes as i64));
        self.catalog.write(b)?;
        crate::fail::hit("prune.after_delete");
        tracing::info!(backup = %m.id, source = %m.source, "backup deleted");
        Ok(())
    }

    /// The policy that applies to `source`: one set over the API, else the config's for the
    /// source, else the config's default. An empty policy (set to opt a source out) is none.
    fn policy_for(&self, api: &BTreeMap<String, Policy>, source: &str) -> Option<Policy> {
        let r = &self.settings.retention;
        api.get(source)
            .or_else(|| r.sources.get(source))
            .or(r.default.as_ref())
            .filter(|p| !p.is_empty())
            .cloned()
    }

    /// `GET /v1/admin/retention`: the immutability window, the schedule, the default and every
    /// source's policy with where it comes from (`api` overrides `config`).
    ///
    /// # Errors
    /// 403 for non-admins, RocksDB errors.
    pub fn retention(&self, caller: &Caller) -> Result<RetentionView> {
        caller.require_admin()?;
        let r = &self.settings.retention;
        let mut sources = BTreeMap::new();
        let entry = |policy: &Policy, origin| SourcePolicy {
            policy: policy.clone(),
            origin,
        };
        for (name, p) in &r.sources {
            sources.insert(name.clone(), entry(p, PolicyOrigin::Config));
        }
        for (name, p) in self.catalog.policies()? {
            sources.insert(name, entry(&p, PolicyOrigin::Api));
        }
        Ok(RetentionView {
            min_age_seconds: (self.settings.min_age_ms / 1000).max(0) as u64,
            schedule_seconds: r.schedule.map(|d| d.as_secs()),
            default: r.default.clone(),
            sources,
        })
    }

    /// `PUT /v1/admin/retention/{source}`: sets the source's policy, overriding the config's.
    /// An all-zero policy opts the source out of pruning.
    ///
    /// # Errors
    /// 403, 400 for a bad source name, RocksDB errors.
    pub fn set_policy(&self, caller: &Caller, source: &str, p: &Policy) -> Result<PolicySet> {
        caller.require_admin()?;
        check_source(source)?;
        let mut b = self.catalog.batch();
        b.put_policy(source, p)?;
        self.catalog.write(b)?;
        tracing::info!(source, policy = ?p, "retention policy set");
        Ok(PolicySet {
            source: source.to_owned(),
            policy: p.clone(),
            origin: PolicyOrigin::Api,
        })
    }

    /// `DELETE /v1/admin/retention/{source}`: drops the policy set over the API (the config's,
    /// if any, applies again).
    ///
    /// # Errors
    /// 403, 400, 404 when no policy was set over the API.
    pub fn delete_policy(&self, caller: &Caller, source: &str) -> Result<()> {
        caller.require_admin()?;
        check_source(source)?;
        if !self.catalog.policies()?.contains_key(source) {
            return Err(Error::not_found(format!(
                "retention policy set over the API for source {source}"
            )));
        }
        let mut b = self.catalog.batch();
        b.delete_policy(source);
        self.catalog.write(b)
    }

    /// `POST /v1/admin/prune`: applies each source's policy (optionally only `source`'s).
    /// Chunks of pruned backups are freed by the next GC.
    ///
    /// # Errors
    /// 403 for non-admins, RocksDB errors.
    pub fn prune(&self, caller: &Caller, dry_run: bool, only: Option<&str>) -> Result<PruneReport> {
        caller.require_admin()?;
        self.apply_retention(dry_run, only)
    }

    /// Applies the policies (the scheduled prune, and `POST /v1/admin/prune` once authorised).
    ///
    /// # Errors
    /// RocksDB errors; 503 while the stores refuse to delete (a fenced gateway).
    pub fn apply_retention(&self, dry_run: bool, only: Option<&str>) -> Result<PruneReport> {
        if !dry_run {
            self.stores_writable("pruning")?;
        }
        let mut groups: BTreeMap<(String, String), Vec<Manifest>> = BTreeMap::new();
        self.catalog.for_each_backup(|m| {
            if only.is_none_or(|s| s == m.source) {
                groups
                    .entry((m.tenant.clone(), m.source.clone()))
                    .or_default()
                    .push(m);
            }
            Ok(())
        })?;
        let api = self.catalog.policies()?;
        let mut report = Vec::new();
        for ((tenant, source), backups) in groups {
            let Some(policy) = self.policy_for(&api, &source) else {
                let mut kept: Vec<&Manifest> = backups.iter().collect();
                kept.sort_by(|a, b| b.created.cmp(&a.created));
                report.push(PruneSource {
                    tenant,
                    source,
                    policy: None,
                    kept: kept.into_iter().map(|m| m.id.clone()).collect(),
                    pruned: Vec::new(),
                    skipped: Vec::new(),
                });
                continue;
            };
            let times: Vec<(String, i64)> = backups
                .iter()
                .map(|m| {
                    (
                        m.id.to_string(),
                        schema::time::parse_rfc3339(&m.created).unwrap_or(0),
                    )
                })
                .collect();
            let keep = retention::keep(&policy, &times);
            let (mut kept, mut pruned, mut skipped) = (Vec::new(), Vec::new(), Vec::new());
            let mut newest_first = backups;
            newest_first.sort_by(|a, b| b.created.cmp(&a.created));
            for m in &newest_first {
                if keep.contains(m.id.as_str()) {
                    kept.push(m.id.clone());
                    continue;
                }
                let outcome = if dry_run {
                    self.deletable(m, &self.exports.lock())
                } else {
                    self.delete_checked(m)
                };
                match outcome {
                    Ok(()) => pruned.push(m.id.clone()),
                    Err(e)
                        if matches!(
                            e.code,
                            ErrorCode::BackupImmutable | ErrorCode::BackupInUse
                        ) =>
                    {
                        skipped.push(PruneSkip {
                            id: m.id.clone(),
                            reason: e.code,
                            message: e.message,
                        });
                    }
                    Err(e) => return Err(e),
                }
            }
            report.push(PruneSource {
                tenant,
                source,
                policy: Some(policy),
                kept,
                pruned,
                skipped,
            });
        }
        Ok(PruneReport {
            dry_run,
            sources: report,
        })
    }

    /// The checks every deletion passes (also what a dry-run prune reports): not inside the
    /// immutability window, not the base of an open session, not served as an NBD export.
    fn deletable(&self, m: &Manifest, exports: &super::exports::Locked<'_>) -> Result<()> {
        let created = schema::time::parse_rfc3339(&m.created).unwrap_or(0);
        if self.settings.min_age_ms > 0 && self.now() - created < self.settings.min_age_ms {
            let until = schema::time::rfc3339(created + self.settings.min_age_ms);
            return Err(Error::new(
                ErrorCode::BackupImmutable,
                format!("backup {} is inside the immutability window until {until}; nobody may delete it before", m.id),
            )
            .detail(json!({ "until": until })));
        }
        if let Some(s) = self
            .catalog
            .sessions()?
            .into_iter()
            .find(|s| s.state == SessionState::Open && s.params.base.as_ref() == Some(&m.id))
        {
            return Err(Error::new(
                ErrorCode::BackupInUse,
                format!(
                    "backup {} is the base of open session {}; commit or delete that session first",
                    m.id, s.id
                ),
            ));
        }
        if let Some(until) = exports.pinned_until(&m.id, self.now()) {
            return Err(Error::new(
                ErrorCode::BackupInUse,
                format!(
                    "backup {} is served as an NBD export until {}; delete the export first",
                    m.id,
                    schema::time::rfc3339(until)
                ),
            ));
        }
        Ok(())
    }
}

/// Source names follow the rule sessions enforce.
fn check_source(source: &str) -> Result<()> {
    if source.is_empty() || source.len() > 256 || source.chars().any(char::is_control) {
        return Err(Error::new(
            ErrorCode::BadRequest,
            "source must be 1-256 characters without control characters",
        ));
    }
    Ok(())
}
