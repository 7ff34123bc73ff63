//! Backups from this host: `caravan backup create|list|inspect|verify|delete`.
//!
//! A backup reads a volume's data folder, or one of its snapshots (recorded as read by
//! this incarnation meanwhile, so no host deletes it), on a blocking thread, and sends it
//! to a destination outside the export (see [`crate::ops::backup`]). Backups, verifications
//! and deletions are jobs: started by one call, followed by others (`/v1/backup-jobs/ID`),
//! stopped on request or when the daemon stops. Listing and inspecting read only the
//! destination's small objects and answer at once. The destination's credentials are the
//! daemon's (its `AWS_*` environment and files), so every host that restores needs them.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{CopyProgress, Service};
use crate::core::backup_url::{BackupUrl, Dest};
use crate::core::decide::SnapshotStep;
use crate::core::error::{Error, Result};
use crate::core::names::{parse_snapshot_ref, validate_name};
use crate::core::volume::SnapshotState;
use crate::export::treecopy::Progress;
use crate::ops::backup::{format::Summary, Access, Backend, Repo};

/// What a backup job works on.
pub(super) struct BackupWork {
    kind: &'static str,
    target: String,
}

/// A backup job running or finished on this host, by its id.
pub(super) type BackupJob = crate::ops::jobs::Job<BackupWork, Value>;
pub(super) type BackupJobs = crate::ops::jobs::Jobs<String, BackupWork, Value>;

/// A job as the control API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackupJobView {
    pub id: String,
    /// `backup`, `verify` or `delete`.
    pub kind: String,
    /// What it works on: the source and destination, or the backup's URL.
    pub target: String,
    /// `running`, `done` or `failed`.
    pub state: String,
    pub progress: CopyProgress,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A complete backup, with its URL.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackupView {
    pub url: String,
    #[serde(flatten)]
    pub summary: Summary,
}

/// A name for a new backup or job: the kind, the time (UTC) and a suffix that keeps two
/// begun in the same second apart, on this host or another (a hash of the host, the
/// process and the nanoseconds: two backups to one destination must never share a name).
fn job_name(kind: &str, node: &str) -> String {
    let now = std::time::SystemTime::now();
    let nanos = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let salt = blake3::hash(format!("{node}/{}/{nanos}", std::process::id()).as_bytes());
    format!(
        "{kind}-{}-{}",
        super::snapshots::utc_stamp(now),
        crate::ops::backup::format::hex(&salt.as_bytes()[..4])
    )
}

fn view_of(id: &str, job: &BackupJob) -> BackupJobView {
    let (state, result, error) = match job.outcome() {
        None => ("running", None, None),
        Some(Ok(v)) => ("done", Some(v), None),
        Some(Err(e)) => ("failed", None, Some(e)),
    };
    BackupJobView {
        id: id.to_string(),
        kind: job.what.kind.to_string(),
        target: job.what.target.clone(),
        state: state.to_string(),
        progress: CopyProgress::of(&job.progress),
        result,
        error,
    }
}

impl Service {
    /// Starts `work` as a job of this host, on a blocking thread with the destination
    /// open (the runtime's handle drives its S3 calls).
    fn backup_job_start<F>(
        &self,
        id: String,
        kind: &'static str,
        target: String,
        dest: Dest,
        work: F,
    ) -> Result<BackupJobView>
    where
        F: FnOnce(Arc<Service>, Repo, &Progress) -> Result<Value> + Send + 'static,
    {
        let job = self
            .backup_jobs
            .start(id.clone(), BackupWork { kind, target })
            .map_err(|_| Error::Busy(format!("backup job {id} is running already")))?;
        let svc = self.me.upgrade().ok_or(Error::ShuttingDown)?;
        let rt = tokio::runtime::Handle::current();
        let j = job.clone();
        let job_id = id.clone();
        tokio::spawn(async move {
            let permit = svc.copy_slots.clone().acquire_owned().await;
            let s = svc.clone();
            let progress = j.progress.clone();
            let outcome = crate::runtime::deadline::unbounded(kind, move || {
                let _permit = permit;
                let access = if kind == "backup" {
                    Access::Write
                } else {
                    Access::Read
                };
                let backend = Backend::open(&dest, rt, &s.shared().root, access)?;
                let repo = Repo::open(backend, kind == "backup")?;
                work(s, repo, &progress)
            })
            .await
            .and_then(|outcome| outcome);
            match &outcome {
                Ok(_) => tracing::info!(job = %job_id, kind, "backup job done"),
                Err(e) => tracing::warn!(job = %job_id, kind, "backup job failed: {e}"),
            }
            j.finish(outcome.map_err(|e| e.to_string()));
        });
        Ok(view_of(&id, &job))
    }

    /// Starts a backup of `source` (`VOLUME` or `VOLUME@SNAPSHOT`) to `dest`.
    pub async fn backup_start(&self, source: &str, dest: &str) -> Result<BackupJobView> {
        let dest = Dest::parse(dest)?;
        let (volume, snapshot) = match source.split_once('@') {
            Some(_) => {
                let (v, s) = parse_snapshot_ref(source)?;
                (v, Some(s))
            }
            None => {
                validate_name(source)?;
                (source.to_string(), None)
            }
        };
        let record = self
            .store
            .snapshot()
            .await?
            .volumes
            .get(&volume)
            .cloned()
            .ok_or_else(|| Error::NoSuchVolume(volume.clone()))?;
        let consistency = match &snapshot {
            Some(s) => {
                let snap = record
                    .snapshots
                    .get(s)
                    .filter(|r| r.state == SnapshotState::Complete)
                    .ok_or_else(|| {
                        Error::Snapshot(format!("volume {volume} has no complete snapshot {s}"))
                    })?;
                self.snapshot_view(&volume, s, snap).consistency
            }
            None => {
                let on = record.mounted_on();
                if on.is_empty() {
                    "consistent: the volume was mounted nowhere when the backup began".to_string()
                } else {
                    format!(
                        "crash-consistent at best: mounted on {} while read (each file as it was when read; back up a snapshot of a stopped volume for a consistent copy)",
                        on.join(", ")
                    )
                }
            }
        };
        let id = job_name("backup", &self.node);
        let url = BackupUrl {
            dest: dest.clone(),
            id: id.clone(),
            volume: Some(volume.clone()),
        };
        let src = crate::ops::backup::Source {
            volume: volume.clone(),
            snapshot: snapshot.clone(),
            node: self.node.clone(),
            consistency,
        };
        let target = format!("{source} to {}", dest.url());
        let backup_id = id.clone();
        let dest_url = dest.url();
        self.backup_job_start(id, "backup", target, dest, move |svc, repo, progress| {
            let shared = svc.shared().clone();
            let rt = tokio::runtime::Handle::current();
            let dir = match &snapshot {
                Some(s) => {
                    // Recorded as read by this incarnation: no host deletes it meanwhile.
                    let record = rt.block_on(svc.store.snapshot_step(
                        &volume,
                        s,
                        &svc.node,
                        SnapshotStep::ReadBegin,
                    ))?;
                    if let Some(c) = record.snapshots.get(s).and_then(|r| r.copy.as_ref()) {
                        progress.expect(c.files, c.bytes);
                    }
                    shared.open_snapshot_dir(&volume, s)
                }
                None => {
                    if let Some(u) = rt.block_on(svc.usage_of(&volume)).filter(|u| u.complete) {
                        progress.expect(u.files, u.bytes);
                    }
                    shared.open_data_dir(&volume)
                }
            };
            // The parent: the last backup of this volume this node made there, as this
            // node recorded it (never chosen by what the destination says).
            let parent = match &snapshot {
                None => svc.recorded_parent(&dest_url, &volume),
                Some(_) => None,
            };
            let made = dir.and_then(|d| {
                crate::ops::backup::create(&repo, &backup_id, &d, &src, parent.as_deref(), progress)
            });
            if let (Ok(_), None) = (&made, &snapshot) {
                svc.record_parent(&dest_url, &volume, &backup_id);
            }
            if let Some(s) = &snapshot {
                if let Err(e) =
                    rt.block_on(svc.store.snapshot_step(&volume, s, &svc.node, SnapshotStep::ReadEnd))
                {
                    tracing::warn!(volume = %volume, "recording the end of the backup's read: {e}");
                }
            }
            let summary = made?;
            tracing::info!(volume = %volume, backup = %url, files = summary.tree.files, bytes = summary.tree.bytes, sent = summary.sent.new_bytes, ms = summary.millis, "backup made");
            Ok(serde_json::to_value(BackupView {
                url: url.to_string(),
                summary,
            })
            .expect("a view serializes"))
        })
    }

    /// The backup this node last made of `volume` to `dest`, if it recorded one.
    fn recorded_parent(&self, dest: &str, volume: &str) -> Option<String> {
        read_parents(&self.local.backup_parents_file()).remove(&parent_key(dest, volume))
    }

    /// Records backup `id` as the last this node made of `volume` to `dest`.
    fn record_parent(&self, dest: &str, volume: &str, id: &str) {
        let path = self.local.backup_parents_file();
        let mut parents = read_parents(&path);
        parents.insert(parent_key(dest, volume), id.to_string());
        // Bounded: the oldest keys (in key order: any will do) go first.
        while parents.len() > MAX_PARENTS {
            let first = parents.keys().next().cloned().expect("not empty");
            parents.remove(&first);
        }
        let bytes = serde_json::to_vec_pretty(&parents).expect("a map serializes");
        if let Err(e) = crate::export::layout::write_atomically(&path, &bytes) {
            tracing::warn!("recording the backup made (the next one reads every file again): {e}");
        }
    }

    /// Starts reading back and checking every chunk of a backup.
    pub fn backup_verify(&self, url: &str) -> Result<BackupJobView> {
        self.backup_url_job(url, "verify", crate::ops::backup::verify)
    }

    /// Starts deleting a backup (and freeing the chunks no other backup uses).
    pub fn backup_delete(&self, url: &str) -> Result<BackupJobView> {
        self.backup_url_job(url, "delete", crate::ops::backup::delete)
    }

    /// A job of `kind` on the one backup `url` names, its report as the result.
    fn backup_url_job<R: Serialize + 'static>(
        &self,
        url: &str,
        kind: &'static str,
        work: fn(&Repo, &str, &str, &Progress) -> Result<R>,
    ) -> Result<BackupJobView> {
        let url = BackupUrl::parse(url)?;
        let (id, node) = (url.id.clone(), self.node.clone());
        let dest = url.dest.clone();
        self.backup_job_start(
            job_name(kind, &self.node),
            kind,
            url.to_string(),
            dest,
            move |_, repo, p| {
                Ok(serde_json::to_value(work(&repo, &id, &node, p)?).expect("a report serializes"))
            },
        )
    }

    /// The complete backups at `dest`, optionally of one volume only.
    pub async fn backup_list(&self, dest: &str, volume: Option<&str>) -> Result<Vec<BackupView>> {
        let dest = Dest::parse(dest)?;
        if let Some(v) = volume {
            validate_name(v)?;
        }
        let rt = tokio::runtime::Handle::current();
        let d = dest.clone();
        let root = self.shared().root.clone();
        // As long as the call has (a destination that does not answer is given up on
        // with it).
        let summaries = crate::runtime::deadline::blocking(
            "listing backups",
            std::time::Duration::MAX,
            move || {
                let backend = match Backend::open(&d, rt, &root, Access::Read) {
                    Ok(b) => b,
                    // A folder that does not exist holds no backups.
                    Err(Error::NoSuchBackup(_)) => return Ok(Vec::new()),
                    Err(e) => return Err(e),
                };
                match Repo::open_existing(backend)? {
                    Ok(repo) => repo.summaries(),
                    // A destination never backed up to holds no backups.
                    Err(_) => Ok(Vec::new()),
                }
            },
        )
        .await
        .map_err(destination_silent)?;
        Ok(summaries
            .into_iter()
            .filter(|s| volume.is_none_or(|v| s.volume == v))
            .map(|summary| BackupView {
                url: BackupUrl {
                    dest: dest.clone(),
                    id: summary.id.clone(),
                    volume: Some(summary.volume.clone()),
                }
                .to_string(),
                summary,
            })
            .collect())
    }

    /// One backup's summary.
    pub async fn backup_inspect(&self, url: &str) -> Result<BackupView> {
        let url = BackupUrl::parse(url)?;
        let rt = tokio::runtime::Handle::current();
        let u = url.clone();
        let root = self.shared().root.clone();
        let summary = crate::runtime::deadline::blocking(
            "reading the backup",
            std::time::Duration::MAX,
            move || {
                Repo::open(Backend::open(&u.dest, rt, &root, Access::Read)?, false)?.summary(&u.id)
            },
        )
        .await
        .map_err(destination_silent)?;
        Ok(BackupView {
            url: BackupUrl {
                volume: Some(summary.volume.clone()),
                ..url
            }
            .to_string(),
            summary,
        })
    }

    pub fn backup_job(&self, id: &str) -> Result<BackupJobView> {
        let job = self.backup_job_named(id)?;
        Ok(view_of(id, &job))
    }

    /// Stops a running job (a backup stopped is not listed; what it sent is reused).
    pub fn backup_job_stop(&self, id: &str) -> Result<BackupJobView> {
        let job = self.backup_job_named(id)?;
        job.stop();
        Ok(view_of(id, &job))
    }

    fn backup_job_named(&self, id: &str) -> Result<Arc<BackupJob>> {
        self.backup_jobs.get(&id.to_string()).ok_or_else(|| {
            Error::invalid(format!(
                "no backup job {} on this host",
                crate::core::error::shown(id)
            ))
        })
    }
}

/// A control call's deadline passed while the backup destination had not answered: said
/// as that (a timeout's own message speaks of the shared export).
fn destination_silent(e: Error) -> Error {
    match e {
        Error::Timeout { what, after } => Error::Backup(format!(
            "{what}: the backup destination did not answer within {}s; check that it is reachable",
            after.as_secs()
        )),
        e => e,
    }
}

/// Destinations and volumes whose last backup a node remembers, at most.
const MAX_PARENTS: usize = 10_000;

fn parent_key(dest: &str, volume: &str) -> String {
    format!("{dest}\n{volume}")
}

/// The node's record of the backups it made last (its own state folder: trusted, but
/// bounded all the same); an unreadable one is none.
fn read_parents(path: &std::path::Path) -> std::collections::BTreeMap<String, String> {
    match std::fs::File::open(path) {
        Ok(f) => {
            use std::io::Read;
            let mut bytes = Vec::new();
            let _ = f.take(16 << 20).read_to_end(&mut bytes);
            serde_json::from_slice(&bytes).unwrap_or_default()
        }
        Err(_) => Default::default(),
    }
}
