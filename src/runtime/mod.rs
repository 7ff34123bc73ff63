//! The runtime's leaves, used by every layer above: the host's clocks, the one way to
//! bound a call in time (and to run blocking work off the async threads), and the counters
//! of metrics. Nothing here knows about volumes or the export.
//!
//! - [`clock`]: the host's monotonic clock, as the core's moments, and the wall clock for
//!   what is only shown;
//! - [`deadline`]: bounding work in time: a call's deadline, passed down to its work;
//! - [`metrics`]: Prometheus counters of events (the scrape is `api::server`'s);
//! - [`random`]: random ids (boot ids, the store's id), the shell's one source of chance.

pub mod clock;
pub mod deadline;
pub mod metrics;
pub mod random;
