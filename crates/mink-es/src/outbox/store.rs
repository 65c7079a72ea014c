//! Where outbox messages wait: the [`OutboxStore`] contract, and the in-memory one.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::OutboxMessage;
use crate::Result;
use crate::store::{FeedNotifier, FeedSignal};

/// A message claimed for delivery.
#[derive(Clone, Debug, PartialEq)]
pub struct Claimed {
    /// The message.
    pub message: OutboxMessage,
    /// Which attempt this is (1 for the first; a lease that expired counted as one).
    pub attempt: u32,
}

/// Where a message stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    /// Waiting for delivery (or for its next attempt).
    Pending,
    /// Delivered.
    Delivered,
    /// Given up on: in the dead-letter queue.
    Dead,
}

/// A message in the dead-letter queue.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    /// The message.
    pub message: OutboxMessage,
    /// How many attempts were made.
    pub attempts: u32,
    /// The last attempt's error.
    pub last_error: String,
    /// When it was moved to the queue.
    pub failed_at: DateTime<Utc>,
}

/// Counts of messages by status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutboxCounts {
    /// Pending messages.
    pub pending: u64,
    /// Delivered messages not yet cleaned up.
    pub delivered: u64,
    /// Dead letters.
    pub dead: u64,
}

/// Stores outbox messages and their delivery state. Every store with an outbox
/// implements it; the processor and the dead-letter API use it.
///
/// Ordering: a message is deliverable only when it is the oldest undelivered message of
/// its (destination, stream); dead letters do not hold back later messages.
pub trait OutboxStore: Send + Sync + 'static {
    /// Claims up to `limit` deliverable messages for `owner`, leasing each for `lease`:
    /// pending, due, not leased by a live lease, and first of their (destination,
    /// stream). Each claim counts as an attempt. A message whose lease expired after
    /// its `max_attempts`-th attempt is moved to the dead-letter queue instead.
    /// Claims of concurrent processors never overlap.
    fn claim<'a>(
        &'a self,
        owner: &'a str,
        limit: usize,
        lease: Duration,
        max_attempts: u32,
    ) -> BoxFuture<'a, Result<Vec<Claimed>>>;

    /// Marks messages delivered (only those `owner` still holds).
    fn ack<'a>(&'a self, owner: &'a str, ids: &'a [Uuid]) -> BoxFuture<'a, Result<()>>;

    /// Records a failed attempt of a message `owner` holds: retried at `retry_at`, or
    /// moved to the dead-letter queue when `retry_at` is `None`.
    fn fail<'a>(
        &'a self,
        owner: &'a str,
        id: Uuid,
        error: &'a str,
        retry_at: Option<DateTime<Utc>>,
    ) -> BoxFuture<'a, Result<()>>;

    /// The oldest dead letters, up to `limit`.
    fn dead_letters(&self, limit: usize) -> BoxFuture<'_, Result<Vec<DeadLetter>>>;

    /// Puts dead letters back in line with fresh attempts: one (`Some(id)`) or all.
    /// Returns how many.
    fn replay(&self, id: Option<Uuid>) -> BoxFuture<'_, Result<u64>>;

    /// Deletes dead letters: one or all. Returns how many.
    fn purge_dead(&self, id: Option<Uuid>) -> BoxFuture<'_, Result<u64>>;

    /// Deletes delivered messages older than `older_than`. Returns how many.
    fn purge_delivered(&self, older_than: Duration) -> BoxFuture<'_, Result<u64>>;

    /// A message's status and attempts so far.
    fn status(&self, id: Uuid) -> BoxFuture<'_, Result<Option<(MessageStatus, u32)>>>;

    /// Counts by status.
    fn counts(&self) -> BoxFuture<'_, Result<OutboxCounts>>;

    /// Fires when new messages may be deliverable (processors also poll).
    fn signal(&self) -> FeedSignal;
}

fn later(d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| Utc::now().checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[derive(Clone, Debug)]
struct Row {
    message: OutboxMessage,
    status: MessageStatus,
    attempts: u32,
    next_attempt_at: DateTime<Utc>,
    lease: Option<(String, DateTime<Utc>)>,
    last_error: Option<String>,
    finished_at: Option<DateTime<Utc>>,
}

/// An in-memory [`OutboxStore`]. [`crate::MemoryStore::with_outbox`] writes into one
/// under the store's lock; it can also be used on its own in tests.
#[derive(Clone, Default)]
pub struct MemoryOutboxStore {
    inner: Arc<MemoryOutboxInner>,
}

#[derive(Default)]
struct MemoryOutboxInner {
    rows: Mutex<Vec<Row>>,
    notifier: FeedNotifier,
}

impl MemoryOutboxStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryOutboxStore::default()
    }

    /// Adds messages (as a store's append does, in the append's critical section).
    pub fn push(&self, messages: impl IntoIterator<Item = OutboxMessage>) {
        let now = Utc::now();
        let mut rows = self.inner.rows.lock();
        let before = rows.len();
        rows.extend(messages.into_iter().map(|message| Row {
            message,
            status: MessageStatus::Pending,
            attempts: 0,
            next_attempt_at: now,
            lease: None,
            last_error: None,
            finished_at: None,
        }));
        let added = rows.len() > before;
        drop(rows);
        if added {
            self.inner.notifier.notify();
        }
    }

    fn held_by<'r>(rows: &'r mut [Row], owner: &str, id: Uuid) -> Option<&'r mut Row> {
        rows.iter_mut().find(|r| {
            r.message.id == id
                && r.status == MessageStatus::Pending
                && r.lease.as_ref().is_some_and(|(o, _)| o == owner)
        })
    }
}

impl OutboxStore for MemoryOutboxStore {
    fn claim<'a>(
        &'a self,
        owner: &'a str,
        limit: usize,
        lease: Duration,
        max_attempts: u32,
    ) -> BoxFuture<'a, Result<Vec<Claimed>>> {
        let now = Utc::now();
        let until = later(lease);
        let mut rows = self.inner.rows.lock();
        let mut blocked: std::collections::HashSet<(String, String)> = Default::default();
        let mut out = Vec::new();
        for r in rows.iter_mut() {
            if r.status != MessageStatus::Pending {
                continue;
            }
            let key = (
                r.message.destination.clone(),
                r.message.stream_id.to_string(),
            );
            if blocked.contains(&key) {
                continue;
            }
            // Whatever happens to this one, later messages of its stream wait for it.
            blocked.insert(key);
            let leased = r.lease.as_ref().is_some_and(|(_, until)| *until > now);
            if leased || r.next_attempt_at > now || out.len() >= limit {
                continue;
            }
            if r.attempts >= max_attempts.max(1) {
                r.status = MessageStatus::Dead;
                r.lease = None;
                r.finished_at = Some(now);
                r.last_error
                    .get_or_insert_with(|| "lease expired after the last attempt".into());
                continue;
            }
            r.attempts += 1;
            r.lease = Some((owner.to_owned(), until));
            out.push(Claimed {
                message: r.message.clone(),
                attempt: r.attempts,
            });
        }
        Box::pin(async move { Ok(out) })
    }

    fn ack<'a>(&'a self, owner: &'a str, ids: &'a [Uuid]) -> BoxFuture<'a, Result<()>> {
        let now = Utc::now();
        let mut rows = self.inner.rows.lock();
        for id in ids {
            if let Some(r) = Self::held_by(&mut rows, owner, *id) {
                r.status = MessageStatus::Delivered;
                r.lease = None;
                r.finished_at = Some(now);
            }
        }
        drop(rows);
        // Later messages of those streams may be deliverable now.
        self.inner.notifier.notify();
        Box::pin(async { Ok(()) })
    }

    fn fail<'a>(
        &'a self,
        owner: &'a str,
        id: Uuid,
        error: &'a str,
        retry_at: Option<DateTime<Utc>>,
    ) -> BoxFuture<'a, Result<()>> {
        let mut rows = self.inner.rows.lock();
        if let Some(r) = Self::held_by(&mut rows, owner, id) {
            r.lease = None;
            r.last_error = Some(error.to_owned());
            match retry_at {
                Some(at) => r.next_attempt_at = at,
                None => {
                    r.status = MessageStatus::Dead;
                    r.finished_at = Some(Utc::now());
                }
            }
        }
        drop(rows);
        self.inner.notifier.notify();
        Box::pin(async { Ok(()) })
    }

    fn dead_letters(&self, limit: usize) -> BoxFuture<'_, Result<Vec<DeadLetter>>> {
        let out = self
            .inner
            .rows
            .lock()
            .iter()
            .filter(|r| r.status == MessageStatus::Dead)
            .take(limit)
            .map(|r| DeadLetter {
                message: r.message.clone(),
                attempts: r.attempts,
                last_error: r.last_error.clone().unwrap_or_default(),
                failed_at: r.finished_at.unwrap_or_default(),
            })
            .collect();
        Box::pin(async move { Ok(out) })
    }

    fn replay(&self, id: Option<Uuid>) -> BoxFuture<'_, Result<u64>> {
        let now = Utc::now();
        let mut n = 0;
        for r in self.inner.rows.lock().iter_mut() {
            if r.status == MessageStatus::Dead && id.is_none_or(|id| r.message.id == id) {
                r.status = MessageStatus::Pending;
                r.attempts = 0;
                r.next_attempt_at = now;
                r.lease = None;
                r.finished_at = None;
                n += 1;
            }
        }
        if n > 0 {
            self.inner.notifier.notify();
        }
        Box::pin(async move { Ok(n) })
    }

    fn purge_dead(&self, id: Option<Uuid>) -> BoxFuture<'_, Result<u64>> {
        let mut rows = self.inner.rows.lock();
        let before = rows.len();
        rows.retain(|r| {
            !(r.status == MessageStatus::Dead && id.is_none_or(|id| r.message.id == id))
        });
        let n = (before - rows.len()) as u64;
        Box::pin(async move { Ok(n) })
    }

    fn purge_delivered(&self, older_than: Duration) -> BoxFuture<'_, Result<u64>> {
        let cutoff = chrono::Duration::from_std(older_than)
            .ok()
            .and_then(|d| Utc::now().checked_sub_signed(d))
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let mut rows = self.inner.rows.lock();
        let before = rows.len();
        rows.retain(|r| {
            !(r.status == MessageStatus::Delivered && r.finished_at.is_some_and(|t| t <= cutoff))
        });
        let n = (before - rows.len()) as u64;
        Box::pin(async move { Ok(n) })
    }

    fn status(&self, id: Uuid) -> BoxFuture<'_, Result<Option<(MessageStatus, u32)>>> {
        let s = self
            .inner
            .rows
            .lock()
            .iter()
            .find(|r| r.message.id == id)
            .map(|r| (r.status, r.attempts));
        Box::pin(async move { Ok(s) })
    }

    fn counts(&self) -> BoxFuture<'_, Result<OutboxCounts>> {
        let mut c = OutboxCounts::default();
        for r in self.inner.rows.lock().iter() {
            match r.status {
                MessageStatus::Pending => c.pending += 1,
                MessageStatus::Delivered => c.delivered += 1,
                MessageStatus::Dead => c.dead += 1,
            }
        }
        Box::pin(async move { Ok(c) })
    }

    fn signal(&self) -> FeedSignal {
        self.inner.notifier.signal()
    }
}
