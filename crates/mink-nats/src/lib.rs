//! An outbox publisher to [NATS JetStream](https://docs.nats.io/nats-concepts/jetstream),
//! for [mink](mink_es)'s [`OutboxProcessor`](mink_es::outbox::OutboxProcessor).
//!
//! [`NatsPublisher`] publishes each outbox message to a JetStream subject chosen by its
//! destination ([`SubjectTemplate`], by default `mink.{destination}.{category}`), with
//! the outbox message id as `Nats-Msg-Id` — so a stream with a duplicate window stores
//! a redelivered message once — and the event's metadata as headers: the standard
//! headers every mink publisher sends ([`mink_es::outbox::headers`]; see [`headers`]). A publish is complete only when the stream has acknowledged it.
//! A batch is pipelined: every message is sent, then all the acks are awaited.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use mink_es::outbox::{Outbox, OutboxProcessor, Route};
//! use mink_es::MemoryStore;
//! use mink_nats::{NatsPublisher, stream_config};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! // Every event goes to the outbox destination "orders".
//! let store = MemoryStore::with_outbox(Outbox::new().route(Route::all("orders"))?);
//!
//! // Its messages go to `shop.orders.<category>.<event type>`.
//! let publisher = NatsPublisher::builder()
//!     .destination("orders", "shop.orders.{category}.{event_type}")
//!     .ack_timeout(Duration::from_secs(5))
//!     .connect("nats://127.0.0.1:4222")
//!     .await?;
//!
//! // Setup (usually done by deployment): a stream over those subjects that drops a
//! // repeated message id for ten minutes.
//! publisher
//!     .ensure_stream(stream_config("SHOP_ORDERS", ["shop.orders.>"], Duration::from_secs(600)))
//!     .await?;
//!
//! let outbox = store.outbox_store().expect("the store has an outbox");
//! let processor = OutboxProcessor::new(std::sync::Arc::new(outbox)).publisher("orders", publisher);
//! let cancel = CancellationToken::new();
//! tokio::spawn(processor.run(cancel.clone()));
//! // … append events; cancel.cancel() to stop.
//! # Ok(())
//! # }
//! ```
//!
//! # Subjects
//!
//! Each destination has a subject template: its own
//! ([`NatsPublisherBuilder::destination`]) or the default
//! ([`NatsPublisherBuilder::subject`]). With
//! [`NatsPublisherBuilder::only_listed_destinations`] there is no default, and a message
//! for an unlisted destination fails permanently. Placeholders `{destination}`,
//! `{category}`, `{event_type}` and `{stream_id}` each fill exactly one subject token
//! (see [`SubjectTemplate`] for how values are escaped). The subjects must be captured
//! by a stream; [`stream_config`] and [`NatsPublisher::ensure_stream`] make one.
//!
//! # Errors
//!
//! A delivery failure is a [`PublishError`](mink_es::outbox::PublishError):
//!
//! | failure | kind |
//! |---|---|
//! | cannot connect (lazy publisher), connection lost, broken pipe | retryable |
//! | no ack within the ack timeout | retryable |
//! | no stream captures the subject (JetStream "no responders"; also seen while a clustered stream elects a leader) | retryable |
//! | any other error the stream returns (storage full, stream sealed, …) | retryable |
//! | message larger than the server's `max_payload`, or than the stream's `max_msg_size` (headers count: about 600 bytes of them) / header limit | permanent |
//! | a subject the client refuses; a destination with no subject | permanent |
//!
//! Retryable messages are retried by the processor with backoff until its attempt
//! limit; permanent ones go to the dead-letter queue at once. A JetStream ack flagged
//! `duplicate` is a success: the stream already holds the message.
//!
//! # Connections
//!
//! [`NatsPublisherBuilder::connect`] connects at once and fails if the server cannot be
//! reached; [`NatsPublisherBuilder::connect_lazily`] connects on the first publish (a
//! failure is retryable, the next publish tries again);
//! [`NatsPublisherBuilder::build`] uses a client you made. Once connected, async-nats
//! reconnects by itself (without limit, by default).
//!
//! # Tests
//!
//! The tests in `tests/` need a NATS server with JetStream: set `MINK_NATS_URL` (for
//! example `nats://127.0.0.1:4222`). Without it they are skipped with a notice, and
//! fail instead when `MINK_REQUIRE_SERVICES=1`.

#![forbid(unsafe_code)]

mod error;
pub mod headers;
mod publisher;
mod subject;

pub use error::NatsError;
pub use publisher::{
    DEFAULT_ACK_TIMEOUT, DEFAULT_MAX_ACK_INFLIGHT, NatsPublisher, NatsPublisherBuilder,
    stream_config,
};
pub use subject::SubjectTemplate;

/// Maps a payload's codec tag to the `Content-Type` a message is published with: the
/// built-in [`content_type`](mink_es::outbox::headers::content_type) of each codec
/// (`json` → `application/json`, `msgpack` → `application/msgpack`, `protobuf` →
/// `application/x-protobuf`, any other → `application/octet-stream`), with mappings
/// added by [`ContentTypes::with`]. The type is shared with every mink publisher.
///
/// ```
/// use mink_nats::ContentTypes;
/// let types = ContentTypes::default().with("avro", "application/avro");
/// assert_eq!(types.get("json"), "application/json");
/// assert_eq!(types.get("avro"), "application/avro");
/// assert_eq!(types.get("cbor"), "application/octet-stream");
/// ```
pub use mink_es::outbox::ContentTypes;

/// The NATS client crate this one is built on, for its connection options and
/// JetStream types.
pub use async_nats;
