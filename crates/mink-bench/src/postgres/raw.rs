//! The raw baseline: the same events written and read with plain SQL through sqlx.
//!
//! This is what a careful hand-written event log on PostgreSQL would do: a table with
//! the same event columns, a global position (`bigint` identity primary key) and the
//! same `UNIQUE (stream_id, version)` constraint, which is its optimistic-concurrency
//! check (the writer tracks the versions); prepared statements; autocommit.
//!
//! - W1 and W4: one plain `INSERT` per event (W4 from 8 tasks on 8 connections).
//! - W2: one multi-row `INSERT … SELECT FROM unnest(…)` per batch.
//! - W3: one plain `SELECT` of the stream, decoded into [`StoredEvent`]s.
//!
//! Event ids come from the same generator as mink's (`EventId::new`, a UUIDv7).

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use mink_es::{
    CodecTag, EventId, EventType, Metadata, Position, StoredEvent, StreamId, now_micros,
};
use mink_postgres::sqlx::{self, AssertSqlSafe, PgPool, Row, types::Json};
use uuid::Uuid;

use crate::common::{EVENT_TYPE, Sizes, stream_name};

/// A raw event table in its own schema.
pub struct Db {
    pool: PgPool,
    insert: String,
    insert_many: String,
    select: String,
    count: String,
}

impl Db {
    /// Creates the schema and the table.
    pub async fn create(pool: PgPool, schema: &str) -> Result<Self> {
        let t = format!("\"{schema}\".events");
        sqlx::raw_sql(AssertSqlSafe(format!(
            "CREATE SCHEMA \"{schema}\"; \
             CREATE TABLE {t} ( \
               position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
               event_id uuid NOT NULL, \
               stream_id text NOT NULL, \
               version bigint NOT NULL, \
               event_type text NOT NULL, \
               schema_version integer NOT NULL, \
               codec text NOT NULL, \
               payload bytea NOT NULL, \
               metadata jsonb, \
               recorded_at timestamptz NOT NULL, \
               UNIQUE (stream_id, version))"
        )))
        .execute(&pool)
        .await?;
        Ok(Db {
            pool,
            insert: format!(
                "INSERT INTO {t} (event_id, stream_id, version, event_type, schema_version, \
                 codec, payload, metadata, recorded_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            ),
            insert_many: format!(
                "INSERT INTO {t} (event_id, stream_id, version, event_type, schema_version, \
                 codec, payload, metadata, recorded_at) \
                 SELECT id, $2, $3 + ord, $4, 1, 'json', payload, NULL, $6 \
                 FROM unnest($1::uuid[], $5::bytea[]) WITH ORDINALITY AS u(id, payload, ord)"
            ),
            select: format!(
                "SELECT position, event_id, stream_id, version, event_type, schema_version, \
                 codec, payload, metadata, recorded_at FROM {t} \
                 WHERE stream_id = $1 AND version >= $2 ORDER BY version LIMIT $3"
            ),
            count: format!("SELECT count(*) FROM {t}"),
        })
    }

    async fn count(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(self.count.as_str()))
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u64)
    }
}

/// Appends `n` events to `stream` from version `first_version`: one INSERT for a single
/// event, one multi-row INSERT for more.
async fn append(
    db: &Db,
    stream: &str,
    first_version: u64,
    n: usize,
    payload: &Bytes,
) -> Result<()> {
    let recorded_at = now_micros();
    if n == 1 {
        sqlx::query(AssertSqlSafe(db.insert.as_str()))
            .bind(*EventId::new().as_uuid())
            .bind(stream)
            .bind(first_version as i64)
            .bind(EVENT_TYPE)
            .bind(1i32)
            .bind("json")
            .bind(payload.as_ref())
            .bind(None::<Json<Metadata>>)
            .bind(recorded_at)
            .execute(&db.pool)
            .await?;
    } else {
        let ids: Vec<Uuid> = (0..n).map(|_| *EventId::new().as_uuid()).collect();
        let payloads: Vec<&[u8]> = (0..n).map(|_| payload.as_ref()).collect();
        sqlx::query(AssertSqlSafe(db.insert_many.as_str()))
            .bind(ids)
            .bind(stream)
            .bind(first_version as i64 - 1)
            .bind(EVENT_TYPE)
            .bind(payloads)
            .bind(recorded_at)
            .execute(&db.pool)
            .await?;
    }
    Ok(())
}

/// W1/W2 raw: appends round-robin over streams.
pub struct Appends {
    db: Db,
    streams: Vec<String>,
    versions: Vec<u64>,
    next: usize,
    batch: usize,
    payload: Bytes,
}

impl Appends {
    /// A workload appending `batch` events per statement over `streams` streams.
    pub fn new(db: Db, streams: usize, batch: usize, payload: Bytes) -> Self {
        Appends {
            db,
            streams: (0..streams).map(stream_name).collect(),
            versions: vec![0; streams],
            next: 0,
            batch,
            payload,
        }
    }

    /// Runs `appends` appends; returns the events written and the time taken.
    pub async fn run(&mut self, appends: u64) -> Result<(u64, Duration)> {
        let start = Instant::now();
        for _ in 0..appends {
            let i = self.next;
            self.next = (i + 1) % self.streams.len();
            append(
                &self.db,
                &self.streams[i],
                self.versions[i] + 1,
                self.batch,
                &self.payload,
            )
            .await?;
            self.versions[i] += self.batch as u64;
        }
        Ok((appends * self.batch as u64, start.elapsed()))
    }

    /// Checks that the table holds `expected` rows.
    pub async fn verify(&self, expected: u64) -> Result<()> {
        let n = self.db.count().await?;
        ensure!(
            n == expected,
            "raw table holds {n} rows, expected {expected}"
        );
        Ok(())
    }
}

/// W3 raw: selects one long stream whole, decoded into stored events.
pub struct Loads {
    db: Db,
    stream: String,
    len: usize,
}

impl Loads {
    /// Writes the stream (`len` rows, untimed) and returns the workload.
    pub async fn setup(db: Db, len: usize, payload: &Bytes) -> Result<Self> {
        let stream = "Bench-long".to_owned();
        let mut written = 0;
        while written < len {
            let n = (len - written).min(1000);
            append(&db, &stream, written as u64 + 1, n, payload).await?;
            written += n;
        }
        Ok(Loads {
            db,
            stream,
            len: written,
        })
    }

    /// Reads the stream `loads` times; returns the events read and the time taken.
    pub async fn run(&mut self, loads: u64) -> Result<(u64, Duration)> {
        let start = Instant::now();
        for _ in 0..loads {
            let rows = sqlx::query(AssertSqlSafe(self.db.select.as_str()))
                .bind(self.stream.as_str())
                .bind(1i64)
                .bind(self.len as i64)
                .fetch_all(&self.db.pool)
                .await?;
            let events = rows.iter().map(decode).collect::<Result<Vec<_>>>()?;
            ensure!(
                events.len() == self.len,
                "read {} rows, expected {}",
                events.len(),
                self.len
            );
            std::hint::black_box(events);
        }
        Ok((loads * self.len as u64, start.elapsed()))
    }
}

/// One row as a [`StoredEvent`], decoded plainly.
fn decode(r: &sqlx::postgres::PgRow) -> Result<StoredEvent> {
    let position: i64 = r.try_get(0)?;
    let id: Uuid = r.try_get(1)?;
    let stream: String = r.try_get(2)?;
    let version: i64 = r.try_get(3)?;
    let event_type: String = r.try_get(4)?;
    let schema_version: i32 = r.try_get(5)?;
    let codec: String = r.try_get(6)?;
    let payload: Vec<u8> = r.try_get(7)?;
    let metadata: Option<Json<Metadata>> = r.try_get(8)?;
    let recorded_at: DateTime<Utc> = r.try_get(9)?;
    Ok(StoredEvent {
        id: EventId::from_uuid(id),
        stream_id: StreamId::new(stream)?,
        version: version as u64,
        position: Position::new(0, position as u64),
        event_type: EventType::from(event_type),
        schema_version: schema_version as u32,
        codec: CodecTag::from(codec),
        payload: Bytes::from(payload),
        metadata: metadata.map(|m| m.0).unwrap_or_default(),
        recorded_at,
    })
}

/// The state one W4 task carries from run to run.
struct TaskState {
    streams: Vec<String>,
    versions: Vec<u64>,
    next: usize,
}

/// W4 raw: concurrent tasks on the pool (8 connections), one INSERT per event.
pub struct Concurrent {
    db: std::sync::Arc<Db>,
    tasks: Vec<TaskState>,
    payload: Bytes,
}

impl Concurrent {
    /// A workload of `sizes.w4_tasks` tasks with `sizes.w4_streams_per_task` streams each.
    pub fn new(db: Db, sizes: &Sizes, payload: Bytes) -> Self {
        let per = sizes.w4_streams_per_task;
        let tasks = (0..sizes.w4_tasks)
            .map(|t| TaskState {
                streams: (t * per..(t + 1) * per).map(stream_name).collect(),
                versions: vec![0; per],
                next: 0,
            })
            .collect();
        Concurrent {
            db: std::sync::Arc::new(db),
            tasks,
            payload,
        }
    }

    /// Runs `per_task` appends in each task, all tasks at once; returns the events
    /// written and the time from spawning the first task to the end of the last.
    pub async fn run(&mut self, per_task: u64) -> Result<(u64, Duration)> {
        let n_tasks = self.tasks.len() as u64;
        let start = Instant::now();
        let handles: Vec<_> = self
            .tasks
            .drain(..)
            .map(|mut t| {
                let db = self.db.clone();
                let payload = self.payload.clone();
                tokio::spawn(async move {
                    for _ in 0..per_task {
                        let i = t.next;
                        t.next = (i + 1) % t.streams.len();
                        append(&db, &t.streams[i], t.versions[i] + 1, 1, &payload).await?;
                        t.versions[i] += 1;
                    }
                    anyhow::Ok(t)
                })
            })
            .collect();
        for h in handles {
            self.tasks.push(h.await??);
        }
        Ok((per_task * n_tasks, start.elapsed()))
    }

    /// Checks that the table holds `expected` rows.
    pub async fn verify(&self, expected: u64) -> Result<()> {
        let n = self.db.count().await?;
        ensure!(
            n == expected,
            "raw table holds {n} rows, expected {expected}"
        );
        Ok(())
    }
}
