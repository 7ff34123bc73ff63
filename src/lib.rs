//! caravan: a cross-host Docker volume plugin.
//!
//! One daemon runs per host; every host mounts the same shared export. Volumes are folders
//! on the export, the cluster's metadata is a sled database on the export, and each node
//! bind-mounts a volume's folder where Docker asks for it.
//!
//! Module map, by layer, from the bottom: a module imports only from its own layer and the
//! layers below it (`tests/layers.rs` checks this, and that no modules import each other
//! in a cycle). Each layer's own `mod.rs` maps its modules.
//! - [`core`]: the pure core, the rules that decide with no I/O, clock or randomness of
//!   their own (so `tests/sim/` runs them on virtual time): time as moments, liveness of
//!   incarnations, a holder's standing, the one error type, the volume model, backup URLs;
//! - [`runtime`]: the clocks, bounding a call in time, the metrics counters;
//! - [`export`]: the shared export as this host reaches it: opening below the root, the
//!   layout, the cluster lock, tree copies, health, mounts, the export's connection;
//! - [`host`]: this host beside the export: pending unmounts, the fence keeper, dockerd;
//! - [`cluster`]: the metadata store on the export and the nodes' heartbeats;
//! - [`ops`]: the volume operations both APIs share, and backups;
//! - [`api`]: the plugin API, the control API, the socket, TLS, the metrics scrape;
//! - [`daemon`]: start-up, configuration, systemd, the spec file, shutdown;
//! - [`cli`]: the client commands and their output.

pub mod api;
pub mod cli;
pub mod cluster;
pub mod core;
pub mod daemon;
pub mod export;
pub mod host;
pub mod ops;
pub mod runtime;

pub use crate::core::error::{Error, Result};
