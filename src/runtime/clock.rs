//! The host's monotonic clock as the core's [`Clock`]: readings are the time since this
//! process first read it.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::core::time::{Clock, Moment};

/// `CLOCK_MONOTONIC` (through [`Instant`]), as [`Moment`]s.
#[derive(Debug, Clone, Copy, Default)]
pub struct Monotonic;

impl Clock for Monotonic {
    fn now(&self) -> Moment {
        moment(Instant::now())
    }
}

/// The reading of an [`Instant`] taken in this process.
pub fn moment(at: Instant) -> Moment {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    // Set back as far as the clock allows (up to a day), so that instants taken before
    // the first reading still read as distinct moments.
    let origin = *ORIGIN.get_or_init(|| {
        let now = Instant::now();
        [86_400, 3_600, 60, 1]
            .into_iter()
            .find_map(|s| now.checked_sub(std::time::Duration::from_secs(s)))
            .unwrap_or(now)
    });
    Moment::from_origin(at.saturating_duration_since(origin))
}

/// The host's wall clock in Unix seconds, for what is only shown to people (when a volume
/// was created); 0 if the clock is before 1970. Never compared across hosts.
pub fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
