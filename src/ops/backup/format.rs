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

use serde::{Deserialize, Serialize};

use crate::core::error::{Error, Result};

pub mod node;

/// The format this version writes: of the destination's configuration and of backups
/// (their summary and tree). Format 1 (one tree object per backup, read whole) is still
/// read; a destination this version writes to is marked format 2, so that versions that
/// cannot read its backups refuse it with a clear error.
pub const FORMAT: u32 = 2;
/// Formats this version reads.
pub const FORMATS_READ: [u32; 2] = [1, 2];
/// The format of pack indexes (unchanged by format 2).
pub const INDEX_FORMAT: u32 = 1;
/// The configuration object's name.
pub const CONFIG: &str = "caravan-backups.json";
/// What `kind` in the configuration says.
pub const KIND: &str = "caravan-backups";

/// Chunk sizes (bytes): content-defined boundaries between these.
pub const MIN_CHUNK: u32 = 512 << 10;
pub const AVG_CHUNK: u32 = 1 << 20;
pub const MAX_CHUNK: u32 = 8 << 20;
/// A pack is sent once it holds this much...
pub const PACK_TARGET: usize = 16 << 20;
/// ... or this many chunks: its index (about 120 bytes of JSON a chunk) then stays well
/// within what a reader takes ([`MAX_INDEX`]) however small the chunks (a million small
/// files are a million chunks).
pub const PACK_CHUNKS: usize = 65_536;
/// Bounds on objects read back.
pub const MAX_PACK: u64 = 64 << 20;
pub const MAX_INDEX: u64 = 16 << 20;
pub const MAX_SUMMARY: u64 = 1 << 20;
pub const MAX_TREE_STORED: u64 = 1 << 30;
pub const MAX_TREE_BYTES: u64 = 1 << 30;
pub const MAX_ENTRIES: usize = 20_000_000;
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
        if !FORMATS_READ.contains(&c.format) {
            return Err(Error::Backup(format!("{at} holds backups of format {}; this version reads formats 1 and 2: use a matching caravan", c.format)));
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
        if i.format != INDEX_FORMAT || i.pack.hex() != name {
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

impl From<&crate::core::copy_report::CopyReport> for TreeStats {
    /// The walk counts as a copy does; the stored form keeps what a backup needs.
    fn from(r: &crate::core::copy_report::CopyReport) -> TreeStats {
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
        if !FORMATS_READ.contains(&s.format) {
            return Err(Error::Backup(format!(
                "backup {name} is of format {}; this version reads formats 1 and 2",
                s.format
            )));
        }
        if s.id != name || crate::core::backup_url::validate_id(&s.id).is_err() {
            return Err(Error::Backup(format!(
                "backup {name} is damaged: its summary names another backup"
            )));
        }
        let names_ok = crate::core::names::validate_name(&s.volume).is_ok()
            && s.snapshot
                .as_deref()
                .is_none_or(|n| crate::core::names::validate_snapshot_name(n).is_ok())
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

/// `trees/<id>`: every entry of a backup of format 1, in one object. Read as a stream
/// ([`Tree::stream`]), one entry at a time: a tree of a few kilobytes can decompress into
/// a gigabyte of entries, and none of it is held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    pub format: u32,
    pub entries: Vec<Entry>,
}

/// The tree format of backups of format 1.
pub const V1_TREE_FORMAT: u32 = 1;

impl Tree {
    pub fn encode(&self) -> Result<Vec<u8>> {
        let json = serde_json::to_vec(self)
            .map_err(|e| Error::Backup(format!("encoding the tree: {e}")))?;
        zstd::bulk::compress(&json, 3)
            .map_err(|e| Error::Backup(format!("compressing the tree: {e}")))
    }

    /// Decodes and checks a whole stored tree (tests, and small trees): at most `max`
    /// bytes of JSON.
    pub fn decode_within(stored: &[u8], name: &str, max: u64) -> Result<Tree> {
        let mut entries = Vec::new();
        Tree::stream(stored, name, max, |_, e| {
            entries.push(e);
            Ok(())
        })?;
        Ok(Tree {
            format: V1_TREE_FORMAT,
            entries,
        })
    }

    pub fn decode(stored: &[u8], name: &str) -> Result<Tree> {
        Self::decode_within(stored, name, MAX_TREE_BYTES)
    }

    /// Reads a stored tree entry by entry, each checked against the ones before it (what
    /// a restore needs to follow it safely: a root folder first, every entry's parent a
    /// folder before it, names that are one path component, data within the file's size,
    /// hard links to earlier linked files) and handed to `each` with its index. What is
    /// kept of the entries already seen is two bits each. `name` is the backup's.
    pub fn stream(
        stored: &[u8],
        name: &str,
        max: u64,
        mut each: impl FnMut(usize, Entry) -> Result<()>,
    ) -> Result<()> {
        use serde::de::DeserializeSeed;
        let bad = |why: String| Error::Backup(format!("backup {name} is damaged: its tree: {why}"));
        let decoder = zstd::stream::read::Decoder::new(stored).map_err(|e| bad(e.to_string()))?;
        let reader = std::io::Read::take(decoder, max);
        let mut de = serde_json::Deserializer::from_reader(std::io::BufReader::new(reader));
        let mut state = Stream {
            each: &mut each,
            failed: None,
            dirs: Bits::default(),
            linked: Bits::default(),
            count: 0,
        };
        let read = TreeSeed(&mut state).deserialize(&mut de);
        if let Some(e) = state.failed.take() {
            return Err(e);
        }
        read.map_err(|e| bad(e.to_string()))?;
        if state.count == 0 {
            return Err(bad("no root".into()));
        }
        Ok(())
    }
}

/// A bit per entry.
#[derive(Default)]
struct Bits(Vec<u64>);

impl Bits {
    fn set(&mut self, i: usize) {
        let (w, b) = (i / 64, i % 64);
        if self.0.len() <= w {
            self.0.resize(w + 1, 0);
        }
        self.0[w] |= 1 << b;
    }
    fn get(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
}

/// A tree being streamed: what each entry is checked against.
struct Stream<'a, F> {
    each: &'a mut F,
    /// The callback's own error (serde's carries only text).
    failed: Option<Error>,
    dirs: Bits,
    linked: Bits,
    count: usize,
}

impl<F: FnMut(usize, Entry) -> Result<()>> Stream<'_, F> {
    fn take(&mut self, e: Entry) -> std::result::Result<(), String> {
        let i = self.count;
        if i >= MAX_ENTRIES {
            return Err(format!("more than {MAX_ENTRIES} entries"));
        }
        check_entry(i, &e, &self.dirs, &self.linked)?;
        match e.kind {
            Kind::Dir => self.dirs.set(i),
            Kind::File { linked: true, .. } => self.linked.set(i),
            _ => {}
        }
        self.count += 1;
        (self.each)(i, e).map_err(|e| {
            let text = e.to_string();
            self.failed = Some(e);
            text
        })
    }
}

struct TreeSeed<'s, 'a, F>(&'s mut Stream<'a, F>);

impl<'de, F: FnMut(usize, Entry) -> Result<()>> serde::de::DeserializeSeed<'de>
    for TreeSeed<'_, '_, F>
{
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, F: FnMut(usize, Entry) -> Result<()>> serde::de::Visitor<'de> for TreeSeed<'_, '_, F> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a tree of format 1")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<(), A::Error> {
        use serde::de::Error as _;
        let mut format = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "format" => {
                    let f: u32 = map.next_value()?;
                    if f != V1_TREE_FORMAT {
                        return Err(A::Error::custom(format!("format {f}")));
                    }
                    format = Some(f);
                }
                // Its format first: entries are not taken before it is known.
                "entries" if format.is_some() => map.next_value_seed(EntriesSeed(&mut *self.0))?,
                "entries" => return Err(A::Error::custom("entries before the format")),
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

struct EntriesSeed<'s, 'a, F>(&'s mut Stream<'a, F>);

impl<'de, F: FnMut(usize, Entry) -> Result<()>> serde::de::DeserializeSeed<'de>
    for EntriesSeed<'_, '_, F>
{
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, F: FnMut(usize, Entry) -> Result<()>> serde::de::Visitor<'de> for EntriesSeed<'_, '_, F> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the entries of a tree")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<(), A::Error> {
        use serde::de::Error as _;
        while let Some(e) = seq.next_element::<Entry>()? {
            self.0.take(e).map_err(A::Error::custom)?;
        }
        Ok(())
    }
}

/// The rules entry `i` keeps, given which earlier entries are folders and linked files.
fn check_entry(i: usize, e: &Entry, dirs: &Bits, linked: &Bits) -> std::result::Result<(), String> {
    let at = || format!("entry {i}");
    if i == 0 {
        if e.parent != 0 || e.kind != Kind::Dir {
            return Err("its first entry is not the root folder".into());
        }
        return check_v1_xattrs(&e.xattrs).map_err(|w| format!("{}: {w}", at()));
    }
    let p = e.parent as usize;
    if p >= i || !dirs.get(p) {
        return Err(format!("{}: its parent is not a folder before it", at()));
    }
    let name = e
        .name
        .bytes()
        .ok_or_else(|| format!("{}: a name that is not hex", at()))?;
    check_component(&name).map_err(|w| format!("{}: {w}", at()))?;
    match &e.kind {
        Kind::File { size, extents, .. } => {
            let mut runs = node::Runs::new(*size);
            for x in extents {
                runs.take(x).map_err(|w| format!("{}: {w}", at()))?;
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
            if to >= i || !linked.get(to) {
                return Err(format!(
                    "{}: a hard link to something that is not an earlier linked file",
                    at()
                ));
            }
        }
        Kind::Dir | Kind::Fifo => {}
    }
    check_v1_xattrs(&e.xattrs).map_err(|w| format!("{}: {w}", at()))
}

/// Format 1's bounds on extended attributes (as its writer kept them): at most 1024, of
/// at most 64 KiB each.
fn check_v1_xattrs(x: &BTreeMap<String, String>) -> std::result::Result<(), String> {
    if x.len() > 1024 {
        return Err(format!("{} extended attributes", x.len()));
    }
    for (k, v) in x {
        if k.is_empty()
            || k.len() > 255
            || k.contains('\0')
            || v.len() > (64 << 10) * 2
            || unhex(v).is_none()
        {
            return Err("a bad extended attribute".into());
        }
    }
    Ok(())
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
    fn a_format_1_tree_streams_back() {
        let id = Id::of(b"x");
        let t = Tree {
            format: V1_TREE_FORMAT,
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
                format: V1_TREE_FORMAT,
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
            format: INDEX_FORMAT,
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
}
