//! Open directories on the shared root, and paths that start from them.
//!
//! A shared export has its client caches off (another host's change must be seen at once),
//! so the client revalidates every component of a path on every call: reaching
//! `<root>/.caravan/meta/db` costs a LOOKUP and a GETATTR at the server for each of
//! `.caravan`, `meta` and `db` before the call itself does anything. A path through
//! `/proc/self/fd/N`, where N is an open directory, starts at that directory: only the
//! components after it are looked up. On the GlusterFS test bed a `stat` of sled's log
//! went from 9 server requests to 3 this way, and opening sled makes about twenty such
//! calls (`scripts/fs-ops` and docs/performance.md have the figures).
//!
//! Directories are opened with `O_PATH` (no open request reaches the server) and held for
//! one hold of the cluster lock or one round of the janitor, never longer: a handle that
//! outlived a remount of the export would reach the old filesystem, and one that outlived
//! a hold could reach a folder another node has since replaced.
//!
//! The real paths stay what messages show; only system calls use the shortcut.
//!
//! The folders are opened below the root without following any symlink
//! ([`crate::export::beneath`]): one planted by another machine at `.caravan/trash` or `volumes`
//! makes the pin fail, with an error that names it, instead of sending the hold's file work
//! (deletes included) to wherever it points.

use std::borrow::Cow;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Open directories, each with the `/proc/self/fd` path that reaches it.
#[derive(Debug, Default)]
pub struct PinnedDirs {
    pins: Vec<Pin>,
    /// The mount the root is on.
    mount: Option<crate::export::connection::MountId>,
}

#[derive(Debug)]
struct Pin {
    real: PathBuf,
    via: PathBuf,
    /// Keeps `via` valid: the number in it is this descriptor's.
    _dir: File,
}

impl PinnedDirs {
    /// Pins `root_dir` (the root, opened from the configured path `root`) and `dirs`
    /// below it, each opened without following a symlink anywhere under the root. One that
    /// is a link, is missing, or cannot be opened is an error naming it. Without `/proc`
    /// nothing is pinned.
    pub fn open<P: AsRef<Path>>(
        root: &Path,
        root_dir: File,
        dirs: &[P],
    ) -> Result<PinnedDirs, (PathBuf, std::io::Error)> {
        let mut pinned = PinnedDirs {
            mount: crate::export::connection::MountId::of(&root_dir).ok(),
            ..PinnedDirs::default()
        };
        if !proc_fd_works() {
            return Ok(pinned);
        }
        for dir in dirs {
            let real = dir.as_ref();
            let Ok(rel) = real.strip_prefix(root) else {
                continue;
            };
            match crate::export::beneath::open_dir(&root_dir, rel) {
                Ok(file) => pinned.pins.push(Pin {
                    real: real.to_path_buf(),
                    via: crate::export::beneath::proc_path(&file),
                    _dir: file,
                }),
                // Missing is refused too: calls under it would go through its parent's
                // handle by name, and another machine could put a link there meanwhile.
                Err(e) => return Err((real.to_path_buf(), e)),
            }
        }
        pinned.pins.push(Pin {
            real: root.to_path_buf(),
            via: crate::export::beneath::proc_path(&root_dir),
            _dir: root_dir,
        });
        Ok(pinned)
    }

    /// The path a system call should use for `path`: through the deepest pinned directory
    /// that contains it, else `path` itself.
    pub fn at<'a>(&self, path: &'a Path) -> Cow<'a, Path> {
        let deepest = self
            .pins
            .iter()
            .filter(|p| path.starts_with(&p.real))
            .max_by_key(|p| p.real.components().count());
        match deepest {
            Some(pin) => match path.strip_prefix(&pin.real) {
                Ok(rest) if rest.as_os_str().is_empty() => Cow::Owned(pin.via.clone()),
                Ok(rest) => Cow::Owned(pin.via.join(rest)),
                Err(_) => Cow::Borrowed(path),
            },
            None => Cow::Borrowed(path),
        }
    }

    /// The mount the pinned root is on.
    pub fn mount(&self) -> Option<crate::export::connection::MountId> {
        self.mount
    }

    /// How many directories are pinned.
    pub fn len(&self) -> usize {
        self.pins.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pins.is_empty()
    }
}

/// The path that reaches an open file from any thread of this process, while it is open;
/// `None` where `/proc` is not mounted.
pub fn through_proc(file: &File) -> Option<PathBuf> {
    proc_fd_works().then(|| crate::export::beneath::proc_path(file))
}

/// Whether paths through `/proc/self/fd` work here (procfs may be missing in a chroot).
fn proc_fd_works() -> bool {
    static WORKS: OnceLock<bool> = OnceLock::new();
    *WORKS.get_or_init(|| Path::new("/proc/self/fd").is_dir())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn open_root(root: &Path) -> File {
        crate::export::beneath::open_root(root).unwrap()
    }

    #[test]
    fn paths_go_through_the_deepest_pinned_directory() {
        let root = tempfile::tempdir().unwrap();
        let a = root.path().join("a");
        let b = a.join("b");
        fs::create_dir_all(&b).unwrap();
        fs::write(b.join("f"), b"x").unwrap();
        let missing = root.path().join("missing");
        let (path, _) =
            PinnedDirs::open(root.path(), open_root(root.path()), &[&a, &b, &missing]).unwrap_err();
        assert_eq!(path, missing, "a missing folder is refused");
        let pins = PinnedDirs::open(root.path(), open_root(root.path()), &[&a, &b]).unwrap();
        assert_eq!(pins.len(), 3, "the root, a and b");

        let f = b.join("f");
        let via = pins.at(&f);
        // /proc/self/fd/<b's descriptor>/f: reached from b, not from a.
        let n = via.parent().unwrap();
        assert_eq!(
            n.parent(),
            Some(Path::new("/proc/self/fd")),
            "{}",
            via.display()
        );
        assert_eq!(fs::read(&via).unwrap(), b"x");
        assert!(pins.at(&b).starts_with("/proc/self/fd"));
        assert!(fs::metadata(pins.at(&b)).unwrap().is_dir());

        let elsewhere = Path::new("/elsewhere/other");
        assert_eq!(pins.at(elsewhere), elsewhere);
        // Creating through a pin lands in the real folder.
        fs::create_dir(pins.at(&a.join("new"))).unwrap();
        assert!(a.join("new").is_dir());
    }

    #[test]
    fn a_pin_stays_on_the_folder_it_opened() {
        let root = tempfile::tempdir().unwrap();
        let a = root.path().join("a");
        fs::create_dir(&a).unwrap();
        let pins = PinnedDirs::open(root.path(), open_root(root.path()), &[&a]).unwrap();
        fs::rename(&a, root.path().join("moved")).unwrap();
        fs::write(pins.at(&a.join("f")), b"x").unwrap();
        assert!(root.path().join("moved/f").exists());
    }

    #[test]
    fn a_folder_replaced_by_a_link_is_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let outside = d.path().join("outside");
        fs::create_dir_all(root.join(".caravan")).unwrap();
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("canary"), b"x").unwrap();
        std::os::unix::fs::symlink(&outside, root.join(".caravan/trash")).unwrap();
        let (path, e) = PinnedDirs::open(
            &root,
            open_root(&root),
            &[root.join(".caravan"), root.join(".caravan/trash")],
        )
        .unwrap_err();
        assert_eq!(path, root.join(".caravan/trash"));
        assert!(crate::export::beneath::is_refused_link(&e), "{e}");
        assert!(outside.join("canary").exists());
    }
}
