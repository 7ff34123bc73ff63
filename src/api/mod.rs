//! What the daemon answers on its sockets.
//!
//! - [`server`]: the socket and the HTTP glue of both APIs, and the metrics scrape;
//! - [`plugin`]: Docker's VolumeDriver HTTP API;
//! - [`control`]: the daemon's control API, used by the CLI;
//! - [`tls`]: the plugin API over TCP with mutual TLS (`--listen tcp://…`).

pub mod control;
pub mod plugin;
pub mod server;
pub mod tls;
