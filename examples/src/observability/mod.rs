//! Watching the command bus: Prometheus metrics over HTTP, and OpenTelemetry traces
//! whose context reaches the stored events.
//!
//! The bus's `Metrics` middleware records through the [`metrics`] facade and its
//! `Tracing` middleware opens a `tracing` span per command. Neither knows where the data
//! goes; this module plugs in the usual destinations:
//!
//! - [`install_prometheus`] installs `metrics-exporter-prometheus` as the global
//!   recorder, serving the Prometheus text format at `http://127.0.0.1:<port>/metrics`
//!   (loopback only);
//! - [`tracer_provider`] and [`install_tracing`] build an OpenTelemetry trace pipeline
//!   (any span exporter: stdout in the binary, in memory in the test) and route `tracing`
//!   spans into it through `tracing-opentelemetry`;
//! - [`command_tracing`] is the `Tracing` middleware with [`traceparent`] as its
//!   propagator: each event a command stores carries the W3C `traceparent` of the
//!   command's span in its metadata, so that whoever reads the event (a projection, the
//!   outbox) can continue the trace.
//!
//! [`run_demo`] dispatches a few of the shop's commands through such a bus. Run it with
//! `cargo run -p mink-examples --bin observability` (add `-- --serve` to keep the
//! endpoint up for a real Prometheus).
//!
//! Metric names (documented in `mink_es::command::middleware`):
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `mink_commands_total` | counter | `command`, `outcome` (`ok` or an error kind) |
//! | `mink_command_errors_total` | counter | `command`, `kind` |
//! | `mink_command_duration_seconds` | histogram (buckets: [`DURATION_BUCKETS`]) | `command` |
//! | `mink_commands_in_flight` | gauge | `command` |
//! | `mink_command_retries_total` | counter | `command` |
//! | `mink_command_replays_total` | counter | `command` |

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use mink_es::command::CommandError;
use mink_es::command::middleware::Tracing;
use mink_es::prelude::*;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanExporter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

use crate::shop::{
    Caller, Dispatched, OrderLine, PayOrder, PlaceOrder, ReceiveStock, ShipOrder, Shop, ShopError,
};

/// The Prometheus endpoint's default port (the one OpenTelemetry's Prometheus exporter
/// uses by convention).
pub const DEFAULT_METRICS_PORT: u16 = 9464;

/// The service name traces are exported under.
pub const SERVICE_NAME: &str = "mink-shop";

/// Histogram buckets of `mink_command_duration_seconds`, in seconds (Prometheus
/// histograms, unlike summaries, can be aggregated across instances).
pub const DURATION_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The metadata key the trace context is stored under in events.
pub const TRACEPARENT: &str = "traceparent";

/// Why the observability pipeline could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ObservabilityError {
    /// The Prometheus exporter runs on Tokio; it was set up outside a runtime.
    #[error("the Prometheus exporter must be installed from inside a Tokio runtime")]
    NoRuntime,
    /// The Prometheus exporter could not be built or installed (for example the port is
    /// taken, or another metrics recorder is already installed).
    #[error("cannot start the Prometheus exporter: {0}")]
    Prometheus(#[from] BuildError),
    /// A global `tracing` subscriber is already installed.
    #[error("cannot install the tracing subscriber: {0}")]
    Subscriber(#[from] tracing::subscriber::SetGlobalDefaultError),
    /// A socket operation failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The installed Prometheus exporter.
#[derive(Clone, Debug)]
pub struct MetricsEndpoint {
    addr: SocketAddr,
    handle: PrometheusHandle,
}

impl MetricsEndpoint {
    /// The address the endpoint listens on (always on 127.0.0.1).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The scrape URL.
    pub fn url(&self) -> String {
        format!("http://{}/metrics", self.addr)
    }

    /// The current metrics in the Prometheus text format, without going through HTTP.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

/// A port on 127.0.0.1 that was free a moment ago (the OS picks it; another process may
/// take it before it is used, which is unlikely).
///
/// # Errors
/// When no socket can be bound on 127.0.0.1.
pub fn free_local_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// Installs `metrics-exporter-prometheus` as the global metrics recorder, serving
/// `/metrics` on `127.0.0.1:port` (and nowhere else). Port 0 picks a free port (the
/// exporter binds the address it is given and cannot report an ephemeral port, so a
/// free one is found first; that is tried up to three times).
///
/// `mink_command_duration_seconds` is exported as a histogram with
/// [`DURATION_BUCKETS`]; other histograms as summaries.
///
/// # Errors
/// Outside a Tokio runtime; when the port cannot be bound; when a metrics recorder is
/// already installed in this process.
pub fn install_prometheus(port: u16) -> Result<MetricsEndpoint, ObservabilityError> {
    let runtime =
        tokio::runtime::Handle::try_current().map_err(|_| ObservabilityError::NoRuntime)?;
    let mut attempt = 1;
    loop {
        let chosen = if port == 0 { free_local_port()? } else { port };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, chosen));
        let builder = PrometheusBuilder::new()
            .with_http_listener(addr)
            .add_allowed_address("127.0.0.0/8")?
            .set_buckets_for_metric(
                Matcher::Full("mink_command_duration_seconds".into()),
                DURATION_BUCKETS,
            )?;
        // `build` binds the listener and spawns the recorder's upkeep on the runtime.
        let built = {
            let _entered = runtime.enter();
            builder.build()
        };
        match built {
            Ok((recorder, exporter)) => {
                let handle = recorder.handle();
                metrics::set_global_recorder(recorder).map_err(BuildError::from)?;
                runtime.spawn(async move {
                    if let Err(e) = exporter.await {
                        tracing::error!(error = ?e, "the Prometheus endpoint stopped");
                    }
                });
                return Ok(MetricsEndpoint { addr, handle });
            }
            Err(BuildError::FailedToCreateHTTPListener(_)) if port == 0 && attempt < 3 => {
                attempt += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A tracer provider that sends every finished span to `exporter` as it ends (a simple
/// processor: fine for an example and for tests; use a batch processor in a service),
/// under the service name [`SERVICE_NAME`].
pub fn tracer_provider<E: SpanExporter + 'static>(exporter: E) -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_simple_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(SERVICE_NAME).build())
        .build()
}

/// Installs a global `tracing` subscriber that turns spans into OpenTelemetry spans of
/// `provider` (a registry with the `tracing-opentelemetry` layer), and the W3C trace
/// context as the global text-map propagator.
///
/// # Errors
/// When a global subscriber is already installed.
pub fn install_tracing(provider: &SdkTracerProvider) -> Result<(), ObservabilityError> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let tracer = provider.tracer("mink-examples");
    // Source locations, thread ids and busy/idle times are on by default; they make the
    // printed spans of this example three times longer, so they are left out.
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false);
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::set_global_default(subscriber)?;
    Ok(())
}

/// The W3C trace context of the current span, as the metadata entry
/// `("traceparent", "00-<trace id>-<span id>-<flags>")`; `None` outside a span that
/// OpenTelemetry records.
pub fn traceparent() -> Option<(String, String)> {
    let context = tracing::Span::current().context();
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier
        .remove(TRACEPARENT)
        .map(|value| (TRACEPARENT.to_owned(), value))
}

/// The bus's `Tracing` middleware, writing [`traceparent`] into the metadata of every
/// event a command stores.
pub fn command_tracing() -> Tracing {
    Tracing::new().propagate_with(traceparent)
}

/// Reads `http://<addr><path>` with a plain HTTP/1.1 GET and returns the body.
///
/// # Errors
/// When the connection fails, or the answer is not a `200 OK`.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(response.len());
    let head = String::from_utf8_lossy(&response[..split]);
    let body = response.get(split + 4..).unwrap_or_default();
    let status = head.lines().next().unwrap_or("");
    if !status.contains(" 200 ") {
        return Err(std::io::Error::other(format!(
            "GET {path}: unexpected answer {status:?}"
        )));
    }
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_vec()
    };
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// Decodes a chunked HTTP body (enough for a trusted local endpoint; a malformed one
/// is cut where it stops making sense).
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = body.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&body[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .unwrap_or(0);
        let rest = &body[eol + 2..];
        let Some(chunk) = rest.get(..size).filter(|_| size > 0) else {
            break;
        };
        out.extend_from_slice(chunk);
        body = rest.get(size..).unwrap_or_default();
        body = body.strip_prefix(b"\r\n").unwrap_or(body);
    }
    out
}

/// Dispatches a few of the shop's commands, inside one `demo` span (so that their
/// spans share a trace): stock arrives, an order is placed, paid (first with a wrong
/// amount: rejected; then twice with the same request id: replayed), and shipped; an
/// empty order is invalid; an order for more than the stock holds is refused. Returns the dispatches and how they ended.
///
/// # Errors
/// When a command that should succeed fails.
pub async fn run_demo<S: EventStore + SnapshotStore>(
    shop: &Shop<S>,
) -> Result<Vec<Dispatched>, ShopError> {
    async {
        let warehouse = Caller::user("warehouse");
        let alice = Caller::user("alice").with_correlation_id("checkout-2001");
        let bob = Caller::user("bob");
        for (sku, quantity, request_id) in [("KB-01", 10, "obs-1"), ("MS-02", 5, "obs-2")] {
            let cmd = ReceiveStock {
                sku: sku.into(),
                quantity,
                request_id: request_id.into(),
            };
            shop.dispatch(cmd, &warehouse).await?;
        }
        let lines = vec![
            OrderLine::new("KB-01", 1, 4_999),
            OrderLine::new("MS-02", 2, 1_999),
        ];
        let placed = PlaceOrder {
            order_id: "2001".into(),
            customer: "alice".into(),
            lines,
            request_id: "obs-3".into(),
        };
        shop.dispatch(placed, &alice).await?;
        let pay = |amount_cents, request_id: &str| PayOrder {
            order_id: "2001".into(),
            amount_cents,
            payment_ref: "PAY-1".into(),
            request_id: request_id.into(),
        };
        expect_refusal(shop.dispatch(pay(100, "obs-4"), &alice).await)?;
        shop.dispatch(pay(8_997, "obs-5"), &alice).await?;
        // The payment provider calls back twice: the duplicate is answered from the
        // idempotency store (`mink_command_replays_total`).
        shop.dispatch(pay(8_997, "obs-5"), &alice).await?;
        let ship = ShipOrder {
            order_id: "2001".into(),
            carrier: "DHL".into(),
            request_id: "obs-6".into(),
        };
        shop.dispatch(ship, &warehouse).await?;
        let empty = PlaceOrder {
            order_id: "2002".into(),
            customer: "bob".into(),
            lines: Vec::new(),
            request_id: "obs-7".into(),
        };
        expect_refusal(shop.dispatch(empty, &bob).await)?;
        let too_many = PlaceOrder {
            order_id: "2003".into(),
            customer: "bob".into(),
            lines: vec![OrderLine::new("MS-02", 10, 1_999)],
            request_id: "obs-8".into(),
        };
        expect_refusal(shop.dispatch(too_many, &bob).await)?;
        Ok(shop.dispatched())
    }
    .instrument(tracing::info_span!("demo", otel.name = "shop demo"))
    .await
}

/// Turns an expected refusal into `Ok`, and an unexpected success into an error.
fn expect_refusal<T>(result: Result<T, ShopError>) -> Result<(), ShopError> {
    match result {
        Err(
            ShopError::Order { .. }
            | ShopError::Stock { .. }
            | ShopError::Command(CommandError::Invalid { .. }),
        ) => Ok(()),
        Err(other) => Err(other),
        Ok(_) => Err(ShopError::Story(
            "a command that should be refused succeeded".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_decoded() {
        assert_eq!(
            dechunk(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            b"hello world"
        );
        assert_eq!(dechunk(b"zz\r\n"), b"");
        assert_eq!(dechunk(b"ff\r\nshort"), b"");
    }

    #[test]
    fn no_traceparent_outside_a_span() {
        assert_eq!(traceparent(), None);
    }
}
