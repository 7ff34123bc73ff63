//! Making a backup: the source folder walked through handles (as a snapshot copy walks
//! it, never through a link), each file's data regions cut into chunks, the chunks not
//! yet stored compressed into packs and sent, then the tree, then the summary.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Instant;

use bytes::Bytes;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::SFlag;

use super::format::{
    self, Entry, Extent, Id, Index, Kind, Located, SendStats, Summary, Text, Tree, TreeStats,
};
use super::lock::{LockKind, RepoLock};
use super::Repo;
use crate::error::{Error, Result};
use crate::treecopy::{CopyReport, Meta, Progress, STOPPED};

/// What is being backed up, for the summary.
#[derive(Debug, Clone)]
pub struct Source {
    pub volume: String,
    pub snapshot: Option<String>,
    pub node: String,
    /// What the source was while being read (docs/semantics.md, "Backups").
    pub consistency: String,
}

/// How far ahead of its chunk boundaries the chunker reads.
const WINDOW: usize = 4 * format::MAX_CHUNK as usize;
/// zstd's level: its default, the balance restic's default also strikes.
const LEVEL: i32 = 3;

/// Backs up the folder `src` (a handle) as backup `id` of `repo`.
pub fn create(
    repo: &Repo,
    id: &str,
    src: &std::fs::File,
    source: &Source,
    progress: &Progress,
) -> Result<Summary> {
    format::validate_id(id)?;
    let started = Instant::now();
    let started_at = now_rfc3339();
    let purpose = match &source.snapshot {
        Some(s) => format!("backup of {}@{s}", source.volume),
        None => format!("backup of {}", source.volume),
    };
    let mut lock = RepoLock::acquire(&repo.b, LockKind::Shared, &source.node, &purpose)?;
    let result = (|| {
        let known: HashSet<Id> = repo.chunks()?.into_keys().collect();
        // Files unchanged since the last backup of the volume are not read again (not for
        // a snapshot: its copy has new status-change times and inodes, so nothing would
        // match).
        let parent = match source.snapshot {
            None => parent_of(repo, &source.volume),
            Some(_) => None,
        };
        let (tree, stats, sent) = send_tree(repo, src, known, parent, progress, &mut lock)?;
        let stored = tree.encode()?;
        let tree_id = Id::of(&stored);
        let tree_size = stored.len() as u64;
        repo.b.put(&format!("trees/{id}"), Bytes::from(stored))?;
        let summary = Summary {
            format: format::FORMAT,
            id: id.to_string(),
            volume: source.volume.clone(),
            snapshot: source.snapshot.clone(),
            node: source.node.clone(),
            started_at: started_at.clone(),
            finished_at: now_rfc3339(),
            millis: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            consistency: source.consistency.clone(),
            tree: stats,
            sent,
            tree_id,
            tree_size,
        };
        // Last: from here on the backup is listed.
        repo.b.put(
            &format!("backups/{id}.json"),
            Bytes::from(serde_json::to_vec_pretty(&summary).expect("a summary serializes")),
        )?;
        Ok(summary)
    })();
    lock.release(&repo.b);
    result
}

pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// A pack being filled, and what it holds.
struct Packer {
    data: Vec<u8>,
    chunks: Vec<Located>,
}

type Sealed = (Id, Bytes, Bytes);

impl Packer {
    fn add(&mut self, id: Id, stored: &[u8], size: usize) {
        self.chunks.push(Located {
            id,
            offset: self.data.len() as u64,
            length: stored.len() as u32,
            size: size as u32,
        });
        self.data.extend_from_slice(stored);
    }

    /// The pack and its index, ready to send; the packer is empty again.
    fn seal(&mut self) -> Option<Sealed> {
        if self.chunks.is_empty() {
            return None;
        }
        let data = std::mem::take(&mut self.data);
        let pack = Id::of(&data);
        let index = Index {
            format: format::FORMAT,
            pack,
            pack_size: data.len() as u64,
            chunks: std::mem::take(&mut self.chunks),
        };
        let index = serde_json::to_vec(&index).expect("an index serializes");
        Some((pack, Bytes::from(data), Bytes::from(index)))
    }
}

/// The walk and the sending: a thread sends sealed packs (pack first, its index right
/// after, so that an index never names a pack that is not there) while this one reads.
fn send_tree(
    repo: &Repo,
    src: &std::fs::File,
    known: HashSet<Id>,
    parent: Option<Parent>,
    progress: &Progress,
    lock: &mut RepoLock,
) -> Result<(Tree, TreeStats, SendStats)> {
    let (tx, rx) = mpsc::sync_channel::<Sealed>(2);
    std::thread::scope(|scope| {
        let sender = scope.spawn(move || -> Result<u64> {
            let mut packs = 0;
            for (pack, data, index) in rx {
                repo.b.put(&format!("packs/{}", pack.hex()), data)?;
                repo.b.put(&format!("index/{}", pack.hex()), index)?;
                packs += 1;
            }
            Ok(packs)
        });
        let mut walker = Walker {
            repo,
            known,
            parent,
            packer: Packer {
                data: Vec::with_capacity(format::PACK_TARGET + format::MAX_CHUNK as usize),
                chunks: Vec::new(),
            },
            tx: Some(tx),
            buf: Vec::with_capacity(WINDOW),
            sent: SendStats::default(),
            progress,
        };
        let walked = walker.walk(src, lock);
        let walked = walked.and_then(|t| {
            if let Some(sealed) = walker.packer.seal() {
                walker.send(sealed)?;
            }
            Ok(t)
        });
        drop(walker.tx.take());
        let packs = sender
            .join()
            .unwrap_or_else(|_| Err(Error::Backup("the sending thread failed".into())));
        // The sender's error is the cause when both failed (the walk then only saw the
        // channel closed).
        let packs = packs?;
        let (tree, stats) = walked?;
        walker.sent.packs = packs;
        Ok((tree, stats, walker.sent))
    })
}

struct Walker<'a> {
    repo: &'a Repo,
    known: HashSet<Id>,
    parent: Option<Parent>,
    packer: Packer,
    tx: Option<mpsc::SyncSender<Sealed>>,
    buf: Vec<u8>,
    sent: SendStats,
    progress: &'a Progress,
}

/// One folder being walked.
struct Frame {
    dir: OwnedFd,
    names: Vec<OsString>,
    next: usize,
    index: u32,
    /// The same folder in the parent backup's tree, if it has it.
    matched: Option<u32>,
}

/// The last backup of the same volume, to take unchanged files from.
pub(crate) struct Parent {
    tree: Tree,
    /// (folder's entry, name) -> entry.
    children: HashMap<(u32, Vec<u8>), u32>,
}

impl Parent {
    pub(crate) fn new(tree: Tree) -> Parent {
        let children = tree
            .entries
            .iter()
            .enumerate()
            .skip(1)
            .filter_map(|(i, e)| Some(((e.parent, e.name.bytes()?), i as u32)))
            .collect();
        Parent { tree, children }
    }

    fn child(&self, dir: Option<u32>, name: &[u8]) -> Option<&Entry> {
        let i = *self.children.get(&(dir?, name.to_vec()))?;
        self.tree.entries.get(i as usize)
    }

    fn dir(&self, dir: Option<u32>, name: &[u8]) -> Option<u32> {
        let i = *self.children.get(&(dir?, name.to_vec()))?;
        (self.tree.entries.get(i as usize)?.kind == Kind::Dir).then_some(i)
    }
}

/// The last complete backup of `volume` itself (not of a snapshot) at the destination,
/// if its tree can be read: files unchanged since are taken from it.
pub(crate) fn parent_of(repo: &Repo, volume: &str) -> Option<Parent> {
    let last = repo
        .summaries()
        .ok()?
        .into_iter()
        .filter(|s| s.volume == volume && s.snapshot.is_none())
        .max_by(|a, b| (&a.finished_at, &a.id).cmp(&(&b.finished_at, &b.id)))?;
    match repo.tree(&last) {
        Ok(t) => Some(Parent::new(t)),
        Err(e) => {
            tracing::warn!("every file is read again: {e}");
            None
        }
    }
}

fn io(path: &str, e: impl Into<std::io::Error>) -> Error {
    Error::io(format!("reading {path}"), e.into())
}

impl Walker<'_> {
    fn send(&mut self, sealed: Sealed) -> Result<()> {
        self.tx
            .as_ref()
            .expect("sending until the walk ends")
            .send(sealed)
            .map_err(|_| Error::Backup("sending to the destination failed".into()))
    }

    fn walk(&mut self, src: &std::fs::File, lock: &mut RepoLock) -> Result<(Tree, TreeStats)> {
        let mut report = CopyReport::default();
        let root = nix::fcntl::openat(
            src.as_fd(),
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| io("/", e))?;
        let st = nix::sys::stat::fstat(root.as_fd()).map_err(|e| io("/", e))?;
        let mut entries = vec![self.entry(0, b"", Kind::Dir, &st, root.as_fd(), &mut report)];
        let mut stack = vec![Frame {
            names: crate::treecopy::list(root.as_fd()).map_err(|e| io("/", e))?,
            dir: root,
            next: 0,
            index: 0,
            matched: Some(0),
        }];
        report.dirs += 1;
        let mut linked: HashMap<(u64, u64), u32> = HashMap::new();
        while let Some(top) = stack.last_mut() {
            if self.progress.stop.load(Ordering::Relaxed) {
                return Err(Error::Backup(STOPPED.replace("copy", "backup")));
            }
            let Some(name) = top.names.get(top.next).cloned() else {
                stack.pop();
                continue;
            };
            top.next += 1;
            let parent = top.index;
            let matched = top.matched;
            let dir = top.dir.try_clone().map_err(|e| io("/", e))?;
            if entries.len() >= format::MAX_ENTRIES {
                return Err(Error::Backup(format!(
                    "more than {} entries",
                    format::MAX_ENTRIES
                )));
            }
            let index = u32::try_from(entries.len())
                .map_err(|_| Error::Backup("too many entries".into()))?;
            let path = || {
                let at = format::path_of(&entries, parent as usize);
                let name = String::from_utf8_lossy(name.as_bytes());
                format!("{}/{name}", at.trim_end_matches('/'))
            };
            let st = match nix::sys::stat::fstatat(
                dir.as_fd(),
                name.as_os_str(),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                Ok(st) => st,
                Err(Errno::ENOENT) => {
                    report.vanished += 1;
                    continue;
                }
                Err(e) => return Err(io(&path(), e)),
            };
            let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
            let bytes = name.as_bytes();
            match kind {
                SFlag::S_IFDIR => {
                    if stack.len() >= crate::treecopy::MAX_DEPTH {
                        return Err(Error::Backup(format!(
                            "{}: deeper than {} levels",
                            path(),
                            crate::treecopy::MAX_DEPTH
                        )));
                    }
                    let Some(sub) = crate::treecopy::open_nofollow(
                        dir.as_fd(),
                        &name,
                        OFlag::O_RDONLY | OFlag::O_DIRECTORY,
                        &mut report,
                    )
                    .map_err(|e| io(&path(), e))?
                    else {
                        continue;
                    };
                    let st = nix::sys::stat::fstat(sub.as_fd()).map_err(|e| io(&path(), e))?;
                    let names = crate::treecopy::list(sub.as_fd()).map_err(|e| io(&path(), e))?;
                    entries.push(self.entry(
                        parent,
                        bytes,
                        Kind::Dir,
                        &st,
                        sub.as_fd(),
                        &mut report,
                    ));
                    report.dirs += 1;
                    stack.push(Frame {
                        dir: sub,
                        names,
                        next: 0,
                        index,
                        matched: self.parent.as_ref().and_then(|p| p.dir(matched, bytes)),
                    });
                }
                SFlag::S_IFREG => {
                    let Some((file, st)) =
                        crate::treecopy::open_regular(dir.as_fd(), &name, &mut report)
                            .map_err(|e| io(&path(), e))?
                    else {
                        continue;
                    };
                    let key = (st.st_dev, st.st_ino);
                    if st.st_nlink > 1 {
                        if let Some(first) = linked.get(&key) {
                            entries.push(self.entry(
                                parent,
                                bytes,
                                Kind::Hardlink { to: *first },
                                &st,
                                file.as_fd(),
                                &mut report,
                            ));
                            report.hard_links += 1;
                            continue;
                        }
                        if linked.len() < 1_000_000 {
                            linked.insert(key, index);
                        }
                    }
                    let size = u64::try_from(st.st_size).unwrap_or(0);
                    let extents = match self.unchanged(matched, bytes, &st) {
                        Some(x) => x,
                        None => self.file_data(file.as_fd(), size).map_err(|e| match e {
                            Error::Io { source, .. } => io(&path(), source),
                            other => other,
                        })?,
                    };
                    let data: u64 = extents
                        .iter()
                        .flat_map(|x| x.chunks.iter().map(|c| u64::from(c.1)))
                        .sum();
                    report.bytes = report.bytes.saturating_add(data);
                    report.files += 1;
                    self.progress.files.fetch_add(1, Ordering::Relaxed);
                    entries.push(self.entry(
                        parent,
                        bytes,
                        Kind::File {
                            size,
                            extents,
                            linked: st.st_nlink > 1,
                        },
                        &st,
                        file.as_fd(),
                        &mut report,
                    ));
                }
                SFlag::S_IFLNK => {
                    let target = match nix::fcntl::readlinkat(dir.as_fd(), name.as_os_str()) {
                        Ok(t) => t,
                        Err(Errno::ENOENT | Errno::EINVAL) => {
                            report.vanished += 1;
                            continue;
                        }
                        Err(e) => return Err(io(&path(), e)),
                    };
                    entries.push(self.entry(
                        parent,
                        bytes,
                        Kind::Symlink {
                            target: Text::of(target.as_bytes()),
                        },
                        &st,
                        dir.as_fd(),
                        &mut report,
                    ));
                    report.symlinks += 1;
                }
                SFlag::S_IFIFO => {
                    entries.push(self.entry(
                        parent,
                        bytes,
                        Kind::Fifo,
                        &st,
                        dir.as_fd(),
                        &mut report,
                    ));
                    report.fifos += 1;
                }
                _ => report.skipped += 1,
            }
            lock.refresh(&self.repo.b)?;
        }
        let stats = TreeStats::from(&report);
        Ok((
            Tree {
                format: format::FORMAT,
                entries,
            },
            stats,
        ))
    }

    /// The data runs of a file the parent backup has with the same size, modification
    /// and status-change times and inode (as restic judges it: a write changes the
    /// status-change time, which nothing can set back), if every chunk is still stored.
    fn unchanged(
        &mut self,
        dir: Option<u32>,
        name: &[u8],
        st: &nix::sys::stat::FileStat,
    ) -> Option<Vec<Extent>> {
        let prev = self.parent.as_ref()?.child(dir, name)?;
        let Kind::File { size, extents, .. } = &prev.kind else {
            return None;
        };
        let same = *size == u64::try_from(st.st_size).ok()?
            && prev.mtime == (st.st_mtime, st.st_mtime_nsec)
            && prev.ctime == Some((st.st_ctime, st.st_ctime_nsec))
            && prev.ino == Some(st.st_ino);
        let chunks = || extents.iter().flat_map(|x| x.chunks.iter());
        if !same || !chunks().all(|(id, _)| self.known.contains(id)) {
            return None;
        }
        let (mut n, mut bytes) = (0u64, 0u64);
        for (_, len) in chunks() {
            n += 1;
            bytes += u64::from(*len);
        }
        self.sent.chunks += n;
        self.sent.reused_bytes += bytes;
        self.sent.unchanged_files += 1;
        self.progress.bytes.fetch_add(bytes, Ordering::Relaxed);
        Some(extents.clone())
    }

    /// An entry with the metadata of `st` and the extended attributes read from `fd`.
    fn entry(
        &self,
        parent: u32,
        name: &[u8],
        kind: Kind,
        st: &nix::sys::stat::FileStat,
        fd: BorrowedFd<'_>,
        report: &mut CopyReport,
    ) -> Entry {
        let meta = Meta::of(st);
        let mut xattrs = BTreeMap::new();
        if matches!(kind, Kind::Dir | Kind::File { .. }) {
            let (attrs, unread) = crate::treecopy::read_xattrs(fd);
            report.xattr_errors += unread;
            for (n, v) in attrs {
                match String::from_utf8(n) {
                    Ok(n) => {
                        xattrs.insert(n, format::hex(&v));
                    }
                    Err(_) => report.xattr_errors += 1,
                }
            }
        }
        Entry {
            parent,
            name: Text::of(name),
            kind,
            uid: meta.uid,
            gid: meta.gid,
            mode: meta.mode,
            atime: meta.atime,
            mtime: meta.mtime,
            ctime: Some((st.st_ctime, st.st_ctime_nsec)),
            ino: Some(st.st_ino),
            xattrs,
        }
    }

    /// The data regions of a file (holes skipped), cut into chunks; the new ones packed.
    fn file_data(&mut self, fd: BorrowedFd<'_>, size: u64) -> Result<Vec<Extent>> {
        let mut extents = Vec::new();
        let end = i64::try_from(size).map_err(|_| Error::Backup("a file too large".into()))?;
        let mut off = 0i64;
        while off < end {
            let data = match nix::unistd::lseek(fd, off, nix::unistd::Whence::SeekData) {
                Ok(d) => d,
                Err(Errno::ENXIO) => break,
                Err(Errno::EINVAL | Errno::EOPNOTSUPP) => off,
                Err(e) => return Err(io("", e)),
            };
            let hole = match nix::unistd::lseek(fd, data, nix::unistd::Whence::SeekHole) {
                Ok(h) => h.min(end),
                Err(Errno::EINVAL | Errno::EOPNOTSUPP) => end,
                Err(e) => return Err(io("", e)),
            };
            if hole <= data {
                break;
            }
            let x = self.region(fd, data as u64, hole as u64)?;
            if !x.chunks.is_empty() {
                extents.push(x);
            }
            off = hole;
        }
        Ok(extents)
    }

    /// Bytes `start..end` of a file as chunks. The chunker sees a window of `WINDOW`
    /// bytes; a chunk that ends at the window's end is cut again once more is read (its
    /// boundary may move), which gives the boundaries a whole-file pass would.
    fn region(&mut self, fd: BorrowedFd<'_>, start: u64, mut end: u64) -> Result<Extent> {
        let c = &self.repo.config;
        let (min, avg, max) = (
            c.min_chunk as usize,
            c.avg_chunk as usize,
            c.max_chunk as usize,
        );
        let mut extent = Extent {
            offset: start,
            chunks: Vec::new(),
        };
        let mut pos = start;
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let result = (|| loop {
            if self.progress.stop.load(Ordering::Relaxed) {
                return Err(Error::Backup(STOPPED.replace("copy", "backup")));
            }
            while buf.len() < WINDOW && pos < end {
                let want = (WINDOW - buf.len()).min(usize::try_from(end - pos).unwrap_or(WINDOW));
                let at = buf.len();
                buf.resize(at + want, 0);
                let n =
                    nix::sys::uio::pread(fd, &mut buf[at..], pos as i64).map_err(|e| io("", e))?;
                buf.truncate(at + n);
                if n == 0 {
                    end = pos; // the file shrank: what is there is backed up
                    break;
                }
                pos += n as u64;
            }
            let last = pos >= end;
            let mut used = 0;
            for ch in fastcdc::v2020::FastCDC::new(&buf, min, avg, max) {
                let stop = ch.offset + ch.length;
                if !last && stop == buf.len() {
                    break;
                }
                let id = self.chunk(&buf[ch.offset..stop])?;
                extent.chunks.push((id, ch.length as u32));
                used = stop;
            }
            buf.drain(..used);
            if last {
                return Ok(());
            }
        })();
        self.buf = buf;
        result.map(|()| extent)
    }

    /// One chunk: its hash; stored (compressed, packed) unless already there.
    fn chunk(&mut self, data: &[u8]) -> Result<Id> {
        let id = Id::of(data);
        self.sent.chunks += 1;
        self.progress
            .bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        if !self.known.insert(id) {
            self.sent.reused_bytes += data.len() as u64;
            return Ok(id);
        }
        let stored = zstd::bulk::compress(data, LEVEL)
            .map_err(|e| Error::Backup(format!("compressing: {e}")))?;
        self.packer.add(id, &stored, data.len());
        self.sent.new_chunks += 1;
        self.sent.new_bytes += stored.len() as u64;
        if self.packer.data.len() >= format::PACK_TARGET {
            if let Some(sealed) = self.packer.seal() {
                self.send(sealed)?;
            }
        }
        Ok(id)
    }
}
