//! The pure core: the rules that decide, with no I/O, clock or randomness of their own.
//!
//! Everything here is a function of its arguments. Time comes in as [`time::Moment`]s
//! read by the shell, files as the values read from them. That is what lets
//! `tests/sim/` run these same rules for many nodes on virtual time, with faults, and
//! check the cluster's invariants after every step; `tests/layers.rs` checks that nothing
//! here reaches for the filesystem, the network, processes, threads, a clock or a crate
//! of the shell, and that nothing here imports from outside `core`.
//!
//! - [`error`]: the one error type, each saying what the user should do about it;
//! - [`time`]: readings of a monotonic clock, and the one trait the shell reads them with;
//! - [`timing`]: how long things wait (a refused Mount for a holder, a hold of the lock);
//! - [`liveness`]: heartbeats as observed, the seeing clock, and judgments of incarnations;
//! - [`standing`]: this node's own lease: may it act as a holder, and the lapse rule;
//! - [`names`]: names that become paths and keys (volumes, snapshots, mount IDs), checked;
//! - [`volume`]: a volume's options and its record, validated;
//! - [`copy_report`]: what a copy of a volume's tree did, kept in its record;
//! - [`backup_url`]: backup destinations and backups' URLs, parsed and validated;
//! - [`staging`]: the name of a staging folder (a copy in progress and its maker);
//! - [`mutation`]: the changes the store applies, and what each did;
//! - [`decide`]: the store's decisions on one record (create, mount, unmount, remove,
//!   takeover, snapshot steps, reconcile), with a liveness oracle the shell provides;
//! - [`doctor`]: `caravan doctor`'s judgment: facts about the store, the export and
//!   this host in, findings out;
//! - [`freshness`]: the numbers by which a node knows its copy of the metadata is current
//!   without the lock (generations, the hint, catching up through the journal);
//! - [`batch`]: one commit's decisions: a batch of mutations decided together, the
//!   folders it needs first, the heartbeats it may consult, the work after the commit.

pub mod backup_url;
pub mod batch;
pub mod copy_report;
pub mod decide;
pub mod doctor;
pub mod error;
pub mod freshness;
pub mod liveness;
pub mod mutation;
pub mod names;
pub mod staging;
pub mod standing;
pub mod time;
pub mod timing;
pub mod volume;
