//! An outbox publisher to [RabbitMQ](https://www.rabbitmq.com/), for
//! [mink](mink_es)'s [`OutboxProcessor`](mink_es::outbox::OutboxProcessor), on
//! [lapin](https://docs.rs/lapin) with its tokio runtime.
//!
//! [`RabbitPublisher`] publishes each outbox message to an exchange chosen by its
//! destination, with a routing key made from the message ([`RoutingKeyTemplate`], by
//! default `{category}.{event_type}`), as a persistent message whose `message_id` is
//! the outbox message id and whose headers carry the event's metadata: the standard
//! headers every mink publisher sends ([`mink_es::outbox::headers`]; see [`headers`]). The channel is in **publisher confirm** mode: a publish is complete
//! only when the broker has confirmed it. A batch is pipelined: every message is
//! published, then all the confirms are awaited.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use mink_es::outbox::{Outbox, OutboxProcessor, Route};
//! use mink_es::MemoryStore;
//! use mink_rabbitmq::{ExchangeKind, OnUnroutable, RabbitPublisher};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! // Every event goes to the outbox destination "orders".
//! let store = MemoryStore::with_outbox(Outbox::new().route(Route::all("orders"))?);
//!
//! // Its messages go to the topic exchange "shop.orders", routed by
//! // `<category>.<event type>`.
//! let publisher = RabbitPublisher::builder()
//!     .destination("orders", "shop.orders", "{category}.{event_type}")
//!     .on_unroutable(OnUnroutable::Retry)
//!     .confirm_timeout(Duration::from_secs(10))
//!     .connect("amqp://guest:guest@127.0.0.1:5672/%2f")
//!     .await?;
//!
//! // Setup (usually done by deployment): the exchange; consumers bind their queues.
//! publisher.declare_exchange("shop.orders", ExchangeKind::Topic).await?;
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
//! # Exchanges and routing keys
//!
//! Each destination has an exchange and a routing key template: its own
//! ([`RabbitPublisherBuilder::destination`]) or the defaults — the exchange named like
//! the destination (or the one [`RabbitPublisherBuilder::exchange`] names) and
//! `{category}.{event_type}` (or [`RabbitPublisherBuilder::routing_key`]). With
//! [`RabbitPublisherBuilder::only_listed_destinations`] there are no defaults, and a
//! message for an unlisted destination fails permanently. Placeholders
//! `{destination}`, `{category}`, `{event_type}` and `{stream_id}` each fill one word of
//! the key (see [`RoutingKeyTemplate`]).
//!
//! # Errors
//!
//! A delivery failure is a [`PublishError`](mink_es::outbox::PublishError):
//!
//! | failure | kind |
//! |---|---|
//! | cannot connect or log in, connection lost, connection-level (hard) AMQP error, I/O error | retryable |
//! | no confirm within the confirm timeout (the connection is then replaced) | retryable |
//! | the broker nacks the message | retryable |
//! | **unroutable** (returned by the broker, `mandatory` set) | retryable by default; permanent with [`OnUnroutable::DeadLetter`] |
//! | the exchange does not exist (`404 NOT_FOUND`) | permanent |
//! | no permission on the exchange (`403`), message refused as invalid or too large (`406`, `311`) | permanent |
//! | a frame the message cannot be encoded into | permanent |
//! | a routing key or exchange name over 255 bytes; a destination with no exchange | permanent |
//!
//! **Unroutable messages are retryable by default** because a missing queue or binding
//! usually appears later (consumers deployed after producers, a queue re-created); the
//! processor's backoff and attempt limit bound the wait, and the stream's order is kept
//! meanwhile. With `mandatory(false)`, the broker drops such a message silently (or
//! hands it to the exchange's alternate exchange) and the publish succeeds.
//!
//! A channel error in AMQP closes the channel, failing every message in flight on it,
//! so such an error cannot be pinned on a message at first. The publisher therefore
//! checks once per connection that each exchange exists (a passive declare on a
//! separate channel), and re-publishes the messages that a closed channel failed on
//! channels of their own, splitting them until each error is pinned on the message
//! that caused it: only that message fails permanently; the others are delivered.
//! When a frame races the broker's closing of a channel, the broker closes the whole
//! connection (`CHANNEL_ERROR`); the messages that failed with it are published once
//! more, on a fresh connection, before any is reported retryable.
//!
//! # Connections
//!
//! [`RabbitPublisherBuilder::connect`] connects at once and fails if the broker cannot
//! be reached; [`RabbitPublisherBuilder::connect_lazily`] connects on the first publish.
//! Either way, a connection that drops is re-established on the next publish (the
//! publish that meets the dead connection fails as retryable), and
//! [`RabbitPublisher::close`] closes it for a clean shutdown.
//!
//! # Tests
//!
//! The tests in `tests/` need a RabbitMQ broker: set `MINK_RABBITMQ_URL` (for example
//! `amqp://guest:guest@127.0.0.1:5672/%2f`). Without it they are skipped with a notice,
//! and fail instead when `MINK_REQUIRE_SERVICES=1`.
//!
//! # Features
//!
//! * `tls-rustls`: `amqps://` URLs, through rustls (ring, webpki roots).

#![forbid(unsafe_code)]

mod error;
pub mod headers;
mod publisher;
mod routing;

pub use error::RabbitError;
pub use publisher::{
    DEFAULT_CONFIRM_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, OnUnroutable, RabbitPublisher,
    RabbitPublisherBuilder,
};
pub use routing::{MAX_ROUTING_KEY_LEN, RoutingKeyTemplate};

/// Maps a payload's codec tag to the AMQP `content_type` property a message is
/// published with: the built-in
/// [`content_type`](mink_es::outbox::headers::content_type) of each codec (`json` →
/// `application/json`, `msgpack` → `application/msgpack`, `protobuf` →
/// `application/x-protobuf`, any other → `application/octet-stream`), with mappings
/// added by [`ContentTypes::with`]. The type is shared with every mink publisher.
///
/// ```
/// use mink_rabbitmq::ContentTypes;
/// let types = ContentTypes::default().with("avro", "application/avro");
/// assert_eq!(types.get("json"), "application/json");
/// assert_eq!(types.get("avro"), "application/avro");
/// assert_eq!(types.get("cbor"), "application/octet-stream");
/// ```
pub use mink_es::outbox::ContentTypes;

/// The AMQP client crate this one is built on, for its connection properties and
/// types.
pub use lapin;
/// The exchange types [`RabbitPublisher::declare_exchange`] takes.
pub use lapin::ExchangeKind;
