//! The raw baseline: the same rows written and read with plain SQL through rusqlite,
//! into a table with mink-sqlite's schema, with mink-sqlite's connection setup.
//!
//! This is what a careful hand-written event log on rusqlite would do: prepared, cached
//! statements (`BEGIN`/`COMMIT` included), one transaction per append, the version of
//! each row taken from the version the writer tracked (the `UNIQUE(stream_id, version)`
//! constraint is its optimistic-concurrency check), and reads into owned Rust values.
//! Event ids come from the same generator as mink's (`EventId::new`, a UUIDv7), so
//! that the two differ in the SQL path only.
//!
//! The connections mirror mink-sqlite's: one writer (behind a mutex when shared by
//! tasks) plus the same number of read-only connections, with the same open flags and
//! PRAGMAs. The readers matter even when idle: the bundled SQLite is built with
//! `SQLITE_ENABLE_MEMORY_MANAGEMENT`, so every connection of the process shares one
//! page-cache pool whose size is the sum of the connections' `cache_size`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, anyhow, ensure};
use mink_es::EventId;
use mink_sqlite::{SqliteConfig, Synchronous};
use parking_lot::Mutex;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, params};

use crate::common::{CATEGORY, EVENT_TYPE, Sizes, stream_name};

const INSERT: &str = "INSERT INTO mink_events \
    (event_id, stream_id, version, category, event_type, schema_version, codec, payload, metadata, recorded_at) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";

const SELECT_STREAM: &str = "SELECT position, event_id, stream_id, version, event_type, \
    schema_version, codec, payload, metadata, recorded_at \
    FROM mink_events WHERE stream_id = ?1 AND version >= ?2 ORDER BY version LIMIT ?3";

/// The SQL of mink-sqlite's migration that creates `mink_events` and its index, taken
/// from mink-sqlite itself so that the two tables cannot drift apart.
/// `super::check_same_schema` also compares the resulting tables at run time.
fn events_schema() -> Result<&'static str> {
    mink_sqlite::migrations()
        .iter()
        .map(|m| m.sql())
        .find(|sql| sql.contains("CREATE TABLE mink_events"))
        .ok_or_else(|| anyhow!("no mink-sqlite migration creates mink_events"))
}

/// mink-sqlite's default `PRAGMA synchronous`.
pub(crate) fn synchronous() -> &'static str {
    match SqliteConfig::default().synchronous {
        Synchronous::Full => "FULL",
        _ => "NORMAL",
    }
}

/// A raw database: a writer connection and idle-or-reading read-only connections, set
/// up as mink-sqlite sets up its own.
pub struct Db {
    writer: Connection,
    readers: Vec<Connection>,
}

impl Db {
    /// Creates the database at `path` (which must not exist) with mink-sqlite's
    /// connection settings (open flags, busy timeout, `foreign_keys`, WAL, its default
    /// `synchronous`) and its events table.
    pub fn create(path: &Path) -> Result<Self> {
        let config = SqliteConfig::default();
        let writer = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        writer.busy_timeout(config.busy_timeout)?;
        writer.pragma_update(None, "foreign_keys", true)?;
        let mode: String = writer.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        ensure!(
            mode.eq_ignore_ascii_case("wal"),
            "raw database is not in WAL mode"
        );
        writer.pragma_update(None, "synchronous", synchronous())?;
        writer.execute_batch(events_schema()?)?;
        let readers = (0..config.read_connections)
            .map(|_| {
                let conn = Connection::open_with_flags(
                    path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                conn.busy_timeout(config.busy_timeout)?;
                conn.pragma_update(None, "foreign_keys", true)?;
                Ok(conn)
            })
            .collect::<Result<_>>()?;
        Ok(Db { writer, readers })
    }

    /// A connection for reads: the first reader, or the writer when there is none.
    fn reader(&self) -> &Connection {
        self.readers.first().unwrap_or(&self.writer)
    }
}

/// Microseconds since the Unix epoch, as stored in `recorded_at`.
fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Appends `n` events to `stream` (from version `first_version`) in one transaction.
fn append(
    conn: &Connection,
    stream: &str,
    category: &str,
    first_version: u64,
    n: usize,
    payload: &str,
) -> Result<()> {
    conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
    let res = (|| -> Result<()> {
        let mut insert = conn.prepare_cached(INSERT)?;
        let recorded_at = now_micros();
        for k in 0..n {
            let id = EventId::new();
            insert.execute(params![
                id.as_bytes(),
                stream,
                (first_version + k as u64) as i64,
                category,
                EVENT_TYPE,
                1i64,
                "json",
                payload,
                None::<&str>,
                recorded_at,
            ])?;
        }
        Ok(())
    })();
    match res {
        Ok(()) => {
            conn.prepare_cached("COMMIT")?.execute([])?;
            Ok(())
        }
        Err(e) => {
            conn.execute_batch("ROLLBACK")?;
            Err(e)
        }
    }
}

/// Counts the rows of the table.
fn count(conn: &Connection) -> Result<u64> {
    let n: i64 = conn.query_row("SELECT count(*) FROM mink_events", [], |r| r.get(0))?;
    Ok(n as u64)
}

/// W1/W2 raw: appends round-robin over streams, one transaction per append.
pub struct Appends {
    db: Db,
    streams: Vec<String>,
    versions: Vec<u64>,
    next: usize,
    batch: usize,
    payload: Arc<str>,
}

impl Appends {
    /// A workload appending `batch` rows per transaction over `streams` streams.
    pub fn new(db: Db, streams: usize, batch: usize, payload: Arc<str>) -> Self {
        Appends {
            db,
            streams: (0..streams).map(stream_name).collect(),
            versions: vec![0; streams],
            next: 0,
            batch,
            payload,
        }
    }

    /// Runs `appends` transactions; returns the rows written and the time taken.
    pub fn run(&mut self, appends: u64) -> Result<(u64, Duration)> {
        let start = Instant::now();
        for _ in 0..appends {
            let i = self.next;
            self.next = (i + 1) % self.streams.len();
            append(
                &self.db.writer,
                &self.streams[i],
                CATEGORY,
                self.versions[i] + 1,
                self.batch,
                &self.payload,
            )?;
            self.versions[i] += self.batch as u64;
        }
        Ok((appends * self.batch as u64, start.elapsed()))
    }

    /// Checks that the table holds `expected` rows.
    pub fn verify(&self, expected: u64) -> Result<()> {
        let n = count(&self.db.writer)?;
        ensure!(
            n == expected,
            "raw table holds {n} rows, expected {expected}"
        );
        Ok(())
    }
}

/// One row read back, as owned values (the payload as bytes, text or blob alike, the
/// way mink-sqlite reads it).
#[allow(dead_code)] // The fields exist to be filled; the bench only counts rows.
struct Row {
    position: i64,
    event_id: [u8; 16],
    stream_id: String,
    version: i64,
    event_type: String,
    schema_version: i64,
    codec: String,
    payload: Vec<u8>,
    metadata: Option<String>,
    recorded_at: i64,
}

/// W3 raw: selects one long stream whole into owned rows.
pub struct Loads {
    db: Db,
    stream: String,
    len: usize,
}

impl Loads {
    /// Writes the stream (`len` rows, untimed) and returns the workload.
    pub fn setup(db: Db, len: usize, payload: &str) -> Result<Self> {
        let stream = "Bench-long".to_owned();
        let mut written = 0;
        while written < len {
            let n = (len - written).min(1000);
            append(
                &db.writer,
                &stream,
                CATEGORY,
                written as u64 + 1,
                n,
                payload,
            )?;
            written += n;
        }
        Ok(Loads { db, stream, len })
    }

    /// Reads the stream `loads` times through a read-only connection; returns the rows
    /// read and the time taken.
    pub fn run(&mut self, loads: u64) -> Result<(u64, Duration)> {
        let start = Instant::now();
        for _ in 0..loads {
            let mut stmt = self.db.reader().prepare_cached(SELECT_STREAM)?;
            let rows = stmt
                .query_map(params![self.stream, 1i64, self.len as i64], |r| {
                    Ok(Row {
                        position: r.get(0)?,
                        event_id: r.get(1)?,
                        stream_id: r.get(2)?,
                        version: r.get(3)?,
                        event_type: r.get(4)?,
                        schema_version: r.get(5)?,
                        codec: r.get(6)?,
                        payload: match r.get_ref(7)? {
                            ValueRef::Text(b) | ValueRef::Blob(b) => b.to_vec(),
                            other => {
                                return Err(rusqlite::Error::InvalidColumnType(
                                    7,
                                    "payload".into(),
                                    other.data_type(),
                                ));
                            }
                        },
                        metadata: r.get(8)?,
                        recorded_at: r.get(9)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<Row>>>()?;
            ensure!(
                rows.len() == self.len,
                "read {} rows, expected {}",
                rows.len(),
                self.len
            );
            std::hint::black_box(rows);
        }
        Ok((loads * self.len as u64, start.elapsed()))
    }
}

/// The state one W4 task carries from run to run.
struct TaskState {
    streams: Vec<String>,
    versions: Vec<u64>,
    next: usize,
}

/// W4 raw: concurrent tokio tasks sharing the writer connection behind a mutex, as
/// mink-sqlite does (SQLite has one writer; the SQL runs inline on the task's thread),
/// one transaction per row.
pub struct Concurrent {
    writer: Arc<Mutex<Connection>>,
    _readers: Vec<Connection>,
    tasks: Vec<TaskState>,
    payload: Arc<str>,
}

impl Concurrent {
    /// A workload of `sizes.w4_tasks` tasks with `sizes.w4_streams_per_task` streams each.
    pub fn new(db: Db, sizes: &Sizes, payload: Arc<str>) -> Self {
        let per = sizes.w4_streams_per_task;
        let tasks = (0..sizes.w4_tasks)
            .map(|t| TaskState {
                streams: (t * per..(t + 1) * per).map(stream_name).collect(),
                versions: vec![0; per],
                next: 0,
            })
            .collect();
        Concurrent {
            writer: Arc::new(Mutex::new(db.writer)),
            _readers: db.readers,
            tasks,
            payload,
        }
    }

    /// Runs `per_task` appends in each task, all tasks at once; returns the rows written
    /// and the time from spawning the first task to the end of the last.
    pub async fn run(&mut self, per_task: u64) -> Result<(u64, Duration)> {
        let n_tasks = self.tasks.len() as u64;
        let start = Instant::now();
        let handles: Vec<_> = self
            .tasks
            .drain(..)
            .map(|mut t| {
                let writer = self.writer.clone();
                let payload = self.payload.clone();
                tokio::spawn(async move {
                    for _ in 0..per_task {
                        let i = t.next;
                        t.next = (i + 1) % t.streams.len();
                        append(
                            &writer.lock(),
                            &t.streams[i],
                            CATEGORY,
                            t.versions[i] + 1,
                            1,
                            &payload,
                        )?;
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
    pub fn verify(&self, expected: u64) -> Result<()> {
        let n = count(&self.writer.lock())?;
        ensure!(
            n == expected,
            "raw table holds {n} rows, expected {expected}"
        );
        Ok(())
    }
}
