//! Deleting what removes put in the trash, off the store thread and outside the lock.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::export::layout::SharedLayout;

/// Starts the thread that deletes what removes put in the trash: first whatever is there
/// (a crash after a remove, on any node), then what this node's removes send it. Deleting
/// a volume's data can take long (one round trip per file on a network filesystem), so it
/// never runs under the lock or in the store thread, where it would hold up every commit.
/// Each node deletes only its own entries after that: janitors of three nodes reading and
/// deleting the same folder would triple the work on the export. See [`Janitor`] for when.
pub(super) fn start_janitor(layout: SharedLayout) -> Option<std::sync::mpsc::Sender<Vec<PathBuf>>> {
    let (send, trashed) = std::sync::mpsc::channel::<Vec<PathBuf>>();
    let spawned = std::thread::Builder::new()
        .name("caravan-janitor".into())
        .spawn(move || {
            match layout.pinned() {
                Ok(pinned) => {
                    if let Err(e) = pinned.empty_trash() {
                        tracing::warn!("emptying the trash: {e}");
                    }
                }
                Err(e) => tracing::error!("not emptying the trash: {e}"),
            }
            Janitor::default().run(&layout, &trashed);
        });
    match spawned {
        Ok(_) => Some(send),
        Err(e) => {
            tracing::warn!(
                "could not start the trash janitor, removed data stays in the trash: {e}"
            );
            None
        }
    }
}

/// While removes keep coming, the janitor waits: deleting a volume's folder is about as
/// much work on the export as creating one, and on a network filesystem it competes with
/// the removes themselves (three GlusterFS hosts x 16 clients: Remove 115 -> 184 ops/s
/// and a create-mount-unmount-remove mix 160 -> 228 ops/s without it). It deletes once
/// no remove came for [`JANITOR_IDLE`], and never lets more than [`JANITOR_BACKLOG`]
/// entries or entries older than [`JANITOR_MAX_AGE`] wait, so under a steady stream of
/// removes it keeps pace with them.
#[derive(Default)]
struct Janitor {
    backlog: std::collections::VecDeque<(Instant, PathBuf)>,
    last_arrival: Option<Instant>,
}

const JANITOR_IDLE: Duration = Duration::from_secs(1);
const JANITOR_BACKLOG: usize = 256;
const JANITOR_MAX_AGE: Duration = Duration::from_secs(30);

impl Janitor {
    /// Ends when the store thread drops its sender; what is left stays in the trash for
    /// the next start (which empties the whole trash).
    fn run(mut self, layout: &SharedLayout, trashed: &std::sync::mpsc::Receiver<Vec<PathBuf>>) {
        use std::sync::mpsc::RecvTimeoutError;
        loop {
            // One round of deletions reaches the trash through one open handle, opened
            // without following links: a trash replaced by a link is never emptied.
            let round = match self.due().then(|| layout.pinned()) {
                Some(Err(e)) => {
                    tracing::error!("not emptying the trash: {e}");
                    match trashed.recv_timeout(JANITOR_IDLE) {
                        Ok(paths) => self.arrived(paths),
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                    continue;
                }
                Some(Ok(round)) => Some(round),
                None => None,
            };
            if let Some(round) = round {
                while self.due() {
                    let (_, path) = self.backlog.pop_front().expect("due implies an entry");
                    if let Err(e) = round.remove_tree(&path) {
                        tracing::warn!("emptying the trash: {e}");
                    }
                    match trashed.try_recv() {
                        Ok(paths) => self.arrived(paths),
                        Err(std::sync::mpsc::TryRecvError::Empty) => {}
                        Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
                    }
                }
            }
            let next = match self.until_due() {
                None => trashed.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(wait) => trashed.recv_timeout(wait),
            };
            match next {
                Ok(paths) => self.arrived(paths),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn arrived(&mut self, paths: Vec<PathBuf>) {
        let now = Instant::now();
        self.last_arrival = Some(now);
        self.backlog.extend(paths.into_iter().map(|p| (now, p)));
    }

    fn due(&self) -> bool {
        self.until_due() == Some(Duration::ZERO)
    }

    /// How long until the oldest entry should be deleted; `None` when there is none.
    fn until_due(&self) -> Option<Duration> {
        let (queued_at, _) = self.backlog.front()?;
        if self.backlog.len() > JANITOR_BACKLOG {
            return Some(Duration::ZERO);
        }
        let idle =
            JANITOR_IDLE.saturating_sub(self.last_arrival.map_or(JANITOR_IDLE, |t| t.elapsed()));
        let age = JANITOR_MAX_AGE.saturating_sub(queued_at.elapsed());
        Some(idle.min(age))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_janitor_waits_while_removes_come_but_not_past_its_backlog() {
        let mut j = Janitor::default();
        assert_eq!(j.until_due(), None, "nothing to delete");
        j.arrived(vec![PathBuf::from("/trash/a")]);
        let wait = j.until_due().unwrap();
        assert!(
            wait > Duration::from_millis(900) && wait <= JANITOR_IDLE,
            "{wait:?}"
        );
        j.arrived(
            (0..JANITOR_BACKLOG)
                .map(|i| PathBuf::from(format!("/trash/{i}")))
                .collect(),
        );
        assert!(
            j.due(),
            "over the backlog: delete now, even while removes keep coming"
        );
        j.backlog.truncate(1);
        j.last_arrival = Some(Instant::now() - JANITOR_IDLE);
        assert!(j.due(), "no remove for a second: delete");
    }
}
