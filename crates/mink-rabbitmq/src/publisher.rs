//! [`RabbitPublisher`]: outbox messages to RabbitMQ exchanges, with publisher confirms.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::types::{FieldTable, ShortString};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ErrorKind,
    ExchangeKind,
};
use mink_es::outbox::{OutboxMessage, PublishError, Publisher};
use tracing::Instrument;

use crate::{ContentTypes, RabbitError, RoutingKeyTemplate, headers};

/// The default wait for a publisher confirm.
pub const DEFAULT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// The default wait for a connection (TCP, login, channel).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a message the broker returns as unroutable amounts to.
///
/// With `mandatory` set (the default), a message that no queue is bound to take is
/// returned by the broker instead of being dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnUnroutable {
    /// A retryable failure (the default). An unroutable message most often means the
    /// consumer's queue or binding does not exist *yet* (a deployment order, a queue
    /// being re-created), which heals by itself: the processor retries with backoff,
    /// keeps the stream's later messages behind it (order holds), and still moves it to
    /// the dead-letter queue once the attempt limit is reached.
    #[default]
    Retry,
    /// A permanent failure: the message goes to the dead-letter queue at once, and the
    /// stream's later messages go on. Suits topologies where "no queue wants this" is
    /// final.
    DeadLetter,
}

/// Publishes outbox messages to RabbitMQ exchanges with publisher confirms: a publish
/// returns `Ok` only once the broker has confirmed the message (for a persistent
/// message routed to durable queues: written to disk).
///
/// Build one with [`RabbitPublisher::builder`]. It is cheap to clone (clones share the
/// connection) and can serve several destinations of one
/// [`OutboxProcessor`](mink_es::outbox::OutboxProcessor).
///
/// * **Where**: each destination has an exchange and a [`RoutingKeyTemplate`]: its own
///   ([`RabbitPublisherBuilder::destination`]) or the defaults (the exchange named like
///   the destination unless [`RabbitPublisherBuilder::exchange`] names one, and the
///   routing key `{category}.{event_type}` unless
///   [`RabbitPublisherBuilder::routing_key`] changes it).
/// * **What**: persistent (`delivery_mode` 2), `message_id` = the outbox message id,
///   the event metadata in properties and headers (see [`headers`](crate::headers)),
///   `content_type` from the codec.
/// * **Batches**: [`Publisher::publish_batch`] publishes every message on the channel
///   and then awaits all the confirms.
/// * **Connection**: one connection with one confirm-mode channel, opened on first use;
///   when it drops (or a channel error closes the channel), the next publish opens a
///   new one.
///
/// See the [crate docs](crate) for the error classification.
#[derive(Clone)]
pub struct RabbitPublisher {
    inner: Arc<Inner>,
}

struct Inner {
    uri: AMQPUri,
    url: String,
    properties: ConnectionProperties,
    config: Config,
    default_target: Option<Target>,
    destinations: HashMap<String, Target>,
    content_types: ContentTypes,
    app_id: Option<ShortString>,
    link: tokio::sync::Mutex<Option<Link>>,
    next_link: AtomicU64,
}

#[derive(Clone, Copy, Debug)]
struct Config {
    confirm_timeout: Duration,
    connect_timeout: Duration,
    mandatory: bool,
    on_unroutable: OnUnroutable,
    check_exchanges: bool,
}

#[derive(Clone, Debug)]
enum Exchange {
    /// The exchange named like the message's destination.
    Destination,
    Named(String),
}

#[derive(Clone, Debug)]
struct Target {
    exchange: Exchange,
    routing_key: RoutingKeyTemplate,
}

/// The connection and its publishing channel.
struct Link {
    id: u64,
    connection: Arc<Connection>,
    channel: Channel,
    /// Exchanges known to exist on this connection.
    checked: HashSet<String>,
}

/// What one publish needs.
struct Prepared<'m> {
    exchange: ShortString,
    routing_key: ShortString,
    properties: BasicProperties,
    payload: &'m [u8],
}

impl fmt::Debug for RabbitPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitPublisher")
            .field("url", &self.inner.url)
            .field("config", &self.inner.config)
            .field("default_target", &self.inner.default_target)
            .field("destinations", &self.inner.destinations)
            .field("content_types", &self.inner.content_types)
            .finish_non_exhaustive()
    }
}

/// Configures a [`RabbitPublisher`]; made by [`RabbitPublisher::builder`].
///
/// A setting that is invalid (a bad routing key template, a zero timeout) is reported
/// when the publisher is built.
#[must_use]
pub struct RabbitPublisherBuilder {
    default_exchange: Exchange,
    default_routing_key: RoutingKeyTemplate,
    only_listed: bool,
    destinations: HashMap<String, Target>,
    config: Config,
    content_types: ContentTypes,
    app_id: Option<String>,
    properties: Option<ConnectionProperties>,
    error: Option<RabbitError>,
}

impl fmt::Debug for RabbitPublisherBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitPublisherBuilder")
            .field("default_exchange", &self.default_exchange)
            .field("default_routing_key", &self.default_routing_key)
            .field("only_listed", &self.only_listed)
            .field("destinations", &self.destinations)
            .field("config", &self.config)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl Default for RabbitPublisherBuilder {
    fn default() -> Self {
        RabbitPublisherBuilder {
            default_exchange: Exchange::Destination,
            default_routing_key: RoutingKeyTemplate::default(),
            only_listed: false,
            destinations: HashMap::new(),
            config: Config {
                confirm_timeout: DEFAULT_CONFIRM_TIMEOUT,
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                mandatory: true,
                on_unroutable: OnUnroutable::Retry,
                check_exchanges: true,
            },
            content_types: ContentTypes::default(),
            app_id: None,
            properties: None,
            error: None,
        }
    }
}

fn check_exchange_name(name: &str) -> Result<(), RabbitError> {
    if name.len() > headers::MAX_SHORT {
        return Err(RabbitError::InvalidConfig(format!(
            "an exchange name is at most {} bytes, not {}",
            headers::MAX_SHORT,
            name.len()
        )));
    }
    Ok(())
}

impl RabbitPublisherBuilder {
    fn fail(&mut self, e: RabbitError) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    /// The exchange of every destination without its own (default: the exchange named
    /// like the destination). `""` is the default exchange, which routes to the queue
    /// named by the routing key.
    pub fn exchange(mut self, name: impl Into<String>) -> Self {
        let name = name.into();
        match check_exchange_name(&name) {
            Ok(()) => self.default_exchange = Exchange::Named(name),
            Err(e) => self.fail(e),
        }
        self
    }

    /// The routing key template of every destination without its own (default
    /// `{category}.{event_type}`; see [`RoutingKeyTemplate`]).
    pub fn routing_key(mut self, template: &str) -> Self {
        match RoutingKeyTemplate::new(template) {
            Ok(t) => self.default_routing_key = t,
            Err(e) => self.fail(e),
        }
        self
    }

    /// The exchange and routing key template of one destination.
    pub fn destination(
        mut self,
        destination: impl Into<String>,
        exchange: impl Into<String>,
        routing_key: &str,
    ) -> Self {
        let exchange = exchange.into();
        if let Err(e) = check_exchange_name(&exchange) {
            self.fail(e);
            return self;
        }
        match RoutingKeyTemplate::new(routing_key) {
            Ok(routing_key) => {
                self.destinations.insert(
                    destination.into(),
                    Target {
                        exchange: Exchange::Named(exchange),
                        routing_key,
                    },
                );
            }
            Err(e) => self.fail(e),
        }
        self
    }

    /// No defaults: only the destinations given with
    /// [`RabbitPublisherBuilder::destination`] are published, and a message for any
    /// other destination fails permanently (it goes to the dead-letter queue).
    pub fn only_listed_destinations(mut self) -> Self {
        self.only_listed = true;
        self
    }

    /// Whether messages are published `mandatory` (default true): the broker returns a
    /// message no queue takes, and [`RabbitPublisherBuilder::on_unroutable`] decides
    /// what that means. Without it the broker drops such a message (or hands it to the
    /// exchange's alternate exchange) and the publish succeeds.
    pub fn mandatory(mut self, mandatory: bool) -> Self {
        self.config.mandatory = mandatory;
        self
    }

    /// What a returned, unroutable message amounts to (default
    /// [`OnUnroutable::Retry`]).
    pub fn on_unroutable(mut self, policy: OnUnroutable) -> Self {
        self.config.on_unroutable = policy;
        self
    }

    /// How long to wait for a publisher confirm before the attempt counts as failed and
    /// retryable (default 10 s). A confirm that does not come also makes the publisher
    /// open a new connection for the next publish.
    pub fn confirm_timeout(mut self, timeout: Duration) -> Self {
        if timeout.is_zero() {
            self.fail(RabbitError::InvalidConfig(
                "the confirm timeout must be above zero".into(),
            ));
        }
        self.config.confirm_timeout = timeout;
        self
    }

    /// How long to wait for a connection and its channel (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        if timeout.is_zero() {
            self.fail(RabbitError::InvalidConfig(
                "the connect timeout must be above zero".into(),
            ));
        }
        self.config.connect_timeout = timeout;
        self
    }

    /// Whether the publisher checks, once per connection, that each exchange it
    /// publishes to exists (a passive declare on a separate channel; default true).
    /// A missing exchange then fails its messages permanently without closing the
    /// publishing channel under the other messages in flight. A check the broker does
    /// not answer with "found" or "not found" (no permission, no answer in time) is
    /// skipped, and the publish decides. Without the check, a missing exchange is still
    /// pinned on its own messages, at the cost of re-publishing the others of the
    /// batch on separate channels.
    pub fn check_exchanges(mut self, check: bool) -> Self {
        self.config.check_exchanges = check;
        self
    }

    /// The `content_type` of each codec (see [`ContentTypes`]).
    pub fn content_types(mut self, content_types: ContentTypes) -> Self {
        self.content_types = content_types;
        self
    }

    /// The `app_id` property of every message (default: none).
    pub fn app_id(mut self, app_id: impl Into<String>) -> Self {
        let app_id = app_id.into();
        if headers::short(&app_id).is_none() {
            self.fail(RabbitError::InvalidConfig(
                "the app id is at most 255 bytes".into(),
            ));
        }
        self.app_id = Some(app_id);
        self
    }

    /// The connection properties (client properties, connection name, auth
    /// provider). Default: lapin's defaults with the connection name `mink-rabbitmq`.
    pub fn connection_properties(mut self, properties: ConnectionProperties) -> Self {
        self.properties = Some(properties);
        self
    }

    /// A publisher for the broker at `url` (such as
    /// `amqp://guest:guest@127.0.0.1:5672/%2f`) that connects on its first publish. A
    /// broker that cannot be reached makes that publish fail as retryable, and the next
    /// one tries again.
    ///
    /// # Errors
    /// [`RabbitError::InvalidUrl`], [`RabbitError::InvalidRoutingKey`] or
    /// [`RabbitError::InvalidConfig`] for a bad setting.
    pub fn connect_lazily(self, url: &str) -> Result<RabbitPublisher, RabbitError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let uri: AMQPUri = url
            .parse()
            .map_err(|e: String| RabbitError::InvalidUrl(e))?;
        if uri.scheme == AMQPScheme::AMQPS && !cfg!(feature = "tls-rustls") {
            return Err(RabbitError::InvalidUrl(
                "amqps:// needs the `tls-rustls` feature of mink-rabbitmq".into(),
            ));
        }
        let shown = format!(
            "{}://{}:{}/{}",
            if uri.scheme == AMQPScheme::AMQPS {
                "amqps"
            } else {
                "amqp"
            },
            uri.authority.host,
            uri.authority.port,
            uri.vhost
        );
        let default_target = (!self.only_listed).then_some(Target {
            exchange: self.default_exchange,
            routing_key: self.default_routing_key,
        });
        Ok(RabbitPublisher {
            inner: Arc::new(Inner {
                uri,
                url: shown,
                properties: self.properties.unwrap_or_else(|| {
                    ConnectionProperties::default().with_connection_name("mink-rabbitmq".into())
                }),
                config: self.config,
                default_target,
                destinations: self.destinations,
                content_types: self.content_types,
                app_id: self.app_id.as_deref().and_then(headers::short),
                link: tokio::sync::Mutex::new(None),
                next_link: AtomicU64::new(1),
            }),
        })
    }

    /// Connects now to the broker at `url` and opens the publishing channel. Later,
    /// a dropped connection is re-established on the next publish.
    ///
    /// # Errors
    /// [`RabbitError::Connect`] when the broker cannot be reached (or refuses the
    /// login) now; the errors of [`RabbitPublisherBuilder::connect_lazily`].
    pub async fn connect(self, url: &str) -> Result<RabbitPublisher, RabbitError> {
        let publisher = self.connect_lazily(url)?;
        publisher.link(&BTreeSet::new()).await?;
        Ok(publisher)
    }
}

/// How an error of one publish is to be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// This message can never be published.
    Permanent,
    /// The connection or the broker: try again later.
    Retryable,
    /// The channel was closed: by this message, or by another one on the same channel.
    /// Only publishing the message alone tells.
    ChannelClosed,
}

fn class(e: &lapin::Error) -> Class {
    match e.kind() {
        ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Soft(_) => Class::ChannelClosed,
            // A frame sent on a channel the broker had just closed (for another
            // message's error) makes the broker close the whole connection with
            // CHANNEL_ERROR: this message did nothing wrong.
            AMQPErrorKind::Hard(AMQPHardError::CHANNELERROR) => Class::ChannelClosed,
            AMQPErrorKind::Hard(_) => Class::Retryable,
        },
        ErrorKind::InvalidChannelState(..) | ErrorKind::InvalidChannel(_) => Class::ChannelClosed,
        // Frames this message's properties or body cannot be encoded into.
        ErrorKind::SerialisationError(_) => Class::Permanent,
        _ => Class::Retryable,
    }
}

/// The verdict on an error of a message published alone on its channel.
fn alone_verdict(e: lapin::Error) -> PublishError {
    let permanent = match e.kind() {
        ErrorKind::ProtocolError(amqp) => matches!(
            amqp.kind(),
            AMQPErrorKind::Soft(
                AMQPSoftError::NOTFOUND
                    | AMQPSoftError::ACCESSREFUSED
                    | AMQPSoftError::PRECONDITIONFAILED
                    | AMQPSoftError::CONTENTTOOLARGE
            )
        ),
        ErrorKind::SerialisationError(_) => true,
        _ => false,
    };
    if permanent {
        PublishError::permanent(e)
    } else {
        PublishError::retryable(e)
    }
}

/// Whether the broker answered "not found" (for a publish: no such exchange).
fn is_not_found(e: &lapin::Error) -> bool {
    matches!(e.kind(), ErrorKind::ProtocolError(amqp)
        if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)))
}

/// Splits messages to publish apart: by exchange when there are several, else in
/// halves. Each part is smaller than the whole.
fn split<'a>(mut items: Vec<(usize, &'a Prepared<'a>)>) -> Vec<Vec<(usize, &'a Prepared<'a>)>> {
    let mut by_exchange: Vec<Vec<(usize, &'a Prepared<'a>)>> = Vec::new();
    for item in &items {
        match by_exchange
            .iter_mut()
            .find(|part| part[0].1.exchange == item.1.exchange)
        {
            Some(part) => part.push(*item),
            None => by_exchange.push(vec![*item]),
        }
    }
    if by_exchange.len() > 1 {
        return by_exchange;
    }
    let right = items.split_off(items.len() / 2);
    [items, right]
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect()
}

fn timed_out(what: &str, after: Duration) -> lapin::Error {
    lapin::Error::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what}: no answer from RabbitMQ within {after:?}"),
    ))
}

impl RabbitPublisher {
    /// A builder with the defaults.
    pub fn builder() -> RabbitPublisherBuilder {
        RabbitPublisherBuilder::default()
    }

    /// The exchange and routing key `message` is published with, or `None` when its
    /// destination has none (only listed destinations are published, and it is not
    /// one of them).
    pub fn route_for(&self, message: &OutboxMessage) -> Option<(String, String)> {
        let target = self
            .inner
            .destinations
            .get(&message.destination)
            .or(self.inner.default_target.as_ref())?;
        let exchange = match &target.exchange {
            Exchange::Destination => message.destination.clone(),
            Exchange::Named(name) => name.clone(),
        };
        Some((exchange, target.routing_key.render(message)))
    }

    /// Declares a durable exchange of `kind` named `name` (or checks that it exists as
    /// declared) — a setup helper for tests and deployments.
    ///
    /// # Errors
    /// [`RabbitError::Amqp`] when the broker refuses (an exchange of that name exists
    /// with other settings, no permission); [`RabbitError::Connect`].
    pub async fn declare_exchange(
        &self,
        name: &str,
        kind: ExchangeKind,
    ) -> Result<(), RabbitError> {
        check_exchange_name(name)?;
        let link = self.link(&BTreeSet::new()).await?.0;
        let t = self.inner.config.connect_timeout;
        let work = async {
            let channel = link.connection.create_channel().await?;
            channel
                .exchange_declare(
                    name.into(),
                    kind,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            channel.close(200, "OK".into()).await
        };
        match tokio::time::timeout(t, work).await {
            Ok(r) => r.map_err(|e| RabbitError::Amqp(Box::new(e))),
            Err(_) => Err(RabbitError::Amqp(Box::new(timed_out(
                "exchange.declare",
                t,
            )))),
        }
    }

    /// Closes the connection (waiting at most the connect timeout). A later publish
    /// opens a new one.
    pub async fn close(&self) {
        let link = self.inner.link.lock().await.take();
        if let Some(link) = link {
            let _ = tokio::time::timeout(
                self.inner.config.connect_timeout,
                link.connection.close(200, "OK".into()),
            )
            .await;
        }
    }

    async fn connect_now(&self) -> Result<Connection, RabbitError> {
        let t = self.inner.config.connect_timeout;
        let failed = |reason: String, source: Option<lapin::Error>| RabbitError::Connect {
            url: self.inner.url.clone(),
            reason,
            source: source.map(Box::new),
        };
        match tokio::time::timeout(
            t,
            Connection::connect_uri(self.inner.uri.clone(), self.inner.properties.clone()),
        )
        .await
        {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(failed(e.to_string(), Some(e))),
            Err(_) => Err(failed(format!("no answer within {t:?}"), None)),
        }
    }

    /// A new channel in confirm mode.
    async fn open_channel(&self, connection: &Connection) -> Result<Channel, lapin::Error> {
        let t = self.inner.config.connect_timeout;
        let work = async {
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok(channel)
        };
        tokio::time::timeout(t, work)
            .await
            .unwrap_or_else(|_| Err(timed_out("channel.open", t)))
    }

    /// Whether `exchange` exists (a passive declare on a channel of its own, since a
    /// missing exchange closes the channel).
    async fn exchange_exists(
        &self,
        connection: &Connection,
        exchange: &str,
    ) -> Result<(), lapin::Error> {
        let t = self.inner.config.connect_timeout;
        let work = async {
            let channel = connection.create_channel().await?;
            channel
                .exchange_declare(
                    exchange.into(),
                    ExchangeKind::Direct,
                    ExchangeDeclareOptions {
                        passive: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            let _ = channel.close(200, "OK".into()).await;
            Ok(())
        };
        tokio::time::timeout(t, work)
            .await
            .unwrap_or_else(|_| Err(timed_out("exchange.declare (passive)", t)))
    }

    /// The current link (re-established if it dropped), and the exchanges among
    /// `exchanges` that do not exist, with the broker's answer.
    async fn link(
        &self,
        exchanges: &BTreeSet<&str>,
    ) -> Result<(LinkHandle, HashMap<String, lapin::Error>), RabbitError> {
        let mut guard = self.inner.link.lock().await;
        let reusable = guard
            .as_ref()
            .is_some_and(|l| l.connection.status().connected());
        if !reusable {
            // Dropping the old link (if any) closes its connection.
            *guard = None;
            let connection = self.connect_now().await?;
            let channel =
                self.open_channel(&connection)
                    .await
                    .map_err(|e| RabbitError::Connect {
                        url: self.inner.url.clone(),
                        reason: format!("cannot open a channel: {e}"),
                        source: Some(Box::new(e)),
                    })?;
            let id = self.inner.next_link.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(url = %self.inner.url, link = id, "connected to RabbitMQ");
            *guard = Some(Link {
                id,
                connection: Arc::new(connection),
                channel,
                checked: HashSet::new(),
            });
        }
        let Some(link) = guard.as_mut() else {
            return Err(RabbitError::InvalidConfig("no connection".into()));
        };
        if !link.channel.status().connected() {
            // A channel error closed it; the connection is fine.
            link.channel =
                self.open_channel(&link.connection)
                    .await
                    .map_err(|e| RabbitError::Connect {
                        url: self.inner.url.clone(),
                        reason: format!("cannot open a channel: {e}"),
                        source: Some(Box::new(e)),
                    })?;
        }
        let mut missing = HashMap::new();
        if self.inner.config.check_exchanges {
            for exchange in exchanges {
                if exchange.is_empty() || link.checked.contains(*exchange) {
                    continue;
                }
                match self.exchange_exists(&link.connection, exchange).await {
                    Ok(()) => {
                        link.checked.insert((*exchange).to_owned());
                    }
                    Err(e) if is_not_found(&e) => {
                        missing.insert((*exchange).to_owned(), e);
                    }
                    // Anything else (no permission to check, a timeout) tells nothing:
                    // publish, and let the broker's answer decide.
                    Err(e) => {
                        tracing::debug!(exchange = *exchange, error = %e, "cannot check that the exchange exists");
                    }
                }
            }
        }
        Ok((
            LinkHandle {
                id: link.id,
                connection: link.connection.clone(),
                channel: link.channel.clone(),
            },
            missing,
        ))
    }

    /// Drops link `id` if it is still the current one: the next publish reconnects.
    async fn invalidate(&self, id: u64) {
        let mut guard = self.inner.link.lock().await;
        if guard.as_ref().is_some_and(|l| l.id == id) {
            tracing::debug!(
                link = id,
                "dropping the RabbitMQ connection; the next publish reconnects"
            );
            *guard = None;
        }
    }

    fn prepare<'m>(&self, m: &'m OutboxMessage) -> Result<Prepared<'m>, PublishError> {
        let (exchange, routing_key) = self.route_for(m).ok_or_else(|| {
            PublishError::permanent(format!(
                "no RabbitMQ exchange is configured for destination {:?}",
                m.destination
            ))
        })?;
        let exchange = ShortString::try_new(exchange).map_err(|e| {
            PublishError::permanent(format!(
                "exchange name for destination {:?} is too long: {e}",
                m.destination
            ))
        })?;
        let routing_key = ShortString::try_new(routing_key)
            .map_err(|e| PublishError::permanent(format!("routing key too long: {e}")))?;
        let content_type = self.inner.content_types.get(m.codec.as_str());
        Ok(Prepared {
            exchange,
            routing_key,
            properties: headers::properties(m, content_type, self.inner.app_id.as_ref()),
            payload: &m.payload,
        })
    }

    fn settle(&self, confirmation: Confirmation) -> Result<(), PublishError> {
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) => {
                let reason = format!(
                    "unroutable: RabbitMQ returned the message ({} {}): no queue is bound to exchange {:?} for routing key {:?}",
                    returned.reply_code,
                    returned.reply_text,
                    returned.delivery.exchange.as_str(),
                    returned.delivery.routing_key.as_str()
                );
                match self.inner.config.on_unroutable {
                    OnUnroutable::Retry => Err(PublishError::retryable(reason)),
                    OnUnroutable::DeadLetter => Err(PublishError::permanent(reason)),
                }
            }
            Confirmation::Nack(_) => Err(PublishError::retryable(
                "RabbitMQ nacked the message (it could not take responsibility for it)",
            )),
            Confirmation::NotRequested => Err(PublishError::retryable(
                "the channel is not in confirm mode, so delivery is unconfirmed",
            )),
        }
    }

    /// Publishes every item on `channel`, then awaits every confirm.
    async fn publish_all(
        &self,
        channel: &Channel,
        items: &[(usize, &Prepared<'_>)],
    ) -> Vec<(usize, Result<Confirmation, Failure>)> {
        let t = self.inner.config.confirm_timeout;
        let options = BasicPublishOptions {
            mandatory: self.inner.config.mandatory,
            immediate: false,
        };
        let mut out = Vec::with_capacity(items.len());
        let mut confirms = Vec::with_capacity(items.len());
        let mut stalled = false;
        for &(i, p) in items {
            if stalled {
                // The channel does not take frames (a blocked or dead connection): do
                // not wait again for each message.
                out.push((i, Err(Failure::TimedOut)));
                continue;
            }
            let sent = tokio::time::timeout(
                t,
                channel.basic_publish(
                    p.exchange.clone(),
                    p.routing_key.clone(),
                    options,
                    p.payload,
                    p.properties.clone(),
                ),
            )
            .await;
            match sent {
                Ok(Ok(confirm)) => confirms.push((i, confirm)),
                Ok(Err(e)) => out.push((i, Err(Failure::Error(e)))),
                Err(_) => {
                    stalled = true;
                    out.push((i, Err(Failure::TimedOut)));
                }
            }
        }
        let confirmed =
            futures::future::join_all(confirms.into_iter().map(|(i, confirm)| async move {
                match tokio::time::timeout(t, confirm).await {
                    Ok(Ok(c)) => (i, Ok(c)),
                    Ok(Err(e)) => (i, Err(Failure::Error(e))),
                    Err(_) => (i, Err(Failure::TimedOut)),
                }
            }))
            .await;
        out.extend(confirmed);
        out
    }

    /// Publishes `items` on a channel of their own, splitting the set until each
    /// channel-closing error is pinned on the message that caused it.
    fn isolate<'a>(
        &'a self,
        connection: &'a Connection,
        items: Vec<(usize, &'a Prepared<'a>)>,
    ) -> BoxFuture<'a, Vec<(usize, Result<(), PublishError>)>> {
        Box::pin(async move {
            let channel = match self.open_channel(connection).await {
                Ok(c) => c,
                Err(e) => {
                    return items
                        .iter()
                        .map(|&(i, _)| (i, Err(PublishError::retryable(e.clone()))))
                        .collect();
                }
            };
            let alone = items.len() == 1;
            // On a channel that only one exchange was published to, "not found" names
            // that exchange: every message to it fails the same way.
            let one_exchange = items.windows(2).all(|w| w[0].1.exchange == w[1].1.exchange);
            let mut out = Vec::with_capacity(items.len());
            let mut again = Vec::new();
            let mut missing_exchange = None;
            let by_index: HashMap<usize, &Prepared<'_>> = items.iter().copied().collect();
            for (i, result) in self.publish_all(&channel, &items).await {
                match result {
                    Ok(c) => out.push((i, self.settle(c))),
                    Err(Failure::TimedOut) => out.push((i, Err(self.confirm_timed_out()))),
                    Err(Failure::Error(e)) => match class(&e) {
                        Class::ChannelClosed if one_exchange && is_not_found(&e) => {
                            missing_exchange = Some(e.clone());
                            out.push((i, Err(alone_verdict(e))));
                        }
                        Class::ChannelClosed if !alone && connection.status().connected() => {
                            if let Some(p) = by_index.get(&i) {
                                again.push((i, *p));
                            }
                        }
                        Class::ChannelClosed => out.push((i, Err(alone_verdict(e)))),
                        Class::Permanent => out.push((i, Err(PublishError::permanent(e)))),
                        Class::Retryable => out.push((i, Err(PublishError::retryable(e)))),
                    },
                }
            }
            if channel.status().connected() {
                let _ = channel.close(200, "OK".into()).await;
            }
            if let Some(e) = missing_exchange {
                // The others failed for the same reason.
                out.extend(
                    again
                        .drain(..)
                        .map(|(i, _)| (i, Err(alone_verdict(e.clone())))),
                );
            }
            if !again.is_empty() {
                again.sort_by_key(|(i, _)| *i);
                for part in split(again) {
                    out.extend(self.isolate(connection, part).await);
                }
            }
            out
        })
    }

    fn confirm_timed_out(&self) -> PublishError {
        PublishError::retryable(timed_out(
            "publisher confirm",
            self.inner.config.confirm_timeout,
        ))
    }

    async fn deliver(&self, messages: &[OutboxMessage]) -> Vec<Result<(), PublishError>> {
        let mut results: Vec<Option<Result<(), PublishError>>> =
            messages.iter().map(|_| None).collect();
        let mut prepared: Vec<Option<Prepared<'_>>> = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            match self.prepare(m) {
                Ok(p) => prepared.push(Some(p)),
                Err(e) => {
                    results[i] = Some(Err(e));
                    prepared.push(None);
                }
            }
        }
        let exchanges: BTreeSet<&str> = prepared
            .iter()
            .flatten()
            .map(|p| p.exchange.as_str())
            .collect();
        if !exchanges.is_empty() {
            match self.link(&exchanges).await {
                Err(e) => {
                    let e = e.to_string();
                    for r in results.iter_mut().filter(|r| r.is_none()) {
                        *r = Some(Err(PublishError::retryable(e.clone())));
                    }
                }
                Ok((link, missing)) => {
                    for (i, p) in prepared.iter_mut().enumerate() {
                        if let Some(e) = p.as_ref().and_then(|p| missing.get(p.exchange.as_str())) {
                            results[i] = Some(Err(alone_verdict(e.clone())));
                            *p = None;
                        }
                    }
                    let lost = self.deliver_on(&link, &prepared, &mut results).await;
                    if !lost.is_empty() {
                        // The connection went down under messages that failed only
                        // because a channel closed: once more, on a fresh connection.
                        self.invalidate(link.id).await;
                        let mut again = prepared;
                        for (i, p) in again.iter_mut().enumerate() {
                            if !lost.contains(&i) {
                                *p = None;
                            }
                        }
                        let exchanges: BTreeSet<&str> = again
                            .iter()
                            .flatten()
                            .map(|p| p.exchange.as_str())
                            .collect();
                        match self.link(&exchanges).await {
                            Ok((link, _)) => {
                                let still = self.deliver_on(&link, &again, &mut results).await;
                                for i in still {
                                    results[i] = Some(Err(PublishError::retryable(
                                        "the RabbitMQ connection closed during the publish",
                                    )));
                                }
                            }
                            Err(e) => {
                                let e = e.to_string();
                                for i in lost {
                                    results[i] = Some(Err(PublishError::retryable(e.clone())));
                                }
                            }
                        }
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| Err(PublishError::retryable("the message was not attempted")))
            })
            .collect()
    }

    /// Publishes the prepared messages on `link`, recording each result; returns the
    /// messages whose channel closed while the connection went down (their results are
    /// left unset): only a fresh connection can tell whether they can be delivered.
    async fn deliver_on(
        &self,
        link: &LinkHandle,
        prepared: &[Option<Prepared<'_>>],
        results: &mut [Option<Result<(), PublishError>>],
    ) -> Vec<usize> {
        let items: Vec<(usize, &Prepared<'_>)> = prepared
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|p| (i, p)))
            .collect();
        if items.is_empty() {
            return Vec::new();
        }
        let mut stalled = false;
        let mut closed = Vec::new();
        for (i, result) in self.publish_all(&link.channel, &items).await {
            results[i] = match result {
                Ok(c) => Some(self.settle(c)),
                Err(Failure::TimedOut) => {
                    stalled = true;
                    Some(Err(self.confirm_timed_out()))
                }
                Err(Failure::Error(e)) => match class(&e) {
                    Class::ChannelClosed => {
                        closed.push((i, e));
                        None
                    }
                    Class::Permanent => Some(Err(PublishError::permanent(e))),
                    Class::Retryable => Some(Err(PublishError::retryable(e))),
                },
            };
        }
        if stalled {
            // The connection may be dead without knowing it: start afresh next time.
            self.invalidate(link.id).await;
        }
        if closed.is_empty() {
            return Vec::new();
        }
        if !link.connection.status().connected() {
            return closed.into_iter().map(|(i, _)| i).collect();
        }
        // The shared channel was closed under these messages, by one of them or by
        // another message on it: publish them again, apart, to know which.
        tracing::debug!(
            messages = closed.len(),
            "the RabbitMQ channel was closed during a batch; re-publishing its messages apart"
        );
        let again: Vec<(usize, &Prepared<'_>)> = closed
            .iter()
            .filter_map(|(i, _)| prepared[*i].as_ref().map(|p| (*i, p)))
            .collect();
        for (i, r) in self.isolate(&link.connection, again).await {
            results[i] = Some(r);
        }
        Vec::new()
    }
}

/// A handle on the current link, used outside its lock.
struct LinkHandle {
    id: u64,
    connection: Arc<Connection>,
    channel: Channel,
}

/// Why one publish has no confirmation.
enum Failure {
    Error(lapin::Error),
    TimedOut,
}

impl Publisher for RabbitPublisher {
    fn publish<'a>(
        &'a self,
        message: &'a OutboxMessage,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        let span = tracing::debug_span!("mink.rabbitmq.publish", messages = 1);
        Box::pin(
            async move {
                self.deliver(std::slice::from_ref(message))
                    .await
                    .pop()
                    .unwrap_or_else(|| {
                        Err(PublishError::retryable("the message was not attempted"))
                    })
            }
            .instrument(span),
        )
    }

    fn publish_batch<'a>(
        &'a self,
        messages: &'a [OutboxMessage],
    ) -> BoxFuture<'a, Vec<Result<(), PublishError>>> {
        let span = tracing::debug_span!("mink.rabbitmq.publish", messages = messages.len());
        Box::pin(self.deliver(messages).instrument(span))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_fail_the_build() {
        let e = RabbitPublisher::builder()
            .routing_key("{nope}")
            .connect_lazily("amqp://127.0.0.1:1/%2f")
            .unwrap_err();
        assert!(matches!(e, RabbitError::InvalidRoutingKey { .. }), "{e}");
        let e = RabbitPublisher::builder()
            .confirm_timeout(Duration::ZERO)
            .connect_lazily("amqp://127.0.0.1:1/%2f")
            .unwrap_err();
        assert!(matches!(e, RabbitError::InvalidConfig(_)), "{e}");
        let e = RabbitPublisher::builder()
            .exchange("x".repeat(256))
            .connect_lazily("amqp://127.0.0.1:1/%2f")
            .unwrap_err();
        assert!(matches!(e, RabbitError::InvalidConfig(_)), "{e}");
        let e = RabbitPublisher::builder()
            .connect_lazily("http://[::1")
            .unwrap_err();
        assert!(matches!(e, RabbitError::InvalidUrl(_)), "{e}");
    }

    #[test]
    fn the_url_is_shown_without_credentials() {
        let p = RabbitPublisher::builder()
            .connect_lazily("amqp://guest:secret@127.0.0.1:5672/%2f")
            .unwrap();
        let shown = format!("{p:?}");
        assert!(shown.contains("amqp://127.0.0.1:5672//"), "{shown}");
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn routes_follow_the_destination_settings() {
        use mink_es::{Bytes, CodecTag, EventId, Metadata, Position, StreamId};
        let m = |destination: &str| OutboxMessage {
            id: mink_es::Uuid::nil(),
            destination: destination.into(),
            stream_id: StreamId::new("order-1").unwrap(),
            event_id: EventId::new(),
            event_type: "Placed".into(),
            stream_version: 1,
            position: Position::default(),
            payload: Bytes::new(),
            codec: CodecTag::JSON,
            metadata: Metadata::default(),
            created_at: Default::default(),
        };
        let p = RabbitPublisher::builder()
            .destination("audit", "audit-x", "all")
            .connect_lazily("amqp://127.0.0.1:1/%2f")
            .unwrap();
        assert_eq!(
            p.route_for(&m("orders")),
            Some(("orders".into(), "order.Placed".into()))
        );
        assert_eq!(
            p.route_for(&m("audit")),
            Some(("audit-x".into(), "all".into()))
        );
        let p = RabbitPublisher::builder()
            .exchange("events")
            .routing_key("{destination}.{event_type}")
            .connect_lazily("amqp://127.0.0.1:1/%2f")
            .unwrap();
        assert_eq!(
            p.route_for(&m("orders")),
            Some(("events".into(), "orders.Placed".into()))
        );
        let p = RabbitPublisher::builder()
            .only_listed_destinations()
            .connect_lazily("amqp://127.0.0.1:1/%2f")
            .unwrap();
        assert_eq!(p.route_for(&m("orders")), None);
    }

    #[test]
    fn channel_errors_are_pinned_before_they_are_judged() {
        use lapin::protocol::{AMQPError, AMQPHardError};
        let soft = |s: AMQPSoftError| {
            lapin::Error::from(ErrorKind::ProtocolError(AMQPError::new(
                AMQPErrorKind::Soft(s),
                "x".into(),
            )))
        };
        assert_eq!(class(&soft(AMQPSoftError::NOTFOUND)), Class::ChannelClosed);
        assert!(alone_verdict(soft(AMQPSoftError::NOTFOUND)).is_permanent());
        assert!(alone_verdict(soft(AMQPSoftError::PRECONDITIONFAILED)).is_permanent());
        assert!(alone_verdict(soft(AMQPSoftError::ACCESSREFUSED)).is_permanent());
        assert!(!alone_verdict(soft(AMQPSoftError::RESOURCELOCKED)).is_permanent());
        let hard = lapin::Error::from(ErrorKind::ProtocolError(AMQPError::new(
            AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED),
            "x".into(),
        )));
        assert_eq!(class(&hard), Class::Retryable);
        let io = lapin::Error::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(class(&io), Class::Retryable);
        assert!(!alone_verdict(io).is_permanent());
    }
}
