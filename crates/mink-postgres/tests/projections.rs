//! Projections on PostgreSQL (`MINK_POSTGRES_URL`): async read-model projections
//! (exactly once, compared with a clean replay), inline projections in the append's
//! transaction, operations across processes, blue/green rebuilds, parking, checkpoint
//! failures, the checkpoint's compare-and-set, and bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/counts.rs"]
mod counts;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use counts::{Balance, Counts, Ledger, all_events, fill, models, replay, wait_for};
use mink_es::outbox::{Outbox, OutboxStore, Route};
use mink_es::projection::ops::ProjectionOps;
use mink_es::projection::{
    AsyncOptions, PoisonPolicy, ProjectionControl, ProjectionEngine, ProjectionError,
    ProjectionTarget, RunState,
};
use mink_es::readmodel::{Query, ReadModelRepository};
use mink_es::{
    CheckpointStore, Error, ExpectedVersion, FeedFilter, FeedReader, NewEvent, Position, StreamId,
    StreamReader, StreamWriter,
};
use mink_postgres::sqlx::{self, AssertSqlSafe};
use mink_postgres::{PgEventStore, PgProjectionTarget};
use tokio_util::sync::CancellationToken;

fn fast() -> AsyncOptions {
    AsyncOptions {
        batch_size: 64,
        poll_interval: Duration::from_millis(20),
        retry_budget: 2,
        base_backoff: Duration::from_millis(2),
        max_backoff: Duration::from_millis(20),
        poison_policy: PoisonPolicy::Park,
        lease_ttl: Duration::from_secs(2),
    }
}

async fn pg() -> Option<(PgEventStore, common::Schemas, String)> {
    let url = common::url()?;
    let schemas = common::Schemas::new(&url);
    let store = common::store_with(&url, &schemas, |b| b.max_connections(12)).await;
    Some((store, schemas, url))
}

fn engine(store: &PgEventStore, owner: &str) -> ProjectionEngine<PgEventStore> {
    ProjectionEngine::new(store.clone(), Arc::new(store.projection_control())).owner(owner)
}

/// Waits until the checkpoint of `name` reaches the head of the feed.
async fn caught_up(store: &PgEventStore, name: &str, secs: u64) {
    wait_for(&format!("{name} to catch up"), secs, || async {
        let head = store.head_position().await.unwrap();
        store
            .load_checkpoint(name)
            .await
            .unwrap()
            .is_some_and(|cp| cp >= head)
    })
    .await;
}

async fn status(store: &PgEventStore, name: &str) -> Option<mink_es::projection::ProjectionStatus> {
    store
        .projection_control()
        .statuses()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.name == name)
}

async fn assert_equals_replay(store: &PgEventStore, p: &Counts) {
    let events = all_events(store, &p.filter).await;
    let want = replay(p, &events).await;
    let got = models(&store.read_models()).await;
    assert_eq!(got.1.len(), events.len(), "one ledger row per event");
    assert_eq!(got, want, "the read model equals a clean replay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_async_engine_builds_the_model_of_a_clean_replay() {
    let _g = common::FEED_LOCK.lock().await;
    let Some((store, _s, _)) = pg().await else {
        return;
    };
    fill(&store, "Acc", 12, 30, 7).await;
    let p = Counts::new("counts");
    let mut e = engine(&store, "a");
    e.add(PgProjectionTarget::new(&store, p.clone()).unwrap(), fast())
        .unwrap();
    // The same projection, partitioned by stream (its own tables would clash: use a
    // projection of other models? The partitions share `p2`'s tables).
    let handle = e.start(CancellationToken::new());
    // Appends while it runs.
    fill(&store, "Late", 5, 20, 3).await;
    caught_up(&store, "counts", 60).await;
    handle.shutdown().await;
    assert_equals_replay(&store, &p).await;
    assert_eq!(
        status(&store, "counts").await.unwrap().state,
        RunState::Stopped
    );
    let (balances, ledger) = models(&store.read_models()).await;
    assert_eq!(balances.len(), 17);
    assert_eq!(ledger.len(), 12 * 30 + 5 * 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_projection_builds_the_same_model() {
    let _g = common::FEED_LOCK.lock().await;
    let Some((store, _s, _)) = pg().await else {
        return;
    };
    fill(&store, "Acc", 16, 20, 5).await;
    let p = Counts::new("parts");
    let mut e = engine(&store, "a");
    e.add_partitioned(
        "parts",
        4,
        PgProjectionTarget::partitions(&store, p.clone()).unwrap(),
        fast(),
    )
    .unwrap();
    let handle = e.start(CancellationToken::new());
    for i in 0..4 {
        caught_up(&store, &format!("parts#{i}of4"), 60).await;
    }
    handle.shutdown().await;
    assert_equals_replay(&store, &p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_inline_projection_commits_with_the_append_or_not_at_all() {
    let _g = common::FEED_LOCK.lock().await;
    let Some((url, schemas)) = common::url().map(|u| {
        let s = common::Schemas::new(&u);
        (u, s)
    }) else {
        return;
    };
    let p = Counts::new("inline_counts");
    p.fail_when(|e| (counts::value_of(e) == 99).then(|| ProjectionError::poison("refusing v=99")));
    let mut only_orders = Counts::new("inline_orders");
    only_orders.filter = FeedFilter::all().category("Order");
    // Another model name would clash: `only_orders` writes the same tables, so give it
    // no events by default (it only sees Order events, which the other also counts).
    let store = common::store_with(&url, &schemas, |b| {
        b.inline_projection(p.clone())
            .outbox(Outbox::new().route(Route::all("bus")).unwrap())
    })
    .await;
    let s1 = StreamId::new("Acc-1").unwrap();
    let ok = |v: i64| NewEvent::json("Moved", &serde_json::json!({ "v": v })).unwrap();
    store
        .append(&s1, ExpectedVersion::Any, vec![ok(1), ok(2)])
        .await
        .unwrap();
    let balances = ReadModelRepository::<Balance, _>::new(store.read_models());
    balances.ensure_table().await.unwrap();
    assert_eq!(balances.get("Acc-1").await.unwrap().unwrap().model.total, 3);

    // A failing projection fails the append: no event, no message, no model change.
    let e = store
        .append(&s1, ExpectedVersion::Any, vec![ok(5), ok(99)])
        .await
        .unwrap_err();
    match &e {
        Error::InlineProjection {
            projection, stream, ..
        } => {
            assert_eq!(projection, "inline_counts");
            assert_eq!(stream, &s1);
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert_eq!(store.stream_version(&s1).await.unwrap(), 2);
    assert_eq!(balances.get("Acc-1").await.unwrap().unwrap().model.total, 3);
    let outbox = store.outbox_store();
    assert_eq!(outbox.counts().await.unwrap().pending, 2);

    // In a caller's transaction: the failure rolls back to a savepoint, the caller's
    // own writes stay, and its transaction is usable.
    let mut tx = store.begin().await.unwrap();
    store
        .append_in(&mut tx, &s1, ExpectedVersion::Exact(2), vec![ok(10)])
        .await
        .unwrap();
    let e = store
        .append_in(&mut tx, &s1, ExpectedVersion::Exact(3), vec![ok(99)])
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InlineProjection { .. }));
    store
        .append_in(&mut tx, &s1, ExpectedVersion::Exact(3), vec![ok(20)])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(store.stream_version(&s1).await.unwrap(), 4);
    let b = balances.get("Acc-1").await.unwrap().unwrap();
    assert_eq!((b.model.total, b.model.events), (33, 4));

    // A filtered inline projection sees only the events its filter accepts.
    let store2 = common::other_process(&url, store.schema(), |b| {
        b.inline_projection(only_orders.clone())
    })
    .await;
    store2
        .append(
            &StreamId::new("Other-1").unwrap(),
            ExpectedVersion::Any,
            vec![ok(1)],
        )
        .await
        .unwrap();
    store2
        .append(
            &StreamId::new("Order-1").unwrap(),
            ExpectedVersion::Any,
            vec![ok(4)],
        )
        .await
        .unwrap();
    assert_eq!(only_orders.applied.load(Ordering::SeqCst), 1);
    assert!(balances.get("Other-1").await.unwrap().is_none());
    assert_eq!(
        balances.get("Order-1").await.unwrap().unwrap().model.total,
        4
    );
    let ledger = ReadModelRepository::<Ledger, _>::new(store.read_models());
    ledger.ensure_table().await.unwrap();
    assert_eq!(ledger.count(&Query::new()).await.unwrap(), 5);
}

/// An inline projection that counts every event in one row: every append writes it.
struct Total;

#[derive(serde::Serialize, serde::Deserialize)]
struct TotalRow {
    id: String,
    n: i64,
}

impl mink_es::readmodel::ReadModel for TotalRow {
    const NAME: &'static str = "total";
    const FIELDS: &'static [mink_es::readmodel::Field] = &[
        mink_es::readmodel::Field::text("id"),
        mink_es::readmodel::Field::integer("n"),
    ];
}

impl mink_es::projection::ReadModelProjection for Total {
    fn name(&self) -> &str {
        "total"
    }

    fn models(&self) -> mink_es::Result<Vec<mink_es::readmodel::Schema>> {
        Ok(vec![mink_es::readmodel::Schema::of::<TotalRow>()?])
    }

    fn apply<'a>(
        &'a self,
        models: &'a dyn mink_es::readmodel::ReadModelStore,
        events: &'a [mink_es::StoredEvent],
    ) -> futures::future::BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            let rows = ReadModelRepository::<TotalRow, _>::new(models);
            let n = rows.get("all").await?.map_or(0, |r| r.model.n);
            rows.upsert(&TotalRow {
                id: "all".into(),
                n: n + events.len() as i64,
            })
            .await?;
            Ok(())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_update_one_inline_row_without_losing_any() {
    let Some((url, schemas)) = common::url().map(|u| {
        let s = common::Schemas::new(&u);
        (u, s)
    }) else {
        return;
    };
    let store = common::store_with(&url, &schemas, |b| b.inline_projection(Total)).await;
    let tasks: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..15 {
                    store
                        .append(
                            &StreamId::new(format!("T{t}-{i}")).unwrap(),
                            ExpectedVersion::NoStream,
                            vec![NewEvent::new("E", "{}"), NewEvent::new("E", "{}")],
                        )
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let rows = ReadModelRepository::<TotalRow, _>::new(store.read_models());
    rows.ensure_table().await.unwrap();
    let all = rows.get("all").await.unwrap().unwrap();
    assert_eq!(all.model.n, 120, "every event counted once");
    assert_eq!(all.version, 60, "one write per append");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inline_projection_names_are_checked_at_build() {
    let Some(url) = common::url() else { return };
    let e = PgEventStore::builder(&url)
        .inline_projection(Counts::new(""))
        .build()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidProjection { .. }), "{e:?}");
    let e = PgEventStore::builder(&url)
        .inline_projection(Counts::new("twice"))
        .inline_projection(Counts::new("twice"))
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidProjection { name, .. } if name == "twice"),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pause_and_resume_from_another_process_reach_the_running_worker() {
    let _g = common::FEED_LOCK.lock().await;
    let Some((store, _s, url)) = pg().await else {
        return;
    };
    fill(&store, "Acc", 4, 10, 5).await;
    let p = Counts::new("steered");
    let mut e = engine(&store, "worker");
    e.add(PgProjectionTarget::new(&store, p.clone()).unwrap(), fast())
        .unwrap();
    let handle = e.start(CancellationToken::new());
    caught_up(&store, "steered", 60).await;

    // The operator: another pool, another control handle.
    let other = common::other_process(&url, store.schema(), |b| b).await;
    let ops = ProjectionOps::new(other.clone(), Arc::new(other.projection_control()));
    let ids = ops.pause("steered").await.unwrap();
    assert!(
        ops.wait(&ids, Duration::from_secs(20))
            .await
            .unwrap()
            .is_empty()
    );
    wait_for("paused", 20, || async {
        status(&store, "steered").await.unwrap().state == RunState::Paused
    })
    .await;
    let before = p.applied.load(Ordering::SeqCst);
    fill(&store, "New", 2, 5, 5).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        p.applied.load(Ordering::SeqCst),
        before,
        "paused: nothing applied"
    );
    let listed = ops.list().await.unwrap();
    let info = listed.iter().find(|i| i.status.name == "steered").unwrap();
    assert_eq!(info.status.state, RunState::Paused);
    assert!(info.lag_events > 0);

    let ids = ops.resume("steered").await.unwrap();
    assert!(
        ops.wait(&ids, Duration::from_secs(20))
            .await
            .unwrap()
            .is_empty()
    );
    caught_up(&store, "steered", 60).await;
    assert_eq!(p.applied.load(Ordering::SeqCst), before + 10);
    handle.shutdown().await;
    assert_equals_replay(&store, &p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blue_green_rebuild_shows_the_old_model_until_the_swap_and_loses_nothing() {
    let _g = common::FEED_LOCK.lock().await;
    let Some((store, _s, _)) = pg().await else {
        return;
    };
    fill(&store, "Acc", 10, 30, 10).await;
    let p = Counts::new("bg");
    let mut e = engine(&store, "a");
    let mut opts = fast();
    opts.batch_size = 16;
    e.add(PgProjectionTarget::new(&store, p.clone()).unwrap(), opts)
        .unwrap();
    let handle = e.start(CancellationToken::new());
    caught_up(&store, "bg", 60).await;
    let old = models(&store.read_models()).await;
    assert_eq!(old.1.len(), 300);

    // Rebuild, slowly, with generation 2, while appends go on.
    p.generation.store(2, Ordering::SeqCst);
    p.delay_ms.store(15, Ordering::SeqCst);
    let ops = ProjectionOps::new(store.clone(), Arc::new(store.projection_control()));
    let ids = ops.rebuild("bg").await.unwrap();
    // A second rebuild while this one is requested or running is refused.
    let e2 = ops.rebuild("bg").await.unwrap_err();
    assert!(matches!(e2, Error::RebuildInProgress { .. }), "{e2:?}");
    assert!(
        ops.wait(&ids, Duration::from_secs(20))
            .await
            .unwrap()
            .is_empty()
    );

    let readers = store.read_models();
    let writer = {
        let store = store.clone();
        tokio::spawn(async move { fill(&store, "During", 6, 10, 2).await })
    };
    let started = Instant::now();
    let mut looks = 0;
    loop {
        // Each table is read in one statement: it must show the whole old model or
        // the whole new one, never a half-built one.
        let (balances, ledger) = models(&readers).await;
        let gens = |g: Vec<i64>| g.into_iter().collect::<std::collections::BTreeSet<i64>>();
        let bg = gens(balances.iter().map(|b| b.model.generation).collect());
        let lg = gens(ledger.iter().map(|l| l.model.generation).collect());
        assert_eq!(bg.len(), 1, "balances mix generations: {bg:?}");
        assert_eq!(lg.len(), 1, "the ledger mixes generations: {lg:?}");
        if lg == [1].into() {
            assert_eq!(ledger.len(), 300, "the old ledger is whole");
        } else {
            assert!(ledger.len() >= 300, "the new ledger is whole");
        }
        if bg == [2].into() && lg == [2].into() {
            break;
        }
        looks += 1;
        assert!(started.elapsed() < Duration::from_secs(90), "no swap");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(
        looks > 3,
        "the rebuild was not slow enough to be observed ({looks})"
    );
    writer.await.unwrap();
    p.delay_ms.store(0, Ordering::SeqCst);
    caught_up(&store, "bg", 60).await;
    wait_for("the rebuild to end", 30, || async {
        status(&store, "bg").await.unwrap().state == RunState::Running
    })
    .await;
    handle.shutdown().await;
    // Every event once, the concurrent ones included, all in generation 2.
    assert_equals_replay(&store, &p).await;
    let (_, ledger) = models(&store.read_models()).await;
    assert_eq!(ledger.len(), 360);
    // The swap left no shadow and no mark; a second rebuild can run.
    let leftovers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename LIKE '%\\_\\_next'",
    )
    .bind(store.schema().as_str())
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(leftovers, 0);
    let marks: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {}.mink_projection_rebuilds",
        store.schema().quoted()
    )))
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(marks, 0);

    // Rebuild again (indexes were renamed at the swap, so new shadows can be made).
    p.generation.store(3, Ordering::SeqCst);
    let mut e = engine(&store, "a");
    e.add(PgProjectionTarget::new(&store, p.clone()).unwrap(), fast())
        .unwrap();
    let handle = e.start(CancellationToken::new());
    wait_for("the worker", 20, || async {
        status(&store, "bg").await.unwrap().state == RunState::Running
    })
    .await;
    let ids = ops.rebuild("bg").await.unwrap();
    assert!(
        ops.wait(&ids, Duration::from_secs(20))
            .await
            .unwrap()
            .is_empty()
    );
    wait_for("generation 3", 60, || async {
        let (b, _) = models(&store.read_models()).await;
        b.iter().all(|b| b.model.generation == 3)
    })
    .await;
    handle.shutdown().await;
    assert_equals_replay(&store, &p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_resumed_after_a_crash_writes_the_shadow_and_swaps_when_caught_up() {
    let _g = common::FEED_LOCK.lock().await;
    let Some((store, _s, _)) = pg().await else {
        return;
    };
    fill(&store, "Acc", 5, 20, 10).await;
    let p = Counts::new("resume");
    let target = PgProjectionTarget::new(&store, p.clone()).unwrap();
    let events = all_events(&store, &FeedFilter::all()).await;
    assert_eq!(target.checkpoint().await.unwrap(), None);
    target
        .apply_batch(&events, events.last().unwrap().position)
        .await
        .unwrap();
    // A rebuild starts, applies part of the feed, and the process dies.
    p.generation.store(2, Ordering::SeqCst);
    target.reset(Position::START).await.unwrap();
    target
        .apply_batch(&events[..30], events[29].position)
        .await
        .unwrap();
    drop(target);
    let live = models(&store.read_models()).await;
    assert!(live.0.iter().all(|b| b.model.generation == 1));
    assert_eq!(live.1.len(), 100);

    // A new process: it resumes into the shadow, and swaps in when caught up.
    let mut e = engine(&store, "b");
    e.add(PgProjectionTarget::new(&store, p.clone()).unwrap(), fast())
        .unwrap();
    let handle = e.start(CancellationToken::new());
    wait_for("the swap", 60, || async {
        let (b, l) = models(&store.read_models()).await;
        l.len() == 100 && b.iter().all(|b| b.model.generation == 2)
    })
    .await;
    handle.shutdown().await;
    assert_equals_replay(&store, &p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_event_is_parked_and_replayed_after_the_fix() {
    let _g = common::FEED_LOCK.lock().await;
    let Some((store, _s, _)) = pg().await else {
        return;
    };
    fill(&store, "Acc", 3, 10, 10).await;
    let events = all_events(&store, &FeedFilter::all()).await;
    let bad = events[17].id;
    let p = Counts::new("poisoned");
    p.fail_when(move |e| (e.id == bad).then(|| ProjectionError::poison("bad data")));
    let mut e = engine(&store, "a");
    e.add(PgProjectionTarget::new(&store, p.clone()).unwrap(), fast())
        .unwrap();
    let handle = e.start(CancellationToken::new());
    caught_up(&store, "poisoned", 60).await;
    let ops = ProjectionOps::new(store.clone(), Arc::new(store.projection_control()));
    let parked = ops.parked("poisoned").await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].event, events[17]);
    assert!(parked[0].error.contains("bad data"), "{}", parked[0].error);
    let (_, ledger) = models(&store.read_models()).await;
    assert_eq!(ledger.len(), 29, "every event but the poison");
    assert!(ledger.iter().all(|l| l.model.id != bad.to_string()));

    p.heal();
    let ids = ops.replay_parked("poisoned").await.unwrap();
    assert!(
        ops.wait(&ids, Duration::from_secs(20))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(ops.parked("poisoned").await.unwrap().is_empty());
    handle.shutdown().await;
    let (_, ledger) = models(&store.read_models()).await;
    assert_eq!(ledger.len(), 30);
    assert!(ledger.iter().any(|l| l.model.id == bad.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_checkpoint_read_never_restarts_from_zero() {
    let _g = common::FEED_LOCK.lock().await;
    let Some((store, _s, _)) = pg().await else {
        return;
    };
    fill(&store, "Acc", 4, 10, 10).await;
    let p = Counts::new("cp");
    let mut e = engine(&store, "a");
    e.add(PgProjectionTarget::new(&store, p.clone()).unwrap(), fast())
        .unwrap();
    let handle = e.start(CancellationToken::new());
    caught_up(&store, "cp", 60).await;
    handle.shutdown().await;
    let applied = p.applied.load(Ordering::SeqCst);
    assert_eq!(applied, 40);

    // The checkpoint cannot be read (its table is gone for a while).
    let s = store.schema().quoted();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "ALTER TABLE {s}.checkpoints RENAME TO checkpoints_away"
    )))
    .execute(store.pool())
    .await
    .unwrap();
    fill(&store, "More", 2, 5, 5).await;
    let mut e = engine(&store, "a");
    e.add(PgProjectionTarget::new(&store, p.clone()).unwrap(), fast())
        .unwrap();
    let handle = e.start(CancellationToken::new());
    wait_for("the fault to be reported", 20, || async {
        status(&store, "cp").await.is_some_and(|s| {
            s.state == RunState::Faulted
                && s.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("cannot read the checkpoint"))
        })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(p.applied.load(Ordering::SeqCst), applied, "nothing applied");
    sqlx::raw_sql(AssertSqlSafe(format!(
        "ALTER TABLE {s}.checkpoints_away RENAME TO checkpoints"
    )))
    .execute(store.pool())
    .await
    .unwrap();
    caught_up(&store, "cp", 60).await;
    handle.shutdown().await;
    assert_eq!(
        p.applied.load(Ordering::SeqCst),
        applied + 10,
        "only the new events were applied"
    );
    assert!(
        store
            .projection_control()
            .parked("cp")
            .await
            .unwrap()
            .is_empty()
    );
    assert_equals_replay(&store, &p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_checkpoint_compare_and_set_refuses_a_stale_writer() {
    let _g = common::FEED_LOCK.lock().await;
    let Some((store, _s, _)) = pg().await else {
        return;
    };
    fill(&store, "Acc", 2, 20, 10).await;
    let events = all_events(&store, &FeedFilter::all()).await;
    let p = Counts::new("cas");
    let a = PgProjectionTarget::new(&store, p.clone()).unwrap();
    let b = PgProjectionTarget::new(&store, p.clone()).unwrap();
    assert_eq!(a.checkpoint().await.unwrap(), None);
    assert_eq!(b.checkpoint().await.unwrap(), None);
    let (first, rest) = events.split_at(10);
    let cp1 = first.last().unwrap().position;
    // Both apply the same batch at once: exactly one succeeds.
    let (ra, rb) = tokio::join!(a.apply_batch(first, cp1), b.apply_batch(first, cp1));
    let (winner, loser, err) = match (ra, rb) {
        (Ok(()), Err(e)) => (&a, &b, e),
        (Err(e), Ok(())) => (&b, &a, e),
        other => panic!("exactly one must succeed: {other:?}"),
    };
    assert!(err.is_transient(), "{err:?}");
    assert!(
        err.to_string().contains("moved by another process"),
        "{err}"
    );
    let (_, ledger) = models(&store.read_models()).await;
    assert_eq!(ledger.len(), 10, "the batch was applied once");
    // The stale writer stays refused, even for a later batch.
    let cp2 = rest.last().unwrap().position;
    assert!(loser.apply_batch(rest, cp2).await.is_err());
    assert_eq!(models(&store.read_models()).await.1.len(), 10);
    // Once it reads the checkpoint again, it goes on from there.
    assert_eq!(loser.checkpoint().await.unwrap(), Some(cp1));
    loser.apply_batch(rest, cp2).await.unwrap();
    // Now the other one is stale.
    assert!(winner.apply_batch(&[], cp2).await.is_err());
    assert_eq!(store.load_checkpoint("cas").await.unwrap(), Some(cp2));
    assert_equals_replay(&store, &p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_overtaken_by_another_process_stands_by_then_resumes_from_the_new_checkpoint() {
    let _g = common::FEED_LOCK.lock().await;
    let Some((store, _s, _)) = pg().await else {
        return;
    };
    fill(&store, "Acc", 4, 10, 10).await;
    let p = Counts::new("overtaken");
    let mut opts = fast();
    opts.lease_ttl = Duration::from_millis(900);
    let mut e = engine(&store, "slow");
    e.add(PgProjectionTarget::new(&store, p.clone()).unwrap(), opts)
        .unwrap();
    let handle = e.start(CancellationToken::new());
    caught_up(&store, "overtaken", 60).await;

    // The worker gets stuck on a batch (a transient failure, retried)...
    let tries = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let t = tries.clone();
    p.fail_when(move |_| {
        t.fetch_add(1, Ordering::SeqCst);
        Some(ProjectionError::transient("the database is slow"))
    });
    fill(&store, "Thief", 1, 3, 3).await;
    wait_for("the worker to retry", 20, || async {
        tries.load(Ordering::SeqCst) >= 2
    })
    .await;
    // ...while another process takes the lease over and applies that batch (its
    // target moves the checkpoint).
    let leases = format!("{}.mink_projection_leases", store.schema().quoted());
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE {leases} SET owner = 'thief', expires_at = clock_timestamp() + interval '1 hour' \
         WHERE name = 'overtaken'"
    )))
    .execute(store.pool())
    .await
    .unwrap();
    let other = Counts::new("overtaken");
    let thief = PgProjectionTarget::new(&store, other.clone()).unwrap();
    let from = thief.checkpoint().await.unwrap().unwrap();
    let page = store
        .read_feed(from, 100, &FeedFilter::all())
        .await
        .unwrap();
    assert_eq!(page.events.len(), 3);
    thief.apply_batch(&page.events, page.next).await.unwrap();
    // The worker's retries now find the checkpoint moved: it must notice that its
    // lease is gone and stand by, not retry forever.
    let before = p.applied.load(Ordering::SeqCst);
    p.heal();
    wait_for("the worker to stand by", 20, || async {
        status(&store, "overtaken")
            .await
            .is_some_and(|s| s.state == RunState::Standby)
    })
    .await;
    // The thief leaves; the worker takes the lease again, re-reads the checkpoint and
    // applies only what is new, once.
    sqlx::query(AssertSqlSafe(format!(
        "DELETE FROM {leases} WHERE owner = 'thief'"
    )))
    .execute(store.pool())
    .await
    .unwrap();
    fill(&store, "After", 1, 4, 4).await;
    caught_up(&store, "overtaken", 60).await;
    handle.shutdown().await;
    assert_eq!(other.applied.load(Ordering::SeqCst), 3);
    assert_eq!(p.applied.load(Ordering::SeqCst) - before, 4);
    assert_equals_replay(&store, &p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_typed_errors_and_changes_nothing() {
    let _g = common::FEED_LOCK.lock().await;
    let Some((store, _s, _)) = pg().await else {
        return;
    };
    fill(&store, "Acc", 4, 5, 5).await;
    let p = Counts::new("bad");
    let mut e = engine(&store, "a");
    e.add(PgProjectionTarget::new(&store, p.clone()).unwrap(), fast())
        .unwrap();
    let dup = e.add(PgProjectionTarget::new(&store, p.clone()).unwrap(), fast());
    assert!(matches!(dup, Err(Error::InvalidProjection { .. })));
    let empty = e.add(
        PgProjectionTarget::new(&store, Counts::new("")).unwrap(),
        fast(),
    );
    assert!(matches!(empty, Err(Error::InvalidProjection { .. })));
    // A partitioned projection registered too (its rebuild is refused).
    e.add_partitioned(
        "split",
        2,
        PgProjectionTarget::partitions(&store, Counts::new("split")).unwrap(),
        fast(),
    )
    .unwrap();
    assert_eq!(e.names(), ["bad", "split#0of2", "split#1of2"]);
    let handle = e.start(CancellationToken::new());
    caught_up(&store, "bad", 60).await;
    caught_up(&store, "split#1of2", 60).await;

    let ops = ProjectionOps::new(store.clone(), Arc::new(store.projection_control()));
    let e = ops.pause("nope").await.unwrap_err();
    assert!(matches!(e, Error::UnknownProjection { .. }), "{e:?}");
    let requests: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {}.mink_projection_requests",
        store.schema().quoted()
    )))
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(requests, 0, "nothing was queued");

    // A partition cannot be rebuilt alone: refused, and its model is untouched.
    let before = models(&store.read_models()).await;
    let ids = ops.rebuild("split").await.unwrap();
    let errors = ops.wait(&ids, Duration::from_secs(20)).await.unwrap();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors.iter().all(|e| e.contains("share")), "{errors:?}");
    assert_eq!(models(&store.read_models()).await, before);
    handle.shutdown().await;
}

/// Throughput of a batch-applying projection (run with `--ignored --nocapture`, in
/// release): `MINK_PROJ_EVENTS` events (default 100,000) over 1,000 streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput() {
    let Some((store, _s, _)) = pg().await else {
        return;
    };
    let n: usize = std::env::var("MINK_PROJ_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let streams = 1_000;
    let t = Instant::now();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                fill(&store, &format!("W{w}"), streams / 4, n / streams, 50).await
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    eprintln!("filled {n} events in {:?}", t.elapsed());
    for (ledger, prefetch, partitions, batch) in [
        (false, true, 1, 1000),
        (false, false, 1, 1000),
        (false, true, 4, 1000),
        (false, true, 1, 256),
        (true, true, 1, 1000),
        (true, true, 4, 1000),
    ] {
        let name = format!(
            "tp_{}_{}_{partitions}_{batch}",
            u8::from(ledger),
            u8::from(prefetch)
        );
        let mut p = Counts::new(&name);
        p.prefetch = prefetch;
        p.ledger = ledger;
        // Fresh tables for each run.
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP TABLE IF EXISTS {s}.rm_balances; DROP TABLE IF EXISTS {s}.rm_ledger",
            s = store.schema().quoted()
        )))
        .execute(store.pool())
        .await
        .unwrap();
        let mut e = engine(&store, "tp");
        let mut opts = fast();
        opts.batch_size = batch;
        if partitions == 1 {
            e.add(PgProjectionTarget::new(&store, p.clone()).unwrap(), opts)
                .unwrap();
        } else {
            e.add_partitioned(
                &name,
                partitions,
                PgProjectionTarget::partitions(&store, p.clone()).unwrap(),
                opts,
            )
            .unwrap();
        }
        let t = Instant::now();
        let handle = e.start(CancellationToken::new());
        wait_for("the projection", 600, || async {
            p.applied.load(Ordering::SeqCst) >= n as u64
        })
        .await;
        let took = t.elapsed();
        handle.shutdown().await;
        eprintln!(
            "workload=PROJ rows/event={} prefetch={prefetch} partitions={partitions} batch={batch}: {n} events in {took:?} = {:.0} events/s",
            if ledger {
                "1 insert + 1 upsert"
            } else {
                "1 upsert"
            },
            n as f64 / took.as_secs_f64()
        );
    }
}
