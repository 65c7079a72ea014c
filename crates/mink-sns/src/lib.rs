//! An outbox [`Publisher`] for Amazon SNS.
//!
//! [`SnsPublisher`] delivers each [`OutboxMessage`] as one SNS message to the topic ARN
//! configured for its destination:
//!
//! * **body**: the payload as text (a payload that is not UTF-8 is sent as base64, with
//!   the attribute `mink-body-encoding = base64`); SNS refuses empty bodies, so an
//!   empty payload is a permanent failure (shape such events with a route transform);
//! * **message attributes**: the event's metadata under the names of the standard
//!   headers every mink publisher sends ([`mink_es::outbox::headers`]), at most 10 so
//!   that SQS subscriptions with raw message delivery receive them (table in
//!   [`attributes`]; before the names were unified, this crate sent `mink.message_id`,
//!   `mink.event_type`, … `mink.metadata`);
//! * **FIFO topics** (ARN ending in `.fifo`): `MessageGroupId` = the stream id (so SNS
//!   keeps each stream's order; see [`attributes::message_group_id`] for ids SNS does
//!   not accept) and `MessageDeduplicationId` = the outbox message id (so SNS drops a
//!   redelivery within its five-minute window). Standard topics get neither.
//!
//! [`Publisher::publish_batch`] uses `PublishBatch`: up to 10 messages per call and at
//! most 256 KiB per request, the calls made concurrently (sequentially when the batch
//! holds several messages of one stream, to keep their order). When a whole batch
//! call fails with an error that one bad entry can cause (`InvalidParameter`,
//! `ValidationError`, `BatchRequestTooLong`, …), its messages are sent one by one so
//! that only the bad one fails; a topic-level error (`NotFound`, `AuthorizationError`)
//! fails them all at once.
//!
//! # Failures
//!
//! Every call is bounded by [`SnsPublisherBuilder::timeout`] (10 s by default), on
//! top of the SDK's own retries.
//!
//! | failure | kind |
//! |---|---|
//! | timeout, network failure (connection refused, DNS, TLS), unreadable response | retryable |
//! | throttling (`Throttling`, `Throttled`, `KMSThrottling`, HTTP 429), server errors (`InternalError`, `ServiceUnavailable`, 5xx) | retryable |
//! | request not built (`ConstructionFailure`: no credentials, no region) | retryable |
//! | authentication: `InvalidClientTokenId`, `SignatureDoesNotMatch`, `ExpiredToken`, … (the client's credentials, not the message) | retryable |
//! | `InvalidParameter`, `InvalidParameterValue`, `ValidationError` (too large, bad attribute, missing group id, …) | permanent |
//! | `NotFound` (no such topic), `AuthorizationError`, `AccessDenied`, `InvalidSecurity`, `KMSAccessDenied`, `KMSDisabled`, `KMSNotFound`, … | permanent |
//! | a destination without a topic ARN, an empty payload | permanent |
//! | another 4xx | permanent |
//! | anything else | retryable |
//!
//! A failed entry of a `PublishBatch` is classified by its code the same way, and by
//! SNS's `SenderFault` flag when the code is not listed. The lists are in [`classify`].
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use mink_es::outbox::{Outbox, OutboxProcessor, Route};
//! use mink_es::MemoryStore;
//! use mink_sns::SnsPublisher;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = MemoryStore::with_outbox(Outbox::new().route(Route::all("orders"))?);
//! // The default AWS configuration chain (environment, profile, web identity, IMDS, …).
//! let client = mink_sns::client(&mink_sns::config_loader().load().await);
//! let publisher = SnsPublisher::builder(client)
//!     .topic("orders", "arn:aws:sns:eu-west-1:123456789012:orders.fifo")
//!     .build()?;
//! let outbox = Arc::new(store.outbox_store().ok_or("no outbox")?);
//! let processor = OutboxProcessor::new(outbox).publisher("orders", publisher);
//! processor.run(tokio_util::sync::CancellationToken::new()).await?;
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

pub mod attributes;
pub mod classify;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sns::error::ProvideErrorMetadata as _;
use aws_sdk_sns::types::{MessageAttributeValue, PublishBatchRequestEntry};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use futures::StreamExt as _;
use futures::future::BoxFuture;
use mink_es::outbox::{OutboxMessage, PublishError, Publisher};
use tracing::Instrument;

pub use aws_config;
pub use aws_sdk_sns;

/// Messages per `PublishBatch` call (the SNS limit).
pub const MAX_BATCH_ENTRIES: usize = 10;

/// Bytes per `PublishBatch` request, and per message (the SNS limit: 256 KiB).
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// An HTTPS client for the AWS SDK: hyper with rustls on the ring provider and the
/// platform's root certificates.
pub fn https_client() -> aws_sdk_sns::config::SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// The AWS configuration loader with the latest behavior version and
/// [`https_client`]: add a region, credentials or an endpoint (`endpoint_url`, for
/// LocalStack or moto), then `load().await`.
pub fn config_loader() -> aws_config::ConfigLoader {
    aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(https_client())
}

/// An SNS client for a loaded configuration.
pub fn client(config: &aws_config::SdkConfig) -> aws_sdk_sns::Client {
    aws_sdk_sns::Client::new(config)
}

/// Errors building an [`SnsPublisher`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is invalid; the text names it.
    #[error("invalid SNS publisher configuration: {0}")]
    InvalidConfig(String),
}

/// Checks the shape of an SNS topic ARN: `arn:<partition>:sns:<region>:<account>:<name>`.
///
/// # Errors
/// A description of what is wrong.
pub fn validate_topic_arn(arn: &str) -> Result<(), String> {
    let parts: Vec<&str> = arn.split(':').collect();
    if parts.len() != 6
        || parts[0] != "arn"
        || parts[2] != "sns"
        || parts.iter().any(|p| p.is_empty())
    {
        return Err(format!(
            "{arn:?} is not an SNS topic ARN (arn:<partition>:sns:<region>:<account>:<name>)"
        ));
    }
    Ok(())
}

/// True for the ARN of a FIFO topic (its name ends in `.fifo`).
pub fn is_fifo(arn: &str) -> bool {
    arn.ends_with(".fifo")
}

/// Configures an [`SnsPublisher`]; made by [`SnsPublisher::builder`].
#[derive(Clone, Debug)]
pub struct SnsPublisherBuilder {
    client: aws_sdk_sns::Client,
    topics: HashMap<String, String>,
    timeout: Duration,
    concurrency: usize,
}

impl SnsPublisherBuilder {
    /// Sends messages for `destination` to the topic `arn`.
    pub fn topic(mut self, destination: impl Into<String>, arn: impl Into<String>) -> Self {
        self.topics.insert(destination.into(), arn.into());
        self
    }

    /// The longest one SNS call may take, the SDK's retries included, before it fails
    /// as retryable. Default 10 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How many SNS calls one [`Publisher::publish_batch`] makes at once. Default 8.
    pub fn max_concurrent_requests(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// Creates the publisher.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for no topics, an ARN that is not an SNS topic ARN, a
    /// zero timeout or a zero concurrency.
    pub fn build(self) -> Result<SnsPublisher, Error> {
        if self.topics.is_empty() {
            return Err(Error::InvalidConfig(
                "no topics: map each destination to a topic ARN with `topic`".into(),
            ));
        }
        for (destination, arn) in &self.topics {
            validate_topic_arn(arn).map_err(|e| {
                Error::InvalidConfig(format!("the topic of destination {destination:?}: {e}"))
            })?;
        }
        if self.timeout.is_zero() || self.concurrency == 0 {
            return Err(Error::InvalidConfig(
                "the timeout and the number of concurrent requests must be above zero".into(),
            ));
        }
        Ok(SnsPublisher {
            inner: Arc::new(Inner {
                client: self.client,
                topics: self.topics,
                timeout: self.timeout,
                concurrency: self.concurrency,
            }),
        })
    }
}

/// Delivers outbox messages to SNS topics, with the metadata as message attributes and,
/// on FIFO topics, the stream as message group. See the [crate] docs.
///
/// Cloning is cheap and shares the client.
#[derive(Clone)]
pub struct SnsPublisher {
    inner: Arc<Inner>,
}

struct Inner {
    client: aws_sdk_sns::Client,
    topics: HashMap<String, String>,
    timeout: Duration,
    concurrency: usize,
}

impl std::fmt::Debug for SnsPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnsPublisher")
            .field("topics", &self.inner.topics)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

/// One message, ready to send.
struct Prepared {
    arn: String,
    stream: String,
    body: String,
    attributes: HashMap<String, MessageAttributeValue>,
    group_id: Option<String>,
    dedup_id: Option<String>,
    size: usize,
}

type Outcome = Result<(), PublishError>;

impl SnsPublisher {
    /// A builder for a publisher that uses `client`.
    pub fn builder(client: aws_sdk_sns::Client) -> SnsPublisherBuilder {
        SnsPublisherBuilder {
            client,
            topics: HashMap::new(),
            timeout: Duration::from_secs(10),
            concurrency: 8,
        }
    }

    /// The topic ARN of `destination`, if configured.
    pub fn topic_arn(&self, destination: &str) -> Option<&str> {
        self.inner.topics.get(destination).map(String::as_str)
    }

    fn prepare(&self, m: &OutboxMessage) -> Result<Prepared, PublishError> {
        let arn = self.topic_arn(&m.destination).ok_or_else(|| {
            PublishError::permanent(format!(
                "no SNS topic ARN is configured for destination {:?}",
                m.destination
            ))
        })?;
        if m.payload.is_empty() {
            return Err(PublishError::permanent(
                "SNS refuses an empty message body, and this payload is empty",
            ));
        }
        let (body, attributes) = attributes::for_message(m);
        let fifo = is_fifo(arn);
        Ok(Prepared {
            arn: arn.to_owned(),
            stream: m.stream_id.to_string(),
            size: attributes::approx_size(&body, &attributes),
            body,
            attributes,
            group_id: fifo.then(|| attributes::message_group_id(m.stream_id.as_str())),
            dedup_id: fifo.then(|| m.id.to_string()),
        })
    }

    async fn publish_one(&self, p: &Prepared) -> Outcome {
        let call = self
            .inner
            .client
            .publish()
            .topic_arn(&p.arn)
            .message(&p.body)
            .set_message_attributes(Some(p.attributes.clone()))
            .set_message_group_id(p.group_id.clone())
            .set_message_deduplication_id(p.dedup_id.clone())
            .send();
        match tokio::time::timeout(self.inner.timeout, call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(classify::publish_error(e)),
            Err(_) => Err(PublishError::retryable(format!(
                "no answer from SNS within {:?}",
                self.inner.timeout
            ))),
        }
    }

    /// Sends one chunk (one topic, at most 10 messages, at most 256 KiB) and returns one
    /// outcome per message, in order.
    async fn publish_chunk(&self, chunk: &[&Prepared]) -> Vec<Outcome> {
        let [first, ..] = chunk else {
            return Vec::new();
        };
        if chunk.len() == 1 {
            return vec![self.publish_one(first).await];
        }
        let entries: Result<Vec<_>, _> = chunk
            .iter()
            .enumerate()
            .map(|(i, p)| {
                PublishBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message(&p.body)
                    .set_message_attributes(Some(p.attributes.clone()))
                    .set_message_group_id(p.group_id.clone())
                    .set_message_deduplication_id(p.dedup_id.clone())
                    .build()
            })
            .collect();
        let entries = match entries {
            Ok(e) => e,
            Err(e) => {
                let text = format!("cannot build an SNS batch entry: {e}");
                return chunk
                    .iter()
                    .map(|_| Err(PublishError::permanent(text.clone())))
                    .collect();
            }
        };
        let call = self
            .inner
            .client
            .publish_batch()
            .topic_arn(&first.arn)
            .set_publish_batch_request_entries(Some(entries))
            .send();
        let output = match tokio::time::timeout(self.inner.timeout, call).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => {
                let (permanent, text) = classify::classify(&e);
                if permanent && classify::may_be_one_entry(e.code()) {
                    // One bad entry can fail the whole request: find it.
                    tracing::debug!(error = %text, "SNS refused a batch; sending its messages one by one");
                    let mut out = Vec::with_capacity(chunk.len());
                    for p in chunk {
                        out.push(self.publish_one(p).await);
                    }
                    return out;
                }
                return chunk
                    .iter()
                    .map(|_| {
                        Err(if permanent {
                            PublishError::permanent(text.clone())
                        } else {
                            PublishError::retryable(text.clone())
                        })
                    })
                    .collect();
            }
            Err(_) => {
                let text = format!("no answer from SNS within {:?}", self.inner.timeout);
                return chunk
                    .iter()
                    .map(|_| Err(PublishError::retryable(text.clone())))
                    .collect();
            }
        };
        let ok: HashSet<&str> = output.successful().iter().filter_map(|s| s.id()).collect();
        let failed: HashMap<&str, _> = output.failed().iter().map(|f| (f.id(), f)).collect();
        (0..chunk.len())
            .map(|i| {
                let id = i.to_string();
                if ok.contains(id.as_str()) {
                    Ok(())
                } else if let Some(f) = failed.get(id.as_str()) {
                    let text = format!("SNS {}: {}", f.code(), f.message().unwrap_or("no message"));
                    if classify::is_permanent_entry(f.code(), f.sender_fault()) {
                        Err(PublishError::permanent(text))
                    } else {
                        Err(PublishError::retryable(text))
                    }
                } else {
                    Err(PublishError::retryable(
                        "SNS reported neither success nor failure for this batch entry",
                    ))
                }
            })
            .collect()
    }

    async fn deliver(&self, messages: &[OutboxMessage]) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(messages.len());
        let mut ready: Vec<(usize, Prepared)> = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            match self.prepare(m) {
                Ok(p) => {
                    outcomes.push(None);
                    ready.push((i, p));
                }
                Err(e) => outcomes.push(Some(Err(e))),
            }
        }
        // Chunks (positions in `ready`): per topic, in order, at most 10 messages and
        // 256 KiB each.
        let mut chunks: Vec<Vec<usize>> = Vec::new();
        let mut open: HashMap<&str, (usize, usize)> = HashMap::new(); // arn -> (chunk, bytes)
        for (r, (_, p)) in ready.iter().enumerate() {
            let slot = open.get(p.arn.as_str()).copied().filter(|&(c, bytes)| {
                chunks[c].len() < MAX_BATCH_ENTRIES && bytes + p.size <= MAX_REQUEST_BYTES
            });
            match slot {
                Some((c, bytes)) => {
                    chunks[c].push(r);
                    open.insert(&p.arn, (c, bytes + p.size));
                }
                None => {
                    chunks.push(vec![r]);
                    open.insert(&p.arn, (chunks.len() - 1, p.size));
                }
            }
        }
        // Two messages of one stream in different chunks must not race.
        let mut streams = HashSet::new();
        let distinct = ready.iter().all(|(_, p)| streams.insert(p.stream.as_str()));
        let concurrency = if distinct { self.inner.concurrency } else { 1 };
        let ready = &ready;
        let results: Vec<(Vec<usize>, Vec<Outcome>)> = futures::stream::iter(chunks)
            .map(|chunk: Vec<usize>| async move {
                let prepared: Vec<&Prepared> = chunk.iter().map(|&r| &ready[r].1).collect();
                let outcomes = self.publish_chunk(&prepared).await;
                (chunk.iter().map(|&r| ready[r].0).collect(), outcomes)
            })
            .buffered(concurrency)
            .collect()
            .await;
        for (indexes, chunk_outcomes) in results {
            for (i, o) in indexes.into_iter().zip(chunk_outcomes) {
                if let Some(slot) = outcomes.get_mut(i) {
                    *slot = Some(o);
                }
            }
        }
        outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| Err(PublishError::retryable("no SNS result for this message")))
            })
            .collect()
    }
}

impl Publisher for SnsPublisher {
    fn publish<'a>(&'a self, message: &'a OutboxMessage) -> BoxFuture<'a, Outcome> {
        Box::pin(
            async move {
                match self.prepare(message) {
                    Ok(p) => self.publish_one(&p).await,
                    Err(e) => Err(e),
                }
            }
            .instrument(tracing::debug_span!("sns.publish", messages = 1)),
        )
    }

    fn publish_batch<'a>(&'a self, messages: &'a [OutboxMessage]) -> BoxFuture<'a, Vec<Outcome>> {
        Box::pin(self.deliver(messages).instrument(tracing::debug_span!(
            "sns.publish",
            messages = messages.len()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns() {
        assert!(validate_topic_arn("arn:aws:sns:us-east-1:123456789012:orders").is_ok());
        assert!(validate_topic_arn("arn:aws:sns:us-east-1:123456789012:orders.fifo").is_ok());
        assert!(validate_topic_arn("orders").is_err());
        assert!(validate_topic_arn("arn:aws:sqs:us-east-1:123456789012:q").is_err());
        assert!(validate_topic_arn("arn:aws:sns:us-east-1::orders").is_err());
        assert!(is_fifo("arn:aws:sns:us-east-1:1:o.fifo"));
        assert!(!is_fifo("arn:aws:sns:us-east-1:1:o"));
    }

    fn client() -> aws_sdk_sns::Client {
        let config = aws_sdk_sns::Config::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build();
        aws_sdk_sns::Client::from_conf(config)
    }

    #[test]
    fn invalid_configuration_is_refused() {
        assert!(SnsPublisher::builder(client()).build().is_err());
        assert!(
            SnsPublisher::builder(client())
                .topic("d", "not-an-arn")
                .build()
                .is_err()
        );
        assert!(
            SnsPublisher::builder(client())
                .topic("d", "arn:aws:sns:us-east-1:1:t")
                .timeout(Duration::ZERO)
                .build()
                .is_err()
        );
        let p = SnsPublisher::builder(client())
            .topic("d", "arn:aws:sns:us-east-1:1:t")
            .build()
            .unwrap();
        assert_eq!(p.topic_arn("d"), Some("arn:aws:sns:us-east-1:1:t"));
        assert_eq!(p.topic_arn("x"), None);
    }
}
