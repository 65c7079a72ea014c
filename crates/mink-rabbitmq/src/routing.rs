//! Routing key templates: which routing key an outbox message is published with.

use std::fmt;
use std::str::FromStr;

use mink_es::outbox::OutboxMessage;

use crate::RabbitError;

/// The longest routing key AMQP carries (a short string).
pub const MAX_ROUTING_KEY_LEN: usize = 255;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Destination,
    Category,
    EventType,
    StreamId,
}

impl Field {
    fn parse(name: &str) -> Option<Field> {
        Some(match name {
            "destination" => Field::Destination,
            "category" => Field::Category,
            "event_type" => Field::EventType,
            "stream_id" => Field::StreamId,
            _ => return None,
        })
    }

    fn value(self, m: &OutboxMessage) -> &str {
        match self {
            Field::Destination => &m.destination,
            Field::Category => m.stream_id.category(),
            Field::EventType => &m.event_type,
            Field::StreamId => m.stream_id.as_str(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Field(Field),
}

/// The routing key of a destination's messages: literal text with placeholders filled
/// from each message.
///
/// Placeholders:
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
    source: String,
    parts: Vec<Part>,
    fixed_len: usize,
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
        let mut parts = Vec::new();
        let mut rest = source.as_str();
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                None => {
                    parts.push(Part::Literal(rest.to_owned()));
                    rest = "";
                }
                Some(i) => {
                    if i > 0 {
                        parts.push(Part::Literal(rest[..i].to_owned()));
                    }
                    if rest[i..].starts_with('}') {
                        return Err(invalid("a `}` without its `{`".into()));
                    }
                    let after = &rest[i + 1..];
                    let end = after
                        .find('}')
                        .ok_or_else(|| invalid("a `{` without its `}`".into()))?;
                    let name = &after[..end];
                    let field = Field::parse(name).ok_or_else(|| {
                        invalid(format!(
                            "unknown placeholder {{{name}}} (known: {{destination}}, {{category}}, {{event_type}}, {{stream_id}})"
                        ))
                    })?;
                    parts.push(Part::Field(field));
                    rest = &after[end + 1..];
                }
            }
        }
        let fixed_len = parts
            .iter()
            .map(|p| match p {
                Part::Literal(s) => s.len(),
                Part::Field(_) => 1,
            })
            .sum();
        if fixed_len > MAX_ROUTING_KEY_LEN {
            return Err(invalid(format!(
                "a routing key is at most {MAX_ROUTING_KEY_LEN} bytes, and this template's fixed part alone is {fixed_len}"
            )));
        }
        Ok(RoutingKeyTemplate {
            source,
            parts,
            fixed_len,
        })
    }

    /// The template text.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The routing key for `message` (possibly longer than AMQP allows: the publisher
    /// checks).
    pub fn render(&self, message: &OutboxMessage) -> String {
        let mut out = String::with_capacity(self.fixed_len + 32);
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Field(f) => push_word(&mut out, f.value(message)),
            }
        }
        out
    }
}

/// Appends `value` as one routing key word.
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
            source: RoutingKeyTemplate::DEFAULT.to_owned(),
            parts: vec![
                Part::Field(Field::Category),
                Part::Literal(".".into()),
                Part::Field(Field::EventType),
            ],
            fixed_len: 3,
        }
    }
}

impl fmt::Debug for RoutingKeyTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.source, f)
    }
}

impl fmt::Display for RoutingKeyTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
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
