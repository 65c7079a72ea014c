//! The error type of `mink-es` and of every store that implements its traits.

use crate::{ExpectedVersion, Position, StreamId};

/// A boxed error from a lower layer (a database driver, a codec).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The result type used throughout `mink-es`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a stream id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamIdError {
    /// The id is the empty string.
    #[error("it is empty")]
    Empty,
    /// The id is longer than [`crate::MAX_STREAM_ID_LEN`] bytes.
    #[error("it is {len} bytes long; the limit is {max}")]
    TooLong {
        /// Length of the refused id, in bytes.
        len: usize,
        /// The limit, in bytes.
        max: usize,
    },
    /// The id contains a control character (such as a newline or NUL).
    #[error("it contains a control character at byte {index}")]
    ControlCharacter {
        /// Byte offset of the first control character.
        index: usize,
    },
    /// A category or id part given to [`StreamId::for_aggregate`] was empty.
    #[error("its category or id part is empty")]
    EmptyPart,
}

/// Why an event type name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventTypeError {
    /// The name is empty.
    #[error("it is empty")]
    Empty,
    /// The name is longer than [`crate::MAX_EVENT_TYPE_LEN`] bytes.
    #[error("it is {len} bytes long; the limit is {max}")]
    TooLong {
        /// Length of the refused name, in bytes.
        len: usize,
        /// The limit, in bytes.
        max: usize,
    },
    /// The name contains whitespace or a control character.
    #[error("it contains whitespace or a control character at byte {index}")]
    InvalidCharacter {
        /// Byte offset of the first offending character.
        index: usize,
    },
}

/// Everything that can go wrong in `mink-es` and in the stores built on it.
///
/// Errors caused by bad input (an invalid stream id, an empty append, an oversized
/// payload, a stale expected version) are detected before anything is written: a
/// store that returns one of them has stored nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A stream id failed validation.
    #[error("invalid stream id {stream_id:?}: {reason}")]
    InvalidStreamId {
        /// The refused id (cut to 64 characters).
        stream_id: String,
        /// What was wrong with it.
        reason: StreamIdError,
    },

    /// An event type name failed validation.
    #[error("invalid event type {event_type:?}: {reason}")]
    InvalidEventType {
        /// The refused name (cut to 64 characters).
        event_type: String,
        /// What was wrong with it.
        reason: EventTypeError,
    },

    /// An append carried no events.
    #[error("append to stream {stream} carries no events")]
    EmptyAppend {
        /// The target stream.
        stream: StreamId,
    },

    /// An append carried more events than the store accepts in one call.
    #[error("append to stream {stream} carries {count} events; the limit is {limit}")]
    TooManyEvents {
        /// The target stream.
        stream: StreamId,
        /// Events in the refused append.
        count: usize,
        /// The store's limit.
        limit: usize,
    },

    /// An event's payload (or metadata) is larger than the store accepts.
    #[error(
        "event #{index} of the append to stream {stream} is {size} bytes; the limit is {limit}"
    )]
    PayloadTooLarge {
        /// The target stream.
        stream: StreamId,
        /// Index of the offending event within the append.
        index: usize,
        /// Size of its payload plus encoded metadata, in bytes.
        size: usize,
        /// The store's limit, in bytes.
        limit: usize,
    },

    /// The stream was not at the version the append expected.
    ///
    /// `actual` is the stream's current version; `0` means the stream does not exist.
    #[error(
        "wrong expected version on stream {stream}: expected {expected}, actual {}",
        crate::version::describe_version(*actual)
    )]
    Conflict {
        /// The stream appended to.
        stream: StreamId,
        /// What the append expected.
        expected: ExpectedVersion,
        /// The stream's version when the append was checked (0 = no stream).
        actual: u64,
    },

    /// An event id of the append is already stored, and the append is not an exact
    /// repetition of the original one (same ids, same stream, same place).
    #[error(
        "event id {event_id} (appended to {stream}) is already stored in stream {existing_stream} at version {existing_version}"
    )]
    DuplicateEventId {
        /// The duplicated id.
        event_id: crate::EventId,
        /// The stream the refused append targeted.
        stream: StreamId,
        /// The stream that already holds the id.
        existing_stream: StreamId,
        /// The version it holds it at.
        existing_version: u64,
    },

    /// The same event id appears twice within one append.
    #[error("event id {event_id} appears more than once in one append to stream {stream}")]
    DuplicateEventIdInAppend {
        /// The repeated id.
        event_id: crate::EventId,
        /// The target stream.
        stream: StreamId,
    },

    /// In strict replay mode, a stored event's type is not known to the code reading it.
    #[error("unknown event type {event_type:?} in stream {stream} at version {version}")]
    UnknownEventType {
        /// The stream holding the event.
        stream: StreamId,
        /// The event's stream version.
        version: u64,
        /// The unknown type name.
        event_type: String,
    },

    /// A stored event could not be decoded into its Rust type.
    #[error(
        "cannot decode event {event_type:?} in stream {stream} at version {version} (position {position}): {source}"
    )]
    Decode {
        /// The stream holding the event.
        stream: StreamId,
        /// The event's stream version.
        version: u64,
        /// The event's global position.
        position: Position,
        /// The event's type name.
        event_type: String,
        /// The codec's error.
        #[source]
        source: BoxError,
    },

    /// A stored event's payload was written with a codec this reader cannot decode.
    #[error(
        "event {event_type:?} in stream {stream} at version {version} was written with codec {codec:?}, which this reader cannot decode"
    )]
    UnknownCodec {
        /// The stream holding the event.
        stream: StreamId,
        /// The event's stream version.
        version: u64,
        /// The event's type name.
        event_type: String,
        /// The unknown codec tag.
        codec: String,
    },

    /// A stored event has a schema version newer than this code knows: it was written
    /// by newer code, and is never guessed at.
    #[error(
        "event {event_type:?} in stream {stream} at version {version} has schema version {schema_version}; this code knows up to {known}"
    )]
    SchemaTooNew {
        /// The stream holding the event.
        stream: StreamId,
        /// The event's stream version.
        version: u64,
        /// The event's type name.
        event_type: String,
        /// The stored schema version.
        schema_version: u32,
        /// The newest version the schema registry knows.
        known: u32,
    },

    /// A stored event could not be brought to its current shape.
    #[error("cannot upcast event {event_type:?} in stream {stream} at version {version}: {source}")]
    Upcast {
        /// The stream holding the event.
        stream: StreamId,
        /// The event's stream version.
        version: u64,
        /// The event's type name.
        event_type: String,
        /// What went wrong.
        #[source]
        source: crate::schema::UpcastError,
    },

    /// An outbox route's transform failed for an event; the append wrote nothing.
    #[error(
        "outbox route to {destination:?} failed for event {event_type:?} in stream {stream} at version {version}: {source}"
    )]
    Outbox {
        /// The stream of the event.
        stream: StreamId,
        /// The event's stream version.
        version: u64,
        /// The event's type name.
        event_type: String,
        /// The route's destination.
        destination: String,
        /// The transform's error.
        #[source]
        source: BoxError,
    },

    /// A projection definition was refused (no name, a duplicate name, no partitions).
    #[error("invalid projection {name:?}: {reason}")]
    InvalidProjection {
        /// The projection's name (cut to 64 characters).
        name: String,
        /// What is wrong.
        reason: String,
    },

    /// No projection of that name has reported (nothing was changed).
    #[error("no projection is named {name:?}")]
    UnknownProjection {
        /// The name asked for.
        name: String,
    },

    /// A rebuild of the projection is already running or requested.
    #[error("a rebuild of projection {name:?} is already running")]
    RebuildInProgress {
        /// The projection (or partition).
        name: String,
    },

    /// An inline projection failed, so the append failed and wrote nothing.
    #[error("inline projection {projection:?} failed for the append to {stream}: {source}")]
    InlineProjection {
        /// The projection.
        projection: String,
        /// The stream appended to.
        stream: StreamId,
        /// Its error.
        #[source]
        source: BoxError,
    },

    /// A value could not be encoded.
    #[error("cannot encode {what}: {source}")]
    Encode {
        /// What was being encoded (an event type, a snapshot).
        what: String,
        /// The codec's error.
        #[source]
        source: BoxError,
    },

    /// A stored row could not be read back (a malformed id, metadata or column value).
    #[error("stored event at position {position} is corrupt: {detail}")]
    CorruptEvent {
        /// The global position of the row.
        position: Position,
        /// What was wrong.
        detail: String,
    },

    /// Text or bytes that should hold a [`Position`] did not.
    #[error("invalid position {0:?}: expected the form \"<major>:<minor>\" or \"<minor>\"")]
    InvalidPosition(String),

    /// An argument was out of its accepted range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The store was closed.
    #[error("the store is closed")]
    Closed,

    /// A read-model operation was refused or failed: an unknown field, a type
    /// mismatch, an invalid query, a missing or duplicate row, a version conflict (see
    /// [`crate::readmodel::ReadModelError`]).
    #[error(transparent)]
    ReadModel(#[from] crate::readmodel::ReadModelError),

    /// The storage backend failed (I/O, connection, driver error).
    #[error("storage backend error: {source}")]
    Backend {
        /// Whether retrying the same operation may succeed (a busy database, a lost connection).
        transient: bool,
        /// The driver's error.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// Builds a [`Error::Backend`] error from a driver error.
    pub fn backend(transient: bool, source: impl Into<BoxError>) -> Self {
        Error::Backend {
            transient,
            source: source.into(),
        }
    }

    /// True for [`Error::Conflict`].
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict { .. })
    }

    /// True when retrying the same operation may succeed: a concurrency conflict
    /// (after reloading; also a read model's version conflict) or a transient backend
    /// failure.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Conflict { .. }
            | Error::Backend {
                transient: true, ..
            } => true,
            Error::ReadModel(e) => e.is_version_conflict(),
            _ => false,
        }
    }

    /// The [`crate::readmodel::ReadModelError`] inside, for [`Error::ReadModel`].
    pub fn read_model(&self) -> Option<&crate::readmodel::ReadModelError> {
        match self {
            Error::ReadModel(e) => Some(e),
            _ => None,
        }
    }
}

/// Cuts user input to a length that is safe to carry in an error message.
pub(crate) fn clip(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}
