//! This host beside the export: what it must remember while the export does not answer,
//! the fence that stops its containers when it cannot renew its lease, and its dockerd.
//!
//! - [`pending`]: unmounts recorded on this node until the export answers;
//! - [`fence`]: the lease on exclusive volumes and the fence keeper that stops their
//!   containers when this node cannot renew it;
//! - [`dockerd`]: telling the local dockerd the driver exists (so Swarm schedules here),
//!   and asking it which container uses a volume;
//! - [`client`]: an HTTP client for a unix socket (dockerd's, the daemon's);
//! - [`machine`]: which machine this is (written into the heartbeat).

pub mod client;
pub mod dockerd;
pub mod fence;
pub mod machine;
pub mod pending;
