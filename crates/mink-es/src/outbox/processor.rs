//! The outbox processor: claims, delivers, acknowledges or retries, dead-letters.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::publisher::{PublishError, Publisher};
use super::store::{Claimed, OutboxStore};
use crate::{Error, Result};

/// How a processor works.
#[derive(Clone, Debug)]
pub struct ProcessorConfig {
    /// This processor's name in leases (unique per process). Default: a random id.
    pub owner: String,
    /// Messages claimed per round. Default 256.
    pub batch_size: usize,
    /// How long a claim is held before another processor may take the message over.
    /// Make it longer than the slowest delivery. Default 30 s.
    pub lease: Duration,
    /// Attempts before a message goes to the dead-letter queue. Default 10.
    pub max_attempts: u32,
    /// The first retry delay. Default 200 ms.
    pub base_backoff: Duration,
    /// The longest retry delay. Default 5 min.
    pub max_backoff: Duration,
    /// Longest wait between rounds when idle. Default 500 ms.
    pub poll_interval: Duration,
    /// How long delivered messages are kept. Default 24 h.
    pub retention: Duration,
    /// How often delivered messages past retention are deleted. Default 5 min.
    pub purge_every: Duration,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        ProcessorConfig {
            owner: format!("processor-{}", crate::EventId::new()),
            batch_size: 256,
            lease: Duration::from_secs(30),
            max_attempts: 10,
            base_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(300),
            poll_interval: Duration::from_millis(500),
            retention: Duration::from_secs(24 * 3600),
            purge_every: Duration::from_secs(300),
        }
    }
}

impl ProcessorConfig {
    /// The retry delay after failed attempt `attempt` (1-based): exponential, capped,
    /// with full jitter.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self
            .base_backoff
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
            .min(self.max_backoff);
        ceiling.mul_f64(rand::random::<f64>())
    }

    fn validate(&self) -> Result<()> {
        if self.batch_size == 0 || self.max_attempts == 0 || self.lease.is_zero() {
            return Err(Error::InvalidArgument(
                "an outbox processor needs a batch size, attempt limit and lease above zero".into(),
            ));
        }
        Ok(())
    }
}

/// What one round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// Messages claimed.
    pub claimed: usize,
    /// Delivered and acknowledged.
    pub delivered: usize,
    /// Failed, to be retried.
    pub retried: usize,
    /// Moved to the dead-letter queue.
    pub dead_lettered: usize,
}

/// Delivers outbox messages through publishers, one per destination.
///
/// Metrics: `mink_outbox_delivered_total{destination}`,
/// `mink_outbox_failures_total{destination, kind}` (`retryable`, `permanent`),
/// `mink_outbox_dead_lettered_total{destination}`, `mink_outbox_round_seconds`.
pub struct OutboxProcessor {
    store: Arc<dyn OutboxStore>,
    publishers: HashMap<String, Arc<dyn Publisher>>,
    config: ProcessorConfig,
}

impl OutboxProcessor {
    /// A processor for `store` with the default configuration and no publishers yet.
    pub fn new(store: Arc<dyn OutboxStore>) -> Self {
        OutboxProcessor {
            store,
            publishers: HashMap::new(),
            config: ProcessorConfig::default(),
        }
    }

    /// Delivers messages for `destination` through `publisher`.
    pub fn publisher(mut self, destination: impl Into<String>, publisher: impl Publisher) -> Self {
        self.publishers
            .insert(destination.into(), Arc::new(publisher));
        self
    }

    /// Like [`OutboxProcessor::publisher`] with a shared publisher.
    pub fn shared_publisher(
        mut self,
        destination: impl Into<String>,
        publisher: Arc<dyn Publisher>,
    ) -> Self {
        self.publishers.insert(destination.into(), publisher);
        self
    }

    /// Replaces the configuration.
    pub fn config(mut self, config: ProcessorConfig) -> Self {
        self.config = config;
        self
    }

    /// The configuration.
    pub fn configuration(&self) -> &ProcessorConfig {
        &self.config
    }

    /// Runs until `cancel` fires: claims and delivers in rounds, waking on new messages
    /// (with polling as the fallback), and deletes delivered messages past retention.
    /// On cancellation it finishes the round in progress (every delivered message is
    /// acknowledged) and returns.
    ///
    /// A failing store does not stop it: the error is logged and the round retried
    /// after a pause.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an invalid configuration.
    pub async fn run(self, cancel: CancellationToken) -> Result<()> {
        self.config.validate()?;
        let mut signal = self.store.signal();
        let mut last_purge = Instant::now();
        while !cancel.is_cancelled() {
            signal.mark_seen();
            let report = match self.run_once().await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "outbox round failed; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(self.config.poll_interval) => {}
                    }
                    continue;
                }
            };
            if last_purge.elapsed() >= self.config.purge_every {
                last_purge = Instant::now();
                match self.store.purge_delivered(self.config.retention).await {
                    Ok(n) if n > 0 => {
                        tracing::debug!(purged = n, "deleted delivered outbox messages")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot delete delivered outbox messages"),
                }
            }
            if report.claimed < self.config.batch_size {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = signal.wait(self.config.poll_interval) => {}
                }
            }
        }
        Ok(())
    }

    /// One round: claim a batch, deliver it, record each outcome.
    ///
    /// # Errors
    /// The store's errors.
    pub async fn run_once(&self) -> Result<RoundReport> {
        let start = Instant::now();
        let claimed = self
            .store
            .claim(
                &self.config.owner,
                self.config.batch_size,
                self.config.lease,
                self.config.max_attempts,
            )
            .await?;
        let mut report = RoundReport {
            claimed: claimed.len(),
            ..RoundReport::default()
        };
        if claimed.is_empty() {
            return Ok(report);
        }
        let span = tracing::info_span!("outbox.deliver", messages = claimed.len());
        async {
            let mut by_destination: HashMap<String, Vec<Claimed>> = HashMap::new();
            for c in claimed {
                by_destination.entry(c.message.destination.clone()).or_default().push(c);
            }
            let deliveries = by_destination.into_iter().map(|(destination, batch)| async move {
                let results = match self.publishers.get(&destination) {
                    Some(p) => {
                        let messages: Vec<_> = batch.iter().map(|c| c.message.clone()).collect();
                        p.publish_batch(&messages).await
                    }
                    None => batch
                        .iter()
                        .map(|_| {
                            Err(PublishError::permanent(format!(
                                "no publisher is configured for destination {destination:?}"
                            )))
                        })
                        .collect(),
                };
                (destination, batch, results)
            });
            for (destination, batch, results) in futures::future::join_all(deliveries).await {
                let mut delivered = Vec::new();
                for (c, result) in batch.iter().zip(results.into_iter().chain(std::iter::repeat_with(|| {
                    Err(PublishError::retryable("the publisher returned fewer results than messages"))
                }))) {
                    match result {
                        Ok(()) => delivered.push(c.message.id),
                        Err(e) => {
                            let dead = e.is_permanent() || c.attempt >= self.config.max_attempts;
                            let kind = if e.is_permanent() { "permanent" } else { "retryable" };
                            metrics::counter!("mink_outbox_failures_total", "destination" => destination.clone(), "kind" => kind)
                                .increment(1);
                            let retry_at = (!dead).then(|| {
                                Utc::now()
                                    + chrono::Duration::from_std(self.config.backoff(c.attempt))
                                        .unwrap_or_default()
                            });
                            self.store
                                .fail(&self.config.owner, c.message.id, &e.to_string(), retry_at)
                                .await?;
                            if dead {
                                report.dead_lettered += 1;
                                metrics::counter!("mink_outbox_dead_lettered_total", "destination" => destination.clone())
                                    .increment(1);
                                tracing::warn!(message = %c.message.id, %destination, attempt = c.attempt, error = %e, "outbox message moved to the dead-letter queue");
                            } else {
                                report.retried += 1;
                                tracing::debug!(message = %c.message.id, %destination, attempt = c.attempt, error = %e, "outbox delivery failed; will retry");
                            }
                        }
                    }
                }
                if !delivered.is_empty() {
                    self.store.ack(&self.config.owner, &delivered).await?;
                    report.delivered += delivered.len();
                    metrics::counter!("mink_outbox_delivered_total", "destination" => destination)
                        .increment(delivered.len() as u64);
                }
            }
            Ok::<_, Error>(())
        }
        .instrument(span)
        .await?;
        metrics::histogram!("mink_outbox_round_seconds").record(start.elapsed().as_secs_f64());
        Ok(report)
    }
}
