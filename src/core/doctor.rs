//! `caravan doctor`'s judgment: facts in, findings out. The facts (a fresh read of the
//! store, the export's `volumes` folder, this host's mount table, liveness) are gathered by
//! `ops::service::doctor`, which also carries out the repairs; the table of findings and
//! repairs is there.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::core::liveness::Liveness;
use crate::core::staging::StagingTag;
use crate::core::volume::{SnapshotState, VolumeRecord};

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
    /// The store's own health: whether its thread runs, and the holds that ended in a
    /// panic.
    pub store: StoreHealth,
    /// Control files that are not regular files (put there by another machine?), by
    /// path, with what they are.
    pub planted: Vec<(String, String)>,
}

/// What the doctor needs of the store's statistics.
#[derive(Debug, Default, Clone)]
pub struct StoreHealth {
    pub thread_running: bool,
    pub session_failures: u64,
    pub last_failure: Option<String>,
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
                if s.state != SnapshotState::Complete && gone {
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
            store: StoreHealth {
                session_failures: 1,
                last_failure: Some("a panic: EBADFD".into()),
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

    fn running() -> StoreHealth {
        StoreHealth {
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
