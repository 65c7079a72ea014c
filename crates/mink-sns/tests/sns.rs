//! SnsPublisher against moto's SNS and SQS: `MINK_SNS_ENDPOINT`
//! (`http://127.0.0.1:5000`; in development and CI a `moto_server` started by
//! `scripts/services.sh start`). What arrives is read from SQS queues subscribed to the
//! topics.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sns::config::interceptors::BeforeSerializationInterceptorContextRef;
use aws_sdk_sns::config::{ConfigBag, Credentials, Intercept, Region};
use aws_sdk_sns::operation::publish::PublishInput;
use aws_sdk_sns::operation::publish_batch::PublishBatchInput;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use chrono::Utc;
use mink_es::outbox::{
    Outbox, OutboxMessage, OutboxProcessor, OutboxStore, ProcessorConfig, Publisher, Route,
};
use mink_es::prelude::*;
use mink_es::{
    Bytes, CodecTag, EventId, ExpectedVersion, MemoryStore, Metadata, NewEvent, Position, StreamId,
};
use mink_sns::{SnsPublisher, attributes};
use mink_testing::services::service_url;

/// Records the SNS calls a client makes: ("Publish", 1) or ("PublishBatch", entries).
#[derive(Clone, Debug, Default)]
struct Calls(Arc<std::sync::Mutex<Vec<(&'static str, usize)>>>);

impl Intercept for Calls {
    fn name(&self) -> &'static str {
        "calls"
    }

    fn read_before_execution(
        &self,
        context: &BeforeSerializationInterceptorContextRef<'_>,
        _cfg: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let input = context.input();
        let call = if let Some(b) = input.downcast_ref::<PublishBatchInput>() {
            Some(("PublishBatch", b.publish_batch_request_entries().len()))
        } else {
            input.downcast_ref::<PublishInput>().map(|_| ("Publish", 1))
        };
        if let Some(c) = call {
            self.0.lock().unwrap().push(c);
        }
        Ok(())
    }
}

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

struct Moto {
    config: aws_config::SdkConfig,
    sns: aws_sdk_sns::Client,
    sqs: aws_sdk_sqs::Client,
}

async fn moto() -> Option<Moto> {
    let endpoint = service_url("MINK_SNS_ENDPOINT")?;
    let config = sdk_config(&endpoint).await;
    Some(Moto {
        sns: aws_sdk_sns::Client::new(&config),
        sqs: aws_sdk_sqs::Client::new(&config),
        config,
    })
}

async fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    mink_sns::config_loader()
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
        .load()
        .await
}

fn unique(label: &str) -> String {
    format!("mink-{label}-{}", uuid::Uuid::new_v4().simple())
}

impl Moto {
    async fn topic(&self, fifo: bool) -> String {
        let mut req = self.sns.create_topic();
        if fifo {
            req = req
                .name(format!("{}.fifo", unique("topic")))
                .attributes("FifoTopic", "true")
                .attributes("ContentBasedDeduplication", "false");
        } else {
            req = req.name(unique("topic"));
        }
        req.send().await.unwrap().topic_arn().unwrap().to_owned()
    }

    /// A queue subscribed to `topic`; returns its URL.
    async fn queue(&self, topic: &str, raw: bool) -> String {
        let fifo = mink_sns::is_fifo(topic);
        let mut req = self.sqs.create_queue();
        if fifo {
            req = req
                .queue_name(format!("{}.fifo", unique("queue")))
                .attributes(QueueAttributeName::FifoQueue, "true");
        } else {
            req = req.queue_name(unique("queue"));
        }
        let url = req.send().await.unwrap().queue_url().unwrap().to_owned();
        let arn = self
            .sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .unwrap()
            .attributes()
            .unwrap()[&QueueAttributeName::QueueArn]
            .clone();
        let mut sub = self
            .sns
            .subscribe()
            .topic_arn(topic)
            .protocol("sqs")
            .endpoint(arn);
        if raw {
            sub = sub.attributes("RawMessageDelivery", "true");
        }
        sub.send().await.unwrap();
        url
    }

    /// Receives (and deletes) until `expected` messages arrived, and briefly more, to
    /// see duplicates.
    async fn receive(&self, queue: &str, expected: usize) -> Vec<aws_sdk_sqs::types::Message> {
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut quiet_rounds = 0;
        while Instant::now() < deadline && (out.len() < expected || quiet_rounds < 2) {
            let got = self
                .sqs
                .receive_message()
                .queue_url(queue)
                .max_number_of_messages(10)
                .message_attribute_names("All")
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .wait_time_seconds(if out.len() < expected { 1 } else { 0 })
                .send()
                .await
                .unwrap();
            let n = got.messages().len();
            // Delete what arrived: a FIFO queue hands out no more of a group while one of
            // its messages is in flight.
            for m in got.messages() {
                self.sqs
                    .delete_message()
                    .queue_url(queue)
                    .receipt_handle(m.receipt_handle().unwrap())
                    .send()
                    .await
                    .unwrap();
            }
            out.extend(got.messages().iter().cloned());
            quiet_rounds = if n == 0 && out.len() >= expected {
                quiet_rounds + 1
            } else {
                0
            };
        }
        out
    }
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

fn attr<'m>(m: &'m aws_sdk_sqs::types::Message, name: &str) -> Option<&'m str> {
    m.message_attributes()?.get(name)?.string_value()
}

fn system(m: &aws_sdk_sqs::types::Message, name: MessageSystemAttributeName) -> Option<&str> {
    m.attributes()?.get(&name).map(String::as_str)
}

fn metadata() -> Metadata {
    Metadata::default()
        .with_correlation_id("corr-1")
        .with_causation_id("cause-1")
        .with_tenant_id("acme")
        .with_custom("traceparent", TRACEPARENT)
}

fn publisher(moto: &Moto, destination: &str, topic: &str) -> SnsPublisher {
    SnsPublisher::builder(aws_sdk_sns::Client::new(&moto.config))
        .topic(destination, topic)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_topics_carry_attributes_group_ids_and_dedup_ids() {
    let Some(moto) = moto().await else { return };
    let topic = moto.topic(true).await;
    let queue = moto.queue(&topic, true).await;
    let p = publisher(&moto, "orders", &topic);

    let mut sent = Vec::new();
    for version in 1..=3u64 {
        // One message per stream per call, as the processor does; the batch goes
        // through PublishBatch, the single message through Publish.
        let batch: Vec<_> = ["Order-1", "Order-2", "Cart-3"]
            .iter()
            .map(|s| message("orders", s, version, metadata()))
            .collect();
        for r in p.publish_batch(&batch).await {
            r.unwrap();
        }
        sent.extend(batch);
        let single = message("orders", "Single-4", version, Metadata::default());
        p.publish(&single).await.unwrap();
        sent.push(single);
    }

    let got = moto.receive(&queue, sent.len()).await;
    assert_eq!(got.len(), sent.len());
    let by_id: HashMap<String, &OutboxMessage> =
        sent.iter().map(|m| (m.id.to_string(), m)).collect();
    let mut versions: HashMap<String, Vec<u64>> = HashMap::new();
    for m in &got {
        let id = attr(m, attributes::MESSAGE_ID).unwrap();
        let want = by_id[id];
        assert_eq!(m.body(), Some(std::str::from_utf8(&want.payload).unwrap()));
        let stream = want.stream_id.as_str();
        assert_eq!(attr(m, attributes::STREAM_ID), Some(stream));
        assert_eq!(
            attr(m, attributes::EVENT_ID),
            Some(want.event_id.to_string().as_str())
        );
        assert_eq!(attr(m, attributes::EVENT_TYPE), Some("OrderPlaced"));
        assert_eq!(attr(m, attributes::CODEC), Some("json"));
        let version = attr(m, attributes::STREAM_VERSION).unwrap();
        assert_eq!(
            m.message_attributes().unwrap()[attributes::STREAM_VERSION].data_type(),
            "Number"
        );
        versions
            .entry(stream.to_owned())
            .or_default()
            .push(version.parse().unwrap());
        assert_eq!(
            system(m, MessageSystemAttributeName::MessageGroupId),
            Some(stream),
            "group id = stream id"
        );
        assert_eq!(
            system(m, MessageSystemAttributeName::MessageDeduplicationId),
            Some(id),
            "dedup id = message id"
        );
        let mut names: Vec<&str> = m
            .message_attributes()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        if stream == "Single-4" {
            assert_eq!(
                names,
                [
                    "mink-codec",
                    "mink-event-id",
                    "mink-event-type",
                    "mink-message-id",
                    "mink-stream-id",
                    "mink-stream-version",
                ]
            );
            continue;
        }
        assert_eq!(
            names,
            [
                "mink-codec",
                "mink-correlation-id",
                "mink-event-id",
                "mink-event-type",
                "mink-message-id",
                "mink-metadata",
                "mink-stream-id",
                "mink-stream-version",
                "traceparent",
            ]
        );
        assert_eq!(attr(m, attributes::CORRELATION_ID), Some("corr-1"));
        assert_eq!(attr(m, attributes::TRACEPARENT), Some(TRACEPARENT));
        let md = Metadata::from_json(attr(m, attributes::METADATA).unwrap()).unwrap();
        assert_eq!(md, metadata(), "the whole metadata travels");
    }
    // SQS FIFO hands out each group in order.
    for (stream, v) in versions {
        assert_eq!(v, vec![1, 2, 3], "stream {stream}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_redeliveries_with_the_same_message_id_are_dropped() {
    let Some(moto) = moto().await else { return };
    let topic = moto.topic(true).await;
    let queue = moto.queue(&topic, true).await;
    let p = publisher(&moto, "orders", &topic);
    let m = message("orders", "Order-1", 1, Metadata::default());
    // A redelivery after a crash: same id, published again, singly and in a batch.
    p.publish(&m).await.unwrap();
    p.publish(&m).await.unwrap();
    let other = message("orders", "Order-2", 1, Metadata::default());
    for r in p.publish_batch(&[m.clone(), other.clone()]).await {
        r.unwrap();
    }
    let got = moto.receive(&queue, 2).await;
    // moto's SNS forwards the MessageDeduplicationId and its SQS FIFO queue drops the
    // duplicates within the 5-minute window (AWS drops them at the SNS FIFO topic
    // already); either way the subscriber sees each message once.
    let mut ids: Vec<_> = got
        .iter()
        .map(|m| attr(m, attributes::MESSAGE_ID).unwrap().to_owned())
        .collect();
    ids.sort();
    let mut want = vec![m.id.to_string(), other.id.to_string()];
    want.sort();
    assert_eq!(ids, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_topics_carry_attributes_without_group_ids() {
    let Some(moto) = moto().await else { return };
    let topic = moto.topic(false).await;
    let raw = moto.queue(&topic, true).await;
    let enveloped = moto.queue(&topic, false).await;
    let p = publisher(&moto, "orders", &topic);
    let mut binary = message("orders", "Order-2", 1, Metadata::default());
    binary.payload = Bytes::from_static(&[0xff, 0xfe, 0x00]);
    binary.codec = CodecTag::from_static("msgpack");
    let sent = vec![message("orders", "Order-1", 1, metadata()), binary];
    for r in p.publish_batch(&sent).await {
        r.unwrap();
    }

    let got = moto.receive(&raw, 2).await;
    assert_eq!(got.len(), 2);
    for m in &got {
        assert_eq!(system(m, MessageSystemAttributeName::MessageGroupId), None);
        assert_eq!(
            system(m, MessageSystemAttributeName::MessageDeduplicationId),
            None
        );
        match attr(m, attributes::STREAM_ID) {
            Some("Order-1") => {
                assert_eq!(m.body(), Some(r#"{"stream":"Order-1","v":1}"#));
                assert_eq!(attr(m, attributes::TRACEPARENT), Some(TRACEPARENT));
                assert_eq!(attr(m, attributes::BODY_ENCODING), None);
            }
            Some("Order-2") => {
                assert_eq!(m.body(), Some("//4A"), "base64 of a binary payload");
                assert_eq!(attr(m, attributes::BODY_ENCODING), Some("base64"));
                assert_eq!(attr(m, attributes::CODEC), Some("msgpack"));
            }
            other => panic!("unexpected stream {other:?}"),
        }
    }

    // Without raw delivery the attributes are in SNS's JSON envelope.
    let got = moto.receive(&enveloped, 2).await;
    assert_eq!(got.len(), 2);
    for m in &got {
        let envelope: serde_json::Value = serde_json::from_str(m.body().unwrap()).unwrap();
        assert_eq!(envelope["TopicArn"], topic.as_str());
        let attrs = &envelope["MessageAttributes"];
        let id = attrs[attributes::MESSAGE_ID]["Value"].as_str().unwrap();
        let want = sent.iter().find(|s| s.id.to_string() == id).unwrap();
        assert_eq!(
            attrs[attributes::STREAM_ID]["Value"],
            want.stream_id.as_str()
        );
        assert_eq!(attrs[attributes::EVENT_TYPE]["Type"], "String");
        assert_eq!(attrs[attributes::STREAM_VERSION]["Type"], "Number");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_split_into_publish_batch_calls_of_ten() {
    let Some(moto) = moto().await else { return };
    let fifo = moto.topic(true).await;
    let standard = moto.topic(false).await;
    let fifo_queue = moto.queue(&fifo, true).await;
    let standard_queue = moto.queue(&standard, true).await;
    let calls = Calls::default();
    let client = aws_sdk_sns::Client::from_conf(
        aws_sdk_sns::config::Builder::from(&moto.config)
            .interceptor(calls.clone())
            .build(),
    );
    let p = SnsPublisher::builder(client)
        .topic("fifo", &fifo)
        .topic("standard", &standard)
        .build()
        .unwrap();
    // 25 to each topic, interleaved, plus two that must fail on their own.
    let mut batch = Vec::new();
    for i in 0..25 {
        batch.push(message("fifo", &format!("Order-{i}"), 1, metadata()));
        batch.push(message("standard", &format!("Order-{i}"), 1, metadata()));
    }
    let mut empty = message("fifo", "Empty-1", 1, Metadata::default());
    empty.payload = Bytes::new();
    batch.insert(7, empty);
    batch.insert(30, message("nowhere", "Order-x", 1, Metadata::default()));
    let results = p.publish_batch(&batch).await;
    assert_eq!(results.len(), 52);
    for (m, r) in batch.iter().zip(&results) {
        match m.destination.as_str() {
            "nowhere" => assert!(r.as_ref().unwrap_err().is_permanent()),
            _ if m.payload.is_empty() => assert!(r.as_ref().unwrap_err().is_permanent()),
            _ => assert!(r.is_ok(), "{r:?}"),
        }
    }
    // 25 per topic: PublishBatch calls of 10, 10 and 5 each; the two failures made none.
    let mut made = calls.0.lock().unwrap().clone();
    made.sort();
    assert_eq!(
        made,
        [5, 5, 10, 10, 10, 10].map(|n| ("PublishBatch", n)).to_vec()
    );
    assert_eq!(moto.receive(&fifo_queue, 25).await.len(), 25);
    assert_eq!(moto.receive(&standard_queue, 25).await.len(), 25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_is_a_permanent_failure() {
    let Some(moto) = moto().await else { return };
    let calls = Calls::default();
    let client = aws_sdk_sns::Client::from_conf(
        aws_sdk_sns::config::Builder::from(&moto.config)
            .interceptor(calls.clone())
            .build(),
    );
    let p = SnsPublisher::builder(client)
        .topic("orders", "arn:aws:sns:us-east-1:123456789012:no-such-topic")
        .build()
        .unwrap();
    let e = p
        .publish(&message("orders", "Order-1", 1, Metadata::default()))
        .await
        .unwrap_err();
    assert!(e.is_permanent(), "{e}");
    let batch: Vec<_> = (0..3)
        .map(|i| message("orders", &format!("Order-{i}"), 1, Metadata::default()))
        .collect();
    for r in p.publish_batch(&batch).await {
        let e = r.unwrap_err();
        assert!(e.is_permanent(), "{e}");
        assert!(e.to_string().contains("NotFound"), "{e}");
    }
    // A topic-level error fails the batch at once, without one call per message.
    assert_eq!(
        *calls.0.lock().unwrap(),
        [("Publish", 1), ("PublishBatch", 3)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_processor_delivers_a_memory_store_outbox() {
    let Some(moto) = moto().await else { return };
    let topic = moto.topic(true).await;
    let queue = moto.queue(&topic, true).await;
    let store = MemoryStore::with_outbox(Outbox::new().route(Route::all("orders")).unwrap());
    let (streams, per_stream) = (12, 3);
    for v in 0..per_stream {
        for s in 0..streams {
            let e = NewEvent::new("OrderPlaced", format!(r#"{{"s":{s},"v":{v}}}"#))
                .with_metadata(metadata());
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
    let processor = OutboxProcessor::new(outbox.clone())
        .publisher("orders", publisher(&moto, "orders", &topic))
        .config(ProcessorConfig {
            owner: "sns-e2e".into(),
            ..ProcessorConfig::default()
        });
    let deadline = Instant::now() + Duration::from_secs(60);
    while outbox.counts().await.unwrap().delivered < total && Instant::now() < deadline {
        let r = processor.run_once().await.unwrap();
        assert_eq!(r.retried + r.dead_lettered, 0, "{r:?}");
    }
    let counts = outbox.counts().await.unwrap();
    assert_eq!(
        (counts.pending, counts.delivered, counts.dead),
        (0, total, 0)
    );
    let got = moto.receive(&queue, total as usize).await;
    assert_eq!(got.len() as u64, total);
    let mut versions: HashMap<&str, Vec<u64>> = HashMap::new();
    for m in &got {
        versions
            .entry(system(m, MessageSystemAttributeName::MessageGroupId).unwrap())
            .or_default()
            .push(
                attr(m, attributes::STREAM_VERSION)
                    .unwrap()
                    .parse()
                    .unwrap(),
            );
    }
    assert_eq!(versions.len(), streams);
    assert!(versions.values().all(|v| *v == [1, 2, 3]), "{versions:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_is_a_retryable_failure() {
    // Needs no server: port 1 on loopback refuses connections.
    let config = sdk_config("http://127.0.0.1:1").await;
    let p = SnsPublisher::builder(aws_sdk_sns::Client::new(&config))
        .topic("orders", "arn:aws:sns:us-east-1:123456789012:orders.fifo")
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let start = Instant::now();
    let e = p
        .publish(&message("orders", "Order-1", 1, Metadata::default()))
        .await
        .unwrap_err();
    assert!(!e.is_permanent(), "{e}");
    eprintln!("unreachable endpoint: {e}");
    let batch: Vec<_> = (0..12)
        .map(|i| message("orders", &format!("Order-{i}"), 1, Metadata::default()))
        .collect();
    let results = p.publish_batch(&batch).await;
    assert_eq!(results.len(), 12);
    for r in results {
        let e = r.unwrap_err();
        assert!(!e.is_permanent(), "{e}");
    }
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "bounded: {:?}",
        start.elapsed()
    );
}
