//! The names of the headers a webhook request carries.
//!
//! | header | value |
//! |---|---|
//! | `content-type` | from the message's codec ([`content_type`](mink_es::outbox::headers::content_type): `json` → `application/json`, `msgpack` → `application/msgpack`, `protobuf` → `application/x-protobuf`, anything else `application/octet-stream`; overridable per codec) |
//! | [`webhook-id`](WEBHOOK_ID) | the outbox message id (a UUID): the same on every attempt, so receivers de-duplicate on it |
//! | [`webhook-timestamp`](WEBHOOK_TIMESTAMP) | Unix seconds when this attempt was signed |
//! | [`webhook-signature`](WEBHOOK_SIGNATURE) | `v1,<base64>` per secret, separated by spaces |
//! | the standard headers | every one of [`mink_es::outbox::headers`] (documented there), the names every mink publisher sends: `mink-message-id` (the same id as `webhook-id`), `mink-event-type`, `mink-event-id`, `mink-stream-id`, `mink-stream-version`, `mink-position`, `mink-destination`, `mink-codec`, `mink-recorded-at`, `mink-correlation-id`, `mink-causation-id`, `mink-user-id`, `mink-tenant-id` (the ids when set), `traceparent`, `tracestate`, `baggage` (when set), `mink-meta-<key>` for the other custom metadata |
//!
//! The constants below are those names. HTTP header names are case-insensitive, so a
//! receiver sees `mink-meta-<key>` with the key lower-cased; the `mink-meta-*` headers
//! can be turned off with
//! [`custom_metadata_headers(false)`](crate::WebhookPublisherBuilder::custom_metadata_headers)
//! (trace context is always sent).
//!
//! Values are sent as their UTF-8 bytes. A metadata value that HTTP cannot carry (it
//! holds a control character), or a custom key that is not a valid header name, is
//! left out of the headers with a warning in the logs: the body and signature are
//! unaffected.

use mink_es::outbox::headers as standard;

/// The message id (Standard Webhooks).
pub const WEBHOOK_ID: &str = "webhook-id";
/// The attempt's Unix time in seconds (Standard Webhooks).
pub const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
/// The signatures (Standard Webhooks).
pub const WEBHOOK_SIGNATURE: &str = "webhook-signature";
/// The outbox message id.
pub const MINK_MESSAGE_ID: &str = standard::MESSAGE_ID;
/// The event's type name.
pub const MINK_EVENT_TYPE: &str = standard::EVENT_TYPE;
/// The event's id.
pub const MINK_EVENT_ID: &str = standard::EVENT_ID;
/// The event's stream id.
pub const MINK_STREAM_ID: &str = standard::STREAM_ID;
/// The event's version in its stream.
pub const MINK_STREAM_VERSION: &str = standard::STREAM_VERSION;
/// The event's position in the store's feed.
pub const MINK_POSITION: &str = standard::POSITION;
/// The outbox destination.
pub const MINK_DESTINATION: &str = standard::DESTINATION;
/// The body's codec tag.
pub const MINK_CODEC: &str = standard::CODEC;
/// When the event was recorded (RFC 3339, UTC).
pub const MINK_RECORDED_AT: &str = standard::RECORDED_AT;
/// The correlation id.
pub const MINK_CORRELATION_ID: &str = standard::CORRELATION_ID;
/// The causation id.
pub const MINK_CAUSATION_ID: &str = standard::CAUSATION_ID;
/// The user id.
pub const MINK_USER_ID: &str = standard::USER_ID;
/// The tenant id.
pub const MINK_TENANT_ID: &str = standard::TENANT_ID;
/// W3C trace context: the parent span.
pub const TRACEPARENT: &str = standard::TRACEPARENT;
/// W3C trace context: vendor state.
pub const TRACESTATE: &str = standard::TRACESTATE;
/// W3C baggage.
pub const BAGGAGE: &str = standard::BAGGAGE;
/// The prefix of the headers carrying the other custom metadata keys.
pub const MINK_META_PREFIX: &str = standard::META_PREFIX;

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
