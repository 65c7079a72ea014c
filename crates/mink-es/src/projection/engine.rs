//! The engine that runs async projections: one supervised worker per projection (or
//! partition).

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::worker::{self, WorkerConfig};
use super::{
    PoisonPolicy, ProjectionControl, ProjectionStatus, ProjectionTarget, RunState, backoff,
    partition_name,
};
use crate::store::FeedReader;
use crate::{Error, Result};

/// How an async projection runs.
#[derive(Clone, Debug)]
pub struct AsyncOptions {
    /// Events read and applied per batch. Default 256.
    pub batch_size: usize,
    /// Longest wait for new events when caught up. Default 250 ms.
    pub poll_interval: Duration,
    /// Attempts at a poison event before it is parked (or the projection stops).
    /// Transient errors do not count. Default 3.
    pub retry_budget: u32,
    /// First retry delay. Default 50 ms.
    pub base_backoff: Duration,
    /// Longest retry delay. Default 30 s.
    pub max_backoff: Duration,
    /// What to do with a poison event. Default [`PoisonPolicy::Park`].
    pub poison_policy: PoisonPolicy,
    /// How long a process holds a projection's lease without renewing it; another
    /// process takes over within about this time after the holder dies. Default 10 s.
    pub lease_ttl: Duration,
}

impl Default for AsyncOptions {
    fn default() -> Self {
        AsyncOptions {
            batch_size: 256,
            poll_interval: Duration::from_millis(250),
            retry_budget: 3,
            base_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(30),
            poison_policy: PoisonPolicy::Park,
            lease_ttl: Duration::from_secs(10),
        }
    }
}

struct Registered {
    name: String,
    target: Arc<dyn ProjectionTarget>,
    partition: (u32, u32),
    options: AsyncOptions,
}

/// Runs async projections against a store.
///
/// ```
/// # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use mink_es::projection::{Projection, ProjectionError, ProjectionEngine, AsyncOptions};
/// use mink_es::projection::memory::{Checkpointed, MemoryControl};
/// use mink_es::{ExpectedVersion, MemoryStore, NewEvent, StoredEvent, StreamId, StreamWriter};
/// use futures::future::BoxFuture;
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// #[derive(Clone, Default)]
/// struct Counter(Arc<AtomicU64>);
/// impl Projection for Counter {
///     fn name(&self) -> &str { "counter" }
///     fn apply<'a>(&'a self, events: &'a [StoredEvent]) -> BoxFuture<'a, Result<(), ProjectionError>> {
///         self.0.fetch_add(events.len() as u64, Ordering::SeqCst);
///         Box::pin(async { Ok(()) })
///     }
/// }
///
/// let store = MemoryStore::new();
/// let counter = Counter::default();
/// let mut engine = ProjectionEngine::new(store.clone(), Arc::new(MemoryControl::new()));
/// engine.add(Checkpointed::new(counter.clone(), store.clone()), AsyncOptions::default())?;
/// let cancel = tokio_util::sync::CancellationToken::new();
/// let handle = engine.start(cancel.clone());
/// store.append(&StreamId::new("A-1")?, ExpectedVersion::Any, vec![NewEvent::new("E", "{}")]).await?;
/// while counter.0.load(Ordering::SeqCst) < 1 { tokio::time::sleep(std::time::Duration::from_millis(5)).await; }
/// handle.shutdown().await;
/// # Ok::<(), mink_es::Error>(())
/// # }).unwrap();
/// ```
pub struct ProjectionEngine<S> {
    store: S,
    control: Arc<dyn ProjectionControl>,
    owner: String,
    projections: Vec<Registered>,
}

impl<S: FeedReader + Clone + 'static> ProjectionEngine<S> {
    /// An engine reading `store`, reporting to and steered through `control`.
    pub fn new(store: S, control: Arc<dyn ProjectionControl>) -> Self {
        ProjectionEngine {
            store,
            control,
            owner: format!("engine-{}", crate::EventId::new()),
            projections: Vec::new(),
        }
    }

    /// This process's name in leases and statuses (unique per process).
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = owner.into();
        self
    }

    fn check_name(&self, name: &str) -> Result<()> {
        if name.trim().is_empty() || name.chars().any(char::is_control) || name.contains('#') {
            return Err(Error::InvalidProjection {
                name: crate::error::clip(name),
                reason: "a projection needs a non-empty name without control characters or '#'"
                    .into(),
            });
        }
        let taken: HashSet<&str> = self
            .projections
            .iter()
            .map(|r| r.name.split('#').next().unwrap_or(&r.name))
            .collect();
        if taken.contains(name) {
            return Err(Error::InvalidProjection {
                name: name.to_owned(),
                reason: "another projection has this name".into(),
            });
        }
        Ok(())
    }

    /// Adds an async projection.
    ///
    /// # Errors
    /// [`Error::InvalidProjection`] for an empty or duplicate name; nothing is added.
    pub fn add(
        &mut self,
        target: impl ProjectionTarget,
        options: AsyncOptions,
    ) -> Result<&mut Self> {
        let name = target.name().to_owned();
        self.check_name(&name)?;
        self.projections.push(Registered {
            name,
            target: Arc::new(target),
            partition: (0, 1),
            options,
        });
        Ok(self)
    }

    /// Adds a projection partitioned by stream: `partitions` workers, each applying the
    /// events of the streams that hash to it (in stream order) through the target
    /// `make(index, count)` returns, with its own checkpoint and lease (named
    /// `{name}#{index}of{count}`).
    ///
    /// # Errors
    /// [`Error::InvalidProjection`] for an empty or duplicate name, no partitions, or a
    /// target whose name is not the partition's name.
    pub fn add_partitioned<T: ProjectionTarget>(
        &mut self,
        name: &str,
        partitions: u32,
        make: impl Fn(u32, u32) -> T,
        options: AsyncOptions,
    ) -> Result<&mut Self> {
        self.check_name(name)?;
        if partitions == 0 {
            return Err(Error::InvalidProjection {
                name: name.to_owned(),
                reason: "a partitioned projection needs at least one partition".into(),
            });
        }
        let mut added = Vec::new();
        for i in 0..partitions {
            let target = make(i, partitions);
            let expected = partition_name(name, i, partitions);
            if target.name() != expected {
                return Err(Error::InvalidProjection {
                    name: name.to_owned(),
                    reason: format!(
                        "partition {i}'s target is named {:?}, not {expected:?}",
                        target.name()
                    ),
                });
            }
            added.push(Registered {
                name: expected,
                target: Arc::new(target),
                partition: (i, partitions),
                options: options.clone(),
            });
        }
        self.projections.extend(added);
        Ok(self)
    }

    /// The names of the projections (and partitions) added.
    pub fn names(&self) -> Vec<String> {
        self.projections.iter().map(|r| r.name.clone()).collect()
    }

    /// Starts one supervised worker per projection (or partition). A worker that fails
    /// or panics is restarted after a backoff; all stop when `cancel` fires.
    pub fn start(self, cancel: CancellationToken) -> EngineHandle {
        let mut tasks = Vec::new();
        for r in self.projections {
            let cfg = WorkerConfig {
                name: r.name.clone(),
                partition: r.partition,
                batch_size: r.options.batch_size.max(1),
                poll_interval: r.options.poll_interval,
                retry_budget: r.options.retry_budget,
                base_backoff: r.options.base_backoff,
                max_backoff: r.options.max_backoff,
                poison_policy: r.options.poison_policy,
                owner: self.owner.clone(),
                lease_ttl: r.options.lease_ttl,
            };
            let store = self.store.clone();
            let control = self.control.clone();
            let target = r.target.clone();
            let cancel = cancel.clone();
            tasks.push(tokio::spawn(supervise(store, target, control, cfg, cancel)));
        }
        EngineHandle { tasks, cancel }
    }
}

async fn supervise<S: FeedReader + Clone + 'static>(
    store: S,
    target: Arc<dyn ProjectionTarget>,
    control: Arc<dyn ProjectionControl>,
    cfg: WorkerConfig,
    cancel: CancellationToken,
) {
    let mut restarts = 0u32;
    loop {
        let run = worker::run(
            store.clone(),
            target.clone(),
            control.clone(),
            cfg.clone(),
            cancel.clone(),
        );
        let error = match AssertUnwindSafe(run).catch_unwind().await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(panic) => panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-text panic".to_owned()),
        };
        if cancel.is_cancelled() {
            return;
        }
        restarts += 1;
        tracing::error!(projection = %cfg.name, restarts, %error, "projection worker crashed; restarting");
        metrics::counter!("mink_projection_restarts_total", "projection" => cfg.name.clone())
            .increment(1);
        let _ = control.release(&cfg.name, &cfg.owner).await;
        let _ = control
            .report(&ProjectionStatus {
                name: cfg.name.clone(),
                state: RunState::Faulted,
                checkpoint: None,
                owner: Some(cfg.owner.clone()),
                last_error: Some(format!("worker crashed (restart {restarts}): {error}")),
                parked: 0,
                rebuild_progress: None,
                updated_at: crate::now_micros(),
            })
            .await;
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff(cfg.base_backoff, cfg.max_backoff, restarts.min(10))) => {}
        }
    }
}

/// The running workers of an engine.
pub struct EngineHandle {
    tasks: Vec<JoinHandle<()>>,
    cancel: CancellationToken,
}

impl EngineHandle {
    /// Stops every worker (each finishes the batch it is applying) and waits for them.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// Stops every worker at once, without letting it finish its batch or release its
    /// lease (as if the process died): for tests of crash recovery.
    pub fn abort(self) {
        for t in &self.tasks {
            t.abort();
        }
    }

    /// Waits for the workers to stop (after the cancellation token fires).
    pub async fn join(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
