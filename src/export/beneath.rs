//! Opening paths under the shared root without ever following a symlink.
//!
//! Other machines can write the export, and caravan runs as root: a symlink planted at
//! `.caravan/trash`, `volumes/<name>` or a temporary name would otherwise turn a delete,
//! a chmod, a write or a bind mount into one on this host's own files. So a path under
//! the root is opened relative to a directory handle with `openat2` and
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS` (the kernel refuses any
//! link, `..` escape or absolute component), or, on kernels without `openat2` (before
//! 5.6), one component at a time with `O_NOFOLLOW`. The root itself is the operator's
//! configured path and is opened as given.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

/// Opens `rel` (relative, without `..`) below the directory `dir` with `flags` (plus
/// `O_CLOEXEC`), refusing every symlink on the way and at the end. A link anywhere fails
/// with `ELOOP` (or `EXDEV`/`ENOTDIR`), never followed.
pub fn open(dir: impl AsFd, rel: &Path, flags: OFlag, mode: Mode) -> std::io::Result<File> {
    check_relative(rel)?;
    let flags = flags | OFlag::O_CLOEXEC;
    let how = OpenHow::new().flags(flags).mode(mode).resolve(
        ResolveFlag::RESOLVE_BENEATH
            | ResolveFlag::RESOLVE_NO_SYMLINKS
            | ResolveFlag::RESOLVE_NO_MAGICLINKS,
    );
    let fd = match openat2(dir.as_fd(), rel, how) {
        // Without openat2 (before Linux 5.6), or with it filtered out by a seccomp policy.
        Err(Errno::ENOSYS | Errno::EPERM) => by_components(dir, rel, flags, mode)?,
        r => r.map_err(std::io::Error::from)?,
    };
    Ok(File::from(fd))
}

/// Opens a directory `rel` below `dir` as an `O_PATH` handle (for `/proc/self/fd` paths,
/// `fchown`-style calls through them, and bind mounts).
pub fn open_dir(dir: impl AsFd, rel: &Path) -> std::io::Result<File> {
    open(dir, rel, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty())
}

/// Opens the regular file `rel` below `dir` for reading, with `flags` added (`O_DIRECT`,
/// for one), refusing links as [`open`] does: the one way caravan reads a file below a
/// root another machine writes (the export, a backup folder). It is looked at through
/// `O_PATH` first and opened for reading only when it is a regular file: opening a device
/// node another machine put there could act on the device, and a FIFO could block
/// (`ELOOP` then, as for a link in the way). The reading handle is the inode looked at,
/// reopened through its handle, never the name again. Returns the file with what `fstat`
/// said of it when it was looked at.
///
/// Files other machines replace by renaming a new one over them (heartbeats, every
/// interval) can be replaced between the look and the open: the open of the old inode
/// then fails with `ESTALE` (NFS: the name now leads to another file) or `ENOENT`
/// (GlusterFS: the old file is gone). That is not the export going away, so the name is
/// looked at again, a few times, before the error is returned.
pub fn open_regular(
    dir: impl AsFd,
    rel: &Path,
    flags: i32,
) -> std::io::Result<(File, nix::sys::stat::FileStat)> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut tries = 0;
    loop {
        let at = open(&dir, rel, OFlag::O_PATH, Mode::empty())?;
        let st = nix::sys::stat::fstat(at.as_fd())?;
        if st.st_mode & nix::libc::S_IFMT != nix::libc::S_IFREG {
            return Err(std::io::Error::from_raw_os_error(nix::libc::ELOOP));
        }
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
            .open(proc_path(&at));
        match opened {
            Ok(file) => return Ok((file, st)),
            Err(e)
                if tries < REPLACED_TRIES
                    && matches!(
                        e.raw_os_error(),
                        Some(nix::libc::ESTALE | nix::libc::ENOENT)
                    ) =>
            {
                tries += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// How many times [`open_regular`] looks again at a name whose file was replaced between
/// its look and its open.
const REPLACED_TRIES: u32 = 8;

/// The size `fstat` gave, as a length; a negative one (nothing a file system returns, but
/// read from another machine's server) as the largest, so that every limit refuses it.
pub fn size_of(st: &nix::sys::stat::FileStat) -> u64 {
    u64::try_from(st.st_size).unwrap_or(u64::MAX)
}

/// Opens the regular file at `at` for reading and writing (with `flags` added), creating it
/// with `mode` when it is missing. `at` is reached through an open folder (a
/// `/proc/self/fd/N/name` path of a folder opened below the root); its last component is
/// never followed. What is there is looked at through `O_PATH` first and opened only when
/// it is a regular file: a device node another machine put there is never opened
/// (opening one can act on the device: a watchdog arms, a tape rewinds), a FIFO never
/// blocks, a link is never followed. Anything else fails with `ELOOP`, as a link in the
/// way does for [`open`]. Returns the file and whether this call created it.
pub fn open_or_create_regular(at: &Path, flags: i32, mode: u32) -> std::io::Result<(File, bool)> {
    use nix::libc::{O_CLOEXEC, O_NOFOLLOW, O_PATH};
    use std::os::unix::fs::OpenOptionsExt;
    // Another node creating or replacing the file between our look and our open: look
    // again, a few times.
    for _ in 0..8 {
        let look = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(O_PATH | O_NOFOLLOW | O_CLOEXEC)
            .open(at);
        match look {
            Ok(handle) => {
                if !handle.metadata()?.is_file() {
                    return Err(std::io::Error::from_raw_os_error(nix::libc::ELOOP));
                }
                // The inode looked at, reopened through its handle: not the name again.
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(flags | O_CLOEXEC)
                    .open(proc_path(&handle))?;
                return Ok((file, false));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let made = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .custom_flags(flags | O_NOFOLLOW | O_CLOEXEC)
                    .open(at);
                match made {
                    Ok(file) => return Ok((file, true)),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other(format!(
        "{} kept being created and removed while it was opened",
        at.display()
    )))
}

/// What kind of entry is at `at` (not followed), for a message.
pub fn entry_kind(at: &Path) -> String {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(at).map(|m| m.file_type()) {
        Ok(t) if t.is_symlink() => "a symbolic link".into(),
        Ok(t) if t.is_dir() => "a folder".into(),
        Ok(t) if t.is_block_device() => "a block device".into(),
        Ok(t) if t.is_char_device() => "a character device".into(),
        Ok(t) if t.is_fifo() => "a FIFO".into(),
        Ok(t) if t.is_socket() => "a socket".into(),
        Ok(_) => "a file".into(),
        Err(e) => format!("unreadable ({e})"),
    }
}

/// Opens the root (a configured, trusted path) as a directory handle.
pub fn open_root(root: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_PATH | nix::libc::O_DIRECTORY | nix::libc::O_CLOEXEC)
        .open(root)
}

/// The path through `/proc/self/fd` that reaches an open file (or `O_PATH` handle) from
/// this process, while it is open: the one place such a path is made.
pub fn proc_path(file: &impl std::os::fd::AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

fn check_relative(rel: &Path) -> std::io::Result<()> {
    let ok =
        rel.components().count() > 0 && rel.components().all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not a plain relative path", rel.display()),
        ))
    }
}

/// The fallback without `openat2`: each directory with `O_NOFOLLOW | O_DIRECTORY`, the last
/// component with `O_NOFOLLOW` (and, for an `O_PATH` open, which would open a link itself,
/// a check that it is not one).
fn by_components(dir: impl AsFd, rel: &Path, flags: OFlag, mode: Mode) -> nix::Result<OwnedFd> {
    let parts: Vec<_> = rel.components().collect();
    let (last, dirs) = parts.split_last().ok_or(Errno::EINVAL)?;
    let mut current: Option<OwnedFd> = None;
    for part in dirs {
        let next = {
            let at = current
                .as_ref()
                .map(|f| f.as_fd())
                .unwrap_or_else(|| dir.as_fd());
            openat(
                at,
                part.as_os_str(),
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?
        };
        current = Some(next);
    }
    let at = current
        .as_ref()
        .map(|f| f.as_fd())
        .unwrap_or_else(|| dir.as_fd());
    let fd = openat(at, last.as_os_str(), flags | OFlag::O_NOFOLLOW, mode)?;
    if flags.contains(OFlag::O_PATH) {
        let file = File::from(fd);
        let is_link = file
            .metadata()
            .map(|m| m.file_type().is_symlink())
            .map_err(|_| Errno::EIO)?;
        if is_link {
            return Err(Errno::ELOOP);
        }
        return Ok(OwnedFd::from(file));
    }
    Ok(fd)
}

/// The error for opening `path` (shown as is) below the root: a link in the way is named
/// as one, with what to do; anything else is an I/O error.
pub fn refused_or_io(path: &Path, e: std::io::Error) -> crate::Error {
    if is_refused_link(&e) {
        crate::Error::invalid(format!(
            "{} is not a plain directory (a symlink, or another kind of file put there by another machine?); caravan never works through links on the export: replace it with a directory",
            path.display()
        ))
    } else {
        crate::Error::io(format!("opening {}", path.display()), e)
    }
}

/// Whether `e` means "a link (or another kind of file) was in the way": the export was
/// tampered with, as opposed to a missing file or an I/O error.
pub fn is_refused_link(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::ELOOP) | Some(nix::libc::EXDEV) | Some(nix::libc::ENOTDIR)
    )
}

/// For tests: whether some code opens a given file for reading or writing.
#[cfg(test)]
pub(crate) mod probe {
    use std::path::Path;

    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

    /// Whether `f` opens the file at `path` for reading or writing, seen through inotify's
    /// open events. A look through `O_PATH` is not an open (Linux 5.19 and later make no
    /// event for it), which is what tells a look-first open from a plain one.
    pub(crate) fn opens<T>(path: &Path, f: impl FnOnce() -> T) -> (bool, T) {
        let watch = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).unwrap();
        watch.add_watch(path, AddWatchFlags::IN_OPEN).unwrap();
        let out = f();
        let opened = match watch.read_events() {
            Ok(events) => !events.is_empty(),
            Err(nix::errno::Errno::EAGAIN) => false,
            Err(e) => panic!("reading inotify events: {e}"),
        };
        (opened, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn a_fifo_is_looked_at_and_never_opened() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
        let dir = File::open(d.path()).unwrap();
        let (opened, got) = probe::opens(&fifo, || open_regular(&dir, Path::new("fifo"), 0));
        assert_eq!(got.unwrap_err().raw_os_error(), Some(nix::libc::ELOOP));
        assert!(!opened, "the FIFO was opened");
        // The probe sees a plain open (non-blocking, so that it returns).
        let (opened, _) = probe::opens(&fifo, || {
            use std::os::unix::fs::OpenOptionsExt;
            fs::OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_NONBLOCK)
                .open(&fifo)
        });
        assert!(opened, "the probe did not see an open");
        // A regular file is opened, with its size.
        fs::write(d.path().join("f"), b"four").unwrap();
        let (file, st) = open_regular(&dir, Path::new("f"), 0).unwrap();
        assert_eq!(size_of(&st), 4);
        assert_eq!(std::io::read_to_string(file).unwrap(), "four");
    }

    fn tree() -> (tempfile::TempDir, File, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::write(root.join("a/b/f"), b"inside").unwrap();
        let outside = d.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("canary"), b"host file").unwrap();
        let fd = open_root(&root).unwrap();
        (d, fd, outside)
    }

    #[test]
    fn plain_paths_open_and_links_anywhere_are_refused() {
        let (d, root, outside) = tree();
        let f = open(&root, Path::new("a/b/f"), OFlag::O_RDONLY, Mode::empty()).unwrap();
        assert_eq!(fs::read(proc_path(&f)).unwrap(), b"inside");
        assert!(open_dir(&root, Path::new("a/b")).is_ok());
        let r = d.path().join("root");
        // A link as a middle component, as the last one, and to a file.
        std::os::unix::fs::symlink(&outside, r.join("a/mid")).unwrap();
        std::os::unix::fs::symlink(outside.join("canary"), r.join("a/last")).unwrap();
        for rel in ["a/mid/canary", "a/mid", "a/last"] {
            let e = open(&root, Path::new(rel), OFlag::O_RDONLY, Mode::empty()).unwrap_err();
            assert!(is_refused_link(&e), "{rel}: {e}");
            let e = open_dir(&root, Path::new(rel)).unwrap_err();
            assert!(is_refused_link(&e), "{rel}: {e}");
        }
        for bad in ["../outside/canary", "/etc/passwd", "a/../a/b/f", ""] {
            assert!(
                open(&root, Path::new(bad), OFlag::O_RDONLY, Mode::empty()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_file_is_looked_at_before_it_is_opened_for_writing() {
        // Any folder will do: the one outside the test's root.
        let (_d, _root, base) = tree();
        let at = base.join("f");
        let (mut f, created) = open_or_create_regular(&at, 0, 0o600).unwrap();
        assert!(created);
        std::io::Write::write_all(&mut f, b"x").unwrap();
        let (_, created) = open_or_create_regular(&at, 0, 0o600).unwrap();
        assert!(!created);
        assert_eq!(fs::read(&at).unwrap(), b"x");
        // A FIFO is refused without blocking; so is a device node, never opened; a link
        // is never followed.
        let fifo = base.join("fifo");
        nix::unistd::mkfifo(&fifo, Mode::S_IRWXU).unwrap();
        let e = open_or_create_regular(&fifo, 0, 0o600).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(nix::libc::ELOOP));
        if nix::unistd::geteuid().is_root() {
            let dev = base.join("null");
            nix::sys::stat::mknod(
                &dev,
                nix::sys::stat::SFlag::S_IFCHR,
                Mode::S_IRWXU,
                nix::sys::stat::makedev(1, 3),
            )
            .unwrap();
            let e = open_or_create_regular(&dev, 0, 0o600).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(nix::libc::ELOOP));
        }
        let outside = base.join("outside");
        fs::write(&outside, b"host file").unwrap();
        let link = base.join("link");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        let e = open_or_create_regular(&link, 0, 0o600).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(nix::libc::ELOOP));
        assert_eq!(fs::read(&outside).unwrap(), b"host file");
    }

    #[test]
    fn the_fallback_without_openat2_refuses_links_too() {
        let (d, root, outside) = tree();
        let r = d.path().join("root");
        std::os::unix::fs::symlink(&outside, r.join("a/mid")).unwrap();
        let f = by_components(&root, Path::new("a/b/f"), OFlag::O_RDONLY, Mode::empty());
        assert!(f.is_ok());
        for rel in ["a/mid/canary", "a/mid"] {
            for flags in [
                OFlag::O_RDONLY,
                OFlag::O_PATH | OFlag::O_DIRECTORY,
                OFlag::O_PATH,
            ] {
                assert!(
                    by_components(&root, Path::new(rel), flags, Mode::empty()).is_err(),
                    "{rel} {flags:?}"
                );
            }
        }
    }
}
