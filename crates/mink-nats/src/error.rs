//! This crate's error type.

use mink_es::BoxError;

/// What can go wrong setting up a [`NatsPublisher`](crate::NatsPublisher) or a stream.
///
/// Delivery failures are not this type: [`Publisher::publish`](mink_es::outbox::Publisher::publish)
/// returns a [`PublishError`](mink_es::outbox::PublishError) (see the crate docs for the
/// classification).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NatsError {
    /// A subject template that cannot give a valid subject to publish to.
    #[error("invalid NATS subject template {template:?}: {reason}")]
    InvalidSubject {
        /// The template as given.
        template: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A setting that cannot work (named in the message).
    #[error("invalid NATS publisher configuration: {0}")]
    InvalidConfig(String),
    /// The server could not be reached or refused the connection.
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        /// The server address as given.
        url: String,
        /// The client's error.
        #[source]
        source: async_nats::ConnectError,
    },
    /// A JetStream management request (creating, reading or deleting a stream) failed.
    #[error("JetStream request failed: {0}")]
    JetStream(#[source] BoxError),
}
