//! Audit: an append-only record of every command — who, what, when, outcome, duration.
//!
//! The [`Audit`] middleware appends one [`AuditRecord`] per dispatch to an
//! [`AuditStore`]. Fail-open (the default), a failing store is logged and the command
//! goes on. Fail-closed, a `Started` record is written *before* the handler runs: if it
//! cannot be written the command is refused with [`CommandError::AuditUnavailable`]
//! and nothing runs — no audit record, no command.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{CommandError, Dispatch, Middleware, Next, Reply};
use crate::BoxError;

/// How a command ended (or that it started, for fail-closed audits).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum AuditOutcome {
    /// Written before the handler runs (fail-closed mode).
    Started,
    /// The command succeeded.
    Succeeded,
    /// The command failed.
    Failed {
        /// [`CommandError::kind`].
        kind: String,
        /// The error message.
        message: String,
    },
}

impl AuditOutcome {
    /// A short label: `started`, `succeeded` or `failed`.
    pub fn label(&self) -> &'static str {
        match self {
            AuditOutcome::Started => "started",
            AuditOutcome::Succeeded => "succeeded",
            AuditOutcome::Failed { .. } => "failed",
        }
    }
}

/// One audit entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// The entry's id.
    pub id: Uuid,
    /// The dispatch's command id (shared by a `Started` and its final entry).
    pub command_id: Uuid,
    /// The command type.
    pub command: String,
    /// The targeted aggregate, if the command names one.
    pub aggregate_id: Option<String>,
    /// Who sent it.
    pub user_id: Option<String>,
    /// For which tenant.
    pub tenant_id: Option<String>,
    /// The correlation id.
    pub correlation_id: Option<String>,
    /// How it ended.
    pub outcome: AuditOutcome,
    /// When the dispatch reached the audit middleware.
    pub started_at: DateTime<Utc>,
    /// How long the rest of the chain took, in microseconds (0 for `Started`).
    pub duration_us: u64,
}

/// Which audit entries to return. Bounds are inclusive `from`, exclusive `to`, on
/// `started_at`; entries come in `started_at` order, then by id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only this user's commands.
    pub user_id: Option<String>,
    /// Only this command type.
    pub command: Option<String>,
    /// From this time (inclusive).
    pub from: Option<DateTime<Utc>>,
    /// Until this time (exclusive).
    pub to: Option<DateTime<Utc>>,
    /// At most this many entries (default 100).
    pub limit: usize,
    /// Skip this many first.
    pub offset: usize,
    /// Newest first.
    pub newest_first: bool,
}

impl Default for AuditQuery {
    fn default() -> Self {
        AuditQuery {
            user_id: None,
            command: None,
            from: None,
            to: None,
            limit: 100,
            offset: 0,
            newest_first: false,
        }
    }
}

impl AuditQuery {
    /// Whether `r` passes the filters (ignores limit, offset and order).
    pub fn matches(&self, r: &AuditRecord) -> bool {
        self.user_id
            .as_ref()
            .is_none_or(|u| r.user_id.as_ref() == Some(u))
            && self.command.as_ref().is_none_or(|c| &r.command == c)
            && self.from.is_none_or(|f| r.started_at >= f)
            && self.to.is_none_or(|t| r.started_at < t)
    }
}

/// An append-only store of audit entries.
pub trait AuditStore: Send + Sync + 'static {
    /// Appends one entry.
    fn append<'a>(&'a self, record: &'a AuditRecord) -> BoxFuture<'a, Result<(), BoxError>>;

    /// Returns the entries that match.
    fn query<'a>(
        &'a self,
        query: &'a AuditQuery,
    ) -> BoxFuture<'a, Result<Vec<AuditRecord>, BoxError>>;
}

/// The audit middleware (see the [module docs](self)).
#[derive(Clone)]
pub struct Audit {
    store: Arc<dyn AuditStore>,
    fail_closed: bool,
}

impl Audit {
    /// A fail-open audit into `store`.
    pub fn new(store: impl AuditStore) -> Self {
        Audit::with_store(Arc::new(store))
    }

    /// Like [`Audit::new`] with a shared store.
    pub fn with_store(store: Arc<dyn AuditStore>) -> Self {
        Audit {
            store,
            fail_closed: false,
        }
    }

    /// No audit record, no command: a `Started` entry is written first, and a failure
    /// to write it refuses the command.
    pub fn fail_closed(mut self) -> Self {
        self.fail_closed = true;
        self
    }
}

fn record(
    dispatch: &Dispatch,
    id: crate::EventId,
    started_at: DateTime<Utc>,
    outcome: AuditOutcome,
    duration_us: u64,
) -> AuditRecord {
    let md = dispatch.context().metadata();
    AuditRecord {
        id: *id.as_uuid(),
        command_id: dispatch.context().command_id(),
        command: dispatch.command().name().to_owned(),
        aggregate_id: dispatch.command().aggregate_id(),
        user_id: md.user_id().map(str::to_owned),
        tenant_id: md.tenant_id().map(str::to_owned),
        correlation_id: md.correlation_id().map(str::to_owned),
        outcome,
        started_at,
        duration_us,
    }
}

impl Middleware for Audit {
    fn handle(
        self: Arc<Self>,
        dispatch: Dispatch,
        next: Next,
    ) -> BoxFuture<'static, Result<Reply, CommandError>> {
        Box::pin(async move {
            let started_at = crate::now_micros();
            // Both ids come from this thread, in this order: the entries of one command
            // sort `Started` first even though they share `started_at`.
            let started_id = crate::EventId::new();
            let final_id = crate::EventId::new();
            let audited = dispatch.clone();
            if self.fail_closed {
                let started = record(&audited, started_id, started_at, AuditOutcome::Started, 0);
                if let Err(source) = self.store.append(&started).await {
                    return Err(CommandError::AuditUnavailable { source });
                }
            }
            let clock = Instant::now();
            let result = next.run(dispatch).await;
            let duration_us = u64::try_from(clock.elapsed().as_micros()).unwrap_or(u64::MAX);
            let outcome = match &result {
                Ok(_) => AuditOutcome::Succeeded,
                Err(e) => AuditOutcome::Failed {
                    kind: e.kind().to_owned(),
                    message: e.to_string(),
                },
            };
            let entry = record(&audited, final_id, started_at, outcome, duration_us);
            if let Err(e) = self.store.append(&entry).await {
                tracing::error!(command = entry.command, command_id = %entry.command_id, error = %e, "cannot write the audit record of a finished command");
            }
            result
        })
    }
}

/// An in-memory [`AuditStore`].
#[derive(Clone, Default)]
pub struct MemoryAuditStore {
    records: Arc<Mutex<Vec<AuditRecord>>>,
}

impl MemoryAuditStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryAuditStore::default()
    }

    /// Every entry, in append order.
    pub fn all(&self) -> Vec<AuditRecord> {
        self.records.lock().clone()
    }
}

impl AuditStore for MemoryAuditStore {
    fn append<'a>(&'a self, record: &'a AuditRecord) -> BoxFuture<'a, Result<(), BoxError>> {
        self.records.lock().push(record.clone());
        Box::pin(async { Ok(()) })
    }

    fn query<'a>(
        &'a self,
        query: &'a AuditQuery,
    ) -> BoxFuture<'a, Result<Vec<AuditRecord>, BoxError>> {
        let mut out: Vec<AuditRecord> = self
            .records
            .lock()
            .iter()
            .filter(|r| query.matches(r))
            .cloned()
            .collect();
        out.sort_by_key(|r| (r.started_at, r.id));
        if query.newest_first {
            out.reverse();
        }
        let out = out
            .into_iter()
            .skip(query.offset)
            .take(query.limit)
            .collect();
        Box::pin(async move { Ok(out) })
    }
}
