//! Work this host runs in the background for a call that has returned: copies into new
//! volumes (restores, clones), snapshots, and backups, verifications and deletions of
//! backups. One table type for all of them: each job has what it works on, its progress
//! (which also carries its stop flag) and, once finished, its outcome, which callers poll
//! or wait for.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use crate::export::treecopy::Progress;

/// Finished jobs a table keeps for their callers to look at: past this many jobs, the
/// finished ones are forgotten when a new one starts.
const KEPT: usize = 256;

/// A job's outcome: `None` while it runs, then its result or why it failed.
pub type Outcome<T> = Option<std::result::Result<T, String>>;

/// One job: `what` it works on, its progress, and its outcome.
pub struct Job<W, T> {
    pub what: W,
    pub progress: Arc<Progress>,
    outcome: watch::Sender<Outcome<T>>,
}

impl<W, T: Clone> Job<W, T> {
    pub fn outcome(&self) -> Outcome<T> {
        self.outcome.borrow().clone()
    }

    pub fn running(&self) -> bool {
        self.outcome.borrow().is_none()
    }

    /// Records how it ended; callers waiting on [`Job::watch`] are woken.
    pub fn finish(&self, result: std::result::Result<T, String>) {
        self.outcome.send_replace(Some(result));
    }

    /// Its outcome as it changes (wait with `wait_for(Option::is_some)`).
    pub fn watch(&self) -> watch::Receiver<Outcome<T>> {
        self.outcome.subscribe()
    }

    /// Asks its work to stop (the copy looks at the flag between files and blocks).
    pub fn stop(&self) {
        self.progress.stop.store(true, Ordering::Relaxed);
    }
}

/// A new job, or (as the error) the one still running under its key.
pub type Started<W, T> = std::result::Result<Arc<Job<W, T>>, Arc<Job<W, T>>>;

/// The jobs of one kind, by key (a new volume's name, a snapshot, a job id).
pub struct Jobs<K, W, T> {
    table: Mutex<HashMap<K, Arc<Job<W, T>>>>,
}

impl<K: Eq + Hash, W, T: Clone> Default for Jobs<K, W, T> {
    fn default() -> Self {
        Jobs {
            table: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash, W, T: Clone> Jobs<K, W, T> {
    fn table(&self) -> MutexGuard<'_, HashMap<K, Arc<Job<W, T>>>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, key: &K) -> Option<Arc<Job<W, T>>> {
        self.table().get(key).cloned()
    }

    /// Registers a new job working on `what` under `key`, unless one is still running
    /// there: that one is returned as the error. A finished one under `key` is replaced.
    pub fn start(&self, key: K, what: W) -> Started<W, T> {
        let mut table = self.table();
        if let Some(running) = table.get(&key).filter(|j| j.running()) {
            return Err(running.clone());
        }
        if table.len() >= KEPT {
            table.retain(|_, j| j.running());
        }
        let job = Arc::new(Job {
            what,
            progress: Arc::new(Progress::default()),
            outcome: watch::channel(None).0,
        });
        table.insert(key, job.clone());
        Ok(job)
    }

    /// Forgets `job`, if it is still the one under `key`.
    pub fn remove(&self, key: &K, job: &Arc<Job<W, T>>) {
        let mut table = self.table();
        if table.get(key).is_some_and(|j| Arc::ptr_eq(j, job)) {
            table.remove(key);
        }
    }

    /// Asks every job to stop.
    pub fn stop_all(&self) {
        for job in self.table().values() {
            job.stop();
        }
    }

    /// How many are running.
    pub fn running(&self) -> usize {
        self.table().values().filter(|j| j.running()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_job_is_not_started_twice_and_a_finished_one_is_replaced() {
        let jobs: Jobs<&str, u8, u32> = Jobs::default();
        let Ok(first) = jobs.start("v", 1) else {
            panic!("a new key")
        };
        let Err(again) = jobs.start("v", 2) else {
            panic!("the first still runs")
        };
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(jobs.running(), 1);
        first.finish(Ok(7));
        assert_eq!(first.outcome(), Some(Ok(7)));
        assert_eq!(jobs.running(), 0);
        let Ok(second) = jobs.start("v", 2) else {
            panic!("the first finished")
        };
        assert_eq!(jobs.get(&"v").unwrap().what, 2);
        jobs.stop_all();
        assert!(second.progress.stop.load(Ordering::Relaxed));
        // Forgetting a job that was replaced leaves its successor.
        jobs.remove(&"v", &first);
        assert!(jobs.get(&"v").is_some());
        jobs.remove(&"v", &second);
        assert!(jobs.get(&"v").is_none());
    }

    #[test]
    fn finished_jobs_are_forgotten_once_the_table_is_full_running_ones_never() {
        let jobs: Jobs<usize, (), ()> = Jobs::default();
        for i in 0..KEPT {
            let Ok(job) = jobs.start(i, ()) else {
                panic!("a new key")
            };
            if i != 3 {
                job.finish(Ok(()));
            }
        }
        assert!(jobs.start(KEPT, ()).is_ok());
        assert!(jobs.get(&3).is_some(), "a running job is kept");
        assert!(jobs.get(&0).is_none(), "finished ones went");
        assert_eq!(jobs.running(), 2);
    }

    #[tokio::test]
    async fn a_caller_waiting_for_the_outcome_is_woken() {
        let jobs: Jobs<u8, (), String> = Jobs::default();
        let Ok(job) = jobs.start(1, ()) else {
            panic!("a new key")
        };
        let mut rx = job.watch();
        let j = job.clone();
        tokio::spawn(async move { j.finish(Err("stopped".into())) });
        let outcome = rx.wait_for(Option::is_some).await.unwrap().clone();
        assert_eq!(outcome, Some(Err("stopped".to_string())));
    }
}
