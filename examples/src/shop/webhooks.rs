//! The shop's partners hear about it through webhooks: a transactional outbox, an
//! outbox processor with a [`WebhookPublisher`], and a webhook receiver in the same
//! process.
//!
//! * **Routes** ([`outbox`]): order events go to [`PARTNERS`] (a marketplace), stock
//!   events to [`WAREHOUSE`], and cancellations with money to give back to [`REFUNDS`]
//!   (a route with a transform that skips the others). The store is opened with them,
//!   so each append writes its messages in the same transaction as its events.
//! * **Delivery** ([`Webhooks`]): an [`OutboxProcessor`] runs in the background until
//!   its [`CancellationToken`] fires, posting each message as a signed HTTP request
//!   (Standard Webhooks) with short backoffs, so the demonstration is quick.
//! * **Receiving** ([`Receiver`]): an axum server on `127.0.0.1`, on a port the system
//!   picks. It does what a receiver should: verify the signature against the raw body
//!   ([`mink_webhook::verify`]) before trusting anything, then de-duplicate on the
//!   `webhook-id` (delivery is at least once), then process. To show the outbox at
//!   work it answers 503 to the first attempt of one message ([`UNAVAILABLE_ONCE`]),
//!   and its refunds endpoint answers 400 until [`Receiver::fix_refunds`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes as Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use mink_es::outbox::store::OutboxCounts;
use mink_es::outbox::{Outbox, OutboxProcessor, OutboxStore, ProcessorConfig, Route};
use mink_es::{BoxError, Bytes, CodecTag, EventDecoder, ReplayMode, SerdeEvents, StoredEvent};
use mink_webhook::header::{MINK_EVENT_TYPE, MINK_STREAM_ID, MINK_STREAM_VERSION, WEBHOOK_ID};
use mink_webhook::{DEFAULT_TOLERANCE, WebhookPublisher, WebhookSecret, verify};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::order::OrderEvent;
use super::service::ShopError;

/// The destination of order events: a marketplace partner.
pub const PARTNERS: &str = "partners";
/// The destination of stock events: the warehouse's system.
pub const WAREHOUSE: &str = "warehouse";
/// The destination of cancellations that owe the customer money: the refunds service.
pub const REFUNDS: &str = "refunds";
/// The destinations, in the order the story lists them.
pub const DESTINATIONS: [&str; 3] = [PARTNERS, WAREHOUSE, REFUNDS];

/// The order events the partners receive.
pub const PARTNER_EVENTS: [&str; 4] =
    ["OrderPlaced", "OrderPaid", "OrderShipped", "OrderCancelled"];

/// How long the story waits for the outbox to deliver what it holds.
const PATIENCE: Duration = Duration::from_secs(10);

/// One outbox message, named by its destination, stream and event type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageRef {
    /// The destination.
    pub destination: &'static str,
    /// The event's stream.
    pub stream: &'static str,
    /// The event's type.
    pub event_type: &'static str,
}

/// The message whose first attempt the receiver answers with 503 (it is briefly
/// unavailable): the partners' copy of order 1001's `OrderPlaced`.
pub const UNAVAILABLE_ONCE: MessageRef = MessageRef {
    destination: PARTNERS,
    stream: "Order-1001",
    event_type: "OrderPlaced",
};

/// The shop's outbox routes: open the store with them
/// (`SqliteStore::open_with_outbox`, `MemoryStore::with_outbox`).
///
/// # Errors
/// Only for an invalid destination name, which these are not.
pub fn outbox() -> Result<Outbox, mink_es::Error> {
    Outbox::new()
        .route(Route::event_types(PARTNERS, PARTNER_EVENTS))?
        .route(Route::categories(WAREHOUSE, ["Inventory"]))?
        .route(Route::event_types(REFUNDS, ["OrderCancelled"]).transform(owes_a_refund))
}

/// The refunds route's transform: the event as it is when it owes the customer money,
/// nothing otherwise. It runs inside the append's transaction; an error would fail the
/// append.
fn owes_a_refund(event: &StoredEvent) -> Result<Option<(Bytes, CodecTag)>, BoxError> {
    let mut refund = 0;
    EventDecoder::<OrderEvent, SerdeEvents>::new(SerdeEvents::default(), ReplayMode::Strict)
        .decode_each(event, |e| {
            if let OrderEvent::Cancelled { refund_cents, .. } = e {
                refund = refund_cents;
            }
        })?;
    Ok((refund > 0).then(|| (event.payload.clone(), event.codec.clone())))
}

/// How the outbox processor of the story works: the defaults, with short backoffs and
/// polls so that a retry takes milliseconds rather than seconds.
pub fn processor_config() -> ProcessorConfig {
    ProcessorConfig {
        owner: "shop-outbox".into(),
        batch_size: 32,
        lease: Duration::from_secs(10),
        max_attempts: 5,
        base_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        poll_interval: Duration::from_millis(50),
        ..ProcessorConfig::default()
    }
}

/// What the receiver did with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handling {
    /// Verified, seen for the first time, processed: 200.
    Processed,
    /// Verified, but its `webhook-id` was processed already: 200, and nothing done.
    Duplicate,
    /// Verified, but the receiver was briefly unavailable: 503 (the sender retries).
    Unavailable,
    /// Verified, but refused: 400 (the sender dead-letters it).
    Rejected,
    /// The signature did not verify: 401, and nothing in it was trusted.
    Unauthorized,
    /// No such endpoint: 404.
    NotFound,
}

impl Handling {
    /// The HTTP status the receiver answers.
    pub fn status(self) -> StatusCode {
        match self {
            Handling::Processed | Handling::Duplicate => StatusCode::OK,
            Handling::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Handling::Rejected => StatusCode::BAD_REQUEST,
            Handling::Unauthorized => StatusCode::UNAUTHORIZED,
            Handling::NotFound => StatusCode::NOT_FOUND,
        }
    }

    fn body(self) -> &'static str {
        match self {
            Handling::Processed => "processed",
            Handling::Duplicate => "already processed",
            Handling::Unavailable => "busy, try again",
            Handling::Rejected => "unknown field `refund_cents`",
            Handling::Unauthorized => "signature check failed",
            Handling::NotFound => "no such endpoint",
        }
    }
}

impl fmt::Display for Handling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.status();
        write!(
            f,
            "{} {} ({})",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            self.body()
        )
    }
}

/// One request the receiver got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// The endpoint (`partners`, `warehouse`, `refunds`).
    pub endpoint: String,
    /// The `webhook-id`: the outbox message id, the same on every attempt.
    pub webhook_id: String,
    /// The event's type (`mink-event-type`).
    pub event_type: String,
    /// The event's stream (`mink-stream-id`).
    pub stream_id: String,
    /// The event's version in its stream (`mink-stream-version`).
    pub stream_version: u64,
    /// Whether the signature verified.
    pub verified: bool,
    /// What the receiver did with it.
    pub handling: Handling,
}

/// Whether the receiver processed the messages of each stream, per endpoint, in the
/// order of their versions (the outbox delivers each stream in order: a message waiting
/// for a retry holds back the later ones of its stream).
pub fn in_stream_order(requests: &[Received]) -> bool {
    let mut last: HashMap<(&str, &str), u64> = HashMap::new();
    requests
        .iter()
        .filter(|q| q.handling == Handling::Processed)
        .all(|q| {
            let key = (q.endpoint.as_str(), q.stream_id.as_str());
            last.insert(key, q.stream_version)
                .is_none_or(|before| before < q.stream_version)
        })
}

#[derive(Default)]
struct Log {
    requests: Vec<Received>,
    /// The ids processed: a receiver keeps them (in its database, in the transaction that
    /// processes the message) at least as long as the sender may redeliver.
    processed: HashSet<String>,
    /// The ids answered 503 once.
    failed_once: HashSet<String>,
}

struct ReceiverState {
    secret: WebhookSecret,
    refunds_fixed: AtomicBool,
    log: Mutex<Log>,
}

impl ReceiverState {
    fn handle(&self, endpoint: &str, headers: &HeaderMap, body: &[u8]) -> Handling {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let mut request = Received {
            endpoint: endpoint.to_owned(),
            webhook_id: header(WEBHOOK_ID),
            event_type: header(MINK_EVENT_TYPE),
            stream_id: header(MINK_STREAM_ID),
            stream_version: header(MINK_STREAM_VERSION).parse().unwrap_or(0),
            verified: false,
            handling: Handling::Unauthorized,
        };
        // 1. Verify first, against the raw body: until then nothing in the request,
        //    headers included, can be trusted.
        let verified = verify(&self.secret, headers, body, DEFAULT_TOLERANCE);
        let mut log = self.log.lock();
        if let Ok(verified) = verified {
            request.verified = true;
            let id = verified.id;
            let is = |m: &MessageRef| {
                m.destination == endpoint
                    && m.stream == request.stream_id
                    && m.event_type == request.event_type
            };
            request.handling = if log.processed.contains(&id) {
                // 2. De-duplicate: delivery is at least once, and this one was processed.
                Handling::Duplicate
            } else if is(&UNAVAILABLE_ONCE) && log.failed_once.insert(id.clone()) {
                Handling::Unavailable
            } else if endpoint == REFUNDS && !self.refunds_fixed.load(Ordering::SeqCst) {
                Handling::Rejected
            } else if !DESTINATIONS.contains(&endpoint) {
                Handling::NotFound
            } else {
                // 3. Process (here: remember it), and the id with it, atomically.
                log.processed.insert(id);
                Handling::Processed
            };
        }
        let handling = request.handling;
        log.requests.push(request);
        handling
    }
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    Path(endpoint): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> (StatusCode, &'static str) {
    let handling = state.handle(&endpoint, &headers, &body);
    (handling.status(), handling.body())
}

/// A webhook receiver on `127.0.0.1`, on a port the system picks, serving
/// `POST /{endpoint}` for each of the [`DESTINATIONS`] (see the [module docs](self)).
pub struct Receiver {
    addr: SocketAddr,
    state: Arc<ReceiverState>,
    shutdown: CancellationToken,
    _stop_on_drop: DropGuard,
    task: JoinHandle<std::io::Result<()>>,
}

impl Receiver {
    /// Starts listening; requests must be signed with `secret`.
    ///
    /// # Errors
    /// When no port can be bound on `127.0.0.1`.
    pub async fn start(secret: WebhookSecret) -> std::io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(ReceiverState {
            secret,
            refunds_fixed: AtomicBool::new(false),
            log: Mutex::default(),
        });
        let router = Router::new()
            .route("/{endpoint}", post(receive))
            .with_state(state.clone());
        let shutdown = CancellationToken::new();
        let serve = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        let task = tokio::spawn(async move { serve.await });
        Ok(Receiver {
            addr,
            state,
            _stop_on_drop: shutdown.clone().drop_guard(),
            shutdown,
            task,
        })
    }

    /// `http://127.0.0.1:{port}`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The URL of an endpoint.
    pub fn url(&self, endpoint: &str) -> String {
        format!("{}/{endpoint}", self.base_url())
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Received> {
        self.state.log.lock().requests.clone()
    }

    /// Deploys the fixed refunds endpoint: from now on it accepts refunds.
    pub fn fix_refunds(&self) {
        self.state.refunds_fixed.store(true, Ordering::SeqCst);
    }

    /// Stops accepting connections, lets the requests in progress finish, and returns.
    ///
    /// # Errors
    /// When the server failed, or did not stop within a few seconds.
    pub async fn stop(self) -> Result<(), ShopError> {
        self.shutdown.cancel();
        let stopped = tokio::time::timeout(PATIENCE, self.task)
            .await
            .map_err(|_| ShopError::Story("the webhook receiver did not stop".into()))?;
        match stopped {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ShopError::Webhooks(Box::new(e))),
            Err(e) => Err(ShopError::Story(format!(
                "the webhook receiver failed: {e}"
            ))),
        }
    }
}

impl fmt::Debug for Receiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// The webhooks of the shop, running: a [`Receiver`], and an [`OutboxProcessor`] in the
/// background delivering the messages of the store's outbox to it through a
/// [`WebhookPublisher`] (one URL per destination), both signed with one secret
/// generated at start. Dropping it stops both; [`Webhooks::shutdown`] stops them
/// gracefully.
pub struct Webhooks {
    receiver: Receiver,
    publisher: WebhookPublisher,
    outbox: Arc<dyn OutboxStore>,
    cancel: CancellationToken,
    _stop_on_drop: DropGuard,
    processor: JoinHandle<Result<(), mink_es::Error>>,
}

impl Webhooks {
    /// Starts the receiver, then the processor over `outbox`.
    ///
    /// # Errors
    /// [`ShopError::Webhooks`] when the receiver cannot listen or the publisher cannot
    /// be built.
    pub async fn start(outbox: Arc<dyn OutboxStore>) -> Result<Self, ShopError> {
        // In production the receiver's owner gets the secret's text form
        // (`secret.to_whsec()`) once, out of band; here both sides are in one process.
        let secret = WebhookSecret::generate();
        let receiver = Receiver::start(secret.clone())
            .await
            .map_err(|e| ShopError::Webhooks(Box::new(e)))?;
        let mut builder = WebhookPublisher::builder()
            .secret_key(secret)
            .timeout(Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(1));
        for destination in DESTINATIONS {
            builder = builder.url(destination, receiver.url(destination));
        }
        let publisher = builder
            .build()
            .map_err(|e| ShopError::Webhooks(Box::new(e)))?;
        let mut processor = OutboxProcessor::new(outbox.clone()).config(processor_config());
        for destination in DESTINATIONS {
            processor = processor.publisher(destination, publisher.clone());
        }
        let cancel = CancellationToken::new();
        let task = tokio::spawn(processor.run(cancel.clone()));
        Ok(Webhooks {
            receiver,
            publisher,
            outbox,
            _stop_on_drop: cancel.clone().drop_guard(),
            cancel,
            processor: task,
        })
    }

    /// The receiver.
    pub fn receiver(&self) -> &Receiver {
        &self.receiver
    }

    /// The publisher the processor delivers through.
    pub fn publisher(&self) -> &WebhookPublisher {
        &self.publisher
    }

    /// The outbox the processor delivers from.
    pub fn outbox(&self) -> &Arc<dyn OutboxStore> {
        &self.outbox
    }

    /// Waits until no message is pending (each is delivered or dead), and returns the
    /// counts.
    ///
    /// # Errors
    /// The store's errors; [`ShopError::Story`] when messages are still pending after
    /// a few seconds.
    pub async fn settle(&self) -> Result<OutboxCounts, ShopError> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let counts = self.outbox.counts().await?;
            if counts.pending == 0 {
                return Ok(counts);
            }
            if Instant::now() >= deadline {
                return Err(ShopError::Story(format!(
                    "{} outbox message(s) still pending after {} s",
                    counts.pending,
                    PATIENCE.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the processor (it finishes the round in progress: whatever it delivered
    /// is acknowledged), then the receiver.
    ///
    /// # Errors
    /// When the processor or the receiver failed.
    pub async fn shutdown(self) -> Result<(), ShopError> {
        self.cancel.cancel();
        let stopped = tokio::time::timeout(PATIENCE, self.processor)
            .await
            .map_err(|_| ShopError::Story("the outbox processor did not stop".into()))?;
        stopped.map_err(|e| ShopError::Story(format!("the outbox processor failed: {e}")))??;
        // The publisher's idle connections close with it, so the receiver has nothing
        // left to wait for.
        drop(self.publisher);
        self.receiver.stop().await
    }
}

impl fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhooks")
            .field("receiver", &self.receiver)
            .finish_non_exhaustive()
    }
}

/// A dead letter, as the story listed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetterSummary {
    /// The message id (its `webhook-id`).
    pub id: String,
    /// Its destination.
    pub destination: String,
    /// Its event's stream.
    pub stream_id: String,
    /// Its event's type.
    pub event_type: String,
    /// Attempts made before it was given up on.
    pub attempts: u32,
    /// The last attempt's error.
    pub last_error: String,
}

/// What the webhooks part of the story saw, for tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WebhookReport {
    /// The receiver's address, `http://127.0.0.1:{port}`.
    pub receiver: String,
    /// Messages the routes wrote, per destination.
    pub routed: BTreeMap<String, usize>,
    /// Every request the receiver got, in arrival order.
    pub requests: Vec<Received>,
    /// The `webhook-id` of [`UNAVAILABLE_ONCE`].
    pub retried_id: Option<String>,
    /// The `webhook-id` sent again by hand, as a restarted processor would.
    pub duplicate_id: Option<String>,
    /// The dead letters listed before the replay.
    pub dead_letters: Vec<DeadLetterSummary>,
    /// How many dead letters the replay put back in line.
    pub replayed: u64,
    /// The outbox's counts once everything was delivered or dead, before the replay.
    pub counts_before_replay: OutboxCounts,
    /// The outbox's counts at the end, after the processor stopped.
    pub counts: OutboxCounts,
}
