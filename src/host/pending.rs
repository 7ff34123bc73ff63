//! Unmounts that could not be committed yet (the export was stalled or unreachable),
//! recorded on this node so that they are never lost.
//!
//! dockerd sends an Unmount once: if it fails, the engine goes on as if it had worked and
//! never sends it again. Left uncommitted, the mount ID would stay counted forever and the
//! volume could never be removed (or an exclusive one released). So a failed Unmount is
//! written to `<state-dir>/pending-unmounts.json` (node-local), retried in the background
//! until the export answers, and replayed at the next start if the daemon stopped first.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::core::error::{Error, IoContext, Result};
use crate::core::names::{validate_mount_id, validate_name};
use crate::export::layout::write_atomically;

/// More than this many recorded unmounts means something else is wrong; the file is
/// bounded like every file the daemon reads.
const MAX_PENDING: usize = 65_536;
const MAX_FILE_BYTES: u64 = 16 << 20;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PendingUnmount {
    pub name: String,
    pub id: String,
    /// Taking back a Mount whose outcome was uncertain (not an Unmount dockerd sent): a
    /// later Mount of the same ID that succeeds cancels it (see [`PendingUnmounts::cancel_take_backs`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub take_back: bool,
}

/// The recorded unmounts and their file.
pub struct PendingUnmounts {
    file: PathBuf,
    set: Mutex<BTreeSet<PendingUnmount>>,
}

impl PendingUnmounts {
    /// Loads the file (missing: none pending). Entries that are not a valid name and ID
    /// are dropped with a warning; a file that does not parse is kept aside, not fatal.
    pub fn load(file: PathBuf) -> PendingUnmounts {
        let set = match read(&file) {
            Ok(list) => list
                .into_iter()
                .filter(|p| {
                    let ok = validate_name(&p.name).is_ok() && validate_mount_id(&p.id).is_ok();
                    if !ok {
                        tracing::warn!(file = %file.display(), "ignoring a recorded unmount with an invalid name or ID");
                    }
                    ok
                })
                .take(MAX_PENDING)
                .collect(),
            Err(e) => {
                tracing::error!("{e}; recorded unmounts in it are not replayed");
                BTreeSet::new()
            }
        };
        PendingUnmounts {
            file,
            set: Mutex::new(set),
        }
    }

    pub fn file(&self) -> &std::path::Path {
        &self.file
    }

    fn set(&self) -> std::sync::MutexGuard<'_, BTreeSet<PendingUnmount>> {
        self.set.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn list(&self) -> Vec<PendingUnmount> {
        self.set().iter().cloned().collect()
    }

    pub fn contains(&self, p: &PendingUnmount) -> bool {
        self.set().contains(p)
    }

    /// Records one, durably, before the caller is answered.
    pub fn add(&self, p: PendingUnmount) -> Result<()> {
        let mut set = self.set();
        if set.len() >= MAX_PENDING {
            return Err(Error::invalid(format!(
                "{} already records {MAX_PENDING} unmounts; the export has not answered for a long time",
                self.file.display()
            )));
        }
        set.insert(p);
        self.persist(&set)
    }

    /// A Mount of (`name`, `id`) just succeeded: take-backs of earlier attempts with that
    /// ID must not run after it. dockerd retries a failed Mount with the same ID; a
    /// take-back applied after the retry succeeded could remove the retry's count (when
    /// the earlier attempt never landed) and leave a live mount uncounted, which a remove
    /// elsewhere would then delete. Cancelled, the worst case is one extra count (the
    /// earlier attempt did land), which keeps the volume from removal but loses nothing.
    pub fn cancel_take_backs(&self, name: &str, id: &str) {
        let mut set = self.set();
        let before = set.len();
        set.retain(|p| !(p.take_back && p.name == name && p.id == id));
        if set.len() != before {
            tracing::info!(volume = %name, id, "a Mount with this ID succeeded: the take-back of an earlier attempt is cancelled");
            if let Err(e) = self.persist(&set) {
                tracing::warn!("{e}");
            }
        }
    }

    pub fn remove(&self, p: &PendingUnmount) {
        let mut set = self.set();
        if set.remove(p) {
            if let Err(e) = self.persist(&set) {
                tracing::warn!("{e}");
            }
        }
    }

    fn persist(&self, set: &BTreeSet<PendingUnmount>) -> Result<()> {
        let list: Vec<&PendingUnmount> = set.iter().collect();
        let bytes = serde_json::to_vec_pretty(&list)
            .map_err(|e| Error::Store(format!("encoding the recorded unmounts: {e}")))?;
        write_atomically(&self.file, &bytes)
    }
}

fn read(file: &std::path::Path) -> Result<Vec<PendingUnmount>> {
    let meta = match std::fs::symlink_metadata(file) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("reading {}", file.display()), e)),
    };
    if !meta.is_file() || meta.len() > MAX_FILE_BYTES {
        return Err(Error::invalid(format!(
            "{} is not a regular file of at most {MAX_FILE_BYTES} bytes",
            file.display()
        )));
    }
    let bytes = std::fs::read(file).ctx(|| format!("reading {}", file.display()))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::invalid(format!("{} does not parse: {e}", file.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_unmounts_survive_a_restart_and_bad_entries_are_dropped() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("pending-unmounts.json");
        let p = PendingUnmounts::load(file.clone());
        assert!(p.list().is_empty());
        let one = PendingUnmount {
            name: "web".into(),
            id: "abc".into(),
            take_back: false,
        };
        p.add(one.clone()).unwrap();
        let again = PendingUnmounts::load(file.clone());
        assert_eq!(again.list(), vec![one.clone()]);
        again.remove(&one);
        assert!(PendingUnmounts::load(file.clone()).list().is_empty());
        // A take-back is cancelled by a later successful Mount of its ID; an Unmount is not.
        let back = PendingUnmount {
            take_back: true,
            ..one.clone()
        };
        again.add(back.clone()).unwrap();
        again.add(one.clone()).unwrap();
        again.cancel_take_backs("web", "abc");
        assert_eq!(
            PendingUnmounts::load(file.clone()).list(),
            vec![one.clone()]
        );
        again.remove(&one);
        std::fs::write(
            &file,
            r#"[{"name":"../x","id":"a"},{"name":"ok","id":"b"}]"#,
        )
        .unwrap();
        let loaded = PendingUnmounts::load(file.clone());
        assert_eq!(loaded.list().len(), 1);
        std::fs::write(&file, "not json").unwrap();
        assert!(PendingUnmounts::load(file).list().is_empty(), "not fatal");
    }
}
