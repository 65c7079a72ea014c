//! The command bus's stores on SQLite: idempotency keys and the audit log, in the same
//! file (and on the same connections) as the events.

mod audit;
mod idempotency;

pub use audit::SqliteAuditStore;
pub use idempotency::SqliteIdempotencyStore;

use std::future::Future;
use std::pin::Pin;

use mink_es::BoxError;

use crate::error::context;

/// The future type of the `mink_es::command` store traits (`futures::future::BoxFuture`).
type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The clock both stores (and [`crate::SqliteOutboxStore`]) decide by, in unix
/// microseconds: the host's wall clock.
///
/// Every expiry decision of [`SqliteIdempotencyStore`] and every lease decision of
/// the outbox reads the time here, once per operation and after taking the write
/// lock. Every process sharing the file runs on the same host (SQLite's WAL mode does
/// not work over network file systems), so they all share this clock.
pub(crate) fn now_micros() -> i64 {
    mink_es::now_micros().timestamp_micros()
}

/// `now + ttl`, rounded up to a whole microsecond (so that a non-zero time-to-live
/// never expires at once), saturating at the end of time.
pub(crate) fn deadline(now: i64, ttl: std::time::Duration) -> i64 {
    let micros = i64::try_from(ttl.as_nanos().div_ceil(1000)).unwrap_or(i64::MAX);
    now.saturating_add(micros)
}

/// Turns a store error into the trait's [`BoxError`], saying what failed.
fn boxed(e: mink_es::Error, what: impl FnOnce() -> String) -> BoxError {
    Box::new(context(e, what))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn deadlines_round_up_and_saturate() {
        assert_eq!(deadline(10, Duration::ZERO), 10);
        assert_eq!(deadline(10, Duration::from_nanos(1)), 11);
        assert_eq!(deadline(10, Duration::from_micros(5)), 15);
        assert_eq!(deadline(10, Duration::from_millis(2)), 2_010);
        assert_eq!(deadline(10, Duration::MAX), i64::MAX);
        assert_eq!(deadline(i64::MAX - 1, Duration::from_secs(1)), i64::MAX);
        assert_eq!(deadline(-5, Duration::from_micros(5)), 0);
    }
}
