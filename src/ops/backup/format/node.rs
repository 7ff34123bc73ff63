//! Format 2's tree: what a backup holds, stored in pages so that neither writing nor
//! reading it ever holds more than a few pages, whatever the number of files.
//!
//! ```text
//! trees/<hash>   a page: part of one folder's listing, or part of one file's data runs
//! ```
//!
//! A folder's listing is a list of [`Node`]s (its entries, sorted by name, each with its
//! metadata), cut into pages of at most [`PAGE_NODES`] nodes or [`PAGE_FLUSH_BYTES`] of
//! JSON. A folder's node names the pages of its own listing, in order; a file's node
//! holds its data runs inline, or, past [`INLINE_CHUNKS`] chunks, names pages of them. A
//! backup's summary names the page holding the root folder's node (`tree_id`). Pages are
//! named by the BLAKE3 hash of their stored (compressed) bytes, so an unchanged folder is
//! stored once for every backup that has it, and a page read back is checked against its
//! name before it is decompressed.
//!
//! The writer keeps to the bounds the reader checks ([`MAX_PAGE_BYTES`],
//! [`MAX_PAGE_NODES`], [`MAX_XATTR_TOTAL`], …): a backup it makes can always be read
//! back, and one it refuses says which bound (issue 24).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{check_component, unhex, Extent, Id, Text, MAX_CHUNK};
use crate::core::error::{Error, Result};

/// The tree format these pages are of.
pub const TREE_FORMAT: u32 = 2;

/// The writer cuts a folder's listing into pages of at most this many nodes...
pub const PAGE_NODES: usize = 1000;
/// ... or once the page's JSON reaches this size.
pub const PAGE_FLUSH_BYTES: usize = 256 << 10;
/// A page read back: at most this many bytes stored, and decompressed.
pub const MAX_PAGE_BYTES: u64 = 4 << 20;
/// A listing page read back: at most this many nodes.
pub const MAX_PAGE_NODES: usize = 4096;
/// A folder's pages at most (tens of millions of entries).
pub const MAX_DIR_PAGES: usize = 20_000;
/// A file's chunks kept in its node; more go to pages of their own.
pub const INLINE_CHUNKS: usize = 256;
/// The writer puts at most this many chunks in a data-run page...
pub const EXTENT_PAGE_CHUNKS: usize = 16_384;
/// ... and the reader takes no more than this.
pub const MAX_EXTENT_PAGE_CHUNKS: usize = 32_768;
/// A file's data-run pages at most (with 1 MiB chunks on average, petabytes).
pub const MAX_FILE_PAGES: usize = 1 << 16;
/// An entry's extended attributes at most, names and values together, and how many.
pub const MAX_XATTR_TOTAL: usize = 64 << 10;
pub const MAX_XATTRS: usize = 1024;
const MAX_LINK_TARGET: usize = 4096;

/// One entry of a folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: Text,
    #[serde(flatten)]
    pub kind: NodeKind,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    #[serde(default)]
    pub mode: u32,
    /// Seconds and nanoseconds.
    #[serde(default)]
    pub atime: (i64, i64),
    #[serde(default)]
    pub mtime: (i64, i64),
    /// The status-change time and inode number when read: a later backup of the same
    /// volume by the same host takes a file whose size, times and inode are all unchanged
    /// without reading it again (not restored: nothing can set them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctime: Option<(i64, i64)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ino: Option<u64>,
    /// Names and hex values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, String>,
}

/// What a node is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum NodeKind {
    Dir {
        /// The folder's listing, in order.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pages: Vec<Id>,
    },
    File {
        size: u64,
        /// The data runs, when few; else in `extent_pages`, in order (then this is empty).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        extents: Vec<Extent>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        extent_pages: Vec<Id>,
        /// Other nodes are hard links to this file: the number they name it by.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        link: Option<u64>,
    },
    Symlink {
        target: Text,
    },
    Fifo,
    /// Another name of the file whose node (earlier in the walk) has this `link`.
    Hardlink {
        link: u64,
    },
}

/// A page of a folder's listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    pub format: u32,
    pub listing: Vec<Node>,
}

/// A page of a file's data runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtentPage {
    pub format: u32,
    pub extents: Vec<Extent>,
}

/// A page as stored: its JSON compressed, named by the hash of what is stored.
pub fn encode_page<T: Serialize>(page: &T) -> Result<(Id, Vec<u8>, usize)> {
    let json = serde_json::to_vec(page)
        .map_err(|e| Error::Backup(format!("encoding a tree page: {e}")))?;
    let stored = zstd::bulk::compress(&json, 3)
        .map_err(|e| Error::Backup(format!("compressing a tree page: {e}")))?;
    Ok((Id::of(&stored), stored, json.len()))
}

/// The JSON of a stored page, checked against its name and bounded.
fn open_page(stored: &[u8], id: &Id) -> std::result::Result<Vec<u8>, String> {
    if stored.len() as u64 > MAX_PAGE_BYTES {
        return Err(format!("page {} is {} bytes", id.hex(), stored.len()));
    }
    if Id::of(stored) != *id {
        return Err(format!("page {} does not match its hash", id.hex()));
    }
    let mut json = Vec::new();
    use std::io::Read;
    zstd::stream::read::Decoder::new(stored)
        .and_then(|d| d.take(MAX_PAGE_BYTES + 1).read_to_end(&mut json))
        .map_err(|e| format!("page {}: {e}", id.hex()))?;
    if json.len() as u64 > MAX_PAGE_BYTES {
        return Err(format!(
            "page {} holds more than {MAX_PAGE_BYTES} bytes",
            id.hex()
        ));
    }
    Ok(json)
}

fn damaged(backup: &str, why: String) -> Error {
    Error::Backup(format!("backup {backup} is damaged: its tree: {why}"))
}

/// Decodes and checks a listing page read back from `trees/<id>` of backup `backup`.
pub fn decode_listing(stored: &[u8], id: &Id, backup: &str) -> Result<Listing> {
    let json = open_page(stored, id).map_err(|w| damaged(backup, w))?;
    let page: Listing = serde_json::from_slice(&json)
        .map_err(|e| damaged(backup, format!("page {}: {e}", id.hex())))?;
    if page.format != TREE_FORMAT {
        return Err(damaged(
            backup,
            format!("page {} is of format {}", id.hex(), page.format),
        ));
    }
    if page.listing.len() > MAX_PAGE_NODES {
        return Err(damaged(
            backup,
            format!("page {} holds {} entries", id.hex(), page.listing.len()),
        ));
    }
    let mut last: Option<Vec<u8>> = None;
    for node in &page.listing {
        let name = node
            .name
            .bytes()
            .ok_or_else(|| damaged(backup, "a name that is not hex".into()))?;
        // The root's node (the only one with an empty name) is alone on its page.
        if !(name.is_empty() && page.listing.len() == 1) {
            check_component(&name).map_err(|w| damaged(backup, w))?;
        }
        // Sorted, and so without a name twice.
        if last.as_ref().is_some_and(|l| *l >= name) {
            return Err(damaged(
                backup,
                format!("page {} is not sorted by name", id.hex()),
            ));
        }
        check_node(node)
            .map_err(|w| damaged(backup, format!("{}: {w}", String::from_utf8_lossy(&name))))?;
        last = Some(name);
    }
    Ok(page)
}

/// Decodes and checks a page of data runs read back from `trees/<id>`.
pub fn decode_extents(stored: &[u8], id: &Id, backup: &str) -> Result<ExtentPage> {
    let json = open_page(stored, id).map_err(|w| damaged(backup, w))?;
    let page: ExtentPage = serde_json::from_slice(&json)
        .map_err(|e| damaged(backup, format!("page {}: {e}", id.hex())))?;
    let chunks: usize = page.extents.iter().map(|x| x.chunks.len()).sum();
    if page.format != TREE_FORMAT || chunks > MAX_EXTENT_PAGE_CHUNKS {
        return Err(damaged(
            backup,
            format!("page {} is not a page of data runs", id.hex()),
        ));
    }
    Ok(page)
}

/// The rules one node keeps, whatever the page it is on.
fn check_node(n: &Node) -> std::result::Result<(), String> {
    match &n.kind {
        NodeKind::Dir { pages } if pages.len() > MAX_DIR_PAGES => {
            return Err(format!("a folder of {} pages", pages.len()))
        }
        NodeKind::File {
            size,
            extents,
            extent_pages,
            ..
        } => {
            if !extents.is_empty() && !extent_pages.is_empty() {
                return Err("data runs both inline and in pages".into());
            }
            if extent_pages.len() > MAX_FILE_PAGES {
                return Err(format!("{} pages of data runs", extent_pages.len()));
            }
            let mut runs = Runs::new(*size);
            for x in extents {
                runs.take(x)?;
            }
        }
        NodeKind::Symlink { target } => {
            let t = target
                .bytes()
                .ok_or_else(|| "a link target that is not hex".to_string())?;
            if t.is_empty() || t.len() > MAX_LINK_TARGET || t.contains(&0) {
                return Err("a bad link target".into());
            }
        }
        _ => {}
    }
    check_xattrs(&n.xattrs)
}

/// Extended attributes: at most [`MAX_XATTRS`], [`MAX_XATTR_TOTAL`] bytes together (names
/// and values), names that are names and values that are hex.
pub fn check_xattrs(x: &BTreeMap<String, String>) -> std::result::Result<(), String> {
    if x.len() > MAX_XATTRS {
        return Err(format!("{} extended attributes", x.len()));
    }
    let mut total = 0usize;
    for (k, v) in x {
        if k.is_empty() || k.len() > 255 || k.contains('\0') || v.len() % 2 != 0 {
            return Err("a bad extended attribute".into());
        }
        total = total.saturating_add(k.len()).saturating_add(v.len() / 2);
        if total > MAX_XATTR_TOTAL || unhex(v).is_none() {
            return Err(format!(
                "extended attributes of more than {MAX_XATTR_TOTAL} bytes, or not hex"
            ));
        }
    }
    Ok(())
}

/// A file's data runs taken in order (inline, or page after page): each after the last,
/// within the file's size, with checked arithmetic.
#[derive(Debug)]
pub struct Runs {
    size: u64,
    end: u64,
}

impl Runs {
    pub fn new(size: u64) -> Runs {
        Runs { size, end: 0 }
    }

    pub fn take(&mut self, x: &Extent) -> std::result::Result<(), String> {
        if x.offset < self.end {
            return Err("overlapping data".into());
        }
        let mut len = 0u64;
        for (_, s) in &x.chunks {
            if *s == 0 || *s > MAX_CHUNK {
                return Err(format!("a chunk of {s} bytes"));
            }
            len = len.checked_add(u64::from(*s)).ok_or("overflow")?;
        }
        self.end = x.offset.checked_add(len).ok_or("overflow")?;
        if self.end > self.size {
            return Err("data past the file's size".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, kind: NodeKind) -> Node {
        Node {
            name: Text::Utf8(name.into()),
            kind,
            uid: 0,
            gid: 0,
            mode: 0o644,
            atime: (0, 0),
            mtime: (0, 0),
            ctime: None,
            ino: None,
            xattrs: BTreeMap::new(),
        }
    }

    fn listing(nodes: Vec<Node>) -> (Id, Vec<u8>) {
        let (id, stored, _) = encode_page(&Listing {
            format: TREE_FORMAT,
            listing: nodes,
        })
        .unwrap();
        (id, stored)
    }

    #[test]
    fn a_page_round_trips_and_is_named_by_its_hash() {
        let c = Id::of(b"c");
        let nodes = vec![
            node("a", NodeKind::Dir { pages: vec![c] }),
            node(
                "f",
                NodeKind::File {
                    size: 10,
                    extents: vec![Extent {
                        offset: 4,
                        chunks: vec![(c, 6)],
                    }],
                    extent_pages: vec![],
                    link: Some(3),
                },
            ),
            node("h", NodeKind::Hardlink { link: 3 }),
        ];
        let (id, stored) = listing(nodes.clone());
        assert_eq!(decode_listing(&stored, &id, "b").unwrap().listing, nodes);
        let e = decode_listing(&stored, &Id::of(b"other"), "b").unwrap_err();
        assert!(e.to_string().contains("does not match its hash"), "{e}");
    }

    #[test]
    fn hostile_pages_are_refused() {
        let c = Id::of(b"c");
        let file = |size, extents| NodeKind::File {
            size,
            extents,
            extent_pages: vec![],
            link: None,
        };
        let big_xattrs: BTreeMap<String, String> = (0..3)
            .map(|i| (format!("user.x{i}"), "ab".repeat(30 << 10)))
            .collect();
        let cases: Vec<(&str, Vec<Node>)> = vec![
            ("escaping name", vec![node("..", NodeKind::Fifo)]),
            ("slash", vec![node("a/b", NodeKind::Fifo)]),
            (
                "unsorted",
                vec![node("b", NodeKind::Fifo), node("a", NodeKind::Fifo)],
            ),
            (
                "twice",
                vec![node("a", NodeKind::Fifo), node("a", NodeKind::Fifo)],
            ),
            (
                "data past size",
                vec![node(
                    "f",
                    file(
                        5,
                        vec![Extent {
                            offset: 0,
                            chunks: vec![(c, 6)],
                        }],
                    ),
                )],
            ),
            (
                "overflow",
                vec![node(
                    "f",
                    file(
                        u64::MAX,
                        vec![Extent {
                            offset: u64::MAX,
                            chunks: vec![(c, 6)],
                        }],
                    ),
                )],
            ),
            (
                "empty link",
                vec![node(
                    "l",
                    NodeKind::Symlink {
                        target: Text::Utf8(String::new()),
                    },
                )],
            ),
            (
                "too many attribute bytes",
                vec![Node {
                    xattrs: big_xattrs,
                    ..node("x", NodeKind::Fifo)
                }],
            ),
            (
                "an empty name among others",
                vec![node("", NodeKind::Fifo), node("a", NodeKind::Fifo)],
            ),
        ];
        for (what, nodes) in cases {
            let (id, stored) = listing(nodes);
            let e = decode_listing(&stored, &id, "b").unwrap_err().to_string();
            assert!(e.contains("backup b is damaged"), "{what}: {e}");
        }
        // Too many nodes, however small.
        let many: Vec<Node> = (0..MAX_PAGE_NODES + 1)
            .map(|i| node(&format!("n{i:05}"), NodeKind::Fifo))
            .collect();
        let (id, stored) = listing(many);
        assert!(decode_listing(&stored, &id, "b").is_err());
        // A bomb: a few bytes that decompress past the bound.
        let bomb = zstd::bulk::compress(&vec![b' '; (MAX_PAGE_BYTES + 10) as usize], 19).unwrap();
        let e = decode_listing(&bomb, &Id::of(&bomb), "b")
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than"), "{e}");
        assert!(decode_listing(b"not zstd", &Id::of(b"not zstd"), "b").is_err());
    }
}
