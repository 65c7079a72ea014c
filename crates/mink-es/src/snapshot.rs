//! Snapshots of aggregate state, and the policy that decides when to take them.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::{CodecTag, Result, StreamId};

/// A stored snapshot of one aggregate at one stream version.
///
/// A snapshot is a cache: losing one only costs a longer replay. It records the
/// aggregate type and the schema version of the state's shape, so that a snapshot of an
/// older shape is ignored rather than mis-read.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// The aggregate's stream.
    pub stream_id: StreamId,
    /// The aggregate's stable type name.
    pub aggregate_type: String,
    /// The stream version the state includes (every event up to and including it).
    pub version: u64,
    /// The version of the state's shape (see `Aggregate::SNAPSHOT_VERSION`).
    pub schema_version: u32,
    /// The codec that encoded the state.
    pub codec: CodecTag,
    /// The encoded state.
    pub payload: Bytes,
    /// When the snapshot was taken (microsecond precision).
    pub taken_at: DateTime<Utc>,
}

/// Stores the latest snapshot of each stream.
pub trait SnapshotStore: Send + Sync {
    /// Stores `snapshot`, replacing the stream's previous one unless that one is at a
    /// higher version (a slow writer never replaces a newer snapshot with an older one).
    fn save_snapshot(&self, snapshot: Snapshot) -> impl Future<Output = Result<()>> + Send;

    /// The latest snapshot of `stream`, if any.
    fn load_snapshot(
        &self,
        stream: &StreamId,
    ) -> impl Future<Output = Result<Option<Snapshot>>> + Send;

    /// Removes the stream's snapshot; removing a missing one is not an error.
    fn delete_snapshot(&self, stream: &StreamId) -> impl Future<Output = Result<()>> + Send;
}

/// Facts a [`SnapshotPolicy`] decides on, after a save.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotContext {
    /// The aggregate's version before the save.
    pub previous_version: u64,
    /// The aggregate's version after the save.
    pub version: u64,
    /// Events stored since the last snapshot the repository knows of (or since the
    /// start of the stream).
    pub events_since_snapshot: u64,
}

/// When the repository takes a snapshot after a save.
#[derive(Clone, Default)]
pub enum SnapshotPolicy {
    /// Never.
    #[default]
    Never,
    /// Each time the version crosses a multiple of N (N ≥ 1).
    EveryNEvents(u64),
    /// When the function says so.
    Custom(Arc<dyn Fn(&SnapshotContext) -> bool + Send + Sync>),
}

impl SnapshotPolicy {
    /// Every N events (a policy of 0 never snapshots).
    pub fn every(n: u64) -> Self {
        SnapshotPolicy::EveryNEvents(n)
    }

    /// A custom rule.
    pub fn custom(f: impl Fn(&SnapshotContext) -> bool + Send + Sync + 'static) -> Self {
        SnapshotPolicy::Custom(Arc::new(f))
    }

    /// Whether to snapshot in this situation.
    pub fn should_snapshot(&self, ctx: &SnapshotContext) -> bool {
        match self {
            SnapshotPolicy::Never => false,
            SnapshotPolicy::EveryNEvents(0) => false,
            SnapshotPolicy::EveryNEvents(n) => ctx.previous_version / n != ctx.version / n,
            SnapshotPolicy::Custom(f) => f(ctx),
        }
    }
}

impl fmt::Debug for SnapshotPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotPolicy::Never => f.write_str("Never"),
            SnapshotPolicy::EveryNEvents(n) => write!(f, "EveryNEvents({n})"),
            SnapshotPolicy::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// Stores named checkpoints: how far a consumer of the feed has got.
pub trait CheckpointStore: Send + Sync {
    /// The checkpoint saved under `name`, or `None` if there is none. An error is never
    /// reported as `None`: a consumer must not restart from zero because a read failed.
    fn load_checkpoint(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<crate::Position>>> + Send;

    /// Saves the checkpoint under `name`, replacing the previous one.
    fn save_checkpoint(
        &self,
        name: &str,
        position: crate::Position,
    ) -> impl Future<Output = Result<()>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(prev: u64, v: u64) -> SnapshotContext {
        SnapshotContext {
            previous_version: prev,
            version: v,
            events_since_snapshot: v - prev,
        }
    }

    #[test]
    fn every_n_crosses_multiples() {
        let p = SnapshotPolicy::every(10);
        assert!(!p.should_snapshot(&ctx(0, 9)));
        assert!(p.should_snapshot(&ctx(9, 10)));
        assert!(p.should_snapshot(&ctx(5, 25)));
        assert!(!p.should_snapshot(&ctx(10, 19)));
        assert!(!SnapshotPolicy::every(0).should_snapshot(&ctx(0, 100)));
        assert!(!SnapshotPolicy::Never.should_snapshot(&ctx(0, 100)));
        let c = SnapshotPolicy::custom(|c| c.events_since_snapshot >= 3);
        assert!(c.should_snapshot(&ctx(0, 3)));
        assert!(!c.should_snapshot(&ctx(0, 2)));
    }
}
