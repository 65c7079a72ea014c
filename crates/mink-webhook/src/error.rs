//! The crate's one error type.

use std::error::Error as StdError;
use std::fmt::Write as _;
use std::time::Duration;

use mink_es::outbox::PublishError;
use reqwest::StatusCode;

/// Everything that can go wrong in this crate: building a publisher, delivering a
/// message, or verifying a received webhook.
///
/// A failed delivery reaches the outbox processor as a
/// [`PublishError`] whose source is this type, so it can be recovered with
/// `std::error::Error::source(&e).and_then(|s| s.downcast_ref::<mink_webhook::Error>())`.
/// [`Error::is_retryable`] says which kind of [`PublishError`] a delivery error becomes.
///
/// URLs in messages are shown without their query, fragment and credentials, which may
/// hold tokens.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---------------------------------------------------------------- configuration
    /// A configured URL does not parse, or is not an `http`/`https` URL with a host.
    #[error("invalid webhook URL for {}: {reason}", destination_name(.destination))]
    InvalidUrl {
        /// The destination it was configured for; `None` for the default URL.
        destination: Option<String>,
        /// What is wrong with it.
        reason: String,
    },
    /// A signing secret is empty or not base64 (after an optional `whsec_` prefix).
    /// The secret itself is never part of the message.
    #[error("invalid webhook signing secret: {reason}")]
    InvalidSecret {
        /// What is wrong with it.
        reason: String,
    },
    /// The publisher was built without a signing secret.
    #[error("a webhook publisher needs at least one signing secret")]
    MissingSecret,
    /// An extra header or content type has an invalid name or value, or takes a name
    /// this crate sets itself.
    #[error("invalid webhook header {name:?}: {reason}")]
    InvalidHeader {
        /// The header's name, as given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Options that contradict each other, or a timeout of zero.
    #[error("invalid webhook publisher configuration: {0}")]
    InvalidConfig(String),
    /// The TLS configuration of the client could not be set up (no usable protocol
    /// versions, or the platform's certificate verifier failed to load).
    #[error("cannot set up TLS for the webhook HTTP client: {0}")]
    Tls(#[source] rustls::Error),
    /// The HTTP client could not be built.
    #[error("cannot build the webhook HTTP client: {}", chain(.0))]
    Client(#[source] reqwest::Error),

    // ---------------------------------------------------------------- delivery
    /// No URL is configured for the message's destination and there is no default URL.
    /// Permanent.
    #[error(
        "no webhook URL is configured for destination {destination:?} and there is no default URL"
    )]
    NoUrl {
        /// The message's destination.
        destination: String,
    },
    /// The receiver answered with a status that is not a success. Retryable for 5xx and
    /// 429, permanent for every other status.
    #[error("webhook {url} answered {status}{}{}", retry_after_text(.retry_after), body_text(.body))]
    Status {
        /// The URL (without query, fragment or credentials).
        url: String,
        /// The status.
        status: StatusCode,
        /// The receiver's `Retry-After` (seconds or an HTTP date), when it sent one.
        retry_after: Option<Duration>,
        /// The start of the response body, control characters replaced, for the logs.
        body: String,
    },
    /// The receiver answered with a redirect. Redirects are not followed (the signature
    /// and metadata would go to a host nobody configured): fix the URL. Permanent.
    #[error("webhook {url} answered {status} (a redirect{}), which is not followed: configure the final URL", location_text(.location))]
    Redirect {
        /// The URL (without query, fragment or credentials).
        url: String,
        /// The redirect status.
        status: StatusCode,
        /// Where it pointed (without query, fragment or credentials), when it said.
        location: Option<String>,
    },
    /// The request (connecting, sending, or waiting for the response head) took longer
    /// than the timeout. Retryable.
    #[error("webhook {url} timed out: {}", chain(.source))]
    Timeout {
        /// The URL (without query, fragment or credentials).
        url: String,
        /// The client's error.
        #[source]
        source: reqwest::Error,
    },
    /// No connection could be made (refused, unreachable, DNS, TLS handshake).
    /// Retryable.
    #[error("cannot connect to webhook {url}: {}", chain(.source))]
    Connect {
        /// The URL (without query, fragment or credentials).
        url: String,
        /// The client's error.
        #[source]
        source: reqwest::Error,
    },
    /// Any other failure of the request: the connection broke while sending or
    /// receiving (retryable), or the request could not be built or a custom client's
    /// redirect limit was hit (permanent).
    #[error("webhook request to {url} failed: {}", chain(.source))]
    Request {
        /// The URL (without query, fragment or credentials).
        url: String,
        /// The client's error.
        #[source]
        source: reqwest::Error,
    },

    // ---------------------------------------------------------------- verification
    /// A required webhook header is absent.
    #[error("the webhook header {name} is missing")]
    MissingHeader {
        /// The header's name.
        name: &'static str,
    },
    /// A webhook header is present but not of the expected form.
    #[error("the webhook header {name} is malformed: {reason}")]
    MalformedHeader {
        /// The header's name.
        name: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The `webhook-timestamp` is older than the tolerance allows (a replay, or a
    /// message that waited too long).
    #[error("the webhook timestamp {timestamp} is {} s old, more than the tolerated {} s", now.saturating_sub(*.timestamp), tolerance.as_secs())]
    TimestampTooOld {
        /// The message's timestamp (Unix seconds).
        timestamp: u64,
        /// The verifier's clock (Unix seconds).
        now: u64,
        /// The tolerance.
        tolerance: Duration,
    },
    /// The `webhook-timestamp` is further in the future than the tolerance allows.
    #[error("the webhook timestamp {timestamp} is {} s in the future, more than the tolerated {} s", timestamp.saturating_sub(*.now), tolerance.as_secs())]
    TimestampInFuture {
        /// The message's timestamp (Unix seconds).
        timestamp: u64,
        /// The verifier's clock (Unix seconds).
        now: u64,
        /// The tolerance.
        tolerance: Duration,
    },
    /// The `webhook-signature` header holds no `v1,` signature.
    #[error("the webhook-signature header holds no v1 signature")]
    NoSignature,
    /// No `v1,` signature matches the secret, id, timestamp and body.
    #[error("no webhook signature matches")]
    SignatureMismatch,
}

impl Error {
    /// True when a delivery failed in a way that may pass later: 5xx, 429, timeouts,
    /// connection failures and broken connections. False for every other error.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Status { status, .. } => status_is_retryable(*status),
            Error::Timeout { .. } | Error::Connect { .. } => true,
            Error::Request { source, .. } => !(source.is_builder() || source.is_redirect()),
            _ => false,
        }
    }

    /// The status the receiver answered, for [`Error::Status`] and [`Error::Redirect`].
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Error::Status { status, .. } | Error::Redirect { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The receiver's `Retry-After`, for [`Error::Status`].
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The [`PublishError`] the outbox processor gets: retryable or permanent as
    /// [`Error::is_retryable`] says, with this error as its source.
    pub fn into_publish_error(self) -> PublishError {
        if self.is_retryable() {
            PublishError::retryable(self)
        } else {
            PublishError::permanent(self)
        }
    }
}

impl From<Error> for PublishError {
    fn from(e: Error) -> Self {
        e.into_publish_error()
    }
}

/// 5xx and 429 may pass later; every other failure status will not.
pub(crate) fn status_is_retryable(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
}

fn destination_name(d: &Option<String>) -> String {
    match d {
        Some(d) => format!("destination {d:?}"),
        None => "the default destination".to_owned(),
    }
}

fn retry_after_text(r: &Option<Duration>) -> String {
    r.map(|d| format!(" (retry after {} s)", d.as_secs()))
        .unwrap_or_default()
}

fn body_text(body: &str) -> String {
    if body.is_empty() {
        String::new()
    } else {
        format!(": {body}")
    }
}

fn location_text(l: &Option<String>) -> String {
    l.as_ref().map(|l| format!(" to {l}")).unwrap_or_default()
}

/// A client error and its causes, one line (reqwest's own message is short: "error
/// sending request"; the cause says "connection refused").
fn chain(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            let _ = write!(out, ": {text}");
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_as_the_issue_says() {
        for (code, retryable) in [
            (400, false),
            (401, false),
            (404, false),
            (408, false),
            (410, false),
            (413, false),
            (422, false),
            (429, true),
            (500, true),
            (502, true),
            (503, true),
            (504, true),
        ] {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::IM_A_TEAPOT);
            let e = Error::Status {
                url: "http://x/".into(),
                status,
                retry_after: None,
                body: String::new(),
            };
            assert_eq!(e.is_retryable(), retryable, "{code}");
            assert_eq!(e.into_publish_error().is_permanent(), !retryable, "{code}");
        }
    }

    #[test]
    fn messages_name_status_retry_after_and_body() {
        let e = Error::Status {
            url: "https://example.test/hook".into(),
            status: StatusCode::SERVICE_UNAVAILABLE,
            retry_after: Some(Duration::from_secs(30)),
            body: "down for maintenance".into(),
        };
        assert_eq!(
            e.to_string(),
            "webhook https://example.test/hook answered 503 Service Unavailable (retry after 30 s): down for maintenance"
        );
        assert_eq!(e.retry_after(), Some(Duration::from_secs(30)));
        assert_eq!(e.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    }

    #[test]
    fn configuration_and_verification_errors_are_permanent() {
        for e in [
            Error::MissingSecret,
            Error::NoUrl {
                destination: "d".into(),
            },
            Error::Redirect {
                url: "u".into(),
                status: StatusCode::TEMPORARY_REDIRECT,
                location: None,
            },
            Error::SignatureMismatch,
        ] {
            assert!(!e.is_retryable(), "{e}");
        }
    }
}
