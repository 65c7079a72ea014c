//! [`PgOutboxStore`]: outbox messages in the `outbox` table, written by the appends of a
//! store built with [`PgEventStoreBuilder::outbox`](crate::PgEventStoreBuilder::outbox).

use std::collections::BTreeMap;
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
use sqlx::{PgConnection, PgPool, Row};
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
/// * Each (destination, stream) has a **head**, its row in `outbox_heads` (migration 5):
///   the oldest of its pending messages, or a message finished since (acknowledged,
///   dead-lettered) until it is repaired. Dead letters hold back nothing: the head moves
///   past them, and a replayed one older than its stream's head becomes the head again.
///   Appends set the head of a stream that has none; acknowledgements and failures move
///   it on; whatever cannot move it at once (its row is held by an append not yet
///   committed) lists the stream in `outbox_stale` for the next claim. One row per
///   stream cannot name two heads, and its lock keeps a stream from losing its head
///   (an append holds it until it commits, and a repair decides once it holds it).
/// * [`claim`](OutboxStore::claim) runs in a `READ COMMITTED` transaction of its own,
///   without JIT (see the [crate docs](crate#outbox)): it repairs the listed heads, then
///   walks the heads in `seq` (writing) order and takes the first `limit` that are not
///   leased and are due, so a claim reads what it takes plus the heads it passes
///   (leased or waiting for a retry), never the messages queued behind them. A head
///   that is leased, not yet due, or past this round's `limit` holds back the later
///   messages of its stream. Each claim counts as an attempt; a head due again after
///   its `max_attempts`-th attempt (its lease expired) is moved to the dead-letter queue
///   instead (and its room is filled from the heads after it). Rows are locked with
///   `FOR NO KEY UPDATE SKIP LOCKED` (the row lock an `UPDATE` takes), so concurrent
///   claims, from any number of processes, never take the same message: a message
///   another claim is taking is skipped (and holds back its stream), and one it took is
///   leased when this claim re-reads it.
/// * [`ack`](OutboxStore::ack) and [`fail`](OutboxStore::fail) act only on messages the
///   caller still holds (pending and leased to it; an expired lease nobody took over
///   still counts). An acknowledgement, or a failure without retry, is one statement,
///   then the repair of its streams' heads, in one transaction; a retry is one
///   statement.
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
    /// Locks (skipping those another transaction holds) the `outbox_heads` rows of the
    /// streams listed in `outbox_stale`, and deletes their entries. Returns them:
    /// (destination, stream_id).
    stale: Stmt,
    /// $1 destinations, $2 stream ids, whose `outbox_heads` rows the transaction holds:
    /// moves each one's head to its oldest pending message (none: NULL).
    repair: Stmt,
    /// The same, after a replay (the oldest pending message may come before the head).
    repair_all: Stmt,
    /// $1 owner, $2 limit, $3 lease (µs, NULL: forever), $4 attempt limit, $5 `seq`s
    /// to pass over. Returns the claimed messages ([`MESSAGE_COLUMNS`], then
    /// `attempts`), then how many heads it dead-lettered; one row of NULLs and that
    /// count when it claimed none.
    claim: Stmt,
    /// $1 seq, $2 why: a claimed message that cannot be read, to the dead letters.
    quarantine: Stmt,
    /// $1 owner, $2 ids. Returns the streams to repair (see [`FINISHED`]).
    ack: Stmt,
    /// $1 id, $2 owner, $3 error, $4 delay (µs, NULL: forever).
    retry: Stmt,
    /// $1 id, $2 owner, $3 error. Returns the streams to repair (see [`FINISHED`]).
    give_up: Stmt,
    /// $1 limit.
    dead_letters: Stmt,
    /// The dead letters' `seq`, destination and stream_id.
    dead_all: Stmt,
    /// $1 id: the same, for the dead letters with that id.
    dead_one: Stmt,
    /// $1 destinations, $2 stream ids: locks their `outbox_heads` rows, skipping those
    /// another transaction holds. Returns the streams locked.
    lock_heads: Stmt,
    /// $1 destination, $2 stream id: locks its `outbox_heads` row, waiting for it.
    lock_head: Stmt,
    /// $1 seqs: back in line, those still dead.
    replay: Stmt,
    purge_dead_all: Stmt,
    /// $1 id.
    purge_dead_one: Stmt,
    /// $1 retention (µs), $2 batch size.
    purge_delivered: Stmt,
    /// $1 id.
    status: Stmt,
    counts: Stmt,
}

/// Lists the streams of the messages a data-modifying CTE `done` (returning their
/// `destination` and `stream_id`) finished: their heads may be stale now, and the next
/// claim repairs them.
const LIST_STALE: &str = "INSERT INTO {schema}.outbox_stale (destination, stream_id) \
     SELECT DISTINCT destination, stream_id FROM done";

/// The end of a statement that finished messages (`done`, as for [`LIST_STALE`]) and
/// repairs their streams' heads itself, in the next statement of its transaction:
/// locks their rows in `outbox_heads` and returns them; those another transaction
/// holds (an append not yet committed, a repair) are listed for a later claim instead.
/// It never waits for a row of `outbox_heads`.
const FINISHED: &str = "g AS (SELECT DISTINCT destination, stream_id FROM done), \
     l AS (SELECT h.destination, h.stream_id FROM {schema}.outbox_heads h \
       JOIN g ON h.destination = g.destination AND h.stream_id = g.stream_id \
       FOR NO KEY UPDATE OF h SKIP LOCKED), \
     listed AS (INSERT INTO {schema}.outbox_stale (destination, stream_id) \
       SELECT destination, stream_id FROM g EXCEPT SELECT destination, stream_id FROM l) \
     SELECT destination, stream_id FROM l";

// Why a stream never ends up without a head (a pending message no claim can reach):
//
// * `outbox_heads.seq` is NULL only when the stream has no pending message. Appends
//   lock their streams' rows (`schema::OUTBOX_HEADS`) and set a NULL head on the row's
//   latest version, and hold the lock until they commit or roll back.
// * A repair (after an acknowledgement or failure, by a claim for a listed stream, by a
//   replay) first locks the row (skipping a held one and listing the stream instead),
//   then, in a later statement whose snapshot shows every append that committed before
//   the lock, moves the head to the oldest pending message. No append of the stream is
//   in flight meanwhile, so "none" is right.
// * Whatever finishes a message takes no lock: the head it leaves behind is stale (at
//   most the oldest pending message, so still in order), and the finishing statement
//   either repairs the stream in its transaction or lists it in `outbox_stale`, which
//   every claim repairs first. A repair that picks a message being finished at the same
//   time leaves it stale the same way: that message's finisher repairs or lists it.
// * Messages only become pending again by a replay, which locks the rows (waiting) and
//   repairs, so an older replayed message becomes the head.
impl Statements {
    fn new(store: &PgEventStore) -> Self {
        let schema = store.schema();
        let st = |sql: &str| Stmt::new(sql, schema);
        // The claim's statement (see the crate docs, "Outbox"), run after the repair
        // of the listed stale heads, in the same transaction:
        //
        // * `cand`: the first `$2` available heads in `seq` order (the messages
        //   `outbox_heads` names that are pending, not leased and due), locked. The walk
        //   reads only heads: those it takes, and those it passes (leased, not due, or
        //   stale: finished since the last repair). A row another transaction holds is
        //   skipped; a row changed by one that committed since the snapshot is
        //   re-checked on its latest version (READ COMMITTED), so a message leased,
        //   acknowledged or failed meanwhile is not taken. The join's `+ 0` keeps the
        //   planner from walking the outbox in `seq` order instead of the heads.
        // * `done`: those due again after their last attempt (`over`) go to the
        //   dead-letter queue, and their streams are listed for the next repair; the
        //   caller then claims again for the room they took (passing over `$5`, what it
        //   claimed already), as a walk that skipped them would have gone on.
        // * `claimed`: the others are leased, counting an attempt.
        let claim = format!(
            "WITH cand AS (\
               SELECT o.seq, o.attempts >= $4 AS over FROM {{schema}}.outbox_heads h \
               JOIN {{schema}}.outbox o ON o.seq = h.seq + 0 \
               WHERE h.seq IS NOT NULL AND o.status = 'pending' AND {AVAILABLE} \
                 AND o.seq <> ALL($5::int8[]) \
               ORDER BY h.seq LIMIT $2 \
               FOR NO KEY UPDATE OF o SKIP LOCKED), \
             done AS (\
               UPDATE {{schema}}.outbox o SET status = 'dead', lease_owner = NULL, \
                 lease_until = NULL, finished_at = statement_timestamp(), \
                 last_error = COALESCE(o.last_error, '{LEASE_EXPIRED}') \
               WHERE o.seq = ANY(ARRAY(SELECT seq FROM cand WHERE over)) \
               RETURNING o.destination, o.stream_id), \
             listed AS ({LIST_STALE}), \
             claimed AS (\
               UPDATE {{schema}}.outbox o SET attempts = o.attempts + 1, lease_owner = $1, \
                 lease_until = {lease} \
               WHERE o.seq = ANY(ARRAY(SELECT seq FROM cand WHERE NOT over)) \
               RETURNING {returning}, o.attempts) \
             SELECT c.*, k.n FROM (SELECT count(*) AS n FROM done) k \
             LEFT JOIN claimed c ON true",
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
        // The streams to repair, locked, and their entries in `outbox_stale` deleted.
        // `SKIP LOCKED`: a stream whose row is held (by an append not yet committed, or
        // by another claim's repair) keeps its entries for a later claim.
        let stale = "WITH q AS (SELECT DISTINCT destination, stream_id FROM {schema}.outbox_stale), \
             l AS (SELECT h.destination, h.stream_id FROM {schema}.outbox_heads h \
               JOIN q ON h.destination = q.destination AND h.stream_id = q.stream_id \
               FOR NO KEY UPDATE OF h SKIP LOCKED), \
             gone AS (DELETE FROM {schema}.outbox_stale s USING l \
               WHERE s.destination = l.destination AND s.stream_id = l.stream_id) \
             SELECT destination, stream_id FROM l";
        // The repair of streams whose `outbox_heads` rows the transaction holds, in a
        // statement of its own: its snapshot, taken once the rows were locked, shows
        // every message written to those streams (a write takes the row first, see
        // `schema::OUTBOX_HEADS`, and holds it until it commits), so the oldest pending
        // message is the head, or stale (finished meanwhile, which takes no lock, and
        // lists the stream for a later repair). A head is never after the oldest
        // pending message, so the search starts at it (`{from}`), past the index
        // entries of the stream's finished messages; except after a replay, which puts
        // older messages back.
        let repair = |from: &str| {
            format!(
                "WITH n AS MATERIALIZED (SELECT h.destination, h.stream_id, \
                   (SELECT min(p.seq) FROM {{schema}}.outbox p WHERE p.status = 'pending' \
                     AND p.destination = h.destination AND p.stream_id = h.stream_id{from}) \
                     AS new \
                   FROM {{schema}}.outbox_heads h \
                   JOIN (SELECT DISTINCT d, s FROM unnest($1::text[], $2::text[]) AS g(d, s)) g \
                     ON h.destination = g.d AND h.stream_id = g.s) \
                 UPDATE {{schema}}.outbox_heads h SET seq = n.new FROM n \
                 WHERE h.destination = n.destination AND h.stream_id = n.stream_id \
                   AND h.seq IS DISTINCT FROM n.new"
            )
        };
        let dead = |filter: &str| {
            format!(
                "SELECT seq, destination, stream_id FROM {{schema}}.outbox \
                 WHERE status = 'dead'{filter} ORDER BY seq"
            )
        };
        Statements {
            stale: st(stale),
            repair: st(&repair(" AND p.seq >= COALESCE(h.seq, 0)")),
            repair_all: st(&repair("")),
            claim: st(&claim),
            quarantine: st(&format!(
                "WITH done AS (UPDATE {{schema}}.outbox SET status = 'dead', lease_owner = NULL, \
                   lease_until = NULL, finished_at = statement_timestamp(), last_error = $2 \
                 WHERE seq = $1 RETURNING destination, stream_id) {LIST_STALE}"
            )),
            // An id given k times marks the first k messages with that id the owner
            // holds, as the memory store's loop over the ids does.
            ack: st(&format!(
                "WITH want AS (SELECT id, count(*) AS k FROM unnest($2::uuid[]) AS w(id) \
                   GROUP BY id), \
                 held AS (\
                   SELECT o.seq, row_number() OVER (PARTITION BY o.id ORDER BY o.seq) AS rn, w.k \
                   FROM want w JOIN {{schema}}.outbox o ON o.id = w.id \
                   WHERE o.status = 'pending' AND o.lease_owner = $1), \
                 done AS (UPDATE {{schema}}.outbox o SET status = 'delivered', lease_owner = NULL, \
                   lease_until = NULL, finished_at = statement_timestamp() \
                 WHERE o.seq = ANY(ARRAY(SELECT seq FROM held WHERE rn <= k)) \
                   AND o.status = 'pending' AND o.lease_owner = $1 \
                 RETURNING o.destination, o.stream_id), {FINISHED}"
            )),
            retry: st(&format!(
                "UPDATE {{schema}}.outbox SET lease_owner = NULL, lease_until = NULL, \
                   last_error = $3, next_attempt_at = {due} \
                 WHERE {held}",
                due = later("statement_timestamp()", 4),
                held = held(1, 2),
            )),
            give_up: st(&format!(
                "WITH done AS (UPDATE {{schema}}.outbox SET lease_owner = NULL, \
                   lease_until = NULL, last_error = $3, status = 'dead', \
                   finished_at = statement_timestamp() \
                 WHERE {held} RETURNING destination, stream_id), {FINISHED}",
                held = held(1, 2),
            )),
            dead_letters: st(&format!(
                "SELECT {MESSAGE_COLUMNS}, attempts, last_error, finished_at \
                 FROM {{schema}}.outbox WHERE status = 'dead' ORDER BY seq LIMIT $1"
            )),
            dead_all: st(&dead("")),
            dead_one: st(&dead(" AND id = $1")),
            lock_heads: st(
                "SELECT h.destination, h.stream_id FROM {schema}.outbox_heads h \
                 JOIN (SELECT DISTINCT d, s FROM unnest($1::text[], $2::text[]) AS g(d, s)) g \
                   ON h.destination = g.d AND h.stream_id = g.s \
                 FOR NO KEY UPDATE OF h SKIP LOCKED",
            ),
            lock_head: st("SELECT 1 FROM {schema}.outbox_heads \
                 WHERE destination = $1 AND stream_id = $2 FOR NO KEY UPDATE"),
            replay: st(
                "UPDATE {schema}.outbox SET status = 'pending', attempts = 0, \
                   next_attempt_at = statement_timestamp(), lease_owner = NULL, \
                   lease_until = NULL, finished_at = NULL \
                 WHERE seq = ANY($1) AND status = 'dead'",
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
        // its re-check of rows changed meanwhile, and the repair on a snapshot per
        // statement; no JIT, since the planner's estimate for the walk (which stops at
        // the limit) can exceed `jit_above_cost`, and compiling would cost more than the
        // whole claim. No sequential or bitmap scan and no sort either: the planner
        // cannot know that the walk over the heads in `seq` order stops after about
        // `limit` of them, and may prefer reading every head and sorting.
        let mut tx = self
            .pool()
            .begin_with(
                "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL jit = off; \
                 SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off; \
                 SET LOCAL enable_sort = off",
            )
            .await
            .map_err(|e| self.map(e))?;
        self.repair_stale(&mut tx).await?;
        let mut claimed = Vec::with_capacity(limit.min(1024));
        // Seqs claimed by the earlier rounds of this claim.
        let mut taken: Vec<i64> = Vec::new();
        loop {
            let room = limit - taken.len();
            let rows = sqlx::query(self.sql.claim.sql())
                .bind(owner)
                .bind(limit_i64(room))
                .bind(ttl_micros(lease))
                .bind(max_attempts)
                .bind(&taken)
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| self.map(e))?;
            let mut dead_lettered = 0;
            for row in &rows {
                dead_lettered = row
                    .try_get::<i64, _>(MESSAGE_COLUMN_COUNT + 1)
                    .map_err(|e| self.map(e))?;
                // The row of NULLs of a round that claimed nothing.
                let Some(seq) = row.try_get::<Option<i64>, _>(0).ok().flatten() else {
                    continue;
                };
                taken.push(seq);
                let read = read_message(row).and_then(|message| {
                    let attempt = attempts(row, MESSAGE_COLUMN_COUNT, seq)?;
                    Ok(Claimed { message, attempt })
                });
                match read {
                    Ok(c) => claimed.push((seq, c)),
                    Err(e) => {
                        // A row damaged outside the crate can never be delivered: it
                        // goes to the dead-letter queue, saying why, and the others are
                        // claimed.
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
            // Heads dead-lettered took room that later heads may fill: claim again,
            // past what this claim took (a walk that skipped them would have gone on).
            if dead_lettered == 0 || taken.len() >= limit {
                break;
            }
        }
        tx.commit().await.map_err(|e| self.map(e))?;
        claimed.sort_unstable_by_key(|(seq, _)| *seq);
        Ok(claimed.into_iter().map(|(_, c)| c).collect())
    }

    /// Runs `q`, a statement that finishes messages and ends with [`FINISHED`], then
    /// repairs the heads of the streams it locked, in one transaction.
    async fn finish(
        &self,
        q: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        let rows = q.fetch_all(&mut *tx).await.map_err(|e| self.map(e))?;
        self.repair_rows(&mut tx, &rows).await?;
        tx.commit().await.map_err(|e| self.map(e))?;
        Ok(())
    }

    async fn ack_messages(&self, owner: &str, ids: &[Uuid]) -> Result<()> {
        if ids.is_empty() || owner.contains('\0') {
            // Nothing to mark; a name with a NUL never held anything.
            return Ok(());
        }
        self.finish(sqlx::query(self.sql.ack.sql()).bind(owner).bind(ids))
            .await
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
        match retry_at {
            Some(at) => {
                // The caller's clock says how long to wait; the server's says from when.
                let delay = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                sqlx::query(self.sql.retry.sql())
                    .bind(id)
                    .bind(owner)
                    .bind(error.as_ref())
                    .bind(ttl_micros(delay))
                    .execute(self.pool())
                    .await
                    .map_err(|e| self.map(e))?;
                Ok(())
            }
            None => {
                self.finish(
                    sqlx::query(self.sql.give_up.sql())
                        .bind(id)
                        .bind(owner)
                        .bind(error.as_ref()),
                )
                .await
            }
        }
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
        // The dead letters to replay, and their streams.
        let rows = match id {
            Some(id) => sqlx::query(self.sql.dead_one.sql()).bind(id),
            None => sqlx::query(self.sql.dead_all.sql()),
        }
        .fetch_all(self.pool())
        .await
        .map_err(|e| self.map(e))?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut dead: BTreeMap<(String, String), Vec<i64>> = BTreeMap::new();
        for row in &rows {
            let seq: i64 = row.try_get(0).map_err(|e| self.map(e))?;
            let destination: String = row.try_get(1).map_err(|e| self.map(e))?;
            let stream: String = row.try_get(2).map_err(|e| self.map(e))?;
            dead.entry((destination, stream)).or_default().push(seq);
        }
        // Each stream's row in `outbox_heads` is locked before its letters go back in
        // line, so that no append or repair moves its head meanwhile, and the repair
        // sees every message written to it. First the streams nobody holds, in one
        // transaction that never waits for a row of `outbox_heads`; then the others
        // (held by an append not yet committed, or a claim's repair), one transaction
        // each, waiting for the one row: a transaction that holds several of these rows
        // never waits for another (an append in a caller's transaction may hold some
        // and wait for more), so replays never deadlock with appends.
        let (destinations, streams): (Vec<&str>, Vec<&str>) =
            dead.keys().map(|(d, s)| (d.as_str(), s.as_str())).unzip();
        let mut tx = self.begin().await?;
        let locked = sqlx::query(self.sql.lock_heads.sql())
            .bind(&destinations)
            .bind(&streams)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| self.map(e))?;
        let mut group = Vec::with_capacity(locked.len());
        for row in &locked {
            let destination: String = row.try_get(0).map_err(|e| self.map(e))?;
            let stream: String = row.try_get(1).map_err(|e| self.map(e))?;
            group.push((destination, stream));
        }
        let mut total = 0;
        let now: Vec<_> = group.iter().filter_map(|k| dead.remove_entry(k)).collect();
        if !now.is_empty() {
            total += self.replay_locked(&mut tx, &now).await?;
        }
        tx.commit().await.map_err(|e| self.map(e))?;
        for (key, seqs) in dead {
            let mut tx = self.begin().await?;
            sqlx::query(self.sql.lock_head.sql())
                .bind(&key.0)
                .bind(&key.1)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.map(e))?;
            total += self.replay_locked(&mut tx, &[(key, seqs)]).await?;
            tx.commit().await.map_err(|e| self.map(e))?;
        }
        Ok(total)
    }

    /// Puts the dead letters `seqs` (those still dead) of streams whose `outbox_heads`
    /// rows `tx` holds back in line, and repairs those streams' heads: a replayed
    /// message older than its stream's head becomes the head again.
    async fn replay_locked(
        &self,
        conn: &mut PgConnection,
        letters: &[((String, String), Vec<i64>)],
    ) -> Result<u64> {
        let seqs: Vec<i64> = letters
            .iter()
            .flat_map(|(_, s)| s.iter().copied())
            .collect();
        let done = sqlx::query(self.sql.replay.sql())
            .bind(&seqs)
            .execute(&mut *conn)
            .await
            .map_err(|e| self.map(e))?;
        let destinations: Vec<String> = letters.iter().map(|((d, _), _)| d.clone()).collect();
        let streams: Vec<String> = letters.iter().map(|((_, s), _)| s.clone()).collect();
        self.repair_with(&self.sql.repair_all, conn, &destinations, &streams)
            .await?;
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

    /// A `READ COMMITTED` transaction (whatever the server's default), in which each
    /// statement sees what committed before it started: a repair relies on it.
    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        self.pool()
            .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
            .await
            .map_err(|e| self.map(e))
    }

    /// Repairs the listed stale heads that no other transaction holds (see
    /// [`Statements::stale`]).
    async fn repair_stale(&self, conn: &mut PgConnection) -> Result<()> {
        let rows = sqlx::query(self.sql.stale.sql())
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| self.map(e))?;
        self.repair_rows(conn, &rows).await
    }

    /// Repairs the streams of `rows` (destination, stream_id), whose `outbox_heads` rows
    /// the transaction holds.
    async fn repair_rows(&self, conn: &mut PgConnection, rows: &[PgRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut destinations = Vec::with_capacity(rows.len());
        let mut streams = Vec::with_capacity(rows.len());
        for row in rows {
            destinations.push(row.try_get::<String, _>(0).map_err(|e| self.map(e))?);
            streams.push(row.try_get::<String, _>(1).map_err(|e| self.map(e))?);
        }
        self.repair(conn, &destinations, &streams).await
    }

    /// Moves the heads of the given streams, whose `outbox_heads` rows the transaction
    /// holds, to their oldest pending messages. A statement of its own, after the
    /// locks: see [`Statements::repair`].
    async fn repair(
        &self,
        conn: &mut PgConnection,
        destinations: &[String],
        streams: &[String],
    ) -> Result<()> {
        self.repair_with(&self.sql.repair, conn, destinations, streams)
            .await
    }

    /// [`repair`](Self::repair) with `stmt`: [`Statements::repair`] or
    /// [`Statements::repair_all`].
    async fn repair_with(
        &self,
        stmt: &Stmt,
        conn: &mut PgConnection,
        destinations: &[String],
        streams: &[String],
    ) -> Result<()> {
        sqlx::query(stmt.sql())
            .bind(destinations)
            .bind(streams)
            .execute(&mut *conn)
            .await
            .map_err(|e| self.map(e))?;
        Ok(())
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
