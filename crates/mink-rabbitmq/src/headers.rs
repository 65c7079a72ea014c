//! What a published message carries: AMQP properties and headers.
//!
//! Properties:
//!
//! | property | value |
//! |---|---|
//! | `message_id` | the outbox message id (stable across redeliveries: consumers de-duplicate on it) |
//! | `delivery_mode` | 2, persistent |
//! | `content_type` | from the payload's codec (see [`ContentTypes`](crate::ContentTypes)) |
//! | `type` | the event type name |
//! | `timestamp` | when the event was recorded, in seconds since the Unix epoch |
//! | `correlation_id` | the event's correlation id, when set (and at most 255 bytes) |
//! | `app_id` | when configured ([`RabbitPublisherBuilder::app_id`](crate::RabbitPublisherBuilder::app_id)) |
//!
//! `user_id` is never set: RabbitMQ checks it against the connection's user. The
//! event's user id travels in the `mink-user-id` header.
//!
//! Headers (every value a long string):
//!
//! | header | value |
//! |---|---|
//! | [`MESSAGE_ID`] `mink-message-id` | the outbox message id |
//! | [`EVENT_ID`] `mink-event-id` | the event id |
//! | [`EVENT_TYPE`] `mink-event-type` | the event type name |
//! | [`STREAM_ID`] `mink-stream-id` | the event's stream |
//! | [`STREAM_VERSION`] `mink-stream-version` | the event's version in its stream, in decimal |
//! | [`POSITION`] `mink-position` | the event's position in the store's feed (its stable text form) |
//! | [`DESTINATION`] `mink-destination` | the outbox route's destination name |
//! | [`CODEC`] `mink-codec` | the payload's codec tag (`json`, `msgpack`, …) |
//! | [`RECORDED_AT`] `mink-recorded-at` | when the event was recorded, RFC 3339 in UTC, microseconds |
//! | [`CORRELATION_ID`] `mink-correlation-id` | when set |
//! | [`CAUSATION_ID`] `mink-causation-id` | when set |
//! | [`USER_ID`] `mink-user-id` | when set |
//! | [`TENANT_ID`] `mink-tenant-id` | when set |
//! | `traceparent`, `tracestate`, `baggage` | the W3C trace context, when the event's custom metadata holds these keys |
//! | `mink-meta-<key>` ([`CUSTOM_PREFIX`]) | every other custom metadata entry |
//!
//! A header whose name would exceed 255 bytes is left out, with a warning in the log.

use amq_types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use lapin::types as amq_types;
use mink_es::outbox::OutboxMessage;

/// The longest AMQP short string (names, routing keys, most properties).
pub(crate) const MAX_SHORT: usize = 255;

/// `mink-message-id`: the outbox message id.
pub const MESSAGE_ID: &str = "mink-message-id";
/// `mink-event-id`: the event id.
pub const EVENT_ID: &str = "mink-event-id";
/// `mink-event-type`: the event type name.
pub const EVENT_TYPE: &str = "mink-event-type";
/// `mink-stream-id`: the event's stream.
pub const STREAM_ID: &str = "mink-stream-id";
/// `mink-stream-version`: the event's version in its stream.
pub const STREAM_VERSION: &str = "mink-stream-version";
/// `mink-position`: the event's position in the store's feed.
pub const POSITION: &str = "mink-position";
/// `mink-destination`: the outbox destination.
pub const DESTINATION: &str = "mink-destination";
/// `mink-codec`: the payload's codec tag.
pub const CODEC: &str = "mink-codec";
/// `mink-recorded-at`: when the event was recorded (RFC 3339, UTC).
pub const RECORDED_AT: &str = "mink-recorded-at";
/// `mink-correlation-id`.
pub const CORRELATION_ID: &str = "mink-correlation-id";
/// `mink-causation-id`.
pub const CAUSATION_ID: &str = "mink-causation-id";
/// `mink-user-id`.
pub const USER_ID: &str = "mink-user-id";
/// `mink-tenant-id`.
pub const TENANT_ID: &str = "mink-tenant-id";
/// The prefix of the custom metadata headers: `mink-meta-<key>`.
pub const CUSTOM_PREFIX: &str = "mink-meta-";
/// The custom metadata keys that travel under their own names (W3C trace context).
pub const TRACE_CONTEXT_KEYS: [&str; 3] = ["traceparent", "tracestate", "baggage"];

/// The headers of `m`.
pub(crate) fn table(m: &OutboxMessage) -> FieldTable {
    let mut t = FieldTable::default();
    put(&mut t, MESSAGE_ID, m.id.to_string());
    put(&mut t, EVENT_ID, m.event_id.to_string());
    put(&mut t, EVENT_TYPE, m.event_type.clone());
    put(&mut t, STREAM_ID, m.stream_id.as_str().to_owned());
    put(&mut t, STREAM_VERSION, m.stream_version.to_string());
    put(&mut t, POSITION, m.position.to_string());
    put(&mut t, DESTINATION, m.destination.clone());
    put(&mut t, CODEC, m.codec.as_str().to_owned());
    put(
        &mut t,
        RECORDED_AT,
        m.created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    );
    let md = &m.metadata;
    for (name, value) in [
        (CORRELATION_ID, md.correlation_id()),
        (CAUSATION_ID, md.causation_id()),
        (USER_ID, md.user_id()),
        (TENANT_ID, md.tenant_id()),
    ] {
        if let Some(v) = value {
            put(&mut t, name, v.to_owned());
        }
    }
    for (key, value) in md.custom() {
        if TRACE_CONTEXT_KEYS.contains(&key.as_str()) {
            put(&mut t, key, value.clone());
        } else {
            put(&mut t, &format!("{CUSTOM_PREFIX}{key}"), value.clone());
        }
    }
    t
}

fn put(t: &mut FieldTable, name: &str, value: String) {
    match ShortString::try_new(name) {
        Ok(name) => {
            t.insert(name, AMQPValue::LongString(LongString::from(value)));
        }
        Err(_) => tracing::warn!(
            header = name,
            "an AMQP header name is at most 255 bytes; header left out"
        ),
    }
}

/// `value` as a short string property, if it fits.
pub(crate) fn short(value: &str) -> Option<ShortString> {
    ShortString::try_new(value).ok()
}

/// The properties of `m`: persistent, with its id, type, time, content type and headers.
pub(crate) fn properties(
    m: &OutboxMessage,
    content_type: &str,
    app_id: Option<&ShortString>,
) -> BasicProperties {
    let mut p = BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(ShortString::from(m.id.to_string()))
        .with_headers(table(m));
    if let Some(ct) = short(content_type) {
        p = p.with_content_type(ct);
    }
    if let Some(kind) = short(&m.event_type) {
        p = p.with_type(kind);
    }
    if let Ok(secs) = u64::try_from(m.created_at.timestamp()) {
        p = p.with_timestamp(secs);
    }
    if let Some(c) = m.metadata.correlation_id().and_then(short) {
        p = p.with_correlation_id(c);
    }
    if let Some(a) = app_id {
        p = p.with_app_id(a.clone());
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use mink_es::{Bytes, CodecTag, EventId, Metadata, Position, StreamId};

    #[test]
    fn properties_and_headers_carry_the_event() {
        let m = OutboxMessage {
            id: mink_es::Uuid::now_v7(),
            destination: "orders".into(),
            stream_id: StreamId::new("order-1").unwrap(),
            event_id: EventId::new(),
            event_type: "Placed".into(),
            stream_version: 7,
            position: Position::new(0, 9),
            payload: Bytes::new(),
            codec: CodecTag::JSON,
            metadata: Metadata::default()
                .with_correlation_id("c".repeat(300))
                .with_user_id("alice")
                .with_custom("traceparent", "00-abc-def-01")
                .with_custom("source", "web")
                .with_custom("k".repeat(300), "dropped"),
            created_at: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        };
        let p = properties(&m, "application/json", None);
        assert_eq!(p.delivery_mode(), &Some(2));
        assert_eq!(
            p.message_id().as_ref().map(|s| s.as_str().to_owned()),
            Some(m.id.to_string())
        );
        assert_eq!(p.kind().as_ref().map(ShortString::as_str), Some("Placed"));
        assert_eq!(p.timestamp(), &Some(1_700_000_000));
        assert_eq!(
            p.content_type().as_ref().map(ShortString::as_str),
            Some("application/json")
        );
        assert_eq!(p.correlation_id(), &None, "too long for the property");
        assert_eq!(p.user_id(), &None);
        let h = p.headers().as_ref().unwrap();
        let get = |k: &str| match h.inner().get(k) {
            Some(AMQPValue::LongString(s)) => {
                Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
            }
            _ => None,
        };
        assert_eq!(get(MESSAGE_ID), Some(m.id.to_string()));
        assert_eq!(get(STREAM_VERSION).as_deref(), Some("7"));
        assert_eq!(get(POSITION).as_deref(), Some("9"));
        assert_eq!(get(CORRELATION_ID), Some("c".repeat(300)));
        assert_eq!(get(USER_ID).as_deref(), Some("alice"));
        assert_eq!(get("traceparent").as_deref(), Some("00-abc-def-01"));
        assert_eq!(get("mink-meta-source").as_deref(), Some("web"));
        assert_eq!(
            get(RECORDED_AT).as_deref(),
            Some("2023-11-14T22:13:20.000000Z")
        );
        assert_eq!(h.inner().len(), 13);
    }
}
