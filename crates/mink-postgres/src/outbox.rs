//! [`PgOutboxStore`]: outbox messages in the `outbox` table, written by the appends of a
//! store built with [`PgEventStoreBuilder::outbox`](crate::PgEventStoreBuilder::outbox).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use mink_es::outbox::store::OutboxCounts;
use mink_es::outbox::{Claimed, DeadLetter, MessageStatus, OutboxMessage, OutboxStore};
use mink_es::{CodecTag, Error, EventId, FeedSignal, Metadata, Result, StreamId};
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::PgEventStore;
use crate::error::{PgStoreError, clip, context};
use crate::row::{Xid8, limit_i64, position_of};
use crate::schema::Stmt;
use crate::time::{later, read_opt_time, read_time, ttl_micros};

/// The future type of [`OutboxStore`] (`futures::future::BoxFuture`).
type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The columns [`read_message`] reads, in order, from index 0.
const MESSAGE_COLUMNS: &str = "seq, id, destination, stream_id, event_id, event_type, \
     stream_version, tx, position, codec, payload, metadata, created_at";

/// The number of [`MESSAGE_COLUMNS`]: the index of the first column after them.
const MESSAGE_COLUMN_COUNT: usize = 13;

/// Delivered messages deleted per statement (and so per transaction) by
/// [`purge_delivered`](OutboxStore::purge_delivered): a short transaction neither holds
/// back the feed's horizon nor piles up WAL.
const PURGE_BATCH: i64 = 1000;

/// The longest retention [`purge_delivered`](OutboxStore::purge_delivered) computes a
/// cutoff for (about 6,000 years; the server's clock minus more would leave PostgreSQL's
/// range). Nothing delivered by this store is older.
const MAX_RETENTION_MICROS: u128 = 6_000 * 365 * 24 * 3_600 * 1_000_000;

/// The last error recorded for a message whose lease expired after its last attempt.
const LEASE_EXPIRED: &str = "lease expired after the last attempt";

/// "The oldest pending message of its (destination, stream)", for the pending outbox
/// row `o`, seen in the statement's snapshot. A correlated scalar subquery rather than
/// `NOT EXISTS`, so that every plan (generic ones included) probes the
/// `outbox_pending_streams_idx` index once per row walked, never hashes the whole
/// pending set.
const IS_HEAD: &str = "o.seq = (SELECT min(p.seq) FROM {schema}.outbox p \
     WHERE p.status = 'pending' AND p.destination = o.destination \
     AND p.stream_id = o.stream_id)";

/// "Not leased by a live lease, and due", by the server's clock.
const AVAILABLE: &str = "(o.lease_until IS NULL OR o.lease_until <= statement_timestamp()) \
     AND o.next_attempt_at <= statement_timestamp()";

/// An [`OutboxStore`] in the schema of a [`PgEventStore`]: the messages that the appends
/// of a store built with [`PgEventStoreBuilder::outbox`](crate::PgEventStoreBuilder::outbox)
/// wrote into the `outbox` table, for an
/// [`OutboxProcessor`](mink_es::outbox::OutboxProcessor) and the dead-letter API.
///
/// Build it with [`PgEventStore::outbox_store`] (or [`PgOutboxStore::new`]); it uses the
/// store's pool, and cloning it gives another handle to the same messages. Any store on
/// the schema can deliver, including one built without routes, in any number of
/// processes. Its semantics are those of
/// [`MemoryOutboxStore`](mink_es::outbox::store::MemoryOutboxStore), made durable and
/// shared by every process using the schema:
///
/// * [`claim`](OutboxStore::claim) is one statement (in a `READ COMMITTED` transaction
///   of its own, without JIT: see the [crate docs](crate#outbox)). It walks the pending messages in
///   `seq` (writing) order and considers only the oldest pending message of each
///   (destination, stream): a message that is leased, not yet due, or past this round's
///   `limit` still holds back the later messages of its stream; dead letters hold back
///   nothing. Each claim counts as an attempt; a message due again after its
///   `max_attempts`-th attempt (its lease expired) is moved to the dead-letter queue
///   instead. Rows are locked with `FOR NO KEY UPDATE SKIP LOCKED` (the row lock an
///   `UPDATE` takes), so concurrent claims, from any number of processes, never take
///   the same message: a message another claim is taking is skipped (and holds back its
///   stream), and one it took is leased when this claim re-reads it.
/// * [`ack`](OutboxStore::ack) and [`fail`](OutboxStore::fail) act only on messages the
///   caller still holds (pending and leased to it; an expired lease nobody took over
///   still counts), each in one statement.
/// * **Leases and due times are decided by the database server's clock**
///   (`statement_timestamp()`), never by the application's: processors on hosts with
///   skewed clocks agree. A retry time given to [`fail`](OutboxStore::fail) is turned
///   into a delay from the caller's clock and added to the server's.
/// * [`signal`](OutboxStore::signal) is fed by a background `LISTEN` task on the
///   schema's outbox channel ([`SchemaName::outbox_channel`](crate::SchemaName::outbox_channel)),
///   notified when appends write messages (through the pool: by the store's announcer;
///   in a caller's transaction: at its commit) and by replays; acknowledgements and
///   failures wake this handle's processors directly. Processors also poll.
///   [`PgEventStoreBuilder::listen`](crate::PgEventStoreBuilder::listen)`(false)` turns
///   the task off.
/// * [`purge_delivered`](OutboxStore::purge_delivered) deletes in batches of 1,000, one
///   short transaction each.
///
/// A row that cannot be read back (edited or damaged outside this crate) is a
/// non-transient [`Error::Backend`] with [`PgStoreError::Corrupt`] naming its `seq`,
/// never a panic. A claim that meets one moves it to the dead-letter queue (its
/// `last_error` says what is wrong, and a warning is logged) and returns the others:
/// it can never be delivered, and must not hold up the rest.
/// [`dead_letters`](OutboxStore::dead_letters) then fails naming it until it is
/// purged ([`purge_dead`](OutboxStore::purge_dead)) or repaired. Errors say what failed and keep
/// [`is_retryable`](mink_es::Error::is_retryable); a schema that was not migrated is
/// [`PgStoreError::SchemaNotMigrated`].
///
/// ```no_run
/// # async fn f() -> mink_es::Result<()> {
/// use std::sync::Arc;
/// use mink_es::outbox::{Outbox, OutboxProcessor, Route};
/// use mink_es::outbox::publisher::RecordingPublisher;
/// use mink_postgres::PgEventStore;
/// use tokio_util::sync::CancellationToken;
///
/// let store = PgEventStore::builder("postgres://app@localhost/app")
///     .outbox(Outbox::new().route(Route::categories("billing", ["Order"]))?)
///     .build()
///     .await?;
/// store.migrate().await?;
/// let processor = OutboxProcessor::new(Arc::new(store.outbox_store()))
///     .publisher("billing", RecordingPublisher::new());
/// let cancel = CancellationToken::new();
/// tokio::spawn(processor.run(cancel.clone()));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgOutboxStore {
    store: PgEventStore,
    sql: Arc<Statements>,
}

impl fmt::Debug for PgOutboxStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgOutboxStore")
            .field("schema", self.store.schema())
            .finish_non_exhaustive()
    }
}

impl PgEventStore {
    /// The outbox messages kept in this store's schema, on this store's pool.
    ///
    /// See [`PgOutboxStore`] and [`PgEventStoreBuilder::outbox`](crate::PgEventStoreBuilder::outbox).
    pub fn outbox_store(&self) -> PgOutboxStore {
        PgOutboxStore::new(self)
    }
}

/// The store's statements, rendered for its schema.
#[derive(Debug)]
struct Statements {
    /// $1 owner, $2 limit, $3 lease (µs, NULL: forever), $4 attempt limit. Returns the
    /// claimed messages ([`MESSAGE_COLUMNS`], then `attempts`).
    claim: Stmt,
    /// $1 seq, $2 why: a claimed message that cannot be read, to the dead letters.
    quarantine: Stmt,
    /// $1 owner, $2 ids.
    ack: Stmt,
    /// $1 id, $2 owner, $3 error, $4 delay (µs, NULL: forever).
    retry: Stmt,
    /// $1 id, $2 owner, $3 error.
    give_up: Stmt,
    /// $1 limit.
    dead_letters: Stmt,
    replay_all: Stmt,
    /// $1 id.
    replay_one: Stmt,
    purge_dead_all: Stmt,
    /// $1 id.
    purge_dead_one: Stmt,
    /// $1 retention (µs), $2 batch size.
    purge_delivered: Stmt,
    /// $1 id.
    status: Stmt,
    counts: Stmt,
}

impl Statements {
    fn new(store: &PgEventStore) -> Self {
        let schema = store.schema();
        let st = |sql: &str| Stmt::new(&sql.replace("{is_head}", IS_HEAD), schema);
        // The claim, in one statement (see the crate docs, "Outbox"):
        //
        // * `claims`: the first `$2` claimable heads in `seq` order (pending, not
        //   leased, due, under the attempt limit, and first pending message of their
        //   (destination, stream) in the statement's snapshot), locked. A row another
        //   transaction holds is skipped; a row changed by one that committed since
        //   the snapshot is re-checked on its latest version (READ COMMITTED), so a
        //   message leased, acknowledged or failed meanwhile is not taken.
        // * `expired`: the heads due again after their last attempt that come before
        //   the `$2`-th claim (all of them when there are fewer claims), locked the
        //   same way; `dead` moves them to the dead-letter queue.
        // * the UPDATE leases the claims, counting an attempt.
        let claim = format!(
            "WITH claims AS (\
               SELECT o.seq FROM {{schema}}.outbox o \
               WHERE o.status = 'pending' AND o.attempts < $4 AND {AVAILABLE} AND {{is_head}} \
               ORDER BY o.seq LIMIT $2 \
               FOR NO KEY UPDATE OF o SKIP LOCKED), \
             bound AS (\
               SELECT CASE WHEN count(*) >= $2 THEN max(seq) ELSE 9223372036854775807 END AS seq \
               FROM claims), \
             expired AS (\
               SELECT o.seq FROM {{schema}}.outbox o \
               WHERE o.status = 'pending' AND o.attempts >= $4 AND {AVAILABLE} \
                 AND o.seq < (SELECT seq FROM bound) AND {{is_head}} \
               FOR NO KEY UPDATE OF o SKIP LOCKED), \
             dead AS (\
               UPDATE {{schema}}.outbox o SET status = 'dead', lease_owner = NULL, \
                 lease_until = NULL, finished_at = statement_timestamp(), \
                 last_error = COALESCE(o.last_error, '{LEASE_EXPIRED}') \
               WHERE o.seq = ANY(ARRAY(SELECT seq FROM expired))) \
             UPDATE {{schema}}.outbox o SET attempts = o.attempts + 1, lease_owner = $1, \
               lease_until = {lease} \
             WHERE o.seq = ANY(ARRAY(SELECT seq FROM claims)) \
             RETURNING {returning}, o.attempts",
            lease = later("statement_timestamp()", 3),
            returning = qualified(MESSAGE_COLUMNS, "o"),
        );
        // The first message with id `$id` that `$owner` holds (`held_by` of the memory
        // store); the outer WHERE re-checks it on the latest version of the row.
        let held = |id: u8, owner: u8| {
            format!(
                "seq = (SELECT seq FROM {{schema}}.outbox \
                   WHERE id = ${id} AND status = 'pending' AND lease_owner = ${owner} \
                   ORDER BY seq LIMIT 1) \
                 AND status = 'pending' AND lease_owner = ${owner}"
            )
        };
        Statements {
            claim: st(&claim),
            quarantine: st(
                "UPDATE {schema}.outbox SET status = 'dead', lease_owner = NULL, \
                   lease_until = NULL, finished_at = statement_timestamp(), last_error = $2 \
                 WHERE seq = $1",
            ),
            // An id given k times marks the first k messages with that id the owner
            // holds, as the memory store's loop over the ids does.
            ack: st("WITH held AS (\
                   SELECT o.seq, row_number() OVER (PARTITION BY o.id ORDER BY o.seq) AS rn, \
                     (SELECT count(*) FROM unnest($2::uuid[]) AS w(id) WHERE w.id = o.id) AS k \
                   FROM {schema}.outbox o \
                   WHERE o.id = ANY($2::uuid[]) AND o.status = 'pending' AND o.lease_owner = $1) \
                 UPDATE {schema}.outbox o SET status = 'delivered', lease_owner = NULL, \
                   lease_until = NULL, finished_at = statement_timestamp() \
                 WHERE o.seq = ANY(ARRAY(SELECT seq FROM held WHERE rn <= k)) \
                   AND o.status = 'pending' AND o.lease_owner = $1"),
            retry: st(&format!(
                "UPDATE {{schema}}.outbox SET lease_owner = NULL, lease_until = NULL, \
                   last_error = $3, next_attempt_at = {due} \
                 WHERE {held}",
                due = later("statement_timestamp()", 4),
                held = held(1, 2),
            )),
            give_up: st(&format!(
                "UPDATE {{schema}}.outbox SET lease_owner = NULL, lease_until = NULL, \
                   last_error = $3, status = 'dead', finished_at = statement_timestamp() \
                 WHERE {held}",
                held = held(1, 2),
            )),
            dead_letters: st(&format!(
                "SELECT {MESSAGE_COLUMNS}, attempts, last_error, finished_at \
                 FROM {{schema}}.outbox WHERE status = 'dead' ORDER BY seq LIMIT $1"
            )),
            replay_all: st(
                "UPDATE {schema}.outbox SET status = 'pending', attempts = 0, \
                   next_attempt_at = statement_timestamp(), lease_owner = NULL, \
                   lease_until = NULL, finished_at = NULL \
                 WHERE status = 'dead'",
            ),
            replay_one: st(
                "UPDATE {schema}.outbox SET status = 'pending', attempts = 0, \
                   next_attempt_at = statement_timestamp(), lease_owner = NULL, \
                   lease_until = NULL, finished_at = NULL \
                 WHERE id = $1 AND status = 'dead'",
            ),
            purge_dead_all: st("DELETE FROM {schema}.outbox WHERE status = 'dead'"),
            purge_dead_one: st("DELETE FROM {schema}.outbox WHERE id = $1 AND status = 'dead'"),
            purge_delivered: st(&format!(
                "DELETE FROM {{schema}}.outbox WHERE seq = ANY(ARRAY(\
                   SELECT seq FROM {{schema}}.outbox \
                   WHERE status = 'delivered' AND finished_at <= {cutoff} \
                   LIMIT $2))",
                // `later` of a negative delay: the server's clock minus the retention.
                cutoff = later("statement_timestamp()", 1),
            )),
            status: st("SELECT status, attempts FROM {schema}.outbox \
                 WHERE id = $1 ORDER BY seq LIMIT 1"),
            counts: st("SELECT \
                   (SELECT count(*) FROM {schema}.outbox WHERE status = 'pending'), \
                   (SELECT count(*) FROM {schema}.outbox WHERE status = 'delivered'), \
                   (SELECT count(*) FROM {schema}.outbox WHERE status = 'dead')"),
        }
    }
}

/// `columns`, each qualified with `alias`.
fn qualified(columns: &str, alias: &str) -> String {
    columns
        .split(',')
        .map(|c| format!("{alias}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Text PostgreSQL can store: NUL characters (which `text` cannot hold) become U+FFFD.
fn storable_text(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        std::borrow::Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

impl PgOutboxStore {
    /// The outbox messages kept in `store`'s schema, on `store`'s pool (the same as
    /// [`PgEventStore::outbox_store`]).
    pub fn new(store: &PgEventStore) -> Self {
        PgOutboxStore {
            sql: Arc::new(Statements::new(store)),
            store: store.clone(),
        }
    }

    /// The event store whose schema and pool this store uses.
    pub fn store(&self) -> &PgEventStore {
        &self.store
    }

    fn pool(&self) -> &PgPool {
        self.store.pool()
    }

    fn map(&self, e: sqlx::Error) -> Error {
        self.store.map_err(e)
    }

    async fn claim_messages(
        &self,
        owner: &str,
        limit: usize,
        lease: Duration,
        max_attempts: u32,
    ) -> Result<Vec<Claimed>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        if owner.contains('\0') {
            return Err(Error::InvalidArgument(format!(
                "the owner name {:?} contains a NUL character, which PostgreSQL cannot store",
                clip(owner)
            )));
        }
        let max_attempts = i32::try_from(max_attempts.max(1)).unwrap_or(i32::MAX);
        // READ COMMITTED whatever the server's default, since the statement relies on
        // its re-check of rows changed meanwhile; no JIT, since the planner's estimate
        // for the walk (which stops at the limit) can exceed `jit_above_cost`, and
        // compiling would cost more than the whole claim.
        let mut tx = self
            .pool()
            .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL jit = off")
            .await
            .map_err(|e| self.map(e))?;
        let rows = sqlx::query(self.sql.claim.sql())
            .bind(owner)
            .bind(limit_i64(limit))
            .bind(ttl_micros(lease))
            .bind(max_attempts)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| self.map(e))?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            let seq = seq_of(row)?;
            let read = read_message(row).and_then(|message| {
                let attempt = attempts(row, MESSAGE_COLUMN_COUNT, seq)?;
                Ok(Claimed { message, attempt })
            });
            match read {
                Ok(c) => claimed.push((seq, c)),
                Err(e) => {
                    // A row damaged outside the crate can never be delivered: it goes
                    // to the dead-letter queue, saying why, and the others are claimed.
                    tracing::warn!(seq, error = %e, "outbox message moved to the dead-letter queue: it cannot be read");
                    sqlx::query(self.sql.quarantine.sql())
                        .bind(seq)
                        .bind(storable_text(&e.to_string()).as_ref())
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| self.map(e))?;
                }
            }
        }
        tx.commit().await.map_err(|e| self.map(e))?;
        claimed.sort_unstable_by_key(|(seq, _)| *seq);
        Ok(claimed.into_iter().map(|(_, c)| c).collect())
    }

    async fn ack_messages(&self, owner: &str, ids: &[Uuid]) -> Result<()> {
        if ids.is_empty() || owner.contains('\0') {
            // Nothing to mark; a name with a NUL never held anything.
            return Ok(());
        }
        sqlx::query(self.sql.ack.sql())
            .bind(owner)
            .bind(ids)
            .execute(self.pool())
            .await
            .map_err(|e| self.map(e))?;
        Ok(())
    }

    async fn fail_message(
        &self,
        owner: &str,
        id: Uuid,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
    ) -> Result<()> {
        if owner.contains('\0') {
            return Ok(());
        }
        let error = storable_text(error);
        let q = match retry_at {
            Some(at) => {
                // The caller's clock says how long to wait; the server's says from when.
                let delay = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                sqlx::query(self.sql.retry.sql())
                    .bind(id)
                    .bind(owner)
                    .bind(error.as_ref())
                    .bind(ttl_micros(delay))
            }
            None => sqlx::query(self.sql.give_up.sql())
                .bind(id)
                .bind(owner)
                .bind(error.as_ref()),
        };
        q.execute(self.pool()).await.map_err(|e| self.map(e))?;
        Ok(())
    }

    async fn read_dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(self.sql.dead_letters.sql())
            .bind(limit_i64(limit))
            .fetch_all(self.pool())
            .await
            .map_err(|e| self.map(e))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let seq = seq_of(row)?;
            let message = read_message(row)?;
            let attempts = attempts(row, MESSAGE_COLUMN_COUNT, seq)?;
            let last_error: Option<String> = row
                .try_get(MESSAGE_COLUMN_COUNT + 1)
                .map_err(|e| corrupt(seq, format_args!("last_error: {e}")))?;
            let failed_at = read_opt_time(row, MESSAGE_COLUMN_COUNT + 2)
                .map_err(|e| corrupt(seq, format_args!("finished_at: {e}")))?;
            out.push(DeadLetter {
                message,
                attempts,
                last_error: last_error.unwrap_or_default(),
                failed_at: failed_at.unwrap_or_default(),
            });
        }
        Ok(out)
    }

    async fn replay_messages(&self, id: Option<Uuid>) -> Result<u64> {
        let done = match id {
            Some(id) => sqlx::query(self.sql.replay_one.sql()).bind(id),
            None => sqlx::query(self.sql.replay_all.sql()),
        }
        .execute(self.pool())
        .await
        .map_err(|e| self.map(e))?;
        Ok(done.rows_affected())
    }

    async fn purge_dead_messages(&self, id: Option<Uuid>) -> Result<u64> {
        let done = match id {
            Some(id) => sqlx::query(self.sql.purge_dead_one.sql()).bind(id),
            None => sqlx::query(self.sql.purge_dead_all.sql()),
        }
        .execute(self.pool())
        .await
        .map_err(|e| self.map(e))?;
        Ok(done.rows_affected())
    }

    async fn purge_delivered_messages(&self, older_than: Duration) -> Result<u64> {
        // Rounded up: only messages delivered at least `older_than` ago go.
        let micros = older_than.as_nanos().div_ceil(1000);
        if micros > MAX_RETENTION_MICROS {
            return Ok(0);
        }
        let Ok(micros) = i64::try_from(micros) else {
            return Ok(0);
        };
        let mut total = 0;
        loop {
            let done = sqlx::query(self.sql.purge_delivered.sql())
                .bind(-micros)
                .bind(PURGE_BATCH)
                .execute(self.pool())
                .await
                .map_err(|e| self.map(e))?;
            total += done.rows_affected();
            if done.rows_affected() < PURGE_BATCH as u64 {
                return Ok(total);
            }
        }
    }

    async fn read_status(&self, id: Uuid) -> Result<Option<(MessageStatus, u32)>> {
        let row = sqlx::query(self.sql.status.sql())
            .bind(id)
            .fetch_optional(self.pool())
            .await
            .map_err(|e| self.map(e))?;
        let Some(row) = row else { return Ok(None) };
        let bad = |what: String| -> Error {
            PgStoreError::Corrupt {
                what: "outbox",
                detail: format!("outbox message {id} is corrupt: {what}"),
            }
            .into()
        };
        let status: String = row.try_get(0).map_err(|e| bad(format!("status: {e}")))?;
        let attempts: i32 = row.try_get(1).map_err(|e| bad(format!("attempts: {e}")))?;
        let attempts = u32::try_from(attempts).map_err(|_| bad(format!("attempts {attempts}")))?;
        let status = parse_status(&status).ok_or_else(|| bad(format!("status {status:?}")))?;
        Ok(Some((status, attempts)))
    }

    async fn read_counts(&self) -> Result<OutboxCounts> {
        let row = sqlx::query(self.sql.counts.sql())
            .fetch_one(self.pool())
            .await
            .map_err(|e| self.map(e))?;
        let n = |i: usize| -> Result<u64> {
            let v: i64 = row.try_get(i).map_err(|e| self.map(e))?;
            Ok(u64::try_from(v).unwrap_or(0))
        };
        Ok(OutboxCounts {
            pending: n(0)?,
            delivered: n(1)?,
            dead: n(2)?,
        })
    }
}

fn parse_status(s: &str) -> Option<MessageStatus> {
    match s {
        "pending" => Some(MessageStatus::Pending),
        "delivered" => Some(MessageStatus::Delivered),
        "dead" => Some(MessageStatus::Dead),
        _ => None,
    }
}

/// A non-transient [`Error::Backend`] for a row that cannot be read back.
fn corrupt(seq: i64, what: impl fmt::Display) -> Error {
    PgStoreError::Corrupt {
        what: "outbox",
        detail: format!("outbox message (seq {seq}) is corrupt: {what}"),
    }
    .into()
}

/// The `seq` in column 0.
fn seq_of(row: &PgRow) -> Result<i64> {
    row.try_get(0).map_err(|e| {
        PgStoreError::Corrupt {
            what: "outbox",
            detail: format!("an outbox message has an unreadable seq: {e}"),
        }
        .into()
    })
}

fn attempts(row: &PgRow, idx: usize, seq: i64) -> Result<u32> {
    let v: i32 = row
        .try_get(idx)
        .map_err(|e| corrupt(seq, format_args!("attempts: {e}")))?;
    u32::try_from(v).map_err(|_| corrupt(seq, format_args!("attempts is negative ({v})")))
}

/// Reads the [`MESSAGE_COLUMNS`].
fn read_message(row: &PgRow) -> Result<OutboxMessage> {
    let seq = seq_of(row)?;
    let bad = |name: &str, e: &dyn fmt::Display| corrupt(seq, format_args!("{name}: {e}"));
    let id: Uuid = row.try_get(1).map_err(|e| bad("id", &e))?;
    let destination: String = row.try_get(2).map_err(|e| bad("destination", &e))?;
    let stream: &str = row.try_get(3).map_err(|e| bad("stream_id", &e))?;
    let stream_id = StreamId::new(stream).map_err(|e| bad("stream_id", &e))?;
    let event_id: Uuid = row.try_get(4).map_err(|e| bad("event_id", &e))?;
    let event_type: String = row.try_get(5).map_err(|e| bad("event_type", &e))?;
    let version: i64 = row.try_get(6).map_err(|e| bad("stream_version", &e))?;
    let stream_version = u64::try_from(version).map_err(|e| bad("stream_version", &e))?;
    let tx: Xid8 = row.try_get_unchecked(7).map_err(|e| bad("tx", &e))?;
    let position: i64 = row.try_get(8).map_err(|e| bad("position", &e))?;
    if position < 0 {
        return Err(bad("position", &"it is negative"));
    }
    let codec: &str = row.try_get(9).map_err(|e| bad("codec", &e))?;
    let codec = if codec == "json" {
        CodecTag::JSON
    } else {
        CodecTag::from(codec.to_owned())
    };
    let payload: Vec<u8> = row.try_get(10).map_err(|e| bad("payload", &e))?;
    let metadata: Option<Json<Metadata>> = row.try_get(11).map_err(|e| bad("metadata", &e))?;
    let created_at = read_time(row, 12).map_err(|e| bad("created_at", &e))?;
    Ok(OutboxMessage {
        id,
        destination,
        stream_id,
        event_id: EventId::from_uuid(event_id),
        event_type,
        stream_version,
        position: position_of(tx, position),
        payload: Bytes::from(payload),
        codec,
        metadata: metadata.map(|m| m.0).unwrap_or_default(),
        created_at,
    })
}

impl OutboxStore for PgOutboxStore {
    fn claim<'a>(
        &'a self,
        owner: &'a str,
        limit: usize,
        lease: Duration,
        max_attempts: u32,
    ) -> BoxFuture<'a, Result<Vec<Claimed>>> {
        Box::pin(async move {
            self.claim_messages(owner, limit, lease, max_attempts)
                .await
                .map_err(|e| {
                    context(e, || {
                        format!("cannot claim outbox messages for {:?}", clip(owner))
                    })
                })
        })
    }

    fn ack<'a>(&'a self, owner: &'a str, ids: &'a [Uuid]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let res = self.ack_messages(owner, ids).await.map_err(|e| {
                context(e, || {
                    format!("cannot acknowledge {} outbox messages", ids.len())
                })
            });
            // Later messages of those streams may be deliverable now.
            self.store.outbox_notifier().notify();
            res
        })
    }

    fn fail<'a>(
        &'a self,
        owner: &'a str,
        id: Uuid,
        error: &'a str,
        retry_at: Option<DateTime<Utc>>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let res = self
                .fail_message(owner, id, error, retry_at)
                .await
                .map_err(|e| {
                    context(e, || {
                        format!("cannot record the failure of outbox message {id}")
                    })
                });
            self.store.outbox_notifier().notify();
            res
        })
    }

    fn dead_letters(&self, limit: usize) -> BoxFuture<'_, Result<Vec<DeadLetter>>> {
        Box::pin(async move {
            self.read_dead_letters(limit)
                .await
                .map_err(|e| context(e, || "cannot read the outbox dead letters".to_owned()))
        })
    }

    fn replay(&self, id: Option<Uuid>) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let n = self
                .replay_messages(id)
                .await
                .map_err(|e| context(e, || "cannot replay outbox dead letters".to_owned()))?;
            if n > 0 {
                // Processors of every process: the replay may come from a tool.
                self.store.announce_outbox();
            }
            Ok(n)
        })
    }

    fn purge_dead(&self, id: Option<Uuid>) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            self.purge_dead_messages(id)
                .await
                .map_err(|e| context(e, || "cannot purge outbox dead letters".to_owned()))
        })
    }

    fn purge_delivered(&self, older_than: Duration) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            self.purge_delivered_messages(older_than)
                .await
                .map_err(|e| context(e, || "cannot purge delivered outbox messages".to_owned()))
        })
    }

    fn status(&self, id: Uuid) -> BoxFuture<'_, Result<Option<(MessageStatus, u32)>>> {
        Box::pin(async move {
            self.read_status(id)
                .await
                .map_err(|e| context(e, || format!("cannot read outbox message {id}")))
        })
    }

    fn counts(&self) -> BoxFuture<'_, Result<OutboxCounts>> {
        Box::pin(async move {
            self.read_counts()
                .await
                .map_err(|e| context(e, || "cannot count outbox messages".to_owned()))
        })
    }

    fn signal(&self) -> FeedSignal {
        self.store.outbox_signal()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_qualified_and_counted() {
        assert_eq!(
            MESSAGE_COLUMNS.split(',').count(),
            MESSAGE_COLUMN_COUNT,
            "MESSAGE_COLUMN_COUNT"
        );
        assert_eq!(qualified("a, b,c", "o"), "o.a, o.b, o.c");
    }

    #[test]
    fn text_postgres_cannot_hold_is_made_storable() {
        assert_eq!(storable_text("fine"), "fine");
        assert_eq!(storable_text("a\0b"), "a\u{FFFD}b");
    }

    #[test]
    fn the_longest_retention_stays_inside_postgres_range() {
        // The server's clock minus the longest retention is after 4714 BC.
        const {
            assert!(MAX_RETENTION_MICROS < crate::time::FOREVER_MICROS);
        }
        let years = MAX_RETENTION_MICROS / (365 * 24 * 3_600 * 1_000_000);
        assert!(2026 - (years as i64) > -4713);
    }
}
