//! What every workload shares: the payload, event construction, stream names, sizes,
//! and the timing schedule.

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
}

/// The measured time of one implementation on one workload.
#[derive(Clone, Copy, Debug, Default)]
pub struct Measurement {
    /// Events written or read in the timed sections.
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
    fn split_adds_up() {
        assert_eq!(split(10, 3), vec![4, 3, 3]);
        assert_eq!(split(10, 3).iter().sum::<u64>(), 10);
        assert_eq!(split(5, 0), vec![5]);
    }
}
