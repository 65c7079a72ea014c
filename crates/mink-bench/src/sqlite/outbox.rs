//! OUTBOX on SQLite (see [`crate::outbox`]): `SqliteOutboxStore` delivering to Kafka
//! (when `MINK_KAFKA_BROKERS` is set) and to a webhook receiver. No raw baseline.
//!
//! Each publisher gets a fresh database file opened with an outbox routing every event
//! to [`DESTINATION`], filled (untimed) with the warm-up and timed messages round by
//! round (version `r` of every stream in round `r`) by single-event appends, and
//! delivers its warm-up messages untimed before one timed run; then the counts and
//! the receiving side are checked.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use bytes::Bytes;
use mink_es::outbox::{Outbox, OutboxStore, Route};
use mink_es::{ExpectedVersion, StreamWriter};
use mink_sqlite::{SqliteConfig, SqliteStore};

use crate::common::{Measurement, Sizes, new_event, stream_ids, warmup};
use crate::outbox::{DESTINATION, Drain, Sink, Target, prefill_rounds, processor_config};
use crate::{Line, Workload};

/// OUTBOX on SQLite: `kafka` (when `MINK_KAFKA_BROKERS` is set), then `webhook`.
pub async fn run(sizes: &Sizes, payload: &Bytes, dir: &Path) -> Result<Vec<Line>> {
    let mut lines = Vec::new();
    for target in Target::available("sqlite") {
        let path = dir.join(format!("outbox-{}.db", target.name()));
        let m = run_one(target, sizes, payload, &path).await?;
        lines.push(Line::new(Workload::Outbox, "sqlite", target.name(), m));
    }
    Ok(lines)
}

async fn run_one(
    target: Target,
    sizes: &Sizes,
    payload: &Bytes,
    path: &Path,
) -> Result<Measurement> {
    let warm = warmup(sizes.outbox_messages);
    let total = warm + sizes.outbox_messages;
    let store = SqliteStore::open_with_outbox(
        path,
        SqliteConfig::default(),
        Outbox::new().route(Route::all(DESTINATION))?,
    )?;
    prefill(&store, sizes, total, payload).await?;
    let sink = Sink::create(target, &format!("sqlite-{}", target.name())).await?;
    let result = async {
        let outbox: Arc<dyn OutboxStore> = Arc::new(store.outbox_store());
        let mut drain = Drain::new(
            outbox,
            sink.publisher(),
            &processor_config(sizes),
            sizes.outbox_workers,
        );
        drain.run(warm).await?;
        let warm_profile = drain.profile();
        let mut m = Measurement::default();
        m.add(drain.run(total).await?);
        drain.verify(total).await?;
        sink.verify(total).await?;
        eprintln!(
            "mink-bench:   OUTBOX {}",
            drain
                .profile()
                .minus(&warm_profile)
                .describe(&format!("sqlite {}", target.name()), drain.workers())
        );
        anyhow::Ok(m)
    }
    .await;
    sink.close().await;
    result
}

/// Fills the outbox with `messages` messages, round by round.
async fn prefill(store: &SqliteStore, sizes: &Sizes, messages: u64, payload: &Bytes) -> Result<()> {
    let start = Instant::now();
    let streams = stream_ids(0, sizes.outbox_streams)?;
    for (round, n) in prefill_rounds(messages, sizes.outbox_streams)
        .into_iter()
        .enumerate()
    {
        for stream in &streams[..n] {
            store
                .append(
                    stream,
                    ExpectedVersion::from_version(round as u64),
                    vec![new_event(payload)],
                )
                .await
                .context("filling the outbox")?;
        }
    }
    eprintln!(
        "mink-bench:   OUTBOX: filled {} with {messages} messages in {:.1} s (untimed)",
        store.path().display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
