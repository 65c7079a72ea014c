//! The schema, as an ordered list of versioned migrations embedded in the crate.
//!
//! Opening a store applies every migration newer than the file's recorded version, each
//! in its own transaction together with its row in `mink_migrations`. A migration, once
//! released, is never edited: a schema change is a new migration at the end of the list.

use mink_es::{Error, Result};
use rusqlite::{Connection, OptionalExtension};

use crate::error::{SchemaTooNew, backend_msg, map_err};

/// One step of the schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Migration {
    version: u32,
    name: &'static str,
    sql: &'static str,
}

impl Migration {
    /// Its version: 1 for the first migration, then contiguous.
    pub const fn version(&self) -> u32 {
        self.version
    }

    /// A short name saying what it does.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// The SQL it runs.
    pub const fn sql(&self) -> &'static str {
        self.sql
    }
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "events",
        sql: "
            CREATE TABLE mink_events (
                position       INTEGER PRIMARY KEY,
                event_id       BLOB    NOT NULL UNIQUE,
                stream_id      TEXT    NOT NULL,
                version        INTEGER NOT NULL,
                category       TEXT    NOT NULL,
                event_type     TEXT    NOT NULL,
                schema_version INTEGER NOT NULL,
                codec          TEXT    NOT NULL,
                payload                NOT NULL,
                metadata       TEXT,
                recorded_at    INTEGER NOT NULL,
                UNIQUE (stream_id, version)
            );
            CREATE INDEX mink_events_category ON mink_events (category, position);
        ",
    },
    Migration {
        version: 2,
        name: "snapshots and checkpoints",
        sql: "
            CREATE TABLE mink_snapshots (
                stream_id      TEXT    PRIMARY KEY,
                aggregate_type TEXT    NOT NULL,
                version        INTEGER NOT NULL,
                schema_version INTEGER NOT NULL,
                codec          TEXT    NOT NULL,
                payload                NOT NULL,
                taken_at       INTEGER NOT NULL
            );
            CREATE TABLE mink_checkpoints (
                name       TEXT    PRIMARY KEY,
                position   TEXT    NOT NULL,
                updated_at INTEGER NOT NULL
            );
        ",
    },
    Migration {
        version: 3,
        name: "idempotency keys and audit log",
        sql: "
            CREATE TABLE mink_idempotency (
                key        TEXT    PRIMARY KEY,
                state      TEXT    NOT NULL CHECK (state IN ('reserved', 'completed')),
                token      BLOB    NOT NULL,
                output     BLOB,
                expires_at INTEGER NOT NULL,
                CHECK ((state = 'completed') = (output IS NOT NULL))
            );
            CREATE INDEX mink_idempotency_expires_at ON mink_idempotency (expires_at);
            CREATE TABLE mink_audit (
                seq            INTEGER PRIMARY KEY,
                id             BLOB    NOT NULL,
                command_id     BLOB    NOT NULL,
                command        TEXT    NOT NULL,
                aggregate_id   TEXT,
                user_id        TEXT,
                tenant_id      TEXT,
                correlation_id TEXT,
                outcome        TEXT    NOT NULL
                               CHECK (outcome IN ('started', 'succeeded', 'failed')),
                error_kind     TEXT,
                error_message  TEXT,
                started_at     INTEGER NOT NULL,
                duration_us    INTEGER NOT NULL,
                CHECK (CASE outcome
                           WHEN 'failed' THEN error_kind IS NOT NULL AND error_message IS NOT NULL
                           ELSE error_kind IS NULL AND error_message IS NULL
                       END)
            );
            CREATE INDEX mink_audit_by_time ON mink_audit (started_at, id);
            CREATE INDEX mink_audit_by_user ON mink_audit (user_id, started_at, id);
            CREATE INDEX mink_audit_by_command ON mink_audit (command, started_at, id);
        ",
    },
    Migration {
        version: 4,
        name: "outbox",
        sql: "
            CREATE TABLE mink_outbox (
                seq             INTEGER PRIMARY KEY,
                id              BLOB    NOT NULL,
                destination     TEXT    NOT NULL,
                stream_id       TEXT    NOT NULL,
                event_id        BLOB    NOT NULL,
                event_type      TEXT    NOT NULL,
                stream_version  INTEGER NOT NULL,
                position        INTEGER NOT NULL,
                codec           TEXT    NOT NULL,
                payload                 NOT NULL,
                metadata        TEXT,
                created_at      INTEGER NOT NULL,
                status          TEXT    NOT NULL DEFAULT 'pending'
                                CHECK (status IN ('pending', 'delivered', 'dead')),
                attempts        INTEGER NOT NULL DEFAULT 0,
                next_attempt_at INTEGER NOT NULL,
                lease_owner     TEXT,
                lease_until     INTEGER,
                last_error      TEXT,
                finished_at     INTEGER,
                CHECK ((lease_owner IS NULL) = (lease_until IS NULL)),
                CHECK (lease_owner IS NULL OR status = 'pending'),
                CHECK ((status = 'pending') = (finished_at IS NULL))
            );
            CREATE INDEX mink_outbox_by_status ON mink_outbox (status, seq);
            CREATE INDEX mink_outbox_pending_streams ON mink_outbox (destination, stream_id, seq)
                WHERE status = 'pending';
            CREATE INDEX mink_outbox_delivered ON mink_outbox (finished_at)
                WHERE status = 'delivered';
            CREATE INDEX mink_outbox_id ON mink_outbox (id);
        ",
    },
    Migration {
        version: 5,
        name: "read models and projections",
        sql: "
            CREATE TABLE mink_read_models (
                table_name TEXT    PRIMARY KEY,
                model      TEXT    NOT NULL,
                descriptor TEXT    NOT NULL,
                updated_at INTEGER NOT NULL
            );
            CREATE TABLE mink_projection_rebuilds (
                name       TEXT    PRIMARY KEY,
                target     TEXT    NOT NULL,
                started_at INTEGER NOT NULL
            );
            CREATE TABLE mink_projection_status (
                name       TEXT    PRIMARY KEY,
                state      TEXT    NOT NULL,
                status     TEXT    NOT NULL,
                updated_at INTEGER NOT NULL
            );
            CREATE TABLE mink_projection_requests (
                id           INTEGER PRIMARY KEY AUTOINCREMENT,
                name         TEXT    NOT NULL,
                command      TEXT    NOT NULL,
                created_at   INTEGER NOT NULL,
                done         INTEGER NOT NULL DEFAULT 0 CHECK (done IN (0, 1)),
                error        TEXT,
                completed_at INTEGER
            );
            CREATE INDEX mink_projection_requests_pending
                ON mink_projection_requests (name, id) WHERE done = 0;
            CREATE TABLE mink_projection_parked (
                name           TEXT    NOT NULL,
                pos_major      INTEGER NOT NULL,
                pos_minor      INTEGER NOT NULL,
                event_id       BLOB    NOT NULL,
                stream_id      TEXT    NOT NULL,
                version        INTEGER NOT NULL,
                event_type     TEXT    NOT NULL,
                schema_version INTEGER NOT NULL,
                codec          TEXT    NOT NULL,
                payload                NOT NULL,
                metadata       TEXT,
                recorded_at    INTEGER NOT NULL,
                error          TEXT    NOT NULL,
                parked_at      INTEGER NOT NULL,
                PRIMARY KEY (name, pos_major, pos_minor)
            );
            CREATE TABLE mink_projection_leases (
                name       TEXT    PRIMARY KEY,
                owner      TEXT    NOT NULL,
                expires_at INTEGER NOT NULL
            );
        ",
    },
];

/// The schema version a freshly opened store is at: the version of the last migration.
pub const LATEST_SCHEMA_VERSION: u32 = MIGRATIONS[MIGRATIONS.len() - 1].version;

/// Every migration this build knows, in the order they are applied.
///
/// ```
/// let all = mink_sqlite::migrations();
/// assert_eq!(all[0].version(), 1);
/// assert_eq!(all.last().map(|m| m.version()), Some(mink_sqlite::LATEST_SCHEMA_VERSION));
/// ```
pub fn migrations() -> &'static [Migration] {
    MIGRATIONS
}

const CREATE_MIGRATIONS_TABLE: &str = "
    CREATE TABLE IF NOT EXISTS mink_migrations (
        version    INTEGER PRIMARY KEY,
        name       TEXT    NOT NULL,
        applied_at INTEGER NOT NULL
    )";

/// The version recorded in the file (0 when no migration was applied).
pub(crate) fn recorded_version(conn: &Connection) -> Result<u32> {
    let exists: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'mink_migrations'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(map_err)?;
    if exists.is_none() {
        return Ok(0);
    }
    let v: Option<i64> = conn
        .query_row("SELECT MAX(version) FROM mink_migrations", [], |r| r.get(0))
        .map_err(map_err)?;
    let v = v.unwrap_or(0);
    u32::try_from(v).map_err(|_| backend_msg(format!("mink_migrations holds version {v}")))
}

/// Applies the pending migrations of `list` (each in its own `BEGIN IMMEDIATE`
/// transaction) and returns the resulting version. Refuses a file newer than `list`.
pub(crate) fn migrate(conn: &Connection, list: &[Migration]) -> Result<u32> {
    let known = list.last().map_or(0, |m| m.version);
    // A quick check before taking the write lock, so that a read-only or foreign file
    // newer than us is refused without writing anything.
    let found = recorded_version(conn)?;
    if found > known {
        return Err(too_new(found, known));
    }
    if found == known {
        return Ok(found);
    }
    conn.execute_batch(CREATE_MIGRATIONS_TABLE)
        .map_err(map_err)?;
    for m in list {
        let tx =
            rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)
                .map_err(map_err)?;
        // Re-read under the write lock: another process may have migrated meanwhile.
        let current = recorded_version(&tx)?;
        if current > known {
            return Err(too_new(current, known));
        }
        if m.version <= current {
            continue;
        }
        if m.version != current + 1 {
            return Err(backend_msg(format!(
                "cannot apply migration {} to a database at schema version {current}",
                m.version
            )));
        }
        tracing::info!(
            version = m.version,
            name = m.name,
            "applying mink-sqlite migration"
        );
        tx.execute_batch(m.sql).map_err(map_err)?;
        tx.execute(
            "INSERT INTO mink_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
            rusqlite::params![m.version, m.name, mink_es::now_micros().timestamp_micros()],
        )
        .map_err(map_err)?;
        tx.commit().map_err(map_err)?;
    }
    recorded_version(conn)
}

fn too_new(found: u32, supported: u32) -> Error {
    Error::backend(false, SchemaTooNew { found, supported })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn versions_are_contiguous_from_one() {
        for (i, m) in migrations().iter().enumerate() {
            assert_eq!(m.version() as usize, i + 1, "{}", m.name());
            assert!(!m.name().is_empty());
            assert!(!m.sql().trim().is_empty());
        }
        assert_eq!(LATEST_SCHEMA_VERSION as usize, migrations().len());
    }

    #[test]
    fn applies_pending_migrations_on_a_partly_migrated_file() {
        let conn = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&conn, &MIGRATIONS[..1]).unwrap(), 1);
        assert_eq!(recorded_version(&conn).unwrap(), 1);
        // The events table exists, the snapshots table not yet.
        conn.execute_batch("SELECT COUNT(*) FROM mink_events")
            .unwrap();
        assert!(
            conn.execute_batch("SELECT COUNT(*) FROM mink_snapshots")
                .is_err()
        );
        assert_eq!(migrate(&conn, MIGRATIONS).unwrap(), LATEST_SCHEMA_VERSION);
        conn.execute_batch("SELECT COUNT(*) FROM mink_snapshots")
            .unwrap();
        // Idempotent.
        assert_eq!(migrate(&conn, MIGRATIONS).unwrap(), LATEST_SCHEMA_VERSION);
        let rows: i64 = conn
            .query_row("SELECT COUNT(*) FROM mink_migrations", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, i64::from(LATEST_SCHEMA_VERSION));
        // An older build (knowing only migration 1) refuses the file.
        let err = migrate(&conn, &MIGRATIONS[..1]).unwrap_err();
        let Error::Backend { source, transient } = err else {
            panic!("not a backend error")
        };
        assert!(!transient);
        assert_eq!(
            source.downcast_ref::<SchemaTooNew>(),
            Some(&SchemaTooNew {
                found: LATEST_SCHEMA_VERSION,
                supported: 1
            })
        );
    }

    #[test]
    fn a_failing_migration_leaves_nothing_behind() {
        let conn = Connection::open_in_memory().unwrap();
        let bad = [
            MIGRATIONS[0],
            Migration {
                version: 2,
                name: "broken",
                sql: "CREATE TABLE half (x INTEGER); THIS IS NOT SQL;",
            },
        ];
        assert!(migrate(&conn, &bad).is_err());
        assert_eq!(recorded_version(&conn).unwrap(), 1);
        assert!(conn.execute_batch("SELECT COUNT(*) FROM half").is_err());
    }
}
