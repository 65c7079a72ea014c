//! Against a real NATS server with JetStream: `MINK_NATS_URL` (skipped loudly when unset,
//! failing when `MINK_REQUIRE_SERVICES=1`). Each test uses its own stream and subjects,
//! and deletes its stream when it ends, failed or not.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use mink_es::outbox::Outbox;
use mink_es::outbox::{
    OutboxMessage, OutboxProcessor, OutboxStore, ProcessorConfig, Publisher, Route,
};
use mink_es::{
    Bytes, CodecTag, EventId, ExpectedVersion, MemoryStore, Metadata, NewEvent, Position, StreamId,
    StreamWriter,
};
use mink_nats::async_nats::jetstream::{self, consumer};
use mink_nats::{NatsError, NatsPublisher, headers, stream_config};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn nats_url() -> Option<String> {
    mink_testing::services::service_url("MINK_NATS_URL")
}

/// A stream over `<prefix>.>` with a two-minute duplicate window, deleted on drop.
struct TestStream {
    url: String,
    name: String,
    prefix: String,
}

impl TestStream {
    async fn create(
        url: &str,
        publisher: &NatsPublisher,
        tweak: impl FnOnce(&mut jetstream::stream::Config),
    ) -> TestStream {
        let id = Uuid::new_v4().simple().to_string();
        let name = format!("MINK_TEST_{id}");
        let prefix = format!("minktest.{id}");
        let mut config = stream_config(&name, [format!("{prefix}.>")], Duration::from_secs(120));
        config.max_age = Duration::from_secs(3600);
        tweak(&mut config);
        publisher
            .ensure_stream(config)
            .await
            .expect("create the test stream");
        TestStream {
            url: url.to_owned(),
            name,
            prefix,
        }
    }

    /// The subject template `<prefix>.{destination}.{category}`.
    fn template(&self) -> String {
        format!("{}.{{destination}}.{{category}}", self.prefix)
    }

    async fn message_count(&self, js: &jetstream::Context) -> u64 {
        let mut stream = js.get_stream(&self.name).await.expect("the test stream");
        stream.info().await.expect("stream info").state.messages
    }

    /// Reads `n` messages through an ephemeral pull consumer (then checks no more come).
    async fn consume(&self, js: &jetstream::Context, n: usize) -> Vec<jetstream::Message> {
        let stream = js.get_stream(&self.name).await.expect("the test stream");
        let consumer: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(60),
                ..Default::default()
            })
            .await
            .expect("a consumer");
        let mut messages = consumer.messages().await.expect("a message stream");
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let next = tokio::time::timeout(Duration::from_secs(10), messages.next())
                .await
                .unwrap_or_else(|_| panic!("only {} of {n} messages arrived", out.len()))
                .expect("the consumer ended")
                .expect("a message");
            out.push(next);
        }
        let extra = tokio::time::timeout(Duration::from_millis(300), messages.next()).await;
        assert!(extra.is_err(), "more than {n} messages arrived");
        out
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        // Drop may run while a test panics, on a runtime that is shutting down: delete
        // the stream from a thread of its own.
        let (url, name) = (self.url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(client) = mink_nats::async_nats::connect(url).await {
                    let _ = jetstream::new(client).delete_stream(&name).await;
                }
            });
        })
        .join();
    }
}

fn message(destination: &str, stream: &str, version: u64, payload: &str) -> OutboxMessage {
    let event_id = EventId::new();
    OutboxMessage {
        id: OutboxMessage::id_for(event_id, destination),
        destination: destination.to_owned(),
        stream_id: StreamId::new(stream).unwrap(),
        event_id,
        event_type: "OrderPlaced".into(),
        stream_version: version,
        position: Position::new(0, version),
        payload: Bytes::from(payload.to_owned()),
        codec: CodecTag::JSON,
        metadata: Metadata::default(),
        created_at: chrono_now(),
    }
}

fn chrono_now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

fn header(m: &jetstream::Message, name: &str) -> Option<String> {
    m.headers.as_ref()?.get(name).map(|v| v.as_str().to_owned())
}

#[tokio::test]
async fn the_same_message_twice_is_stored_once() {
    let Some(url) = nats_url() else { return };
    let publisher = NatsPublisher::builder().connect(&url).await.unwrap();
    let stream = TestStream::create(&url, &publisher, |_| {}).await;
    let publisher = NatsPublisher::builder()
        .subject(&stream.template())
        .connect(&url)
        .await
        .unwrap();
    let js = publisher.jetstream().await.unwrap();

    let m = message("orders", "order-1", 1, r#"{"n":1}"#);
    publisher.publish(&m).await.unwrap();
    publisher.publish(&m).await.unwrap();
    assert_eq!(stream.message_count(js).await, 1);

    // Within one batch too, and beside a new message.
    let other = message("orders", "order-2", 1, r#"{"n":2}"#);
    let results = publisher
        .publish_batch(&[m.clone(), other, m.clone()])
        .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(stream.message_count(js).await, 2);

    let consumed = stream.consume(js, 2).await;
    let ids: Vec<_> = consumed
        .iter()
        .filter_map(|c| header(c, "Nats-Msg-Id"))
        .collect();
    assert_eq!(ids.iter().filter(|id| **id == m.id.to_string()).count(), 1);
}

#[tokio::test]
async fn headers_subject_and_payload_arrive() {
    let Some(url) = nats_url() else { return };
    let setup = NatsPublisher::builder().connect(&url).await.unwrap();
    let stream = TestStream::create(&url, &setup, |_| {}).await;
    let publisher = NatsPublisher::builder()
        .subject(&stream.template())
        .destination("audit", &format!("{}.audit.{{event_type}}", stream.prefix))
        .connect_lazily(&url)
        .unwrap();

    let mut m = message("orders", "order-42", 3, "");
    m.payload = Bytes::from_static(b"\x81\xa1n\x01");
    m.codec = CodecTag::from("msgpack");
    m.metadata = Metadata::default()
        .with_correlation_id("corr-1")
        .with_causation_id("cause-1")
        .with_user_id("alice")
        .with_tenant_id("acme")
        .with_custom(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .with_custom("tracestate", "congo=t61rcWkgMzE")
        .with_custom("source", "web");
    let mut audit = message("audit", "order-42", 3, r#"{"audit":true}"#);
    audit.event_type = "Order.Placed".into();
    publisher.publish(&m).await.unwrap();
    publisher.publish(&audit).await.unwrap();

    let js = publisher.jetstream().await.unwrap();
    let got = stream.consume(js, 2).await;
    let first = &got[0];
    assert_eq!(
        first.subject.as_str(),
        format!("{}.orders.order", stream.prefix)
    );
    assert_eq!(first.payload.as_ref(), b"\x81\xa1n\x01");
    let id = m.id.to_string();
    let expected: BTreeMap<&str, String> = [
        ("Nats-Msg-Id", id.clone()),
        ("Content-Type", "application/msgpack".to_owned()),
        (headers::MESSAGE_ID, id),
        (headers::EVENT_ID, m.event_id.to_string()),
        (headers::EVENT_TYPE, "OrderPlaced".to_owned()),
        (headers::STREAM_ID, "order-42".to_owned()),
        (headers::STREAM_VERSION, "3".to_owned()),
        (headers::POSITION, "3".to_owned()),
        (headers::DESTINATION, "orders".to_owned()),
        (headers::CODEC, "msgpack".to_owned()),
        (
            headers::RECORDED_AT,
            m.created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        ),
        (headers::CORRELATION_ID, "corr-1".to_owned()),
        (headers::CAUSATION_ID, "cause-1".to_owned()),
        (headers::USER_ID, "alice".to_owned()),
        (headers::TENANT_ID, "acme".to_owned()),
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
        ),
        ("tracestate", "congo=t61rcWkgMzE".to_owned()),
        ("mink-meta-source", "web".to_owned()),
    ]
    .into_iter()
    .collect();
    for (name, value) in &expected {
        assert_eq!(header(first, name).as_ref(), Some(value), "header {name}");
    }
    assert_eq!(
        first.headers.as_ref().unwrap().len(),
        expected.len(),
        "no other header: {:?}",
        first.headers
    );

    // A destination with its own template; the dot of the event type stays in one token.
    let second = &got[1];
    assert_eq!(
        second.subject.as_str(),
        format!("{}.audit.Order_Placed", stream.prefix)
    );
    assert_eq!(second.payload.as_ref(), br#"{"audit":true}"#);
    assert_eq!(
        header(second, "Content-Type").as_deref(),
        Some("application/json")
    );
    assert_eq!(
        header(second, headers::EVENT_TYPE).as_deref(),
        Some("Order.Placed")
    );
    assert_eq!(header(second, headers::CORRELATION_ID), None);
}

#[tokio::test]
async fn a_batch_of_500_across_streams_is_all_acked() {
    let Some(url) = nats_url() else { return };
    let setup = NatsPublisher::builder().connect(&url).await.unwrap();
    let stream = TestStream::create(&url, &setup, |_| {}).await;
    let publisher = NatsPublisher::builder()
        .subject(&format!("{}.{{destination}}.{{stream_id}}", stream.prefix))
        .build(mink_nats::async_nats::connect(&url).await.unwrap())
        .unwrap();

    let batch: Vec<_> = (0..500u64)
        .map(|i| {
            message(
                "orders",
                &format!("order-{}", i % 50),
                i / 50 + 1,
                &format!(r#"{{"i":{i}}}"#),
            )
        })
        .collect();
    let results = publisher.publish_batch(&batch).await;
    assert_eq!(results.len(), 500);
    assert!(
        results.iter().all(Result::is_ok),
        "{:?}",
        results.iter().find(|r| r.is_err())
    );

    let js = publisher.jetstream().await.unwrap();
    assert_eq!(stream.message_count(js).await, 500);
    let got = stream.consume(js, 500).await;
    let ids: HashSet<_> = got
        .iter()
        .filter_map(|m| header(m, headers::MESSAGE_ID))
        .collect();
    let sent: HashSet<_> = batch.iter().map(|m| m.id.to_string()).collect();
    assert_eq!(ids, sent);
    let subjects: HashSet<_> = got.iter().map(|m| m.subject.to_string()).collect();
    assert_eq!(subjects.len(), 50, "one subject per stream");

    // The whole batch again: every message is a duplicate, all acked, none stored.
    let again = publisher.publish_batch(&batch).await;
    assert!(again.iter().all(Result::is_ok));
    assert_eq!(stream.message_count(js).await, 500);
}

#[tokio::test]
async fn the_processor_delivers_every_event_once_in_stream_order() {
    let Some(url) = nats_url() else { return };
    let setup = NatsPublisher::builder().connect(&url).await.unwrap();
    let stream = TestStream::create(&url, &setup, |_| {}).await;
    let publisher = NatsPublisher::builder()
        .subject(&stream.template())
        .connect(&url)
        .await
        .unwrap();

    let store = MemoryStore::with_outbox(Outbox::new().route(Route::all("orders")).unwrap());
    const STREAMS: usize = 10;
    const PER_STREAM: usize = 30;
    for round in 0..PER_STREAM {
        for s in 0..STREAMS {
            let event = NewEvent::json(
                "OrderPlaced",
                &serde_json::json!({ "stream": s, "round": round }),
            )
            .unwrap();
            store
                .append(
                    &StreamId::new(format!("order-{s}")).unwrap(),
                    ExpectedVersion::Any,
                    vec![event],
                )
                .await
                .unwrap();
        }
    }
    let n = STREAMS * PER_STREAM;
    let outbox = Arc::new(store.outbox_store().unwrap());
    let processor = OutboxProcessor::new(outbox.clone())
        .publisher("orders", publisher.clone())
        .config(ProcessorConfig {
            batch_size: 64,
            poll_interval: Duration::from_millis(50),
            ..ProcessorConfig::default()
        });
    let cancel = CancellationToken::new();
    let running = tokio::spawn(processor.run(cancel.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let c = outbox.counts().await.unwrap();
        if c.delivered as usize == n {
            assert_eq!((c.pending, c.dead), (0, 0));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not delivered in time: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cancel.cancel();
    running.await.unwrap().unwrap();

    let js = publisher.jetstream().await.unwrap();
    let got = stream.consume(js, n).await;
    let events: HashSet<_> = got
        .iter()
        .filter_map(|m| header(m, headers::EVENT_ID))
        .collect();
    assert_eq!(events.len(), n, "each event exactly once");
    // In stream order: per stream, versions rise with the JetStream sequence.
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for m in &got {
        let s = header(m, headers::STREAM_ID).unwrap();
        let v: u64 = header(m, headers::STREAM_VERSION).unwrap().parse().unwrap();
        let prev = last.insert(s.clone(), v).unwrap_or(0);
        assert_eq!(v, prev + 1, "stream {s} out of order");
    }
    assert_eq!(last.len(), STREAMS);
}

#[tokio::test]
async fn what_the_message_causes_is_permanent_and_the_rest_retryable() {
    let Some(url) = nats_url() else { return };
    let setup = NatsPublisher::builder().connect(&url).await.unwrap();
    let stream = TestStream::create(&url, &setup, |c| c.max_message_size = 2048).await;
    let publisher = NatsPublisher::builder()
        .subject(&stream.template())
        .destination(
            "nowhere",
            &format!("minktest.nostream.{}", Uuid::new_v4().simple()),
        )
        .ack_timeout(Duration::from_millis(500))
        .connect(&url)
        .await
        .unwrap();

    // Larger than the stream's max_msg_size (headers count too): refused by the stream,
    // permanently.
    let big = message("orders", "order-1", 1, &"x".repeat(4000));
    let e = publisher.publish(&big).await.unwrap_err();
    assert!(e.is_permanent(), "{e}");
    // Larger than the server's max_payload: refused by the client, permanently.
    let huge = message("orders", "order-1", 1, &"x".repeat(2 * 1024 * 1024));
    let e = publisher.publish(&huge).await.unwrap_err();
    assert!(e.is_permanent(), "{e}");
    // A subject no stream captures: retryable (the stream may be created).
    let lost = message("nowhere", "order-1", 1, "{}");
    let e = publisher.publish(&lost).await.unwrap_err();
    assert!(!e.is_permanent(), "{e}");
    // A small one still goes through, and a batch mixes the outcomes per message.
    let small = message("orders", "order-2", 1, "{}");
    let results = publisher.publish_batch(&[big.clone(), small, lost]).await;
    assert!(
        results[0].as_ref().is_err_and(|e| e.is_permanent()),
        "{results:?}"
    );
    assert!(results[1].is_ok(), "{results:?}");
    assert!(
        results[2].as_ref().is_err_and(|e| !e.is_permanent()),
        "{results:?}"
    );

    // A destination without a subject when only listed destinations are published.
    let strict = NatsPublisher::builder()
        .destination("orders", &stream.template())
        .only_listed_destinations()
        .connect(&url)
        .await
        .unwrap();
    let e = strict
        .publish(&message("other", "order-1", 1, "{}"))
        .await
        .unwrap_err();
    assert!(e.is_permanent(), "{e}");
    assert!(
        strict
            .publish(&message("orders", "order-3", 1, "{}"))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn an_ack_that_does_not_come_is_retryable() {
    let Some(url) = nats_url() else { return };
    // A plain subscriber on the subject swallows the publish and never acks.
    let subject = format!("minktest.silent.{}", Uuid::new_v4().simple());
    let client = mink_nats::async_nats::connect(&url).await.unwrap();
    let _silent = client.subscribe(subject.clone()).await.unwrap();
    client.flush().await.unwrap();
    let publisher = NatsPublisher::builder()
        .destination("orders", &subject)
        .ack_timeout(Duration::from_millis(300))
        .connect(&url)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let e = publisher
        .publish(&message("orders", "order-1", 1, "{}"))
        .await
        .unwrap_err();
    assert!(!e.is_permanent(), "{e}");
    assert!(e.to_string().contains("timed out"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn an_unreachable_server_gives_retryable_errors() {
    // Needs no server, but runs with the others.
    if nats_url().is_none() {
        return;
    }
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("nats://127.0.0.1:{port}");

    let e = NatsPublisher::builder().connect(&url).await.unwrap_err();
    assert!(matches!(e, NatsError::Connect { .. }), "{e}");

    let publisher = NatsPublisher::builder().connect_lazily(&url).unwrap();
    let m = message("orders", "order-1", 1, "{}");
    let e = tokio::time::timeout(Duration::from_secs(20), publisher.publish(&m))
        .await
        .unwrap()
        .unwrap_err();
    assert!(!e.is_permanent(), "{e}");
    let results = tokio::time::timeout(
        Duration::from_secs(20),
        publisher.publish_batch(&[m.clone(), message("orders", "order-2", 1, "{}")]),
    )
    .await
    .unwrap();
    assert_eq!(results.len(), 2);
    assert!(
        results
            .iter()
            .all(|r| r.as_ref().is_err_and(|e| !e.is_permanent())),
        "{results:?}"
    );
}
