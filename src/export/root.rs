//! Checks of the shared root at start: that caravan can work on it, and whether it is
//! shared at all.
//!
//! Each problem a user can meet gets one line that says what is wrong and what to change:
//! a root that is missing or not a folder, an export that squashes root so the daemon
//! cannot write `.caravan`, locks that do not work or are not shared between hosts
//! (`nolock`, `local_lock=`), and a plain local filesystem (a warning: fine on one host,
//! but volumes are not shared).

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::core::error::{Error, Result};
use crate::export::layout::SharedLayout;
use crate::export::lock::ClusterLock;
use crate::export::mounts::MountEntry;

/// What the check found; shown by `caravan info`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RootInfo {
    /// Filesystem type as the kernel names it in mountinfo (`nfs4`, `fuse.glusterfs`, …).
    pub fs_type: String,
    /// What is mounted there (`server:/export`, a device).
    pub source: String,
    /// Whether the filesystem type is one that other hosts can share.
    pub shared: bool,
    /// Its mount options (per mount and per superblock).
    pub options: String,
}

/// Filesystem types that several hosts can mount at once.
const SHARED_TYPES: &[&str] = &[
    "nfs",
    "nfs4",
    "fuse.glusterfs",
    "glusterfs",
    "ceph",
    "fuse.ceph",
    "fuse.ceph-fuse",
    "cifs",
    "smb3",
    "lustre",
    "gpfs",
    "beegfs",
    "ocfs2",
    "gfs2",
    "fuse.juicefs",
    "fuse.sshfs",
];

/// Runs every check. `init` (creating the control folders) is part of it, because that is
/// the write that a root-squashed export refuses.
pub fn check(layout: &SharedLayout, node: &str, lock_wait: Duration) -> Result<RootInfo> {
    let root = &layout.root;
    let mount = mount_of_root(root)?;
    refuse_local_locks(root, &mount)?;
    let info = RootInfo {
        shared: SHARED_TYPES.contains(&mount.fs_type.as_str()),
        fs_type: mount.fs_type,
        source: mount.source,
        options: mount.options,
    };
    layout.init().map_err(|e| explain_write_error(root, e))?;
    // Every call below reaches the export through folders opened without following a
    // link (the probe through `nodes`, the lock through `.caravan`); the names themselves
    // with O_EXCL | O_NOFOLLOW.
    let pinned = layout.pinned()?;
    let probe = layout.nodes_dir().join(format!(".probe-{node}"));
    let nodes = crate::export::beneath::open_root(root)
        .and_then(|r| crate::export::beneath::open_dir(r, Path::new(".caravan/nodes")))
        .map_err(|e| crate::export::beneath::refused_or_io(&layout.nodes_dir(), e))?;
    let probe_at = crate::export::beneath::proc_path(&nodes).join(format!(".probe-{node}"));
    let _ = std::fs::remove_file(&probe_at);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(&probe_at)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"caravan write check\n"))
        .and_then(|()| std::fs::remove_file(&probe_at))
        .map_err(|e| {
            explain_write_error(root, Error::io(format!("writing {}", probe.display()), e))
        })?;
    let lock_file = layout.lock_file();
    match ClusterLock::acquire_at(&lock_file, &pinned.at(&lock_file), Instant::now() + lock_wait) {
        Ok(lock) => lock.release(),
        Err(Error::Io { source, .. }) if source.raw_os_error() == Some(nix::libc::ENOLCK) => {
            return Err(Error::invalid(format!(
                "locks do not work on the shared root {} (ENOLCK): on NFS, mount without `nolock` and make sure the server runs its lock service (NFSv4 includes it)",
                root.display()
            )))
        }
        Err(Error::Timeout { .. }) => {
            // Another node holding the lock that long is a stalled cluster, not a root that
            // cannot lock: start, and let calls report it.
            tracing::warn!(root = %root.display(), "the cluster lock is held by another node for over {}s; starting anyway", lock_wait.as_secs());
        }
        Err(e) => return Err(e),
    }
    if !info.shared {
        tracing::warn!(
            root = %root.display(),
            fs_type = %info.fs_type,
            "the shared root is a local filesystem: volumes will not be shared with other hosts (pass --root on an NFS/GlusterFS/CephFS mount, or --nfs SERVER:/EXPORT)"
        );
    }
    Ok(info)
}

/// The mount the root is on, from `/proc/self/mountinfo`.
fn mount_of_root(root: &Path) -> Result<MountEntry> {
    let meta = std::fs::metadata(root).map_err(|e| {
        let what_to_do = match e.raw_os_error().map(nix::errno::Errno::from_raw) {
            // A network filesystem whose server is gone or restarted under it.
            Some(nix::errno::Errno::ENOTCONN | nix::errno::Errno::ESTALE | nix::errno::Errno::EIO) => {
                "its filesystem's server does not answer; check the export and this host's mount of it"
            }
            _ => "create it, or mount the export there first",
        };
        Error::invalid(format!(
            "the shared root {} is not accessible ({e}): {what_to_do}",
            root.display()
        ))
    })?;
    if !meta.is_dir() {
        return Err(Error::invalid(format!(
            "the shared root {} is not a directory",
            root.display()
        )));
    }
    let resolved = std::fs::canonicalize(root)
        .map_err(|e| Error::io(format!("resolving {}", root.display()), e))?;
    let table = crate::export::mounts::mount_table()?;
    crate::export::mounts::mount_of(&table, &resolved)
        .cloned()
        .ok_or_else(|| {
            Error::invalid(format!(
                "no mount found for {} in /proc/self/mountinfo",
                resolved.display()
            ))
        })
}

/// NFS mounted with `nolock` or `local_lock=all|posix` takes locks on the client only:
/// two hosts could both "hold" the cluster lock and write the metadata at once.
fn refuse_local_locks(root: &Path, mount: &MountEntry) -> Result<()> {
    if !mount.fs_type.starts_with("nfs") {
        return Ok(());
    }
    local_lock_problem(&mount.options).map_or(Ok(()), |what| {
        Err(Error::invalid(format!(
            "the shared root {} is mounted with {what}: locks are not shared between hosts, so two hosts could change the metadata at once; remount it without nolock and with local_lock=none",
            root.display()
        )))
    })
}

/// The mount option that makes locks local, if any.
pub fn local_lock_problem(options: &str) -> Option<String> {
    options.split(',').find_map(|o| match o {
        "nolock" => Some("nolock".to_string()),
        "local_lock=all" | "local_lock=posix" => Some(o.to_string()),
        _ => None,
    })
}

/// A root-squashed export refuses root's writes with EACCES or EPERM.
fn explain_write_error(root: &Path, e: Error) -> Error {
    match &e {
        Error::Io { source, .. }
            if matches!(
                source.kind(),
                std::io::ErrorKind::PermissionDenied
            ) || source.raw_os_error() == Some(nix::libc::EPERM) =>
        {
            Error::invalid(format!(
                "cannot write to the shared root {} as uid {} ({e}): if it is an NFS export that squashes root, export it with no_root_squash (or make {} writable by this user)",
                root.display(),
                nix::unistd::geteuid(),
                root.display()
            ))
        }
        Error::WriteRefused {
            refusal: crate::core::error::WriteRefusal::ReadOnly,
            ..
        } => Error::invalid(format!(
            "the shared root {} is read-only ({e}): caravan keeps its metadata there and needs it writable",
            root.display()
        )),
        _ => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_locks_are_found() {
        assert_eq!(
            local_lock_problem("rw,nolock,vers=3"),
            Some("nolock".into())
        );
        assert_eq!(
            local_lock_problem("rw,local_lock=posix"),
            Some("local_lock=posix".into())
        );
        assert_eq!(local_lock_problem("rw,local_lock=flock"), None);
    }

    #[test]
    fn a_temporary_folder_is_local_and_passes_the_checks() {
        let dir = tempfile::tempdir().unwrap();
        let layout = SharedLayout::new(dir.path());
        let info = check(&layout, "n1", Duration::from_secs(2)).unwrap();
        assert!(!info.shared, "{info:?}");
        assert!(!info.fs_type.is_empty());
    }

    #[test]
    fn a_missing_root_or_a_file_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let missing = SharedLayout::new(dir.path().join("nope"));
        let e = check(&missing, "n1", Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not accessible") && e.contains("mount the export"),
            "{e}"
        );
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let e = check(&SharedLayout::new(&file), "n1", Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a directory"), "{e}");
    }
}
