//! `SqliteReadModelStore` on real SQLite files: CRUD with versions, the query semantics
//! (byte order, nulls, `like` escapes, `in`, floats, timestamps), keyset pagination,
//! declaration changes, and the same rows as `MemoryReadModelStore` for the same data
//! and queries.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use mink_es::Error;
use mink_es::readmodel::{
    Field, Filter, MemoryReadModelStore, Query, ReadModel, ReadModelError, ReadModelRepository,
    ReadModelStore, Versioned,
};
use mink_sqlite::{SqliteReadModelStore, SqliteStore};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Item {
    id: String,
    name: String,
    n: Option<i64>,
    x: Option<f64>,
    ok: bool,
    at: Option<DateTime<Utc>>,
    tags: Option<serde_json::Value>,
    note: Option<String>,
    /// Not declared: stored, not queryable.
    extra: Vec<u32>,
}

impl ReadModel for Item {
    const NAME: &'static str = "items";
    const FIELDS: &'static [Field] = &[
        Field::text("id"),
        Field::text("name").indexed(),
        Field::integer("n").nullable().indexed(),
        Field::float("x").nullable(),
        Field::bool("ok"),
        Field::timestamp("at").nullable(),
        Field::json("tags").nullable(),
        Field::text("note").nullable(),
    ];
}

fn temp_store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("rm.db")).unwrap();
    (dir, store)
}

fn item(id: &str, name: &str) -> Item {
    Item {
        id: id.into(),
        name: name.into(),
        n: None,
        x: None,
        ok: false,
        at: None,
        tags: None,
        note: None,
        extra: vec![],
    }
}

fn rm_err(e: &Error) -> &ReadModelError {
    e.read_model()
        .unwrap_or_else(|| panic!("not a read-model error: {e:?}"))
}

fn ts(secs: i64, nanos: u32) -> DateTime<Utc> {
    Utc.timestamp_opt(secs, nanos).unwrap()
}

/// Names chosen for byte order, unicode, `like` metacharacters and quoting.
const NAMES: &[&str] = &[
    "", "Z", "a", "ab", "a_b", "a%b", "a\\b", "axb", "aXb", "é", "ä", "日本", "日", "😀", "A",
    "zz", "a'b", "\"q\"", "abc", "Abc",
];

/// A deterministic data set exercising every field type, nulls and ties.
fn dataset() -> Vec<Item> {
    let floats = [
        Some(-0.0),
        Some(0.0),
        Some(1.5),
        Some(-1.5),
        Some(1e300),
        None,
        Some(2.0),
        Some(0.1),
    ];
    (0..60)
        .map(|i: i64| {
            let name = NAMES[(i as usize * 7) % NAMES.len()];
            Item {
                id: format!("id-{:03}", (i * 37) % 61),
                name: name.to_owned(),
                n: if i % 5 == 0 { None } else { Some((i % 7) - 3) },
                x: floats[i as usize % floats.len()],
                ok: i % 3 == 0,
                at: if i % 4 == 1 {
                    None
                } else {
                    // Nanoseconds are truncated to the microsecond by the store.
                    Some(ts(
                        1_700_000_000 + (i % 6) * 1000,
                        (i as u32 % 3) * 1_000_999,
                    ))
                },
                tags: if i % 2 == 0 {
                    Some(serde_json::json!({ "i": i, "list": [1, 2] }))
                } else {
                    None
                },
                note: if i % 3 == 1 {
                    None
                } else {
                    Some(NAMES[(i as usize * 3) % NAMES.len()].to_owned())
                },
                extra: vec![i as u32],
            }
        })
        .collect()
}

/// The same data in a SQLite file and in memory, written by the same calls.
struct Both {
    _dir: tempfile::TempDir,
    store: SqliteStore,
    sqlite: ReadModelRepository<Item, SqliteReadModelStore>,
    memory: ReadModelRepository<Item, MemoryReadModelStore>,
}

async fn both() -> Both {
    let (dir, store) = temp_store();
    let sqlite = ReadModelRepository::<Item, _>::new(store.read_models());
    let memory = ReadModelRepository::<Item, _>::new(MemoryReadModelStore::new());
    sqlite.ensure_table().await.unwrap();
    memory.ensure_table().await.unwrap();
    for it in dataset() {
        // Some rows get several versions.
        assert_eq!(
            sqlite.upsert(&it).await.unwrap(),
            memory.upsert(&it).await.unwrap()
        );
        if it.ok {
            assert_eq!(
                sqlite.upsert(&it).await.unwrap(),
                memory.upsert(&it).await.unwrap()
            );
        }
    }
    Both {
        _dir: dir,
        store,
        sqlite,
        memory,
    }
}

fn ids(rows: &[Versioned<Item>]) -> Vec<String> {
    rows.iter().map(|v| v.model.id.clone()).collect()
}

/// The queries compared between the two stores.
fn queries() -> Vec<(&'static str, Query<Item>)> {
    let q = Query::<Item>::new;
    vec![
        ("all", q()),
        ("by name", q().order_asc("name")),
        ("by name desc", q().order_desc("name")),
        ("by n (nulls)", q().order_asc("n")),
        ("by n desc (nulls)", q().order_desc("n")),
        ("by x", q().order_asc("x")),
        ("by x desc", q().order_desc("x")),
        ("by ok then at", q().order_asc("ok").order_desc("at")),
        ("by at", q().order_asc("at")),
        ("by note desc", q().order_desc("note")),
        ("eq name", q().eq("name", "a_b")),
        ("eq empty name", q().eq("name", "")),
        ("ne note (nulls excluded)", q().ne("note", "a")),
        ("lt name", q().lt("name", "a").order_asc("name")),
        ("ge name unicode", q().ge("name", "é").order_asc("name")),
        ("gt n", q().gt("n", 0)),
        ("le n", q().le("n", -1).order_desc("n")),
        ("x eq -0.0 = 0.0", q().eq("x", -0.0)),
        ("x eq integer operand", q().eq("x", 2)),
        ("x lt", q().lt("x", 1.0).order_asc("x")),
        ("x gt big", q().gt("x", 1e299)),
        ("ok", q().eq("ok", true)),
        ("not ok", q().eq("ok", false).order_desc("name")),
        (
            "at eq truncated",
            q().eq("at", ts(1_700_000_000, 1_000_000)),
        ),
        ("at eq nanos", q().eq("at", ts(1_700_001_000, 1_000_999))),
        ("at ge", q().ge("at", ts(1_700_003_000, 0)).order_asc("at")),
        (
            "in names",
            q().in_list("name", ["a", "日本", "zz", "missing"]),
        ),
        ("in n", q().in_list("n", [1, -3])),
        ("in empty", q().in_list("name", Vec::<String>::new())),
        ("like a_b", q().like("name", "a_b")),
        ("like escaped _", q().like("name", r"a\_b")),
        ("like escaped %", q().like("name", r"a\%b")),
        ("like escaped backslash", q().like("name", r"a\\b")),
        ("like prefix", q().like("name", "a%")),
        ("like case-sensitive", q().like("name", "A%")),
        ("like unicode one char", q().like("name", "_")),
        ("like any", q().like("name", "%")),
        ("like note", q().like("note", "%b")),
        ("starts_with literal", q().starts_with("name", "a_")),
        ("ends_with literal", q().ends_with("name", "%b")),
        ("contains literal", q().contains("name", "\\")),
        ("contains quote", q().contains("name", "'")),
        ("is null n", q().is_null("n")),
        ("is not null n", q().is_not_null("n").order_asc("n")),
        ("is null tags", q().is_null("tags")),
        ("is not null tags", q().is_not_null("tags")),
        (
            "or",
            q().filter(Filter::eq("name", "a").or(Filter::is_null("x")))
                .order_desc("x"),
        ),
        (
            "and/or",
            q().filter(Filter::any_of([
                Filter::all_of([Filter::gt("n", 0), Filter::eq("ok", true)]),
                Filter::like("name", "日%"),
            ])),
        ),
        ("empty or", q().filter(Filter::any_of([]))),
        ("empty and", q().filter(Filter::all_of([]))),
        ("limit", q().order_asc("name").limit(7)),
        ("offset", q().order_asc("n").offset(5)),
        ("limit offset", q().order_desc("x").limit(4).offset(3)),
        ("limit 0", q().limit(0)),
    ]
}

#[tokio::test]
async fn the_same_queries_give_the_same_rows_as_memory() {
    let b = both().await;
    for (what, query) in queries() {
        let s = b.sqlite.find(&query).await.unwrap();
        let m = b.memory.find(&query).await.unwrap();
        assert_eq!(s, m, "{what}: rows (with versions) differ");
        let sc = b.sqlite.count(&query.clone()).await;
        let mc = b.memory.count(&query).await;
        match (sc, mc) {
            (Ok(sc), Ok(mc)) => assert_eq!(sc, mc, "{what}: count"),
            (s, m) => panic!("{what}: count results differ: {s:?} vs {m:?}"),
        }
    }
    // Sanity: the data set is not trivial.
    let all = b.memory.find(&Query::new()).await.unwrap();
    assert!(all.len() > 40);
    assert!(all.iter().any(|v| v.version > 1));
    // And deletes agree too.
    for (what, query) in [
        ("like", Query::<Item>::new().like("name", "a_b")),
        ("n null", Query::new().is_null("n")),
        ("x", Query::new().lt("x", 0.5)),
    ] {
        let s = b.sqlite.delete_where(&query).await.unwrap();
        let m = b.memory.delete_where(&query).await.unwrap();
        assert_eq!(s, m, "{what}: deleted");
        assert!(s > 0, "{what}: deleted something");
        assert_eq!(
            b.sqlite.find(&Query::new()).await.unwrap(),
            b.memory.find(&Query::new()).await.unwrap(),
            "{what}: what is left"
        );
    }
}

#[tokio::test]
async fn text_is_ordered_by_bytes_and_nulls_first_ascending() {
    let (_dir, store) = temp_store();
    let repo = ReadModelRepository::<Item, _>::new(store.read_models());
    repo.ensure_table().await.unwrap();
    let names = ["é", "Z", "a", "😀", "日本", "", "A", "ä", "b"];
    for (i, name) in names.iter().enumerate() {
        let mut it = item(&format!("r{i}"), name);
        it.n = if i % 3 == 0 { None } else { Some(i as i64) };
        repo.insert(&it).await.unwrap();
    }
    let by_name: Vec<String> = repo
        .find(&Query::new().order_asc("name"))
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.model.name)
        .collect();
    assert_eq!(by_name, ["", "A", "Z", "a", "b", "ä", "é", "日本", "😀"]);
    let by_n = repo.find(&Query::new().order_asc("n")).await.unwrap();
    assert_eq!(
        ids(&by_n),
        ["r0", "r3", "r6", "r1", "r2", "r4", "r5", "r7", "r8"],
        "nulls first (by id), then values"
    );
    let by_n_desc = repo.find(&Query::new().order_desc("n")).await.unwrap();
    assert_eq!(
        ids(&by_n_desc),
        ["r8", "r7", "r5", "r4", "r2", "r1", "r0", "r3", "r6"],
        "values descending, then nulls last (by id)"
    );
    // A null matches no comparison, not even `ne`.
    assert_eq!(repo.count(&Query::new().ne("n", 100)).await.unwrap(), 6);
}

#[tokio::test]
async fn like_escapes_and_in_lists() {
    let (_dir, store) = temp_store();
    let repo = ReadModelRepository::<Item, _>::new(store.read_models());
    repo.ensure_table().await.unwrap();
    for (i, name) in ["a_b", "axb", "a%b", "a\\b", "AXB", "ab", "a_bc", "é_b"]
        .iter()
        .enumerate()
    {
        repo.insert(&item(&format!("r{i}"), name)).await.unwrap();
    }
    let names = |rows: Vec<Versioned<Item>>| -> Vec<String> {
        let mut v: Vec<String> = rows.into_iter().map(|v| v.model.name).collect();
        v.sort();
        v
    };
    let like = |p: &'static str| {
        let repo = repo.clone();
        async move { repo.find(&Query::new().like("name", p)).await }
    };
    assert_eq!(
        names(like("a_b").await.unwrap()),
        ["a%b", "a\\b", "a_b", "axb"]
    );
    assert_eq!(names(like(r"a\_b").await.unwrap()), ["a_b"]);
    assert_eq!(names(like(r"a\%b").await.unwrap()), ["a%b"]);
    assert_eq!(names(like(r"a\\b").await.unwrap()), ["a\\b"]);
    assert_eq!(names(like("A%").await.unwrap()), ["AXB"], "case-sensitive");
    assert_eq!(
        names(like("_\\_b").await.unwrap()),
        ["a_b", "é_b"],
        "one character, not one byte"
    );
    assert_eq!(
        names(like("a%").await.unwrap()),
        ["a%b", "a\\b", "a_b", "a_bc", "ab", "axb"]
    );
    assert_eq!(
        names(
            repo.find(&Query::new().starts_with("name", "a_"))
                .await
                .unwrap()
        ),
        ["a_b", "a_bc"]
    );
    // A dangling escape is refused before any I/O.
    let err = repo
        .find(&Query::new().like("name", r"a\"))
        .await
        .unwrap_err();
    assert!(matches!(rm_err(&err), ReadModelError::InvalidQuery { .. }));

    assert_eq!(
        names(
            repo.find(&Query::new().in_list("name", ["ab", "AXB", "nope"]))
                .await
                .unwrap()
        ),
        ["AXB", "ab"]
    );
    assert!(
        repo.find(&Query::new().in_list("name", Vec::<String>::new()))
            .await
            .unwrap()
            .is_empty()
    );
    let err = repo
        .find(&Query::new().in_list("name", [1, 2]))
        .await
        .unwrap_err();
    assert!(matches!(rm_err(&err), ReadModelError::TypeMismatch { .. }));
}

#[tokio::test]
async fn crud_with_versions_and_typed_errors() {
    let (dir, store) = temp_store();
    let repo = ReadModelRepository::<Item, _>::new(store.read_models());

    // Nothing works before the table is ensured through this handle.
    let err = repo.get("a").await.unwrap_err();
    assert!(matches!(rm_err(&err), ReadModelError::NotEnsured { .. }));
    repo.ensure_table().await.unwrap();
    repo.ensure_table().await.unwrap();

    let mut a = item("a", "first");
    a.extra = vec![1, 2, 3];
    a.at = Some(ts(1_700_000_000, 123_456_789));
    assert_eq!(repo.insert(&a).await.unwrap(), 1);
    let err = repo.insert(&item("a", "again")).await.unwrap_err();
    assert!(matches!(rm_err(&err), ReadModelError::AlreadyExists { .. }));
    let got = repo.get("a").await.unwrap().unwrap();
    assert_eq!(got.version, 1);
    assert_eq!(got.model.name, "first", "the failed insert wrote nothing");
    assert_eq!(got.model.extra, [1, 2, 3], "undeclared keys round-trip");
    assert_eq!(
        got.model.at,
        Some(ts(1_700_000_000, 123_456_789)),
        "the document keeps the model as given"
    );
    // The column holds the microsecond: a query with the truncated time finds it.
    assert_eq!(
        repo.count(&Query::new().eq("at", ts(1_700_000_000, 123_456_000)))
            .await
            .unwrap(),
        1
    );

    a.name = "second".into();
    assert_eq!(repo.upsert(&a).await.unwrap(), 2);
    a.name = "third".into();
    assert_eq!(repo.update(&a, 2).await.unwrap(), 3);
    a.name = "stale".into();
    let err = repo.update(&a, 2).await.unwrap_err();
    assert!(matches!(
        rm_err(&err),
        ReadModelError::VersionConflict {
            expected: 2,
            actual: 3,
            ..
        }
    ));
    assert_eq!(repo.get("a").await.unwrap().unwrap().model.name, "third");
    let err = repo.update(&item("missing", "x"), 1).await.unwrap_err();
    assert!(matches!(rm_err(&err), ReadModelError::NotFound { .. }));
    assert!(repo.get("missing").await.unwrap().is_none());
    let err = repo.get(7).await.unwrap_err();
    assert!(matches!(rm_err(&err), ReadModelError::TypeMismatch { .. }));

    // A second handle must ensure the table itself.
    let other = ReadModelRepository::<Item, _>::new(store.read_models());
    assert!(matches!(
        rm_err(&other.count(&Query::new()).await.unwrap_err()),
        ReadModelError::NotEnsured { .. }
    ));

    // Survives reopening.
    drop(repo);
    drop(other);
    drop(store);
    let store = SqliteStore::open(dir.path().join("rm.db")).unwrap();
    let repo = ReadModelRepository::<Item, _>::new(store.read_models());
    repo.ensure_table().await.unwrap();
    let got = repo.get("a").await.unwrap().unwrap();
    assert_eq!((got.model.name.as_str(), got.version), ("third", 3));
    assert!(repo.delete("a").await.unwrap());
    assert!(!repo.delete("a").await.unwrap());
    assert!(repo.get("a").await.unwrap().is_none());
}

#[tokio::test]
async fn a_misspelled_field_in_delete_where_deletes_no_row() {
    let b = both().await;
    let before = b.sqlite.count(&Query::new()).await.unwrap();
    assert!(before > 0);
    for bad in [
        Query::<Item>::new().eq("nmae", "a"),
        Query::new().eq("name", "a").is_null("nte"),
        Query::new().filter(Filter::eq("name", "a").or(Filter::eq("Name", "b"))),
        Query::new().eq("n", "not a number"),
    ] {
        let err = b.sqlite.delete_where(&bad).await.unwrap_err();
        assert!(
            matches!(
                rm_err(&err),
                ReadModelError::UnknownField { .. } | ReadModelError::TypeMismatch { .. }
            ),
            "{err:?}"
        );
    }
    // Without a filter (and not `all()`): refused too.
    let err = b.sqlite.delete_where(&Query::new()).await.unwrap_err();
    assert!(matches!(rm_err(&err), ReadModelError::InvalidQuery { .. }));
    assert_eq!(b.sqlite.count(&Query::new()).await.unwrap(), before);
    // Straight from the file, with another connection.
    let raw = rusqlite::Connection::open(b.store.path()).unwrap();
    let n: i64 = raw
        .query_row("SELECT COUNT(*) FROM rm_items", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n as u64, before);
    assert_eq!(
        b.sqlite.delete_where(&Query::all()).await.unwrap(),
        before,
        "all() deletes everything"
    );
    assert_eq!(b.sqlite.count(&Query::new()).await.unwrap(), 0);
}

#[tokio::test]
async fn keyset_pages_forward_and_backward_never_skip_or_repeat() {
    let b = both().await;
    for query in [
        Query::<Item>::new().order_asc("n").limit(4),
        Query::new().order_desc("x").order_asc("name").limit(5),
        Query::new().order_desc("note").limit(3),
        Query::new().order_asc("at").limit(7),
        Query::new().is_not_null("n").order_desc("name").limit(2),
    ] {
        let unpaged = query.clone();
        let all = {
            let mut q = unpaged.clone();
            q = q.limit(u64::MAX);
            b.sqlite.find(&q).await.unwrap()
        };
        assert!(all.len() > 5);
        // Forward, page by page.
        let mut pages = Vec::new();
        let mut page = b.sqlite.page(&query).await.unwrap();
        let mut mem_page = b.memory.page(&query).await.unwrap();
        assert!(page.prev.is_none(), "the first page has no previous page");
        loop {
            assert_eq!(page.items, mem_page.items, "same page as memory");
            assert_eq!(page.next.is_some(), mem_page.next.is_some());
            pages.push(page.items.clone());
            let Some(next) = page.next.clone() else { break };
            let mem_next = mem_page.next.clone().unwrap();
            page = b.sqlite.page(&query.clone().after(next)).await.unwrap();
            mem_page = b.memory.page(&query.clone().after(mem_next)).await.unwrap();
        }
        let walked: Vec<Versioned<Item>> = pages.iter().flatten().cloned().collect();
        assert_eq!(ids(&walked), ids(&all), "forward: every row once, in order");

        // Backward, from the last page.
        let mut back = vec![page.items.clone()];
        let mut cur = page;
        while let Some(prev) = cur.prev.clone() {
            cur = b.sqlite.page(&query.clone().before(prev)).await.unwrap();
            back.push(cur.items.clone());
        }
        back.reverse();
        assert_eq!(back, pages, "backward gives the same pages");
    }
}

#[tokio::test]
async fn pages_stay_exact_while_rows_change() {
    let (_dir, store) = temp_store();
    let repo = ReadModelRepository::<Item, _>::new(store.read_models());
    repo.ensure_table().await.unwrap();
    for i in 0..20 {
        let mut it = item(&format!("r{i:02}"), "x");
        it.n = Some(i);
        repo.insert(&it).await.unwrap();
    }
    let q = Query::<Item>::new().order_asc("n").limit(5);
    let first = repo.page(&q).await.unwrap();
    assert_eq!(ids(&first.items), ["r00", "r01", "r02", "r03", "r04"]);
    // Rows before the cursor come and go: the next page is still the next five.
    repo.delete("r01").await.unwrap();
    let mut early = item("r99", "x");
    early.n = Some(-5);
    repo.insert(&early).await.unwrap();
    let second = repo
        .page(&q.clone().after(first.next.unwrap()))
        .await
        .unwrap();
    assert_eq!(ids(&second.items), ["r05", "r06", "r07", "r08", "r09"]);
}

#[tokio::test]
async fn floats_and_timestamps_compare_like_memory() {
    let b = both().await;
    let probe = |q: Query<Item>| {
        let s = b.sqlite.clone();
        let m = b.memory.clone();
        async move {
            let (s, m) = (s.find(&q).await.unwrap(), m.find(&q).await.unwrap());
            assert_eq!(s, m, "{q:?}");
            s.len()
        }
    };
    // -0.0 and 0.0 are the same value.
    let zeros = probe(Query::new().eq("x", 0.0)).await;
    assert!(zeros >= 2);
    assert_eq!(probe(Query::new().eq("x", -0.0)).await, zeros);
    assert_eq!(probe(Query::new().ge("x", -0.0).le("x", 0.0)).await, zeros);
    // 1e300 survives as a float; an exact integer operand is taken as a float.
    assert!(probe(Query::new().eq("x", 1e300)).await > 0);
    assert!(probe(Query::new().eq("x", 2)).await > 0);
    let err = b
        .sqlite
        .find(&Query::new().eq("x", (1i64 << 53) + 1))
        .await
        .unwrap_err();
    assert!(matches!(rm_err(&err), ReadModelError::InvalidValue { .. }));
    // Timestamps: equal at the microsecond, whatever the nanoseconds said.
    let t = ts(1_700_001_000, 1_000_999);
    let n = probe(Query::new().eq("at", t)).await;
    assert!(n > 0);
    assert_eq!(
        probe(Query::new().eq("at", ts(1_700_001_000, 1_000_000))).await,
        n
    );
    assert_eq!(
        probe(
            Query::new()
                .gt("at", ts(1_700_001_000, 999_999))
                .lt("at", ts(1_700_001_000, 1_001_000))
        )
        .await,
        n
    );
    // An operand is truncated too: 1_000_001 ns is the microsecond 1000, not after it.
    assert_eq!(
        probe(
            Query::new()
                .gt("at", ts(1_700_001_000, 999_000))
                .lt("at", ts(1_700_001_000, 1_000_001))
        )
        .await,
        0
    );
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct ItemV2 {
    id: String,
    name: String,
    n: Option<i64>,
    extra: Vec<u32>,
}

impl ReadModel for ItemV2 {
    const NAME: &'static str = "items";
    // `n` and `extra` become queryable; `name` is no longer indexed.
    const FIELDS: &'static [Field] = &[
        Field::text("id"),
        Field::text("name"),
        Field::integer("n").nullable().indexed(),
        Field::json("extra"),
    ];
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct ItemStrict {
    id: String,
    name: String,
    note: String,
}

impl ReadModel for ItemStrict {
    const NAME: &'static str = "items";
    // `note` is not nullable, but some stored rows have none: the rebuild must fail.
    const FIELDS: &'static [Field] = &[Field::text("id"), Field::text("note")];
}

#[tokio::test]
async fn a_changed_declaration_rebuilds_the_table_all_or_nothing() {
    let b = both().await;
    let before = b.sqlite.find(&Query::new()).await.unwrap();

    // A declaration that does not fit the stored rows: refused, the table unchanged.
    let strict_s = ReadModelRepository::<ItemStrict, _>::new(b.store.read_models());
    let strict_m = ReadModelRepository::<ItemStrict, _>::new(b.memory.store().clone());
    let es = strict_s.ensure_table().await.unwrap_err();
    let em = strict_m.ensure_table().await.unwrap_err();
    assert_eq!(
        std::mem::discriminant(rm_err(&es)),
        std::mem::discriminant(rm_err(&em)),
        "{es} / {em}"
    );
    assert!(matches!(
        strict_s
            .count(&Query::new())
            .await
            .unwrap_err()
            .read_model(),
        Some(ReadModelError::NotEnsured { .. })
    ));
    assert_eq!(b.sqlite.find(&Query::new()).await.unwrap(), before);

    // A declaration that fits: rebuilt, rows and versions kept, the new field queryable.
    let v2_s = ReadModelRepository::<ItemV2, _>::new(b.store.read_models());
    let v2_m = ReadModelRepository::<ItemV2, _>::new(b.memory.store().clone());
    v2_s.ensure_table().await.unwrap();
    v2_m.ensure_table().await.unwrap();
    let all_s = v2_s.find(&Query::new()).await.unwrap();
    assert_eq!(all_s, v2_m.find(&Query::new()).await.unwrap());
    assert_eq!(all_s.len(), before.len());
    for (new, old) in all_s.iter().zip(&before) {
        assert_eq!(new.version, old.version);
        assert_eq!(new.model.extra, old.model.extra);
    }
    let q = Query::<ItemV2>::new().is_not_null("extra").order_desc("n");
    assert_eq!(v2_s.find(&q).await.unwrap(), v2_m.find(&q).await.unwrap());
    let raw = rusqlite::Connection::open(b.store.path()).unwrap();
    let indexes: Vec<String> = raw
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'rm_items' AND sql IS NOT NULL ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(indexes, ["rm_items__n"], "indexes follow the declaration");
    let descriptor: String = raw
        .query_row(
            "SELECT descriptor FROM mink_read_models WHERE table_name = 'rm_items'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        descriptor,
        mink_es::readmodel::Schema::of::<ItemV2>()
            .unwrap()
            .descriptor()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_modifies_lose_no_update() {
    let (dir, store) = temp_store();
    let repo = ReadModelRepository::<Item, _>::new(store.read_models());
    repo.ensure_table().await.unwrap();
    let mut it = item("counter", "c");
    it.n = Some(0);
    repo.insert(&it).await.unwrap();
    // Two handles (two writer connections) on the same file, four tasks each.
    let other = SqliteStore::open(dir.path().join("rm.db")).unwrap();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let s = if t % 2 == 0 { &store } else { &other };
        let repo = Arc::new(ReadModelRepository::<Item, _>::new(s.read_models()));
        repo.ensure_table().await.unwrap();
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                repo.modify("counter", |m| m.n = Some(m.n.unwrap_or(0) + 1))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let got = repo.get("counter").await.unwrap().unwrap();
    assert_eq!(got.model.n, Some(200));
    assert_eq!(got.version, 201);
}

#[tokio::test]
async fn integer_ids_and_store_errors_name_the_model() {
    #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
    struct Num {
        number: i64,
        label: String,
    }
    impl ReadModel for Num {
        const NAME: &'static str = "numbers";
        const ID: &'static str = "number";
        const FIELDS: &'static [Field] = &[Field::integer("number"), Field::text("label")];
    }
    let (_dir, store) = temp_store();
    let repo = ReadModelRepository::<Num, _>::new(store.read_models());
    repo.ensure_table().await.unwrap();
    for n in [5, -3, i64::MAX, i64::MIN, 0] {
        repo.insert(&Num {
            number: n,
            label: n.to_string(),
        })
        .await
        .unwrap();
    }
    let order: Vec<i64> = repo
        .find(&Query::new())
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.model.number)
        .collect();
    assert_eq!(order, [i64::MIN, -3, 0, 5, i64::MAX]);
    assert_eq!(
        repo.get(i64::MAX).await.unwrap().unwrap().model.label,
        i64::MAX.to_string()
    );
    // Dropping the table behind the store's back: a backend error naming the model.
    let raw = rusqlite::Connection::open(store.path()).unwrap();
    raw.execute_batch("DROP TABLE rm_numbers").unwrap();
    let err = repo.get(5).await.unwrap_err();
    assert!(err.to_string().contains("\"numbers\""), "{err}");
    assert!(matches!(err, Error::Backend { .. }));
    // Ensuring again (through a new handle) recreates it.
    let again = ReadModelRepository::<Num, _>::new(store.read_models());
    again.ensure_table().await.unwrap();
    assert_eq!(again.count(&Query::new()).await.unwrap(), 0);
}

/// `SqliteReadModelStore` is usable as a trait object, like every store.
#[tokio::test]
async fn works_as_a_shared_trait_object() {
    let (_dir, store) = temp_store();
    let dynamic: Arc<dyn ReadModelStore> = Arc::new(store.read_models());
    let repo = ReadModelRepository::<Item, _>::new(dynamic);
    repo.ensure_table().await.unwrap();
    repo.insert(&item("a", "b")).await.unwrap();
    assert_eq!(repo.count(&Query::new().eq("name", "b")).await.unwrap(), 1);
}

/// The shared conformance suite of `mink-testing`: each test gets a store in a fresh
/// file.
struct SqliteReadModels {
    dirs: std::sync::Mutex<Vec<tempfile::TempDir>>,
}

impl mink_testing::readmodel::ReadModelFactory for SqliteReadModels {
    type Store = SqliteReadModelStore;

    async fn create(&self) -> SqliteReadModelStore {
        let (dir, store) = temp_store();
        self.dirs.lock().unwrap().push(dir);
        store.read_models()
    }
}

mod conformance {
    mink_testing::readmodel_tests!(async {
        Some(super::SqliteReadModels {
            dirs: std::sync::Mutex::new(Vec::new()),
        })
    });
}
