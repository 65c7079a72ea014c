//! [`MemoryReadModelStore`]: read models held in memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures::future::BoxFuture;
use parking_lot::RwLock;

use super::{Plan, ReadModelError, ReadModelStore, Row, Schema, StoredRow, Value};
use crate::Result;

/// Read models held in memory, for tests and prototypes: the same semantics as the
/// SQL stores (it passes the same conformance suite), nothing survives the process.
///
/// Cloning gives another handle to the same collections. Queries run over every row of
/// the model's collection (filter, sort, window), under a read lock.
#[derive(Clone, Default)]
pub struct MemoryReadModelStore {
    collections: Arc<RwLock<HashMap<String, Collection>>>,
}

impl std::fmt::Debug for MemoryReadModelStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = self.collections.read();
        f.debug_struct("MemoryReadModelStore")
            .field("collections", &c.keys().collect::<Vec<_>>())
            .finish()
    }
}

struct Collection {
    descriptor: String,
    rows: BTreeMap<Key, MemRow>,
}

struct MemRow {
    values: Vec<Value>,
    doc: String,
    version: u64,
}

/// An id, as a map key (ids are text or integers).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Int(i64),
    Text(String),
}

fn key(id: &Value) -> Key {
    match id {
        Value::Integer(n) => Key::Int(*n),
        Value::Text(s) => Key::Text(s.clone()),
        // Schemas only allow text and integer ids; anything else is refused before.
        other => Key::Text(other.to_string()),
    }
}

impl MemoryReadModelStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryReadModelStore::default()
    }

    /// Runs `f` on the schema's collection, if it is ensured with this declaration.
    fn read<T>(&self, schema: &Schema, f: impl FnOnce(&Collection) -> T) -> Result<T> {
        let collections = self.collections.read();
        match collections.get(schema.table()) {
            Some(c) if c.descriptor == schema.descriptor() => Ok(f(c)),
            _ => Err(not_ensured(schema)),
        }
    }

    fn write<T>(&self, schema: &Schema, f: impl FnOnce(&mut Collection) -> Result<T>) -> Result<T> {
        let mut collections = self.collections.write();
        match collections.get_mut(schema.table()) {
            Some(c) if c.descriptor == schema.descriptor() => f(c),
            _ => Err(not_ensured(schema)),
        }
    }

    fn ensure(&self, schema: &Schema) -> Result<()> {
        let mut collections = self.collections.write();
        let Some(existing) = collections.get(schema.table()) else {
            collections.insert(
                schema.table().to_owned(),
                Collection {
                    descriptor: schema.descriptor().to_owned(),
                    rows: BTreeMap::new(),
                },
            );
            return Ok(());
        };
        if existing.descriptor == schema.descriptor() {
            return Ok(());
        }
        // Re-read every document under the new declaration; all or nothing.
        let mut rows = BTreeMap::new();
        for old in existing.rows.values() {
            let row = schema.row_from_doc(&old.doc)?;
            let k = key(row.id());
            if rows.contains_key(&k) {
                return Err(duplicate_id(schema, row.id()).into());
            }
            rows.insert(
                k,
                MemRow {
                    values: row.values().to_vec(),
                    doc: old.doc.clone(),
                    version: old.version,
                },
            );
        }
        collections.insert(
            schema.table().to_owned(),
            Collection {
                descriptor: schema.descriptor().to_owned(),
                rows,
            },
        );
        Ok(())
    }

    fn select(c: &Collection, plan: &Plan) -> Vec<StoredRow> {
        let mut rows: Vec<&MemRow> = c
            .rows
            .values()
            .filter(|r| plan.matches(&r.values))
            .collect();
        rows.sort_by(|a, b| plan.compare_rows(&a.values, &b.values));
        let offset = usize::try_from(plan.offset()).unwrap_or(usize::MAX);
        let limit = plan
            .limit()
            .map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
        rows.into_iter()
            .skip(offset)
            .take(limit)
            .map(|r| StoredRow {
                doc: r.doc.clone(),
                version: r.version,
            })
            .collect()
    }
}

fn not_ensured(schema: &Schema) -> crate::Error {
    ReadModelError::NotEnsured {
        model: schema.model().to_owned(),
    }
    .into()
}

/// Two stored rows share an id under a changed declaration.
pub(crate) fn duplicate_id(schema: &Schema, id: &Value) -> ReadModelError {
    ReadModelError::InvalidModel {
        model: schema.model().to_owned(),
        reason: format!(
            "the table cannot be rebuilt for the new declaration: two stored rows have the id {id}"
        ),
    }
}

impl ReadModelStore for MemoryReadModelStore {
    fn ensure_table<'a>(&'a self, schema: &'a Schema) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.ensure(schema) })
    }

    fn get<'a>(
        &'a self,
        schema: &'a Schema,
        id: &'a Value,
    ) -> BoxFuture<'a, Result<Option<StoredRow>>> {
        Box::pin(async move {
            self.read(schema, |c| {
                c.rows.get(&key(id)).map(|r| StoredRow {
                    doc: r.doc.clone(),
                    version: r.version,
                })
            })
        })
    }

    fn insert<'a>(&'a self, schema: &'a Schema, row: &'a Row) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            self.write(schema, |c| {
                let k = key(row.id());
                if c.rows.contains_key(&k) {
                    return Err(ReadModelError::AlreadyExists {
                        model: schema.model().to_owned(),
                        id: row.id().to_string(),
                    }
                    .into());
                }
                c.rows.insert(
                    k,
                    MemRow {
                        values: row.values().to_vec(),
                        doc: row.doc().to_owned(),
                        version: 1,
                    },
                );
                Ok(1)
            })
        })
    }

    fn upsert<'a>(&'a self, schema: &'a Schema, row: &'a Row) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            self.write(schema, |c| {
                let version = c
                    .rows
                    .get(&key(row.id()))
                    .map_or(1, |r| r.version.saturating_add(1));
                c.rows.insert(
                    key(row.id()),
                    MemRow {
                        values: row.values().to_vec(),
                        doc: row.doc().to_owned(),
                        version,
                    },
                );
                Ok(version)
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
            self.write(schema, |c| {
                let Some(stored) = c.rows.get_mut(&key(row.id())) else {
                    return Err(ReadModelError::NotFound {
                        model: schema.model().to_owned(),
                        id: row.id().to_string(),
                    }
                    .into());
                };
                if stored.version != expected {
                    return Err(ReadModelError::VersionConflict {
                        model: schema.model().to_owned(),
                        id: row.id().to_string(),
                        expected,
                        actual: stored.version,
                    }
                    .into());
                }
                stored.version = expected.saturating_add(1);
                stored.values = row.values().to_vec();
                stored.doc = row.doc().to_owned();
                Ok(stored.version)
            })
        })
    }

    fn delete<'a>(&'a self, schema: &'a Schema, id: &'a Value) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move { self.write(schema, |c| Ok(c.rows.remove(&key(id)).is_some())) })
    }

    fn find<'a>(
        &'a self,
        schema: &'a Schema,
        plan: &'a Plan,
    ) -> BoxFuture<'a, Result<Vec<StoredRow>>> {
        Box::pin(async move { self.read(schema, |c| Self::select(c, plan)) })
    }

    fn count<'a>(&'a self, schema: &'a Schema, plan: &'a Plan) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            self.read(schema, |c| {
                c.rows.values().filter(|r| plan.matches(&r.values)).count() as u64
            })
        })
    }

    fn delete_where<'a>(
        &'a self,
        schema: &'a Schema,
        plan: &'a Plan,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            self.write(schema, |c| {
                let before = c.rows.len();
                c.rows.retain(|_, r| !plan.matches(&r.values));
                Ok((before - c.rows.len()) as u64)
            })
        })
    }
}
