//! Time as the core sees it: readings of a monotonic clock, handed in by the shell.
//!
//! The core never reads a clock: every rule takes the [`Moment`] it is judged at, so the
//! simulation (tests/sim/) runs the same rules on virtual time, and a test replays them
//! exactly.

use std::ops::{Add, Sub};
use std::time::Duration;

/// A reading of one host's monotonic clock: the time since an origin that clock chose.
/// Only differences of readings of the same clock mean anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Moment(Duration);

impl Moment {
    pub const ZERO: Moment = Moment(Duration::ZERO);

    /// The reading `since_origin` after the clock's origin.
    pub const fn from_origin(since_origin: Duration) -> Moment {
        Moment(since_origin)
    }

    pub const fn since_origin(self) -> Duration {
        self.0
    }

    /// Time from `earlier` to this reading; zero if `earlier` is later.
    pub fn since(self, earlier: Moment) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl Add<Duration> for Moment {
    type Output = Moment;
    /// Saturates: a reading never wraps.
    fn add(self, d: Duration) -> Moment {
        Moment(self.0.saturating_add(d))
    }
}

impl Sub<Duration> for Moment {
    type Output = Moment;
    /// Saturates at the origin.
    fn sub(self, d: Duration) -> Moment {
        Moment(self.0.saturating_sub(d))
    }
}

/// Where the shell's readings come from: the host's monotonic clock in the daemon
/// (`crate::runtime::clock::Monotonic`), virtual time in the simulation.
pub trait Clock {
    fn now(&self) -> Moment;
}
