//! Signing secrets and Standard Webhooks signatures.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::Error;

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// The prefix of a Standard Webhooks secret's text form.
pub const SECRET_PREFIX: &str = "whsec_";

/// Standard base64 that accepts input with or without padding (secrets are often
/// written unpadded; signatures are padded).
pub(crate) const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A Standard Webhooks signing secret: the raw key bytes of an HMAC-SHA256.
///
/// Its text form is `whsec_` followed by the key in standard base64 (the prefix is
/// optional when parsing, as in the reference implementations). The specification
/// recommends keys of 24 to 64 random bytes; [`WebhookSecret::generate`] makes 32.
///
/// `Debug` never shows the key.
///
/// ```
/// use mink_webhook::WebhookSecret;
/// let secret: WebhookSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse()?;
/// assert_eq!(
///     secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#),
///     "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
/// );
/// # Ok::<(), mink_webhook::Error>(())
/// ```
#[derive(Clone)]
pub struct WebhookSecret {
    key: Vec<u8>,
    /// The keyed MAC, ready to be cloned per message.
    mac: HmacSha256,
}

impl WebhookSecret {
    /// A secret from its raw key bytes.
    ///
    /// # Errors
    /// [`Error::InvalidSecret`] for an empty key.
    pub fn from_bytes(key: impl Into<Vec<u8>>) -> Result<Self, Error> {
        let key = key.into();
        if key.is_empty() {
            return Err(Error::InvalidSecret {
                reason: "the key is empty".into(),
            });
        }
        let mac = <HmacSha256 as KeyInit>::new_from_slice(&key).map_err(|_| {
            // HMAC takes keys of any length; kept typed all the same.
            Error::InvalidSecret {
                reason: "HMAC-SHA256 refused the key length".into(),
            }
        })?;
        Ok(WebhookSecret { key, mac })
    }

    /// Parses the text form: `whsec_<base64>`, or the base64 alone.
    ///
    /// # Errors
    /// [`Error::InvalidSecret`] when the text is not base64 or decodes to nothing.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let text = text.trim();
        let b64 = text.strip_prefix(SECRET_PREFIX).unwrap_or(text);
        let key = LENIENT_BASE64
            .decode(b64)
            .map_err(|e| Error::InvalidSecret {
                reason: format!("not base64 after the optional {SECRET_PREFIX} prefix ({e})"),
            })?;
        WebhookSecret::from_bytes(key)
    }

    /// A new random secret of 32 bytes from the operating system's generator.
    pub fn generate() -> Self {
        let key: [u8; 32] = rand::random();
        // Infallible: the key is not empty and HMAC takes any length.
        match WebhookSecret::from_bytes(key.to_vec()) {
            Ok(s) => s,
            Err(_) => unreachable!("a 32-byte key is a valid HMAC-SHA256 key"),
        }
    }

    /// The text form, `whsec_<base64>`, to hand to the receiver. It reveals the secret.
    pub fn to_whsec(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.key))
    }

    /// The raw key bytes. They reveal the secret.
    pub fn as_bytes(&self) -> &[u8] {
        &self.key
    }

    /// The MAC of `"{msg_id}.{timestamp}.{body}"`, not yet finalized.
    pub(crate) fn mac(&self, msg_id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The Standard Webhooks signature of a message: `v1,` and the standard base64 of
    /// HMAC-SHA256(key, `"{msg_id}.{timestamp}.{body}"`), `timestamp` in Unix seconds.
    pub fn sign(&self, msg_id: &str, timestamp: u64, body: &[u8]) -> String {
        let tag = self
            .mac(msg_id, &timestamp.to_string(), body)
            .finalize()
            .into_bytes();
        format!("v1,{}", STANDARD.encode(tag))
    }
}

impl FromStr for WebhookSecret {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        WebhookSecret::parse(s)
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

impl PartialEq for WebhookSecret {
    /// Compares the keys (not in constant time: do not use it to check a key an
    /// attacker chose).
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for WebhookSecret {}

/// The `webhook-signature` value for several secrets: their `v1,` signatures
/// separated by single spaces, in order.
pub(crate) fn signature_header(
    secrets: &[WebhookSecret],
    msg_id: &str,
    timestamp: u64,
    body: &[u8],
) -> String {
    secrets
        .iter()
        .map(|s| s.sign(msg_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TS: u64 = 1_614_265_330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn reproduces_the_standard_webhooks_test_vector() {
        let s = WebhookSecret::parse(SPEC_SECRET).unwrap();
        assert_eq!(s.sign(SPEC_ID, SPEC_TS, SPEC_BODY), SPEC_SIG);
        // The prefix is optional.
        let bare = WebhookSecret::parse(&SPEC_SECRET[SECRET_PREFIX.len()..]).unwrap();
        assert_eq!(bare, s);
        assert_eq!(bare.sign(SPEC_ID, SPEC_TS, SPEC_BODY), SPEC_SIG);
    }

    #[test]
    fn text_form_round_trips_and_debug_hides_the_key() {
        let s = WebhookSecret::generate();
        assert_eq!(s.as_bytes().len(), 32);
        let back = WebhookSecret::parse(&s.to_whsec()).unwrap();
        assert_eq!(back, s);
        assert_eq!(format!("{s:?}"), "WebhookSecret(<redacted>)");
        assert_ne!(WebhookSecret::generate(), s);
    }

    #[test]
    fn padded_and_unpadded_base64_both_parse() {
        let padded = WebhookSecret::parse("whsec_YWJjZA==").unwrap();
        let unpadded = WebhookSecret::parse("whsec_YWJjZA").unwrap();
        assert_eq!(padded.as_bytes(), b"abcd");
        assert_eq!(padded, unpadded);
    }

    #[test]
    fn bad_secrets_are_typed_errors_that_do_not_echo_the_secret() {
        for bad in ["", "whsec_", "whsec_not base64!", "whsec_%%%%"] {
            let e = WebhookSecret::parse(bad).unwrap_err();
            assert!(matches!(e, Error::InvalidSecret { .. }), "{bad:?}: {e}");
            if bad.len() > SECRET_PREFIX.len() {
                assert!(!e.to_string().contains(&bad[SECRET_PREFIX.len()..]), "{e}");
            }
        }
        assert!(matches!(
            WebhookSecret::from_bytes(Vec::new()),
            Err(Error::InvalidSecret { .. })
        ));
    }

    #[test]
    fn several_secrets_give_space_separated_signatures() {
        let a = WebhookSecret::parse(SPEC_SECRET).unwrap();
        let b = WebhookSecret::from_bytes(b"another key".to_vec()).unwrap();
        let h = signature_header(&[a.clone(), b.clone()], SPEC_ID, SPEC_TS, SPEC_BODY);
        let parts: Vec<_> = h.split(' ').collect();
        assert_eq!(
            parts,
            [SPEC_SIG.to_owned(), b.sign(SPEC_ID, SPEC_TS, SPEC_BODY)]
        );
    }
}
