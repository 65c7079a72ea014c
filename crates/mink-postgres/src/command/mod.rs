//! The command bus's stores on PostgreSQL: idempotency keys and the audit log, in the
//! schema (and on the pool) of a [`PgEventStore`](crate::PgEventStore).

mod audit;
mod idempotency;

pub use audit::PgAuditStore;
pub use idempotency::PgIdempotencyStore;

use std::future::Future;
use std::pin::Pin;

use mink_es::{BoxError, Error};

use crate::error::context;

/// The future type of the `mink_es::command` store traits (`futures::future::BoxFuture`).
type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Turns a store error into the traits' [`BoxError`], saying what failed.
fn boxed(e: Error, what: impl FnOnce() -> String) -> BoxError {
    Box::new(context(e, what))
}
