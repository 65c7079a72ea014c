//! The conformance suite: every store must pass all of it.
//!
//! Each test is a public async function taking a [`StoreFactory`]; the
//! [`conformance_tests!`](crate::conformance_tests) macro turns the whole list into
//! `#[tokio::test]`s, so an adapter crate wires the suite with one line:
//!
//! ```ignore
//! // in an adapter crate's tests/conformance.rs
//! struct MyFactory;
//! impl mink_testing::StoreFactory for MyFactory { /* … */ }
//! mink_testing::conformance_tests!(async { Some(MyFactory) });
//! ```
//!
//! The suite covers DESIGN.md's invariants 1 (atomic appends, contiguous versions),
//! 2 (exact expected versions under concurrency), 3 (a feed that never skips, read and
//! resumed at every boundary), 8 (no event vanishes during replay) and 9 (bad input is
//! a typed error that writes nothing).

use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::time::Duration;

use mink_es::prelude::*;
use mink_es::{
    Aggregate, CheckpointStore, Error, EventId, EventStore, ExpectedVersion, FeedFilter, Metadata,
    NewEvent, Position, ReplayMode, Repository, Snapshot, SnapshotPolicy, SnapshotStore,
    StoredEvent, StreamId, Subscription, SubscriptionOptions,
};
use serde::{Deserialize, Serialize};

/// Makes fresh, isolated stores for the suite, and reaches behind them to simulate
/// corruption.
pub trait StoreFactory: Send + Sync + 'static {
    /// The store under test.
    type Store: EventStore + SnapshotStore + CheckpointStore;

    /// A new, empty store that shares nothing with the stores made before.
    fn create(&self) -> impl Future<Output = Self::Store> + Send;

    /// Overwrites the stored payload of the event at `version` in `stream` with
    /// `payload`, bypassing the store's API (as disk corruption or a manual edit would).
    fn corrupt_payload(
        &self,
        store: &Self::Store,
        stream: &StreamId,
        version: u64,
        payload: Vec<u8>,
    ) -> impl Future<Output = ()> + Send;
}

/// Generates one `#[tokio::test]` per conformance test.
///
/// The argument is an expression evaluating to a future of `Option<F>` where
/// `F: StoreFactory`; `None` skips every test (for a server that is not configured:
/// see [`crate::services::service_url`]).
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::conformance_tests!(@tests $factory;
            expected_version_matrix,
            append_returns_what_is_stored,
            append_is_atomic,
            concurrent_any_appends_to_new_stream,
            concurrent_no_stream_appends,
            concurrent_exact_appends,
            stale_exact_reports_actual_version,
            idempotent_append,
            read_stream_ranges,
            feed_reads_in_order,
            filtered_feed_reads,
            subscription_resume_at_every_batch_boundary,
            subscription_catches_up_then_goes_live,
            subscriber_sees_concurrent_appends_exactly_once,
            stream_and_category_subscriptions,
            snapshot_round_trip,
            repository_loads_from_snapshot_and_tail,
            checkpoint_round_trip,
            bad_inputs_write_nothing,
            corrupt_payload_names_the_event,
            unknown_event_types_strict_and_lenient,
            metadata_round_trip,
            long_and_unicode_stream_ids,
            large_batch,
        );
        $crate::conformance_tests!(@evolution $factory;
            codecs_mix_in_one_store,
            schema_versions_are_stamped,
            upcasting_looks_the_same_on_every_read_path,
            unreadable_payloads_are_typed_errors,
        );
    };
    (@evolution $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                if let Some(f) = $factory.await {
                    $crate::evolution::$name(&f).await;
                }
            }
        )*
    };
    (@tests $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                if let Some(f) = $factory.await {
                    $crate::conformance::$name(&f).await;
                }
            }
        )*
    };
}

// ---------------------------------------------------------------------------
// Helpers.

const WAIT: Duration = Duration::from_secs(20);

fn sid(s: &str) -> StreamId {
    StreamId::new(s).unwrap()
}

fn ev(event_type: &'static str, n: u64) -> NewEvent {
    NewEvent::json(event_type, &serde_json::json!({ "n": n })).unwrap()
}

fn evs(event_type: &'static str, range: std::ops::Range<u64>) -> Vec<NewEvent> {
    range.map(|n| ev(event_type, n)).collect()
}

async fn all_events<S: EventStore>(store: &S) -> Vec<StoredEvent> {
    let mut out = Vec::new();
    let mut after = Position::START;
    loop {
        let page = store
            .read_feed(after, 1000, &FeedFilter::all())
            .await
            .unwrap();
        let done = page.events.len() < 1000;
        out.extend(page.events);
        after = page.next;
        if done {
            return out;
        }
    }
}

async fn count<S: EventStore>(store: &S) -> usize {
    all_events(store).await.len()
}

async fn version<S: EventStore>(store: &S, stream: &StreamId) -> u64 {
    store.stream_version(stream).await.unwrap()
}

fn assert_conflict(err: Error, stream: &StreamId, expected: ExpectedVersion, actual: u64) {
    match err {
        Error::Conflict {
            stream: s,
            expected: e,
            actual: a,
        } => {
            assert_eq!(&s, stream, "conflict names the stream");
            assert_eq!(e, expected, "conflict carries the expectation");
            assert_eq!(a, actual, "conflict carries the actual version");
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
}

async fn next<S: EventStore>(sub: &mut Subscription<S>) -> StoredEvent {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("subscription delivered nothing within 20 s")
        .unwrap()
}

fn sub_opts(opts: SubscriptionOptions) -> SubscriptionOptions {
    opts.poll_interval(Duration::from_millis(50))
}

/// The aggregate the suite replays.
#[derive(Default, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    /// Sum of every `Added`.
    pub total: u64,
    /// Number of events applied.
    pub applied: u64,
}

/// Events of [`Tally`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TallyEvent {
    /// Adds to the total.
    #[serde(rename = "TallyAdded")]
    Added {
        /// How much.
        n: u64,
    },
    /// Resets the total.
    #[serde(rename = "TallyReset")]
    Reset,
}

impl Aggregate for Tally {
    const TYPE: &'static str = "Tally";
    type Event = TallyEvent;
    fn apply(&mut self, event: &TallyEvent) {
        self.applied += 1;
        match event {
            TallyEvent::Added { n } => self.total += n,
            TallyEvent::Reset => self.total = 0,
        }
    }
}

// ---------------------------------------------------------------------------
// Appending and expected versions (invariants 1 and 2).

/// Every expectation against a missing stream, a stream at 1 and a stream at 3; a
/// refused append writes nothing and reports the actual version.
pub async fn expected_version_matrix<F: StoreFactory>(f: &F) {
    use ExpectedVersion::*;
    // (expectation, stream version before, accepted)
    let cases = [
        (Any, 0, true),
        (Any, 1, true),
        (Any, 3, true),
        (NoStream, 0, true),
        (NoStream, 1, false),
        (NoStream, 3, false),
        (StreamExists, 0, false),
        (StreamExists, 1, true),
        (StreamExists, 3, true),
        (Exact(0), 0, true),
        (Exact(0), 1, false),
        (Exact(1), 0, false),
        (Exact(1), 1, true),
        (Exact(1), 3, false),
        (Exact(3), 3, true),
        (Exact(2), 3, false),
        (Exact(4), 3, false),
    ];
    let store = f.create().await;
    for (i, (expected, before, accepted)) in cases.into_iter().enumerate() {
        let stream = sid(&format!("Matrix-{i}"));
        if before > 0 {
            store
                .append(&stream, NoStream, evs("Seed", 0..before))
                .await
                .unwrap();
        }
        let total_before = count(&store).await;
        let res = store.append(&stream, expected, vec![ev("Try", 0)]).await;
        if accepted {
            let res = res.unwrap_or_else(|e| panic!("{expected:?} at {before}: {e}"));
            assert_eq!(res.version, before + 1, "{expected:?} at {before}");
            assert_eq!(res.events[0].version, before + 1);
            assert!(!res.deduplicated);
            assert_eq!(count(&store).await, total_before + 1);
        } else {
            let err = res.expect_err(&format!("{expected:?} at {before} must be refused"));
            assert_conflict(err, &stream, expected, before);
            assert_eq!(
                version(&store, &stream).await,
                before,
                "refusal wrote nothing"
            );
            assert_eq!(count(&store).await, total_before, "refusal wrote nothing");
        }
    }
}

/// The append returns the stored events, identical to what reads return.
pub async fn append_returns_what_is_stored<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    let a = sid("Order-1");
    let b = sid("Order-2");
    let first = store
        .append(&a, ExpectedVersion::NoStream, evs("Placed", 0..3))
        .await
        .unwrap();
    let inputs = vec![
        ev("Placed", 9)
            .with_schema_version(3)
            .with_metadata(Metadata::default().with_user_id("u")),
    ];
    let second = store
        .append(&b, ExpectedVersion::Any, inputs.clone())
        .await
        .unwrap();
    let third = store
        .append(&a, ExpectedVersion::Exact(3), evs("Paid", 0..2))
        .await
        .unwrap();

    assert_eq!(
        first.events.iter().map(|e| e.version).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(first.version, 3);
    assert_eq!(third.version, 5);
    assert_eq!(
        third.events.iter().map(|e| e.version).collect::<Vec<_>>(),
        [4, 5]
    );
    let s = &second.events[0];
    assert_eq!(s.id, inputs[0].id);
    assert_eq!(s.stream_id, b);
    assert_eq!(s.event_type, "Placed");
    assert_eq!(s.schema_version, 3);
    assert_eq!(s.codec, inputs[0].codec);
    assert_eq!(s.payload, inputs[0].payload);
    assert_eq!(s.metadata, inputs[0].metadata);

    let returned: Vec<StoredEvent> = [first, second, third]
        .into_iter()
        .flat_map(|r| r.events)
        .collect();
    let positions: Vec<Position> = returned.iter().map(|e| e.position).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "positions increase in append order: {positions:?}"
    );
    let feed = all_events(&store).await;
    assert_eq!(
        feed, returned,
        "the feed holds exactly what appends returned"
    );
    let read_a = store.read_stream(&a, 1, usize::MAX).await.unwrap();
    assert_eq!(read_a.len(), 5);
    assert_eq!(
        read_a,
        feed.iter()
            .filter(|e| e.stream_id == a)
            .cloned()
            .collect::<Vec<_>>()
    );
    let info = store.stream_info(&a).await.unwrap().unwrap();
    assert_eq!(info.version, 5);
    assert_eq!(info.created_at, read_a[0].recorded_at);
    assert_eq!(info.updated_at, read_a[4].recorded_at);
    assert!(
        store
            .stream_info(&sid("Order-404"))
            .await
            .unwrap()
            .is_none()
    );
}

/// A batch is stored entirely or not at all, even when the failure is found at its
/// last event.
pub async fn append_is_atomic<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    let taken = store
        .append(&sid("Other-1"), ExpectedVersion::Any, vec![ev("E", 0)])
        .await
        .unwrap();
    let stream = sid("Atomic-1");
    store
        .append(&stream, ExpectedVersion::Any, evs("E", 0..2))
        .await
        .unwrap();

    // A middle event, then the last one, reuses an id stored in another stream: the
    // error names that id and where it is stored, not an event of the refused batch.
    for at in [2usize, 4] {
        let mut batch = evs("E", 0..5);
        batch[at].id = taken.events[0].id;
        let err = store
            .append(&stream, ExpectedVersion::Any, batch)
            .await
            .unwrap_err();
        match err {
            Error::DuplicateEventId {
                event_id,
                stream: s,
                existing_stream,
                existing_version,
            } => {
                assert_eq!(event_id, taken.events[0].id);
                assert_eq!(s, stream);
                assert_eq!(existing_stream, sid("Other-1"));
                assert_eq!(existing_version, 1);
            }
            other => panic!("expected DuplicateEventId, got {other:?}"),
        }
    }
    // The last event has an invalid type name.
    let mut batch = evs("E", 0..5);
    batch[4] = NewEvent::new("has space", "{}");
    let err = store
        .append(&stream, ExpectedVersion::Any, batch)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidEventType { .. }), "got {err:?}");

    assert_eq!(version(&store, &stream).await, 2);
    assert_eq!(count(&store).await, 3);
    let read = store.read_stream(&stream, 1, usize::MAX).await.unwrap();
    assert_eq!(
        read.iter().map(|e| e.version).collect::<Vec<_>>(),
        [1, 2],
        "versions stay contiguous"
    );
}

/// 20 concurrent `Any` appends to one new stream: all succeed, versions 1..=20.
pub async fn concurrent_any_appends_to_new_stream<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    let stream = sid("Race-any");
    let tasks: Vec<_> = (0..20u64)
        .map(|i| {
            let store = store.clone();
            let stream = stream.clone();
            tokio::spawn(async move {
                store
                    .append(&stream, ExpectedVersion::Any, vec![ev("E", i)])
                    .await
            })
        })
        .collect();
    let mut ids = HashSet::new();
    for t in tasks {
        let res = t.await.unwrap().expect("Any must never fail spuriously");
        ids.insert(res.events[0].id);
    }
    let read = store.read_stream(&stream, 1, usize::MAX).await.unwrap();
    assert_eq!(
        read.iter().map(|e| e.version).collect::<Vec<_>>(),
        (1..=20).collect::<Vec<_>>()
    );
    assert_eq!(
        read.iter().map(|e| e.id).collect::<HashSet<_>>(),
        ids,
        "nothing lost"
    );
}

/// 20 concurrent `NoStream` appends: exactly one winner, 19 typed conflicts.
pub async fn concurrent_no_stream_appends<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    let stream = sid("Race-new");
    let tasks: Vec<_> = (0..20u64)
        .map(|i| {
            let store = store.clone();
            let stream = stream.clone();
            tokio::spawn(async move {
                store
                    .append(
                        &stream,
                        ExpectedVersion::NoStream,
                        evs("E", i * 10..i * 10 + 2),
                    )
                    .await
            })
        })
        .collect();
    let (mut wins, mut conflicts) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => {
                wins += 1;
                assert_eq!(r.version, 2);
            }
            Err(e) => {
                conflicts += 1;
                assert_conflict(e, &stream, ExpectedVersion::NoStream, 2);
            }
        }
    }
    assert_eq!((wins, conflicts), (1, 19));
    assert_eq!(version(&store, &stream).await, 2);
    assert_eq!(count(&store).await, 2);
}

/// Writers expecting the same exact version: exactly one wins each round.
pub async fn concurrent_exact_appends<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    let stream = sid("Race-exact");
    store
        .append(&stream, ExpectedVersion::NoStream, vec![ev("E", 0)])
        .await
        .unwrap();
    for round in 1..=5u64 {
        let tasks: Vec<_> = (0..8u64)
            .map(|i| {
                let store = store.clone();
                let stream = stream.clone();
                tokio::spawn(async move {
                    store
                        .append(&stream, ExpectedVersion::Exact(round), vec![ev("E", i)])
                        .await
                })
            })
            .collect();
        let mut wins = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(r) => {
                    wins += 1;
                    assert_eq!(r.version, round + 1);
                }
                Err(e) => assert_conflict(e, &stream, ExpectedVersion::Exact(round), round + 1),
            }
        }
        assert_eq!(wins, 1, "round {round}");
    }
    assert_eq!(version(&store, &stream).await, 6);
}

/// A stale exact expectation reports the stream's actual version.
pub async fn stale_exact_reports_actual_version<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    let stream = sid("Stale-1");
    store
        .append(&stream, ExpectedVersion::Any, evs("E", 0..7))
        .await
        .unwrap();
    let err = store
        .append(&stream, ExpectedVersion::Exact(4), vec![ev("E", 9)])
        .await
        .unwrap_err();
    assert!(err.is_conflict() && err.is_retryable());
    let text = err.to_string();
    assert!(
        text.contains("Stale-1") && text.contains('4') && text.contains('7'),
        "the message names stream, expected and actual: {text}"
    );
    assert_conflict(err, &stream, ExpectedVersion::Exact(4), 7);
}

/// Repeating an append with the same ids at the same place returns the original
/// result and stores nothing; the same ids anywhere else is a typed error.
pub async fn idempotent_append<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    let stream = sid("Idem-1");
    store
        .append(&stream, ExpectedVersion::NoStream, evs("E", 0..2))
        .await
        .unwrap();
    let batch = evs("E", 10..13);
    let original = store
        .append(&stream, ExpectedVersion::Exact(2), batch.clone())
        .await
        .unwrap();
    assert!(!original.deduplicated);

    // Same ids, same place, same expectation: the original result.
    let again = store
        .append(&stream, ExpectedVersion::Exact(2), batch.clone())
        .await
        .unwrap();
    assert!(again.deduplicated);
    assert_eq!(again.events, original.events);
    assert_eq!(again.version, 5);
    // `Any` also lands at the same place; later appends do not change the answer.
    store
        .append(&stream, ExpectedVersion::Any, vec![ev("E", 99)])
        .await
        .unwrap();
    let any = store
        .append(&stream, ExpectedVersion::Any, batch.clone())
        .await
        .unwrap();
    assert!(any.deduplicated);
    assert_eq!(any.events, original.events);
    assert_eq!(count(&store).await, 6, "nothing stored twice");

    // Same ids at another place in the same stream.
    let err = store
        .append(&stream, ExpectedVersion::Exact(6), batch.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DuplicateEventId { .. }), "{err:?}");
    let err = store
        .append(&stream, ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DuplicateEventId { .. }), "{err:?}");
    // Same ids in another stream.
    let err = store
        .append(&sid("Idem-2"), ExpectedVersion::Any, batch.clone())
        .await
        .unwrap_err();
    match err {
        Error::DuplicateEventId {
            event_id,
            existing_stream,
            existing_version,
            ..
        } => {
            assert_eq!(event_id, batch[0].id);
            assert_eq!(existing_stream, stream);
            assert_eq!(existing_version, 3);
        }
        other => panic!("expected DuplicateEventId, got {other:?}"),
    }
    // A leading part of the original append, at its place, is a repeat too (as in
    // KurrentDB): it returns the stored events of those ids.
    let part = store
        .append(&stream, ExpectedVersion::Exact(2), batch[..2].to_vec())
        .await
        .unwrap();
    assert!(part.deduplicated);
    assert_eq!(part.events, original.events[..2].to_vec());
    // A superset, a reordering, a mix of new and stored ids.
    for variant in [
        {
            let mut v = batch.clone();
            v.push(ev("E", 50));
            v
        },
        vec![batch[1].clone(), batch[0].clone(), batch[2].clone()],
        vec![ev("E", 60), batch[0].clone()],
    ] {
        let err = store
            .append(&stream, ExpectedVersion::Any, variant)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::DuplicateEventId { .. }), "{err:?}");
    }
    // The same id twice in one append.
    let e = ev("E", 70);
    let err = store
        .append(&stream, ExpectedVersion::Any, vec![e.clone(), e])
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::DuplicateEventIdInAppend { .. }),
        "{err:?}"
    );
    assert_eq!(count(&store).await, 6, "no refused append wrote anything");
    assert!(
        store
            .read_stream(&sid("Idem-2"), 1, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Reading a stream from a version with a limit.
pub async fn read_stream_ranges<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    let stream = sid("Range-1");
    store
        .append(&stream, ExpectedVersion::Any, evs("E", 0..10))
        .await
        .unwrap();
    store
        .append(&sid("Range-2"), ExpectedVersion::Any, evs("E", 0..3))
        .await
        .unwrap();
    let versions = |v: Vec<StoredEvent>| v.iter().map(|e| e.version).collect::<Vec<_>>();
    assert_eq!(
        versions(store.read_stream(&stream, 1, usize::MAX).await.unwrap()),
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(
        versions(store.read_stream(&stream, 0, 3).await.unwrap()),
        [1, 2, 3]
    );
    assert_eq!(
        versions(store.read_stream(&stream, 4, 3).await.unwrap()),
        [4, 5, 6]
    );
    assert_eq!(
        versions(store.read_stream(&stream, 9, 100).await.unwrap()),
        [9, 10]
    );
    assert!(
        store
            .read_stream(&stream, 11, 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.read_stream(&stream, 1, 0).await.unwrap().is_empty());
    assert!(
        store
            .read_stream(&sid("Range-404"), 1, 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(version(&store, &stream).await, 10);
    assert_eq!(version(&store, &sid("Range-404")).await, 0);
}

/// The feed returns every event once, in position order, exclusive of `after`.
pub async fn feed_reads_in_order<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    assert_eq!(store.head_position().await.unwrap(), Position::START);
    let empty = store
        .read_feed(Position::START, 10, &FeedFilter::all())
        .await
        .unwrap();
    assert!(empty.events.is_empty());
    let mut appended = Vec::new();
    for i in 0..30u64 {
        let stream = sid(&format!("Feed-{}", i % 4));
        let r = store
            .append(&stream, ExpectedVersion::Any, evs("E", i..i + 1 + i % 3))
            .await
            .unwrap();
        appended.extend(r.events);
    }
    let feed = all_events(&store).await;
    assert_eq!(feed, appended);
    assert_eq!(
        store.head_position().await.unwrap(),
        appended.last().unwrap().position
    );
    // Pages of every size chain with no gap and no duplicate.
    for limit in [1usize, 2, 3, 7, 100] {
        let mut after = Position::START;
        let mut got = Vec::new();
        loop {
            let page = store
                .read_feed(after, limit, &FeedFilter::all())
                .await
                .unwrap();
            assert!(page.events.len() <= limit);
            if let Some(last) = page.events.last() {
                assert_eq!(
                    page.next, last.position,
                    "next is the last returned position"
                );
            }
            let n = page.events.len();
            got.extend(page.events);
            after = page.next;
            if n < limit {
                break;
            }
        }
        assert_eq!(got, appended, "limit {limit}");
    }
    // `after` is exclusive.
    let mid = appended[10].position;
    let page = store.read_feed(mid, 5, &FeedFilter::all()).await.unwrap();
    assert_eq!(page.events, appended[11..16].to_vec());
    let tail = store
        .read_feed(appended.last().unwrap().position, 5, &FeedFilter::all())
        .await
        .unwrap();
    assert!(tail.events.is_empty());
}

/// Filters by event type, stream and category, alone and combined.
pub async fn filtered_feed_reads<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    let streams = [
        "Order-1",
        "Order-2",
        "Order-3-x",
        "Orders-1",
        "Payment-1",
        "Order",
        "Payment-Order-1",
    ];
    let mut all = Vec::new();
    for round in 0..3u64 {
        for (i, s) in streams.iter().enumerate() {
            let t = if (i as u64 + round).is_multiple_of(2) {
                "Placed"
            } else {
                "Paid"
            };
            let r = store
                .append(&sid(s), ExpectedVersion::Any, vec![ev(t, round)])
                .await
                .unwrap();
            all.extend(r.events);
        }
    }
    let check = |filter: FeedFilter, want: &dyn Fn(&StoredEvent) -> bool| {
        let expected: Vec<StoredEvent> = all.iter().filter(|e| want(e)).cloned().collect();
        (filter, expected)
    };
    let cases = vec![
        check(FeedFilter::all().category("Order"), &|e| {
            e.stream_id.category() == "Order"
        }),
        check(FeedFilter::all().event_type("Paid"), &|e| {
            e.event_type == "Paid"
        }),
        check(FeedFilter::all().stream(sid("Order-3-x")), &|e| {
            e.stream_id.as_str() == "Order-3-x"
        }),
        check(
            FeedFilter::all().category("Order").event_type("Placed"),
            &|e| e.stream_id.category() == "Order" && e.event_type == "Placed",
        ),
        check(
            FeedFilter::all().category("Orders").category("Payment"),
            &|e| matches!(e.stream_id.category(), "Orders" | "Payment"),
        ),
        check(
            FeedFilter::all()
                .stream(sid("Order-1"))
                .stream(sid("Payment-1"))
                .event_type("Paid")
                .event_type("Placed"),
            &|e| matches!(e.stream_id.as_str(), "Order-1" | "Payment-1"),
        ),
        check(FeedFilter::all().category("Nope"), &|_| false),
        check(FeedFilter::all().event_type("Nope"), &|_| false),
    ];
    let head = store.head_position().await.unwrap();
    for (filter, expected) in cases {
        for limit in [1usize, 2, 5, 1000] {
            let mut after = Position::START;
            let mut got = Vec::new();
            loop {
                let page = store.read_feed(after, limit, &filter).await.unwrap();
                assert!(
                    page.events.iter().all(|e| filter.matches(e)),
                    "{filter:?} returned a non-matching event"
                );
                assert!(page.next >= after, "next never goes backwards");
                let n = page.events.len();
                got.extend(page.events);
                after = page.next;
                if n < limit {
                    break;
                }
            }
            assert_eq!(got, expected, "{filter:?} limit {limit}");
            assert_eq!(
                after, head,
                "a filtered read that finishes has scanned up to the head ({filter:?})"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Subscriptions (invariant 3).

/// A subscription stopped at any batch boundary and resumed from its checkpoint
/// delivers exactly the remaining events: no gap, no duplicate.
pub async fn subscription_resume_at_every_batch_boundary<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    let mut appended = Vec::new();
    for i in 0..24u64 {
        let stream = sid(&format!(
            "{}-{}",
            if i.is_multiple_of(3) { "Cart" } else { "Order" },
            i % 5
        ));
        appended.extend(
            store
                .append(&stream, ExpectedVersion::Any, vec![ev("E", i)])
                .await
                .unwrap()
                .events,
        );
    }
    let orders: Vec<StoredEvent> = appended
        .iter()
        .filter(|e| e.category() == "Order")
        .cloned()
        .collect();
    for (opts, expected) in [
        (SubscriptionOptions::all(), &appended),
        (SubscriptionOptions::category("Order"), &orders),
    ] {
        for batch in [1usize, 2, 3, 5, 7] {
            let opts = sub_opts(opts.clone().batch_size(batch));
            // Stop after k events, for every k, and resume.
            for k in 0..=expected.len() {
                let mut sub = Subscription::new(store.clone(), opts.clone());
                let mut got = Vec::new();
                for _ in 0..k {
                    got.push(next(&mut sub).await);
                }
                let mut resumed =
                    Subscription::new(store.clone(), opts.clone().after(sub.checkpoint()));
                while got.len() < expected.len() {
                    got.push(next(&mut resumed).await);
                }
                assert_eq!(&got, expected, "batch {batch}, stopped after {k}");
                let extra = resumed.try_next().await.unwrap();
                assert!(extra.is_none(), "nothing beyond the end: {extra:?}");
            }
            // Stop at every batch boundary of next_batch.
            let mut sub = Subscription::new(store.clone(), opts.clone());
            let mut got = Vec::new();
            while got.len() < expected.len() {
                let b = tokio::time::timeout(WAIT, sub.next_batch())
                    .await
                    .unwrap()
                    .unwrap();
                assert!(!b.is_empty() && b.len() <= batch);
                got.extend(b);
                let mut resumed =
                    Subscription::new(store.clone(), opts.clone().after(sub.checkpoint()));
                let mut rest = got.clone();
                while rest.len() < expected.len() {
                    rest.push(next(&mut resumed).await);
                }
                assert_eq!(&rest, expected, "batch {batch} boundary at {}", got.len());
            }
        }
    }
}

/// A subscription delivers history, then events appended after it caught up.
pub async fn subscription_catches_up_then_goes_live<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    let stream = sid("Live-1");
    store
        .append(&stream, ExpectedVersion::Any, evs("Old", 0..5))
        .await
        .unwrap();
    let mut sub = Subscription::new(
        store.clone(),
        sub_opts(SubscriptionOptions::all().batch_size(2)),
    );
    for v in 1..=5 {
        assert_eq!(next(&mut sub).await.version, v);
    }
    assert!(sub.try_next().await.unwrap().is_none());
    assert!(sub.is_caught_up());
    let writer = {
        let store = store.clone();
        let stream = stream.clone();
        tokio::spawn(async move {
            for i in 0..5u64 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                store
                    .append(&stream, ExpectedVersion::Any, vec![ev("New", i)])
                    .await
                    .unwrap();
            }
        })
    };
    for v in 6..=10 {
        let e = next(&mut sub).await;
        assert_eq!((e.version, e.event_type.as_str()), (v, "New"));
    }
    writer.await.unwrap();
}

/// A subscriber reading while 8 writers append sees every event exactly once, in order.
pub async fn subscriber_sees_concurrent_appends_exactly_once<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    let writers: Vec<_> = (0..8u64)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let stream = sid(&format!("Conc-{w}"));
                let mut ids = Vec::new();
                for i in 0..40u64 {
                    let batch = evs("E", i..i + 1 + (i % 3));
                    ids.extend(batch.iter().map(|e| e.id));
                    store
                        .append(&stream, ExpectedVersion::Any, batch)
                        .await
                        .unwrap();
                    if i.is_multiple_of(8) {
                        tokio::task::yield_now().await;
                    }
                }
                ids
            })
        })
        .collect();
    let mut sub = Subscription::new(
        store.clone(),
        sub_opts(SubscriptionOptions::all().batch_size(16)),
    );
    let mut written = HashSet::new();
    for w in writers {
        written.extend(w.await.unwrap());
    }
    let mut seen = Vec::new();
    while seen.len() < written.len() {
        seen.push(next(&mut sub).await);
    }
    assert!(sub.try_next().await.unwrap().is_none(), "no extra events");
    let ids: HashSet<EventId> = seen.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), seen.len(), "no duplicates");
    assert_eq!(ids, written, "every written event delivered");
    assert!(
        seen.windows(2).all(|w| w[0].position < w[1].position),
        "delivered in feed order"
    );
    for w in 0..8u64 {
        let stream = sid(&format!("Conc-{w}"));
        let versions: Vec<u64> = seen
            .iter()
            .filter(|e| e.stream_id == stream)
            .map(|e| e.version)
            .collect();
        assert_eq!(versions, (1..=versions.len() as u64).collect::<Vec<_>>());
    }
    assert_eq!(
        all_events(&store).await,
        seen,
        "the subscriber saw the feed"
    );
}

/// Stream and category subscriptions deliver only their events, also live.
pub async fn stream_and_category_subscriptions<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    let a = sid("Order-7");
    store
        .append(&a, ExpectedVersion::Any, evs("E", 0..3))
        .await
        .unwrap();
    store
        .append(&sid("Order-8"), ExpectedVersion::Any, evs("E", 0..2))
        .await
        .unwrap();
    store
        .append(&sid("Invoice-7"), ExpectedVersion::Any, evs("E", 0..2))
        .await
        .unwrap();
    let mut by_stream = Subscription::new(
        store.clone(),
        sub_opts(SubscriptionOptions::stream(a.clone())),
    );
    let mut by_cat = Subscription::new(
        store.clone(),
        sub_opts(SubscriptionOptions::category("Order")),
    );
    for v in 1..=3 {
        let e = next(&mut by_stream).await;
        assert_eq!((e.stream_id.clone(), e.version), (a.clone(), v));
    }
    let mut cat = Vec::new();
    for _ in 0..5 {
        cat.push(next(&mut by_cat).await);
    }
    assert!(cat.iter().all(|e| e.category() == "Order"));
    store
        .append(&sid("Invoice-9"), ExpectedVersion::Any, vec![ev("E", 0)])
        .await
        .unwrap();
    store
        .append(&a, ExpectedVersion::Any, vec![ev("Late", 0)])
        .await
        .unwrap();
    let e = next(&mut by_stream).await;
    assert_eq!((e.version, e.event_type.as_str()), (4, "Late"));
    let e = next(&mut by_cat).await;
    assert_eq!(
        (e.stream_id.as_str(), e.event_type.as_str()),
        ("Order-7", "Late")
    );
    assert!(by_cat.try_next().await.unwrap().is_none());
    assert!(by_stream.try_next().await.unwrap().is_none());
}

// ---------------------------------------------------------------------------
// Snapshots and checkpoints.

fn snapshot(stream: &StreamId, version: u64, payload: &str) -> Snapshot {
    Snapshot {
        stream_id: stream.clone(),
        aggregate_type: "Tally".into(),
        version,
        schema_version: 1,
        codec: mink_es::CodecTag::JSON,
        payload: bytes::Bytes::copy_from_slice(payload.as_bytes()),
        taken_at: mink_es::now_micros(),
    }
}

/// Snapshots save, load, replace (never with an older one) and delete.
pub async fn snapshot_round_trip<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    let a = sid("Tally-a");
    let b = sid("Tally-b");
    assert!(store.load_snapshot(&a).await.unwrap().is_none());
    let s5 = snapshot(&a, 5, r#"{"total":5,"applied":5}"#);
    store.save_snapshot(s5.clone()).await.unwrap();
    assert_eq!(store.load_snapshot(&a).await.unwrap(), Some(s5.clone()));
    assert!(
        store.load_snapshot(&b).await.unwrap().is_none(),
        "per stream"
    );
    let s9 = snapshot(&a, 9, r#"{"total":9,"applied":9}"#);
    store.save_snapshot(s9.clone()).await.unwrap();
    assert_eq!(store.load_snapshot(&a).await.unwrap(), Some(s9.clone()));
    store.save_snapshot(s5).await.unwrap();
    assert_eq!(
        store.load_snapshot(&a).await.unwrap(),
        Some(s9),
        "an older snapshot never replaces a newer one"
    );
    store.delete_snapshot(&a).await.unwrap();
    assert!(store.load_snapshot(&a).await.unwrap().is_none());
    store.delete_snapshot(&a).await.unwrap();
}

/// The repository loads from the latest snapshot and replays only the events after
/// it; a snapshot of another state shape is ignored.
pub async fn repository_loads_from_snapshot_and_tail<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    let repo = Repository::<Tally, _>::new(store.clone())
        .with_snapshots(store.clone(), SnapshotPolicy::every(4));
    let mut t = repo.load("t1").await.unwrap();
    assert!(t.is_new());
    for n in 1..=6u64 {
        t.record(TallyEvent::Added { n });
        repo.save(&mut t).await.unwrap();
    }
    let stream = repo.stream_id("t1").unwrap();
    let snap = store
        .load_snapshot(&stream)
        .await
        .unwrap()
        .expect("taken at 4");
    assert_eq!(snap.version, 4);
    assert_eq!(snap.schema_version, Tally::SNAPSHOT_VERSION);
    assert_eq!(t.snapshot_version(), 4);
    let loaded = repo.load("t1").await.unwrap();
    assert_eq!(loaded.version(), 6);
    assert_eq!(loaded.state().total, 21);

    // Prove the load used the snapshot: doctor its state; the tail (5, 6) still applies.
    store
        .save_snapshot(Snapshot {
            payload: bytes::Bytes::from_static(br#"{"total":1000,"applied":4}"#),
            ..snap.clone()
        })
        .await
        .unwrap();
    let from_snap = repo.load("t1").await.unwrap();
    assert_eq!(from_snap.state().total, 1011);
    assert_eq!(from_snap.state().applied, 6);
    assert_eq!(from_snap.version(), 6);

    // A snapshot of another shape (schema version) is ignored: full replay.
    store.delete_snapshot(&stream).await.unwrap();
    store
        .save_snapshot(Snapshot {
            schema_version: Tally::SNAPSHOT_VERSION + 1,
            payload: bytes::Bytes::from_static(br#"{"total":1000,"applied":4}"#),
            ..snap.clone()
        })
        .await
        .unwrap();
    assert_eq!(repo.load("t1").await.unwrap().state().total, 21);
    // So is an undecodable one, and one of another aggregate type.
    store.delete_snapshot(&stream).await.unwrap();
    store
        .save_snapshot(Snapshot {
            payload: bytes::Bytes::from_static(b"\xff not json"),
            ..snap.clone()
        })
        .await
        .unwrap();
    assert_eq!(repo.load("t1").await.unwrap().state().total, 21);
    store.delete_snapshot(&stream).await.unwrap();
    store
        .save_snapshot(Snapshot {
            aggregate_type: "Other".into(),
            payload: bytes::Bytes::from_static(br#"{"total":1000,"applied":4}"#),
            ..snap
        })
        .await
        .unwrap();
    assert_eq!(repo.load("t1").await.unwrap().state().total, 21);
}

/// Named checkpoints save, overwrite and load; a missing one is `None`.
pub async fn checkpoint_round_trip<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    assert_eq!(store.load_checkpoint("proj").await.unwrap(), None);
    store
        .save_checkpoint("proj", Position::new(0, 42))
        .await
        .unwrap();
    store
        .save_checkpoint("other", Position::new(7, u64::MAX >> 1))
        .await
        .unwrap();
    assert_eq!(
        store.load_checkpoint("proj").await.unwrap(),
        Some(Position::new(0, 42))
    );
    store
        .save_checkpoint("proj", Position::new(3, 1))
        .await
        .unwrap();
    assert_eq!(
        store.load_checkpoint("proj").await.unwrap(),
        Some(Position::new(3, 1))
    );
    assert_eq!(
        store.load_checkpoint("other").await.unwrap(),
        Some(Position::new(7, u64::MAX >> 1))
    );
}

// ---------------------------------------------------------------------------
// Bad input (invariant 9) and replay safety (invariant 8).

/// Each bad input gets its typed error, and nothing is written.
pub async fn bad_inputs_write_nothing<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    let stream = sid("Bad-1");
    store
        .append(&stream, ExpectedVersion::Any, vec![ev("E", 0)])
        .await
        .unwrap();
    let head = store.head_position().await.unwrap();

    // Stream ids are validated before any store sees them.
    assert!(matches!(
        StreamId::new(""),
        Err(Error::InvalidStreamId {
            reason: mink_es::StreamIdError::Empty,
            ..
        })
    ));
    assert!(matches!(
        StreamId::new("x".repeat(mink_es::MAX_STREAM_ID_LEN + 1)),
        Err(Error::InvalidStreamId {
            reason: mink_es::StreamIdError::TooLong { .. },
            ..
        })
    ));
    assert!(StreamId::new("Bad-\u{7}").is_err());

    let err = store
        .append(&stream, ExpectedVersion::Any, vec![])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::EmptyAppend { .. }), "{err:?}");

    let huge = NewEvent::new("E", vec![b'x'; 2 * 1024 * 1024]);
    let err = store
        .append(&stream, ExpectedVersion::Any, vec![ev("E", 1), huge])
        .await
        .unwrap_err();
    match err {
        Error::PayloadTooLarge { index, size, .. } => {
            assert_eq!(index, 1);
            assert!(size >= 2 * 1024 * 1024);
        }
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }

    for bad_type in ["", "with space", "tab\there", "nul\u{0}"] {
        let err = store
            .append(
                &stream,
                ExpectedVersion::Any,
                vec![NewEvent::new(bad_type.to_owned(), "{}")],
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidEventType { .. }),
            "{bad_type:?}: {err:?}"
        );
    }
    let err = store
        .append(
            &stream,
            ExpectedVersion::Any,
            vec![ev("E", 2).with_schema_version(0)],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");

    let too_many: Vec<NewEvent> = (0..10_001u64).map(|i| ev("E", i)).collect();
    let err = store
        .append(&sid("Bad-2"), ExpectedVersion::Any, too_many)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TooManyEvents { .. }), "{err:?}");

    assert_eq!(
        store.head_position().await.unwrap(),
        head,
        "nothing written"
    );
    assert_eq!(version(&store, &stream).await, 1);
    assert_eq!(version(&store, &sid("Bad-2")).await, 0);
    assert_eq!(count(&store).await, 1);
}

/// A payload corrupted behind the store's back fails the load with an error that
/// names the stream, version and type.
pub async fn corrupt_payload_names_the_event<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    let repo = Repository::<Tally, _>::new(store.clone());
    let mut t = repo.load("c1").await.unwrap();
    t.record_all([
        TallyEvent::Added { n: 1 },
        TallyEvent::Added { n: 2 },
        TallyEvent::Added { n: 3 },
    ]);
    repo.save(&mut t).await.unwrap();
    let stream = repo.stream_id("c1").unwrap();
    for bad in [
        &b"{\"n\": \"not a number\"}"[..],
        b"{truncated",
        b"\xff\xfe\x00",
    ] {
        f.corrupt_payload(&store, &stream, 2, bad.to_vec()).await;
        let err = repo.load("c1").await.unwrap_err();
        match &err {
            Error::Decode {
                stream: s,
                version,
                event_type,
                ..
            } => {
                assert_eq!(s, &stream);
                assert_eq!(*version, 2);
                assert_eq!(event_type, "TallyAdded");
            }
            other => panic!("expected Decode, got {other:?}"),
        }
        let text = err.to_string();
        assert!(
            text.contains("Tally-c1") && text.contains("TallyAdded") && text.contains("version 2"),
            "{text}"
        );
    }
    // The raw reads still work: the store itself does not hide the event.
    let raw = store.read_stream(&stream, 1, 10).await.unwrap();
    assert_eq!(raw.len(), 3);
    assert_eq!(&raw[1].payload[..], b"\xff\xfe\x00");
}

/// An unknown event type is a typed error in strict mode, and is counted (never
/// dropped silently) in lenient mode.
pub async fn unknown_event_types_strict_and_lenient<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    let stream = sid("Tally-u1");
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![
                NewEvent::json("TallyAdded", &serde_json::json!({"n": 5})).unwrap(),
                NewEvent::json("TallyMultiplied", &serde_json::json!({"by": 3})).unwrap(),
                NewEvent::json("TallyAdded", &serde_json::json!({"n": 1})).unwrap(),
                NewEvent::json("TallyMultiplied", &serde_json::json!({"by": 2})).unwrap(),
                NewEvent::json("TallyDivided", &serde_json::json!({"by": 2})).unwrap(),
            ],
        )
        .await
        .unwrap();
    let strict = Repository::<Tally, _>::new(store.clone());
    match strict.load("u1").await.unwrap_err() {
        Error::UnknownEventType {
            stream: s,
            version,
            event_type,
        } => {
            assert_eq!(
                (s, version, event_type.as_str()),
                (stream.clone(), 2, "TallyMultiplied")
            );
        }
        other => panic!("expected UnknownEventType, got {other:?}"),
    }
    let lenient = Repository::<Tally, _>::new(store.clone()).with_replay_mode(ReplayMode::Lenient);
    let t = lenient.load("u1").await.unwrap();
    assert_eq!(t.state().total, 6);
    assert_eq!(t.state().applied, 2);
    assert_eq!(t.version(), 5, "the version counts every stored event");
    let counts = lenient.unknown_event_types().counts();
    assert_eq!(counts.get("TallyMultiplied"), Some(&2));
    assert_eq!(counts.get("TallyDivided"), Some(&1));
    assert_eq!(lenient.unknown_event_types().total(), 3);
    // Saving after a lenient load expects the real version.
    let mut t = t;
    t.record(TallyEvent::Reset);
    assert_eq!(lenient.save(&mut t).await.unwrap().version, 6);
}

/// Every metadata field survives the store.
pub async fn metadata_round_trip<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    let md = Metadata::default()
        .with_correlation_id("corr-1")
        .with_causation_id("cause-1")
        .with_user_id("user-1")
        .with_tenant_id("tenant-1")
        .with_custom("ip", "127.0.0.1")
        .with_custom("quote\"d", "line\nbreak ✓");
    let stream = sid("Meta-1");
    store
        .append(
            &stream,
            ExpectedVersion::Any,
            vec![ev("E", 0).with_metadata(md.clone()), ev("E", 1)],
        )
        .await
        .unwrap();
    let read = store.read_stream(&stream, 1, 10).await.unwrap();
    assert_eq!(read[0].metadata, md);
    assert!(read[1].metadata.is_empty());
    let feed = all_events(&store).await;
    assert_eq!(feed[0].metadata, md);
}

/// Stream ids at the length limit and with non-ASCII text work end to end.
pub async fn long_and_unicode_stream_ids<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    let long = sid(&format!(
        "Long-{}",
        "x".repeat(mink_es::MAX_STREAM_ID_LEN - 5)
    ));
    let uni = sid("Ünïcode-日本-🦀");
    let like = sid("Pct%_\\-1");
    for s in [&long, &uni, &like] {
        store
            .append(s, ExpectedVersion::NoStream, evs("E", 0..2))
            .await
            .unwrap();
        assert_eq!(version(&store, s).await, 2);
        assert_eq!(store.read_stream(s, 1, 10).await.unwrap().len(), 2);
    }
    for (cat, stream) in [("Ünïcode", &uni), ("Pct%_\\", &like), ("Long", &long)] {
        let page = store
            .read_feed(Position::START, 100, &FeedFilter::all().category(cat))
            .await
            .unwrap();
        assert_eq!(page.events.len(), 2, "category {cat:?}");
        assert!(page.events.iter().all(|e| &e.stream_id == stream));
    }
    // A category whose text contains LIKE wildcards matches only itself.
    let page = store
        .read_feed(Position::START, 100, &FeedFilter::all().category("Pct__\\"))
        .await
        .unwrap();
    assert!(page.events.is_empty());
    let page = store
        .read_feed(Position::START, 100, &FeedFilter::all().category("Pct%"))
        .await
        .unwrap();
    assert!(page.events.is_empty());
}

/// A large batch is stored in one append with contiguous versions.
pub async fn large_batch<F: StoreFactory>(f: &F) {
    let store = f.create().await;
    let stream = sid("Big-1");
    let batch = evs("E", 0..2500);
    let ids: Vec<EventId> = batch.iter().map(|e| e.id).collect();
    let r = store
        .append(&stream, ExpectedVersion::NoStream, batch)
        .await
        .unwrap();
    assert_eq!(r.version, 2500);
    let read = store.read_stream(&stream, 1, usize::MAX).await.unwrap();
    assert_eq!(read.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
    let positions: BTreeSet<Position> = read.iter().map(|e| e.position).collect();
    assert_eq!(positions.len(), 2500);
}
