//! The changes the store applies, and what each did.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::core::volume::{VolumeOptions, VolumeRecord};

/// A change to the cluster metadata, applied under the cluster lock.
#[derive(Debug, Clone)]
pub enum Mutation {
    Create {
        name: String,
        options: VolumeOptions,
        node: String,
        /// The volume's folder, already filled (a restore or clone), waiting at
        /// `.caravan/staging/<tag>`: moved into place by the commit that adds the volume.
        staged: Option<String>,
    },
    Remove {
        name: String,
    },
    Mount {
        name: String,
        node: String,
        id: String,
    },
    Unmount {
        name: String,
        node: String,
        id: String,
    },
    /// An operator's takeover of an exclusive volume: make `node` the holder, now if the
    /// holder is dead or gone (or `force`), else fail.
    Takeover {
        name: String,
        node: String,
        force: bool,
    },
    /// After a restart: keep `node`'s mount records only for volumes in `bound` (the bind
    /// mounts really present on the host) and not taken over by another node; drop the rest.
    ReconcileNode {
        node: String,
        bound: BTreeSet<String>,
    },
    /// A step in the life of snapshot `snap` of volume `name`, by `node`.
    Snapshot {
        name: String,
        snap: String,
        node: String,
        step: crate::core::decide::SnapshotStep,
    },
}

impl Mutation {
    /// What the mutation does, for messages.
    pub fn describe(&self) -> &'static str {
        match self {
            Mutation::Create { .. } => "creating the volume",
            Mutation::Remove { .. } => "removing the volume",
            Mutation::Mount { .. } => "mounting the volume",
            Mutation::Unmount { .. } => "unmounting the volume",
            Mutation::Takeover { .. } => "taking the volume over",
            Mutation::ReconcileNode { .. } => "reconciling this node's mounts",
            Mutation::Snapshot { .. } => "recording the snapshot",
        }
    }
}

/// What a mutation did.
#[derive(Debug, Clone)]
pub enum Outcome {
    Created {
        record: VolumeRecord,
        /// The volume existed already with the same options (Create is idempotent).
        existed: bool,
        /// The data folder was there already (retained data) and was adopted.
        adopted: bool,
    },
    Removed {
        record: VolumeRecord,
        /// Where the data went (trash, archive), if it moved.
        moved_to: Option<PathBuf>,
    },
    Mounted {
        record: VolumeRecord,
        node_count: u32,
    },
    Unmounted {
        /// `None` when the volume does not exist (any more).
        record: Option<VolumeRecord>,
        /// `None` when the ID was not mounted on the node.
        node_count: Option<u32>,
    },
    TookOver {
        record: VolumeRecord,
    },
    /// A snapshot step: the record after it.
    SnapshotChanged {
        record: VolumeRecord,
    },
    Reconciled {
        /// Volumes whose records for the node were dropped, with the count dropped.
        dropped: Vec<(String, u32)>,
        /// Volumes that still have records for the node.
        kept: Vec<String>,
    },
}

/// What a Create did.
#[derive(Debug, Clone)]
pub struct Created {
    pub record: VolumeRecord,
    /// The volume existed already with the same options (Create is idempotent).
    pub existed: bool,
    /// The data folder was there already (retained data) and was adopted.
    pub adopted: bool,
}

/// What a Remove did.
#[derive(Debug, Clone)]
pub struct Removed {
    pub record: VolumeRecord,
    /// Where the data went (trash, archive), if it moved.
    pub moved_to: Option<PathBuf>,
}

/// What a Mount did.
#[derive(Debug, Clone)]
pub struct Mounted {
    pub record: VolumeRecord,
    /// The node's mount count afterwards.
    pub node_count: u32,
}

/// What an Unmount did.
#[derive(Debug, Clone)]
pub struct Unmounted {
    /// `None` when the volume does not exist (any more).
    pub record: Option<VolumeRecord>,
    /// `None` when the ID was not mounted on the node.
    pub node_count: Option<u32>,
}

/// What a reconcile did.
#[derive(Debug, Clone)]
pub struct Reconciled {
    /// Volumes whose records for the node were dropped, with the count dropped.
    pub dropped: Vec<(String, u32)>,
    /// Volumes that still have records for the node.
    pub kept: Vec<String>,
}

/// The typed result of one kind of mutation, taken out of its [`Outcome`] (the store
/// answers each mutation with the outcome of its own kind; see `Store`'s typed calls).
pub trait FromOutcome: Sized {
    fn from_outcome(o: Outcome) -> Option<Self>;
}

impl FromOutcome for Created {
    fn from_outcome(o: Outcome) -> Option<Self> {
        match o {
            Outcome::Created {
                record,
                existed,
                adopted,
            } => Some(Created {
                record,
                existed,
                adopted,
            }),
            _ => None,
        }
    }
}

impl FromOutcome for Removed {
    fn from_outcome(o: Outcome) -> Option<Self> {
        match o {
            Outcome::Removed { record, moved_to } => Some(Removed { record, moved_to }),
            _ => None,
        }
    }
}

impl FromOutcome for Mounted {
    fn from_outcome(o: Outcome) -> Option<Self> {
        match o {
            Outcome::Mounted { record, node_count } => Some(Mounted { record, node_count }),
            _ => None,
        }
    }
}

impl FromOutcome for Unmounted {
    fn from_outcome(o: Outcome) -> Option<Self> {
        match o {
            Outcome::Unmounted { record, node_count } => Some(Unmounted { record, node_count }),
            _ => None,
        }
    }
}

impl FromOutcome for VolumeRecord {
    fn from_outcome(o: Outcome) -> Option<Self> {
        match o {
            Outcome::TookOver { record } | Outcome::SnapshotChanged { record } => Some(record),
            _ => None,
        }
    }
}

impl FromOutcome for Reconciled {
    fn from_outcome(o: Outcome) -> Option<Self> {
        match o {
            Outcome::Reconciled { dropped, kept } => Some(Reconciled { dropped, kept }),
            _ => None,
        }
    }
}
