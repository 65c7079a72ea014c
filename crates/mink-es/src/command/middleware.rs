//! Middleware: `handle(dispatch, next)`, composed in a chain around the handler.
//!
//! Write one with [`from_fn`] (an async closure, like axum's `from_fn`), implement
//! [`Middleware`], or bring a tower layer with [`TowerLayer`]. The built-ins cover
//! validation, panic recovery, logging, correlation ids, timeouts, retries on
//! conflicts, metrics and tracing; idempotency and audit live in their own modules.
//!
//! Metric names (through the `metrics` facade; install any recorder):
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `mink_commands_total` | counter | `command`, `outcome` (`ok` or an error kind) |
//! | `mink_command_errors_total` | counter | `command`, `kind` |
//! | `mink_command_duration_seconds` | histogram | `command` |
//! | `mink_commands_in_flight` | gauge | `command` |
//! | `mink_command_retries_total` | counter | `command` |

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use tracing::Instrument;

use super::{CommandError, Dispatch, ErasedHandler, Reply};
use crate::BoxError;

/// A step in the dispatch chain.
pub trait Middleware: Send + Sync + 'static {
    /// Handles a dispatch: inspect or change it, call `next.run(dispatch)` (or not),
    /// and inspect or change the result.
    fn handle(
        self: Arc<Self>,
        dispatch: Dispatch,
        next: Next,
    ) -> BoxFuture<'static, Result<Reply, CommandError>>;
}

/// The rest of the chain: the middleware after this one, then the handler.
#[derive(Clone)]
pub struct Next {
    chain: Arc<[Arc<dyn Middleware>]>,
    index: usize,
    handler: Arc<dyn ErasedHandler>,
}

impl Next {
    pub(crate) fn new(chain: Arc<[Arc<dyn Middleware>]>, handler: Arc<dyn ErasedHandler>) -> Self {
        Next {
            chain,
            index: 0,
            handler,
        }
    }

    /// Runs the rest of the chain.
    pub fn run(self, dispatch: Dispatch) -> BoxFuture<'static, Result<Reply, CommandError>> {
        match self.chain.get(self.index).cloned() {
            Some(m) => {
                let next = Next {
                    index: self.index + 1,
                    ..self
                };
                m.handle(dispatch, next)
            }
            None => self.handler.call(dispatch),
        }
    }
}

impl tower_service::Service<Dispatch> for Next {
    type Response = Reply;
    type Error = CommandError;
    type Future = BoxFuture<'static, Result<Reply, CommandError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), CommandError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dispatch: Dispatch) -> Self::Future {
        self.clone().run(dispatch)
    }
}

/// A middleware from an async function `(dispatch, next) -> result`.
///
/// ```
/// use mink_es::command::middleware::from_fn;
/// let log_names = from_fn(|dispatch, next| async move {
///     println!("dispatching {}", dispatch.command().name());
///     next.run(dispatch).await
/// });
/// # let mut bus = mink_es::command::CommandBus::new();
/// bus.use_middleware(log_names);
/// ```
pub fn from_fn<F, Fut>(f: F) -> FromFn<F>
where
    F: Fn(Dispatch, Next) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Reply, CommandError>> + Send + 'static,
{
    FromFn(f)
}

/// See [`from_fn`].
pub struct FromFn<F>(F);

impl<F, Fut> Middleware for FromFn<F>
where
    F: Fn(Dispatch, Next) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Reply, CommandError>> + Send + 'static,
{
    fn handle(
        self: Arc<Self>,
        dispatch: Dispatch,
        next: Next,
    ) -> BoxFuture<'static, Result<Reply, CommandError>> {
        Box::pin((self.0)(dispatch, next))
    }
}

/// Brings a tower layer into the chain: the layer wraps the rest of the chain as a
/// `tower::Service<Dispatch>`. Errors that are not [`CommandError`]s (such as a tower
/// timeout) become [`CommandError::Middleware`].
pub struct TowerLayer<L>(L);

impl<L> TowerLayer<L> {
    /// Wraps a layer.
    pub fn new(layer: L) -> Self {
        TowerLayer(layer)
    }
}

impl<L> Middleware for TowerLayer<L>
where
    L: tower_layer::Layer<Next> + Send + Sync + 'static,
    L::Service: tower_service::Service<Dispatch, Response = Reply> + Send + 'static,
    <L::Service as tower_service::Service<Dispatch>>::Error: Into<BoxError>,
    <L::Service as tower_service::Service<Dispatch>>::Future: Send + 'static,
{
    fn handle(
        self: Arc<Self>,
        dispatch: Dispatch,
        next: Next,
    ) -> BoxFuture<'static, Result<Reply, CommandError>> {
        use tower_service::Service;
        let mut svc = self.0.layer(next);
        Box::pin(async move {
            let into = |e: <L::Service as Service<Dispatch>>::Error| {
                let boxed: BoxError = e.into();
                match boxed.downcast::<CommandError>() {
                    Ok(c) => *c,
                    Err(other) => CommandError::Middleware(other),
                }
            };
            futures::future::poll_fn(|cx| svc.poll_ready(cx))
                .await
                .map_err(into)?;
            svc.call(dispatch).await.map_err(into)
        })
    }
}

/// Runs the command's own validation; an invalid command never reaches the handler.
#[derive(Clone, Copy, Debug, Default)]
pub struct Validation;

impl Middleware for Validation {
    fn handle(
        self: Arc<Self>,
        dispatch: Dispatch,
        next: Next,
    ) -> BoxFuture<'static, Result<Reply, CommandError>> {
        match dispatch.command().validate() {
            Ok(()) => next.run(dispatch),
            Err(errors) => {
                let command = dispatch.command().name();
                Box::pin(async move { Err(CommandError::Invalid { command, errors }) })
            }
        }
    }
}

/// Turns a panicking handler (or inner middleware) into [`CommandError::Panicked`];
/// the bus keeps serving.
#[derive(Clone, Copy, Debug, Default)]
pub struct Recovery;

impl Middleware for Recovery {
    fn handle(
        self: Arc<Self>,
        dispatch: Dispatch,
        next: Next,
    ) -> BoxFuture<'static, Result<Reply, CommandError>> {
        let command = dispatch.command().name();
        Box::pin(async move {
            match AssertUnwindSafe(next.run(dispatch)).catch_unwind().await {
                Ok(r) => r,
                Err(payload) => {
                    let message = payload
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "non-text panic payload".to_owned());
                    tracing::error!(command, %message, "command handler panicked");
                    Err(CommandError::Panicked { command, message })
                }
            }
        })
    }
}

/// Logs each dispatch through `tracing`: its start at debug, its end at info (success),
/// warn (rejected, invalid, conflict) or error (anything else), with its duration.
#[derive(Clone, Copy, Debug, Default)]
pub struct Logging;

impl Middleware for Logging {
    fn handle(
        self: Arc<Self>,
        dispatch: Dispatch,
        next: Next,
    ) -> BoxFuture<'static, Result<Reply, CommandError>> {
        let command = dispatch.command().name();
        let command_id = dispatch.context().command_id();
        Box::pin(async move {
            tracing::debug!(command, %command_id, "dispatching command");
            let start = Instant::now();
            let result = next.run(dispatch).await;
            let elapsed_ms = start.elapsed().as_secs_f64() * 1000.0;
            match &result {
                Ok(reply) => {
                    tracing::info!(command, %command_id, elapsed_ms, replayed = reply.is_replayed(), "command succeeded")
                }
                Err(e) => match e.kind() {
                    "rejected" | "invalid" | "conflict" | "in_progress" => {
                        tracing::warn!(command, %command_id, elapsed_ms, kind = e.kind(), error = %e, "command failed")
                    }
                    _ => {
                        tracing::error!(command, %command_id, elapsed_ms, kind = e.kind(), error = %e, "command failed")
                    }
                },
            }
            result
        })
    }
}

/// Extracts an id from a dispatch.
type IdExtractor = Box<dyn Fn(&Dispatch) -> Option<String> + Send + Sync>;

/// Returns the current trace context as a metadata key and value.
type TraceContext = Arc<dyn Fn() -> Option<(String, String)> + Send + Sync>;

/// Fills in the correlation id (a fresh UUIDv7 unless the caller set one) and, when
/// configured, user and tenant ids taken from the command. These ids then travel in
/// the context and are written into every event the command appends.
#[derive(Default)]
pub struct Correlation {
    user_of: Option<IdExtractor>,
    tenant_of: Option<IdExtractor>,
    require_tenant: bool,
}

impl Correlation {
    /// Generates missing correlation ids.
    pub fn new() -> Self {
        Correlation::default()
    }

    /// Takes the user id from the dispatch when the caller did not set one.
    pub fn user_from(
        mut self,
        f: impl Fn(&Dispatch) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.user_of = Some(Box::new(f));
        self
    }

    /// Takes the tenant id from the dispatch when the caller did not set one.
    pub fn tenant_from(
        mut self,
        f: impl Fn(&Dispatch) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.tenant_of = Some(Box::new(f));
        self
    }

    /// Refuses commands without a tenant id ([`CommandError::Invalid`] on `tenantId`).
    pub fn require_tenant(mut self) -> Self {
        self.require_tenant = true;
        self
    }
}

impl Middleware for Correlation {
    fn handle(
        self: Arc<Self>,
        mut dispatch: Dispatch,
        next: Next,
    ) -> BoxFuture<'static, Result<Reply, CommandError>> {
        let user = match (&self.user_of, dispatch.context().metadata().user_id()) {
            (Some(f), None) => f(&dispatch),
            _ => None,
        };
        let tenant = match (&self.tenant_of, dispatch.context().metadata().tenant_id()) {
            (Some(f), None) => f(&dispatch),
            _ => None,
        };
        let md = dispatch.context_mut().metadata_mut();
        if md.correlation_id().is_none() {
            md.set_correlation_id(Some(crate::EventId::new().to_string()));
        }
        // An enclosing `Tracing` span declared the field before the id existed.
        if let Some(id) = md.correlation_id() {
            tracing::Span::current().record("mink.correlation_id", id);
        }
        if user.is_some() {
            md.set_user_id(user);
        }
        if tenant.is_some() {
            md.set_tenant_id(tenant);
        }
        if self.require_tenant && md.tenant_id().is_none() {
            let command = dispatch.command().name();
            return Box::pin(async move {
                Err(CommandError::Invalid {
                    command,
                    errors: super::ValidationErrors::new()
                        .add("tenantId", "a tenant id is required"),
                })
            });
        }
        next.run(dispatch)
    }
}

/// Fails a dispatch that takes longer than a limit with [`CommandError::TimedOut`].
/// The handler's future is dropped, which rolls back an unfinished store transaction.
#[derive(Clone, Copy, Debug)]
pub struct Timeout(pub Duration);

impl Middleware for Timeout {
    fn handle(
        self: Arc<Self>,
        dispatch: Dispatch,
        next: Next,
    ) -> BoxFuture<'static, Result<Reply, CommandError>> {
        let command = dispatch.command().name();
        let after = self.0;
        Box::pin(async move {
            match tokio::time::timeout(after, next.run(dispatch)).await {
                Ok(r) => r,
                Err(_) => Err(CommandError::TimedOut { command, after }),
            }
        })
    }
}

/// Retries a dispatch that failed with a concurrency conflict, with exponential
/// backoff, full jitter and a cap on attempts. The handler runs again from the start,
/// so an aggregate handler re-loads the aggregate and decides again.
///
/// Transient store errors (a lost connection, a busy database) are *not* retried by
/// default: the failed attempt may have committed before its reply was lost, and a
/// handler that decides again would apply the command twice. Turn them on with
/// [`Retry::transient_errors`] only for handlers that are idempotent on their own
/// (aggregate handlers registered with `register_aggregate` already re-send the same
/// save, with the same event ids, when a save fails transiently).
#[derive(Clone, Debug)]
pub struct Retry {
    /// Attempts in total, including the first (at least 1). Default 5.
    pub max_attempts: u32,
    /// The first backoff. Default 10 ms.
    pub base_delay: Duration,
    /// The longest backoff. Default 1 s.
    pub max_delay: Duration,
    /// Also retry transient store errors. Default false.
    pub retry_transient: bool,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            max_attempts: 5,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_secs(1),
            retry_transient: false,
        }
    }
}

impl Retry {
    /// The default policy with another attempt cap.
    pub fn attempts(max_attempts: u32) -> Self {
        Retry {
            max_attempts: max_attempts.max(1),
            ..Retry::default()
        }
    }

    /// Also retries transient store errors (see the type's docs for when that is safe).
    pub fn transient_errors(mut self) -> Self {
        self.retry_transient = true;
        self
    }

    /// Whether this policy retries `error`.
    pub fn retries(&self, error: &crate::Error) -> bool {
        error.is_conflict()
            || (self.retry_transient
                && matches!(
                    error,
                    crate::Error::Backend {
                        transient: true,
                        ..
                    }
                ))
    }

    /// The upper bound of the backoff before attempt `attempt + 1`.
    pub fn backoff_ceiling(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }
}

impl Middleware for Retry {
    fn handle(
        self: Arc<Self>,
        dispatch: Dispatch,
        next: Next,
    ) -> BoxFuture<'static, Result<Reply, CommandError>> {
        Box::pin(async move {
            let command = dispatch.command().name();
            let mut attempt = 1u32;
            loop {
                let mut d = dispatch.clone();
                d.context_mut().set_attempt(attempt);
                match next.clone().run(d).await {
                    Err(CommandError::Store(e))
                        if self.retries(&e) && attempt < self.max_attempts =>
                    {
                        let ceiling = self.backoff_ceiling(attempt);
                        let delay = ceiling.mul_f64(rand::random::<f64>());
                        tracing::debug!(command, attempt, ?delay, error = %e, "retrying command");
                        metrics::counter!("mink_command_retries_total", "command" => command)
                            .increment(1);
                        tokio::time::sleep(delay).await;
                        attempt += 1;
                    }
                    other => return other,
                }
            }
        })
    }
}

/// Records the metrics listed in the [module docs](self).
#[derive(Clone, Copy, Debug, Default)]
pub struct Metrics;

impl Middleware for Metrics {
    fn handle(
        self: Arc<Self>,
        dispatch: Dispatch,
        next: Next,
    ) -> BoxFuture<'static, Result<Reply, CommandError>> {
        let command = dispatch.command().name();
        Box::pin(async move {
            let in_flight = metrics::gauge!("mink_commands_in_flight", "command" => command);
            in_flight.increment(1.0);
            let start = Instant::now();
            let result = next.run(dispatch).await;
            in_flight.decrement(1.0);
            metrics::histogram!("mink_command_duration_seconds", "command" => command)
                .record(start.elapsed().as_secs_f64());
            let outcome = match &result {
                Ok(_) => "ok",
                Err(e) => {
                    metrics::counter!("mink_command_errors_total", "command" => command, "kind" => e.kind())
                        .increment(1);
                    e.kind()
                }
            };
            metrics::counter!("mink_commands_total", "command" => command, "outcome" => outcome)
                .increment(1);
            result
        })
    }
}

/// Puts each dispatch in a `tracing` span named `command` with OpenTelemetry-style
/// fields (`otel.name = "command <Name>"`, `otel.kind`, `otel.status_code`,
/// `mink.command.type`, `mink.command.id`, `mink.correlation_id`, `error.type`).
///
/// With [`Tracing::propagate_with`], a function returns the current trace context
/// (for example a W3C `traceparent` from `tracing-opentelemetry`); it is written into
/// the custom metadata of every event the command appends, under the key it names.
#[derive(Clone, Default)]
pub struct Tracing {
    propagate: Option<TraceContext>,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing")
            .field("propagates", &self.propagate.is_some())
            .finish()
    }
}

impl Tracing {
    /// Spans only.
    pub fn new() -> Self {
        Tracing::default()
    }

    /// Also writes trace context into event metadata: `f` runs inside the command's
    /// span and returns a `(key, value)` pair such as `("traceparent", "00-…")`.
    pub fn propagate_with(
        mut self,
        f: impl Fn() -> Option<(String, String)> + Send + Sync + 'static,
    ) -> Self {
        self.propagate = Some(Arc::new(f));
        self
    }
}

impl Middleware for Tracing {
    fn handle(
        self: Arc<Self>,
        mut dispatch: Dispatch,
        next: Next,
    ) -> BoxFuture<'static, Result<Reply, CommandError>> {
        let command = dispatch.command().name();
        let span = tracing::info_span!(
            "command",
            otel.name = %format_args!("command {command}"),
            otel.kind = "internal",
            otel.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
            mink.command.type = command,
            mink.command.id = %dispatch.context().command_id(),
            mink.correlation_id = dispatch.context().metadata().correlation_id().unwrap_or(""),
        );
        if let Some((key, value)) = self.propagate.as_ref().and_then(|f| span.in_scope(|| f())) {
            dispatch
                .context_mut()
                .metadata_mut()
                .insert_custom(key, value);
        }
        let recorded = span.clone();
        Box::pin(
            async move {
                let result = next.run(dispatch).await;
                match &result {
                    Ok(_) => {
                        recorded.record("otel.status_code", "OK");
                    }
                    Err(e) => {
                        recorded.record("otel.status_code", "ERROR");
                        recorded.record("error.type", e.kind());
                    }
                }
                result
            }
            .instrument(span),
        )
    }
}
