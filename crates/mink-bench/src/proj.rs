//! PROJ: events/s of an async projection that keeps a SQL read model, catching up with a
//! pre-filled store, on SQLite and PostgreSQL.
//!
//! The store holds [`Sizes::proj_events`] events over [`Sizes::proj_streams`] streams
//! (appended untimed, stream by stream). The projection keeps one [`Balance`] row per
//! stream: for each event it reads the stream's row and writes it back one event later
//! (`get` then `upsert` through a typed `ReadModelRepository`), in the transaction that
//! also moves its checkpoint (`SqliteProjectionTarget`, `PgProjectionTarget`).
//! A run is timed from the engine's start until every worker's checkpoint reached the
//! feed's head, then the read model is checked: one row per stream, the event counts
//! adding up to the events in the store.
//!
//! Implementations: `mink-p1` (one worker), `mink-p4` (partitioned by stream over four
//! workers), and `raw`: the same read model kept by hand-written SQL, a batch read from
//! the events table in feed order, then one transaction per batch with one
//! `INSERT … ON CONFLICT DO UPDATE` per event and the checkpoint's `UPDATE`, with the
//! same batch size. Each run gets a fresh store (file or schema), pre-filled untimed,
//! in the order raw, p1, p4, p4, p1, raw; each implementation's figure is its two runs
//! together.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use bytes::Bytes;
use futures::future::BoxFuture;
use mink_es::projection::{
    AsyncOptions, ProjectionControl, ProjectionEngine, ProjectionError, ReadModelProjection,
};
use mink_es::readmodel::{Field, Query, ReadModel, ReadModelRepository, ReadModelStore, Schema};
use mink_es::{ExpectedVersion, Position, StoredEvent, StreamWriter};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::common::{Measurement, Sizes, new_event, stream_ids};

/// Events per batch, for mink's workers and for the raw loop.
pub const BATCH: usize = 1000;

/// The read model: per stream, how many events and payload bytes it holds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Balance {
    /// The stream id.
    pub id: String,
    /// Events seen.
    pub events: i64,
    /// Payload bytes seen.
    pub bytes: i64,
    /// The last version seen.
    pub last_version: i64,
}

impl ReadModel for Balance {
    const NAME: &'static str = "bench_balances";
    const FIELDS: &'static [Field] = &[
        Field::text("id"),
        Field::integer("events"),
        Field::integer("bytes"),
        Field::integer("last_version"),
    ];
}

/// The projection (each run has a store of its own).
pub struct Balances {
    schema: Schema,
}

impl Balances {
    /// The projection.
    pub fn new() -> Result<Self> {
        Ok(Balances {
            schema: Schema::of::<Balance>()?,
        })
    }
}

impl ReadModelProjection for Balances {
    fn name(&self) -> &str {
        "bench_balances"
    }

    fn models(&self) -> mink_es::Result<Vec<Schema>> {
        Ok(vec![self.schema.clone()])
    }

    fn apply<'a>(
        &'a self,
        models: &'a dyn ReadModelStore,
        events: &'a [StoredEvent],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            let balances = ReadModelRepository::<Balance, _>::new(models);
            for e in events {
                let id = e.stream_id.as_str();
                let mut b = match balances.get(id).await? {
                    Some(b) => b.model,
                    None => Balance {
                        id: id.to_owned(),
                        events: 0,
                        bytes: 0,
                        last_version: 0,
                    },
                };
                b.events += 1;
                b.bytes += e.payload.len() as i64;
                b.last_version = e.version as i64;
                balances.upsert(&b).await?;
            }
            Ok(())
        })
    }
}

/// Appends `sizes.proj_events` events over `sizes.proj_streams` streams, stream by
/// stream in appends of up to 100; returns the feed's head after them.
pub async fn prefill<S: StreamWriter>(
    store: &S,
    sizes: &Sizes,
    payload: &Bytes,
) -> Result<Position> {
    let streams = stream_ids(0, sizes.proj_streams)?;
    let per = crate::common::split(sizes.proj_events, streams.len());
    let mut head = Position::START;
    for (id, n) in streams.iter().zip(per) {
        let mut left = n;
        while left > 0 {
            let k = left.min(100);
            let r = store
                .append(
                    id,
                    ExpectedVersion::Any,
                    (0..k).map(|_| new_event(payload)).collect(),
                )
                .await?;
            if let Some(last) = r.events.last() {
                head = head.max(last.position);
            }
            left -= k;
        }
    }
    Ok(head)
}

/// The options mink's workers run with.
pub fn options() -> AsyncOptions {
    AsyncOptions {
        batch_size: BATCH,
        poll_interval: Duration::from_millis(5),
        lease_ttl: Duration::from_secs(30),
        ..AsyncOptions::default()
    }
}

/// Runs `engine` until every status named `name` or `name#…` reports a checkpoint at or
/// after `head` (`workers` of them); returns the time from start to then.
pub async fn time_engine<S>(
    engine: ProjectionEngine<S>,
    control: &dyn ProjectionControl,
    name: &str,
    workers: usize,
    head: Position,
) -> Result<Duration>
where
    S: mink_es::FeedReader + Clone + 'static,
{
    let cancel = CancellationToken::new();
    let start = Instant::now();
    let handle = engine.start(cancel.clone());
    let prefix = format!("{name}#");
    let deadline = start + Duration::from_secs(600);
    let elapsed = loop {
        let statuses = control.statuses().await?;
        let ours: Vec<_> = statuses
            .iter()
            .filter(|s| s.name == name || s.name.starts_with(&prefix))
            .collect();
        let done = ours
            .iter()
            .filter(|s| s.checkpoint.is_some_and(|c| c >= head))
            .count();
        if done >= workers {
            break start.elapsed();
        }
        if let Some(err) = ours.iter().find_map(|s| s.last_error.clone()) {
            handle.shutdown().await;
            anyhow::bail!("projection {name} failed: {err}");
        }
        ensure!(
            Instant::now() < deadline,
            "projection {name} did not catch up in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    handle.shutdown().await;
    Ok(elapsed)
}

/// Checks the read model a run built: one row per stream, events adding up.
pub async fn verify(models: &dyn ReadModelStore, sizes: &Sizes) -> Result<()> {
    let balances = ReadModelRepository::<Balance, _>::new(models);
    balances.ensure_table().await?;
    let rows = balances.find(&Query::new()).await?;
    ensure!(
        rows.len() == sizes.proj_streams,
        "{} rows, expected {}",
        rows.len(),
        sizes.proj_streams
    );
    let total: i64 = rows.iter().map(|r| r.model.events).sum();
    ensure!(
        total == sizes.proj_events as i64,
        "{total} events counted, expected {}",
        sizes.proj_events
    );
    Ok(())
}

/// Which implementation a run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Hand-written SQL.
    Raw,
    /// mink, one worker.
    P1,
    /// mink, four partitions.
    P4,
}

impl Side {
    /// The `impl=` name.
    pub fn name(self) -> &'static str {
        match self {
            Side::Raw => "raw",
            Side::P1 => "mink-p1",
            Side::P4 => "mink-p4",
        }
    }
}

/// The run order: raw, p1, p4, p4, p1, raw.
pub const ORDER: [Side; 6] = [Side::Raw, Side::P1, Side::P4, Side::P4, Side::P1, Side::Raw];

/// Adds one run to the figures.
pub fn record(figures: &mut [(Side, Measurement); 3], side: Side, events: u64, t: Duration) {
    if let Some((_, m)) = figures.iter_mut().find(|(s, _)| *s == side) {
        m.add((events, t));
    }
    eprintln!(
        "mink-bench:   PROJ {}: {events} events in {:.3} s",
        side.name(),
        t.as_secs_f64()
    );
}

/// The lines of a backend's figures.
pub fn lines(backend: &'static str, figures: &[(Side, Measurement); 3]) -> Vec<crate::Line> {
    let raw = figures[0].1;
    figures
        .iter()
        .map(|&(side, m)| {
            let line = crate::Line::new(crate::Workload::Proj, backend, side.name(), m);
            if side == Side::Raw {
                line
            } else {
                line.against_raw(raw)
            }
        })
        .collect()
}

/// Empty figures, in `lines` order.
pub fn figures() -> [(Side, Measurement); 3] {
    [
        (Side::Raw, Measurement::default()),
        (Side::P1, Measurement::default()),
        (Side::P4, Measurement::default()),
    ]
}
