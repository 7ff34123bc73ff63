//! The library's one error type.
//!
//! Every variant renders as a message a user can act on: it says what was wrong and, where
//! there is one, what is accepted instead. The plugin API sends `to_string()` as Docker's
//! `Err`; the control API sends it with the HTTP status from [`Error::status`].

use std::time::Duration;

/// Result with the library's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request, option, name or file did not pass validation.
    #[error("{0}")]
    Invalid(String),

    #[error("no such volume: {0}")]
    NoSuchVolume(String),

    #[error("volume {name} already exists with different options ({existing}); remove it first or create it with the same options")]
    Conflict { name: String, existing: String },

    #[error("volume {name} is in use: mounted on {nodes}; unmount it there first")]
    InUse { name: String, nodes: String },

    /// A snapshot that cannot be made, changed or removed as asked (it exists, is being
    /// made or deleted elsewhere, or keeps its volume from being removed).
    #[error("{0}")]
    Snapshot(String),

    #[error("volume {volume} has no snapshot {snapshot}")]
    NoSuchSnapshot { volume: String, snapshot: String },

    #[error("volume {name} is exclusive and held by node {holder}, which is alive{}; it can be taken over {when}, or now with `caravan takeover {name} --force`", in_use.as_ref().map(|id| format!(", and a container there has it mounted (Docker mount ID {id}): stop that container first (one writer at a time: a Swarm service using it must be updated with --update-order stop-first). If {holder} is gone")).unwrap_or_default())]
    ExclusiveHeld {
        name: String,
        holder: String,
        when: String,
        /// The Docker mount ID of a container that has the volume mounted on the holder.
        in_use: Option<String>,
        /// How much more silence until the holder would be declared dead; `None` when this
        /// node judges nobody (it is cut off).
        dead_in: Option<Duration>,
    },

    /// An exclusive volume has one writer: another container has it mounted.
    #[error("volume {name} is exclusive (one writer at a time) and another container has it mounted on node {node} ({}Docker mount ID {id}); stop that container first: a Swarm service using it must be updated with --update-order stop-first. If no container uses it any more (dockerd lost track of it), release that mount on node {node} with `caravan umount {name} --id {id}`", container.as_ref().map(|c| format!("container {c}, ")).unwrap_or_default())]
    ExclusiveInUse {
        name: String,
        node: String,
        id: String,
        /// The container's name, when the node that refuses is the one it runs on.
        container: Option<String>,
    },

    #[error("volume {0} is not mounted on this node")]
    NotMounted(String),

    #[error("{what} did not finish within {}s; the shared export may be slow or unreachable", .after.as_secs())]
    Timeout { what: String, after: Duration },

    #[error("{what}: the shared export is not responding ({oldest} has been waiting {}s); try again once it answers (`caravan info` shows its state)", .waited.as_secs())]
    ExportStalled {
        what: String,
        oldest: String,
        waited: Duration,
    },

    /// The configured root no longer reaches this daemon's cluster: another export, or
    /// none, is mounted there (see [`crate::export::connection`]).
    #[error("{0}")]
    ExportReplaced(String),

    /// A filesystem refused a write: it is full, over quota or read-only. Reads keep
    /// working, and the call works again once it clears.
    #[error("{context}: {}", .refusal.explain())]
    WriteRefused {
        context: String,
        refusal: WriteRefusal,
    },

    /// A transient conflict between calls; trying again succeeds.
    #[error("{0}")]
    Busy(String),

    #[error("the daemon is shutting down; try again once it is back")]
    ShuttingDown,

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// A backup that cannot be made, read or deleted (the destination failed, or what it
    /// holds is damaged).
    #[error("{0}")]
    Backup(String),

    #[error("{0}")]
    NoSuchBackup(String),

    /// A job stopped at its caller's request (Ctrl-C, a DELETE of the job): what it was.
    #[error("the {0} was stopped")]
    Stopped(&'static str),

    #[error("metadata store: {0}")]
    Store(String),

    /// A panic was caught (in caravan, or in a library it uses, such as sled unwrapping an
    /// I/O error of a broken export): what was under way when it happened, and the panic's
    /// message and place. The outcome of the work is unknown.
    #[error("caravan failed inside while {0}; if this repeats, report it with the daemon's log (journalctl -u caravan)")]
    Internal(String),

    /// A control API route this daemon does not serve.
    #[error("no such endpoint: {0}; is the CLI newer than the daemon? (`caravan --version` and `caravan info` show both versions)")]
    NoSuchEndpoint(String),
}

impl Error {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }

    /// An I/O error with what was being done and to which path. A write the filesystem
    /// refused (full, over quota, read-only) is named as such, with what to do.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        match WriteRefusal::of(&source) {
            Some(refusal) => Error::WriteRefused {
                context: context.into(),
                refusal,
            },
            None => Error::Io {
                context: context.into(),
                source,
            },
        }
    }

    /// The HTTP status the control API answers this error with.
    pub fn status(&self) -> u16 {
        match self {
            Error::Invalid(_) => 400,
            Error::NoSuchVolume(_)
            | Error::NotMounted(_)
            | Error::NoSuchEndpoint(_)
            | Error::NoSuchBackup(_)
            | Error::NoSuchSnapshot { .. } => 404,
            Error::Conflict { .. }
            | Error::InUse { .. }
            | Error::Snapshot(_)
            | Error::ExclusiveHeld { .. }
            | Error::ExclusiveInUse { .. } => 409,
            Error::Timeout { .. }
            | Error::ShuttingDown
            | Error::Busy(_)
            | Error::ExportReplaced(_)
            | Error::ExportStalled { .. } => 503,
            Error::WriteRefused { refusal, .. } => refusal.status(),
            Error::Io { .. }
            | Error::Store(_)
            | Error::Internal(_)
            | Error::Backup(_)
            | Error::Stopped(_) => 500,
        }
    }
}

/// Why a filesystem refused a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteRefusal {
    /// `ENOSPC`
    Full,
    /// `EDQUOT`
    OverQuota,
    /// `EROFS`
    ReadOnly,
}

impl WriteRefusal {
    /// The refusal an I/O error is, if it is one.
    pub fn of(e: &std::io::Error) -> Option<WriteRefusal> {
        // std maps ENOSPC, EDQUOT and EROFS to these kinds.
        match e.kind() {
            std::io::ErrorKind::StorageFull => Some(WriteRefusal::Full),
            std::io::ErrorKind::QuotaExceeded => Some(WriteRefusal::OverQuota),
            std::io::ErrorKind::ReadOnlyFilesystem => Some(WriteRefusal::ReadOnly),
            _ => None,
        }
    }

    fn explain(self) -> &'static str {
        match self {
            WriteRefusal::Full => "the filesystem is full (ENOSPC): free space on it (or grow it), then try again (reads keep working meanwhile)",
            WriteRefusal::OverQuota => "the filesystem's quota for this user is used up (EDQUOT): raise the quota or free space on it, then try again (reads keep working meanwhile)",
            WriteRefusal::ReadOnly => "the filesystem is mounted read-only (EROFS): mount it read-write again, then try again (reads keep working meanwhile)",
        }
    }

    /// 507 Insufficient Storage for a full or over-quota filesystem, 503 for a read-only
    /// one (it is unavailable for writes until remounted).
    fn status(self) -> u16 {
        match self {
            WriteRefusal::Full | WriteRefusal::OverQuota => 507,
            WriteRefusal::ReadOnly => 503,
        }
    }
}

/// How much of a value from outside is ever echoed into an answer or the log.
const SHOWN_CHARS: usize = 40;

/// Quotes a value from a request or from the export for an error message: at most 40
/// characters, so that a megabyte of input is never echoed into answers and logs.
pub fn shown(s: &str) -> String {
    match cut(s) {
        std::borrow::Cow::Borrowed(s) => format!("{s:?}"),
        std::borrow::Cow::Owned(head) => format!("{head:?}… ({} bytes)", s.len()),
    }
}

/// The first 40 characters of a value from outside, unquoted (for log fields).
pub fn cut(s: &str) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(SHOWN_CHARS) {
        None => std::borrow::Cow::Borrowed(s),
        Some((end, _)) => std::borrow::Cow::Owned(s[..end].to_string()),
    }
}

/// Adds a context line to I/O results: `std::fs::read(p).ctx(|| format!("reading {p:?}"))`.
pub trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(context(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_writes_are_named_with_what_to_do() {
        let e = |errno| {
            Error::io(
                "creating /x/volumes/v",
                std::io::Error::from_raw_os_error(errno),
            )
        };
        let full = e(28 /* ENOSPC */);
        assert!(matches!(
            full,
            Error::WriteRefused {
                refusal: WriteRefusal::Full,
                ..
            }
        ));
        assert_eq!(full.status(), 507);
        let text = full.to_string();
        assert!(
            text.starts_with("creating /x/volumes/v: the filesystem is full (ENOSPC)"),
            "{text}"
        );
        assert!(e(122 /* EDQUOT */).to_string().contains("quota"));
        assert_eq!(e(122 /* EDQUOT */).status(), 507);
        let ro = e(30 /* EROFS */);
        assert!(ro.to_string().contains("read-only (EROFS)"), "{ro}");
        assert_eq!(ro.status(), 503);
        assert!(matches!(e(2 /* ENOENT */), Error::Io { .. }));
    }
}
