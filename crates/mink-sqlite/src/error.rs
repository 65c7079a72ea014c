//! Mapping driver errors to [`mink_es::Error`], in one place.

use std::fmt;

use mink_es::Error;
use rusqlite::ErrorCode;

/// Maps every rusqlite error to a [`mink_es::Error::Backend`].
///
/// SQLite `BUSY` and `LOCKED` (another connection holds a lock for longer than the busy
/// timeout) are transient: retrying may succeed. Everything else is not.
pub(crate) fn map_err(e: rusqlite::Error) -> Error {
    let transient = matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    );
    Error::backend(transient, e)
}

/// True when `e` is a constraint violation (a UNIQUE index refused a row).
pub(crate) fn is_constraint_violation(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation)
}

/// A non-transient backend error with a message (for states the driver reports as
/// success but that the store cannot accept).
pub(crate) fn backend_msg(msg: impl Into<String>) -> Error {
    Error::backend(false, Message(msg.into()))
}

#[derive(Debug)]
struct Message(String);

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Message {}

/// The database file was migrated by a newer version of `mink-sqlite` than this one.
///
/// [`crate::SqliteStore::open`] refuses such a file rather than guess at a schema it
/// does not know. It returns this as the source of a non-transient
/// [`mink_es::Error::Backend`]; find it with `downcast_ref`:
///
/// ```
/// # fn check(err: mink_es::Error) {
/// if let mink_es::Error::Backend { source, .. } = &err {
///     if let Some(too_new) = source.downcast_ref::<mink_sqlite::SchemaTooNew>() {
///         eprintln!("upgrade mink-sqlite: the file is at schema {}", too_new.found);
///     }
/// }
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SchemaTooNew {
    /// The schema version recorded in the file.
    pub found: u32,
    /// The newest schema version this build knows ([`crate::LATEST_SCHEMA_VERSION`]).
    pub supported: u32,
}

impl fmt::Display for SchemaTooNew {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the database is at schema version {}, newer than the latest this build of \
             mink-sqlite knows ({}); open it with a newer mink-sqlite",
            self.found, self.supported
        )
    }
}

impl std::error::Error for SchemaTooNew {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_and_locked_are_transient() {
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        assert!(map_err(busy).is_retryable());
        let locked = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_LOCKED),
            None,
        );
        assert!(map_err(locked).is_retryable());
        let full = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            Some("disk full".into()),
        );
        let mapped = map_err(full);
        assert!(matches!(
            mapped,
            Error::Backend {
                transient: false,
                ..
            }
        ));
        assert!(!map_err(rusqlite::Error::QueryReturnedNoRows).is_retryable());
    }
}
