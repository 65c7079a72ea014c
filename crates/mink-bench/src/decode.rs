//! W3D: W3's load of one long stream, with every event decoded into a typed domain
//! event, for each codec and with a one-step upcaster in the path. Generic over any
//! [`EventStore`], so every backend runs exactly the same code.
//!
//! Every implementation ([`Decode`]) writes its own stream of `len` copies of the same
//! order (the benchmark payload, [`crate::common::payload`], as the `OrderPlaced`
//! variant of [`OrderEvent`]), then loads it whole (one `read_stream`, as W3) and
//! decodes every event with an [`EventDecoder`] (as `Repository::load` does), folding
//! them into a [`Tally`] (as an aggregate's `apply` would):
//!
//! - `json`, `msgpack`: [`SerdeEvents`] with [`SerdeFormat::Json`] /
//!   [`SerdeFormat::MsgPack`]; `protobuf`: [`ProstEvents`] with [`OrderEventPb`], the
//!   same order as prost messages. No schema registry: the plain path.
//! - `json-upcast-typed`, `json-upcast-value`: the JSON stream as it was written at
//!   schema version 1 (the customer field was then called `customer`; version 2 calls
//!   it `customerId`), read through a registry with a one-step upcaster to version 2:
//!   [`Upcaster::to_event`] (the old shape deserialized and turned straight into the
//!   enum) or [`Upcaster::value`] (the payload edited as a `serde_json::Value`, then
//!   decoded from it).
//!
//! Events/s counts events loaded and decoded, read included, over the timed loads. The
//! time spent decoding alone is also kept ([`Decodes::decode_time`]) and printed to
//! stderr. `verify` checks afterwards that every event of every load was decoded into
//! the expected order (the count, the totals, the renamed field).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use mink_es::codec::{Encoded, EventCodec};
use mink_es::protobuf::ProstEvents;
use mink_es::schema::{SchemaRegistry, Upcaster};
use mink_es::{
    CodecTag, EventDecoder, EventStore, ExpectedVersion, NewEvent, ReplayMode, SerdeEvents,
    SerdeFormat, StreamId,
};
use serde::{Deserialize, Serialize};

use crate::common::{Measurement, Sizes, mirrored, split, warmup};
use crate::{Line, Workload};

/// One line of an order.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OrderLine {
    /// The product.
    pub sku: String,
    /// How many.
    pub qty: u32,
    /// The unit price, in cents.
    pub price_cents: u64,
}

/// An order was placed: today's shape (schema version 2), the benchmark payload.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OrderPlaced {
    /// The order's id.
    pub order_id: String,
    /// Who placed it.
    pub customer_id: String,
    /// ISO 4217.
    pub currency: String,
    /// What was ordered.
    pub lines: Vec<OrderLine>,
    /// The total, in cents.
    pub total_cents: u64,
    /// Where it was placed.
    pub channel: String,
}

/// `OrderPlaced` as schema version 1 wrote it: the customer field was `customer`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OrderPlacedV1 {
    /// The order's id.
    pub order_id: String,
    /// Who placed it (renamed `customerId` in version 2).
    pub customer: String,
    /// ISO 4217.
    pub currency: String,
    /// What was ordered.
    pub lines: Vec<OrderLine>,
    /// The total, in cents.
    pub total_cents: u64,
    /// Where it was placed.
    pub channel: String,
}

impl From<OrderPlacedV1> for OrderPlaced {
    fn from(v1: OrderPlacedV1) -> Self {
        OrderPlaced {
            order_id: v1.order_id,
            customer_id: v1.customer,
            currency: v1.currency,
            lines: v1.lines,
            total_cents: v1.total_cents,
            channel: v1.channel,
        }
    }
}

impl From<&OrderPlaced> for OrderPlacedV1 {
    fn from(v2: &OrderPlaced) -> Self {
        OrderPlacedV1 {
            order_id: v2.order_id.clone(),
            customer: v2.customer_id.clone(),
            currency: v2.currency.clone(),
            lines: v2.lines.clone(),
            total_cents: v2.total_cents,
            channel: v2.channel.clone(),
        }
    }
}

/// The serde domain event enum of an order (only `OrderPlaced` is written here; the
/// other variants make the enum as wide as a real one).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum OrderEvent {
    /// See [`OrderPlaced`].
    #[serde(rename = "OrderPlaced")]
    Placed(OrderPlaced),
    /// The order was paid.
    #[serde(rename = "OrderPaid")]
    Paid {
        /// The amount, in cents.
        amount_cents: u64,
    },
    /// The order was shipped.
    #[serde(rename = "OrderShipped")]
    Shipped {
        /// The carrier's tracking number.
        tracking: String,
    },
}

/// [`OrderLine`] as a prost message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OrderLinePb {
    /// The product.
    #[prost(string, tag = "1")]
    pub sku: String,
    /// How many.
    #[prost(uint32, tag = "2")]
    pub qty: u32,
    /// The unit price, in cents.
    #[prost(uint64, tag = "3")]
    pub price_cents: u64,
}

/// [`OrderPlaced`] as a prost message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OrderPlacedPb {
    /// The order's id.
    #[prost(string, tag = "1")]
    pub order_id: String,
    /// Who placed it.
    #[prost(string, tag = "2")]
    pub customer_id: String,
    /// ISO 4217.
    #[prost(string, tag = "3")]
    pub currency: String,
    /// What was ordered.
    #[prost(message, repeated, tag = "4")]
    pub lines: Vec<OrderLinePb>,
    /// The total, in cents.
    #[prost(uint64, tag = "5")]
    pub total_cents: u64,
    /// Where it was placed.
    #[prost(string, tag = "6")]
    pub channel: String,
}

/// The order was paid (prost).
#[derive(Clone, PartialEq, prost::Message)]
pub struct OrderPaidPb {
    /// The amount, in cents.
    #[prost(uint64, tag = "1")]
    pub amount_cents: u64,
}

/// The order was shipped (prost).
#[derive(Clone, PartialEq, prost::Message)]
pub struct OrderShippedPb {
    /// The carrier's tracking number.
    #[prost(string, tag = "1")]
    pub tracking: String,
}

impl From<&OrderPlaced> for OrderPlacedPb {
    fn from(o: &OrderPlaced) -> Self {
        OrderPlacedPb {
            order_id: o.order_id.clone(),
            customer_id: o.customer_id.clone(),
            currency: o.currency.clone(),
            lines: o
                .lines
                .iter()
                .map(|l| OrderLinePb {
                    sku: l.sku.clone(),
                    qty: l.qty,
                    price_cents: l.price_cents,
                })
                .collect(),
            total_cents: o.total_cents,
            channel: o.channel.clone(),
        }
    }
}

mink_es::prost_events! {
    /// The order events as Protobuf messages, for [`ProstEvents`].
    #[derive(Clone, Debug, PartialEq)]
    pub enum OrderEventPb {
        Placed(OrderPlacedPb) = "OrderPlaced",
        Paid(OrderPaidPb) = "OrderPaid",
        Shipped(OrderShippedPb) = "OrderShipped",
    }
}

/// One implementation of W3D: a codec, or JSON with an upcaster in the path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decode {
    /// JSON, no upcasting.
    Json,
    /// MessagePack with named fields, no upcasting.
    MsgPack,
    /// Protobuf (prost), no upcasting.
    Protobuf,
    /// JSON at version 1, upcast by [`Upcaster::to_event`].
    UpcastTyped,
    /// JSON at version 1, upcast by [`Upcaster::value`].
    UpcastValue,
}

impl Decode {
    /// Every implementation, in the order they are printed.
    pub const ALL: [Decode; 5] = [
        Decode::Json,
        Decode::MsgPack,
        Decode::Protobuf,
        Decode::UpcastTyped,
        Decode::UpcastValue,
    ];

    /// The `impl=` name.
    pub fn name(self) -> &'static str {
        match self {
            Decode::Json => "json",
            Decode::MsgPack => "msgpack",
            Decode::Protobuf => "protobuf",
            Decode::UpcastTyped => "json-upcast-typed",
            Decode::UpcastValue => "json-upcast-value",
        }
    }

    /// True for the implementations with an upcaster in the path (their lines carry
    /// `ratio_to_plain`, against `json`).
    pub fn upcasts(self) -> bool {
        matches!(self, Decode::UpcastTyped | Decode::UpcastValue)
    }
}

/// The type name of the written events.
const ORDER_PLACED: &str = "OrderPlaced";

/// The order every event carries, from the benchmark payload.
pub fn order(payload: &Bytes) -> Result<OrderPlaced> {
    let order: OrderPlaced =
        serde_json::from_slice(payload).context("the benchmark payload is not an order")?;
    Ok(order)
}

/// What a load folds its events into, as an aggregate's `apply` would.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Events read from the store.
    pub read: u64,
    /// `OrderPlaced` events decoded.
    pub placed: u64,
    /// Their `totalCents`, summed.
    pub total_cents: u64,
    /// Their order lines, counted.
    pub lines: u64,
    /// The length of their customer id, summed (checks the upcast field).
    pub customer_chars: u64,
}

impl Tally {
    fn apply(&mut self, e: &OrderEvent) {
        if let OrderEvent::Placed(o) = e {
            self.placed += 1;
            self.total_cents += o.total_cents;
            self.lines += o.lines.len() as u64;
            self.customer_chars += o.customer_id.len() as u64;
        }
    }

    fn apply_pb(&mut self, e: &OrderEventPb) {
        if let OrderEventPb::Placed(o) = e {
            self.placed += 1;
            self.total_cents += o.total_cents;
            self.lines += o.lines.len() as u64;
            self.customer_chars += o.customer_id.len() as u64;
        }
    }
}

/// The decoder of an implementation.
enum Decoder {
    Serde(EventDecoder<OrderEvent, SerdeEvents>),
    Prost(EventDecoder<OrderEventPb, ProstEvents>),
}

/// The schema registry of the upcast implementations: `OrderPlaced` is at version 2,
/// and one upcaster of the given kind leads from version 1.
fn registry(which: Decode) -> Result<Arc<SchemaRegistry>> {
    let upcaster = match which {
        Decode::UpcastTyped => {
            Upcaster::to_event::<OrderPlacedV1, OrderEvent>(ORDER_PLACED, 1, |v1| {
                OrderEvent::Placed(v1.into())
            })
        }
        _ => Upcaster::value(ORDER_PLACED, 1, |v| {
            let o = v.as_object_mut().ok_or("OrderPlaced v1 is not an object")?;
            let customer = o
                .remove("customer")
                .ok_or("OrderPlaced v1 has no customer")?;
            o.insert("customerId".to_owned(), customer);
            Ok(())
        }),
    };
    Ok(Arc::new(
        SchemaRegistry::builder()
            .event(ORDER_PLACED, 2)
            .upcaster(upcaster)
            .build()?,
    ))
}

/// What an implementation writes: type name, codec, schema version and payload of
/// every event of its stream.
fn stored_form(which: Decode, order: &OrderPlaced) -> Result<(Encoded, u32)> {
    let event = OrderEvent::Placed(order.clone());
    let encode = |format| {
        EventCodec::<OrderEvent>::encode(&SerdeEvents::new(format), &event)
            .map_err(|e| anyhow::anyhow!("encoding the order: {e}"))
    };
    Ok(match which {
        Decode::Json => (encode(SerdeFormat::Json)?, 1),
        Decode::MsgPack => (encode(SerdeFormat::MsgPack)?, 1),
        Decode::Protobuf => {
            let pb = OrderEventPb::Placed(OrderPlacedPb::from(order));
            let enc = EventCodec::<OrderEventPb>::encode(&ProstEvents, &pb)
                .map_err(|e| anyhow::anyhow!("encoding the order: {e}"))?;
            (enc, 1)
        }
        Decode::UpcastTyped | Decode::UpcastValue => (
            Encoded {
                event_type: ORDER_PLACED,
                codec: CodecTag::JSON,
                payload: serde_json::to_vec(&OrderPlacedV1::from(order))?,
            },
            1,
        ),
    })
}

/// W3D on one implementation: loads and decodes one long stream, again and again.
pub struct Decodes<S> {
    store: S,
    which: Decode,
    stream: StreamId,
    len: usize,
    decoder: Decoder,
    order: OrderPlaced,
    loads: u64,
    tally: Tally,
    decode_time: Duration,
}

impl<S: EventStore> Decodes<S> {
    /// Writes the stream of `which` (`len` events, untimed) and returns the workload.
    /// Each implementation uses its own stream, so several can share a store.
    pub async fn setup(store: S, which: Decode, len: usize, payload: &Bytes) -> Result<Self> {
        let order = order(payload)?;
        let (encoded, schema_version) = stored_form(which, &order)?;
        if which == Decode::Json {
            // The JSON events carry the benchmark payload, field for field.
            let ours: serde_json::Value = serde_json::from_slice(&encoded.payload)?;
            let bench: serde_json::Value = serde_json::from_slice(payload)?;
            ensure!(
                ours == bench && encoded.payload.len() == payload.len(),
                "the JSON order differs from the benchmark payload"
            );
        }
        let bytes = Bytes::from(encoded.payload);
        let stream = StreamId::new(format!("Bench-w3d{}", which.name().replace('-', "")))?;
        let mut version = 0;
        while (version as usize) < len {
            let n = (len - version as usize).min(1000);
            let events = (0..n)
                .map(|_| {
                    NewEvent::new(encoded.event_type, bytes.clone())
                        .with_codec(encoded.codec.clone())
                        .with_schema_version(schema_version)
                })
                .collect();
            version = store
                .append(&stream, ExpectedVersion::from_version(version), events)
                .await
                .context("writing the W3D stream")?
                .version;
        }
        let decoder = match which {
            Decode::Json => Decoder::Serde(EventDecoder::new(
                SerdeEvents::new(SerdeFormat::Json),
                ReplayMode::Strict,
            )),
            Decode::MsgPack => Decoder::Serde(EventDecoder::new(
                SerdeEvents::new(SerdeFormat::MsgPack),
                ReplayMode::Strict,
            )),
            Decode::Protobuf => Decoder::Prost(EventDecoder::new(ProstEvents, ReplayMode::Strict)),
            Decode::UpcastTyped | Decode::UpcastValue => Decoder::Serde(
                EventDecoder::new(SerdeEvents::new(SerdeFormat::Json), ReplayMode::Strict)
                    .with_schema(registry(which)?),
            ),
        };
        Ok(Decodes {
            store,
            which,
            stream,
            len,
            decoder,
            order,
            loads: 0,
            tally: Tally::default(),
            decode_time: Duration::ZERO,
        })
    }

    /// The implementation.
    pub fn which(&self) -> Decode {
        self.which
    }

    /// Loads and decodes the whole stream `loads` times; returns the events decoded
    /// and the time taken (the decoding part alone is added to
    /// [`Decodes::decode_time`]).
    pub async fn run(&mut self, loads: u64) -> Result<(u64, Duration)> {
        let mut tally = Tally::default();
        let mut decoding = Duration::ZERO;
        let start = Instant::now();
        for _ in 0..loads {
            let events = self.store.read_stream(&self.stream, 1, self.len).await?;
            let decode_start = Instant::now();
            tally.read += events.len() as u64;
            match &self.decoder {
                Decoder::Serde(d) => {
                    for e in &events {
                        d.decode_each(e, |ev| tally.apply(&ev))?;
                    }
                }
                Decoder::Prost(d) => {
                    for e in &events {
                        d.decode_each(e, |ev| tally.apply_pb(&ev))?;
                    }
                }
            }
            decoding += decode_start.elapsed();
        }
        let elapsed = start.elapsed();
        self.loads += loads;
        self.tally.read += tally.read;
        self.tally.placed += tally.placed;
        self.tally.total_cents += tally.total_cents;
        self.tally.lines += tally.lines;
        self.tally.customer_chars += tally.customer_chars;
        self.decode_time += decoding;
        Ok((loads * self.len as u64, elapsed))
    }

    /// Time spent decoding (read excluded) over every run so far, warm-up included.
    pub fn decode_time(&self) -> Duration {
        self.decode_time
    }

    /// Checks that every event of every load so far was read and decoded into the
    /// order that was written.
    pub fn verify(&self) -> Result<()> {
        let n = self.loads * self.len as u64;
        let o = &self.order;
        let expected = Tally {
            read: n,
            placed: n,
            total_cents: n * o.total_cents,
            lines: n * o.lines.len() as u64,
            customer_chars: n * o.customer_id.len() as u64,
        };
        ensure!(
            self.tally == expected,
            "{}: decoded {:?}, expected {expected:?}",
            self.which.name(),
            self.tally
        );
        Ok(())
    }
}

/// The result of one implementation: the timed loads, and the time spent decoding in
/// them.
#[derive(Clone, Copy, Debug, Default)]
pub struct DecodeResult {
    /// Events loaded and decoded, and the time of the timed loads.
    pub measurement: Measurement,
    /// The part of that time spent decoding (read excluded).
    pub decoding: Duration,
}

impl DecodeResult {
    /// Adds the timed loads of one run.
    pub fn add(&mut self, measured: (u64, Duration), decoding: Duration) {
        self.measurement.add(measured);
        self.decoding += decoding;
    }
}

/// Times `loads` loads of a workload that is set up and warmed up; adds them to
/// `result` and reports them on stderr as run or chunk `k`.
pub async fn timed<S: EventStore>(
    w: &mut Decodes<S>,
    loads: u64,
    k: usize,
    result: &mut DecodeResult,
) -> Result<()> {
    let before = w.decode_time();
    let measured = w.run(loads).await?;
    let decoding = w.decode_time() - before;
    eprintln!(
        "mink-bench:   W3D run {k} ({}): {} events in {:.3} s, {:.3} s of it decoding",
        w.which().name(),
        measured.0,
        measured.1.as_secs_f64(),
        decoding.as_secs_f64()
    );
    result.add(measured, decoding);
    Ok(())
}

/// Runs every implementation twice, in mirrored order (json … json-upcast-value,
/// json-upcast-value … json), each run with half the loads on a fresh store that
/// `open(which, k)` returns: set up, warm-up (untimed), timed loads, verify. Returns
/// one result per implementation, in [`Decode::ALL`] order.
pub async fn mirrored_runs<S: EventStore>(
    sizes: &Sizes,
    payload: &Bytes,
    mut open: impl AsyncFnMut(Decode, usize) -> Result<S>,
) -> Result<Vec<(Decode, DecodeResult)>> {
    let halves = split(sizes.w3d_loads, 2);
    let mut out: Vec<(Decode, DecodeResult)> = Decode::ALL
        .iter()
        .map(|&d| (d, DecodeResult::default()))
        .collect();
    let mut seen = [0usize; Decode::ALL.len()];
    for (k, which) in mirrored(&Decode::ALL).into_iter().enumerate() {
        let i = Decode::ALL
            .iter()
            .position(|&d| d == which)
            .unwrap_or_default();
        let part = halves[seen[i].min(1)];
        seen[i] += 1;
        let store = open(which, k).await?;
        let mut w = Decodes::setup(store, which, sizes.w3_stream_len, payload).await?;
        w.run(warmup(part)).await?;
        timed(&mut w, part, k, &mut out[i].1).await?;
        w.verify()?;
    }
    Ok(out)
}

/// The lines of W3D on `backend`: the codecs, then the upcast paths with their ratio
/// to plain JSON. The decoding-only rates go to stderr.
pub fn lines(backend: &'static str, results: &[(Decode, DecodeResult)]) -> Vec<Line> {
    let plain = results
        .iter()
        .find(|(d, _)| *d == Decode::Json)
        .map(|(_, r)| r.measurement);
    for (which, r) in results {
        let secs = r.decoding.as_secs_f64();
        if secs > 0.0 {
            eprintln!(
                "mink-bench:   W3D {backend} {}: decoding alone {:.0} events/s",
                which.name(),
                r.measurement.events as f64 / secs
            );
        }
    }
    results
        .iter()
        .map(|&(which, r)| {
            let line = Line::new(Workload::W3D, backend, which.name(), r.measurement);
            match plain {
                Some(plain) if which.upcasts() => line.against_plain(plain),
                _ => line,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use mink_es::{MemoryStore, StreamReader};

    use super::*;
    use crate::common::payload;

    #[tokio::test]
    async fn every_implementation_decodes_the_benchmark_order() {
        let payload = payload().unwrap();
        for which in Decode::ALL {
            let mut w = Decodes::setup(MemoryStore::new(), which, 25, &payload)
                .await
                .unwrap();
            let (events, _) = w.run(2).await.unwrap();
            assert_eq!(events, 50, "{which:?}");
            w.verify().unwrap();
        }
    }

    #[tokio::test]
    async fn the_upcast_streams_need_their_upcaster() {
        // Read without the registry, a version 1 order does not decode: what the
        // upcast lines measure is the upcaster's work.
        let payload = payload().unwrap();
        let w = Decodes::setup(MemoryStore::new(), Decode::UpcastTyped, 1, &payload)
            .await
            .unwrap();
        let events = w.store.read_stream(&w.stream, 1, 1).await.unwrap();
        let plain = EventDecoder::<OrderEvent, _>::new(
            SerdeEvents::new(SerdeFormat::Json),
            ReplayMode::Strict,
        );
        assert!(plain.decode(&events[0]).is_err());
    }
}
