//! The volume operations both APIs share: create, remove, mount, unmount, get, list.
//!
//! The store records what the cluster knows; this module adds what only this node does:
//! the bind mounts. Mount and Unmount of one volume are serialized on this node (a
//! per-volume lock) so that the decision to bind or unbind always matches the count just
//! committed. Each operation runs to completion in its own task even if the caller stops
//! waiting, so a timed-out call never leaves a count without its bind mount (a Mount that
//! finishes past its caller's deadline takes itself back; an Unmount that cannot be
//! committed is recorded, see [`crate::host::pending`]).
//!
//! The shapes the APIs show are in `views`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::OwnedMutexGuard;

use crate::core::error::{Error, Result};

mod backups;
mod copies;
mod doctor;
mod snapshots;
pub use backups::{BackupJobView, BackupView};
pub use copies::CopyView;
mod views;
use crate::cluster::node::Nodes;
use crate::cluster::store::{Created, Mounted, Reconciled, Removed, Store, Unmounted};
use crate::core::liveness::{Liveness, NodeView};
use crate::core::names::{validate_mount_id, validate_name};
pub use crate::core::timing::{wait_for_holder, HolderWait, RELEASE_GRACE};
use crate::core::volume::{format_size, human_bytes, VolumeOptions, VolumeRecord};
use crate::export::health::{Health, HealthReport};
use crate::export::layout::{disk_usage, NodeLayout, SharedLayout, Usage};
use crate::export::mounts::{self, Bind};
use crate::host::pending::{PendingUnmount, PendingUnmounts};
use crate::runtime::metrics::Metrics;
pub use doctor::{DoctorReport, Finding};
pub use snapshots::{CopyProgress, SnapshotView};
pub use views::{Info, NodeInfo, NodeMounts, UsageView, VolumeView};

/// How long a usage figure is reused (dockerd sends a Get before every Mount and Unmount).
const USAGE_TTL: Duration = Duration::from_secs(5);
/// Time budget for measuring one volume's usage during a Get.
const USAGE_BUDGET: Duration = Duration::from_millis(200);
/// An answer must be ready this long before the call's deadline to count as delivered.
const ANSWER_MARGIN: Duration = Duration::from_millis(250);

/// The volumes bind-mounted on this node, and a version that changes with them.
#[derive(Debug, Default)]
struct BoundHere {
    names: BTreeSet<String>,
    version: u64,
}

impl BoundHere {
    fn insert(&mut self, name: &str) {
        self.names.insert(name.to_string());
        self.version += 1;
    }

    fn remove(&mut self, name: &str) {
        self.names.remove(name);
        self.version += 1;
    }

    fn replace(&mut self, names: BTreeSet<String>) {
        self.names = names;
        self.version += 1;
    }
}

/// The node's volume service.
pub struct Service {
    node: String,
    /// The daemon's counters of events (`GET /metrics`).
    metrics: Arc<Metrics>,
    store: Store,
    local: NodeLayout,
    /// Volumes bind-mounted on this node.
    bound: Mutex<BoundHere>,
    locks: VolumeLocks,
    usage: Mutex<HashMap<String, (Instant, Usage)>>,
    /// Volumes whose usage is being measured in the background now (one walk each).
    usage_measuring: Mutex<std::collections::HashSet<String>>,
    fs_timeout: Duration,
    started: Instant,
    nodes: Arc<Nodes>,
    health: Arc<Health>,
    /// The last List answer rendered, with the state (its serial) and the version of
    /// `bound` it shows (see [`Service::list_rendered`]).
    list_answer: Mutex<Option<((u64, u64), Bytes)>>,
    /// Unmounts not yet committed (see [`crate::host::pending`]).
    pending: PendingUnmounts,
    /// Snapshots this node is copying now, by (volume, snapshot).
    snapshot_copies: snapshots::SnapshotCopies,
    /// Copies (snapshots, restores, clones) run at once, at most: each holds up to two
    /// descriptors per folder level, beside the ones the store and the heartbeat need.
    copy_slots: Arc<tokio::sync::Semaphore>,
    /// Copies into new volumes (restores, clones) begun on this node, by volume name.
    copy_jobs: copies::CopyJobs,
    /// Backups, verifications and deletions begun on this node, by job name.
    backup_jobs: backups::BackupJobs,
    /// Why snapshots begun here failed, for whoever polls them.
    snapshot_failures: Mutex<HashMap<(String, String), String>>,
    /// The export's reconnect count when the bind mounts were last checked after one.
    seen_reconnects: std::sync::atomic::AtomicU64,
    /// The local dockerd's socket, if known: asked which container holds an exclusive
    /// volume, for a refusal that names it.
    docker_socket: std::sync::OnceLock<PathBuf>,
    /// This service, for the background work it starts.
    me: std::sync::Weak<Service>,
}

impl Service {
    /// Builds the service and reconciles this node's recorded mounts with the bind mounts
    /// really present (after a restart, mounts still used by containers stay counted).
    pub async fn start(
        node: String,
        store: Store,
        local: NodeLayout,
        fs_timeout: Duration,
        nodes: Arc<Nodes>,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Service>> {
        let pending = PendingUnmounts::load(local.pending_unmounts_file());
        let svc = Arc::new_cyclic(|me| Service {
            me: me.clone(),
            docker_socket: std::sync::OnceLock::new(),
            pending,
            node,
            metrics,
            store,
            local,
            bound: Mutex::new(BoundHere::default()),
            locks: VolumeLocks::default(),
            usage: Mutex::new(HashMap::new()),
            usage_measuring: Mutex::new(std::collections::HashSet::new()),
            fs_timeout,
            started: Instant::now(),
            nodes,
            health,
            list_answer: Mutex::new(None),
            snapshot_copies: Default::default(),
            copy_jobs: Default::default(),
            backup_jobs: Default::default(),
            copy_slots: Arc::new(tokio::sync::Semaphore::new(2)),
            snapshot_failures: Mutex::new(HashMap::new()),
            seen_reconnects: std::sync::atomic::AtomicU64::new(0),
        });
        svc.replay_pending().await;
        svc.reconcile().await?;
        // In the background: deleting large leftovers must not delay serving.
        let cleaner = svc.clone();
        tokio::spawn(async move {
            cleaner.clean_interrupted_snapshots().await;
            cleaner.clean_interrupted_copies().await;
        });
        Ok(svc)
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn shared(&self) -> &SharedLayout {
        self.store.layout()
    }

    async fn reconcile(&self) -> Result<()> {
        let dir = self.local.mounts_dir();
        let present = self
            .blocking("reading mountinfo", move || mounts::mounted_below(&dir))
            .await?;
        let Reconciled { dropped, kept } =
            self.store.reconcile(&self.node, present.clone()).await?;
        for (name, count) in &dropped {
            tracing::warn!(volume = %name, count, "dropped mount records of this node: the bind mount is gone (host rebooted?)");
        }
        for name in present.iter().filter(|n| !kept.contains(n)) {
            tracing::warn!(volume = %name, "unmounting a bind mount that no record accounts for");
            let target = self.local.mountpoint(name);
            if let Err(e) = self
                .blocking("unmounting", move || mounts::unbind(&target))
                .await
            {
                tracing::error!(volume = %name, "{e}");
            }
        }
        self.bound_here().replace(kept.iter().cloned().collect());
        // A kept bind mount made from a connection of the export that is gone (the client
        // died or the export was mounted again while the daemon was down) is mounted again
        // from the live export: it is never kept as in use as it is.
        let mut live = Vec::new();
        for name in kept {
            let _guard = self.locks.lock(&name).await;
            match self.bind_live(&name).await {
                Ok(None) => live.push(name),
                Ok(Some(_)) => {}
                Err(e) => {
                    tracing::error!(volume = %name, "this node's bind mount of the volume does not reach the live export, and mounting it again failed: {e}; the next Mount tries again")
                }
            }
        }
        if !live.is_empty() {
            tracing::info!(volumes = ?live, "kept mounts still in use on this node");
        }
        Ok(())
    }

    /// Creates a volume, or finds it already there with the same options (Create is
    /// idempotent); the flag says which.
    pub async fn create(&self, name: &str, options: VolumeOptions) -> Result<(VolumeView, bool)> {
        validate_name(name)?;
        if options.source().is_some() {
            return self.create_copy(name, options).await;
        }
        let Created {
            record,
            existed,
            adopted,
        } = self.store.create(name, options, &self.node).await?;
        if adopted {
            tracing::info!(volume = %name, "adopted existing data on the export");
        }
        if existed {
            tracing::debug!(volume = %name, "create of an existing volume: nothing to do");
        }
        if !existed && !adopted {
            // A new volume is empty: its usage is known without a walk.
            let empty = Usage {
                bytes: 0,
                files: 0,
                complete: true,
            };
            self.usage
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(name.to_string(), (Instant::now(), empty));
        }
        Ok((self.view(&record, None), existed))
    }

    pub async fn remove(&self, name: &str) -> Result<()> {
        validate_name(name)?;
        let _guard = self.locks.lock(name).await;
        let Removed { record, moved_to } = self.store.remove(name).await?;
        tracing::info!(volume = %name, on_delete = record.options.on_delete.as_str(), moved_to = ?moved_to, "removed");
        // Not counted as mounted anywhere, so this node holds no bind mount; clear a
        // leftover one all the same.
        if self.is_bound(name) {
            self.unbind(name).await?;
        }
        self.forget_usage(name);
        Ok(())
    }

    fn forget_usage(&self, name: &str) {
        self.usage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    /// Counts a mount of (this node, `id`) and returns the mountpoint, bind-mounting it on
    /// the node's first mount (or again, when the bind mount there does not reach the
    /// volume's folder on the live export: see [`Service::bind_live`]). A mount that could not be answered before the call's deadline (see
    /// [`crate::runtime::deadline`]) is taken back: dockerd saw it fail and will never unmount it.
    pub async fn mount(&self, name: &str, id: &str) -> Result<PathBuf> {
        validate_name(name)?;
        validate_mount_id(id)?;
        // Held to the end of the call; let go only while the claim waits (see there).
        let mut guard = Some(self.locks.lock(name).await);
        let late = || Error::Timeout {
            what: format!("mounting volume {name}"),
            after: self.fs_timeout * 2,
        };
        if !crate::runtime::deadline::answerable(ANSWER_MARGIN) {
            // Queued behind other calls past the caller's patience: never start.
            return Err(late());
        }
        let claimed = match self
            .claim_waiting_for_the_holder(name, id, &mut guard)
            .await
        {
            Ok(mounted) => mounted,
            Err(e) => {
                // Unless the store decided against it, the mount may have been committed all
                // the same (a timeout while it was being committed, a hold that failed after
                // writing). dockerd saw a failure and will never unmount this ID: queue the
                // unmount that takes it back (an unknown ID is a no-op).
                // (A stalled export refuses before queueing: nothing was committed then.)
                if uncertain(&e) && !matches!(e, Error::ExportStalled { .. }) {
                    self.take_back_later(name, id);
                }
                return Err(self.name_the_container(e).await);
            }
        };
        // Under the volume's lock, before the retry task can take it: see
        // PendingUnmounts::cancel_take_backs.
        self.pending.cancel_take_backs(name, id);
        self.forget_usage(name);
        if let Err(e) = self.bind_live(name).await {
            // Take the count back so the cluster does not believe this node uses it.
            self.take_back(name, id).await;
            return Err(e);
        }
        // Before the container can write: the fence keeper must know the volume. (The
        // record as the claim committed it: no second read of the store.)
        if let Some(lease) = self.nodes.lease() {
            if claimed.record.options.access == crate::core::volume::Access::Exclusive {
                lease.set_volume(name, Some(&self.local.mountpoint(name)));
                lease.publish().await;
            }
        }
        if !crate::runtime::deadline::answerable(ANSWER_MARGIN) {
            tracing::warn!(volume = %name, id, "the mount finished after its caller's deadline; taking it back");
            self.take_back(name, id).await;
            return Err(late());
        }
        Ok(self.local.mountpoint(name))
    }

    /// Tells the service where the local dockerd listens.
    pub fn set_docker_socket(&self, socket: PathBuf) {
        let _ = self.docker_socket.set(socket);
    }

    /// A refusal because another container has an exclusive volume mounted on this node,
    /// with that container's name when the local dockerd says which one it is (within a
    /// second; without it, the refusal names the mount ID only).
    async fn name_the_container(&self, e: Error) -> Error {
        let Error::ExclusiveInUse {
            name,
            node,
            id,
            container: None,
        } = e
        else {
            return e;
        };
        let container = match self.docker_socket.get() {
            Some(socket) if node == self.node => {
                crate::host::dockerd::containers_using(socket, &name, Duration::from_secs(1))
                    .await
                    .filter(|names| !names.is_empty())
                    .map(|names| names.join(", "))
            }
            _ => None,
        };
        Error::ExclusiveInUse {
            name,
            node,
            id,
            container,
        }
    }

    /// Makes this node's bind mount of `name` reach the volume's folder on the export as
    /// the configured root reaches it now, under the caller's hold of the volume's lock:
    /// one there is checked (device and inode, see [`mounts::check_bind`]) and, when it
    /// does not (unmounted by hand, or made from a connection of the export that is gone or
    /// was replaced), mounted again. The mountpoint is then answered only when it reaches
    /// the live export. Containers that use the old mount keep it (their mount namespace
    /// holds a copy the daemon cannot change): the log says so, and to restart them.
    ///
    /// `Some(why)` when a bind mount there was mounted again, and why.
    async fn bind_live(&self, name: &str) -> Result<Option<String>> {
        let was_bound = self.is_bound(name);
        let (shared, volume) = (self.shared().clone(), name.to_string());
        let target = self.local.mountpoint(name);
        let t = target.clone();
        let outcome = self
            .blocking("bind-mounting", move || {
                let folder = shared.open_data_dir(&volume)?;
                let source = shared.data_dir(&volume);
                let found = match was_bound {
                    true => mounts::check_bind(&t, &folder)?,
                    false => Bind::Vanished,
                };
                match &found {
                    Bind::Live => return Ok(found),
                    Bind::Vanished => {}
                    Bind::Stale(_) => mounts::unbind(&t)?,
                }
                mounts::bind(&folder, &source, &t)?;
                Ok(found)
            })
            .await;
        let found = match outcome {
            Ok(found) => found,
            Err(e) => {
                if was_bound {
                    // Whether the old mount is still there or not, it is not this node's
                    // bind mount of the live export.
                    self.bound_here().remove(name);
                }
                return Err(e);
            }
        };
        let stale = match found {
            Bind::Live => None,
            Bind::Vanished if was_bound => {
                tracing::warn!(volume = %name, mountpoint = %target.display(), "the bind mount vanished behind the daemon's back (unmounted by hand?); mounted it again");
                None
            }
            Bind::Vanished => None,
            Bind::Stale(why) => {
                tracing::warn!(volume = %name, mountpoint = %target.display(), "this node's bind mount of the volume did not reach the live export: {why}; mounted it again from the export as mounted now. Containers started before keep the mount they have (the kernel gives them no other): restart them to reach the volume again");
                Some(why)
            }
        };
        if !was_bound {
            self.bound_here().insert(name);
        }
        Ok(stale)
    }

    /// After this node came back to the export (see [`crate::export::connection`]): every bind mount of
    /// this node is checked, and mounted again from the live export where it does not
    /// reach it, so that the mountpoints reach the data again without waiting for the next
    /// Mount. Runs every heartbeat interval; does nothing while no reconnect happened.
    pub async fn follow_reconnects(&self) {
        let now = self.shared().export().reconnects();
        let seen = self
            .seen_reconnects
            .swap(now, std::sync::atomic::Ordering::SeqCst);
        if now == seen {
            return;
        }
        let bound: Vec<String> = self.bound_here().names.iter().cloned().collect();
        for name in bound {
            let _guard = self.locks.lock(&name).await;
            if !self.is_bound(&name) {
                continue;
            }
            if let Err(e) = self.bind_live(&name).await {
                tracing::error!(volume = %name, "checking the bind mount after a reconnect to the export: {e}");
                // Checked again after the next reconnect, or by the next Mount.
                self.seen_reconnects
                    .store(seen, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }

    /// The store's Mount, waiting a little when an exclusive volume is refused because its
    /// holder is alive (see [`wait_for_holder`]): for a release that may be on its way (a
    /// task Swarm moves), or for a holder that has stopped beating (its host died a moment
    /// ago, as when Swarm reschedules the task of a lost node) to be declared dead, when
    /// that can happen before the call must be answered. Then the volume is taken over.
    ///
    /// The volume's lock (`guard`) is let go while waiting: the container this Mount waits
    /// for may be on this node, and its Unmount needs the lock (a stop-first update on one
    /// node sends the new task's Mount a moment before the old one's Unmount). Nothing has
    /// been done here for this Mount until the claim succeeds, so nothing is exposed.
    async fn claim_waiting_for_the_holder(
        &self,
        name: &str,
        id: &str,
        guard: &mut Option<OwnedMutexGuard<()>>,
    ) -> Result<Mounted> {
        let start = Instant::now();
        let mut told = false;
        loop {
            let e = match self.store.mount(name, &self.node, id).await {
                Ok(mounted) => return Ok(mounted),
                Err(e) => e,
            };
            // Another container of this volume (on any node, the holder beating) may be
            // on its way out, as the old task of a stop-first update is: it gets the same
            // grace as a release.
            let (holder, silent, dead_in) = match &e {
                Error::ExclusiveHeld {
                    holder,
                    dead_in: Some(dead_in),
                    ..
                } => (
                    holder.clone(),
                    self.nodes.takeover_after().saturating_sub(*dead_in),
                    *dead_in,
                ),
                Error::ExclusiveInUse {
                    node, id: other, ..
                } => {
                    if !told {
                        told = true;
                        tracing::info!(volume = %name, node = %node, mount_id = %other, grace_secs = RELEASE_GRACE.as_secs_f64(), "another container has this exclusive volume mounted: waiting for it to unmount (as the old task of a stop-first update does) before refusing");
                    }
                    (node.clone(), Duration::ZERO, self.nodes.takeover_after())
                }
                _ => return Err(e),
            };
            let left = crate::runtime::deadline::remaining(self.nodes.dead_after() * 2);
            let waited = start.elapsed();
            let wait = match wait_for_holder(silent, dead_in, self.nodes.interval(), left, waited) {
                None => return Err(e),
                Some(HolderWait::ForRelease(wait)) => wait,
                Some(HolderWait::ForDeath(wait)) => {
                    tracing::info!(volume = %name, holder = %holder, silent_secs = silent.as_secs_f64(), wait_secs = wait.as_secs_f64(), "the holder of this exclusive volume has stopped beating: waiting for it to be declared dead, to take the volume over");
                    wait
                }
            };
            // Let go of the volume's lock while waiting (see above), and take it again.
            drop(guard.take());
            tokio::time::sleep(wait).await;
            *guard = Some(self.locks.lock(name).await);
        }
    }

    /// Takes back a mount of (this node, `id`) that its caller never saw succeed: the
    /// count, and the bind mount if it was this node's last. With a time budget of its own
    /// (the call's is spent by now), under the caller's hold of the volume lock.
    async fn take_back(&self, name: &str, id: &str) {
        let budget = std::time::Instant::now() + self.fs_timeout * 2;
        crate::runtime::deadline::within(budget, self.take_back_now(name, id)).await
    }

    async fn take_back_now(&self, name: &str, id: &str) {
        let last = match self.store.unmount(name, &self.node, id).await {
            Ok(Unmounted {
                record: Some(r), ..
            }) => r.node_mount_count(&self.node) == 0,
            Ok(Unmounted { record: None, .. }) => true,
            Err(u) => {
                tracing::error!(volume = %name, "could not take back the mount record: {u}; retrying in the background");
                self.take_back_later(name, id);
                return;
            }
        };
        // The mount table decides, not the in-memory set: a bind that timed out may have
        // finished after all.
        if last && (self.is_bound(name) || self.really_mounted(name).await) {
            if let Err(e) = self.unbind(name).await {
                tracing::error!(volume = %name, "taking back a mount: {e}");
            }
        }
    }

    /// Whether this node's mountpoint of `name` is a mount point now (per mountinfo); a
    /// mount table that cannot be read counts as not mounted.
    async fn really_mounted(&self, name: &str) -> bool {
        self.mounted_now(name).await.unwrap_or(false)
    }

    /// Whether this node's mountpoint of `name` is a mount point now, per mountinfo.
    async fn mounted_now(&self, name: &str) -> Result<bool> {
        let target = self.local.mountpoint(name);
        self.blocking("reading mountinfo", move || {
            Ok(mounts::mount_table()?
                .iter()
                .any(|m| m.mount_point == target))
        })
        .await
    }

    /// Takes back a mount of (this node, `id`) whose outcome is uncertain, as a recorded
    /// unmount (see [`crate::host::pending`]): retried until the export answers, replayed after
    /// a restart, and unbinding if it was this node's last mount. An unknown ID is a no-op.
    fn take_back_later(&self, name: &str, id: &str) {
        let p = PendingUnmount {
            name: name.to_string(),
            id: id.to_string(),
            take_back: true,
        };
        if let Err(e) = self.pending.add(p.clone()) {
            tracing::error!(volume = %name, id, "could not record the take-back of a mount: {e}");
        }
        self.retry_pending(p);
    }

    /// Counts an unmount of (this node, `id`); unmounts the bind mount after the node's
    /// last. An unknown ID succeeds (dockerd may repeat an Unmount after its own crash).
    /// One that cannot be committed now (the export stalled or unreachable) fails, and is
    /// recorded on this node and applied as soon as the export answers, also after a
    /// restart: dockerd never sends it again.
    pub async fn unmount(&self, name: &str, id: &str) -> Result<()> {
        validate_name(name)?;
        validate_mount_id(id)?;
        let _guard = self.locks.lock(name).await;
        match self.unmount_locked(name, id).await {
            Err(e) if uncertain(&e) => {
                let p = PendingUnmount {
                    name: name.to_string(),
                    id: id.to_string(),
                    take_back: false,
                };
                if let Err(w) = self.pending.add(p.clone()) {
                    tracing::error!(volume = %name, id, "could not record the unmount: {w}");
                    return Err(e);
                }
                self.retry_pending(p);
                Err(Error::Busy(format!(
                    "{e}; this unmount is recorded in {} and will be applied as soon as the export answers (also after a restart of the daemon)",
                    self.pending.file().display()
                )))
            }
            r => r,
        }
    }

    /// The unmount itself, under the volume's lock.
    async fn unmount_locked(&self, name: &str, id: &str) -> Result<()> {
        // With a time budget of its own: an Unmount that waited for the volume's lock past
        // its call's deadline must still finish its work (dockerd never sends it again).
        let budget = Instant::now() + self.fs_timeout * 2;
        crate::runtime::deadline::within(budget, self.unmount_now(name, id)).await
    }

    async fn unmount_now(&self, name: &str, id: &str) -> Result<()> {
        let Unmounted { record, node_count } = self.store.unmount(name, &self.node, id).await?;
        if node_count.is_none() {
            tracing::info!(volume = %name, id, "unmount for an ID this node does not hold: nothing to do");
        }
        // A container just stopped writing: the next Get measures again.
        self.forget_usage(name);
        let remaining = record
            .as_ref()
            .map(|r| r.node_mount_count(&self.node))
            .unwrap_or(0);
        if remaining == 0 && self.is_bound(name) {
            self.unbind(name).await?;
        }
        if record.is_none() {
            return Err(Error::NoSuchVolume(name.to_string()));
        }
        Ok(())
    }

    /// At start, before reconciling: the unmounts recorded by an earlier run.
    async fn replay_pending(&self) {
        for p in self.pending.list() {
            match self.unmount_locked(&p.name, &p.id).await {
                Ok(()) => {
                    tracing::info!(volume = %p.name, id = %p.id, "applied an unmount recorded before the restart");
                    self.pending.remove(&p);
                }
                Err(e) if uncertain(&e) => self.retry_pending(p),
                Err(e) => {
                    tracing::warn!(volume = %p.name, id = %p.id, "dropping a recorded unmount: {e}");
                    self.pending.remove(&p);
                }
            }
        }
    }

    /// Retries a recorded unmount in the background until the export answers.
    fn retry_pending(&self, p: PendingUnmount) {
        let Some(svc) = self.me.upgrade() else { return };
        tokio::spawn(async move {
            let mut wait = Duration::from_millis(500);
            loop {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
                let _guard = svc.locks.lock(&p.name).await;
                if !svc.pending.contains(&p) {
                    return;
                }
                match svc.unmount_locked(&p.name, &p.id).await {
                    Ok(()) => {
                        tracing::info!(volume = %p.name, id = %p.id, "applied a recorded unmount");
                        svc.pending.remove(&p);
                        return;
                    }
                    Err(e) if uncertain(&e) => {
                        tracing::debug!("recorded unmount still waiting: {e}")
                    }
                    Err(e) => {
                        tracing::warn!(volume = %p.name, id = %p.id, "dropping a recorded unmount: {e}");
                        svc.pending.remove(&p);
                        return;
                    }
                }
            }
        });
    }

    /// Makes this node the holder of an exclusive volume. Without `force` it waits (within
    /// the call's time) for the holder to be declared dead; with `force` it takes the
    /// volume from a live holder, which drops its claim when it notices.
    pub async fn takeover(&self, name: &str, force: bool) -> Result<VolumeView> {
        validate_name(name)?;
        let deadline = Instant::now() + self.nodes.takeover_after() + self.nodes.interval() * 3;
        loop {
            // The volume's lock only for each attempt, not across the wait: Mounts and
            // Unmounts of it on this node go on meanwhile.
            let attempt = {
                let _guard = self.locks.lock(name).await;
                self.store.takeover(name, &self.node, force).await
            };
            match attempt {
                Ok(record) => return Ok(self.view(&record, None)),
                Err(Error::ExclusiveHeld { .. }) if !force && Instant::now() < deadline => {
                    tokio::time::sleep(self.nodes.interval()).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Fencing: an exclusive volume this node still has bind-mounted but that another node
    /// now holds (it was taken over while this node was away) is unmounted here, so this
    /// node's containers stop reaching data that is no longer theirs to write. Their later
    /// Unmount calls succeed (unknown IDs). Runs every heartbeat interval, apart from the
    /// heartbeat itself; after this node could not beat for `dead_after` (see
    /// [`Nodes::may_hold`]) it is also the re-validation that lets it hold again.
    pub async fn fence(&self) {
        let epoch = self.nodes.revalidation_needed();
        let beating = self
            .nodes
            .self_report()
            .last_beat_secs
            .is_some_and(|s| Duration::from_secs_f64(s) < self.nodes.dead_after());
        if epoch.is_some() && !beating {
            // Still unable to beat: re-validate once the export answers again.
            return;
        }
        // One fresh look (the generation check reloads if anyone committed) finds the
        // candidates; each is checked again under its volume's lock, so that a Mount or
        // Unmount of it half done meanwhile is never undone by a stale decision.
        let candidates: Vec<String> = {
            let Ok(snap) = self.store.snapshot().await else {
                return;
            };
            let bound = self.bound_here().names.clone();
            bound
                .into_iter()
                .filter(|name| lost_here(snap.volumes.get(name), &self.node).is_some())
                .collect()
        };
        let mut all_dropped = true;
        for name in candidates {
            let _guard = self.locks.lock(&name).await;
            if !self.is_bound(&name) {
                continue;
            }
            let lost = {
                let Ok(snap) = self.store.snapshot().await else {
                    return;
                };
                lost_here(snap.volumes.get(&name), &self.node)
            };
            let Some(why) = lost else { continue };
            tracing::warn!(volume = %name, "{why}; stopping the containers that use it here, and unmounting it");
            // Unmounting this node's mountpoint leaves the containers' own bind mounts:
            // their processes are stopped first (see crate::host::fence).
            self.stop_local_users(&name).await;
            if let Err(e) = self.unbind(&name).await {
                tracing::error!(volume = %name, "fencing: {e}");
                all_dropped = false;
            }
        }
        if let (Some(epoch), true) = (epoch, all_dropped) {
            let held = self.sync_lease().await;
            self.nodes.revalidated(epoch, &held);
        } else {
            self.sync_lease().await;
        }
    }

    fn fencing_report(&self) -> crate::host::fence::FencingReport {
        let Some(lease) = self.nodes.lease() else {
            return crate::host::fence::FencingReport::default();
        };
        let fences = lease.fences();
        let (wait, from) = self.nodes.fence_wait_from();
        crate::host::fence::FencingReport {
            lease_secs: lease.term().as_secs_f64(),
            fence_wait_secs: wait.as_secs_f64(),
            fence_wait_from: from,
            keeper_running: crate::host::fence::keeper_running(&self.local.state_dir)
                .unwrap_or(false),
            volumes: lease.volumes(),
            fences: fences.count,
            last_fence: fences.last,
        }
    }

    /// Kills the processes of this host that reach `name` through a mount of their own
    /// (containers), see [`crate::host::fence::stop_users`].
    async fn stop_local_users(&self, name: &str) {
        let volumes =
            std::collections::BTreeMap::from([(name.to_string(), self.local.mountpoint(name))]);
        let killed =
            crate::runtime::deadline::unbounded("stopping the users of a lost volume", move || {
                crate::host::fence::stop_users(&volumes)
            })
            .await
            .unwrap_or_default();
        if !killed.is_empty() {
            tracing::warn!(volume = %name, killed = %killed.join(", "), "stopped the processes that still used a lost exclusive volume");
        }
    }

    /// Brings the lease's list of exclusive volumes bound here up to date (see
    /// [`crate::host::fence`]); returns it.
    async fn sync_lease(&self) -> Vec<String> {
        let Some(lease) = self.nodes.lease() else {
            return Vec::new();
        };
        if let Some(report) = lease.take_report() {
            self.metrics.fenced(report.killed.len());
        }
        let Ok(snap) = self.store.snapshot().await else {
            return lease.volumes();
        };
        let bound = self.bound_here().names.clone();
        let exclusive: Vec<String> = bound
            .into_iter()
            .filter(|n| {
                snap.volumes
                    .get(n)
                    .is_some_and(|r| r.options.access == crate::core::volume::Access::Exclusive)
            })
            .collect();
        for old in lease.volumes() {
            if !exclusive.contains(&old) {
                lease.set_volume(&old, None);
            }
        }
        for name in &exclusive {
            lease.set_volume(name, Some(&self.local.mountpoint(name)));
        }
        lease.publish().await;
        exclusive
    }

    /// The mountpoint, if the volume is mounted on this node.
    pub async fn path(&self, name: &str) -> Result<PathBuf> {
        validate_name(name)?;
        let snap = self.store.read().await?.snapshot;
        if !snap.volumes.contains_key(name) {
            return Err(Error::NoSuchVolume(name.to_string()));
        }
        drop(snap);
        if self.is_bound(name) {
            Ok(self.local.mountpoint(name))
        } else {
            Err(Error::NotMounted(name.to_string()))
        }
    }

    /// One volume as the store has it now, with the last usage figure measured here
    /// (Docker's Get: it never waits for a usage walk).
    pub async fn get(&self, name: &str) -> Result<VolumeView> {
        validate_name(name)?;
        let (record, stale) = {
            let read = self.store.read().await?;
            let mut snapshot = read.snapshot;
            // dockerd forgets a volume it is told is gone: never on the strength of a
            // change-journal entry alone (see store::Snapshot::unconfirmed_since).
            if read.stale.is_none() && snapshot.removed_by_journal(name) {
                snapshot = self.store.confirm().await?;
            }
            let record = snapshot
                .volumes
                .get(name)
                .cloned()
                .ok_or_else(|| Error::NoSuchVolume(name.to_string()))?;
            (record, read.stale)
        };
        if let Some(why) = &stale {
            tracing::warn!(volume = %name, "answering from the last known metadata: {why}");
            let mut view = self.view(&record, None);
            view.stale = true;
            return Ok(view);
        }
        Ok(self.view(&record, self.usage_known(name)))
    }

    /// A volume with its usage measured now (within the usage budget): `caravan inspect`,
    /// whose user asked for that figure. Docker's Get is [`Service::get`].
    pub async fn inspect(&self, name: &str) -> Result<VolumeView> {
        validate_name(name)?;
        // Measured first (bounded by its budget; nothing when the export stalls), then
        // the volume as Get answers it, with that figure.
        self.usage_of(name).await;
        self.get(name).await
    }

    /// Every volume (without usage, which would cost a walk of every volume).
    pub async fn list(&self) -> Result<Vec<VolumeView>> {
        let read = self.store.read().await?;
        let stale = read.stale.is_some();
        Ok(read
            .snapshot
            .volumes
            .values()
            .map(|r| VolumeView {
                stale,
                ..self.view(r, None)
            })
            .collect())
    }

    /// Docker's List answer, rendered by `render` from every volume's name and mountpoint
    /// at most once per generation. With 10 000 volumes rendering takes milliseconds of
    /// CPU on the async threads, and dockerd asks List for every `docker volume ls`; 64
    /// callers at once each rendering their own copy starved the heartbeat.
    pub async fn list_rendered(
        &self,
        render: impl FnOnce(&mut dyn Iterator<Item = (&str, String)>) -> Bytes,
    ) -> Result<Bytes> {
        let read = self.store.read().await?;
        if let Some(why) = &read.stale {
            tracing::warn!("List answered from the last known metadata: {why}");
        }
        let bound = self.bound_here();
        let key = (read.snapshot.serial(), bound.version);
        let mut memo = self.list_answer.lock().unwrap_or_else(|p| p.into_inner());
        match &*memo {
            Some((k, answer)) if *k == key => Ok(answer.clone()),
            _ => {
                let mut names = read
                    .snapshot
                    .volumes
                    .keys()
                    .map(|n| (n.as_str(), self.shown_mountpoint(n, &bound)));
                let answer = render(&mut names);
                *memo = Some((key, answer.clone()));
                Ok(answer)
            }
        }
    }

    /// Whether the export answers; computed from memory only, so it answers even when
    /// the export does not.
    pub fn health(&self) -> HealthReport {
        self.health.report()
    }

    pub async fn info(&self) -> Result<Info> {
        let mut info = {
            let read = self.store.read().await?;
            let (snap, stale) = (read.snapshot, read.stale);
            // Counts another machine may have written: summed without wrapping.
            let mounts_total = snap
                .volumes
                .values()
                .flat_map(|r| r.mounts.values())
                .flat_map(|ids| ids.values())
                .fold(0u32, |a, n| a.saturating_add(*n));
            let mounts_here = snap
                .volumes
                .values()
                .map(|r| r.node_mount_count(&self.node))
                .fold(0u32, u32::saturating_add);
            Info {
                version: env!("CARGO_PKG_VERSION").to_string(),
                node: self.node.clone(),
                root: self.shared().root.display().to_string(),
                state_dir: self.local.state_dir.display().to_string(),
                volumes: snap.volumes.len(),
                mounted_here: self.bound_here().names.len(),
                mounts_here,
                mounts_total,
                generation: snap.generation,
                uptime_secs: self.started.elapsed().as_secs(),
                store: self.store.stats(),
                stale,
                health: self.health.report(),
                standing: self.nodes.self_report(),
                connection: self.shared().export().report(),
                fencing: self.fencing_report(),
                skipped_records: snap
                    .unreadable
                    .iter()
                    .map(|(k, why)| (crate::core::error::shown(k), why.clone()))
                    .collect(),
            }
        };
        if info.stale.is_none() {
            // A fresh read may come from the cache: check that the metadata folders are
            // still there (deleted by hand, the next mutation would fail), so that info
            // never calls such an export healthy.
            let shared = self.shared().clone();
            if let Err(e) = self
                .blocking("checking the metadata folders", move || {
                    shared.pinned().map(drop)
                })
                .await
            {
                info.stale = Some(e.to_string());
            }
        }
        Ok(info)
    }

    /// Every node this node knows of, with its state and mounts.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>> {
        let snap = self.store.read().await?.snapshot;
        let mut infos: Vec<NodeInfo> = self
            .nodes
            .views()
            .into_iter()
            .map(|view| NodeInfo {
                view,
                mounts: BTreeMap::new(),
            })
            .collect();
        for r in snap.volumes.values() {
            for node in r.mounts.keys() {
                let count = r.node_mount_count(node);
                match infos.iter_mut().find(|i| &i.view.node == node) {
                    Some(i) => {
                        i.mounts.insert(r.name.clone(), count);
                    }
                    // Mounts of a node that never wrote a heartbeat this node has read.
                    None => infos.push(NodeInfo {
                        view: NodeView {
                            node: node.clone(),
                            state: self.nodes.liveness(node),
                            last_seen_secs: 0.0,
                            boot_id: String::new(),
                            version: String::new(),
                            dead_in_secs: None,
                        },
                        mounts: BTreeMap::from([(r.name.clone(), count)]),
                    }),
                }
            }
        }
        infos.sort_by(|a, b| a.view.node.cmp(&b.view.node));
        Ok(infos)
    }

    fn view(&self, r: &VolumeRecord, usage: Option<Usage>) -> VolumeView {
        let (mountpoint, mounted_here) = {
            let bound = self.bound_here();
            (
                self.shown_mountpoint(&r.name, &bound),
                bound.names.contains(&r.name),
            )
        };
        VolumeView {
            name: r.name.clone(),
            mountpoint,
            mounted_here,
            created_at: r.created_at_rfc3339(),
            created_by: r.created_by.clone(),
            options: r
                .options
                .to_map()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            size: r.options.size.map(format_size),
            usage: usage.map(|u| UsageView {
                bytes: u.bytes,
                human: human_bytes(u.bytes),
                files: u.files,
                complete: u.complete,
            }),
            mounts: r
                .mounts
                .iter()
                .map(|(node, ids)| {
                    let node_state = self.nodes.liveness(node);
                    let m = NodeMounts {
                        count: ids.values().sum(),
                        ids: ids.len(),
                        node_state,
                        stale: node_state != Liveness::Alive,
                    };
                    (node.clone(), m)
                })
                .collect(),
            data: self.shared().data_dir(&r.name).display().to_string(),
            access: r.options.access.as_str().to_string(),
            holder: r.holder.clone(),
            generation: r.generation,
            takeovers: r.takeovers.clone(),
            stale: false,
        }
    }

    /// The last usage figure measured, whatever its age, at once: Docker's Get never
    /// waits for a walk of the volume. One older than `USAGE_TTL` (or none) is measured
    /// again in the background, one walk per volume at a time.
    fn usage_known(&self, name: &str) -> Option<Usage> {
        let known = self
            .usage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .copied();
        if known.is_none_or(|(at, _)| at.elapsed() >= USAGE_TTL) {
            let first = self
                .usage_measuring
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(name.to_string());
            if let (true, Some(svc)) = (first, self.me.upgrade()) {
                let name = name.to_string();
                tokio::spawn(async move {
                    // A failed walk keeps the last figure.
                    let _ = svc.measure_usage(&name).await;
                    svc.usage_measuring
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&name);
                });
            }
        }
        known.map(|(_, u)| u)
    }

    async fn usage_of(&self, name: &str) -> Option<Usage> {
        if let Some((at, u)) = self
            .usage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            if at.elapsed() < USAGE_TTL {
                return Some(*u);
            }
        }
        self.measure_usage(name).await
    }

    /// Walks the volume (within the usage budget) and keeps the figure.
    async fn measure_usage(&self, name: &str) -> Option<Usage> {
        let (shared, volume) = (self.shared().clone(), name.to_string());
        // A Get must answer even when the export does not: give up on the figure soon.
        let u = self
            .blocking_within("measuring usage", USAGE_BUDGET * 5, move || {
                Ok(disk_usage(shared.open_data_dir(&volume)?, USAGE_BUDGET))
            })
            .await
            .ok()?;
        self.usage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), (Instant::now(), u));
        Some(u)
    }

    fn bound_here(&self) -> std::sync::MutexGuard<'_, BoundHere> {
        self.bound.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_bound(&self, name: &str) -> bool {
        self.bound_here().names.contains(name)
    }

    /// Where Docker is told the volume is: its mountpoint while it is mounted on this
    /// node, nothing otherwise (the folder is then an empty directory, or absent).
    fn shown_mountpoint(&self, name: &str, bound: &BoundHere) -> String {
        if bound.names.contains(name) {
            self.local.mountpoint(name).display().to_string()
        } else {
            String::new()
        }
    }

    async fn unbind(&self, name: &str) -> Result<()> {
        let target = self.local.mountpoint(name);
        self.blocking("unmounting", move || mounts::unbind(&target))
            .await?;
        self.bound_here().remove(name);
        Ok(())
    }

    /// Runs filesystem work off the async threads, with a deadline.
    async fn blocking<T: Send + 'static>(
        &self,
        what: &str,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.blocking_within(what, self.fs_timeout, f).await
    }

    /// [`Service::blocking`] with its own deadline. The work is registered with
    /// [`Health`] until it really ends (a thread blocked on a stalled export outlives the
    /// caller's wait), and refused when too many are already stuck.
    async fn blocking_within<T: Send + 'static>(
        &self,
        what: &str,
        limit: Duration,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let ticket = self.health.begin(what)?;
        crate::runtime::deadline::blocking(what, limit, move || {
            let _ticket = ticket;
            f()
        })
        .await
    }
}

/// Whether a failed store call may succeed when tried again later (the export did not
/// answer, or the outcome is unknown), as opposed to a decision against it.
fn uncertain(e: &Error) -> bool {
    matches!(
        e,
        Error::ExportStalled { .. }
            | Error::Timeout { .. }
            | Error::Io { .. }
            | Error::WriteRefused { .. }
            | Error::ExportReplaced(_)
            | Error::Store(_)
            | Error::Internal(_)
            | Error::ShuttingDown
    )
}

/// Why this node must no longer have `record`'s volume bind-mounted, if it must not: an
/// exclusive volume another node holds, one nobody holds (this node's claim was voided
/// and the volume released since), or one that records no mount of this node.
fn lost_here(record: Option<&VolumeRecord>, node: &str) -> Option<String> {
    let r = record?;
    if r.options.access != crate::core::volume::Access::Exclusive {
        return None;
    }
    match &r.holder {
        Some(h) if h.node != node => Some(format!(
            "this node lost the exclusive volume to node {}",
            h.node
        )),
        None => Some(
            "this node's claim on the exclusive volume was voided and the volume released".into(),
        ),
        Some(_) if r.node_mount_count(node) == 0 => {
            Some("the exclusive volume records no mount of this node".into())
        }
        Some(_) => None,
    }
}

/// One async mutex per volume name, created on first use.
#[derive(Default)]
struct VolumeLocks {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl VolumeLocks {
    async fn lock(&self, name: &str) -> OwnedMutexGuard<()> {
        let m = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            if map.len() > 4096 {
                // Forget locks nobody holds or waits for.
                map.retain(|_, m| Arc::strong_count(m) > 1);
            }
            map.entry(name.to_string()).or_default().clone()
        };
        m.lock_owned().await
    }
}
