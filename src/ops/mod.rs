//! The operations both APIs share, and the backups they make and restore.
//!
//! - [`service`]: create, mount, unmount, remove, list, snapshots, copies, backups, doctor;
//! - [`backup`]: backups outside the export (chunked, deduplicated, checked) and restores;
//! - [`jobs`]: the background work a call starts (copies, snapshots, backups): one table
//!   type for them all.

pub mod backup;
pub mod jobs;
pub mod service;
