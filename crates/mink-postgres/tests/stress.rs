//! The feed under stress: 16 writers append at least 20,000 events, sleeping for random
//! times inside their open transactions (half of them after a write of their own, so
//! that they hold older transaction ids than later writers of the same streams), and
//! some roll back; 2 subscribers read
//! throughout. Each subscriber must see every committed event exactly once, in feed
//! order, and no rolled-back event.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use mink_es::prelude::*;
use mink_es::{
    EventId, ExpectedVersion, FeedFilter, NewEvent, Position, StoredEvent, StreamId, Subscription,
    SubscriptionOptions,
};
use mink_postgres::PgEventStore;
use mink_postgres::sqlx;
use rand::Rng;

const WRITERS: u64 = 16;
const TARGET_COMMITTED: usize = 20_000;

#[derive(Default)]
struct WriterLog {
    committed: Vec<EventId>,
    rolled_back: Vec<EventId>,
    committed_txs: usize,
    rolled_back_txs: usize,
}

async fn writer(store: PgEventStore, w: u64) -> WriterLog {
    let quota = TARGET_COMMITTED.div_ceil(WRITERS as usize);
    let mut log = WriterLog::default();
    let mut k = 0u64;
    while log.committed.len() < quota {
        k += 1;
        let (n, sleep_ms, roll_back, autocommit, own_write_first) = {
            let mut rng = rand::rng();
            (
                rng.random_range(1..=24usize),
                rng.random_range(0..12u64),
                rng.random_bool(0.15),
                rng.random_bool(0.2),
                rng.random_bool(0.5),
            )
        };
        // Streams shared by pairs of writers, so that appends also contend on rows.
        let stream = StreamId::new(format!("Stress-{}-{}", w / 2, k % 4)).unwrap();
        let batch: Vec<NewEvent> = (0..n)
            .map(|i| {
                NewEvent::json("Stressed", &serde_json::json!({ "w": w, "k": k, "i": i })).unwrap()
            })
            .collect();
        let ids: Vec<EventId> = batch.iter().map(|e| e.id).collect();
        if autocommit {
            store
                .append(&stream, ExpectedVersion::Any, batch)
                .await
                .unwrap();
            log.committed.extend(ids);
            log.committed_txs += 1;
            continue;
        }
        let mut tx = store.begin().await.unwrap();
        if own_write_first {
            // The application writes first: the transaction takes its id now, and other
            // writers of the stream may append and commit before it does.
            sqlx::query("SELECT pg_current_xact_id()")
                .execute(&mut *tx)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(sleep_ms / 2)).await;
        }
        store
            .append_in(&mut tx, &stream, ExpectedVersion::Any, batch)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
        if roll_back {
            tx.rollback().await.unwrap();
            log.rolled_back.extend(ids);
            log.rolled_back_txs += 1;
        } else {
            tx.commit().await.unwrap();
            log.committed.extend(ids);
            log.committed_txs += 1;
        }
    }
    log
}

async fn subscriber(
    store: PgEventStore,
    batch: usize,
    mut target: tokio::sync::watch::Receiver<Option<usize>>,
) -> (Vec<StoredEvent>, Option<StoredEvent>) {
    let mut sub = Subscription::new(
        store,
        SubscriptionOptions::all()
            .batch_size(batch)
            .poll_interval(Duration::from_millis(100)),
    );
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut last_progress = Instant::now();
    loop {
        let target = *target.borrow_and_update();
        if let Some(t) = target {
            // Done when everything arrived, or (a skip) when nothing more arrives.
            if seen.len() >= t || last_progress.elapsed() > Duration::from_secs(10) {
                break;
            }
        }
        if Instant::now() > deadline {
            break;
        }
        // `next_batch` is cancel-safe: a timed-out call loses nothing.
        if let Ok(b) = tokio::time::timeout(Duration::from_millis(250), sub.next_batch()).await {
            seen.extend(b.unwrap());
            last_progress = Instant::now();
        }
    }
    // Nothing beyond the committed events.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let extra = sub.try_next().await.unwrap();
    (seen, extra)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_writers_two_subscribers_nothing_skipped_nothing_duplicated() {
    let Some(url) = common::url() else { return };
    let _serial = common::FEED_LOCK.lock().await;
    let schemas = common::Schemas::new(&url);
    let store = common::store_with(&url, &schemas, |b| b.max_connections(20)).await;
    // The second subscriber reads through another pool and listener, as another
    // process would.
    let other = common::other_process(&url, store.schema(), |b| b.max_connections(4)).await;

    let (target_tx, target_rx) = tokio::sync::watch::channel(None);
    let subs = [
        tokio::spawn(subscriber(store.clone(), 100, target_rx.clone())),
        tokio::spawn(subscriber(other.clone(), 37, target_rx)),
    ];
    let started = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(writer(store.clone(), w)))
        .collect();
    let mut committed: Vec<EventId> = Vec::new();
    let mut rolled_back: HashSet<EventId> = HashSet::new();
    let (mut committed_txs, mut rolled_back_txs) = (0, 0);
    for w in writers {
        let log = w.await.unwrap();
        committed.extend(log.committed);
        rolled_back.extend(log.rolled_back);
        committed_txs += log.committed_txs;
        rolled_back_txs += log.rolled_back_txs;
    }
    let write_time = started.elapsed();
    target_tx.send(Some(committed.len())).unwrap();
    let committed_set: HashSet<EventId> = committed.iter().copied().collect();
    assert_eq!(committed_set.len(), committed.len());
    assert!(committed.len() >= TARGET_COMMITTED);
    assert!(rolled_back_txs > 0, "some transactions rolled back");

    // The whole feed, read afterwards, is the reference order.
    let mut feed = Vec::new();
    let mut after = Position::START;
    loop {
        let page = store
            .read_feed(after, 1000, &FeedFilter::all())
            .await
            .unwrap();
        let n = page.events.len();
        feed.extend(page.events);
        after = page.next;
        if n < 1000 {
            break;
        }
    }
    assert_eq!(feed.len(), committed.len());
    assert_eq!(
        feed.iter().map(|e| e.id).collect::<HashSet<_>>(),
        committed_set
    );

    println!(
        "stress: writers={WRITERS} transactions: committed={committed_txs} rolled_back={rolled_back_txs}; \
         events: committed={} rolled_back={} (written in {write_time:?})",
        committed.len(),
        rolled_back.len()
    );
    for (i, s) in subs.into_iter().enumerate() {
        let (seen, extra) = s.await.unwrap();
        let ids: HashSet<EventId> = seen.iter().map(|e| e.id).collect();
        let duplicated = seen.len() - ids.len();
        let skipped = committed_set.difference(&ids).count();
        let rolled_back_seen = ids.intersection(&rolled_back).count();
        let out_of_order = seen
            .windows(2)
            .filter(|w| w[0].position >= w[1].position)
            .count();
        // Per stream, versions arrive contiguous from 1.
        let mut versions: HashMap<&StreamId, u64> = HashMap::new();
        let mut version_gaps = 0;
        for e in &seen {
            let v = versions.entry(&e.stream_id).or_insert(0);
            if e.version != *v + 1 {
                version_gaps += 1;
            }
            *v = e.version;
        }
        println!(
            "stress: subscriber {} committed={} delivered={} skipped={skipped} duplicated={duplicated} \
             out_of_order={out_of_order} rolled_back_delivered={rolled_back_seen} version_gaps={version_gaps}",
            i + 1,
            committed.len(),
            seen.len()
        );
        assert!(extra.is_none(), "an extra event: {extra:?}");
        assert_eq!(skipped, 0);
        assert_eq!(duplicated, 0);
        assert_eq!(rolled_back_seen, 0);
        assert_eq!(out_of_order, 0);
        assert_eq!(version_gaps, 0);
        assert_eq!(seen.len(), committed.len());
        assert!(
            seen == feed,
            "subscriber {} saw the feed, in its order",
            i + 1
        );
    }
}
