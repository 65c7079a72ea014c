//! The headers every outbox publisher sends, and the content type of each codec.
//!
//! Every publisher (`mink-webhook`, `mink-kafka`, `mink-sns`, `mink-nats`,
//! `mink-rabbitmq`) sends a message's metadata under the same names, listed by
//! [`standard`] (or [`OutboxMessage::headers`]) in this order:
//!
//! | header | value | sent |
//! |---|---|---|
//! | [`mink-message-id`](MESSAGE_ID) | the outbox message id (a UUID, the same on every redelivery: receivers de-duplicate on it) | always |
//! | [`mink-event-id`](EVENT_ID) | the event's id (a UUID) | always |
//! | [`mink-event-type`](EVENT_TYPE) | the event's type name | always |
//! | [`mink-stream-id`](STREAM_ID) | the event's stream (the ordering key) | always |
//! | [`mink-stream-version`](STREAM_VERSION) | the event's version in its stream, decimal, from 1 | always |
//! | [`mink-position`](POSITION) | the event's position in the store's feed (its stable text form) | always |
//! | [`mink-destination`](DESTINATION) | the outbox route's destination name | always |
//! | [`mink-codec`](CODEC) | the codec tag of the body (`json`, `msgpack`, …) | always |
//! | [`mink-recorded-at`](RECORDED_AT) | when the event was recorded: RFC 3339, UTC, microseconds (`2024-05-01T12:00:00.000000Z`) | always |
//! | [`mink-correlation-id`](CORRELATION_ID) | the event's correlation id | when set |
//! | [`mink-causation-id`](CAUSATION_ID) | the event's causation id | when set |
//! | [`mink-user-id`](USER_ID) | the event's user id | when set |
//! | [`mink-tenant-id`](TENANT_ID) | the event's tenant id | when set |
//! | [`traceparent`](TRACEPARENT), [`tracestate`](TRACESTATE), [`baggage`](BAGGAGE) | W3C trace context, under their own names so that tracing propagators find them | when the custom metadata holds the key (in any ASCII case; the lower-case spelling wins when several are present) |
//! | `mink-meta-<key>` ([`META_PREFIX`]) | every other custom metadata key/value, the key as it is | when set |
//!
//! Values are text: a publisher sends their UTF-8 bytes. A transport with rules of its
//! own applies them to this list, and says so in its docs: HTTP header names are
//! case-insensitive (a webhook receiver sees `mink-meta-<key>` lower-cased) and a name
//! or value HTTP or NATS cannot carry is left out with a warning; AMQP header names are
//! at most 255 bytes; SNS delivers at most 10 message attributes, so `mink-sns` sends a
//! subset of these (under these names) and the rest of the metadata as JSON.
//!
//! Transports also carry some of it in their own fields (a Kafka key, an AMQP
//! `message_id`, `Nats-Msg-Id`, `webhook-id`); the headers above are sent as well, so a
//! consumer can read the same names whatever the transport.
//!
//! The content type of a body follows its codec: [`content_type`].

use std::borrow::Cow;
use std::collections::HashMap;

use super::OutboxMessage;

/// The outbox message id (a UUID, stable across redeliveries).
pub const MESSAGE_ID: &str = "mink-message-id";
/// The event's id (a UUID).
pub const EVENT_ID: &str = "mink-event-id";
/// The event's type name.
pub const EVENT_TYPE: &str = "mink-event-type";
/// The event's stream id.
pub const STREAM_ID: &str = "mink-stream-id";
/// The event's version in its stream, decimal.
pub const STREAM_VERSION: &str = "mink-stream-version";
/// The event's position in the store's feed, in its text form.
pub const POSITION: &str = "mink-position";
/// The outbox route's destination name.
pub const DESTINATION: &str = "mink-destination";
/// The codec tag of the body.
pub const CODEC: &str = "mink-codec";
/// When the event was recorded: RFC 3339, UTC, microseconds.
pub const RECORDED_AT: &str = "mink-recorded-at";
/// The correlation id, when set.
pub const CORRELATION_ID: &str = "mink-correlation-id";
/// The causation id, when set.
pub const CAUSATION_ID: &str = "mink-causation-id";
/// The user id, when set.
pub const USER_ID: &str = "mink-user-id";
/// The tenant id, when set.
pub const TENANT_ID: &str = "mink-tenant-id";
/// W3C trace context: the parent span.
pub const TRACEPARENT: &str = "traceparent";
/// W3C trace context: vendor state.
pub const TRACESTATE: &str = "tracestate";
/// W3C baggage.
pub const BAGGAGE: &str = "baggage";
/// The custom metadata keys that travel under their own names: [`TRACEPARENT`],
/// [`TRACESTATE`], [`BAGGAGE`].
pub const TRACE_CONTEXT: [&str; 3] = [TRACEPARENT, TRACESTATE, BAGGAGE];
/// The prefix of the headers that carry the other custom metadata keys: custom key
/// `source` travels as `mink-meta-source`.
pub const META_PREFIX: &str = "mink-meta-";
/// The prefix of every header name above except the trace context ones.
pub const PREFIX: &str = "mink-";

/// The content type of anything without a known codec.
pub const OCTET_STREAM: &str = "application/octet-stream";

/// One header: its name and its value.
pub type Header<'a> = (Cow<'static, str>, Cow<'a, str>);

/// The standard headers of `m`, in the order of the [module](self) table: the
/// `mink-*` fields, the ids that are set, the trace context, then every other custom
/// metadata key as `mink-meta-<key>` (in key order). Each name appears once.
///
/// ```
/// use mink_es::outbox::{headers, OutboxMessage};
/// # use mink_es::{Bytes, CodecTag, EventId, Metadata, Position, StreamId};
/// # let event_id = EventId::new();
/// let m = OutboxMessage {
///     // …
/// #   id: OutboxMessage::id_for(event_id, "billing"),
/// #   destination: "billing".into(),
/// #   stream_id: StreamId::new("order-1").unwrap(),
/// #   event_id,
/// #   event_type: "OrderPlaced".into(),
/// #   stream_version: 1,
/// #   position: Position::default(),
/// #   payload: Bytes::new(),
/// #   codec: CodecTag::JSON,
///     metadata: Metadata::default()
///         .with_correlation_id("c-1")
///         .with_custom("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
///         .with_custom("source", "web"),
/// #   created_at: Default::default(),
/// };
/// let h = headers::standard(&m);
/// let get = |name: &str| h.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_ref());
/// assert_eq!(get(headers::EVENT_TYPE), Some("OrderPlaced"));
/// assert_eq!(get(headers::CORRELATION_ID), Some("c-1"));
/// assert_eq!(get(headers::CAUSATION_ID), None);
/// assert!(get(headers::TRACEPARENT).is_some());
/// assert_eq!(get("mink-meta-source"), Some("web"));
/// ```
pub fn standard(m: &OutboxMessage) -> Vec<Header<'_>> {
    let md = &m.metadata;
    let custom = md.custom();
    let mut h: Vec<Header<'_>> = Vec::with_capacity(13 + custom.len());
    h.extend([
        named(MESSAGE_ID, m.id.to_string()),
        named(EVENT_ID, m.event_id.to_string()),
        named(EVENT_TYPE, m.event_type.as_str()),
        named(STREAM_ID, m.stream_id.as_str()),
        named(STREAM_VERSION, m.stream_version.to_string()),
        named(POSITION, m.position.to_string()),
        named(DESTINATION, m.destination.as_str()),
        named(CODEC, m.codec.as_str()),
        named(
            RECORDED_AT,
            m.created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        ),
    ]);
    for (name, value) in [
        (CORRELATION_ID, md.correlation_id()),
        (CAUSATION_ID, md.causation_id()),
        (USER_ID, md.user_id()),
        (TENANT_ID, md.tenant_id()),
    ] {
        if let Some(v) = value {
            h.push(named(name, v));
        }
    }
    for name in TRACE_CONTEXT {
        let value = md.custom_value(name).or_else(|| {
            custom
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        });
        if let Some(v) = value {
            h.push(named(name, v));
        }
    }
    for (key, value) in custom {
        if !is_trace_context(key) {
            h.push((
                Cow::Owned(format!("{META_PREFIX}{key}")),
                Cow::Borrowed(value),
            ));
        }
    }
    h
}

fn named<'a>(name: &'static str, value: impl Into<Cow<'a, str>>) -> Header<'a> {
    (Cow::Borrowed(name), value.into())
}

/// Whether the custom metadata key `key` is trace context (travels under its own name):
/// [`TRACE_CONTEXT`], in any ASCII case.
pub fn is_trace_context(key: &str) -> bool {
    TRACE_CONTEXT.iter().any(|t| key.eq_ignore_ascii_case(t))
}

impl OutboxMessage {
    /// The standard headers of this message: see [`headers::standard`](standard).
    pub fn headers(&self) -> Vec<Header<'_>> {
        standard(self)
    }
}

/// The content type of a body of codec `codec` (a [`CodecTag`](crate::CodecTag) or its
/// text): `json` → `application/json`, `msgpack` → `application/msgpack`, `protobuf` →
/// `application/x-protobuf`, anything else [`OCTET_STREAM`] (the tag itself travels in
/// the [`mink-codec`](CODEC) header).
///
/// ```
/// use mink_es::CodecTag;
/// use mink_es::outbox::headers::content_type;
/// assert_eq!(content_type(&CodecTag::JSON), "application/json");
/// assert_eq!(content_type("cbor"), "application/octet-stream");
/// ```
pub fn content_type<C: AsRef<str> + ?Sized>(codec: &C) -> &'static str {
    match codec.as_ref() {
        "json" => "application/json",
        "msgpack" => "application/msgpack",
        "protobuf" => "application/x-protobuf",
        _ => OCTET_STREAM,
    }
}

/// Content types per codec tag: [`content_type`], with mappings added or replaced.
///
/// ```
/// use mink_es::outbox::ContentTypes;
/// let types = ContentTypes::default().with("avro", "application/avro");
/// assert_eq!(types.get("json"), "application/json");
/// assert_eq!(types.get("avro"), "application/avro");
/// assert_eq!(types.get("cbor"), "application/octet-stream");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContentTypes {
    custom: HashMap<String, String>,
}

impl ContentTypes {
    /// The content type for anything without a mapping.
    pub const FALLBACK: &'static str = OCTET_STREAM;

    /// Maps `codec` to `content_type`.
    pub fn with(mut self, codec: impl Into<String>, content_type: impl Into<String>) -> Self {
        self.custom.insert(codec.into(), content_type.into());
        self
    }

    /// The content type for `codec`.
    pub fn get(&self, codec: &str) -> &str {
        match self.custom.get(codec) {
            Some(t) => t,
            None => content_type(codec),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Bytes, CodecTag, EventId, Metadata, Position, StreamId};

    fn message(metadata: Metadata) -> OutboxMessage {
        let event_id = EventId::new();
        OutboxMessage {
            id: OutboxMessage::id_for(event_id, "billing"),
            destination: "billing".into(),
            stream_id: StreamId::new("order-42").unwrap(),
            event_id,
            event_type: "OrderPlaced".into(),
            stream_version: 7,
            position: Position::new(0, 1234),
            payload: Bytes::from_static(b"{}"),
            codec: CodecTag::JSON,
            metadata,
            created_at: chrono::DateTime::from_timestamp(1_700_000_000, 123_456_789).unwrap(),
        }
    }

    fn owned(h: &[Header<'_>]) -> Vec<(String, String)> {
        h.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_header_in_order_when_everything_is_set() {
        let m = message(
            Metadata::default()
                .with_correlation_id("corr-1")
                .with_causation_id("cause-1")
                .with_user_id("alice")
                .with_tenant_id("acme")
                .with_custom("traceparent", "00-abc-def-01")
                .with_custom("tracestate", "congo=t61")
                .with_custom("baggage", "k=v")
                .with_custom("source", "web")
                .with_custom("Region", "eu"),
        );
        let expected: Vec<(String, String)> = [
            (MESSAGE_ID, m.id.to_string()),
            (EVENT_ID, m.event_id.to_string()),
            (EVENT_TYPE, "OrderPlaced".into()),
            (STREAM_ID, "order-42".into()),
            (STREAM_VERSION, "7".into()),
            (POSITION, "1234".into()),
            (DESTINATION, "billing".into()),
            (CODEC, "json".into()),
            (RECORDED_AT, "2023-11-14T22:13:20.123456Z".into()),
            (CORRELATION_ID, "corr-1".into()),
            (CAUSATION_ID, "cause-1".into()),
            (USER_ID, "alice".into()),
            (TENANT_ID, "acme".into()),
            (TRACEPARENT, "00-abc-def-01".into()),
            (TRACESTATE, "congo=t61".into()),
            (BAGGAGE, "k=v".into()),
            ("mink-meta-Region", "eu".into()),
            ("mink-meta-source", "web".into()),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_owned(), v))
        .collect();
        assert_eq!(owned(&standard(&m)), expected);
        assert_eq!(m.headers(), standard(&m));
        for (name, _) in &expected {
            assert!(
                name.starts_with(PREFIX) || TRACE_CONTEXT.contains(&name.as_str()),
                "{name}"
            );
        }
    }

    #[test]
    fn unset_ids_and_trace_context_are_absent() {
        let m = message(Metadata::default());
        let names: Vec<String> = standard(&m).into_iter().map(|(n, _)| n.into()).collect();
        assert_eq!(
            names,
            [
                MESSAGE_ID,
                EVENT_ID,
                EVENT_TYPE,
                STREAM_ID,
                STREAM_VERSION,
                POSITION,
                DESTINATION,
                CODEC,
                RECORDED_AT
            ]
        );
        // One id set: only its header joins.
        let m = message(Metadata::default().with_tenant_id("acme"));
        let h = owned(&standard(&m));
        assert_eq!(h.len(), 10);
        assert_eq!(h[9], (TENANT_ID.to_owned(), "acme".to_owned()));
    }

    #[test]
    fn custom_keys_go_under_the_meta_prefix_as_they_are() {
        let m = message(
            Metadata::default()
                .with_custom("source", "web")
                .with_custom("a b", "kept: the transport decides")
                .with_custom("multi", "line\nbreak")
                .with_custom("empty", ""),
        );
        let h = owned(&standard(&m));
        let custom: Vec<_> = h
            .iter()
            .filter(|(n, _)| n.starts_with(META_PREFIX))
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            custom,
            [
                ("mink-meta-a b", "kept: the transport decides"),
                ("mink-meta-empty", ""),
                ("mink-meta-multi", "line\nbreak"),
                ("mink-meta-source", "web"),
            ]
        );
    }

    #[test]
    fn trace_context_is_matched_in_any_case_and_sent_once() {
        let m = message(
            Metadata::default()
                .with_custom("TraceParent", "00-upper-01")
                .with_custom("traceparent", "00-lower-01")
                .with_custom("BAGGAGE", "k=v"),
        );
        let h = owned(&standard(&m));
        let trace: Vec<_> = h
            .iter()
            .filter(|(n, _)| !n.starts_with(PREFIX))
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            trace,
            [(TRACEPARENT, "00-lower-01"), (BAGGAGE, "k=v")],
            "the lower-case spelling wins"
        );
        assert!(
            !h.iter()
                .any(|(n, _)| n.to_ascii_lowercase().contains("meta-trace")
                    || n.to_ascii_lowercase().contains("meta-baggage")),
            "{h:?}"
        );
        assert!(is_trace_context("TraceState"));
        assert!(!is_trace_context("traceparent2"));
    }

    #[test]
    fn content_types_follow_the_codec() {
        assert_eq!(content_type(&CodecTag::JSON), "application/json");
        assert_eq!(
            content_type(&CodecTag::from("msgpack")),
            "application/msgpack"
        );
        assert_eq!(content_type("protobuf"), "application/x-protobuf");
        assert_eq!(content_type("avro"), OCTET_STREAM);
        assert_eq!(content_type(""), OCTET_STREAM);
        assert_eq!(content_type("JSON"), OCTET_STREAM, "tags are exact");

        let t = ContentTypes::default()
            .with("avro", "application/avro")
            .with("json", "application/vnd.shop+json");
        assert_eq!(t.get("json"), "application/vnd.shop+json");
        assert_eq!(t.get("avro"), "application/avro");
        assert_eq!(t.get("msgpack"), "application/msgpack");
        assert_eq!(t.get("cbor"), ContentTypes::FALLBACK);
    }
}
