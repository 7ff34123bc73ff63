//! Batching: which queued jobs one commit takes, and how long one hold of the cluster lock
//! lasts and lingers for more (group commit; the figures behind each bound are in the
//! comments).

use std::time::{Duration, Instant};

use super::Job;

/// Most mutations folded into one commit.
const MAX_BATCH: usize = 512;
/// Bounds of how long a hold of the cluster lock waits for more work after a commit (see
/// [`linger`]).
const LINGER: (Duration, Duration) = (Duration::from_millis(3), Duration::from_millis(25));
/// Shortest hold limit (see [`hold_limit`]).
const MIN_HOLD: Duration = Duration::from_millis(50);
/// A hold may last this many times what opening sled cost in it.
const HOLD_PER_OPEN: u32 = 4;

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

/// How long one hold of the cluster lock may last: long enough that opening sled is at
/// most a fifth of it, and never less than [`MIN_HOLD`]. On three GlusterFS hosts with 16
/// callers each, going from 2 to 4 opens' worth raised Mount from 151 to 207 ops/s and
/// Create from 95 to 108, and cut their p50 from 386/502 ms to 53/137 ms; p99 rose to
/// about a second (the other nodes wait longer for their turn).
pub(super) fn hold_limit(open_cost: Duration) -> Duration {
    (open_cost * HOLD_PER_OPEN).max(MIN_HOLD)
}

/// How long a hold waits for more work after a commit: a quarter of what opening sled
/// cost, within [`LINGER`]. Long enough for a caller to get its answer, finish its own
/// work (a bind mount over a network filesystem takes a few round trips) and send the
/// next call; short enough that waiting costs other nodes less than the open it saves.
pub(super) fn linger(open_cost: Duration) -> Duration {
    (open_cost / 4).clamp(LINGER.0, LINGER.1)
}
