//! What a copy of a volume's tree did (a clone, a snapshot, a restore): counted by the
//! copier (`crate::export::treecopy`), kept in the volume's record and shown to the user.

use serde::{Deserialize, Serialize};

/// What a copy did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyReport {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hard_links: u64,
    pub fifos: u64,
    /// Device nodes and sockets, not copied.
    pub skipped: u64,
    /// Entries gone (or changed type) between being listed and being copied: the source
    /// was in use.
    pub vanished: u64,
    /// Extended attributes that could not be read or set (not supported there, refused).
    pub xattr_errors: u64,
    /// File data bytes (holes not counted).
    pub bytes: u64,
    /// Files whose data was shared by a reflink, and files whose data was copied.
    pub reflinked: u64,
    pub copied: u64,
    pub millis: u64,
    /// Set-user-ID and set-group-ID bits not carried over, and extended attributes of the
    /// privileged namespaces not carried over (see `crate::export::treecopy::Privileges`), by entries.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped_setid: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped_xattrs: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl CopyReport {
    /// How the data was copied: `reflink`, `copy`, both, or `none` (no data).
    pub fn method(&self) -> &'static str {
        match (self.reflinked > 0, self.copied > 0) {
            (true, false) => "reflink",
            (false, true) => "copy",
            (true, true) => "reflink+copy",
            (false, false) => "none",
        }
    }
}
