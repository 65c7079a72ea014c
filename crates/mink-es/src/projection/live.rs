//! Live projections: in-process fan-out of new events.
//!
//! A [`LiveFeed`] follows the store's feed in a background task and broadcasts each new
//! event to its subscribers. Appends never wait for it or for them: a subscriber that
//! falls more than the buffer behind is told it lagged ([`LiveEvent::Lagged`]) and can
//! catch up from the store.

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::store::FeedReader;
use crate::subscription::{Subscription, SubscriptionOptions};
use crate::{FeedFilter, Position, StoredEvent};

/// What a live subscriber receives.
#[derive(Clone, Debug, PartialEq)]
pub enum LiveEvent {
    /// The next event.
    Event(StoredEvent),
    /// The subscriber fell behind and this many events were not delivered to it: read
    /// them from the store (after the last position it saw) to catch up.
    Lagged(u64),
    /// The feed stopped.
    Closed,
}

/// Follows a store's feed and fans new events out to subscribers.
pub struct LiveFeed {
    sender: broadcast::Sender<StoredEvent>,
    cancel: CancellationToken,
}

impl LiveFeed {
    /// Starts following `store` from `after` (use the head position for "new events
    /// only"), buffering up to `capacity` events per slow subscriber.
    pub fn start<S: FeedReader + Clone + Send + 'static>(
        store: S,
        after: Position,
        capacity: usize,
    ) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        let cancel = CancellationToken::new();
        let tx = sender.clone();
        let stop = cancel.clone();
        tokio::spawn(async move {
            let mut sub = Subscription::new(store, SubscriptionOptions::all().after(after));
            loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => break,
                    n = sub.next_batch() => n,
                };
                match next {
                    Ok(batch) => {
                        for e in batch {
                            // No subscriber is not an error: events are simply not kept.
                            let _ = tx.send(e);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "live feed read failed; retrying");
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
                        }
                    }
                }
            }
        });
        LiveFeed { sender, cancel }
    }

    /// A new subscriber, receiving the events that match `filter` from now on.
    pub fn subscribe(&self, filter: FeedFilter) -> LiveSubscription {
        LiveSubscription {
            rx: self.sender.subscribe(),
            filter,
        }
    }

    /// Number of subscribers.
    pub fn subscribers(&self) -> usize {
        self.sender.receiver_count()
    }
}

impl Drop for LiveFeed {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// One subscriber of a [`LiveFeed`].
pub struct LiveSubscription {
    rx: broadcast::Receiver<StoredEvent>,
    filter: FeedFilter,
}

impl LiveSubscription {
    /// The next matching event, a lag notice, or the end of the feed.
    pub async fn next(&mut self) -> LiveEvent {
        loop {
            match self.rx.recv().await {
                Ok(e) if self.filter.is_empty() || self.filter.matches(&e) => {
                    return LiveEvent::Event(e);
                }
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    metrics::counter!("mink_live_lagged_events_total").increment(n);
                    return LiveEvent::Lagged(n);
                }
                Err(broadcast::error::RecvError::Closed) => return LiveEvent::Closed,
            }
        }
    }

    /// Events buffered for this subscriber (how far behind it is).
    pub fn lag(&self) -> usize {
        self.rx.len()
    }
}
