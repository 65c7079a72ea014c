//! [`PgAuditStore`]: the audit log in the `audit_log` table.

use std::fmt;
use std::sync::Arc;

use mink_es::command::audit::{AuditOutcome, AuditQuery, AuditRecord, AuditStore};
use mink_es::{BoxError, Error, Result, Uuid};
use sqlx::Row;
use sqlx::postgres::PgRow;

use super::idempotency::MAX_KEY_LEN;
use super::{BoxFuture, boxed};
use crate::PgEventStore;
use crate::error::{PgStoreError, clip};
use crate::row::limit_i64;
use crate::schema::Stmt;
use crate::time::{InRange, PgTime};

/// An [`AuditStore`] in the schema of a [`PgEventStore`], for the
/// [`Audit`](mink_es::command::audit::Audit) middleware.
///
/// Build it with [`PgEventStore::audit_store`] (or [`PgAuditStore::new`]); it uses the
/// store's pool, and cloning it gives another handle to the same log. Its semantics are
/// those of [`MemoryAuditStore`](mink_es::command::audit::MemoryAuditStore), made
/// durable:
///
/// * [`append`](AuditStore::append) adds one row to `audit_log`; the log is
///   append-only (nothing here updates or deletes a row). Like the memory store it
///   does not refuse an id it already holds: the ids of [`Audit`] are fresh UUIDv7s.
/// * [`query`](AuditStore::query) filters by user, command type and `started_at`
///   (`from` inclusive, `to` exclusive), orders by `(started_at, id)` — oldest first,
///   or newest first with [`AuditQuery::newest_first`]; rows equal on both come in
///   append order, reversed for newest first — then skips `offset` rows and returns at
///   most `limit`. An index serves each filter in that order, so no query sorts.
///
/// Every field round-trips, [`AuditOutcome::Failed`]'s kind and message byte for byte.
/// `started_at` is kept to the microsecond (finer digits are dropped, as
/// [`mink_es::now_micros`], which the middleware uses, does), and a `duration_us`
/// above `i64::MAX` (about 292,000 years) is kept as `i64::MAX`.
///
/// PostgreSQL cannot store a NUL character in text, a time before 4714 BC, nor index
/// very long text: an entry with a NUL in any text field, starting before 4714 BC, or
/// whose command type or user id is longer than 2048 bytes is refused with an
/// [`Error::InvalidArgument`] naming the field, and nothing is written.
///
/// Errors are [`mink_es::Error`]s, boxed, so they downcast: a driver failure is an
/// [`Error::Backend`] whose message says what failed and that keeps
/// [`is_retryable`](mink_es::Error::is_retryable); a row that cannot be read back is a
/// non-transient one naming the row, never a panic.
///
/// [`Audit`]: mink_es::command::audit::Audit
///
/// ```no_run
/// # async fn f() -> Result<(), mink_es::BoxError> {
/// use mink_es::command::audit::{AuditOutcome, AuditQuery, AuditRecord, AuditStore};
/// use mink_es::Uuid;
/// use mink_postgres::PgEventStore;
///
/// let store = PgEventStore::connect("postgres://app@localhost/app").await?;
/// store.migrate().await?;
/// let audit = store.audit_store();
/// let record = AuditRecord {
///     id: Uuid::now_v7(),
///     command_id: Uuid::now_v7(),
///     command: "PlaceOrder".into(),
///     aggregate_id: Some("order-1".into()),
///     user_id: Some("alice".into()),
///     tenant_id: None,
///     correlation_id: None,
///     outcome: AuditOutcome::Failed { kind: "rejected".into(), message: "out of stock".into() },
///     started_at: mink_es::now_micros(),
///     duration_us: 1_250,
/// };
/// audit.append(&record).await?;
/// let alices = audit
///     .query(&AuditQuery { user_id: Some("alice".into()), newest_first: true, ..Default::default() })
///     .await?;
/// assert_eq!(alices.first(), Some(&record));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgAuditStore {
    store: PgEventStore,
    sql: Arc<Statements>,
}

impl fmt::Debug for PgAuditStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgAuditStore")
            .field("schema", self.store.schema())
            .finish_non_exhaustive()
    }
}

impl PgEventStore {
    /// The audit log kept in this store's schema, on this store's pool.
    ///
    /// See [`PgAuditStore`].
    pub fn audit_store(&self) -> PgAuditStore {
        PgAuditStore::new(self)
    }
}

/// The columns [`read_record`] reads, in order.
const AUDIT_COLUMNS: &str = "seq, id, command_id, command, aggregate_id, user_id, tenant_id, \
     correlation_id, outcome, error_kind, error_message, started_at, duration_us";

/// Which filters a query has, as bits of the index into [`Statements::query`].
const BY_USER: usize = 1;
const BY_COMMAND: usize = 2;
const FROM: usize = 4;
const TO: usize = 8;
const NEWEST_FIRST: usize = 16;

/// The store's statements, rendered for its schema.
#[derive(Debug)]
struct Statements {
    append: Stmt,
    /// Indexed by the bits above.
    query: Vec<Stmt>,
}

/// The query with the filters of `bits`: parameters in the order user, command, from,
/// to (those present), then limit and offset.
fn query_template(bits: usize) -> String {
    let mut conditions = Vec::with_capacity(4);
    let mut param = 1;
    for (bit, condition) in [
        (BY_USER, "user_id ="),
        (BY_COMMAND, "command ="),
        (FROM, "started_at >="),
        (TO, "started_at <"),
    ] {
        if bits & bit != 0 {
            conditions.push(format!("{condition} ${param}"));
            param += 1;
        }
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    };
    let order = if bits & NEWEST_FIRST != 0 {
        "DESC"
    } else {
        "ASC"
    };
    format!(
        "SELECT {AUDIT_COLUMNS} FROM {{schema}}.audit_log{filter} \
         ORDER BY started_at {order}, id {order}, seq {order} \
         LIMIT ${param} OFFSET ${}",
        param + 1
    )
}

impl Statements {
    fn new(store: &PgEventStore) -> Self {
        let schema = store.schema();
        Statements {
            append: Stmt::new(
                "INSERT INTO {schema}.audit_log (id, command_id, command, aggregate_id, user_id, \
                   tenant_id, correlation_id, outcome, error_kind, error_message, started_at, \
                   duration_us) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                schema,
            ),
            query: (0..32)
                .map(|bits| Stmt::new(&query_template(bits), schema))
                .collect(),
        }
    }
}

/// Refuses what PostgreSQL cannot store, before anything is sent.
fn check_storable(r: &AuditRecord) -> Result<PgTime> {
    let (kind, message) = match &r.outcome {
        AuditOutcome::Failed { kind, message } => (Some(kind.as_str()), Some(message.as_str())),
        AuditOutcome::Started | AuditOutcome::Succeeded => (None, None),
    };
    let texts = [
        ("command", Some(r.command.as_str())),
        ("aggregate_id", r.aggregate_id.as_deref()),
        ("user_id", r.user_id.as_deref()),
        ("tenant_id", r.tenant_id.as_deref()),
        ("correlation_id", r.correlation_id.as_deref()),
        ("the failure's kind", kind),
        ("the failure's message", message),
    ];
    for (field, value) in texts {
        if value.is_some_and(|v| v.contains('\0')) {
            return Err(Error::InvalidArgument(format!(
                "{field} contains a NUL character, which PostgreSQL cannot store"
            )));
        }
    }
    for (field, value) in [
        ("command", Some(&r.command)),
        ("user_id", r.user_id.as_ref()),
    ] {
        if let Some(v) = value.filter(|v| v.len() > MAX_KEY_LEN) {
            return Err(Error::InvalidArgument(format!(
                "{field} is {} bytes long; the limit is {MAX_KEY_LEN}",
                v.len()
            )));
        }
    }
    match PgTime::floor(r.started_at) {
        InRange::At(t) => Ok(t),
        InRange::Before | InRange::After => Err(Error::InvalidArgument(format!(
            "started_at {} is outside the times PostgreSQL stores (4714 BC to 294276 AD)",
            r.started_at
        ))),
    }
}

/// A query's bounds as bound, or `None` when no stored entry can match.
struct Bounds {
    from: Option<PgTime>,
    to: Option<PgTime>,
}

fn bounds(q: &AuditQuery) -> Option<Bounds> {
    // Stored times are within PostgreSQL's range: a bound beyond it either holds for
    // every entry (then it is left out) or for none.
    let from = match q.from.map(PgTime::ceil) {
        None | Some(InRange::Before) => None,
        Some(InRange::At(t)) => Some(t),
        Some(InRange::After) => return None,
    };
    let to = match q.to.map(PgTime::ceil) {
        None | Some(InRange::After) => None,
        Some(InRange::At(t)) => Some(t),
        Some(InRange::Before) => return None,
    };
    Some(Bounds { from, to })
}

impl PgAuditStore {
    /// The audit log kept in `store`'s schema, on `store`'s pool (the same as
    /// [`PgEventStore::audit_store`]).
    pub fn new(store: &PgEventStore) -> Self {
        PgAuditStore {
            sql: Arc::new(Statements::new(store)),
            store: store.clone(),
        }
    }

    /// The event store whose schema and pool this store uses.
    pub fn store(&self) -> &PgEventStore {
        &self.store
    }

    async fn append_record(&self, r: &AuditRecord) -> Result<()> {
        let started_at = check_storable(r)?;
        let (outcome, kind, message) = match &r.outcome {
            AuditOutcome::Started => ("started", None, None),
            AuditOutcome::Succeeded => ("succeeded", None, None),
            AuditOutcome::Failed { kind, message } => {
                ("failed", Some(kind.as_str()), Some(message.as_str()))
            }
        };
        sqlx::query(self.sql.append.sql())
            .bind(r.id)
            .bind(r.command_id)
            .bind(r.command.as_str())
            .bind(r.aggregate_id.as_deref())
            .bind(r.user_id.as_deref())
            .bind(r.tenant_id.as_deref())
            .bind(r.correlation_id.as_deref())
            .bind(outcome)
            .bind(kind)
            .bind(message)
            .bind(started_at)
            .bind(i64::try_from(r.duration_us).unwrap_or(i64::MAX))
            .execute(self.store.pool())
            .await
            .map_err(|e| self.store.map_err(e))?;
        Ok(())
    }

    async fn query_records(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>> {
        let has_nul = |v: &Option<String>| v.as_ref().is_some_and(|v| v.contains('\0'));
        if q.limit == 0 || has_nul(&q.user_id) || has_nul(&q.command) {
            // No stored entry holds a NUL.
            return Ok(Vec::new());
        }
        let Some(Bounds { from, to }) = bounds(q) else {
            return Ok(Vec::new());
        };
        let mut bits = 0;
        for (present, bit) in [
            (q.user_id.is_some(), BY_USER),
            (q.command.is_some(), BY_COMMAND),
            (from.is_some(), FROM),
            (to.is_some(), TO),
            (q.newest_first, NEWEST_FIRST),
        ] {
            if present {
                bits |= bit;
            }
        }
        let mut query = sqlx::query(self.sql.query[bits].sql());
        if let Some(user) = &q.user_id {
            query = query.bind(user.as_str());
        }
        if let Some(command) = &q.command {
            query = query.bind(command.as_str());
        }
        if let Some(from) = from {
            query = query.bind(from);
        }
        if let Some(to) = to {
            query = query.bind(to);
        }
        let rows = query
            .bind(limit_i64(q.limit))
            .bind(limit_i64(q.offset))
            .fetch_all(self.store.pool())
            .await
            .map_err(|e| self.store.map_err(e))?;
        rows.iter().map(read_record).collect()
    }
}

/// Reads one row of [`AUDIT_COLUMNS`], refusing anything this store did not write.
fn read_record(row: &PgRow) -> Result<AuditRecord> {
    let corrupt = |detail: String| -> Error {
        PgStoreError::Corrupt {
            what: "audit_log",
            detail,
        }
        .into()
    };
    let seq: i64 = row
        .try_get(0)
        .map_err(|e| corrupt(format!("an audit row has no readable seq: {e}")))?;
    let bad = |what: String| corrupt(format!("audit row {seq} is corrupt: {what}"));
    let uuid = |i: usize, name: &str| -> Result<Uuid> {
        row.try_get::<Option<Uuid>, _>(i)
            .map_err(|e| bad(format!("{name}: {e}")))?
            .ok_or_else(|| bad(format!("{name} is missing")))
    };
    let text = |i: usize, name: &str| -> Result<Option<String>> {
        row.try_get::<Option<String>, _>(i)
            .map_err(|e| bad(format!("{name}: {e}")))
    };
    let required = |i: usize, name: &str| -> Result<String> {
        text(i, name)?.ok_or_else(|| bad(format!("{name} is missing")))
    };
    let kind = text(9, "error_kind")?;
    let message = text(10, "error_message")?;
    let outcome = match (required(8, "outcome")?.as_str(), kind, message) {
        ("started", None, None) => AuditOutcome::Started,
        ("succeeded", None, None) => AuditOutcome::Succeeded,
        ("failed", Some(kind), Some(message)) => AuditOutcome::Failed { kind, message },
        (other, kind, message) => {
            return Err(bad(format!(
                "outcome {:?} with{} error_kind and with{} error_message",
                clip(other),
                if kind.is_some() { "" } else { "out" },
                if message.is_some() { "" } else { "out" },
            )));
        }
    };
    let started_at = row
        .try_get::<Option<PgTime>, _>(11)
        .map_err(|e| bad(format!("started_at: {e}")))?
        .ok_or_else(|| bad("started_at is missing".to_owned()))?;
    let started_at = started_at.to_datetime().ok_or_else(|| {
        bad(format!(
            "started_at ({} µs after 2000) is out of range",
            started_at.0
        ))
    })?;
    let duration_us = row
        .try_get::<Option<i64>, _>(12)
        .map_err(|e| bad(format!("duration_us: {e}")))?
        .ok_or_else(|| bad("duration_us is missing".to_owned()))?;
    Ok(AuditRecord {
        id: uuid(1, "id")?,
        command_id: uuid(2, "command_id")?,
        command: required(3, "command")?,
        aggregate_id: text(4, "aggregate_id")?,
        user_id: text(5, "user_id")?,
        tenant_id: text(6, "tenant_id")?,
        correlation_id: text(7, "correlation_id")?,
        outcome,
        started_at,
        duration_us: u64::try_from(duration_us)
            .map_err(|_| bad(format!("duration_us {duration_us} is negative")))?,
    })
}

impl AuditStore for PgAuditStore {
    fn append<'a>(
        &'a self,
        record: &'a AuditRecord,
    ) -> BoxFuture<'a, std::result::Result<(), BoxError>> {
        Box::pin(async move {
            self.append_record(record).await.map_err(|e| {
                boxed(e, || {
                    format!(
                        "cannot append audit entry {} (command {} {})",
                        record.id,
                        clip(&record.command),
                        record.command_id
                    )
                })
            })
        })
    }

    fn query<'a>(
        &'a self,
        query: &'a AuditQuery,
    ) -> BoxFuture<'a, std::result::Result<Vec<AuditRecord>, BoxError>> {
        Box::pin(async move {
            self.query_records(query)
                .await
                .map_err(|e| boxed(e, || "cannot query the audit log".to_owned()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_templates_number_their_parameters() {
        assert_eq!(
            query_template(0),
            format!(
                "SELECT {AUDIT_COLUMNS} FROM {{schema}}.audit_log \
                 ORDER BY started_at ASC, id ASC, seq ASC LIMIT $1 OFFSET $2"
            )
        );
        let all = query_template(BY_USER | BY_COMMAND | FROM | TO | NEWEST_FIRST);
        assert!(
            all.contains(
                " WHERE user_id = $1 AND command = $2 AND started_at >= $3 AND started_at < $4 \
                 ORDER BY started_at DESC, id DESC, seq DESC LIMIT $5 OFFSET $6"
            ),
            "{all}"
        );
        let some = query_template(BY_COMMAND | TO);
        assert!(
            some.contains(" WHERE command = $1 AND started_at < $2 ORDER BY"),
            "{some}"
        );
        assert!(some.ends_with("LIMIT $3 OFFSET $4"), "{some}");
    }

    fn record() -> AuditRecord {
        AuditRecord {
            id: Uuid::from_u128(1),
            command_id: Uuid::from_u128(2),
            command: "Place".into(),
            aggregate_id: None,
            user_id: Some("alice".into()),
            tenant_id: None,
            correlation_id: None,
            outcome: AuditOutcome::Succeeded,
            started_at: mink_es::now_micros(),
            duration_us: 0,
        }
    }

    #[test]
    fn entries_postgres_cannot_hold_are_refused_naming_the_field() {
        assert!(check_storable(&record()).is_ok());
        let refused = |r: AuditRecord, needle: &str| match check_storable(&r) {
            Err(Error::InvalidArgument(m)) => assert!(m.contains(needle), "{m}"),
            other => panic!("{other:?}"),
        };
        refused(
            AuditRecord {
                outcome: AuditOutcome::Failed {
                    kind: "rejected".into(),
                    message: "a\0b".into(),
                },
                ..record()
            },
            "the failure's message contains a NUL",
        );
        refused(
            AuditRecord {
                tenant_id: Some("\0".into()),
                ..record()
            },
            "tenant_id",
        );
        refused(
            AuditRecord {
                user_id: Some("u".repeat(MAX_KEY_LEN + 1)),
                ..record()
            },
            "user_id is 2049 bytes",
        );
        refused(
            AuditRecord {
                started_at: chrono::DateTime::<chrono::Utc>::MIN_UTC,
                ..record()
            },
            "outside the times",
        );
    }

    /// Drops a test schema when dropped, also when the test panics.
    struct DropSchema(String, crate::SchemaName);

    impl Drop for DropSchema {
        fn drop(&mut self) {
            let (url, schema) = (self.0.clone(), self.1.clone());
            // Its own runtime on its own thread: this may run during a panic.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let pool = sqlx::PgPool::connect(&url).await.unwrap();
                    crate::migrate::drop_schema(&pool, &schema).await.unwrap();
                    pool.close().await;
                });
            })
            .join();
        }
    }

    /// Every query the store sends is served by an index in its order: with sorting
    /// and sequential scans priced out, no plan sorts or reads the whole table (needs
    /// `MINK_POSTGRES_URL`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_query_is_served_by_an_index_in_its_order() {
        let Some(url) = mink_testing::services::service_url("MINK_POSTGRES_URL") else {
            return;
        };
        let schema = format!("mink_t_{:016x}", rand::random::<u64>());
        let store = PgEventStore::builder(&url)
            .schema(&schema)
            .max_connections(2)
            .build()
            .await
            .unwrap();
        let _drop = DropSchema(url.clone(), store.schema().clone());
        store.migrate().await.unwrap();
        let audit = store.audit_store();
        let t0 = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        for n in 0..300u32 {
            audit
                .append(&AuditRecord {
                    id: Uuid::now_v7(),
                    command: ["Place", "Cancel"][n as usize % 2].into(),
                    user_id: Some(["alice", "bob", "carol"][n as usize % 3].into()),
                    started_at: t0 + chrono::TimeDelta::seconds(i64::from(n)),
                    ..record()
                })
                .await
                .unwrap();
        }
        let quoted = store.schema().quoted();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ANALYZE {quoted}.audit_log")))
            .execute(store.pool())
            .await
            .unwrap();
        let mut tx = store.begin().await.unwrap();
        sqlx::raw_sql("SET LOCAL enable_sort = off; SET LOCAL enable_seqscan = off")
            .execute(&mut *tx)
            .await
            .unwrap();
        let from = PgTime::floor(t0 + chrono::TimeDelta::seconds(100));
        let to = PgTime::floor(t0 + chrono::TimeDelta::seconds(200));
        let (InRange::At(from), InRange::At(to)) = (from, to) else {
            panic!("in range")
        };
        for bits in 0..32 {
            let sql = format!("EXPLAIN {}", audit.sql.query[bits].sql().as_str());
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            if bits & BY_USER != 0 {
                q = q.bind("alice");
            }
            if bits & BY_COMMAND != 0 {
                q = q.bind("Place");
            }
            if bits & FROM != 0 {
                q = q.bind(from);
            }
            if bits & TO != 0 {
                q = q.bind(to);
            }
            let rows = q.bind(10i64).bind(5i64).fetch_all(&mut *tx).await.unwrap();
            let plan = rows
                .iter()
                .map(|r| r.get::<String, _>(0))
                .collect::<Vec<_>>()
                .join("\n");
            // The planner picks among the indexes that give the order (by time with a
            // filter, say, when the time range is the most selective condition).
            let mut usable = vec!["audit_log_by_time_idx"];
            if bits & BY_USER != 0 {
                usable.push("audit_log_by_user_idx");
            }
            if bits & BY_COMMAND != 0 {
                usable.push("audit_log_by_command_idx");
            }
            assert!(
                usable.iter().any(
                    |i| plan.contains(&format!("Index Scan Backward using {i} "))
                        || plan.contains(&format!("Index Scan using {i} "))
                ),
                "{bits:05b}: {plan}"
            );
            assert!(!plan.contains("Sort"), "{bits:05b} sorts: {plan}");
            assert!(!plan.contains("Seq Scan"), "{bits:05b}: {plan}");
            if bits & NEWEST_FIRST != 0 {
                assert!(plan.contains("Backward"), "{bits:05b}: {plan}");
            }
        }
        tx.rollback().await.unwrap();
    }

    #[test]
    fn bounds_beyond_postgres_range_hold_for_all_or_none() {
        let min = chrono::DateTime::<chrono::Utc>::MIN_UTC;
        let max = chrono::DateTime::<chrono::Utc>::MAX_UTC;
        let q = |from, to| AuditQuery {
            from,
            to,
            ..Default::default()
        };
        let b = bounds(&q(Some(min), None)).unwrap();
        assert!(
            b.from.is_none() && b.to.is_none(),
            "from the dawn of time: all"
        );
        assert!(bounds(&q(None, Some(min))).is_none(), "until then: none");
        let b = bounds(&q(Some(max), Some(max))).unwrap();
        assert!(b.from.is_some() && b.to.is_some());
    }
}
