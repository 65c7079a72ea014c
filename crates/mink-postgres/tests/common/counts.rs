//! A read-model projection for the projection tests: per-stream balances (read, then
//! upserted, per event) and a ledger with one row per event (inserted, so an event
//! applied twice fails the batch). Its models are compared with a clean replay.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use mink_es::projection::{ProjectionError, ReadModelProjection};
use mink_es::readmodel::{
    Field, MemoryReadModelStore, Query, ReadModel, ReadModelRepository, ReadModelStore, Schema,
    Versioned,
};
use mink_es::{
    ExpectedVersion, FeedFilter, FeedReader, NewEvent, Position, StoredEvent, StreamId,
    StreamWriter,
};
use serde::{Deserialize, Serialize};

/// The table names of one instance of the projection's models.
pub trait Names: Clone + std::fmt::Debug + PartialEq + Send + Sync + 'static {
    const BALANCES: &'static str;
    const LEDGER: &'static str;
}

/// The default tables: `rm_balances`, `rm_ledger`.
#[derive(Clone, Debug, PartialEq)]
pub struct Main;

impl Names for Main {
    const BALANCES: &'static str = "balances";
    const LEDGER: &'static str = "ledger";
}

/// Other tables, for a second projection in the same schema.
#[derive(Clone, Debug, PartialEq)]
pub struct Second;

impl Names for Second {
    const BALANCES: &'static str = "p_balances";
    const LEDGER: &'static str = "p_ledger";
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(bound = "")]
pub struct Balance<N: Names = Main> {
    pub id: String,
    pub events: i64,
    pub total: i64,
    pub last_version: i64,
    pub generation: i64,
    #[serde(skip)]
    pub _n: std::marker::PhantomData<N>,
}

impl<N: Names> ReadModel for Balance<N> {
    const NAME: &'static str = N::BALANCES;
    const FIELDS: &'static [Field] = &[
        Field::text("id"),
        Field::integer("events"),
        Field::integer("total").indexed(),
        Field::integer("last_version"),
        Field::integer("generation"),
    ];
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(bound = "")]
pub struct Ledger<N: Names = Main> {
    pub id: String,
    pub stream: String,
    pub v: i64,
    pub generation: i64,
    /// Who applied it (not compared with a replay).
    #[serde(default)]
    pub by: String,
    #[serde(skip)]
    pub _n: std::marker::PhantomData<N>,
}

impl<N: Names> ReadModel for Ledger<N> {
    const NAME: &'static str = N::LEDGER;
    const FIELDS: &'static [Field] = &[
        Field::text("id"),
        Field::text("stream").indexed(),
        Field::integer("v"),
        Field::integer("generation"),
    ];
}

pub type Rule = Arc<dyn Fn(&StoredEvent) -> Option<ProjectionError> + Send + Sync>;

/// The projection. Clones share their knobs.
#[derive(Clone)]
pub struct Counts<N: Names = Main> {
    pub name: String,
    /// Written into every row: tells a rebuilt model from the old one.
    pub generation: Arc<AtomicI64>,
    /// Milliseconds to sleep at the start of every batch.
    pub delay_ms: Arc<AtomicU64>,
    /// Fails a batch holding an event it returns an error for.
    pub rule: Arc<std::sync::Mutex<Option<Rule>>>,
    /// Events applied (in batches that may still roll back).
    pub applied: Arc<AtomicU64>,
    /// Read the batch's balances with one id lookup first.
    pub prefetch: bool,
    pub filter: FeedFilter,
    /// Written into ledger rows.
    pub by: String,
    /// Write the ledger (one row per event); false: balances only.
    pub ledger: bool,
    pub _n: std::marker::PhantomData<N>,
}

impl Counts {
    pub fn new(name: &str) -> Self {
        Counts::named(name)
    }
}

impl<N: Names> Counts<N> {
    pub fn named(name: &str) -> Self {
        Counts {
            name: name.to_owned(),
            generation: Arc::new(AtomicI64::new(1)),
            delay_ms: Arc::default(),
            rule: Arc::default(),
            applied: Arc::default(),
            prefetch: true,
            filter: FeedFilter::all(),
            by: String::new(),
            ledger: true,
            _n: std::marker::PhantomData,
        }
    }

    pub fn fail_when(
        &self,
        f: impl Fn(&StoredEvent) -> Option<ProjectionError> + Send + Sync + 'static,
    ) {
        *self.rule.lock().unwrap() = Some(Arc::new(f));
    }

    pub fn heal(&self) {
        *self.rule.lock().unwrap() = None;
    }
}

pub fn value_of(e: &StoredEvent) -> i64 {
    e.json::<serde_json::Value>()
        .ok()
        .and_then(|v| v["v"].as_i64())
        .unwrap_or(0)
}

impl<N: Names> ReadModelProjection for Counts<N> {
    fn name(&self) -> &str {
        &self.name
    }

    fn filter(&self) -> FeedFilter {
        self.filter.clone()
    }

    fn models(&self) -> mink_es::Result<Vec<Schema>> {
        Ok(vec![
            Schema::of::<Balance<N>>()?,
            Schema::of::<Ledger<N>>()?,
        ])
    }

    fn apply<'a>(
        &'a self,
        models: &'a dyn ReadModelStore,
        events: &'a [StoredEvent],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            let delay = self.delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let rule = self.rule.lock().unwrap().clone();
            if let Some(rule) = rule {
                for e in events {
                    if let Some(err) = rule(e) {
                        return Err(err);
                    }
                }
            }
            let generation = self.generation.load(Ordering::SeqCst);
            let balances = ReadModelRepository::<Balance<N>, _>::new(models);
            let ledger = ReadModelRepository::<Ledger<N>, _>::new(models);
            if self.prefetch {
                let ids: Vec<&str> = events.iter().map(|e| e.stream_id.as_str()).collect();
                balances.find(&Query::new().in_list("id", ids)).await?;
            }
            for e in events {
                let v = value_of(e);
                let stream = e.stream_id.as_str();
                if self.ledger {
                    ledger
                        .insert(&Ledger {
                            id: e.id.to_string(),
                            stream: stream.to_owned(),
                            v,
                            generation,
                            by: self.by.clone(),
                            _n: std::marker::PhantomData,
                        })
                        .await?;
                }
                let b = balances.get(stream).await?.map(|b| b.model);
                balances
                    .upsert(&Balance {
                        id: stream.to_owned(),
                        events: b.as_ref().map_or(0, |b| b.events) + 1,
                        total: b.as_ref().map_or(0, |b| b.total) + v,
                        last_version: e.version as i64,
                        generation,
                        _n: std::marker::PhantomData,
                    })
                    .await?;
            }
            self.applied
                .fetch_add(events.len() as u64, Ordering::SeqCst);
            Ok(())
        })
    }
}

/// Appends `per_stream` events to each of `streams` streams (`{prefix}-{i}`), one
/// append of `batch` events at a time; returns the number of events.
pub async fn fill<S: StreamWriter>(
    store: &S,
    prefix: &str,
    streams: usize,
    per_stream: usize,
    batch: usize,
) -> usize {
    let mut n = 0;
    for s in 0..streams {
        let stream = StreamId::new(format!("{prefix}-{s}")).unwrap();
        let mut left = per_stream;
        while left > 0 {
            let k = left.min(batch);
            let events = (0..k)
                .map(|i| {
                    NewEvent::json("Moved", &serde_json::json!({ "v": (s * 7 + i) % 11 })).unwrap()
                })
                .collect();
            store
                .append(&stream, ExpectedVersion::Any, events)
                .await
                .unwrap();
            left -= k;
            n += k;
        }
    }
    n
}

/// Every event of the feed (after the horizon settles), in feed order.
pub async fn all_events<S: FeedReader>(store: &S, filter: &FeedFilter) -> Vec<StoredEvent> {
    let mut out = Vec::new();
    let mut after = Position::START;
    loop {
        let page = store.read_feed(after, 1000, filter).await.unwrap();
        if page.events.is_empty() && page.next <= after {
            return out;
        }
        after = page.next;
        out.extend(page.events);
    }
}

/// The models of a projection, in id order.
pub type Models<N> = (Vec<Versioned<Balance<N>>>, Vec<Versioned<Ledger<N>>>);

/// The models a clean replay of `events` gives, in id order (ledger rows' `by`
/// cleared).
pub async fn replay<N: Names>(projection: &Counts<N>, events: &[StoredEvent]) -> Models<N> {
    let mem = MemoryReadModelStore::new();
    for s in projection.models().unwrap() {
        mem.ensure_table(&s).await.unwrap();
    }
    let mut p = projection.clone();
    p.delay_ms = Arc::default();
    p.rule = Arc::default();
    p.applied = Arc::default();
    for chunk in events.chunks(37) {
        p.apply(&mem, chunk).await.unwrap();
    }
    models_of(&mem).await
}

/// The default models in a store, in id order (ledger rows' `by` cleared).
pub async fn models<S: ReadModelStore>(store: &S) -> Models<Main> {
    models_of(store).await
}

/// The models in a store, in id order (ledger rows' `by` cleared).
pub async fn models_of<N: Names, S: ReadModelStore>(store: &S) -> Models<N> {
    let balances = ReadModelRepository::<Balance<N>, _>::new(store);
    let ledger = ReadModelRepository::<Ledger<N>, _>::new(store);
    balances.ensure_table().await.unwrap();
    ledger.ensure_table().await.unwrap();
    let mut l = ledger.find(&Query::new()).await.unwrap();
    for row in &mut l {
        row.model.by.clear();
    }
    (balances.find(&Query::new()).await.unwrap(), l)
}

/// Polls `f` until it holds, or panics after `secs` seconds.
pub async fn wait_for<F, Fut>(what: &str, secs: u64, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
