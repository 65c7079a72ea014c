//! The shop's command bus, watched: Prometheus metrics over HTTP and OpenTelemetry
//! traces.
//!
//! ```text
//! cargo run -p mink-examples --bin observability             # run, print, exit
//! cargo run -p mink-examples --bin observability -- --serve  # then keep /metrics up
//! cargo run -p mink-examples --bin observability -- --port 0 # any free port
//! ```
//!
//! It dispatches a few of the shop's commands on a temporary SQLite file. Spans go to
//! the OpenTelemetry stdout exporter (printed as each one ends); the stored events'
//! `traceparent` and the scrape of `http://127.0.0.1:<port>/metrics` are printed after.
//! The endpoint listens on 127.0.0.1 only. The code is in
//! `examples/src/observability/`.

use anyhow::Context;
use clap::Parser;
use mink_examples::observability::{
    self, DEFAULT_METRICS_PORT, TRACEPARENT, command_tracing, install_prometheus, install_tracing,
    tracer_provider,
};
use mink_examples::shop::scenario::read_all;
use mink_examples::shop::{CommandStores, Shop};
use mink_sqlite::SqliteStore;

/// mink's observability example: Prometheus metrics and OpenTelemetry traces of the
/// shop's commands.
#[derive(Debug, Parser)]
struct Args {
    /// The port of the Prometheus endpoint on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = DEFAULT_METRICS_PORT)]
    port: u16,
    /// After the demo, keep serving /metrics until Ctrl-C.
    #[arg(long)]
    serve: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();

    let endpoint = install_prometheus(args.port).with_context(|| {
        format!(
            "cannot serve metrics on 127.0.0.1:{} (try another --port, or --port 0)",
            args.port
        )
    })?;
    let provider = tracer_provider(opentelemetry_stdout::SpanExporter::default());
    install_tracing(&provider)?;

    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(dir.path().join("observability.db"))?;
    let shop = Shop::with_tracing(
        store.clone(),
        CommandStores::sqlite(&store),
        command_tracing(),
    )?;

    println!("metrics: {}", endpoint.url());
    println!();
    println!("== Spans, as the OpenTelemetry stdout exporter prints them ==");
    let dispatched = observability::run_demo(&shop).await?;

    println!();
    println!("== Commands ==");
    for d in &dispatched {
        println!(
            "  {:<12} {:<5} by {:<9} -> {}",
            d.command,
            d.aggregate_id.as_deref().unwrap_or("-"),
            d.user_id,
            d.outcome
        );
    }

    println!();
    println!("== Stored events and the trace context in their metadata ==");
    for e in read_all(&store).await? {
        println!(
            "  {:<16} v{} {:<15} {TRACEPARENT}={}",
            e.stream_id.as_str(),
            e.version,
            e.event_type.as_str(),
            e.metadata.custom_value(TRACEPARENT).unwrap_or("-")
        );
    }

    println!();
    println!("== GET {} (the mink_ lines) ==", endpoint.url());
    let scrape = observability::http_get(endpoint.addr(), "/metrics").await?;
    for line in scrape.lines().filter(|l| l.contains("mink_")) {
        println!("  {line}");
    }

    if args.serve {
        println!();
        println!(
            "serving {} (127.0.0.1 only); Ctrl-C to stop",
            endpoint.url()
        );
        tokio::signal::ctrl_c().await?;
    }
    provider.shutdown()?;
    Ok(())
}
