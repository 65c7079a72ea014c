//! PostgreSQL-specific behaviour: migrations, joined transactions, SQLSTATE mapping,
//! payload storage, the restore guard, concurrency beyond the conformance suite.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use mink_es::prelude::*;
use mink_es::{
    CodecTag, Error, ExpectedVersion, FeedFilter, Metadata, NewEvent, Position, StreamId,
};
use mink_postgres::sqlx::{self, AssertSqlSafe, Row};
use mink_postgres::{PgEventStore, PgStoreError, SchemaName};

fn sid(s: &str) -> StreamId {
    StreamId::new(s).unwrap()
}

fn ev(t: &'static str, n: u64) -> NewEvent {
    NewEvent::json(t, &serde_json::json!({ "n": n })).unwrap()
}

async fn exec(store: &PgEventStore, sql: &str) {
    sqlx::raw_sql(AssertSqlSafe(sql.replace("{s}", &store.schema().quoted())))
        .execute(store.pool())
        .await
        .unwrap();
}

async fn scalar_i64(store: &PgEventStore, sql: &str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(sql.replace("{s}", &store.schema().quoted())))
        .fetch_one(store.pool())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrations_are_recorded_idempotent_and_safe_to_run_concurrently() {
    let Some(url) = common::url() else { return };
    let _serial = common::FEED_LOCK.lock().await;
    let schemas = common::Schemas::new(&url);
    let schema = common::random_schema();
    schemas.add(schema.clone());
    let store = PgEventStore::builder(&url)
        .schema(schema.as_str())
        .build()
        .await
        .unwrap();

    // Not migrated yet: verify says so, with a typed error.
    let err = store.verify().await.unwrap_err();
    assert!(
        matches!(
            PgStoreError::find(&err),
            Some(PgStoreError::SchemaNotMigrated { .. })
        ),
        "{err:?}"
    );
    // Using the store before migrating is a typed error too.
    let err = store
        .append(&sid("A-1"), ExpectedVersion::Any, vec![ev("E", 0)])
        .await
        .unwrap_err();
    assert!(
        matches!(
            PgStoreError::find(&err),
            Some(PgStoreError::SchemaNotMigrated { .. })
        ),
        "{err:?}"
    );

    // Four processes migrate at once: each migration is applied exactly once.
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.migrate().await })
        })
        .collect();
    let mut applied = 0;
    for t in tasks {
        let report = t.await.unwrap().unwrap();
        applied += report.applied.len();
        assert_eq!(report.schema, schema);
    }
    assert_eq!(applied, mink_postgres::MIGRATIONS.len());
    let again = store.migrate().await.unwrap();
    assert!(again.applied.is_empty());
    assert_eq!(
        again.already_applied,
        mink_postgres::MIGRATIONS
            .iter()
            .map(|m| m.version)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        scalar_i64(&store, "SELECT count(*) FROM {s}.mink_migrations").await,
        mink_postgres::MIGRATIONS.len() as i64
    );
    store.verify().await.unwrap();

    // A recorded migration that differs from the shipped one is refused.
    exec(
        &store,
        "UPDATE {s}.mink_migrations SET checksum = 'edited' WHERE version = 1",
    )
    .await;
    let err = store.migrate().await.unwrap_err();
    assert!(
        matches!(
            PgStoreError::find(&err),
            Some(PgStoreError::MigrationChanged { version: 1, .. })
        ),
        "{err:?}"
    );
    assert!(store.verify().await.is_err());
}

#[tokio::test]
async fn schema_names_are_validated_and_default_to_mink() {
    let Some(url) = common::url() else { return };
    let err = PgEventStore::builder(&url)
        .schema("Robert'); DROP TABLE x;--")
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    let store = PgEventStore::builder(&url).build().await.unwrap();
    assert_eq!(store.schema(), &SchemaName::default());
    assert_eq!(store.schema().as_str(), "mink");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn append_joins_the_callers_transaction() {
    let Some(url) = common::url() else { return };
    let _serial = common::FEED_LOCK.lock().await;
    let schemas = common::Schemas::new(&url);
    let store = common::store_with(&url, &schemas, |b| b).await;
    exec(
        &store,
        "CREATE TABLE {s}.orders_view (id text PRIMARY KEY, total int NOT NULL)",
    )
    .await;
    let insert_view = format!(
        "INSERT INTO {}.orders_view VALUES ($1, $2)",
        store.schema().quoted()
    );
    let stream = sid("Order-1");

    // Rollback: neither the events nor the application's own row survive.
    let mut tx = store.begin().await.unwrap();
    sqlx::query(AssertSqlSafe(insert_view.clone()))
        .bind("Order-1")
        .bind(10)
        .execute(&mut *tx)
        .await
        .unwrap();
    let r = store
        .append_in(
            &mut tx,
            &stream,
            ExpectedVersion::NoStream,
            vec![ev("Placed", 1), ev("Priced", 2)],
        )
        .await
        .unwrap();
    assert_eq!(r.version, 2);
    // Inside the transaction the append is visible to the transaction only.
    assert_eq!(store.stream_version(&stream).await.unwrap(), 0);
    tx.rollback().await.unwrap();
    assert_eq!(store.stream_version(&stream).await.unwrap(), 0);
    assert!(store.read_stream(&stream, 1, 10).await.unwrap().is_empty());
    assert_eq!(
        scalar_i64(&store, "SELECT count(*) FROM {s}.orders_view").await,
        0
    );
    assert_eq!(
        scalar_i64(&store, "SELECT count(*) FROM {s}.events").await,
        0
    );
    let page = store
        .read_feed(Position::START, 10, &FeedFilter::all())
        .await
        .unwrap();
    assert!(page.events.is_empty());

    // Commit: both are there.
    let mut tx = store.begin().await.unwrap();
    sqlx::query(AssertSqlSafe(insert_view.clone()))
        .bind("Order-1")
        .bind(10)
        .execute(&mut *tx)
        .await
        .unwrap();
    let r = store
        .append_in(
            &mut tx,
            &stream,
            ExpectedVersion::NoStream,
            vec![ev("Placed", 1)],
        )
        .await
        .unwrap();
    // A conflict found before writing leaves the transaction usable.
    let err = store
        .append_in(
            &mut tx,
            &stream,
            ExpectedVersion::NoStream,
            vec![ev("Placed", 2)],
        )
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "{err:?}");
    // A repeat inside the same transaction is recognised.
    let again = store
        .append_in(
            &mut tx,
            &stream,
            ExpectedVersion::NoStream,
            vec![r.events[0].clone().into_new()],
        )
        .await
        .unwrap();
    assert!(again.deduplicated);
    let ckpt = Position::new(r.events[0].position.major(), r.events[0].position.minor());
    store
        .save_checkpoint_in(&mut tx, "view", ckpt)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(store.stream_version(&stream).await.unwrap(), 1);
    assert_eq!(
        scalar_i64(&store, "SELECT count(*) FROM {s}.orders_view").await,
        1
    );
    assert_eq!(store.load_checkpoint("view").await.unwrap(), Some(ckpt));
    let page = store
        .read_feed(Position::START, 10, &FeedFilter::all())
        .await
        .unwrap();
    assert_eq!(page.events, r.events);

    // A checkpoint saved in a rolled-back transaction is not saved.
    let mut tx = store.begin().await.unwrap();
    store
        .save_checkpoint_in(&mut tx, "view", Position::new(99, 99))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(store.load_checkpoint("view").await.unwrap(), Some(ckpt));
}

/// Turns a stored event back into the event that was appended.
trait IntoNew {
    fn into_new(self) -> NewEvent;
}

impl IntoNew for mink_es::StoredEvent {
    fn into_new(self) -> NewEvent {
        NewEvent::new(self.event_type, self.payload)
            .with_id(self.id)
            .with_codec(self.codec)
            .with_schema_version(self.schema_version)
            .with_metadata(self.metadata)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_writers_race_on_new_streams() {
    let Some(url) = common::url() else { return };
    let _serial = common::FEED_LOCK.lock().await;
    let schemas = common::Schemas::new(&url);
    let store = common::store_with(&url, &schemas, |b| b).await;

    // 20 `Any` writers creating one stream, three events each: none fails.
    let stream = sid("Race-any");
    let tasks: Vec<_> = (0..20u64)
        .map(|i| {
            let store = store.clone();
            let stream = stream.clone();
            tokio::spawn(async move {
                store
                    .append(
                        &stream,
                        ExpectedVersion::Any,
                        (0..3).map(|k| ev("E", i * 10 + k)).collect(),
                    )
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().expect("Any never fails spuriously");
    }
    let read = store.read_stream(&stream, 1, 1000).await.unwrap();
    assert_eq!(
        read.iter().map(|e| e.version).collect::<Vec<_>>(),
        (1..=60).collect::<Vec<_>>()
    );
    // Each append's events are contiguous in the stream.
    for chunk in read.chunks(3) {
        let n: Vec<u64> = chunk
            .iter()
            .map(|e| {
                e.json::<serde_json::Value>().unwrap()["n"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(n[1], n[0] + 1);
        assert_eq!(n[2], n[0] + 2);
    }

    // 20 `NoStream` writers: one wins, 19 conflicts carrying the actual version.
    let stream = sid("Race-new");
    let tasks: Vec<_> = (0..20u64)
        .map(|i| {
            let store = store.clone();
            let stream = stream.clone();
            tokio::spawn(async move {
                store
                    .append(&stream, ExpectedVersion::NoStream, vec![ev("E", i)])
                    .await
            })
        })
        .collect();
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => wins += 1,
            Err(Error::Conflict { actual, .. }) => assert_eq!(actual, 1),
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(wins, 1);

    // 12 concurrent retries of one append (same ids): stored once, every caller gets
    // the original events.
    for expected in [ExpectedVersion::Any, ExpectedVersion::NoStream] {
        let stream = sid(&format!("Retry-{expected:?}"));
        let batch: Vec<NewEvent> = (0..4).map(|k| ev("E", k)).collect();
        let tasks: Vec<_> = (0..12)
            .map(|_| {
                let store = store.clone();
                let stream = stream.clone();
                let batch = batch.clone();
                tokio::spawn(async move { store.append(&stream, expected, batch).await })
            })
            .collect();
        let mut originals = 0;
        let mut results = Vec::new();
        for t in tasks {
            let r = t
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("{expected:?}: {e:?}"));
            if !r.deduplicated {
                originals += 1;
            }
            results.push(r.events);
        }
        assert_eq!(originals, 1, "{expected:?}");
        assert!(results.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(store.stream_version(&stream).await.unwrap(), 4);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlstates_map_to_typed_errors() {
    let Some(url) = common::url() else { return };
    let _serial = common::FEED_LOCK.lock().await;
    let schemas = common::Schemas::new(&url);
    let store = common::store_with(&url, &schemas, |b| {
        b.statement_timeout(Duration::from_millis(300))
    })
    .await;
    let a = sid("Lock-a");
    let b = sid("Lock-b");
    store
        .append(&a, ExpectedVersion::Any, vec![ev("E", 0)])
        .await
        .unwrap();
    store
        .append(&b, ExpectedVersion::Any, vec![ev("E", 0)])
        .await
        .unwrap();

    // 57014 (statement timeout while a transaction holds the stream): transient.
    let mut holder = store.begin().await.unwrap();
    store
        .append_in(&mut holder, &a, ExpectedVersion::Any, vec![ev("E", 1)])
        .await
        .unwrap();
    let err = store
        .append(&a, ExpectedVersion::Exact(1), vec![ev("E", 2)])
        .await
        .unwrap_err();
    match &err {
        Error::Backend {
            transient: true,
            source,
        } => assert!(source.to_string().contains("statement timeout"), "{source}"),
        other => panic!("expected a transient backend error, got {other:?}"),
    }
    holder.rollback().await.unwrap();

    // 40P01 (deadlock between two transactions appending in opposite orders): transient.
    let s1 = store.clone();
    let s2 = store.clone();
    let (a1, b1, a2, b2) = (a.clone(), b.clone(), a.clone(), b.clone());
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(2));
    let (bar1, bar2) = (barrier.clone(), barrier);
    let t1 = tokio::spawn(async move {
        let mut tx = s1.begin().await.unwrap();
        s1.append_in(&mut tx, &a1, ExpectedVersion::Any, vec![ev("E", 1)])
            .await
            .unwrap();
        bar1.wait().await;
        let r = s1
            .append_in(&mut tx, &b1, ExpectedVersion::Any, vec![ev("E", 1)])
            .await;
        if r.is_ok() {
            tx.commit().await.unwrap();
        }
        r
    });
    let t2 = tokio::spawn(async move {
        let mut tx = s2.begin().await.unwrap();
        s2.append_in(&mut tx, &b2, ExpectedVersion::Any, vec![ev("E", 2)])
            .await
            .unwrap();
        bar2.wait().await;
        let r = s2
            .append_in(&mut tx, &a2, ExpectedVersion::Any, vec![ev("E", 2)])
            .await;
        if r.is_ok() {
            tx.commit().await.unwrap();
        }
        r
    });
    let results = [t1.await.unwrap(), t2.await.unwrap()];
    let failures: Vec<&Error> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(!failures.is_empty(), "one of the two must fail");
    for e in failures {
        // The deadlock detector (1 s) or the statement timeout (300 ms) breaks the
        // cycle; both are transient.
        assert!(e.is_retryable(), "{e:?}");
        let code = match e {
            Error::Backend { source, .. } => source
                .downcast_ref::<sqlx::Error>()
                .and_then(mink_postgres::error::sqlstate),
            _ => None,
        };
        assert!(
            matches!(code.as_deref(), Some("40P01") | Some("57014")),
            "{code:?}"
        );
    }

    // Values PostgreSQL cannot store are refused as invalid arguments, writing nothing.
    let before = store.stream_version(&a).await.unwrap();
    let err = store
        .append(
            &a,
            ExpectedVersion::Any,
            vec![ev("E", 3).with_metadata(Metadata::default().with_user_id("nul\0"))],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    let err = store
        .append(
            &a,
            ExpectedVersion::Any,
            vec![ev("E", 3).with_codec(CodecTag::from("bad\0codec".to_owned()))],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    let err = store
        .save_checkpoint("nul\0name", Position::new(1, 1))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert_eq!(store.stream_version(&a).await.unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payloads_are_stored_byte_for_byte_and_json_is_queryable() {
    let Some(url) = common::url() else { return };
    let _serial = common::FEED_LOCK.lock().await;
    let schemas = common::Schemas::new(&url);
    let store = common::store_with(&url, &schemas, |b| b).await;
    let stream = sid("Payload-1");
    let binary = NewEvent::new("Packed", vec![0xffu8, 0x00, 0x01, 0xfe])
        .with_codec(CodecTag::from("msgpack".to_owned()));
    let json = NewEvent::new("Placed", r#"{"total": 12,   "b":1, "a":2}"#);
    let not_json = NewEvent::new("Odd", "not json at all");
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![binary.clone(), json.clone(), not_json.clone()],
        )
        .await
        .unwrap();
    let read = store.read_stream(&stream, 1, 10).await.unwrap();
    assert_eq!(read[0].payload, binary.payload);
    assert_eq!(read[0].codec, binary.codec);
    assert_eq!(read[1].payload, json.payload, "JSON text kept as written");
    assert_eq!(read[2].payload, not_json.payload);
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT version, data ->> 'total' FROM {}.events_json ORDER BY version",
        store.schema().quoted()
    )))
    .fetch_all(store.pool())
    .await
    .unwrap();
    let totals: Vec<Option<String>> = rows.iter().map(|r| r.get(1)).collect();
    assert_eq!(totals, vec![None, Some("12".to_owned()), None]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restored_transaction_ids_from_the_future_are_refused() {
    let Some(url) = common::url() else { return };
    let _serial = common::FEED_LOCK.lock().await;
    let schemas = common::Schemas::new(&url);
    let store = common::store_with(&url, &schemas, |b| b).await;
    store
        .append(&sid("Old-1"), ExpectedVersion::Any, vec![ev("E", 0)])
        .await
        .unwrap();
    store.verify().await.unwrap();
    // What a pg_dump from an older, busier cluster looks like after pg_restore.
    exec(
        &store,
        "INSERT INTO {s}.events (tx, event_id, stream_id, category, version, event_type, \
         schema_version, codec, payload, recorded_at) VALUES \
         ((pg_snapshot_xmax(pg_current_snapshot())::text::bigint + 5000000000)::text::xid8, \
          gen_random_uuid(), 'Restored-1', 'Restored', 1, 'E', 1, 'json', '\\x7b7d', now())",
    )
    .await;
    for err in [
        store.verify().await.unwrap_err(),
        store.migrate().await.unwrap_err(),
    ] {
        match PgStoreError::find(&err) {
            Some(PgStoreError::TransactionIdsFromTheFuture {
                max_stored,
                current,
                ..
            }) => assert!(max_stored > current),
            other => panic!("expected the restore guard, got {other:?} ({err})"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ids_are_unique_across_streams_even_within_one_transaction() {
    let Some(url) = common::url() else { return };
    let _serial = common::FEED_LOCK.lock().await;
    let schemas = common::Schemas::new(&url);
    let store = common::store_with(&url, &schemas, |b| b).await;
    let e = ev("E", 1);
    let mut tx = store.begin().await.unwrap();
    store
        .append_in(&mut tx, &sid("U-1"), ExpectedVersion::Any, vec![e.clone()])
        .await
        .unwrap();
    let err = store
        .append_in(
            &mut tx,
            &sid("U-2"),
            ExpectedVersion::Any,
            vec![ev("E", 2), e.clone()],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DuplicateEventId { .. }), "{err:?}");
    tx.rollback().await.unwrap();
    let ids: HashSet<_> = store
        .read_feed(Position::START, 10, &FeedFilter::all())
        .await
        .unwrap()
        .events
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert!(ids.is_empty());
}

/// A timestamp that `chrono` cannot hold (`'infinity'`, `'-infinity'`, a year beyond
/// 262,143), written outside the crate, is a typed error on every read path that meets
/// it, never a panic: `CorruptEvent` for events, a `Corrupt` backend error naming the
/// row for streams and snapshots. The feed's lag report survives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupt_timestamps_are_typed_errors_not_panics() {
    let Some(url) = common::url() else { return };
    let _serial = common::FEED_LOCK.lock().await;
    let schemas = common::Schemas::new(&url);
    let store = common::store_with(&url, &schemas, |b| b).await;
    let s = sid("Time-1");
    let r = store
        .append(&s, ExpectedVersion::Any, vec![ev("E", 1), ev("E", 2)])
        .await
        .unwrap();
    exec(
        &store,
        "INSERT INTO {s}.snapshots VALUES ('Time-1', 'Agg', 1, 1, 'json', '\\x7b7d', now())",
    )
    .await;
    for bad in ["infinity", "-infinity", "294000-01-01 00:00:00+00"] {
        exec(
            &store,
            &format!(
                "UPDATE {{s}}.events SET recorded_at = '{bad}' WHERE version = 2; \
                 UPDATE {{s}}.streams SET updated_at = '{bad}'; \
                 UPDATE {{s}}.snapshots SET taken_at = '{bad}'"
            ),
        )
        .await;
        let err = store.read_stream(&s, 1, 10).await.unwrap_err();
        match &err {
            Error::CorruptEvent { position, detail } => {
                assert_eq!(*position, r.events[1].position);
                assert!(detail.contains("recorded_at"), "{detail}");
            }
            other => panic!("{bad}: expected CorruptEvent, got {other:?}"),
        }
        let err = store
            .read_feed(Position::START, 10, &FeedFilter::all())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::CorruptEvent { .. }), "{bad}: {err:?}");
        // The first event is intact.
        assert_eq!(store.read_stream(&s, 1, 1).await.unwrap(), r.events[..1]);
        let err = store.stream_info(&s).await.unwrap_err();
        assert!(
            matches!(PgStoreError::find(&err), Some(PgStoreError::Corrupt { .. })),
            "{bad}: {err:?}"
        );
        assert!(err.to_string().contains("updated_at"), "{err}");
        let err = store.load_snapshot(&s).await.unwrap_err();
        assert!(
            matches!(PgStoreError::find(&err), Some(PgStoreError::Corrupt { .. })),
            "{bad}: {err:?}"
        );
        assert!(err.to_string().contains("taken_at"), "{err}");
        store.feed_lag().await.unwrap();
    }
}

/// `append_in` announces the append inside the caller's transaction without changing
/// how that transaction commits: its `synchronous_commit` stays the caller's, so a
/// commit that returned is durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn append_in_leaves_the_callers_commit_durable() {
    let Some(url) = common::url() else { return };
    let _serial = common::FEED_LOCK.lock().await;
    let schemas = common::Schemas::new(&url);
    let store = common::store_with(&url, &schemas, |b| b).await;
    let mut tx = store.begin().await.unwrap();
    let setting = async |tx: &mut sqlx::PgConnection| -> String {
        sqlx::query_scalar("SELECT current_setting('synchronous_commit')")
            .fetch_one(&mut *tx)
            .await
            .unwrap()
    };
    let before = setting(&mut tx).await;
    store
        .append_in(
            &mut tx,
            &sid("Durable-1"),
            ExpectedVersion::Any,
            vec![ev("E", 1)],
        )
        .await
        .unwrap();
    assert_eq!(setting(&mut tx).await, before);
    tx.commit().await.unwrap();
}
