//! Routing key templates: which routing key an outbox message is published with.

use std::fmt;
use std::str::FromStr;

use mink_es::outbox::{OutboxMessage, Part, Placeholder, Template};

use crate::RabbitError;

/// The longest routing key AMQP carries (a short string).
pub const MAX_ROUTING_KEY_LEN: usize = 255;

/// The routing key of a destination's messages: literal text with placeholders filled
/// from each message.
///
/// Placeholders (parsed by [`Template`]):
///
/// | placeholder | value |
/// |---|---|
/// | `{destination}` | the outbox route's destination name |
/// | `{category}` | the stream's category (the text before the first `-` of the stream id) |
/// | `{event_type}` | the event type name |
/// | `{stream_id}` | the whole stream id |
///
/// **Each placeholder fills exactly one word** of a topic routing key: in the value,
/// `.` is replaced by `_`, and an empty value becomes `_`. So with the default
/// `{category}.{event_type}`, an event `order.placed` of stream `order-7` is routed as
/// `order.order_placed`, and a binding `order.*` takes every event of the category.
///
/// A template without placeholders is a fixed routing key. A routing key is at most
/// 255 bytes: a longer fixed part is refused when the template is parsed, and a
/// message whose key comes out longer fails permanently.
///
/// ```
/// use mink_rabbitmq::RoutingKeyTemplate;
/// let t: RoutingKeyTemplate = "{category}.{event_type}".parse().unwrap();
/// assert_eq!(t.as_str(), "{category}.{event_type}");
/// assert!(RoutingKeyTemplate::new("orders.{nope}").is_err());
/// assert!(RoutingKeyTemplate::new("").is_ok(), "an empty key suits fanout exchanges");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct RoutingKeyTemplate {
    template: Template,
}

impl RoutingKeyTemplate {
    /// The default: `{category}.{event_type}`.
    pub const DEFAULT: &'static str = "{category}.{event_type}";

    /// Parses and checks a template.
    ///
    /// # Errors
    /// [`RabbitError::InvalidRoutingKey`] naming the template and what is wrong with it.
    pub fn new(template: impl Into<String>) -> Result<Self, RabbitError> {
        let source = template.into();
        let invalid = |reason: String| RabbitError::InvalidRoutingKey {
            template: source.clone(),
            reason,
        };
        let template = Template::parse(source.as_str()).map_err(|e| invalid(e.to_string()))?;
        // Each placeholder renders as at least one byte (`_` for an empty value).
        let fixed_len = template.literal_len() + template.placeholders().count();
        if fixed_len > MAX_ROUTING_KEY_LEN {
            return Err(invalid(format!(
                "a routing key is at most {MAX_ROUTING_KEY_LEN} bytes, and this template's fixed part alone is {fixed_len}"
            )));
        }
        Ok(RoutingKeyTemplate { template })
    }

    /// The template text.
    pub fn as_str(&self) -> &str {
        self.template.as_str()
    }

    /// The routing key for `message` (possibly longer than AMQP allows: the publisher
    /// checks).
    pub fn render(&self, message: &OutboxMessage) -> String {
        self.template.render(message, push_word)
    }
}

/// Appends `value` as one routing key word (the sanitiser of every placeholder value).
fn push_word(out: &mut String, value: &str) {
    if value.is_empty() {
        out.push('_');
    } else {
        out.extend(value.chars().map(|c| if c == '.' { '_' } else { c }));
    }
}

impl FromStr for RoutingKeyTemplate {
    type Err = RabbitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RoutingKeyTemplate::new(s)
    }
}

impl Default for RoutingKeyTemplate {
    fn default() -> Self {
        RoutingKeyTemplate {
            template: Template::from_parts([
                Part::Placeholder(Placeholder::Category),
                Part::Literal(".".into()),
                Part::Placeholder(Placeholder::EventType),
            ]),
        }
    }
}

impl fmt::Debug for RoutingKeyTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for RoutingKeyTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mink_es::{Bytes, CodecTag, EventId, Metadata, Position, StreamId};

    fn message(stream: &str, event_type: &str) -> OutboxMessage {
        OutboxMessage {
            id: mink_es::Uuid::nil(),
            destination: "orders".into(),
            stream_id: StreamId::new(stream).unwrap(),
            event_id: EventId::new(),
            event_type: event_type.into(),
            stream_version: 1,
            position: Position::default(),
            payload: Bytes::new(),
            codec: CodecTag::JSON,
            metadata: Metadata::default(),
            created_at: Default::default(),
        }
    }

    #[test]
    fn the_default_renders_category_and_event_type() {
        let t = RoutingKeyTemplate::default();
        assert_eq!(
            t,
            RoutingKeyTemplate::new(RoutingKeyTemplate::DEFAULT).unwrap()
        );
        assert_eq!(t.render(&message("order-42", "Placed")), "order.Placed");
        assert_eq!(
            t.render(&message("order-42", "order.placed")),
            "order.order_placed"
        );
        assert_eq!(t.render(&message("-42", "X")), "_.X");
    }

    #[test]
    fn other_placeholders_and_fixed_keys() {
        let t = RoutingKeyTemplate::new("mink.{destination}.{stream_id}").unwrap();
        assert_eq!(t.render(&message("a.b-1", "T")), "mink.orders.a_b-1");
        let fixed = RoutingKeyTemplate::new("all.orders").unwrap();
        assert_eq!(fixed.render(&message("a-1", "T")), "all.orders");
    }

    #[test]
    fn bad_templates_are_refused_with_a_reason() {
        let long = "x".repeat(256);
        for bad in ["{x}", "a.{category", "a}", long.as_str()] {
            let e = RoutingKeyTemplate::new(bad).unwrap_err();
            assert!(
                matches!(&e, RabbitError::InvalidRoutingKey { template, .. } if template == bad),
                "{bad:?}: {e}"
            );
        }
    }
}
