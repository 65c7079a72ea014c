//! Publishers deliver outbox messages to one kind of destination.

use std::sync::Arc;

use futures::future::BoxFuture;
use parking_lot::Mutex;

use super::OutboxMessage;
use crate::BoxError;

/// Why a delivery failed, and whether trying again may help.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The destination may accept the message later (a timeout, a 5xx or 429, a broker
    /// that is down): the message is retried with backoff.
    #[error("retryable delivery failure: {0}")]
    Retryable(#[source] BoxError),
    /// The destination will never accept this message (a 4xx, a message too large): it
    /// goes to the dead-letter queue at once.
    #[error("permanent delivery failure: {0}")]
    Permanent(#[source] BoxError),
}

impl PublishError {
    /// True for [`PublishError::Permanent`].
    pub fn is_permanent(&self) -> bool {
        matches!(self, PublishError::Permanent(_))
    }

    /// A retryable error from anything.
    pub fn retryable(e: impl Into<BoxError>) -> Self {
        PublishError::Retryable(e.into())
    }

    /// A permanent error from anything.
    pub fn permanent(e: impl Into<BoxError>) -> Self {
        PublishError::Permanent(e.into())
    }
}

/// Delivers messages to one destination (a webhook, a Kafka topic, an SNS topic, …).
///
/// A delivery must be complete when `publish` returns `Ok`: the processor then marks the
/// message delivered. Delivery is at least once: after a crash between delivery and
/// acknowledgement the message is delivered again, with the same id.
pub trait Publisher: Send + Sync + 'static {
    /// Delivers one message.
    fn publish<'a>(&'a self, message: &'a OutboxMessage)
    -> BoxFuture<'a, Result<(), PublishError>>;

    /// Delivers several messages (each of a different stream, so they may go out
    /// concurrently), returning one result per message, in order. The default runs
    /// [`Publisher::publish`] on all of them concurrently; publishers with a native
    /// batch (Kafka) override it.
    fn publish_batch<'a>(
        &'a self,
        messages: &'a [OutboxMessage],
    ) -> BoxFuture<'a, Vec<Result<(), PublishError>>> {
        Box::pin(futures::future::join_all(
            messages.iter().map(|m| self.publish(m)),
        ))
    }
}

/// A [`Publisher`] for tests: records what it delivers, and fails on request.
#[derive(Clone, Default)]
pub struct RecordingPublisher {
    inner: Arc<Mutex<Recording>>,
}

/// Decides, per attempt, whether a message fails.
type FailureRule = Box<dyn Fn(&OutboxMessage) -> Option<PublishError> + Send>;

#[derive(Default)]
struct Recording {
    delivered: Vec<OutboxMessage>,
    attempts: Vec<uuid::Uuid>,
    fail: Option<FailureRule>,
}

impl RecordingPublisher {
    /// A publisher that accepts everything.
    pub fn new() -> Self {
        RecordingPublisher::default()
    }

    /// Fails the messages for which `f` returns an error (decided per attempt).
    pub fn fail_when(&self, f: impl Fn(&OutboxMessage) -> Option<PublishError> + Send + 'static) {
        self.inner.lock().fail = Some(Box::new(f));
    }

    /// Stops failing.
    pub fn heal(&self) {
        self.inner.lock().fail = None;
    }

    /// The messages delivered, in delivery order.
    pub fn delivered(&self) -> Vec<OutboxMessage> {
        self.inner.lock().delivered.clone()
    }

    /// The ids of every attempt, failed ones included, in order.
    pub fn attempts(&self) -> Vec<uuid::Uuid> {
        self.inner.lock().attempts.clone()
    }
}

impl Publisher for RecordingPublisher {
    fn publish<'a>(
        &'a self,
        message: &'a OutboxMessage,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        let mut r = self.inner.lock();
        r.attempts.push(message.id);
        let failure = r.fail.as_ref().and_then(|f| f(message));
        let result = match failure {
            Some(e) => Err(e),
            None => {
                r.delivered.push(message.clone());
                Ok(())
            }
        };
        Box::pin(async move { result })
    }
}
