//! Subscriptions: catch up from a position, then follow new events live.
//!
//! A subscription pulls pages from the store's feed ([`FeedReader::read_feed`]), so a
//! slow consumer is back-pressured by construction: the store never buffers events for
//! it, and nothing is ever dropped. When it has caught up it waits on the store's
//! [`crate::FeedSignal`] and polls as a fallback, which also picks up events written by
//! other processes.

use std::collections::VecDeque;
use std::time::Duration;

use crate::store::{FeedFilter, FeedReader, FeedSignal};
use crate::{Position, Result, StoredEvent, StreamId};

/// How a subscription reads.
#[derive(Clone, Debug)]
pub struct SubscriptionOptions {
    /// Which events to deliver.
    pub filter: FeedFilter,
    /// Deliver events after this position (exclusive). [`Position::START`] reads all.
    pub after: Position,
    /// Events fetched per read. Default 256.
    pub batch_size: usize,
    /// Longest wait between reads once caught up. Default 250 ms.
    pub poll_interval: Duration,
}

impl Default for SubscriptionOptions {
    fn default() -> Self {
        SubscriptionOptions {
            filter: FeedFilter::all(),
            after: Position::START,
            batch_size: 256,
            poll_interval: Duration::from_millis(250),
        }
    }
}

impl SubscriptionOptions {
    /// Every event of the store.
    pub fn all() -> Self {
        SubscriptionOptions::default()
    }

    /// The events of one stream.
    pub fn stream(stream: StreamId) -> Self {
        SubscriptionOptions {
            filter: FeedFilter::all().stream(stream),
            ..Default::default()
        }
    }

    /// The events of one category.
    pub fn category(category: impl Into<String>) -> Self {
        SubscriptionOptions {
            filter: FeedFilter::all().category(category),
            ..Default::default()
        }
    }

    /// Any filter.
    pub fn filtered(filter: FeedFilter) -> Self {
        SubscriptionOptions {
            filter,
            ..Default::default()
        }
    }

    /// Resume after `position` (a checkpoint).
    pub fn after(mut self, position: Position) -> Self {
        self.after = position;
        self
    }

    /// Events fetched per read (at least 1).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// Longest wait between reads once caught up.
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d;
        self
    }
}

/// A catch-up-then-live subscription to a store's feed.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use mink_es::{ExpectedVersion, MemoryStore, NewEvent, StreamId, StreamWriter};
/// use mink_es::subscription::{Subscription, SubscriptionOptions};
/// let store = MemoryStore::new();
/// let s = StreamId::new("Order-1")?;
/// store.append(&s, ExpectedVersion::Any, vec![NewEvent::new("A", "{}")]).await?;
/// let mut sub = Subscription::new(store.clone(), SubscriptionOptions::category("Order"));
/// let first = sub.next().await?;
/// assert_eq!(first.version, 1);
/// // Resume later from the checkpoint: nothing is delivered twice.
/// let checkpoint = sub.checkpoint();
/// store.append(&s, ExpectedVersion::Any, vec![NewEvent::new("B", "{}")]).await?;
/// let mut resumed = Subscription::new(store, SubscriptionOptions::category("Order").after(checkpoint));
/// assert_eq!(resumed.next().await?.event_type, "B");
/// # Ok::<(), mink_es::Error>(())
/// # });
/// ```
pub struct Subscription<S> {
    store: S,
    opts: SubscriptionOptions,
    signal: FeedSignal,
    /// Where the next store read starts.
    read_cursor: Position,
    /// Events read but not yet delivered.
    buffer: VecDeque<StoredEvent>,
    /// The checkpoint: every event up to here has been delivered (or did not match).
    delivered: Position,
    caught_up: bool,
}

impl<S: FeedReader> Subscription<S> {
    /// Starts a subscription (nothing is read until the first call to `next`).
    pub fn new(store: S, opts: SubscriptionOptions) -> Self {
        let signal = store.feed_signal();
        Subscription {
            store,
            read_cursor: opts.after,
            delivered: opts.after,
            opts,
            signal,
            buffer: VecDeque::new(),
            caught_up: false,
        }
    }

    /// The next event, waiting for one if the subscription has caught up.
    ///
    /// An error from the store is returned as is and loses nothing: calling `next`
    /// again retries from the same place.
    pub async fn next(&mut self) -> Result<StoredEvent> {
        loop {
            if let Some(e) = self.pop() {
                return Ok(e);
            }
            self.fill().await?;
        }
    }

    /// The next events that are available at once (at most `batch_size`), waiting for at
    /// least one.
    pub async fn next_batch(&mut self) -> Result<Vec<StoredEvent>> {
        loop {
            if !self.buffer.is_empty() {
                let out: Vec<StoredEvent> = self.buffer.drain(..).collect();
                self.update_delivered(out.last().map(|e| e.position));
                return Ok(out);
            }
            self.fill().await?;
        }
    }

    /// Like [`Subscription::next`], but returns `Ok(None)` instead of waiting when no
    /// event is available now.
    pub async fn try_next(&mut self) -> Result<Option<StoredEvent>> {
        if let Some(e) = self.pop() {
            return Ok(Some(e));
        }
        self.read_page().await?;
        Ok(self.pop())
    }

    /// The position to resume from to get exactly the events not yet delivered.
    pub fn checkpoint(&self) -> Position {
        self.delivered
    }

    /// True once a read returned less than a full page (the subscription is live).
    pub fn is_caught_up(&self) -> bool {
        self.caught_up
    }

    /// The store this subscription reads.
    pub fn store(&self) -> &S {
        &self.store
    }

    fn pop(&mut self) -> Option<StoredEvent> {
        let e = self.buffer.pop_front()?;
        // Several events may share a position (an upcaster split one stored event):
        // the checkpoint passes a position only once all of them are delivered.
        let more_here = self
            .buffer
            .front()
            .is_some_and(|f| f.position == e.position);
        self.update_delivered((!more_here).then_some(e.position));
        Some(e)
    }

    fn update_delivered(&mut self, last: Option<Position>) {
        if let Some(p) = last {
            self.delivered = p;
        }
        if self.buffer.is_empty() {
            // Everything up to the read cursor was delivered or filtered out.
            self.delivered = self.delivered.max(self.read_cursor);
        }
    }

    /// Reads until the buffer holds something, waiting when caught up.
    async fn fill(&mut self) -> Result<()> {
        loop {
            self.signal.mark_seen();
            let got_full_page = self.read_page().await?;
            if !self.buffer.is_empty() {
                return Ok(());
            }
            if !got_full_page {
                self.signal.wait(self.opts.poll_interval).await;
            }
        }
    }

    /// One store read; returns whether the page was full (more may be waiting).
    async fn read_page(&mut self) -> Result<bool> {
        let page = self
            .store
            .read_feed(self.read_cursor, self.opts.batch_size, &self.opts.filter)
            .await?;
        let full = page.events.len() >= self.opts.batch_size;
        if page.next > self.read_cursor {
            self.read_cursor = page.next;
        }
        self.buffer.extend(page.events);
        if !full {
            self.caught_up = true;
        }
        if self.buffer.is_empty() {
            self.delivered = self.delivered.max(self.read_cursor);
        }
        Ok(full)
    }

    /// Turns the subscription into a [`futures::Stream`] of events.
    pub fn into_stream(self) -> impl futures::Stream<Item = Result<StoredEvent>> + Send
    where
        S: Send + 'static,
    {
        futures::stream::unfold(self, |mut sub| async move {
            let item = sub.next().await;
            Some((item, sub))
        })
    }
}
