//! The shop's application service: one [`CommandBus`] with mink's built-in middleware,
//! and the handlers of the shop's [commands](super::commands).
//!
//! Every change of state goes through [`Shop::dispatch`]. The bus runs each command
//! through this chain, outermost first:
//!
//! | middleware | here it … |
//! |---|---|
//! | `Recovery` | turns a panicking handler into an error; the shop keeps serving |
//! | `Tracing` | opens a `command` span (pass your own with [`Shop::with_tracing`]) |
//! | `Logging` | logs start and end through `tracing` |
//! | `Metrics` | counts commands, errors, durations (`mink_commands_total`, …) |
//! | `Correlation` | gives the command a correlation id unless the [`Caller`] brought one; with the caller's user, it is written into every event the command stores, with the command's id as causation id |
//! | `Audit` | writes who/what/when/outcome to the audit log, fail-closed: no audit entry, no command |
//! | `Validation` | refuses an invalid command before any handler runs |
//! | `Idempotency` | runs a request id once; a duplicate gets the first result back |
//! | `Timeout` | gives up after [`COMMAND_TIMEOUT`] |
//! | `Retry` | runs the handler again when it lost a race (a concurrency conflict): it reloads and decides again |
//! | a `from_fn` of the shop's | notes each handler run (see [`HandlerRun`]) |
//!
//! Commands that change one aggregate (receiving stock, paying) are registered with
//! [`CommandBus::register_aggregate`]: load, decide, save. Commands that change an order
//! *and* the stock of its products are closures registered with
//! [`CommandBus::register`]; each save there is its own atomic append, and the flow is
//! kept consistent the event-sourcing way, with compensating events (an order whose
//! stock runs out releases what it had reserved and is cancelled) rather than one big
//! transaction.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use mink_es::command::audit::{Audit, AuditStore, MemoryAuditStore};
use mink_es::command::idempotency::{
    Idempotency, IdempotencyStore, KeyStrategy, MemoryIdempotencyStore,
};
use mink_es::command::middleware::{
    Correlation, Logging, Metrics, Recovery, Retry, Timeout, Tracing, Validation, from_fn,
};
use mink_es::command::{
    AggregateOutcome, Command, CommandBus, CommandContext, CommandError, Dispatch, Middleware, Next,
};
use mink_es::prelude::*;
use mink_es::{
    AggregateRoot, AppendResult, BoxError, JsonCodec, Metadata, Repository, SerdeEvents,
    SnapshotPolicy, Snapshotting, Uuid,
};
use mink_sqlite::SqliteStore;
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::commands::{CancelOrder, OrderOutcome, PayOrder, PlaceOrder, ReceiveStock, ShipOrder};
use super::inventory::{Inventory, InventoryError};
use super::order::{Order, OrderError};

/// Take a snapshot of an aggregate each time its stream crosses a multiple of this many
/// events; loading then reads the snapshot and only the events after it.
pub const SNAPSHOT_EVERY: u64 = 5;

/// How often one step of a multi-aggregate command is tried: decided again after a
/// conflict, or saved again after a lost reply.
pub const STEP_ATTEMPTS: u32 = 3;

/// How long a command may take before the `Timeout` middleware gives up on it.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// A repository of `A` in store `S`, with JSON events and snapshots in the same store.
pub type Repo<A, S> = Repository<A, S, SerdeEvents, Snapshotting<S, JsonCodec>>;

/// A repository of `A` on `store`, snapshotting every [`SNAPSHOT_EVERY`] events.
pub fn repository<A, S>(store: &S) -> Repo<A, S>
where
    A: Aggregate + Serialize + DeserializeOwned,
    A::Event: mink_es::DomainEvent,
    S: EventStore + SnapshotStore,
{
    Repository::new(store.clone())
        .with_snapshots(store.clone(), SnapshotPolicy::every(SNAPSHOT_EVERY))
}

/// Why a shop command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShopError {
    /// An order refused the command (a rule of the domain).
    #[error("order {order_id}: {source}")]
    Order {
        /// The order.
        order_id: String,
        /// The rule that said no.
        #[source]
        source: OrderError,
    },
    /// A product's stock refused the command (a rule of the domain).
    #[error("stock of {sku}: {source}")]
    Stock {
        /// The product.
        sku: String,
        /// The rule that said no.
        #[source]
        source: InventoryError,
    },
    /// The command failed for another reason than a rule: it was invalid, the store
    /// failed, a conflict outlasted every retry, it timed out, …
    #[error(transparent)]
    Command(CommandError),
    /// The event store failed outside of a command.
    #[error(transparent)]
    Store(#[from] mink_es::Error),
    /// The audit log could not be read.
    #[error("cannot read the audit log: {0}")]
    Audit(#[source] BoxError),
    /// The webhooks could not be set up: the receiver could not listen, the publisher
    /// could not be built, or the receiver's server failed.
    #[error("webhooks: {0}")]
    Webhooks(#[source] BoxError),
    /// The story could not go on (something it waits for did not happen in time).
    #[error("the story stopped: {0}")]
    Story(String),
}

impl From<CommandError> for ShopError {
    /// A rejection by a rule of the shop comes back as the typed rule
    /// ([`ShopError::Order`] or [`ShopError::Stock`]); anything else as
    /// [`ShopError::Command`].
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Rejected { command, source } => match source.downcast::<ShopError>() {
                Ok(rule) => *rule,
                Err(source) => ShopError::Command(CommandError::Rejected { command, source }),
            },
            other => ShopError::Command(other),
        }
    }
}

/// A domain error that knows which [`ShopError`] it becomes for the aggregate `id`.
pub trait Rejection {
    /// The error, naming the aggregate that refused.
    fn for_aggregate(self, id: &str) -> ShopError;
}

impl Rejection for OrderError {
    fn for_aggregate(self, id: &str) -> ShopError {
        ShopError::Order {
            order_id: id.to_owned(),
            source: self,
        }
    }
}

impl Rejection for InventoryError {
    fn for_aggregate(self, id: &str) -> ShopError {
        ShopError::Stock {
            sku: id.to_owned(),
            source: self,
        }
    }
}

/// Where the bus keeps idempotency keys and the audit log.
#[derive(Clone)]
pub struct CommandStores {
    /// Idempotency keys and the results they replay.
    pub idempotency: Arc<dyn IdempotencyStore>,
    /// The audit log.
    pub audit: Arc<dyn AuditStore>,
}

impl CommandStores {
    /// Both in the SQLite file of `store`, next to the events.
    pub fn sqlite(store: &SqliteStore) -> Self {
        CommandStores {
            idempotency: Arc::new(store.idempotency_store()),
            audit: Arc::new(store.audit_store()),
        }
    }

    /// Both in memory (for tests, or with the memory event store).
    pub fn memory() -> Self {
        CommandStores {
            idempotency: Arc::new(MemoryIdempotencyStore::new()),
            audit: Arc::new(MemoryAuditStore::new()),
        }
    }
}

impl fmt::Debug for CommandStores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandStores").finish_non_exhaustive()
    }
}

/// Who sends a command: a user, and optionally the correlation id of the business
/// conversation the command belongs to (a checkout, a support ticket). In a web service
/// both would come from the request (its session, its trace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    user_id: String,
    correlation_id: Option<String>,
}

impl Caller {
    /// A user; each command gets a fresh correlation id.
    pub fn user(user_id: impl Into<String>) -> Self {
        Caller {
            user_id: user_id.into(),
            correlation_id: None,
        }
    }

    /// Every command this caller sends shares `correlation_id`.
    pub fn with_correlation_id(mut self, correlation_id: impl Into<String>) -> Self {
        self.correlation_id = Some(correlation_id.into());
        self
    }

    /// The user's id.
    pub fn user_id(&self) -> &str {
        &self.user_id
    }

    /// The context of one dispatch: a fresh command id, the user, the correlation id.
    pub fn context(&self) -> CommandContext {
        let mut metadata = Metadata::default().with_user_id(self.user_id.clone());
        if let Some(c) = &self.correlation_id {
            metadata.set_correlation_id(Some(c.clone()));
        }
        CommandContext::new().with_metadata(metadata)
    }
}

/// A command the shop dispatched, and how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dispatched {
    /// The command type.
    pub command: &'static str,
    /// The dispatch's command id (the causation id of the events it stored).
    pub command_id: Uuid,
    /// The aggregate it targeted.
    pub aggregate_id: Option<String>,
    /// Who sent it.
    pub user_id: String,
    /// `ok`, or the error's [`CommandError::kind`].
    pub outcome: &'static str,
}

/// One run of a command's handler, as the innermost middleware saw it. A command that
/// was retried ran more than once; a duplicate answered by the idempotency middleware,
/// or an invalid command, did not run at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandlerRun {
    /// The command type.
    pub command: &'static str,
    /// The dispatch's command id.
    pub command_id: Uuid,
    /// The aggregate it targeted.
    pub aggregate_id: Option<String>,
    /// 1 for the first run; the retry middleware counts up.
    pub attempt: u32,
    /// `ok`, or the error's [`CommandError::kind`].
    pub outcome: &'static str,
    /// The error, as displayed.
    pub error: Option<String>,
}

/// The shop: a command bus over an order repository and a stock repository on one
/// store. Cloning it is cheap and shares everything.
#[derive(Clone)]
pub struct Shop<S: EventStore + SnapshotStore> {
    bus: CommandBus,
    store: S,
    orders: Arc<Repo<Order, S>>,
    stock: Arc<Repo<Inventory, S>>,
    audit: Arc<dyn AuditStore>,
    dispatched: Arc<Mutex<Vec<Dispatched>>>,
    runs: Arc<Mutex<Vec<HandlerRun>>>,
}

impl<S: EventStore + SnapshotStore> Shop<S> {
    /// A shop on `store`, keeping idempotency keys and the audit log in `stores`.
    ///
    /// # Errors
    /// Only if a handler is registered twice, which the shop never does.
    pub fn new(store: S, stores: CommandStores) -> Result<Self, ShopError> {
        Shop::with_tracing(store, stores, Tracing::new())
    }

    /// Like [`Shop::new`], with a configured `Tracing` middleware (for example one that
    /// writes the OpenTelemetry trace context into event metadata).
    ///
    /// # Errors
    /// Only if a handler is registered twice, which the shop never does.
    pub fn with_tracing(
        store: S,
        stores: CommandStores,
        tracing: Tracing,
    ) -> Result<Self, ShopError> {
        let runs: Arc<Mutex<Vec<HandlerRun>>> = Arc::default();
        let mut bus = CommandBus::new();
        // The first added is the outermost.
        bus.use_middleware(Recovery)
            .use_middleware(tracing)
            .use_middleware(Logging)
            .use_middleware(Metrics)
            .use_middleware(Correlation::new())
            .use_middleware(Audit::with_store(stores.audit.clone()).fail_closed())
            .use_middleware(Validation)
            .use_middleware(
                Idempotency::with_store(stores.idempotency).keys(KeyStrategy::ExplicitOnly),
            )
            .use_middleware(Timeout(COMMAND_TIMEOUT))
            .use_middleware(Retry::default())
            .use_middleware(note_handler_runs(runs.clone()));

        // One aggregate each: load, decide, save (and, after a conflict, the retry
        // middleware runs it again on the reloaded aggregate).
        bus.register_aggregate(
            repository::<Inventory, S>(&store),
            |c: &ReceiveStock| c.sku.clone(),
            |s: &Inventory, c: &ReceiveStock| {
                s.receive(c.quantity).map_err(|e| e.for_aggregate(&c.sku))
            },
        )?;
        bus.register_aggregate(
            repository::<Order, S>(&store),
            |c: &PayOrder| c.order_id.clone(),
            |o: &Order, c: &PayOrder| {
                o.pay(c.amount_cents, &c.payment_ref)
                    .map_err(|e| e.for_aggregate(&c.order_id))
            },
        )?;

        // An order and its stock: closures over both repositories.
        let flows = Flows {
            orders: Arc::new(repository(&store)),
            stock: Arc::new(repository(&store)),
        };
        let f = flows.clone();
        bus.register(move |c: PlaceOrder, _ctx: CommandContext| {
            let f = f.clone();
            async move { f.place_order(c).await }
        })?;
        let f = flows.clone();
        bus.register(move |c: ShipOrder, _ctx: CommandContext| {
            let f = f.clone();
            async move { f.ship_order(c).await }
        })?;
        let f = flows.clone();
        bus.register(move |c: CancelOrder, _ctx: CommandContext| {
            let f = f.clone();
            async move { f.cancel_order(c).await }
        })?;

        Ok(Shop {
            bus,
            store,
            orders: flows.orders,
            stock: flows.stock,
            audit: stores.audit,
            dispatched: Arc::default(),
            runs,
        })
    }

    /// Dispatches `command` on behalf of `caller` through the bus.
    ///
    /// # Errors
    /// A rule of the shop that said no comes back typed ([`ShopError::Order`],
    /// [`ShopError::Stock`]); anything else as [`ShopError::Command`].
    pub async fn dispatch<C: Command>(
        &self,
        command: C,
        caller: &Caller,
    ) -> Result<C::Output, ShopError> {
        let context = caller.context();
        let mut record = Dispatched {
            command: C::NAME,
            command_id: context.command_id(),
            aggregate_id: command.aggregate_id(),
            user_id: caller.user_id().to_owned(),
            outcome: "ok",
        };
        let result = self.bus.dispatch_with(command, context).await;
        if let Err(e) = &result {
            record.outcome = e.kind();
        }
        self.dispatched.lock().push(record);
        result.map_err(ShopError::from)
    }

    /// The command bus, for dispatching without the shop's bookkeeping.
    pub fn bus(&self) -> &CommandBus {
        &self.bus
    }

    /// The event store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The order repository.
    pub fn orders(&self) -> &Repo<Order, S> {
        &self.orders
    }

    /// The stock repository.
    pub fn stock(&self) -> &Repo<Inventory, S> {
        &self.stock
    }

    /// The audit log.
    pub fn audit(&self) -> &Arc<dyn AuditStore> {
        &self.audit
    }

    /// Every command dispatched through [`Shop::dispatch`], in the order they ended.
    pub fn dispatched(&self) -> Vec<Dispatched> {
        self.dispatched.lock().clone()
    }

    /// Every run of a handler, in the order they ended.
    pub fn handler_runs(&self) -> Vec<HandlerRun> {
        self.runs.lock().clone()
    }
}

/// The innermost middleware: notes each run of a handler (every attempt of the retry
/// middleware reaches it; a replayed duplicate does not).
fn note_handler_runs(runs: Arc<Mutex<Vec<HandlerRun>>>) -> impl Middleware {
    from_fn(move |dispatch: Dispatch, next: Next| {
        let runs = runs.clone();
        async move {
            let mut run = HandlerRun {
                command: dispatch.command().name(),
                command_id: dispatch.context().command_id(),
                aggregate_id: dispatch.command().aggregate_id(),
                attempt: dispatch.context().attempt(),
                outcome: "ok",
                error: None,
            };
            let result = next.run(dispatch).await;
            if let Err(e) = &result {
                run.outcome = e.kind();
                run.error = Some(e.to_string());
            }
            runs.lock().push(run);
            result
        }
    })
}

/// The handlers of the commands that change an order and the stock of its products.
struct Flows<S: EventStore + SnapshotStore> {
    orders: Arc<Repo<Order, S>>,
    stock: Arc<Repo<Inventory, S>>,
}

impl<S: EventStore + SnapshotStore> Clone for Flows<S> {
    fn clone(&self) -> Self {
        Flows {
            orders: self.orders.clone(),
            stock: self.stock.clone(),
        }
    }
}

impl<S: EventStore + SnapshotStore> Flows<S> {
    /// Places the order, then reserves the stock of each line. When a line cannot be
    /// reserved, the reservations already made are released, the order is cancelled,
    /// and the stock's refusal is returned.
    async fn place_order(&self, c: PlaceOrder) -> Result<OrderOutcome, CommandError> {
        let mut outcome = OrderOutcome {
            order_id: c.order_id.clone(),
            ..OrderOutcome::default()
        };
        // The order first. A conflict here goes back to the retry middleware, which runs
        // this handler again from the start: nothing was written yet.
        let (_, placed) = decide_and_save::<PlaceOrder, _, _, _>(&self.orders, &c.order_id, |o| {
            o.place(&c.customer, c.lines.clone())
        })
        .await?;
        outcome.order_version = placed.version;
        outcome.add(&c.order_id, &placed);

        // Then its stock. The order exists now, so running the handler again would only
        // meet "already placed": from here on, each step retries its own conflicts.
        let mut reserved: Vec<&str> = Vec::new();
        for line in &c.lines {
            let reservation = decide_retrying::<PlaceOrder, _, _, _>(&self.stock, &line.sku, |s| {
                s.reserve(&c.order_id, line.quantity)
            })
            .await;
            match reservation {
                Ok(saved) => {
                    outcome.add(&line.sku, &saved);
                    reserved.push(&line.sku);
                }
                Err(refusal @ CommandError::Rejected { .. }) => {
                    // Compensation: give back what was reserved, cancel the order.
                    for sku in reserved {
                        decide_retrying::<PlaceOrder, _, _, _>(&self.stock, sku, |s| {
                            s.release(&c.order_id)
                        })
                        .await?;
                    }
                    let reason = format!("out of stock: {}", line.sku);
                    decide_retrying::<PlaceOrder, _, _, _>(&self.orders, &c.order_id, |o| {
                        o.cancel(&reason)
                    })
                    .await?;
                    return Err(refusal);
                }
                // A store failure half-way leaves the order placed with part of its
                // stock; a process manager (a saga) would finish or undo it.
                Err(other) => return Err(other),
            }
        }
        Ok(outcome)
    }

    /// Ships the order, then dispatches its reserved stock.
    async fn ship_order(&self, c: ShipOrder) -> Result<OrderOutcome, CommandError> {
        let (order, shipped) =
            decide_and_save::<ShipOrder, _, _, _>(&self.orders, &c.order_id, |o| {
                o.ship(&c.carrier)
            })
            .await?;
        let mut outcome = OrderOutcome {
            order_id: c.order_id.clone(),
            order_version: shipped.version,
            events: Vec::new(),
        };
        outcome.add(&c.order_id, &shipped);
        for line in &order.state().lines {
            let saved = decide_retrying::<ShipOrder, _, _, _>(&self.stock, &line.sku, |s| {
                s.dispatch(&c.order_id)
            })
            .await?;
            outcome.add(&line.sku, &saved);
        }
        Ok(outcome)
    }

    /// Cancels the order, then releases the stock it still holds.
    async fn cancel_order(&self, c: CancelOrder) -> Result<OrderOutcome, CommandError> {
        let (order, cancelled) =
            decide_and_save::<CancelOrder, _, _, _>(&self.orders, &c.order_id, |o| {
                o.cancel(&c.reason)
            })
            .await?;
        let mut outcome = OrderOutcome {
            order_id: c.order_id.clone(),
            order_version: cancelled.version,
            events: Vec::new(),
        };
        outcome.add(&c.order_id, &cancelled);
        for line in &order.state().lines {
            let saved = decide_retrying::<CancelOrder, _, _, _>(&self.stock, &line.sku, |s| {
                if s.reservations.contains_key(&c.order_id) {
                    s.release(&c.order_id)
                } else {
                    Ok(Vec::new()) // Nothing held: saving nothing is a no-op.
                }
            })
            .await?;
            outcome.add(&line.sku, &saved);
        }
        Ok(outcome)
    }
}

impl OrderOutcome {
    /// Adds the events of one save.
    fn add(&mut self, aggregate_id: &str, saved: &AppendResult) {
        self.events
            .extend(AggregateOutcome::new(aggregate_id, saved).events);
    }
}

/// Loads aggregate `id`, runs `decision` on its state and saves what it decided (with
/// the command's correlation, causation and user ids, which the repository takes from
/// the bus). Returns the saved aggregate and what the store did.
///
/// A save whose reply was lost (a transient store error: did it commit?) is sent again
/// as it is: the recorded events keep their ids, so the store recognises a repeat of a
/// committed append and answers with the original result. A conflict is returned.
async fn decide_and_save<C, A, S, E>(
    repo: &Repo<A, S>,
    id: &str,
    decision: impl Fn(&A) -> Result<Vec<A::Event>, E>,
) -> Result<(AggregateRoot<A>, AppendResult), CommandError>
where
    C: Command,
    A: Aggregate + Serialize + DeserializeOwned,
    A::Event: mink_es::DomainEvent,
    S: EventStore + SnapshotStore,
    E: Rejection,
{
    let mut root = repo.load(id).await?;
    root.decide(&decision).map_err(|e| CommandError::Rejected {
        command: C::NAME,
        source: Box::new(e.for_aggregate(id)),
    })?;
    let mut attempt = 1;
    loop {
        match repo.save(&mut root).await {
            Ok(saved) => return Ok((root, saved)),
            Err(e) if e.is_retryable() && !e.is_conflict() && attempt < STEP_ATTEMPTS => {
                tracing::warn!(command = C::NAME, aggregate = id, error = %e, "saving again after a transient error");
                attempt += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// [`decide_and_save`], decided again on the reloaded aggregate after a conflict, up to
/// [`STEP_ATTEMPTS`] times. For the steps of a command after its first write, which the
/// retry middleware cannot repeat.
async fn decide_retrying<C, A, S, E>(
    repo: &Repo<A, S>,
    id: &str,
    decision: impl Fn(&A) -> Result<Vec<A::Event>, E>,
) -> Result<AppendResult, CommandError>
where
    C: Command,
    A: Aggregate + Serialize + DeserializeOwned,
    A::Event: mink_es::DomainEvent,
    S: EventStore + SnapshotStore,
    E: Rejection,
{
    let mut attempt = 1;
    loop {
        match decide_and_save::<C, A, S, E>(repo, id, &decision).await {
            Ok((_, saved)) => return Ok(saved),
            Err(CommandError::Store(e)) if e.is_conflict() && attempt < STEP_ATTEMPTS => {
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}
