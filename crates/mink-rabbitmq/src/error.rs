//! This crate's error type.

/// What can go wrong setting up a [`RabbitPublisher`](crate::RabbitPublisher) or
/// declaring an exchange.
///
/// Delivery failures are not this type: [`Publisher::publish`](mink_es::outbox::Publisher::publish)
/// returns a [`PublishError`](mink_es::outbox::PublishError) (see the crate docs for the
/// classification).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RabbitError {
    /// A URL that is not an AMQP URI (or asks for TLS without the `tls-rustls` feature).
    #[error("invalid AMQP URL: {0}")]
    InvalidUrl(String),
    /// A routing key template that cannot work.
    #[error("invalid routing key template {template:?}: {reason}")]
    InvalidRoutingKey {
        /// The template as given.
        template: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A setting that cannot work (named in the message).
    #[error("invalid RabbitMQ publisher configuration: {0}")]
    InvalidConfig(String),
    /// The broker could not be reached, refused the login, or did not answer in time.
    #[error("cannot connect to RabbitMQ at {url}: {reason}")]
    Connect {
        /// The broker address, without credentials.
        url: String,
        /// Why.
        reason: String,
        /// The client's error, when there is one (none for a timeout).
        #[source]
        source: Option<Box<lapin::Error>>,
    },
    /// The broker refused a request (declaring an exchange).
    #[error("RabbitMQ refused the request: {0}")]
    Amqp(#[source] Box<lapin::Error>),
}
