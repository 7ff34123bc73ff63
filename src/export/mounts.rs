//! Bind mounts on this node, and what `/proc/self/mountinfo` says is mounted.
//!
//! A volume is bind-mounted from `<root>/volumes/<name>/data` to
//! `<state-dir>/mounts/<name>` on its first Mount on this node and unmounted after its
//! last Unmount. Docker then bind-mounts that path into containers. The bind mount is what
//! keeps a container's data on the shared export even if the daemon restarts: the daemon
//! never unmounts on shutdown, and rebuilds its view from mountinfo on start.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use sys_mount::{Mount, MountFlags, UnmountFlags};

use crate::core::error::{Error, IoContext, Result};

/// Bind-mounts the open folder `folder` (whose path on the export is `source`, for
/// messages) on `target`, creating `target` if needed.
///
/// The folder was opened without following any link (see
/// [`crate::export::layout::SharedLayout::open_data_dir`]) and the mount is made from that handle
/// through `/proc/self/fd`: a symlink put in place of the volume's folders can never make
/// this node mount some other host path. The mount is `nodev`. After mounting, it is
/// checked to be that very folder (device and inode), and undone otherwise.
pub fn bind(folder: &fs::File, source: &Path, target: &Path) -> Result<()> {
    let meta = folder
        .metadata()
        .ctx(|| format!("inspecting {}", source.display()))?;
    if !meta.is_dir() {
        return Err(Error::invalid(format!(
            "{} is not a directory; refusing to mount it",
            source.display()
        )));
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(target)
        .ctx(|| format!("creating the mountpoint {}", target.display()))?;
    let from = crate::export::pinned::through_proc(folder).ok_or_else(|| {
        Error::invalid("bind mounts need /proc (mounted from an open folder, never by path)")
    })?;
    Mount::builder()
        .fstype("none")
        .flags(MountFlags::BIND)
        .mount(&from, target)
        .map(drop)
        .ctx(|| format!("bind-mounting {} on {}", source.display(), target.display()))?;
    // Device nodes on the export are never honoured through caravan's mounts: another
    // machine can create them there (a disk of this host's, /dev/mem). A bind mount takes
    // the flags of the mount it is made from only where they are locked, so `nodev` is
    // set on it here (containers' mounts, made from this one, inherit it).
    // A bind remount sets every per-mount flag: the ones the bind took from the export's
    // mount (ro, nosuid, noexec, atime) are given again.
    let kept = nix::sys::statvfs::statvfs(target)
        .map(|v| inherited_flags(v.flags()))
        .unwrap_or(MountFlags::empty());
    if let Err(e) = Mount::builder()
        .fstype("none")
        .flags(MountFlags::BIND | MountFlags::REMOUNT | MountFlags::NODEV | kept)
        .mount(target, target)
    {
        let _ = unbind(target);
        return Err(Error::io(
            format!("making the bind mount on {} nodev", target.display()),
            e,
        ));
    }
    let mounted = match fs::metadata(target) {
        Ok(m) => m,
        Err(e) => {
            let _ = unbind(target);
            return Err(Error::io(format!("inspecting {}", target.display()), e));
        }
    };
    if (mounted.dev(), mounted.ino()) != (meta.dev(), meta.ino()) {
        let _ = unbind(target);
        return Err(Error::invalid(format!(
            "the mount on {} is not the folder {} that was opened; undone",
            target.display(),
            source.display()
        )));
    }
    Ok(())
}

/// The per-mount flags of a mount, as `statvfs` shows them, for a remount to keep.
fn inherited_flags(f: nix::sys::statvfs::FsFlags) -> MountFlags {
    use nix::sys::statvfs::FsFlags;
    [
        (FsFlags::ST_RDONLY, MountFlags::RDONLY),
        (FsFlags::ST_NOSUID, MountFlags::NOSUID),
        (FsFlags::ST_NOEXEC, MountFlags::NOEXEC),
        (FsFlags::ST_NOATIME, MountFlags::NOATIME),
        (FsFlags::ST_NODIRATIME, MountFlags::NODIRATIME),
        (FsFlags::ST_RELATIME, MountFlags::RELATIME),
    ]
    .into_iter()
    .filter(|(st, _)| f.contains(*st))
    .fold(MountFlags::empty(), |all, (_, m)| all | m)
}

/// What a mountpoint of this node shows, against the volume's folder on the live export.
#[derive(Debug, PartialEq)]
pub enum Bind {
    /// The very folder (same device and inode), as a bind mount made by [`bind`] from the
    /// live export shows it.
    Live,
    /// Nothing is mounted there (unmounted behind the daemon's back).
    Vanished,
    /// A mount that does not reach the live export, with why: one made from a connection
    /// of the export that is gone fails its `stat` (`ENOTCONN` on FUSE, `ESTALE` on NFS),
    /// one made from a connection that was replaced shows that connection's device.
    Stale(String),
}

/// Checks what `target` shows against `folder`, the volume's folder opened on the live
/// export.
pub fn check_bind(target: &Path, folder: &fs::File) -> Result<Bind> {
    let want = folder
        .metadata()
        .ctx(|| "inspecting the volume's folder".to_string())?;
    match fs::metadata(target) {
        Ok(m) if (m.dev(), m.ino()) == (want.dev(), want.ino()) => Ok(Bind::Live),
        Ok(_) if !mount_table()?.iter().any(|m| m.mount_point == target) => Ok(Bind::Vanished),
        Ok(_) => Ok(Bind::Stale(
            "it shows another folder than the volume's on the export mounted now (made from a connection of the export that was replaced?)".into(),
        )),
        Err(e) if crate::export::connection::is_gone(&e) => Ok(Bind::Stale(format!(
            "its connection to the export is gone ({e})"
        ))),
        Err(e) => Ok(Bind::Stale(format!("it cannot be inspected ({e})"))),
    }
}

/// Unmounts `target` and removes the empty mountpoint. A busy mount is detached lazily
/// (it disappears once its last user goes) rather than left in place.
pub fn unbind(target: &Path) -> Result<()> {
    match sys_mount::unmount(target, UnmountFlags::empty()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => {
            tracing::warn!(mountpoint = %target.display(), "mount busy; detaching it lazily");
            sys_mount::unmount(target, UnmountFlags::DETACH)
                .ctx(|| format!("detaching {}", target.display()))?;
        }
        // Not mounted (EINVAL) or already gone: the goal is reached.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(nix::libc::EINVAL) | Some(nix::libc::ENOENT)
            ) => {}
        Err(e) => return Err(Error::io(format!("unmounting {}", target.display()), e)),
    }
    match fs::remove_dir(target) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            tracing::warn!(mountpoint = %target.display(), "could not remove the mountpoint: {e}")
        }
        _ => {}
    }
    Ok(())
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    /// Filesystem type as the kernel names it (`nfs4`, `fuse.glusterfs`, `ext4`, …).
    pub fs_type: String,
    /// What is mounted (`server:/export`, a device).
    pub source: String,
    /// Per-mount and per-superblock options together, comma-separated.
    pub options: String,
    /// The filesystem's device (`major:minor`) and the folder of it mounted here: a bind
    /// mount of the same folder shows the same pair in every mount namespace.
    pub device: String,
    pub root: PathBuf,
}

impl MountEntry {
    fn parse(line: &str) -> Option<MountEntry> {
        // id parent major:minor root mount-point options [optional...] - type source super-options
        let (left, right) = line.split_once(" - ")?;
        let left: Vec<&str> = left.split(' ').collect();
        let mut right = right.split(' ');
        let fs_type = right.next()?.to_string();
        let source = unescape(right.next()?);
        let super_options = right.next().unwrap_or("");
        Some(MountEntry {
            mount_point: unescape(left.get(4)?).into(),
            options: format!("{},{super_options}", left.get(5)?),
            fs_type,
            source,
            device: left.get(2)?.to_string(),
            root: unescape(left.get(3)?).into(),
        })
    }
}

/// The mount table of process `pid` (its mount namespace's, as that process sees it).
pub fn mount_table_of(pid: u32) -> Result<Vec<MountEntry>> {
    let path = format!("/proc/{pid}/mountinfo");
    let text = fs::read_to_string(&path).ctx(|| format!("reading {path}"))?;
    Ok(parse_mountinfo(&text))
}

/// This process's mount table.
pub fn mount_table() -> Result<Vec<MountEntry>> {
    let text =
        fs::read_to_string("/proc/self/mountinfo").ctx(|| "reading /proc/self/mountinfo".into())?;
    Ok(parse_mountinfo(&text))
}

fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(MountEntry::parse).collect()
}

/// The mount that `path` (absolute, symlinks resolved) is on: the one whose mount point is
/// its longest prefix.
pub fn mount_of<'a>(table: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    table
        .iter()
        .filter(|m| path.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.as_os_str().len())
}

/// Names of the folders directly under `dir` that are mount points, from mountinfo.
pub fn mounted_below(dir: &Path) -> Result<BTreeSet<String>> {
    Ok(mountpoints_below(&mount_table()?, dir))
}

fn mountpoints_below(table: &[MountEntry], dir: &Path) -> BTreeSet<String> {
    table
        .iter()
        .filter(|m| m.mount_point.parent() == Some(dir))
        .filter_map(|m| m.mount_point.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_mountpoints_directly_below_a_folder() {
        let info = "\
36 35 98:0 /mnt1 /mnt1 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
40 36 0:33 /volumes/web/data /var/lib/caravan/mounts/web rw - fuse.glusterfs gv0 rw
41 36 0:33 /volumes/a/data /var/lib/caravan/mounts/a\\040b rw - ext4 /dev/vda rw
42 36 0:33 /x /var/lib/caravan/mounts/web/sub rw - ext4 /dev/vda rw
43 36 0:33 /x /var/lib/caravan/mounts rw - ext4 /dev/vda rw
";
        let got = mountpoints_below(&parse_mountinfo(info), Path::new("/var/lib/caravan/mounts"));
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            vec!["a b".to_string(), "web".to_string()]
        );
    }

    #[test]
    fn mountinfo_lines_parse_with_escapes_and_options() {
        let line = "36 25 0:32 / /mnt/my\\040share rw,relatime shared:1 - nfs4 srv:/export rw,vers=4.2,addr=10.0.0.1,local_lock=none";
        let m = MountEntry::parse(line).unwrap();
        assert_eq!(m.mount_point, Path::new("/mnt/my share"));
        assert_eq!(m.fs_type, "nfs4");
        assert_eq!(m.source, "srv:/export");
        assert!(m.options.contains("vers=4.2") && m.options.starts_with("rw,relatime"));
        assert_eq!(
            (m.device.as_str(), m.root.as_path()),
            ("0:32", Path::new("/"))
        );
        let bind =
            MountEntry::parse("40 36 0:33 /volumes/a\\040b/data /data rw - fuse.glusterfs gv0 rw")
                .unwrap();
        assert_eq!(
            (bind.device.as_str(), bind.root.as_path()),
            ("0:33", Path::new("/volumes/a b/data"))
        );
        let table = vec![m];
        assert!(mount_of(&table, Path::new("/mnt/my share/x")).is_some());
        assert!(mount_of(&table, Path::new("/mnt/other")).is_none());
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape("a\\040b\\134c"), "a b\\c");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
    }
}
