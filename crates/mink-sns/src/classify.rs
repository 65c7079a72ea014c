//! Which SNS failures are worth retrying.

use aws_sdk_sns::error::{ProvideErrorMetadata, SdkError};
use mink_es::outbox::PublishError;

/// Error codes that mean "later": throttling, a server-side failure, an expired
/// signature or token (the credentials provider refreshes them).
const RETRYABLE: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "Throttled",
    "ThrottledException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "KMSThrottling",
    "KMSThrottlingException",
    "InternalError",
    "InternalErrorException",
    "InternalFailure",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "RequestTimeout",
    "RequestTimeoutException",
    "RequestExpired",
    "ExpiredToken",
    "ExpiredTokenException",
    // Authentication: the client's credentials, not the message, are at fault.
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
];

/// Error codes that mean "never": the message or the topic is wrong, or publishing to
/// it is not allowed.
const PERMANENT: &[&str] = &[
    "InvalidParameter",
    "InvalidParameterException",
    "InvalidParameterValue",
    "InvalidParameterValueException",
    "ParameterValueInvalid",
    "ValidationError",
    "ValidationException",
    "NotFound",
    "NotFoundException",
    "ResourceNotFound",
    "ResourceNotFoundException",
    "AuthorizationError",
    "AuthorizationErrorException",
    "AccessDenied",
    "AccessDeniedException",
    "InvalidSecurity",
    "InvalidSecurityException",
    "OptInRequired",
    "KMSAccessDenied",
    "KMSAccessDeniedException",
    "KMSDisabled",
    "KMSDisabledException",
    "KMSInvalidState",
    "KMSInvalidStateException",
    "KMSNotFound",
    "KMSNotFoundException",
    "KMSOptInRequired",
    "EndpointDisabled",
    "PlatformApplicationDisabled",
    "BatchEntryIdsNotDistinct",
    "BatchRequestTooLong",
    "EmptyBatchRequest",
    "InvalidBatchEntryId",
    "TooManyEntriesInBatchRequest",
];

/// Whether a service error with `code` (and HTTP `status`, when known) is permanent:
/// listed codes decide; otherwise 429 and 5xx are retryable, other 4xx permanent, and
/// anything else retryable.
pub fn is_permanent_code(code: Option<&str>, status: Option<u16>) -> bool {
    if let Some(code) = code {
        if RETRYABLE.contains(&code) {
            return false;
        }
        if PERMANENT.contains(&code) {
            return true;
        }
    }
    match status {
        Some(429) => false,
        Some(s) => (400..500).contains(&s),
        None => false,
    }
}

/// Whether a failed entry of a `PublishBatch` is permanent: by its code as in
/// [`is_permanent_code`], and for an unknown code by SNS's `SenderFault` flag.
pub fn is_permanent_entry(code: &str, sender_fault: bool) -> bool {
    if RETRYABLE.contains(&code) {
        false
    } else if PERMANENT.contains(&code) {
        true
    } else {
        sender_fault
    }
}

/// Whether a failed `PublishBatch` request may be the fault of one of its entries (an
/// invalid parameter, a request too long, an unknown code) rather than of the topic or
/// the client: then its messages are worth sending one by one.
pub fn may_be_one_entry(code: Option<&str>) -> bool {
    match code {
        Some(c) => {
            c.starts_with("InvalidParameter")
                || matches!(
                    c,
                    "ParameterValueInvalid"
                        | "ValidationError"
                        | "ValidationException"
                        | "BatchRequestTooLong"
                )
                || !(RETRYABLE.contains(&c) || PERMANENT.contains(&c))
        }
        None => true,
    }
}

/// The [`PublishError`] for a failed SNS call.
///
/// | failure | kind |
/// |---|---|
/// | timeout, network (`DispatchFailure`), unreadable response | retryable |
/// | request not built (`ConstructionFailure`: no credentials, no region, …) | retryable |
/// | service error with a retryable code, 429 or 5xx | retryable |
/// | service error with a permanent code, or another 4xx | permanent |
pub fn publish_error<E>(e: SdkError<E>) -> PublishError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let (permanent, text) = classify(&e);
    if permanent {
        PublishError::permanent(text)
    } else {
        PublishError::retryable(text)
    }
}

/// Whether the failure is permanent (see [`publish_error`]), and its description: the
/// code, status and message of a service error (`SdkError`'s own display says only
/// "service error"), or the error with its sources.
pub fn classify<E>(e: &SdkError<E>) -> (bool, String)
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match e {
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            let text = format!(
                "SNS {} (HTTP {status}): {}",
                s.err().code().unwrap_or("error"),
                s.err().message().unwrap_or("no message")
            );
            (is_permanent_code(s.err().code(), Some(status)), text)
        }
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            (false, text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert!(is_permanent_code(Some("InvalidParameter"), Some(400)));
        assert!(is_permanent_code(Some("NotFound"), Some(404)));
        assert!(is_permanent_code(Some("AuthorizationError"), Some(403)));
        assert!(!is_permanent_code(Some("Throttling"), Some(400)));
        assert!(!is_permanent_code(Some("KMSThrottling"), Some(400)));
        assert!(!is_permanent_code(Some("InternalError"), Some(500)));
        assert!(!is_permanent_code(Some("SignatureDoesNotMatch"), Some(403)));
        assert!(!is_permanent_code(None, Some(503)));
        assert!(!is_permanent_code(Some("Whatever"), Some(429)));
        assert!(is_permanent_code(Some("Whatever"), Some(400)));
        assert!(!is_permanent_code(None, None));
        assert!(is_permanent_entry("InvalidParameter", false));
        assert!(!is_permanent_entry("Throttled", true));
        assert!(is_permanent_entry("Mystery", true));
        assert!(!is_permanent_entry("Mystery", false));
        assert!(may_be_one_entry(Some("InvalidParameter")));
        assert!(may_be_one_entry(Some("BatchRequestTooLong")));
        assert!(may_be_one_entry(Some("Mystery")));
        assert!(!may_be_one_entry(Some("NotFound")));
        assert!(!may_be_one_entry(Some("AuthorizationError")));
    }
}
