//! Reading stored rows back, defensively: a row that cannot be read is a typed
//! [`Error::CorruptEvent`], never a panic.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use mink_es::{
    CodecTag, Error, EventId, EventType, Metadata, Position, Result, StoredEvent, StreamId,
};
use rusqlite::Row;
use rusqlite::types::ValueRef;

use crate::error::map_err;

/// The columns [`Decoder::decode`] reads, in order.
pub(crate) const EVENT_COLUMNS: &str = "position, event_id, stream_id, version, event_type, \
     schema_version, codec, payload, metadata, recorded_at";

/// Turns rows of [`EVENT_COLUMNS`] into [`StoredEvent`]s, sharing the strings that
/// repeat from row to row (stream ids, type names) instead of allocating them again.
pub(crate) struct Decoder<'a> {
    /// The stream every row belongs to, when the query selected one stream.
    known_stream: Option<&'a StreamId>,
    last_stream: Option<StreamId>,
    types: Vec<EventType>,
}

/// At most this many distinct type names are shared per decoder.
const MAX_INTERNED_TYPES: usize = 32;

impl<'a> Decoder<'a> {
    /// A decoder for rows of any stream.
    pub(crate) fn new() -> Self {
        Decoder {
            known_stream: None,
            last_stream: None,
            types: Vec::new(),
        }
    }

    /// A decoder for rows selected by `stream_id = stream`.
    pub(crate) fn for_stream(stream: &'a StreamId) -> Self {
        Decoder {
            known_stream: Some(stream),
            ..Decoder::new()
        }
    }

    /// Reads one row.
    pub(crate) fn decode(&mut self, row: &Row<'_>) -> Result<StoredEvent> {
        let raw_position = int(row, 0, "position", Position::START)?;
        let position = match u64::try_from(raw_position) {
            Ok(p) => Position::new(0, p),
            Err(_) => {
                return Err(corrupt(
                    Position::START,
                    format!("negative position {raw_position}"),
                ));
            }
        };
        let id = match get(row, 1)? {
            ValueRef::Blob(b) => EventId::from_slice(b),
            _ => None,
        }
        .ok_or_else(|| corrupt(position, "event_id is not a 16-byte blob"))?;
        let stream_id = match self.known_stream {
            Some(s) => s.clone(),
            None => self.stream(row, position)?,
        };
        let version = non_negative(row, 3, "version", position)?;
        let event_type = self.event_type(row, position)?;
        let schema_version = u32::try_from(int(row, 5, "schema_version", position)?)
            .map_err(|_| corrupt(position, "schema_version is out of range"))?;
        let codec = match text(row, 6, "codec", position)? {
            "json" => CodecTag::JSON,
            other => CodecTag::from(other.to_owned()),
        };
        let payload = match get(row, 7)? {
            ValueRef::Text(b) | ValueRef::Blob(b) => Bytes::copy_from_slice(b),
            _ => return Err(corrupt(position, "payload is neither text nor blob")),
        };
        let metadata = match get(row, 8)? {
            ValueRef::Null => Metadata::default(),
            ValueRef::Text(b) => std::str::from_utf8(b)
                .ok()
                .and_then(|s| Metadata::from_json(s).ok())
                .ok_or_else(|| corrupt(position, "metadata is not valid metadata JSON"))?,
            _ => return Err(corrupt(position, "metadata is not text")),
        };
        let recorded_at = micros_to_time(int(row, 9, "recorded_at", position)?)
            .ok_or_else(|| corrupt(position, "recorded_at is out of range"))?;
        Ok(StoredEvent {
            id,
            stream_id,
            version,
            position,
            event_type,
            schema_version,
            codec,
            payload,
            metadata,
            recorded_at,
        })
    }

    fn stream(&mut self, row: &Row<'_>, position: Position) -> Result<StreamId> {
        let s = text(row, 2, "stream_id", position)?;
        if let Some(last) = &self.last_stream
            && last.as_str() == s
        {
            return Ok(last.clone());
        }
        let id = StreamId::new(s)
            .map_err(|e| corrupt(position, format!("stream_id is invalid: {e}")))?;
        self.last_stream = Some(id.clone());
        Ok(id)
    }

    fn event_type(&mut self, row: &Row<'_>, position: Position) -> Result<EventType> {
        let s = text(row, 4, "event_type", position)?;
        if let Some(t) = self.types.iter().find(|t| t.as_str() == s) {
            return Ok(t.clone());
        }
        let t = EventType::from(s.to_owned());
        if self.types.len() < MAX_INTERNED_TYPES {
            self.types.push(t.clone());
        }
        Ok(t)
    }
}

/// A [`Error::CorruptEvent`].
pub(crate) fn corrupt(position: Position, detail: impl Into<String>) -> Error {
    Error::CorruptEvent {
        position,
        detail: detail.into(),
    }
}

/// Unix microseconds to a time, if representable.
pub(crate) fn micros_to_time(micros: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(micros)
}

fn get<'r>(row: &'r Row<'_>, idx: usize) -> Result<ValueRef<'r>> {
    row.get_ref(idx).map_err(map_err)
}

fn int(row: &Row<'_>, idx: usize, name: &str, position: Position) -> Result<i64> {
    match get(row, idx)? {
        ValueRef::Integer(i) => Ok(i),
        _ => Err(corrupt(position, format!("{name} is not an integer"))),
    }
}

fn non_negative(row: &Row<'_>, idx: usize, name: &str, position: Position) -> Result<u64> {
    let v = int(row, idx, name, position)?;
    u64::try_from(v).map_err(|_| corrupt(position, format!("{name} is negative ({v})")))
}

fn text<'r>(row: &'r Row<'_>, idx: usize, name: &str, position: Position) -> Result<&'r str> {
    match get(row, idx)? {
        ValueRef::Text(b) => std::str::from_utf8(b)
            .map_err(|_| corrupt(position, format!("{name} is not valid UTF-8"))),
        _ => Err(corrupt(position, format!("{name} is not text"))),
    }
}
