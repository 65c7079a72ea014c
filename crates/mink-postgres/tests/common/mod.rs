//! Helpers shared by the PostgreSQL tests: the server URL, throw-away schemas, and a
//! lock that keeps feed-sensitive tests of one binary from running at the same time.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Mutex;
use std::time::Duration;

use mink_postgres::sqlx::{self, Connection};
use mink_postgres::{PgEventStore, PgEventStoreBuilder, SchemaName};

/// The server to test against, or `None` (after a loud skip notice) when
/// `MINK_POSTGRES_URL` is unset; panics instead under `MINK_REQUIRE_SERVICES=1`.
pub fn url() -> Option<String> {
    mink_testing::services::service_url("MINK_POSTGRES_URL")
}

/// The feed's horizon is cluster-wide: an open write transaction of one test holds back
/// the feed of every other test. Tests that read the feed right after writing take this
/// lock, so the tests of one binary do not disturb each other.
pub static FEED_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Keeps autovacuum off a test store's tables. An autovacuum ANALYZE takes a
/// transaction id for a moment; while it runs it holds back the feed (the horizon is
/// cluster-wide), and a test that reads the feed right after writing would see that.
pub async fn quiet(store: &PgEventStore) {
    let s = store.schema().quoted();
    let sql = format!(
        "ALTER TABLE {s}.events SET (autovacuum_enabled = false); \
         ALTER TABLE {s}.streams SET (autovacuum_enabled = false)"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(store.pool())
        .await
        .unwrap();
}

/// A fresh schema name.
pub fn random_schema() -> SchemaName {
    SchemaName::new(format!("mink_t_{:016x}", rand::random::<u64>())).unwrap()
}

/// Drops the schemas it holds when dropped (also when a test panics).
pub struct Schemas {
    url: String,
    names: Mutex<Vec<SchemaName>>,
}

impl Schemas {
    pub fn new(url: &str) -> Self {
        Schemas {
            url: url.to_owned(),
            names: Mutex::new(Vec::new()),
        }
    }

    pub fn add(&self, s: SchemaName) {
        self.names.lock().unwrap().push(s);
    }
}

impl Drop for Schemas {
    fn drop(&mut self) {
        let names = std::mem::take(&mut *self.names.lock().unwrap());
        if names.is_empty() {
            return;
        }
        let url = self.url.clone();
        // A runtime of its own, on a thread of its own: this may run inside (or after) the
        // test's runtime, and during a panic.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
                for s in names {
                    let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", s.quoted());
                    if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                        .execute(&mut c)
                        .await
                    {
                        eprintln!("could not drop schema {s}: {e}");
                    }
                }
                let _ = c.close().await;
            });
        })
        .join();
    }
}

/// A migrated store in a fresh schema, with the builder adjusted by `f`.
pub async fn store_with(
    url: &str,
    schemas: &Schemas,
    f: impl FnOnce(PgEventStoreBuilder) -> PgEventStoreBuilder,
) -> PgEventStore {
    let schema = random_schema();
    schemas.add(schema.clone());
    let store = f(PgEventStore::builder(url)
        .schema(schema.as_str())
        .max_connections(24)
        .acquire_timeout(Duration::from_secs(60)))
    .build()
    .await
    .unwrap();
    store.migrate().await.unwrap();
    quiet(&store).await;
    store
}

/// A second handle on the same schema, with its own pool and wake-ups (as another
/// process would have).
pub async fn other_process(
    url: &str,
    schema: &SchemaName,
    f: impl FnOnce(PgEventStoreBuilder) -> PgEventStoreBuilder,
) -> PgEventStore {
    f(PgEventStore::builder(url)
        .schema(schema.as_str())
        .max_connections(24))
    .build()
    .await
    .unwrap()
}
