//! Read models: typed, queryable views kept by projections, in memory, SQLite or
//! PostgreSQL, with the same results on every backend.
//!
//! * A [`ReadModel`] is a serde struct with a stable name and a declared list of
//!   queryable [`Field`]s, one of which is its id.
//! * A [`ReadModelRepository`] stores and queries one model on any
//!   [`ReadModelStore`]: [`MemoryReadModelStore`] here, `SqliteReadModelStore` in
//!   `mink-sqlite`, `PgReadModelStore` in `mink-postgres`.
//! * A [`Query`] filters ([`Filter`]: comparisons, `in`, `like`, null checks, AND/OR),
//!   orders (always completed by the id, so the order is total), windows
//!   (limit/offset) and pages with opaque keyset [`Cursor`]s.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use mink_es::readmodel::{
//!     Field, MemoryReadModelStore, Query, ReadModel, ReadModelError, ReadModelRepository,
//! };
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
//! struct OrderSummary {
//!     id: String,
//!     customer: String,
//!     total: f64,
//!     shipped_at: Option<chrono::DateTime<chrono::Utc>>,
//!     lines: Vec<String>, // stored, not queryable
//! }
//!
//! impl ReadModel for OrderSummary {
//!     const NAME: &'static str = "order_summaries";
//!     const FIELDS: &'static [Field] = &[
//!         Field::text("id"),
//!         Field::text("customer").indexed(),
//!         Field::float("total"),
//!         Field::timestamp("shipped_at").nullable(),
//!     ];
//! }
//!
//! let orders = ReadModelRepository::<OrderSummary, _>::new(MemoryReadModelStore::new());
//! orders.ensure_table().await?;
//! let order = |id: &str, customer: &str, total: f64| OrderSummary {
//!     id: id.into(), customer: customer.into(), total, shipped_at: None, lines: vec![],
//! };
//! orders.insert(&order("o-1", "ACME_1", 250.0)).await?;
//! orders.insert(&order("o-2", "ACMEx", 80.0)).await?;
//! orders.insert(&order("o-3", "ACME_2", 250.0)).await?;
//!
//! // Optimistic update: the version read must still be the stored one.
//! let o1 = orders.get("o-1").await?.expect("stored");
//! let mut changed = o1.model.clone();
//! changed.total = 300.0;
//! assert_eq!(orders.update(&changed, o1.version).await?, 2);
//! let stale = orders.update(&changed, o1.version).await.unwrap_err();
//! assert!(matches!(
//!     stale.read_model(),
//!     Some(ReadModelError::VersionConflict { expected: 1, actual: 2, .. })
//! ));
//!
//! // `starts_with` escapes `_`; ties on `total` are broken by id.
//! let q = Query::new().starts_with("customer", "ACME_").is_null("shipped_at").order_desc("total");
//! let ids: Vec<String> = orders.find(&q).await?.into_iter().map(|v| v.model.id).collect();
//! assert_eq!(ids, ["o-1", "o-3"]);
//!
//! // Keyset pagination.
//! let page = orders.page(&Query::new().order_asc("total").limit(2)).await?;
//! assert_eq!(page.items.len(), 2);
//! let rest = orders.page(&Query::new().order_asc("total").limit(2).after(page.next.unwrap())).await?;
//! assert_eq!(rest.items.len(), 1);
//! assert!(rest.next.is_none());
//!
//! // A misspelled field is an error, never a wider delete.
//! assert!(orders.delete_where(&Query::new().eq("custmer", "ACMEx")).await.is_err());
//! assert_eq!(orders.count(&Query::new()).await?, 3);
//! # Ok::<(), mink_es::Error>(())
//! # });
//! ```
//!
//! # Semantics, on every backend
//!
//! | | |
//! |---|---|
//! | text | compared and sorted by UTF-8 bytes (= code points): `"Z" < "a" < "é"`; no NUL |
//! | numbers | integers as `i64`, floats as finite `f64` (`-0.0 = 0.0`); an integer operand on a float field is taken as a float if exact (≤ 2⁵³), a float operand on an integer field is a type mismatch |
//! | booleans | `false < true` |
//! | timestamps | RFC 3339 in the model, kept to the microsecond (truncated), years 1–9999 |
//! | JSON fields | stored; only `is_null`/`is_not_null` apply |
//! | null | matches only `is_null`: no comparison (not even `ne`), `in` or `like` matches it; sorts before every value (first ascending, last descending) |
//! | `like` | whole-value, case-sensitive; `%` any text, `_` one character, `\` escapes `%` `_` `\` (see [`LikePattern`]) |
//! | `in` | an empty list matches no row |
//! | ordering | the `order_by` fields, then the id ascending (total; no order given: by id) |
//! | pagination | limit/offset, and keyset cursors ([`Query::after`], [`Query::before`]) that never skip or repeat a row |
//! | count | counts the filter's rows (ignores ordering, window and cursor) |
//! | delete_where | refuses a query without a filter unless it is [`Query::all`]; takes no limit, offset or cursor |
//!
//! Every name and value is checked against the model's declaration before any I/O:
//! unknown fields, type mismatches and malformed queries are typed
//! [`ReadModelError`]s (inside [`crate::Error::ReadModel`]) and change nothing.
//!
//! # Storage
//!
//! Every store keeps, per model, a table `rm_<NAME>` with one column per declared
//! field (the id is the primary key), the row's version, and the whole model as JSON
//! (so undeclared keys round-trip exactly). Queries run in the database on the
//! columns. [`ReadModelRepository::ensure_table`] creates the table, or rebuilds it
//! from the stored documents when the declaration changed.

mod error;
mod like;
mod memory;
mod query;
mod schema;
pub mod sql;
mod store;
mod value;

use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use error::ReadModelError;
pub use like::{LikePattern, escape_like};
pub use memory::MemoryReadModelStore;
pub use query::{CompareOp, Cursor, Filter, Plan, Pred, Query, SortKey, SortOrder};
pub use schema::{
    Field, FieldType, MAX_FIELD_NAME_LEN, MAX_MODEL_NAME_LEN, MAX_QUERY_VALUES, RESERVED_PREFIX,
    Row, Schema,
};
pub use store::{EnsuredTables, ReadModelStore, StoredRow};
pub use value::Value;

use crate::{Error, Result};
use query::{Purpose, cursor_of};

/// A read model: a serde struct stored as one row of its own table, queryable by its
/// declared fields.
///
/// The model must serialize to a JSON object. Each declared [`Field`] is a top-level
/// key of that object; other keys are stored too, but cannot be queried.
///
/// ```
/// use mink_es::readmodel::{Field, ReadModel};
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Customer { number: i64, name: String, vip: bool }
///
/// impl ReadModel for Customer {
///     const NAME: &'static str = "customers";
///     const ID: &'static str = "number";
///     const FIELDS: &'static [Field] =
///         &[Field::integer("number"), Field::text("name").indexed(), Field::bool("vip")];
/// }
/// ```
pub trait ReadModel: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The model's stable name: its table is `rm_<NAME>`. Lowercase ASCII letters,
    /// digits and `_`, at most [`MAX_MODEL_NAME_LEN`] bytes. Renaming it starts a new,
    /// empty table.
    const NAME: &'static str;

    /// The name of the id field (default `"id"`): a declared text or integer field,
    /// not nullable.
    const ID: &'static str = "id";

    /// The queryable fields, the id among them. Changing them changes the table's
    /// declaration: [`ReadModelRepository::ensure_table`] rebuilds the table.
    const FIELDS: &'static [Field];
}

/// A model with the version of its stored row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned<M> {
    /// The model.
    pub model: M,
    /// Its row's version (1 when inserted; one more at each write). Pass it to
    /// [`ReadModelRepository::update`].
    pub version: u64,
}

impl<M> Versioned<M> {
    /// The model, without its version.
    pub fn into_inner(self) -> M {
        self.model
    }
}

/// One page of a query's results, with the cursors to the neighbouring pages.
#[derive(Clone, Debug, PartialEq)]
pub struct Page<M> {
    /// The rows, in the query's order.
    pub items: Vec<Versioned<M>>,
    /// Pass to [`Query::after`] for the following page. `None` when no row follows
    /// (as far as this read could tell).
    pub next: Option<Cursor>,
    /// Pass to [`Query::before`] for the preceding page. `None` when the page is the
    /// first one (it started at the beginning, or a `before` read found nothing more).
    pub prev: Option<Cursor>,
}

/// How many times [`ReadModelRepository::modify`] retries after a version conflict.
pub const MODIFY_ATTEMPTS: u32 = 100;

/// The typed repository of one read model `M` on a store `S`: get, insert, upsert,
/// optimistic update, delete and queries.
///
/// Everything a call needs is checked before the store is asked: the model's
/// declaration, ids, serialized models, queries. Cloning is as cheap as cloning `S`.
///
/// See the [module docs](self) for an example.
pub struct ReadModelRepository<M, S> {
    store: S,
    schema: Option<Arc<Schema>>,
    _model: PhantomData<fn() -> M>,
}

impl<M, S: Clone> Clone for ReadModelRepository<M, S> {
    fn clone(&self) -> Self {
        ReadModelRepository {
            store: self.store.clone(),
            schema: self.schema.clone(),
            _model: PhantomData,
        }
    }
}

impl<M, S: std::fmt::Debug> std::fmt::Debug for ReadModelRepository<M, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadModelRepository")
            .field("schema", &self.schema)
            .field("store", &self.store)
            .finish()
    }
}

impl<M: ReadModel, S: ReadModelStore> ReadModelRepository<M, S> {
    /// A repository of `M` on `store`. An invalid declaration of `M` is reported by
    /// every call ([`ReadModelError::InvalidModel`]).
    pub fn new(store: S) -> Self {
        ReadModelRepository {
            store,
            schema: Schema::of::<M>().ok().map(Arc::new),
            _model: PhantomData,
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// `M`'s validated declaration.
    pub fn schema(&self) -> Result<&Schema> {
        match &self.schema {
            Some(s) => Ok(s),
            None => Err(Schema::of::<M>().err().map_or_else(
                || {
                    Error::from(ReadModelError::InvalidModel {
                        model: M::NAME.to_owned(),
                        reason: "invalid declaration".to_owned(),
                    })
                },
                Error::from,
            )),
        }
    }

    /// Creates `M`'s table, or rebuilds it when `M`'s declaration changed since (every
    /// stored model is re-read under the new declaration; if one does not fit, the
    /// rebuild fails and the table stays as it was). Call it once per store handle
    /// before the other methods, which fail with [`ReadModelError::NotEnsured`]
    /// otherwise. Cheap when the table is up to date.
    #[tracing::instrument(level = "debug", skip_all, fields(model = M::NAME))]
    pub async fn ensure_table(&self) -> Result<()> {
        self.store.ensure_table(self.schema()?).await
    }

    /// The model with this id, or `None`.
    ///
    /// # Errors
    /// [`ReadModelError::TypeMismatch`] for an id of the wrong type.
    #[tracing::instrument(level = "debug", skip_all, fields(model = M::NAME))]
    pub async fn get(&self, id: impl Into<Value>) -> Result<Option<Versioned<M>>> {
        let schema = self.schema()?;
        let id = schema.id_value(id.into())?;
        match self.store.get(schema, &id).await? {
            Some(row) => Ok(Some(decode(schema, row)?)),
            None => Ok(None),
        }
    }

    /// Stores a new model at version 1.
    ///
    /// # Errors
    /// [`ReadModelError::AlreadyExists`] when its id is taken (nothing is written);
    /// [`ReadModelError::TypeMismatch`], [`ReadModelError::InvalidValue`] or
    /// [`ReadModelError::Encode`] when the model does not fit its declaration.
    #[tracing::instrument(level = "debug", skip_all, fields(model = M::NAME))]
    pub async fn insert(&self, model: &M) -> Result<u64> {
        let schema = self.schema()?;
        let row = schema.row(model)?;
        self.store.insert(schema, &row).await
    }

    /// Stores the model, new (version 1) or over the stored one (one version up), and
    /// returns its version.
    #[tracing::instrument(level = "debug", skip_all, fields(model = M::NAME))]
    pub async fn upsert(&self, model: &M) -> Result<u64> {
        let schema = self.schema()?;
        let row = schema.row(model)?;
        self.store.upsert(schema, &row).await
    }

    /// Replaces the stored model with the same id if its version is still `expected`
    /// (the version read), and returns the new version.
    ///
    /// # Errors
    /// [`ReadModelError::VersionConflict`] (with the expected and the actual version)
    /// when the row changed since; [`ReadModelError::NotFound`] when there is no such
    /// row. Nothing is written then.
    #[tracing::instrument(level = "debug", skip_all, fields(model = M::NAME))]
    pub async fn update(&self, model: &M, expected: u64) -> Result<u64> {
        let schema = self.schema()?;
        let row = schema.row(model)?;
        self.store.update(schema, &row, expected).await
    }

    /// Reads the model with this id, applies `f`, and writes it back with an
    /// optimistic check, retrying from the read after a version conflict (up to
    /// [`MODIFY_ATTEMPTS`] times): concurrent `modify` calls never lose an update.
    ///
    /// # Errors
    /// [`ReadModelError::NotFound`] when there is no such row;
    /// [`ReadModelError::InvalidValue`] when `f` changes the id; the last
    /// [`ReadModelError::VersionConflict`] when every attempt lost a race.
    #[tracing::instrument(level = "debug", skip_all, fields(model = M::NAME))]
    pub async fn modify<F>(&self, id: impl Into<Value>, mut f: F) -> Result<Versioned<M>>
    where
        F: FnMut(&mut M) + Send,
    {
        let schema = self.schema()?;
        let id = schema.id_value(id.into())?;
        let mut last = None;
        for _ in 0..MODIFY_ATTEMPTS {
            let Some(stored) = self.store.get(schema, &id).await? else {
                return Err(ReadModelError::NotFound {
                    model: schema.model().to_owned(),
                    id: id.to_string(),
                }
                .into());
            };
            let Versioned { mut model, version } = decode::<M>(schema, stored)?;
            f(&mut model);
            let row = schema.row(&model)?;
            if row.id() != &id {
                return Err(ReadModelError::InvalidValue {
                    model: schema.model().to_owned(),
                    field: schema.id_field().name().to_owned(),
                    reason: "modify must not change the id".to_owned(),
                }
                .into());
            }
            match self.store.update(schema, &row, version).await {
                Ok(version) => return Ok(Versioned { model, version }),
                Err(Error::ReadModel(e)) if e.is_version_conflict() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last
            .unwrap_or_else(|| ReadModelError::NotFound {
                model: schema.model().to_owned(),
                id: id.to_string(),
            })
            .into())
    }

    /// Deletes the model with this id; `false` when there was none.
    #[tracing::instrument(level = "debug", skip_all, fields(model = M::NAME))]
    pub async fn delete(&self, id: impl Into<Value>) -> Result<bool> {
        let schema = self.schema()?;
        let id = schema.id_value(id.into())?;
        self.store.delete(schema, &id).await
    }

    /// The models the query selects, in its order.
    ///
    /// # Errors
    /// [`ReadModelError::UnknownField`], [`ReadModelError::TypeMismatch`],
    /// [`ReadModelError::InvalidQuery`] or [`ReadModelError::InvalidCursor`] for a bad
    /// query, before any I/O.
    #[tracing::instrument(level = "debug", skip_all, fields(model = M::NAME))]
    pub async fn find(&self, query: &Query<M>) -> Result<Vec<Versioned<M>>> {
        let schema = self.schema()?;
        let plan = query.plan(schema, Purpose::Find { extra: false })?;
        let mut rows = self.store.find(schema, &plan).await?;
        if plan.reversed() {
            rows.reverse();
        }
        rows.into_iter().map(|r| decode(schema, r)).collect()
    }

    /// The first model the query selects, if any.
    pub async fn find_one(&self, query: &Query<M>) -> Result<Option<Versioned<M>>> {
        let q = query.clone().limit(1);
        Ok(self.find(&q).await?.into_iter().next())
    }

    /// One page of the query's results, with cursors to the next and previous pages
    /// (see [`Page`]). Use a limit: without one, the page holds every row.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// # use mink_es::readmodel::*;
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Item { id: i64, group: i64 }
    /// # impl ReadModel for Item { const NAME: &'static str = "items";
    /// #   const FIELDS: &'static [Field] = &[Field::integer("id"), Field::integer("group")]; }
    /// let items = ReadModelRepository::<Item, _>::new(MemoryReadModelStore::new());
    /// items.ensure_table().await?;
    /// for id in 0..10 { items.insert(&Item { id, group: id % 3 }).await?; }
    /// let query = Query::<Item>::new().order_asc("group").limit(4);
    /// let mut seen = Vec::new();
    /// let mut page = items.page(&query).await?;
    /// loop {
    ///     seen.extend(page.items.iter().map(|v| v.model.id));
    ///     let Some(next) = page.next else { break };
    ///     page = items.page(&query.clone().after(next)).await?;
    /// }
    /// assert_eq!(seen, [0, 3, 6, 9, 1, 4, 7, 2, 5, 8]);
    /// # Ok::<(), mink_es::Error>(())
    /// # });
    /// ```
    #[tracing::instrument(level = "debug", skip_all, fields(model = M::NAME))]
    pub async fn page(&self, query: &Query<M>) -> Result<Page<M>> {
        let schema = self.schema()?;
        let plan = query.plan(schema, Purpose::Find { extra: true })?;
        let mut rows = self.store.find(schema, &plan).await?;
        let mut more = false;
        if let Some(limit) = query.limit_value() {
            let limit = usize::try_from(limit).unwrap_or(usize::MAX);
            if rows.len() > limit {
                rows.truncate(limit);
                more = true;
            }
        }
        if plan.reversed() {
            rows.reverse();
        }
        let keys = query.keys(schema)?;
        let cursor = |row: &StoredRow| -> Result<Cursor> {
            let values = schema.row_from_doc(&row.doc)?;
            Ok(cursor_of(schema, &keys, values.values()))
        };
        let (first, last) = match (rows.first(), rows.last()) {
            (Some(f), Some(l)) => (Some(cursor(f)?), Some(cursor(l)?)),
            _ => (None, None),
        };
        let (next, prev) = if query.reads_before() {
            (last, first.filter(|_| more))
        } else {
            (last.filter(|_| more), first.filter(|_| query.skips_rows()))
        };
        let items = rows
            .into_iter()
            .map(|r| decode(schema, r))
            .collect::<Result<_>>()?;
        Ok(Page { items, next, prev })
    }

    /// How many models satisfy the query's filters (ordering, limit, offset and cursor
    /// are ignored).
    #[tracing::instrument(level = "debug", skip_all, fields(model = M::NAME))]
    pub async fn count(&self, query: &Query<M>) -> Result<u64> {
        let schema = self.schema()?;
        let plan = query.plan(schema, Purpose::Filter)?;
        self.store.count(schema, &plan).await
    }

    /// Deletes the models that satisfy the query's filters; returns how many.
    ///
    /// # Errors
    /// [`ReadModelError::InvalidQuery`] for a query without a filter (unless made by
    /// [`Query::all`]) or with a limit, offset or cursor; the query errors of
    /// [`ReadModelRepository::find`]. Nothing is deleted then.
    #[tracing::instrument(level = "debug", skip_all, fields(model = M::NAME))]
    pub async fn delete_where(&self, query: &Query<M>) -> Result<u64> {
        let schema = self.schema()?;
        let plan = query.plan(schema, Purpose::Delete)?;
        self.store.delete_where(schema, &plan).await
    }
}

fn decode<M: DeserializeOwned>(schema: &Schema, row: StoredRow) -> Result<Versioned<M>> {
    let model = serde_json::from_str(&row.doc).map_err(|source| ReadModelError::Decode {
        model: schema.model().to_owned(),
        source,
    })?;
    Ok(Versioned {
        model,
        version: row.version,
    })
}
