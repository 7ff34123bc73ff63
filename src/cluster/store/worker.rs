//! The store thread: holds of the cluster lock, commits, and the file work around them.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::oneshot;

use super::batching::{gather, gather_settled};
use super::disposal::in_parallel;
use super::hint::HintWriter;
use super::janitor::start_janitor;
use super::journal::{self, JournalWriter};
use super::sled_files::{
    open_db, read_generation, sled_error, LogFile, GENERATION_KEY, STORE_ID_KEY,
};
use super::{Job, Mutation, Outcome, Snapshot, StoreStats};
use crate::cluster::node::Nodes;
use crate::core::batch::{self, AfterCommit, Made, NewFolder, Note, Stored};
use crate::core::decide::{Event, Oracle};
use crate::core::error::{Error, Result};
use crate::core::liveness::{Judgment, Liveness};
use crate::core::timing::{hold_limit, linger};
use crate::core::volume::VolumeRecord;
use crate::export::health::Health;
use crate::export::layout::SharedLayout;
use crate::export::lock::ClusterLock;

/// The store thread's state.
pub(super) struct Worker {
    /// Counts lock waits and commits.
    pub(super) metrics: Arc<crate::runtime::metrics::Metrics>,
    pub(super) layout: SharedLayout,
    /// What readers are served (this thread and readers catching up swap it).
    pub(super) cache: Arc<ArcSwap<Snapshot>>,
    pub(super) stats: Arc<Mutex<StoreStats>>,
    pub(super) timeout: Duration,
    pub(super) trash_tag: u64,
    /// Whether sled's folder was fsynced once by this process.
    pub(super) synced_folder: bool,
    /// What the current hold moved into the trash.
    pub(super) trashed: Vec<PathBuf>,
    /// The janitor thread, which deletes what is put into the trash.
    pub(super) janitor: Option<std::sync::mpsc::Sender<Vec<PathBuf>>>,
    /// Liveness of the other nodes; `None` treats every node as alive.
    pub(super) nodes: Option<Arc<Nodes>>,
    /// The boot id recorded with this node's mounts and holds.
    pub(super) boot_id: String,
    pub(super) health: Arc<Health>,
    pub(super) faults: Arc<super::Faults>,
    /// A commit's hint write failed: its commit is durable but other nodes' readers do
    /// not know of it. Until a hold brings the hint up to sled, the thread holds the lock
    /// once a second on its own for that, without waiting for work.
    pub(super) hint_behind: bool,
    /// The generation of a commit whose fsync failed after sled's flush went through: it
    /// may be durable, and only a fresh open of sled can tell (see `verify_landed`).
    pub(super) unsure: Option<u64>,
    /// The state this thread decides on: only ever one it loaded from sled or committed
    /// itself under the lock (never one a reader made from the journal). Not loaded:
    /// the next commit reloads first.
    pub(super) state: Arc<Snapshot>,
    /// The generations this hold committed: after it, each one's entry [`journal::KEEP`]
    /// back is deleted (every number is pruned once, by the node that committed past it).
    pub(super) committed: Vec<u64>,
}

/// The liveness oracle of one commit: the heartbeats of the nodes its decisions may judge
/// ([`batch::judged_nodes`]) are read fresh, under the cluster lock, before the batch is
/// decided; the decisions then judge from what was read.
struct FreshOracle {
    nodes: Option<Arc<Nodes>>,
    refreshed: BTreeSet<String>,
}

impl FreshOracle {
    fn read(nodes: Option<Arc<Nodes>>, judged: BTreeSet<String>) -> FreshOracle {
        if let Some(nodes) = &nodes {
            for node in &judged {
                nodes.refresh(node);
            }
        }
        FreshOracle {
            nodes,
            refreshed: judged,
        }
    }
}

/// A node not read before the batch (judged_nodes missed it: a bug, which tests/sim/
/// looks for) is read now rather than judged on an old view.
fn read_if_missed(refreshed: &mut BTreeSet<String>, nodes: &Nodes, node: &str) {
    if refreshed.insert(node.to_string()) {
        tracing::warn!(
            node,
            "judging a node whose heartbeat was not read before the batch; reading it now"
        );
        nodes.refresh(node);
    }
}

impl Oracle for FreshOracle {
    fn judge(&mut self, node: &str, boot_id: Option<&str>) -> Judgment {
        let Some(nodes) = &self.nodes else {
            return Judgment {
                state: Liveness::Alive,
                dead_in: None,
                observer_cut_off: false,
            };
        };
        read_if_missed(&mut self.refreshed, nodes, node);
        nodes.judge(node, boot_id)
    }

    fn may_hold(&self) -> std::result::Result<(), String> {
        self.nodes.as_ref().map_or(Ok(()), |n| n.may_hold())
    }

    fn dead_after(&self) -> Duration {
        self.nodes
            .as_ref()
            .map_or(Duration::from_secs(15), |n| n.dead_after())
    }

    fn judge_holder(&mut self, node: &str, boot_id: Option<&str>) -> Judgment {
        let Some(nodes) = &self.nodes else {
            return self.judge(node, boot_id);
        };
        read_if_missed(&mut self.refreshed, nodes, node);
        nodes.judge_holder(node, boot_id)
    }

    fn takeover_after(&self) -> Duration {
        self.nodes
            .as_ref()
            .map_or(Duration::from_secs(15), |n| n.takeover_after())
    }
}

impl Worker {
    pub(super) fn run(&mut self, jobs: std::sync::mpsc::Receiver<Job>) {
        note_panics_in(self.stats.clone());
        self.janitor = start_janitor(self.layout.clone());
        let mut stopping = false;
        while !stopping {
            let first = if self.hint_behind {
                match jobs.recv_timeout(Duration::from_secs(1)) {
                    Ok(job) => job,
                    // A hold of its own, only to bring the hint up to sled (sync_state).
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Job::Refresh {
                        reply: oneshot::channel().0,
                    },
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                }
            } else {
                let Ok(job) = jobs.recv() else { break };
                job
            };
            let batch = gather(first, &jobs, &mut stopping);
            if !batch.is_empty() {
                // Opening the folders is the hold's first touch of the export: a stall
                // must show from here on (see crate::export::health).
                let _op = self
                    .health
                    .begin_internal("taking the cluster lock and committing");
                // The hold's file work reaches the root's folders through open handles
                // (see crate::export::pinned), closed when the hold ends.
                let pinned = match self.layout.pinned() {
                    Ok(pinned) => pinned,
                    Err(e) => {
                        self.health.failed(&e);
                        send_all(fail_all(batch, &e));
                        continue;
                    }
                };
                let unpinned = std::mem::replace(&mut self.layout, pinned);
                // sled unwraps I/O errors in places (its log writer, on drop): on a broken
                // export it panics. The hold is the boundary: its handles are thrown away
                // (their drop ran during the unwind), its callers get an error (their reply
                // senders are dropped; see Store::wait), and the next hold reopens sled.
                let session = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    self.run_session(batch, &jobs, &mut stopping)
                }));
                self.layout = unpinned;
                if let Err(panic) = session {
                    self.session_panicked(panic_message(&panic));
                }
            }
            let trashed = std::mem::take(&mut self.trashed);
            if let (Some(janitor), false) = (&self.janitor, trashed.is_empty()) {
                let _ = janitor.send(trashed);
            }
        }
        // Jobs that arrived after Stop get ShuttingDown when their senders drop.
    }

    /// After a hold that panicked: nothing of it is trusted, the next hold reloads. (The
    /// failure was counted by the panic hook, before the unwind dropped the callers' reply
    /// senders: see [`note_panics_in`].)
    fn session_panicked(&mut self, msg: String) {
        let e = Error::Internal(format!("committing to the metadata store: {msg}"));
        tracing::error!("{e}; its handles were dropped, the next call reopens the store");
        self.health.failed(&e);
        self.trashed.clear();
        self.committed.clear();
        self.distrust();
    }

    /// Makes the next commit reload from sled before deciding anything.
    pub(super) fn distrust(&mut self) {
        self.state = Arc::new(Snapshot::default());
    }

    /// One hold of the cluster lock: take it, open sled once, commit `batch`, and keep
    /// committing whatever arrives within [`linger`] of the last commit, for at most
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
        self.metrics.lock_wait(locked - started);
        let wait_ms = (locked - started).as_secs_f64() * 1e3;
        {
            let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
            stats.last_lock_wait_ms = wait_ms;
            stats.max_lock_wait_ms = stats.max_lock_wait_ms.max(wait_ms);
            stats.sessions += 1;
        }
        let mut open = match OpenStore::open(&self.layout, deadline) {
            Ok(open) => Some(open),
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
            let ok = ok && open.is_some();
            // Replies go out at once: the commit is durable, and callers that answer
            // quickly (the next Mount of a busy host) land in this same hold.
            send_all(replies);
            let commit_cost = commit_started.elapsed();
            self.metrics.commit(callers, commit_cost);
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
        let journal = open.as_mut().and_then(|o| o.journal.take());
        drop(open);
        lock.release();
        tracing::debug!(
            held_ms = locked.elapsed().as_secs_f64() * 1e3,
            "cluster lock released"
        );
        // Outside the lock: old entries are never written again.
        let committed = std::mem::take(&mut self.committed);
        if let Some(journal) = journal {
            for g in committed.into_iter().filter(|g| *g > journal::KEEP) {
                journal.prune(g - journal::KEEP);
            }
        }
    }

    /// One commit inside a hold of the lock. Returns the replies to send, and whether the
    /// commit went through (after a failure the hold ends and the next one reopens sled).
    fn commit_locked(
        &mut self,
        slot: &mut Option<OpenStore>,
        mut batch: Vec<Job>,
    ) -> (Vec<Reply>, bool) {
        // Only this commit's own write may leave an uncertain outcome to settle.
        self.unsure = None;
        let Some(open) = slot.as_mut() else {
            let e = Error::Store("the store is not open in this hold".into());
            return (fail_all(batch, &e), false);
        };
        if super::Faults::take(&self.faults.panic) {
            panic!("injected: called `Result::unwrap()` on an `Err` value: NotConnected");
        }
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
        if let Err(e) = self.sync_state(open) {
            return (fail_all(batch, &e), false);
        }
        let base = self.state.clone();

        // Folders of new volumes first, all at once; then the heartbeats the decisions
        // may consult, read fresh; then every mutation decided in memory (core::batch).
        let stored = Stored {
            volumes: &base.volumes,
            unreadable: &base.unreadable,
        };
        let mutations = || {
            batch.iter().filter_map(|job| match job {
                Job::Apply { mutation, .. } => Some(mutation),
                _ => None,
            })
        };
        let now_unix = crate::runtime::clock::unix_seconds();
        let (made, fresh) = self.make_folders(batch::new_folders(stored, mutations(), now_unix));
        let mut oracle =
            FreshOracle::read(self.nodes.clone(), batch::judged_nodes(stored, mutations()));
        let decisions = batch::decide_batch(
            stored,
            mutations(),
            &self.boot_id,
            now_unix,
            made,
            &mut oracle,
        );
        for note in &decisions.notes {
            log_note(note);
        }
        // Folders made for creates that were refused: nothing will ever record them.
        self.discard_folders(
            decisions
                .unused
                .iter()
                .filter(|name| fresh.contains(name))
                .map(String::as_str),
        );
        let overlay = decisions.overlay;
        let events = decisions.events;
        let mut results = decisions.results.into_iter();
        let decided: Vec<_> = batch
            .into_iter()
            .filter_map(|job| match job {
                Job::Apply { reply, .. } => Some(Decided::Apply(
                    reply,
                    results.next().unwrap_or_else(|| {
                        Err(Error::Store(
                            "a mutation of the batch was not decided".into(),
                        ))
                    }),
                )),
                Job::Refresh { reply } => Some(Decided::Refresh(reply)),
                Job::Stop => None,
            })
            .collect();

        let t_decide = t0.elapsed();
        let committed = if overlay.is_empty() {
            Ok(base.generation)
        } else {
            self.write(open, &overlay)
        };
        // Whether the outcome stays unknown (the commit may have landed).
        let mut unknown = false;
        let committed = match (committed, self.unsure.take()) {
            (Err(e), Some(next)) => {
                let (landed, stays_unknown) = self.verify_landed(slot, next, e);
                unknown = stays_unknown;
                landed
            }
            (c, _) => c,
        };
        let committed = match committed {
            Ok(_) if slot.is_none() => Err(Error::Store(
                "the store was closed during the commit".into(),
            )),
            c => c,
        };
        let t_write = t0.elapsed();

        let generation = match committed {
            Ok(g) => {
                self.health.succeeded();
                g
            }
            Err(e) => {
                self.health.failed(&e);
                // Nothing was applied; the next batch reloads before deciding. The folders
                // this batch made for new volumes go too: a Create reported failed must
                // leave nothing that a later create or `doctor --repair` would adopt.
                // (Unless the commit may have landed: then they may be volumes.)
                if !unknown {
                    self.discard_folders(fresh.iter().map(String::as_str));
                }
                self.distrust();
                return (fail_decided(decided, &e), false);
            }
        };
        for event in events {
            log_event(event, generation);
        }
        if !overlay.is_empty() {
            if let Some(open) = slot.as_mut() {
                self.committed(open, generation, overlay);
            }
        }
        let mutations = decided
            .iter()
            .filter(|d| matches!(d, Decided::Apply(..)))
            .count() as u64;
        let jobs = decided.len();
        let (replies, intact) = match slot.as_mut() {
            Some(open) => self.after_commit(open, decided),
            // Not reached: a commit that landed has its store open (checked above).
            None => (
                fail_decided(decided, &Error::Store("the store is closed".into())),
                false,
            ),
        };
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
        (replies, intact)
    }

    /// Brings this thread's state up to sled's (reloading it only when sled's generation
    /// is not the one the state is of), and publishes it with the hint values it is
    /// current for: under the lock nobody else commits, so the hint now holds a value
    /// no newer than sled's last commit, and every later commit writes a larger one.
    /// A hint left behind sled (a commit that died after sled and before the hint) is
    /// brought up to it here, so that other nodes' readers see that commit.
    fn sync_state(&mut self, open: &mut OpenStore) -> Result<()> {
        let stored = read_generation(&open.db)?;
        if open.hint.last() < stored {
            match open.hint.write(stored) {
                Ok(()) => self.hint_behind = false,
                Err(e) => {
                    tracing::warn!("bringing the generation hint up to sled's ({stored}): {e}")
                }
            }
        } else {
            self.hint_behind = false;
        }
        // A hint ahead of sled (an older version's commit that died between the two, or
        // another machine's writing, within the trusted distance): the numbers between
        // will never be commits. The state is that of the hint's number, and whatever is
        // under those numbers in the journal goes: a reader catching up from here starts
        // past them, and never applies what another machine planted there.
        let synced = crate::core::freshness::synced(stored, open.hint.last());
        if let Some(j) = open.journal.as_ref() {
            for skipped in synced.voided.clone() {
                j.forget(skipped);
            }
        }
        // sled is the floor of every number a state is labelled with: a hint adopted
        // above sled's generation is written into sled (durably) before any state takes
        // it. A later hint below it (another machine's writing, an older node setting a
        // hint back to sled's) then never lets a commit repeat a number some node holds,
        // and the voided numbers are voided once, not at every hold.
        if synced.generation > stored {
            self.raise_generation(open, synced.generation)?;
        }
        let (stored, hints) = (synced.generation, synced.hints);
        let same_store = self.state.store_id.as_deref() == Some(open.store_id.as_str());
        if self.state.loaded && self.state.generation == stored && same_store {
            let mut state = (*self.state).clone();
            state.hints = hints;
            state.validated = Some(Instant::now());
            self.publish(state);
            return Ok(());
        }
        let mut volumes = imbl::OrdMap::new();
        let mut unreadable = BTreeMap::new();
        for item in open.tree.iter() {
            let (k, v) = item.map_err(|e| sled_error("reading volumes", e))?;
            match crate::core::volume::decode_stored(&k, &v) {
                Ok(rec) => {
                    volumes.insert(rec.name.clone(), rec);
                }
                // A record that does not decode or check is skipped, not fatal: one bad
                // entry must not take every other volume down with it. It is remembered,
                // so that no call mistakes the name for a free one and overwrites it.
                Err(why) => {
                    let name = String::from_utf8_lossy(&k).into_owned();
                    tracing::error!(volume = %crate::core::error::shown(&name), "skipping a stored record: {why}");
                    unreadable.insert(name, why);
                }
            }
        }
        // A commit is proof that its incarnation was alive: note the mounts and holds
        // that changed since what readers were last served.
        if let Some(nodes) = &self.nodes {
            let served = self.cache.load();
            for (name, rec) in &volumes {
                super::note_live(nodes, served.volumes.get(name), rec);
            }
        }
        self.publish(Snapshot {
            volumes,
            unreadable,
            generation: stored,
            hints,
            store_id: Some(open.store_id.clone()),
            validated: Some(Instant::now()),
            loaded: true,
            last_sync: Some(SystemTime::now()),
            unconfirmed_since: None,
            removed_by_journal: Default::default(),
            serial: 0,
        });
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).reloads += 1;
        Ok(())
    }

    fn write_hint(&self, open: &mut OpenStore, generation: u64) -> Result<()> {
        let injected = self
            .faults
            .hint
            .fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |n| n.checked_sub(1),
            )
            .is_ok();
        if injected {
            return Err(Error::io(
                "writing the generation hint (injected by a test)",
                std::io::Error::from_raw_os_error(nix::libc::EIO),
            ));
        }
        open.hint.write(generation)
    }

    /// Makes `state` the one this thread decides on and readers are served.
    fn publish(&mut self, mut state: Snapshot) {
        state.serial = super::next_serial();
        self.state = Arc::new(state);
        self.cache.store(self.state.clone());
    }

    /// After sled has commit `generation` (which wrote `overlay`) durably: its journal
    /// entry gets its number, the new state is published (this node's readers see the
    /// commit from here on), and then the hint moves (every node's readers do).
    pub(super) fn committed(
        &mut self,
        open: &mut OpenStore,
        generation: u64,
        overlay: BTreeMap<String, Option<VolumeRecord>>,
    ) {
        // Its entry under its number (or none: whatever else was there is gone), before
        // the hint moves, so that every reader that sees the number finds the entry.
        if let Some(j) = open.journal.as_ref() {
            j.write(
                generation,
                &journal::encode(&open.store_id, generation, &overlay),
            );
        }
        let mut state = (*self.state).clone();
        for (name, rec) in overlay {
            match rec {
                Some(r) => state.volumes.insert(name, r),
                None => state.volumes.remove(&name),
            };
        }
        state.generation = generation;
        // The hint holds a value of this hold until the write below lands.
        state.hints =
            crate::core::freshness::after_commit(self.state.hints.0, open.hint.last(), generation);
        state.validated = Some(Instant::now());
        state.last_sync = Some(SystemTime::now());
        self.publish(state);
        let mut written = self.write_hint(open, generation);
        if written.is_err() {
            written = self.write_hint(open, generation);
        }
        if let Err(e) = written {
            // The commit stands. Until the hint is brought up to sled, the store thread
            // comes back for it every second (see `run`), and the next hold on any node
            // does the same.
            tracing::warn!(generation, "the commit is durable, but moving the generation hint failed: {e}; retrying every second");
            self.hint_behind = true;
        }
        self.committed.push(generation);
    }

    /// Writes `generation` as sled's own, durably (no records change): see `sync_state`.
    fn raise_generation(&mut self, open: &mut OpenStore, generation: u64) -> Result<()> {
        open.db
            .insert(GENERATION_KEY, &generation.to_be_bytes())
            .map_err(|e| sled_error("writing the generation", e))?;
        open.db.flush().map_err(|e| sled_error("flushing", e))?;
        open.log.fsync(!self.synced_folder)?;
        self.synced_folder = true;
        tracing::info!(
            generation,
            "the metadata's generation raised to the hint's, which was ahead"
        );
        Ok(())
    }

    /// Writes the overlay and the next generation, durably. Returns the new generation.
    pub(super) fn write(
        &mut self,
        open: &mut OpenStore,
        overlay: &BTreeMap<String, Option<VolumeRecord>>,
    ) -> Result<u64> {
        let (db, tree) = (&open.db, &open.tree);
        let store_err = |what: &str, e: sled::Error| sled_error(what, e);
        // Past both the stored generation and the hint: a commit that died after writing
        // the hint left it ahead of sled, and reusing its number would leave readers that
        // saw it believing they are up to date.
        let next = crate::core::freshness::next_generation(read_generation(db)?, open.hint.last())
            .ok_or_else(|| Error::Store("the generation counter is exhausted".into()))?;
        let t0 = Instant::now();
        if super::Faults::take(&self.faults.write) {
            return Err(Error::io(
                "writing volumes (injected by a test)",
                std::io::Error::from_raw_os_error(nix::libc::EIO),
            ));
        }
        let mut batch = sled::Batch::default();
        for (name, rec) in overlay {
            match rec {
                Some(r) => batch.insert(
                    name.as_bytes(),
                    serde_json::to_vec(r)
                        .map_err(|e| Error::Store(format!("encoding volume {name}: {e}")))?,
                ),
                None => batch.remove(name.as_bytes()),
            }
        }
        tree.apply_batch(batch)
            .map_err(|e| store_err("writing volumes", e))?;
        db.insert(GENERATION_KEY, &next.to_be_bytes())
            .map_err(|e| store_err("writing the generation", e))?;
        if let Err(e) = db.flush() {
            // The batch was applied: sled may still write it out (on drop, or by its own
            // flusher), so it may land. Settled by a fresh open, like a failed fsync.
            self.unsure = Some(next);
            return Err(store_err("flushing", e));
        }
        let t_flushed = t0.elapsed();
        let synced = if super::Faults::take(&self.faults.fsync) {
            Err(Error::io(
                "fsync (injected by a test)",
                std::io::Error::from_raw_os_error(nix::libc::EIO),
            ))
        } else {
            open.log.fsync(!self.synced_folder)
        };
        if let Err(e) = synced {
            // sled has the batch and flushed it: it may be durable. The caller decides
            // from a fresh open (see verify_landed), never by guessing.
            self.unsure = Some(next);
            return Err(e);
        }
        self.synced_folder = true;
        tracing::trace!(
            sled_ms = t_flushed.as_secs_f64() * 1e3,
            fsync_ms = (t0.elapsed() - t_flushed).as_secs_f64() * 1e3,
            "commit written"
        );
        Ok(next)
    }

    /// After a commit whose fsync failed once sled's flush had gone through: closes sled
    /// and opens it again (still under the cluster lock, so nobody else committed) to
    /// see whether the commit's generation is stored. Landed: the commit counts, and its
    /// after-commit work (binds, disposals) must run. Not landed: it failed. The reopened
    /// store is left in `slot` (empty when the reopen failed: the hold ends).
    /// Returns whether the commit landed, and whether that stays unknown (the store could
    /// not be opened again to see).
    fn verify_landed(
        &mut self,
        slot: &mut Option<OpenStore>,
        next: u64,
        e: Error,
    ) -> (Result<u64>, bool) {
        tracing::warn!("{e}: sled's flush went through, so the commit may be durable; opening the store again to see");
        drop(slot.take());
        let stored = OpenStore::open(&self.layout, Instant::now() + self.timeout).and_then(|r| {
            let stored = read_generation(&r.db)?;
            *slot = Some(r);
            Ok(stored)
        });
        match stored {
            Err(e) => (Err(e), true),
            Ok(stored) if stored >= next => {
                tracing::warn!(
                    generation = next,
                    "the commit landed although its fsync failed; it counts"
                );
                (Ok(next), false)
            }
            Ok(_) => (Err(e), false),
        }
    }

    /// Deletes the folders of new volumes that will never be recorded (their create was
    /// refused, or its commit failed), under the lock: nobody else creates the name
    /// meanwhile.
    fn discard_folders<'a>(&self, names: impl Iterator<Item = &'a str>) {
        for name in names {
            match self.layout.remove_tree(&self.layout.volume_dir(name)) {
                Ok(()) => {
                    tracing::debug!(volume = %name, "deleted the folder of a create that was not committed")
                }
                Err(e) => {
                    tracing::warn!(volume = %name, "deleting the folder of a create that was not committed: {e}")
                }
            }
        }
    }

    /// Makes the folders of the batch's new volumes ([`batch::new_folders`]), all at
    /// once: on a network filesystem each step is a round trip, and they are independent.
    /// Under the lock, so no remove can move a folder in between. (Making them before
    /// taking the lock was tried and measured slower: a single caller's next create then
    /// arrives too late to share the hold of the lock, and with many callers the file
    /// server serializes the folder work anyway.)
    ///
    /// Returns what became of each, by name, and the names of the folders this batch made
    /// itself (not found there already, not staged copies moved into place): those go if
    /// nothing records them. A failed commit leaves a staged copy in place, as it left
    /// the copy before.
    fn make_folders(
        &self,
        folders: Vec<NewFolder>,
    ) -> (BTreeMap<String, (VolumeRecord, Made)>, Vec<String>) {
        let results = in_parallel(&folders, |f| match &f.staged {
            Some(tag) => self.layout.adopt_staging(&f.record, tag).map(|()| false),
            None => self.layout.create_volume(&f.record),
        });
        let mut fresh = Vec::new();
        let made = folders
            .into_iter()
            .zip(results)
            .map(|(f, made)| {
                if f.staged.is_none() && matches!(made, Ok(false)) {
                    fresh.push(f.record.name.clone());
                }
                (f.record.name.clone(), (f.record, made))
            })
            .collect();
        (made, fresh)
    }
}

/// What one hold of the cluster lock keeps open.
pub(super) struct OpenStore {
    db: sled::Db,
    tree: sled::Tree,
    hint: HintWriter,
    log: LogFile,
    /// `None` when the journal folder could not be opened: commits then write no entries
    /// (readers elsewhere reload instead).
    pub(super) journal: Option<JournalWriter>,
    /// The metadata store's id, which its journal entries name.
    store_id: String,
}

impl OpenStore {
    fn open(layout: &SharedLayout, deadline: Instant) -> Result<OpenStore> {
        let (db, tree) = open_db(layout, deadline)?;
        let mut hint = HintWriter::open(layout)?;
        // The hint is a hint: far ahead of sled's own generation (or not a number) it is
        // not one of caravan's (a crash between an older version's hint write and its
        // commit leaves it one ahead per crash), and taking it would push every later
        // commit's number up to it (u64::MAX: "the generation counter is exhausted", on
        // every node, for good). It is set back, under the lock, past every number a
        // reader may have taken from a trusted hint (core::freshness::set_back).
        let stored = read_generation(&db)?;
        if !crate::core::freshness::hint_trusted(stored, hint.found()) {
            let back = crate::core::freshness::set_back(stored);
            tracing::warn!(
                hint = ?hint.found(),
                generation = stored,
                set_to = back,
                "the generation hint is far ahead of the metadata's own generation, or not a number (written by another machine?): not trusted; setting it back"
            );
            hint.write(back)?;
        } else if hint.found().is_none() {
            // Not a number on a root that never committed: readers would reload under
            // the lock at every read until the first commit.
            hint.write(stored)?;
        }
        let log = LogFile::open(layout)?;
        let journal = JournalWriter::open(layout)
            .map_err(|e| tracing::warn!("commits write no journal entries: {e}"))
            .ok();
        let stored_id = db
            .get(STORE_ID_KEY)
            .map_err(|e| sled_error("reading the store id", e))?;
        let export = layout.export();
        let store_id = match stored_id {
            Some(id) if !id.is_empty() && id.len() <= 64 => {
                String::from_utf8_lossy(&id).into_owned()
            }
            // This daemon serves a store that has an id: one without is not that store
            // (another export mounted at the root), and is not given one here.
            _ if export.cluster().is_some() => {
                return Err(Error::ExportReplaced(format!(
                    "the metadata store at {} has no store id, where this daemon serves {}: another export is mounted there; mount this cluster's export again, or restart caravan to serve the one mounted now",
                    layout.meta_dir().display(),
                    export.cluster().unwrap_or_default()
                )));
            }
            // New (or from a version without it, or not one this version wrote): a new
            // one, written with the next commit. Entries that named another are never
            // applied.
            _ => {
                let id = crate::runtime::random::id();
                db.insert(STORE_ID_KEY, id.as_bytes())
                    .map_err(|e| sled_error("writing the store id", e))?;
                id
            }
        };
        if let Some(mount) = layout.pinned_mount() {
            if export.learn_cluster(&store_id, mount)? {
                keep_store_id_file(layout, &store_id)?;
                export.store_id_file_holds_cluster(mount);
            }
        }
        Ok(OpenStore {
            db,
            tree,
            hint,
            log,
            journal,
            store_id,
        })
    }
}

/// Makes `.caravan/store-id` hold `store_id` (under the lock, from sled's own): what
/// tells a daemon whose export was mounted again that it is the same cluster (see
/// [`crate::export::connection`]). Whatever another machine put in its place is replaced, never
/// written through.
fn keep_store_id_file(layout: &SharedLayout, store_id: &str) -> Result<()> {
    let path = layout.root.join(crate::export::connection::STORE_ID_FILE);
    if crate::export::connection::read_store_id(&layout.root_dir()?).is_ok_and(|id| id == store_id)
    {
        return Ok(());
    }
    crate::export::layout::replace_file(
        &path,
        &layout.at(&path),
        format!("{store_id}\n").as_bytes(),
    )
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
pub(super) enum Decided {
    Apply(
        oneshot::Sender<Result<Outcome>>,
        Result<(Outcome, AfterCommit)>,
    ),
    Refresh(oneshot::Sender<Result<()>>),
}

/// An answer to a queued job, sent once the lock is released.
#[allow(clippy::large_enum_variant)] // lives for one commit
pub(super) enum Reply {
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
        Error::ExportReplaced(why) => Error::ExportReplaced(why.clone()),
        Error::WriteRefused { context, refusal } => Error::WriteRefused {
            context: context.clone(),
            refusal: *refusal,
        },
        Error::Io { context, source } => Error::Io {
            context: context.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        Error::Internal(why) => Error::Internal(why.clone()),
        other => Error::Store(other.to_string()),
    }
}

thread_local! {
    /// The statistics of the store whose thread this is.
    static STORE_STATS: std::cell::RefCell<Option<Arc<Mutex<StoreStats>>>> =
        const { std::cell::RefCell::new(None) };
}

/// Makes a panic on this (store) thread count in `stats` as a failed session, with its
/// message, before unwinding starts: the callers whose reply senders the unwind drops then
/// find the reason when they look (see `Store::wait`).
fn note_panics_in(stats: Arc<Mutex<StoreStats>>) {
    static HOOK: std::sync::Once = std::sync::Once::new();
    STORE_STATS.with(|s| *s.borrow_mut() = Some(stats));
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            STORE_STATS.with(|s| {
                if let Some(stats) = s.borrow().as_ref() {
                    let mut stats = stats.lock().unwrap_or_else(|p| p.into_inner());
                    stats.session_failures += 1;
                    let place = info
                        .location()
                        .map(|l| format!(" (at {}:{})", l.file(), l.line()))
                        .unwrap_or_default();
                    stats.last_failure = Some(format!("{}{place}", panic_message(info.payload())));
                }
            });
            previous(info)
        }));
    });
}

/// The replies to a batch whose commit failed.
fn fail_decided(decided: Vec<Decided>, e: &Error) -> Vec<Reply> {
    decided
        .into_iter()
        .map(|d| match d {
            Decided::Apply(r, _) => Reply::Apply(r, Err(clone_err(e))),
            Decided::Refresh(r) => Reply::Refresh(r, Err(clone_err(e))),
        })
        .collect()
}

/// The text of a caught panic.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// The store's state as the core's batch decisions read it.
impl batch::Volumes for imbl::OrdMap<String, VolumeRecord> {
    fn get(&self, name: &str) -> Option<&VolumeRecord> {
        imbl::OrdMap::get(self, name)
    }
    fn records(&self) -> Box<dyn Iterator<Item = &VolumeRecord> + '_> {
        Box::new(self.values())
    }
}

/// Logs what the batch noted while it was decided.
fn log_note(note: &Note) {
    match note {
        Note::RemovedWithStaleMounts { volume, stale } => {
            tracing::warn!(volume = %volume, stale = ?stale, "removing a volume with mounts of incarnations that are gone")
        }
        Note::NewerFormatNotReconciled { volume, format } => {
            tracing::warn!(volume = %volume, format, "not reconciling a record of a newer format")
        }
        Note::TakenOverWhileAway { volume } => {
            tracing::warn!(volume = %volume, "another node took this exclusive volume over while this node was away; dropping this node's claim")
        }
    }
}

/// Logs what a commit decided about an exclusive volume (see [`Event`]).
fn log_event(event: Event, commit: u64) {
    match event {
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
