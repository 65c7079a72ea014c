//! The start-up guard against logically restored data (failure mode (b) of the
//! transaction-id horizon).

use mink_es::Result;
use sqlx::{AssertSqlSafe, PgPool, Row};

use crate::SchemaName;
use crate::error::{PgStoreError, map};
use crate::row::Xid8;
use crate::schema::render;

/// Fails with [`PgStoreError::TransactionIdsFromTheFuture`] when a stored event carries
/// a transaction id this cluster has not reached yet.
pub(crate) async fn check_transaction_ids(pool: &PgPool, schema: &SchemaName) -> Result<()> {
    let row = sqlx::query(AssertSqlSafe(render(GUARD_SQL, schema)))
        .fetch_one(pool)
        .await
        .map_err(|e| map(e, schema))?;
    let max_tx: Option<Xid8> = row.try_get_unchecked(0).map_err(|e| map(e, schema))?;
    let xmax: Xid8 = row.try_get_unchecked(1).map_err(|e| map(e, schema))?;
    match max_tx {
        Some(max) if max >= xmax => Err(PgStoreError::TransactionIdsFromTheFuture {
            schema: schema.clone(),
            max_stored: max.0,
            current: xmax.0,
        }
        .into()),
        _ => Ok(()),
    }
}

pub(crate) const GUARD_SQL: &str = "SELECT (SELECT tx FROM {schema}.events ORDER BY tx DESC LIMIT 1) AS max_tx, \
     pg_snapshot_xmax(pg_current_snapshot()) AS xmax";
