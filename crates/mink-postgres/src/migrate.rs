//! Versioned schema migrations, embedded in the crate.
//!
//! [`migrate`] creates the schema if needed and applies every migration not yet
//! recorded in its `mink_migrations` table, each in its own transaction together with
//! its record, so a failed migration leaves nothing behind. Concurrent callers are
//! serialized by a transaction-scoped advisory lock per schema, and a migration already
//! recorded is skipped: running `migrate` again (or from several processes at once) is
//! harmless. A recorded migration whose text differs from the shipped one is refused
//! ([`PgStoreError::MigrationChanged`]).

use mink_es::Result;
use sqlx::{AssertSqlSafe, PgPool, Row};

use crate::error::{PgStoreError, map};
use crate::schema::render;
use crate::{SchemaName, guard};

/// One embedded migration.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    /// Its version; migrations apply in version order.
    pub version: i32,
    /// A short name.
    pub name: &'static str,
    /// The SQL, with `{schema}` standing for the quoted schema name.
    pub sql: &'static str,
}

impl Migration {
    /// A checksum of the SQL text (FNV-1a, 64 bits, hex), recorded with the migration.
    pub fn checksum(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.sql.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("{h:016x}")
    }
}

/// Every migration this crate ships, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../migrations/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "command stores",
        sql: include_str!("../migrations/0002_command_stores.sql"),
    },
    Migration {
        version: 3,
        name: "outbox",
        sql: include_str!("../migrations/0003_outbox.sql"),
    },
    Migration {
        version: 4,
        name: "projections",
        sql: include_str!("../migrations/0004_projections.sql"),
    },
    Migration {
        version: 5,
        name: "outbox heads",
        sql: include_str!("../migrations/0005_outbox_heads.sql"),
    },
];

/// The version of the last shipped migration.
pub const LATEST_VERSION: i32 = 5;

/// What [`migrate`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationReport {
    /// The schema migrated.
    pub schema: SchemaName,
    /// Versions applied by this call.
    pub applied: Vec<i32>,
    /// Versions that were already recorded.
    pub already_applied: Vec<i32>,
}

const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS {schema}.mink_migrations (\
     version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL, \
     applied_at timestamptz NOT NULL DEFAULT statement_timestamp())";

async fn lock(conn: &mut sqlx::PgConnection, schema: &SchemaName) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("mink.migrate.{schema}"))
        .execute(&mut *conn)
        .await
        .map_err(|e| map(e, schema))?;
    Ok(())
}

/// Creates `schema` if needed and applies the embedded migrations it lacks, then checks
/// that the stored transaction ids are sane (see
/// [`PgStoreError::TransactionIdsFromTheFuture`]).
pub async fn migrate(pool: &PgPool, schema: &SchemaName) -> Result<MigrationReport> {
    let m = |e| map(e, schema);
    let mut report = MigrationReport {
        schema: schema.clone(),
        applied: Vec::new(),
        already_applied: Vec::new(),
    };

    let mut tx = pool.begin().await.map_err(m)?;
    lock(&mut tx, schema).await?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE SCHEMA IF NOT EXISTS {}; {}",
        schema.quoted(),
        render(MIGRATIONS_TABLE, schema)
    )))
    .execute(&mut *tx)
    .await
    .map_err(m)?;
    tx.commit().await.map_err(m)?;

    let recorded_sql = render(
        "SELECT checksum FROM {schema}.mink_migrations WHERE version = $1",
        schema,
    );
    let record_sql = render(
        "INSERT INTO {schema}.mink_migrations (version, name, checksum) VALUES ($1, $2, $3)",
        schema,
    );
    for mig in MIGRATIONS {
        let mut tx = pool.begin().await.map_err(m)?;
        lock(&mut tx, schema).await?;
        let recorded: Option<String> = sqlx::query_scalar(AssertSqlSafe(recorded_sql.as_str()))
            .bind(mig.version)
            .fetch_optional(&mut *tx)
            .await
            .map_err(m)?;
        match recorded {
            Some(sum) if sum == mig.checksum() => {
                report.already_applied.push(mig.version);
                continue;
            }
            Some(_) => {
                return Err(PgStoreError::MigrationChanged {
                    schema: schema.clone(),
                    version: mig.version,
                    name: mig.name.to_owned(),
                }
                .into());
            }
            None => {}
        }
        sqlx::raw_sql(AssertSqlSafe(render(mig.sql, schema)))
            .execute(&mut *tx)
            .await
            .map_err(m)?;
        sqlx::query(AssertSqlSafe(record_sql.as_str()))
            .bind(mig.version)
            .bind(mig.name)
            .bind(mig.checksum())
            .execute(&mut *tx)
            .await
            .map_err(m)?;
        tx.commit().await.map_err(m)?;
        tracing::info!(schema = %schema, version = mig.version, name = mig.name, "applied migration");
        report.applied.push(mig.version);
    }
    guard::check_transaction_ids(pool, schema).await?;
    Ok(report)
}

/// Checks that `schema` holds every shipped migration, unchanged, and that the stored
/// transaction ids are sane. Meant for start-up in processes that do not migrate.
pub async fn verify(pool: &PgPool, schema: &SchemaName) -> Result<()> {
    let rows = sqlx::query(AssertSqlSafe(render(
        "SELECT version, checksum FROM {schema}.mink_migrations ORDER BY version",
        schema,
    )))
    .fetch_all(pool)
    .await
    .map_err(|e| map(e, schema))?;
    let mut recorded = Vec::with_capacity(rows.len());
    for r in &rows {
        let v: i32 = r.try_get(0).map_err(|e| map(e, schema))?;
        let sum: String = r.try_get(1).map_err(|e| map(e, schema))?;
        recorded.push((v, sum));
    }
    for mig in MIGRATIONS {
        match recorded.iter().find(|(v, _)| *v == mig.version) {
            None => {
                return Err(PgStoreError::SchemaNotMigrated {
                    schema: schema.clone(),
                    applied: recorded.iter().map(|(v, _)| *v).max(),
                    required: LATEST_VERSION,
                }
                .into());
            }
            Some((_, sum)) if *sum != mig.checksum() => {
                return Err(PgStoreError::MigrationChanged {
                    schema: schema.clone(),
                    version: mig.version,
                    name: mig.name.to_owned(),
                }
                .into());
            }
            Some(_) => {}
        }
    }
    guard::check_transaction_ids(pool, schema).await
}

/// Drops `schema` and everything in it. Irreversible; meant for tests and tooling.
pub async fn drop_schema(pool: &PgPool, schema: &SchemaName) -> Result<()> {
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {} CASCADE",
        schema.quoted()
    )))
    .execute(pool)
    .await
    .map_err(|e| map(e, schema))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_ordered_and_stable() {
        let mut last = 0;
        for m in MIGRATIONS {
            assert!(m.version > last);
            last = m.version;
            assert_eq!(m.checksum().len(), 16);
        }
        assert_eq!(last, LATEST_VERSION);
    }

    /// Shipped migrations are recorded by checksum in every schema they were applied
    /// to: editing one would make `migrate` and `verify` refuse those schemas. Change
    /// the schema with a new migration instead.
    #[test]
    fn shipped_migrations_never_change() {
        let sums: Vec<(i32, String)> = MIGRATIONS
            .iter()
            .map(|m| (m.version, m.checksum()))
            .collect();
        assert_eq!(
            sums,
            [
                (1, "6bb9a9f6a070e641".to_owned()),
                (2, "ba784a33fd868142".to_owned()),
                (3, "d7d52b0332125b5b".to_owned()),
                (4, "9a1570209dab24a2".to_owned()),
                (5, "d3db9b1da30cea9d".to_owned())
            ]
        );
    }
}
