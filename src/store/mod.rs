//! The cluster metadata store: sled on the shared export, one writer at a time.
//!
//! sled is a single-process database (it `flock`s its files while open), so every node
//! follows the same discipline for every commit (design notes §3):
//!
//! 1. take the cluster lock ([`ClusterLock`], bounded wait);
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
//! Reads (Get, List) are served from the in-memory copy; a reader first compares
//! `<root>/.caravan/generation` with the value the copy was loaded at, which costs one
//! small read (shared by concurrent readers), and reloads (under the lock) only when it
//! moved. When the export does not answer, readers get the last known copy, marked stale
//! (see [`crate::health`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::health::Health;
use crate::layout::SharedLayout;
use crate::lock::ClusterLock;
use crate::node::{Liveness, Nodes};
use crate::volume::{
    Access, Holder, OnDelete, Takeover, VolumeOptions, VolumeRecord, TAKEOVER_HISTORY,
};

mod hint;
mod sled_files;

use hint::HintWriter;
use sled_files::{open_db, read_generation, LogFile, GENERATION_KEY};

/// Most mutations folded into one commit.
const MAX_BATCH: usize = 512;
/// Bounds of how long a hold of the cluster lock waits for more work after a commit (see
/// [`linger`]).
const LINGER: (Duration, Duration) = (Duration::from_millis(3), Duration::from_millis(25));
/// Shortest hold limit (see [`hold_limit`]).
const MIN_HOLD: Duration = Duration::from_millis(50);
/// A hold may last this many times what opening sled cost in it.
const HOLD_PER_OPEN: u32 = 4;

/// A change to the cluster metadata, applied under the cluster lock.
#[derive(Debug, Clone)]
pub enum Mutation {
    Create {
        name: String,
        options: VolumeOptions,
        node: String,
    },
    Remove {
        name: String,
    },
    Mount {
        name: String,
        node: String,
        id: String,
    },
    Unmount {
        name: String,
        node: String,
        id: String,
    },
    /// An operator's takeover of an exclusive volume: make `node` the holder, now if the
    /// holder is dead or gone (or `force`), else fail.
    Takeover {
        name: String,
        node: String,
        force: bool,
    },
    /// After a restart: keep `node`'s mount records only for volumes in `bound` (the bind
    /// mounts really present on the host) and not taken over by another node; drop the rest.
    ReconcileNode {
        node: String,
        bound: BTreeSet<String>,
    },
}

impl Mutation {
    /// What the mutation does, for messages.
    pub fn describe(&self) -> &'static str {
        match self {
            Mutation::Create { .. } => "creating the volume",
            Mutation::Remove { .. } => "removing the volume",
            Mutation::Mount { .. } => "mounting the volume",
            Mutation::Unmount { .. } => "unmounting the volume",
            Mutation::Takeover { .. } => "taking the volume over",
            Mutation::ReconcileNode { .. } => "reconciling this node's mounts",
        }
    }
}

/// What a mutation did.
#[derive(Debug, Clone)]
pub enum Outcome {
    Created {
        record: VolumeRecord,
        /// The volume existed already with the same options (Create is idempotent).
        existed: bool,
        /// The data folder was there already (retained data) and was adopted.
        adopted: bool,
    },
    Removed {
        record: VolumeRecord,
        /// Where the data went (trash, archive), if it moved.
        moved_to: Option<PathBuf>,
    },
    Mounted {
        record: VolumeRecord,
        node_count: u32,
    },
    Unmounted {
        /// `None` when the volume does not exist (any more).
        record: Option<VolumeRecord>,
        /// `None` when the ID was not mounted on the node.
        node_count: Option<u32>,
    },
    TookOver {
        record: VolumeRecord,
    },
    Reconciled {
        /// Volumes whose records for the node were dropped, with the count dropped.
        dropped: Vec<(String, u32)>,
        /// Volumes that still have records for the node.
        kept: Vec<String>,
    },
}

/// How long a reader waits for the export before answering from the last known state.
pub const READ_BUDGET: Duration = Duration::from_secs(2);

/// What a reader gets: the state, and why it may be out of date.
pub struct Read<'a> {
    pub snapshot: RwLockReadGuard<'a, Snapshot>,
    /// Set when the export did not answer: the state is the last one known.
    pub stale: Option<String>,
}

/// The last committed state this node knows.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub volumes: BTreeMap<String, VolumeRecord>,
    /// Generation stored in sled at load time.
    pub generation: u64,
    /// Value of the generation file when the copy was validated.
    hint: u64,
    loaded: bool,
    /// When this node last committed or reloaded successfully.
    pub last_sync: Option<SystemTime>,
}

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
}

/// Handle to the store thread and the in-memory copy. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    layout: SharedLayout,
    queue: std::sync::mpsc::Sender<Job>,
    cache: Arc<RwLock<Snapshot>>,
    stats: Arc<Mutex<StoreStats>>,
    timeout: Duration,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    /// The last generation-hint read: when it started, and what it found.
    hint_read: Arc<tokio::sync::Mutex<Option<(Instant, u64)>>>,
    health: Arc<Health>,
}

impl Store {
    /// Starts the store thread for a root that [`SharedLayout::init`] prepared. `timeout`
    /// bounds every call: lock wait, open and commit together.
    pub fn start(
        layout: SharedLayout,
        timeout: Duration,
        nodes: Option<Arc<Nodes>>,
        health: Arc<Health>,
    ) -> Result<Store> {
        let (queue, jobs) = std::sync::mpsc::channel();
        let cache = Arc::new(RwLock::new(Snapshot::default()));
        let stats = Arc::new(Mutex::new(StoreStats::default()));
        let mut worker = Worker {
            layout: layout.clone(),
            cache: cache.clone(),
            stats: stats.clone(),
            timeout,
            trash_tag: 0,
            synced_folder: false,
            trashed: Vec::new(),
            janitor: None,
            events: Vec::new(),
            nodes,
            health: health.clone(),
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
            timeout,
            thread: Arc::new(Mutex::new(Some(thread))),
            hint_read: Arc::new(tokio::sync::Mutex::new(None)),
            health,
        })
    }

    /// Applies one mutation (group-committed with whatever else is queued).
    pub async fn apply(&self, mutation: Mutation) -> Result<Outcome> {
        // With the export stalled, queueing would only make the caller wait out its
        // timeout. An unmount is queued all the same (it must not be lost: dockerd will
        // not send it again) and applied once the export answers.
        if let Err(e) = self.health.refuse_if_stalled(mutation.describe()) {
            if let Mutation::Unmount { .. } = mutation {
                let (reply, _) = oneshot::channel();
                let _ = self.queue.send(Job::Apply { mutation, reply });
            }
            return Err(e);
        }
        let (reply, rx) = oneshot::channel();
        self.queue
            .send(Job::Apply { mutation, reply })
            .map_err(|_| Error::ShuttingDown)?;
        self.wait(rx, "committing to the cluster metadata").await?
    }

    /// The current state for a reader: fresh (reloaded first if another node committed)
    /// when the export answers within [`READ_BUDGET`], else the last known state with
    /// `stale` set, at once when the export is known to be stalled. An error only when
    /// nothing was ever loaded.
    pub async fn read(&self) -> Result<Read<'_>> {
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

    /// The current state: the in-memory copy, reloaded first if another node committed.
    pub async fn snapshot(&self) -> Result<RwLockReadGuard<'_, Snapshot>> {
        let hint = self.read_hint().await?;
        let fresh = {
            let c = self.cache.read().unwrap_or_else(|p| p.into_inner());
            c.loaded && c.hint == hint
        };
        if !fresh {
            let (reply, rx) = oneshot::channel();
            self.queue
                .send(Job::Refresh { reply })
                .map_err(|_| Error::ShuttingDown)?;
            self.wait(rx, "reloading the cluster metadata").await??;
        }
        Ok(self.cache.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Reads the generation hint, sharing one read among concurrent callers: a caller
    /// waits for the read in flight and takes its answer only if that read started after
    /// the caller arrived (so it saw every commit that returned before), and otherwise
    /// reads again itself. dockerd sends bursts of Gets (one before every Mount and
    /// Unmount, one per volume at its start); on a network filesystem each read is a
    /// round trip.
    async fn read_hint(&self) -> Result<u64> {
        let arrived = Instant::now();
        let mut last = tokio::time::timeout(self.timeout, self.hint_read.lock())
            .await
            .map_err(|_| Error::Timeout {
                what: "waiting for the cluster generation check".into(),
                after: self.timeout,
            })?;
        if let Some((started, value)) = *last {
            if started >= arrived {
                return Ok(value);
            }
        }
        let started = Instant::now();
        let file = self.layout.generation_file();
        let health = self.health.clone();
        let value = crate::health::run_blocking(
            "reading the cluster generation",
            self.timeout,
            move || health.watch("checking the cluster generation", || hint::read(&file)),
        )
        .await?;
        *last = Some((started, value));
        Ok(value)
    }

    /// The in-memory copy as it is, without checking the export.
    fn cached(&self) -> RwLockReadGuard<'_, Snapshot> {
        self.cache.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn stats(&self) -> StoreStats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn layout(&self) -> &SharedLayout {
        &self.layout
    }

    /// Finishes queued work and stops the store thread.
    pub fn stop(&self) {
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
            Ok(Err(_)) => Err(Error::ShuttingDown),
            Err(_) => Err(Error::Timeout {
                what: what.to_string(),
                after: limit,
            }),
        }
    }
}

/// The store thread's state.
struct Worker {
    layout: SharedLayout,
    cache: Arc<RwLock<Snapshot>>,
    stats: Arc<Mutex<StoreStats>>,
    timeout: Duration,
    trash_tag: u64,
    /// Whether sled's folder was fsynced once by this process.
    synced_folder: bool,
    /// What the current hold moved into the trash.
    trashed: Vec<PathBuf>,
    /// The janitor thread, which deletes what is put into the trash.
    janitor: Option<std::sync::mpsc::Sender<Vec<PathBuf>>>,
    /// Liveness of the other nodes; `None` treats every node as alive.
    nodes: Option<Arc<Nodes>>,
    /// What the batch being decided did to exclusive volumes, logged once it commits.
    events: Vec<Event>,
    health: Arc<Health>,
}

/// A change to an exclusive volume, logged once its commit is durable, with the commit's
/// generation: generations are cluster-wide and strictly increasing, so the logs of every
/// node can be merged into one order without comparing clocks (the torture test checks
/// from them that no two nodes ever held a volume at once).
enum Event {
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

impl Event {
    fn log(self, commit: u64) {
        match self {
            Event::Granted {
                volume,
                node,
                generation,
                from: Some(from),
                forced,
            } => {
                tracing::warn!(%volume, %from, %node, generation, forced, commit, "exclusive volume taken over")
            }
            Event::Granted {
                volume,
                node,
                generation,
                from: None,
                ..
            } => tracing::info!(%volume, %node, generation, commit, "exclusive volume granted"),
            Event::ExclusiveMount {
                volume,
                node,
                generation,
            } => tracing::info!(%volume, %node, generation, commit, "exclusive mount committed"),
        }
    }
}

/// Filesystem work that must follow a successful commit (still under the lock).
enum AfterCommit {
    Nothing,
    Dispose(VolumeRecord),
}

impl Worker {
    fn run(&mut self, jobs: std::sync::mpsc::Receiver<Job>) {
        self.janitor = start_janitor(self.layout.clone());
        let mut stopping = false;
        while !stopping {
            let Ok(first) = jobs.recv() else { break };
            let batch = gather(first, &jobs, &mut stopping);
            if !batch.is_empty() {
                // Opening the folders is the hold's first touch of the export: a stall
                // must show from here on (see crate::health).
                let _op = self
                    .health
                    .begin_internal("taking the cluster lock and committing");
                // The hold's file work reaches the root's folders through open handles
                // (see crate::pinned), closed when the hold ends.
                let pinned = self.layout.pinned();
                let unpinned = std::mem::replace(&mut self.layout, pinned);
                self.run_session(batch, &jobs, &mut stopping);
                self.layout = unpinned;
            }
            let trashed = std::mem::take(&mut self.trashed);
            if let (Some(janitor), false) = (&self.janitor, trashed.is_empty()) {
                let _ = janitor.send(trashed);
            }
        }
        // Jobs that arrived after Stop get ShuttingDown when their senders drop.
    }

    /// One hold of the cluster lock: take it, open sled once, commit `batch`, and keep
    /// committing whatever arrives within [`LINGER`] of the last commit, for at most
    /// [`hold_limit`] in total. Opening sled costs several times a commit (it reads its
    /// log and writes a snapshot), so back-to-back batches share one open instead of
    /// paying it each time; the limit bounds how long other nodes wait for their turn.
    fn run_session(
        &mut self,
        mut batch: Vec<Job>,
        jobs: &std::sync::mpsc::Receiver<Job>,
        stopping: &mut bool,
    ) {
        let started = Instant::now();
        let deadline = started + self.timeout;
        let lock_file = self.layout.lock_file();
        let lock = match ClusterLock::acquire_at(&lock_file, &self.layout.at(&lock_file), deadline)
        {
            Ok(lock) => lock,
            Err(e) => {
                self.health.failed(&e);
                return send_all(fail_all(batch, &e));
            }
        };
        let locked = Instant::now();
        let wait_ms = (locked - started).as_secs_f64() * 1e3;
        {
            let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
            stats.last_lock_wait_ms = wait_ms;
            stats.max_lock_wait_ms = stats.max_lock_wait_ms.max(wait_ms);
            stats.sessions += 1;
        }
        let mut open = match OpenStore::open(&self.layout, deadline) {
            Ok(open) => open,
            Err(e) => {
                self.health.failed(&e);
                lock.release();
                return send_all(fail_all(batch, &e));
            }
        };
        let open_cost = locked.elapsed();
        let limit = hold_limit(open_cost);
        let linger = linger(open_cost);
        tracing::debug!(
            lock_wait_ms = wait_ms,
            open_ms = open_cost.as_secs_f64() * 1e3,
            "cluster lock taken"
        );
        loop {
            let commit_started = Instant::now();
            let callers = batch.len();
            let (replies, ok) = self.commit_locked(&mut open, batch);
            // Replies go out at once: the commit is durable, and callers that answer
            // quickly (the next Mount of a busy host) land in this same hold.
            send_all(replies);
            let commit_cost = commit_started.elapsed();
            self.stats
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .last_commit_ms = commit_cost.as_secs_f64() * 1e3;
            if !ok || *stopping || locked.elapsed() >= limit {
                break;
            }
            match jobs.recv_timeout(linger) {
                // A lone caller is not kept waiting for company that is not coming.
                Ok(job) if callers > 1 => {
                    batch = gather_settled(job, jobs, stopping, commit_cost, linger)
                }
                Ok(job) => batch = gather(job, jobs, stopping),
                Err(_) => break,
            }
            if batch.is_empty() {
                break;
            }
        }
        // sled's file lock must be gone before the cluster lock is released.
        drop(open);
        lock.release();
        tracing::debug!(
            held_ms = locked.elapsed().as_secs_f64() * 1e3,
            "cluster lock released"
        );
    }

    /// One commit inside a hold of the lock. Returns the replies to send, and whether the
    /// commit went through (after a failure the hold ends and the next one reopens sled).
    fn commit_locked(&mut self, open: &mut OpenStore, mut batch: Vec<Job>) -> (Vec<Reply>, bool) {
        let t0 = Instant::now();
        // A caller that gave up (its timeout passed while the export stalled) was told
        // the call failed: applying it now would surprise it. Unmounts are the exception:
        // dockerd goes on as if they had worked and never sends them again.
        batch.retain(|job| match job {
            Job::Apply { mutation, reply } if reply.is_closed() => {
                let keep = matches!(
                    mutation,
                    Mutation::Unmount { .. } | Mutation::ReconcileNode { .. }
                );
                if !keep {
                    tracing::warn!("dropping a call whose caller gave up waiting: {mutation:?}");
                }
                keep
            }
            _ => true,
        });
        let refresh = batch.iter().any(|j| matches!(j, Job::Refresh { .. }));
        if let Err(e) = self.sync_cache(&open.db, &open.tree, refresh) {
            return (fail_all(batch, &e), false);
        }

        // Folders of new volumes first, all at once; then decide every mutation in
        // memory, on an overlay of the cache.
        let mut prepared = self.prepare_creates(&batch);
        let mut overlay: BTreeMap<String, Option<VolumeRecord>> = BTreeMap::new();
        let decided: Vec<_> = batch
            .into_iter()
            .filter_map(|job| match job {
                Job::Apply {
                    mutation, reply, ..
                } => Some(Decided::Apply(
                    reply,
                    self.decide(&mutation, &mut overlay, &mut prepared),
                )),
                Job::Refresh { reply } => Some(Decided::Refresh(reply)),
                Job::Stop => None,
            })
            .collect();

        let t_decide = t0.elapsed();
        let committed = if overlay.is_empty() {
            Ok(self
                .cache
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .generation)
        } else {
            self.write(open, &overlay)
        };
        let t_write = t0.elapsed();

        let events = std::mem::take(&mut self.events);
        let generation = match committed {
            Ok(g) => {
                self.health.succeeded();
                g
            }
            Err(e) => {
                self.health.failed(&e);
                // Nothing was applied; the next batch reloads before deciding.
                self.cache.write().unwrap_or_else(|p| p.into_inner()).loaded = false;
                let mut replies = Vec::new();
                for d in decided {
                    replies.push(match d {
                        Decided::Apply(r, _) => Reply::Apply(r, Err(clone_err(&e))),
                        Decided::Refresh(r) => Reply::Refresh(r, Err(clone_err(&e))),
                    });
                }
                return (replies, false);
            }
        };
        for event in events {
            event.log(generation);
        }
        {
            let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
            for (name, rec) in overlay {
                match rec {
                    Some(r) => cache.volumes.insert(name, r),
                    None => cache.volumes.remove(&name),
                };
            }
            cache.generation = generation;
            cache.hint = generation;
            cache.last_sync = Some(SystemTime::now());
        }
        let mutations = decided
            .iter()
            .filter(|d| matches!(d, Decided::Apply(..)))
            .count() as u64;
        let jobs = decided.len();
        let replies = self.after_commit(decided);
        tracing::debug!(
            jobs,
            decide_ms = t_decide.as_secs_f64() * 1e3,
            write_ms = (t_write - t_decide).as_secs_f64() * 1e3,
            after_ms = (t0.elapsed() - t_write).as_secs_f64() * 1e3,
            "commit"
        );
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        stats.commits += 1;
        stats.mutations += mutations;
        (replies, true)
    }

    /// Reloads the in-memory copy if sled's generation moved since it was loaded. With
    /// `read_hint` (a reader found the hint changed) the hint file is read under the lock
    /// and remembered, so that a hint left ahead of sled by a crash stops sending readers
    /// here; a commit rewrites the hint anyway, so mutations need not read it.
    fn sync_cache(&mut self, db: &sled::Db, tree: &sled::Tree, read_hint: bool) -> Result<()> {
        let stored = read_generation(db)?;
        let hint = if read_hint {
            let file = self.layout.generation_file();
            hint::read(&self.layout.at(&file)).unwrap_or(stored)
        } else {
            stored
        };
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        if cache.loaded && cache.generation == stored {
            if read_hint {
                cache.hint = hint;
            }
            return Ok(());
        }
        let mut volumes = BTreeMap::new();
        for item in tree.iter() {
            let (k, v) = item.map_err(|e| Error::Store(format!("reading volumes: {e}")))?;
            let name = String::from_utf8_lossy(&k).into_owned();
            match serde_json::from_slice::<VolumeRecord>(&v) {
                Ok(rec) => {
                    volumes.insert(name, rec);
                }
                // A record that does not decode is skipped, not fatal: one bad entry must
                // not take every other volume down with it.
                Err(e) => tracing::error!(volume = %name, "skipping an unreadable record: {e}"),
            }
        }
        cache.volumes = volumes;
        cache.generation = stored;
        cache.hint = hint;
        cache.loaded = true;
        cache.last_sync = Some(SystemTime::now());
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).reloads += 1;
        Ok(())
    }

    /// Decides one mutation against the cache plus the batch's overlay. On success the
    /// overlay holds the new record; on error it is untouched.
    fn decide(
        &mut self,
        m: &Mutation,
        overlay: &mut BTreeMap<String, Option<VolumeRecord>>,
        prepared: &mut Prepared,
    ) -> Result<(Outcome, AfterCommit)> {
        let current = |name: &str, overlay: &BTreeMap<String, Option<VolumeRecord>>| match overlay
            .get(name)
        {
            Some(r) => r.clone(),
            None => self
                .cache
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .volumes
                .get(name)
                .cloned(),
        };
        let put = |overlay: &mut BTreeMap<_, _>, r: &VolumeRecord| {
            overlay.insert(r.name.clone(), Some(r.clone()));
        };
        match m {
            Mutation::Create {
                name,
                options,
                node,
            } => match current(name, overlay) {
                Some(existing)
                    if existing.options == *options || *options == VolumeOptions::default() =>
                {
                    let created = Outcome::Created {
                        record: existing,
                        existed: true,
                        adopted: false,
                    };
                    Ok((created, AfterCommit::Nothing))
                }
                Some(existing) => Err(Error::Conflict {
                    name: name.clone(),
                    existing: existing.options.to_string(),
                }),
                // Removed earlier in this batch: its folder goes to the trash after the
                // commit, so a create now would be left without data.
                None if overlay.contains_key(name) => Err(Error::Busy(format!(
                    "volume {name} was removed by a call committed together with this one; create it again"
                ))),
                None => {
                    // Folders first: a crash after this and before the commit leaves a
                    // folder that the next create adopts, never a record without data.
                    let (record, adopted) = match prepared.remove(name) {
                        Some((record, adopted)) => (record, adopted?),
                        None => {
                            let record = VolumeRecord::new(name, node, options.clone());
                            let adopted = self.layout.create_volume(&record)?;
                            (record, adopted)
                        }
                    };
                    put(overlay, &record);
                    let created = Outcome::Created {
                        record,
                        existed: false,
                        adopted,
                    };
                    Ok((created, AfterCommit::Nothing))
                }
            },
            Mutation::Remove { name } => {
                let record =
                    current(name, overlay).ok_or_else(|| Error::NoSuchVolume(name.clone()))?;
                // Mounts of dead or left nodes are stale: they do not block a remove.
                let live = |n: &&str| {
                    self.nodes
                        .as_ref()
                        .is_none_or(|l| l.liveness(n) == Liveness::Alive)
                };
                let (nodes, stale): (Vec<&str>, Vec<&str>) =
                    record.mounted_on().into_iter().partition(live);
                if !stale.is_empty() && nodes.is_empty() {
                    tracing::warn!(volume = %name, stale = ?stale, "removing a volume with stale mounts of nodes that are gone");
                }
                if !nodes.is_empty() {
                    let nodes = nodes
                        .iter()
                        .map(|n| format!("{n} ({} mounts)", record.node_mount_count(n)))
                        .collect::<Vec<_>>()
                        .join(", ");
                    return Err(Error::InUse {
                        name: name.clone(),
                        nodes,
                    });
                }
                overlay.insert(name.clone(), None);
                let removed = Outcome::Removed {
                    record: record.clone(),
                    moved_to: None,
                };
                Ok((removed, AfterCommit::Dispose(record)))
            }
            Mutation::Mount { name, node, id } => {
                let mut record =
                    current(name, overlay).ok_or_else(|| Error::NoSuchVolume(name.clone()))?;
                if record.options.access == Access::Exclusive {
                    self.claim(&mut record, node, false)?;
                    self.events.push(Event::ExclusiveMount {
                        volume: name.clone(),
                        node: node.clone(),
                        generation: record.generation,
                    });
                }
                let node_count = record.add_mount(node, id);
                put(overlay, &record);
                Ok((
                    Outcome::Mounted { record, node_count },
                    AfterCommit::Nothing,
                ))
            }
            Mutation::Unmount { name, node, id } => {
                let mut record = current(name, overlay);
                let node_count = record.as_mut().and_then(|r| r.remove_mount(node, id));
                if let (Some(r), Some(remaining)) = (&mut record, node_count) {
                    // The holder's last unmount releases an exclusive volume: a planned
                    // move to another node needs no takeover.
                    if remaining == 0 && r.holder.as_ref().is_some_and(|h| &h.node == node) {
                        r.holder = None;
                    }
                    put(overlay, r);
                }
                Ok((
                    Outcome::Unmounted { record, node_count },
                    AfterCommit::Nothing,
                ))
            }
            Mutation::Takeover { name, node, force } => {
                let mut record =
                    current(name, overlay).ok_or_else(|| Error::NoSuchVolume(name.clone()))?;
                if record.options.access != Access::Exclusive {
                    return Err(Error::invalid(format!(
                        "volume {name} is shared: any node may mount it, so there is nothing to take over"
                    )));
                }
                self.claim(&mut record, node, *force)?;
                put(overlay, &record);
                Ok((Outcome::TookOver { record }, AfterCommit::Nothing))
            }
            Mutation::ReconcileNode { node, bound } => {
                let names: Vec<String> = {
                    let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
                    let in_cache = cache
                        .volumes
                        .values()
                        .filter(|r| r.mounts.contains_key(node));
                    in_cache.map(|r| r.name.clone()).collect()
                };
                let (mut dropped, mut kept) = (Vec::new(), Vec::new());
                for name in names {
                    let Some(mut record) = current(&name, overlay) else {
                        continue;
                    };
                    let fenced = record.holder.as_ref().is_some_and(|h| &h.node != node)
                        && record.options.access == Access::Exclusive;
                    if bound.contains(&name) && !fenced {
                        kept.push(name);
                        continue;
                    }
                    if fenced {
                        tracing::warn!(volume = %name, "another node took this exclusive volume over while this node was away; dropping this node's claim");
                    }
                    let count = record.node_mount_count(node);
                    record.mounts.remove(node);
                    put(overlay, &record);
                    dropped.push((name, count));
                }
                Ok((Outcome::Reconciled { dropped, kept }, AfterCommit::Nothing))
            }
        }
    }

    /// Makes `node` the holder of an exclusive volume: a no-op for the holder itself, a
    /// grant when nobody holds it, a takeover when the holder is dead or left (or with
    /// `force`), and an error naming the holder while it is alive.
    fn claim(&mut self, record: &mut VolumeRecord, node: &str, force: bool) -> Result<()> {
        let liveness = |n: &str| {
            self.nodes
                .as_ref()
                .map_or(Liveness::Alive, |l| l.liveness(n))
        };
        let previous = match &record.holder {
            Some(h) if h.node == node => return Ok(()),
            Some(h) => Some(h.node.clone()),
            None => None,
        };
        let state = previous.as_deref().map(liveness);
        if state == Some(Liveness::Alive) && !force {
            let holder = previous.unwrap_or_default();
            let when = match self.nodes.as_ref() {
                Some(l) => format!(
                    "once {holder} has been silent for {}s (in {:.0}s if it stays silent)",
                    l.dead_after().as_secs(),
                    l.dead_in(&holder).unwrap_or(l.dead_after()).as_secs_f64()
                ),
                None => "once it is declared dead".to_string(),
            };
            return Err(Error::ExclusiveHeld {
                name: record.name.clone(),
                holder,
                when,
            });
        }
        record.generation += 1;
        let previous_holder = previous.clone();
        if let Some(from) = previous {
            // The old holder's mounts are void: it is gone, or fenced and must unmount.
            record.mounts.remove(&from);
            let at = SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let forced = state == Some(Liveness::Alive);
            record.takeovers.push(Takeover {
                from: from.clone(),
                to: node.to_string(),
                generation: record.generation,
                at,
                forced,
            });
            let excess = record.takeovers.len().saturating_sub(TAKEOVER_HISTORY);
            record.takeovers.drain(..excess);
        }
        record.holder = Some(Holder {
            node: node.to_string(),
            generation: record.generation,
        });
        self.events.push(Event::Granted {
            volume: record.name.clone(),
            node: node.to_string(),
            generation: record.generation,
            from: previous_holder,
            forced: state == Some(Liveness::Alive),
        });
        Ok(())
    }

    /// Writes the overlay and the next generation, durably. Returns the new generation.
    fn write(
        &mut self,
        open: &mut OpenStore,
        overlay: &BTreeMap<String, Option<VolumeRecord>>,
    ) -> Result<u64> {
        let (db, tree) = (&open.db, &open.tree);
        let store_err = |what: &str, e: sled::Error| Error::Store(format!("{what}: {e}"));
        let next = read_generation(db)? + 1;
        let t0 = Instant::now();
        // The hint goes first: a reader that sees it reloads under the lock, after this
        // commit. A crash after this line leaves a hint ahead of sled, which costs readers
        // one reload, never a stale answer.
        open.hint.write(next)?;
        let t_hint = t0.elapsed();
        let mut batch = sled::Batch::default();
        for (name, rec) in overlay {
            match rec {
                Some(r) => batch.insert(
                    name.as_bytes(),
                    serde_json::to_vec(r).expect("records serialize"),
                ),
                None => batch.remove(name.as_bytes()),
            }
        }
        tree.apply_batch(batch)
            .map_err(|e| store_err("writing volumes", e))?;
        db.insert(GENERATION_KEY, &next.to_be_bytes())
            .map_err(|e| store_err("writing the generation", e))?;
        db.flush().map_err(|e| store_err("flushing", e))?;
        let t_flushed = t0.elapsed();
        open.log.fsync(!self.synced_folder)?;
        self.synced_folder = true;
        tracing::trace!(
            hint_ms = t_hint.as_secs_f64() * 1e3,
            sled_ms = (t_flushed - t_hint).as_secs_f64() * 1e3,
            fsync_ms = (t0.elapsed() - t_flushed).as_secs_f64() * 1e3,
            "commit written"
        );
        Ok(next)
    }

    /// Makes the folders of the batch's new volumes (one per name not in the cache), all
    /// at once: on a network filesystem each step is a round trip, and they are
    /// independent. Under the lock, so no remove can move a folder in between. (Making
    /// them before taking the lock was tried and measured slower: a single caller's next
    /// create then arrives too late to share the hold of the lock, and with many callers
    /// the file server serializes the folder work anyway.)
    fn prepare_creates(&self, batch: &[Job]) -> Prepared {
        let mut records = BTreeMap::new();
        {
            let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
            for job in batch {
                if let Job::Apply {
                    mutation:
                        Mutation::Create {
                            name,
                            options,
                            node,
                        },
                    ..
                } = job
                {
                    if !cache.volumes.contains_key(name) && !records.contains_key(name) {
                        records
                            .insert(name.clone(), VolumeRecord::new(name, node, options.clone()));
                    }
                }
            }
        }
        let list: Vec<VolumeRecord> = records.into_values().collect();
        let results = in_parallel(&list, |r| self.layout.create_volume(r));
        list.into_iter()
            .zip(results)
            .map(|(r, adopted)| (r.name.clone(), (r, adopted)))
            .collect()
    }

    /// Runs the filesystem work that follows a commit (moving removed volumes' data, all at
    /// once) and turns the decisions into replies.
    fn after_commit(&mut self, decided: Vec<Decided>) -> Vec<Reply> {
        let mut disposals = Vec::new();
        for d in &decided {
            if let Decided::Apply(_, Ok((_, AfterCommit::Dispose(record)))) = d {
                let tag = if record.options.on_delete == OnDelete::Delete {
                    self.trash_tag += 1;
                    // Unique across nodes too: two hosts can run daemons with the same pid.
                    let nanos = SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map(|d| d.subsec_nanos())
                        .unwrap_or(0);
                    format!("{}.{}.{nanos}", std::process::id(), self.trash_tag)
                } else {
                    String::new()
                };
                disposals.push((record.clone(), tag));
            }
        }
        let mut moved = in_parallel(&disposals, |(record, tag)| {
            self.layout.dispose_volume(record, tag)
        })
        .into_iter();
        decided
            .into_iter()
            .map(|d| match d {
                Decided::Apply(r, Ok((mut outcome, AfterCommit::Dispose(record)))) => {
                    match moved.next().expect("one result per disposal") {
                        Ok(to) => {
                            if let (Some(path), OnDelete::Delete) =
                                (&to, record.options.on_delete)
                            {
                                self.trashed.push(path.clone());
                            }
                            if let Outcome::Removed { moved_to, .. } = &mut outcome {
                                *moved_to = to;
                            }
                        }
                        // The record is gone; the data stays in place and a later create
                        // adopts it.
                        Err(e) => {
                            tracing::error!(volume = %record.name, "volume removed but its data could not be moved: {e}")
                        }
                    }
                    Reply::Apply(r, Ok(outcome))
                }
                Decided::Apply(r, decision) => Reply::Apply(r, decision.map(|(o, _)| o)),
                Decided::Refresh(r) => Reply::Refresh(r, Ok(())),
            })
            .collect()
    }
}

/// What one hold of the cluster lock keeps open.
struct OpenStore {
    db: sled::Db,
    tree: sled::Tree,
    hint: HintWriter,
    log: LogFile,
}

impl OpenStore {
    fn open(layout: &SharedLayout, deadline: Instant) -> Result<OpenStore> {
        let (db, tree) = open_db(layout, deadline)?;
        let hint = HintWriter::open(layout)?;
        let log = LogFile::open(layout)?;
        Ok(OpenStore {
            db,
            tree,
            hint,
            log,
        })
    }
}

/// Folders made for a batch's new volumes: name → (record, whether an existing folder was
/// adopted).
type Prepared = BTreeMap<String, (VolumeRecord, Result<bool>)>;

/// How many threads a batch's folder work may use at once.
const PARALLEL_IO: usize = 16;

/// `f` over every item, on up to [`PARALLEL_IO`] threads; results in the items' order.
fn in_parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    if items.len() <= 1 {
        return items.iter().map(&f).collect();
    }
    let per_thread = items.len().div_ceil(PARALLEL_IO);
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(per_thread)
            .map(|chunk| s.spawn(|| chunk.iter().map(&f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// Starts the thread that deletes what removes put in the trash: first whatever is there
/// (a crash after a remove, on any node), then what this node's removes send it. Deleting
/// a volume's data can take long (one round trip per file on a network filesystem), so it
/// never runs under the lock or in the store thread, where it would hold up every commit.
/// Each node deletes only its own entries after that: janitors of three nodes reading and
/// deleting the same folder would triple the work on the export. See [`Janitor`] for when.
fn start_janitor(layout: SharedLayout) -> Option<std::sync::mpsc::Sender<Vec<PathBuf>>> {
    let (send, trashed) = std::sync::mpsc::channel::<Vec<PathBuf>>();
    let spawned = std::thread::Builder::new()
        .name("caravan-janitor".into())
        .spawn(move || {
            if let Err(e) = layout.pinned().empty_trash() {
                tracing::warn!("emptying the trash: {e}");
            }
            Janitor::default().run(&layout, &trashed);
        });
    match spawned {
        Ok(_) => Some(send),
        Err(e) => {
            tracing::warn!(
                "could not start the trash janitor, removed data stays in the trash: {e}"
            );
            None
        }
    }
}

/// While removes keep coming, the janitor waits: deleting a volume's folder is about as
/// much work on the export as creating one, and on a network filesystem it competes with
/// the removes themselves (three GlusterFS hosts x 16 clients: Remove 115 -> 184 ops/s
/// and a create-mount-unmount-remove mix 160 -> 228 ops/s without it). It deletes once
/// no remove came for [`JANITOR_IDLE`], and never lets more than [`JANITOR_BACKLOG`]
/// entries or entries older than [`JANITOR_MAX_AGE`] wait, so under a steady stream of
/// removes it keeps pace with them.
#[derive(Default)]
struct Janitor {
    backlog: std::collections::VecDeque<(Instant, PathBuf)>,
    last_arrival: Option<Instant>,
}

const JANITOR_IDLE: Duration = Duration::from_secs(1);
const JANITOR_BACKLOG: usize = 256;
const JANITOR_MAX_AGE: Duration = Duration::from_secs(30);

impl Janitor {
    /// Ends when the store thread drops its sender; what is left stays in the trash for
    /// the next start (which empties the whole trash).
    fn run(mut self, layout: &SharedLayout, trashed: &std::sync::mpsc::Receiver<Vec<PathBuf>>) {
        use std::sync::mpsc::RecvTimeoutError;
        loop {
            if self.due() {
                // One round of deletions reaches the trash through one open handle.
                let round = layout.pinned();
                while self.due() {
                    let (_, path) = self.backlog.pop_front().expect("due implies an entry");
                    if let Err(e) = round.remove_tree(&path) {
                        tracing::warn!("emptying the trash: {e}");
                    }
                    match trashed.try_recv() {
                        Ok(paths) => self.arrived(paths),
                        Err(std::sync::mpsc::TryRecvError::Empty) => {}
                        Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
                    }
                }
            }
            let next = match self.until_due() {
                None => trashed.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(wait) => trashed.recv_timeout(wait),
            };
            match next {
                Ok(paths) => self.arrived(paths),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn arrived(&mut self, paths: Vec<PathBuf>) {
        let now = Instant::now();
        self.last_arrival = Some(now);
        self.backlog.extend(paths.into_iter().map(|p| (now, p)));
    }

    fn due(&self) -> bool {
        self.until_due() == Some(Duration::ZERO)
    }

    /// How long until the oldest entry should be deleted; `None` when there is none.
    fn until_due(&self) -> Option<Duration> {
        let (queued_at, _) = self.backlog.front()?;
        if self.backlog.len() > JANITOR_BACKLOG {
            return Some(Duration::ZERO);
        }
        let idle =
            JANITOR_IDLE.saturating_sub(self.last_arrival.map_or(JANITOR_IDLE, |t| t.elapsed()));
        let age = JANITOR_MAX_AGE.saturating_sub(queued_at.elapsed());
        Some(idle.min(age))
    }
}

/// The first job plus whatever else is queued, up to [`MAX_BATCH`]. A `Stop` is taken out
/// and noted in `stopping`.
fn gather(first: Job, jobs: &std::sync::mpsc::Receiver<Job>, stopping: &mut bool) -> Vec<Job> {
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match jobs.try_recv() {
            Ok(j) => batch.push(j),
            Err(_) => break,
        }
    }
    let before = batch.len();
    batch.retain(|j| !matches!(j, Job::Stop));
    *stopping |= batch.len() != before;
    batch
}

/// Inside a hold, after a commit that answered several callers: the first job plus
/// whatever arrives without a gap longer than a quarter of what the last commit cost, for
/// at most that cost (and `linger`) in all. The callers answered by one commit send their
/// next calls a little apart; taken one by one they would each pay a whole commit, taken
/// together they share one.
fn gather_settled(
    first: Job,
    jobs: &std::sync::mpsc::Receiver<Job>,
    stopping: &mut bool,
    commit_cost: Duration,
    linger: Duration,
) -> Vec<Job> {
    let mut batch = gather(first, jobs, stopping);
    let until = Instant::now() + commit_cost.min(linger);
    let gap = commit_cost / 4;
    while batch.len() < MAX_BATCH && !*stopping {
        let wait = gap.min(until.saturating_duration_since(Instant::now()));
        if wait.is_zero() {
            break;
        }
        match jobs.recv_timeout(wait) {
            Ok(job) => batch.extend(gather(job, jobs, stopping)),
            Err(_) => break,
        }
    }
    batch
}

/// How long one hold of the cluster lock may last: long enough that opening sled is at
/// most a fifth of it, and never less than [`MIN_HOLD`]. On three GlusterFS hosts with 16
/// callers each, going from 2 to 4 opens' worth raised Mount from 151 to 207 ops/s and
/// Create from 95 to 108, and cut their p50 from 386/502 ms to 53/137 ms; p99 rose to
/// about a second (the other nodes wait longer for their turn).
fn hold_limit(open_cost: Duration) -> Duration {
    (open_cost * HOLD_PER_OPEN).max(MIN_HOLD)
}

/// How long a hold waits for more work after a commit: a quarter of what opening sled
/// cost, within [`LINGER`]. Long enough for a caller to get its answer, finish its own
/// work (a bind mount over a network filesystem takes a few round trips) and send the
/// next call; short enough that waiting costs other nodes less than the open it saves.
fn linger(open_cost: Duration) -> Duration {
    (open_cost / 4).clamp(LINGER.0, LINGER.1)
}

fn send_all(replies: Vec<Reply>) {
    for reply in replies {
        reply.send();
    }
}

fn fail_all(batch: Vec<Job>, e: &Error) -> Vec<Reply> {
    tracing::error!("commit failed: {e}");
    batch
        .into_iter()
        .filter_map(|job| match job {
            Job::Apply { reply, .. } => Some(Reply::Apply(reply, Err(clone_err(e)))),
            Job::Refresh { reply } => Some(Reply::Refresh(reply, Err(clone_err(e)))),
            Job::Stop => None,
        })
        .collect()
}

/// A job after its mutation was decided in memory, before the commit.
#[allow(clippy::large_enum_variant)] // lives for one commit
enum Decided {
    Apply(
        oneshot::Sender<Result<Outcome>>,
        Result<(Outcome, AfterCommit)>,
    ),
    Refresh(oneshot::Sender<Result<()>>),
}

/// An answer to a queued job, sent once the lock is released.
enum Reply {
    Apply(oneshot::Sender<Result<Outcome>>, Result<Outcome>),
    Refresh(oneshot::Sender<Result<()>>, Result<()>),
}

impl Reply {
    fn send(self) {
        // A caller that gave up (timed out) has dropped its receiver; nothing to do then.
        match self {
            Reply::Apply(tx, r) => drop(tx.send(r)),
            Reply::Refresh(tx, r) => drop(tx.send(r)),
        }
    }
}

/// Errors are sent to every caller of a failed batch; io::Error is not Clone, so the copy
/// keeps the kind and the message.
fn clone_err(e: &Error) -> Error {
    match e {
        Error::Timeout { what, after } => Error::Timeout {
            what: what.clone(),
            after: *after,
        },
        Error::ShuttingDown => Error::ShuttingDown,
        Error::Io { context, source } => Error::Io {
            context: context.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        other => Error::Store(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_janitor_waits_while_removes_come_but_not_past_its_backlog() {
        let mut j = Janitor::default();
        assert_eq!(j.until_due(), None, "nothing to delete");
        j.arrived(vec![PathBuf::from("/trash/a")]);
        let wait = j.until_due().unwrap();
        assert!(
            wait > Duration::from_millis(900) && wait <= JANITOR_IDLE,
            "{wait:?}"
        );
        j.arrived(
            (0..JANITOR_BACKLOG)
                .map(|i| PathBuf::from(format!("/trash/{i}")))
                .collect(),
        );
        assert!(
            j.due(),
            "over the backlog: delete now, even while removes keep coming"
        );
        j.backlog.truncate(1);
        j.last_arrival = Some(Instant::now() - JANITOR_IDLE);
        assert!(j.due(), "no remove for a second: delete");
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let layout = SharedLayout::new(dir.path());
        layout.init().unwrap();
        let store = Store::start(
            layout,
            Duration::from_secs(5),
            None,
            crate::health::Health::new(Duration::from_secs(60)),
        )
        .unwrap();
        (dir, store)
    }

    fn create(name: &str) -> Mutation {
        Mutation::Create {
            name: name.into(),
            options: VolumeOptions::default(),
            node: "n1".into(),
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
        let b = Store::start(
            SharedLayout::new(dir.path()),
            Duration::from_secs(5),
            None,
            crate::health::Health::new(Duration::from_secs(60)),
        )
        .unwrap();
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
}
