//! A local HTTP receiver on 127.0.0.1 (an ephemeral port) that records every request.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use mink_es::outbox::OutboxMessage;
use mink_es::{CodecTag, EventId, Metadata, Position, StreamId};
use tokio::net::TcpListener;

pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
pub struct Captured {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Clone, Default)]
pub struct Recorder {
    pub requests: Arc<Mutex<Vec<Captured>>>,
}

impl Recorder {
    pub fn requests(&self) -> Vec<Captured> {
        self.requests.lock().unwrap().clone()
    }

    fn record(&self, path: &str, headers: &HeaderMap, body: &Bytes) {
        self.requests.lock().unwrap().push(Captured {
            path: path.to_owned(),
            headers: headers.clone(),
            body: body.clone(),
        });
    }
}

/// A running receiver.
pub struct Server {
    pub base: String,
    pub recorder: Recorder,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `router` on 127.0.0.1, on a port the system picks.
pub async fn serve(router: Router) -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    (format!("http://{addr}"), task)
}

/// The receiver for the publisher tests:
/// * `POST /capture`, `/a`, `/b`, `/default`: records, answers 204;
/// * `POST /status/{code}`: records, answers `code` with a body (and a `Retry-After`
///   of 7 s on 429, an HTTP date 120 s ahead on 503);
/// * `POST /sleep`: records, sleeps 3 s, answers 200;
/// * `POST /redirect`: records, answers 307 to `/capture?token=hidden`.
pub async fn receiver() -> Server {
    async fn capture(
        State(r): State<Recorder>,
        uri: axum::http::Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> StatusCode {
        r.record(uri.path(), &headers, &body);
        StatusCode::NO_CONTENT
    }
    async fn status(
        State(r): State<Recorder>,
        Path(code): Path<u16>,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        r.record(&format!("/status/{code}"), &headers, &body);
        let status = StatusCode::from_u16(code).unwrap();
        let mut response =
            (status, format!("answer {code}\nfrom the test receiver")).into_response();
        if code == 429 {
            response
                .headers_mut()
                .insert("retry-after", "7".parse().unwrap());
        }
        if code == 503 {
            let at = chrono::Utc::now() + chrono::Duration::seconds(120);
            response.headers_mut().insert(
                "retry-after",
                at.format("%a, %d %b %Y %H:%M:%S GMT")
                    .to_string()
                    .parse()
                    .unwrap(),
            );
        }
        response
    }
    async fn sleep(State(r): State<Recorder>, headers: HeaderMap, body: Bytes) -> StatusCode {
        r.record("/sleep", &headers, &body);
        tokio::time::sleep(Duration::from_secs(3)).await;
        StatusCode::OK
    }
    async fn redirect(State(r): State<Recorder>, headers: HeaderMap, body: Bytes) -> Response {
        r.record("/redirect", &headers, &body);
        (
            StatusCode::TEMPORARY_REDIRECT,
            [("location", "/capture?token=hidden")],
        )
            .into_response()
    }

    let recorder = Recorder::default();
    let router = Router::new()
        .route("/capture", post(capture))
        .route("/a", post(capture))
        .route("/b", post(capture))
        .route("/default", post(capture))
        .route("/status/{code}", post(status))
        .route("/sleep", post(sleep))
        .route("/redirect", post(redirect))
        .with_state(recorder.clone());
    let (base, task) = serve(router).await;
    Server {
        base,
        recorder,
        task,
    }
}

/// A message as the outbox would hand it over.
pub fn message(destination: &str, event_type: &str, payload: &[u8], codec: &str) -> OutboxMessage {
    let event_id = EventId::new();
    OutboxMessage {
        id: OutboxMessage::id_for(event_id, destination),
        destination: destination.to_owned(),
        stream_id: StreamId::new("Order-42").unwrap(),
        event_id,
        event_type: event_type.to_owned(),
        stream_version: 3,
        position: Position::new(0, 1234),
        payload: Bytes::copy_from_slice(payload),
        codec: CodecTag::from(codec.to_owned()),
        metadata: Metadata::default(),
        created_at: chrono::Utc::now(),
    }
}

/// Counts per key.
#[derive(Clone, Default)]
pub struct Counter(pub Arc<Mutex<HashMap<String, u32>>>);

impl Counter {
    pub fn bump(&self, key: &str) -> u32 {
        let mut m = self.0.lock().unwrap();
        let n = m.entry(key.to_owned()).or_default();
        *n += 1;
        *n
    }
}
