//! The names of the headers a webhook request carries.
//!
//! | header | value |
//! |---|---|
//! | `content-type` | from the message's codec: `json` → `application/json`, `msgpack` → `application/msgpack`, `protobuf` → `application/x-protobuf`, anything else `application/octet-stream` (overridable per codec) |
//! | [`webhook-id`](WEBHOOK_ID) | the outbox message id (a UUID): the same on every attempt, so receivers de-duplicate on it |
//! | [`webhook-timestamp`](WEBHOOK_TIMESTAMP) | Unix seconds when this attempt was signed |
//! | [`webhook-signature`](WEBHOOK_SIGNATURE) | `v1,<base64>` per secret, separated by spaces |
//! | [`mink-event-type`](MINK_EVENT_TYPE) | the event's type name |
//! | [`mink-event-id`](MINK_EVENT_ID) | the event's id (a UUID) |
//! | [`mink-stream-id`](MINK_STREAM_ID) | the event's stream (the ordering key) |
//! | [`mink-stream-version`](MINK_STREAM_VERSION) | the event's version in its stream (decimal, from 1) |
//! | [`mink-position`](MINK_POSITION) | the event's position in the store's feed (its stable text form) |
//! | [`mink-destination`](MINK_DESTINATION) | the outbox route's destination name |
//! | [`mink-codec`](MINK_CODEC) | the codec tag of the body (`json`, `msgpack`, …) |
//! | [`mink-recorded-at`](MINK_RECORDED_AT) | when the event was recorded, RFC 3339 in UTC with microseconds |
//! | [`mink-correlation-id`](MINK_CORRELATION_ID) | the event's correlation id, when set |
//! | [`mink-causation-id`](MINK_CAUSATION_ID) | the event's causation id, when set |
//! | [`mink-user-id`](MINK_USER_ID) | the event's user id, when set |
//! | [`mink-tenant-id`](MINK_TENANT_ID) | the event's tenant id, when set |
//! | [`traceparent`](TRACEPARENT), [`tracestate`](TRACESTATE), [`baggage`](BAGGAGE) | W3C trace context, when the event's custom metadata holds these keys |
//! | `mink-meta-<key>` ([`MINK_META_PREFIX`]) | every other custom metadata key/value, the key lower-cased (unless [`custom_metadata_headers(false)`](crate::WebhookPublisherBuilder::custom_metadata_headers)) |
//!
//! Values are sent as their UTF-8 bytes. A metadata value that HTTP cannot carry (it
//! holds a control character), or a custom key that is not a valid header name, is
//! left out of the headers with a warning in the logs: the body and signature are
//! unaffected.

/// The message id (Standard Webhooks).
pub const WEBHOOK_ID: &str = "webhook-id";
/// The attempt's Unix time in seconds (Standard Webhooks).
pub const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
/// The signatures (Standard Webhooks).
pub const WEBHOOK_SIGNATURE: &str = "webhook-signature";
/// The event's type name.
pub const MINK_EVENT_TYPE: &str = "mink-event-type";
/// The event's id.
pub const MINK_EVENT_ID: &str = "mink-event-id";
/// The event's stream id.
pub const MINK_STREAM_ID: &str = "mink-stream-id";
/// The event's version in its stream.
pub const MINK_STREAM_VERSION: &str = "mink-stream-version";
/// The event's position in the store's feed.
pub const MINK_POSITION: &str = "mink-position";
/// The outbox destination.
pub const MINK_DESTINATION: &str = "mink-destination";
/// The body's codec tag.
pub const MINK_CODEC: &str = "mink-codec";
/// When the event was recorded (RFC 3339, UTC).
pub const MINK_RECORDED_AT: &str = "mink-recorded-at";
/// The correlation id.
pub const MINK_CORRELATION_ID: &str = "mink-correlation-id";
/// The causation id.
pub const MINK_CAUSATION_ID: &str = "mink-causation-id";
/// The user id.
pub const MINK_USER_ID: &str = "mink-user-id";
/// The tenant id.
pub const MINK_TENANT_ID: &str = "mink-tenant-id";
/// W3C trace context: the parent span.
pub const TRACEPARENT: &str = "traceparent";
/// W3C trace context: vendor state.
pub const TRACESTATE: &str = "tracestate";
/// W3C baggage.
pub const BAGGAGE: &str = "baggage";
/// The prefix of the headers carrying the other custom metadata keys.
pub const MINK_META_PREFIX: &str = "mink-meta-";

/// Headers the publisher sets itself; extra headers may not use these names (nor any
/// name starting with `mink-`).
pub(crate) const RESERVED: &[&str] = &[
    WEBHOOK_ID,
    WEBHOOK_TIMESTAMP,
    WEBHOOK_SIGNATURE,
    TRACEPARENT,
    TRACESTATE,
    BAGGAGE,
    "content-type",
    "content-length",
    "transfer-encoding",
    "host",
];
