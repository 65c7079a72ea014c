//! The transactional outbox on SQLite: the shared outbox conformance suite of
//! `mink-testing`, then what only a file shared by several handles can show.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mink_es::outbox::publisher::RecordingPublisher;
use mink_es::outbox::store::OutboxCounts;
use mink_es::outbox::{
    MessageStatus, Outbox, OutboxMessage, OutboxProcessor, OutboxStore, ProcessorConfig,
    PublishError, Publisher, Route,
};
use mink_es::{Error, ExpectedVersion, Metadata, NewEvent, StreamId, StreamWriter};
use mink_sqlite::{SqliteConfig, SqliteStore};
use rusqlite::types::Value;
use tokio_util::sync::CancellationToken;

/// Makes each store in its own temporary directory, kept alive as long as the factory.
struct SqliteOutboxFactory {
    dirs: std::sync::Mutex<Vec<tempfile::TempDir>>,
}

impl SqliteOutboxFactory {
    fn new() -> Self {
        SqliteOutboxFactory {
            dirs: std::sync::Mutex::new(Vec::new()),
        }
    }
}

impl mink_testing::outbox::OutboxFactory for SqliteOutboxFactory {
    type Store = SqliteStore;

    async fn create(&self, outbox: Outbox) -> (SqliteStore, Arc<dyn OutboxStore>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open_with_outbox(
            dir.path().join("outbox.db"),
            SqliteConfig::default(),
            outbox,
        )
        .expect("open store");
        self.dirs.lock().expect("lock").push(dir);
        let messages = store.outbox_store();
        (store, Arc::new(messages))
    }
}

mod conformance {
    mink_testing::outbox_tests!(async { Some(super::SqliteOutboxFactory::new()) });
}

fn sid(s: &str) -> StreamId {
    StreamId::new(s).unwrap()
}

fn ev(t: &'static str, n: u64) -> NewEvent {
    NewEvent::json(t, &serde_json::json!({ "n": n })).unwrap()
}

fn config(owner: &str) -> ProcessorConfig {
    ProcessorConfig {
        owner: owner.into(),
        batch_size: 8,
        lease: Duration::from_secs(30),
        max_attempts: 3,
        base_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        poll_interval: Duration::from_millis(5),
        ..ProcessorConfig::default()
    }
}

/// A [`RecordingPublisher`] behind a network round trip of `delay`.
struct Remote {
    inner: RecordingPublisher,
    delay: Duration,
}

impl Publisher for Remote {
    fn publish<'a>(
        &'a self,
        message: &'a OutboxMessage,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), PublishError>> + Send + 'a>>
    {
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            self.inner.publish(message).await
        })
    }
}

fn with_outbox(path: &Path, outbox: Outbox) -> SqliteStore {
    SqliteStore::open_with_outbox(path, SqliteConfig::default(), outbox).unwrap()
}

/// Two handles opened separately on one file (two writer connections, as two processes
/// would have), each running a processor under its own owner, while a third handle
/// keeps appending: every message is delivered, none twice, each stream in order.
/// (Deliveries take a 1 ms round trip, as over a network: the processors then share
/// the work instead of one holding the write lock nearly all the time.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_handles_on_one_file_deliver_every_message_exactly_once() {
    const STREAMS: u64 = 20;
    const BEFORE: u64 = 400;
    const DURING: u64 = 200;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let writer = with_outbox(&path, Outbox::new().route(Route::all("out")).unwrap());
    let stream = |i: u64| sid(&format!("Acc-{}", i % STREAMS));
    for i in 0..BEFORE {
        writer
            .append(&stream(i), ExpectedVersion::Any, vec![ev("Moved", i)])
            .await
            .unwrap();
    }

    let cancel = CancellationToken::new();
    let mut publishers = Vec::new();
    let mut tasks = Vec::new();
    for owner in ["alpha", "beta"] {
        // Opened on its own, without routes: it only delivers.
        let handle = SqliteStore::open(&path).unwrap();
        let publisher = RecordingPublisher::new();
        let p = OutboxProcessor::new(Arc::new(handle.outbox_store()))
            .publisher(
                "out",
                Remote {
                    inner: publisher.clone(),
                    delay: Duration::from_millis(1),
                },
            )
            .config(config(owner));
        publishers.push(publisher);
        tasks.push(tokio::spawn(p.run(cancel.clone())));
    }
    for i in BEFORE..BEFORE + DURING {
        writer
            .append(&stream(i), ExpectedVersion::Any, vec![ev("Moved", i)])
            .await
            .unwrap();
    }
    let total = (BEFORE + DURING) as usize;
    let delivered = || {
        publishers
            .iter()
            .map(|p| p.delivered().len())
            .sum::<usize>()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while delivered() < total && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A little longer: a duplicate would show up now.
    tokio::time::sleep(Duration::from_millis(100)).await;
    cancel.cancel();
    for t in tasks {
        t.await.unwrap().unwrap();
    }

    let attempts: Vec<_> = publishers.iter().flat_map(|p| p.attempts()).collect();
    let unique: HashSet<_> = attempts.iter().copied().collect();
    let per_owner: Vec<usize> = publishers.iter().map(|p| p.delivered().len()).collect();
    println!(
        "two handles: {total} messages, {} attempts, {} distinct; alpha delivered {}, beta {}",
        attempts.len(),
        unique.len(),
        per_owner[0],
        per_owner[1]
    );
    assert_eq!(attempts.len(), total, "no message attempted twice");
    assert_eq!(unique.len(), total, "every message delivered");
    // How the work is shared is up to SQLite's lock (a busy connection retries after
    // sleeping, so one processor may take most or all of it): not asserted.
    assert_eq!(per_owner.iter().sum::<usize>(), total);
    // Per stream, in version order (deliveries of both processors, by time of record:
    // a stream's next message is claimable only after its previous one was acknowledged).
    let mut by_stream: HashMap<StreamId, Vec<u64>> = HashMap::new();
    let mut all: Vec<OutboxMessage> = publishers.iter().flat_map(|p| p.delivered()).collect();
    all.sort_by_key(|m| m.position);
    for m in &all {
        by_stream
            .entry(m.stream_id.clone())
            .or_default()
            .push(m.stream_version);
    }
    for (s, versions) in &by_stream {
        let expected: Vec<u64> = (1..=versions.len() as u64).collect();
        assert_eq!(versions, &expected, "{s}");
    }
    let counts = writer.outbox_store().counts().await.unwrap();
    assert_eq!(
        counts,
        OutboxCounts {
            pending: 0,
            delivered: total as u64,
            dead: 0
        }
    );
}

/// Each processor delivers a stream in order, even when the two share the streams:
/// checked through the order in which one shared publisher saw the messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_handles_keep_each_stream_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("order.db");
    let writer = with_outbox(&path, Outbox::new().route(Route::all("out")).unwrap());
    for i in 0..300u64 {
        writer
            .append(
                &sid(&format!("O-{}", i % 6)),
                ExpectedVersion::Any,
                vec![ev("E", i)],
            )
            .await
            .unwrap();
    }
    let publisher = RecordingPublisher::new();
    let cancel = CancellationToken::new();
    let mut tasks = Vec::new();
    for owner in ["alpha", "beta"] {
        let handle = SqliteStore::open(&path).unwrap();
        let p = OutboxProcessor::new(Arc::new(handle.outbox_store()))
            .publisher(
                "out",
                Remote {
                    inner: publisher.clone(),
                    delay: Duration::from_millis(1),
                },
            )
            .config(ProcessorConfig {
                batch_size: 2,
                ..config(owner)
            });
        tasks.push(tokio::spawn(p.run(cancel.clone())));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while publisher.delivered().len() < 300 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cancel.cancel();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let delivered = publisher.delivered();
    assert_eq!(delivered.len(), 300);
    let mut last: HashMap<StreamId, u64> = HashMap::new();
    for m in &delivered {
        let prev = last
            .insert(m.stream_id.clone(), m.stream_version)
            .unwrap_or(0);
        assert_eq!(m.stream_version, prev + 1, "{} in order", m.stream_id);
    }
}

/// Messages and their delivery state are in the file: a reopened store (even without
/// routes) finds them as they were, and delivers the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_survive_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reopen.db");
    let routes = || {
        Outbox::new()
            .route(Route::all("hook"))
            .unwrap()
            .route(Route::categories("audit", ["Order"]))
            .unwrap()
    };
    let md = Metadata::default().with_correlation_id("c-9").with_custom(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    );
    let (delivered, dead) = {
        let store = with_outbox(&path, routes());
        for i in 0..5u64 {
            store
                .append(
                    &sid("Order-1"),
                    ExpectedVersion::Any,
                    vec![ev("Placed", i).with_metadata(md.clone())],
                )
                .await
                .unwrap();
            store
                .append(
                    &sid("Cart-1"),
                    ExpectedVersion::Any,
                    vec![
                        NewEvent::new("Binary", vec![0u8, 159, 146, 150]).with_codec("raw".into()),
                    ],
                )
                .await
                .unwrap();
        }
        let o = store.outbox_store();
        // Order-1: hook + audit each; Cart-1: hook only.
        assert_eq!(o.counts().await.unwrap().pending, 15);
        let claimed = o.claim("p", 2, Duration::from_secs(60), 5).await.unwrap();
        assert_eq!(claimed.len(), 2);
        o.ack("p", &[claimed[0].message.id]).await.unwrap();
        o.fail("p", claimed[1].message.id, "410 Gone", None)
            .await
            .unwrap();
        (claimed[0].message.clone(), claimed[1].message.clone())
    };

    // Reopened without routes: the messages are there, as they were.
    let store = SqliteStore::open(&path).unwrap();
    let o = store.outbox_store();
    assert_eq!(
        o.counts().await.unwrap(),
        OutboxCounts {
            pending: 13,
            delivered: 1,
            dead: 1
        }
    );
    assert_eq!(
        o.status(delivered.id).await.unwrap(),
        Some((MessageStatus::Delivered, 1))
    );
    let letters = o.dead_letters(10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].message, dead, "every field read back as written");
    assert_eq!(
        (letters[0].attempts, letters[0].last_error.as_str()),
        (1, "410 Gone")
    );
    // A store without routes writes no messages.
    store
        .append(&sid("Order-2"), ExpectedVersion::Any, vec![ev("Placed", 9)])
        .await
        .unwrap();
    assert_eq!(o.counts().await.unwrap().pending, 13);

    let publisher = RecordingPublisher::new();
    let p = OutboxProcessor::new(Arc::new(o.clone()))
        .publisher("hook", publisher.clone())
        .publisher("audit", publisher.clone())
        .config(config("after-reopen"));
    drain(&p).await;
    let got = publisher.delivered();
    assert_eq!(got.len(), 13);
    let binary = got.iter().find(|m| m.event_type == "Binary").unwrap();
    assert_eq!(
        (binary.payload.as_ref(), binary.codec.as_str()),
        (&[0u8, 159, 146, 150][..], "raw")
    );
    let placed = got.iter().find(|m| m.event_type == "Placed").unwrap();
    assert_eq!(placed.metadata, md);
    drop(p);
    drop(o);
    drop(store);

    // And again: everything delivered stays delivered.
    let store = with_outbox(&path, routes());
    assert_eq!(
        store.outbox_store().counts().await.unwrap(),
        OutboxCounts {
            pending: 0,
            delivered: 14,
            dead: 1
        }
    );
}

async fn drain(p: &OutboxProcessor) {
    let mut idle = 0;
    while idle < 5 {
        let r = p.run_once().await.unwrap();
        if r.claimed == 0 {
            idle += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        } else {
            idle = 0;
        }
    }
}

/// A row damaged outside the store (here through a second connection) makes the
/// operations that read it fail with a non-transient backend error naming the row,
/// never a panic; a claim that meets it changes nothing; once repaired, all is well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_row_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corrupt.db");
    let store = with_outbox(&path, Outbox::new().route(Route::all("out")).unwrap());
    for s in ["A-1", "B-1", "C-1"] {
        store
            .append(&sid(s), ExpectedVersion::Any, vec![ev("E", 1)])
            .await
            .unwrap();
    }
    let o = store.outbox_store();
    let raw = rusqlite::Connection::open(&path).unwrap();
    let b_id: Vec<u8> = raw
        .query_row("SELECT id FROM mink_outbox WHERE seq = 2", [], |r| r.get(0))
        .unwrap();
    let b_id = mink_es::Uuid::from_slice(&b_id).unwrap();

    let damage = [
        ("metadata", "'{not json'"),
        ("stream_id", "''"),
        ("stream_id", "x'00ff'"),
        ("destination", "x'ff'"),
        ("id", "x'00'"),
        ("event_id", "'not an id'"),
        ("event_type", "x'ff'"),
        ("payload", "42"),
        ("codec", "x'01'"),
        ("stream_version", "-1"),
        ("position", "'first'"),
        ("created_at", "'yesterday'"),
        ("created_at", "9223372036854775807"),
        ("attempts", "'many'"),
        ("attempts", "-3"),
        ("next_attempt_at", "'soon'"),
    ];
    let processor = OutboxProcessor::new(Arc::new(o.clone()))
        .publisher("out", RecordingPublisher::new())
        .config(config("p"));
    for (column, value) in damage {
        let original: Value = raw
            .query_row(
                &format!("SELECT {column} FROM mink_outbox WHERE seq = 2"),
                [],
                |r| r.get(0),
            )
            .unwrap();
        raw.execute_batch(&format!(
            "UPDATE mink_outbox SET {column} = {value} WHERE seq = 2"
        ))
        .unwrap();
        let err = o
            .claim("p", 10, Duration::from_secs(60), 3)
            .await
            .expect_err(column);
        match &err {
            Error::Backend { transient, .. } => assert!(!transient, "{column}: {err}"),
            other => panic!("{column}: not a backend error: {other:?}"),
        }
        assert!(err.to_string().contains("seq 2"), "{column}: {err}");
        assert!(processor.run_once().await.is_err(), "{column}");
        if column == "attempts" {
            assert!(o.status(b_id).await.is_err(), "{column}");
        }
        raw.execute(
            &format!("UPDATE mink_outbox SET {column} = ?1 WHERE seq = 2"),
            [original],
        )
        .unwrap();
        assert_eq!(
            o.status(b_id).await.unwrap(),
            Some((MessageStatus::Pending, 0)),
            "{column}: the failed claims changed nothing"
        );
    }

    // A damaged dead letter: reading the queue fails, the rest works.
    let claimed = o.claim("p", 10, Duration::from_secs(60), 3).await.unwrap();
    assert_eq!(claimed.len(), 3);
    assert!(claimed.iter().all(|c| c.attempt == 1));
    o.fail("p", b_id, "400", None).await.unwrap();
    raw.execute_batch("UPDATE mink_outbox SET finished_at = 'later' WHERE seq = 2")
        .unwrap();
    let err = o.dead_letters(10).await.unwrap_err();
    assert!(err.to_string().contains("finished_at"), "{err}");
    assert_eq!(o.counts().await.unwrap().dead, 1);
}

/// The signal fires after an append that wrote messages and after acknowledgements,
/// not after an append that wrote none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signal_fires_when_messages_may_be_deliverable() {
    let dir = tempfile::tempdir().unwrap();
    let store = with_outbox(
        &dir.path().join("signal.db"),
        Outbox::new()
            .route(Route::event_types("out", ["Routed"]))
            .unwrap(),
    );
    let o = store.outbox_store();
    let mut signal = o.signal();
    signal.mark_seen();
    store
        .append(&sid("S-1"), ExpectedVersion::Any, vec![ev("Ignored", 1)])
        .await
        .unwrap();
    let waited = tokio::time::Instant::now();
    signal.wait(Duration::from_millis(200)).await;
    assert!(
        waited.elapsed() >= Duration::from_millis(190),
        "no message, no signal"
    );

    let fires = |mut signal: mink_es::FeedSignal| async move {
        let start = tokio::time::Instant::now();
        signal.wait(Duration::from_secs(30)).await;
        start.elapsed() < Duration::from_secs(10)
    };
    signal.mark_seen();
    let waiter = tokio::spawn(fires(signal.clone()));
    tokio::time::sleep(Duration::from_millis(20)).await;
    store
        .append(&sid("S-1"), ExpectedVersion::Any, vec![ev("Routed", 2)])
        .await
        .unwrap();
    assert!(waiter.await.unwrap(), "an append that wrote a message");

    let claimed = o.claim("p", 10, Duration::from_secs(60), 3).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let mut signal = o.signal();
    signal.mark_seen();
    let waiter = tokio::spawn(fires(signal));
    tokio::time::sleep(Duration::from_millis(20)).await;
    o.ack("p", &[claimed[0].message.id]).await.unwrap();
    assert!(waiter.await.unwrap(), "an acknowledgement");
}

/// A file written before the outbox existed (schema version 3) gets the outbox table
/// when opened, keeps its events, and its appends write messages from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_from_before_the_outbox_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let stream = sid("Old-1");
    {
        let store = SqliteStore::open(&path).unwrap();
        store
            .append(&stream, ExpectedVersion::NoStream, vec![ev("Happened", 1)])
            .await
            .unwrap();
    }
    let raw = rusqlite::Connection::open(&path).unwrap();
    // Without the outbox, nor the tables of the later migrations.
    raw.execute_batch(
        "DROP TABLE mink_outbox; DROP TABLE mink_read_models; \
         DROP TABLE mink_projection_rebuilds; DROP TABLE mink_projection_status; \
         DROP TABLE mink_projection_requests; DROP TABLE mink_projection_parked; \
         DROP TABLE mink_projection_leases; DELETE FROM mink_migrations WHERE version >= 4;",
    )
    .unwrap();
    drop(raw);
    let store = with_outbox(&path, Outbox::new().route(Route::all("out")).unwrap());
    assert_eq!(store.schema_version(), mink_sqlite::LATEST_SCHEMA_VERSION);
    assert_eq!(
        mink_sqlite::migrations()
            .iter()
            .find(|m| m.version() == 4)
            .map(|m| m.name()),
        Some("outbox")
    );
    let o = store.outbox_store();
    assert_eq!(o.counts().await.unwrap(), OutboxCounts::default());
    store
        .append(&stream, ExpectedVersion::Exact(1), vec![ev("Happened", 2)])
        .await
        .unwrap();
    let claimed = o.claim("p", 10, Duration::from_secs(30), 3).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].message.stream_version, 2);
}
