//! The receiver's side: checking a webhook's signature and age.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::Mac;
use reqwest::header::HeaderMap;

use crate::header::{WEBHOOK_ID, WEBHOOK_SIGNATURE, WEBHOOK_TIMESTAMP};
use crate::secret::LENIENT_BASE64;
use crate::{Error, WebhookSecret};

/// How far a `webhook-timestamp` may be from the receiver's clock, either way, by
/// default: 5 minutes, as the Standard Webhooks reference implementations use.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// What a successful verification vouches for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The `webhook-id`: stable across redeliveries of one message, so receivers
    /// de-duplicate on it (delivery is at least once).
    pub id: String,
    /// The `webhook-timestamp` (Unix seconds) of this attempt.
    pub timestamp: u64,
}

/// Verifies a received webhook: the `webhook-id`, `webhook-timestamp` and
/// `webhook-signature` headers, against the raw request `body` (the bytes as received,
/// before any parsing), with the receiver's clock.
///
/// The timestamp must be within `tolerance` of now, either way
/// ([`DEFAULT_TOLERANCE`] is 5 minutes). At least one `v1,` signature of the
/// space-separated list must match; each is checked in constant time. Signatures of
/// other schemes (`v1a,`) are ignored.
///
/// To accept either of two secrets while rotating, verify with one, then on
/// [`Error::SignatureMismatch`] with the other (a sender that signs with both, as
/// [`WebhookPublisherBuilder::secret`](crate::WebhookPublisherBuilder::secret) allows,
/// passes either).
///
/// # Errors
/// [`Error::MissingHeader`], [`Error::MalformedHeader`], [`Error::TimestampTooOld`],
/// [`Error::TimestampInFuture`], [`Error::NoSignature`] or [`Error::SignatureMismatch`].
///
/// ```
/// use mink_webhook::{verify, WebhookSecret, DEFAULT_TOLERANCE};
/// use mink_webhook::reqwest::header::{HeaderMap, HeaderValue};
///
/// let secret: WebhookSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse()?;
/// let body = br#"{"orderId":"o-1"}"#;
/// let now = std::time::SystemTime::now()
///     .duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
///
/// let mut headers = HeaderMap::new();
/// headers.insert("webhook-id", HeaderValue::from_static("msg_1"));
/// headers.insert("webhook-timestamp", now.to_string().parse().unwrap());
/// headers.insert("webhook-signature", secret.sign("msg_1", now, body).parse().unwrap());
///
/// let verified = verify(&secret, &headers, body, DEFAULT_TOLERANCE)?;
/// assert_eq!(verified.id, "msg_1");
///
/// assert!(matches!(
///     verify(&secret, &headers, b"tampered", DEFAULT_TOLERANCE),
///     Err(mink_webhook::Error::SignatureMismatch),
/// ));
/// # Ok::<(), mink_webhook::Error>(())
/// ```
pub fn verify(
    secret: &WebhookSecret,
    headers: &HeaderMap,
    body: &[u8],
    tolerance: Duration,
) -> Result<Verified, Error> {
    verify_at(secret, headers, body, tolerance, SystemTime::now())
}

/// [`verify`] with the clock given: `now` stands for the receiver's current time.
///
/// # Errors
/// As [`verify`].
pub fn verify_at(
    secret: &WebhookSecret,
    headers: &HeaderMap,
    body: &[u8],
    tolerance: Duration,
    now: SystemTime,
) -> Result<Verified, Error> {
    let id = single_header(headers, WEBHOOK_ID)?;
    let timestamp = single_header(headers, WEBHOOK_TIMESTAMP)?;
    let mut signatures = String::new();
    for value in headers.get_all(WEBHOOK_SIGNATURE) {
        let value = value.to_str().map_err(|_| Error::MalformedHeader {
            name: WEBHOOK_SIGNATURE,
            reason: "not visible ASCII",
        })?;
        if !signatures.is_empty() {
            signatures.push(' ');
        }
        signatures.push_str(value);
    }
    if signatures.is_empty() && !headers.contains_key(WEBHOOK_SIGNATURE) {
        return Err(Error::MissingHeader {
            name: WEBHOOK_SIGNATURE,
        });
    }
    verify_parts(secret, id, timestamp, &signatures, body, tolerance, now)
}

/// [`verify_at`] on the three header values, for servers whose header type is not
/// [`HeaderMap`].
///
/// # Errors
/// As [`verify`].
pub fn verify_parts(
    secret: &WebhookSecret,
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    tolerance: Duration,
    now: SystemTime,
) -> Result<Verified, Error> {
    if id.is_empty() {
        return Err(Error::MalformedHeader {
            name: WEBHOOK_ID,
            reason: "empty",
        });
    }
    let ts = parse_timestamp(timestamp)?;
    let now_secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let tol = tolerance.as_secs();
    if now_secs.saturating_sub(ts) > tol {
        return Err(Error::TimestampTooOld {
            timestamp: ts,
            now: now_secs,
            tolerance,
        });
    }
    if ts.saturating_sub(now_secs) > tol {
        return Err(Error::TimestampInFuture {
            timestamp: ts,
            now: now_secs,
            tolerance,
        });
    }

    let mac = secret.mac(id, timestamp, body);
    let mut seen_v1 = false;
    for candidate in signatures.split(' ') {
        let Some(b64) = candidate.strip_prefix("v1,") else {
            continue;
        };
        seen_v1 = true;
        let Ok(tag) = LENIENT_BASE64.decode(b64) else {
            continue;
        };
        if mac.clone().verify_slice(&tag).is_ok() {
            return Ok(Verified {
                id: id.to_owned(),
                timestamp: ts,
            });
        }
    }
    Err(if seen_v1 {
        Error::SignatureMismatch
    } else {
        Error::NoSignature
    })
}

fn single_header<'h>(headers: &'h HeaderMap, name: &'static str) -> Result<&'h str, Error> {
    let mut values = headers.get_all(name).iter();
    let value = values.next().ok_or(Error::MissingHeader { name })?;
    if values.next().is_some() {
        return Err(Error::MalformedHeader {
            name,
            reason: "present more than once",
        });
    }
    value.to_str().map_err(|_| Error::MalformedHeader {
        name,
        reason: "not visible ASCII",
    })
}

/// Unix seconds: decimal digits only (no sign, no spaces), at most 19 of them.
fn parse_timestamp(text: &str) -> Result<u64, Error> {
    let malformed = |reason| Error::MalformedHeader {
        name: WEBHOOK_TIMESTAMP,
        reason,
    };
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed("not an integer number of Unix seconds"));
    }
    text.parse::<u64>().map_err(|_| malformed("out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: u64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn check(sigs: &str, ts: &str, now: u64) -> Result<Verified, Error> {
        let s = WebhookSecret::parse(SECRET).unwrap();
        verify_parts(&s, ID, ts, sigs, BODY, DEFAULT_TOLERANCE, at(now))
    }

    #[test]
    fn the_specification_vector_verifies() {
        let v = check(SIG, "1614265330", TS).unwrap();
        assert_eq!(
            v,
            Verified {
                id: ID.into(),
                timestamp: TS
            }
        );
        // Among others, in any position, including an unknown scheme and a bad one.
        check(&format!("v1a,abc v1,bm9wZQ== {SIG}"), "1614265330", TS).unwrap();
        // Unpadded base64 is accepted too.
        check(SIG.trim_end_matches('='), "1614265330", TS).unwrap();
    }

    #[test]
    fn tolerance_is_inclusive_and_symmetric() {
        let tol = DEFAULT_TOLERANCE.as_secs();
        check(SIG, "1614265330", TS + tol).unwrap();
        check(SIG, "1614265330", TS - tol).unwrap();
        assert!(matches!(
            check(SIG, "1614265330", TS + tol + 1),
            Err(Error::TimestampTooOld { timestamp: TS, .. })
        ));
        assert!(matches!(
            check(SIG, "1614265330", TS - tol - 1),
            Err(Error::TimestampInFuture { timestamp: TS, .. })
        ));
    }

    #[test]
    fn malformed_input_is_a_typed_error() {
        for ts in [
            "",
            "-1",
            "+1614265330",
            " 1614265330",
            "16142e5",
            "99999999999999999999",
        ] {
            assert!(
                matches!(
                    check(SIG, ts, TS),
                    Err(Error::MalformedHeader {
                        name: WEBHOOK_TIMESTAMP,
                        ..
                    })
                ),
                "{ts:?}"
            );
        }
        assert!(matches!(
            check("", "1614265330", TS),
            Err(Error::NoSignature)
        ));
        assert!(matches!(
            check("v1a,xyz", "1614265330", TS),
            Err(Error::NoSignature)
        ));
        assert!(matches!(
            check("v1,!!!notbase64", "1614265330", TS),
            Err(Error::SignatureMismatch)
        ));
        let s = WebhookSecret::parse(SECRET).unwrap();
        assert!(matches!(
            verify_parts(&s, "", "1614265330", SIG, BODY, DEFAULT_TOLERANCE, at(TS)),
            Err(Error::MalformedHeader {
                name: WEBHOOK_ID,
                ..
            })
        ));
    }

    #[test]
    fn any_change_breaks_the_signature() {
        let s = WebhookSecret::parse(SECRET).unwrap();
        let other = WebhookSecret::from_bytes(b"not the key".to_vec()).unwrap();
        let ok = |secret: &WebhookSecret, id: &str, ts: &str, body: &[u8]| {
            verify_parts(secret, id, ts, SIG, body, DEFAULT_TOLERANCE, at(TS))
        };
        assert!(ok(&s, ID, "1614265330", BODY).is_ok());
        for r in [
            ok(&other, ID, "1614265330", BODY),
            ok(&s, "msg_other", "1614265330", BODY),
            ok(&s, ID, "1614265331", BODY),
            ok(&s, ID, "1614265330", br#"{"test": 2432232315}"#),
        ] {
            assert!(matches!(r, Err(Error::SignatureMismatch)), "{r:?}");
        }
    }

    #[test]
    fn headers_are_read_from_a_header_map() {
        let s = WebhookSecret::parse(SECRET).unwrap();
        let mut h = HeaderMap::new();
        assert!(matches!(
            verify_at(&s, &h, BODY, DEFAULT_TOLERANCE, at(TS)),
            Err(Error::MissingHeader { name: WEBHOOK_ID })
        ));
        h.insert(WEBHOOK_ID, ID.parse().unwrap());
        assert!(matches!(
            verify_at(&s, &h, BODY, DEFAULT_TOLERANCE, at(TS)),
            Err(Error::MissingHeader {
                name: WEBHOOK_TIMESTAMP
            })
        ));
        h.insert(WEBHOOK_TIMESTAMP, "1614265330".parse().unwrap());
        assert!(matches!(
            verify_at(&s, &h, BODY, DEFAULT_TOLERANCE, at(TS)),
            Err(Error::MissingHeader {
                name: WEBHOOK_SIGNATURE
            })
        ));
        // Signatures split over two header lines are all considered.
        h.append(WEBHOOK_SIGNATURE, "v1,bm9wZQ==".parse().unwrap());
        h.append(WEBHOOK_SIGNATURE, SIG.parse().unwrap());
        assert_eq!(
            verify_at(&s, &h, BODY, DEFAULT_TOLERANCE, at(TS))
                .unwrap()
                .id,
            ID
        );
        h.append(WEBHOOK_ID, "msg_2".parse().unwrap());
        assert!(matches!(
            verify_at(&s, &h, BODY, DEFAULT_TOLERANCE, at(TS)),
            Err(Error::MalformedHeader {
                name: WEBHOOK_ID,
                ..
            })
        ));
    }
}
