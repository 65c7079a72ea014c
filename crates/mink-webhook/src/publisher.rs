//! The publisher: one signed HTTP `POST` per outbox message.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mink_es::outbox::{OutboxMessage, PublishError, Publisher, headers};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, LOCATION, RETRY_AFTER};
use reqwest::{Client, Response, Url};
use rustls_platform_verifier::BuilderVerifierExt as _;
use tracing::Instrument as _;

use crate::header::{self as h, RESERVED};
use crate::secret::signature_header;
use crate::{Error, WebhookSecret};

/// The default limit on one request, from connecting to the end of the response head:
/// 15 s. Keep it below the outbox processor's lease (30 s by default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
/// The default limit on establishing a connection (TCP and TLS): 5 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The `user-agent` of the client this crate builds, unless changed.
pub const DEFAULT_USER_AGENT: &str = concat!("mink-webhook/", env!("CARGO_PKG_VERSION"));

/// How much of a failed response's body goes into the error, in bytes.
const ERROR_BODY_BYTES: usize = 512;
/// How much of a response body is read (so the connection can be reused) at most.
const DRAIN_LIMIT: usize = 64 * 1024;

const H_WEBHOOK_ID: HeaderName = HeaderName::from_static(h::WEBHOOK_ID);
const H_WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static(h::WEBHOOK_TIMESTAMP);
const H_WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static(h::WEBHOOK_SIGNATURE);

/// An outbox [`Publisher`] that delivers each message as a signed HTTP `POST`.
///
/// * **Where**: the URL configured for the message's destination, else the default
///   URL; a destination with neither is a permanent failure.
/// * **What**: the message payload, byte for byte, as the body; `content-type` from
///   its codec; the event's metadata in headers (see [`header`](crate::header)).
/// * **Signed** the [Standard Webhooks](https://www.standardwebhooks.com/) way:
///   `webhook-id` (the outbox message id, the same on every attempt),
///   `webhook-timestamp` (this attempt's Unix seconds) and `webhook-signature`
///   (`v1,` + base64 HMAC-SHA256 of `"{id}.{timestamp}.{body}"`, one per secret,
///   space-separated). Receivers check it with [`verify`](crate::verify()).
/// * **Outcome**:
///
///   | answer | result |
///   |---|---|
///   | 2xx | delivered |
///   | 429, 5xx | [`PublishError::Retryable`] (with the `Retry-After` in the message, when sent) |
///   | 3xx | [`PublishError::Permanent`]: redirects are not followed (the signed request would go to a host nobody configured) |
///   | any other 4xx (400, 404, 410, …), any other status | [`PublishError::Permanent`] |
///   | timeout, refused or failed connection, TLS failure, connection broken mid-request | [`PublishError::Retryable`] |
///   | no URL for the destination | [`PublishError::Permanent`] |
///
///   The source of every [`PublishError`] is an [`Error`] naming the URL (without
///   query or credentials), the status and the start of the response body.
///
/// It is cheap to clone (the client and configuration are shared), and one publisher
/// can serve several destinations of an
/// [`OutboxProcessor`](mink_es::outbox::OutboxProcessor).
///
/// Tracing: a `webhook.post` span per request (destination, message id, event type,
/// URL, status). Metrics: the histogram `mink_webhook_request_seconds{destination,
/// outcome}`, where `outcome` is `2xx`, `3xx`, `4xx`, `5xx`, `timeout`, `connect` or
/// `error`.
#[derive(Clone)]
pub struct WebhookPublisher {
    inner: Arc<Inner>,
}

struct Endpoint {
    url: Url,
    /// The URL without query, fragment or credentials, for errors and logs.
    shown: String,
}

struct Inner {
    client: Client,
    endpoints: HashMap<String, Endpoint>,
    default: Option<Endpoint>,
    secrets: Vec<WebhookSecret>,
    timeout: Duration,
    headers: HeaderMap,
    content_types: HashMap<String, HeaderValue>,
    custom_metadata: bool,
}

impl WebhookPublisher {
    /// A builder, with the defaults: [`DEFAULT_TIMEOUT`], [`DEFAULT_CONNECT_TIMEOUT`],
    /// [`DEFAULT_USER_AGENT`], custom metadata in headers, no URL and no secret yet.
    pub fn builder() -> WebhookPublisherBuilder {
        WebhookPublisherBuilder::new()
    }

    /// A [`reqwest::ClientBuilder`] set up as the client this crate builds: HTTP/1.1
    /// over rustls with the ring provider and the platform's certificate verifier, no
    /// redirects. Start from it to make a custom [`client`](WebhookPublisherBuilder::client)
    /// (a proxy, extra root certificates, a client certificate, …): this crate enables
    /// no rustls provider in reqwest itself, so a bare `reqwest::Client::builder()`
    /// needs one from elsewhere.
    ///
    /// # Errors
    /// [`Error::Tls`] when the platform's certificate verifier cannot be set up.
    pub fn client_builder() -> Result<reqwest::ClientBuilder, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(Error::Tls)?
            .with_platform_verifier()
            .map_err(Error::Tls)?
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Client::builder()
            .tls_backend_preconfigured(tls)
            .redirect(reqwest::redirect::Policy::none()))
    }

    /// The URL messages of `destination` go to: its own, else the default.
    pub fn url_for(&self, destination: &str) -> Option<&Url> {
        self.inner.endpoint(destination).map(|e| &e.url)
    }

    /// Delivers one message and says how it went, with the typed error;
    /// [`Publisher::publish`] is this with the error classified into a
    /// [`PublishError`].
    ///
    /// # Errors
    /// [`Error::NoUrl`], [`Error::Status`], [`Error::Redirect`], [`Error::Timeout`],
    /// [`Error::Connect`] or [`Error::Request`]; [`Error::is_retryable`] tells which
    /// may pass later.
    pub async fn deliver(&self, message: &OutboxMessage) -> Result<(), Error> {
        let inner = &*self.inner;
        let endpoint = inner
            .endpoint(&message.destination)
            .ok_or_else(|| Error::NoUrl {
                destination: message.destination.clone(),
            })?;
        let span = tracing::info_span!(
            "webhook.post",
            destination = %message.destination,
            message_id = %message.id,
            event_type = %message.event_type,
            url = %endpoint.shown,
            status = tracing::field::Empty,
        );
        async {
            let id = message.id.to_string();
            let timestamp = unix_now();
            let signature = signature_header(&inner.secrets, &id, timestamp, &message.payload);
            let headers = inner.headers_for(message, &id, timestamp, &signature);
            let started = Instant::now();
            let sent = inner
                .client
                .post(endpoint.url.clone())
                .headers(headers)
                .timeout(inner.timeout)
                .body(message.payload.clone())
                .send()
                .await;
            let result = match sent {
                Ok(response) => {
                    tracing::Span::current().record("status", response.status().as_u16());
                    classify(response, endpoint).await
                }
                Err(e) => Err(transport_error(e, endpoint)),
            };
            metrics::histogram!(
                "mink_webhook_request_seconds",
                "destination" => message.destination.clone(),
                "outcome" => outcome_label(&result),
            )
            .record(started.elapsed().as_secs_f64());
            match &result {
                Ok(()) => tracing::debug!("webhook delivered"),
                Err(e) => tracing::debug!(error = %e, retryable = e.is_retryable(), "webhook delivery failed"),
            }
            result
        }
        .instrument(span)
        .await
    }
}

impl Publisher for WebhookPublisher {
    fn publish<'a>(
        &'a self,
        message: &'a OutboxMessage,
    ) -> Pin<Box<dyn Future<Output = Result<(), PublishError>> + Send + 'a>> {
        Box::pin(async move {
            self.deliver(message)
                .await
                .map_err(Error::into_publish_error)
        })
    }
}

impl fmt::Debug for WebhookPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &*self.inner;
        let mut urls: Vec<_> = i
            .endpoints
            .iter()
            .map(|(d, e)| (d.as_str(), e.shown.as_str()))
            .collect();
        urls.sort_unstable();
        f.debug_struct("WebhookPublisher")
            .field("urls", &urls)
            .field("default_url", &i.default.as_ref().map(|e| &e.shown))
            .field("secrets", &i.secrets.len())
            .field("timeout", &i.timeout)
            .field("extra_headers", &i.headers.keys().collect::<Vec<_>>())
            .field("custom_metadata_headers", &i.custom_metadata)
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn endpoint(&self, destination: &str) -> Option<&Endpoint> {
        self.endpoints.get(destination).or(self.default.as_ref())
    }

    fn content_type(&self, codec: &str) -> HeaderValue {
        self.content_types
            .get(codec)
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static(headers::content_type(codec)))
    }

    fn headers_for(
        &self,
        m: &OutboxMessage,
        id: &str,
        timestamp: u64,
        signature: &str,
    ) -> HeaderMap {
        let mut hm = self.headers.clone();
        hm.insert(CONTENT_TYPE, self.content_type(m.codec.as_str()));
        let mut put = |name: HeaderName, value: &str| match HeaderValue::from_str(value) {
            Ok(v) => {
                hm.insert(name, v);
            }
            Err(_) => tracing::warn!(
                message = %m.id,
                header = %name,
                "a metadata value holds a character HTTP headers cannot carry; header left out"
            ),
        };
        put(H_WEBHOOK_ID, id);
        put(H_WEBHOOK_TIMESTAMP, &timestamp.to_string());
        put(H_WEBHOOK_SIGNATURE, signature);
        for (name, value) in m.headers() {
            if !self.custom_metadata && name.starts_with(headers::META_PREFIX) {
                continue;
            }
            // `from_bytes` lower-cases: HTTP header names are case-insensitive.
            match HeaderName::from_bytes(name.as_bytes()) {
                Ok(n) => put(n, &value),
                Err(_) => tracing::warn!(
                    message = %m.id,
                    header = %name,
                    "a custom metadata key is not a valid header name; header left out"
                ),
            }
        }
        hm
    }
}

/// Turns an answer into the delivery's outcome.
async fn classify(response: Response, endpoint: &Endpoint) -> Result<(), Error> {
    let status = response.status();
    if status.is_success() {
        drain(response).await;
        return Ok(());
    }
    if status.is_redirection() {
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| endpoint.url.join(l).ok())
            .map(|u| shown(&u));
        drain(response).await;
        return Err(Error::Redirect {
            url: endpoint.shown.clone(),
            status,
            location,
        });
    }
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    let body = snippet(response).await;
    Err(Error::Status {
        url: endpoint.shown.clone(),
        status,
        retry_after,
        body,
    })
}

/// A client error, typed; the URL is dropped from it (it may hold a token) and named
/// in its shown form instead.
fn transport_error(e: reqwest::Error, endpoint: &Endpoint) -> Error {
    let url = endpoint.shown.clone();
    let source = e.without_url();
    if source.is_timeout() {
        Error::Timeout { url, source }
    } else if source.is_connect() {
        Error::Connect { url, source }
    } else {
        Error::Request { url, source }
    }
}

fn outcome_label(result: &Result<(), Error>) -> &'static str {
    match result {
        Ok(()) => "2xx",
        Err(Error::Status { status, .. } | Error::Redirect { status, .. }) => {
            match status.as_u16() {
                300..=399 => "3xx",
                400..=499 => "4xx",
                500..=599 => "5xx",
                _ => "error",
            }
        }
        Err(Error::Timeout { .. }) => "timeout",
        Err(Error::Connect { .. }) => "connect",
        Err(_) => "error",
    }
}

/// Reads and drops up to [`DRAIN_LIMIT`] bytes of a body, so a keep-alive connection
/// can go back to the pool; errors do not matter here.
async fn drain(mut response: Response) {
    let mut read = 0;
    while read < DRAIN_LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            _ => break,
        }
    }
}

/// The start of a body, as one line of text for an error message.
async fn snippet(mut response: Response) -> String {
    let mut kept = Vec::new();
    let mut read = 0;
    let mut truncated = false;
    while read < DRAIN_LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                read += chunk.len();
                let room = ERROR_BODY_BYTES.saturating_sub(kept.len());
                truncated |= chunk.len() > room;
                kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            _ => break,
        }
    }
    let text: String = String::from_utf8_lossy(&kept)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let text = text.trim();
    if truncated && !text.is_empty() {
        format!("{text}…")
    } else {
        text.to_owned()
    }
}

/// `Retry-After`: delay seconds, or an HTTP date (a past date means now).
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse::<u64>().ok().map(Duration::from_secs);
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let at = SystemTime::from(at.with_timezone(&chrono::Utc));
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A URL without query, fragment or credentials.
fn shown(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    // Only fails for URLs that cannot have credentials, which then have none.
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Configures a [`WebhookPublisher`]; made by [`WebhookPublisher::builder`].
///
/// Setters never fail; [`build`](WebhookPublisherBuilder::build) checks everything
/// and names what is wrong.
///
/// ```
/// use std::time::Duration;
/// use mink_webhook::WebhookPublisher;
///
/// let publisher = WebhookPublisher::builder()
///     .url("billing", "https://billing.example.com/hooks/mink")
///     .url("audit", "https://audit.example.com/ingest")
///     .default_url("https://hooks.example.com/everything-else")
///     .secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
///     .timeout(Duration::from_secs(10))
///     .connect_timeout(Duration::from_secs(3))
///     .header("authorization", "Bearer s3cr3t")
///     .build()?;
/// assert_eq!(
///     publisher.url_for("audit").map(|u| u.as_str()),
///     Some("https://audit.example.com/ingest"),
/// );
/// assert_eq!(
///     publisher.url_for("shipping").map(|u| u.as_str()),
///     Some("https://hooks.example.com/everything-else"),
/// );
/// # Ok::<(), mink_webhook::Error>(())
/// ```
pub struct WebhookPublisherBuilder {
    urls: Vec<(String, String)>,
    default_url: Option<String>,
    secrets: Vec<SecretInput>,
    timeout: Duration,
    connect_timeout: Option<Duration>,
    user_agent: Option<String>,
    headers: Vec<(String, String)>,
    content_types: Vec<(String, String)>,
    custom_metadata: bool,
    client: Option<Client>,
}

enum SecretInput {
    Text(String),
    Key(WebhookSecret),
}

impl WebhookPublisherBuilder {
    fn new() -> Self {
        WebhookPublisherBuilder {
            urls: Vec::new(),
            default_url: None,
            secrets: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: None,
            user_agent: None,
            headers: Vec::new(),
            content_types: Vec::new(),
            custom_metadata: true,
            client: None,
        }
    }

    /// Sends the messages of `destination` (an outbox route's destination name) to
    /// `url` (`http` or `https`). Setting a destination again replaces its URL.
    pub fn url(mut self, destination: impl Into<String>, url: impl Into<String>) -> Self {
        let destination = destination.into();
        self.urls.retain(|(d, _)| *d != destination);
        self.urls.push((destination, url.into()));
        self
    }

    /// Sends the messages of every destination without a URL of its own to `url`.
    pub fn default_url(mut self, url: impl Into<String>) -> Self {
        self.default_url = Some(url.into());
        self
    }

    /// Signs with this secret, in its text form `whsec_<base64>` (the prefix is
    /// optional). Call it again to sign with several secrets at once: each request then
    /// carries one signature per secret, so a receiver can move from the old secret to
    /// the new one without a window where it rejects messages.
    pub fn secret(mut self, secret: impl Into<String>) -> Self {
        self.secrets.push(SecretInput::Text(secret.into()));
        self
    }

    /// Like [`secret`](Self::secret) with a parsed secret.
    pub fn secret_key(mut self, secret: WebhookSecret) -> Self {
        self.secrets.push(SecretInput::Key(secret));
        self
    }

    /// The limit on one request, from connecting until the response head has arrived
    /// (default [`DEFAULT_TIMEOUT`]). Applies with a custom client too.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The limit on establishing a connection (default [`DEFAULT_CONNECT_TIMEOUT`]).
    /// A setting of the client this crate builds: not allowed with
    /// [`client`](Self::client).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// The `user-agent` (default [`DEFAULT_USER_AGENT`]). A setting of the client this
    /// crate builds: not allowed with [`client`](Self::client).
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.user_agent = Some(user_agent.into());
        self
    }

    /// Adds a header to every request (an `authorization`, an API key, …). A name given
    /// twice is sent twice. Names the publisher sets itself (`content-type`,
    /// `webhook-*`, `mink-*`, trace context, framing headers) are refused.
    /// `authorization`, `proxy-authorization` and `cookie` values are marked sensitive.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The `content-type` for bodies of codec `codec`, replacing the default
    /// (`json` → `application/json`, `msgpack` → `application/msgpack`, `protobuf` →
    /// `application/x-protobuf`, others `application/octet-stream`).
    pub fn content_type(
        mut self,
        codec: impl Into<String>,
        content_type: impl Into<String>,
    ) -> Self {
        self.content_types.push((codec.into(), content_type.into()));
        self
    }

    /// Whether custom metadata keys other than trace context are sent as
    /// `mink-meta-<key>` headers (default `true`). Trace context is always sent.
    pub fn custom_metadata_headers(mut self, send: bool) -> Self {
        self.custom_metadata = send;
        self
    }

    /// Sends through this client instead of one built here. Its own settings then
    /// apply — connection timeout, proxies, TLS, and redirect policy: if it follows
    /// redirects, the final answer is classified, and a redirect limit hit is
    /// permanent. The [`timeout`](Self::timeout) still applies per request.
    ///
    /// The client built here speaks HTTP/1.1 over rustls with the ring provider and
    /// the platform's certificate verifier, and follows no redirects; start from
    /// [`WebhookPublisher::client_builder`] to keep that. A client built from a bare
    /// `reqwest::Client::builder()` needs a rustls provider of its own (reqwest's
    /// `rustls` feature, or an installed rustls default provider).
    pub fn client(mut self, client: Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Checks the configuration and builds the publisher.
    ///
    /// # Errors
    /// * [`Error::MissingSecret`] without a secret; [`Error::InvalidSecret`] for one
    ///   that does not parse.
    /// * [`Error::InvalidConfig`] without any URL, for an empty destination name, a
    ///   zero timeout, or client settings given together with a custom client.
    /// * [`Error::InvalidUrl`] for a URL that does not parse or is not `http(s)` with a
    ///   host.
    /// * [`Error::InvalidHeader`] for an invalid or reserved header, or an invalid
    ///   content type.
    /// * [`Error::Tls`] or [`Error::Client`] when the HTTP client cannot be built.
    pub fn build(self) -> Result<WebhookPublisher, Error> {
        if self.secrets.is_empty() {
            return Err(Error::MissingSecret);
        }
        let secrets = self
            .secrets
            .into_iter()
            .map(|s| match s {
                SecretInput::Text(t) => WebhookSecret::parse(&t),
                SecretInput::Key(k) => Ok(k),
            })
            .collect::<Result<Vec<_>, _>>()?;

        if self.timeout.is_zero() || self.connect_timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::InvalidConfig("timeouts must be above zero".into()));
        }

        if self.urls.is_empty() && self.default_url.is_none() {
            return Err(Error::InvalidConfig(
                "no URL is configured: give a URL per destination or a default URL".into(),
            ));
        }
        let mut endpoints = HashMap::new();
        for (destination, url) in self.urls {
            if destination.trim().is_empty() {
                return Err(Error::InvalidConfig(format!(
                    "a webhook destination name must not be empty (URL {url:?})"
                )));
            }
            let endpoint = endpoint(&url, Some(&destination))?;
            endpoints.insert(destination, endpoint);
        }
        let default = self.default_url.map(|u| endpoint(&u, None)).transpose()?;

        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            let invalid = |reason: String| Error::InvalidHeader {
                name: name.clone(),
                reason,
            };
            let header_name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| invalid("not a valid header name".into()))?;
            let lower = header_name.as_str();
            if RESERVED.contains(&lower) || lower.starts_with("mink-") {
                return Err(invalid(
                    "the publisher sets this header itself (use content_type() for content types)"
                        .into(),
                ));
            }
            let mut header_value = HeaderValue::from_str(value).map_err(|_| {
                invalid("the value holds a character HTTP headers cannot carry".into())
            })?;
            if matches!(lower, "authorization" | "proxy-authorization" | "cookie") {
                header_value.set_sensitive(true);
            }
            headers.append(header_name, header_value);
        }

        // Overrides only; every other codec takes the shared default.
        let mut content_types: HashMap<String, HeaderValue> = HashMap::new();
        for (codec, ct) in self.content_types {
            let value = HeaderValue::from_str(&ct)
                .ok()
                .filter(|_| !ct.trim().is_empty())
                .ok_or_else(|| Error::InvalidHeader {
                    name: "content-type".into(),
                    reason: format!("{ct:?} (for codec {codec:?}) is not a valid header value"),
                })?;
            content_types.insert(codec, value);
        }

        let client = match self.client {
            Some(client) => {
                if self.connect_timeout.is_some() || self.user_agent.is_some() {
                    return Err(Error::InvalidConfig(
                        "connect_timeout() and user_agent() configure the client this crate builds; \
                         set them on the custom client instead"
                            .into(),
                    ));
                }
                client
            }
            None => default_client(
                self.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
                self.user_agent.as_deref().unwrap_or(DEFAULT_USER_AGENT),
            )?,
        };

        Ok(WebhookPublisher {
            inner: Arc::new(Inner {
                client,
                endpoints,
                default,
                secrets,
                timeout: self.timeout,
                headers,
                content_types,
                custom_metadata: self.custom_metadata,
            }),
        })
    }
}

impl fmt::Debug for WebhookPublisherBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookPublisherBuilder")
            .field(
                "destinations",
                &self.urls.iter().map(|(d, _)| d).collect::<Vec<_>>(),
            )
            .field("default_url", &self.default_url.is_some())
            .field("secrets", &self.secrets.len())
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("custom_client", &self.client.is_some())
            .finish_non_exhaustive()
    }
}

fn endpoint(url: &str, destination: Option<&str>) -> Result<Endpoint, Error> {
    let invalid = |reason: String| Error::InvalidUrl {
        destination: destination.map(str::to_owned),
        reason,
    };
    let parsed = Url::parse(url.trim()).map_err(|e| invalid(format!("{e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "the scheme must be http or https, not {:?}",
            parsed.scheme()
        )));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid("the URL has no host".into()));
    }
    Ok(Endpoint {
        shown: shown(&parsed),
        url: parsed,
    })
}

/// The client of [`WebhookPublisher::client_builder`], with its timeout and agent.
fn default_client(connect_timeout: Duration, user_agent: &str) -> Result<Client, Error> {
    WebhookPublisher::client_builder()?
        .connect_timeout(connect_timeout)
        .user_agent(user_agent)
        .build()
        .map_err(Error::Client)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builder() -> WebhookPublisherBuilder {
        WebhookPublisher::builder()
            .secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .default_url("http://127.0.0.1:9/hook")
    }

    #[test]
    fn the_default_client_builds_with_ring_and_the_platform_verifier() {
        let p = builder().build().unwrap();
        assert_eq!(
            p.url_for("x").map(Url::as_str),
            Some("http://127.0.0.1:9/hook")
        );
    }

    #[test]
    fn urls_are_checked_per_destination_and_shown_without_secrets() {
        let e = builder().url("billing", "ftp://x/").build().unwrap_err();
        assert!(
            matches!(&e, Error::InvalidUrl { destination: Some(d), .. } if d == "billing"),
            "{e}"
        );
        assert!(e.to_string().contains("\"billing\""), "{e}");
        for bad in ["not a url", "http://", "mailto:a@b.c", "/relative"] {
            let e = builder().url("d", bad).build().unwrap_err();
            assert!(matches!(e, Error::InvalidUrl { .. }), "{bad}: {e}");
        }
        let e = WebhookPublisher::builder()
            .secret("whsec_YWJj")
            .default_url("gopher://x")
            .build()
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::InvalidUrl {
                    destination: None,
                    ..
                }
            ),
            "{e}"
        );

        let u = Url::parse("https://user:pw@example.com:8443/a/b?token=t0k#frag").unwrap();
        assert_eq!(shown(&u), "https://example.com:8443/a/b");
        // The last URL given for a destination wins.
        let p = builder()
            .url("d", "http://127.0.0.1:1/a")
            .url("d", "http://127.0.0.1:1/b")
            .build()
            .unwrap();
        assert_eq!(p.url_for("d").map(Url::path), Some("/b"));
    }

    #[test]
    fn configuration_errors_are_typed() {
        assert!(matches!(
            WebhookPublisher::builder().default_url("http://x/").build(),
            Err(Error::MissingSecret)
        ));
        assert!(matches!(
            WebhookPublisher::builder().secret("whsec_YWJj").build(),
            Err(Error::InvalidConfig(_))
        ));
        assert!(matches!(
            builder().secret("whsec_!!").build(),
            Err(Error::InvalidSecret { .. })
        ));
        assert!(matches!(
            builder().timeout(Duration::ZERO).build(),
            Err(Error::InvalidConfig(_))
        ));
        assert!(matches!(
            builder().url(" ", "http://x/").build(),
            Err(Error::InvalidConfig(_))
        ));
        for (name, value) in [
            ("webhook-signature", "v1,forged"),
            ("Content-Type", "text/plain"),
            ("mink-event-type", "x"),
            ("traceparent", "00-x"),
            ("bad name", "x"),
            ("x-ok", "line\nbreak"),
        ] {
            assert!(
                matches!(
                    builder().header(name, value).build(),
                    Err(Error::InvalidHeader { .. })
                ),
                "{name}"
            );
        }
        assert!(matches!(
            builder().content_type("avro", "").build(),
            Err(Error::InvalidHeader { .. })
        ));
        let custom = WebhookPublisher::client_builder().unwrap().build().unwrap();
        assert!(matches!(
            builder()
                .client(custom.clone())
                .connect_timeout(Duration::from_secs(1))
                .build(),
            Err(Error::InvalidConfig(_))
        ));
        builder().client(custom).build().unwrap();
    }

    #[test]
    fn retry_after_takes_seconds_or_an_http_date() {
        let now = UNIX_EPOCH + Duration::from_secs(1_445_412_480); // 2015-10-21T07:28:00Z
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn debug_output_hides_secrets_and_queries() {
        let p = builder()
            .url("d", "https://example.com/hook?token=t0k")
            .header("authorization", "Bearer s3cr3t")
            .build()
            .unwrap();
        let text = format!("{p:?}");
        assert!(
            !text.contains("t0k") && !text.contains("s3cr3t") && !text.contains("MfKQ"),
            "{text}"
        );
    }
}
