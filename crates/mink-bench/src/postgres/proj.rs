//! PROJ on PostgreSQL (see [`crate::proj`]): `PgProjectionTarget` with one worker and
//! with four partitions, against the same read model kept with plain sqlx. Each run
//! gets a fresh schema.
//!
//! The raw side reads a batch in feed order (`(tx, position)`; the store is not written
//! meanwhile, so no visibility horizon is needed), adds the batch's events up per
//! stream in memory, and writes them with one `INSERT … SELECT FROM unnest(…) ON
//! CONFLICT DO UPDATE` and the checkpoint's `UPDATE`, in one transaction.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use bytes::Bytes;
use mink_es::Position;
use mink_es::projection::{ProjectionControl, ProjectionEngine};
use mink_postgres::PgProjectionTarget;
use mink_postgres::sqlx::{self, AssertSqlSafe, PgPool};

use super::{drop_schema, open_store};
use crate::Line;
use crate::common::Sizes;
use crate::proj::{self, Balances, Side};

/// PROJ on PostgreSQL: `raw`, `mink-p1`, `mink-p4`.
pub async fn run(sizes: &Sizes, payload: &Bytes, url: &str) -> Result<Vec<Line>> {
    let mut figures = proj::figures();
    for (run, &side) in proj::ORDER.iter().enumerate() {
        let schema = format!("mink_bench_proj_{run}_{}", std::process::id());
        let store = open_store(url, &schema).await?;
        let pool = store.pool().clone();
        let result = async {
            let head = proj::prefill(&store, sizes, payload).await?;
            match side {
                Side::Raw => {
                    let t = raw(&pool, &schema, head).await?;
                    verify_raw(&pool, &schema, sizes).await?;
                    Ok::<_, anyhow::Error>(t)
                }
                Side::P1 | Side::P4 => {
                    let control = store.projection_control();
                    let shared: Arc<dyn ProjectionControl> = Arc::new(control.clone());
                    let mut engine = ProjectionEngine::new(store.clone(), shared);
                    let workers = if side == Side::P1 {
                        engine.add(
                            PgProjectionTarget::new(&store, Balances::new()?)?,
                            proj::options(),
                        )?;
                        1
                    } else {
                        engine.add_partitioned(
                            "bench_balances",
                            4,
                            PgProjectionTarget::partitions(&store, Balances::new()?)?,
                            proj::options(),
                        )?;
                        4
                    };
                    let t = proj::time_engine(engine, &control, "bench_balances", workers, head)
                        .await?;
                    proj::verify(&store.read_models(), sizes).await?;
                    Ok(t)
                }
            }
        }
        .await;
        drop_schema(&pool, &schema).await?;
        pool.close().await;
        proj::record(&mut figures, side, sizes.proj_events, result?);
    }
    Ok(proj::lines("postgres", &figures))
}

async fn raw(pool: &PgPool, schema: &str, head: Position) -> Result<Duration> {
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE \"{schema}\".raw_balances (id text COLLATE \"C\" PRIMARY KEY, \
           events bigint NOT NULL, bytes bigint NOT NULL, last_version bigint NOT NULL); \
         CREATE TABLE \"{schema}\".raw_checkpoint (name text PRIMARY KEY, tx bigint NOT NULL, \
           position bigint NOT NULL); \
         INSERT INTO \"{schema}\".raw_checkpoint VALUES ('balances', 0, 0);"
    )))
    .execute(pool)
    .await?;
    let read = format!(
        "SELECT e.tx::text::bigint AS tx_number, e.position, e.stream_id, e.version, \
           length(e.payload)::bigint \
         FROM \"{schema}\".events e WHERE (e.tx, e.position) > ($1::text::xid8, $2) \
         ORDER BY e.tx, e.position LIMIT $3"
    );
    let upsert = format!(
        "INSERT INTO \"{schema}\".raw_balances AS b (id, events, bytes, last_version) \
         SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[]) \
         ON CONFLICT (id) DO UPDATE SET events = b.events + excluded.events, \
           bytes = b.bytes + excluded.bytes, last_version = excluded.last_version"
    );
    let checkpoint = format!(
        "UPDATE \"{schema}\".raw_checkpoint SET tx = $1, position = $2 WHERE name = 'balances'"
    );
    let head = (i64::try_from(head.major())?, i64::try_from(head.minor())?);
    let start = Instant::now();
    let mut cp: (i64, i64) = (0, 0);
    while cp < head {
        let batch: Vec<(i64, i64, String, i64, i64)> = sqlx::query_as(AssertSqlSafe(read.as_str()))
            .bind(cp.0.to_string())
            .bind(cp.1)
            .bind(proj::BATCH as i64)
            .fetch_all(pool)
            .await?;
        let Some(last) = batch.last().map(|b| (b.0, b.1)) else {
            break;
        };
        // Per stream: events, bytes, last version (in feed order).
        let mut sums: HashMap<&str, (i64, i64, i64)> = HashMap::new();
        for (_, _, stream, version, len) in &batch {
            let s = sums.entry(stream.as_str()).or_default();
            s.0 += 1;
            s.1 += len;
            s.2 = *version;
        }
        let mut ids = Vec::with_capacity(sums.len());
        let mut events = Vec::with_capacity(sums.len());
        let mut bytes = Vec::with_capacity(sums.len());
        let mut versions = Vec::with_capacity(sums.len());
        for (id, (n, b, v)) in sums {
            ids.push(id.to_owned());
            events.push(n);
            bytes.push(b);
            versions.push(v);
        }
        let mut tx = pool.begin().await?;
        sqlx::query(AssertSqlSafe(upsert.as_str()))
            .bind(&ids)
            .bind(&events)
            .bind(&bytes)
            .bind(&versions)
            .execute(&mut *tx)
            .await?;
        sqlx::query(AssertSqlSafe(checkpoint.as_str()))
            .bind(last.0)
            .bind(last.1)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        cp = last;
    }
    Ok(start.elapsed())
}

async fn verify_raw(pool: &PgPool, schema: &str, sizes: &Sizes) -> Result<()> {
    let (rows, events): (i64, i64) = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT count(*), coalesce(sum(events), 0)::bigint FROM \"{schema}\".raw_balances"
    )))
    .fetch_one(pool)
    .await?;
    ensure!(
        rows as usize == sizes.proj_streams && events as u64 == sizes.proj_events,
        "raw: {rows} rows and {events} events, expected {} and {}",
        sizes.proj_streams,
        sizes.proj_events
    );
    Ok(())
}
