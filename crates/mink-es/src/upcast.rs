//! A store layer that upcasts every event it reads.
//!
//! [`Upcasting`] wraps any store and passes every stream read and feed read through a
//! [`SchemaRegistry`], so that subscriptions, projections and any other reader of the
//! wrapped store see events in today's shape, the same shape an aggregate load sees.
//! It implements every store trait of what it wraps, so it can stand wherever the store
//! stood.
//!
//! An upcaster may rename, split or drop events. A split event's parts keep the stored
//! event's stream version and position (the first part keeps its id; the others get
//! ids derived from it), so a stream read through the layer may show a version twice
//! or skip one; subscriptions checkpoint only after every part of a position. Feed
//! filters on event types also match stored types that upcasters turn into them.

use std::sync::Arc;

use uuid::Uuid;

use crate::codec::Document;
use crate::schema::{SchemaRegistry, Upcastable};
use crate::snapshot::{CheckpointStore, Snapshot, SnapshotStore};
use crate::store::{
    AppendResult, FeedFilter, FeedPage, FeedReader, FeedSignal, StreamInfo, StreamReader,
    StreamWriter,
};
use crate::{
    Error, EventId, EventType, ExpectedVersion, NewEvent, Position, Result, StoredEvent, StreamId,
};

/// A store whose reads are upcast through a schema registry (see the
/// [module docs](self)).
#[derive(Clone, Debug)]
pub struct Upcasting<S> {
    inner: S,
    schema: Arc<SchemaRegistry>,
}

impl<S> Upcasting<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, schema: Arc<SchemaRegistry>) -> Self {
        Upcasting { inner, schema }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The registry.
    pub fn schema(&self) -> &Arc<SchemaRegistry> {
        &self.schema
    }

    fn upcast_into(&self, event: StoredEvent, out: &mut Vec<StoredEvent>) -> Result<()> {
        upcast_stored(&self.schema, event, out)
    }
}

/// Brings one stored event to today's shape, pushing the result (zero, one or several
/// events) onto `out`.
pub fn upcast_stored(
    schema: &SchemaRegistry,
    event: StoredEvent,
    out: &mut Vec<StoredEvent>,
) -> Result<()> {
    let needs = schema
        .needs_upcast(event.event_type.as_str(), event.schema_version)
        .map_err(|e| event.upcast_error(e))?;
    if !needs {
        out.push(event);
        return Ok(());
    }
    let parts = schema
        .upcast(Upcastable {
            event_type: event.event_type.to_string(),
            schema_version: event.schema_version,
            codec: event.codec.clone(),
            doc: Document::Payload {
                codec: event.codec.clone(),
                bytes: event.payload.clone(),
            },
        })
        .map_err(|e| event.upcast_error(e))?;
    for (i, part) in parts.into_iter().enumerate() {
        let (event_type, schema_version, codec, payload) = part
            .into_payload()
            .map_err(|source| event.decode_error(source))?;
        let id = if i == 0 {
            event.id
        } else {
            EventId::from_uuid(Uuid::new_v5(
                event.id.as_uuid(),
                format!("part-{i}").as_bytes(),
            ))
        };
        out.push(StoredEvent {
            id,
            event_type: EventType::from(event_type),
            schema_version,
            codec,
            payload,
            ..event.clone()
        });
    }
    Ok(())
}

impl<S: StreamWriter> StreamWriter for Upcasting<S> {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        for (i, e) in events.iter().enumerate() {
            let known = self.schema.current_version(e.event_type.as_str());
            if e.schema_version > known {
                return Err(Error::InvalidArgument(format!(
                    "event #{i} of the append to {stream} is {} at schema version {}; the registry knows up to {known}",
                    e.event_type, e.schema_version
                )));
            }
        }
        self.inner.append(stream, expected, events).await
    }
}

impl<S: StreamReader> StreamReader for Upcasting<S> {
    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>> {
        let events = self.inner.read_stream(stream, from_version, limit).await?;
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            self.upcast_into(e, &mut out)?;
        }
        Ok(out)
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64> {
        self.inner.stream_version(stream).await
    }

    async fn stream_info(&self, stream: &StreamId) -> Result<Option<StreamInfo>> {
        self.inner.stream_info(stream).await
    }
}

impl<S: FeedReader> FeedReader for Upcasting<S> {
    async fn read_feed(
        &self,
        after: Position,
        limit: usize,
        filter: &FeedFilter,
    ) -> Result<FeedPage> {
        // Stored events of the types that upcast into a wanted type are wanted too.
        let widened;
        let inner_filter = if filter.event_types.is_empty() {
            filter
        } else {
            let mut f = filter.clone();
            f.event_types.clear();
            for t in &filter.event_types {
                for source in self.schema.sources_of(t.as_str()) {
                    let source = EventType::from(source);
                    if !f.event_types.contains(&source) {
                        f.event_types.push(source);
                    }
                }
            }
            widened = f;
            &widened
        };
        let page = self.inner.read_feed(after, limit, inner_filter).await?;
        let mut events = Vec::with_capacity(page.events.len());
        for e in page.events {
            self.upcast_into(e, &mut events)?;
        }
        if !filter.event_types.is_empty() {
            events.retain(|e| filter.event_types.contains(&e.event_type));
        }
        Ok(FeedPage {
            events,
            next: page.next,
        })
    }

    async fn head_position(&self) -> Result<Position> {
        self.inner.head_position().await
    }

    fn feed_signal(&self) -> FeedSignal {
        self.inner.feed_signal()
    }
}

impl<S: SnapshotStore> SnapshotStore for Upcasting<S> {
    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        self.inner.save_snapshot(snapshot).await
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>> {
        self.inner.load_snapshot(stream).await
    }

    async fn delete_snapshot(&self, stream: &StreamId) -> Result<()> {
        self.inner.delete_snapshot(stream).await
    }
}

impl<S: CheckpointStore> CheckpointStore for Upcasting<S> {
    async fn load_checkpoint(&self, name: &str) -> Result<Option<Position>> {
        self.inner.load_checkpoint(name).await
    }

    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<()> {
        self.inner.save_checkpoint(name, position).await
    }
}
