//! Walking a backup's tree, whatever its format, one entry at a time: restores, checks
//! and deletions visit it this way, and never hold more of it than a few pages.
//!
//! A walk hands each entry to its visitor as a [`Step`]: a folder is entered (its node),
//! what it holds follows, and it is left (its node again, for the metadata that is set
//! last); the other entries are leaves. Format 1's one tree object is read as a stream
//! ([`Tree::stream`]) and its flat, parent-numbered entries become the same steps;
//! format 2's pages ([`node`]) are read folder by folder.
//!
//! What a walk holds is bounded: the folders it is in (at most
//! [`crate::export::treecopy::MAX_DEPTH`]), and of each, the rest of one page. When the pages
//! held pass [`HELD_PAGES_BYTES`], those of the outermost folders are let go and read
//! again when the walk comes back to them: a tree that is both deep and wide costs reads,
//! never memory.

use std::collections::VecDeque;

use super::format::node::{self, Node, NodeKind, Runs};
use super::format::{Entry, Extent, Id, Kind, Summary, Text, Tree, MAX_TREE_BYTES};
use super::Repo;
use crate::core::error::{Error, Result};

/// The JSON of pages a walk keeps at most, all folders together.
pub const HELD_PAGES_BYTES: usize = 32 << 20;

/// One step of a walk.
pub(crate) enum Step<'n> {
    /// A folder, before what it holds.
    Enter(&'n Node),
    /// The same folder, after what it holds.
    Leave(&'n Node),
    /// Anything else: a file, a hard link, a symbolic link, a FIFO.
    Leaf(&'n Node),
}

/// Where a walk is: what a visitor may ask of it.
pub(crate) struct At<'r> {
    repo: &'r Repo,
    backup: String,
    /// The names of the folders the walk is in, below the root.
    names: Vec<Vec<u8>>,
}

impl At<'_> {
    /// The path of `node` (an entry of the folder the walk is in), below the volume's root.
    pub fn path_of(&self, node: &Node) -> String {
        let mut parts: Vec<String> = self
            .names
            .iter()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect();
        let name = node.name.bytes().unwrap_or_default();
        if !name.is_empty() {
            parts.push(String::from_utf8_lossy(&name).into_owned());
        }
        format!("/{}", parts.join("/"))
    }

    /// A file's data runs, in order (inline, or read page after page), each checked to
    /// follow the last within the file's size.
    pub fn runs(&self, file: &Node, mut each: impl FnMut(&Extent) -> Result<()>) -> Result<()> {
        let NodeKind::File {
            size,
            extents,
            extent_pages,
            ..
        } = &file.kind
        else {
            return Ok(());
        };
        let mut runs = Runs::new(*size);
        let damaged = |why: String| {
            Error::Backup(format!(
                "backup {} is damaged: its tree: {}: {why}",
                self.backup,
                self.path_of(file)
            ))
        };
        for x in extents {
            runs.take(x).map_err(damaged)?;
            each(x)?;
        }
        for id in extent_pages {
            let stored = self.page(id)?;
            let page = node::decode_extents(&stored, id, &self.backup)?;
            for x in &page.extents {
                runs.take(x).map_err(damaged)?;
                each(x)?;
            }
        }
        Ok(())
    }

    /// The stored bytes of page `id`.
    fn page(&self, id: &Id) -> Result<Vec<u8>> {
        self.repo
            .b
            .get(&format!("trees/{}", id.hex()), node::MAX_PAGE_BYTES)?
            .ok_or_else(|| {
                Error::Backup(format!(
                    "backup {} is damaged: its tree page {} is missing",
                    self.backup,
                    id.hex()
                ))
            })
    }

    fn listing(&self, id: &Id) -> Result<(VecDeque<Node>, usize)> {
        let stored = self.page(id)?;
        let cost = stored.len();
        let page = node::decode_listing(&stored, id, &self.backup)?;
        // What a page costs held: its JSON is at most a few times what is stored, the
        // nodes a few times that; counted as stored × 8, a bound that errs high.
        Ok((page.listing.into(), cost.saturating_mul(8)))
    }
}

/// Walks backup `s`'s tree, handing every entry to `visit` (see [`Step`]).
pub(crate) fn walk(
    repo: &Repo,
    s: &Summary,
    mut visit: impl FnMut(&At, Step) -> Result<()>,
) -> Result<()> {
    let mut at = At {
        repo,
        backup: s.id.clone(),
        names: Vec::new(),
    };
    match s.format {
        1 => walk_v1(repo, s, &mut at, &mut visit),
        _ => walk_v2(s, &mut at, &mut visit),
    }
}

/// Format 1: the one tree object, streamed; its entries' parent numbers become steps.
fn walk_v1(
    repo: &Repo,
    s: &Summary,
    at: &mut At,
    visit: &mut impl FnMut(&At, Step) -> Result<()>,
) -> Result<()> {
    let stored = repo.v1_tree(s)?;
    let damaged = |why: &str| {
        Error::Backup(format!(
            "backup {} is damaged: its tree is out of order: {why}",
            s.id
        ))
    };
    // The folders the walk is in: their entry numbers and nodes.
    let mut open: Vec<(usize, Node)> = Vec::new();
    Tree::stream(&stored, &s.id, MAX_TREE_BYTES, |i, e| {
        let parent = e.parent as usize;
        let node = v1_node(i, e);
        if i == 0 {
            visit(at, Step::Enter(&node))?;
            open.push((0, node));
            return Ok(());
        }
        while open.last().is_some_and(|(index, _)| *index != parent) {
            let (_, done) = open.pop().expect("checked");
            if open.is_empty() {
                return Err(damaged("an entry whose folder was left"));
            }
            at.names.pop();
            visit(at, Step::Leave(&done))?;
        }
        if open.is_empty() {
            return Err(damaged("an entry outside the root"));
        }
        match node.kind {
            NodeKind::Dir { .. } => {
                if open.len() >= crate::export::treecopy::MAX_DEPTH {
                    return Err(damaged("folders deeper than a restore follows"));
                }
                visit(at, Step::Enter(&node))?;
                at.names.push(node.name.bytes().unwrap_or_default());
                open.push((i, node));
            }
            _ => visit(at, Step::Leaf(&node))?,
        }
        Ok(())
    })?;
    while let Some((index, done)) = open.pop() {
        if index != 0 {
            at.names.pop();
        }
        visit(at, Step::Leave(&done))?;
    }
    Ok(())
}

/// A format 1 entry as a node: a linked file's `link` (and a hard link's) is its entry
/// number.
fn v1_node(i: usize, e: Entry) -> Node {
    let kind = match e.kind {
        Kind::Dir => NodeKind::Dir { pages: Vec::new() },
        Kind::File {
            size,
            extents,
            linked,
        } => NodeKind::File {
            size,
            extents,
            extent_pages: Vec::new(),
            link: linked.then_some(i as u64),
        },
        Kind::Symlink { target } => NodeKind::Symlink { target },
        Kind::Fifo => NodeKind::Fifo,
        Kind::Hardlink { to } => NodeKind::Hardlink {
            link: u64::from(to),
        },
    };
    Node {
        name: e.name,
        kind,
        uid: e.uid,
        gid: e.gid,
        mode: e.mode,
        atime: e.atime,
        mtime: e.mtime,
        ctime: e.ctime,
        ino: e.ino,
        xattrs: e.xattrs,
    }
}

/// A folder a format 2 walk is in.
struct Frame {
    node: Node,
    /// The next page of its listing to read.
    next_page: usize,
    /// The rest of the page being walked (`None` before the first, or when let go).
    page: Option<VecDeque<Node>>,
    /// Let go (see [`HELD_PAGES_BYTES`]): page `next_page - 1` is read again, and its
    /// first `taken` nodes skipped, when the walk comes back.
    let_go: bool,
    taken: usize,
    cost: usize,
}

impl Frame {
    fn new(node: Node) -> Frame {
        Frame {
            node,
            next_page: 0,
            page: None,
            let_go: false,
            taken: 0,
            cost: 0,
        }
    }

    fn pages(&self) -> &[Id] {
        match &self.node.kind {
            NodeKind::Dir { pages } => pages,
            _ => &[],
        }
    }
}

/// Format 2: the root's page, then folder by folder.
fn walk_v2(
    s: &Summary,
    at: &mut At,
    visit: &mut impl FnMut(&At, Step) -> Result<()>,
) -> Result<()> {
    let (mut top, _) = at.listing(&s.tree_id)?;
    let root = match (top.pop_front(), top.is_empty()) {
        (Some(n), true)
            if n.name == Text::Utf8(String::new()) && matches!(n.kind, NodeKind::Dir { .. }) =>
        {
            n
        }
        _ => {
            return Err(Error::Backup(format!(
                "backup {} is damaged: its tree's first page is not its root folder",
                s.id
            )))
        }
    };
    visit(at, Step::Enter(&root))?;
    let mut stack = vec![Frame::new(root)];
    let mut held = 0usize;
    loop {
        let next = next_node(at, stack.last_mut().expect("a frame"), &mut held)?;
        let_go(&mut stack, &mut held);
        let Some(next) = next else {
            let done = stack.pop().expect("a frame");
            held -= done.cost;
            if !stack.is_empty() {
                at.names.pop();
            }
            visit(at, Step::Leave(&done.node))?;
            if stack.is_empty() {
                return Ok(());
            }
            continue;
        };
        match next.kind {
            NodeKind::Dir { .. } => {
                if stack.len() >= crate::export::treecopy::MAX_DEPTH {
                    return Err(Error::Backup(format!(
                        "{}: deeper than {} levels",
                        at.path_of(&next),
                        crate::export::treecopy::MAX_DEPTH
                    )));
                }
                visit(at, Step::Enter(&next))?;
                at.names.push(next.name.bytes().unwrap_or_default());
                stack.push(Frame::new(next));
            }
            _ => visit(at, Step::Leaf(&next))?,
        }
    }
}

/// The next node of folder `top`, reading its pages as needed; `None` when it has no
/// more.
fn next_node(at: &At, top: &mut Frame, held: &mut usize) -> Result<Option<Node>> {
    loop {
        if top.let_go {
            // Let go while the walk was deeper: read again, from where it was.
            let id = top.pages()[top.next_page - 1];
            let (mut page, cost) = at.listing(&id)?;
            page.drain(..top.taken.min(page.len()));
            top.page = Some(page);
            top.let_go = false;
            top.cost = cost;
            *held += cost;
        }
        if let Some(node) = top.page.as_mut().and_then(VecDeque::pop_front) {
            top.taken += 1;
            return Ok(Some(node));
        }
        // This page is done: the next one, if any.
        *held -= top.cost;
        top.cost = 0;
        top.page = None;
        top.taken = 0;
        let Some(id) = top.pages().get(top.next_page).copied() else {
            return Ok(None);
        };
        let (page, cost) = at.listing(&id)?;
        top.next_page += 1;
        top.page = Some(page);
        top.cost = cost;
        *held += cost;
    }
}

/// Past [`HELD_PAGES_BYTES`], lets go of the pages of the outermost folders (never the
/// one the walk is in).
fn let_go(stack: &mut [Frame], held: &mut usize) {
    let Some((_, outer)) = stack.split_last_mut() else {
        return;
    };
    for f in outer {
        if *held <= HELD_PAGES_BYTES {
            return;
        }
        if f.page.take().is_some() {
            f.let_go = true;
            *held -= f.cost;
            f.cost = 0;
        }
    }
}
