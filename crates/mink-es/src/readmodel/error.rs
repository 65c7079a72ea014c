//! [`ReadModelError`]: why a read-model operation was refused or failed.

use super::FieldType;

/// Why a read-model operation was refused or failed.
///
/// It reaches callers as [`crate::Error::ReadModel`]. Every variant caused by bad input
/// (an unknown field, a value of the wrong type, an invalid query or cursor, a model
/// that cannot be stored) is detected before any I/O: nothing was read or written.
/// [`NotFound`](Self::NotFound), [`AlreadyExists`](Self::AlreadyExists) and
/// [`VersionConflict`](Self::VersionConflict) come from the store and also mean that
/// nothing was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadModelError {
    /// The model's declaration is invalid (a bad table or field name, no id field, a
    /// duplicate field), or its table cannot be created or rebuilt as declared.
    #[error("invalid read model {model:?}: {reason}")]
    InvalidModel {
        /// The model's name.
        model: String,
        /// What is wrong.
        reason: String,
    },

    /// A query, a cursor or an id named a field the model does not declare.
    ///
    /// Never a wider query: a filter on an unknown field is refused, it is not dropped.
    #[error("read model {model:?} has no field {field:?}")]
    UnknownField {
        /// The model's name.
        model: String,
        /// The unknown name (cut to 64 characters).
        field: String,
    },

    /// A value is not of its field's type: in a query, an id, or a stored model.
    #[error("field {field:?} of read model {model:?} holds {expected} values, not {found}")]
    TypeMismatch {
        /// The model's name.
        model: String,
        /// The field.
        field: String,
        /// The field's declared type.
        expected: FieldType,
        /// The kind of the value given ([`Value::kind`](super::Value::kind), or a JSON
        /// kind for a stored model).
        found: &'static str,
    },

    /// A value has the right type but cannot be stored or compared: text with a NUL
    /// character, a NaN or infinite float, a timestamp outside the years 1–9999, an
    /// integer outside `i64`, a null in a field that is not nullable.
    #[error("invalid value for field {field:?} of read model {model:?}: {reason}")]
    InvalidValue {
        /// The model's name.
        model: String,
        /// The field.
        field: String,
        /// What is wrong with the value.
        reason: String,
    },

    /// A query is malformed: a `like` pattern with a dangling escape, a comparison with
    /// null, a comparison or ordering on a JSON field, a destructive query without a
    /// filter, too many values.
    #[error("invalid query on read model {model:?}: {reason}")]
    InvalidQuery {
        /// The model's name.
        model: String,
        /// What is wrong.
        reason: String,
    },

    /// A pagination cursor is malformed, or was made for another model or another
    /// ordering than the query it is used with.
    #[error("invalid cursor for read model {model:?}: {reason}")]
    InvalidCursor {
        /// The model's name.
        model: String,
        /// What is wrong.
        reason: String,
    },

    /// No row has this id.
    #[error("read model {model:?} has no row with id {id}")]
    NotFound {
        /// The model's name.
        model: String,
        /// The id, as a literal.
        id: String,
    },

    /// A row with this id already exists (an insert does not overwrite; use upsert).
    #[error("read model {model:?} already has a row with id {id}")]
    AlreadyExists {
        /// The model's name.
        model: String,
        /// The id, as a literal.
        id: String,
    },

    /// An update expected another version of the row than the stored one.
    #[error(
        "version conflict on read model {model:?} row {id}: expected version {expected}, actual {actual}"
    )]
    VersionConflict {
        /// The model's name.
        model: String,
        /// The row's id, as a literal.
        id: String,
        /// The version the update expected.
        expected: u64,
        /// The stored version when the update was checked.
        actual: u64,
    },

    /// The model's table was not ensured (with this declaration) through this store
    /// handle: call `ensure_table` first.
    #[error(
        "the table of read model {model:?} is not ensured with this declaration on this store handle; call ensure_table first"
    )]
    NotEnsured {
        /// The model's name.
        model: String,
    },

    /// A model could not be serialized to JSON.
    #[error("cannot encode a {model:?} read model: {source}")]
    Encode {
        /// The model's name.
        model: String,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },

    /// A stored row could not be deserialized into the model.
    #[error("cannot decode a stored {model:?} read model: {source}")]
    Decode {
        /// The model's name.
        model: String,
        /// The deserializer's error.
        #[source]
        source: serde_json::Error,
    },
}

impl ReadModelError {
    /// True for [`ReadModelError::VersionConflict`].
    pub fn is_version_conflict(&self) -> bool {
        matches!(self, ReadModelError::VersionConflict { .. })
    }
}
