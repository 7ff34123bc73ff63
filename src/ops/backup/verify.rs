//! Verifying a backup: its summary, its tree and every chunk it needs read back from the
//! destination and checked against their hashes; the files whose data is damaged or
//! missing are named.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use super::format::Id;
use super::lock::{LockKind, RepoLock};
use super::tree::{self, Step};
use super::{ChunkError, PackReader, Repo};
use crate::core::error::{Error, Result};
use crate::export::treecopy::Progress;

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
        let chunks = repo.chunks()?;
        // Each chunk needed, once (a chunk shared by many files is read once): the tree is
        // walked a first time for them, and again, if any is damaged, to name the files.
        let mut needs: HashMap<Id, u32> = HashMap::new();
        tree::walk(repo, &summary, |at, step| {
            if progress.stop.load(Ordering::Relaxed) {
                return Err(Error::Stopped("verification"));
            }
            if let Step::Leaf(n) = step {
                at.runs(n, |x| {
                    for (c, size) in &x.chunks {
                        needs.insert(*c, *size);
                    }
                    Ok(())
                })?;
            }
            Ok(())
        })?;
        // Counted in bytes only: chunks are read in pack order, not file by file.
        progress.expect(0, needs.values().map(|s| u64::from(*s)).sum());
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
        let mut bad: HashMap<Id, String> = HashMap::new();
        let mut packs = BTreeSet::new();
        for (pack, _, c) in order {
            if progress.stop.load(Ordering::Relaxed) {
                return Err(Error::Stopped("verification"));
            }
            let size = needs[&c];
            match reader.chunk(&chunks, c, size) {
                Ok(_) => {
                    report.chunks += 1;
                    report.bytes += u64::from(size);
                    packs.insert(pack);
                }
                Err(ChunkError::Damaged(why)) => {
                    bad.insert(c, why);
                }
                Err(ChunkError::Failed(e)) => return Err(e),
            }
            progress.bytes.fetch_add(u64::from(size), Ordering::Relaxed);
            lock.refresh(&repo.b)?;
        }
        report.packs = packs.len() as u64;
        if !bad.is_empty() {
            tree::walk(repo, &summary, |at, step| {
                if let Step::Leaf(n) = step {
                    let mut why = None;
                    at.runs(n, |x| {
                        if why.is_none() {
                            why = x.chunks.iter().find_map(|(c, _)| bad.get(c).cloned());
                        }
                        Ok(())
                    })?;
                    if let Some(reason) = why {
                        report.damaged_files += 1;
                        if report.damaged.len() < MAX_SHOWN {
                            report.damaged.push(Damage {
                                path: at.path_of(n),
                                reason,
                            });
                        }
                    }
                }
                Ok(())
            })?;
        }
        report.millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        Ok(report)
    })();
    lock.release(&repo.b);
    result
}
