//! The transactional outbox: events reach other systems exactly when they are stored.
//!
//! * **Routes** map event types (or categories, or everything) to destinations, with an
//!   optional transform. A store configured with an [`Outbox`] writes the routed
//!   messages in the same transaction as the events (memory: under the same lock), so a
//!   message exists if and only if its event does. A failing route or transform fails
//!   the append, and nothing is written.
//! * Each [`OutboxMessage`] has a stable id derived from its event id and destination
//!   (receivers de-duplicate on it), the stream id as ordering key, and the event's
//!   metadata (trace context included).
//! * An [`OutboxProcessor`] claims messages from an
//!   [`OutboxStore`] with a lease, hands them to a
//!   [`Publisher`] per destination, and acknowledges or retries
//!   each message on its own, with exponential backoff and jitter, until an attempt
//!   limit moves it to the dead-letter queue. Messages of one stream are delivered in
//!   order: a failing message holds back the later ones of its stream, not the others.
//!   Delivery is at least once.
//! * What every publisher shares: the [`headers`] a message is sent with (one set of
//!   names for every transport) and the content type of each codec, and the
//!   [`Template`] of destination names (NATS subjects, RabbitMQ routing keys, Kafka
//!   topics).

pub mod headers;
pub mod processor;
pub mod publisher;
pub mod store;
pub mod template;

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    BoxError, CodecTag, Error, EventId, Metadata, Position, Result, StoredEvent, StreamId,
};

pub use headers::ContentTypes;
pub use processor::{OutboxProcessor, ProcessorConfig};
pub use publisher::{PublishError, Publisher};
pub use store::{Claimed, DeadLetter, MessageStatus, OutboxCounts, OutboxStore};
pub use template::{Part, Placeholder, Template, TemplateError};

/// One message to deliver to one destination.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutboxMessage {
    /// Stable: derived from the event id and the destination, so a redelivery carries the
    /// same id and receivers can de-duplicate.
    pub id: Uuid,
    /// The route's destination name (which publisher delivers it).
    pub destination: String,
    /// The event's stream: the ordering key (a Kafka key, an SNS message group).
    pub stream_id: StreamId,
    /// The event.
    pub event_id: EventId,
    /// The event's type name.
    pub event_type: String,
    /// The event's version in its stream.
    pub stream_version: u64,
    /// The event's position in the store's feed.
    pub position: Position,
    /// The message body (the event's payload, or what the route's transform made of it).
    pub payload: Bytes,
    /// The codec of the body.
    pub codec: CodecTag,
    /// The event's metadata: correlation, causation, user, tenant, trace context.
    /// Publishers send it, with the fields above, as the standard
    /// [`headers`](OutboxMessage::headers).
    pub metadata: Metadata,
    /// When the event was recorded.
    pub created_at: DateTime<Utc>,
}

impl OutboxMessage {
    /// The message id for an event sent to a destination.
    pub fn id_for(event_id: EventId, destination: &str) -> Uuid {
        Uuid::new_v5(event_id.as_uuid(), destination.as_bytes())
    }

    /// The message for `event`, unchanged, to `destination`.
    pub fn from_event(event: &StoredEvent, destination: &str) -> Self {
        OutboxMessage {
            id: OutboxMessage::id_for(event.id, destination),
            destination: destination.to_owned(),
            stream_id: event.stream_id.clone(),
            event_id: event.id,
            event_type: event.event_type.to_string(),
            stream_version: event.version,
            position: event.position,
            payload: event.payload.clone(),
            codec: event.codec.clone(),
            metadata: event.metadata.clone(),
            created_at: event.recorded_at,
        }
    }
}

/// Which events a route takes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Match {
    /// Every event.
    #[default]
    All,
    /// Events of these types.
    EventTypes(Vec<String>),
    /// Events of streams of these categories.
    Categories(Vec<String>),
}

impl Match {
    fn matches(&self, e: &StoredEvent) -> bool {
        match self {
            Match::All => true,
            Match::EventTypes(t) => t.iter().any(|t| t == e.event_type.as_str()),
            Match::Categories(c) => c.iter().any(|c| c == e.category()),
        }
    }
}

/// Turns a routed event into its message body, or `None` to send nothing for it.
type Transform =
    Arc<dyn Fn(&StoredEvent) -> Result<Option<(Bytes, CodecTag)>, BoxError> + Send + Sync>;

/// A route: which events go to which destination, and how they are shaped.
#[derive(Clone)]
pub struct Route {
    destination: String,
    matches: Match,
    transform: Option<Transform>,
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("destination", &self.destination)
            .field("matches", &self.matches)
            .field("transform", &self.transform.is_some())
            .finish()
    }
}

impl Route {
    /// Every event to `destination`.
    pub fn all(destination: impl Into<String>) -> Self {
        Route {
            destination: destination.into(),
            matches: Match::All,
            transform: None,
        }
    }

    /// Events of these types to `destination`.
    pub fn event_types(
        destination: impl Into<String>,
        types: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Route {
            destination: destination.into(),
            matches: Match::EventTypes(types.into_iter().map(Into::into).collect()),
            transform: None,
        }
    }

    /// Events of streams of these categories to `destination`.
    pub fn categories(
        destination: impl Into<String>,
        categories: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Route {
            destination: destination.into(),
            matches: Match::Categories(categories.into_iter().map(Into::into).collect()),
            transform: None,
        }
    }

    /// Shapes each message: returns the body and its codec, or `None` to send nothing
    /// for this event. An error fails the append.
    pub fn transform(
        mut self,
        f: impl Fn(&StoredEvent) -> Result<Option<(Bytes, CodecTag)>, BoxError> + Send + Sync + 'static,
    ) -> Self {
        self.transform = Some(Arc::new(f));
        self
    }

    /// The destination.
    pub fn destination(&self) -> &str {
        &self.destination
    }

    /// Whether the route shapes its messages with a transform (which may read what only
    /// the store knows once the event is inserted: its position and time). Routes
    /// without one depend only on an event's type and stream.
    pub fn has_transform(&self) -> bool {
        self.transform.is_some()
    }
}

/// The routes of a store's outbox.
#[derive(Clone, Debug, Default)]
pub struct Outbox {
    routes: Vec<Route>,
}

impl Outbox {
    /// No routes yet.
    pub fn new() -> Self {
        Outbox::default()
    }

    /// Adds a route.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty destination name.
    pub fn route(mut self, route: Route) -> Result<Self> {
        if route.destination.trim().is_empty() || route.destination.chars().any(char::is_control) {
            return Err(Error::InvalidArgument(format!(
                "an outbox destination name must be non-empty text without control characters, not {:?}",
                route.destination
            )));
        }
        self.routes.push(route);
        Ok(self)
    }

    /// The routes.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The messages for a batch of just-stored events, in event order then route order.
    ///
    /// # Errors
    /// [`Error::Outbox`] naming the event and destination when a transform fails: the
    /// append must then fail too.
    pub fn messages_for(&self, events: &[StoredEvent]) -> Result<Vec<OutboxMessage>> {
        let mut out = Vec::new();
        for e in events {
            for r in &self.routes {
                if !r.matches.matches(e) {
                    continue;
                }
                let mut m = OutboxMessage::from_event(e, &r.destination);
                if let Some(t) = &r.transform {
                    match t(e) {
                        Ok(Some((payload, codec))) => {
                            m.payload = payload;
                            m.codec = codec;
                        }
                        Ok(None) => continue,
                        Err(source) => {
                            return Err(Error::Outbox {
                                stream: e.stream_id.clone(),
                                version: e.version,
                                event_type: e.event_type.to_string(),
                                destination: r.destination.clone(),
                                source,
                            });
                        }
                    }
                }
                out.push(m);
            }
        }
        Ok(out)
    }
}
