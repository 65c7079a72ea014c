//! Errors: the adapter's own conditions, and the one place where driver errors and
//! SQLSTATEs become [`mink_es::Error`]s.
//!
//! # SQLSTATE mapping
//!
//! Store methods return [`mink_es::Error`]. Driver errors are classified by
//! one internal function (the only place that reads SQLSTATEs):
//!
//! | SQLSTATE | condition | becomes |
//! |---|---|---|
//! | `23505` on `events_stream_version_key` | two writers took the same stream version | [`Error::Conflict`] (the append reads the actual version) |
//! | `23505` on `events_event_id_key` | an event id is already stored | an idempotent repeat, or [`Error::DuplicateEventId`] (the append looks the id up) |
//! | `23505` elsewhere, `23xxx` | other integrity violation | [`Error::Backend`], not transient |
//! | `40001` serialization_failure, `40P01` deadlock_detected | the transaction lost a race | [`Error::Backend`], transient |
//! | `55P03` lock_not_available, `57014` query_canceled (statement timeout) | a lock or statement timed out | [`Error::Backend`], transient |
//! | `08xxx` connection exception, `53xxx` insufficient resources, `57P01`–`57P03` shutdown | the server went away or is overloaded | [`Error::Backend`], transient |
//! | `22xxx` data exception (e.g. `22P05`, `22021`) | a value PostgreSQL cannot store | [`Error::InvalidArgument`] |
//! | `42P01` undefined_table, `3F000` invalid_schema_name | the schema was not migrated | [`Error::Backend`] with [`PgStoreError::SchemaNotMigrated`] |
//! | `25P02` in_failed_sql_transaction | the caller's transaction already failed | [`Error::Backend`], not transient |
//! | anything else | | [`Error::Backend`], not transient |
//!
//! Driver errors without a SQLSTATE: I/O errors and pool time-outs are transient, a
//! closed pool is [`Error::Closed`], anything else is a non-transient backend error.
//!
//! A transient error after `COMMIT` was sent leaves the outcome unknown. Retrying the
//! same append (the same [`mink_es::NewEvent`]s, so the same event ids) is safe: a
//! repeat of a committed append returns the original result.
//!
//! # The command stores
//!
//! [`PgIdempotencyStore`](crate::PgIdempotencyStore) and
//! [`PgAuditStore`](crate::PgAuditStore) map driver errors with the same table, then
//! say what failed: the source of an [`Error::Backend`] is wrapped in a note (`cannot
//! claim idempotency key "…": …`) that keeps the original as its
//! [`source`](std::error::Error::source) and keeps whether the error is transient, and
//! the message of an [`Error::InvalidArgument`] is prefixed with it. The trait methods
//! return the result boxed: `err.downcast_ref::<mink_es::Error>()` gets it back, and
//! [`PgStoreError::find`] looks through the note. A row they cannot read back is an
//! [`Error::Backend`], not transient, with [`PgStoreError::Corrupt`] naming the row.

use mink_es::Error;

use crate::SchemaName;

/// Conditions specific to the PostgreSQL store. They reach callers as the source of an
/// [`Error::Backend`]; [`PgStoreError::find`] digs them out.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgStoreError {
    /// A schema name failed validation.
    #[error("invalid schema name {name:?}: {reason}")]
    InvalidSchemaName {
        /// The refused name (cut to 64 characters).
        name: String,
        /// What was wrong.
        reason: String,
    },

    /// The schema does not hold the tables this version of the crate needs.
    #[error(
        "schema {schema} is not migrated (applied: {applied:?}, required: {required}); run migrate()"
    )]
    SchemaNotMigrated {
        /// The schema.
        schema: SchemaName,
        /// The latest migration recorded there, if any.
        applied: Option<i32>,
        /// The latest migration this crate ships.
        required: i32,
    },

    /// A recorded migration differs from the one this crate ships under the same version.
    #[error(
        "migration {version} ({name}) recorded in schema {schema} differs from the one this crate ships"
    )]
    MigrationChanged {
        /// The schema.
        schema: SchemaName,
        /// The migration's version.
        version: i32,
        /// The migration's name.
        name: String,
    },

    /// Stored events carry transaction ids from the future of this cluster.
    ///
    /// This happens after a *logical* restore (pg_dump/pg_restore, some managed-database
    /// moves) into a cluster whose transaction counter is younger than the one that wrote
    /// the events: the feed would hide history and order new events before it. Physical
    /// backups and pg_upgrade keep the counter and are safe. See the crate docs for the
    /// repair.
    #[error(
        "schema {schema} holds events of transaction {max_stored}, but this cluster has only \
         reached transaction {current}: the data was restored logically into a younger cluster; \
         the feed cannot be read until the events are re-stamped (see the mink-postgres docs)"
    )]
    TransactionIdsFromTheFuture {
        /// The schema.
        schema: SchemaName,
        /// The largest transaction id stored.
        max_stored: u64,
        /// The cluster's next transaction id.
        current: u64,
    },

    /// An identical append (same event ids) committed while an append inside a
    /// caller's transaction ran. The caller's transaction is aborted; retrying it finds
    /// the committed append and returns it as a repeat.
    #[error(
        "an identical append to {stream} (first event id {event_id}) committed concurrently; \
         retry the transaction"
    )]
    ConcurrentRepeat {
        /// The stream.
        stream: mink_es::StreamId,
        /// The first event id of the append.
        event_id: mink_es::EventId,
    },

    /// An append kept racing with concurrent writers of its stream and gave up.
    #[error("append to {stream} gave up after {attempts} attempts under contention")]
    Contended {
        /// The stream.
        stream: mink_es::StreamId,
        /// How many times it tried.
        attempts: u32,
    },

    /// An idempotency key kept changing under [`claim`](mink_es::command::idempotency::IdempotencyStore::claim)
    /// (released, purged or taken over between each attempt's decision and its read),
    /// and the claim gave up. Transient: a retry settles it.
    #[error("idempotency key {key:?} changed under {attempts} consecutive claim attempts")]
    ClaimContended {
        /// The key (cut to 64 characters).
        key: String,
        /// How many times the claim tried.
        attempts: u32,
    },

    /// A stored value could not be decoded.
    #[error("unexpected value in {what}: {detail}")]
    Corrupt {
        /// Where.
        what: &'static str,
        /// What was wrong.
        detail: String,
    },
}

impl PgStoreError {
    /// The [`PgStoreError`] behind `error`, if it is one: the source of an
    /// [`Error::Backend`], or further down its chain of sources (the command stores
    /// wrap sources in a note of what failed).
    pub fn find(error: &Error) -> Option<&PgStoreError> {
        let Error::Backend { source, .. } = error else {
            return None;
        };
        let mut current: Option<&(dyn std::error::Error + 'static)> = Some(&**source);
        while let Some(e) = current {
            if let Some(found) = e.downcast_ref::<PgStoreError>() {
                return Some(found);
            }
            current = e.source();
        }
        None
    }
}

impl From<PgStoreError> for Error {
    fn from(e: PgStoreError) -> Self {
        match e {
            PgStoreError::InvalidSchemaName { .. } => Error::InvalidArgument(e.to_string()),
            other => Error::backend(false, other),
        }
    }
}

/// Says what failed: wraps the source of an [`Error::Backend`] in `what` (keeping
/// whether it is transient), and prefixes the message of an [`Error::InvalidArgument`]
/// with it. Other errors pass through: they say what was wrong.
///
/// The wrapped source displays as `{what}: {source}` and keeps the original source as
/// its [`source`](std::error::Error::source), so the driver's error and any
/// [`PgStoreError`] can still be found ([`PgStoreError::find`]).
pub(crate) fn context(e: Error, what: impl FnOnce() -> String) -> Error {
    match e {
        Error::Backend { transient, source } => Error::backend(
            transient,
            Context {
                what: what(),
                source,
            },
        ),
        Error::InvalidArgument(message) => Error::InvalidArgument(format!("{}: {message}", what())),
        other => other,
    }
}

/// A source error, with what failed.
#[derive(Debug)]
struct Context {
    what: String,
    source: mink_es::BoxError,
}

impl std::fmt::Display for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, self.source)
    }
}

impl std::error::Error for Context {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// Cuts user input to a length that is safe to carry in an error.
pub(crate) fn clip(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// The constraint that keeps stream versions unique.
pub(crate) const STREAM_VERSION_KEY: &str = "events_stream_version_key";
/// The constraint that keeps event ids unique.
pub(crate) const EVENT_ID_KEY: &str = "events_event_id_key";

/// What a driver error means to the store.
#[derive(Debug)]
pub(crate) enum Classified {
    /// `23505` on the stream-version key.
    VersionTaken,
    /// `23505` on the event-id key.
    EventIdTaken,
    /// Anything else, already mapped.
    Other(Error),
}

/// The SQLSTATE of a driver error, if it has one.
pub fn sqlstate(e: &sqlx::Error) -> Option<String> {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
}

/// Whether a SQLSTATE means that retrying may succeed.
pub fn is_transient_sqlstate(code: &str) -> bool {
    matches!(
        code,
        "40001" | "40P01" | "55P03" | "57014" | "57P01" | "57P02" | "57P03"
    ) || code.starts_with("08")
        || code.starts_with("53")
}

/// Classifies a driver error (see the module docs for the table).
pub(crate) fn classify(e: sqlx::Error, schema: &SchemaName) -> Classified {
    if let Some(db) = e.as_database_error() {
        let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
        if code == "23505" {
            match db.constraint() {
                Some(STREAM_VERSION_KEY) => return Classified::VersionTaken,
                Some(EVENT_ID_KEY) => return Classified::EventIdTaken,
                _ => {}
            }
        }
        if code.starts_with("22") {
            return Classified::Other(Error::InvalidArgument(format!(
                "PostgreSQL refused a value (SQLSTATE {code}): {}",
                db.message()
            )));
        }
        if code == "42P01" || code == "3F000" {
            return Classified::Other(
                PgStoreError::SchemaNotMigrated {
                    schema: schema.clone(),
                    applied: None,
                    required: crate::migrate::LATEST_VERSION,
                }
                .into(),
            );
        }
        let transient = is_transient_sqlstate(&code);
        return Classified::Other(Error::backend(transient, e));
    }
    Classified::Other(map_driver(e))
}

/// Maps a driver error to a store error (the classification of [`classify`], with
/// unique violations reported as plain backend errors).
pub(crate) fn map(e: sqlx::Error, schema: &SchemaName) -> Error {
    match classify(e, schema) {
        Classified::Other(e) => e,
        Classified::VersionTaken | Classified::EventIdTaken => Error::InvalidArgument(
            "unique violation on the events table outside an append".to_owned(),
        ),
    }
}

/// Maps a driver error that carries no SQLSTATE.
fn map_driver(e: sqlx::Error) -> Error {
    match e {
        sqlx::Error::PoolClosed => Error::Closed,
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::WorkerCrashed => {
            Error::backend(true, e)
        }
        other => Error::backend(false, other),
    }
}

/// Maps any driver error to a [`mink_es::Error`], with the same rules as the store uses
/// (for statements an application runs in a transaction it shares with the store).
pub fn map_sqlx_error(e: sqlx::Error) -> Error {
    if let Some(db) = e.as_database_error() {
        let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
        if code.starts_with("22") {
            return Error::InvalidArgument(format!(
                "PostgreSQL refused a value (SQLSTATE {code}): {}",
                db.message()
            ));
        }
        let transient = is_transient_sqlstate(&code);
        return Error::backend(transient, e);
    }
    map_driver(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_codes() {
        for c in [
            "40001", "40P01", "55P03", "57014", "08006", "08000", "53300", "57P01",
        ] {
            assert!(is_transient_sqlstate(c), "{c}");
        }
        for c in ["23505", "42P01", "22P05", "25P02", "XX000"] {
            assert!(!is_transient_sqlstate(c), "{c}");
        }
    }

    #[test]
    fn driver_errors() {
        let s = SchemaName::default();
        assert!(matches!(map(sqlx::Error::PoolClosed, &s), Error::Closed));
        assert!(map(sqlx::Error::PoolTimedOut, &s).is_retryable());
        assert!(!map(sqlx::Error::RowNotFound, &s).is_retryable());
        let e: Error = PgStoreError::Corrupt {
            what: "x",
            detail: "y".into(),
        }
        .into();
        assert!(PgStoreError::find(&e).is_some());
    }

    #[test]
    fn context_says_what_failed_and_keeps_the_source() {
        let s = SchemaName::default();
        let e = context(map(sqlx::Error::PoolTimedOut, &s), || {
            "claiming \"k\"".into()
        });
        assert!(e.is_retryable(), "still transient");
        assert!(e.to_string().contains("claiming \"k\": "), "{e}");
        let Error::Backend { source, .. } = &e else {
            panic!("not a backend error: {e:?}")
        };
        let driver = std::error::Error::source(&**source);
        assert!(driver.is_some_and(|d| d.downcast_ref::<sqlx::Error>().is_some()));

        let not_migrated: Error = PgStoreError::SchemaNotMigrated {
            schema: s.clone(),
            applied: None,
            required: 2,
        }
        .into();
        let e = context(not_migrated, || "appending".into());
        assert!(!e.is_retryable());
        assert!(matches!(
            PgStoreError::find(&e),
            Some(PgStoreError::SchemaNotMigrated { .. })
        ));

        let e = context(Error::InvalidArgument("bad".into()), || "storing".into());
        assert!(
            matches!(&e, Error::InvalidArgument(m) if m == "storing: bad"),
            "{e:?}"
        );
        assert!(matches!(
            context(Error::Closed, || unreachable!()),
            Error::Closed
        ));
    }

    #[test]
    fn clip_cuts_long_input() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(100);
        let cut = clip(&long);
        assert_eq!(cut.chars().count(), 65);
        assert!(cut.ends_with('…'));
    }
}
