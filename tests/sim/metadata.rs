//! The metadata store simulated: several nodes committing to one sled on the export under
//! the cluster lock and reading it without the lock, through the generation hint and the
//! change journal, on virtual time with faults; its invariants checked after every step.
//!
//! What runs for real: the numbers of the freshness protocol (`core::freshness`): the next
//! generation past sled's and the hint's, whether a hint is trusted, what a hold knows after
//! syncing (the state's generation, the hint values it is current for, the journal numbers
//! voided), the hint range after a commit, whether a state answers a read, how far a reader
//! catches up. What is modelled around them, step by step as `cluster::store` does it (one
//! step, one touch of the export): a hold of the lock (take the lock, open sled and the
//! hint, sync, decide, write sled, write the journal entry, publish, move the hint, answer;
//! a failed flush settled by a fresh open), a reader (read the hint, answer, or catch up
//! from the journal and swap the result in over the state it began from, or ask the store
//! thread for a reload under the lock) and the hint's retry once a second.
//!
//! Faults: daemons killed at any step (the lock dies with them) and started again; a hint
//! write failing, or cut short by the writer's death (the file then holds the new number's
//! first digits and the old one's last: a partial write); journal entries lost or torn;
//! links cut (a cut-off lock holder blocks every other node until the server drops it,
//! and nothing it wrote lands after that); the export mounted again under a node (every
//! handle of a hold in progress fails, its lock goes with the old connection, and the
//! readers' kept handle fails once); a node of the last release killed between its
//! hint write and its sled commit (the hint left one ahead of sled, the case the trusted
//! distance is for); another machine writing the hint (the largest number, any number,
//! garbage).
//!
//! Invariants, after every step:
//! - **never back**: a daemon never serves a generation older than one it served;
//! - **committed only**: every state served is exactly what sled held at the newest commit
//!   at or before its generation (never a state that was not committed);
//! - **acknowledged is seen**: a read that began after a commit was acknowledged and its
//!   number reached the hint serves it, on any node (a commit whose hint write failed is
//!   acknowledged before that: it is seen once a hold has brought the hint up, within a
//!   second; docs/semantics.md, "The metadata store"), unless another machine wrote the
//!   hint in between: the hint is not authenticated, and a reader then keeps the state it
//!   has until the next commit writes the hint (it still never goes back, never sees an
//!   uncommitted state, and decides nothing on it);
//! - **commits go on**: no value found in the hint (written by another machine: the
//!   export is hostile input) exhausts the generation counter;
//! - **acknowledged creates survive**: no commit writes a create over a name sled holds
//!   (it would replace a record created before: the store thread decided on an old state).

use std::collections::BTreeMap;

use caravan::core::freshness;

/// One step of virtual time.
const TICK_MS: u64 = 10;
/// How long the export server keeps a silent client's lock and writes.
const SERVER_DROP_MS: u64 = 8_000;
/// How long a hold waits for the lock (half of `--timeout`).
const LOCK_WAIT_MS: u64 = 10_000;
/// How long a read waits on the export before answering from the cached state, marked
/// stale (`READ_BUDGET`).
const READ_BUDGET_MS: u64 = 1_000;
/// Digits of the hint file (`store::hint`).
const WIDTH: usize = 20;

/// A bug put back on purpose, to show the simulation finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    None,
    /// Number a commit past sled's generation only, not past the hint's (the hint is left
    /// ahead by a commit that died after it): a reader that saw the number takes the later
    /// commit for one it has.
    HintRepeat,
    /// Take any number read from the hint, however far ahead of sled.
    TrustAnyHint,
    /// Set a hint not trusted back to sled's own generation, without the floor (the fix of
    /// issue 24, found wanting by this simulation): a number readers took from a hint
    /// left ahead by a crash is then repeated by the next commit.
    SetBackToSled,
    /// Label states with a hint adopted above sled's generation without writing it into
    /// sled first (the floor): a hint written lower later (another machine, an older
    /// node setting it back to sled's) lets a commit repeat a number readers hold.
    NoFloor,
}

type Records = BTreeMap<String, u64>;

#[derive(Debug, Clone)]
enum HintFile {
    Missing,
    Text(Vec<u8>),
}

fn hint_text(generation: u64) -> Vec<u8> {
    format!("{generation:0WIDTH$}\n").into_bytes()
}

impl HintFile {
    /// As a reader reads it (`hint::read`): missing or empty is 0, garbage is no hint.
    fn read(&self) -> Option<u64> {
        match self {
            HintFile::Missing => Some(0),
            HintFile::Text(t) => match String::from_utf8_lossy(t).trim() {
                "" => Some(0),
                t => t.parse().ok(),
            },
        }
    }

    /// As the lock holder opens it (`HintWriter::open`): `None` when not a number
    /// (missing or empty included: it creates the file).
    fn opened(&self) -> Option<u64> {
        match self {
            HintFile::Missing => None,
            HintFile::Text(t) => String::from_utf8_lossy(t).trim().parse().ok(),
        }
    }
}

#[derive(Debug, Clone)]
enum Entry {
    Intact {
        store: u32,
        generation: u64,
        changes: Vec<(String, Option<u64>)>,
    },
    /// A write cut short: fails its hash.
    Torn,
}

/// The shared export.
struct Export {
    store: u32,
    sled_gen: u64,
    sled: Records,
    hint: HintFile,
    journal: BTreeMap<u64, Entry>,
    /// The node whose hold has the lock.
    lock: Option<usize>,
    /// What sled held after each commit: generation → records.
    history: BTreeMap<u64, Records>,
}

impl Export {
    /// What sled held at the newest commit at or before `generation`.
    fn committed(&self, generation: u64) -> Option<&Records> {
        self.history
            .range(..=generation)
            .next_back()
            .map(|(_, r)| r)
    }
}

/// A node's state of the metadata (`store::Snapshot`, the fields the protocol uses).
#[derive(Debug, Clone, Default)]
struct State {
    loaded: bool,
    generation: u64,
    hints: (u64, u64),
    /// Known to be the newest at this instant (virtual clock).
    validated: Option<u64>,
    volumes: Records,
    store: Option<u32>,
    serial: u64,
}

impl State {
    fn answers(&self, started: u64, hint: u64) -> bool {
        freshness::answers(self.loaded, self.hints, self.validated, started, hint)
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Create(String, u64),
    Remove(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Lock,
    Open,
    Sync,
    Decide,
    Write,
    Journal,
    Publish,
    Hint,
    Reply,
}

/// One hold of the lock by a node's store thread.
struct Hold {
    step: Step,
    began: u64,
    mutations: Vec<Mutation>,
    hint_last: u64,
    overlay: Vec<(String, Option<u64>)>,
    results: Vec<bool>,
    next: u64,
    /// Whether the commit landed in sled.
    landed: bool,
    hint_moved: bool,
    /// Since when the hold waits for the lock (true ms).
    waiting_since: Option<u64>,
    /// The export was mounted again during the hold: every handle it opened (sled, the
    /// hint, the journal folder, the lock) is of a connection that is gone.
    stale: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadStep {
    Hint,
    /// Waiting for the catch-up in flight on this node (one at a time), then beginning one.
    CatchUp,
    /// Reading the journal's entries, one a step.
    Journal,
    /// Waiting for the store thread's reload (a `Refresh` job).
    Confirm,
}

struct Read {
    step: ReadStep,
    began_ms: u64,
    started: u64,
    hint: u64,
    /// The state a catch-up began from, and what it has made of it so far.
    base: State,
    next: State,
    /// The journal entry a catch-up reads next.
    at: u64,
    /// The hold that serves this reader's reload: its `began` must come after the request.
    requested: u64,
}

struct Node {
    name: String,
    up: bool,
    back_at: u64,
    incarnation: u32,
    link_down_until: u64,
    link_down_since: Option<u64>,
    /// The server dropped this client: every call on the export fails at once until the
    /// link is back (then the client connects again, and is not told it lost its lock).
    dropped: bool,
    /// The export was mounted again: the readers' kept handle fails once (ESTALE), and is
    /// opened again from the configured path.
    remounted: bool,
    /// The store thread's state: only ever one it loaded from sled or committed itself.
    worker: State,
    /// The state readers are served (the worker's, or a catch-up's).
    cache: State,
    hint_behind: bool,
    next_hint_retry: u64,
    queue: Vec<Mutation>,
    /// Readers waiting for a reload: the instant each asked.
    refresh_wanted: Vec<u64>,
    hold: Option<Hold>,
    /// Reads in flight (dockerd sends them concurrently).
    reads: Vec<Read>,
    /// A read is catching up (`Store::catching_up`).
    catching_up: bool,
    /// The newest generation this incarnation served.
    served: u64,
    /// Reloads served to readers by the last finished hold (request instants answered).
    refreshed_at: Option<(u64, bool)>,
}

impl Node {
    fn link_up(&self, t: u64) -> bool {
        self.up && t >= self.link_down_until
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub commits: u64,
    pub acknowledged: u64,
    pub reads: u64,
    pub catch_ups: u64,
    pub reloads: u64,
    pub faults: u64,
    pub torn_hints: u64,
    pub hints_ahead: u64,
    pub hint_failures: u64,
    pub unknown: u64,
    pub planted: u64,
    pub remounts: u64,
}

impl Stats {
    pub fn plus(&self, o: &Stats) -> Stats {
        Stats {
            commits: self.commits + o.commits,
            acknowledged: self.acknowledged + o.acknowledged,
            reads: self.reads + o.reads,
            catch_ups: self.catch_ups + o.catch_ups,
            reloads: self.reloads + o.reloads,
            faults: self.faults + o.faults,
            torn_hints: self.torn_hints + o.torn_hints,
            hints_ahead: self.hints_ahead + o.hints_ahead,
            hint_failures: self.hint_failures + o.hint_failures,
            unknown: self.unknown + o.unknown,
            planted: self.planted + o.planted,
            remounts: self.remounts + o.remounts,
        }
    }
}

pub struct Outcome {
    pub seed: u64,
    pub violation: Option<String>,
    pub log: Vec<String>,
    pub stats: Stats,
}

struct World {
    bug: Bug,
    t: u64,
    /// The virtual instant: one more for every step taken (orders reads and answers).
    clock: u64,
    length_ms: u64,
    rng: fastrand::Rng,
    export: Export,
    nodes: Vec<Node>,
    names: usize,
    /// The chance per node and step of a call that commits: busy clusters and idle ones
    /// (where a hint stays as it is for long).
    busy: f64,
    next_value: u64,
    next_serial: u64,
    /// (instant, generation): from that instant on, every read must serve at least that
    /// generation (an acknowledged commit whose number reached the hint). Instants grow.
    floors: Vec<(u64, u64)>,
    /// Acknowledged commits whose hint write failed: they join `floors` once the hint
    /// reaches them.
    unpublished: Vec<u64>,
    /// Instants at which another machine wrote the hint: a reader then holds the state it
    /// has until the next commit writes the hint (the hint is not authenticated), so the
    /// acknowledgements before such an instant are not required of reads after it.
    tampered: Vec<u64>,
    log: Vec<String>,
    violation: Option<String>,
    stats: Stats,
}

impl World {
    fn new(seed: u64, bug: Bug) -> World {
        let mut rng = fastrand::Rng::with_seed(seed);
        let n = if rng.u8(..4) == 0 {
            rng.usize(4..=8)
        } else {
            rng.usize(2..=3)
        };
        let nodes = (0..n)
            .map(|i| Node {
                name: format!("h{}", i + 1),
                up: true,
                back_at: 0,
                incarnation: 1,
                link_down_until: 0,
                link_down_since: None,
                dropped: false,
                remounted: false,
                worker: State::default(),
                cache: State::default(),
                hint_behind: false,
                next_hint_retry: 0,
                queue: Vec::new(),
                refresh_wanted: Vec::new(),
                hold: None,
                reads: Vec::new(),
                catching_up: false,
                served: 0,
                refreshed_at: None,
            })
            .collect();
        World {
            bug,
            t: 0,
            clock: 0,
            length_ms: 60_000,
            names: rng.usize(2..=5),
            busy: [0.02, 0.002, 0.0002][rng.usize(..3)],
            export: Export {
                store: rng.u32(..),
                sled_gen: 0,
                sled: Records::new(),
                hint: HintFile::Missing,
                journal: BTreeMap::new(),
                lock: None,
                history: BTreeMap::from([(0, Records::new())]),
            },
            rng,
            nodes,
            next_value: 1,
            next_serial: 1,
            floors: Vec::new(),
            unpublished: Vec::new(),
            tampered: Vec::new(),
            log: Vec::new(),
            violation: None,
            stats: Stats::default(),
        }
    }

    fn note(&mut self, what: String) {
        self.log.push(super::event_line(self.t, &what));
    }

    fn violate(&mut self, what: String) {
        if self.violation.is_none() {
            self.note(format!("VIOLATION {what}"));
            self.violation = Some(what);
        }
    }

    fn serial(&mut self) -> u64 {
        self.next_serial += 1;
        self.next_serial
    }

    fn run(&mut self) {
        while self.t < self.length_ms && self.violation.is_none() {
            self.faults();
            let mut order: Vec<usize> = (0..self.nodes.len()).collect();
            self.rng.shuffle(&mut order);
            for n in order {
                self.comeback(n);
                self.drop_by_server(n);
                self.work(n);
                self.clock += 1;
                self.hold_step(n);
                self.clock += 1;
                let reads = std::mem::take(&mut self.nodes[n].reads);
                for r in reads {
                    if let Some(r) = self.read_step(n, r) {
                        self.nodes[n].reads.push(r);
                    }
                    self.clock += 1;
                }
            }
            self.t += TICK_MS;
        }
    }

    /// Random faults, each at a rate per second of virtual time.
    fn faults(&mut self) {
        let per_tick = |rate: f64| rate * TICK_MS as f64 / 1000.0;
        let n = self.rng.usize(0..self.nodes.len());
        let roll = self.rng.f64();
        let t = self.t;
        if !self.nodes[n].up {
            return;
        }
        if roll < per_tick(0.1) {
            let back = self.rng.u64(100..=3_000);
            self.kill(n, back, "killed");
        } else if roll < per_tick(0.14) && self.nodes[n].link_up(t) {
            let d = self.rng.u64(100..=20_000);
            let node = &mut self.nodes[n];
            node.link_down_until = t + d;
            node.link_down_since = Some(t);
            let name = node.name.clone();
            self.stats.faults += 1;
            self.note(format!("{name} link cut for {d} ms"));
        } else if roll < per_tick(0.16) && self.export.lock.is_none() {
            // A node of the last release takes the lock, writes the hint before sled
            // (that release's order) and dies between the two.
            let ahead = self
                .export
                .sled_gen
                .max(self.export.hint.opened().unwrap_or(0))
                .saturating_add(1);
            self.export.hint = HintFile::Text(hint_text(ahead));
            self.stats.faults += 1;
            self.stats.hints_ahead += 1;
            self.note(format!(
                "a node of the last release died between its hint write ({ahead}) and its commit (sled at {})",
                self.export.sled_gen
            ));
        } else if roll < per_tick(0.21) {
            // Another machine writes the hint (rule 2: the export is hostile input).
            let sled = self.export.sled_gen;
            let text = match self.rng.u8(..4) {
                0 => hint_text(u64::MAX),
                // Near sled's: below what readers hold, or a little ahead.
                1 => hint_text(self.rng.u64(..=sled.saturating_add(128))),
                2 => hint_text(self.rng.u64(..)),
                _ => b"not a number\n".to_vec(),
            };
            let shown = String::from_utf8_lossy(&text).trim().to_string();
            self.export.hint = HintFile::Text(text);
            self.tampered.push(self.clock);
            self.stats.faults += 1;
            self.stats.planted += 1;
            self.note(format!("another machine wrote {shown:?} into the hint"));
        } else if roll < per_tick(0.24) && self.export.lock.is_none() {
            // A node of the last release takes the lock and sets a hint it does not trust
            // (or cannot read) back to sled's own generation, without committing.
            let found = self.export.hint.opened();
            let stored = self.export.sled_gen;
            if found.is_none_or(|f| f > stored + freshness::TRUSTED_AHEAD) {
                self.export.hint = HintFile::Text(hint_text(stored));
                self.stats.faults += 1;
                self.note(format!(
                    "a node of the last release set the hint {found:?} back to sled's {stored}"
                ));
            }
        } else if roll < per_tick(0.26) && self.nodes[n].link_up(t) {
            // The export is mounted again on this host (its FUSE client restarted, an
            // operator remounted it): the old connection's lock goes with it.
            if self.export.lock == Some(n) {
                self.export.lock = None;
            }
            let node = &mut self.nodes[n];
            node.remounted = true;
            if let Some(h) = node.hold.as_mut() {
                h.stale = true;
            }
            let name = node.name.clone();
            self.stats.faults += 1;
            self.stats.remounts += 1;
            self.note(format!("{name}'s export mounted again"));
        }
    }

    /// The daemon of node `n` dies: the lock with it (the kernel releases it), and every
    /// call in flight.
    fn kill(&mut self, n: usize, back_ms: u64, how: &str) {
        let t = self.t;
        if self.export.lock == Some(n) {
            self.export.lock = None;
        }
        let node = &mut self.nodes[n];
        node.up = false;
        node.back_at = t + back_ms;
        node.hold = None;
        node.reads.clear();
        node.catching_up = false;
        node.queue.clear();
        node.refresh_wanted.clear();
        let name = node.name.clone();
        self.stats.faults += 1;
        self.note(format!("{name} daemon {how}, back in {back_ms} ms"));
    }

    fn comeback(&mut self, n: usize) {
        let t = self.t;
        let node = &mut self.nodes[n];
        if node.up || t < node.back_at {
            return;
        }
        node.up = true;
        node.incarnation += 1;
        node.link_down_until = 0;
        node.link_down_since = None;
        node.dropped = false;
        node.remounted = false;
        node.worker = State::default();
        node.cache = State::default();
        node.hint_behind = false;
        node.served = 0;
        let name = node.name.clone();
        self.note(format!("{name} daemon started again"));
    }

    /// The server gives up on a silent client: its lock goes, and every call of the
    /// client fails until its link is back.
    fn drop_by_server(&mut self, n: usize) {
        let t = self.t;
        let node = &mut self.nodes[n];
        let Some(since) = node.link_down_since else {
            return;
        };
        if t >= node.link_down_until {
            node.link_down_since = None;
            node.dropped = false;
            return;
        }
        if t < since + SERVER_DROP_MS || node.dropped {
            return;
        }
        node.dropped = true;
        if self.export.lock == Some(n) {
            self.export.lock = None;
            let name = self.nodes[n].name.clone();
            self.note(format!(
                "{name} cut off too long: the server dropped its lock"
            ));
        }
    }

    /// Calls arriving at node `n`: mutations queue for its store thread, reads start.
    fn work(&mut self, n: usize) {
        let t = self.t;
        if !self.nodes[n].up {
            return;
        }
        if self.rng.f64() < self.busy {
            let name = format!("v{}", self.rng.usize(0..self.names));
            let m = if self.rng.bool() {
                self.next_value += 1;
                Mutation::Create(name, self.next_value)
            } else {
                Mutation::Remove(name)
            };
            self.nodes[n].queue.push(m);
        }
        if self.nodes[n].reads.len() < 3 && self.rng.f64() < 0.1 {
            self.nodes[n].reads.push(Read {
                step: ReadStep::Hint,
                began_ms: t,
                started: 0,
                hint: 0,
                base: State::default(),
                next: State::default(),
                at: 0,
                requested: 0,
            });
        }
        let node = &mut self.nodes[n];
        if node.hold.is_none() {
            let retry = node.hint_behind && t >= node.next_hint_retry;
            if !node.queue.is_empty() || !node.refresh_wanted.is_empty() || retry {
                // The reload asked for is this hold's sync.
                node.refresh_wanted.clear();
                if retry {
                    node.next_hint_retry = t + 1_000;
                }
                node.hold = Some(Hold {
                    step: Step::Lock,
                    began: self.clock,
                    mutations: std::mem::take(&mut node.queue),
                    hint_last: 0,
                    overlay: Vec::new(),
                    results: Vec::new(),
                    next: 0,
                    landed: false,
                    hint_moved: false,
                    waiting_since: None,
                    stale: false,
                });
            }
        }
    }

    /// Writes `generation` to the hint as the lock holder of node `n` does; `Err` when the
    /// write failed (and `Ok(false)` when the writer died in the middle of it).
    fn write_hint(&mut self, n: usize, generation: u64) -> Result<bool, ()> {
        let roll = self.rng.f64();
        if roll < 0.03 {
            self.stats.hint_failures += 1;
            return Err(());
        }
        if roll < 0.05 {
            // A partial write, and the writer dies before the rest.
            let new = hint_text(generation);
            let mut text = match &self.export.hint {
                HintFile::Text(old) => old.clone(),
                HintFile::Missing => Vec::new(),
            };
            let k = self.rng.usize(1..new.len());
            if text.len() < k {
                text.resize(k, b' ');
            }
            text[..k].copy_from_slice(&new[..k]);
            let torn = String::from_utf8_lossy(&text).trim().to_string();
            self.export.hint = HintFile::Text(text);
            self.stats.torn_hints += 1;
            self.note(format!(
                "{} torn hint write of {generation}: the file reads {torn:?}",
                self.nodes[n].name
            ));
            let back = self.rng.u64(100..=3_000);
            self.kill(n, back, "killed in the middle of a hint write");
            return Ok(false);
        }
        self.export.hint = HintFile::Text(hint_text(generation));
        self.published(generation);
        Ok(true)
    }

    /// The hint now holds `generation`: acknowledged commits up to it are seen by every
    /// read that begins from now on.
    fn published(&mut self, generation: u64) {
        let now = self.clock;
        let (reached, rest): (Vec<u64>, Vec<u64>) =
            self.unpublished.iter().partition(|g| **g <= generation);
        self.unpublished = rest;
        if let Some(g) = reached.into_iter().max() {
            self.floors.push((now, g));
        }
    }

    /// One step of node `n`'s hold of the lock.
    fn hold_step(&mut self, n: usize) {
        let t = self.t;
        let Some(mut h) = self.nodes[n].hold.take() else {
            return;
        };
        let touches_export = matches!(
            h.step,
            Step::Lock | Step::Open | Step::Sync | Step::Write | Step::Journal | Step::Hint
        );
        if touches_export && h.stale {
            // ESTALE on a handle of the old connection.
            return self.export_failed(n, h);
        }
        if touches_export && !self.nodes[n].link_up(t) {
            // Held in the export client until the link is back; failed once the server
            // dropped the client (or the lock wait's deadline passed).
            let gave_up =
                h.step == Step::Lock && t >= *h.waiting_since.get_or_insert(t) + LOCK_WAIT_MS;
            if self.nodes[n].dropped || gave_up {
                return self.export_failed(n, h);
            }
            self.nodes[n].hold = Some(h);
            return;
        }
        match h.step {
            Step::Lock => {
                if self.export.lock.is_some() {
                    let since = *h.waiting_since.get_or_insert(t);
                    if t >= since + LOCK_WAIT_MS {
                        return self.hold_failed(n, h, "waiting for the cluster lock");
                    }
                    self.nodes[n].hold = Some(h);
                    return;
                }
                self.export.lock = Some(n);
                h.step = Step::Open;
            }
            Step::Open => {
                let found = self.export.hint.opened();
                h.hint_last = found.unwrap_or(0);
                let stored = self.export.sled_gen;
                let trusted = match self.bug {
                    Bug::TrustAnyHint => true,
                    _ => freshness::hint_trusted(stored, found),
                };
                if !trusted {
                    let back = match self.bug {
                        Bug::SetBackToSled => stored,
                        _ => freshness::set_back(stored),
                    };
                    self.note(format!(
                        "{} hint {found:?} not trusted beside sled's {stored}: set back to {back}",
                        self.nodes[n].name
                    ));
                    match self.write_hint(n, back) {
                        Ok(true) => h.hint_last = back,
                        Ok(false) => return,
                        Err(()) => return self.hold_failed(n, h, "setting the hint back"),
                    }
                }
                h.step = Step::Sync;
            }
            Step::Sync => {
                // sync_state
                let stored = self.export.sled_gen;
                if h.hint_last < stored {
                    match self.write_hint(n, stored) {
                        Ok(true) => {
                            h.hint_last = stored;
                            self.nodes[n].hint_behind = false;
                        }
                        Ok(false) => return,
                        Err(()) => {}
                    }
                } else {
                    self.nodes[n].hint_behind = false;
                }
                let synced = freshness::synced(stored, h.hint_last);
                // sled is the floor of every label: a hint adopted above it is written
                // into sled first.
                // (The bugs found before the floor are put back into the code as it was.)
                let floor = !matches!(
                    self.bug,
                    Bug::NoFloor | Bug::SetBackToSled | Bug::HintRepeat
                );
                if synced.generation > stored && floor {
                    self.export.sled_gen = synced.generation;
                    self.export
                        .history
                        .insert(synced.generation, self.export.sled.clone());
                }
                let voided: Vec<u64> = if synced.voided.is_empty() {
                    Vec::new()
                } else {
                    let range = synced.voided.clone();
                    self.export.journal.range(range).map(|(g, _)| *g).collect()
                };
                for g in voided {
                    self.export.journal.remove(&g);
                }
                let node = &self.nodes[n];
                let same = node.worker.loaded
                    && node.worker.generation == synced.generation
                    && node.worker.store == Some(self.export.store);
                let mut state = if same {
                    node.worker.clone()
                } else {
                    self.stats.reloads += 1;
                    State {
                        loaded: true,
                        generation: synced.generation,
                        volumes: self.export.sled.clone(),
                        store: Some(self.export.store),
                        ..State::default()
                    }
                };
                let kept = if same { "kept its state" } else { "reloaded" };
                self.note(format!(
                    "{} synced: sled {stored}, hint {}, state {} {:?} ({kept})",
                    self.nodes[n].name, h.hint_last, synced.generation, state.volumes
                ));
                state.hints = synced.hints;
                state.validated = Some(self.clock);
                self.publish(n, state);
                h.step = if h.mutations.is_empty() {
                    Step::Reply
                } else {
                    Step::Decide
                };
            }
            Step::Decide => {
                // Against the state the store thread loaded or committed itself.
                // (As `core::batch`: no create of a name removed in the same batch, whose
                // folder is still to be disposed of.)
                let mut volumes = self.nodes[n].worker.volumes.clone();
                let mut removed = std::collections::BTreeSet::new();
                for m in &h.mutations {
                    let ok = match m {
                        Mutation::Create(name, value)
                            if !volumes.contains_key(name) && !removed.contains(name) =>
                        {
                            volumes.insert(name.clone(), *value);
                            h.overlay.retain(|(o, _)| o != name);
                            h.overlay.push((name.clone(), Some(*value)));
                            true
                        }
                        Mutation::Remove(name) if volumes.contains_key(name) => {
                            volumes.remove(name);
                            removed.insert(name.clone());
                            h.overlay.retain(|(o, _)| o != name);
                            h.overlay.push((name.clone(), None));
                            true
                        }
                        _ => false,
                    };
                    h.results.push(ok);
                }
                h.step = if h.overlay.is_empty() {
                    Step::Reply
                } else {
                    Step::Write
                };
            }
            Step::Write => {
                let stored = self.export.sled_gen;
                let next = match self.bug {
                    Bug::HintRepeat => stored.checked_add(1),
                    _ => freshness::next_generation(stored, h.hint_last),
                };
                let Some(next) = next else {
                    self.violate(format!(
                        "commits go on: {}'s commit failed: the generation counter is exhausted (sled at {stored}, hint {})",
                        self.nodes[n].name, h.hint_last
                    ));
                    return self.hold_failed(n, h, "the generation counter is exhausted");
                };
                h.next = next;
                // Acknowledged creates survive: a commit writes over nothing sled holds
                // that it did not decide on.
                for (name, change) in &h.overlay {
                    if change.is_some() && self.export.sled.contains_key(name) {
                        self.violate(format!(
                            "acknowledged creates survive: commit {next} of {} writes a create over {name}, which sled holds (its state said the name was free)",
                            self.nodes[n].name,
                        ));
                    }
                }
                for (name, change) in &h.overlay {
                    match change {
                        Some(v) => self.export.sled.insert(name.clone(), *v),
                        None => self.export.sled.remove(name),
                    };
                }
                self.export.sled_gen = next;
                self.export.history.insert(next, self.export.sled.clone());
                self.stats.commits += 1;
                h.landed = true;
                self.note(format!(
                    "{} committed {next}: {:?}",
                    self.nodes[n].name, h.overlay
                ));
                h.step = Step::Journal;
            }
            Step::Journal => {
                let roll = self.rng.f64();
                let entry = if roll < 0.03 {
                    None
                } else if roll < 0.05 {
                    Some(Entry::Torn)
                } else {
                    Some(Entry::Intact {
                        store: self.export.store,
                        generation: h.next,
                        changes: h.overlay.clone(),
                    })
                };
                match entry {
                    Some(e) => self.export.journal.insert(h.next, e),
                    None => self.export.journal.remove(&h.next),
                };
                h.step = Step::Publish;
            }
            Step::Publish => {
                let mut state = self.nodes[n].worker.clone();
                for (name, change) in &h.overlay {
                    match change {
                        Some(v) => state.volumes.insert(name.clone(), *v),
                        None => state.volumes.remove(name),
                    };
                }
                state.generation = h.next;
                state.hints = freshness::after_commit(state.hints.0, h.hint_last, h.next);
                state.validated = Some(self.clock);
                self.publish(n, state);
                h.step = Step::Hint;
            }
            Step::Hint => {
                let mut written = self.write_hint(n, h.next);
                if written.is_err() {
                    written = self.write_hint(n, h.next);
                }
                match written {
                    Ok(true) => {
                        h.hint_last = h.next;
                        h.hint_moved = true;
                    }
                    Ok(false) => return,
                    Err(()) => {
                        self.nodes[n].hint_behind = true;
                        self.nodes[n].next_hint_retry = t + 1_000;
                    }
                }
                h.step = Step::Reply;
            }
            Step::Reply => {
                // The lock goes with the hold (unless the server dropped it already).
                if self.export.lock == Some(n) {
                    self.export.lock = None;
                }
                self.answer(n, &h);
                return;
            }
        }
        self.nodes[n].hold = Some(h);
    }

    /// A step of node `n`'s hold failed on the export (the server dropped the client, or
    /// the lock did not come): what the store thread does with the error.
    fn export_failed(&mut self, n: usize, mut h: Hold) {
        match h.step {
            // sled's flush failed: the commit may have gone out. Settled by opening sled
            // again (`verify_landed`), which fails too while the export does not answer:
            // the outcome stays unknown, and nothing this hold wrote lands after the drop.
            Step::Write => {
                self.stats.unknown += 1;
                self.hold_failed(n, h, "flushing (the outcome is unknown)")
            }
            // The commit is durable; its entry is not written (readers reload instead).
            Step::Journal => {
                h.step = Step::Publish;
                self.nodes[n].hold = Some(h);
            }
            // The commit is durable, the hint not moved: its callers are answered, and the
            // store thread brings the hint up in a hold of its own every second.
            Step::Hint => {
                self.nodes[n].hint_behind = true;
                self.nodes[n].next_hint_retry = self.t + 1_000;
                h.step = Step::Reply;
                self.nodes[n].hold = Some(h);
            }
            _ => self.hold_failed(n, h, "the export did not answer"),
        }
    }

    /// The hold ends with an error: its callers are told, the next hold reloads.
    fn hold_failed(&mut self, n: usize, h: Hold, what: &str) {
        if self.export.lock == Some(n) {
            self.export.lock = None;
        }
        let node = &mut self.nodes[n];
        node.worker = State::default();
        node.refreshed_at = Some((h.began, false));
        let name = node.name.clone();
        self.note(format!("{name} hold failed: {what}"));
    }

    /// Callers of a hold that went through are answered.
    fn answer(&mut self, n: usize, h: &Hold) {
        self.nodes[n].refreshed_at = Some((h.began, true));
        if !h.landed {
            return;
        }
        let acknowledged = h.results.iter().filter(|r| **r).count() as u64;
        self.stats.acknowledged += acknowledged;
        if h.hint_moved {
            self.floors.push((self.clock, h.next));
        } else {
            // (Unless another node's hold, after the server dropped this one's lock, has
            // brought the hint up already.)
            if self.export.hint.read().is_some_and(|v| v >= h.next) {
                self.floors.push((self.clock, h.next));
            } else {
                self.unpublished.push(h.next);
            }
        }
    }

    /// Makes `state` the store thread's and the one readers are served.
    fn publish(&mut self, n: usize, mut state: State) {
        state.serial = self.serial();
        self.nodes[n].worker = state.clone();
        self.nodes[n].cache = state;
    }

    /// One step of node `n`'s reader (`Store::snapshot`).
    /// Returns the read when it goes on.
    fn read_step(&mut self, n: usize, mut r: Read) -> Option<Read> {
        let t = self.t;
        if matches!(r.step, ReadStep::Hint | ReadStep::Journal) && self.nodes[n].remounted {
            // ESTALE on the kept handle: this read answers from the cached state, marked
            // stale; the handle is opened again for the next.
            self.nodes[n].remounted = false;
            if r.step == ReadStep::Journal {
                self.nodes[n].catching_up = false;
            }
            return None;
        }
        if matches!(r.step, ReadStep::Hint | ReadStep::Journal) && !self.nodes[n].link_up(t) {
            // Waits for the export, up to the budget; then the cached state is answered,
            // marked stale (not a fresh read: no invariant of fresh reads applies).
            let waits = !self.nodes[n].dropped && t < r.began_ms + READ_BUDGET_MS;
            if !waits && r.step == ReadStep::Journal {
                self.nodes[n].catching_up = false;
            }
            return waits.then_some(r);
        }
        match r.step {
            ReadStep::Hint => {
                r.started = self.clock;
                // No hint (garbage at its name): a reload under the lock.
                let Some(hint) = self.export.hint.read() else {
                    return self.confirm(n, r);
                };
                r.hint = hint;
                let current = self.nodes[n].cache.clone();
                if current.answers(r.started, hint) {
                    self.serve(n, &r, current);
                    return None;
                }
                r.step = ReadStep::CatchUp;
                Some(r)
            }
            ReadStep::CatchUp => {
                if self.nodes[n].catching_up {
                    return Some(r);
                }
                // Another read's catch-up may have answered this one meanwhile.
                let base = self.nodes[n].cache.clone();
                if base.answers(r.started, r.hint) {
                    self.serve(n, &r, base);
                    return None;
                }
                // Only a state loaded from sled knows its store's id.
                match freshness::catch_up(base.generation, r.hint) {
                    Some(wanted) if base.store.is_some() => {
                        self.nodes[n].catching_up = true;
                        r.at = *wanted.start();
                        r.next = base.clone();
                        r.base = base;
                        r.step = ReadStep::Journal;
                        Some(r)
                    }
                    _ => self.confirm(n, r),
                }
            }
            ReadStep::Journal => {
                match self.export.journal.get(&r.at) {
                    Some(Entry::Intact {
                        store,
                        generation,
                        changes,
                    }) if Some(*store) == r.base.store && *generation == r.at => {
                        for (name, change) in changes {
                            match change {
                                Some(v) => r.next.volumes.insert(name.clone(), *v),
                                None => r.next.volumes.remove(name),
                            };
                        }
                    }
                    // Missing, torn, another store's: reload instead.
                    _ => {
                        self.nodes[n].catching_up = false;
                        return self.confirm(n, r);
                    }
                }
                if r.at < r.hint {
                    r.at += 1;
                    return Some(r);
                }
                self.nodes[n].catching_up = false;
                let mut next = std::mem::take(&mut r.next);
                next.generation = r.hint;
                next.hints = (r.hint, r.hint);
                next.validated = Some(r.started);
                next.serial = self.serial();
                self.stats.catch_ups += 1;
                // Swapped in only over the state it was made from.
                let now = self.nodes[n].cache.clone();
                if now.serial == r.base.serial {
                    self.nodes[n].cache = next.clone();
                    self.serve(n, &r, next);
                    return None;
                }
                if now.answers(r.started, r.hint) {
                    self.serve(n, &r, now);
                    return None;
                }
                self.confirm(n, r)
            }
            ReadStep::Confirm => match self.nodes[n].refreshed_at {
                Some((began, ok)) if began > r.requested => {
                    // A failed reload fails the read.
                    if ok {
                        let state = self.nodes[n].cache.clone();
                        self.serve(n, &r, state);
                    }
                    None
                }
                _ => Some(r),
            },
        }
    }

    /// A reader asks its store thread for a reload under the lock (`Store::confirm`).
    fn confirm(&mut self, n: usize, mut r: Read) -> Option<Read> {
        r.step = ReadStep::Confirm;
        r.requested = self.clock;
        self.nodes[n].refresh_wanted.push(self.clock);
        Some(r)
    }

    /// A read of node `n` answers `state`: the invariants of readers.
    fn serve(&mut self, n: usize, r: &Read, state: State) {
        self.stats.reads += 1;
        let name = self.nodes[n].name.clone();
        if state.generation < self.nodes[n].served {
            self.violate(format!(
                "never back: {name} served generation {} after {}",
                state.generation, self.nodes[n].served
            ));
        }
        self.nodes[n].served = self.nodes[n].served.max(state.generation);
        if self.export.committed(state.generation) != Some(&state.volumes) {
            self.violate(format!(
                "committed only: {name} served {:?} as generation {}, but sled held {:?} then",
                state.volumes,
                state.generation,
                self.export.committed(state.generation)
            ));
        }
        let tampered = self
            .tampered
            .iter()
            .take_while(|at| **at < r.started)
            .last()
            .copied()
            .unwrap_or(0);
        let floor = self
            .floors
            .iter()
            .take_while(|(at, _)| *at < r.started)
            .filter(|(at, _)| *at > tampered)
            .map(|(_, g)| *g)
            .max()
            .unwrap_or(0);
        if state.generation < floor {
            self.violate(format!(
                "acknowledged is seen: {name}'s read (hint {}) served generation {} although commit {floor} was acknowledged and in the hint before it began",
                r.hint, state.generation
            ));
        }
    }
}

pub fn simulate(seed: u64, bug: Bug) -> Outcome {
    let mut w = World::new(seed, bug);
    w.run();
    Outcome {
        seed,
        violation: w.violation,
        log: w.log,
        stats: w.stats,
    }
}
