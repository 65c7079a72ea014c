//! The projection engine on the memory store: batches and checkpoints, error
//! classification, parking, supervision, operations, rebuilds, partitions, leases, live
//! projections and inline projections.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use mink_es::prelude::*;
use mink_es::projection::live::{LiveEvent, LiveFeed};
use mink_es::projection::memory::{Checkpointed, MemoryControl};
use mink_es::projection::ops::ProjectionOps;
use mink_es::projection::{
    AsyncOptions, InlineProjection, PoisonPolicy, Projection, ProjectionControl, ProjectionEngine,
    ProjectionError, RunState, partition_name,
};
use mink_es::{
    BoxError, Error, EventId, ExpectedVersion, FeedFilter, MemoryStore, NewEvent, Position,
    StoredEvent, StreamId,
};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

type Rule = Box<dyn FnMut(&StoredEvent) -> Option<ProjectionError> + Send>;

/// Records every event it applies; a rule decides failures; may panic once.
#[derive(Clone)]
struct Recorder {
    name: String,
    seen: Arc<Mutex<Vec<StoredEvent>>>,
    calls: Arc<Mutex<Vec<Vec<Position>>>>,
    rule: Arc<Mutex<Option<Rule>>>,
    panic_once: Arc<AtomicBool>,
}

impl Recorder {
    fn new(name: &str) -> Self {
        Recorder {
            name: name.into(),
            seen: Arc::default(),
            calls: Arc::default(),
            rule: Arc::default(),
            panic_once: Arc::default(),
        }
    }

    fn fail_when(&self, f: impl FnMut(&StoredEvent) -> Option<ProjectionError> + Send + 'static) {
        *self.rule.lock() = Some(Box::new(f));
    }

    fn heal(&self) {
        *self.rule.lock() = None;
    }

    fn ids(&self) -> Vec<EventId> {
        self.seen.lock().iter().map(|e| e.id).collect()
    }

    fn count(&self) -> usize {
        self.seen.lock().len()
    }
}

impl Projection for Recorder {
    fn name(&self) -> &str {
        &self.name
    }

    fn apply<'a>(
        &'a self,
        events: &'a [StoredEvent],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        if self.panic_once.swap(false, Ordering::SeqCst) {
            panic!("projection bug");
        }
        self.calls
            .lock()
            .push(events.iter().map(|e| e.position).collect());
        // All or nothing: check every event first.
        if let Some(rule) = self.rule.lock().as_mut() {
            for e in events {
                if let Some(err) = rule(e) {
                    return Box::pin(async move { Err(err) });
                }
            }
        }
        self.seen.lock().extend(events.iter().cloned());
        Box::pin(async { Ok(()) })
    }

    fn clear(&self) -> BoxFuture<'_, mink_es::Result<()>> {
        self.seen.lock().clear();
        Box::pin(async { Ok(()) })
    }
}

fn fast() -> AsyncOptions {
    AsyncOptions {
        batch_size: 16,
        poll_interval: Duration::from_millis(20),
        retry_budget: 3,
        base_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        poison_policy: PoisonPolicy::Park,
        lease_ttl: Duration::from_millis(600),
    }
}

async fn fill(store: &MemoryStore, streams: usize, per_stream: u64) -> Vec<StoredEvent> {
    let mut out = Vec::new();
    for v in 0..per_stream {
        for s in 0..streams {
            let r = store
                .append(
                    &StreamId::new(format!("Acc-{s}")).unwrap(),
                    ExpectedVersion::Any,
                    vec![NewEvent::json("Moved", &serde_json::json!({ "v": v })).unwrap()],
                )
                .await
                .unwrap();
            out.extend(r.events);
        }
    }
    out
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn status_of(
    control: &MemoryControl,
    name: &str,
) -> Option<mink_es::projection::ProjectionStatus> {
    control
        .statuses()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.name == name)
}

fn engine(
    store: &MemoryStore,
    control: &MemoryControl,
    owner: &str,
) -> ProjectionEngine<MemoryStore> {
    ProjectionEngine::new(store.clone(), Arc::new(control.clone())).owner(owner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn applies_every_event_once_and_resumes_from_its_checkpoint() {
    let store = MemoryStore::new();
    let control = MemoryControl::new();
    let written = fill(&store, 5, 20).await;
    let rec = Recorder::new("balances");
    let mut e = engine(&store, &control, "a");
    e.add(Checkpointed::new(rec.clone(), store.clone()), fast())
        .unwrap();
    let handle = e.start(CancellationToken::new());
    until("catch-up", || rec.count() == 100).await;
    handle.shutdown().await;
    assert_eq!(
        rec.ids(),
        written.iter().map(|e| e.id).collect::<Vec<_>>(),
        "in feed order, once"
    );
    assert!(
        rec.calls.lock().iter().all(|c| c.len() <= 16),
        "batches of at most 16"
    );
    let cp = store.load_checkpoint("balances").await.unwrap().unwrap();
    assert_eq!(cp, written.last().unwrap().position);
    assert_eq!(
        status_of(&control, "balances").await.unwrap().state,
        RunState::Stopped
    );

    // Restart: only new events are applied.
    let more = fill(&store, 2, 3).await;
    let mut e = engine(&store, &control, "a");
    e.add(Checkpointed::new(rec.clone(), store.clone()), fast())
        .unwrap();
    let handle = e.start(CancellationToken::new());
    until("the new events", || rec.count() == 106).await;
    handle.shutdown().await;
    assert_eq!(
        rec.ids()[100..],
        more.iter().map(|e| e.id).collect::<Vec<_>>()[..]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transient_errors_do_not_use_the_budget() {
    let store = MemoryStore::new();
    let control = MemoryControl::new();
    fill(&store, 1, 10).await;
    let rec = Recorder::new("flaky");
    let left = Arc::new(AtomicU32::new(12)); // far more than the budget of 3
    let l = left.clone();
    rec.fail_when(move |_| {
        (l.load(Ordering::SeqCst) > 0).then(|| {
            l.fetch_sub(1, Ordering::SeqCst);
            ProjectionError::transient("connection reset")
        })
    });
    let mut e = engine(&store, &control, "a");
    e.add(Checkpointed::new(rec.clone(), store.clone()), fast())
        .unwrap();
    let handle = e.start(CancellationToken::new());
    until("all applied", || rec.count() == 10).await;
    handle.shutdown().await;
    assert!(
        control.parked("flaky").await.unwrap().is_empty(),
        "nothing parked"
    );
    assert_eq!(left.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_event_is_parked_and_replayed() {
    let store = MemoryStore::new();
    let control = MemoryControl::new();
    let written = fill(&store, 1, 20).await;
    let bad = written[7].id;
    let rec = Recorder::new("strict");
    let attempts = Arc::new(AtomicU32::new(0));
    let a = attempts.clone();
    rec.fail_when(move |e| {
        (e.id == bad).then(|| {
            a.fetch_add(1, Ordering::SeqCst);
            ProjectionError::poison("field `v` is not what the model expects")
        })
    });
    let mut eng = engine(&store, &control, "a");
    eng.add(Checkpointed::new(rec.clone(), store.clone()), fast())
        .unwrap();
    let handle = eng.start(CancellationToken::new());
    until("the rest applied", || rec.count() == 19).await;
    let parked = control.parked("strict").await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].event.id, bad);
    assert!(parked[0].error.contains("not what the model expects"));
    assert!(!rec.ids().contains(&bad));
    // Once in the failing batch, then the budget of 3 when applied alone.
    assert_eq!(attempts.load(Ordering::SeqCst), 1 + 3);

    let ops = ProjectionOps::new(store.clone(), Arc::new(control.clone()));
    let info = ops.list().await.unwrap();
    assert_eq!(info[0].parked, 1);
    rec.heal();
    let ids = ops.replay_parked("strict").await.unwrap();
    assert!(
        ops.wait(&ids, Duration::from_secs(10))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(rec.ids().contains(&bad));
    assert!(control.parked("strict").await.unwrap().is_empty());
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_stop_policy_faults_until_resumed() {
    let store = MemoryStore::new();
    let control = MemoryControl::new();
    let written = fill(&store, 1, 10).await;
    let bad = written[4].id;
    let rec = Recorder::new("stopper");
    rec.fail_when(move |e| (e.id == bad).then(|| ProjectionError::poison("bug")));
    let mut eng = engine(&store, &control, "a");
    eng.add(
        Checkpointed::new(rec.clone(), store.clone()),
        AsyncOptions {
            poison_policy: PoisonPolicy::Stop,
            ..fast()
        },
    )
    .unwrap();
    let handle = eng.start(CancellationToken::new());
    let c = control.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if status_of(&c, "stopper")
            .await
            .is_some_and(|s| s.state == RunState::Faulted)
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(rec.count(), 4, "stopped right before the poison event");
    let s = status_of(&control, "stopper").await.unwrap();
    assert!(s.last_error.unwrap().contains("bug"));
    assert_eq!(s.checkpoint, Some(written[3].position));
    rec.heal();
    let ops = ProjectionOps::new(store.clone(), Arc::new(control.clone()));
    ops.resume("stopper").await.unwrap();
    until("the rest", || rec.count() == 10).await;
    handle.shutdown().await;
}

/// A checkpoint store that fails its first reads.
#[derive(Clone)]
struct FlakyCheckpoints {
    inner: MemoryStore,
    failures_left: Arc<AtomicU32>,
}

impl mink_es::CheckpointStore for FlakyCheckpoints {
    async fn load_checkpoint(&self, name: &str) -> mink_es::Result<Option<Position>> {
        if self.failures_left.load(Ordering::SeqCst) > 0 {
            self.failures_left.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::backend(true, "database is locked"));
        }
        self.inner.load_checkpoint(name).await
    }

    async fn save_checkpoint(&self, name: &str, position: Position) -> mink_es::Result<()> {
        self.inner.save_checkpoint(name, position).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_checkpoint_read_never_restarts_from_zero() {
    let store = MemoryStore::new();
    let control = MemoryControl::new();
    let written = fill(&store, 1, 10).await;
    store
        .save_checkpoint("careful", written[5].position)
        .await
        .unwrap();
    let rec = Recorder::new("careful");
    let checkpoints = FlakyCheckpoints {
        inner: store.clone(),
        failures_left: Arc::new(AtomicU32::new(5)),
    };
    let mut eng = engine(&store, &control, "a");
    eng.add(Checkpointed::new(rec.clone(), checkpoints.clone()), fast())
        .unwrap();
    let handle = eng.start(CancellationToken::new());
    until("the tail", || rec.count() == 4).await;
    handle.shutdown().await;
    assert_eq!(checkpoints.failures_left.load(Ordering::SeqCst), 0);
    let applied: Vec<Position> = rec.calls.lock().iter().flatten().copied().collect();
    assert!(
        applied.iter().all(|p| *p > written[5].position),
        "nothing at or before the checkpoint: {applied:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crashing_worker_is_restarted() {
    let store = MemoryStore::new();
    let control = MemoryControl::new();
    fill(&store, 1, 10).await;
    let rec = Recorder::new("crashy");
    rec.panic_once.store(true, Ordering::SeqCst);
    let mut eng = engine(&store, &control, "a");
    eng.add(Checkpointed::new(rec.clone(), store.clone()), fast())
        .unwrap();
    let handle = eng.start(CancellationToken::new());
    until("after the restart", || rec.count() == 10).await;
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pause_resume_reset_and_rebuild_act_on_a_running_worker() {
    let store = MemoryStore::new();
    let control = MemoryControl::new();
    fill(&store, 2, 5).await;
    let rec = Recorder::new("view");
    let mut eng = engine(&store, &control, "a");
    eng.add(Checkpointed::new(rec.clone(), store.clone()), fast())
        .unwrap();
    let handle = eng.start(CancellationToken::new());
    until("catch-up", || rec.count() == 10).await;
    let ops = ProjectionOps::new(store.clone(), Arc::new(control.clone()));

    // Pause: new events wait.
    let ids = ops.pause("view").await.unwrap();
    ops.wait(&ids, Duration::from_secs(10)).await.unwrap();
    let more = fill(&store, 1, 3).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(rec.count(), 10, "paused");
    let info = ops.list().await.unwrap();
    assert_eq!(info[0].status.state, RunState::Paused);
    assert_eq!(info[0].lag_events, 3);
    assert!(info[0].lag_time > Duration::ZERO);
    let ids = ops.resume("view").await.unwrap();
    ops.wait(&ids, Duration::from_secs(10)).await.unwrap();
    until("resumed", || rec.count() == 13).await;

    // Reset to a position: what follows it is applied again.
    let ids = ops.reset("view", more[0].position).await.unwrap();
    ops.wait(&ids, Duration::from_secs(10)).await.unwrap();
    until("re-applied", || rec.count() == 15).await;

    // Rebuild while appends continue: the model is cleared and rebuilt, no event lost
    // or applied twice.
    let writer = {
        let store = store.clone();
        tokio::spawn(async move { fill(&store, 3, 10).await })
    };
    let ids = ops.rebuild("view").await.unwrap();
    let again = ops.rebuild("view").await;
    assert!(
        matches!(again, Err(Error::RebuildInProgress { .. })),
        "{again:?}"
    );
    ops.wait(&ids, Duration::from_secs(10)).await.unwrap();
    writer.await.unwrap();
    until("rebuilt", || rec.count() == 43).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ids = rec.ids();
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 43, "each event once after the rebuild");
    let feed: Vec<EventId> = store
        .read_feed(Position::START, 1000, &FeedFilter::all())
        .await
        .unwrap()
        .events
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids, feed, "the rebuilt model is the feed, in order");

    // An idle worker's status shows where it stopped: no stale lag.
    let mut caught_up = false;
    for _ in 0..100 {
        let info = ops.list().await.unwrap();
        if info[0].lag_events == 0 && info[0].status.state == RunState::Running {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(caught_up, "{:?}", ops.list().await.unwrap());
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitions_apply_every_event_once_in_stream_order() {
    let store = MemoryStore::new();
    let control = MemoryControl::new();
    let written = fill(&store, 12, 10).await;
    let recs: Vec<Recorder> = (0..4)
        .map(|i| Recorder::new(&partition_name("part", i, 4)))
        .collect();
    let mut eng = engine(&store, &control, "a");
    let r = recs.clone();
    eng.add_partitioned(
        "part",
        4,
        move |i, _| Checkpointed::new(r[i as usize].clone(), store.clone()),
        fast(),
    )
    .unwrap();
    let handle = eng.start(CancellationToken::new());
    until("all partitions", || {
        recs.iter().map(Recorder::count).sum::<usize>() == 120
    })
    .await;
    handle.shutdown().await;
    let mut all: Vec<EventId> = recs.iter().flat_map(Recorder::ids).collect();
    all.sort();
    let mut want: Vec<EventId> = written.iter().map(|e| e.id).collect();
    want.sort();
    assert_eq!(all, want, "each event exactly once");
    for r in &recs {
        assert!(r.count() > 0, "every partition works");
        let mut last: HashMap<StreamId, u64> = HashMap::new();
        for e in r.seen.lock().iter() {
            let prev = last.insert(e.stream_id.clone(), e.version).unwrap_or(0);
            assert!(e.version > prev, "stream order within the partition");
        }
    }
    let statuses = control.statuses().await.unwrap();
    assert_eq!(statuses.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_engine_is_active_per_projection_and_another_takes_over() {
    let store = MemoryStore::new();
    let control = MemoryControl::new();
    fill(&store, 3, 10).await;
    let rec_a = Recorder::new("shared");
    let rec_b = Recorder::new("shared");
    let mut a = engine(&store, &control, "node-a");
    a.add(Checkpointed::new(rec_a.clone(), store.clone()), fast())
        .unwrap();
    let ha = a.start(CancellationToken::new());
    until("node a caught up", || rec_a.count() == 30).await;
    let mut b = engine(&store, &control, "node-b");
    b.add(Checkpointed::new(rec_b.clone(), store.clone()), fast())
        .unwrap();
    let hb = b.start(CancellationToken::new());
    tokio::time::sleep(Duration::from_millis(200)).await;
    fill(&store, 1, 5).await;
    until("node a applies new events", || rec_a.count() == 35).await;
    assert_eq!(rec_b.count(), 0, "node b stands by");
    assert!(
        control
            .statuses()
            .await
            .unwrap()
            .iter()
            .any(|s| s.owner.as_deref() == Some("node-a"))
    );

    // Node a dies without releasing its lease (its tasks are aborted, as by kill -9).
    ha.abort();
    let died = tokio::time::Instant::now();
    fill(&store, 1, 5).await;
    until("node b takes over", || rec_b.count() == 5).await;
    let took = died.elapsed();
    assert!(
        took < Duration::from_millis(600) * 3,
        "takeover within the lease time: {took:?}"
    );
    assert!(
        rec_b.ids().iter().all(|id| !rec_a.ids().contains(id)),
        "node b starts at node a's checkpoint"
    );
    hb.shutdown().await;
}

#[tokio::test]
async fn bad_definitions_and_unknown_names_are_refused() {
    let store = MemoryStore::new();
    let control = MemoryControl::new();
    let mut eng = engine(&store, &control, "a");
    let r = eng.add(Checkpointed::new(Recorder::new(""), store.clone()), fast());
    assert!(matches!(r, Err(Error::InvalidProjection { .. })));
    eng.add(
        Checkpointed::new(Recorder::new("one"), store.clone()),
        fast(),
    )
    .unwrap();
    let r = eng.add(
        Checkpointed::new(Recorder::new("one"), store.clone()),
        fast(),
    );
    assert!(
        matches!(r, Err(Error::InvalidProjection { .. })),
        "duplicate"
    );
    let r = eng.add_partitioned(
        "one",
        2,
        |i, n| Checkpointed::new(Recorder::new(&partition_name("one", i, n)), store.clone()),
        fast(),
    );
    assert!(
        matches!(r, Err(Error::InvalidProjection { .. })),
        "duplicate base name"
    );
    let r = eng.add_partitioned(
        "two",
        0,
        |i, n| Checkpointed::new(Recorder::new(&partition_name("two", i, n)), store.clone()),
        fast(),
    );
    assert!(
        matches!(r, Err(Error::InvalidProjection { .. })),
        "no partitions"
    );
    assert_eq!(eng.names(), ["one"]);
    let ops = ProjectionOps::new(store.clone(), Arc::new(control.clone()));
    assert!(matches!(
        ops.pause("nope").await,
        Err(Error::UnknownProjection { .. })
    ));
    assert!(matches!(
        ops.rebuild("nope").await,
        Err(Error::UnknownProjection { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_subscribers_never_block_appends_and_are_told_when_they_lag() {
    let store = MemoryStore::new();
    let live = LiveFeed::start(store.clone(), Position::START, 16);
    let mut fast_sub = live.subscribe(FeedFilter::all().category("Acc"));
    let mut slow_sub = live.subscribe(FeedFilter::all());
    let written = fill(&store, 1, 200).await; // the slow subscriber reads nothing meanwhile
    let mut got = 0;
    let mut lagged = 0;
    while got + lagged < 200 {
        match tokio::time::timeout(Duration::from_secs(10), fast_sub.next())
            .await
            .unwrap()
        {
            LiveEvent::Event(e) => {
                assert_eq!(e.id, written[got + lagged].id);
                got += 1;
            }
            LiveEvent::Lagged(n) => lagged += n as usize,
            LiveEvent::Closed => panic!("closed"),
        }
    }
    match tokio::time::timeout(Duration::from_secs(10), slow_sub.next())
        .await
        .unwrap()
    {
        LiveEvent::Lagged(n) => assert!(n > 0),
        other => panic!("the slow subscriber must be told it lagged, got {other:?}"),
    }
}

/// An inline projection that refuses withdrawals over the balance.
#[derive(Clone, Default)]
struct Balances(Arc<Mutex<HashMap<StreamId, i64>>>);

impl InlineProjection for Balances {
    fn name(&self) -> &str {
        "balances"
    }

    fn apply(&self, events: &[StoredEvent]) -> Result<(), BoxError> {
        let mut m = self.0.lock();
        let mut next = m.clone();
        for e in events {
            let v: serde_json::Value = serde_json::from_slice(&e.payload)?;
            let b = next.entry(e.stream_id.clone()).or_insert(0);
            *b += v["amount"].as_i64().ok_or("no amount")?;
            if *b < 0 {
                return Err(format!("{} would go negative", e.stream_id).into());
            }
        }
        *m = next;
        Ok(())
    }
}

#[tokio::test]
async fn an_inline_projection_failure_fails_the_append() {
    let balances = Balances::default();
    let store = MemoryStore::builder().inline(balances.clone()).build();
    let s = StreamId::new("Acc-1").unwrap();
    let amount = |a: i64| NewEvent::json("Moved", &serde_json::json!({ "amount": a })).unwrap();
    store
        .append(&s, ExpectedVersion::Any, vec![amount(10), amount(-3)])
        .await
        .unwrap();
    assert_eq!(balances.0.lock()[&s], 7);
    let err = store
        .append(&s, ExpectedVersion::Any, vec![amount(5), amount(-20)])
        .await
        .unwrap_err();
    match err {
        Error::InlineProjection { projection, .. } => assert_eq!(projection, "balances"),
        other => panic!("{other:?}"),
    }
    assert_eq!(store.stream_version(&s).await.unwrap(), 2, "nothing stored");
    assert_eq!(balances.0.lock()[&s], 7, "no effect");
    let err = store
        .append(
            &s,
            ExpectedVersion::Any,
            vec![NewEvent::new("Moved", "nope")],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InlineProjection { .. }));
    assert_eq!(store.event_count(), 2);
}
