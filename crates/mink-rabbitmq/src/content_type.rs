//! Content types from codec tags.

use std::collections::HashMap;

/// Maps a payload's codec tag to the AMQP `content_type` property a message is published with.
///
/// Built in: `json` → `application/json`, `msgpack` → `application/msgpack`,
/// `protobuf` → `application/x-protobuf`; any other tag → `application/octet-stream`
/// (the tag itself travels in the `mink-codec` header). [`ContentTypes::with`] adds or
/// replaces a mapping.
///
/// ```
/// use mink_rabbitmq::ContentTypes;
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
    pub const FALLBACK: &'static str = "application/octet-stream";

    /// Maps `codec` to `content_type`.
    pub fn with(mut self, codec: impl Into<String>, content_type: impl Into<String>) -> Self {
        self.custom.insert(codec.into(), content_type.into());
        self
    }

    /// The content type for `codec`.
    pub fn get(&self, codec: &str) -> &str {
        if let Some(t) = self.custom.get(codec) {
            return t;
        }
        match codec {
            "json" => "application/json",
            "msgpack" => "application/msgpack",
            "protobuf" => "application/x-protobuf",
            _ => ContentTypes::FALLBACK,
        }
    }
}
