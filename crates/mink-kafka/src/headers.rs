//! The Kafka record headers that carry an outbox message's metadata: the standard
//! headers every mink publisher sends, listed in [`mink_es::outbox::headers`]. The
//! constants here are those names.

use mink_es::outbox::OutboxMessage;
use rdkafka::message::{Header, OwnedHeaders};

pub use mink_es::outbox::headers::{
    CAUSATION_ID, CODEC, CORRELATION_ID, DESTINATION, EVENT_ID, EVENT_TYPE, MESSAGE_ID, POSITION,
    RECORDED_AT, STREAM_ID, STREAM_VERSION, TENANT_ID, USER_ID,
};

/// The header of the event's time, under its former constant name: the same header as
/// [`RECORDED_AT`] (`mink-recorded-at`; this crate once sent `mink-created-at`).
pub const CREATED_AT: &str = RECORDED_AT;

/// The prefix of the other custom metadata keys: custom key `source` travels as
/// `mink-meta-source` (this crate once sent `mink-custom-source`).
pub const CUSTOM_PREFIX: &str = mink_es::outbox::headers::META_PREFIX;

/// Custom metadata keys that travel under their own names, so that tracing
/// propagators (W3C Trace Context and Baggage) find them: `traceparent`, `tracestate`,
/// `baggage`.
pub const PASS_THROUGH: [&str; 3] = mink_es::outbox::headers::TRACE_CONTEXT;

/// The headers of the record for `m`: the standard headers in their fixed order (see
/// [`mink_es::outbox::headers::standard`]), each value as its UTF-8 bytes. Unset ids
/// are left out.
pub fn for_message(m: &OutboxMessage) -> OwnedHeaders {
    let standard = m.headers();
    let mut h = OwnedHeaders::new_with_capacity(standard.len());
    for (key, value) in &standard {
        h = h.insert(Header {
            key,
            value: Some(value.as_bytes()),
        });
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use mink_es::{Bytes, CodecTag, EventId, Metadata, Position, StreamId};
    use rdkafka::message::Headers as _;

    #[test]
    fn every_standard_header_becomes_a_record_header() {
        let event_id = EventId::new();
        let m = OutboxMessage {
            id: OutboxMessage::id_for(event_id, "orders"),
            destination: "orders".into(),
            stream_id: StreamId::new("order-1").unwrap(),
            event_id,
            event_type: "Placed".into(),
            stream_version: 7,
            position: Position::new(0, 9),
            payload: Bytes::new(),
            codec: CodecTag::JSON,
            metadata: Metadata::default()
                .with_correlation_id("c-1")
                .with_causation_id("k-1")
                .with_user_id("alice")
                .with_tenant_id("t-1")
                .with_custom("traceparent", "00-abc-def-01")
                .with_custom("source", "web"),
            created_at: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        };
        let h = for_message(&m);
        let got: Vec<(String, String)> = h
            .iter()
            .map(|h| {
                (
                    h.key.to_owned(),
                    String::from_utf8(h.value.unwrap().to_vec()).unwrap(),
                )
            })
            .collect();
        let want: Vec<(String, String)> = [
            ("mink-message-id", m.id.to_string()),
            ("mink-event-id", event_id.to_string()),
            ("mink-event-type", "Placed".into()),
            ("mink-stream-id", "order-1".into()),
            ("mink-stream-version", "7".into()),
            ("mink-position", "9".into()),
            ("mink-destination", "orders".into()),
            ("mink-codec", "json".into()),
            ("mink-recorded-at", "2023-11-14T22:13:20.000000Z".into()),
            ("mink-correlation-id", "c-1".into()),
            ("mink-causation-id", "k-1".into()),
            ("mink-user-id", "alice".into()),
            ("mink-tenant-id", "t-1".into()),
            ("traceparent", "00-abc-def-01".into()),
            ("mink-meta-source", "web".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(got, want);
        assert_eq!(CREATED_AT, RECORDED_AT);
        assert_eq!(CUSTOM_PREFIX, "mink-meta-");
    }
}
