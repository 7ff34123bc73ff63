//! Verifying a backup: its summary, its tree and every chunk it needs read back from the
//! destination and checked against their hashes; the files whose data is damaged or
//! missing are named.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use super::format::{Id, Kind};
use super::lock::{LockKind, RepoLock};
use super::{ChunkError, PackReader, Repo};
use crate::error::{Error, Result};
use crate::treecopy::{Progress, STOPPED};

/// A file that cannot be restored as it was backed up, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Damage {
    pub path: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub backup: String,
    pub chunks: u64,
    pub bytes: u64,
    pub packs: u64,
    /// Damaged files, at most [`MAX_SHOWN`] of them (and how many in all).
    pub damaged: Vec<Damage>,
    pub damaged_files: u64,
    pub millis: u64,
}

pub const MAX_SHOWN: usize = 100;

/// Checks backup `id`: every chunk it needs is read back and checked. The report names the
/// damaged files; an error is a backup whose tree itself cannot be read.
pub fn verify(repo: &Repo, id: &str, node: &str, progress: &Progress) -> Result<VerifyReport> {
    let started = std::time::Instant::now();
    let mut lock = RepoLock::acquire(&repo.b, LockKind::Shared, node, &format!("verify of {id}"))?;
    let result = (|| {
        let summary = repo.summary(id)?;
        let tree = repo.tree(&summary)?;
        let chunks = repo.chunks()?;
        // Each chunk needed, with the files that need it (a chunk shared by many files is
        // read once).
        let mut needs: BTreeMap<Id, (u32, Vec<usize>)> = BTreeMap::new();
        for (i, e) in tree.entries.iter().enumerate() {
            if let Kind::File { extents, .. } = &e.kind {
                for (c, size) in extents.iter().flat_map(|x| x.chunks.iter()) {
                    let n = needs.entry(*c).or_insert((*size, Vec::new()));
                    if n.1.last() != Some(&i) {
                        n.1.push(i);
                    }
                }
            }
        }
        // Counted in bytes only: chunks are read in pack order, not file by file.
        progress.expect(0, needs.values().map(|(s, _)| u64::from(*s)).sum());
        // In pack order, so that each pack is read once.
        let mut order: Vec<(Id, u64, Id)> = needs
            .keys()
            .map(|c| match chunks.get(c) {
                Some(at) => (at.pack, at.at.offset, *c),
                None => (Id([0; 32]), 0, *c),
            })
            .collect();
        order.sort();
        let mut reader = PackReader::new(repo);
        let mut report = VerifyReport {
            backup: id.to_string(),
            ..Default::default()
        };
        let mut damaged: BTreeMap<usize, String> = BTreeMap::new();
        let mut packs = BTreeSet::new();
        for (pack, _, c) in order {
            if progress.stop.load(Ordering::Relaxed) {
                return Err(Error::Backup(STOPPED.replace("copy", "verification")));
            }
            let (size, files) = &needs[&c];
            match reader.chunk(&chunks, c, *size) {
                Ok(_) => {
                    report.chunks += 1;
                    report.bytes += u64::from(*size);
                    packs.insert(pack);
                }
                Err(ChunkError::Damaged(why)) => {
                    for f in files {
                        damaged.entry(*f).or_insert_with(|| why.clone());
                    }
                }
                Err(ChunkError::Failed(e)) => return Err(e),
            }
            progress
                .bytes
                .fetch_add(u64::from(*size), Ordering::Relaxed);
            lock.refresh(&repo.b)?;
        }
        report.packs = packs.len() as u64;
        report.damaged_files = damaged.len() as u64;
        report.damaged = damaged
            .into_iter()
            .take(MAX_SHOWN)
            .map(|(i, reason)| Damage {
                path: tree.path_of(i),
                reason,
            })
            .collect();
        report.millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        Ok(report)
    })();
    lock.release(&repo.b);
    result
}
