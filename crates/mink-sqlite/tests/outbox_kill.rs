//! At-least-once delivery under `kill -9`: a process delivering outbox messages is killed
//! mid-run; a new processor finishes the job. No message is lost, a redelivery carries
//! the message's id, and each stream's messages are first delivered in order.
//!
//! The test re-executes its own test binary to run [`child_outbox_processor`] in a
//! child process (the child "test" is `#[ignore]`d and does nothing unless the
//! environment variable [`DB_ENV`] is set). The publisher of both processes appends one
//! line per delivery (`<message id> <stream> <version>`) to a log file opened with
//! `O_APPEND`, in one `write` before `publish` returns `Ok`: a line in the log is a
//! delivery the receiver got, whatever happens to the process afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mink_es::outbox::{
    MessageStatus, Outbox, OutboxMessage, OutboxProcessor, OutboxStore, ProcessorConfig,
    PublishError, Publisher, Route,
};
use mink_es::{ExpectedVersion, NewEvent, StreamId, StreamWriter, Uuid};
use mink_sqlite::{SqliteConfig, SqliteStore};

/// Carries the database path to the child.
const DB_ENV: &str = "MINK_SQLITE_OUTBOX_KILL_DB";
/// Carries the delivery log's path to the child.
const LOG_ENV: &str = "MINK_SQLITE_OUTBOX_KILL_LOG";
/// Messages in the outbox before the child starts.
const MESSAGES: usize = 2000;
/// The streams they are spread over.
const STREAMS: usize = 50;
/// Deliveries to wait for before killing the child.
const KILL_AFTER: usize = 300;
/// The destination every message goes to.
const DESTINATION: &str = "sink";
/// The lease of both processors: what a killed processor's messages wait for.
const LEASE: Duration = Duration::from_secs(2);

fn stream(i: usize) -> StreamId {
    StreamId::new(format!("Kill-{i}")).unwrap()
}

/// Delivers by appending a line to the log, then waits `after` (an acknowledgement
/// from a slow broker) before reporting success.
struct LogPublisher {
    log: std::fs::File,
    after: Duration,
}

impl LogPublisher {
    fn open(path: &Path, after: Duration) -> Self {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        LogPublisher { log, after }
    }
}

impl Publisher for LogPublisher {
    fn publish<'a>(&'a self, m: &'a OutboxMessage) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async move {
            let line = format!("{} {} {}\n", m.id, m.stream_id, m.stream_version);
            // One write on an O_APPEND file: the line is whole, and in the log
            // (the page cache) before the delivery is reported.
            (&self.log)
                .write_all(line.as_bytes())
                .map_err(PublishError::retryable)?;
            if !self.after.is_zero() {
                tokio::time::sleep(self.after).await;
            }
            Ok(())
        })
    }
}

/// The future type of [`Publisher`] (`futures::future::BoxFuture`).
type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

fn processor_config(owner: &str) -> ProcessorConfig {
    ProcessorConfig {
        owner: owner.into(),
        batch_size: 16,
        lease: LEASE,
        max_attempts: 10,
        base_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(50),
        poll_interval: Duration::from_millis(10),
        ..ProcessorConfig::default()
    }
}

/// The child: delivers the outbox until killed.
#[test]
#[ignore = "run as a child process by kill_9_mid_delivery_loses_no_message"]
fn child_outbox_processor() {
    let (Ok(db), Ok(log)) = (std::env::var(DB_ENV), std::env::var(LOG_ENV)) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = SqliteStore::open(&db).unwrap();
        let p = OutboxProcessor::new(Arc::new(store.outbox_store()))
            .publisher(
                DESTINATION,
                LogPublisher::open(Path::new(&log), Duration::from_millis(3)),
            )
            .config(processor_config("child"));
        // A safety net: the parent kills the child long before this.
        let cancel = tokio_util::sync::CancellationToken::new();
        let _ = tokio::time::timeout(Duration::from_secs(120), p.run(cancel)).await;
    });
}

/// The log's complete lines.
fn read_log(path: &Path) -> Vec<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => text.lines().map(str::to_owned).collect(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_delivery_loses_no_message() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("outbox-kill.db");
    let log = dir.path().join("deliveries.log");

    // The outbox, filled before the child starts: MESSAGES events round-robin over
    // STREAMS streams, one message each.
    let mut expected: HashMap<Uuid, (String, u64)> = HashMap::new();
    {
        let store = SqliteStore::open_with_outbox(
            &db,
            SqliteConfig::default(),
            Outbox::new().route(Route::all(DESTINATION)).unwrap(),
        )
        .unwrap();
        for n in 0..MESSAGES {
            let s = stream(n % STREAMS);
            let r = store
                .append(
                    &s,
                    ExpectedVersion::Exact((n / STREAMS) as u64),
                    vec![NewEvent::json("Tick", &serde_json::json!({ "n": n })).unwrap()],
                )
                .await
                .unwrap();
            let e = &r.events[0];
            expected.insert(
                OutboxMessage::id_for(e.id, DESTINATION),
                (s.to_string(), e.version),
            );
        }
        assert_eq!(
            store.outbox_store().counts().await.unwrap().pending,
            MESSAGES as u64
        );
    }

    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "child_outbox_processor",
            "--nocapture",
            "--ignored",
            "--test-threads=1",
        ])
        .env(DB_ENV, &db)
        .env(LOG_ENV, &log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if read_log(&log).len() >= KILL_AFTER {
            break;
        }
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the child delivered only {} messages", read_log(&log).len());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    // SIGKILL, in the middle of a round: the child delivers flat out.
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child was killed: {status:?}");
    let by_child = read_log(&log).len();

    // A new processor (another owner) finishes the job, once the dead one's leases
    // expire.
    let store = SqliteStore::open(&db).unwrap();
    let outbox = store.outbox_store();
    let left = outbox.counts().await.unwrap();
    assert!(left.pending > 0, "the child was killed mid-run: {left:?}");
    let p = OutboxProcessor::new(Arc::new(outbox.clone()))
        .publisher(DESTINATION, LogPublisher::open(&log, Duration::ZERO))
        .config(processor_config("parent"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = p.run_once().await.unwrap();
        if r.claimed == 0 {
            if outbox.counts().await.unwrap().pending == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "the outbox did not drain");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // What the receiver got.
    let lines = read_log(&log);
    let mut first_seen: HashSet<Uuid> = HashSet::new();
    let mut firsts_by_stream: HashMap<String, Vec<u64>> = HashMap::new();
    let mut redelivered: HashSet<Uuid> = HashSet::new();
    for line in &lines {
        let mut parts = line.split(' ');
        let (Some(id), Some(s), Some(v), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            panic!("a torn line in the log: {line:?}");
        };
        let id: Uuid = id.parse().unwrap();
        let version: u64 = v.parse().unwrap();
        assert_eq!(
            expected.get(&id),
            Some(&(s.to_owned(), version)),
            "a delivery carries its message's id, stream and version: {line}"
        );
        if first_seen.insert(id) {
            firsts_by_stream
                .entry(s.to_owned())
                .or_default()
                .push(version);
        } else {
            redelivered.insert(id);
        }
    }
    let lost = expected
        .keys()
        .filter(|id| !first_seen.contains(id))
        .count();
    assert_eq!(lost, 0, "messages never delivered");
    assert_eq!(first_seen.len(), MESSAGES);
    assert_eq!(firsts_by_stream.len(), STREAMS);
    for (s, versions) in &firsts_by_stream {
        let in_order: Vec<u64> = (1..=(MESSAGES / STREAMS) as u64).collect();
        assert_eq!(
            versions, &in_order,
            "first deliveries of {s} in version order"
        );
    }
    // A redelivered message was claimed again: its lost attempt counted.
    for id in &redelivered {
        let (status, attempts) = outbox.status(*id).await.unwrap().unwrap();
        assert_eq!(status, MessageStatus::Delivered);
        assert!(attempts >= 2, "{id}: {attempts} attempts");
    }
    let counts = outbox.counts().await.unwrap();
    assert_eq!((counts.delivered, counts.dead), (MESSAGES as u64, 0));
    println!(
        "outbox kill -9: {MESSAGES} messages over {STREAMS} streams; the child delivered \
         {by_child} before SIGKILL, {} were left pending; received {} deliveries, {} distinct \
         messages, {} duplicates ({} messages redelivered, each with its id); lost 0; first \
         deliveries in version order in all {STREAMS} streams",
        left.pending,
        lines.len(),
        first_seen.len(),
        lines.len() - first_seen.len(),
        redelivered.len(),
    );
}
