//! The cluster lock: one exclusive OFD lock on `<root>/.caravan/lock`, shared by every node.
//!
//! Why OFD locks: classic POSIX (`F_SETLK`) locks belong to the process, so two threads of
//! one daemon would share them and closing any descriptor of the file drops them. OFD
//! locks belong to the open file description, work across hosts on NFS and GlusterFS, and
//! are released by the kernel when the holder dies.
//!
//! Why `F_OFD_SETLKW` and not a polling loop: waiters queue on the lock instead of racing
//! each other, which keeps three busy nodes fair (Convoy's non-blocking `flock` failed
//! instead of waiting). The wait is bounded: a watchdog interrupts the blocked `fcntl` with
//! `SIGUSR1` at the deadline, so a call never hangs on a lock that is not coming back.

use std::fs::File;
use std::path::Path;
use std::sync::mpsc;
use std::sync::Once;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};
use nix::libc;
use nix::sys::pthread::{pthread_kill, pthread_self};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

use crate::core::error::{Error, Result};

/// Signal used to interrupt a blocked lock wait. The handler does nothing; it exists so the
/// signal interrupts `fcntl` with `EINTR` (no `SA_RESTART`) instead of killing the process.
const WAKE_SIGNAL: Signal = Signal::SIGUSR1;

/// A held cluster lock. Dropping it closes the descriptor, which releases the lock.
#[derive(Debug)]
pub struct ClusterLock {
    file: File,
}

impl ClusterLock {
    /// Takes the exclusive lock on `path`, waiting at most until `deadline`.
    pub fn acquire(path: &Path, deadline: Instant) -> Result<ClusterLock> {
        Self::acquire_at(path, path, deadline)
    }

    /// Like [`ClusterLock::acquire`], opening the file at `at` (a shorter way to the same
    /// file, see [`crate::export::layout::SharedLayout::at`]); messages name `path`.
    pub fn acquire_at(path: &Path, at: &Path, deadline: Instant) -> Result<ClusterLock> {
        install_wake_handler();
        let file = open_lock_file(path, at, "the cluster lock")?;
        let lock = exclusive_whole_file();
        // Fast path: an uncontended lock needs no watchdog thread.
        match try_lock_exclusive(&file) {
            Ok(true) => return Ok(ClusterLock { file }),
            Ok(false) => {}
            Err(e) => return Err(lock_error(path, e)),
        }
        let watchdog = Watchdog::arm(deadline);
        let result = loop {
            match fcntl(&file, FcntlArg::F_OFD_SETLKW(&lock)) {
                Ok(_) => break Ok(()),
                Err(Errno::EINTR) if Instant::now() < deadline => continue,
                Err(Errno::EINTR) => {
                    break Err(Error::Timeout {
                        what: format!("waiting for the cluster lock {}", path.display()),
                        after: watchdog.waited(),
                    })
                }
                Err(e) => break Err(lock_error(path, e)),
            }
        };
        drop(watchdog);
        result.map(|()| ClusterLock { file })
    }

    /// Releases the lock explicitly (dropping does the same).
    pub fn release(self) {
        drop(self.file);
    }
}

fn lock_error(path: &Path, e: Errno) -> Error {
    let hint = match e {
        Errno::ENOLCK => {
            "; the filesystem does not support locks (an NFS export mounted with nolock?)"
        }
        Errno::EINVAL => "; the filesystem does not support OFD locks",
        _ => "",
    };
    Error::io(
        format!("locking {}{hint}", path.display()),
        std::io::Error::from_raw_os_error(e as i32),
    )
}

/// Opens (creating it if needed) a lock file on the export, reached at `at` and named
/// `path` in messages. The export is written by other machines: what is there is looked
/// at before it is opened ([`crate::export::beneath::open_or_create_regular`]), so a link is never
/// followed and a device or FIFO planted there is never opened, only refused.
pub fn open_lock_file(path: &Path, at: &Path, what: &str) -> Result<File> {
    match crate::export::beneath::open_or_create_regular(at, libc::O_NONBLOCK, 0o600) {
        Ok((file, _)) => Ok(file),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Err(Error::invalid(format!(
            "{} is not a regular file (a link, a device or a FIFO put there by another machine?); remove it so that caravan can take {what}",
            path.display()
        ))),
        Err(e) => Err(Error::io(format!("opening {what} {}", path.display()), e)),
    }
}

/// Tries to take an exclusive OFD lock on the whole of `file` without waiting: `Ok(true)`
/// when taken, `Ok(false)` when another open file description holds it (on this host or,
/// on a shared filesystem, on another).
pub fn try_lock_exclusive(file: &File) -> nix::Result<bool> {
    match fcntl(file, FcntlArg::F_OFD_SETLK(&exclusive_whole_file())) {
        Ok(_) => Ok(true),
        Err(Errno::EAGAIN | Errno::EACCES) => Ok(false),
        Err(e) => Err(e),
    }
}

fn exclusive_whole_file() -> libc::flock {
    // SAFETY: flock is a plain C struct; all-zero is a valid value (l_pid must be 0 for OFD).
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as _;
    lock.l_whence = libc::SEEK_SET as _;
    lock.l_start = 0;
    lock.l_len = 0;
    lock
}

fn install_wake_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        extern "C" fn wake(_: libc::c_int) {}
        let action = SigAction::new(SigHandler::Handler(wake), SaFlags::empty(), SigSet::empty());
        // SAFETY: the handler is async-signal-safe (it does nothing).
        if let Err(e) = unsafe { sigaction(WAKE_SIGNAL, &action) } {
            tracing::error!("cannot install the lock wait handler: {e}");
        }
    });
}

/// Interrupts the thread that armed it once the deadline passes, and keeps doing so every
/// 50 ms (a signal sent just before the thread enters `fcntl` would otherwise be lost).
struct Watchdog {
    started: Instant,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn arm(deadline: Instant) -> Watchdog {
        let target = pthread_self();
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("caravan-lock-watchdog".into())
            .spawn(move || {
                let mut wait = deadline.saturating_duration_since(Instant::now());
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(wait) {
                    let _ = pthread_kill(target, WAKE_SIGNAL);
                    wait = Duration::from_millis(50);
                }
            })
            .ok();
        Watchdog {
            started: Instant::now(),
            stop: Some(stop),
            thread,
        }
    }

    fn waited(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Stop the watchdog before returning, so that no stray signal reaches this thread later.
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_waits_then_gets_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let first = ClusterLock::acquire(&path, Instant::now() + Duration::from_secs(1)).unwrap();
        let p = path.clone();
        let waiter = std::thread::spawn(move || {
            let t = Instant::now();
            let l = ClusterLock::acquire(&p, Instant::now() + Duration::from_secs(5)).unwrap();
            drop(l);
            t.elapsed()
        });
        std::thread::sleep(Duration::from_millis(200));
        first.release();
        let waited = waiter.join().unwrap();
        assert!(
            waited >= Duration::from_millis(150),
            "the waiter did not wait: {waited:?}"
        );
        assert!(
            waited < Duration::from_secs(2),
            "the waiter was not woken: {waited:?}"
        );
    }

    #[test]
    fn a_planted_fifo_or_device_is_refused_without_being_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        // A reader blocked on the FIFO's other end returns as soon as anyone opens it for
        // writing (O_RDWR included): it must still be blocked after the refusal.
        let (tx, opened) = mpsc::channel();
        let fifo = path.clone();
        std::thread::spawn(move || {
            let _ = std::fs::File::open(&fifo);
            let _ = tx.send(());
        });
        let e = ClusterLock::acquire(&path, Instant::now() + Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not a regular file") && e.contains("remove it"),
            "{e}"
        );
        assert!(
            opened.recv_timeout(Duration::from_millis(300)).is_err(),
            "the FIFO planted at the lock was opened"
        );
        // Let the reader go.
        drop(std::fs::OpenOptions::new().write(true).open(&path));
    }

    #[test]
    fn wait_is_bounded_by_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let _held = ClusterLock::acquire(&path, Instant::now() + Duration::from_secs(1)).unwrap();
        let p = path.clone();
        let t = Instant::now();
        let err = std::thread::spawn(move || {
            ClusterLock::acquire(&p, Instant::now() + Duration::from_millis(300)).unwrap_err()
        })
        .join()
        .unwrap();
        let took = t.elapsed();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        assert!(
            took >= Duration::from_millis(280) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }
}
