use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::audit::{Audit, AuditOutcome, AuditQuery, AuditRecord, AuditStore, MemoryAuditStore};
use super::idempotency::{Claim, Idempotency, IdempotencyStore, MemoryIdempotencyStore};
use super::middleware::{
    Correlation, Logging, Metrics, Recovery, Retry, Timeout, TowerLayer, Tracing, Validation,
    from_fn,
};
use super::*;
use crate::prelude::*;
use crate::{MemoryStore, StreamId};

// A counter aggregate and its commands.

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
enum CounterEvent {
    #[serde(rename = "CounterIncremented")]
    Incremented { by: u64 },
}

#[derive(Default, Debug)]
struct Counter {
    value: u64,
}

impl Aggregate for Counter {
    const TYPE: &'static str = "Counter";
    type Event = CounterEvent;
    fn apply(&mut self, e: &CounterEvent) {
        match e {
            CounterEvent::Incremented { by } => self.value += by,
        }
    }
}

#[derive(Serialize, Clone, Debug)]
struct Increment {
    id: String,
    by: u64,
    request: Option<String>,
}

impl Command for Increment {
    const NAME: &'static str = "Increment";
    type Output = AggregateOutcome;
    fn validate(&self) -> Result<(), ValidationErrors> {
        ValidationErrors::new()
            .require(!self.id.is_empty(), "id", "must not be empty")
            .require(self.by > 0, "by", "must be positive")
            .into_result()
    }
    fn idempotency_key(&self) -> Option<String> {
        self.request.clone()
    }
    fn aggregate_id(&self) -> Option<String> {
        Some(self.id.clone())
    }
}

fn inc(id: &str, by: u64) -> Increment {
    Increment {
        id: id.into(),
        by,
        request: None,
    }
}

#[derive(Debug, thiserror::Error)]
#[error("counter {0} would pass 100")]
struct TooBig(u64);

fn counter_bus(store: &MemoryStore) -> CommandBus {
    let mut bus = CommandBus::new();
    bus.register_aggregate(
        Repository::<Counter, _>::new(store.clone()),
        |c: &Increment| c.id.clone(),
        |s: &Counter, c: &Increment| {
            if s.value + c.by > 100 {
                Err(TooBig(s.value + c.by))
            } else {
                Ok(vec![CounterEvent::Incremented { by: c.by }])
            }
        },
    )
    .unwrap();
    bus
}

async fn stream_events(store: &MemoryStore, id: &str) -> Vec<crate::StoredEvent> {
    store
        .read_stream(
            &StreamId::new(format!("Counter-{id}")).unwrap(),
            1,
            usize::MAX,
        )
        .await
        .unwrap()
}

// A plain command with a closure handler.

#[derive(Serialize, Clone)]
struct Echo(String);

impl Command for Echo {
    const NAME: &'static str = "Echo";
    type Output = String;
}

#[derive(Serialize, Clone)]
struct EchoImpostor(String);

impl Command for EchoImpostor {
    const NAME: &'static str = "Echo";
    type Output = String;
}

#[tokio::test]
async fn typed_dispatch_through_an_aggregate_handler() {
    let store = MemoryStore::new();
    let bus = counter_bus(&store);
    let out = bus.dispatch(inc("a", 5)).await.unwrap();
    assert_eq!(out.aggregate_id, "a");
    assert_eq!(out.version, 1);
    assert_eq!(out.events.len(), 1);
    assert_eq!(out.events[0].event_type, "CounterIncremented");
    let out = bus.dispatch(inc("a", 7)).await.unwrap();
    assert_eq!(out.version, 2);
    let err = bus.dispatch(inc("a", 99)).await.unwrap_err();
    match &err {
        CommandError::Rejected { command, source } => {
            assert_eq!(*command, "Increment");
            assert!(source.downcast_ref::<TooBig>().is_some());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        stream_events(&store, "a").await.len(),
        2,
        "a rejection stores nothing"
    );
}

#[tokio::test]
async fn unknown_commands_and_double_registration_are_refused() {
    let store = MemoryStore::new();
    let audit = MemoryAuditStore::new();
    let mut bus = CommandBus::new();
    bus.use_middleware(Audit::new(audit.clone()));
    let err = bus.dispatch(inc("a", 1)).await.unwrap_err();
    assert!(matches!(
        err,
        CommandError::HandlerNotFound {
            command: "Increment"
        }
    ));
    assert!(audit.all().is_empty(), "an unknown command is not audited");
    assert_eq!(store.event_count(), 0);

    bus.register(|e: Echo, _| async move { Ok(e.0) }).unwrap();
    let again = bus.register(|_: Echo, _| async move { Ok("second".to_owned()) });
    assert!(matches!(
        again,
        Err(CommandError::AlreadyRegistered { command: "Echo" })
    ));
    let impostor = bus.register(|_: EchoImpostor, _| async move { Ok("impostor".to_owned()) });
    assert!(matches!(
        impostor,
        Err(CommandError::AlreadyRegistered { .. })
    ));
    assert!(!bus.is_registered::<EchoImpostor>());
    assert_eq!(bus.dispatch(Echo("first".into())).await.unwrap(), "first");
}

#[tokio::test]
async fn middleware_runs_in_order_around_the_handler() {
    let trail = Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let mut bus = CommandBus::new();
    for name in ["outer", "inner"] {
        let trail = trail.clone();
        bus.use_middleware(from_fn(move |d, next| {
            let trail = trail.clone();
            async move {
                trail.lock().push(format!("{name} in"));
                let r = next.run(d).await;
                trail.lock().push(format!("{name} out"));
                r
            }
        }));
    }
    let t = trail.clone();
    bus.register(move |e: Echo, _| {
        let t = t.clone();
        async move {
            t.lock().push("handler".into());
            Ok(e.0)
        }
    })
    .unwrap();
    bus.dispatch(Echo("x".into())).await.unwrap();
    assert_eq!(
        *trail.lock(),
        ["outer in", "inner in", "handler", "inner out", "outer out"]
    );
}

#[tokio::test]
async fn validation_stops_invalid_commands() {
    let store = MemoryStore::new();
    let mut bus = counter_bus(&store);
    bus.use_middleware(Validation);
    let err = bus.dispatch(inc("", 0)).await.unwrap_err();
    match err {
        CommandError::Invalid { command, errors } => {
            assert_eq!(command, "Increment");
            let fields: Vec<&str> = errors.errors().iter().map(|e| e.field.as_str()).collect();
            assert_eq!(fields, ["id", "by"]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.event_count(), 0);
}

#[tokio::test]
async fn recovery_turns_panics_into_errors_and_the_bus_keeps_serving() {
    #[derive(Serialize, Clone)]
    struct Boom(bool);
    impl Command for Boom {
        const NAME: &'static str = "Boom";
        type Output = u8;
    }
    let mut bus = CommandBus::new();
    bus.use_middleware(Recovery);
    bus.register(|b: Boom, _| async move {
        if b.0 {
            panic!("kaboom {}", 42);
        }
        Ok(1)
    })
    .unwrap();
    let err = bus.dispatch(Boom(true)).await.unwrap_err();
    match err {
        CommandError::Panicked { command, message } => {
            assert_eq!(command, "Boom");
            assert_eq!(message, "kaboom 42");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(bus.dispatch(Boom(false)).await.unwrap(), 1);
}

#[tokio::test]
async fn correlation_ids_reach_every_appended_event() {
    let store = MemoryStore::new();
    let mut bus = counter_bus(&store);
    bus.use_middleware(Correlation::new().tenant_from(|_| Some("acme".into())));
    // A plain handler that saves through a repository without passing metadata.
    #[derive(Serialize, Clone)]
    struct Twice(String);
    impl Command for Twice {
        const NAME: &'static str = "Twice";
        type Output = u64;
    }
    let repo = Repository::<Counter, _>::new(store.clone());
    bus.register(move |c: Twice, _ctx| {
        let repo = Repository::<Counter, _>::new(repo.store().clone());
        async move {
            let mut root = repo.load(&c.0).await?;
            root.record(CounterEvent::Incremented { by: 1 });
            root.record(CounterEvent::Incremented { by: 1 });
            Ok(repo.save(&mut root).await?.version)
        }
    })
    .unwrap();

    let ctx = CommandContext::new().with_metadata(
        Metadata::default()
            .with_correlation_id("corr-42")
            .with_user_id("alice"),
    );
    let command_id = ctx.command_id();
    bus.dispatch_with(inc("m", 1), ctx).await.unwrap();
    let ctx2 = CommandContext::new().with_metadata(Metadata::default().with_user_id("bob"));
    let second_id = ctx2.command_id();
    bus.dispatch_with(Twice("m".into()), ctx2).await.unwrap();

    let events = stream_events(&store, "m").await;
    assert_eq!(events.len(), 3);
    let m = &events[0].metadata;
    assert_eq!(
        m.correlation_id(),
        Some("corr-42"),
        "the caller's correlation id is kept"
    );
    assert_eq!(
        m.causation_id(),
        Some(command_id.to_string().as_str()),
        "caused by the command"
    );
    assert_eq!(m.user_id(), Some("alice"));
    assert_eq!(m.tenant_id(), Some("acme"));
    for e in &events[1..] {
        let m = &e.metadata;
        let corr = m.correlation_id().expect("a correlation id is generated");
        assert_ne!(corr, "corr-42");
        assert_eq!(m.causation_id(), Some(second_id.to_string().as_str()));
        assert_eq!(m.user_id(), Some("bob"));
        assert_eq!(m.tenant_id(), Some("acme"));
    }
    assert_eq!(
        events[1].metadata, events[2].metadata,
        "one command, one correlation"
    );

    // Required tenants.
    let mut strict = counter_bus(&store);
    strict.use_middleware(Correlation::new().require_tenant());
    let err = strict.dispatch(inc("n", 1)).await.unwrap_err();
    assert!(matches!(err, CommandError::Invalid { .. }));
}

#[tokio::test]
async fn timeouts_fail_slow_commands() {
    #[derive(Serialize, Clone)]
    struct Slow;
    impl Command for Slow {
        const NAME: &'static str = "Slow";
        type Output = ();
    }
    let mut bus = CommandBus::new();
    bus.use_middleware(Timeout(Duration::from_millis(30)));
    bus.register(|_: Slow, _| async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok(())
    })
    .unwrap();
    let err = bus.dispatch(Slow).await.unwrap_err();
    assert!(
        matches!(
            err,
            CommandError::TimedOut {
                command: "Slow",
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_resolves_conflicts_by_reloading() {
    let store = MemoryStore::new();
    let attempts = Arc::new(AtomicU32::new(0));
    let mut bus = counter_bus(&store);
    bus.use_middleware(Retry {
        max_attempts: 50,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(20),
        ..Retry::default()
    });
    let a = attempts.clone();
    bus.use_middleware(from_fn(move |d, next| {
        a.fetch_add(1, Ordering::SeqCst);
        next.run(d)
    }));
    let bus = Arc::new(bus);
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let bus = bus.clone();
            tokio::spawn(async move { bus.dispatch(inc("hot", 1)).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let events = stream_events(&store, "hot").await;
    assert_eq!(events.len(), 10, "every command stored once");
    assert_eq!(
        events.iter().map(|e| e.version).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    assert!(attempts.load(Ordering::SeqCst) >= 10);
}

#[tokio::test]
async fn retry_gives_up_after_the_cap() {
    let store = MemoryStore::new();
    let stream = StreamId::new("Counter-x").unwrap();
    let attempts = Arc::new(AtomicU32::new(0));
    let mut bus = CommandBus::new();
    bus.use_middleware(Retry {
        max_attempts: 3,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(2),
        ..Retry::default()
    });
    let (s, a, st) = (store.clone(), attempts.clone(), stream.clone());
    bus.register(move |_: Echo, ctx| {
        let (s, a, st) = (s.clone(), a.clone(), st.clone());
        async move {
            a.fetch_add(1, Ordering::SeqCst);
            assert_eq!(ctx.attempt(), a.load(Ordering::SeqCst));
            // Always stale.
            s.append(
                &st,
                crate::ExpectedVersion::NoStream,
                vec![crate::NewEvent::new("E", "{}")],
            )
            .await?;
            s.append(
                &st,
                crate::ExpectedVersion::NoStream,
                vec![crate::NewEvent::new("E", "{}")],
            )
            .await?;
            Ok("never".to_owned())
        }
    })
    .unwrap();
    let err = bus.dispatch(Echo("x".into())).await.unwrap_err();
    assert_eq!(err.kind(), "conflict");
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    let r = Retry::default();
    assert!(r.backoff_ceiling(1) <= r.backoff_ceiling(2));
    assert_eq!(r.backoff_ceiling(40), r.max_delay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_runs_once_and_replays_the_original_result() {
    let store = MemoryStore::new();
    let runs = Arc::new(AtomicU32::new(0));
    let mut bus = counter_bus(&store);
    bus.use_middleware(Idempotency::new(MemoryIdempotencyStore::new()));
    let r = runs.clone();
    bus.use_middleware(from_fn(move |d, next| {
        let r = r.clone();
        async move {
            r.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            next.run(d).await
        }
    }));
    let bus = Arc::new(bus);
    let cmd = Increment {
        id: "i".into(),
        by: 3,
        request: Some("req-1".into()),
    };
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let bus = bus.clone();
            let cmd = cmd.clone();
            tokio::spawn(async move { bus.dispatch(cmd).await })
        })
        .collect();
    let mut ok = Vec::new();
    let mut in_progress = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(o) => ok.push(o),
            Err(CommandError::InProgress { key, .. }) => {
                assert_eq!(key, "Increment:req-1");
                in_progress += 1;
            }
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "concurrent duplicates run the handler once"
    );
    assert_eq!(ok.len() + in_progress, 20);
    // A later duplicate gets the original result, even though the state moved on.
    bus.dispatch(inc("i", 1)).await.unwrap();
    let replay = bus.dispatch(cmd.clone()).await.unwrap();
    assert_eq!(replay.version, 1);
    assert_eq!(replay, ok[0]);
    assert_eq!(stream_events(&store, "i").await.len(), 2, "stored once");
    // Identical commands without an explicit key are duplicates too (derived key).
    let first = bus.dispatch(inc("j", 2)).await.unwrap();
    let second = bus.dispatch(inc("j", 2)).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(stream_events(&store, "j").await.len(), 1);
}

#[tokio::test]
async fn idempotency_failures_release_and_crashes_wait_for_the_timeout() {
    let store = MemoryStore::new();
    let keys = MemoryIdempotencyStore::new();
    let mut bus = counter_bus(&store);
    bus.use_middleware(
        Idempotency::new(keys.clone()).reservation_timeout(Duration::from_millis(300)),
    );
    // A rejected attempt releases its reservation: the retry runs again.
    for _ in 0..99 {
        bus.dispatch(
            Increment {
                id: "f".into(),
                by: 1,
                request: None,
            }
            .clone(),
        )
        .await
        .ok();
    }
    let over = Increment {
        id: "g".into(),
        by: 101,
        request: Some("r".into()),
    };
    assert!(matches!(
        bus.dispatch(over.clone()).await,
        Err(CommandError::Rejected { .. })
    ));
    assert!(
        matches!(bus.dispatch(over).await, Err(CommandError::Rejected { .. })),
        "ran again, not InProgress"
    );

    // A crashed attempt: its reservation is left behind.
    let crashed = Increment {
        id: "k".into(),
        by: 1,
        request: Some("crash".into()),
    };
    let claim = keys
        .claim("Increment:crash", Duration::from_millis(300))
        .await
        .unwrap();
    assert!(matches!(claim, Claim::Reserved(_)));
    let err = bus.dispatch(crashed.clone()).await.unwrap_err();
    assert!(
        matches!(err, CommandError::InProgress { .. }),
        "not before the timeout"
    );
    assert!(stream_events(&store, "k").await.is_empty());
    tokio::time::sleep(Duration::from_millis(350)).await;
    let out = bus.dispatch(crashed.clone()).await.unwrap();
    assert_eq!(out.version, 1, "after the timeout a retry takes over");
    // The crashed attempt cannot overwrite the new result.
    if let Claim::Reserved(stale) = claim {
        assert!(
            !keys
                .complete("Increment:crash", stale, b"0", Duration::from_secs(60))
                .await
                .unwrap()
        );
    }
    assert_eq!(bus.dispatch(crashed).await.unwrap(), out);
}

struct DownStore;

impl IdempotencyStore for DownStore {
    fn claim<'a>(
        &'a self,
        _: &'a str,
        _: Duration,
    ) -> futures::future::BoxFuture<'a, Result<Claim, BoxError>> {
        Box::pin(async { Err("connection refused".into()) })
    }
    fn complete<'a>(
        &'a self,
        _: &'a str,
        _: Uuid,
        _: &'a [u8],
        _: Duration,
    ) -> futures::future::BoxFuture<'a, Result<bool, BoxError>> {
        Box::pin(async { Err("connection refused".into()) })
    }
    fn release<'a>(
        &'a self,
        _: &'a str,
        _: Uuid,
    ) -> futures::future::BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async { Err("connection refused".into()) })
    }
    fn purge_expired(&self) -> futures::future::BoxFuture<'_, Result<u64, BoxError>> {
        Box::pin(async { Err("connection refused".into()) })
    }
}

impl AuditStore for DownStore {
    fn append<'a>(
        &'a self,
        _: &'a AuditRecord,
    ) -> futures::future::BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async { Err("disk full".into()) })
    }
    fn query<'a>(
        &'a self,
        _: &'a AuditQuery,
    ) -> futures::future::BoxFuture<'a, Result<Vec<AuditRecord>, BoxError>> {
        Box::pin(async { Err("disk full".into()) })
    }
}

#[tokio::test]
async fn stores_that_are_down() {
    let store = MemoryStore::new();
    let mut closed = counter_bus(&store);
    closed.use_middleware(Idempotency::new(DownStore));
    let err = closed.dispatch(inc("d", 1)).await.unwrap_err();
    assert!(
        matches!(err, CommandError::IdempotencyUnavailable { .. }),
        "{err:?}"
    );
    let mut closed = counter_bus(&store);
    closed.use_middleware(Audit::new(DownStore).fail_closed());
    let err = closed.dispatch(inc("d", 1)).await.unwrap_err();
    assert!(
        matches!(err, CommandError::AuditUnavailable { .. }),
        "{err:?}"
    );
    assert_eq!(store.event_count(), 0, "nothing ran");

    let mut open = counter_bus(&store);
    open.use_middleware(Idempotency::new(DownStore).fail_open());
    open.use_middleware(Audit::new(DownStore));
    open.dispatch(inc("d", 1)).await.unwrap();
    assert_eq!(store.event_count(), 1);
}

#[tokio::test]
async fn audit_records_who_what_when_and_how_it_ended() {
    let store = MemoryStore::new();
    let audit = MemoryAuditStore::new();
    let mut bus = counter_bus(&store);
    bus.use_middleware(Audit::new(audit.clone()).fail_closed());
    bus.use_middleware(Validation);
    let alice = || CommandContext::new().with_metadata(Metadata::default().with_user_id("alice"));
    let before = crate::now_micros();
    bus.dispatch_with(inc("q", 5), alice()).await.unwrap();
    bus.dispatch_with(inc("q", 500), alice()).await.unwrap_err();
    bus.dispatch_with(
        inc("q", 0),
        CommandContext::new().with_metadata(Metadata::default().with_user_id("bob")),
    )
    .await
    .unwrap_err();
    bus.register(|e: Echo, _| async move { Ok(e.0) }).unwrap();
    bus.dispatch_with(Echo("hi".into()), alice()).await.unwrap();

    let all = audit.all();
    assert_eq!(all.len(), 8, "a started and a final entry per command");
    let finals: Vec<&AuditRecord> = all
        .iter()
        .filter(|r| r.outcome != AuditOutcome::Started)
        .collect();
    assert_eq!(finals[0].outcome, AuditOutcome::Succeeded);
    assert_eq!(finals[0].aggregate_id.as_deref(), Some("q"));
    assert_eq!(finals[0].user_id.as_deref(), Some("alice"));
    assert!(matches!(&finals[1].outcome, AuditOutcome::Failed { kind, .. } if kind == "rejected"));
    assert!(matches!(&finals[2].outcome, AuditOutcome::Failed { kind, .. } if kind == "invalid"));
    for r in &all {
        assert!(r.started_at >= before);
    }
    let by_alice = audit
        .query(&AuditQuery {
            user_id: Some("alice".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_alice.len(), 6);
    let echo = audit
        .query(&AuditQuery {
            command: Some("Echo".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(echo.len(), 2);
    let none = audit
        .query(&AuditQuery {
            to: Some(before),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty());
    let paged = audit
        .query(&AuditQuery {
            limit: 3,
            offset: 6,
            newest_first: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(paged.len(), 2);
}

#[test]
fn metrics_are_recorded_under_their_documented_names() {
    use metrics_util::debugging::DebuggingRecorder;
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = MemoryStore::new();
            let mut bus = counter_bus(&store);
            bus.use_middleware(Metrics);
            bus.dispatch(inc("z", 1)).await.unwrap();
            bus.dispatch(inc("z", 1000)).await.unwrap_err();
        });
    });
    let names: Vec<String> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, _)| {
            let k = key.key();
            let mut labels: Vec<String> = k
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            format!("{}{{{}}}", k.name(), labels.join(","))
        })
        .collect();
    for expected in [
        "mink_commands_total{command=Increment,outcome=ok}",
        "mink_commands_total{command=Increment,outcome=rejected}",
        "mink_command_errors_total{command=Increment,kind=rejected}",
        "mink_command_duration_seconds{command=Increment}",
        "mink_commands_in_flight{command=Increment}",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "missing {expected} in {names:?}"
        );
    }
}

#[tokio::test]
async fn tracing_spans_and_trace_context_in_event_metadata() {
    use tracing_subscriber::layer::SubscriberExt;
    #[derive(Clone, Default)]
    struct Spans(Arc<parking_lot::Mutex<Vec<String>>>);
    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Spans {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            _: &tracing::span::Id,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            struct V<'a>(&'a mut Vec<String>);
            impl tracing::field::Visit for V<'_> {
                fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                    self.0.push(format!("{}={:?}", f.name(), v));
                }
                fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
                    self.0.push(format!("{}={}", f.name(), v));
                }
            }
            let mut fields = vec![format!("span={}", attrs.metadata().name())];
            attrs.record(&mut V(&mut fields));
            self.0.lock().extend(fields);
        }
        fn on_record(
            &self,
            _: &tracing::span::Id,
            values: &tracing::span::Record<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            struct V<'a>(&'a mut Vec<String>);
            impl tracing::field::Visit for V<'_> {
                fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                    self.0.push(format!("{}={:?}", f.name(), v));
                }
                fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
                    self.0.push(format!("{}={}", f.name(), v));
                }
            }
            values.record(&mut V(&mut self.0.lock()));
        }
    }
    let spans = Spans::default();
    let subscriber = tracing_subscriber::registry().with(spans.clone());
    let _guard = tracing::subscriber::set_default(subscriber);

    let store = MemoryStore::new();
    let mut bus = counter_bus(&store);
    bus.use_middleware(Tracing::new().propagate_with(|| {
        Some((
            "traceparent".into(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        ))
    }));
    bus.use_middleware(Logging);
    bus.use_middleware(Correlation::new());
    bus.dispatch(inc("t", 1)).await.unwrap();
    bus.dispatch(inc("t", 1000)).await.unwrap_err();
    let fields = spans.0.lock().clone();
    for expected in [
        "span=command",
        "otel.name=command Increment",
        "otel.kind=internal",
        "mink.command.type=Increment",
        "otel.status_code=OK",
        "otel.status_code=ERROR",
        "error.type=rejected",
    ] {
        assert!(
            fields.iter().any(|f| f == expected),
            "missing {expected} in {fields:?}"
        );
    }
    // Correlation runs inside the span and fills its correlation id.
    let corr = stream_events(&store, "t").await[0]
        .metadata
        .correlation_id()
        .unwrap()
        .to_owned();
    let expected = format!("mink.correlation_id={corr}");
    assert!(
        fields.contains(&expected),
        "missing {expected} in {fields:?}"
    );
    let events = stream_events(&store, "t").await;
    assert_eq!(
        events[0].metadata.custom_value("traceparent"),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
}

#[tokio::test]
async fn tower_layers_plug_in() {
    let store = MemoryStore::new();
    let mut bus = counter_bus(&store);
    bus.use_middleware(TowerLayer::new(tower::util::MapRequestLayer::new(
        |mut d: Dispatch| {
            d.context_mut().metadata_mut().insert_custom("via", "tower");
            d
        },
    )));
    bus.use_middleware(TowerLayer::new(tower::limit::ConcurrencyLimitLayer::new(1)));
    bus.dispatch(inc("w", 1)).await.unwrap();
    let events = stream_events(&store, "w").await;
    assert_eq!(events[0].metadata.custom_value("via"), Some("tower"));
}

/// A store whose next append commits but then reports a transient error, as when the
/// reply of a committed write is lost.
#[derive(Clone)]
struct LossyStore {
    inner: MemoryStore,
    lose_next: Arc<std::sync::atomic::AtomicBool>,
}

impl crate::StreamWriter for LossyStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: crate::ExpectedVersion,
        events: Vec<crate::NewEvent>,
    ) -> crate::Result<crate::AppendResult> {
        let r = self.inner.append(stream, expected, events).await?;
        if self.lose_next.swap(false, Ordering::SeqCst) {
            return Err(crate::Error::backend(true, "connection reset (simulated)"));
        }
        Ok(r)
    }
}

impl crate::StreamReader for LossyStore {
    async fn read_stream(
        &self,
        s: &StreamId,
        from: u64,
        limit: usize,
    ) -> crate::Result<Vec<crate::StoredEvent>> {
        self.inner.read_stream(s, from, limit).await
    }
    async fn stream_version(&self, s: &StreamId) -> crate::Result<u64> {
        self.inner.stream_version(s).await
    }
    async fn stream_info(&self, s: &StreamId) -> crate::Result<Option<crate::StreamInfo>> {
        self.inner.stream_info(s).await
    }
}

impl crate::FeedReader for LossyStore {
    async fn read_feed(
        &self,
        after: crate::Position,
        limit: usize,
        f: &crate::FeedFilter,
    ) -> crate::Result<crate::FeedPage> {
        self.inner.read_feed(after, limit, f).await
    }
    async fn head_position(&self) -> crate::Result<crate::Position> {
        self.inner.head_position().await
    }
    fn feed_signal(&self) -> crate::FeedSignal {
        self.inner.feed_signal()
    }
}

#[tokio::test]
async fn a_lost_reply_is_not_applied_twice() {
    let inner = MemoryStore::new();
    let store = LossyStore {
        inner: inner.clone(),
        lose_next: Arc::new(std::sync::atomic::AtomicBool::new(false)),
    };
    let mut bus = CommandBus::new();
    // Even with transient retries turned on, the command is applied once.
    bus.use_middleware(Retry::default().transient_errors());
    bus.register_aggregate(
        Repository::<Counter, _>::new(store.clone()),
        |c: &Increment| c.id.clone(),
        |_: &Counter, c: &Increment| Ok::<_, TooBig>(vec![CounterEvent::Incremented { by: c.by }]),
    )
    .unwrap();
    store.lose_next.store(true, Ordering::SeqCst);
    let out = bus.dispatch(inc("l", 10)).await.unwrap();
    assert_eq!(
        out.version, 1,
        "the re-sent save was recognised as the committed one"
    );
    let events = stream_events(&inner, "l").await;
    assert_eq!(events.len(), 1, "applied once");
}

#[tokio::test]
async fn retry_leaves_transient_errors_alone_by_default() {
    let attempts = Arc::new(AtomicU32::new(0));
    let mut bus = CommandBus::new();
    bus.use_middleware(Retry {
        base_delay: Duration::from_millis(1),
        ..Retry::default()
    });
    let a = attempts.clone();
    bus.register(move |_: Echo, _| {
        let a = a.clone();
        async move {
            a.fetch_add(1, Ordering::SeqCst);
            Err::<String, _>(CommandError::Store(crate::Error::backend(true, "busy")))
        }
    })
    .unwrap();
    assert_eq!(
        bus.dispatch(Echo("x".into())).await.unwrap_err().kind(),
        "store"
    );
    assert_eq!(attempts.load(Ordering::SeqCst), 1, "not retried");
    let policy = Retry::default().transient_errors();
    assert!(policy.retries(&crate::Error::backend(true, "busy")));
    assert!(!policy.retries(&crate::Error::backend(false, "broken")));
    assert!(!Retry::default().retries(&crate::Error::backend(true, "busy")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_entries_of_one_command_sort_started_first() {
    let store = MemoryStore::new();
    let audit = MemoryAuditStore::new();
    let mut bus = counter_bus(&store);
    bus.use_middleware(Audit::new(audit.clone()).fail_closed());
    let bus = Arc::new(bus);
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let bus = bus.clone();
            tokio::spawn(async move { bus.dispatch(inc(&format!("s{i}"), 1)).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let entries = audit
        .query(&AuditQuery {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(entries.len(), 80);
    for cmd in entries
        .iter()
        .map(|e| e.command_id)
        .collect::<std::collections::HashSet<_>>()
    {
        let mine: Vec<&AuditRecord> = entries.iter().filter(|e| e.command_id == cmd).collect();
        assert_eq!(mine.len(), 2);
        assert_eq!(mine[0].outcome, AuditOutcome::Started, "{mine:?}");
        assert_eq!(mine[1].outcome, AuditOutcome::Succeeded);
    }
}

#[tokio::test]
async fn logging_reports_each_dispatch_with_its_outcome() {
    use tracing_subscriber::layer::SubscriberExt;
    #[derive(Clone, Default)]
    struct Events(Arc<parking_lot::Mutex<Vec<(tracing::Level, String)>>>);
    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Events {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            struct V(String);
            impl tracing::field::Visit for V {
                fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                    self.0.push_str(&format!("{}={:?} ", f.name(), v));
                }
                fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
                    self.0.push_str(&format!("{}={} ", f.name(), v));
                }
            }
            let mut v = V(String::new());
            event.record(&mut v);
            self.0.lock().push((*event.metadata().level(), v.0));
        }
    }
    let events = Events::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(events.clone()));
    let store = MemoryStore::new();
    let mut bus = counter_bus(&store);
    bus.use_middleware(Logging);
    bus.dispatch(inc("log", 1)).await.unwrap();
    bus.dispatch(inc("log", 1000)).await.unwrap_err();
    let logged = events.0.lock().clone();
    let ok = logged
        .iter()
        .find(|(_, m)| m.contains("command succeeded"))
        .expect("a success is logged");
    assert_eq!(ok.0, tracing::Level::INFO);
    assert!(
        ok.1.contains("command=Increment") && ok.1.contains("elapsed_ms="),
        "{}",
        ok.1
    );
    let failed = logged
        .iter()
        .find(|(_, m)| m.contains("command failed"))
        .expect("a failure is logged");
    assert_eq!(
        failed.0,
        tracing::Level::WARN,
        "a domain rejection is a warning"
    );
    assert!(failed.1.contains("kind=rejected"), "{}", failed.1);
}
