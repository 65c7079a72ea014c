//! The command bus's stores on PostgreSQL (`MINK_POSTGRES_URL`): the shared conformance
//! suite of `mink-testing`, then what it does not cover — races between connections
//! and processes, the database's clock deciding expiry, exact round trips against the
//! memory store, corrupt rows, a database that is down or dropped, and the stores at
//! work under a `CommandBus`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use mink_es::command::audit::{
    Audit, AuditOutcome, AuditQuery, AuditRecord, AuditStore, MemoryAuditStore,
};
use mink_es::command::idempotency::{Claim, Idempotency, IdempotencyStore};
use mink_es::command::{AggregateOutcome, Command, CommandBus, CommandContext, CommandError};
use mink_es::{Aggregate, BoxError, Error, Metadata, Repository, StreamId, StreamReader, Uuid};
use mink_postgres::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use mink_postgres::sqlx::{self, AssertSqlSafe, PgPool};
use mink_postgres::{PgAuditStore, PgEventStore, PgIdempotencyStore, PgStoreError};
use mink_testing::command_stores::CommandStoreFactory;
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------
// The conformance suite: every store in a fresh schema, dropped with the factory.

struct PgCommandStores {
    pool: PgPool,
    schemas: common::Schemas,
}

impl PgCommandStores {
    async fn store(&self) -> PgEventStore {
        let schema = common::random_schema();
        self.schemas.add(schema.clone());
        let store = PgEventStore::builder_from_pool(self.pool.clone())
            .schema(schema.as_str())
            .build()
            .await
            .unwrap();
        store.migrate().await.unwrap();
        store
    }
}

impl CommandStoreFactory for PgCommandStores {
    type Idempotency = PgIdempotencyStore;
    type Audit = PgAuditStore;

    async fn idempotency(&self) -> PgIdempotencyStore {
        self.store().await.idempotency_store()
    }

    async fn audit(&self) -> PgAuditStore {
        self.store().await.audit_store()
    }
}

async fn factory() -> Option<PgCommandStores> {
    let url = common::url()?;
    // Enough connections for the suite's concurrent claims to race on several at once,
    // few enough to share the server with the other tests.
    let pool = PgPoolOptions::new()
        .max_connections(12)
        .connect(&url)
        .await
        .unwrap();
    Some(PgCommandStores {
        pool,
        schemas: common::Schemas::new(&url),
    })
}

mod conformance {
    mink_testing::command_store_tests!(async { super::factory().await });
}

// ---------------------------------------------------------------------------
// Helpers.

const LONG: Duration = Duration::from_secs(600);

/// A migrated store in a fresh schema (dropped with `schemas`), with a small pool.
async fn fresh(url: &str, schemas: &common::Schemas) -> PgEventStore {
    common::store_with(url, schemas, |b| b.max_connections(8)).await
}

/// Runs `sql` with `{s}` standing for the store's quoted schema.
async fn exec(store: &PgEventStore, sql: &str) {
    sqlx::raw_sql(AssertSqlSafe(sql.replace("{s}", &store.schema().quoted())))
        .execute(store.pool())
        .await
        .unwrap();
}

/// One value of a query with `{s}` standing for the store's quoted schema.
async fn scalar<T>(store: &PgEventStore, sql: &str) -> T
where
    T: Send + Unpin + for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    sqlx::query_scalar(AssertSqlSafe(sql.replace("{s}", &store.schema().quoted())))
        .fetch_one(store.pool())
        .await
        .unwrap()
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

/// Midnight UTC of a day of the proleptic Gregorian calendar (year 0 is 1 BC).
fn midnight(year: i32, month: u32, day: u32) -> DateTime<Utc> {
    chrono::NaiveDate::from_ymd_opt(year, month, day)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
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
fn store_error(e: &BoxError) -> &Error {
    e.downcast_ref::<Error>()
        .unwrap_or_else(|| panic!("not a mink_es::Error: {e:?}"))
}

/// Asserts that `e` is a non-transient `SchemaNotMigrated` saying `what` failed.
fn assert_not_migrated(e: &BoxError, what: &str) {
    let err = store_error(e);
    assert!(
        matches!(
            PgStoreError::find(err),
            Some(PgStoreError::SchemaNotMigrated { .. })
        ),
        "{err:?}"
    );
    assert!(!err.is_retryable(), "{err:?}");
    assert!(e.to_string().contains(what), "{e}");
}

// ---------------------------------------------------------------------------
// Races.

/// Twenty claims on one key, each on its own connection, from two pools ("processes"),
/// released at once by a table lock they all queue behind: exactly one reserves the
/// key, every round — on fresh keys and on expired records being taken over.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_claims_on_separate_connections_have_exactly_one_winner() {
    const ROUNDS: usize = 12;
    let Some(url) = common::url() else { return };
    let schemas = common::Schemas::new(&url);
    let first = common::store_with(&url, &schemas, |b| {
        b.max_connections(11).min_connections(10)
    })
    .await;
    let second = common::other_process(&url, first.schema(), |b| {
        b.max_connections(11).min_connections(10)
    })
    .await;
    let handles = [first.idempotency_store(), second.idempotency_store()];
    let waiting = format!(
        "SELECT count(DISTINCT pid) FROM pg_locks \
         WHERE relation = '{}.idempotency_keys'::regclass AND NOT granted",
        first.schema().quoted()
    );
    for round in 0..ROUNDS {
        let key = format!("Cmd:race-{round}");
        let expired = round % 2 == 1;
        if expired {
            // A record that has just expired: the racers must take it over, once.
            let t = token(handles[0].claim(&key, LONG).await.unwrap());
            assert!(
                handles[0]
                    .complete(&key, t, b"old", Duration::ZERO)
                    .await
                    .unwrap()
            );
        }
        // The gate: a lock every claim's INSERT waits for.
        let mut gate = first.begin().await.unwrap();
        sqlx::raw_sql(AssertSqlSafe(format!(
            "LOCK TABLE {}.idempotency_keys IN EXCLUSIVE MODE",
            first.schema().quoted()
        )))
        .execute(&mut *gate)
        .await
        .unwrap();
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let keys = handles[i % 2].clone();
                let key = key.clone();
                tokio::spawn(async move { (i % 2, keys.claim(&key, LONG).await.unwrap()) })
            })
            .collect();
        // All twenty wait, each on its own connection.
        let mut queued = 0i64;
        for _ in 0..500 {
            queued = sqlx::query_scalar(AssertSqlSafe(waiting.as_str()))
                .fetch_one(&mut *gate)
                .await
                .unwrap();
            if queued == 20 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            queued, 20,
            "round {round}: twenty connections wait at the gate"
        );
        gate.commit().await.unwrap();
        let mut winners = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                (handle, Claim::Reserved(token)) => winners.push((handle, token)),
                (_, Claim::InProgress) => {}
                (_, other) => panic!("round {round}: {other:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        // The winner completes through the other process; both see the result.
        let (winner, t) = winners[0];
        assert!(
            handles[1 - winner]
                .complete(&key, t, b"won", LONG)
                .await
                .unwrap()
        );
        for h in &handles {
            assert_eq!(
                h.claim(&key, LONG).await.unwrap(),
                Claim::Completed(b"won".to_vec())
            );
        }
    }
    // Ungated: racing tasks on many keys at once, two claims per key.
    let keys = Arc::new(handles);
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let keys = keys.clone();
            tokio::spawn(async move {
                let key = format!("Cmd:pair-{}", i / 2);
                keys[i % 2].claim(&key, LONG).await.unwrap()
            })
        })
        .collect();
    let mut reserved = 0;
    for t in tasks {
        if matches!(t.await.unwrap(), Claim::Reserved(_)) {
            reserved += 1;
        }
    }
    assert_eq!(reserved, 20, "one reservation per key");
}

// ---------------------------------------------------------------------------
// The database's clock.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_database_clock_decides_expiry() {
    let Some(url) = common::url() else { return };
    let schemas = common::Schemas::new(&url);
    let store = fresh(&url, &schemas).await;
    let keys = store.idempotency_store();
    let server_now = || scalar::<DateTime<Utc>>(&store, "SELECT clock_timestamp()");
    let expires = |key: &'static str| {
        let store = store.clone();
        async move {
            sqlx::query_scalar::<_, DateTime<Utc>>(AssertSqlSafe(format!(
                "SELECT expires_at FROM {}.idempotency_keys WHERE key = $1",
                store.schema().quoted()
            )))
            .bind(key)
            .fetch_one(store.pool())
            .await
            .unwrap()
        }
    };
    let hour = chrono::TimeDelta::hours(1);

    // A reservation's deadline is the server's clock at the claim, plus the time-out,
    // to the microsecond.
    let before = server_now().await;
    let t = token(
        keys.claim("Cmd:clock", Duration::from_secs(3600))
            .await
            .unwrap(),
    );
    let after = server_now().await;
    let deadline = expires("Cmd:clock").await;
    assert!(
        before + hour <= deadline && deadline <= after + hour,
        "{before} + 1h <= {deadline} <= {after} + 1h"
    );
    // A result's retention counts from the server's clock at completion.
    let before = server_now().await;
    assert!(
        keys.complete("Cmd:clock", t, b"1", Duration::from_micros(90_000_001))
            .await
            .unwrap()
    );
    let after = server_now().await;
    let deadline = expires("Cmd:clock").await;
    let retention = chrono::TimeDelta::microseconds(90_000_001);
    assert!(before + retention <= deadline && deadline <= after + retention);
    // Forever is 'infinity': never expired, never purged.
    let t = token(keys.claim("Cmd:forever", Duration::MAX).await.unwrap());
    assert!(
        keys.complete("Cmd:forever", t, b"f", Duration::MAX)
            .await
            .unwrap()
    );
    assert!(
        scalar::<bool>(
            &store,
            "SELECT expires_at = 'infinity' FROM {s}.idempotency_keys WHERE key = 'Cmd:forever'"
        )
        .await
    );

    // Whatever wrote a record, its expiry is compared with the server's clock: one
    // second in the server's future holds, one microsecond in its past is free.
    exec(
        &store,
        "UPDATE {s}.idempotency_keys SET expires_at = clock_timestamp() + interval '1 second' \
         WHERE key = 'Cmd:clock'",
    )
    .await;
    assert_eq!(
        keys.claim("Cmd:clock", LONG).await.unwrap(),
        Claim::Completed(b"1".to_vec())
    );
    exec(
        &store,
        "UPDATE {s}.idempotency_keys SET expires_at = clock_timestamp() - interval '1 microsecond' \
         WHERE key = 'Cmd:clock'",
    )
    .await;
    token(keys.claim("Cmd:clock", LONG).await.unwrap());

    // A claim that waits for the key's row while the reservation runs out takes it
    // over once it gets the row: expiry is judged after the wait, not before.
    token(
        keys.claim("Cmd:wait", Duration::from_millis(300))
            .await
            .unwrap(),
    );
    let mut holder = store.begin().await.unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "SELECT 1 FROM {}.idempotency_keys WHERE key = 'Cmd:wait' FOR UPDATE",
        store.schema().quoted()
    )))
    .execute(&mut *holder)
    .await
    .unwrap();
    let waiting = {
        let keys = keys.clone();
        tokio::spawn(async move { keys.claim("Cmd:wait", LONG).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!waiting.is_finished(), "the claim waits for the row");
    holder.commit().await.unwrap();
    token(waiting.await.unwrap());
}

// ---------------------------------------------------------------------------
// Idempotency edge cases.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purge_counts_exactly_the_expired_records() {
    let Some(url) = common::url() else { return };
    let schemas = common::Schemas::new(&url);
    let store = fresh(&url, &schemas).await;
    let keys = store.idempotency_store();
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
    let t = token(keys.claim("Cmd:forever", Duration::MAX).await.unwrap());
    assert!(
        keys.complete("Cmd:forever", t, b"f", Duration::MAX)
            .await
            .unwrap()
    );
    assert_eq!(
        keys.purge_expired().await.unwrap(),
        0,
        "nothing expired yet"
    );
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(keys.purge_expired().await.unwrap(), 3);
    assert_eq!(keys.purge_expired().await.unwrap(), 0);
    assert_eq!(
        scalar::<i64>(&store, "SELECT count(*) FROM {s}.idempotency_keys").await,
        3
    );
    assert_eq!(
        keys.claim("Cmd:kept", LONG).await.unwrap(),
        Claim::InProgress
    );
    assert_eq!(
        keys.claim("Cmd:done-long", LONG).await.unwrap(),
        Claim::Completed(b"l".to_vec())
    );
    assert_eq!(
        keys.claim("Cmd:forever", LONG).await.unwrap(),
        Claim::Completed(b"f".to_vec())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn extreme_time_to_lives_and_keys_neither_panic_nor_misbehave() {
    let Some(url) = common::url() else { return };
    let schemas = common::Schemas::new(&url);
    let store = fresh(&url, &schemas).await;
    let keys = store.idempotency_store();
    // Longer than any clock can count: never expires.
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
    // The longest finite time-out, to the microsecond.
    let longest = Duration::from_micros((1 << 62) - 1);
    token(keys.claim("Cmd:longest", longest).await.unwrap());
    assert!(
        scalar::<bool>(
            &store,
            "SELECT expires_at - clock_timestamp() BETWEEN \
               make_interval(hours => 1281023894) AND make_interval(hours => 1281023895) \
             FROM {s}.idempotency_keys WHERE key = 'Cmd:longest'"
        )
        .await
    );
    // A zero time-out: the reservation is expired as soon as it is made.
    let first = token(keys.claim("Cmd:zero", Duration::ZERO).await.unwrap());
    let second = token(keys.claim("Cmd:zero", Duration::ZERO).await.unwrap());
    assert_ne!(first, second);
    // Keys are compared byte for byte: case, Unicode forms, trailing spaces.
    let t = token(keys.claim("Cmd:é", LONG).await.unwrap());
    for other in ["cmd:é", "Cmd:e\u{301}", "Cmd:é ", "Cmd:É"] {
        token(keys.claim(other, LONG).await.unwrap());
    }
    assert!(keys.complete("Cmd:é", t, b"e", LONG).await.unwrap());
    assert_eq!(
        keys.claim("Cmd:é", LONG).await.unwrap(),
        Claim::Completed(b"e".to_vec())
    );
    // The longest key PostgreSQL can index, with no compressible pattern.
    let long: String = (0..2048)
        .map(|_| char::from(b'!' + rand::random::<u8>() % 94))
        .collect();
    let t = token(keys.claim(&long, LONG).await.unwrap());
    assert!(keys.complete(&long, t, b"long", LONG).await.unwrap());
    // What PostgreSQL cannot store is an invalid argument that says what failed, and
    // a key that cannot be claimed has nothing to complete or release.
    for (key, why) in [
        ("Cmd:a\0b".to_owned(), "NUL"),
        (format!("{long}x"), "the limit is 2048"),
    ] {
        let err = keys.claim(&key, LONG).await.unwrap_err();
        assert!(
            matches!(store_error(&err), Error::InvalidArgument(m) if m.contains(why)),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("cannot claim idempotency key"),
            "{err}"
        );
        assert!(!keys.complete(&key, t, b"x", LONG).await.unwrap());
        keys.release(&key, t).await.unwrap();
    }
    assert_eq!(keys.purge_expired().await.unwrap(), 1, "only Cmd:zero");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_process_takes_over_an_expired_reservation() {
    let Some(url) = common::url() else { return };
    let schemas = common::Schemas::new(&url);
    let crashed = fresh(&url, &schemas).await;
    let survivor = common::other_process(&url, crashed.schema(), |b| b.max_connections(4))
        .await
        .idempotency_store();
    let crashed = crashed.idempotency_store();
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
    // The token is good from any process: the fresh attempt completes through the
    // other one.
    assert!(
        crashed
            .complete("Cmd:takeover", fresh, b"fresh", LONG)
            .await
            .unwrap()
    );
    assert_eq!(
        survivor.claim("Cmd:takeover", LONG).await.unwrap(),
        Claim::Completed(b"fresh".to_vec())
    );
}

// ---------------------------------------------------------------------------
// The audit log.

/// Every combination of filters, order and paging returns what the memory store
/// returns, for entries with ties on time and on id.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_queries_match_the_memory_store_exactly() {
    let Some(url) = common::url() else { return };
    let schemas = common::Schemas::new(&url);
    let store = fresh(&url, &schemas).await;
    let pg = store.audit_store();
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
                    message: format!("no\n\"{n}\"\t ü 🦀 '; DROP TABLE x; --"),
                },
            };
            e.tenant_id = n.is_multiple_of(2).then(|| "t".to_owned());
            entries.push(e);
        }
    }
    for e in &entries {
        pg.append(e).await.unwrap();
        memory.append(e).await.unwrap();
    }
    let bounds = [
        None,
        Some(at("2026-01-01T00:00:00Z")),
        // Between two stored microseconds: the bounds round the same way as `>=`/`<`.
        Some(at("2026-01-01T00:00:00.0000005Z")),
        Some(at("2026-01-01T00:00:01Z")),
        Some(at("1969-12-31T23:59:59.9999995Z")),
        // Beyond what PostgreSQL stores, on either side.
        Some(DateTime::<Utc>::MIN_UTC),
        Some(DateTime::<Utc>::MAX_UTC),
    ];
    let mut checked = 0;
    for user in [None, Some("alice"), Some("bob"), Some("carol"), Some("a\0")] {
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
                                pg.query(&q).await.unwrap(),
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
    assert_eq!(checked, 5 * 3 * 7 * 7 * 2 * 5);
    assert_eq!(
        pg.query(&AuditQuery::default()).await.unwrap().len(),
        entries.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_fields_round_trip_at_microsecond_precision() {
    let Some(url) = common::url() else { return };
    let schemas = common::Schemas::new(&url);
    let store = fresh(&url, &schemas).await;
    let audit = store.audit_store();
    let mut sparse = record(1, None, "Ünïcode 🦀", "2026-05-06T07:08:09.123456789Z");
    sparse.aggregate_id = None;
    sparse.correlation_id = None;
    sparse.duration_us = u64::MAX;
    sparse.outcome = AuditOutcome::Failed {
        kind: String::new(),
        message: String::new(),
    };
    audit.append(&sparse).await.unwrap();
    let mut expected = sparse.clone();
    expected.started_at = at("2026-05-06T07:08:09.123456Z");
    expected.duration_us = i64::MAX as u64;
    assert_eq!(
        audit.query(&AuditQuery::default()).await.unwrap(),
        vec![expected],
        "nanoseconds dropped, duration clamped"
    );
    // The ends of the range both types share round-trip exactly; before 1970, the
    // dropped nanoseconds round towards the past, as `mink_es::now_micros` does.
    exec(&store, "TRUNCATE {s}.audit_log").await;
    // 4714-11-24 BC, the first day PostgreSQL stores.
    let mut earliest = record(2, Some("u"), "Old", "2026-01-01T00:00:00Z");
    earliest.started_at = midnight(-4713, 11, 24);
    earliest.outcome = AuditOutcome::Started;
    let mut latest = record(3, Some("u"), "New", "2026-01-01T00:00:00Z");
    latest.started_at = DateTime::<Utc>::MAX_UTC;
    let before_1970 = record(4, Some("u"), "Mid", "1969-12-31T23:59:59.9999995Z");
    for r in [&earliest, &latest, &before_1970] {
        audit.append(r).await.unwrap();
    }
    let back = audit.query(&AuditQuery::default()).await.unwrap();
    let mut latest_back = latest.clone();
    latest_back.started_at =
        DateTime::from_timestamp_micros(DateTime::<Utc>::MAX_UTC.timestamp_micros()).unwrap();
    let mut mid_back = before_1970.clone();
    mid_back.started_at = at("1969-12-31T23:59:59.999999Z");
    assert_eq!(back, vec![earliest, mid_back, latest_back]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_entries_postgres_cannot_hold_are_refused_and_nothing_is_written() {
    let Some(url) = common::url() else { return };
    let schemas = common::Schemas::new(&url);
    let store = fresh(&url, &schemas).await;
    let audit = store.audit_store();
    let mut nul = record(1, Some("alice"), "Place", "2026-01-01T00:00:00Z");
    nul.outcome = AuditOutcome::Failed {
        kind: "rejected".into(),
        message: "bad byte \0 here".into(),
    };
    let mut ancient = record(2, Some("alice"), "Place", "2026-01-01T00:00:00Z");
    ancient.started_at = midnight(-4713, 11, 24) - chrono::TimeDelta::microseconds(1);
    let long_user = record(3, Some(&"u".repeat(2049)), "Place", "2026-01-01T00:00:00Z");
    for (r, why) in [
        (&nul, "the failure's message contains a NUL"),
        (&ancient, "outside the times PostgreSQL stores"),
        (&long_user, "user_id is 2049 bytes"),
    ] {
        let err = audit.append(r).await.unwrap_err();
        assert!(
            matches!(store_error(&err), Error::InvalidArgument(m) if m.contains(why)),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains(&format!("cannot append audit entry {}", r.id)),
            "{err}"
        );
    }
    assert_eq!(
        scalar::<i64>(&store, "SELECT count(*) FROM {s}.audit_log").await,
        0
    );
}

// ---------------------------------------------------------------------------
// Corrupt rows.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupt_rows_are_errors_that_name_the_row_never_panics() {
    let Some(url) = common::url() else { return };
    let schemas = common::Schemas::new(&url);
    let store = fresh(&url, &schemas).await;
    let keys = store.idempotency_store();
    let audit = store.audit_store();
    exec(
        &store,
        "ALTER TABLE {s}.idempotency_keys \
           DROP CONSTRAINT idempotency_keys_state_check, \
           DROP CONSTRAINT idempotency_keys_output_check, \
           ALTER COLUMN state DROP NOT NULL, \
           ALTER COLUMN expires_at DROP NOT NULL",
    )
    .await;
    for (key, state, output, expires_at) in [
        ("Cmd:state", "'paused'", "NULL", "'infinity'"),
        ("Cmd:no-state", "NULL", "NULL", "'infinity'"),
        ("Cmd:no-output", "'completed'", "NULL", "'infinity'"),
        ("Cmd:no-expiry", "'reserved'", "NULL", "NULL"),
    ] {
        exec(
            &store,
            &format!(
                "INSERT INTO {{s}}.idempotency_keys (key, state, token, output, expires_at) \
                 VALUES ('{key}', {state}, gen_random_uuid(), {output}, {expires_at})"
            ),
        )
        .await;
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
        assert!(
            matches!(
                PgStoreError::find(store_error(&err)),
                Some(PgStoreError::Corrupt { .. })
            ),
            "{err:?}"
        );
    }
    // An expired record is taken over whatever it holds; the other keys work.
    exec(
        &store,
        "INSERT INTO {s}.idempotency_keys (key, state, token, output, expires_at) \
         VALUES ('Cmd:junk', 'paused', gen_random_uuid(), NULL, '-infinity')",
    )
    .await;
    token(keys.claim("Cmd:junk", LONG).await.unwrap());
    token(keys.claim("Cmd:fine", LONG).await.unwrap());

    exec(
        &store,
        "ALTER TABLE {s}.audit_log \
           DROP CONSTRAINT audit_log_outcome_check, \
           DROP CONSTRAINT audit_log_error_check, \
           DROP CONSTRAINT audit_log_duration_us_check, \
           ALTER COLUMN id DROP NOT NULL, \
           ALTER COLUMN command DROP NOT NULL, \
           ALTER COLUMN started_at DROP NOT NULL",
    )
    .await;
    let entry = record(1, Some("alice"), "Place", "2026-01-01T00:00:00Z");
    audit.append(&entry).await.unwrap();
    for (column, value) in [
        ("id", "NULL"),
        ("command", "NULL"),
        ("outcome", "'exploded'"),
        ("error_kind", "'rejected'"),
        ("started_at", "NULL"),
        ("started_at", "'infinity'"),
        ("started_at", "'-infinity'"),
        ("started_at", "'294276-12-31 23:59:59.999999+00'"),
        ("duration_us", "-1"),
    ] {
        exec(
            &store,
            &format!("UPDATE {{s}}.audit_log SET {column} = {value}"),
        )
        .await;
        let seq: i64 = scalar(&store, "SELECT seq FROM {s}.audit_log").await;
        let err = audit
            .query(&AuditQuery {
                user_id: Some("alice".to_owned()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("cannot query the audit log"), "{msg}");
        assert!(
            msg.contains(&format!("audit row {seq} is corrupt")),
            "{column} = {value}: {msg}"
        );
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
        exec(&store, "DELETE FROM {s}.audit_log").await;
        audit.append(&entry).await.unwrap();
    }
    assert_eq!(
        audit.query(&AuditQuery::default()).await.unwrap(),
        vec![entry]
    );
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

/// A bus whose audit log and idempotency keys live in `commands`' schema (fail-closed,
/// both) and whose events live in `events`; `runs` counts the handler's decisions.
fn counter_bus(commands: &PgEventStore, events: &PgEventStore, runs: Arc<AtomicU32>) -> CommandBus {
    let mut bus = CommandBus::new();
    bus.use_middleware(Audit::new(commands.audit_store()).fail_closed());
    bus.use_middleware(Idempotency::new(commands.idempotency_store()));
    bus.register_aggregate(
        Repository::<Counter, _>::new(events.clone()),
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
    let Some(url) = common::url() else { return };
    let schemas = common::Schemas::new(&url);
    let store = fresh(&url, &schemas).await;
    // A second process on the same schema, with its own pool and its own bus.
    let other = common::other_process(&url, store.schema(), |b| b.max_connections(8)).await;
    let runs = Arc::new(AtomicU32::new(0));
    let bus = Arc::new(counter_bus(&store, &store, runs.clone()));
    let bus2 = Arc::new(counter_bus(&other, &other, runs.clone()));

    // A duplicate gets the original result without running the handler, in either
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

    // The events, the keys and the audit log are in the one schema.
    let events = store
        .read_stream(&StreamId::new("Counter-c1").unwrap(), 1, 100)
        .await
        .unwrap();
    assert_eq!(events.len(), 2, "one event per distinct request");
    let done: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT key FROM {}.idempotency_keys WHERE state = 'completed' ORDER BY key",
        store.schema().quoted()
    )))
    .fetch_all(store.pool())
    .await
    .unwrap();
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
    assert!(
        alice
            .windows(2)
            .all(|w| (w[0].started_at, w[0].id) <= (w[1].started_at, w[1].id)),
        "oldest first"
    );
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
    assert!(newest[0].started_at <= mink_es::now_micros());
}

// ---------------------------------------------------------------------------
// A database that is down, or a schema that is gone.

/// A port on this machine that nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    port
}

/// Dispatches `inc(1, request)` on a bus whose command stores are `commands` and whose
/// events are in `events`: the command must be refused (by the middleware `expect`ed)
/// before the handler runs, and write nothing.
async fn refused_without_running(
    commands: &PgEventStore,
    events: &PgEventStore,
    request: &str,
) -> BoxError {
    let runs = Arc::new(AtomicU32::new(0));
    let bus = counter_bus(commands, events, runs.clone());
    let err = bus
        .dispatch_with(inc(1, request), as_user("alice"))
        .await
        .unwrap_err();
    assert_eq!(runs.load(Ordering::SeqCst), 0, "the handler did not run");
    assert_eq!(
        events
            .stream_version(&StreamId::new("Counter-c1").unwrap())
            .await
            .unwrap(),
        0,
        "no event was written"
    );
    match err {
        CommandError::AuditUnavailable { source } => source,
        other => panic!("expected AuditUnavailable, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_that_is_down_is_a_transient_error_and_runs_nothing() {
    let Some(url) = common::url() else { return };
    let schemas = common::Schemas::new(&url);
    let events = fresh(&url, &schemas).await;
    // The same schema, through a pool that points at a closed port.
    let options: PgConnectOptions = url.parse().unwrap();
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy_with(options.port(closed_port()));
    let down = PgEventStore::builder_from_pool(pool)
        .schema(events.schema().as_str())
        .build()
        .await
        .unwrap();
    let keys = down.idempotency_store();
    let audit = down.audit_store();
    let entry = record(1, Some("alice"), "Place", "2026-01-01T00:00:00Z");
    let t = Uuid::new_v4();

    let transient = |e: BoxError, what: &str| {
        let err = store_error(&e);
        assert!(err.is_retryable(), "{err:?}");
        assert!(matches!(err, Error::Backend { .. }), "{err:?}");
        assert!(e.to_string().contains(what), "{what}: {e}");
    };
    transient(
        keys.claim("Cmd:down", LONG).await.unwrap_err(),
        "cannot claim idempotency key \"Cmd:down\"",
    );
    transient(
        keys.complete("Cmd:down", t, b"1", LONG).await.unwrap_err(),
        "cannot store the result for idempotency key \"Cmd:down\"",
    );
    transient(
        keys.release("Cmd:down", t).await.unwrap_err(),
        "cannot release idempotency key \"Cmd:down\"",
    );
    transient(
        keys.purge_expired().await.unwrap_err(),
        "cannot purge expired idempotency keys",
    );
    transient(
        audit.append(&entry).await.unwrap_err(),
        &format!("cannot append audit entry {}", entry.id),
    );
    transient(
        audit.query(&AuditQuery::default()).await.unwrap_err(),
        "cannot query the audit log",
    );

    // Through the bus, fail-closed: no audit record, no command, no event.
    let source = refused_without_running(&down, &events, "req-down").await;
    transient(source, "cannot append audit entry");
    // With idempotency alone (fail-closed by default), the same.
    let runs = Arc::new(AtomicU32::new(0));
    let mut bus = CommandBus::new();
    bus.use_middleware(Idempotency::new(down.idempotency_store()));
    let counted = runs.clone();
    bus.register_aggregate(
        Repository::<Counter, _>::new(events.clone()),
        |c: &Increment| c.id.clone(),
        move |_: &Counter, c: &Increment| {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok::<_, String>(vec![CounterEvent::Incremented { by: c.by }])
        },
    )
    .unwrap();
    match bus.dispatch(inc(1, "req-down")).await.unwrap_err() {
        CommandError::IdempotencyUnavailable { source } => transient(
            source,
            "cannot claim idempotency key \"Increment:req-down\"",
        ),
        other => panic!("expected IdempotencyUnavailable, got {other:?}"),
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    assert_eq!(
        events
            .stream_version(&StreamId::new("Counter-c1").unwrap())
            .await
            .unwrap(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dropped_schema_or_table_is_a_typed_error_and_runs_nothing() {
    let Some(url) = common::url() else { return };
    let schemas = common::Schemas::new(&url);
    let events = fresh(&url, &schemas).await;
    let gone = fresh(&url, &schemas).await;
    let keys = gone.idempotency_store();
    let audit = gone.audit_store();
    // Used once, so that the statements are prepared on the pool's connections.
    let t = token(keys.claim("Cmd:before", LONG).await.unwrap());
    let entry = record(1, Some("alice"), "Place", "2026-01-01T00:00:00Z");
    audit.append(&entry).await.unwrap();
    assert_eq!(audit.query(&AuditQuery::default()).await.unwrap().len(), 1);

    mink_postgres::migrate::drop_schema(gone.pool(), gone.schema())
        .await
        .unwrap();
    assert_not_migrated(
        &keys.claim("Cmd:after", LONG).await.unwrap_err(),
        "cannot claim idempotency key \"Cmd:after\"",
    );
    assert_not_migrated(
        &keys
            .complete("Cmd:before", t, b"1", LONG)
            .await
            .unwrap_err(),
        "cannot store the result for idempotency key \"Cmd:before\"",
    );
    assert_not_migrated(
        &keys.release("Cmd:before", t).await.unwrap_err(),
        "cannot release idempotency key",
    );
    assert_not_migrated(
        &keys.purge_expired().await.unwrap_err(),
        "cannot purge expired idempotency keys",
    );
    assert_not_migrated(
        &audit.append(&entry).await.unwrap_err(),
        "cannot append audit entry",
    );
    assert_not_migrated(
        &audit.query(&AuditQuery::default()).await.unwrap_err(),
        "cannot query the audit log",
    );
    let source = refused_without_running(&gone, &events, "req-gone").await;
    assert_not_migrated(&source, "cannot append audit entry");

    // The audit table alone dropped from the events' own schema: the events table
    // works, and still nothing is written.
    exec(&events, "DROP TABLE {s}.audit_log").await;
    let source = refused_without_running(&events, &events, "req-no-table").await;
    assert_not_migrated(&source, "cannot append audit entry");
}
