//! # mink-sqlite
//!
//! The embedded default event store of mink: every store trait of [`mink_es`]
//! ([`StreamWriter`](mink_es::StreamWriter), [`StreamReader`](mink_es::StreamReader),
//! [`FeedReader`](mink_es::FeedReader), [`SnapshotStore`](mink_es::SnapshotStore),
//! [`CheckpointStore`](mink_es::CheckpointStore)) on one SQLite file, with the same
//! semantics as [`mink_es::MemoryStore`] — and, in the same file, the command bus's
//! stores: [`SqliteIdempotencyStore`] and [`SqliteAuditStore`] (see
//! [Command stores](#command-stores)), a transactional outbox,
//! [`SqliteOutboxStore`] (see [Outbox](#outbox)), and read models with exact
//! projections: [`SqliteReadModelStore`], inline projections, [`SqliteProjectionTarget`]
//! and [`SqliteControl`] (see [Read models and projections](#read-models-and-projections)).
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use mink_es::{ExpectedVersion, FeedFilter, FeedReader, NewEvent, Position, StreamId, StreamWriter};
//! use mink_sqlite::SqliteStore;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let store = SqliteStore::open(dir.path().join("events.db"))?;
//! let stream = StreamId::new("Order-1")?;
//! let res = store
//!     .append(&stream, ExpectedVersion::NoStream, vec![NewEvent::new("OrderPlaced", r#"{"total":10}"#)])
//!     .await?;
//! assert_eq!(res.version, 1);
//! let page = store.read_feed(Position::START, 100, &FeedFilter::all().category("Order")).await?;
//! assert_eq!(page.events.len(), 1);
//! # Ok::<(), mink_es::Error>(())
//! # });
//! ```
//!
//! ## Storage
//!
//! * The file is in WAL mode, so readers never block the writer nor each other.
//!   `synchronous=NORMAL` by default: a committed append survives a crash of the process
//!   (even `kill -9`); a power loss may lose the last few commits but never corrupts the
//!   file. [`Synchronous::Full`] makes every commit durable against power loss too.
//! * The schema is created and upgraded by versioned [`migrations`] when the store is
//!   opened. A file written by a newer version of this crate is refused
//!   (see [`SchemaTooNew`]).
//! * Events live in one table `mink_events` whose `position` (the SQLite rowid) is the
//!   global feed position ([`mink_es::Position::new`]`(0, position)`). JSON payloads are
//!   stored as TEXT, so SQLite's JSON functions can query them.
//! * Idempotency keys live in `mink_idempotency` (one row per key: its state,
//!   `reserved` or `completed`, the reservation token, the stored result and when the
//!   row expires, in unix microseconds) and the audit log in `mink_audit` (one row per
//!   entry, indexed by time, by user and by command type, each in `(started_at, id)`
//!   order).
//! * Outbox messages live in `mink_outbox` (see [Outbox](#outbox)).
//!
//! ## Command stores
//!
//! [`SqliteStore::idempotency_store`] and [`SqliteStore::audit_store`] give the stores
//! the [`Idempotency`](mink_es::command::idempotency::Idempotency) and
//! [`Audit`](mink_es::command::audit::Audit) middleware need, kept in the store's file
//! and sharing its connections. A claim on an idempotency key is atomic across every
//! handle and process using the file, so a duplicate command runs once even when two
//! processes receive it at the same time.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use mink_es::command::audit::{Audit, AuditQuery, AuditStore};
//! use mink_es::command::idempotency::Idempotency;
//! use mink_es::command::{Command, CommandBus, CommandContext, CommandError};
//! use mink_es::Metadata;
//! use mink_sqlite::SqliteStore;
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
//! let dir = tempfile::tempdir().unwrap();
//! let store = SqliteStore::open(dir.path().join("app.db"))?;
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
//! // A duplicate gets the stored result; the handler does not run again.
//! assert_eq!(bus.dispatch_with(greet, ada()).await?, "hello, ada");
//!
//! let entries = store
//!     .audit_store()
//!     .query(&AuditQuery { user_id: Some("ada".into()), ..Default::default() })
//!     .await?;
//! assert_eq!(entries.len(), 4, "a started and a final entry per dispatch");
//! # Ok::<(), mink_es::BoxError>(())
//! # });
//! ```
//!
//! ## Outbox
//!
//! A store opened with [`SqliteStore::open_with_outbox`] writes, for every append, the
//! messages its [`Outbox`](mink_es::outbox::Outbox) routes for the appended events
//! ([`Outbox::messages_for`](mink_es::outbox::Outbox::messages_for)) into the table
//! `mink_outbox`, inside the append's transaction, before it commits: a message exists
//! if and only if its event does. A failing route or transform fails the append with
//! [`mink_es::Error::Outbox`], and nothing is written. A store opened without an outbox
//! appends exactly as before (no outbox code runs). Idempotent repeats of an append
//! write no message again.
//!
//! [`SqliteStore::outbox_store`] gives the [`OutboxStore`](mink_es::outbox::OutboxStore)
//! that an [`OutboxProcessor`](mink_es::outbox::OutboxProcessor) delivers from, on the
//! store's connections. Any number of processors, in any number of processes and on
//! handles opened with or without routes, can share the file: claims are atomic (one
//! `BEGIN IMMEDIATE` transaction each), a message is leased to one owner at a time, and
//! each (destination, stream) is delivered in order. See [`SqliteOutboxStore`].
//!
//! One row per message, in insertion order:
//!
//! | column | holds |
//! |---|---|
//! | `seq` | the order of the messages (`INTEGER PRIMARY KEY`) |
//! | `id` | the message id (16 bytes, stable: from the event id and the destination) |
//! | `destination`, `stream_id` | where it goes, and its ordering key |
//! | `event_id`, `event_type`, `stream_version`, `position` | its event |
//! | `codec`, `payload`, `metadata`, `created_at` | its body (TEXT when JSON), the event's metadata (JSON) and time |
//! | `status` | `pending`, `delivered` or `dead` |
//! | `attempts`, `next_attempt_at` | attempts so far (a claim counts as one), and when it is due again |
//! | `lease_owner`, `lease_until` | who holds it, until when (both `NULL` when nobody does) |
//! | `last_error`, `finished_at` | the last failure, and when it was delivered or dead-lettered |
//!
//! Times are unix microseconds. Indexes: `(status, seq)` to walk the pending messages
//! and the dead letters in order, `(destination, stream_id, seq)` over the pending
//! messages to find the oldest one of each stream, `(finished_at)` over the delivered
//! messages for purging, and `(id)`.
//!
//! ```
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use mink_es::outbox::publisher::RecordingPublisher;
//! use mink_es::outbox::{Outbox, OutboxProcessor, OutboxStore, Route};
//! use mink_es::{ExpectedVersion, NewEvent, StreamId, StreamWriter};
//! use mink_sqlite::{SqliteConfig, SqliteStore};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let outbox = Outbox::new()
//!     .route(Route::event_types("billing", ["OrderPlaced"]))?
//!     .route(Route::categories("audit", ["Order"]))?;
//! let store = SqliteStore::open_with_outbox(dir.path().join("app.db"), SqliteConfig::default(), outbox)?;
//! store
//!     .append(&StreamId::new("Order-1")?, ExpectedVersion::NoStream, vec![NewEvent::new("OrderPlaced", "{}")])
//!     .await?;
//!
//! // Usually `processor.run(cancel)` in a background task; one round here.
//! let publisher = RecordingPublisher::new(); // a webhook, Kafka, SNS, … publisher in production
//! let processor = OutboxProcessor::new(Arc::new(store.outbox_store()))
//!     .publisher("billing", publisher.clone())
//!     .publisher("audit", publisher.clone());
//! assert_eq!(processor.run_once().await?.delivered, 2);
//! assert_eq!(store.outbox_store().counts().await?.delivered, 2);
//! # Ok::<(), mink_es::Error>(())
//! # });
//! ```
//!
//! ## Read models and projections
//!
//! Read models live in the store's own file, one table `rm_<NAME>` per
//! [`ReadModel`](mink_es::readmodel::ReadModel): a column per declared field (the id is
//! the primary key; text compared by bytes), `mink_version` and `mink_doc` (the model
//! as JSON). `mink_read_models` records the declaration each table was made for, so a
//! changed declaration rebuilds the table from the stored documents.
//!
//! * [`SqliteStore::read_models`] gives a [`SqliteReadModelStore`]: the
//!   [`ReadModelStore`](mink_es::readmodel::ReadModelStore) typed repositories run on,
//!   with the same results as the in-memory store (writes on the writer connection,
//!   queries on the read connections).
//! * **Inline projections** ([`SqliteStoreBuilder::inline`]) run inside each append's
//!   transaction, before it commits: the read model changes with the events or not at
//!   all, and a failing projection fails the append with
//!   [`mink_es::Error::InlineProjection`], writing nothing.
//! * **Async projections** run in a [`ProjectionEngine`](mink_es::projection::ProjectionEngine)
//!   over the store, with a [`SqliteProjectionTarget`]: each batch and its checkpoint
//!   (in `mink_checkpoints`) commit in one transaction, so every event affects the
//!   read model exactly once, even across `kill -9`. Rebuilds are blue/green: the
//!   new model is built in shadow tables `rm_<NAME>__next` while readers see the old
//!   one, then swapped in by one transaction (`mink_projection_rebuilds` records a
//!   rebuild under way, so a crash mid-rebuild resumes into the shadow tables).
//! * [`SqliteControl`] keeps statuses, operators' requests, parked events and leases in
//!   `mink_projection_status`, `mink_projection_requests`, `mink_projection_parked` and
//!   `mink_projection_leases`, so that
//!   [`ProjectionOps`](mink_es::projection::ops::ProjectionOps) on any handle, in any
//!   process, steers the workers running on another, and one process at a time runs
//!   each projection.
//!
//! A projection's `apply` runs inside a write transaction, under the writer lock, and
//! is polled once: it must only await the read-model store it is given (which never
//! waits), and should be quick, as appends wait for it.
//!
//! ## Execution model
//!
//! Every call runs its SQL synchronously on the calling thread (there is no thread hop
//! and no background task): one writer connection behind a mutex for appends and other
//! writes, and a small pool of read connections for reads. Each call is a few short
//! statements against a local file, so it blocks the async runtime only briefly, much
//! like a short synchronous lock. The writer lock is never held across an `.await`.
//!
//! Other processes may open the same file; writers then take turns (waiting up to
//! [`SqliteConfig::busy_timeout`]), and subscriptions in this process see their events
//! by polling.

mod command;
mod config;
mod error;
mod outbox;
mod projection;
mod readmodel;
mod row;
mod schema;
mod store;

pub use command::{SqliteAuditStore, SqliteIdempotencyStore};
pub use config::{SqliteConfig, Synchronous};
pub use error::SchemaTooNew;
pub use outbox::SqliteOutboxStore;
pub use projection::{SqliteControl, SqliteProjectionTarget};
pub use readmodel::SqliteReadModelStore;
pub use schema::{LATEST_SCHEMA_VERSION, Migration, migrations};
pub use store::{SqliteStore, SqliteStoreBuilder};
