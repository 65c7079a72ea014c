//! A store wrapper that simulates a lost reply: the append commits, then the caller
//! gets a transient error anyway, as when the connection drops right after the
//! database committed.
//!
//! It shows two things: a layer can wrap any store by implementing the same small
//! traits, and a repository save is safe to retry after such an error, because each
//! recorded event keeps its id across attempts and the store recognises the repeat.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use mink_es::prelude::*;
use mink_es::{
    AppendResult, Error, ExpectedVersion, FeedFilter, FeedPage, FeedSignal, NewEvent, Position,
    Result, StoredEvent, StreamId, StreamInfo,
};

/// Wraps a store; after [`LostReply::lose_next_reply`], the next append is committed but
/// reported as a transient [`Error::Backend`].
#[derive(Clone)]
pub struct LostReply<S> {
    inner: S,
    armed: Arc<AtomicBool>,
}

impl<S> LostReply<S> {
    /// Wraps `inner`; appends behave normally until armed.
    pub fn new(inner: S) -> Self {
        LostReply {
            inner,
            armed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Makes the next append lose its reply.
    pub fn lose_next_reply(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }
}

impl<S: StreamWriter> StreamWriter for LostReply<S> {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        let result = self.inner.append(stream, expected, events).await?;
        if self.armed.swap(false, Ordering::SeqCst) {
            // The events are committed; only the answer is lost.
            return Err(Error::backend(
                true,
                "connection reset while reading the reply (simulated)",
            ));
        }
        Ok(result)
    }
}

impl<S: StreamReader> StreamReader for LostReply<S> {
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

impl<S: FeedReader> FeedReader for LostReply<S> {
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
