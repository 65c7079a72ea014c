//! Projections on SQLite: the async engine with `SqliteProjectionTarget` and
//! `SqliteControl`, inline projections in the append's transaction, operations across
//! store handles, blue/green rebuilds, parking, checkpoint failures and bad input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mink_es::outbox::{Outbox, OutboxStore, Route};
use mink_es::projection::ops::ProjectionOps;
use mink_es::projection::{
    AsyncOptions, Command, PoisonPolicy, ProjectionControl, ProjectionEngine, ProjectionError,
    ProjectionStatus, ProjectionTarget, RunState,
};
use mink_es::readmodel::{Query, ReadModelRepository};
use mink_es::{
    CheckpointStore, Error, ExpectedVersion, FeedFilter, FeedReader, NewEvent, Position,
    StreamReader, StreamWriter,
};
use mink_sqlite::{SqliteControl, SqliteProjectionTarget, SqliteStore};
use support::*;
use tokio_util::sync::CancellationToken;

fn fast(batch: usize) -> AsyncOptions {
    AsyncOptions {
        batch_size: batch,
        poll_interval: Duration::from_millis(20),
        retry_budget: 2,
        base_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(10),
        poison_policy: PoisonPolicy::Park,
        lease_ttl: Duration::from_secs(5),
    }
}

fn engine(store: &SqliteStore, owner: &str) -> ProjectionEngine<SqliteStore> {
    ProjectionEngine::new(store.clone(), Arc::new(SqliteControl::new(store))).owner(owner)
}

async fn status(control: &SqliteControl, name: &str) -> Option<ProjectionStatus> {
    control
        .statuses()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.name == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_async_engine_builds_the_exact_read_model() {
    let (_dir, store) = temp_store();
    fill(&store, 7, 60, 0).await;
    let ledger = Ledger::new("ledger");
    let mut e = engine(&store, "a");
    e.add(
        SqliteProjectionTarget::new(&store, ledger.clone()),
        fast(64),
    )
    .unwrap();
    let handle = e.start(CancellationToken::new());
    until("catch-up", || caught_up(&store, "ledger")).await;
    // 420 events in batches of up to 64.
    let calls = ledger.calls.load(Ordering::SeqCst);
    assert!(
        (7..=10).contains(&calls),
        "batches, not single events: {calls}"
    );
    // More events while it runs.
    fill(&store, 3, 20, 1).await;
    until("the new events", || caught_up(&store, "ledger")).await;
    handle.shutdown().await;

    assert_eq!(log_rows(&store).await, 7 * 60 + 3 * 20);
    let built = dump(&store).await;
    assert_eq!(built, clean_replay(&store, ledger.clone()).await);
    let control = SqliteControl::new(&store);
    let st = status(&control, "ledger").await.unwrap();
    assert_eq!(st.state, RunState::Stopped);
    assert_eq!(st.checkpoint, Some(store.head_position().await.unwrap()));
    assert!(control.parked("ledger").await.unwrap().is_empty());

    // Restarted, it goes on from its checkpoint: nothing is applied twice.
    let calls = ledger.calls.load(Ordering::SeqCst);
    let mut e = engine(&store, "a");
    e.add(
        SqliteProjectionTarget::new(&store, ledger.clone()),
        fast(64),
    )
    .unwrap();
    let handle = e.start(CancellationToken::new());
    fill(&store, 2, 5, 2).await;
    until("the events after the restart", || {
        caught_up(&store, "ledger")
    })
    .await;
    handle.shutdown().await;
    assert!(ledger.calls.load(Ordering::SeqCst) > calls);
    assert_eq!(log_rows(&store).await, 7 * 60 + 3 * 20 + 10);
    assert_eq!(dump(&store).await, clean_replay(&store, ledger).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitions_build_the_exact_model_and_refuse_a_rebuild() {
    let (_dir, store) = temp_store();
    fill(&store, 9, 30, 0).await;
    let ledger = Arc::new(Ledger::new("ledger"));
    let mut e = engine(&store, "a");
    e.add_partitioned(
        "ledger",
        3,
        |i, n| SqliteProjectionTarget::partitioned(&store, ledger.clone(), i, n),
        fast(32),
    )
    .unwrap();
    let handle = e.start(CancellationToken::new());
    for i in 0..3 {
        let name = format!("ledger#{i}of3");
        until("each partition", || caught_up(&store, &name)).await;
    }
    assert_eq!(log_rows(&store).await, 9 * 30);
    let clean = clean_replay(&store, (*ledger).clone()).await;
    // Accounts and log rows are per stream: exactly those of a clean replay. (Type
    // counts are summed from three partitions, in another order, to the same totals.)
    let built = dump(&store).await;
    assert_eq!(built["rm_ledger_log"], clean["rm_ledger_log"]);
    assert_eq!(built["rm_ledger_accounts"], clean["rm_ledger_accounts"]);
    let docs = |d: &Dump| -> Vec<String> {
        d["rm_ledger_types"]
            .iter()
            .map(|(doc, _)| doc.clone())
            .collect()
    };
    assert_eq!(docs(&built), docs(&clean));

    // A rebuild of partitions that share tables is refused by each partition, and the
    // model stays as it was.
    let ops = ProjectionOps::new(store.clone(), Arc::new(SqliteControl::new(&store)));
    let ids = ops.rebuild("ledger").await.unwrap();
    assert_eq!(ids.len(), 3);
    let errors = ops.wait(&ids, Duration::from_secs(20)).await.unwrap();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(
        errors.iter().all(|e| e.contains("partitions")),
        "{errors:?}"
    );
    assert!(shadow_tables(&store).is_empty());
    handle.shutdown().await;
    assert_eq!(dump(&store).await, built);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_inline_projection_commits_with_the_append_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::new("ledger-inline");
    ledger.fail_poison.store(true, Ordering::SeqCst);
    // Only deposits; with an outbox too.
    let deposits = Ledger {
        name: "deposits".into(),
        ..Ledger::new("unused")
    }
    .with_filter(FeedFilter::all().event_type("Deposited"));
    let store = SqliteStore::builder(dir.path().join("inline.db"))
        .outbox(Outbox::new().route(Route::all("out")).unwrap())
        .inline(ledger.clone())
        .unwrap()
        .open()
        .unwrap();
    assert_eq!(store.inline_projections(), ["ledger-inline"]);
    let accounts = ReadModelRepository::<Account, _>::new(store.read_models());
    accounts.ensure_table().await.unwrap();

    let a = sid("Acc-1");
    let r = store
        .append(
            &a,
            ExpectedVersion::NoStream,
            vec![ev("Deposited", 10), ev("Withdrawn", 3)],
        )
        .await
        .unwrap();
    // Visible at once: the model committed with the events.
    let acc = accounts.get("Acc-1").await.unwrap().unwrap();
    assert_eq!((acc.model.events, acc.model.total), (2, 13));
    assert_eq!(log_rows(&store).await, 2);

    let before = dump(&store).await;
    let outbox_before = store.outbox_store().counts().await.unwrap();
    let head_before = store.head_position().await.unwrap();
    // A batch whose second event the projection refuses: nothing of it is written.
    let err = store
        .append(
            &a,
            ExpectedVersion::Exact(2),
            vec![ev("Deposited", 5), poison(1)],
        )
        .await
        .unwrap_err();
    match &err {
        Error::InlineProjection {
            projection,
            stream,
            source,
        } => {
            assert_eq!(projection, "ledger-inline");
            assert_eq!(stream, &a);
            let pe = source.downcast_ref::<ProjectionError>().unwrap();
            assert!(!pe.is_transient());
            assert!(err.to_string().contains("poison event"), "{err}");
        }
        other => panic!("not an inline projection error: {other:?}"),
    }
    assert_eq!(store.stream_version(&a).await.unwrap(), 2, "no event");
    assert_eq!(store.head_position().await.unwrap(), head_before);
    assert_eq!(dump(&store).await, before, "no read-model change");
    assert_eq!(
        store.outbox_store().counts().await.unwrap(),
        outbox_before,
        "no outbox message"
    );

    // An idempotent repeat of the first append runs no projection again.
    let repeat = store
        .append(
            &a,
            ExpectedVersion::NoStream,
            r.events
                .iter()
                .map(|e| NewEvent::new(e.event_type.clone(), e.payload.clone()).with_id(e.id))
                .collect(),
        )
        .await
        .unwrap();
    assert!(repeat.deduplicated);
    assert_eq!(dump(&store).await, before);

    // A projection that waits on something else than its read models: a typed error.
    ledger.pending.store(true, Ordering::SeqCst);
    let err = store
        .append(&a, ExpectedVersion::Exact(2), vec![ev("Deposited", 1)])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InlineProjection { .. })
            && err.to_string().contains("without waiting"),
        "{err}"
    );
    assert_eq!(store.stream_version(&a).await.unwrap(), 2);
    ledger.pending.store(false, Ordering::SeqCst);

    // The store works on afterwards.
    store
        .append(&a, ExpectedVersion::Exact(2), vec![ev("Deposited", 4)])
        .await
        .unwrap();
    assert_eq!(log_rows(&store).await, 3);
    drop(store);
    // The filter decides what an inline projection sees (another file: the two
    // projections write the same tables).
    let store = SqliteStore::builder(dir.path().join("deposits.db"))
        .inline(deposits)
        .unwrap()
        .open()
        .unwrap();
    store
        .append(
            &a,
            ExpectedVersion::NoStream,
            vec![ev("Withdrawn", 1), ev("Deposited", 2), ev("Withdrawn", 3)],
        )
        .await
        .unwrap();
    store
        .append(&a, ExpectedVersion::Exact(3), vec![ev("Withdrawn", 1)])
        .await
        .unwrap();
    assert_eq!(log_rows(&store).await, 1, "only the deposit");
    let types = ReadModelRepository::<TypeCount, _>::new(store.read_models());
    types.ensure_table().await.unwrap();
    assert_eq!(types.count(&Query::new()).await.unwrap(), 1);
}

#[tokio::test]
async fn inline_registration_refuses_bad_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.db");
    for bad in ["", "   ", "a\nb"] {
        let err = SqliteStore::builder(&path)
            .inline(Ledger::new(bad))
            .unwrap_err();
        assert!(matches!(err, Error::InvalidProjection { .. }), "{err:?}");
    }
    let err = SqliteStore::builder(&path)
        .inline(Ledger::new("same"))
        .unwrap()
        .inline(Ledger::new("same"))
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidProjection { name, .. } if name == "same"),
        "{err:?}"
    );
    assert!(!path.exists(), "nothing was opened or written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pause_and_resume_from_a_second_handle_act_on_the_running_worker() {
    let (dir, store) = temp_store();
    fill(&store, 4, 10, 0).await;
    let ledger = Ledger::new("ledger");
    let mut e = engine(&store, "node-a");
    e.add(
        SqliteProjectionTarget::new(&store, ledger.clone()),
        fast(16),
    )
    .unwrap();
    let handle = e.start(CancellationToken::new());
    until("catch-up", || caught_up(&store, "ledger")).await;

    // Another handle on the file (as another process would open it).
    let other = SqliteStore::open(dir.path().join("p.db")).unwrap();
    let control = SqliteControl::new(&other);
    let ops = ProjectionOps::new(other.clone(), Arc::new(control.clone()));
    let ids = ops.pause("ledger").await.unwrap();
    assert!(
        ops.wait(&ids, Duration::from_secs(20))
            .await
            .unwrap()
            .is_empty()
    );
    until("paused", || async {
        status(&control, "ledger").await.map(|s| s.state) == Some(RunState::Paused)
    })
    .await;
    let listed = ops.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].status.owner.as_deref(), Some("node-a"));
    assert_eq!(listed[0].lag_events, 0);
    let rows = log_rows(&other).await;
    fill(&other, 2, 5, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        log_rows(&other).await,
        rows,
        "a paused worker applies nothing"
    );
    let info = ops.list().await.unwrap();
    assert_eq!(
        info[0].lag_events, 10,
        "lag in events, seen from the other handle"
    );

    let ids = ops.resume("ledger").await.unwrap();
    assert!(
        ops.wait(&ids, Duration::from_secs(20))
            .await
            .unwrap()
            .is_empty()
    );
    until("caught up after resume", || caught_up(&other, "ledger")).await;
    assert_eq!(log_rows(&other).await, rows + 10);
    handle.shutdown().await;
    assert_eq!(dump(&store).await, clean_replay(&store, ledger).await);
}

/// One consistent look at the live tables (one read transaction): the labels of the
/// accounts and the number of log rows.
fn snapshot(path: &std::path::Path) -> (Vec<(String, i64)>, i64) {
    let mut raw = rusqlite::Connection::open(path).unwrap();
    raw.busy_timeout(Duration::from_secs(5)).unwrap();
    let tx = raw.transaction().unwrap();
    let labels: Vec<(String, i64)> = tx
        .prepare("SELECT label, COUNT(*) FROM rm_ledger_accounts GROUP BY label ORDER BY label")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let logs: i64 = tx
        .query_row("SELECT COUNT(*) FROM rm_ledger_log", [], |r| r.get(0))
        .unwrap();
    tx.commit().unwrap();
    (labels, logs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_is_blue_green_and_loses_or_repeats_no_concurrent_append() {
    let (dir, store) = temp_store();
    let path = dir.path().join("p.db");
    fill(&store, 5, 60, 0).await;
    let ledger = Ledger::new("ledger");
    let mut e = engine(&store, "a");
    e.add(
        SqliteProjectionTarget::new(&store, ledger.clone()),
        fast(16),
    )
    .unwrap();
    let handle = e.start(CancellationToken::new());
    until("catch-up", || caught_up(&store, "ledger")).await;
    let old = dump(&store).await;
    let old_logs = old["rm_ledger_log"].len() as i64;
    assert_eq!(old_logs, 300);

    // Rebuild with a new label, slowly (19 batches of 16, 25 ms each), from another
    // handle, while appends go on.
    ledger.set_label("v2");
    ledger.delay_ms.store(25, Ordering::SeqCst);
    let other = SqliteStore::open(&path).unwrap();
    let ops = ProjectionOps::new(other.clone(), Arc::new(SqliteControl::new(&other)));
    let ids = ops.rebuild("ledger").await.unwrap();
    let appender = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..20 {
                fill(&store, 2, 1, i).await;
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        })
    };
    let mut saw_old = 0;
    let mut saw_rebuilding = false;
    let mut saw_second_rebuild_refused = false;
    loop {
        let (labels, logs) = snapshot(&path);
        match labels.as_slice() {
            [(label, 5)] if label == "v1" => {
                // The complete old model, as it was when the rebuild started.
                assert_eq!(logs, old_logs, "readers see the complete old model");
                saw_old += 1;
            }
            [(label, _)] if label == "v2" => {
                assert!(
                    logs >= old_logs,
                    "the new model is complete when swapped in"
                );
                break;
            }
            other => panic!("a mixed or partial model is visible: {other:?}, {logs} log rows"),
        }
        if !saw_rebuilding
            && status(&SqliteControl::new(&other), "ledger")
                .await
                .is_some_and(|s| s.state == RunState::Rebuilding)
        {
            saw_rebuilding = true;
            // Shadow tables during the rebuild (unless it ended in the meantime).
            let shadows = shadow_tables(&other).len();
            assert!(
                shadows == 3 || snapshot(&path).0 == [("v2".to_owned(), 5)],
                "{shadows} shadow tables during the rebuild"
            );
            // A second rebuild while one runs: refused.
            let err = ops.rebuild("ledger").await.unwrap_err();
            assert!(
                matches!(&err, Error::RebuildInProgress { name } if name == "ledger"),
                "{err:?}"
            );
            saw_second_rebuild_refused = true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        saw_old > 3,
        "the old model was read during the rebuild ({saw_old} times)"
    );
    assert!(saw_rebuilding && saw_second_rebuild_refused);
    assert!(
        ops.wait(&ids, Duration::from_secs(20))
            .await
            .unwrap()
            .is_empty()
    );
    appender.await.unwrap();
    ledger.delay_ms.store(0, Ordering::SeqCst);
    until("caught up after the rebuild", || {
        caught_up(&store, "ledger")
    })
    .await;
    until("rebuild finished", || async {
        status(&SqliteControl::new(&store), "ledger")
            .await
            .is_some_and(|s| s.state == RunState::Running && s.rebuild_progress.is_none())
    })
    .await;
    handle.shutdown().await;

    assert!(shadow_tables(&store).is_empty(), "no shadow left");
    let rebuilt = dump(&store).await;
    assert_eq!(
        rebuilt["rm_ledger_log"].len(),
        300 + 40,
        "every append, once"
    );
    assert_eq!(rebuilt, clean_replay(&store, ledger.clone()).await);
    assert!(
        rebuilt["rm_ledger_accounts"]
            .iter()
            .all(|(doc, _)| doc.contains("\"v2\""))
    );
    // The live indexes carry their own names again, and a second rebuild works.
    let raw = rusqlite::Connection::open(&path).unwrap();
    let idx: Vec<String> = raw
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL AND name LIKE 'rm_%' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(idx, ["rm_ledger_accounts__total", "rm_ledger_log__stream"]);

    ledger.set_label("v3");
    let mut e = engine(&store, "a");
    e.add(
        SqliteProjectionTarget::new(&store, ledger.clone()),
        fast(64),
    )
    .unwrap();
    let handle = e.start(CancellationToken::new());
    let ops = ProjectionOps::new(store.clone(), Arc::new(SqliteControl::new(&store)));
    until("running", || async {
        status(&SqliteControl::new(&store), "ledger")
            .await
            .is_some_and(|s| s.state == RunState::Running)
    })
    .await;
    let ids = ops.rebuild("ledger").await.unwrap();
    assert!(
        ops.wait(&ids, Duration::from_secs(20))
            .await
            .unwrap()
            .is_empty()
    );
    until("the second rebuild", || async {
        snapshot(&path).0 == [("v3".to_owned(), 5)]
    })
    .await;
    until("caught up", || caught_up(&store, "ledger")).await;
    handle.shutdown().await;
    assert_eq!(dump(&store).await, clean_replay(&store, ledger).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_during_a_rebuild_resumes_into_the_shadow_tables() {
    let (dir, store) = temp_store();
    let path = dir.path().join("p.db");
    fill(&store, 4, 50, 0).await;
    let ledger = Ledger::new("ledger");
    let mut e = engine(&store, "a");
    e.add(
        SqliteProjectionTarget::new(&store, ledger.clone()),
        fast(10),
    )
    .unwrap();
    let handle = e.start(CancellationToken::new());
    until("catch-up", || caught_up(&store, "ledger")).await;

    ledger.set_label("v2");
    ledger.delay_ms.store(20, Ordering::SeqCst);
    let ops = ProjectionOps::new(store.clone(), Arc::new(SqliteControl::new(&store)));
    let ids = ops.rebuild("ledger").await.unwrap();
    assert!(
        ops.wait(&ids, Duration::from_secs(20))
            .await
            .unwrap()
            .is_empty()
    );
    until("half way", || async {
        let cp = store.load_checkpoint("ledger").await.unwrap();
        cp.is_some_and(|cp| cp >= Position::new(0, 60) && cp < Position::new(0, 150))
    })
    .await;
    // The process dies (no shutdown, no lease release).
    handle.abort();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(shadow_tables(&store).len(), 3);
    assert_eq!(
        snapshot(&path),
        (vec![("v1".to_owned(), 4)], 200),
        "live tables untouched"
    );
    let target = SqliteProjectionTarget::new(&store, ledger.clone());
    assert!(
        target.is_rebuilding().unwrap(),
        "the rebuild is recorded in the file"
    );

    // Another process starts (new owner, waits out nothing: lease of the dead one).
    let control = SqliteControl::new(&store);
    control.release("ledger", "a").await.unwrap();
    ledger.delay_ms.store(0, Ordering::SeqCst);
    let mut e = engine(&store, "b");
    e.add(target, fast(10)).unwrap();
    let handle = e.start(CancellationToken::new());
    until("swapped in", || async {
        snapshot(&path).0 == [("v2".to_owned(), 4)]
    })
    .await;
    until("caught up", || caught_up(&store, "ledger")).await;
    handle.shutdown().await;
    assert!(shadow_tables(&store).is_empty());
    assert!(
        !SqliteProjectionTarget::new(&store, ledger.clone())
            .is_rebuilding()
            .unwrap()
    );
    assert_eq!(dump(&store).await, clean_replay(&store, ledger).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_event_is_parked_in_sqlite_and_replayed_after_healing() {
    let (dir, store) = temp_store();
    fill(&store, 3, 10, 0).await;
    store
        .append(&sid("Acc-1"), ExpectedVersion::Any, vec![poison(99)])
        .await
        .unwrap();
    fill(&store, 3, 10, 1).await;
    let ledger = Ledger::new("ledger");
    ledger.fail_poison.store(true, Ordering::SeqCst);
    let mut e = engine(&store, "a");
    e.add(SqliteProjectionTarget::new(&store, ledger.clone()), fast(8))
        .unwrap();
    let handle = e.start(CancellationToken::new());
    until("catch-up", || caught_up(&store, "ledger")).await;

    // Parked in the file: another handle sees it, with its error.
    let other = SqliteStore::open(dir.path().join("p.db")).unwrap();
    let control = SqliteControl::new(&other);
    let parked = control.parked("ledger").await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].event.position, Position::new(0, 31));
    assert_eq!(parked[0].event.stream_id, sid("Acc-1"));
    assert!(
        parked[0].error.contains("poison event"),
        "{}",
        parked[0].error
    );
    let stored = other
        .read_feed(Position::new(0, 30), 1, &FeedFilter::all())
        .await
        .unwrap();
    assert_eq!(parked[0].event, stored.events[0], "the event as stored");
    assert_eq!(log_rows(&other).await, 60, "every other event applied");
    let ops = ProjectionOps::new(other.clone(), Arc::new(control.clone()));
    assert_eq!(ops.list().await.unwrap()[0].parked, 1);

    // Still failing: a replay keeps it parked and says so.
    let ids = ops.replay_parked("ledger").await.unwrap();
    let errors = ops.wait(&ids, Duration::from_secs(20)).await.unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(control.parked("ledger").await.unwrap().len(), 1);

    // Healed: the replay applies it, and unparks it.
    ledger.fail_poison.store(false, Ordering::SeqCst);
    let ids = ops.replay_parked("ledger").await.unwrap();
    assert!(
        ops.wait(&ids, Duration::from_secs(20))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(control.parked("ledger").await.unwrap().is_empty());
    assert_eq!(log_rows(&other).await, 61);
    handle.shutdown().await;
    // The same rows as a replay that never failed (the order of application differs,
    // so compare the per-event rows and the totals).
    let clean = clean_replay(&store, ledger).await;
    let built = dump(&store).await;
    assert_eq!(built["rm_ledger_log"], clean["rm_ledger_log"]);
    let totals = |d: &Dump| -> Vec<(String, i64, i64)> {
        d["rm_ledger_accounts"]
            .iter()
            .map(|(doc, _)| {
                let a: Account = serde_json::from_str(doc).unwrap();
                (a.id, a.events, a.total)
            })
            .collect()
    };
    assert_eq!(totals(&built), totals(&clean));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_checkpoint_read_never_restarts_from_zero() {
    let (dir, store) = temp_store();
    fill(&store, 4, 25, 0).await;
    let ledger = Ledger::new("ledger");
    let mut e = engine(&store, "a");
    e.add(
        SqliteProjectionTarget::new(&store, ledger.clone()),
        fast(16),
    )
    .unwrap();
    let handle = e.start(CancellationToken::new());
    until("catch-up", || caught_up(&store, "ledger")).await;
    handle.shutdown().await;
    let built = dump(&store).await;

    // Corrupt the checkpoint row, then start again.
    let raw = rusqlite::Connection::open(dir.path().join("p.db")).unwrap();
    let saved: String = raw
        .query_row(
            "SELECT position FROM mink_checkpoints WHERE name = 'ledger'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    raw.execute(
        "UPDATE mink_checkpoints SET position = 'not a position' WHERE name = 'ledger'",
        [],
    )
    .unwrap();
    let calls = ledger.calls.load(Ordering::SeqCst);
    let mut e = engine(&store, "a");
    e.add(
        SqliteProjectionTarget::new(&store, ledger.clone()),
        fast(16),
    )
    .unwrap();
    let handle = e.start(CancellationToken::new());
    let control = SqliteControl::new(&store);
    until("faulted", || async {
        status(&control, "ledger").await.is_some_and(|s| {
            s.state == RunState::Faulted
                && s.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("checkpoint"))
        })
    })
    .await;
    fill(&store, 1, 3, 5).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        ledger.calls.load(Ordering::SeqCst),
        calls,
        "nothing applied"
    );
    assert_eq!(dump(&store).await, built, "nothing re-applied from zero");
    assert!(control.parked("ledger").await.unwrap().is_empty());

    // Repaired: it goes on from where it was.
    raw.execute(
        "UPDATE mink_checkpoints SET position = ?1 WHERE name = 'ledger'",
        [&saved],
    )
    .unwrap();
    until("caught up after the repair", || caught_up(&store, "ledger")).await;
    handle.shutdown().await;
    assert_eq!(log_rows(&store).await, 103);
    assert_eq!(dump(&store).await, clean_replay(&store, ledger).await);
}

#[tokio::test]
async fn the_checkpoint_is_compared_and_set() {
    let (dir, store) = temp_store();
    fill(&store, 2, 20, 0).await;
    let other = SqliteStore::open(dir.path().join("p.db")).unwrap();
    let ledger = Ledger::new("ledger");
    // Two targets of one projection, as in two processes that both think they run it.
    let a = SqliteProjectionTarget::new(&store, ledger.clone());
    let b = SqliteProjectionTarget::new(&other, ledger.clone());
    assert_eq!(a.checkpoint().await.unwrap(), None);
    assert_eq!(b.checkpoint().await.unwrap(), None);
    let feed = store
        .read_feed(Position::START, 100, &FeedFilter::all())
        .await
        .unwrap()
        .events;
    b.apply_batch(&feed[..10], feed[9].position).await.unwrap();
    // `a` still starts at zero: it applies only what `b` did not (the insert of a log
    // row applied twice would fail).
    a.apply_batch(&feed[..25], feed[24].position).await.unwrap();
    assert_eq!(log_rows(&store).await, 25);
    assert_eq!(
        store.load_checkpoint("ledger").await.unwrap(),
        Some(feed[24].position)
    );
    // `b` is behind: its next batch (10..20) is all applied already.
    b.apply_batch(&feed[10..20], feed[19].position)
        .await
        .unwrap();
    assert_eq!(log_rows(&store).await, 25);
    assert_eq!(
        store.load_checkpoint("ledger").await.unwrap(),
        Some(feed[24].position),
        "never moved back"
    );
    // Moved back behind `a`'s back: its batch is refused (transient), nothing written.
    other
        .save_checkpoint("ledger", feed[4].position)
        .await
        .unwrap();
    let err = a
        .apply_batch(&feed[25..30], feed[29].position)
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("another process"), "{err}");
    assert_eq!(log_rows(&store).await, 25);
    // Re-reading the checkpoint (as a restarted worker does) resolves it.
    assert_eq!(a.checkpoint().await.unwrap(), Some(feed[4].position));
    other
        .save_checkpoint("ledger", feed[24].position)
        .await
        .unwrap();
    a.checkpoint().await.unwrap();
    a.apply_batch(&feed[25..30], feed[29].position)
        .await
        .unwrap();
    a.apply_batch(&feed[30..], feed[39].position).await.unwrap();
    assert_eq!(dump(&store).await, clean_replay(&store, ledger).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_typed_errors_and_changes_nothing() {
    let (_dir, store) = temp_store();
    fill(&store, 1, 3, 0).await;
    let mut e = engine(&store, "a");
    let err = e
        .add(
            SqliteProjectionTarget::new(&store, Ledger::new("")),
            fast(8),
        )
        .err()
        .expect("refused");
    assert!(matches!(err, Error::InvalidProjection { .. }), "{err:?}");
    e.add(
        SqliteProjectionTarget::new(&store, Ledger::new("ledger")),
        fast(8),
    )
    .unwrap();
    let err = e
        .add(
            SqliteProjectionTarget::new(&store, Ledger::new("ledger")),
            fast(8),
        )
        .err()
        .expect("refused");
    assert!(matches!(err, Error::InvalidProjection { .. }), "{err:?}");
    assert_eq!(e.names(), ["ledger"]);

    let ops = ProjectionOps::new(store.clone(), Arc::new(SqliteControl::new(&store)));
    let err = ops.pause("nope").await.unwrap_err();
    assert!(
        matches!(&err, Error::UnknownProjection { name } if name == "nope"),
        "{err:?}"
    );
    assert!(matches!(
        ops.rebuild("nope").await.unwrap_err(),
        Error::UnknownProjection { .. }
    ));
    let raw = rusqlite::Connection::open(store.path()).unwrap();
    let requests: i64 = raw
        .query_row("SELECT COUNT(*) FROM mink_projection_requests", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(requests, 0, "no request was queued");

    // A rebuild requested while one is pending: refused.
    let control = SqliteControl::new(&store);
    control
        .report(&ProjectionStatus {
            name: "idle".into(),
            state: RunState::Running,
            checkpoint: None,
            owner: None,
            last_error: None,
            parked: 0,
            rebuild_progress: None,
            updated_at: mink_es::now_micros(),
        })
        .await
        .unwrap();
    ops.rebuild("idle").await.unwrap();
    assert!(matches!(
        ops.rebuild("idle").await.unwrap_err(),
        Error::RebuildInProgress { .. }
    ));
    assert_eq!(control.pending("idle").await.unwrap().len(), 1);

    // A model declared twice with two declarations.
    struct Twice;
    impl mink_es::projection::ReadModelProjection for Twice {
        fn name(&self) -> &str {
            "twice"
        }
        fn models(&self) -> mink_es::Result<Vec<mink_es::readmodel::Schema>> {
            use mink_es::readmodel::{Field, Schema};
            Ok(vec![
                Schema::new("dup", "id", &[Field::text("id")])?,
                Schema::new("dup", "id", &[Field::text("id"), Field::integer("n")])?,
            ])
        }
        fn apply<'a>(
            &'a self,
            _: &'a dyn mink_es::readmodel::ReadModelStore,
            _: &'a [mink_es::StoredEvent],
        ) -> futures::future::BoxFuture<'a, Result<(), ProjectionError>> {
            Box::pin(async { Ok(()) })
        }
    }
    let err = SqliteStore::builder(store.path())
        .inline(Twice)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidProjection { .. }), "{err:?}");
    let err = SqliteProjectionTarget::new(&store, Twice)
        .checkpoint()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidProjection { .. }), "{err:?}");
    let tables: i64 = raw
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'rm_dup'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 0);
}

#[tokio::test]
async fn two_handles_share_statuses_requests_parked_events_and_leases() {
    let (dir, a) = temp_store();
    let b = SqliteStore::open(dir.path().join("p.db")).unwrap();
    let (ca, cb) = (SqliteControl::new(&a), SqliteControl::new(&b));

    let st = ProjectionStatus {
        name: "p".into(),
        state: RunState::Rebuilding,
        checkpoint: Some(Position::new(0, 7)),
        owner: Some("x".into()),
        last_error: Some("oops".into()),
        parked: 2,
        rebuild_progress: Some((Position::new(0, 7), Position::new(0, 9))),
        updated_at: mink_es::now_micros(),
    };
    ca.report(&st).await.unwrap();
    let mut early = st.clone();
    early.name = "a-first".into();
    ca.report(&early).await.unwrap();
    assert_eq!(cb.statuses().await.unwrap(), vec![early, st.clone()]);

    let id1 = cb.request("p", Command::Pause).await.unwrap();
    let id2 = cb
        .request(
            "p",
            Command::ResetTo {
                position: Position::new(0, 3),
            },
        )
        .await
        .unwrap();
    cb.request("q", Command::Resume).await.unwrap();
    assert!(id2 > id1);
    let pending = ca.pending("p").await.unwrap();
    assert_eq!(
        pending
            .iter()
            .map(|r| (r.id, r.command.clone()))
            .collect::<Vec<_>>(),
        [
            (id1, Command::Pause),
            (
                id2,
                Command::ResetTo {
                    position: Position::new(0, 3)
                }
            )
        ]
    );
    assert_eq!(cb.outcome(id1).await.unwrap(), None);
    ca.complete(id1, None).await.unwrap();
    ca.complete(id2, Some("failed")).await.unwrap();
    assert_eq!(cb.outcome(id1).await.unwrap(), Some(None));
    assert_eq!(cb.outcome(id2).await.unwrap(), Some(Some("failed".into())));
    assert!(cb.pending("p").await.unwrap().is_empty());
    assert_eq!(cb.outcome(999).await.unwrap(), None);

    fill(&a, 1, 3, 0).await;
    let feed = a
        .read_feed(Position::START, 10, &FeedFilter::all())
        .await
        .unwrap()
        .events;
    ca.park("p", &feed[2], "bad").await.unwrap();
    ca.park("p", &feed[0], "worse").await.unwrap();
    ca.park("p", &feed[0], "worst").await.unwrap();
    let parked = cb.parked("p").await.unwrap();
    assert_eq!(
        parked
            .iter()
            .map(|p| (p.event.clone(), p.error.as_str()))
            .collect::<Vec<_>>(),
        [(feed[0].clone(), "worst"), (feed[2].clone(), "bad")]
    );
    assert!(cb.parked("other").await.unwrap().is_empty());
    cb.unpark("p", &[feed[0].position]).await.unwrap();
    assert_eq!(ca.parked("p").await.unwrap().len(), 1);

    let ttl = Duration::from_millis(150);
    assert!(ca.acquire("p", "node-a", ttl).await.unwrap());
    assert!(!cb.acquire("p", "node-b", ttl).await.unwrap());
    assert!(ca.acquire("p", "node-a", ttl).await.unwrap(), "renewal");
    cb.release("p", "node-b").await.unwrap();
    assert!(
        !cb.acquire("p", "node-b", ttl).await.unwrap(),
        "not released by another"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        cb.acquire("p", "node-b", ttl).await.unwrap(),
        "expired: taken over"
    );
    assert!(!ca.acquire("p", "node-a", ttl).await.unwrap());
    cb.release("p", "node-b").await.unwrap();
    assert!(ca.acquire("p", "node-a", ttl).await.unwrap(), "released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_engine_holds_the_lease_and_another_takes_over() {
    let (dir, a) = temp_store();
    fill(&a, 3, 10, 0).await;
    let b = SqliteStore::open(dir.path().join("p.db")).unwrap();
    let ledger = Ledger::new("ledger");
    let mut opts = fast(8);
    opts.lease_ttl = Duration::from_millis(400);
    let mut ea = engine(&a, "node-a");
    ea.add(
        SqliteProjectionTarget::new(&a, ledger.clone()),
        opts.clone(),
    )
    .unwrap();
    let ha = ea.start(CancellationToken::new());
    until("catch-up", || caught_up(&a, "ledger")).await;
    let mut eb = engine(&b, "node-b");
    eb.add(SqliteProjectionTarget::new(&b, ledger.clone()), opts)
        .unwrap();
    let hb = eb.start(CancellationToken::new());
    let control = SqliteControl::new(&b);
    until("standby", || async {
        control
            .statuses()
            .await
            .unwrap()
            .iter()
            .any(|s| s.state == RunState::Standby && s.owner.as_deref() == Some("node-b"))
    })
    .await;
    // node-a dies without releasing its lease: node-b takes over once it expires.
    ha.abort();
    fill(&b, 3, 5, 1).await;
    until("taken over", || caught_up(&b, "ledger")).await;
    hb.shutdown().await;
    assert_eq!(log_rows(&b).await, 45);
    assert_eq!(dump(&b).await, clean_replay(&b, ledger).await);
}

/// The shared conformance suite of `mink-testing` for control stores: two handles
/// (two sets of connections) on one fresh file, as two processes would open it.
struct SqliteControls {
    dirs: std::sync::Mutex<Vec<tempfile::TempDir>>,
}

impl mink_testing::control::ControlFactory for SqliteControls {
    async fn create(&self) -> mink_testing::control::Controls {
        let (dir, a) = temp_store();
        let b = SqliteStore::open(a.path()).unwrap();
        self.dirs.lock().unwrap().push(dir);
        mink_testing::control::Controls::two(SqliteControl::new(&a), SqliteControl::new(&b))
    }
}

mod control_conformance {
    mink_testing::control_tests!(async {
        Some(super::SqliteControls {
            dirs: std::sync::Mutex::new(Vec::new()),
        })
    });
}
