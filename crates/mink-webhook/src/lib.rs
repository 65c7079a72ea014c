//! # mink-webhook
//!
//! An outbox [`Publisher`](mink_es::outbox::Publisher) that delivers each message as a
//! signed HTTP `POST` ([`WebhookPublisher`]), and the check receivers run on what
//! arrives ([`verify()`]).
//!
//! Requests follow [Standard Webhooks](https://www.standardwebhooks.com/): the body is
//! the message payload as stored, and three headers authenticate it —
//! `webhook-id` (the outbox message id, stable across retries: receivers de-duplicate
//! on it, since delivery is at least once), `webhook-timestamp` (Unix seconds of the
//! attempt) and `webhook-signature` (`v1,` + base64 HMAC-SHA256 of
//! `"{id}.{timestamp}.{body}"` under a `whsec_…` secret; several secrets give several
//! space-separated signatures, for rotation). The event's type, id, stream, version,
//! correlation and causation ids and trace context ride along in the standard headers
//! every mink publisher sends ([`mink_es::outbox::headers`]): the full list is in
//! [`header`].
//!
//! | the receiver answers | the outbox processor |
//! |---|---|
//! | 2xx | marks the message delivered |
//! | 429 or 5xx, a timeout, a failed or broken connection | retries it with backoff (`Retry-After` shows in the error) |
//! | any other 4xx, a 3xx (redirects are not followed), any other status | moves it to the dead-letter queue |
//!
//! ## Sending
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use mink_es::outbox::{Outbox, OutboxProcessor, Route};
//! use mink_es::MemoryStore;
//! use mink_webhook::WebhookPublisher;
//!
//! // Orders go to billing, every event to audit.
//! let store = MemoryStore::with_outbox(
//!     Outbox::new()
//!         .route(Route::event_types("billing", ["OrderPlaced"]))?
//!         .route(Route::all("audit"))?,
//! );
//!
//! let webhooks = WebhookPublisher::builder()
//!     .url("billing", "https://billing.example.com/hooks/mink")
//!     .url("audit", "https://audit.example.com/ingest")
//!     .secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
//!     .timeout(Duration::from_secs(10))
//!     .build()?;
//!
//! let outbox = store.outbox_store().expect("made with an outbox");
//! let processor = OutboxProcessor::new(Arc::new(outbox))
//!     .publisher("billing", webhooks.clone())
//!     .publisher("audit", webhooks);
//! // tokio::spawn(processor.run(cancellation_token));
//! # drop(processor);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! ## Receiving
//!
//! Verify against the raw body, before parsing it, then de-duplicate on the id:
//!
//! ```
//! use mink_webhook::{verify, Error, WebhookSecret, DEFAULT_TOLERANCE};
//! use mink_webhook::reqwest::header::HeaderMap;
//!
//! fn handle(secret: &WebhookSecret, headers: &HeaderMap, body: &[u8]) -> u16 {
//!     match verify(secret, headers, body, DEFAULT_TOLERANCE) {
//!         Ok(verified) => {
//!             // if already_processed(&verified.id) { return 204 }
//!             let _ = verified.id;
//!             204
//!         }
//!         // Missing or malformed headers, a stale or future timestamp, a bad signature.
//!         Err(Error::SignatureMismatch | Error::NoSignature) => 401,
//!         Err(_) => 400,
//!     }
//! }
//!
//! let secret: WebhookSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse()?;
//! assert_eq!(handle(&secret, &HeaderMap::new(), b"{}"), 400);
//! # Ok::<(), Error>(())
//! ```
//!
//! A 4xx answer dead-letters the message at once, so a receiver that rejects a
//! signature should be sure of its secret; a receiver that is briefly unable to
//! process should answer 503 (or 429) to be retried.

#![forbid(unsafe_code)]

mod error;
pub mod header;
mod publisher;
mod secret;
mod verify;

pub use error::Error;
pub use publisher::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT, DEFAULT_USER_AGENT, WebhookPublisher,
    WebhookPublisherBuilder,
};
pub use secret::{SECRET_PREFIX, WebhookSecret};
pub use verify::{DEFAULT_TOLERANCE, Verified, verify, verify_at, verify_parts};

/// The HTTP client crate this one is built on, for [`WebhookPublisherBuilder::client`]
/// and the [`HeaderMap`](reqwest::header::HeaderMap) that [`verify()`] reads.
pub use reqwest;
