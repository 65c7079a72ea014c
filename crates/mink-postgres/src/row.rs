//! Column types the driver does not know (`xid8`) and the decoding of event rows.

use bytes::Bytes;
use mink_es::{CodecTag, Error, EventId, EventType, Metadata, Position, StoredEvent, StreamId};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::types::Oid;
use sqlx::postgres::{PgArgumentBuffer, PgRow, PgTypeInfo, PgValueFormat, PgValueRef};
use sqlx::types::Json;
use sqlx::{Decode, Encode, Postgres, Row, Type};
use uuid::Uuid;

use crate::time::read_time;

/// A PostgreSQL `xid8`: a 64-bit, epoch-qualified transaction id (PostgreSQL ≥ 13).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Xid8(pub u64);

/// The built-in OID of `xid8` (fixed since PostgreSQL 13).
const XID8_OID: u32 = 5069;

impl Type<Postgres> for Xid8 {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(Oid(XID8_OID))
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        ty.oid() == Some(Oid(XID8_OID))
    }
}

impl Encode<'_, Postgres> for Xid8 {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.extend_from_slice(&self.0.to_be_bytes());
        Ok(IsNull::No)
    }
}

impl Decode<'_, Postgres> for Xid8 {
    fn decode(value: PgValueRef<'_>) -> Result<Self, BoxDynError> {
        match value.format() {
            PgValueFormat::Binary => {
                let b: [u8; 8] = value.as_bytes()?.try_into()?;
                Ok(Xid8(u64::from_be_bytes(b)))
            }
            PgValueFormat::Text => Ok(Xid8(value.as_str()?.parse()?)),
        }
    }
}

/// Converts an unsigned count or version to `bigint`, saturating.
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Converts a `usize` limit to `bigint`, saturating.
pub(crate) fn limit_i64(v: usize) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The feed cursor of a position: `(tx, position)`.
pub(crate) fn cursor(p: Position) -> (Xid8, i64) {
    // A minor part above i64::MAX is past every position of its transaction; i64::MAX
    // keeps that meaning, since no stored position reaches it.
    (Xid8(p.major()), to_i64(p.minor()))
}

/// The position of a row.
pub(crate) fn position_of(tx: Xid8, position: i64) -> Position {
    Position::new(tx.0, u64::try_from(position).unwrap_or(0))
}

/// Decodes rows into events, re-using stream ids and codec tags between rows.
#[derive(Default)]
pub(crate) struct EventDecoder {
    last_stream: Option<StreamId>,
    last_type: Option<EventType>,
    last_codec: Option<CodecTag>,
}

fn corrupt(position: Position, what: &str, e: impl std::fmt::Display) -> Error {
    Error::CorruptEvent {
        position,
        detail: format!("{what}: {e}"),
    }
}

impl EventDecoder {
    /// Decodes one row with the columns of [`crate::schema::EVENT_COLUMNS`], starting at
    /// column `offset`.
    pub(crate) fn decode(&mut self, row: &PgRow, offset: usize) -> Result<StoredEvent, Error> {
        let tx: Xid8 = row
            .try_get_unchecked(offset)
            .map_err(|e| corrupt(Position::START, "tx", e))?;
        let pos: i64 = row
            .try_get(offset + 1)
            .map_err(|e| corrupt(Position::START, "position", e))?;
        let position = position_of(tx, pos);
        let id: Uuid = row
            .try_get(offset + 2)
            .map_err(|e| corrupt(position, "event id", e))?;
        let stream: &str = row
            .try_get(offset + 3)
            .map_err(|e| corrupt(position, "stream id", e))?;
        let stream_id = match &self.last_stream {
            Some(s) if s.as_str() == stream => s.clone(),
            _ => {
                let s = StreamId::new(stream).map_err(|e| corrupt(position, "stream id", e))?;
                self.last_stream = Some(s.clone());
                s
            }
        };
        let version: i64 = row
            .try_get(offset + 4)
            .map_err(|e| corrupt(position, "version", e))?;
        let version = u64::try_from(version).map_err(|e| corrupt(position, "version", e))?;
        let event_type: &str = row
            .try_get(offset + 5)
            .map_err(|e| corrupt(position, "event type", e))?;
        let event_type = match &self.last_type {
            Some(t) if t.as_str() == event_type => t.clone(),
            _ => {
                let t = EventType::from(event_type.to_owned());
                self.last_type = Some(t.clone());
                t
            }
        };
        let schema_version: i32 = row
            .try_get(offset + 6)
            .map_err(|e| corrupt(position, "schema version", e))?;
        let schema_version =
            u32::try_from(schema_version).map_err(|e| corrupt(position, "schema version", e))?;
        let codec: &str = row
            .try_get(offset + 7)
            .map_err(|e| corrupt(position, "codec", e))?;
        let codec = if codec == "json" {
            CodecTag::JSON
        } else {
            match &self.last_codec {
                Some(c) if c.as_str() == codec => c.clone(),
                _ => {
                    let c = CodecTag::from(codec.to_owned());
                    self.last_codec = Some(c.clone());
                    c
                }
            }
        };
        let payload: Vec<u8> = row
            .try_get(offset + 8)
            .map_err(|e| corrupt(position, "payload", e))?;
        let metadata: Option<Json<Metadata>> = row
            .try_get(offset + 9)
            .map_err(|e| corrupt(position, "metadata", e))?;
        let recorded_at =
            read_time(row, offset + 10).map_err(|e| corrupt(position, "recorded_at", e))?;
        Ok(StoredEvent {
            id: EventId::from_uuid(id),
            stream_id,
            version,
            position,
            event_type,
            schema_version,
            codec,
            payload: Bytes::from(payload),
            metadata: metadata.map(|m| m.0).unwrap_or_default(),
            recorded_at,
        })
    }
}
