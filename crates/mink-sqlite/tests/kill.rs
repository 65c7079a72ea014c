//! Durability under `kill -9`: every append the store acknowledged is still there after
//! the writing process is killed mid-flight, and the file reopens cleanly.
//!
//! The test re-executes its own test binary to run [`child_append_loop`] in a child
//! process (the child "test" is `#[ignore]`d and does nothing unless the environment
//! variable [`DB_ENV`] is set).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mink_es::{
    EventId, ExpectedVersion, FeedFilter, FeedReader, NewEvent, Position, StreamId, StreamReader,
    StreamWriter,
};
use mink_sqlite::SqliteStore;

/// Carries the database path to the child.
const DB_ENV: &str = "MINK_SQLITE_KILL_TEST_DB";
/// Acknowledged events to wait for before killing the child.
const ACKS_BEFORE_KILL: usize = 2000;
/// The streams the child appends to.
const STREAMS: usize = 4;

fn stream(i: usize) -> StreamId {
    StreamId::new(format!("Kill-{i}")).unwrap()
}

/// The child: appends until killed (single events and batches of 5, round-robin over a
/// few streams, with exact expected versions) and prints `ACK <id>` for every event of
/// every acknowledged append, flushing after each append.
#[test]
#[ignore = "run as a child process by kill_9_loses_no_acknowledged_append"]
fn child_append_loop() {
    let Ok(path) = std::env::var(DB_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = SqliteStore::open(&path).unwrap();
        let mut versions = [0u64; STREAMS];
        let stdout = std::io::stdout();
        // A safety net: the parent kills the child long before this.
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut n = 0u64;
        while Instant::now() < deadline {
            let k = (n % STREAMS as u64) as usize;
            let size = if n.is_multiple_of(7) { 5 } else { 1 };
            let batch: Vec<NewEvent> = (0..size)
                .map(|i| NewEvent::json("Tick", &serde_json::json!({ "n": n, "i": i })).unwrap())
                .collect();
            let ids: Vec<EventId> = batch.iter().map(|e| e.id).collect();
            let r = store
                .append(&stream(k), ExpectedVersion::Exact(versions[k]), batch)
                .await
                .unwrap();
            versions[k] = r.version;
            let mut out = stdout.lock();
            for id in ids {
                writeln!(out, "ACK {id}").unwrap();
            }
            out.flush().unwrap();
            n += 1;
        }
    });
}

#[tokio::test]
async fn kill_9_loses_no_acknowledged_append() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kill.db");
    // Create the file first, so that the child only appends.
    drop(SqliteStore::open(&path).unwrap());

    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "child_append_loop",
            "--nocapture",
            "--ignored",
            "--test-threads=1",
        ])
        .env(DB_ENV, &path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();

    // Read acknowledgements on a thread, until the pipe closes.
    let (tx, rx) = mpsc::channel::<EventId>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(id) = line.strip_prefix("ACK ")
                && let Ok(uuid) = id.trim().parse::<mink_es::Uuid>()
                && tx.send(EventId::from_uuid(uuid)).is_err()
            {
                break;
            }
        }
    });

    let mut acked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.len() < ACKS_BEFORE_KILL {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(id) => acked.push(id),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the child acknowledged only {} events before {e:?}",
                    acked.len()
                );
            }
        }
    }
    // SIGKILL, most likely in the middle of an append: the child appends flat out.
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child was killed: {status:?}");
    // What it acknowledged before dying counts too.
    reader.join().unwrap();
    acked.extend(rx.try_iter());

    let store = SqliteStore::open(&path).unwrap();
    let page = store
        .read_feed(Position::START, usize::MAX, &FeedFilter::all())
        .await
        .unwrap();
    let stored: HashSet<EventId> = page.events.iter().map(|e| e.id).collect();
    let missing = acked.iter().filter(|id| !stored.contains(id)).count();
    assert_eq!(missing, 0, "acknowledged events lost by kill -9");
    for (i, e) in page.events.iter().enumerate() {
        assert_eq!(
            e.position,
            Position::new(0, i as u64 + 1),
            "dense positions"
        );
    }
    let mut in_streams = 0;
    for i in 0..STREAMS {
        let s = stream(i);
        let events = store.read_stream(&s, 1, usize::MAX).await.unwrap();
        for (j, e) in events.iter().enumerate() {
            assert_eq!(e.version, j as u64 + 1, "contiguous versions in {s}");
        }
        in_streams += events.len();
    }
    assert_eq!(in_streams, page.events.len());
    println!(
        "kill -9: all {} acknowledged events found among {} stored \
         ({} committed but not acknowledged); versions contiguous in {STREAMS} streams",
        acked.len(),
        page.events.len(),
        page.events.len() - acked.len(),
    );
    // The recovered file takes appends again.
    let s = stream(0);
    let v = store.stream_version(&s).await.unwrap();
    store
        .append(
            &s,
            ExpectedVersion::Exact(v),
            vec![NewEvent::new("After", "{}")],
        )
        .await
        .unwrap();
}
