//! [`SqliteStore`]: the store traits of `mink-es` on one SQLite file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use mink_es::outbox::Outbox;
use mink_es::projection::ReadModelProjection;
use mink_es::store::{FeedNotifier, check_idempotent_repeat, validate_append};
use mink_es::{
    AppendResult, CheckpointStore, Error, ExpectedVersion, FeedFilter, FeedPage, FeedReader,
    FeedSignal, NewEvent, Position, Result, Snapshot, SnapshotStore, StoredEvent, StreamId,
    StreamInfo, StreamReader, StreamWriter, now_micros,
};
use parking_lot::{Mutex, ReentrantMutex, ReentrantMutexGuard};
use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use crate::config::SqliteConfig;
use crate::error::{backend_msg, is_constraint_violation, map_err};
use crate::projection::Inline;
use crate::row::{Decoder, EVENT_COLUMNS, micros_to_time};
use crate::schema;

/// Prepared statements kept per connection (the feed's filtered queries vary with the
/// shape of the filter).
const STATEMENT_CACHE_CAPACITY: usize = 64;

/// An event store in one SQLite file.
///
/// Cloning gives another handle to the same store (the connections are shared).
///
/// Every method runs synchronously on the calling thread and returns quickly: the
/// `async` trait methods do their SQL inline, with no thread hop, holding the writer lock
/// only inside synchronous code. See the [crate documentation](crate) for the execution
/// model and the storage layout.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use mink_es::{ExpectedVersion, NewEvent, StreamId, StreamReader, StreamWriter};
/// use mink_sqlite::SqliteStore;
///
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("events.db");
/// let stream = StreamId::new("Account-7")?;
/// {
///     let store = SqliteStore::open(&path)?;
///     store.append(&stream, ExpectedVersion::Any, vec![NewEvent::new("Opened", "{}")]).await?;
/// }
/// // Reopening finds the events (and applies no migration twice).
/// let store = SqliteStore::open(&path)?;
/// assert_eq!(store.stream_version(&stream).await?, 1);
/// # Ok::<(), mink_es::Error>(())
/// # });
/// ```
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    config: SqliteConfig,
    schema_version: u32,
    /// Read-only connections (WAL lets them read while the writer writes). Declared
    /// before the writer so that they close first: the last connection to close folds
    /// the write-ahead log back into the database file and deletes it, which only a
    /// connection that can write may do.
    readers: Vec<Mutex<Connection>>,
    /// The one connection that writes. Locked only inside synchronous code.
    ///
    /// Reentrant so that code running inside a write transaction on the locking thread
    /// (the transaction-bound read-model store an inline or async projection gets, see
    /// [`crate::readmodel`]) can use the connection again; any other thread waits, as
    /// before, until the transaction is over.
    writer: ReentrantMutex<Connection>,
    next_reader: AtomicUsize,
    notifier: FeedNotifier,
    /// The routes appends write outbox messages for (see [`SqliteStore::open_with_outbox`]).
    outbox: Option<Outbox>,
    /// Fires after appends that wrote outbox messages and after acknowledgements and
    /// failures (see [`crate::SqliteOutboxStore`]).
    outbox_notifier: FeedNotifier,
    /// The projections every append runs in its transaction (see
    /// [`SqliteStoreBuilder::inline`]).
    inline: Vec<Inline>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .field("schema_version", &self.inner.schema_version)
            .field("config", &self.inner.config)
            .field("outbox", &self.inner.outbox)
            .field("inline", &self.inline_projections())
            .finish_non_exhaustive()
    }
}

/// Opens a [`SqliteStore`] with a configuration, an outbox and inline projections, in
/// any combination. Made by [`SqliteStore::builder`].
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use futures::future::BoxFuture;
/// use mink_es::projection::{ProjectionError, ReadModelProjection};
/// use mink_es::readmodel::{Field, ReadModel, ReadModelRepository, ReadModelStore, Schema};
/// use mink_es::{ExpectedVersion, NewEvent, StoredEvent, StreamId, StreamWriter};
/// use mink_sqlite::SqliteStore;
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Order { id: String, status: String }
/// impl ReadModel for Order {
///     const NAME: &'static str = "orders";
///     const FIELDS: &'static [Field] = &[Field::text("id"), Field::text("status")];
/// }
///
/// /// Keeps `orders` in the append's transaction; refuses unknown event types.
/// struct Orders;
/// impl ReadModelProjection for Orders {
///     fn name(&self) -> &str { "orders" }
///     fn models(&self) -> mink_es::Result<Vec<Schema>> { Ok(vec![Schema::of::<Order>()?]) }
///     fn apply<'a>(&'a self, models: &'a dyn ReadModelStore, events: &'a [StoredEvent])
///         -> BoxFuture<'a, Result<(), ProjectionError>> {
///         Box::pin(async move {
///             let orders = ReadModelRepository::<Order, _>::new(models);
///             for e in events {
///                 let status = match e.event_type.as_str() {
///                     "OrderPlaced" => "placed",
///                     "OrderShipped" => "shipped",
///                     other => return Err(ProjectionError::poison(format!("unknown event {other}"))),
///                 };
///                 let id = e.stream_id.as_str().to_owned();
///                 orders.upsert(&Order { id, status: status.into() }).await?;
///             }
///             Ok(())
///         })
///     }
/// }
///
/// let dir = tempfile::tempdir().unwrap();
/// let store = SqliteStore::builder(dir.path().join("app.db")).inline(Orders)?.open()?;
/// let orders = ReadModelRepository::<Order, _>::new(store.read_models());
/// orders.ensure_table().await?;
/// let id = StreamId::new("Order-1")?;
/// store.append(&id, ExpectedVersion::NoStream, vec![NewEvent::new("OrderPlaced", "{}")]).await?;
/// assert_eq!(orders.get("Order-1").await?.map(|o| o.model.status), Some("placed".to_owned()));
///
/// // The projection refuses the event: the append fails and writes nothing.
/// let err = store.append(&id, ExpectedVersion::Exact(1), vec![NewEvent::new("Oops", "{}")]).await;
/// assert!(matches!(err, Err(mink_es::Error::InlineProjection { .. })));
/// # Ok::<(), mink_es::Error>(())
/// # });
/// ```
#[must_use = "a builder does nothing until opened"]
#[derive(Debug)]
pub struct SqliteStoreBuilder {
    path: PathBuf,
    config: SqliteConfig,
    outbox: Option<Outbox>,
    inline: Vec<Inline>,
}

impl SqliteStoreBuilder {
    /// Sets the configuration (default [`SqliteConfig::default`]).
    pub fn config(mut self, config: SqliteConfig) -> Self {
        self.config = config;
        self
    }

    /// Writes outbox messages with the events, as [`SqliteStore::open_with_outbox`]
    /// does.
    pub fn outbox(mut self, outbox: Outbox) -> Self {
        self.outbox = Some(outbox);
        self
    }

    /// Runs `projection` inside every append's transaction, before it commits, on the
    /// appended events its [`filter`](ReadModelProjection::filter) accepts (it is not
    /// called when there are none). It gets a read-model store bound to the append's
    /// transaction, writing the live tables of its models (ensured when the store
    /// opens). If it fails, the append fails with [`Error::InlineProjection`] (naming
    /// the projection, with its error as the source) and writes nothing: no event, no
    /// outbox message, no read-model change. Projections run in registration order,
    /// after the outbox messages are made. Idempotent repeats of an append run none.
    ///
    /// `apply` runs under the writer lock and is polled once: it must complete without
    /// waiting on anything but the read-model store it is given (a future that stays
    /// pending fails the append).
    ///
    /// # Errors
    /// [`Error::InvalidProjection`] for an empty (or blank) name, a name with control
    /// characters, a name another inline projection of this builder has, or a model
    /// declared twice with two declarations; what
    /// [`ReadModelProjection::models`] returns.
    pub fn inline(mut self, projection: impl ReadModelProjection) -> Result<Self> {
        let entry = Inline::new(projection, &self.inline)?;
        self.inline.push(entry);
        Ok(self)
    }

    /// Opens (creating it if needed) the store, as [`SqliteStore::open_with`] does, and
    /// ensures the tables of the inline projections' models.
    ///
    /// # Errors
    /// As [`SqliteStore::open_with`]; an error ensuring a table.
    pub fn open(self) -> Result<SqliteStore> {
        SqliteStore::open_inner(&self.path, self.config, self.outbox, self.inline)
    }
}

impl SqliteStore {
    /// Opens (creating it if needed) the store in the file at `path`, with the default
    /// [`SqliteConfig`].
    ///
    /// See [`SqliteStore::open_with`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        SqliteStore::open_with(path, SqliteConfig::default())
    }

    /// Opens (creating it if needed) the store in the file at `path`.
    ///
    /// The file is switched to WAL mode and brought to the latest schema by applying the
    /// pending [`crate::migrations`], each in its own transaction; reopening an
    /// up-to-date file changes nothing. This runs synchronously.
    ///
    /// # Errors
    /// A non-transient [`Error::Backend`] when the file cannot be opened or migrated,
    /// or when it was migrated by a newer `mink-sqlite` (its source is then a
    /// [`crate::SchemaTooNew`]); [`Error::InvalidArgument`] when `path` is not a file
    /// that can use WAL mode (such as `":memory:"`).
    pub fn open_with(path: impl AsRef<Path>, config: SqliteConfig) -> Result<Self> {
        SqliteStore::open_inner(path.as_ref(), config, None, Vec::new())
    }

    /// Opens (creating it if needed) the store in the file at `path`, like
    /// [`SqliteStore::open_with`], with a transactional outbox: every append also writes
    /// the messages `outbox` routes for its events into the `mink_outbox` table, in the
    /// same transaction as the events (see the [crate documentation](crate#outbox)).
    ///
    /// A route's transform runs inside the append's transaction, under the writer lock:
    /// keep it quick. When a transform fails, the append fails with
    /// [`Error::Outbox`] and writes nothing (no event, no message).
    ///
    /// Deliver the messages with an
    /// [`OutboxProcessor`](mink_es::outbox::OutboxProcessor) over
    /// [`SqliteStore::outbox_store`]. A handle opened without an outbox (by
    /// [`SqliteStore::open`] or [`SqliteStore::open_with`]) can run processors on the
    /// same file: only the writing needs the routes.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use mink_es::outbox::{OutboxStore, Outbox, Route};
    /// use mink_es::{ExpectedVersion, NewEvent, StreamId, StreamWriter};
    /// use mink_sqlite::{SqliteConfig, SqliteStore};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let outbox = Outbox::new().route(Route::categories("billing", ["Order"]))?;
    /// let store = SqliteStore::open_with_outbox(dir.path().join("app.db"), SqliteConfig::default(), outbox)?;
    /// store
    ///     .append(&StreamId::new("Order-1")?, ExpectedVersion::Any, vec![NewEvent::new("OrderPlaced", "{}")])
    ///     .await?;
    /// assert_eq!(store.outbox_store().counts().await?.pending, 1);
    /// # Ok::<(), mink_es::Error>(())
    /// # });
    /// ```
    ///
    /// # Errors
    /// As [`SqliteStore::open_with`].
    pub fn open_with_outbox(
        path: impl AsRef<Path>,
        config: SqliteConfig,
        outbox: Outbox,
    ) -> Result<Self> {
        SqliteStore::open_inner(path.as_ref(), config, Some(outbox), Vec::new())
    }

    /// A builder for a store with any of: a configuration, an outbox, inline
    /// projections.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use mink_es::outbox::{Outbox, Route};
    /// use mink_sqlite::{SqliteConfig, SqliteStore};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = SqliteStore::builder(dir.path().join("app.db"))
    ///     .config(SqliteConfig::default().read_connections(2))
    ///     .outbox(Outbox::new().route(Route::all("audit"))?)
    ///     .open()?;
    /// assert!(store.outbox().is_some());
    /// # Ok::<(), mink_es::Error>(())
    /// # });
    /// ```
    pub fn builder(path: impl AsRef<Path>) -> SqliteStoreBuilder {
        SqliteStoreBuilder {
            path: path.as_ref().to_path_buf(),
            config: SqliteConfig::default(),
            outbox: None,
            inline: Vec::new(),
        }
    }

    fn open_inner(
        path: &Path,
        config: SqliteConfig,
        outbox: Option<Outbox>,
        inline: Vec<Inline>,
    ) -> Result<Self> {
        let path = path.to_path_buf();
        let writer = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(map_err)?;
        configure(&writer, &config)?;
        let mode: String = writer
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(map_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::InvalidArgument(format!(
                "{} cannot be opened in WAL mode (journal mode {mode:?}); \
                 mink-sqlite needs a database file",
                path.display()
            )));
        }
        writer
            .pragma_update(None, "synchronous", config.synchronous.pragma_value())
            .map_err(map_err)?;
        let schema_version = schema::migrate(&writer, schema::migrations())?;
        crate::projection::ensure_inline(&writer, &inline)?;

        let mut readers = Vec::with_capacity(config.read_connections);
        for _ in 0..config.read_connections {
            let conn = Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(map_err)?;
            configure(&conn, &config)?;
            readers.push(Mutex::new(conn));
        }
        tracing::debug!(path = %path.display(), schema_version, "opened sqlite event store");
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path,
                config,
                schema_version,
                writer: ReentrantMutex::new(writer),
                readers,
                next_reader: AtomicUsize::new(0),
                notifier: FeedNotifier::new(),
                outbox,
                outbox_notifier: FeedNotifier::new(),
                inline,
            }),
        })
    }

    /// The path the store was opened with.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &SqliteConfig {
        &self.inner.config
    }

    /// The outbox routes appends write messages for, when the store was opened with
    /// [`SqliteStore::open_with_outbox`].
    pub fn outbox(&self) -> Option<&Outbox> {
        self.inner.outbox.as_ref()
    }

    /// The names of the inline projections appends run (see
    /// [`SqliteStoreBuilder::inline`]), in registration order.
    pub fn inline_projections(&self) -> Vec<&str> {
        self.inner.inline.iter().map(Inline::name).collect()
    }

    /// The schema version of the file, after the migrations applied when it was opened
    /// (equal to [`crate::LATEST_SCHEMA_VERSION`]).
    pub fn schema_version(&self) -> u32 {
        self.inner.schema_version
    }

    /// Overwrites the stored payload of the event at `version` of `stream`, behind the
    /// store's back (no validation, no notification).
    ///
    /// **For tests only**: this simulates storage corruption or a manual edit of the
    /// file, so that tests can check how readers cope with a payload that no longer
    /// decodes. Returns `Ok(false)` when there is no such event.
    pub fn tamper_payload(&self, stream: &StreamId, version: u64, payload: &[u8]) -> Result<bool> {
        let Ok(version) = i64::try_from(version) else {
            return Ok(false);
        };
        let conn = self.inner.writer.lock();
        let changed = conn
            .prepare_cached(
                "UPDATE mink_events SET payload = ?1 WHERE stream_id = ?2 AND version = ?3",
            )
            .and_then(|mut s| s.execute(params![payload, stream.as_str(), version]))
            .map_err(map_err)?;
        Ok(changed > 0)
    }

    /// The writer connection, locked. Hold the guard only inside synchronous code.
    pub(crate) fn writer(&self) -> ReentrantMutexGuard<'_, Connection> {
        self.inner.writer.lock()
    }

    /// The writer connection's lock itself (for the transaction-bound read-model store,
    /// which locks it again, reentrantly, on the thread that holds the transaction).
    pub(crate) fn writer_lock(&self) -> &ReentrantMutex<Connection> {
        &self.inner.writer
    }

    /// The notifier of this handle's outbox signal.
    pub(crate) fn outbox_notifier(&self) -> &FeedNotifier {
        &self.inner.outbox_notifier
    }

    /// Runs `f` on a read connection (the writer's when there are none).
    pub(crate) fn with_reader<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let readers = &self.inner.readers;
        let n = readers.len();
        if n == 0 {
            return f(&self.inner.writer.lock());
        }
        let start = self.inner.next_reader.fetch_add(1, Ordering::Relaxed) % n;
        for i in 0..n {
            if let Some(conn) = readers[(start + i) % n].try_lock() {
                return f(&conn);
            }
        }
        f(&readers[start].lock())
    }

    fn append_sync(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        mut events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        validate_append(stream, &events, &self.inner.config.limits)?;
        // `validate_append` refuses an empty append; this keeps the code panic-free.
        let Some(first_id) = events.first().map(|e| e.id) else {
            return Err(Error::EmptyAppend {
                stream: stream.clone(),
            });
        };
        // Encode outside the lock.
        let metadata: Vec<Option<String>> = events.iter().map(|e| e.metadata.to_json()).collect();
        let recorded_at = now_micros();
        let recorded_micros = recorded_at.timestamp_micros();
        let category = stream.category();
        // Only a store with routes writes messages; the others keep the plain path.
        let outbox = self
            .inner
            .outbox
            .as_ref()
            .filter(|o| !o.routes().is_empty());

        let inline = &self.inner.inline;

        let (current, positions, outboxed) = {
            let conn = self.inner.writer.lock();
            let tx = WriteTx::begin(&conn)?;
            let (current, first_stored) = conn
                .prepare_cached(
                    "SELECT (SELECT MAX(version) FROM mink_events WHERE stream_id = ?1), \
                     EXISTS (SELECT 1 FROM mink_events WHERE event_id = ?2)",
                )
                .and_then(|mut s| {
                    s.query_row(params![stream.as_str(), first_id.as_bytes()], |r| {
                        Ok((r.get::<_, Option<i64>>(0)?, r.get::<_, bool>(1)?))
                    })
                })
                .map_err(map_err)?;
            let current = match current {
                None => 0,
                Some(v) => u64::try_from(v).map_err(|_| {
                    backend_msg(format!("stream {stream} has a negative version ({v})"))
                })?,
            };

            if first_stored {
                let stored = stored_for(&conn, &events)?;
                check_idempotent_repeat(stream, expected, &events, &stored)?;
                drop(tx);
                return Ok(AppendResult {
                    stream_id: stream.clone(),
                    events: stored,
                    version: current,
                    deduplicated: true,
                });
            }
            if !expected.accepts(current) {
                return Err(Error::Conflict {
                    stream: stream.clone(),
                    expected,
                    actual: current,
                });
            }
            let last_version = current
                .checked_add(events.len() as u64)
                .and_then(|v| i64::try_from(v).ok())
                .ok_or_else(|| {
                    Error::InvalidArgument(format!("stream {stream} would exceed version i64::MAX"))
                })?;

            let mut positions = Vec::with_capacity(events.len());
            {
                let mut insert = conn
                    .prepare_cached(
                        "INSERT INTO mink_events (event_id, stream_id, version, category, \
                         event_type, schema_version, codec, payload, metadata, recorded_at) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    )
                    .map_err(map_err)?;
                let first_version = last_version - events.len() as i64 + 1;
                for (i, (e, meta)) in events.iter().zip(&metadata).enumerate() {
                    let res = insert.execute(params![
                        e.id.as_bytes(),
                        stream.as_str(),
                        first_version + i as i64,
                        category,
                        e.event_type.as_str(),
                        e.schema_version,
                        e.codec.as_str(),
                        payload_value(e),
                        meta.as_deref(),
                        recorded_micros,
                    ]);
                    match res {
                        Ok(_) => {}
                        Err(err) if is_constraint_violation(&err) => {
                            // Only rows stored before this append count (those of this
                            // append are at `positions` and after).
                            let before = positions.first().map_or(i64::MAX, |&p| p as i64);
                            return Err(duplicate_error(&conn, stream, &events, before)?
                                .unwrap_or_else(|| map_err(err)));
                        }
                        Err(err) => return Err(map_err(err)),
                    }
                    let position = u64::try_from(conn.last_insert_rowid()).map_err(|_| {
                        backend_msg("the database assigned a negative position to an event")
                    })?;
                    positions.push(position);
                }
            }
            // With an outbox or inline projections, the stored form of the events is
            // made before the commit: the outbox messages are made from it and written,
            // then the inline projections apply it; a failure of either rolls the whole
            // append back.
            let outboxed = if outbox.is_none() && inline.is_empty() {
                None
            } else {
                let stored = stored_events(
                    stream,
                    current,
                    recorded_at,
                    std::mem::take(&mut events),
                    std::mem::take(&mut positions),
                );
                let mut wrote_messages = false;
                if let Some(outbox) = outbox {
                    let messages = outbox.messages_for(&stored)?;
                    crate::outbox::insert_messages(
                        &conn,
                        &messages,
                        &stored,
                        &metadata,
                        recorded_micros,
                    )?;
                    wrote_messages = !messages.is_empty();
                }
                crate::projection::run_inline(&self.inner.writer, inline, stream, &stored)?;
                Some((stored, wrote_messages))
            };
            tx.commit()?;
            (current, positions, outboxed)
        };
        self.inner.notifier.notify();

        let stored = match outboxed {
            None => stored_events(stream, current, recorded_at, events, positions),
            Some((stored, wrote_messages)) => {
                if wrote_messages {
                    self.inner.outbox_notifier.notify();
                }
                stored
            }
        };
        Ok(AppendResult {
            stream_id: stream.clone(),
            version: current + stored.len() as u64,
            events: stored,
            deduplicated: false,
        })
    }

    fn read_stream_sync(
        &self,
        stream: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let from = i64::try_from(from_version).unwrap_or(i64::MAX);
        let sql_limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_reader(|conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {EVENT_COLUMNS} FROM mink_events \
                     WHERE stream_id = ?1 AND version >= ?2 ORDER BY version LIMIT ?3"
                ))
                .map_err(map_err)?;
            let mut rows = stmt
                .query(params![stream.as_str(), from, sql_limit])
                .map_err(map_err)?;
            let mut decoder = Decoder::for_stream(stream);
            let mut out = Vec::with_capacity(limit.min(1024));
            while let Some(row) = rows.next().map_err(map_err)? {
                out.push(decoder.decode(row)?);
            }
            Ok(out)
        })
    }

    fn read_feed_sync(
        &self,
        after: Position,
        limit: usize,
        filter: &FeedFilter,
    ) -> Result<FeedPage> {
        let empty = FeedPage {
            events: Vec::new(),
            next: after,
        };
        // Positions here are (0, rowid): one with a major part is past every event.
        if limit == 0 || after.major() > 0 {
            return Ok(empty);
        }
        let Ok(after_minor) = i64::try_from(after.minor()) else {
            return Ok(empty);
        };
        self.with_reader(|conn| {
            // The head first: every event at or below it is committed (SQLite serializes
            // writers and positions grow), so bounding the page by it gives a consistent
            // page without an explicit read transaction.
            let head = head(conn)?;
            if head <= after_minor {
                return Ok(empty);
            }
            let sql_limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let scan = !filter.streams.is_empty()
                && prefer_position_scan(
                    streams_size(conn, &filter.streams)?,
                    after_minor,
                    head,
                    sql_limit,
                );
            let (sql, args) = feed_query(filter, after_minor, head, sql_limit, scan);
            let mut stmt = conn.prepare_cached(&sql).map_err(map_err)?;
            let mut rows = stmt
                .query(rusqlite::params_from_iter(&args))
                .map_err(map_err)?;
            let mut decoder = Decoder::new();
            let mut events = Vec::with_capacity(limit.min(1024));
            while let Some(row) = rows.next().map_err(map_err)? {
                events.push(decoder.decode(row)?);
            }
            let next = match events.last() {
                Some(last) if events.len() >= limit => last.position,
                // Not full: everything up to the head was scanned.
                _ => Position::new(0, head.unsigned_abs()),
            };
            Ok(FeedPage { events, next })
        })
    }
}

/// Settings every connection gets.
fn configure(conn: &Connection, config: &SqliteConfig) -> Result<()> {
    conn.busy_timeout(config.busy_timeout).map_err(map_err)?;
    conn.pragma_update(None, "foreign_keys", true)
        .map_err(map_err)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
    Ok(())
}

/// The payload as TEXT when it is JSON (so SQLite's JSON functions can read it), else
/// as a BLOB. Read back as bytes either way.
fn payload_value(e: &NewEvent) -> ToSqlOutput<'_> {
    payload_sql(e.codec.as_str(), &e.payload)
}

/// A payload of codec `codec` as TEXT when it is JSON, else as a BLOB.
#[inline]
pub(crate) fn payload_sql<'a>(codec: &str, payload: &'a [u8]) -> ToSqlOutput<'a> {
    if codec == "json"
        && let Ok(text) = std::str::from_utf8(payload)
    {
        return ToSqlOutput::Borrowed(ValueRef::Text(text.as_bytes()));
    }
    ToSqlOutput::Borrowed(ValueRef::Blob(payload))
}

/// The largest position (0 when the store is empty).
fn head(conn: &Connection) -> Result<i64> {
    let max: Option<i64> = conn
        .prepare_cached("SELECT MAX(position) FROM mink_events")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .map_err(map_err)?;
    Ok(max.unwrap_or(0).max(0))
}

/// The feed query for `filter`, and its parameters: the two bounds, the filter's
/// values, then the LIMIT.
///
/// With `scan_positions`, the stream axis is written so that SQLite cannot use the
/// `(stream_id, version)` index for it (`+stream_id`), which makes it walk positions
/// from `after` (or use the category index) and stop once the page is full.
fn feed_query(
    filter: &FeedFilter,
    after: i64,
    head: i64,
    limit: i64,
    scan_positions: bool,
) -> (String, Vec<ToSqlOutput<'_>>) {
    fn axis<'f, T: AsRef<str>>(
        sql: &mut String,
        column: &str,
        values: &'f [T],
        args: &mut Vec<ToSqlOutput<'f>>,
    ) {
        if values.is_empty() {
            return;
        }
        sql.push_str(" AND ");
        sql.push_str(column);
        sql.push_str(" IN (");
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            args.push(ToSqlOutput::Borrowed(ValueRef::Text(v.as_ref().as_bytes())));
            sql.push_str(&format!("?{}", args.len()));
        }
        sql.push(')');
    }
    let mut sql =
        format!("SELECT {EVENT_COLUMNS} FROM mink_events WHERE position > ?1 AND position <= ?2");
    let mut args = vec![
        ToSqlOutput::Owned(Value::Integer(after)),
        ToSqlOutput::Owned(Value::Integer(head)),
    ];
    axis(&mut sql, "event_type", &filter.event_types, &mut args);
    let stream_column = if scan_positions {
        "+stream_id"
    } else {
        "stream_id"
    };
    axis(&mut sql, stream_column, &filter.streams, &mut args);
    axis(&mut sql, "category", &filter.categories, &mut args);
    args.push(ToSqlOutput::Owned(Value::Integer(limit)));
    sql.push_str(&format!(" ORDER BY position LIMIT ?{}", args.len()));
    (sql, args)
}

/// The number of events in `streams`, together.
fn streams_size(conn: &Connection, streams: &[StreamId]) -> Result<i64> {
    let mut stmt = conn
        .prepare_cached("SELECT MAX(version) FROM mink_events WHERE stream_id = ?1")
        .map_err(map_err)?;
    let mut total = 0i64;
    for s in streams {
        let v: Option<i64> = stmt
            .query_row([s.as_str()], |r| r.get(0))
            .map_err(map_err)?;
        total = total.saturating_add(v.unwrap_or(0).max(0));
    }
    Ok(total)
}

/// Whether a feed read filtered by streams holding `streams_size` events in all should
/// walk positions rather than the streams' `(stream_id, version)` index.
///
/// The index yields a stream's events in version order, not from `after` on: SQLite
/// reads every event of the streams and sorts those past `after`, about
/// `streams_size` rows per page, which makes catching up on a long stream quadratic.
/// Walking positions from `after` reads about `limit / density` rows per page (the
/// streams' events are `streams_size / head` of the feed), never more than the
/// `head - after` rows left, and is linear over a whole catch-up. Pick the cheaper.
fn prefer_position_scan(streams_size: i64, after: i64, head: i64, limit: i64) -> bool {
    let left = head.saturating_sub(after);
    let per_page = if streams_size == 0 {
        left
    } else {
        // limit / (streams_size / head), in integers.
        i64::try_from(i128::from(limit) * i128::from(head) / i128::from(streams_size))
            .unwrap_or(i64::MAX)
    };
    streams_size > left.min(per_page)
}

/// The stored form of the events of an append: `events` at `positions`, the first at
/// version `current + 1`.
fn stored_events(
    stream: &StreamId,
    current: u64,
    recorded_at: chrono::DateTime<chrono::Utc>,
    events: Vec<NewEvent>,
    positions: Vec<u64>,
) -> Vec<StoredEvent> {
    events
        .into_iter()
        .zip(positions)
        .enumerate()
        .map(|(i, (e, position))| StoredEvent {
            id: e.id,
            stream_id: stream.clone(),
            version: current + 1 + i as u64,
            position: Position::new(0, position),
            event_type: e.event_type,
            schema_version: e.schema_version,
            codec: e.codec,
            payload: e.payload,
            metadata: e.metadata,
            recorded_at,
        })
        .collect()
}

/// The events stored under the ids of `events`, in append order, stopping at the first
/// id that is not stored (what [`check_idempotent_repeat`] expects).
fn stored_for(conn: &Connection, events: &[NewEvent]) -> Result<Vec<StoredEvent>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} FROM mink_events WHERE event_id = ?1"
        ))
        .map_err(map_err)?;
    let mut decoder = Decoder::new();
    let mut out = Vec::new();
    for e in events {
        let mut rows = stmt.query([e.id.as_bytes()]).map_err(map_err)?;
        match rows.next().map_err(map_err)? {
            Some(row) => out.push(decoder.decode(row)?),
            None => break,
        }
    }
    Ok(out)
}

/// After an insert hit a UNIQUE index: the [`Error::DuplicateEventId`] for the first
/// event of the append whose id is stored at a position before `before`, if any.
fn duplicate_error(
    conn: &Connection,
    stream: &StreamId,
    events: &[NewEvent],
    before: i64,
) -> Result<Option<Error>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT stream_id, version FROM mink_events WHERE event_id = ?1 AND position < ?2",
        )
        .map_err(map_err)?;
    for e in events {
        let found = stmt
            .query_row(params![e.id.as_bytes(), before], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })
            .optional()
            .map_err(map_err)?;
        if let Some((existing_stream, existing_version)) = found {
            return Ok(Some(Error::DuplicateEventId {
                event_id: e.id,
                stream: stream.clone(),
                existing_stream: StreamId::new(&existing_stream).map_err(|e| {
                    backend_msg(format!("a stored event has an invalid stream id: {e}"))
                })?,
                existing_version: u64::try_from(existing_version).unwrap_or(0),
            }));
        }
    }
    Ok(None)
}

/// A `BEGIN IMMEDIATE` transaction on the writer connection, rolled back when dropped
/// uncommitted (an early return, an error, a panic).
pub(crate) struct WriteTx<'c> {
    conn: &'c Connection,
}

impl<'c> WriteTx<'c> {
    pub(crate) fn begin(conn: &'c Connection) -> Result<Self> {
        conn.prepare_cached("BEGIN IMMEDIATE")
            .and_then(|mut s| s.execute([]))
            .map_err(map_err)?;
        Ok(WriteTx { conn })
    }

    pub(crate) fn commit(self) -> Result<()> {
        // On failure, `self` is dropped and rolls back whatever is left open.
        self.conn
            .prepare_cached("COMMIT")
            .and_then(|mut s| s.execute([]))
            .map_err(map_err)?;
        Ok(())
    }
}

impl Drop for WriteTx<'_> {
    fn drop(&mut self) {
        if !self.conn.is_autocommit() {
            let res = self
                .conn
                .prepare_cached("ROLLBACK")
                .and_then(|mut s| s.execute([]));
            if let Err(e) = res {
                tracing::warn!(error = %e, "rollback of a mink-sqlite write transaction failed");
            }
        }
    }
}

impl StreamWriter for SqliteStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        self.append_sync(stream, expected, events)
    }
}

impl StreamReader for SqliteStore {
    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>> {
        self.read_stream_sync(stream, from_version, limit)
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64> {
        self.with_reader(|conn| {
            let v: Option<i64> = conn
                .prepare_cached("SELECT MAX(version) FROM mink_events WHERE stream_id = ?1")
                .and_then(|mut s| s.query_row([stream.as_str()], |r| r.get(0)))
                .map_err(map_err)?;
            match v {
                None => Ok(0),
                Some(v) => u64::try_from(v).map_err(|_| {
                    backend_msg(format!("stream {stream} has a negative version ({v})"))
                }),
            }
        })
    }

    async fn stream_info(&self, stream: &StreamId) -> Result<Option<StreamInfo>> {
        self.with_reader(|conn| {
            let row: Option<(i64, i64, i64)> = conn
                .prepare_cached(
                    "SELECT l.version, l.recorded_at, \
                       (SELECT recorded_at FROM mink_events WHERE stream_id = ?1 \
                        ORDER BY version LIMIT 1) \
                     FROM (SELECT version, recorded_at FROM mink_events WHERE stream_id = ?1 \
                           ORDER BY version DESC LIMIT 1) AS l",
                )
                .and_then(|mut s| {
                    s.query_row([stream.as_str()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                        .optional()
                })
                .map_err(map_err)?;
            let Some((version, updated, created)) = row else {
                return Ok(None);
            };
            let bad = || backend_msg(format!("stream {stream} has a corrupt version or time"));
            Ok(Some(StreamInfo {
                stream_id: stream.clone(),
                version: u64::try_from(version).map_err(|_| bad())?,
                created_at: micros_to_time(created).ok_or_else(bad)?,
                updated_at: micros_to_time(updated).ok_or_else(bad)?,
            }))
        })
    }
}

impl FeedReader for SqliteStore {
    async fn read_feed(
        &self,
        after: Position,
        limit: usize,
        filter: &FeedFilter,
    ) -> Result<FeedPage> {
        self.read_feed_sync(after, limit, filter)
    }

    async fn head_position(&self) -> Result<Position> {
        self.with_reader(|conn| Ok(Position::new(0, head(conn)?.unsigned_abs())))
    }

    fn feed_signal(&self) -> FeedSignal {
        self.inner.notifier.signal()
    }
}

impl SnapshotStore for SqliteStore {
    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        let version = i64::try_from(snapshot.version).map_err(|_| {
            Error::InvalidArgument(format!(
                "snapshot version {} of stream {} is out of range",
                snapshot.version, snapshot.stream_id
            ))
        })?;
        let conn = self.inner.writer.lock();
        conn.prepare_cached(
            "INSERT INTO mink_snapshots \
               (stream_id, aggregate_type, version, schema_version, codec, payload, taken_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
             ON CONFLICT (stream_id) DO UPDATE SET \
               aggregate_type = excluded.aggregate_type, version = excluded.version, \
               schema_version = excluded.schema_version, codec = excluded.codec, \
               payload = excluded.payload, taken_at = excluded.taken_at \
             WHERE excluded.version >= mink_snapshots.version",
        )
        .and_then(|mut s| {
            s.execute(params![
                snapshot.stream_id.as_str(),
                snapshot.aggregate_type,
                version,
                snapshot.schema_version,
                snapshot.codec.as_str(),
                &snapshot.payload[..],
                snapshot.taken_at.timestamp_micros(),
            ])
        })
        .map_err(map_err)?;
        Ok(())
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>> {
        self.with_reader(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT aggregate_type, version, schema_version, codec, payload, taken_at \
                     FROM mink_snapshots WHERE stream_id = ?1",
                )
                .map_err(map_err)?;
            let mut rows = stmt.query([stream.as_str()]).map_err(map_err)?;
            let Some(row) = rows.next().map_err(map_err)? else {
                return Ok(None);
            };
            let bad = |what: &str| backend_msg(format!("snapshot of stream {stream}: {what}"));
            let text = |i: usize, what: &str| match row.get_ref(i) {
                Ok(ValueRef::Text(b)) => std::str::from_utf8(b).map_err(|_| bad(what)),
                _ => Err(bad(what)),
            };
            let int = |i: usize, what: &str| match row.get_ref(i) {
                Ok(ValueRef::Integer(v)) => Ok(v),
                _ => Err(bad(what)),
            };
            let aggregate_type = text(0, "aggregate_type is not text")?.to_owned();
            let version = u64::try_from(int(1, "version is not an integer")?)
                .map_err(|_| bad("version is negative"))?;
            let schema_version = u32::try_from(int(2, "schema_version is not an integer")?)
                .map_err(|_| bad("schema_version is out of range"))?;
            let codec = match text(3, "codec is not text")? {
                "json" => mink_es::CodecTag::JSON,
                other => mink_es::CodecTag::from(other.to_owned()),
            };
            let payload = match row.get_ref(4) {
                Ok(ValueRef::Text(b) | ValueRef::Blob(b)) => bytes::Bytes::copy_from_slice(b),
                _ => return Err(bad("payload is neither text nor blob")),
            };
            let taken_at = micros_to_time(int(5, "taken_at is not an integer")?)
                .ok_or_else(|| bad("taken_at is out of range"))?;
            Ok(Some(Snapshot {
                stream_id: stream.clone(),
                aggregate_type,
                version,
                schema_version,
                codec,
                payload,
                taken_at,
            }))
        })
    }

    async fn delete_snapshot(&self, stream: &StreamId) -> Result<()> {
        let conn = self.inner.writer.lock();
        conn.prepare_cached("DELETE FROM mink_snapshots WHERE stream_id = ?1")
            .and_then(|mut s| s.execute([stream.as_str()]))
            .map_err(map_err)?;
        Ok(())
    }
}

impl CheckpointStore for SqliteStore {
    async fn load_checkpoint(&self, name: &str) -> Result<Option<Position>> {
        let text: Option<String> = self.with_reader(|conn| {
            conn.prepare_cached("SELECT position FROM mink_checkpoints WHERE name = ?1")
                .and_then(|mut s| s.query_row([name], |r| r.get(0)).optional())
                .map_err(map_err)
        })?;
        text.map(|t| t.parse::<Position>()).transpose()
    }

    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<()> {
        let conn = self.inner.writer.lock();
        conn.prepare_cached(
            "INSERT INTO mink_checkpoints (name, position, updated_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (name) DO UPDATE SET \
               position = excluded.position, updated_at = excluded.updated_at",
        )
        .and_then(|mut s| {
            s.execute(params![
                name,
                position.to_string(),
                now_micros().timestamp_micros()
            ])
        })
        .map_err(map_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;
    use crate::Synchronous;

    fn pragma(conn: &Connection, name: &str) -> i64 {
        conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn connections_get_the_configured_pragmas() {
        let dir = tempfile::tempdir().unwrap();
        for (sync, expected) in [(Synchronous::Normal, 1), (Synchronous::Full, 2)] {
            let store = SqliteStore::open_with(
                dir.path().join(format!("{sync:?}.db")),
                SqliteConfig::default()
                    .synchronous(sync)
                    .busy_timeout(Duration::from_millis(1234))
                    .read_connections(2),
            )
            .unwrap();
            let w = store.inner.writer.lock();
            assert_eq!(pragma(&w, "synchronous"), expected);
            assert_eq!(pragma(&w, "foreign_keys"), 1);
            assert_eq!(pragma(&w, "busy_timeout"), 1234);
            let mode: String = w
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .unwrap();
            assert_eq!(mode, "wal");
            assert_eq!(store.inner.readers.len(), 2);
            for r in &store.inner.readers {
                let r = r.lock();
                assert_eq!(pragma(&r, "busy_timeout"), 1234);
                assert!(r.is_readonly(rusqlite::MAIN_DB).unwrap());
            }
        }
    }

    #[test]
    fn stream_filters_walk_positions_when_that_reads_less() {
        // A small stream in a big feed: its index.
        assert!(!prefer_position_scan(3, 0, 1_000_000, 256));
        // A long stream, catching up: walk positions.
        assert!(prefer_position_scan(100_000, 0, 1_000_000, 256));
        // Caught up (few events left): walk positions.
        assert!(prefer_position_scan(50, 990, 1_000, 256));
        // Empty streams: the index finds nothing at once.
        assert!(!prefer_position_scan(0, 0, 1_000, 256));
        // No overflow at the extremes.
        assert!(prefer_position_scan(i64::MAX, 0, i64::MAX, 1));
        assert!(!prefer_position_scan(i64::MAX, 0, i64::MAX, i64::MAX));
        assert!(!prefer_position_scan(1, 0, i64::MAX, i64::MAX));
    }

    #[test]
    fn a_failed_append_leaves_no_open_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("t.db")).unwrap();
        let s = StreamId::new("T-1").unwrap();
        let e = NewEvent::new("E", "{}");
        store
            .append_sync(&s, ExpectedVersion::NoStream, vec![e.clone()])
            .unwrap();
        assert!(
            store
                .append_sync(
                    &s,
                    ExpectedVersion::NoStream,
                    vec![NewEvent::new("E", "{}")]
                )
                .is_err()
        );
        assert!(store.inner.writer.lock().is_autocommit());
        assert!(
            store
                .append_sync(
                    &StreamId::new("T-2").unwrap(),
                    ExpectedVersion::Any,
                    vec![NewEvent::new("E", "{}"), e]
                )
                .is_err()
        );
        assert!(store.inner.writer.lock().is_autocommit());
    }
}
