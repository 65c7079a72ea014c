//! The gap-safe feed: it waits for open transactions instead of skipping them, rolled
//! back transactions never stall it, and its lag is visible.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use mink_es::prelude::*;
use mink_es::{
    ExpectedVersion, FeedFilter, NewEvent, Position, StoredEvent, StreamId, Subscription,
    SubscriptionOptions,
};
use mink_postgres::sqlx::{self, Connection};

fn sid(s: &str) -> StreamId {
    StreamId::new(s).unwrap()
}

fn ev(t: &'static str, n: u64) -> NewEvent {
    NewEvent::json(t, &serde_json::json!({ "n": n })).unwrap()
}

async fn feed<S: FeedReader>(store: &S) -> Vec<StoredEvent> {
    let mut out = Vec::new();
    let mut after = Position::START;
    loop {
        let page = store
            .read_feed(after, 100, &FeedFilter::all())
            .await
            .unwrap();
        let n = page.events.len();
        out.extend(page.events);
        after = page.next;
        if n < 100 {
            return out;
        }
    }
}

/// One transaction holds events open while later ones commit: the feed delivers none of
/// the later events (it would otherwise skip the held ones), then everything in order
/// once the held transaction commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn feed_waits_for_an_open_transaction_then_delivers_everything_in_order() {
    let Some(url) = common::url() else { return };
    let _serial = common::FEED_LOCK.lock().await;
    let schemas = common::Schemas::new(&url);
    let store = common::store_with(&url, &schemas, |b| b).await;

    let early = store
        .append(&sid("Early-1"), ExpectedVersion::Any, vec![ev("Early", 0)])
        .await
        .unwrap();

    // The slow transaction takes its position and transaction id first...
    let mut slow = store.begin().await.unwrap();
    let held = store
        .append_in(
            &mut slow,
            &sid("Slow-1"),
            ExpectedVersion::Any,
            vec![ev("Held", 0), ev("Held", 1)],
        )
        .await
        .unwrap();
    // ...and later transactions commit after it, with higher positions.
    let mut later = Vec::new();
    for i in 0..5u64 {
        later.extend(
            store
                .append(
                    &sid(&format!("Fast-{i}")),
                    ExpectedVersion::Any,
                    vec![ev("Fast", i)],
                )
                .await
                .unwrap()
                .events,
        );
    }
    assert!(later[0].position.minor() > held.events[1].position.minor());

    let mut sub = Subscription::new(
        store.clone(),
        SubscriptionOptions::all().poll_interval(Duration::from_millis(50)),
    );
    let first = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first, early.events[0]);
    // While the slow transaction is open, the feed holds the later events back.
    let waited = tokio::time::timeout(Duration::from_millis(1500), sub.next()).await;
    assert!(
        waited.is_err(),
        "delivered {waited:?} past an open transaction"
    );
    assert_eq!(feed(&store).await, early.events);
    assert_eq!(
        store.head_position().await.unwrap(),
        early.events[0].position
    );
    let lag = store.feed_lag().await.unwrap();
    assert!(lag.waiting_events >= 5, "{lag:?}");
    assert!(
        lag.oldest_waiting_age.unwrap() >= Duration::from_millis(1000),
        "{lag:?}"
    );
    let writer = lag.oldest_writer.expect("the open transaction is visible");
    assert!(
        writer.age.unwrap() >= Duration::from_millis(1000),
        "{writer:?}"
    );
    assert!(lag.horizon <= held.events[0].position.major());

    slow.commit().await.unwrap();
    let mut got = Vec::new();
    while got.len() < 7 {
        got.push(
            tokio::time::timeout(Duration::from_secs(10), sub.next())
                .await
                .expect("delivered after the commit")
                .unwrap(),
        );
    }
    let mut expected = held.events.clone();
    expected.extend(later.clone());
    assert_eq!(
        got, expected,
        "held events first (older transaction), then the rest"
    );
    assert!(got.windows(2).all(|w| w[0].position < w[1].position));
    assert!(sub.try_next().await.unwrap().is_none());
    let mut all = early.events.clone();
    all.extend(expected);
    assert_eq!(feed(&store).await, all);
    let lag = store.feed_lag().await.unwrap();
    assert_eq!(lag.waiting_events, 0, "{lag:?}");
}

/// A rolled-back transaction never stalls the feed, and its events never appear, even
/// when it rolls back after later transactions committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolled_back_transactions_never_stall_the_feed() {
    let Some(url) = common::url() else { return };
    let _serial = common::FEED_LOCK.lock().await;
    let schemas = common::Schemas::new(&url);
    let store = common::store_with(&url, &schemas, |b| b).await;

    let mut doomed = store.begin().await.unwrap();
    store
        .append_in(
            &mut doomed,
            &sid("Doomed-1"),
            ExpectedVersion::Any,
            vec![ev("Lost", 0)],
        )
        .await
        .unwrap();
    let kept = store
        .append(&sid("Kept-1"), ExpectedVersion::Any, vec![ev("Kept", 0)])
        .await
        .unwrap();
    assert!(
        feed(&store).await.is_empty(),
        "held back while the doomed tx is open"
    );
    doomed.rollback().await.unwrap();
    let start = Instant::now();
    assert_eq!(
        feed(&store).await,
        kept.events,
        "visible at once after the rollback"
    );
    assert!(start.elapsed() < Duration::from_secs(2));

    // A connection that dies inside a transaction is rolled back by the server: the
    // same.
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql("BEGIN").execute(&mut conn).await.unwrap();
    store
        .append_in(
            &mut conn,
            &sid("Dies-1"),
            ExpectedVersion::Any,
            vec![ev("Lost", 1)],
        )
        .await
        .unwrap();
    let kept2 = store
        .append(&sid("Kept-2"), ExpectedVersion::Any, vec![ev("Kept", 1)])
        .await
        .unwrap();
    drop(conn);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut expected = kept.events.clone();
    expected.extend(kept2.events);
    loop {
        let got = feed(&store).await;
        if got == expected {
            break;
        }
        assert!(got.iter().all(|e| e.event_type != "Lost"));
        assert!(
            Instant::now() < deadline,
            "feed stalled after a dropped connection"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A filtered reader's cursor moves past events that do not match, up to the last
/// readable event, so its checkpoint advances.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn filtered_cursors_advance_over_non_matching_events() {
    let Some(url) = common::url() else { return };
    let _serial = common::FEED_LOCK.lock().await;
    let schemas = common::Schemas::new(&url);
    let store = common::store_with(&url, &schemas, |b| b).await;
    for i in 0..10u64 {
        store
            .append(
                &sid(&format!("Other-{i}")),
                ExpectedVersion::Any,
                vec![ev("X", i)],
            )
            .await
            .unwrap();
    }
    let head = store.head_position().await.unwrap();
    let page = store
        .read_feed(Position::START, 5, &FeedFilter::all().category("Order"))
        .await
        .unwrap();
    assert!(page.events.is_empty());
    assert_eq!(page.next, head);
    // A position past the head (a stale or foreign checkpoint) is kept, not moved back.
    let beyond = Position::new(head.major() + 1000, 0);
    let page = store
        .read_feed(beyond, 5, &FeedFilter::all().category("Other"))
        .await
        .unwrap();
    assert_eq!(page.next, beyond);
}

/// The optional filter indexes build concurrently, can be requested twice, are used by
/// filtered reads, and change no result.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn optional_filter_indexes() {
    let Some(url) = common::url() else { return };
    let _serial = common::FEED_LOCK.lock().await;
    let schemas = common::Schemas::new(&url);
    let store = common::store_with(&url, &schemas, |b| b).await;
    let mut orders = Vec::new();
    for i in 0..30u64 {
        let cat = if i % 3 == 0 { "Order" } else { "Cart" };
        let r = store
            .append(
                &sid(&format!("{cat}-{i}")),
                ExpectedVersion::Any,
                vec![ev("E", i)],
            )
            .await
            .unwrap();
        if cat == "Order" {
            orders.extend(r.events);
        }
    }
    let filter = FeedFilter::all().category("Order");
    let before = store
        .read_feed(Position::START, 100, &filter)
        .await
        .unwrap();
    for _ in 0..2 {
        store.create_category_index().await.unwrap();
        store.create_event_type_index().await.unwrap();
    }
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes WHERE schemaname = $1 ORDER BY indexname",
    )
    .bind(store.schema().as_str())
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert!(
        names.iter().any(|n| n == "events_category_idx"),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n == "events_event_type_idx"),
        "{names:?}"
    );
    let after = store
        .read_feed(Position::START, 100, &filter)
        .await
        .unwrap();
    assert_eq!(before, after);
    assert_eq!(after.events, orders);
}

/// A transaction that took its id before another one appended to the same stream, and
/// appends after it: the stream's events still come in version order in the feed (the
/// older transaction's events are stamped with the younger one's id).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_streams_events_stay_in_version_order_across_transactions() {
    let Some(url) = common::url() else { return };
    let _serial = common::FEED_LOCK.lock().await;
    let schemas = common::Schemas::new(&url);
    let store = common::store_with(&url, &schemas, |b| b).await;
    for expected in [ExpectedVersion::Any, ExpectedVersion::Exact(2)] {
        let stream = sid(&format!("Order-{expected:?}"));
        // The older transaction takes its id with a write of its own.
        let mut older = store.begin().await.unwrap();
        let older_xid: String = sqlx::query_scalar("SELECT pg_current_xact_id()::text")
            .fetch_one(&mut *older)
            .await
            .unwrap();
        // A younger transaction appends first and commits.
        let younger = store
            .append(&stream, ExpectedVersion::Any, vec![ev("A", 1), ev("A", 2)])
            .await
            .unwrap();
        assert!(younger.events[0].position.major() > older_xid.parse::<u64>().unwrap());
        // Then the older one appends.
        let late = store
            .append_in(&mut older, &stream, expected, vec![ev("B", 3)])
            .await
            .unwrap();
        older.commit().await.unwrap();
        assert_eq!(late.version, 3);
        assert_eq!(
            late.events[0].position.major(),
            younger.events[0].position.major(),
            "stamped with the younger transaction's id"
        );
        assert!(late.events[0].position > younger.events[1].position);
    }
    let all = feed(&store).await;
    for s in ["Order-Any", "Order-Exact(2)"] {
        let versions: Vec<u64> = all
            .iter()
            .filter(|e| e.stream_id.as_str() == s)
            .map(|e| e.version)
            .collect();
        assert_eq!(versions, [1, 2, 3], "{s}");
    }
    assert!(all.windows(2).all(|w| w[0].position < w[1].position));
}
