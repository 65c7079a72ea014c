//! Wake-ups: the background LISTEN tasks that feed the store's [`FeedNotifier`]s (one
//! for the feed, one for outbox processors), and the background NOTIFY task that
//! announces appends made through the pool.
//!
//! The tasks hold their own connection (never one of the pool's), start lazily (the
//! feed's listener on the first [`mink_es::FeedReader::feed_signal`], the outbox's on
//! the first [`mink_es::outbox::OutboxStore::signal`], the announcer on the first
//! append), and stop when the store's cancellation token fires: when the last store
//! handle is dropped, or when the token given to the builder is cancelled.
//!
//! Notifications are only a hint. A lost one (a dropped connection, a NOTIFY from a
//! store with announcements off, a transaction that ends outside mink and so moves the
//! feed's horizon) delays a subscriber until its next poll, never more.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mink_es::store::FeedNotifier;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, SqlStr};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Runs the listener until `cancel` fires.
pub(crate) async fn listen_task(
    options: PgConnectOptions,
    channel: String,
    notifier: Arc<FeedNotifier>,
    cancel: CancellationToken,
) {
    // A fresh single-connection pool per (re)connection: a listener dropped after an
    // error hands its dead connection back to its pool in a background task, and the
    // next listener must not wait for that.
    let new_pool = || {
        PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy_with(options.clone())
    };
    let mut backoff = Duration::from_millis(100);
    'outer: loop {
        let listener = tokio::select! {
            _ = cancel.cancelled() => break,
            r = async {
                let mut l = PgListener::connect_with(&new_pool()).await?;
                l.listen(&channel).await?;
                Ok::<_, sqlx::Error>(l)
            } => r,
        };
        let mut listener = match listener {
            Ok(l) => {
                backoff = Duration::from_millis(100);
                tracing::debug!(channel, "listening for appends");
                // Anything may have been appended while we were not listening.
                notifier.notify();
                l
            }
            Err(e) => {
                tracing::warn!(channel, error = %e, "cannot listen for appends; subscribers poll");
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        loop {
            let r = tokio::select! {
                _ = cancel.cancelled() => break 'outer,
                r = listener.try_recv() => r,
            };
            match r {
                Ok(Some(_)) => {
                    // Coalesce a burst into one wake-up.
                    while listener.next_buffered().is_some() {}
                    notifier.notify();
                }
                Ok(None) => {
                    // The connection dropped and was re-established: notifications sent
                    // meanwhile are lost, so wake readers once.
                    notifier.notify();
                }
                Err(e) => {
                    tracing::warn!(channel, error = %e, "listener failed; reconnecting");
                    notifier.notify();
                    continue 'outer;
                }
            }
        }
    }
    tracing::debug!(channel, "listener stopped");
}

/// What the announcer sends.
pub(crate) struct Announcements {
    /// The NOTIFY of the events channel ($1).
    pub events_sql: SqlStr,
    /// The NOTIFY of the events ($1) and outbox ($2) channels.
    pub both_sql: SqlStr,
    pub events_channel: String,
    pub outbox_channel: String,
    /// Set when the next announcement must wake outbox processors too.
    pub outbox: Arc<AtomicBool>,
}

/// Runs the announcer until `cancel` fires: each request (coalesced) sends one NOTIFY,
/// at most one per `min_interval`, of the events channel, and of the outbox channel as
/// well when an outbox announcement was asked for since the last one.
pub(crate) async fn announce_task(
    options: PgConnectOptions,
    what: Announcements,
    requests: Arc<Notify>,
    min_interval: Duration,
    cancel: CancellationToken,
) {
    let mut conn: Option<PgConnection> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = requests.notified() => {}
        }
        if conn.is_none() {
            match options.connect().await {
                Ok(c) => conn = Some(c),
                Err(e) => tracing::debug!(error = %e, "cannot connect to announce appends"),
            }
        }
        if let Some(c) = conn.as_mut() {
            let outbox = what.outbox.swap(false, Ordering::AcqRel);
            let q = if outbox {
                sqlx::query(what.both_sql.clone())
                    .bind(what.events_channel.as_str())
                    .bind(what.outbox_channel.as_str())
            } else {
                sqlx::query(what.events_sql.clone()).bind(what.events_channel.as_str())
            };
            if let Err(e) = q.execute(&mut *c).await {
                tracing::debug!(error = %e, "cannot announce appends");
                if outbox {
                    // Not sent: the next announcement carries it.
                    what.outbox.store(true, Ordering::Release);
                }
                if let Some(c) = conn.take() {
                    let _ = c.close().await;
                }
            }
        }
        if !min_interval.is_zero() {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(min_interval) => {}
            }
        }
    }
    if let Some(c) = conn.take() {
        let _ = c.close().await;
    }
}
