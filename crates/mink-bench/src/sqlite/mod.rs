//! The SQLite backend: each workload on `mink_sqlite::SqliteStore` and, in the same
//! run, on raw rusqlite ([`raw`]).
//!
//! How the two are kept comparable:
//!
//! - Each side's share of a workload is split into two runs, and the four runs go in
//!   ABBA order (raw, mink, mink, raw), so a slow drift of a shared machine hits both
//!   sides alike.
//! - Each run gets a fresh database file, opens its connections, sets up (W3 writes its
//!   stream), warms up, is timed, checks its result and closes everything. Only one
//!   side's connections are open at any time: SQLite's page cache is one pool per
//!   process in this build, and interleaving the two sides made them evict each other's
//!   pages (raw lost up to half its throughput that way).
//! - The raw table is created from mink-sqlite's own migration and compared with
//!   mink-sqlite's table at run time.
//!
//! BUS and W3D compare more than two implementations, all of them mink on
//! `SqliteStore`, in the same way: mirrored order (A B C C B A), each run with a fresh
//! database file, its own connections (only one run's are open at a time) and the
//! same warm-up. W3D runs each implementation twice; BUS four times (the mirrored
//! order twice), since a command's few tens of microseconds drift more on a shared
//! machine than W3D's long loads. BUS's `mink-stores` keeps its idempotency keys and
//! audit log in the same file (`SqliteStore::idempotency_store`,
//! `SqliteStore::audit_store`).

mod outbox;
mod proj;
mod raw;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow, ensure};
use bytes::Bytes;
use mink_sqlite::SqliteStore;
use rusqlite::{Connection, OpenFlags};

use crate::bus::{self, CommandStores};
use crate::common::{Measurement, Sizes, split, warmup};
use crate::decode;
use crate::workloads::{Appends, Concurrent, Loads};
use crate::{Line, Workload};

/// One side of the comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Raw,
    Mink,
}

/// The order of the four runs of a workload.
const ORDER: [Side; 4] = [Side::Raw, Side::Mink, Side::Mink, Side::Raw];

/// Runs `workload` on mink-sqlite and on raw rusqlite, in files under `dir`, and reports
/// a raw line and a mink line.
pub async fn run(
    workload: Workload,
    sizes: &Sizes,
    payload: &Bytes,
    dir: &Path,
) -> Result<Vec<Line>> {
    let name = workload.name().to_lowercase();
    // The workload's units (appends, loads or appends per task), in two halves.
    let units = match workload {
        Workload::W1 => sizes.w1_events,
        Workload::W2 => sizes.w2_events / sizes.w2_batch as u64,
        Workload::W3 => sizes.w3_loads,
        Workload::W4 => sizes.w4_events_per_task,
        Workload::Bus => return run_bus(sizes, dir).await,
        Workload::W3D => return run_w3d(sizes, payload, dir).await,
        Workload::Outbox => return outbox::run(sizes, payload, dir).await,
        Workload::Proj => return proj::run(sizes, payload, dir).await,
    };
    let halves = split(units, 2);
    let mut raw_m = Measurement::default();
    let mut mink_m = Measurement::default();
    let mut seen = [0usize; 2];
    for (k, side) in ORDER.into_iter().enumerate() {
        let nth = &mut seen[side as usize];
        let part = halves[*nth];
        *nth += 1;
        let path = dir.join(format!("{name}-{k}-{side:?}.db").to_lowercase());
        let (events, elapsed) = match side {
            Side::Raw => run_raw(workload, sizes, part, &path, payload).await?,
            Side::Mink => run_mink(workload, sizes, part, &path, payload).await?,
        };
        eprintln!(
            "mink-bench:   {} run {k} ({side:?}): {events} events in {:.3} s",
            workload.name(),
            elapsed.as_secs_f64()
        );
        match side {
            Side::Raw => raw_m.add((events, elapsed)),
            Side::Mink => mink_m.add((events, elapsed)),
        }
    }
    check_same_schema(
        &dir.join(format!("{name}-0-raw.db")),
        &dir.join(format!("{name}-1-mink.db")),
    )?;
    Ok(vec![
        Line::new(workload, "sqlite", "raw", raw_m),
        Line::new(workload, "sqlite", "mink", mink_m).against_raw(raw_m),
    ])
}

/// BUS: the handler called directly, through the bus, and through the bus with the
/// store-backed middlewares, each run in a fresh database file under `dir`.
async fn run_bus(sizes: &Sizes, dir: &Path) -> Result<Vec<Line>> {
    let sides = [bus::Side::Raw, bus::Side::Mink, bus::Side::MinkStores];
    let results = bus::mirrored_runs(sizes, &sides, async |side, k| {
        let path = dir.join(format!("bus-{k}-{}.db", side.name()));
        let store = SqliteStore::open(&path)?;
        let stores = CommandStores {
            idempotency: Arc::new(store.idempotency_store()),
            audit: Arc::new(store.audit_store()),
        };
        Ok((store, Some(stores)))
    })
    .await?;
    Ok(bus::lines("sqlite", &results))
}

/// W3D: each codec and upcaster, each run in a fresh database file under `dir`.
async fn run_w3d(sizes: &Sizes, payload: &Bytes, dir: &Path) -> Result<Vec<Line>> {
    let results = decode::mirrored_runs(sizes, payload, async |which, k| {
        let path = dir.join(format!("w3d-{k}-{}.db", which.name()));
        Ok(SqliteStore::open(&path)?)
    })
    .await?;
    Ok(decode::lines("sqlite", &results))
}

/// The error of a workload that has no raw-driver or plain-store run here (BUS and
/// W3D are run by their own functions).
fn not_a_store_workload(workload: Workload) -> anyhow::Error {
    anyhow!("workload {} does not run here", workload.name())
}

/// One raw run of `units` units of `workload` in a fresh database at `path`.
async fn run_raw(
    workload: Workload,
    sizes: &Sizes,
    units: u64,
    path: &Path,
    payload: &Bytes,
) -> Result<(u64, Duration)> {
    // The raw side holds the JSON as text, as hand-written code would; mink-sqlite
    // stores JSON payloads as TEXT too, so both write the same rows.
    let text: Arc<str> = Arc::from(std::str::from_utf8(payload)?);
    let db = raw::Db::create(path)?;
    let warm = warmup(units);
    match workload {
        Workload::W1 | Workload::W2 => {
            let batch = batch(workload, sizes);
            let mut w = raw::Appends::new(db, sizes.streams, batch, text);
            w.run(warm)?;
            let measured = w.run(units)?;
            w.verify((warm + units) * batch as u64)?;
            Ok(measured)
        }
        Workload::W3 => {
            let mut w = raw::Loads::setup(db, sizes.w3_stream_len, &text)?;
            w.run(warm)?;
            w.run(units)
        }
        Workload::W4 => {
            let mut w = raw::Concurrent::new(db, sizes, text);
            w.run(warm).await?;
            let measured = w.run(units).await?;
            w.verify((warm + units) * sizes.w4_tasks as u64)?;
            Ok(measured)
        }
        Workload::Bus | Workload::W3D | Workload::Outbox | Workload::Proj => {
            Err(not_a_store_workload(workload))
        }
    }
}

/// One mink run of `units` units of `workload` in a fresh store at `path`.
async fn run_mink(
    workload: Workload,
    sizes: &Sizes,
    units: u64,
    path: &Path,
    payload: &Bytes,
) -> Result<(u64, Duration)> {
    let store = SqliteStore::open(path)?;
    let warm = warmup(units);
    match workload {
        Workload::W1 | Workload::W2 => {
            let batch = batch(workload, sizes);
            let mut w = Appends::new(store, sizes.streams, batch, payload.clone())?;
            w.run(warm).await?;
            let measured = w.run(units).await?;
            w.verify((warm + units) * batch as u64).await?;
            Ok(measured)
        }
        Workload::W3 => {
            let mut w = Loads::setup(store, sizes.w3_stream_len, payload).await?;
            w.run(warm).await?;
            w.run(units).await
        }
        Workload::W4 => {
            let mut w = Concurrent::new(store, sizes, payload.clone())?;
            w.run(warm).await?;
            let measured = w.run(units).await?;
            w.verify((warm + units) * sizes.w4_tasks as u64).await?;
            Ok(measured)
        }
        Workload::Bus | Workload::W3D | Workload::Outbox | Workload::Proj => {
            Err(not_a_store_workload(workload))
        }
    }
}

/// Events per append of an append workload.
fn batch(workload: Workload, sizes: &Sizes) -> usize {
    if workload == Workload::W2 {
        sizes.w2_batch
    } else {
        1
    }
}

/// Checks that the raw database's `mink_events` table and indexes are defined exactly
/// as mink-sqlite's.
fn check_same_schema(raw_path: &Path, mink_path: &Path) -> Result<()> {
    fn schema(path: &Path) -> Result<Vec<(String, String, Option<String>)>> {
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let mut stmt = conn.prepare(
            "SELECT type, name, sql FROM sqlite_master WHERE tbl_name = 'mink_events' \
             ORDER BY type, name",
        )?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }
    let raw = schema(raw_path)?;
    let mink = schema(mink_path)?;
    ensure!(
        !mink.is_empty() && raw == mink,
        "the raw table differs from mink-sqlite's:\nraw:  {raw:?}\nmink: {mink:?}"
    );
    Ok(())
}
