//! [`SqliteIdempotencyStore`]: idempotency keys in the `mink_idempotency` table.

use std::fmt;
use std::time::Duration;

use mink_es::command::idempotency::{Claim, IdempotencyStore};
use mink_es::{BoxError, Result, Uuid};
use rusqlite::params;
use rusqlite::types::ValueRef;

use super::{BoxFuture, boxed, deadline, now_micros};
use crate::SqliteStore;
use crate::error::{backend_msg, map_err};
use crate::store::WriteTx;

/// An [`IdempotencyStore`] in the SQLite file of a [`SqliteStore`], for the
/// [`Idempotency`](mink_es::command::idempotency::Idempotency) middleware.
///
/// Build it with [`SqliteStore::idempotency_store`] (or [`SqliteIdempotencyStore::new`]);
/// it shares the store's connections, and cloning it gives another handle to the same
/// keys. Its semantics are those of
/// [`MemoryIdempotencyStore`](mink_es::command::idempotency::MemoryIdempotencyStore),
/// made durable and shared by every process that opens the file:
///
/// * [`claim`](IdempotencyStore::claim) is atomic across connections and processes:
///   it runs in one `BEGIN IMMEDIATE` transaction (which holds the file's write lock),
///   reads the key's record and either reserves the key (when it has no record or an
///   expired one) or reports [`Claim::InProgress`] / [`Claim::Completed`];
/// * [`complete`](IdempotencyStore::complete) and [`release`](IdempotencyStore::release)
///   act only while the key is still reserved under the caller's token (an expired
///   reservation nobody took over still counts);
/// * [`purge_expired`](IdempotencyStore::purge_expired) deletes the expired records
///   and returns how many.
///
/// Expiry is decided by the host's wall clock, read once per operation after the write
/// lock is taken; every process sharing the file runs on that host. Expiry times are
/// kept in unix microseconds.
///
/// Errors are [`mink_es::Error`]s, boxed: a driver failure is an [`Error::Backend`]
/// whose message says what failed (transient when the database was busy, see
/// [`mink_es::Error::is_retryable`]); a record that cannot be read back is a
/// non-transient [`Error::Backend`] naming the key, never a panic.
///
/// [`Error::Backend`]: mink_es::Error::Backend
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::time::Duration;
/// use mink_es::command::idempotency::{Claim, IdempotencyStore};
/// use mink_sqlite::SqliteStore;
///
/// let dir = tempfile::tempdir().unwrap();
/// let store = SqliteStore::open(dir.path().join("app.db"))?;
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
/// # Ok::<(), mink_es::BoxError>(())
/// # });
/// ```
#[derive(Clone)]
pub struct SqliteIdempotencyStore {
    store: SqliteStore,
}

impl fmt::Debug for SqliteIdempotencyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteIdempotencyStore")
            .field("path", &self.store.path())
            .finish()
    }
}

impl SqliteStore {
    /// The idempotency keys kept in this store's file, on this store's connections.
    ///
    /// See [`SqliteIdempotencyStore`].
    pub fn idempotency_store(&self) -> SqliteIdempotencyStore {
        SqliteIdempotencyStore::new(self)
    }
}

/// A record, as far as [`SqliteIdempotencyStore::claim`] needs it.
enum Held {
    Reserved,
    Completed(Vec<u8>),
}

impl SqliteIdempotencyStore {
    /// The idempotency keys kept in `store`'s file, on `store`'s connections (the same
    /// as [`SqliteStore::idempotency_store`]).
    pub fn new(store: &SqliteStore) -> Self {
        SqliteIdempotencyStore {
            store: store.clone(),
        }
    }

    /// The event store whose file and connections this store uses.
    pub fn store(&self) -> &SqliteStore {
        &self.store
    }

    fn claim_sync(&self, key: &str, reservation_ttl: Duration) -> Result<Claim> {
        let conn = self.store.writer();
        // The write lock first, then the clock: the decision is made on the latest
        // committed record and the time at which no one else can change it.
        let tx = WriteTx::begin(&conn)?;
        let now = now_micros();
        let mut stmt = conn
            .prepare_cached("SELECT state, output, expires_at FROM mink_idempotency WHERE key = ?1")
            .map_err(map_err)?;
        let mut rows = stmt.query([key]).map_err(map_err)?;
        if let Some(row) = rows.next().map_err(map_err)? {
            let (held, expires_at) = read_record(row)?;
            if expires_at > now {
                // Dropping `tx` rolls back a transaction that changed nothing.
                return Ok(match held {
                    Held::Reserved => Claim::InProgress,
                    Held::Completed(output) => Claim::Completed(output),
                });
            }
        }
        drop(rows);
        drop(stmt);
        let token = Uuid::new_v4();
        conn.prepare_cached(
            "INSERT INTO mink_idempotency (key, state, token, output, expires_at) \
             VALUES (?1, 'reserved', ?2, NULL, ?3) \
             ON CONFLICT (key) DO UPDATE SET \
               state = 'reserved', token = excluded.token, output = NULL, \
               expires_at = excluded.expires_at",
        )
        .and_then(|mut s| {
            s.execute(params![
                key,
                token.as_bytes(),
                deadline(now, reservation_ttl)
            ])
        })
        .map_err(map_err)?;
        tx.commit()?;
        Ok(Claim::Reserved(token))
    }

    fn complete_sync(&self, key: &str, token: Uuid, output: &[u8], ttl: Duration) -> Result<bool> {
        let conn = self.store.writer();
        let now = now_micros();
        let changed = conn
            .prepare_cached(
                "UPDATE mink_idempotency SET state = 'completed', output = ?3, expires_at = ?4 \
                 WHERE key = ?1 AND state = 'reserved' AND token = ?2",
            )
            .and_then(|mut s| s.execute(params![key, token.as_bytes(), output, deadline(now, ttl)]))
            .map_err(map_err)?;
        Ok(changed > 0)
    }

    fn release_sync(&self, key: &str, token: Uuid) -> Result<()> {
        let conn = self.store.writer();
        conn.prepare_cached(
            "DELETE FROM mink_idempotency WHERE key = ?1 AND state = 'reserved' AND token = ?2",
        )
        .and_then(|mut s| s.execute(params![key, token.as_bytes()]))
        .map_err(map_err)?;
        Ok(())
    }

    fn purge_expired_sync(&self) -> Result<u64> {
        let conn = self.store.writer();
        let now = now_micros();
        let deleted = conn
            .prepare_cached("DELETE FROM mink_idempotency WHERE expires_at <= ?1")
            .and_then(|mut s| s.execute([now]))
            .map_err(map_err)?;
        Ok(deleted as u64)
    }
}

/// Reads `state, output, expires_at`, refusing anything this store did not write.
fn read_record(row: &rusqlite::Row<'_>) -> Result<(Held, i64)> {
    let bad = |what: &str| backend_msg(format!("the idempotency record is corrupt: {what}"));
    let expires_at = match row.get_ref(2).map_err(map_err)? {
        ValueRef::Integer(t) => t,
        _ => return Err(bad("expires_at is not an integer")),
    };
    let held = match row.get_ref(0).map_err(map_err)? {
        ValueRef::Text(b"reserved") => Held::Reserved,
        ValueRef::Text(b"completed") => match row.get_ref(1).map_err(map_err)? {
            ValueRef::Blob(b) | ValueRef::Text(b) => Held::Completed(b.to_vec()),
            _ => return Err(bad("a completed record has no output")),
        },
        ValueRef::Text(other) => {
            return Err(bad(&format!(
                "unknown state {:?}",
                String::from_utf8_lossy(other)
            )));
        }
        _ => return Err(bad("state is not text")),
    };
    Ok((held, expires_at))
}

impl IdempotencyStore for SqliteIdempotencyStore {
    fn claim<'a>(
        &'a self,
        key: &'a str,
        reservation_ttl: Duration,
    ) -> BoxFuture<'a, std::result::Result<Claim, BoxError>> {
        Box::pin(async move {
            self.claim_sync(key, reservation_ttl)
                .map_err(|e| boxed(e, || format!("cannot claim idempotency key {key:?}")))
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
            self.complete_sync(key, token, output, ttl).map_err(|e| {
                boxed(e, || {
                    format!("cannot store the result for idempotency key {key:?}")
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
            self.release_sync(key, token)
                .map_err(|e| boxed(e, || format!("cannot release idempotency key {key:?}")))
        })
    }

    fn purge_expired(&self) -> BoxFuture<'_, std::result::Result<u64, BoxError>> {
        Box::pin(async move {
            self.purge_expired_sync()
                .map_err(|e| boxed(e, || "cannot purge expired idempotency keys".to_owned()))
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn claims_leave_no_transaction_open_whatever_they_answer() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("claims.db")).unwrap();
        let keys = store.idempotency_store();
        let long = Duration::from_secs(60);
        let Claim::Reserved(t) = keys.claim_sync("k", long).unwrap() else {
            panic!("free key")
        };
        assert!(store.writer().is_autocommit());
        assert_eq!(keys.claim_sync("k", long).unwrap(), Claim::InProgress);
        assert!(store.writer().is_autocommit());
        assert!(keys.complete_sync("k", t, b"1", long).unwrap());
        assert_eq!(
            keys.claim_sync("k", long).unwrap(),
            Claim::Completed(b"1".to_vec())
        );
        assert!(store.writer().is_autocommit());
        store
            .writer()
            .execute_batch("UPDATE mink_idempotency SET expires_at = 'soon'")
            .unwrap();
        assert!(keys.claim_sync("k", long).is_err());
        assert!(store.writer().is_autocommit(), "rolled back after an error");
    }
}
