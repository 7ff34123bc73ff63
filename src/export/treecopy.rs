//! Copying a volume's tree (snapshots, clones) from one open folder into another, never
//! following a link.
//!
//! The tree is hostile input (other machines write the export, and caravan runs as root),
//! so every entry is reached from its parent's handle by one name read from that parent:
//! `fstatat`/`openat` with `AT_SYMLINK_NOFOLLOW`/`O_NOFOLLOW`, never a path. A symlink is
//! copied as a link (its target is text, never resolved), a hard link as a link to the
//! copy of its first name, a FIFO as a FIFO; device nodes and sockets are skipped and
//! counted (the report says so). Owners, modes, timestamps and extended attributes are
//! set on handles. File data is shared with a reflink (`FICLONE`) where the filesystem can,
//! and otherwise copied with `copy_file_range` over the data regions only
//! (`SEEK_DATA`/`SEEK_HOLE`), so a sparse file stays sparse. The walk is iterative and
//! bounded in depth, so a deep tree cannot exhaust the stack or the descriptors.

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use crate::core::copy_report::CopyReport;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::sys::time::TimeSpec;

/// Deeper trees are refused: each level holds two descriptors.
pub const MAX_DEPTH: usize = 256;
/// Entries read from one folder, at most (a folder of more is refused: its names are
/// held in memory while its contents are copied).
pub const MAX_ENTRIES: usize = 1_000_000;
/// Files with several links remembered, at most.
const MAX_LINKED: usize = 1_000_000;
/// What one copy call moves at most, so that a stop is seen within a large file.
const RANGE_CHUNK: usize = 64 << 20;
/// Extended attribute names and values read, each at most this many bytes.
const MAX_XATTR_BYTES: usize = 64 << 10;
/// The buffer of the read/write fallback.
const COPY_CHUNK: usize = 1 << 20;

/// Whether a copy carries over what grants privilege: set-user-ID and set-group-ID bits,
/// and extended attributes of the `security.` and `trusted.` namespaces (file
/// capabilities, security labels). caravan copies as root, and what it copies from (a
/// backup destination, a volume's folder on the export) can be written by other
/// machines: by default none of it is carried over, and the top folder of the copy keeps
/// the new volume's own owner and mode. A user who trusts the source says so (the
/// `keep_privileges` option).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Privileges {
    #[default]
    Drop,
    Keep,
}

/// Extended attribute namespaces that grant privilege.
const PRIVILEGED_XATTRS: [&[u8]; 2] = [b"security.", b"trusted."];

impl Privileges {
    pub fn keep(keep: bool) -> Privileges {
        if keep {
            Privileges::Keep
        } else {
            Privileges::Drop
        }
    }

    /// The permission bits to set for `mode`, counting what is dropped.
    fn mode(self, mode: u32, report: &mut CopyReport) -> u32 {
        let mode = mode & 0o7777;
        if self == Privileges::Drop && mode & 0o6000 != 0 {
            report.dropped_setid += 1;
            return mode & !0o6000;
        }
        mode
    }

    /// Whether an extended attribute named `name` is carried over, counting what is not.
    fn xattr(self, name: &[u8], report: &mut CopyReport) -> bool {
        let privileged = PRIVILEGED_XATTRS.iter().any(|p| name.starts_with(p));
        if self == Privileges::Drop && privileged {
            report.dropped_xattrs += 1;
            return false;
        }
        true
    }
}

/// A failed copy: the entry (relative to the source) and why.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", if .path.as_os_str().is_empty() { Path::new(".") } else { .path.as_path() }.display())]
pub struct CopyError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Why a copy stopped early because it was asked to.
pub const STOPPED: &str = "the copy was stopped";

/// A running copy's counters, read by whoever shows its progress, and its stop switch.
#[derive(Debug, Default)]
pub struct Progress {
    pub files: AtomicU64,
    pub bytes: AtomicU64,
    /// What the whole copy is expected to be, when known (0: unknown), for an ETA.
    pub total_files: AtomicU64,
    pub total_bytes: AtomicU64,
    pub stop: AtomicBool,
}

impl Progress {
    /// Sets the expected totals.
    pub fn expect(&self, files: u64, bytes: u64) {
        self.total_files.store(files, Ordering::Relaxed);
        self.total_bytes.store(bytes, Ordering::Relaxed);
    }
}

fn err(path: &Path, e: impl Into<std::io::Error>) -> CopyError {
    CopyError {
        path: path.to_path_buf(),
        source: e.into(),
    }
}

/// One folder being copied: its handles, its remaining entries, its metadata.
struct Frame {
    src: OwnedFd,
    dst: OwnedFd,
    rel: PathBuf,
    names: Vec<OsString>,
    next: usize,
    stat: FileStat,
}

/// Copies the contents of the folder `src` into the empty folder `dst`, then gives `dst`
/// the times of `src` (and, when `privileges` keeps them, its owner, mode and
/// attributes). Counts into `progress` and checks its stop switch between entries.
pub fn copy_tree(
    src: &std::fs::File,
    dst: &std::fs::File,
    progress: &Progress,
    privileges: Privileges,
) -> Result<CopyReport, CopyError> {
    let started = Instant::now();
    let mut report = CopyReport::default();
    // (device, inode) of a source file with several links -> where its copy is (relative
    // to dst), for the next link to it.
    let mut linked: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let root = Path::new("");
    // Handles of their own, readable: the callers' may be `O_PATH` ones, on which owners,
    // modes and times cannot be set.
    let dup = |f: &std::fs::File| {
        nix::fcntl::openat(
            f.as_fd(),
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| err(root, e))
    };
    let (src, dst) = (dup(src)?, dup(dst)?);
    let stat = nix::sys::stat::fstat(src.as_fd()).map_err(|e| err(root, e))?;
    let mut stack = vec![Frame {
        names: list(src.as_fd()).map_err(|e| err(root, e))?,
        src,
        dst,
        rel: PathBuf::new(),
        next: 0,
        stat,
    }];
    while let Some(top) = stack.last_mut() {
        if progress.stop.load(Ordering::Relaxed) {
            return Err(err(&top.rel, std::io::Error::other(STOPPED)));
        }
        let Some(name) = top.names.get(top.next).cloned() else {
            // Every entry copied: the folder's own metadata last, so its times stick.
            let done = stack.pop().expect("a frame");
            let applied = if stack.is_empty() && privileges == Privileges::Drop {
                apply_times(done.dst.as_fd(), &Meta::of(&done.stat))
            } else {
                set_meta(
                    done.dst.as_fd(),
                    &done.stat,
                    &mut report,
                    Some(done.src.as_fd()),
                    privileges,
                )
            };
            applied.map_err(|e| err(&done.rel, e))?;
            report.dirs += 1;
            continue;
        };
        top.next += 1;
        if let Some(sub) = copy_entry(
            &stack,
            &name,
            &mut linked,
            &mut report,
            progress,
            privileges,
        )? {
            stack.push(sub);
        }
    }
    report.millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(report)
}

/// Copies one entry of the folder on top of `stack`; a sub-folder comes back as the frame
/// to copy next.
fn copy_entry(
    stack: &[Frame],
    name: &OsString,
    linked: &mut HashMap<(u64, u64), PathBuf>,
    report: &mut CopyReport,
    progress: &Progress,
    privileges: Privileges,
) -> Result<Option<Frame>, CopyError> {
    let top = stack.last().expect("a frame");
    let rel = top.rel.join(name);
    let st = match nix::sys::stat::fstatat(
        top.src.as_fd(),
        name.as_os_str(),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Ok(st) => st,
        Err(Errno::ENOENT) => {
            report.vanished += 1;
            return Ok(None);
        }
        Err(e) => return Err(err(&rel, e)),
    };
    let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
    let (src_dir, dst_dir) = (top.src.as_fd(), top.dst.as_fd());
    match kind {
        SFlag::S_IFDIR => {
            if stack.len() >= MAX_DEPTH {
                return Err(err(
                    &rel,
                    std::io::Error::other(format!("deeper than {MAX_DEPTH} levels")),
                ));
            }
            let Some(sub) =
                open_nofollow(src_dir, name, OFlag::O_RDONLY | OFlag::O_DIRECTORY, report)
                    .map_err(|e| err(&rel, e))?
            else {
                return Ok(None);
            };
            nix::sys::stat::mkdirat(dst_dir, name.as_os_str(), Mode::from_bits_truncate(0o700))
                .map_err(|e| err(&rel, e))?;
            let new = nix::fcntl::openat(
                dst_dir,
                name.as_os_str(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| err(&rel, e))?;
            let names = list(sub.as_fd()).map_err(|e| err(&rel, e))?;
            let stat = nix::sys::stat::fstat(sub.as_fd()).map_err(|e| err(&rel, e))?;
            return Ok(Some(Frame {
                src: sub,
                dst: new,
                rel,
                names,
                next: 0,
                stat,
            }));
        }
        SFlag::S_IFREG => {
            // Opened as a path first: the entry may have been swapped for a device since
            // it was listed, and opening a device as root can act on the host.
            let Some((file, st)) =
                open_listed_file(top.src.as_fd(), name, report).map_err(|e| err(&rel, e))?
            else {
                return Ok(None);
            };
            let key = (st.st_dev, st.st_ino);
            if st.st_nlink > 1 {
                if let Some(first) = linked.get(&key) {
                    // The destination is on the export too: reached from its root (the
                    // bottom frame's) without following a link.
                    link_again(&stack[0].dst, first, dst_dir_of(stack), name)
                        .map_err(|e| err(&rel, e))?;
                    report.hard_links += 1;
                    return Ok(None);
                }
            }
            let out = create_new(top.dst.as_fd(), name).map_err(|e| err(&rel, e))?;
            let len = crate::export::beneath::size_of(&st);
            let (bytes, reflinked) =
                copy_data(file.as_fd(), out.as_fd(), len, progress).map_err(|e| err(&rel, e))?;
            if reflinked {
                report.reflinked += 1;
            } else {
                report.copied += 1;
            }
            report.bytes = report.bytes.saturating_add(bytes);
            progress.files.fetch_add(1, Ordering::Relaxed);
            set_meta(out.as_fd(), &st, report, Some(file.as_fd()), privileges)
                .map_err(|e| err(&rel, e))?;
            report.files += 1;
            // Bounded: past that, further links to a file are copied as files of their own.
            if st.st_nlink > 1 && linked.len() < MAX_LINKED {
                linked.insert(key, rel.clone());
            }
        }
        SFlag::S_IFLNK => {
            let target = match nix::fcntl::readlinkat(src_dir, name.as_os_str()) {
                Ok(t) => t,
                Err(Errno::ENOENT | Errno::EINVAL) => {
                    report.vanished += 1;
                    return Ok(None);
                }
                Err(e) => return Err(err(&rel, e)),
            };
            make_symlink(dst_dir, name, target.as_os_str(), &Meta::of(&st))
                .map_err(|e| err(&rel, e))?;
            report.symlinks += 1;
        }
        SFlag::S_IFIFO => {
            make_fifo(dst_dir, name, &Meta::of(&st)).map_err(|e| err(&rel, e))?;
            report.fifos += 1;
        }
        _ => report.skipped += 1,
    }
    Ok(None)
}

/// The metadata set on what is made: owner, permission bits, times (seconds, nanos).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Meta {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub atime: (i64, i64),
    pub mtime: (i64, i64),
}

impl Meta {
    pub(crate) fn of(st: &FileStat) -> Meta {
        Meta {
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode & 0o7777,
            atime: (st.st_atime, st.st_atime_nsec),
            mtime: (st.st_mtime, st.st_mtime_nsec),
        }
    }

    fn times(&self) -> (TimeSpec, TimeSpec) {
        (
            TimeSpec::new(self.atime.0, self.atime.1),
            TimeSpec::new(self.mtime.0, self.mtime.1),
        )
    }
}

/// Makes the symlink `name` in `dir` pointing at `target` (text, never resolved), with
/// its owner and times.
pub(crate) fn make_symlink(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    target: &OsStr,
    meta: &Meta,
) -> std::io::Result<()> {
    nix::unistd::symlinkat(target, dir, name)?;
    nix::unistd::fchownat(
        dir,
        name,
        Some(meta.uid.into()),
        Some(meta.gid.into()),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )?;
    let (a, m) = meta.times();
    nix::sys::stat::utimensat(
        dir,
        name,
        &a,
        &m,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )?;
    Ok(())
}

/// Makes the FIFO `name` in `dir` with its owner, mode (no set-id bits: they mean nothing
/// on a FIFO) and times.
pub(crate) fn make_fifo(dir: BorrowedFd<'_>, name: &OsStr, meta: &Meta) -> std::io::Result<()> {
    nix::sys::stat::mknodat(
        dir,
        name,
        SFlag::S_IFIFO,
        Mode::from_bits_truncate(0o600),
        0,
    )?;
    // The FIFO just made, as a path (another machine could have swapped it for a device):
    // its metadata is set through that handle's /proc path.
    let fifo = nix::fcntl::openat(
        dir,
        name,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let made = nix::sys::stat::fstat(fifo.as_fd())?;
    if SFlag::from_bits_truncate(made.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFIFO {
        return Err(std::io::Error::other("replaced while being made"));
    }
    let at = crate::export::beneath::proc_path(&fifo);
    std::os::unix::fs::chown(&at, Some(meta.uid), Some(meta.gid))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&at, std::fs::Permissions::from_mode(meta.mode & 0o1777))?;
    }
    let (a, m) = meta.times();
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        &at,
        &a,
        &m,
        nix::sys::stat::UtimensatFlags::FollowSymlink,
    )?;
    Ok(())
}

/// Owner, mode, extended attributes and times on a handle, in that order (an owner set
/// after would clear set-id bits and capabilities; times last, so they stick), within
/// what `privileges` lets through. What is dropped and the attributes that could not be
/// set are counted in `report`.
pub(crate) fn apply_meta(
    fd: BorrowedFd<'_>,
    meta: &Meta,
    xattrs: &[Xattr],
    privileges: Privileges,
    report: &mut CopyReport,
) -> nix::Result<()> {
    nix::unistd::fchown(fd, Some(meta.uid.into()), Some(meta.gid.into()))?;
    let mode = privileges.mode(meta.mode, report);
    nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(mode))?;
    for (n, v) in xattrs {
        if privileges.xattr(n, report) && !write_xattr(fd, n, v) {
            report.xattr_errors += 1;
        }
    }
    apply_times(fd, meta)
}

/// The times only: the top folder of a copy that does not keep privileges keeps the new
/// volume's own owner, mode and attributes.
pub(crate) fn apply_times(fd: BorrowedFd<'_>, meta: &Meta) -> nix::Result<()> {
    let (a, m) = meta.times();
    nix::sys::stat::futimens(fd, &a, &m)
}

/// Creates the file `name` in `dir` for writing: new (never over anything there), never
/// through a link, private until its metadata is set.
pub(crate) fn create_new(dir: BorrowedFd<'_>, name: &OsStr) -> nix::Result<OwnedFd> {
    nix::fcntl::openat(
        dir,
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
}

/// Makes `name` in `dir` another name of the file at `first` (relative to `base`, the
/// top of the tree being made), reaching it without following a link.
pub(crate) fn link_again(
    base: &OwnedFd,
    first: &Path,
    dir: BorrowedFd<'_>,
    name: &OsStr,
) -> std::io::Result<()> {
    let parent = first.parent().unwrap_or(Path::new(""));
    let file_name = first.file_name().unwrap_or_default();
    let from = if parent.as_os_str().is_empty() {
        base.try_clone()?
    } else {
        OwnedFd::from(crate::export::beneath::open_dir(base, parent)?)
    };
    nix::unistd::linkat(&from, file_name, dir, name, AtFlags::empty())?;
    Ok(())
}

fn dst_dir_of(stack: &[Frame]) -> BorrowedFd<'_> {
    stack.last().expect("a frame").dst.as_fd()
}

/// Opens `name` in `dir` without following a link; `None` (counted as vanished) when it
/// is gone or is no longer what was listed (a link or another type now).
pub(crate) fn open_nofollow(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    flags: OFlag,
    report: &mut CopyReport,
) -> nix::Result<Option<OwnedFd>> {
    match nix::fcntl::openat(
        dir,
        name,
        flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        Mode::empty(),
    ) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR | Errno::ENXIO) => {
            report.vanished += 1;
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Opens a listed entry `name` of `dir` for reading with [`beneath::open_regular`]'s
/// policy (looked at first, opened only when regular). `None` (counted as vanished) when
/// it is gone or is something else now (swapped for a link, a device or a FIFO since it
/// was listed).
///
/// [`beneath::open_regular`]: crate::export::beneath::open_regular
pub(crate) fn open_listed_file(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    report: &mut CopyReport,
) -> nix::Result<Option<(OwnedFd, FileStat)>> {
    match crate::export::beneath::open_regular(dir, Path::new(name), 0) {
        Ok((file, st)) => Ok(Some((OwnedFd::from(file), st))),
        Err(e) => match e.raw_os_error().map(Errno::from_raw) {
            Some(Errno::ENOENT | Errno::ELOOP) => {
                report.vanished += 1;
                Ok(None)
            }
            Some(errno) => Err(errno),
            None => Err(Errno::EIO),
        },
    }
}

/// The names in a folder, sorted (so copies are made in the same order every time).
pub(crate) fn list(dir: BorrowedFd<'_>) -> nix::Result<Vec<OsString>> {
    let fd = nix::fcntl::openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut d = nix::dir::Dir::from_fd(fd)?;
    let mut names = Vec::new();
    for entry in d.iter() {
        let entry = entry?;
        if names.len() >= MAX_ENTRIES {
            return Err(Errno::EFBIG);
        }
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    names.sort();
    Ok(names)
}

/// Owner, mode, extended attributes (from `from`, when given) and times, on a handle.
fn set_meta(
    fd: BorrowedFd<'_>,
    st: &FileStat,
    report: &mut CopyReport,
    from: Option<BorrowedFd<'_>>,
    privileges: Privileges,
) -> nix::Result<()> {
    let (xattrs, unread) = from.map(read_xattrs).unwrap_or_default();
    report.xattr_errors += unread;
    apply_meta(fd, &Meta::of(st), &xattrs, privileges, report)
}

/// An extended attribute: name and value.
pub(crate) type Xattr = (Vec<u8>, Vec<u8>);

/// The extended attributes of a handle (names and values, each bounded), and how many
/// could not be read.
pub(crate) fn read_xattrs(from: BorrowedFd<'_>) -> (Vec<Xattr>, u64) {
    let mut names = vec![0u8; MAX_XATTR_BYTES];
    // SAFETY: the buffer is valid for its length; the descriptor is open.
    let n =
        unsafe { nix::libc::flistxattr(from.as_raw_fd(), names.as_mut_ptr().cast(), names.len()) };
    if n < 0 {
        let unsupported = matches!(Errno::last(), Errno::ENOTSUP);
        return (Vec::new(), u64::from(!unsupported));
    }
    names.truncate(usize::try_from(n).unwrap_or(0));
    let mut value = vec![0u8; MAX_XATTR_BYTES];
    let (mut out, mut errors) = (Vec::new(), 0);
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(cname) = CString::new(name) else {
            continue;
        };
        // SAFETY: as above; the name is NUL-terminated.
        let len = unsafe {
            nix::libc::fgetxattr(
                from.as_raw_fd(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        match usize::try_from(len) {
            Ok(len) => out.push((name.to_vec(), value[..len].to_vec())),
            Err(_) => errors += 1,
        }
    }
    (out, errors)
}

/// Sets one extended attribute on a handle; whether it was set.
pub(crate) fn write_xattr(to: BorrowedFd<'_>, name: &[u8], value: &[u8]) -> bool {
    let Ok(cname) = CString::new(name) else {
        return false;
    };
    // SAFETY: the descriptor is open, the name NUL-terminated, the value valid for its
    // length.
    unsafe {
        nix::libc::fsetxattr(
            to.as_raw_fd(),
            cname.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        ) == 0
    }
}

/// `FICLONE` (linux/fs.h): share all of a file's data with another.
const FICLONE: nix::libc::c_ulong = 0x4004_9409;

/// The data of `src` (`len` bytes) into the empty `dst`: a reflink if the filesystem can,
/// else the data regions copied and the holes left. The bytes of data, and whether it was
/// a reflink.
fn copy_data(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    len: u64,
    progress: &Progress,
) -> std::io::Result<(u64, bool)> {
    if len == 0 {
        return Ok((0, false));
    }
    // SAFETY: both descriptors are open; FICLONE takes the source descriptor as argument.
    if unsafe { nix::libc::ioctl(dst.as_raw_fd(), FICLONE as _, src.as_raw_fd()) } == 0 {
        progress.bytes.fetch_add(len, Ordering::Relaxed);
        return Ok((len, true));
    }
    let mut copied = 0u64;
    let mut off: i64 = 0;
    let end = i64::try_from(len).map_err(|_| std::io::Error::other("file too large"))?;
    while off < end {
        let data = match nix::unistd::lseek(src, off, nix::unistd::Whence::SeekData) {
            Ok(d) => d,
            Err(Errno::ENXIO) => break, // only a hole from here
            Err(Errno::EINVAL | Errno::EOPNOTSUPP) => off, // no hole support: all data
            Err(e) => return Err(e.into()),
        };
        let hole = match nix::unistd::lseek(src, data, nix::unistd::Whence::SeekHole) {
            Ok(h) => h.min(end),
            Err(Errno::EINVAL | Errno::EOPNOTSUPP) => end,
            Err(e) => return Err(e.into()),
        };
        if hole <= data {
            break;
        }
        copied = copied.saturating_add(copy_range(src, dst, data, hole, progress)?);
        off = hole;
    }
    // The trailing hole (and a file that shrank meanwhile keeps its listed size).
    nix::unistd::ftruncate(dst, end)?;
    Ok((copied, false))
}

/// Bytes `start..end` of `src` to the same offsets of `dst`, in chunks, checking the
/// stop switch between them.
fn copy_range(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    start: i64,
    end: i64,
    progress: &Progress,
) -> std::io::Result<u64> {
    let (mut a, mut b) = (start, start);
    while a < end {
        if progress.stop.load(Ordering::Relaxed) {
            return Err(std::io::Error::other(STOPPED));
        }
        let want = usize::try_from(end - a)
            .unwrap_or(usize::MAX)
            .min(RANGE_CHUNK);
        let before = a;
        match nix::fcntl::copy_file_range(src, Some(&mut a), dst, Some(&mut b), want) {
            Ok(0) => break, // the file shrank
            Ok(_) => {
                progress
                    .bytes
                    .fetch_add((a - before) as u64, Ordering::Relaxed);
            }
            Err(Errno::EXDEV | Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => {
                return read_write(src, dst, a, end, progress).map(|n| (a - start) as u64 + n);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok((a - start) as u64)
}

/// The fallback: reads and writes, leaving chunks of zeros unwritten (the destination's
/// size is set at the end, so they read back as zeros): where the filesystem cannot say
/// where the holes are, a sparse file does not become a full one.
fn read_write(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    mut off: i64,
    end: i64,
    progress: &Progress,
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; COPY_CHUNK];
    let start = off;
    while off < end {
        if progress.stop.load(Ordering::Relaxed) {
            return Err(std::io::Error::other(STOPPED));
        }
        let want = usize::try_from(end - off)
            .unwrap_or(COPY_CHUNK)
            .min(COPY_CHUNK);
        let n = nix::sys::uio::pread(src, &mut buf[..want], off)?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|b| *b != 0) {
            let mut done = 0;
            while done < n {
                done += nix::sys::uio::pwrite(dst, &buf[done..n], off + done as i64)?;
            }
        }
        off += n as i64;
        progress.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
    Ok((off - start) as u64)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

    use super::*;

    fn copy(src: &Path, dst: &Path) -> Result<CopyReport, CopyError> {
        fs::create_dir_all(dst).unwrap();
        let (s, d) = (fs::File::open(src).unwrap(), fs::File::open(dst).unwrap());
        copy_tree(&s, &d, &Progress::default(), Privileges::Keep)
    }

    #[test]
    fn a_tree_is_copied_with_its_links_holes_and_metadata() {
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        fs::create_dir_all(src.join("a/b/c")).unwrap();
        fs::write(src.join("a/b/c/deep"), "deep").unwrap();
        fs::write(src.join("top"), "top").unwrap();
        fs::set_permissions(src.join("top"), fs::Permissions::from_mode(0o4751)).unwrap();
        // Odd names: a newline, a leading dash, bytes that are not UTF-8.
        fs::write(src.join("new\nline"), "n").unwrap();
        fs::write(src.join("-dash"), "d").unwrap();
        fs::write(src.join(OsStr::from_bytes(b"bin\xff\xfe")), "b").unwrap();
        // A hard link pair, a symlink pointing outside (never followed), a FIFO.
        fs::write(src.join("one"), "linked").unwrap();
        fs::hard_link(src.join("one"), src.join("a/two")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.join("outside")).unwrap();
        std::os::unix::fs::symlink(t.path(), src.join("dirlink")).unwrap();
        nix::unistd::mkfifo(&src.join("fifo"), Mode::from_bits_truncate(0o640)).unwrap();
        // A sparse file: 64 MiB with 4 KiB of data at the end.
        {
            use std::os::unix::fs::FileExt;
            let f = fs::File::create(src.join("sparse")).unwrap();
            f.set_len(64 << 20).unwrap();
            f.write_all_at(&[7u8; 4096], (64 << 20) - 4096).unwrap();
        }
        let xattr_set = {
            let c = CString::new(src.join("top").as_os_str().as_bytes()).unwrap();
            let name = CString::new("user.caravan").unwrap();
            // SAFETY: valid NUL-terminated strings and buffer.
            unsafe {
                nix::libc::setxattr(c.as_ptr(), name.as_ptr(), b"v1".as_ptr().cast(), 2, 0) == 0
            }
        };
        fs::File::open(src.join("a"))
            .unwrap()
            .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000))
            .unwrap();

        let r = copy(&src, &dst).unwrap();
        assert_eq!(fs::read_to_string(dst.join("a/b/c/deep")).unwrap(), "deep");
        assert_eq!(fs::read_to_string(dst.join("new\nline")).unwrap(), "n");
        assert_eq!(
            fs::read(dst.join(OsStr::from_bytes(b"bin\xff\xfe"))).unwrap(),
            b"b"
        );
        assert_eq!(
            fs::read_link(dst.join("outside")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert_eq!(fs::read_link(dst.join("dirlink")).unwrap(), t.path());
        assert!(fs::symlink_metadata(dst.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
        let (one, two) = (
            fs::metadata(dst.join("one")).unwrap(),
            fs::metadata(dst.join("a/two")).unwrap(),
        );
        assert_eq!(
            (one.ino(), one.nlink()),
            (two.ino(), 2),
            "a hard link stays one file"
        );
        let top = fs::metadata(dst.join("top")).unwrap();
        assert_eq!(top.mode() & 0o7777, 0o4751);
        assert_eq!(fs::metadata(dst.join("a")).unwrap().mtime(), 1_000_000_000);
        let sparse = fs::metadata(dst.join("sparse")).unwrap();
        assert_eq!(sparse.len(), 64 << 20);
        assert!(
            sparse.blocks() * 512 < 1 << 20,
            "the holes stay holes: {} blocks",
            sparse.blocks()
        );
        let data = fs::read(dst.join("sparse")).unwrap();
        assert!(
            data[..(64 << 20) - 4096].iter().all(|b| *b == 0)
                && data[(64 << 20) - 4096..].iter().all(|b| *b == 7)
        );
        if xattr_set {
            let c = CString::new(dst.join("top").as_os_str().as_bytes()).unwrap();
            let name = CString::new("user.caravan").unwrap();
            let mut v = [0u8; 8];
            // SAFETY: as above.
            let n = unsafe {
                nix::libc::getxattr(c.as_ptr(), name.as_ptr(), v.as_mut_ptr().cast(), v.len())
            };
            assert_eq!(&v[..n.max(0) as usize], b"v1");
        }
        assert_eq!((r.symlinks, r.hard_links, r.fifos, r.skipped), (2, 1, 1, 0));
        assert_eq!(r.dirs, 4, "a, a/b, a/b/c and the top: {r:?}");
        assert_eq!(r.files, 7, "{r:?}");
        assert_eq!(
            r.bytes,
            4 + 3 + 1 + 1 + 1 + 6 + 4096,
            "data bytes, holes not counted: {r:?}"
        );
        // Nothing outside was touched through the links.
        assert!(!t.path().join("dst/dirlink/src").join("x").exists());
    }

    #[test]
    fn a_stop_or_a_deep_tree_ends_the_copy_with_an_error() {
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        let mut deep = src.clone();
        for _ in 0..MAX_DEPTH + 1 {
            deep.push("d");
        }
        fs::create_dir_all(&deep).unwrap();
        let e = copy(&src, &dst).unwrap_err();
        assert!(e.to_string().contains("deeper than"), "{e}");

        let (s, d) = (fs::File::open(&src).unwrap(), fs::File::open(&dst).unwrap());
        let stopped = Progress::default();
        stopped.stop.store(true, Ordering::Relaxed);
        let e = copy_tree(&s, &d, &stopped, Privileges::Keep).unwrap_err();
        assert!(e.to_string().contains(STOPPED), "{e}");
    }
}
