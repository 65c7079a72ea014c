//! [`SqliteOutboxStore`]: outbox messages in the `mink_outbox` table, written by the
//! appends of a store opened with [`SqliteStore::open_with_outbox`].

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use mink_es::outbox::store::OutboxCounts;
use mink_es::outbox::{Claimed, DeadLetter, MessageStatus, OutboxMessage, OutboxStore};
use mink_es::{
    CodecTag, Error, EventId, FeedSignal, Metadata, Position, Result, StoredEvent, StreamId, Uuid,
};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, Row, params};

use crate::SqliteStore;
use crate::command::{deadline, now_micros};
use crate::error::{backend_msg, context, map_err};
use crate::row::micros_to_time;
use crate::store::{WriteTx, payload_sql};

/// The future type of [`OutboxStore`] (`futures::future::BoxFuture`).
type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The columns [`read_message`] reads, in order, from index 0 (a macro, for `concat!`).
macro_rules! message_columns {
    () => {
        "seq, id, destination, stream_id, event_id, event_type, stream_version, position, \
         codec, payload, metadata, created_at"
    };
}

/// The number of columns of `message_columns!()`: the index of the first one after them.
const MESSAGE_COLUMN_COUNT: usize = 12;

/// The fewest queued messages (behind the head of their stream) a claim skips while
/// it walks the pending messages in `seq` order (at least four per message asked for)
/// before it finds the heads of the (destination, stream) pairs through their index
/// instead (see [`heads_by_walk`]).
const WALK_BUDGET: usize = 1024;

/// Delivered messages deleted per transaction by
/// [`purge_delivered`](OutboxStore::purge_delivered), so that appends are not held up
/// by a large purge.
const PURGE_BATCH: i64 = 1000;

// The statements name their index: SQLite's planner, without statistics, may prefer
// the `status` index with a sort, or a scan; `INDEXED BY` makes a statement that cannot
// use its index fail to prepare instead of running slowly (a test checks every plan).

/// The pending messages in `seq` order: the claim's walk.
const WALK_SQL: &str = "SELECT seq, destination, stream_id, attempts, lease_until, \
       next_attempt_at \
     FROM mink_outbox INDEXED BY mink_outbox_by_status \
     WHERE status = 'pending' ORDER BY seq";

/// The head of the first (destination, stream) with pending messages.
const FIRST_HEAD_SQL: &str = "SELECT destination, stream_id, seq \
     FROM mink_outbox INDEXED BY mink_outbox_pending_streams \
     WHERE status = 'pending' \
     ORDER BY destination, stream_id, seq LIMIT 1";

/// The head of the next stream of destination `?1` after stream `?2` with pending
/// messages. (Not a row value `(destination, stream_id) > (?1, ?2)`: SQLite seeks only
/// on its first column, and would scan every message of the destination.)
const NEXT_STREAM_SQL: &str = "SELECT destination, stream_id, seq \
     FROM mink_outbox INDEXED BY mink_outbox_pending_streams \
     WHERE status = 'pending' AND destination = ?1 AND stream_id > ?2 \
     ORDER BY destination, stream_id, seq LIMIT 1";

/// The head of the first stream of the next destination after `?1` with pending
/// messages.
const NEXT_DESTINATION_SQL: &str = "SELECT destination, stream_id, seq \
     FROM mink_outbox INDEXED BY mink_outbox_pending_streams \
     WHERE status = 'pending' AND destination > ?1 \
     ORDER BY destination, stream_id, seq LIMIT 1";

/// What a claim needs of one message.
const HEAD_SQL: &str = "SELECT seq, attempts, lease_until, next_attempt_at \
     FROM mink_outbox WHERE seq = ?1";

/// Moves a message whose lease expired after its last attempt to the dead letters.
const EXPIRE_SQL: &str = "UPDATE mink_outbox SET status = 'dead', lease_owner = NULL, \
       lease_until = NULL, finished_at = ?2, last_error = COALESCE(last_error, ?3) \
     WHERE seq = ?1";

/// Leases a message, counting an attempt, and returns it.
const CLAIM_SQL: &str = concat!(
    "UPDATE mink_outbox SET attempts = attempts + 1, lease_owner = ?2, lease_until = ?3 \
     WHERE seq = ?1 RETURNING ",
    message_columns!(),
    ", attempts"
);

/// The first message with id `?1` that `?2` holds (`held_by` of the memory store).
macro_rules! held {
    () => {
        "(SELECT seq FROM mink_outbox INDEXED BY mink_outbox_id \
          WHERE id = ?1 AND status = 'pending' AND lease_owner = ?2 \
          ORDER BY seq LIMIT 1)"
    };
}

/// Marks the message `?1` held by `?2` delivered at `?3`.
const ACK_SQL: &str = concat!(
    "UPDATE mink_outbox SET status = 'delivered', lease_owner = NULL, lease_until = NULL, \
       finished_at = ?3 \
     WHERE seq = ",
    held!()
);

/// Records a failure (`?3`) of the message `?1` held by `?2`, retried at `?4`.
const RETRY_SQL: &str = concat!(
    "UPDATE mink_outbox SET lease_owner = NULL, lease_until = NULL, last_error = ?3, \
       next_attempt_at = ?4 \
     WHERE seq = ",
    held!()
);

/// Records a failure (`?3`) of the message `?1` held by `?2`, dead-lettered at `?4`.
const GIVE_UP_SQL: &str = concat!(
    "UPDATE mink_outbox SET lease_owner = NULL, lease_until = NULL, last_error = ?3, \
       status = 'dead', finished_at = ?4 \
     WHERE seq = ",
    held!()
);

/// The oldest `?1` dead letters.
const DEAD_LETTERS_SQL: &str = concat!(
    "SELECT ",
    message_columns!(),
    ", attempts, last_error, finished_at \
     FROM mink_outbox INDEXED BY mink_outbox_by_status \
     WHERE status = 'dead' ORDER BY seq LIMIT ?1"
);

/// Puts every dead letter back in line at `?1`.
const REPLAY_ALL_SQL: &str = "UPDATE mink_outbox SET status = 'pending', attempts = 0, \
       next_attempt_at = ?1, lease_owner = NULL, lease_until = NULL, finished_at = NULL \
     WHERE status = 'dead'";

/// Puts the dead letters with id `?2` back in line at `?1`.
const REPLAY_ONE_SQL: &str = "UPDATE mink_outbox INDEXED BY mink_outbox_id \
     SET status = 'pending', attempts = 0, next_attempt_at = ?1, lease_owner = NULL, \
       lease_until = NULL, finished_at = NULL \
     WHERE status = 'dead' AND id = ?2";

/// Deletes every dead letter.
const PURGE_DEAD_SQL: &str = "DELETE FROM mink_outbox WHERE status = 'dead'";

/// Deletes the dead letters with id `?1`.
const PURGE_DEAD_ONE_SQL: &str =
    "DELETE FROM mink_outbox INDEXED BY mink_outbox_id WHERE status = 'dead' AND id = ?1";

/// Deletes up to `?2` messages delivered at or before `?1`.
const PURGE_DELIVERED_SQL: &str = "DELETE FROM mink_outbox WHERE seq IN ( \
       SELECT seq FROM mink_outbox INDEXED BY mink_outbox_delivered \
       WHERE status = 'delivered' AND finished_at <= ?1 LIMIT ?2)";

/// The status and attempts of the first message with id `?1`.
const STATUS_SQL: &str = "SELECT seq, status, attempts \
     FROM mink_outbox INDEXED BY mink_outbox_id WHERE id = ?1 ORDER BY seq LIMIT 1";

/// Counts by status.
const COUNTS_SQL: &str = "SELECT status, COUNT(*) FROM mink_outbox GROUP BY status";

/// Writes one message.
const INSERT_SQL: &str = "INSERT INTO mink_outbox (id, destination, stream_id, event_id, \
       event_type, stream_version, position, codec, payload, metadata, created_at, \
       next_attempt_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)";

/// Every statement, for the test of their plans.
#[cfg(test)]
const ALL_SQL: &[&str] = &[
    WALK_SQL,
    FIRST_HEAD_SQL,
    NEXT_STREAM_SQL,
    NEXT_DESTINATION_SQL,
    HEAD_SQL,
    EXPIRE_SQL,
    CLAIM_SQL,
    ACK_SQL,
    RETRY_SQL,
    GIVE_UP_SQL,
    DEAD_LETTERS_SQL,
    REPLAY_ALL_SQL,
    REPLAY_ONE_SQL,
    PURGE_DEAD_SQL,
    PURGE_DEAD_ONE_SQL,
    PURGE_DELIVERED_SQL,
    STATUS_SQL,
    COUNTS_SQL,
    INSERT_SQL,
];

/// The last error recorded for a message whose lease expired after its last attempt.
const LEASE_EXPIRED: &str = "lease expired after the last attempt";

/// An [`OutboxStore`] in the SQLite file of a [`SqliteStore`]: the messages that the
/// appends of a store opened with [`SqliteStore::open_with_outbox`] wrote into the
/// `mink_outbox` table, for an [`OutboxProcessor`](mink_es::outbox::OutboxProcessor)
/// and the dead-letter API.
///
/// Build it with [`SqliteStore::outbox_store`] (or [`SqliteOutboxStore::new`]); it
/// shares the store's connections, and cloning it gives another handle to the same
/// messages. Any handle on the file can deliver, including one opened without routes,
/// and in any number of processes. Its semantics are those of
/// [`MemoryOutboxStore`](mink_es::outbox::store::MemoryOutboxStore), made durable and
/// shared by every process that opens the file:
///
/// * [`claim`](OutboxStore::claim) runs in one `BEGIN IMMEDIATE` transaction (which
///   holds the file's write lock, so claims of every connection and process are
///   serialized) and reads the clock once, after taking the lock. It considers, in
///   `seq` (insertion) order, only the oldest pending message of each (destination,
///   stream): a message that is leased, not yet due, or beyond this round's `limit`
///   still holds back the later messages of its stream. Each claim counts as an
///   attempt; a message due again after its `max_attempts`-th attempt (its lease
///   expired) is moved to the dead-letter queue instead. A message is leased to one
///   owner at a time, so concurrent processors never receive the same message while
///   its lease lives. A claim walks the pending messages in `seq` order until it has
///   `limit` deliverable ones; when it meets many messages queued behind few heads (a
///   deep backlog on a few streams), it skips from head to head through the
///   `(destination, stream_id, seq)` index instead, so that its cost does not grow
///   with the depth of a stream's backlog.
/// * [`ack`](OutboxStore::ack) and [`fail`](OutboxStore::fail) act only on messages the
///   caller still holds (pending and leased to it; an expired lease nobody took over
///   still counts).
/// * [`signal`](OutboxStore::signal) fires after appends of this handle (and its
///   clones) that wrote messages, after acknowledgements and failures, and after
///   replays. Processors in other processes, or on other handles, find new messages by
///   polling.
///
/// Times are the host's wall clock in unix microseconds. A row that cannot be read back
/// (edited or damaged outside this crate) is a non-transient
/// [`Error::Backend`](mink_es::Error::Backend) naming its `seq`, never a panic; a claim
/// that meets one changes nothing.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::time::Duration;
/// use mink_es::outbox::{MessageStatus, Outbox, OutboxStore, Route};
/// use mink_es::{ExpectedVersion, NewEvent, StreamId, StreamWriter};
/// use mink_sqlite::{SqliteConfig, SqliteStore};
///
/// let dir = tempfile::tempdir().unwrap();
/// let outbox = Outbox::new().route(Route::all("webhook"))?;
/// let store = SqliteStore::open_with_outbox(dir.path().join("app.db"), SqliteConfig::default(), outbox)?;
/// let stream = StreamId::new("Order-1")?;
/// store
///     .append(&stream, ExpectedVersion::Any, vec![NewEvent::new("Placed", "{}"), NewEvent::new("Paid", "{}")])
///     .await?;
///
/// let messages = store.outbox_store();
/// // Only the first message of the stream is deliverable.
/// let claimed = messages.claim("worker-1", 10, Duration::from_secs(30), 5).await?;
/// assert_eq!(claimed.len(), 1);
/// assert_eq!((claimed[0].message.event_type.as_str(), claimed[0].attempt), ("Placed", 1));
/// messages.ack("worker-1", &[claimed[0].message.id]).await?;
/// assert_eq!(messages.status(claimed[0].message.id).await?, Some((MessageStatus::Delivered, 1)));
/// // Now the second one is.
/// let next = messages.claim("worker-1", 10, Duration::from_secs(30), 5).await?;
/// assert_eq!(next[0].message.event_type, "Paid");
/// # Ok::<(), mink_es::Error>(())
/// # });
/// ```
#[derive(Clone)]
pub struct SqliteOutboxStore {
    store: SqliteStore,
}

impl fmt::Debug for SqliteOutboxStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteOutboxStore")
            .field("path", &self.store.path())
            .finish()
    }
}

impl SqliteStore {
    /// The outbox messages kept in this store's file, on this store's connections.
    ///
    /// See [`SqliteOutboxStore`] and [`SqliteStore::open_with_outbox`].
    pub fn outbox_store(&self) -> SqliteOutboxStore {
        SqliteOutboxStore::new(self)
    }
}

/// What a claim needs to know of the oldest pending message of a (destination, stream).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Head {
    seq: i64,
    attempts: u32,
    lease_until: Option<i64>,
    next_attempt_at: i64,
}

/// What a claim does with a [`Head`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// Leased, or not due yet: left alone (it still holds back its stream).
    Wait,
    /// Due again after its last attempt: moved to the dead-letter queue.
    Dead,
    /// Leased to the caller, counting an attempt.
    Claim,
}

impl Head {
    fn verdict(&self, now: i64, max_attempts: u32) -> Verdict {
        let leased = self.lease_until.is_some_and(|until| until > now);
        if leased || self.next_attempt_at > now {
            Verdict::Wait
        } else if self.attempts >= max_attempts {
            Verdict::Dead
        } else {
            Verdict::Claim
        }
    }
}

impl SqliteOutboxStore {
    /// The outbox messages kept in `store`'s file, on `store`'s connections (the same as
    /// [`SqliteStore::outbox_store`]).
    pub fn new(store: &SqliteStore) -> Self {
        SqliteOutboxStore {
            store: store.clone(),
        }
    }

    /// The event store whose file and connections this store uses.
    pub fn store(&self) -> &SqliteStore {
        &self.store
    }

    fn claim_sync(
        &self,
        owner: &str,
        limit: usize,
        lease: Duration,
        max_attempts: u32,
        walk_budget: usize,
    ) -> Result<Vec<Claimed>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let max_attempts = max_attempts.max(1);
        let conn = self.store.writer();
        // The write lock first, then the clock: every decision is made on the latest
        // committed state, at a time at which no one else can change it.
        let tx = WriteTx::begin(&conn)?;
        let now = now_micros();
        let until = deadline(now, lease);
        let heads = match heads_by_walk(&conn, now, limit, max_attempts, walk_budget)? {
            Some(heads) => heads,
            None => heads_by_index(&conn)?,
        };
        let mut out = Vec::new();
        for head in heads {
            if out.len() >= limit {
                break;
            }
            let head = head.resolve(&conn)?;
            match head.verdict(now, max_attempts) {
                Verdict::Wait => {}
                Verdict::Dead => {
                    conn.prepare_cached(EXPIRE_SQL)
                        .and_then(|mut s| s.execute(params![head.seq, now, LEASE_EXPIRED]))
                        .map_err(map_err)?;
                }
                Verdict::Claim => {
                    let mut stmt = conn.prepare_cached(CLAIM_SQL).map_err(map_err)?;
                    let mut rows = stmt
                        .query(params![head.seq, owner, until])
                        .map_err(map_err)?;
                    let Some(row) = rows.next().map_err(map_err)? else {
                        return Err(backend_msg(format!(
                            "outbox message (seq {}) vanished while it was claimed",
                            head.seq
                        )));
                    };
                    let message = read_message(row)?;
                    let attempt = attempts(row, MESSAGE_COLUMN_COUNT, head.seq)?;
                    out.push(Claimed { message, attempt });
                }
            }
        }
        tx.commit()?;
        Ok(out)
    }

    fn ack_sync(&self, owner: &str, ids: &[Uuid]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let conn = self.store.writer();
        let tx = WriteTx::begin(&conn)?;
        let now = now_micros();
        let mut stmt = conn.prepare_cached(ACK_SQL).map_err(map_err)?;
        for id in ids {
            stmt.execute(params![id.as_bytes(), owner, now])
                .map_err(map_err)?;
        }
        drop(stmt);
        tx.commit()
    }

    fn fail_sync(
        &self,
        owner: &str,
        id: Uuid,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
    ) -> Result<()> {
        let conn = self.store.writer();
        let tx = WriteTx::begin(&conn)?;
        let (sql, at) = match retry_at {
            Some(at) => (RETRY_SQL, at.timestamp_micros()),
            None => (GIVE_UP_SQL, now_micros()),
        };
        conn.prepare_cached(sql)
            .and_then(|mut s| s.execute(params![id.as_bytes(), owner, error, at]))
            .map_err(map_err)?;
        tx.commit()
    }

    fn dead_letters_sync(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        let sql_limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.store.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(DEAD_LETTERS_SQL).map_err(map_err)?;
            let mut rows = stmt.query([sql_limit]).map_err(map_err)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(map_err)? {
                let message = read_message(row)?;
                let seq = seq_of(row)?;
                let attempts = attempts(row, MESSAGE_COLUMN_COUNT, seq)?;
                let last_error = match get(row, MESSAGE_COLUMN_COUNT + 1)? {
                    ValueRef::Null => String::new(),
                    ValueRef::Text(b) => String::from_utf8_lossy(b).into_owned(),
                    _ => return Err(corrupt(seq, "last_error is not text")),
                };
                let failed_at = match get(row, MESSAGE_COLUMN_COUNT + 2)? {
                    ValueRef::Null => DateTime::<Utc>::default(),
                    ValueRef::Integer(t) => micros_to_time(t)
                        .ok_or_else(|| corrupt(seq, "finished_at is out of range"))?,
                    _ => return Err(corrupt(seq, "finished_at is not an integer")),
                };
                out.push(DeadLetter {
                    message,
                    attempts,
                    last_error,
                    failed_at,
                });
            }
            Ok(out)
        })
    }

    fn replay_sync(&self, id: Option<Uuid>) -> Result<u64> {
        let conn = self.store.writer();
        let tx = WriteTx::begin(&conn)?;
        let now = now_micros();
        let n = match id {
            Some(id) => conn
                .prepare_cached(REPLAY_ONE_SQL)
                .and_then(|mut s| s.execute(params![now, id.as_bytes()])),
            None => conn
                .prepare_cached(REPLAY_ALL_SQL)
                .and_then(|mut s| s.execute(params![now])),
        }
        .map_err(map_err)?;
        tx.commit()?;
        Ok(n as u64)
    }

    fn purge_dead_sync(&self, id: Option<Uuid>) -> Result<u64> {
        let conn = self.store.writer();
        let n = match id {
            Some(id) => conn
                .prepare_cached(PURGE_DEAD_ONE_SQL)
                .and_then(|mut s| s.execute([id.as_bytes()])),
            None => conn
                .prepare_cached(PURGE_DEAD_SQL)
                .and_then(|mut s| s.execute([])),
        }
        .map_err(map_err)?;
        Ok(n as u64)
    }

    fn purge_delivered_sync(&self, older_than: Duration) -> Result<u64> {
        // Rounded up: only messages delivered at least `older_than` ago go.
        let age = i64::try_from(older_than.as_nanos().div_ceil(1000)).unwrap_or(i64::MAX);
        let cutoff = now_micros().saturating_sub(age);
        let mut total = 0u64;
        loop {
            // One batch per lock: appends get their turn between batches.
            let conn = self.store.writer();
            let n = conn
                .prepare_cached(PURGE_DELIVERED_SQL)
                .and_then(|mut s| s.execute(params![cutoff, PURGE_BATCH]))
                .map_err(map_err)?;
            drop(conn);
            total += n as u64;
            if (n as i64) < PURGE_BATCH {
                return Ok(total);
            }
        }
    }

    fn status_sync(&self, id: Uuid) -> Result<Option<(MessageStatus, u32)>> {
        self.store.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(STATUS_SQL).map_err(map_err)?;
            let mut rows = stmt.query([id.as_bytes()]).map_err(map_err)?;
            let Some(row) = rows.next().map_err(map_err)? else {
                return Ok(None);
            };
            let seq = seq_of(row)?;
            Ok(Some((status(row, 1, seq)?, attempts(row, 2, seq)?)))
        })
    }

    fn counts_sync(&self) -> Result<OutboxCounts> {
        self.store.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(COUNTS_SQL).map_err(map_err)?;
            let mut rows = stmt.query([]).map_err(map_err)?;
            let mut c = OutboxCounts::default();
            while let Some(row) = rows.next().map_err(map_err)? {
                let n = match get(row, 1)? {
                    ValueRef::Integer(n) => n.unsigned_abs(),
                    _ => return Err(backend_msg("COUNT(*) of outbox messages is not a number")),
                };
                match get(row, 0)? {
                    ValueRef::Text(b"pending") => c.pending += n,
                    ValueRef::Text(b"delivered") => c.delivered += n,
                    ValueRef::Text(b"dead") => c.dead += n,
                    other => {
                        return Err(backend_msg(format!(
                            "outbox messages have an unknown status {other:?}"
                        )));
                    }
                }
            }
            Ok(c)
        })
    }
}

/// A head found by a claim: complete, or only its `seq` (read when needed).
enum FoundHead {
    Read(Head),
    Seq(i64),
}

impl FoundHead {
    fn resolve(self, conn: &Connection) -> Result<Head> {
        match self {
            FoundHead::Read(h) => Ok(h),
            FoundHead::Seq(seq) => {
                let mut stmt = conn.prepare_cached(HEAD_SQL).map_err(map_err)?;
                let mut rows = stmt.query([seq]).map_err(map_err)?;
                match rows.next().map_err(map_err)? {
                    Some(row) => read_head(row, seq, 1),
                    None => Err(backend_msg(format!(
                        "outbox message (seq {seq}) vanished during a claim"
                    ))),
                }
            }
        }
    }
}

/// The heads (the oldest pending message of each (destination, stream)) in `seq`
/// order, found by walking the pending messages in `seq` order: at least every head
/// before the `limit`-th claimable one.
///
/// `None` when the walk meets more than `budget` messages queued behind the heads it
/// has seen, and more than twice as many as heads: many messages queue behind few
/// heads (deep streams whose heads are leased or waiting), so [`heads_by_index`], which
/// skips from head to head, is cheaper. A walk over many shallow streams goes on, as
/// the index would visit every head too. A `budget` of 0 always answers `None`.
fn heads_by_walk(
    conn: &Connection,
    now: i64,
    limit: usize,
    max_attempts: u32,
    budget: usize,
) -> Result<Option<Vec<FoundHead>>> {
    if budget == 0 {
        return Ok(None);
    }
    let mut stmt = conn.prepare_cached(WALK_SQL).map_err(map_err)?;
    let mut rows = stmt.query([]).map_err(map_err)?;
    let mut seen: HashSet<String> = HashSet::new();
    let mut key = String::new();
    let mut heads = Vec::new();
    let mut claimable = 0;
    let mut queued = 0usize;
    while let Some(row) = rows.next().map_err(map_err)? {
        let seq = seq_of(row)?;
        // Destinations hold no control characters, so NUL separates the two parts.
        key.clear();
        key.push_str(text(row, 1, "destination", seq)?);
        key.push('\0');
        key.push_str(text(row, 2, "stream_id", seq)?);
        if seen.contains(key.as_str()) {
            queued += 1;
            if queued > budget && queued > heads.len().saturating_mul(2) {
                return Ok(None);
            }
            continue;
        }
        seen.insert(key.clone());
        let head = read_head(row, seq, 3)?;
        if head.verdict(now, max_attempts) == Verdict::Claim {
            claimable += 1;
        }
        heads.push(FoundHead::Read(head));
        if claimable >= limit {
            break;
        }
    }
    Ok(Some(heads))
}

/// Every head, in `seq` order, found by skipping from one (destination, stream) to the
/// next through the `mink_outbox_pending_streams` index: one or two index seeks per
/// pair, whatever the number of messages queued behind the heads.
fn heads_by_index(conn: &Connection) -> Result<Vec<FoundHead>> {
    /// The first row of `sql` run with `args`: (destination, stream, seq).
    fn head_after(
        conn: &Connection,
        sql: &str,
        args: impl rusqlite::Params,
    ) -> Result<Option<(String, String, i64)>> {
        let mut stmt = conn.prepare_cached(sql).map_err(map_err)?;
        let mut rows = stmt.query(args).map_err(map_err)?;
        let Some(row) = rows.next().map_err(map_err)? else {
            return Ok(None);
        };
        let seq = seq_at(row, 2)?;
        Ok(Some((
            text(row, 0, "destination", seq)?.to_owned(),
            text(row, 1, "stream_id", seq)?.to_owned(),
            seq,
        )))
    }
    let mut seqs = Vec::new();
    let mut cursor = head_after(conn, FIRST_HEAD_SQL, [])?;
    while let Some((destination, stream, seq)) = cursor {
        seqs.push(seq);
        cursor = match head_after(conn, NEXT_STREAM_SQL, params![destination, stream])? {
            Some(next) => Some(next),
            None => head_after(conn, NEXT_DESTINATION_SQL, params![destination])?,
        };
    }
    seqs.sort_unstable();
    Ok(seqs.into_iter().map(FoundHead::Seq).collect())
}

/// Writes the outbox messages of an append, in the append's transaction. `events` are
/// the append's stored events and `metadata` their metadata as stored (JSON), in the
/// same order; `now` is when the messages become due.
pub(crate) fn insert_messages(
    conn: &Connection,
    messages: &[OutboxMessage],
    events: &[StoredEvent],
    metadata: &[Option<String>],
    now: i64,
) -> Result<()> {
    if messages.is_empty() {
        return Ok(());
    }
    let mut insert = conn.prepare_cached(INSERT_SQL).map_err(map_err)?;
    // Messages come in event order: find each one's event from the previous one's.
    let mut k = 0;
    for m in messages {
        let meta: Option<Cow<'_, str>> = match events[k..].iter().position(|e| e.id == m.event_id) {
            Some(offset) => {
                k += offset;
                metadata
                    .get(k)
                    .and_then(|j| j.as_deref())
                    .map(Cow::Borrowed)
            }
            None => m.metadata.to_json().map(Cow::Owned),
        };
        if m.position.major() != 0 {
            return Err(backend_msg(format!(
                "outbox message for event {} has position {}, not one of this store",
                m.event_id, m.position
            )));
        }
        let position = i64::try_from(m.position.minor())
            .map_err(|_| backend_msg(format!("position {} is out of range", m.position)))?;
        let version = i64::try_from(m.stream_version).map_err(|_| {
            backend_msg(format!(
                "stream version {} is out of range",
                m.stream_version
            ))
        })?;
        insert
            .execute(params![
                m.id.as_bytes(),
                m.destination,
                m.stream_id.as_str(),
                m.event_id.as_bytes(),
                m.event_type,
                version,
                position,
                m.codec.as_str(),
                payload_sql(m.codec.as_str(), &m.payload),
                meta.as_deref(),
                m.created_at.timestamp_micros(),
                now,
            ])
            .map_err(map_err)?;
    }
    Ok(())
}

/// A non-transient [`Error::Backend`] for a row that cannot be read back.
fn corrupt(seq: i64, what: impl fmt::Display) -> Error {
    backend_msg(format!("outbox message (seq {seq}) is corrupt: {what}"))
}

fn get<'r>(row: &'r Row<'_>, idx: usize) -> Result<ValueRef<'r>> {
    row.get_ref(idx).map_err(map_err)
}

fn seq_at(row: &Row<'_>, idx: usize) -> Result<i64> {
    match get(row, idx)? {
        ValueRef::Integer(seq) => Ok(seq),
        _ => Err(backend_msg(
            "an outbox message has a seq that is not an integer",
        )),
    }
}

/// The `seq` in column 0.
fn seq_of(row: &Row<'_>) -> Result<i64> {
    seq_at(row, 0)
}

fn int(row: &Row<'_>, idx: usize, name: &str, seq: i64) -> Result<i64> {
    match get(row, idx)? {
        ValueRef::Integer(v) => Ok(v),
        _ => Err(corrupt(seq, format_args!("{name} is not an integer"))),
    }
}

fn text<'r>(row: &'r Row<'_>, idx: usize, name: &str, seq: i64) -> Result<&'r str> {
    match get(row, idx)? {
        ValueRef::Text(b) => {
            std::str::from_utf8(b).map_err(|_| corrupt(seq, format_args!("{name} is not UTF-8")))
        }
        _ => Err(corrupt(seq, format_args!("{name} is not text"))),
    }
}

fn uuid(row: &Row<'_>, idx: usize, name: &str, seq: i64) -> Result<Uuid> {
    match get(row, idx)? {
        ValueRef::Blob(b) => Uuid::from_slice(b).ok(),
        _ => None,
    }
    .ok_or_else(|| corrupt(seq, format_args!("{name} is not a 16-byte blob")))
}

fn attempts(row: &Row<'_>, idx: usize, seq: i64) -> Result<u32> {
    let v = int(row, idx, "attempts", seq)?;
    u32::try_from(v).map_err(|_| corrupt(seq, format_args!("attempts is out of range ({v})")))
}

fn status(row: &Row<'_>, idx: usize, seq: i64) -> Result<MessageStatus> {
    match text(row, idx, "status", seq)? {
        "pending" => Ok(MessageStatus::Pending),
        "delivered" => Ok(MessageStatus::Delivered),
        "dead" => Ok(MessageStatus::Dead),
        other => Err(corrupt(seq, format_args!("unknown status {other:?}"))),
    }
}

/// Reads `attempts, lease_until, next_attempt_at` from column `idx` on.
fn read_head(row: &Row<'_>, seq: i64, idx: usize) -> Result<Head> {
    let lease_until = match get(row, idx + 1)? {
        ValueRef::Null => None,
        ValueRef::Integer(t) => Some(t),
        _ => return Err(corrupt(seq, "lease_until is not an integer")),
    };
    Ok(Head {
        seq,
        attempts: attempts(row, idx, seq)?,
        lease_until,
        next_attempt_at: int(row, idx + 2, "next_attempt_at", seq)?,
    })
}

/// Reads the columns of `message_columns!()`.
fn read_message(row: &Row<'_>) -> Result<OutboxMessage> {
    let seq = seq_of(row)?;
    let id = uuid(row, 1, "id", seq)?;
    let destination = text(row, 2, "destination", seq)?.to_owned();
    let stream_id = StreamId::new(text(row, 3, "stream_id", seq)?)
        .map_err(|e| corrupt(seq, format_args!("stream_id is invalid: {e}")))?;
    let event_id = EventId::from_uuid(uuid(row, 4, "event_id", seq)?);
    let event_type = text(row, 5, "event_type", seq)?.to_owned();
    let stream_version = u64::try_from(int(row, 6, "stream_version", seq)?)
        .map_err(|_| corrupt(seq, "stream_version is negative"))?;
    let position = u64::try_from(int(row, 7, "position", seq)?)
        .map_err(|_| corrupt(seq, "position is negative"))?;
    let codec = match text(row, 8, "codec", seq)? {
        "json" => CodecTag::JSON,
        other => CodecTag::from(other.to_owned()),
    };
    let payload = match get(row, 9)? {
        ValueRef::Text(b) | ValueRef::Blob(b) => Bytes::copy_from_slice(b),
        _ => return Err(corrupt(seq, "payload is neither text nor blob")),
    };
    let metadata = match get(row, 10)? {
        ValueRef::Null => Metadata::default(),
        ValueRef::Text(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| Metadata::from_json(s).ok())
            .ok_or_else(|| corrupt(seq, "metadata is not valid metadata JSON"))?,
        _ => return Err(corrupt(seq, "metadata is not text")),
    };
    let created_at = micros_to_time(int(row, 11, "created_at", seq)?)
        .ok_or_else(|| corrupt(seq, "created_at is out of range"))?;
    Ok(OutboxMessage {
        id,
        destination,
        stream_id,
        event_id,
        event_type,
        stream_version,
        position: Position::new(0, position),
        payload,
        codec,
        metadata,
        created_at,
    })
}

impl OutboxStore for SqliteOutboxStore {
    fn claim<'a>(
        &'a self,
        owner: &'a str,
        limit: usize,
        lease: Duration,
        max_attempts: u32,
    ) -> BoxFuture<'a, Result<Vec<Claimed>>> {
        Box::pin(async move {
            let budget = WALK_BUDGET.max(limit.saturating_mul(4));
            self.claim_sync(owner, limit, lease, max_attempts, budget)
                .map_err(|e| context(e, || format!("cannot claim outbox messages for {owner:?}")))
        })
    }

    fn ack<'a>(&'a self, owner: &'a str, ids: &'a [Uuid]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let res = self.ack_sync(owner, ids).map_err(|e| {
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
            let res = self.fail_sync(owner, id, error, retry_at).map_err(|e| {
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
            self.dead_letters_sync(limit)
                .map_err(|e| context(e, || "cannot read the outbox dead letters".to_owned()))
        })
    }

    fn replay(&self, id: Option<Uuid>) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let n = self
                .replay_sync(id)
                .map_err(|e| context(e, || "cannot replay outbox dead letters".to_owned()))?;
            if n > 0 {
                self.store.outbox_notifier().notify();
            }
            Ok(n)
        })
    }

    fn purge_dead(&self, id: Option<Uuid>) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            self.purge_dead_sync(id)
                .map_err(|e| context(e, || "cannot purge outbox dead letters".to_owned()))
        })
    }

    fn purge_delivered(&self, older_than: Duration) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            self.purge_delivered_sync(older_than)
                .map_err(|e| context(e, || "cannot purge delivered outbox messages".to_owned()))
        })
    }

    fn status(&self, id: Uuid) -> BoxFuture<'_, Result<Option<(MessageStatus, u32)>>> {
        Box::pin(async move {
            self.status_sync(id)
                .map_err(|e| context(e, || format!("cannot read outbox message {id}")))
        })
    }

    fn counts(&self) -> BoxFuture<'_, Result<OutboxCounts>> {
        Box::pin(async move {
            self.counts_sync()
                .map_err(|e| context(e, || "cannot count outbox messages".to_owned()))
        })
    }

    fn signal(&self) -> FeedSignal {
        self.store.outbox_notifier().signal()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashMap;

    use mink_es::outbox::{Outbox, Route};
    use mink_es::{ExpectedVersion, MemoryStore, NewEvent, StreamWriter};

    use super::*;
    use crate::SqliteConfig;
    use mink_testing::rng::Rng;

    /// Two routes to the same destination give some events two messages with one id.
    fn routes() -> Outbox {
        Outbox::new()
            .route(Route::all("a"))
            .unwrap()
            .route(Route::categories("b", ["S0", "S1"]))
            .unwrap()
            .route(Route::event_types("a", ["Dup"]))
            .unwrap()
    }

    fn open(dir: &tempfile::TempDir, name: &str) -> SqliteStore {
        SqliteStore::open_with_outbox(dir.path().join(name), SqliteConfig::default(), routes())
            .unwrap()
    }

    type Claims = Vec<(Uuid, u32, String, String, u64, Position, Bytes)>;

    fn summary(claimed: &[Claimed]) -> Claims {
        claimed
            .iter()
            .map(|c| {
                let m = &c.message;
                (
                    m.id,
                    c.attempt,
                    m.destination.clone(),
                    m.stream_id.to_string(),
                    m.stream_version,
                    m.position,
                    m.payload.clone(),
                )
            })
            .collect()
    }

    async fn state(o: &dyn OutboxStore, ids: &[Uuid]) -> String {
        let mut s = format!("{:?}\n", o.counts().await.unwrap());
        for id in ids {
            s.push_str(&format!("{id} {:?}\n", o.status(*id).await.unwrap()));
        }
        for d in o.dead_letters(usize::MAX).await.unwrap() {
            s.push_str(&format!(
                "dead {} {} {:?}\n",
                d.message.id, d.attempts, d.last_error
            ));
        }
        s
    }

    /// The SQLite store decides exactly as the memory store (`MemoryOutboxStore`),
    /// operation by operation, over random appends (with duplicate message ids),
    /// claims (expiring leases, attempt limits), acknowledgements, failures, replays and
    /// purges: whether it finds the heads by walking, through the index, or switching
    /// from one to the other.
    #[tokio::test]
    async fn claims_match_the_memory_store_exactly() {
        // What the runs went through, so that the test cannot pass vacuously.
        let (mut claimed, mut expired, mut switched) = (0, 0, 0);
        for seed in [1u64, 7, 42, 2024] {
            let dir = tempfile::tempdir().unwrap();
            let memory = MemoryStore::with_outbox(routes());
            let reference = memory.outbox_store().unwrap();
            // Never leaves the walk; always the index; switches after one queued message.
            let budgets = [usize::MAX, 0, 1];
            let stores: Vec<SqliteStore> = budgets
                .iter()
                .map(|b| open(&dir, &format!("budget-{b}.db")))
                .collect();
            let outboxes: Vec<SqliteOutboxStore> =
                stores.iter().map(SqliteStore::outbox_store).collect();
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let mut ids: Vec<Uuid> = Vec::new();
            let mut held: HashMap<&str, Vec<Uuid>> = HashMap::new();
            let streams = ["S0-1", "S1-1", "S2-1", "S3-1", "S4-1"];
            let owners = ["o1", "o2"];
            for step in 0..400 {
                let what = match rng.below(10) {
                    0..=2 => {
                        let stream = StreamId::new(*rng.pick(&streams)).unwrap();
                        let events: Vec<NewEvent> = (0..1 + rng.below(3))
                            .map(|i| {
                                let t = *rng.pick(&["E", "E", "Dup"]);
                                NewEvent::new(t, format!("{{\"step\":{step},\"i\":{i}}}"))
                            })
                            .collect();
                        let r = memory
                            .append(&stream, ExpectedVersion::Any, events.clone())
                            .await
                            .unwrap();
                        for s in &stores {
                            s.append(&stream, ExpectedVersion::Any, events.clone())
                                .await
                                .unwrap();
                        }
                        for e in &r.events {
                            for d in ["a", "b"] {
                                let id = OutboxMessage::id_for(e.id, d);
                                if !ids.contains(&id) {
                                    ids.push(id);
                                }
                            }
                        }
                        format!("append {stream}")
                    }
                    3..=5 => {
                        let owner = *rng.pick(&owners);
                        let limit = 1 + rng.below(4) as usize;
                        let lease = *rng.pick(&[Duration::ZERO, Duration::from_secs(3600)]);
                        let max = 1 + rng.below(3) as u32;
                        if heads_by_walk(&stores[2].writer(), now_micros(), limit, max, 1)
                            .unwrap()
                            .is_none()
                        {
                            switched += 1;
                        }
                        let m = reference.claim(owner, limit, lease, max).await.unwrap();
                        for (o, budget) in outboxes.iter().zip(budgets) {
                            let got = o.claim_sync(owner, limit, lease, max, budget).unwrap();
                            assert_eq!(
                                summary(&got),
                                summary(&m),
                                "seed {seed} step {step}: budget {budget}"
                            );
                        }
                        held.entry(owner)
                            .or_default()
                            .extend(m.iter().map(|c| c.message.id));
                        claimed += m.len();
                        format!("claim {owner} {limit} {lease:?} {max} -> {}", m.len())
                    }
                    6 => {
                        let owner = *rng.pick(&owners);
                        let mut acked: Vec<Uuid> = held.remove(owner).unwrap_or_default();
                        if !ids.is_empty() && rng.below(2) == 0 {
                            acked.push(*rng.pick(&ids));
                        }
                        reference.ack(owner, &acked).await.unwrap();
                        for o in &outboxes {
                            o.ack(owner, &acked).await.unwrap();
                        }
                        format!("ack {owner} {}", acked.len())
                    }
                    7 => {
                        let owner = *rng.pick(&owners);
                        let Some(id) = held
                            .get_mut(owner)
                            .and_then(|h| h.pop())
                            .or_else(|| ids.first().copied())
                        else {
                            continue;
                        };
                        let retry_at = match rng.below(3) {
                            0 => None,
                            1 => Some(Utc::now() - chrono::Duration::seconds(1)),
                            _ => Some(Utc::now() + chrono::Duration::hours(1)),
                        };
                        let error = format!("boom {step}");
                        reference.fail(owner, id, &error, retry_at).await.unwrap();
                        for o in &outboxes {
                            o.fail(owner, id, &error, retry_at).await.unwrap();
                        }
                        format!("fail {owner} {id} {retry_at:?}")
                    }
                    8 => {
                        let id = (rng.below(2) == 0 && !ids.is_empty()).then(|| *rng.pick(&ids));
                        let m = reference.replay(id).await.unwrap();
                        for o in &outboxes {
                            assert_eq!(o.replay(id).await.unwrap(), m);
                        }
                        format!("replay {id:?} -> {m}")
                    }
                    _ if rng.below(2) == 0 => {
                        let id = (rng.below(2) == 0 && !ids.is_empty()).then(|| *rng.pick(&ids));
                        let m = reference.purge_dead(id).await.unwrap();
                        for o in &outboxes {
                            assert_eq!(o.purge_dead(id).await.unwrap(), m);
                        }
                        format!("purge dead {id:?} -> {m}")
                    }
                    _ => {
                        let age = *rng.pick(&[Duration::ZERO, Duration::from_secs(3600)]);
                        let m = reference.purge_delivered(age).await.unwrap();
                        for o in &outboxes {
                            assert_eq!(o.purge_delivered(age).await.unwrap(), m);
                        }
                        format!("purge delivered {age:?} -> {m}")
                    }
                };
                let expected = state(&reference, &ids).await;
                expired += expected.matches(LEASE_EXPIRED).count();
                for (o, budget) in outboxes.iter().zip(budgets) {
                    assert_eq!(
                        state(o, &ids).await,
                        expected,
                        "seed {seed} step {step} ({what}): budget {budget}"
                    );
                }
            }
        }
        assert!(claimed > 200, "{claimed} messages claimed");
        assert!(expired > 0, "no lease expired after the last attempt");
        assert!(switched > 0, "no walk switched to the index");
    }

    #[test]
    fn every_statement_uses_its_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, "plans.db");
        let conn = store.writer();
        let plan = |sql: &str| -> String {
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let nulls = vec![rusqlite::types::Value::Null; stmt.parameter_count()];
            let rows = stmt
                .query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<std::result::Result<Vec<_>, _>>()
                .unwrap();
            rows.join("; ")
        };
        for sql in ALL_SQL {
            let p = plan(sql);
            assert!(!p.contains("TEMP B-TREE"), "{sql}\n{p}");
            assert!(
                !p.split("; ")
                    .any(|step| step.starts_with("SCAN mink_outbox") && !step.contains("INDEX")),
                "a full table scan: {sql}\n{p}"
            );
        }
        let expect = [
            (WALK_SQL, "mink_outbox_by_status (status=?)"),
            (FIRST_HEAD_SQL, "mink_outbox_pending_streams"),
            (
                NEXT_STREAM_SQL,
                "mink_outbox_pending_streams (destination=? AND stream_id>?)",
            ),
            (
                NEXT_DESTINATION_SQL,
                "mink_outbox_pending_streams (destination>?)",
            ),
            (HEAD_SQL, "INTEGER PRIMARY KEY (rowid=?)"),
            (ACK_SQL, "mink_outbox_id (id=?)"),
            (GIVE_UP_SQL, "mink_outbox_id (id=?)"),
            (DEAD_LETTERS_SQL, "mink_outbox_by_status (status=?)"),
            (REPLAY_ONE_SQL, "mink_outbox_id (id=?)"),
            (PURGE_DELIVERED_SQL, "mink_outbox_delivered (finished_at<?)"),
            (STATUS_SQL, "mink_outbox_id (id=?)"),
        ];
        for (sql, index) in expect {
            let p = plan(sql);
            assert!(p.contains(index), "{sql}\n{p}");
        }
    }

    #[tokio::test]
    async fn a_failed_claim_leaves_no_transaction_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, "tx.db");
        let s = StreamId::new("S0-1").unwrap();
        store
            .append(&s, ExpectedVersion::Any, vec![NewEvent::new("E", "{}")])
            .await
            .unwrap();
        let o = store.outbox_store();
        store
            .writer()
            .execute_batch("UPDATE mink_outbox SET metadata = '{oops'")
            .unwrap();
        for budget in [WALK_BUDGET, 0] {
            let err = o
                .claim_sync("p", 10, Duration::from_secs(30), 3, budget)
                .unwrap_err();
            assert!(err.to_string().contains("metadata"), "{err}");
            assert!(store.writer().is_autocommit(), "rolled back");
        }
        // Nothing was claimed: the attempt was rolled back with the transaction.
        let attempts: i64 = store
            .writer()
            .query_row("SELECT MAX(attempts) FROM mink_outbox", [], |r| r.get(0))
            .unwrap();
        assert_eq!(attempts, 0);
    }

    #[tokio::test]
    async fn a_failing_route_rolls_the_append_back() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::new()
            .route(Route::all("x").transform(|_| Err("no".into())))
            .unwrap();
        let store =
            SqliteStore::open_with_outbox(dir.path().join("r.db"), SqliteConfig::default(), outbox)
                .unwrap();
        let s = StreamId::new("S-1").unwrap();
        let err = store
            .append(&s, ExpectedVersion::Any, vec![NewEvent::new("E", "{}")])
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Outbox { .. }), "{err:?}");
        assert!(store.writer().is_autocommit());
        let n: i64 = store
            .writer()
            .query_row(
                "SELECT (SELECT COUNT(*) FROM mink_events) + (SELECT COUNT(*) FROM mink_outbox)",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 0);
    }
}
