//! Node identity, heartbeats and liveness of *incarnations*, without comparing clocks
//! across hosts.
//!
//! Each daemon rewrites `<root>/.caravan/nodes/<node>.json` every heartbeat interval with
//! a sequence number that only grows and a boot id that is new at every start. Observers
//! never read the file's mtime or a timestamp from another host: they note, on their own
//! monotonic clock, when they last saw each boot id beat.
//!
//! The rules (docs/semantics.md, "Liveness"):
//!
//! - What is judged is an **incarnation** (node name + boot id), the one recorded in the
//!   mount or hold at stake. It is dead only when this observer has watched the node's
//!   heartbeat file for `dead_after` without seeing that boot id beat; a boot id this
//!   observer has not watched that long is alive. A clean stop (`state: left`) of that
//!   same boot id is gone at once.
//! - Silence is counted on a **seeing clock**: it advances only across heartbeat rounds
//!   in which this node wrote its own beat *and* read everyone else's, and by at most
//!   [`SEEING_GAP_CAP`](crate::core::liveness::SEEING_GAP_CAP) intervals per round. Time during which this observer was stalled,
//!   frozen or cut off counts for nobody, so an export that every host lost for a while
//!   (a server restart) kills nobody: everyone then has `dead_after` to be seen again.
//! - An observer whose last good round is older than `dead_after` is the one cut off: it
//!   declares nobody dead.
//! - A commit seen in the store is evidence too: [`Nodes::saw_commit`] notes the
//!   incarnations whose records changed.
//! - Only one daemon runs per node name: [`Nodes::new`] holds an OFD lock on
//!   `<node>.lock` for the daemon's lifetime (taken again whenever the heartbeat folder is
//!   opened again after the export went away, see [`crate::export::connection`]), so an earlier boot
//!   id of *this* node's name is known to be gone.
//!
//! The judging itself, [`Watchers::judge`], is a pure function of what was observed and
//! of the seeing clock, in the core ([`crate::core::liveness`]), tested apart from any
//! file and run by the simulation (tests/sim/).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::libc;

use crate::core::error::{Error, IoContext, Result};
use crate::core::liveness::{
    Heartbeat, HeartbeatState, Judgment, Liveness, NodeView, SelfReport, Watchers,
};
use crate::core::names::is_safe_token;
use crate::core::standing::{Lapse, NotHolder, Standing};
use crate::export::connection::MountId;
use crate::export::layout::{replace_file, SharedLayout};
use crate::runtime::clock::moment;
use crate::runtime::metrics::Metrics;

/// A heartbeat file larger than this is not a heartbeat (they are about 200 bytes).
const MAX_HEARTBEAT_BYTES: u64 = 16 << 10;

#[derive(Debug)]
struct Own {
    /// Whether this node may act as a holder (the rule is in the core).
    standing: Standing,
    last_error: Option<String>,
    /// Whether the last cut-off state logged was "cut off".
    cut_off_logged: bool,
}

/// This node's heartbeat writer and its view of every other node.
pub struct Nodes {
    /// Counts the gaps between other nodes' heartbeats.
    metrics: Arc<Metrics>,
    me: String,
    /// The root, unpinned: every (re)connection opens it afresh (see [`crate::export::connection`]).
    layout: SharedLayout,
    /// The heartbeat folder's real path, for messages.
    shown: PathBuf,
    /// The heartbeat folder as this node reaches it now; `None` after its connection went
    /// away, until the next operation opens it again.
    conn: Mutex<Option<Arc<Conn>>>,
    /// Why the last held folder was given up (its connection gone), until it is opened
    /// again.
    lost: Mutex<Option<String>>,
    /// Whether this node holds the node-name lock (a daemon does; observers in tests do
    /// not).
    takes_name_lock: bool,
    /// The OFD lock on `<node>.lock`, held while the daemon lives, taken again on every
    /// reconnection (the old connection's lock went with it).
    name_lock: Mutex<Option<File>>,
    boot_id: String,
    /// This machine's id (`crate::host::machine`), written into every beat.
    machine: Option<String>,
    /// This name's heartbeat as a daemon found it when it took the name lock, before its
    /// own first beat: which daemon, on which machine, had the name last.
    previous: Option<Heartbeat>,
    /// The machine this daemon takes its name over from, written into its beats until
    /// its start has waited (see [`Nodes::name_taken_over`]).
    taking_from: Mutex<Option<String>>,
    interval: Duration,
    dead_after: Duration,
    seq: Mutex<u64>,
    watchers: Mutex<Watchers>,
    own: Mutex<Own>,
    /// The state last logged for each node's current boot id (changes are logged once).
    logged: Mutex<HashMap<String, (String, Liveness)>>,
    /// Nodes whose heartbeat file could not be read at the last round (logged once each).
    unreadable: Mutex<std::collections::BTreeSet<String>>,
    /// This node's lease on its exclusive volumes, renewed by every beat (see
    /// [`crate::host::fence`]); a daemon has one, observers do not.
    lease: std::sync::OnceLock<Arc<crate::host::fence::Lease>>,
    /// How long after another node's holder is judged dead its writes may still land
    /// (`--fence-wait`): a takeover waits that much longer.
    fence_wait: Mutex<(Duration, String)>,
}

/// The heartbeat folder, opened below the root without following links: a `nodes` folder
/// replaced by a link to a host folder is refused (and one replaced later is not
/// followed). Held from one (re)connection to the next.
struct Conn {
    /// The folder's handle; keeps `via` valid (the number in it is this descriptor's).
    dir: File,
    /// Where system calls reach the folder: through `dir`.
    via: PathBuf,
    /// The mount the root was on when the folder was opened: when the root resolves to
    /// another one, the folder is opened again there.
    mount: MountId,
}

/// Why the heartbeat folder is opened (again).
enum Reconnect {
    Start,
    /// The root resolves to another mount (logged and counted by [`crate::export::connection`]).
    Remounted,
    /// An operation on the old handle failed with an error of [`crate::export::connection::is_gone`].
    Gone(String),
}

impl Nodes {
    /// This node's heartbeat writer, taking the node-name lock first: a second daemon
    /// with a live node's name is refused.
    pub fn new(
        layout: &SharedLayout,
        me: &str,
        interval: Duration,
        dead_after: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Nodes> {
        Nodes::build(layout, me, interval, dead_after, metrics, true)
    }

    /// An observer without the name lock (tests, benchmarks).
    pub fn observer(
        layout: &SharedLayout,
        me: &str,
        interval: Duration,
        dead_after: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Nodes> {
        Nodes::build(layout, me, interval, dead_after, metrics, false)
    }

    fn build(
        layout: &SharedLayout,
        me: &str,
        interval: Duration,
        dead_after: Duration,
        metrics: Arc<Metrics>,
        takes_name_lock: bool,
    ) -> Result<Nodes> {
        let boot_id = crate::runtime::random::id();
        let mut nodes = Nodes {
            me: me.to_string(),
            metrics,
            watchers: Mutex::new(Watchers::new(me, &boot_id, interval, dead_after)),
            layout: layout.clone(),
            // Created by `SharedLayout::init`, never here by path.
            shown: layout.nodes_dir(),
            conn: Mutex::new(None),
            lost: Mutex::new(None),
            takes_name_lock,
            name_lock: Mutex::new(None),
            boot_id,
            machine: crate::host::machine::id(),
            previous: None,
            taking_from: Mutex::new(None),
            interval,
            dead_after,
            seq: Mutex::new(0),
            own: Mutex::new(Own {
                standing: Standing::new(dead_after.saturating_sub(interval)),
                last_error: None,
                cut_off_logged: false,
            }),
            logged: Mutex::new(HashMap::new()),
            unreadable: Mutex::new(Default::default()),
            lease: std::sync::OnceLock::new(),
            fence_wait: Mutex::new((Duration::ZERO, "not set".into())),
        };
        let conn = nodes.connect(layout.root_dir()?, Reconnect::Start)?;
        if takes_name_lock {
            // A name never used, or a file that does not read, tells nothing.
            nodes.previous = read_heartbeat(&conn.dir, &nodes.shown, me).ok();
            let from = nodes.name_taken_from().map(str::to_string);
            *nodes.taking_from.lock().unwrap_or_else(|p| p.into_inner()) = from;
        }
        Ok(nodes)
    }

    /// The machine this daemon takes its name over from, if the name's last daemon ran
    /// on another one and did not stop cleanly, or stopped while it waited for that (see
    /// [`crate::core::liveness::name_taken_from`]).
    pub fn name_taken_from(&self) -> Option<&str> {
        crate::core::liveness::name_taken_from(self.previous.as_ref(), self.machine.as_deref())
    }

    /// The start has waited and reconciled: the beats stop saying the name is being taken
    /// over.
    pub fn name_taken_over(&self) {
        *self.taking_from.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Opens the heartbeat folder below `root` and, for a daemon, takes the node-name lock
    /// there (the old connection's, if any, is let go first: on a connection that is
    /// still alive it would be this daemon's own lock in the way).
    fn connect(&self, root: File, why: Reconnect) -> Result<Arc<Conn>> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let dir = crate::export::beneath::open_dir(&root, Path::new(".caravan/nodes"))
            .map_err(|e| crate::export::beneath::refused_or_io(&self.shown, e))?;
        let mount =
            MountId::of(&root).ctx(|| format!("inspecting {}", self.layout.root.display()))?;
        let via = crate::export::beneath::proc_path(&dir);
        if self.takes_name_lock {
            let mut lock = self.name_lock.lock().unwrap_or_else(|p| p.into_inner());
            drop(lock.take());
            let taken = lock_name(&dir, &via, &self.shown, &self.me).map_err(|e| match why {
                Reconnect::Start => e,
                _ => Error::invalid(format!(
                    "{e} (after a reconnect to the export, the old connection's lock can stay held until the file server lets it go; retried every heartbeat)"
                )),
            })?;
            *lock = Some(taken);
        }
        if let Reconnect::Gone(e) = &why {
            self.layout
                .export()
                .reopened(&format!("the heartbeat folder {}", self.shown.display()), e);
        }
        *self.lost.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let fresh = Arc::new(Conn { dir, via, mount });
        *conn = Some(fresh.clone());
        Ok(fresh)
    }

    /// The heartbeat folder as reached now, opened again if its connection went away.
    fn current(&self) -> Result<Arc<Conn>> {
        let held = self.conn.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match held {
            Some(c) => Ok(c),
            None => self.connect(self.layout.root_dir()?, self.reconnect_reason()),
        }
    }

    /// Why the folder is opened again now: the error that lost the old handle, if one
    /// did; else the root resolves to another mount.
    fn reconnect_reason(&self) -> Reconnect {
        match self.lost.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            Some(why) => Reconnect::Gone(why),
            None => Reconnect::Remounted,
        }
    }

    /// Runs `op` on the heartbeat folder; when it fails because the folder's connection
    /// is gone, opens the folder again from the configured root and runs it once more.
    fn with_folder<T>(&self, op: impl Fn(&Conn) -> Result<T>) -> Result<T> {
        let conn = self.current()?;
        match op(&conn) {
            Err(e) if crate::export::connection::gone(&e) => {
                let why = self.shown_error(&e);
                {
                    let mut held = self.conn.lock().unwrap_or_else(|p| p.into_inner());
                    if held.as_ref().is_some_and(|h| Arc::ptr_eq(h, &conn)) {
                        *held = None;
                        *self.lost.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                    }
                }
                match self.current() {
                    Ok(again) => op(&again),
                    // The export is not back yet: the original error says what failed.
                    Err(_) => Err(e),
                }
            }
            r => r,
        }
    }

    /// Once a round: when the root now resolves to another mount than the heartbeat
    /// folder's (the export was mounted again), the folder is opened again there. The
    /// root's check ([`crate::export::connection::Export::root`]) refuses a mount that does not hold
    /// this cluster, before anything is written through it.
    fn follow_the_root(&self) -> Result<()> {
        let root = self.layout.root_dir()?;
        let mount =
            MountId::of(&root).ctx(|| format!("inspecting {}", self.layout.root.display()))?;
        let held = self
            .conn
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|c| c.mount);
        if held != Some(mount) {
            self.connect(root, self.reconnect_reason())?;
        }
        Ok(())
    }

    /// An error's text with the folder's real path where it shows `/proc/self/fd/N`.
    fn shown_error(&self, e: &Error) -> String {
        let text = e.to_string();
        match self.conn.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(c) => text.replace(
                &c.via.display().to_string(),
                &self.shown.display().to_string(),
            ),
            None => text,
        }
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

    /// How long a beat keeps this node's lease on its exclusive volumes: `dead_after`
    /// less one interval, so that it runs out (and the fence keeper stops its containers)
    /// before any other node may judge it dead.
    pub fn lease_term(&self) -> Duration {
        self.dead_after.saturating_sub(self.interval)
    }

    /// Renews `lease` after every beat from now on.
    pub fn set_lease(&self, lease: Arc<crate::host::fence::Lease>) {
        let _ = self.lease.set(lease);
    }

    pub fn lease(&self) -> Option<&Arc<crate::host::fence::Lease>> {
        self.lease.get()
    }

    /// How long after a holder is judged dead its in-flight writes may still land.
    pub fn fence_wait(&self) -> Duration {
        self.fence_wait.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    /// The fence wait and where it comes from (shown in `caravan info`).
    pub fn fence_wait_from(&self) -> (Duration, String) {
        self.fence_wait
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_fence_wait(&self, wait: Duration, from: String) {
        *self.fence_wait.lock().unwrap_or_else(|p| p.into_inner()) = (wait, from);
    }

    /// The silence after which an exclusive volume's holder may be taken over: it is
    /// dead, and whatever it had in flight can no longer land.
    pub fn takeover_after(&self) -> Duration {
        self.dead_after.saturating_add(self.fence_wait())
    }

    fn file_name(node: &str) -> String {
        format!("{node}.json")
    }

    fn watchers(&self) -> std::sync::MutexGuard<'_, Watchers> {
        self.watchers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn own(&self) -> std::sync::MutexGuard<'_, Own> {
        self.own.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes this node's heartbeat (the next sequence number). Writes are serialized, and
    /// once `Left` is written no later `Running` beat can overwrite it.
    pub fn beat(&self, state: HeartbeatState) -> Result<()> {
        let mut s = self.seq.lock().unwrap_or_else(|p| p.into_inner());
        if *s == u64::MAX {
            return Ok(());
        }
        *s += 1;
        let seq = *s;
        let hb = Heartbeat {
            node: self.me.clone(),
            seq,
            boot_id: self.boot_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            state,
            interval_ms: u64::try_from(self.interval.as_millis()).unwrap_or(u64::MAX),
            machine: self.machine.clone(),
            taken_from: self
                .taking_from
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        };
        let bytes = serde_json::to_vec(&hb)
            .map_err(|e| Error::Store(format!("encoding the heartbeat: {e}")))?;
        // No fsync: the point is that other nodes see it move, which the rename gives.
        let name = Self::file_name(&self.me);
        let shown = self.shown.join(&name);
        self.with_folder(|c| replace_file(&shown, &c.via.join(&name), &bytes))?;
        if state == HeartbeatState::Left {
            *s = u64::MAX;
        }
        Ok(())
    }

    /// One heartbeat round: checks how long this node went without beating (past
    /// `dead_after` it must re-validate its exclusive volumes), writes its beat, reads
    /// everyone's, and advances the seeing clock if both worked.
    pub fn round(&self) -> Result<()> {
        let started = Instant::now();
        if let Some(lapse) = self.own().standing.round_starts(moment(started)) {
            self.log_lapse(lapse);
        }
        let writing = Instant::now();
        let result = self
            .follow_the_root()
            .and_then(|()| self.beat(HeartbeatState::Running))
            .and_then(|()| {
                // A write that itself took the lease's term (a hard mount blocked on a server
                // only this host lost) is a lapse too: others may have judged this node dead.
                // The lease counts from when the write began: the beat is no younger than that.
                let lapse = self
                    .own()
                    .standing
                    .beat_landed(moment(writing), moment(Instant::now()));
                if let Some(lapse) = lapse {
                    self.log_lapse(lapse);
                }
                if let Some(lease) = self.lease.get() {
                    lease.renew(writing);
                }
                self.observe_at(started)
            });
        match &result {
            Ok(()) => {
                self.watchers().clock.good_round(moment(Instant::now()));
                self.own().last_error = None;
                self.log_cut_off();
                self.log_changes();
            }
            Err(e) => {
                self.own().last_error = Some(e.to_string());
                self.log_cut_off();
            }
        }
        result
    }

    /// Logs once when this node becomes cut off (it then declares nobody dead), and once
    /// when it can see again.
    fn log_cut_off(&self) {
        let cut_off = self.cut_off();
        let mut own = self.own();
        if cut_off != own.cut_off_logged {
            own.cut_off_logged = cut_off;
            if cut_off {
                tracing::warn!(
                    "no heartbeat round of this node succeeded within --dead-after ({}s): it is cut off from the export and declares no other node dead",
                    self.dead_after.as_secs()
                );
            } else {
                tracing::info!("heartbeat rounds succeed again: this node judges the others again");
            }
        }
    }

    /// Logs each node whose current boot id changed state since the last round (for
    /// operators, and for tests that check no live node was ever judged dead).
    fn log_changes(&self) {
        let views = self.views();
        let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        for v in views.into_iter().filter(|v| v.node != self.me) {
            let now = (v.boot_id.clone(), v.state);
            if logged.get(&v.node) == Some(&now) {
                continue;
            }
            let first = !logged.contains_key(&v.node);
            match v.state {
                Liveness::Dead => {
                    tracing::warn!(node = %v.node, boot_id = %v.boot_id, silent_secs = format_args!("{:.1}", v.last_seen_secs), "node judged dead")
                }
                Liveness::Left => tracing::info!(node = %v.node, boot_id = %v.boot_id, "node left"),
                Liveness::Alive if first => {
                    tracing::debug!(node = %v.node, boot_id = %v.boot_id, "node seen")
                }
                Liveness::Alive => {
                    tracing::info!(node = %v.node, boot_id = %v.boot_id, "node alive")
                }
            }
            if logged.len() < crate::core::liveness::MAX_NODES || logged.contains_key(&v.node) {
                logged.insert(v.node, now);
            }
        }
    }

    /// Reads every heartbeat file and updates the observations (does not advance the
    /// seeing clock: only [`Nodes::round`] does).
    pub fn observe(&self) -> Result<()> {
        self.observe_at(Instant::now())
    }

    fn observe_at(&self, at: Instant) -> Result<()> {
        let (read, unreadable) = self.with_folder(|c| self.read_folder(c))?;
        self.log_unreadable(&read, &unreadable);
        let unreadable: Vec<String> = unreadable.into_iter().map(|(n, _)| n).collect();
        let mut w = self.watchers();
        for hb in read {
            let node = hb.node.clone();
            if let Some(gap) = w.saw(hb, moment(at)) {
                self.metrics.heartbeat_gap(&node, gap);
            }
        }
        for node in unreadable {
            w.saw_unreadable(&node, moment(at));
        }
        Ok(())
    }

    /// Reads every other node's heartbeat file in the folder. A listing that breaks off,
    /// or a file whose read fails because the connection went away, fails the whole
    /// read: a round that did not see everyone must not advance the seeing clock (nodes
    /// left out would look silent), nor count as a sight of an unreadable file.
    #[allow(clippy::type_complexity)]
    fn read_folder(&self, c: &Conn) -> Result<(Vec<Heartbeat>, Vec<(String, Error)>)> {
        let listing = || format!("reading {}", self.shown.display());
        let mut read = Vec::new();
        let mut unreadable = Vec::new();
        for entry in std::fs::read_dir(&c.via).ctx(listing)? {
            let name = entry.ctx(listing)?.file_name();
            let Some(node) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if node == self.me || !is_safe_token(node, 1, 255, false) {
                continue;
            }
            match read_heartbeat(&c.dir, &self.shown, node) {
                Ok(hb) => read.push(hb),
                // Replaced meanwhile: the next round reads it again.
                Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) if crate::export::connection::gone(&e) => return Err(e),
                Err(e) => unreadable.push((node.to_string(), e)),
            }
        }
        Ok((read, unreadable))
    }

    /// Warns once about each heartbeat file that cannot be read (a FIFO, a device, an
    /// oversized or garbled file, perhaps planted by another machine), naming it, and
    /// says when it can be read again.
    fn log_unreadable(&self, read: &[Heartbeat], unreadable: &[(String, Error)]) {
        let mut logged = self.unreadable.lock().unwrap_or_else(|p| p.into_inner());
        for (node, e) in unreadable {
            if logged.insert(node.clone()) {
                let file = self.shown.join(format!("{node}.json"));
                // The error names the file by its /proc/self/fd path: show the real one.
                let why = self.shown_error(e);
                tracing::warn!(file = %file.display(), "skipping a heartbeat file that cannot be read: {why}");
            }
        }
        for hb in read {
            if logged.remove(&hb.node) {
                tracing::info!(node = %hb.node, "the heartbeat file of this node can be read again");
            }
        }
    }

    /// A fresh read of one node's heartbeat, for a judgment made under the cluster lock.
    pub fn refresh(&self, node: &str) {
        if node == self.me || !is_safe_token(node, 1, 255, false) {
            return;
        }
        let at = Instant::now();
        match self.with_folder(|c| read_heartbeat(&c.dir, &self.shown, node)) {
            Ok(hb) => {
                let _ = self.watchers().saw(hb, moment(at));
            }
            Err(e) => tracing::debug!("fresh read of heartbeat {node}: {e}"),
        }
    }

    /// A commit in the store showed (`node`, `boot_id`) alive.
    pub fn saw_commit(&self, node: &str, boot_id: &str) {
        if node != self.me {
            self.watchers()
                .saw_commit(node, boot_id, moment(Instant::now()));
        }
    }

    /// Judges the incarnation (`node`, `boot_id`) now.
    pub fn judge(&self, node: &str, boot_id: Option<&str>) -> Judgment {
        self.watchers().judge(node, boot_id, moment(Instant::now()))
    }

    /// Judges the incarnation (`node`, `boot_id`) as the holder of an exclusive volume:
    /// dead only once silent for [`Nodes::takeover_after`].
    pub fn judge_holder(&self, node: &str, boot_id: Option<&str>) -> Judgment {
        let limit = self.takeover_after();
        self.watchers()
            .judge_within(node, boot_id, moment(Instant::now()), limit)
    }

    /// The node's current state (its current boot id), for display.
    pub fn liveness(&self, node: &str) -> Liveness {
        self.judge(node, None).state
    }

    /// `Ok` while this node may act as the holder of its exclusive volumes: it has beaten
    /// within `dead_after` and is not re-validating; else why not.
    pub fn may_hold(&self) -> std::result::Result<(), String> {
        let standing = self.own().standing.clone();
        standing
            .may_hold(moment(Instant::now()))
            .map_err(|why| match why {
                NotHolder::Lapsed(lapse) => self.lapse_message(lapse),
                NotHolder::LeaseOut { silent, term } => format!(
                    "this node has not written its heartbeat for {:.1}s: its lease on exclusive volumes ({:.1}s, --dead-after less one heartbeat) ran out, and another node may take them over",
                    silent.as_secs_f64(),
                    term.as_secs_f64()
                ),
                NotHolder::NeverBeat => "this node has not written its heartbeat yet".into(),
            })
    }

    /// What a lapse means, for the log and for refusals while it is pending.
    fn lapse_message(&self, lapse: Lapse) -> String {
        match lapse {
            Lapse::Silent { silent } => format!(
                "this node could not write its heartbeat for {:.0}s (past its lease on exclusive volumes, --dead-after {}s less one heartbeat): another node may have taken its exclusive volumes over",
                silent.as_secs_f64(),
                self.dead_after.as_secs()
            ),
            Lapse::SlowBeat { after } => format!(
                "writing this node's heartbeat took until {:.0}s after the previous one (past its lease on exclusive volumes, --dead-after {}s less one heartbeat): another node may have taken its exclusive volumes over",
                after.as_secs_f64(),
                self.dead_after.as_secs()
            ),
        }
    }

    fn log_lapse(&self, lapse: Lapse) {
        tracing::warn!(
            "{}; refusing mounts of exclusive volumes until they are re-validated",
            self.lapse_message(lapse)
        );
    }

    /// The re-validation epoch to pass to [`Nodes::revalidated`], if one is needed.
    pub fn revalidation_needed(&self) -> Option<u64> {
        self.own().standing.revalidation_needed()
    }

    /// The exclusive volumes were re-validated against a fresh read of the store begun
    /// at `epoch`: unless another lapse began since, this node may hold again.
    /// `held` names the exclusive volumes this node still holds and has mounted.
    pub fn revalidated(&self, epoch: u64, held: &[String]) {
        if self.own().standing.revalidated(epoch) {
            if held.is_empty() {
                tracing::info!("exclusive volumes re-validated: this node holds none mounted here; it may be granted exclusive volumes again");
            } else {
                tracing::info!(volumes = %held.join(", "), "exclusive volumes re-validated: no other node took these over, and this node serves as their holder again");
            }
        }
    }

    /// Whether this observer is cut off now (it then judges nobody dead).
    pub fn cut_off(&self) -> bool {
        self.watchers().cut_off(moment(Instant::now()))
    }

    pub fn self_report(&self) -> SelfReport {
        let own = self.own();
        let cut_off = self.cut_off().then(|| {
            format!(
                "no heartbeat round of this node succeeded within --dead-after ({}s): it declares no other node dead",
                self.dead_after.as_secs()
            )
        });
        SelfReport {
            last_beat_secs: own
                .standing
                .last_beat()
                .map(|t| moment(Instant::now()).since(t).as_secs_f64()),
            cut_off,
            revalidating: own.standing.lapse().map(|l| self.lapse_message(l)),
            last_error: own.last_error.clone(),
        }
    }

    /// Every node this observer knows, sorted by name.
    pub fn views(&self) -> Vec<NodeView> {
        self.watchers()
            .views(moment(Instant::now()), env!("CARGO_PKG_VERSION"))
    }

    /// The liveness of every known node's current boot id.
    pub fn snapshot(&self) -> BTreeMap<String, Liveness> {
        self.views()
            .into_iter()
            .map(|v| (v.node, v.state))
            .collect()
    }
}

/// Takes the node-name lock: an exclusive OFD lock on `<nodes>/<node>.lock`, held by the
/// returned file for the daemon's lifetime. The kernel (and the file server) release it
/// when the daemon dies.
fn lock_name(dir: &File, via: &Path, shown: &Path, node: &str) -> Result<File> {
    let at = via.join(format!("{node}.lock"));
    let path = shown.join(format!("{node}.lock"));
    let file = crate::export::lock::open_lock_file(&path, &at, "the node-name lock")?;
    match crate::export::lock::try_lock_exclusive(&file) {
        Ok(true) => Ok(file),
        Ok(false) => {
            let running = read_heartbeat(dir, shown, node)
                .map(|hb| format!(" (boot id {}, version {})", hb.boot_id, hb.version))
                .unwrap_or_default();
            Err(Error::invalid(format!(
                "another caravan daemon with node name {node:?} is running on this shared root{running}; \
                 every host needs its own name: start this one with --node NAME (or CARAVAN_NODE=NAME)"
            )))
        }
        Err(e) => Err(Error::io(
            format!(
                "locking {}; the filesystem must support OFD locks",
                path.display()
            ),
            std::io::Error::from_raw_os_error(e as i32),
        )),
    }
}

/// Reads a heartbeat file that another machine wrote: a regular file (no link, no FIFO
/// that would block the read), at most [`MAX_HEARTBEAT_BYTES`], naming the node its file
/// is named after.
fn read_heartbeat(dir: &File, shown_dir: &Path, node: &str) -> Result<Heartbeat> {
    let name = Nodes::file_name(node);
    let shown = || shown_dir.join(&name).display().to_string();
    // Looked at before it is opened: a device node planted there is never opened.
    let (file, st) =
        crate::export::beneath::open_regular(dir, Path::new(&name), 0).map_err(|e| {
            match e.raw_os_error() {
                Some(libc::ELOOP) => Error::invalid(format!(
                    "{} is not a regular file (a link, a FIFO or a device)",
                    shown()
                )),
                _ => Error::io(format!("reading {}", shown()), e),
            }
        })?;
    let len = crate::export::beneath::size_of(&st);
    if len > MAX_HEARTBEAT_BYTES {
        return Err(Error::invalid(format!(
            "{} has {len} bytes, more than a heartbeat's {MAX_HEARTBEAT_BYTES}",
            shown(),
        )));
    }
    let mut bytes = Vec::new();
    file.take(MAX_HEARTBEAT_BYTES + 1)
        .read_to_end(&mut bytes)
        .ctx(|| format!("reading {}", shown()))?;
    decode_heartbeat(&bytes, node).map_err(|e| Error::invalid(format!("{}: {e}", shown())))
}

/// Decodes the heartbeat of `node` from the bytes of its file (written by another machine:
/// anything may be there). Pure, so that it can be fuzzed.
pub fn decode_heartbeat(bytes: &[u8], node: &str) -> Result<Heartbeat> {
    if bytes.len() as u64 > MAX_HEARTBEAT_BYTES {
        return Err(Error::invalid(format!(
            "{} bytes, more than a heartbeat's {MAX_HEARTBEAT_BYTES}",
            bytes.len()
        )));
    }
    let hb: Heartbeat = serde_json::from_slice(bytes).map_err(|e| Error::invalid(e.to_string()))?;
    if hb.node != node || !is_safe_token(&hb.boot_id, 1, 128, false) {
        return Err(Error::invalid(format!(
            "names node {} with boot id {}; ignored",
            crate::core::error::shown(&hb.node),
            crate::core::error::shown(&hb.boot_id)
        )));
    }
    Ok(hb)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

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
    #[test]
    fn heartbeat_files_are_read_only_when_regular_small_and_named_right() {
        let d = tempfile::tempdir().unwrap();
        let dir = File::open(d.path()).unwrap();
        let read = |node: &str| read_heartbeat(&dir, d.path(), node);
        let p = d.path().join("b.json");
        let good = serde_json::to_vec(&hb("b", "b1", 3, HeartbeatState::Running)).unwrap();
        std::fs::write(&p, &good).unwrap();
        assert_eq!(read("b").unwrap().seq, 3);
        std::fs::copy(&p, d.path().join("c.json")).unwrap();
        assert!(read("c").is_err(), "names another node");
        std::fs::write(&p, vec![b' '; MAX_HEARTBEAT_BYTES as usize + 1]).unwrap();
        assert!(read("b").unwrap_err().to_string().contains("bytes"));
        std::fs::remove_file(&p).unwrap();
        // A FIFO (or a device) planted there is refused without being opened.
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let (opened, got) = crate::export::beneath::probe::opens(&p, || read("b"));
        let e = got.unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        assert!(!opened, "the FIFO was opened");
        std::fs::remove_file(&p).unwrap();
        std::fs::write(d.path().join("real"), &good).unwrap();
        std::os::unix::fs::symlink(d.path().join("real"), &p).unwrap();
        assert!(read("b").is_err(), "a symlink is not followed");
    }

    #[test]
    fn a_second_daemon_with_a_live_name_is_refused_and_the_name_frees_when_it_stops() {
        let d = tempfile::tempdir().unwrap();
        let layout = SharedLayout::new(d.path());
        layout.init().unwrap();
        let first = Nodes::new(&layout, "h3", SEC, 5 * SEC, Default::default()).unwrap();
        first.beat(HeartbeatState::Running).unwrap();
        let e = Nodes::new(&layout, "h3", SEC, 5 * SEC, Default::default())
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("\"h3\"") && e.contains("--node"), "{e}");
        assert!(Nodes::new(&layout, "h4", SEC, 5 * SEC, Default::default()).is_ok());
        drop(first);
        assert!(Nodes::new(&layout, "h3", SEC, 5 * SEC, Default::default()).is_ok());
    }

    #[test]
    fn rounds_through_files_judge_a_restart_and_a_lapse_of_the_holder() {
        let d = tempfile::tempdir().unwrap();
        let layout = SharedLayout::new(d.path());
        layout.init().unwrap();
        let ms = Duration::from_millis;
        let a = Nodes::observer(&layout, "a", ms(50), ms(300), Default::default()).unwrap();
        let b = Nodes::observer(&layout, "b", ms(50), ms(300), Default::default()).unwrap();
        b.round().unwrap();
        a.round().unwrap();
        assert!(a.judge("b", Some(b.boot_id())).is_alive());
        assert!(b.may_hold().is_ok());
        for _ in 0..8 {
            std::thread::sleep(ms(50));
            a.round().unwrap();
        }
        assert_eq!(a.judge("b", Some(b.boot_id())).state, Liveness::Dead);
        // b was frozen all that time: it must not act as a holder until re-validated.
        assert!(b.may_hold().is_err());
        b.round().unwrap();
        let epoch = b
            .revalidation_needed()
            .expect("a lapse needs re-validation");
        assert!(b.may_hold().is_err());
        b.revalidated(epoch, &[]);
        assert!(b.may_hold().is_ok());
        a.refresh("b");
        assert!(
            a.judge("b", Some(b.boot_id())).is_alive(),
            "a fresh read sees b beat"
        );
    }
}
