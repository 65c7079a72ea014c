//! Conformance tests for transactional outboxes: every store that writes outbox
//! messages runs them through [`outbox_tests!`](crate::outbox_tests).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use mink_es::outbox::publisher::RecordingPublisher;
use mink_es::outbox::store::OutboxCounts;
use mink_es::outbox::{
    MessageStatus, Outbox, OutboxMessage, OutboxProcessor, OutboxStore, ProcessorConfig,
    PublishError, Route,
};
use mink_es::prelude::*;
use mink_es::{Error, ExpectedVersion, Metadata, NewEvent, StreamId};
use tokio_util::sync::CancellationToken;

/// Makes fresh stores whose appends write outbox messages.
pub trait OutboxFactory: Send + Sync + 'static {
    /// The event store.
    type Store: EventStore;

    /// A new, empty store routing its events through `outbox`, and its outbox.
    fn create(
        &self,
        outbox: Outbox,
    ) -> impl Future<Output = (Self::Store, Arc<dyn OutboxStore>)> + Send;
}

/// Generates one `#[tokio::test]` per outbox conformance test. The argument is a
/// future of `Option<F: OutboxFactory>`; `None` skips.
#[macro_export]
macro_rules! outbox_tests {
    ($factory:expr) => {
        $crate::outbox_tests!(@tests $factory;
            outbox_messages_are_written_with_their_events,
            outbox_failed_routes_and_conflicts_write_nothing,
            outbox_processor_delivers_each_message_once,
            outbox_dead_letters_after_exactly_the_attempt_limit,
            outbox_per_stream_order_survives_retries,
            outbox_processors_never_overlap,
            outbox_expired_leases_are_reclaimed_counting_attempts,
            outbox_processor_shuts_down_gracefully,
        );
    };
    (@tests $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                if let Some(f) = $factory.await {
                    $crate::outbox::$name(&f).await;
                }
            }
        )*
    };
}

fn sid(s: &str) -> StreamId {
    StreamId::new(s).unwrap()
}

fn ev(t: &'static str, n: u64) -> NewEvent {
    NewEvent::json(t, &serde_json::json!({ "n": n })).unwrap()
}

fn routes() -> Outbox {
    Outbox::new()
        .route(Route::event_types("billing", ["OrderPlaced"]))
        .unwrap()
        .route(Route::categories("audit", ["Order", "Invoice"]))
        .unwrap()
        .route(
            Route::event_types("shouty", ["OrderPlaced"]).transform(|e| {
                let v: serde_json::Value = serde_json::from_slice(&e.payload)?;
                Ok(Some((
                    serde_json::to_vec(&serde_json::json!({ "N": v["n"] }))?.into(),
                    "json".into(),
                )))
            }),
        )
        .unwrap()
}

fn fast(owner: &str) -> ProcessorConfig {
    ProcessorConfig {
        owner: owner.into(),
        batch_size: 64,
        lease: Duration::from_secs(30),
        max_attempts: 3,
        base_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        poll_interval: Duration::from_millis(20),
        ..ProcessorConfig::default()
    }
}

/// Runs rounds until a round claims nothing and nothing is due for a while.
async fn drain(p: &OutboxProcessor) {
    let mut idle = 0;
    while idle < 5 {
        let r = p.run_once().await.unwrap();
        if r.claimed == 0 {
            idle += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        } else {
            idle = 0;
        }
    }
}

async fn counts(o: &Arc<dyn OutboxStore>) -> OutboxCounts {
    o.counts().await.unwrap()
}

/// Routed messages exist with their events: stable ids, the stream as key, the event's
/// metadata, transforms applied, one per matching route.
pub async fn outbox_messages_are_written_with_their_events<F: OutboxFactory>(f: &F) {
    let (store, outbox) = f.create(routes()).await;
    let md = Metadata::default().with_correlation_id("c-1").with_custom(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    );
    let placed = store
        .append(
            &sid("Order-1"),
            ExpectedVersion::NoStream,
            vec![ev("OrderPlaced", 7).with_metadata(md.clone())],
        )
        .await
        .unwrap();
    store
        .append(
            &sid("Order-1"),
            ExpectedVersion::Exact(1),
            vec![ev("OrderPaid", 1)],
        )
        .await
        .unwrap();
    store
        .append(
            &sid("Cart-1"),
            ExpectedVersion::Any,
            vec![ev("OrderPlaced", 2)],
        )
        .await
        .unwrap();
    store
        .append(&sid("Other-1"), ExpectedVersion::Any, vec![ev("Noise", 0)])
        .await
        .unwrap();
    // Order-1/OrderPlaced -> billing, audit, shouty; Order-1/OrderPaid -> audit;
    // Cart-1/OrderPlaced -> billing, shouty; Other-1 -> nothing.
    assert_eq!(counts(&outbox).await.pending, 6);

    let publisher = RecordingPublisher::new();
    let p = OutboxProcessor::new(outbox.clone())
        .publisher("billing", publisher.clone())
        .publisher("audit", publisher.clone())
        .publisher("shouty", publisher.clone())
        .config(fast("p1"));
    drain(&p).await;
    let got = publisher.delivered();
    assert_eq!(got.len(), 6);
    let event = &placed.events[0];
    let billing = got
        .iter()
        .find(|m| m.destination == "billing" && m.stream_id == sid("Order-1"))
        .unwrap();
    assert_eq!(
        billing.id,
        OutboxMessage::id_for(event.id, "billing"),
        "stable id"
    );
    assert_eq!(billing.event_id, event.id);
    assert_eq!(billing.event_type, "OrderPlaced");
    assert_eq!(billing.stream_version, 1);
    assert_eq!(billing.position, event.position);
    assert_eq!(billing.payload, event.payload);
    assert_eq!(billing.metadata, md, "metadata and trace context travel");
    let shouty = got
        .iter()
        .find(|m| m.destination == "shouty" && m.stream_id == sid("Order-1"))
        .unwrap();
    assert_eq!(shouty.payload.as_ref(), br#"{"N":7}"#);
    assert_ne!(shouty.id, billing.id, "one id per destination");
    assert_eq!(
        counts(&outbox).await,
        OutboxCounts {
            pending: 0,
            delivered: 6,
            dead: 0
        }
    );
    assert_eq!(
        outbox.status(billing.id).await.unwrap(),
        Some((MessageStatus::Delivered, 1))
    );
}

/// A failing transform fails the append; a refused append writes no message.
pub async fn outbox_failed_routes_and_conflicts_write_nothing<F: OutboxFactory>(f: &F) {
    let outbox_routes = Outbox::new()
        .route(Route::all("everything").transform(|e| {
            if e.event_type == "Poison" {
                Err("cannot shape a poison event".into())
            } else {
                Ok(Some((e.payload.clone(), e.codec.clone())))
            }
        }))
        .unwrap();
    let (store, outbox) = f.create(outbox_routes).await;
    let s = sid("Order-9");
    store
        .append(&s, ExpectedVersion::NoStream, vec![ev("Fine", 1)])
        .await
        .unwrap();
    let err = store
        .append(
            &s,
            ExpectedVersion::Any,
            vec![ev("Fine", 2), ev("Poison", 3)],
        )
        .await
        .unwrap_err();
    match err {
        Error::Outbox {
            destination,
            event_type,
            version,
            ..
        } => {
            assert_eq!(
                (destination.as_str(), event_type.as_str(), version),
                ("everything", "Poison", 3)
            );
        }
        other => panic!("expected Error::Outbox, got {other:?}"),
    }
    let err = store
        .append(&s, ExpectedVersion::NoStream, vec![ev("Fine", 4)])
        .await
        .unwrap_err();
    assert!(err.is_conflict());
    assert_eq!(
        store.stream_version(&s).await.unwrap(),
        1,
        "no event of the failed appends"
    );
    assert_eq!(
        counts(&outbox).await.pending,
        1,
        "no message of the failed appends"
    );
    assert!(
        Outbox::new().route(Route::all(" ")).is_err(),
        "a blank destination is refused"
    );
}

/// Every message is delivered once; a publisher-less destination dead-letters.
pub async fn outbox_processor_delivers_each_message_once<F: OutboxFactory>(f: &F) {
    let (store, outbox) = f
        .create(
            Outbox::new()
                .route(Route::all("all"))
                .unwrap()
                .route(Route::event_types("nowhere", ["Lost"]))
                .unwrap(),
        )
        .await;
    for i in 0..40u64 {
        let s = sid(&format!("Acc-{}", i % 7));
        store
            .append(
                &s,
                ExpectedVersion::Any,
                vec![ev("Moved", i), ev("Moved", i + 100)],
            )
            .await
            .unwrap();
    }
    store
        .append(&sid("Acc-x"), ExpectedVersion::Any, vec![ev("Lost", 0)])
        .await
        .unwrap();
    let publisher = RecordingPublisher::new();
    let p = OutboxProcessor::new(outbox.clone())
        .publisher("all", publisher.clone())
        .config(fast("p1"));
    drain(&p).await;
    let got = publisher.delivered();
    assert_eq!(got.len(), 81);
    let ids: std::collections::HashSet<_> = got.iter().map(|m| m.id).collect();
    assert_eq!(ids.len(), 81, "each once");
    let dead = outbox.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message.destination, "nowhere");
    assert!(
        dead[0].last_error.contains("no publisher"),
        "{}",
        dead[0].last_error
    );
    assert!(matches!(
        OutboxProcessor::new(outbox.clone())
            .config(ProcessorConfig {
                batch_size: 0,
                ..fast("x")
            })
            .run(CancellationToken::new())
            .await,
        Err(Error::InvalidArgument(_))
    ));
}

/// A message that always fails is dead-lettered after exactly the attempt limit; the
/// others flow; a replay delivers it once the destination heals; purges remove.
pub async fn outbox_dead_letters_after_exactly_the_attempt_limit<F: OutboxFactory>(f: &F) {
    let (store, outbox) = f
        .create(Outbox::new().route(Route::all("hook")).unwrap())
        .await;
    let bad = store
        .append(&sid("Pay-bad"), ExpectedVersion::Any, vec![ev("Paid", 1)])
        .await
        .unwrap();
    store
        .append(&sid("Pay-good"), ExpectedVersion::Any, vec![ev("Paid", 2)])
        .await
        .unwrap();
    let bad_id = OutboxMessage::id_for(bad.events[0].id, "hook");
    let publisher = RecordingPublisher::new();
    publisher.fail_when(move |m| {
        (m.id == bad_id).then(|| PublishError::retryable("503 Service Unavailable"))
    });
    let p = OutboxProcessor::new(outbox.clone())
        .publisher("hook", publisher.clone())
        .config(fast("p1"));
    drain(&p).await;
    let attempts = publisher
        .attempts()
        .iter()
        .filter(|id| **id == bad_id)
        .count();
    assert_eq!(attempts, 3, "exactly the attempt limit");
    let dead = outbox.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].message.id, dead[0].attempts), (bad_id, 3));
    assert!(dead[0].last_error.contains("503"));
    assert_eq!(
        outbox.status(bad_id).await.unwrap(),
        Some((MessageStatus::Dead, 3))
    );
    // A permanent failure dead-letters at once.
    let perm = store
        .append(&sid("Pay-perm"), ExpectedVersion::Any, vec![ev("Paid", 3)])
        .await
        .unwrap();
    let perm_id = OutboxMessage::id_for(perm.events[0].id, "hook");
    publisher
        .fail_when(move |m| (m.id == perm_id).then(|| PublishError::permanent("400 Bad Request")));
    drain(&p).await;
    assert_eq!(
        outbox.status(perm_id).await.unwrap(),
        Some((MessageStatus::Dead, 1))
    );
    // Replay one, then all.
    publisher.heal();
    assert_eq!(outbox.replay(Some(bad_id)).await.unwrap(), 1);
    drain(&p).await;
    assert_eq!(
        outbox.status(bad_id).await.unwrap(),
        Some((MessageStatus::Delivered, 1))
    );
    assert!(publisher.delivered().iter().any(|m| m.id == bad_id));
    assert_eq!(outbox.replay(None).await.unwrap(), 1);
    drain(&p).await;
    assert_eq!(
        counts(&outbox).await,
        OutboxCounts {
            pending: 0,
            delivered: 3,
            dead: 0
        }
    );
    // Purges.
    let gone = store
        .append(&sid("Pay-gone"), ExpectedVersion::Any, vec![ev("Paid", 4)])
        .await
        .unwrap();
    let gone_id = OutboxMessage::id_for(gone.events[0].id, "hook");
    publisher.fail_when(move |m| (m.id == gone_id).then(|| PublishError::permanent("410 Gone")));
    drain(&p).await;
    assert_eq!(outbox.purge_dead(Some(gone_id)).await.unwrap(), 1);
    assert_eq!(outbox.status(gone_id).await.unwrap(), None);
    assert_eq!(outbox.purge_delivered(Duration::ZERO).await.unwrap(), 3);
    assert_eq!(counts(&outbox).await, OutboxCounts::default());
}

/// A failing message holds back the later messages of its stream, not the others, and
/// the stream is delivered in order once it heals.
pub async fn outbox_per_stream_order_survives_retries<F: OutboxFactory>(f: &F) {
    let (store, outbox) = f
        .create(Outbox::new().route(Route::all("kafka")).unwrap())
        .await;
    let a = sid("Acc-A");
    let b = sid("Acc-B");
    let mut second_of_a = None;
    for i in 1..=5u64 {
        let r = store
            .append(&a, ExpectedVersion::Any, vec![ev("Moved", i)])
            .await
            .unwrap();
        if i == 2 {
            second_of_a = Some(OutboxMessage::id_for(r.events[0].id, "kafka"));
        }
        store
            .append(&b, ExpectedVersion::Any, vec![ev("Moved", i)])
            .await
            .unwrap();
    }
    let stuck = second_of_a.unwrap();
    let publisher = RecordingPublisher::new();
    let failures = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let f2 = failures.clone();
    publisher.fail_when(move |m| {
        (m.id == stuck && f2.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2)
            .then(|| PublishError::retryable("timeout"))
    });
    let p = OutboxProcessor::new(outbox.clone())
        .publisher("kafka", publisher.clone())
        .config(fast("p1"));
    // One round: A's first goes, A's second fails; B flows on.
    p.run_once().await.unwrap();
    drain(&p).await;
    let versions = |s: &StreamId| -> Vec<u64> {
        publisher
            .delivered()
            .iter()
            .filter(|m| &m.stream_id == s)
            .map(|m| m.stream_version)
            .collect()
    };
    assert_eq!(versions(&a), [1, 2, 3, 4, 5], "in order, after the retries");
    assert_eq!(versions(&b), [1, 2, 3, 4, 5]);
    assert_eq!(
        failures.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "two failures, then the success"
    );
    let attempts_of_stuck = publisher
        .attempts()
        .iter()
        .filter(|id| **id == stuck)
        .count();
    assert_eq!(attempts_of_stuck, 3);
}

/// Two processors on one outbox never deliver one message concurrently.
pub async fn outbox_processors_never_overlap<F: OutboxFactory>(f: &F) {
    let (store, outbox) = f
        .create(Outbox::new().route(Route::all("out")).unwrap())
        .await;
    for i in 0..300u64 {
        store
            .append(
                &sid(&format!("S-{}", i % 50)),
                ExpectedVersion::Any,
                vec![ev("E", i)],
            )
            .await
            .unwrap();
    }
    let publisher = RecordingPublisher::new();
    let cancel = CancellationToken::new();
    let mut tasks = Vec::new();
    for owner in ["alpha", "beta"] {
        let p = OutboxProcessor::new(outbox.clone())
            .publisher("out", publisher.clone())
            .config(ProcessorConfig {
                batch_size: 16,
                ..fast(owner)
            });
        tasks.push(tokio::spawn(p.run(cancel.clone())));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while publisher.delivered().len() < 300 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cancel.cancel();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let attempts = publisher.attempts();
    assert_eq!(attempts.len(), 300, "no message attempted twice");
    let unique: std::collections::HashSet<_> = attempts.iter().collect();
    assert_eq!(unique.len(), 300);
    assert_eq!(counts(&outbox).await.delivered, 300);
}

/// A lease that expires (its processor died) is taken over, and the lost attempt
/// counts; past the limit the message is dead-lettered instead.
pub async fn outbox_expired_leases_are_reclaimed_counting_attempts<F: OutboxFactory>(f: &F) {
    let (store, outbox) = f
        .create(Outbox::new().route(Route::all("out")).unwrap())
        .await;
    let r = store
        .append(&sid("L-1"), ExpectedVersion::Any, vec![ev("E", 1)])
        .await
        .unwrap();
    let id = OutboxMessage::id_for(r.events[0].id, "out");
    // A processor claims, then dies without acknowledging.
    let claimed = outbox
        .claim("dead-processor", 10, Duration::from_millis(200), 2)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].attempt, 1);
    assert!(
        outbox
            .claim("other", 10, Duration::from_secs(30), 2)
            .await
            .unwrap()
            .is_empty(),
        "leased"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let again = outbox
        .claim("other", 10, Duration::from_millis(200), 2)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].message.id, again[0].attempt),
        (id, 2),
        "the lost attempt counted"
    );
    // The dead processor's late acknowledgement is ignored.
    outbox.ack("dead-processor", &[id]).await.unwrap();
    assert_eq!(
        outbox.status(id).await.unwrap(),
        Some((MessageStatus::Pending, 2))
    );
    // The second owner dies too: at the limit, the message is dead-lettered.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        outbox
            .claim("third", 10, Duration::from_secs(30), 2)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        outbox.status(id).await.unwrap(),
        Some((MessageStatus::Dead, 2))
    );
}

/// A running processor stops when cancelled, after acknowledging what it delivered.
pub async fn outbox_processor_shuts_down_gracefully<F: OutboxFactory>(f: &F) {
    let (store, outbox) = f
        .create(Outbox::new().route(Route::all("out")).unwrap())
        .await;
    let publisher = RecordingPublisher::new();
    let cancel = CancellationToken::new();
    let p = OutboxProcessor::new(outbox.clone())
        .publisher("out", publisher.clone())
        .config(fast("p1"));
    let task = tokio::spawn(p.run(cancel.clone()));
    // Live: appended while the processor waits.
    for i in 0..5u64 {
        store
            .append(&sid("G-1"), ExpectedVersion::Any, vec![ev("E", i)])
            .await
            .unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while publisher.delivered().len() < 5 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(publisher.delivered().len(), 5);
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        counts(&outbox).await.delivered,
        5,
        "every delivered message acknowledged"
    );
}
