//! Restoring a backup into an empty folder: its tree recreated entry by entry through
//! handles (folders, files with their holes, hard links, symlinks as links, FIFOs), with
//! owners, modes, extended attributes and times; every chunk checked against its hash
//! before it is written. A damaged chunk ends the restore with the path of the file that
//! needs it.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::format::{self, Entry, Kind, Tree};
use super::lock::{LockKind, RepoLock};
use super::{ChunkError, PackReader, Repo};
use crate::error::{Error, Result};
use crate::treecopy::{CopyReport, Meta, Privileges, Progress, STOPPED};

/// Restores backup `id` of `repo` into the empty folder `dst` (a handle), carrying over
/// set-id bits, privileged attributes and the top folder's owner and mode only when
/// `privileges` keeps them (see [`Privileges`]); counts into `progress` (whose totals it
/// sets) and stops when asked.
///
/// What it writes is bounded: a backup whose recorded data is larger than `size` (the
/// volume's, if it has one) is refused before anything is written, and a restore that
/// would write more than the backup records (a tree whose files share chunks can
/// describe far more data than is stored) stops with an error there.
#[allow(clippy::too_many_arguments)]
pub fn restore(
    repo: &Repo,
    id: &str,
    dst: &std::fs::File,
    node: &str,
    progress: &Progress,
    privileges: Privileges,
    size: Option<u64>,
) -> Result<CopyReport> {
    let mut lock = RepoLock::acquire(&repo.b, LockKind::Shared, node, &format!("restore of {id}"))?;
    let result = (|| {
        let summary = repo.summary(id)?;
        if let Some(size) = size.filter(|s| summary.tree.bytes > *s) {
            return Err(Error::invalid(format!(
                "backup {id} holds {} of data, more than the volume's size {}: create the volume with a larger size (or none)",
                crate::volume::format_size(summary.tree.bytes),
                crate::volume::format_size(size)
            )));
        }
        progress.expect(summary.tree.files, summary.tree.bytes);
        let tree = repo.tree(&summary)?;
        let chunks = repo.chunks()?;
        let budget = Budget {
            recorded: summary.tree.bytes,
            written: 0,
        };
        write_tree(
            repo, &tree, &chunks, dst, progress, &mut lock, id, privileges, budget,
        )
    })();
    lock.release(&repo.b);
    result
}

/// The data a restore may still write: what the backup records, no more.
struct Budget {
    recorded: u64,
    written: u64,
}

impl Budget {
    fn spend(&mut self, bytes: u64) -> std::result::Result<(), String> {
        self.written = self
            .written
            .checked_add(bytes)
            .filter(|w| *w <= self.recorded)
            .ok_or_else(|| {
                format!(
                    "its files hold more data than the {} its summary records; the restore stopped there",
                    crate::volume::format_size(self.recorded)
                )
            })?;
        Ok(())
    }
}

/// One folder being filled: its entry, its handle, its path (relative to `dst`).
struct Frame {
    index: usize,
    dir: OwnedFd,
    rel: PathBuf,
}

fn meta_of(e: &Entry) -> Meta {
    Meta {
        uid: e.uid,
        gid: e.gid,
        mode: e.mode,
        atime: e.atime,
        mtime: e.mtime,
    }
}

fn xattrs_of(e: &Entry) -> Vec<crate::treecopy::Xattr> {
    e.xattrs
        .iter()
        .filter_map(|(k, v)| Some((k.as_bytes().to_vec(), format::unhex(v)?)))
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn write_tree(
    repo: &Repo,
    tree: &Tree,
    chunks: &super::Chunks,
    dst: &std::fs::File,
    progress: &Progress,
    lock: &mut RepoLock,
    id: &str,
    privileges: Privileges,
    mut budget: Budget,
) -> Result<CopyReport> {
    let started = Instant::now();
    let mut report = CopyReport::default();
    let mut reader = PackReader::new(repo);
    let fail = |i: usize, e: std::io::Error| Error::io(format!("restoring {}", tree.path_of(i)), e);
    let root = nix::fcntl::openat(
        dst.as_fd(),
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fail(0, e.into()))?;
    let mut stack = vec![Frame {
        index: 0,
        dir: root,
        rel: PathBuf::new(),
    }];
    // Where each linked file was restored (relative to dst), for its other names.
    let mut linked: HashMap<usize, PathBuf> = HashMap::new();
    for (i, e) in tree.entries.iter().enumerate().skip(1) {
        if progress.stop.load(Ordering::Relaxed) {
            return Err(Error::Backup(STOPPED.replace("copy", "restore")));
        }
        // Depth-first order: the parent is on the stack; the folders left are done.
        while stack.last().is_some_and(|f| f.index != e.parent as usize) {
            let done = stack.pop().expect("checked");
            if stack.is_empty() {
                return Err(Error::Backup(format!(
                    "backup {id} is damaged: its tree is out of order at {}",
                    tree.path_of(i)
                )));
            }
            finish_dir(
                &tree.entries[done.index],
                &done.dir,
                &mut report,
                privileges,
                false,
            )
            .map_err(|x| fail(done.index, x))?;
        }
        let top = stack.last().ok_or_else(|| {
            Error::Backup(format!("backup {id} is damaged: its tree is out of order"))
        })?;
        let name_bytes = e.name.bytes().unwrap_or_default();
        let name = OsStr::from_bytes(&name_bytes);
        let rel = top.rel.join(name);
        let dir = top.dir.as_fd();
        let meta = meta_of(e);
        match &e.kind {
            Kind::Dir => {
                if stack.len() >= crate::treecopy::MAX_DEPTH {
                    return Err(Error::Backup(format!(
                        "{}: deeper than {} levels",
                        tree.path_of(i),
                        crate::treecopy::MAX_DEPTH
                    )));
                }
                nix::sys::stat::mkdirat(dir, name, Mode::from_bits_truncate(0o700))
                    .map_err(|x| fail(i, x.into()))?;
                let sub = nix::fcntl::openat(
                    dir,
                    name,
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|x| fail(i, x.into()))?;
                stack.push(Frame {
                    index: i,
                    dir: sub,
                    rel,
                });
            }
            Kind::File {
                size,
                extents,
                linked: is_linked,
            } => {
                let out = crate::treecopy::create_new(dir, name).map_err(|x| fail(i, x.into()))?;
                for x in extents {
                    let mut off = x.offset;
                    for (cid, csize) in &x.chunks {
                        budget.spend(u64::from(*csize)).map_err(|why| {
                            Error::Backup(format!(
                                "backup {id} is damaged at {}: {why}",
                                tree.path_of(i)
                            ))
                        })?;
                        let data = match reader.chunk(chunks, *cid, *csize) {
                            Ok(bytes) => bytes,
                            Err(ChunkError::Damaged(why)) => {
                                return Err(Error::Backup(format!(
                                    "{} is damaged in backup {id}: {why} (`caravan backup verify` lists every damaged file)",
                                    tree.path_of(i)
                                )))
                            }
                            Err(ChunkError::Failed(e)) => return Err(e),
                        };
                        // A chunk of zeros is left a hole: the file reads the same, and
                        // sparse files stay sparse.
                        if data.iter().any(|b| *b != 0) {
                            write_at(out.as_fd(), &data, off).map_err(|x| fail(i, x))?;
                        }
                        off += u64::from(*csize);
                        progress
                            .bytes
                            .fetch_add(u64::from(*csize), Ordering::Relaxed);
                        report.bytes += u64::from(*csize);
                    }
                }
                let len = i64::try_from(*size)
                    .map_err(|_| fail(i, std::io::Error::other("too large")))?;
                nix::unistd::ftruncate(&out, len).map_err(|x| fail(i, x.into()))?;
                crate::treecopy::apply_meta(
                    out.as_fd(),
                    &meta,
                    &xattrs_of(e),
                    privileges,
                    &mut report,
                )
                .map_err(|x| fail(i, x.into()))?;
                if *is_linked {
                    linked.insert(i, rel);
                }
                report.files += 1;
                report.copied += 1;
                progress.files.fetch_add(1, Ordering::Relaxed);
            }
            Kind::Hardlink { to } => {
                let first = linked.get(&(*to as usize)).ok_or_else(|| {
                    Error::Backup(format!(
                        "backup {id} is damaged: {} links to a file not restored",
                        tree.path_of(i)
                    ))
                })?;
                crate::treecopy::link_again(&stack[0].dir, first, dir, name)
                    .map_err(|x| fail(i, x))?;
                report.hard_links += 1;
            }
            Kind::Symlink { target } => {
                let t = target.bytes().unwrap_or_default();
                crate::treecopy::make_symlink(dir, name, OsStr::from_bytes(&t), &meta)
                    .map_err(|x| fail(i, x))?;
                report.symlinks += 1;
            }
            Kind::Fifo => {
                crate::treecopy::make_fifo(dir, name, &meta).map_err(|x| fail(i, x))?;
                report.fifos += 1;
            }
        }
        lock.refresh(&repo.b)?;
    }
    while let Some(done) = stack.pop() {
        let top = stack.is_empty();
        finish_dir(
            &tree.entries[done.index],
            &done.dir,
            &mut report,
            privileges,
            top,
        )
        .map_err(|x| fail(done.index, x))?;
    }
    report.millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(report)
}

/// A folder's own metadata, once everything in it is made (so its times stick). The top
/// folder keeps the new volume's own owner, mode and attributes unless privileges are
/// kept.
fn finish_dir(
    e: &Entry,
    dir: &OwnedFd,
    report: &mut CopyReport,
    privileges: Privileges,
    top: bool,
) -> std::io::Result<()> {
    if top && privileges == Privileges::Drop {
        crate::treecopy::apply_times(dir.as_fd(), &meta_of(e))?;
    } else {
        crate::treecopy::apply_meta(dir.as_fd(), &meta_of(e), &xattrs_of(e), privileges, report)?;
    }
    report.dirs += 1;
    Ok(())
}

fn write_at(fd: std::os::fd::BorrowedFd<'_>, data: &[u8], off: u64) -> std::io::Result<()> {
    let mut done = 0;
    while done < data.len() {
        let at = i64::try_from(off + done as u64)
            .map_err(|_| std::io::Error::other("offset too large"))?;
        done += nix::sys::uio::pwrite(fd, &data[done..], at)?;
    }
    Ok(())
}
