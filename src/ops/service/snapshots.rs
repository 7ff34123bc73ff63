//! Snapshots: copies of a volume's data on the export, recorded in the cluster metadata,
//! so that every host lists, inspects, restores and deletes them.
//!
//! Making one is long work, so it runs in the background: the record says `making` first
//! (never listed), the data is copied (see [`crate::export::treecopy`]), and only then is it
//! `complete`. Deleting is the same the other way: `deleting`, the files, then the record.
//! A copy that fails or is stopped deletes what it made; one interrupted by the daemon's
//! death is cleaned when the daemon starts again, or by `caravan snapshot delete` on any
//! host once that incarnation is dead.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Service;
use crate::core::copy_report::CopyReport;
use crate::core::decide::SnapshotStep;
use crate::core::error::{Error, Result};
use crate::core::names::{validate_name, validate_snapshot_name};
use crate::core::volume::{rfc3339, SnapshotRecord, SnapshotState};
use crate::export::treecopy::Progress;

/// A snapshot being made on this host, by (volume, snapshot): forgotten once done.
pub(super) type SnapshotCopy = crate::ops::jobs::Job<(), ()>;
pub(super) type SnapshotCopies = crate::ops::jobs::Jobs<(String, String), (), ()>;

/// A snapshot as the APIs show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SnapshotView {
    pub volume: String,
    pub name: String,
    /// `making`, `complete` or `deleting`.
    pub state: String,
    pub created_at: String,
    pub created_by: String,
    /// Nodes that had the volume mounted when the copy began.
    pub mounted_on: Vec<String>,
    /// What a restore from it gives (docs/semantics.md, "Snapshots").
    pub consistency: String,
    /// Where its files are, on this host.
    pub path: String,
    /// How the data was copied, once complete: `reflink`, `copy`, `reflink+copy` or
    /// `none` (no data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The copy, once complete: how long, what.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy: Option<CopyReport>,
    /// While being made on this host: files and bytes copied so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<CopyProgress>,
    /// Why the last attempt on this host failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct CopyProgress {
    pub files: u64,
    pub bytes: u64,
    /// What the copy is expected to come to, when known (for an ETA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_files: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<u64>,
}

impl CopyProgress {
    pub fn of(p: &Progress) -> CopyProgress {
        let known = |v: u64| (v > 0).then_some(v);
        CopyProgress {
            files: p.files.load(Ordering::Relaxed),
            bytes: p.bytes.load(Ordering::Relaxed),
            total_files: known(p.total_files.load(Ordering::Relaxed)),
            total_bytes: known(p.total_bytes.load(Ordering::Relaxed)),
        }
    }
}

/// A name for a snapshot made without one: the time (UTC, to the second) and a suffix
/// that keeps two made in the same second apart.
fn generated_name() -> String {
    let now = std::time::SystemTime::now();
    let stamp = utc_stamp(now);
    let nanos = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("snap-{stamp}-{:04x}", (nanos >> 8) & 0xffff)
}

/// A time as `20261201T233944` (UTC, to the second): for names.
pub(super) fn utc_stamp(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace([':', '-'], "")
        .trim_end_matches('Z')
        .to_string()
}

impl Service {
    /// Why the last attempt at this snapshot on this host failed, if it did.
    fn failure(&self, volume: &str, name: &str) -> Option<String> {
        self.snapshot_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(volume.to_string(), name.to_string()))
            .cloned()
    }

    pub(super) fn snapshot_view(
        &self,
        volume: &str,
        name: &str,
        s: &SnapshotRecord,
    ) -> SnapshotView {
        let progress = self
            .snapshot_copies
            .get(&(volume.to_string(), name.to_string()))
            .filter(|_| s.state == SnapshotState::Making)
            .map(|j| CopyProgress::of(&j.progress));
        let failed = self.failure(volume, name);
        let consistency = if s.mounted_on.is_empty() {
            "consistent: the volume was mounted nowhere when the copy began".to_string()
        } else {
            format!(
                "crash-consistent at best: mounted on {} while copied (each file as it was when read; stop the containers for a consistent copy)",
                s.mounted_on.join(", ")
            )
        };
        SnapshotView {
            volume: volume.to_string(),
            name: name.to_string(),
            state: s.state.as_str().to_string(),
            created_at: rfc3339(s.created_at),
            created_by: s.node.clone(),
            mounted_on: s.mounted_on.clone(),
            consistency,
            path: self
                .shared()
                .snapshot_dir(volume, name)
                .display()
                .to_string(),
            method: s.copy.as_ref().map(|c| c.method().to_string()),
            copy: s.copy.clone(),
            progress,
            failed,
        }
    }

    /// Begins a snapshot of `volume` named `name` (or a generated name) and returns at
    /// once; the copy goes on in the background (poll [`Service::snapshot_get`]).
    pub async fn snapshot_create(&self, volume: &str, name: Option<&str>) -> Result<SnapshotView> {
        validate_name(volume)?;
        let name = match name {
            Some(n) => {
                validate_snapshot_name(n)?;
                n.to_string()
            }
            None => generated_name(),
        };
        // Registered before the record exists, so that a delete arriving right after
        // the Begin finds the copy to stop.
        let key = (volume.to_string(), name.clone());
        let job = self.snapshot_copies.start(key.clone(), ()).map_err(|_| {
            Error::Snapshot(format!(
                "snapshot {volume}@{name} is being made on this host already; choose another name"
            ))
        })?;
        let record = match self
            .store
            .snapshot_step(volume, &name, &self.node, SnapshotStep::Begin)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                self.snapshot_copies.remove(&key, &job);
                return Err(e);
            }
        };
        self.snapshot_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        let svc = self.me.upgrade().ok_or(Error::ShuttingDown)?;
        tokio::spawn(async move { svc.make_snapshot(key, job).await });
        let s = &record.snapshots[&name];
        Ok(self.snapshot_view(volume, &name, s))
    }

    /// The background half of [`Service::snapshot_create`].
    async fn make_snapshot(self: Arc<Self>, key: (String, String), job: Arc<SnapshotCopy>) {
        let progress = job.progress.clone();
        let (volume, name) = (key.0.clone(), key.1.clone());
        let shared = self.shared().clone();
        let p = progress.clone();
        let (v, n) = (volume.clone(), name.clone());
        // No health ticket: a copy is long by nature, and its length says nothing about
        // the export (a ticket held that long would mark the export stalled). The copy
        // permit bounds how many run at once (each holds descriptors).
        let _permit = self.copy_slots.clone().acquire_owned().await;
        // The volume's usage, if it can be had quickly and whole, says how far the copy got.
        if let Some(u) = self.usage_of(&volume).await.filter(|u| u.complete) {
            progress.expect(u.files, u.bytes);
        }
        let copied = crate::runtime::deadline::unbounded("copying the snapshot", move || {
            let src = shared.open_data_dir(&v)?;
            let dst = shared.make_snapshot_dir(&v, &n)?;
            // A snapshot is the volume's data as it was, kept inert on the export (never
            // mounted): a faithful copy, privileges included. Copies that become volumes
            // (restores, clones) are the ones that drop them by default.
            crate::export::treecopy::copy_tree(
                &src,
                &dst,
                &p,
                crate::export::treecopy::Privileges::Keep,
            )
            .map_err(|e| {
                let at = if e.path.as_os_str().is_empty() {
                    ".".into()
                } else {
                    e.path.display().to_string()
                };
                Error::io(
                    format!("copying volume {v} into snapshot {n}, at {at}"),
                    e.source,
                )
            })
        })
        .await
        .and_then(|copied| copied);
        let outcome = match copied {
            Ok(report) => {
                let finish = SnapshotStep::Finish(report.clone());
                match self
                    .store
                    .snapshot_step(&volume, &name, &self.node, finish)
                    .await
                {
                    Ok(_) => {
                        tracing::info!(volume = %volume, snapshot = %name, method = report.method(), files = report.files, bytes = report.bytes, ms = report.millis, "snapshot complete");
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        job.finish(outcome.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        self.snapshot_copies.remove(&key, &job);
        if let Err(e) = outcome {
            tracing::warn!(volume = %volume, snapshot = %name, "snapshot failed: {e}; deleting what was copied");
            {
                let mut failures = self
                    .snapshot_failures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                // Kept for whoever polls, not forever.
                if failures.len() >= 256 {
                    failures.clear();
                }
                failures.insert(key, e.to_string());
            }
            self.discard_snapshot(&volume, &name).await;
        }
    }

    /// Marks a snapshot deleted, deletes its files, forgets it; logs what fails (the next
    /// start or `caravan doctor --repair` finishes it).
    async fn discard_snapshot(&self, volume: &str, name: &str) {
        // Retried: a snapshot left `making` by this live incarnation could be deleted
        // by nobody else.
        let mut wait = Duration::from_millis(500);
        for attempt in 1..=8 {
            match self
                .store
                .snapshot_step(volume, name, &self.node, SnapshotStep::Delete)
                .await
            {
                Ok(_) => break,
                // Deleted meanwhile (by a delete that arrived during the copy): the files
                // this node made are still its to delete.
                Err(Error::NoSuchSnapshot { .. }) => break,
                Err(e) if attempt == 8 => {
                    tracing::warn!(volume = %volume, snapshot = %name, "could not mark the snapshot deleted: {e}; its next start deletes it");
                    return;
                }
                Err(_) => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(10));
                }
            }
        }
        self.delete_snapshot_files(volume, name).await;
    }

    pub(super) async fn delete_snapshot_files(&self, volume: &str, name: &str) {
        let shared = self.shared().clone();
        let (v, n) = (volume.to_string(), name.to_string());
        let removed = crate::runtime::deadline::unbounded("deleting the snapshot", move || {
            shared.remove_snapshot_dir(&v, &n)
        })
        .await
        .and_then(|removed| removed);
        if let Err(e) = removed {
            tracing::warn!(volume = %volume, snapshot = %name, "deleting the snapshot's files: {e}");
            return;
        }
        match self
            .store
            .snapshot_step(volume, name, &self.node, SnapshotStep::Forget)
            .await
        {
            Ok(_) => tracing::info!(volume = %volume, snapshot = %name, "snapshot deleted"),
            Err(e) => {
                tracing::warn!(volume = %volume, snapshot = %name, "forgetting the deleted snapshot: {e}")
            }
        }
    }

    /// Deletes a snapshot: marked at once (it is no longer listed), its files deleted in
    /// the background. A snapshot this host is making is stopped and deleted.
    pub async fn snapshot_delete(&self, volume: &str, name: &str) -> Result<SnapshotView> {
        validate_name(volume)?;
        validate_snapshot_name(name)?;
        let key = (volume.to_string(), name.to_string());
        let making_here = self.snapshot_copies.get(&key);
        if let Some(job) = &making_here {
            // Its own copy deletes it once stopped.
            job.stop();
        }
        let record = self
            .store
            .snapshot_step(volume, name, &self.node, SnapshotStep::Delete)
            .await?;
        let view = self.snapshot_view(volume, name, &record.snapshots[name]);
        let svc = self.me.upgrade().ok_or(Error::ShuttingDown)?;
        let (v, n) = key;
        tokio::spawn(async move { svc.delete_snapshot_files(&v, &n).await });
        Ok(view)
    }

    /// One snapshot, in any state.
    pub async fn snapshot_get(&self, volume: &str, name: &str) -> Result<SnapshotView> {
        validate_name(volume)?;
        validate_snapshot_name(name)?;
        let snap = self.store.snapshot().await?;
        let record = snap
            .volumes
            .get(volume)
            .ok_or_else(|| Error::NoSuchVolume(volume.to_string()))?;
        match record.snapshots.get(name) {
            Some(s) => Ok(self.snapshot_view(volume, name, s)),
            None => Err(match self.failure(volume, name) {
                Some(why) => Error::Snapshot(format!("snapshot {volume}@{name} failed: {why}")),
                None => Error::NoSuchSnapshot {
                    volume: volume.to_string(),
                    snapshot: name.to_string(),
                },
            }),
        }
    }

    /// The complete snapshots of one volume, or of all.
    pub async fn snapshot_list(&self, volume: Option<&str>) -> Result<Vec<SnapshotView>> {
        if let Some(v) = volume {
            validate_name(v)?;
        }
        let snap = self.store.snapshot().await?;
        if let Some(v) = volume {
            if !snap.volumes.contains_key(v) {
                return Err(Error::NoSuchVolume(v.to_string()));
            }
        }
        let mut out = Vec::new();
        for r in snap
            .volumes
            .values()
            .filter(|r| volume.is_none_or(|v| v == r.name))
        {
            for (name, s) in &r.snapshots {
                if s.state == SnapshotState::Complete {
                    out.push(self.snapshot_view(&r.name, name, s));
                }
            }
        }
        Ok(out)
    }

    /// At shutdown, before this node says it left: stops the copies it runs (their
    /// cleanup deletes what they made) and waits a little for them, so that no other node
    /// judges a copy abandoned while it is still being written.
    pub async fn stop_copies(&self) {
        self.snapshot_copies.stop_all();
        self.copy_jobs.stop_all();
        self.backup_jobs.stop_all();
        let t = std::time::Instant::now();
        while t.elapsed() < Duration::from_secs(3) && (self.copies_running() > 0) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn copies_running(&self) -> usize {
        self.snapshot_copies.running() + self.copy_jobs.running() + self.backup_jobs.running()
    }

    /// At start: finishes the snapshots an earlier start of this node left half-made or
    /// half-deleted (that incarnation is gone: the node name lock proves it).
    pub(super) async fn clean_interrupted_snapshots(&self) {
        let Ok(left) = self.store.snapshot().await.map(|snap| {
            let mine = self.nodes.boot_id().to_string();
            let mut left = Vec::new();
            for r in snap.volumes.values() {
                for (name, s) in &r.snapshots {
                    if s.state != SnapshotState::Complete
                        && s.node == self.node
                        && s.boot_id != mine
                    {
                        left.push((r.name.clone(), name.clone()));
                    }
                }
            }
            left
        }) else {
            return;
        };
        for (volume, name) in left {
            tracing::info!(volume = %volume, snapshot = %name, "deleting a snapshot an earlier start of this node left unfinished");
            self.discard_snapshot(&volume, &name).await;
        }
    }
}
