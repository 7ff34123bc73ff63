//! What a backup destination holds, and the checks every object read back from it passes.
//!
//! ```text
//! caravan-backups.json     the destination's format and chunking parameters
//! packs/<id>               chunks, each zstd-compressed, one after another
//! index/<id>               which chunks pack <id> holds, and where (written after the pack)
//! trees/<backup>           a backup's tree (zstd-compressed JSON), written before ...
//! backups/<backup>.json    ... its summary, written last: a backup is listed once it exists
//! locks/<id>.json          who is using the destination (see `lock.rs`)
//! ```
//!
//! Chunks are named by the BLAKE3 hash of their uncompressed bytes, packs by the hash of
//! their stored bytes. Everything here is read from a place other machines can write, so
//! nothing is trusted: sizes are bounded before anything is allocated, names are checked
//! as path components, references must point backwards in the tree, and arithmetic on
//! stored values is checked.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The format this version writes and reads.
pub const FORMAT: u32 = 1;
/// The configuration object's name.
pub const CONFIG: &str = "caravan-backups.json";
/// What `kind` in the configuration says.
pub const KIND: &str = "caravan-backups";

/// Chunk sizes (bytes): content-defined boundaries between these.
pub const MIN_CHUNK: u32 = 512 << 10;
pub const AVG_CHUNK: u32 = 1 << 20;
pub const MAX_CHUNK: u32 = 8 << 20;
/// A pack is sent once it holds this much.
pub const PACK_TARGET: usize = 16 << 20;
/// Bounds on objects read back.
pub const MAX_PACK: u64 = 64 << 20;
pub const MAX_INDEX: u64 = 16 << 20;
pub const MAX_SUMMARY: u64 = 1 << 20;
pub const MAX_TREE_STORED: u64 = 1 << 30;
pub const MAX_TREE_BYTES: u64 = 1 << 30;
pub const MAX_ENTRIES: usize = 20_000_000;
const MAX_XATTRS: usize = 1024;
const MAX_XATTR_VALUE: usize = 64 << 10;
const MAX_LINK_TARGET: usize = 4096;

/// A chunk's or pack's name: the BLAKE3 hash of its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(pub [u8; 32]);

impl Id {
    pub fn of(data: &[u8]) -> Id {
        Id(*blake3::hash(data).as_bytes())
    }
    pub fn hex(&self) -> String {
        hex(&self.0)
    }
    pub fn parse(s: &str) -> Option<Id> {
        let v = unhex(s)?;
        Some(Id(v.try_into().ok()?))
    }
}

impl Serialize for Id {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.hex())
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Id::parse(&s).ok_or_else(|| serde::de::Error::custom("not a 64-digit hex hash"))
    }
}

pub fn hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(DIGITS[(x >> 4) as usize] as char);
        s.push(DIGITS[(x & 15) as usize] as char);
    }
    s
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// Bytes that are usually text (file names, link targets): a string when they are UTF-8,
/// else `{"hex": "…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Text {
    Utf8(String),
    Raw { hex: String },
}

impl Text {
    pub fn of(b: &[u8]) -> Text {
        match std::str::from_utf8(b) {
            Ok(s) => Text::Utf8(s.to_string()),
            Err(_) => Text::Raw { hex: hex(b) },
        }
    }
    pub fn bytes(&self) -> Option<Vec<u8>> {
        match self {
            Text::Utf8(s) => Some(s.as_bytes().to_vec()),
            Text::Raw { hex } => unhex(hex),
        }
    }
}

/// The destination's configuration, written once by the first backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub kind: String,
    pub format: u32,
    pub min_chunk: u32,
    pub avg_chunk: u32,
    pub max_chunk: u32,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            kind: KIND.to_string(),
            format: FORMAT,
            min_chunk: MIN_CHUNK,
            avg_chunk: AVG_CHUNK,
            max_chunk: MAX_CHUNK,
        }
    }
}

impl Config {
    pub fn decode(b: &[u8], at: &str) -> Result<Config> {
        let c: Config = serde_json::from_slice(b).map_err(|e| {
            Error::Backup(format!(
                "{at}/{CONFIG} is not a caravan backup configuration: {e}"
            ))
        })?;
        if c.kind != KIND {
            return Err(Error::Backup(format!(
                "{at} holds something else than caravan backups ({CONFIG} says kind {:?})",
                c.kind
            )));
        }
        if c.format != FORMAT {
            return Err(Error::Backup(format!("{at} holds backups of format {}; this version reads format {FORMAT}: use a matching caravan", c.format)));
        }
        let sizes_ok = fastcdc::v2020::MINIMUM_MIN <= c.min_chunk as usize
            && c.min_chunk as usize <= fastcdc::v2020::MINIMUM_MAX
            && fastcdc::v2020::AVERAGE_MIN <= c.avg_chunk as usize
            && c.avg_chunk as usize <= fastcdc::v2020::AVERAGE_MAX
            && fastcdc::v2020::MAXIMUM_MIN <= c.max_chunk as usize
            && c.max_chunk <= MAX_CHUNK
            && c.min_chunk <= c.avg_chunk
            && c.avg_chunk <= c.max_chunk;
        if !sizes_ok {
            return Err(Error::Backup(format!(
                "{at}/{CONFIG} has chunk sizes out of range"
            )));
        }
        Ok(c)
    }
}

/// Where one chunk is in its pack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Located {
    pub id: Id,
    /// Offset and length of its stored (compressed) bytes in the pack.
    pub offset: u64,
    pub length: u32,
    /// Its uncompressed size.
    pub size: u32,
}

/// `index/<pack>`: the chunks of one pack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    pub format: u32,
    pub pack: Id,
    pub pack_size: u64,
    pub chunks: Vec<Located>,
}

impl Index {
    pub fn decode(b: &[u8], name: &str) -> Result<Index> {
        let bad = |why: String| Error::Backup(format!("index {name} is damaged: {why}"));
        let i: Index = serde_json::from_slice(b).map_err(|e| bad(e.to_string()))?;
        if i.format != FORMAT || i.pack.hex() != name {
            return Err(bad(
                "it is not the index of the pack it is named after".into()
            ));
        }
        if i.pack_size > MAX_PACK {
            return Err(bad(format!("a pack of {} bytes", i.pack_size)));
        }
        for c in &i.chunks {
            let end = c.offset.checked_add(u64::from(c.length));
            if end.is_none_or(|e| e > i.pack_size) || c.size > MAX_CHUNK || c.length == 0 {
                return Err(bad(format!("chunk {} lies outside its pack", c.id.hex())));
            }
        }
        Ok(i)
    }
}

/// What a backup's tree holds, counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hard_links: u64,
    pub fifos: u64,
    /// Device nodes and sockets, not backed up.
    pub skipped: u64,
    /// Entries gone between being listed and being read (the source was in use).
    pub vanished: u64,
    pub xattr_errors: u64,
    /// File data, holes not counted.
    pub bytes: u64,
}

impl From<&crate::treecopy::CopyReport> for TreeStats {
    /// The walk counts as a copy does; the stored form keeps what a backup needs.
    fn from(r: &crate::treecopy::CopyReport) -> TreeStats {
        TreeStats {
            files: r.files,
            dirs: r.dirs,
            symlinks: r.symlinks,
            hard_links: r.hard_links,
            fifos: r.fifos,
            skipped: r.skipped,
            vanished: r.vanished,
            xattr_errors: r.xattr_errors,
            bytes: r.bytes,
        }
    }
}

/// What a backup sent and reused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendStats {
    pub chunks: u64,
    /// Chunks this backup stored, and their stored (compressed) bytes.
    pub new_chunks: u64,
    pub new_bytes: u64,
    /// Data bytes found already stored (by earlier backups or an interrupted run).
    pub reused_bytes: u64,
    /// Files taken from the previous backup of the volume without being read (same size,
    /// times and inode).
    #[serde(default)]
    pub unchanged_files: u64,
    pub packs: u64,
}

/// `backups/<id>.json`: a complete backup, and what is needed to list it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub format: u32,
    pub id: String,
    pub volume: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    pub node: String,
    pub started_at: String,
    pub finished_at: String,
    pub millis: u64,
    /// What the source was while being read (see docs/semantics.md, "Backups").
    pub consistency: String,
    pub tree: TreeStats,
    pub sent: SendStats,
    /// The tree object: its hash and stored size.
    pub tree_id: Id,
    pub tree_size: u64,
}

impl Summary {
    pub fn decode(b: &[u8], name: &str) -> Result<Summary> {
        let s: Summary = serde_json::from_slice(b)
            .map_err(|e| Error::Backup(format!("backup {name} is damaged: its summary: {e}")))?;
        if s.format != FORMAT {
            return Err(Error::Backup(format!(
                "backup {name} is of format {}; this version reads format {FORMAT}",
                s.format
            )));
        }
        if s.id != name || validate_id(&s.id).is_err() {
            return Err(Error::Backup(format!(
                "backup {name} is damaged: its summary names another backup"
            )));
        }
        let names_ok = crate::volume::validate_name(&s.volume).is_ok()
            && s.snapshot
                .as_deref()
                .is_none_or(|n| crate::volume::validate_snapshot_name(n).is_ok())
            && s.node.len() <= 256;
        if !names_ok {
            return Err(Error::Backup(format!(
                "backup {name} is damaged: its summary names no valid volume"
            )));
        }
        if s.tree_size > MAX_TREE_STORED {
            return Err(Error::Backup(format!(
                "backup {name} is damaged: a tree of {} bytes",
                s.tree_size
            )));
        }
        Ok(s)
    }
}

/// Checks a backup's name: letters, digits, `-`, `_` and `.`, not first, 1 to 80.
pub fn validate_id(id: &str) -> Result<()> {
    let ok = (1..=80).contains(&id.len())
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "backup name {}: accepted are 1 to 80 letters, digits, '-', '_' and '.', not starting with '.'",
            crate::error::shown(id)
        )))
    }
}

/// A run of a file's data: the chunks (hash, uncompressed size) that hold the bytes from
/// `offset` on. What lies between runs is a hole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    pub offset: u64,
    pub chunks: Vec<(Id, u32)>,
}

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Kind {
    Dir,
    File {
        size: u64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        extents: Vec<Extent>,
        /// Other entries are hard links to this one.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        linked: bool,
    },
    Symlink {
        target: Text,
    },
    Fifo,
    /// Another name of the file at entry `to` (earlier in the tree).
    Hardlink {
        to: u32,
    },
}

/// One entry of the tree, in depth-first order: a folder before what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The folder holding it (entry 0 is the volume's root, its own parent).
    pub parent: u32,
    pub name: Text,
    #[serde(flatten)]
    pub kind: Kind,
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
    /// volume takes a file whose size, times and inode are all unchanged from this tree
    /// without reading it again (not restored: nothing can set them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctime: Option<(i64, i64)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ino: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, String>,
}

/// `trees/<id>`: every entry of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    pub format: u32,
    pub entries: Vec<Entry>,
}

impl Tree {
    pub fn encode(&self) -> Result<Vec<u8>> {
        let json = serde_json::to_vec(self)
            .map_err(|e| Error::Backup(format!("encoding the tree: {e}")))?;
        zstd::bulk::compress(&json, 3)
            .map_err(|e| Error::Backup(format!("compressing the tree: {e}")))
    }

    /// Decodes and checks a stored tree. `name` is the backup's, for messages.
    pub fn decode(stored: &[u8], name: &str) -> Result<Tree> {
        Self::decode_within(stored, name, MAX_TREE_BYTES)
    }

    /// [`Tree::decode`] with a smaller bound on the decompressed size (for fuzzing).
    pub fn decode_within(stored: &[u8], name: &str, max: u64) -> Result<Tree> {
        let bad = |why: String| Error::Backup(format!("backup {name} is damaged: its tree: {why}"));
        let mut json = Vec::new();
        {
            use std::io::Read;
            let d = zstd::stream::read::Decoder::new(stored).map_err(|e| bad(e.to_string()))?;
            d.take(max + 1)
                .read_to_end(&mut json)
                .map_err(|e| bad(e.to_string()))?;
        }
        if json.len() as u64 > max {
            return Err(bad(format!("more than {max} bytes")));
        }
        let t: Tree = serde_json::from_slice(&json).map_err(|e| bad(e.to_string()))?;
        if t.format != FORMAT {
            return Err(bad(format!("format {}", t.format)));
        }
        t.check().map_err(bad)?;
        Ok(t)
    }

    /// The rules a tree must keep for a restore to follow it safely.
    fn check(&self) -> std::result::Result<(), String> {
        if self.entries.len() > MAX_ENTRIES {
            return Err(format!("{} entries", self.entries.len()));
        }
        let Some(root) = self.entries.first() else {
            return Err("no root".into());
        };
        if root.parent != 0 || root.kind != Kind::Dir {
            return Err("its first entry is not the root folder".into());
        }
        for (i, e) in self.entries.iter().enumerate().skip(1) {
            let at = || format!("entry {i}");
            let p = e.parent as usize;
            if p >= i || self.entries[p].kind != Kind::Dir {
                return Err(format!("{}: its parent is not a folder before it", at()));
            }
            let name = e
                .name
                .bytes()
                .ok_or_else(|| format!("{}: a name that is not hex", at()))?;
            check_component(&name).map_err(|w| format!("{}: {w}", at()))?;
            match &e.kind {
                Kind::File { size, extents, .. } => {
                    let mut end = 0u64;
                    for x in extents {
                        if x.offset < end {
                            return Err(format!("{}: overlapping data", at()));
                        }
                        let mut len = 0u64;
                        for (_, s) in &x.chunks {
                            if *s == 0 || *s > MAX_CHUNK {
                                return Err(format!("{}: a chunk of {s} bytes", at()));
                            }
                            len = len.checked_add(u64::from(*s)).ok_or("overflow")?;
                        }
                        end = x.offset.checked_add(len).ok_or("overflow")?;
                        if end > *size {
                            return Err(format!("{}: data past the file's size", at()));
                        }
                    }
                }
                Kind::Symlink { target } => {
                    let t = target
                        .bytes()
                        .ok_or_else(|| format!("{}: a link target that is not hex", at()))?;
                    if t.is_empty() || t.len() > MAX_LINK_TARGET || t.contains(&0) {
                        return Err(format!("{}: a bad link target", at()));
                    }
                }
                Kind::Hardlink { to } => {
                    let to = *to as usize;
                    let ok =
                        to < i && matches!(self.entries[to].kind, Kind::File { linked: true, .. });
                    if !ok {
                        return Err(format!(
                            "{}: a hard link to something that is not an earlier linked file",
                            at()
                        ));
                    }
                }
                Kind::Dir | Kind::Fifo => {}
            }
            if e.xattrs.len() > MAX_XATTRS {
                return Err(format!("{}: {} extended attributes", at(), e.xattrs.len()));
            }
            for (k, v) in &e.xattrs {
                if k.is_empty()
                    || k.len() > 255
                    || k.contains('\0')
                    || v.len() > MAX_XATTR_VALUE * 2
                    || unhex(v).is_none()
                {
                    return Err(format!("{}: a bad extended attribute", at()));
                }
            }
        }
        Ok(())
    }

    /// The path of entry `i` below the volume's root, for messages.
    pub fn path_of(&self, i: usize) -> String {
        path_of(&self.entries, i)
    }
}

/// The path of entry `i` of `entries` below the volume's root (`/a/b`), for messages.
pub fn path_of(entries: &[Entry], i: usize) -> String {
    let mut parts = Vec::new();
    let mut at = i;
    while at != 0 && at < entries.len() && parts.len() <= crate::treecopy::MAX_DEPTH {
        let e = &entries[at];
        let name = e.name.bytes().unwrap_or_default();
        parts.push(OsStr::from_bytes(&name).to_string_lossy().into_owned());
        at = e.parent as usize;
    }
    parts.reverse();
    format!("/{}", parts.join("/"))
}

/// A name that is one path component: not empty, `.` or `..`, no `/` or NUL, ≤ 255 bytes.
pub fn check_component(name: &[u8]) -> std::result::Result<(), String> {
    if name.is_empty()
        || name == b"."
        || name == b".."
        || name.len() > 255
        || name.contains(&b'/')
        || name.contains(&0)
    {
        Err(format!(
            "{:?} is not a file name",
            String::from_utf8_lossy(name)
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(parent: u32, name: &str, kind: Kind) -> Entry {
        Entry {
            parent,
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

    fn file(size: u64, extents: Vec<Extent>) -> Kind {
        Kind::File {
            size,
            extents,
            linked: false,
        }
    }

    #[test]
    fn a_tree_round_trips_and_names_its_paths() {
        let id = Id::of(b"x");
        let t = Tree {
            format: FORMAT,
            entries: vec![
                entry(0, "", Kind::Dir),
                entry(0, "a", Kind::Dir),
                entry(
                    1,
                    "f",
                    file(
                        10,
                        vec![Extent {
                            offset: 4,
                            chunks: vec![(id, 6)],
                        }],
                    ),
                ),
                Entry {
                    name: Text::of(b"bin\xff"),
                    ..entry(1, "", Kind::Fifo)
                },
            ],
        };
        let back = Tree::decode(&t.encode().unwrap(), "b").unwrap();
        assert_eq!(back, t);
        assert_eq!(back.path_of(2), "/a/f");
        assert_eq!(back.entries[3].name.bytes().unwrap(), b"bin\xff");
        assert_eq!(Id::parse(&id.hex()), Some(id));
    }

    #[test]
    fn a_hostile_tree_is_refused() {
        let id = Id::of(b"x");
        let root = entry(0, "", Kind::Dir);
        let cases: Vec<(&str, Vec<Entry>)> = vec![
            ("no root", vec![]),
            ("root a file", vec![entry(0, "", file(0, vec![]))]),
            (
                "escaping name",
                vec![root.clone(), entry(0, "..", Kind::Dir)],
            ),
            ("slash", vec![root.clone(), entry(0, "a/b", Kind::Dir)]),
            (
                "forward parent",
                vec![
                    root.clone(),
                    entry(2, "a", Kind::Dir),
                    entry(0, "b", Kind::Dir),
                ],
            ),
            (
                "parent a file",
                vec![
                    root.clone(),
                    entry(0, "f", file(0, vec![])),
                    entry(1, "x", Kind::Fifo),
                ],
            ),
            (
                "data past size",
                vec![
                    root.clone(),
                    entry(
                        0,
                        "f",
                        file(
                            5,
                            vec![Extent {
                                offset: 0,
                                chunks: vec![(id, 6)],
                            }],
                        ),
                    ),
                ],
            ),
            (
                "overflow",
                vec![
                    root.clone(),
                    entry(
                        0,
                        "f",
                        file(
                            u64::MAX,
                            vec![Extent {
                                offset: u64::MAX,
                                chunks: vec![(id, 6)],
                            }],
                        ),
                    ),
                ],
            ),
            (
                "hard link forward",
                vec![
                    root.clone(),
                    entry(0, "h", Kind::Hardlink { to: 2 }),
                    entry(
                        0,
                        "f",
                        Kind::File {
                            size: 0,
                            extents: vec![],
                            linked: true,
                        },
                    ),
                ],
            ),
            (
                "hard link to a folder",
                vec![
                    root.clone(),
                    entry(0, "d", Kind::Dir),
                    entry(0, "h", Kind::Hardlink { to: 1 }),
                ],
            ),
            (
                "empty link",
                vec![
                    root.clone(),
                    entry(
                        0,
                        "l",
                        Kind::Symlink {
                            target: Text::Utf8(String::new()),
                        },
                    ),
                ],
            ),
        ];
        for (what, entries) in cases {
            let t = Tree {
                format: FORMAT,
                entries,
            };
            let e = Tree::decode(&t.encode().unwrap(), "b")
                .unwrap_err()
                .to_string();
            assert!(e.contains("backup b is damaged"), "{what}: {e}");
        }
        assert!(Tree::decode(b"not zstd", "b").is_err());
    }

    #[test]
    fn an_index_pointing_outside_its_pack_is_refused() {
        let pack = Id::of(b"pack");
        let mut i = Index {
            format: FORMAT,
            pack,
            pack_size: 100,
            chunks: vec![Located {
                id: Id::of(b"c"),
                offset: 90,
                length: 10,
                size: 20,
            }],
        };
        let ok = serde_json::to_vec(&i).unwrap();
        assert!(Index::decode(&ok, &pack.hex()).is_ok());
        assert!(
            Index::decode(&ok, &Id::of(b"other").hex()).is_err(),
            "named after another pack"
        );
        i.chunks[0].length = 11;
        assert!(Index::decode(&serde_json::to_vec(&i).unwrap(), &pack.hex()).is_err());
        i.chunks[0].offset = u64::MAX;
        assert!(Index::decode(&serde_json::to_vec(&i).unwrap(), &pack.hex()).is_err());
    }

    #[test]
    fn backup_names_are_checked() {
        assert!(validate_id("20261201T232317Z-3fa9c1").is_ok());
        for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(81)] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }
}
