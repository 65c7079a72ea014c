//! [`PgIdempotencyStore`]: idempotency keys in the `idempotency_keys` table.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use mink_es::command::idempotency::{Claim, IdempotencyStore};
use mink_es::{BoxError, Error, Result, Uuid};
use sqlx::Row;
use sqlx::postgres::PgRow;

use super::{BoxFuture, boxed};
use crate::PgEventStore;
use crate::error::{PgStoreError, clip};
use crate::schema::Stmt;
use crate::time::{deadline, ttl_micros};

/// The longest key accepted, in bytes. PostgreSQL cannot index much longer text
/// (an index entry holds at most about 2.7 kB).
pub(crate) const MAX_KEY_LEN: usize = 2048;

/// How many times [`PgIdempotencyStore`]'s claim decides before giving up (see
/// [`PgStoreError::ClaimContended`]). Each retry needs the key to have changed hands
/// again while the previous attempt ran.
const CLAIM_ATTEMPTS: u32 = 8;

/// An [`IdempotencyStore`] in the schema of a [`PgEventStore`], for the
/// [`Idempotency`](mink_es::command::idempotency::Idempotency) middleware.
///
/// Build it with [`PgEventStore::idempotency_store`] (or [`PgIdempotencyStore::new`]);
/// it uses the store's pool, and cloning it gives another handle to the same keys. Its
/// semantics are those of
/// [`MemoryIdempotencyStore`](mink_es::command::idempotency::MemoryIdempotencyStore),
/// made durable and shared by every process using the schema:
///
/// * [`claim`](IdempotencyStore::claim) is atomic: one statement decides it, an
///   `INSERT … ON CONFLICT (key) DO UPDATE … WHERE expires_at <= clock_timestamp()`
///   that creates the key's reservation, or takes over an expired record, under the
///   key's row lock. Of any number of concurrent claims on a free key, from any number
///   of processes, exactly one reserves it. When the statement writes nothing, the key
///   is held; the same statement reads the holder's state (in progress, or the stored
///   result). That read sees the statement's snapshot, which a holder that committed
///   while the statement ran is not in: then the claim runs again, with a fresh
///   snapshot that does include it. Every answer is therefore the state of the key at
///   one instant during the call (see [`PgStoreError::ClaimContended`] for the
///   give-up);
/// * [`complete`](IdempotencyStore::complete) and [`release`](IdempotencyStore::release)
///   act only while the key is still reserved under the caller's token (an expired
///   reservation nobody took over still counts), each in one statement;
/// * [`purge_expired`](IdempotencyStore::purge_expired) deletes the expired records
///   and returns how many.
///
/// **Expiry is decided by the database server's clock** (`clock_timestamp()` when a
/// claim decides, `statement_timestamp()` for a purge), never by the application's: two
/// application servers with skewed clocks agree. Expiry times are `timestamptz`
/// (microseconds; time-to-lives are rounded up to a whole microsecond); a time-to-live
/// of 2⁶² µs (about 146,000 years) or more is kept as `'infinity'`, never expiring.
///
/// Keys are compared byte for byte (`COLLATE "C"`). PostgreSQL cannot store a NUL
/// character in text, nor index very long text: a key holding a NUL, or longer than
/// 2048 bytes, cannot be claimed ([`Error::InvalidArgument`]); `complete` and
/// `release` answer for such a key as for any key without a reservation.
///
/// Errors are [`mink_es::Error`]s, boxed, so they downcast: a driver failure is an
/// [`Error::Backend`] whose message says what failed and that keeps
/// [`is_retryable`](mink_es::Error::is_retryable) (a lost connection is transient, a
/// missing table is [`PgStoreError::SchemaNotMigrated`]); a record that cannot be read
/// back is a non-transient [`Error::Backend`] naming the key, never a panic.
///
/// ```no_run
/// # async fn f() -> Result<(), mink_es::BoxError> {
/// use std::time::Duration;
/// use mink_es::command::idempotency::{Claim, IdempotencyStore};
/// use mink_postgres::PgEventStore;
///
/// let store = PgEventStore::connect("postgres://app@localhost/app").await?;
/// store.migrate().await?;
/// let keys = store.idempotency_store();
/// let Claim::Reserved(token) = keys.claim("PlaceOrder:req-1", Duration::from_secs(60)).await? else {
///     panic!("a fresh key is free");
/// };
/// assert_eq!(keys.claim("PlaceOrder:req-1", Duration::from_secs(60)).await?, Claim::InProgress);
/// assert!(keys.complete("PlaceOrder:req-1", token, br#"{"ok":true}"#, Duration::from_secs(3600)).await?);
/// assert_eq!(
///     keys.claim("PlaceOrder:req-1", Duration::from_secs(60)).await?,
///     Claim::Completed(br#"{"ok":true}"#.to_vec())
/// );
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgIdempotencyStore {
    store: PgEventStore,
    sql: Arc<Statements>,
}

impl fmt::Debug for PgIdempotencyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgIdempotencyStore")
            .field("schema", self.store.schema())
            .finish_non_exhaustive()
    }
}

impl PgEventStore {
    /// The idempotency keys kept in this store's schema, on this store's pool.
    ///
    /// See [`PgIdempotencyStore`].
    pub fn idempotency_store(&self) -> PgIdempotencyStore {
        PgIdempotencyStore::new(self)
    }
}

/// The store's statements, rendered for its schema.
#[derive(Debug)]
struct Statements {
    /// $1 key, $2 the new token, $3 the reservation's time-to-live (µs, NULL: forever).
    /// One row `(reserved, state, output, live)`, or none.
    claim: Stmt,
    /// $1 key, $2 token, $3 output, $4 time-to-live.
    complete: Stmt,
    /// $1 key, $2 token.
    release: Stmt,
    purge: Stmt,
}

impl Statements {
    fn new(store: &PgEventStore) -> Self {
        let schema = store.schema();
        // The claim: the upsert decides under the key's row lock (a conflicting row
        // is locked, and its latest version judged, even when the WHERE rejects it).
        // When it writes nothing, the second branch reads the holder in the
        // statement's snapshot, which misses a holder that committed while the
        // statement waited for its row (or shows it already expired): the caller
        // then claims again, with a fresh snapshot.
        let claim = format!(
            "WITH claimed AS (\
               INSERT INTO {{schema}}.idempotency_keys AS k (key, state, token, output, expires_at) \
               VALUES ($1, 'reserved', $2, NULL, {ttl}) \
               ON CONFLICT (key) DO UPDATE \
                 SET state = 'reserved', token = EXCLUDED.token, output = NULL, expires_at = {ttl} \
                 WHERE k.expires_at <= clock_timestamp() \
               RETURNING k.token) \
             SELECT true AS reserved, NULL::text AS state, NULL::bytea AS output, true AS live \
             FROM claimed \
             UNION ALL \
             SELECT false, state, output, expires_at > clock_timestamp() \
             FROM {{schema}}.idempotency_keys \
             WHERE key = $1 AND NOT EXISTS (SELECT 1 FROM claimed)",
            ttl = deadline(3)
        );
        let complete = format!(
            "UPDATE {{schema}}.idempotency_keys \
             SET state = 'completed', output = $3, expires_at = {ttl} \
             WHERE key = $1 AND state = 'reserved' AND token = $2",
            ttl = deadline(4)
        );
        Statements {
            claim: Stmt::new(&claim, schema),
            complete: Stmt::new(&complete, schema),
            release: Stmt::new(
                "DELETE FROM {schema}.idempotency_keys \
                 WHERE key = $1 AND state = 'reserved' AND token = $2",
                schema,
            ),
            purge: Stmt::new(
                "DELETE FROM {schema}.idempotency_keys WHERE expires_at <= statement_timestamp()",
                schema,
            ),
        }
    }
}

/// Whether PostgreSQL can hold `key` in `idempotency_keys`.
fn storable(key: &str) -> Result<()> {
    if key.contains('\0') {
        return Err(Error::InvalidArgument(
            "the key contains a NUL character, which PostgreSQL cannot store".to_owned(),
        ));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(Error::InvalidArgument(format!(
            "the key is {} bytes long; the limit is {MAX_KEY_LEN}",
            key.len()
        )));
    }
    Ok(())
}

impl PgIdempotencyStore {
    /// The idempotency keys kept in `store`'s schema, on `store`'s pool (the same as
    /// [`PgEventStore::idempotency_store`]).
    pub fn new(store: &PgEventStore) -> Self {
        PgIdempotencyStore {
            sql: Arc::new(Statements::new(store)),
            store: store.clone(),
        }
    }

    /// The event store whose schema and pool this store uses.
    pub fn store(&self) -> &PgEventStore {
        &self.store
    }

    async fn claim_key(&self, key: &str, reservation_ttl: Duration) -> Result<Claim> {
        storable(key)?;
        let ttl = ttl_micros(reservation_ttl);
        let token = Uuid::new_v4();
        for _ in 0..CLAIM_ATTEMPTS {
            let row = sqlx::query(self.sql.claim.sql())
                .bind(key)
                .bind(token)
                .bind(ttl)
                .fetch_optional(self.store.pool())
                .await
                .map_err(|e| self.store.map_err(e))?;
            // No row, or a record that had expired in the statement's snapshot: the key
            // changed hands while the statement ran. Decide again, on a fresh snapshot.
            if let Some(claim) = row
                .map(|r| read_claim(&r, key, token))
                .transpose()?
                .flatten()
            {
                return Ok(claim);
            }
        }
        Err(Error::backend(
            true,
            PgStoreError::ClaimContended {
                key: clip(key),
                attempts: CLAIM_ATTEMPTS,
            },
        ))
    }

    async fn complete_key(
        &self,
        key: &str,
        token: Uuid,
        output: &[u8],
        ttl: Duration,
    ) -> Result<bool> {
        if storable(key).is_err() {
            // Never claimed, so never reserved.
            return Ok(false);
        }
        let done = sqlx::query(self.sql.complete.sql())
            .bind(key)
            .bind(token)
            .bind(output)
            .bind(ttl_micros(ttl))
            .execute(self.store.pool())
            .await
            .map_err(|e| self.store.map_err(e))?;
        Ok(done.rows_affected() > 0)
    }

    async fn release_key(&self, key: &str, token: Uuid) -> Result<()> {
        if storable(key).is_err() {
            return Ok(());
        }
        sqlx::query(self.sql.release.sql())
            .bind(key)
            .bind(token)
            .execute(self.store.pool())
            .await
            .map_err(|e| self.store.map_err(e))?;
        Ok(())
    }

    async fn purge(&self) -> Result<u64> {
        let done = sqlx::query(self.sql.purge.sql())
            .execute(self.store.pool())
            .await
            .map_err(|e| self.store.map_err(e))?;
        Ok(done.rows_affected())
    }
}

/// Reads the claim statement's row: the answer, or `None` when the statement saw the
/// record expired (it changed hands after the statement's snapshot). Refuses anything
/// this store did not write.
fn read_claim(row: &PgRow, key: &str, token: Uuid) -> Result<Option<Claim>> {
    let bad = |what: String| -> Error {
        PgStoreError::Corrupt {
            what: "idempotency_keys",
            detail: format!("the record of key {:?} is corrupt: {what}", clip(key)),
        }
        .into()
    };
    let reserved: bool = row.try_get(0).map_err(|e| bad(format!("{e}")))?;
    if reserved {
        return Ok(Some(Claim::Reserved(token)));
    }
    let live: Option<bool> = row
        .try_get(3)
        .map_err(|e| bad(format!("expires_at: {e}")))?;
    match live {
        None => return Err(bad("expires_at is missing".to_owned())),
        Some(false) => return Ok(None),
        Some(true) => {}
    }
    let state: Option<String> = row.try_get(1).map_err(|e| bad(format!("state: {e}")))?;
    match state.as_deref() {
        Some("reserved") => Ok(Some(Claim::InProgress)),
        Some("completed") => {
            let output: Option<Vec<u8>> =
                row.try_get(2).map_err(|e| bad(format!("output: {e}")))?;
            output
                .map(|o| Some(Claim::Completed(o)))
                .ok_or_else(|| bad("a completed record has no output".to_owned()))
        }
        Some(other) => Err(bad(format!("unknown state {:?}", clip(other)))),
        None => Err(bad("state is missing".to_owned())),
    }
}

impl IdempotencyStore for PgIdempotencyStore {
    fn claim<'a>(
        &'a self,
        key: &'a str,
        reservation_ttl: Duration,
    ) -> BoxFuture<'a, std::result::Result<Claim, BoxError>> {
        Box::pin(async move {
            self.claim_key(key, reservation_ttl).await.map_err(|e| {
                boxed(e, || {
                    format!("cannot claim idempotency key {:?}", clip(key))
                })
            })
        })
    }

    fn complete<'a>(
        &'a self,
        key: &'a str,
        token: Uuid,
        output: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, std::result::Result<bool, BoxError>> {
        Box::pin(async move {
            self.complete_key(key, token, output, ttl)
                .await
                .map_err(|e| {
                    boxed(e, || {
                        format!(
                            "cannot store the result for idempotency key {:?}",
                            clip(key)
                        )
                    })
                })
        })
    }

    fn release<'a>(
        &'a self,
        key: &'a str,
        token: Uuid,
    ) -> BoxFuture<'a, std::result::Result<(), BoxError>> {
        Box::pin(async move {
            self.release_key(key, token).await.map_err(|e| {
                boxed(e, || {
                    format!("cannot release idempotency key {:?}", clip(key))
                })
            })
        })
    }

    fn purge_expired(&self) -> BoxFuture<'_, std::result::Result<u64, BoxError>> {
        Box::pin(async move {
            self.purge()
                .await
                .map_err(|e| boxed(e, || "cannot purge expired idempotency keys".to_owned()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_postgres_cannot_hold_are_refused() {
        assert!(storable("Cmd:ok").is_ok());
        assert!(storable(&"k".repeat(MAX_KEY_LEN)).is_ok());
        assert!(matches!(
            storable(&"k".repeat(MAX_KEY_LEN + 1)),
            Err(Error::InvalidArgument(m)) if m.contains("2049 bytes")
        ));
        assert!(matches!(
            storable("a\0b"),
            Err(Error::InvalidArgument(m)) if m.contains("NUL")
        ));
    }
}
