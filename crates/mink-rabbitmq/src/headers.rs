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
//! Headers (every value a long string): the standard headers every mink publisher
//! sends, documented in [`mink_es::outbox::headers`] — `mink-message-id`,
//! `mink-event-id`, `mink-event-type`, `mink-stream-id`, `mink-stream-version`,
//! `mink-position`, `mink-destination`, `mink-codec`, `mink-recorded-at`,
//! `mink-correlation-id`, `mink-causation-id`, `mink-user-id`, `mink-tenant-id` (the
//! ids when set), `traceparent`, `tracestate`, `baggage` (when set) and
//! `mink-meta-<key>` ([`CUSTOM_PREFIX`]) for the other custom metadata. The constants
//! below are those names.
//!
//! A header whose name would exceed 255 bytes (an AMQP short string) is left out, with
//! a warning in the log.

use amq_types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use lapin::types as amq_types;
use mink_es::outbox::OutboxMessage;

pub use mink_es::outbox::headers::{
    CAUSATION_ID, CODEC, CORRELATION_ID, DESTINATION, EVENT_ID, EVENT_TYPE, MESSAGE_ID,
    META_PREFIX as CUSTOM_PREFIX, POSITION, RECORDED_AT, STREAM_ID, STREAM_VERSION, TENANT_ID,
    TRACE_CONTEXT as TRACE_CONTEXT_KEYS, USER_ID,
};

/// The longest AMQP short string (names, routing keys, most properties).
pub(crate) const MAX_SHORT: usize = 255;

/// The headers of `m`.
pub(crate) fn table(m: &OutboxMessage) -> FieldTable {
    let mut t = FieldTable::default();
    for (name, value) in m.headers() {
        put(&mut t, &name, value.into_owned());
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
        assert_eq!(get(EVENT_ID), Some(m.event_id.to_string()));
        assert_eq!(get(EVENT_TYPE).as_deref(), Some("Placed"));
        assert_eq!(get(STREAM_ID).as_deref(), Some("order-1"));
        assert_eq!(get(STREAM_VERSION).as_deref(), Some("7"));
        assert_eq!(get(POSITION).as_deref(), Some("9"));
        assert_eq!(get(DESTINATION).as_deref(), Some("orders"));
        assert_eq!(get(CODEC).as_deref(), Some("json"));
        assert_eq!(get(CORRELATION_ID), Some("c".repeat(300)));
        assert_eq!(get(USER_ID).as_deref(), Some("alice"));
        assert_eq!(get("traceparent").as_deref(), Some("00-abc-def-01"));
        assert_eq!(get("mink-meta-source").as_deref(), Some("web"));
        assert_eq!(
            get("mink-recorded-at").as_deref(),
            Some("2023-11-14T22:13:20.000000Z")
        );
        assert_eq!(h.inner().len(), 13, "the 300-byte custom key is left out");
    }
}
