//! Is the shared export answering? Every piece of blocking work on the export (commits,
//! generation checks, heartbeats, bind mounts, usage walks) registers here while it runs.
//!
//! A stalled export (an NFS server gone, a GlusterFS brick frozen) does not fail calls: it
//! blocks them in the kernel, and the threads doing them stay blocked until it answers.
//! So this module answers three questions the rest of the daemon needs:
//!
//! - **is the export stalled?** Some operation has been waiting longer than
//!   `stall_after`. Reads (Get, List) then answer at once from the last known metadata,
//!   marked stale, and mutations fail at once with a clear error, instead of each waiting
//!   out its own timeout (dockerd waits for us; `docker volume ls` must not);
//! - **how many threads are stuck?** Callers' blocking work is capped: past the cap a new
//!   call is refused instead of parking one more thread on the export;
//! - **what to report** on `/v1/health` and in `caravan info`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::core::error::{Error, Result};
use crate::export::root::RootInfo;

/// Callers' blocking operations on the export allowed at once (store and heartbeat
/// threads are not counted: there is one of each).
pub const MAX_BLOCKING: usize = 64;

#[derive(Debug)]
pub struct Health {
    stall_after: Duration,
    next_id: AtomicU64,
    inflight: Mutex<BTreeMap<u64, Op>>,
    last_ok: Mutex<Option<Instant>>,
    last_error: Mutex<Option<(Instant, String)>>,
    root: Mutex<Option<RootInfo>>,
}

#[derive(Debug)]
struct Op {
    what: String,
    since: Instant,
    capped: bool,
}

/// A registered operation; dropping it (when the blocking work really ends, not when a
/// caller stops waiting for it) takes it off the list.
#[must_use]
pub struct Ticket {
    health: Arc<Health>,
    id: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.health
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// What `GET /v1/health` answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HealthReport {
    /// The root's filesystem, as checked at start.
    pub root: Option<RootInfo>,
    /// False while an operation on the export has waited longer than `stall_after_secs`.
    pub export_responding: bool,
    pub stall_after_secs: f64,
    /// Seconds since an operation on the export last succeeded.
    pub last_success_secs_ago: Option<f64>,
    pub last_error: Option<String>,
    /// Seconds since `last_error`.
    pub last_error_secs_ago: Option<f64>,
    /// Operations waiting on the export longer than a second, oldest first.
    pub stuck: Vec<StuckOp>,
    pub blocking_in_flight: usize,
    pub blocking_cap: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StuckOp {
    pub what: String,
    pub secs: f64,
}

impl Health {
    pub fn new(stall_after: Duration) -> Arc<Health> {
        Arc::new(Health {
            stall_after,
            next_id: AtomicU64::new(0),
            inflight: Mutex::new(BTreeMap::new()),
            last_ok: Mutex::new(None),
            last_error: Mutex::new(None),
            root: Mutex::new(None),
        })
    }

    /// What the start-up check found about the root, for reports.
    pub fn set_root(&self, info: RootInfo) {
        *self.root.lock().unwrap_or_else(|p| p.into_inner()) = Some(info);
    }

    /// Registers a caller's blocking operation, or refuses it when the export is stalled
    /// or [`MAX_BLOCKING`] of them are already waiting.
    pub fn begin(self: &Arc<Self>, what: &str) -> Result<Ticket> {
        self.refuse_if_stalled(what)?;
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        let capped = inflight.values().filter(|o| o.capped).count();
        if capped >= MAX_BLOCKING {
            return Err(Error::Busy(format!(
                "{what}: {capped} operations are already waiting on the shared export; not starting another"
            )));
        }
        Ok(self.insert(&mut inflight, what, true))
    }

    /// Registers one of the daemon's own operations (commit, heartbeat, generation check):
    /// never refused, never counted against the cap.
    pub fn begin_internal(self: &Arc<Self>, what: &str) -> Ticket {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        self.insert(&mut inflight, what, false)
    }

    fn insert(
        self: &Arc<Self>,
        inflight: &mut BTreeMap<u64, Op>,
        what: &str,
        capped: bool,
    ) -> Ticket {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        inflight.insert(
            id,
            Op {
                what: what.to_string(),
                since: Instant::now(),
                capped,
            },
        );
        Ticket {
            health: self.clone(),
            id,
        }
    }

    /// Runs one of the daemon's own operations on the export (blocking), registered while
    /// it runs, and records whether it succeeded.
    pub fn watch<T>(self: &Arc<Self>, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let _op = self.begin_internal(what);
        let r = f();
        match &r {
            Ok(_) => self.succeeded(),
            Err(e) => self.failed(e),
        }
        r
    }

    pub fn succeeded(&self) {
        *self.last_ok.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    pub fn failed(&self, e: &Error) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), e.to_string()));
    }

    /// The oldest operation still waiting, if it has waited longer than `stall_after`.
    pub fn stalled(&self) -> Option<(String, Duration)> {
        let inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        let oldest = inflight.values().min_by_key(|o| o.since)?;
        let waited = oldest.since.elapsed();
        (waited > self.stall_after).then(|| (oldest.what.clone(), waited))
    }

    /// An error for `what` when the export is stalled; mutations call this first.
    pub fn refuse_if_stalled(&self, what: &str) -> Result<()> {
        match self.stalled() {
            Some((oldest, waited)) => Err(Error::ExportStalled {
                what: what.to_string(),
                oldest,
                waited,
            }),
            None => Ok(()),
        }
    }

    pub fn report(&self) -> HealthReport {
        let inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        let mut stuck: Vec<StuckOp> = inflight
            .values()
            .filter(|o| o.since.elapsed() > Duration::from_secs(1))
            .map(|o| StuckOp {
                what: o.what.clone(),
                secs: o.since.elapsed().as_secs_f64(),
            })
            .collect();
        stuck.sort_by(|a, b| b.secs.total_cmp(&a.secs));
        let blocking_in_flight = inflight.values().filter(|o| o.capped).count();
        drop(inflight);
        let last_error = self
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        HealthReport {
            root: self.root.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            export_responding: self.stalled().is_none(),
            stall_after_secs: self.stall_after.as_secs_f64(),
            last_success_secs_ago: self
                .last_ok
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .map(|at| at.elapsed().as_secs_f64()),
            last_error_secs_ago: last_error
                .as_ref()
                .map(|(at, _)| at.elapsed().as_secs_f64()),
            last_error: last_error.map(|(_, e)| e),
            stuck,
            blocking_in_flight,
            blocking_cap: MAX_BLOCKING,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_operation_marks_the_export_stalled_until_it_ends() {
        let h = Health::new(Duration::from_millis(50));
        let t = h.begin("bind-mounting").unwrap();
        assert!(h.stalled().is_none());
        std::thread::sleep(Duration::from_millis(80));
        let (what, waited) = h.stalled().unwrap();
        assert_eq!(what, "bind-mounting");
        assert!(waited >= Duration::from_millis(50));
        let e = h.begin("mounting web").err().unwrap().to_string();
        assert!(
            e.contains("not responding") && e.contains("bind-mounting"),
            "{e}"
        );
        assert!(!h.report().export_responding);
        drop(t);
        assert!(h.stalled().is_none());
        assert!(h.report().export_responding);
    }

    #[test]
    fn callers_blocking_work_is_capped_but_internal_work_is_not() {
        let h = Health::new(Duration::from_secs(60));
        let tickets: Vec<Ticket> = (0..MAX_BLOCKING)
            .map(|_| h.begin("walk").unwrap())
            .collect();
        let e = h.begin("walk").err().unwrap().to_string();
        assert!(e.contains("already waiting"), "{e}");
        let _internal = h.begin_internal("commit");
        assert_eq!(h.report().blocking_in_flight, MAX_BLOCKING);
        drop(tickets);
        assert!(h.begin("walk").is_ok());
    }
}
