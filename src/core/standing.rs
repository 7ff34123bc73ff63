//! This node's own standing as a holder of exclusive volumes: may it act as their holder
//! now, or did it go silent long enough that another node may have taken them over?
//!
//! The rule (docs/semantics.md, "One writer, whatever fails"): a beat that lands renews
//! this node's lease for `term` (`--dead-after` less one heartbeat), counted from when its
//! write *began*. A round that starts with the last good beat older than `term`, or a beat
//! whose write landed `term` or more after the previous one began, is a **lapse**: peers
//! may have judged this node dead meanwhile. From then on it refuses to act as a holder
//! until its exclusive volumes were re-validated against a read of the store that began
//! after the lapse (the epoch says which lapse a re-validation answers).

use std::time::Duration;

use crate::core::time::Moment;

/// Why this node may not act as a holder now.
#[derive(Debug, Clone, PartialEq)]
pub enum NotHolder {
    /// A lapse; re-validation pending.
    Lapsed(Lapse),
    /// The lease ran out `silent` after the last good beat began (no lapse noted yet:
    /// the next round notes it).
    LeaseOut { silent: Duration, term: Duration },
    /// No beat has landed yet.
    NeverBeat,
}

/// A lapse of this node's lease, as first noted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Lapse {
    /// A round began `silent` after the last good beat began.
    Silent { silent: Duration },
    /// A beat landed `after` the previous good beat began.
    SlowBeat { after: Duration },
}

/// The state machine; fed with moments of this node's monotonic clock.
#[derive(Debug, Clone)]
pub struct Standing {
    term: Duration,
    /// When the last beat that landed began.
    last_beat: Option<Moment>,
    lapse: Option<Lapse>,
    /// Bumped at every lapse noted, pending or not.
    epoch: u64,
}

impl Standing {
    /// A standing with a lease of `term` per beat.
    pub fn new(term: Duration) -> Standing {
        Standing {
            term,
            last_beat: None,
            lapse: None,
            epoch: 0,
        }
    }

    pub fn term(&self) -> Duration {
        self.term
    }

    /// When the last beat that landed began.
    pub fn last_beat(&self) -> Option<Moment> {
        self.last_beat
    }

    /// A heartbeat round starts at `at`. Returns the lapse if this starts one (to log once).
    pub fn round_starts(&mut self, at: Moment) -> Option<Lapse> {
        let silent = at.since(self.last_beat?);
        if silent < self.term {
            return None;
        }
        self.note(Lapse::Silent { silent })
    }

    /// A beat whose write began at `began` landed at `landed`: renews the lease from
    /// `began`. Returns the lapse if the write itself took past the lease.
    pub fn beat_landed(&mut self, began: Moment, landed: Moment) -> Option<Lapse> {
        let previous = self.last_beat.unwrap_or(began);
        let after = landed.since(previous);
        let lapse = if after >= self.term {
            self.note(Lapse::SlowBeat { after })
        } else {
            None
        };
        // Never moved back by a beat that began earlier and landed later.
        self.last_beat = Some(self.last_beat.map_or(began, |b| b.max(began)));
        lapse
    }

    /// Notes a lapse; returns it when it starts a pending one.
    fn note(&mut self, lapse: Lapse) -> Option<Lapse> {
        self.epoch = self.epoch.saturating_add(1);
        if self.lapse.is_some() {
            return None;
        }
        self.lapse = Some(lapse);
        Some(lapse)
    }

    /// Whether this node may act as the holder of its exclusive volumes at `at`.
    pub fn may_hold(&self, at: Moment) -> Result<(), NotHolder> {
        if let Some(lapse) = self.lapse {
            return Err(NotHolder::Lapsed(lapse));
        }
        match self.last_beat {
            None => Err(NotHolder::NeverBeat),
            Some(b) if at.since(b) < self.term => Ok(()),
            Some(b) => Err(NotHolder::LeaseOut {
                silent: at.since(b),
                term: self.term,
            }),
        }
    }

    /// The pending lapse, if any.
    pub fn lapse(&self) -> Option<Lapse> {
        self.lapse
    }

    /// The epoch to hand to [`Standing::revalidated`], while a lapse is pending.
    pub fn revalidation_needed(&self) -> Option<u64> {
        self.lapse.map(|_| self.epoch)
    }

    /// The exclusive volumes were re-validated against a read of the store begun at
    /// `epoch`. Clears the lapse unless another began since; returns whether it did.
    pub fn revalidated(&mut self, epoch: u64) -> bool {
        if self.epoch == epoch && self.lapse.is_some() {
            self.lapse = None;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn at(s: u64) -> Moment {
        Moment::ZERO + SEC * u32::try_from(s).unwrap()
    }

    #[test]
    fn beats_within_the_term_keep_the_standing() {
        let mut s = Standing::new(4 * SEC);
        assert_eq!(s.may_hold(at(0)), Err(NotHolder::NeverBeat));
        for t in 0..10 {
            assert_eq!(s.round_starts(at(t)), None);
            assert_eq!(s.beat_landed(at(t), at(t)), None);
            assert_eq!(s.may_hold(at(t)), Ok(()));
        }
        assert!(matches!(
            s.may_hold(at(13)),
            Err(NotHolder::LeaseOut { .. })
        ));
    }

    #[test]
    fn a_silent_round_is_a_lapse_until_revalidated_from_after_it() {
        let mut s = Standing::new(4 * SEC);
        s.beat_landed(at(0), at(0));
        assert!(matches!(s.round_starts(at(5)), Some(Lapse::Silent { .. })));
        let epoch = s.revalidation_needed().unwrap();
        s.beat_landed(at(5), at(5));
        assert!(matches!(s.may_hold(at(5)), Err(NotHolder::Lapsed(_))));
        // A second lapse before the re-validation lands: that re-validation is too old.
        s.round_starts(at(10));
        assert_eq!(s.round_starts(at(10)), None, "logged once");
        assert!(!s.revalidated(epoch));
        // (This beat lands 5 s after the one before began: a lapse of its own.)
        s.beat_landed(at(10), at(10));
        let epoch = s.revalidation_needed().unwrap();
        assert!(s.revalidated(epoch));
        assert_eq!(s.may_hold(at(10)), Ok(()));
    }

    #[test]
    fn a_beat_that_took_past_the_term_is_a_lapse_and_renews_from_its_start() {
        let mut s = Standing::new(4 * SEC);
        s.beat_landed(at(0), at(0));
        assert!(matches!(
            s.beat_landed(at(1), at(6)),
            Some(Lapse::SlowBeat { .. })
        ));
        assert_eq!(s.last_beat(), Some(at(1)));
        // A beat that began earlier and landed later never moves the start back.
        s.revalidated(s.revalidation_needed().unwrap());
        s.beat_landed(at(2), at(2));
        s.beat_landed(at(1), at(3));
        assert_eq!(s.last_beat(), Some(at(2)));
    }
}
