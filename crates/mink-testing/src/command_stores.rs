//! Conformance tests for the command bus's stores: [`IdempotencyStore`] and
//! [`AuditStore`]. Adapter crates run them with [`command_store_tests!`](crate::command_store_tests).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use mink_es::command::audit::{AuditOutcome, AuditQuery, AuditRecord, AuditStore};
use mink_es::command::idempotency::{Claim, IdempotencyStore};
use uuid::Uuid;

/// Makes fresh, isolated command stores.
pub trait CommandStoreFactory: Send + Sync + 'static {
    /// The idempotency store under test.
    type Idempotency: IdempotencyStore;
    /// The audit store under test.
    type Audit: AuditStore;

    /// A new, empty idempotency store.
    fn idempotency(&self) -> impl Future<Output = Self::Idempotency> + Send;

    /// A new, empty audit store.
    fn audit(&self) -> impl Future<Output = Self::Audit> + Send;
}

/// Generates one `#[tokio::test]` per command-store conformance test. The argument is
/// a future of `Option<F: CommandStoreFactory>`; `None` skips.
#[macro_export]
macro_rules! command_store_tests {
    ($factory:expr) => {
        $crate::command_store_tests!(@tests $factory;
            idempotency_claims_and_results,
            idempotency_tokens_guard_results,
            idempotency_reservations_and_results_expire,
            idempotency_concurrent_claims_have_one_winner,
            audit_round_trip_and_queries,
        );
    };
    (@tests $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                if let Some(f) = $factory.await {
                    $crate::command_stores::$name(&f).await;
                }
            }
        )*
    };
}

const LONG: Duration = Duration::from_secs(600);

fn token(c: Claim) -> Uuid {
    match c {
        Claim::Reserved(t) => t,
        other => panic!("expected a reservation, got {other:?}"),
    }
}

/// Claim, complete, replay, release; keys are independent.
pub async fn idempotency_claims_and_results<F: CommandStoreFactory>(f: &F) {
    let s = f.idempotency().await;
    let t = token(s.claim("Cmd:a", LONG).await.unwrap());
    assert_eq!(s.claim("Cmd:a", LONG).await.unwrap(), Claim::InProgress);
    // A time-to-live too large to represent means "forever", not a failure.
    let forever = token(s.claim("Cmd:forever", Duration::MAX).await.unwrap());
    assert!(
        s.complete("Cmd:forever", forever, b"1", Duration::MAX)
            .await
            .unwrap()
    );
    assert_eq!(
        s.claim("Cmd:forever", Duration::MAX).await.unwrap(),
        Claim::Completed(b"1".to_vec())
    );
    let other = format!("Cmd:{}-ü-{}", "k".repeat(300), "🦀");
    let t_other = token(s.claim(&other, LONG).await.unwrap());
    assert!(s.complete("Cmd:a", t, br#"{"v":1}"#, LONG).await.unwrap());
    assert_eq!(
        s.claim("Cmd:a", LONG).await.unwrap(),
        Claim::Completed(br#"{"v":1}"#.to_vec())
    );
    assert_eq!(s.claim(&other, LONG).await.unwrap(), Claim::InProgress);
    s.release(&other, t_other).await.unwrap();
    let again = token(s.claim(&other, LONG).await.unwrap());
    assert_ne!(again, t_other);
}

/// Only the reservation's holder can complete or release it.
pub async fn idempotency_tokens_guard_results<F: CommandStoreFactory>(f: &F) {
    let s = f.idempotency().await;
    let t = token(s.claim("Cmd:b", LONG).await.unwrap());
    let stranger = Uuid::new_v4();
    assert!(!s.complete("Cmd:b", stranger, b"1", LONG).await.unwrap());
    s.release("Cmd:b", stranger).await.unwrap();
    assert_eq!(s.claim("Cmd:b", LONG).await.unwrap(), Claim::InProgress);
    assert!(s.complete("Cmd:b", t, b"2", LONG).await.unwrap());
    assert!(
        !s.complete("Cmd:b", t, b"3", LONG).await.unwrap(),
        "completed once"
    );
    s.release("Cmd:b", t).await.unwrap();
    assert_eq!(
        s.claim("Cmd:b", LONG).await.unwrap(),
        Claim::Completed(b"2".to_vec())
    );
    assert!(!s.complete("Cmd:missing", t, b"4", LONG).await.unwrap());
}

/// A reservation blocks until it times out, then a new attempt takes over; results
/// are kept for their retention only.
pub async fn idempotency_reservations_and_results_expire<F: CommandStoreFactory>(f: &F) {
    let s = f.idempotency().await;
    let short = Duration::from_millis(400);
    let stale = token(s.claim("Cmd:c", short).await.unwrap());
    assert_eq!(s.claim("Cmd:c", short).await.unwrap(), Claim::InProgress);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let fresh = token(s.claim("Cmd:c", LONG).await.unwrap());
    assert!(
        !s.complete("Cmd:c", stale, b"old", LONG).await.unwrap(),
        "the stale attempt lost its claim"
    );
    assert!(s.complete("Cmd:c", fresh, b"new", short).await.unwrap());
    assert_eq!(
        s.claim("Cmd:c", LONG).await.unwrap(),
        Claim::Completed(b"new".to_vec())
    );
    let t = token(s.claim("Cmd:d", LONG).await.unwrap());
    assert!(s.complete("Cmd:d", t, b"kept", LONG).await.unwrap());
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Expired: the result of Cmd:c. Kept: Cmd:d.
    assert_eq!(s.purge_expired().await.unwrap(), 1);
    assert_eq!(s.purge_expired().await.unwrap(), 0);
    assert!(
        matches!(s.claim("Cmd:c", LONG).await.unwrap(), Claim::Reserved(_)),
        "expired results free the key"
    );
    assert_eq!(
        s.claim("Cmd:d", LONG).await.unwrap(),
        Claim::Completed(b"kept".to_vec())
    );
}

/// Of 20 concurrent claims on one key, exactly one reserves it.
pub async fn idempotency_concurrent_claims_have_one_winner<F: CommandStoreFactory>(f: &F) {
    let s = Arc::new(f.idempotency().await);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.claim("Cmd:race", LONG).await.unwrap() })
        })
        .collect();
    let mut reserved = 0;
    for t in tasks {
        match t.await.unwrap() {
            Claim::Reserved(_) => reserved += 1,
            Claim::InProgress => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(reserved, 1);
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn entry(
    n: u128,
    user: Option<&str>,
    command: &str,
    when: &str,
    outcome: AuditOutcome,
) -> AuditRecord {
    AuditRecord {
        id: Uuid::from_u128(n),
        command_id: Uuid::from_u128(1000 + n),
        command: command.into(),
        aggregate_id: n.is_multiple_of(2).then(|| format!("agg-{n}")),
        user_id: user.map(str::to_owned),
        tenant_id: Some("t".into()),
        correlation_id: None,
        outcome,
        started_at: at(when),
        duration_us: n as u64 * 10,
    }
}

/// Entries round-trip and filter by user, type and time range, with paging and order.
pub async fn audit_round_trip_and_queries<F: CommandStoreFactory>(f: &F) {
    let s = f.audit().await;
    let failed = AuditOutcome::Failed {
        kind: "rejected".into(),
        message: "too \"big\"\nreally".into(),
    };
    let entries = vec![
        entry(
            1,
            Some("alice"),
            "Place",
            "2026-01-01T10:00:00.000001Z",
            AuditOutcome::Succeeded,
        ),
        entry(
            2,
            Some("bob"),
            "Place",
            "2026-01-01T11:00:00Z",
            failed.clone(),
        ),
        entry(
            3,
            Some("alice"),
            "Cancel",
            "2026-01-02T10:00:00Z",
            AuditOutcome::Started,
        ),
        entry(
            4,
            None,
            "Cancel",
            "2026-01-03T10:00:00Z",
            AuditOutcome::Succeeded,
        ),
        entry(
            5,
            Some("alice"),
            "Place",
            "2026-01-03T10:00:00Z",
            AuditOutcome::Succeeded,
        ),
    ];
    for e in &entries {
        s.append(e).await.unwrap();
    }
    let all = s.query(&AuditQuery::default()).await.unwrap();
    assert_eq!(all, entries, "round trip, in time order");
    let q = |user: Option<&str>, command: Option<&str>, from: Option<&str>, to: Option<&str>| {
        AuditQuery {
            user_id: user.map(str::to_owned),
            command: command.map(str::to_owned),
            from: from.map(at),
            to: to.map(at),
            ..Default::default()
        }
    };
    let ids = |v: Vec<AuditRecord>| v.iter().map(|r| r.id.as_u128()).collect::<Vec<_>>();
    assert_eq!(
        ids(s.query(&q(Some("alice"), None, None, None)).await.unwrap()),
        [1, 3, 5]
    );
    assert_eq!(
        ids(s.query(&q(None, Some("Cancel"), None, None)).await.unwrap()),
        [3, 4]
    );
    assert_eq!(
        ids(s
            .query(&q(Some("alice"), Some("Place"), None, None))
            .await
            .unwrap()),
        [1, 5]
    );
    assert_eq!(
        ids(s
            .query(&q(
                None,
                None,
                Some("2026-01-01T11:00:00Z"),
                Some("2026-01-03T10:00:00Z")
            ))
            .await
            .unwrap()),
        [2, 3],
        "from inclusive, to exclusive"
    );
    let page = s
        .query(&AuditQuery {
            limit: 2,
            offset: 1,
            newest_first: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(page), [4, 3], "newest first, ties by id");
    assert_eq!(
        ids(s.query(&q(Some("carol"), None, None, None)).await.unwrap()),
        Vec::<u128>::new()
    );
}
