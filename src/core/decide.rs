//! The store's decisions, kept pure: a record, a change, who commits it, and a liveness
//! oracle in; the new record (or a refusal) out. The store's worker (`cluster::store::worker`) calls these
//! under the cluster lock, on freshly loaded records, with an oracle that reads the judged
//! node's heartbeat fresh; the tests here call them with a scripted oracle.
//!
//! The rule they keep (docs/semantics.md, "Liveness"): another node's mount or hold is
//! stale only when the incarnation recorded with it is judged dead or left.

use std::time::Duration;

use crate::core::error::{Error, Result};
use crate::core::liveness::{Judgment, Liveness};
use crate::core::volume::{
    Access, Holder, SnapshotRecord, SnapshotState, Takeover, VolumeRecord, BASE_FORMAT,
    SNAPSHOT_FORMAT, TAKEOVER_HISTORY,
};

/// How the decisions learn whether an incarnation is alive.
pub trait Oracle {
    /// Judges (`node`, `boot_id`); `None` for a record that did not record a boot id.
    fn judge(&mut self, node: &str, boot_id: Option<&str>) -> Judgment;
    /// `Ok` while the committing node may act as the holder of its exclusive volumes.
    fn may_hold(&self) -> std::result::Result<(), String>;
    fn dead_after(&self) -> Duration;
    /// Judges (`node`, `boot_id`) as the holder of an exclusive volume: dead only once
    /// silent for [`Oracle::takeover_after`], when its in-flight writes can no longer land.
    fn judge_holder(&mut self, node: &str, boot_id: Option<&str>) -> Judgment {
        self.judge(node, boot_id)
    }
    /// `dead_after` and the fence wait (see [`crate::host::fence`]).
    fn takeover_after(&self) -> Duration {
        self.dead_after()
    }
}

/// The incarnation that commits, and its clock (for display fields only).
#[derive(Debug, Clone, Copy)]
pub struct Committer<'a> {
    pub node: &'a str,
    pub boot_id: &'a str,
    pub now_unix: u64,
}

/// A change to an exclusive volume, logged once its commit is durable, with the commit's
/// generation: generations are cluster-wide and strictly increasing, so the logs of every
/// node can be merged into one order without comparing clocks (the torture test checks
/// from them that no two nodes ever held a volume at once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Granted {
        volume: String,
        node: String,
        generation: u64,
        from: Option<String>,
        forced: bool,
    },
    ExclusiveMount {
        volume: String,
        node: String,
        generation: u64,
    },
}

/// Whether `record` may be removed: `Ok` with the nodes whose mounts are stale (their
/// recorded incarnation is dead or left), or `InUse` naming the live ones.
pub fn remove(record: &VolumeRecord, oracle: &mut dyn Oracle) -> Result<Vec<String>> {
    record.check_writable()?;
    if !record.snapshots.is_empty() {
        let names: Vec<&str> = record
            .snapshots
            .keys()
            .map(String::as_str)
            .take(5)
            .collect();
        return Err(Error::Snapshot(format!(
            "volume {} has {} snapshot(s) ({}{}); delete them first: caravan snapshot delete {}@SNAPSHOT",
            record.name,
            record.snapshots.len(),
            names.join(", "),
            if record.snapshots.len() > names.len() { ", …" } else { "" },
            record.name
        )));
    }
    let (mut live, mut stale) = (Vec::new(), Vec::new());
    for node in record.mounted_on() {
        let boot = record.incarnations.get(node).map(String::as_str);
        if oracle.judge(node, boot).is_alive() {
            live.push(format!("{node} ({} mounts)", record.node_mount_count(node)));
        } else {
            stale.push(node.to_string());
        }
    }
    if !live.is_empty() {
        return Err(Error::InUse {
            name: record.name.clone(),
            nodes: live.join(", "),
        });
    }
    Ok(stale)
}

/// The most snapshots a volume keeps (each is a copy of its data on the export).
pub const MAX_SNAPSHOTS: usize = 256;

/// A step in a snapshot's life, decided under the lock like every other change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotStep {
    /// Record it as being made by the committer (never listed until finished).
    Begin,
    /// The committer's copy is complete.
    Finish(crate::core::copy_report::CopyReport),
    /// Its files are about to be deleted by the committer: a complete snapshot, one this
    /// incarnation was making (a failed or stopped copy), or one left half-made or
    /// half-deleted by an incarnation that is gone.
    Delete,
    /// Its files are gone: forget it.
    Forget,
    /// The committer begins to restore from it (it must be complete).
    ReadBegin,
    /// The committer's restore from it ended.
    ReadEnd,
}

/// At most this many restores read one snapshot at once.
pub const MAX_READERS: usize = 64;

/// Applies `step` to snapshot `snap` of `record`, committed by `who`.
pub fn snapshot(
    record: &mut VolumeRecord,
    snap: &str,
    step: &SnapshotStep,
    who: Committer<'_>,
    oracle: &mut dyn Oracle,
) -> Result<()> {
    record.check_writable()?;
    let name = record.name.clone();
    let by_committer = |s: &SnapshotRecord| s.node == who.node && s.boot_id == who.boot_id;
    match step {
        SnapshotStep::Begin => {
            if let Some(s) = record.snapshots.get(snap) {
                return Err(Error::Snapshot(format!(
                    "volume {name} already has a snapshot {snap} ({}, by {}); choose another name",
                    s.state.as_str(),
                    s.node
                )));
            }
            if record.snapshots.len() >= MAX_SNAPSHOTS {
                return Err(Error::Snapshot(format!(
                    "volume {name} has {MAX_SNAPSHOTS} snapshots, the most it keeps; delete one first"
                )));
            }
            let mut mounted_on: Vec<String> = Vec::new();
            for node in record.mounted_on() {
                let boot = record.incarnations.get(node).map(String::as_str);
                if oracle.judge(node, boot).is_alive() {
                    mounted_on.push(node.to_string());
                }
            }
            record.snapshots.insert(
                snap.to_string(),
                SnapshotRecord {
                    created_at: who.now_unix,
                    node: who.node.to_string(),
                    boot_id: who.boot_id.to_string(),
                    state: SnapshotState::Making,
                    mounted_on,
                    copy: None,
                    readers: Vec::new(),
                },
            );
            record.format = record.format.max(SNAPSHOT_FORMAT);
        }
        SnapshotStep::Finish(report) => match record.snapshots.get_mut(snap) {
            Some(s) if s.state == SnapshotState::Making && by_committer(s) => {
                s.state = SnapshotState::Complete;
                s.copy = Some(report.clone());
            }
            _ => {
                return Err(Error::Snapshot(format!(
                "snapshot {name}@{snap} is no longer being made by this node (deleted meanwhile?)"
            )))
            }
        },
        SnapshotStep::Delete => {
            let Some(s) = record.snapshots.get(snap) else {
                return Err(Error::NoSuchSnapshot {
                    volume: name.to_string(),
                    snapshot: snap.to_string(),
                });
            };
            // Restores under way on live incarnations keep it.
            let reading: Vec<String> = s
                .readers
                .iter()
                .filter(|(n, b)| oracle.judge(n, Some(b)).is_alive())
                .map(|(n, _)| n.clone())
                .collect();
            if !reading.is_empty() {
                return Err(Error::Snapshot(format!(
                    "snapshot {name}@{snap} is being restored from on {}; try again when that is done",
                    reading.join(", ")
                )));
            }
            let mut gone = || !oracle.judge(&s.node, Some(&s.boot_id)).is_alive();
            let may = match s.state {
                SnapshotState::Complete => true,
                SnapshotState::Making | SnapshotState::Deleting => by_committer(s) || gone(),
            };
            if !may {
                return Err(Error::Snapshot(format!(
                    "snapshot {name}@{snap} is being {} by node {}, which is alive; try again when it is done",
                    if s.state == SnapshotState::Making { "made" } else { "deleted" },
                    s.node
                )));
            }
            let s = record.snapshots.get_mut(snap).expect("checked above");
            s.state = SnapshotState::Deleting;
            s.node = who.node.to_string();
            s.boot_id = who.boot_id.to_string();
        }
        SnapshotStep::ReadBegin => {
            let Some(s) = record.snapshots.get_mut(snap) else {
                return Err(Error::NoSuchSnapshot {
                    volume: name.to_string(),
                    snapshot: snap.to_string(),
                });
            };
            if s.state != SnapshotState::Complete {
                return Err(Error::Snapshot(format!(
                    "snapshot {name}@{snap} is {}, not complete: it cannot be restored from",
                    s.state.as_str()
                )));
            }
            // Readers of incarnations that are gone no longer count (or take room).
            s.readers
                .retain(|(n, b)| oracle.judge(n, Some(b)).is_alive());
            if s.readers.len() >= MAX_READERS {
                return Err(Error::Snapshot(format!(
                    "snapshot {name}@{snap} is being restored from {MAX_READERS} times already; try again later"
                )));
            }
            s.readers
                .push((who.node.to_string(), who.boot_id.to_string()));
        }
        SnapshotStep::ReadEnd => {
            if let Some(s) = record.snapshots.get_mut(snap) {
                if let Some(i) = s
                    .readers
                    .iter()
                    .position(|(n, b)| n == who.node && b == who.boot_id)
                {
                    s.readers.remove(i);
                }
            }
        }
        SnapshotStep::Forget => {
            if record
                .snapshots
                .get(snap)
                .is_some_and(|s| s.state == SnapshotState::Deleting && by_committer(s))
            {
                record.snapshots.remove(snap);
                if record.snapshots.is_empty() && record.format == SNAPSHOT_FORMAT {
                    record.format = BASE_FORMAT;
                }
            }
        }
    }
    Ok(())
}

/// Counts a Mount of (`who`, `id`), claiming the volume first if it is exclusive. Returns
/// the node's mount count afterwards.
pub fn mount(
    record: &mut VolumeRecord,
    id: &str,
    who: Committer<'_>,
    oracle: &mut dyn Oracle,
    events: &mut Vec<Event>,
) -> Result<u32> {
    record.check_writable()?;
    if record.options.access == Access::Exclusive {
        claim(record, who, false, oracle, events)?;
        // One writer: one container (one Docker mount ID) at a time, wherever it runs,
        // this node included. The same ID again (`docker cp`, a repeated Mount after a
        // restart) is the same container.
        if let Some((node, other)) = other_mount(record, id) {
            return Err(Error::ExclusiveInUse {
                name: record.name.clone(),
                node,
                id: other,
                container: None,
            });
        }
        events.push(Event::ExclusiveMount {
            volume: record.name.clone(),
            node: who.node.to_string(),
            generation: record.generation,
        });
    }
    Ok(record.add_mount(who.node, who.boot_id, id))
}

/// A mount of the volume under another ID than `id` (node, ID), if any.
fn other_mount(record: &VolumeRecord, id: &str) -> Option<(String, String)> {
    record.mounts.iter().find_map(|(node, ids)| {
        ids.iter()
            .find(|(other, count)| other.as_str() != id && **count > 0)
            .map(|(other, _)| (node.clone(), other.clone()))
    })
}

/// Counts an Unmount of (`who`, `id`). `None` when the ID was not mounted on the node. The
/// holder's last unmount releases an exclusive volume: a planned move to another node
/// needs no takeover.
pub fn unmount(record: &mut VolumeRecord, id: &str, who: Committer<'_>) -> Result<Option<u32>> {
    if !record
        .mounts
        .get(who.node)
        .is_some_and(|ids| ids.contains_key(id))
    {
        return Ok(None);
    }
    record.check_writable()?;
    let remaining = record.remove_mount(who.node, id);
    if remaining == Some(0) && record.holder.as_ref().is_some_and(|h| h.node == who.node) {
        record.holder = None;
    }
    Ok(remaining)
}

/// An operator's takeover: make `who` the holder, now if the holder is dead or gone (or
/// `force`).
pub fn takeover(
    record: &mut VolumeRecord,
    who: Committer<'_>,
    force: bool,
    oracle: &mut dyn Oracle,
    events: &mut Vec<Event>,
) -> Result<()> {
    if record.options.access != Access::Exclusive {
        return Err(Error::invalid(format!(
            "volume {} is shared: any node may mount it, so there is nothing to take over",
            record.name
        )));
    }
    record.check_writable()?;
    claim(record, who, force, oracle, events)
}

/// After a restart of `who`: keep its mounts of a volume only if the bind mount is really
/// there (`bound`) and no other node took the volume over; the kept ones (and its hold)
/// now belong to this incarnation. Returns the count dropped, if any.
pub fn reconcile(record: &mut VolumeRecord, bound: bool, who: Committer<'_>) -> Option<u32> {
    let fenced = held_by_another(record, who.node);
    // This node's hold passes to this incarnation (the name lock proves the earlier one
    // gone), so that others judge the hold by a boot id that beats.
    if let Some(h) = record.holder.as_mut().filter(|h| h.node == who.node) {
        h.boot_id = Some(who.boot_id.to_string());
    }
    if !record.mounts.contains_key(who.node) {
        return None;
    }
    if bound && !fenced {
        record
            .incarnations
            .insert(who.node.to_string(), who.boot_id.to_string());
        return None;
    }
    let count = record.node_mount_count(who.node);
    record.mounts.remove(who.node);
    record.incarnations.remove(who.node);
    // Its mounts are gone (the host rebooted): no Unmount will ever release its hold.
    if record.holder.as_ref().is_some_and(|h| h.node == who.node) {
        record.holder = None;
    }
    Some(count)
}

/// Whether another node than `node` holds `record`, an exclusive volume: a claim of
/// `node`'s own on it is then dropped by [`reconcile`] (the shell logs that it was taken
/// over while this node was away).
pub fn held_by_another(record: &VolumeRecord, node: &str) -> bool {
    record.options.access == Access::Exclusive
        && record.holder.as_ref().is_some_and(|h| h.node != node)
}

/// Whether the holder of an exclusive volume is alive: its granted incarnation, or the
/// incarnation that recorded its mounts (a restarted holder that kept its bind mounts).
fn judge_holder(record: &VolumeRecord, holder: &Holder, oracle: &mut dyn Oracle) -> Judgment {
    let granted = oracle.judge_holder(&holder.node, holder.boot_id.as_deref());
    if granted.is_alive() || record.node_mount_count(&holder.node) == 0 {
        return granted;
    }
    match record.incarnations.get(&holder.node) {
        Some(b) if Some(b) != holder.boot_id.as_ref() => oracle.judge_holder(&holder.node, Some(b)),
        _ => granted,
    }
}

/// Makes `who` the holder of an exclusive volume: a no-op for its current holder, a
/// grant when nobody holds it or when the holder is an earlier start of `who`, a takeover
/// when the holder's incarnation is dead or left (or with `force`), and an error naming
/// the holder while it is alive.
pub fn claim(
    record: &mut VolumeRecord,
    who: Committer<'_>,
    force: bool,
    oracle: &mut dyn Oracle,
    events: &mut Vec<Event>,
) -> Result<()> {
    let mut from = None;
    let mut forced = false;
    match record.holder.clone() {
        Some(h) if h.node == who.node => {
            oracle.may_hold().map_err(|why| {
                Error::Busy(format!(
                    "volume {} is exclusive and held by this node, but {why}; it is re-validating its volumes against the cluster metadata: retry in a few seconds",
                    record.name
                ))
            })?;
            if h.boot_id.as_deref() == Some(who.boot_id) {
                return Ok(());
            }
            // An earlier start of this node held it (the name lock proves it gone): the
            // grant moves to this incarnation.
        }
        Some(h) => {
            let judged = judge_holder(record, &h, oracle);
            if judged.is_alive() && !force {
                let when = if judged.observer_cut_off {
                    format!(
                        "once this node can see the cluster again (it is cut off from the export and declares nobody dead) and {} has been silent for {}s",
                        h.node,
                        oracle.takeover_after().as_secs()
                    )
                } else {
                    format!(
                        "once {} has been silent for {}s (--dead-after {}s, then the wait until its in-flight writes can no longer land; in {:.0}s if it stays silent)",
                        h.node,
                        oracle.takeover_after().as_secs(),
                        oracle.dead_after().as_secs(),
                        judged.dead_in.unwrap_or(oracle.takeover_after()).as_secs_f64()
                    )
                };
                let in_use = record.mounts.get(&h.node).and_then(|ids| {
                    ids.iter()
                        .find(|(_, count)| **count > 0)
                        .map(|(id, _)| id.clone())
                });
                return Err(Error::ExclusiveHeld {
                    name: record.name.clone(),
                    in_use,
                    holder: h.node,
                    when,
                    dead_in: judged.dead_in.filter(|_| !judged.observer_cut_off),
                });
            }
            forced = judged.state == Liveness::Alive;
            from = Some(h.node);
        }
        None => {}
    }
    record.generation = record.generation.saturating_add(1);
    if let Some(from) = &from {
        // The old holder's mounts are void: it is gone, or fenced and must unmount.
        record.mounts.remove(from);
        record.incarnations.remove(from);
        record.takeovers.push(Takeover {
            from: from.clone(),
            to: who.node.to_string(),
            generation: record.generation,
            at: who.now_unix,
            forced,
        });
        let excess = record.takeovers.len().saturating_sub(TAKEOVER_HISTORY);
        record.takeovers.drain(..excess);
    }
    record.holder = Some(Holder {
        node: who.node.to_string(),
        generation: record.generation,
        boot_id: Some(who.boot_id.to_string()),
    });
    events.push(Event::Granted {
        volume: record.name.clone(),
        node: who.node.to_string(),
        generation: record.generation,
        from,
        forced,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::core::volume::VolumeOptions;

    /// A scripted oracle: incarnations not listed are alive.
    #[derive(Default)]
    struct Script {
        states: BTreeMap<(String, Option<String>), Liveness>,
        cut_off: bool,
        may_hold: Option<String>,
        asked: Vec<(String, Option<String>)>,
    }

    impl Script {
        fn with(mut self, node: &str, boot: Option<&str>, state: Liveness) -> Script {
            self.states
                .insert((node.into(), boot.map(str::to_string)), state);
            self
        }
    }

    impl Oracle for Script {
        fn judge(&mut self, node: &str, boot_id: Option<&str>) -> Judgment {
            let key = (node.to_string(), boot_id.map(str::to_string));
            self.asked.push(key.clone());
            let state = if self.cut_off {
                Liveness::Alive
            } else {
                self.states.get(&key).copied().unwrap_or(Liveness::Alive)
            };
            Judgment {
                state,
                dead_in: (state == Liveness::Alive).then_some(Duration::from_secs(3)),
                observer_cut_off: self.cut_off,
            }
        }
        fn may_hold(&self) -> std::result::Result<(), String> {
            self.may_hold.clone().map_or(Ok(()), Err)
        }
        fn dead_after(&self) -> Duration {
            Duration::from_secs(5)
        }
    }

    const H2: Committer = Committer {
        node: "h2",
        boot_id: "h2-b1",
        now_unix: 100,
    };
    const H3_OLD: Committer = Committer {
        node: "h3",
        boot_id: "h3-b1",
        now_unix: 100,
    };
    const H3_NEW: Committer = Committer {
        node: "h3",
        boot_id: "h3-b2",
        now_unix: 100,
    };

    fn volume(access: &str) -> VolumeRecord {
        VolumeRecord::new(
            "v",
            "h1",
            VolumeOptions::from_map([("access", access)]).unwrap(),
            0,
        )
    }

    #[test]
    fn remove_is_refused_while_the_recorded_incarnation_is_alive() {
        let mut r = volume("shared");
        r.add_mount("h3", "h3-b2", "id");
        // h3's earlier boot is dead, but the mount was recorded by the new one.
        let mut o = Script::default().with("h3", Some("h3-b1"), Liveness::Dead);
        let e = remove(&r, &mut o).unwrap_err().to_string();
        assert!(e.contains("h3 (1 mounts)"), "{e}");
        assert_eq!(o.asked, vec![("h3".to_string(), Some("h3-b2".to_string()))]);
    }

    #[test]
    fn remove_passes_mounts_of_dead_or_left_incarnations_and_of_nobody() {
        assert_eq!(
            remove(&volume("shared"), &mut Script::default()).unwrap(),
            Vec::<String>::new()
        );
        let mut r = volume("shared");
        r.add_mount("h3", "h3-b1", "a");
        r.add_mount("h4", "h4-b1", "b");
        let mut o = Script::default()
            .with("h3", Some("h3-b1"), Liveness::Dead)
            .with("h4", Some("h4-b1"), Liveness::Left);
        assert_eq!(remove(&r, &mut o).unwrap(), vec!["h3", "h4"]);
    }

    #[test]
    fn a_cut_off_observer_removes_nothing_in_use() {
        let mut r = volume("shared");
        r.add_mount("h3", "h3-b1", "a");
        let mut o = Script::default().with("h3", Some("h3-b1"), Liveness::Dead);
        o.cut_off = true;
        assert!(matches!(remove(&r, &mut o), Err(Error::InUse { .. })));
    }

    #[test]
    fn a_record_without_boot_ids_is_judged_by_the_nodes_current_incarnation() {
        let mut r = volume("shared");
        r.add_mount("h3", "x", "a");
        r.incarnations.clear();
        let mut o = Script::default().with("h3", None, Liveness::Dead);
        assert_eq!(remove(&r, &mut o).unwrap(), vec!["h3"]);
    }

    #[test]
    fn exclusive_grant_then_no_op_for_the_same_incarnation() {
        let mut r = volume("exclusive");
        let mut ev = Vec::new();
        assert_eq!(
            mount(&mut r, "a", H3_NEW, &mut Script::default(), &mut ev).unwrap(),
            1
        );
        let h = r.holder.clone().unwrap();
        assert_eq!(
            (h.node.as_str(), h.boot_id.as_deref(), h.generation),
            ("h3", Some("h3-b2"), 1)
        );
        // The same container again (`docker cp`, a Mount repeated after a restart).
        assert_eq!(
            mount(&mut r, "a", H3_NEW, &mut Script::default(), &mut ev).unwrap(),
            2
        );
        assert_eq!(r.generation, 1, "the holder's own mounts grant nothing new");
    }

    #[test]
    fn a_second_container_is_refused_on_the_holders_node_and_on_any_other() {
        let mut r = volume("exclusive");
        let mut ev = Vec::new();
        mount(&mut r, "a", H3_NEW, &mut Script::default(), &mut ev).unwrap();
        // Another container on the holder's own node: one writer, not one node.
        let e = mount(&mut r, "b", H3_NEW, &mut Script::default(), &mut ev).unwrap_err();
        assert!(
            matches!(&e, Error::ExclusiveInUse { node, id, .. } if node == "h3" && id == "a"),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(
            text.contains("stop-first") && text.contains("caravan umount v --id a"),
            "{text}"
        );
        // Elsewhere, while the holder is alive: the holder and its container are named,
        // with what a Swarm service needs.
        let e = mount(&mut r, "c", H2, &mut Script::default(), &mut ev).unwrap_err();
        assert!(
            matches!(&e, Error::ExclusiveHeld { holder, in_use: Some(id), .. } if holder == "h3" && id == "a"),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(
            text.contains("held by node h3, which is alive")
                && text.contains("Docker mount ID a")
                && text.contains("--update-order stop-first"),
            "{text}"
        );
        assert_eq!(r.node_mount_count("h3"), 1, "nothing counted");
        assert_eq!(r.generation, 1, "nothing granted");
        // Once the first container unmounts, the second is let in.
        unmount(&mut r, "a", H3_NEW).unwrap();
        assert_eq!(
            mount(&mut r, "b", H3_NEW, &mut Script::default(), &mut ev).unwrap(),
            1
        );
        // A shared volume still takes any number of containers.
        let mut s = volume("shared");
        mount(&mut s, "a", H3_NEW, &mut Script::default(), &mut ev).unwrap();
        mount(&mut s, "b", H3_NEW, &mut Script::default(), &mut ev).unwrap();
        mount(&mut s, "c", H2, &mut Script::default(), &mut ev).unwrap();
    }

    #[test]
    fn takeovers_are_judged_by_the_holder_rule_and_quote_its_wait() {
        /// An oracle whose holder judgment waits 20 s longer than dead-after.
        struct Fenced(Script);
        impl Oracle for Fenced {
            fn judge(&mut self, n: &str, b: Option<&str>) -> Judgment {
                self.0.judge(n, b)
            }
            fn judge_holder(&mut self, _: &str, _: Option<&str>) -> Judgment {
                Judgment {
                    state: Liveness::Alive,
                    dead_in: Some(Duration::from_secs(20)),
                    observer_cut_off: false,
                }
            }
            fn may_hold(&self) -> std::result::Result<(), String> {
                Ok(())
            }
            fn dead_after(&self) -> Duration {
                Duration::from_secs(5)
            }
            fn takeover_after(&self) -> Duration {
                Duration::from_secs(25)
            }
        }
        let mut r = volume("exclusive");
        let mut ev = Vec::new();
        mount(&mut r, "a", H3_OLD, &mut Script::default(), &mut ev).unwrap();
        // dead by heartbeat, but not yet past the fence wait: refused.
        let mut o = Fenced(Script::default().with("h3", Some("h3-b1"), Liveness::Dead));
        let e = mount(&mut r, "x", H2, &mut o, &mut ev)
            .unwrap_err()
            .to_string();
        assert!(e.contains("silent for 25s") && e.contains("in 20s"), "{e}");
        assert_eq!(r.holder.as_ref().unwrap().node, "h3");
    }

    #[test]
    fn a_restarted_holder_keeps_its_volume_and_a_takeover_from_it_is_refused() {
        let mut r = volume("exclusive");
        let mut ev = Vec::new();
        mount(&mut r, "a", H3_OLD, &mut Script::default(), &mut ev).unwrap();
        // h3 restarts (b2) and dockerd mounts its container again: the grant moves to b2.
        mount(&mut r, "a", H3_NEW, &mut Script::default(), &mut ev).unwrap();
        assert_eq!(r.holder.as_ref().unwrap().boot_id.as_deref(), Some("h3-b2"));
        assert_eq!(r.generation, 2);
        // h2 sees b1 dead, b2 alive: refused.
        let mut o = Script::default().with("h3", Some("h3-b1"), Liveness::Dead);
        let e = mount(&mut r, "x", H2, &mut o, &mut ev).unwrap_err();
        assert!(
            matches!(e, Error::ExclusiveHeld { ref holder, .. } if holder == "h3"),
            "{e}"
        );
    }

    #[test]
    fn a_refusal_says_how_soon_the_holder_would_be_dead_unless_this_node_is_cut_off() {
        let mut r = volume("exclusive");
        let mut ev = Vec::new();
        mount(&mut r, "a", H3_OLD, &mut Script::default(), &mut ev).unwrap();
        // The Mount's wait for a dying holder depends on this.
        let e = mount(&mut r, "x", H2, &mut Script::default(), &mut ev).unwrap_err();
        assert!(
            matches!(e, Error::ExclusiveHeld { dead_in: Some(d), .. } if d == Duration::from_secs(3)),
            "{e:?}"
        );
        // A cut-off observer judges nobody: nothing to wait for.
        let mut cut_off = Script {
            cut_off: true,
            ..Script::default()
        };
        let e = mount(&mut r, "x", H2, &mut cut_off, &mut ev).unwrap_err();
        assert!(
            matches!(e, Error::ExclusiveHeld { dead_in: None, .. }),
            "{e:?}"
        );
    }

    #[test]
    fn a_snapshot_being_restored_from_by_a_live_node_is_not_deleted() {
        let step = |r: &mut VolumeRecord, s: SnapshotStep, who, o: &mut Script| {
            snapshot(r, "s1", &s, who, o)
        };
        let mut alive = Script::default();
        let mut r = volume("shared");
        step(&mut r, SnapshotStep::Begin, H3_OLD, &mut alive).unwrap();
        assert!(
            step(&mut r, SnapshotStep::ReadBegin, H2, &mut alive).is_err(),
            "not complete yet"
        );
        step(
            &mut r,
            SnapshotStep::Finish(Default::default()),
            H3_OLD,
            &mut alive,
        )
        .unwrap();
        step(&mut r, SnapshotStep::ReadBegin, H2, &mut alive).unwrap();
        let e = step(&mut r, SnapshotStep::Delete, H3_OLD, &mut alive).unwrap_err();
        assert!(e.to_string().contains("being restored from on h2"), "{e}");
        // A reader whose incarnation is dead does not keep it.
        let mut h2_dead = Script::default().with("h2", Some("h2-b1"), Liveness::Dead);
        step(&mut r, SnapshotStep::Delete, H3_OLD, &mut h2_dead).unwrap();
        // Nor does a reader that ended (on a snapshot made again under the same name).
        step(&mut r, SnapshotStep::Forget, H3_OLD, &mut alive).unwrap();
        for s in [
            SnapshotStep::Begin,
            SnapshotStep::Finish(Default::default()),
        ] {
            step(&mut r, s, H3_OLD, &mut alive).unwrap();
        }
        step(&mut r, SnapshotStep::ReadBegin, H2, &mut alive).unwrap();
        step(&mut r, SnapshotStep::ReadEnd, H2, &mut alive).unwrap();
        step(&mut r, SnapshotStep::Delete, H3_OLD, &mut alive).unwrap();
        assert_eq!(r.format, crate::core::volume::SNAPSHOT_FORMAT);
        step(&mut r, SnapshotStep::Forget, H3_OLD, &mut alive).unwrap();
        assert!(r.snapshots.is_empty());
        assert_eq!(
            r.format,
            crate::core::volume::BASE_FORMAT,
            "no snapshots: format 1 again"
        );
    }

    #[test]
    fn a_holder_whose_grant_is_old_but_whose_mounts_are_new_is_alive() {
        let mut r = volume("exclusive");
        let mut ev = Vec::new();
        mount(&mut r, "a", H3_OLD, &mut Script::default(), &mut ev).unwrap();
        // h3 restarted and reconciled its bind mount (kept) but has not mounted again.
        assert_eq!(reconcile(&mut r, true, H3_NEW), None);
        assert_eq!(r.incarnations["h3"], "h3-b2");
        assert_eq!(r.holder.as_ref().unwrap().boot_id.as_deref(), Some("h3-b2"));
        // Even with only the mount's incarnation recorded as new, the holder counts alive.
        r.holder.as_mut().unwrap().boot_id = Some("h3-b1".into());
        let mut o = Script::default().with("h3", Some("h3-b1"), Liveness::Dead);
        assert!(mount(&mut r, "x", H2, &mut o, &mut ev).is_err());
    }

    #[test]
    fn a_dead_holder_is_taken_over_and_its_mounts_voided() {
        let mut r = volume("exclusive");
        let mut ev = Vec::new();
        mount(&mut r, "a", H3_OLD, &mut Script::default(), &mut ev).unwrap();
        let mut o = Script::default().with("h3", Some("h3-b1"), Liveness::Dead);
        mount(&mut r, "x", H2, &mut o, &mut ev).unwrap();
        let h = r.holder.clone().unwrap();
        assert_eq!((h.node.as_str(), h.generation), ("h2", 2));
        assert!(!r.mounts.contains_key("h3") && !r.incarnations.contains_key("h3"));
        let t = r.takeovers.last().unwrap();
        assert_eq!(
            (t.from.as_str(), t.to.as_str(), t.forced),
            ("h3", "h2", false)
        );
        assert!(ev.contains(&Event::Granted {
            volume: "v".into(),
            node: "h2".into(),
            generation: 2,
            from: Some("h3".into()),
            forced: false
        }));
    }

    #[test]
    fn force_takes_over_from_a_live_holder_and_says_so() {
        let mut r = volume("exclusive");
        let mut ev = Vec::new();
        mount(&mut r, "a", H3_OLD, &mut Script::default(), &mut ev).unwrap();
        takeover(&mut r, H2, true, &mut Script::default(), &mut ev).unwrap();
        assert!(r.takeovers.last().unwrap().forced);
        let e = takeover(
            &mut volume("shared"),
            H2,
            true,
            &mut Script::default(),
            &mut ev,
        );
        assert!(e.unwrap_err().to_string().contains("shared"));
    }

    #[test]
    fn a_cut_off_observer_takes_nothing_over_and_says_why() {
        let mut r = volume("exclusive");
        let mut ev = Vec::new();
        mount(&mut r, "a", H3_OLD, &mut Script::default(), &mut ev).unwrap();
        let mut o = Script::default().with("h3", Some("h3-b1"), Liveness::Dead);
        o.cut_off = true;
        let e = mount(&mut r, "x", H2, &mut o, &mut ev)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cut off"), "{e}");
    }

    #[test]
    fn a_holder_that_lapsed_is_refused_until_it_re_validated() {
        let mut r = volume("exclusive");
        let mut ev = Vec::new();
        mount(&mut r, "a", H3_OLD, &mut Script::default(), &mut ev).unwrap();
        let mut o = Script {
            may_hold: Some("this node has not written its heartbeat for 9s".into()),
            ..Script::default()
        };
        let e = mount(&mut r, "b", H3_OLD, &mut o, &mut ev)
            .unwrap_err()
            .to_string();
        assert!(e.contains("re-validating") && e.contains("9s"), "{e}");
        assert_eq!(r.node_mount_count("h3"), 1, "nothing counted");
    }

    #[test]
    fn the_holders_last_unmount_releases_and_unknown_ids_change_nothing() {
        let mut r = volume("exclusive");
        let mut ev = Vec::new();
        mount(&mut r, "a", H3_OLD, &mut Script::default(), &mut ev).unwrap();
        assert_eq!(unmount(&mut r, "zzz", H3_OLD).unwrap(), None);
        assert!(r.holder.is_some());
        assert_eq!(unmount(&mut r, "a", H3_OLD).unwrap(), Some(0));
        assert!(r.holder.is_none() && r.mounts.is_empty());
    }

    #[test]
    fn reconcile_drops_what_is_not_bound_or_was_taken_over() {
        let mut r = volume("shared");
        r.add_mount("h3", "h3-b1", "a");
        r.add_mount("h3", "h3-b1", "b");
        assert_eq!(reconcile(&mut r, false, H3_NEW), Some(2));
        assert!(r.mounts.is_empty());
        // A holder whose bind mounts are gone (a reboot) releases its hold.
        let mut held = volume("exclusive");
        let mut ev = Vec::new();
        mount(&mut held, "a", H3_OLD, &mut Script::default(), &mut ev).unwrap();
        assert_eq!(reconcile(&mut held, false, H3_NEW), Some(1));
        assert!(held.holder.is_none(), "no Unmount will ever release it");
        let mut x = volume("exclusive");
        let mut ev = Vec::new();
        mount(&mut x, "a", H3_OLD, &mut Script::default(), &mut ev).unwrap();
        takeover(&mut x, H2, true, &mut Script::default(), &mut ev).unwrap();
        x.add_mount("h3", "h3-b1", "a");
        assert_eq!(reconcile(&mut x, true, H3_NEW), Some(1), "fenced");
    }

    #[test]
    fn records_of_a_newer_format_are_not_changed() {
        let mut r = volume("shared");
        r.format = crate::core::volume::RECORD_FORMAT + 1;
        let mut ev = Vec::new();
        assert!(mount(&mut r, "a", H2, &mut Script::default(), &mut ev).is_err());
        assert!(remove(&r, &mut Script::default()).is_err());
        assert!(r.mounts.is_empty());
    }
}
