//! `caravan doctor`: compares the metadata with the export and with this host, and says
//! what does not agree. Read-only unless asked to repair, and then only what is safe.
//!
//! The judgment is pure (`core::doctor::diagnose`: facts in, findings out, tested apart
//! from I/O);
//! [`Service::doctor`] gathers the facts (a fresh read of the store, the `volumes` folder
//! opened without following links, this host's mount table) and applies the repairs, each
//! through the normal operations and under the volume's lock, each logged.
//!
//! | finding | repaired by `--repair` |
//! |---|---|
//! | `data_without_record`: a volume folder with data but no record (the store lost or rebuilt) | the record is created again from its `volume.json` (the data is adopted) |
//! | `counted_not_mounted`: this node counts mounts of a volume it has not bind-mounted | this node's counts of it are unmounted |
//! | `mounted_not_counted`: a bind mount on this host that no count of this node backs | the bind mount is removed (lazily) |
//! | `record_without_data`: a record whose data folder is gone | no: restore the folder, or `caravan delete` |
//! | `volume_folder_refused`: a volume folder that is a link or not a folder | no: move it away by hand |
//! | `dead_node_mounts`: mounts counted for a node judged dead | no need: they no longer block a remove; the node drops them when it starts |
//! | `dead_holder`: an exclusive volume held by a dead node | no: `caravan takeover NAME` |
//! | `trash_leftovers`: entries in the trash | no: the next start of any daemon deletes them |
//! | `abandoned_snapshot`: a snapshot left half-made or half-deleted by an incarnation judged dead | its files and record are deleted (decided again under the lock) |
//! | `abandoned_copy`: a restore's or clone's staging folder left by an incarnation judged dead | the folder is deleted |
//! | `skipped_record`: a stored record that fails its checks | no: upgrade the node that wrote it, or remove it by hand |
//! | `store_stopped`, `store_failures`: sled's health (its thread, holds that failed inside it) | no: restart the daemon |
//! | `control_file_refused`: a control file (the generation hint, a lock, the store id, a heartbeat) that is not a regular file | no: the hint is replaced by the next commit; the others are never opened, remove them by hand |

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::Service;
pub use crate::core::doctor::{diagnose, DoctorReport, Facts, Finding, Folder, StoreHealth};
use crate::core::error::{Error, Result};
use crate::core::staging::StagingTag;
use crate::core::volume::{VolumeOptions, VolumeRecord};

/// The control files that exist and are not regular files: the generation hint, the
/// cluster lock, the store id, and the heartbeat and node-name lock files (looked at, never
/// followed or opened).
fn planted_control_files(pinned: &crate::export::layout::SharedLayout) -> Vec<(String, String)> {
    let control = pinned.control_dir();
    let mut paths: Vec<std::path::PathBuf> = ["generation", "lock", "store-id"]
        .iter()
        .map(|n| control.join(n))
        .collect();
    let nodes = pinned.nodes_dir();
    if let Ok(entries) = std::fs::read_dir(pinned.at(&nodes)) {
        paths.extend(
            entries
                .flatten()
                .map(|e| e.file_name())
                .filter(|n| {
                    let n = n.to_string_lossy();
                    n.ends_with(".json") || n.ends_with(".lock")
                })
                .map(|n| nodes.join(n)),
        );
    }
    paths
        .into_iter()
        .filter_map(|p| match std::fs::symlink_metadata(pinned.at(&p)) {
            Ok(m) if !m.file_type().is_file() => Some((
                p.display().to_string(),
                crate::export::beneath::entry_kind(&pinned.at(&p)),
            )),
            _ => None,
        })
        .collect()
}

/// Whether a volume folder holds a `volume.json` (looked at without following links).
fn has_record_file(volume_dir: &std::fs::File) -> bool {
    crate::export::beneath::open(
        volume_dir,
        Path::new("volume.json"),
        nix::fcntl::OFlag::O_PATH,
        nix::sys::stat::Mode::empty(),
    )
    .is_ok()
}

/// The options a `volume.json` records, read without following links and only if it is a
/// small regular file (its type checked on an `O_PATH` handle before it is opened for
/// reading, so that a planted device is never opened).
fn recorded_options(volume_dir: std::fs::File, name: &str) -> Result<VolumeOptions> {
    use std::io::Read;
    const MAX: u64 = 64 << 10;
    let not_regular = || {
        Error::invalid(format!(
            "volume.json of {name} is not a regular file of at most {MAX} bytes"
        ))
    };
    let (file, st) =
        match crate::export::beneath::open_regular(&volume_dir, Path::new("volume.json"), 0) {
            Ok(opened) => opened,
            // Gone since the scan: removed with on_delete=retain (which deletes it), so its
            // data is kept by design and not a volume to bring back with guessed options.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::Busy(format!(
                "{name} has no volume.json now (removed with on_delete=retain?); nothing changed"
            )))
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
                return Err(not_regular());
            }
            Err(e) => return Err(Error::io(format!("reading volume.json of {name}"), e)),
        };
    if crate::export::beneath::size_of(&st) > MAX {
        return Err(not_regular());
    }
    let mut bytes = Vec::new();
    file.take(MAX)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(format!("reading volume.json of {name}"), e))?;
    let record: VolumeRecord = serde_json::from_slice(&bytes)
        .map_err(|e| Error::invalid(format!("volume.json of {name} does not decode: {e}")))?;
    // Written on the export, where anyone may have written it: the options are checked as
    // a Create's are (mode permission bits only, and so on).
    let shown = record.options.to_map();
    VolumeOptions::from_map(shown.iter().map(|(k, v)| (*k, v.as_str())))
        .map_err(|e| Error::invalid(format!("volume.json of {name}: {e}")))
}

impl Service {
    /// Checks the metadata against the export and this host; with `repair`, fixes what is
    /// safe to fix (see the module documentation).
    pub async fn doctor(&self, repair: bool) -> Result<DoctorReport> {
        let facts = self.doctor_facts().await?;
        let mut findings = diagnose(&facts);
        if repair {
            for f in findings.iter_mut().filter(|f| f.repair.is_some()) {
                let Some(name) = f.volume.clone() else {
                    continue;
                };
                let item = f.item.clone().unwrap_or_default();
                let result = match f.kind.as_str() {
                    "abandoned_snapshot" => self.delete_abandoned_snapshot(&name, &item).await,
                    "abandoned_copy" => self.delete_abandoned_copy(&item).await,
                    "data_without_record" => self.adopt(&name).await,
                    "counted_not_mounted" => self.drop_counts_here(&name).await,
                    "mounted_not_counted" => self.unbind_uncounted(&name).await,
                    _ => continue,
                };
                match &result {
                    Ok(()) => {
                        tracing::info!(volume = %name, kind = %f.kind, "doctor repaired: {}", f.repair.as_deref().unwrap_or(""))
                    }
                    Err(e) => {
                        tracing::warn!(volume = %name, kind = %f.kind, "doctor could not repair: {e}")
                    }
                }
                f.repaired = Some(result.map_err(|e| e.to_string()));
            }
        }
        Ok(DoctorReport {
            node: self.node.clone(),
            volumes_checked: facts.records.len(),
            findings,
        })
    }

    async fn doctor_facts(&self) -> Result<Facts> {
        let shared = self.shared().clone();
        let mounts_dir = self.local.mounts_dir();
        let (folders, trash_entries, mounted_here, planted) = self
            .blocking("checking the export for doctor", move || {
                let pinned = shared.pinned()?;
                let mut folders = BTreeMap::new();
                let volumes = pinned.volumes_dir();
                let entries = std::fs::read_dir(pinned.at(&volumes))
                    .map_err(|e| Error::io(format!("reading {}", volumes.display()), e))?;
                for entry in entries.flatten() {
                    let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                        continue;
                    };
                    if crate::core::names::validate_name(&name).is_err() {
                        continue;
                    }
                    let folder = match pinned.open_volume_dir(&name) {
                        Err(e) => Folder::Refused(e.to_string()),
                        Ok(dir) => match pinned.open_data_dir(&name) {
                            Ok(_) => Folder::WithData {
                                recorded: has_record_file(&dir),
                            },
                            Err(_) => Folder::WithoutData,
                        },
                    };
                    folders.insert(name, folder);
                }
                let trash = pinned.trash_dir();
                let trash_entries = std::fs::read_dir(pinned.at(&trash))
                    .map(|d| d.flatten().count())
                    .unwrap_or(0);
                let planted = planted_control_files(&pinned);
                // Direct children with valid volume names only: the mounts folder itself
                // is a mount point in the managed plugin (its PropagatedMount).
                let mounted: BTreeSet<String> = crate::export::mounts::mounted_below(&mounts_dir)?
                    .into_iter()
                    .filter(|n| crate::core::names::validate_name(n).is_ok())
                    .collect();
                Ok((folders, trash_entries, mounted, planted))
            })
            .await?;
        let shared = self.shared().clone();
        let staging = self
            .blocking("reading the staging folder", move || {
                shared.staging_entries()
            })
            .await
            .unwrap_or_default();
        // Read after the export: a volume created meanwhile has its record (a record
        // without its folder is the finding that must never be a false one).
        let snap = self.store.snapshot().await?;
        let mut named: BTreeSet<(String, String)> = snap
            .volumes
            .values()
            .flat_map(|r| r.snapshots.values())
            .filter(|s| s.state != crate::core::volume::SnapshotState::Complete)
            .map(|s| (s.node.clone(), s.boot_id.clone()))
            .collect();
        named.extend(
            staging
                .iter()
                .filter_map(|t| StagingTag::parse(t))
                .map(|t| (t.node, t.boot_id)),
        );
        let dead_incarnations = named
            .into_iter()
            .filter(|(n, b)| !self.nodes.judge(n, Some(b)).is_alive())
            .collect();
        let liveness = snap
            .volumes
            .values()
            .flat_map(|r| r.mounts.keys().chain(r.holder.iter().map(|h| &h.node)))
            .map(|n| (n.clone(), self.nodes.liveness(n)))
            .collect();
        Ok(Facts {
            node: self.node.clone(),
            records: snap
                .volumes
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            skipped: snap.unreadable.clone(),
            folders,
            mounted_here,
            liveness,
            trash_entries,
            staging,
            dead_incarnations,
            store: {
                let s = self.store.stats();
                StoreHealth {
                    thread_running: s.thread_running,
                    session_failures: s.session_failures,
                    last_failure: s.last_failure,
                }
            },
            planted,
        })
    }

    /// Deletes a snapshot an incarnation that is gone left unfinished: the store decides
    /// again under the lock (a live maker's is refused), then the files go.
    async fn delete_abandoned_snapshot(&self, volume: &str, snap: &str) -> Result<()> {
        self.store
            .snapshot_step(
                volume,
                snap,
                &self.node,
                crate::core::decide::SnapshotStep::Delete,
            )
            .await?;
        self.delete_snapshot_files(volume, snap).await;
        Ok(())
    }

    /// Deletes a staging folder whose maker is judged dead, judged again now.
    async fn delete_abandoned_copy(&self, tag: &str) -> Result<()> {
        let Some(StagingTag { node, boot_id, .. }) = StagingTag::parse(tag) else {
            return Err(Error::invalid(format!(
                "{} is not a staging folder's name",
                crate::core::error::shown(tag)
            )));
        };
        if self.nodes.judge(&node, Some(&boot_id)).is_alive() {
            return Err(Error::Busy(format!(
                "node {node}'s incarnation is alive again; nothing changed"
            )));
        }
        let shared = self.shared().clone();
        let t = tag.to_string();
        self.blocking("deleting a staging folder", move || {
            shared.remove_staging(&t)
        })
        .await
    }

    /// Creates the record of a volume folder again from its `volume.json`. Checked again
    /// first, under the volume's lock: a remove on this node holds that lock until its data
    /// is disposed of, so a folder on its way to the trash is never adopted back.
    async fn adopt(&self, name: &str) -> Result<()> {
        {
            let _guard = self.locks.lock(name).await;
            let snap = self.store.snapshot().await?;
            if snap.volumes.contains_key(name) {
                return Err(Error::Busy(format!(
                    "{name} has a record now; nothing changed"
                )));
            }
        }
        let shared = self.shared().clone();
        let n = name.to_string();
        let mut options = self
            .blocking("reading volume.json", move || {
                let pinned = shared.pinned()?;
                recorded_options(pinned.open_volume_dir(&n)?, &n)
            })
            .await?;
        // The data on the export is what is adopted. A source the file names (a backup,
        // a volume, a snapshot to copy from) is never acted on: the file is the export's,
        // and another machine may have written it to make this node restore, as root,
        // from wherever it says.
        if let Some(source) = options.source() {
            tracing::warn!(volume = %name, "volume.json names a source ({source}); not acted on: the data on the export is adopted as it is");
            options.from_snapshot = None;
            options.from_volume = None;
            options.from_backup = None;
        }
        self.create(name, options).await.map(drop)
    }

    /// Unmounts every count this node holds of a volume it has not bind-mounted. Under
    /// the volume's lock, with the counts and the mount table read again there: a Mount in
    /// progress (it counts first, then binds, holding the lock) is never undone.
    async fn drop_counts_here(&self, name: &str) -> Result<()> {
        crate::core::names::validate_name(name)?;
        let _guard = self.locks.lock(name).await;
        let ids: Vec<(String, u32)> = {
            let snap = self.store.snapshot().await?;
            if snap.unreadable.contains_key(name) {
                return Err(Error::Busy(format!(
                    "the record of {name} cannot be read; nothing changed"
                )));
            }
            let Some(r) = snap.volumes.get(name) else {
                return Ok(());
            };
            r.mounts
                .get(&self.node)
                .map(|ids| ids.iter().map(|(id, n)| (id.clone(), *n)).collect())
                .unwrap_or_default()
        };
        // A mount table that cannot be read is an error here, never "not mounted".
        if self.mounted_now(name).await? {
            return Err(Error::Busy(format!(
                "{name} is bind-mounted on this host now; nothing changed"
            )));
        }
        // Not mounted, whatever this process believed (unmounted by hand): nothing to
        // unmount once the counts are gone.
        self.bound_here().remove(name);
        for (id, count) in ids {
            // Each unmount takes one count; a count stored as 0 needs one too.
            for _ in 0..count.clamp(1, 1024) {
                self.unmount_locked(name, &id).await?;
            }
        }
        Ok(())
    }

    /// Removes a bind mount that no count of this node backs.
    async fn unbind_uncounted(&self, name: &str) -> Result<()> {
        crate::core::names::validate_name(name)?;
        let _guard = self.locks.lock(name).await;
        let counted = {
            let snap = self.store.snapshot().await?;
            if snap.unreadable.contains_key(name) {
                return Err(Error::Busy(format!(
                    "the record of {name} cannot be read; nothing changed"
                )));
            }
            snap.volumes
                .get(name)
                .map_or(0, |r| r.node_mount_count(&self.node))
        };
        if counted > 0 {
            return Err(Error::Busy(format!(
                "{name} is counted as mounted here now; nothing changed"
            )));
        }
        let target = self.local.mountpoint(name);
        self.blocking("unmounting", move || crate::export::mounts::unbind(&target))
            .await?;
        self.bound_here().remove(name);
        Ok(())
    }
}
