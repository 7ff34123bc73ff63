//! Liveness of *incarnations* (node name + boot id), judged without comparing clocks
//! across hosts: what an observer saw of each heartbeat file, counted on its own seeing
//! clock, and the verdict on one incarnation. Pure: the shell (`crate::cluster::node`) reads the
//! files and hands in what it read and when, as [`Moment`]s of its monotonic clock.
//!
//! The rules are written down in `crate::cluster::node` and docs/semantics.md, "Liveness".

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::core::time::Moment;

/// Boot ids remembered per node; a node restarting in a loop must not grow memory.
const MAX_BOOTS_PER_NODE: usize = 16;
/// Nodes remembered at most (heartbeat files are written by other machines).
pub const MAX_NODES: usize = 4096;
/// One heartbeat round advances the seeing clock by at most this many intervals: a round
/// that took longer means this observer could not see for the rest of it.
pub const SEEING_GAP_CAP: u32 = 2;

/// What a node writes into its heartbeat file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node: String,
    pub seq: u64,
    pub boot_id: String,
    pub version: String,
    pub state: HeartbeatState,
    /// How often the node writes (so that observers can tell a slow writer).
    pub interval_ms: u64,
    /// The machine the daemon runs on (`/etc/machine-id`), when it knows it: a daemon
    /// starting under this name elsewhere then knows that this one's containers may still
    /// run here ([`name_taken_from`]). Absent from an older release's beats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    /// The machine this daemon is taking its name over from, until its start has waited
    /// and reconciled: a daemon restarted meanwhile (on this machine) waits again instead
    /// of taking the other machine's volumes at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taken_from: Option<String>,
}

/// The machine a daemon starting under a name takes the name over from: `previous`, the
/// name's heartbeat as this daemon found it before its own first beat, is of a running
/// daemon on another machine than `machine` (a cloned host, a standby started by hand
/// after the first daemon died). That daemon is gone (this one holds the name lock), but
/// its containers may still write there until its fence keeper stops them, and its
/// in-flight writes may land until the fence wait has passed: so this daemon takes none
/// of the name's volumes over (its start's reconcile, which drops what it does not find
/// bound here) before the takeover wait. Unknown machines (an older release's beat, no
/// machine id) decide nothing: the same as before machines were written.
pub fn name_taken_from<'a>(
    previous: Option<&'a Heartbeat>,
    machine: Option<&str>,
) -> Option<&'a str> {
    let previous = previous.filter(|p| p.state == HeartbeatState::Running)?;
    let theirs = previous.machine.as_deref()?;
    if Some(theirs) == machine {
        // A restart here; but one that stopped while waiting still owes the wait.
        return previous.taken_from.as_deref();
    }
    machine.is_some().then_some(theirs)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeartbeatState {
    Running,
    Left,
}

/// A node's state as this observer judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    Alive,
    Dead,
    Left,
}

impl Liveness {
    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Alive => "alive",
            Liveness::Dead => "dead",
            Liveness::Left => "left",
        }
    }
}

/// The verdict on one incarnation, with what a message needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Judgment {
    pub state: Liveness,
    /// While alive: how much more silence (on the seeing clock) until it would be dead.
    pub dead_in: Option<Duration>,
    /// Alive only because this observer is cut off and judges nobody.
    pub observer_cut_off: bool,
}

impl Judgment {
    pub fn alive(dead_in: Option<Duration>) -> Judgment {
        Judgment {
            state: Liveness::Alive,
            dead_in,
            observer_cut_off: false,
        }
    }

    pub fn gone(state: Liveness) -> Judgment {
        Judgment {
            state,
            dead_in: None,
            observer_cut_off: false,
        }
    }

    pub fn is_alive(&self) -> bool {
        self.state == Liveness::Alive
    }
}

/// One node as `caravan nodes` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeView {
    pub node: String,
    pub state: Liveness,
    /// Seconds of this observer's seeing clock since the node's current boot id last beat.
    pub last_seen_secs: f64,
    pub boot_id: String,
    pub version: String,
    /// Seconds until the node would be declared dead, while it is alive and silent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_in_secs: Option<f64>,
}

/// This node's own standing: can it trust that it still holds its exclusive volumes?
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct SelfReport {
    /// Seconds since this node last wrote its heartbeat.
    pub last_beat_secs: Option<f64>,
    /// Set while this node is cut off (its beats or reads of the export fail or stall):
    /// it then declares nobody dead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut_off: Option<String>,
    /// Set while this node re-validates its exclusive volumes after being unable to beat
    /// for `dead_after` (another node may have taken them over meanwhile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revalidating: Option<String>,
    /// The last heartbeat error, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Time that counts as "watching": advanced only by good heartbeat rounds, each by at most
/// `cap`.
#[derive(Debug, Clone, Copy)]
pub struct SeeingClock {
    seen: Duration,
    last_good: Option<Moment>,
    cap: Duration,
}

impl SeeingClock {
    pub fn new(cap: Duration) -> SeeingClock {
        SeeingClock {
            seen: Duration::ZERO,
            last_good: None,
            cap,
        }
    }

    /// The seeing time at `at`: the time since the last good round counts, up to `cap`.
    pub fn now(&self, at: Moment) -> Duration {
        match self.last_good {
            None => self.seen,
            Some(t) => self.seen + at.since(t).min(self.cap),
        }
    }

    /// A round in which this observer wrote its beat and read everyone's ended at `at`.
    pub fn good_round(&mut self, at: Moment) {
        self.seen = self.now(at);
        self.last_good = Some(at);
    }

    pub fn last_good(&self) -> Option<Moment> {
        self.last_good
    }
}

/// What this observer saw of one boot id of a node.
#[derive(Debug, Clone)]
struct BootSeen {
    boot_id: String,
    seq: u64,
    /// Seeing time of the last beat (a change of `seq`, or the first sight).
    last_beat: Duration,
    /// Seeing time of the first sight.
    first_seen: Duration,
    /// Replaced in the file by a later boot id after a gap in this observer's reads: it
    /// may have beaten, unseen, until that read (seeing time).
    hidden_until: Option<Duration>,
    left: bool,
}

/// What this observer saw of one node name.
#[derive(Debug, Clone)]
struct Watch {
    /// Seeing time when this observer first read the node's file.
    first: Duration,
    current: Heartbeat,
    /// Most recently beating first.
    boots: Vec<BootSeen>,
}

/// Every observation, and the pure judgment over them.
#[derive(Debug)]
pub struct Watchers {
    me: String,
    boot_id: String,
    dead_after: Duration,
    pub clock: SeeingClock,
    watches: HashMap<String, Watch>,
    /// Seeing time at which a commit in the store showed an incarnation alive.
    commits: HashMap<(String, String), Duration>,
}

impl Watchers {
    pub fn new(me: &str, boot_id: &str, interval: Duration, dead_after: Duration) -> Watchers {
        Watchers {
            me: me.to_string(),
            boot_id: boot_id.to_string(),
            dead_after,
            clock: SeeingClock::new(interval * SEEING_GAP_CAP),
            watches: HashMap::new(),
            commits: HashMap::new(),
        }
    }

    /// Takes in one heartbeat read at `at`. A new sequence number or a boot id not seen
    /// before is a beat. Returns, for a new beat of an incarnation already seen, the gap
    /// since its previous beat on the seeing clock (for metrics).
    pub fn saw(&mut self, hb: Heartbeat, at: Moment) -> Option<Duration> {
        let now = self.clock.now(at);
        if !self.watches.contains_key(&hb.node) && self.watches.len() >= MAX_NODES {
            return None;
        }
        let mut gap = None;
        let w = self
            .watches
            .entry(hb.node.clone())
            .or_insert_with(|| Watch {
                first: now,
                current: hb.clone(),
                boots: Vec::new(),
            });
        // Blindness hides the beats only of a boot id replaced in the file meanwhile: one
        // still there shows its beats as a moved sequence number at the next read. So when
        // the file names a new boot id and this observer had no good round for longer
        // than the cap before this read, the one it replaced may have beaten, unseen,
        // until now (found by the simulation, seed 890: silent before the gap, it came
        // back and beat during it, and was judged past the takeover limit 6.5 s after its
        // real last beat).
        let blind = self
            .clock
            .last_good()
            .is_some_and(|g| at.since(g) > self.clock.cap);
        if hb.boot_id != w.current.boot_id && blind {
            let replaced = w.current.boot_id.clone();
            if let Some(b) = w.boots.iter_mut().find(|b| b.boot_id == replaced) {
                b.hidden_until = Some(now);
            }
        }
        let left = hb.state == HeartbeatState::Left;
        match w.boots.iter().position(|b| b.boot_id == hb.boot_id) {
            Some(i) => {
                let mut b = w.boots.remove(i);
                if b.seq != hb.seq {
                    b.seq = hb.seq;
                    gap = now.checked_sub(b.last_beat);
                    b.last_beat = now;
                }
                b.left = left;
                w.boots.insert(0, b);
            }
            None => {
                w.boots.insert(
                    0,
                    BootSeen {
                        boot_id: hb.boot_id.clone(),
                        seq: hb.seq,
                        last_beat: now,
                        first_seen: now,
                        hidden_until: None,
                        left,
                    },
                );
                w.boots.truncate(MAX_BOOTS_PER_NODE);
            }
        }
        w.current = hb;
        gap
    }

    /// `node`'s heartbeat file is there but could not be read or decoded at `at` (a newer
    /// version's format, a damaged file): this observer cannot see the node, and blindness
    /// must not count as silence, so its current boot id counts as beating.
    pub fn saw_unreadable(&mut self, node: &str, at: Moment) {
        let now = self.clock.now(at);
        if let Some(w) = self.watches.get_mut(node) {
            let current = w.current.boot_id.clone();
            if let Some(b) = w.boots.iter_mut().find(|b| b.boot_id == current) {
                b.last_beat = now;
            }
        }
    }

    /// A commit in the store, seen at `at`, changed records of (`node`, `boot_id`): that
    /// incarnation was alive after this observer's previous look at the store.
    pub fn saw_commit(&mut self, node: &str, boot_id: &str, at: Moment) {
        if self.commits.len() >= MAX_NODES * 4 {
            self.commits.clear();
        }
        let now = self.clock.now(at);
        self.commits
            .insert((node.to_string(), boot_id.to_string()), now);
    }

    /// Whether this observer is cut off at `at`: no good round within `dead_after`.
    pub fn cut_off(&self, at: Moment) -> bool {
        self.clock
            .last_good()
            .is_none_or(|t| at.since(t) > self.dead_after)
    }

    /// Judges the incarnation (`node`, `boot_id`) at `at`. `boot_id` is the one recorded
    /// with the mount or hold at stake; `None` (a record from a version that did not
    /// record it) judges the node's current boot id.
    pub fn judge(&self, node: &str, boot_id: Option<&str>, at: Moment) -> Judgment {
        self.judge_within(node, boot_id, at, self.dead_after)
    }

    /// Like [`Watchers::judge`], dead only after `limit` of silence.
    pub fn judge_within(
        &self,
        node: &str,
        boot_id: Option<&str>,
        at: Moment,
        limit: Duration,
    ) -> Judgment {
        if node == self.me {
            // Only one daemon runs per name (the name lock), so an earlier boot id of this
            // node's own name is gone.
            return match boot_id {
                Some(b) if b != self.boot_id => Judgment::gone(Liveness::Dead),
                _ => Judgment::alive(None),
            };
        }
        if self.cut_off(at) {
            return Judgment {
                state: Liveness::Alive,
                dead_in: None,
                observer_cut_off: true,
            };
        }
        let Some(w) = self.watches.get(node) else {
            // Never watched: it may be starting; only silence proves it gone.
            return Judgment::alive(Some(limit));
        };
        let boot = boot_id.unwrap_or(&w.current.boot_id);
        let seen = w.boots.iter().find(|b| b.boot_id == boot);
        if seen.is_some_and(|b| b.left) {
            return Judgment::gone(Liveness::Left);
        }
        // A boot id never seen in the file has been silent since this observer began
        // watching the file (had it run, it would have written there), and at least
        // since it first saw the boot id the file names now: one daemon runs per name
        // (the name lock), so an earlier one was gone before that one began, but it may
        // have lived and died unseen while this observer was blind (counted from the
        // first watch, it was judged dead a third early in the simulation, shortening a
        // takeover's fence wait). A boot id known only from a commit counts from the
        // commit, below.
        let current = w
            .boots
            .iter()
            .find(|b| b.boot_id == w.current.boot_id)
            .map_or(w.first, |b| b.first_seen);
        let mut last = seen.map_or(w.first.max(current), |b| {
            b.last_beat.max(b.hidden_until.unwrap_or_default())
        });
        if let Some(c) = self.commits.get(&(node.to_string(), boot.to_string())) {
            last = last.max(*c);
        }
        let silent = self.clock.now(at).saturating_sub(last);
        if silent > limit {
            Judgment::gone(Liveness::Dead)
        } else {
            Judgment::alive(Some(limit - silent))
        }
    }

    pub fn views(&self, at: Moment, version: &str) -> Vec<NodeView> {
        let mut out: Vec<NodeView> = self
            .watches
            .iter()
            .filter(|(name, _)| **name != self.me)
            .map(|(name, w)| {
                let j = self.judge(name, None, at);
                let last = w
                    .boots
                    .iter()
                    .find(|b| b.boot_id == w.current.boot_id)
                    .map_or(w.first, |b| b.last_beat);
                NodeView {
                    node: name.clone(),
                    state: j.state,
                    last_seen_secs: self.clock.now(at).saturating_sub(last).as_secs_f64(),
                    boot_id: w.current.boot_id.clone(),
                    version: w.current.version.clone(),
                    dead_in_secs: j.dead_in.map(|d| d.as_secs_f64()),
                }
            })
            .collect();
        out.push(NodeView {
            node: self.me.clone(),
            state: Liveness::Alive,
            last_seen_secs: 0.0,
            boot_id: self.boot_id.clone(),
            version: version.to_string(),
            dead_in_secs: None,
        });
        out.sort_by(|a, b| a.node.cmp(&b.node));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn a_name_last_beating_on_another_machine_is_taken_over_only_after_the_wait() {
        let on = |machine: Option<&str>, state| Heartbeat {
            machine: machine.map(str::to_string),
            ..hb("a", "a1", 1, state)
        };
        let running = on(Some("m1"), HeartbeatState::Running);
        assert_eq!(name_taken_from(Some(&running), Some("m2")), Some("m1"));
        assert_eq!(
            name_taken_from(Some(&running), Some("m1")),
            None,
            "a restart here"
        );
        assert_eq!(
            name_taken_from(Some(&running), None),
            None,
            "no machine id here"
        );
        let old = on(None, HeartbeatState::Running);
        assert_eq!(
            name_taken_from(Some(&old), Some("m2")),
            None,
            "an older release"
        );
        let left = on(Some("m1"), HeartbeatState::Left);
        assert_eq!(
            name_taken_from(Some(&left), Some("m2")),
            None,
            "it stopped cleanly"
        );
        let waiting = Heartbeat {
            taken_from: Some("m1".into()),
            ..on(Some("m2"), HeartbeatState::Running)
        };
        assert_eq!(
            name_taken_from(Some(&waiting), Some("m2")),
            Some("m1"),
            "restarted here while it waited: it waits again"
        );
        assert_eq!(name_taken_from(None, Some("m2")), None, "a new name");
    }

    fn hb(node: &str, boot: &str, seq: u64, state: HeartbeatState) -> Heartbeat {
        Heartbeat {
            node: node.into(),
            seq,
            boot_id: boot.into(),
            version: "test".into(),
            state,
            interval_ms: 1000,
            machine: None,
            taken_from: None,
        }
    }

    /// An observer "me" (boot m1), interval 1 s, dead after 5 s, with one good round at t0.
    fn watchers() -> (Watchers, Moment) {
        let t0 = Moment::ZERO;
        let mut w = Watchers::new("me", "m1", SEC, 5 * SEC);
        w.clock.good_round(t0);
        (w, t0)
    }

    /// Good rounds every second from `from` to `to` seconds after t0, with `beats` seen
    /// in each.
    fn rounds(w: &mut Watchers, t0: Moment, from: u64, to: u64, beats: &[(&str, &str)]) {
        for s in from..=to {
            let at = t0 + SEC * s as u32;
            for (i, (node, boot)) in beats.iter().enumerate() {
                w.saw(
                    hb(node, boot, s * 100 + i as u64, HeartbeatState::Running),
                    at,
                );
            }
            w.clock.good_round(at);
        }
    }

    #[test]
    fn a_beating_incarnation_is_alive_and_a_silent_one_dies_after_dead_after() {
        let (mut w, t0) = watchers();
        rounds(&mut w, t0, 1, 3, &[("b", "b1")]);
        assert!(w.judge("b", Some("b1"), t0 + 3 * SEC).is_alive());
        rounds(&mut w, t0, 4, 8, &[]);
        let j = w.judge("b", Some("b1"), t0 + 8 * SEC);
        assert!(j.is_alive(), "5 s of silence is not more than 5 s: {j:?}");
        rounds(&mut w, t0, 9, 9, &[]);
        assert_eq!(w.judge("b", Some("b1"), t0 + 9 * SEC).state, Liveness::Dead);
        assert_eq!(w.judge("b", None, t0 + 9 * SEC).state, Liveness::Dead);
    }

    #[test]
    fn a_restarted_node_is_judged_by_its_new_boot_id() {
        let (mut w, t0) = watchers();
        rounds(&mut w, t0, 1, 2, &[("b", "b1")]);
        rounds(&mut w, t0, 3, 10, &[]);
        assert_eq!(
            w.judge("b", Some("b1"), t0 + 10 * SEC).state,
            Liveness::Dead
        );
        // b restarts as b2: a mount it records with b2 is alive at once, b1's stay dead.
        rounds(&mut w, t0, 11, 11, &[("b", "b2")]);
        assert!(w.judge("b", Some("b2"), t0 + 11 * SEC).is_alive());
        assert!(w.judge("b", None, t0 + 11 * SEC).is_alive());
        assert_eq!(
            w.judge("b", Some("b1"), t0 + 11 * SEC).state,
            Liveness::Dead
        );
    }

    /// Found by the simulation (tests/sim/, seed 400 then): b2 started and died while this
    /// observer was blind; judged from the watch's beginning it was dead at once, a third
    /// early, which shortened a takeover's wait for its writes. Counted from the first
    /// sight of b3 (not from the end of the observer's blindness, which a slow round would
    /// reset again and again), b2 still dies.
    #[test]
    fn a_boot_id_that_ran_while_the_observer_was_blind_is_silent_since_its_successor_was_seen() {
        let (mut w, t0) = watchers();
        rounds(&mut w, t0, 1, 20, &[("b", "b1")]);
        // Blind from 20 s to 40 s (no good round); b2 ran meanwhile, unseen, and b3 now
        // beats in the file.
        rounds(&mut w, t0, 40, 40, &[("b", "b3")]);
        assert!(
            w.judge("b", Some("b2"), t0 + 41 * SEC).is_alive(),
            "b2 may have beaten until the observer saw again"
        );
        // Rounds slower than the cap from here on (the observer is slow, not blind): b2
        // still dies once dead_after of seeing has passed since b3 was first seen.
        for at in [43, 46, 49, 52] {
            rounds(&mut w, t0, at, at, &[("b", "b3")]);
        }
        assert_eq!(
            w.judge("b", Some("b2"), t0 + 52 * SEC).state,
            Liveness::Dead,
            "dead after dead_after of seeing since"
        );
    }

    /// Found by the simulation (tests/sim/, seed 890): b1 silent for a while, then this
    /// observer blind while b1 came back, beat and was replaced by b2. Seeing again, the
    /// observer must not count b1's silence from before its blindness.
    #[test]
    fn a_boot_id_replaced_while_the_observer_was_blind_may_have_beaten_until_then() {
        let (mut w, t0) = watchers();
        rounds(&mut w, t0, 1, 5, &[("b", "b1")]);
        // b1 is silent (its own link cut) for 4 s of seeing.
        rounds(&mut w, t0, 6, 9, &[]);
        // The observer is blind from 9 s to 30 s; b1 beat and died, b2 beats now.
        rounds(&mut w, t0, 30, 30, &[("b", "b2")]);
        assert!(
            w.judge("b", Some("b1"), t0 + 31 * SEC).is_alive(),
            "b1 may have beaten until b2 was first seen"
        );
        rounds(&mut w, t0, 31, 36, &[("b", "b2")]);
        assert_eq!(
            w.judge("b", Some("b1"), t0 + 36 * SEC).state,
            Liveness::Dead,
            "dead after dead_after of seeing since"
        );
    }

    #[test]
    fn a_boot_id_known_only_from_a_commit_is_alive_until_dead_after() {
        let (mut w, t0) = watchers();
        rounds(&mut w, t0, 1, 10, &[("b", "b1")]);
        // b2's first commit is seen before its first heartbeat: the old rule (name only)
        // would not apply, and a boot id never seen in the file counts as silent since
        // the watch began (t0+1) — without the commit it would be dead.
        assert_eq!(
            w.judge("b", Some("b2"), t0 + 10 * SEC).state,
            Liveness::Dead
        );
        w.saw_commit("b", "b2", t0 + 10 * SEC);
        assert!(w.judge("b", Some("b2"), t0 + 10 * SEC).is_alive());
        rounds(&mut w, t0, 11, 16, &[("b", "b1")]);
        assert_eq!(
            w.judge("b", Some("b2"), t0 + 16 * SEC).state,
            Liveness::Dead
        );
    }

    #[test]
    fn an_unknown_node_is_alive_and_a_left_boot_is_gone_at_once() {
        let (mut w, t0) = watchers();
        assert!(w.judge("never", Some("x"), t0).is_alive());
        w.saw(hb("b", "b1", 1, HeartbeatState::Left), t0);
        assert_eq!(w.judge("b", Some("b1"), t0).state, Liveness::Left);
        // The same name started again: its new boot is alive, the old one stays left.
        w.saw(hb("b", "b2", 1, HeartbeatState::Running), t0 + SEC);
        assert!(w.judge("b", Some("b2"), t0 + SEC).is_alive());
        assert_eq!(w.judge("b", Some("b1"), t0 + SEC).state, Liveness::Left);
    }

    #[test]
    fn time_the_observer_could_not_see_counts_for_nobody() {
        let (mut w, t0) = watchers();
        rounds(&mut w, t0, 1, 2, &[("b", "b1")]);
        // The export stalls for 60 s for everyone: no good round, then rounds resume.
        let back = t0 + 62 * SEC;
        assert!(w.cut_off(back), "no good round for 60 s: cut off");
        let j = w.judge("b", Some("b1"), back);
        assert!(j.is_alive() && j.observer_cut_off, "{j:?}");
        // The first good round after the stall advances the clock by at most 2 s.
        w.clock.good_round(back);
        assert!(!w.cut_off(back));
        assert!(w.judge("b", Some("b1"), back).is_alive());
        // b stays silent: dead only once it stayed silent for dead_after of seeing time.
        rounds(&mut w, back, 1, 2, &[]);
        assert!(w.judge("b", Some("b1"), back + 2 * SEC).is_alive());
        rounds(&mut w, back, 3, 4, &[]);
        assert_eq!(
            w.judge("b", Some("b1"), back + 4 * SEC).state,
            Liveness::Dead
        );
    }

    #[test]
    fn a_node_whose_file_cannot_be_read_is_not_silent() {
        let (mut w, t0) = watchers();
        rounds(&mut w, t0, 1, 2, &[("b", "b1")]);
        for s in 3..=20u32 {
            w.saw_unreadable("b", t0 + SEC * s);
            w.clock.good_round(t0 + SEC * s);
        }
        assert!(w.judge("b", Some("b1"), t0 + 20 * SEC).is_alive());
        rounds(&mut w, t0, 21, 27, &[]);
        assert_eq!(
            w.judge("b", Some("b1"), t0 + 27 * SEC).state,
            Liveness::Dead
        );
    }

    #[test]
    fn earlier_boots_of_my_own_name_are_gone_and_mine_is_alive() {
        let (w, t0) = watchers();
        assert!(w.judge("me", Some("m1"), t0).is_alive());
        assert!(w.judge("me", None, t0).is_alive());
        assert_eq!(w.judge("me", Some("m0"), t0).state, Liveness::Dead);
    }
}
