//! Timing policies: how long things wait, as functions of what was measured and what the
//! call has left. Pure, so that each bound is tested apart from the clock that feeds it.
//!
//! - a refused exclusive Mount: whether to wait for a holder that may be releasing the
//!   volume or dying, and how long ([`wait_for_holder`]);
//! - group commit: how many mutations one commit takes ([`MAX_BATCH`]), how long one hold
//!   of the cluster lock lasts ([`hold_limit`]) and lingers for more work ([`linger`]).

use std::time::Duration;

/// What a Mount that waited for a dying holder still needs once the holder is dead: the
/// takeover's commit and the bind mount.
pub const MOUNT_WORK: Duration = Duration::from_secs(1);

/// How long a Mount refused by a live, beating holder keeps trying: the Mount of a task
/// Swarm moves (a drain, a stop-first update) can reach the store a moment before the old
/// task's Unmount, which releases the volume.
pub const RELEASE_GRACE: Duration = Duration::from_secs(2);
/// The first look again; each later one waits as long as all before it (250 ms, 250 ms,
/// 500 ms, 1 s): a refusal costs few holds of the cluster lock, which every node needs.
pub const RELEASE_POLL: Duration = Duration::from_millis(250);

/// Why a refused exclusive Mount waits before trying again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HolderWait {
    /// The holder beats: it may be releasing the volume right now.
    ForRelease(Duration),
    /// The holder stopped beating and will be declared dead in time.
    ForDeath(Duration),
}

/// Whether a Mount refused by a live holder should wait and try again, and how long.
/// A holder that has missed beats (silent for three heartbeat intervals or more: a slow
/// round is not a dying host) is waited for when it would be declared dead, with two
/// rounds and the mount's own work to spare, within `left`, the time the call has; the
/// wait reaches half a round past the expected death, so that this node's next round has
/// seen it. A beating holder is given [`RELEASE_GRACE`] in all (`waited` so far) to
/// release; then the refusal is answered.
pub fn wait_for_holder(
    silent: Duration,
    dead_in: Duration,
    interval: Duration,
    left: Duration,
    waited: Duration,
) -> Option<HolderWait> {
    if silent >= interval.saturating_mul(3) {
        let wait = dead_in.saturating_add(interval / 2);
        let needed = wait
            .saturating_add(interval.saturating_mul(2))
            .saturating_add(MOUNT_WORK);
        return (needed <= left).then_some(HolderWait::ForDeath(wait));
    }
    let wait = RELEASE_POLL
        .max(waited)
        .min(RELEASE_GRACE.saturating_sub(waited));
    (!wait.is_zero() && wait + MOUNT_WORK <= left).then_some(HolderWait::ForRelease(wait))
}

/// Most mutations folded into one commit.
pub const MAX_BATCH: usize = 512;
/// Bounds of how long a hold of the cluster lock waits for more work after a commit (see
/// [`linger`]).
pub const LINGER: (Duration, Duration) = (Duration::from_millis(3), Duration::from_millis(25));
/// Shortest hold limit (see [`hold_limit`]).
pub const MIN_HOLD: Duration = Duration::from_millis(50);
/// A hold may last this many times what opening the store cost in it.
pub const HOLD_PER_OPEN: u32 = 4;

/// How long one hold of the cluster lock may last: long enough that opening the store is
/// at most a fifth of it, and never less than [`MIN_HOLD`]. On three GlusterFS hosts with 16
/// callers each, going from 2 to 4 opens' worth raised Mount from 151 to 207 ops/s and
/// Create from 95 to 108, and cut their p50 from 386/502 ms to 53/137 ms; p99 rose to
/// about a second (the other nodes wait longer for their turn).
pub fn hold_limit(open_cost: Duration) -> Duration {
    (open_cost * HOLD_PER_OPEN).max(MIN_HOLD)
}

/// How long a hold waits for more work after a commit: a quarter of what opening the
/// store cost, within [`LINGER`]. Long enough for a caller to get its answer, finish its own
/// work (a bind mount over a network filesystem takes a few round trips) and send the
/// next call; short enough that waiting costs other nodes less than the open it saves.
pub fn linger(open_cost: Duration) -> Duration {
    (open_cost / 4).clamp(LINGER.0, LINGER.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_hold_lasts_four_opens_and_lingers_a_quarter_of_one_within_bounds() {
        let ms = Duration::from_millis;
        assert_eq!(hold_limit(ms(5)), MIN_HOLD, "never shorter than the floor");
        assert_eq!(hold_limit(ms(100)), ms(400));
        assert_eq!(linger(ms(4)), LINGER.0);
        assert_eq!(linger(ms(40)), ms(10));
        assert_eq!(linger(ms(400)), LINGER.1);
    }

    #[test]
    fn a_beating_holder_is_given_a_moment_to_release_then_refused() {
        // Silent for two intervals: one slow round, not a dying host.
        let release = |ms| Some(HolderWait::ForRelease(Duration::from_millis(ms)));
        assert_eq!(
            wait_for_holder(S * 2, S * 13, S, S * 20, Duration::ZERO),
            release(250)
        );
        // Each look waits as long as all before it, and the last ends at the grace.
        let looks: Vec<_> = [0, 250, 500, 1000, 1900]
            .iter()
            .map(|ms| {
                wait_for_holder(
                    Duration::ZERO,
                    S * 15,
                    S,
                    S * 20,
                    Duration::from_millis(*ms),
                )
            })
            .collect();
        assert_eq!(
            looks,
            [
                release(250),
                release(250),
                release(500),
                release(1000),
                release(100)
            ]
        );
        assert_eq!(
            wait_for_holder(Duration::ZERO, S * 15, S, S * 20, RELEASE_GRACE),
            None
        );
        // No time left for even that.
        assert_eq!(
            wait_for_holder(Duration::ZERO, S * 15, S, S, Duration::ZERO),
            None
        );
    }

    #[test]
    fn a_silent_holder_is_waited_for_when_its_death_is_due_in_time() {
        // Silent 11 s of 15: dead in 4 s; the call has 20 s.
        assert_eq!(
            wait_for_holder(S * 11, S * 4, S, S * 20, Duration::ZERO),
            Some(HolderWait::ForDeath(S * 4 + S / 2))
        );
        // Due any moment: half a round, so the next round has seen it; and again after
        // the release grace is spent.
        assert_eq!(
            wait_for_holder(S * 15, Duration::ZERO, S, S * 4, S * 10),
            Some(HolderWait::ForDeath(S / 2))
        );
    }

    #[test]
    fn a_death_due_after_the_call_must_be_answered_is_not_waited_for() {
        // Dead in 12 s, 4.5 s left: the caller would be answered late.
        assert_eq!(
            wait_for_holder(S * 3, S * 12, S, S * 4 + S / 2, Duration::ZERO),
            None
        );
        // Just enough: 12.5 s wait, two rounds, one second of work.
        assert_eq!(
            wait_for_holder(S * 3, S * 12, S, S * 16 - S / 2, Duration::ZERO),
            Some(HolderWait::ForDeath(S * 12 + S / 2))
        );
        assert_eq!(
            wait_for_holder(S * 3, Duration::MAX, S, S * 20, Duration::ZERO),
            None
        );
    }
}
