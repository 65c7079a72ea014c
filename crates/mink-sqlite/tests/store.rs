//! SQLite-specific behaviour: migrations, WAL, persistence, storage layout, corrupt rows,
//! several handles and processes on one file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use mink_es::{
    CheckpointStore, CodecTag, Error, EventId, ExpectedVersion, FeedFilter, FeedReader, Metadata,
    NewEvent, Position, Snapshot, SnapshotStore, StoreLimits, StreamId, StreamReader, StreamWriter,
    now_micros,
};
use mink_sqlite::{
    LATEST_SCHEMA_VERSION, SchemaTooNew, SqliteConfig, SqliteStore, Synchronous, migrations,
};
use rusqlite::Connection;

fn sid(s: &str) -> StreamId {
    StreamId::new(s).unwrap()
}

fn ev(t: &'static str, n: u64) -> NewEvent {
    NewEvent::json(t, &serde_json::json!({ "n": n })).unwrap()
}

fn temp_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    (dir, path)
}

/// A plain connection to the file, behind the store's back.
fn raw(path: &Path) -> Connection {
    let c = Connection::open(path).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c
}

fn count_rows(path: &Path, table: &str) -> i64 {
    raw(path)
        .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

fn applied_migrations(path: &Path) -> Vec<(u32, String, i64)> {
    let c = raw(path);
    let mut s = c
        .prepare("SELECT version, name, applied_at FROM mink_migrations ORDER BY version")
        .unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

// ---------------------------------------------------------------------------
// Migrations and pragmas.

#[test]
fn fresh_open_creates_the_latest_schema_in_wal_mode() {
    let (_dir, path) = temp_db();
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.schema_version(), LATEST_SCHEMA_VERSION);
    assert_eq!(store.path(), path.as_path());

    let applied = applied_migrations(&path);
    let expected: Vec<(u32, String)> = migrations()
        .iter()
        .map(|m| (m.version(), m.name().to_owned()))
        .collect();
    assert_eq!(
        applied
            .iter()
            .map(|(v, n, _)| (*v, n.clone()))
            .collect::<Vec<_>>(),
        expected
    );
    assert!(applied.iter().all(|(_, _, at)| *at > 0));

    let c = raw(&path);
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    for table in [
        "mink_events",
        "mink_snapshots",
        "mink_checkpoints",
        "mink_idempotency",
        "mink_audit",
    ] {
        assert_eq!(count_rows(&path, table), 0, "{table} exists and is empty");
    }
}

#[test]
fn reopening_applies_nothing() {
    let (_dir, path) = temp_db();
    drop(SqliteStore::open(&path).unwrap());
    let before = applied_migrations(&path);
    for _ in 0..3 {
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.schema_version(), LATEST_SCHEMA_VERSION);
    }
    assert_eq!(applied_migrations(&path), before);
}

#[test]
fn a_database_from_the_future_is_refused() {
    let (_dir, path) = temp_db();
    drop(SqliteStore::open(&path).unwrap());
    let future = LATEST_SCHEMA_VERSION + 1;
    raw(&path)
        .execute(
            "INSERT INTO mink_migrations (version, name, applied_at) VALUES (?1, 'from the future', 1)",
            [future],
        )
        .unwrap();
    let err = SqliteStore::open(&path).unwrap_err();
    match &err {
        Error::Backend { transient, source } => {
            assert!(!transient);
            let too_new = source.downcast_ref::<SchemaTooNew>().unwrap();
            assert_eq!(too_new.found, future);
            assert_eq!(too_new.supported, LATEST_SCHEMA_VERSION);
        }
        other => panic!("expected a backend error, got {other:?}"),
    }
    assert!(err.to_string().contains("newer"), "{err}");
    // Nothing was changed by the refused open.
    assert_eq!(
        applied_migrations(&path).len(),
        LATEST_SCHEMA_VERSION as usize + 1
    );
}

#[test]
fn in_memory_databases_are_refused() {
    let err = SqliteStore::open(":memory:").unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
}

#[test]
fn a_file_that_is_not_a_database_is_a_backend_error() {
    let (_dir, path) = temp_db();
    std::fs::write(
        &path,
        b"this is not a sqlite file, not at all, no header here",
    )
    .unwrap();
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Backend {
                transient: false,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn config_builder() {
    let c = SqliteConfig::default()
        .synchronous(Synchronous::Full)
        .busy_timeout(Duration::from_millis(1500))
        .read_connections(0)
        .limits(StoreLimits {
            max_event_bytes: 10,
            max_events_per_append: 2,
        });
    assert_eq!(c.synchronous, Synchronous::Full);
    assert_eq!(c.busy_timeout, Duration::from_millis(1500));
    assert_eq!(c.read_connections, 0);
    assert_eq!(c.limits.max_events_per_append, 2);
    let d = SqliteConfig::default();
    assert_eq!(d.synchronous, Synchronous::Normal);
    assert_eq!(d.read_connections, 4);
}

// ---------------------------------------------------------------------------
// Persistence and storage layout.

#[tokio::test]
async fn everything_survives_a_reopen() {
    let (_dir, path) = temp_db();
    let md = Metadata::default()
        .with_correlation_id("c-1")
        .with_custom("k", "v");
    let (events, snapshot) = {
        let store = SqliteStore::open(&path).unwrap();
        let mut all = Vec::new();
        for i in 0..5u64 {
            let s = sid(&format!("Order-{i}"));
            let r = store
                .append(
                    &s,
                    ExpectedVersion::NoStream,
                    vec![ev("Placed", i).with_metadata(md.clone()), ev("Paid", i)],
                )
                .await
                .unwrap();
            all.extend(r.events);
        }
        let snapshot = Snapshot {
            stream_id: sid("Order-1"),
            aggregate_type: "Order".into(),
            version: 2,
            schema_version: 3,
            codec: CodecTag::JSON,
            payload: bytes::Bytes::from_static(b"{\"state\":1}"),
            taken_at: now_micros(),
        };
        store.save_snapshot(snapshot.clone()).await.unwrap();
        store
            .save_checkpoint("proj", Position::new(0, 7))
            .await
            .unwrap();
        (all, snapshot)
    };
    let store = SqliteStore::open(&path).unwrap();
    let page = store
        .read_feed(Position::START, 100, &FeedFilter::all())
        .await
        .unwrap();
    assert_eq!(page.events, events, "identical after reopen");
    assert_eq!(page.next, Position::new(0, 10));
    assert_eq!(store.head_position().await.unwrap(), Position::new(0, 10));
    assert_eq!(
        store.load_snapshot(&sid("Order-1")).await.unwrap(),
        Some(snapshot)
    );
    assert_eq!(
        store.load_checkpoint("proj").await.unwrap(),
        Some(Position::new(0, 7))
    );
    // Versions carry on where they were.
    let r = store
        .append(
            &sid("Order-3"),
            ExpectedVersion::Exact(2),
            vec![ev("Shipped", 0)],
        )
        .await
        .unwrap();
    assert_eq!(r.version, 3);
    assert_eq!(r.events[0].position, Position::new(0, 11));
    let info = store.stream_info(&sid("Order-3")).await.unwrap().unwrap();
    assert_eq!(info.version, 3);
    assert_eq!(info.created_at, events[6].recorded_at);
    assert_eq!(info.updated_at, r.events[0].recorded_at);
    assert_eq!(store.stream_info(&sid("Order-99")).await.unwrap(), None);
}

#[tokio::test]
async fn json_payloads_are_text_and_queryable_other_payloads_are_blobs() {
    let (_dir, path) = temp_db();
    let store = SqliteStore::open(&path).unwrap();
    let s = sid("Pay-1");
    let binary = vec![0u8, 159, 146, 150, 255];
    store
        .append(
            &s,
            ExpectedVersion::NoStream,
            vec![
                NewEvent::json("J", &serde_json::json!({"total": 42})).unwrap(),
                NewEvent::new("B", binary.clone()).with_codec(CodecTag::from("msgpack")),
                // Tagged JSON but not UTF-8: kept as bytes, not mangled.
                NewEvent::new("X", binary.clone()),
                NewEvent::new("T", "plain text").with_codec(CodecTag::from("text")),
            ],
        )
        .await
        .unwrap();
    let c = raw(&path);
    let types: Vec<(String, String)> = c
        .prepare("SELECT typeof(payload), codec FROM mink_events ORDER BY position")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        types,
        [
            ("text".to_owned(), "json".to_owned()),
            ("blob".to_owned(), "msgpack".to_owned()),
            ("blob".to_owned(), "json".to_owned()),
            ("blob".to_owned(), "text".to_owned()),
        ]
    );
    let total: i64 = c
        .query_row(
            "SELECT json_extract(payload, '$.total') FROM mink_events WHERE event_type = 'J'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(total, 42);
    let (category, metadata): (String, Option<String>) = c
        .query_row(
            "SELECT category, metadata FROM mink_events WHERE position = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(category, "Pay");
    assert_eq!(metadata, None, "empty metadata is NULL");

    let read = store.read_stream(&s, 1, 10).await.unwrap();
    assert_eq!(&read[0].payload[..], br#"{"total":42}"#);
    assert_eq!(read[1].payload, binary);
    assert_eq!(read[1].codec, "msgpack");
    assert_eq!(read[2].payload, binary);
    assert_eq!(&read[3].payload[..], b"plain text");
}

#[tokio::test]
async fn checkpoints_are_stored_as_text_and_a_corrupt_one_is_an_error() {
    let (_dir, path) = temp_db();
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.load_checkpoint("p").await.unwrap(), None);
    store
        .save_checkpoint("p", Position::new(3, 9))
        .await
        .unwrap();
    store
        .save_checkpoint("p", Position::new(0, 12))
        .await
        .unwrap();
    let text: String = raw(&path)
        .query_row(
            "SELECT position FROM mink_checkpoints WHERE name = 'p'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(text, "12");
    raw(&path)
        .execute(
            "UPDATE mink_checkpoints SET position = 'garbage' WHERE name = 'p'",
            [],
        )
        .unwrap();
    // Never None: a consumer must not restart from zero because a read failed.
    let err = store.load_checkpoint("p").await.unwrap_err();
    assert!(matches!(err, Error::InvalidPosition(_)), "{err:?}");
}

#[tokio::test]
async fn an_older_snapshot_never_replaces_a_newer_one() {
    let (_dir, path) = temp_db();
    let store = SqliteStore::open(&path).unwrap();
    let s = sid("Snap-1");
    let snap = |version: u64, payload: &'static [u8]| Snapshot {
        stream_id: s.clone(),
        aggregate_type: "Snap".into(),
        version,
        schema_version: 1,
        codec: CodecTag::JSON,
        payload: bytes::Bytes::from_static(payload),
        taken_at: now_micros(),
    };
    store.save_snapshot(snap(10, b"ten")).await.unwrap();
    store.save_snapshot(snap(5, b"five")).await.unwrap();
    assert_eq!(
        store.load_snapshot(&s).await.unwrap().unwrap().payload,
        &b"ten"[..]
    );
    store.save_snapshot(snap(10, b"ten again")).await.unwrap();
    store.save_snapshot(snap(12, b"twelve")).await.unwrap();
    let loaded = store.load_snapshot(&s).await.unwrap().unwrap();
    assert_eq!((loaded.version, &loaded.payload[..]), (12, &b"twelve"[..]));
    assert_eq!(count_rows(&path, "mink_snapshots"), 1, "only the latest");
    store.delete_snapshot(&s).await.unwrap();
    store.delete_snapshot(&s).await.unwrap();
    assert_eq!(store.load_snapshot(&s).await.unwrap(), None);
}

// ---------------------------------------------------------------------------
// Bad input and corrupt rows.

#[tokio::test]
async fn bad_appends_are_typed_errors_and_write_nothing() {
    let (_dir, path) = temp_db();
    let store = SqliteStore::open_with(
        &path,
        SqliteConfig::default().limits(StoreLimits {
            max_event_bytes: 1000,
            max_events_per_append: 5,
        }),
    )
    .unwrap();
    let a = sid("A-1");
    let b = sid("B-1");
    let first = store
        .append(&a, ExpectedVersion::NoStream, vec![ev("E", 0), ev("E", 1)])
        .await
        .unwrap();
    let stored_id = first.events[1].id;
    let rows = || count_rows(&path, "mink_events");
    assert_eq!(rows(), 2);

    // Limits, validation.
    let err = store
        .append(
            &b,
            ExpectedVersion::Any,
            (0..6).map(|i| ev("E", i)).collect(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooManyEvents {
                count: 6,
                limit: 5,
                ..
            }
        ),
        "{err:?}"
    );
    let err = store
        .append(
            &b,
            ExpectedVersion::Any,
            vec![ev("E", 0), NewEvent::new("E", vec![b'x'; 1001])],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::PayloadTooLarge { index: 1, .. }),
        "{err:?}"
    );
    let err = store
        .append(&b, ExpectedVersion::Any, vec![ev("bad type", 0)])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidEventType { .. }), "{err:?}");

    // Expected version.
    let err = store
        .append(&a, ExpectedVersion::Exact(1), vec![ev("E", 2)])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Conflict { stream, expected: ExpectedVersion::Exact(1), actual: 2 } if stream == &a),
        "{err:?}"
    );
    let err = store
        .append(&b, ExpectedVersion::StreamExists, vec![ev("E", 2)])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { actual: 0, .. }), "{err:?}");

    // An id already stored elsewhere, in the middle of a batch: nothing of the batch
    // is stored.
    let err = store
        .append(
            &b,
            ExpectedVersion::Any,
            vec![
                ev("E", 0),
                ev("E", 1),
                ev("E", 2).with_id(stored_id),
                ev("E", 3),
            ],
        )
        .await
        .unwrap_err();
    match err {
        Error::DuplicateEventId {
            event_id,
            stream,
            existing_stream,
            existing_version,
        } => {
            assert_eq!(
                event_id,
                stored_id,
                "{:?}",
                first.events.iter().map(|e| e.id).collect::<Vec<_>>()
            );
            assert_eq!(stream, b);
            assert_eq!(existing_stream, a);
            assert_eq!(existing_version, 2);
        }
        other => panic!("expected DuplicateEventId, got {other:?}"),
    }
    // The same id as the first of the append, at another place: not a repeat.
    let err = store
        .append(
            &b,
            ExpectedVersion::Any,
            vec![ev("E", 0).with_id(first.events[0].id)],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DuplicateEventId { .. }), "{err:?}");

    assert_eq!(rows(), 2, "nothing written by any refused append");
    assert_eq!(store.stream_version(&b).await.unwrap(), 0);
    // The writer is still usable (every transaction was closed).
    let r = store
        .append(&b, ExpectedVersion::NoStream, vec![ev("E", 0)])
        .await
        .unwrap();
    assert_eq!((r.version, r.events[0].position), (1, Position::new(0, 3)));
}

#[tokio::test]
async fn a_repeated_append_returns_the_original_and_writes_nothing() {
    let (_dir, path) = temp_db();
    let store = SqliteStore::open(&path).unwrap();
    let s = sid("Idem-1");
    let batch = vec![ev("E", 0), ev("E", 1)];
    let first = store
        .append(&s, ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    store
        .append(&s, ExpectedVersion::Any, vec![ev("E", 2)])
        .await
        .unwrap();
    let again = store
        .append(&s, ExpectedVersion::NoStream, batch)
        .await
        .unwrap();
    assert!(again.deduplicated);
    assert_eq!(again.events, first.events);
    assert_eq!(again.version, 3, "the stream's current version");
    assert_eq!(count_rows(&path, "mink_events"), 3);
}

#[tokio::test]
async fn unreadable_rows_are_corrupt_event_errors() {
    let (_dir, path) = temp_db();
    let store = SqliteStore::open(&path).unwrap();
    let cases = [
        (
            "BadId-1",
            "UPDATE mink_events SET event_id = x'0102' WHERE stream_id = ?1",
            "event_id",
        ),
        (
            "BadMeta-1",
            "UPDATE mink_events SET metadata = '{not json' WHERE stream_id = ?1",
            "metadata",
        ),
        (
            "BadVer-1",
            "UPDATE mink_events SET version = -5 WHERE stream_id = ?1",
            "version",
        ),
        (
            "BadTime-1",
            "UPDATE mink_events SET recorded_at = 'yesterday' WHERE stream_id = ?1",
            "recorded_at",
        ),
        (
            "BadSchema-1",
            "UPDATE mink_events SET schema_version = 99999999999 WHERE stream_id = ?1",
            "schema_version",
        ),
        (
            "BadType-1",
            "UPDATE mink_events SET event_type = x'ff00' WHERE stream_id = ?1",
            "event_type",
        ),
    ];
    for (stream, _, _) in &cases {
        store
            .append(&sid(stream), ExpectedVersion::NoStream, vec![ev("E", 0)])
            .await
            .unwrap();
    }
    let c = raw(&path);
    for (stream, sql, _) in &cases {
        c.execute(sql, [stream]).unwrap();
    }
    for (i, (stream, _, what)) in cases.iter().enumerate() {
        let expected_position = Position::new(0, i as u64 + 1);
        // The stream read (the negative version moves the row out of `version >= 1`,
        // so read that one through the feed only).
        if *what != "version" {
            let err = store.read_stream(&sid(stream), 1, 10).await.unwrap_err();
            match err {
                Error::CorruptEvent { position, detail } => {
                    assert_eq!(position, expected_position, "{stream}");
                    assert!(detail.contains(what), "{stream}: {detail}");
                }
                other => panic!("{stream}: expected CorruptEvent, got {other:?}"),
            }
        }
        let after = Position::new(0, i as u64);
        let err = store
            .read_feed(after, 1, &FeedFilter::all())
            .await
            .unwrap_err();
        match err {
            Error::CorruptEvent { position, detail } => {
                assert_eq!(position, expected_position, "{stream}");
                assert!(detail.contains(what), "{stream}: {detail}");
            }
            other => panic!("{stream}: expected CorruptEvent, got {other:?}"),
        }
    }
    // A stream id that is no longer valid, read through the feed.
    store
        .append(
            &sid("BadStream-1"),
            ExpectedVersion::NoStream,
            vec![ev("E", 0)],
        )
        .await
        .unwrap();
    c.execute(
        "UPDATE mink_events SET stream_id = '' WHERE stream_id = 'BadStream-1'",
        [],
    )
    .unwrap();
    let err = store
        .read_feed(Position::new(0, cases.len() as u64), 10, &FeedFilter::all())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::CorruptEvent { detail, .. } if detail.contains("stream_id")),
        "{err:?}"
    );
}

#[tokio::test]
async fn tamper_payload_reports_whether_it_found_the_event() {
    let (_dir, path) = temp_db();
    let store = SqliteStore::open(&path).unwrap();
    let s = sid("T-1");
    store
        .append(&s, ExpectedVersion::NoStream, vec![ev("E", 0)])
        .await
        .unwrap();
    assert!(store.tamper_payload(&s, 1, b"\xff").unwrap());
    assert!(!store.tamper_payload(&s, 2, b"x").unwrap());
    assert!(!store.tamper_payload(&s, u64::MAX, b"x").unwrap());
    assert!(!store.tamper_payload(&sid("T-2"), 1, b"x").unwrap());
    assert_eq!(
        &store.read_stream(&s, 1, 1).await.unwrap()[0].payload[..],
        b"\xff"
    );
}

// ---------------------------------------------------------------------------
// The feed.

#[tokio::test]
async fn feed_next_moves_past_what_a_filter_skipped() {
    let (_dir, path) = temp_db();
    let store = SqliteStore::open_with(&path, SqliteConfig::default().read_connections(1)).unwrap();
    assert_eq!(store.head_position().await.unwrap(), Position::START);
    let empty = store
        .read_feed(Position::START, 10, &FeedFilter::all())
        .await
        .unwrap();
    assert_eq!((empty.events.len(), empty.next), (0, Position::START));

    for i in 0..10u64 {
        let cat = if i % 2 == 0 { "Even" } else { "Odd" };
        store
            .append(
                &sid(&format!("{cat}-{i}")),
                ExpectedVersion::Any,
                vec![ev("E", i)],
            )
            .await
            .unwrap();
    }
    let head = store.head_position().await.unwrap();
    assert_eq!(head, Position::new(0, 10));

    // Nothing matches: the checkpoint still moves to the head.
    let none = store
        .read_feed(Position::START, 3, &FeedFilter::all().category("None"))
        .await
        .unwrap();
    assert!(none.events.is_empty());
    assert_eq!(none.next, head);

    // A full page ends at its last event.
    let page = store
        .read_feed(Position::START, 2, &FeedFilter::all().category("Odd"))
        .await
        .unwrap();
    let positions: Vec<u64> = page.events.iter().map(|e| e.position.minor()).collect();
    assert_eq!(positions, [2, 4]);
    assert_eq!(page.next, Position::new(0, 4));
    // A partial page ends at the head.
    let page = store
        .read_feed(page.next, 10, &FeedFilter::all().category("Odd"))
        .await
        .unwrap();
    let positions: Vec<u64> = page.events.iter().map(|e| e.position.minor()).collect();
    assert_eq!(positions, [6, 8, 10]);
    assert_eq!(page.next, head);

    // Axes AND, values OR.
    let f = FeedFilter::all()
        .category("Even")
        .category("Odd")
        .stream(sid("Even-4"))
        .stream(sid("Odd-5"))
        .event_type("E");
    let page = store.read_feed(Position::START, 100, &f).await.unwrap();
    let positions: Vec<u64> = page.events.iter().map(|e| e.position.minor()).collect();
    assert_eq!(positions, [5, 6]);
    let page = store
        .read_feed(
            Position::START,
            100,
            &FeedFilter::all().stream(sid("Even-4")).event_type("Other"),
        )
        .await
        .unwrap();
    assert!(page.events.is_empty());

    // Past the head, or with a major part: nothing, and next stays.
    for after in [
        Position::new(0, 50),
        Position::new(1, 0),
        Position::new(0, u64::MAX),
    ] {
        let page = store
            .read_feed(after, 10, &FeedFilter::all())
            .await
            .unwrap();
        assert!(page.events.is_empty());
        assert_eq!(page.next, after);
    }
    // A zero limit reads nothing and does not move.
    let page = store
        .read_feed(Position::new(0, 3), 0, &FeedFilter::all())
        .await
        .unwrap();
    assert_eq!((page.events.len(), page.next), (0, Position::new(0, 3)));
}

#[tokio::test]
async fn stream_filtered_pages_are_complete_for_long_and_short_streams() {
    // A long stream (read by walking positions) and a short one (read through the
    // stream index) in the same feed: paging through either yields exactly its events.
    let (_dir, path) = temp_db();
    let store = SqliteStore::open(&path).unwrap();
    let long = sid("Long-1");
    let short = sid("Short-1");
    let mut expected: HashMap<StreamId, Vec<u64>> = HashMap::new();
    for i in 0..300u64 {
        let s = if i % 100 == 50 {
            short.clone()
        } else if i % 2 == 0 {
            long.clone()
        } else {
            sid("Noise-1")
        };
        let r = store
            .append(&s, ExpectedVersion::Any, vec![ev("E", i), ev("F", i)])
            .await
            .unwrap();
        expected
            .entry(s)
            .or_default()
            .extend(r.events.iter().map(|e| e.position.minor()));
    }
    for (filter, stream) in [
        (FeedFilter::all().stream(long.clone()), &long),
        (FeedFilter::all().stream(short.clone()), &short),
        (
            FeedFilter::all().stream(long.clone()).category("Long"),
            &long,
        ),
    ] {
        for limit in [1, 7, 64, 1000] {
            let mut after = Position::START;
            let mut got = Vec::new();
            loop {
                let page = store.read_feed(after, limit, &filter).await.unwrap();
                assert!(page.events.len() <= limit);
                assert!(page.next >= after);
                got.extend(page.events.iter().map(|e| e.position.minor()));
                let done = page.events.len() < limit;
                after = page.next;
                if done {
                    break;
                }
            }
            assert_eq!(&got, &expected[stream], "{stream} limit {limit}");
            assert_eq!(after, store.head_position().await.unwrap());
        }
    }
    // Only the F events of the long stream.
    let page = store
        .read_feed(
            Position::START,
            1000,
            &FeedFilter::all().stream(long.clone()).event_type("F"),
        )
        .await
        .unwrap();
    assert_eq!(page.events.len(), expected[&long].len() / 2);
    assert!(page.events.iter().all(|e| e.event_type == "F"));
}

#[tokio::test]
async fn the_feed_signal_fires_after_an_append() {
    let (_dir, path) = temp_db();
    let store = SqliteStore::open(&path).unwrap();
    let mut signal = store.feed_signal();
    signal.mark_seen();
    let writer = store.clone();
    let task = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        writer
            .append(&sid("Sig-1"), ExpectedVersion::Any, vec![ev("E", 0)])
            .await
            .unwrap();
    });
    let started = std::time::Instant::now();
    signal.wait(Duration::from_secs(10)).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "woken by the append"
    );
    task.await.unwrap();
    assert_eq!(store.head_position().await.unwrap(), Position::new(0, 1));
}

// ---------------------------------------------------------------------------
// Concurrency.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_lose_nothing_and_keep_versions_contiguous() {
    let (_dir, path) = temp_db();
    let store = SqliteStore::open(&path).unwrap();
    let shared = sid("Shared-1");
    let tasks = 16u64;
    let per_task = 40u64;
    let mut handles = Vec::new();
    for t in 0..tasks {
        let store = store.clone();
        let shared = shared.clone();
        handles.push(tokio::spawn(async move {
            let own = sid(&format!("Own-{t}"));
            let mut ids = Vec::new();
            for i in 0..per_task {
                let e = ev("E", i);
                ids.push(e.id);
                let r = store
                    .append(&own, ExpectedVersion::Exact(i), vec![e])
                    .await
                    .unwrap();
                assert_eq!(r.version, i + 1);
                let e = ev("S", i);
                ids.push(e.id);
                store
                    .append(&shared, ExpectedVersion::Any, vec![e])
                    .await
                    .unwrap();
                tokio::task::yield_now().await;
            }
            ids
        }));
    }
    let mut acked = Vec::new();
    for h in handles {
        acked.extend(h.await.unwrap());
    }
    let page = store
        .read_feed(Position::START, usize::MAX, &FeedFilter::all())
        .await
        .unwrap();
    let total = (tasks * per_task * 2) as usize;
    assert_eq!(page.events.len(), total);
    let stored: BTreeSet<EventId> = page.events.iter().map(|e| e.id).collect();
    assert!(acked.iter().all(|id| stored.contains(id)), "no lost events");
    // Dense positions 1..=total, in order.
    for (i, e) in page.events.iter().enumerate() {
        assert_eq!(e.position, Position::new(0, i as u64 + 1));
    }
    // Contiguous versions per stream.
    let mut versions: HashMap<StreamId, Vec<u64>> = HashMap::new();
    for e in &page.events {
        versions
            .entry(e.stream_id.clone())
            .or_default()
            .push(e.version);
    }
    for (s, v) in versions {
        let expected: Vec<u64> = (1..=v.len() as u64).collect();
        assert_eq!(v, expected, "{s}");
    }
    assert_eq!(
        store.stream_version(&shared).await.unwrap(),
        tasks * per_task
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_handles_on_one_file_take_turns() {
    // Two stores opened separately on one file behave like two processes: separate
    // connections, SQLite's file locks between them.
    let (_dir, path) = temp_db();
    let a = SqliteStore::open(&path).unwrap();
    let b = SqliteStore::open_with(&path, SqliteConfig::default().read_connections(0)).unwrap();
    let s = sid("Both-1");
    let mut handles = Vec::new();
    for (k, store) in [a.clone(), b.clone(), a.clone(), b.clone()]
        .into_iter()
        .enumerate()
    {
        let s = s.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..50u64 {
                store
                    .append(&s, ExpectedVersion::Any, vec![ev("E", k as u64 * 100 + i)])
                    .await
                    .unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    for store in [&a, &b] {
        let events = store.read_stream(&s, 1, usize::MAX).await.unwrap();
        assert_eq!(events.len(), 200);
        assert!(
            events
                .iter()
                .enumerate()
                .all(|(i, e)| e.version == i as u64 + 1)
        );
        assert_eq!(store.head_position().await.unwrap(), Position::new(0, 200));
    }
    // Exactly one of two racing NoStream appends wins, across handles.
    let race = sid("Race-1");
    let (ra, rb) = tokio::join!(
        a.append(&race, ExpectedVersion::NoStream, vec![ev("E", 0)]),
        b.append(&race, ExpectedVersion::NoStream, vec![ev("E", 1)]),
    );
    assert_eq!([ra.is_ok(), rb.is_ok()].iter().filter(|ok| **ok).count(), 1);
    assert!(ra.err().or(rb.err()).is_some_and(|e| e.is_conflict()));
}

/// Dropping the last handle checkpoints the write-ahead log into the database file and
/// removes it, so a closed store is one self-contained file.
#[tokio::test]
async fn closing_the_store_folds_the_wal_into_the_file() {
    use mink_es::prelude::*;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fold.db");
    {
        let store = mink_sqlite::SqliteStore::open(&path).unwrap();
        let stream = mink_es::StreamId::new("Fold-1").unwrap();
        for i in 0..50 {
            store
                .append(
                    &stream,
                    mink_es::ExpectedVersion::Any,
                    vec![mink_es::NewEvent::json("E", &serde_json::json!({ "i": i })).unwrap()],
                )
                .await
                .unwrap();
        }
        // Use every read connection, so that each has the log open.
        for _ in 0..8 {
            let page = store
                .read_feed(mink_es::Position::START, 10, &mink_es::FeedFilter::all())
                .await
                .unwrap();
            assert_eq!(page.events.len(), 10);
        }
        let other_handle = store.clone();
        drop(store);
        assert!(
            path.with_extension("db-wal").exists(),
            "open: the log is in use"
        );
        drop(other_handle);
    }
    let wal = path.with_extension("db-wal");
    assert!(
        !wal.exists() || std::fs::metadata(&wal).unwrap().len() == 0,
        "the write-ahead log was folded back"
    );
    let conn =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let n: i64 = conn
        .query_row("SELECT COUNT(*) FROM mink_events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 50);
}
