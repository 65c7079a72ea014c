//! The NATS headers a published message carries.
//!
//! | header | value |
//! |---|---|
//! | `Nats-Msg-Id` | the outbox message id (JetStream drops a repeat inside the stream's duplicate window) |
//! | `Content-Type` | from the payload's codec (see [`ContentTypes`](crate::ContentTypes)) |
//! | [`MESSAGE_ID`] `mink-message-id` | the outbox message id, again, for consumers that read no `Nats-*` header |
//! | [`EVENT_ID`] `mink-event-id` | the event id |
//! | [`EVENT_TYPE`] `mink-event-type` | the event type name |
//! | [`STREAM_ID`] `mink-stream-id` | the event's stream |
//! | [`STREAM_VERSION`] `mink-stream-version` | the event's version in its stream, in decimal |
//! | [`POSITION`] `mink-position` | the event's position in the store's feed (its stable text form) |
//! | [`DESTINATION`] `mink-destination` | the outbox route's destination name |
//! | [`CODEC`] `mink-codec` | the payload's codec tag (`json`, `msgpack`, …) |
//! | [`RECORDED_AT`] `mink-recorded-at` | when the event was recorded, RFC 3339 in UTC |
//! | [`CORRELATION_ID`] `mink-correlation-id` | when set |
//! | [`CAUSATION_ID`] `mink-causation-id` | when set |
//! | [`USER_ID`] `mink-user-id` | when set |
//! | [`TENANT_ID`] `mink-tenant-id` | when set |
//! | `traceparent`, `tracestate`, `baggage` | the W3C trace context, when the event's custom metadata holds these keys |
//! | `mink-meta-<key>` ([`CUSTOM_PREFIX`]) | every other custom metadata entry |
//!
//! A header a NATS message cannot carry — a custom key with a character outside visible
//! ASCII or with `:`, a value with a line break — is left out, with a warning in the
//! log; the message is still published.

use std::str::FromStr;

use async_nats::{HeaderMap, HeaderName, HeaderValue};
use mink_es::outbox::OutboxMessage;

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
/// `Nats-Msg-Id`: JetStream's de-duplication header.
pub const NATS_MSG_ID: &str = "Nats-Msg-Id";
/// `Content-Type`.
pub const CONTENT_TYPE: &str = "Content-Type";

/// The headers of `m`, published with content type `content_type`.
pub(crate) fn for_message(m: &OutboxMessage, content_type: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    let id = m.id.to_string();
    put(&mut h, NATS_MSG_ID, &id);
    put(&mut h, CONTENT_TYPE, content_type);
    put(&mut h, MESSAGE_ID, &id);
    put(&mut h, EVENT_ID, &m.event_id.to_string());
    put(&mut h, EVENT_TYPE, &m.event_type);
    put(&mut h, STREAM_ID, m.stream_id.as_str());
    put(&mut h, STREAM_VERSION, &m.stream_version.to_string());
    put(&mut h, POSITION, &m.position.to_string());
    put(&mut h, DESTINATION, &m.destination);
    put(&mut h, CODEC, m.codec.as_str());
    put(
        &mut h,
        RECORDED_AT,
        &m.created_at
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
            put(&mut h, name, v);
        }
    }
    for (key, value) in md.custom() {
        if TRACE_CONTEXT_KEYS.contains(&key.as_str()) {
            put(&mut h, key, value);
        } else {
            put(&mut h, &format!("{CUSTOM_PREFIX}{key}"), value);
        }
    }
    h
}

fn put(h: &mut HeaderMap, name: &str, value: &str) {
    match (HeaderName::from_str(name), HeaderValue::from_str(value)) {
        (Ok(n), Ok(v)) => h.insert(n, v),
        _ => tracing::warn!(
            header = name,
            "a NATS header cannot carry this name or value (non-visible-ASCII name, `:`, or a line break in the value); left out"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mink_es::{Bytes, CodecTag, EventId, Metadata, Position, StreamId};

    #[test]
    fn every_field_and_the_trace_context_become_headers() {
        let m = OutboxMessage {
            id: mink_es::Uuid::now_v7(),
            destination: "orders".into(),
            stream_id: StreamId::new("order-1").unwrap(),
            event_id: EventId::new(),
            event_type: "Placed".into(),
            stream_version: 7,
            position: Position::default(),
            payload: Bytes::new(),
            codec: CodecTag::JSON,
            metadata: Metadata::default()
                .with_correlation_id("c-1")
                .with_causation_id("k-1")
                .with_user_id("alice")
                .with_tenant_id("t-1")
                .with_custom("traceparent", "00-abc-def-01")
                .with_custom("source", "web")
                .with_custom("bad key", "dropped")
                .with_custom("multi", "line\nbreak"),
            created_at: Default::default(),
        };
        let h = for_message(&m, "application/json");
        let get = |k: &str| h.get(k).map(|v| v.as_str().to_owned());
        assert_eq!(get(NATS_MSG_ID), Some(m.id.to_string()));
        assert_eq!(get(MESSAGE_ID), Some(m.id.to_string()));
        assert_eq!(get(CONTENT_TYPE).as_deref(), Some("application/json"));
        assert_eq!(get(EVENT_ID), Some(m.event_id.to_string()));
        assert_eq!(get(EVENT_TYPE).as_deref(), Some("Placed"));
        assert_eq!(get(STREAM_ID).as_deref(), Some("order-1"));
        assert_eq!(get(STREAM_VERSION).as_deref(), Some("7"));
        assert_eq!(get(DESTINATION).as_deref(), Some("orders"));
        assert_eq!(get(CODEC).as_deref(), Some("json"));
        assert_eq!(
            get(RECORDED_AT).as_deref(),
            Some("1970-01-01T00:00:00.000000Z")
        );
        assert_eq!(get(CORRELATION_ID).as_deref(), Some("c-1"));
        assert_eq!(get(CAUSATION_ID).as_deref(), Some("k-1"));
        assert_eq!(get(USER_ID).as_deref(), Some("alice"));
        assert_eq!(get(TENANT_ID).as_deref(), Some("t-1"));
        assert_eq!(get("traceparent").as_deref(), Some("00-abc-def-01"));
        assert_eq!(get("mink-meta-source").as_deref(), Some("web"));
        assert_eq!(get("mink-meta-multi"), None);
        assert_eq!(h.iter().count(), 17);
    }
}
