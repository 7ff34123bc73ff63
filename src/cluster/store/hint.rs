//! The generation hint: `<root>/.caravan/generation`, the number of the last commit.
//!
//! Readers on every node compare it with the generation their in-memory copy was loaded
//! at, which costs one small read instead of a lock and a sled open; when it moved they
//! reload under the lock. It is only a hint: sled holds the real generation, and a hint
//! that is wrong in either direction costs a reload, never a stale answer after the
//! writer's commit returned.
//!
//! The writer keeps the file open for one hold of the cluster lock and overwrites its
//! fixed-width content in place with `O_DSYNC`: one round trip per commit on a network
//! filesystem, where writing a new file and renaming it over took four or five. `O_DSYNC`
//! because NFS clients otherwise keep writes in their cache until close, where other
//! hosts cannot see them. A reader racing the write may see a torn number; any number
//! other than the one it holds sends it to reload, and one it holds is an answer from
//! before the commit returned.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::core::error::{Error, IoContext, Result};
use crate::export::layout::SharedLayout;

/// Digits in the file: wide enough for any u64, fixed so that an overwrite covers it all.
const WIDTH: usize = 20;

/// The hint file, open for writing during one hold of the cluster lock.
pub(super) struct HintWriter {
    file: File,
    path: PathBuf,
    /// Whether the file's length is known to be the fixed width.
    sized: bool,
    /// The value in the file: read at open (only the lock holder writes it), then the
    /// last one written.
    last: u64,
    /// What the file held at open: `None` when it was not a number.
    found: Option<u64>,
}

impl HintWriter {
    /// Opens the hint for one hold of the lock. What is at its name is looked at first
    /// ([`crate::export::beneath::open_or_create_regular`]): anything but a regular file owned by
    /// this daemon's user (a device, a FIFO, a link, another user's file, put there by
    /// another machine) is never opened or written through; it is replaced, under the
    /// lock, by a new file, and the log says so.
    pub(super) fn open(layout: &SharedLayout) -> Result<HintWriter> {
        let path = layout.generation_file();
        let at = layout.at(&path);
        let opened =
            || crate::export::beneath::open_or_create_regular(&at, nix::libc::O_DSYNC, 0o644);
        // The number a replaced file of another user held: a regular file, safe to read
        // (on an export that squashes users every node's file is "another user's", and
        // losing its number would set the hint back at every hold).
        let (file, carried) = match opened() {
            Ok((file, _)) if owned_by_this_user(&file) => (file, None),
            found => {
                let (what, number) = match found {
                    Ok((other, _)) => (
                        "a file of another user".to_string(),
                        number_in(&other, &path)?,
                    ),
                    Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
                        (crate::export::beneath::entry_kind(&at), None)
                    }
                    Err(e) => return Err(Error::io(format!("opening {}", path.display()), e)),
                };
                tracing::warn!(file = %path.display(), "the generation hint is {what}, not a regular file of this daemon's (put there by another machine?): replacing it");
                layout.remove_tree(&path)?;
                let file = opened()
                    .map(|(file, _)| file)
                    .ctx(|| format!("creating {}", path.display()))?;
                (file, Some(number))
            }
        };
        // Not a number (garbage, empty): the holder does not trust it (see
        // core::freshness::hint_trusted) and writes it again.
        let found = match carried {
            Some(number) => number,
            None => number_in(&file, &path)?,
        };
        Ok(HintWriter {
            file,
            path,
            sized: false,
            last: found.unwrap_or(0),
            found,
        })
    }

    /// The number the file held when opened (`None`: not a number).
    pub(super) fn found(&self) -> Option<u64> {
        self.found
    }

    /// The generation the file holds.
    pub(super) fn last(&self) -> u64 {
        self.last
    }

    pub(super) fn write(&mut self, generation: u64) -> Result<()> {
        let text = format!("{generation:0WIDTH$}\n");
        self.file
            .write_all_at(text.as_bytes(), 0)
            .ctx(|| format!("writing {}", self.path.display()))?;
        if !self.sized {
            // An older, longer content (or a hand edit) would leave digits behind.
            self.file
                .set_len(text.len() as u64)
                .ctx(|| format!("writing {}", self.path.display()))?;
            self.sized = true;
        }
        self.last = generation;
        Ok(())
    }
}

/// The number in the hint file `file` (`None`: not a number).
fn number_in(file: &File, path: &Path) -> Result<Option<u64>> {
    let mut text = [0u8; WIDTH + 2];
    let n = file
        .read_at(&mut text, 0)
        .ctx(|| format!("reading {}", path.display()))?;
    Ok(std::str::from_utf8(&text[..n])
        .ok()
        .and_then(|t| t.trim().parse().ok()))
}

fn owned_by_this_user(file: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    file.metadata()
        .is_ok_and(|m| m.uid() == nix::unistd::geteuid().as_raw())
}

/// How a node's readers read the hint: through a handle kept open, which costs one read
/// per look (one round trip on a network filesystem, where opening the file costs four
/// or five more), opened again every [`REOPEN`] so that a file replaced by hand is seen.
///
/// A kept handle reads what the file holds now only where the page cache cannot be
/// stale: on a local filesystem (every writer shares this host's cache), and on a network
/// filesystem with `O_DIRECT`, which sends every read to the server (on GlusterFS a plain
/// handle kept open went on reading the first value while another client wrote 200
/// others; with `O_DIRECT`, none was missed). Anywhere else, and wherever `O_DIRECT` is
/// refused, the file is opened for every read, as [`read`] does.
pub(super) struct HintReader {
    held: Option<(File, std::time::Instant)>,
    /// Set once a kept handle proved impossible here: every read opens the file.
    reopen_always: bool,
    /// What each read reads into (kept: a read per Get must not allocate 4 KiB).
    buf: Box<Aligned>,
}

/// How long a kept handle is used before the file is opened again.
const REOPEN: std::time::Duration = std::time::Duration::from_secs(1);

/// A buffer `O_DIRECT` can read into (aligned to any block size in use).
#[repr(C, align(4096))]
struct Aligned([u8; 4096]);

impl HintReader {
    pub(super) fn new() -> HintReader {
        HintReader {
            held: None,
            reopen_always: false,
            buf: Box::new(Aligned([0; 4096])),
        }
    }

    /// The hint's value; `None` when what is there is not a hint (see [`read`]).
    pub(super) fn read(&mut self, layout: &SharedLayout) -> Result<Option<u64>> {
        if self.reopen_always {
            return read(layout);
        }
        if self
            .held
            .as_ref()
            .is_none_or(|(_, at)| at.elapsed() >= REOPEN)
        {
            self.held = None;
            match open_kept(layout) {
                Ok(Some(file)) => self.held = Some((file, std::time::Instant::now())),
                Ok(None) => self.reopen_always = true,
                // Missing (a new root), or an error the path read names better.
                Err(_) => return read(layout),
            }
            if self.reopen_always {
                return read(layout);
            }
        }
        let (file, _) = self.held.as_ref().expect("just opened");
        match file.read_at(&mut self.buf.0, 0) {
            Ok(n) => Ok(parse(&self.buf.0[..n.min(64)])),
            Err(e) => {
                // EINVAL: this filesystem takes `O_DIRECT` at open but not at read. Any
                // other error (the handle's connection gone, see crate::export::connection) gives up
                // this handle only: the next read opens the file again.
                self.held = None;
                if e.raw_os_error() == Some(nix::libc::EINVAL) {
                    self.reopen_always = true;
                }
                read(layout)
            }
        }
    }
}

/// The hint file opened to be kept (see [`HintReader`]): `None` when this filesystem
/// allows no safe kept handle.
fn open_kept(layout: &SharedLayout) -> Result<Option<File>> {
    use nix::sys::statfs::statfs;
    const LOCAL: &[i64] = &[
        0xEF53,      // ext2, ext3, ext4
        0x5846_5342, // xfs
        0x9123_683E, // btrfs
        0x0102_1994, // tmpfs
        0x2FC1_2FC1, // zfs
        0xF2F5_2010, // f2fs
    ];
    // The type's width differs between targets (i64 here, i32 on some).
    #[allow(clippy::unnecessary_cast)]
    let local = statfs(&layout.root)
        .map(|s| LOCAL.contains(&(s.filesystem_type().0 as i64)))
        .unwrap_or(false);
    let direct = if local { 0 } else { nix::libc::O_DIRECT };
    match open_checked(layout, direct)? {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => Ok(None),
        Err(e) => Err(Error::io("opening the generation hint", e)),
    }
}

/// Opens the hint file for reading (with `flags` added) below the root without following
/// a link anywhere (`.caravan` included), and only if it is a regular file. The outer
/// error is the root's (see [`SharedLayout::root_dir`]), the inner one the file's.
fn open_checked(layout: &SharedLayout, flags: i32) -> Result<std::io::Result<File>> {
    let root = layout.root_dir()?;
    Ok(
        crate::export::beneath::open_regular(root, Path::new(".caravan/generation"), flags)
            .map(|(f, _)| f),
    )
}

/// The number in the hint's text; empty reads as 0 (a file being created this instant),
/// anything else that is not a number as `None`.
fn parse(text: &[u8]) -> Option<u64> {
    let s = String::from_utf8_lossy(text);
    match s.trim() {
        "" => Some(0),
        t => t.parse().ok(),
    }
}

/// Reads the hint. A missing or empty file reads as 0 (a root that never committed, or
/// a file being created this instant): readers then reload, which is always safe. What
/// is not a hint (garbage, or anything but a regular file: a FIFO, a device, a link,
/// put there by another machine) reads as `None`, never opened: readers then reload
/// under the lock, and that hold replaces it (see [`HintWriter::open`]).
pub(super) fn read(layout: &SharedLayout) -> Result<Option<u64>> {
    use std::io::Read;
    let path = layout.generation_file();
    // A regular file of a few bytes, never read whole.
    let text = open_checked(layout, 0)?.and_then(|f| {
        let mut s = String::new();
        f.take(64).read_to_string(&mut s).map(|_| s)
    });
    match text {
        Ok(s) => Ok(parse(s.as_bytes())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Some(0)),
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Ok(None),
        Err(e) => Err(crate::export::beneath::refused_or_io(&path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overwrites_in_place_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let layout = SharedLayout::new(dir.path());
        layout.init().unwrap();
        let path = layout.generation_file();
        std::fs::write(&path, "123456789012345678901234567890\n").unwrap();
        let mut w = HintWriter::open(&layout.pinned().unwrap()).unwrap();
        w.write(7).unwrap();
        assert_eq!(read(&layout).unwrap(), Some(7));
        w.write(u64::MAX).unwrap();
        assert_eq!(read(&layout).unwrap(), Some(u64::MAX));
        w.write(8).unwrap();
        assert_eq!(read(&layout).unwrap(), Some(8));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), WIDTH as u64 + 1);
    }

    #[test]
    fn a_kept_reader_sees_every_write_and_a_replaced_file_within_a_second() {
        let dir = tempfile::tempdir().unwrap();
        let layout = SharedLayout::new(dir.path());
        layout.init().unwrap();
        let mut reader = HintReader::new();
        assert_eq!(reader.read(&layout).unwrap(), Some(0));
        let mut w = HintWriter::open(&layout.pinned().unwrap()).unwrap();
        for g in 1..50 {
            w.write(g).unwrap();
            assert_eq!(reader.read(&layout).unwrap(), Some(g));
        }
        assert!(reader.held.is_some() || reader.reopen_always);
        // Replaced by hand (a new file): the kept handle is given up within REOPEN.
        let path = layout.generation_file();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, format!("{:020}\n", 900)).unwrap();
        let t = std::time::Instant::now();
        while reader.read(&layout).unwrap() != Some(900) {
            assert!(t.elapsed() < REOPEN * 3, "the replaced file was never read");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // Something other than a file in its place is never opened (it would block), and
        // reads as no hint.
        std::fs::remove_file(&path).unwrap();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        std::thread::sleep(REOPEN);
        assert_eq!(reader.read(&layout).unwrap(), None);
    }

    #[test]
    fn missing_or_empty_reads_as_zero_and_garbage_as_no_hint() {
        let dir = tempfile::tempdir().unwrap();
        let layout = SharedLayout::new(dir.path());
        std::fs::create_dir_all(layout.control_dir()).unwrap();
        let path = layout.generation_file();
        assert_eq!(read(&layout).unwrap(), Some(0));
        std::fs::write(&path, "").unwrap();
        assert_eq!(read(&layout).unwrap(), Some(0));
        std::fs::write(&path, "twelve").unwrap();
        assert_eq!(read(&layout).unwrap(), None);
    }

    #[test]
    fn a_linked_control_folder_is_refused_not_read_through() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("generation"), "42").unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        std::os::unix::fs::symlink(&elsewhere, root.join(".caravan")).unwrap();
        assert_eq!(read(&SharedLayout::new(&root)).unwrap(), None);
    }
}
