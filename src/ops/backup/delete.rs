//! Deleting a backup, and freeing what no other backup needs.
//!
//! Alone on the destination (an exclusive lock: no backup is counting on a chunk being
//! there meanwhile): the summary goes first (from then on the backup is not listed), then
//! its tree. Then every pack is judged against the chunks the remaining backups need: a
//! pack none of them needs is deleted (index first, so no index ever names a missing
//! pack), a pack some of them need is rewritten with just those chunks (the new pack and
//! its index are written before the old index and pack are deleted, so every needed chunk
//! is findable at every moment). What interrupted runs left (packs without an index,
//! trees without a summary) is deleted too.

use std::collections::HashSet;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::format::node::NodeKind;
use super::format::{self, Id, Index, Located};
use super::lock::{LockKind, RepoLock};
use super::tree::{self, Step};
use super::{PackReader, Repo};
use crate::core::error::{Error, Result};
use crate::export::treecopy::Progress;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteReport {
    pub backup: String,
    /// Packs deleted whole, and packs rewritten without the chunks no longer needed.
    pub packs_deleted: u64,
    pub packs_rewritten: u64,
    /// Stored bytes freed.
    pub bytes_freed: u64,
    /// Left by interrupted runs, deleted too: packs without an index, trees without a
    /// summary.
    pub leftovers: u64,
    pub millis: u64,
}

pub fn delete(repo: &Repo, id: &str, node: &str, progress: &Progress) -> Result<DeleteReport> {
    let started = std::time::Instant::now();
    crate::core::backup_url::validate_id(id)?;
    let mut lock = RepoLock::acquire(
        &repo.b,
        LockKind::Exclusive,
        node,
        &format!("delete of {id}"),
    )?;
    let result = (|| {
        let b = &repo.b;
        match repo.summary(id) {
            Ok(_) => {}
            Err(e @ (Error::NoSuchBackup(_) | Error::Invalid(_))) => return Err(e),
            // A damaged backup can still be deleted.
            Err(e) => tracing::warn!("deleting backup {id}, which is damaged: {e}"),
        }
        b.delete(&format!("backups/{id}.json"))?;
        // Format 1's tree is named after its backup; format 2's pages are shared, and go
        // below once no backup reaches them.
        b.delete(&format!("trees/{id}"))?;
        let mut report = DeleteReport {
            backup: id.to_string(),
            ..Default::default()
        };
        // What the remaining backups need. A backup whose summary or tree cannot be read
        // (damaged, or of a newer format) keeps every pack: nothing it might need is freed.
        let mut needed: HashSet<Id> = HashSet::new();
        let mut kept_trees = HashSet::new();
        let nothing_freed = |e: Error| {
            Error::Backup(format!(
                "backup {id} was deleted, but no stored data was freed: {e}"
            ))
        };
        for l in b.list("backups")? {
            let Some(other) = l.name.strip_suffix(".json") else {
                continue;
            };
            let s = repo.summary(other).map_err(nothing_freed)?;
            if s.format == 1 {
                kept_trees.insert(other.to_string());
            } else {
                kept_trees.insert(s.tree_id.hex());
            }
            tree::walk(repo, &s, |at, step| {
                lock.refresh(b)?;
                match step {
                    Step::Enter(n) => {
                        if let NodeKind::Dir { pages } = &n.kind {
                            kept_trees.extend(pages.iter().map(Id::hex));
                        }
                    }
                    Step::Leaf(n) => {
                        if let NodeKind::File { extent_pages, .. } = &n.kind {
                            kept_trees.extend(extent_pages.iter().map(Id::hex));
                        }
                        at.runs(n, |x| {
                            needed.extend(x.chunks.iter().map(|c| c.0));
                            Ok(())
                        })?;
                    }
                    Step::Leave(_) => {}
                }
                Ok(())
            })
            .map_err(nothing_freed)?;
        }
        for t in b.list("trees")? {
            if !kept_trees.contains(&t.name) {
                b.delete(&format!("trees/{}", t.name))?;
                report.leftovers += 1;
            }
        }
        let mut indexed = HashSet::new();
        let indexes = b.list("index")?;
        progress.expect(indexes.len() as u64, 0);
        for l in indexes {
            progress
                .files
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            lock.refresh(b)?;
            let Some(bytes) = b.get(&format!("index/{}", l.name), format::MAX_INDEX)? else {
                continue;
            };
            let index = match Index::decode(&bytes, &l.name) {
                Ok(i) => i,
                // Not readable: left alone (its pack may hold needed chunks).
                Err(e) => {
                    tracing::warn!("{e}; left as it is");
                    indexed.insert(l.name.clone());
                    continue;
                }
            };
            let keep: Vec<&Located> = index
                .chunks
                .iter()
                .filter(|c| needed.contains(&c.id))
                .collect();
            let pack_key = format!("packs/{}", index.pack.hex());
            if keep.len() == index.chunks.len() {
                indexed.insert(l.name.clone());
                continue;
            }
            let freed: u64 = index
                .chunks
                .iter()
                .filter(|c| !needed.contains(&c.id))
                .map(|c| u64::from(c.length))
                .sum();
            if !keep.is_empty() {
                // The needed chunks into a new pack, before the old one goes.
                let mut reader = PackReader::new(repo);
                let old = reader.pack(index.pack, index.pack_size).map_err(|e| match e {
                    super::ChunkError::Failed(e) => e,
                    super::ChunkError::Damaged(why) => Error::Backup(format!(
                        "backup {id} was deleted, but {why}: it is left as it is (run `caravan backup verify` on the other backups)"
                    )),
                })?;
                let mut data = Vec::new();
                let mut chunks = Vec::new();
                for c in &keep {
                    let start = c.offset as usize;
                    chunks.push(Located {
                        offset: data.len() as u64,
                        ..(*c).clone()
                    });
                    data.extend_from_slice(&old[start..start + c.length as usize]);
                }
                let pack = Id::of(&data);
                let new_index = Index {
                    format: format::INDEX_FORMAT,
                    pack,
                    pack_size: data.len() as u64,
                    chunks,
                };
                b.put(&format!("packs/{}", pack.hex()), Bytes::from(data))?;
                b.put(
                    &format!("index/{}", pack.hex()),
                    Bytes::from(serde_json::to_vec(&new_index).expect("an index serializes")),
                )?;
                indexed.insert(pack.hex());
                report.packs_rewritten += 1;
            } else {
                report.packs_deleted += 1;
            }
            b.delete(&format!("index/{}", l.name))?;
            b.delete(&pack_key)?;
            report.bytes_freed += freed;
        }
        for p in b.list("packs")? {
            if !indexed.contains(&p.name) {
                b.delete(&format!("packs/{}", p.name))?;
                report.leftovers += 1;
                report.bytes_freed += p.size;
            }
        }
        report.millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        Ok(report)
    })();
    lock.release(&repo.b);
    result
}
