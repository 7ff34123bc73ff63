//! Prometheus metrics (`--metrics ADDR`, opt-in), in the text exposition format, with the
//! `prometheus-client` crate.
//!
//! Two kinds:
//! - **events**, counted where they happen, in one process-wide [`Metrics`] ([`global`]):
//!   calls by API, method and outcome with their latency, commits with their batch size
//!   and duration, the wait for the cluster lock, and the gaps between heartbeats of each
//!   node this one watches;
//! - **state**, read at each scrape from what `caravan info` and `caravan nodes` show
//!   ([`Scrape`]): volumes and mounts, the metadata generation, whether the export answers
//!   and what is stuck on it, and each node's state and silence.
//!
//! `etc/grafana/caravan.json` is a dashboard built on these names.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::core::liveness::Liveness;
use crate::service::{Info, NodeInfo};

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeStateLabels {
    node: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabels {
    scope: &'static str,
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
    export_reconnects: Counter,
    fences: Counter,
    fenced_processes: Counter,
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| Metrics {
        calls: Family::default(),
        call_seconds: Family::new_with_constructor(seconds_buckets),
        commit_batch: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
        commit_seconds: seconds_buckets(),
        lock_wait_seconds: seconds_buckets(),
        heartbeat_gap_seconds: Family::new_with_constructor(gap_buckets),
        export_reconnects: Counter::default(),
        fences: Counter::default(),
        fenced_processes: Counter::default(),
    })
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
    /// This node came back to the export after losing it (see [`crate::export`]).
    pub fn export_reconnect(&self) {
        self.export_reconnects.inc();
    }

    /// This node's lease ran out and the fence keeper stopped `processes` processes.
    pub fn fenced(&self, processes: usize) {
        self.fences.inc();
        self.fenced_processes
            .inc_by(u64::try_from(processes).unwrap_or(u64::MAX));
    }
}

/// The state shown at a scrape.
pub struct Scrape<'a> {
    pub info: &'a Info,
    pub nodes: &'a [NodeInfo],
}

/// Renders the events and `state` in the Prometheus text format.
pub fn render(state: &Scrape) -> String {
    let m = global();
    let mut r = Registry::with_prefix("caravan");
    r.register(
        "calls",
        "Calls answered, by API, method and outcome",
        m.calls.clone(),
    );
    r.register(
        "call_duration_seconds",
        "Time to answer a call, by API and method",
        m.call_seconds.clone(),
    );
    r.register(
        "commit_batch_size",
        "Mutations committed together in one commit",
        m.commit_batch.clone(),
    );
    r.register(
        "commit_duration_seconds",
        "Time of one commit, fsync included",
        m.commit_seconds.clone(),
    );
    r.register(
        "lock_wait_seconds",
        "Wait for the cluster lock at the start of a hold",
        m.lock_wait_seconds.clone(),
    );
    r.register(
        "heartbeat_gap_seconds",
        "Time between two heartbeats of a watched node, as this node saw them",
        m.heartbeat_gap_seconds.clone(),
    );

    r.register(
        "export_reconnects",
        "Times this node reopened its handles after the export went away or was mounted again",
        m.export_reconnects.clone(),
    );
    r.register(
        "fences",
        "Times this node's lease on its exclusive volumes ran out and the fence keeper stopped their containers",
        m.fences.clone(),
    );
    r.register(
        "fenced_processes",
        "Processes the fence keeper stopped",
        m.fenced_processes.clone(),
    );

    let info = state.info;
    let gauge = |v: i64| {
        let g: Gauge = Gauge::default();
        g.set(v);
        g
    };
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    r.register(
        "volumes",
        "Volumes in the cluster",
        gauge(count(info.volumes as u64)),
    );
    let mounts = Family::<ScopeLabels, Gauge>::default();
    mounts
        .get_or_create(&ScopeLabels { scope: "here" })
        .set(i64::from(info.mounts_here));
    mounts
        .get_or_create(&ScopeLabels { scope: "cluster" })
        .set(i64::from(info.mounts_total));
    r.register(
        "mounts",
        "Mount counts, on this node and in the cluster",
        mounts,
    );
    r.register(
        "volumes_mounted_here",
        "Volumes bind-mounted on this node",
        gauge(count(info.mounted_here as u64)),
    );
    r.register(
        "metadata_generation",
        "The metadata generation this node last read",
        gauge(count(info.generation)),
    );
    r.register(
        "skipped_records",
        "Stored records that failed their checks and are left untouched",
        gauge(count(info.skipped_records.len() as u64)),
    );
    let h = &info.health;
    r.register(
        "export_responding",
        "1 while no operation on the export has waited past the stall threshold",
        gauge(i64::from(h.export_responding && info.stale.is_none())),
    );
    r.register(
        "export_stuck_operations",
        "Operations waiting on the export for more than a second",
        gauge(count(h.stuck.len() as u64)),
    );
    r.register(
        "export_blocking_operations",
        "Blocking operations on the export in flight",
        gauge(count(h.blocking_in_flight as u64)),
    );
    r.register(
        "cut_off",
        "1 while this node cannot write its heartbeat or read the export (it then judges nobody dead)",
        gauge(i64::from(info.standing.cut_off.is_some())),
    );
    let states = Family::<NodeStateLabels, Gauge>::default();
    let silent = Family::<NodeLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for n in state.nodes {
        for s in [Liveness::Alive, Liveness::Dead, Liveness::Left] {
            states
                .get_or_create(&NodeStateLabels {
                    node: n.view.node.clone(),
                    state: s.as_str(),
                })
                .set(i64::from(n.view.state == s));
        }
        silent
            .get_or_create(&NodeLabels {
                node: n.view.node.clone(),
            })
            .set(n.view.last_seen_secs);
    }
    r.register(
        "node_state",
        "1 for each node's state as this node judges it",
        states,
    );
    r.register(
        "node_silent_seconds",
        "Time since each node's current incarnation last beat, on this node's seeing clock",
        silent,
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &r).expect("writing to a String");
    text
}
