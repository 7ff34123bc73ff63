//! Disposal: after a commit that removed volumes, moving their data where `on_delete`
//! says (the trash, the archive, or left), all at once; and undoing a remove whose data
//! could not be moved.

use std::collections::BTreeMap;
use std::time::SystemTime;

use super::worker::{Decided, OpenStore, Reply, Worker};
use super::Outcome;
use crate::core::batch::AfterCommit;
use crate::core::error::Error;
use crate::core::volume::{OnDelete, VolumeRecord};

impl Worker {
    /// Runs the filesystem work that follows a commit (moving removed volumes' data, all at
    /// once) and turns the decisions into replies. A remove whose data could not be moved
    /// aside is undone (its record written back in this same hold) and fails: otherwise
    /// the next create of the name would adopt the old data.
    ///
    /// Returns the replies, and whether sled and the cache still agree (when writing a
    /// record back failed part-way they may not: the hold then ends, and the next one
    /// reopens sled and reloads).
    pub(super) fn after_commit(
        &mut self,
        open: &mut OpenStore,
        decided: Vec<Decided>,
    ) -> (Vec<Reply>, bool) {
        let mut disposals = Vec::new();
        for d in &decided {
            if let Decided::Apply(_, Ok((_, AfterCommit::Dispose(record)))) = d {
                let tag = if record.options.on_delete == OnDelete::Delete {
                    self.trash_tag += 1;
                    // Unique across nodes too: two hosts can run daemons with the same pid.
                    let nanos = SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map(|d| d.subsec_nanos())
                        .unwrap_or(0);
                    format!("{}.{}.{nanos}", std::process::id(), self.trash_tag)
                } else {
                    String::new()
                };
                disposals.push((record.clone(), tag));
            }
        }
        let moved: Vec<_> = in_parallel(&disposals, |(record, tag)| {
            self.layout.dispose_volume(record, tag)
        });
        let failed: BTreeMap<String, Option<VolumeRecord>> = disposals
            .iter()
            .zip(&moved)
            .filter(|(_, m)| m.is_err())
            .map(|((r, _), _)| (r.name.clone(), Some(r.clone())))
            .collect();
        let restored = if failed.is_empty() {
            Ok(())
        } else {
            let written = self.write(open, &failed);
            // A write-back whose fsync failed may have landed or not: this hold cannot
            // tell, so it ends and the next one reloads (see `intact` below), and the
            // remove's caller is told what is known.
            let written = match (written, self.unsure.take()) {
                (Err(e), Some(_)) => Err(Error::Store(format!(
                    "{e}; whether the record was written back is not known: `caravan inspect` shows it"
                ))),
                (w, _) => w,
            };
            written.map(|generation| self.committed(open, generation, failed.clone()))
        };
        if restored.is_err() {
            self.distrust();
        }
        let intact = restored.is_ok();
        let mut moved = moved.into_iter();
        let replies = decided
            .into_iter()
            .map(|d| match d {
                Decided::Apply(r, Ok((mut outcome, AfterCommit::Dispose(record)))) => {
                    match moved.next().expect("one result per disposal") {
                        Ok(to) => {
                            if let (Some(path), OnDelete::Delete) =
                                (&to, record.options.on_delete)
                            {
                                self.trashed.push(path.clone());
                            }
                            if let Outcome::Removed { moved_to, .. } = &mut outcome {
                                *moved_to = to;
                            }
                            Reply::Apply(r, Ok(outcome))
                        }
                        Err(e) => {
                            let name = &record.name;
                            let msg = match &restored {
                                Ok(()) => format!(
                                    "could not move the data of volume {name} aside ({e}); the volume is kept as it was: try the remove again"
                                ),
                                Err(e2) => format!(
                                    "volume {name} was removed from the metadata, but its data could not be moved aside ({e}) and the record could not be written back ({e2}); the data stays at {}: move it away by hand before creating a volume of this name again",
                                    self.layout.volume_dir(name).display()
                                ),
                            };
                            tracing::error!(volume = %name, "{msg}");
                            Reply::Apply(r, Err(Error::Store(msg)))
                        }
                    }
                }
                Decided::Apply(r, decision) => Reply::Apply(r, decision.map(|(o, _)| o)),
                Decided::Refresh(r) => Reply::Refresh(r, Ok(())),
            })
            .collect();
        (replies, intact)
    }
}

/// How many threads a batch's folder work may use at once.
const PARALLEL_IO: usize = 16;

/// `f` over every item, on up to [`PARALLEL_IO`] threads; results in the items' order.
pub(super) fn in_parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    if items.len() <= 1 {
        return items.iter().map(&f).collect();
    }
    let per_thread = items.len().div_ceil(PARALLEL_IO);
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(per_thread)
            .map(|chunk| s.spawn(|| chunk.iter().map(&f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}
