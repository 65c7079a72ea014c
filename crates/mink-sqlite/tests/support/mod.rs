//! A projection over three read models and the helpers the projection tests share.
//!
//! `Ledger` writes three rows per event (an account per stream, a log entry per event,
//! a count per event type), so an event applied twice or lost shows: the log entry's
//! insert fails on a second apply, and the counts differ from a clean replay.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use mink_es::projection::{ProjectionError, ProjectionTarget, ReadModelProjection};
use mink_es::readmodel::{Field, Plan, ReadModel, ReadModelRepository, ReadModelStore, Schema};
use mink_es::{
    CheckpointStore, ExpectedVersion, FeedFilter, FeedReader, NewEvent, Position, StoredEvent,
    StreamId, StreamWriter,
};
use mink_sqlite::{SqliteProjectionTarget, SqliteStore};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Account {
    pub id: String,
    pub events: i64,
    pub total: i64,
    pub last_type: String,
    pub label: String,
}

impl ReadModel for Account {
    const NAME: &'static str = "ledger_accounts";
    const FIELDS: &'static [Field] = &[
        Field::text("id"),
        Field::integer("events"),
        Field::integer("total").indexed(),
        Field::text("last_type"),
        Field::text("label"),
    ];
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct LogEntry {
    pub id: i64,
    pub stream: String,
    pub amount: i64,
    pub label: String,
}

impl ReadModel for LogEntry {
    const NAME: &'static str = "ledger_log";
    const FIELDS: &'static [Field] = &[
        Field::integer("id"),
        Field::text("stream").indexed(),
        Field::integer("amount"),
        Field::text("label"),
    ];
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TypeCount {
    pub id: String,
    pub count: i64,
}

impl ReadModel for TypeCount {
    const NAME: &'static str = "ledger_types";
    const FIELDS: &'static [Field] = &[Field::text("id"), Field::integer("count")];
}

/// An event's payload.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Body {
    pub amount: i64,
    #[serde(default)]
    pub poison: bool,
}

/// What runs half way through a batch.
pub type Hook = Box<dyn Fn(&[StoredEvent]) + Send + Sync>;

/// The projection, with knobs the tests turn while it runs.
#[derive(Clone)]
pub struct Ledger {
    pub name: String,
    pub filter: FeedFilter,
    /// Written into every row (tells a rebuilt model from the old one).
    pub label: Arc<Mutex<String>>,
    /// Sleep this long per batch, inside the transaction (a slow projection).
    pub delay_ms: Arc<AtomicU64>,
    /// Fail (poison) on events whose payload says `poison`.
    pub fail_poison: Arc<AtomicBool>,
    /// Return a future that never completes.
    pub pending: Arc<AtomicBool>,
    /// Batches applied (called, successful or not).
    pub calls: Arc<AtomicU64>,
    /// Called after half of each batch's events were written, inside the transaction.
    pub midway: Arc<Mutex<Option<Hook>>>,
}

impl Ledger {
    pub fn new(name: &str) -> Self {
        Ledger {
            name: name.to_owned(),
            filter: FeedFilter::all(),
            label: Arc::new(Mutex::new("v1".to_owned())),
            delay_ms: Arc::default(),
            fail_poison: Arc::default(),
            pending: Arc::default(),
            calls: Arc::default(),
            midway: Arc::default(),
        }
    }

    pub fn with_filter(mut self, filter: FeedFilter) -> Self {
        self.filter = filter;
        self
    }

    pub fn set_label(&self, label: &str) {
        *self.label.lock() = label.to_owned();
    }

    pub fn schemas() -> Vec<Schema> {
        vec![
            Schema::of::<Account>().unwrap(),
            Schema::of::<LogEntry>().unwrap(),
            Schema::of::<TypeCount>().unwrap(),
        ]
    }
}

impl ReadModelProjection for Ledger {
    fn name(&self) -> &str {
        &self.name
    }

    fn filter(&self) -> FeedFilter {
        self.filter.clone()
    }

    fn models(&self) -> mink_es::Result<Vec<Schema>> {
        Ok(vec![
            Schema::of::<Account>()?,
            Schema::of::<LogEntry>()?,
            Schema::of::<TypeCount>()?,
        ])
    }

    fn apply<'a>(
        &'a self,
        models: &'a dyn ReadModelStore,
        events: &'a [StoredEvent],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let delay = self.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        let label = self.label.lock().clone();
        let fail = self.fail_poison.load(Ordering::SeqCst);
        let pending = self.pending.load(Ordering::SeqCst);
        Box::pin(async move {
            if pending {
                futures::future::pending::<()>().await;
            }
            let accounts = ReadModelRepository::<Account, _>::new(models);
            let log = ReadModelRepository::<LogEntry, _>::new(models);
            let types = ReadModelRepository::<TypeCount, _>::new(models);
            for (i, e) in events.iter().enumerate() {
                if i == events.len() / 2
                    && let Some(f) = self.midway.lock().as_ref()
                {
                    f(events);
                }
                let body: Body = e.json().map_err(ProjectionError::poison)?;
                if body.poison && fail {
                    return Err(ProjectionError::poison(format!(
                        "poison event at position {}",
                        e.position
                    )));
                }
                let stream = e.stream_id.as_str().to_owned();
                log.insert(&LogEntry {
                    id: e.position.minor() as i64,
                    stream: stream.clone(),
                    amount: body.amount,
                    label: label.clone(),
                })
                .await?;
                let (n, total) = accounts
                    .get(stream.as_str())
                    .await?
                    .map_or((0, 0), |a| (a.model.events, a.model.total));
                accounts
                    .upsert(&Account {
                        id: stream,
                        events: n + 1,
                        total: total + body.amount,
                        last_type: e.event_type.as_str().to_owned(),
                        label: label.clone(),
                    })
                    .await?;
                let count = types
                    .get(e.event_type.as_str())
                    .await?
                    .map_or(0, |t| t.model.count);
                types
                    .upsert(&TypeCount {
                        id: e.event_type.as_str().to_owned(),
                        count: count + 1,
                    })
                    .await?;
            }
            Ok(())
        })
    }
}

pub fn temp_store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("p.db")).unwrap();
    (dir, store)
}

pub fn sid(s: &str) -> StreamId {
    StreamId::new(s).unwrap()
}

pub fn ev(event_type: &str, amount: i64) -> NewEvent {
    NewEvent::json(
        event_type.to_owned(),
        &Body {
            amount,
            poison: false,
        },
    )
    .unwrap()
}

pub fn poison(amount: i64) -> NewEvent {
    NewEvent::json(
        "Deposited",
        &Body {
            amount,
            poison: true,
        },
    )
    .unwrap()
}

/// Appends `per_stream` events to each of `streams` streams, round robin; returns the
/// number appended.
pub async fn fill(store: &SqliteStore, streams: usize, per_stream: usize, seed: usize) -> usize {
    for v in 0..per_stream {
        for s in 0..streams {
            let t = if (v + s + seed).is_multiple_of(3) {
                "Withdrawn"
            } else {
                "Deposited"
            };
            store
                .append(
                    &sid(&format!("Acc-{s}")),
                    ExpectedVersion::Any,
                    vec![ev(t, (v * 7 + s + seed) as i64 % 50)],
                )
                .await
                .unwrap();
        }
    }
    streams * per_stream
}

/// Waits until `f` holds (20 s at most).
pub async fn until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether the projection's checkpoint reached the head of the feed.
pub async fn caught_up(store: &SqliteStore, name: &str) -> bool {
    let head = store.head_position().await.unwrap();
    store.load_checkpoint(name).await.ok().flatten() == Some(head)
}

/// Every row of every model, as (doc, version), by table.
pub type Dump = BTreeMap<String, Vec<(String, u64)>>;

pub async fn dump(store: &SqliteStore) -> Dump {
    let rm = store.read_models();
    let mut out = BTreeMap::new();
    for schema in Ledger::schemas() {
        rm.ensure_table(&schema).await.unwrap();
        let rows = rm
            .find(&schema, &Plan::everything(&schema))
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.doc, r.version))
            .collect();
        out.insert(schema.table().to_owned(), rows);
    }
    out
}

/// The read model a clean replay of `source`'s feed makes, in a fresh file.
pub async fn clean_replay(source: &SqliteStore, projection: Ledger) -> Dump {
    let (_dir, fresh) = temp_store();
    let filter = projection.filter.clone();
    projection.delay_ms.store(0, Ordering::SeqCst);
    let target = SqliteProjectionTarget::new(&fresh, projection);
    let mut cp = target
        .checkpoint()
        .await
        .unwrap()
        .unwrap_or(Position::START);
    loop {
        let page = source.read_feed(cp, 500, &filter).await.unwrap();
        if page.events.is_empty() && page.next <= cp {
            break;
        }
        target.apply_batch(&page.events, page.next).await.unwrap();
        cp = page.next;
    }
    dump(&fresh).await
}

/// The number of log rows (one per applied event).
pub async fn log_rows(store: &SqliteStore) -> u64 {
    let schema = Schema::of::<LogEntry>().unwrap();
    let rm = store.read_models();
    rm.ensure_table(&schema).await.unwrap();
    rm.count(&schema, &Plan::everything(&schema)).await.unwrap()
}

/// The tables of the file whose name ends with `__next` (shadow tables).
pub fn shadow_tables(store: &SqliteStore) -> Vec<String> {
    let raw = rusqlite::Connection::open(store.path()).unwrap();
    raw.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE '%\\_\\_next' ESCAPE '\\' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}
