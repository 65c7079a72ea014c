//! The aggregate repository: load by replaying (from a snapshot when there is one) and
//! save with optimistic concurrency.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{Codec, EventCodec, JsonCodec, SerdeEvents};
use crate::replay::{EventDecoder, ReplayMode, UnknownTypes};
use crate::schema::SchemaRegistry;
use crate::snapshot::{Snapshot, SnapshotContext, SnapshotPolicy, SnapshotStore};
use crate::store::{AppendResult, EventStore};
use crate::{
    Aggregate, AggregateRoot, DomainEvent, Error, ExpectedVersion, Metadata, NewEvent, Result,
    StreamId, now_micros,
};

/// How a repository uses snapshots. [`NoSnapshots`] and [`Snapshotting`] implement it.
pub trait SnapshotStrategy<A: Aggregate>: Send + Sync {
    /// The latest usable snapshot of `stream`: its state and version. Snapshots of
    /// another aggregate type or state shape, or that fail to decode, are ignored.
    fn load(&self, stream: &StreamId) -> impl Future<Output = Result<Option<(A, u64)>>> + Send;

    /// Called after a successful save; takes a snapshot if the policy says so.
    fn after_save(
        &self,
        root: &mut AggregateRoot<A>,
        previous_version: u64,
    ) -> impl Future<Output = ()> + Send;
}

/// Never snapshot.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoSnapshots;

impl<A: Aggregate> SnapshotStrategy<A> for NoSnapshots {
    async fn load(&self, _stream: &StreamId) -> Result<Option<(A, u64)>> {
        Ok(None)
    }

    async fn after_save(&self, _root: &mut AggregateRoot<A>, _previous_version: u64) {}
}

/// Snapshot into a [`SnapshotStore`] by a [`SnapshotPolicy`].
#[derive(Clone, Debug)]
pub struct Snapshotting<SS, C = JsonCodec> {
    store: SS,
    policy: SnapshotPolicy,
    codec: C,
}

impl<SS, C> Snapshotting<SS, C> {
    /// A strategy storing in `store`, by `policy`, encoding with `codec`.
    pub fn new(store: SS, policy: SnapshotPolicy, codec: C) -> Self {
        Snapshotting {
            store,
            policy,
            codec,
        }
    }
}

impl<A, SS, C> SnapshotStrategy<A> for Snapshotting<SS, C>
where
    A: Aggregate + Serialize + DeserializeOwned,
    SS: SnapshotStore,
    C: Codec,
{
    async fn load(&self, stream: &StreamId) -> Result<Option<(A, u64)>> {
        let Some(snap) = self.store.load_snapshot(stream).await? else {
            return Ok(None);
        };
        let reason = if snap.aggregate_type != A::TYPE {
            Some(format!("it is of aggregate type {:?}", snap.aggregate_type))
        } else if snap.schema_version != A::SNAPSHOT_VERSION {
            Some(format!(
                "its schema version is {}, the code's is {}",
                snap.schema_version,
                A::SNAPSHOT_VERSION
            ))
        } else if snap.codec != self.codec.tag() {
            Some(format!(
                "it was written with codec {:?}",
                snap.codec.as_str()
            ))
        } else {
            None
        };
        if let Some(reason) = reason {
            tracing::info!(stream = %stream, version = snap.version, %reason, "ignoring snapshot; replaying from the start");
            metrics::counter!("mink_snapshots_ignored_total", "aggregate_type" => A::TYPE)
                .increment(1);
            return Ok(None);
        }
        match self.codec.decode::<A>(&snap.payload) {
            Ok(state) => Ok(Some((state, snap.version))),
            Err(e) => {
                tracing::warn!(stream = %stream, version = snap.version, error = %e, "ignoring undecodable snapshot; replaying from the start");
                metrics::counter!("mink_snapshots_ignored_total", "aggregate_type" => A::TYPE)
                    .increment(1);
                Ok(None)
            }
        }
    }

    async fn after_save(&self, root: &mut AggregateRoot<A>, previous_version: u64) {
        let ctx = SnapshotContext {
            previous_version,
            version: root.version(),
            events_since_snapshot: root.version() - root.snapshot_version().min(root.version()),
        };
        if !self.policy.should_snapshot(&ctx) {
            return;
        }
        let payload = match self.codec.encode(root.state()) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(stream = %root.stream_id(), error = %e, "cannot encode snapshot; continuing without it");
                return;
            }
        };
        let snapshot = Snapshot {
            stream_id: root.stream_id().clone(),
            aggregate_type: A::TYPE.to_owned(),
            version: root.version(),
            schema_version: A::SNAPSHOT_VERSION,
            codec: self.codec.tag(),
            payload: payload.into(),
            taken_at: now_micros(),
        };
        match self.store.save_snapshot(snapshot).await {
            Ok(()) => root.mark_snapshot(root.version()),
            // The events are committed; a missing snapshot only costs a longer replay.
            Err(e) => {
                tracing::warn!(stream = %root.stream_id(), error = %e, "cannot save snapshot; continuing without it")
            }
        }
    }
}

/// Loads and saves aggregates of type `A` in store `S`.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// # use mink_es::Aggregate;
/// # #[derive(serde::Serialize, serde::Deserialize, Clone, Debug)]
/// # enum Ev { #[serde(rename = "Added")] Added(u64) }
/// # #[derive(Default, serde::Serialize, serde::Deserialize)] struct Sum(u64);
/// # impl Aggregate for Sum {
/// #     const TYPE: &'static str = "Sum"; type Event = Ev;
/// #     fn apply(&mut self, Ev::Added(n): &Ev) { self.0 += n; }
/// # }
/// use mink_es::{MemoryStore, Repository, SnapshotPolicy};
/// let store = MemoryStore::new();
/// let repo = Repository::<Sum, _>::new(store.clone())
///     .with_snapshots(store, SnapshotPolicy::every(100));
/// let mut sum = repo.load("a").await?;
/// sum.record(Ev::Added(2));
/// repo.save(&mut sum).await?;
/// assert_eq!(repo.load("a").await?.state().0, 2);
/// # Ok::<(), mink_es::Error>(())
/// # });
/// ```
pub struct Repository<A: Aggregate, S, C = SerdeEvents, Snap = NoSnapshots> {
    store: S,
    codec: C,
    snapshots: Snap,
    decoder: EventDecoder<A::Event, C>,
    schema: Arc<SchemaRegistry>,
    page_size: usize,
    _a: PhantomData<fn() -> A>,
}

impl<A: Aggregate, S: EventStore> Repository<A, S>
where
    A::Event: DomainEvent,
{
    /// A repository that writes JSON (and reads JSON and MessagePack), with strict
    /// replay, no upcasting and no snapshots.
    pub fn new(store: S) -> Self {
        Repository::with_event_codec(store, SerdeEvents::default())
    }
}

impl<A: Aggregate, S: EventStore, C: EventCodec<A::Event>> Repository<A, S, C> {
    /// A repository with any event codec (for example [`SerdeEvents`] writing
    /// MessagePack, or Protobuf events).
    pub fn with_event_codec(store: S, codec: C) -> Self {
        Repository {
            store,
            decoder: EventDecoder::new(codec.clone(), ReplayMode::Strict),
            codec,
            snapshots: NoSnapshots,
            schema: Arc::new(SchemaRegistry::empty()),
            page_size: 4096,
            _a: PhantomData,
        }
    }
}

impl<A: Aggregate, S: EventStore, C: EventCodec<A::Event>, Snap: SnapshotStrategy<A>>
    Repository<A, S, C, Snap>
{
    /// Uses another event codec.
    pub fn with_codec<C2: EventCodec<A::Event>>(self, codec: C2) -> Repository<A, S, C2, Snap> {
        let decoder =
            EventDecoder::new(codec.clone(), self.decoder.mode()).with_schema(self.schema.clone());
        Repository {
            store: self.store,
            decoder,
            codec,
            snapshots: self.snapshots,
            schema: self.schema,
            page_size: self.page_size,
            _a: PhantomData,
        }
    }

    /// Sets the replay mode for unknown event types (strict by default).
    pub fn with_replay_mode(mut self, mode: ReplayMode) -> Self {
        self.decoder = EventDecoder::new(self.codec.clone(), mode).with_schema(self.schema.clone());
        self
    }

    /// Uses a schema registry: saves stamp each event with its type's current version,
    /// loads upcast older events to today's shape.
    pub fn with_schema(mut self, schema: Arc<SchemaRegistry>) -> Self {
        self.decoder = self.decoder.with_schema(schema.clone());
        self.schema = schema;
        self
    }

    /// Takes snapshots into `store` by `policy`, encoded as JSON.
    pub fn with_snapshots<SS: SnapshotStore>(
        self,
        store: SS,
        policy: SnapshotPolicy,
    ) -> Repository<A, S, C, Snapshotting<SS, JsonCodec>>
    where
        A: Serialize + DeserializeOwned,
    {
        self.with_snapshot_strategy(Snapshotting::new(store, policy, JsonCodec))
    }

    /// Uses any snapshot strategy.
    pub fn with_snapshot_strategy<Snap2: SnapshotStrategy<A>>(
        self,
        snapshots: Snap2,
    ) -> Repository<A, S, C, Snap2> {
        Repository {
            store: self.store,
            codec: self.codec,
            snapshots,
            decoder: self.decoder,
            schema: self.schema,
            page_size: self.page_size,
            _a: PhantomData,
        }
    }

    /// Events read per store call while loading (default 4096).
    pub fn with_page_size(mut self, n: usize) -> Self {
        self.page_size = n.max(1);
        self
    }

    /// The underlying store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Unknown event types skipped in lenient mode, with counts.
    pub fn unknown_event_types(&self) -> &Arc<UnknownTypes> {
        self.decoder.unknown_types()
    }

    /// The stream id of the aggregate with this id.
    pub fn stream_id(&self, id: &str) -> Result<StreamId> {
        StreamId::for_aggregate(A::TYPE, id)
    }

    /// Loads an aggregate: from its latest usable snapshot plus the events after it, or
    /// from all its events. An aggregate with no events loads as new (version 0).
    pub async fn load(&self, id: &str) -> Result<AggregateRoot<A>> {
        let stream = self.stream_id(id)?;
        let (mut state, snapshot_version) = match self.snapshots.load(&stream).await? {
            Some((state, v)) => (state, v),
            None => (A::default(), 0),
        };
        let mut version = snapshot_version;
        loop {
            let events = self
                .store
                .read_stream(&stream, version + 1, self.page_size)
                .await?;
            let n = events.len();
            for stored in &events {
                self.decoder
                    .decode_each(stored, |event| state.apply(&event))?;
                version = stored.version;
            }
            if n < self.page_size {
                break;
            }
        }
        Ok(AggregateRoot::from_parts(
            id,
            stream,
            state,
            version,
            snapshot_version,
        ))
    }

    /// Saves the recorded events, expecting the stream to be at the version the
    /// aggregate was loaded at. See [`Repository::save_with_metadata`].
    pub async fn save(&self, root: &mut AggregateRoot<A>) -> Result<AppendResult> {
        self.save_with_metadata(root, &Metadata::default()).await
    }

    /// Saves the recorded events with `metadata` on each.
    ///
    /// Inside a command handler, the command's event metadata (correlation, causation,
    /// user, tenant) fills whatever `metadata` leaves unset (see
    /// [`crate::command::ambient_metadata`]).
    ///
    /// On [`Error::Conflict`] another writer got there first: reload and decide again.
    /// Each recorded event keeps its id across attempts, so retrying after a transient
    /// failure cannot store the events twice. Saving with nothing recorded is a no-op.
    pub async fn save_with_metadata(
        &self,
        root: &mut AggregateRoot<A>,
        metadata: &Metadata,
    ) -> Result<AppendResult> {
        let previous = root.version();
        if root.uncommitted_with_ids().is_empty() {
            return Ok(AppendResult {
                stream_id: root.stream_id().clone(),
                events: Vec::new(),
                version: previous,
                deduplicated: false,
            });
        }
        let mut metadata = metadata.clone();
        if let Some(ambient) = crate::command::ambient_metadata() {
            metadata.merge_defaults(&ambient);
        }
        let events = root
            .uncommitted_with_ids()
            .iter()
            .map(|(id, event)| {
                let encoded = self.codec.encode(event).map_err(|source| Error::Encode {
                    what: format!("an event of aggregate {}", A::TYPE),
                    source,
                })?;
                let version = self.schema.current_version(encoded.event_type);
                Ok(NewEvent::new(encoded.event_type, encoded.payload)
                    .with_id(*id)
                    .with_codec(encoded.codec)
                    .with_schema_version(version)
                    .with_metadata(metadata.clone()))
            })
            .collect::<Result<Vec<_>>>()?;
        let result = self
            .store
            .append(
                root.stream_id(),
                ExpectedVersion::from_version(previous),
                events,
            )
            .await?;
        root.mark_saved(result.version);
        self.snapshots.after_save(root, previous).await;
        Ok(result)
    }
}
