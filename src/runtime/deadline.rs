//! Deadlines: the one place where work is bounded in time.
//!
//! - [`serve`] runs one call in its own task with its deadline, and answers a timeout
//!   error at the deadline (the server's calls, see [`crate::api::server`]);
//! - [`blocking`] runs blocking work on the export off the async threads, waiting at most
//!   its limit *and* what is left of the call being served;
//! - [`unbounded`] runs blocking work whose length is its nature (a copy, a backup, a
//!   job's cleanup, the store's stop at shutdown) off the async threads and waits for its
//!   end: such work stops through its own flag, not a deadline. These two are the only
//!   ways blocking work leaves the async threads (`tests/layers.rs` checks it).
//! - [`current`], [`remaining`] and [`answerable`] let an operation that must not outlive
//!   its caller ([`crate::ops::service::Service::mount`]) see the deadline, which is passed
//!   down as a task-local instead of through every signature.
//!
//! Why it matters: dockerd gives up on a call at its own timeout and never sends the
//! matching undo (a Mount it saw fail is never unmounted). Work that finishes after the
//! caller was answered must undo itself, and work not yet started past the deadline must
//! not start.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::core::error::{Error, Result};

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

/// Runs blocking work on the export off the async threads, waiting for it at most
/// `limit`. Work that is still blocked then (a stalled export) keeps its thread until the
/// export answers; the caller gets a timeout error and goes on.
pub async fn blocking<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    // Never longer than the call being served has left.
    let limit = remaining(limit);
    match tokio::time::timeout(limit, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(Error::Internal(format!("{what}: {e}"))),
        Err(_) => Err(Error::Timeout {
            what: what.to_string(),
            after: limit,
        }),
    }
}

/// Runs blocking work off the async threads and waits for it to end, however long that
/// takes (see the module's list: work stopped by its own flag, not by a deadline). A
/// panic in it comes back as [`Error::Internal`].
pub async fn unbounded<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("{what}: {e}")))
}

/// Runs a call in its own task, so that it completes (and leaves consistent state) even if
/// its answer comes too late, and answers an error at the deadline.
pub async fn serve<T: Send + 'static>(
    timeout: Duration,
    what: &str,
    fut: impl Future<Output = T> + Send + 'static,
) -> Result<T> {
    // The task knows its deadline: work it passes down gets only the time left, and a
    // Mount that finishes too late takes itself back.
    let deadline = std::time::Instant::now() + timeout;
    let task = tokio::spawn(within(deadline, fut));
    match tokio::time::timeout_at(deadline.into(), task).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Error::Internal(format!("{what}: {e}"))),
        Err(_) => Err(Error::Timeout {
            what: what.to_string(),
            after: timeout,
        }),
    }
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
