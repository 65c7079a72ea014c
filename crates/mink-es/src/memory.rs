//! The in-memory store, for users' tests and prototypes.
//!
//! It implements every store trait with the same semantics as the durable adapters
//! (it passes the same conformance suite), under one reader/writer lock. Nothing
//! survives the process. Its `recorded_at` times come from the coarse clock on Linux
//! (millisecond resolution), which keeps appends cheap.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::outbox::Outbox;
use crate::outbox::store::MemoryOutboxStore;
use crate::snapshot::{CheckpointStore, Snapshot, SnapshotStore};
use crate::store::{
    AppendResult, FeedFilter, FeedNotifier, FeedPage, FeedReader, FeedSignal, StoreLimits,
    StreamInfo, StreamReader, StreamWriter, check_idempotent_repeat, validate_append_fields,
};
use crate::{Error, EventId, ExpectedVersion, NewEvent, Position, Result, StoredEvent, StreamId};

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// An event store held in memory.
///
/// Cloning gives another handle to the same store.
///
/// ```
/// # tokio_test_block_on(async {
/// use mink_es::{ExpectedVersion, MemoryStore, NewEvent, StreamId, StreamWriter};
/// let store = MemoryStore::new();
/// let stream = StreamId::new("Order-1")?;
/// let res = store
///     .append(&stream, ExpectedVersion::NoStream, vec![NewEvent::new("OrderPlaced", "{}")])
///     .await?;
/// assert_eq!(res.version, 1);
/// # Ok::<(), mink_es::Error>(())
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    state: RwLock<State>,
    notifier: FeedNotifier,
    limits: StoreLimits,
    outbox: Option<(Outbox, MemoryOutboxStore)>,
    inline: Vec<std::sync::Arc<dyn crate::projection::InlineProjection>>,
    snapshots: Mutex<HashMap<StreamId, Snapshot>>,
    checkpoints: Mutex<HashMap<String, Position>>,
}

/// The log index of every stored event id.
///
/// Ids made by [`EventId::new`] increase (per thread, and across threads from one
/// millisecond to the next), so nearly every new id is above every stored one: those
/// are appended to a sorted vector, with no hashing and no rehashing as the store
/// grows, and an id above the largest one is known to be new without a lookup. Ids
/// that arrive out of order (chosen by the application, or from another thread within
/// the same millisecond) go into a hash map.
#[derive(Default)]
struct IdIndex {
    sorted: Vec<(EventId, usize)>,
    others: FastMap<EventId, usize>,
}

impl IdIndex {
    fn above_all(&self, id: &EventId) -> bool {
        self.sorted.last().is_none_or(|(last, _)| id > last)
    }

    fn get(&self, id: &EventId) -> Option<usize> {
        if self.above_all(id) {
            return None;
        }
        match self.sorted.binary_search_by(|(k, _)| k.cmp(id)) {
            Ok(i) => Some(self.sorted[i].1),
            Err(_) => self.others.get(id).copied(),
        }
    }

    fn contains(&self, id: &EventId) -> bool {
        self.get(id).is_some()
    }

    /// Inserts `id`, unless it is already there: then returns where it is.
    fn insert(&mut self, id: EventId, index: usize) -> Option<usize> {
        if self.above_all(&id) {
            // Nothing in `others` is above the largest sorted id.
            self.sorted.push((id, index));
            return None;
        }
        if let Some(existing) = self.get(&id) {
            return Some(existing);
        }
        self.others.insert(id, index);
        None
    }

    fn remove(&mut self, id: &EventId) {
        if self.sorted.last().is_some_and(|(last, _)| last == id) {
            self.sorted.pop();
        } else if let Ok(i) = self.sorted.binary_search_by(|(k, _)| k.cmp(id)) {
            self.sorted.remove(i);
        } else {
            self.others.remove(id);
        }
    }
}

/// Events per chunk of the log. Chunks never move once allocated, so the log grows
/// without copying what it holds.
const CHUNK: usize = 4096;

/// The global feed, in fixed-size chunks; position n is at index n - 1.
#[derive(Default)]
struct Log {
    chunks: Vec<Vec<Record>>,
    len: usize,
}

impl Log {
    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, i: usize) -> &Record {
        &self.chunks[i / CHUNK][i % CHUNK]
    }

    fn get_mut(&mut self, i: usize) -> &mut Record {
        &mut self.chunks[i / CHUNK][i % CHUNK]
    }

    fn push(&mut self, e: Record) {
        if self.len.is_multiple_of(CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        if let Some(chunk) = self.chunks.last_mut() {
            chunk.push(e);
            self.len += 1;
        }
    }

    fn iter_from(&self, start: usize) -> impl Iterator<Item = &Record> {
        self.chunks
            .iter()
            .skip(start / CHUNK)
            .flatten()
            .skip(start % CHUNK)
    }
}

/// One stored event, compactly: repeated names (stream, type, codec) are kept once in
/// [`Names`] and referred to by number, which halves the memory per event (and the
/// page faults of a growing store).
struct Record {
    id: EventId,
    stream: u32,
    event_type: u32,
    codec: u32,
    schema_version: u32,
    version: u64,
    payload: bytes::Bytes,
    metadata: crate::Metadata,
    recorded_at: i64,
}

/// Interned names, numbered in order of first use. The last one looked up is
/// remembered, since appends tend to repeat it.
struct Names<T> {
    all: Vec<T>,
    index: FastMap<T, u32>,
    last: Option<u32>,
}

impl<T> Default for Names<T> {
    fn default() -> Self {
        Names {
            all: Vec::new(),
            index: FastMap::default(),
            last: None,
        }
    }
}

impl<T: Clone + Eq + std::hash::Hash + std::borrow::Borrow<str>> Names<T> {
    fn intern(&mut self, name: T) -> u32 {
        if let Some(last) = self.last
            && self.all[last as usize].borrow() == name.borrow()
        {
            return last;
        }
        let n = match self.index.get(name.borrow()) {
            Some(&n) => n,
            None => {
                let n = self.all.len() as u32;
                self.all.push(name.clone());
                self.index.insert(name, n);
                n
            }
        };
        self.last = Some(n);
        n
    }

    fn get(&self, n: u32) -> &T {
        &self.all[n as usize]
    }
}

struct Stream {
    id: StreamId,
    /// Log indices of the stream's events, in version order.
    events: Vec<usize>,
}

#[derive(Default)]
struct State {
    log: Log,
    /// Stream number by id.
    stream_index: FastMap<StreamId, u32>,
    streams: Vec<Stream>,
    event_types: Names<crate::EventType>,
    codecs: Names<crate::CodecTag>,
    /// Log index of each event id.
    ids: IdIndex,
}

/// Builds a [`MemoryStore`].
#[derive(Default)]
pub struct MemoryStoreBuilder {
    limits: StoreLimits,
    outbox: Option<Outbox>,
    inline: Vec<std::sync::Arc<dyn crate::projection::InlineProjection>>,
}

impl MemoryStoreBuilder {
    /// Sets the limits.
    pub fn limits(mut self, limits: StoreLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Writes outbox messages with the events.
    pub fn outbox(mut self, outbox: Outbox) -> Self {
        self.outbox = Some(outbox);
        self
    }

    /// Runs an inline projection under the store's lock on every append: if it fails,
    /// the append fails and nothing is stored.
    pub fn inline(mut self, projection: impl crate::projection::InlineProjection) -> Self {
        self.inline.push(std::sync::Arc::new(projection));
        self
    }

    /// The store.
    pub fn build(self) -> MemoryStore {
        MemoryStore {
            inner: Arc::new(Inner {
                limits: self.limits,
                outbox: self.outbox.map(|o| (o, MemoryOutboxStore::new())),
                inline: self.inline,
                ..Inner::default()
            }),
        }
    }
}

impl State {
    fn stream(&self, id: &StreamId) -> Option<&Stream> {
        self.stream_index
            .get(id)
            .map(|&n| &self.streams[n as usize])
    }

    fn stream_version(&self, stream: &StreamId) -> u64 {
        self.stream(stream).map_or(0, |s| s.events.len() as u64)
    }

    /// The stored event at log index `i`.
    fn event(&self, i: usize) -> StoredEvent {
        let r = self.log.get(i);
        StoredEvent {
            id: r.id,
            stream_id: self.streams[r.stream as usize].id.clone(),
            version: r.version,
            position: Position::new(0, i as u64 + 1),
            event_type: self.event_types.get(r.event_type).clone(),
            schema_version: r.schema_version,
            codec: self.codecs.get(r.codec).clone(),
            payload: r.payload.clone(),
            metadata: r.metadata.clone(),
            recorded_at: micros_to_time(r.recorded_at),
        }
    }

    /// Whether the record at `r` passes `filter`, without materializing it.
    fn matches(&self, r: &Record, filter: &FeedFilter) -> bool {
        let stream = &self.streams[r.stream as usize].id;
        (filter.event_types.is_empty()
            || filter
                .event_types
                .iter()
                .any(|t| t.as_str() == self.event_types.get(r.event_type).as_str()))
            && (filter.streams.is_empty() || filter.streams.contains(stream))
            && (filter.categories.is_empty()
                || filter.categories.iter().any(|c| c == stream.category()))
    }

    /// The events stored under the append's ids, in append order, stopping at the first
    /// id that is not stored.
    fn stored_for(&self, events: &[NewEvent]) -> Vec<StoredEvent> {
        events
            .iter()
            .map_while(|e| self.ids.get(&e.id).map(|i| self.event(i)))
            .collect()
    }
}

fn micros_to_time(micros: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

impl MemoryStore {
    /// An empty store with default limits.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    /// An empty store with the given limits.
    pub fn with_limits(limits: StoreLimits) -> Self {
        MemoryStore {
            inner: Arc::new(Inner {
                limits,
                ..Inner::default()
            }),
        }
    }

    /// An empty store whose appends also write the outbox messages `outbox` routes, in
    /// the same critical section as the events (see [`crate::outbox`]).
    pub fn with_outbox(outbox: Outbox) -> Self {
        MemoryStore {
            inner: Arc::new(Inner {
                outbox: Some((outbox, MemoryOutboxStore::new())),
                ..Inner::default()
            }),
        }
    }

    /// A builder for a store with limits, an outbox and inline projections.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder::default()
    }

    /// The outbox messages of a store made with [`MemoryStore::with_outbox`].
    pub fn outbox_store(&self) -> Option<MemoryOutboxStore> {
        self.inner.outbox.as_ref().map(|(_, s)| s.clone())
    }

    /// Number of events stored.
    pub fn event_count(&self) -> usize {
        self.inner.state.read().log.len()
    }

    /// Number of streams.
    pub fn stream_count(&self) -> usize {
        self.inner.state.read().streams.len()
    }

    /// Replaces the payload of a stored event, behind the store's normal paths.
    ///
    /// This exists to simulate storage corruption in tests; it returns false when no
    /// event has that stream and version.
    pub fn tamper_payload(&self, stream: &StreamId, version: u64, payload: bytes::Bytes) -> bool {
        let mut st = self.inner.state.write();
        let idx = st
            .stream(stream)
            .and_then(|s| s.events.get((version as usize).wrapping_sub(1)).copied());
        match idx {
            Some(i) => {
                st.log.get_mut(i).payload = payload;
                true
            }
            None => false,
        }
    }
}

impl StreamWriter for MemoryStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        validate_append_fields(stream, &events, &self.inner.limits)?;
        let result = {
            let mut guard = self.inner.state.write();
            let st = &mut *guard;

            if st.ids.contains(&events[0].id) {
                let stored = st.stored_for(&events);
                check_idempotent_repeat(stream, expected, &events, &stored)?;
                return Ok(AppendResult {
                    stream_id: stream.clone(),
                    events: stored,
                    version: st.stream_version(stream),
                    deduplicated: true,
                });
            }

            let stream_no = st.stream_index.get(stream).copied();
            let current = stream_no.map_or(0, |n| st.streams[n as usize].events.len() as u64);
            if !expected.accepts(current) {
                return Err(Error::Conflict {
                    stream: stream.clone(),
                    expected,
                    actual: current,
                });
            }

            // Claim the ids; an id already stored (or given twice) undoes the claims.
            let first_index = st.log.len();
            let n = events.len();
            for (i, e) in events.iter().enumerate() {
                if let Some(prev) = st.ids.insert(e.id, first_index + i) {
                    for undo in events[..i].iter().rev() {
                        st.ids.remove(&undo.id);
                    }
                    if events[..i].iter().any(|u| u.id == e.id) {
                        return Err(Error::DuplicateEventIdInAppend {
                            event_id: e.id,
                            stream: stream.clone(),
                        });
                    }
                    let existing = st.event(prev);
                    return Err(Error::DuplicateEventId {
                        event_id: e.id,
                        stream: stream.clone(),
                        existing_stream: existing.stream_id,
                        existing_version: existing.version,
                    });
                }
            }

            let recorded_at = crate::event::now_coarse();
            let stored: Vec<StoredEvent> = events
                .into_iter()
                .enumerate()
                .map(|(i, e)| StoredEvent {
                    id: e.id,
                    stream_id: stream.clone(),
                    version: current + 1 + i as u64,
                    position: Position::new(0, (first_index + i) as u64 + 1),
                    event_type: e.event_type,
                    schema_version: e.schema_version,
                    codec: e.codec,
                    payload: e.payload,
                    metadata: e.metadata,
                    recorded_at,
                })
                .collect();
            // Outbox messages are made before anything is stored: a failing route
            // fails the append, which then leaves no trace.
            let messages = match &self.inner.outbox {
                Some((outbox, _)) => match outbox.messages_for(&stored) {
                    Ok(m) => m,
                    Err(e) => {
                        for undo in stored.iter().rev() {
                            st.ids.remove(&undo.id);
                        }
                        return Err(e);
                    }
                },
                None => Vec::new(),
            };
            // Inline projections run last before anything is stored (nothing can fail
            // after them): a failure leaves no trace.
            for p in &self.inner.inline {
                if let Err(source) = p.apply(&stored) {
                    for undo in stored.iter().rev() {
                        st.ids.remove(&undo.id);
                    }
                    return Err(Error::InlineProjection {
                        projection: p.name().to_owned(),
                        stream: stream.clone(),
                        source,
                    });
                }
            }

            let stream_no = match stream_no {
                Some(n) => n,
                None => {
                    let n = st.streams.len() as u32;
                    st.streams.push(Stream {
                        id: stream.clone(),
                        events: Vec::new(),
                    });
                    st.stream_index.insert(stream.clone(), n);
                    n
                }
            };
            let micros = recorded_at.timestamp_micros();
            for e in &stored {
                let record = Record {
                    id: e.id,
                    stream: stream_no,
                    event_type: st.event_types.intern(e.event_type.clone()),
                    codec: st.codecs.intern(e.codec.clone()),
                    schema_version: e.schema_version,
                    version: e.version,
                    payload: e.payload.clone(),
                    metadata: e.metadata.clone(),
                    recorded_at: micros,
                };
                st.log.push(record);
            }
            st.streams[stream_no as usize]
                .events
                .extend(first_index..first_index + n);
            if let Some((_, outbox)) = &self.inner.outbox {
                outbox.push(messages);
            }
            AppendResult {
                stream_id: stream.clone(),
                events: stored,
                version: current + n as u64,
                deduplicated: false,
            }
        };
        self.inner.notifier.notify();
        Ok(result)
    }
}

impl StreamReader for MemoryStore {
    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>> {
        let st = self.inner.state.read();
        let Some(s) = st.stream(stream) else {
            return Ok(Vec::new());
        };
        let skip = usize::try_from(from_version.saturating_sub(1)).unwrap_or(usize::MAX);
        Ok(s.events
            .iter()
            .skip(skip)
            .take(limit)
            .map(|&i| st.event(i))
            .collect())
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64> {
        Ok(self.inner.state.read().stream_version(stream))
    }

    async fn stream_info(&self, stream: &StreamId) -> Result<Option<StreamInfo>> {
        let st = self.inner.state.read();
        Ok(st.stream(stream).and_then(|s| {
            let first = st.log.get(*s.events.first()?);
            let last = st.log.get(*s.events.last()?);
            Some(StreamInfo {
                stream_id: stream.clone(),
                version: last.version,
                created_at: micros_to_time(first.recorded_at),
                updated_at: micros_to_time(last.recorded_at),
            })
        }))
    }
}

impl FeedReader for MemoryStore {
    async fn read_feed(
        &self,
        after: Position,
        limit: usize,
        filter: &FeedFilter,
    ) -> Result<FeedPage> {
        let st = self.inner.state.read();
        // Positions are (0, n) with n = index + 1; any position with a major part is
        // past every event of this store.
        let start = if after.major() > 0 {
            st.log.len()
        } else {
            usize::try_from(after.minor())
                .unwrap_or(usize::MAX)
                .min(st.log.len())
        };
        let mut events = Vec::new();
        let mut next = after;
        for (i, r) in st.log.iter_from(start).enumerate() {
            if events.len() >= limit {
                break;
            }
            let index = start + i;
            next = Position::new(0, index as u64 + 1);
            if filter.is_empty() || st.matches(r, filter) {
                events.push(st.event(index));
            }
        }
        Ok(FeedPage { events, next })
    }

    async fn head_position(&self) -> Result<Position> {
        Ok(Position::new(0, self.inner.state.read().log.len() as u64))
    }

    fn feed_signal(&self) -> FeedSignal {
        self.inner.notifier.signal()
    }
}

impl SnapshotStore for MemoryStore {
    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        let mut map = self.inner.snapshots.lock();
        match map.get(&snapshot.stream_id) {
            Some(existing) if existing.version > snapshot.version => {}
            _ => {
                map.insert(snapshot.stream_id.clone(), snapshot);
            }
        }
        Ok(())
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>> {
        Ok(self.inner.snapshots.lock().get(stream).cloned())
    }

    async fn delete_snapshot(&self, stream: &StreamId) -> Result<()> {
        self.inner.snapshots.lock().remove(stream);
        Ok(())
    }
}

impl CheckpointStore for MemoryStore {
    async fn load_checkpoint(&self, name: &str) -> Result<Option<Position>> {
        Ok(self.inner.checkpoints.lock().get(name).copied())
    }

    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<()> {
        self.inner
            .checkpoints
            .lock()
            .insert(name.to_owned(), position);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The index agrees with a plain map whatever the order of ids, including
        /// batches that are undone.
        #[test]
        fn id_index_matches_a_map(ops in prop::collection::vec((any::<u8>(), any::<bool>(), 1usize..4), 1..200)) {
            let mut index = IdIndex::default();
            let mut model: std::collections::HashMap<EventId, usize> = Default::default();
            let mut next = 0usize;
            for (seed, fresh, batch) in ops {
                // Either increasing fresh ids, or ids from a small pool (collisions).
                let ids: Vec<EventId> = (0..batch)
                    .map(|k| if fresh {
                        EventId::new()
                    } else {
                        EventId::from_uuid(uuid::Uuid::from_u128(u128::from(seed.wrapping_add(k as u8))))
                    })
                    .collect();
                let mut inserted = Vec::new();
                let mut failed = false;
                for id in &ids {
                    let expected = model.get(id).copied().or_else(|| inserted.iter().position(|x| x == id).map(|_| usize::MAX));
                    match index.insert(*id, next) {
                        Some(_) => {
                            prop_assert!(expected.is_some());
                            failed = true;
                            break;
                        }
                        None => {
                            prop_assert!(expected.is_none());
                            inserted.push(*id);
                            next += 1;
                        }
                    }
                }
                if failed {
                    for id in inserted.iter().rev() {
                        index.remove(id);
                    }
                    next -= inserted.len();
                } else {
                    let start = next - inserted.len();
                    for (k, id) in inserted.iter().enumerate() {
                        model.insert(*id, start + k);
                    }
                }
                for (id, at) in &model {
                    prop_assert_eq!(index.get(id), Some(*at));
                }
            }
        }
    }
}
