//! The SNS message attributes that carry an outbox message's metadata, and the body.
//!
//! The attributes have the names of the standard headers every mink publisher sends
//! ([`mink_es::outbox::headers`]), but not all of them: SNS delivers at most 10 message
//! attributes to an SQS subscription with raw message delivery (a message with more is
//! discarded there), so a message carries at most 10 — six always, four when they
//! apply:
//!
//! | attribute | value | sent |
//! |---|---|---|
//! | [`mink-message-id`](MESSAGE_ID) | the outbox message id | always |
//! | [`mink-event-id`](EVENT_ID) | the event id | always |
//! | [`mink-event-type`](EVENT_TYPE) | the event type name (for subscription filter policies) | always |
//! | [`mink-stream-id`](STREAM_ID) | the stream id | always |
//! | [`mink-stream-version`](STREAM_VERSION) | the event's version in its stream, a `Number` attribute | always |
//! | [`mink-codec`](CODEC) | the payload's codec tag | always |
//! | [`mink-correlation-id`](CORRELATION_ID) | the correlation id | when set and not empty |
//! | [`traceparent`](TRACEPARENT) | the W3C trace context | when set and not empty |
//! | [`mink-body-encoding`](BODY_ENCODING) | `base64`: the body is the base64 form of a payload that is not UTF-8 | when so |
//! | [`mink-metadata`](METADATA) | the whole metadata as JSON | when it holds more than the correlation id and `traceparent` |
//!
//! Everything of the event's metadata that has no attribute of its own travels in
//! [`METADATA`]; the other standard headers (`mink-position`, `mink-destination`,
//! `mink-recorded-at`) are not sent.

use std::collections::HashMap;

use aws_sdk_sns::types::MessageAttributeValue;
use base64::Engine as _;
use mink_es::outbox::{OutboxMessage, headers};

/// The outbox message id (a UUID, stable across redeliveries): receivers de-duplicate
/// on it. On a FIFO topic it is also the `MessageDeduplicationId`.
pub const MESSAGE_ID: &str = headers::MESSAGE_ID;
/// The event id (a UUID).
pub const EVENT_ID: &str = headers::EVENT_ID;
/// The event type name (for subscription filter policies).
pub const EVENT_TYPE: &str = headers::EVENT_TYPE;
/// The stream id (on a FIFO topic the message group, unless it had to be hashed: see
/// [`message_group_id`]).
pub const STREAM_ID: &str = headers::STREAM_ID;
/// The event's version in its stream (a `Number` attribute).
pub const STREAM_VERSION: &str = headers::STREAM_VERSION;
/// The codec of the payload (`json`, `msgpack`, …).
pub const CODEC: &str = headers::CODEC;
/// `base64` when the body is the base64 form of a payload that is not UTF-8 text (SNS
/// bodies are text); absent otherwise. Only SNS sends it.
pub const BODY_ENCODING: &str = "mink-body-encoding";
/// The correlation id, when set.
pub const CORRELATION_ID: &str = headers::CORRELATION_ID;
/// The W3C trace context, when the metadata has it (custom key `traceparent`).
pub const TRACEPARENT: &str = headers::TRACEPARENT;
/// The whole metadata as JSON (`Metadata::to_json`: `causationId`, `userId`,
/// `tenantId`, `custom`, …), when it holds anything besides the correlation id and
/// `traceparent`. Only SNS sends it.
pub const METADATA: &str = "mink-metadata";

/// The standard headers that travel as attributes of their own, within the limit of
/// 10 (with [`BODY_ENCODING`] and [`METADATA`]).
const OWN_ATTRIBUTES: [&str; 8] = [
    MESSAGE_ID,
    EVENT_ID,
    EVENT_TYPE,
    STREAM_ID,
    STREAM_VERSION,
    CODEC,
    CORRELATION_ID,
    TRACEPARENT,
];

/// The longest SNS FIFO message group id.
pub const MAX_GROUP_ID_LEN: usize = 128;

fn string(value: impl Into<String>) -> Option<MessageAttributeValue> {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .ok()
}

fn number(value: &str) -> Option<MessageAttributeValue> {
    MessageAttributeValue::builder()
        .data_type("Number")
        .string_value(value)
        .build()
        .ok()
}

/// The body and the message attributes for `m`.
pub fn for_message(m: &OutboxMessage) -> (String, HashMap<String, MessageAttributeValue>) {
    let mut attrs = HashMap::with_capacity(10);
    let mut put = |name: &str, value: Option<MessageAttributeValue>| {
        if let Some(v) = value {
            attrs.insert(name.to_owned(), v);
        }
    };
    for (name, value) in m.headers() {
        // SNS refuses an empty attribute value.
        if !OWN_ATTRIBUTES.contains(&&*name) || value.is_empty() {
            continue;
        }
        let value = if name == STREAM_VERSION {
            number(&value)
        } else {
            string(value)
        };
        put(&name, value);
    }
    let body = match std::str::from_utf8(&m.payload) {
        Ok(text) => text.to_owned(),
        Err(_) => {
            put(BODY_ENCODING, string("base64"));
            base64::engine::general_purpose::STANDARD.encode(&m.payload)
        }
    };
    let md = &m.metadata;
    let more = md.causation_id().is_some()
        || md.user_id().is_some()
        || md.tenant_id().is_some()
        || md.custom().keys().any(|k| k != TRACEPARENT);
    if more {
        put(METADATA, md.to_json().and_then(string));
    }
    (body, attrs)
}

/// The FIFO message group of a stream: the stream id itself when SNS accepts it (1 to
/// 128 printable ASCII characters, no spaces), else `mink-` and a UUID (v5) of the
/// stream id, so that a stream always maps to the same group.
pub fn message_group_id(stream_id: &str) -> String {
    let valid = !stream_id.is_empty()
        && stream_id.len() <= MAX_GROUP_ID_LEN
        && stream_id.bytes().all(|b| b.is_ascii_graphic());
    if valid {
        stream_id.to_owned()
    } else {
        let ns = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, b"urn:mink:sns:message-group");
        format!("mink-{}", uuid::Uuid::new_v5(&ns, stream_id.as_bytes()))
    }
}

/// A rough upper bound of the size SNS counts for the message (body plus attribute
/// names, types and values), for splitting batches under the 256 KiB request limit.
pub fn approx_size(body: &str, attrs: &HashMap<String, MessageAttributeValue>) -> usize {
    body.len()
        + attrs
            .iter()
            .map(|(k, v)| k.len() + v.data_type().len() + v.string_value().map_or(0, str::len))
            .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mink_es::{Bytes, CodecTag, EventId, Metadata, Position, StreamId};

    fn msg(payload: &[u8], metadata: Metadata) -> OutboxMessage {
        let event_id = EventId::new();
        OutboxMessage {
            id: OutboxMessage::id_for(event_id, "d"),
            destination: "d".into(),
            stream_id: StreamId::new("Order-1").unwrap(),
            event_id,
            event_type: "OrderPlaced".into(),
            stream_version: 3,
            position: Position::new(0, 9),
            payload: Bytes::copy_from_slice(payload),
            codec: CodecTag::JSON,
            metadata,
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn at_most_ten_attributes() {
        let md = Metadata::default()
            .with_correlation_id("c")
            .with_causation_id("k")
            .with_user_id("u")
            .with_tenant_id("t")
            .with_custom("traceparent", "00-1-2-01")
            .with_custom("tracestate", "x=1")
            .with_custom("a", "1")
            .with_custom("b", "2");
        let m = msg(&[0xff, 0x00], md.clone());
        let (body, attrs) = for_message(&m);
        let mut names: Vec<&str> = attrs.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "mink-body-encoding",
                "mink-codec",
                "mink-correlation-id",
                "mink-event-id",
                "mink-event-type",
                "mink-message-id",
                "mink-metadata",
                "mink-stream-id",
                "mink-stream-version",
                "traceparent",
            ]
        );
        assert_eq!(attrs[MESSAGE_ID].string_value(), Some(&*m.id.to_string()));
        assert_eq!(
            attrs[EVENT_ID].string_value(),
            Some(&*m.event_id.to_string())
        );
        assert_eq!(attrs[EVENT_TYPE].string_value(), Some("OrderPlaced"));
        assert_eq!(attrs[STREAM_ID].string_value(), Some("Order-1"));
        assert_eq!(attrs[CODEC].string_value(), Some("json"));
        assert_eq!(attrs[CORRELATION_ID].string_value(), Some("c"));
        assert_eq!(attrs[TRACEPARENT].string_value(), Some("00-1-2-01"));
        assert!(
            attrs
                .values()
                .all(|v| v.data_type() == "String" || v.data_type() == "Number")
        );
        assert_eq!(body, "/wA=");
        assert_eq!(attrs[BODY_ENCODING].string_value(), Some("base64"));
        assert_eq!(attrs[STREAM_VERSION].data_type(), "Number");
        assert_eq!(attrs[STREAM_VERSION].string_value(), Some("3"));
        let json = attrs[METADATA].string_value().unwrap();
        assert_eq!(Metadata::from_json(json).unwrap(), md);
    }

    #[test]
    fn plain_messages_carry_six() {
        let (body, attrs) = for_message(&msg(br#"{"a":1}"#, Metadata::default()));
        assert_eq!(body, r#"{"a":1}"#);
        assert_eq!(attrs.len(), 6);
        let md = Metadata::default()
            .with_correlation_id("c")
            .with_custom("traceparent", "00-1-2-01");
        let (_, attrs) = for_message(&msg(b"{}", md));
        assert_eq!(
            attrs.len(),
            8,
            "no metadata JSON when every field has its attribute"
        );
        let empty = Metadata::default()
            .with_correlation_id("")
            .with_custom("traceparent", "");
        let (_, attrs) = for_message(&msg(b"{}", empty));
        assert!(
            !attrs.contains_key(CORRELATION_ID) && !attrs.contains_key(TRACEPARENT),
            "SNS refuses empty values"
        );
    }

    #[test]
    fn group_ids() {
        assert_eq!(message_group_id("Order-1"), "Order-1");
        assert_eq!(message_group_id("a!~{}"), "a!~{}");
        let hashed = message_group_id("Order 1");
        assert!(
            hashed.starts_with("mink-") && hashed.len() == 41,
            "{hashed}"
        );
        assert_eq!(hashed, message_group_id("Order 1"), "stable");
        assert_ne!(hashed, message_group_id("Order 2"));
        assert!(message_group_id(&"x".repeat(129)).starts_with("mink-"));
        assert!(message_group_id("Bestellung-ü").starts_with("mink-"));
    }
}
