//! The operations both APIs share, and the backups they make and restore.
//!
//! - [`service`]: create, mount, unmount, remove, list, snapshots, copies, backups, doctor;
//! - [`backup`]: backups outside the export (chunked, deduplicated, checked) and restores.

pub mod backup;
pub mod service;
