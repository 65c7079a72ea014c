//! One async projection worker: lease, checkpoint, batches, retries, requests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{
    Command, PoisonPolicy, ProjectionControl, ProjectionError, ProjectionStatus, ProjectionTarget,
    RunState, backoff, partition_of,
};
use crate::store::FeedReader;
use crate::{FeedFilter, Position, StoredEvent};

#[derive(Clone, Debug)]
pub(crate) struct WorkerConfig {
    pub name: String,
    pub partition: (u32, u32),
    pub batch_size: usize,
    pub poll_interval: Duration,
    pub retry_budget: u32,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    pub poison_policy: PoisonPolicy,
    pub owner: String,
    pub lease_ttl: Duration,
}

/// Why the run loop stopped.
enum Exit {
    Cancelled,
    LostLease,
}

struct Worker<S> {
    store: S,
    target: Arc<dyn ProjectionTarget>,
    control: Arc<dyn ProjectionControl>,
    cfg: WorkerConfig,
    cancel: CancellationToken,
    filter: FeedFilter,
    status: ProjectionStatus,
    last_report: Instant,
    /// The checkpoint in the last status reported.
    reported_checkpoint: Option<Position>,
    last_renewal: Instant,
    paused: bool,
    faulted: bool,
    rebuilding: Option<Position>,
    /// Set when a retry found the lease taken by another process: the apply gave up
    /// (as if cancelled) and the worker stands by.
    lost_lease: bool,
}

/// Runs a worker until cancelled. Returns an error only for failures it cannot ride
/// out; the engine restarts it.
pub(crate) async fn run<S: FeedReader + Clone + 'static>(
    store: S,
    target: Arc<dyn ProjectionTarget>,
    control: Arc<dyn ProjectionControl>,
    cfg: WorkerConfig,
    cancel: CancellationToken,
) -> crate::Result<()> {
    let filter = target.filter();
    let status = ProjectionStatus {
        name: cfg.name.clone(),
        state: RunState::Starting,
        checkpoint: None,
        owner: Some(cfg.owner.clone()),
        last_error: None,
        parked: 0,
        rebuild_progress: None,
        updated_at: crate::now_micros(),
    };
    let mut w = Worker {
        store,
        target,
        control,
        cfg,
        cancel,
        filter,
        status,
        last_report: Instant::now(),
        reported_checkpoint: None,
        last_renewal: Instant::now(),
        paused: false,
        faulted: false,
        rebuilding: None,
        lost_lease: false,
    };
    w.report(true).await;
    loop {
        if !w.acquire_lease().await {
            break;
        }
        match w.run_leased().await {
            Exit::Cancelled => break,
            Exit::LostLease => {
                tracing::warn!(projection = %w.cfg.name, "lost the projection lease; standing by");
                continue;
            }
        }
    }
    let _ = w.control.release(&w.cfg.name, &w.cfg.owner).await;
    w.status.state = RunState::Stopped;
    w.report(true).await;
    Ok(())
}

impl<S: FeedReader + Clone + 'static> Worker<S> {
    async fn report(&mut self, force: bool) {
        if !force && self.last_report.elapsed() < Duration::from_millis(200) {
            return;
        }
        self.status.updated_at = crate::now_micros();
        if let Err(e) = self.control.report(&self.status).await {
            tracing::warn!(projection = %self.cfg.name, error = %e, "cannot report projection status");
        }
        self.last_report = Instant::now();
        self.reported_checkpoint = self.status.checkpoint;
    }

    async fn set_state(&mut self, state: RunState) {
        if self.status.state != state {
            self.status.state = state;
            self.report(true).await;
        }
    }

    /// Waits for new events (or a request) for at most the poll interval; false when
    /// cancelled.
    async fn wait(&self, signal: &mut crate::FeedSignal) -> bool {
        tokio::select! {
            _ = self.cancel.cancelled() => false,
            _ = signal.wait(self.cfg.poll_interval) => true,
        }
    }

    async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.cancel.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }

    /// Takes the lease, standing by while another process holds it; false when
    /// cancelled.
    async fn acquire_lease(&mut self) -> bool {
        let mut attempt = 0;
        loop {
            if self.cancel.is_cancelled() {
                return false;
            }
            match self
                .control
                .acquire(&self.cfg.name, &self.cfg.owner, self.cfg.lease_ttl)
                .await
            {
                Ok(true) => {
                    self.last_renewal = Instant::now();
                    return true;
                }
                Ok(false) => {
                    self.set_state(RunState::Standby).await;
                    attempt = 0;
                    // Another process holds it: try again well within its lease time.
                    if !self
                        .sleep((self.cfg.lease_ttl / 4).max(Duration::from_millis(10)))
                        .await
                    {
                        return false;
                    }
                }
                Err(e) => {
                    attempt += 1;
                    self.status.last_error = Some(format!("cannot take the projection lease: {e}"));
                    self.set_state(RunState::Starting).await;
                    if !self
                        .sleep(backoff(
                            self.cfg.base_backoff,
                            self.cfg.max_backoff,
                            attempt,
                        ))
                        .await
                    {
                        return false;
                    }
                }
            }
        }
    }

    /// Renews the lease when a third of it has passed; false when it was lost.
    async fn renew(&mut self) -> bool {
        if self.last_renewal.elapsed() < self.cfg.lease_ttl / 3 {
            return true;
        }
        match self
            .control
            .acquire(&self.cfg.name, &self.cfg.owner, self.cfg.lease_ttl)
            .await
        {
            Ok(true) => {
                self.last_renewal = Instant::now();
                true
            }
            Ok(false) => false,
            // Cannot tell: keep going while the lease surely lasts.
            Err(e) => {
                tracing::warn!(projection = %self.cfg.name, error = %e, "cannot renew the projection lease");
                self.last_renewal.elapsed() < self.cfg.lease_ttl * 2 / 3
            }
        }
    }

    /// Reads the checkpoint, retrying while the read fails: a failed read never means
    /// "start from zero".
    async fn load_checkpoint(&mut self) -> Option<Position> {
        let mut attempt = 0;
        loop {
            match self.target.checkpoint().await {
                Ok(cp) => return Some(cp.unwrap_or(Position::START)),
                Err(e) => {
                    attempt += 1;
                    self.status.last_error = Some(format!("cannot read the checkpoint: {e}"));
                    self.set_state(RunState::Faulted).await;
                    if !self
                        .sleep(backoff(
                            self.cfg.base_backoff,
                            self.cfg.max_backoff,
                            attempt,
                        ))
                        .await
                    {
                        return None;
                    }
                }
            }
        }
    }

    async fn run_leased(&mut self) -> Exit {
        let Some(mut cp) = self.load_checkpoint().await else {
            return Exit::Cancelled;
        };
        self.status.checkpoint = Some(cp);
        self.status.last_error = None;
        self.set_state(RunState::Running).await;
        let mut signal = self.store.feed_signal();
        let mut read_attempt = 0;
        loop {
            if self.cancel.is_cancelled() {
                return Exit::Cancelled;
            }
            if !self.renew().await {
                return Exit::LostLease;
            }
            signal.mark_seen();
            // The durable checkpoint: every successful apply records it in the status
            // (a batch split after a poison event may stop half way).
            cp = self.status.checkpoint.unwrap_or(cp);
            cp = self.handle_requests(cp).await;
            if self.paused || self.faulted {
                let state = if self.paused {
                    RunState::Paused
                } else {
                    RunState::Faulted
                };
                self.set_state(state).await;
                if !self.wait(&mut signal).await {
                    return Exit::Cancelled;
                }
                continue;
            }
            let page = match self
                .store
                .read_feed(cp, self.cfg.batch_size, &self.filter)
                .await
            {
                Ok(p) => {
                    read_attempt = 0;
                    p
                }
                Err(e) => {
                    read_attempt += 1;
                    tracing::warn!(projection = %self.cfg.name, error = %e, "cannot read the feed; retrying");
                    self.status.last_error = Some(format!("cannot read the feed: {e}"));
                    if !self
                        .sleep(backoff(
                            self.cfg.base_backoff,
                            self.cfg.max_backoff,
                            read_attempt,
                        ))
                        .await
                    {
                        return Exit::Cancelled;
                    }
                    continue;
                }
            };
            let (index, count) = self.cfg.partition;
            let events: Vec<StoredEvent> = page
                .events
                .into_iter()
                .filter(|e| partition_of(&e.stream_id, count) == index)
                .collect();
            if events.is_empty() && page.next <= cp {
                // Caught up.
                if self.rebuilding.take().is_some() {
                    if let Err(e) = self.target.finish_rebuild().await {
                        self.status.last_error = Some(format!("cannot finish the rebuild: {e}"));
                        self.faulted = true;
                        continue;
                    }
                    self.status.rebuild_progress = None;
                    tracing::info!(projection = %self.cfg.name, "rebuild finished");
                }
                self.set_state(RunState::Running).await;
                // Reports are throttled while applying; an idle worker's status must
                // show where it stopped, or operators would see a stale lag.
                if self.reported_checkpoint != self.status.checkpoint {
                    self.report(true).await;
                }
                if !self.wait(&mut signal).await {
                    return Exit::Cancelled;
                }
                continue;
            }
            match self.apply(&events, page.next).await {
                Applied::Done => {
                    cp = page.next;
                    self.status.checkpoint = Some(cp);
                    if let Some(target) = self.rebuilding {
                        self.status.rebuild_progress = Some((cp, target));
                    }
                    metrics::counter!("mink_projection_events_total", "projection" => self.cfg.name.clone())
                        .increment(events.len() as u64);
                    let state = if self.rebuilding.is_some() {
                        RunState::Rebuilding
                    } else {
                        RunState::Running
                    };
                    self.status.state = state;
                    self.report(false).await;
                }
                Applied::Stopped => {}
                Applied::Cancelled if std::mem::take(&mut self.lost_lease) => {
                    return Exit::LostLease;
                }
                Applied::Cancelled => return Exit::Cancelled,
            }
        }
    }

    /// Applies a batch with retries; on poison, falls back to one event at a time.
    async fn apply(&mut self, events: &[StoredEvent], next: Position) -> Applied {
        match self.apply_with_retries(events, next).await {
            Outcome::Done => Applied::Done,
            Outcome::Cancelled => Applied::Cancelled,
            Outcome::Poison(e) if events.len() > 1 => {
                tracing::debug!(projection = %self.cfg.name, error = %e, "batch failed; applying its events one at a time");
                for event in events {
                    match self
                        .apply_with_retries(std::slice::from_ref(event), event.position)
                        .await
                    {
                        Outcome::Done => {}
                        Outcome::Cancelled => return Applied::Cancelled,
                        Outcome::Poison(e) => match self.poisoned(event, e).await {
                            Applied::Done => {}
                            other => return other,
                        },
                    }
                }
                // Move past the end of the page (events of other partitions, filtered
                // reads that scanned further).
                match self.apply_with_retries(&[], next).await {
                    Outcome::Done => Applied::Done,
                    Outcome::Cancelled => Applied::Cancelled,
                    Outcome::Poison(e) => {
                        self.fault(format!("cannot store the checkpoint: {e}"));
                        Applied::Stopped
                    }
                }
            }
            Outcome::Poison(e) => match events.first() {
                Some(event) => match self.poisoned(event, e).await {
                    Applied::Done => match self.apply_with_retries(&[], next).await {
                        Outcome::Done => Applied::Done,
                        Outcome::Cancelled => Applied::Cancelled,
                        Outcome::Poison(e) => {
                            self.fault(format!("cannot store the checkpoint: {e}"));
                            Applied::Stopped
                        }
                    },
                    other => other,
                },
                None => {
                    self.fault(format!("cannot store the checkpoint: {e}"));
                    Applied::Stopped
                }
            },
        }
    }

    fn fault(&mut self, error: String) {
        tracing::error!(projection = %self.cfg.name, %error, "projection stopped");
        self.status.last_error = Some(error);
        self.faulted = true;
    }

    /// An event still failing after the budget: park it and go on, or stop.
    async fn poisoned(&mut self, event: &StoredEvent, error: ProjectionError) -> Applied {
        let message = error.to_string();
        metrics::counter!("mink_projection_poison_total", "projection" => self.cfg.name.clone())
            .increment(1);
        match self.cfg.poison_policy {
            PoisonPolicy::Stop => {
                self.fault(format!(
                    "event {} of stream {} (position {}) cannot be applied: {message}",
                    event.version, event.stream_id, event.position
                ));
                Applied::Stopped
            }
            PoisonPolicy::Park => {
                let mut attempt = 0;
                loop {
                    match self.control.park(&self.cfg.name, event, &message).await {
                        Ok(()) => break,
                        Err(e) => {
                            attempt += 1;
                            tracing::warn!(projection = %self.cfg.name, error = %e, "cannot park an event; retrying");
                            if !self
                                .sleep(backoff(
                                    self.cfg.base_backoff,
                                    self.cfg.max_backoff,
                                    attempt,
                                ))
                                .await
                            {
                                return Applied::Cancelled;
                            }
                        }
                    }
                }
                tracing::warn!(projection = %self.cfg.name, stream = %event.stream_id, version = event.version, position = %event.position, error = %message, "event parked");
                self.status.parked += 1;
                self.status.last_error = Some(message);
                // Move the checkpoint past it.
                match self.apply_with_retries(&[], event.position).await {
                    Outcome::Done => Applied::Done,
                    Outcome::Cancelled => Applied::Cancelled,
                    Outcome::Poison(e) => {
                        self.fault(format!("cannot store the checkpoint: {e}"));
                        Applied::Stopped
                    }
                }
            }
        }
    }

    /// Transient errors: retried with backoff until they pass (no budget). Poison: retried
    /// up to the budget.
    async fn apply_with_retries(
        &mut self,
        events: &[StoredEvent],
        checkpoint: Position,
    ) -> Outcome {
        // A failing batch of several events is split at once (which event is poisonous
        // is not known); the budget applies to single events.
        let budget = if events.len() > 1 {
            1
        } else {
            self.cfg.retry_budget.max(1)
        };
        let mut transient = 0;
        let mut poison = 0;
        loop {
            if self.cancel.is_cancelled() {
                return Outcome::Cancelled;
            }
            match self.target.apply_batch(events, checkpoint).await {
                Ok(()) => {
                    self.status.checkpoint = Some(checkpoint);
                    return Outcome::Done;
                }
                Err(e @ ProjectionError::Transient(_)) => {
                    transient += 1;
                    self.status.last_error = Some(e.to_string());
                    // Another process may have taken the projection over (a target
                    // that saw its checkpoint move refuses every batch): stop retrying
                    // once the lease is gone, and stand by.
                    if !self.renew().await {
                        self.lost_lease = true;
                        return Outcome::Cancelled;
                    }
                    metrics::counter!("mink_projection_retries_total", "projection" => self.cfg.name.clone(), "kind" => "transient").increment(1);
                    if !self
                        .sleep(backoff(
                            self.cfg.base_backoff,
                            self.cfg.max_backoff,
                            transient,
                        ))
                        .await
                    {
                        return Outcome::Cancelled;
                    }
                }
                Err(e @ ProjectionError::Poison(_)) => {
                    poison += 1;
                    if poison >= budget {
                        return Outcome::Poison(e);
                    }
                    metrics::counter!("mink_projection_retries_total", "projection" => self.cfg.name.clone(), "kind" => "poison").increment(1);
                    if !self
                        .sleep(backoff(self.cfg.base_backoff, self.cfg.max_backoff, poison))
                        .await
                    {
                        return Outcome::Cancelled;
                    }
                }
            }
        }
    }

    /// Handles the operators' pending requests; returns the (possibly moved) checkpoint.
    async fn handle_requests(&mut self, mut cp: Position) -> Position {
        let requests = match self.control.pending(&self.cfg.name).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(projection = %self.cfg.name, error = %e, "cannot read projection requests");
                return cp;
            }
        };
        for r in requests {
            let result: Result<(), String> = match r.command {
                Command::Pause => {
                    self.paused = true;
                    Ok(())
                }
                Command::Resume => {
                    self.paused = false;
                    self.faulted = false;
                    self.status.last_error = None;
                    Ok(())
                }
                Command::Rebuild => {
                    if self.rebuilding.is_some() {
                        Err("a rebuild is already running".to_owned())
                    } else {
                        match self.store.head_position().await {
                            Err(e) => Err(format!("cannot read the head of the feed: {e}")),
                            Ok(head) => match self.target.reset(Position::START).await {
                                Err(e) => Err(format!("cannot reset the read model: {e}")),
                                Ok(()) => {
                                    cp = Position::START;
                                    self.status.checkpoint = Some(cp);
                                    self.rebuilding = Some(head);
                                    self.status.rebuild_progress = Some((cp, head));
                                    self.status.state = RunState::Rebuilding;
                                    self.faulted = false;
                                    tracing::info!(projection = %self.cfg.name, %head, "rebuild started");
                                    Ok(())
                                }
                            },
                        }
                    }
                }
                Command::ResetTo { position } => match self.target.apply_batch(&[], position).await
                {
                    Ok(()) => {
                        cp = position;
                        self.status.checkpoint = Some(cp);
                        Ok(())
                    }
                    Err(e) => Err(format!("cannot move the checkpoint: {e}")),
                },
                Command::ReplayParked => self.replay_parked(cp).await,
            };
            let error = result.err();
            if let Err(e) = self.control.complete(r.id, error.as_deref()).await {
                tracing::warn!(projection = %self.cfg.name, error = %e, "cannot complete a projection request");
            }
            self.report(true).await;
        }
        cp
    }

    async fn replay_parked(&mut self, cp: Position) -> Result<(), String> {
        let parked = self
            .control
            .parked(&self.cfg.name)
            .await
            .map_err(|e| format!("cannot list parked events: {e}"))?;
        let mut replayed = Vec::new();
        let mut failed = 0;
        for p in parked {
            // The checkpoint stays where it is: these events are behind it.
            match self
                .target
                .apply_batch(std::slice::from_ref(&p.event), cp)
                .await
            {
                Ok(()) => replayed.push(p.event.position),
                Err(e) => {
                    failed += 1;
                    let _ = self
                        .control
                        .park(&self.cfg.name, &p.event, &e.to_string())
                        .await;
                }
            }
        }
        self.control
            .unpark(&self.cfg.name, &replayed)
            .await
            .map_err(|e| format!("cannot unpark replayed events: {e}"))?;
        self.status.parked = self.status.parked.saturating_sub(replayed.len() as u64);
        if failed > 0 {
            Err(format!(
                "{failed} parked events failed again and stay parked"
            ))
        } else {
            Ok(())
        }
    }
}

enum Outcome {
    Done,
    Cancelled,
    Poison(ProjectionError),
}

enum Applied {
    Done,
    Stopped,
    Cancelled,
}
