//! An outbox [`Publisher`] for Apache Kafka.
//!
//! [`KafkaPublisher`] delivers each [`OutboxMessage`] as one Kafka record:
//!
//! * **topic**: one per outbox destination, from an explicit map
//!   ([`KafkaPublisherBuilder::topic`]) or else a template
//!   ([`KafkaPublisherBuilder::topic_template`], `"{destination}"` by default; a
//!   [`Template`] with the placeholders every mink publisher knows);
//! * **key**: the stream id, so that every event of a stream goes to one partition
//!   (the `murmur2_random` partitioner, the one the Java client uses, so that other
//!   producers agree on the partition of a key) and keeps its order there;
//! * **value**: the message payload, unchanged;
//! * **headers**: the event's metadata, as the standard headers every mink publisher
//!   sends (table below);
//! * **timestamp**: the time of production (the event's own time is a header, so that
//!   a message replayed from the dead-letter queue days later is not born expired).
//!
//! The producer is idempotent (`enable.idempotence=true`, which implies `acks=all`
//! and bounded in-flight requests): a retry inside the client never duplicates or
//! reorders a record. Where a broker refuses idempotence (it lacks `InitProducerId`),
//! [`KafkaPublisherBuilder::idempotence`]`(false)` falls back to `acks=all` with one
//! request in flight per connection, which keeps the order but may duplicate on
//! retries; consumers then de-duplicate on the `mink-message-id` header, which they
//! must do anyway since outbox delivery is at least once.
//!
//! [`Publisher::publish_batch`] is pipelined: it enqueues every record of the batch,
//! then awaits their delivery reports together, so that librdkafka batches them into
//! few requests.
//!
//! # Headers
//!
//! The standard headers every mink publisher sends, documented in
//! [`mink_es::outbox::headers`], each value as its UTF-8 bytes: `mink-message-id` (the
//! outbox message id: de-duplicate on it), `mink-event-id`, `mink-event-type`,
//! `mink-stream-id` (also the key), `mink-stream-version`, `mink-position`,
//! `mink-destination`, `mink-codec`, `mink-recorded-at`, `mink-correlation-id`,
//! `mink-causation-id`, `mink-user-id`, `mink-tenant-id` (the ids when set),
//! `traceparent`, `tracestate`, `baggage` (when set) and `mink-meta-<key>` for the
//! other custom metadata. The names are constants in [`headers`]. (Before the names
//! were unified, this crate sent `mink-created-at` and `mink-custom-<key>` instead of
//! `mink-recorded-at` and `mink-meta-<key>`, and no `mink-destination`.)
//!
//! # Failures
//!
//! Every delivery is bounded by the delivery timeout
//! ([`KafkaPublisherBuilder::delivery_timeout`], 10 s by default, librdkafka's
//! `message.timeout.ms`); keep it shorter than the outbox processor's lease.
//!
//! | failure | kind |
//! |---|---|
//! | delivery timeout (`MessageTimedOut`), no broker reachable (`AllBrokersDown`, `BrokerTransportFailure`, `Resolve`) | retryable |
//! | broker availability: `NotEnoughReplicas(AfterAppend)`, `LeaderNotAvailable`, `NotLeaderForPartition`, `RequestTimedOut`, `NetworkException`, `ThrottlingQuotaExceeded`, storage errors | retryable |
//! | the local queue stayed full until the delivery timeout (`QueueFull`) | retryable |
//! | a fatal idempotence error (`Fatal`, `OutOfOrderSequenceNumber`, `ProducerFenced`, …): the producer is rebuilt | retryable |
//! | authentication (`Authentication`, `SaslAuthenticationFailed`): the whole client is misconfigured, not the message | retryable |
//! | anything not listed below | retryable |
//! | the message can never fit: `MessageSizeTooLarge`, `InvalidMessageSize`, `MessageBatchTooLarge` | permanent |
//! | the broker refused the record: `InvalidRecord`, `InvalidTimestamp`, `PolicyViolation`, `UnsupportedForMessageFormat`, `UnsupportedCompressionType` | permanent |
//! | the topic: `TopicAuthorizationFailed`, `ClusterAuthorizationFailed`, `InvalidTopic`, an invalid topic name from the template | permanent |
//! | a topic absent from the cluster: `UnknownTopicOrPartition`, `UnknownTopic`, `UnknownPartition` (librdkafka retries these inside the client, as during a leader move, and reports them only once the cluster's metadata has shown no such topic for `topic.metadata.propagation.max.ms`, set to half the delivery timeout) | permanent |
//! | `InvalidRequiredAcks`, `InvalidArgument` | permanent |
//!
//! Retryable failures go back to the outbox with backoff (and to the dead-letter queue
//! after the processor's attempt limit); permanent ones go to the dead-letter queue at
//! once.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use mink_es::outbox::{Outbox, OutboxProcessor, Route};
//! use mink_es::MemoryStore;
//! use mink_kafka::KafkaPublisher;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = MemoryStore::with_outbox(Outbox::new().route(Route::all("orders"))?);
//! let publisher = KafkaPublisher::builder("127.0.0.1:9092")
//!     .topic("orders", "shop.orders.v1")
//!     .delivery_timeout(Duration::from_secs(10))
//!     .build()?;
//! let outbox = Arc::new(store.outbox_store().ok_or("no outbox")?);
//! let processor = OutboxProcessor::new(outbox).publisher("orders", publisher);
//! processor.run(tokio_util::sync::CancellationToken::new()).await?;
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

pub mod classify;
pub mod headers;

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use mink_es::outbox::template::verbatim;
use mink_es::outbox::{OutboxMessage, Placeholder, PublishError, Publisher, Template};
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use tracing::Instrument;

/// The placeholder a topic template replaces with the destination name.
pub const DESTINATION_PLACEHOLDER: &str = "{destination}";

/// The longest legal Kafka topic name.
pub const MAX_TOPIC_LEN: usize = 249;

/// Errors building a [`KafkaPublisher`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is invalid; the text names it.
    #[error("invalid Kafka publisher configuration: {0}")]
    InvalidConfig(String),
    /// librdkafka refused the configuration or could not create the producer.
    #[error("cannot create the Kafka producer: {0}")]
    Client(#[from] KafkaError),
}

/// Checks a Kafka topic name: 1 to 249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
///
/// # Errors
/// A description of what is wrong.
pub fn validate_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() || topic.len() > MAX_TOPIC_LEN {
        return Err(format!(
            "a Kafka topic name has 1 to {MAX_TOPIC_LEN} characters, not {} ({topic:?})",
            topic.len()
        ));
    }
    if topic == "." || topic == ".." {
        return Err(format!("{topic:?} is not a legal Kafka topic name"));
    }
    if let Some(c) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "a Kafka topic name holds only ASCII letters, digits, '.', '_' and '-', not {c:?} ({topic:?})"
        ));
    }
    Ok(())
}

/// How destinations map to topics, as configured.
#[derive(Clone, Debug)]
struct Topics {
    map: HashMap<String, String>,
    template: String,
}

impl Topics {
    /// Checks the explicit topics and the template.
    fn check(&self) -> Result<ResolvedTopics, Error> {
        for (destination, topic) in &self.map {
            validate_topic(topic).map_err(|e| {
                Error::InvalidConfig(format!("the topic of destination {destination:?}: {e}"))
            })?;
        }
        let invalid = |e: String| {
            Error::InvalidConfig(format!("the topic template {:?}: {e}", self.template))
        };
        let template =
            Template::parse(self.template.as_str()).map_err(|e| invalid(e.to_string()))?;
        // A stream's messages must share a topic to keep their order (and a topic per
        // stream would be one topic per aggregate).
        if let Some(p) = template
            .placeholders()
            .find(|p| matches!(p, Placeholder::EventType | Placeholder::StreamId))
        {
            return Err(invalid(format!(
                "{p} would spread one stream's messages over several topics (or make a topic per stream); use {{destination}} and {{category}}"
            )));
        }
        // Its literal text must suit a topic name whatever the values.
        validate_topic(&template.render_with(|_| "x", verbatim)).map_err(invalid)?;
        Ok(ResolvedTopics {
            map: self.map.clone(),
            template,
        })
    }
}

/// How destinations map to topics, checked.
#[derive(Clone, Debug)]
struct ResolvedTopics {
    map: HashMap<String, String>,
    template: Template,
}

impl ResolvedTopics {
    fn for_message(&self, m: &OutboxMessage) -> Result<String, String> {
        if let Some(t) = self.map.get(&m.destination) {
            return Ok(t.clone());
        }
        self.checked(&m.destination, self.template.render(m, verbatim))
    }

    fn for_destination(&self, destination: &str) -> Result<String, String> {
        if let Some(t) = self.map.get(destination) {
            return Ok(t.clone());
        }
        if let Some(p) = self
            .template
            .placeholders()
            .find(|p| *p != Placeholder::Destination)
        {
            return Err(format!(
                "the topic template {:?} takes {p} from each message: the topic of destination {destination:?} depends on the message",
                self.template.as_str()
            ));
        }
        self.checked(
            destination,
            self.template.render_with(|_| destination, verbatim),
        )
    }

    fn checked(&self, destination: &str, topic: String) -> Result<String, String> {
        validate_topic(&topic).map_err(|e| {
            format!("destination {destination:?} maps to an invalid topic name: {e}")
        })?;
        Ok(topic)
    }
}

/// Configures a [`KafkaPublisher`]; made by [`KafkaPublisher::builder`].
///
/// Its `Debug` form shows the names of the extra properties, not their values (they may
/// hold credentials).
#[derive(Clone)]
pub struct KafkaPublisherBuilder {
    brokers: String,
    topics: Topics,
    delivery_timeout: Duration,
    idempotence: bool,
    client_id: String,
    properties: Vec<(String, String)>,
}

impl std::fmt::Debug for KafkaPublisherBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPublisherBuilder")
            .field("brokers", &self.brokers)
            .field("topics", &self.topics)
            .field("delivery_timeout", &self.delivery_timeout)
            .field("idempotence", &self.idempotence)
            .field("client_id", &self.client_id)
            .field(
                "properties",
                &self.properties.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl KafkaPublisherBuilder {
    /// Sends messages for `destination` to `topic` (before the template is consulted).
    pub fn topic(mut self, destination: impl Into<String>, topic: impl Into<String>) -> Self {
        self.topics.map.insert(destination.into(), topic.into());
        self
    }

    /// The topic of every destination without an explicit [`topic`](Self::topic):
    /// `{destination}` is replaced by the destination name (`"events.{destination}"`).
    /// Default: `"{destination}"`, the destination name itself. A template without
    /// placeholders sends every other destination to one topic.
    ///
    /// The template is a [`Template`]: it may also take `{category}` from each message,
    /// inserted as it is (a value that makes an invalid topic name fails that message
    /// permanently). `{event_type}` and `{stream_id}` are refused: a stream keeps its
    /// order only within one topic, and a topic per stream would mean a topic per
    /// aggregate. [`build`](Self::build) refuses a template that does not parse, uses
    /// those placeholders, or whose fixed text cannot be part of a topic name.
    pub fn topic_template(mut self, template: impl Into<String>) -> Self {
        self.topics.template = template.into();
        self
    }

    /// How long one delivery may take, retries inside the client included, before it
    /// fails as retryable (librdkafka's `message.timeout.ms`). Default 10 s. Keep it
    /// shorter than the outbox processor's lease.
    pub fn delivery_timeout(mut self, timeout: Duration) -> Self {
        self.delivery_timeout = timeout;
        self
    }

    /// Whether the producer is idempotent (default `true`). Turn it off only for a
    /// broker that does not implement `InitProducerId`: the producer then keeps the
    /// order with one request in flight per connection, and a retry may duplicate a
    /// record (consumers de-duplicate on `mink-message-id`).
    pub fn idempotence(mut self, enabled: bool) -> Self {
        self.idempotence = enabled;
        self
    }

    /// The `client.id` the brokers see. Default `mink-outbox`.
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = id.into();
        self
    }

    /// Sets any librdkafka producer property (`linger.ms`, `compression.type`,
    /// `security.protocol`, `sasl.*`, …), applied after this builder's own settings, so
    /// it can override them. See librdkafka's `CONFIGURATION.md`. Set the delivery
    /// timeout with [`delivery_timeout`](Self::delivery_timeout), not
    /// `message.timeout.ms`: the publisher bounds its own waits by it.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.push((key.into(), value.into()));
        self
    }

    /// The librdkafka configuration this builder makes.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for no brokers, a zero or huge delivery timeout, an
    /// invalid explicit topic name or an invalid topic template.
    pub fn client_config(&self) -> Result<ClientConfig, Error> {
        if self.brokers.trim().is_empty() {
            return Err(Error::InvalidConfig(
                "no bootstrap brokers (host:port, comma-separated)".into(),
            ));
        }
        let timeout_ms = self.delivery_timeout.as_millis();
        if timeout_ms == 0 || timeout_ms > i32::MAX as u128 {
            return Err(Error::InvalidConfig(format!(
                "the delivery timeout must be between 1 ms and {} ms, not {:?}",
                i32::MAX,
                self.delivery_timeout
            )));
        }
        self.topics.check()?;
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", &self.client_id)
            .set("acks", "all")
            .set("message.timeout.ms", timeout_ms.to_string())
            // A topic missing from the cluster fails as UnknownTopic (permanent) within
            // half the delivery timeout, before the timeout (retryable) would.
            .set(
                "topic.metadata.propagation.max.ms",
                (timeout_ms / 2).clamp(1, 30_000).to_string(),
            )
            .set("partitioner", "murmur2_random");
        if self.idempotence {
            c.set("enable.idempotence", "true");
        } else {
            c.set("enable.idempotence", "false")
                .set("max.in.flight.requests.per.connection", "1");
        }
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        Ok(c)
    }

    /// Creates the publisher. It connects lazily: an unreachable broker shows as
    /// retryable delivery failures, not here.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] (see [`client_config`](Self::client_config)), or
    /// [`Error::Client`] when librdkafka refuses a property.
    pub fn build(self) -> Result<KafkaPublisher, Error> {
        let config = self.client_config()?;
        let topics = self.topics.check()?;
        let producer: FutureProducer = config.create()?;
        Ok(KafkaPublisher {
            inner: Arc::new(Inner {
                producer: RwLock::new(Arc::new(producer)),
                config,
                topics,
                delivery_timeout: self.delivery_timeout,
            }),
        })
    }
}

/// Delivers outbox messages to Kafka: one record per message, keyed by stream id, with
/// the metadata as headers, through an idempotent producer. See the [crate] docs.
///
/// Cloning is cheap and shares the producer.
#[derive(Clone)]
pub struct KafkaPublisher {
    inner: Arc<Inner>,
}

struct Inner {
    producer: RwLock<Arc<FutureProducer>>,
    config: ClientConfig,
    topics: ResolvedTopics,
    delivery_timeout: Duration,
}

impl std::fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPublisher")
            .field("topics", &self.inner.topics)
            .field("delivery_timeout", &self.inner.delivery_timeout)
            .finish_non_exhaustive()
    }
}

/// How a record of a batch stands after enqueueing.
enum Enqueued {
    Done(Result<(), PublishError>),
    Waiting(DeliveryFuture),
}

impl KafkaPublisher {
    /// A builder for a publisher to the cluster at `brokers` (`host:port`,
    /// comma-separated).
    pub fn builder(brokers: impl Into<String>) -> KafkaPublisherBuilder {
        KafkaPublisherBuilder {
            brokers: brokers.into(),
            topics: Topics {
                map: HashMap::new(),
                template: DESTINATION_PLACEHOLDER.to_owned(),
            },
            delivery_timeout: Duration::from_secs(10),
            idempotence: true,
            client_id: "mink-outbox".to_owned(),
            properties: Vec::new(),
        }
    }

    /// The topic that messages for `destination` go to.
    ///
    /// # Errors
    /// A description when the template makes an invalid topic name of it, or when the
    /// template takes a value from each message (`{category}`, …): see
    /// [`topic_for_message`](Self::topic_for_message).
    pub fn topic_for(&self, destination: &str) -> Result<String, String> {
        self.inner.topics.for_destination(destination)
    }

    /// The topic that `message` goes to.
    ///
    /// # Errors
    /// A description when the template makes an invalid topic name of it.
    pub fn topic_for_message(&self, message: &OutboxMessage) -> Result<String, String> {
        self.inner.topics.for_message(message)
    }

    /// The delivery timeout.
    pub fn delivery_timeout(&self) -> Duration {
        self.inner.delivery_timeout
    }

    /// The underlying producer (for metadata queries, statistics or flushing).
    pub fn producer(&self) -> Arc<FutureProducer> {
        self.inner
            .producer
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until every record handed to the producer is delivered or failed, up to
    /// `timeout`. [`Publisher::publish_batch`] already awaits its own records; this is
    /// for a shutdown.
    ///
    /// # Errors
    /// The client's error when records are still in flight at the timeout.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer().flush(timeout)
    }

    /// Enqueues every message, then awaits every delivery report.
    async fn deliver(&self, messages: &[OutboxMessage]) -> Vec<Result<(), PublishError>> {
        let producer = self.producer();
        let deadline = Instant::now() + self.inner.delivery_timeout;
        let mut enqueued = Vec::with_capacity(messages.len());
        for m in messages {
            enqueued.push(self.enqueue(&producer, m, deadline).await);
        }
        // librdkafka reports every record within message.timeout.ms; the guard only
        // protects against a lost report.
        let guard = self.inner.delivery_timeout + Duration::from_secs(5);
        let results = futures::future::join_all(enqueued.into_iter().map(|e| async move {
            match e {
                Enqueued::Done(r) => r,
                Enqueued::Waiting(report) => match tokio::time::timeout(guard, report).await {
                    Ok(Ok(Ok(_delivery))) => Ok(()),
                    Ok(Ok(Err((e, _message)))) => Err(classify::publish_error(e)),
                    Ok(Err(_canceled)) => Err(PublishError::retryable(
                        "the Kafka producer was dropped before reporting the delivery",
                    )),
                    Err(_elapsed) => Err(PublishError::retryable(format!(
                        "no Kafka delivery report within {guard:?}"
                    ))),
                },
            }
        }))
        .await;
        self.rebuild_if_fatal(&producer);
        let failed = results.iter().filter(|r| r.is_err()).count();
        if failed > 0 {
            tracing::debug!(failed, "Kafka deliveries failed");
        }
        results
    }

    async fn enqueue(
        &self,
        producer: &FutureProducer,
        m: &OutboxMessage,
        deadline: Instant,
    ) -> Enqueued {
        let topic = match self.inner.topics.for_message(m) {
            Ok(t) => t,
            Err(e) => return Enqueued::Done(Err(PublishError::permanent(e))),
        };
        let mut record = FutureRecord::to(&topic)
            .key(m.stream_id.as_str())
            .payload(m.payload.as_ref())
            .headers(headers::for_message(m));
        loop {
            match producer.send_result(record) {
                Ok(report) => return Enqueued::Waiting(report),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if Instant::now() < deadline =>
                {
                    // The local queue is full: wait for deliveries to drain it.
                    record = back;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((e, _)) => return Enqueued::Done(Err(classify::publish_error(e))),
            }
        }
    }

    /// After a fatal error (an idempotence violation), librdkafka refuses every further
    /// record: replace the producer with a fresh one (a new producer id).
    fn rebuild_if_fatal(&self, used: &Arc<FutureProducer>) {
        let Some((code, reason)) = used.client().fatal_error() else {
            return;
        };
        let mut current = self
            .inner
            .producer
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if !Arc::ptr_eq(&current, used) {
            return; // another delivery already replaced it
        }
        match self.inner.config.create::<FutureProducer>() {
            Ok(fresh) => {
                tracing::warn!(?code, %reason, "fatal Kafka producer error; producer rebuilt");
                let old = std::mem::replace(&mut *current, Arc::new(fresh));
                drop(current);
                // Dropping a producer joins its polling thread (and waits up to 500 ms for
                // its purged records): not on this task.
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => drop(rt.spawn_blocking(move || drop(old))),
                    Err(_) => drop(std::thread::spawn(move || drop(old))),
                }
            }
            Err(e) => {
                tracing::error!(?code, %reason, error = %e, "fatal Kafka producer error; cannot rebuild the producer");
            }
        }
    }
}

impl Publisher for KafkaPublisher {
    fn publish<'a>(
        &'a self,
        message: &'a OutboxMessage,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async move {
            self.deliver(std::slice::from_ref(message))
                .instrument(tracing::debug_span!("kafka.publish", messages = 1))
                .await
                .pop()
                .unwrap_or_else(|| Err(PublishError::retryable("no delivery result")))
        })
    }

    fn publish_batch<'a>(
        &'a self,
        messages: &'a [OutboxMessage],
    ) -> BoxFuture<'a, Vec<Result<(), PublishError>>> {
        Box::pin(self.deliver(messages).instrument(tracing::debug_span!(
            "kafka.publish",
            messages = messages.len()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        assert!(validate_topic("orders.v1_x-y").is_ok());
        assert!(validate_topic("").is_err());
        assert!(validate_topic("..").is_err());
        assert!(validate_topic("a b").is_err());
        assert!(validate_topic("ordres/é").is_err());
        assert!(validate_topic(&"a".repeat(250)).is_err());
    }

    #[test]
    fn destinations_map_to_topics() {
        let p = KafkaPublisher::builder("127.0.0.1:1")
            .topic("billing", "billing-events")
            .topic_template("mink.{destination}")
            .build()
            .unwrap();
        assert_eq!(p.topic_for("billing").unwrap(), "billing-events");
        assert_eq!(p.topic_for("audit").unwrap(), "mink.audit");
        assert!(p.topic_for("bad name").is_err());
        let plain = KafkaPublisher::builder("127.0.0.1:1").build().unwrap();
        assert_eq!(plain.topic_for("audit").unwrap(), "audit");
    }

    #[test]
    fn topic_templates_may_take_values_from_the_message() {
        use mink_es::{Bytes, CodecTag, EventId, Metadata, Position, StreamId};
        let message = |destination: &str, stream: &str| OutboxMessage {
            id: mink_es::Uuid::nil(),
            destination: destination.into(),
            stream_id: StreamId::new(stream).unwrap(),
            event_id: EventId::new(),
            event_type: "Placed".into(),
            stream_version: 1,
            position: Position::default(),
            payload: Bytes::new(),
            codec: CodecTag::JSON,
            metadata: Metadata::default(),
            created_at: Default::default(),
        };
        let p = KafkaPublisher::builder("127.0.0.1:1")
            .topic("billing", "billing-events")
            .topic_template("{destination}.{category}")
            .build()
            .unwrap();
        assert_eq!(
            p.topic_for_message(&message("audit", "order-7")).unwrap(),
            "audit.order"
        );
        assert_eq!(
            p.topic_for_message(&message("billing", "order-7")).unwrap(),
            "billing-events",
            "an explicit topic wins"
        );
        assert_eq!(p.topic_for("billing").unwrap(), "billing-events");
        let e = p.topic_for("audit").unwrap_err();
        assert!(e.contains("{category}"), "{e}");
        assert!(
            p.topic_for_message(&message("audit", "ordre/é-7")).is_err(),
            "an invalid value fails the message"
        );
        for bad in [
            "events.{dest}",
            "events.{destination",
            "events/{destination}",
            "",
            "{destination}.{event_type}",
            "{stream_id}",
        ] {
            assert!(
                matches!(
                    KafkaPublisher::builder("h:1").topic_template(bad).build(),
                    Err(Error::InvalidConfig(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn invalid_configuration_is_refused() {
        assert!(matches!(
            KafkaPublisher::builder(" ").build(),
            Err(Error::InvalidConfig(_))
        ));
        assert!(matches!(
            KafkaPublisher::builder("h:1")
                .delivery_timeout(Duration::ZERO)
                .build(),
            Err(Error::InvalidConfig(_))
        ));
        assert!(matches!(
            KafkaPublisher::builder("h:1")
                .topic("d", "no spaces")
                .build(),
            Err(Error::InvalidConfig(_))
        ));
        assert!(matches!(
            KafkaPublisher::builder("h:1")
                .set("no.such.property", "1")
                .build(),
            Err(Error::Client(_))
        ));
        let debug = format!(
            "{:?}",
            KafkaPublisher::builder("h:1").set("sasl.password", "hunter2")
        );
        assert!(debug.contains("sasl.password") && !debug.contains("hunter2"));
    }

    #[test]
    fn idempotence_is_on_by_default() {
        let b = KafkaPublisher::builder("h:1");
        let c = b.client_config().unwrap();
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("acks"), Some("all"));
        let c = b.idempotence(false).client_config().unwrap();
        assert_eq!(c.get("enable.idempotence"), Some("false"));
        assert_eq!(c.get("max.in.flight.requests.per.connection"), Some("1"));
    }
}
