//! Runs the shop's scenario on a temporary SQLite file (and on the memory store) and
//! checks how it ends: the domain's outcome, what the command bus's middleware left
//! behind (event metadata, the audit log, idempotent duplicates, retried conflicts), and
//! what the outbox delivered to the webhook receiver.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use mink_es::command::audit::{AuditOutcome, AuditQuery, AuditRecord, AuditStore};
use mink_es::outbox::store::OutboxCounts;
use mink_es::outbox::{OutboxMessage, OutboxStore};
use mink_es::prelude::*;
use mink_es::{MemoryStore, Position, StoredEvent, StreamId, Uuid};
use mink_examples::shop::scenario::read_all;
use mink_examples::shop::webhooks::{
    self, Handling, PARTNERS, REFUNDS, Receiver, UNAVAILABLE_ONCE, WAREHOUSE,
};
use mink_examples::shop::{self, CommandStores, Narrator, OrderStatus, ShopReport};
use mink_sqlite::{SqliteConfig, SqliteStore};
use mink_webhook::{WebhookPublisher, WebhookSecret};

/// Events the scenario stores:
///
/// ```text
/// stock   KB-01  received, reserved (1001), dispatched (1001)                    3
///         MS-02  received, reserved (1001), reserved (1003), released (1003),
///                dispatched (1001), reserved (1004)                              6
///         MN-27  received, reserved (1002), released (1002), received (live)     4
/// orders  1001 placed, paid, shipped; 1002 placed, paid, cancelled;
///         1003 placed, cancelled; 1004 placed (once, despite the repeated save
///         and the duplicate command)                                             9
/// ```
const EXPECTED_EVENTS: u64 = 22;

/// Commands the scenario dispatches: 4 deliveries, 5 orders placed (one invalid, one
/// refused, one sent twice), 2 payments, 2 shipments (one refused), 2 cancellations
/// (one refused, one retried after a conflict) — 16 in all.
const EXPECTED_DISPATCHES: usize = 16;

/// Outbox messages the routes write: the 9 order events to partners, the 13 stock
/// events to the warehouse, and the one cancellation that owes a refund (order 1002's;
/// 1003 was never paid) to refunds.
const EXPECTED_MESSAGES: [(&str, usize); 3] = [(PARTNERS, 9), (WAREHOUSE, 13), (REFUNDS, 1)];

fn check(report: &ShopReport) {
    let status = |id: &str| report.orders[id].status;
    assert_eq!(status("1001"), OrderStatus::Shipped);
    assert_eq!(status("1002"), OrderStatus::Cancelled);
    assert_eq!(status("1003"), OrderStatus::Cancelled);
    assert_eq!(status("1004"), OrderStatus::Placed);
    // The retried cancellation of 1002 was decided on the paid order: full refund.
    assert_eq!(
        report.orders["1002"].refund_cents,
        report.orders["1002"].total_cents
    );
    assert_eq!(report.orders["1003"].refund_cents, 0);
    assert_eq!(report.orders["1004"].version, 1);

    let stock = |sku: &str| {
        let s = report.stock[sku];
        (s.on_hand, s.reserved, s.available)
    };
    assert_eq!(stock("KB-01"), (9, 0, 9));
    assert_eq!(stock("MS-02"), (23, 3, 20));
    assert_eq!(stock("MN-27"), (8, 0, 8));

    // The rule violations: carol's monitors, shipping unpaid, cancelling shipped.
    assert_eq!(
        report.rule_violations.len(),
        3,
        "{:?}",
        report.rule_violations
    );
    assert!(report.rule_violations[0].contains("only 1 available, 2 requested"));
    assert!(report.rule_violations[1].contains("cannot ship an unpaid order"));
    assert!(report.rule_violations[2].contains("already shipped"));
    // Validation refused carol's first try, naming the field.
    assert_eq!(report.invalid_commands.len(), 1);
    assert!(report.invalid_commands[0].contains("lines[1].quantity: must be at least 1"));

    // Clerk B's cancellation lost the race, and the retry middleware ran it again.
    assert!(report.conflict_detected, "the stale save must conflict");
    assert!(report.conflict_retry_saved);
    assert_eq!(report.conflict_attempts, ["conflict", "ok"]);

    // The lost reply: the repeated save was recognised, nothing stored twice.
    assert!(
        report.retry_deduplicated,
        "the repeated save must be a repeat"
    );
    assert_eq!(report.retried_stream_events, 1, "nothing stored twice");
    // The duplicate command: the original result, and one run of the handler.
    assert!(report.duplicate_replayed);
    assert_eq!(report.duplicate_handler_runs, 1);

    assert_eq!(report.snapshot_version, Some(5));
    assert_eq!(report.order_feed_events, 9);
    assert_eq!(report.subscription_caught_up, 12);
    assert_eq!(report.subscription_live, 1);
    assert_eq!(report.events_with_provenance, EXPECTED_EVENTS);
    assert_eq!(report.events_in_store, EXPECTED_EVENTS);
    assert_eq!(report.head, Position::new(0, EXPECTED_EVENTS));

    // Every dispatch, how it ended, and how often handlers ran.
    assert_eq!(report.dispatched.len(), EXPECTED_DISPATCHES);
    let outcomes = |o: &str| report.dispatched.iter().filter(|d| d.outcome == o).count();
    assert_eq!(outcomes("invalid"), 1);
    assert_eq!(outcomes("rejected"), 3);
    assert_eq!(outcomes("ok"), EXPECTED_DISPATCHES - 4);
    // No run for the invalid command nor for the replayed duplicate; two for the
    // cancellation that met a conflict.
    assert_eq!(report.handler_runs.len(), EXPECTED_DISPATCHES - 2 + 1);
    for invalid in report.dispatched.iter().filter(|d| d.outcome == "invalid") {
        assert!(
            !report
                .handler_runs
                .iter()
                .any(|r| r.command_id == invalid.command_id),
            "an invalid command never reaches its handler"
        );
    }
    let mut runs_per_dispatch: HashMap<Uuid, Vec<u32>> = HashMap::new();
    for r in &report.handler_runs {
        runs_per_dispatch
            .entry(r.command_id)
            .or_default()
            .push(r.attempt);
    }
    let retried: Vec<_> = runs_per_dispatch
        .values()
        .filter(|attempts| attempts.len() > 1)
        .collect();
    assert_eq!(retried, [&vec![1, 2]], "one command was retried, once");

    // Carol's audit entries, as the story queried them.
    let carol: Vec<(&str, &str)> = report
        .audit_sample
        .iter()
        .map(|r| {
            (
                r.command.as_str(),
                match &r.outcome {
                    AuditOutcome::Failed { kind, .. } => kind.as_str(),
                    other => other.label(),
                },
            )
        })
        .collect();
    assert_eq!(
        carol,
        [
            ("PlaceOrder", "started"),
            ("PlaceOrder", "invalid"),
            ("PlaceOrder", "started"),
            ("PlaceOrder", "rejected"),
        ]
    );
    assert!(
        report
            .audit_sample
            .iter()
            .all(|r| r.user_id.as_deref() == Some("carol"))
    );
}

/// What the middleware left behind, read back from the stores: every stored event
/// carries the correlation id and user of the command that wrote it, and that
/// command's id as causation id; every dispatch has its audit entries with the right
/// outcome.
fn check_provenance(report: &ShopReport, events: &[StoredEvent], audit: &[AuditRecord]) {
    assert_eq!(events.len() as u64, EXPECTED_EVENTS);

    // Two audit entries per dispatch ("started", then how it ended: fail-closed),
    // with the caller's user; nothing else in the log.
    assert_eq!(audit.len(), 2 * report.dispatched.len());
    let mut final_entry: HashMap<Uuid, &AuditRecord> = HashMap::new();
    for d in &report.dispatched {
        let entries: Vec<&AuditRecord> = audit
            .iter()
            .filter(|r| r.command_id == d.command_id)
            .collect();
        assert_eq!(entries.len(), 2, "{d:?}: {entries:?}");
        assert!(
            entries
                .iter()
                .all(|r| r.command == d.command && r.user_id.as_deref() == Some(&d.user_id))
        );
        assert_eq!(entries[0].aggregate_id, d.aggregate_id);
        assert!(entries[0].correlation_id.is_some());
        assert_eq!(entries[0].correlation_id, entries[1].correlation_id);
        let started = entries
            .iter()
            .filter(|r| r.outcome == AuditOutcome::Started)
            .count();
        assert_eq!(started, 1, "{entries:?}");
        let end = entries
            .iter()
            .find(|r| r.outcome != AuditOutcome::Started)
            .unwrap();
        match (&end.outcome, d.outcome) {
            (AuditOutcome::Succeeded, "ok") => {}
            (AuditOutcome::Failed { kind, .. }, outcome) if kind == outcome => {}
            (other, outcome) => panic!("{d:?}: audited {other:?}, dispatch ended {outcome}"),
        }
        final_entry.insert(d.command_id, end);
    }

    // Each event names its command: causation id = command id; the command's user and
    // correlation id are the event's.
    for e in events {
        let m = &e.metadata;
        let causation: Uuid = m
            .causation_id()
            .unwrap_or_else(|| panic!("{} v{} has no causation id", e.stream_id, e.version))
            .parse()
            .expect("the causation id is a command id");
        let dispatch = report
            .dispatched
            .iter()
            .find(|d| d.command_id == causation)
            .unwrap_or_else(|| panic!("{} v{}: no command {causation}", e.stream_id, e.version));
        assert_eq!(m.user_id(), Some(dispatch.user_id.as_str()));
        let audited = final_entry[&causation];
        assert_eq!(m.correlation_id(), audited.correlation_id.as_deref());
        assert!(m.correlation_id().is_some());
        if dispatch.outcome != "ok" {
            // Only a refused order writes anyway: its placement and its compensation.
            assert_eq!(
                (
                    dispatch.command,
                    dispatch.outcome,
                    dispatch.user_id.as_str()
                ),
                ("PlaceOrder", "rejected", "carol")
            );
        }
    }
    let by_refused: Vec<(&str, u64)> = events
        .iter()
        .filter(|e| {
            let refused = report
                .dispatched
                .iter()
                .find(|d| d.outcome == "rejected" && d.command == "PlaceOrder")
                .unwrap();
            e.metadata.causation_id() == Some(refused.command_id.to_string().as_str())
        })
        .map(|e| (e.event_type.as_str(), e.version))
        .collect();
    assert_eq!(
        by_refused,
        [
            ("OrderPlaced", 1),
            ("StockReserved", 3),
            ("StockReleased", 4),
            ("OrderCancelled", 2),
        ]
    );

    // Alice's checkout brought its own correlation id: both her commands share it.
    let alice: Vec<_> = events
        .iter()
        .filter(|e| e.metadata.user_id() == Some("alice"))
        .collect();
    assert_eq!(alice.len(), 4, "placed, 2 reservations, paid");
    assert!(
        alice
            .iter()
            .all(|e| e.metadata.correlation_id() == Some("checkout-1001"))
    );
    let alice_commands: std::collections::HashSet<_> =
        alice.iter().map(|e| e.metadata.causation_id()).collect();
    assert_eq!(alice_commands.len(), 2, "PlaceOrder and PayOrder");
}

/// What the outbox and the webhook receiver did, against the messages the routes must
/// have written for the stored events.
fn check_webhooks(report: &ShopReport, events: &[StoredEvent]) {
    let w = &report.webhooks;
    assert!(
        w.receiver.starts_with("http://127.0.0.1:"),
        "{}",
        w.receiver
    );
    let expected = webhooks::outbox().unwrap().messages_for(events).unwrap();
    let per_destination: BTreeMap<String, usize> = EXPECTED_MESSAGES
        .iter()
        .map(|(d, n)| (d.to_string(), *n))
        .collect();
    assert_eq!(w.routed, per_destination);
    let total: usize = EXPECTED_MESSAGES.iter().map(|(_, n)| n).sum();
    assert_eq!(expected.len(), total);
    let id_of = |destination: &str, stream: &str, event_type: &str| -> String {
        expected
            .iter()
            .find(|m| {
                m.destination == destination
                    && m.stream_id.as_str() == stream
                    && m.event_type == event_type
            })
            .unwrap_or_else(|| panic!("no message {destination} {stream} {event_type}"))
            .id
            .to_string()
    };

    // Every request reached the receiver signed with the secret, and verified.
    assert!(!w.requests.is_empty());
    for q in &w.requests {
        assert!(q.verified, "{q:?}");
        assert_ne!(q.handling, Handling::Unauthorized, "{q:?}");
    }

    // Each routed message was processed exactly once (after de-duplication), at its
    // endpoint, with its event's headers; nothing else was processed.
    let processed: Vec<_> = w
        .requests
        .iter()
        .filter(|q| q.handling == Handling::Processed)
        .collect();
    assert_eq!(processed.len(), total);
    let processed_ids: HashSet<&str> = processed.iter().map(|q| q.webhook_id.as_str()).collect();
    assert_eq!(processed_ids.len(), total, "no message processed twice");
    for m in &expected {
        let q = processed
            .iter()
            .find(|q| q.webhook_id == m.id.to_string())
            .unwrap_or_else(|| {
                panic!(
                    "{} {} {} never processed",
                    m.destination, m.stream_id, m.event_type
                )
            });
        assert_eq!(
            (
                q.endpoint.as_str(),
                q.stream_id.as_str(),
                q.stream_version,
                q.event_type.as_str()
            ),
            (
                m.destination.as_str(),
                m.stream_id.as_str(),
                m.stream_version,
                m.event_type.as_str()
            )
        );
    }
    assert!(
        webhooks::in_stream_order(&w.requests),
        "each stream in order"
    );

    // The retried message: 503, then 200, with the same webhook-id on both attempts.
    let flaky = id_of(
        UNAVAILABLE_ONCE.destination,
        UNAVAILABLE_ONCE.stream,
        UNAVAILABLE_ONCE.event_type,
    );
    assert_eq!(w.retried_id.as_deref(), Some(flaky.as_str()));
    let attempts: Vec<_> = w
        .requests
        .iter()
        .filter(|q| {
            q.stream_id == UNAVAILABLE_ONCE.stream
                && q.event_type == UNAVAILABLE_ONCE.event_type
                && q.endpoint == PARTNERS
        })
        .map(|q| (q.webhook_id.as_str(), q.handling))
        .collect();
    assert_eq!(
        attempts,
        [
            (flaky.as_str(), Handling::Unavailable),
            (flaky.as_str(), Handling::Processed)
        ]
    );

    // The redelivery by hand: answered, not processed again.
    let paid = id_of(PARTNERS, "Order-1001", "OrderPaid");
    assert_eq!(w.duplicate_id.as_deref(), Some(paid.as_str()));
    let handled: Vec<Handling> = w
        .requests
        .iter()
        .filter(|q| q.webhook_id == paid)
        .map(|q| q.handling)
        .collect();
    assert_eq!(handled, [Handling::Processed, Handling::Duplicate]);

    // The dead letter: refused with 400 once, listed, replayed, delivered.
    let refund = id_of(REFUNDS, "Order-1002", "OrderCancelled");
    assert_eq!(w.counts_before_replay.dead, 1);
    assert_eq!(w.counts_before_replay.pending, 0);
    assert_eq!(w.dead_letters.len(), 1);
    let dead = &w.dead_letters[0];
    assert_eq!(
        (
            dead.id.as_str(),
            dead.destination.as_str(),
            dead.stream_id.as_str(),
            dead.attempts
        ),
        (refund.as_str(), REFUNDS, "Order-1002", 1)
    );
    assert!(dead.last_error.contains("permanent"), "{}", dead.last_error);
    assert!(dead.last_error.contains("400"), "{}", dead.last_error);
    assert_eq!(w.replayed, 1);
    let handled: Vec<Handling> = w
        .requests
        .iter()
        .filter(|q| q.webhook_id == refund)
        .map(|q| q.handling)
        .collect();
    assert_eq!(handled, [Handling::Rejected, Handling::Processed]);

    // Every request accounted for: one per message, plus the 503, the 400 and the
    // duplicate.
    assert_eq!(w.requests.len(), total + 3);

    // At the end: everything delivered, nothing pending, nothing dead.
    assert_eq!(
        w.counts,
        OutboxCounts {
            pending: 0,
            delivered: total as u64,
            dead: 0
        }
    );
}

async fn full_audit(audit: &Arc<dyn AuditStore>) -> Vec<AuditRecord> {
    audit
        .query(&AuditQuery {
            limit: 10_000,
            ..AuditQuery::default()
        })
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shop_story_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shop.db");
    let store =
        SqliteStore::open_with_outbox(&path, SqliteConfig::default(), webhooks::outbox().unwrap())
            .unwrap();
    let mut narrator = Narrator::quiet();
    let report = shop::run(
        store.clone(),
        CommandStores::sqlite(&store),
        Arc::new(store.outbox_store()),
        &mut narrator,
    )
    .await
    .unwrap();
    check(&report);
    assert!(
        narrator
            .lines()
            .iter()
            .any(|l| l.contains("wrong expected version"))
    );

    // Everything is in the file: a fresh handle sees the same streams and audit log.
    let reopened = SqliteStore::open(&path).unwrap();
    let order = StreamId::new("Order-1004").unwrap();
    assert_eq!(reopened.stream_version(&order).await.unwrap(), 1);
    assert_eq!(
        reopened.head_position().await.unwrap(),
        Position::new(0, EXPECTED_EVENTS)
    );
    let ms02 = StreamId::new("Inventory-MS-02").unwrap();
    assert_eq!(
        reopened
            .load_snapshot(&ms02)
            .await
            .unwrap()
            .map(|s| s.version),
        Some(5)
    );
    let events = read_all(&reopened).await.unwrap();
    let audit = full_audit(&CommandStores::sqlite(&reopened).audit).await;
    check_provenance(&report, &events, &audit);
    check_webhooks(&report, &events);
    // The outbox is in the file too, every message delivered.
    assert_eq!(
        reopened.outbox_store().counts().await.unwrap(),
        report.webhooks.counts
    );
    for q in &report.webhooks.requests {
        let id: Uuid = q.webhook_id.parse().unwrap();
        let (status, _) = reopened.outbox_store().status(id).await.unwrap().unwrap();
        assert_eq!(status, mink_es::outbox::MessageStatus::Delivered);
    }
}

#[tokio::test]
async fn the_shop_story_on_the_memory_store() {
    let store = MemoryStore::with_outbox(webhooks::outbox().unwrap());
    let stores = CommandStores::memory();
    let outbox = store.outbox_store().unwrap();
    let report = shop::run(
        store.clone(),
        stores.clone(),
        Arc::new(outbox.clone()),
        &mut Narrator::quiet(),
    )
    .await
    .unwrap();
    check(&report);
    assert_eq!(store.event_count() as u64, EXPECTED_EVENTS);
    let events = read_all(&store).await.unwrap();
    let audit = full_audit(&stores.audit).await;
    check_provenance(&report, &events, &audit);
    check_webhooks(&report, &events);
    assert_eq!(outbox.counts().await.unwrap(), report.webhooks.counts);
}

/// The receiver trusts nothing it cannot verify: a request signed with another secret,
/// or not signed, is refused with 401 and not processed, while the right secret gets
/// through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receiver_refuses_what_it_cannot_verify() {
    let secret = WebhookSecret::generate();
    let receiver = Receiver::start(secret.clone()).await.unwrap();
    let publisher = |secret: WebhookSecret| {
        WebhookPublisher::builder()
            .url(WAREHOUSE, receiver.url(WAREHOUSE))
            .secret_key(secret)
            .build()
            .unwrap()
    };
    let store = MemoryStore::with_outbox(webhooks::outbox().unwrap());
    store
        .append(
            &StreamId::new("Inventory-KB-01").unwrap(),
            mink_es::ExpectedVersion::NoStream,
            vec![mink_es::NewEvent::new("StockReceived", r#"{"quantity":1}"#)],
        )
        .await
        .unwrap();
    let event = &read_all(&store).await.unwrap()[0];
    let message = OutboxMessage::from_event(event, WAREHOUSE);

    let forged = publisher(WebhookSecret::generate()).deliver(&message).await;
    let err = forged.unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(401), "{err}");
    assert!(!err.is_retryable());
    let genuine = publisher(secret);
    genuine.deliver(&message).await.unwrap();
    genuine.deliver(&message).await.unwrap();

    let requests = receiver.requests();
    let handled: Vec<(bool, Handling)> =
        requests.iter().map(|q| (q.verified, q.handling)).collect();
    assert_eq!(
        handled,
        [
            (false, Handling::Unauthorized),
            (true, Handling::Processed),
            (true, Handling::Duplicate)
        ]
    );
    assert!(
        requests
            .iter()
            .all(|q| q.webhook_id == message.id.to_string())
    );
    drop((publisher, genuine));
    receiver.stop().await.unwrap();
}

/// The read models of the `shop` binary: order summaries kept inline and stock levels
/// kept by an async projection agree with what the story computed from the aggregates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_models_agree_with_the_story() {
    use mink_es::projection::ops::ProjectionOps;
    use mink_es::projection::{AsyncOptions, ProjectionEngine};
    use mink_es::readmodel::{Query, ReadModelRepository};
    use mink_examples::shop::views::{self, OrderSummaries, StockLevels};
    use mink_sqlite::SqliteProjectionTarget;

    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::builder(dir.path().join("shop.db"))
        .outbox(webhooks::outbox().unwrap())
        .inline(OrderSummaries)
        .unwrap()
        .open()
        .unwrap();
    let control = store.projection_control();
    let mut engine = ProjectionEngine::new(store.clone(), Arc::new(control.clone()));
    engine
        .add(
            SqliteProjectionTarget::new(&store, StockLevels),
            AsyncOptions {
                poll_interval: std::time::Duration::from_millis(10),
                ..AsyncOptions::default()
            },
        )
        .unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let handle = engine.start(cancel.clone());
    let mut narrator = Narrator::quiet();
    let report = shop::run(
        store.clone(),
        CommandStores::sqlite(&store),
        Arc::new(store.outbox_store()),
        &mut narrator,
    )
    .await
    .unwrap();
    check(&report);

    let orders = ReadModelRepository::<views::OrderSummary, _>::new(store.read_models());
    orders.ensure_table().await.unwrap();
    let rows = orders.find(&Query::new()).await.unwrap();
    assert_eq!(rows.len(), report.orders.len());
    for (id, o) in &report.orders {
        let row = orders
            .get(format!("Order-{}", id.trim_start_matches("Order-")))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no summary for order {id}"))
            .model;
        assert_eq!(row.customer, o.customer, "{id}");
        assert_eq!(row.total_cents, o.total_cents as i64, "{id}");
        assert_eq!(row.status, format!("{:?}", o.status).to_lowercase(), "{id}");
    }

    let ops = ProjectionOps::new(store.clone(), Arc::new(control));
    let mut caught_up = false;
    for _ in 0..500 {
        let info = ops.list().await.unwrap();
        if info.len() == 1 && info[0].lag_events == 0 && info[0].status.checkpoint.is_some() {
            caught_up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(caught_up, "{:?}", ops.list().await.unwrap());
    let stock = ReadModelRepository::<views::StockLevel, _>::new(store.read_models());
    stock.ensure_table().await.unwrap();
    assert_eq!(
        stock.count(&Query::new()).await.unwrap() as usize,
        report.stock.len()
    );
    for (sku, s) in &report.stock {
        let row = stock
            .get(format!("Inventory-{sku}"))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no stock level for {sku}"))
            .model;
        assert_eq!(row.available, i64::from(s.available), "{sku}");
        assert_eq!(row.reserved, i64::from(s.reserved), "{sku}");
    }
    cancel.cancel();
    handle.shutdown().await;
}
