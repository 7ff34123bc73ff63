//! Node identity, heartbeats and liveness, without comparing clocks across hosts.
//!
//! Each daemon rewrites `<root>/.caravan/nodes/<node>.json` every heartbeat interval with
//! a sequence number that only grows and a boot id that is new at every start. Observers
//! never read the file's mtime or a timestamp from another host: they note, on their own
//! monotonic clock, when they last saw the sequence (or the boot id) change. A node whose
//! heartbeat has not moved for `dead_after` is dead. A node that stopped cleanly writes
//! `state: left` and is treated as gone at once.
//!
//! A node seen for the first time counts as alive until it has failed to move for
//! `dead_after` on this observer's clock: after a restart an observer cannot know how old
//! a heartbeat is, and declaring a live node dead would hand its volumes to another host.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::layout::{replace_file, SharedLayout};

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

/// One node as `caravan nodes` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeView {
    pub node: String,
    pub state: Liveness,
    /// Seconds since this observer last saw the heartbeat move (its own clock).
    pub last_seen_secs: f64,
    pub boot_id: String,
    pub version: String,
    /// Seconds until the node would be declared dead, while it is alive and silent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_in_secs: Option<f64>,
}

struct Observation {
    seq: u64,
    boot_id: String,
    changed_at: Instant,
    last: Heartbeat,
}

/// This node's heartbeat writer and its view of every other node.
pub struct Nodes {
    me: String,
    dir: PathBuf,
    boot_id: String,
    interval: Duration,
    dead_after: Duration,
    seq: Mutex<u64>,
    seen: Mutex<HashMap<String, Observation>>,
}

impl Nodes {
    pub fn new(
        layout: &SharedLayout,
        me: &str,
        interval: Duration,
        dead_after: Duration,
    ) -> Result<Nodes> {
        let dir = layout.nodes_dir();
        fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        Ok(Nodes {
            me: me.to_string(),
            dir,
            boot_id: new_boot_id(),
            interval,
            dead_after,
            seq: Mutex::new(0),
            seen: Mutex::new(HashMap::new()),
        })
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    pub fn boot_id(&self) -> &str {
        &self.boot_id
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    pub fn dead_after(&self) -> Duration {
        self.dead_after
    }

    fn file(&self, node: &str) -> PathBuf {
        self.dir.join(format!("{node}.json"))
    }

    /// Writes this node's heartbeat (the next sequence number).
    pub fn beat(&self, state: HeartbeatState) -> Result<()> {
        let seq = {
            let mut s = self.seq.lock().unwrap_or_else(|p| p.into_inner());
            *s += 1;
            *s
        };
        let hb = Heartbeat {
            node: self.me.clone(),
            seq,
            boot_id: self.boot_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            state,
            interval_ms: self.interval.as_millis() as u64,
        };
        // No fsync: the point is that other nodes see it move, which the rename gives.
        replace_file(
            &self.file(&self.me),
            &serde_json::to_vec(&hb).expect("heartbeats serialize"),
        )
    }

    /// Reads every heartbeat file and updates the observations.
    pub fn observe(&self) -> Result<()> {
        let now = Instant::now();
        let entries = fs::read_dir(&self.dir).ctx(|| format!("reading {}", self.dir.display()))?;
        let mut read = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match read_heartbeat(&path) {
                Ok(hb) => read.push(hb),
                // A file being replaced, or damaged: the next round reads it again.
                Err(e) => tracing::debug!("skipping {}: {e}", path.display()),
            }
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        for hb in read {
            match seen.get_mut(&hb.node) {
                Some(o) if o.seq == hb.seq && o.boot_id == hb.boot_id => o.last = hb,
                Some(o) => {
                    o.seq = hb.seq;
                    o.boot_id = hb.boot_id.clone();
                    o.changed_at = now;
                    o.last = hb;
                }
                None => {
                    seen.insert(
                        hb.node.clone(),
                        Observation {
                            seq: hb.seq,
                            boot_id: hb.boot_id.clone(),
                            changed_at: now,
                            last: hb,
                        },
                    );
                }
            }
        }
        Ok(())
    }

    /// The state of `node` as this observer judges it now. A node never seen (no
    /// heartbeat file yet) counts as alive: it may be starting, and only silence over
    /// `dead_after` proves it is gone.
    pub fn liveness(&self, node: &str) -> Liveness {
        if node == self.me {
            return Liveness::Alive;
        }
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match seen.get(node) {
            None => Liveness::Alive,
            Some(o) if o.last.state == HeartbeatState::Left => Liveness::Left,
            Some(o) if o.changed_at.elapsed() > self.dead_after => Liveness::Dead,
            Some(_) => Liveness::Alive,
        }
    }

    /// Seconds until a silent live node would be declared dead (for error messages).
    pub fn dead_in(&self, node: &str) -> Option<Duration> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(node)
            .map(|o| self.dead_after.saturating_sub(o.changed_at.elapsed()))
    }

    /// Every node this observer knows, sorted by name.
    pub fn views(&self) -> Vec<NodeView> {
        let mut names: Vec<String> = {
            let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.keys().cloned().collect()
        };
        if !names.contains(&self.me) {
            names.push(self.me.clone());
        }
        names.sort();
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for name in names {
            let state = if name == self.me {
                Liveness::Alive
            } else {
                match seen.get(&name) {
                    Some(o) if o.last.state == HeartbeatState::Left => Liveness::Left,
                    Some(o) if o.changed_at.elapsed() > self.dead_after => Liveness::Dead,
                    _ => Liveness::Alive,
                }
            };
            let o = seen.get(&name);
            let last_seen = o
                .map(|o| o.changed_at.elapsed().as_secs_f64())
                .unwrap_or(0.0);
            out.push(NodeView {
                node: name.clone(),
                state,
                last_seen_secs: if name == self.me { 0.0 } else { last_seen },
                boot_id: if name == self.me {
                    self.boot_id.clone()
                } else {
                    o.map(|o| o.boot_id.clone()).unwrap_or_default()
                },
                version: o
                    .map(|o| o.last.version.clone())
                    .unwrap_or_else(|| env!("CARGO_PKG_VERSION").into()),
                dead_in_secs: (state == Liveness::Alive && name != self.me).then(|| {
                    self.dead_after
                        .saturating_sub(Duration::from_secs_f64(last_seen))
                        .as_secs_f64()
                }),
            });
        }
        out
    }

    /// The liveness of every known node, for decisions made in one pass.
    pub fn snapshot(&self) -> BTreeMap<String, Liveness> {
        self.views()
            .into_iter()
            .map(|v| (v.node, v.state))
            .collect()
    }
}

fn read_heartbeat(path: &Path) -> Result<Heartbeat> {
    let bytes = fs::read(path).ctx(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::invalid(format!("{}: {e}", path.display())))
}

/// A random id for this start of the daemon (the kernel's UUID generator).
fn new_boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| format!("{}-{:?}", std::process::id(), Instant::now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dead_after: Duration) -> (tempfile::TempDir, Nodes, Nodes) {
        let d = tempfile::tempdir().unwrap();
        let layout = SharedLayout::new(d.path());
        let a = Nodes::new(&layout, "a", Duration::from_millis(50), dead_after).unwrap();
        let b = Nodes::new(&layout, "b", Duration::from_millis(50), dead_after).unwrap();
        (d, a, b)
    }

    #[test]
    fn a_silent_node_dies_after_dead_after_on_the_observers_clock() {
        let (_d, a, b) = pair(Duration::from_millis(300));
        b.beat(HeartbeatState::Running).unwrap();
        a.observe().unwrap();
        assert_eq!(a.liveness("b"), Liveness::Alive);
        std::thread::sleep(Duration::from_millis(200));
        b.beat(HeartbeatState::Running).unwrap();
        a.observe().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        a.observe().unwrap();
        assert_eq!(
            a.liveness("b"),
            Liveness::Alive,
            "the beat 200 ms ago keeps it alive"
        );
        std::thread::sleep(Duration::from_millis(200));
        a.observe().unwrap();
        assert_eq!(a.liveness("b"), Liveness::Dead);
        assert!(a
            .views()
            .iter()
            .any(|v| v.node == "b" && v.state == Liveness::Dead));
        // It comes back: alive again at the next beat.
        b.beat(HeartbeatState::Running).unwrap();
        a.observe().unwrap();
        assert_eq!(a.liveness("b"), Liveness::Alive);
    }

    #[test]
    fn a_clean_stop_is_left_at_once_and_self_is_always_alive() {
        let (_d, a, b) = pair(Duration::from_secs(60));
        b.beat(HeartbeatState::Left).unwrap();
        a.observe().unwrap();
        assert_eq!(a.liveness("b"), Liveness::Left);
        assert_eq!(a.liveness("a"), Liveness::Alive);
        assert_eq!(a.liveness("never-seen"), Liveness::Alive);
    }

    #[test]
    fn a_stale_file_seen_first_counts_as_alive_until_dead_after() {
        let (d, _a, b) = pair(Duration::from_millis(200));
        b.beat(HeartbeatState::Running).unwrap();
        // A new observer (restarted) finds b's old file: alive, then dead after 200 ms.
        let c = Nodes::new(
            &SharedLayout::new(d.path()),
            "c",
            Duration::from_millis(50),
            Duration::from_millis(200),
        )
        .unwrap();
        c.observe().unwrap();
        assert_eq!(c.liveness("b"), Liveness::Alive);
        std::thread::sleep(Duration::from_millis(250));
        c.observe().unwrap();
        assert_eq!(c.liveness("b"), Liveness::Dead);
    }
}
