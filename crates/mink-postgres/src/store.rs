//! The store: [`PgEventStore`] and its builder.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mink_es::outbox::Outbox;
use mink_es::store::{FeedNotifier, check_idempotent_repeat, validate_append};
use mink_es::{
    AppendResult, Error, EventId, ExpectedVersion, FeedFilter, FeedPage, FeedReader, FeedSignal,
    Metadata, NewEvent, Position, Result, StoreLimits, StoredEvent, StreamId, StreamInfo,
    StreamReader, StreamWriter,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool, Postgres, Row, Transaction};
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, DropGuard};
use uuid::Uuid;

use crate::error::{Classified, PgStoreError, classify, map};
use crate::row::{EventDecoder, Xid8, cursor, limit_i64, position_of, to_i64};
use crate::schema::{AppendKind, SchemaName, Shape, Statements, filter_index};
use crate::time::read_time;
use crate::{FeedLag, PgControl, PgReadModelStore, PgTxReadModelStore, migrate, notify};
use mink_es::projection::ReadModelProjection;
use mink_es::readmodel::{ReadModelStore as _, Schema};

/// How many times an append re-runs after a race that its statement could not settle
/// (the stream was created or an identical append committed while it ran).
const APPEND_ATTEMPTS: u32 = 4;

/// An event store on PostgreSQL.
///
/// Cloning gives another handle to the same store (one pool). Background tasks (the
/// LISTEN task feeding [`FeedReader::feed_signal`] and the task announcing appends) stop
/// when the last handle is dropped or when the builder's cancellation token fires.
///
/// See the [crate docs](crate) for the schema, the feed's ordering and its trade-offs.
#[derive(Clone)]
pub struct PgEventStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    /// Options for the store's own background connections.
    connect_options: PgConnectOptions,
    schema: SchemaName,
    sql: Statements,
    limits: StoreLimits,
    channel: String,
    notifier: Arc<FeedNotifier>,
    listen: bool,
    listener_started: AtomicBool,
    announce: bool,
    announce_interval: Duration,
    announcer_started: AtomicBool,
    announce_requests: Arc<Notify>,
    /// The routes of the outbox appends write, if any.
    outbox: Option<OutboxRoutes>,
    outbox_channel: String,
    /// Fires when outbox messages may be deliverable (see [`crate::PgOutboxStore`]).
    outbox_notifier: Arc<FeedNotifier>,
    outbox_listener_started: AtomicBool,
    /// Set when the next announcement must also wake outbox processors.
    announce_outbox: Arc<AtomicBool>,
    /// The inline projections every append runs in its transaction.
    inline: Vec<InlineEntry>,
    /// Set once the inline projections' tables are ensured.
    inline_ensured: tokio::sync::OnceCell<()>,
    cancel: CancellationToken,
    _stop_tasks: DropGuard,
}

impl std::fmt::Debug for PgEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgEventStore")
            .field("schema", &self.inner.schema)
            .field("limits", &self.inner.limits)
            .field("outbox", &self.outbox())
            .finish_non_exhaustive()
    }
}

/// Builds a [`PgEventStore`]: connection, pool, schema, limits, wake-ups.
///
/// ```no_run
/// # async fn f() -> mink_es::Result<()> {
/// use std::time::Duration;
/// use mink_postgres::PgEventStore;
/// let store = PgEventStore::builder("postgres://app@db/app")
///     .schema("orders")
///     .max_connections(20)
///     .statement_timeout(Duration::from_secs(30))
///     .build()
///     .await?;
/// store.migrate().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct PgEventStoreBuilder {
    source: Source,
    schema: String,
    max_connections: u32,
    min_connections: u32,
    acquire_timeout: Duration,
    idle_timeout: Option<Duration>,
    max_lifetime: Option<Duration>,
    statement_timeout: Option<Duration>,
    application_name: Option<String>,
    limits: StoreLimits,
    listen: bool,
    announce: bool,
    announce_interval: Duration,
    cancel: Option<CancellationToken>,
    outbox: Option<Outbox>,
    inline: InlineProjections,
}

/// The inline projections registered on a builder.
#[derive(Clone, Default)]
struct InlineProjections(Vec<Arc<dyn ReadModelProjection>>);

impl std::fmt::Debug for InlineProjections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|p| p.name()))
            .finish()
    }
}

/// An inline projection with its validated models.
struct InlineEntry {
    projection: Arc<dyn ReadModelProjection>,
    models: Vec<Schema>,
}

#[derive(Clone, Debug)]
enum Source {
    Url(String),
    Options(Box<PgConnectOptions>),
    Pool(PgPool),
}

impl PgEventStoreBuilder {
    fn with_source(source: Source) -> Self {
        PgEventStoreBuilder {
            source,
            schema: SchemaName::DEFAULT.to_owned(),
            max_connections: 10,
            min_connections: 0,
            acquire_timeout: Duration::from_secs(30),
            idle_timeout: Some(Duration::from_secs(600)),
            max_lifetime: Some(Duration::from_secs(1800)),
            statement_timeout: None,
            application_name: None,
            limits: StoreLimits::default(),
            listen: true,
            announce: true,
            announce_interval: Duration::from_millis(5),
            cancel: None,
            outbox: None,
            inline: InlineProjections::default(),
        }
    }

    /// The schema holding the store's tables (default `mink`; see [`SchemaName`]).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Most connections the pool opens (default 10). Ignored with
    /// [`PgEventStore::builder_from_pool`].
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Connections the pool keeps open when idle (default 0).
    pub fn min_connections(mut self, n: u32) -> Self {
        self.min_connections = n;
        self
    }

    /// Longest wait for a pooled connection (default 30 s).
    pub fn acquire_timeout(mut self, d: Duration) -> Self {
        self.acquire_timeout = d;
        self
    }

    /// Closes connections idle for longer than this (default 10 min; `None`: never).
    pub fn idle_timeout(mut self, d: Option<Duration>) -> Self {
        self.idle_timeout = d;
        self
    }

    /// Closes connections older than this (default 30 min; `None`: never).
    pub fn max_lifetime(mut self, d: Option<Duration>) -> Self {
        self.max_lifetime = d;
        self
    }

    /// PostgreSQL's `statement_timeout` for the store's connections (default: the
    /// server's). A timed-out statement fails with a transient [`Error::Backend`].
    pub fn statement_timeout(mut self, d: Duration) -> Self {
        self.statement_timeout = Some(d);
        self
    }

    /// The `application_name` the connections report (default `mink-postgres`).
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = Some(name.into());
        self
    }

    /// Append limits (default [`StoreLimits::default`]).
    pub fn limits(mut self, limits: StoreLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Whether [`FeedReader::feed_signal`] (and the outbox's
    /// [`signal`](mink_es::outbox::OutboxStore::signal), see [`crate::PgOutboxStore`])
    /// is fed by LISTEN (default true). Without it, subscribers and processors in this
    /// process still wake on this handle's own appends, and poll.
    pub fn listen(mut self, on: bool) -> Self {
        self.listen = on;
        self
    }

    /// Whether appends made through the pool are announced with NOTIFY (default true),
    /// so that subscribers (and, for appends that wrote outbox messages, outbox
    /// processors) in other processes wake at once instead of at their next poll.
    /// Appends made in a caller's transaction always notify inside it.
    pub fn announce(mut self, on: bool) -> Self {
        self.announce = on;
        self
    }

    /// Shortest time between two NOTIFYs of this handle (default 5 ms): under load,
    /// announcements are coalesced rather than sent once per append.
    pub fn announce_interval(mut self, d: Duration) -> Self {
        self.announce_interval = d;
        self
    }

    /// Stops the store's background tasks when `token` is cancelled (they also stop
    /// when the last handle is dropped). The store stays usable; subscribers poll.
    pub fn cancellation_token(mut self, token: CancellationToken) -> Self {
        self.cancel = Some(token);
        self
    }

    /// Routes appended events to outbox destinations: every append (through the pool
    /// or [`PgEventStore::append_in`]) writes the messages `outbox` makes of its events
    /// into the `outbox` table, in the same transaction as the events, so a message
    /// exists exactly when its event does. A route whose transform fails fails the
    /// append, and nothing is written. Deliver the messages with an
    /// [`OutboxProcessor`](mink_es::outbox::OutboxProcessor) over
    /// [`PgEventStore::outbox_store`] (any process using the schema may run one; it
    /// needs no routes). See the [crate docs](crate#outbox) for the costs.
    pub fn outbox(mut self, outbox: Outbox) -> Self {
        self.outbox = Some(outbox);
        self
    }

    /// Runs `projection` inline: every append (through the pool or
    /// [`PgEventStore::append_in`]) applies the events that the projection's
    /// [`filter`](ReadModelProjection::filter) accepts to its read models, in the
    /// append's transaction, through a [`PgTxReadModelStore`](crate::PgTxReadModelStore)
    /// bound to it. If the projection (or the flush of its changes) fails, the append
    /// fails with [`Error::InlineProjection`] and nothing is written: no event, no outbox
    /// message, no read-model change. Its tables are ensured at the first append.
    ///
    /// A store with inline projections appends through the pool in a transaction of
    /// its own (`BEGIN`, the append's statement, the projections' statements,
    /// `COMMIT`), and in a caller's transaction within a savepoint that a failure rolls
    /// back (the caller's transaction stays usable). Combines with
    /// [`outbox`](Self::outbox). [`build`](Self::build) refuses an empty or duplicate
    /// name with [`Error::InvalidProjection`].
    pub fn inline_projection(mut self, projection: impl ReadModelProjection) -> Self {
        self.inline.0.push(Arc::new(projection));
        self
    }

    /// The inline projections with their models; refuses empty and duplicate names.
    fn inline_entries(&self) -> Result<Vec<InlineEntry>> {
        let mut names = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(self.inline.0.len());
        for p in &self.inline.0 {
            let name = p.name();
            if name.trim().is_empty() || name.chars().any(char::is_control) {
                return Err(Error::InvalidProjection {
                    name: name.chars().take(64).collect(),
                    reason:
                        "an inline projection needs a non-empty name without control characters"
                            .to_owned(),
                });
            }
            if !names.insert(name.to_owned()) {
                return Err(Error::InvalidProjection {
                    name: name.chars().take(64).collect(),
                    reason: "another inline projection of this store has this name".to_owned(),
                });
            }
            out.push(InlineEntry {
                projection: p.clone(),
                models: p.models()?,
            });
        }
        Ok(out)
    }

    /// Connects (one connection is opened to fail fast) and builds the store. It does
    /// not migrate: call [`PgEventStore::migrate`] or [`PgEventStore::verify`].
    ///
    /// # Errors
    /// [`Error::InvalidProjection`] for an inline projection with an empty or duplicate
    /// name (checked before connecting); connection errors.
    pub async fn build(self) -> Result<PgEventStore> {
        let schema = SchemaName::new(&self.schema)?;
        let inline = self.inline_entries()?;
        let app = self
            .application_name
            .clone()
            .unwrap_or_else(|| "mink-postgres".to_owned());
        let customize = |mut o: PgConnectOptions| {
            o = o.application_name(&app);
            if let Some(t) = self.statement_timeout {
                o = o.options([("statement_timeout", format!("{}ms", t.as_millis()))]);
            }
            o
        };
        let pool_options = || {
            PgPoolOptions::new()
                .max_connections(self.max_connections)
                .min_connections(self.min_connections)
                .acquire_timeout(self.acquire_timeout)
                .idle_timeout(self.idle_timeout)
                .max_lifetime(self.max_lifetime)
        };
        let (pool, connect_options) = match self.source {
            Source::Url(ref url) => {
                let o: PgConnectOptions = url
                    .parse()
                    .map_err(|e| Error::InvalidArgument(format!("invalid PostgreSQL URL: {e}")))?;
                let o = customize(o);
                let pool = pool_options()
                    .connect_with(o.clone())
                    .await
                    .map_err(|e| map(e, &schema))?;
                (pool, o)
            }
            Source::Options(ref o) => {
                let o = customize((**o).clone());
                let pool = pool_options()
                    .connect_with(o.clone())
                    .await
                    .map_err(|e| map(e, &schema))?;
                (pool, o)
            }
            Source::Pool(ref pool) => (pool.clone(), (*pool.connect_options()).clone()),
        };
        let cancel = self
            .cancel
            .as_ref()
            .map_or_else(CancellationToken::new, CancellationToken::child_token);
        let sql = Statements::new(&schema);
        let outbox_channel = schema.outbox_channel();
        Ok(PgEventStore {
            inner: Arc::new(Inner {
                pool,
                connect_options: connect_options.application_name(&format!("{app} (wake-ups)")),
                channel: schema.channel(),
                schema,
                sql,
                limits: self.limits,
                notifier: Arc::new(FeedNotifier::new()),
                listen: self.listen,
                listener_started: AtomicBool::new(false),
                announce: self.announce,
                announce_interval: self.announce_interval,
                announcer_started: AtomicBool::new(false),
                announce_requests: Arc::new(Notify::new()),
                outbox: self.outbox.map(OutboxRoutes::new),
                outbox_channel,
                outbox_notifier: Arc::new(FeedNotifier::new()),
                outbox_listener_started: AtomicBool::new(false),
                announce_outbox: Arc::new(AtomicBool::new(false)),
                inline,
                inline_ensured: tokio::sync::OnceCell::new(),
                _stop_tasks: cancel.clone().drop_guard(),
                cancel,
            }),
        })
    }
}

impl PgEventStore {
    /// A builder connecting to `url` (`postgres://user:pass@host:port/db?sslmode=…`).
    pub fn builder(url: impl Into<String>) -> PgEventStoreBuilder {
        PgEventStoreBuilder::with_source(Source::Url(url.into()))
    }

    /// A builder connecting with `options`.
    pub fn builder_with(options: PgConnectOptions) -> PgEventStoreBuilder {
        PgEventStoreBuilder::with_source(Source::Options(Box::new(options)))
    }

    /// A builder using an existing pool (its pool settings are kept).
    pub fn builder_from_pool(pool: PgPool) -> PgEventStoreBuilder {
        PgEventStoreBuilder::with_source(Source::Pool(pool))
    }

    /// Connects to `url` with the defaults (schema `mink`).
    pub async fn connect(url: &str) -> Result<Self> {
        Self::builder(url).build().await
    }

    /// Applies the embedded migrations this schema lacks (see [`mod@crate::migrate`]).
    pub async fn migrate(&self) -> Result<migrate::MigrationReport> {
        migrate::migrate(&self.inner.pool, &self.inner.schema).await
    }

    /// Checks that the schema is migrated and that its transaction ids are sane (see
    /// [`PgStoreError::TransactionIdsFromTheFuture`]). Call it at start-up in processes
    /// that do not migrate.
    pub async fn verify(&self) -> Result<()> {
        migrate::verify(&self.inner.pool, &self.inner.schema).await
    }

    /// The schema holding this store's tables.
    pub fn schema(&self) -> &SchemaName {
        &self.inner.schema
    }

    /// The connection pool (for the application's own statements).
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The append limits.
    pub fn limits(&self) -> StoreLimits {
        self.inner.limits
    }

    /// Starts a transaction on the store's pool, for [`PgEventStore::append_in`] and the
    /// application's own writes.
    pub async fn begin(&self) -> Result<Transaction<'static, Postgres>> {
        self.inner
            .pool
            .begin()
            .await
            .map_err(|e| map(e, &self.inner.schema))
    }

    /// Appends inside a transaction the caller holds (`&mut *tx` for a
    /// [`sqlx::Transaction`]), with the same semantics as [`StreamWriter::append`].
    ///
    /// The events commit or roll back with the caller's transaction, together with its
    /// own writes. Subscribers are notified by a NOTIFY inside the transaction, which
    /// PostgreSQL delivers at commit and drops on rollback.
    ///
    /// With an [outbox](PgEventStoreBuilder::outbox), the append's messages are
    /// written in the caller's transaction too, and processors are woken at commit.
    /// A route whose transform fails fails the append with [`Error::Outbox`] and
    /// leaves the transaction as it was (the events are rolled back to a savepoint).
    ///
    /// A database error (other than a conflict found before writing) leaves the
    /// caller's transaction aborted, as any failed statement does.
    pub async fn append_in(
        &self,
        conn: &mut PgConnection,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        let appended = if self.needs_tx() {
            self.append_in_transformed(conn, stream, expected, events)
                .await?
        } else {
            self.append_on(conn, stream, expected, events, Mode::CallerTx, true)
                .await?
        };
        if !appended.result.deduplicated {
            // A plain NOTIFY: it must not change how the caller's transaction commits
            // (the announcer's `synchronous_commit = off` would).
            let q = if appended.messages > 0 {
                sqlx::query(self.inner.sql.notify_outbox_in_tx.sql())
                    .bind(self.inner.channel.as_str())
                    .bind(self.inner.outbox_channel.as_str())
            } else {
                sqlx::query(self.inner.sql.notify_in_tx.sql()).bind(self.inner.channel.as_str())
            };
            q.execute(&mut *conn)
                .await
                .map_err(|e| map(e, &self.inner.schema))?;
        }
        Ok(appended.result)
    }

    /// [`PgEventStore::append_in`] for routes that transform or inline projections:
    /// the transforms and projections need the stored events, so they run after the
    /// append's statement, and a failure rolls the events back to a savepoint.
    async fn append_in_transformed(
        &self,
        conn: &mut PgConnection,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended> {
        self.ensure_inline().await?;
        let routes = self.transforming_routes();
        let savepoint = |sql: &'static str| sqlx::raw_sql(sql);
        savepoint("SAVEPOINT mink_append")
            .execute(&mut *conn)
            .await
            .map_err(|e| self.map_err(e))?;
        let release = async |conn: &mut PgConnection| {
            savepoint("RELEASE SAVEPOINT mink_append")
                .execute(&mut *conn)
                .await
                .map_err(|e| self.map_err(e))
        };
        let appended = match self
            .append_on(
                conn,
                stream,
                expected,
                events,
                Mode::CallerTx,
                routes.is_none(),
            )
            .await
        {
            Ok(a) => a,
            Err(e) => {
                // Nothing was written; in an aborted transaction this fails too, and
                // the transaction stays aborted, as documented.
                let _ = release(conn).await;
                return Err(e);
            }
        };
        if appended.result.deduplicated {
            release(conn).await?;
            return Ok(appended);
        }
        let written = match routes {
            Some(routes) => {
                self.write_transformed(conn, routes, &appended.result.events)
                    .await
            }
            None => Ok(appended.messages),
        };
        let written = match written {
            Ok(messages) => self
                .run_inline(conn, stream, &appended.result.events)
                .await
                .map(|()| messages),
            Err(e) => Err(e),
        };
        match written {
            Ok(messages) => {
                release(conn).await?;
                Ok(Appended {
                    result: appended.result,
                    messages,
                })
            }
            // The insert failed: the transaction is aborted, as documented.
            Err(WriteFailure::Statement(e)) => Err(e),
            // A transform failed (or its output cannot be stored): undo the events.
            Err(WriteFailure::Refused(e)) => {
                savepoint("ROLLBACK TO SAVEPOINT mink_append")
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| self.map_err(e))?;
                release(conn).await?;
                Err(e)
            }
        }
    }

    /// An append through the pool for routes that transform or inline projections: in
    /// a transaction of its own, since the transforms and projections need the stored
    /// events (see [`Self::write_transformed`] and [`Self::run_inline`]).
    async fn append_transformed(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended> {
        self.ensure_inline().await?;
        let routes = self.transforming_routes();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut tx = self.begin().await?;
            let outcome = self
                .append_on(
                    &mut tx,
                    stream,
                    expected,
                    events.clone(),
                    Mode::OwnTx,
                    routes.is_none(),
                )
                .await;
            let appended = match outcome {
                Ok(a) => a,
                Err(e) => {
                    let _ = tx.rollback().await;
                    if attempt < APPEND_ATTEMPTS && restartable(&e, stream, expected) {
                        continue;
                    }
                    return Err(e);
                }
            };
            if appended.result.deduplicated {
                let _ = tx.rollback().await;
                return Ok(appended);
            }
            let messages = match routes {
                Some(routes) => match self
                    .write_transformed(&mut tx, routes, &appended.result.events)
                    .await
                {
                    Ok(n) => n,
                    Err(WriteFailure::Refused(e) | WriteFailure::Statement(e)) => {
                        let _ = tx.rollback().await;
                        return Err(e);
                    }
                },
                None => appended.messages,
            };
            if let Err(WriteFailure::Refused(e) | WriteFailure::Statement(e)) = self
                .run_inline(&mut tx, stream, &appended.result.events)
                .await
            {
                let _ = tx.rollback().await;
                // A read model changed under the projection (a concurrent append), or
                // a deadlock: the whole transaction runs again.
                if attempt < APPEND_ATTEMPTS && inline_retryable(&e) {
                    continue;
                }
                return Err(e);
            }
            tx.commit().await.map_err(|e| self.map_err(e))?;
            return Ok(Appended {
                result: appended.result,
                messages,
            });
        }
    }

    /// Writes the outbox messages `routes` make of just-stored `events`, in the
    /// append's transaction, and returns how many. Bodies equal to their event's travel
    /// as NULL (the statement copies the stored payload).
    async fn write_transformed(
        &self,
        conn: &mut PgConnection,
        routes: &Outbox,
        events: &[StoredEvent],
    ) -> std::result::Result<usize, WriteFailure> {
        let messages = routes.messages_for(events).map_err(WriteFailure::Refused)?;
        if messages.is_empty() {
            return Ok(0);
        }
        let mut ids = Vec::with_capacity(messages.len());
        let mut destinations = Vec::with_capacity(messages.len());
        let mut event_ids = Vec::with_capacity(messages.len());
        let mut codecs: Vec<Option<&str>> = Vec::with_capacity(messages.len());
        let mut payloads: Vec<Option<&[u8]>> = Vec::with_capacity(messages.len());
        let mut k = 0;
        for m in &messages {
            // Messages come in event order: find each one's event from the last one's.
            let event = events[k..]
                .iter()
                .position(|e| e.id == m.event_id)
                .map(|i| {
                    k += i;
                    &events[k]
                });
            let own = event.is_some_and(|e| e.codec == m.codec);
            if m.codec.as_str().contains('\0') {
                return Err(WriteFailure::Refused(Error::InvalidArgument(format!(
                    "the outbox route to {:?} gave event {} a codec tag with a NUL character",
                    m.destination, m.event_id
                ))));
            }
            ids.push(m.id);
            destinations.push(m.destination.as_str());
            event_ids.push(*m.event_id.as_uuid());
            codecs.push((!own).then_some(m.codec.as_str()));
            let same_body = event.is_some_and(|e| e.payload == m.payload);
            payloads.push((!same_body).then_some(m.payload.as_ref()));
        }
        let done = sqlx::query(self.inner.sql.outbox_insert.sql())
            .bind(ids)
            .bind(destinations)
            .bind(event_ids)
            .bind(codecs)
            .bind(payloads)
            .execute(&mut *conn)
            .await
            .map_err(|e| WriteFailure::Statement(self.map_err(e)))?;
        if done.rows_affected() != messages.len() as u64 {
            return Err(WriteFailure::Refused(
                PgStoreError::Corrupt {
                    what: "outbox",
                    detail: format!(
                        "{} of {} outbox messages found their event",
                        done.rows_affected(),
                        messages.len()
                    ),
                }
                .into(),
            ));
        }
        Ok(messages.len())
    }

    /// Whether appends need a transaction of their own (or a savepoint in the
    /// caller's): routes that transform, or inline projections.
    fn needs_tx(&self) -> bool {
        self.transforming_routes().is_some() || !self.inner.inline.is_empty()
    }

    /// The outbox routes, when one of them transforms.
    fn transforming_routes(&self) -> Option<&Outbox> {
        self.inner
            .outbox
            .as_ref()
            .filter(|o| o.transforms)
            .map(|o| &o.routes)
    }

    /// Ensures the tables of the inline projections (once per store handle).
    async fn ensure_inline(&self) -> Result<()> {
        if self.inner.inline.is_empty() {
            return Ok(());
        }
        self.inner
            .inline_ensured
            .get_or_try_init(|| async {
                let models = self.read_models();
                for entry in &self.inner.inline {
                    for m in &entry.models {
                        models.ensure_table(m).await?;
                    }
                }
                Ok::<(), Error>(())
            })
            .await?;
        Ok(())
    }

    /// Runs the inline projections on just-stored `events`, in the append's
    /// transaction open on `conn`.
    async fn run_inline(
        &self,
        conn: &mut PgConnection,
        stream: &StreamId,
        events: &[StoredEvent],
    ) -> std::result::Result<(), WriteFailure> {
        for entry in &self.inner.inline {
            let p = &entry.projection;
            let filter = p.filter();
            let all = filter.event_types.is_empty()
                && filter.streams.is_empty()
                && filter.categories.is_empty();
            let selected: std::borrow::Cow<'_, [StoredEvent]> = if all {
                std::borrow::Cow::Borrowed(events)
            } else {
                std::borrow::Cow::Owned(
                    events
                        .iter()
                        .filter(|e| filter.matches(e))
                        .cloned()
                        .collect(),
                )
            };
            if selected.is_empty() {
                continue;
            }
            let outcome = {
                let mut models =
                    PgTxReadModelStore::new(&mut *conn, self.inner.schema.clone()).lock_rows(true);
                for m in &entry.models {
                    models.assume_ensured(m);
                }
                match p.apply(&models, &selected).await {
                    Ok(()) => models.flush().await.map_err(mink_es::BoxError::from),
                    Err(e) => Err(mink_es::BoxError::from(e)),
                }
            };
            if let Err(source) = outcome {
                return Err(WriteFailure::Refused(Error::InlineProjection {
                    projection: p.name().to_owned(),
                    stream: stream.clone(),
                    source,
                }));
            }
        }
        Ok(())
    }

    /// The read models in this store's schema, on its pool (see [`PgReadModelStore`]).
    /// Each call gives a new handle, with its own set of ensured tables: ensure the
    /// tables a handle uses through it (cheap when they are up to date).
    pub fn read_models(&self) -> PgReadModelStore {
        PgReadModelStore::new(self.inner.pool.clone(), self.inner.schema.clone())
    }

    /// The projection control tables in this store's schema, on its pool (see
    /// [`PgControl`]): give it to a
    /// [`ProjectionEngine`](mink_es::projection::ProjectionEngine) and to
    /// [`ProjectionOps`](mink_es::projection::ops::ProjectionOps).
    pub fn projection_control(&self) -> PgControl {
        PgControl::new(self.inner.pool.clone(), self.inner.schema.clone())
    }

    /// Saves a checkpoint inside a transaction the caller holds, so that it commits
    /// together with the effect it records.
    pub async fn save_checkpoint_in(
        &self,
        conn: &mut PgConnection,
        name: &str,
        position: Position,
    ) -> Result<()> {
        crate::snapshot::save_checkpoint(self, conn, name, position).await
    }

    /// Creates (if missing, without blocking writers) the index that makes feed reads
    /// filtered by category cost a read of the category rather than of the feed:
    /// `(category, tx, position)`. Every append then pays one more index insert.
    pub async fn create_category_index(&self) -> Result<()> {
        self.create_index("events_category_idx", "category").await
    }

    /// Creates (if missing, without blocking writers) the index that makes feed reads
    /// filtered by event type cost a read of those types rather than of the feed:
    /// `(event_type, tx, position)`. Every append then pays one more index insert.
    pub async fn create_event_type_index(&self) -> Result<()> {
        self.create_index("events_event_type_idx", "event_type")
            .await
    }

    async fn create_index(&self, name: &str, column: &str) -> Result<()> {
        let schema = self.inner.schema.quoted();
        let create = format!(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {schema}.events ({column}, tx, position)"
        );
        for _ in 0..2 {
            sqlx::raw_sql(sqlx::AssertSqlSafe(create.clone()))
                .execute(&self.inner.pool)
                .await
                .map_err(|e| self.map_err(e))?;
            // A concurrent build that failed earlier leaves an invalid index behind,
            // which IF NOT EXISTS would keep: drop it and build again.
            let valid: Option<bool> = sqlx::query_scalar(
                "SELECT i.indisvalid FROM pg_index i \
                 JOIN pg_class c ON c.oid = i.indexrelid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2",
            )
            .bind(self.inner.schema.as_str())
            .bind(name)
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(|e| self.map_err(e))?;
            if valid != Some(false) {
                return Ok(());
            }
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP INDEX CONCURRENTLY IF EXISTS {schema}.{name}"
            )))
            .execute(&self.inner.pool)
            .await
            .map_err(|e| self.map_err(e))?;
        }
        Ok(())
    }

    /// How far the feed lags behind committed events, and why (see [`FeedLag`]).
    pub async fn feed_lag(&self) -> Result<FeedLag> {
        crate::lag::feed_lag(self).await
    }

    pub(crate) fn statements(&self) -> &Statements {
        &self.inner.sql
    }

    pub(crate) fn map_err(&self, e: sqlx::Error) -> Error {
        map(e, &self.inner.schema)
    }

    fn start_listener(&self) {
        let inner = &self.inner;
        if !inner.listen || inner.listener_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            inner.listener_started.store(false, Ordering::Release);
            return;
        };
        rt.spawn(notify::listen_task(
            inner.connect_options.clone(),
            inner.channel.clone(),
            inner.notifier.clone(),
            inner.cancel.clone(),
        ));
    }

    /// Wakes local subscribers (and, when `messages`, outbox processors) and asks the
    /// announcer to wake the others.
    fn after_commit(&self, messages: bool) {
        let inner = &self.inner;
        inner.notifier.notify();
        if messages {
            inner.outbox_notifier.notify();
            inner.announce_outbox.store(true, Ordering::Release);
        }
        self.request_announcement();
    }

    /// Wakes outbox processors, here and (through the announcer) elsewhere.
    pub(crate) fn announce_outbox(&self) {
        self.inner.outbox_notifier.notify();
        self.inner.announce_outbox.store(true, Ordering::Release);
        self.request_announcement();
    }

    /// The notifier of this handle's outbox processors.
    pub(crate) fn outbox_notifier(&self) -> &FeedNotifier {
        &self.inner.outbox_notifier
    }

    /// A signal that fires when outbox messages may be deliverable: fed by a LISTEN
    /// task on the outbox channel (unless LISTEN is off) and by this handle.
    pub(crate) fn outbox_signal(&self) -> FeedSignal {
        let inner = &self.inner;
        if inner.listen && !inner.outbox_listener_started.swap(true, Ordering::AcqRel) {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(notify::listen_task(
                        inner.connect_options.clone(),
                        inner.outbox_channel.clone(),
                        inner.outbox_notifier.clone(),
                        inner.cancel.clone(),
                    ));
                }
                Err(_) => inner
                    .outbox_listener_started
                    .store(false, Ordering::Release),
            }
        }
        inner.outbox_notifier.signal()
    }

    /// The routes of this store's outbox, if it has one.
    pub fn outbox(&self) -> Option<&Outbox> {
        self.inner.outbox.as_ref().map(|o| &o.routes)
    }

    /// Asks the announcer (started on first use) to NOTIFY.
    fn request_announcement(&self) {
        let inner = &self.inner;
        if !inner.announce {
            return;
        }
        if !inner.announcer_started.swap(true, Ordering::AcqRel) {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(notify::announce_task(
                        inner.connect_options.clone(),
                        notify::Announcements {
                            events_sql: inner.sql.notify.sql(),
                            both_sql: inner.sql.notify_outbox.sql(),
                            events_channel: inner.channel.clone(),
                            outbox_channel: inner.outbox_channel.clone(),
                            outbox: inner.announce_outbox.clone(),
                        },
                        inner.announce_requests.clone(),
                        inner.announce_interval,
                        inner.cancel.clone(),
                    ));
                }
                Err(_) => {
                    inner.announcer_started.store(false, Ordering::Release);
                    return;
                }
            }
        }
        inner.announce_requests.notify_one();
    }

    /// The append, on one connection, in `mode` (inside a transaction a failed
    /// statement aborts it, so look-ups go through the pool). With `route`, the
    /// statement also writes the outbox messages of the store's routes (which must not
    /// transform: see [`OutboxRoutes`]).
    async fn append_on(
        &self,
        conn: &mut PgConnection,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        mode: Mode,
        route: bool,
    ) -> Result<Appended> {
        // In a transaction, a failed statement aborts it: look-ups after an error go
        // through the pool, and an error the pool would retry ends this call (a
        // transaction of our own is then run again by its caller). Only the caller's
        // transaction must never see a failed statement for a stored id: there, the
        // statement checks the ids first.
        let in_tx = mode != Mode::Pool;
        let probe = mode == Mode::CallerTx;
        validate_append(stream, &events, &self.inner.limits)?;
        check_storable(stream, &events)?;
        let routing = match &self.inner.outbox {
            Some(o) if route => o.routing(stream, expected, &events)?,
            _ => Routing::default(),
        };
        let n = events.len();
        let kind = match expected {
            ExpectedVersion::Any => AppendKind::Any,
            ExpectedVersion::NoStream | ExpectedVersion::Exact(0) => AppendKind::New,
            ExpectedVersion::StreamExists | ExpectedVersion::Exact(_) => AppendKind::Existing,
        };
        let (lo, hi) = match expected {
            ExpectedVersion::Exact(v) => {
                // A version beyond bigint can match no stream: -1 keeps the check false.
                let v = i64::try_from(v).unwrap_or(-1);
                (v, v)
            }
            _ => (1, i64::MAX),
        };
        let ids: Vec<Uuid> = events.iter().map(|e| *e.id.as_uuid()).collect();
        let category = stream.category();

        let mut attempt = 0;
        loop {
            attempt += 1;
            let shape = shape_of(&events);
            let sql = if routing.ids.is_empty() {
                self.inner.sql.append(kind, probe, shape).sql()
            } else {
                self.inner.sql.append_outbox(kind, probe, shape).sql()
            };
            let mut q = sqlx::query(sql)
                .bind(stream.as_str())
                .bind(category)
                .bind(n as i64);
            let sv = |e: &NewEvent| i32::try_from(e.schema_version).unwrap_or(i32::MAX);
            let first = &events[0];
            match shape {
                Shape::One => {
                    q = q
                        .bind(ids[0])
                        .bind(first.event_type.as_str())
                        .bind(sv(first))
                        .bind(first.codec.as_str())
                        .bind(first.payload.as_ref())
                        .bind(meta(&first.metadata));
                }
                Shape::Uniform => {
                    let payloads: Vec<&[u8]> = events.iter().map(|e| e.payload.as_ref()).collect();
                    q = q
                        .bind(&ids)
                        .bind(first.event_type.as_str())
                        .bind(sv(first))
                        .bind(first.codec.as_str())
                        .bind(payloads)
                        .bind(meta(&first.metadata));
                }
                Shape::General => {
                    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
                    let svs: Vec<i32> = events.iter().map(sv).collect();
                    let codecs: Vec<&str> = events.iter().map(|e| e.codec.as_str()).collect();
                    let payloads: Vec<&[u8]> = events.iter().map(|e| e.payload.as_ref()).collect();
                    let metas: Vec<Option<Json<&Metadata>>> =
                        events.iter().map(|e| meta(&e.metadata)).collect();
                    q = q
                        .bind(&ids)
                        .bind(types)
                        .bind(svs)
                        .bind(codecs)
                        .bind(payloads)
                        .bind(metas);
                }
            }
            if kind == AppendKind::Existing {
                q = q.bind(lo).bind(hi);
            }
            if !routing.ids.is_empty() {
                q = q
                    .bind(&routing.events)
                    .bind(&routing.destinations)
                    .bind(&routing.ids);
            }
            let outcome = q.fetch_all(&mut *conn).await;
            match outcome {
                Ok(rows) if !rows.is_empty() => {
                    return Ok(Appended {
                        result: self.appended(stream, events, rows)?,
                        messages: routing.ids.len(),
                    });
                }
                Ok(_) => {
                    // Nothing written: the expected version failed, or an id is already
                    // stored (a possible repeat). The transaction is intact.
                    let found = self.lookup(&mut *conn, stream, &ids).await?;
                    if let Some(r) = self.repeat(stream, expected, &events, &found)? {
                        return Ok(Appended {
                            result: r,
                            messages: 0,
                        });
                    }
                    if !expected.accepts(found.current) {
                        return Err(Error::Conflict {
                            stream: stream.clone(),
                            expected,
                            actual: found.current,
                        });
                    }
                    if let Some((id, s)) = found.first_stored(&events) {
                        return Err(Error::DuplicateEventId {
                            event_id: id,
                            stream: stream.clone(),
                            existing_stream: s.stream_id.clone(),
                            existing_version: s.version,
                        });
                    }
                    if attempt >= APPEND_ATTEMPTS {
                        return Err(Error::backend(
                            true,
                            PgStoreError::Contended {
                                stream: stream.clone(),
                                attempts: attempt,
                            },
                        ));
                    }
                    // The stream moved (or appeared) between the two statements: again.
                }
                Err(e) => match classify(e, &self.inner.schema) {
                    Classified::Other(e) => return Err(e),
                    Classified::EventIdTaken => {
                        // An id committed by someone else after this statement started.
                        let found = self.lookup_after_error(conn, stream, &ids, in_tx).await?;
                        if !found.prefix.is_empty() {
                            check_idempotent_repeat(stream, expected, &events, &found.prefix)?;
                            if mode == Mode::CallerTx {
                                // An identical append committed concurrently; the
                                // caller's transaction is aborted, and a retry of it
                                // will find the repeat.
                                return Err(Error::backend(
                                    true,
                                    PgStoreError::ConcurrentRepeat {
                                        stream: stream.clone(),
                                        event_id: events[0].id,
                                    },
                                ));
                            }
                            return Ok(Appended {
                                result: dedup_result(stream, found),
                                messages: 0,
                            });
                        }
                        if let Some((id, s)) = found.first_stored(&events) {
                            return Err(Error::DuplicateEventId {
                                event_id: id,
                                stream: stream.clone(),
                                existing_stream: s.stream_id.clone(),
                                existing_version: s.version,
                            });
                        }
                        if in_tx || attempt >= APPEND_ATTEMPTS {
                            // Only the caller's own uncommitted writes can hold the id.
                            return Err(Error::DuplicateEventId {
                                event_id: events[0].id,
                                stream: stream.clone(),
                                existing_stream: stream.clone(),
                                existing_version: 0,
                            });
                        }
                    }
                    Classified::VersionTaken => {
                        let found = self.lookup_after_error(conn, stream, &ids, in_tx).await?;
                        if in_tx || attempt >= APPEND_ATTEMPTS || !expected.accepts(found.current) {
                            return Err(Error::Conflict {
                                stream: stream.clone(),
                                expected,
                                actual: found.current,
                            });
                        }
                    }
                },
            }
        }
    }

    /// Builds the result of a successful append from the returned rows.
    fn appended(
        &self,
        stream: &StreamId,
        events: Vec<NewEvent>,
        rows: Vec<PgRow>,
    ) -> Result<AppendResult> {
        let bad = |detail: String| -> Error {
            PgStoreError::Corrupt {
                what: "append result",
                detail,
            }
            .into()
        };
        let [row] = rows.as_slice() else {
            return Err(bad(format!("{} rows", rows.len())));
        };
        let tx: Xid8 = row.try_get_unchecked(0).map_err(|e| self.map_err(e))?;
        let positions: Vec<i64> = row.try_get(1).map_err(|e| self.map_err(e))?;
        let last: i64 = row.try_get(2).map_err(|e| self.map_err(e))?;
        let recorded_at = read_time(row, 3).map_err(|e| bad(format!("recorded_at: {e}")))?;
        let last = u64::try_from(last).map_err(|_| bad(format!("version {last}")))?;
        let n = events.len() as u64;
        if positions.len() != events.len() || last < n {
            return Err(bad(format!(
                "{} positions for {n} events, at version {last}",
                positions.len()
            )));
        }
        let first = last - n + 1;
        let stored: Vec<StoredEvent> = events
            .into_iter()
            .zip(positions)
            .zip(first..)
            .map(|((e, pos), version)| StoredEvent {
                id: e.id,
                stream_id: stream.clone(),
                version,
                position: position_of(tx, pos),
                event_type: e.event_type,
                schema_version: e.schema_version,
                codec: e.codec,
                payload: e.payload,
                metadata: e.metadata,
                recorded_at,
            })
            .collect();
        let version = stored.last().map_or(0, |e| e.version);
        Ok(AppendResult {
            stream_id: stream.clone(),
            events: stored,
            version,
            deduplicated: false,
        })
    }

    /// The idempotent-repeat decision when the first id is stored.
    fn repeat(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
        found: &Found,
    ) -> Result<Option<AppendResult>> {
        if found.prefix.is_empty() {
            return Ok(None);
        }
        check_idempotent_repeat(stream, expected, events, &found.prefix)?;
        Ok(Some(AppendResult {
            stream_id: stream.clone(),
            events: found.prefix.clone(),
            version: found.current,
            deduplicated: true,
        }))
    }

    async fn lookup_after_error(
        &self,
        conn: &mut PgConnection,
        stream: &StreamId,
        ids: &[Uuid],
        in_tx: bool,
    ) -> Result<Found> {
        if in_tx {
            let mut c = self
                .inner
                .pool
                .acquire()
                .await
                .map_err(|e| self.map_err(e))?;
            self.lookup(&mut c, stream, ids).await
        } else {
            self.lookup(conn, stream, ids).await
        }
    }

    /// The stream's current version and the stored events of `ids`.
    async fn lookup(
        &self,
        conn: &mut PgConnection,
        stream: &StreamId,
        ids: &[Uuid],
    ) -> Result<Found> {
        let rows = sqlx::query(self.inner.sql.append_lookup.sql())
            .bind(stream.as_str())
            .bind(ids)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| self.map_err(e))?;
        let mut current = 0;
        let mut stored = Vec::with_capacity(rows.len());
        let mut dec = EventDecoder::default();
        for r in &rows {
            let found: bool = r.try_get(0).map_err(|e| self.map_err(e))?;
            if found {
                let ord: i64 = r.try_get(12).map_err(|e| self.map_err(e))?;
                stored.push((ord, dec.decode(r, 1)?));
            } else {
                let v: Option<i64> = r.try_get(5).map_err(|e| self.map_err(e))?;
                current = v.map_or(0, |v| u64::try_from(v).unwrap_or(0));
            }
        }
        stored.sort_unstable_by_key(|(ord, _)| *ord);
        let stored: Vec<StoredEvent> = stored.into_iter().map(|(_, e)| e).collect();
        // `stored` is in the append's order, so the events stored under the append's ids
        // up to the first id that is not stored are a common prefix.
        let prefix = ids
            .iter()
            .zip(&stored)
            .take_while(|(id, e)| e.id.as_uuid() == *id)
            .map(|(_, e)| e.clone())
            .collect();
        Ok(Found {
            current,
            prefix,
            all: stored,
        })
    }
}

/// Where an append runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// On a pooled connection, in autocommit: the statement is the transaction.
    Pool,
    /// In a transaction of the store's own, which it may roll back and run again.
    OwnTx,
    /// In the caller's transaction.
    CallerTx,
}

/// Why the messages of an append whose routes transform were not written.
enum WriteFailure {
    /// Before anything was sent (a transform failed, or made a message PostgreSQL
    /// cannot store), or after an insert that must be undone: the transaction is
    /// intact, and the events must be rolled back.
    Refused(Error),
    /// The insert failed: the transaction is aborted.
    Statement(Error),
}

/// An append's result, and how many outbox messages it wrote.
struct Appended {
    result: AppendResult,
    messages: usize,
}

/// Whether an append in a transaction of the store's own failed where an append
/// through the pool would have tried again (see the `in_tx` branches of
/// [`PgEventStore::append_on`]): then the transaction is rolled back and run again.
/// (A repeat of a stored append is found as through the pool, and returned.)
fn restartable(e: &Error, stream: &StreamId, expected: ExpectedVersion) -> bool {
    match e {
        // Two writers took the same version, and the expected version still holds.
        Error::Conflict { actual, .. } => expected.accepts(*actual),
        // An id was taken by a transaction that had not committed when we looked.
        Error::DuplicateEventId {
            existing_stream,
            existing_version: 0,
            ..
        } => existing_stream == stream,
        _ => false,
    }
}

/// A store's outbox routes, and whether any of them transforms.
struct OutboxRoutes {
    routes: Outbox,
    /// Whether a route transforms its messages. Transforms may read every field of the
    /// stored event (its position and time included), which exist only after the
    /// insert: such a store writes its messages with a second statement in the
    /// append's transaction. Without transforms, a message is a function of the
    /// event's type and stream alone, so the append's statement writes it.
    transforms: bool,
}

impl OutboxRoutes {
    fn new(routes: Outbox) -> Self {
        let transforms = routes.routes().iter().any(route_transforms);
        OutboxRoutes { routes, transforms }
    }

    /// Which messages an append writes, for routes without transforms: the routes see
    /// the events as they will be stored, except for what only the insert knows
    /// (position, time, and the version of an append that does not name it), which
    /// no route without a transform reads.
    fn routing(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<Routing> {
        let first = match expected {
            ExpectedVersion::Exact(v) => v.saturating_add(1),
            _ => 1,
        };
        let now = mink_es::now_micros();
        let provisional: Vec<StoredEvent> = events
            .iter()
            .zip(first..)
            .map(|(e, version)| StoredEvent {
                id: e.id,
                stream_id: stream.clone(),
                version,
                position: Position::START,
                event_type: e.event_type.clone(),
                schema_version: e.schema_version,
                codec: e.codec.clone(),
                payload: e.payload.clone(),
                metadata: e.metadata.clone(),
                recorded_at: now,
            })
            .collect();
        let messages = self.routes.messages_for(&provisional)?;
        let mut routing = Routing::default();
        let mut k = 0;
        for m in messages {
            // Messages come in event order.
            let Some(i) = provisional[k..].iter().position(|e| e.id == m.event_id) else {
                return Err(Error::InvalidArgument(format!(
                    "the outbox routes made a message for event {}, which is not in the append",
                    m.event_id
                )));
            };
            k += i;
            routing.events.push(k as i64 + 1);
            routing.destinations.push(m.destination);
            routing.ids.push(m.id);
        }
        Ok(routing)
    }
}

/// Whether an inline projection failed for a reason a new attempt may not meet: a
/// version conflict on a read model, or a transient database error (a deadlock).
fn inline_retryable(e: &Error) -> bool {
    let Error::InlineProjection { source, .. } = e else {
        return false;
    };
    if let Some(p) = source.downcast_ref::<mink_es::projection::ProjectionError>() {
        return p.is_transient();
    }
    source
        .downcast_ref::<Error>()
        .is_some_and(Error::is_retryable)
}

/// Whether a route has a transform.
fn route_transforms(route: &mink_es::outbox::Route) -> bool {
    route.has_transform()
}

/// The outbox messages of an append, as the append's statement binds them: for each,
/// the 1-based index of its event in the append, its destination and its id.
#[derive(Default)]
struct Routing {
    events: Vec<i64>,
    destinations: Vec<String>,
    ids: Vec<Uuid>,
}

/// What an append found after it wrote nothing.
struct Found {
    /// The target stream's version.
    current: u64,
    /// The stored events of the append's ids, up to the first one not stored.
    prefix: Vec<StoredEvent>,
    /// Every stored event of the append's ids, in the append's order.
    all: Vec<StoredEvent>,
}

impl Found {
    /// The first of the append's ids that is stored, with its event.
    fn first_stored(&self, events: &[NewEvent]) -> Option<(EventId, &StoredEvent)> {
        // `all` is in the append's order (see `lookup`).
        let first = self.all.first()?;
        events
            .iter()
            .any(|e| e.id == first.id)
            .then_some((first.id, first))
    }
}

fn dedup_result(stream: &StreamId, found: Found) -> AppendResult {
    AppendResult {
        stream_id: stream.clone(),
        events: found.prefix,
        version: found.current,
        deduplicated: true,
    }
}

/// Metadata as bound: NULL when empty.
fn meta(m: &Metadata) -> Option<Json<&Metadata>> {
    (!m.is_empty()).then_some(Json(m))
}

/// How an append's events travel (see [`Shape`]).
fn shape_of(events: &[NewEvent]) -> Shape {
    let [first, rest @ ..] = events else {
        return Shape::General;
    };
    if rest.is_empty() {
        return Shape::One;
    }
    let uniform = rest.iter().all(|e| {
        e.event_type == first.event_type
            && e.schema_version == first.schema_version
            && e.codec == first.codec
            && e.metadata == first.metadata
    });
    if uniform {
        Shape::Uniform
    } else {
        Shape::General
    }
}

/// Refuses what PostgreSQL cannot store, before anything is sent: NUL characters in
/// metadata (jsonb has no `\u0000`) and schema versions beyond `integer`.
fn check_storable(stream: &StreamId, events: &[NewEvent]) -> Result<()> {
    for (i, e) in events.iter().enumerate() {
        if i32::try_from(e.schema_version).is_err() {
            return Err(Error::InvalidArgument(format!(
                "event #{i} of the append to {stream} has schema version {}; the limit is {}",
                e.schema_version,
                i32::MAX
            )));
        }
        let m = &e.metadata;
        let has_nul = |s: Option<&str>| s.is_some_and(|s| s.contains('\0'));
        if has_nul(m.correlation_id())
            || has_nul(m.causation_id())
            || has_nul(m.user_id())
            || has_nul(m.tenant_id())
            || m.custom()
                .iter()
                .any(|(k, v)| k.contains('\0') || v.contains('\0'))
        {
            return Err(Error::InvalidArgument(format!(
                "the metadata of event #{i} of the append to {stream} contains a NUL character, \
                 which PostgreSQL cannot store"
            )));
        }
        if e.codec.as_str().contains('\0') {
            return Err(Error::InvalidArgument(format!(
                "the codec tag of event #{i} of the append to {stream} contains a NUL character"
            )));
        }
    }
    Ok(())
}

impl StreamWriter for PgEventStore {
    #[tracing::instrument(level = "debug", skip_all, fields(stream = %stream, events = events.len()))]
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        let appended = match &self.inner.outbox {
            _ if self.needs_tx() => self.append_transformed(stream, expected, events).await?,
            _ => {
                let mut conn = self
                    .inner
                    .pool
                    .acquire()
                    .await
                    .map_err(|e| self.map_err(e))?;
                self.append_on(&mut conn, stream, expected, events, Mode::Pool, true)
                    .await?
            }
        };
        if !appended.result.deduplicated {
            self.after_commit(appended.messages > 0);
        }
        Ok(appended.result)
    }
}

impl StreamReader for PgEventStore {
    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>> {
        if limit == 0 || from_version > i64::MAX as u64 {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(self.inner.sql.read_stream.sql())
            .bind(stream.as_str())
            .bind(to_i64(from_version))
            .bind(limit_i64(limit))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| self.map_err(e))?;
        let mut dec = EventDecoder::default();
        rows.iter().map(|r| dec.decode(r, 0)).collect()
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64> {
        let v: Option<i64> = sqlx::query_scalar(self.inner.sql.stream_version.sql())
            .bind(stream.as_str())
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(|e| self.map_err(e))?;
        Ok(v.map_or(0, |v| u64::try_from(v).unwrap_or(0)))
    }

    async fn stream_info(&self, stream: &StreamId) -> Result<Option<StreamInfo>> {
        let row = sqlx::query(self.inner.sql.stream_info.sql())
            .bind(stream.as_str())
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(|e| self.map_err(e))?;
        let Some(r) = row else { return Ok(None) };
        let version: i64 = r.try_get(0).map_err(|e| self.map_err(e))?;
        let time = |idx: usize, name: &str| {
            read_time(&r, idx).map_err(|e| -> Error {
                PgStoreError::Corrupt {
                    what: "streams",
                    detail: format!("stream {stream} has a bad {name}: {e}"),
                }
                .into()
            })
        };
        Ok(Some(StreamInfo {
            stream_id: stream.clone(),
            version: u64::try_from(version).unwrap_or(0),
            created_at: time(1, "created_at")?,
            updated_at: time(2, "updated_at")?,
        }))
    }
}

impl FeedReader for PgEventStore {
    #[tracing::instrument(level = "debug", skip_all, fields(after = %after, limit))]
    async fn read_feed(
        &self,
        after: Position,
        limit: usize,
        filter: &FeedFilter,
    ) -> Result<FeedPage> {
        if limit == 0 {
            return Ok(FeedPage {
                events: Vec::new(),
                next: after,
            });
        }
        let has_types = !filter.event_types.is_empty();
        let has_streams = !filter.streams.is_empty();
        let has_categories = !filter.categories.is_empty();
        let index = filter_index(has_types, has_streams, has_categories);
        let (tx, pos) = cursor(after);
        let mut q = sqlx::query(self.inner.sql.feed[index].sql())
            .bind(tx)
            .bind(pos)
            .bind(limit_i64(limit));
        if has_types {
            q = q.bind(
                filter
                    .event_types
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>(),
            );
        }
        if has_streams {
            q = q.bind(
                filter
                    .streams
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>(),
            );
        }
        if has_categories {
            q = q.bind(
                filter
                    .categories
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>(),
            );
        }
        let rows = q
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| self.map_err(e))?;
        let mut dec = EventDecoder::default();
        let mut events = Vec::with_capacity(rows.len().min(limit));
        let mut tail = None;
        for r in &rows {
            let is_tail: bool = r.try_get(0).map_err(|e| self.map_err(e))?;
            if is_tail {
                let tx: Xid8 = r.try_get_unchecked(1).map_err(|e| self.map_err(e))?;
                let pos: i64 = r.try_get(2).map_err(|e| self.map_err(e))?;
                tail = Some(position_of(tx, pos));
            } else {
                events.push(dec.decode(r, 1)?);
            }
        }
        if !events.is_sorted_by_key(|e| e.position) {
            events.sort_unstable_by_key(|e| e.position);
        }
        let last = events.last().map(|e| e.position);
        let next = if events.len() >= limit {
            last.unwrap_or(after)
        } else {
            // Every matching event below the horizon was returned: the cursor may move
            // to the last event below it, matching or not.
            [Some(after), last, tail]
                .into_iter()
                .flatten()
                .max()
                .unwrap_or(after)
        };
        Ok(FeedPage { events, next })
    }

    async fn head_position(&self) -> Result<Position> {
        let row = sqlx::query(self.inner.sql.head.sql())
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(|e| self.map_err(e))?;
        match row {
            None => Ok(Position::START),
            Some(r) => {
                let tx: Xid8 = r.try_get_unchecked(0).map_err(|e| self.map_err(e))?;
                let pos: i64 = r.try_get(1).map_err(|e| self.map_err(e))?;
                Ok(position_of(tx, pos))
            }
        }
    }

    fn feed_signal(&self) -> FeedSignal {
        self.start_listener();
        self.inner.notifier.signal()
    }
}

#[cfg(test)]
mod tests {
    use mink_es::outbox::{OutboxMessage, Route};

    use super::*;

    #[test]
    fn routes_that_transform_are_told_apart() {
        let identity = |e: &StoredEvent| Ok(Some((e.payload.clone(), e.codec.clone())));
        assert!(!route_transforms(&Route::all("x")));
        assert!(!route_transforms(&Route::event_types("x", ["A"])));
        assert!(!route_transforms(&Route::categories("x", ["A"])));
        assert!(route_transforms(&Route::all("x").transform(identity)));
        // A destination that looks like the Debug form changes nothing.
        assert!(!route_transforms(&Route::all("y, transform: false }")));
        assert!(route_transforms(
            &Route::all("y, transform: false }").transform(identity)
        ));
        let routes = OutboxRoutes::new(
            Outbox::new()
                .route(Route::all("a"))
                .unwrap()
                .route(Route::all("b").transform(identity))
                .unwrap(),
        );
        assert!(routes.transforms);
        assert!(!OutboxRoutes::new(Outbox::new()).transforms);
    }

    #[test]
    fn routing_lists_each_message_with_its_event() {
        let routes = OutboxRoutes::new(
            Outbox::new()
                .route(Route::all("a"))
                .unwrap()
                .route(Route::event_types("b", ["Y"]))
                .unwrap()
                .route(Route::categories("c", ["Other"]))
                .unwrap(),
        );
        let stream = StreamId::new("Order-1").unwrap();
        let events = vec![NewEvent::new("X", "{}"), NewEvent::new("Y", "{}")];
        let r = routes
            .routing(&stream, ExpectedVersion::Any, &events)
            .unwrap();
        assert_eq!(r.events, [1, 2, 2]);
        assert_eq!(r.destinations, ["a", "a", "b"]);
        assert_eq!(
            r.ids,
            [
                OutboxMessage::id_for(events[0].id, "a"),
                OutboxMessage::id_for(events[1].id, "a"),
                OutboxMessage::id_for(events[1].id, "b"),
            ]
        );
    }
}
