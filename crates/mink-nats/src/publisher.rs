//! [`NatsPublisher`]: outbox messages to JetStream.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::{
    PublishAckFuture, PublishError as JsPublishError, PublishErrorKind,
};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::{self, ErrorCode, stream};
use async_nats::{Client, ConnectOptions};
use futures::future::BoxFuture;
use mink_es::outbox::{OutboxMessage, PublishError, Publisher};
use tokio::sync::OnceCell;
use tracing::Instrument;

use crate::{ContentTypes, NatsError, SubjectTemplate, headers};

/// The default wait for a publish ack.
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// The default cap on publishes awaiting their ack (further publishes wait).
pub const DEFAULT_MAX_ACK_INFLIGHT: usize = 5_000;

/// Publishes outbox messages to NATS JetStream, one subject per destination, and
/// returns only once the stream has acknowledged each message.
///
/// Build one with [`NatsPublisher::builder`]. It is cheap to clone (clones share the
/// connection) and can serve several destinations of one
/// [`OutboxProcessor`](mink_es::outbox::OutboxProcessor).
///
/// * **Subjects**: each destination has a [`SubjectTemplate`]: its own
///   ([`NatsPublisherBuilder::destination`]) or the default one
///   ([`NatsPublisherBuilder::subject`], `mink.{destination}.{category}` unless
///   changed).
/// * **De-duplication**: the `Nats-Msg-Id` header is the outbox message id, which is
///   stable across redeliveries, so a stream with a duplicate window
///   ([`stream_config`]) stores a redelivered message once. A duplicate is acknowledged
///   by the server (flagged `duplicate`) and counts as delivered.
/// * **Acks**: a publish is complete when the stream's ack arrives; a failed ack or no
///   ack within the ack timeout is a retryable error.
/// * **Batches**: [`Publisher::publish_batch`] sends every message first and then
///   awaits all the acks, so a batch costs about one round trip.
///
/// See the [crate docs](crate) for the headers and the error classification.
#[derive(Clone)]
pub struct NatsPublisher {
    inner: Arc<Inner>,
}

struct Inner {
    link: Link,
    default_subject: Option<SubjectTemplate>,
    destinations: HashMap<String, SubjectTemplate>,
    content_types: ContentTypes,
}

enum Link {
    Ready(jetstream::Context),
    Lazy {
        url: String,
        options: Box<ConnectOptions>,
        settings: ContextSettings,
        context: OnceCell<jetstream::Context>,
    },
}

#[derive(Clone, Copy, Debug)]
struct ContextSettings {
    ack_timeout: Duration,
    max_ack_inflight: usize,
}

impl ContextSettings {
    fn context(self, client: Client) -> jetstream::Context {
        jetstream::ContextBuilder::new()
            .timeout(self.ack_timeout)
            .max_ack_inflight(self.max_ack_inflight)
            .backpressure_on_inflight(true)
            .build(client)
    }
}

impl fmt::Debug for NatsPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let link = match &self.inner.link {
            Link::Ready(_) => "connected".to_owned(),
            Link::Lazy { url, context, .. } => format!(
                "lazy {url} ({})",
                if context.initialized() {
                    "connected"
                } else {
                    "not yet connected"
                }
            ),
        };
        f.debug_struct("NatsPublisher")
            .field("link", &link)
            .field("default_subject", &self.inner.default_subject)
            .field("destinations", &self.inner.destinations)
            .field("content_types", &self.inner.content_types)
            .finish()
    }
}

/// Configures a [`NatsPublisher`]; made by [`NatsPublisher::builder`].
///
/// A setting that is invalid (a bad subject template, a zero timeout) is reported when
/// the publisher is built.
#[must_use]
#[derive(Clone)]
pub struct NatsPublisherBuilder {
    default_subject: Option<SubjectTemplate>,
    destinations: HashMap<String, SubjectTemplate>,
    settings: ContextSettings,
    content_types: ContentTypes,
    connect_options: Option<ConnectOptions>,
    error: Option<Arc<NatsError>>,
}

impl fmt::Debug for NatsPublisherBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsPublisherBuilder")
            .field("default_subject", &self.default_subject)
            .field("destinations", &self.destinations)
            .field("settings", &self.settings)
            .field("content_types", &self.content_types)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl Default for NatsPublisherBuilder {
    fn default() -> Self {
        NatsPublisherBuilder {
            default_subject: Some(SubjectTemplate::default()),
            destinations: HashMap::new(),
            settings: ContextSettings {
                ack_timeout: DEFAULT_ACK_TIMEOUT,
                max_ack_inflight: DEFAULT_MAX_ACK_INFLIGHT,
            },
            content_types: ContentTypes::default(),
            connect_options: None,
            error: None,
        }
    }
}

impl NatsPublisherBuilder {
    fn fail(&mut self, e: NatsError) {
        if self.error.is_none() {
            self.error = Some(Arc::new(e));
        }
    }

    /// The subject template of every destination without its own (default:
    /// `mink.{destination}.{category}`; see [`SubjectTemplate`]).
    pub fn subject(mut self, template: &str) -> Self {
        match SubjectTemplate::new(template) {
            Ok(t) => self.default_subject = Some(t),
            Err(e) => self.fail(e),
        }
        self
    }

    /// The subject template of one destination (a template without placeholders is a
    /// fixed subject).
    pub fn destination(mut self, destination: impl Into<String>, template: &str) -> Self {
        match SubjectTemplate::new(template) {
            Ok(t) => {
                self.destinations.insert(destination.into(), t);
            }
            Err(e) => self.fail(e),
        }
        self
    }

    /// No default subject: only the destinations given with
    /// [`NatsPublisherBuilder::destination`] are published, and a message for any other
    /// destination fails permanently (it goes to the dead-letter queue).
    pub fn only_listed_destinations(mut self) -> Self {
        self.default_subject = None;
        self
    }

    /// How long to wait for a publish ack before the attempt counts as failed and
    /// retryable (default 5 s). Also bounds JetStream management requests. Not applied
    /// by [`NatsPublisherBuilder::build_with_context`], whose context keeps its own.
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        if timeout.is_zero() {
            self.fail(NatsError::InvalidConfig(
                "the ack timeout must be above zero".into(),
            ));
        }
        self.settings.ack_timeout = timeout;
        self
    }

    /// How many publishes may await their ack at once (default 5 000); a publish beyond
    /// that waits for a free slot. Not applied by
    /// [`NatsPublisherBuilder::build_with_context`].
    pub fn max_ack_inflight(mut self, max: usize) -> Self {
        if max == 0 {
            self.fail(NatsError::InvalidConfig(
                "max_ack_inflight must be above zero".into(),
            ));
        }
        self.settings.max_ack_inflight = max;
        self
    }

    /// The `Content-Type` of each codec (see [`ContentTypes`]).
    pub fn content_types(mut self, content_types: ContentTypes) -> Self {
        self.content_types = content_types;
        self
    }

    /// The connection options used by [`NatsPublisherBuilder::connect`] and
    /// [`NatsPublisherBuilder::connect_lazily`] (credentials, TLS, reconnect policy).
    /// Default: async-nats' defaults (reconnects without limit) with the client name
    /// `mink-nats`.
    pub fn connect_options(mut self, options: ConnectOptions) -> Self {
        self.connect_options = Some(options);
        self
    }

    /// The first invalid setting, if any.
    fn check(&mut self) -> Result<(), NatsError> {
        match self.error.take() {
            None => Ok(()),
            Some(e) => {
                Err(Arc::try_unwrap(e).unwrap_or_else(|e| NatsError::InvalidConfig(e.to_string())))
            }
        }
    }

    fn finish(mut self, link: Link) -> Result<NatsPublisher, NatsError> {
        self.check()?;
        Ok(NatsPublisher {
            inner: Arc::new(Inner {
                link,
                default_subject: self.default_subject,
                destinations: self.destinations,
                content_types: self.content_types,
            }),
        })
    }

    fn options(&self) -> ConnectOptions {
        self.connect_options
            .clone()
            .unwrap_or_else(|| ConnectOptions::new().name("mink-nats"))
    }

    /// A publisher on an existing client (which keeps reconnecting on its own).
    ///
    /// # Errors
    /// [`NatsError::InvalidSubject`] or [`NatsError::InvalidConfig`] for a bad setting.
    pub fn build(self, client: Client) -> Result<NatsPublisher, NatsError> {
        let context = self.settings.context(client);
        self.finish(Link::Ready(context))
    }

    /// A publisher on an existing JetStream context, used as it is (its timeout is the
    /// ack timeout).
    ///
    /// # Errors
    /// [`NatsError::InvalidSubject`] or [`NatsError::InvalidConfig`] for a bad setting.
    pub fn build_with_context(
        self,
        context: jetstream::Context,
    ) -> Result<NatsPublisher, NatsError> {
        self.finish(Link::Ready(context))
    }

    /// Connects now to `url` (such as `nats://127.0.0.1:4222`; several servers
    /// separated by commas). Once connected, the client reconnects by itself when the
    /// connection drops, and publishes made meanwhile fail as retryable.
    ///
    /// # Errors
    /// [`NatsError::Connect`] when the server cannot be reached now;
    /// [`NatsError::InvalidSubject`] or [`NatsError::InvalidConfig`] for a bad setting.
    pub async fn connect(mut self, url: &str) -> Result<NatsPublisher, NatsError> {
        self.check()?;
        let client = self
            .options()
            .connect(url)
            .await
            .map_err(|source| NatsError::Connect {
                url: url.to_owned(),
                source,
            })?;
        self.build(client)
    }

    /// A publisher that connects to `url` on its first use: a server that cannot be
    /// reached then makes that publish fail as retryable, and the next one tries again.
    /// Suits a processor started before its broker.
    ///
    /// # Errors
    /// [`NatsError::InvalidSubject`] or [`NatsError::InvalidConfig`] for a bad setting.
    pub fn connect_lazily(self, url: &str) -> Result<NatsPublisher, NatsError> {
        let link = Link::Lazy {
            url: url.to_owned(),
            options: Box::new(self.options()),
            settings: self.settings,
            context: OnceCell::new(),
        };
        self.finish(link)
    }
}

/// A stream configuration for outbox messages: file storage, the given subjects (which
/// may hold wildcards, such as `mink.orders.>`), and a duplicate window within which a
/// repeated `Nats-Msg-Id` is dropped. Make the window longer than the longest time a
/// message may wait between two delivery attempts.
///
/// ```
/// use std::time::Duration;
/// let config = mink_nats::stream_config("ORDERS", ["mink.orders.>"], Duration::from_secs(600));
/// assert_eq!(config.duplicate_window, Duration::from_secs(600));
/// ```
pub fn stream_config(
    name: &str,
    subjects: impl IntoIterator<Item = impl Into<String>>,
    duplicate_window: Duration,
) -> stream::Config {
    stream::Config {
        name: name.to_owned(),
        subjects: subjects.into_iter().map(Into::into).collect(),
        duplicate_window,
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

impl NatsPublisher {
    /// A builder with the defaults.
    pub fn builder() -> NatsPublisherBuilder {
        NatsPublisherBuilder::default()
    }

    /// The JetStream context (connecting first if this publisher connects lazily).
    ///
    /// # Errors
    /// [`NatsError::Connect`] when a lazy publisher cannot connect.
    pub async fn jetstream(&self) -> Result<&jetstream::Context, NatsError> {
        match &self.inner.link {
            Link::Ready(c) => Ok(c),
            Link::Lazy {
                url,
                options,
                settings,
                context,
            } => {
                context
                    .get_or_try_init(|| async {
                        let client = ConnectOptions::clone(options)
                            .connect(url.as_str())
                            .await
                            .map_err(|source| NatsError::Connect {
                                url: url.clone(),
                                source,
                            })?;
                        Ok(settings.context(client))
                    })
                    .await
            }
        }
    }

    /// Creates the stream `config` describes, or returns the existing stream of that
    /// name unchanged — a setup helper for tests and deployments (see
    /// [`stream_config`]).
    ///
    /// # Errors
    /// [`NatsError::JetStream`] when the server refuses (for example subjects that
    /// overlap another stream's); [`NatsError::Connect`] as for
    /// [`NatsPublisher::jetstream`].
    pub async fn ensure_stream(&self, config: stream::Config) -> Result<stream::Stream, NatsError> {
        self.jetstream()
            .await?
            .get_or_create_stream(config)
            .await
            .map_err(|e| NatsError::JetStream(Box::new(e)))
    }

    /// The subject `message` is published to, or `None` when its destination has none
    /// (no template of its own and no default).
    pub fn subject_for(&self, message: &OutboxMessage) -> Option<String> {
        self.inner
            .destinations
            .get(&message.destination)
            .or(self.inner.default_subject.as_ref())
            .map(|t| t.render(message))
    }

    /// Sends one message, returning its pending ack.
    async fn send(
        &self,
        context: &jetstream::Context,
        m: &OutboxMessage,
    ) -> Result<PublishAckFuture, SendFailure> {
        let subject = self.subject_for(m).ok_or_else(|| SendFailure {
            error: PublishError::permanent(format!(
                "no NATS subject is configured for destination {:?}",
                m.destination
            )),
            stalled: false,
        })?;
        let content_type = self.inner.content_types.get(m.codec.as_str());
        let publish = PublishMessage::build()
            .payload(m.payload.clone())
            .headers(headers::for_message(m, content_type));
        context
            .send_publish(subject, publish)
            .await
            .map_err(|e| SendFailure {
                stalled: e.kind() == PublishErrorKind::TimedOut,
                error: classify(e),
            })
    }
}

/// A message that could not be sent.
struct SendFailure {
    error: PublishError,
    /// The client did not take it in time: it will not take the next ones either.
    stalled: bool,
}

/// The outcome of one ack.
fn settle(m: &OutboxMessage, ack: Result<PublishAck, JsPublishError>) -> Result<(), PublishError> {
    match ack {
        Ok(ack) => {
            if ack.duplicate {
                tracing::debug!(message = %m.id, stream = %ack.stream, sequence = ack.sequence,
                    "JetStream already holds this message id; the duplicate was dropped");
            }
            Ok(())
        }
        Err(e) => Err(classify(e)),
    }
}

/// Whether a JetStream publish error may heal: only what this message itself makes
/// unpublishable is permanent.
fn classify(e: JsPublishError) -> PublishError {
    let permanent = match e.kind() {
        // Larger than the server's max_payload: never accepted.
        PublishErrorKind::MaxPayloadExceeded => true,
        PublishErrorKind::Other => match std::error::Error::source(&e) {
            // A subject the client refuses.
            Some(s) if s.downcast_ref::<async_nats::SubjectError>().is_some() => true,
            // The stream refuses the message itself (too large for its max_msg_size,
            // headers too large).
            Some(s) => s.downcast_ref::<jetstream::Error>().is_some_and(|js| {
                let code = js.error_code();
                code == ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM
                    || code == ErrorCode::STREAM_HEADER_EXCEEDS_MAXIMUM
            }),
            None => false,
        },
        // TimedOut, BrokenPipe, MaxAckPending: the connection or the server.
        // StreamNotFound ("no responders"): no stream listens on the subject yet, or
        // a clustered stream is electing a leader; both can heal.
        _ => false,
    };
    if permanent {
        PublishError::permanent(e)
    } else {
        PublishError::retryable(e)
    }
}

impl Publisher for NatsPublisher {
    fn publish<'a>(
        &'a self,
        message: &'a OutboxMessage,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        let span = tracing::debug_span!("mink.nats.publish", messages = 1);
        Box::pin(
            async move {
                let context = self.jetstream().await.map_err(PublishError::retryable)?;
                let ack = self.send(context, message).await.map_err(|f| f.error)?;
                settle(message, ack.await)
            }
            .instrument(span),
        )
    }

    fn publish_batch<'a>(
        &'a self,
        messages: &'a [OutboxMessage],
    ) -> BoxFuture<'a, Vec<Result<(), PublishError>>> {
        let span = tracing::debug_span!("mink.nats.publish", messages = messages.len());
        Box::pin(
            async move {
                let context = match self.jetstream().await {
                    Ok(c) => c,
                    Err(e) => {
                        let e = e.to_string();
                        return messages
                            .iter()
                            .map(|_| Err(PublishError::retryable(e.clone())))
                            .collect();
                    }
                };
                // Send everything, then await the acks together.
                let mut pending = Vec::with_capacity(messages.len());
                let mut stalled = false;
                for m in messages {
                    if stalled {
                        // Do not wait again for each of the rest.
                        pending.push(Err(PublishError::retryable(
                            "not sent: the NATS client did not take the batch's messages in time",
                        )));
                        continue;
                    }
                    pending.push(self.send(context, m).await.map_err(|f| {
                        stalled = f.stalled;
                        f.error
                    }));
                }
                futures::future::join_all(pending.into_iter().zip(messages).map(
                    |(sent, m)| async move {
                        match sent {
                            Ok(ack) => settle(m, ack.await),
                            Err(e) => Err(e),
                        }
                    },
                ))
                .await
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_fail_the_build() {
        let e = NatsPublisher::builder()
            .destination("orders", "a..b")
            .connect_lazily("nats://127.0.0.1:1")
            .unwrap_err();
        assert!(matches!(e, NatsError::InvalidSubject { .. }), "{e}");
        let e = NatsPublisher::builder()
            .ack_timeout(Duration::ZERO)
            .connect_lazily("nats://127.0.0.1:1")
            .unwrap_err();
        assert!(matches!(e, NatsError::InvalidConfig(_)), "{e}");
    }

    #[test]
    fn errors_that_the_message_causes_are_permanent() {
        let too_large = JsPublishError::new(PublishErrorKind::MaxPayloadExceeded);
        assert!(classify(too_large).is_permanent());
        let subject = JsPublishError::with_source(
            PublishErrorKind::Other,
            async_nats::SubjectError::InvalidFormat,
        );
        assert!(classify(subject).is_permanent());
        for kind in [
            PublishErrorKind::TimedOut,
            PublishErrorKind::BrokenPipe,
            PublishErrorKind::StreamNotFound,
            PublishErrorKind::MaxAckPending,
            PublishErrorKind::Other,
        ] {
            assert!(
                !classify(JsPublishError::new(kind)).is_permanent(),
                "{kind:?}"
            );
        }
    }
}
