//! Against a real RabbitMQ broker: `MINK_RABBITMQ_URL` (skipped loudly when unset,
//! failing when `MINK_REQUIRE_SERVICES=1`). Each test declares its own exchanges and
//! queues, and deletes them when it ends, failed or not.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use mink_es::outbox::{
    Outbox, OutboxMessage, OutboxProcessor, OutboxStore, ProcessorConfig, Publisher, Route,
};
use mink_es::{
    Bytes, CodecTag, EventId, ExpectedVersion, MemoryStore, Metadata, NewEvent, Position, StreamId,
    StreamWriter,
};
use mink_rabbitmq::lapin::message::Delivery;
use mink_rabbitmq::lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use mink_rabbitmq::lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use mink_rabbitmq::lapin::{Channel, Connection, ConnectionProperties};
use mink_rabbitmq::{ExchangeKind, OnUnroutable, RabbitError, RabbitPublisher, headers};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn rabbit_url() -> Option<String> {
    mink_testing::services::service_url("MINK_RABBITMQ_URL")
}

fn unique(prefix: &str) -> String {
    format!("mink-test-{prefix}-{}", Uuid::new_v4().simple())
}

/// Exchanges and queues of one test, deleted on drop.
struct Fixture {
    url: String,
    _connection: Connection,
    channel: Channel,
    exchanges: Vec<String>,
    queues: Vec<String>,
}

impl Fixture {
    async fn new(url: &str) -> Fixture {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        Fixture {
            url: url.to_owned(),
            _connection: connection,
            channel,
            exchanges: Vec::new(),
            queues: Vec::new(),
        }
    }

    async fn exchange(&mut self, kind: ExchangeKind) -> String {
        let name = unique("x");
        self.channel
            .exchange_declare(
                ShortString::from(name.clone()),
                kind,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        self.exchanges.push(name.clone());
        name
    }

    /// A durable queue bound to `exchange` with `binding`.
    async fn queue(&mut self, exchange: &str, binding: &str, arguments: FieldTable) -> String {
        let name = unique("q");
        self.channel
            .queue_declare(
                ShortString::from(name.clone()),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
            .await
            .unwrap();
        self.queues.push(name.clone());
        self.channel
            .queue_bind(
                ShortString::from(name.clone()),
                ShortString::from(exchange),
                ShortString::from(binding),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        name
    }

    /// Takes `n` messages from `queue` (then checks no more come).
    async fn take(&self, queue: &str, n: usize) -> Vec<Delivery> {
        let mut consumer = self
            .channel
            .basic_consume(
                ShortString::from(queue),
                ShortString::from(unique("c")),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let next = tokio::time::timeout(Duration::from_secs(10), consumer.next())
                .await
                .unwrap_or_else(|_| panic!("only {} of {n} messages arrived", out.len()))
                .expect("the consumer ended")
                .expect("a delivery");
            out.push(next);
        }
        let extra = tokio::time::timeout(Duration::from_millis(300), consumer.next()).await;
        assert!(extra.is_err(), "more than {n} messages arrived");
        out
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Drop may run while a test panics, on a runtime that is shutting down: clean up
        // from a thread of its own.
        let (url, exchanges, queues) = (
            self.url.clone(),
            self.exchanges.clone(),
            self.queues.clone(),
        );
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(c) = Connection::connect(&url, ConnectionProperties::default()).await else {
                    return;
                };
                let Ok(ch) = c.create_channel().await else {
                    return;
                };
                for q in queues {
                    let _ = ch
                        .queue_delete(q.into(), QueueDeleteOptions::default())
                        .await;
                }
                for x in exchanges {
                    let _ = ch
                        .exchange_delete(x.into(), ExchangeDeleteOptions::default())
                        .await;
                }
                let _ = c.close(200, "OK".into()).await;
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
        created_at: chrono::Utc::now(),
    }
}

fn header(d: &Delivery, name: &str) -> Option<String> {
    match d.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        other => panic!("header {name} is not a long string: {other:?}"),
    }
}

fn message_id(d: &Delivery) -> String {
    d.properties
        .message_id()
        .as_ref()
        .expect("a message id")
        .as_str()
        .to_owned()
}

#[tokio::test]
async fn confirmed_messages_arrive_persistent_with_id_and_headers() {
    let Some(url) = rabbit_url() else { return };
    let mut fx = Fixture::new(&url).await;
    let exchange = fx.exchange(ExchangeKind::Topic).await;
    let queue = fx.queue(&exchange, "order.*", FieldTable::default()).await;
    let publisher = RabbitPublisher::builder()
        .destination("orders", &exchange, "{category}.{event_type}")
        .app_id("mink-tests")
        .connect(&url)
        .await
        .unwrap();

    let mut m = message("orders", "order-42", 3, "");
    m.payload = Bytes::from_static(b"\x81\xa1n\x01");
    m.codec = CodecTag::from("msgpack");
    m.event_type = "Order.Placed".into();
    m.metadata = Metadata::default()
        .with_correlation_id("corr-1")
        .with_causation_id("cause-1")
        .with_user_id("alice")
        .with_tenant_id("acme")
        .with_custom(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .with_custom("source", "web");
    publisher.publish(&m).await.unwrap();

    let got = fx.take(&queue, 1).await;
    let d = &got[0];
    assert_eq!(d.routing_key.as_str(), "order.Order_Placed");
    assert_eq!(d.exchange.as_str(), exchange);
    assert_eq!(d.data, b"\x81\xa1n\x01");
    let p = &d.properties;
    assert_eq!(message_id(d), m.id.to_string());
    assert_eq!(p.delivery_mode(), &Some(2), "persistent");
    assert_eq!(
        p.content_type().as_ref().map(ShortString::as_str),
        Some("application/msgpack")
    );
    assert_eq!(
        p.kind().as_ref().map(ShortString::as_str),
        Some("Order.Placed")
    );
    assert_eq!(
        p.correlation_id().as_ref().map(ShortString::as_str),
        Some("corr-1")
    );
    assert_eq!(
        p.app_id().as_ref().map(ShortString::as_str),
        Some("mink-tests")
    );
    assert_eq!(p.timestamp(), &Some(m.created_at.timestamp() as u64));
    let expected: BTreeMap<&str, String> = [
        (headers::MESSAGE_ID, m.id.to_string()),
        (headers::EVENT_ID, m.event_id.to_string()),
        (headers::EVENT_TYPE, "Order.Placed".to_owned()),
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
        ("mink-meta-source", "web".to_owned()),
    ]
    .into_iter()
    .collect();
    for (name, value) in &expected {
        assert_eq!(header(d, name).as_ref(), Some(value), "header {name}");
    }
    assert_eq!(p.headers().as_ref().unwrap().inner().len(), expected.len());
    publisher.close().await;
}

#[tokio::test]
async fn a_batch_of_500_across_streams_is_confirmed() {
    let Some(url) = rabbit_url() else { return };
    let mut fx = Fixture::new(&url).await;
    let exchange = fx.exchange(ExchangeKind::Topic).await;
    let queue = fx.queue(&exchange, "#", FieldTable::default()).await;
    // The exchange is named like the destination by default: use it as the name.
    let publisher = RabbitPublisher::builder()
        .routing_key("{stream_id}")
        .connect_lazily(&url)
        .unwrap();

    let batch: Vec<_> = (0..500u64)
        .map(|i| {
            message(
                &exchange,
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

    let got = fx.take(&queue, 500).await;
    let ids: HashSet<_> = got.iter().map(message_id).collect();
    let sent: HashSet<_> = batch.iter().map(|m| m.id.to_string()).collect();
    assert_eq!(ids, sent);
    let keys: HashSet<_> = got.iter().map(|d| d.routing_key.to_string()).collect();
    assert_eq!(keys.len(), 50, "one routing key per stream");
    // In order per stream: a single channel keeps publish order.
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for d in &got {
        let v: u64 = header(d, headers::STREAM_VERSION).unwrap().parse().unwrap();
        let prev = last.insert(d.routing_key.to_string(), v).unwrap_or(0);
        assert_eq!(v, prev + 1);
    }
}

#[tokio::test]
async fn the_processor_delivers_every_event_once_in_stream_order() {
    let Some(url) = rabbit_url() else { return };
    let mut fx = Fixture::new(&url).await;
    let exchange = fx.exchange(ExchangeKind::Topic).await;
    let queue = fx.queue(&exchange, "order.#", FieldTable::default()).await;
    let publisher = RabbitPublisher::builder()
        .destination("orders", &exchange, "{category}.{event_type}")
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

    let got = fx.take(&queue, n).await;
    let events: HashSet<_> = got
        .iter()
        .filter_map(|d| header(d, headers::EVENT_ID))
        .collect();
    assert_eq!(events.len(), n, "each event exactly once");
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for d in &got {
        let s = header(d, headers::STREAM_ID).unwrap();
        let v: u64 = header(d, headers::STREAM_VERSION).unwrap().parse().unwrap();
        let prev = last.insert(s.clone(), v).unwrap_or(0);
        assert_eq!(v, prev + 1, "stream {s} out of order");
    }
    assert_eq!(last.len(), STREAMS);
    publisher.close().await;
}

#[tokio::test]
async fn an_unroutable_message_is_retryable_by_default_or_dead_lettered_when_asked() {
    let Some(url) = rabbit_url() else { return };
    let mut fx = Fixture::new(&url).await;
    let exchange = fx.exchange(ExchangeKind::Topic).await;
    let queue = fx.queue(&exchange, "order.*", FieldTable::default()).await;
    let m = message("orders", "invoice-1", 1, "{}"); // routed as invoice.OrderPlaced: no queue
    let routed = message("orders", "order-1", 1, "{}");

    let default = RabbitPublisher::builder()
        .destination("orders", &exchange, "{category}.{event_type}")
        .connect(&url)
        .await
        .unwrap();
    let e = default.publish(&m).await.unwrap_err();
    assert!(!e.is_permanent(), "{e}");
    assert!(e.to_string().contains("unroutable"), "{e}");
    // Unroutable beside routable in one batch: only the unroutable one fails.
    let results = default.publish_batch(&[m.clone(), routed.clone()]).await;
    assert!(
        results[0].as_ref().is_err_and(|e| !e.is_permanent()),
        "{results:?}"
    );
    assert!(results[1].is_ok(), "{results:?}");

    let dead_letter = RabbitPublisher::builder()
        .destination("orders", &exchange, "{category}.{event_type}")
        .on_unroutable(OnUnroutable::DeadLetter)
        .connect(&url)
        .await
        .unwrap();
    let e = dead_letter.publish(&m).await.unwrap_err();
    assert!(e.is_permanent(), "{e}");

    // Without `mandatory` the broker drops it, and the publish succeeds.
    let lax = RabbitPublisher::builder()
        .destination("orders", &exchange, "{category}.{event_type}")
        .mandatory(false)
        .connect(&url)
        .await
        .unwrap();
    lax.publish(&m).await.unwrap();

    // Only the routable message reached the queue.
    let got = fx.take(&queue, 1).await;
    assert_eq!(message_id(&got[0]), routed.id.to_string());
}

#[tokio::test]
async fn a_missing_exchange_fails_only_its_own_messages() {
    let Some(url) = rabbit_url() else { return };
    let mut fx = Fixture::new(&url).await;
    let exchange = fx.exchange(ExchangeKind::Fanout).await;
    let queue = fx.queue(&exchange, "", FieldTable::default()).await;
    let missing = unique("missing");

    for check_exchanges in [true, false] {
        let publisher = RabbitPublisher::builder()
            .destination("good", &exchange, "")
            .destination("gone", &missing, "")
            .check_exchanges(check_exchanges)
            .connect(&url)
            .await
            .unwrap();
        let batch: Vec<_> = (0..40u64)
            .map(|i| {
                message(
                    if i % 4 == 1 { "gone" } else { "good" },
                    &format!("order-{i}"),
                    1,
                    "{}",
                )
            })
            .collect();
        let results = publisher.publish_batch(&batch).await;
        for (m, r) in batch.iter().zip(&results) {
            if m.destination == "gone" {
                assert!(
                    r.as_ref().is_err_and(|e| e.is_permanent()),
                    "check {check_exchanges}: {r:?}"
                );
            } else {
                assert!(r.is_ok(), "check {check_exchanges}: {r:?}");
            }
        }
        // A whole batch to the missing exchange: all permanent, and soon.
        let all_gone: Vec<_> = (0..100u64)
            .map(|i| message("gone", &format!("order-{i}"), 1, "{}"))
            .collect();
        let started = std::time::Instant::now();
        let results = publisher.publish_batch(&all_gone).await;
        assert!(
            results
                .iter()
                .all(|r| r.as_ref().is_err_and(|e| e.is_permanent())),
            "check {check_exchanges}: {results:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "check {check_exchanges}"
        );
        // A single one to the missing exchange, and the publisher still works after.
        let e = publisher
            .publish(&message("gone", "order-x", 1, "{}"))
            .await
            .unwrap_err();
        assert!(e.is_permanent(), "{e}");
        publisher
            .publish(&message("good", "order-y", 1, "{}"))
            .await
            .unwrap();

        // Every good message arrived (at least once: re-publishing on separate channels
        // may repeat one that the broker had routed before the channel closed).
        let good: HashSet<_> = batch
            .iter()
            .filter(|m| m.destination == "good")
            .map(|m| m.id.to_string())
            .collect();
        let mut arrived = HashSet::new();
        let mut consumer = fx
            .channel
            .basic_consume(
                ShortString::from(queue.clone()),
                ShortString::from(unique("c")),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        while let Ok(Some(Ok(d))) =
            tokio::time::timeout(Duration::from_millis(500), consumer.next()).await
        {
            arrived.insert(message_id(&d));
        }
        assert_eq!(arrived.len(), good.len() + 1, "check {check_exchanges}");
        assert!(good.is_subset(&arrived), "check {check_exchanges}");
        publisher.close().await;
    }
}

#[tokio::test]
async fn a_nack_is_retryable() {
    let Some(url) = rabbit_url() else { return };
    let mut fx = Fixture::new(&url).await;
    let exchange = fx.exchange(ExchangeKind::Fanout).await;
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(1));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString(LongString::from("reject-publish")),
    );
    fx.queue(&exchange, "", args).await;
    let publisher = RabbitPublisher::builder()
        .destination("orders", &exchange, "")
        .connect(&url)
        .await
        .unwrap();
    publisher
        .publish(&message("orders", "order-1", 1, "{}"))
        .await
        .unwrap();
    // The queue is full and rejects the publish: the broker nacks it.
    let e = publisher
        .publish(&message("orders", "order-2", 1, "{}"))
        .await
        .unwrap_err();
    assert!(!e.is_permanent(), "{e}");
    assert!(e.to_string().contains("nacked"), "{e}");
}

/// A TCP proxy in front of the broker that can cut its connections or stall the
/// broker's replies.
struct Proxy {
    port: u16,
    accepted: Arc<AtomicUsize>,
    stalled: Arc<AtomicBool>,
    kill: Arc<tokio::sync::watch::Sender<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: (String, u16)) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stalled = Arc::new(AtomicBool::new(false));
        let kill = Arc::new(tokio::sync::watch::channel(0u64).0);
        let task = {
            let (accepted, stalled, kill) = (accepted.clone(), stalled.clone(), kill.clone());
            tokio::spawn(async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let Ok(outbound) =
                        tokio::net::TcpStream::connect((upstream.0.as_str(), upstream.1)).await
                    else {
                        continue;
                    };
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    tokio::spawn(pump(ri, wo, None, kill.subscribe()));
                    tokio::spawn(pump(ro, wi, Some(stalled.clone()), kill.subscribe()));
                }
            })
        };
        Proxy {
            port,
            accepted,
            stalled,
            kill,
            task,
        }
    }

    fn cut(&self) {
        self.kill.send_modify(|g| *g += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    stalled: Option<Arc<AtomicBool>>,
    mut kill: tokio::sync::watch::Receiver<u64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            _ = kill.changed() => return,
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
        };
        // While stalled, what was read is held back.
        while stalled.as_ref().is_some_and(|s| s.load(Ordering::SeqCst)) {
            tokio::select! {
                _ = kill.changed() => return,
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// The broker's host and port, and the same URL through a proxy on `port`.
fn via_proxy(url: &str, port: u16) -> ((String, u16), String) {
    let uri: mink_rabbitmq::lapin::uri::AMQPUri = url.parse().unwrap();
    let vhost = if uri.vhost == "/" {
        "%2f".to_owned()
    } else {
        uri.vhost.clone()
    };
    let proxied = format!(
        "amqp://{}:{}@127.0.0.1:{port}/{vhost}",
        uri.authority.userinfo.username, uri.authority.userinfo.password
    );
    ((uri.authority.host.clone(), uri.authority.port), proxied)
}

#[tokio::test]
async fn a_dropped_connection_is_reestablished_on_the_next_publish() {
    let Some(url) = rabbit_url() else { return };
    let mut fx = Fixture::new(&url).await;
    let exchange = fx.exchange(ExchangeKind::Fanout).await;
    let queue = fx.queue(&exchange, "", FieldTable::default()).await;
    let (upstream, _) = via_proxy(&url, 0);
    let proxy = Proxy::start(upstream).await;
    let (_, proxied) = via_proxy(&url, proxy.port);
    let publisher = RabbitPublisher::builder()
        .destination("orders", &exchange, "")
        .confirm_timeout(Duration::from_secs(2))
        .connect(&proxied)
        .await
        .unwrap();
    let first = message("orders", "order-1", 1, "{}");
    publisher.publish(&first).await.unwrap();
    assert_eq!(proxy.accepted.load(Ordering::SeqCst), 1);

    proxy.cut();
    // The publish that meets the dead connection may fail (retryable); a later one
    // reconnects and succeeds.
    let second = message("orders", "order-2", 1, "{}");
    let mut delivered = false;
    for _ in 0..10 {
        match publisher.publish(&second).await {
            Ok(()) => {
                delivered = true;
                break;
            }
            Err(e) => assert!(!e.is_permanent(), "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        delivered,
        "no publish succeeded after the connection dropped"
    );
    assert!(
        proxy.accepted.load(Ordering::SeqCst) >= 2,
        "a new connection was made"
    );

    // A clean close, then a publish: connects again.
    publisher.close().await;
    let third = message("orders", "order-3", 1, "{}");
    publisher.publish(&third).await.unwrap();

    let got = fx.take(&queue, 3).await;
    let ids: HashSet<_> = got.iter().map(message_id).collect();
    let sent: HashSet<_> = [&first, &second, &third]
        .iter()
        .map(|m| m.id.to_string())
        .collect();
    assert_eq!(ids, sent);
}

#[tokio::test]
async fn a_confirm_that_does_not_come_is_retryable() {
    let Some(url) = rabbit_url() else { return };
    let mut fx = Fixture::new(&url).await;
    let exchange = fx.exchange(ExchangeKind::Fanout).await;
    fx.queue(&exchange, "", FieldTable::default()).await;
    let (upstream, _) = via_proxy(&url, 0);
    let proxy = Proxy::start(upstream).await;
    let (_, proxied) = via_proxy(&url, proxy.port);
    let publisher = RabbitPublisher::builder()
        .destination("orders", &exchange, "")
        .confirm_timeout(Duration::from_millis(500))
        .connect_timeout(Duration::from_secs(2))
        .connect(&proxied)
        .await
        .unwrap();
    publisher
        .publish(&message("orders", "order-1", 1, "{}"))
        .await
        .unwrap();

    // The broker's replies stop coming.
    proxy.stalled.store(true, Ordering::SeqCst);
    let results = publisher
        .publish_batch(&[
            message("orders", "order-2", 1, "{}"),
            message("orders", "order-3", 1, "{}"),
        ])
        .await;
    assert!(
        results
            .iter()
            .all(|r| r.as_ref().is_err_and(|e| !e.is_permanent())),
        "{results:?}"
    );
    assert!(format!("{results:?}").contains("within"), "{results:?}");

    // They resume: the next publish goes out on a new connection.
    proxy.stalled.store(false, Ordering::SeqCst);
    proxy.cut();
    publisher
        .publish(&message("orders", "order-4", 1, "{}"))
        .await
        .unwrap();
    assert!(proxy.accepted.load(Ordering::SeqCst) >= 2);
}

#[tokio::test]
async fn an_unreachable_server_gives_retryable_errors() {
    // Needs no broker, but runs with the others.
    if rabbit_url().is_none() {
        return;
    }
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");

    let e = RabbitPublisher::builder().connect(&url).await.unwrap_err();
    assert!(matches!(e, RabbitError::Connect { .. }), "{e}");
    assert!(!e.to_string().contains("guest:guest"), "{e}");

    let publisher = RabbitPublisher::builder()
        .connect_timeout(Duration::from_secs(5))
        .connect_lazily(&url)
        .unwrap();
    let m = message("orders", "order-1", 1, "{}");
    let e = publisher.publish(&m).await.unwrap_err();
    assert!(!e.is_permanent(), "{e}");
    let results = publisher
        .publish_batch(&[m.clone(), message("orders", "order-2", 1, "{}")])
        .await;
    assert_eq!(results.len(), 2);
    assert!(
        results
            .iter()
            .all(|r| r.as_ref().is_err_and(|e| !e.is_permanent())),
        "{results:?}"
    );
}
