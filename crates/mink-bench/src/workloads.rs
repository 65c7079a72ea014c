//! The workloads as mink users run them: generic over any [`EventStore`], so the memory
//! and SQLite backends run exactly the same code.
//!
//! Each workload keeps its state (stream ids, the versions it last saw) between the
//! warm-up and the timed run; `run` times only the loop itself, and `verify` checks
//! afterwards, outside the timing, that the store really holds what was appended.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use mink_es::{EventStore, ExpectedVersion, StreamId};

use crate::common::{Sizes, new_event, stream_ids};

/// Appends rows of events round-robin over a set of streams, each append awaited before
/// the next. W1 is this with one event per append, W2 with a batch.
///
/// Appends use `ExpectedVersion::Exact` with the version the previous append returned
/// (`NoStream` for a stream's first append): the realistic aggregate case, where every
/// save states the version it was decided on.
pub struct Appends<S> {
    store: S,
    streams: Vec<StreamId>,
    versions: Vec<u64>,
    next: usize,
    batch: usize,
    payload: Bytes,
}

impl<S: EventStore> Appends<S> {
    /// A workload appending `batch` events per append over `streams` streams.
    pub fn new(store: S, streams: usize, batch: usize, payload: Bytes) -> Result<Self> {
        Ok(Appends {
            store,
            streams: stream_ids(0, streams)?,
            versions: vec![0; streams],
            next: 0,
            batch,
            payload,
        })
    }

    /// Runs `appends` appends; returns the events appended and the time taken.
    pub async fn run(&mut self, appends: u64) -> Result<(u64, Duration)> {
        let start = Instant::now();
        for _ in 0..appends {
            let i = self.next;
            self.next = (i + 1) % self.streams.len();
            let events = (0..self.batch).map(|_| new_event(&self.payload)).collect();
            let res = self
                .store
                .append(
                    &self.streams[i],
                    ExpectedVersion::from_version(self.versions[i]),
                    events,
                )
                .await?;
            self.versions[i] = res.version;
        }
        Ok((appends * self.batch as u64, start.elapsed()))
    }

    /// Checks that the store holds `expected` events over the workload's streams.
    pub async fn verify(&self, expected: u64) -> Result<()> {
        let mut total = 0;
        for (s, &seen) in self.streams.iter().zip(&self.versions) {
            let v = self.store.stream_version(s).await?;
            ensure!(
                v == seen,
                "stream {s} is at version {v}, the bench saw {seen}"
            );
            total += v;
        }
        ensure!(
            total == expected,
            "the store holds {total} events, the bench appended {expected}"
        );
        Ok(())
    }
}

/// W3: loads one long stream, whole, again and again.
pub struct Loads<S> {
    store: S,
    stream: StreamId,
    len: usize,
}

impl<S: EventStore> Loads<S> {
    /// Writes the stream to load (`len` events, untimed) and returns the workload.
    pub async fn setup(store: S, len: usize, payload: &Bytes) -> Result<Self> {
        let stream = StreamId::new("Bench-long")?;
        let mut version = 0;
        while (version as usize) < len {
            let n = (len - version as usize).min(1000);
            let events = (0..n).map(|_| new_event(payload)).collect();
            version = store
                .append(&stream, ExpectedVersion::from_version(version), events)
                .await
                .context("writing the W3 stream")?
                .version;
        }
        Ok(Loads { store, stream, len })
    }

    /// Loads the whole stream `loads` times; returns the events read and the time taken.
    pub async fn run(&mut self, loads: u64) -> Result<(u64, Duration)> {
        let start = Instant::now();
        for _ in 0..loads {
            let events = self.store.read_stream(&self.stream, 1, self.len).await?;
            ensure!(
                events.len() == self.len,
                "read {} events, expected {}",
                events.len(),
                self.len
            );
            std::hint::black_box(events);
        }
        Ok((loads * self.len as u64, start.elapsed()))
    }
}

/// The state one W4 task carries from run to run.
struct TaskState {
    streams: Vec<StreamId>,
    versions: Vec<u64>,
    next: usize,
}

/// W4: concurrent tasks, each appending single events round-robin to its own streams.
pub struct Concurrent<S> {
    store: S,
    tasks: Vec<TaskState>,
    payload: Bytes,
}

impl<S: EventStore> Concurrent<S> {
    /// A workload of `sizes.w4_tasks` tasks with `sizes.w4_streams_per_task` streams each.
    pub fn new(store: S, sizes: &Sizes, payload: Bytes) -> Result<Self> {
        let per = sizes.w4_streams_per_task;
        let tasks = (0..sizes.w4_tasks)
            .map(|t| {
                Ok(TaskState {
                    streams: stream_ids(t * per, per)?,
                    versions: vec![0; per],
                    next: 0,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Concurrent {
            store,
            tasks,
            payload,
        })
    }

    /// Runs `per_task` appends in each task, all tasks at once; returns the events
    /// appended and the time from spawning the first task to the end of the last.
    pub async fn run(&mut self, per_task: u64) -> Result<(u64, Duration)> {
        let n_tasks = self.tasks.len() as u64;
        let start = Instant::now();
        let handles: Vec<_> = self
            .tasks
            .drain(..)
            .map(|mut t| {
                let store = self.store.clone();
                let payload = self.payload.clone();
                tokio::spawn(async move {
                    for _ in 0..per_task {
                        let i = t.next;
                        t.next = (i + 1) % t.streams.len();
                        let res = store
                            .append(
                                &t.streams[i],
                                ExpectedVersion::from_version(t.versions[i]),
                                vec![new_event(&payload)],
                            )
                            .await?;
                        t.versions[i] = res.version;
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

    /// Checks that the store holds `expected` events over the tasks' streams.
    pub async fn verify(&self, expected: u64) -> Result<()> {
        let mut total = 0;
        for t in &self.tasks {
            for (s, &seen) in t.streams.iter().zip(&t.versions) {
                let v = self.store.stream_version(s).await?;
                ensure!(
                    v == seen,
                    "stream {s} is at version {v}, the bench saw {seen}"
                );
                total += v;
            }
        }
        ensure!(
            total == expected,
            "the store holds {total} events, the bench appended {expected}"
        );
        Ok(())
    }
}
