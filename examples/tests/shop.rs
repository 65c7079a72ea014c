//! Runs the shop's scenario on a temporary SQLite file (and on the memory store) and
//! checks how it ends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use mink_es::prelude::*;
use mink_es::{MemoryStore, Position, StreamId};
use mink_examples::shop::{self, Narrator, OrderStatus, ShopReport};
use mink_sqlite::SqliteStore;

/// Events the scenario stores:
///
/// ```text
/// stock   KB-01  received, reserved (1001), dispatched (1001)                    3
///         MS-02  received, reserved (1001), reserved (1003), released (1003),
///                dispatched (1001), reserved (1004)                              6
///         MN-27  received, reserved (1002), released (1002), received (live)     4
/// orders  1001 placed, paid, shipped; 1002 placed, paid, cancelled;
///         1003 placed, cancelled; 1004 placed (once, despite the retried save)   9
/// ```
const EXPECTED_EVENTS: u64 = 22;

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

    assert!(report.conflict_detected, "the stale save must conflict");
    assert!(report.conflict_retry_saved);

    assert!(
        report.retry_deduplicated,
        "the retried save must be a repeat"
    );
    assert_eq!(report.retried_stream_events, 1, "nothing stored twice");

    assert_eq!(report.snapshot_version, Some(5));
    assert_eq!(report.order_feed_events, 9);
    assert_eq!(report.subscription_caught_up, 12);
    assert_eq!(report.subscription_live, 1);
    assert_eq!(report.events_in_store, EXPECTED_EVENTS);
    assert_eq!(report.head, Position::new(0, EXPECTED_EVENTS));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shop_story_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shop.db");
    let store = SqliteStore::open(&path).unwrap();
    let mut narrator = Narrator::quiet();
    let report = shop::run(store, &mut narrator).await.unwrap();
    check(&report);
    assert!(
        narrator
            .lines()
            .iter()
            .any(|l| l.contains("wrong expected version"))
    );

    // Everything is in the file: a fresh handle sees the same streams.
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
}

#[tokio::test]
async fn the_shop_story_on_the_memory_store() {
    let store = MemoryStore::new();
    let report = shop::run(store.clone(), &mut Narrator::quiet())
        .await
        .unwrap();
    check(&report);
    assert_eq!(store.event_count() as u64, EXPECTED_EVENTS);
}
