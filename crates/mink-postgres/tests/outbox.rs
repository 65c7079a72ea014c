//! The transactional outbox on PostgreSQL (`MINK_POSTGRES_URL`): the shared outbox
//! conformance suite of `mink-testing`, then what only a server shared by several
//! processes can show.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use mink_es::outbox::publisher::RecordingPublisher;
use mink_es::outbox::store::OutboxCounts;
use mink_es::outbox::{
    Claimed, MessageStatus, Outbox, OutboxMessage, OutboxProcessor, OutboxStore, ProcessorConfig,
    PublishError, Publisher, Route,
};
use mink_es::{
    Error, ExpectedVersion, MemoryStore, NewEvent, StreamId, StreamReader, StreamWriter,
};
use mink_postgres::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use mink_postgres::sqlx::{self, AssertSqlSafe};
use mink_postgres::{PgEventStore, PgOutboxStore, SchemaName};
use mink_testing::rng::Rng;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The future type of [`Publisher`] (`futures::future::BoxFuture`).
type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// A fresh schema per store, dropped with the factory.
struct PgOutboxFactory {
    url: String,
    schemas: common::Schemas,
}

impl mink_testing::outbox::OutboxFactory for PgOutboxFactory {
    type Store = PgEventStore;

    async fn create(&self, outbox: Outbox) -> (PgEventStore, Arc<dyn OutboxStore>) {
        let store = common::store_with(&self.url, &self.schemas, |b| {
            b.outbox(outbox).max_connections(8)
        })
        .await;
        let messages = store.outbox_store();
        (store, Arc::new(messages))
    }
}

async fn factory() -> Option<PgOutboxFactory> {
    let url = common::url()?;
    Some(PgOutboxFactory {
        schemas: common::Schemas::new(&url),
        url,
    })
}

mod conformance {
    mink_testing::outbox_tests!(async { super::factory().await });
}

fn sid(s: &str) -> StreamId {
    StreamId::new(s).unwrap()
}

fn ev(t: &'static str, n: u64) -> NewEvent {
    NewEvent::json(t, &serde_json::json!({ "n": n })).unwrap()
}

async fn exec(store: &PgEventStore, sql: &str) {
    sqlx::raw_sql(AssertSqlSafe(sql.replace("{s}", &store.schema().quoted())))
        .execute(store.pool())
        .await
        .unwrap();
}

async fn scalar_i64(store: &PgEventStore, sql: &str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(sql.replace("{s}", &store.schema().quoted())))
        .fetch_one(store.pool())
        .await
        .unwrap()
}

/// Two routes to the same destination give some events two messages with one id.
fn plain_routes() -> Outbox {
    Outbox::new()
        .route(Route::all("a"))
        .unwrap()
        .route(Route::categories("b", ["S0", "S1"]))
        .unwrap()
        .route(Route::event_types("a", ["Dup"]))
        .unwrap()
}

/// The same, with a transform that skips some events and reshapes others (so the
/// messages are written by the append's second statement).
fn transforming_routes() -> Outbox {
    plain_routes()
        .route(Route::event_types("c", ["E"]).transform(|e| {
            if e.payload.len() % 2 == 0 {
                Ok(None)
            } else {
                Ok(Some((
                    Bytes::from(format!("v{}:{}", e.version, e.payload.len())),
                    "text".into(),
                )))
            }
        }))
        .unwrap()
}

type Summary = Vec<(Uuid, u32, String, String, u64, Bytes, String)>;

fn summary(claimed: &[Claimed]) -> Summary {
    claimed
        .iter()
        .map(|c| {
            let m = &c.message;
            (
                m.id,
                c.attempt,
                m.destination.clone(),
                m.stream_id.to_string(),
                m.stream_version,
                m.payload.clone(),
                m.codec.to_string(),
            )
        })
        .collect()
}

/// What `o` holds: counts, dead letters, and the status of `ids`.
async fn state(o: &dyn OutboxStore, ids: &[Uuid]) -> String {
    let mut s = format!("{:?}\n", o.counts().await.unwrap());
    for id in ids {
        s.push_str(&format!("{id} {:?}\n", o.status(*id).await.unwrap()));
    }
    for d in o.dead_letters(usize::MAX).await.unwrap() {
        s.push_str(&format!(
            "dead {} {} {:?}\n",
            d.message.id, d.attempts, d.last_error
        ));
    }
    s
}

/// Runs the same random operations on the memory store and on PostgreSQL, and asserts
/// that they decide alike, operation by operation: claims (which messages, in which
/// order, which attempt), acknowledgements and failures by holders and others,
/// expired leases at the attempt limit, replays, purges.
async fn matches_the_memory_store(routes: fn() -> Outbox) {
    let Some(url) = common::url() else { return };
    let schemas = common::Schemas::new(&url);
    let (mut claimed, mut expired) = (0, 0);
    for seed in [3u64, 11, 2024] {
        let memory = MemoryStore::with_outbox(routes());
        let mem_outbox = memory.outbox_store().unwrap();
        let pg = common::store_with(&url, &schemas, |b| b.outbox(routes())).await;
        let pg_outbox = pg.outbox_store();
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut ids: Vec<Uuid> = Vec::new();
        let mut held: HashMap<&str, Vec<Uuid>> = HashMap::new();
        let streams = ["S0-1", "S1-1", "S2-1", "S3-1"];
        let owners = ["o1", "o2"];
        for step in 0..300 {
            let what = match rng.below(10) {
                0..=2 => {
                    let name: &&str = rng.pick(&streams);
                    let stream = sid(name);
                    let events: Vec<NewEvent> = (0..1 + rng.below(3))
                        .map(|i| {
                            let t = *rng.pick(&["E", "E", "Dup"]);
                            NewEvent::new(t, format!("{{\"step\":{step},\"i\":{i}}}"))
                        })
                        .collect();
                    let r = memory
                        .append(&stream, ExpectedVersion::Any, events.clone())
                        .await
                        .unwrap();
                    pg.append(&stream, ExpectedVersion::Any, events)
                        .await
                        .unwrap();
                    for e in &r.events {
                        for d in ["a", "b", "c"] {
                            let id = OutboxMessage::id_for(e.id, d);
                            if !ids.contains(&id) {
                                ids.push(id);
                            }
                        }
                    }
                    format!("append {stream}")
                }
                3..=5 => {
                    let owner = *rng.pick(&owners);
                    let limit = 1 + rng.below(4) as usize;
                    let lease = *rng.pick(&[Duration::ZERO, Duration::from_secs(3600)]);
                    let max = 1 + rng.below(3) as u32;
                    let m = mem_outbox.claim(owner, limit, lease, max).await.unwrap();
                    let p = pg_outbox.claim(owner, limit, lease, max).await.unwrap();
                    assert_eq!(summary(&p), summary(&m), "seed {seed} step {step}");
                    held.entry(owner)
                        .or_default()
                        .extend(m.iter().map(|c| c.message.id));
                    claimed += m.len();
                    format!("claim {owner} {limit} {lease:?} {max} -> {}", m.len())
                }
                6 => {
                    let owner = *rng.pick(&owners);
                    let mut acked: Vec<Uuid> = held.remove(owner).unwrap_or_default();
                    if !ids.is_empty() && rng.below(2) == 0 {
                        acked.push(*rng.pick(&ids));
                    }
                    if !acked.is_empty() && rng.below(3) == 0 {
                        // An id given twice.
                        acked.push(acked[0]);
                    }
                    for o in [&mem_outbox as &dyn OutboxStore, &pg_outbox] {
                        o.ack(owner, &acked).await.unwrap();
                    }
                    format!("ack {owner} {}", acked.len())
                }
                7 => {
                    let owner = *rng.pick(&owners);
                    let Some(id) = held
                        .get_mut(owner)
                        .and_then(|h| h.pop())
                        .or_else(|| ids.first().copied())
                    else {
                        continue;
                    };
                    let retry_at = match rng.below(3) {
                        0 => None,
                        1 => Some(Utc::now() - chrono::Duration::seconds(1)),
                        _ => Some(Utc::now() + chrono::Duration::hours(1)),
                    };
                    let error = format!("boom {step}");
                    for o in [&mem_outbox as &dyn OutboxStore, &pg_outbox] {
                        o.fail(owner, id, &error, retry_at).await.unwrap();
                    }
                    format!("fail {owner} {id} {retry_at:?}")
                }
                8 => {
                    let id = (rng.below(2) == 0 && !ids.is_empty()).then(|| *rng.pick(&ids));
                    let m = mem_outbox.replay(id).await.unwrap();
                    assert_eq!(
                        pg_outbox.replay(id).await.unwrap(),
                        m,
                        "seed {seed} step {step}"
                    );
                    format!("replay {id:?} -> {m}")
                }
                _ => {
                    if rng.below(2) == 0 {
                        let id = (rng.below(2) == 0 && !ids.is_empty()).then(|| *rng.pick(&ids));
                        let m = mem_outbox.purge_dead(id).await.unwrap();
                        assert_eq!(pg_outbox.purge_dead(id).await.unwrap(), m);
                        format!("purge dead {id:?} -> {m}")
                    } else {
                        let age = *rng.pick(&[Duration::ZERO, Duration::from_secs(3600)]);
                        let m = mem_outbox.purge_delivered(age).await.unwrap();
                        assert_eq!(pg_outbox.purge_delivered(age).await.unwrap(), m);
                        format!("purge delivered {age:?} -> {m}")
                    }
                }
            };
            // Every message's status now and then (a query each), the rest every step.
            let checked = if step % 16 == 15 { &ids[..] } else { &[] };
            let expected = state(&mem_outbox, checked).await;
            expired += expected
                .matches("lease expired after the last attempt")
                .count();
            assert_eq!(
                state(&pg_outbox, checked).await,
                expected,
                "seed {seed} step {step} ({what})"
            );
        }
        assert_eq!(
            state(&pg_outbox, &ids).await,
            state(&mem_outbox, &ids).await,
            "seed {seed} at the end"
        );
    }
    assert!(claimed > 100, "{claimed} messages claimed");
    assert!(expired > 0, "no lease expired after the last attempt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_match_the_memory_store_exactly() {
    matches_the_memory_store(plain_routes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_match_the_memory_store_exactly_with_transforming_routes() {
    matches_the_memory_store(transforming_routes).await;
}

/// Records every delivery attempt, with the processor that made it, in one log shared
/// by every processor; optionally pauses to let processors interleave.
#[derive(Clone)]
struct Log {
    entries: Arc<std::sync::Mutex<Vec<(&'static str, OutboxMessage)>>>,
}

impl Log {
    fn new() -> Self {
        Log {
            entries: Arc::new(std::sync::Mutex::new(Vec::new())),
        }
    }

    fn len(&self) -> usize {
        self.entries.lock().unwrap().len()
    }

    fn entries(&self) -> Vec<(&'static str, OutboxMessage)> {
        self.entries.lock().unwrap().clone()
    }

    fn publisher(&self, owner: &'static str) -> LogPublisher {
        LogPublisher {
            log: self.clone(),
            owner,
            in_flight: Arc::new(std::sync::Mutex::new(HashSet::new())),
        }
    }
}

struct LogPublisher {
    log: Log,
    owner: &'static str,
    /// Messages being delivered right now (by any processor sharing this set).
    in_flight: Arc<std::sync::Mutex<HashSet<Uuid>>>,
}

impl Publisher for LogPublisher {
    fn publish<'a>(
        &'a self,
        message: &'a OutboxMessage,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async move {
            assert!(
                self.in_flight.lock().unwrap().insert(message.id),
                "{} is being delivered twice at once",
                message.id
            );
            self.log
                .entries
                .lock()
                .unwrap()
                .push((self.owner, message.clone()));
            if rand::random::<u8>() < 32 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            self.in_flight.lock().unwrap().remove(&message.id);
            Ok(())
        })
    }
}

fn processor_config(owner: &str) -> ProcessorConfig {
    ProcessorConfig {
        owner: owner.into(),
        batch_size: 32,
        lease: Duration::from_secs(60),
        max_attempts: 5,
        base_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        poll_interval: Duration::from_millis(50),
        ..ProcessorConfig::default()
    }
}

/// Two processors, each on its own pool (as two processes would be), deliver 2,000
/// messages of 100 streams written while they run by four concurrent writers: no
/// message is attempted twice (nor delivered by both at once), both take part, and
/// each stream's messages are delivered in version order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processors_on_separate_pools_deliver_each_message_once_in_stream_order() {
    let Some(url) = common::url() else { return };
    let schemas = common::Schemas::new(&url);
    let writer = common::store_with(&url, &schemas, |b| {
        b.outbox(Outbox::new().route(Route::all("out")).unwrap())
    })
    .await;
    let log = Log::new();
    let in_flight = Arc::new(std::sync::Mutex::new(HashSet::new()));
    let cancel = CancellationToken::new();
    let mut processors = Vec::new();
    for owner in ["alpha", "beta"] {
        let store = common::other_process(&url, writer.schema(), |b| b.max_connections(4)).await;
        let mut publisher = log.publisher(owner);
        publisher.in_flight = in_flight.clone();
        let p = OutboxProcessor::new(Arc::new(store.outbox_store()))
            .publisher("out", publisher)
            .config(processor_config(owner));
        processors.push(tokio::spawn(p.run(cancel.clone())));
    }
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let store = writer.clone();
            tokio::spawn(async move {
                let mut written = 0u64;
                let mut n = w;
                while written < 500 {
                    n = n.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    let batch = (1 + (n >> 60) % 3).min(500 - written);
                    let stream = sid(&format!("Acc-{}", (n >> 33) % 100));
                    let events = (0..batch).map(|i| ev("Moved", written + i)).collect();
                    store
                        .append(&stream, ExpectedVersion::Any, events)
                        .await
                        .unwrap();
                    written += batch;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while log.len() < 2000 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A little longer: a second delivery would show up now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    cancel.cancel();
    for p in processors {
        p.await.unwrap().unwrap();
    }

    let entries = log.entries();
    assert_eq!(entries.len(), 2000, "every message attempted exactly once");
    let ids: HashSet<Uuid> = entries.iter().map(|(_, m)| m.id).collect();
    assert_eq!(ids.len(), 2000, "no message attempted twice");
    for owner in ["alpha", "beta"] {
        let n = entries.iter().filter(|(o, _)| *o == owner).count();
        assert!(n > 0, "{owner} delivered nothing");
    }
    let mut by_stream: HashMap<String, Vec<u64>> = HashMap::new();
    for (_, m) in &entries {
        by_stream
            .entry(m.stream_id.to_string())
            .or_default()
            .push(m.stream_version);
    }
    for (stream, versions) in &by_stream {
        let expected: Vec<u64> = (1..=versions.len() as u64).collect();
        assert_eq!(versions, &expected, "{stream} out of order");
        assert_eq!(
            writer.stream_version(&sid(stream)).await.unwrap(),
            versions.len() as u64
        );
    }
    assert_eq!(
        writer.outbox_store().counts().await.unwrap(),
        OutboxCounts {
            pending: 0,
            delivered: 2000,
            dead: 0
        }
    );
}

/// A message written by `append_in` in a transaction that rolls back never exists: not
/// counted, no status, never claimed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolled_back_append_in_leaves_no_message() {
    let Some(url) = common::url() else { return };
    let schemas = common::Schemas::new(&url);
    let store = common::store_with(&url, &schemas, |b| {
        b.outbox(Outbox::new().route(Route::all("out")).unwrap())
    })
    .await;
    let outbox = store.outbox_store();
    let mut tx = store.begin().await.unwrap();
    let r = store
        .append_in(
            &mut tx,
            &sid("Tx-1"),
            ExpectedVersion::NoStream,
            vec![ev("E", 1)],
        )
        .await
        .unwrap();
    let id = OutboxMessage::id_for(r.events[0].id, "out");
    let inside: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {}.outbox WHERE id = $1",
        store.schema().quoted()
    )))
    .bind(id)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!(inside, 1, "written in the transaction");
    tx.rollback().await.unwrap();
    assert_eq!(outbox.status(id).await.unwrap(), None);
    assert_eq!(outbox.counts().await.unwrap(), OutboxCounts::default());
    assert!(
        outbox
            .claim("p", 10, Duration::from_secs(30), 3)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        scalar_i64(&store, "SELECT count(*) FROM {s}.outbox").await,
        0
    );
}

/// The messages of a transaction still open are invisible to claims (other streams
/// flow meanwhile); once it commits, they are claimable, and processors are woken.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_open_transactions_messages_are_claimable_only_after_it_commits() {
    let Some(url) = common::url() else { return };
    let schemas = common::Schemas::new(&url);
    let store = common::store_with(&url, &schemas, |b| {
        b.outbox(Outbox::new().route(Route::all("out")).unwrap())
    })
    .await;
    let processes = common::other_process(&url, store.schema(), |b| b).await;
    let outbox = processes.outbox_store();
    let mut signal = outbox.signal();
    wait_for_outbox_listener(&processes).await;

    let mut tx = store.begin().await.unwrap();
    let held = store
        .append_in(
            &mut tx,
            &sid("Held-1"),
            ExpectedVersion::Any,
            vec![ev("E", 1), ev("E", 2)],
        )
        .await
        .unwrap();
    let free = store
        .append(&sid("Free-1"), ExpectedVersion::Any, vec![ev("E", 3)])
        .await
        .unwrap();
    let claimed = outbox
        .claim("p", 10, Duration::from_secs(30), 3)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1, "only the committed message");
    assert_eq!(claimed[0].message.event_id, free.events[0].id);
    assert_eq!(outbox.counts().await.unwrap().pending, 1);
    outbox.ack("p", &[claimed[0].message.id]).await.unwrap();
    assert!(
        outbox
            .claim("p", 10, Duration::from_secs(30), 3)
            .await
            .unwrap()
            .is_empty(),
        "still open"
    );

    signal.mark_seen();
    tx.commit().await.unwrap();
    let started = tokio::time::Instant::now();
    signal.wait(Duration::from_secs(30)).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the commit's NOTIFY woke the processor's signal"
    );
    let claimed = outbox
        .claim("p", 10, Duration::from_secs(30), 3)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1, "the first of its stream");
    assert_eq!(claimed[0].message.event_id, held.events[0].id);
    assert_eq!(claimed[0].message.position, held.events[0].position);
}

/// Backends listening on the schema's outbox channel.
async fn outbox_listeners(store: &PgEventStore) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN \"' || $1 || '\"%'",
    )
    .bind(store.schema().outbox_channel())
    .fetch_one(store.pool())
    .await
    .unwrap()
}

async fn wait_for_outbox_listener(store: &PgEventStore) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while outbox_listeners(store).await < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no listener on {}",
            store.schema().outbox_channel()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A processor in another process, polling only once a minute, is woken at once by
/// appends through the pool (the announcer's NOTIFY) and by a replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notify_wakes_a_processor_in_another_process() {
    let Some(url) = common::url() else { return };
    let schemas = common::Schemas::new(&url);
    let writer = common::store_with(&url, &schemas, |b| {
        b.outbox(Outbox::new().route(Route::all("out")).unwrap())
    })
    .await;
    let reader = common::other_process(&url, writer.schema(), |b| b).await;
    let publisher = RecordingPublisher::new();
    let cancel = CancellationToken::new();
    let p = OutboxProcessor::new(Arc::new(reader.outbox_store()))
        .publisher("out", publisher.clone())
        .config(ProcessorConfig {
            poll_interval: Duration::from_secs(60),
            ..processor_config("sleepy")
        });
    let task = tokio::spawn(p.run(cancel.clone()));
    wait_for_outbox_listener(&reader).await;
    // Let the processor finish its first (empty) round and wait.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let delivered_within = async |n: usize| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while publisher.delivered().len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "not woken: {} delivered",
                publisher.delivered().len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    writer
        .append(&sid("Wake-1"), ExpectedVersion::Any, vec![ev("E", 1)])
        .await
        .unwrap();
    delivered_within(1).await;

    // A dead letter replayed by a tool in a third process.
    let failing = writer
        .append(&sid("Wake-2"), ExpectedVersion::Any, vec![ev("E", 2)])
        .await
        .unwrap();
    let failing_id = OutboxMessage::id_for(failing.events[0].id, "out");
    let gave_up = writer.outbox_store();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        // Taken by the processor first, or by us: either way, dead-letter it by hand.
        let s = gave_up.status(failing_id).await.unwrap();
        if s == Some((MessageStatus::Delivered, 1)) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    exec(
        &writer,
        "UPDATE {s}.outbox SET status = 'dead', finished_at = now() WHERE status = 'delivered'",
    )
    .await;
    let tool = common::other_process(&url, writer.schema(), |b| b).await;
    assert_eq!(tool.outbox_store().replay(None).await.unwrap(), 2);
    delivered_within(4).await;
    cancel.cancel();
    task.await.unwrap().unwrap();
}

/// A publisher that, on its first delivery, terminates its processor's database
/// connection (as a crash or a network cut would), then reports success: the
/// acknowledgement cannot reach the server.
struct Severing {
    url: String,
    application: String,
    seen: Arc<std::sync::Mutex<Vec<Uuid>>>,
}

impl Publisher for Severing {
    fn publish<'a>(
        &'a self,
        message: &'a OutboxMessage,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async move {
            self.seen.lock().unwrap().push(message.id);
            let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&self.url)
                .await
                .unwrap();
            let killed: i64 = sqlx::query_scalar(
                // Waits (up to 10 s) until the backend is gone.
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid, 10000) \
                 FROM pg_stat_activity WHERE application_name = $1) t",
            )
            .bind(self.application.as_str())
            .fetch_one(&mut conn)
            .await
            .unwrap();
            assert!(killed <= 1, "{killed} connections of one processor");
            Ok(())
        })
    }
}

/// A processor whose connection dies in the middle of a round (after its claim, before
/// its acknowledgement) leaves its leases to expire; another processor then delivers
/// the same messages, with the same ids, the lost attempt counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_processor_whose_connection_dies_leaves_its_leases_to_another() {
    let Some(url) = common::url() else { return };
    let schemas = common::Schemas::new(&url);
    let writer = common::store_with(&url, &schemas, |b| {
        b.outbox(Outbox::new().route(Route::all("out")).unwrap())
    })
    .await;
    let mut written = Vec::new();
    for i in 0..3 {
        let r = writer
            .append(
                &sid(&format!("Cut-{i}")),
                ExpectedVersion::Any,
                vec![ev("E", i)],
            )
            .await
            .unwrap();
        written.push(OutboxMessage::id_for(r.events[0].id, "out"));
    }

    // The doomed processor: one connection, never tested before use, so the severed
    // connection is what its acknowledgement gets.
    let application = format!("doomed-{}", writer.schema());
    let options = PgConnectOptions::from_str(&url)
        .unwrap()
        .application_name(&application);
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        .connect_with(options)
        .await
        .unwrap();
    let doomed = PgEventStore::builder_from_pool(pool)
        .schema(writer.schema().as_str())
        .listen(false)
        .announce(false)
        .build()
        .await
        .unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let p = OutboxProcessor::new(Arc::new(doomed.outbox_store()))
        .publisher(
            "out",
            Severing {
                url: url.clone(),
                application: application.clone(),
                seen: seen.clone(),
            },
        )
        .config(ProcessorConfig {
            lease: Duration::from_secs(2),
            ..processor_config("doomed")
        });
    let err = p.run_once().await.unwrap_err();
    assert!(
        err.is_retryable(),
        "a lost connection is transient: {err:?}"
    );
    let mut claimed = seen.lock().unwrap().clone();
    claimed.sort();
    let mut expected = written.clone();
    expected.sort();
    assert_eq!(claimed, expected, "the round claimed every message");
    let outbox = writer.outbox_store();
    for id in &written {
        assert_eq!(
            outbox.status(*id).await.unwrap(),
            Some((MessageStatus::Pending, 1)),
            "leased, not acknowledged"
        );
    }
    // Not before the lease expires...
    let rescuer = common::other_process(&url, writer.schema(), |b| b).await;
    let publisher = RecordingPublisher::new();
    let p = OutboxProcessor::new(Arc::new(rescuer.outbox_store()))
        .publisher("out", publisher.clone())
        .config(processor_config("rescuer"));
    assert_eq!(p.run_once().await.unwrap().claimed, 0, "still leased");
    // ... then every message, with the same id, on its second attempt.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let report = p.run_once().await.unwrap();
    assert_eq!(report.delivered, 3);
    let mut delivered: Vec<Uuid> = publisher.delivered().iter().map(|m| m.id).collect();
    delivered.sort();
    assert_eq!(delivered, expected);
    for id in &written {
        assert_eq!(
            outbox.status(*id).await.unwrap(),
            Some((MessageStatus::Delivered, 2))
        );
    }
}

/// Transforms see the events as stored (version, position and time from the insert),
/// through the pool and in a caller's transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transforms_see_the_stored_events() {
    let Some(url) = common::url() else { return };
    let schemas = common::Schemas::new(&url);
    let describe = |e: &mink_es::StoredEvent| {
        format!(
            "{}|{}|{}",
            e.version,
            e.position,
            e.recorded_at.timestamp_micros()
        )
    };
    let store = common::store_with(&url, &schemas, |b| {
        b.outbox(
            Outbox::new()
                .route(
                    Route::all("described")
                        .transform(move |e| Ok(Some((Bytes::from(describe(e)), "text".into())))),
                )
                .unwrap()
                .route(Route::all("plain"))
                .unwrap(),
        )
    })
    .await;
    let s = sid("Desc-1");
    store
        .append(&s, ExpectedVersion::Any, vec![ev("E", 0), ev("E", 1)])
        .await
        .unwrap();
    store
        .append(&s, ExpectedVersion::Any, vec![ev("E", 2)])
        .await
        .unwrap();
    let mut tx = store.begin().await.unwrap();
    store
        .append_in(
            &mut tx,
            &s,
            ExpectedVersion::Exact(3),
            vec![ev("F", 3), ev("F", 4)],
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let stored = store.read_stream(&s, 1, 100).await.unwrap();
    assert_eq!(stored.len(), 5);
    let outbox = store.outbox_store();
    let mut got = Vec::new();
    loop {
        let claimed = outbox
            .claim("p", 100, Duration::from_secs(30), 3)
            .await
            .unwrap();
        if claimed.is_empty() {
            break;
        }
        let ids: Vec<Uuid> = claimed.iter().map(|c| c.message.id).collect();
        outbox.ack("p", &ids).await.unwrap();
        got.extend(claimed.into_iter().map(|c| c.message));
    }
    assert_eq!(got.len(), 10);
    for e in &stored {
        let described = got
            .iter()
            .find(|m| m.event_id == e.id && m.destination == "described")
            .unwrap();
        assert_eq!(described.payload, Bytes::from(describe(e)), "{e:?}");
        assert_eq!(described.codec.as_str(), "text");
        let plain = got
            .iter()
            .find(|m| m.event_id == e.id && m.destination == "plain")
            .unwrap();
        assert_eq!(plain, &OutboxMessage::from_event(e, "plain"));
        assert_eq!(described.position, e.position);
        assert_eq!(described.created_at, e.recorded_at);
    }
}

/// A failing transform in `append_in` fails that append only: the caller's
/// transaction goes on, and commits its other writes without the failed events.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_transform_in_append_in_leaves_the_callers_transaction_usable() {
    let Some(url) = common::url() else { return };
    let schemas = common::Schemas::new(&url);
    let store = common::store_with(&url, &schemas, |b| {
        b.outbox(
            Outbox::new()
                .route(Route::all("x").transform(|e| {
                    if e.event_type == "Poison" {
                        Err("cannot shape a poison event".into())
                    } else if e.event_type == "Nul" {
                        Ok(Some((e.payload.clone(), "a\0b".into())))
                    } else {
                        Ok(Some((e.payload.clone(), e.codec.clone())))
                    }
                }))
                .unwrap(),
        )
    })
    .await;
    let mut tx = store.begin().await.unwrap();
    store
        .append_in(
            &mut tx,
            &sid("P-1"),
            ExpectedVersion::NoStream,
            vec![ev("Fine", 1)],
        )
        .await
        .unwrap();
    let err = store
        .append_in(
            &mut tx,
            &sid("P-1"),
            ExpectedVersion::Exact(1),
            vec![ev("Fine", 2), ev("Poison", 3)],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Outbox { version: 3, .. }), "{err:?}");
    // A message PostgreSQL cannot store is refused the same way.
    let err = store
        .append_in(
            &mut tx,
            &sid("P-1"),
            ExpectedVersion::Exact(1),
            vec![ev("Nul", 6)],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidArgument(m) if m.contains("NUL")),
        "{err:?}"
    );
    store
        .save_checkpoint_in(&mut tx, "after", mink_es::Position::new(1, 2))
        .await
        .unwrap();
    store
        .append_in(
            &mut tx,
            &sid("P-2"),
            ExpectedVersion::NoStream,
            vec![ev("Fine", 4)],
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(store.stream_version(&sid("P-1")).await.unwrap(), 1);
    assert_eq!(store.stream_version(&sid("P-2")).await.unwrap(), 1);
    assert_eq!(store.outbox_store().counts().await.unwrap().pending, 2);
    assert_eq!(
        scalar_i64(
            &store,
            "SELECT count(*) FROM {s}.checkpoints WHERE name = 'after'"
        )
        .await,
        1
    );
    // Through the pool, the failing append writes nothing either.
    let err = store
        .append(&sid("P-3"), ExpectedVersion::Any, vec![ev("Poison", 5)])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Outbox { .. }), "{err:?}");
    assert_eq!(store.stream_version(&sid("P-3")).await.unwrap(), 0);
    assert_eq!(
        scalar_i64(&store, "SELECT count(*) FROM {s}.events").await,
        2
    );
}

/// Concurrent writers of one stream: every append succeeds, and the stream's messages
/// are in version order in the outbox (their `seq` is taken under the stream's lock),
/// with routes that transform (second statement) and without.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_to_one_stream_keep_its_messages_in_version_order() {
    let Some(url) = common::url() else { return };
    let schemas = common::Schemas::new(&url);
    for transform in [false, true] {
        let route = if transform {
            Route::all("out").transform(|e| Ok(Some((e.payload.clone(), e.codec.clone()))))
        } else {
            Route::all("out")
        };
        let store = common::store_with(&url, &schemas, |b| {
            b.outbox(Outbox::new().route(route).unwrap())
        })
        .await;
        let tasks: Vec<_> = (0..8u64)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    for i in 0..25u64 {
                        let events = (0..1 + (w + i) % 2).map(|k| ev("E", i * 10 + k)).collect();
                        store
                            .append(&sid("Hot-1"), ExpectedVersion::Any, events)
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let n = store.stream_version(&sid("Hot-1")).await.unwrap();
        let versions: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT stream_version FROM {}.outbox ORDER BY seq",
            store.schema().quoted()
        )))
        .fetch_all(store.pool())
        .await
        .unwrap();
        let expected: Vec<i64> = (1..=n as i64).collect();
        assert_eq!(versions, expected, "transform: {transform}");
    }
}

/// A row damaged outside the crate (an `'infinity'` time) never panics: the claim that
/// meets it moves it to the dead-letter queue, saying why, and delivers the others;
/// the dead-letter listing names it until it is purged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_row_is_dead_lettered_naming_it_not_a_panic() {
    let Some(url) = common::url() else { return };
    let schemas = common::Schemas::new(&url);
    let store = common::store_with(&url, &schemas, |b| {
        b.outbox(Outbox::new().route(Route::all("out")).unwrap())
    })
    .await;
    let bad = store
        .append(
            &sid("Bad-1"),
            ExpectedVersion::Any,
            vec![ev("E", 1), ev("E", 2)],
        )
        .await
        .unwrap();
    exec(
        &store,
        "UPDATE {s}.outbox SET created_at = 'infinity' WHERE stream_version = 1",
    )
    .await;
    let good = store
        .append(&sid("Good-1"), ExpectedVersion::Any, vec![ev("E", 3)])
        .await
        .unwrap();
    let outbox = store.outbox_store();
    let claimed = outbox
        .claim("p", 10, Duration::from_secs(30), 3)
        .await
        .unwrap();
    assert_eq!(
        claimed.len(),
        1,
        "the good one; the bad one's follower waited"
    );
    assert_eq!(claimed[0].message.event_id, good.events[0].id);
    let bad_id = OutboxMessage::id_for(bad.events[0].id, "out");
    assert_eq!(
        outbox.status(bad_id).await.unwrap(),
        Some((MessageStatus::Dead, 1))
    );
    let err = outbox.dead_letters(10).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("seq") && text.contains("created_at") && text.contains("infinity"),
        "{text}"
    );
    assert!(!err.is_retryable());
    let why: String = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT last_error FROM {}.outbox WHERE id = $1",
        store.schema().quoted()
    )))
    .bind(bad_id)
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert!(why.contains("created_at"), "{why}");
    // Dead letters hold nothing back: the stream's next message flows.
    let next = outbox
        .claim("p", 10, Duration::from_secs(30), 3)
        .await
        .unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].message.event_id, bad.events[1].id);
    assert_eq!(outbox.purge_dead(Some(bad_id)).await.unwrap(), 1);
    assert!(outbox.dead_letters(10).await.unwrap().is_empty());
}

/// The outbox channel fits PostgreSQL's identifiers for every valid schema name.
#[test]
fn outbox_channels_are_named_per_schema() {
    let s = SchemaName::new("orders").unwrap();
    assert_eq!(s.outbox_channel(), "mink_outbox_orders");
    assert_ne!(s.outbox_channel(), s.channel());
    let _ = PgOutboxStore::new;
}

/// A repeated append (the same event ids), sequential or concurrent, through the pool or
/// in a transaction, returns the original events and writes no second message; an id
/// stored elsewhere is refused and writes nothing. With and without transforms.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repeated_appends_write_no_second_message() {
    let Some(url) = common::url() else { return };
    let schemas = common::Schemas::new(&url);
    for transform in [false, true] {
        let route = if transform {
            Route::all("out").transform(|e| Ok(Some((e.payload.clone(), e.codec.clone()))))
        } else {
            Route::all("out")
        };
        let store = common::store_with(&url, &schemas, |b| {
            b.outbox(Outbox::new().route(route).unwrap())
        })
        .await;
        let outbox = store.outbox_store();
        let s = sid("Rep-1");
        let events = vec![ev("E", 1), ev("E", 2)];
        let first = store
            .append(&s, ExpectedVersion::NoStream, events.clone())
            .await
            .unwrap();
        let again = store
            .append(&s, ExpectedVersion::NoStream, events.clone())
            .await
            .unwrap();
        assert!(again.deduplicated, "transform: {transform}");
        assert_eq!(again.events, first.events);
        let mut tx = store.begin().await.unwrap();
        let inside = store
            .append_in(&mut tx, &s, ExpectedVersion::NoStream, events.clone())
            .await
            .unwrap();
        assert!(inside.deduplicated);
        tx.commit().await.unwrap();

        // Eight writers race with one batch: one writes it, the others get it back.
        let batch = vec![ev("E", 3), ev("E", 4), ev("E", 5)];
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                let batch = batch.clone();
                tokio::spawn(async move {
                    store
                        .append(&sid("Rep-2"), ExpectedVersion::Any, batch)
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut written = 0;
        for t in tasks {
            let r = t.await.unwrap();
            written += usize::from(!r.deduplicated);
            assert_eq!(r.version, 3);
        }
        assert_eq!(written, 1, "transform: {transform}");

        // An id stored in another stream.
        let err = store
            .append(&sid("Rep-3"), ExpectedVersion::Any, vec![events[0].clone()])
            .await
            .unwrap_err();
        assert!(matches!(err, Error::DuplicateEventId { .. }), "{err:?}");
        assert_eq!(
            outbox.counts().await.unwrap().pending,
            5,
            "transform: {transform}"
        );
        assert_eq!(
            scalar_i64(&store, "SELECT count(DISTINCT id) FROM {s}.outbox").await,
            5
        );
    }
}

/// What breaks the invariants of the outbox's heads (migration 5), one line per
/// stream, read in one snapshot. Every (destination, stream) with messages has its row
/// in `outbox_heads`, naming one of its messages or none (NULL); when it has pending
/// messages, its head is one and at most the oldest of them; a head that is not pending
/// (finished since, or gone) is stale, and its stream is listed in `outbox_stale`.
/// `strict` (no repair pending): the head is exactly the oldest pending message, and
/// none without one.
async fn head_violations(store: &PgEventStore, strict: bool) -> Vec<String> {
    let strict = if strict {
        " OR ptr IS DISTINCT FROM oldest"
    } else {
        ""
    };
    let sql = format!(
        "WITH g AS (SELECT DISTINCT destination, stream_id FROM {{s}}.outbox \
           UNION SELECT destination, stream_id FROM {{s}}.outbox_heads), \
         v AS (SELECT g.destination, g.stream_id, h.destination IS NULL AS no_row, \
           h.seq AS ptr, p.status AS ptr_status, \
           p.seq IS NOT NULL AND (p.destination, p.stream_id) <> (g.destination, g.stream_id) \
             AS elsewhere, \
           EXISTS (SELECT 1 FROM {{s}}.outbox_stale x WHERE x.destination = g.destination \
             AND x.stream_id = g.stream_id) AS listed, \
           (SELECT min(o.seq) FROM {{s}}.outbox o WHERE o.destination = g.destination \
             AND o.stream_id = g.stream_id AND o.status = 'pending') AS oldest \
           FROM g LEFT JOIN {{s}}.outbox_heads h \
             ON h.destination = g.destination AND h.stream_id = g.stream_id \
           LEFT JOIN {{s}}.outbox p ON p.seq = h.seq) \
         SELECT format('%s/%s: row %s, head %s (%s), listed %s, oldest pending %s', \
           destination, stream_id, NOT no_row, ptr, ptr_status, listed, oldest) FROM v \
         WHERE no_row OR elsewhere \
           OR (oldest IS NOT NULL AND (ptr IS NULL OR ptr > oldest)) \
           OR (ptr IS NOT NULL AND ptr_status IS DISTINCT FROM 'pending' AND NOT listed){strict}"
    );
    sqlx::query_scalar(AssertSqlSafe(sql.replace("{s}", &store.schema().quoted())))
        .fetch_all(store.pool())
        .await
        .unwrap()
}

/// Repairs every stale head, as each claim does before it claims (here: one message,
/// put back at once with an immediate retry, which leaves it pending and the head; its
/// attempt counts). With nothing else running, every stream's head is then exactly its
/// oldest pending message.
async fn repair_heads(outbox: &PgOutboxStore) {
    let claimed = outbox
        .claim("repair", 1, Duration::from_secs(60), u32::MAX)
        .await
        .unwrap();
    for c in claimed {
        outbox
            .fail("repair", c.message.id, "repair", Some(Utc::now()))
            .await
            .unwrap();
    }
}

/// Claims and acknowledges everything as one processor, until `left` messages are
/// pending, checking that each stream's messages come in version order (one per stream
/// and claim) and that every claimed message is the oldest pending one of its stream.
/// Returns the versions delivered, per (destination, stream).
async fn drain_in_order(
    store: &PgEventStore,
    outbox: &PgOutboxStore,
    left: u64,
) -> HashMap<(String, String), Vec<u64>> {
    let mut delivered: HashMap<(String, String), Vec<u64>> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let claimed = outbox
            .claim("drain", 100, Duration::from_secs(60), 1000)
            .await
            .unwrap();
        if claimed.is_empty() {
            if outbox.counts().await.unwrap().pending == left {
                return delivered;
            }
            // Leases of processors that stopped: wait for them to expire.
            assert!(tokio::time::Instant::now() < deadline, "not drained");
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let mut streams = HashSet::new();
        for c in &claimed {
            let m = &c.message;
            assert!(
                streams.insert((m.destination.clone(), m.stream_id.to_string())),
                "two messages of {}/{} in one claim",
                m.destination,
                m.stream_id
            );
            let older: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT count(*) FROM {s}.outbox o WHERE o.status = 'pending' \
                 AND o.destination = $1 AND o.stream_id = $2 AND o.seq < (\
                   SELECT min(seq) FROM {s}.outbox WHERE id = $3 AND destination = $1)",
                s = store.schema().quoted()
            )))
            .bind(&m.destination)
            .bind(m.stream_id.as_str())
            .bind(m.id)
            .fetch_one(store.pool())
            .await
            .unwrap();
            assert_eq!(older, 0, "{m:?} claimed before an older pending message");
            let versions = delivered
                .entry((m.destination.clone(), m.stream_id.to_string()))
                .or_default();
            if let Some(last) = versions.last() {
                // Two routes to one destination give an event two messages.
                assert!(*last <= m.stream_version, "{m:?} after version {last}");
            }
            versions.push(m.stream_version);
        }
        let ids: Vec<Uuid> = claimed.iter().map(|c| c.message.id).collect();
        outbox.ack("drain", &ids).await.unwrap();
    }
}

/// A storm of concurrent appends (through the pool, through a transforming route's
/// second statement, and in callers' transactions that commit or roll back), claims by
/// three processors with short leases, acknowledgements, retries, dead letters,
/// replays and purges never leaves a stream with no head or two (checked in one
/// snapshot, over and over, while it rages); afterwards every stream's head is its
/// oldest pending message, and everything left is delivered in stream order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn heads_stay_one_per_stream_through_a_storm_of_appends_acks_fails_and_replays() {
    let Some(url) = common::url() else { return };
    let schemas = common::Schemas::new(&url);
    let store = common::store_with(&url, &schemas, |b| b.outbox(plain_routes())).await;
    let transforming =
        common::other_process(&url, store.schema(), |b| b.outbox(transforming_routes())).await;
    let streams: Arc<Vec<StreamId>> = Arc::new((0..3).map(|i| sid(&format!("S{i}-{i}"))).collect());
    let done = CancellationToken::new();
    let ops = Arc::new(std::sync::Mutex::new(HashMap::<&'static str, u32>::new()));
    let count = {
        let ops = ops.clone();
        move |what: &'static str| *ops.lock().unwrap().entry(what).or_default() += 1
    };

    let mut writers = Vec::new();
    for w in 0..3u64 {
        let (store, transforming, streams) = (store.clone(), transforming.clone(), streams.clone());
        writers.push(tokio::spawn(async move {
            let mut rng = Rng(0x5eed_0000 + w * 7919);
            for step in 0..50 {
                let stream = rng.pick(&streams[..]).clone();
                let events: Vec<NewEvent> = (0..1 + rng.below(3))
                    .map(|i| {
                        let t = *rng.pick(&["E", "E", "Dup"]);
                        NewEvent::new(t, format!("{{\"w\":{w},\"step\":{step},\"i\":{i}}}"))
                    })
                    .collect();
                match w {
                    0 => {
                        store
                            .append(&stream, ExpectedVersion::Any, events)
                            .await
                            .unwrap();
                    }
                    1 => {
                        transforming
                            .append(&stream, ExpectedVersion::Any, events)
                            .await
                            .unwrap();
                    }
                    _ => {
                        // A caller's transaction: two streams, held open a moment.
                        let other = rng.pick(&streams[..]).clone();
                        let mut tx = store.begin().await.unwrap();
                        store
                            .append_in(&mut tx, &stream, ExpectedVersion::Any, events)
                            .await
                            .unwrap();
                        tokio::time::sleep(Duration::from_millis(rng.below(4))).await;
                        if other != stream {
                            let more =
                                vec![NewEvent::new("E", format!("{{\"w\":{w},\"step\":{step}}}"))];
                            store
                                .append_in(&mut tx, &other, ExpectedVersion::Any, more)
                                .await
                                .unwrap();
                        }
                        if rng.below(4) == 0 {
                            tx.rollback().await.unwrap();
                        } else {
                            tx.commit().await.unwrap();
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(rng.below(3))).await;
            }
        }));
    }

    let mut others = Vec::new();
    for (p, owner) in ["p1", "p2", "p3"].into_iter().enumerate() {
        let outbox = PgOutboxStore::new(&common::other_process(&url, store.schema(), |b| b).await);
        let (done, count) = (done.clone(), count.clone());
        others.push(tokio::spawn(async move {
            let mut rng = Rng(0xc1a1_0000 + p as u64);
            while !done.is_cancelled() {
                let lease = Duration::from_millis(*rng.pick(&[0, 20, 200]));
                let limit = 1 + rng.below(4) as usize;
                let claimed = outbox.claim(owner, limit, lease, 3).await.unwrap();
                count("claim");
                let mut acked = Vec::new();
                for c in claimed {
                    let id = c.message.id;
                    match rng.below(20) {
                        0..=9 => acked.push(id),
                        10..=12 => {
                            outbox
                                .fail(owner, id, "again", Some(Utc::now()))
                                .await
                                .unwrap();
                            count("retry");
                        }
                        13 => {
                            let later = Utc::now() + chrono::Duration::milliseconds(30);
                            outbox.fail(owner, id, "later", Some(later)).await.unwrap();
                            count("retry later");
                        }
                        14..=16 => {
                            outbox.fail(owner, id, "dead", None).await.unwrap();
                            count("dead");
                        }
                        _ => count("left to its lease"),
                    }
                }
                if !acked.is_empty() {
                    outbox.ack(owner, &acked).await.unwrap();
                    count("ack");
                }
                tokio::time::sleep(Duration::from_millis(rng.below(3))).await;
            }
        }));
    }
    {
        let outbox = PgOutboxStore::new(&common::other_process(&url, store.schema(), |b| b).await);
        let (done, count) = (done.clone(), count.clone());
        others.push(tokio::spawn(async move {
            let mut rng = Rng(0x007e_91a1);
            while !done.is_cancelled() {
                let dead = outbox.dead_letters(20).await.unwrap();
                let one = (!dead.is_empty()).then(|| rng.pick(&dead[..]).message.id);
                match rng.below(10) {
                    0..=3 => {
                        if outbox.replay(one).await.unwrap() > 0 {
                            count("replay one");
                        }
                    }
                    4 | 5 => {
                        if outbox.replay(None).await.unwrap() > 0 {
                            count("replay all");
                        }
                    }
                    6 | 7 => {
                        if let Some(id) = one {
                            outbox.purge_dead(Some(id)).await.unwrap();
                            count("purge dead");
                        }
                    }
                    _ => {
                        outbox.purge_delivered(Duration::ZERO).await.unwrap();
                        count("purge delivered");
                    }
                }
                tokio::time::sleep(Duration::from_millis(2 + rng.below(5))).await;
            }
        }));
    }
    let checker = {
        let (store, done) = (store.clone(), done.clone());
        tokio::spawn(async move {
            let mut checks = 0;
            while !done.is_cancelled() {
                let v = head_violations(&store, false).await;
                assert!(v.is_empty(), "after {checks} checks: {v:#?}");
                checks += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            checks
        })
    };

    for w in writers {
        w.await.unwrap();
    }
    // Let the processors and the replays run on what is written a little longer.
    tokio::time::sleep(Duration::from_millis(300)).await;
    done.cancel();
    for t in others {
        t.await.unwrap();
    }
    let checks = checker.await.unwrap();
    assert!(checks > 20, "{checks} checks");
    let ops = ops.lock().unwrap().clone();
    for what in [
        "ack",
        "retry",
        "dead",
        "replay one",
        "replay all",
        "purge delivered",
    ] {
        assert!(
            ops.get(what).copied().unwrap_or(0) > 0,
            "no {what}: {ops:?}"
        );
    }

    let outbox = store.outbox_store();
    repair_heads(&outbox).await;
    let v = head_violations(&store, true).await;
    assert!(v.is_empty(), "after the repair: {v:#?}");
    outbox.replay(None).await.unwrap();
    let v = head_violations(&store, true).await;
    assert!(v.is_empty(), "after a replay: {v:#?}");
    let delivered = drain_in_order(&store, &outbox, 0).await;
    assert!(!delivered.is_empty());
    repair_heads(&outbox).await;
    let v = head_violations(&store, true).await;
    assert!(v.is_empty(), "drained: {v:#?}");
    assert_eq!(
        scalar_i64(
            &store,
            "SELECT count(*) FROM {s}.outbox_heads WHERE seq IS NOT NULL"
        )
        .await,
        0
    );
}

/// A message appended in a transaction still open when its stream's last pending
/// message is acknowledged (which empties the stream as far as the acknowledgement can
/// see) becomes the stream's head once the transaction commits; one that rolls back
/// leaves the stream empty and its next message the head.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_append_in_flight_when_its_stream_empties_becomes_its_head() {
    let Some(url) = common::url() else { return };
    let schemas = common::Schemas::new(&url);
    let store = common::store_with(&url, &schemas, |b| {
        b.outbox(Outbox::new().route(Route::all("out")).unwrap())
    })
    .await;
    let outbox = store.outbox_store();
    let lease = Duration::from_secs(60);
    let stream = sid("Race-1");
    for (n, commit) in [(1, true), (3, false), (4, true)] {
        store
            .append(&stream, ExpectedVersion::Any, vec![ev("E", n)])
            .await
            .unwrap();
        let head = outbox.claim("p", 10, lease, 5).await.unwrap();
        assert_eq!(head.len(), 1);
        let mut tx = store.begin().await.unwrap();
        store
            .append_in(&mut tx, &stream, ExpectedVersion::Any, vec![ev("E", n + 1)])
            .await
            .unwrap();
        // The last pending message the acknowledgement can see.
        outbox.ack("p", &[head[0].message.id]).await.unwrap();
        assert!(head_violations(&store, false).await.is_empty());
        if commit {
            tx.commit().await.unwrap();
            let next = outbox.claim("p", 10, lease, 5).await.unwrap();
            assert_eq!(next.len(), 1, "the message appended meanwhile is the head");
            outbox.ack("p", &[next[0].message.id]).await.unwrap();
        } else {
            tx.rollback().await.unwrap();
            assert!(outbox.claim("p", 10, lease, 5).await.unwrap().is_empty());
        }
        assert!(head_violations(&store, false).await.is_empty());
    }
    repair_heads(&outbox).await;
    assert!(head_violations(&store, true).await.is_empty());
    assert_eq!(outbox.counts().await.unwrap().pending, 0);
}

/// A dead letter replayed while a later message of its stream is in flight, or waits
/// for a retry, is its stream's head again: the next claim takes it, and the message
/// after the in-flight one waits for both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replayed_older_dead_letter_becomes_its_streams_head_again() {
    let Some(url) = common::url() else { return };
    let schemas = common::Schemas::new(&url);
    let store = common::store_with(&url, &schemas, |b| {
        b.outbox(Outbox::new().route(Route::all("out")).unwrap())
    })
    .await;
    let outbox = store.outbox_store();
    let lease = Duration::from_secs(60);
    let versions = |c: &[Claimed]| -> Vec<(String, u64)> {
        c.iter()
            .map(|c| (c.message.stream_id.to_string(), c.message.stream_version))
            .collect()
    };
    let v = |s: &str, n: u64| (s.to_owned(), n);
    for s in ["Flight-1", "Retry-1"] {
        store
            .append(
                &sid(s),
                ExpectedVersion::NoStream,
                vec![ev("E", 1), ev("E", 2), ev("E", 3)],
            )
            .await
            .unwrap();
    }
    let first = outbox.claim("p", 10, lease, 5).await.unwrap();
    assert_eq!(versions(&first), [v("Flight-1", 1), v("Retry-1", 1)]);
    for c in &first {
        outbox.fail("p", c.message.id, "boom", None).await.unwrap();
    }
    let second = outbox.claim("p", 10, lease, 5).await.unwrap();
    assert_eq!(versions(&second), [v("Flight-1", 2), v("Retry-1", 2)]);
    // Flight-1 v2 stays in flight; Retry-1 v2 waits for a retry in an hour.
    let in_an_hour = Utc::now() + chrono::Duration::hours(1);
    outbox
        .fail("p", second[1].message.id, "later", Some(in_an_hour))
        .await
        .unwrap();
    assert!(outbox.claim("q", 10, lease, 5).await.unwrap().is_empty());

    for c in &first {
        assert_eq!(outbox.replay(Some(c.message.id)).await.unwrap(), 1);
    }
    assert!(head_violations(&store, true).await.is_empty());
    let replayed = outbox.claim("q", 10, lease, 5).await.unwrap();
    assert_eq!(versions(&replayed), [v("Flight-1", 1), v("Retry-1", 1)]);
    let ids: Vec<Uuid> = replayed.iter().map(|c| c.message.id).collect();
    outbox.ack("q", &ids).await.unwrap();
    // v2 of both still holds back v3: in flight, and not due.
    assert!(outbox.claim("q", 10, lease, 5).await.unwrap().is_empty());
    outbox.ack("p", &[second[0].message.id]).await.unwrap();
    let third = outbox.claim("q", 10, lease, 5).await.unwrap();
    assert_eq!(versions(&third), [v("Flight-1", 3)]);
    assert!(head_violations(&store, true).await.is_empty());
}

/// An outbox filled before migration 5 (delivered, dead, leased and pending messages,
/// interleaved across streams) gets its heads from the migration: claims then take
/// each stream's oldest pending message, in order, and a replay puts the older dead
/// letters back at the front.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outbox_filled_before_migration_5_is_claimed_in_order_after_it() {
    let Some(url) = common::url() else { return };
    let schemas = common::Schemas::new(&url);
    let schema = common::random_schema();
    schemas.add(schema.clone());
    let store = PgEventStore::builder(&url)
        .schema(schema.as_str())
        .outbox(Outbox::new().route(Route::all("out")).unwrap())
        .build()
        .await
        .unwrap();
    // The schema as migrations 1 to 4 left it.
    let q = schema.quoted();
    exec(
        &store,
        &format!(
            "CREATE SCHEMA {q}; CREATE TABLE {q}.mink_migrations (version integer PRIMARY KEY, \
             name text NOT NULL, checksum text NOT NULL, \
             applied_at timestamptz NOT NULL DEFAULT statement_timestamp())"
        ),
    )
    .await;
    for m in mink_postgres::MIGRATIONS.iter().filter(|m| m.version < 5) {
        exec(&store, &m.sql.replace("{schema}", &q)).await;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {q}.mink_migrations (version, name, checksum) VALUES ($1, $2, $3)"
        )))
        .bind(m.version)
        .bind(m.name)
        .bind(m.checksum())
        .execute(store.pool())
        .await
        .unwrap();
    }
    // Messages as appends wrote them then, versions round by round across 4 streams:
    // M1: v1 delivered, v2 dead, v3 to v5 pending; M2: v1 leased for an hour (holding
    // back the rest); M3: all delivered; M4: v1 dead, v2 to v5 pending.
    exec(
        &store,
        "INSERT INTO {s}.outbox (id, destination, stream_id, event_id, event_type, \
           stream_version, tx, position, codec, payload, metadata, created_at, \
           next_attempt_at, status, attempts, lease_owner, lease_until, finished_at) \
         SELECT gen_random_uuid(), 'out', 'M' || st || '-1', gen_random_uuid(), 'E', v, \
           pg_current_xact_id(), v * 10 + st, 'json', '{}'::bytea, NULL, now(), now(), \
           x.status, CASE WHEN x.status = 'pending' AND st <> 2 THEN 0 ELSE 1 END, \
           CASE WHEN st = 2 AND v = 1 THEN 'old' END, \
           CASE WHEN st = 2 AND v = 1 THEN now() + interval '1 hour' END, \
           CASE WHEN x.status <> 'pending' THEN now() END \
         FROM generate_series(1, 5) v, generate_series(1, 4) st, LATERAL (SELECT CASE \
           WHEN st = 1 AND v = 1 THEN 'delivered' WHEN st = 1 AND v = 2 THEN 'dead' \
           WHEN st = 3 THEN 'delivered' WHEN st = 4 AND v = 1 THEN 'dead' \
           ELSE 'pending' END AS status) x \
         ORDER BY v, st",
    )
    .await;

    let report = store.migrate().await.unwrap();
    assert_eq!(report.applied, [5]);
    assert!(head_violations(&store, true).await.is_empty());
    let outbox = store.outbox_store();
    let first = outbox
        .claim("p", 10, Duration::from_secs(60), 5)
        .await
        .unwrap();
    let got: Vec<(String, u64)> = first
        .iter()
        .map(|c| (c.message.stream_id.to_string(), c.message.stream_version))
        .collect();
    // In `seq` order: M4 v2 was written before M1 v3.
    assert_eq!(got, [("M4-1".to_owned(), 2), ("M1-1".to_owned(), 3)]);
    let ids: Vec<Uuid> = first.iter().map(|c| c.message.id).collect();
    outbox.ack("p", &ids).await.unwrap();

    let delivered = drain_in_order(&store, &outbox, 5).await;
    let key = |s: &str| ("out".to_owned(), s.to_owned());
    assert_eq!(delivered.len(), 2, "{delivered:?}");
    assert_eq!(delivered[&key("M1-1")], [4, 5]);
    assert_eq!(delivered[&key("M4-1")], [3, 4, 5]);
    assert_eq!(
        outbox.counts().await.unwrap(),
        OutboxCounts {
            pending: 5,
            delivered: 13,
            dead: 2,
        },
        "M2 waits for its lease"
    );
    assert_eq!(outbox.replay(None).await.unwrap(), 2);
    let replayed = outbox
        .claim("p", 10, Duration::from_secs(60), 5)
        .await
        .unwrap();
    let got: Vec<(String, u64)> = replayed
        .iter()
        .map(|c| (c.message.stream_id.to_string(), c.message.stream_version))
        .collect();
    assert_eq!(got, [("M4-1".to_owned(), 1), ("M1-1".to_owned(), 2)]);
    assert!(head_violations(&store, true).await.is_empty());
}
