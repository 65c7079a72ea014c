//! LISTEN/NOTIFY wakes subscribers; polling delivers when a notification is lost; the
//! background tasks stop with the store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use mink_es::prelude::*;
use mink_es::{ExpectedVersion, NewEvent, StreamId, Subscription, SubscriptionOptions};
use mink_postgres::PgEventStore;
use mink_postgres::sqlx;
use tokio_util::sync::CancellationToken;

fn sid(s: &str) -> StreamId {
    StreamId::new(s).unwrap()
}

fn ev(t: &'static str, n: u64) -> NewEvent {
    NewEvent::json(t, &serde_json::json!({ "n": n })).unwrap()
}

/// Backends listening on this store's channel.
async fn listeners(store: &PgEventStore) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN \"' || $1 || '\"%'",
    )
    .bind(store.schema().channel())
    .fetch_one(store.pool())
    .await
    .unwrap()
}

async fn wait_for(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A subscriber whose poll interval is a minute still gets an event appended by
/// another process within moments: the NOTIFY woke it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notify_wakes_a_subscriber_in_another_process() {
    let Some(url) = common::url() else { return };
    let _serial = common::FEED_LOCK.lock().await;
    let schemas = common::Schemas::new(&url);
    let reader = common::store_with(&url, &schemas, |b| b).await;
    let writer = common::other_process(&url, reader.schema(), |b| b).await;

    let mut sub = Subscription::new(
        reader.clone(),
        SubscriptionOptions::all().poll_interval(Duration::from_secs(60)),
    );
    assert!(sub.try_next().await.unwrap().is_none());
    wait_for("the listener", async || listeners(&reader).await == 1).await;
    let reading = tokio::spawn(async move {
        let e = sub.next().await.unwrap();
        (e, Instant::now())
    });
    // Let the subscriber settle into its (one-minute) wait.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = Instant::now();
    let appended = writer
        .append(&sid("Wake-1"), ExpectedVersion::Any, vec![ev("E", 0)])
        .await
        .unwrap();
    let (got, at) = tokio::time::timeout(Duration::from_secs(10), reading)
        .await
        .expect("woken long before the poll interval")
        .unwrap();
    assert_eq!(got, appended.events[0]);
    let latency = at.duration_since(sent);
    println!("notify wake-up latency: {latency:?}");
    assert!(latency < Duration::from_secs(5), "{latency:?}");
}

/// A writer that never notifies (as if every notification were lost): subscribers
/// still get every event, by polling.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_notifications_are_covered_by_polling() {
    let Some(url) = common::url() else { return };
    let _serial = common::FEED_LOCK.lock().await;
    let schemas = common::Schemas::new(&url);
    let reader = common::store_with(&url, &schemas, |b| b).await;
    let silent = common::other_process(&url, reader.schema(), |b| b.announce(false)).await;

    // With a long poll interval, nothing wakes the subscriber: the notification is
    // really missing...
    let mut slow = Subscription::new(
        reader.clone(),
        SubscriptionOptions::all().poll_interval(Duration::from_secs(60)),
    );
    assert!(slow.try_next().await.unwrap().is_none());
    wait_for("the listener", async || listeners(&reader).await == 1).await;
    let slow_task = tokio::spawn(async move { slow.next().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let first = silent
        .append(&sid("Silent-1"), ExpectedVersion::Any, vec![ev("E", 0)])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(!slow_task.is_finished(), "no notification was sent");
    slow_task.abort();

    // ...and a subscriber that polls gets every event anyway.
    let mut polling = Subscription::new(
        reader.clone(),
        SubscriptionOptions::all().poll_interval(Duration::from_millis(200)),
    );
    assert_eq!(polling.next().await.unwrap(), first.events[0]);
    let mut expected = Vec::new();
    let writer = {
        let silent = silent.clone();
        tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 1..=5u64 {
                tokio::time::sleep(Duration::from_millis(30)).await;
                out.extend(
                    silent
                        .append(&sid("Silent-1"), ExpectedVersion::Any, vec![ev("E", i)])
                        .await
                        .unwrap()
                        .events,
                );
            }
            out
        })
    };
    let mut got = Vec::new();
    while got.len() < 5 {
        got.push(
            tokio::time::timeout(Duration::from_secs(10), polling.next())
                .await
                .expect("polling delivers")
                .unwrap(),
        );
    }
    expected.extend(writer.await.unwrap());
    assert_eq!(got, expected);

    // The listener's connection is killed: it reconnects and subscribers carry on.
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE query LIKE 'LISTEN \"' || $1 || '\"%') t",
    )
    .bind(reader.schema().channel())
    .fetch_one(reader.pool())
    .await
    .unwrap();
    assert_eq!(killed, 1);
    let loud = common::other_process(&url, reader.schema(), |b| b).await;
    let mut live = Subscription::new(
        reader.clone(),
        SubscriptionOptions::all()
            .after(expected.last().unwrap().position)
            .poll_interval(Duration::from_secs(60)),
    );
    wait_for("the listener to reconnect", async || {
        listeners(&reader).await == 1
    })
    .await;
    let task = tokio::spawn(async move { live.next().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let last = loud
        .append(&sid("Silent-1"), ExpectedVersion::Any, vec![ev("E", 9)])
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("woken after the reconnect")
        .unwrap()
        .unwrap();
    assert_eq!(got, last.events[0]);
}

/// The background connections (LISTEN, NOTIFY) close when the last handle is dropped,
/// and when the cancellation token fires.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn background_tasks_stop_with_the_store() {
    let Some(url) = common::url() else { return };
    let _serial = common::FEED_LOCK.lock().await;
    let schemas = common::Schemas::new(&url);
    let probe = common::store_with(&url, &schemas, |b| b.listen(false)).await;
    let app = format!("wakeups-{}", probe.schema());
    let wakeup_conns = {
        let probe = probe.clone();
        let app = app.clone();
        move || {
            let probe = probe.clone();
            let app = app.clone();
            async move {
                sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                )
                .bind(format!("{app} (wake-ups)"))
                .fetch_one(probe.pool())
                .await
                .unwrap()
            }
        }
    };

    // Dropping the last handle.
    let store = common::other_process(&url, probe.schema(), |b| b.application_name(&app)).await;
    let _signal = store.feed_signal();
    store
        .append(&sid("Bg-1"), ExpectedVersion::Any, vec![ev("E", 0)])
        .await
        .unwrap();
    let clone = store.clone();
    wait_for("listener and announcer", async || wakeup_conns().await == 2).await;
    drop(store);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(wakeup_conns().await, 2, "a clone still holds the store");
    drop(clone);
    wait_for("the tasks to stop", async || wakeup_conns().await == 0).await;

    // Cancelling the token (the store itself stays usable).
    let token = CancellationToken::new();
    let store = common::other_process(&url, probe.schema(), |b| {
        b.application_name(&app).cancellation_token(token.clone())
    })
    .await;
    let _signal = store.feed_signal();
    store
        .append(&sid("Bg-1"), ExpectedVersion::Any, vec![ev("E", 1)])
        .await
        .unwrap();
    wait_for("listener and announcer", async || wakeup_conns().await == 2).await;
    token.cancel();
    wait_for("the tasks to stop", async || wakeup_conns().await == 0).await;
    assert_eq!(store.stream_version(&sid("Bg-1")).await.unwrap(), 2);
}
