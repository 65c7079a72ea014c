//! Which Kafka failures are worth retrying.

use mink_es::outbox::PublishError;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// True when the failure is about the message or the topic itself and retrying the same
/// message cannot help. See the crate documentation for the table.
pub fn is_permanent(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        // The message can never fit.
        C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::MessageBatchTooLarge
            // The broker refused the record (a broker-side validation, a bad timestamp).
            | C::InvalidRecord
            | C::InvalidTimestamp
            | C::PolicyViolation
            | C::UnsupportedForMessageFormat
            | C::UnsupportedCompressionType
            // The topic: not allowed to write to it, an illegal name, or absent from the
            // cluster. librdkafka retries UnknownTopicOrPartition inside the client
            // (refreshing metadata, as during a leader move) and reports it, or its local
            // UnknownTopic, only once the metadata has shown no such topic for
            // `topic.metadata.propagation.max.ms`.
            | C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::InvalidTopic
            | C::UnknownTopicOrPartition
            | C::UnknownTopic
            | C::UnknownPartition
            // A configuration the broker can never accept.
            | C::InvalidRequiredAcks
            | C::InvalidArgument
    )
}

/// The [`PublishError`] for a Kafka failure: [`is_permanent`] codes are permanent,
/// everything else (timeouts, transport and broker availability errors, a full local
/// queue, a fatal idempotence error after which the producer is rebuilt, …) is
/// retryable.
pub fn publish_error(e: KafkaError) -> PublishError {
    match e.rdkafka_error_code() {
        Some(code) if is_permanent(code) => PublishError::permanent(e),
        _ => PublishError::retryable(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_and_retryable_codes() {
        use RDKafkaErrorCode as C;
        for c in [
            C::MessageSizeTooLarge,
            C::TopicAuthorizationFailed,
            C::InvalidTopic,
            C::UnknownTopic,
            C::UnknownTopicOrPartition,
            C::InvalidRecord,
        ] {
            assert!(
                publish_error(KafkaError::MessageProduction(c)).is_permanent(),
                "{c:?}"
            );
        }
        for c in [
            C::MessageTimedOut,
            C::QueueFull,
            C::AllBrokersDown,
            C::BrokerTransportFailure,
            C::NotEnoughReplicas,
            C::NotLeaderForPartition,
            C::LeaderNotAvailable,
            C::RequestTimedOut,
            C::NetworkException,
            C::Fatal,
            C::OutOfOrderSequenceNumber,
            C::PurgeQueue,
            C::Authentication,
            C::ThrottlingQuotaExceeded,
        ] {
            assert!(
                !publish_error(KafkaError::MessageProduction(c)).is_permanent(),
                "{c:?}"
            );
        }
        assert!(!publish_error(KafkaError::Canceled).is_permanent());
    }
}
