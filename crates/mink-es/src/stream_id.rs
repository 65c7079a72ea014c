//! Stream ids and their `Category-id` convention.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use crate::error::{Error, StreamIdError, clip};

/// The longest stream id accepted, in bytes.
pub const MAX_STREAM_ID_LEN: usize = 255;

/// The id of an event stream, validated.
///
/// Stream ids follow the `Category-id` convention: the category is the text before the
/// first `-` (the whole id when there is none), so `Order-42` and `Order-7-b` both belong
/// to `Order`. A valid id is non-empty, at most [`MAX_STREAM_ID_LEN`] bytes long and
/// free of control characters.
///
/// Cloning is cheap (a reference-counted string).
///
/// ```
/// use mink_es::StreamId;
/// let id = StreamId::new("Order-42").unwrap();
/// assert_eq!(id.category(), "Order");
/// assert!(StreamId::new("").is_err());
/// assert_eq!(StreamId::for_aggregate("Order", "42").unwrap(), id);
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(Arc<str>);

impl StreamId {
    /// Validates and wraps a stream id.
    pub fn new(id: impl AsRef<str>) -> Result<Self, Error> {
        let id = id.as_ref();
        validate(id).map_err(|reason| Error::InvalidStreamId {
            stream_id: clip(id),
            reason,
        })?;
        Ok(StreamId(Arc::from(id)))
    }

    /// Builds `"{category}-{id}"`, refusing empty parts.
    ///
    /// The category must not itself contain `-`, or the category derived from the
    /// resulting id would differ from the one given.
    pub fn for_aggregate(category: &str, id: &str) -> Result<Self, Error> {
        let joined = format!("{category}-{id}");
        if category.is_empty() || id.is_empty() || category.contains('-') {
            return Err(Error::InvalidStreamId {
                stream_id: clip(&joined),
                reason: StreamIdError::EmptyPart,
            });
        }
        StreamId::new(joined)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The category: the text before the first `-`, or the whole id when it has none.
    pub fn category(&self) -> &str {
        category_of(&self.0)
    }

    /// The part after the first `-`, if any.
    pub fn entity_id(&self) -> Option<&str> {
        self.0.split_once('-').map(|(_, id)| id)
    }
}

/// The category of a stream id given as text (see [`StreamId::category`]).
pub fn category_of(stream_id: &str) -> &str {
    stream_id.split_once('-').map_or(stream_id, |(c, _)| c)
}

fn validate(id: &str) -> Result<(), StreamIdError> {
    if id.is_empty() {
        return Err(StreamIdError::Empty);
    }
    if id.len() > MAX_STREAM_ID_LEN {
        return Err(StreamIdError::TooLong {
            len: id.len(),
            max: MAX_STREAM_ID_LEN,
        });
    }
    if let Some((index, _)) = id.char_indices().find(|(_, c)| c.is_control()) {
        return Err(StreamIdError::ControlCharacter { index });
    }
    Ok(())
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl AsRef<str> for StreamId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for StreamId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for StreamId {
    type Error = Error;
    fn try_from(value: &str) -> Result<Self, Error> {
        StreamId::new(value)
    }
}

impl TryFrom<String> for StreamId {
    type Error = Error;
    fn try_from(value: String) -> Result<Self, Error> {
        StreamId::new(value)
    }
}

impl std::str::FromStr for StreamId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        StreamId::new(s)
    }
}

impl serde::Serialize for StreamId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for StreamId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        StreamId::new(&*s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories() {
        assert_eq!(StreamId::new("Order-1").unwrap().category(), "Order");
        assert_eq!(StreamId::new("Order-1-2").unwrap().category(), "Order");
        assert_eq!(StreamId::new("Order-1-2").unwrap().entity_id(), Some("1-2"));
        assert_eq!(StreamId::new("plain").unwrap().category(), "plain");
        assert_eq!(StreamId::new("plain").unwrap().entity_id(), None);
    }

    #[test]
    fn refuses_bad_ids() {
        let e = StreamId::new("").unwrap_err();
        assert!(matches!(
            e,
            Error::InvalidStreamId {
                reason: StreamIdError::Empty,
                ..
            }
        ));
        let long = "x".repeat(MAX_STREAM_ID_LEN + 1);
        assert!(matches!(
            StreamId::new(&long).unwrap_err(),
            Error::InvalidStreamId {
                reason: StreamIdError::TooLong { len: 256, max: 255 },
                ..
            }
        ));
        assert!(StreamId::new("x".repeat(MAX_STREAM_ID_LEN)).is_ok());
        assert!(matches!(
            StreamId::new("a\nb").unwrap_err(),
            Error::InvalidStreamId {
                reason: StreamIdError::ControlCharacter { index: 1 },
                ..
            }
        ));
        assert!(StreamId::for_aggregate("", "1").is_err());
        assert!(StreamId::for_aggregate("A", "").is_err());
        assert!(StreamId::for_aggregate("A-B", "1").is_err());
    }

    #[test]
    fn serde_validates() {
        let id: StreamId = serde_json::from_str("\"Order-1\"").unwrap();
        assert_eq!(id.as_str(), "Order-1");
        assert!(serde_json::from_str::<StreamId>("\"\"").is_err());
    }
}
