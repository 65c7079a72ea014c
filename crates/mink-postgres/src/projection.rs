//! Projections on PostgreSQL: [`PgControl`] (statuses, requests, parked events and
//! leases, shared by every process on the schema) and [`PgProjectionTarget`] (an async
//! read-model projection applied in one transaction with its checkpoint).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use mink_es::projection::{
    Command, ParkedEvent, ProjectionControl, ProjectionError, ProjectionStatus, ProjectionTarget,
    ReadModelProjection, Request, RunState, partition_name,
};
use mink_es::readmodel::Schema;
use mink_es::{
    CodecTag, Error, EventId, EventType, FeedFilter, Metadata, Position, Result, StoredEvent,
    StreamId,
};
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Row as _};
use uuid::Uuid;

use crate::error::{PgStoreError, map};
use crate::readmodel::{
    PgReadModelStore, PgTxReadModelStore, create, describe_table, drop_table, ensure_in, qualified,
    shadow_table, swap,
};
use crate::schema::{Stmt, render};
use crate::time::{deadline, read_opt_time, read_time, ttl_micros};
use crate::{PgEventStore, SchemaName};
use mink_es::FeedReader as _;

// ---------------------------------------------------------------------------------
// Control.

struct ControlSql {
    report: Stmt,
    statuses: Stmt,
    request: Stmt,
    pending: Stmt,
    complete: Stmt,
    outcome: Stmt,
    park: Stmt,
    parked: Stmt,
    unpark: Stmt,
    acquire: Stmt,
    release: Stmt,
}

impl ControlSql {
    fn new(schema: &SchemaName) -> Self {
        let st = |t: &str| Stmt::new(t, schema);
        ControlSql {
            report: st("INSERT INTO {schema}.mink_projection_status AS s \
                 (name, state, checkpoint, owner, last_error, parked, rebuild_at, rebuild_to, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (name) DO UPDATE SET state = EXCLUDED.state, \
                 checkpoint = EXCLUDED.checkpoint, owner = EXCLUDED.owner, \
                 last_error = EXCLUDED.last_error, parked = EXCLUDED.parked, \
                 rebuild_at = EXCLUDED.rebuild_at, rebuild_to = EXCLUDED.rebuild_to, \
                 updated_at = EXCLUDED.updated_at"),
            statuses: st(
                "SELECT name, state, checkpoint, owner, last_error, parked, \
                 rebuild_at, rebuild_to, updated_at FROM {schema}.mink_projection_status \
                 ORDER BY name",
            ),
            request: st(
                "INSERT INTO {schema}.mink_projection_requests (name, command) \
                 VALUES ($1, $2) RETURNING id",
            ),
            pending: st(
                "SELECT id, name, command FROM {schema}.mink_projection_requests \
                 WHERE name = $1 AND completed_at IS NULL ORDER BY id",
            ),
            complete: st("UPDATE {schema}.mink_projection_requests \
                 SET completed_at = statement_timestamp(), error = $2 WHERE id = $1"),
            outcome: st("SELECT completed_at IS NOT NULL, error \
                 FROM {schema}.mink_projection_requests WHERE id = $1"),
            park: st("INSERT INTO {schema}.mink_projection_parked AS p \
                 (name, position, event_id, stream_id, version, event_type, schema_version, \
                 codec, payload, metadata, recorded_at, error, parked_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, statement_timestamp()) \
                 ON CONFLICT (name, position) DO UPDATE SET error = EXCLUDED.error, \
                 parked_at = EXCLUDED.parked_at"),
            parked: st(
                "SELECT position, event_id, stream_id, version, event_type, \
                 schema_version, codec, payload, metadata, recorded_at, error, parked_at \
                 FROM {schema}.mink_projection_parked WHERE name = $1 ORDER BY position",
            ),
            unpark: st("DELETE FROM {schema}.mink_projection_parked \
                 WHERE name = $1 AND position = ANY($2::bytea[])"),
            acquire: Stmt::new(
                &format!(
                    "INSERT INTO {{schema}}.mink_projection_leases AS l (name, owner, expires_at) \
                     VALUES ($1, $2, {}) \
                     ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner, \
                     expires_at = EXCLUDED.expires_at \
                     WHERE l.owner = EXCLUDED.owner OR l.expires_at <= clock_timestamp() \
                     RETURNING 1",
                    deadline(3)
                ),
                schema,
            ),
            release: st(
                "DELETE FROM {schema}.mink_projection_leases WHERE name = $1 AND owner = $2",
            ),
        }
    }
}

/// [`ProjectionControl`] on PostgreSQL: statuses, operators' requests, parked events
/// and leases in the store's schema (tables `mink_projection_status`,
/// `mink_projection_requests`, `mink_projection_parked` and `mink_projection_leases`,
/// migration 4), so that [`ProjectionOps`](mink_es::projection::ops::ProjectionOps)
/// steers workers in any process using the schema, and one process at a time is
/// active per projection or partition.
///
/// * A lease is a row (name, owner, expiry): [`ProjectionControl::acquire`] is one
///   statement, `INSERT … ON CONFLICT (name) DO UPDATE … WHERE owner = $owner OR
///   expires_at <= clock_timestamp()`, so of any number of processes exactly one holds
///   an unexpired lease, and the database server's clock decides expiry. A process that
///   dies stops renewing; another takes over once the lease has expired.
/// * Requests are rows with an increasing id; a worker completes them with an error
///   message or none.
/// * Parked events keep the whole event, so that replays need not read the feed.
///
/// ```no_run
/// # async fn f(store: mink_postgres::PgEventStore) -> mink_es::Result<()> {
/// use std::sync::Arc;
/// use mink_es::projection::ops::ProjectionOps;
/// let ops = ProjectionOps::new(store.clone(), Arc::new(store.projection_control()));
/// for p in ops.list().await? {
///     println!("{} {} lag={}", p.status.name, p.status.state, p.lag_events);
/// }
/// ops.pause("orders").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgControl {
    pool: PgPool,
    schema: SchemaName,
    sql: Arc<ControlSql>,
}

impl std::fmt::Debug for PgControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgControl")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

fn state_name(s: RunState) -> String {
    s.to_string()
}

fn parse_state(s: &str) -> RunState {
    match s {
        "starting" => RunState::Starting,
        "running" => RunState::Running,
        "paused" => RunState::Paused,
        "faulted" => RunState::Faulted,
        "rebuilding" => RunState::Rebuilding,
        "standby" => RunState::Standby,
        _ => RunState::Stopped,
    }
}

fn opt_position(b: Option<Vec<u8>>) -> Result<Option<Position>> {
    b.map(|b| Position::from_bytes(&b)).transpose()
}

impl PgControl {
    /// Control tables in `schema` (migrated), on `pool`.
    pub fn new(pool: PgPool, schema: SchemaName) -> Self {
        let sql = Arc::new(ControlSql::new(&schema));
        PgControl { pool, schema, sql }
    }

    fn m(&self) -> impl Fn(sqlx::Error) -> Error + '_ {
        move |e| map(e, &self.schema)
    }

    fn corrupt(&self, what: &'static str, detail: String) -> Error {
        PgStoreError::Corrupt { what, detail }.into()
    }

    fn decode_status(&self, r: &PgRow) -> Result<ProjectionStatus> {
        let m = self.m();
        let name: String = r.try_get(0).map_err(&m)?;
        let state: String = r.try_get(1).map_err(&m)?;
        let at = opt_position(r.try_get(6).map_err(&m)?)?;
        let to = opt_position(r.try_get(7).map_err(&m)?)?;
        let parked: i64 = r.try_get(5).map_err(&m)?;
        Ok(ProjectionStatus {
            state: parse_state(&state),
            checkpoint: opt_position(r.try_get(2).map_err(&m)?)?,
            owner: r.try_get(3).map_err(&m)?,
            last_error: r.try_get(4).map_err(&m)?,
            parked: u64::try_from(parked).unwrap_or(0),
            rebuild_progress: at.zip(to),
            updated_at: read_time(r, 8).map_err(|e| {
                self.corrupt("mink_projection_status", format!("{name}: updated_at: {e}"))
            })?,
            name,
        })
    }

    fn decode_parked(&self, name: &str, r: &PgRow) -> Result<ParkedEvent> {
        let m = self.m();
        let position = Position::from_bytes(&r.try_get::<Vec<u8>, _>(0).map_err(&m)?)?;
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            self.corrupt(
                "mink_projection_parked",
                format!("{name} at {position}: {what}: {e}"),
            )
        };
        let id: Uuid = r.try_get(1).map_err(&m)?;
        let stream: String = r.try_get(2).map_err(&m)?;
        let version: i64 = r.try_get(3).map_err(&m)?;
        let event_type: String = r.try_get(4).map_err(&m)?;
        let schema_version: i32 = r.try_get(5).map_err(&m)?;
        let codec: String = r.try_get(6).map_err(&m)?;
        let payload: Vec<u8> = r.try_get(7).map_err(&m)?;
        let metadata: Option<Json<Metadata>> = r.try_get(8).map_err(&m)?;
        Ok(ParkedEvent {
            projection: name.to_owned(),
            event: StoredEvent {
                id: EventId::from_uuid(id),
                stream_id: StreamId::new(stream).map_err(|e| bad("stream id", &e))?,
                version: u64::try_from(version).unwrap_or(0),
                position,
                event_type: EventType::from(event_type),
                schema_version: u32::try_from(schema_version).unwrap_or(0),
                codec: if codec == "json" {
                    CodecTag::JSON
                } else {
                    CodecTag::from(codec)
                },
                payload: Bytes::from(payload),
                metadata: metadata.map(|m| m.0).unwrap_or_default(),
                recorded_at: read_time(r, 9).map_err(|e| bad("recorded_at", &e))?,
            },
            error: r.try_get(10).map_err(&m)?,
            parked_at: read_opt_time(r, 11)
                .map_err(|e| bad("parked_at", &e))?
                .unwrap_or_else(mink_es::now_micros),
        })
    }
}

fn meta(m: &Metadata) -> Option<Json<&Metadata>> {
    (!m.is_empty()).then_some(Json(m))
}

impl ProjectionControl for PgControl {
    fn report<'a>(&'a self, status: &'a ProjectionStatus) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let (at, to) = status.rebuild_progress.unzip();
            sqlx::query(self.sql.report.sql())
                .bind(status.name.as_str())
                .bind(state_name(status.state))
                .bind(status.checkpoint.map(|p| p.to_bytes().to_vec()))
                .bind(status.owner.as_deref())
                .bind(status.last_error.as_deref())
                .bind(i64::try_from(status.parked).unwrap_or(i64::MAX))
                .bind(at.map(|p| p.to_bytes().to_vec()))
                .bind(to.map(|p| p.to_bytes().to_vec()))
                .bind(status.updated_at)
                .execute(&self.pool)
                .await
                .map_err(self.m())?;
            Ok(())
        })
    }

    fn statuses(&self) -> BoxFuture<'_, Result<Vec<ProjectionStatus>>> {
        Box::pin(async move {
            let rows = sqlx::query(self.sql.statuses.sql())
                .fetch_all(&self.pool)
                .await
                .map_err(self.m())?;
            rows.iter().map(|r| self.decode_status(r)).collect()
        })
    }

    fn request<'a>(&'a self, name: &'a str, command: Command) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let id: i64 = sqlx::query_scalar(self.sql.request.sql())
                .bind(name)
                .bind(Json(&command))
                .fetch_one(&self.pool)
                .await
                .map_err(self.m())?;
            Ok(u64::try_from(id).unwrap_or(0))
        })
    }

    fn pending<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<Request>>> {
        Box::pin(async move {
            let rows = sqlx::query(self.sql.pending.sql())
                .bind(name)
                .fetch_all(&self.pool)
                .await
                .map_err(self.m())?;
            let m = self.m();
            rows.iter()
                .map(|r| {
                    let id: i64 = r.try_get(0).map_err(&m)?;
                    let command: Json<Command> = r.try_get(2).map_err(&m)?;
                    Ok(Request {
                        id: u64::try_from(id).unwrap_or(0),
                        name: r.try_get(1).map_err(&m)?,
                        command: command.0,
                    })
                })
                .collect()
        })
    }

    fn complete<'a>(&'a self, id: u64, error: Option<&'a str>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query(self.sql.complete.sql())
                .bind(i64::try_from(id).unwrap_or(i64::MAX))
                .bind(error)
                .execute(&self.pool)
                .await
                .map_err(self.m())?;
            Ok(())
        })
    }

    fn outcome(&self, id: u64) -> BoxFuture<'_, Result<Option<Option<String>>>> {
        Box::pin(async move {
            let row = sqlx::query(self.sql.outcome.sql())
                .bind(i64::try_from(id).unwrap_or(i64::MAX))
                .fetch_optional(&self.pool)
                .await
                .map_err(self.m())?;
            let Some(r) = row else { return Ok(None) };
            let done: bool = r.try_get(0).map_err(self.m())?;
            if !done {
                return Ok(None);
            }
            Ok(Some(r.try_get(1).map_err(self.m())?))
        })
    }

    fn park<'a>(
        &'a self,
        name: &'a str,
        event: &'a StoredEvent,
        error: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query(self.sql.park.sql())
                .bind(name)
                .bind(&event.position.to_bytes()[..])
                .bind(*event.id.as_uuid())
                .bind(event.stream_id.as_str())
                .bind(i64::try_from(event.version).unwrap_or(i64::MAX))
                .bind(event.event_type.as_str())
                .bind(i32::try_from(event.schema_version).unwrap_or(i32::MAX))
                .bind(event.codec.as_str())
                .bind(event.payload.as_ref())
                .bind(meta(&event.metadata))
                .bind(event.recorded_at)
                .bind(error.replace('\0', "\u{fffd}"))
                .execute(&self.pool)
                .await
                .map_err(self.m())?;
            Ok(())
        })
    }

    fn parked<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<ParkedEvent>>> {
        Box::pin(async move {
            let rows = sqlx::query(self.sql.parked.sql())
                .bind(name)
                .fetch_all(&self.pool)
                .await
                .map_err(self.m())?;
            rows.iter().map(|r| self.decode_parked(name, r)).collect()
        })
    }

    fn unpark<'a>(&'a self, name: &'a str, positions: &'a [Position]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            if positions.is_empty() {
                return Ok(());
            }
            let bytes: Vec<Vec<u8>> = positions.iter().map(|p| p.to_bytes().to_vec()).collect();
            sqlx::query(self.sql.unpark.sql())
                .bind(name)
                .bind(bytes)
                .execute(&self.pool)
                .await
                .map_err(self.m())?;
            Ok(())
        })
    }

    fn acquire<'a>(
        &'a self,
        name: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let row = sqlx::query(self.sql.acquire.sql())
                .bind(name)
                .bind(owner)
                .bind(ttl_micros(ttl))
                .fetch_optional(&self.pool)
                .await
                .map_err(self.m())?;
            Ok(row.is_some())
        })
    }

    fn release<'a>(&'a self, name: &'a str, owner: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query(self.sql.release.sql())
                .bind(name)
                .bind(owner)
                .execute(&self.pool)
                .await
                .map_err(self.m())?;
            Ok(())
        })
    }
}

// ---------------------------------------------------------------------------------
// The async target.

/// Another process moved the checkpoint of a projection since this target read or
/// wrote it: this target's batch was not applied. Transient: the worker re-reads the
/// checkpoint when it takes the projection's lease again.
#[derive(Debug, thiserror::Error)]
#[error(
    "the checkpoint of projection {projection:?} was moved by another process (expected {expected}); \
     the batch was not applied"
)]
pub struct CheckpointMoved {
    /// The projection (or partition).
    pub projection: String,
    /// The checkpoint this target expected ("none" before the first batch).
    pub expected: String,
}

#[derive(Default)]
struct TargetState {
    /// The tables were ensured.
    ensured: bool,
    /// The checkpoint as this target last read or wrote it (`Some(None)`: no row).
    known: Option<Option<Position>>,
    /// Writes go to the shadow tables (a blue/green rebuild is in progress).
    rebuilding: bool,
    /// The position at which the rebuild swaps its shadow tables in.
    rebuild_target: Option<Position>,
    /// Another process moved the checkpoint: refuse until it is read again.
    stale: bool,
    /// A batch whose commit's outcome is unknown: the checkpoint it would have written.
    uncertain: Option<Position>,
}

/// An async [`ReadModelProjection`] on PostgreSQL: the [`ProjectionTarget`] a
/// [`ProjectionEngine`](mink_es::projection::ProjectionEngine) worker drives, with the
/// read models and the checkpoint in the store's schema.
///
/// * **Exactly once.** [`apply_batch`](ProjectionTarget::apply_batch) is one
///   transaction: the projection applies the events to a [`PgTxReadModelStore`] bound
///   to it (a unit of work: see there), the changes are flushed, and the checkpoint is
///   moved, then the transaction commits. The transaction first locks the checkpoint's
///   row (`SELECT … FOR UPDATE`) and compares it with the checkpoint this target last
///   read or wrote (a compare-and-set): if another process moved it (it took the
///   projection over, or is applying the same batch right now), nothing is applied and
///   the batch fails with a transient [`CheckpointMoved`]; the target refuses every batch until the worker
///   reads the checkpoint again. Two processes can therefore never both apply a batch,
///   and a crash (even `kill -9` mid-batch) loses nothing and applies nothing twice.
///   A commit whose outcome is unknown (the connection dropped) is settled by reading
///   the checkpoint before the next batch.
/// * **Tables** of [`ReadModelProjection::models`] are ensured on first use (created,
///   or rebuilt for a changed declaration).
/// * **Blue/green rebuilds.** [`reset`](ProjectionTarget::reset) to
///   [`Position::START`] creates empty shadow tables (`rm_<NAME>__next`), records that
///   the projection is rebuilding (table `mink_projection_rebuilds`) and sets the
///   checkpoint to the start, in one transaction; from then on batches write the shadow
///   tables, also after a crash and restart. The batch that reaches the position the
///   feed's head had when the rebuild started (or [`finish_rebuild`](ProjectionTarget::finish_rebuild),
///   whichever comes first) drops the live tables and renames the shadow tables (with
///   their indexes) in their place and clears the mark, in its transaction: a rebuild
///   resumed after a crash swaps in when it catches up, too. Readers see the old model until the
///   swap, then the new one, never a half-built one. A reset to another position
///   empties the current tables in place and moves the checkpoint.
/// * **Partitions** (made by [`PgProjectionTarget::partitions`]) share their tables:
///   a blue/green rebuild of one partition would swap out the rows of the others, so a
///   reset of a partition is refused with [`Error::InvalidProjection`]. Rebuild a
///   partitioned projection by stopping its workers, emptying its tables and deleting
///   its partitions' checkpoints, or register it unpartitioned under a new name.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use mink_es::projection::{AsyncOptions, ProjectionEngine, ReadModelProjection};
/// # async fn f<P: ReadModelProjection + Clone>(store: mink_postgres::PgEventStore, counts: P) -> mink_es::Result<()> {
/// use mink_postgres::PgProjectionTarget;
/// let mut engine = ProjectionEngine::new(store.clone(), Arc::new(store.projection_control()));
/// engine.add(PgProjectionTarget::new(&store, counts.clone())?, AsyncOptions::default())?;
/// engine.add_partitioned("counts_by_4", 4, PgProjectionTarget::partitions(&store, counts)?, AsyncOptions::default())?;
/// let handle = engine.start(tokio_util::sync::CancellationToken::new());
/// # let _ = handle; Ok(()) }
/// ```
pub struct PgProjectionTarget<P> {
    projection: Arc<P>,
    name: String,
    partitioned: bool,
    store: PgEventStore,
    models: Arc<Vec<Schema>>,
    read_models: PgReadModelStore,
    state: tokio::sync::Mutex<TargetState>,
}

impl<P> std::fmt::Debug for PgProjectionTarget<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgProjectionTarget")
            .field("name", &self.name)
            .field("schema", self.store.schema())
            .finish_non_exhaustive()
    }
}

fn checkpoint_sql(schema: &SchemaName) -> String {
    render(
        "SELECT (SELECT position FROM {schema}.checkpoints WHERE name = $1), \
         (SELECT target FROM {schema}.mink_projection_rebuilds WHERE name = $1)",
        schema,
    )
}

impl<P: ReadModelProjection> PgProjectionTarget<P> {
    /// The target of `projection` on `store` (whose schema must be migrated).
    ///
    /// # Errors
    /// What [`ReadModelProjection::models`] returns.
    pub fn new(store: &PgEventStore, projection: P) -> Result<Self> {
        let models = Arc::new(projection.models()?);
        let name = projection.name().to_owned();
        Ok(Self::build(
            store,
            Arc::new(projection),
            name,
            false,
            models,
        ))
    }

    /// A factory of the targets of `projection`'s partitions, for
    /// [`ProjectionEngine::add_partitioned`](mink_es::projection::ProjectionEngine::add_partitioned)
    /// (register it under `projection`'s name): each partition is named
    /// `{name}#{index}of{count}`, has its own checkpoint, and shares the tables.
    ///
    /// # Errors
    /// What [`ReadModelProjection::models`] returns.
    pub fn partitions(
        store: &PgEventStore,
        projection: P,
    ) -> Result<impl Fn(u32, u32) -> PgProjectionTarget<P> + use<P>> {
        let models = Arc::new(projection.models()?);
        let projection = Arc::new(projection);
        let store = store.clone();
        Ok(move |index: u32, count: u32| {
            let name = partition_name(projection.name(), index, count);
            Self::build(&store, projection.clone(), name, count > 1, models.clone())
        })
    }

    fn build(
        store: &PgEventStore,
        projection: Arc<P>,
        name: String,
        partitioned: bool,
        models: Arc<Vec<Schema>>,
    ) -> Self {
        PgProjectionTarget {
            projection,
            name,
            partitioned,
            read_models: store.read_models(),
            store: store.clone(),
            models,
            state: tokio::sync::Mutex::new(TargetState::default()),
        }
    }

    /// The projection.
    pub fn projection(&self) -> &P {
        &self.projection
    }

    fn ns(&self) -> &SchemaName {
        self.store.schema()
    }

    fn m(&self) -> impl Fn(sqlx::Error) -> Error + '_ {
        move |e| map(e, self.store.schema())
    }

    fn moved(&self, expected: Option<Position>) -> CheckpointMoved {
        CheckpointMoved {
            projection: self.name.clone(),
            expected: expected.map_or_else(|| "none".to_owned(), |p| p.to_string()),
        }
    }

    /// Reads the checkpoint and the rebuild mark (its target).
    async fn read(&self) -> Result<(Option<Position>, Option<Position>)> {
        let row = sqlx::query(AssertSqlSafe(checkpoint_sql(self.ns())))
            .bind(self.name.as_str())
            .fetch_one(self.store.pool())
            .await
            .map_err(self.m())?;
        let cp: Option<Vec<u8>> = row.try_get(0).map_err(self.m())?;
        let target: Option<Vec<u8>> = row.try_get(1).map_err(self.m())?;
        Ok((opt_position(cp)?, opt_position(target)?))
    }

    async fn load(&self, st: &mut TargetState) -> Result<Option<Position>> {
        let (cp, target) = self.read().await?;
        st.known = Some(cp);
        st.rebuilding = target.is_some();
        st.rebuild_target = target;
        st.stale = false;
        st.uncertain = None;
        Ok(cp)
    }

    /// Ensures the live tables (and, while rebuilding, the shadow tables).
    async fn ensure(&self, st: &mut TargetState) -> Result<()> {
        if st.ensured {
            return Ok(());
        }
        for m in self.models.iter() {
            self.read_models.ensure(m).await?;
        }
        if st.rebuilding {
            let mut tx = self.store.begin().await?;
            for m in self.models.iter() {
                ensure_in(&mut tx, self.ns(), m, &shadow_table(m)).await?;
            }
            tx.commit().await.map_err(self.m())?;
        }
        st.ensured = true;
        Ok(())
    }

    /// Locks the checkpoint's row for the transaction open on `conn` if it is still
    /// `expected` (creating it, at the start, when `expected` is none); false when
    /// another process moved (or created) it. A concurrent holder makes this wait
    /// until it commits or rolls back, so two transactions of one projection never
    /// apply at the same time, and the loser applies nothing.
    async fn lock_checkpoint(
        &self,
        conn: &mut PgConnection,
        expected: Option<Position>,
    ) -> Result<bool> {
        match expected {
            Some(p) => {
                let stored: Option<Vec<u8>> = sqlx::query_scalar(AssertSqlSafe(render(
                    "SELECT position FROM {schema}.checkpoints WHERE name = $1 FOR UPDATE",
                    self.ns(),
                )))
                .bind(self.name.as_str())
                .fetch_optional(&mut *conn)
                .await
                .map_err(self.m())?;
                Ok(opt_position(stored)? == Some(p))
            }
            None => {
                let done = sqlx::query(AssertSqlSafe(render(
                    "INSERT INTO {schema}.checkpoints (name, position, updated_at) \
                     VALUES ($1, $2, statement_timestamp()) ON CONFLICT (name) DO NOTHING",
                    self.ns(),
                )))
                .bind(self.name.as_str())
                .bind(&Position::START.to_bytes()[..])
                .execute(&mut *conn)
                .await
                .map_err(self.m())?;
                Ok(done.rows_affected() == 1)
            }
        }
    }

    /// Moves the checkpoint locked by [`Self::lock_checkpoint`] (compare-and-set
    /// again, for good measure); false when it is not `expected`.
    async fn write_checkpoint(
        &self,
        conn: &mut PgConnection,
        expected: Option<Position>,
        to: Position,
    ) -> Result<bool> {
        let done = sqlx::query(AssertSqlSafe(render(
            "UPDATE {schema}.checkpoints SET position = $2, updated_at = statement_timestamp() \
             WHERE name = $1 AND position = $3",
            self.ns(),
        )))
        .bind(self.name.as_str())
        .bind(&to.to_bytes()[..])
        .bind(&expected.unwrap_or(Position::START).to_bytes()[..])
        .execute(&mut *conn)
        .await
        .map_err(self.m())?;
        Ok(done.rows_affected() == 1)
    }

    /// Settles a batch whose commit's outcome was unknown; `Some(true)` when that batch
    /// was this one and it committed.
    async fn settle(&self, st: &mut TargetState, checkpoint: Position) -> Result<bool> {
        let Some(attempted) = st.uncertain else {
            return Ok(false);
        };
        let (stored, target) = self.read().await?;
        st.uncertain = None;
        st.rebuilding = target.is_some();
        st.rebuild_target = target;
        if stored == Some(attempted) && st.known != Some(Some(attempted)) {
            st.known = Some(stored);
            return Ok(checkpoint == attempted);
        }
        if Some(stored) != st.known {
            st.stale = true;
        }
        Ok(false)
    }

    async fn apply_inner(
        &self,
        events: &[mink_es::StoredEvent],
        checkpoint: Position,
    ) -> std::result::Result<(), ProjectionError> {
        let mut guard = self.state.lock().await;
        let st = &mut *guard;
        if st.known.is_none() {
            self.load(st).await?;
        }
        if self.settle(st, checkpoint).await? {
            return Ok(());
        }
        let expected = st.known.flatten();
        if st.stale {
            return Err(ProjectionError::transient(self.moved(expected)));
        }
        self.ensure(st).await?;
        let mut tx = self.store.begin().await?;
        if !self.lock_checkpoint(&mut tx, expected).await? {
            let _ = tx.rollback().await;
            st.stale = true;
            return Err(ProjectionError::transient(self.moved(expected)));
        }
        if !events.is_empty() {
            let outcome = {
                let mut models =
                    PgTxReadModelStore::new(&mut tx, self.ns().clone()).shadow(st.rebuilding);
                for m in self.models.iter() {
                    models.assume_ensured(m);
                }
                match self.projection.apply(&models, events).await {
                    Ok(()) => models.flush().await.map_err(ProjectionError::from),
                    Err(e) => Err(e),
                }
            };
            if let Err(e) = outcome {
                let _ = tx.rollback().await;
                return Err(e);
            }
        }
        if !self.write_checkpoint(&mut tx, expected, checkpoint).await? {
            let _ = tx.rollback().await;
            st.stale = true;
            return Err(ProjectionError::transient(self.moved(expected)));
        }
        // A rebuild that reached the head the feed had when it started swaps its shadow
        // tables in with this batch (also when it was resumed after a crash).
        let swap = st.rebuilding && st.rebuild_target.is_some_and(|t| checkpoint >= t);
        if swap && let Err(e) = self.swap_in(&mut tx).await {
            let _ = tx.rollback().await;
            return Err(ProjectionError::from(e));
        }
        if let Err(e) = tx.commit().await {
            st.uncertain = Some(checkpoint);
            return Err(ProjectionError::from(self.m()(e)));
        }
        st.known = Some(Some(checkpoint));
        if swap {
            st.rebuilding = false;
            st.rebuild_target = None;
            tracing::info!(projection = %self.name, "blue/green rebuild swapped in");
        }
        Ok(())
    }

    async fn reset_inner(&self, to: Position) -> Result<()> {
        if self.partitioned {
            return Err(Error::InvalidProjection {
                name: self.name.clone(),
                reason: "the partitions of a projection share its read-model tables, so one \
                         partition cannot be rebuilt or reset alone; rebuild it unpartitioned"
                    .to_owned(),
            });
        }
        let mut guard = self.state.lock().await;
        let st = &mut *guard;
        if st.known.is_none() || st.uncertain.is_some() {
            self.load(st).await?;
        }
        let expected = st.known.flatten();
        if st.stale {
            return Err(Error::backend(true, self.moved(expected)));
        }
        self.ensure(st).await?;
        let blue_green = to == Position::START;
        let target = if blue_green {
            Some(self.store.head_position().await?)
        } else {
            None
        };
        let mut tx = self.store.begin().await?;
        if !self.lock_checkpoint(&mut tx, expected).await? {
            let _ = tx.rollback().await;
            st.stale = true;
            return Err(Error::backend(true, self.moved(expected)));
        }
        if let Some(target) = target {
            for m in self.models.iter() {
                let shadow = shadow_table(m);
                drop_table(&mut tx, self.ns(), &shadow).await?;
                create(&mut tx, self.ns(), m, &shadow).await?;
            }
            let tables: Vec<String> = self.models.iter().map(|m| m.table().to_owned()).collect();
            sqlx::query(AssertSqlSafe(render(
                "INSERT INTO {schema}.mink_projection_rebuilds (name, tables, target) \
                 VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE SET tables = EXCLUDED.tables, \
                 target = EXCLUDED.target, started_at = statement_timestamp()",
                self.ns(),
            )))
            .bind(self.name.as_str())
            .bind(tables)
            .bind(&target.to_bytes()[..])
            .execute(&mut *tx)
            .await
            .map_err(self.m())?;
        } else {
            for m in self.models.iter() {
                let table = if st.rebuilding {
                    shadow_table(m)
                } else {
                    m.table().to_owned()
                };
                sqlx::raw_sql(AssertSqlSafe(format!(
                    "DELETE FROM {}",
                    qualified(self.ns(), &table)
                )))
                .execute(&mut *tx)
                .await
                .map_err(self.m())?;
            }
        }
        if !self.write_checkpoint(&mut tx, expected, to).await? {
            let _ = tx.rollback().await;
            st.stale = true;
            return Err(Error::backend(true, self.moved(expected)));
        }
        tx.commit().await.map_err(self.m())?;
        st.known = Some(Some(to));
        if let Some(target) = target {
            st.rebuilding = true;
            st.rebuild_target = Some(target);
        }
        Ok(())
    }

    async fn finish_inner(&self) -> Result<()> {
        let mut guard = self.state.lock().await;
        let st = &mut *guard;
        if st.known.is_none() || st.uncertain.is_some() {
            self.load(st).await?;
        }
        let expected = st.known.flatten();
        let mut tx = self.store.begin().await?;
        if expected.is_none() {
            // No checkpoint: no rebuild ever started here.
            let _ = tx.rollback().await;
            return Ok(());
        }
        let locked = self.lock_checkpoint(&mut tx, expected).await?;
        let rebuilding: bool = sqlx::query_scalar(AssertSqlSafe(render(
            "SELECT EXISTS (SELECT 1 FROM {schema}.mink_projection_rebuilds WHERE name = $1)",
            self.ns(),
        )))
        .bind(self.name.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(self.m())?;
        if !locked {
            let _ = tx.rollback().await;
            st.stale = true;
            return Err(Error::backend(true, self.moved(expected)));
        }
        if !rebuilding {
            let _ = tx.rollback().await;
            st.rebuilding = false;
            st.rebuild_target = None;
            return Ok(());
        }
        self.swap_in(&mut tx).await?;
        tx.commit().await.map_err(self.m())?;
        st.rebuilding = false;
        st.rebuild_target = None;
        Ok(())
    }

    /// Replaces the live tables by the shadow tables and clears the rebuild mark, in
    /// the transaction open on `conn`.
    async fn swap_in(&self, conn: &mut PgConnection) -> Result<()> {
        for m in self.models.iter() {
            let shadow = shadow_table(m);
            if describe_table(conn, self.ns(), &shadow).await?.is_some() {
                swap(conn, self.ns(), m, &shadow, m.table()).await?;
            }
        }
        sqlx::query(AssertSqlSafe(render(
            "DELETE FROM {schema}.mink_projection_rebuilds WHERE name = $1",
            self.ns(),
        )))
        .bind(self.name.as_str())
        .execute(&mut *conn)
        .await
        .map_err(self.m())?;
        Ok(())
    }

    /// Whether this target writes its shadow tables (a blue/green rebuild is in
    /// progress), as last read or set.
    pub async fn is_rebuilding(&self) -> bool {
        self.state.lock().await.rebuilding
    }
}

impl<P: ReadModelProjection> ProjectionTarget for PgProjectionTarget<P> {
    fn name(&self) -> &str {
        &self.name
    }

    fn filter(&self) -> FeedFilter {
        self.projection.filter()
    }

    fn checkpoint(&self) -> BoxFuture<'_, Result<Option<Position>>> {
        Box::pin(async move {
            let mut st = self.state.lock().await;
            self.load(&mut st).await
        })
    }

    fn apply_batch<'a>(
        &'a self,
        events: &'a [mink_es::StoredEvent],
        checkpoint: Position,
    ) -> BoxFuture<'a, std::result::Result<(), ProjectionError>> {
        Box::pin(self.apply_inner(events, checkpoint))
    }

    fn reset(&self, to: Position) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.reset_inner(to))
    }

    fn finish_rebuild(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.finish_inner())
    }
}
