//! The store contracts: small traits that each adapter implements as far as it can.
//!
//! | trait | what it does |
//! |---|---|
//! | [`StreamWriter`] | appends to one stream with an [`ExpectedVersion`] |
//! | [`StreamReader`] | reads one stream by version |
//! | [`FeedReader`] | reads the global, gap-safe feed by [`Position`], with a [`FeedFilter`] |
//! | [`EventStore`] | all three (implemented for every type that has them) |
//! | [`crate::SnapshotStore`], [`crate::CheckpointStore`] | snapshots and named checkpoints |
//!
//! The traits use `async fn` in traits (no boxing on the hot path); generic code takes
//! `S: EventStore`.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::{
    Error, EventId, EventType, ExpectedVersion, NewEvent, Position, Result, StoredEvent, StreamId,
};

/// Limits a store enforces on appends. Appends over a limit fail with a typed error
/// and write nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreLimits {
    /// Largest accepted event: payload plus metadata text, in bytes. Default 1 MiB.
    pub max_event_bytes: usize,
    /// Most events accepted in one append. Default 10,000.
    pub max_events_per_append: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            max_event_bytes: 1024 * 1024,
            max_events_per_append: 10_000,
        }
    }
}

/// What an append returns.
#[derive(Clone, Debug, PartialEq)]
pub struct AppendResult {
    /// The stream appended to.
    pub stream_id: StreamId,
    /// The stored events, with their versions and positions, in append order.
    pub events: Vec<StoredEvent>,
    /// The stream's version after the append (the version of its last event).
    pub version: u64,
    /// True when the append repeated an earlier one (same event ids at the same place)
    /// and the store returned the original result without storing anything.
    pub deduplicated: bool,
}

impl AppendResult {
    /// The position of the last stored event.
    pub fn last_position(&self) -> Position {
        self.events.last().map_or(Position::START, |e| e.position)
    }
}

/// Summary of one stream.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamInfo {
    /// The stream.
    pub stream_id: StreamId,
    /// Its current version (number of its last event).
    pub version: u64,
    /// When its first event was recorded.
    pub created_at: DateTime<Utc>,
    /// When its last event was recorded.
    pub updated_at: DateTime<Utc>,
}

/// Appends to streams.
pub trait StreamWriter: Send + Sync {
    /// Appends `events` to `stream` atomically (all or none), if the stream's version
    /// satisfies `expected`.
    ///
    /// Appending again the same event ids at the same place in the same stream returns
    /// the original result ([`AppendResult::deduplicated`] is true) and stores nothing;
    /// the same ids anywhere else fail with [`Error::DuplicateEventId`]. "The same
    /// place" means the ids are stored consecutively, in the same order, starting where
    /// `expected` says the append starts (any place for [`ExpectedVersion::Any`]). A
    /// leading part of an earlier append counts as a repeat of that part; a mix of
    /// stored and new ids does not.
    fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> impl Future<Output = Result<AppendResult>> + Send;
}

/// Reads single streams.
pub trait StreamReader: Send + Sync {
    /// Reads up to `limit` events of `stream` with version ≥ `from_version`, in version
    /// order. A stream that does not exist reads as empty.
    fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<StoredEvent>>> + Send;

    /// The stream's current version; 0 when it does not exist.
    fn stream_version(&self, stream: &StreamId) -> impl Future<Output = Result<u64>> + Send;

    /// The stream's summary, or `None` when it does not exist.
    fn stream_info(
        &self,
        stream: &StreamId,
    ) -> impl Future<Output = Result<Option<StreamInfo>>> + Send;
}

/// Reads the global feed: every event of the store, in a total order that never skips
/// an event (an event that commits late is still delivered, in order).
pub trait FeedReader: Send + Sync {
    /// Reads up to `limit` events after `after` (exclusive) that match `filter`.
    ///
    /// [`FeedPage::next`] is where the next read should start. With a filter it may be
    /// past the last returned event (the store scanned further and found nothing that
    /// matched), so that a checkpoint still moves when nothing matches.
    fn read_feed(
        &self,
        after: Position,
        limit: usize,
        filter: &FeedFilter,
    ) -> impl Future<Output = Result<FeedPage>> + Send;

    /// The position of the last event a feed read can currently return.
    fn head_position(&self) -> impl Future<Output = Result<Position>> + Send;

    /// A signal that fires when new events may be readable. Subscriptions wait on it
    /// and fall back to polling, so a store may return [`FeedSignal::never`].
    fn feed_signal(&self) -> FeedSignal;
}

/// A store that can append, read streams and read the feed.
pub trait EventStore: StreamWriter + StreamReader + FeedReader + Clone + 'static {}

impl<T: StreamWriter + StreamReader + FeedReader + Clone + 'static> EventStore for T {}

/// A page of the global feed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FeedPage {
    /// The events read, in feed order.
    pub events: Vec<StoredEvent>,
    /// Where the next read starts (pass it as `after`).
    pub next: Position,
}

/// Which events a feed read or subscription returns.
///
/// Axes compose with AND; the values within one axis with OR. An empty axis places no
/// constraint, so the default filter matches everything.
///
/// ```
/// use mink_es::{FeedFilter, StreamId};
/// let f = FeedFilter::all().category("Order").event_type("OrderPlaced");
/// assert!(!f.is_empty());
/// assert!(FeedFilter::all().is_empty());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FeedFilter {
    /// Event type names.
    pub event_types: Vec<EventType>,
    /// Stream ids.
    pub streams: Vec<StreamId>,
    /// Stream categories (see [`StreamId::category`]).
    pub categories: Vec<String>,
}

impl FeedFilter {
    /// The filter that matches every event.
    pub fn all() -> Self {
        FeedFilter::default()
    }

    /// Also accept events of this type (on the event-type axis).
    pub fn event_type(mut self, t: impl Into<EventType>) -> Self {
        self.event_types.push(t.into());
        self
    }

    /// Also accept events of this stream (on the stream axis).
    pub fn stream(mut self, s: StreamId) -> Self {
        self.streams.push(s);
        self
    }

    /// Also accept events of this category (on the category axis).
    pub fn category(mut self, c: impl Into<String>) -> Self {
        self.categories.push(c.into());
        self
    }

    /// True when the filter matches every event.
    pub fn is_empty(&self) -> bool {
        self.event_types.is_empty() && self.streams.is_empty() && self.categories.is_empty()
    }

    /// Whether `event` passes the filter.
    pub fn matches(&self, event: &StoredEvent) -> bool {
        (self.event_types.is_empty() || self.event_types.contains(&event.event_type))
            && (self.streams.is_empty() || self.streams.contains(&event.stream_id))
            && (self.categories.is_empty() || self.categories.iter().any(|c| c == event.category()))
    }
}

/// A wake-up signal for feed readers: it fires after appends.
///
/// Cloning gives an independent receiver. A signal may fire without new events, and a
/// store may have no signal at all ([`FeedSignal::never`]); readers poll as a fallback.
#[derive(Clone, Debug)]
pub struct FeedSignal(Option<tokio::sync::watch::Receiver<u64>>);

impl FeedSignal {
    /// A signal fed by a watch channel whose value a store bumps after each commit.
    pub fn from_watch(rx: tokio::sync::watch::Receiver<u64>) -> Self {
        FeedSignal(Some(rx))
    }

    /// A signal that never fires.
    pub fn never() -> Self {
        FeedSignal(None)
    }

    /// Waits until the signal fires, or for at most `timeout`.
    pub async fn wait(&mut self, timeout: Duration) {
        match &mut self.0 {
            Some(rx) => {
                // An error means the store was dropped: fall back to the timeout.
                if let Ok(Err(_)) = tokio::time::timeout(timeout, rx.changed()).await {
                    self.0 = None;
                    tokio::time::sleep(timeout).await;
                }
            }
            None => tokio::time::sleep(timeout).await,
        }
    }

    /// Marks everything signalled so far as seen.
    pub fn mark_seen(&mut self) {
        if let Some(rx) = &mut self.0 {
            rx.mark_unchanged();
        }
    }
}

/// The sending half of a [`FeedSignal`], for store implementations.
#[derive(Debug)]
pub struct FeedNotifier(tokio::sync::watch::Sender<u64>);

impl FeedNotifier {
    /// A new notifier.
    pub fn new() -> Self {
        FeedNotifier(tokio::sync::watch::Sender::new(0))
    }

    /// Wakes every waiting reader (nothing to do when there is none: a reader created
    /// later reads the store before it waits).
    pub fn notify(&self) {
        if self.0.receiver_count() > 0 {
            self.0.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// A new signal fed by this notifier.
    pub fn signal(&self) -> FeedSignal {
        FeedSignal::from_watch(self.0.subscribe())
    }
}

impl Default for FeedNotifier {
    fn default() -> Self {
        FeedNotifier::new()
    }
}

/// Checks an append's input against the rules every store applies, before anything is
/// written: a non-empty batch within the count limit, valid type names, sizes within the
/// limit, and no event id twice.
pub fn validate_append(stream: &StreamId, events: &[NewEvent], limits: &StoreLimits) -> Result<()> {
    validate_append_fields(stream, events, limits)?;
    if let Some(dup) = first_duplicate_id(events) {
        return Err(Error::DuplicateEventIdInAppend {
            event_id: dup,
            stream: stream.clone(),
        });
    }
    Ok(())
}

/// [`validate_append`] without the check for an id given twice, for stores that detect
/// it themselves while inserting.
pub(crate) fn validate_append_fields(
    stream: &StreamId,
    events: &[NewEvent],
    limits: &StoreLimits,
) -> Result<()> {
    if events.is_empty() {
        return Err(Error::EmptyAppend {
            stream: stream.clone(),
        });
    }
    if events.len() > limits.max_events_per_append {
        return Err(Error::TooManyEvents {
            stream: stream.clone(),
            count: events.len(),
            limit: limits.max_events_per_append,
        });
    }
    let mut last_valid_type: Option<&str> = None;
    for (index, e) in events.iter().enumerate() {
        // Batches usually repeat a few types: validate each run once.
        if last_valid_type != Some(e.event_type.as_str()) {
            e.event_type.validate()?;
            last_valid_type = Some(e.event_type.as_str());
        }
        let size = e.payload.len() + e.metadata.approx_encoded_len();
        if size > limits.max_event_bytes {
            return Err(Error::PayloadTooLarge {
                stream: stream.clone(),
                index,
                size,
                limit: limits.max_event_bytes,
            });
        }
        if e.schema_version == 0 {
            return Err(Error::InvalidArgument(format!(
                "event #{index} of the append to {stream} has schema version 0; versions start at 1"
            )));
        }
    }
    Ok(())
}

fn first_duplicate_id(events: &[NewEvent]) -> Option<EventId> {
    if events.len() <= 16 {
        for (i, a) in events.iter().enumerate() {
            if events[..i].iter().any(|b| b.id == a.id) {
                return Some(a.id);
            }
        }
        return None;
    }
    let mut ids: Vec<EventId> = events.iter().map(|e| e.id).collect();
    ids.sort_unstable();
    ids.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
}

/// Whether an earlier append whose first event landed at `first_version` is at "the same
/// place" as a repeated append expecting `expected` (for idempotent appends).
pub fn same_place(expected: ExpectedVersion, first_version: u64) -> bool {
    match expected {
        ExpectedVersion::Any => true,
        ExpectedVersion::NoStream => first_version == 1,
        ExpectedVersion::StreamExists => first_version > 1,
        ExpectedVersion::Exact(n) => first_version == n + 1,
    }
}

/// Decides whether a repeated append is an idempotent repeat of `stored` (the events
/// already stored under the append's first id, in version order, as many as the append
/// carries) and returns the error to raise when it is not.
///
/// `stored` must hold the events found for the append's ids: `stored[i]` for
/// `events[i]`, or fewer when some ids are not stored.
pub fn check_idempotent_repeat(
    stream: &StreamId,
    expected: ExpectedVersion,
    events: &[NewEvent],
    stored: &[StoredEvent],
) -> Result<()> {
    let Some(first) = stored.first() else {
        return Ok(());
    };
    let conflict = |found: &StoredEvent| Error::DuplicateEventId {
        event_id: found.id,
        stream: stream.clone(),
        existing_stream: found.stream_id.clone(),
        existing_version: found.version,
    };
    if first.stream_id != *stream || !same_place(expected, first.version) {
        return Err(conflict(first));
    }
    if stored.len() != events.len() {
        return Err(conflict(first));
    }
    for (i, (e, s)) in events.iter().zip(stored).enumerate() {
        if e.id != s.id || s.stream_id != *stream || s.version != first.version + i as u64 {
            return Err(conflict(s));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid() -> StreamId {
        StreamId::new("T-1").unwrap()
    }

    #[test]
    fn validation_catches_bad_batches() {
        let l = StoreLimits::default();
        assert!(matches!(
            validate_append(&sid(), &[], &l),
            Err(Error::EmptyAppend { .. })
        ));
        let big = NewEvent::new("E", vec![0u8; l.max_event_bytes + 1]);
        assert!(matches!(
            validate_append(&sid(), &[big], &l),
            Err(Error::PayloadTooLarge { index: 0, .. })
        ));
        let e = NewEvent::new("E", "{}");
        let mut many: Vec<NewEvent> = (0..40).map(|_| NewEvent::new("E", "{}")).collect();
        many.push(e.clone());
        many.push(e);
        assert!(matches!(
            validate_append(&sid(), &many, &l),
            Err(Error::DuplicateEventIdInAppend { .. })
        ));
        let e = NewEvent::new("E", "{}");
        assert!(matches!(
            validate_append(&sid(), &[e.clone(), e], &l),
            Err(Error::DuplicateEventIdInAppend { .. })
        ));
        assert!(matches!(
            validate_append(&sid(), &[NewEvent::new("bad type", "{}")], &l),
            Err(Error::InvalidEventType { .. })
        ));
        let tight = StoreLimits {
            max_events_per_append: 1,
            ..l
        };
        assert!(matches!(
            validate_append(
                &sid(),
                &[NewEvent::new("E", "{}"), NewEvent::new("E", "{}")],
                &tight
            ),
            Err(Error::TooManyEvents { count: 2, .. })
        ));
    }

    #[test]
    fn same_place_rules() {
        assert!(same_place(ExpectedVersion::Any, 7));
        assert!(same_place(ExpectedVersion::NoStream, 1));
        assert!(!same_place(ExpectedVersion::NoStream, 2));
        assert!(same_place(ExpectedVersion::Exact(3), 4));
        assert!(!same_place(ExpectedVersion::Exact(3), 5));
        assert!(same_place(ExpectedVersion::StreamExists, 2));
        assert!(!same_place(ExpectedVersion::StreamExists, 1));
    }
}
