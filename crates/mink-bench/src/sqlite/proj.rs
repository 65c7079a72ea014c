//! PROJ on SQLite (see [`crate::proj`]): `SqliteProjectionTarget` with one worker and
//! with four partitions, against the same read model kept with raw rusqlite. Each run
//! gets a fresh database file.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use bytes::Bytes;
use mink_es::Position;
use mink_es::projection::{ProjectionControl, ProjectionEngine};
use mink_sqlite::{SqliteConfig, SqliteProjectionTarget, SqliteStore};
use rusqlite::{Connection, OpenFlags, params};

use crate::Line;
use crate::common::Sizes;
use crate::proj::{self, Balances, Side};

/// PROJ on SQLite: `raw`, `mink-p1`, `mink-p4`.
pub async fn run(sizes: &Sizes, payload: &Bytes, dir: &Path) -> Result<Vec<Line>> {
    let mut figures = proj::figures();
    for (run, &side) in proj::ORDER.iter().enumerate() {
        let path = dir.join(format!("proj-{run}.db"));
        let store = SqliteStore::open(&path)?;
        let head = proj::prefill(&store, sizes, payload).await?;
        let elapsed = match side {
            Side::Raw => {
                drop(store);
                let t = raw(&path, head)?;
                verify_raw(&path, sizes)?;
                t
            }
            Side::P1 | Side::P4 => {
                let control = store.projection_control();
                let shared: Arc<dyn ProjectionControl> = Arc::new(control.clone());
                let mut engine = ProjectionEngine::new(store.clone(), shared);
                let workers = if side == Side::P1 {
                    engine.add(
                        SqliteProjectionTarget::new(&store, Balances::new()?),
                        proj::options(),
                    )?;
                    1
                } else {
                    let projection = Arc::new(Balances::new()?);
                    engine.add_partitioned(
                        "bench_balances",
                        4,
                        |i, n| {
                            SqliteProjectionTarget::partitioned(&store, projection.clone(), i, n)
                        },
                        proj::options(),
                    )?;
                    4
                };
                let t =
                    proj::time_engine(engine, &control, "bench_balances", workers, head).await?;
                proj::verify(&store.read_models(), sizes).await?;
                t
            }
        };
        proj::record(&mut figures, side, sizes.proj_events, elapsed);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
    Ok(proj::lines("sqlite", &figures))
}

/// The raw projection: batches read in feed order, one transaction per batch with an
/// upsert per event and the checkpoint. Returns its time.
fn raw(path: &Path, head: Position) -> Result<Duration> {
    let config = SqliteConfig::default();
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(config.busy_timeout)?;
    conn.pragma_update(None, "synchronous", super::raw::synchronous())?;
    conn.execute_batch(
        "CREATE TABLE raw_balances (id TEXT PRIMARY KEY, events INTEGER NOT NULL, \
           bytes INTEGER NOT NULL, last_version INTEGER NOT NULL); \
         CREATE TABLE raw_checkpoint (name TEXT PRIMARY KEY, position INTEGER NOT NULL); \
         INSERT INTO raw_checkpoint VALUES ('balances', 0);",
    )?;
    let head = i64::try_from(head.minor())?;
    let start = Instant::now();
    let mut cp: i64 = conn.query_row(
        "SELECT position FROM raw_checkpoint WHERE name = 'balances'",
        [],
        |r| r.get(0),
    )?;
    while cp < head {
        let batch: Vec<(i64, String, i64, i64)> = {
            let mut read = conn.prepare_cached(
                "SELECT position, stream_id, version, length(payload) FROM mink_events \
                 WHERE position > ?1 ORDER BY position LIMIT ?2",
            )?;
            read.query_map(params![cp, proj::BATCH as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect::<rusqlite::Result<_>>()?
        };
        let Some(last) = batch.last().map(|b| b.0) else {
            break;
        };
        conn.execute_batch("BEGIN IMMEDIATE")?;
        {
            let mut upsert = conn.prepare_cached(
                "INSERT INTO raw_balances (id, events, bytes, last_version) VALUES (?1, 1, ?2, ?3) \
                 ON CONFLICT (id) DO UPDATE SET events = events + 1, \
                   bytes = bytes + excluded.bytes, last_version = excluded.last_version",
            )?;
            for (_, stream, version, len) in &batch {
                upsert.execute(params![stream, len, version])?;
            }
            conn.prepare_cached("UPDATE raw_checkpoint SET position = ?1 WHERE name = 'balances'")?
                .execute(params![last])?;
        }
        conn.execute_batch("COMMIT")?;
        cp = last;
    }
    Ok(start.elapsed())
}

fn verify_raw(path: &Path, sizes: &Sizes) -> Result<()> {
    let conn = Connection::open(path)?;
    let (rows, events): (i64, i64) = conn.query_row(
        "SELECT count(*), coalesce(sum(events), 0) FROM raw_balances",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    ensure!(
        rows as usize == sizes.proj_streams && events as u64 == sizes.proj_events,
        "raw: {rows} rows and {events} events, expected {} and {}",
        sizes.proj_streams,
        sizes.proj_events
    );
    Ok(())
}
