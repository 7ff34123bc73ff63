//! Backups: a volume (or one of its snapshots) sent to a destination outside the export,
//! deduplicated, compressed and checksummed, and restored from there on any host.
//!
//! A file's data is cut into chunks at content-defined boundaries (FastCDC), so an edit
//! moves only the chunks around it; each chunk is named by its BLAKE3 hash, sent once
//! (zstd-compressed, in packs of about 16 MiB, with an index per pack), and found again by
//! every later backup of any volume to the same destination. A backup's tree (every
//! entry with its owner, mode, times, extended attributes, link target, hard links and
//! data runs, holes left out) is written after its chunks, and its summary last: a backup
//! is listed once its summary exists, so an interrupted one never is, and the next run
//! finds the packs it had sent (their indexes are written right after them) and does not
//! send them again.
//!
//! | module | what it is |
//! |---|---|
//! | [`dest`] | the destination: a folder (`vfs://`) or S3 (`s3://`), blocking calls |
//! | [`format`] | the objects stored, and the checks on reading them back |
//! | [`lock`] | who uses a destination (backups share it, a delete is alone) |
//! | `create` | walking a volume's tree and sending what is new |
//! | `restore` | writing a backup's tree into an empty folder |
//! | `verify` | reading back and checking every chunk of a backup |
//! | `delete` | deleting a backup and freeing the chunks no other backup uses |

pub mod dest;
pub mod format;
pub mod lock;

mod create;
mod delete;
mod restore;
pub(crate) mod tree;
mod verify;

use bytes::Bytes;

pub use create::{create, Source};
pub use delete::{delete, DeleteReport};
pub use dest::{Access, Backend};
pub use restore::restore;
pub use verify::{verify, Damage, VerifyReport};

use crate::core::error::{Error, Result};
use format::{Config, Id, Index, Located, Summary};

/// An open destination holding caravan backups.
pub struct Repo {
    pub b: Backend,
    pub config: Config,
}

/// Where a stored chunk is: its pack (and that pack's size) and its place there.
#[derive(Debug, Clone)]
pub struct ChunkAt {
    pub pack: Id,
    pub pack_size: u64,
    pub at: Located,
}

/// Every stored chunk, by hash: where it is, in 48 bytes a chunk (a sorted list, searched
/// by halves; a hash map of the same took five times that at a million chunks, and a
/// restore holds it whole).
#[derive(Debug, Default)]
pub struct Chunks {
    /// Each pack once: its hash and size.
    packs: Vec<(Id, u64)>,
    /// By chunk hash: the pack's number in `packs`, and the chunk's place there (a pack
    /// is at most 64 MiB, so 32 bits hold its offsets).
    slots: Vec<(Id, Slot)>,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    pack: u32,
    offset: u32,
    length: u32,
    size: u32,
}

impl Chunks {
    /// Where chunk `id` is, if it is stored.
    pub fn get(&self, id: &Id) -> Option<ChunkAt> {
        let i = self.slots.binary_search_by(|(c, _)| c.cmp(id)).ok()?;
        let (_, s) = self.slots[i];
        let (pack, pack_size) = self.packs[s.pack as usize];
        Some(ChunkAt {
            pack,
            pack_size,
            at: Located {
                id: *id,
                offset: u64::from(s.offset),
                length: s.length,
                size: s.size,
            },
        })
    }

    pub fn contains(&self, id: &Id) -> bool {
        self.slots.binary_search_by(|(c, _)| c.cmp(id)).is_ok()
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

impl Repo {
    /// Opens the destination; `create` writes its configuration if it has none (the first
    /// backup), otherwise a destination without one is an error.
    pub fn open(b: Backend, create: bool) -> Result<Repo> {
        match Self::open_existing(b)? {
            // Written to by this version: marked as of its format, so that versions that
            // cannot read the backups it makes refuse the destination, clearly.
            Ok(mut repo) if create && repo.config.format < format::FORMAT => {
                repo.config.format = format::FORMAT;
                repo.b.put(
                    format::CONFIG,
                    Bytes::from(
                        serde_json::to_vec_pretty(&repo.config).expect("config serializes"),
                    ),
                )?;
                Ok(repo)
            }
            Ok(repo) => Ok(repo),
            Err(b) if create => {
                let c = Config::default();
                b.put(
                    format::CONFIG,
                    Bytes::from(serde_json::to_vec_pretty(&c).expect("config serializes")),
                )?;
                Ok(Repo { b, config: c })
            }
            Err(b) => Err(Error::Backup(format!(
                "{} holds no caravan backups (no {})",
                b.url(),
                format::CONFIG
            ))),
        }
    }

    /// Opens a destination that holds backups; one that never had any is handed back.
    pub fn open_existing(b: Backend) -> Result<std::result::Result<Repo, Backend>> {
        Ok(match b.get(format::CONFIG, 64 << 10)? {
            Some(bytes) => {
                let config = Config::decode(&bytes, b.url())?;
                Ok(Repo { b, config })
            }
            None => Err(b),
        })
    }

    /// Every pack's index: where each stored chunk is. A damaged index is skipped (its
    /// chunks count as missing: a backup sends them again, a restore names what needs
    /// them).
    pub fn chunks(&self) -> Result<Chunks> {
        let mut out = Chunks::default();
        for l in self.b.list("index")? {
            let Some(bytes) = self
                .b
                .get(&format!("index/{}", l.name), format::MAX_INDEX)?
            else {
                continue;
            };
            match Index::decode(&bytes, &l.name) {
                Ok(i) => {
                    let pack = u32::try_from(out.packs.len()).unwrap_or(u32::MAX);
                    out.packs.push((i.pack, i.pack_size));
                    // Checked by Index::decode: within a pack of at most 64 MiB.
                    out.slots.extend(i.chunks.iter().map(|c| {
                        let slot = Slot {
                            pack,
                            offset: u32::try_from(c.offset).unwrap_or(u32::MAX),
                            length: c.length,
                            size: c.size,
                        };
                        (c.id, slot)
                    }));
                }
                Err(e) => tracing::warn!("{e}; its chunks count as missing"),
            }
        }
        // A chunk in two packs (an interrupted run sent it again): the first found stays,
        // as it did before.
        out.slots.sort_by_key(|s| s.0);
        out.slots.dedup_by(|b, a| a.0 == b.0);
        out.slots.shrink_to_fit();
        Ok(out)
    }

    /// The complete backups, oldest first; a damaged summary is skipped with a warning.
    pub fn summaries(&self) -> Result<Vec<Summary>> {
        let mut out = Vec::new();
        for l in self.b.list("backups")? {
            let Some(id) = l.name.strip_suffix(".json") else {
                continue;
            };
            match self.summary(id) {
                Ok(s) => out.push(s),
                Err(e) => tracing::warn!("{e}"),
            }
        }
        out.sort_by(|a, b| (&a.started_at, &a.id).cmp(&(&b.started_at, &b.id)));
        Ok(out)
    }

    pub fn summary(&self, id: &str) -> Result<Summary> {
        crate::core::backup_url::validate_id(id)?;
        let bytes = self
            .b
            .get(&format!("backups/{id}.json"), format::MAX_SUMMARY)?
            .ok_or_else(|| {
                Error::NoSuchBackup(format!(
                    "{} has no backup {id} (`caravan backup list {}` lists them)",
                    self.b.url(),
                    self.b.url()
                ))
            })?;
        Summary::decode(&bytes, id)
    }

    /// The stored tree object of a backup of format 1, checked against the hash its
    /// summary gives (read it with [`format::Tree::stream`]).
    pub fn v1_tree(&self, s: &Summary) -> Result<Vec<u8>> {
        let bytes = self
            .b
            .get(&format!("trees/{}", s.id), s.tree_size)?
            .ok_or_else(|| {
                Error::Backup(format!("backup {} is damaged: its tree is missing", s.id))
            })?;
        if Id::of(&bytes) != s.tree_id {
            return Err(Error::Backup(format!(
                "backup {} is damaged: its tree does not match its hash",
                s.id
            )));
        }
        Ok(bytes)
    }
}

/// Reads chunks out of packs, keeping the last few packs read (a restore reads them in
/// the order a backup wrote them).
pub(crate) struct PackReader<'r> {
    repo: &'r Repo,
    cache: Vec<(Id, Vec<u8>)>,
}

const PACKS_CACHED: usize = 4;

/// Why a chunk could not be had.
#[derive(Debug)]
pub(crate) enum ChunkError {
    /// Missing or not what its hash says: the backup is damaged there.
    Damaged(String),
    /// The destination could not be read: nothing is known about the chunk.
    Failed(Error),
}

impl<'r> PackReader<'r> {
    pub fn new(repo: &'r Repo) -> Self {
        PackReader {
            repo,
            cache: Vec::new(),
        }
    }

    /// The whole pack `id` (read once, then from the cache).
    pub fn pack(&mut self, id: Id, size: u64) -> std::result::Result<&[u8], ChunkError> {
        if let Some(i) = self.cache.iter().position(|(p, _)| *p == id) {
            let hit = self.cache.remove(i);
            self.cache.push(hit);
        } else {
            let bytes = self
                .repo
                .b
                .get(&format!("packs/{}", id.hex()), format::MAX_PACK)
                .map_err(ChunkError::Failed)?
                .ok_or_else(|| ChunkError::Damaged(format!("pack {} is missing", id.hex())))?;
            if bytes.len() as u64 != size {
                return Err(ChunkError::Damaged(format!(
                    "pack {} has {} bytes where its index says {size}",
                    id.hex(),
                    bytes.len()
                )));
            }
            if self.cache.len() >= PACKS_CACHED {
                self.cache.remove(0);
            }
            self.cache.push((id, bytes));
        }
        Ok(&self.cache.last().expect("just pushed").1)
    }

    /// The uncompressed bytes of chunk `id`, checked against its hash and size.
    pub fn chunk(
        &mut self,
        chunks: &Chunks,
        id: Id,
        size: u32,
    ) -> std::result::Result<Vec<u8>, ChunkError> {
        let ChunkAt {
            pack,
            pack_size,
            at,
        } = chunks
            .get(&id)
            .ok_or_else(|| ChunkError::Damaged(format!("chunk {} is in no pack", id.hex())))?;
        let bytes = self.pack(pack, pack_size)?;
        let start = at.offset as usize;
        let stored = &bytes[start..start + at.length as usize];
        let data = zstd::bulk::decompress(stored, at.size as usize).map_err(|e| {
            ChunkError::Damaged(format!("chunk {} does not decompress: {e}", id.hex()))
        })?;
        if data.len() != size as usize || Id::of(&data) != id {
            return Err(ChunkError::Damaged(format!(
                "chunk {} does not match its hash",
                id.hex()
            )));
        }
        Ok(data)
    }
}

#[cfg(test)]
mod tests;
