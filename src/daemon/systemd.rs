//! systemd integration: socket activation and readiness notification (both through the
//! `sd-notify` crate, which reads `LISTEN_FDS`/`LISTEN_PID` as sd_listen_fds(3) does and
//! speaks the `NOTIFY_SOCKET` protocol of sd_notify(3)).
//!
//! With `etc/systemd/caravan.socket`, systemd listens on the plugin socket before caravan
//! runs: a dockerd that starts first connects, and its call waits in the socket's backlog
//! until caravan serves, instead of failing. With `Type=notify`, systemd counts caravan as
//! started (and starts `docker.service`, ordered after it) only once its store is open
//! and it serves: READY=1 then, STOPPING=1 when it begins to shut down.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use nix::sys::socket::{getsockopt, sockopt};

use crate::core::error::{Error, Result};

/// The listening socket systemd passed, with the path it listens on; `None` when the
/// daemon was not socket-activated. The variables are unset, so that nothing the daemon
/// starts later takes the socket for its own.
pub fn activated_socket() -> Result<Option<(UnixListener, PathBuf)>> {
    let bad = |why: String| {
        Error::invalid(format!(
            "socket activation: {why}; caravan takes one ListenStream= unix socket (etc/systemd/caravan.socket)"
        ))
    };
    let fds: Vec<i32> = sd_notify::listen_fds()
        .map_err(|e| bad(e.to_string()))?
        .collect();
    let fd = match fds.as_slice() {
        [] => return Ok(None),
        [fd] => *fd,
        more => return Err(bad(format!("systemd passed {} sockets", more.len()))),
    };
    // SAFETY: systemd passed this descriptor to this process (LISTEN_PID is ours) for it
    // to own; nothing else in the process knows of it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let stream = getsockopt(&owned, sockopt::SockType)
        .map_err(|e| bad(format!("descriptor {fd} is not a socket ({e})")))?;
    let listening = getsockopt(&owned, sockopt::AcceptConn).unwrap_or(false);
    if stream != nix::sys::socket::SockType::Stream || !listening {
        return Err(bad(format!(
            "descriptor {fd} is not a listening stream socket (ListenDatagram= or Accept=yes?)"
        )));
    }
    let listener = UnixListener::from(owned);
    let path = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(PathBuf::from))
        .ok_or_else(|| bad(format!("descriptor {fd} is not a unix socket with a path")))?;
    // systemd creates it with SocketMode= (0666 unless set): the API can mount and delete
    // volumes, so say so when others may connect.
    if let Ok(meta) = std::fs::metadata(&path) {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(socket = %path.display(), "the socket systemd passed has mode {mode:04o}: users other than root can call the API; set SocketMode=0600 in caravan.socket");
        }
    }
    Ok(Some((listener, path)))
}

/// READY=1: the store is open and the socket is served.
pub fn notify_ready(status: &str) {
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ]);
}

/// The start goes on for `wait` more, and why (STATUS=, EXTEND_TIMEOUT_USEC=): a start that
/// must wait is not taken for a hung one and killed at TimeoutStartSec.
pub fn notify_waiting(status: &str, wait: std::time::Duration) {
    // A little more than the wait: the start's own work follows it.
    let usec = wait
        .saturating_add(std::time::Duration::from_secs(30))
        .as_micros();
    notify(&[
        sd_notify::NotifyState::Status(status),
        sd_notify::NotifyState::ExtendTimeoutUsec(u32::try_from(usec).unwrap_or(u32::MAX)),
    ]);
}

/// STOPPING=1: shutdown has begun.
pub fn notify_stopping() {
    notify(&[sd_notify::NotifyState::Stopping]);
}

fn notify(state: &[sd_notify::NotifyState]) {
    // Without NOTIFY_SOCKET (not run by systemd) this does nothing.
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!("telling systemd ({state:?}): {e}");
    }
}
