//! Exactly-once under `kill -9`: a process running an async projection over a
//! pre-filled store is killed in the middle of a batch, several times, and restarted
//! until it catches up; the read model then equals the one a clean replay builds in a
//! fresh file, and after every kill the read model holds exactly the events up to the
//! checkpoint (never half a batch).
//!
//! The test re-executes its own binary to run [`child_run_projection`] in a child
//! process (the child "test" is `#[ignore]`d and does nothing unless [`DB_ENV`] is set).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mink_es::projection::{AsyncOptions, PoisonPolicy, ProjectionControl, ProjectionEngine};
use mink_es::{
    CheckpointStore, ExpectedVersion, FeedFilter, FeedReader, NewEvent, Position, StreamWriter,
};
use mink_sqlite::{SqliteControl, SqliteProjectionTarget, SqliteStore};
use support::*;
use tokio_util::sync::CancellationToken;

/// Carries the database path to the child.
const DB_ENV: &str = "MINK_SQLITE_PROJECTION_KILL_DB";
/// Events in the store before the projection starts.
const EVENTS: usize = 20_000;
/// Events per batch.
const BATCH: usize = 100;
/// The projection's name.
const NAME: &str = "ledger";

/// The child: runs the projection until it is caught up (then prints `DONE`), printing
/// `MID <position>` half way through every batch, inside its transaction, and taking a
/// little time there so that a kill lands while the transaction is open.
#[test]
#[ignore = "run as a child process by kill_9_mid_batch_then_restart_gives_the_clean_replay"]
fn child_run_projection() {
    let Ok(path) = std::env::var(DB_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = SqliteStore::open(&path).unwrap();
        let ledger = Ledger::new(NAME);
        *ledger.midway.lock() = Some(Box::new(|events: &[mink_es::StoredEvent]| {
            let mut out = std::io::stdout().lock();
            writeln!(out, "MID {}", events[events.len() / 2].position).unwrap();
            out.flush().unwrap();
            std::thread::sleep(Duration::from_millis(15));
        }));
        let options = AsyncOptions {
            batch_size: BATCH,
            poll_interval: Duration::from_millis(20),
            retry_budget: 3,
            base_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(50),
            poison_policy: PoisonPolicy::Stop,
            lease_ttl: Duration::from_secs(30),
        };
        // The same owner in every child: a restarted child retakes the lease at once.
        let mut engine = ProjectionEngine::new(store.clone(), Arc::new(SqliteControl::new(&store)))
            .owner("kill-child");
        engine
            .add(SqliteProjectionTarget::new(&store, ledger), options)
            .unwrap();
        let handle = engine.start(CancellationToken::new());
        let deadline = Instant::now() + Duration::from_secs(120);
        while !caught_up(&store, NAME).await {
            assert!(Instant::now() < deadline, "the child did not catch up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        handle.shutdown().await;
        let mut out = std::io::stdout().lock();
        writeln!(out, "DONE").unwrap();
        out.flush().unwrap();
    });
}

/// Starts a child; its stdout lines arrive on the returned channel.
fn spawn_child(path: &std::path::Path) -> (Child, mpsc::Receiver<String>) {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "child_run_projection",
            "--nocapture",
            "--ignored",
            "--test-threads=1",
        ])
        .env(DB_ENV, path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// The stored checkpoint, and the number of events the read model holds (one log row
/// per applied event).
async fn progress(path: &std::path::Path) -> (u64, u64) {
    let store = SqliteStore::open(path).unwrap();
    let cp = store
        .load_checkpoint(NAME)
        .await
        .unwrap()
        .unwrap_or(Position::START);
    (cp.minor(), log_rows(&store).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_batch_then_restart_gives_the_clean_replay() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kill.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        for i in 0..EVENTS / 100 {
            let events: Vec<NewEvent> = (0..100)
                .map(|j| {
                    let t = if (i + j) % 3 == 0 {
                        "Withdrawn"
                    } else {
                        "Deposited"
                    };
                    ev(t, ((i * 31 + j * 7) % 97) as i64)
                })
                .collect();
            store
                .append(
                    &sid(&format!("Acc-{}", i % 20)),
                    ExpectedVersion::Any,
                    events,
                )
                .await
                .unwrap();
        }
        assert_eq!(
            store.head_position().await.unwrap(),
            Position::new(0, EVENTS as u64)
        );
    }

    // Kill the child half way through its n-th batch, for several n: each run resumes
    // where the last one stopped.
    let mut last = 0;
    for (round, kill_at) in [3usize, 5, 8, 13, 21].into_iter().enumerate() {
        let (mut child, lines) = spawn_child(&path);
        let mut mids = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut killed_at = None;
        while killed_at.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.starts_with("MID ") => {
                    mids += 1;
                    if mids == kill_at {
                        // SIGKILL, with the batch's transaction open (the child sleeps
                        // in it after printing).
                        child.kill().unwrap();
                        killed_at = Some(line);
                    }
                }
                Ok(line) => assert_ne!(line, "DONE", "caught up before the kill"),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("round {round}: the child printed {mids} batches before {e:?}");
                }
            }
        }
        let status = child.wait().unwrap();
        assert!(!status.success(), "killed: {status:?}");
        let (cp, rows) = progress(&path).await;
        assert_eq!(
            rows, cp,
            "round {round}: the read model holds exactly the events up to the checkpoint \
             (killed at {killed_at:?})"
        );
        assert_eq!(cp % BATCH as u64, 0, "whole batches only");
        // The batch being applied when the kill came is the one after the checkpoint,
        // and none of it was kept.
        let mid: u64 = killed_at
            .as_deref()
            .and_then(|l| l.strip_prefix("MID "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            cp < mid && mid <= cp + BATCH as u64,
            "round {round}: killed in the batch after the checkpoint ({cp}, mid {mid})"
        );
        assert!(cp > last, "round {round}: progress ({last} -> {cp})");
        assert!(cp < EVENTS as u64);
        last = cp;
    }

    // Restart until caught up.
    let (mut child, lines) = spawn_child(&path);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line == "DONE" => break,
            Ok(_) => {}
            Err(e) => {
                let _ = child.kill();
                panic!("the last child did not catch up: {e:?}");
            }
        }
    }
    assert!(child.wait().unwrap().success());

    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(progress(&path).await, (EVENTS as u64, EVENTS as u64));
    let control = SqliteControl::new(&store);
    assert!(control.parked(NAME).await.unwrap().is_empty());
    let built = dump(&store).await;
    let clean = clean_replay(&store, Ledger::new(NAME)).await;
    assert_eq!(built.len(), clean.len());
    for (table, rows) in &clean {
        assert_eq!(built[table].len(), rows.len(), "{table}: row count");
        assert_eq!(&built[table], rows, "{table}: rows and versions");
    }
    assert_eq!(built["rm_ledger_log"].len(), EVENTS);
    let feed = store
        .read_feed(Position::START, 1, &FeedFilter::all())
        .await
        .unwrap();
    assert_eq!(feed.events.len(), 1, "the events are intact");
}
