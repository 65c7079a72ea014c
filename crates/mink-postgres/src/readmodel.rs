//! Read models on PostgreSQL: [`PgReadModelStore`] on the store's pool, and
//! [`PgTxReadModelStore`], bound to an open transaction, with a unit of work.
//!
//! Both keep each model in a table `rm_<NAME>` of the event store's schema: one column
//! per declared field (text `COLLATE "C"`, `bigint`, `double precision`, `boolean`,
//! `timestamptz`, `json`), the id as primary key, `mink_version bigint` and the whole
//! model as JSON text in `mink_doc` (exactly as serialized, so undeclared keys
//! round-trip). An indexed field gets an index on `(field, id)` named
//! [`Schema::index_name`]. The declaration ([`Schema::descriptor`]) is the table's
//! comment; a changed declaration rebuilds the table from the stored documents.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use mink_es::readmodel::sql::{Dialect, quote};
use mink_es::readmodel::{
    CompareOp, EnsuredTables, FieldType, Plan, Pred, ReadModelError, ReadModelStore, Row, Schema,
    StoredRow, Value,
};
use mink_es::{Error, Result};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::{AssertSqlSafe, Connection as _, PgConnection, PgPool, Postgres, Row as _};

use crate::SchemaName;
use crate::error::map;

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

/// The suffix of a model's blue/green shadow table (`rm_<NAME>__next`).
pub const SHADOW_SUFFIX: &str = "__next";

/// The suffix of the table a changed declaration is rebuilt into before the swap.
const REBUILD_SUFFIX: &str = "__rebuild";

/// Column of the row's version.
const VERSION_COL: &str = "mink_version";
/// Column of the model's JSON document.
const DOC_COL: &str = "mink_doc";

/// Rows per statement when a table is rebuilt for a changed declaration.
const REBUILD_CHUNK: usize = 5_000;

/// The name of `schema`'s shadow table.
pub(crate) fn shadow_table(schema: &Schema) -> String {
    format!("{}{SHADOW_SUFFIX}", schema.table())
}

/// `"schema"."table"`.
pub(crate) fn qualified(ns: &SchemaName, table: &str) -> String {
    format!("{}.{}", ns.quoted(), quote(table))
}

fn fnv(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// The name of the index on `field` of the physical table `table`: the schema's own
/// name for the live table, a hashed one for shadow and rebuild tables (renamed at the
/// swap).
fn index_name(schema: &Schema, table: &str, field: &mink_es::readmodel::Field) -> String {
    if table == schema.table() {
        schema.index_name(field)
    } else {
        format!("mink_ix_{:016x}", fnv(&[table, field.name()]))
    }
}

fn pkey_name(table: &str) -> String {
    format!("{table}_pkey")
}

fn column_type(schema: &Schema, ty: FieldType) -> Result<&'static str> {
    Ok(match ty {
        FieldType::Text => "text COLLATE \"C\"",
        FieldType::Integer => "bigint",
        FieldType::Float => "double precision",
        FieldType::Bool => "boolean",
        FieldType::Timestamp => "timestamptz",
        FieldType::Json => "json",
        other => {
            return Err(ReadModelError::InvalidModel {
                model: schema.model().to_owned(),
                reason: format!("PostgreSQL cannot store fields of type {other}"),
            }
            .into());
        }
    })
}

/// The array type a column travels as in multi-row statements.
fn array_type(ty: FieldType) -> &'static str {
    match ty {
        FieldType::Integer => "int8[]",
        FieldType::Float => "float8[]",
        FieldType::Bool => "bool[]",
        FieldType::Timestamp => "timestamptz[]",
        _ => "text[]",
    }
}

/// How a column's placeholder or unnested value is read into the column.
fn cast_in(ty: FieldType, expr: &str) -> String {
    match ty {
        FieldType::Json => format!("{expr}::json"),
        _ => expr.to_owned(),
    }
}

/// An id, as a map key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Key {
    Int(i64),
    Text(String),
}

fn key(id: &Value) -> Key {
    match id {
        Value::Integer(n) => Key::Int(*n),
        Value::Text(s) => Key::Text(s.clone()),
        other => Key::Text(other.to_string()),
    }
}

fn key_value(k: &Key) -> Value {
    match k {
        Key::Int(n) => Value::Integer(*n),
        Key::Text(s) => Value::Text(s.clone()),
    }
}

fn read_key(schema: &Schema, row: &PgRow, idx: usize, ns: &SchemaName) -> Result<Key> {
    if schema.id_field().field_type() == FieldType::Integer {
        Ok(Key::Int(row.try_get(idx).map_err(|e| map(e, ns))?))
    } else {
        Ok(Key::Text(row.try_get(idx).map_err(|e| map(e, ns))?))
    }
}

/// Binds a value of a field of type `ty` (nulls typed by the field).
fn bind_value<'q>(q: PgQuery<'q>, v: &Value, ty: FieldType) -> PgQuery<'q> {
    match v {
        Value::Text(s) => q.bind(s.clone()),
        Value::Integer(n) => q.bind(*n),
        Value::Float(x) => q.bind(*x),
        Value::Bool(b) => q.bind(*b),
        Value::Timestamp(t) => q.bind(*t),
        Value::Json(j) => q.bind(j.to_string()),
        _ => match ty {
            FieldType::Integer => q.bind(None::<i64>),
            FieldType::Float => q.bind(None::<f64>),
            FieldType::Bool => q.bind(None::<bool>),
            FieldType::Timestamp => q.bind(None::<DateTime<Utc>>),
            _ => q.bind(None::<String>),
        },
    }
}

/// Binds a query parameter rendered by [`Dialect::Postgres`] (never null).
fn bind_param<'q>(q: PgQuery<'q>, v: &Value) -> PgQuery<'q> {
    bind_value(q, v, FieldType::Text)
}

fn bind_id<'q>(q: PgQuery<'q>, id: &Value) -> PgQuery<'q> {
    bind_param(q, id)
}

/// One column of many rows, as an array parameter.
enum Column {
    Text(Vec<Option<String>>),
    Int(Vec<Option<i64>>),
    Float(Vec<Option<f64>>),
    Bool(Vec<Option<bool>>),
    Time(Vec<Option<DateTime<Utc>>>),
}

impl Column {
    fn new(ty: FieldType, n: usize) -> Self {
        match ty {
            FieldType::Integer => Column::Int(Vec::with_capacity(n)),
            FieldType::Float => Column::Float(Vec::with_capacity(n)),
            FieldType::Bool => Column::Bool(Vec::with_capacity(n)),
            FieldType::Timestamp => Column::Time(Vec::with_capacity(n)),
            _ => Column::Text(Vec::with_capacity(n)),
        }
    }

    fn push(&mut self, v: &Value) {
        match (self, v) {
            (Column::Int(c), Value::Integer(n)) => c.push(Some(*n)),
            (Column::Float(c), Value::Float(x)) => c.push(Some(*x)),
            (Column::Bool(c), Value::Bool(b)) => c.push(Some(*b)),
            (Column::Time(c), Value::Timestamp(t)) => c.push(Some(*t)),
            (Column::Text(c), Value::Text(s)) => c.push(Some(s.clone())),
            (Column::Text(c), Value::Json(j)) => c.push(Some(j.to_string())),
            (Column::Int(c), _) => c.push(None),
            (Column::Float(c), _) => c.push(None),
            (Column::Bool(c), _) => c.push(None),
            (Column::Time(c), _) => c.push(None),
            (Column::Text(c), _) => c.push(None),
        }
    }

    fn bind<'q>(self, q: PgQuery<'q>) -> PgQuery<'q> {
        match self {
            Column::Text(c) => q.bind(c),
            Column::Int(c) => q.bind(c),
            Column::Float(c) => q.bind(c),
            Column::Bool(c) => q.bind(c),
            Column::Time(c) => q.bind(c),
        }
    }
}

fn ids_param<'q>(q: PgQuery<'q>, schema: &Schema, keys: &[&Key]) -> PgQuery<'q> {
    if schema.id_field().field_type() == FieldType::Integer {
        q.bind(
            keys.iter()
                .map(|k| match k {
                    Key::Int(n) => *n,
                    Key::Text(_) => 0,
                })
                .collect::<Vec<i64>>(),
        )
    } else {
        q.bind(
            keys.iter()
                .map(|k| match k {
                    Key::Text(s) => s.clone(),
                    Key::Int(n) => n.to_string(),
                })
                .collect::<Vec<String>>(),
        )
    }
}

fn id_array_type(schema: &Schema) -> &'static str {
    array_type(schema.id_field().field_type())
}

fn version_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn version_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn already_exists(schema: &Schema, id: &Value) -> Error {
    ReadModelError::AlreadyExists {
        model: schema.model().to_owned(),
        id: id.to_string(),
    }
    .into()
}

fn not_found(schema: &Schema, id: &Value) -> Error {
    ReadModelError::NotFound {
        model: schema.model().to_owned(),
        id: id.to_string(),
    }
    .into()
}

fn conflict(schema: &Schema, id: &Value, expected: u64, actual: u64) -> Error {
    ReadModelError::VersionConflict {
        model: schema.model().to_owned(),
        id: id.to_string(),
        expected,
        actual,
    }
    .into()
}

fn not_ensured(schema: &Schema) -> Error {
    ReadModelError::NotEnsured {
        model: schema.model().to_owned(),
    }
    .into()
}

// ---------------------------------------------------------------------------------
// DDL: creating, rebuilding and swapping tables.

/// `CREATE TABLE` (with its indexes and its descriptor as comment) for `schema` as the
/// physical table `table`.
fn create_sql(ns: &SchemaName, schema: &Schema, table: &str) -> Result<String> {
    let q = qualified(ns, table);
    let mut sql = format!("CREATE TABLE {q} (");
    for f in schema.fields() {
        let null = if f.is_nullable() { "" } else { " NOT NULL" };
        let _ = write!(
            sql,
            "{} {}{null}, ",
            quote(f.name()),
            column_type(schema, f.field_type())?
        );
    }
    let _ = write!(
        sql,
        "{VERSION_COL} bigint NOT NULL, {DOC_COL} text NOT NULL, CONSTRAINT {} PRIMARY KEY ({})); ",
        quote(&pkey_name(table)),
        quote(schema.id_field().name())
    );
    for f in schema.fields().iter().filter(|f| f.is_indexed()) {
        if f.name() == schema.id_field().name() {
            continue;
        }
        let _ = write!(
            sql,
            "CREATE INDEX {} ON {q} ({}, {}); ",
            quote(&index_name(schema, table, f)),
            quote(f.name()),
            quote(schema.id_field().name())
        );
    }
    let _ = write!(
        sql,
        "COMMENT ON TABLE {q} IS '{}'",
        schema.descriptor().replace('\'', "''")
    );
    Ok(sql)
}

/// Renames the physical table `from` (made for `schema`) to `to`, with its primary key
/// and indexes. `to` must not exist.
async fn rename_table(
    conn: &mut PgConnection,
    ns: &SchemaName,
    schema: &Schema,
    from: &str,
    to: &str,
) -> Result<()> {
    let mut sql = format!(
        "ALTER TABLE {} RENAME TO {}; ALTER INDEX {} RENAME TO {}; ",
        qualified(ns, from),
        quote(to),
        qualified(ns, &pkey_name(from)),
        quote(&pkey_name(to))
    );
    for f in schema.fields().iter().filter(|f| f.is_indexed()) {
        if f.name() == schema.id_field().name() {
            continue;
        }
        let _ = write!(
            sql,
            "ALTER INDEX {} RENAME TO {}; ",
            qualified(ns, &index_name(schema, from, f)),
            quote(&index_name(schema, to, f))
        );
    }
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(&mut *conn)
        .await
        .map_err(|e| map(e, ns))?;
    Ok(())
}

/// Whether the physical table exists, and its recorded declaration.
pub(crate) async fn describe_table(
    conn: &mut PgConnection,
    ns: &SchemaName,
    table: &str,
) -> Result<Option<Option<String>>> {
    // A query on the catalog tables (not `to_regclass`, which reads the backend's
    // catalog cache): its snapshot sees a table another transaction created and
    // committed while this one waited for the advisory lock.
    let row = sqlx::query(
        "SELECT d.description FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         LEFT JOIN pg_description d ON d.objoid = c.oid \
           AND d.classoid = 'pg_class'::regclass AND d.objsubid = 0 \
         WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
    )
    .bind(ns.as_str())
    .bind(table)
    .fetch_optional(&mut *conn)
    .await
    .map_err(|e| map(e, ns))?;
    match row {
        None => Ok(None),
        Some(r) => Ok(Some(r.try_get(0).map_err(|e| map(e, ns))?)),
    }
}

/// Takes the transaction-scoped lock that serializes ensuring a table.
async fn lock_table(conn: &mut PgConnection, ns: &SchemaName, table: &str) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("mink.readmodel.{ns}.{table}"))
        .execute(&mut *conn)
        .await
        .map_err(|e| map(e, ns))?;
    Ok(())
}

/// Creates the physical table `table` for `schema`, or rebuilds it for a changed
/// declaration, inside the transaction open on `conn` (under an advisory lock, so
/// concurrent callers in several processes wait for each other).
pub(crate) async fn ensure_in(
    conn: &mut PgConnection,
    ns: &SchemaName,
    schema: &Schema,
    table: &str,
) -> Result<()> {
    lock_table(conn, ns, table).await?;
    match describe_table(conn, ns, table).await? {
        None => create(conn, ns, schema, table).await,
        Some(Some(d)) if d == schema.descriptor() => Ok(()),
        Some(_) => rebuild(conn, ns, schema, table).await,
    }
}

/// Creates the physical table `table` for `schema` (it must not exist).
pub(crate) async fn create(
    conn: &mut PgConnection,
    ns: &SchemaName,
    schema: &Schema,
    table: &str,
) -> Result<()> {
    sqlx::raw_sql(AssertSqlSafe(create_sql(ns, schema, table)?))
        .execute(&mut *conn)
        .await
        .map_err(|e| map(e, ns))?;
    Ok(())
}

/// Drops the physical table `table` if it exists.
pub(crate) async fn drop_table(
    conn: &mut PgConnection,
    ns: &SchemaName,
    table: &str,
) -> Result<()> {
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP TABLE IF EXISTS {}",
        qualified(ns, table)
    )))
    .execute(&mut *conn)
    .await
    .map_err(|e| map(e, ns))?;
    Ok(())
}

/// Replaces the physical table `to` by `from` (both made for `schema`): drops `to`,
/// renames `from` with its indexes.
pub(crate) async fn swap(
    conn: &mut PgConnection,
    ns: &SchemaName,
    schema: &Schema,
    from: &str,
    to: &str,
) -> Result<()> {
    drop_table(conn, ns, to).await?;
    rename_table(conn, ns, schema, from, to).await
}

/// Rebuilds `table` for `schema`'s declaration: every stored document is re-read under
/// it (all or nothing).
async fn rebuild(
    conn: &mut PgConnection,
    ns: &SchemaName,
    schema: &Schema,
    table: &str,
) -> Result<()> {
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT {DOC_COL}, {VERSION_COL} FROM {}",
        qualified(ns, table)
    )))
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| map(e, ns))?;
    let mut seen = HashSet::with_capacity(rows.len());
    let mut rebuilt = Vec::with_capacity(rows.len());
    for r in &rows {
        let doc: String = r.try_get(0).map_err(|e| map(e, ns))?;
        let version: i64 = r.try_get(1).map_err(|e| map(e, ns))?;
        let row = schema.row_from_doc(&doc)?;
        if !seen.insert(key(row.id())) {
            return Err(ReadModelError::InvalidModel {
                model: schema.model().to_owned(),
                reason: format!(
                    "the table cannot be rebuilt for the new declaration: two stored rows have the id {}",
                    row.id()
                ),
            }
            .into());
        }
        rebuilt.push((row, version_u64(version)));
    }
    let tmp = format!("{table}{REBUILD_SUFFIX}");
    drop_table(conn, ns, &tmp).await?;
    create(conn, ns, schema, &tmp).await?;
    for chunk in rebuilt.chunks(REBUILD_CHUNK) {
        let refs: Vec<(&[Value], &str, u64)> = chunk
            .iter()
            .map(|(r, v)| (r.values(), r.doc(), *v))
            .collect();
        insert_many(conn, ns, schema, &tmp, &refs, false).await?;
    }
    swap(conn, ns, schema, &tmp, table).await
}

/// Inserts rows at the given versions; with `skip_existing`, ids already stored are
/// skipped. Returns the keys inserted.
async fn insert_many(
    conn: &mut PgConnection,
    ns: &SchemaName,
    schema: &Schema,
    table: &str,
    rows: &[(&[Value], &str, u64)],
    skip_existing: bool,
) -> Result<Vec<Key>> {
    let fields = schema.fields();
    let mut cols: Vec<Column> = fields
        .iter()
        .map(|f| Column::new(f.field_type(), rows.len()))
        .collect();
    let mut versions = Vec::with_capacity(rows.len());
    let mut docs = Vec::with_capacity(rows.len());
    for (values, doc, v) in rows {
        for (c, v) in cols.iter_mut().zip(values.iter()) {
            c.push(v);
        }
        versions.push(version_i64(*v));
        docs.push((*doc).to_owned());
    }
    let names: Vec<String> = fields.iter().map(|f| quote(f.name())).collect();
    let mut unnest = Vec::with_capacity(fields.len() + 2);
    for (i, f) in fields.iter().enumerate() {
        unnest.push(format!("${}::{}", i + 1, array_type(f.field_type())));
    }
    let n = fields.len();
    unnest.push(format!("${}::int8[]", n + 1));
    unnest.push(format!("${}::text[]", n + 2));
    let select: Vec<String> = fields
        .iter()
        .zip(&names)
        .map(|(f, c)| cast_in(f.field_type(), &format!("u.{c}")))
        .collect();
    let id = quote(schema.id_field().name());
    let sql = format!(
        "INSERT INTO {} ({}, {VERSION_COL}, {DOC_COL}) SELECT {}, u.{VERSION_COL}, u.{DOC_COL} \
         FROM UNNEST({}) AS u({}, {VERSION_COL}, {DOC_COL}){} RETURNING {id}",
        qualified(ns, table),
        names.join(", "),
        select.join(", "),
        unnest.join(", "),
        names.join(", "),
        if skip_existing {
            format!(" ON CONFLICT ({id}) DO NOTHING")
        } else {
            String::new()
        }
    );
    let mut q = sqlx::query(AssertSqlSafe(sql));
    for c in cols {
        q = c.bind(q);
    }
    q = q.bind(versions).bind(docs);
    let out = q.fetch_all(&mut *conn).await.map_err(|e| map(e, ns))?;
    out.iter().map(|r| read_key(schema, r, 0, ns)).collect()
}

// ---------------------------------------------------------------------------------
// Single-row statements, shared by both stores.

fn insert_sql(ns: &SchemaName, schema: &Schema, table: &str, upsert: bool) -> String {
    let names: Vec<String> = schema.fields().iter().map(|f| quote(f.name())).collect();
    let phs: Vec<String> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| cast_in(f.field_type(), &format!("${}", i + 1)))
        .collect();
    let n = schema.fields().len();
    let id = quote(schema.id_field().name());
    let mut sql = format!(
        "INSERT INTO {} AS r ({}, {VERSION_COL}, {DOC_COL}) VALUES ({}, 1, ${}) ON CONFLICT ({id}) ",
        qualified(ns, table),
        names.join(", "),
        phs.join(", "),
        n + 1
    );
    if upsert {
        let sets: Vec<String> = names
            .iter()
            .map(|c| format!("{c} = EXCLUDED.{c}"))
            .collect();
        let _ = write!(
            sql,
            "DO UPDATE SET {}, {VERSION_COL} = r.{VERSION_COL} + 1, {DOC_COL} = EXCLUDED.{DOC_COL} \
             RETURNING r.{VERSION_COL}",
            sets.join(", ")
        );
    } else {
        sql.push_str("DO NOTHING");
    }
    sql
}

fn update_sql(ns: &SchemaName, schema: &Schema, table: &str) -> String {
    let sets: Vec<String> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            format!(
                "{} = {}",
                quote(f.name()),
                cast_in(f.field_type(), &format!("${}", i + 1))
            )
        })
        .collect();
    let n = schema.fields().len();
    format!(
        "UPDATE {} SET {}, {VERSION_COL} = {VERSION_COL} + 1, {DOC_COL} = ${} \
         WHERE {} = ${} AND {VERSION_COL} = ${} RETURNING {VERSION_COL}",
        qualified(ns, table),
        sets.join(", "),
        n + 1,
        quote(schema.id_field().name()),
        n + 2,
        n + 3
    )
}

fn bind_row<'q>(mut q: PgQuery<'q>, schema: &Schema, row: &Row) -> PgQuery<'q> {
    for (f, v) in schema.fields().iter().zip(row.values()) {
        q = bind_value(q, v, f.field_type());
    }
    q.bind(row.doc().to_owned())
}

fn get_sql(ns: &SchemaName, schema: &Schema, table: &str, lock: bool) -> String {
    format!(
        "SELECT {DOC_COL}, {VERSION_COL} FROM {} WHERE {} = $1{}",
        qualified(ns, table),
        quote(schema.id_field().name()),
        if lock { " FOR UPDATE" } else { "" }
    )
}

async fn get_on(
    conn: &mut PgConnection,
    ns: &SchemaName,
    schema: &Schema,
    table: &str,
    id: &Value,
    lock: bool,
) -> Result<Option<StoredRow>> {
    let q = bind_id(
        sqlx::query(AssertSqlSafe(get_sql(ns, schema, table, lock))),
        id,
    );
    let row = q.fetch_optional(&mut *conn).await.map_err(|e| map(e, ns))?;
    row.map(|r| stored_row(&r, ns)).transpose()
}

fn stored_row(r: &PgRow, ns: &SchemaName) -> Result<StoredRow> {
    let doc: String = r.try_get(0).map_err(|e| map(e, ns))?;
    let version: i64 = r.try_get(1).map_err(|e| map(e, ns))?;
    Ok(StoredRow {
        doc,
        version: version_u64(version),
    })
}

async fn find_on(
    conn: &mut PgConnection,
    ns: &SchemaName,
    schema: &Schema,
    table: &str,
    plan: &Plan,
    with_id: bool,
    lock: bool,
) -> Result<Vec<PgRow>> {
    let columns = if with_id {
        format!(
            "{DOC_COL}, {VERSION_COL}, {}",
            quote(schema.id_field().name())
        )
    } else {
        format!("{DOC_COL}, {VERSION_COL}")
    };
    let mut st = Dialect::Postgres.select(&qualified(ns, table), &columns, schema, plan);
    if lock {
        st.sql.push_str(" FOR UPDATE");
    }
    let mut q = sqlx::query(AssertSqlSafe(st.sql));
    for p in &st.params {
        q = bind_param(q, p);
    }
    q.fetch_all(&mut *conn).await.map_err(|e| map(e, ns))
}

async fn count_on(
    conn: &mut PgConnection,
    ns: &SchemaName,
    schema: &Schema,
    table: &str,
    plan: &Plan,
) -> Result<u64> {
    let st = Dialect::Postgres.count(&qualified(ns, table), schema, plan);
    let mut q = sqlx::query(AssertSqlSafe(st.sql));
    for p in &st.params {
        q = bind_param(q, p);
    }
    let row = q.fetch_one(&mut *conn).await.map_err(|e| map(e, ns))?;
    let n: i64 = row.try_get(0).map_err(|e| map(e, ns))?;
    Ok(version_u64(n))
}

async fn delete_where_on(
    conn: &mut PgConnection,
    ns: &SchemaName,
    schema: &Schema,
    table: &str,
    plan: &Plan,
) -> Result<u64> {
    let st = Dialect::Postgres.delete(&qualified(ns, table), schema, plan);
    let mut q = sqlx::query(AssertSqlSafe(st.sql));
    for p in &st.params {
        q = bind_param(q, p);
    }
    let done = q.execute(&mut *conn).await.map_err(|e| map(e, ns))?;
    Ok(done.rows_affected())
}

/// The stored versions of these ids (absent ids are missing from the map).
async fn versions_of(
    conn: &mut PgConnection,
    ns: &SchemaName,
    schema: &Schema,
    table: &str,
    keys: &[&Key],
) -> Result<HashMap<Key, u64>> {
    let sql = format!(
        "SELECT {id}, {VERSION_COL} FROM {} WHERE {id} = ANY($1::{})",
        qualified(ns, table),
        id_array_type(schema),
        id = quote(schema.id_field().name()),
    );
    let q = ids_param(sqlx::query(AssertSqlSafe(sql)), schema, keys);
    let rows = q.fetch_all(&mut *conn).await.map_err(|e| map(e, ns))?;
    let mut out = HashMap::with_capacity(rows.len());
    for r in &rows {
        let k = read_key(schema, r, 0, ns)?;
        let v: i64 = r.try_get(1).map_err(|e| map(e, ns))?;
        out.insert(k, version_u64(v));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------
// The pool store.

/// Read models in the event store's PostgreSQL schema, on its pool: a
/// [`ReadModelStore`] with the semantics of
/// [`MemoryReadModelStore`](mink_es::readmodel::MemoryReadModelStore) (see the
/// [read-model docs](mink_es::readmodel)).
///
/// Get one with [`PgEventStore::read_models`](crate::PgEventStore::read_models) (the
/// schema must be migrated). Each call is one statement on a pooled connection (an
/// update that finds no row at the expected version reads the actual one). Queries are
/// rendered by [`Dialect::Postgres`]: text compared with `COLLATE "C"` (bytes), nulls
/// first ascending and last descending, `LIKE … ESCAPE '\'`.
///
/// [`ReadModelStore::ensure_table`] creates `rm_<NAME>`, or rebuilds it from the
/// stored documents when the declaration changed, in one transaction under an advisory
/// lock (several processes may call it at once). Cloning gives another handle with
/// the same ensured tables.
///
/// ```no_run
/// # async fn f(store: mink_postgres::PgEventStore) -> mink_es::Result<()> {
/// use mink_es::readmodel::{Field, Query, ReadModel, ReadModelRepository};
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Customer { id: String, name: String }
/// impl ReadModel for Customer {
///     const NAME: &'static str = "customers";
///     const FIELDS: &'static [Field] = &[Field::text("id"), Field::text("name").indexed()];
/// }
/// let customers = ReadModelRepository::<Customer, _>::new(store.read_models());
/// customers.ensure_table().await?;
/// customers.upsert(&Customer { id: "c-1".into(), name: "Ada".into() }).await?;
/// let ada = customers.find(&Query::new().starts_with("name", "Ad")).await?;
/// # let _ = ada; Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgReadModelStore {
    pool: PgPool,
    schema: SchemaName,
    ensured: Arc<EnsuredTables>,
}

impl std::fmt::Debug for PgReadModelStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgReadModelStore")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl PgReadModelStore {
    /// Read models in `schema`, on `pool`.
    pub fn new(pool: PgPool, schema: SchemaName) -> Self {
        PgReadModelStore {
            pool,
            schema,
            ensured: Arc::new(EnsuredTables::new()),
        }
    }

    /// The schema holding the tables.
    pub fn schema(&self) -> &SchemaName {
        &self.schema
    }

    /// The qualified, quoted name of `schema`'s live table (for the application's own
    /// SQL).
    pub fn table_name(&self, schema: &Schema) -> String {
        qualified(&self.schema, schema.table())
    }

    fn m(&self) -> impl Fn(sqlx::Error) -> Error + '_ {
        move |e| map(e, &self.schema)
    }

    async fn conn(&self) -> Result<sqlx::pool::PoolConnection<Postgres>> {
        self.pool.acquire().await.map_err(self.m())
    }

    /// Ensures `schema`'s live table (see [`ReadModelStore::ensure_table`]).
    pub(crate) async fn ensure(&self, schema: &Schema) -> Result<()> {
        let mut conn = self.conn().await?;
        // Cheap when up to date: one look-up, no lock.
        if let Some(Some(d)) = describe_table(&mut conn, &self.schema, schema.table()).await?
            && d == schema.descriptor()
        {
            self.ensured.mark(schema);
            return Ok(());
        }
        let mut tx = conn.begin().await.map_err(self.m())?;
        ensure_in(&mut tx, &self.schema, schema, schema.table()).await?;
        tx.commit().await.map_err(self.m())?;
        self.ensured.mark(schema);
        Ok(())
    }
}

impl ReadModelStore for PgReadModelStore {
    fn ensure_table<'a>(&'a self, schema: &'a Schema) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.ensure(schema))
    }

    fn get<'a>(
        &'a self,
        schema: &'a Schema,
        id: &'a Value,
    ) -> BoxFuture<'a, Result<Option<StoredRow>>> {
        Box::pin(async move {
            self.ensured.check(schema)?;
            let mut conn = self.conn().await?;
            get_on(&mut conn, &self.schema, schema, schema.table(), id, false).await
        })
    }

    fn insert<'a>(&'a self, schema: &'a Schema, row: &'a Row) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            self.ensured.check(schema)?;
            let sql = insert_sql(&self.schema, schema, schema.table(), false);
            let q = bind_row(sqlx::query(AssertSqlSafe(sql)), schema, row);
            let done = q.execute(&self.pool).await.map_err(self.m())?;
            if done.rows_affected() == 0 {
                return Err(already_exists(schema, row.id()));
            }
            Ok(1)
        })
    }

    fn upsert<'a>(&'a self, schema: &'a Schema, row: &'a Row) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            self.ensured.check(schema)?;
            let sql = insert_sql(&self.schema, schema, schema.table(), true);
            let q = bind_row(sqlx::query(AssertSqlSafe(sql)), schema, row);
            let r = q.fetch_one(&self.pool).await.map_err(self.m())?;
            let v: i64 = r.try_get(0).map_err(self.m())?;
            Ok(version_u64(v))
        })
    }

    fn update<'a>(
        &'a self,
        schema: &'a Schema,
        row: &'a Row,
        expected: u64,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            self.ensured.check(schema)?;
            let Ok(exp) = i64::try_from(expected) else {
                return Err(conflict_or_missing(self, schema, row.id(), expected).await);
            };
            let sql = update_sql(&self.schema, schema, schema.table());
            let q = bind_row(sqlx::query(AssertSqlSafe(sql)), schema, row);
            let q = bind_id(q, row.id()).bind(exp);
            match q.fetch_optional(&self.pool).await.map_err(self.m())? {
                Some(r) => {
                    let v: i64 = r.try_get(0).map_err(self.m())?;
                    Ok(version_u64(v))
                }
                None => Err(conflict_or_missing(self, schema, row.id(), expected).await),
            }
        })
    }

    fn delete<'a>(&'a self, schema: &'a Schema, id: &'a Value) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            self.ensured.check(schema)?;
            let sql = format!(
                "DELETE FROM {} WHERE {} = $1",
                qualified(&self.schema, schema.table()),
                quote(schema.id_field().name())
            );
            let done = bind_id(sqlx::query(AssertSqlSafe(sql)), id)
                .execute(&self.pool)
                .await
                .map_err(self.m())?;
            Ok(done.rows_affected() > 0)
        })
    }

    fn find<'a>(
        &'a self,
        schema: &'a Schema,
        plan: &'a Plan,
    ) -> BoxFuture<'a, Result<Vec<StoredRow>>> {
        Box::pin(async move {
            self.ensured.check(schema)?;
            let mut conn = self.conn().await?;
            let rows = find_on(
                &mut conn,
                &self.schema,
                schema,
                schema.table(),
                plan,
                false,
                false,
            )
            .await?;
            rows.iter().map(|r| stored_row(r, &self.schema)).collect()
        })
    }

    fn count<'a>(&'a self, schema: &'a Schema, plan: &'a Plan) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            self.ensured.check(schema)?;
            let mut conn = self.conn().await?;
            count_on(&mut conn, &self.schema, schema, schema.table(), plan).await
        })
    }

    fn delete_where<'a>(
        &'a self,
        schema: &'a Schema,
        plan: &'a Plan,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            self.ensured.check(schema)?;
            let mut conn = self.conn().await?;
            delete_where_on(&mut conn, &self.schema, schema, schema.table(), plan).await
        })
    }
}

/// After an update that wrote nothing: the typed error (reading the actual version).
async fn conflict_or_missing(
    store: &PgReadModelStore,
    schema: &Schema,
    id: &Value,
    expected: u64,
) -> Error {
    let mut conn = match store.conn().await {
        Ok(c) => c,
        Err(e) => return e,
    };
    match get_on(&mut conn, &store.schema, schema, schema.table(), id, false).await {
        Ok(Some(r)) => conflict(schema, id, expected, r.version),
        Ok(None) => not_found(schema, id),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------------------------
// The transaction-bound store.

/// What the unit of work believes the database holds for a row, before its pending
/// changes: read from the database (`verified`), or assumed by a deferred write (an
/// insert assumes no row, an update the version it expects), checked at the flush.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Base {
    Absent { verified: bool },
    Version { version: u64, verified: bool },
}

/// A row as the unit of work sees it.
#[derive(Clone, Debug)]
struct Cur {
    doc: String,
    version: u64,
    /// The declared fields' values, for a row written in this unit of work.
    values: Option<Vec<Value>>,
}

#[derive(Clone, Debug)]
struct Entry {
    base: Base,
    cur: Option<Cur>,
    dirty: bool,
    /// When it was first touched (errors at the flush name the first failing row).
    seq: u64,
}

struct Table {
    schema: Schema,
    physical: String,
    rows: HashMap<Key, Entry>,
}

struct TxState<'c> {
    conn: &'c mut PgConnection,
    tables: HashMap<String, Table>,
    seq: u64,
}

/// A [`ReadModelStore`] bound to a transaction open on a connection: every call runs
/// on that transaction, so read-model changes commit or roll back with it. This is
/// the store [`PgProjectionTarget`](crate::PgProjectionTarget)s and inline projections
/// (see [`PgEventStoreBuilder::inline_projection`](crate::PgEventStoreBuilder::inline_projection))
/// hand to [`ReadModelProjection::apply`](mink_es::projection::ReadModelProjection::apply);
/// applications can use it in their own transactions too.
///
/// # Unit of work
///
/// Writes are buffered, so that a batch of events costs a few statements, not one per
/// event:
///
/// * [`get`](ReadModelStore::get) reads through a per-store cache: a row is read from
///   the database at most once (then what this store wrote is what it reads);
/// * [`insert`](ReadModelStore::insert), [`upsert`](ReadModelStore::upsert),
///   [`update`](ReadModelStore::update) and [`delete`](ReadModelStore::delete) change
///   the cached row. Versions and errors are decided on the cache: an insert over a
///   cached row is [`ReadModelError::AlreadyExists`], an update at another version is
///   [`ReadModelError::VersionConflict`], at once. An upsert or delete of a row not
///   cached reads it first; an insert or update of a row not cached is deferred, and
///   its condition (no such row; the expected version) is checked at the flush;
/// * [`flush`](PgTxReadModelStore::flush) writes the changes with one multi-row
///   statement per kind (update, delete, insert) and table, each conditional on the
///   version the cache started from. It runs before [`find`](ReadModelStore::find),
///   [`count`](ReadModelStore::count) and [`delete_where`](ReadModelStore::delete_where),
///   and must run before the commit (targets and inline projections do). A deferred
///   condition that does not hold fails the flush with the operation's own error
///   ([`ReadModelError::AlreadyExists`], [`ReadModelError::VersionConflict`],
///   [`ReadModelError::NotFound`]); a row changed by another transaction since this
///   store read it fails it with [`ReadModelError::VersionConflict`] (retryable;
///   `expected: 0` stands for "no row"). A failed flush may have written part of the
///   unit of work: roll the transaction back.
///
/// `find` also fills the cache when its filter is on the id alone (`eq` or `in_list`
/// of ids, without window or cursor): a projection that reads the rows of a whole
/// batch with one such query, before applying its events one by one, reads the
/// database once per batch:
///
/// ```no_run
/// # use mink_es::readmodel::*;
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Count { id: String, n: i64 }
/// # impl ReadModel for Count { const NAME: &'static str = "counts";
/// #   const FIELDS: &'static [Field] = &[Field::text("id"), Field::integer("n")]; }
/// # async fn apply(models: &dyn ReadModelStore, events: &[mink_es::StoredEvent]) -> mink_es::Result<()> {
/// let counts = ReadModelRepository::<Count, _>::new(models);
/// let ids: Vec<&str> = events.iter().map(|e| e.stream_id.as_str()).collect();
/// counts.find(&Query::new().in_list("id", ids)).await?; // warms the cache
/// for e in events {
///     let n = counts.get(e.stream_id.as_str()).await?.map_or(0, |c| c.model.n); // no I/O
///     counts.upsert(&Count { id: e.stream_id.to_string(), n: n + 1 }).await?;  // buffered
/// }
/// # Ok(()) }
/// ```
///
/// Tables must be ensured through this store (in the transaction), or be declared by
/// the projection a target runs; others are [`ReadModelError::NotEnsured`].
pub struct PgTxReadModelStore<'c> {
    ns: SchemaName,
    shadow: bool,
    lock: bool,
    state: tokio::sync::Mutex<TxState<'c>>,
}

impl std::fmt::Debug for PgTxReadModelStore<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTxReadModelStore")
            .field("schema", &self.ns)
            .field("shadow", &self.shadow)
            .field("lock", &self.lock)
            .finish_non_exhaustive()
    }
}

impl<'c> PgTxReadModelStore<'c> {
    /// A store on the transaction open on `conn`, for the read models in `schema`.
    pub fn new(conn: &'c mut PgConnection, schema: SchemaName) -> Self {
        PgTxReadModelStore {
            ns: schema,
            shadow: false,
            lock: false,
            state: tokio::sync::Mutex::new(TxState {
                conn,
                tables: HashMap::new(),
                seq: 0,
            }),
        }
    }

    /// Sends every model to its blue/green shadow table (`rm_<NAME>__next`) instead of
    /// its live table (what a rebuilding target does).
    pub fn shadow(mut self, on: bool) -> Self {
        self.shadow = on;
        self
    }

    /// Locks the rows it reads (`SELECT … FOR UPDATE`, in [`get`](ReadModelStore::get),
    /// the reads of `upsert` and `delete`, and the id look-ups that fill the cache), so
    /// that concurrent transactions writing the same rows wait for each other instead
    /// of failing the flush with a version conflict. Inline projections use it (appends
    /// run concurrently); async targets do not (one process holds a projection).
    pub fn lock_rows(mut self, on: bool) -> Self {
        self.lock = on;
        self
    }

    fn physical(&self, schema: &Schema) -> String {
        if self.shadow {
            shadow_table(schema)
        } else {
            schema.table().to_owned()
        }
    }

    /// Takes `schema`'s table as ensured, without a look at the database (the caller
    /// ensured it).
    pub(crate) fn assume_ensured(&mut self, schema: &Schema) {
        let physical = self.physical(schema);
        self.state.get_mut().tables.insert(
            schema.table().to_owned(),
            Table {
                schema: schema.clone(),
                physical,
                rows: HashMap::new(),
            },
        );
    }

    /// Writes the buffered changes (see [the unit of work](Self#unit-of-work)).
    ///
    /// # Errors
    /// A deferred condition that does not hold, a row changed by another transaction,
    /// or a database error: roll the transaction back.
    pub async fn flush(&self) -> Result<()> {
        let mut st = self.state.lock().await;
        let st = &mut *st;
        for table in st.tables.values_mut() {
            flush_table(st.conn, &self.ns, table).await?;
        }
        Ok(())
    }
}

/// The table of `schema`, if ensured with its declaration.
fn table_of<'t>(tables: &'t mut HashMap<String, Table>, schema: &Schema) -> Result<&'t mut Table> {
    match tables.get_mut(schema.table()) {
        Some(t) if t.schema.descriptor() == schema.descriptor() => Ok(t),
        _ => Err(not_ensured(schema)),
    }
}

/// Loads the row with this id into the cache, unless it is there.
async fn load<'t>(
    conn: &mut PgConnection,
    ns: &SchemaName,
    table: &'t mut Table,
    id: &Value,
    seq: &mut u64,
    lock: bool,
) -> Result<&'t mut Entry> {
    let k = key(id);
    if !table.rows.contains_key(&k) {
        let found = get_on(conn, ns, &table.schema, &table.physical, id, lock).await?;
        *seq += 1;
        let entry = match found {
            Some(r) => Entry {
                base: Base::Version {
                    version: r.version,
                    verified: true,
                },
                cur: Some(Cur {
                    doc: r.doc,
                    version: r.version,
                    values: None,
                }),
                dirty: false,
                seq: *seq,
            },
            None => Entry {
                base: Base::Absent { verified: true },
                cur: None,
                dirty: false,
                seq: *seq,
            },
        };
        table.rows.insert(k.clone(), entry);
    }
    table
        .rows
        .get_mut(&k)
        .ok_or_else(|| Error::InvalidArgument("read-model cache lost a row".to_owned()))
}

fn written(row: &Row, version: u64) -> Option<Cur> {
    Some(Cur {
        doc: row.doc().to_owned(),
        version,
        values: Some(row.values().to_vec()),
    })
}

/// Writes a table's buffered changes and marks its rows clean.
async fn flush_table(conn: &mut PgConnection, ns: &SchemaName, table: &mut Table) -> Result<()> {
    let mut updates: Vec<(&Key, &Entry)> = Vec::new();
    let mut deletes: Vec<(&Key, &Entry)> = Vec::new();
    let mut inserts: Vec<(&Key, &Entry)> = Vec::new();
    let mut absent: Vec<(&Key, &Entry)> = Vec::new();
    for (k, e) in table.rows.iter().filter(|(_, e)| e.dirty) {
        match (e.base, &e.cur) {
            (Base::Version { .. }, Some(_)) => updates.push((k, e)),
            (Base::Version { .. }, None) => deletes.push((k, e)),
            (Base::Absent { .. }, Some(_)) => inserts.push((k, e)),
            (Base::Absent { verified: false }, None) => absent.push((k, e)),
            (Base::Absent { verified: true }, None) => {}
        }
    }
    if updates.is_empty() && deletes.is_empty() && inserts.is_empty() && absent.is_empty() {
        return Ok(());
    }
    let schema = &table.schema;
    let t = qualified(ns, &table.physical);
    let id = quote(schema.id_field().name());
    let mut failed: Vec<(&Key, &Entry)> = Vec::new();

    if !updates.is_empty() {
        let fields = schema.fields();
        let names: Vec<String> = fields.iter().map(|f| quote(f.name())).collect();
        let n = fields.len();
        let mut unnest: Vec<String> = fields
            .iter()
            .enumerate()
            .map(|(i, f)| format!("${}::{}", i + 1, array_type(f.field_type())))
            .collect();
        unnest.push(format!("${}::int8[]", n + 1));
        unnest.push(format!("${}::int8[]", n + 2));
        unnest.push(format!("${}::text[]", n + 3));
        let sets: Vec<String> = fields
            .iter()
            .zip(&names)
            .map(|(f, c)| format!("{c} = {}", cast_in(f.field_type(), &format!("u.{c}"))))
            .collect();
        let sql = format!(
            "UPDATE {t} AS r SET {}, {VERSION_COL} = u.{VERSION_COL}, {DOC_COL} = u.{DOC_COL} \
             FROM UNNEST({}) AS u({}, mink_base, {VERSION_COL}, {DOC_COL}) \
             WHERE r.{id} = u.{id} AND r.{VERSION_COL} = u.mink_base RETURNING r.{id}",
            sets.join(", "),
            unnest.join(", "),
            names.join(", "),
        );
        let mut cols: Vec<Column> = fields
            .iter()
            .map(|f| Column::new(f.field_type(), updates.len()))
            .collect();
        let mut bases = Vec::with_capacity(updates.len());
        let mut versions = Vec::with_capacity(updates.len());
        let mut docs = Vec::with_capacity(updates.len());
        for (_, e) in &updates {
            let (Base::Version { version: b, .. }, Some(cur)) = (e.base, &e.cur) else {
                continue;
            };
            let Some(values) = &cur.values else {
                continue;
            };
            for (c, v) in cols.iter_mut().zip(values) {
                c.push(v);
            }
            bases.push(version_i64(b));
            versions.push(version_i64(cur.version));
            docs.push(cur.doc.clone());
        }
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for c in cols {
            q = c.bind(q);
        }
        q = q.bind(bases).bind(versions).bind(docs);
        let rows = q.fetch_all(&mut *conn).await.map_err(|e| map(e, ns))?;
        let done: HashSet<Key> = rows
            .iter()
            .map(|r| read_key(schema, r, 0, ns))
            .collect::<Result<_>>()?;
        failed.extend(updates.iter().filter(|(k, _)| !done.contains(*k)));
    }

    if !deletes.is_empty() {
        let sql = format!(
            "DELETE FROM {t} AS r USING UNNEST($1::{}, $2::int8[]) AS u(id, base) \
             WHERE r.{id} = u.id AND r.{VERSION_COL} = u.base RETURNING r.{id}",
            id_array_type(schema)
        );
        let keys: Vec<&Key> = deletes.iter().map(|(k, _)| *k).collect();
        let bases: Vec<i64> = deletes
            .iter()
            .map(|(_, e)| match e.base {
                Base::Version { version, .. } => version_i64(version),
                Base::Absent { .. } => 0,
            })
            .collect();
        let q = ids_param(sqlx::query(AssertSqlSafe(sql)), schema, &keys).bind(bases);
        let rows = q.fetch_all(&mut *conn).await.map_err(|e| map(e, ns))?;
        let done: HashSet<Key> = rows
            .iter()
            .map(|r| read_key(schema, r, 0, ns))
            .collect::<Result<_>>()?;
        failed.extend(deletes.iter().filter(|(k, _)| !done.contains(*k)));
    }

    if !inserts.is_empty() {
        let refs: Vec<(&[Value], &str, u64)> = inserts
            .iter()
            .filter_map(|(_, e)| {
                let cur = e.cur.as_ref()?;
                Some((cur.values.as_deref()?, cur.doc.as_str(), cur.version))
            })
            .collect();
        let done: HashSet<Key> = insert_many(conn, ns, schema, &table.physical, &refs, true)
            .await?
            .into_iter()
            .collect();
        failed.extend(inserts.iter().filter(|(k, _)| !done.contains(*k)));
    }

    if !absent.is_empty() {
        let keys: Vec<&Key> = absent.iter().map(|(k, _)| *k).collect();
        let found = versions_of(conn, ns, schema, &table.physical, &keys).await?;
        failed.extend(absent.iter().filter(|(k, _)| found.contains_key(*k)));
    }

    if let Some((k, e)) = failed.iter().min_by_key(|(_, e)| e.seq) {
        let actual = versions_of(conn, ns, schema, &table.physical, &[*k]).await?;
        let idv = key_value(k);
        return Err(match (e.base, actual.get(*k)) {
            (Base::Absent { verified: false }, _) => already_exists(schema, &idv),
            (Base::Absent { verified: true }, a) => {
                conflict(schema, &idv, 0, a.copied().unwrap_or(0))
            }
            (
                Base::Version {
                    verified: false, ..
                },
                None,
            ) => not_found(schema, &idv),
            (Base::Version { version, .. }, a) => {
                conflict(schema, &idv, version, a.copied().unwrap_or(0))
            }
        });
    }

    for e in table.rows.values_mut() {
        if e.dirty {
            e.dirty = false;
            e.base = match &e.cur {
                Some(c) => Base::Version {
                    version: c.version,
                    verified: true,
                },
                None => Base::Absent { verified: true },
            };
            if let Some(c) = &mut e.cur {
                c.values = None;
            }
        }
    }
    Ok(())
}

/// Whether the plan selects rows by id alone (so that the rows it misses are known to
/// be absent): `id = v` or `id IN (…)`, no cursor, offset or limit.
fn id_lookup(schema: &Schema, plan: &Plan) -> Option<Vec<Value>> {
    if plan.keyset().is_some() || plan.offset() > 0 || plan.limit().is_some() {
        return None;
    }
    match plan.filter()? {
        Pred::Compare {
            field,
            op: CompareOp::Eq,
            value,
        } if *field == schema.id_index() => Some(vec![value.clone()]),
        Pred::In { field, values } if *field == schema.id_index() => Some(values.clone()),
        _ => None,
    }
}

impl ReadModelStore for PgTxReadModelStore<'_> {
    fn ensure_table<'a>(&'a self, schema: &'a Schema) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut st = self.state.lock().await;
            if table_of(&mut st.tables, schema).is_ok() {
                return Ok(());
            }
            let physical = self.physical(schema);
            ensure_in(st.conn, &self.ns, schema, &physical).await?;
            st.tables.insert(
                schema.table().to_owned(),
                Table {
                    schema: schema.clone(),
                    physical,
                    rows: HashMap::new(),
                },
            );
            Ok(())
        })
    }

    fn get<'a>(
        &'a self,
        schema: &'a Schema,
        id: &'a Value,
    ) -> BoxFuture<'a, Result<Option<StoredRow>>> {
        Box::pin(async move {
            let mut st = self.state.lock().await;
            let st = &mut *st;
            let table = table_of(&mut st.tables, schema)?;
            let e = load(st.conn, &self.ns, table, id, &mut st.seq, self.lock).await?;
            Ok(e.cur.as_ref().map(|c| StoredRow {
                doc: c.doc.clone(),
                version: c.version,
            }))
        })
    }

    fn insert<'a>(&'a self, schema: &'a Schema, row: &'a Row) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let mut st = self.state.lock().await;
            let st = &mut *st;
            let table = table_of(&mut st.tables, schema)?;
            match table.rows.get_mut(&key(row.id())) {
                Some(e) => {
                    if e.cur.is_some() {
                        return Err(already_exists(schema, row.id()));
                    }
                    e.cur = written(row, 1);
                    e.dirty = true;
                }
                None => {
                    st.seq += 1;
                    table.rows.insert(
                        key(row.id()),
                        Entry {
                            base: Base::Absent { verified: false },
                            cur: written(row, 1),
                            dirty: true,
                            seq: st.seq,
                        },
                    );
                }
            }
            Ok(1)
        })
    }

    fn upsert<'a>(&'a self, schema: &'a Schema, row: &'a Row) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let mut st = self.state.lock().await;
            let st = &mut *st;
            let table = table_of(&mut st.tables, schema)?;
            let e = load(st.conn, &self.ns, table, row.id(), &mut st.seq, self.lock).await?;
            let version = e.cur.as_ref().map_or(1, |c| c.version.saturating_add(1));
            e.cur = written(row, version);
            e.dirty = true;
            Ok(version)
        })
    }

    fn update<'a>(
        &'a self,
        schema: &'a Schema,
        row: &'a Row,
        expected: u64,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let mut st = self.state.lock().await;
            let st = &mut *st;
            let table = table_of(&mut st.tables, schema)?;
            let version = expected.saturating_add(1);
            match table.rows.get_mut(&key(row.id())) {
                Some(e) => match &e.cur {
                    None => return Err(not_found(schema, row.id())),
                    Some(c) if c.version != expected => {
                        return Err(conflict(schema, row.id(), expected, c.version));
                    }
                    Some(_) => {
                        e.cur = written(row, version);
                        e.dirty = true;
                    }
                },
                None => {
                    st.seq += 1;
                    table.rows.insert(
                        key(row.id()),
                        Entry {
                            base: Base::Version {
                                version: expected,
                                verified: false,
                            },
                            cur: written(row, version),
                            dirty: true,
                            seq: st.seq,
                        },
                    );
                }
            }
            Ok(version)
        })
    }

    fn delete<'a>(&'a self, schema: &'a Schema, id: &'a Value) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let mut st = self.state.lock().await;
            let st = &mut *st;
            let table = table_of(&mut st.tables, schema)?;
            let e = load(st.conn, &self.ns, table, id, &mut st.seq, self.lock).await?;
            let existed = e.cur.is_some();
            if existed {
                e.cur = None;
                e.dirty = true;
            }
            Ok(existed)
        })
    }

    fn find<'a>(
        &'a self,
        schema: &'a Schema,
        plan: &'a Plan,
    ) -> BoxFuture<'a, Result<Vec<StoredRow>>> {
        Box::pin(async move {
            let mut st = self.state.lock().await;
            let st = &mut *st;
            table_of(&mut st.tables, schema)?;
            for table in st.tables.values_mut() {
                flush_table(st.conn, &self.ns, table).await?;
            }
            let table = table_of(&mut st.tables, schema)?;
            let lookup = id_lookup(schema, plan);
            let rows = find_on(
                st.conn,
                &self.ns,
                schema,
                &table.physical,
                plan,
                lookup.is_some(),
                self.lock && lookup.is_some(),
            )
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            let mut seen = HashSet::new();
            for r in &rows {
                let stored = stored_row(r, &self.ns)?;
                if lookup.is_some() {
                    let k = read_key(schema, r, 2, &self.ns)?;
                    st.seq += 1;
                    table.rows.insert(
                        k.clone(),
                        Entry {
                            base: Base::Version {
                                version: stored.version,
                                verified: true,
                            },
                            cur: Some(Cur {
                                doc: stored.doc.clone(),
                                version: stored.version,
                                values: None,
                            }),
                            dirty: false,
                            seq: st.seq,
                        },
                    );
                    seen.insert(k);
                }
                out.push(stored);
            }
            if let Some(ids) = lookup {
                for id in &ids {
                    let k = key(id);
                    if !seen.contains(&k) {
                        st.seq += 1;
                        table.rows.insert(
                            k,
                            Entry {
                                base: Base::Absent { verified: true },
                                cur: None,
                                dirty: false,
                                seq: st.seq,
                            },
                        );
                    }
                }
            }
            Ok(out)
        })
    }

    fn count<'a>(&'a self, schema: &'a Schema, plan: &'a Plan) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let mut st = self.state.lock().await;
            let st = &mut *st;
            table_of(&mut st.tables, schema)?;
            for table in st.tables.values_mut() {
                flush_table(st.conn, &self.ns, table).await?;
            }
            let table = table_of(&mut st.tables, schema)?;
            count_on(st.conn, &self.ns, schema, &table.physical, plan).await
        })
    }

    fn delete_where<'a>(
        &'a self,
        schema: &'a Schema,
        plan: &'a Plan,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let mut st = self.state.lock().await;
            let st = &mut *st;
            table_of(&mut st.tables, schema)?;
            for table in st.tables.values_mut() {
                flush_table(st.conn, &self.ns, table).await?;
            }
            let table = table_of(&mut st.tables, schema)?;
            let n = delete_where_on(st.conn, &self.ns, schema, &table.physical, plan).await?;
            // The rows deleted are not known one by one: forget the cache.
            table.rows.clear();
            Ok(n)
        })
    }
}
