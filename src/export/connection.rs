//! The shared export's connection: noticing that it went away or was replaced, and coming
//! back to it.
//!
//! A FUSE client dies and is mounted again at the same path; an NFS server restarts and
//! every handle answers `ESTALE`; an operator unmounts the export and mounts it again. A
//! handle opened before that reaches the old connection: its calls fail for good (`ENOTCONN`,
//! `ESTALE`), or, after a lazy unmount, still reach a connection that is no longer what the
//! configured path names. Paths opened afresh work. So:
//!
//! - every opening below the root starts from [`Export::root`], which opens the configured
//!   path afresh and identifies the mount it resolves to (its mount id, held open so that
//!   the number cannot be given to another mount meanwhile). A mount other than the one
//!   last verified is used only once it is shown to hold the same cluster: the metadata
//!   store's id in `.caravan/store-id` (the store thread keeps that file equal to sled's
//!   own), read before anything is written through the new mount. The event is logged
//!   once and counted (`caravan info`, metrics);
//! - the handles the daemon keeps (the heartbeat folder, the node-name lock) are opened
//!   again from there when an operation on them fails with one of the errors of
//!   [`is_gone`], or when the root now resolves to another mount;
//! - a mount that is not the cluster's (another export, or the empty folder under an
//!   unmounted one) is refused, with what to do: caravan never creates its folders there,
//!   never writes a heartbeat there, and never bind-mounts from there.
//!
//! Bind mounts made from the old connection are checked where they are answered (see
//! `Service::mount`); containers that already use one keep it (their mount namespace has its
//! own copy), which docs/semantics.md says with what an operator does.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::core::error::{Error, Result};

/// Where the metadata store's id is kept beside sled, readable without the cluster lock.
pub const STORE_ID_FILE: &str = ".caravan/store-id";

/// A store id file larger than this is not one (ids are uuids).
const MAX_STORE_ID_BYTES: u64 = 128;

/// Whether an I/O error means that the handle's connection to the export is gone: the
/// FUSE client died (`ENOTCONN`, or `ECONNABORTED` once the kernel aborted the
/// connection), the NFS server no longer knows the handle (`ESTALE`), the device or
/// filesystem went away (`ENODEV`, `EIO`). The handle is opened again from the
/// configured path; the error itself says nothing about whether the export is back.
pub fn is_gone(e: &std::io::Error) -> bool {
    errno_is_gone(e.raw_os_error())
}

/// Whether `e` is an I/O error meaning that a handle's connection to the export is gone
/// (see [`is_gone`]): the handle is opened again from the path.
pub fn gone(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if is_gone(source))
}

fn errno_is_gone(errno: Option<i32>) -> bool {
    use nix::libc::{ECONNABORTED, EIO, ENODEV, ENOTCONN, ESTALE};
    matches!(errno, Some(ENOTCONN | ECONNABORTED | ESTALE | EIO | ENODEV))
}

/// Which mount a handle is on: the mount id the kernel shows in `/proc/self/fdinfo` (a new
/// one for every mount, also of the same export), or, without `/proc`, the device number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountId {
    Mount(u64),
    Device(u64),
}

impl MountId {
    /// The mount `file` is on. Reading `fdinfo` costs no round trip to the server.
    pub fn of(file: &File) -> std::io::Result<MountId> {
        let fdinfo = format!("/proc/self/fdinfo/{}", file.as_raw_fd());
        if let Ok(text) = std::fs::read_to_string(fdinfo) {
            if let Some(id) = parse_mnt_id(&text) {
                return Ok(MountId::Mount(id));
            }
        }
        use std::os::unix::fs::MetadataExt;
        Ok(MountId::Device(file.metadata()?.dev()))
    }
}

impl std::fmt::Display for MountId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MountId::Mount(id) => write!(f, "mount {id}"),
            MountId::Device(dev) => write!(f, "device {dev}"),
        }
    }
}

fn parse_mnt_id(fdinfo: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The export as this daemon reaches it: the configured root, the mount last verified to
/// hold this daemon's cluster, and the events of coming back to it.
#[derive(Debug)]
pub struct Export {
    root: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The metadata store's id, learned from sled by the first hold of the cluster lock.
    cluster: Option<String>,
    /// The root opened on the mount last verified, and that mount. Held open: a mount id
    /// is unique only among mounts that exist, and this keeps the old one existing.
    verified: Option<(File, MountId)>,
    /// The mount on which `.caravan/store-id` is known to hold `cluster`.
    store_id_file_on: Option<MountId>,
    /// Times this daemon came back to the export after losing it.
    reconnects: u64,
    last_reconnect: Option<(Instant, String)>,
    /// The last refusal logged (the same one is not logged again every round).
    refusal_logged: Option<String>,
}

/// What `caravan info` shows of the export's connection.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ConnectionReport {
    /// Times this daemon reopened its handles after the export went away or was replaced.
    pub reconnects: u64,
    /// Seconds since the last of them, and why it happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reconnect_secs_ago: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reconnect: Option<String>,
    /// Set while the configured root does not reach this daemon's cluster, with why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

impl Export {
    pub fn new(root: impl Into<PathBuf>) -> Export {
        Export {
            root: root.into(),
            state: Mutex::new(State::default()),
        }
    }

    pub fn root_path(&self) -> &Path {
        &self.root
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The root, opened afresh from the configured path, on a mount that holds this
    /// daemon's cluster. A mount other than the last one verified is checked first (its
    /// `.caravan/store-id`), logged and counted; one that holds another cluster, or that
    /// cannot be shown to hold this one, is refused with what to do.
    pub fn root(&self) -> Result<File> {
        let root =
            crate::export::beneath::open_root(&self.root).map_err(|e| self.unreachable(e))?;
        let mount = MountId::of(&root).map_err(|e| self.unreachable(e))?;
        let expected = {
            let mut st = self.state();
            match (&st.verified, &st.cluster) {
                (Some((_, m)), _) if *m == mount => return Ok(root),
                // Nothing learned yet (the daemon is starting): this is the mount.
                (_, None) => {
                    st.verified = Some((root.try_clone().map_err(|e| self.unreachable(e))?, mount));
                    return Ok(root);
                }
                (_, Some(cluster)) => cluster.clone(),
            }
        };
        // Read outside the state's lock: on a stalled export this blocks.
        let found = read_store_id(&root);
        let mut st = self.state();
        if st.verified.as_ref().is_some_and(|(_, m)| *m == mount) {
            return Ok(root);
        }
        let refusal = match found {
            Ok(id) if id == expected => None,
            Ok(id) => Some(format!(
                "the export mounted at {} now holds another cluster's metadata (store id {}, where this daemon serves {expected}): mount this cluster's export there again, or restart caravan to serve the one mounted now",
                self.root.display(),
                crate::core::error::shown(&id)
            )),
            Err(e) => Some(format!(
                "the filesystem now at {} cannot be shown to hold this daemon's cluster ({STORE_ID_FILE}: {e}): is the export mounted there? Mount it again; if it is the right one, restarting caravan serves it as it is",
                self.root.display()
            )),
        };
        if let Some(why) = refusal {
            if st.refusal_logged.as_deref() != Some(why.as_str()) {
                tracing::error!("{why}");
                st.refusal_logged = Some(why.clone());
            }
            return Err(Error::ExportReplaced(why));
        }
        let old = st.verified.as_ref().map(|(_, m)| *m);
        let why = format!(
            "the shared root {} now resolves to another mount ({} where it was on {}): the export was mounted again",
            self.root.display(),
            mount,
            old.map_or_else(|| "none".to_string(), |m| m.to_string())
        );
        tracing::warn!(
            store_id = %expected,
            "{why}; it holds the same cluster: reopening every handle from {}",
            self.root.display()
        );
        st.verified = Some((root.try_clone().map_err(|e| self.unreachable(e))?, mount));
        st.refusal_logged = None;
        note_reconnect(&mut st, why);
        Ok(root)
    }

    /// The error for a root that cannot be opened now (the export unmounted, its client
    /// dead): it says which, with what to do.
    fn unreachable(&self, e: std::io::Error) -> Error {
        let what_to_do = if is_gone(&e) {
            "its connection to the export is gone; mount the export there again (caravan comes back by itself)"
        } else {
            "is the export mounted there?"
        };
        Error::io(
            format!(
                "opening the shared root {} ({what_to_do})",
                self.root.display()
            ),
            e,
        )
    }

    /// A handle kept by `what` was opened again after its connection went away (`why`):
    /// logged once and counted with the other reconnects.
    pub fn reopened(&self, what: &str, why: &str) {
        let why = format!("{what} was opened again: {why}");
        tracing::warn!("{why}");
        note_reconnect(&mut self.state(), why);
    }

    /// The store id sled holds, read by a hold of the cluster lock on `mount`. The first
    /// one is this daemon's cluster; a different one later is another cluster's store,
    /// refused. `Ok(true)` when `.caravan/store-id` on `mount` is not yet known to hold
    /// the id (the caller checks it, and writes it under the lock when it does not).
    pub fn learn_cluster(&self, store_id: &str, mount: MountId) -> Result<bool> {
        let mut st = self.state();
        match &st.cluster {
            None => st.cluster = Some(store_id.to_string()),
            Some(c) if c == store_id => {}
            Some(c) => {
                return Err(Error::ExportReplaced(format!(
                    "the metadata store at {} has id {}, where this daemon serves {c}: another cluster's export is mounted there; mount this cluster's export again, or restart caravan to serve the one mounted now",
                    self.root.display(),
                    crate::core::error::shown(store_id)
                )))
            }
        }
        Ok(st.store_id_file_on != Some(mount))
    }

    /// `.caravan/store-id` on `mount` holds this daemon's cluster id (checked or written).
    pub fn store_id_file_holds_cluster(&self, mount: MountId) {
        self.state().store_id_file_on = Some(mount);
    }

    /// The store id of the cluster this daemon serves, once a hold has read it.
    pub fn cluster(&self) -> Option<String> {
        self.state().cluster.clone()
    }

    /// How many times this daemon came back to the export (a version that changes with
    /// every reconnect).
    pub fn reconnects(&self) -> u64 {
        self.state().reconnects
    }

    pub fn report(&self) -> ConnectionReport {
        let st = self.state();
        ConnectionReport {
            reconnects: st.reconnects,
            last_reconnect_secs_ago: st
                .last_reconnect
                .as_ref()
                .map(|(at, _)| at.elapsed().as_secs_f64()),
            last_reconnect: st.last_reconnect.as_ref().map(|(_, why)| why.clone()),
            refused: st.refusal_logged.clone(),
        }
    }
}

fn note_reconnect(st: &mut State, why: String) {
    st.reconnects += 1;
    st.last_reconnect = Some((Instant::now(), why));
}

/// Reads the store id kept in `.caravan/store-id` below `root`: a regular file (never a
/// device or FIFO another machine put there, never through a link) of at most 128 bytes,
/// holding one token.
pub fn read_store_id(root: &File) -> std::io::Result<String> {
    let (file, st) = crate::export::beneath::open_regular(root, Path::new(STORE_ID_FILE), 0)?;
    let len = crate::export::beneath::size_of(&st);
    let invalid = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, why);
    if len > MAX_STORE_ID_BYTES {
        return Err(invalid(format!("{len} bytes, more than a store id's")));
    }
    let mut text = String::new();
    file.take(MAX_STORE_ID_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| invalid(format!("not text: {e}")))?;
    let id = text.trim();
    if !crate::core::names::is_safe_token(id, 1, 64, false) {
        return Err(invalid(format!(
            "holds {}, not a store id",
            crate::core::error::shown(id)
        )));
    }
    Ok(id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_errors_are_told_apart_from_the_rest() {
        use nix::libc;
        // ENOTCONN on FUSE and ESTALE on NFS are the same event: the handle's connection
        // is gone. (No kernel NFS client here: the classification is what is tested.)
        for gone in [
            libc::ENOTCONN,
            libc::ECONNABORTED,
            libc::ESTALE,
            libc::EIO,
            libc::ENODEV,
        ] {
            assert!(is_gone(&std::io::Error::from_raw_os_error(gone)), "{gone}");
            let error = Error::io("reading x", std::io::Error::from_raw_os_error(gone));
            assert!(super::gone(&error), "{gone}");
        }
        for other in [
            libc::ENOENT,
            libc::EACCES,
            libc::ENOSPC,
            libc::EROFS,
            libc::EDQUOT,
            libc::ELOOP,
            libc::EAGAIN,
        ] {
            assert!(
                !is_gone(&std::io::Error::from_raw_os_error(other)),
                "{other}"
            );
        }
        assert!(!is_gone(&std::io::Error::other("no errno")));
    }

    #[test]
    fn fdinfo_gives_the_mount_id() {
        assert_eq!(
            parse_mnt_id("pos:\t0\nflags:\t012100000\nmnt_id:\t1187\nino:\t2\n"),
            Some(1187)
        );
        assert_eq!(parse_mnt_id("pos:\t0\n"), None);
        let dir = tempfile::tempdir().unwrap();
        let a = crate::export::beneath::open_root(dir.path()).unwrap();
        let b = crate::export::beneath::open_root(dir.path()).unwrap();
        assert_eq!(MountId::of(&a).unwrap(), MountId::of(&b).unwrap());
        assert!(matches!(MountId::of(&a).unwrap(), MountId::Mount(_)));
    }

    fn root_with_store_id(id: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".caravan")).unwrap();
        std::fs::write(dir.path().join(STORE_ID_FILE), format!("{id}\n")).unwrap();
        dir
    }

    #[test]
    fn the_store_id_file_is_read_only_when_regular_small_and_a_token() {
        let dir = root_with_store_id("abc-123");
        let root = crate::export::beneath::open_root(dir.path()).unwrap();
        assert_eq!(read_store_id(&root).unwrap(), "abc-123");
        let path = dir.path().join(STORE_ID_FILE);
        std::fs::write(&path, "x".repeat(200)).unwrap();
        assert!(read_store_id(&root).is_err());
        std::fs::write(&path, "two words").unwrap();
        assert!(read_store_id(&root).is_err());
        std::fs::remove_file(&path).unwrap();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let e = read_store_id(&root).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(nix::libc::ELOOP), "{e}");
        std::fs::remove_file(&path).unwrap();
        std::fs::write(dir.path().join("elsewhere"), "abc-123").unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), &path).unwrap();
        assert!(read_store_id(&root).is_err(), "a link is never followed");
    }

    #[test]
    fn a_new_mount_is_used_only_once_it_holds_the_same_cluster() {
        let dir = root_with_store_id("cluster-a");
        let export = Export::new(dir.path());
        // Starting: whatever is mounted is the cluster's until a hold learns its id.
        export.root().unwrap();
        assert!(export
            .learn_cluster("cluster-a", MountId::Mount(1))
            .unwrap());
        export.store_id_file_holds_cluster(MountId::Mount(1));
        assert!(!export
            .learn_cluster("cluster-a", MountId::Mount(1))
            .unwrap());
        assert_eq!(export.reconnects(), 0);
        // Another store id from sled is another cluster.
        let e = export
            .learn_cluster("cluster-b", MountId::Mount(1))
            .unwrap_err();
        assert!(e.to_string().contains("cluster-b"), "{e}");

        // The same path, another mount (a tmpfs mounted over it, as a remount would be):
        // only root can mount, so this part needs root.
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED (part): remounting needs root");
            return;
        }
        let over = tempfile::tempdir().unwrap();
        let mnt = over.path().join("root");
        std::fs::create_dir(&mnt).unwrap();
        let export = Export::new(&mnt);
        std::fs::create_dir(mnt.join(".caravan")).unwrap();
        std::fs::write(mnt.join(STORE_ID_FILE), "cluster-a").unwrap();
        export.root().unwrap();
        export
            .learn_cluster("cluster-a", MountId::Mount(1))
            .unwrap();
        struct Unmount<'a>(&'a Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = sys_mount::unmount(self.0, sys_mount::UnmountFlags::DETACH);
            }
        }
        sys_mount::Mount::builder()
            .fstype("tmpfs")
            .mount("caravan-test", &mnt)
            .unwrap();
        let _unmount = Unmount(&mnt);
        let e = export.root().unwrap_err().to_string();
        assert!(e.contains("is the export mounted there"), "{e}");
        assert_eq!(export.reconnects(), 0);
        assert!(export.report().refused.is_some());
        std::fs::create_dir(mnt.join(".caravan")).unwrap();
        std::fs::write(mnt.join(STORE_ID_FILE), "cluster-b").unwrap();
        let e = export.root().unwrap_err().to_string();
        assert!(e.contains("another cluster"), "{e}");
        std::fs::write(mnt.join(STORE_ID_FILE), "cluster-a").unwrap();
        export.root().unwrap();
        assert_eq!(export.reconnects(), 1);
        let report = export.report();
        assert!(report.refused.is_none(), "{report:?}");
        assert!(
            report
                .last_reconnect
                .as_deref()
                .unwrap()
                .contains("another mount"),
            "{report:?}"
        );
        // The same mount again: nothing to verify, nothing counted.
        export.root().unwrap();
        assert_eq!(export.reconnects(), 1);
    }
}
