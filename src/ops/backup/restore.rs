//! Restoring a backup into an empty folder: its tree recreated entry by entry through
//! handles (folders, files with their holes, hard links, symlinks as links, FIFOs), with
//! owners, modes, extended attributes and times; every chunk checked against its hash
//! before it is written. A damaged chunk ends the restore with the path of the file that
//! needs it. The tree is walked a page at a time ([`super::tree`]): a restore holds the
//! folders it is in, never the whole tree.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::format::node::{Node, NodeKind};
use super::lock::{LockKind, RepoLock};
use super::tree::{self, At, Step};
use super::{ChunkError, PackReader, Repo};
use crate::core::copy_report::CopyReport;
use crate::core::error::{Error, Result};
use crate::export::treecopy::{Meta, Privileges, Progress};

/// Hard-linked files remembered at most (their other names after that fail the restore,
/// naming the bound, as a copy's do).
const MAX_LINKED: usize = 1_000_000;

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
                crate::core::volume::format_size(summary.tree.bytes),
                crate::core::volume::format_size(size)
            )));
        }
        progress.expect(summary.tree.files, summary.tree.bytes);
        let chunks = repo.chunks()?;
        let started = Instant::now();
        let mut r = Restorer {
            repo,
            id,
            dst,
            chunks: &chunks,
            reader: PackReader::new(repo),
            progress,
            privileges,
            budget: Budget {
                recorded: summary.tree.bytes,
                written: 0,
            },
            open: Vec::new(),
            linked: HashMap::new(),
            report: CopyReport::default(),
            lock: &mut lock,
        };
        tree::walk(repo, &summary, |at, step| r.step(at, step))?;
        let mut report = r.report;
        report.millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        Ok(report)
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
                    crate::core::volume::format_size(self.recorded)
                )
            })?;
        Ok(())
    }
}

struct Restorer<'a> {
    repo: &'a Repo,
    id: &'a str,
    dst: &'a std::fs::File,
    chunks: &'a super::Chunks,
    reader: PackReader<'a>,
    progress: &'a Progress,
    privileges: Privileges,
    budget: Budget,
    /// The folders being filled: their handles and paths (relative to `dst`), the top
    /// folder first.
    open: Vec<(OwnedFd, PathBuf)>,
    /// Where each linked file was restored (relative to `dst`), for its other names.
    linked: HashMap<u64, PathBuf>,
    report: CopyReport,
    lock: &'a mut RepoLock,
}

fn meta_of(n: &Node) -> Meta {
    Meta {
        uid: n.uid,
        gid: n.gid,
        mode: n.mode,
        atime: n.atime,
        mtime: n.mtime,
    }
}

fn xattrs_of(n: &Node) -> Vec<crate::export::treecopy::Xattr> {
    n.xattrs
        .iter()
        .filter_map(|(k, v)| Some((k.as_bytes().to_vec(), super::format::unhex(v)?)))
        .collect()
}

impl Restorer<'_> {
    fn step(&mut self, at: &At, step: Step) -> Result<()> {
        if self.progress.stop.load(Ordering::Relaxed) {
            return Err(Error::Stopped("restore"));
        }
        let fail =
            |n: &Node, e: std::io::Error| Error::io(format!("restoring {}", at.path_of(n)), e);
        match step {
            Step::Enter(n) if self.open.is_empty() => {
                // The top folder: the handle given, readable (the caller's may be O_PATH).
                let root = nix::fcntl::openat(
                    self.dst.as_fd(),
                    ".",
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| fail(n, e.into()))?;
                self.open.push((root, PathBuf::new()));
            }
            Step::Enter(n) => {
                let name_bytes = n.name.bytes().unwrap_or_default();
                let name = OsStr::from_bytes(&name_bytes);
                let (dir, rel) = self.open.last().expect("inside the top folder");
                let rel = rel.join(name);
                nix::sys::stat::mkdirat(dir.as_fd(), name, Mode::from_bits_truncate(0o700))
                    .map_err(|x| fail(n, x.into()))?;
                let sub = nix::fcntl::openat(
                    dir.as_fd(),
                    name,
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|x| fail(n, x.into()))?;
                self.open.push((sub, rel));
            }
            Step::Leave(n) => {
                let (dir, _) = self.open.pop().expect("entered");
                let top = self.open.is_empty();
                self.finish_dir(n, &dir, top).map_err(|x| fail(n, x))?;
            }
            Step::Leaf(n) => self.leaf(at, n)?,
        }
        self.lock.refresh(&self.repo.b)
    }

    fn leaf(&mut self, at: &At, n: &Node) -> Result<()> {
        let fail = |e: std::io::Error| Error::io(format!("restoring {}", at.path_of(n)), e);
        let name_bytes = n.name.bytes().unwrap_or_default();
        let name = OsStr::from_bytes(&name_bytes);
        let (dir, rel) = self.open.last().expect("inside the top folder");
        let (dir, rel) = (dir.as_fd(), rel.join(name));
        let meta = meta_of(n);
        match &n.kind {
            NodeKind::File { size, link, .. } => {
                let out =
                    crate::export::treecopy::create_new(dir, name).map_err(|x| fail(x.into()))?;
                let (id, chunks) = (self.id, self.chunks);
                let (reader, budget, progress) =
                    (&mut self.reader, &mut self.budget, self.progress);
                let mut written = 0u64;
                at.runs(n, |x| {
                    let mut off = x.offset;
                    for (cid, csize) in &x.chunks {
                        budget.spend(u64::from(*csize)).map_err(|why| {
                            Error::Backup(format!(
                                "backup {id} is damaged at {}: {why}",
                                at.path_of(n)
                            ))
                        })?;
                        let data = match reader.chunk(chunks, *cid, *csize) {
                            Ok(bytes) => bytes,
                            Err(ChunkError::Damaged(why)) => {
                                return Err(Error::Backup(format!(
                                    "{} is damaged in backup {id}: {why} (`caravan backup verify` lists every damaged file)",
                                    at.path_of(n)
                                )))
                            }
                            Err(ChunkError::Failed(e)) => return Err(e),
                        };
                        // A chunk of zeros is left a hole: the file reads the same, and
                        // sparse files stay sparse.
                        if data.iter().any(|b| *b != 0) {
                            write_at(out.as_fd(), &data, off).map_err(fail)?;
                        }
                        off += u64::from(*csize);
                        written += u64::from(*csize);
                        progress
                            .bytes
                            .fetch_add(u64::from(*csize), Ordering::Relaxed);
                    }
                    Ok(())
                })?;
                self.report.bytes += written;
                let len =
                    i64::try_from(*size).map_err(|_| fail(std::io::Error::other("too large")))?;
                nix::unistd::ftruncate(&out, len).map_err(|x| fail(x.into()))?;
                crate::export::treecopy::apply_meta(
                    out.as_fd(),
                    &meta,
                    &xattrs_of(n),
                    self.privileges,
                    &mut self.report,
                )
                .map_err(|x| fail(x.into()))?;
                if let Some(link) = link {
                    if self.linked.len() >= MAX_LINKED {
                        return Err(Error::Backup(format!(
                            "{}: more than {MAX_LINKED} hard-linked files",
                            at.path_of(n)
                        )));
                    }
                    self.linked.insert(*link, rel);
                }
                self.report.files += 1;
                self.report.copied += 1;
                self.progress.files.fetch_add(1, Ordering::Relaxed);
            }
            NodeKind::Hardlink { link } => {
                let first = self.linked.get(link).ok_or_else(|| {
                    Error::Backup(format!(
                        "backup {} is damaged: {} links to a file not restored",
                        self.id,
                        at.path_of(n)
                    ))
                })?;
                crate::export::treecopy::link_again(&self.open[0].0, first, dir, name)
                    .map_err(fail)?;
                self.report.hard_links += 1;
            }
            NodeKind::Symlink { target } => {
                let t = target.bytes().unwrap_or_default();
                crate::export::treecopy::make_symlink(dir, name, OsStr::from_bytes(&t), &meta)
                    .map_err(fail)?;
                self.report.symlinks += 1;
            }
            NodeKind::Fifo => {
                crate::export::treecopy::make_fifo(dir, name, &meta).map_err(fail)?;
                self.report.fifos += 1;
            }
            NodeKind::Dir { .. } => unreachable!("folders are entered"),
        }
        Ok(())
    }

    /// A folder's own metadata, once everything in it is made (so its times stick). The
    /// top folder keeps the new volume's own owner, mode and attributes unless privileges
    /// are kept.
    fn finish_dir(&mut self, n: &Node, dir: &OwnedFd, top: bool) -> std::io::Result<()> {
        if top && self.privileges == Privileges::Drop {
            crate::export::treecopy::apply_times(dir.as_fd(), &meta_of(n))?;
        } else {
            crate::export::treecopy::apply_meta(
                dir.as_fd(),
                &meta_of(n),
                &xattrs_of(n),
                self.privileges,
                &mut self.report,
            )?;
        }
        self.report.dirs += 1;
        Ok(())
    }
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
