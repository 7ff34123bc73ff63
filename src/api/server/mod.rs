//! The daemon's socket: one listener serves both Docker's plugin API (`/Plugin.Activate`,
//! `/VolumeDriver.*`, see [`crate::api::plugin`]) and the control API the CLI uses (`/v1/...`,
//! see [`crate::api::control`]).
//!
//! - this module binds the socket, refusing to replace anything but a stale socket;
//! - [`listener`] accepts and serves connections within limits (connections, header and
//!   idle timeout, body size): anything on the host can connect;
//! - [`routes`] is the one warp filter that dispatches each request.

mod listener;
mod routes;
mod scrape;

pub use listener::{
    fd_budget, handshake_slots, serve, Accept, Accepted, Limits, Peer, PlainTcp, MAX_BODY,
    RESERVED_FDS,
};
pub use routes::{metrics_routes, routes};

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use tokio::net::UnixListener;

use crate::core::error::{Error, IoContext, Result};

/// Binds the unix socket, refusing to steal it from a running daemon and replacing a stale
/// file left by one that died. Mode 0600 (root only), or 0660 with `group` as its group:
/// members may then connect, and read (see [`Peer`]).
pub fn bind_socket(path: &Path, group: Option<u32>) -> Result<UnixListener> {
    check_socket_path(path)?;
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .ctx(|| format!("creating {}", dir.display()))?;
    }
    if std::fs::symlink_metadata(path).is_ok() {
        // check_socket_path made sure it is a socket that nobody serves.
        std::fs::remove_file(path)
            .ctx(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path).ctx(|| format!("binding {}", path.display()))?;
    // Root only: the API can mount and delete volumes. With a group, its members may
    // connect too, and are answered read-only calls only.
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid))
            .ctx(|| format!("setting the group of {}", path.display()))?;
    }
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .ctx(|| format!("setting the mode of {}", path.display()))?;
    Ok(listener)
}

/// Checks `--socket` before anything is started or deleted: an absolute path short enough
/// for a unix socket, and where something is already there, a socket that no daemon
/// serves (a stale one, which [`bind_socket`] replaces). Anything else is refused and left
/// alone.
pub fn check_socket_path(path: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::FileTypeExt;
    // sun_path holds 108 bytes with the terminating NUL.
    const MAX: usize = 107;
    let bytes = path.as_os_str().as_bytes().len();
    if !path.is_absolute() || bytes > MAX || path.file_name().is_none() {
        return Err(Error::invalid(format!(
            "invalid --socket {}: use an absolute path of at most {MAX} bytes ending in a file name, for example /run/caravan/caravan.sock",
            path.display()
        )));
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("inspecting {}", path.display()), e)),
        Ok(m) if !m.file_type().is_socket() => Err(Error::invalid(format!(
            "--socket {} exists and is not a socket; refusing to replace it: remove it or pass another --socket",
            path.display()
        ))),
        Ok(_) if std::os::unix::net::UnixStream::connect(path).is_ok() => {
            Err(Error::invalid(format!(
                "another caravan daemon is already serving {}; stop it first or pass another --socket",
                path.display()
            )))
        }
        Ok(_) => Ok(()),
    }
}
