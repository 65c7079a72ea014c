//! The publisher against a real HTTP server on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::{SECRET, message, receiver};
use hmac::{Hmac, KeyInit, Mac};
use mink_es::Metadata;
use mink_es::outbox::Publisher;
use mink_webhook::{DEFAULT_TOLERANCE, Error, WebhookPublisher, WebhookSecret, verify, verify_at};
use sha2::Sha256;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn header<'h>(c: &'h common::Captured, name: &str) -> Option<&'h str> {
    c.headers.get(name).map(|v| v.to_str().unwrap())
}

/// HMAC-SHA256 over "{id}.{timestamp}.{body}" computed here, with the RustCrypto crates
/// directly, not through the crate under test.
fn independent_signature(secret_text: &str, id: &str, timestamp: &str, body: &[u8]) -> String {
    let key = STANDARD
        .decode(secret_text.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_carries_the_body_metadata_headers_and_a_valid_signature() {
    let server = receiver().await;
    let publisher = WebhookPublisher::builder()
        .url("billing", server.url("/capture"))
        .secret(SECRET)
        .header("x-api-key", "k-123")
        .build()
        .unwrap();

    let payload = br#"{"orderId":"o-1","total":1250}"#;
    let mut m = message("billing", "OrderPlaced", payload, "json");
    m.metadata = Metadata::default()
        .with_correlation_id("corr-1")
        .with_causation_id("cause-1")
        .with_user_id("alice")
        .with_tenant_id("acme")
        .with_custom(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .with_custom("tracestate", "vendor=abc")
        .with_custom("Source", "web")
        .with_custom("city", "Zürich")
        .with_custom("bad key", "dropped: not a header name")
        .with_custom("multi", "line\nvalue");

    let before = now_secs();
    publisher.publish(&m).await.unwrap();
    let after = now_secs();

    let requests = server.recorder.requests();
    assert_eq!(requests.len(), 1);
    let c = &requests[0];
    assert_eq!(c.path, "/capture");
    assert_eq!(
        &c.body[..],
        payload,
        "the body is the payload, byte for byte"
    );

    // Standard Webhooks headers.
    let id = header(c, "webhook-id").unwrap();
    assert_eq!(id, m.id.to_string(), "webhook-id is the outbox message id");
    let ts = header(c, "webhook-timestamp").unwrap();
    let ts_n: u64 = ts.parse().unwrap();
    assert!(
        (before..=after).contains(&ts_n),
        "{ts_n} not in {before}..={after}"
    );
    let sig = header(c, "webhook-signature").unwrap();
    assert_eq!(sig, independent_signature(SECRET, id, ts, payload));

    // The verifier accepts it, and reports the id and timestamp.
    let secret: WebhookSecret = SECRET.parse().unwrap();
    let verified = verify(&secret, &c.headers, &c.body, DEFAULT_TOLERANCE).unwrap();
    assert_eq!(verified.id, m.id.to_string());
    assert_eq!(verified.timestamp, ts_n);
    // ... and rejects a modified body.
    assert!(matches!(
        verify(
            &secret,
            &c.headers,
            b"{\"orderId\":\"o-2\"}",
            DEFAULT_TOLERANCE
        ),
        Err(Error::SignatureMismatch)
    ));

    // Content type and event metadata.
    assert_eq!(header(c, "content-type"), Some("application/json"));
    assert_eq!(
        header(c, "mink-message-id"),
        Some(m.id.to_string().as_str())
    );
    assert_eq!(header(c, "mink-event-type"), Some("OrderPlaced"));
    assert_eq!(
        header(c, "mink-event-id"),
        Some(m.event_id.to_string().as_str())
    );
    assert_eq!(header(c, "mink-stream-id"), Some("Order-42"));
    assert_eq!(header(c, "mink-stream-version"), Some("3"));
    assert_eq!(header(c, "mink-position"), Some("1234"));
    assert_eq!(header(c, "mink-destination"), Some("billing"));
    assert_eq!(header(c, "mink-codec"), Some("json"));
    let recorded = header(c, "mink-recorded-at").unwrap();
    assert!(recorded.ends_with('Z'), "{recorded}");
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(recorded)
            .unwrap()
            .timestamp_micros(),
        m.created_at.timestamp_micros()
    );
    assert_eq!(header(c, "mink-correlation-id"), Some("corr-1"));
    assert_eq!(header(c, "mink-causation-id"), Some("cause-1"));
    assert_eq!(header(c, "mink-user-id"), Some("alice"));
    assert_eq!(header(c, "mink-tenant-id"), Some("acme"));
    assert_eq!(
        header(c, "traceparent"),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    assert_eq!(header(c, "tracestate"), Some("vendor=abc"));
    assert_eq!(header(c, "mink-meta-source"), Some("web"));
    assert_eq!(
        c.headers.get("mink-meta-city").unwrap().as_bytes(),
        "Zürich".as_bytes(),
        "non-ASCII values go as UTF-8 bytes"
    );
    assert!(c.headers.get("mink-meta-traceparent").is_none());
    assert!(
        c.headers.get("mink-meta-multi").is_none(),
        "a control character cannot be sent"
    );
    assert!(
        !c.headers.keys().any(|k| k.as_str().contains("bad")),
        "an invalid header name is left out"
    );
    let mut standard: Vec<&str> = c
        .headers
        .keys()
        .map(|k| k.as_str())
        .filter(|k| k.starts_with("mink-") || k.starts_with("trace") || *k == "baggage")
        .collect();
    standard.sort_unstable();
    assert_eq!(
        standard,
        [
            "mink-causation-id",
            "mink-codec",
            "mink-correlation-id",
            "mink-destination",
            "mink-event-id",
            "mink-event-type",
            "mink-message-id",
            "mink-meta-city",
            "mink-meta-source",
            "mink-position",
            "mink-recorded-at",
            "mink-stream-id",
            "mink-stream-version",
            "mink-tenant-id",
            "mink-user-id",
            "traceparent",
            "tracestate",
        ],
        "the standard headers, and no others"
    );

    // Extra headers and the client's agent.
    assert_eq!(header(c, "x-api-key"), Some("k-123"));
    assert!(
        header(c, "user-agent")
            .unwrap()
            .starts_with("mink-webhook/")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_metadata_headers_can_be_turned_off_but_trace_context_stays() {
    let server = receiver().await;
    let publisher = WebhookPublisher::builder()
        .default_url(server.url("/capture"))
        .secret(SECRET)
        .custom_metadata_headers(false)
        .build()
        .unwrap();
    let mut m = message("d", "E", b"{}", "json");
    m.metadata = Metadata::default()
        .with_custom(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .with_custom("source", "web");
    publisher.deliver(&m).await.unwrap();
    let c = &server.recorder.requests()[0];
    assert!(c.headers.get("traceparent").is_some());
    assert!(c.headers.get("mink-meta-source").is_none());
    assert!(
        c.headers.get("mink-correlation-id").is_none(),
        "unset ids send no header"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_types_follow_the_codec() {
    let server = receiver().await;
    let publisher = WebhookPublisher::builder()
        .default_url(server.url("/capture"))
        .secret(SECRET)
        .content_type("cbor", "application/cbor")
        .build()
        .unwrap();
    let cases = [
        ("json", "application/json"),
        ("msgpack", "application/msgpack"),
        ("protobuf", "application/x-protobuf"),
        ("avro", "application/octet-stream"),
        ("cbor", "application/cbor"),
    ];
    for (codec, _) in cases {
        publisher
            .deliver(&message("d", "E", &[0x82, 0x01, 0xff], codec))
            .await
            .unwrap();
    }
    let requests = server.recorder.requests();
    for ((codec, content_type), c) in cases.iter().zip(&requests) {
        assert_eq!(header(c, "content-type"), Some(*content_type), "{codec}");
        assert_eq!(header(c, "mink-codec"), Some(*codec));
        assert_eq!(&c.body[..], &[0x82, 0x01, 0xff]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_secrets_sign_for_rotation() {
    let server = receiver().await;
    let new = WebhookSecret::generate();
    let publisher = WebhookPublisher::builder()
        .default_url(server.url("/capture"))
        .secret(SECRET)
        .secret_key(new.clone())
        .build()
        .unwrap();
    let m = message("d", "E", b"{\"n\":1}", "json");
    publisher.deliver(&m).await.unwrap();
    let c = &server.recorder.requests()[0];
    let sig = header(c, "webhook-signature").unwrap();
    let ts = header(c, "webhook-timestamp").unwrap();
    let id = header(c, "webhook-id").unwrap();
    let parts: Vec<&str> = sig.split(' ').collect();
    assert_eq!(parts.len(), 2, "{sig}");
    assert_eq!(parts[0], independent_signature(SECRET, id, ts, &c.body));
    assert_eq!(
        parts[1],
        independent_signature(&new.to_whsec(), id, ts, &c.body)
    );

    // A receiver holding either secret accepts; one holding neither does not.
    let old: WebhookSecret = SECRET.parse().unwrap();
    verify(&old, &c.headers, &c.body, DEFAULT_TOLERANCE).unwrap();
    verify(&new, &c.headers, &c.body, DEFAULT_TOLERANCE).unwrap();
    assert!(matches!(
        verify(
            &WebhookSecret::generate(),
            &c.headers,
            &c.body,
            DEFAULT_TOLERANCE
        ),
        Err(Error::SignatureMismatch)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verifier_rejects_stale_and_future_timestamps() {
    let server = receiver().await;
    let publisher = WebhookPublisher::builder()
        .default_url(server.url("/capture"))
        .secret(SECRET)
        .build()
        .unwrap();
    publisher
        .deliver(&message("d", "E", b"{}", "json"))
        .await
        .unwrap();
    let c = &server.recorder.requests()[0];
    let secret: WebhookSecret = SECRET.parse().unwrap();
    let sent =
        UNIX_EPOCH + Duration::from_secs(header(c, "webhook-timestamp").unwrap().parse().unwrap());
    let tol = DEFAULT_TOLERANCE;
    let check = |now: SystemTime, tolerance: Duration| {
        verify_at(&secret, &c.headers, &c.body, tolerance, now)
    };

    // Within 5 minutes either way: accepted.
    check(sent + tol, tol).unwrap();
    check(sent - tol, tol).unwrap();
    // One second more: rejected, typed.
    assert!(matches!(
        check(sent + tol + Duration::from_secs(1), tol),
        Err(Error::TimestampTooOld { .. })
    ));
    assert!(matches!(
        check(sent - tol - Duration::from_secs(1), tol),
        Err(Error::TimestampInFuture { .. })
    ));
    // A tighter tolerance.
    assert!(matches!(
        check(sent + Duration::from_secs(31), Duration::from_secs(30)),
        Err(Error::TimestampTooOld { .. })
    ));
    let e = check(sent + Duration::from_secs(600), tol).unwrap_err();
    assert!(e.to_string().contains("600 s old"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_destination_goes_to_its_own_url_else_the_default() {
    let server = receiver().await;
    let publisher = WebhookPublisher::builder()
        .url("a", server.url("/a"))
        .url("b", server.url("/b"))
        .default_url(server.url("/default"))
        .secret(SECRET)
        .build()
        .unwrap();
    for d in ["a", "b", "c", "a"] {
        publisher
            .deliver(&message(d, "E", d.as_bytes(), "json"))
            .await
            .unwrap();
    }
    let seen: Vec<(String, String)> = server
        .recorder
        .requests()
        .iter()
        .map(|c| {
            (
                c.path.clone(),
                header(c, "mink-destination").unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [("/a", "a"), ("/b", "b"), ("/default", "c"), ("/a", "a")]
            .map(|(p, d)| (p.to_owned(), d.to_owned()))
    );

    // Without a default, an unknown destination is permanent and sends nothing.
    let only_a = WebhookPublisher::builder()
        .url("a", server.url("/a"))
        .secret(SECRET)
        .build()
        .unwrap();
    let m = message("c", "E", b"{}", "json");
    let e = only_a.deliver(&m).await.unwrap_err();
    assert!(
        matches!(&e, Error::NoUrl { destination } if destination == "c"),
        "{e}"
    );
    assert!(only_a.publish(&m).await.unwrap_err().is_permanent());
    assert_eq!(server.recorder.requests().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_are_classified_2xx_success_4xx_permanent_429_and_5xx_retryable() {
    let server = receiver().await;
    // (status, outcome: None = delivered, Some(true) = retryable, Some(false) = permanent)
    let table: [(u16, Option<bool>); 8] = [
        (200, None),
        (204, None),
        (400, Some(false)),
        (404, Some(false)),
        (410, Some(false)),
        (429, Some(true)),
        (500, Some(true)),
        (503, Some(true)),
    ];
    for (code, expected) in table {
        let publisher = WebhookPublisher::builder()
            .url("d", server.url(&format!("/status/{code}?token=hidden")))
            .secret(SECRET)
            .build()
            .unwrap();
        let m = message("d", "E", b"{}", "json");

        // Through the Publisher trait, as the outbox processor sees it.
        let published = publisher.publish(&m).await;
        match expected {
            None => assert!(published.is_ok(), "{code}: {published:?}"),
            Some(retryable) => {
                let e = published.unwrap_err();
                assert_eq!(e.is_permanent(), !retryable, "{code}: {e}");
                // The typed error is the source.
                let typed = std::error::Error::source(&e)
                    .and_then(|s| s.downcast_ref::<Error>())
                    .unwrap();
                assert_eq!(typed.status().map(|s| s.as_u16()), Some(code));
                assert_eq!(typed.is_retryable(), retryable);
            }
        }

        // And the typed error of `deliver`.
        match (expected, publisher.deliver(&m).await) {
            (None, Ok(())) => {}
            (
                Some(_),
                Err(Error::Status {
                    status,
                    retry_after,
                    body,
                    url,
                }),
            ) => {
                assert_eq!(status.as_u16(), code);
                assert_eq!(body, format!("answer {code} from the test receiver"));
                assert!(!url.contains("hidden"), "{url}");
                match code {
                    429 => assert_eq!(retry_after, Some(Duration::from_secs(7))),
                    503 => {
                        let after = retry_after.unwrap();
                        assert!(
                            (Duration::from_secs(110)..=Duration::from_secs(120)).contains(&after),
                            "{after:?}"
                        );
                    }
                    _ => assert_eq!(retry_after, None),
                }
            }
            (expected, got) => panic!("{code}: expected {expected:?}, got {got:?}"),
        }
    }
    // Two attempts per status, each received.
    assert_eq!(server.recorder.requests().len(), table.len() * 2);

    // The message a dead letter or a retry keeps names status, Retry-After and body,
    // without the URL's query.
    let publisher = WebhookPublisher::builder()
        .default_url(server.url("/status/429?token=hidden"))
        .secret(SECRET)
        .build()
        .unwrap();
    let text = publisher
        .publish(&message("d", "E", b"{}", "json"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        text.starts_with("retryable delivery failure: webhook http://127.0.0.1:"),
        "{text}"
    );
    assert!(
        text.ends_with("/status/429 answered 429 Too Many Requests (retry after 7 s): answer 429 from the test receiver"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_times_out_and_is_retryable() {
    let server = receiver().await;
    let publisher = WebhookPublisher::builder()
        .default_url(server.url("/sleep"))
        .secret(SECRET)
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let m = message("d", "E", b"{}", "json");
    let started = Instant::now();
    let e = publisher.deliver(&m).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert!(e.is_retryable());
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(!publisher.publish(&m).await.unwrap_err().is_permanent());
    // The request did arrive: a timeout does not mean it was not processed, which is
    // why receivers de-duplicate on webhook-id.
    assert!(!server.recorder.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_retryable() {
    // A port that was just free: nothing listens on it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let publisher = WebhookPublisher::builder()
        .default_url(format!("http://127.0.0.1:{port}/hook?token=hidden"))
        .secret(SECRET)
        .build()
        .unwrap();
    let m = message("d", "E", b"{}", "json");
    let e = publisher.deliver(&m).await.unwrap_err();
    assert!(matches!(e, Error::Connect { .. }), "{e}");
    assert!(e.is_retryable());
    let text = e.to_string();
    assert!(
        text.contains(&format!("http://127.0.0.1:{port}/hook")),
        "{text}"
    );
    assert!(!text.contains("hidden"), "{text}");
    assert!(
        text.to_lowercase().contains("refused"),
        "the cause is named: {text}"
    );
    assert!(!publisher.publish(&m).await.unwrap_err().is_permanent());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_permanent_and_not_followed() {
    let server = receiver().await;
    let publisher = WebhookPublisher::builder()
        .default_url(server.url("/redirect"))
        .secret(SECRET)
        .build()
        .unwrap();
    let m = message("d", "E", b"{}", "json");
    let e = publisher.deliver(&m).await.unwrap_err();
    match &e {
        Error::Redirect {
            status, location, ..
        } => {
            assert_eq!(status.as_u16(), 307);
            assert_eq!(location.as_deref(), Some(server.url("/capture").as_str()));
        }
        other => panic!("{other}"),
    }
    assert!(!e.is_retryable());
    assert!(publisher.publish(&m).await.unwrap_err().is_permanent());
    let paths: Vec<_> = server
        .recorder
        .requests()
        .into_iter()
        .map(|c| c.path)
        .collect();
    assert_eq!(
        paths,
        ["/redirect", "/redirect"],
        "the redirect was not followed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_client_is_used_and_the_timeout_still_applies() {
    let server = receiver().await;
    let client = WebhookPublisher::client_builder()
        .unwrap()
        .user_agent("my-agent/1")
        .build()
        .unwrap();
    let publisher = WebhookPublisher::builder()
        .default_url(server.url("/capture"))
        .secret(SECRET)
        .client(client.clone())
        .build()
        .unwrap();
    publisher
        .deliver(&message("d", "E", b"{}", "json"))
        .await
        .unwrap();
    assert_eq!(
        header(&server.recorder.requests()[0], "user-agent"),
        Some("my-agent/1")
    );

    let slow = WebhookPublisher::builder()
        .default_url(server.url("/sleep"))
        .secret(SECRET)
        .client(client)
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let e = slow
        .deliver(&message("d", "E", b"{}", "json"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
}
