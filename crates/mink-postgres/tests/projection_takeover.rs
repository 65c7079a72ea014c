//! Two engines in two OS processes run the same projections against one schema
//! (`MINK_POSTGRES_URL`): exactly one is active per projection and partition; the
//! active one is killed with SIGKILL in the middle of its batches; the other takes
//! over within a bounded time, and the read models equal a clean replay.
//!
//! The processes are this test binary, run again with `child_engine` as the only test
//! and the engine's settings in the environment.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/counts.rs"]
mod counts;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use counts::{Counts, Main, Second, all_events, fill, models_of, replay, wait_for};
use mink_es::projection::{
    AsyncOptions, PoisonPolicy, ProjectionControl, ProjectionEngine, RunState,
};
use mink_es::{CheckpointStore, FeedFilter, FeedReader};
use mink_postgres::sqlx::{self, AssertSqlSafe};
use mink_postgres::{PgEventStore, PgProjectionTarget};
use tokio_util::sync::CancellationToken;

const LEASE_TTL: Duration = Duration::from_millis(1500);
const POLL: Duration = Duration::from_millis(50);
const PROJECTION: &str = "takeover";
const PARTITIONED: &str = "takeover_p";
const PARTITIONS: u32 = 4;

fn options() -> AsyncOptions {
    AsyncOptions {
        batch_size: 10,
        poll_interval: POLL,
        retry_budget: 3,
        base_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(50),
        poison_policy: PoisonPolicy::Stop,
        lease_ttl: LEASE_TTL,
    }
}

fn names() -> Vec<String> {
    let mut n = vec![PROJECTION.to_owned()];
    n.extend((0..PARTITIONS).map(|i| format!("{PARTITIONED}#{i}of{PARTITIONS}")));
    n
}

/// The engine of a child process: runs until killed (or two minutes pass).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by projection_takeover as a child process"]
async fn child_engine() {
    let (Ok(url), Ok(schema), Ok(owner)) = (
        std::env::var("MINK_POSTGRES_URL"),
        std::env::var("MINK_TAKEOVER_SCHEMA"),
        std::env::var("MINK_TAKEOVER_OWNER"),
    ) else {
        return;
    };
    let store = PgEventStore::builder(&url)
        .schema(&schema)
        .max_connections(8)
        .build()
        .await
        .unwrap();
    let mut single = Counts::<Main>::named(PROJECTION);
    single.by = owner.clone();
    single
        .delay_ms
        .store(15, std::sync::atomic::Ordering::SeqCst);
    let mut parts = Counts::<Second>::named(PARTITIONED);
    parts.by = owner.clone();
    parts
        .delay_ms
        .store(15, std::sync::atomic::Ordering::SeqCst);
    let mut engine = ProjectionEngine::new(store.clone(), Arc::new(store.projection_control()))
        .owner(owner.clone());
    engine
        .add(PgProjectionTarget::new(&store, single).unwrap(), options())
        .unwrap();
    engine
        .add_partitioned(
            PARTITIONED,
            PARTITIONS,
            PgProjectionTarget::partitions(&store, parts).unwrap(),
            options(),
        )
        .unwrap();
    let cancel = CancellationToken::new();
    let handle = engine.start(cancel.clone());
    println!("child {owner} started");
    tokio::time::sleep(Duration::from_secs(120)).await;
    handle.shutdown().await;
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(url: &str, schema: &str, owner: &str) -> Killed {
    let exe = std::env::current_exe().unwrap();
    let child = Command::new(exe)
        .args([
            "--exact",
            "child_engine",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("MINK_POSTGRES_URL", url)
        .env("MINK_TAKEOVER_SCHEMA", schema)
        .env("MINK_TAKEOVER_OWNER", owner)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    Killed(child)
}

/// Who holds each lease (unexpired), by name.
async fn holders(store: &PgEventStore) -> HashMap<String, String> {
    let rows: Vec<(String, String)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT name::text, owner FROM {}.mink_projection_leases WHERE expires_at > clock_timestamp()",
        store.schema().quoted()
    )))
    .fetch_all(store.pool())
    .await
    .unwrap();
    rows.into_iter().collect()
}

async fn states(store: &PgEventStore) -> HashMap<String, (RunState, Option<String>)> {
    store
        .projection_control()
        .statuses()
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.name, (s.state, s.owner)))
        .collect()
}

async fn caught_up(store: &PgEventStore, secs: u64) {
    wait_for("every projection to catch up", secs, || async {
        let head = store.head_position().await.unwrap();
        for n in names() {
            let cp = store.load_checkpoint(&n).await.unwrap();
            if cp.is_none_or(|cp| cp < head) {
                return false;
            }
        }
        true
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_process_is_active_and_another_takes_over_after_kill_9() {
    let _g = common::FEED_LOCK.lock().await;
    let Some(url) = common::url() else { return };
    let schemas = common::Schemas::new(&url);
    let store = common::store_with(&url, &schemas, |b| b.max_connections(8)).await;
    let schema = store.schema().as_str().to_owned();
    fill(&store, "Acc", 20, 10, 5).await;

    // Process A starts and becomes active for every projection and partition.
    let mut a = spawn(&url, &schema, "A");
    wait_for("A to hold every lease", 60, || async {
        let h = holders(&store).await;
        names()
            .iter()
            .all(|n| h.get(n).map(String::as_str) == Some("A"))
    })
    .await;
    caught_up(&store, 60).await;

    // Process B starts and stands by: A keeps every lease, and B reports standby.
    let mut b = spawn(&url, &schema, "B");
    wait_for("B to report standby everywhere", 60, || async {
        let s = states(&store).await;
        names().iter().all(|n| {
            s.get(n)
                .is_some_and(|(st, o)| *st == RunState::Standby && o.as_deref() == Some("B"))
        })
    })
    .await;
    // While both run, new events are applied by A alone.
    fill(&store, "Mid", 8, 5, 1).await;
    caught_up(&store, 60).await;
    let h = holders(&store).await;
    assert!(
        names()
            .iter()
            .all(|n| h.get(n).map(String::as_str) == Some("A")),
        "{h:?}"
    );
    let by: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT DISTINCT mink_doc::json->>'by' FROM {s}.rm_ledger UNION \
         SELECT DISTINCT mink_doc::json->>'by' FROM {s}.rm_p_ledger",
        s = store.schema().quoted()
    )))
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(by, ["A"], "only A applied events");

    // Events keep coming; A is killed in the middle of its (slowed) batches.
    let writer = {
        let store = store.clone();
        tokio::spawn(async move { fill(&store, "Late", 10, 12, 1).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.0.kill().unwrap(); // SIGKILL
    let killed = Instant::now();
    a.0.wait().unwrap();

    // B takes over every projection and partition within the bound: the lease
    // expires at most LEASE_TTL after A's last renewal, and a standby tries again
    // every LEASE_TTL / 4.
    let bound = LEASE_TTL + LEASE_TTL / 4 + 2 * POLL + Duration::from_millis(700);
    wait_for("B to take over", 30, || async {
        let s = states(&store).await;
        names().iter().all(|n| {
            s.get(n)
                .is_some_and(|(st, o)| *st == RunState::Running && o.as_deref() == Some("B"))
        })
    })
    .await;
    let took = killed.elapsed();
    eprintln!(
        "B took over {} names {took:?} after the kill (bound {bound:?})",
        names().len()
    );
    assert!(
        took <= bound,
        "took over after {took:?}, more than {bound:?}"
    );
    let h = holders(&store).await;
    assert!(
        names()
            .iter()
            .all(|n| h.get(n).map(String::as_str) == Some("B")),
        "{h:?}"
    );

    writer.await.unwrap();
    caught_up(&store, 60).await;
    b.0.kill().unwrap();
    b.0.wait().unwrap();

    // Every event applied exactly once, in both projections.
    let events = all_events(&store, &FeedFilter::all()).await;
    let single = Counts::<Main>::named(PROJECTION);
    let parts = Counts::<Second>::named(PARTITIONED);
    let read = store.read_models();
    let got = models_of::<Main, _>(&read).await;
    assert_eq!(got.1.len(), events.len());
    assert_eq!(
        got,
        replay(&single, &events).await,
        "{PROJECTION} equals a clean replay"
    );
    let got = models_of::<Second, _>(&read).await;
    assert_eq!(got.1.len(), events.len());
    assert_eq!(
        got,
        replay(&parts, &events).await,
        "{PARTITIONED} equals a clean replay"
    );
    let by: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT DISTINCT mink_doc::json->>'by' FROM {s}.rm_ledger ORDER BY 1",
        s = store.schema().quoted()
    )))
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(by, ["A", "B"], "A applied before the kill, B after");
    assert!(
        store
            .projection_control()
            .statuses()
            .await
            .unwrap()
            .iter()
            .all(|s| s.last_error.is_none() || s.owner.as_deref() == Some("B")),
    );
}
