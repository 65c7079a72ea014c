//! [`ReadModelStore`]: what a backend implements to hold read models.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use parking_lot::RwLock;

use super::{Plan, ReadModelError, Row, Schema, Value};
use crate::Result;

/// A stored row, as a store gives it back: the model's JSON document and its version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRow {
    /// The model as JSON text, exactly as [`Row::doc`] gave it.
    pub doc: String,
    /// The row's version: 1 when inserted, then one more at each write.
    pub version: u64,
}

/// Storage of read models: one table (or collection) per model, made by
/// [`ReadModelStore::ensure_table`], rows keyed by the model's id.
///
/// This is the contract a backend implements (memory, SQLite, PostgreSQL, …);
/// applications use the typed [`ReadModelRepository`](super::ReadModelRepository),
/// which validates models and queries against their [`Schema`] before calling it. The
/// [`Row`]s and [`Plan`]s a store receives are therefore already checked: names
/// resolve, values have their field's type.
///
/// The methods return boxed futures so that the trait can be used as
/// `Arc<dyn ReadModelStore>`. Every backend must give the same results for the same
/// calls; `mink-testing`'s `readmodel_tests!` checks that.
///
/// # Versions
///
/// A store keeps a version per row: 1 on insert, incremented by every upsert or update
/// of the row. [`update`](ReadModelStore::update) writes only when the stored version
/// is the one expected.
///
/// # Ensuring tables
///
/// [`ensure_table`](ReadModelStore::ensure_table) creates the model's table, or
/// rebuilds it when the model's [`Schema::descriptor`] changed since it was created
/// (re-reading every stored document under the new declaration, all or nothing). Every
/// other method fails with [`ReadModelError::NotEnsured`], without I/O, for a schema
/// that was not ensured through this store handle (see [`EnsuredTables`]).
pub trait ReadModelStore: Send + Sync {
    /// Creates (or rebuilds, for a changed declaration) the table of `schema`.
    /// Idempotent; safe to call from several processes at once.
    fn ensure_table<'a>(&'a self, schema: &'a Schema) -> BoxFuture<'a, Result<()>>;

    /// The row with this id, if any. `id` is of the id field's type.
    fn get<'a>(
        &'a self,
        schema: &'a Schema,
        id: &'a Value,
    ) -> BoxFuture<'a, Result<Option<StoredRow>>>;

    /// Stores a new row at version 1, or fails with
    /// [`ReadModelError::AlreadyExists`] (writing nothing).
    fn insert<'a>(&'a self, schema: &'a Schema, row: &'a Row) -> BoxFuture<'a, Result<u64>>;

    /// Stores the row: a new one at version 1, or over the existing one, one version
    /// up. Returns the new version.
    fn upsert<'a>(&'a self, schema: &'a Schema, row: &'a Row) -> BoxFuture<'a, Result<u64>>;

    /// Replaces the row if its stored version is `expected`, and returns the new
    /// version (`expected + 1`). Fails with [`ReadModelError::NotFound`] when there is
    /// no such row, [`ReadModelError::VersionConflict`] (with the actual version) when
    /// its version differs; then nothing is written.
    fn update<'a>(
        &'a self,
        schema: &'a Schema,
        row: &'a Row,
        expected: u64,
    ) -> BoxFuture<'a, Result<u64>>;

    /// Deletes the row with this id; `false` when there was none.
    fn delete<'a>(&'a self, schema: &'a Schema, id: &'a Value) -> BoxFuture<'a, Result<bool>>;

    /// The rows the plan selects, in its order (see [`Plan`]).
    fn find<'a>(
        &'a self,
        schema: &'a Schema,
        plan: &'a Plan,
    ) -> BoxFuture<'a, Result<Vec<StoredRow>>>;

    /// How many rows satisfy [`Plan::filter`] (the rest of the plan is empty).
    fn count<'a>(&'a self, schema: &'a Schema, plan: &'a Plan) -> BoxFuture<'a, Result<u64>>;

    /// Deletes the rows that satisfy [`Plan::filter`] (every row when it is `None`: the
    /// repository only sends that for an explicit `Query::all()`); returns how many.
    fn delete_where<'a>(&'a self, schema: &'a Schema, plan: &'a Plan)
    -> BoxFuture<'a, Result<u64>>;
}

impl<T: ReadModelStore + ?Sized> ReadModelStore for Arc<T> {
    fn ensure_table<'a>(&'a self, schema: &'a Schema) -> BoxFuture<'a, Result<()>> {
        (**self).ensure_table(schema)
    }

    fn get<'a>(
        &'a self,
        schema: &'a Schema,
        id: &'a Value,
    ) -> BoxFuture<'a, Result<Option<StoredRow>>> {
        (**self).get(schema, id)
    }

    fn insert<'a>(&'a self, schema: &'a Schema, row: &'a Row) -> BoxFuture<'a, Result<u64>> {
        (**self).insert(schema, row)
    }

    fn upsert<'a>(&'a self, schema: &'a Schema, row: &'a Row) -> BoxFuture<'a, Result<u64>> {
        (**self).upsert(schema, row)
    }

    fn update<'a>(
        &'a self,
        schema: &'a Schema,
        row: &'a Row,
        expected: u64,
    ) -> BoxFuture<'a, Result<u64>> {
        (**self).update(schema, row, expected)
    }

    fn delete<'a>(&'a self, schema: &'a Schema, id: &'a Value) -> BoxFuture<'a, Result<bool>> {
        (**self).delete(schema, id)
    }

    fn find<'a>(
        &'a self,
        schema: &'a Schema,
        plan: &'a Plan,
    ) -> BoxFuture<'a, Result<Vec<StoredRow>>> {
        (**self).find(schema, plan)
    }

    fn count<'a>(&'a self, schema: &'a Schema, plan: &'a Plan) -> BoxFuture<'a, Result<u64>> {
        (**self).count(schema, plan)
    }

    fn delete_where<'a>(
        &'a self,
        schema: &'a Schema,
        plan: &'a Plan,
    ) -> BoxFuture<'a, Result<u64>> {
        (**self).delete_where(schema, plan)
    }
}

impl<T: ReadModelStore + ?Sized> ReadModelStore for &T {
    fn ensure_table<'a>(&'a self, schema: &'a Schema) -> BoxFuture<'a, Result<()>> {
        (**self).ensure_table(schema)
    }

    fn get<'a>(
        &'a self,
        schema: &'a Schema,
        id: &'a Value,
    ) -> BoxFuture<'a, Result<Option<StoredRow>>> {
        (**self).get(schema, id)
    }

    fn insert<'a>(&'a self, schema: &'a Schema, row: &'a Row) -> BoxFuture<'a, Result<u64>> {
        (**self).insert(schema, row)
    }

    fn upsert<'a>(&'a self, schema: &'a Schema, row: &'a Row) -> BoxFuture<'a, Result<u64>> {
        (**self).upsert(schema, row)
    }

    fn update<'a>(
        &'a self,
        schema: &'a Schema,
        row: &'a Row,
        expected: u64,
    ) -> BoxFuture<'a, Result<u64>> {
        (**self).update(schema, row, expected)
    }

    fn delete<'a>(&'a self, schema: &'a Schema, id: &'a Value) -> BoxFuture<'a, Result<bool>> {
        (**self).delete(schema, id)
    }

    fn find<'a>(
        &'a self,
        schema: &'a Schema,
        plan: &'a Plan,
    ) -> BoxFuture<'a, Result<Vec<StoredRow>>> {
        (**self).find(schema, plan)
    }

    fn count<'a>(&'a self, schema: &'a Schema, plan: &'a Plan) -> BoxFuture<'a, Result<u64>> {
        (**self).count(schema, plan)
    }

    fn delete_where<'a>(
        &'a self,
        schema: &'a Schema,
        plan: &'a Plan,
    ) -> BoxFuture<'a, Result<u64>> {
        (**self).delete_where(schema, plan)
    }
}

/// The tables a store handle ensured, with the declaration each was ensured for: a
/// helper for [`ReadModelStore`] implementations.
///
/// A store marks a schema after [`ReadModelStore::ensure_table`] succeeds, and checks
/// it before every other operation, so that an operation on a table that was never
/// created, or that was created for another declaration of the model, fails with
/// [`ReadModelError::NotEnsured`] before any I/O rather than with a driver error.
#[derive(Debug, Default)]
pub struct EnsuredTables {
    tables: RwLock<HashMap<String, String>>,
}

impl EnsuredTables {
    /// An empty set.
    pub fn new() -> Self {
        EnsuredTables::default()
    }

    /// Records that `schema`'s table is ensured, with this declaration.
    pub fn mark(&self, schema: &Schema) {
        self.tables
            .write()
            .insert(schema.table().to_owned(), schema.descriptor().to_owned());
    }

    /// Forgets `schema`'s table (it was dropped).
    pub fn forget(&self, schema: &Schema) {
        self.tables.write().remove(schema.table());
    }

    /// [`ReadModelError::NotEnsured`] unless `schema`'s table was ensured with exactly
    /// this declaration.
    pub fn check(&self, schema: &Schema) -> Result<(), ReadModelError> {
        match self.tables.read().get(schema.table()) {
            Some(d) if d == schema.descriptor() => Ok(()),
            _ => Err(ReadModelError::NotEnsured {
                model: schema.model().to_owned(),
            }),
        }
    }
}
