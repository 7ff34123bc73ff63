//! Prometheus metrics (`--metrics ADDR`, opt-in), in the text exposition format, with the
//! `prometheus-client` crate.
//!
//! Two kinds:
//! - **events**, counted where they happen, in the [`Metrics`] the daemon makes and hands in:
//!   calls by API, method and outcome with their latency, commits with their batch size
//!   and duration, the wait for the cluster lock, and the gaps between heartbeats of each
//!   node this one watches;
//! - **state**, read at each scrape from what `caravan info` and `caravan nodes` show
//!   (rendered by the server's scrape, which knows those views; this module is a leaf that
//!   imports nothing of caravan's): volumes and mounts, the metadata generation, whether the export answers
//!   and what is stuck on it, and each node's state and silence.
//!
//! `etc/grafana/caravan.json` is a dashboard built on these names.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    api: &'static str,
    method: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    api: &'static str,
    method: &'static str,
}

/// A series per node (also used by the scrape's node gauges).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    pub node: String,
}

fn seconds_buckets() -> Histogram {
    // 0.5 ms to about 33 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 17))
}

fn gap_buckets() -> Histogram {
    // 62.5 ms to 64 s: a beat every second normally lands in the 1 s and 2 s buckets.
    Histogram::new(exponential_buckets(0.0625, 2.0, 11))
}

/// The events counted since the process started.
pub struct Metrics {
    calls: Family<CallLabels, Counter>,
    call_seconds: Family<MethodLabels, Histogram, fn() -> Histogram>,
    commit_batch: Histogram,
    commit_seconds: Histogram,
    lock_wait_seconds: Histogram,
    heartbeat_gap_seconds: Family<NodeLabels, Histogram, fn() -> Histogram>,
    fences: Counter,
    fenced_processes: Counter,
}

/// Made once by the daemon and handed to what counts (the nodes, the store, the service and
/// the APIs through it): no process-wide state, so tests and simulations each count their own.
impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            calls: Family::default(),
            call_seconds: Family::new_with_constructor(seconds_buckets),
            commit_batch: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            commit_seconds: seconds_buckets(),
            lock_wait_seconds: seconds_buckets(),
            heartbeat_gap_seconds: Family::new_with_constructor(gap_buckets),
            fences: Counter::default(),
            fenced_processes: Counter::default(),
        }
    }
}

impl Metrics {
    /// One call answered: `api` is `plugin` or `control`; `outcome` is `ok`, `not_found`
    /// or `error`. `method` is one of a fixed set (the caller maps anything else to
    /// `other`), so that no client can grow the set of series.
    pub fn call(
        &self,
        api: &'static str,
        method: &'static str,
        outcome: &'static str,
        took: Duration,
    ) {
        self.calls
            .get_or_create(&CallLabels {
                api,
                method,
                outcome,
            })
            .inc();
        self.call_seconds
            .get_or_create(&MethodLabels { api, method })
            .observe(took.as_secs_f64());
    }

    /// One commit of `batch` mutations inside a hold of the cluster lock.
    pub fn commit(&self, batch: usize, took: Duration) {
        self.commit_batch.observe(batch as f64);
        self.commit_seconds.observe(took.as_secs_f64());
    }

    /// The wait for the cluster lock at the start of a hold.
    pub fn lock_wait(&self, took: Duration) {
        self.lock_wait_seconds.observe(took.as_secs_f64());
    }

    /// A new heartbeat of `node`, `gap` after its previous one (as this node saw them).
    pub fn heartbeat_gap(&self, node: &str, gap: Duration) {
        self.heartbeat_gap_seconds
            .get_or_create(&NodeLabels {
                node: node.to_string(),
            })
            .observe(gap.as_secs_f64());
    }
}

impl Metrics {
    /// This node's lease ran out and the fence keeper stopped `processes` processes.
    pub fn fenced(&self, processes: usize) {
        self.fences.inc();
        self.fenced_processes
            .inc_by(u64::try_from(processes).unwrap_or(u64::MAX));
    }
}

impl Metrics {
    /// Adds the events to a scrape's registry (the state beside them is rendered by the
    /// server, which knows what `caravan info` shows: `server::scrape`).
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "calls",
            "Calls answered, by API, method and outcome",
            self.calls.clone(),
        );
        r.register(
            "call_duration_seconds",
            "Time to answer a call, by API and method",
            self.call_seconds.clone(),
        );
        r.register(
            "commit_batch_size",
            "Mutations committed together in one commit",
            self.commit_batch.clone(),
        );
        r.register(
            "commit_duration_seconds",
            "Time of one commit, fsync included",
            self.commit_seconds.clone(),
        );
        r.register(
            "lock_wait_seconds",
            "Wait for the cluster lock at the start of a hold",
            self.lock_wait_seconds.clone(),
        );
        r.register(
            "heartbeat_gap_seconds",
            "Time between two heartbeats of a watched node, as this node saw them",
            self.heartbeat_gap_seconds.clone(),
        );

        r.register(
            "fences",
            "Times this node's lease on its exclusive volumes ran out and the fence keeper stopped their containers",
            self.fences.clone(),
        );
        r.register(
            "fenced_processes",
            "Processes the fence keeper stopped",
            self.fenced_processes.clone(),
        );
    }
}
