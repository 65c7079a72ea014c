//! What every workload shares: the payload, event construction, stream names, sizes,
//! and the timing schedules.

use std::time::Duration;

use anyhow::{Result, ensure};
use bytes::Bytes;
use mink_es::{EventType, NewEvent, StreamId};

/// The length every benchmark payload has, in bytes.
pub const PAYLOAD_LEN: usize = 200;

/// The event type name of every benchmark event.
pub const EVENT_TYPE: &str = "OrderPlaced";

/// The category of every benchmark stream (streams are `Bench-0`, `Bench-1`, …).
pub const CATEGORY: &str = "Bench";

/// Builds the benchmark payload: a realistic order-placed JSON object of exactly
/// [`PAYLOAD_LEN`] bytes. It is built once; each event shares it (cloning [`Bytes`] is a
/// reference-count bump), so the timed loops measure the store, not `serde_json`.
pub fn payload() -> Result<Bytes> {
    let value = serde_json::json!({
        "orderId": "ord-000123",
        "customerId": "cus-4821",
        "currency": "EUR",
        "lines": [
            {"sku": "KB-01", "qty": 1, "priceCents": 4999},
            {"sku": "MS-02", "qty": 2, "priceCents": 1999}
        ],
        "totalCents": 8997,
        "channel": "mobile-app"
    });
    let bytes = serde_json::to_vec(&value)?;
    ensure!(
        bytes.len() == PAYLOAD_LEN,
        "the benchmark payload is {} bytes, expected {PAYLOAD_LEN}",
        bytes.len()
    );
    Ok(Bytes::from(bytes))
}

/// A fresh event to append, built the way application code builds one: a new UUIDv7
/// id, the type name, the (shared) payload, empty metadata.
#[inline]
pub fn new_event(payload: &Bytes) -> NewEvent {
    NewEvent::new(EventType::from_static(EVENT_TYPE), payload.clone())
}

/// The stream name of stream number `i`.
pub fn stream_name(i: usize) -> String {
    format!("{CATEGORY}-{i}")
}

/// Stream ids `Bench-{first}` … `Bench-{first + n - 1}`.
pub fn stream_ids(first: usize, n: usize) -> Result<Vec<StreamId>> {
    (first..first + n)
        .map(|i| Ok(StreamId::new(stream_name(i))?))
        .collect()
}

/// How big each workload is.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    /// Streams the W1 and W2 appends go round-robin over.
    pub streams: usize,
    /// W1: single-event appends, in total.
    pub w1_events: u64,
    /// W2: events in total (appended in batches of `w2_batch`).
    pub w2_events: u64,
    /// W2: events per append.
    pub w2_batch: usize,
    /// W3: length of the stream that is loaded.
    pub w3_stream_len: usize,
    /// W3: how many times the whole stream is loaded.
    pub w3_loads: u64,
    /// W4: concurrent tasks.
    pub w4_tasks: usize,
    /// W4: single-event appends per task.
    pub w4_events_per_task: u64,
    /// W4: streams each task appends to (round-robin, its own).
    pub w4_streams_per_task: usize,
    /// BUS: commands per implementation, in total.
    pub bus_commands: u64,
    /// BUS: accounts (aggregates) the commands go round-robin over.
    pub bus_accounts: usize,
    /// W3D: how many times each implementation loads and decodes its whole stream
    /// (of `w3_stream_len` events).
    pub w3d_loads: u64,
    /// OUTBOX: messages delivered in the timed part (the outbox holds a warm-up more).
    pub outbox_messages: u64,
    /// OUTBOX: streams the events are spread over (round by round).
    pub outbox_streams: usize,
    /// OUTBOX: messages claimed per round (`ProcessorConfig::batch_size`).
    pub outbox_batch: usize,
    /// OUTBOX: concurrent processors.
    pub outbox_workers: usize,
    /// PROJ: events in the pre-filled store.
    pub proj_events: u64,
    /// PROJ: streams (read-model rows).
    pub proj_streams: usize,
}

/// The measured time of one implementation on one workload.
#[derive(Clone, Copy, Debug, Default)]
pub struct Measurement {
    /// Events written or read in the timed sections (commands, for BUS).
    pub events: u64,
    /// Total time of the timed sections.
    pub elapsed: Duration,
}

impl Measurement {
    /// Adds one timed run: its events and time.
    pub fn add(&mut self, (events, elapsed): (u64, Duration)) {
        self.events += events;
        self.elapsed += elapsed;
    }

    /// Events per second over all timed runs.
    pub fn events_per_s(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.events as f64 / secs
        } else {
            f64::INFINITY
        }
    }
}

/// Splits `total` into `parts` parts that add up to `total`.
pub fn split(total: u64, parts: usize) -> Vec<u64> {
    let parts = parts.max(1) as u64;
    (0..parts)
        .map(|r| total / parts + u64::from(r < total % parts))
        .collect()
}

/// The order in which several sides of a comparison run: each side once, then each
/// side again in reverse order (ABBA for two sides, ABCCBA for three), so that a slow
/// drift of a shared machine hits every side alike.
pub fn mirrored<K: Copy>(sides: &[K]) -> Vec<K> {
    sides.iter().chain(sides.iter().rev()).copied().collect()
}

/// A finer schedule for sides that stay open from chunk to chunk: `units` is cut into
/// `chunks` parts, and each part is run by every side, in order for even parts and in
/// reverse order for odd ones (A B, B A, A B, …). Returns `(side, units)` in run order.
pub fn chunked<K: Copy>(sides: &[K], units: u64, chunks: usize) -> Vec<(K, u64)> {
    let mut out = Vec::with_capacity(sides.len() * chunks.max(1));
    for (k, part) in split(units, chunks).into_iter().enumerate() {
        if k % 2 == 0 {
            out.extend(sides.iter().map(|&s| (s, part)));
        } else {
            out.extend(sides.iter().rev().map(|&s| (s, part)));
        }
    }
    out
}

/// The CPU time the calling thread has used so far, from Linux's
/// `/proc/thread-self/schedstat` (nanoseconds on the CPU); `None` elsewhere.
///
/// A diagnostic beside the wall-clock figures: on a machine shared with other work, a
/// run's wall time also counts the time it waited for a CPU, its CPU time does not.
/// It sees only this thread's work, which is all of it for the memory and SQLite
/// stores (they run inline on the caller's thread) but not PostgreSQL's server side.
pub fn thread_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// Warm-up units (appends or loads) run before timing: a tenth of the work, at least 1
/// and at most 1,000.
pub fn warmup(units: u64) -> u64 {
    (units / 10).clamp(1, 1000)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn payload_is_exactly_200_bytes_of_json() {
        let p = payload().unwrap();
        assert_eq!(p.len(), PAYLOAD_LEN);
        let _: serde_json::Value = serde_json::from_slice(&p).unwrap();
    }

    #[test]
    fn schedules_are_mirrored() {
        assert_eq!(
            mirrored(&['a', 'b', 'c']),
            vec!['a', 'b', 'c', 'c', 'b', 'a']
        );
        let c = chunked(&['a', 'b'], 10, 4);
        assert_eq!(
            c,
            vec![
                ('a', 3),
                ('b', 3),
                ('b', 3),
                ('a', 3),
                ('a', 2),
                ('b', 2),
                ('b', 2),
                ('a', 2)
            ]
        );
    }

    #[test]
    fn split_adds_up() {
        assert_eq!(split(10, 3), vec![4, 3, 3]);
        assert_eq!(split(10, 3).iter().sum::<u64>(), 10);
        assert_eq!(split(5, 0), vec![5]);
    }
}
