//! OUTBOX on PostgreSQL (see [`crate::outbox`]): `PgOutboxStore` delivering to Kafka
//! and to a webhook receiver, and to Kafka a raw baseline ([`RawRelay`]).
//!
//! Each side gets a fresh schema of a `PgEventStore` built with an outbox routing every
//! event to [`DESTINATION`], migrated, and filled (untimed) with the warm-up messages
//! and then the timed ones, round by round (version `r` of every stream in round `r`),
//! by 8 concurrent transactions per round of `append_in` calls; then `VACUUM ANALYZE`
//! of its `outbox` table, so that every side starts from the same settled table (hint
//! bits set, statistics for the planner) rather than from whatever autovacuum did
//! meanwhile. Each side delivers its warm-up messages (a tenth, at most 1,000: the
//! first round or so, which opens the connections and the producer) untimed.
//!
//! `raw-kafka` and `kafka` are timed in two chunks each, in ABBA order (raw, mink,
//! mink, raw), on their own topics; `webhook` in one run. Every side checks its result
//! afterwards (the table's counts and what the receiving side got), and the schemas
//! and topics are dropped.
//!
//! The raw baseline is the hand-written relay people write first: one relay, in one
//! transaction per batch, `SELECT … FROM outbox WHERE status = 'pending' ORDER BY seq
//! LIMIT $batch FOR UPDATE SKIP LOCKED`, every row produced with rdkafka directly
//! (the producer made from the same configuration as the `KafkaPublisher`, the same
//! key, payload and `mink-*` headers; enqueued, then all delivery reports awaited),
//! then `UPDATE … SET status = 'delivered' WHERE seq = ANY($seqs)` and `COMMIT`. It
//! keeps each stream's order only because it is alone and produces in `seq` order
//! through an idempotent producer; it has no leases, no per-message retry and no
//! attempt counting, and it is not limited to one message per stream per round. It
//! reads the same table (mink's schema) filled the same way, in batches of the
//! processors' claim size (`--outbox-batch`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use mink_es::ExpectedVersion;
use mink_es::outbox::{Outbox, OutboxStore, Route};
use mink_kafka::KafkaPublisher;
use mink_kafka::headers as kh;
use mink_postgres::PgEventStore;
use mink_postgres::sqlx::{self, AssertSqlSafe, PgPool, Row};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use uuid::Uuid;

use super::{CONNECTIONS, drop_schema, pool};
use crate::common::{Measurement, Sizes, chunked, new_event, stream_ids, warmup};
use crate::outbox::{
    DESTINATION, Drain, Profile, Sink, Target, create_topic, prefill_rounds, processor_config,
    read_topic, topic_name,
};
use crate::{Line, Workload};

/// Timed chunks per side of the Kafka comparison.
const CHUNKS: usize = 2;

/// The sides of the Kafka comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Raw,
    Mink,
}

/// OUTBOX on PostgreSQL: `raw-kafka` and `kafka` (when `MINK_KAFKA_BROKERS` is set),
/// then `webhook`.
pub async fn run(sizes: &Sizes, payload: &Bytes, url: &str) -> Result<Vec<Line>> {
    let mut lines = Vec::new();
    for target in Target::available("postgres") {
        match target {
            Target::Kafka => lines.extend(run_kafka(sizes, payload, url).await?),
            Target::Webhook => lines.push(run_webhook(sizes, payload, url).await?),
        }
    }
    Ok(lines)
}

/// A schema name for this process and `label`.
fn schema_name(label: &str) -> String {
    format!("mink_bench_outbox_{label}_{}", std::process::id())
}

/// A migrated store in the fresh schema `schema` whose outbox routes every event to
/// [`DESTINATION`]; the schema is dropped again if that fails.
async fn open_outbox_store(url: &str, schema: &str) -> Result<PgEventStore> {
    let opened = async {
        let store = PgEventStore::builder(url)
            .schema(schema)
            .max_connections(CONNECTIONS)
            .acquire_timeout(Duration::from_secs(60))
            .outbox(Outbox::new().route(Route::all(DESTINATION))?)
            .build()
            .await?;
        store.migrate().await?;
        anyhow::Ok(store)
    }
    .await;
    if opened.is_err() {
        let pool = pool(url).await?;
        drop_schema(&pool, schema).await?;
        pool.close().await;
    }
    opened
}

/// Fills the outbox with `messages` messages (see the module docs) and settles the
/// table.
async fn prefill(
    store: &PgEventStore,
    sizes: &Sizes,
    messages: u64,
    payload: &Bytes,
) -> Result<()> {
    let start = Instant::now();
    let streams = stream_ids(0, sizes.outbox_streams)?;
    let tasks = CONNECTIONS as usize;
    for (round, n) in prefill_rounds(messages, sizes.outbox_streams)
        .into_iter()
        .enumerate()
    {
        let per = n.div_ceil(tasks);
        let appends = streams[..n].chunks(per.max(1)).map(|chunk| async move {
            let mut tx = store.begin().await?;
            for stream in chunk {
                store
                    .append_in(
                        &mut tx,
                        stream,
                        ExpectedVersion::from_version(round as u64),
                        vec![new_event(payload)],
                    )
                    .await?;
            }
            tx.commit().await?;
            anyhow::Ok(())
        });
        for r in futures::future::join_all(appends).await {
            r.context("filling the outbox")?;
        }
    }
    sqlx::raw_sql(AssertSqlSafe(format!(
        "VACUUM ANALYZE {}.outbox",
        store.schema().quoted()
    )))
    .execute(store.pool())
    .await?;
    eprintln!(
        "mink-bench:   OUTBOX: filled {} with {messages} messages over {} streams in {:.1} s (untimed)",
        store.schema(),
        sizes.outbox_streams.min(messages as usize),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Stores in fresh schemas, one per label, filled; all schemas are dropped on failure.
async fn open_filled(
    url: &str,
    labels: &[&str],
    sizes: &Sizes,
    messages: u64,
    payload: &Bytes,
) -> Result<Vec<(String, PgEventStore)>> {
    let mut stores = Vec::new();
    let mut opened = Ok(());
    for label in labels {
        let schema = schema_name(label);
        match open_outbox_store(url, &schema).await {
            Ok(store) => {
                stores.push((schema, store.clone()));
                if let Err(e) = prefill(&store, sizes, messages, payload).await {
                    opened = Err(e);
                    break;
                }
            }
            Err(e) => {
                opened = Err(e);
                break;
            }
        }
    }
    if let Err(e) = opened {
        close(&stores).await?;
        return Err(e);
    }
    Ok(stores)
}

async fn close(stores: &[(String, PgEventStore)]) -> Result<()> {
    for (schema, store) in stores {
        drop_schema(store.pool(), schema).await?;
        store.pool().close().await;
    }
    Ok(())
}

/// `webhook`: one store, one receiver, one timed run.
async fn run_webhook(sizes: &Sizes, payload: &Bytes, url: &str) -> Result<Line> {
    let warm = warmup(sizes.outbox_messages);
    let total = warm + sizes.outbox_messages;
    let stores = open_filled(url, &["webhook"], sizes, total, payload).await?;
    let sink = Sink::create(Target::Webhook, "webhook").await;
    let result = match sink {
        Ok(sink) => {
            let r = measure_single(&stores[0].1, &sink, sizes, warm, "webhook").await;
            sink.close().await;
            r
        }
        Err(e) => Err(e),
    };
    close(&stores).await?;
    Ok(Line::new(Workload::Outbox, "postgres", "webhook", result?))
}

/// Warm-up, one timed run, checks.
async fn measure_single(
    store: &PgEventStore,
    sink: &Sink,
    sizes: &Sizes,
    warm: u64,
    label: &str,
) -> Result<Measurement> {
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
    m.add(drain.run(warm + sizes.outbox_messages).await?);
    drain.verify(warm + sizes.outbox_messages).await?;
    sink.verify(warm + sizes.outbox_messages).await?;
    report(label, &drain, &warm_profile);
    Ok(m)
}

/// Prints the profile of a drain's timed rounds (its total less the warm-up's).
fn report(label: &str, drain: &Drain, warm: &Profile) {
    eprintln!(
        "mink-bench:   OUTBOX {}",
        drain.profile().minus(warm).describe(label, drain.workers())
    );
}

/// `raw-kafka` and `kafka`: two stores, two topics, chunks in ABBA order.
async fn run_kafka(sizes: &Sizes, payload: &Bytes, url: &str) -> Result<Vec<Line>> {
    let warm = warmup(sizes.outbox_messages);
    let total = warm + sizes.outbox_messages;
    let stores = open_filled(url, &["raw", "kafka"], sizes, total, payload).await?;
    let result = measure_kafka(sizes, &stores, warm).await;
    close(&stores).await?;
    let (raw, mink) = result?;
    Ok(vec![
        Line::new(Workload::Outbox, "postgres", "raw-kafka", raw),
        Line::new(Workload::Outbox, "postgres", "kafka", mink).against_raw(raw),
    ])
}

async fn measure_kafka(
    sizes: &Sizes,
    stores: &[(String, PgEventStore)],
    warm: u64,
) -> Result<(Measurement, Measurement)> {
    let brokers = crate::outbox::brokers().context("MINK_KAFKA_BROKERS is not set")?;
    let raw_topic = topic_name("raw");
    create_topic(&brokers, &raw_topic).await?;
    let sink = match Sink::create(Target::Kafka, "kafka").await {
        Ok(sink) => sink,
        Err(e) => {
            crate::outbox::delete_topic(&brokers, &raw_topic).await;
            return Err(e);
        }
    };
    let result = async {
        let mut raw = RawRelay::new(&stores[0].1, &brokers, &raw_topic, sizes.outbox_batch)?;
        let outbox: Arc<dyn OutboxStore> = Arc::new(stores[1].1.outbox_store());
        let mut mink = Drain::new(
            outbox,
            sink.publisher(),
            &processor_config(sizes),
            sizes.outbox_workers,
        );
        raw.run(warm).await?;
        let raw_warm = raw.profile;
        mink.run(warm).await?;
        let mink_warm = mink.profile();
        let mut raw_m = Measurement::default();
        let mut mink_m = Measurement::default();
        let mut mink_done = warm;
        for (k, (side, part)) in chunked(&[Side::Raw, Side::Mink], sizes.outbox_messages, CHUNKS)
            .into_iter()
            .enumerate()
        {
            let (n, elapsed) = match side {
                Side::Raw => raw.run(part).await?,
                Side::Mink => {
                    mink_done += part;
                    mink.run(mink_done).await?
                }
            };
            eprintln!(
                "mink-bench:   OUTBOX chunk {k} ({side:?}): {n} messages in {:.3} s",
                elapsed.as_secs_f64()
            );
            match side {
                Side::Raw => raw_m.add((n, elapsed)),
                Side::Mink => mink_m.add((n, elapsed)),
            }
        }
        let total = warm + sizes.outbox_messages;
        raw.verify(total).await?;
        mink.verify(total).await?;
        // Both topics read back at once.
        let (raw_topic_seen, mink_topic_checked) =
            tokio::join!(read_topic(&brokers, &raw_topic, total), sink.verify(total));
        raw_topic_seen?.check(total, &raw_topic)?;
        mink_topic_checked?;
        let raw_timed = raw.profile.minus(&raw_warm);
        eprintln!(
            "mink-bench:   OUTBOX {}",
            raw_timed.describe("raw-kafka", 1)
        );
        report("kafka", &mink, &mink_warm);
        raw.close().await;
        anyhow::Ok((raw_m, mink_m))
    }
    .await;
    sink.close().await;
    crate::outbox::delete_topic(&brokers, &raw_topic).await;
    result
}

/// The raw baseline relay (see the module docs).
struct RawRelay {
    pool: PgPool,
    producer: Option<FutureProducer>,
    topic: String,
    select: String,
    update: String,
    count: String,
    batch: usize,
    profile: Profile,
}

impl RawRelay {
    fn new(store: &PgEventStore, brokers: &str, topic: &str, batch: usize) -> Result<Self> {
        let t = format!("{}.outbox", store.schema().quoted());
        // The configuration the KafkaPublisher would use (idempotent, acks=all, the
        // murmur2_random partitioner, …).
        let producer: FutureProducer = KafkaPublisher::builder(brokers)
            .client_id("mink-bench-raw")
            .client_config()?
            .create()?;
        Ok(RawRelay {
            pool: store.pool().clone(),
            producer: Some(producer),
            topic: topic.to_owned(),
            select: format!(
                "SELECT seq, id, stream_id, event_id, event_type, stream_version, tx::text, \
                 position, codec, payload, created_at FROM {t} \
                 WHERE status = 'pending' ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED"
            ),
            update: format!(
                "UPDATE {t} SET status = 'delivered', attempts = attempts + 1, \
                 finished_at = statement_timestamp() WHERE seq = ANY($1)"
            ),
            count: format!(
                "SELECT count(*) FILTER (WHERE status = 'delivered'), \
                 count(*) FILTER (WHERE status <> 'delivered') FROM {t}"
            ),
            batch: batch.max(1),
            profile: Profile::default(),
        })
    }

    /// Relays `n` messages (fewer if the table runs out); returns how many and the
    /// time taken.
    async fn run(&mut self, n: u64) -> Result<(u64, Duration)> {
        let producer = self.producer.as_ref().context("the relay is closed")?;
        let start = Instant::now();
        let mut done = 0u64;
        while done < n {
            let limit = (n - done).min(self.batch as u64) as i64;
            let t = Instant::now();
            let mut tx = self.pool.begin().await?;
            let rows = sqlx::query(AssertSqlSafe(self.select.as_str()))
                .bind(limit)
                .fetch_all(&mut *tx)
                .await?;
            self.profile.claims += 1;
            self.profile.claim_time += t.elapsed();
            self.profile.claimed += rows.len() as u64;
            if rows.is_empty() {
                break;
            }
            let t = Instant::now();
            let mut seqs = Vec::with_capacity(rows.len());
            let mut reports = Vec::with_capacity(rows.len());
            for row in &rows {
                let seq: i64 = row.try_get(0)?;
                let id: Uuid = row.try_get(1)?;
                let stream: &str = row.try_get(2)?;
                let event_id: Uuid = row.try_get(3)?;
                let event_type: &str = row.try_get(4)?;
                let version: i64 = row.try_get(5)?;
                let tx_id: &str = row.try_get(6)?;
                let position: i64 = row.try_get(7)?;
                let codec: &str = row.try_get(8)?;
                let payload: &[u8] = row.try_get(9)?;
                let created_at: DateTime<Utc> = row.try_get(10)?;
                let values = [
                    (kh::MESSAGE_ID, id.to_string()),
                    (kh::EVENT_ID, event_id.to_string()),
                    (kh::EVENT_TYPE, event_type.to_owned()),
                    (kh::STREAM_ID, stream.to_owned()),
                    (kh::STREAM_VERSION, version.to_string()),
                    (kh::POSITION, format!("{tx_id}:{position}")),
                    (kh::CODEC, codec.to_owned()),
                    (
                        kh::CREATED_AT,
                        created_at.to_rfc3339_opts(SecondsFormat::Micros, true),
                    ),
                ];
                let mut headers = OwnedHeaders::new_with_capacity(values.len());
                for (key, value) in &values {
                    headers = headers.insert(Header {
                        key,
                        value: Some(value.as_bytes()),
                    });
                }
                let mut record = FutureRecord::to(&self.topic)
                    .key(stream)
                    .payload(payload)
                    .headers(headers);
                loop {
                    match producer.send_result(record) {
                        Ok(report) => {
                            reports.push(report);
                            break;
                        }
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                            record = back;
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                        Err((e, _)) => bail!("raw relay: cannot produce: {e}"),
                    }
                }
                seqs.push(seq);
            }
            for report in reports {
                match report.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => bail!("raw relay: delivery failed: {e}"),
                    Err(_) => bail!("raw relay: the producer was dropped"),
                }
            }
            self.profile.publishes += 1;
            self.profile.publish_time += t.elapsed();
            let t = Instant::now();
            sqlx::query(AssertSqlSafe(self.update.as_str()))
                .bind(&seqs)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            self.profile.acks += 1;
            self.profile.ack_time += t.elapsed();
            self.profile.acked += seqs.len() as u64;
            done += seqs.len() as u64;
        }
        Ok((done, start.elapsed()))
    }

    /// Checks that `expected` messages are delivered and none is left.
    async fn verify(&self, expected: u64) -> Result<()> {
        let (delivered, other): (i64, i64) = sqlx::query_as(AssertSqlSafe(self.count.as_str()))
            .fetch_one(&self.pool)
            .await?;
        ensure!(
            delivered as u64 == expected && other == 0,
            "the raw relay's outbox counts {delivered} delivered and {other} not; expected {expected} delivered"
        );
        Ok(())
    }

    async fn close(&mut self) {
        if let Some(p) = self.producer.take() {
            drop(tokio::task::spawn_blocking(move || drop(p)).await);
        }
    }
}
