//! caravan: a cross-host Docker volume plugin.
//!
//! One daemon runs per host; every host mounts the same shared export. Volumes are folders
//! on the export, the cluster's metadata is a sled database on the export, and each node
//! bind-mounts a volume's folder where Docker asks for it.
//!
//! Module map:
//! - [`core`]: the pure core, the rules that decide with no I/O, clock or randomness of
//!   their own (so `tests/sim.rs` runs them on virtual time; `tests/layers.rs` checks it):
//!   time as moments, liveness of incarnations, a holder's standing, the one error type,
//!   the volume model (names, options, the record), backup URLs, copy reports;
//! - [`clock`]: the host's monotonic clock, as the core's moments;
//! - [`beneath`]: opening paths under the shared root without ever following a symlink;
//! - [`layout`]: where things live on the export and on the node, and the file work there;
//! - [`treecopy`]: copying a volume's tree (snapshots) without following a link;
//! - [`backup`]: backups outside the export (chunked, deduplicated, checked) and restores;
//! - [`export`]: the export's connection: noticing it went away or was replaced, and
//!   coming back to the same cluster;
//! - [`lock`]: the cluster-wide lock (blocking OFD lock with a bounded wait);
//! - [`pinned`]: open folders on the shared root, so calls skip path lookups on the server;
//! - [`store`]: cluster metadata in sled: group commit, cached reads, the pure decisions;
//! - [`health`]: is the export answering: stalled operations, the cap on stuck threads;
//! - [`root`]: checks of the shared root at start (writable, locks shared, which filesystem);
//! - [`nfs`]: mounting an NFSv4 export itself (`--nfs`);
//! - [`node`]: node identity, heartbeats and the liveness of incarnations (no clock
//!   comparisons);
//! - [`metrics`]: Prometheus counters and gauges of the daemon;
//! - [`fence`]: the lease on exclusive volumes and the fence keeper that stops their
//!   containers when this node cannot renew it;
//! - [`mounts`]: bind mounts on this node and reading `/proc/self/mountinfo`;
//! - [`pending`]: unmounts recorded on this node until the export answers;
//! - [`service`]: the volume operations both APIs share (create, mount, remove, …);
//! - [`plugin`]: Docker's VolumeDriver HTTP API;
//! - [`api`]: the daemon's control API, used by the CLI;
//! - [`spec`]: the `.spec` file that lets dockerd find the plugin;
//! - [`dockerd`]: telling the local dockerd the driver exists (so Swarm schedules here);
//! - [`tls`]: the plugin API over TCP with mutual TLS (`--listen tcp://…`);
//! - [`systemd`]: socket activation and readiness notification;
//! - [`config`]: daemon settings from flags, environment and the config file;
//! - [`deadline`]: bounding work in time: a call's deadline, passed down to its work;
//! - [`daemon`]: start-up, the heartbeat thread, graceful shutdown;
//! - [`server`]: the socket and the HTTP glue of both APIs;
//! - [`client`]: an HTTP client for the daemon's unix socket;
//! - [`cli`]: the client commands and their output.

pub mod api;
pub mod backup;
pub mod beneath;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod core;
pub mod daemon;
pub mod deadline;
pub mod dockerd;
pub mod export;
pub mod fence;
pub mod health;
pub mod layout;
pub mod lock;
pub mod metrics;
pub mod mounts;
pub mod nfs;
pub mod node;
pub mod pending;
pub mod pinned;
pub mod plugin;
pub mod root;
pub mod server;
pub mod service;
pub mod spec;
pub mod store;
pub mod systemd;
pub mod tls;
pub mod treecopy;

pub use crate::core::error::{Error, Result};
