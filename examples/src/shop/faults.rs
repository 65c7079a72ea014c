//! A store wrapper that injects two faults on demand, so that the story can show what
//! the shop does when they happen:
//!
//! - **a lost reply** ([`Faults::lose_next_reply`]): the next append commits, and then
//!   the caller gets a transient error anyway, as when the connection drops right after
//!   the database committed;
//! - **a race** ([`Faults::hold_next_append`]): the next append to one stream waits at
//!   the door until the story lets it through, so that another writer can save the same
//!   stream in between, as a second clerk would.
//!
//! Until armed, it passes every call through. It also shows that a layer can wrap any
//! store by implementing the same small traits.

use std::sync::Arc;

use mink_es::prelude::*;
use mink_es::{
    AppendResult, Error, ExpectedVersion, FeedFilter, FeedPage, FeedSignal, NewEvent, Position,
    Result, Snapshot, StoredEvent, StreamId, StreamInfo,
};
use parking_lot::Mutex;
use tokio::sync::oneshot;

/// What happened to the reply that was lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LostReply {
    /// The stream whose append lost its reply.
    pub stream: StreamId,
    /// The error the writer got instead of the reply.
    pub error: String,
    /// Whether the next append to that stream was recognised by the store as a repeat
    /// of the committed one (`None` until there is one).
    pub repeat_deduplicated: Option<bool>,
}

#[derive(Default)]
struct State {
    lose_next_reply: bool,
    lost: Option<LostReply>,
    hold: Option<Hold>,
}

struct Hold {
    stream: StreamId,
    reached: oneshot::Sender<()>,
    release: oneshot::Receiver<()>,
}

/// Wraps a store and injects faults when armed (see the [module docs](self)).
#[derive(Clone)]
pub struct Faults<S> {
    inner: S,
    state: Arc<Mutex<State>>,
}

impl<S> Faults<S> {
    /// Wraps `inner`; every call passes through until a fault is armed.
    pub fn new(inner: S) -> Self {
        Faults {
            inner,
            state: Arc::default(),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Makes the next append lose its reply: it is committed, and reported as a
    /// transient [`Error::Backend`].
    pub fn lose_next_reply(&self) {
        self.state.lock().lose_next_reply = true;
    }

    /// The reply lost last, and what became of the repeat.
    pub fn lost_reply(&self) -> Option<LostReply> {
        self.state.lock().lost.clone()
    }

    /// Holds the next append to `stream` until [`HeldAppend::release`] (or until the
    /// handle is dropped).
    pub fn hold_next_append(&self, stream: StreamId) -> HeldAppend {
        let (reached_tx, reached_rx) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel();
        self.state.lock().hold = Some(Hold {
            stream,
            reached: reached_tx,
            release: release_rx,
        });
        HeldAppend {
            reached: Some(reached_rx),
            release: release_tx,
        }
    }
}

/// An append held by [`Faults::hold_next_append`].
#[derive(Debug)]
pub struct HeldAppend {
    reached: Option<oneshot::Receiver<()>>,
    release: oneshot::Sender<()>,
}

impl HeldAppend {
    /// Waits until a writer reaches the held append (it has loaded and decided, and is
    /// about to save). Returns false if the hold was dropped without being reached.
    pub async fn reached(&mut self) -> bool {
        match self.reached.take() {
            Some(rx) => rx.await.is_ok(),
            None => true,
        }
    }

    /// Lets the held append through.
    pub fn release(self) {
        // The writer may have given up waiting (timed out): nothing to release then.
        let _ = self.release.send(());
    }
}

impl<S: StreamWriter> StreamWriter for Faults<S> {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        let hold = {
            let mut state = self.state.lock();
            match state.hold.take() {
                Some(h) if h.stream == *stream => Some(h),
                other => {
                    state.hold = other;
                    None
                }
            }
        };
        if let Some(hold) = hold {
            let _ = hold.reached.send(());
            // Released, or the handle was dropped: either way, go on.
            let _ = hold.release.await;
        }

        let result = self.inner.append(stream, expected, events).await?;

        let mut state = self.state.lock();
        if let Some(lost) = state.lost.as_mut()
            && lost.stream == *stream
            && lost.repeat_deduplicated.is_none()
        {
            lost.repeat_deduplicated = Some(result.deduplicated);
        }
        if std::mem::take(&mut state.lose_next_reply) {
            // The events are committed; only the answer is lost.
            let error =
                Error::backend(true, "connection reset while reading the reply (simulated)");
            state.lost = Some(LostReply {
                stream: stream.clone(),
                error: error.to_string(),
                repeat_deduplicated: None,
            });
            return Err(error);
        }
        Ok(result)
    }
}

impl<S: StreamReader> StreamReader for Faults<S> {
    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>> {
        self.inner.read_stream(stream, from_version, limit).await
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64> {
        self.inner.stream_version(stream).await
    }

    async fn stream_info(&self, stream: &StreamId) -> Result<Option<StreamInfo>> {
        self.inner.stream_info(stream).await
    }
}

impl<S: FeedReader> FeedReader for Faults<S> {
    async fn read_feed(
        &self,
        after: Position,
        limit: usize,
        filter: &FeedFilter,
    ) -> Result<FeedPage> {
        self.inner.read_feed(after, limit, filter).await
    }

    async fn head_position(&self) -> Result<Position> {
        self.inner.head_position().await
    }

    fn feed_signal(&self) -> FeedSignal {
        self.inner.feed_signal()
    }
}

impl<S: SnapshotStore> SnapshotStore for Faults<S> {
    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        self.inner.save_snapshot(snapshot).await
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>> {
        self.inner.load_snapshot(stream).await
    }

    async fn delete_snapshot(&self, stream: &StreamId) -> Result<()> {
        self.inner.delete_snapshot(stream).await
    }
}
