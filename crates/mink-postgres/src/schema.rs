//! The schema name, and every SQL statement of the store, rendered once per schema.

use std::fmt;
use std::sync::Arc;

use sqlx::{AssertSqlSafe, SqlSafeStr, SqlStr};

use crate::error::PgStoreError;

/// The longest schema name accepted, in bytes.
///
/// PostgreSQL identifiers hold 63 bytes; the store derives notification channel names
/// (`mink_events_<schema>`, `mink_outbox_<schema>`) from the schema name, which must fit
/// as well.
pub const MAX_SCHEMA_NAME_LEN: usize = 48;

/// The name of the PostgreSQL schema that holds one store's tables (default `mink`).
///
/// A valid name starts with a lowercase ASCII letter or `_`, continues with lowercase
/// ASCII letters, digits or `_`, is at most [`MAX_SCHEMA_NAME_LEN`] bytes long, and does
/// not start with `pg_` (reserved by PostgreSQL). The name is still quoted in every
/// statement.
///
/// ```
/// use mink_postgres::SchemaName;
/// assert_eq!(SchemaName::default().as_str(), "mink");
/// assert!(SchemaName::new("orders_v2").is_ok());
/// assert!(SchemaName::new("Orders").is_err());
/// assert!(SchemaName::new("pg_temp").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SchemaName(Arc<str>);

impl SchemaName {
    /// The default schema, `mink`.
    pub const DEFAULT: &'static str = "mink";

    /// Validates a schema name.
    pub fn new(name: impl AsRef<str>) -> Result<Self, PgStoreError> {
        let name = name.as_ref();
        let bad = |reason: &str| PgStoreError::InvalidSchemaName {
            name: name.chars().take(64).collect(),
            reason: reason.to_owned(),
        };
        if name.is_empty() {
            return Err(bad("it is empty"));
        }
        if name.len() > MAX_SCHEMA_NAME_LEN {
            return Err(bad(&format!(
                "it is {} bytes long; the limit is {MAX_SCHEMA_NAME_LEN}",
                name.len()
            )));
        }
        let mut chars = name.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
        if !first_ok {
            return Err(bad("it must start with a lowercase ASCII letter or '_'"));
        }
        if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
            return Err(bad(
                "it may only hold lowercase ASCII letters, digits and '_'",
            ));
        }
        if name.starts_with("pg_") {
            return Err(bad("names starting with 'pg_' are reserved by PostgreSQL"));
        }
        Ok(SchemaName(Arc::from(name)))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The quoted identifier, as used in SQL.
    pub fn quoted(&self) -> String {
        // The name holds no quote (validated), so this is a plain quoting.
        format!("\"{}\"", self.0)
    }

    /// The LISTEN/NOTIFY channel on which appends to this schema are announced.
    pub fn channel(&self) -> String {
        format!("mink_events_{}", self.0)
    }

    /// The LISTEN/NOTIFY channel on which new outbox messages of this schema are
    /// announced (see [`PgOutboxStore`](crate::PgOutboxStore)).
    pub fn outbox_channel(&self) -> String {
        format!("mink_outbox_{}", self.0)
    }
}

impl Default for SchemaName {
    fn default() -> Self {
        SchemaName(Arc::from(Self::DEFAULT))
    }
}

impl fmt::Display for SchemaName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SchemaName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::str::FromStr for SchemaName {
    type Err = PgStoreError;
    fn from_str(s: &str) -> Result<Self, PgStoreError> {
        SchemaName::new(s)
    }
}

/// Replaces `{schema}` in a template with the quoted schema name.
pub(crate) fn render(template: &str, schema: &SchemaName) -> String {
    template.replace("{schema}", &schema.quoted())
}

/// A statement, rendered once; cloning is a reference-count increment.
#[derive(Clone, Debug)]
pub(crate) struct Stmt(SqlStr);

impl Stmt {
    pub(crate) fn new(template: &str, schema: &SchemaName) -> Self {
        // Safe: the template is a constant and the schema name is validated and quoted.
        Stmt(AssertSqlSafe(Arc::<str>::from(render(template, schema))).into_sql_str())
    }

    pub(crate) fn sql(&self) -> SqlStr {
        self.0.clone()
    }
}

/// The columns every event read selects, in the order [`crate::row`] decodes them.
pub(crate) const EVENT_COLUMNS: &str = "tx, position, event_id, stream_id, version, event_type, \
     schema_version, codec, payload, metadata, recorded_at";

/// The horizon of the feed: every transaction with an id below it has finished.
const HORIZON: &str = "(SELECT pg_snapshot_xmin(pg_current_snapshot()))";

// The append statements. Parameters common to all of them: $1 stream id, $2 category,
// $3 number of events, $4 ids, $5 types, $6 schema versions, $7 codecs, $8 payloads,
// $9 metadata (arrays for a batch, scalars for one event); for `Existing`, $10 and $11
// are the lowest and highest accepted current version. The stream CTE `st` yields the
// stream's new version and the statement's timestamp, or nothing when the expected
// version does not hold; then nothing is inserted and the caller looks at why.
//
// Through the pool (autocommit) nothing else is checked first: a stored id makes the
// INSERT fail on `events_event_id_key`, which rolls the statement back, and the caller
// then tells a repeat from a duplicate. In a caller's transaction a failed statement
// would abort the transaction, so every id is checked first (`{probe}`), and the CTE
// yields nothing when one is stored.
const PROBE_BATCH: &str =
    " AND NOT EXISTS (SELECT 1 FROM {schema}.events WHERE event_id = ANY($4::uuid[]))";
const PROBE_ONE: &str = " AND NOT EXISTS (SELECT 1 FROM {schema}.events WHERE event_id = $4::uuid)";

const APPEND_ANY_ST: &str = "WITH st AS (\
     INSERT INTO {schema}.streams AS s \
     (stream_id, category, version, last_tx, created_at, updated_at) \
     SELECT $1, $2, $3, pg_current_xact_id(), statement_timestamp(), statement_timestamp() \
     WHERE true{probe} \
     ON CONFLICT (stream_id) DO UPDATE SET version = s.version + EXCLUDED.version, \
     last_tx = GREATEST(s.last_tx, EXCLUDED.last_tx), updated_at = EXCLUDED.updated_at \
     RETURNING s.version, s.updated_at AS ts, s.last_tx AS tx) ";

const APPEND_NEW_ST: &str = "WITH st AS (\
     INSERT INTO {schema}.streams (stream_id, category, version, last_tx, created_at, updated_at) \
     SELECT $1, $2, $3, pg_current_xact_id(), statement_timestamp(), statement_timestamp() \
     WHERE true{probe} \
     ON CONFLICT (stream_id) DO NOTHING \
     RETURNING version, updated_at AS ts, last_tx AS tx) ";

const APPEND_EXISTING_ST: &str = "WITH st AS (\
     UPDATE {schema}.streams SET version = version + $3, \
     last_tx = GREATEST(last_tx, pg_current_xact_id()), updated_at = statement_timestamp() \
     WHERE stream_id = $1 AND version BETWEEN $10 AND $11{probe} \
     RETURNING version, updated_at AS ts, last_tx AS tx) ";

// Events are stamped with the stream's feed transaction id (`st.tx`, see the migration).
// A batch returns one row: the transaction id, the positions in version order, the
// stream's new version and the timestamp; nothing when nothing was inserted. The insert
// (`ins`) returns `{ret}`: its positions, or (with an outbox) what the messages copy.
const APPEND_INSERT_BATCH: &str = ", ins AS (INSERT INTO {schema}.events \
     (tx, event_id, stream_id, category, version, event_type, schema_version, codec, payload, \
     metadata, recorded_at) \
     SELECT st.tx, u.id, $1, $2, st.version - $3 + u.ord, u.typ, u.sv, u.codec, u.payload, u.meta, st.ts \
     FROM st CROSS JOIN unnest($4::uuid[], $5::text[], $6::int4[], $7::text[], $8::bytea[], \
     $9::jsonb[]) WITH ORDINALITY AS u(id, typ, sv, codec, payload, meta, ord) \
     ORDER BY u.ord \
     RETURNING {ret}) ";

// A batch whose events share their type, schema version, codec and metadata (the
// usual case): those travel once, as scalars.
const APPEND_INSERT_UNIFORM: &str = ", ins AS (INSERT INTO {schema}.events \
     (tx, event_id, stream_id, category, version, event_type, schema_version, codec, payload, \
     metadata, recorded_at) \
     SELECT st.tx, u.id, $1, $2, st.version - $3 + u.ord, $5::text, $6::int4, $7::text, u.payload, \
     $9::jsonb, st.ts \
     FROM st CROSS JOIN unnest($4::uuid[], $8::bytea[]) WITH ORDINALITY AS u(id, payload, ord) \
     ORDER BY u.ord \
     RETURNING {ret}) ";

/// What a batch returns.
const APPEND_RESULT_BATCH: &str = "SELECT (SELECT tx FROM st), array_agg(position ORDER BY position), \
     (SELECT version FROM st), (SELECT ts FROM st) FROM ins HAVING count(*) > 0";

const APPEND_INSERT_ONE: &str = "INSERT INTO {schema}.events \
     (tx, event_id, stream_id, category, version, event_type, schema_version, codec, payload, \
     metadata, recorded_at) \
     SELECT st.tx, $4::uuid, $1, $2, st.version, $5::text, $6::int4, $7::text, $8::bytea, $9::jsonb, st.ts \
     FROM st \
     RETURNING ";

/// What a single event's insert returns.
const APPEND_RESULT_ONE: &str = "tx, ARRAY[position], version, recorded_at";

/// The columns of the inserted events that outbox messages copy.
const OUTBOX_RETURNING: &str =
    "position, version, event_id, event_type, codec, payload, metadata, recorded_at, tx";

// With an outbox: the routed messages, written by the append's statement. Parameters
// `$p` (the 1-based index of each message's event in the append), `$p+1` (its
// destination) and `$p+2` (its id) are arrays in the order the messages are written:
// event order, then route order. Everything else is copied from the inserted events,
// so a message exists exactly when its event does. Each message gets its `seq` after
// the stream's row was locked (`st`), so a stream's messages are in version order.
// `oh` then gives each destination's stream a head if it has none (see
// [`OUTBOX_HEADS`]).
const APPEND_OUTBOX: &str = ", ob AS (INSERT INTO {schema}.outbox \
     (id, destination, stream_id, event_id, event_type, stream_version, tx, position, codec, \
     payload, metadata, created_at, next_attempt_at) \
     SELECT m.id, m.destination, $1, i.event_id, i.event_type, i.version, i.tx, i.position, \
     i.codec, i.payload, i.metadata, i.recorded_at, i.recorded_at \
     FROM st CROSS JOIN unnest(${p}::int8[], ${q}::text[], ${r}::uuid[]) \
     WITH ORDINALITY AS m(ev, destination, id, ord) \
     JOIN ins i ON i.version = st.version - $3 + m.ev \
     ORDER BY m.ord \
     RETURNING seq, destination, stream_id), \
     oh AS ({heads}) ";

/// The heads of the streams a write of outbox messages (`ob`, returning their `seq`,
/// `destination` and `stream_id`) added to: the write takes each (destination,
/// stream)'s row in `outbox_heads`, creating it for a new stream, and makes its first
/// message the head of one that has no pending message (`seq` NULL).
///
/// An `ON CONFLICT DO UPDATE` locks the row even when its `WHERE` is false, and decides
/// on the row's latest version once locked (in READ COMMITTED; a stricter isolation
/// level fails with a serialization error instead), never on the statement's snapshot,
/// which may predate the repair that found the stream empty. The lock, held to the end
/// of the transaction, keeps repairs away from the stream until the messages are
/// committed or rolled back (a repair that ran before the commit could not see them and
/// would find the stream empty): see [`PgOutboxStore`](crate::PgOutboxStore). Rows are
/// locked in one order.
pub(crate) const OUTBOX_HEADS: &str = "INSERT INTO {schema}.outbox_heads AS h \
     (destination, stream_id, seq) \
     SELECT destination, stream_id, min(seq) FROM ob GROUP BY destination, stream_id \
     ORDER BY destination, stream_id \
     ON CONFLICT (destination, stream_id) DO UPDATE SET seq = EXCLUDED.seq \
     WHERE h.seq IS NULL";

/// Renders the insert and result of one append statement, with or without the
/// outbox's messages (whose parameters start at `first_outbox_param`).
fn append_tail(shape: Shape, outbox: Option<usize>) -> String {
    let Some(p) = outbox else {
        return match shape {
            Shape::One => format!("{APPEND_INSERT_ONE}{APPEND_RESULT_ONE}"),
            Shape::Uniform => format!(
                "{}{APPEND_RESULT_BATCH}",
                APPEND_INSERT_UNIFORM.replace("{ret}", "position")
            ),
            Shape::General => format!(
                "{}{APPEND_RESULT_BATCH}",
                APPEND_INSERT_BATCH.replace("{ret}", "position")
            ),
        };
    };
    let ob = APPEND_OUTBOX
        .replace("{heads}", OUTBOX_HEADS)
        .replace("{p}", &p.to_string())
        .replace("{q}", &(p + 1).to_string())
        .replace("{r}", &(p + 2).to_string());
    match shape {
        Shape::One => format!(
            ", ins AS ({APPEND_INSERT_ONE}{OUTBOX_RETURNING}) {ob}SELECT {APPEND_RESULT_ONE} FROM ins"
        ),
        Shape::Uniform => format!(
            "{}{ob}{APPEND_RESULT_BATCH}",
            APPEND_INSERT_UNIFORM.replace("{ret}", OUTBOX_RETURNING)
        ),
        Shape::General => format!(
            "{}{ob}{APPEND_RESULT_BATCH}",
            APPEND_INSERT_BATCH.replace("{ret}", OUTBOX_RETURNING)
        ),
    }
}

/// The shape of an append's events, which decides how they travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    /// One event: scalars.
    One,
    /// Events sharing type, schema version, codec and metadata: ids and payloads as
    /// arrays, the rest as scalars.
    Uniform,
    /// Anything else: one array per column.
    General,
}

/// Which of the three append statements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AppendKind {
    /// `Any`: create or update the stream row.
    Any,
    /// `NoStream` / `Exact(0)`: create the stream row.
    New,
    /// `StreamExists` / `Exact(n)`: compare-and-set the stream row.
    Existing,
}

/// Every statement of one store, rendered for its schema.
#[derive(Debug)]
pub(crate) struct Statements {
    /// Indexed by [`AppendKind`], then by "in a caller's transaction", then by
    /// [`Shape`].
    pub append: [[[Stmt; 3]; 2]; 3],
    /// The same, also writing outbox messages (see [`APPEND_OUTBOX`]).
    pub append_outbox: [[[Stmt; 3]; 2]; 3],
    /// The messages of an append whose routes transform, written by a second statement
    /// in the append's transaction: $1 ids, $2 destinations, $3 event ids, $4 codecs
    /// and $5 bodies (NULL: the event's own).
    pub outbox_insert: Stmt,
    /// $1 stream, $2 ids: the stream's version, and the stored events of the ids with
    /// their index in the append (`ord`, last column).
    pub append_lookup: Stmt,
    pub read_stream: Stmt,
    pub stream_version: Stmt,
    pub stream_info: Stmt,
    /// Indexed by [`filter_index`].
    pub feed: Vec<Stmt>,
    pub head: Stmt,
    pub lag: Stmt,
    /// The announcer's NOTIFY ($1 the events channel), committed asynchronously.
    pub notify: Stmt,
    /// The announcer's NOTIFY of both channels ($1 events, $2 outbox).
    pub notify_outbox: Stmt,
    /// A NOTIFY inside a caller's transaction ($1 the events channel): it must not
    /// change how that transaction commits.
    pub notify_in_tx: Stmt,
    /// The same, for both channels ($1 events, $2 outbox).
    pub notify_outbox_in_tx: Stmt,
    pub save_snapshot: Stmt,
    pub load_snapshot: Stmt,
    pub delete_snapshot: Stmt,
    pub load_checkpoint: Stmt,
    pub save_checkpoint: Stmt,
}

/// The index of the feed statement for a filter with these axes set.
pub(crate) fn filter_index(types: bool, streams: bool, categories: bool) -> usize {
    usize::from(types) | (usize::from(streams) << 1) | (usize::from(categories) << 2)
}

fn feed_template(index: usize) -> String {
    let types = index & 1 != 0;
    let streams = index & 2 != 0;
    let categories = index & 4 != 0;
    let mut conds = String::new();
    let mut param = 4;
    if types {
        conds.push_str(&format!(" AND event_type = ANY(${param}::text[])"));
        param += 1;
    }
    if streams {
        conds.push_str(&format!(" AND stream_id = ANY(${param}::text[])"));
        param += 1;
    }
    if categories {
        conds.push_str(&format!(" AND category = ANY(${param}::text[])"));
    }
    if index == 0 {
        // Unfiltered: a short page ends at the last returned row.
        format!(
            "SELECT false AS tail, {EVENT_COLUMNS} FROM {{schema}}.events \
             WHERE tx < {HORIZON} AND (tx, position) > ($1, $2) \
             ORDER BY tx, position LIMIT $3"
        )
    } else {
        // Filtered: the page, plus the last row below the horizon (the `tail`), read
        // in the same snapshot, so that a short page can move the cursor past rows
        // that did not match.
        format!(
            "WITH h AS MATERIALIZED (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS x) \
             (SELECT false AS tail, {EVENT_COLUMNS} FROM {{schema}}.events \
              WHERE tx < (SELECT x FROM h) AND (tx, position) > ($1, $2){conds} \
              ORDER BY tx, position LIMIT $3) \
             UNION ALL \
             (SELECT true, tx, position, NULL::uuid, NULL::text, NULL::bigint, NULL::text, \
              NULL::int4, NULL::text, NULL::bytea, NULL::jsonb, NULL::timestamptz \
              FROM {{schema}}.events WHERE tx < (SELECT x FROM h) \
              ORDER BY tx DESC, position DESC LIMIT 1)"
        )
    }
}

impl Statements {
    pub(crate) fn new(schema: &SchemaName) -> Self {
        let st = |t: &str| Stmt::new(t, schema);
        // `outbox`: whether the statement writes messages; their parameters follow
        // the append's ($10 on, or $12 on for `Existing`).
        let append = |head: &str, outbox: bool| {
            let first_outbox_param = if head == APPEND_EXISTING_ST { 12 } else { 10 };
            [false, true].map(|in_tx| {
                [Shape::One, Shape::Uniform, Shape::General].map(|shape| {
                    let probe = match (in_tx, shape) {
                        (false, _) => "",
                        (true, Shape::One) => PROBE_ONE,
                        (true, _) => PROBE_BATCH,
                    };
                    let tail = append_tail(shape, outbox.then_some(first_outbox_param));
                    st(&format!("{}{tail}", head.replace("{probe}", probe)))
                })
            })
        };
        Statements {
            append: [
                append(APPEND_ANY_ST, false),
                append(APPEND_NEW_ST, false),
                append(APPEND_EXISTING_ST, false),
            ],
            append_outbox: [
                append(APPEND_ANY_ST, true),
                append(APPEND_NEW_ST, true),
                append(APPEND_EXISTING_ST, true),
            ],
            // The messages of transforming routes, written by the append's second
            // statement (its transaction holds the stream's row), with their heads as
            // in [`APPEND_OUTBOX`]. The INSERT of the messages comes last, for the
            // caller counts its rows: their `seq` is drawn first from the column's
            // sequence, in `om` (evaluated after its sort, so in message order), and
            // written explicitly.
            outbox_insert: st(&format!(
                "WITH om AS (\
                   SELECT nextval((SELECT pg_get_serial_sequence('{{schema}}.outbox', 'seq'))::regclass) \
                     AS seq, m.id, \
                   m.destination, e.stream_id, e.event_id, e.event_type, e.version, e.tx, \
                   e.position, COALESCE(m.codec, e.codec) AS codec, \
                   COALESCE(m.payload, e.payload) AS payload, e.metadata, e.recorded_at \
                   FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::bytea[]) \
                   WITH ORDINALITY AS m(id, destination, event_id, codec, payload, ord) \
                   JOIN {{schema}}.events e ON e.event_id = m.event_id \
                   ORDER BY m.ord), \
                 oh AS ({heads}) \
                 INSERT INTO {{schema}}.outbox \
                 (seq, id, destination, stream_id, event_id, event_type, stream_version, tx, \
                 position, codec, payload, metadata, created_at, next_attempt_at) \
                 OVERRIDING SYSTEM VALUE \
                 SELECT seq, id, destination, stream_id, event_id, event_type, version, tx, \
                 position, codec, payload, metadata, recorded_at, statement_timestamp() \
                 FROM om",
                heads = OUTBOX_HEADS.replace("FROM ob", "FROM om"),
            )),
            append_lookup: st(
                "SELECT false AS found, NULL::xid8 AS tx, NULL::bigint AS position, NULL::uuid AS event_id, \
                 NULL::text AS stream_id, \
                 (SELECT version FROM {schema}.streams WHERE stream_id = $1) AS version, \
                 NULL::text AS event_type, NULL::int4 AS schema_version, NULL::text AS codec, \
                 NULL::bytea AS payload, NULL::jsonb AS metadata, NULL::timestamptz AS recorded_at, \
                 0::bigint AS ord \
                 UNION ALL \
                 SELECT true, e.tx, e.position, e.event_id, e.stream_id, e.version, e.event_type, \
                 e.schema_version, e.codec, e.payload, e.metadata, e.recorded_at, u.ord \
                 FROM unnest($2::uuid[]) WITH ORDINALITY AS u(id, ord) \
                 JOIN {schema}.events e ON e.event_id = u.id",
            ),
            read_stream: st(&format!(
                "SELECT {EVENT_COLUMNS} FROM {{schema}}.events \
                 WHERE stream_id = $1 AND version >= $2 ORDER BY version LIMIT $3"
            )),
            stream_version: st("SELECT version FROM {schema}.streams WHERE stream_id = $1"),
            stream_info: st(
                "SELECT version, created_at, updated_at FROM {schema}.streams WHERE stream_id = $1",
            ),
            feed: (0..8).map(|i| st(&feed_template(i))).collect(),
            head: st(&format!(
                "SELECT tx, position FROM {{schema}}.events WHERE tx < {HORIZON} \
                 ORDER BY tx DESC, position DESC LIMIT 1"
            )),
            lag: st(LAG_SQL),
            notify: st("SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, '')"),
            notify_outbox: st(
                "SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, ''), \
                 pg_notify($2, '')",
            ),
            notify_in_tx: st("SELECT pg_notify($1, '')"),
            notify_outbox_in_tx: st("SELECT pg_notify($1, ''), pg_notify($2, '')"),
            save_snapshot: st("INSERT INTO {schema}.snapshots AS s \
                 (stream_id, aggregate_type, version, schema_version, codec, payload, taken_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (stream_id) DO UPDATE SET aggregate_type = EXCLUDED.aggregate_type, \
                 version = EXCLUDED.version, schema_version = EXCLUDED.schema_version, \
                 codec = EXCLUDED.codec, payload = EXCLUDED.payload, taken_at = EXCLUDED.taken_at \
                 WHERE s.version <= EXCLUDED.version"),
            load_snapshot: st(
                "SELECT aggregate_type, version, schema_version, codec, payload, taken_at \
                 FROM {schema}.snapshots WHERE stream_id = $1",
            ),
            delete_snapshot: st("DELETE FROM {schema}.snapshots WHERE stream_id = $1"),
            load_checkpoint: st("SELECT position FROM {schema}.checkpoints WHERE name = $1"),
            save_checkpoint: st(
                "INSERT INTO {schema}.checkpoints (name, position, updated_at) \
                 VALUES ($1, $2, statement_timestamp()) \
                 ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position, \
                 updated_at = EXCLUDED.updated_at",
            ),
        }
    }

    pub(crate) fn append(&self, kind: AppendKind, in_tx: bool, shape: Shape) -> &Stmt {
        &self.append[Self::kind_index(kind)][usize::from(in_tx)][Self::shape_index(shape)]
    }

    /// The append statement that also writes outbox messages.
    pub(crate) fn append_outbox(&self, kind: AppendKind, in_tx: bool, shape: Shape) -> &Stmt {
        &self.append_outbox[Self::kind_index(kind)][usize::from(in_tx)][Self::shape_index(shape)]
    }

    fn kind_index(kind: AppendKind) -> usize {
        match kind {
            AppendKind::Any => 0,
            AppendKind::New => 1,
            AppendKind::Existing => 2,
        }
    }

    fn shape_index(shape: Shape) -> usize {
        match shape {
            Shape::One => 0,
            Shape::Uniform => 1,
            Shape::General => 2,
        }
    }
}

/// The feed's lag, in one statement (one snapshot).
const LAG_SQL: &str = "WITH snap AS MATERIALIZED (SELECT pg_current_snapshot() AS s), \
     w AS MATERIALIZED (SELECT count(*) AS n, min(recorded_at) AS oldest FROM {schema}.events \
       WHERE tx >= (SELECT pg_snapshot_xmin(s) FROM snap)), \
     a AS MATERIALIZED (SELECT pid, datname::text AS datname, state, xact_start, \
       backend_xid::text AS xid FROM pg_stat_activity WHERE backend_xid IS NOT NULL \
       ORDER BY age(backend_xid) DESC LIMIT 1), \
     p AS MATERIALIZED (SELECT gid, prepared, transaction::text AS xid FROM pg_prepared_xacts \
       ORDER BY age(transaction) DESC LIMIT 1) \
     SELECT (SELECT pg_snapshot_xmin(s) FROM snap) AS xmin, \
       (SELECT pg_snapshot_xmax(s) FROM snap) AS xmax, \
       (SELECT n FROM w) AS waiting, (SELECT oldest FROM w) AS oldest_waiting, \
       statement_timestamp() AS now, \
       (SELECT pid FROM a) AS writer_pid, (SELECT datname FROM a) AS writer_db, \
       (SELECT state FROM a) AS writer_state, (SELECT xact_start FROM a) AS writer_start, \
       (SELECT xid FROM a) AS writer_xid, \
       (SELECT gid FROM p) AS prepared_gid, (SELECT prepared FROM p) AS prepared_at, \
       (SELECT xid FROM p) AS prepared_xid";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names() {
        assert!(SchemaName::new("mink").is_ok());
        assert!(SchemaName::new("_x1").is_ok());
        for bad in ["", "1a", "A", "a-b", "a\"b", "pg_x", "é"] {
            assert!(SchemaName::new(bad).is_err(), "{bad}");
        }
        assert!(SchemaName::new("a".repeat(MAX_SCHEMA_NAME_LEN)).is_ok());
        assert!(SchemaName::new("a".repeat(MAX_SCHEMA_NAME_LEN + 1)).is_err());
        let s = SchemaName::new("a".repeat(MAX_SCHEMA_NAME_LEN)).unwrap();
        assert!(s.channel().len() <= 63);
        assert!(s.outbox_channel().len() <= 63);
    }

    #[test]
    fn statements_render_the_schema() {
        let s = Statements::new(&SchemaName::new("abc").unwrap());
        for kind in [AppendKind::Any, AppendKind::New, AppendKind::Existing] {
            for in_tx in [false, true] {
                for shape in [Shape::One, Shape::Uniform, Shape::General] {
                    let sql = s.append(kind, in_tx, shape).sql();
                    assert!(sql.as_str().contains("\"abc\".events"));
                    assert!(!sql.as_str().contains('{'));
                    assert_eq!(sql.as_str().contains("NOT EXISTS"), in_tx);
                    assert_eq!(sql.as_str().contains("unnest"), shape != Shape::One);
                    assert_eq!(sql.as_str().contains("$5::text[]"), shape == Shape::General);
                }
            }
        }
        for kind in [AppendKind::Any, AppendKind::New, AppendKind::Existing] {
            let first = if kind == AppendKind::Existing { 12 } else { 10 };
            for in_tx in [false, true] {
                for shape in [Shape::One, Shape::Uniform, Shape::General] {
                    let sql = s.append_outbox(kind, in_tx, shape).sql();
                    let sql = sql.as_str();
                    assert!(sql.contains("\"abc\".outbox"), "{sql}");
                    assert!(!sql.contains('{'), "{sql}");
                    assert_eq!(sql.contains("NOT EXISTS"), in_tx);
                    assert!(sql.contains(&format!("${first}::int8[]")), "{sql}");
                    assert!(sql.contains(&format!("${}::uuid[]", first + 2)), "{sql}");
                    assert!(!sql.contains(&format!("${}", first + 3)), "{sql}");
                    // The plain statements are untouched by the outbox.
                    assert!(
                        !s.append(kind, in_tx, shape)
                            .sql()
                            .as_str()
                            .contains("outbox")
                    );
                }
            }
        }
        for f in &s.feed {
            assert!(!f.sql().as_str().contains('{'), "{}", f.sql().as_str());
        }
        assert_eq!(filter_index(true, true, true), 7);
        assert!(s.feed[5].sql().as_str().contains("$5::text[]"));
    }
}
