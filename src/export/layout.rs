//! Where things live, on the shared root and on this node, and the filesystem work on them.
//!
//! ```text
//! <root>/.caravan/meta/         sled database (cluster metadata)
//! <root>/.caravan/lock          cluster lock file (OFD lock)
//! <root>/.caravan/generation    commit counter, a cheap freshness check for readers
//! <root>/.caravan/store-id      the metadata store's id, which cluster this export is
//! <root>/.caravan/journal/      what each recent commit changed, for readers to catch up
//! <root>/.caravan/nodes/<node>.json  each node's heartbeat, written only by that node
//! <root>/.caravan/trash/        removed volumes waiting to be deleted
//! <root>/volumes/<name>/data/   the data containers see
//! <root>/volumes/<name>/volume.json  the volume's record, for rebuilding the index
//! <root>/archive/<name>.<time>/ volumes removed with on_delete=archive
//! <state-dir>/mounts/<name>     this node's bind mount of a volume's data
//! ```
//!
//! Volume names are validated before any path is built from them
//! ([`crate::core::names::validate_name`]), so a name is always one safe path component.

use std::borrow::Cow;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::core::error::{Error, IoContext, Result};
use crate::core::volume::{OnDelete, VolumeOptions, VolumeRecord};
use crate::export::connection::{Export, MountId};
use crate::export::pinned::PinnedDirs;

/// Paths on the shared root, and the way every opening below it starts: from the root
/// opened afresh on a mount verified to hold this daemon's cluster ([`Export::root`]).
/// Clones share one [`Export`].
#[derive(Debug, Clone)]
pub struct SharedLayout {
    pub root: PathBuf,
    /// Directories held open for one hold of the cluster lock (see [`SharedLayout::pinned`]).
    pins: Option<Arc<PinnedDirs>>,
    export: Arc<Export>,
}

impl SharedLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        SharedLayout {
            export: Arc::new(Export::new(&root)),
            root,
            pins: None,
        }
    }

    /// The export's connection, shared by every clone of this layout.
    pub fn export(&self) -> &Arc<Export> {
        &self.export
    }

    /// The root, opened afresh on a mount that holds this daemon's cluster (see
    /// [`Export::root`]): where every opening below it starts.
    pub fn root_dir(&self) -> Result<File> {
        self.export.root()
    }

    /// The mount the pinned root is on, in a copy made by [`SharedLayout::pinned`].
    pub fn pinned_mount(&self) -> Option<MountId> {
        self.pins.as_ref().and_then(|p| p.mount())
    }

    /// A copy whose file work reaches the control, metadata, volumes and trash folders
    /// through open handles ([`crate::export::pinned`]): on a network filesystem with caches off
    /// each path component saved is a LOOKUP and a GETATTR at the server. Hold it for one
    /// hold of the cluster lock or one janitor round, not longer.
    ///
    /// The folders are opened without following symlinks: one that another machine
    /// replaced by a link (or by something else) is refused, naming it, and the hold or
    /// round does nothing.
    pub fn pinned(&self) -> Result<SharedLayout> {
        let dirs = [
            self.control_dir(),
            self.meta_dir(),
            self.trash_dir(),
            self.volumes_dir(),
            self.archive_dir(),
        ];
        let root = self.root_dir()?;
        let pins = PinnedDirs::open(&self.root, root, &dirs).map_err(|(path, e)| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::io(
                    format!(
                        "opening {} (deleted by hand? restarting the daemon creates it again)",
                        path.display()
                    ),
                    e,
                )
            } else {
                crate::export::beneath::refused_or_io(&path, e)
            }
        })?;
        Ok(SharedLayout {
            root: self.root.clone(),
            pins: Some(Arc::new(pins)),
            export: self.export.clone(),
        })
    }

    /// The path a system call should use for `path` (which is under the root): through a
    /// pinned folder when this copy has one that contains it. Messages show `path`.
    pub fn at<'a>(&self, path: &'a Path) -> Cow<'a, Path> {
        match &self.pins {
            Some(pins) => pins.at(path),
            None => Cow::Borrowed(path),
        }
    }
    pub fn control_dir(&self) -> PathBuf {
        self.root.join(".caravan")
    }
    pub fn meta_dir(&self) -> PathBuf {
        self.control_dir().join("meta")
    }
    pub fn lock_file(&self) -> PathBuf {
        self.control_dir().join("lock")
    }
    pub fn generation_file(&self) -> PathBuf {
        self.control_dir().join("generation")
    }
    pub fn nodes_dir(&self) -> PathBuf {
        self.control_dir().join("nodes")
    }
    /// The change journal (see `store::journal`).
    pub fn journal_dir(&self) -> PathBuf {
        self.control_dir().join("journal")
    }
    pub fn trash_dir(&self) -> PathBuf {
        self.control_dir().join("trash")
    }
    /// Volumes being copied (restores, clones) before they exist.
    pub fn staging_dir(&self) -> PathBuf {
        self.control_dir().join("staging")
    }
    pub fn volumes_dir(&self) -> PathBuf {
        self.root.join("volumes")
    }
    pub fn archive_dir(&self) -> PathBuf {
        self.root.join("archive")
    }
    pub fn volume_dir(&self, name: &str) -> PathBuf {
        self.volumes_dir().join(name)
    }
    pub fn data_dir(&self, name: &str) -> PathBuf {
        self.volume_dir(name).join("data")
    }
    pub fn record_file(&self, name: &str) -> PathBuf {
        self.volume_dir(name).join("volume.json")
    }

    /// Opens `rel` (under the root) as an `O_PATH` directory handle without following any
    /// link. A link or another kind of file in the way is refused, naming the path.
    fn open_dir_beneath(&self, rel: &str) -> Result<File> {
        let shown = self.root.join(rel);
        crate::export::beneath::open_dir(self.root_dir()?, Path::new(rel))
            .map_err(|e| crate::export::beneath::refused_or_io(&shown, e))
    }

    /// A volume's folder, `volumes/<name>`, opened without following links.
    pub fn open_volume_dir(&self, name: &str) -> Result<File> {
        self.open_dir_beneath(&format!("volumes/{name}"))
    }

    /// A volume's data folder, `volumes/<name>/data`, opened without following links (what
    /// a bind mount and the usage walk start from).
    pub fn open_data_dir(&self, name: &str) -> Result<File> {
        self.open_dir_beneath(&format!("volumes/{name}/data"))
    }

    /// Where a volume's snapshots are, `volumes/<name>/snapshots` (for messages).
    pub fn snapshot_dir(&self, name: &str, snap: &str) -> PathBuf {
        self.volume_dir(name).join("snapshots").join(snap)
    }

    /// `volumes/<name>/snapshots`, made first if `create`, opened without following links.
    fn open_snapshots_dir(&self, name: &str, create: bool) -> Result<File> {
        let vdir = self.open_volume_dir(name)?;
        let shown = self.volume_dir(name).join("snapshots");
        if create {
            match nix::sys::stat::mkdirat(
                &vdir,
                "snapshots",
                nix::sys::stat::Mode::from_bits_truncate(0o700),
            ) {
                Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                Err(e) => return Err(Error::io(format!("creating {}", shown.display()), e.into())),
            }
        }
        crate::export::beneath::open_dir(&vdir, Path::new("snapshots"))
            .map_err(|e| crate::export::beneath::refused_or_io(&shown, e))
    }

    /// The empty folder of a new snapshot, opened without following links. What an
    /// interrupted snapshot of that name left there is deleted first (the name is this
    /// snapshot's: its record says it is being made).
    pub fn make_snapshot_dir(&self, name: &str, snap: &str) -> Result<File> {
        let dir = self.open_snapshots_dir(name, true)?;
        let shown = self.snapshot_dir(name, snap);
        remove_entry(&dir, snap)
            .ctx(|| format!("deleting what was left at {}", shown.display()))?;
        nix::sys::stat::mkdirat(&dir, snap, nix::sys::stat::Mode::from_bits_truncate(0o700))
            .map_err(|e| Error::io(format!("creating {}", shown.display()), e.into()))?;
        crate::export::beneath::open_dir(&dir, Path::new(snap))
            .map_err(|e| crate::export::beneath::refused_or_io(&shown, e))
    }

    /// A snapshot's folder, opened without following links.
    pub fn open_snapshot_dir(&self, name: &str, snap: &str) -> Result<File> {
        let dir = self.open_snapshots_dir(name, false)?;
        crate::export::beneath::open_dir(&dir, Path::new(snap))
            .map_err(|e| crate::export::beneath::refused_or_io(&self.snapshot_dir(name, snap), e))
    }

    /// Deletes a snapshot's folder; one already gone is not an error.
    /// Nothing behind a link is touched: a `snapshots` that is a link (or missing) holds
    /// nothing caravan made, since caravan never makes anything through a link.
    pub fn remove_snapshot_dir(&self, name: &str, snap: &str) -> Result<()> {
        let vdir = match self.open_volume_dir(name) {
            Ok(d) => d,
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(())
            }
            Err(e) => return Err(e),
        };
        let dir = match crate::export::beneath::open_dir(&vdir, Path::new("snapshots")) {
            Ok(d) => d,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || crate::export::beneath::is_refused_link(&e) =>
            {
                return Ok(())
            }
            Err(e) => {
                return Err(Error::io(
                    format!(
                        "opening {}",
                        self.volume_dir(name).join("snapshots").display()
                    ),
                    e,
                ))
            }
        };
        remove_entry(&dir, snap)
            .ctx(|| format!("deleting {}", self.snapshot_dir(name, snap).display()))
    }

    /// Creates the control folders if this is a new root. The root itself must exist: it is
    /// the mounted export, and creating it would hide a missing mount.
    pub fn init(&self) -> Result<()> {
        let meta = fs::metadata(&self.root).ctx(|| {
            format!(
                "the shared root {} is not accessible (is the export mounted?)",
                self.root.display()
            )
        })?;
        if !meta.is_dir() {
            return Err(Error::invalid(format!(
                "the shared root {} is not a directory",
                self.root.display()
            )));
        }
        // What is already there may have been put there by another machine: checked
        // before anything is created through it, and again after.
        self.refuse_linked_control_dirs()?;
        // Each folder is made in its parent opened without following links (`mkdirat`,
        // which never follows a link at the name either): a link planted between the
        // check above and here cannot send a folder outside the root.
        let root = self.root_dir()?;
        for (dir, mode) in [
            (self.control_dir(), 0o700),
            (self.meta_dir(), 0o700),
            (self.trash_dir(), 0o700),
            (self.staging_dir(), 0o700),
            (self.nodes_dir(), 0o700),
            (self.journal_dir(), 0o700),
            (self.volumes_dir(), 0o711),
            (self.archive_dir(), 0o700),
        ] {
            let rel = dir.strip_prefix(&self.root).expect("under the root");
            let (parent, name) = (
                rel.parent().unwrap_or(Path::new("")),
                rel.file_name().expect("a name"),
            );
            let made = if parent.as_os_str().is_empty() {
                root.try_clone()
            } else {
                crate::export::beneath::open_dir(&root, parent)
            }
            .map_err(|e| crate::export::beneath::refused_or_io(&dir, e))
            .and_then(|p| {
                match nix::sys::stat::mkdirat(
                    &p,
                    name,
                    nix::sys::stat::Mode::from_bits_truncate(mode),
                ) {
                    Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
                    Err(e) => Err(Error::io(
                        format!("creating {} (is the shared root writable?)", dir.display()),
                        e.into(),
                    )),
                }
            });
            made?;
        }
        // What already existed (EEXIST) must be a plain directory, not a link.
        self.refuse_linked_control_dirs()
    }

    /// Every control folder that exists must be a plain directory, reached without a link.
    fn refuse_linked_control_dirs(&self) -> Result<()> {
        let root = self.root_dir()?;
        for dir in [
            self.control_dir(),
            self.trash_dir(),
            self.staging_dir(),
            self.nodes_dir(),
            self.journal_dir(),
            self.volumes_dir(),
            self.archive_dir(),
            self.meta_dir(),
        ] {
            let rel = dir.strip_prefix(&self.root).expect("under the root");
            match crate::export::beneath::open_dir(&root, rel) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(crate::export::beneath::refused_or_io(&dir, e)),
            }
        }
        Ok(())
    }

    /// A folder for a volume being copied, `.caravan/staging/<tag>/` with an empty
    /// `data/` inside; returns the handle of `data/`. `tag` names the volume and who copies
    /// it, so an interrupted copy is known by its incarnation.
    pub fn make_staging(&self, tag: &str) -> Result<File> {
        let staging = self.open_dir_beneath(".caravan/staging")?;
        let shown = self.staging_dir().join(tag);
        remove_entry(&staging, tag)
            .ctx(|| format!("deleting what was left at {}", shown.display()))?;
        nix::sys::stat::mkdirat(
            &staging,
            tag,
            nix::sys::stat::Mode::from_bits_truncate(0o711),
        )
        .map_err(|e| Error::io(format!("creating {}", shown.display()), e.into()))?;
        let dir = crate::export::beneath::open_dir(&staging, Path::new(tag))
            .map_err(|e| crate::export::beneath::refused_or_io(&shown, e))?;
        nix::sys::stat::mkdirat(
            &dir,
            "data",
            nix::sys::stat::Mode::from_bits_truncate(0o755),
        )
        .map_err(|e| Error::io(format!("creating {}/data", shown.display()), e.into()))?;
        crate::export::beneath::open_dir(&dir, Path::new("data"))
            .map_err(|e| crate::export::beneath::refused_or_io(&shown, e))
    }

    /// Deletes a staging folder; one already gone is not an error.
    pub fn remove_staging(&self, tag: &str) -> Result<()> {
        let staging = self.open_dir_beneath(".caravan/staging")?;
        remove_entry(&staging, tag)
            .ctx(|| format!("deleting {}", self.staging_dir().join(tag).display()))
    }

    /// The names in the staging folder (for cleaning what interrupted copies left).
    pub fn staging_entries(&self) -> Result<Vec<String>> {
        let staging = self.open_dir_beneath(".caravan/staging")?;
        let at = crate::export::beneath::proc_path(&staging);
        let mut out = Vec::new();
        for e in fs::read_dir(&at).ctx(|| format!("reading {}", self.staging_dir().display()))? {
            let e = e.ctx(|| format!("reading {}", self.staging_dir().display()))?;
            if let Some(n) = e.file_name().to_str() {
                out.push(n.to_string());
            }
            // Bounded: the folder is on the export, where anyone may have filled it.
            if out.len() >= 100_000 {
                break;
            }
        }
        Ok(out)
    }

    /// Makes the copied folder `staging/<tag>` the volume's folder `volumes/<name>` (one
    /// rename, which never replaces anything there), then writes the record beside the
    /// data and applies the options' owner and mode (the copy's own are kept otherwise).
    pub fn adopt_staging(&self, record: &VolumeRecord, tag: &str) -> Result<()> {
        let staging = self.open_dir_beneath(".caravan/staging")?;
        let volumes = self.open_dir_beneath("volumes")?;
        let target = self.volume_dir(&record.name);
        // The record and the options' owner and mode first, through the staging folder's
        // handles: after the rename, `volumes/<name>` is a name another machine could
        // point elsewhere.
        let shown = self.staging_dir().join(tag);
        let vdir = crate::export::beneath::open_dir(&staging, Path::new(tag))
            .map_err(|e| crate::export::beneath::refused_or_io(&shown, e))?;
        let data = crate::export::beneath::open_dir(&vdir, Path::new("data"))
            .map_err(|e| crate::export::beneath::refused_or_io(&shown, e))?;
        apply_ownership(&self.data_dir(&record.name), &data, &record.options)?;
        let path_at = crate::export::beneath::proc_path(&vdir).join("volume.json");
        write_new_file(&path_at, &record_file_content(record))
            .ctx(|| format!("writing {}", self.record_file(&record.name).display()))?;
        let mut r = nix::fcntl::renameat2(
            &staging,
            tag,
            &volumes,
            record.name.as_str(),
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        );
        if r == Err(nix::errno::Errno::EINVAL) {
            // The filesystem has no RENAME_NOREPLACE (GlusterFS's FUSE client): look,
            // then rename. Under the cluster lock no caravan node makes that folder
            // meanwhile; and a rename never follows a link at either end.
            r = match nix::sys::stat::fstatat(
                &volumes,
                record.name.as_str(),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                Ok(_) => Err(nix::errno::Errno::EEXIST),
                Err(nix::errno::Errno::ENOENT) => {
                    nix::fcntl::renameat(&staging, tag, &volumes, record.name.as_str())
                }
                Err(e) => Err(e),
            };
        }
        match r {
            Ok(()) => {}
            Err(nix::errno::Errno::EEXIST) => {
                return Err(Error::invalid(format!(
                    "{} exists on the export already (data retained by an earlier volume of that name?); move it away or choose another name",
                    target.display()
                )))
            }
            Err(e) => {
                return Err(Error::io(
                    format!("moving the copy into {}", target.display()),
                    e.into(),
                ))
            }
        }
        Ok(())
    }

    /// Creates (or adopts, when retained data is already there) a volume's folders and
    /// writes its record beside the data. Returns whether existing data was adopted.
    pub fn create_volume(&self, record: &VolumeRecord) -> Result<bool> {
        let vdir = self.volume_dir(&record.name);
        match fs::DirBuilder::new().mode(0o711).create(self.at(&vdir)) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(Error::io(format!("creating {}", vdir.display()), e))
            }
            _ => {}
        }
        // From here on through the folder's handle: a `volumes/<name>` that another
        // machine made a link is refused, and nothing is created, chmod-ed or written
        // through it.
        let vdir_handle = self.open_volume_dir(&record.name)?;
        let inside = crate::export::beneath::proc_path(&vdir_handle);
        let data = self.data_dir(&record.name);
        let adopted = match fs::DirBuilder::new()
            .mode(0o755)
            .create(inside.join("data"))
        {
            Ok(()) => false,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => true,
            Err(e) => return Err(Error::io(format!("creating {}", data.display()), e)),
        };
        let data_handle = crate::export::beneath::open_dir(&vdir_handle, Path::new("data"))
            .map_err(|e| match e.raw_os_error() {
                Some(nix::libc::ELOOP) | Some(nix::libc::ENOTDIR) => Error::invalid(format!(
                    "{} exists and is not a directory; move it away and create the volume again",
                    data.display()
                )),
                _ => Error::io(format!("opening {}", data.display()), e),
            })?;
        apply_ownership(&data, &data_handle, &record.options)?;
        let path = self.record_file(&record.name);
        let path_at = inside.join("volume.json");
        let content = record_file_content(record);
        if adopted {
            return write_via_rename(&path, &path_at, &content, true).map(|()| true);
        }
        // The data folder is new and nobody looks into it before the commit that adds the
        // volume: the record needs no temporary name and rename (two round trips fewer on
        // a network filesystem), only to be complete and durable before that commit. A
        // record left without its data folder (the folder deleted by hand) is replaced.
        match write_new_file(&path_at, &content) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                write_via_rename(&path, &path_at, &content, true)?
            }
            r => r.ctx(|| format!("writing {}", path.display()))?,
        }
        Ok(false)
    }

    /// Puts a removed volume's data where its `on_delete` says: the trash (with `tag`
    /// making the name unique), the archive, or left in place. Returns where it went.
    pub fn dispose_volume(&self, record: &VolumeRecord, tag: &str) -> Result<Option<PathBuf>> {
        match record.options.on_delete {
            OnDelete::Delete => self.trash_volume(&record.name, tag),
            OnDelete::Archive => self.archive_volume(&record.name),
            OnDelete::Retain => self.retain_volume(&record.name).map(|()| None),
        }
    }

    /// Moves a removed volume's folder into the trash (deleted later, off the lock) and
    /// returns the trash path. `tag` makes the trash name unique.
    pub fn trash_volume(&self, name: &str, tag: &str) -> Result<Option<PathBuf>> {
        let to = self.trash_dir().join(format!("{name}.{tag}"));
        self.rename_if_exists(&self.volume_dir(name), &to)
    }

    /// Moves a removed volume's folder aside to `<root>/archive/<name>.<unix secs>`.
    pub fn archive_volume(&self, name: &str) -> Result<Option<PathBuf>> {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut to = self.archive_dir().join(format!("{name}.{secs}"));
        let mut n = 1;
        while self.at(&to).exists() {
            to = self.archive_dir().join(format!("{name}.{secs}.{n}"));
            n += 1;
        }
        self.rename_if_exists(&self.volume_dir(name), &to)
    }

    /// For on_delete=retain: the data stays; only the record beside it goes, so that a
    /// rebuild of the index does not bring the volume back.
    pub fn retain_volume(&self, name: &str) -> Result<()> {
        let vdir = match self.open_volume_dir(name) {
            Ok(h) => h,
            // Nothing there: nothing to keep out of a rebuild.
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(())
            }
            Err(e) => return Err(e),
        };
        match fs::remove_file(crate::export::beneath::proc_path(&vdir).join("volume.json")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(
                format!("removing {}", self.record_file(name).display()),
                e,
            )),
            _ => Ok(()),
        }
    }

    /// Deletes everything in the trash. Never follows symlinks: `std::fs::remove_dir_all`
    /// unlinks a symlink instead of descending into it (since Rust 1.58.1, CVE-2022-21658).
    /// Every node's janitor may empty the trash at the same time: an entry that another one
    /// deleted first is not an error, and one entry that cannot be deleted does not keep
    /// the others. Returns the first error.
    pub fn empty_trash(&self) -> Result<()> {
        let trash = self.trash_dir();
        let mut first_error = None;
        for entry in fs::read_dir(self.at(&trash)).ctx(|| format!("reading {}", trash.display()))? {
            let name = entry
                .ctx(|| format!("reading {}", trash.display()))?
                .file_name();
            if let Err(e) = self.remove_tree(&trash.join(name)) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Deletes a file or a tree under the root without following symlinks.
    pub fn remove_tree(&self, path: &Path) -> Result<()> {
        let at = self.at(path);
        let m = match fs::symlink_metadata(&at) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(format!("inspecting {}", path.display()), e)),
        };
        let r = if m.is_dir() {
            fs::remove_dir_all(&at)
        } else {
            fs::remove_file(&at)
        };
        match r {
            // Deleted meanwhile by someone else (another node's janitor): the goal is reached.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            r => r.ctx(|| format!("deleting {}", path.display())),
        }
    }

    /// Moves `from` to `to`; `None` when `from` is not there (nothing to move). A missing
    /// destination folder (the trash or archive deleted by hand) is an error, not that.
    /// After an error the two paths decide: on a network filesystem a rename whose reply
    /// was lost may have happened all the same, and then the data is at `to`.
    fn rename_if_exists(&self, from: &Path, to: &Path) -> Result<Option<PathBuf>> {
        let moving = || format!("moving {} to {}", from.display(), to.display());
        let Err(e) = fs::rename(self.at(from), self.at(to)) else {
            return Ok(Some(to.to_path_buf()));
        };
        let gone = |p: &Path| matches!(fs::symlink_metadata(self.at(p)), Err(g) if g.kind() == std::io::ErrorKind::NotFound);
        match (gone(from), gone(to)) {
            (true, false) => {
                tracing::warn!("{}: {e}, but it happened", moving());
                Ok(Some(to.to_path_buf()))
            }
            (true, true) => Ok(None),
            _ if e.kind() == std::io::ErrorKind::NotFound => Err(Error::io(
                format!(
                    "{} (is {} missing? restarting the daemon creates it again)",
                    moving(),
                    to.parent().unwrap_or(to).display()
                ),
                e,
            )),
            _ => Err(Error::io(moving(), e)),
        }
    }
}

/// What is written to `volume.json`: the record without the mount table, which changes too
/// often to mirror and is rebuilt from the nodes anyway.
#[derive(serde::Serialize)]
struct RecordFile<'a> {
    name: &'a str,
    created_by: &'a str,
    created_at: u64,
    options: &'a VolumeOptions,
}

impl<'a> From<&'a VolumeRecord> for RecordFile<'a> {
    fn from(r: &'a VolumeRecord) -> Self {
        RecordFile {
            name: &r.name,
            created_by: &r.created_by,
            created_at: r.created_at,
            options: &r.options,
        }
    }
}

fn record_file_content(record: &VolumeRecord) -> Vec<u8> {
    serde_json::to_vec_pretty(&RecordFile::from(record)).expect("records serialize")
}

/// 64 bits no other machine can guess: `n` hashed with this process's random keys.
fn unpredictable(n: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static KEYS: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    let mut h = KEYS.get_or_init(Default::default).build_hasher();
    h.write_u64(n);
    h.write_u32(std::process::id());
    h.finish()
}

/// Writes a file that must not exist yet, with fsync (a link in its place is not followed).
fn write_new_file(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)?;
    f.write_all(content)?;
    f.sync_all()
}

/// Owner and mode of a volume's data folder, set on its open (`O_PATH`) handle through
/// `/proc/self/fd`, which reaches that very folder: never by a path on the export.
fn apply_ownership(dir: &Path, handle: &File, o: &VolumeOptions) -> Result<()> {
    let at = crate::export::beneath::proc_path(handle);
    if o.uid.is_some() || o.gid.is_some() {
        std::os::unix::fs::chown(&at, o.uid, o.gid).ctx(|| {
            format!(
                "setting the owner of {} (is the export squashing root?)",
                dir.display()
            )
        })?;
    }
    if let Some(mode) = o.mode {
        fs::set_permissions(&at, fs::Permissions::from_mode(mode))
            .ctx(|| format!("setting the mode of {}", dir.display()))?;
    }
    Ok(())
}

/// Writes a file through a temporary name and a rename, with fsync, so readers on any node
/// see the old or the new content, never a part, and the new content survives a crash.
pub fn write_atomically(path: &Path, content: &[u8]) -> Result<()> {
    write_via_rename(path, path, content, true)
}

/// Like [`write_atomically`] without the fsync: all or nothing for readers, but a crash of
/// the machine holding the file may bring back the old content. The file is reached at
/// `at` (through an open folder, see [`SharedLayout::at`]); messages name `path`.
pub fn replace_file(path: &Path, at: &Path, content: &[u8]) -> Result<()> {
    write_via_rename(path, at, content, false)
}

/// Writes `path` (reached at `at`, see [`SharedLayout::at`]) through a temporary name.
fn write_via_rename(path: &Path, at: &Path, content: &[u8], durable: bool) -> Result<()> {
    // Unique per write (threads of one daemon may write the same file at once, and
    // daemons on two hosts may share a pid) and unpredictable: another machine must not
    // be able to plant something at the name. Created with O_EXCL | O_NOFOLLOW anyway, so
    // whatever is there (a link to a host file) makes the write fail, never followed.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = at.with_extension(format!("tmp.{:016x}", unpredictable(n)));
    let write = || -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(&tmp)?;
        f.write_all(content)?;
        if durable {
            f.sync_all()?;
        }
        fs::rename(&tmp, at)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io(format!("writing {}", path.display()), e)
    })
}

/// Disk usage of a tree, counted without following symlinks and within a time budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub bytes: u64,
    pub files: u64,
    /// False when the budget ran out: the figures are a lower bound.
    pub complete: bool,
}

///
/// The walk starts from an open folder and opens each subfolder from its parent's handle
/// without following links ([`crate::export::beneath`]): a folder swapped for a link during the
/// walk is skipped, never walked into. Pending subfolders are kept by name, so the walk
/// holds one open handle per level, not one per folder.
pub fn disk_usage(top: File, budget: Duration) -> Usage {
    let until = Instant::now() + budget;
    let mut usage = Usage {
        bytes: 0,
        files: 0,
        complete: true,
    };
    // Each level pending holds its parent's handle: bounded, so that a deep tree made in
    // a volume cannot use up the daemon's file descriptors.
    const MAX_DEPTH: usize = 256;
    let mut stack: Vec<(std::rc::Rc<File>, Option<std::ffi::OsString>, usize)> =
        vec![(std::rc::Rc::new(top), None, 0)];
    while let Some((parent, name, depth)) = stack.pop() {
        let dir = match name {
            None => parent,
            Some(name) => match crate::export::beneath::open_dir(&*parent, Path::new(&name)) {
                Ok(d) => std::rc::Rc::new(d),
                Err(_) => continue,
            },
        };
        let Ok(entries) = fs::read_dir(crate::export::beneath::proc_path(&dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            if Instant::now() > until {
                usage.complete = false;
                return usage;
            }
            let Ok(m) = entry.metadata() else { continue };
            // Allocated blocks, as du counts them (sparse files count what they use).
            usage.bytes = usage.bytes.saturating_add(m.blocks().saturating_mul(512));
            usage.files += 1;
            if m.is_dir() {
                if depth + 1 >= MAX_DEPTH {
                    usage.complete = false;
                } else {
                    stack.push((dir.clone(), Some(entry.file_name()), depth + 1));
                }
            }
        }
    }
    usage
}

/// Paths on this node.
#[derive(Debug, Clone)]
pub struct NodeLayout {
    pub state_dir: PathBuf,
}

impl NodeLayout {
    pub fn mounts_dir(&self) -> PathBuf {
        self.state_dir.join("mounts")
    }
    pub fn mountpoint(&self, name: &str) -> PathBuf {
        self.mounts_dir().join(name)
    }
    /// Unmounts recorded until the export answers (see [`crate::host::pending`]).
    pub fn pending_unmounts_file(&self) -> PathBuf {
        self.state_dir.join("pending-unmounts.json")
    }
    /// The last backup this node made of each volume to each destination: the parent of
    /// its next one (see `backup::create`).
    pub fn backup_parents_file(&self) -> PathBuf {
        self.state_dir.join("backup-parents.json")
    }
    pub fn init(&self) -> Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(self.mounts_dir())
            .ctx(|| format!("creating {}", self.mounts_dir().display()))
    }
}

/// Deletes the entry `name` of the open folder `dir` (a tree, a file or a link, never
/// followed: `remove_dir_all` removes a link itself); a missing entry is not an error.
fn remove_entry(dir: &File, name: &str) -> std::io::Result<()> {
    let at = crate::export::beneath::proc_path(dir).join(name);
    let r = match fs::symlink_metadata(&at) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(&at),
        Ok(_) => fs::remove_file(&at),
        Err(e) => Err(e),
    };
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn trash_never_follows_symlinks_out_of_a_volume() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("precious"), b"keep me").unwrap();
        let layout = SharedLayout::new(root.path());
        layout.init().unwrap();
        let rec = VolumeRecord::new("web", "a", VolumeOptions::default(), 0);
        layout.create_volume(&rec).unwrap();
        let data = layout.data_dir("web");
        symlink(outside.path(), data.join("escape")).unwrap();
        symlink(outside.path().join("precious"), data.join("file-link")).unwrap();
        fs::create_dir(data.join("sub")).unwrap();
        symlink(outside.path(), data.join("sub/deeper")).unwrap();

        layout.trash_volume("web", "1").unwrap().unwrap();
        layout.empty_trash().unwrap();
        assert!(!layout.volume_dir("web").exists());
        assert_eq!(
            fs::read(outside.path().join("precious")).unwrap(),
            b"keep me"
        );
        assert_eq!(fs::read_dir(layout.trash_dir()).unwrap().count(), 0);
    }

    #[test]
    fn create_applies_mode_and_adopts_retained_data() {
        let root = tempfile::tempdir().unwrap();
        let layout = SharedLayout::new(root.path());
        layout.init().unwrap();
        let opts = VolumeOptions::from_map([("mode", "0750")]).unwrap();
        let rec = VolumeRecord::new("web", "a", opts, 0);
        assert!(!layout.create_volume(&rec).unwrap());
        let m = fs::metadata(layout.data_dir("web")).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o750);
        fs::write(layout.data_dir("web").join("f"), b"hi").unwrap();
        layout.retain_volume("web").unwrap();
        assert!(!layout.record_file("web").exists());
        assert!(
            layout.create_volume(&rec).unwrap(),
            "retained data must be adopted"
        );
        assert_eq!(fs::read(layout.data_dir("web").join("f")).unwrap(), b"hi");
    }

    #[test]
    fn a_missing_trash_is_an_error_and_the_data_stays() {
        let root = tempfile::tempdir().unwrap();
        let layout = SharedLayout::new(root.path());
        layout.init().unwrap();
        layout
            .create_volume(&VolumeRecord::new("web", "a", VolumeOptions::default(), 0))
            .unwrap();
        fs::remove_dir(layout.trash_dir()).unwrap();
        // A hold refuses to start without it (nothing then works under its name) ...
        let err = layout.pinned().unwrap_err();
        assert!(
            err.to_string().contains("restarting the daemon creates it"),
            "{err}"
        );
        // ... and a move by path says what is missing.
        let err = layout.trash_volume("web", "1").unwrap_err();
        assert!(err.to_string().contains("missing?"), "{err}");
        assert!(layout.data_dir("web").is_dir());
        assert_eq!(layout.trash_volume("gone", "1").unwrap(), None);
    }

    #[test]
    fn init_refuses_a_missing_root() {
        let err = SharedLayout::new("/nonexistent/caravan-root")
            .init()
            .unwrap_err();
        assert!(err.to_string().contains("is the export mounted"), "{err}");
    }

    #[test]
    fn usage_counts_blocks() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("a"), vec![1u8; 100_000]).unwrap();
        let u = disk_usage(File::open(d.path()).unwrap(), Duration::from_secs(5));
        assert!(u.complete);
        assert_eq!(u.files, 1);
        assert!(u.bytes >= 100_000, "{u:?}");
    }
}
