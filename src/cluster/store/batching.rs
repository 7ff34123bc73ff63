//! Batching: which queued jobs one commit takes (group commit). How long one hold of the
//! cluster lock lasts and lingers for more is decided in `core::timing`.

use std::time::{Duration, Instant};

use super::Job;
use crate::core::timing::MAX_BATCH;

/// The first job plus whatever else is queued, up to [`MAX_BATCH`]. A `Stop` is taken out
/// and noted in `stopping`.
pub(super) fn gather(
    first: Job,
    jobs: &std::sync::mpsc::Receiver<Job>,
    stopping: &mut bool,
) -> Vec<Job> {
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match jobs.try_recv() {
            Ok(j) => batch.push(j),
            Err(_) => break,
        }
    }
    let before = batch.len();
    batch.retain(|j| !matches!(j, Job::Stop));
    *stopping |= batch.len() != before;
    batch
}

/// Inside a hold, after a commit that answered several callers: the first job plus
/// whatever arrives without a gap longer than a quarter of what the last commit cost, for
/// at most that cost (and `linger`) in all. The callers answered by one commit send their
/// next calls a little apart; taken one by one they would each pay a whole commit, taken
/// together they share one.
pub(super) fn gather_settled(
    first: Job,
    jobs: &std::sync::mpsc::Receiver<Job>,
    stopping: &mut bool,
    commit_cost: Duration,
    linger: Duration,
) -> Vec<Job> {
    let mut batch = gather(first, jobs, stopping);
    let until = Instant::now() + commit_cost.min(linger);
    let gap = commit_cost / 4;
    while batch.len() < MAX_BATCH && !*stopping {
        let wait = gap.min(until.saturating_duration_since(Instant::now()));
        if wait.is_zero() {
            break;
        }
        match jobs.recv_timeout(wait) {
            Ok(job) => batch.extend(gather(job, jobs, stopping)),
            Err(_) => break,
        }
    }
    batch
}
