//! Conformance tests for projection control stores: every [`ProjectionControl`]
//! (memory, SQLite, PostgreSQL, …) runs them through
//! [`control_tests!`](crate::control_tests). [`MemoryControl`]'s behaviour is the
//! specification.
//!
//! A factory may give a second handle on the same backing store (as another process
//! would open it): every test then writes through one handle and reads through the
//! other, which shows that operations work across processes.
//!
//! ```no_run
//! use mink_es::projection::memory::MemoryControl;
//! use mink_testing::control::{ControlFactory, Controls};
//!
//! struct Memory;
//!
//! impl ControlFactory for Memory {
//!     async fn create(&self) -> Controls {
//!         let control = MemoryControl::new();
//!         Controls::two(control.clone(), control)
//!     }
//! }
//!
//! // In a `tests/` file: one `#[tokio::test]` per conformance test.
//! mink_testing::control_tests!(async { Some(Memory) });
//! # fn main() {}
//! ```
//!
//! [`MemoryControl`]: mink_es::projection::memory::MemoryControl

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use mink_es::projection::{
    Command, ParkedEvent, ProjectionControl, ProjectionStatus, Request, RunState,
};
use mink_es::{
    Bytes, CodecTag, EventId, EventType, Metadata, Position, StoredEvent, StreamId, now_micros,
};

/// The control store handles a test works with.
#[derive(Clone)]
pub struct Controls {
    /// A fresh, empty control store.
    pub control: Arc<dyn ProjectionControl>,
    /// Optionally, a second handle on the same backing store, opened independently
    /// (another connection or pool, as another process would).
    pub other: Option<Arc<dyn ProjectionControl>>,
}

impl Controls {
    /// One handle.
    pub fn one(control: impl ProjectionControl) -> Self {
        Controls {
            control: Arc::new(control),
            other: None,
        }
    }

    /// Two handles on the same backing store.
    pub fn two(control: impl ProjectionControl, other: impl ProjectionControl) -> Self {
        Controls {
            control: Arc::new(control),
            other: Some(Arc::new(other)),
        }
    }

    /// The second handle, or the first when there is none.
    fn reader(&self) -> &dyn ProjectionControl {
        self.other.as_deref().unwrap_or(&*self.control)
    }

    fn writer(&self) -> &dyn ProjectionControl {
        &*self.control
    }
}

/// Makes fresh, empty projection control stores: one per test.
pub trait ControlFactory: Send + Sync + 'static {
    /// A new control store with no status, request, parked event or lease (and,
    /// optionally, a second handle on it).
    fn create(&self) -> impl Future<Output = Controls> + Send;
}

/// Generates one `#[tokio::test]` per projection-control conformance test. The
/// argument is a future of `Option<F: ControlFactory>`, awaited once per test; `None`
/// skips the test.
///
/// ```ignore
/// mod control {
///     mink_testing::control_tests!(async { Some(super::MyControlFactory::new()) });
/// }
/// ```
#[macro_export]
macro_rules! control_tests {
    ($factory:expr) => {
        $crate::control_tests!(@tests $factory;
            control_statuses_are_replaced_by_name,
            control_requests_are_queued_completed_and_answered,
            control_parking_is_idempotent_and_in_feed_order,
            control_leases_are_exclusive_until_released_or_expired,
            control_concurrent_acquires_grant_one_lease,
        );
    };
    (@tests $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(f) = $factory.await {
                    $crate::control::$name(&f).await;
                }
            }
        )*
    };
}

#[track_caller]
fn ok<T>(r: mink_es::Result<T>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn status(name: &str, state: RunState) -> ProjectionStatus {
    ProjectionStatus {
        name: name.to_owned(),
        state,
        checkpoint: None,
        owner: None,
        last_error: None,
        parked: 0,
        rebuild_progress: None,
        updated_at: now_micros(),
    }
}

/// Statuses are kept one per name (the last report wins), listed by name, with every
/// field as reported.
pub async fn control_statuses_are_replaced_by_name<F: ControlFactory>(f: &F) {
    let c = f.create().await;
    assert!(ok(c.reader().statuses().await, "statuses").is_empty());
    let beta = status("beta", RunState::Running);
    let mut alpha = status("alpha", RunState::Starting);
    alpha.checkpoint = Some(Position::new(0, 17));
    let mut gamma = status("gamma#1of4", RunState::Standby);
    gamma.owner = Some("node-2".into());
    for s in [&beta, &alpha, &gamma] {
        ok(c.writer().report(s).await, "report");
    }
    assert_eq!(
        ok(c.reader().statuses().await, "statuses"),
        [alpha.clone(), beta.clone(), gamma.clone()]
    );

    // A second report replaces the first, every field of it.
    let mut beta2 = status("beta", RunState::Rebuilding);
    beta2.checkpoint = Some(Position::new(3, 41));
    beta2.owner = Some("nöde-1 ✓".into());
    beta2.last_error = Some("boom: \"quoted\"\nsecond line".into());
    beta2.parked = 7;
    beta2.rebuild_progress = Some((Position::new(1, 2), Position::new(3, 4)));
    beta2.updated_at = "2024-02-29T12:00:00.123456Z".parse().expect("a timestamp");
    ok(c.writer().report(&beta2).await, "report again");
    let mut alpha2 = alpha.clone();
    alpha2.state = RunState::Faulted;
    alpha2.checkpoint = None;
    ok(
        c.reader().report(&alpha2).await,
        "report through the other handle",
    );
    assert_eq!(
        ok(c.reader().statuses().await, "statuses"),
        [alpha2.clone(), beta2.clone(), gamma.clone()]
    );
    assert_eq!(
        ok(c.writer().statuses().await, "statuses"),
        [alpha2, beta2, gamma]
    );
    for state in [
        RunState::Starting,
        RunState::Running,
        RunState::Paused,
        RunState::Faulted,
        RunState::Rebuilding,
        RunState::Standby,
        RunState::Stopped,
    ] {
        let s = status("delta", state);
        ok(c.writer().report(&s).await, "report");
        let got = ok(c.reader().statuses().await, "statuses");
        assert_eq!(got.len(), 4);
        assert_eq!(got.iter().find(|x| x.name == "delta"), Some(&s), "{state}");
    }
}

/// Request ids increase; `pending` lists a name's unhandled requests oldest first;
/// `outcome` is `None` while pending, then `Some(None)` or `Some(Some(error))`.
pub async fn control_requests_are_queued_completed_and_answered<F: ControlFactory>(f: &F) {
    let c = f.create().await;
    let (w, r) = (c.writer(), c.reader());
    assert!(ok(r.pending("p1").await, "pending").is_empty());
    assert_eq!(ok(r.outcome(12345).await, "outcome of an unknown id"), None);

    let commands = [
        ("p1", Command::Pause),
        ("p2", Command::Rebuild),
        (
            "p1",
            Command::ResetTo {
                position: Position::new(2, 5),
            },
        ),
        ("p1", Command::ReplayParked),
        ("p1", Command::Resume),
        ("p2#0of2", Command::Pause),
    ];
    let mut requests = Vec::new();
    for (name, command) in commands {
        let id = ok(w.request(name, command.clone()).await, "request");
        if let Some(last) = requests.last().map(|r: &Request| r.id) {
            assert!(id > last, "ids increase: {id} after {last}");
        }
        requests.push(Request {
            id,
            name: name.to_owned(),
            command,
        });
    }
    let of = |name: &str, rs: &[Request]| -> Vec<Request> {
        rs.iter().filter(|r| r.name == name).cloned().collect()
    };
    assert_eq!(ok(r.pending("p1").await, "pending"), of("p1", &requests));
    assert_eq!(ok(r.pending("p2").await, "pending"), of("p2", &requests));
    assert_eq!(
        ok(r.pending("p2#0of2").await, "pending"),
        of("p2#0of2", &requests)
    );
    assert!(ok(r.pending("p3").await, "pending").is_empty());
    for q in &requests {
        assert_eq!(ok(r.outcome(q.id).await, "outcome"), None, "pending");
    }

    // Completing: ok, failed; the others stay pending.
    let (pause, reset) = (requests[0].id, requests[2].id);
    ok(w.complete(pause, None).await, "complete");
    ok(
        w.complete(reset, Some("cannot reset: ünïcödé \"quoted\"\nline"))
            .await,
        "complete with an error",
    );
    assert_eq!(ok(r.outcome(pause).await, "outcome"), Some(None));
    assert_eq!(
        ok(r.outcome(reset).await, "outcome"),
        Some(Some("cannot reset: ünïcödé \"quoted\"\nline".to_owned()))
    );
    assert_eq!(ok(r.outcome(requests[3].id).await, "outcome"), None);
    let left: Vec<Request> = of("p1", &requests)
        .into_iter()
        .filter(|q| q.id != pause && q.id != reset)
        .collect();
    assert_eq!(left.len(), 2);
    assert_eq!(ok(r.pending("p1").await, "pending"), left);
    assert_eq!(ok(w.pending("p1").await, "pending"), left);
    assert_eq!(ok(r.pending("p2").await, "pending"), of("p2", &requests));

    // Completing an unknown id changes nothing.
    ok(
        w.complete(999_999, Some("nobody")).await,
        "complete unknown",
    );
    assert_eq!(ok(r.outcome(999_999).await, "outcome"), None);
    assert_eq!(ok(r.pending("p1").await, "pending"), left);

    // Requests through the other handle continue the sequence.
    let last = requests.last().expect("requests").id;
    let id = ok(r.request("p1", Command::Rebuild).await, "request");
    assert!(id > last, "ids increase across handles: {id} after {last}");
    let pending = ok(w.pending("p1").await, "pending");
    assert_eq!(pending.len(), 3);
    assert_eq!(
        pending.last(),
        Some(&Request {
            id,
            name: "p1".into(),
            command: Command::Rebuild
        })
    );
    for q in &left {
        ok(r.complete(q.id, None).await, "complete");
    }
    ok(r.complete(id, None).await, "complete");
    assert!(ok(w.pending("p1").await, "pending").is_empty());
    assert_eq!(ok(w.outcome(id).await, "outcome"), Some(None));
}

fn event(stream: &str, version: u64, position: Position, payload: &[u8]) -> StoredEvent {
    StoredEvent {
        id: EventId::new(),
        stream_id: StreamId::new(stream).expect("a valid stream id"),
        version,
        position,
        event_type: EventType::from("OrderPlaced"),
        schema_version: 2,
        codec: CodecTag::JSON,
        payload: Bytes::copy_from_slice(payload),
        metadata: Metadata::default()
            .with_correlation_id("corr-1")
            .with_custom("tenant", "ünï"),
        recorded_at: "2024-02-29T12:00:00.654321Z"
            .parse::<DateTime<Utc>>()
            .expect("a timestamp"),
    }
}

#[track_caller]
fn assert_parked(
    got: &[ParkedEvent],
    name: &str,
    want: &[(&StoredEvent, &str)],
    window: (DateTime<Utc>, DateTime<Utc>),
) {
    let slack = chrono::Duration::seconds(2);
    assert_eq!(
        got.iter().map(|p| p.event.position).collect::<Vec<_>>(),
        want.iter().map(|(e, _)| e.position).collect::<Vec<_>>(),
        "parked positions of {name}, in feed order"
    );
    for (p, (e, error)) in got.iter().zip(want) {
        assert_eq!(p.projection, name);
        assert_eq!(&p.event, *e, "the parked event, as given");
        assert_eq!(p.error, *error);
        assert!(
            p.parked_at >= window.0 - slack && p.parked_at <= window.1 + slack,
            "parked_at {} outside [{}, {}]",
            p.parked_at,
            window.0,
            window.1
        );
    }
}

/// Parking is keyed by (projection, position): parking again keeps one entry (with
/// the last error); parked events list in feed order; unpark removes only the given
/// positions of the given projection.
pub async fn control_parking_is_idempotent_and_in_feed_order<F: ControlFactory>(f: &F) {
    let c = f.create().await;
    let (w, r) = (c.writer(), c.reader());
    let start = Utc::now();
    assert!(ok(r.parked("p").await, "parked").is_empty());
    let e1 = event("Order-1", 1, Position::new(1, 2), br#"{"n":1}"#);
    let e2 = event("Order-1", 2, Position::new(1, 9), b"\x00\xff binary \xc3");
    let e3 = event("Order-2", 1, Position::new(2, 4), b"");
    let e4 = event("Invoice-7", 3, Position::new(3, 1), "ünïcode ✓".as_bytes());
    for (e, error) in [
        (&e3, "third"),
        (&e1, "first"),
        (&e4, "fourth: \"quoted\"\nline"),
        (&e2, "second"),
    ] {
        ok(w.park("p", e, error).await, "park");
    }
    ok(w.park("q", &e2, "other projection").await, "park");
    let end = Utc::now();
    let all = [
        (&e1, "first"),
        (&e2, "second"),
        (&e3, "third"),
        (&e4, "fourth: \"quoted\"\nline"),
    ];
    assert_parked(&ok(r.parked("p").await, "parked"), "p", &all, (start, end));
    assert_parked(
        &ok(r.parked("q").await, "parked"),
        "q",
        &[(&e2, "other projection")],
        (start, end),
    );
    assert!(ok(r.parked("none").await, "parked").is_empty());

    // Parking the same position again keeps one entry, with the last error.
    ok(w.park("p", &e2, "second again").await, "park again");
    ok(r.park("p", &e2, "second, third time").await, "park again");
    let end = Utc::now();
    let again = [
        (&e1, "first"),
        (&e2, "second, third time"),
        (&e3, "third"),
        (&e4, "fourth: \"quoted\"\nline"),
    ];
    assert_parked(
        &ok(r.parked("p").await, "parked"),
        "p",
        &again,
        (start, end),
    );
    assert_parked(
        &ok(w.parked("p").await, "parked"),
        "p",
        &again,
        (start, end),
    );

    // Unpark: only the given positions (unknown ones ignored), only this projection.
    ok(
        w.unpark("p", &[Position::new(1, 9), Position::new(5, 5)])
            .await,
        "unpark",
    );
    ok(w.unpark("p", &[]).await, "unpark nothing");
    ok(
        w.unpark("none", &[Position::new(1, 2)]).await,
        "unpark unknown",
    );
    let left = [
        (&e1, "first"),
        (&e3, "third"),
        (&e4, "fourth: \"quoted\"\nline"),
    ];
    assert_parked(&ok(r.parked("p").await, "parked"), "p", &left, (start, end));
    assert_parked(
        &ok(r.parked("q").await, "parked"),
        "q",
        &[(&e2, "other projection")],
        (start, end),
    );
    ok(
        r.unpark(
            "p",
            &[
                Position::new(1, 2),
                Position::new(3, 1),
                Position::new(2, 4),
            ],
        )
        .await,
        "unpark the rest",
    );
    assert!(ok(w.parked("p").await, "parked").is_empty());
    assert_eq!(ok(w.parked("q").await, "parked").len(), 1);
    // A position can be parked again after it was unparked.
    ok(w.park("p", &e1, "back").await, "park after unpark");
    assert_parked(
        &ok(r.parked("p").await, "parked"),
        "p",
        &[(&e1, "back")],
        (start, Utc::now()),
    );
}

const LONG: Duration = Duration::from_secs(30);

/// Leases: a free lease is taken; another owner is refused while it is unexpired;
/// the holder renews it; it expires; only the holder releases it; leases are per name.
pub async fn control_leases_are_exclusive_until_released_or_expired<F: ControlFactory>(f: &F) {
    let c = f.create().await;
    let (w, r) = (c.writer(), c.reader());
    assert!(ok(w.acquire("L", "a", LONG).await, "free lease"));
    assert!(!ok(r.acquire("L", "b", LONG).await, "held by a"));
    assert!(ok(w.acquire("L", "a", LONG).await, "renewed by a"));
    assert!(ok(
        r.acquire("L", "a", LONG).await,
        "renewed by a, other handle"
    ));
    assert!(ok(r.acquire("M", "b", LONG).await, "another name is free"));
    assert!(!ok(w.acquire("M", "a", LONG).await, "held by b"));

    // Release by someone else does nothing; by the holder frees the lease.
    ok(r.release("L", "b").await, "release by a non-holder");
    assert!(!ok(r.acquire("L", "b", LONG).await, "still held by a"));
    ok(w.release("L", "a").await, "release by the holder");
    assert!(ok(r.acquire("L", "b", LONG).await, "free again"));
    assert!(!ok(w.acquire("L", "a", LONG).await, "now held by b"));
    ok(
        w.release("nothing", "a").await,
        "release of an unknown lease",
    );
    ok(w.release("L", "a").await, "release by the former holder");
    assert!(!ok(w.acquire("L", "a", LONG).await, "b still holds it"));

    // Expiry: after its ttl, another owner takes the lease.
    assert!(ok(
        w.acquire("E", "a", Duration::from_millis(600)).await,
        "short lease"
    ));
    assert!(!ok(r.acquire("E", "b", LONG).await, "not expired yet"));
    // Renewal extends: without it, N would expire at 600 ms.
    assert!(ok(
        w.acquire("N", "a", Duration::from_millis(600)).await,
        "short lease"
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(ok(w.acquire("N", "a", LONG).await, "renewed for long"));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(ok(r.acquire("E", "b", LONG).await, "expired: taken by b"));
    assert!(!ok(w.acquire("E", "a", LONG).await, "now b's"));
    assert!(!ok(
        r.acquire("N", "b", LONG).await,
        "the renewal still holds"
    ));
    assert!(ok(
        w.acquire("M", "b", LONG).await,
        "b renews M, untouched by the others"
    ));
}

/// Owners racing for one free lease: exactly one wins.
pub async fn control_concurrent_acquires_grant_one_lease<F: ControlFactory>(f: &F) {
    let c = f.create().await;
    for round in 0..5 {
        let name = format!("race-{round}");
        let attempts = (0..8).map(|i| {
            let handle: Arc<dyn ProjectionControl> = if i % 2 == 0 {
                c.control.clone()
            } else {
                c.other.clone().unwrap_or_else(|| c.control.clone())
            };
            let name = name.clone();
            tokio::spawn(async move {
                let owner = format!("owner-{i}");
                let won = handle.acquire(&name, &owner, LONG).await;
                (owner, won)
            })
        });
        let results = futures::future::join_all(attempts).await;
        let winners: Vec<String> = results
            .into_iter()
            .map(|r| r.expect("the task ran"))
            .filter_map(|(owner, won)| ok(won, "acquire").then_some(owner))
            .collect();
        assert_eq!(
            winners.len(),
            1,
            "exactly one owner wins {name}: {winners:?}"
        );
        for i in 0..8 {
            let owner = format!("owner-{i}");
            let renewed = ok(c.reader().acquire(&name, &owner, LONG).await, "acquire");
            assert_eq!(renewed, owner == winners[0], "{owner} on {name}");
        }
    }
}
