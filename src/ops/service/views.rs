//! The shapes in which both APIs show volumes, nodes and the daemon (Docker's `Status`,
//! `caravan inspect|list|nodes|info`, their `--json`), shared by the daemon and the CLI.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cluster::store::StoreStats;
use crate::core::liveness::{Liveness, NodeView, SelfReport};
use crate::core::volume::{Holder, Takeover};
use crate::export::health::HealthReport;

/// A volume as the APIs show it (Docker's `Status`, `caravan inspect`, `caravan list --json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VolumeView {
    pub name: String,
    /// Where this node mounts the volume (present only while mounted here).
    pub mountpoint: String,
    pub mounted_here: bool,
    pub created_at: String,
    pub created_by: String,
    pub options: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageView>,
    /// Mounts per node: the total count and how many distinct mount IDs.
    pub mounts: BTreeMap<String, NodeMounts>,
    /// The data folder on the shared export.
    pub data: String,
    /// `shared` or `exclusive`.
    #[serde(default = "shared")]
    pub access: String,
    /// For exclusive volumes: the node that may mount it now, and its grant's generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<Holder>,
    /// The fencing token (bumped at every grant and takeover).
    #[serde(default)]
    pub generation: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub takeovers: Vec<Takeover>,
    /// True when the export could not be reached and this is the last known state.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeMounts {
    pub count: u32,
    pub ids: usize,
    /// The node's state as this node sees it: alive, dead or left.
    #[serde(default = "alive")]
    pub node_state: Liveness,
    /// Mounts of a dead or left node: shown, but they do not block a remove.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
}

fn shared() -> String {
    "shared".into()
}

fn alive() -> Liveness {
    Liveness::Alive
}

/// A node and its mounts, for `caravan nodes`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeInfo {
    #[serde(flatten)]
    pub view: NodeView,
    /// Volumes this node has mounted, with their counts.
    pub mounts: BTreeMap<String, u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UsageView {
    pub bytes: u64,
    pub human: String,
    pub files: u64,
    /// False when counting stopped at its time budget: the figures are a lower bound.
    pub complete: bool,
}

/// What `caravan info` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Info {
    pub version: String,
    pub node: String,
    pub root: String,
    pub state_dir: String,
    pub volumes: usize,
    /// Volumes mounted on this node.
    pub mounted_here: usize,
    /// Mount count on this node, over all volumes and IDs.
    pub mounts_here: u32,
    /// Mount count over the whole cluster.
    pub mounts_total: u32,
    pub generation: u64,
    pub uptime_secs: u64,
    pub store: StoreStats,
    /// Set when the export did not answer: the figures are the last known ones.
    pub stale: Option<String>,
    pub health: HealthReport,
    /// This node's own standing: cut off, re-validating its exclusive volumes.
    #[serde(default)]
    pub standing: SelfReport,
    /// The export's connection: reconnects after it went away or was mounted again.
    #[serde(default)]
    pub connection: crate::export::connection::ConnectionReport,
    /// The lease on exclusive volumes and its fencing (see [`crate::host::fence`]).
    #[serde(default)]
    pub fencing: crate::host::fence::FencingReport,
    /// Records in the store that failed their checks (another machine wrote them, or an
    /// older or newer version), by key (shortened), with why: left untouched, never used.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub skipped_records: BTreeMap<String, String>,
}
