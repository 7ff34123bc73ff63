//! The cluster's shared state: the metadata store on the export and the nodes' heartbeats.
//!
//! - [`store`]: cluster metadata in sled: group commit, cached reads, the decisions of a
//!   batch;
//! - [`node`]: node identity, heartbeats, and judging the other nodes' incarnations with
//!   the core's liveness rules.

pub mod node;
pub mod store;
