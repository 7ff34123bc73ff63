//! Restores and clones: a new volume made as a copy of a snapshot (`from_snapshot`), of
//! another volume (`from_volume`) or of a backup (`from_backup`), from any host.
//!
//! The copy is made where no one can see it, in `.caravan/staging/<tag>/`, and becomes the
//! volume in the commit that adds its record: the folder is renamed into `volumes/` under
//! the cluster lock, never over anything there. So a half-made copy is never a volume,
//! and a name that exists is never overwritten (a create with other options is refused,
//! one with the same options is answered with the volume, as every Create is). A copy that
//! fails or is stopped deletes its staging folder; one interrupted by the daemon's death is
//! deleted at its next start (the tag names the node and its incarnation).
//!
//! Docker's Create waits for the copy within its call's time, and stops and discards it
//! when that runs out; `caravan create --from-…` starts it as a job (`/v1/copies`) and
//! follows it for as long as it takes.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Service, VolumeView, ANSWER_MARGIN};
use crate::core::copy_report::CopyReport;
use crate::core::decide::SnapshotStep;
use crate::core::error::{Error, Result};
use crate::core::names::validate_name;
use crate::core::staging::StagingTag;
use crate::core::volume::{SnapshotState, Source, VolumeOptions};
use crate::export::treecopy::Progress;

/// What a copy into a new volume works on.
pub(super) struct CopyWork {
    source: Source,
    options: VolumeOptions,
}

/// A copy into a new volume, running or finished on this host, by the volume's name.
pub(super) type CopyJob = crate::ops::jobs::Job<CopyWork, CopyReport>;
pub(super) type CopyJobs = crate::ops::jobs::Jobs<String, CopyWork, CopyReport>;

/// A copy job as the control API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CopyView {
    pub volume: String,
    pub source: String,
    /// `copying`, `done` or `failed`.
    pub state: String,
    pub progress: super::CopyProgress,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy: Option<CopyReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What to do with a staging folder once its copy's create is answered.
enum Discard {
    No,
    Now,
    Later,
}

impl Service {
    fn job(&self, name: &str) -> Option<Arc<CopyJob>> {
        self.copy_jobs.get(&name.to_string())
    }

    /// Starts copying `source` into the new volume `name` (made with `options`) in the
    /// background; an earlier job for that name still running is answered instead.
    pub async fn copy_start(&self, name: &str, options: VolumeOptions) -> Result<CopyView> {
        validate_name(name)?;
        let source = options.source().ok_or_else(|| {
            Error::invalid(
                "a copy needs from_snapshot=VOLUME@SNAPSHOT, from_volume=VOLUME or from_backup=URL",
            )
        })?;
        {
            let snap = self.store.snapshot().await?;
            if let Some(existing) = snap.volumes.get(name) {
                // Made already with these options: nothing to copy (Create is idempotent).
                if existing.options == options {
                    return Ok(CopyView {
                        volume: name.to_string(),
                        source: source.to_string(),
                        state: "done".to_string(),
                        progress: super::CopyProgress::of(&Progress::default()),
                        copy: None,
                        error: None,
                    });
                }
                return Err(Error::Conflict {
                    name: name.to_string(),
                    existing: existing.options.to_string(),
                });
            }
            match &source {
                Source::Volume(v) if !snap.volumes.contains_key(v) => {
                    return Err(Error::NoSuchVolume(v.clone()))
                }
                Source::Snapshot { volume, snapshot } => {
                    let complete = snap
                        .volumes
                        .get(volume)
                        .ok_or_else(|| Error::NoSuchVolume(volume.clone()))?
                        .snapshots
                        .get(snapshot)
                        .is_some_and(|s| s.state == SnapshotState::Complete);
                    if !complete {
                        return Err(Error::Snapshot(format!(
                            "volume {volume} has no complete snapshot {snapshot}"
                        )));
                    }
                }
                // The backup is looked at by the copy (it is on another system).
                Source::Volume(_) | Source::Backup(_) => {}
            }
        }
        let work = CopyWork {
            source: source.clone(),
            options: options.clone(),
        };
        let job = match self.copy_jobs.start(name.to_string(), work) {
            Ok(job) => job,
            Err(running) if running.what.options != options => {
                return Err(Error::Conflict {
                    name: name.to_string(),
                    existing: format!("being copied on this host with {}", running.what.options),
                })
            }
            Err(running) => return Ok(view_of(name, &running)),
        };
        let svc = self.me.upgrade().ok_or(Error::ShuttingDown)?;
        let (n, j) = (name.to_string(), job.clone());
        tokio::spawn(async move { svc.run_copy(n, options, j).await });
        Ok(view_of(name, &job))
    }

    async fn run_copy(self: Arc<Self>, name: String, options: VolumeOptions, job: Arc<CopyJob>) {
        let serial = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let tag = StagingTag {
            volume: name.clone(),
            node: self.node.clone(),
            boot_id: self.nodes.boot_id().to_string(),
            serial,
        }
        .to_string();
        let shared = self.shared().clone();
        let (source, progress, t) = (job.what.source.clone(), job.progress.clone(), tag.clone());
        // No health ticket (a long copy says nothing about the export); the permit bounds
        // how many copies run at once.
        let _permit = self.copy_slots.clone().acquire_owned().await;
        // A snapshot being restored from is recorded as read by this incarnation, under
        // the lock: no host deletes it meanwhile.
        let reading = match &job.what.source {
            Source::Snapshot { volume, snapshot } => Some((volume.clone(), snapshot.clone())),
            Source::Volume(_) | Source::Backup(_) => None,
        };
        if let Some((v, sn)) = &reading {
            match self
                .store
                .snapshot_step(v, sn, &self.node, SnapshotStep::ReadBegin)
                .await
            {
                // The snapshot's own copy says what there is to copy.
                Ok(record) => {
                    if let Some(c) = record.snapshots.get(sn).and_then(|s| s.copy.as_ref()) {
                        job.progress.expect(c.files, c.bytes);
                    }
                }
                Err(e) => {
                    tracing::warn!(volume = %name, "the restore cannot begin: {e}");
                    job.finish(Err(e.to_string()));
                    return;
                }
            }
        } else if let Source::Volume(v) = &job.what.source {
            if let Some(u) = self.usage_of(v).await.filter(|u| u.complete) {
                job.progress.expect(u.files, u.bytes);
            }
        }
        let rt = tokio::runtime::Handle::current();
        let node = self.node.clone();
        let privileges =
            crate::export::treecopy::Privileges::keep(job.what.options.keep_privileges);
        let size = job.what.options.size;
        let copied = crate::runtime::deadline::unbounded("copying the volume", move || {
            let src = match &source {
                Source::Snapshot { volume, snapshot } => shared.open_snapshot_dir(volume, snapshot)?,
                Source::Volume(v) => shared.open_data_dir(v)?,
                Source::Backup(url) => {
                    let url = crate::core::backup_url::BackupUrl::parse(url)?;
                    let backend = crate::ops::backup::Backend::open(
                        &url.dest,
                        rt,
                        &shared.root,
                        crate::ops::backup::Access::Read,
                    )?;
                    let repo = crate::ops::backup::Repo::open(backend, false)?;
                    let dst = shared.make_staging(&t)?;
                    return crate::ops::backup::restore(
                        &repo, &url.id, &dst, &node, &progress, privileges, size,
                    );
                }
            };
            let dst = shared.make_staging(&t)?;
            let report = crate::export::treecopy::copy_tree(&src, &dst, &progress, privileges).map_err(|e| {
                Error::io(format!("copying {source}, at {}", e.path.display()), e.source)
            })?;
            // A snapshot does not change: anything gone while copying means it was being
            // deleted, and the copy is not the snapshot.
            if matches!(source, Source::Snapshot { .. }) && report.vanished > 0 {
                return Err(Error::Snapshot(format!(
                    "{source} changed while being copied ({} entries gone: deleted meanwhile?); the copy is incomplete and was discarded",
                    report.vanished
                )));
            }
            Ok(report)
        })
        .await
        .and_then(|copied| copied);
        if let Some((v, sn)) = &reading {
            // A reader left behind (this step failing) lapses with this incarnation.
            if let Err(e) = self
                .store
                .snapshot_step(v, sn, &self.node, SnapshotStep::ReadEnd)
                .await
            {
                tracing::warn!(volume = %name, "recording the end of the restore: {e}");
            }
        }
        // Whether the staging folder may still be deleted: not after an error that leaves
        // the commit uncertain (a timeout, a failed write): the worker may rename it into
        // place yet. Then it is looked at again later.
        let (outcome, discard) = match copied {
            Ok(report) => match self
                .store
                .create_staged(&name, options, &self.node, &tag)
                .await
            {
                Ok(created) if !created.existed => {
                    tracing::info!(volume = %name, source = %job.what.source, method = report.method(), files = report.files, bytes = report.bytes, ms = report.millis, "volume made as a copy");
                    if report.dropped_setid + report.dropped_xattrs > 0 {
                        tracing::warn!(volume = %name, source = %job.what.source, dropped_setid = report.dropped_setid, dropped_xattrs = report.dropped_xattrs, "the copy did not carry over set-id bits or security./trusted. attributes (create it with keep_privileges=true to keep them, if you trust the source)");
                    }
                    (Ok(report), Discard::No)
                }
                // Made meanwhile with the same options (another host's Create): that is
                // the volume asked for; this copy is not needed.
                Ok(_) => (Ok(report), Discard::Now),
                Err(e) if super::uncertain(&e) => (Err(e), Discard::Later),
                Err(e) => (Err(e), Discard::Now),
            },
            Err(e) => (Err(e), Discard::Now),
        };
        match discard {
            Discard::No => {}
            Discard::Now => self.discard_staging(&name, &tag).await,
            Discard::Later => {
                let svc = self.clone();
                let (n, t) = (name.clone(), tag.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(svc.fs_timeout * 4).await;
                    let made = svc
                        .store
                        .snapshot()
                        .await
                        .map(|s| s.volumes.contains_key(&n))
                        .unwrap_or(true);
                    if !made {
                        svc.discard_staging(&n, &t).await;
                    }
                });
            }
        }
        if let Err(e) = &outcome {
            tracing::warn!(volume = %name, source = %job.what.source, "the copy into a new volume failed: {e}");
        }
        job.finish(outcome.map_err(|e| e.to_string()));
    }

    async fn discard_staging(&self, name: &str, tag: &str) {
        let shared = self.shared().clone();
        let t = tag.to_string();
        let removed = crate::runtime::deadline::unbounded("deleting an unused copy", move || {
            shared.remove_staging(&t)
        })
        .await;
        if let Err(e) = removed.and_then(|removed| removed) {
            tracing::warn!(volume = %name, "deleting the unused copy: {e}");
        }
    }

    /// A copy job of this host, by the new volume's name.
    pub fn copy_get(&self, name: &str) -> Result<CopyView> {
        validate_name(name)?;
        self.job(name)
            .map(|j| view_of(name, &j))
            .ok_or_else(|| Error::invalid(format!("no copy into volume {name} on this host")))
    }

    /// Stops a running copy job (its copy is deleted).
    pub fn copy_stop(&self, name: &str) -> Result<CopyView> {
        validate_name(name)?;
        let job = self
            .job(name)
            .ok_or_else(|| Error::invalid(format!("no copy into volume {name} on this host")))?;
        job.stop();
        Ok(view_of(name, &job))
    }

    /// Docker's Create of a volume made as a copy: starts (or joins) the copy and waits
    /// for it within the call's time; past that, stops and discards it.
    pub(super) async fn create_copy(
        &self,
        name: &str,
        options: VolumeOptions,
    ) -> Result<(VolumeView, bool)> {
        if let Some(existing) = self.store.snapshot().await?.volumes.get(name).cloned() {
            return if existing.options == options {
                Ok((self.view(&existing, None), true))
            } else {
                Err(Error::Conflict {
                    name: name.to_string(),
                    existing: existing.options.to_string(),
                })
            };
        }
        let running_before = self.job(name).is_some_and(|j| j.running());
        self.copy_start(name, options).await?;
        let job = self.job(name).ok_or(Error::ShuttingDown)?;
        let mut rx = job.watch();
        let left = crate::runtime::deadline::remaining(Duration::from_secs(24 * 3600))
            .saturating_sub(ANSWER_MARGIN * 4);
        let finished = tokio::time::timeout(left, async {
            rx.wait_for(|o| o.is_some()).await.map(|o| o.clone())
        })
        .await;
        match finished {
            Ok(Ok(outcome)) => match outcome.expect("waited for it") {
                Ok(_) => {
                    let record = self
                        .store
                        .snapshot()
                        .await?
                        .volumes
                        .get(name)
                        .cloned()
                        .ok_or_else(|| Error::NoSuchVolume(name.to_string()))?;
                    Ok((self.view(&record, None), false))
                }
                Err(e) => Err(Error::invalid(e)),
            },
            _ => {
                // Stopped only if this call started it: a job it joined (a CLI restore)
                // is someone else's.
                if !running_before {
                    job.stop();
                }
                Err(Error::Timeout {
                    what: format!(
                        "copying {} into volume {name} (stopped and discarded; make it with `caravan create {name} --from-…`, which waits as long as the copy takes, then use it)",
                        job.what.source
                    ),
                    after: left,
                })
            }
        }
    }

    /// At start: deletes the staging folders an earlier start of this node left (those
    /// copies were interrupted; the node-name lock proves that incarnation gone).
    pub(super) async fn clean_interrupted_copies(&self) {
        let shared = self.shared().clone();
        let (node, boot) = (self.node.clone(), self.nodes.boot_id().to_string());
        let _ = crate::runtime::deadline::unbounded("deleting interrupted copies", move || {
            let Ok(entries) = shared.staging_entries() else { return };
            for tag in entries {
                let Some(t) = StagingTag::parse(&tag) else {
                    continue;
                };
                if t.node == node && t.boot_id != boot {
                    tracing::info!(staging = %tag, "deleting a copy an earlier start of this node left unfinished");
                    if let Err(e) = shared.remove_staging(&tag) {
                        tracing::warn!("{e}");
                    }
                }
            }
        })
        .await;
    }
}

fn view_of(name: &str, job: &CopyJob) -> CopyView {
    let (state, copy, error) = match job.outcome() {
        None => ("copying", None, None),
        Some(Ok(r)) => ("done", Some(r), None),
        Some(Err(e)) => ("failed", None, Some(e)),
    };
    CopyView {
        volume: name.to_string(),
        source: job.what.source.to_string(),
        state: state.to_string(),
        progress: super::CopyProgress::of(&job.progress),
        copy,
        error,
    }
}
