//! The event model: ids, type names, metadata, events to append and stored events.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, EventTypeError, clip};
use crate::{Position, StreamId};

/// The longest event type name accepted, in bytes.
pub const MAX_EVENT_TYPE_LEN: usize = 255;

/// The unique id of an event: a UUIDv7, so ids sort roughly by creation time.
///
/// Ids are chosen by the writer, which makes appends idempotent: appending the same
/// ids again at the same place returns the original result instead of storing twice.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(Uuid);

impl EventId {
    /// A new UUIDv7 id.
    pub fn new() -> Self {
        EventId(Uuid::now_v7())
    }

    /// Wraps an existing UUID (for example one derived from a command id).
    pub const fn from_uuid(uuid: Uuid) -> Self {
        EventId(uuid)
    }

    /// The UUID.
    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }

    /// The 16 bytes of the UUID.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// Reads an id from its 16 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        Uuid::from_slice(bytes).ok().map(EventId)
    }
}

impl Default for EventId {
    fn default() -> Self {
        EventId::new()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({})", self.0)
    }
}

impl From<Uuid> for EventId {
    fn from(u: Uuid) -> Self {
        EventId(u)
    }
}

/// A cheaply cloned string: borrowed for `'static` names, shared otherwise.
#[derive(Clone)]
enum SharedStr {
    Static(&'static str),
    Shared(Arc<str>),
}

impl SharedStr {
    fn as_str(&self) -> &str {
        match self {
            SharedStr::Static(s) => s,
            SharedStr::Shared(s) => s,
        }
    }
}

macro_rules! shared_name {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name(SharedStr);

        impl $name {
            /// Wraps a `'static` name without allocating.
            pub const fn from_static(name: &'static str) -> Self {
                $name(SharedStr::Static(name))
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                self.0.as_str()
            }
        }

        impl From<&'static str> for $name {
            fn from(s: &'static str) -> Self {
                $name::from_static(s)
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                $name(SharedStr::Shared(Arc::from(s)))
            }
        }

        impl From<&String> for $name {
            fn from(s: &String) -> Self {
                $name(SharedStr::Shared(Arc::from(s.as_str())))
            }
        }

        impl From<Arc<str>> for $name {
            fn from(s: Arc<str>) -> Self {
                $name(SharedStr::Shared(s))
            }
        }

        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                self.as_str() == other.as_str()
            }
        }
        impl Eq for $name {}

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl std::hash::Hash for $name {
            fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
                self.as_str().hash(h)
            }
        }

        impl PartialOrd for $name {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }

        impl Ord for $name {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                self.as_str().cmp(other.as_str())
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                self.as_str()
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self.as_str(), f)
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Ok($name::from(String::deserialize(d)?))
            }
        }
    };
}

shared_name! {
    /// The stable name of an event type, such as `"OrderPlaced"`.
    ///
    /// Type names are explicit strings chosen by the application, never Rust type
    /// paths: renaming or moving a Rust type must not change what is stored. A valid
    /// name is non-empty, at most [`MAX_EVENT_TYPE_LEN`] bytes, and free of whitespace
    /// and control characters; stores check it on append.
    EventType
}

shared_name! {
    /// The tag of the codec that encoded a payload (`"json"` by default).
    ///
    /// It is stored with each event, so a store can hold events written by different
    /// codecs over time.
    CodecTag
}

impl CodecTag {
    /// The tag of the JSON codec.
    pub const JSON: CodecTag = CodecTag::from_static("json");
}

impl Default for CodecTag {
    fn default() -> Self {
        CodecTag::JSON
    }
}

impl EventType {
    /// Checks the name against the rules stores apply on append.
    pub fn validate(&self) -> Result<(), Error> {
        let name = self.as_str();
        let reason = if name.is_empty() {
            Some(EventTypeError::Empty)
        } else if name.len() > MAX_EVENT_TYPE_LEN {
            Some(EventTypeError::TooLong {
                len: name.len(),
                max: MAX_EVENT_TYPE_LEN,
            })
        } else {
            name.char_indices()
                .find(|(_, c)| c.is_whitespace() || c.is_control())
                .map(|(index, _)| EventTypeError::InvalidCharacter { index })
        };
        match reason {
            None => Ok(()),
            Some(reason) => Err(Error::InvalidEventType {
                event_type: clip(name),
                reason,
            }),
        }
    }
}

/// Who and what caused an event. Stored with every event.
///
/// The well-known ids have their own fields; anything else goes in `custom`.
/// The JSON form uses camelCase keys and omits empty fields.
///
/// ```
/// use mink_es::Metadata;
/// let m = Metadata::default()
///     .with_correlation_id("c-1")
///     .with_user_id("alice")
///     .with_custom("source", "web");
/// assert_eq!(m.custom.get("source").map(String::as_str), Some("web"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Metadata {
    /// Groups every message of one business transaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The id of the message (command or event) that caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    /// The user on whose behalf the event was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The tenant the event belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// Application-defined key/values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub custom: BTreeMap<String, String>,
}

impl Metadata {
    /// Sets the correlation id.
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// Sets the causation id.
    pub fn with_causation_id(mut self, id: impl Into<String>) -> Self {
        self.causation_id = Some(id.into());
        self
    }

    /// Sets the user id.
    pub fn with_user_id(mut self, id: impl Into<String>) -> Self {
        self.user_id = Some(id.into());
        self
    }

    /// Sets the tenant id.
    pub fn with_tenant_id(mut self, id: impl Into<String>) -> Self {
        self.tenant_id = Some(id.into());
        self
    }

    /// Adds one custom key/value.
    pub fn with_custom(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.custom.insert(key.into(), value.into());
        self
    }

    /// True when no field is set.
    pub fn is_empty(&self) -> bool {
        self.correlation_id.is_none()
            && self.causation_id.is_none()
            && self.user_id.is_none()
            && self.tenant_id.is_none()
            && self.custom.is_empty()
    }

    /// Fills every field that is unset here from `defaults` (custom keys included).
    pub fn merge_defaults(&mut self, defaults: &Metadata) {
        fn fill(dst: &mut Option<String>, src: &Option<String>) {
            if dst.is_none() {
                dst.clone_from(src);
            }
        }
        fill(&mut self.correlation_id, &defaults.correlation_id);
        fill(&mut self.causation_id, &defaults.causation_id);
        fill(&mut self.user_id, &defaults.user_id);
        fill(&mut self.tenant_id, &defaults.tenant_id);
        for (k, v) in &defaults.custom {
            self.custom.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }

    /// Encodes to the JSON stored by the SQL adapters; `None` when empty.
    pub fn to_json(&self) -> Option<String> {
        if self.is_empty() {
            None
        } else {
            // Serializing plain strings into a String cannot fail.
            serde_json::to_string(self).ok()
        }
    }

    /// Decodes the JSON stored by the SQL adapters.
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// The size of the encoded form, in bytes (used for size limits).
    pub fn encoded_len(&self) -> usize {
        if self.is_empty() {
            0
        } else {
            self.to_json().map_or(0, |s| s.len())
        }
    }
}

/// An event to append.
///
/// ```
/// use mink_es::NewEvent;
/// let e = NewEvent::json("OrderPlaced", &serde_json::json!({"total": 10})).unwrap();
/// assert_eq!(e.event_type.as_str(), "OrderPlaced");
/// assert_eq!(e.schema_version, 1);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    /// Chosen by the writer; appending the same id twice at the same place is idempotent.
    pub id: EventId,
    /// The stable type name.
    pub event_type: EventType,
    /// The version of the type's schema the payload was written with (from 1).
    pub schema_version: u32,
    /// The codec that encoded the payload.
    pub codec: CodecTag,
    /// The encoded event.
    pub payload: Bytes,
    /// Who and what caused the event.
    pub metadata: Metadata,
}

impl NewEvent {
    /// An event with a fresh id, schema version 1, the JSON codec tag and empty metadata.
    pub fn new(event_type: impl Into<EventType>, payload: impl Into<Bytes>) -> Self {
        NewEvent {
            id: EventId::new(),
            event_type: event_type.into(),
            schema_version: 1,
            codec: CodecTag::JSON,
            payload: payload.into(),
            metadata: Metadata::default(),
        }
    }

    /// An event whose payload is `value` encoded as JSON.
    pub fn json<T: Serialize + ?Sized>(
        event_type: impl Into<EventType>,
        value: &T,
    ) -> Result<Self, Error> {
        let event_type = event_type.into();
        let payload = serde_json::to_vec(value).map_err(|e| Error::Encode {
            what: format!("event {event_type}"),
            source: Box::new(e),
        })?;
        Ok(NewEvent::new(event_type, payload))
    }

    /// Replaces the id.
    pub fn with_id(mut self, id: EventId) -> Self {
        self.id = id;
        self
    }

    /// Replaces the metadata.
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// Replaces the schema version.
    pub fn with_schema_version(mut self, version: u32) -> Self {
        self.schema_version = version;
        self
    }

    /// Replaces the codec tag.
    pub fn with_codec(mut self, codec: CodecTag) -> Self {
        self.codec = codec;
        self
    }
}

/// An event as stored: the appended event plus where and when it was stored.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEvent {
    /// The event's id.
    pub id: EventId,
    /// The stream holding it.
    pub stream_id: StreamId,
    /// Its version within the stream: 1 for the first event, contiguous.
    pub version: u64,
    /// Its place in the store's global feed.
    pub position: Position,
    /// The stable type name.
    pub event_type: EventType,
    /// The schema version the payload was written with.
    pub schema_version: u32,
    /// The codec that encoded the payload.
    pub codec: CodecTag,
    /// The encoded event.
    pub payload: Bytes,
    /// Who and what caused the event.
    pub metadata: Metadata,
    /// When the store recorded it (microsecond precision).
    pub recorded_at: DateTime<Utc>,
}

impl StoredEvent {
    /// The category of the event's stream.
    pub fn category(&self) -> &str {
        self.stream_id.category()
    }

    /// Decodes the payload as JSON, naming the event in the error.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.payload).map_err(|e| self.decode_error(e))
    }

    /// A [`Error::Decode`] for this event.
    pub fn decode_error(&self, source: impl Into<crate::BoxError>) -> Error {
        Error::Decode {
            stream: self.stream_id.clone(),
            version: self.version,
            position: self.position,
            event_type: self.event_type.to_string(),
            source: source.into(),
        }
    }
}

/// The current time, cut to microseconds (the precision every store keeps).
pub fn now_micros() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_type_rules() {
        assert!(EventType::from("OrderPlaced").validate().is_ok());
        assert!(EventType::from("order.placed.v2").validate().is_ok());
        assert!(EventType::from("").validate().is_err());
        assert!(EventType::from("a b").validate().is_err());
        assert!(EventType::from("a\u{0}").validate().is_err());
        assert!(EventType::from("x".repeat(256)).validate().is_err());
    }

    #[test]
    fn metadata_json_is_compact_and_round_trips() {
        assert_eq!(Metadata::default().to_json(), None);
        let m = Metadata::default()
            .with_correlation_id("c")
            .with_causation_id("k")
            .with_user_id("u")
            .with_tenant_id("t")
            .with_custom("a", "b");
        let json = m.to_json().unwrap();
        assert!(json.contains("\"correlationId\":\"c\""), "{json}");
        assert_eq!(Metadata::from_json(&json).unwrap(), m);
        assert_eq!(m.encoded_len(), json.len());
    }

    #[test]
    fn merge_defaults_keeps_own_values() {
        let mut m = Metadata::default()
            .with_user_id("mine")
            .with_custom("k", "mine");
        let d = Metadata::default()
            .with_user_id("theirs")
            .with_tenant_id("t")
            .with_custom("k", "theirs")
            .with_custom("k2", "v2");
        m.merge_defaults(&d);
        assert_eq!(m.user_id.as_deref(), Some("mine"));
        assert_eq!(m.tenant_id.as_deref(), Some("t"));
        assert_eq!(m.custom["k"], "mine");
        assert_eq!(m.custom["k2"], "v2");
    }

    #[test]
    fn ids_are_v7_and_sort_by_time() {
        let a = EventId::new();
        let b = EventId::new();
        assert_eq!(a.as_uuid().get_version_num(), 7);
        assert!(a < b);
        assert_eq!(EventId::from_slice(a.as_bytes()), Some(a));
        assert_eq!(EventId::from_slice(&[1, 2]), None);
    }
}
