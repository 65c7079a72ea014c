//! Operating projections: status, lag, pause, resume, rebuild, reset, parked events.
//!
//! Works across processes: it reads the statuses workers report to the
//! [`ProjectionControl`] store and queues requests there, which the workers holding the
//! projections pick up (within a poll interval).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{Command, ParkedEvent, ProjectionControl, ProjectionStatus, RunState};
use crate::store::FeedReader;
use crate::{Error, FeedFilter, Position, Result};

/// A projection's status with its lag.
#[derive(Clone, Debug, PartialEq)]
pub struct ProjectionInfo {
    /// What its worker last reported.
    pub status: ProjectionStatus,
    /// Positions between its checkpoint and the feed's head (the number of events
    /// behind where positions are dense: memory, SQLite; an upper bound on PostgreSQL).
    pub lag_events: u64,
    /// How long ago the oldest event it has not processed was recorded (zero when caught
    /// up).
    pub lag_time: Duration,
    /// Parked events waiting for a replay.
    pub parked: u64,
}

/// The operations API (the CLI and admin UI call it).
pub struct ProjectionOps<S> {
    store: S,
    control: Arc<dyn ProjectionControl>,
}

impl<S: FeedReader> ProjectionOps<S> {
    /// Operations on the projections reporting to `control`, reading lag from `store`.
    pub fn new(store: S, control: Arc<dyn ProjectionControl>) -> Self {
        ProjectionOps { store, control }
    }

    /// Every projection (and partition) with its status, checkpoint, lag, parked count
    /// and last error.
    pub async fn list(&self) -> Result<Vec<ProjectionInfo>> {
        let head = self.store.head_position().await?;
        let mut out = Vec::new();
        for status in self.control.statuses().await? {
            let cp = status.checkpoint.unwrap_or(Position::START);
            let lag_events = if cp >= head {
                0
            } else if cp.major() == head.major() {
                head.minor().saturating_sub(cp.minor())
            } else {
                head.minor().saturating_sub(cp.minor()).max(1)
            };
            let lag_time = if lag_events == 0 {
                Duration::ZERO
            } else {
                let page = self.store.read_feed(cp, 1, &FeedFilter::all()).await?;
                page.events
                    .first()
                    .map(|e| age(e.recorded_at))
                    .unwrap_or(Duration::ZERO)
            };
            let parked = self.control.parked(&status.name).await?.len() as u64;
            out.push(ProjectionInfo {
                status,
                lag_events,
                lag_time,
                parked,
            });
        }
        Ok(out)
    }

    /// The reported names that `name` stands for: itself, or its partitions.
    async fn resolve(&self, name: &str) -> Result<Vec<ProjectionStatus>> {
        let prefix = format!("{name}#");
        let matching: Vec<ProjectionStatus> = self
            .control
            .statuses()
            .await?
            .into_iter()
            .filter(|s| s.name == name || s.name.starts_with(&prefix))
            .collect();
        if matching.is_empty() {
            return Err(Error::UnknownProjection {
                name: crate::error::clip(name),
            });
        }
        Ok(matching)
    }

    async fn send(&self, name: &str, command: Command) -> Result<Vec<u64>> {
        let mut ids = Vec::new();
        for s in self.resolve(name).await? {
            ids.push(self.control.request(&s.name, command.clone()).await?);
        }
        Ok(ids)
    }

    /// Pauses a projection (all its partitions); returns the request ids.
    ///
    /// # Errors
    /// [`Error::UnknownProjection`] when no worker ever reported that name.
    pub async fn pause(&self, name: &str) -> Result<Vec<u64>> {
        self.send(name, Command::Pause).await
    }

    /// Resumes a paused or faulted projection.
    pub async fn resume(&self, name: &str) -> Result<Vec<u64>> {
        self.send(name, Command::Resume).await
    }

    /// Rebuilds a projection from the start (the read model is cleared, or built beside
    /// the live one by targets that can).
    ///
    /// # Errors
    /// [`Error::RebuildInProgress`] when one is already running or requested.
    pub async fn rebuild(&self, name: &str) -> Result<Vec<u64>> {
        let statuses = self.resolve(name).await?;
        for s in &statuses {
            let pending = self.control.pending(&s.name).await?;
            if s.state == RunState::Rebuilding
                || pending.iter().any(|r| r.command == Command::Rebuild)
            {
                return Err(Error::RebuildInProgress {
                    name: s.name.clone(),
                });
            }
        }
        self.send(name, Command::Rebuild).await
    }

    /// Moves a projection's checkpoint (for a partitioned one: every partition's).
    pub async fn reset(&self, name: &str, position: Position) -> Result<Vec<u64>> {
        self.send(name, Command::ResetTo { position }).await
    }

    /// Applies the parked events again.
    pub async fn replay_parked(&self, name: &str) -> Result<Vec<u64>> {
        self.send(name, Command::ReplayParked).await
    }

    /// The parked events of a projection (all partitions).
    pub async fn parked(&self, name: &str) -> Result<Vec<ParkedEvent>> {
        let mut out = Vec::new();
        for s in self.resolve(name).await? {
            out.extend(self.control.parked(&s.name).await?);
        }
        Ok(out)
    }

    /// Waits until the requests are handled (or `timeout` passes); returns the errors of
    /// those that failed.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the time runs out.
    pub async fn wait(&self, ids: &[u64], timeout: Duration) -> Result<Vec<String>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut errors = Vec::new();
        for &id in ids {
            loop {
                match self.control.outcome(id).await? {
                    Some(outcome) => {
                        errors.extend(outcome);
                        break;
                    }
                    None if tokio::time::Instant::now() >= deadline => {
                        return Err(Error::InvalidArgument(format!(
                            "projection request {id} was not handled within {timeout:?} (is a worker running?)"
                        )));
                    }
                    None => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        }
        Ok(errors)
    }
}

fn age(t: DateTime<Utc>) -> Duration {
    (Utc::now() - t).to_std().unwrap_or(Duration::ZERO)
}
