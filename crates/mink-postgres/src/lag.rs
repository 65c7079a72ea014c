//! The feed's lag, for operators.

use std::time::Duration;

use mink_es::Result;
use sqlx::Row;

use crate::PgEventStore;
use crate::row::Xid8;
use crate::time::PgTime;

/// How far the feed lags behind committed events, and who holds it back.
///
/// The feed only returns events of transactions below its *horizon*: the oldest
/// transaction id still running anywhere in the cluster. Committed events of younger
/// transactions wait until every older writer has finished. A healthy store shows a
/// `waiting_events` count that drains within milliseconds; a growing
/// `oldest_waiting_age` means a long writing transaction (see `oldest_writer` and
/// `oldest_prepared`) is holding the feed.
///
/// Suggested alerts: `oldest_waiting_age` above a few seconds, and
/// `oldest_writer.age` above the longest transaction the application should run.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct FeedLag {
    /// The horizon: events of transactions with a lower id can be read.
    pub horizon: u64,
    /// The cluster's next transaction id. `next_transaction - horizon` is the window
    /// of transactions whose events may be waiting.
    pub next_transaction: u64,
    /// Committed events the feed cannot return yet.
    pub waiting_events: u64,
    /// How long the oldest of those has waited since it was recorded.
    pub oldest_waiting_age: Option<Duration>,
    /// The oldest running transaction that holds a transaction id (one that writes),
    /// in any database of the cluster, if this role may see it (sessions of other
    /// roles need `pg_read_all_stats`).
    pub oldest_writer: Option<Writer>,
    /// The oldest prepared (two-phase) transaction; it holds the horizon until it is
    /// committed or rolled back.
    pub oldest_prepared: Option<PreparedTransaction>,
}

/// A running transaction that holds a transaction id.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Writer {
    /// The server process id (for `pg_terminate_backend`).
    pub pid: i32,
    /// Its database.
    pub database: Option<String>,
    /// Its state (`active`, `idle in transaction`, …).
    pub state: Option<String>,
    /// Its 32-bit transaction id, as shown by `pg_stat_activity`.
    pub transaction_id: Option<u64>,
    /// How long its transaction has run.
    pub age: Option<Duration>,
}

/// A prepared transaction.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct PreparedTransaction {
    /// Its global id.
    pub gid: String,
    /// Its 32-bit transaction id.
    pub transaction_id: Option<u64>,
    /// How long ago it was prepared.
    pub age: Option<Duration>,
}

/// How long before `now` `then` was, from raw microseconds: no stored value (not even
/// `'infinity'`) can make it panic; a time after `now` is no time ago.
fn age(now: PgTime, then: Option<PgTime>) -> Option<Duration> {
    then.map(|t| Duration::from_micros(u64::try_from(now.0.saturating_sub(t.0)).unwrap_or(0)))
}

pub(crate) async fn feed_lag(store: &PgEventStore) -> Result<FeedLag> {
    let r = sqlx::query(store.statements().lag.sql())
        .fetch_one(store.pool())
        .await
        .map_err(|e| store.map_err(e))?;
    let m = |e| store.map_err(e);
    let xmin: Xid8 = r.try_get_unchecked("xmin").map_err(m)?;
    let xmax: Xid8 = r.try_get_unchecked("xmax").map_err(m)?;
    let waiting: i64 = r.try_get("waiting").map_err(m)?;
    let oldest: Option<PgTime> = r.try_get("oldest_waiting").map_err(m)?;
    let now: PgTime = r.try_get("now").map_err(m)?;
    let writer_pid: Option<i32> = r.try_get("writer_pid").map_err(m)?;
    let writer_xid: Option<String> = r.try_get("writer_xid").map_err(m)?;
    let oldest_writer = match writer_pid {
        Some(pid) => Some(Writer {
            pid,
            database: r.try_get("writer_db").map_err(m)?,
            state: r.try_get("writer_state").map_err(m)?,
            transaction_id: writer_xid.and_then(|x| x.parse().ok()),
            age: age(now, r.try_get("writer_start").map_err(m)?),
        }),
        None => None,
    };
    let gid: Option<String> = r.try_get("prepared_gid").map_err(m)?;
    let prepared_xid: Option<String> = r.try_get("prepared_xid").map_err(m)?;
    let oldest_prepared = match gid {
        Some(gid) => Some(PreparedTransaction {
            gid,
            transaction_id: prepared_xid.and_then(|x| x.parse().ok()),
            age: age(now, r.try_get("prepared_at").map_err(m)?),
        }),
        None => None,
    };
    Ok(FeedLag {
        horizon: xmin.0,
        next_transaction: xmax.0,
        waiting_events: u64::try_from(waiting).unwrap_or(0),
        oldest_waiting_age: age(now, oldest),
        oldest_writer,
        oldest_prepared,
    })
}
