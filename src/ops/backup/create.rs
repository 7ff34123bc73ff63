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

use super::format::node::{self, Node, NodeKind};
use super::format::{self, Extent, Id, Index, Located, SendStats, Summary, Text, TreeStats};
use super::lock::{LockKind, RepoLock};
use super::Repo;
use crate::core::copy_report::CopyReport;
use crate::core::error::{Error, Result};
use crate::export::treecopy::{Meta, Progress};

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

/// Backs up the folder `src` (a handle) as backup `id` of `repo`. `parent` is the last
/// backup of the same volume this host made there, as this host recorded it (never one
/// chosen by what the destination says): files unchanged since are taken from its tree
/// without being read.
pub fn create(
    repo: &Repo,
    id: &str,
    src: &std::fs::File,
    source: &Source,
    parent: Option<&str>,
    progress: &Progress,
) -> Result<Summary> {
    crate::core::backup_url::validate_id(id)?;
    let started = Instant::now();
    let started_at = now_rfc3339();
    let purpose = match &source.snapshot {
        Some(s) => format!("backup of {}@{s}", source.volume),
        None => format!("backup of {}", source.volume),
    };
    let mut lock = RepoLock::acquire(&repo.b, LockKind::Shared, &source.node, &purpose)?;
    let result = (|| {
        let known = Known {
            stored: repo.chunks()?,
            new: HashSet::new(),
        };
        // Pages already there (unchanged folders of earlier backups) are not sent again.
        let known_pages: HashSet<Id> = repo
            .b
            .list("trees")?
            .into_iter()
            .filter_map(|l| Id::parse(&l.name))
            .collect();
        // Not for a snapshot: its copy has new status-change times and inodes, so nothing
        // would match.
        let parent = match (&source.snapshot, parent) {
            (None, Some(p)) => parent_of(repo, p, &source.volume),
            _ => None,
        };
        let (root, stats, sent) =
            send_tree(repo, src, known, known_pages, parent, progress, &mut lock)?;
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
            tree_id: root.0,
            tree_size: root.1,
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

/// What the sending thread stores.
enum Outgoing {
    /// A pack, then its index (so that an index never names a pack that is not there).
    Pack(Id, Bytes, Bytes),
    /// A tree page.
    Page(Id, Bytes),
}

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

    /// Whether the pack is to be sent now: its data has reached its size, or its chunks
    /// the number whose index a reader still takes.
    fn full(&self) -> bool {
        self.data.len() >= format::PACK_TARGET || self.chunks.len() >= format::PACK_CHUNKS
    }

    /// The pack and its index, ready to send; the packer is empty again.
    fn seal(&mut self) -> Option<Outgoing> {
        if self.chunks.is_empty() {
            return None;
        }
        let data = std::mem::take(&mut self.data);
        let pack = Id::of(&data);
        let index = Index {
            format: format::INDEX_FORMAT,
            pack,
            pack_size: data.len() as u64,
            chunks: std::mem::take(&mut self.chunks),
        };
        let index = serde_json::to_vec(&index).expect("an index serializes");
        Some(Outgoing::Pack(pack, Bytes::from(data), Bytes::from(index)))
    }
}

/// The walk and the sending: a thread sends sealed packs and tree pages while this one
/// reads. Returns the root page (its id and stored size), what the tree holds, and what
/// was sent.
fn send_tree(
    repo: &Repo,
    src: &std::fs::File,
    known: Known,
    known_pages: HashSet<Id>,
    parent: Option<Node>,
    progress: &Progress,
    lock: &mut RepoLock,
) -> Result<((Id, u64), TreeStats, SendStats)> {
    let (tx, rx) = mpsc::sync_channel::<Outgoing>(8);
    std::thread::scope(|scope| {
        let sender = scope.spawn(move || -> Result<u64> {
            let mut packs = 0;
            for out in rx {
                match out {
                    Outgoing::Pack(pack, data, index) => {
                        repo.b.put(&format!("packs/{}", pack.hex()), data)?;
                        repo.b.put(&format!("index/{}", pack.hex()), index)?;
                        packs += 1;
                    }
                    Outgoing::Page(id, stored) => {
                        repo.b.put(&format!("trees/{}", id.hex()), stored)?;
                    }
                }
            }
            Ok(packs)
        });
        let mut walker = Walker {
            repo,
            known,
            known_pages,
            packer: Packer {
                data: Vec::with_capacity(format::PACK_TARGET + format::MAX_CHUNK as usize),
                chunks: Vec::new(),
            },
            tx: Some(tx),
            buf: Vec::with_capacity(WINDOW),
            sent: SendStats::default(),
            progress,
            links: HashMap::new(),
            report: CopyReport::default(),
        };
        let walked = walker.walk(src, parent, lock);
        let walked = walked.and_then(|root| {
            if let Some(sealed) = walker.packer.seal() {
                walker.send(sealed)?;
            }
            Ok(root)
        });
        drop(walker.tx.take());
        let packs = sender
            .join()
            .unwrap_or_else(|_| Err(Error::Backup("the sending thread failed".into())));
        // The sender's error is the cause when both failed (the walk then only saw the
        // channel closed).
        let packs = packs?;
        let root = walked?;
        walker.sent.packs = packs;
        Ok((root, TreeStats::from(&walker.report), walker.sent))
    })
}

/// The chunks stored: those found at the start, and those this backup added.
struct Known {
    stored: super::Chunks,
    new: HashSet<Id>,
}

impl Known {
    fn contains(&self, id: &Id) -> bool {
        self.new.contains(id) || self.stored.contains(id)
    }

    /// Adds `id`; whether it is new.
    fn insert(&mut self, id: Id) -> bool {
        !self.stored.contains(&id) && self.new.insert(id)
    }
}

struct Walker<'a> {
    repo: &'a Repo,
    known: Known,
    known_pages: HashSet<Id>,
    packer: Packer,
    tx: Option<mpsc::SyncSender<Outgoing>>,
    buf: Vec<u8>,
    sent: SendStats,
    progress: &'a Progress,
    /// (device, inode) of files with several links -> the number their other names use.
    links: HashMap<(u64, u64), u64>,
    report: CopyReport,
}

/// One folder being walked, and its listing being written.
struct Frame {
    dir: OwnedFd,
    names: Vec<OsString>,
    next: usize,
    /// The folder's own node (its pages added as they are written).
    node: Node,
    /// The page being filled, and its JSON's size.
    page: Vec<Node>,
    page_bytes: usize,
    /// The same folder in the parent backup's tree, if it has it.
    parent: Option<ParentDir>,
}

/// A folder of the parent backup's tree, read page by page alongside the walk (both are
/// sorted by name).
struct ParentDir {
    pages: Vec<Id>,
    next_page: usize,
    nodes: std::collections::VecDeque<Node>,
}

impl ParentDir {
    fn of(node: &Node) -> Option<ParentDir> {
        match &node.kind {
            NodeKind::Dir { pages } => Some(ParentDir {
                pages: pages.clone(),
                next_page: 0,
                nodes: Default::default(),
            }),
            _ => None,
        }
    }

    /// The node named `name`, skipping the ones before it.
    fn find(&mut self, repo: &Repo, name: &[u8]) -> Result<Option<Node>> {
        loop {
            while let Some(front) = self.nodes.front() {
                let n = front.name.bytes().unwrap_or_default();
                match n.as_slice().cmp(name) {
                    std::cmp::Ordering::Less => {
                        self.nodes.pop_front();
                    }
                    std::cmp::Ordering::Equal => return Ok(self.nodes.pop_front()),
                    std::cmp::Ordering::Greater => return Ok(None),
                }
            }
            let Some(id) = self.pages.get(self.next_page).copied() else {
                return Ok(None);
            };
            self.next_page += 1;
            let stored = repo
                .b
                .get(&format!("trees/{}", id.hex()), node::MAX_PAGE_BYTES)?
                .ok_or_else(|| Error::Backup(format!("page {} is missing", id.hex())))?;
            self.nodes = node::decode_listing(&stored, &id, "parent")?.listing.into();
        }
    }
}

/// The root folder's node of backup `id` of `volume` at the destination, if it is one of
/// format 2 whose tree can be read: files unchanged since are taken from it. Its pages are
/// checked against their hashes as they are read, so what is taken is what was written.
pub(crate) fn parent_of(repo: &Repo, id: &str, volume: &str) -> Option<Node> {
    let s = match repo.summary(id) {
        Ok(s) if s.volume == volume && s.snapshot.is_none() && s.format >= 2 => s,
        Ok(_) => return None,
        Err(e) => {
            tracing::info!(
                "every file is read again (the last backup of {volume} cannot be used: {e})"
            );
            return None;
        }
    };
    let page = repo
        .b
        .get(&format!("trees/{}", s.tree_id.hex()), node::MAX_PAGE_BYTES)
        .ok()
        .flatten()
        .and_then(|stored| node::decode_listing(&stored, &s.tree_id, id).ok())?;
    page.listing.into_iter().next()
}

fn io(path: &str, e: impl Into<std::io::Error>) -> Error {
    Error::io(format!("reading {path}"), e.into())
}

/// A file's data runs as they are cut: inline while few, then in pages.
#[derive(Default)]
struct Runs {
    extents: Vec<Extent>,
    chunks: usize,
    pages: Vec<Id>,
}

impl Walker<'_> {
    fn send(&mut self, out: Outgoing) -> Result<()> {
        self.tx
            .as_ref()
            .expect("sending until the walk ends")
            .send(out)
            .map_err(|_| Error::Backup("sending to the destination failed".into()))
    }

    /// Stores a page (unless one with the same bytes is there); its id and stored size.
    fn page<T: serde::Serialize>(&mut self, page: &T) -> Result<(Id, u64)> {
        let (id, stored, _) = node::encode_page(page)?;
        let size = stored.len() as u64;
        if self.known_pages.insert(id) {
            self.send(Outgoing::Page(id, Bytes::from(stored)))?;
        }
        Ok((id, size))
    }

    /// Writes the page being filled of `frame`'s listing.
    fn flush(&mut self, frame: &mut Frame, path: &str) -> Result<()> {
        if frame.page.is_empty() {
            return Ok(());
        }
        let listing = node::Listing {
            format: node::TREE_FORMAT,
            listing: std::mem::take(&mut frame.page),
        };
        frame.page_bytes = 0;
        let (id, _) = self.page(&listing)?;
        if let NodeKind::Dir { pages } = &mut frame.node.kind {
            if pages.len() >= node::MAX_DIR_PAGES {
                return Err(Error::Backup(format!(
                    "{path}: a folder of more than {} entries, more than a backup holds",
                    node::MAX_DIR_PAGES * node::PAGE_NODES
                )));
            }
            pages.push(id);
        }
        Ok(())
    }

    /// Adds `node` to `frame`'s listing, writing the page when it is full.
    fn add(&mut self, frame: &mut Frame, node: Node, path: &str) -> Result<()> {
        let bytes = serde_json::to_vec(&node).map(|j| j.len()).unwrap_or(0);
        if frame.page.len() >= node::PAGE_NODES || frame.page_bytes + bytes > node::PAGE_FLUSH_BYTES
        {
            self.flush(frame, path)?;
        }
        frame.page_bytes += bytes;
        frame.page.push(node);
        Ok(())
    }

    fn walk(
        &mut self,
        src: &std::fs::File,
        parent: Option<Node>,
        lock: &mut RepoLock,
    ) -> Result<(Id, u64)> {
        let root = nix::fcntl::openat(
            src.as_fd(),
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| io("/", e))?;
        let st = nix::sys::stat::fstat(root.as_fd()).map_err(|e| io("/", e))?;
        let root_node = self.node(
            b"",
            NodeKind::Dir { pages: Vec::new() },
            &st,
            root.as_fd(),
            "/",
        )?;
        let mut stack = vec![Frame {
            names: crate::export::treecopy::list(root.as_fd()).map_err(|e| io("/", e))?,
            dir: root,
            next: 0,
            node: root_node,
            page: Vec::new(),
            page_bytes: 0,
            parent: parent.as_ref().and_then(ParentDir::of),
        }];
        self.report.dirs += 1;
        // The names of the folders the walk is in, below the root (for messages).
        let mut path: Vec<String> = Vec::new();
        let path_of = |path: &[String], name: &[u8]| {
            let mut p = path.join("/");
            if !p.is_empty() {
                p.push('/');
            }
            format!("/{p}{}", String::from_utf8_lossy(name))
        };
        loop {
            if self.progress.stop.load(Ordering::Relaxed) {
                return Err(Error::Stopped("backup"));
            }
            let top = stack.last_mut().expect("a frame");
            let Some(name) = top.names.get(top.next).cloned() else {
                // The folder is done: its last page, then its node into its parent's.
                let mut done = stack.pop().expect("a frame");
                let here = path_of(&path, b"");
                self.flush(&mut done, &here)?;
                match stack.last_mut() {
                    Some(up) => {
                        path.pop();
                        let p = path_of(&path, b"");
                        self.add(up, done.node, &p)?;
                    }
                    None => {
                        // The root's node, alone on its page: what the summary names.
                        return self.page(&node::Listing {
                            format: node::TREE_FORMAT,
                            listing: vec![done.node],
                        });
                    }
                }
                continue;
            };
            top.next += 1;
            let dir = top.dir.try_clone().map_err(|e| io("/", e))?;
            let bytes = name.as_bytes();
            let here = path_of(&path, bytes);
            let before = match top.parent.as_mut() {
                Some(p) => match p.find(self.repo, bytes) {
                    Ok(found) => found,
                    Err(e) => {
                        tracing::info!("the rest of {} is read again: {e}", path_of(&path, b""));
                        top.parent = None;
                        None
                    }
                },
                None => None,
            };
            let st = match nix::sys::stat::fstatat(
                dir.as_fd(),
                name.as_os_str(),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                Ok(st) => st,
                Err(Errno::ENOENT) => {
                    self.report.vanished += 1;
                    continue;
                }
                Err(e) => return Err(io(&here, e)),
            };
            let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
            let node = match kind {
                SFlag::S_IFDIR => {
                    if stack.len() >= crate::export::treecopy::MAX_DEPTH {
                        return Err(Error::Backup(format!(
                            "{here}: deeper than {} levels, more than a backup holds",
                            crate::export::treecopy::MAX_DEPTH
                        )));
                    }
                    let Some(sub) = crate::export::treecopy::open_nofollow(
                        dir.as_fd(),
                        &name,
                        OFlag::O_RDONLY | OFlag::O_DIRECTORY,
                        &mut self.report,
                    )
                    .map_err(|e| io(&here, e))?
                    else {
                        continue;
                    };
                    let st = nix::sys::stat::fstat(sub.as_fd()).map_err(|e| io(&here, e))?;
                    let names =
                        crate::export::treecopy::list(sub.as_fd()).map_err(|e| io(&here, e))?;
                    let node = self.node(
                        bytes,
                        NodeKind::Dir { pages: Vec::new() },
                        &st,
                        sub.as_fd(),
                        &here,
                    )?;
                    self.report.dirs += 1;
                    // What is held while deeper: each folder's page so far, kept small.
                    let top = stack.last_mut().expect("a frame");
                    if top.page_bytes > node::PAGE_FLUSH_BYTES / 4 {
                        let up = path_of(&path, b"");
                        self.flush(top, &up)?;
                    }
                    stack.push(Frame {
                        dir: sub,
                        names,
                        next: 0,
                        node,
                        page: Vec::new(),
                        page_bytes: 0,
                        parent: before.as_ref().and_then(ParentDir::of),
                    });
                    path.push(String::from_utf8_lossy(bytes).into_owned());
                    lock.refresh(&self.repo.b)?;
                    continue;
                }
                SFlag::S_IFREG => {
                    let Some((file, st)) = crate::export::treecopy::open_listed_file(
                        dir.as_fd(),
                        &name,
                        &mut self.report,
                    )
                    .map_err(|e| io(&here, e))?
                    else {
                        continue;
                    };
                    let key = (st.st_dev, st.st_ino);
                    let mut link = None;
                    if st.st_nlink > 1 {
                        if let Some(first) = self.links.get(&key) {
                            self.report.hard_links += 1;
                            let node = self.node(
                                bytes,
                                NodeKind::Hardlink { link: *first },
                                &st,
                                file.as_fd(),
                                &here,
                            )?;
                            let top = stack.last_mut().expect("a frame");
                            self.add(top, node, &here)?;
                            continue;
                        }
                        // As a restore remembers them: past that, further names of a file
                        // are stored as files of their own.
                        if self.links.len() < 1_000_000 {
                            let n = self.links.len() as u64 + 1;
                            self.links.insert(key, n);
                            link = Some(n);
                        }
                    }
                    let size = u64::try_from(st.st_size).unwrap_or(0);
                    let (extents, extent_pages) = match self.unchanged(before.as_ref(), &st) {
                        Some(runs) => runs,
                        None => self.file_data(file.as_fd(), size).map_err(|e| match e {
                            Error::Io { source, .. } => io(&here, source),
                            other => other,
                        })?,
                    };
                    self.report.files += 1;
                    self.progress.files.fetch_add(1, Ordering::Relaxed);
                    self.node(
                        bytes,
                        NodeKind::File {
                            size,
                            extents,
                            extent_pages,
                            link,
                        },
                        &st,
                        file.as_fd(),
                        &here,
                    )?
                }
                SFlag::S_IFLNK => {
                    let target = match nix::fcntl::readlinkat(dir.as_fd(), name.as_os_str()) {
                        Ok(t) => t,
                        Err(Errno::ENOENT | Errno::EINVAL) => {
                            self.report.vanished += 1;
                            continue;
                        }
                        Err(e) => return Err(io(&here, e)),
                    };
                    self.report.symlinks += 1;
                    self.node(
                        bytes,
                        NodeKind::Symlink {
                            target: Text::of(target.as_bytes()),
                        },
                        &st,
                        dir.as_fd(),
                        &here,
                    )?
                }
                SFlag::S_IFIFO => {
                    self.report.fifos += 1;
                    self.node(bytes, NodeKind::Fifo, &st, dir.as_fd(), &here)?
                }
                _ => {
                    self.report.skipped += 1;
                    continue;
                }
            };
            let top = stack.last_mut().expect("a frame");
            self.add(top, node, &here)?;
            lock.refresh(&self.repo.b)?;
        }
    }

    /// The data runs of a file the parent backup has with the same size, modification
    /// and status-change times and inode (as restic judges it: a write changes the
    /// status-change time, which nothing can set back), if what they need is still
    /// stored.
    fn unchanged(
        &mut self,
        prev: Option<&Node>,
        st: &nix::sys::stat::FileStat,
    ) -> Option<(Vec<Extent>, Vec<Id>)> {
        let prev = prev?;
        let NodeKind::File {
            size,
            extents,
            extent_pages,
            ..
        } = &prev.kind
        else {
            return None;
        };
        let same = *size == u64::try_from(st.st_size).ok()?
            && prev.mtime == (st.st_mtime, st.st_mtime_nsec)
            && prev.ctime == Some((st.st_ctime, st.st_ctime_nsec))
            && prev.ino == Some(st.st_ino);
        let chunks = || extents.iter().flat_map(|x| x.chunks.iter());
        let stored = chunks().all(|(id, _)| self.known.contains(id))
            && extent_pages.iter().all(|p| self.known_pages.contains(p));
        if !same || !stored {
            return None;
        }
        let (mut n, mut bytes) = (0u64, 0u64);
        for (_, len) in chunks() {
            n += 1;
            bytes += u64::from(*len);
        }
        if !extent_pages.is_empty() {
            // Not read again to be counted: its size stands for its data.
            bytes = *size;
        }
        self.sent.chunks += n;
        self.sent.reused_bytes += bytes;
        self.sent.unchanged_files += 1;
        self.report.bytes = self.report.bytes.saturating_add(bytes);
        self.progress.bytes.fetch_add(bytes, Ordering::Relaxed);
        Some((extents.clone(), extent_pages.clone()))
    }

    /// A node with the metadata of `st` and the extended attributes read from `fd`,
    /// within what a backup holds: more than [`node::MAX_XATTR_TOTAL`] bytes of them
    /// refuses the backup, naming the entry (a restore would refuse to read it).
    fn node(
        &mut self,
        name: &[u8],
        kind: NodeKind,
        st: &nix::sys::stat::FileStat,
        fd: BorrowedFd<'_>,
        path: &str,
    ) -> Result<Node> {
        let meta = Meta::of(st);
        let mut xattrs = BTreeMap::new();
        if matches!(kind, NodeKind::Dir { .. } | NodeKind::File { .. }) {
            let (attrs, unread) = crate::export::treecopy::read_xattrs(fd);
            self.report.xattr_errors += unread;
            for (n, v) in attrs {
                match String::from_utf8(n) {
                    Ok(n) => {
                        xattrs.insert(n, format::hex(&v));
                    }
                    Err(_) => self.report.xattr_errors += 1,
                }
            }
        }
        node::check_xattrs(&xattrs).map_err(|why| {
            Error::Backup(format!(
                "{path}: {why}: a backup holds at most {} extended attributes of {} bytes together per entry",
                node::MAX_XATTRS,
                node::MAX_XATTR_TOTAL
            ))
        })?;
        Ok(Node {
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
        })
    }

    /// One data run done: kept, and written out as a page once there are many.
    fn run(&mut self, runs: &mut Runs, x: Extent) -> Result<()> {
        if x.chunks.is_empty() {
            return Ok(());
        }
        runs.chunks += x.chunks.len();
        runs.extents.push(x);
        if runs.chunks >= node::EXTENT_PAGE_CHUNKS {
            self.runs_page(runs)?;
        }
        Ok(())
    }

    fn runs_page(&mut self, runs: &mut Runs) -> Result<()> {
        if runs.extents.is_empty() {
            return Ok(());
        }
        let page = node::ExtentPage {
            format: node::TREE_FORMAT,
            extents: std::mem::take(&mut runs.extents),
        };
        runs.chunks = 0;
        let (id, _) = self.page(&page)?;
        runs.pages.push(id);
        Ok(())
    }

    /// The data regions of a file (holes skipped), cut into chunks (the new ones packed):
    /// its data runs, inline when few, else in pages.
    fn file_data(&mut self, fd: BorrowedFd<'_>, size: u64) -> Result<(Vec<Extent>, Vec<Id>)> {
        let mut runs = Runs::default();
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
            self.region(fd, data as u64, hole as u64, &mut runs)?;
            off = hole;
        }
        if runs.pages.is_empty() && runs.chunks <= node::INLINE_CHUNKS {
            return Ok((runs.extents, Vec::new()));
        }
        self.runs_page(&mut runs)?;
        Ok((Vec::new(), runs.pages))
    }

    /// Bytes `start..end` of a file as chunks. The chunker sees a window of `WINDOW`
    /// bytes; a chunk that ends at the window's end is cut again once more is read (its
    /// boundary may move), which gives the boundaries a whole-file pass would.
    fn region(
        &mut self,
        fd: BorrowedFd<'_>,
        start: u64,
        mut end: u64,
        runs: &mut Runs,
    ) -> Result<()> {
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
        // Where the next chunk begins in the file.
        let mut next = start;
        let mut pos = start;
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let result = (|| loop {
            if self.progress.stop.load(Ordering::Relaxed) {
                return Err(Error::Stopped("backup"));
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
                next += ch.length as u64;
                self.report.bytes = self.report.bytes.saturating_add(ch.length as u64);
                used = stop;
                // A run this long goes on as another (pages of runs stay bounded).
                if extent.chunks.len() >= node::EXTENT_PAGE_CHUNKS {
                    let full = std::mem::replace(
                        &mut extent,
                        Extent {
                            offset: next,
                            chunks: Vec::new(),
                        },
                    );
                    self.run(runs, full)?;
                }
            }
            buf.drain(..used);
            if last {
                return self.run(
                    runs,
                    std::mem::replace(
                        &mut extent,
                        Extent {
                            offset: next,
                            chunks: Vec::new(),
                        },
                    ),
                );
            }
        })();
        self.buf = buf;
        result
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
        if self.packer.full() {
            if let Some(sealed) = self.packer.seal() {
                self.send(sealed)?;
            }
        }
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The writer's bound on a pack's chunks keeps its index within what a reader takes,
    /// whatever the chunks (a million small files made an index of 42 MB before).
    #[test]
    fn a_pack_of_tiny_chunks_is_sent_while_its_index_is_still_readable() {
        let mut p = Packer {
            data: Vec::new(),
            chunks: Vec::new(),
        };
        let mut n = 0u64;
        while !p.full() {
            let id = Id::of(&n.to_le_bytes());
            // Offsets as large as a pack allows, sizes as wide as they get.
            p.chunks.push(Located {
                id,
                offset: format::MAX_PACK - 1,
                length: u32::MAX,
                size: format::MAX_CHUNK,
            });
            n += 1;
        }
        assert_eq!(n as usize, format::PACK_CHUNKS);
        let index = Index {
            format: format::INDEX_FORMAT,
            pack: Id::of(b"pack"),
            pack_size: format::MAX_PACK,
            chunks: p.chunks,
        };
        let bytes = serde_json::to_vec(&index).unwrap().len() as u64;
        assert!(bytes <= format::MAX_INDEX, "{bytes} bytes");
    }
}
