//! Who is using a backup destination: backups and restores share it, a delete needs it
//! alone (it frees chunks, which a running backup may be counting on).
//!
//! A user writes `locks/<id>.json`, then lists `locks/`: a shared user backs off if it
//! sees an exclusive lock, an exclusive one if it sees any other. Both write before they
//! look, so of two that start together at least one sees the other (the stores here are
//! read-after-write consistent). A lock is rewritten every [`REFRESH`]; one not rewritten
//! for [`STALE`] belongs to a user that died and is ignored. Its age is judged by the
//! destination's own clock (the lock's last-modified time against that of the lock just
//! written), never by comparing hosts' clocks.

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::dest::Backend;
use crate::core::error::{Error, Result};

pub const REFRESH: Duration = Duration::from_secs(5 * 60);
pub const STALE: Duration = Duration::from_secs(30 * 60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockKind {
    Shared,
    Exclusive,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LockFile {
    kind: LockKind,
    node: String,
    pid: u32,
    /// What it is for ("backup of web", "delete of …").
    purpose: String,
}

/// A lock held on a destination; released by [`RepoLock::release`] (or left to go stale
/// if the holder dies).
pub struct RepoLock {
    key: String,
    body: Bytes,
    written: Instant,
}

/// Why a lock was refused, for the decision below.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Granted,
    Refused { by: usize },
}

/// The pure rule: with `others` (kind, age by the destination's clock) seen after writing
/// one's own lock of `kind`, may one go on?
pub fn judge(kind: LockKind, others: &[(LockKind, Duration)]) -> Verdict {
    for (i, (k, age)) in others.iter().enumerate() {
        if *age >= STALE {
            continue;
        }
        if kind == LockKind::Exclusive || *k == LockKind::Exclusive {
            return Verdict::Refused { by: i };
        }
    }
    Verdict::Granted
}

impl RepoLock {
    pub fn acquire(b: &Backend, kind: LockKind, node: &str, purpose: &str) -> Result<RepoLock> {
        let id = format!(
            "{}-{}-{}",
            node.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_"),
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        let key = format!("locks/{id}.json");
        let body = Bytes::from(
            serde_json::to_vec(&LockFile {
                kind,
                node: node.to_string(),
                pid: std::process::id(),
                purpose: purpose.to_string(),
            })
            .expect("a lock serializes"),
        );
        b.put(&key, body.clone())?;
        let lock = RepoLock {
            key: key.clone(),
            body,
            written: Instant::now(),
        };
        let listed = b.list("locks")?;
        let now = listed
            .iter()
            .find(|l| format!("locks/{}", l.name) == key)
            .and_then(|l| l.modified);
        let mut others = Vec::new();
        let mut about = Vec::new();
        for l in listed.iter().filter(|l| format!("locks/{}", l.name) != key) {
            let age = match (now, l.modified) {
                (Some(n), Some(m)) => n.duration_since(m).unwrap_or(Duration::ZERO),
                _ => Duration::ZERO,
            };
            let seen: Option<LockFile> = b
                .get(&format!("locks/{}", l.name), 64 << 10)
                .ok()
                .flatten()
                .and_then(|v| serde_json::from_slice(&v).ok());
            // A lock that cannot be read is taken for an exclusive one: the safe side.
            let k = seen.as_ref().map_or(LockKind::Exclusive, |s| s.kind);
            others.push((k, age));
            about.push((l.name.clone(), seen));
        }
        match judge(kind, &others) {
            Verdict::Granted => Ok(lock),
            Verdict::Refused { by } => {
                let _ = b.delete(&key);
                let (name, seen) = &about[by];
                let who = seen.as_ref().map_or_else(
                    || "an unreadable lock".to_string(),
                    |s| format!("{} (process {} on {})", s.purpose, s.pid, s.node),
                );
                Err(Error::Busy(format!(
                    "the backup destination {} is in use by {who}; try again when that is done (a lock left by a host that died lapses after {} minutes: locks/{name})",
                    b.url(),
                    STALE.as_secs() / 60
                )))
            }
        }
    }

    /// Rewrites the lock when it is due, so that it does not go stale while in use.
    pub fn refresh(&mut self, b: &Backend) -> Result<()> {
        if self.written.elapsed() >= REFRESH {
            b.put(&self.key, self.body.clone())?;
            self.written = Instant::now();
        }
        Ok(())
    }

    pub fn release(self, b: &Backend) {
        if let Err(e) = b.delete(&self.key) {
            tracing::warn!("releasing the backup destination's lock: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use LockKind::*;

    #[test]
    fn shared_users_share_and_an_exclusive_one_is_alone() {
        let fresh = Duration::from_secs(1);
        assert_eq!(judge(Shared, &[]), Verdict::Granted);
        assert_eq!(judge(Shared, &[(Shared, fresh)]), Verdict::Granted);
        assert_eq!(
            judge(Shared, &[(Shared, fresh), (Exclusive, fresh)]),
            Verdict::Refused { by: 1 }
        );
        assert_eq!(
            judge(Exclusive, &[(Shared, fresh)]),
            Verdict::Refused { by: 0 }
        );
        assert_eq!(judge(Exclusive, &[]), Verdict::Granted);
        // A lock not rewritten for STALE is a dead user's.
        assert_eq!(judge(Exclusive, &[(Shared, STALE)]), Verdict::Granted);
        assert_eq!(
            judge(Shared, &[(Exclusive, STALE + fresh)]),
            Verdict::Granted
        );
    }
}
