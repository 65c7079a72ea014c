//! KafkaPublisher against a real broker: `MINK_KAFKA_BROKERS` (`127.0.0.1:9092`; in
//! development and CI a `tansu` broker started by `scripts/services.sh start`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use mink_es::outbox::{
    Outbox, OutboxMessage, OutboxProcessor, OutboxStore, ProcessorConfig, Publisher, Route,
};
use mink_es::prelude::*;
use mink_es::{
    Bytes, CodecTag, EventId, ExpectedVersion, MemoryStore, Metadata, NewEvent, Position, StreamId,
};
use mink_kafka::{KafkaPublisher, headers};
use mink_testing::services::service_url;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::producer::Producer as _;
use rdkafka::{Offset, TopicPartitionList};

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

fn brokers() -> Option<String> {
    service_url("MINK_KAFKA_BROKERS")
}

fn unique(label: &str) -> String {
    format!("mink-test-{label}-{}", uuid::Uuid::new_v4().simple())
}

async fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<_> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("cannot create topic {t}: {e}"));
    }
}

/// Reads every partition of `topic` from the start until `expected` records arrived.
async fn consume(
    brokers: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
) -> Vec<OwnedMessage> {
    let brokers = brokers.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", unique("group"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(&topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut out = Vec::new();
        while out.len() < expected && Instant::now() < deadline {
            if let Some(m) = consumer.poll(Duration::from_millis(200)) {
                out.push(m.unwrap().detach());
            }
        }
        // Anything beyond the expected count would be a duplicate: look briefly.
        let settle = Instant::now() + Duration::from_millis(500);
        while Instant::now() < settle {
            if let Some(m) = consumer.poll(Duration::from_millis(100)) {
                out.push(m.unwrap().detach());
            }
        }
        out
    })
    .await
    .unwrap()
}

fn message(destination: &str, stream: &str, version: u64, metadata: Metadata) -> OutboxMessage {
    let event_id = EventId::new();
    OutboxMessage {
        id: OutboxMessage::id_for(event_id, destination),
        destination: destination.to_owned(),
        stream_id: StreamId::new(stream).unwrap(),
        event_id,
        event_type: "OrderPlaced".to_owned(),
        stream_version: version,
        position: Position::new(0, version),
        payload: Bytes::from(format!(r#"{{"stream":"{stream}","v":{version}}}"#)),
        codec: CodecTag::JSON,
        metadata,
        created_at: Utc::now(),
    }
}

fn header<'m>(m: &'m OwnedMessage, key: &str) -> Option<&'m str> {
    let h = m.headers()?;
    h.iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .map(|v| std::str::from_utf8(v).unwrap())
}

fn publisher(brokers: &str, destination: &str, topic: &str) -> KafkaPublisher {
    KafkaPublisher::builder(brokers)
        .topic(destination, topic)
        .delivery_timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Checks per-stream placement and order: one partition per stream, versions 1..=n in
/// offset order; returns the number of versions seen per stream.
fn assert_stream_order(got: &[OwnedMessage]) -> BTreeMap<String, u64> {
    let mut by_stream: HashMap<String, Vec<(i32, i64, u64)>> = HashMap::new();
    for m in got {
        let key = std::str::from_utf8(m.key().unwrap()).unwrap().to_owned();
        assert_eq!(
            header(m, headers::STREAM_ID),
            Some(key.as_str()),
            "key = stream id"
        );
        let version: u64 = header(m, headers::STREAM_VERSION).unwrap().parse().unwrap();
        by_stream
            .entry(key)
            .or_default()
            .push((m.partition(), m.offset(), version));
    }
    let mut counts = BTreeMap::new();
    for (stream, mut records) in by_stream {
        let partition = records[0].0;
        assert!(
            records.iter().all(|r| r.0 == partition),
            "stream {stream} spread over partitions: {records:?}"
        );
        records.sort_by_key(|r| r.1);
        let versions: Vec<u64> = records.iter().map(|r| r.2).collect();
        let want: Vec<u64> = (1..=versions.len() as u64).collect();
        assert_eq!(versions, want, "stream {stream} out of order");
        counts.insert(stream, versions.len() as u64);
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_keyed_by_stream_ordered_and_carry_headers() {
    let Some(brokers) = brokers() else { return };
    let topic = unique("keyed");
    create_topic(&brokers, &topic, 4).await;
    let p = publisher(&brokers, "orders", &topic);

    let md = Metadata::default()
        .with_correlation_id("corr-1")
        .with_causation_id("cause-1")
        .with_user_id("alice")
        .with_tenant_id("acme")
        .with_custom("traceparent", TRACEPARENT)
        .with_custom("source", "web");
    let streams = [
        "Order-1",
        "Order-2",
        "Order-3",
        "Cart-7",
        "Cart-8",
        "Invoice-9",
    ];
    let mut sent = Vec::new();
    // One message at a time per stream, interleaving the streams, as the processor does.
    for version in 1..=5u64 {
        let round: Vec<_> = streams
            .iter()
            .map(|s| message("orders", s, version, md.clone()))
            .collect();
        for r in p.publish_batch(&round).await {
            r.unwrap();
        }
        sent.extend(round);
    }
    // And single publishes.
    let single = message("orders", "Single-1", 1, Metadata::default());
    p.publish(&single).await.unwrap();
    sent.push(single.clone());

    let got = consume(&brokers, &topic, 4, sent.len()).await;
    assert_eq!(got.len(), sent.len(), "every message arrives exactly once");
    let counts = assert_stream_order(&got);
    assert_eq!(counts.len(), streams.len() + 1);
    assert!(streams.iter().all(|s| counts[*s] == 5));
    let partitions: std::collections::HashSet<i32> = got.iter().map(|m| m.partition()).collect();
    assert!(
        partitions.len() > 1,
        "six streams hashed onto one of four partitions: {partitions:?}"
    );

    let by_id: HashMap<String, &OutboxMessage> =
        sent.iter().map(|m| (m.id.to_string(), m)).collect();
    for m in &got {
        let id = header(m, headers::MESSAGE_ID).unwrap();
        let want = by_id[id];
        assert_eq!(m.payload().unwrap(), want.payload.as_ref());
        assert_eq!(
            header(m, headers::EVENT_ID),
            Some(want.event_id.to_string().as_str())
        );
        assert_eq!(header(m, headers::EVENT_TYPE), Some("OrderPlaced"));
        assert_eq!(header(m, headers::CODEC), Some("json"));
        assert_eq!(
            header(m, headers::POSITION),
            Some(want.position.to_string().as_str())
        );
        assert_eq!(header(m, headers::STREAM_ID), Some(want.stream_id.as_str()));
        assert_eq!(
            header(m, headers::STREAM_VERSION),
            Some(want.stream_version.to_string().as_str())
        );
        assert_eq!(header(m, headers::DESTINATION), Some("orders"));
        assert_eq!(
            header(m, headers::RECORDED_AT),
            Some(
                want.created_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                    .as_str()
            )
        );
        let names: Vec<&str> = m.headers().unwrap().iter().map(|h| h.key).collect();
        if want.stream_id.as_str() == "Single-1" {
            assert_eq!(
                header(m, headers::CORRELATION_ID),
                None,
                "unset ids are left out"
            );
            assert_eq!(header(m, "traceparent"), None);
            assert_eq!(names.len(), 9, "{names:?}");
            continue;
        }
        assert_eq!(header(m, headers::CORRELATION_ID), Some("corr-1"));
        assert_eq!(header(m, headers::CAUSATION_ID), Some("cause-1"));
        assert_eq!(header(m, headers::USER_ID), Some("alice"));
        assert_eq!(header(m, headers::TENANT_ID), Some("acme"));
        assert_eq!(header(m, "traceparent"), Some(TRACEPARENT));
        assert_eq!(header(m, "mink-meta-source"), Some("web"));
        assert_eq!(
            names,
            [
                "mink-message-id",
                "mink-event-id",
                "mink-event-type",
                "mink-stream-id",
                "mink-stream-version",
                "mink-position",
                "mink-destination",
                "mink-codec",
                "mink-recorded-at",
                "mink-correlation-id",
                "mink-causation-id",
                "mink-user-id",
                "mink-tenant-id",
                "traceparent",
                "mink-meta-source",
            ]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_two_thousand_is_pipelined() {
    let Some(brokers) = brokers() else { return };
    let topic = unique("batch");
    create_topic(&brokers, &topic, 3).await;
    let p = publisher(&brokers, "orders", &topic);
    // Connect, fetch metadata and get a producer id first, so that the timing below is
    // the pipelined batch alone.
    p.publish(&message("orders", "Warm-up", 1, Metadata::default()))
        .await
        .unwrap();
    // 2,000 messages of 2,000 streams (a processor batch holds one message per stream).
    let batch: Vec<_> = (0..2000)
        .map(|i| message("orders", &format!("Order-{i}"), 1, Metadata::default()))
        .collect();
    let start = Instant::now();
    let results = p.publish_batch(&batch).await;
    let took = start.elapsed();
    assert_eq!(results.len(), 2000);
    assert!(
        results.iter().all(Result::is_ok),
        "{:?}",
        results.iter().find(|r| r.is_err())
    );
    eprintln!(
        "published 2,000 records in {took:?} ({:.0}/s)",
        2000.0 / took.as_secs_f64()
    );
    let got = consume(&brokers, &topic, 3, 2001).await;
    assert_eq!(got.len(), 2001);
    let ids: std::collections::HashSet<_> = got
        .iter()
        .map(|m| header(m, headers::MESSAGE_ID).unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 2001, "no duplicates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_processor_delivers_a_memory_store_outbox() {
    let Some(brokers) = brokers() else { return };
    let topic = unique("e2e");
    create_topic(&brokers, &topic, 3).await;
    let store = MemoryStore::with_outbox(Outbox::new().route(Route::all("orders")).unwrap());
    let md = Metadata::default().with_custom("traceparent", TRACEPARENT);
    let streams = 20;
    let per_stream = 10;
    for v in 0..per_stream {
        for s in 0..streams {
            let e = NewEvent::new("OrderPlaced", format!(r#"{{"s":{s},"v":{v}}}"#))
                .with_metadata(md.clone());
            store
                .append(
                    &StreamId::new(format!("Order-{s}")).unwrap(),
                    ExpectedVersion::Any,
                    vec![e],
                )
                .await
                .unwrap();
        }
    }
    let total = (streams * per_stream) as u64;
    let outbox = Arc::new(store.outbox_store().unwrap());
    assert_eq!(outbox.counts().await.unwrap().pending, total);
    let processor = OutboxProcessor::new(outbox.clone())
        .publisher("orders", publisher(&brokers, "orders", &topic))
        .config(ProcessorConfig {
            owner: "kafka-e2e".into(),
            poll_interval: Duration::from_millis(20),
            base_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(100),
            ..ProcessorConfig::default()
        });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut rounds = 0;
    while outbox.counts().await.unwrap().delivered < total && Instant::now() < deadline {
        let r = processor.run_once().await.unwrap();
        assert_eq!(r.retried + r.dead_lettered, 0, "{r:?}");
        rounds += 1;
        if r.claimed == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let counts = outbox.counts().await.unwrap();
    assert_eq!(
        (counts.pending, counts.delivered, counts.dead),
        (0, total, 0)
    );
    // The processor sends one message per stream per round: one round per version.
    assert_eq!(rounds, per_stream);

    let got = consume(&brokers, &topic, 3, total as usize).await;
    assert_eq!(got.len() as u64, total);
    let seen = assert_stream_order(&got);
    assert_eq!(seen.len(), streams);
    assert!(seen.values().all(|n| *n == per_stream as u64));
    assert!(
        got.iter()
            .all(|m| header(m, "traceparent") == Some(TRACEPARENT))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_is_a_permanent_failure() {
    let Some(brokers) = brokers() else { return };
    let p = KafkaPublisher::builder(&brokers)
        .topic("orders", unique("missing"))
        .delivery_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let m = message("orders", "Order-1", 1, Metadata::default());
    let start = Instant::now();
    let e = p.publish(&m).await.unwrap_err();
    assert!(e.is_permanent(), "{e}");
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "bounded: {:?}",
        start.elapsed()
    );
    // An illegal topic name made by the template is permanent without asking a broker.
    let p = KafkaPublisher::builder(&brokers).build().unwrap();
    let e = p
        .publish(&message("bad name", "Order-1", 1, Metadata::default()))
        .await
        .unwrap_err();
    assert!(e.is_permanent(), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_size_limit_is_permanent() {
    let Some(brokers) = brokers() else { return };
    let topic = unique("large");
    create_topic(&brokers, &topic, 1).await;
    let p = KafkaPublisher::builder(&brokers)
        .topic("orders", &topic)
        .set("message.max.bytes", "10000")
        .build()
        .unwrap();
    let mut m = message("orders", "Order-1", 1, Metadata::default());
    m.payload = Bytes::from(vec![b'x'; 20_000]);
    let e = p.publish(&m).await.unwrap_err();
    assert!(e.is_permanent(), "{e}");
    // The next message is unaffected.
    p.publish(&message("orders", "Order-1", 1, Metadata::default()))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_a_retryable_failure() {
    // Needs no broker: port 1 on loopback refuses connections.
    let p = KafkaPublisher::builder("127.0.0.1:1")
        .delivery_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let batch: Vec<_> = (0..3)
        .map(|i| message("orders", &format!("Order-{i}"), 1, Metadata::default()))
        .collect();
    let start = Instant::now();
    let results = p.publish_batch(&batch).await;
    assert_eq!(results.len(), 3);
    for r in results {
        let e = r.unwrap_err();
        assert!(!e.is_permanent(), "{e}");
    }
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "bounded: {:?}",
        start.elapsed()
    );
}

/// Keeps the producer's latest statistics.
#[derive(Clone, Default)]
struct StatsContext(Arc<std::sync::Mutex<Option<rdkafka::Statistics>>>);

impl rdkafka::ClientContext for StatsContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        *self.0.lock().unwrap() = Some(statistics);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_producer_is_idempotent_and_the_broker_assigns_it_a_producer_id() {
    let Some(brokers) = brokers() else { return };
    let topic = unique("idempotent");
    create_topic(&brokers, &topic, 1).await;
    // The publisher's own configuration, with statistics every 100 ms.
    let mut config = KafkaPublisher::builder(&brokers).client_config().unwrap();
    assert_eq!(config.get("enable.idempotence"), Some("true"));
    assert_eq!(config.get("acks"), Some("all"));
    config.set("statistics.interval.ms", "100");
    let context = StatsContext::default();
    let producer: rdkafka::producer::FutureProducer<StatsContext> =
        config.create_with_context(context.clone()).unwrap();
    producer
        .send(
            rdkafka::producer::FutureRecord::to(&topic)
                .key("Order-1")
                .payload("{}"),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let eos = loop {
        let eos = context
            .0
            .lock()
            .unwrap()
            .as_ref()
            .and_then(|s| s.eos.clone());
        match eos {
            Some(e) if e.idemp_state == "Assigned" => break e,
            _ if Instant::now() > deadline => panic!("no producer id assigned: {eos:?}"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    assert!(eos.producer_id >= 0, "{eos:?}");
    assert!(eos.producer_epoch >= 0, "{eos:?}");
    assert!(producer.client().fatal_error().is_none());
}
