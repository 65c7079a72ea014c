//! In-memory projection control, and the target for projections with external effects.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use parking_lot::Mutex;

use super::{
    Command, ParkedEvent, Projection, ProjectionControl, ProjectionError, ProjectionStatus,
    ProjectionTarget, ReadModelProjection, Request,
};
use crate::readmodel::{MemoryReadModelStore, Plan, ReadModelStore};
use crate::{CheckpointStore, FeedFilter, Position, Result, StoredEvent};

/// Runs a [`Projection`] with its checkpoint in a [`CheckpointStore`], saved after each
/// applied batch (not atomically with the effect: the projection must be idempotent).
pub struct Checkpointed<P, C> {
    projection: P,
    checkpoints: C,
}

impl<P: Projection, C: CheckpointStore + 'static> Checkpointed<P, C> {
    /// The target for `projection`, checkpointing in `checkpoints`.
    pub fn new(projection: P, checkpoints: C) -> Self {
        Checkpointed {
            projection,
            checkpoints,
        }
    }

    /// The projection.
    pub fn projection(&self) -> &P {
        &self.projection
    }
}

impl<P: Projection, C: CheckpointStore + 'static> ProjectionTarget for Checkpointed<P, C> {
    fn name(&self) -> &str {
        self.projection.name()
    }

    fn filter(&self) -> FeedFilter {
        self.projection.filter()
    }

    fn checkpoint(&self) -> BoxFuture<'_, Result<Option<Position>>> {
        Box::pin(self.checkpoints.load_checkpoint(self.projection.name()))
    }

    fn apply_batch<'a>(
        &'a self,
        events: &'a [StoredEvent],
        checkpoint: Position,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            if !events.is_empty() {
                self.projection.apply(events).await?;
            }
            self.checkpoints
                .save_checkpoint(self.projection.name(), checkpoint)
                .await
                .map_err(ProjectionError::from)
        })
    }

    fn reset(&self, to: Position) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.projection.clear().await?;
            self.checkpoints
                .save_checkpoint(self.projection.name(), to)
                .await
        })
    }
}

/// A [`ReadModelProjection`] over a [`MemoryReadModelStore`], as a [`Projection`]: run it
/// with [`Checkpointed`]. The checkpoint is saved after the effect, so after a crash a
/// batch may be applied again; [`Projection::clear`] empties the projection's models.
pub struct ReadModels<P> {
    projection: P,
    store: MemoryReadModelStore,
}

impl<P: ReadModelProjection> ReadModels<P> {
    /// `projection` writing into `store`; ensures the tables of its models.
    ///
    /// # Errors
    /// What [`ReadModelProjection::models`] or ensuring a table returns.
    pub async fn new(projection: P, store: MemoryReadModelStore) -> Result<Self> {
        for schema in projection.models()? {
            store.ensure_table(&schema).await?;
        }
        Ok(ReadModels { projection, store })
    }

    /// The read models.
    pub fn store(&self) -> &MemoryReadModelStore {
        &self.store
    }
}

impl<P: ReadModelProjection> Projection for ReadModels<P> {
    fn name(&self) -> &str {
        self.projection.name()
    }

    fn filter(&self) -> FeedFilter {
        self.projection.filter()
    }

    fn apply<'a>(
        &'a self,
        events: &'a [StoredEvent],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        self.projection.apply(&self.store, events)
    }

    fn clear(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            for schema in self.projection.models()? {
                self.store
                    .delete_where(&schema, &Plan::everything(&schema))
                    .await?;
            }
            Ok(())
        })
    }
}

#[derive(Default)]
struct State {
    statuses: BTreeMap<String, ProjectionStatus>,
    requests: Vec<(Request, Option<Option<String>>)>,
    next_id: u64,
    parked: HashMap<String, BTreeMap<Position, ParkedEvent>>,
    leases: HashMap<String, (String, DateTime<Utc>)>,
}

/// An in-memory [`ProjectionControl`], for one process and for tests.
#[derive(Clone, Default)]
pub struct MemoryControl {
    state: Arc<Mutex<State>>,
}

impl MemoryControl {
    /// An empty control store.
    pub fn new() -> Self {
        MemoryControl::default()
    }
}

impl ProjectionControl for MemoryControl {
    fn report<'a>(&'a self, status: &'a ProjectionStatus) -> BoxFuture<'a, Result<()>> {
        self.state
            .lock()
            .statuses
            .insert(status.name.clone(), status.clone());
        Box::pin(async { Ok(()) })
    }

    fn statuses(&self) -> BoxFuture<'_, Result<Vec<ProjectionStatus>>> {
        let all = self.state.lock().statuses.values().cloned().collect();
        Box::pin(async move { Ok(all) })
    }

    fn request<'a>(&'a self, name: &'a str, command: Command) -> BoxFuture<'a, Result<u64>> {
        let mut st = self.state.lock();
        st.next_id += 1;
        let id = st.next_id;
        st.requests.push((
            Request {
                id,
                name: name.to_owned(),
                command,
            },
            None,
        ));
        Box::pin(async move { Ok(id) })
    }

    fn pending<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<Request>>> {
        let out = self
            .state
            .lock()
            .requests
            .iter()
            .filter(|(r, done)| r.name == name && done.is_none())
            .map(|(r, _)| r.clone())
            .collect();
        Box::pin(async move { Ok(out) })
    }

    fn complete<'a>(&'a self, id: u64, error: Option<&'a str>) -> BoxFuture<'a, Result<()>> {
        if let Some((_, done)) = self
            .state
            .lock()
            .requests
            .iter_mut()
            .find(|(r, _)| r.id == id)
        {
            *done = Some(error.map(str::to_owned));
        }
        Box::pin(async { Ok(()) })
    }

    fn outcome(&self, id: u64) -> BoxFuture<'_, Result<Option<Option<String>>>> {
        let o = self
            .state
            .lock()
            .requests
            .iter()
            .find(|(r, _)| r.id == id)
            .and_then(|(_, done)| done.clone());
        Box::pin(async move { Ok(o) })
    }

    fn park<'a>(
        &'a self,
        name: &'a str,
        event: &'a StoredEvent,
        error: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        self.state
            .lock()
            .parked
            .entry(name.to_owned())
            .or_default()
            .insert(
                event.position,
                ParkedEvent {
                    projection: name.to_owned(),
                    event: event.clone(),
                    error: error.to_owned(),
                    parked_at: crate::now_micros(),
                },
            );
        Box::pin(async { Ok(()) })
    }

    fn parked<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<ParkedEvent>>> {
        let out = self
            .state
            .lock()
            .parked
            .get(name)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        Box::pin(async move { Ok(out) })
    }

    fn unpark<'a>(&'a self, name: &'a str, positions: &'a [Position]) -> BoxFuture<'a, Result<()>> {
        if let Some(m) = self.state.lock().parked.get_mut(name) {
            for p in positions {
                m.remove(p);
            }
        }
        Box::pin(async { Ok(()) })
    }

    fn acquire<'a>(
        &'a self,
        name: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        let now = Utc::now();
        let until = chrono::Duration::from_std(ttl)
            .ok()
            .and_then(|d| now.checked_add_signed(d))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let mut st = self.state.lock();
        let ok = match st.leases.get(name) {
            Some((holder, expires)) if holder != owner && *expires > now => false,
            _ => {
                st.leases.insert(name.to_owned(), (owner.to_owned(), until));
                true
            }
        };
        Box::pin(async move { Ok(ok) })
    }

    fn release<'a>(&'a self, name: &'a str, owner: &'a str) -> BoxFuture<'a, Result<()>> {
        let mut st = self.state.lock();
        if st
            .leases
            .get(name)
            .is_some_and(|(holder, _)| holder == owner)
        {
            st.leases.remove(name);
        }
        Box::pin(async { Ok(()) })
    }
}
