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

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::layout::SharedLayout;

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
}

impl HintWriter {
    pub(super) fn open(layout: &SharedLayout) -> Result<HintWriter> {
        let path = layout.generation_file();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            // Never through a link another machine planted here (it would be truncated).
            .custom_flags(nix::libc::O_DSYNC | nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(layout.at(&path))
            .ctx(|| format!("opening {}", path.display()))?;
        let mut text = [0u8; WIDTH + 2];
        let n = file
            .read_at(&mut text, 0)
            .ctx(|| format!("reading {}", path.display()))?;
        // Garbage (a hand edit, a torn write by a crash) reads as 0: sled's generation
        // then decides alone.
        let last = std::str::from_utf8(&text[..n])
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        Ok(HintWriter {
            file,
            path,
            sized: false,
            last,
        })
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

/// Reads the hint. A missing or empty file reads as 0 (a root that never committed, or
/// a file being created this instant): readers then reload, which is always safe.
pub(super) fn read(layout: &SharedLayout) -> Result<u64> {
    use std::io::Read;
    let path = layout.generation_file();
    // Opened below the root without following a link anywhere (`.caravan` included): a
    // regular file of a few bytes, never read whole, never blocking on a FIFO.
    let text = crate::beneath::open_root(&layout.root)
        .and_then(|root| {
            crate::beneath::open(
                root,
                Path::new(".caravan/generation"),
                nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_NONBLOCK,
                nix::sys::stat::Mode::empty(),
            )
        })
        .and_then(|f| {
            let mut s = String::new();
            f.take(64).read_to_string(&mut s).map(|_| s)
        });
    match text {
        Ok(s) if s.trim().is_empty() => Ok(0),
        Ok(s) => s.trim().parse().map_err(|_| {
            Error::Store(format!(
                "{} holds {:?}, not a number; it is rewritten by the next commit",
                path.display(),
                s.chars().take(30).collect::<String>()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(crate::beneath::refused_or_io(&path, e)),
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
        assert_eq!(read(&layout).unwrap(), 7);
        w.write(u64::MAX).unwrap();
        assert_eq!(read(&layout).unwrap(), u64::MAX);
        w.write(8).unwrap();
        assert_eq!(read(&layout).unwrap(), 8);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), WIDTH as u64 + 1);
    }

    #[test]
    fn missing_or_empty_reads_as_zero_and_garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let layout = SharedLayout::new(dir.path());
        std::fs::create_dir_all(layout.control_dir()).unwrap();
        let path = layout.generation_file();
        assert_eq!(read(&layout).unwrap(), 0);
        std::fs::write(&path, "").unwrap();
        assert_eq!(read(&layout).unwrap(), 0);
        std::fs::write(&path, "twelve").unwrap();
        let e = read(&layout).unwrap_err().to_string();
        assert!(e.contains("not a number"), "{e}");
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
        let e = read(&SharedLayout::new(&root)).unwrap_err().to_string();
        assert!(e.contains("generation"), "{e}");
    }
}
