//! # mink-postgres
//!
//! The production event store of mink: every store trait of [`mink_es`]
//! ([`StreamWriter`](mink_es::StreamWriter), [`StreamReader`](mink_es::StreamReader),
//! [`FeedReader`](mink_es::FeedReader), [`SnapshotStore`](mink_es::SnapshotStore),
//! [`CheckpointStore`](mink_es::CheckpointStore)) on PostgreSQL ≥ 13, with the same
//! semantics as [`mink_es::MemoryStore`], plus appends that join the caller's
//! transaction ([`PgEventStore::append_in`]) — and, in the same schema and on the same
//! pool, the command bus's stores: [`PgIdempotencyStore`] and [`PgAuditStore`] (see
//! [Command stores](#command-stores)), and a transactional outbox: appends write the
//! messages of their events in the same transaction, and [`PgOutboxStore`] hands them
//! to [`OutboxProcessor`](mink_es::outbox::OutboxProcessor)s (see [Outbox](#outbox)).
//!
//! ```no_run
//! # async fn f() -> mink_es::Result<()> {
//! use mink_es::{ExpectedVersion, NewEvent, StreamId, StreamWriter};
//! use mink_es::subscription::{Subscription, SubscriptionOptions};
//! use mink_postgres::PgEventStore;
//!
//! let store = PgEventStore::builder("postgres://app@localhost/app")
//!     .schema("mink")
//!     .build()
//!     .await?;
//! store.migrate().await?; // explicit; idempotent
//!
//! let order = StreamId::new("Order-1")?;
//! store
//!     .append(&order, ExpectedVersion::NoStream, vec![NewEvent::new("OrderPlaced", "{}")])
//!     .await?;
//!
//! // Catch up, then follow live (LISTEN/NOTIFY wakes it, polling is the fallback).
//! let mut sub = Subscription::new(store.clone(), SubscriptionOptions::category("Order"));
//! let first = sub.next().await?;
//! # let _ = first; Ok(()) }
//! ```
//!
//! ## Schema
//!
//! Everything lives in one schema (default `mink`, see [`SchemaName`]), created and
//! upgraded by [`PgEventStore::migrate`] from migrations embedded in the crate and
//! recorded in `<schema>.mink_migrations` (see [`migrate`](mod@migrate)):
//!
//! | table | holds |
//! |---|---|
//! | `streams(stream_id PK, category, version, created_at, updated_at)` | each stream's current version |
//! | `events(tx xid8, position bigint identity, event_id uuid, stream_id, category, version, event_type, schema_version, codec, payload bytea, metadata jsonb, recorded_at timestamptz)` | the events |
//! | `snapshots(stream_id PK, aggregate_type, version, schema_version, codec, payload bytea, taken_at)` | the latest snapshot per stream |
//! | `checkpoints(name PK, position bytea(16), updated_at)` | consumers' checkpoints |
//! | `idempotency_keys(key PK, state, token uuid, output bytea, expires_at timestamptz)` | idempotency keys: a reservation or a stored result (see [`PgIdempotencyStore`]) |
//! | `audit_log(seq bigint identity PK, id uuid, command_id uuid, command, aggregate_id, user_id, tenant_id, correlation_id, outcome, error_kind, error_message, started_at timestamptz, duration_us bigint)` | the audit log (see [`PgAuditStore`]) |
//! | `outbox(seq bigint identity PK, id uuid, destination, stream_id, event_id uuid, event_type, stream_version, tx xid8, position bigint, codec, payload bytea, metadata jsonb, created_at, status, attempts, next_attempt_at, lease_owner, lease_until, last_error, finished_at)` | outbox messages and their delivery state (see [Outbox](#outbox)) |
//! | `outbox_heads(destination, stream_id, seq)` | each (destination, stream)'s head: the message a claim may take next (migration 5) |
//! | `outbox_stale(id, destination, stream_id)` | streams whose head could not be repaired at once, for the next claim |
//!
//! | `mink_projection_status`, `mink_projection_requests`, `mink_projection_parked`, `mink_projection_leases`, `mink_projection_rebuilds` | projection statuses, operators' requests, parked events, leases and blue/green rebuild marks (see [Projections and read models](#projections-and-read-models)) |
//! | `rm_<model>` (and `rm_<model>__next` during a rebuild) | read models, one table per model (see [`PgReadModelStore`]) |
//!
//! Indexes on `events`: primary key `(tx, position)` (the feed), unique
//! `(stream_id, version)` (stream reads; versions can never collide) and unique
//! `event_id` (idempotent appends). Indexes on `idempotency_keys`: the key, and
//! `expires_at` (purges); on `audit_log`: `(started_at, id, seq)`, `(user_id,
//! started_at, id, seq)` and `(command, started_at, id, seq)`, one per query filter, each
//! in the order queries return; on `outbox`, see [Outbox](#outbox). Names are
//! `text COLLATE "C"`: compared byte for byte, fast, and immune to operating-system
//! collation updates.
//!
//! A feed read filtered by category or event type walks the feed index and skips what
//! does not match: a filtered catch-up costs a read of the feed (its cursor still
//! advances past non-matching events, so the cost is paid once, not per page). Where a
//! filter selects a small part of a large store, add an index for it with
//! [`PgEventStore::create_category_index`] or [`PgEventStore::create_event_type_index`]
//! (built concurrently, without blocking writers); each costs every append one more
//! index insert, which is why they are not there by default.
//!
//! **Payloads** are stored as `bytea`, byte for byte, whatever their codec: the codec tag
//! is a column, binary codecs work, and a JSON payload reads back exactly as written
//! (a `jsonb` column would re-order keys and drop whitespace, and could not hold a
//! payload that is not valid JSON). JSON stays queryable without paying for it on every
//! append: the view `<schema>.events_json` adds a `data jsonb` column (NULL for other
//! codecs), and the immutable function `<schema>.json_payload(codec, payload)` can back
//! expression indexes:
//!
//! ```sql
//! SELECT data ->> 'total' FROM mink.events_json WHERE event_type = 'OrderPlaced';
//! CREATE INDEX ON mink.events ((mink.json_payload(codec, payload) ->> 'customerId'))
//!   WHERE codec = 'json';
//! ```
//!
//! Metadata is `jsonb` (NULL when empty); times are `timestamptz` (microseconds), taken
//! from the server's `statement_timestamp()`, and read back through their raw
//! microseconds: a time edited outside the crate that `chrono` cannot hold
//! (`'infinity'`, a year beyond 262,143) is a [`mink_es::Error::CorruptEvent`] (or, in
//! a stream's or snapshot's row, a [`PgStoreError::Corrupt`]), never a panic.
//!
//! ## Appends
//!
//! One statement per append, one round trip: a CTE claims the stream's next versions on
//! its `streams` row and the same statement inserts all events. The expected version
//! decides the claim:
//!
//! * `Any`: `INSERT … ON CONFLICT (stream_id) DO UPDATE SET version = version + n`.
//!   Concurrent creators of one new stream queue on the row and all succeed, in turn.
//! * `NoStream` / `Exact(0)`: `INSERT … ON CONFLICT DO NOTHING`: of N concurrent
//!   creators exactly one wins; the others wait for it and get [`mink_es::Error::Conflict`]
//!   with the actual version.
//! * `Exact(n)` / `StreamExists`: `UPDATE … WHERE version = n` (a compare-and-set that
//!   re-checks after waiting for a concurrent writer).
//!
//! The events travel as scalars (one event), as arrays of ids and payloads with the
//! shared type, schema version, codec and metadata once (the usual batch), or as one
//! array per column; a batch returns one row (the transaction id and the positions).
//!
//! Idempotency rests on the unique `event_id` index. Through the pool, an append whose
//! ids are stored fails on it and is rolled back; inside a caller's transaction (where a
//! failed statement would abort the transaction) the statement checks every id first and
//! writes nothing. Either way, when nothing was written a second statement reads the
//! stream's version and the append's ids to tell a conflict from an idempotent repeat:
//! the same ids at the same place return the original events with `deduplicated: true`,
//! anywhere else [`mink_es::Error::DuplicateEventId`] (the rules of
//! [`mink_es::store::check_idempotent_repeat`]). Retrying an append whose outcome is
//! unknown (a connection lost during the commit) is therefore safe. Driver errors and
//! SQLSTATEs are mapped in one place: see [`error`](mod@error).
//!
//! ## The global feed: transaction-id horizon
//!
//! A sequence alone cannot order a feed on PostgreSQL: positions are handed out at
//! insert but become visible at commit, so a reader that saw position 11 may later
//! find 10 committed behind it. This store uses the *transaction-id horizon*:
//!
//! * each event stores `tx = pg_current_xact_id()` (all events of one transaction share
//!   it) and `position` from a sequence; the feed order is `(tx, position)`, and a
//!   [`mink_es::Position`] is `Position::new(tx, position)`;
//! * a read returns only rows with `tx < pg_snapshot_xmin(pg_current_snapshot())`:
//!   every transaction below that horizon has finished, so that set of rows never
//!   changes again, and a cursor walking it in `(tx, position)` order never skips;
//! * a short page of a filtered read moves the cursor to the last event below the
//!   horizon, computed in the same statement (same snapshot), so checkpoints of filtered
//!   readers advance even when nothing matches;
//! * a stream's events stay in version order in the feed: a transaction takes its id at
//!   its first write, so one that wrote something else first can append to a stream
//!   *after* a younger transaction did. The stream row remembers the id its last append
//!   was stamped with, and an append stamps its events with the greater of that and its
//!   own id. A stamp is never below the writer's real id, so "below the horizon" still
//!   means "finished", and the feed stays gap-free; no append fails or retries for it.
//!
//! Trade-offs:
//!
//! * **A long-running write transaction anywhere in the cluster** (any database, any
//!   table; `idle in transaction` sessions holding a transaction id; prepared two-phase
//!   transactions) **holds the feed back** until it ends: events committed after it
//!   started wait. Nothing is lost or reordered, and read-only transactions don't
//!   count. Watch [`PgEventStore::feed_lag`], keep write transactions short, and set
//!   `idle_in_transaction_session_timeout`. A transaction that rolls back just ends:
//!   it never stalls the feed.
//! * Order is transaction-id order, not commit order or position order. It is total,
//!   stable and the same for every reader.
//! * **Logical restores**: `pg_dump`/`pg_restore` into a younger cluster brings
//!   transaction ids the new cluster has not reached, which would hide history.
//!   [`PgEventStore::migrate`] and [`PgEventStore::verify`] refuse to proceed
//!   ([`PgStoreError::TransactionIdsFromTheFuture`]). Physical backups and pg_upgrade
//!   keep the ids and are safe. To repair, re-stamp history below the new horizon in
//!   its old order (consumers must then restart from their translated or reset
//!   checkpoints):
//!
//!   ```sql
//!   BEGIN;
//!   ALTER TABLE mink.events ALTER COLUMN position SET GENERATED BY DEFAULT;
//!   UPDATE mink.events e SET tx = '1'::xid8, position = o.rn
//!     FROM (SELECT tx, position, row_number() OVER (ORDER BY tx, position) AS rn
//!           FROM mink.events) o
//!     WHERE e.tx = o.tx AND e.position = o.position;
//!   ALTER TABLE mink.events ALTER COLUMN position SET GENERATED ALWAYS;
//!   SELECT setval(pg_get_serial_sequence('mink.events', 'position'),
//!                 (SELECT max(position) FROM mink.events));
//!   COMMIT;
//!   ```
//!
//! ## Command stores
//!
//! [`PgEventStore::idempotency_store`] and [`PgEventStore::audit_store`] give the stores
//! the [`Idempotency`](mink_es::command::idempotency::Idempotency) and
//! [`Audit`](mink_es::command::audit::Audit) middleware need, in the store's schema
//! (tables `idempotency_keys` and `audit_log`, created by migration 2) and on its pool.
//! Their semantics are those of the memory stores of [`mink_es::command`], shared by
//! every process using the schema:
//!
//! * **A claim is atomic, in one statement**: `INSERT … ON CONFLICT (key) DO UPDATE …
//!   WHERE expires_at <= clock_timestamp() RETURNING …` reserves a free key (no record,
//!   or an expired one) under the key's row lock, so of any number of concurrent claims
//!   exactly one wins. When it writes nothing, the same statement reads the holder's
//!   state; if that read's snapshot predates the holder (it committed while the claim
//!   waited for its row), the claim decides again on a fresh snapshot rather than guess.
//! * **Expiry is decided by the database server's clock**, never the application's, so
//!   application servers with skewed clocks agree. Reservation and result tokens guard
//!   `complete` and `release`: an attempt that outlived its reservation cannot overwrite
//!   the result of the attempt that took it over.
//! * Audit queries filter by user, command type and time (`from` inclusive, `to`
//!   exclusive) and come in `(started_at, id)` order, oldest or newest first, each
//!   served by an index in that order. Times are kept to the microsecond.
//! * Errors are boxed [`mink_es::Error`]s that say what failed and keep
//!   [`is_retryable`](mink_es::Error::is_retryable) (a database that is down is a
//!   transient [`mink_es::Error::Backend`]; a schema that was dropped is
//!   [`PgStoreError::SchemaNotMigrated`], found with [`PgStoreError::find`]). With
//!   [`Audit::fail_closed`](mink_es::command::audit::Audit::fail_closed), a command
//!   whose audit entry cannot be written does not run.
//!
//! ```no_run
//! # async fn f() -> Result<(), mink_es::BoxError> {
//! use mink_es::command::audit::{Audit, AuditQuery, AuditStore};
//! use mink_es::command::idempotency::Idempotency;
//! use mink_es::command::{Command, CommandBus, CommandContext, CommandError};
//! use mink_es::Metadata;
//! use mink_postgres::PgEventStore;
//!
//! #[derive(serde::Serialize, Clone)]
//! struct Greet { name: String, request: String }
//!
//! impl Command for Greet {
//!     const NAME: &'static str = "Greet";
//!     type Output = String;
//!     fn idempotency_key(&self) -> Option<String> { Some(self.request.clone()) }
//! }
//!
//! let store = PgEventStore::connect("postgres://app@localhost/app").await?;
//! store.migrate().await?;
//! let mut bus = CommandBus::new();
//! bus.use_middleware(Audit::new(store.audit_store()).fail_closed());
//! bus.use_middleware(Idempotency::new(store.idempotency_store()));
//! bus.register(|g: Greet, _ctx: CommandContext| async move {
//!     Ok::<_, CommandError>(format!("hello, {}", g.name))
//! })?;
//!
//! let ada = || CommandContext::new().with_metadata(Metadata::default().with_user_id("ada"));
//! let greet = Greet { name: "ada".into(), request: "req-1".into() };
//! assert_eq!(bus.dispatch_with(greet.clone(), ada()).await?, "hello, ada");
//! // A duplicate, from this process or any other: the stored result, no second run.
//! assert_eq!(bus.dispatch_with(greet, ada()).await?, "hello, ada");
//!
//! let entries = store
//!     .audit_store()
//!     .query(&AuditQuery { user_id: Some("ada".into()), ..Default::default() })
//!     .await?;
//! # let _ = entries; Ok(()) }
//! ```
//!
//! ## Outbox
//!
//! A store built with [`PgEventStoreBuilder::outbox`] writes, with every append, the
//! messages its [`Outbox`](mink_es::outbox::Outbox) routes make of the appended events
//! into the `outbox` table (migration 3), **in the same transaction as the events**:
//! through the pool and in a caller's transaction ([`PgEventStore::append_in`]) alike.
//! A message exists exactly when its event does; a route whose transform fails fails
//! the append with [`mink_es::Error::Outbox`], and nothing is written.
//!
//! ```no_run
//! # async fn f() -> mink_es::Result<()> {
//! use std::sync::Arc;
//! use mink_es::outbox::{Outbox, OutboxProcessor, Route};
//! use mink_es::outbox::publisher::RecordingPublisher;
//! use mink_es::{ExpectedVersion, NewEvent, StreamId, StreamWriter};
//! use mink_postgres::PgEventStore;
//! use tokio_util::sync::CancellationToken;
//!
//! let routes = Outbox::new()
//!     .route(Route::categories("billing", ["Order"]))?
//!     .route(Route::event_types("audit", ["OrderPlaced", "OrderCancelled"]))?;
//! let store = PgEventStore::builder("postgres://app@localhost/app").outbox(routes).build().await?;
//! store.migrate().await?;
//! store
//!     .append(&StreamId::new("Order-1")?, ExpectedVersion::NoStream, vec![NewEvent::new("OrderPlaced", "{}")])
//!     .await?; // the event and its two messages, in one statement
//!
//! // Any process on the schema (with or without routes) can deliver.
//! let processor = OutboxProcessor::new(Arc::new(store.outbox_store()))
//!     .publisher("billing", RecordingPublisher::new())
//!     .publisher("audit", RecordingPublisher::new());
//! tokio::spawn(processor.run(CancellationToken::new()));
//! # Ok(()) }
//! ```
//!
//! **Writing.** Routes without a transform make a message out of an event's type and
//! stream alone, so the store knows before the statement runs which messages an
//! append makes (their event, destination and id); the append's single statement
//! writes them with a second data-modifying CTE that copies everything else (version,
//! position, time, payload, metadata) from the inserted events' `RETURNING`. An
//! append stays one statement and one round trip; an append that routes nothing runs
//! exactly the statement of a store without an outbox. A route's transform, though,
//! receives the stored event, whose position, time and (for `Any`) version only the
//! insert knows: when any route transforms, the messages are made after the insert
//! and written by a second statement in the append's transaction (through the pool,
//! a transaction of the store's own: `BEGIN`, append, messages, `COMMIT`; in a
//! caller's transaction, within a savepoint that a failing transform rolls back, so
//! the caller's transaction stays usable). Either way a message gets its `seq` while
//! the append holds its stream's row, so a stream's messages are in version order.
//!
//! **Delivering.** [`PgOutboxStore`] implements
//! [`OutboxStore`](mink_es::outbox::OutboxStore) with the memory store's semantics,
//! shared by every process on the schema. Each (destination, stream) has a head, its
//! row in `outbox_heads` (migration 5): the oldest of its pending messages (or one
//! finished since, until repaired). A claim runs in a `READ COMMITTED` transaction of
//! its own without JIT: it repairs the streams listed in `outbox_stale`, then
//!
//! ```sql
//! WITH cand AS (               -- the first $limit available heads, locked
//!   SELECT o.seq, o.attempts >= $max_attempts AS over
//!   FROM outbox_heads h JOIN outbox o ON o.seq = h.seq + 0
//!   WHERE h.seq IS NOT NULL AND o.status = 'pending'
//!     AND (o.lease_until IS NULL OR o.lease_until <= statement_timestamp())
//!     AND o.next_attempt_at <= statement_timestamp()
//!   ORDER BY h.seq LIMIT $limit
//!   FOR NO KEY UPDATE OF o SKIP LOCKED),
//! done AS (UPDATE ... status = 'dead' ... WHERE over),        -- the dead-letter queue
//! claimed AS (UPDATE outbox SET attempts = attempts + 1, lease_owner = $owner,
//!   lease_until = statement_timestamp() + $lease WHERE NOT over RETURNING ...)
//! ...
//! ```
//!
//! (and claims again for the room dead-lettered heads took).
//!
//! * Only a stream's head is deliverable: a head that is leased, not yet due, or past
//!   the limit holds back its followers; dead letters hold back nothing (the head moves
//!   past them; a replayed one older than the head becomes the head again).
//! * A claim reads the heads it takes and those it passes (leased, waiting for a retry),
//!   never the messages queued behind them: its cost does not grow with the backlog.
//! * Appends lock their streams' `outbox_heads` rows until they commit, and set the
//!   head of a stream that had none. An acknowledgement (or a failure without retry)
//!   locks its streams' rows, skipping those an append holds, and in a second statement
//!   moves their heads to the oldest pending message; the skipped streams are listed in
//!   `outbox_stale`, which every claim repairs first. A repair decides in a statement
//!   whose snapshot follows its lock, so it sees every committed append of the stream,
//!   and none is in flight: a stream never loses its head, and one row cannot hold two.
//!   (Appends in a REPEATABLE READ or SERIALIZABLE caller transaction get a
//!   serialization failure if a repair moved their stream's head meanwhile.)
//! * Concurrent claims never take one message (`SKIP LOCKED`, then the READ COMMITTED
//!   re-check of a row changed meanwhile on its latest version).
//! * Replays lock the dead letters' streams (those not held at once, one transaction
//!   each, waiting), put them back in line and repair.
//! * `ack` and `fail` act only on messages the caller still holds; a late
//!   acknowledgement of a message another processor took over is ignored.
//!
//! Indexes: `outbox_heads (seq) WHERE seq IS NOT NULL` (the claim's walk, in order);
//! on `outbox`, the primary key `seq`; `(seq) WHERE status = 'pending'` (a head's row);
//! `(destination, stream_id, seq) WHERE status = 'pending'` (a stream's oldest pending
//! message, for repairs); `id` (acknowledgements, status, replays);
//! `(seq) WHERE status = 'dead'` (the dead-letter queue, oldest first); `(finished_at)
//! WHERE status = 'delivered'` (purges, which delete 1,000 rows per transaction). The
//! other status changes are updates of leases and attempts, which touch no indexed
//! column, so they are HOT updates (the table keeps 20 % of each page free for them).
//!
//! Costs: a message costs its append one insert into `outbox` and its indexes, and
//! the lock (and, for a stream with nothing pending, the update) of its stream's
//! `outbox_heads` row. A claim reads the heads in order up to its last claim (those it
//! takes and the leased or waiting ones it passes), a few µs each, never the messages
//! queued behind them; an acknowledgement also locks and moves its streams' heads
//! (one small row each). Processes running code older than migration 5 must stop
//! before it runs: their appends would not maintain heads.
//!
//! Processors are woken by `NOTIFY` on the schema's outbox channel
//! ([`SchemaName::outbox_channel`]): appends that write messages announce them (through
//! the pool, by the store's announcer; in a caller's transaction, at its commit), and
//! so do replays; [`OutboxStore::signal`](mink_es::outbox::OutboxStore::signal) is fed
//! by a `LISTEN` task of its own, and polling covers lost notifications.
//!
//! ## Projections and read models
//!
//! Read models ([`mink_es::readmodel`]) live in the store's schema, one table per model
//! (`rm_<NAME>`, created or rebuilt by `ensure_table`), with the semantics of the
//! in-memory reference store:
//!
//! * [`PgEventStore::read_models`] gives a [`PgReadModelStore`] on the pool, for
//!   readers and applications;
//! * [`PgTxReadModelStore`] is bound to an open transaction: a unit of work that reads
//!   each row at most once and writes the batch's changes with a few multi-row
//!   statements at its flush;
//! * [`PgProjectionTarget`] runs a [`ReadModelProjection`](mink_es::projection::ReadModelProjection)
//!   asynchronously, under a [`ProjectionEngine`](mink_es::projection::ProjectionEngine):
//!   each batch is one transaction that locks and moves the checkpoint with the
//!   read-model changes (exactly once, even across `kill -9` and two processes), and
//!   rebuilds blue/green into shadow tables swapped in atomically;
//! * [`PgEventStoreBuilder::inline_projection`] runs a projection inside every append's
//!   transaction: if it fails, the append fails with
//!   [`Error::InlineProjection`](mink_es::Error::InlineProjection) and nothing is
//!   written;
//! * [`PgEventStore::projection_control`] gives a [`PgControl`]: statuses, requests,
//!   parked events and leases shared by every process on the schema, so
//!   [`ProjectionOps`](mink_es::projection::ops::ProjectionOps) (pause, resume, rebuild,
//!   reset, replay parked) steers workers in other processes, and one process at a time
//!   is active per projection or partition.
//!
//! ```no_run
//! # use mink_es::projection::ReadModelProjection;
//! # async fn f(url: &str, stock: impl ReadModelProjection, balances: impl ReadModelProjection) -> mink_es::Result<()> {
//! use std::sync::Arc;
//! use mink_es::projection::{AsyncOptions, ProjectionEngine};
//! use mink_postgres::{PgEventStore, PgProjectionTarget};
//! use tokio_util::sync::CancellationToken;
//!
//! // `stock` in the append's transaction, `balances` in the background.
//! let store = PgEventStore::builder(url).inline_projection(stock).build().await?;
//! store.migrate().await?;
//! let mut engine = ProjectionEngine::new(store.clone(), Arc::new(store.projection_control()));
//! engine.add(PgProjectionTarget::new(&store, balances)?, AsyncOptions::default())?;
//! let handle = engine.start(CancellationToken::new());
//! # let _ = handle; Ok(()) }
//! ```
//!
//! ## Wake-ups
//!
//! [`FeedReader::feed_signal`](mink_es::FeedReader::feed_signal) is fed by a background
//! `LISTEN` task on its own connection; appends through the pool are announced by a
//! background task (`NOTIFY`, coalesced, with `synchronous_commit = off` so that it
//! costs no disk flush); appends in a caller's transaction `NOTIFY` inside it (a plain
//! `NOTIFY`, which leaves the caller's commit as durable as the caller made it). Local
//! subscribers are woken directly after each append. Notifications are a hint: a lost
//! one costs a subscriber one poll interval. The tasks (and the outbox's `LISTEN` task,
//! see [Outbox](#outbox)) stop when the last store handle is dropped or when the
//! builder's cancellation token fires.
//!
//! ## Features
//!
//! * `tls-rustls`: TLS through rustls with the webpki roots;
//!   `tls-rustls-native-roots`: with the platform's roots. Select TLS with `sslmode` in
//!   the URL (or [`sqlx::postgres::PgConnectOptions::ssl_mode`]).

#![forbid(unsafe_code)]

mod command;
pub mod error;
mod guard;
mod lag;
pub mod migrate;
mod notify;
mod outbox;
mod projection;
mod readmodel;
mod row;
mod schema;
mod snapshot;
mod store;
mod time;

pub use command::{PgAuditStore, PgIdempotencyStore};
pub use error::{PgStoreError, map_sqlx_error};
pub use lag::{FeedLag, PreparedTransaction, Writer};
pub use migrate::{LATEST_VERSION, MIGRATIONS, Migration, MigrationReport, migrate, verify};
pub use outbox::PgOutboxStore;
pub use projection::{CheckpointMoved, PgControl, PgProjectionTarget};
pub use readmodel::{PgReadModelStore, PgTxReadModelStore, SHADOW_SUFFIX};
pub use schema::{MAX_SCHEMA_NAME_LEN, SchemaName};
pub use store::{PgEventStore, PgEventStoreBuilder};

/// Re-exported so that users name the same driver version.
pub use sqlx;
