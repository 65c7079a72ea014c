//! End to end: events appended to a store with an outbox reach a local HTTP receiver
//! through the outbox processor and the webhook publisher.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::{Counter, SECRET, serve};
use mink_es::outbox::{
    MessageStatus, Outbox, OutboxMessage, OutboxProcessor, OutboxStore, ProcessorConfig, Route,
};
use mink_es::prelude::*;
use mink_es::{ExpectedVersion, MemoryStore, NewEvent, StoredEvent, StreamId};
use mink_webhook::{DEFAULT_TOLERANCE, WebhookPublisher, WebhookSecret, verify};

/// What the receiver saw.
#[derive(Clone, Default)]
struct Receiver {
    /// Every request: (webhook-id, event type, answer).
    attempts: Arc<Mutex<Vec<(String, String, u16)>>>,
    /// The ids its success handler processed, in order.
    handled: Arc<Mutex<Vec<String>>>,
    per_id: Counter,
}

/// Verifies the signature (401 if it fails), then: `OrderPlaced` fails its first two
/// attempts with 503, `OrderRejected` always gets 400, everything else is handled.
async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let secret: WebhookSecret = SECRET.parse().unwrap();
    let Ok(verified) = verify(&secret, &headers, &body, DEFAULT_TOLERANCE) else {
        return StatusCode::UNAUTHORIZED;
    };
    let event_type = headers
        .get("mink-event-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let attempt = r.per_id.bump(&verified.id);
    let status = match event_type.as_str() {
        "OrderPlaced" if attempt <= 2 => StatusCode::SERVICE_UNAVAILABLE,
        "OrderRejected" => StatusCode::BAD_REQUEST,
        _ => {
            r.handled.lock().unwrap().push(verified.id.clone());
            StatusCode::OK
        }
    };
    r.attempts
        .lock()
        .unwrap()
        .push((verified.id, event_type, status.as_u16()));
    status
}

fn ev(event_type: &'static str, n: u64) -> NewEvent {
    NewEvent::json(event_type, &serde_json::json!({ "n": n })).unwrap()
}

fn message_id(e: &StoredEvent) -> String {
    OutboxMessage::id_for(e.id, "orders").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_messages_reach_the_receiver_once_retrying_503_and_dead_lettering_400() {
    let receiver = Receiver::default();
    let (base, _server) = serve(
        Router::new()
            .route("/orders", post(receive))
            .with_state(receiver.clone()),
    )
    .await;

    let store = MemoryStore::with_outbox(Outbox::new().route(Route::all("orders")).unwrap());
    let outbox = store.outbox_store().unwrap();

    let order_1 = store
        .append(
            &StreamId::new("Order-1").unwrap(),
            ExpectedVersion::NoStream,
            vec![ev("OrderPlaced", 1), ev("OrderPaid", 2)],
        )
        .await
        .unwrap();
    let order_2 = store
        .append(
            &StreamId::new("Order-2").unwrap(),
            ExpectedVersion::NoStream,
            vec![ev("OrderRejected", 3)],
        )
        .await
        .unwrap();
    let order_3 = store
        .append(
            &StreamId::new("Order-3").unwrap(),
            ExpectedVersion::NoStream,
            vec![ev("OrderShipped", 4)],
        )
        .await
        .unwrap();
    let placed = message_id(&order_1.events[0]);
    let paid = message_id(&order_1.events[1]);
    let rejected = message_id(&order_2.events[0]);
    let shipped = message_id(&order_3.events[0]);

    let publisher = WebhookPublisher::builder()
        .url("orders", format!("{base}/orders"))
        .secret(SECRET)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let processor = OutboxProcessor::new(Arc::new(outbox.clone()))
        .publisher("orders", publisher)
        .config(ProcessorConfig {
            owner: "webhook-e2e".into(),
            max_attempts: 5,
            base_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            poll_interval: Duration::from_millis(10),
            ..ProcessorConfig::default()
        });

    // Rounds until nothing is pending (bounded).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let round = processor.run_once().await.unwrap();
        if outbox.counts().await.unwrap().pending == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the outbox did not drain");
        if round.claimed == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    let attempts = receiver.attempts.lock().unwrap().clone();
    let handled = receiver.handled.lock().unwrap().clone();
    let of = |id: &str| -> Vec<u16> {
        attempts
            .iter()
            .filter(|(i, _, _)| i == id)
            .map(|(_, _, s)| *s)
            .collect()
    };

    // The flaky message: 503, 503, then handled; every attempt carried the same
    // webhook-id (the message id), and the success handler ran exactly once.
    assert_eq!(of(&placed), [503, 503, 200]);
    assert_eq!(handled.iter().filter(|h| **h == placed).count(), 1);
    // Every other delivered message: one attempt, handled once.
    assert_eq!(of(&paid), [200]);
    assert_eq!(of(&shipped), [200]);
    let mut sorted = handled.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        handled.len(),
        "nothing handled twice: {handled:?}"
    );
    assert_eq!(handled.len(), 3);
    // Per-stream order held: OrderPaid was first tried only after OrderPlaced got
    // through.
    let first_paid = attempts.iter().position(|(i, _, _)| *i == paid).unwrap();
    let placed_ok = attempts
        .iter()
        .position(|(i, _, s)| *i == placed && *s == 200)
        .unwrap();
    assert!(placed_ok < first_paid, "{attempts:?}");

    // The 400: one attempt, then the dead-letter queue.
    assert_eq!(of(&rejected), [400]);
    let dead = outbox.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message.id.to_string(), rejected);
    assert_eq!(dead[0].attempts, 1);
    assert!(
        dead[0]
            .last_error
            .starts_with("permanent delivery failure: webhook http://127.0.0.1:")
            && dead[0]
                .last_error
                .contains("/orders answered 400 Bad Request"),
        "{}",
        dead[0].last_error
    );

    // The store agrees.
    let counts = outbox.counts().await.unwrap();
    assert_eq!((counts.pending, counts.delivered, counts.dead), (0, 3, 1));
    let placed_id = order_1.events[0].id;
    assert_eq!(
        outbox
            .status(OutboxMessage::id_for(placed_id, "orders"))
            .await
            .unwrap(),
        Some((MessageStatus::Delivered, 3))
    );
    // No request failed verification.
    assert!(attempts.iter().all(|(_, _, s)| *s != 401));
}
