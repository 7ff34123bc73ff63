//! `caravan doctor`: compares the metadata with the export and with this host, and says
//! what does not agree. Read-only unless asked to repair, and then only what is safe.
//!
//! The judgment is pure ([`diagnose`]: facts in, findings out, tested apart from I/O);
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

use serde::{Deserialize, Serialize};

use super::Service;
use crate::core::error::{Error, Result};
use crate::core::liveness::Liveness;
use crate::core::staging::StagingTag;
use crate::core::volume::{VolumeOptions, VolumeRecord};

/// What one check found.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Finding {
    pub kind: String,
    /// The volume it is about, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    pub detail: String,
    /// What `--repair` does about it; `None` when it is left to the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair: Option<String>,
    /// The snapshot or staging folder it is about, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<String>,
    /// Set by a repair run: whether the repair succeeded, or why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repaired: Option<std::result::Result<(), String>>,
}

/// What `caravan doctor` answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DoctorReport {
    pub node: String,
    pub volumes_checked: usize,
    pub findings: Vec<Finding>,
}

/// One volume folder on the export, as the doctor saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum Folder {
    /// A folder with a `data` folder in it, and `volume.json` or not (a volume removed
    /// with `on_delete=retain` keeps its data and loses its `volume.json`: by design).
    WithData { recorded: bool },
    /// A folder without `data`.
    WithoutData,
    /// Not a folder, or a link: never entered.
    Refused(String),
}

/// The facts a diagnosis is made of.
#[derive(Debug, Default)]
pub struct Facts {
    pub node: String,
    pub records: BTreeMap<String, VolumeRecord>,
    /// Stored records that failed their checks, by key, with why.
    pub skipped: BTreeMap<String, String>,
    /// The folders under `<root>/volumes`, by (valid) name.
    pub folders: BTreeMap<String, Folder>,
    /// Volumes bind-mounted on this host (per its mount table).
    pub mounted_here: BTreeSet<String>,
    /// Each node's state as this node judges it; a node not listed counts as alive.
    pub liveness: BTreeMap<String, Liveness>,
    pub trash_entries: usize,
    /// The staging folders (restores and clones being made, or left).
    pub staging: Vec<String>,
    /// Incarnations (node, boot id) named by unfinished snapshots and staging folders,
    /// judged dead by this node; not listed: alive.
    pub dead_incarnations: BTreeSet<(String, String)>,
    /// The store's own health: whether its thread runs, and the holds that failed inside
    /// sled.
    pub store: crate::cluster::store::StoreStats,
    /// Control files that are not regular files (put there by another machine?), by
    /// path, with what they are.
    pub planted: Vec<(String, String)>,
}

impl Facts {
    fn dead(&self, node: &str) -> bool {
        self.liveness.get(node) == Some(&Liveness::Dead)
    }
}

fn finding(kind: &str, volume: Option<&str>, detail: String, repair: Option<&str>) -> Finding {
    Finding {
        kind: kind.to_string(),
        volume: volume.map(str::to_string),
        detail,
        repair: repair.map(str::to_string),
        item: None,
        repaired: None,
    }
}

/// The findings from `facts`, volume by volume, then the cluster-wide ones.
pub fn diagnose(facts: &Facts) -> Vec<Finding> {
    let mut out = Vec::new();
    let names: BTreeSet<&String> = facts.records.keys().chain(facts.folders.keys()).collect();
    for name in names {
        let record = facts.records.get(name);
        let folder = facts.folders.get(name);
        let v = Some(name.as_str());
        match (record, folder) {
            (Some(_), None | Some(Folder::WithoutData)) => out.push(finding(
                "record_without_data",
                v,
                format!("volume {name} is recorded but its data folder is gone"),
                None,
            )),
            (None, Some(Folder::WithData { recorded: true }))
                if !facts.skipped.contains_key(name) =>
            {
                out.push(finding(
                    "data_without_record",
                    v,
                    format!("a data folder for {name} is on the export but no volume records it"),
                    Some("create the volume again from its volume.json, adopting the data"),
                ))
            }
            _ => {}
        }
        if let Some(Folder::Refused(why)) = folder {
            out.push(finding("volume_folder_refused", v, why.clone(), None));
        }
        // A record that could not be read says nothing about counts: never a mount
        // finding (a newer node's record of a volume mounted here, say).
        if facts.skipped.contains_key(name) {
            continue;
        }
        let counted = record.map_or(0, |r| r.node_mount_count(&facts.node));
        let mounted = facts.mounted_here.contains(name);
        if counted > 0 && !mounted {
            out.push(finding(
                "counted_not_mounted",
                v,
                format!(
                    "this node counts {counted} mount(s) of {name} but has not bind-mounted it"
                ),
                Some("unmount this node's counts of it"),
            ));
        }
        if counted == 0 && mounted {
            out.push(finding(
                "mounted_not_counted",
                v,
                format!("{name} is bind-mounted on this host, but this node counts no mount of it"),
                Some("remove the bind mount"),
            ));
        }
        if let Some(r) = record {
            for (snap, s) in &r.snapshots {
                let gone = facts
                    .dead_incarnations
                    .contains(&(s.node.clone(), s.boot_id.clone()));
                if s.state != crate::core::volume::SnapshotState::Complete && gone {
                    let mut f = finding(
                        "abandoned_snapshot",
                        v,
                        format!(
                            "snapshot {name}@{snap} was left {} by node {}, whose incarnation is gone",
                            s.state.as_str(),
                            s.node
                        ),
                        Some("delete the snapshot's files and its record"),
                    );
                    f.item = Some(snap.clone());
                    out.push(f);
                }
            }
            for node in r.mounts.keys().filter(|n| facts.dead(n)) {
                out.push(finding(
                    "dead_node_mounts",
                    v,
                    format!(
                        "node {node}, judged dead, still counts {} mount(s) of {name}; they no longer block a remove",
                        r.node_mount_count(node)
                    ),
                    None,
                ));
            }
            if let Some(h) = r.holder.as_ref().filter(|h| facts.dead(&h.node)) {
                out.push(finding(
                    "dead_holder",
                    v,
                    format!(
                        "exclusive volume {name} is held by node {}, judged dead; take it over with `caravan takeover {name}`",
                        h.node
                    ),
                    None,
                ));
            }
        }
    }
    for (key, why) in &facts.skipped {
        out.push(finding(
            "skipped_record",
            Some(&crate::core::error::cut(key)),
            format!("the stored record is left untouched: {why}"),
            None,
        ));
    }
    if !facts.store.thread_running {
        out.push(finding(
            "store_stopped",
            None,
            "the store's thread has stopped: nothing can be committed; restart the daemon".into(),
            None,
        ));
    }
    if facts.store.session_failures > 0 {
        out.push(finding(
            "store_failures",
            None,
            format!(
                "{} hold(s) of the lock ended in a panic since the start (caught; each next hold reopened the store), the last: {}",
                facts.store.session_failures,
                facts.store.last_failure.as_deref().unwrap_or("?")
            ),
            None,
        ));
    }
    for tag in &facts.staging {
        let Some(StagingTag {
            volume,
            node,
            boot_id,
            ..
        }) = StagingTag::parse(tag)
        else {
            continue;
        };
        if facts.dead_incarnations.contains(&(node.clone(), boot_id)) {
            let mut f = finding(
                "abandoned_copy",
                Some(&volume),
                format!(
                    "a copy into volume {volume} was left in .caravan/staging/{tag} by node {node}, whose incarnation is gone"
                ),
                Some("delete the staging folder"),
            );
            f.item = Some(tag.clone());
            out.push(f);
        }
    }
    for (path, kind) in &facts.planted {
        let what = if path.ends_with("/generation") {
            "the next commit replaces it (caravan never opens it)"
        } else {
            "caravan refuses to open it (calls that need it fail): remove it by hand"
        };
        out.push(finding(
            "control_file_refused",
            None,
            format!("{path} is {kind}, not a regular file (put there by another machine?): {what}"),
            None,
        ));
    }
    if facts.trash_entries > 0 {
        out.push(finding(
            "trash_leftovers",
            None,
            format!(
                "{} entr(y/ies) in the trash; the next start of any daemon deletes them",
                facts.trash_entries
            ),
            None,
        ));
    }
    out
}

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
            store: self.store.stats(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::volume::{Holder, VolumeOptions};

    fn record(name: &str) -> VolumeRecord {
        VolumeRecord::new(name, "a", VolumeOptions::default(), 0)
    }

    fn kinds(facts: &Facts) -> Vec<(String, Option<String>)> {
        diagnose(facts)
            .into_iter()
            .map(|f| (f.kind, f.volume))
            .collect()
    }

    #[test]
    fn a_consistent_cluster_has_no_findings() {
        let mut f = Facts {
            node: "a".into(),
            store: running(),
            ..Default::default()
        };
        let mut r = record("web");
        r.add_mount("a", "boot", "c1");
        f.records.insert("web".into(), r);
        f.folders
            .insert("web".into(), Folder::WithData { recorded: true });
        // Retained data (no volume.json) is there by design.
        f.folders
            .insert("kept".into(), Folder::WithData { recorded: false });
        f.mounted_here.insert("web".into());
        assert_eq!(kinds(&f), vec![]);
    }

    #[test]
    fn each_disagreement_is_found_with_its_repair() {
        let mut f = Facts {
            node: "a".into(),
            trash_entries: 2,
            store: crate::cluster::store::StoreStats {
                session_failures: 1,
                last_failure: Some("sled: EBADFD".into()),
                ..running()
            },
            ..Default::default()
        };
        f.records.insert("lost".into(), record("lost"));
        f.folders
            .insert("orphan".into(), Folder::WithData { recorded: true });
        let mut counted = record("counted");
        counted.add_mount("a", "boot", "c1");
        f.records.insert("counted".into(), counted);
        f.folders
            .insert("counted".into(), Folder::WithData { recorded: true });
        f.records.insert("bound".into(), record("bound"));
        f.folders
            .insert("bound".into(), Folder::WithData { recorded: true });
        f.mounted_here.insert("bound".into());
        let mut dead = record("dead");
        dead.add_mount("b", "boot-b", "c9");
        dead.holder = Some(Holder {
            node: "b".into(),
            generation: 1,
            boot_id: Some("boot-b".into()),
        });
        f.records.insert("dead".into(), dead);
        f.folders
            .insert("dead".into(), Folder::WithData { recorded: true });
        f.liveness.insert("b".into(), Liveness::Dead);
        f.folders
            .insert("link".into(), Folder::Refused("a link".into()));
        f.skipped.insert("bad".into(), "does not decode".into());
        let found = diagnose(&f);
        let kinds: Vec<(&str, Option<&str>, bool)> = found
            .iter()
            .map(|x| (x.kind.as_str(), x.volume.as_deref(), x.repair.is_some()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("mounted_not_counted", Some("bound"), true),
                ("counted_not_mounted", Some("counted"), true),
                ("dead_node_mounts", Some("dead"), false),
                ("dead_holder", Some("dead"), false),
                ("volume_folder_refused", Some("link"), false),
                ("record_without_data", Some("lost"), false),
                ("data_without_record", Some("orphan"), true),
                ("skipped_record", Some("bad"), false),
                ("store_failures", None, false),
                ("trash_leftovers", None, false),
            ]
        );
    }

    fn running() -> crate::cluster::store::StoreStats {
        crate::cluster::store::StoreStats {
            thread_running: true,
            ..Default::default()
        }
    }

    #[test]
    fn unfinished_snapshots_and_copies_of_gone_incarnations_are_found_and_live_ones_are_not() {
        use crate::core::volume::{SnapshotRecord, SnapshotState};
        let snap = |node: &str, boot: &str, state| SnapshotRecord {
            created_at: 1,
            node: node.into(),
            boot_id: boot.into(),
            state,
            mounted_on: Vec::new(),
            copy: None,
            readers: Vec::new(),
        };
        let mut f = Facts {
            node: "a".into(),
            store: running(),
            ..Default::default()
        };
        let mut r = record("web");
        r.snapshots
            .insert("left".into(), snap("b", "b1", SnapshotState::Making));
        r.snapshots
            .insert("going".into(), snap("b", "b1", SnapshotState::Deleting));
        r.snapshots
            .insert("busy".into(), snap("c", "c1", SnapshotState::Making));
        r.snapshots
            .insert("done".into(), snap("b", "b1", SnapshotState::Complete));
        f.records.insert("web".into(), r);
        f.folders
            .insert("web".into(), Folder::WithData { recorded: true });
        f.staging = vec![
            "new@b@b1@17".into(),
            "other@c@c1@18".into(),
            "not-a-tag".into(),
        ];
        f.dead_incarnations.insert(("b".into(), "b1".into()));
        let found: Vec<(String, Option<String>, Option<String>)> = diagnose(&f)
            .into_iter()
            .map(|x| (x.kind, x.volume, x.item))
            .collect();
        let s =
            |k: &str, v: &str, i: &str| (k.to_string(), Some(v.to_string()), Some(i.to_string()));
        assert_eq!(
            found,
            [
                s("abandoned_snapshot", "web", "going"),
                s("abandoned_snapshot", "web", "left"),
                s("abandoned_copy", "new", "new@b@b1@17"),
            ]
        );
    }

    #[test]
    fn a_volume_whose_record_cannot_be_read_has_no_mount_findings() {
        let mut f = Facts {
            node: "a".into(),
            store: running(),
            ..Default::default()
        };
        f.skipped.insert("newer".into(), "format 9".into());
        f.folders
            .insert("newer".into(), Folder::WithData { recorded: true });
        f.mounted_here.insert("newer".into());
        assert_eq!(
            kinds(&f),
            vec![("skipped_record".to_string(), Some("newer".to_string()))]
        );
    }

    #[test]
    fn a_stopped_store_is_found() {
        let f = Facts {
            node: "a".into(),
            ..Default::default()
        };
        assert_eq!(kinds(&f), vec![("store_stopped".to_string(), None)]);
    }

    #[test]
    fn a_folder_whose_record_is_skipped_is_not_offered_for_adoption() {
        let mut f = Facts {
            node: "a".into(),
            store: running(),
            ..Default::default()
        };
        f.folders
            .insert("newer".into(), Folder::WithData { recorded: true });
        f.skipped.insert("newer".into(), "format 9".into());
        assert_eq!(
            kinds(&f),
            vec![("skipped_record".to_string(), Some("newer".to_string()))]
        );
    }
}
