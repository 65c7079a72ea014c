//! Projections on SQLite: the control tables ([`SqliteControl`]), the transactional
//! async target ([`SqliteProjectionTarget`]), and inline projections run inside appends
//! (see [`crate::SqliteStoreBuilder::inline`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use mink_es::projection::{
    Command, ParkedEvent, ProjectionControl, ProjectionError, ProjectionStatus, ProjectionTarget,
    ReadModelProjection, Request, partition_name,
};
use mink_es::readmodel::Schema;
use mink_es::{BoxError, Error, FeedFilter, Position, Result, StoredEvent, StreamId};
use parking_lot::{Mutex, ReentrantMutex};
use rusqlite::{Connection, OptionalExtension, params};

use crate::command::now_micros;
use crate::error::{backend_msg, map_err};
use crate::readmodel::{
    Bindings, TxReadModels, bindings, create_indexes, drop_indexes, drop_table, ensure,
    record_table, table_exists,
};
use crate::row::{Decoder, micros_to_time};
use crate::store::{SqliteStore, WriteTx, payload_sql};

/// An error that is only a message.
#[derive(Debug)]
struct Message(String);

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Message {}

/// What a projection whose `apply` waited on something else than its read models gets.
fn not_ready(name: &str) -> BoxError {
    Box::new(Message(format!(
        "projection {name:?} did not complete without waiting: on SQLite a projection's \
         apply runs inside a write transaction and may only await its read-model store"
    )))
}

/// The name of the shadow table a blue/green rebuild fills for `schema`.
pub(crate) fn shadow_table(schema: &Schema) -> String {
    format!("{}__next", schema.table())
}

/// Refuses a name that is empty (or blank) or holds control characters.
fn check_name(name: &str) -> Result<()> {
    if name.trim().is_empty() || name.chars().any(char::is_control) {
        return Err(Error::InvalidProjection {
            name: name.chars().take(64).collect(),
            reason: "a projection needs a non-empty name without control characters".into(),
        });
    }
    Ok(())
}

/// A projection's models, one declaration per table (repeats of the same one are
/// dropped).
fn checked_models(name: &str, models: Vec<Schema>) -> Result<Vec<Schema>> {
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut out = Vec::with_capacity(models.len());
    for s in models {
        match seen.get(s.table()) {
            Some(d) if d == s.descriptor() => {}
            Some(_) => {
                return Err(Error::InvalidProjection {
                    name: name.to_owned(),
                    reason: format!(
                        "it declares read model {:?} twice, with two declarations",
                        s.model()
                    ),
                });
            }
            None => {
                seen.insert(s.table().to_owned(), s.descriptor().to_owned());
                out.push(s);
            }
        }
    }
    Ok(out)
}

// --- checkpoints and rebuild marks, inside the caller's transaction ---

fn read_checkpoint(conn: &Connection, name: &str) -> Result<Option<Position>> {
    let text: Option<String> = conn
        .prepare_cached("SELECT position FROM mink_checkpoints WHERE name = ?1")
        .and_then(|mut s| s.query_row([name], |r| r.get(0)).optional())
        .map_err(map_err)?;
    text.map(|t| t.parse::<Position>()).transpose()
}

fn write_checkpoint(conn: &Connection, name: &str, position: Position) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO mink_checkpoints (name, position, updated_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (name) DO UPDATE SET \
           position = excluded.position, updated_at = excluded.updated_at",
    )
    .and_then(|mut s| s.execute(params![name, position.to_string(), now_micros()]))
    .map_err(map_err)?;
    Ok(())
}

/// The position a rebuild of `name` must reach before its shadow tables replace the
/// live ones; `None` when no rebuild is under way.
fn read_mark(conn: &Connection, name: &str) -> Result<Option<Position>> {
    let text: Option<String> = conn
        .prepare_cached("SELECT target FROM mink_projection_rebuilds WHERE name = ?1")
        .and_then(|mut s| s.query_row([name], |r| r.get(0)).optional())
        .map_err(map_err)?;
    text.map(|t| t.parse::<Position>()).transpose()
}

fn write_mark(conn: &Connection, name: &str, target: Position) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO mink_projection_rebuilds (name, target, started_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (name) DO UPDATE SET target = excluded.target, started_at = excluded.started_at",
    )
    .and_then(|mut s| s.execute(params![name, target.to_string(), now_micros()]))
    .map_err(map_err)?;
    Ok(())
}

fn head(conn: &Connection) -> Result<Position> {
    let max: Option<i64> = conn
        .prepare_cached("SELECT MAX(position) FROM mink_events")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .map_err(map_err)?;
    Ok(Position::new(0, max.unwrap_or(0).max(0).unsigned_abs()))
}

/// Replaces the live tables of `models` by their shadow tables (indexes renamed to the
/// live names, so that the next rebuild can make shadow indexes again) and clears the
/// rebuild mark of `name`. Inside the caller's transaction.
fn swap(conn: &Connection, name: &str, models: &[Schema]) -> Result<()> {
    for s in models {
        let shadow = shadow_table(s);
        if !table_exists(conn, &shadow)? {
            continue;
        }
        drop_table(conn, s.table())?;
        drop_indexes(conn, &shadow)?;
        conn.execute_batch(&format!(
            "ALTER TABLE {} RENAME TO {}",
            mink_es::readmodel::sql::quote(&shadow),
            mink_es::readmodel::sql::quote(s.table())
        ))
        .map_err(map_err)?;
        create_indexes(conn, s, s.table())?;
        record_table(conn, s, s.table())?;
        conn.prepare_cached("DELETE FROM mink_read_models WHERE table_name = ?1")
            .and_then(|mut st| st.execute([shadow.as_str()]))
            .map_err(map_err)?;
    }
    conn.prepare_cached("DELETE FROM mink_projection_rebuilds WHERE name = ?1")
        .and_then(|mut s| s.execute([name]))
        .map_err(map_err)?;
    tracing::info!(projection = name, "rebuilt read models swapped in");
    Ok(())
}

// --- inline projections ---

/// A [`ReadModelProjection`] registered to run inside every append of a store.
pub(crate) struct Inline {
    name: String,
    filter: FeedFilter,
    projection: Box<dyn ReadModelProjection>,
    models: Vec<Schema>,
    bindings: Bindings,
}

impl fmt::Debug for Inline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inline")
            .field("name", &self.name)
            .field("filter", &self.filter)
            .field(
                "models",
                &self.models.iter().map(Schema::model).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Inline {
    /// The projection's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Checks `projection` for registration next to `registered`.
    pub(crate) fn new(projection: impl ReadModelProjection, registered: &[Inline]) -> Result<Self> {
        let name = projection.name().to_owned();
        check_name(&name)?;
        if registered.iter().any(|r| r.name == name) {
            return Err(Error::InvalidProjection {
                name,
                reason: "another inline projection has this name".into(),
            });
        }
        let models = checked_models(&name, projection.models()?)?;
        let bindings = bindings(&models, |s| s.table().to_owned());
        Ok(Inline {
            filter: projection.filter(),
            name,
            projection: Box::new(projection),
            models,
            bindings,
        })
    }
}

/// Ensures the tables of the inline projections, in one transaction.
pub(crate) fn ensure_inline(conn: &Connection, inline: &[Inline]) -> Result<()> {
    if inline.is_empty() {
        return Ok(());
    }
    let tx = WriteTx::begin(conn)?;
    for p in inline {
        for s in &p.models {
            ensure(conn, s, s.table())?;
        }
    }
    tx.commit()
}

/// Runs the inline projections on the events of an append, inside its transaction
/// (open on `writer`, locked by this thread); each sees only the events its filter
/// accepts. The first failure is returned as [`Error::InlineProjection`]; the caller
/// then rolls everything back.
pub(crate) fn run_inline(
    writer: &ReentrantMutex<Connection>,
    inline: &[Inline],
    stream: &StreamId,
    events: &[StoredEvent],
) -> Result<()> {
    for p in inline {
        let selected: Cow<'_, [StoredEvent]> = if events.iter().all(|e| p.filter.matches(e)) {
            Cow::Borrowed(events)
        } else {
            Cow::Owned(
                events
                    .iter()
                    .filter(|e| p.filter.matches(e))
                    .cloned()
                    .collect(),
            )
        };
        if selected.is_empty() {
            continue;
        }
        let models = TxReadModels::new(writer, p.bindings.clone());
        let outcome = p.projection.apply(&models, &selected).now_or_never();
        let source: BoxError = match outcome {
            Some(Ok(())) => continue,
            Some(Err(e)) => Box::new(e),
            None => not_ready(&p.name),
        };
        return Err(Error::InlineProjection {
            projection: p.name.clone(),
            stream: stream.clone(),
            source,
        });
    }
    Ok(())
}

// --- the async target ---

#[derive(Default)]
struct TargetState {
    /// The projection's models, once their tables were ensured.
    models: Option<Arc<[Schema]>>,
    /// The checkpoint the worker works from: what this target last read or wrote.
    believed: Option<Position>,
}

/// The [`ProjectionTarget`] of a [`ReadModelProjection`] whose read models live in the
/// store's SQLite file: each batch is applied exactly once, even across crashes.
///
/// Run it with a [`ProjectionEngine`](mink_es::projection::ProjectionEngine) over the
/// same [`SqliteStore`] (and a [`SqliteControl`]):
///
/// * **One transaction per batch.** `apply_batch` opens a write transaction, gives the
///   projection a read-model store bound to it, moves the checkpoint (in
///   `mink_checkpoints`, under the projection's name) and commits: the read model
///   and the checkpoint change together or not at all. The checkpoint is written with
///   a compare-and-set against the one this target last read or wrote: when another
///   process moved it forward meanwhile, only the events after it are applied; when it
///   was moved back, the batch fails with a transient error and is not applied (the
///   worker re-reads the checkpoint when it restarts).
/// * **Blue/green rebuilds.** `reset` creates empty shadow tables `rm_<NAME>__next`,
///   records durably (in `mink_projection_rebuilds`) that the projection is
///   rebuilding and up to which position, and moves the checkpoint back, in one
///   transaction. Batches then write the shadow tables while readers keep seeing the
///   complete live ones. Once the rebuild reaches the position the feed's head had
///   when it started (or `finish_rebuild` is called), one transaction drops the live
///   tables and renames the shadows (and their indexes) to the live names. A process
///   that crashes mid-rebuild resumes into the shadow tables and swaps when caught up.
/// * **Tables** are ensured (created, or rebuilt for a changed declaration) on first
///   use. Each read model belongs to one projection: a rebuild replaces its tables
///   whole.
///
/// The projection's `apply` runs under the store's writer lock, inside the
/// transaction, and is polled once: it must complete without waiting on anything but
/// the read-model store it is given (a future that stays pending fails the batch as
/// poison). Keep it quick: appends wait for it.
///
/// **Partitions** ([`SqliteProjectionTarget::partitioned`]) share the projection's
/// tables, so one partition cannot swap them alone: a rebuild (or `reset`) of a
/// partitioned target is refused with [`Error::InvalidProjection`], and the live
/// tables stay as they were. `ResetTo` requests (which only move the checkpoint) work.
///
/// ```
/// # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use futures::future::BoxFuture;
/// use mink_es::projection::{AsyncOptions, ProjectionEngine, ProjectionError, ReadModelProjection};
/// use mink_es::readmodel::{Field, ReadModel, ReadModelRepository, ReadModelStore, Schema};
/// use mink_es::{ExpectedVersion, NewEvent, StoredEvent, StreamId, StreamWriter};
/// use mink_sqlite::{SqliteControl, SqliteProjectionTarget, SqliteStore};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
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
///
/// let dir = tempfile::tempdir().unwrap();
/// let store = SqliteStore::open(dir.path().join("app.db"))?;
/// let stream = StreamId::new("Order-1")?;
/// store.append(&stream, ExpectedVersion::Any, vec![NewEvent::new("Placed", "{}")]).await?;
///
/// let mut engine = ProjectionEngine::new(store.clone(), Arc::new(SqliteControl::new(&store)));
/// engine.add(SqliteProjectionTarget::new(&store, Counts), AsyncOptions::default())?;
/// let handle = engine.start(tokio_util::sync::CancellationToken::new());
///
/// let counts = ReadModelRepository::<StreamCount, _>::new(store.read_models());
/// counts.ensure_table().await?;
/// while counts.get("Order-1").await?.is_none() {
///     tokio::time::sleep(std::time::Duration::from_millis(5)).await;
/// }
/// assert_eq!(counts.get("Order-1").await?.map(|c| c.model.events), Some(1));
/// handle.shutdown().await;
/// # Ok::<(), mink_es::Error>(())
/// # }).unwrap();
/// ```
pub struct SqliteProjectionTarget<P> {
    store: SqliteStore,
    projection: Arc<P>,
    name: String,
    partitioned: bool,
    state: Mutex<TargetState>,
}

impl<P> fmt::Debug for SqliteProjectionTarget<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteProjectionTarget")
            .field("name", &self.name)
            .field("partitioned", &self.partitioned)
            .field("path", &self.store.path())
            .finish_non_exhaustive()
    }
}

impl<P: ReadModelProjection> SqliteProjectionTarget<P> {
    /// The target of `projection`, writing its read models in `store`'s file.
    pub fn new(store: &SqliteStore, projection: P) -> Self {
        let name = projection.name().to_owned();
        SqliteProjectionTarget {
            store: store.clone(),
            projection: Arc::new(projection),
            name,
            partitioned: false,
            state: Mutex::new(TargetState::default()),
        }
    }

    /// The target of partition `index` of `count` of `projection` (named
    /// [`partition_name`]`(name, index, count)`), for
    /// [`ProjectionEngine::add_partitioned`](mink_es::projection::ProjectionEngine::add_partitioned).
    /// Partitions share the projection's tables and cannot be rebuilt (see the
    /// [type docs](SqliteProjectionTarget)).
    ///
    /// ```no_run
    /// # fn demo<P: mink_es::projection::ReadModelProjection>(store: mink_sqlite::SqliteStore,
    /// #   engine: &mut mink_es::projection::ProjectionEngine<mink_sqlite::SqliteStore>, projection: P)
    /// #   -> mink_es::Result<()> {
    /// use std::sync::Arc;
    /// use mink_es::projection::AsyncOptions;
    /// use mink_sqlite::SqliteProjectionTarget;
    /// let projection = Arc::new(projection);
    /// let name = projection.name().to_owned();
    /// engine.add_partitioned(&name, 4, |i, n| {
    ///     SqliteProjectionTarget::partitioned(&store, projection.clone(), i, n)
    /// }, AsyncOptions::default())?;
    /// # Ok(()) }
    /// ```
    pub fn partitioned(store: &SqliteStore, projection: Arc<P>, index: u32, count: u32) -> Self {
        let name = partition_name(projection.name(), index, count);
        SqliteProjectionTarget {
            store: store.clone(),
            projection,
            name,
            partitioned: count > 1,
            state: Mutex::new(TargetState::default()),
        }
    }

    /// The projection.
    pub fn projection(&self) -> &P {
        &self.projection
    }

    /// Whether a blue/green rebuild of this projection is under way (recorded in the
    /// file, so also one started by another process).
    pub fn is_rebuilding(&self) -> Result<bool> {
        let name = &self.name;
        Ok(self
            .store
            .with_reader(|conn| read_mark(conn, name))?
            .is_some())
    }

    /// The projection's models, their tables ensured (the first time).
    fn models(&self) -> Result<Arc<[Schema]>> {
        if let Some(m) = &self.state.lock().models {
            return Ok(m.clone());
        }
        let models: Arc<[Schema]> = checked_models(&self.name, self.projection.models()?)?.into();
        {
            let conn = self.store.writer();
            let tx = WriteTx::begin(&conn)?;
            for s in models.iter() {
                ensure(&conn, s, s.table())?;
            }
            // A rebuild under way (maybe started by a process that died): its shadows
            // must fit the declaration too.
            if read_mark(&conn, &self.name)?.is_some() {
                for s in models.iter() {
                    ensure(&conn, s, &shadow_table(s))?;
                }
            }
            tx.commit()?;
        }
        self.state.lock().models = Some(models.clone());
        Ok(models)
    }

    fn checkpoint_sync(&self) -> Result<Option<Position>> {
        let models = self.models()?;
        let name = &self.name;
        let (stored, mark) = self
            .store
            .with_reader(|conn| Ok((read_checkpoint(conn, name)?, read_mark(conn, name)?)))?;
        if let Some(target) = mark
            && stored.unwrap_or(Position::START) >= target
        {
            // A rebuild reached its goal but was not swapped in (the process stopped
            // in between): swap it in now.
            let conn = self.store.writer();
            let tx = WriteTx::begin(&conn)?;
            if let Some(target) = read_mark(&conn, name)?
                && read_checkpoint(&conn, name)?.unwrap_or(Position::START) >= target
            {
                swap(&conn, name, &models)?;
            }
            tx.commit()?;
        }
        self.state.lock().believed = Some(stored.unwrap_or(Position::START));
        Ok(stored)
    }

    fn apply_sync(
        &self,
        events: &[StoredEvent],
        checkpoint: Position,
    ) -> Result<(), ProjectionError> {
        let models = self.models()?;
        let believed = self.state.lock().believed;
        let name = &self.name;
        let conn = self.store.writer();
        let tx = WriteTx::begin(&conn)?;
        // The stored checkpoint, read under the write lock. A failing read is retried
        // (transient): it never means "start from zero", nor parks events.
        let stored = read_checkpoint(&conn, name)
            .map_err(|e| ProjectionError::Transient(Box::new(e)))?
            .unwrap_or(Position::START);
        let from = believed.unwrap_or(stored);
        let (events, new_checkpoint) = if stored == from {
            (events, checkpoint)
        } else if stored > from && checkpoint > from {
            // Another process applied the events up to `stored` meanwhile (this batch
            // starts at `from`, before it): apply only the ones after it.
            tracing::warn!(projection = %name, expected = %from, found = %stored, "the checkpoint was moved forward by another process; skipping the events it applied");
            let first = events.partition_point(|e| e.position <= stored);
            (&events[first..], checkpoint.max(stored))
        } else {
            return Err(ProjectionError::transient(Message(format!(
                "the checkpoint of projection {name:?} is at {stored}, not at {from} where this \
                 worker left it: another process moved it; the batch was not applied"
            ))));
        };
        let mark = read_mark(&conn, name).map_err(|e| ProjectionError::Transient(Box::new(e)))?;
        if !events.is_empty() {
            let bound = bindings(&models, |s| {
                if mark.is_some() {
                    shadow_table(s)
                } else {
                    s.table().to_owned()
                }
            });
            let store = TxReadModels::new(self.store.writer_lock(), bound);
            match self.projection.apply(&store, events).now_or_never() {
                Some(result) => result?,
                None => return Err(ProjectionError::Poison(not_ready(name))),
            }
        }
        write_checkpoint(&conn, name, new_checkpoint)?;
        if let Some(target) = mark
            && new_checkpoint >= target
        {
            swap(&conn, name, &models)?;
        }
        tx.commit()?;
        drop(conn);
        self.state.lock().believed = Some(checkpoint);
        Ok(())
    }

    fn reset_sync(&self, to: Position) -> Result<()> {
        if self.partitioned {
            return Err(Error::InvalidProjection {
                name: self.name.clone(),
                reason: "the partitions of a projection share its read-model tables, so one \
                         partition cannot be rebuilt (or cleared) on its own"
                    .into(),
            });
        }
        let models = self.models()?;
        let conn = self.store.writer();
        let tx = WriteTx::begin(&conn)?;
        let target = head(&conn)?;
        for s in models.iter() {
            let shadow = shadow_table(s);
            drop_table(&conn, &shadow)?;
            ensure(&conn, s, &shadow)?;
        }
        write_mark(&conn, &self.name, target)?;
        write_checkpoint(&conn, &self.name, to)?;
        tx.commit()?;
        drop(conn);
        self.state.lock().believed = Some(to);
        tracing::info!(projection = %self.name, %target, "blue/green rebuild started");
        Ok(())
    }

    fn finish_sync(&self) -> Result<()> {
        let models = self.models()?;
        let conn = self.store.writer();
        let tx = WriteTx::begin(&conn)?;
        if read_mark(&conn, &self.name)?.is_some() {
            swap(&conn, &self.name, &models)?;
        }
        tx.commit()
    }
}

impl<P: ReadModelProjection> ProjectionTarget for SqliteProjectionTarget<P> {
    fn name(&self) -> &str {
        &self.name
    }

    fn filter(&self) -> FeedFilter {
        self.projection.filter()
    }

    fn checkpoint(&self) -> BoxFuture<'_, Result<Option<Position>>> {
        Box::pin(async move { self.checkpoint_sync() })
    }

    fn apply_batch<'a>(
        &'a self,
        events: &'a [StoredEvent],
        checkpoint: Position,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            let result = self.apply_sync(events, checkpoint);
            // Every call completes at once: let the runtime run other tasks between
            // batches, so that a worker catching up does not hold its thread.
            YieldNow(false).await;
            result
        })
    }

    fn reset(&self, to: Position) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move { self.reset_sync(to) })
    }

    fn finish_rebuild(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move { self.finish_sync() })
    }
}

/// Returns `Pending` once (waking itself at once), then `Ready`.
struct YieldNow(bool);

impl std::future::Future for YieldNow {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

// --- the control tables ---

/// [`ProjectionControl`] in the store's SQLite file: statuses, requests, parked events
/// and leases in the tables `mink_projection_status`, `mink_projection_requests`,
/// `mink_projection_parked` and `mink_projection_leases`.
///
/// Every handle and every process that opens the file shares them, so
/// [`ProjectionOps`](mink_es::projection::ops::ProjectionOps) on one handle steers the
/// workers running on another, and a lease is held by one owner at a time across
/// processes (each acquisition is one atomic statement, decided on the host's clock).
/// Writes use the store's writer connection, reads its read connections.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::time::Duration;
/// use mink_es::projection::ProjectionControl;
/// use mink_sqlite::{SqliteControl, SqliteStore};
///
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("app.db");
/// let (a, b) = (SqliteStore::open(&path)?, SqliteStore::open(&path)?);
/// let (ca, cb) = (SqliteControl::new(&a), SqliteControl::new(&b));
/// assert!(ca.acquire("orders", "node-a", Duration::from_secs(10)).await?);
/// assert!(!cb.acquire("orders", "node-b", Duration::from_secs(10)).await?);
/// ca.release("orders", "node-a").await?;
/// assert!(cb.acquire("orders", "node-b", Duration::from_secs(10)).await?);
/// # Ok::<(), mink_es::Error>(())
/// # });
/// ```
#[derive(Clone)]
pub struct SqliteControl {
    store: SqliteStore,
}

impl fmt::Debug for SqliteControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteControl")
            .field("path", &self.store.path())
            .finish()
    }
}

impl SqliteStore {
    /// A [`SqliteControl`]: projection statuses, requests, parked events and leases in
    /// this store's file.
    pub fn projection_control(&self) -> SqliteControl {
        SqliteControl::new(self)
    }
}

/// The columns of a parked event, as [`Decoder`] reads them (the position's minor part
/// first), then the major part, the error and the time it was parked.
const PARKED_COLUMNS: &str = "pos_minor, event_id, stream_id, version, event_type, \
     schema_version, codec, payload, metadata, recorded_at, pos_major, error, parked_at";

fn position_parts(p: Position) -> Result<(i64, i64)> {
    match (i64::try_from(p.major()), i64::try_from(p.minor())) {
        (Ok(major), Ok(minor)) => Ok((major, minor)),
        _ => Err(Error::InvalidArgument(format!(
            "position {p} is too large to park an event at on SQLite"
        ))),
    }
}

fn to_id(id: u64) -> i64 {
    // Ids above i64::MAX were never handed out: -1 matches no row.
    i64::try_from(id).unwrap_or(-1)
}

impl SqliteControl {
    /// The control tables in `store`'s file (see [`SqliteStore::projection_control`]).
    pub fn new(store: &SqliteStore) -> Self {
        SqliteControl {
            store: store.clone(),
        }
    }

    /// The event store whose file and connections this control uses.
    pub fn store(&self) -> &SqliteStore {
        &self.store
    }

    fn report_sync(&self, status: &ProjectionStatus) -> Result<()> {
        let json = serde_json::to_string(status).map_err(|e| Error::Encode {
            what: format!("the status of projection {:?}", status.name),
            source: Box::new(e),
        })?;
        let conn = self.store.writer();
        conn.prepare_cached(
            "INSERT INTO mink_projection_status (name, state, status, updated_at) \
             VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (name) DO UPDATE SET state = excluded.state, \
               status = excluded.status, updated_at = excluded.updated_at",
        )
        .and_then(|mut s| {
            s.execute(params![
                status.name,
                status.state.to_string(),
                json,
                status.updated_at.timestamp_micros()
            ])
        })
        .map_err(map_err)?;
        Ok(())
    }

    fn statuses_sync(&self) -> Result<Vec<ProjectionStatus>> {
        let rows: Vec<(String, String)> = self.store.with_reader(|conn| {
            conn.prepare_cached("SELECT name, status FROM mink_projection_status ORDER BY name")
                .and_then(|mut s| {
                    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                        .collect::<rusqlite::Result<_>>()
                })
                .map_err(map_err)
        })?;
        rows.into_iter()
            .map(|(name, json)| {
                serde_json::from_str(&json).map_err(|e| {
                    backend_msg(format!(
                        "the stored status of projection {name:?} cannot be read: {e}"
                    ))
                })
            })
            .collect()
    }

    fn request_sync(&self, name: &str, command: &Command) -> Result<u64> {
        let json = serde_json::to_string(command).map_err(|e| Error::Encode {
            what: format!("a request to projection {name:?}"),
            source: Box::new(e),
        })?;
        let conn = self.store.writer();
        let id: i64 = conn
            .prepare_cached(
                "INSERT INTO mink_projection_requests (name, command, created_at) \
                 VALUES (?1, ?2, ?3) RETURNING id",
            )
            .and_then(|mut s| s.query_row(params![name, json, now_micros()], |r| r.get(0)))
            .map_err(map_err)?;
        u64::try_from(id).map_err(|_| backend_msg(format!("a projection request got id {id}")))
    }

    fn pending_sync(&self, name: &str) -> Result<Vec<Request>> {
        let rows: Vec<(i64, String)> = self.store.with_reader(|conn| {
            conn.prepare_cached(
                "SELECT id, command FROM mink_projection_requests \
                 WHERE name = ?1 AND done = 0 ORDER BY id",
            )
            .and_then(|mut s| {
                s.query_map([name], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()
            })
            .map_err(map_err)
        })?;
        rows.into_iter()
            .map(|(id, json)| {
                let command = serde_json::from_str(&json).map_err(|e| {
                    backend_msg(format!("projection request {id} cannot be read: {e}"))
                })?;
                Ok(Request {
                    id: id.unsigned_abs(),
                    name: name.to_owned(),
                    command,
                })
            })
            .collect()
    }

    fn complete_sync(&self, id: u64, error: Option<&str>) -> Result<()> {
        let conn = self.store.writer();
        conn.prepare_cached(
            "UPDATE mink_projection_requests SET done = 1, error = ?2, completed_at = ?3 \
             WHERE id = ?1",
        )
        .and_then(|mut s| s.execute(params![to_id(id), error, now_micros()]))
        .map_err(map_err)?;
        Ok(())
    }

    fn outcome_sync(&self, id: u64) -> Result<Option<Option<String>>> {
        let row: Option<(bool, Option<String>)> = self.store.with_reader(|conn| {
            conn.prepare_cached("SELECT done, error FROM mink_projection_requests WHERE id = ?1")
                .and_then(|mut s| {
                    s.query_row([to_id(id)], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()
                })
                .map_err(map_err)
        })?;
        Ok(match row {
            Some((true, error)) => Some(error),
            _ => None,
        })
    }

    fn park_sync(&self, name: &str, event: &StoredEvent, error: &str) -> Result<()> {
        let (major, minor) = position_parts(event.position)?;
        let version = i64::try_from(event.version).map_err(|_| {
            Error::InvalidArgument(format!("event version {} is out of range", event.version))
        })?;
        let metadata = event.metadata.to_json();
        let conn = self.store.writer();
        conn.prepare_cached(
            "INSERT INTO mink_projection_parked (name, pos_major, pos_minor, event_id, \
               stream_id, version, event_type, schema_version, codec, payload, metadata, \
               recorded_at, error, parked_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14) \
             ON CONFLICT (name, pos_major, pos_minor) DO UPDATE SET \
               event_id = excluded.event_id, stream_id = excluded.stream_id, \
               version = excluded.version, event_type = excluded.event_type, \
               schema_version = excluded.schema_version, codec = excluded.codec, \
               payload = excluded.payload, metadata = excluded.metadata, \
               recorded_at = excluded.recorded_at, error = excluded.error, \
               parked_at = excluded.parked_at",
        )
        .and_then(|mut s| {
            s.execute(params![
                name,
                major,
                minor,
                event.id.as_bytes(),
                event.stream_id.as_str(),
                version,
                event.event_type.as_str(),
                event.schema_version,
                event.codec.as_str(),
                payload_sql(event.codec.as_str(), &event.payload),
                metadata,
                event.recorded_at.timestamp_micros(),
                error,
                now_micros(),
            ])
        })
        .map_err(map_err)?;
        Ok(())
    }

    fn parked_sync(&self, name: &str) -> Result<Vec<ParkedEvent>> {
        self.store.with_reader(|conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {PARKED_COLUMNS} FROM mink_projection_parked WHERE name = ?1 \
                     ORDER BY pos_major, pos_minor"
                ))
                .map_err(map_err)?;
            let mut rows = stmt.query([name]).map_err(map_err)?;
            let mut decoder = Decoder::new();
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(map_err)? {
                let mut event = decoder.decode(row)?;
                let major: i64 = row.get(10).map_err(map_err)?;
                let error: String = row.get(11).map_err(map_err)?;
                let parked_at: i64 = row.get(12).map_err(map_err)?;
                event.position = Position::new(major.unsigned_abs(), event.position.minor());
                out.push(ParkedEvent {
                    projection: name.to_owned(),
                    event,
                    error,
                    parked_at: micros_to_time(parked_at).ok_or_else(|| {
                        backend_msg(format!("a parked event of {name:?} has a corrupt time"))
                    })?,
                });
            }
            Ok(out)
        })
    }

    fn unpark_sync(&self, name: &str, positions: &[Position]) -> Result<()> {
        if positions.is_empty() {
            return Ok(());
        }
        let conn = self.store.writer();
        let tx = WriteTx::begin(&conn)?;
        {
            let mut stmt = conn
                .prepare_cached(
                    "DELETE FROM mink_projection_parked \
                     WHERE name = ?1 AND pos_major = ?2 AND pos_minor = ?3",
                )
                .map_err(map_err)?;
            for p in positions {
                // A position that cannot be stored was never parked.
                if let Ok((major, minor)) = position_parts(*p) {
                    stmt.execute(params![name, major, minor]).map_err(map_err)?;
                }
            }
        }
        tx.commit()
    }

    fn acquire_sync(&self, name: &str, owner: &str, ttl: Duration) -> Result<bool> {
        let conn = self.store.writer();
        // The clock is read under the write lock: no other writer decides meanwhile.
        let now = now_micros();
        let until = now.saturating_add(i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX));
        let changed = conn
            .prepare_cached(
                "INSERT INTO mink_projection_leases (name, owner, expires_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, \
                   expires_at = excluded.expires_at \
                 WHERE mink_projection_leases.owner = excluded.owner \
                    OR mink_projection_leases.expires_at <= ?4",
            )
            .and_then(|mut s| s.execute(params![name, owner, until, now]))
            .map_err(map_err)?;
        Ok(changed > 0)
    }

    fn release_sync(&self, name: &str, owner: &str) -> Result<()> {
        let conn = self.store.writer();
        conn.prepare_cached("DELETE FROM mink_projection_leases WHERE name = ?1 AND owner = ?2")
            .and_then(|mut s| s.execute(params![name, owner]))
            .map_err(map_err)?;
        Ok(())
    }
}

impl ProjectionControl for SqliteControl {
    fn report<'a>(&'a self, status: &'a ProjectionStatus) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.report_sync(status) })
    }

    fn statuses(&self) -> BoxFuture<'_, Result<Vec<ProjectionStatus>>> {
        Box::pin(async move { self.statuses_sync() })
    }

    fn request<'a>(&'a self, name: &'a str, command: Command) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move { self.request_sync(name, &command) })
    }

    fn pending<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<Request>>> {
        Box::pin(async move { self.pending_sync(name) })
    }

    fn complete<'a>(&'a self, id: u64, error: Option<&'a str>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.complete_sync(id, error) })
    }

    fn outcome(&self, id: u64) -> BoxFuture<'_, Result<Option<Option<String>>>> {
        Box::pin(async move { self.outcome_sync(id) })
    }

    fn park<'a>(
        &'a self,
        name: &'a str,
        event: &'a StoredEvent,
        error: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.park_sync(name, event, error) })
    }

    fn parked<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<ParkedEvent>>> {
        Box::pin(async move { self.parked_sync(name) })
    }

    fn unpark<'a>(&'a self, name: &'a str, positions: &'a [Position]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.unpark_sync(name, positions) })
    }

    fn acquire<'a>(
        &'a self,
        name: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move { self.acquire_sync(name, owner, ttl) })
    }

    fn release<'a>(&'a self, name: &'a str, owner: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.release_sync(name, owner) })
    }
}
