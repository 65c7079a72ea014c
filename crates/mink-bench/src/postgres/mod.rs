//! The PostgreSQL backend: each workload on `mink_postgres::PgEventStore` and, in the
//! same run, on raw sqlx ([`raw`]), against the server named by `MINK_POSTGRES_URL`.
//!
//! How the two are kept comparable:
//!
//! - Both sides get a fresh schema and their own pool of the same size (8 connections,
//!   the W4 concurrency), set up (W3 writes its stream) and warm up (a tenth of their
//!   work, at most 1,000 units, untimed) before anything is timed.
//! - The timed work of each side is cut into 8 chunks, run alternately in ABBA order
//!   (raw, mink, mink, raw, raw, mink, …). A commit on this machine costs one WAL
//!   flush whose latency drifts by tens of percent over seconds; fine interleaving
//!   spreads that drift over both sides, where a few long runs would not.
//! - Each side checks its result afterwards, and both schemas are dropped.
//! - The server's durability settings are left as they are (`fsync`,
//!   `synchronous_commit`); the bench prints them.
//!
//! mink runs with its defaults: appends are announced with NOTIFY by a background task
//! on one more connection of its own (coalesced, asynchronous commit).
//!
//! BUS and W3D compare implementations that are all mink on `PgEventStore`, with the
//! same chunked schedule (A B C, C B A, …): BUS gives each side (the handler called
//! directly, through the bus, through the bus with the store-backed middlewares) a
//! store in its own fresh schema, `mink-stores` keeping its idempotency keys and audit
//! log in its store's schema (`PgEventStore::idempotency_store`, `audit_store`); W3D
//! gives each codec and upcaster its own stream in one fresh schema.

mod outbox;
mod proj;
mod raw;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use mink_postgres::PgEventStore;
use mink_postgres::sqlx::{self, PgPool, postgres::PgPoolOptions};

use crate::bus::{self, CommandStores, Deposits};
use crate::common::{Measurement, Sizes, chunked, split, warmup};
use crate::decode::{self, Decode, DecodeResult, Decodes};
use crate::workloads::{Appends, Concurrent, Loads};
use crate::{Line, Workload};

/// Connections per side: the W4 concurrency.
const CONNECTIONS: u32 = 8;

/// One side of the comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Raw,
    Mink,
}

/// The server URL, from `MINK_POSTGRES_URL`.
pub fn url() -> Result<String> {
    std::env::var("MINK_POSTGRES_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .context("backend postgres needs MINK_POSTGRES_URL (postgres://user@host:port/db)")
}

/// Prints the server's version and durability settings to stderr.
pub async fn describe_server(url: &str) -> Result<()> {
    let pool = PgPoolOptions::new().max_connections(1).connect(url).await?;
    let (version, fsync, sync_commit, autovacuum): (String, String, String, String) =
        sqlx::query_as(
            "SELECT current_setting('server_version'), current_setting('fsync'), \
             current_setting('synchronous_commit'), current_setting('autovacuum')",
        )
        .fetch_one(&pool)
        .await?;
    eprintln!(
        "mink-bench: PostgreSQL {version}, fsync={fsync}, synchronous_commit={sync_commit}, \
         autovacuum={autovacuum}"
    );
    pool.close().await;
    Ok(())
}

/// Timed chunks per side.
const CHUNKS: usize = 8;

/// Timed chunks per side of BUS: about 100 commands each at the default size. A
/// command waits for a commit (two or more with `mink-stores`), whose latency on a
/// shared server drifts by tens of percent within seconds; finer interleaving spreads
/// that drift over every side.
const BUS_CHUNKS: usize = 40;

/// Timed chunks per side for `units` units: [`CHUNKS`], or fewer for fewer units.
fn chunks(units: u64) -> usize {
    usize::try_from(units).map_or(CHUNKS, |u| u.clamp(1, CHUNKS))
}

/// The order of the timed chunks: ABBA, repeated.
fn schedule(units: u64) -> Vec<(Side, u64)> {
    let parts = split(units, CHUNKS);
    let mut out = Vec::with_capacity(2 * CHUNKS);
    for (k, part) in parts.into_iter().enumerate() {
        if k % 2 == 0 {
            out.extend([(Side::Raw, part), (Side::Mink, part)]);
        } else {
            out.extend([(Side::Mink, part), (Side::Raw, part)]);
        }
    }
    out
}

/// Runs `workload` on mink-postgres and on raw sqlx, and reports a raw line and a mink
/// line.
pub async fn run(workload: Workload, sizes: &Sizes, payload: &Bytes) -> Result<Vec<Line>> {
    let url = url()?;
    let units = match workload {
        Workload::W1 => sizes.w1_events,
        Workload::W2 => sizes.w2_events / sizes.w2_batch as u64,
        Workload::W3 => sizes.w3_loads,
        Workload::W4 => sizes.w4_events_per_task,
        Workload::Bus => return run_bus(sizes, &url).await,
        Workload::W3D => return run_w3d(sizes, payload, &url).await,
        Workload::Outbox => return outbox::run(sizes, payload, &url).await,
        Workload::Proj => return proj::run(sizes, payload, &url).await,
    };
    let tag = format!("{}_{}", workload.name().to_lowercase(), std::process::id());
    let raw_schema = format!("mink_bench_raw_{tag}");
    let mink_schema = format!("mink_bench_mink_{tag}");
    let raw_pool = pool(&url).await?;
    let store = open_store(&url, &mink_schema).await?;
    let mink_pool = store.pool().clone();
    let db = raw::Db::create(raw_pool.clone(), &raw_schema).await;
    let result = match db {
        Ok(db) => measure(workload, sizes, units, payload, db, store).await,
        Err(e) => Err(e),
    };
    drop_schema(&raw_pool, &raw_schema).await?;
    drop_schema(&mink_pool, &mink_schema).await?;
    raw_pool.close().await;
    mink_pool.close().await;
    let (raw_m, mink_m) = result?;
    Ok(vec![
        Line::new(workload, "postgres", "raw", raw_m),
        Line::new(workload, "postgres", "mink", mink_m).against_raw(raw_m),
    ])
}

/// A migrated store in the fresh schema `schema`, with a pool of [`CONNECTIONS`].
async fn open_store(url: &str, schema: &str) -> Result<PgEventStore> {
    let store = PgEventStore::builder(url)
        .schema(schema)
        .max_connections(CONNECTIONS)
        .acquire_timeout(Duration::from_secs(60))
        .build()
        .await?;
    store.migrate().await?;
    Ok(store)
}

/// BUS: the handler called directly, through the bus, and through the bus with the
/// store-backed middlewares, each side on a store in its own fresh schema.
async fn run_bus(sizes: &Sizes, url: &str) -> Result<Vec<Line>> {
    let sides = [bus::Side::Raw, bus::Side::Mink, bus::Side::MinkStores];
    let pid = std::process::id();
    let mut stores = Vec::with_capacity(sides.len());
    let mut opened = Ok(());
    for side in sides {
        let schema = format!("mink_bench_bus_{}_{pid}", side.name().replace('-', "_"));
        match open_store(url, &schema).await {
            Ok(store) => stores.push((schema, store)),
            Err(e) => {
                // Drop what was created, whatever happened.
                let pool = pool(url).await?;
                drop_schema(&pool, &schema).await?;
                pool.close().await;
                opened = Err(e);
                break;
            }
        }
    }
    let result = match opened {
        Ok(()) => measure_bus(sizes, &sides, &stores).await,
        Err(e) => Err(e),
    };
    for (schema, store) in &stores {
        drop_schema(store.pool(), schema).await?;
        store.pool().close().await;
    }
    Ok(bus::lines("postgres", &result?))
}

/// Sets up and warms up every BUS side, then times them chunk by chunk.
async fn measure_bus(
    sizes: &Sizes,
    sides: &[bus::Side],
    stores: &[(String, PgEventStore)],
) -> Result<Vec<(bus::Side, Measurement)>> {
    let mut ws = Vec::with_capacity(sides.len());
    for (&side, (_, store)) in sides.iter().zip(stores) {
        let command_stores = CommandStores {
            idempotency: Arc::new(store.idempotency_store()),
            audit: Arc::new(store.audit_store()),
        };
        ws.push(Deposits::new(
            store.clone(),
            side,
            Some(command_stores),
            sizes.bus_accounts,
        )?);
    }
    let warm = warmup(sizes.bus_commands);
    for w in &mut ws {
        w.run(warm).await?;
    }
    let mut out: Vec<(bus::Side, Measurement)> =
        sides.iter().map(|&s| (s, Measurement::default())).collect();
    let n_chunks =
        usize::try_from(sizes.bus_commands).map_or(BUS_CHUNKS, |u| u.clamp(1, BUS_CHUNKS));
    for (k, (side, part)) in chunked(sides, sizes.bus_commands, n_chunks)
        .into_iter()
        .enumerate()
    {
        let i = sides.iter().position(|&s| s == side).unwrap_or_default();
        let (commands, elapsed) = ws[i].run(part).await?;
        eprintln!(
            "mink-bench:   BUS chunk {k} ({}): {commands} commands in {:.3} s",
            side.name(),
            elapsed.as_secs_f64()
        );
        out[i].1.add((commands, elapsed));
    }
    for w in &ws {
        w.verify().await?;
    }
    Ok(out)
}

/// W3D: each codec and upcaster on its own stream of one store in a fresh schema.
async fn run_w3d(sizes: &Sizes, payload: &Bytes, url: &str) -> Result<Vec<Line>> {
    let schema = format!("mink_bench_w3d_{}", std::process::id());
    let store = match open_store(url, &schema).await {
        Ok(store) => store,
        Err(e) => {
            let pool = pool(url).await?;
            drop_schema(&pool, &schema).await?;
            pool.close().await;
            return Err(e);
        }
    };
    let result = measure_w3d(sizes, payload, &store).await;
    drop_schema(store.pool(), &schema).await?;
    store.pool().close().await;
    Ok(decode::lines("postgres", &result?))
}

/// Sets up and warms up every W3D implementation, then times them chunk by chunk.
async fn measure_w3d(
    sizes: &Sizes,
    payload: &Bytes,
    store: &PgEventStore,
) -> Result<Vec<(Decode, DecodeResult)>> {
    let mut ws = Vec::with_capacity(Decode::ALL.len());
    for which in Decode::ALL {
        ws.push(Decodes::setup(store.clone(), which, sizes.w3_stream_len, payload).await?);
    }
    let warm = warmup(sizes.w3d_loads);
    for w in &mut ws {
        w.run(warm).await?;
    }
    let mut out: Vec<(Decode, DecodeResult)> = Decode::ALL
        .iter()
        .map(|&d| (d, DecodeResult::default()))
        .collect();
    for (k, (which, part)) in chunked(&Decode::ALL, sizes.w3d_loads, chunks(sizes.w3d_loads))
        .into_iter()
        .enumerate()
    {
        let i = Decode::ALL
            .iter()
            .position(|&d| d == which)
            .unwrap_or_default();
        decode::timed(&mut ws[i], part, k, &mut out[i].1).await?;
    }
    for w in &ws {
        w.verify()?;
    }
    Ok(out)
}

/// Sets up and warms up both sides, then times them chunk by chunk.
async fn measure(
    workload: Workload,
    sizes: &Sizes,
    units: u64,
    payload: &Bytes,
    db: raw::Db,
    store: PgEventStore,
) -> Result<(Measurement, Measurement)> {
    let mut raw_m = Measurement::default();
    let mut mink_m = Measurement::default();
    let warm = warmup(units);
    let mut record = |side: Side, k: usize, (events, elapsed): (u64, Duration)| {
        eprintln!(
            "mink-bench:   {} chunk {k} ({side:?}): {events} events in {:.3} s",
            workload.name(),
            elapsed.as_secs_f64()
        );
        match side {
            Side::Raw => raw_m.add((events, elapsed)),
            Side::Mink => mink_m.add((events, elapsed)),
        }
    };
    match workload {
        Workload::W1 | Workload::W2 => {
            let batch = batch(workload, sizes);
            let mut raw = raw::Appends::new(db, sizes.streams, batch, payload.clone());
            let mut mink = Appends::new(store, sizes.streams, batch, payload.clone())?;
            raw.run(warm).await?;
            mink.run(warm).await?;
            for (k, (side, part)) in schedule(units).into_iter().enumerate() {
                let m = match side {
                    Side::Raw => raw.run(part).await?,
                    Side::Mink => mink.run(part).await?,
                };
                record(side, k, m);
            }
            raw.verify((warm + units) * batch as u64).await?;
            mink.verify((warm + units) * batch as u64).await?;
        }
        Workload::W3 => {
            let mut raw = raw::Loads::setup(db, sizes.w3_stream_len, payload).await?;
            let mut mink = Loads::setup(store, sizes.w3_stream_len, payload).await?;
            raw.run(warm).await?;
            mink.run(warm).await?;
            for (k, (side, part)) in schedule(units).into_iter().enumerate() {
                let m = match side {
                    Side::Raw => raw.run(part).await?,
                    Side::Mink => mink.run(part).await?,
                };
                record(side, k, m);
            }
        }
        Workload::W4 => {
            let mut raw = raw::Concurrent::new(db, sizes, payload.clone());
            let mut mink = Concurrent::new(store, sizes, payload.clone())?;
            raw.run(warm).await?;
            mink.run(warm).await?;
            for (k, (side, part)) in schedule(units).into_iter().enumerate() {
                let m = match side {
                    Side::Raw => raw.run(part).await?,
                    Side::Mink => mink.run(part).await?,
                };
                record(side, k, m);
            }
            raw.verify((warm + units) * sizes.w4_tasks as u64).await?;
            mink.verify((warm + units) * sizes.w4_tasks as u64).await?;
        }
        Workload::Bus | Workload::W3D | Workload::Outbox | Workload::Proj => {
            return Err(anyhow!("workload {} does not run here", workload.name()));
        }
    }
    Ok((raw_m, mink_m))
}

async fn pool(url: &str) -> Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(CONNECTIONS)
        .acquire_timeout(Duration::from_secs(60))
        .connect(url)
        .await?)
}

async fn drop_schema(pool: &PgPool, schema: &str) -> Result<()> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    )))
    .execute(pool)
    .await?;
    Ok(())
}

/// Events per append of an append workload.
fn batch(workload: Workload, sizes: &Sizes) -> usize {
    if workload == Workload::W2 {
        sizes.w2_batch
    } else {
        1
    }
}
