//! How a node knows its copy of the cluster metadata is current, without the lock.
//!
//! Every commit numbers itself (the generation) past both sled's stored generation and
//! the generation hint (`.caravan/generation`, a small file every reader looks at). A
//! hold of the lock syncs its state to sled and publishes it with the range of hint
//! values it is current for; a reader compares the hint it read with that range, catches
//! up through the journal when it is a little behind, and reloads under the lock
//! otherwise (docs/semantics.md, "The metadata store"). The rules here are the numbers of
//! that protocol; the store (`cluster::store`) does the reading and writing around them.

use std::ops::RangeInclusive;

/// How far ahead of sled's generation the hint may be and still be taken as caravan's
/// own: a crash of an older version between its hint write and its commit leaves it one
/// ahead, each. Further ahead it was written by something else, is not trusted, and is
/// set back ([`set_back`]; taking it would push every later commit's number up to it: at
/// `u64::MAX`, "the generation counter is exhausted" on every node for good).
pub const TRUSTED_AHEAD: u64 = 64;

/// The most commits a reader catches up through the journal; further behind, it
/// reloads under the lock.
pub const MAX_CATCH_UP: u64 = 64;

/// Whether the lock holder takes the hint it found (`None`: not a number: garbage, an
/// empty file, a file it had to create) beside sled's generation `stored`. Not a number
/// is trusted only while nothing was ever committed.
pub fn hint_trusted(stored: u64, hint: Option<u64>) -> bool {
    match hint {
        Some(hint) => hint <= stored.saturating_add(TRUSTED_AHEAD),
        None => stored == 0,
    }
}

/// What the lock holder writes over a hint it does not trust: a number past every one a
/// reader may have taken from a trusted hint (at most [`TRUSTED_AHEAD`] past sled's), so
/// that no later commit repeats a number some node's state is already labelled with.
/// (Set back to sled's own, a hint first left ahead by a crash, then overwritten by
/// another machine, made the next commit repeat the number the crash had left, and the
/// nodes that had seen it served the state from before that commit: found by the
/// simulation, tests/sim/metadata.rs.)
pub fn set_back(stored: u64) -> u64 {
    stored.saturating_add(TRUSTED_AHEAD)
}

/// The number of the next commit: past sled's generation and the hint (a commit that
/// died after writing the hint left it ahead, and a reader that saw that number must
/// never take a later commit for one it has). `None`: the numbers are exhausted.
pub fn next_generation(stored: u64, hint: u64) -> Option<u64> {
    stored.max(hint).checked_add(1)
}

/// What a hold of the lock knows once it has read sled's generation `stored` and the
/// hint `hint` (after bringing a hint behind sled up to it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synced {
    /// The generation the state is of: sled's, or the hint's when it is ahead (the
    /// numbers between will never be commits).
    pub generation: u64,
    /// The hint values the state is current for.
    pub hints: (u64, u64),
    /// Journal numbers that will never be commits (a hint ahead of sled skipped them):
    /// whatever is stored under them must go, so no reader ever applies it.
    pub voided: RangeInclusive<u64>,
}

/// See [`Synced`].
pub fn synced(stored: u64, hint: u64) -> Synced {
    Synced {
        generation: stored.max(hint),
        hints: (hint.min(stored), hint.max(stored)),
        // Empty unless the hint is ahead.
        voided: stored.saturating_add(1)..=hint,
    }
}

/// The hint values a state committed as `generation` is current for: the hint still
/// holds a value of this hold (`hint` or the state's lower bound `low`) until the new
/// value lands, and then the commit's own.
pub fn after_commit(low: u64, hint: u64, generation: u64) -> (u64, u64) {
    (low.min(hint), generation)
}

/// Whether a state answers a reader whose hint read began at `started` and found `hint`:
/// it is current for that value (`hints`), or it was known to be the newest at or after
/// `started` (`validated`: a commit of this node, or another reader's catch-up, published
/// while the read was under way), so it has every commit acknowledged before. A state
/// never loaded answers nobody.
pub fn answers<T: Ord>(
    loaded: bool,
    hints: (u64, u64),
    validated: Option<T>,
    started: T,
    hint: u64,
) -> bool {
    loaded && ((hints.0 <= hint && hint <= hints.1) || validated.is_some_and(|v| v >= started))
}

/// The journal entries a reader at generation `base` applies to reach the hint's `hint`:
/// `None` when it is not behind, or too far behind (it reloads under the lock instead).
pub fn catch_up(base: u64, hint: u64) -> Option<RangeInclusive<u64>> {
    let behind = hint.checked_sub(base)?;
    if behind == 0 || behind >= MAX_CATCH_UP {
        return None;
    }
    Some(base + 1..=hint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_numbers_itself_past_sled_and_the_hint() {
        assert_eq!(next_generation(7, 3), Some(8));
        assert_eq!(
            next_generation(7, 9),
            Some(10),
            "a hint left ahead by a crash"
        );
        assert_eq!(next_generation(u64::MAX, 0), None);
        assert!(hint_trusted(10, Some(10 + TRUSTED_AHEAD)));
        assert!(!hint_trusted(10, Some(11 + TRUSTED_AHEAD)));
        assert!(
            !hint_trusted(10, Some(u64::MAX)),
            "a planted maximum is not believed"
        );
        assert!(!hint_trusted(10, None), "garbage, once something committed");
        assert!(hint_trusted(0, None), "a root that never committed");
        assert!(
            set_back(10) >= 10 + TRUSTED_AHEAD,
            "past every number a trusted hint could have given"
        );
    }

    #[test]
    fn a_hint_ahead_of_sled_voids_the_numbers_between() {
        let s = synced(5, 8);
        assert_eq!((s.generation, s.hints), (8, (5, 8)));
        assert_eq!(s.voided.collect::<Vec<_>>(), [6, 7, 8]);
        let s = synced(8, 5);
        assert_eq!((s.generation, s.hints), (8, (5, 8)));
        assert!(s.voided.is_empty(), "a hint behind voids nothing");
        assert_eq!(after_commit(5, 8, 9), (5, 9));
    }

    #[test]
    fn a_state_answers_its_hint_range_or_a_read_it_postdates() {
        assert!(answers(true, (5, 8), None::<u32>, 0, 6));
        assert!(!answers(true, (5, 8), None::<u32>, 0, 9), "a newer commit");
        assert!(
            answers(true, (5, 8), Some(10), 10, 9),
            "validated after the read began"
        );
        assert!(!answers(true, (5, 8), Some(9), 10, 9), "validated before");
        assert!(!answers(false, (5, 8), Some(10), 0, 6), "never loaded");
    }

    #[test]
    fn a_reader_catches_up_a_little_and_reloads_when_far_behind() {
        assert_eq!(catch_up(5, 8), Some(6..=8));
        assert_eq!(catch_up(5, 5), None);
        assert_eq!(catch_up(5, 4), None, "the hint went back: reload");
        assert_eq!(catch_up(5, 5 + MAX_CATCH_UP), None);
    }
}
