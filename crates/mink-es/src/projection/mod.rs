//! Projections: read models built from the feed.
//!
//! * An **async projection** is run by a [`ProjectionEngine`]
//!   worker: it reads the gap-safe feed from its checkpoint, applies events in batches to
//!   a [`ProjectionTarget`], and moves the checkpoint with the effect — atomically when
//!   the target can (the SQL adapters' targets commit the read-model change and the
//!   checkpoint in one transaction). Transient errors are retried with backoff and
//!   jitter without using the retry budget; a poison event is retried up to the budget,
//!   then parked (or the projection stops, by [`PoisonPolicy`]). Workers are supervised
//!   and restarted after a crash, shut down on a `CancellationToken`, can run
//!   partitioned by stream, and hold a lease so that one process is active per
//!   projection or partition.
//! * A **live projection** follows new events in process ([`live`]), never blocking
//!   appends, and is told when it lagged.
//! * **Operations** ([`ops::ProjectionOps`]) list status, checkpoint, lag and last error,
//!   and pause, resume, rebuild, reset or replay parked events — through a
//!   [`ProjectionControl`] store, so they work across processes.

pub mod engine;
pub mod live;
pub mod memory;
pub mod ops;
mod worker;

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::readmodel::{ReadModelStore, Schema};
use crate::{BoxError, FeedFilter, Position, Result, StoredEvent, StreamId};

pub use engine::{AsyncOptions, EngineHandle, ProjectionEngine};

/// Why applying events failed.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// May succeed when retried (a lost connection, a lock timeout): retried with
    /// backoff, without using the retry budget.
    #[error("transient projection failure: {0}")]
    Transient(#[source] BoxError),
    /// The events cannot be applied as they are (bad data, a bug): retried up to the
    /// budget, then the offending event is parked.
    #[error("projection failure: {0}")]
    Poison(#[source] BoxError),
}

impl ProjectionError {
    /// A transient error from anything.
    pub fn transient(e: impl Into<BoxError>) -> Self {
        ProjectionError::Transient(e.into())
    }

    /// A poison error from anything.
    pub fn poison(e: impl Into<BoxError>) -> Self {
        ProjectionError::Poison(e.into())
    }

    /// True for [`ProjectionError::Transient`].
    pub fn is_transient(&self) -> bool {
        matches!(self, ProjectionError::Transient(_))
    }
}

impl From<crate::Error> for ProjectionError {
    fn from(e: crate::Error) -> Self {
        if e.is_retryable() {
            ProjectionError::Transient(Box::new(e))
        } else {
            ProjectionError::Poison(Box::new(e))
        }
    }
}

/// Where an async projection's effects and checkpoint go.
///
/// `apply_batch` must record the effect of `events` **and** `checkpoint` durably before
/// it returns; targets over a database that holds the read model do both in one
/// transaction (exactly once). Targets that cannot (see
/// [`memory::Checkpointed`]) record the checkpoint after the effect, so an effect may be
/// applied again after a crash: their projections must be idempotent.
pub trait ProjectionTarget: Send + Sync + 'static {
    /// The projection's unique name (its checkpoint's key).
    fn name(&self) -> &str;

    /// Which events it reads (default: all).
    fn filter(&self) -> FeedFilter {
        FeedFilter::all()
    }

    /// The stored checkpoint, `None` before the first batch. An error is never taken as
    /// "start from zero".
    fn checkpoint(&self) -> BoxFuture<'_, Result<Option<Position>>>;

    /// Applies `events` (in feed order; possibly none) and records `checkpoint`.
    fn apply_batch<'a>(
        &'a self,
        events: &'a [StoredEvent],
        checkpoint: Position,
    ) -> BoxFuture<'a, Result<(), ProjectionError>>;

    /// Clears the read model and sets the checkpoint to `to` (for a rebuild from the
    /// start, `Position::START`). Targets that can build a replacement beside the live
    /// model (blue/green) do so and swap it in [`ProjectionTarget::finish_rebuild`].
    fn reset(&self, to: Position) -> BoxFuture<'_, Result<()>>;

    /// Called when a rebuild has caught up with the feed. The default does nothing.
    fn finish_rebuild(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

/// A projection whose effects live outside the event store's database (an in-memory
/// view, a search index, a cache). Run it with [`memory::Checkpointed`], which stores
/// its checkpoint after each applied batch: after a crash the last batch may be applied
/// again, so `apply` must be idempotent. Projections over SQL read models use their
/// adapter's transactional target instead.
pub trait Projection: Send + Sync + 'static {
    /// The projection's unique name.
    fn name(&self) -> &str;

    /// Which events it reads (default: all).
    fn filter(&self) -> FeedFilter {
        FeedFilter::all()
    }

    /// Applies events, in feed order.
    fn apply<'a>(&'a self, events: &'a [StoredEvent])
    -> BoxFuture<'a, Result<(), ProjectionError>>;

    /// Empties the read model (before a rebuild). The default does nothing.
    fn clear(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

/// A projection that keeps [read models](crate::readmodel): the same projection runs
/// on every backend, and on SQL backends inside a database transaction.
///
/// `apply` receives the read models as a [`ReadModelStore`] bound to where the effect
/// must go; open typed repositories on it with
/// [`ReadModelRepository::new`](crate::readmodel::ReadModelRepository::new):
///
/// * async, on SQLite or PostgreSQL (`SqliteProjectionTarget`, `PgProjectionTarget`):
///   a store bound to the transaction that also moves the checkpoint, so each event
///   affects the read model exactly once, even across crashes; during a blue/green
///   rebuild the same store writes the shadow tables;
/// * inline, on SQLite or PostgreSQL: a store bound to the append's transaction. If
///   `apply` fails, the append fails and nothing is written. On SQLite the future
///   must complete without waiting on anything but the given store (it is polled
///   once, on the writer's thread);
/// * in memory ([`memory::ReadModels`]): a [`MemoryReadModelStore`](crate::readmodel::MemoryReadModelStore),
///   with the checkpoint saved after the effect (so `apply` should be idempotent).
///
/// ```
/// use futures::future::BoxFuture;
/// use mink_es::projection::{ProjectionError, ReadModelProjection};
/// use mink_es::readmodel::{Field, ReadModel, ReadModelRepository, ReadModelStore, Schema};
/// use mink_es::{FeedFilter, StoredEvent};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct StreamCount { id: String, events: i64 }
/// impl ReadModel for StreamCount {
///     const NAME: &'static str = "stream_counts";
///     const FIELDS: &'static [Field] = &[Field::text("id"), Field::integer("events")];
/// }
///
/// struct Counts;
/// impl ReadModelProjection for Counts {
///     fn name(&self) -> &str { "stream_counts" }
///     fn models(&self) -> mink_es::Result<Vec<Schema>> { Ok(vec![Schema::of::<StreamCount>()?]) }
///     fn apply<'a>(&'a self, models: &'a dyn ReadModelStore, events: &'a [StoredEvent])
///         -> BoxFuture<'a, Result<(), ProjectionError>> {
///         Box::pin(async move {
///             let counts = ReadModelRepository::<StreamCount, _>::new(models);
///             for e in events {
///                 let id = e.stream_id.as_str();
///                 let n = counts.get(id).await?.map_or(0, |c| c.model.events);
///                 counts.upsert(&StreamCount { id: id.to_owned(), events: n + 1 }).await?;
///             }
///             Ok(())
///         })
///     }
/// }
/// ```
pub trait ReadModelProjection: Send + Sync + 'static {
    /// The projection's unique name (its checkpoint's key).
    fn name(&self) -> &str;

    /// Which events it reads (default: all).
    fn filter(&self) -> FeedFilter {
        FeedFilter::all()
    }

    /// The read models it writes. Their tables are ensured before the first batch, and
    /// emptied (or rebuilt beside the live ones, blue/green) by a rebuild.
    fn models(&self) -> Result<Vec<Schema>>;

    /// Applies events, in feed order, to `models`.
    fn apply<'a>(
        &'a self,
        models: &'a dyn ReadModelStore,
        events: &'a [StoredEvent],
    ) -> BoxFuture<'a, Result<(), ProjectionError>>;
}

/// A projection run inside the append (memory store: under its lock). If it fails, the
/// append fails and nothing is stored. It must not leave a partial effect when it
/// fails (check first, then change). The SQL adapters have their own inline
/// projections, which run in the append's transaction.
pub trait InlineProjection: Send + Sync + 'static {
    /// Its name.
    fn name(&self) -> &str;

    /// Applies the events about to be stored.
    fn apply(&self, events: &[StoredEvent]) -> std::result::Result<(), BoxError>;
}

/// What a worker does with an event that stays poisonous after the retry budget.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PoisonPolicy {
    /// Park it (record it with its error in the control store) and go on.
    #[default]
    Park,
    /// Stop the projection (status [`RunState::Faulted`]) until it is resumed.
    Stop,
}

/// The state of a projection (or partition) as last reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Starting: reading its checkpoint, acquiring its lease.
    Starting,
    /// Applying events or waiting for new ones.
    Running,
    /// Paused by an operator.
    Paused,
    /// Stopped by an error it cannot get past (see `last_error`); resumes on request.
    Faulted,
    /// Rebuilding from the start.
    Rebuilding,
    /// Another process holds the lease; this one stands by.
    Standby,
    /// Stopped (shut down).
    Stopped,
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            RunState::Starting => "starting",
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Faulted => "faulted",
            RunState::Rebuilding => "rebuilding",
            RunState::Standby => "standby",
            RunState::Stopped => "stopped",
        };
        f.write_str(s)
    }
}

/// A projection's (or partition's) status, as its worker reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProjectionStatus {
    /// The projection or partition name.
    pub name: String,
    /// Its state.
    pub state: RunState,
    /// Its checkpoint.
    pub checkpoint: Option<Position>,
    /// The process holding it.
    pub owner: Option<String>,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// Events parked so far (not yet replayed).
    pub parked: u64,
    /// During a rebuild: the position reached and the position to reach.
    pub rebuild_progress: Option<(Position, Position)>,
    /// When the worker last reported.
    pub updated_at: DateTime<Utc>,
}

/// An operator's request to a projection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// Stop applying events until resumed.
    Pause,
    /// Resume a paused or faulted projection.
    Resume,
    /// Rebuild from the start.
    Rebuild,
    /// Move the checkpoint to a position (and clear nothing).
    ResetTo {
        /// The new checkpoint.
        position: Position,
    },
    /// Apply the parked events again (those that succeed are unparked).
    ReplayParked,
}

/// A request as stored, with its id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Its id (increasing).
    pub id: u64,
    /// The projection or partition it is for.
    pub name: String,
    /// What to do.
    pub command: Command,
}

/// An event a projection could not apply, with the error.
#[derive(Clone, Debug, PartialEq)]
pub struct ParkedEvent {
    /// The projection or partition.
    pub projection: String,
    /// The event.
    pub event: StoredEvent,
    /// The last error.
    pub error: String,
    /// When it was parked.
    pub parked_at: DateTime<Utc>,
}

/// Where projections report status and receive requests, park events and hold leases.
/// Shared by every process running or operating projections on one store.
pub trait ProjectionControl: Send + Sync + 'static {
    /// Records a status (replacing the name's previous one).
    fn report<'a>(&'a self, status: &'a ProjectionStatus) -> BoxFuture<'a, Result<()>>;

    /// Every reported status, by name.
    fn statuses(&self) -> BoxFuture<'_, Result<Vec<ProjectionStatus>>>;

    /// Queues a request; returns its id.
    fn request<'a>(&'a self, name: &'a str, command: Command) -> BoxFuture<'a, Result<u64>>;

    /// The pending requests for `name`, oldest first.
    fn pending<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<Request>>>;

    /// Marks a request handled (with an error message when it failed).
    fn complete<'a>(&'a self, id: u64, error: Option<&'a str>) -> BoxFuture<'a, Result<()>>;

    /// Whether a request was handled, and its error if it failed; `None` while pending.
    fn outcome(&self, id: u64) -> BoxFuture<'_, Result<Option<Option<String>>>>;

    /// Parks an event (idempotent per projection and position).
    fn park<'a>(
        &'a self,
        name: &'a str,
        event: &'a StoredEvent,
        error: &'a str,
    ) -> BoxFuture<'a, Result<()>>;

    /// The parked events of `name`, in feed order.
    fn parked<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<ParkedEvent>>>;

    /// Removes parked events of `name` at these positions.
    fn unpark<'a>(&'a self, name: &'a str, positions: &'a [Position]) -> BoxFuture<'a, Result<()>>;

    /// Takes or renews the lease on `name` for `owner` until `ttl` from now; false when
    /// another owner holds an unexpired lease.
    fn acquire<'a>(
        &'a self,
        name: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool>>;

    /// Gives the lease up (if `owner` holds it).
    fn release<'a>(&'a self, name: &'a str, owner: &'a str) -> BoxFuture<'a, Result<()>>;
}

/// The partition (of `count`) that a stream's events belong to: a stable hash of the
/// stream id, so a stream always lands in the same partition and keeps its order.
pub fn partition_of(stream: &StreamId, count: u32) -> u32 {
    if count <= 1 {
        return 0;
    }
    // FNV-1a: stable across processes and versions (unlike the std hasher).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in stream.as_str().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(count)) as u32
}

/// The name of partition `index` of `count` of projection `name`.
pub fn partition_name(name: &str, index: u32, count: u32) -> String {
    if count <= 1 {
        name.to_owned()
    } else {
        format!("{name}#{index}of{count}")
    }
}

/// How long a worker waits before retrying (exponential, capped, full jitter).
pub(crate) fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let ceiling = base
        .saturating_mul(2u32.saturating_pow(attempt.min(31)))
        .min(max);
    ceiling.mul_f64(rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_and_spread() {
        let ids: Vec<StreamId> = (0..1000)
            .map(|i| StreamId::new(format!("S-{i}")).unwrap())
            .collect();
        let mut counts = [0u32; 4];
        for id in &ids {
            let p = partition_of(id, 4);
            assert_eq!(p, partition_of(id, 4));
            counts[p as usize] += 1;
        }
        assert!(counts.iter().all(|c| *c > 150), "{counts:?}");
        assert_eq!(partition_of(&ids[0], 1), 0);
        assert_eq!(partition_of(&ids[0], 0), 0);
        assert_eq!(partition_name("p", 1, 4), "p#1of4");
        assert_eq!(partition_name("p", 0, 1), "p");
    }
}
