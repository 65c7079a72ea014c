//! Idempotent commands: a duplicate runs nothing and gets the original result.
//!
//! The [`Idempotency`] middleware claims the command's key in an
//! [`IdempotencyStore`] before the handler runs:
//!
//! * the first attempt reserves the key (for a reservation time-out) and runs;
//! * on success its result is stored (for a retention time) and every later duplicate
//!   gets that result back, marked as replayed, without running the handler;
//! * on failure the reservation is released, so a retry runs again;
//! * a duplicate that arrives while the first attempt is still running gets
//!   [`CommandError::InProgress`];
//! * an attempt that crashed leaves its reservation behind: a retry is refused until
//!   the reservation times out, then takes it over.
//!
//! Reservations carry a token: an attempt that outlived its reservation cannot
//! overwrite the result of the attempt that took it over.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use parking_lot::Mutex;
use uuid::Uuid;

use super::{CommandError, Dispatch, Middleware, Next, Reply};
use crate::BoxError;

/// The answer to a claim on a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The key is now reserved for this attempt; keep the token to complete or release.
    Reserved(Uuid),
    /// Another attempt holds an unexpired reservation.
    InProgress,
    /// The command already succeeded; this is its result as JSON.
    Completed(Vec<u8>),
}

/// Stores idempotency keys, their reservations and results.
///
/// Implementations decide expiry by their own clock (the database's, for SQL stores),
/// so that application servers with skewed clocks agree.
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Atomically claims `key`: reserves it for `reservation_ttl` when it is free (no
    /// record, or an expired one), else reports the holder's state.
    fn claim<'a>(
        &'a self,
        key: &'a str,
        reservation_ttl: Duration,
    ) -> BoxFuture<'a, Result<Claim, BoxError>>;

    /// Stores the result of the attempt holding `token`, kept for `ttl`. Returns false
    /// when the reservation was lost (it expired and another attempt took it over).
    fn complete<'a>(
        &'a self,
        key: &'a str,
        token: Uuid,
        output: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BoxError>>;

    /// Releases the reservation of the attempt holding `token` (it failed).
    fn release<'a>(&'a self, key: &'a str, token: Uuid) -> BoxFuture<'a, Result<(), BoxError>>;

    /// Deletes expired records; returns how many were deleted.
    fn purge_expired(&self) -> BoxFuture<'_, Result<u64, BoxError>>;
}

/// How the middleware finds a command's key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyStrategy {
    /// The command's explicit key, or else one derived from the command's content
    /// (a UUIDv5 of its JSON): two identical commands are duplicates.
    #[default]
    ExplicitOrDerived,
    /// Only explicit keys; commands without one pass through unprotected.
    ExplicitOnly,
}

/// The idempotency middleware (see the [module docs](self)).
#[derive(Clone)]
pub struct Idempotency {
    store: Arc<dyn IdempotencyStore>,
    keys: KeyStrategy,
    ttl: Duration,
    reservation_ttl: Duration,
    fail_closed: bool,
}

impl Idempotency {
    /// Keys are explicit or derived, results are kept 24 hours, reservations time out
    /// after 5 minutes, and a failing store fails the command (fail-closed).
    pub fn new(store: impl IdempotencyStore) -> Self {
        Idempotency::with_store(Arc::new(store))
    }

    /// Like [`Idempotency::new`] with a shared store.
    pub fn with_store(store: Arc<dyn IdempotencyStore>) -> Self {
        Idempotency {
            store,
            keys: KeyStrategy::default(),
            ttl: Duration::from_secs(24 * 3600),
            reservation_ttl: Duration::from_secs(300),
            fail_closed: true,
        }
    }

    /// How keys are found.
    pub fn keys(mut self, keys: KeyStrategy) -> Self {
        self.keys = keys;
        self
    }

    /// How long results are kept for replay.
    pub fn retention(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long a reservation blocks duplicates before a retry may take it over. Make
    /// it longer than the slowest handler (a `Timeout` middleware inside helps).
    pub fn reservation_timeout(mut self, ttl: Duration) -> Self {
        self.reservation_ttl = ttl;
        self
    }

    /// Runs commands unprotected (with a warning) when the store fails, instead of
    /// failing them.
    pub fn fail_open(mut self) -> Self {
        self.fail_closed = false;
        self
    }

    /// The key the middleware uses for a dispatch, if any.
    pub fn key_for(&self, dispatch: &Dispatch) -> Result<Option<String>, CommandError> {
        let name = dispatch.command().name();
        if let Some(k) = dispatch.command().idempotency_key() {
            return Ok(Some(format!("{name}:{k}")));
        }
        match self.keys {
            KeyStrategy::ExplicitOnly => Ok(None),
            KeyStrategy::ExplicitOrDerived => {
                let json = dispatch
                    .command()
                    .to_json()
                    .map_err(|e| CommandError::Output {
                        command: name,
                        detail: format!("cannot serialize the command to derive its key: {e}"),
                    })?;
                let digest = Uuid::new_v5(&Uuid::NAMESPACE_OID, &json);
                Ok(Some(format!("{name}:~{digest}")))
            }
        }
    }
}

impl Middleware for Idempotency {
    fn handle(
        self: Arc<Self>,
        dispatch: Dispatch,
        next: Next,
    ) -> BoxFuture<'static, Result<Reply, CommandError>> {
        Box::pin(async move {
            let command = dispatch.command().name();
            let Some(key) = self.key_for(&dispatch)? else {
                return next.run(dispatch).await;
            };
            let claim = match self.store.claim(&key, self.reservation_ttl).await {
                Ok(c) => c,
                Err(source) if self.fail_closed => {
                    return Err(CommandError::IdempotencyUnavailable { source });
                }
                Err(e) => {
                    tracing::warn!(command, %key, error = %e, "idempotency store failed; running the command unprotected");
                    return next.run(dispatch).await;
                }
            };
            match claim {
                Claim::InProgress => Err(CommandError::InProgress { command, key }),
                Claim::Completed(output) => {
                    metrics::counter!("mink_command_replays_total", "command" => command)
                        .increment(1);
                    Ok(dispatch.command().decode_output(&output)?.into_replayed())
                }
                Claim::Reserved(token) => {
                    let result = next.run(dispatch).await;
                    match &result {
                        Ok(reply) => {
                            let stored = match reply.to_json() {
                                Ok(json) => self.store.complete(&key, token, &json, self.ttl).await,
                                Err(e) => Err(e.into()),
                            };
                            match stored {
                                Ok(true) => {}
                                Ok(false) => {
                                    tracing::warn!(command, %key, "idempotency reservation expired while the command ran; its result was not stored")
                                }
                                Err(e) => {
                                    tracing::error!(command, %key, error = %e, "cannot store the command's result for replay")
                                }
                            }
                        }
                        Err(_) => {
                            if let Err(e) = self.store.release(&key, token).await {
                                tracing::warn!(command, %key, error = %e, "cannot release the idempotency reservation; retries wait for it to time out");
                            }
                        }
                    }
                    result
                }
            }
        })
    }
}

#[derive(Clone, Debug)]
enum Entry {
    Reserved {
        token: Uuid,
        until: DateTime<Utc>,
    },
    Done {
        output: Vec<u8>,
        until: DateTime<Utc>,
    },
}

impl Entry {
    fn until(&self) -> DateTime<Utc> {
        match self {
            Entry::Reserved { until, .. } | Entry::Done { until, .. } => *until,
        }
    }
}

/// Now plus `d`, saturating at the latest representable time (a huge time-to-live
/// means "forever", never a panic).
fn later(d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| Utc::now().checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// An in-memory [`IdempotencyStore`], for tests and single-process use.
#[derive(Clone, Default)]
pub struct MemoryIdempotencyStore {
    entries: Arc<Mutex<HashMap<String, Entry>>>,
}

impl MemoryIdempotencyStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryIdempotencyStore::default()
    }
}

impl IdempotencyStore for MemoryIdempotencyStore {
    fn claim<'a>(
        &'a self,
        key: &'a str,
        reservation_ttl: Duration,
    ) -> BoxFuture<'a, Result<Claim, BoxError>> {
        let mut entries = self.entries.lock();
        let now = Utc::now();
        let claim = match entries.get(key) {
            Some(Entry::Done { output, until }) if *until > now => Claim::Completed(output.clone()),
            Some(Entry::Reserved { until, .. }) if *until > now => Claim::InProgress,
            _ => {
                let token = Uuid::new_v4();
                entries.insert(
                    key.to_owned(),
                    Entry::Reserved {
                        token,
                        until: later(reservation_ttl),
                    },
                );
                Claim::Reserved(token)
            }
        };
        Box::pin(async move { Ok(claim) })
    }

    fn complete<'a>(
        &'a self,
        key: &'a str,
        token: Uuid,
        output: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BoxError>> {
        let mut entries = self.entries.lock();
        let ok = matches!(entries.get(key), Some(Entry::Reserved { token: t, .. }) if *t == token);
        if ok {
            entries.insert(
                key.to_owned(),
                Entry::Done {
                    output: output.to_vec(),
                    until: later(ttl),
                },
            );
        }
        Box::pin(async move { Ok(ok) })
    }

    fn release<'a>(&'a self, key: &'a str, token: Uuid) -> BoxFuture<'a, Result<(), BoxError>> {
        let mut entries = self.entries.lock();
        if matches!(entries.get(key), Some(Entry::Reserved { token: t, .. }) if *t == token) {
            entries.remove(key);
        }
        Box::pin(async move { Ok(()) })
    }

    fn purge_expired(&self) -> BoxFuture<'_, Result<u64, BoxError>> {
        let mut entries = self.entries.lock();
        let now = Utc::now();
        let before = entries.len();
        entries.retain(|_, e| e.until() > now);
        let n = (before - entries.len()) as u64;
        Box::pin(async move { Ok(n) })
    }
}
