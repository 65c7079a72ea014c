//! The shared conformance suite, against PostgreSQL (`MINK_POSTGRES_URL`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use mink_es::StreamId;
use mink_postgres::PgEventStore;
use mink_postgres::sqlx::{self, PgPool, postgres::PgPoolOptions};
use mink_testing::StoreFactory;

/// A fresh schema per store, on one pool; the schemas are dropped with the factory.
struct PgFactory {
    pool: PgPool,
    schemas: common::Schemas,
    // Held for the whole test: see `common::FEED_LOCK`.
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl StoreFactory for PgFactory {
    type Store = PgEventStore;

    async fn create(&self) -> PgEventStore {
        let schema = common::random_schema();
        self.schemas.add(schema.clone());
        let store = PgEventStore::builder_from_pool(self.pool.clone())
            .schema(schema.as_str())
            .build()
            .await
            .unwrap();
        store.migrate().await.unwrap();
        common::quiet(&store).await;
        store
    }

    async fn corrupt_payload(
        &self,
        store: &PgEventStore,
        stream: &StreamId,
        version: u64,
        payload: Vec<u8>,
    ) {
        let sql = format!(
            "UPDATE {}.events SET payload = $3 WHERE stream_id = $1 AND version = $2",
            store.schema().quoted()
        );
        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(stream.as_str())
            .bind(i64::try_from(version).unwrap())
            .bind(payload)
            .execute(&self.pool)
            .await
            .unwrap();
        assert_eq!(done.rows_affected(), 1, "no event {stream}@{version}");
    }
}

async fn make_factory() -> Option<PgFactory> {
    let url = common::url()?;
    let serial = common::FEED_LOCK.lock().await;
    let pool = PgPoolOptions::new()
        .max_connections(24)
        .connect(&url)
        .await
        .unwrap();
    Some(PgFactory {
        pool,
        schemas: common::Schemas::new(&url),
        _serial: serial,
    })
}

mink_testing::conformance_tests!(async { make_factory().await });
