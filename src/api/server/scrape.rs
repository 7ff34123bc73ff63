//! What `GET /metrics` answers: the events counted in [`crate::runtime::metrics`] and the state
//! that `caravan info` and `caravan nodes` show, in the Prometheus text format.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::core::liveness::Liveness;
use crate::ops::service::{Info, NodeInfo};
use crate::runtime::metrics::{Metrics, NodeLabels};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeStateLabels {
    node: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabels {
    scope: &'static str,
}

/// The state shown at a scrape.
pub struct Scrape<'a> {
    pub info: &'a Info,
    pub nodes: &'a [NodeInfo],
}

/// Renders the `events` and `state` in the Prometheus text format.
pub fn render(events: &Metrics, state: &Scrape) -> String {
    let mut r = Registry::with_prefix("caravan");
    events.register(&mut r);
    let reconnects: Counter = Counter::default();
    reconnects.inc_by(state.info.connection.reconnects);
    r.register(
        "export_reconnects",
        "Times this node reopened its handles after the export went away or was mounted again",
        reconnects,
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
