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
    ///
    /// Ids made by one thread increase strictly (a 42-bit counter follows the
    /// millisecond timestamp, as RFC 9562 §6.2 method 1 allows); 32 further bits are
    /// random. Generation costs tens of nanoseconds: no system call after the first
    /// id of each thread.
    pub fn new() -> Self {
        EventId(v7::next())
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

mod v7 {
    use std::cell::Cell;
    #[cfg(not(target_os = "linux"))]
    use std::time::{SystemTime, UNIX_EPOCH};

    use uuid::Uuid;

    const COUNTER_BITS: u32 = 42;

    #[derive(Clone, Copy)]
    struct State {
        last_ms: u64,
        counter: u64,
        rng: u64,
    }

    thread_local! {
        static STATE: Cell<Option<State>> = const { Cell::new(None) };
    }

    fn wyrand(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(*state) * u128::from(*state ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    }

    /// A fresh counter start: random, with the top bit clear so that it can grow.
    fn fresh_counter(rng: &mut u64) -> u64 {
        wyrand(rng) >> (64 - COUNTER_BITS + 1)
    }

    /// Milliseconds since the Unix epoch. On Linux this reads the coarse real-time
    /// clock (a few milliseconds of resolution, a fraction of the cost of the precise
    /// clock); the per-thread counter keeps ids strictly increasing regardless.
    #[cfg(target_os = "linux")]
    fn unix_millis() -> u64 {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
        u64::try_from(t.tv_sec).unwrap_or(0) * 1000
            + u64::try_from(t.tv_nsec).unwrap_or(0) / 1_000_000
    }

    #[cfg(not(target_os = "linux"))]
    fn unix_millis() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    pub(super) fn next() -> Uuid {
        let now_ms = unix_millis();
        STATE.with(|cell| {
            let mut st = cell.get().unwrap_or_else(|| {
                let (a, b) = Uuid::new_v4().as_u64_pair();
                State {
                    last_ms: 0,
                    counter: 0,
                    rng: a ^ b.rotate_left(32),
                }
            });
            if now_ms > st.last_ms {
                st.last_ms = now_ms;
                st.counter = fresh_counter(&mut st.rng);
            } else {
                st.counter += 1;
                if st.counter >> COUNTER_BITS != 0 {
                    // The counter ran out within one millisecond: borrow the next one.
                    st.last_ms += 1;
                    st.counter = fresh_counter(&mut st.rng);
                }
            }
            let random = wyrand(&mut st.rng) as u32;
            cell.set(Some(st));
            let ms = u128::from(st.last_ms & ((1 << 48) - 1));
            let hi = u128::from(st.counter >> 30);
            let lo = u128::from(st.counter & ((1 << 30) - 1));
            Uuid::from_u128(
                (ms << 80)
                    | (0x7 << 76)
                    | (hi << 64)
                    | (0b10 << 62)
                    | (lo << 32)
                    | u128::from(random),
            )
        })
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
/// The well-known ids (correlation, causation, user, tenant) have their own accessors;
/// anything else goes in the custom key/values. The JSON form uses camelCase keys and
/// omits empty fields. Empty metadata takes no memory beyond one pointer.
///
/// ```
/// use mink_es::Metadata;
/// let m = Metadata::default()
///     .with_correlation_id("c-1")
///     .with_user_id("alice")
///     .with_custom("source", "web");
/// assert_eq!(m.correlation_id(), Some("c-1"));
/// assert_eq!(m.custom_value("source"), Some("web"));
/// assert_eq!(m.to_json().unwrap(), r#"{"correlationId":"c-1","userId":"alice","custom":{"source":"web"}}"#);
/// ```
#[derive(Clone, Default)]
pub struct Metadata(Option<Box<MetadataFields>>);

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetadataFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    correlation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    causation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tenant_id: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    custom: BTreeMap<String, String>,
}

static NO_FIELDS: MetadataFields = MetadataFields {
    correlation_id: None,
    causation_id: None,
    user_id: None,
    tenant_id: None,
    custom: BTreeMap::new(),
};

impl MetadataFields {
    fn is_empty(&self) -> bool {
        self.correlation_id.is_none()
            && self.causation_id.is_none()
            && self.user_id.is_none()
            && self.tenant_id.is_none()
            && self.custom.is_empty()
    }
}

macro_rules! metadata_id {
    ($field:ident, $get:ident, $set:ident, $with:ident, $what:literal) => {
        #[doc = concat!("The ", $what, ", if set.")]
        pub fn $get(&self) -> Option<&str> {
            self.fields().$field.as_deref()
        }

        #[doc = concat!("Sets or clears the ", $what, ".")]
        pub fn $set(&mut self, value: Option<String>) {
            self.fields_mut().$field = value;
        }

        #[doc = concat!("Sets the ", $what, ".")]
        pub fn $with(mut self, value: impl Into<String>) -> Self {
            self.fields_mut().$field = Some(value.into());
            self
        }
    };
}

impl Metadata {
    fn fields(&self) -> &MetadataFields {
        self.0.as_deref().unwrap_or(&NO_FIELDS)
    }

    fn fields_mut(&mut self) -> &mut MetadataFields {
        self.0.get_or_insert_with(Default::default)
    }

    metadata_id!(
        correlation_id,
        correlation_id,
        set_correlation_id,
        with_correlation_id,
        "correlation id (groups every message of one business transaction)"
    );
    metadata_id!(
        causation_id,
        causation_id,
        set_causation_id,
        with_causation_id,
        "causation id (the message that caused this one)"
    );
    metadata_id!(
        user_id,
        user_id,
        set_user_id,
        with_user_id,
        "user id (on whose behalf the event was written)"
    );
    metadata_id!(
        tenant_id,
        tenant_id,
        set_tenant_id,
        with_tenant_id,
        "tenant id"
    );

    /// The custom key/values.
    pub fn custom(&self) -> &BTreeMap<String, String> {
        &self.fields().custom
    }

    /// One custom value.
    pub fn custom_value(&self, key: &str) -> Option<&str> {
        self.fields().custom.get(key).map(String::as_str)
    }

    /// Sets one custom key/value, returning the previous value.
    pub fn insert_custom(
        &mut self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Option<String> {
        self.fields_mut().custom.insert(key.into(), value.into())
    }

    /// Removes one custom key, returning its value.
    pub fn remove_custom(&mut self, key: &str) -> Option<String> {
        self.0.as_mut().and_then(|f| f.custom.remove(key))
    }

    /// Adds one custom key/value.
    pub fn with_custom(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.insert_custom(key, value);
        self
    }

    /// True when no field is set.
    pub fn is_empty(&self) -> bool {
        self.fields().is_empty()
    }

    /// Fills every field that is unset here from `defaults` (custom keys included).
    pub fn merge_defaults(&mut self, defaults: &Metadata) {
        if defaults.is_empty() {
            return;
        }
        let d = defaults.fields();
        let f = self.fields_mut();
        for (dst, src) in [
            (&mut f.correlation_id, &d.correlation_id),
            (&mut f.causation_id, &d.causation_id),
            (&mut f.user_id, &d.user_id),
            (&mut f.tenant_id, &d.tenant_id),
        ] {
            if dst.is_none() {
                dst.clone_from(src);
            }
        }
        for (k, v) in &d.custom {
            f.custom.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }

    /// Encodes to the JSON stored by the SQL adapters; `None` when empty.
    pub fn to_json(&self) -> Option<String> {
        if self.is_empty() {
            None
        } else {
            // Serializing plain strings into a String cannot fail.
            serde_json::to_string(self.fields()).ok()
        }
    }

    /// Decodes the JSON stored by the SQL adapters.
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// An upper bound of the encoded size in bytes, computed without encoding.
    pub fn approx_encoded_len(&self) -> usize {
        let f = self.fields();
        if f.is_empty() {
            return 0;
        }
        let opt = |s: &Option<String>| s.as_ref().map_or(0, |s| 2 * s.len() + 20);
        opt(&f.correlation_id)
            + opt(&f.causation_id)
            + opt(&f.user_id)
            + opt(&f.tenant_id)
            + f.custom
                .iter()
                .map(|(k, v)| 2 * (k.len() + v.len()) + 6)
                .sum::<usize>()
            + 12
    }
}

impl PartialEq for Metadata {
    fn eq(&self, other: &Self) -> bool {
        self.fields() == other.fields()
    }
}
impl Eq for Metadata {}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.fields();
        let mut d = f.debug_struct("Metadata");
        for (name, v) in [
            ("correlation_id", &m.correlation_id),
            ("causation_id", &m.causation_id),
            ("user_id", &m.user_id),
            ("tenant_id", &m.tenant_id),
        ] {
            if let Some(v) = v {
                d.field(name, v);
            }
        }
        if !m.custom.is_empty() {
            d.field("custom", &m.custom);
        }
        d.finish()
    }
}

impl Serialize for Metadata {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.fields().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let f = MetadataFields::deserialize(d)?;
        Ok(if f.is_empty() {
            Metadata(None)
        } else {
            Metadata(Some(Box::new(f)))
        })
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

    /// The error for an upcasting failure of this event.
    pub fn upcast_error(&self, source: crate::schema::UpcastError) -> Error {
        match source {
            crate::schema::UpcastError::TooNew { version, known, .. }
                if version == self.schema_version =>
            {
                Error::SchemaTooNew {
                    stream: self.stream_id.clone(),
                    version: self.version,
                    event_type: self.event_type.to_string(),
                    schema_version: version,
                    known,
                }
            }
            source => Error::Upcast {
                stream: self.stream_id.clone(),
                version: self.version,
                event_type: self.event_type.to_string(),
                source,
            },
        }
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

/// The current time from the coarse real-time clock on Linux (resolution of a few
/// milliseconds, several times cheaper to read), cut to microseconds; the precise clock
/// elsewhere. The in-memory store uses it, where reading the clock would otherwise be a
/// large part of an append.
pub(crate) fn now_coarse() -> DateTime<Utc> {
    #[cfg(target_os = "linux")]
    {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
        if let Some(d) = DateTime::from_timestamp(
            t.tv_sec,
            u32::try_from(t.tv_nsec / 1000 * 1000).unwrap_or(0),
        ) {
            return d;
        }
    }
    now_micros()
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
        assert!(m.approx_encoded_len() >= json.len());
        assert_eq!(Metadata::from_json("{}").unwrap(), Metadata::default());
        let mut cleared = Metadata::default().with_user_id("u");
        cleared.set_user_id(None);
        assert_eq!(cleared, Metadata::default());
        assert!(cleared.is_empty());
        assert_eq!(std::mem::size_of::<Metadata>(), 8);
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
        assert_eq!(m.user_id(), Some("mine"));
        assert_eq!(m.tenant_id(), Some("t"));
        assert_eq!(m.custom_value("k"), Some("mine"));
        assert_eq!(m.custom_value("k2"), Some("v2"));
    }

    #[test]
    fn ids_are_v7_and_sort_by_time() {
        let a = EventId::new();
        let b = EventId::new();
        assert_eq!(a.as_uuid().get_version_num(), 7);
        assert_eq!(a.as_uuid().get_variant(), uuid::Variant::RFC4122);
        assert!(a < b);
        let ts = a.as_uuid().get_timestamp().unwrap().to_unix();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(ts.0.abs_diff(now) <= 2, "timestamp is now: {ts:?} vs {now}");
        let many: Vec<EventId> = (0..100_000).map(|_| EventId::new()).collect();
        assert!(
            many.windows(2).all(|w| w[0] < w[1]),
            "strictly increasing per thread"
        );
        let other = std::thread::spawn(|| (0..1000).map(|_| EventId::new()).collect::<Vec<_>>())
            .join()
            .unwrap();
        let all: std::collections::HashSet<EventId> = many.iter().chain(&other).copied().collect();
        assert_eq!(all.len(), 101_000, "unique across threads");
        assert_eq!(EventId::from_slice(a.as_bytes()), Some(a));
        assert_eq!(EventId::from_slice(&[1, 2]), None);
    }
}
