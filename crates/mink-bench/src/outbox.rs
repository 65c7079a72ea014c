//! OUTBOX: delivering a pre-filled outbox through an [`OutboxProcessor`], to Kafka and to
//! a local webhook receiver, in messages/s. The backend-independent parts: the
//! publishers and what receives their messages, the timed drain, and the profile of
//! where its time goes.
//!
//! The outbox is filled before timing (untimed) by the backend, with one route taking
//! every event to [`DESTINATION`]: `messages` events of the usual 200-byte JSON payload
//! over `streams` streams, appended round by round (round `r` appends version `r` of
//! every stream), as events of many aggregates arrive interleaved in production. An
//! outbox delivers a stream's messages in order, one per stream per round (a claim
//! takes only the oldest pending message of each stream), so with 1,000 streams a
//! round takes at most 1,000 messages, and 50,000 messages need at least 50 rounds.
//!
//! The timed part ([`Drain::run`]) runs `workers` [`OutboxProcessor`]s, each with its
//! own owner name, calling [`OutboxProcessor::run_once`] in a loop on its own task
//! until the messages are delivered; it is timed from the start to the end of the last
//! round (its acknowledgement). Concurrent processors claim disjoint messages (leases),
//! so one claims and acknowledges while another waits for its deliveries. Afterwards,
//! untimed: the store's counts (every message delivered, none dead, none pending) and
//! the receiving side: the Kafka topic is read back whole (distinct `mink-message-id`
//! headers, and each stream's versions in offset order), and the webhook receiver
//! counts the distinct `webhook-id`s it accepted.
//!
//! The configuration ([`processor_config`]): `ProcessorConfig`'s defaults (30 s lease,
//! 10 attempts) with 250 messages per claim, and 3 processors. Measured on PostgreSQL
//! (2 cores), rounds of 250 by 3 processors were the fastest of the sizes tried
//! (1 x 250 … 1 x 1,000, 2 x 250, 2 x 500, 3 x 333, 4 x 200, 4 x 250, 6 x 150,
//! 8 x 125): a larger claim makes PostgreSQL's planner walk the whole outbox (a
//! sequential scan and sort, once the limit passes about 0.5 % of the pending rows)
//! and costs its acknowledgement more per message, and more processors spend more
//! time claiming past each other's leased heads than they gain by overlapping.
//!
//! The store and the publisher are wrapped in thin timing layers ([`TimedStore`],
//! [`TimedPublisher`]: an `Instant` per call) that say where a round's time goes:
//! the claim, the delivery, the acknowledgement. They go to stderr.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use mink_es::FeedSignal;
use mink_es::outbox::store::OutboxCounts;
use mink_es::outbox::{
    Claimed, DeadLetter, MessageStatus, OutboxMessage, OutboxProcessor, OutboxStore,
    ProcessorConfig, PublishError, Publisher,
};
use mink_kafka::KafkaPublisher;
use mink_webhook::{DEFAULT_TOLERANCE, WebhookPublisher, WebhookSecret};
use parking_lot::Mutex;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

use crate::common::Sizes;

/// The outbox destination every benchmark event is routed to.
pub const DESTINATION: &str = "orders";

/// Partitions of each benchmark topic.
pub const PARTITIONS: i32 = 8;

/// The longest a drain may take before the bench gives up on it.
const DRAIN_DEADLINE: Duration = Duration::from_secs(600);

/// How long the read-back of a topic waits for its records.
const CONSUME_DEADLINE: Duration = Duration::from_secs(120);

/// The Kafka brokers, from `MINK_KAFKA_BROKERS` (none when unset or empty).
pub fn brokers() -> Option<String> {
    std::env::var("MINK_KAFKA_BROKERS")
        .ok()
        .filter(|b| !b.trim().is_empty())
}

/// What a processor delivers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// `KafkaPublisher` to the brokers of `MINK_KAFKA_BROKERS`.
    Kafka,
    /// `WebhookPublisher` to a local receiver.
    Webhook,
}

impl Target {
    /// The `impl=` name of the line.
    pub fn name(self) -> &'static str {
        match self {
            Target::Kafka => "kafka",
            Target::Webhook => "webhook",
        }
    }

    /// The targets that can run here: the webhook always, Kafka when
    /// `MINK_KAFKA_BROKERS` is set (else it is skipped, saying so on stderr).
    pub fn available(backend: &str) -> Vec<Target> {
        if brokers().is_some() {
            vec![Target::Kafka, Target::Webhook]
        } else {
            eprintln!(
                "mink-bench: MINK_KAFKA_BROKERS is not set; skipping OUTBOX impl=kafka on {backend}"
            );
            vec![Target::Webhook]
        }
    }
}

/// The processor configuration of the timed runs: the defaults, with `batch_size`
/// messages per claim (each worker gets an owner name of its own in [`Drain::run`]).
/// The lease stays at 30 s, longer than the publishers' timeouts (Kafka's delivery
/// timeout 10 s, the webhook's request timeout 15 s).
pub fn processor_config(sizes: &Sizes) -> ProcessorConfig {
    ProcessorConfig {
        batch_size: sizes.outbox_batch,
        lease: Duration::from_secs(30),
        ..ProcessorConfig::default()
    }
}

/// Which stream gets each event of the pre-fill: round by round, version `r + 1` of
/// every stream in round `r`; the last round may be partial. Returns, per round, the
/// number of streams appended to (streams `0..n`).
pub fn prefill_rounds(messages: u64, streams: usize) -> Vec<usize> {
    let streams = streams.max(1) as u64;
    let mut out = Vec::new();
    let mut left = messages;
    while left > 0 {
        let n = left.min(streams);
        out.push(n as usize);
        left -= n;
    }
    out
}

// ---------------------------------------------------------------------------------
// Publishers and their receiving sides.
// ---------------------------------------------------------------------------------

/// A publisher under test and what checks its deliveries afterwards.
pub enum Sink {
    /// Kafka: the topic is read back.
    Kafka {
        /// The publisher.
        publisher: KafkaPublisher,
        /// The brokers.
        brokers: String,
        /// The benchmark topic (fresh, [`PARTITIONS`] partitions).
        topic: String,
    },
    /// A webhook: the receiver counts.
    Webhook {
        /// The publisher.
        publisher: WebhookPublisher,
        /// The local receiver.
        receiver: Receiver,
    },
}

impl Sink {
    /// Sets up `target`: a fresh topic named after `label`, or a fresh receiver.
    pub async fn create(target: Target, label: &str) -> Result<Sink> {
        match target {
            Target::Kafka => {
                let brokers = brokers().context("MINK_KAFKA_BROKERS is not set")?;
                let topic = topic_name(label);
                create_topic(&brokers, &topic).await?;
                let publisher = kafka_publisher(&brokers, &topic)?;
                Ok(Sink::Kafka {
                    publisher,
                    brokers,
                    topic,
                })
            }
            Target::Webhook => {
                let receiver = Receiver::start().await?;
                let publisher = WebhookPublisher::builder()
                    .url(DESTINATION, receiver.url())
                    .secret_key(receiver.secret())
                    .build()?;
                Ok(Sink::Webhook {
                    publisher,
                    receiver,
                })
            }
        }
    }

    /// The publisher, for the processor.
    pub fn publisher(&self) -> Arc<dyn Publisher> {
        match self {
            Sink::Kafka { publisher, .. } => Arc::new(publisher.clone()),
            Sink::Webhook { publisher, .. } => Arc::new(publisher.clone()),
        }
    }

    /// Checks that the receiving side got `expected` distinct messages (and, on
    /// Kafka, each stream's in version order).
    pub async fn verify(&self, expected: u64) -> Result<()> {
        match self {
            Sink::Kafka { brokers, topic, .. } => {
                let seen = read_topic(brokers, topic, expected).await?;
                seen.check(expected, topic)
            }
            Sink::Webhook { receiver, .. } => receiver.check(expected),
        }
    }

    /// Deletes the topic (a failure is only reported) and stops the receiver.
    pub async fn close(self) {
        match self {
            Sink::Kafka {
                publisher,
                brokers,
                topic,
            } => {
                // Dropping a producer joins its thread: not on a runtime worker.
                drop(tokio::task::spawn_blocking(move || drop(publisher)).await);
                delete_topic(&brokers, &topic).await;
            }
            Sink::Webhook { receiver, .. } => receiver.stop(),
        }
    }
}

/// A fresh topic name for this process and `label`.
pub fn topic_name(label: &str) -> String {
    format!("mink-bench-outbox-{label}-{}", std::process::id())
}

/// The publisher of the `kafka` line: [`KafkaPublisher`] with its defaults (idempotent
/// producer, `acks=all`, 10 s delivery timeout), [`DESTINATION`] to `topic`.
pub fn kafka_publisher(brokers: &str, topic: &str) -> Result<KafkaPublisher> {
    Ok(KafkaPublisher::builder(brokers)
        .topic(DESTINATION, topic)
        .client_id("mink-bench")
        .build()?)
}

fn admin(brokers: &str) -> Result<AdminClient<DefaultClientContext>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?)
}

/// Creates `topic` with [`PARTITIONS`] partitions, one replica.
pub async fn create_topic(brokers: &str, topic: &str) -> Result<()> {
    let admin = admin(brokers)?;
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .with_context(|| format!("cannot create Kafka topic {topic} at {brokers}"))?;
    for r in results {
        r.map_err(|(t, e)| anyhow!("cannot create Kafka topic {t} at {brokers}: {e}"))?;
    }
    Ok(())
}

/// Deletes `topic`; a broker that cannot is only reported.
pub async fn delete_topic(brokers: &str, topic: &str) {
    let deleted = async {
        let admin = admin(brokers)?;
        for r in admin
            .delete_topics(
                &[topic],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await?
        {
            r.map_err(|(t, e)| anyhow!("{t}: {e}"))?;
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = deleted {
        eprintln!("mink-bench: cannot delete Kafka topic {topic}: {e:#}");
    }
}

/// What the read-back of a topic found.
#[derive(Debug, Default)]
pub struct TopicContents {
    /// Records read.
    pub records: u64,
    /// Distinct `mink-message-id` headers.
    pub distinct: u64,
    /// Records without a readable `mink-message-id` or `mink-stream-version` header.
    pub unreadable: u64,
    /// Streams whose versions did not grow in offset order (or spread over partitions).
    pub out_of_order: Vec<String>,
}

impl TopicContents {
    /// Checks that the topic holds `expected` distinct messages, readable and in order.
    pub fn check(&self, expected: u64, topic: &str) -> Result<()> {
        ensure!(
            self.unreadable == 0,
            "{} records of {topic} lack the mink headers",
            self.unreadable
        );
        ensure!(
            self.distinct == expected,
            "{topic} holds {} distinct messages ({} records), the outbox delivered {expected}",
            self.distinct,
            self.records
        );
        ensure!(
            self.out_of_order.is_empty(),
            "streams out of order in {topic}: {:?}",
            &self.out_of_order[..self.out_of_order.len().min(5)]
        );
        if self.records > self.distinct {
            eprintln!(
                "mink-bench:   {topic}: {} duplicate records (delivery is at least once)",
                self.records - self.distinct
            );
        }
        Ok(())
    }
}

/// The state of a topic's read-back.
#[derive(Default)]
struct Seen {
    out: TopicContents,
    ids: HashSet<Uuid>,
    /// Per stream: the partition, offset and version of its last record.
    streams: HashMap<String, (i32, i64, u64)>,
    bad: HashSet<String>,
}

impl Seen {
    fn record<M: Message>(&mut self, m: &M) {
        self.out.records += 1;
        let header = |key: &str| -> Option<&str> {
            m.headers()?
                .iter()
                .find(|h| h.key == key)
                .and_then(|h| h.value)
                .and_then(|v| std::str::from_utf8(v).ok())
        };
        let id = header(mink_kafka::headers::MESSAGE_ID).and_then(|v| Uuid::parse_str(v).ok());
        let version = header(mink_kafka::headers::STREAM_VERSION).and_then(|v| v.parse().ok());
        let key = m.key().and_then(|k| std::str::from_utf8(k).ok());
        let (Some(id), Some(version), Some(key)) = (id, version, key) else {
            self.out.unreadable += 1;
            return;
        };
        self.ids.insert(id);
        let now = (m.partition(), m.offset(), version);
        match self.streams.get_mut(key) {
            None => {
                self.streams.insert(key.to_owned(), now);
            }
            Some(last) => {
                // One stream lives in one partition, read in offset order: its versions
                // must not go back (a redelivery may repeat the last one).
                if last.0 != now.0 || last.1 >= now.1 || last.2 > now.2 {
                    self.bad.insert(key.to_owned());
                }
                *last = now;
            }
        }
    }
}

/// Reads every partition of `topic` from the beginning to its end (all records were
/// acknowledged before this is called), waiting up to [`CONSUME_DEADLINE`] for
/// `expected` distinct messages.
pub async fn read_topic(brokers: &str, topic: &str, expected: u64) -> Result<TopicContents> {
    let brokers = brokers.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set(
                "group.id",
                format!("mink-bench-{}", Uuid::new_v4().simple()),
            )
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("fetch.wait.max.ms", "10")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        let mut seen = Seen::default();
        // The partitions whose end was reached with nothing read after it.
        let mut at_end: HashSet<i32> = HashSet::new();
        let deadline = Instant::now() + CONSUME_DEADLINE;
        while Instant::now() < deadline
            && ((seen.ids.len() as u64) < expected || at_end.len() < PARTITIONS as usize)
        {
            match consumer.poll(Duration::from_millis(200)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    at_end.insert(p);
                }
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(m)) => {
                    at_end.remove(&m.partition());
                    seen.record(&m);
                }
            }
        }
        let mut out = seen.out;
        out.distinct = seen.ids.len() as u64;
        out.out_of_order = seen.bad.into_iter().collect();
        out.out_of_order.sort();
        anyhow::Ok(out)
    })
    .await?
}

/// The local webhook receiver: axum on 127.0.0.1 (a port the system picks), on the
/// bench's runtime. Each request's Standard Webhooks signature is verified
/// (`mink_webhook::verify`: HMAC-SHA256 over the id, timestamp and the ~200-byte
/// body), its `webhook-id` recorded in a set, and it is answered 204 (401 when the
/// signature does not verify). Nothing else is done with the body.
pub struct Receiver {
    base: String,
    state: Arc<ReceiverState>,
    task: tokio::task::JoinHandle<()>,
}

struct ReceiverState {
    secret: WebhookSecret,
    ids: Mutex<HashSet<String>>,
    requests: AtomicU64,
    rejected: AtomicU64,
}

impl Receiver {
    /// Starts a receiver with a fresh secret.
    pub async fn start() -> Result<Receiver> {
        async fn hook(
            State(s): State<Arc<ReceiverState>>,
            headers: HeaderMap,
            body: Bytes,
        ) -> StatusCode {
            s.requests.fetch_add(1, Ordering::Relaxed);
            match mink_webhook::verify(&s.secret, &headers, &body, DEFAULT_TOLERANCE) {
                Ok(v) => {
                    s.ids.lock().insert(v.id);
                    StatusCode::NO_CONTENT
                }
                Err(_) => {
                    s.rejected.fetch_add(1, Ordering::Relaxed);
                    StatusCode::UNAUTHORIZED
                }
            }
        }
        let state = Arc::new(ReceiverState {
            secret: WebhookSecret::generate(),
            ids: Mutex::new(HashSet::new()),
            requests: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        });
        let router = Router::new()
            .route("/hook", post(hook))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                eprintln!("mink-bench: the webhook receiver stopped: {e}");
            }
        });
        Ok(Receiver {
            base: format!("http://{addr}"),
            state,
            task,
        })
    }

    /// The URL to post to.
    pub fn url(&self) -> String {
        format!("{}/hook", self.base)
    }

    /// The signing secret.
    pub fn secret(&self) -> WebhookSecret {
        self.state.secret.clone()
    }

    fn check(&self, expected: u64) -> Result<()> {
        let distinct = self.state.ids.lock().len() as u64;
        let requests = self.state.requests.load(Ordering::Relaxed);
        let rejected = self.state.rejected.load(Ordering::Relaxed);
        ensure!(
            rejected == 0,
            "the webhook receiver rejected {rejected} signatures"
        );
        ensure!(
            distinct == expected,
            "the webhook receiver accepted {distinct} distinct messages ({requests} requests), the outbox delivered {expected}"
        );
        if requests > distinct {
            eprintln!(
                "mink-bench:   webhook: {} duplicate requests (delivery is at least once)",
                requests - distinct
            );
        }
        Ok(())
    }

    fn stop(self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------
// Timing layers.
// ---------------------------------------------------------------------------------

/// Where the time of the timed rounds went, summed over every call (of every worker).
#[derive(Clone, Copy, Debug, Default)]
pub struct Profile {
    /// Claims (rounds).
    pub claims: u64,
    /// Claims that returned nothing (every head leased to another worker).
    pub empty_claims: u64,
    /// Time in claims.
    pub claim_time: Duration,
    /// Messages claimed.
    pub claimed: u64,
    /// Publisher batch calls and the time they took.
    pub publishes: u64,
    /// Time in the publisher.
    pub publish_time: Duration,
    /// Acknowledgements (one statement per round) and the time they took.
    pub acks: u64,
    /// Time in acknowledgements.
    pub ack_time: Duration,
    /// Messages acknowledged.
    pub acked: u64,
    /// Failures recorded.
    pub fails: u64,
}

impl Profile {
    /// This profile less an earlier one of the same counters (the warm-up's).
    pub fn minus(&self, earlier: &Profile) -> Profile {
        Profile {
            claims: self.claims - earlier.claims,
            empty_claims: self.empty_claims - earlier.empty_claims,
            claim_time: self.claim_time.saturating_sub(earlier.claim_time),
            claimed: self.claimed - earlier.claimed,
            publishes: self.publishes - earlier.publishes,
            publish_time: self.publish_time.saturating_sub(earlier.publish_time),
            acks: self.acks - earlier.acks,
            ack_time: self.ack_time.saturating_sub(earlier.ack_time),
            acked: self.acked - earlier.acked,
            fails: self.fails - earlier.fails,
        }
    }

    /// One stderr line: rounds, and the mean time per call of each step.
    pub fn describe(&self, label: &str, workers: usize) -> String {
        let mean = |t: Duration, n: u64| {
            if n == 0 {
                0.0
            } else {
                t.as_secs_f64() * 1e3 / n as f64
            }
        };
        format!(
            "{label}: {} rounds ({} empty) of {:.0} messages on average, {workers} worker(s); \
             per round: claim {:.2} ms, publish {:.2} ms, ack {:.2} ms; \
             in all (summed over workers): claim {:.3} s, publish {:.3} s, ack {:.3} s; \
             {} failed attempts",
            self.claims,
            self.empty_claims,
            if self.claims == self.empty_claims {
                0.0
            } else {
                self.claimed as f64 / (self.claims - self.empty_claims) as f64
            },
            mean(self.claim_time, self.claims),
            mean(self.publish_time, self.publishes),
            mean(self.ack_time, self.acks),
            self.claim_time.as_secs_f64(),
            self.publish_time.as_secs_f64(),
            self.ack_time.as_secs_f64(),
            self.fails,
        )
    }
}

/// An [`OutboxStore`] that times the claims and acknowledgements of the one it wraps.
pub struct TimedStore {
    inner: Arc<dyn OutboxStore>,
    profile: Arc<Mutex<Profile>>,
}

impl TimedStore {
    /// Wraps `inner`, adding to `profile`.
    pub fn new(inner: Arc<dyn OutboxStore>, profile: Arc<Mutex<Profile>>) -> Self {
        TimedStore { inner, profile }
    }
}

impl OutboxStore for TimedStore {
    fn claim<'a>(
        &'a self,
        owner: &'a str,
        limit: usize,
        lease: Duration,
        max_attempts: u32,
    ) -> BoxFuture<'a, mink_es::Result<Vec<Claimed>>> {
        Box::pin(async move {
            let start = Instant::now();
            let r = self.inner.claim(owner, limit, lease, max_attempts).await;
            let elapsed = start.elapsed();
            let mut p = self.profile.lock();
            p.claims += 1;
            p.claim_time += elapsed;
            if let Ok(c) = &r {
                p.claimed += c.len() as u64;
                p.empty_claims += u64::from(c.is_empty());
            }
            r
        })
    }

    fn ack<'a>(&'a self, owner: &'a str, ids: &'a [Uuid]) -> BoxFuture<'a, mink_es::Result<()>> {
        Box::pin(async move {
            let start = Instant::now();
            let r = self.inner.ack(owner, ids).await;
            let elapsed = start.elapsed();
            let mut p = self.profile.lock();
            p.acks += 1;
            p.ack_time += elapsed;
            p.acked += ids.len() as u64;
            r
        })
    }

    fn fail<'a>(
        &'a self,
        owner: &'a str,
        id: Uuid,
        error: &'a str,
        retry_at: Option<DateTime<Utc>>,
    ) -> BoxFuture<'a, mink_es::Result<()>> {
        self.profile.lock().fails += 1;
        self.inner.fail(owner, id, error, retry_at)
    }

    fn dead_letters(&self, limit: usize) -> BoxFuture<'_, mink_es::Result<Vec<DeadLetter>>> {
        self.inner.dead_letters(limit)
    }

    fn replay(&self, id: Option<Uuid>) -> BoxFuture<'_, mink_es::Result<u64>> {
        self.inner.replay(id)
    }

    fn purge_dead(&self, id: Option<Uuid>) -> BoxFuture<'_, mink_es::Result<u64>> {
        self.inner.purge_dead(id)
    }

    fn purge_delivered(&self, older_than: Duration) -> BoxFuture<'_, mink_es::Result<u64>> {
        self.inner.purge_delivered(older_than)
    }

    fn status(&self, id: Uuid) -> BoxFuture<'_, mink_es::Result<Option<(MessageStatus, u32)>>> {
        self.inner.status(id)
    }

    fn counts(&self) -> BoxFuture<'_, mink_es::Result<OutboxCounts>> {
        self.inner.counts()
    }

    fn signal(&self) -> FeedSignal {
        self.inner.signal()
    }
}

/// A [`Publisher`] that times the batches of the one it wraps (and keeps its native
/// batch: Kafka's pipelined one).
pub struct TimedPublisher {
    inner: Arc<dyn Publisher>,
    profile: Arc<Mutex<Profile>>,
}

impl TimedPublisher {
    /// Wraps `inner`, adding to `profile`.
    pub fn new(inner: Arc<dyn Publisher>, profile: Arc<Mutex<Profile>>) -> Self {
        TimedPublisher { inner, profile }
    }
}

impl Publisher for TimedPublisher {
    fn publish<'a>(
        &'a self,
        message: &'a OutboxMessage,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        self.inner.publish(message)
    }

    fn publish_batch<'a>(
        &'a self,
        messages: &'a [OutboxMessage],
    ) -> BoxFuture<'a, Vec<Result<(), PublishError>>> {
        Box::pin(async move {
            let start = Instant::now();
            let r = self.inner.publish_batch(messages).await;
            let elapsed = start.elapsed();
            let mut p = self.profile.lock();
            p.publishes += 1;
            p.publish_time += elapsed;
            r
        })
    }
}

// ---------------------------------------------------------------------------------
// The timed drain.
// ---------------------------------------------------------------------------------

/// `workers` processors on one outbox store and one publisher, run chunk by chunk.
///
/// A chunk ends exactly at its target: each round claims at most what is left of it
/// (the workers reserve their rounds' sizes from what is left, and give back what they
/// did not deliver), so every claim but the last few of a chunk asks for the full
/// `batch_size`.
pub struct Drain {
    store: Arc<dyn OutboxStore>,
    timed_store: Arc<dyn OutboxStore>,
    publisher: Arc<dyn Publisher>,
    config: ProcessorConfig,
    workers: usize,
    profile: Arc<Mutex<Profile>>,
    delivered: Arc<AtomicU64>,
    reserved: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl Drain {
    /// `workers` processors for `store` delivering through `publisher`, each with
    /// `config` and an owner name of its own.
    pub fn new(
        store: Arc<dyn OutboxStore>,
        publisher: Arc<dyn Publisher>,
        config: &ProcessorConfig,
        workers: usize,
    ) -> Self {
        let profile = Arc::new(Mutex::new(Profile::default()));
        Drain {
            timed_store: Arc::new(TimedStore::new(store.clone(), profile.clone())),
            publisher: Arc::new(TimedPublisher::new(publisher, profile.clone())),
            store,
            config: config.clone(),
            workers: workers.max(1),
            profile,
            delivered: Arc::new(AtomicU64::new(0)),
            reserved: Arc::new(AtomicU64::new(0)),
            failed: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Delivers until `until` messages in all were delivered by this drain (or none is
    /// pending any more): each worker runs rounds ([`OutboxProcessor::run_once`]) on
    /// its own task. Returns the messages delivered by this call and the time from its
    /// start to the end of the last round.
    pub async fn run(&mut self, until: u64) -> Result<(u64, Duration)> {
        let before = self.delivered.load(Ordering::Relaxed);
        let start = Instant::now();
        let handles: Vec<_> = (0..self.workers)
            .map(|i| {
                let owner = format!("mink-bench-{}-{i}", std::process::id());
                let (timed_store, publisher) = (self.timed_store.clone(), self.publisher.clone());
                let config = self.config.clone();
                let make = move |batch_size: u64| {
                    OutboxProcessor::new(timed_store.clone())
                        .shared_publisher(DESTINATION, publisher.clone())
                        .config(ProcessorConfig {
                            owner: owner.clone(),
                            batch_size: batch_size as usize,
                            ..config.clone()
                        })
                };
                let batch = self.config.batch_size as u64;
                // The processor of a full round, and one per smaller size at the end.
                let full = make(batch);
                let mut smaller: HashMap<u64, OutboxProcessor> = HashMap::new();
                let store = self.store.clone();
                let delivered = self.delivered.clone();
                let reserved = self.reserved.clone();
                let failed = self.failed.clone();
                tokio::spawn(async move {
                    while delivered.load(Ordering::Relaxed) < until {
                        ensure!(
                            start.elapsed() < DRAIN_DEADLINE,
                            "the outbox was not drained within {DRAIN_DEADLINE:?}"
                        );
                        let want =
                            match reserved.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                                (r < until).then(|| r + batch.min(until - r))
                            }) {
                                Ok(r) => batch.min(until - r),
                                Err(_) => 0,
                            };
                        if want == 0 {
                            // The other workers are finishing the last rounds.
                            tokio::time::sleep(Duration::from_micros(200)).await;
                            continue;
                        }
                        let p = if want == batch {
                            &full
                        } else {
                            smaller.entry(want).or_insert_with(|| make(want))
                        };
                        let r = p.run_once().await?;
                        reserved.fetch_sub(want - r.delivered as u64, Ordering::Relaxed);
                        delivered.fetch_add(r.delivered as u64, Ordering::Relaxed);
                        failed.fetch_add((r.retried + r.dead_lettered) as u64, Ordering::Relaxed);
                        if r.claimed == 0 {
                            // The heads are leased to the other workers, or due later,
                            // or there is nothing left.
                            if store.counts().await?.pending == 0 {
                                break;
                            }
                            tokio::time::sleep(Duration::from_micros(500)).await;
                        }
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        for h in handles {
            h.await??;
        }
        let elapsed = start.elapsed();
        let done = self.delivered.load(Ordering::Relaxed) - before;
        Ok((done, elapsed))
    }

    /// Checks the store's counts: `expected` delivered, nothing dead or pending, no
    /// failed attempt.
    pub async fn verify(&self, expected: u64) -> Result<()> {
        let c = self.store.counts().await?;
        let failed = self.failed.load(Ordering::Relaxed);
        ensure!(
            c.delivered == expected && c.dead == 0 && c.pending == 0,
            "the outbox counts {} delivered, {} dead, {} pending; expected {expected} delivered \
             ({failed} failed attempts)",
            c.delivered,
            c.dead,
            c.pending
        );
        if failed > 0 {
            eprintln!("mink-bench:   {failed} delivery attempts failed and were retried");
        }
        Ok(())
    }

    /// The profile of every round so far.
    pub fn profile(&self) -> Profile {
        *self.profile.lock()
    }

    /// The number of processors.
    pub fn workers(&self) -> usize {
        self.workers
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::common::{new_event, payload, stream_ids};
    use mink_es::outbox::{Outbox, Route};
    use mink_es::{ExpectedVersion, MemoryStore, StreamWriter};

    #[test]
    fn the_prefill_goes_round_by_round() {
        assert_eq!(prefill_rounds(2_500, 1_000), vec![1_000, 1_000, 500]);
        assert_eq!(prefill_rounds(3, 10), vec![3]);
        assert_eq!(prefill_rounds(0, 10), Vec::<usize>::new());
    }

    /// The drain ends each chunk exactly at its target, and the webhook receiver sees
    /// every message once, with a valid signature.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_chunked_drain_delivers_everything_to_the_webhook_receiver() {
        let store = MemoryStore::with_outbox(Outbox::new().route(Route::all(DESTINATION)).unwrap());
        let streams = stream_ids(0, 7).unwrap();
        let body = payload().unwrap();
        for (round, n) in prefill_rounds(100, streams.len()).into_iter().enumerate() {
            for s in &streams[..n] {
                store
                    .append(
                        s,
                        ExpectedVersion::from_version(round as u64),
                        vec![new_event(&body)],
                    )
                    .await
                    .unwrap();
            }
        }
        let sink = Sink::create(Target::Webhook, "test").await.unwrap();
        let config = ProcessorConfig {
            batch_size: 4,
            ..ProcessorConfig::default()
        };
        let outbox: Arc<dyn OutboxStore> = Arc::new(store.outbox_store().unwrap());
        let mut drain = Drain::new(outbox, sink.publisher(), &config, 3);
        assert_eq!(drain.run(10).await.unwrap().0, 10);
        assert_eq!(drain.run(55).await.unwrap().0, 45);
        assert_eq!(drain.run(100).await.unwrap().0, 45);
        drain.verify(100).await.unwrap();
        sink.verify(100).await.unwrap();
        let p = drain.profile();
        assert_eq!(p.acked, 100);
        assert!(p.claimed >= 100 && p.claims >= 25, "{p:?}");
        sink.close().await;
    }
}
