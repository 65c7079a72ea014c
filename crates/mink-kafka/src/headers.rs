//! The Kafka record headers that carry an outbox message's metadata.

use mink_es::outbox::OutboxMessage;
use rdkafka::message::{Header, OwnedHeaders};

/// The outbox message id (a UUID, stable across redeliveries): consumers de-duplicate on it.
pub const MESSAGE_ID: &str = "mink-message-id";
/// The event id (a UUID).
pub const EVENT_ID: &str = "mink-event-id";
/// The event type name.
pub const EVENT_TYPE: &str = "mink-event-type";
/// The stream id (also the record key).
pub const STREAM_ID: &str = "mink-stream-id";
/// The event's version in its stream, in decimal.
pub const STREAM_VERSION: &str = "mink-stream-version";
/// The event's position in the store's feed, in its text form.
pub const POSITION: &str = "mink-position";
/// The codec of the record value (`json`, `msgpack`, …).
pub const CODEC: &str = "mink-codec";
/// When the event was recorded, RFC 3339 with microseconds, UTC.
pub const CREATED_AT: &str = "mink-created-at";
/// The correlation id, when set.
pub const CORRELATION_ID: &str = "mink-correlation-id";
/// The causation id, when set.
pub const CAUSATION_ID: &str = "mink-causation-id";
/// The user id, when set.
pub const USER_ID: &str = "mink-user-id";
/// The tenant id, when set.
pub const TENANT_ID: &str = "mink-tenant-id";
/// The prefix of the other custom metadata keys: custom key `source` travels as
/// `mink-custom-source`.
pub const CUSTOM_PREFIX: &str = "mink-custom-";

/// Custom metadata keys that travel under their own names, so that tracing
/// propagators (W3C Trace Context and Baggage) find them: `traceparent`, `tracestate`,
/// `baggage`.
pub const PASS_THROUGH: [&str; 3] = ["traceparent", "tracestate", "baggage"];

/// The headers of the record for `m`, in a fixed order: the `mink-*` headers, then the
/// trace context, then the other custom keys (`mink-custom-<key>`). Unset ids are
/// left out.
pub fn for_message(m: &OutboxMessage) -> OwnedHeaders {
    let mut h = OwnedHeaders::new_with_capacity(12 + m.metadata.custom().len());
    let mut add = |key: &str, value: &str| {
        h = std::mem::take(&mut h).insert(Header {
            key,
            value: Some(value.as_bytes()),
        });
    };
    add(MESSAGE_ID, &m.id.to_string());
    add(EVENT_ID, &m.event_id.to_string());
    add(EVENT_TYPE, &m.event_type);
    add(STREAM_ID, m.stream_id.as_str());
    add(STREAM_VERSION, &m.stream_version.to_string());
    add(POSITION, &m.position.to_string());
    add(CODEC, m.codec.as_str());
    add(
        CREATED_AT,
        &m.created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    );
    let md = &m.metadata;
    for (key, value) in [
        (CORRELATION_ID, md.correlation_id()),
        (CAUSATION_ID, md.causation_id()),
        (USER_ID, md.user_id()),
        (TENANT_ID, md.tenant_id()),
    ] {
        if let Some(v) = value {
            add(key, v);
        }
    }
    for key in PASS_THROUGH {
        if let Some(v) = md.custom_value(key) {
            add(key, v);
        }
    }
    for (key, value) in md.custom() {
        if !PASS_THROUGH.contains(&key.as_str()) {
            add(&format!("{CUSTOM_PREFIX}{key}"), value);
        }
    }
    h
}
