//! Mapping driver errors to [`mink_es::Error`], in one place.

use std::fmt;

use mink_es::{BoxError, Error};
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

/// Says what failed: wraps the source of a [`Error::Backend`] in `what` (keeping
/// whether it is transient). Other errors pass through: they name what was wrong.
///
/// The wrapped error displays as `{what}: {source}` and keeps the driver's error as
/// its [`source`](std::error::Error::source), so it can still be downcast.
pub(crate) fn context(e: Error, what: impl FnOnce() -> String) -> Error {
    match e {
        Error::Backend { transient, source } => Error::backend(
            transient,
            Context {
                what: what(),
                source,
            },
        ),
        other => other,
    }
}

#[derive(Debug)]
struct Context {
    what: String,
    source: BoxError,
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, self.source)
    }
}

impl std::error::Error for Context {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
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

    #[test]
    fn context_says_what_failed_and_keeps_the_driver_error() {
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        let e = context(map_err(busy), || "claiming key \"k\"".to_owned());
        assert!(e.is_retryable(), "still transient");
        assert!(e.to_string().contains("claiming key \"k\": "), "{e}");
        let Error::Backend { source, .. } = &e else {
            panic!("not a backend error: {e:?}")
        };
        let driver = std::error::Error::source(&**source);
        assert!(driver.is_some_and(|d| d.downcast_ref::<rusqlite::Error>().is_some()));
        let other = context(Error::Closed, || "unused".to_owned());
        assert!(matches!(other, Error::Closed));
    }
}
