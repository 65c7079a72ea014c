//! [`SqliteAuditStore`]: the audit log in the `mink_audit` table.

use std::fmt;

use chrono::{DateTime, Utc};
use mink_es::command::audit::{AuditOutcome, AuditQuery, AuditRecord, AuditStore};
use mink_es::{BoxError, Result, Uuid};
use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use rusqlite::{Connection, Row, params};

use super::{BoxFuture, boxed};
use crate::SqliteStore;
use crate::error::{backend_msg, map_err};
use crate::row::micros_to_time;

/// An [`AuditStore`] in the SQLite file of a [`SqliteStore`], for the
/// [`Audit`](mink_es::command::audit::Audit) middleware.
///
/// Build it with [`SqliteStore::audit_store`] (or [`SqliteAuditStore::new`]); it shares
/// the store's connections (appends take the writer, queries a read connection), and
/// cloning it gives another handle to the same log. Its semantics are those of
/// [`MemoryAuditStore`](mink_es::command::audit::MemoryAuditStore), made durable:
///
/// * [`append`](AuditStore::append) adds one row to `mink_audit`; the log is
///   append-only (nothing here updates or deletes a row). Like the memory store it
///   does not refuse an id it already holds: the ids of [`Audit`] are fresh UUIDv7s.
/// * [`query`](AuditStore::query) filters by user, command type and `started_at`
///   (`from` inclusive, `to` exclusive), orders by `(started_at, id)` — oldest first,
///   or newest first with [`AuditQuery::newest_first`]; rows equal on both come in
///   append order, reversed for newest first — then skips `offset` rows and returns at
///   most `limit`. Indexes serve each filter in that order.
///
/// Every field round-trips, [`AuditOutcome::Failed`]'s kind and message byte for byte.
/// `started_at` is kept in unix microseconds (finer digits are dropped, as
/// [`mink_es::now_micros`], which the middleware uses, does), and a `duration_us`
/// above `i64::MAX` (about 292,000 years) is kept as `i64::MAX`.
///
/// Errors are [`mink_es::Error`]s, boxed: a driver failure is an
/// [`Error::Backend`](mink_es::Error::Backend) whose message says what failed; a row
/// that cannot be read back is a non-transient one naming the row, never a panic.
///
/// [`Audit`]: mink_es::command::audit::Audit
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use mink_es::command::audit::{AuditOutcome, AuditQuery, AuditRecord, AuditStore};
/// use mink_es::Uuid;
/// use mink_sqlite::SqliteStore;
///
/// let dir = tempfile::tempdir().unwrap();
/// let store = SqliteStore::open(dir.path().join("app.db"))?;
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
/// assert_eq!(alices, vec![record]);
/// # Ok::<(), mink_es::BoxError>(())
/// # });
/// ```
#[derive(Clone)]
pub struct SqliteAuditStore {
    store: SqliteStore,
}

impl fmt::Debug for SqliteAuditStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteAuditStore")
            .field("path", &self.store.path())
            .finish()
    }
}

impl SqliteStore {
    /// The audit log kept in this store's file, on this store's connections.
    ///
    /// See [`SqliteAuditStore`].
    pub fn audit_store(&self) -> SqliteAuditStore {
        SqliteAuditStore::new(self)
    }
}

/// The columns [`read_record`] reads, in order.
const AUDIT_COLUMNS: &str = "seq, id, command_id, command, aggregate_id, user_id, tenant_id, \
     correlation_id, outcome, error_kind, error_message, started_at, duration_us";

impl SqliteAuditStore {
    /// The audit log kept in `store`'s file, on `store`'s connections (the same as
    /// [`SqliteStore::audit_store`]).
    pub fn new(store: &SqliteStore) -> Self {
        SqliteAuditStore {
            store: store.clone(),
        }
    }

    /// The event store whose file and connections this store uses.
    pub fn store(&self) -> &SqliteStore {
        &self.store
    }

    fn append_sync(&self, r: &AuditRecord) -> Result<()> {
        let (outcome, kind, message) = match &r.outcome {
            AuditOutcome::Started => ("started", None, None),
            AuditOutcome::Succeeded => ("succeeded", None, None),
            AuditOutcome::Failed { kind, message } => {
                ("failed", Some(kind.as_str()), Some(message.as_str()))
            }
        };
        let duration = i64::try_from(r.duration_us).unwrap_or(i64::MAX);
        let conn = self.store.writer();
        conn.prepare_cached(
            "INSERT INTO mink_audit (id, command_id, command, aggregate_id, user_id, \
               tenant_id, correlation_id, outcome, error_kind, error_message, started_at, \
               duration_us) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )
        .and_then(|mut s| {
            s.execute(params![
                r.id.as_bytes(),
                r.command_id.as_bytes(),
                r.command,
                r.aggregate_id,
                r.user_id,
                r.tenant_id,
                r.correlation_id,
                outcome,
                kind,
                message,
                r.started_at.timestamp_micros(),
                duration,
            ])
        })
        .map_err(map_err)?;
        Ok(())
    }

    fn query_sync(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>> {
        if q.limit == 0 {
            return Ok(Vec::new());
        }
        let (sql, args) = audit_query(q);
        self.store
            .with_reader(|conn| run_query(conn, &sql, &args, q.limit))
    }
}

/// The SQL of `q`, and its parameters.
fn audit_query(q: &AuditQuery) -> (String, Vec<ToSqlOutput<'_>>) {
    let mut clauses: Vec<(&str, ToSqlOutput<'_>)> = Vec::with_capacity(4);
    if let Some(user) = &q.user_id {
        clauses.push(("user_id =", text(user)));
    }
    if let Some(command) = &q.command {
        clauses.push(("command =", text(command)));
    }
    if let Some(from) = q.from {
        clauses.push(("started_at >=", int(micros_ceil(from))));
    }
    if let Some(to) = q.to {
        clauses.push(("started_at <", int(micros_ceil(to))));
    }
    let mut sql = format!("SELECT {AUDIT_COLUMNS} FROM mink_audit");
    let mut args = Vec::with_capacity(clauses.len() + 2);
    for (i, (clause, arg)) in clauses.into_iter().enumerate() {
        sql.push_str(if i == 0 { " WHERE " } else { " AND " });
        sql.push_str(&format!("{clause} ?{}", i + 1));
        args.push(arg);
    }
    let order = if q.newest_first { "DESC" } else { "ASC" };
    sql.push_str(&format!(
        " ORDER BY started_at {order}, id {order}, seq {order} LIMIT ?{} OFFSET ?{}",
        args.len() + 1,
        args.len() + 2
    ));
    args.push(int(i64::try_from(q.limit).unwrap_or(i64::MAX)));
    args.push(int(i64::try_from(q.offset).unwrap_or(i64::MAX)));
    (sql, args)
}

fn text(v: &str) -> ToSqlOutput<'_> {
    ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes()))
}

fn int(v: i64) -> ToSqlOutput<'static> {
    ToSqlOutput::Owned(Value::Integer(v))
}

/// `t` in unix microseconds, rounded up. Stored times are whole microseconds, so for
/// a stored `s`: `s >= t` exactly when `s >= micros_ceil(t)`, and `s < t` exactly when
/// `s < micros_ceil(t)`.
fn micros_ceil(t: DateTime<Utc>) -> i64 {
    let floor = t.timestamp_micros();
    if t.timestamp_subsec_nanos().is_multiple_of(1000) {
        floor
    } else {
        floor.saturating_add(1)
    }
}

fn run_query(
    conn: &Connection,
    sql: &str,
    args: &[ToSqlOutput<'_>],
    limit: usize,
) -> Result<Vec<AuditRecord>> {
    let mut stmt = conn.prepare_cached(sql).map_err(map_err)?;
    let mut rows = stmt
        .query(rusqlite::params_from_iter(args))
        .map_err(map_err)?;
    let mut out = Vec::with_capacity(limit.min(1024));
    while let Some(row) = rows.next().map_err(map_err)? {
        out.push(read_record(row)?);
    }
    Ok(out)
}

/// Reads one row of [`AUDIT_COLUMNS`], refusing anything this store did not write.
fn read_record(row: &Row<'_>) -> Result<AuditRecord> {
    let seq = match row.get_ref(0).map_err(map_err)? {
        ValueRef::Integer(s) => s,
        _ => return Err(backend_msg("an audit row has a non-integer seq")),
    };
    let bad = |what: &str| backend_msg(format!("audit row {seq} is corrupt: {what}"));
    let get = |i: usize| row.get_ref(i).map_err(map_err);
    let uuid = |i: usize, name: &str| -> Result<Uuid> {
        match get(i)? {
            ValueRef::Blob(b) => {
                Uuid::from_slice(b).map_err(|_| bad(&format!("{name} is not 16 bytes")))
            }
            _ => Err(bad(&format!("{name} is not a blob"))),
        }
    };
    let text = |i: usize, name: &str| -> Result<Option<String>> {
        match get(i)? {
            ValueRef::Null => Ok(None),
            ValueRef::Text(b) => std::str::from_utf8(b)
                .map(|s| Some(s.to_owned()))
                .map_err(|_| bad(&format!("{name} is not valid UTF-8"))),
            _ => Err(bad(&format!("{name} is not text"))),
        }
    };
    let required = |i: usize, name: &str| -> Result<String> {
        text(i, name)?.ok_or_else(|| bad(&format!("{name} is missing")))
    };
    let integer = |i: usize, name: &str| -> Result<i64> {
        match get(i)? {
            ValueRef::Integer(v) => Ok(v),
            _ => Err(bad(&format!("{name} is not an integer"))),
        }
    };
    let kind = text(9, "error_kind")?;
    let message = text(10, "error_message")?;
    let outcome = match (required(8, "outcome")?.as_str(), kind, message) {
        ("started", None, None) => AuditOutcome::Started,
        ("succeeded", None, None) => AuditOutcome::Succeeded,
        ("failed", Some(kind), Some(message)) => AuditOutcome::Failed { kind, message },
        (other, kind, message) => {
            return Err(bad(&format!(
                "outcome {other:?} with{} error_kind and with{} error_message",
                if kind.is_some() { "" } else { "out" },
                if message.is_some() { "" } else { "out" },
            )));
        }
    };
    let started_at = integer(11, "started_at")?;
    let duration_us = integer(12, "duration_us")?;
    Ok(AuditRecord {
        id: uuid(1, "id")?,
        command_id: uuid(2, "command_id")?,
        command: required(3, "command")?,
        aggregate_id: text(4, "aggregate_id")?,
        user_id: text(5, "user_id")?,
        tenant_id: text(6, "tenant_id")?,
        correlation_id: text(7, "correlation_id")?,
        outcome,
        started_at: micros_to_time(started_at)
            .ok_or_else(|| bad(&format!("started_at {started_at} is out of range")))?,
        duration_us: u64::try_from(duration_us)
            .map_err(|_| bad(&format!("duration_us {duration_us} is negative")))?,
    })
}

impl AuditStore for SqliteAuditStore {
    fn append<'a>(
        &'a self,
        record: &'a AuditRecord,
    ) -> BoxFuture<'a, std::result::Result<(), BoxError>> {
        Box::pin(async move {
            self.append_sync(record).map_err(|e| {
                boxed(e, || {
                    format!(
                        "cannot append audit entry {} (command {} {})",
                        record.id, record.command, record.command_id
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
            self.query_sync(query)
                .map_err(|e| boxed(e, || "cannot query the audit log".to_owned()))
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn plan(store: &SqliteStore, q: &AuditQuery) -> String {
        let (sql, args) = audit_query(q);
        let conn = store.writer();
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = stmt
            .query_map(rusqlite::params_from_iter(&args), |r| r.get::<_, String>(3))
            .unwrap();
        rows.map(Result::unwrap).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn each_filter_has_an_index_in_query_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("plan.db")).unwrap();
        let t = DateTime::from_timestamp_micros(1_000_000).unwrap();
        let cases = [
            (AuditQuery::default(), "mink_audit_by_time"),
            (
                AuditQuery {
                    from: Some(t),
                    to: Some(t),
                    ..Default::default()
                },
                "mink_audit_by_time",
            ),
            (
                AuditQuery {
                    user_id: Some("alice".into()),
                    from: Some(t),
                    ..Default::default()
                },
                "mink_audit_by_user",
            ),
            (
                AuditQuery {
                    command: Some("Place".into()),
                    to: Some(t),
                    ..Default::default()
                },
                "mink_audit_by_command",
            ),
        ];
        for (q, index) in cases {
            for newest_first in [false, true] {
                let q = AuditQuery {
                    newest_first,
                    ..q.clone()
                };
                let plan = plan(&store, &q);
                assert!(
                    plan.contains(&format!("USING INDEX {index}")),
                    "{q:?}: {plan}"
                );
                assert!(!plan.contains("TEMP B-TREE"), "{q:?} sorts: {plan}");
            }
        }
    }

    #[test]
    fn bounds_round_up_to_the_next_stored_microsecond() {
        let exact = DateTime::from_timestamp_micros(-7).unwrap();
        assert_eq!(micros_ceil(exact), -7);
        let between = exact + chrono::TimeDelta::nanoseconds(1);
        assert_eq!(micros_ceil(between), -6);
        assert_eq!(
            micros_ceil(DateTime::<Utc>::MAX_UTC),
            DateTime::<Utc>::MAX_UTC.timestamp_micros() + 1
        );
    }
}
