//! Read models in the store's own SQLite file: [`SqliteReadModelStore`], and the
//! transaction-bound store that inline and async projections write through.
//!
//! Every model has a table `rm_<NAME>` ([`Schema::table`]): one column per declared
//! field (the id is the primary key; text is compared by bytes, SQLite's `BINARY`
//! collation), plus `mink_version` (the row's version) and `mink_doc` (the whole model
//! as JSON text). Values are stored as SQLite's own types: text and JSON fields as
//! TEXT, integers as INTEGER, floats as REAL, booleans as 0/1, timestamps as unix
//! microseconds. An indexed field gets an index on `(field, id)`.
//!
//! The declaration each table was made for is recorded in `mink_read_models` (one row
//! per table: its model, [`Schema::descriptor`] and when it last changed), so that
//! ensuring a table whose declaration changed rebuilds it from the stored documents.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;
use mink_es::readmodel::sql::{Dialect, quote};
use mink_es::readmodel::{
    EnsuredTables, Field, FieldType, Plan, ReadModelError, ReadModelStore, Row, Schema, StoredRow,
    Value,
};
use mink_es::{Error, Result};
use parking_lot::{Mutex, ReentrantMutex, ReentrantMutexGuard};
use rusqlite::types::{ToSqlOutput, Value as SqlValue, ValueRef};
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use crate::error::{backend_msg, context, map_err};
use crate::store::{SqliteStore, WriteTx};

/// The columns a query reads back: the document, then the version.
const ROW_COLUMNS: &str = "mink_doc, mink_version";

/// The SQLite type of a field's column.
fn sql_type(t: FieldType) -> &'static str {
    match t {
        FieldType::Integer | FieldType::Bool | FieldType::Timestamp => "INTEGER",
        FieldType::Float => "REAL",
        // Text, JSON (and any later type, stored as its text).
        _ => "TEXT",
    }
}

/// The name of the index on `field` of the physical table `table` of `schema`: the
/// schema's own name for the live table, `<table>__<field>` for another one (a shadow
/// table being rebuilt).
pub(crate) fn index_name(schema: &Schema, table: &str, field: &Field) -> String {
    if table == schema.table() {
        schema.index_name(field)
    } else {
        format!("{table}__{}", field.name())
    }
}

/// A value as SQLite stores and compares it.
fn sql_value(v: &Value) -> Result<ToSqlOutput<'_>> {
    Ok(match v {
        Value::Null => ToSqlOutput::Owned(SqlValue::Null),
        Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        Value::Integer(n) => ToSqlOutput::Owned(SqlValue::Integer(*n)),
        Value::Float(x) => ToSqlOutput::Owned(SqlValue::Real(*x)),
        Value::Bool(b) => ToSqlOutput::Owned(SqlValue::Integer(i64::from(*b))),
        Value::Timestamp(t) => ToSqlOutput::Owned(SqlValue::Integer(t.timestamp_micros())),
        Value::Json(j) => ToSqlOutput::Owned(SqlValue::Text(j.to_string())),
        other => {
            return Err(Error::InvalidArgument(format!(
                "mink-sqlite cannot store a read-model value of kind {}",
                other.kind()
            )));
        }
    })
}

fn sql_values(values: &[Value]) -> Result<Vec<ToSqlOutput<'_>>> {
    values.iter().map(sql_value).collect()
}

/// Whether a table (not a view or an index) of this name exists.
pub(crate) fn table_exists(conn: &Connection, table: &str) -> Result<bool> {
    conn.prepare_cached("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")
        .and_then(|mut s| s.query_row([table], |_| Ok(())).optional())
        .map(|found| found.is_some())
        .map_err(map_err)
}

/// The declaration `table` was last made for, if it is recorded.
fn recorded_descriptor(conn: &Connection, table: &str) -> Result<Option<String>> {
    conn.prepare_cached("SELECT descriptor FROM mink_read_models WHERE table_name = ?1")
        .and_then(|mut s| s.query_row([table], |r| r.get(0)).optional())
        .map_err(map_err)
}

/// Whether `table` exists and was made for `schema`'s declaration (nothing to do).
pub(crate) fn is_current(conn: &Connection, schema: &Schema, table: &str) -> Result<bool> {
    Ok(
        recorded_descriptor(conn, table)?.as_deref() == Some(schema.descriptor())
            && table_exists(conn, table)?,
    )
}

/// Runs `f` inside a savepoint: all of it or nothing, also inside a transaction that
/// goes on after a failure.
pub(crate) fn savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T>,
) -> Result<T> {
    conn.execute_batch("SAVEPOINT mink_read_model")
        .map_err(map_err)?;
    match f(conn) {
        Ok(v) => {
            conn.execute_batch("RELEASE mink_read_model")
                .map_err(map_err)?;
            Ok(v)
        }
        Err(e) => {
            if let Err(undo) =
                conn.execute_batch("ROLLBACK TO mink_read_model; RELEASE mink_read_model")
            {
                tracing::warn!(error = %undo, "rollback to a mink-sqlite savepoint failed");
            }
            Err(e)
        }
    }
}

/// Creates `table` for `schema`, without its secondary indexes.
fn create_bare_table(conn: &Connection, schema: &Schema, table: &str) -> Result<()> {
    let mut cols = Vec::with_capacity(schema.fields().len() + 2);
    for (i, f) in schema.fields().iter().enumerate() {
        let mut col = format!("{} {}", quote(f.name()), sql_type(f.field_type()));
        if i == schema.id_index() {
            col.push_str(" NOT NULL PRIMARY KEY");
        } else if !f.is_nullable() {
            col.push_str(" NOT NULL");
        }
        cols.push(col);
    }
    cols.push("mink_version INTEGER NOT NULL".to_owned());
    cols.push("mink_doc TEXT NOT NULL".to_owned());
    conn.execute_batch(&format!(
        "CREATE TABLE {} ({})",
        quote(table),
        cols.join(", ")
    ))
    .map_err(map_err)
}

/// Creates the indexes of the indexed fields of `schema` on `table` (each on the field
/// and the id, for filters and keyset pages ordered by the field).
pub(crate) fn create_indexes(conn: &Connection, schema: &Schema, table: &str) -> Result<()> {
    let id = quote(schema.id_field().name());
    for (i, f) in schema.fields().iter().enumerate() {
        if !f.is_indexed() || i == schema.id_index() {
            continue;
        }
        conn.execute_batch(&format!(
            "CREATE INDEX IF NOT EXISTS {} ON {} ({}, {id})",
            quote(&index_name(schema, table, f)),
            quote(table),
            quote(f.name()),
        ))
        .map_err(map_err)?;
    }
    Ok(())
}

/// Drops the secondary indexes of `table` (those SQLite did not make itself).
pub(crate) fn drop_indexes(conn: &Connection, table: &str) -> Result<()> {
    let names: Vec<String> = conn
        .prepare_cached(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?1 \
             AND sql IS NOT NULL",
        )
        .and_then(|mut s| {
            s.query_map([table], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()
        })
        .map_err(map_err)?;
    for name in names {
        conn.execute_batch(&format!("DROP INDEX {}", quote(&name)))
            .map_err(map_err)?;
    }
    Ok(())
}

/// Records that `table` holds `schema`'s declaration.
pub(crate) fn record_table(conn: &Connection, schema: &Schema, table: &str) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO mink_read_models (table_name, model, descriptor, updated_at) \
         VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (table_name) DO UPDATE SET model = excluded.model, \
           descriptor = excluded.descriptor, updated_at = excluded.updated_at",
    )
    .and_then(|mut s| {
        s.execute(params![
            table,
            schema.model(),
            schema.descriptor(),
            mink_es::now_micros().timestamp_micros()
        ])
    })
    .map_err(map_err)?;
    Ok(())
}

/// Drops `table` (if it exists) and forgets its declaration.
pub(crate) fn drop_table(conn: &Connection, table: &str) -> Result<()> {
    conn.execute_batch(&format!("DROP TABLE IF EXISTS {}", quote(table)))
        .map_err(map_err)?;
    conn.prepare_cached("DELETE FROM mink_read_models WHERE table_name = ?1")
        .and_then(|mut s| s.execute([table]))
        .map_err(map_err)?;
    Ok(())
}

/// Creates `table` for `schema`, or rebuilds it when it was made for another
/// declaration (every stored document is read again under the new one; all or
/// nothing). Run it in a write transaction.
pub(crate) fn ensure(conn: &Connection, schema: &Schema, table: &str) -> Result<()> {
    savepoint(conn, |conn| {
        let recorded = recorded_descriptor(conn, table)?;
        let exists = table_exists(conn, table)?;
        if exists && recorded.as_deref() == Some(schema.descriptor()) {
            return Ok(());
        }
        if exists {
            tracing::info!(
                model = schema.model(),
                table,
                "rebuilding a read-model table for a changed declaration"
            );
            rebuild_table(conn, schema, table)?;
        } else {
            create_bare_table(conn, schema, table)?;
            create_indexes(conn, schema, table)?;
        }
        record_table(conn, schema, table)
    })
    .map_err(|e| {
        context(e, || {
            format!("ensuring the table of read model {:?}", schema.model())
        })
    })
}

/// Rebuilds `table` for `schema` from its stored documents and versions.
fn rebuild_table(conn: &Connection, schema: &Schema, table: &str) -> Result<()> {
    // `$` cannot appear in a model's name, so this name is nobody's table.
    let next = format!("{table}$rebuild");
    conn.execute_batch(&format!("DROP TABLE IF EXISTS {}", quote(&next)))
        .map_err(map_err)?;
    create_bare_table(conn, schema, &next)?;
    {
        let mut read = conn
            .prepare(&format!("SELECT {ROW_COLUMNS} FROM {}", quote(table)))
            .map_err(map_err)?;
        let mut rows = read.query([]).map_err(map_err)?;
        while let Some(r) = rows.next().map_err(map_err)? {
            let stored = stored_row(r)?;
            let row = schema.row_from_doc(&stored.doc)?;
            let inserted = insert_row(conn, schema, &next, &row, stored.version)?;
            if !inserted {
                return Err(ReadModelError::InvalidModel {
                    model: schema.model().to_owned(),
                    reason: format!(
                        "the table cannot be rebuilt for the new declaration: two stored rows have the id {}",
                        row.id()
                    ),
                }
                .into());
            }
        }
    }
    conn.execute_batch(&format!(
        "DROP TABLE {old}; ALTER TABLE {next} RENAME TO {old};",
        old = quote(table),
        next = quote(&next)
    ))
    .map_err(map_err)?;
    create_indexes(conn, schema, table)
}

/// A row of [`ROW_COLUMNS`].
fn stored_row(r: &rusqlite::Row<'_>) -> Result<StoredRow> {
    let doc = match r.get_ref(0).map_err(map_err)? {
        ValueRef::Text(b) => String::from_utf8(b.to_vec())
            .map_err(|_| backend_msg("a stored read model's document is not UTF-8"))?,
        _ => return Err(backend_msg("a stored read model's document is not text")),
    };
    let version = match r.get_ref(1).map_err(map_err)? {
        ValueRef::Integer(v) => u64::try_from(v)
            .map_err(|_| backend_msg(format!("a stored read model has version {v}")))?,
        _ => {
            return Err(backend_msg(
                "a stored read model's version is not an integer",
            ));
        }
    };
    Ok(StoredRow { doc, version })
}

/// The column list of `schema`'s fields.
fn field_columns(schema: &Schema) -> Vec<String> {
    schema.fields().iter().map(|f| quote(f.name())).collect()
}

/// Inserts `row` at `version` unless its id is taken; false when it was.
fn insert_row(
    conn: &Connection,
    schema: &Schema,
    table: &str,
    row: &Row,
    version: u64,
) -> Result<bool> {
    let cols = field_columns(schema);
    let n = cols.len();
    let placeholders: Vec<String> = (1..=n + 2).map(|i| format!("?{i}")).collect();
    let sql = format!(
        "INSERT INTO {} ({}, mink_version, mink_doc) VALUES ({}) ON CONFLICT DO NOTHING",
        quote(table),
        cols.join(", "),
        placeholders.join(", ")
    );
    let version = i64::try_from(version)
        .map_err(|_| backend_msg(format!("read-model version {version} is out of range")))?;
    let mut args = sql_values(row.values())?;
    args.push(ToSqlOutput::Owned(SqlValue::Integer(version)));
    args.push(ToSqlOutput::Borrowed(ValueRef::Text(row.doc().as_bytes())));
    let changed = conn
        .prepare_cached(&sql)
        .and_then(|mut s| s.execute(params_from_iter(&args)))
        .map_err(map_err)?;
    Ok(changed > 0)
}

fn id_column(schema: &Schema) -> String {
    quote(schema.id_field().name())
}

/// The row operations, on a connection and a physical table: what both stores run.
pub(crate) mod ops {
    use super::*;

    pub(crate) fn get(
        conn: &Connection,
        schema: &Schema,
        table: &str,
        id: &Value,
    ) -> Result<Option<StoredRow>> {
        let sql = format!(
            "SELECT {ROW_COLUMNS} FROM {} WHERE {} = ?1",
            quote(table),
            id_column(schema)
        );
        let mut stmt = conn.prepare_cached(&sql).map_err(map_err)?;
        let mut rows = stmt.query([sql_value(id)?]).map_err(map_err)?;
        match rows.next().map_err(map_err)? {
            Some(r) => Ok(Some(stored_row(r)?)),
            None => Ok(None),
        }
    }

    pub(crate) fn insert(
        conn: &Connection,
        schema: &Schema,
        table: &str,
        row: &Row,
    ) -> Result<u64> {
        if insert_row(conn, schema, table, row, 1)? {
            Ok(1)
        } else {
            Err(ReadModelError::AlreadyExists {
                model: schema.model().to_owned(),
                id: row.id().to_string(),
            }
            .into())
        }
    }

    pub(crate) fn upsert(
        conn: &Connection,
        schema: &Schema,
        table: &str,
        row: &Row,
    ) -> Result<u64> {
        let cols = field_columns(schema);
        let n = cols.len();
        let placeholders: Vec<String> = (1..=n).map(|i| format!("?{i}")).collect();
        let mut set: Vec<String> = cols
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != schema.id_index())
            .map(|(_, c)| format!("{c} = excluded.{c}"))
            .collect();
        set.push("mink_version = mink_version + 1".to_owned());
        set.push("mink_doc = excluded.mink_doc".to_owned());
        let sql = format!(
            "INSERT INTO {} ({}, mink_version, mink_doc) VALUES ({}, 1, ?{}) \
             ON CONFLICT ({}) DO UPDATE SET {} RETURNING mink_version",
            quote(table),
            cols.join(", "),
            placeholders.join(", "),
            n + 1,
            id_column(schema),
            set.join(", ")
        );
        let mut args = sql_values(row.values())?;
        args.push(ToSqlOutput::Borrowed(ValueRef::Text(row.doc().as_bytes())));
        let version: i64 = conn
            .prepare_cached(&sql)
            .and_then(|mut s| s.query_row(params_from_iter(&args), |r| r.get(0)))
            .map_err(map_err)?;
        u64::try_from(version).map_err(|_| backend_msg(format!("read-model version {version}")))
    }

    pub(crate) fn update(
        conn: &Connection,
        schema: &Schema,
        table: &str,
        row: &Row,
        expected: u64,
    ) -> Result<u64> {
        let cols = field_columns(schema);
        let mut args: Vec<ToSqlOutput<'_>> = Vec::with_capacity(cols.len() + 3);
        let mut set = Vec::with_capacity(cols.len() + 1);
        for (i, (c, v)) in cols.iter().zip(row.values()).enumerate() {
            if i == schema.id_index() {
                continue;
            }
            args.push(sql_value(v)?);
            set.push(format!("{c} = ?{}", args.len()));
        }
        args.push(ToSqlOutput::Borrowed(ValueRef::Text(row.doc().as_bytes())));
        set.push(format!("mink_doc = ?{}", args.len()));
        set.push("mink_version = mink_version + 1".to_owned());
        args.push(sql_value(row.id())?);
        let id_ph = args.len();
        // No stored row has a version that does not fit i64 (nor -1).
        args.push(ToSqlOutput::Owned(SqlValue::Integer(
            i64::try_from(expected).unwrap_or(-1),
        )));
        let sql = format!(
            "UPDATE {} SET {} WHERE {} = ?{id_ph} AND mink_version = ?{} RETURNING mink_version",
            quote(table),
            set.join(", "),
            id_column(schema),
            args.len()
        );
        let updated: Option<i64> = conn
            .prepare_cached(&sql)
            .and_then(|mut s| {
                s.query_row(params_from_iter(&args), |r| r.get(0))
                    .optional()
            })
            .map_err(map_err)?;
        if let Some(v) = updated {
            return u64::try_from(v).map_err(|_| backend_msg(format!("read-model version {v}")));
        }
        match get(conn, schema, table, row.id())? {
            None => Err(ReadModelError::NotFound {
                model: schema.model().to_owned(),
                id: row.id().to_string(),
            }
            .into()),
            Some(stored) => Err(ReadModelError::VersionConflict {
                model: schema.model().to_owned(),
                id: row.id().to_string(),
                expected,
                actual: stored.version,
            }
            .into()),
        }
    }

    pub(crate) fn delete(
        conn: &Connection,
        schema: &Schema,
        table: &str,
        id: &Value,
    ) -> Result<bool> {
        let sql = format!(
            "DELETE FROM {} WHERE {} = ?1",
            quote(table),
            id_column(schema)
        );
        let id = sql_value(id)?;
        let changed = conn
            .prepare_cached(&sql)
            .and_then(|mut s| s.execute([id]))
            .map_err(map_err)?;
        Ok(changed > 0)
    }

    pub(crate) fn find(
        conn: &Connection,
        schema: &Schema,
        table: &str,
        plan: &Plan,
    ) -> Result<Vec<StoredRow>> {
        let stmt = Dialect::Sqlite.select(&quote(table), ROW_COLUMNS, schema, plan);
        let args = sql_values(&stmt.params)?;
        let mut prepared = conn.prepare_cached(&stmt.sql).map_err(map_err)?;
        let mut rows = prepared.query(params_from_iter(&args)).map_err(map_err)?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(map_err)? {
            out.push(stored_row(r)?);
        }
        Ok(out)
    }

    pub(crate) fn count(
        conn: &Connection,
        schema: &Schema,
        table: &str,
        plan: &Plan,
    ) -> Result<u64> {
        let stmt = Dialect::Sqlite.count(&quote(table), schema, plan);
        let args = sql_values(&stmt.params)?;
        let n: i64 = conn
            .prepare_cached(&stmt.sql)
            .and_then(|mut s| s.query_row(params_from_iter(&args), |r| r.get(0)))
            .map_err(map_err)?;
        Ok(n.unsigned_abs())
    }

    pub(crate) fn delete_where(
        conn: &Connection,
        schema: &Schema,
        table: &str,
        plan: &Plan,
    ) -> Result<u64> {
        let stmt = Dialect::Sqlite.delete(&quote(table), schema, plan);
        let args = sql_values(&stmt.params)?;
        let n = conn
            .prepare_cached(&stmt.sql)
            .and_then(|mut s| s.execute(params_from_iter(&args)))
            .map_err(map_err)?;
        Ok(n as u64)
    }
}

/// Says which read model an error came from.
fn about<'a>(schema: &'a Schema, what: &'static str) -> impl FnOnce(Error) -> Error + 'a {
    move |e| context(e, || format!("{what} read model {:?}", schema.model()))
}

/// [`ReadModelStore`] on a [`SqliteStore`]'s own file: each model in its table
/// `rm_<NAME>`, next to the events (see the [crate documentation](crate#read-models-and-projections)).
///
/// Get it with [`SqliteStore::read_models`] and open typed
/// [`ReadModelRepository`](mink_es::readmodel::ReadModelRepository)s on it. Writes run
/// on the store's writer connection (one short `BEGIN IMMEDIATE` transaction each),
/// reads on its read connections, so queries never wait for appends. It gives exactly
/// the results of [`MemoryReadModelStore`](mink_es::readmodel::MemoryReadModelStore):
/// text ordered by bytes, nulls first ascending and last descending, `like` as `GLOB`
/// (case-sensitive), timestamps to the microsecond.
///
/// Cloning gives another handle to the same tables, sharing which tables this handle
/// ensured: every operation on a model fails with
/// [`ReadModelError::NotEnsured`] until
/// [`ensure_table`](ReadModelStore::ensure_table) ran for its declaration through this
/// handle (or a clone of it). Ensuring is cheap when the table is up to date, safe from
/// several processes at once, and rebuilds the table from the stored documents when the
/// declaration changed.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use mink_es::readmodel::{Field, Query, ReadModel, ReadModelRepository};
/// use mink_sqlite::SqliteStore;
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Customer { id: String, name: String }
/// impl ReadModel for Customer {
///     const NAME: &'static str = "customers";
///     const FIELDS: &'static [Field] = &[Field::text("id"), Field::text("name").indexed()];
/// }
///
/// let dir = tempfile::tempdir().unwrap();
/// let store = SqliteStore::open(dir.path().join("app.db"))?;
/// let customers = ReadModelRepository::<Customer, _>::new(store.read_models());
/// customers.ensure_table().await?;
/// customers.insert(&Customer { id: "c-1".into(), name: "Ada".into() }).await?;
/// let found = customers.find(&Query::new().starts_with("name", "A")).await?;
/// assert_eq!(found[0].model.id, "c-1");
/// # Ok::<(), mink_es::Error>(())
/// # });
/// ```
#[derive(Clone)]
pub struct SqliteReadModelStore {
    store: SqliteStore,
    ensured: Arc<EnsuredTables>,
}

impl fmt::Debug for SqliteReadModelStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteReadModelStore")
            .field("path", &self.store.path())
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// A [`SqliteReadModelStore`]: read models in this store's file, on its connections.
    /// Each call gives a new handle, which ensures its tables itself.
    pub fn read_models(&self) -> SqliteReadModelStore {
        SqliteReadModelStore::new(self)
    }
}

impl SqliteReadModelStore {
    /// Read models in `store`'s file (see [`SqliteStore::read_models`]).
    pub fn new(store: &SqliteStore) -> Self {
        SqliteReadModelStore {
            store: store.clone(),
            ensured: Arc::new(EnsuredTables::new()),
        }
    }

    /// The event store whose file and connections this store uses.
    pub fn store(&self) -> &SqliteStore {
        &self.store
    }

    fn read<T>(
        &self,
        schema: &Schema,
        what: &'static str,
        f: impl FnOnce(&Connection, &str) -> Result<T>,
    ) -> Result<T> {
        self.ensured.check(schema)?;
        self.store
            .with_reader(|conn| f(conn, schema.table()))
            .map_err(about(schema, what))
    }

    fn write<T>(
        &self,
        schema: &Schema,
        what: &'static str,
        f: impl FnOnce(&Connection, &str) -> Result<T>,
    ) -> Result<T> {
        self.ensured.check(schema)?;
        let conn = self.store.writer();
        let tx = WriteTx::begin(&conn).map_err(about(schema, what))?;
        let v = f(&conn, schema.table()).map_err(about(schema, what))?;
        tx.commit().map_err(about(schema, what))?;
        Ok(v)
    }

    fn ensure_sync(&self, schema: &Schema) -> Result<()> {
        let current = self
            .store
            .with_reader(|conn| is_current(conn, schema, schema.table()))?;
        if !current {
            let conn = self.store.writer();
            let tx = WriteTx::begin(&conn)?;
            ensure(&conn, schema, schema.table())?;
            tx.commit()?;
        }
        self.ensured.mark(schema);
        Ok(())
    }
}

impl ReadModelStore for SqliteReadModelStore {
    fn ensure_table<'a>(&'a self, schema: &'a Schema) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.ensure_sync(schema) })
    }

    fn get<'a>(
        &'a self,
        schema: &'a Schema,
        id: &'a Value,
    ) -> BoxFuture<'a, Result<Option<StoredRow>>> {
        Box::pin(async move { self.read(schema, "reading", |c, t| ops::get(c, schema, t, id)) })
    }

    fn insert<'a>(&'a self, schema: &'a Schema, row: &'a Row) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            self.write(schema, "inserting into", |c, t| {
                ops::insert(c, schema, t, row)
            })
        })
    }

    fn upsert<'a>(&'a self, schema: &'a Schema, row: &'a Row) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            self.write(schema, "upserting into", |c, t| {
                ops::upsert(c, schema, t, row)
            })
        })
    }

    fn update<'a>(
        &'a self,
        schema: &'a Schema,
        row: &'a Row,
        expected: u64,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            self.write(schema, "updating", |c, t| {
                ops::update(c, schema, t, row, expected)
            })
        })
    }

    fn delete<'a>(&'a self, schema: &'a Schema, id: &'a Value) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            self.write(schema, "deleting from", |c, t| {
                ops::delete(c, schema, t, id)
            })
        })
    }

    fn find<'a>(
        &'a self,
        schema: &'a Schema,
        plan: &'a Plan,
    ) -> BoxFuture<'a, Result<Vec<StoredRow>>> {
        Box::pin(async move { self.read(schema, "querying", |c, t| ops::find(c, schema, t, plan)) })
    }

    fn count<'a>(&'a self, schema: &'a Schema, plan: &'a Plan) -> BoxFuture<'a, Result<u64>> {
        Box::pin(
            async move { self.read(schema, "counting", |c, t| ops::count(c, schema, t, plan)) },
        )
    }

    fn delete_where<'a>(
        &'a self,
        schema: &'a Schema,
        plan: &'a Plan,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            self.write(schema, "deleting from", |c, t| {
                ops::delete_where(c, schema, t, plan)
            })
        })
    }
}

/// Where the transaction-bound store sends one model: the declaration it was bound
/// for and the physical table (the live one, or the shadow of a blue/green rebuild).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Binding {
    pub(crate) descriptor: String,
    pub(crate) table: String,
}

/// The bindings of a projection's models, keyed by [`Schema::table`].
pub(crate) type Bindings = HashMap<String, Binding>;

/// Binds each of `models` to the physical table `table_of` names for it.
pub(crate) fn bindings(models: &[Schema], table_of: impl Fn(&Schema) -> String) -> Bindings {
    models
        .iter()
        .map(|s| {
            (
                s.table().to_owned(),
                Binding {
                    descriptor: s.descriptor().to_owned(),
                    table: table_of(s),
                },
            )
        })
        .collect()
}

/// A [`ReadModelStore`] bound to the write transaction open on the store's writer
/// connection: what inline projections (in the append's transaction) and
/// [`crate::SqliteProjectionTarget`] (in the batch's transaction) give the projection.
///
/// Every call runs at once, on the connection of the open transaction, so it sees the
/// transaction's own writes and its changes commit or roll back with it. Each model is
/// mapped to its live table or, during a blue/green rebuild, to its shadow table.
///
/// Its futures complete without waiting: the code that opened the transaction polls
/// the projection once, on its own thread, which holds the (reentrant) writer lock.
/// A call from any other thread finds the lock taken and fails with a typed error
/// instead of running outside the transaction.
pub(crate) struct TxReadModels<'c> {
    writer: &'c ReentrantMutex<Connection>,
    tables: Mutex<Bindings>,
}

impl<'c> TxReadModels<'c> {
    /// The store over the transaction open on `writer` (locked by the calling thread),
    /// with its models bound to their tables.
    pub(crate) fn new(writer: &'c ReentrantMutex<Connection>, tables: Bindings) -> Self {
        TxReadModels {
            writer,
            tables: Mutex::new(tables),
        }
    }

    /// The connection, if this thread holds the open transaction.
    fn conn(&self) -> Result<ReentrantMutexGuard<'c, Connection>> {
        let Some(conn) = self.writer.try_lock() else {
            return Err(backend_msg(
                "a projection's read-model store was used from another thread than the one \
                 running its transaction; await its calls in the projection's own future",
            ));
        };
        if conn.is_autocommit() {
            return Err(backend_msg(
                "a projection's read-model store was used after its transaction ended",
            ));
        }
        Ok(conn)
    }

    fn table(&self, schema: &Schema) -> Result<String> {
        match self.tables.lock().get(schema.table()) {
            Some(b) if b.descriptor == schema.descriptor() => Ok(b.table.clone()),
            _ => Err(ReadModelError::NotEnsured {
                model: schema.model().to_owned(),
            }
            .into()),
        }
    }

    fn run<T>(
        &self,
        schema: &Schema,
        what: &'static str,
        f: impl FnOnce(&Connection, &str) -> Result<T>,
    ) -> Result<T> {
        let table = self.table(schema)?;
        let conn = self.conn()?;
        // Each operation writes with one statement, which SQLite applies whole or not
        // at all: a failed call leaves the transaction as it was.
        f(&conn, &table).map_err(about(schema, what))
    }

    fn ensure_sync(&self, schema: &Schema) -> Result<()> {
        let table = match self.tables.lock().get(schema.table()) {
            Some(b) if b.descriptor == schema.descriptor() => return Ok(()),
            Some(b) => b.table.clone(),
            None => schema.table().to_owned(),
        };
        let conn = self.conn()?;
        ensure(&conn, schema, &table)?;
        self.tables.lock().insert(
            schema.table().to_owned(),
            Binding {
                descriptor: schema.descriptor().to_owned(),
                table,
            },
        );
        Ok(())
    }
}

impl ReadModelStore for TxReadModels<'_> {
    fn ensure_table<'a>(&'a self, schema: &'a Schema) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.ensure_sync(schema) })
    }

    fn get<'a>(
        &'a self,
        schema: &'a Schema,
        id: &'a Value,
    ) -> BoxFuture<'a, Result<Option<StoredRow>>> {
        Box::pin(async move { self.run(schema, "reading", |c, t| ops::get(c, schema, t, id)) })
    }

    fn insert<'a>(&'a self, schema: &'a Schema, row: &'a Row) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            self.run(schema, "inserting into", |c, t| {
                ops::insert(c, schema, t, row)
            })
        })
    }

    fn upsert<'a>(&'a self, schema: &'a Schema, row: &'a Row) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            self.run(schema, "upserting into", |c, t| {
                ops::upsert(c, schema, t, row)
            })
        })
    }

    fn update<'a>(
        &'a self,
        schema: &'a Schema,
        row: &'a Row,
        expected: u64,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            self.run(schema, "updating", |c, t| {
                ops::update(c, schema, t, row, expected)
            })
        })
    }

    fn delete<'a>(&'a self, schema: &'a Schema, id: &'a Value) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            self.run(schema, "deleting from", |c, t| {
                ops::delete(c, schema, t, id)
            })
        })
    }

    fn find<'a>(
        &'a self,
        schema: &'a Schema,
        plan: &'a Plan,
    ) -> BoxFuture<'a, Result<Vec<StoredRow>>> {
        Box::pin(async move { self.run(schema, "querying", |c, t| ops::find(c, schema, t, plan)) })
    }

    fn count<'a>(&'a self, schema: &'a Schema, plan: &'a Plan) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move { self.run(schema, "counting", |c, t| ops::count(c, schema, t, plan)) })
    }

    fn delete_where<'a>(
        &'a self,
        schema: &'a Schema,
        plan: &'a Plan,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            self.run(schema, "deleting from", |c, t| {
                ops::delete_where(c, schema, t, plan)
            })
        })
    }
}
