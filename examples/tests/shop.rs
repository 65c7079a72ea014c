//! Runs the shop's scenario on a temporary SQLite file (and on the memory store) and
//! checks how it ends: the domain's outcome, and what the command bus's middleware left
//! behind (event metadata, the audit log, idempotent duplicates, retried conflicts).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;

use mink_es::command::audit::{AuditOutcome, AuditQuery, AuditRecord, AuditStore};
use mink_es::prelude::*;
use mink_es::{MemoryStore, Position, StoredEvent, StreamId, Uuid};
use mink_examples::shop::scenario::read_all;
use mink_examples::shop::{self, CommandStores, Narrator, OrderStatus, ShopReport};
use mink_sqlite::SqliteStore;

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
    let store = SqliteStore::open(&path).unwrap();
    let mut narrator = Narrator::quiet();
    let report = shop::run(store.clone(), CommandStores::sqlite(&store), &mut narrator)
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
}

#[tokio::test]
async fn the_shop_story_on_the_memory_store() {
    let store = MemoryStore::new();
    let stores = CommandStores::memory();
    let report = shop::run(store.clone(), stores.clone(), &mut Narrator::quiet())
        .await
        .unwrap();
    check(&report);
    assert_eq!(store.event_count() as u64, EXPECTED_EVENTS);
    let events = read_all(&store).await.unwrap();
    let audit = full_audit(&stores.audit).await;
    check_provenance(&report, &events, &audit);
}
