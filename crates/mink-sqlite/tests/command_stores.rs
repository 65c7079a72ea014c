//! The command bus's stores on SQLite: the shared conformance suite of `mink-testing`,
//! then what it does not cover — durability, several handles ("processes") on one
//! file, exact round trips against the memory store, errors, and the stores at work
//! under a `CommandBus`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use chrono::{DateTime, Utc};
use mink_es::command::audit::{
    Audit, AuditOutcome, AuditQuery, AuditRecord, AuditStore, MemoryAuditStore,
};
use mink_es::command::idempotency::{Claim, Idempotency, IdempotencyStore};
use mink_es::command::{AggregateOutcome, Command, CommandBus, CommandContext, CommandError};
use mink_es::{Aggregate, Error, Metadata, Repository, StreamId, StreamReader, Uuid, now_micros};
use mink_sqlite::{SqliteAuditStore, SqliteConfig, SqliteIdempotencyStore, SqliteStore};
use mink_testing::command_stores::CommandStoreFactory;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

/// Opens every store on its own file in its own temporary directory, kept alive as long
/// as the factory (that is, for the whole test).
struct SqliteCommandStores {
    dirs: std::sync::Mutex<Vec<tempfile::TempDir>>,
}

impl SqliteCommandStores {
    fn new() -> Self {
        SqliteCommandStores {
            dirs: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn open(&self) -> SqliteStore {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(dir.path().join("commands.db")).expect("open store");
        self.dirs.lock().expect("lock").push(dir);
        store
    }
}

impl CommandStoreFactory for SqliteCommandStores {
    type Idempotency = SqliteIdempotencyStore;
    type Audit = SqliteAuditStore;

    async fn idempotency(&self) -> SqliteIdempotencyStore {
        self.open().idempotency_store()
    }

    async fn audit(&self) -> SqliteAuditStore {
        self.open().audit_store()
    }
}

mod conformance {
    mink_testing::command_store_tests!(async { Some(super::SqliteCommandStores::new()) });
}

// ---------------------------------------------------------------------------
// Helpers.

const LONG: Duration = Duration::from_secs(600);

fn temp_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("commands.db");
    (dir, path)
}

/// A plain connection to the file, behind the stores' backs.
fn raw(path: &Path) -> Connection {
    let c = Connection::open(path).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c
}

fn token(c: Claim) -> Uuid {
    match c {
        Claim::Reserved(t) => t,
        other => panic!("expected a reservation, got {other:?}"),
    }
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn record(n: u128, user: Option<&str>, command: &str, when: &str) -> AuditRecord {
    AuditRecord {
        id: Uuid::from_u128(n),
        command_id: Uuid::from_u128(1_000 + n),
        command: command.into(),
        aggregate_id: Some(format!("agg-{n}")),
        user_id: user.map(str::to_owned),
        tenant_id: None,
        correlation_id: Some(format!("corr-{n}")),
        outcome: AuditOutcome::Succeeded,
        started_at: at(when),
        duration_us: n as u64,
    }
}

/// The store error inside a boxed trait error.
fn store_error(e: &mink_es::BoxError) -> &Error {
    e.downcast_ref::<Error>()
        .unwrap_or_else(|| panic!("not a mink_es::Error: {e:?}"))
}

// ---------------------------------------------------------------------------
// Durability and several handles on one file.

#[tokio::test]
async fn the_stores_survive_reopening_the_file() {
    let (_dir, path) = temp_db();
    let entry = record(7, Some("alice"), "Place", "2026-02-03T04:05:06.123456Z");
    let pending = {
        let store = SqliteStore::open(&path).unwrap();
        let keys = store.idempotency_store();
        let done = token(keys.claim("Cmd:done", LONG).await.unwrap());
        assert!(keys.complete("Cmd:done", done, b"42", LONG).await.unwrap());
        store.audit_store().append(&entry).await.unwrap();
        // A reservation left behind, as by a crash.
        token(keys.claim("Cmd:pending", LONG).await.unwrap())
    };
    let store = SqliteStore::open(&path).unwrap();
    let keys = store.idempotency_store();
    assert_eq!(
        keys.claim("Cmd:done", LONG).await.unwrap(),
        Claim::Completed(b"42".to_vec())
    );
    assert_eq!(
        keys.claim("Cmd:pending", LONG).await.unwrap(),
        Claim::InProgress,
        "a reservation outlives the process that made it"
    );
    assert!(
        keys.complete("Cmd:pending", pending, b"late", LONG)
            .await
            .unwrap(),
        "its token is still good after a reopen"
    );
    assert_eq!(
        keys.claim("Cmd:pending", LONG).await.unwrap(),
        Claim::Completed(b"late".to_vec())
    );
    assert_eq!(
        store
            .audit_store()
            .query(&AuditQuery::default())
            .await
            .unwrap(),
        vec![entry]
    );
}

#[test]
fn two_handles_race_twenty_claims_on_one_key_and_exactly_one_wins() {
    const ROUNDS: usize = 25;
    let (_dir, path) = temp_db();
    // Two stores opened separately: separate connections, as two processes have.
    let handles = [
        SqliteStore::open(&path).unwrap(),
        SqliteStore::open(&path).unwrap(),
    ];
    // 20 threads, 10 per handle, claim the same key at once; then again on a new key,
    // for a few rounds, so that a race has many chances to show.
    let start = Arc::new(Barrier::new(20));
    let threads: Vec<_> = (0..20)
        .map(|i| {
            let keys = handles[i % 2].idempotency_store();
            let start = start.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                (0..ROUNDS)
                    .map(|round| {
                        start.wait();
                        let key = format!("Cmd:race-{round}");
                        (i % 2, rt.block_on(keys.claim(&key, LONG)).unwrap())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut winners = vec![Vec::new(); ROUNDS];
    for t in threads {
        for (round, claim) in t.join().unwrap().into_iter().enumerate() {
            match claim {
                (handle, Claim::Reserved(token)) => winners[round].push((handle, token)),
                (_, Claim::InProgress) => {}
                (_, other) => panic!("{other:?}"),
            }
        }
    }
    for (round, w) in winners.iter().enumerate() {
        assert_eq!(w.len(), 1, "round {round}: exactly one claim wins: {w:?}");
    }
    // A winner completes through the other handle; both see the result.
    let (winner, token) = winners[0][0];
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let other = handles[1 - winner].idempotency_store();
    assert!(
        rt.block_on(other.complete("Cmd:race-0", token, b"won", LONG))
            .unwrap()
    );
    for h in &handles {
        assert_eq!(
            rt.block_on(h.idempotency_store().claim("Cmd:race-0", LONG))
                .unwrap(),
            Claim::Completed(b"won".to_vec())
        );
    }
}

#[tokio::test]
async fn another_handle_takes_over_an_expired_reservation() {
    let (_dir, path) = temp_db();
    let crashed = SqliteStore::open(&path).unwrap().idempotency_store();
    let survivor = SqliteStore::open(&path).unwrap().idempotency_store();
    let stale = token(
        crashed
            .claim("Cmd:takeover", Duration::from_millis(600))
            .await
            .unwrap(),
    );
    assert_eq!(
        survivor.claim("Cmd:takeover", LONG).await.unwrap(),
        Claim::InProgress
    );
    tokio::time::sleep(Duration::from_millis(900)).await;
    let fresh = token(survivor.claim("Cmd:takeover", LONG).await.unwrap());
    assert_ne!(fresh, stale);
    assert!(
        !crashed
            .complete("Cmd:takeover", stale, b"stale", LONG)
            .await
            .unwrap()
    );
    crashed.release("Cmd:takeover", stale).await.unwrap();
    assert_eq!(
        crashed.claim("Cmd:takeover", LONG).await.unwrap(),
        Claim::InProgress,
        "the stale token released nothing"
    );
    assert!(
        survivor
            .complete("Cmd:takeover", fresh, b"fresh", LONG)
            .await
            .unwrap()
    );
}

// ---------------------------------------------------------------------------
// Idempotency edge cases.

#[tokio::test]
async fn purge_counts_exactly_the_expired_records() {
    let (_dir, path) = temp_db();
    let keys = SqliteStore::open(&path).unwrap().idempotency_store();
    let short = Duration::from_millis(600);
    for k in ["Cmd:r1", "Cmd:r2"] {
        token(keys.claim(k, short).await.unwrap());
    }
    let t = token(keys.claim("Cmd:done-short", LONG).await.unwrap());
    assert!(
        keys.complete("Cmd:done-short", t, b"s", short)
            .await
            .unwrap()
    );
    token(keys.claim("Cmd:kept", LONG).await.unwrap());
    let t = token(keys.claim("Cmd:done-long", LONG).await.unwrap());
    assert!(keys.complete("Cmd:done-long", t, b"l", LONG).await.unwrap());
    assert_eq!(
        keys.purge_expired().await.unwrap(),
        0,
        "nothing expired yet"
    );
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(keys.purge_expired().await.unwrap(), 3);
    assert_eq!(keys.purge_expired().await.unwrap(), 0);
    let rows: i64 = raw(&path)
        .query_row("SELECT COUNT(*) FROM mink_idempotency", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 2);
    assert_eq!(
        keys.claim("Cmd:kept", LONG).await.unwrap(),
        Claim::InProgress
    );
    assert_eq!(
        keys.claim("Cmd:done-long", LONG).await.unwrap(),
        Claim::Completed(b"l".to_vec())
    );
}

#[tokio::test]
async fn extreme_time_to_lives_and_keys_neither_panic_nor_misbehave() {
    let (_dir, path) = temp_db();
    let keys = SqliteStore::open(&path).unwrap().idempotency_store();
    // Longer than any clock can count: saturates, never expires.
    let t = token(keys.claim("Cmd:forever", Duration::MAX).await.unwrap());
    assert_eq!(
        keys.claim("Cmd:forever", Duration::MAX).await.unwrap(),
        Claim::InProgress
    );
    assert!(
        keys.complete("Cmd:forever", t, b"", Duration::MAX)
            .await
            .unwrap()
    );
    assert_eq!(
        keys.claim("Cmd:forever", LONG).await.unwrap(),
        Claim::Completed(Vec::new()),
        "an empty result is a result"
    );
    // A zero time-out: the reservation is expired as soon as it is made.
    let first = token(keys.claim("Cmd:zero", Duration::ZERO).await.unwrap());
    let second = token(keys.claim("Cmd:zero", Duration::ZERO).await.unwrap());
    assert_ne!(first, second);
    // Keys are compared byte for byte, NUL and case included.
    let t = token(keys.claim("Cmd:a\0b", LONG).await.unwrap());
    token(keys.claim("Cmd:a", LONG).await.unwrap());
    token(keys.claim("cmd:a\0b", LONG).await.unwrap());
    assert!(keys.complete("Cmd:a\0b", t, b"nul", LONG).await.unwrap());
    assert_eq!(
        keys.claim("Cmd:a\0b", LONG).await.unwrap(),
        Claim::Completed(b"nul".to_vec())
    );
    assert_eq!(keys.claim("Cmd:a", LONG).await.unwrap(), Claim::InProgress);
    assert_eq!(keys.purge_expired().await.unwrap(), 1, "only Cmd:zero");
}

// ---------------------------------------------------------------------------
// The audit log, against the memory store.

/// Every combination of filters, order and paging returns what the memory store
/// returns, for entries with ties on time and on id.
#[tokio::test]
async fn audit_queries_match_the_memory_store_exactly() {
    let (_dir, path) = temp_db();
    let sqlite = SqliteStore::open(&path).unwrap().audit_store();
    let memory = MemoryAuditStore::new();
    let users = [Some("alice"), Some("bob"), None];
    let commands = ["Place", "Cancel"];
    let times = [
        "2026-01-01T00:00:00Z",
        "2026-01-01T00:00:00.000001Z",
        "2026-01-01T00:00:01Z",
        "1969-12-31T23:59:59.999999Z",
    ];
    let mut n = 0u128;
    let mut entries = Vec::new();
    for (i, time) in times.iter().enumerate() {
        for (j, user) in users.iter().enumerate() {
            n += 1;
            let mut e = record(n, *user, commands[(i + j) % 2], time);
            // In each time, ids out of append order and one id twice (the memory store
            // accepts repeated ids; so does this one, keeping append order).
            e.id = Uuid::from_u128(if n % 3 == 2 { 1 } else { 5 });
            e.outcome = match n % 3 {
                0 => AuditOutcome::Started,
                1 => AuditOutcome::Succeeded,
                _ => AuditOutcome::Failed {
                    kind: "rejected".into(),
                    message: format!("no\n\"{n}\"\0 ü"),
                },
            };
            e.tenant_id = n.is_multiple_of(2).then(|| "t".to_owned());
            entries.push(e);
        }
    }
    for e in &entries {
        sqlite.append(e).await.unwrap();
        memory.append(e).await.unwrap();
    }
    let bounds = [
        None,
        Some(at("2026-01-01T00:00:00Z")),
        // Between two stored microseconds: the bounds round the same way as `>=`/`<`.
        Some(at("2026-01-01T00:00:00.0000005Z")),
        Some(at("2026-01-01T00:00:01Z")),
        Some(at("1969-12-31T23:59:59.9999995Z")),
    ];
    let mut checked = 0;
    for user in [None, Some("alice"), Some("bob"), Some("carol")] {
        for command in [None, Some("Place"), Some("Cancel")] {
            for from in bounds {
                for to in bounds {
                    for newest_first in [false, true] {
                        for (offset, limit) in
                            [(0, 100), (1, 2), (3, usize::MAX), (usize::MAX, 5), (0, 0)]
                        {
                            let q = AuditQuery {
                                user_id: user.map(str::to_owned),
                                command: command.map(str::to_owned),
                                from,
                                to,
                                limit,
                                offset,
                                newest_first,
                            };
                            assert_eq!(
                                sqlite.query(&q).await.unwrap(),
                                memory.query(&q).await.unwrap(),
                                "{q:?}"
                            );
                            checked += 1;
                        }
                    }
                }
            }
        }
    }
    assert_eq!(checked, 4 * 3 * 5 * 5 * 2 * 5);
    assert_eq!(
        sqlite.query(&AuditQuery::default()).await.unwrap().len(),
        entries.len()
    );
}

#[tokio::test]
async fn audit_fields_round_trip_at_microsecond_precision() {
    let (_dir, path) = temp_db();
    let audit = SqliteStore::open(&path).unwrap().audit_store();
    let mut sparse = record(1, None, "Ünïcode 🦀", "2026-05-06T07:08:09.123456789Z");
    sparse.aggregate_id = None;
    sparse.correlation_id = None;
    sparse.duration_us = u64::MAX;
    sparse.outcome = AuditOutcome::Failed {
        kind: String::new(),
        message: String::new(),
    };
    audit.append(&sparse).await.unwrap();
    let back = audit.query(&AuditQuery::default()).await.unwrap();
    let mut expected = sparse.clone();
    expected.started_at = at("2026-05-06T07:08:09.123456Z");
    expected.duration_us = i64::MAX as u64;
    assert_eq!(
        back,
        vec![expected],
        "nanoseconds dropped, duration clamped"
    );
}

// ---------------------------------------------------------------------------
// Errors.

#[tokio::test]
async fn corrupt_rows_are_errors_that_name_the_row_never_panics() {
    let (_dir, path) = temp_db();
    let store = SqliteStore::open(&path).unwrap();
    let keys = store.idempotency_store();
    let audit = store.audit_store();
    let c = raw(&path);
    c.pragma_update(None, "ignore_check_constraints", true)
        .unwrap();
    let far = i64::MAX;
    for (key, state, output, expires_at) in [
        ("Cmd:state", "'paused'", "NULL", far.to_string()),
        ("Cmd:state-type", "42", "NULL", far.to_string()),
        ("Cmd:no-output", "'completed'", "NULL", far.to_string()),
        ("Cmd:expiry", "'reserved'", "NULL", "'tomorrow'".to_owned()),
    ] {
        c.execute(
            &format!(
                "INSERT INTO mink_idempotency (key, state, token, output, expires_at) \
                 VALUES (?1, {state}, x'00', {output}, {expires_at})"
            ),
            [key],
        )
        .unwrap();
        let err = keys.claim(key, LONG).await.unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&format!("{key:?}")), "{msg}");
        assert!(msg.contains("corrupt"), "{msg}");
        assert!(
            matches!(
                store_error(&err),
                Error::Backend {
                    transient: false,
                    ..
                }
            ),
            "{err:?}"
        );
    }
    // The corrupt rows are left as they are; the other keys work.
    token(keys.claim("Cmd:fine", LONG).await.unwrap());

    audit
        .append(&record(1, Some("alice"), "Place", "2026-01-01T00:00:00Z"))
        .await
        .unwrap();
    for (column, value) in [
        ("id", "x'0102'"),
        ("command_id", "'not a blob'"),
        ("command", "x'00'"),
        ("user_id", "x'ff'"),
        ("outcome", "'exploded'"),
        ("error_kind", "'rejected'"),
        ("started_at", "'noon'"),
        ("started_at", &i64::MAX.to_string()),
        ("duration_us", "-1"),
        ("tenant_id", "CAST(x'fffe' AS TEXT)"),
    ] {
        let c = raw(&path);
        c.pragma_update(None, "ignore_check_constraints", true)
            .unwrap();
        c.execute(&format!("UPDATE mink_audit SET {column} = {value}"), [])
            .unwrap();
        let err = audit
            .query(&AuditQuery {
                user_id: (column != "user_id").then(|| "alice".to_owned()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("cannot query the audit log"), "{msg}");
        assert!(msg.contains("audit row 1 is corrupt"), "{column}: {msg}");
        assert!(
            matches!(
                store_error(&err),
                Error::Backend {
                    transient: false,
                    ..
                }
            ),
            "{err:?}"
        );
        // Put the row back.
        c.execute("DELETE FROM mink_audit", []).unwrap();
        drop(c);
        audit
            .append(&record(1, Some("alice"), "Place", "2026-01-01T00:00:00Z"))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_busy_database_is_a_transient_error_that_says_what_failed() {
    let (_dir, path) = temp_db();
    let store = SqliteStore::open_with(
        &path,
        SqliteConfig::default().busy_timeout(Duration::from_millis(50)),
    )
    .unwrap();
    let keys = store.idempotency_store();
    let audit = store.audit_store();
    let entry = record(1, Some("alice"), "Place", "2026-01-01T00:00:00Z");
    // Another process holds the write lock.
    let other = raw(&path);
    other.execute_batch("BEGIN IMMEDIATE").unwrap();

    let err = keys.claim("Cmd:busy", LONG).await.unwrap_err();
    assert!(store_error(&err).is_retryable(), "{err:?}");
    assert!(
        err.to_string()
            .contains("cannot claim idempotency key \"Cmd:busy\""),
        "{err}"
    );
    // The driver's error is still there, under the context.
    let driver = std::error::Error::source(&*err)
        .and_then(std::error::Error::source)
        .and_then(|e| e.downcast_ref::<rusqlite::Error>());
    assert!(driver.is_some(), "{err:?}");

    let err = audit.append(&entry).await.unwrap_err();
    assert!(store_error(&err).is_retryable(), "{err:?}");
    assert!(
        err.to_string()
            .contains(&format!("cannot append audit entry {}", entry.id)),
        "{err}"
    );
    let err = keys.purge_expired().await.unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot purge expired idempotency keys"),
        "{err}"
    );
    // Reads are not blocked by a writer (WAL).
    assert!(
        audit
            .query(&AuditQuery::default())
            .await
            .unwrap()
            .is_empty()
    );

    other.execute_batch("COMMIT").unwrap();
    token(keys.claim("Cmd:busy", LONG).await.unwrap());
    audit.append(&entry).await.unwrap();
}

#[tokio::test]
async fn a_file_from_before_the_command_stores_is_upgraded_in_place() {
    let (_dir, path) = temp_db();
    let stream = StreamId::new("Old-1").unwrap();
    {
        let store = SqliteStore::open(&path).unwrap();
        mink_es::StreamWriter::append(
            &store,
            &stream,
            mink_es::ExpectedVersion::NoStream,
            vec![mink_es::NewEvent::new("Happened", "{}")],
        )
        .await
        .unwrap();
    }
    // Turn the file back into one written before the command stores (schema version
    // 2): without their tables, nor those of the later migrations.
    raw(&path)
        .execute_batch(
            "DROP TABLE mink_idempotency; DROP TABLE mink_audit; DROP TABLE mink_outbox; \
             DROP TABLE mink_read_models; DROP TABLE mink_projection_rebuilds; \
             DROP TABLE mink_projection_status; DROP TABLE mink_projection_requests; \
             DROP TABLE mink_projection_parked; DROP TABLE mink_projection_leases; \
             DELETE FROM mink_migrations WHERE version >= 3;",
        )
        .unwrap();
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.schema_version(), mink_sqlite::LATEST_SCHEMA_VERSION);
    assert_eq!(store.stream_version(&stream).await.unwrap(), 1);
    token(
        store
            .idempotency_store()
            .claim("Cmd:new", LONG)
            .await
            .unwrap(),
    );
    store
        .audit_store()
        .append(&record(1, None, "Place", "2026-01-01T00:00:00Z"))
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------
// End to end: a command bus with both middlewares around an aggregate handler.

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
    request: String,
}

impl Command for Increment {
    const NAME: &'static str = "Increment";
    type Output = AggregateOutcome;
    fn idempotency_key(&self) -> Option<String> {
        Some(self.request.clone())
    }
    fn aggregate_id(&self) -> Option<String> {
        Some(self.id.clone())
    }
}

fn inc(by: u64, request: &str) -> Increment {
    Increment {
        id: "c1".into(),
        by,
        request: request.into(),
    }
}

/// A bus whose audit, idempotency keys and events all live in `store`'s file;
/// `runs` counts the handler's decisions.
fn counter_bus(store: &SqliteStore, runs: Arc<AtomicU32>) -> CommandBus {
    let mut bus = CommandBus::new();
    bus.use_middleware(Audit::new(store.audit_store()).fail_closed());
    bus.use_middleware(Idempotency::new(store.idempotency_store()));
    bus.register_aggregate(
        Repository::<Counter, _>::new(store.clone()),
        |c: &Increment| c.id.clone(),
        move |s: &Counter, c: &Increment| {
            runs.fetch_add(1, Ordering::SeqCst);
            if s.value + c.by > 100 {
                Err(format!("counter would pass 100 ({})", s.value + c.by))
            } else {
                Ok(vec![CounterEvent::Incremented { by: c.by }])
            }
        },
    )
    .unwrap();
    bus
}

fn as_user(user: &str) -> CommandContext {
    CommandContext::new().with_metadata(Metadata::default().with_user_id(user))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_command_bus_runs_duplicates_once_and_audits_every_dispatch() {
    let (_dir, path) = temp_db();
    let store = SqliteStore::open(&path).unwrap();
    // A second "process" on the same file, with its own bus.
    let other = SqliteStore::open(&path).unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let bus = Arc::new(counter_bus(&store, runs.clone()));
    let bus2 = Arc::new(counter_bus(&other, runs.clone()));

    // A duplicate gets the original result without running the handler, on either
    // process.
    let first = bus
        .dispatch_with(inc(5, "req-1"), as_user("alice"))
        .await
        .unwrap();
    assert_eq!(first.version, 1);
    let again = bus
        .dispatch_with(inc(5, "req-1"), as_user("alice"))
        .await
        .unwrap();
    let elsewhere = bus2
        .dispatch_with(inc(5, "req-1"), as_user("alice"))
        .await
        .unwrap();
    assert_eq!(again, first);
    assert_eq!(elsewhere, first);
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the handler ran once");

    // A rejected command releases its key: a retry runs again.
    for _ in 0..2 {
        let err = bus
            .dispatch_with(inc(500, "req-2"), as_user("bob"))
            .await
            .unwrap_err();
        assert!(matches!(err, CommandError::Rejected { .. }), "{err:?}");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 3);

    // Concurrent duplicates across both processes: one run, the rest wait or replay.
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let bus = if i % 2 == 0 {
                bus.clone()
            } else {
                bus2.clone()
            };
            tokio::spawn(async move { bus.dispatch_with(inc(1, "req-3"), as_user("carol")).await })
        })
        .collect();
    let mut results = Vec::new();
    let mut in_progress = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(o) => results.push(o),
            Err(CommandError::InProgress { key, .. }) => {
                assert_eq!(key, "Increment:req-3");
                in_progress += 1;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(runs.load(Ordering::SeqCst), 4, "req-3 ran once");
    assert!(!results.is_empty());
    assert!(results.iter().all(|o| *o == results[0]), "{results:?}");
    assert_eq!(results[0].version, 2);
    assert_eq!(results.len() + in_progress, 10);

    // The events, the keys and the audit log are in the one file.
    let events = store
        .read_stream(&StreamId::new("Counter-c1").unwrap(), 1, 100)
        .await
        .unwrap();
    assert_eq!(events.len(), 2, "one event per distinct request");
    let done: Vec<String> = {
        let c = raw(&path);
        let mut s = c
            .prepare("SELECT key FROM mink_idempotency WHERE state = 'completed' ORDER BY key")
            .unwrap();
        s.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert_eq!(done, ["Increment:req-1", "Increment:req-3"]);

    // Every dispatch is audited (fail-closed: a `Started` entry, then the outcome),
    // and the log is queryable by user, from either process.
    let audit = other.audit_store();
    let by = |user: &str| AuditQuery {
        user_id: Some(user.into()),
        limit: 1000,
        ..Default::default()
    };
    let alice = audit.query(&by("alice")).await.unwrap();
    assert_eq!(alice.len(), 6, "three dispatches, two entries each");
    assert_eq!(
        alice
            .iter()
            .filter(|r| r.outcome == AuditOutcome::Succeeded)
            .count(),
        3
    );
    assert!(alice.iter().all(|r| r.command == "Increment"
        && r.aggregate_id.as_deref() == Some("c1")
        && r.user_id.as_deref() == Some("alice")));
    let bob = audit.query(&by("bob")).await.unwrap();
    let bob_failures: Vec<_> = bob
        .iter()
        .filter_map(|r| match &r.outcome {
            AuditOutcome::Failed { kind, message } => Some((kind.as_str(), message.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(bob_failures.len(), 2);
    for (kind, message) in bob_failures {
        assert_eq!(kind, "rejected");
        assert!(
            message.contains("counter would pass 100 (505)"),
            "{message}"
        );
    }
    let carol = audit.query(&by("carol")).await.unwrap();
    assert_eq!(carol.len(), 20);
    assert_eq!(
        carol
            .iter()
            .filter(
                |r| matches!(&r.outcome, AuditOutcome::Failed { kind, .. } if kind == "in_progress")
            )
            .count(),
        in_progress
    );
    let newest = audit
        .query(&AuditQuery {
            limit: 1,
            newest_first: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(newest.len(), 1);
    assert!(newest[0].started_at <= now_micros());
    assert!(
        alice
            .windows(2)
            .all(|w| (w[0].started_at, w[0].id) <= (w[1].started_at, w[1].id)),
        "oldest first"
    );
}
