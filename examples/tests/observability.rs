//! The observability example, checked end to end: the Prometheus exporter on a free
//! local port is scraped over plain HTTP, the OpenTelemetry spans are read from an
//! in-memory exporter, and the `traceparent` in the stored events is matched to them.
//!
//! One test: the metrics recorder and the tracing subscriber are global to the process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};

use mink_es::Uuid;
use mink_examples::observability::{
    TRACEPARENT, command_tracing, install_prometheus, install_tracing, run_demo, tracer_provider,
};
use mink_examples::shop::scenario::read_all;
use mink_examples::shop::{CommandStores, Shop};
use mink_sqlite::SqliteStore;
use opentelemetry::trace::Status;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A plain HTTP/1.0 GET (the server closes the connection after its answer); returns
/// the status line and the body.
async fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// The value of one series (`name{labels}`) in a Prometheus text exposition.
fn sample(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .filter(|rest| rest.starts_with(' '))
                .map(|rest| rest.trim().parse::<f64>().unwrap())
        })
        .unwrap_or_else(|| panic!("no series {series} in\n{body}"))
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_measured_and_traced() {
    let endpoint = install_prometheus(0).unwrap();
    assert_eq!(endpoint.addr().ip(), Ipv4Addr::LOCALHOST);
    assert_ne!(endpoint.addr().port(), 0);
    let exporter = InMemorySpanExporter::default();
    let provider = tracer_provider(exporter.clone());
    install_tracing(&provider).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("observability.db")).unwrap();
    let shop = Shop::with_tracing(
        store.clone(),
        CommandStores::sqlite(&store),
        command_tracing(),
    )
    .unwrap();
    let dispatched = run_demo(&shop).await.unwrap();
    let outcomes: Vec<(&str, &str)> = dispatched.iter().map(|d| (d.command, d.outcome)).collect();
    assert_eq!(
        outcomes,
        [
            ("ReceiveStock", "ok"),
            ("ReceiveStock", "ok"),
            ("PlaceOrder", "ok"),
            ("PayOrder", "rejected"),
            ("PayOrder", "ok"),
            ("PayOrder", "ok"), // the duplicate, replayed
            ("ShipOrder", "ok"),
            ("PlaceOrder", "invalid"),
            ("PlaceOrder", "rejected"),
        ]
    );

    // --- Metrics: scraped over HTTP, with the documented names and labels.
    let (status, body) = get(endpoint.addr(), "/metrics").await;
    assert!(status.contains(" 200 "), "{status}");
    for declaration in [
        "# TYPE mink_commands_total counter",
        "# TYPE mink_command_errors_total counter",
        "# TYPE mink_command_duration_seconds histogram",
        "# TYPE mink_commands_in_flight gauge",
        "# TYPE mink_command_replays_total counter",
    ] {
        assert!(
            body.lines().any(|l| l == declaration),
            "{declaration}\n{body}"
        );
    }
    let total = |command: &str, outcome: &str| {
        sample(
            &body,
            &format!(r#"mink_commands_total{{command="{command}",outcome="{outcome}"}}"#),
        )
    };
    assert_eq!(total("ReceiveStock", "ok"), 2.0);
    assert_eq!(total("PlaceOrder", "ok"), 1.0);
    assert_eq!(total("PlaceOrder", "invalid"), 1.0);
    assert_eq!(total("PlaceOrder", "rejected"), 1.0);
    assert_eq!(total("PayOrder", "rejected"), 1.0);
    assert_eq!(total("PayOrder", "ok"), 2.0);
    assert_eq!(total("ShipOrder", "ok"), 1.0);
    let errors = |command: &str, kind: &str| {
        sample(
            &body,
            &format!(r#"mink_command_errors_total{{command="{command}",kind="{kind}"}}"#),
        )
    };
    assert_eq!(errors("PayOrder", "rejected"), 1.0);
    assert_eq!(errors("PlaceOrder", "invalid"), 1.0);
    assert_eq!(errors("PlaceOrder", "rejected"), 1.0);
    assert!(
        !body.contains(r#"mink_command_errors_total{command="ShipOrder""#),
        "no errors for a command that never failed"
    );
    assert_eq!(
        sample(&body, r#"mink_command_replays_total{command="PayOrder"}"#),
        1.0
    );
    assert_eq!(
        sample(
            &body,
            r#"mink_command_duration_seconds_count{command="PlaceOrder"}"#
        ),
        3.0
    );
    assert_eq!(
        sample(
            &body,
            r#"mink_command_duration_seconds_bucket{command="PlaceOrder",le="+Inf"}"#
        ),
        3.0
    );
    assert!(
        sample(
            &body,
            r#"mink_command_duration_seconds_sum{command="PlaceOrder"}"#
        ) > 0.0
    );
    assert!(
        body.contains(r#"mink_command_duration_seconds_bucket{command="PayOrder",le="0.005"}"#)
    );
    for command in ["ReceiveStock", "PlaceOrder", "PayOrder", "ShipOrder"] {
        let series = format!(r#"mink_commands_in_flight{{command="{command}"}}"#);
        assert_eq!(sample(&body, &series), 0.0, "{series}");
    }
    // The endpoint's own view and the HTTP answer agree.
    assert!(
        endpoint
            .render()
            .contains(r#"mink_commands_total{command="ShipOrder",outcome="ok"} 1"#)
    );

    // --- Traces: one span per dispatch, named and attributed by the Tracing middleware.
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let demo = spans
        .iter()
        .find(|s| s.name == "shop demo")
        .expect("the demo's own span");
    for d in &dispatched {
        let id = d.command_id.to_string();
        let span = spans
            .iter()
            .find(|s| attribute(s, "mink.command.id").as_deref() == Some(id.as_str()))
            .unwrap_or_else(|| panic!("no span for {d:?}"));
        assert_eq!(span.name, format!("command {}", d.command));
        assert_eq!(
            attribute(span, "mink.command.type").as_deref(),
            Some(d.command)
        );
        assert_eq!(
            span.span_context.trace_id(),
            demo.span_context.trace_id(),
            "every command span is part of the demo's trace"
        );
        assert_eq!(span.parent_span_id, demo.span_context.span_id());
        match (d.outcome, &span.status) {
            ("ok", Status::Ok) => assert_eq!(attribute(span, "error.type"), None),
            (kind, Status::Error { .. }) => {
                assert_eq!(attribute(span, "error.type").as_deref(), Some(kind));
            }
            (outcome, status) => panic!("{d:?} ended {outcome}, its span {status:?}"),
        }
    }
    // Alice's commands carried her checkout's correlation id into their spans.
    let alice = spans
        .iter()
        .filter(|s| attribute(s, "mink.correlation_id").as_deref() == Some("checkout-2001"))
        .count();
    assert_eq!(alice, 4, "PlaceOrder and three PayOrders");

    // --- The trace context reached the stored events: each event's traceparent names
    // the span of the command that stored it.
    let events = read_all(&store).await.unwrap();
    assert_eq!(events.len(), 11);
    for e in &events {
        let traceparent = e
            .metadata
            .custom_value(TRACEPARENT)
            .unwrap_or_else(|| panic!("{} v{} has no traceparent", e.stream_id, e.version));
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts.len(), 4, "{traceparent}");
        assert_eq!((parts[0], parts[3]), ("00", "01"), "{traceparent}");
        let span = spans
            .iter()
            .find(|s| s.span_context.span_id().to_string() == parts[2])
            .unwrap_or_else(|| panic!("no exported span {}", parts[2]));
        assert_eq!(span.span_context.trace_id().to_string(), parts[1]);
        assert!(span.name.starts_with("command "));
        let causation: Uuid = e.metadata.causation_id().unwrap().parse().unwrap();
        assert_eq!(
            attribute(span, "mink.command.id"),
            Some(causation.to_string()),
            "the span is the one of the command that stored {} v{}",
            e.stream_id,
            e.version
        );
    }

    provider.shutdown().unwrap();
}
