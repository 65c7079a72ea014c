//! The write side: commands, the bus that dispatches them, and its middleware.
//!
//! A command is a plain serde type that names itself and can validate itself. Handlers
//! are registered per command type, and each dispatch flows through the middleware
//! chain (`handle(dispatch, next)`, as in axum's `from_fn`) before it reaches its
//! handler. The result comes back typed: `bus.dispatch(cmd).await` returns
//! `Result<C::Output, CommandError>`.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use mink_es::command::{Command, CommandBus, CommandContext, CommandError, ValidationErrors};
//! use mink_es::command::middleware::{Validation, Correlation};
//! use serde::Serialize;
//!
//! #[derive(Serialize, Clone)]
//! struct Greet { name: String }
//!
//! impl Command for Greet {
//!     const NAME: &'static str = "Greet";
//!     type Output = String;
//!     fn validate(&self) -> Result<(), ValidationErrors> {
//!         ValidationErrors::new().require(!self.name.is_empty(), "name", "must not be empty").into_result()
//!     }
//! }
//!
//! let mut bus = CommandBus::new();
//! bus.use_middleware(Correlation::new());
//! bus.use_middleware(Validation);
//! bus.register(|cmd: Greet, _ctx: CommandContext| async move {
//!     Ok::<_, CommandError>(format!("hello, {}", cmd.name))
//! })?;
//! assert_eq!(bus.dispatch(Greet { name: "ada".into() }).await?, "hello, ada");
//! assert!(matches!(
//!     bus.dispatch(Greet { name: String::new() }).await,
//!     Err(CommandError::Invalid { .. })
//! ));
//! # Ok::<(), CommandError>(())
//! # });
//! ```

pub mod audit;
pub mod idempotency;
pub mod middleware;

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::{
    Aggregate, AppendResult, BoxError, EventStore, Metadata, Repository, SnapshotStrategy,
};

pub use middleware::{Middleware, Next};

/// A request to change state.
///
/// Commands are plain data: `Serialize` (so that idempotency keys can be derived and
/// audits can describe them) and `Clone` (so that a retry can run them again).
pub trait Command: Serialize + Clone + Send + Sync + 'static {
    /// The stable name of the command type (used for routing, logs, metrics, audit).
    const NAME: &'static str;

    /// What a successful dispatch returns. It is serialized when the idempotency
    /// middleware stores it for replay.
    type Output: Serialize + DeserializeOwned + Send + Sync + 'static;

    /// Checks the command on its own, before any handler sees it (the `Validation`
    /// middleware calls this).
    fn validate(&self) -> Result<(), ValidationErrors> {
        Ok(())
    }

    /// An explicit idempotency key (for example a client-supplied request id).
    /// `None` lets the idempotency middleware derive one from the command's content.
    fn idempotency_key(&self) -> Option<String> {
        None
    }

    /// The id of the aggregate the command targets, if any (for logs and audit).
    fn aggregate_id(&self) -> Option<String> {
        None
    }
}

/// One field that failed validation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct FieldError {
    /// The field's name.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// The validation failures of one command.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ValidationErrors(Vec<FieldError>);

impl ValidationErrors {
    /// No failures yet.
    pub fn new() -> Self {
        ValidationErrors(Vec::new())
    }

    /// Adds a failure.
    pub fn add(mut self, field: impl Into<String>, message: impl Into<String>) -> Self {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
        self
    }

    /// Adds a failure unless `ok`.
    pub fn require(self, ok: bool, field: impl Into<String>, message: impl Into<String>) -> Self {
        if ok { self } else { self.add(field, message) }
    }

    /// The failures.
    pub fn errors(&self) -> &[FieldError] {
        &self.0
    }

    /// True when nothing failed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(())` when nothing failed.
    pub fn into_result(self) -> Result<(), ValidationErrors> {
        if self.is_empty() { Ok(()) } else { Err(self) }
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", e.field, e.message)?;
        }
        Ok(())
    }
}

/// Everything a dispatch can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The command failed validation; no handler ran.
    #[error("command {command} is invalid: {errors}")]
    Invalid {
        /// The command type.
        command: &'static str,
        /// What failed.
        errors: ValidationErrors,
    },
    /// No handler is registered for the command type.
    #[error("no handler is registered for command {command}")]
    HandlerNotFound {
        /// The command type.
        command: &'static str,
    },
    /// A handler for this command type (or another type with the same name) is already
    /// registered; the new one was refused.
    #[error("a handler for command {command} is already registered")]
    AlreadyRegistered {
        /// The command type.
        command: &'static str,
    },
    /// The handler refused the command (a domain rule).
    #[error("command {command} was rejected: {source}")]
    Rejected {
        /// The command type.
        command: &'static str,
        /// The handler's reason; downcast it to the domain error type.
        #[source]
        source: BoxError,
    },
    /// The event store failed (a conflict, a backend error, bad input).
    #[error(transparent)]
    Store(#[from] crate::Error),
    /// The handler panicked; the bus keeps serving.
    #[error("the handler of command {command} panicked: {message}")]
    Panicked {
        /// The command type.
        command: &'static str,
        /// The panic message.
        message: String,
    },
    /// The dispatch did not finish in time.
    #[error("command {command} timed out after {after:?}")]
    TimedOut {
        /// The command type.
        command: &'static str,
        /// The limit.
        after: Duration,
    },
    /// The same idempotency key is being processed right now.
    #[error("command {command} with idempotency key {key:?} is already in progress")]
    InProgress {
        /// The command type.
        command: &'static str,
        /// The key.
        key: String,
    },
    /// The idempotency store failed and the middleware is fail-closed.
    #[error("the idempotency store is unavailable: {source}")]
    IdempotencyUnavailable {
        /// The store's error.
        #[source]
        source: BoxError,
    },
    /// The audit store failed and the middleware is fail-closed.
    #[error("the audit store is unavailable: {source}")]
    AuditUnavailable {
        /// The store's error.
        #[source]
        source: BoxError,
    },
    /// A stored or returned result could not be converted to the command's output.
    #[error("the result of command {command} cannot be read: {detail}")]
    Output {
        /// The command type.
        command: &'static str,
        /// What went wrong.
        detail: String,
    },
    /// A middleware failed in its own way (for example a tower layer's error).
    #[error("middleware error: {0}")]
    Middleware(#[source] BoxError),
}

impl CommandError {
    /// A short, stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            CommandError::Invalid { .. } => "invalid",
            CommandError::HandlerNotFound { .. } => "handler_not_found",
            CommandError::AlreadyRegistered { .. } => "already_registered",
            CommandError::Rejected { .. } => "rejected",
            CommandError::Store(e) if e.is_conflict() => "conflict",
            CommandError::Store(_) => "store",
            CommandError::Panicked { .. } => "panicked",
            CommandError::TimedOut { .. } => "timed_out",
            CommandError::InProgress { .. } => "in_progress",
            CommandError::IdempotencyUnavailable { .. } => "idempotency_unavailable",
            CommandError::AuditUnavailable { .. } => "audit_unavailable",
            CommandError::Output { .. } => "output",
            CommandError::Middleware(_) => "middleware",
        }
    }

    /// A domain rejection with any error type as its reason.
    pub fn rejected<C: Command>(reason: impl Into<BoxError>) -> Self {
        CommandError::Rejected {
            command: C::NAME,
            source: reason.into(),
        }
    }

    /// The store error, when this is one.
    pub fn as_store_error(&self) -> Option<&crate::Error> {
        match self {
            CommandError::Store(e) => Some(e),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------
// The erased command, reply and context that flow through middleware.

trait ErasedCommand: Send + Sync {
    fn validate(&self) -> Result<(), ValidationErrors>;
    fn idempotency_key(&self) -> Option<String>;
    fn aggregate_id(&self) -> Option<String>;
    fn to_json(&self) -> Result<Vec<u8>, serde_json::Error>;
    fn as_any(&self) -> &dyn Any;
}

impl<C: Command> ErasedCommand for C {
    fn validate(&self) -> Result<(), ValidationErrors> {
        Command::validate(self)
    }
    fn idempotency_key(&self) -> Option<String> {
        Command::idempotency_key(self)
    }
    fn aggregate_id(&self) -> Option<String> {
        Command::aggregate_id(self)
    }
    fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A command on its way through the middleware chain, with its type erased.
#[derive(Clone)]
pub struct CommandEnvelope {
    name: &'static str,
    inner: Arc<dyn ErasedCommand>,
    decode_output: fn(&[u8]) -> Result<Reply, serde_json::Error>,
}

impl CommandEnvelope {
    fn new<C: Command>(cmd: C) -> Self {
        CommandEnvelope {
            name: C::NAME,
            inner: Arc::new(cmd),
            decode_output: |bytes| {
                let value: C::Output = serde_json::from_slice(bytes)?;
                Ok(Reply::new::<C::Output>(value))
            },
        }
    }

    /// The command type's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Runs the command's own validation.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        self.inner.validate()
    }

    /// The command's explicit idempotency key.
    pub fn idempotency_key(&self) -> Option<String> {
        self.inner.idempotency_key()
    }

    /// The aggregate the command targets.
    pub fn aggregate_id(&self) -> Option<String> {
        self.inner.aggregate_id()
    }

    /// The command as JSON.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        self.inner.to_json()
    }

    /// The command, if it is a `C`.
    pub fn downcast_ref<C: Command>(&self) -> Option<&C> {
        self.inner.as_any().downcast_ref::<C>()
    }

    /// Rebuilds a reply of this command's output type from its JSON form (used to
    /// replay a stored result).
    pub fn decode_output(&self, json: &[u8]) -> Result<Reply, CommandError> {
        (self.decode_output)(json).map_err(|e| CommandError::Output {
            command: self.name,
            detail: e.to_string(),
        })
    }
}

impl fmt::Debug for CommandEnvelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandEnvelope")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Encodes an erased output as JSON (`None` when the value is of another type).
type EncodeOutput = fn(&(dyn Any + Send + Sync)) -> Option<Result<Vec<u8>, serde_json::Error>>;

/// A handler's result on its way back through the middleware chain, type erased.
pub struct Reply {
    value: Box<dyn Any + Send + Sync>,
    encode: EncodeOutput,
    replayed: bool,
}

impl Reply {
    /// Wraps a command output.
    pub fn new<T: Serialize + Send + Sync + 'static>(value: T) -> Self {
        Reply {
            value: Box::new(value),
            encode: |v| v.downcast_ref::<T>().map(serde_json::to_vec),
            replayed: false,
        }
    }

    /// The output as JSON (for storing it).
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        match (self.encode)(&*self.value) {
            Some(r) => r,
            None => Err(serde::ser::Error::custom("reply type mismatch")),
        }
    }

    /// True when this reply is a stored result replayed for a duplicate command.
    pub fn is_replayed(&self) -> bool {
        self.replayed
    }

    /// Marks the reply as replayed.
    pub fn into_replayed(mut self) -> Self {
        self.replayed = true;
        self
    }

    /// The output, if it is a `T`.
    pub fn downcast_ref<T: 'static>(&self) -> Option<&T> {
        self.value.downcast_ref::<T>()
    }

    fn into_output<C: Command>(self) -> Result<C::Output, CommandError> {
        self.value
            .downcast::<C::Output>()
            .map(|b| *b)
            .map_err(|_| CommandError::Output {
                command: C::NAME,
                detail: "a middleware returned a reply of another type".into(),
            })
    }
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reply")
            .field("replayed", &self.replayed)
            .finish_non_exhaustive()
    }
}

/// Typed values attached to a dispatch, by type.
#[derive(Clone, Default)]
pub struct Extensions(HashMap<TypeId, Arc<dyn Any + Send + Sync>>);

impl Extensions {
    /// Attaches a value, replacing one of the same type.
    pub fn insert<T: Send + Sync + 'static>(&mut self, value: T) {
        self.0.insert(TypeId::of::<T>(), Arc::new(value));
    }

    /// The value of type `T`, if any.
    pub fn get<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.0
            .get(&TypeId::of::<T>())
            .and_then(|v| v.downcast_ref())
    }

    /// Removes the value of type `T`; true if there was one.
    pub fn remove<T: Send + Sync + 'static>(&mut self) -> bool {
        self.0.remove(&TypeId::of::<T>()).is_some()
    }
}

impl fmt::Debug for Extensions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Extensions({} values)", self.0.len())
    }
}

/// What travels with a dispatch: the command's id, the ids that are written into the
/// metadata of every event it appends, and typed extensions.
///
/// Events appended during the dispatch get `correlation_id`, `user_id`, `tenant_id`
/// and custom keys from [`CommandContext::metadata`], and the command's id as their
/// `causation_id` (see [`CommandContext::event_metadata`]).
#[derive(Clone, Debug)]
pub struct CommandContext {
    command_id: Uuid,
    metadata: Metadata,
    extensions: Extensions,
    attempt: u32,
}

impl Default for CommandContext {
    fn default() -> Self {
        CommandContext::new()
    }
}

impl CommandContext {
    /// A context with a fresh command id.
    pub fn new() -> Self {
        CommandContext {
            command_id: *crate::EventId::new().as_uuid(),
            metadata: Metadata::default(),
            extensions: Extensions::default(),
            attempt: 1,
        }
    }

    /// The id of this dispatch.
    pub fn command_id(&self) -> Uuid {
        self.command_id
    }

    /// Sets the command id (for example from a client's request id).
    pub fn with_command_id(mut self, id: Uuid) -> Self {
        self.command_id = id;
        self
    }

    /// The ids carried by the dispatch: correlation id, causation id (what caused the
    /// command), user id, tenant id and custom keys.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Mutable access to the carried ids.
    pub fn metadata_mut(&mut self) -> &mut Metadata {
        &mut self.metadata
    }

    /// Sets the carried ids.
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// The metadata for events the command appends: the carried ids, with the command
    /// id as causation id.
    pub fn event_metadata(&self) -> Metadata {
        let mut m = self.metadata.clone();
        m.set_causation_id(Some(self.command_id.to_string()));
        m
    }

    /// Typed extensions.
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// Mutable typed extensions.
    pub fn extensions_mut(&mut self) -> &mut Extensions {
        &mut self.extensions
    }

    /// Which attempt this is (1 for the first; the retry middleware counts up).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Sets the attempt number.
    pub fn set_attempt(&mut self, attempt: u32) {
        self.attempt = attempt;
    }
}

tokio::task_local! {
    static AMBIENT: Metadata;
}

/// The event metadata of the command being handled on this task, if any.
///
/// The bus sets it while a handler runs; [`Repository`] saves merge it into every
/// event, so that correlation, causation, user and tenant ids reach the store even
/// when the handler does not pass them on.
pub fn ambient_metadata() -> Option<Metadata> {
    AMBIENT.try_with(Metadata::clone).ok()
}

/// A command on its way through the middleware chain: the command and its context.
#[derive(Clone, Debug)]
pub struct Dispatch {
    command: CommandEnvelope,
    context: CommandContext,
}

impl Dispatch {
    /// The command.
    pub fn command(&self) -> &CommandEnvelope {
        &self.command
    }

    /// The context.
    pub fn context(&self) -> &CommandContext {
        &self.context
    }

    /// Mutable context.
    pub fn context_mut(&mut self) -> &mut CommandContext {
        &mut self.context
    }
}

// ---------------------------------------------------------------------------
// Handlers and the bus.

pub(crate) trait ErasedHandler: Send + Sync {
    fn call(&self, dispatch: Dispatch) -> BoxFuture<'static, Result<Reply, CommandError>>;
}

struct FnHandler<C, F> {
    f: F,
    _c: std::marker::PhantomData<fn(C)>,
}

impl<C, F, Fut> ErasedHandler for FnHandler<C, F>
where
    C: Command,
    F: Fn(C, CommandContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<C::Output, CommandError>> + Send + 'static,
{
    fn call(&self, dispatch: Dispatch) -> BoxFuture<'static, Result<Reply, CommandError>> {
        let Some(cmd) = dispatch.command.downcast_ref::<C>().cloned() else {
            let name = dispatch.command.name();
            return Box::pin(async move {
                Err(CommandError::Output {
                    command: name,
                    detail: "handler received another command type".into(),
                })
            });
        };
        let ambient = dispatch.context.event_metadata();
        let fut = (self.f)(cmd, dispatch.context);
        Box::pin(AMBIENT.scope(ambient, async move { fut.await.map(Reply::new) }))
    }
}

/// How many times an aggregate handler re-sends a save that failed transiently.
const AGGREGATE_SAVE_RESENDS: u32 = 3;

/// Dispatches commands to their handlers through the middleware chain.
///
/// Middleware runs in the order it was added: the first added is the outermost.
#[derive(Clone, Default)]
pub struct CommandBus {
    handlers: HashMap<TypeId, Arc<dyn ErasedHandler>>,
    names: HashMap<&'static str, TypeId>,
    /// The chain, shared by every dispatch (rebuilt when middleware is added).
    middleware: Arc<[Arc<dyn Middleware>]>,
}

impl fmt::Debug for CommandBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandBus")
            .field("commands", &self.names.keys().collect::<Vec<_>>())
            .field("middleware", &self.middleware.len())
            .finish()
    }
}

impl CommandBus {
    /// A bus with no handlers and no middleware.
    pub fn new() -> Self {
        CommandBus::default()
    }

    /// Adds a middleware inside the ones added before.
    pub fn use_middleware(&mut self, m: impl Middleware) -> &mut Self {
        let mut chain = self.middleware.to_vec();
        chain.push(Arc::new(m));
        self.middleware = chain.into();
        self
    }

    /// Registers the handler of command type `C`: any async function or closure taking
    /// the command and its context.
    ///
    /// # Errors
    /// [`CommandError::AlreadyRegistered`] when `C` (or another type with the same
    /// name) already has a handler; the existing handler stays.
    pub fn register<C, F, Fut>(&mut self, handler: F) -> Result<&mut Self, CommandError>
    where
        C: Command,
        F: Fn(C, CommandContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<C::Output, CommandError>> + Send + 'static,
    {
        if self.handlers.contains_key(&TypeId::of::<C>()) || self.names.contains_key(C::NAME) {
            return Err(CommandError::AlreadyRegistered { command: C::NAME });
        }
        self.handlers.insert(
            TypeId::of::<C>(),
            Arc::new(FnHandler {
                f: handler,
                _c: std::marker::PhantomData,
            }),
        );
        self.names.insert(C::NAME, TypeId::of::<C>());
        Ok(self)
    }

    /// Registers a handler for an aggregate command: it loads the aggregate named by
    /// `id_of(&command)`, runs `decide` against its state, saves the events it returns
    /// (with the command's event metadata), and returns an [`AggregateOutcome`].
    ///
    /// `C::Output` must be [`AggregateOutcome`]. A decision error becomes
    /// [`CommandError::Rejected`]; the aggregate is reloaded on every attempt, so the
    /// retry middleware can retry conflicts. A save that fails with a transient store
    /// error is re-sent as is (same event ids) up to three times, so a commit whose
    /// reply was lost is recognised by the store instead of being applied twice.
    pub fn register_aggregate<C, A, S, Co, Snap, E>(
        &mut self,
        repository: Repository<A, S, Co, Snap>,
        id_of: impl Fn(&C) -> String + Send + Sync + 'static,
        decide: impl Fn(&A, &C) -> Result<Vec<A::Event>, E> + Send + Sync + 'static,
    ) -> Result<&mut Self, CommandError>
    where
        C: Command<Output = AggregateOutcome>,
        A: Aggregate,
        S: EventStore,
        Co: crate::codec::EventCodec<A::Event>,
        Snap: SnapshotStrategy<A> + 'static,
        E: Into<BoxError>,
    {
        let repo = Arc::new(repository);
        let id_of = Arc::new(id_of);
        let decide = Arc::new(decide);
        self.register(move |cmd: C, ctx: CommandContext| {
            let repo = repo.clone();
            let id_of = id_of.clone();
            let decide = decide.clone();
            async move {
                let id = id_of(&cmd);
                let mut root = repo.load(&id).await?;
                let events = decide(root.state(), &cmd).map_err(|e| CommandError::Rejected {
                    command: C::NAME,
                    source: e.into(),
                })?;
                root.record_all(events);
                let metadata = ctx.event_metadata();
                // A transient failure may hide a committed save whose reply was lost:
                // send the same save again (the same event ids), which the store
                // recognises as a repeat, instead of deciding again.
                let mut resends = 0;
                let result = loop {
                    match repo.save_with_metadata(&mut root, &metadata).await {
                        Err(crate::Error::Backend {
                            transient: true, ..
                        }) if resends < AGGREGATE_SAVE_RESENDS => {
                            resends += 1;
                            tokio::time::sleep(Duration::from_millis(5 << resends)).await;
                        }
                        other => break other?,
                    }
                };
                Ok(AggregateOutcome::new(id, &result))
            }
        })
    }

    /// True when `C` has a handler.
    pub fn is_registered<C: Command>(&self) -> bool {
        self.handlers.contains_key(&TypeId::of::<C>())
    }

    /// Dispatches a command with a fresh context.
    pub async fn dispatch<C: Command>(&self, command: C) -> Result<C::Output, CommandError> {
        self.dispatch_with(command, CommandContext::new()).await
    }

    /// Dispatches a command with the caller's context (for example carrying a
    /// correlation id and user taken from an HTTP request).
    pub async fn dispatch_with<C: Command>(
        &self,
        command: C,
        context: CommandContext,
    ) -> Result<C::Output, CommandError> {
        let Some(handler) = self.handlers.get(&TypeId::of::<C>()) else {
            return Err(CommandError::HandlerNotFound { command: C::NAME });
        };
        let dispatch = Dispatch {
            command: CommandEnvelope::new(command),
            context,
        };
        let next = Next::new(self.middleware.clone(), handler.clone());
        next.run(dispatch).await?.into_output::<C>()
    }
}

/// What an aggregate command handler returns: the aggregate, its new version, and the
/// events the command stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct AggregateOutcome {
    /// The aggregate's id.
    pub aggregate_id: String,
    /// Its version after the command (unchanged when the command decided nothing).
    pub version: u64,
    /// The stored events, in order.
    pub events: Vec<EventSummary>,
}

/// A stored event, summarized.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct EventSummary {
    /// The event's id.
    pub id: crate::EventId,
    /// Its type name.
    pub event_type: String,
    /// Its stream version.
    pub version: u64,
    /// Its feed position.
    pub position: crate::Position,
}

impl AggregateOutcome {
    /// Summarizes an append result.
    pub fn new(aggregate_id: impl Into<String>, result: &AppendResult) -> Self {
        AggregateOutcome {
            aggregate_id: aggregate_id.into(),
            version: result.version,
            events: result
                .events
                .iter()
                .map(|e| EventSummary {
                    id: e.id,
                    event_type: e.event_type.to_string(),
                    version: e.version,
                    position: e.position,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests;
