//! One commit's decisions: a whole batch of mutations decided at once, against the stored
//! state and an overlay of what the batch's earlier mutations did.
//!
//! The store's worker holds the cluster lock and, on a freshly loaded state, asks three
//! things of this module in turn, doing the I/O in between:
//!
//! 1. [`new_folders`]: which new volumes need a folder (made, or a staged copy moved into
//!    place) before their record may be committed: a crash in between then leaves a
//!    folder that the next create adopts, never a record without data. The worker makes
//!    them all at once (on a network filesystem each is a round trip).
//! 2. [`judged_nodes`]: whose heartbeats the decisions may consult. The worker reads each
//!    fresh (once, under the lock) before deciding, so no decision reads a file midway
//!    and none judges a live host by a view older than the lock.
//! 3. [`decide_batch`]: every mutation's outcome or refusal, the records to write, the
//!    work to do once the commit is durable (dispose of removed volumes' data), the
//!    events to log with the commit's generation, and the notes to log now.
//!
//! The rules on one record are [`crate::core::decide`]'s; the rules here are the batch's
//! own: a name removed earlier in the batch cannot be created again in it (its folder is
//! about to be disposed of), the first create of a name decides its options, a record
//! this version cannot read is never overwritten, and a reconcile looks only at the
//! volumes that name the node.

use std::collections::{BTreeMap, BTreeSet};

use crate::core::decide::{self, Committer, Event, Oracle, SnapshotStep};
use crate::core::error::{Error, Result};
use crate::core::mutation::{Mutation, Outcome};
use crate::core::volume::{Access, SnapshotState, VolumeOptions, VolumeRecord};

/// The stored state a batch is decided on.
#[derive(Clone, Copy)]
pub struct Stored<'a> {
    pub volumes: &'a dyn Volumes,
    /// Names whose stored record this version cannot read, with why.
    pub unreadable: &'a BTreeMap<String, String>,
}

/// The stored volumes by name: a map of the shell's choice (the store keeps a persistent
/// one, so that readers share it).
pub trait Volumes {
    fn get(&self, name: &str) -> Option<&VolumeRecord>;
    fn records(&self) -> Box<dyn Iterator<Item = &VolumeRecord> + '_>;
    fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

impl Volumes for BTreeMap<String, VolumeRecord> {
    fn get(&self, name: &str) -> Option<&VolumeRecord> {
        BTreeMap::get(self, name)
    }
    fn records(&self) -> Box<dyn Iterator<Item = &VolumeRecord> + '_> {
        Box::new(self.values())
    }
}

/// A folder a new volume needs before its record is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFolder {
    /// The record the create will commit (its folder is named after it).
    pub record: VolumeRecord,
    /// The staging tag of an already filled copy to move into place; `None`: make the
    /// folder (adopting one that is there already).
    pub staged: Option<String>,
}

/// What became of a [`NewFolder`]: `Ok(adopted)` (whether a folder found there was
/// adopted), or why it could not be made.
pub type Made = Result<bool>;

/// The folders the batch's creates need: one per name that the stored state does not
/// have, for the first create of that name in the batch (which is the one that will make
/// the volume: nothing earlier in the batch can touch a name that is not stored).
/// Names whose record this version cannot read get none (their create is refused).
pub fn new_folders<'m>(
    stored: Stored<'_>,
    mutations: impl IntoIterator<Item = &'m Mutation>,
    now_unix: u64,
) -> Vec<NewFolder> {
    let mut seen = BTreeSet::new();
    let mut folders = Vec::new();
    for m in mutations {
        let Mutation::Create {
            name,
            options,
            node,
            staged,
        } = m
        else {
            continue;
        };
        if stored.volumes.contains(name)
            || stored.unreadable.contains_key(name)
            || !seen.insert(name.clone())
        {
            continue;
        }
        folders.push(NewFolder {
            record: VolumeRecord::new(name, node, options.clone(), now_unix),
            staged: staged.clone(),
        });
    }
    folders
}

/// The nodes whose liveness the decisions of `mutations` may ask the oracle about: every
/// node a decision on a stored record can judge (the holder of an exclusive volume, the
/// nodes that mount a volume, a snapshot's maker and readers) and the committing nodes.
/// The overlay adds no others: what a batch writes names only its committing node.
/// (`tests/sim/` checks after every decision that the oracle was asked about no other.)
pub fn judged_nodes<'m>(
    stored: Stored<'_>,
    mutations: impl IntoIterator<Item = &'m Mutation>,
) -> BTreeSet<String> {
    let mut nodes = BTreeSet::new();
    for m in mutations {
        let (name, node) = match m {
            Mutation::Remove { name } => (name, None),
            Mutation::Mount { name, node, .. } | Mutation::Takeover { name, node, .. } => {
                (name, Some(node))
            }
            Mutation::Snapshot { name, node, .. } => (name, Some(node)),
            // Neither judges anybody.
            Mutation::Create { .. } | Mutation::Unmount { .. } | Mutation::ReconcileNode { .. } => {
                continue
            }
        };
        nodes.extend(node.cloned());
        let Some(record) = stored.volumes.get(name) else {
            continue;
        };
        match m {
            Mutation::Remove { .. } => {
                nodes.extend(record.mounted_on().into_iter().map(str::to_string))
            }
            // Only an exclusive volume's holder is judged (a shared one has none).
            Mutation::Mount { .. } | Mutation::Takeover { .. }
                if record.options.access == Access::Exclusive =>
            {
                nodes.extend(record.holder.as_ref().map(|h| h.node.clone()));
            }
            Mutation::Snapshot { snap, step, .. } => {
                let snapshot = record.snapshots.get(snap);
                let readers = || snapshot.into_iter().flat_map(|s| s.readers.iter());
                match step {
                    SnapshotStep::Begin => {
                        nodes.extend(record.mounted_on().into_iter().map(str::to_string))
                    }
                    SnapshotStep::ReadBegin => nodes.extend(readers().map(|(n, _)| n.clone())),
                    SnapshotStep::Delete => {
                        nodes.extend(readers().map(|(n, _)| n.clone()));
                        // Its maker, when it is not complete: is the maker gone?
                        nodes.extend(
                            snapshot
                                .filter(|s| s.state != SnapshotState::Complete)
                                .map(|s| s.node.clone()),
                        );
                    }
                    SnapshotStep::Finish(_) | SnapshotStep::ReadEnd | SnapshotStep::Forget => {}
                }
            }
            _ => {}
        }
    }
    nodes
}

/// Work that must follow a durable commit (still under the lock).
#[allow(clippy::large_enum_variant)] // lives for one commit
#[derive(Debug, Clone)]
pub enum AfterCommit {
    Nothing,
    /// Move the removed volume's data aside (trash or archive).
    Dispose(VolumeRecord),
}

/// Something the shell should log while the batch is decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// A volume is removed although nodes recorded mounts of it: their incarnations are
    /// gone.
    RemovedWithStaleMounts { volume: String, stale: Vec<String> },
    /// A reconcile skipped a record of a newer format.
    NewerFormatNotReconciled { volume: String, format: u32 },
    /// Another node took this exclusive volume over while the reconciling node was away;
    /// the node's claim is dropped.
    TakenOverWhileAway { volume: String },
}

/// What a batch decided.
#[derive(Debug)]
pub struct Decisions {
    /// Per mutation, in order: its outcome and the work after the commit, or why it was
    /// refused (a refusal changes nothing).
    pub results: Vec<Result<(Outcome, AfterCommit)>>,
    /// The records to write: `Some` puts, `None` deletes. Empty: nothing to commit.
    pub overlay: BTreeMap<String, Option<VolumeRecord>>,
    /// What the batch did to exclusive volumes, logged once the commit is durable.
    pub events: Vec<Event>,
    pub notes: Vec<Note>,
    /// New folders that no create used (their making failed, or was never needed): the
    /// shell deletes those it made.
    pub unused: Vec<String>,
}

/// Decides `mutations` in order on `stored` plus the overlay of the earlier ones, with
/// the folders the shell made for [`new_folders`] (`made`, by name) and an oracle that
/// answers from heartbeats read before the batch ([`judged_nodes`]).
pub fn decide_batch<'m>(
    stored: Stored<'_>,
    mutations: impl IntoIterator<Item = &'m Mutation>,
    boot_id: &str,
    now_unix: u64,
    mut made: BTreeMap<String, (VolumeRecord, Made)>,
    oracle: &mut dyn Oracle,
) -> Decisions {
    let mut batch = Batch {
        stored,
        boot_id,
        now_unix,
        overlay: BTreeMap::new(),
        events: Vec::new(),
        notes: Vec::new(),
    };
    let results = mutations
        .into_iter()
        .map(|m| batch.decide(m, &mut made, oracle))
        .collect();
    Decisions {
        results,
        overlay: batch.overlay,
        events: batch.events,
        notes: batch.notes,
        unused: made.into_keys().collect(),
    }
}

/// A batch being decided.
struct Batch<'a> {
    stored: Stored<'a>,
    boot_id: &'a str,
    now_unix: u64,
    overlay: BTreeMap<String, Option<VolumeRecord>>,
    events: Vec<Event>,
    notes: Vec<Note>,
}

impl Batch<'_> {
    /// The record of `name` as the batch has left it so far.
    fn current(&self, name: &str) -> Option<VolumeRecord> {
        match self.overlay.get(name) {
            Some(r) => r.clone(),
            None => self.stored.volumes.get(name).cloned(),
        }
    }

    /// A name whose stored record this version cannot read is not absent: changing it
    /// would overwrite what a newer node wrote.
    fn unreadable(&self, name: &str) -> Option<Error> {
        self.stored.unreadable.get(name).map(|why| {
            Error::invalid(format!(
                "the stored record of volume {name} cannot be read by this caravan ({why}); it was probably written by a newer version: upgrade this node before changing it"
            ))
        })
    }

    fn missing(&self, name: &str) -> Error {
        self.unreadable(name)
            .unwrap_or_else(|| Error::NoSuchVolume(name.to_string()))
    }

    fn existing(&self, name: &str) -> Result<VolumeRecord> {
        self.current(name).ok_or_else(|| self.missing(name))
    }

    fn put(&mut self, record: &VolumeRecord) {
        self.overlay
            .insert(record.name.clone(), Some(record.clone()));
    }

    fn who<'n>(&'n self, node: &'n str) -> Committer<'n> {
        Committer {
            node,
            boot_id: self.boot_id,
            now_unix: self.now_unix,
        }
    }

    /// Decides one mutation. On success the overlay holds its records; on error it is
    /// untouched.
    fn decide(
        &mut self,
        m: &Mutation,
        made: &mut BTreeMap<String, (VolumeRecord, Made)>,
        oracle: &mut dyn Oracle,
    ) -> Result<(Outcome, AfterCommit)> {
        let outcome = match m {
            Mutation::Create { name, options, .. } => match self.current(name) {
                Some(existing)
                    if existing.options == *options || *options == VolumeOptions::default() =>
                {
                    Outcome::Created {
                        record: existing,
                        existed: true,
                        adopted: false,
                    }
                }
                Some(existing) => {
                    return Err(Error::Conflict {
                        name: name.clone(),
                        existing: existing.options.to_string(),
                    })
                }
                // Removed earlier in this batch: its folder goes to the trash after the
                // commit, so a create now would be left without data.
                None if self.overlay.contains_key(name) => {
                    return Err(Error::Busy(format!(
                        "volume {name} was removed by a call committed together with this one; create it again"
                    )))
                }
                None => {
                    if let Some(e) = self.unreadable(name) {
                        return Err(e);
                    }
                    // The first create of a name that is not stored: new_folders gave it
                    // a folder. A later one finds none when that one's making failed.
                    let (record, adopted) = match made.remove(name) {
                        Some((record, adopted)) => (record, adopted?),
                        None => {
                            return Err(Error::Busy(format!(
                                "the folder of volume {name} could not be made for a call committed together with this one; create it again"
                            )))
                        }
                    };
                    self.put(&record);
                    Outcome::Created {
                        record,
                        existed: false,
                        adopted,
                    }
                }
            },
            Mutation::Remove { name } => {
                let record = self.existing(name)?;
                let stale = decide::remove(&record, oracle)?;
                if !stale.is_empty() {
                    self.notes.push(Note::RemovedWithStaleMounts {
                        volume: name.clone(),
                        stale,
                    });
                }
                self.overlay.insert(name.clone(), None);
                let removed = Outcome::Removed {
                    record: record.clone(),
                    moved_to: None,
                };
                return Ok((removed, AfterCommit::Dispose(record)));
            }
            Mutation::Mount { name, node, id } => {
                let mut record = self.existing(name)?;
                let mut events = Vec::new();
                let node_count = decide::mount(&mut record, id, self.who(node), oracle, &mut events)?;
                self.events.extend(events);
                self.put(&record);
                Outcome::Mounted { record, node_count }
            }
            Mutation::Unmount { name, node, id } => {
                let mut record = self.current(name);
                // Not "no such volume": a record this version cannot read still counts
                // its mounts, and the caller must not unbind on the strength of it.
                if record.is_none() {
                    if let Some(e) = self.unreadable(name) {
                        return Err(e);
                    }
                }
                let node_count = match record.as_mut() {
                    Some(r) => decide::unmount(r, id, self.who(node))?,
                    None => None,
                };
                if let (Some(r), Some(_)) = (&record, node_count) {
                    self.put(r);
                }
                Outcome::Unmounted { record, node_count }
            }
            Mutation::Takeover { name, node, force } => {
                let mut record = self.existing(name)?;
                let mut events = Vec::new();
                decide::takeover(&mut record, self.who(node), *force, oracle, &mut events)?;
                self.events.extend(events);
                self.put(&record);
                Outcome::TookOver { record }
            }
            Mutation::Snapshot {
                name,
                snap,
                node,
                step,
            } => {
                let mut record = self.existing(name)?;
                decide::snapshot(&mut record, snap, step, self.who(node), oracle)?;
                self.put(&record);
                Outcome::SnapshotChanged { record }
            }
            Mutation::ReconcileNode { node, bound } => self.reconcile(node, bound),
        };
        Ok((outcome, AfterCommit::Nothing))
    }

    /// A restarted node's reconcile: every stored volume that names the node.
    fn reconcile(&mut self, node: &str, bound: &BTreeSet<String>) -> Outcome {
        let names: Vec<String> = self
            .stored
            .volumes
            .records()
            .filter(|r| {
                r.mounts.contains_key(node) || r.holder.as_ref().is_some_and(|h| h.node == node)
            })
            .map(|r| r.name.clone())
            .collect();
        let (mut dropped, mut kept) = (Vec::new(), Vec::new());
        for name in names {
            let Some(mut record) = self.current(&name) else {
                continue;
            };
            if record.check_writable().is_err() {
                self.notes.push(Note::NewerFormatNotReconciled {
                    volume: name,
                    format: record.format,
                });
                continue;
            }
            let before = record.clone();
            let has_mounts = record.mounts.contains_key(node);
            if has_mounts && decide::held_by_another(&record, node) {
                self.notes.push(Note::TakenOverWhileAway {
                    volume: name.clone(),
                });
            }
            match decide::reconcile(&mut record, bound.contains(&name), self.who(node)) {
                Some(count) => dropped.push((name.clone(), count)),
                None if has_mounts => kept.push(name.clone()),
                None => {}
            }
            if record != before {
                self.put(&record);
            }
        }
        Outcome::Reconciled { dropped, kept }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::core::liveness::{Judgment, Liveness};
    use crate::core::volume::Holder;

    /// Nodes judged dead are listed; every other is alive. Records whom it was asked about.
    #[derive(Default)]
    struct Script {
        dead: BTreeSet<String>,
        asked: BTreeSet<String>,
    }

    impl Oracle for Script {
        fn judge(&mut self, node: &str, _: Option<&str>) -> Judgment {
            self.asked.insert(node.to_string());
            let state = if self.dead.contains(node) {
                Liveness::Dead
            } else {
                Liveness::Alive
            };
            Judgment {
                state,
                dead_in: None,
                observer_cut_off: false,
            }
        }
        fn may_hold(&self) -> std::result::Result<(), String> {
            Ok(())
        }
        fn dead_after(&self) -> Duration {
            Duration::from_secs(5)
        }
    }

    fn options(access: &str) -> VolumeOptions {
        VolumeOptions::from_map([("access", access)]).unwrap()
    }

    fn stored_one(record: VolumeRecord) -> BTreeMap<String, VolumeRecord> {
        [(record.name.clone(), record)].into()
    }

    fn create(name: &str, access: &str) -> Mutation {
        Mutation::Create {
            name: name.into(),
            options: options(access),
            node: "h1".into(),
            staged: None,
        }
    }

    fn mount(name: &str, node: &str, id: &str) -> Mutation {
        Mutation::Mount {
            name: name.into(),
            node: node.into(),
            id: id.into(),
        }
    }

    /// Runs `mutations` as the worker does: folders from new_folders, all made.
    fn run(
        volumes: &BTreeMap<String, VolumeRecord>,
        unreadable: &BTreeMap<String, String>,
        mutations: &[Mutation],
        oracle: &mut Script,
    ) -> Decisions {
        let stored = Stored {
            volumes,
            unreadable,
        };
        let made = new_folders(stored, mutations, 100)
            .into_iter()
            .map(|f| (f.record.name.clone(), (f.record, Ok(false))))
            .collect();
        decide_batch(stored, mutations, "h1-b1", 100, made, oracle)
    }

    #[test]
    fn the_first_create_of_a_name_gets_the_folder_and_decides_its_options() {
        let (volumes, unreadable) = (BTreeMap::new(), BTreeMap::new());
        let batch = [
            create("a", "shared"),
            create("a", "shared"),
            create("a", "exclusive"),
        ];
        let stored = Stored {
            volumes: &volumes,
            unreadable: &unreadable,
        };
        let folders = new_folders(stored, &batch, 100);
        assert_eq!(folders.len(), 1, "one folder per new name: {folders:?}");
        let d = run(&volumes, &unreadable, &batch, &mut Script::default());
        assert!(matches!(
            &d.results[0],
            Ok((Outcome::Created { existed: false, .. }, _))
        ));
        assert!(matches!(
            &d.results[1],
            Ok((Outcome::Created { existed: true, .. }, _))
        ));
        assert!(matches!(&d.results[2], Err(Error::Conflict { .. })));
        assert_eq!(d.overlay.len(), 1);
        assert!(d.unused.is_empty());
    }

    #[test]
    fn a_name_removed_in_the_batch_cannot_be_created_in_it() {
        let volumes = stored_one(VolumeRecord::new("a", "h1", options("shared"), 1));
        let unreadable = BTreeMap::new();
        let batch = [Mutation::Remove { name: "a".into() }, create("a", "shared")];
        let d = run(&volumes, &unreadable, &batch, &mut Script::default());
        assert!(matches!(
            &d.results[0],
            Ok((Outcome::Removed { .. }, AfterCommit::Dispose(_)))
        ));
        match &d.results[1] {
            Err(Error::Busy(m)) => assert!(m.contains("create it again"), "{m}"),
            other => panic!("expected Busy, got {other:?}"),
        }
        assert_eq!(d.overlay.get("a"), Some(&None), "the remove stands");
    }

    #[test]
    fn a_record_this_version_cannot_read_is_never_overwritten() {
        let volumes = BTreeMap::new();
        let unreadable: BTreeMap<String, String> = [("a".into(), "format 99".into())].into();
        let batch = [
            create("a", "shared"),
            Mutation::Unmount {
                name: "a".into(),
                node: "h1".into(),
                id: "c1".into(),
            },
            mount("a", "h1", "c1"),
        ];
        let stored = Stored {
            volumes: &volumes,
            unreadable: &unreadable,
        };
        assert!(
            new_folders(stored, &batch, 100).is_empty(),
            "no folder for it"
        );
        let d = run(&volumes, &unreadable, &batch, &mut Script::default());
        for r in &d.results {
            match r {
                Err(Error::Invalid(m)) => assert!(m.contains("upgrade this node"), "{m}"),
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
        assert!(d.overlay.is_empty());
    }

    #[test]
    fn a_folder_that_could_not_be_made_fails_its_creates_and_nothing_else() {
        let (volumes, unreadable) = (BTreeMap::new(), BTreeMap::new());
        let batch = [
            create("a", "shared"),
            create("a", "shared"),
            create("b", "shared"),
        ];
        let stored = Stored {
            volumes: &volumes,
            unreadable: &unreadable,
        };
        let made = new_folders(stored, &batch, 100)
            .into_iter()
            .map(|f| {
                let made = if f.record.name == "a" {
                    Err(Error::Store("no space left".into()))
                } else {
                    Ok(false)
                };
                (f.record.name.clone(), (f.record, made))
            })
            .collect();
        let d = decide_batch(stored, &batch, "h1-b1", 100, made, &mut Script::default());
        assert!(matches!(&d.results[0], Err(Error::Store(m)) if m.contains("no space")));
        assert!(matches!(&d.results[1], Err(Error::Busy(_))));
        assert!(d.results[2].is_ok());
        assert_eq!(d.overlay.keys().collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn a_refused_mount_logs_no_grant() {
        // h2 holds the exclusive volume and is dead; h1 has another container on it. The
        // claim would take it over, but the other container refuses the mount: nothing of
        // the takeover may be logged as done.
        let mut record = VolumeRecord::new("a", "h1", options("exclusive"), 1);
        record.holder = Some(Holder {
            node: "h2".into(),
            generation: 1,
            boot_id: Some("h2-b1".into()),
        });
        record.add_mount("h2", "h2-b1", "c2");
        record.add_mount("h1", "h1-b1", "c1");
        let volumes = stored_one(record);
        let unreadable = BTreeMap::new();
        let mut oracle = Script {
            dead: ["h2".to_string()].into(),
            ..Script::default()
        };
        let d = run(
            &volumes,
            &unreadable,
            &[mount("a", "h1", "c3")],
            &mut oracle,
        );
        assert!(
            matches!(&d.results[0], Err(Error::ExclusiveInUse { .. })),
            "{:?}",
            d.results[0]
        );
        assert!(d.events.is_empty(), "{:?}", d.events);
        assert!(d.overlay.is_empty());
    }

    #[test]
    fn judged_nodes_names_whom_the_decisions_ask_about() {
        let mut exclusive = VolumeRecord::new("x", "h1", options("exclusive"), 1);
        exclusive.holder = Some(Holder {
            node: "h2".into(),
            generation: 1,
            boot_id: Some("h2-b1".into()),
        });
        exclusive.add_mount("h2", "h2-b1", "c2");
        let mut shared = VolumeRecord::new("s", "h1", options("shared"), 1);
        shared.add_mount("h3", "h3-b1", "c3");
        shared.add_mount("h4", "h4-b1", "c4");
        let volumes: BTreeMap<_, _> =
            [("x".to_string(), exclusive), ("s".to_string(), shared)].into();
        let unreadable = BTreeMap::new();
        let stored = Stored {
            volumes: &volumes,
            unreadable: &unreadable,
        };
        let judged = |m: Mutation| judged_nodes(stored, [&m]);
        // A mount of a shared volume judges nobody: no heartbeat is read for it.
        assert_eq!(judged(mount("s", "h1", "c1")), ["h1".to_string()].into());
        assert_eq!(
            judged(mount("x", "h1", "c1")),
            ["h1".to_string(), "h2".to_string()].into()
        );
        assert_eq!(
            judged(Mutation::Remove { name: "s".into() }),
            ["h3".to_string(), "h4".to_string()].into()
        );
        // And the decisions ask about no other (the simulation checks this on every one).
        for m in [
            mount("x", "h1", "c1"),
            mount("s", "h1", "c1"),
            Mutation::Remove { name: "s".into() },
            Mutation::Remove { name: "x".into() },
        ] {
            let mut oracle = Script {
                dead: ["h2".to_string()].into(),
                ..Script::default()
            };
            let allowed = judged(m.clone());
            run(&volumes, &unreadable, std::slice::from_ref(&m), &mut oracle);
            assert!(
                oracle.asked.is_subset(&allowed),
                "{m:?}: asked {:?}, read {allowed:?}",
                oracle.asked
            );
        }
    }
}
