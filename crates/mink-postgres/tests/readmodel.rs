//! Read models on PostgreSQL (`MINK_POSTGRES_URL`): the shared conformance suites of
//! `mink-testing` (read-model stores and projection control), direct comparisons with
//! the in-memory reference store, and the transaction-bound store's unit of work.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use chrono::{DateTime, TimeZone, Utc};
use mink_es::Error;
use mink_es::readmodel::{
    Field, Filter, MemoryReadModelStore, Query, ReadModel, ReadModelError, ReadModelRepository,
    ReadModelStore, Schema,
};
use mink_postgres::sqlx::{self, AssertSqlSafe};
use mink_postgres::{PgEventStore, PgReadModelStore, PgTxReadModelStore};
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------
// The shared conformance suites.

struct PgReadModels {
    url: String,
    schemas: common::Schemas,
}

impl mink_testing::readmodel::ReadModelFactory for PgReadModels {
    type Store = PgReadModelStore;

    async fn create(&self) -> PgReadModelStore {
        common::store_with(&self.url, &self.schemas, |b| b.max_connections(8))
            .await
            .read_models()
    }
}

struct PgControls {
    url: String,
    schemas: common::Schemas,
}

impl mink_testing::control::ControlFactory for PgControls {
    async fn create(&self) -> mink_testing::control::Controls {
        let store = common::store_with(&self.url, &self.schemas, |b| b.max_connections(8)).await;
        let other =
            common::other_process(&self.url, store.schema(), |b| b.max_connections(8)).await;
        mink_testing::control::Controls::two(store.projection_control(), other.projection_control())
    }
}

mod conformance {
    use super::*;

    mink_testing::readmodel_tests!(async {
        common::url().map(|url| PgReadModels {
            schemas: common::Schemas::new(&url),
            url,
        })
    });
}

mod control_conformance {
    use super::*;

    mink_testing::control_tests!(async {
        common::url().map(|url| PgControls {
            schemas: common::Schemas::new(&url),
            url,
        })
    });
}

// ---------------------------------------------------------------------------------
// Models and helpers.

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Item {
    id: String,
    name: String,
    n: Option<i64>,
    x: f64,
    flag: bool,
    at: Option<DateTime<Utc>>,
    extra: Option<serde_json::Value>,
    /// Not declared: stored, not queryable.
    tags: Vec<String>,
}

impl ReadModel for Item {
    const NAME: &'static str = "items";
    const FIELDS: &'static [Field] = &[
        Field::text("id"),
        Field::text("name").indexed(),
        Field::integer("n").nullable().indexed(),
        Field::float("x"),
        Field::bool("flag"),
        Field::timestamp("at").nullable(),
        Field::json("extra").nullable(),
    ];
}

/// The same model name, declared differently (a new indexed field, `n` not nullable).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct ItemV2 {
    id: String,
    name: String,
    n: Option<i64>,
    x: f64,
    flag: bool,
    tags: Vec<String>,
}

impl ReadModel for ItemV2 {
    const NAME: &'static str = "items";
    const FIELDS: &'static [Field] = &[
        Field::text("id"),
        Field::text("name"),
        Field::float("x").indexed(),
        Field::bool("flag").indexed(),
    ];
}

/// A declaration the stored rows cannot fit (`n` not nullable).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct ItemStrict {
    id: String,
    n: i64,
}

impl ReadModel for ItemStrict {
    const NAME: &'static str = "items";
    const FIELDS: &'static [Field] = &[Field::text("id"), Field::integer("n")];
}

async fn pg() -> Option<(PgEventStore, common::Schemas)> {
    let url = common::url()?;
    let schemas = common::Schemas::new(&url);
    let store = common::store_with(&url, &schemas, |b| b.max_connections(8)).await;
    Some((store, schemas))
}

fn t(micros: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(micros).unwrap()
}

fn item(id: &str, name: &str, n: Option<i64>, x: f64) -> Item {
    Item {
        id: id.into(),
        name: name.into(),
        n,
        x,
        flag: n.is_some_and(|n| n % 2 == 0),
        at: n.map(|n| t(1_700_000_000_000_000 + n * 1_000_001)),
        extra: n.map(|n| serde_json::json!({ "n": n, "nul": "a\u{0}b" })),
        tags: vec![format!("tag-{id}")],
    }
}

/// A dataset with bytes-order traps, nulls, LIKE metacharacters and float edge cases.
fn dataset() -> Vec<Item> {
    let names = [
        "Z", "a", "é", "É", "ß", "😀", "a_b", "a%b", "a\\b", "axb", "ab", "", "zz", "A", "a b",
        "Straße", "ä", "a_c", "%", "_",
    ];
    let xs = [-0.0, 0.0, 1.5, -2.25, 1e300, -1e-300, 3.0, 3.0];
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let n = if i % 4 == 3 {
                None
            } else {
                Some((i as i64 % 5) - 2)
            };
            item(&format!("i{i:02}"), name, n, xs[i % xs.len()])
        })
        .collect()
}

fn ids(v: &[mink_es::readmodel::Versioned<Item>]) -> Vec<String> {
    v.iter().map(|i| i.model.id.clone()).collect()
}

fn rm_error(e: &Error) -> &ReadModelError {
    e.read_model()
        .unwrap_or_else(|| panic!("not a read-model error: {e:?}"))
}

// ---------------------------------------------------------------------------------
// The pool store.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_versions_and_typed_errors() {
    let Some((store, _s)) = pg().await else {
        return;
    };
    let items = ReadModelRepository::<Item, _>::new(store.read_models());
    // Nothing before ensure_table, and nothing is created.
    let e = items
        .insert(&item("a", "A", Some(1), 1.0))
        .await
        .unwrap_err();
    assert!(matches!(rm_error(&e), ReadModelError::NotEnsured { .. }));
    items.ensure_table().await.unwrap();
    items.ensure_table().await.unwrap(); // idempotent

    let a = item("a", "A", Some(1), 1.0);
    assert_eq!(items.insert(&a).await.unwrap(), 1);
    let e = items.insert(&a).await.unwrap_err();
    assert!(matches!(rm_error(&e), ReadModelError::AlreadyExists { id, .. } if id == "\"a\""));
    let got = items.get("a").await.unwrap().unwrap();
    assert_eq!((got.model.clone(), got.version), (a.clone(), 1));

    let mut changed = a.clone();
    changed.name = "B".into();
    assert_eq!(items.update(&changed, 1).await.unwrap(), 2);
    let e = items.update(&changed, 1).await.unwrap_err();
    assert!(matches!(
        rm_error(&e),
        ReadModelError::VersionConflict {
            expected: 1,
            actual: 2,
            ..
        }
    ));
    assert!(e.is_retryable());
    let e = items
        .update(&item("zz", "x", None, 0.0), 1)
        .await
        .unwrap_err();
    assert!(matches!(rm_error(&e), ReadModelError::NotFound { .. }));
    assert!(items.get("zz").await.unwrap().is_none());

    assert_eq!(items.upsert(&a).await.unwrap(), 3);
    assert_eq!(items.upsert(&item("b", "b", None, 2.0)).await.unwrap(), 1);
    assert_eq!(items.get("a").await.unwrap().unwrap().model, a);
    assert!(items.delete("a").await.unwrap());
    assert!(!items.delete("a").await.unwrap());
    assert_eq!(items.count(&Query::new()).await.unwrap(), 1);

    // Bad ids are refused before any I/O.
    let e = items.get(5).await.unwrap_err();
    assert!(matches!(rm_error(&e), ReadModelError::TypeMismatch { .. }));
    let modified = items.modify("b", |m| m.x = 9.5).await.unwrap();
    assert_eq!((modified.model.x, modified.version), (9.5, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_query_gives_the_rows_of_the_memory_store() {
    let Some((store, _s)) = pg().await else {
        return;
    };
    let pg = ReadModelRepository::<Item, _>::new(store.read_models());
    let mem = ReadModelRepository::<Item, _>::new(MemoryReadModelStore::new());
    pg.ensure_table().await.unwrap();
    mem.ensure_table().await.unwrap();
    for i in dataset() {
        pg.insert(&i).await.unwrap();
        mem.insert(&i).await.unwrap();
    }
    let at = t(1_700_000_000_000_000);
    let queries: Vec<(&str, Query<Item>)> = vec![
        ("all", Query::new()),
        ("name asc", Query::new().order_asc("name")),
        ("name desc", Query::new().order_desc("name")),
        ("n asc (nulls first)", Query::new().order_asc("n")),
        ("n desc (nulls last)", Query::new().order_desc("n")),
        (
            "x asc, name desc",
            Query::new().order_asc("x").order_desc("name"),
        ),
        ("flag, at", Query::new().order_asc("flag").order_desc("at")),
        ("like a\\_b", Query::new().like("name", "a\\_b")),
        ("like a_b", Query::new().like("name", "a_b")),
        ("like %\\%%", Query::new().like("name", "%\\%%")),
        ("like a\\\\b", Query::new().like("name", "a\\\\b")),
        ("like _", Query::new().like("name", "_")),
        ("like é", Query::new().like("name", "_")),
        ("starts_with a_", Query::new().starts_with("name", "a_")),
        ("contains %", Query::new().contains("name", "%")),
        ("ends_with b", Query::new().ends_with("name", "b")),
        ("in n", Query::new().in_list("n", [0, 2, 7])),
        ("in empty", Query::new().in_list("n", Vec::<i64>::new())),
        ("in names", Query::new().in_list("name", ["é", "Z", "nope"])),
        ("ne n (no nulls)", Query::new().ne("n", 1)),
        ("gt x", Query::new().gt("x", 0.0)),
        ("eq x 0 (-0.0 too)", Query::new().eq("x", 0)),
        ("ge name é", Query::new().ge("name", "é").order_asc("name")),
        ("lt name a", Query::new().lt("name", "a").order_desc("name")),
        ("is_null at", Query::new().is_null("at")),
        ("is_not_null extra", Query::new().is_not_null("extra")),
        ("at before", Query::new().lt("at", at).order_asc("at")),
        (
            "at eq micros",
            Query::new().eq("at", t(1_700_000_000_000_000 - 2_000_002)),
        ),
        (
            "or",
            Query::new().filter(
                Filter::is_null("n").or(Filter::eq("flag", true).and(Filter::gt("x", -1.0))),
            ),
        ),
        ("limit", Query::new().order_desc("name").limit(4)),
        ("offset", Query::new().order_asc("n").offset(5)),
        ("window", Query::new().order_asc("x").limit(3).offset(2)),
    ];
    for (what, q) in &queries {
        let a = ids(&pg.find(q).await.unwrap());
        let b = ids(&mem.find(q).await.unwrap());
        assert_eq!(a, b, "query {what}");
        assert_eq!(
            pg.count(q).await.unwrap(),
            mem.count(q).await.unwrap(),
            "count {what}"
        );
    }
    // Spot checks that the comparison is not vacuous.
    let by_name = ids(&pg.find(&Query::new().order_asc("name")).await.unwrap());
    let pos = |name: &str| {
        let id = dataset().into_iter().find(|i| i.name == name).unwrap().id;
        by_name.iter().position(|x| *x == id).unwrap()
    };
    assert!(pos("Z") < pos("a") && pos("a") < pos("é") && pos("é") < pos("😀"));
    assert!(pos("") < pos("A") && pos("É") < pos("ß"));
    assert_eq!(
        pg.count(&Query::new().like("name", "a\\_b")).await.unwrap(),
        1
    );
    assert_eq!(
        pg.count(&Query::new().like("name", "a_b")).await.unwrap(),
        5
    );
    let nulls_first = pg.find(&Query::new().order_asc("n")).await.unwrap();
    assert!(nulls_first[0].model.n.is_none());
    let nulls_last = pg.find(&Query::new().order_desc("n")).await.unwrap();
    assert!(nulls_last.last().unwrap().model.n.is_none());
    // Documents round-trip exactly (undeclared keys, NUL escapes in JSON).
    let stored = pg.get("i01").await.unwrap().unwrap().model;
    assert_eq!(stored, dataset()[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyset_pages_both_ways_never_skip_or_repeat() {
    let Some((store, _s)) = pg().await else {
        return;
    };
    let items = ReadModelRepository::<Item, _>::new(store.read_models());
    items.ensure_table().await.unwrap();
    for i in dataset() {
        items.insert(&i).await.unwrap();
    }
    for q in [
        Query::<Item>::new().order_asc("n").limit(3),
        Query::new().order_desc("n").limit(3),
        Query::new().order_asc("name").limit(4),
        Query::new().order_desc("at").order_asc("x").limit(2),
    ] {
        let full = ids(&items.find(&q.clone().limit(1000)).await.unwrap());
        let mut forward = Vec::new();
        let mut page = items.page(&q).await.unwrap();
        loop {
            forward.extend(ids(&page.items));
            let Some(next) = page.next.clone() else { break };
            page = items.page(&q.clone().after(next)).await.unwrap();
        }
        assert_eq!(forward, full, "forward pages");
        // Backwards from the last page.
        let mut backward = ids(&page.items);
        while let Some(prev) = page.prev.clone() {
            page = items.page(&q.clone().before(prev)).await.unwrap();
            let mut chunk = ids(&page.items);
            chunk.extend(backward);
            backward = chunk;
        }
        assert_eq!(backward, full, "backward pages");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misspelled_field_deletes_nothing() {
    let Some((store, _s)) = pg().await else {
        return;
    };
    let items = ReadModelRepository::<Item, _>::new(store.read_models());
    items.ensure_table().await.unwrap();
    for i in dataset() {
        items.insert(&i).await.unwrap();
    }
    let e = items
        .delete_where(&Query::new().eq("nmae", "a"))
        .await
        .unwrap_err();
    assert!(matches!(rm_error(&e), ReadModelError::UnknownField { .. }));
    let e = items.delete_where(&Query::new()).await.unwrap_err();
    assert!(matches!(rm_error(&e), ReadModelError::InvalidQuery { .. }));
    let e = items.find(&Query::new().eq("n", "one")).await.unwrap_err();
    assert!(matches!(rm_error(&e), ReadModelError::TypeMismatch { .. }));
    assert_eq!(items.count(&Query::new()).await.unwrap(), 20);
    assert_eq!(
        items
            .delete_where(&Query::new().starts_with("name", "a"))
            .await
            .unwrap(),
        8
    );
    assert_eq!(items.count(&Query::new()).await.unwrap(), 12);
    assert_eq!(items.delete_where(&Query::all()).await.unwrap(), 12);
    assert_eq!(items.count(&Query::new()).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_declaration_rebuilds_the_table_once_under_concurrency() {
    let Some((store, _s)) = pg().await else {
        return;
    };
    let v1 = ReadModelRepository::<Item, _>::new(store.read_models());
    v1.ensure_table().await.unwrap();
    for i in dataset() {
        v1.insert(&i).await.unwrap();
    }
    v1.update(&dataset()[0], 1).await.unwrap();
    // A declaration the rows do not fit: refused, the table stays as it was.
    let strict = ReadModelRepository::<ItemStrict, _>::new(store.read_models());
    let e = strict.ensure_table().await.unwrap_err();
    assert!(matches!(rm_error(&e), ReadModelError::InvalidValue { .. }));
    assert_eq!(v1.count(&Query::new().is_null("n")).await.unwrap(), 5);

    // Four handles ensure the new declaration at once: one rebuild, all succeed.
    let handles: Vec<_> = (0..4)
        .map(|_| ReadModelRepository::<ItemV2, _>::new(store.read_models()))
        .collect();
    let results = futures::future::join_all(handles.iter().map(|h| h.ensure_table())).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let v2 = &handles[0];
    assert_eq!(v2.count(&Query::new()).await.unwrap(), 20);
    let first = v2.get("i00").await.unwrap().unwrap();
    assert_eq!(first.version, 2, "versions survive the rebuild");
    assert_eq!(first.model.tags, vec!["tag-i00".to_owned()]);
    // The new index exists, the old one is gone.
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes WHERE schemaname = $1 AND tablename = 'rm_items' ORDER BY 1",
    )
    .bind(store.schema().as_str())
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(
        indexes,
        ["rm_items__flag", "rm_items__x", "rm_items_pkey"],
        "{indexes:?}"
    );
    let ordered = v2
        .find(&Query::new().order_desc("x").limit(1))
        .await
        .unwrap();
    assert_eq!(ordered[0].model.x, 1e300);
    // The old declaration's handle is refused before any I/O.
    let e = v1.get("i00").await;
    assert!(
        e.is_ok(),
        "a handle keeps its own declaration until it ensures again"
    );
}

// ---------------------------------------------------------------------------------
// The transaction-bound store.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unit_of_work_reads_its_writes_and_commits_or_rolls_back_with_its_transaction() {
    let Some((store, _s)) = pg().await else {
        return;
    };
    let pool_items = ReadModelRepository::<Item, _>::new(store.read_models());
    pool_items.ensure_table().await.unwrap();
    pool_items
        .insert(&item("old", "old", Some(1), 1.0))
        .await
        .unwrap();

    let mut tx = store.begin().await.unwrap();
    {
        let models = PgTxReadModelStore::new(&mut tx, store.schema().clone());
        let items = ReadModelRepository::<Item, _>::new(&models);
        items.ensure_table().await.unwrap();
        assert_eq!(
            items.insert(&item("a", "A", Some(2), 2.0)).await.unwrap(),
            1
        );
        assert_eq!(
            items.upsert(&item("a", "A2", Some(2), 2.0)).await.unwrap(),
            2
        );
        assert_eq!(items.get("a").await.unwrap().unwrap().model.name, "A2");
        let e = items.insert(&item("a", "A", None, 0.0)).await.unwrap_err();
        assert!(matches!(rm_error(&e), ReadModelError::AlreadyExists { .. }));
        let old = items.get("old").await.unwrap().unwrap();
        assert_eq!(
            items
                .update(&item("old", "older", Some(1), 1.0), old.version)
                .await
                .unwrap(),
            2
        );
        assert!(items.delete("old").await.unwrap());
        assert!(items.get("old").await.unwrap().is_none());
        // A query flushes first, and sees the transaction's writes.
        assert_eq!(items.count(&Query::new()).await.unwrap(), 1);
        assert_eq!(
            ids(&items.find(&Query::new()).await.unwrap()),
            vec!["a".to_owned()]
        );
        assert!(items.upsert(&item("b", "B", None, 0.0)).await.is_ok());
        models.flush().await.unwrap();
    }
    // Not visible outside before the commit.
    assert_eq!(pool_items.count(&Query::new()).await.unwrap(), 1);
    tx.commit().await.unwrap();
    let all = pool_items.find(&Query::new()).await.unwrap();
    assert_eq!(ids(&all), vec!["a".to_owned(), "b".to_owned()]);
    assert_eq!(all[0].version, 2);

    // Rolled back: nothing.
    let mut tx = store.begin().await.unwrap();
    {
        let models = PgTxReadModelStore::new(&mut tx, store.schema().clone());
        let items = ReadModelRepository::<Item, _>::new(&models);
        items.ensure_table().await.unwrap();
        items.upsert(&item("c", "C", None, 0.0)).await.unwrap();
        models.flush().await.unwrap();
    }
    tx.rollback().await.unwrap();
    assert!(pool_items.get("c").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_conditions_fail_at_the_flush_with_exact_errors() {
    let Some((store, _s)) = pg().await else {
        return;
    };
    let pool_items = ReadModelRepository::<Item, _>::new(store.read_models());
    pool_items.ensure_table().await.unwrap();
    pool_items
        .insert(&item("x", "X", Some(1), 1.0))
        .await
        .unwrap();

    // An insert of a row the unit of work never read: checked at the flush.
    let mut tx = store.begin().await.unwrap();
    {
        let models = PgTxReadModelStore::new(&mut tx, store.schema().clone());
        let items = ReadModelRepository::<Item, _>::new(&models);
        items.ensure_table().await.unwrap();
        assert_eq!(items.insert(&item("x", "dup", None, 0.0)).await.unwrap(), 1);
        let e = models.flush().await.unwrap_err();
        assert!(matches!(rm_error(&e), ReadModelError::AlreadyExists { id, .. } if id == "\"x\""));
    }
    tx.rollback().await.unwrap();

    // An update at a version the row does not have.
    let mut tx = store.begin().await.unwrap();
    {
        let models = PgTxReadModelStore::new(&mut tx, store.schema().clone());
        let items = ReadModelRepository::<Item, _>::new(&models);
        items.ensure_table().await.unwrap();
        items.update(&item("x", "X", None, 0.0), 7).await.unwrap();
        let e = items.count(&Query::new()).await.unwrap_err();
        assert!(matches!(
            rm_error(&e),
            ReadModelError::VersionConflict {
                expected: 7,
                actual: 1,
                ..
            }
        ));
        items
            .update(&item("nope", "X", None, 0.0), 1)
            .await
            .unwrap();
    }
    tx.rollback().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    {
        let models = PgTxReadModelStore::new(&mut tx, store.schema().clone());
        let items = ReadModelRepository::<Item, _>::new(&models);
        items.ensure_table().await.unwrap();
        items
            .update(&item("nope", "X", None, 0.0), 1)
            .await
            .unwrap();
        let e = models.flush().await.unwrap_err();
        assert!(matches!(rm_error(&e), ReadModelError::NotFound { .. }));
    }
    tx.rollback().await.unwrap();

    // A row another transaction changed after this unit of work read it.
    let mut tx = store.begin().await.unwrap();
    {
        let models = PgTxReadModelStore::new(&mut tx, store.schema().clone());
        let items = ReadModelRepository::<Item, _>::new(&models);
        items.ensure_table().await.unwrap();
        let x = items.get("x").await.unwrap().unwrap();
        pool_items
            .upsert(&item("x", "other", None, 0.0))
            .await
            .unwrap();
        items.update(&x.model, x.version).await.unwrap();
        let e = models.flush().await.unwrap_err();
        assert!(e.is_retryable());
        assert!(matches!(
            rm_error(&e),
            ReadModelError::VersionConflict {
                expected: 1,
                actual: 2,
                ..
            }
        ));
    }
    tx.rollback().await.unwrap();
    assert_eq!(
        pool_items.get("x").await.unwrap().unwrap().model.name,
        "other"
    );

    // Tables not ensured through the store are refused.
    let mut tx = store.begin().await.unwrap();
    {
        let models = PgTxReadModelStore::new(&mut tx, store.schema().clone());
        let items = ReadModelRepository::<Item, _>::new(&models);
        let e = items.get("x").await.unwrap_err();
        assert!(matches!(rm_error(&e), ReadModelError::NotEnsured { .. }));
    }
    tx.rollback().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_lookup_warms_the_cache_and_the_shadow_redirect_writes_the_shadow_table() {
    let Some((store, _s)) = pg().await else {
        return;
    };
    let pool_items = ReadModelRepository::<Item, _>::new(store.read_models());
    pool_items.ensure_table().await.unwrap();
    for i in 0..5 {
        pool_items
            .insert(&item(&format!("k{i}"), "k", Some(i), 0.0))
            .await
            .unwrap();
    }
    let mut tx = store.begin().await.unwrap();
    {
        let models = PgTxReadModelStore::new(&mut tx, store.schema().clone());
        let items = ReadModelRepository::<Item, _>::new(&models);
        items.ensure_table().await.unwrap();
        let found = items
            .find(&Query::new().in_list("id", ["k1", "k3", "k9"]))
            .await
            .unwrap();
        assert_eq!(ids(&found), ["k1", "k3"]);
        // Served from the cache: a concurrent change is not seen, and writing over it
        // fails at the flush (the cache's version is the condition).
        pool_items
            .upsert(&item("k1", "changed", Some(1), 0.0))
            .await
            .unwrap();
        pool_items
            .insert(&item("k9", "new", None, 0.0))
            .await
            .unwrap();
        assert_eq!(items.get("k1").await.unwrap().unwrap().model.name, "k");
        assert!(items.get("k9").await.unwrap().is_none());
        items.upsert(&item("k9", "mine", None, 0.0)).await.unwrap();
        let e = models.flush().await.unwrap_err();
        assert!(e.is_retryable(), "{e:?}");
    }
    tx.rollback().await.unwrap();

    let schema = Schema::of::<Item>().unwrap();
    let mut tx = store.begin().await.unwrap();
    {
        let models = PgTxReadModelStore::new(&mut tx, store.schema().clone()).shadow(true);
        models.ensure_table(&schema).await.unwrap();
        let items = ReadModelRepository::<Item, _>::new(&models);
        assert_eq!(items.count(&Query::new()).await.unwrap(), 0);
        items.insert(&item("s", "shadow", None, 0.0)).await.unwrap();
        models.flush().await.unwrap();
    }
    tx.commit().await.unwrap();
    let shadow: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {}.rm_items__next",
        store.schema().quoted()
    )))
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(shadow, 1);
    assert!(pool_items.get("s").await.unwrap().is_none());
}
