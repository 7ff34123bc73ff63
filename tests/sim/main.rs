//! A deterministic simulation of a caravan cluster: many nodes running the core's real rules
//! on virtual time, with faults, and the cluster's invariants checked after every step.
//! This file is the cluster's world (liveness, holds, takeovers, removes); the metadata
//! store's commit and read paths have a world of their own, in `metadata.rs`.
//!
//! What runs for real: the judging of incarnations (`core::liveness::Watchers`: what each
//! observer saw, its seeing clock, `judge_within`), each node's standing as a holder
//! (`core::standing::Standing`: the lease per beat, lapses, re-validation) and the store's
//! decisions, batch and all, as its worker makes them (`core::batch`: the heartbeats of
//! `judged_nodes` read fresh, then `decide_batch` with mounts, unmounts, removes and
//! reconciles, the holder rule and the takeover wait). What is modelled around them, as
//! the shell does it: the heartbeat files on the export, the cluster lock (a decision runs
//! atomically on the current records), each host's export client (writes held while its link is down, failed
//! once the server drops the client), the fence keeper (kills the host's containers of
//! exclusive volumes once the lease read from the last beat has run out), Swarm (one task
//! per volume, rescheduled when its node is lost) and operators (`docker run` of a second
//! container on the volume, planned moves, `docker volume rm` on any node, the volume then
//! created again).
//!
//! Faults: hosts killed and restarted (new boot id, containers gone), daemons killed and
//! restarted (new boot id, containers keep running, within the lease or not; one start in
//! four under the same name on another machine, which waits the takeover wait before its
//! reconcile, as `daemon` does when the name's last beat names another machine), daemons
//! frozen (SIGSTOP) and continued, links cut for up to four takeover waits, every host's
//! monotonic clock running at its own rate (±200 ppm) from its own origin, and every
//! host's wall clock off by up to a day (it fills only display fields: a seed makes the
//! same decisions with the wall clocks skewed or not).
//!
//! Invariants, after every step:
//! - **one writer**: no write of a container lands on a volume after the first write of a
//!   container granted the volume later (what `tests/one_writer.rs` checks on GlusterFS);
//! - **no false death**: an incarnation judged dead (or, as a holder, past the takeover
//!   wait) had really not landed a beat for that long, less the clock-rate error;
//! - **no remove in use**: no remove is acknowledged while a container runs on the volume
//!   on a node whose daemon is the incarnation recorded with its mount and beats;
//! - **fresh reads**: a decision judges only nodes whose heartbeats `judged_nodes` had
//!   read before it (else it would judge on an old view).
//!
//! `cargo test --test sim` runs a fixed budget of 600 seeds (CI, 22 to 40 s unoptimised);
//! `scripts/sim SEEDS [FIRST]` runs more; `CARAVAN_SIM_SEED=N cargo test --test sim replay
//! -- --nocapture` replays one seed with its event log (`CARAVAN_SIM_BUG=cached-judgment`,
//! `no-fence-wait`, `remove-sees-only-its-node` or `name-taken-without-waiting` with a bug
//! put back). A failing seed prints the command that
//! replays it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use caravan::core::batch::{self, Decisions, Stored};
use caravan::core::decide::{Event, Oracle};
use caravan::core::liveness::{Heartbeat, HeartbeatState, Judgment, Liveness, Watchers};
use caravan::core::mutation::Mutation;
use caravan::core::standing::Standing;
use caravan::core::time::Moment;
use caravan::core::volume::{VolumeOptions, VolumeRecord};

/// One step of virtual time.
const TICK_MS: u64 = 50;
/// The largest rate error of a host's monotonic clock, in parts per million.
const SKEW_PPM: i64 = 200;

/// A bug put back on purpose, to show the simulation finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bug {
    None,
    /// Judge a holder on what the last heartbeat round saw, without reading its file
    /// afresh under the lock (the rule: a fresh read; docs/semantics.md, "Liveness").
    CachedJudgment,
    /// Take a holder's volume over once it is dead, without waiting until its in-flight
    /// writes can no longer land (no fence wait).
    NoFenceWait,
    /// A remove that looks only at the mounts of the node asked (as Docker's `local`
    /// driver may), not at the cluster's.
    RemoveSeesOnlyItsNode,
    /// A daemon started under a dead daemon's name on another machine takes that name's
    /// volumes over at once (its reconcile drops what it does not find bound here),
    /// while the other machine's containers may still write until its keeper fences them.
    NameTakenWithoutWaiting,
}

#[derive(Debug, Clone, Copy)]
struct Params {
    nodes: usize,
    volumes: usize,
    interval: Duration,
    dead_after: Duration,
    /// How long the export server keeps a silent client's writes able to land.
    server_drop: Duration,
    /// The fence wait: the server's drop plus slack (as `crate::host::fence` derives it).
    fence_wait: Duration,
    /// Virtual time per seed.
    length: Duration,
    bug: Bug,
}

impl Params {
    fn for_seed(seed: u64, bug: Bug) -> Params {
        let mut rng = fastrand::Rng::with_seed(seed ^ 0x5eed);
        Params {
            // Mostly small clusters (faults meet more often), one seed in ten up to 50.
            nodes: if rng.u8(..10) == 0 {
                rng.usize(8..=50)
            } else {
                rng.usize(3..=7)
            },
            volumes: rng.usize(1..=3),
            interval: Duration::from_secs(1),
            dead_after: Duration::from_secs(5),
            server_drop: Duration::from_secs(8),
            fence_wait: Duration::from_secs(10),
            length: Duration::from_secs(300),
            bug,
        }
    }

    fn term(&self) -> Duration {
        self.dead_after.saturating_sub(self.interval)
    }

    fn takeover_after(&self) -> Duration {
        match self.bug {
            Bug::NoFenceWait => self.dead_after,
            _ => self.dead_after + self.fence_wait,
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap()
}

struct Container {
    id: u64,
    mount_id: String,
    volume: usize,
    node: usize,
    alive: bool,
    /// A write held in the host's export client since this true time (ms).
    held: Option<u64>,
    /// Stops by itself at this time (an operator's container).
    until: Option<u64>,
    /// Its volume was removed under it (its node's incarnation judged dead): it writes into
    /// the trash from then on, not into the volume made again under that name.
    trashed: bool,
    /// Its node's name was taken by a daemon on another machine: it runs on, unseen by
    /// that daemon, until its own machine's keeper fences it at this reading of the
    /// machine's clock (the lease its last daemon left).
    orphaned_until: Option<Moment>,
}

struct Node {
    name: String,
    boot: u32,
    seq: u64,
    host_up: bool,
    daemon_up: bool,
    frozen_until: u64,
    link_down_until: u64,
    link_down_since: Option<u64>,
    /// When the daemon or host comes back (true ms), while down.
    back_at: Option<u64>,
    rate_ppm: i64,
    origin_us: u64,
    /// How far this host's wall clock is off (s): it only fills display fields of the
    /// records (created, taken over at), and no decision may depend on it.
    wall_offset_s: i64,
    watchers: Watchers,
    standing: Standing,
    next_round: u64,
    /// A beat whose write is held in the export client: when it began, on this host's clock.
    held_beat: Option<Moment>,
    /// The fence keeper's lease: valid until this reading of the host's clock.
    lease_until: Option<Moment>,
    /// Unmounts dockerd asked for while the export did not answer (volume, mount ID).
    pending_unmounts: Vec<(usize, String)>,
    /// A daemon started under this name on another machine reconciles and serves only
    /// from this true time on (the wait for the other machine's containers).
    ready_at: u64,
}

impl Node {
    fn boot_id(&self) -> String {
        format!("{}-b{}", self.name, self.boot)
    }

    /// This host's wall clock (Unix seconds) at true time `t` (ms).
    fn wall(&self, t: u64) -> u64 {
        (i64::try_from(t / 1000).unwrap() + self.wall_offset_s).max(0) as u64 + 1_800_000_000
    }

    /// This host's monotonic clock at true time `t` (ms).
    fn clock(&self, t: u64) -> Moment {
        let t_us = i128::from(t) * 1000;
        let us = t_us + t_us * i128::from(self.rate_ppm) / 1_000_000 + i128::from(self.origin_us);
        Moment::from_origin(Duration::from_micros(u64::try_from(us).unwrap()))
    }

    fn link_up(&self, t: u64) -> bool {
        self.host_up && t >= self.link_down_until
    }

    fn daemon_runs(&self, t: u64) -> bool {
        self.host_up && self.daemon_up && t >= self.frozen_until
    }
}

struct World {
    seed: u64,
    p: Params,
    t: u64,
    rng: fastrand::Rng,
    nodes: Vec<Node>,
    /// The heartbeat files on the export.
    files: BTreeMap<String, Heartbeat>,
    /// When each incarnation's last beat landed (true ms), or when it started.
    landed: HashMap<(String, String), u64>,
    records: Vec<VolumeRecord>,
    containers: Vec<Container>,
    next_container: u64,
    /// Per volume: the newest container (by grant) that has landed a write.
    newest_writer: Vec<Option<u64>>,
    /// Per volume: Swarm's task, if it believes one runs.
    task: Vec<Option<u64>>,
    next_try: Vec<u64>,
    /// Per node: whether its incarnation ran its restart's reconcile.
    reconciled: Vec<bool>,
    log: Vec<String>,
    violation: Option<String>,
    stats: Stats,
}

#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    steps: u64,
    writes: u64,
    grants: u64,
    takeovers: u64,
    refusals: u64,
    fences: u64,
    judged_dead: u64,
    faults: u64,
    /// Removes acknowledged (the others were refused: the volume was in use).
    removes: u64,
}

/// The oracle a node's store worker hands to the decisions: a fresh read of the judged
/// node's heartbeat file first (unless the bug says otherwise), then the node's own
/// watchers; every death it reports is checked against the truth.
struct SimOracle<'a> {
    watchers: &'a mut Watchers,
    /// The nodes whose heartbeats were read before the batch (`batch::judged_nodes`): a
    /// judgment of any other would rest on an old view.
    read: &'a BTreeSet<String>,
    standing: &'a Standing,
    files: &'a BTreeMap<String, Heartbeat>,
    landed: &'a HashMap<(String, String), u64>,
    now: Moment,
    t: u64,
    p: Params,
    violation: &'a mut Option<String>,
    judged_dead: &'a mut u64,
}

impl SimOracle<'_> {
    fn judged(&mut self, node: &str, boot_id: Option<&str>, limit: Duration) -> Judgment {
        if !self.read.contains(node) && self.violation.is_none() {
            *self.violation = Some(format!(
                "fresh reads: {node} judged, but batch::judged_nodes did not name it, so its heartbeat was not read before the decision"
            ));
        }
        let boot = boot_id
            .map(str::to_string)
            .or_else(|| self.files.get(node).map(|h| h.boot_id.clone()));
        let j = self.watchers.judge_within(node, boot_id, self.now, limit);
        if j.state == Liveness::Dead {
            *self.judged_dead += 1;
            let boot_shown = boot.clone().unwrap_or_default();
            if let Some(last) = boot.and_then(|b| self.landed.get(&(node.to_string(), b))) {
                let silent = self.t.saturating_sub(*last);
                let floor = death_floor(limit);
                if silent < floor && self.violation.is_none() {
                    *self.violation = Some(format!(
                        "no false death: {node} ({}) judged dead (limit {} ms) after only {silent} ms without a beat landing",
                        boot_shown,
                        ms(limit)
                    ));
                }
            }
        }
        j
    }
}

/// The least real silence (ms) after which an incarnation may be judged dead with `limit`:
/// the judge's clock may run fast by SKEW_PPM, and the truth is known to one tick.
fn death_floor(limit: Duration) -> u64 {
    ms(limit)
        .saturating_sub(ms(limit) * 2 * u64::try_from(SKEW_PPM).unwrap() / 1_000_000)
        .saturating_sub(TICK_MS)
}

impl Oracle for SimOracle<'_> {
    fn judge(&mut self, node: &str, boot_id: Option<&str>) -> Judgment {
        let limit = self.p.dead_after;
        self.judged(node, boot_id, limit)
    }
    fn may_hold(&self) -> Result<(), String> {
        self.standing
            .may_hold(self.now)
            .map_err(|e| format!("{e:?}"))
    }
    fn dead_after(&self) -> Duration {
        self.p.dead_after
    }
    fn judge_holder(&mut self, node: &str, boot_id: Option<&str>) -> Judgment {
        let limit = self.p.takeover_after();
        self.judged(node, boot_id, limit)
    }
    fn takeover_after(&self) -> Duration {
        self.p.takeover_after()
    }
}

/// The simulated volumes as the store's stored state: `db<v>` is the record at `v`.
struct Records(Vec<VolumeRecord>);

impl Records {
    fn index(name: &str) -> Option<usize> {
        name.strip_prefix("db")?.parse().ok()
    }
}

impl batch::Volumes for Records {
    fn get(&self, name: &str) -> Option<&VolumeRecord> {
        self.0.get(Records::index(name)?)
    }
    fn records(&self) -> Box<dyn Iterator<Item = &VolumeRecord> + '_> {
        Box::new(self.0.iter())
    }
}

impl World {
    fn new(seed: u64, p: Params) -> World {
        let mut rng = fastrand::Rng::with_seed(seed);
        let nodes = (0..p.nodes)
            .map(|i| {
                let name = format!("h{}", i + 1);
                let boot = 1;
                Node {
                    watchers: Watchers::new(
                        &name,
                        &format!("{name}-b{boot}"),
                        p.interval,
                        p.dead_after,
                    ),
                    standing: Standing::new(p.term()),
                    name,
                    boot,
                    seq: 0,
                    host_up: true,
                    daemon_up: true,
                    frozen_until: 0,
                    link_down_until: 0,
                    link_down_since: None,
                    back_at: None,
                    rate_ppm: rng.i64(-SKEW_PPM..=SKEW_PPM),
                    origin_us: rng.u64(0..1_000_000_000_000),
                    // Up to a day either way, spread over the nodes (not drawn from the
                    // seed's generator: the same seed makes the same decisions with or
                    // without skewed wall clocks, which is what it shows).
                    wall_offset_s: i64::try_from(i).unwrap() * 7_919 % 172_801 - 86_400,
                    next_round: rng.u64(0..ms(p.interval)),
                    held_beat: None,
                    lease_until: None,
                    pending_unmounts: Vec::new(),
                    ready_at: 0,
                }
            })
            .collect();
        let records = (0..p.volumes)
            .map(|v| {
                VolumeRecord::new(
                    &format!("db{v}"),
                    "h1",
                    VolumeOptions::from_map([("access", "exclusive")]).unwrap(),
                    0,
                )
            })
            .collect();
        World {
            seed,
            p,
            t: 0,
            rng,
            nodes,
            files: BTreeMap::new(),
            landed: HashMap::new(),
            records,
            containers: Vec::new(),
            next_container: 1,
            newest_writer: vec![None; p.volumes],
            task: vec![None; p.volumes],
            next_try: vec![ms(p.dead_after); p.volumes],
            reconciled: vec![true; p.nodes],
            log: Vec::new(),
            violation: None,
            stats: Stats::default(),
        }
    }

    fn note(&mut self, what: String) {
        self.log.push(event_line(self.t, &what));
    }

    fn run(&mut self) {
        for n in 0..self.nodes.len() {
            let now = self.nodes[n].clock(self.t);
            self.nodes[n].watchers.clock.good_round(now);
            let boot = self.nodes[n].boot_id();
            self.landed.insert((self.nodes[n].name.clone(), boot), 0);
        }
        while self.t < ms(self.p.length) && self.violation.is_none() {
            self.step();
            self.t += TICK_MS;
            self.stats.steps += 1;
        }
    }

    fn step(&mut self) {
        self.faults();
        for n in 0..self.nodes.len() {
            self.comebacks(n);
            self.client(n);
            self.keeper(n);
            if self.t >= self.nodes[n].next_round && self.nodes[n].daemon_runs(self.t) {
                self.round(n);
            }
        }
        self.writes();
        self.swarm();
        self.operators();
    }

    /// Random faults, each at a rate per second of virtual time.
    fn faults(&mut self) {
        let per_tick = |rate_per_s: f64| rate_per_s * TICK_MS as f64 / 1000.0;
        let takeover = ms(self.p.takeover_after()) + ms(self.p.fence_wait);
        let n = self.rng.usize(0..self.nodes.len());
        let roll = self.rng.f64();
        let t = self.t;
        let node = &self.nodes[n];
        if !node.host_up || node.back_at.is_some() {
            return;
        }
        let mut what = None;
        if roll < per_tick(0.01) {
            let back = self.rng.u64(1_000..=20_000);
            let node = &mut self.nodes[n];
            node.host_up = false;
            node.back_at = Some(t + back);
            what = Some(format!("{} host killed, back in {back} ms", node.name));
        } else if roll < per_tick(0.03) {
            let back = self.rng.u64(200..=12_000);
            let node = &mut self.nodes[n];
            node.daemon_up = false;
            node.held_beat = None;
            node.back_at = Some(t + back);
            what = Some(format!("{} daemon killed, back in {back} ms", node.name));
        } else if roll < per_tick(0.05) && t >= node.frozen_until {
            let d = self.rng.u64(200..=takeover);
            self.nodes[n].frozen_until = t + d;
            what = Some(format!("{} daemon frozen for {d} ms", self.nodes[n].name));
        } else if roll < per_tick(0.08) && node.link_up(t) {
            let d = self.rng.u64(200..=takeover * 2);
            let node = &mut self.nodes[n];
            node.link_down_until = t + d;
            node.link_down_since = Some(t);
            what = Some(format!("{} link cut for {d} ms", node.name));
        }
        if let Some(what) = what {
            self.stats.faults += 1;
            self.note(what);
        }
    }

    /// A killed daemon or host starts again: a new incarnation.
    fn comebacks(&mut self, n: usize) {
        let t = self.t;
        let Some(back) = self.nodes[n].back_at else {
            return;
        };
        if t < back {
            return;
        }
        let p = self.p;
        let node = &mut self.nodes[n];
        let host_restart = !node.host_up;
        if host_restart {
            node.host_up = true;
            node.link_down_until = 0;
            node.link_down_since = None;
            node.lease_until = None;
            node.frozen_until = 0;
            node.pending_unmounts.clear();
            for c in self.containers.iter_mut().filter(|c| c.node == n) {
                c.alive = false;
                c.held = None;
            }
        }
        // One daemon start in four is of a daemon with this name on another machine (a
        // cloned host, a standby started by hand): this machine's containers run on,
        // unseen by it, until this machine's keeper fences them.
        let elsewhere = !host_restart && self.rng.u8(..4) == 0;
        if elsewhere {
            let until = node.lease_until.take().unwrap_or(node.clock(t));
            node.pending_unmounts.clear();
            node.ready_at = match p.bug {
                Bug::NameTakenWithoutWaiting => t,
                _ => t + ms(p.takeover_after()),
            };
            for c in self
                .containers
                .iter_mut()
                .filter(|c| c.node == n && c.alive)
            {
                c.orphaned_until = Some(until);
                c.until = None;
            }
        }
        node.daemon_up = true;
        node.back_at = None;
        node.boot += 1;
        node.seq = 0;
        node.held_beat = None;
        let boot = node.boot_id();
        node.watchers = Watchers::new(&node.name, &boot, p.interval, p.dead_after);
        node.standing = Standing::new(p.term());
        node.next_round = t;
        let name = node.name.clone();
        self.landed.insert((name.clone(), boot), t);
        self.note(format!(
            "{name} {} again as a new incarnation",
            if host_restart {
                "host up"
            } else if elsewhere {
                "daemon started on another machine"
            } else {
                "daemon started"
            }
        ));
        // The first round beats; the restart's reconcile runs once the export answers
        // (see `round`).
        self.nodes[n].next_round = t;
        self.reconciled[n] = false;
    }

    /// The host's export client: held writes fail once the server dropped the client,
    /// and land when the link comes back before that.
    fn client(&mut self, n: usize) {
        let t = self.t;
        let node = &self.nodes[n];
        if !node.host_up {
            return;
        }
        if let Some(since) = node.link_down_since {
            if t >= node.link_down_until {
                self.nodes[n].link_down_since = None;
                // Held writes land now.
                let held: Vec<usize> = (0..self.containers.len())
                    .filter(|&i| self.containers[i].node == n && self.containers[i].held.is_some())
                    .collect();
                for i in held {
                    self.containers[i].held = None;
                    self.land(i);
                }
            } else if t >= since + ms(self.p.server_drop) {
                for c in self.containers.iter_mut().filter(|c| c.node == n) {
                    c.held = None;
                }
                if self.nodes[n].held_beat.take().is_some() {
                    let next = t + ms(self.p.interval);
                    self.nodes[n].next_round = next;
                }
            }
        }
    }

    /// The fence keeper: once the lease read from the last beat ran out, it kills the
    /// host's containers of exclusive volumes (it never waits on the export).
    fn keeper(&mut self, n: usize) {
        let node = &self.nodes[n];
        if !node.host_up {
            return;
        }
        let now = node.clock(self.t);
        let lease_out = node.lease_until.is_some_and(|u| now >= u);
        let name = node.name.clone();
        // The containers of a daemon that ran here before the name was taken elsewhere.
        self.fence_where(
            n,
            |c| c.orphaned_until.is_some_and(|u| now >= u),
            &format!("the keeper of {name}'s earlier machine"),
        );
        if lease_out {
            self.fence_where(n, |c| c.orphaned_until.is_none(), &format!("{name} keeper"));
        }
    }

    /// Kills node `n`'s live containers that `which` picks, as its keeper (`who`) does.
    fn fence_where(&mut self, n: usize, which: impl Fn(&Container) -> bool, who: &str) {
        let mut killed = Vec::new();
        for c in self
            .containers
            .iter_mut()
            .filter(|c| c.node == n && c.alive && which(c))
        {
            c.alive = false;
            killed.push(c.id);
        }
        if !killed.is_empty() {
            self.stats.fences += 1;
            self.note(format!("{who}: lease out, killed containers {killed:?}"));
        }
    }

    /// One heartbeat round of node `n`'s daemon.
    fn round(&mut self, n: usize) {
        let t = self.t;
        let p = self.p;
        let up = self.nodes[n].link_up(t);
        let now = self.nodes[n].clock(t);
        let began = match self.nodes[n].held_beat {
            Some(began) if !up => {
                // Still blocked in the export client.
                let _ = began;
                return;
            }
            Some(began) => {
                self.nodes[n].held_beat = None;
                began
            }
            None => {
                if let Some(lapse) = self.nodes[n].standing.round_starts(now) {
                    let name = self.nodes[n].name.clone();
                    self.note(format!("{name} lapse: {lapse:?}"));
                }
                if !up {
                    self.nodes[n].held_beat = Some(now);
                    return;
                }
                now
            }
        };
        // The beat lands.
        let node = &mut self.nodes[n];
        node.seq += 1;
        let hb = Heartbeat {
            node: node.name.clone(),
            seq: node.seq,
            boot_id: node.boot_id(),
            version: "sim".into(),
            state: HeartbeatState::Running,
            interval_ms: ms(p.interval),
            machine: None,
            taken_from: None,
        };
        if let Some(lapse) = node.standing.beat_landed(began, now) {
            let name = node.name.clone();
            self.note(format!("{name} lapse: {lapse:?}"));
        }
        let node = &mut self.nodes[n];
        node.lease_until = Some(
            node.lease_until
                .map_or(began + p.term(), |u| u.max(began + p.term())),
        );
        self.landed.insert((node.name.clone(), node.boot_id()), t);
        self.files.insert(node.name.clone(), hb);
        // It reads everyone's.
        for hb in self.files.values() {
            node.watchers.saw(hb.clone(), now);
        }
        node.watchers.clock.good_round(now);
        node.next_round = t + ms(p.interval);
        if !self.reconciled[n] && t >= self.nodes[n].ready_at {
            self.reconcile(n);
        }
        self.retry_unmounts(n);
        self.revalidate(n);
    }

    /// After a start: keep this node's mounts only where its container still runs and no
    /// other node took the volume over (a `ReconcileNode` batch).
    fn reconcile(&mut self, n: usize) {
        let name = self.nodes[n].name.clone();
        let bound = (0..self.records.len())
            .filter(|&v| {
                self.containers.iter().any(|c| {
                    c.node == n
                        && c.volume == v
                        && c.alive
                        && c.orphaned_until.is_none()
                        && self.records[v]
                            .mounts
                            .get(&name)
                            .is_some_and(|ids| ids.contains_key(&c.mount_id))
                })
            })
            .map(|v| format!("db{v}"))
            .collect();
        self.decide(n, Mutation::ReconcileNode { node: name, bound });
        self.reconciled[n] = true;
    }

    /// Decides `mutation` of node `n` as its store's worker does, under the lock on the
    /// current records: the heartbeats of `batch::judged_nodes` read first, then
    /// `batch::decide_batch`, whose records are written back.
    fn decide(&mut self, n: usize, mutation: Mutation) -> Decisions {
        let t = self.t;
        let p = self.p;
        let records = Records(std::mem::take(&mut self.records));
        let unreadable = BTreeMap::new();
        let stored = Stored {
            volumes: &records,
            unreadable: &unreadable,
        };
        let node = &mut self.nodes[n];
        let now = node.clock(t);
        let boot = node.boot_id();
        let wall = node.wall(t);
        let read = batch::judged_nodes(stored, [&mutation]);
        if p.bug != Bug::CachedJudgment {
            for hb in read.iter().filter_map(|n| self.files.get(n)) {
                node.watchers.saw(hb.clone(), now);
            }
        }
        let mut oracle = SimOracle {
            watchers: &mut node.watchers,
            read: &read,
            standing: &node.standing,
            files: &self.files,
            landed: &self.landed,
            now,
            t,
            p,
            violation: &mut self.violation,
            judged_dead: &mut self.stats.judged_dead,
        };
        let decisions = batch::decide_batch(
            stored,
            [&mutation],
            &boot,
            wall,
            BTreeMap::new(),
            &mut oracle,
        );
        self.records = records.0;
        for (name, record) in &decisions.overlay {
            if let (Some(v), Some(r)) = (Records::index(name), record) {
                self.records[v] = r.clone();
            }
        }
        decisions
    }

    fn retry_unmounts(&mut self, n: usize) {
        let pending = std::mem::take(&mut self.nodes[n].pending_unmounts);
        for (v, id) in pending {
            self.unmount(n, v, &id);
        }
    }

    /// Every round: a container whose mount the records no longer list (the volume was
    /// taken over) is stopped; after a lapse, that is the re-validation.
    fn revalidate(&mut self, n: usize) {
        let name = self.nodes[n].name.clone();
        let mut lost = Vec::new();
        for c in self
            .containers
            .iter_mut()
            .filter(|c| c.node == n && c.alive && c.orphaned_until.is_none())
        {
            let listed = self.records[c.volume]
                .mounts
                .get(&name)
                .is_some_and(|ids| ids.contains_key(&c.mount_id));
            if !listed {
                c.alive = false;
                lost.push(c.id);
            }
        }
        if !lost.is_empty() {
            self.note(format!(
                "{name} lost its volume: stopped containers {lost:?}"
            ));
        }
        if let Some(epoch) = self.nodes[n].standing.revalidation_needed() {
            self.nodes[n].standing.revalidated(epoch);
        }
    }

    /// Every live container writes one line per tick; a write lands now, or is held by
    /// the host's client while its link is down.
    fn writes(&mut self) {
        let t = self.t;
        for i in 0..self.containers.len() {
            let c = &self.containers[i];
            if !c.alive || c.held.is_some() {
                continue;
            }
            if c.until.is_some_and(|u| t >= u) {
                self.stop(i);
                continue;
            }
            if self.nodes[c.node].link_up(t) {
                self.land(i);
            } else {
                self.containers[i].held = Some(t);
            }
        }
    }

    /// A write of container `i` lands on its volume: the one-writer invariant.
    fn land(&mut self, i: usize) {
        if self.containers[i].trashed {
            return;
        }
        self.stats.writes += 1;
        let (id, v) = (self.containers[i].id, self.containers[i].volume);
        match self.newest_writer[v] {
            Some(newest) if id < newest => {
                if self.violation.is_none() {
                    self.violation = Some(format!(
                        "one writer: a write of container {id} landed on db{v} after container {newest} (granted later) had written"
                    ));
                }
            }
            _ => self.newest_writer[v] = Some(id),
        }
    }

    /// A Mount of volume `v` on node `n` for a new container; its id if granted.
    fn mount(&mut self, n: usize, v: usize, until: Option<u64>) -> Option<u64> {
        let t = self.t;
        if !self.nodes[n].daemon_runs(t) || !self.nodes[n].link_up(t) || !self.reconciled[n] {
            return None;
        }
        let id = self.next_container;
        self.next_container += 1;
        let mount_id = format!("m{id}");
        let name = self.nodes[n].name.clone();
        let decisions = self.decide(
            n,
            Mutation::Mount {
                name: format!("db{v}"),
                node: name.clone(),
                id: mount_id.clone(),
            },
        );
        let events = decisions.events;
        let result = decisions.results.into_iter().next().unwrap();
        match result {
            Ok(_) => {
                for e in &events {
                    if let Event::Granted {
                        from: Some(from), ..
                    } = e
                    {
                        self.stats.takeovers += 1;
                        self.note(format!("{name} took db{v} over from {from}"));
                    }
                }
                self.stats.grants += 1;
                self.containers.push(Container {
                    id,
                    mount_id,
                    volume: v,
                    node: n,
                    alive: true,
                    held: None,
                    until,
                    trashed: false,
                    orphaned_until: None,
                });
                self.note(format!("{name} mounted db{v} for container {id}"));
                Some(id)
            }
            Err(e) => {
                self.stats.refusals += 1;
                if self.rng.u8(..) == 0 {
                    self.note(format!("{name} refused db{v}: {e}"));
                }
                None
            }
        }
    }

    fn unmount(&mut self, n: usize, v: usize, id: &str) {
        let t = self.t;
        if !self.nodes[n].daemon_runs(t) || !self.nodes[n].link_up(t) {
            self.nodes[n].pending_unmounts.push((v, id.to_string()));
            return;
        }
        let name = self.nodes[n].name.clone();
        self.decide(
            n,
            Mutation::Unmount {
                name: format!("db{v}"),
                node: name,
                id: id.to_string(),
            },
        );
    }

    /// dockerd stops container `i` and asks its node to unmount.
    fn stop(&mut self, i: usize) {
        self.containers[i].alive = false;
        let (n, v, id) = (
            self.containers[i].node,
            self.containers[i].volume,
            self.containers[i].mount_id.clone(),
        );
        if self.nodes[n].host_up && !self.containers[i].trashed {
            self.unmount(n, v, &id);
        }
    }

    /// Swarm: one task per volume. A task whose node is down or unreachable for a while
    /// is rescheduled on a random node (the old container may well still run there).
    fn swarm(&mut self) {
        let t = self.t;
        for v in 0..self.p.volumes {
            if let Some(id) = self.task[v] {
                let c = self.containers.iter().find(|c| c.id == id).unwrap();
                let node = &self.nodes[c.node];
                let unreachable = node.link_down_since.is_some_and(|s| t >= s + 4_000);
                if !c.alive || !node.host_up || unreachable {
                    self.task[v] = None;
                    self.next_try[v] = t;
                } else if self.rng.f64() < 0.002 {
                    // A planned move (drain, stop-first update).
                    let i = self.containers.iter().position(|c| c.id == id).unwrap();
                    self.note(format!("swarm moves db{v}'s task"));
                    self.stop(i);
                    self.task[v] = None;
                    self.next_try[v] = t;
                }
                continue;
            }
            if t < self.next_try[v] {
                continue;
            }
            let n = self.rng.usize(0..self.nodes.len());
            self.task[v] = self.mount(n, v, None);
            self.next_try[v] = t + 500;
        }
    }

    /// Operators: now and then a second container of a volume (`docker run`, a start-first
    /// update), which must be refused while another container has it.
    fn operators(&mut self) {
        if self.rng.f64() < 0.01 {
            let n = self.rng.usize(0..self.nodes.len());
            let v = self.rng.usize(0..self.p.volumes);
            let until = self.t + self.rng.u64(500..=20_000);
            self.mount(n, v, Some(until));
        }
        if self.rng.f64() < 0.004 {
            let n = self.rng.usize(0..self.nodes.len());
            let v = self.rng.usize(0..self.p.volumes);
            self.remove(n, v);
        }
    }

    /// `docker volume rm` of volume `v` on node `n` (a `Remove` batch, under the lock on
    /// the current record). Acknowledged, it is checked against the truth, and the
    /// operator creates the volume again: its old data is in the trash.
    fn remove(&mut self, n: usize, v: usize) {
        let t = self.t;
        if !self.nodes[n].daemon_runs(t) || !self.nodes[n].link_up(t) || !self.reconciled[n] {
            return;
        }
        let p = self.p;
        let name = self.nodes[n].name.clone();
        let allowed = if p.bug == Bug::RemoveSeesOnlyItsNode {
            !self.records[v].mounts.contains_key(&name)
        } else {
            let decisions = self.decide(
                n,
                Mutation::Remove {
                    name: format!("db{v}"),
                },
            );
            decisions.results.into_iter().next().unwrap().is_ok()
        };
        if !allowed {
            self.stats.refusals += 1;
            return;
        }
        // The invariant: no live incarnation had it mounted. Live: the incarnation the
        // record names for a node with a container of the volume is that node's running
        // daemon, and its last beat landed too recently for anyone to judge it dead.
        for c in &self.containers {
            // (An orphaned container is no incarnation's mount: one writer judges it.)
            if !c.alive || c.trashed || c.volume != v || c.orphaned_until.is_some() {
                continue;
            }
            let host = &self.nodes[c.node];
            let boot = host.boot_id();
            let recorded = self.records[v].incarnations.get(&host.name) == Some(&boot);
            let last = self.landed.get(&(host.name.clone(), boot)).copied();
            let silent = last.map(|l| t.saturating_sub(l));
            let live = host.host_up
                && host.daemon_up
                && recorded
                && silent.is_some_and(|s| s < death_floor(p.dead_after));
            if live && self.violation.is_none() {
                self.violation = Some(format!(
                    "remove: db{v} removed on {name} while container {} of {}'s live incarnation had it mounted ({} ms since its beat landed)",
                    c.id,
                    host.name,
                    silent.unwrap_or(0)
                ));
            }
        }
        self.stats.removes += 1;
        self.note(format!("{name} removed db{v}; it is created again"));
        for c in self.containers.iter_mut().filter(|c| c.volume == v) {
            c.trashed = true;
        }
        self.records[v] = VolumeRecord::new(
            &format!("db{v}"),
            &name,
            VolumeOptions::from_map([("access", "exclusive")]).unwrap(),
            t / 1000,
        );
        self.newest_writer[v] = None;
    }
}

struct Outcome {
    seed: u64,
    violation: Option<String>,
    log: Vec<String>,
    stats: Stats,
}

fn simulate(seed: u64, bug: Bug) -> Outcome {
    let p = Params::for_seed(seed, bug);
    let mut w = World::new(seed, p);
    w.run();
    Outcome {
        seed: w.seed,
        violation: w.violation,
        log: w.log,
        stats: w.stats,
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?}: give a whole number")),
    )
}

/// Runs `count` seeds from `first`; returns the first failing outcome, with the totals.
fn sweep(first: u64, count: u64, bug: Bug) -> (Option<Outcome>, Stats, f64) {
    let started = Instant::now();
    let mut total = Stats::default();
    for seed in first..first + count {
        let o = simulate(seed, bug);
        total.steps += o.stats.steps;
        total.writes += o.stats.writes;
        total.grants += o.stats.grants;
        total.takeovers += o.stats.takeovers;
        total.refusals += o.stats.refusals;
        total.fences += o.stats.fences;
        total.judged_dead += o.stats.judged_dead;
        total.faults += o.stats.faults;
        total.removes += o.stats.removes;
        if o.violation.is_some() {
            return (Some(o), total, started.elapsed().as_secs_f64());
        }
    }
    (None, total, started.elapsed().as_secs_f64())
}

/// One line of a seed's event log: the virtual time `t` (ms) and what happened.
fn event_line(t: u64, what: &str) -> String {
    format!("{:>8.2}s {what}", t as f64 / 1000.0)
}

/// What a failing seed prints: the invariant, the command that replays it (the test
/// `replay_test`), and the end of its event log.
fn failure_report(
    what: &str,
    seed: u64,
    violation: Option<&str>,
    log: &[String],
    replay_test: &str,
) -> String {
    let tail = &log[log.len().saturating_sub(40)..];
    format!(
        "seed {seed} broke an invariant of {what}: {}\nreplay: CARAVAN_SIM_SEED={seed} cargo test --test sim {replay_test} -- --nocapture\nlast events:\n{}",
        violation.unwrap_or("?"),
        tail.join("\n")
    )
}

fn report(o: &Outcome) -> String {
    failure_report(
        "the cluster",
        o.seed,
        o.violation.as_deref(),
        &o.log,
        "replay",
    )
}

/// The CI budget: these seeds, every invariant after every step.
#[test]
fn the_cluster_keeps_its_invariants_under_faults() {
    let first = env_u64("CARAVAN_SIM_FIRST").unwrap_or(1);
    let count = env_u64("CARAVAN_SIM_SEEDS").unwrap_or(600);
    let (failed, total, secs) = sweep(first, count, Bug::None);
    if let Some(o) = failed {
        panic!("{}", report(&o));
    }
    println!(
        "{count} seeds from {first} in {secs:.1} s ({:.0} seeds/s, {:.0} virtual s per real s): {} faults, {} grants ({} takeovers), {} refusals, {} fences, {} judged dead, {} writes, {} removes",
        count as f64 / secs,
        (total.steps * TICK_MS) as f64 / 1000.0 / secs,
        total.faults,
        total.grants,
        total.takeovers,
        total.refusals,
        total.fences,
        total.judged_dead,
        total.writes,
        total.removes
    );
    // Not vacuous: the faults reached the rules that keep one writer.
    assert!(
        total.takeovers > 0
            && total.fences > 0
            && total.refusals > 0
            && total.judged_dead > 0
            && total.removes > 0,
        "{total:?}"
    );
}

/// A bug put back is found within the CI budget.
fn finds(bug: Bug) -> Outcome {
    let (failed, total, secs) = sweep(1, 200, bug);
    let o = failed.unwrap_or_else(|| {
        panic!("the simulation did not find {bug:?} in 200 seeds ({secs:.1} s, {total:?})")
    });
    println!(
        "{bug:?} found at seed {}: {}",
        o.seed,
        o.violation.as_deref().unwrap_or("")
    );
    o
}

/// A bug put back is found within the CI budget, breaking the invariant `invariant`.
fn finds_breaking(bug: Bug, invariant: &str) {
    let o = finds(bug);
    assert!(
        o.violation
            .as_deref()
            .is_some_and(|v| v.starts_with(invariant)),
        "{:?}",
        o.violation
    );
}

#[test]
fn it_finds_a_takeover_judged_on_a_cached_heartbeat() {
    finds(Bug::CachedJudgment);
}

#[test]
fn it_finds_a_takeover_that_does_not_wait_for_in_flight_writes() {
    finds_breaking(Bug::NoFenceWait, "one writer");
}

#[test]
fn it_finds_a_name_taken_from_another_machine_without_waiting() {
    finds_breaking(Bug::NameTakenWithoutWaiting, "one writer");
}

#[test]
fn it_finds_a_remove_that_looks_only_at_its_own_node() {
    finds_breaking(Bug::RemoveSeesOnlyItsNode, "remove:");
}

/// `CARAVAN_SIM_SEED=N`: one seed, with its whole event log.
#[test]
fn replay() {
    let Some(seed) = env_u64("CARAVAN_SIM_SEED") else {
        return;
    };
    let bug = match std::env::var("CARAVAN_SIM_BUG").as_deref() {
        Err(_) => Bug::None,
        Ok("cached-judgment") => Bug::CachedJudgment,
        Ok("no-fence-wait") => Bug::NoFenceWait,
        Ok("remove-sees-only-its-node") => Bug::RemoveSeesOnlyItsNode,
        Ok("name-taken-without-waiting") => Bug::NameTakenWithoutWaiting,
        Ok(other) => panic!(
            "CARAVAN_SIM_BUG={other:?}: give cached-judgment, no-fence-wait, remove-sees-only-its-node or name-taken-without-waiting"
        ),
    };
    let o = simulate(seed, bug);
    println!("{}", o.log.join("\n"));
    println!("{:?}", o.stats);
    if o.violation.is_some() {
        panic!("{}", report(&o));
    }
}

mod metadata;

/// The metadata store's budget: these seeds, every invariant after every step.
#[test]
fn the_metadata_store_keeps_its_invariants_under_faults() {
    let first = env_u64("CARAVAN_SIM_FIRST").unwrap_or(1);
    let count = env_u64("CARAVAN_SIM_SEEDS").unwrap_or(300);
    let started = Instant::now();
    let mut total = metadata::Stats::default();
    for seed in first..first + count {
        let o = metadata::simulate(seed, metadata::Bug::None);
        total = total.plus(&o.stats);
        if o.violation.is_some() {
            panic!("{}", metadata_report(&o));
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!("{count} seeds from {first} in {secs:.1} s: {total:?}");
    // Not vacuous: the faults reached the paths that keep reads fresh.
    assert!(
        total.catch_ups > 0
            && total.reloads > 0
            && total.torn_hints > 0
            && total.hints_ahead > 0
            && total.hint_failures > 0
            && total.unknown > 0
            && total.remounts > 0,
        "{total:?}"
    );
}

fn metadata_report(o: &metadata::Outcome) -> String {
    failure_report(
        "the metadata store",
        o.seed,
        o.violation.as_deref(),
        &o.log,
        "replay_metadata",
    )
}

/// Panics unless `bug`, put back, breaks an invariant within the CI budget.
fn finds_in_metadata(bug: metadata::Bug) -> metadata::Outcome {
    let started = Instant::now();
    for seed in 1..=300 {
        let o = metadata::simulate(seed, bug);
        if o.violation.is_some() {
            println!(
                "{bug:?} found at seed {} in {:.1} s: {}",
                o.seed,
                started.elapsed().as_secs_f64(),
                o.violation.as_deref().unwrap_or("")
            );
            return o;
        }
    }
    panic!("the simulation did not find {bug:?} in 300 seeds");
}

#[test]
fn it_finds_a_generation_that_repeats_a_number_the_hint_gave() {
    finds_in_metadata(metadata::Bug::HintRepeat);
}

#[test]
fn it_finds_a_hint_trusted_however_far_ahead() {
    finds_in_metadata(metadata::Bug::TrustAnyHint);
}

#[test]
fn it_finds_states_labelled_above_sled() {
    finds_in_metadata(metadata::Bug::NoFloor);
}

#[test]
fn it_finds_an_untrusted_hint_set_back_to_a_number_readers_took() {
    finds_in_metadata(metadata::Bug::SetBackToSled);
}

/// `CARAVAN_SIM_SEED=N`: one seed of the metadata store, with its whole event log.
#[test]
fn replay_metadata() {
    let Some(seed) = env_u64("CARAVAN_SIM_SEED") else {
        return;
    };
    let bug = match std::env::var("CARAVAN_SIM_BUG").as_deref() {
        Err(_) => metadata::Bug::None,
        Ok("hint-repeat") => metadata::Bug::HintRepeat,
        Ok("trust-any-hint") => metadata::Bug::TrustAnyHint,
        Ok("set-back-to-sled") => metadata::Bug::SetBackToSled,
        Ok("no-floor") => metadata::Bug::NoFloor,
        Ok(other) => panic!(
            "CARAVAN_SIM_BUG={other:?}: give hint-repeat, trust-any-hint, set-back-to-sled or no-floor"
        ),
    };
    let o = metadata::simulate(seed, bug);
    println!("{}", o.log.join("\n"));
    println!("{:?}", o.stats);
    if o.violation.is_some() {
        panic!("{}", metadata_report(&o));
    }
}
