//! The cluster metadata store: sled on the shared export, one writer at a time.
//!
//! sled is a single-process database (it `flock`s its files while open), so every node
//! follows the same discipline for every commit (docs/semantics.md, "The metadata store"):
//!
//! 1. take the cluster lock ([`ClusterLock`](crate::export::lock::ClusterLock), bounded wait);
//! 2. open sled, bring the in-memory copy up to date if another node committed, apply
//!    the queued mutations, bump the generation, `flush()`;
//! 3. `fsync` sled's files (sled's flush uses `sync_file_range`, which NFS does not
//!    promise to send to the server);
//! 4. close sled, then release the lock.
//!
//! One store thread per node drains every queued mutation into one such commit (group
//! commit), so throughput grows with concurrency. Opening sled costs several commits (it
//! reads its log and writes a snapshot), so one hold of the lock serves back-to-back
//! batches with one open: after a commit the thread waits a few milliseconds for more
//! work, and gives the lock back when none comes or when the hold reaches its limit
//! (twice the open's cost, at least 50 ms), so other nodes get their turn.
//!
//! Reads (Get, List) never take the lock, never open sled and never wait for a commit:
//! they are answered from an immutable in-memory [`Snapshot`], swapped whole when it
//! changes. A reader first compares `<root>/.caravan/generation` (the hint) with the
//! snapshot, which costs one small read shared by concurrent readers. When another node
//! committed, the reader applies that node's entries of the change journal ([`journal`])
//! to the snapshot, still without the lock; only when an entry is missing or does not
//! check does it reload under the lock. A commit of this node swaps in its new snapshot
//! once sled has it durably, before it moves the hint. When the export does not answer,
//! readers get the last known state, marked stale (see [`crate::export::health`]).
//!
//! Parts: `core::mutation` (the changes and their outcomes), `core::batch` and
//! `core::decide` (the pure rules that decide them, liveness included), `worker` (the store thread: holds, commits, the file
//! work around them), `batching` (what one commit takes, how long a hold lasts),
//! `disposal` (moving removed volumes' data aside after the commit),
//! `janitor` (deleting trashed data), [`journal`], `hint` and `sled_files`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;

use tokio::sync::oneshot;

use crate::cluster::node::Nodes;
use crate::core::error::{Error, Result};
use crate::core::volume::VolumeRecord;
use crate::export::health::Health;
use crate::export::layout::SharedLayout;

mod batching;
mod disposal;
mod hint;
mod janitor;
pub mod journal;
mod sled_files;
mod worker;

use crate::core::mutation::FromOutcome;
pub use crate::core::mutation::{
    Created, Mounted, Mutation, Outcome, Reconciled, Removed, Unmounted,
};
use worker::Worker;

/// How long a reader waits for the export before answering from the last known state.
pub const READ_BUDGET: Duration = Duration::from_secs(2);

/// A read of the generation hint: when it started, and what it found (`None`: no hint
/// there, see `hint::read`).
type HintRead = (Instant, Option<u64>);

/// What a reader gets: the state, and why it may be out of date.
pub struct Read {
    pub snapshot: Arc<Snapshot>,
    /// Set when the export did not answer: the state is the last one known.
    pub stale: Option<String>,
}

/// A committed state of the cluster's metadata, never changed once made: a new one is
/// swapped in whole. Cloning it is cheap (the volumes share their tree).
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub volumes: imbl::OrdMap<String, VolumeRecord>,
    /// Names whose stored record this version cannot read, with why: never treated as
    /// free names (a newer node may have written them).
    pub unreadable: BTreeMap<String, String>,
    /// The generation of the commit this is the state after.
    pub generation: u64,
    /// The values of the generation hint this state is current for. Any value in the
    /// range means no commit is newer: commits number themselves past both sled's
    /// generation and the hint, and the range is made under the lock (or is the hint a
    /// catch-up reached), so a newer commit always shows as a value beyond it.
    hints: (u64, u64),
    /// The metadata store's id, which journal entries must name (`None` until read).
    store_id: Option<String>,
    /// When this state was known to be the newest: made under the lock, or caught up to
    /// a hint read that began then. It has every commit acknowledged before that instant.
    validated: Option<Instant>,
    loaded: bool,
    /// When this node last committed or reloaded successfully.
    pub last_sync: Option<SystemTime>,
    /// Since when this state holds changes read from the change journal that sled has
    /// not confirmed (`None`: all of it was read from sled or committed by this node).
    /// Entries are not authenticated (anyone who can write the export can write one, as
    /// they can write sled's own files): they only answer reads, never decide, never
    /// count as proof of life, and what they say is confirmed from sled within
    /// [`CONFIRM_JOURNAL_AFTER`] (see [`Store::keep_current`]).
    unconfirmed_since: Option<Instant>,
    /// Names that entries removed (or made unreadable) since the last state read from
    /// sled: Docker's Get never answers "no such volume" for one of them before sled
    /// confirms it (dockerd forgets a volume it is told is gone).
    removed_by_journal: imbl::OrdSet<String>,
    /// Which state this is: a number no other state made by this process has (two states
    /// of one generation can differ: one from journal entries, one confirmed by sled).
    serial: u64,
}

/// A number for a state made now, never given to another.
fn next_serial() -> u64 {
    static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// How long a state holding changes read from the change journal is served before sled
/// confirms them (a reload under the lock; see [`Snapshot::unconfirmed_since`]).
pub const CONFIRM_JOURNAL_AFTER: Duration = Duration::from_secs(10);

impl Snapshot {
    /// Whether this state answers a reader whose hint read began at `started` and found
    /// `hint`: it is current for that value, or it was known to be the newest at or
    /// after `started` (a commit of this node, or another reader's catch-up, published
    /// while the read was under way), so it has every commit acknowledged before.
    fn answers(&self, started: Instant, hint: u64) -> bool {
        crate::core::freshness::answers(self.loaded, self.hints, self.validated, started, hint)
    }

    /// This state with the journal's `entries` of the generations after it applied, in
    /// order: the state of generation `to`, unconfirmed by sled. (Unlike a reload, what
    /// an entry shows is never noted as proof that an incarnation was alive: an entry is
    /// not authenticated.)
    fn with_changes(
        &self,
        entries: Vec<journal::Changes>,
        to: u64,
        validated: Instant,
    ) -> Snapshot {
        let mut next = self.clone();
        for changes in entries {
            for (name, change) in changes {
                let was_there = next.volumes.contains_key(&name);
                match change {
                    Some(Ok(record)) => {
                        next.unreadable.remove(&name);
                        next.removed_by_journal.remove(&name);
                        next.volumes.insert(name, record);
                    }
                    Some(Err(why)) => {
                        tracing::error!(volume = %crate::core::error::shown(&name), "skipping a stored record: {why}");
                        next.volumes.remove(&name);
                        next.unreadable.insert(name.clone(), why);
                        if was_there {
                            next.removed_by_journal.insert(name);
                        }
                    }
                    None => {
                        next.volumes.remove(&name);
                        next.unreadable.remove(&name);
                        if was_there {
                            next.removed_by_journal.insert(name);
                        }
                    }
                }
            }
        }
        next.generation = to;
        next.hints = (to, to);
        next.validated = Some(validated);
        next.last_sync = Some(SystemTime::now());
        next.unconfirmed_since = self.unconfirmed_since.or(Some(validated));
        next.serial = next_serial();
        next
    }

    /// Which state this is (see [`Snapshot::serial`]): what a cache of something derived
    /// from it is keyed by.
    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// Whether only a journal entry, not sled, says that `name` is gone.
    pub fn removed_by_journal(&self, name: &str) -> bool {
        self.removed_by_journal.contains(name)
    }
}

/// A commit is proof that its incarnation was alive: tells `nodes` of the incarnations
/// with mounts, and of a holder, that `new` records and `old` did not.
fn note_live(nodes: &Nodes, old: Option<&VolumeRecord>, new: &VolumeRecord) {
    for (node, boot) in &new.incarnations {
        if old.and_then(|o| o.incarnations.get(node)) != Some(boot) {
            nodes.saw_commit(node, boot);
        }
    }
    if let Some(h) = &new.holder {
        if old.and_then(|o| o.holder.as_ref()) != Some(h) {
            if let Some(boot) = &h.boot_id {
                nodes.saw_commit(&h.node, boot);
            }
        }
    }
}

// A job is moved through the worker's channel once per call: its size costs nothing worth
// a box (and every match on it would have to look through one).
#[allow(clippy::large_enum_variant)]
enum Job {
    Apply {
        mutation: Mutation,
        reply: oneshot::Sender<Result<Outcome>>,
    },
    Refresh {
        reply: oneshot::Sender<Result<()>>,
    },
    Stop,
}

/// Store statistics, for `caravan info` and benchmarks.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct StoreStats {
    /// Holds of the cluster lock (each opens sled once and commits one or more batches).
    pub sessions: u64,
    pub commits: u64,
    pub mutations: u64,
    pub reloads: u64,
    pub last_lock_wait_ms: f64,
    pub max_lock_wait_ms: f64,
    pub last_commit_ms: f64,
    /// Reads brought up to date through the change journal, and the entries they applied.
    #[serde(default)]
    pub journal_catch_ups: u64,
    #[serde(default)]
    pub journal_entries: u64,
    /// Catch-ups that found an entry missing or bad, and reloaded under the lock instead.
    #[serde(default)]
    pub journal_misses: u64,
    /// Holds that ended in a panic, inside sled or not (caught; the next hold reopens it).
    #[serde(default)]
    pub session_failures: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
    /// Whether the store thread runs (it only stops with the daemon).
    #[serde(default)]
    pub thread_running: bool,
}

/// Handle to the store thread and the in-memory copy. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    layout: SharedLayout,
    queue: std::sync::mpsc::Sender<Job>,
    cache: Arc<ArcSwap<Snapshot>>,
    stats: Arc<Mutex<StoreStats>>,
    /// One catch-up through the journal at a time; the others take its result.
    catching_up: Arc<tokio::sync::Mutex<()>>,
    timeout: Duration,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    /// This node's reader of the generation hint (a handle kept open).
    hint_reader: Arc<Mutex<hint::HintReader>>,
    /// The last generation-hint read: when it started, and what it found (`None`: not a
    /// hint, see `hint::read`).
    hint_read: Arc<tokio::sync::Mutex<Option<HintRead>>>,
    health: Arc<Health>,
    stopping: Arc<std::sync::atomic::AtomicBool>,
    faults: Arc<Faults>,
}

/// Failures a test can make the store thread meet once, at the place each names.
#[derive(Default)]
pub(super) struct Faults {
    /// The next hold panics inside, as sled does on a broken export.
    pub(super) panic: std::sync::atomic::AtomicBool,
    /// The next commit's fsync fails after sled's flush went through.
    pub(super) fsync: std::sync::atomic::AtomicBool,
    /// The next commit fails before sled has it.
    pub(super) write: std::sync::atomic::AtomicBool,
    /// The next commit's hint write fails (twice: the write and its retry).
    pub(super) hint: std::sync::atomic::AtomicU8,
}

impl Faults {
    /// Whether the fault `f` was set, clearing it.
    pub(super) fn take(f: &std::sync::atomic::AtomicBool) -> bool {
        f.swap(false, std::sync::atomic::Ordering::SeqCst)
    }
}

impl Store {
    /// Starts the store thread for a root that [`SharedLayout::init`] prepared. `timeout`
    /// bounds every call: lock wait, open and commit together.
    pub fn start(
        layout: SharedLayout,
        timeout: Duration,
        nodes: Option<Arc<Nodes>>,
        health: Arc<Health>,
        metrics: Arc<crate::runtime::metrics::Metrics>,
    ) -> Result<Store> {
        let (queue, jobs) = std::sync::mpsc::channel();
        let cache = Arc::new(ArcSwap::from_pointee(Snapshot::default()));
        let stats = Arc::new(Mutex::new(StoreStats::default()));
        let faults = Arc::new(Faults::default());
        let mut worker = Worker {
            metrics,
            layout: layout.clone(),
            cache: cache.clone(),
            stats: stats.clone(),
            timeout,
            trash_tag: 0,
            synced_folder: false,
            trashed: Vec::new(),
            janitor: None,
            boot_id: nodes
                .as_ref()
                .map_or_else(|| "local".to_string(), |n| n.boot_id().to_string()),
            nodes: nodes.clone(),
            health: health.clone(),
            faults: faults.clone(),
            hint_behind: false,
            unsure: None,
            state: Arc::new(Snapshot::default()),
            committed: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("caravan-store".into())
            .spawn(move || worker.run(jobs))
            .map_err(|e| Error::io("starting the store thread", e))?;
        Ok(Store {
            layout,
            queue,
            cache,
            stats,
            catching_up: Arc::new(tokio::sync::Mutex::new(())),
            timeout,
            thread: Arc::new(Mutex::new(Some(thread))),
            hint_read: Arc::new(tokio::sync::Mutex::new(None)),
            hint_reader: Arc::new(Mutex::new(hint::HintReader::new())),
            health,
            stopping: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            faults,
        })
    }

    /// Makes the next commit's fsync fail after sled's flush went through (for tests of
    /// how an uncertain commit is settled).
    #[doc(hidden)]
    pub fn inject_fsync_failure(&self) {
        self.faults
            .fsync
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Makes the next commit's hint write (and its retry) fail after sled has the commit.
    #[doc(hidden)]
    pub fn inject_hint_failure(&self) {
        self.faults
            .hint
            .store(2, std::sync::atomic::Ordering::SeqCst);
    }

    /// Makes the next commit fail before sled has it (and so before any journal entry):
    /// a commit that died half-way (for tests that it never becomes visible).
    #[doc(hidden)]
    pub fn inject_write_failure(&self) {
        self.faults
            .write
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Makes the next hold of the lock panic inside, as sled does on a broken export
    /// (for tests of the store's recovery).
    #[doc(hidden)]
    pub fn inject_panic(&self) {
        self.faults
            .panic
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Creates a volume (idempotent for the same options).
    pub async fn create(
        &self,
        name: &str,
        options: crate::core::volume::VolumeOptions,
        node: &str,
    ) -> Result<Created> {
        self.call(Mutation::Create {
            name: name.to_string(),
            options,
            node: node.to_string(),
            staged: None,
        })
        .await
    }

    /// Creates a volume whose folder is already filled at `.caravan/staging/<tag>`
    /// (moved into place by the commit). An existing volume of that name, with the same
    /// options, is answered as it is (`existed`), and the staged copy is not used.
    pub async fn create_staged(
        &self,
        name: &str,
        options: crate::core::volume::VolumeOptions,
        node: &str,
        tag: &str,
    ) -> Result<Created> {
        self.call(Mutation::Create {
            name: name.to_string(),
            options,
            node: node.to_string(),
            staged: Some(tag.to_string()),
        })
        .await
    }

    /// Removes a volume no live incarnation has mounted, and disposes of its data.
    pub async fn remove(&self, name: &str) -> Result<Removed> {
        self.call(Mutation::Remove {
            name: name.to_string(),
        })
        .await
    }

    /// Counts a Mount of (`node`, `id`), claiming an exclusive volume.
    pub async fn mount(&self, name: &str, node: &str, id: &str) -> Result<Mounted> {
        self.call(Mutation::Mount {
            name: name.to_string(),
            node: node.to_string(),
            id: id.to_string(),
        })
        .await
    }

    /// Counts an Unmount of (`node`, `id`).
    pub async fn unmount(&self, name: &str, node: &str, id: &str) -> Result<Unmounted> {
        self.call(Mutation::Unmount {
            name: name.to_string(),
            node: node.to_string(),
            id: id.to_string(),
        })
        .await
    }

    /// Makes `node` the holder of an exclusive volume; returns the new record.
    pub async fn takeover(&self, name: &str, node: &str, force: bool) -> Result<VolumeRecord> {
        self.call(Mutation::Takeover {
            name: name.to_string(),
            node: node.to_string(),
            force,
        })
        .await
    }

    /// A step in the life of snapshot `snap` of volume `name`; returns the new record.
    pub async fn snapshot_step(
        &self,
        name: &str,
        snap: &str,
        node: &str,
        step: crate::core::decide::SnapshotStep,
    ) -> Result<VolumeRecord> {
        self.call(Mutation::Snapshot {
            name: name.to_string(),
            snap: snap.to_string(),
            node: node.to_string(),
            step,
        })
        .await
    }

    /// After a restart: keeps `node`'s mounts of the volumes in `bound`, drops the rest.
    pub async fn reconcile(
        &self,
        node: &str,
        bound: std::collections::BTreeSet<String>,
    ) -> Result<Reconciled> {
        self.call(Mutation::ReconcileNode {
            node: node.to_string(),
            bound,
        })
        .await
    }

    async fn call<T: FromOutcome>(&self, mutation: Mutation) -> Result<T> {
        let what = mutation.describe();
        T::from_outcome(self.apply(mutation).await?).ok_or_else(|| {
            Error::Store(format!(
                "{what}: the store answered with the outcome of another kind of change (a bug; please report it)"
            ))
        })
    }

    /// Applies one mutation (group-committed with whatever else is queued).
    pub(crate) async fn apply(&self, mutation: Mutation) -> Result<Outcome> {
        // With the export stalled, queueing would only make the caller wait out its
        // timeout. (An unmount refused here is recorded and retried by the service: see
        // crate::host::pending.)
        self.health.refuse_if_stalled(mutation.describe())?;
        let (reply, rx) = oneshot::channel();
        self.queue
            .send(Job::Apply { mutation, reply })
            .map_err(|_| self.gone())?;
        self.wait(rx, "committing to the cluster metadata").await?
    }

    /// The current state for a reader: fresh (reloaded first if another node committed)
    /// when the export answers within [`READ_BUDGET`], else the last known state with
    /// `stale` set, at once when the export is known to be stalled. An error only when
    /// nothing was ever loaded.
    pub async fn read(&self) -> Result<Read> {
        let why = match self.health.stalled() {
            Some((oldest, waited)) => Error::ExportStalled {
                what: "reading the cluster metadata".into(),
                oldest,
                waited,
            },
            None => match tokio::time::timeout(READ_BUDGET, self.snapshot()).await {
                Ok(Ok(snapshot)) => {
                    return Ok(Read {
                        snapshot,
                        stale: None,
                    })
                }
                Ok(Err(e)) => e,
                Err(_) => Error::Timeout {
                    what: "reading the cluster metadata".into(),
                    after: READ_BUDGET,
                },
            },
        };
        let snapshot = self.cached();
        if snapshot.last_sync.is_none() {
            return Err(why);
        }
        Ok(Read {
            snapshot,
            stale: Some(why.to_string()),
        })
    }

    /// The current state: the in-memory snapshot, brought up to date first if another
    /// node committed (through the journal, else by a reload under the lock).
    pub async fn snapshot(&self) -> Result<Arc<Snapshot>> {
        let (started, hint) = self.read_hint().await?;
        // No hint (something else is at its name): a reload under the lock, whose hold
        // puts a hint back.
        if let Some(hint) = hint {
            let current = self.cache.load_full();
            if current.answers(started, hint) {
                return Ok(current);
            }
            if let Some(caught_up) = self.catch_up(started, hint).await {
                return Ok(caught_up);
            }
        }
        self.confirm().await
    }

    /// The state as sled has it now: a reload under the lock, which replaces whatever
    /// journal entries said (see [`Snapshot::unconfirmed_since`]).
    pub async fn confirm(&self) -> Result<Arc<Snapshot>> {
        let (reply, rx) = oneshot::channel();
        self.queue
            .send(Job::Refresh { reply })
            .map_err(|_| self.gone())?;
        self.wait(rx, "reloading the cluster metadata").await??;
        Ok(self.cache.load_full())
    }

    /// Brings the snapshot up to the commit the hint names through the journal, without
    /// the lock. `None` when it cannot (an entry missing or bad, too far behind, nothing
    /// loaded yet): the caller reloads under the lock.
    async fn catch_up(&self, started: Instant, hint: u64) -> Option<Arc<Snapshot>> {
        // Concurrent readers wait for the catch-up in flight instead of repeating it.
        let _one = tokio::time::timeout(self.timeout, self.catching_up.lock())
            .await
            .ok()?;
        let base = self.cache.load_full();
        if base.answers(started, hint) {
            return Some(base);
        }
        // Only a state loaded from sled knows its store's id.
        let store = base.store_id.clone()?;
        let wanted = crate::core::freshness::catch_up(base.generation, hint)?;
        let (layout, health) = (self.layout.clone(), self.health.clone());
        let read = crate::runtime::deadline::blocking(
            "reading the change journal",
            self.timeout,
            move || {
                health.watch("reading the change journal", || {
                    Ok(journal::read_entries(
                        &layout,
                        *wanted.start(),
                        *wanted.end(),
                        &store,
                    ))
                })
            },
        )
        .await;
        let entries = match read {
            Ok(Ok(entries)) => entries,
            Ok(Err(why)) => {
                tracing::debug!("reloading instead of catching up from the journal: {why}");
                self.stats
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .journal_misses += 1;
                return None;
            }
            Err(e) => {
                tracing::debug!("reloading instead of catching up from the journal: {e}");
                return None;
            }
        };
        let applied = entries.len() as u64;
        let next = Arc::new(base.with_changes(entries, hint, started));
        // Only over the state it was made from: a commit of this node swapped in meanwhile
        // is at least as new (it committed under the lock after the hint's commit).
        let prev = self.cache.compare_and_swap(&base, next.clone());
        if !Arc::ptr_eq(&prev, &base) {
            let now = self.cache.load_full();
            return now.answers(started, hint).then_some(now);
        }
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        stats.journal_catch_ups += 1;
        stats.journal_entries += applied;
        Some(next)
    }

    /// Keeps the snapshot current while nobody asks: every `every`, one look at the hint
    /// (and the journal when it moved). Readers then rarely have entries to apply, and a
    /// node that serves no calls still notes other nodes' commits. It reloads under the
    /// lock only to confirm what journal entries said, once they have been served for
    /// [`CONFIRM_JOURNAL_AFTER`] (an idle node must not take the lock every interval
    /// because some commit wrote no entry: when the journal cannot bring it up to date,
    /// the next read does). Ends with the daemon.
    pub async fn keep_current(&self, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            if self.health.stalled().is_some() {
                continue;
            }
            let unconfirmed = self.cache.load().unconfirmed_since;
            if unconfirmed.is_some_and(|t| t.elapsed() >= CONFIRM_JOURNAL_AFTER) {
                if let Err(e) = self.confirm().await {
                    tracing::debug!("confirming what the change journal said: {e}");
                }
                continue;
            }
            if let Ok((started, Some(hint))) = self.read_hint().await {
                if !self.cache.load().answers(started, hint) {
                    self.catch_up(started, hint).await;
                }
            }
        }
    }

    /// Reads the generation hint, sharing one read among concurrent callers: a caller
    /// waits for the read in flight and takes its answer only if that read started after
    /// the caller arrived (so it saw every commit that returned before), and otherwise
    /// reads again itself. dockerd sends bursts of Gets (one before every Mount and
    /// Unmount, one per volume at its start); on a network filesystem each read is a
    /// round trip.
    async fn read_hint(&self) -> Result<(Instant, Option<u64>)> {
        let arrived = Instant::now();
        let mut last = tokio::time::timeout(self.timeout, self.hint_read.lock())
            .await
            .map_err(|_| Error::Timeout {
                what: "waiting for the cluster generation check".into(),
                after: self.timeout,
            })?;
        if let Some((started, value)) = *last {
            if started >= arrived {
                return Ok((started, value));
            }
        }
        let started = Instant::now();
        let layout = self.layout.clone();
        let health = self.health.clone();
        let reader = self.hint_reader.clone();
        let value = crate::runtime::deadline::blocking(
            "reading the cluster generation",
            self.timeout,
            move || {
                health.watch("checking the cluster generation", || {
                    // Busy only when an earlier read is stuck on a stalled export.
                    match reader.try_lock() {
                        Ok(mut reader) => reader.read(&layout),
                        Err(_) => hint::read(&layout),
                    }
                })
            },
        )
        .await?;
        *last = Some((started, value));
        Ok((started, value))
    }

    /// The in-memory copy as it is, without checking the export.
    fn cached(&self) -> Arc<Snapshot> {
        self.cache.load_full()
    }

    pub fn stats(&self) -> StoreStats {
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone();
        stats.thread_running = self.thread_running();
        stats
    }

    /// Whether the store thread is still there to commit.
    fn thread_running(&self) -> bool {
        self.thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|t| !t.is_finished())
    }

    /// The error for a job the store thread will never take: the daemon is stopping, or
    /// the thread is gone (which only a bug can do: say so, never fail silently).
    fn gone(&self) -> Error {
        if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return Error::ShuttingDown;
        }
        let last = self.stats().last_failure.unwrap_or_default();
        tracing::error!("the store thread has stopped; {last}");
        Error::Store(format!(
            "the store thread has stopped ({}); restart the daemon (`caravan info` shows the last failure)",
            if last.is_empty() { "no failure was recorded" } else { &last }
        ))
    }

    pub fn layout(&self) -> &SharedLayout {
        &self.layout
    }

    /// Finishes queued work and stops the store thread.
    pub fn stop(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self.queue.send(Job::Stop);
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }

    async fn wait<T>(&self, rx: oneshot::Receiver<T>, what: &str) -> Result<T> {
        // The worker bounds its own work by `timeout`; the margin covers queueing behind a
        // commit already under way.
        let limit = self.timeout + self.timeout / 2;
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) if self.stopping.load(std::sync::atomic::Ordering::SeqCst) => {
                Err(Error::ShuttingDown)
            }
            // The hold answering this call ended in a panic (see Worker::session_panicked).
            Ok(Err(_)) => {
                let why = self
                    .stats()
                    .last_failure
                    .unwrap_or_else(|| "the store's thread ended without an answer".into());
                Err(Error::Internal(format!(
                    "{what} (the store's thread panicked: {why}); the call may or may not have been committed (`caravan inspect` shows what is), and the next call reopens the store"
                )))
            }
            Err(_) => Err(Error::Timeout {
                what: what.to_string(),
                after: limit,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::volume::VolumeOptions;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let layout = SharedLayout::new(dir.path());
        layout.init().unwrap();
        let store = Store::start(
            layout,
            Duration::from_secs(5),
            None,
            crate::export::health::Health::new(Duration::from_secs(60)),
            Default::default(),
        )
        .unwrap();
        (dir, store)
    }

    fn create(name: &str) -> Mutation {
        Mutation::Create {
            name: name.into(),
            options: VolumeOptions::default(),
            node: "n1".into(),
            staged: None,
        }
    }

    #[tokio::test]
    async fn an_unfinished_snapshot_left_by_a_crash_does_not_break_the_next_open() {
        let (dir, store) = store();
        store.apply(create("one")).await.unwrap();
        // What a kill -9 during sled's snapshot write leaves behind.
        std::fs::write(
            dir.path()
                .join(".caravan/meta/snap.00000000FFFFFFFF.generating"),
            b"",
        )
        .unwrap();
        store.apply(create("two")).await.unwrap();
        let snap = store.snapshot().await.unwrap();
        assert_eq!(snap.volumes.keys().collect::<Vec<_>>(), vec!["one", "two"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_mutations_share_commits() {
        let (_dir, store) = store();
        let calls: Vec<_> = (0..64)
            .map(|i| {
                let s = store.clone();
                tokio::spawn(async move { s.apply(create(&format!("v{i:02}"))).await })
            })
            .collect();
        for c in calls {
            c.await.unwrap().unwrap();
        }
        let stats = store.stats();
        assert_eq!(stats.mutations, 64);
        assert!(stats.commits < 64, "no group commit: {stats:?}");
        assert_eq!(store.snapshot().await.unwrap().volumes.len(), 64);
        store.stop();
    }

    #[tokio::test]
    async fn a_second_store_on_the_same_root_sees_commits_through_the_generation() {
        let (dir, a) = store();
        let b = second(&dir);
        a.apply(create("web")).await.unwrap();
        assert!(b.snapshot().await.unwrap().volumes.contains_key("web"));
        let gen_a = a.snapshot().await.unwrap().generation;
        b.apply(Mutation::Remove { name: "web".into() })
            .await
            .unwrap();
        let snap = a.snapshot().await.unwrap();
        assert!(snap.volumes.is_empty());
        assert_eq!(snap.generation, gen_a + 1);
    }

    #[tokio::test]
    async fn a_failed_mutation_leaves_the_rest_of_its_batch_alone() {
        let (_dir, store) = store();
        let (ok, bad) = tokio::join!(
            store.apply(create("fine")),
            store.apply(Mutation::Remove {
                name: "missing".into()
            })
        );
        ok.unwrap();
        assert!(matches!(bad, Err(Error::NoSuchVolume(_))));
        assert!(store.snapshot().await.unwrap().volumes.contains_key("fine"));
    }

    #[tokio::test]
    async fn a_panic_inside_sled_fails_its_callers_clearly_and_the_store_goes_on() {
        let (_dir, store) = store();
        store.apply(create("before")).await.unwrap();
        store.inject_panic();
        let e = store.apply(create("during")).await.unwrap_err();
        // Its own kind, not a store error: the outcome is unknown, and it may be a bug.
        assert!(matches!(e, Error::Internal(_)), "{e:?}");
        let e = e.to_string();
        assert!(
            e.contains("panicked") && e.contains("NotConnected") && e.contains("worker.rs"),
            "{e}"
        );
        let stats = store.stats();
        assert_eq!(stats.session_failures, 1);
        assert!(stats.last_failure.unwrap().contains("NotConnected"));
        // The next call reopens sled and commits.
        store.apply(create("after")).await.unwrap();
        let snap = store.snapshot().await.unwrap();
        assert!(snap.volumes.contains_key("before") && snap.volumes.contains_key("after"));
        drop(snap);
        store.stop();
    }

    #[tokio::test]
    async fn a_commit_whose_fsync_failed_after_the_flush_is_settled_by_a_fresh_open() {
        let (dir, store) = store();
        store.apply(create("first")).await.unwrap();
        let g = store.snapshot().await.unwrap().generation;
        store.inject_fsync_failure();
        // It landed (sled flushed it to this local disk): it counts, and says so.
        store.apply(create("second")).await.unwrap();
        store
            .apply(Mutation::Remove {
                name: "first".into(),
            })
            .await
            .unwrap();
        {
            let snap = store.snapshot().await.unwrap();
            assert!(snap.volumes.contains_key("second") && !snap.volumes.contains_key("first"));
            assert_eq!(snap.generation, g + 2);
        }
        let other = second(&dir);
        let seen = other.snapshot().await.unwrap();
        assert_eq!(seen.volumes.keys().collect::<Vec<_>>(), vec!["second"]);
        assert!(
            !dir.path().join("volumes/first").exists(),
            "the remove's disposal ran"
        );
    }

    /// Two nodes knowing one volume, at generation `g`, with the hint left one ahead by
    /// a commit that died between its hint write and sled (the last release's order) and
    /// node b's state labelled with that number (it read the hint and reloaded).
    async fn a_hint_left_ahead_and_taken(ahead: u64) -> (tempfile::TempDir, Store, Store, u64) {
        let (dir, a) = store();
        let b = second(&dir);
        a.apply(create("one")).await.unwrap();
        let g = a.snapshot().await.unwrap().generation;
        let hint = dir.path().join(".caravan/generation");
        std::fs::write(&hint, format!("{:020}\n", g + ahead)).unwrap();
        let taken = b.snapshot().await.unwrap();
        assert_eq!((taken.volumes.len(), taken.generation), (1, g + ahead));
        (dir, a, b, g)
    }

    /// a commits a create; b's next read must have it.
    async fn a_create_reaches(a: &Store, b: &Store, what: &str) {
        a.apply(create("two")).await.unwrap();
        let snap = b.snapshot().await.unwrap();
        assert!(
            snap.volumes.contains_key("two"),
            "{what}: b served generation {} without the create acknowledged before",
            snap.generation
        );
    }

    #[tokio::test]
    async fn a_hint_left_ahead_of_sled_by_a_crash_is_never_reused() {
        let (_dir, a, b, g) = a_hint_left_ahead_and_taken(1).await;
        a_create_reaches(&a, &b, "after the crash").await;
        assert!(b.snapshot().await.unwrap().generation > g + 1);
    }

    #[tokio::test]
    async fn a_forged_hint_far_ahead_is_put_back_and_the_cluster_goes_on() {
        let (dir, a) = store();
        let b = second(&dir);
        a.apply(create("one")).await.unwrap();
        let g = a.snapshot().await.unwrap().generation;
        // Another machine writes the largest number there is.
        let hint = dir.path().join(".caravan/generation");
        std::fs::write(&hint, format!("{}\n", u64::MAX)).unwrap();
        // Commits go on, on both nodes, with numbers next to sled's own. (b first: its
        // hold is a new one, which opens the hint; a's last may still be lingering.)
        b.apply(create("three")).await.unwrap();
        a.apply(create("two")).await.unwrap();
        let snap = a.snapshot().await.unwrap();
        assert_eq!(names(&snap), ["one", "three", "two"]);
        // Set back past every number a reader may have taken from a trusted hint.
        let past = g + crate::core::freshness::TRUSTED_AHEAD;
        assert_eq!(snap.generation, past + 2);
        assert_eq!(
            std::fs::read_to_string(&hint)
                .unwrap()
                .trim()
                .parse::<u64>()
                .unwrap(),
            past + 2
        );
        assert_eq!(names(&b.snapshot().await.unwrap()), ["one", "three", "two"]);
    }

    /// Found by the simulation (tests/sim/metadata.rs): a hint left ahead by a crash, taken
    /// by a reader, then overwritten by another machine, was set back to sled's own
    /// generation; the next commit repeated the number the reader's state was labelled
    /// with, and the reader went on serving the state from before that commit.
    #[tokio::test]
    async fn a_hint_set_back_never_lets_a_commit_repeat_a_number_a_reader_took() {
        for planted in [format!("{}\n", u64::MAX), "not a number\n".to_string()] {
            let (dir, a, b, _) = a_hint_left_ahead_and_taken(1).await;
            // Then another machine writes the hint.
            std::fs::write(dir.path().join(".caravan/generation"), &planted).unwrap();
            a_create_reaches(&a, &b, &format!("with {planted:?} planted")).await;
        }
    }

    /// sled is the floor of every label: a hint a little ahead of sled, taken by a
    /// reader, then a lower number written by another machine, must not let the next
    /// commit repeat a number the reader holds (found in review of the simulation, which
    /// then found it too: `NoFloor`).
    #[tokio::test]
    async fn a_number_written_below_what_a_reader_holds_never_hides_a_commit() {
        let (dir, a, b, _) = a_hint_left_ahead_and_taken(10).await;
        std::fs::write(dir.path().join(".caravan/generation"), "0\n").unwrap();
        a_create_reaches(&a, &b, "with 0 written below").await;
    }

    /// On an export that squashes users, every node's hint file is "another user's": it
    /// is replaced, and its number kept (else every hold would set the hint back).
    #[tokio::test]
    async fn a_hint_file_of_another_user_is_replaced_keeping_its_number() {
        use std::os::unix::fs::MetadataExt;
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED a_hint_file_of_another_user_is_replaced_keeping_its_number: needs root to give the file to another user");
            return;
        }
        let (dir, a) = store();
        a.apply(create("one")).await.unwrap();
        let g = a.snapshot().await.unwrap().generation;
        let hint = dir.path().join(".caravan/generation");
        std::os::unix::fs::chown(&hint, Some(65534), Some(65534)).unwrap();
        // (From another node: a's hold may still be lingering, with the hint open.)
        let b = second(&dir);
        b.apply(create("two")).await.unwrap();
        assert_eq!(
            b.snapshot().await.unwrap().generation,
            g + 1,
            "not set back"
        );
        assert_eq!(std::fs::metadata(&hint).unwrap().uid(), 0, "replaced");
    }

    #[tokio::test]
    async fn a_create_whose_commit_failed_leaves_no_folder_to_adopt() {
        let (dir, a) = store();
        a.inject_write_failure();
        a.apply(create("lost")).await.unwrap_err();
        assert!(
            !dir.path().join("volumes/lost").exists(),
            "the failed create left its folder behind"
        );
        let Outcome::Created { adopted, .. } = a.apply(create("lost")).await.unwrap() else {
            panic!("not a create's outcome")
        };
        assert!(
            !adopted,
            "a create after a failed one adopted its leftovers"
        );
    }

    #[tokio::test]
    async fn a_device_or_fifo_at_the_hint_is_never_opened_but_replaced() {
        // Planted before the first commit (a hold under way would write through the
        // handle it opened before).
        let (dir, a) = store();
        let hint = dir.path().join(".caravan/generation");
        nix::unistd::mkfifo(&hint, nix::sys::stat::Mode::S_IRWXU).unwrap();
        // A reader blocked on the FIFO's other end returns as soon as anyone opens it for
        // writing: it must still be blocked after the commit.
        let (tx, opened) = std::sync::mpsc::channel();
        let (tid_tx, tid) = std::sync::mpsc::channel();
        let fifo = hint.clone();
        std::thread::spawn(move || {
            let _ = tid_tx.send(nix::unistd::gettid());
            let _ = std::fs::File::open(&fifo);
            let _ = tx.send(());
        });
        // The commit must come once the reader waits in open (under load the thread could
        // start after the commit replaced the FIFO, and open the new regular file).
        let tid = tid.recv().unwrap();
        let waiting = std::time::Instant::now();
        loop {
            let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
            // The state follows the command name in parentheses: `S` while it sleeps.
            if stat
                .rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('S'))
            {
                break;
            }
            assert!(
                waiting.elapsed() < Duration::from_secs(10),
                "the reader never waited in open: {stat}"
            );
            std::thread::yield_now();
        }
        a.apply(create("one")).await.unwrap();
        assert!(
            opened.recv_timeout(Duration::from_millis(300)).is_err(),
            "the FIFO planted at the hint was opened for writing"
        );
        assert!(
            std::fs::metadata(&hint).unwrap().is_file(),
            "replaced by a file"
        );
        let g = a.snapshot().await.unwrap().generation;
        assert_eq!(
            std::fs::read_to_string(&hint)
                .unwrap()
                .trim()
                .parse::<u64>()
                .unwrap(),
            g
        );
        // (The reader stays blocked on the unlinked FIFO until the test process ends.)
    }

    #[tokio::test]
    async fn what_a_forged_entry_says_is_confirmed_away_and_never_decides() {
        let (dir, a, b) = two_nodes_knowing_one().await;
        let g = a.snapshot().await.unwrap().generation;
        let c = second(&dir);
        assert_eq!(names(&c.snapshot().await.unwrap()), ["one"]);
        // Another machine forges the next commit: `one` removed, `forged` created.
        let store_id = a.cached().store_id.clone().unwrap();
        let mut changes = forged();
        changes.insert("one".into(), None);
        let journal = dir.path().join(".caravan/journal");
        std::fs::write(
            journal.join(format!("{:020}", g + 1)),
            journal::encode(&store_id, g + 1, &changes),
        )
        .unwrap();
        std::fs::write(
            dir.path().join(".caravan/generation"),
            format!("{:020}\n", g + 1),
        )
        .unwrap();
        // A reader takes it (entries answer reads, for speed)...
        let read = b.snapshot().await.unwrap();
        assert_eq!(names(&read), ["forged"]);
        assert!(read.removed_by_journal("one") && read.unconfirmed_since.is_some());
        // ...but decisions are made on sled: `one` can be mounted, `forged` cannot.
        b.apply(Mutation::Mount {
            name: "one".into(),
            node: "n2".into(),
            id: "c".into(),
        })
        .await
        .unwrap();
        let e = b
            .apply(Mutation::Mount {
                name: "forged".into(),
                node: "n2".into(),
                id: "c".into(),
            })
            .await
            .unwrap_err();
        assert!(matches!(e, Error::NoSuchVolume(_)), "{e}");
        // The commit skipped the forged number (the hint was ahead) and cleared it: a
        // reader catching up across it never applies it.
        let caught_up = c.snapshot().await.unwrap();
        assert_eq!(names(&caught_up), ["one"]);
        assert_eq!(caught_up.generation, g + 2);
        // And confirming puts sled's state back.
        let confirmed = b.confirm().await.unwrap();
        assert_eq!(names(&confirmed), ["one"]);
        assert!(confirmed.unconfirmed_since.is_none() && !confirmed.removed_by_journal("one"));
    }

    fn second(dir: &tempfile::TempDir) -> Store {
        Store::start(
            SharedLayout::new(dir.path()),
            Duration::from_secs(5),
            None,
            crate::export::health::Health::new(Duration::from_secs(60)),
            Default::default(),
        )
        .unwrap()
    }

    /// Two stores on one root, both knowing volume `one` (committed by the first).
    async fn two_nodes_knowing_one() -> (tempfile::TempDir, Store, Store) {
        let (dir, a) = store();
        let b = second(&dir);
        a.apply(create("one")).await.unwrap();
        b.snapshot().await.unwrap();
        (dir, a, b)
    }

    /// What another machine could write: a well-formed entry for `generation`, naming
    /// `store`'s id, that creates a volume `forged`.
    fn plant_entry(store: &Store, journal: &std::path::Path, generation: u64) {
        let store_id = store.cached().store_id.clone().unwrap();
        std::fs::write(
            journal.join(format!("{generation:020}")),
            journal::encode(&store_id, generation, &forged()),
        )
        .unwrap();
    }

    fn forged() -> BTreeMap<String, Option<VolumeRecord>> {
        BTreeMap::from([(
            "forged".to_string(),
            Some(VolumeRecord::new(
                "forged",
                "x",
                VolumeOptions::default(),
                0,
            )),
        )])
    }

    fn names(snap: &Snapshot) -> Vec<String> {
        snap.volumes.keys().cloned().collect()
    }

    /// Holds the cluster lock as another node would, so that any read that needed it
    /// could not finish.
    fn take_the_lock(dir: &tempfile::TempDir) -> crate::export::lock::ClusterLock {
        crate::export::lock::ClusterLock::acquire(
            &dir.path().join(".caravan/lock"),
            Instant::now() + Duration::from_secs(10),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn another_nodes_commit_is_read_from_the_journal_without_the_lock_or_sled() {
        let (dir, a) = store();
        let b = second(&dir);
        a.apply(create("one")).await.unwrap();
        assert_eq!(names(&b.snapshot().await.unwrap()), ["one"]);
        let reloads = b.stats().reloads;
        a.apply(create("two")).await.unwrap();
        a.apply(Mutation::Remove { name: "one".into() })
            .await
            .unwrap();
        let lock = take_the_lock(&dir);
        // b's reads can neither take the lock nor open sled now (a's store thread is
        // done with it, and the lock is held), so what they answer came from the journal.
        let snap = tokio::time::timeout(Duration::from_secs(1), b.snapshot())
            .await
            .expect("a read waited for the lock")
            .unwrap();
        assert_eq!(names(&snap), ["two"]);
        assert_eq!(snap.generation, a.cached().generation);
        let stats = b.stats();
        assert_eq!(stats.reloads, reloads, "{stats:?}");
        assert_eq!((stats.journal_catch_ups, stats.journal_entries), (1, 2));
        // The node that committed answers from memory too.
        let own = tokio::time::timeout(Duration::from_secs(1), a.snapshot())
            .await
            .expect("a read on the committing node waited")
            .unwrap();
        assert_eq!(names(&own), ["two"]);
        lock.release();
    }

    #[tokio::test]
    async fn a_commit_that_died_half_way_is_never_seen_and_a_planted_entry_never_read() {
        let (dir, a, b) = two_nodes_knowing_one().await;
        let g = a.cached().generation;
        // The commit fails before sled has it (and so before any journal entry).
        a.inject_write_failure();
        a.apply(create("ghost")).await.unwrap_err();
        for s in [&a, &b] {
            assert_eq!(names(&s.snapshot().await.unwrap()), ["one"]);
        }
        let journal = dir.path().join(journal::DIR);
        assert!(!journal.join(format!("{:020}", g + 1)).exists());
        // Another machine plants an entry for the next number, well formed and naming
        // this store: while no commit has that number, no reader reads it.
        plant_entry(&a, &journal, g + 1);
        assert_eq!(names(&b.snapshot().await.unwrap()), ["one"]);
        // The next real commit takes the number (its own entry replaces the planted one).
        a.apply(create("real")).await.unwrap();
        let snap = b.snapshot().await.unwrap();
        assert_eq!(names(&snap), ["one", "real"]);
        assert_eq!(snap.generation, g + 1);
        assert_eq!(b.stats().journal_catch_ups, 1);
    }

    #[tokio::test]
    async fn a_commit_that_could_write_no_entry_leaves_nothing_a_reader_applies() {
        let (dir, a, b) = two_nodes_knowing_one().await;
        let g = a.cached().generation;
        let journal = dir.path().join(journal::DIR);
        // Another machine puts a folder, with a forged entry inside, where the next
        // commit's entry goes: the commit can neither write its entry nor delete it.
        let blocker = journal.join(format!("{:020}", g + 1));
        std::fs::create_dir(&blocker).unwrap();
        plant_entry(&a, &blocker, g + 1);
        a.apply(create("real")).await.unwrap();
        assert_eq!(a.cached().generation, g + 1);
        let snap = b.snapshot().await.unwrap();
        assert_eq!(names(&snap), ["one", "real"]);
        let stats = b.stats();
        assert_eq!(
            (stats.journal_catch_ups, stats.journal_misses),
            (0, 1),
            "{stats:?}"
        );
    }

    #[tokio::test]
    async fn a_commit_whose_hint_write_failed_reaches_other_nodes_within_seconds() {
        let (_dir, a, b) = two_nodes_knowing_one().await;
        a.inject_hint_failure();
        a.apply(create("two")).await.unwrap();
        // This node has it at once; the others once the store thread came back for the
        // hint (it does every second, with no other call to make it).
        assert_eq!(names(&a.cached()), ["one", "two"]);
        let t = Instant::now();
        loop {
            let snap = b.snapshot().await.unwrap();
            if snap.volumes.contains_key("two") {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "b never saw the commit"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    }

    #[tokio::test]
    async fn a_bad_or_linked_entry_is_never_applied_the_reader_reloads_instead() {
        let (dir, a, b) = two_nodes_knowing_one().await;
        let outside = tempfile::tempdir().unwrap();
        let journal = dir.path().join(journal::DIR);
        let store_id = a.cached().store_id.clone().unwrap();
        let damages = ["flipped", "link", "fifo", "device", "other store"];
        for (i, damage) in damages.iter().enumerate() {
            let name = format!("v{i}");
            a.apply(create(&name)).await.unwrap();
            let g = a.cached().generation;
            let entry = journal.join(format!("{g:020}"));
            let forged = forged();
            std::fs::remove_file(&entry).unwrap();
            match *damage {
                "flipped" => {
                    let mut bytes = journal::encode(&store_id, g, &forged);
                    let at = bytes.len() - 3;
                    bytes[at] ^= 1;
                    std::fs::write(&entry, bytes).unwrap();
                }
                "link" => {
                    let target = outside.path().join("entry");
                    std::fs::write(&target, journal::encode(&store_id, g, &forged)).unwrap();
                    std::os::unix::fs::symlink(&target, &entry).unwrap();
                }
                "fifo" => nix::unistd::mkfifo(&entry, nix::sys::stat::Mode::S_IRWXU).unwrap(),
                // /dev/null's numbers: opening it would be harmless, but it must not even
                // be opened for reading.
                "device" => nix::sys::stat::mknod(
                    &entry,
                    nix::sys::stat::SFlag::S_IFCHR,
                    nix::sys::stat::Mode::S_IRWXU,
                    nix::sys::stat::makedev(1, 3),
                )
                .unwrap(),
                _ => std::fs::write(&entry, journal::encode("another", g, &forged)).unwrap(),
            }
            let snap = tokio::time::timeout(Duration::from_secs(5), b.snapshot())
                .await
                .expect("a planted entry blocked a read")
                .unwrap();
            assert!(!snap.volumes.contains_key("forged"), "{damage}");
            assert!(snap.volumes.contains_key(&name), "{damage}");
        }
        let stats = b.stats();
        assert_eq!(
            (stats.journal_catch_ups, stats.journal_misses),
            (0, 5),
            "{stats:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_never_goes_back_and_sees_only_committed_states() {
        let (dir, a) = store();
        let b = second(&dir);
        // What a committed: the names after each of its commits, by generation.
        let committed = Arc::new(Mutex::new(BTreeMap::<u64, Vec<String>>::new()));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = [a.clone(), b.clone(), b.clone()]
            .into_iter()
            .map(|s| {
                let done = done.clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    while !done.load(std::sync::atomic::Ordering::SeqCst) {
                        let snap = s.snapshot().await.unwrap();
                        seen.push((snap.generation, names(&snap)));
                        tokio::task::yield_now().await;
                    }
                    seen
                })
            })
            .collect();
        for i in 0..120 {
            let name = format!("v{:03}", i / 2);
            if i % 7 == 3 {
                // A commit that dies half-way: its entry staged, sled never written.
                a.inject_write_failure();
            }
            if i % 11 == 5 {
                // A commit whose fsync failed after sled's flush: settled by a reopen,
                // and it landed (this is a local disk).
                a.inject_fsync_failure();
            }
            let r = if i % 2 == 0 {
                a.apply(create(&name)).await
            } else {
                a.apply(Mutation::Remove { name: name.clone() }).await
            };
            let snap = a.cached();
            if r.is_ok() {
                committed
                    .lock()
                    .unwrap()
                    .insert(snap.generation, names(&snap));
            }
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let committed = committed.lock().unwrap().clone();
        for reader in readers {
            let seen = reader.await.unwrap();
            for pair in seen.windows(2) {
                assert!(
                    pair[0].0 <= pair[1].0,
                    "went back: {:?} then {:?}",
                    pair[0],
                    pair[1]
                );
            }
            for (g, names) in &seen {
                if *g == 0 {
                    continue;
                }
                assert_eq!(committed.get(g), Some(names), "generation {g}");
            }
        }
        assert!(b.stats().journal_catch_ups > 0, "{:?}", b.stats());
    }

    #[tokio::test]
    async fn a_record_this_version_cannot_read_is_never_taken_for_a_free_name() {
        let (dir, store) = store();
        store.apply(create("newer")).await.unwrap();
        store.stop();
        {
            // The worker closes sled once it has seen the stop: until then sled's own
            // file lock refuses a second opener.
            let t = std::time::Instant::now();
            let db = loop {
                match sled::Config::new()
                    .path(dir.path().join(".caravan/meta"))
                    .segment_size(64 << 10)
                    .open()
                {
                    Ok(db) => break db,
                    Err(e) if t.elapsed() < Duration::from_secs(10) => {
                        let _ = e;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => panic!("sled still locked 10 s after the stop: {e}"),
                }
            };
            let t = db.open_tree("volumes").unwrap();
            t.insert("newer", &br#"{"name":"newer","created_by":7}"#[..])
                .unwrap();
            let outside =
                br#"{"name":"../../outside","created_by":"x","created_at":1,"options":{}}"#;
            t.insert("../../outside", &outside[..]).unwrap();
            db.flush().unwrap();
        }
        let store = second(&dir);
        let e = store.apply(create("newer")).await.unwrap_err().to_string();
        assert!(e.contains("cannot be read") && e.contains("upgrade"), "{e}");
        {
            let snap = store.snapshot().await.unwrap();
            assert!(snap.volumes.is_empty(), "{:?}", names(&snap));
            assert!(snap.unreadable["../../outside"].contains("not a valid volume name"));
        }
        let e = store
            .apply(Mutation::Remove {
                name: "newer".into(),
            })
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot be read"), "{e}");
        // Its mounts still count: an Unmount must not pass as "nothing mounted".
        let e = store
            .apply(Mutation::Unmount {
                name: "newer".into(),
                node: "n1".into(),
                id: "x".into(),
            })
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot be read"), "{e}");
        store.stop();
    }
}
