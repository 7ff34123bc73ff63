//! The shared export as this host reaches it: opening below the root without following a
//! link, where things live there, the cluster lock, copying trees, whether the export
//! answers, checks of the root at start, mounting it, the host's mount table, and noticing
//! that the export went away or was replaced.
//!
//! - [`beneath`]: opening paths under the shared root without ever following a symlink;
//! - [`pinned`]: open folders on the shared root, so calls skip path lookups on the server;
//! - [`layout`]: where things live on the export and on the node, and the file work there;
//! - [`treecopy`]: copying a volume's tree (clones, snapshots) without following a link;
//! - [`lock`]: the cluster-wide lock (blocking OFD lock with a bounded wait);
//! - [`connection`]: the export's connection: noticing it went away or was replaced, and
//!   coming back to the same cluster;
//! - [`health`]: is the export answering: stalled operations, the cap on stuck threads;
//! - [`root`]: checks of the shared root at start (writable, locks shared, which filesystem);
//! - [`nfs`]: mounting an NFSv4 export itself (`--nfs`);
//! - [`mounts`]: bind mounts on this node and reading `/proc/self/mountinfo`.

pub mod beneath;
pub mod connection;
pub mod health;
pub mod layout;
pub mod lock;
pub mod mounts;
pub mod nfs;
pub mod pinned;
pub mod root;
pub mod treecopy;
