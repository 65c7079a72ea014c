//! Aggregates: domain state rebuilt from its events, and the root that tracks what is
//! new.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, EventId, Result, StreamId};

/// A domain event type: a serde enum whose variants are the event types (see
/// [`crate::codec`]). Implemented for every such type.
pub trait DomainEvent: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The stable type name of this event (its variant's serde name).
    ///
    /// # Errors
    /// When the type is not an enum.
    fn event_type(&self) -> Result<&'static str> {
        crate::codec::event_type_of(self).map_err(|source| Error::Encode {
            what: std::any::type_name::<Self>().to_owned(),
            source,
        })
    }

    /// Every type name this event enum declares.
    fn event_types() -> &'static [&'static str] {
        crate::codec::event_type_names::<Self>()
    }
}

impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> DomainEvent for T {}

/// Domain state that is rebuilt by applying its events in order.
///
/// ```
/// use mink_es::Aggregate;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
/// enum CounterEvent {
///     #[serde(rename = "Incremented")]
///     Incremented { by: u64 },
/// }
///
/// #[derive(Default, Serialize, Deserialize)]
/// struct Counter { total: u64 }
///
/// impl Aggregate for Counter {
///     const TYPE: &'static str = "Counter";
///     type Event = CounterEvent;
///     fn apply(&mut self, event: &CounterEvent) {
///         match event {
///             CounterEvent::Incremented { by } => self.total += by,
///         }
///     }
/// }
/// ```
pub trait Aggregate: Default + Send + Sync + 'static {
    /// The stable aggregate type name. It is the category of the aggregate's streams
    /// (`"{TYPE}-{id}"`), so it must not contain `-`.
    const TYPE: &'static str;

    /// The version of this type's state shape, recorded with snapshots. Bump it when
    /// the state changes shape: older snapshots are then ignored and the aggregate is
    /// rebuilt from its events.
    const SNAPSHOT_VERSION: u32 = 1;

    /// The aggregate's event type: a serde enum ([`DomainEvent`]) with the default
    /// codec, or any type an [`EventCodec`](crate::codec::EventCodec) handles (such as
    /// Protobuf events).
    type Event: Send + Sync + 'static;

    /// Folds one event into the state. It must not fail: events are facts that
    /// already happened; validation belongs in the code that decides on new events.
    fn apply(&mut self, event: &Self::Event);
}

/// An aggregate instance: its id, state, persisted version and the events recorded
/// since it was loaded.
///
/// `version` counts only persisted events: recording new events changes the state
/// but not the version, which is what the next save expects to find in the store.
pub struct AggregateRoot<A: Aggregate> {
    id: String,
    stream_id: StreamId,
    state: A,
    version: u64,
    uncommitted: Vec<(EventId, A::Event)>,
    snapshot_version: u64,
}

impl<A: Aggregate> AggregateRoot<A> {
    /// A new, empty aggregate with this id (at version 0, not yet stored).
    ///
    /// # Errors
    /// [`Error::InvalidStreamId`] when `"{A::TYPE}-{id}"` is not a valid stream id.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        let stream_id = StreamId::for_aggregate(A::TYPE, &id)?;
        Ok(AggregateRoot {
            id,
            stream_id,
            state: A::default(),
            version: 0,
            uncommitted: Vec::new(),
            snapshot_version: 0,
        })
    }

    /// Rebuilds a root from state loaded at `version` (used by repositories).
    pub fn from_parts(
        id: impl Into<String>,
        stream_id: StreamId,
        state: A,
        version: u64,
        snapshot_version: u64,
    ) -> Self {
        AggregateRoot {
            id: id.into(),
            stream_id,
            state,
            version,
            uncommitted: Vec::new(),
            snapshot_version,
        }
    }

    /// The aggregate's id (without the type prefix).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The aggregate's stream.
    pub fn stream_id(&self) -> &StreamId {
        &self.stream_id
    }

    /// The current state, including recorded but unsaved events.
    pub fn state(&self) -> &A {
        &self.state
    }

    /// The number of the last persisted event (0 when nothing is stored).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// True when the aggregate has no persisted and no recorded events.
    pub fn is_new(&self) -> bool {
        self.version == 0 && self.uncommitted.is_empty()
    }

    /// The events recorded since loading, not yet saved.
    pub fn uncommitted(&self) -> impl ExactSizeIterator<Item = &A::Event> {
        self.uncommitted.iter().map(|(_, e)| e)
    }

    /// The recorded events with the ids they will be stored under. The ids are fixed
    /// when an event is recorded, so retrying a failed save is idempotent.
    pub fn uncommitted_with_ids(&self) -> &[(EventId, A::Event)] {
        &self.uncommitted
    }

    /// Applies a new event to the state and queues it for saving.
    pub fn record(&mut self, event: A::Event) {
        self.state.apply(&event);
        self.uncommitted.push((EventId::new(), event));
    }

    /// Records each event in turn.
    pub fn record_all(&mut self, events: impl IntoIterator<Item = A::Event>) {
        for e in events {
            self.record(e);
        }
    }

    /// Runs a decision against the current state and records the events it returns.
    ///
    /// ```
    /// # use mink_es::{Aggregate, AggregateRoot};
    /// # #[derive(serde::Serialize, serde::Deserialize, Clone, Debug)]
    /// # enum Ev { #[serde(rename = "Opened")] Opened }
    /// # #[derive(Default)] struct Acc { open: bool }
    /// # impl Aggregate for Acc {
    /// #     const TYPE: &'static str = "Acc"; type Event = Ev;
    /// #     fn apply(&mut self, _: &Ev) { self.open = true; }
    /// # }
    /// let mut acc = AggregateRoot::<Acc>::new("1").unwrap();
    /// acc.decide(|s| if s.open { Err("already open") } else { Ok(vec![Ev::Opened]) }).unwrap();
    /// assert!(acc.state().open);
    /// assert!(acc.decide(|s| if s.open { Err("already open") } else { Ok(vec![Ev::Opened]) }).is_err());
    /// ```
    pub fn decide<E>(
        &mut self,
        decision: impl FnOnce(&A) -> std::result::Result<Vec<A::Event>, E>,
    ) -> std::result::Result<(), E> {
        let events = decision(&self.state)?;
        self.record_all(events);
        Ok(())
    }

    /// Marks the recorded events as persisted at `new_version` (used by repositories).
    pub fn mark_saved(&mut self, new_version: u64) {
        self.version = new_version;
        self.uncommitted.clear();
    }

    /// The version of the last snapshot the repository knows of.
    pub fn snapshot_version(&self) -> u64 {
        self.snapshot_version
    }

    /// Records that a snapshot was taken at `version` (used by repositories).
    pub fn mark_snapshot(&mut self, version: u64) {
        self.snapshot_version = version;
    }

    /// Consumes the root, returning its state.
    pub fn into_state(self) -> A {
        self.state
    }
}

impl<A: Aggregate + std::fmt::Debug> std::fmt::Debug for AggregateRoot<A>
where
    A::Event: std::fmt::Debug,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AggregateRoot")
            .field("stream_id", &self.stream_id)
            .field("version", &self.version)
            .field("state", &self.state)
            .field("uncommitted", &self.uncommitted)
            .finish()
    }
}
