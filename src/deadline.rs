//! The deadline of the call being served, passed down without threading it through every
//! signature: the server sets it for the task that answers one call (see
//! [`crate::daemon`]), and blocking work ([`crate::health::run_blocking`]) and the
//! operations that must not outlive their caller ([`crate::service::Service::mount`]) read
//! it.
//!
//! Why it matters: dockerd gives up on a call at its own timeout and never sends the
//! matching undo (a Mount it saw fail is never unmounted). Work that finishes after the
//! caller was answered must undo itself, and work not yet started past the deadline must
//! not start.

use std::future::Future;
use std::time::{Duration, Instant};

tokio::task_local! {
    static CALL_DEADLINE: Instant;
}

/// Runs `f` with `deadline` as the call's deadline.
pub async fn within<F: Future>(deadline: Instant, f: F) -> F::Output {
    CALL_DEADLINE.scope(deadline, f).await
}

/// The deadline of the call this task serves, if any.
pub fn current() -> Option<Instant> {
    CALL_DEADLINE.try_with(|d| *d).ok()
}

/// `limit`, shortened to what is left of the call's time.
pub fn remaining(limit: Duration) -> Duration {
    current().map_or(limit, |d| {
        limit.min(d.saturating_duration_since(Instant::now()))
    })
}

/// Whether an answer ready now could still reach the caller before its deadline, with
/// `margin` to spare for sending it.
pub fn answerable(margin: Duration) -> bool {
    current().is_none_or(|d| Instant::now() + margin < d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_deadline_is_seen_inside_and_only_inside() {
        assert!(current().is_none());
        assert!(answerable(Duration::from_secs(1000)));
        assert_eq!(remaining(Duration::from_secs(3)), Duration::from_secs(3));
        let d = Instant::now() + Duration::from_secs(2);
        within(d, async {
            assert_eq!(current(), Some(d));
            assert!(remaining(Duration::from_secs(60)) <= Duration::from_secs(2));
            assert!(answerable(Duration::from_millis(100)));
            assert!(!answerable(Duration::from_secs(3)));
        })
        .await;
    }
}
