//! The NATS headers a published message carries.
//!
//! | header | value |
//! |---|---|
//! | `Nats-Msg-Id` ([`NATS_MSG_ID`]) | the outbox message id (JetStream drops a repeat inside the stream's duplicate window) |
//! | `Content-Type` ([`CONTENT_TYPE`]) | from the payload's codec (see [`ContentTypes`](crate::ContentTypes)) |
//! | the standard headers | every one of [`mink_es::outbox::headers`]: `mink-message-id`, `mink-event-id`, `mink-event-type`, `mink-stream-id`, `mink-stream-version`, `mink-position`, `mink-destination`, `mink-codec`, `mink-recorded-at`, `mink-correlation-id`, `mink-causation-id`, `mink-user-id`, `mink-tenant-id` (the ids when set), `traceparent`, `tracestate`, `baggage` (when set), `mink-meta-<key>` for the other custom metadata |
//!
//! The names are the same for every mink publisher; the constants below are those of
//! [`mink_es::outbox::headers`].
//!
//! A header a NATS message cannot carry — a custom key with a character outside visible
//! ASCII or with `:`, a value with a line break — is left out, with a warning in the
//! log; the message is still published.

use std::str::FromStr;

use async_nats::{HeaderMap, HeaderName, HeaderValue};
use mink_es::outbox::OutboxMessage;

pub use mink_es::outbox::headers::{
    CAUSATION_ID, CODEC, CORRELATION_ID, DESTINATION, EVENT_ID, EVENT_TYPE, MESSAGE_ID,
    META_PREFIX as CUSTOM_PREFIX, POSITION, RECORDED_AT, STREAM_ID, STREAM_VERSION, TENANT_ID,
    TRACE_CONTEXT as TRACE_CONTEXT_KEYS, USER_ID,
};

/// `Nats-Msg-Id`: JetStream's de-duplication header.
pub const NATS_MSG_ID: &str = "Nats-Msg-Id";
/// `Content-Type`.
pub const CONTENT_TYPE: &str = "Content-Type";

/// The headers of `m`, published with content type `content_type`.
pub(crate) fn for_message(m: &OutboxMessage, content_type: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    put(&mut h, NATS_MSG_ID, &m.id.to_string());
    put(&mut h, CONTENT_TYPE, content_type);
    for (name, value) in m.headers() {
        put(&mut h, &name, &value);
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
        assert_eq!(get(POSITION).as_deref(), Some("0"));
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
