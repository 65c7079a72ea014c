//! Subject templates: which NATS subject an outbox message is published to.

use std::fmt;
use std::str::FromStr;

use mink_es::outbox::{OutboxMessage, Part, Placeholder, Template};

use crate::NatsError;

/// The subject of a destination's messages: literal text with placeholders filled from
/// each message.
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
/// **Each placeholder fills exactly one subject token.** In the value, the characters a
/// NATS token cannot hold — `.`, `*`, `>`, whitespace and control characters — are
/// replaced by `_`, and an empty value becomes `_`. So `{event_type}` of
/// `"order.placed"` gives the token `order_placed`, and a consumer filtering on
/// `mink.orders.*` sees every event of the category, never a split one.
///
/// A template without placeholders is a fixed subject. The template is checked when it
/// is parsed: it must give a valid publish subject (no empty tokens, no whitespace, no
/// wildcard tokens `*` or `>`), and braces only enclose a known placeholder.
///
/// ```
/// use mink_nats::SubjectTemplate;
/// let t: SubjectTemplate = "mink.{destination}.{category}".parse().unwrap();
/// assert_eq!(t.as_str(), "mink.{destination}.{category}");
/// assert!(SubjectTemplate::new("mink.{nope}").is_err());
/// assert!(SubjectTemplate::new("mink.*").is_err());
/// assert!(SubjectTemplate::new("mink..{category}").is_err());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct SubjectTemplate {
    template: Template,
}

impl SubjectTemplate {
    /// The default: `mink.{destination}.{category}`.
    pub const DEFAULT: &'static str = "mink.{destination}.{category}";

    /// Parses and checks a template.
    ///
    /// # Errors
    /// [`NatsError::InvalidSubject`] naming the template and what is wrong with it.
    pub fn new(template: impl Into<String>) -> Result<Self, NatsError> {
        let source = template.into();
        let invalid = |reason: String| NatsError::InvalidSubject {
            template: source.clone(),
            reason,
        };
        let template = Template::parse(source.as_str()).map_err(|e| invalid(e.to_string()))?;
        // Placeholder values always render as one valid token, so a sample rendering
        // tells whether every subject this template makes is valid.
        let sample = template.render_with(|_| "x", push_token);
        if let Some(reason) = subject_problem(&sample) {
            return Err(invalid(reason));
        }
        Ok(SubjectTemplate { template })
    }

    /// The template text.
    pub fn as_str(&self) -> &str {
        self.template.as_str()
    }

    /// The subject for `message`.
    pub fn render(&self, message: &OutboxMessage) -> String {
        self.template.render(message, push_token)
    }
}

/// Appends `value` as one subject token (the sanitiser of every placeholder value).
fn push_token(out: &mut String, value: &str) {
    if value.is_empty() {
        out.push('_');
        return;
    }
    out.extend(value.chars().map(|c| {
        if matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control() {
            '_'
        } else {
            c
        }
    }));
}

/// Why `subject` is not a valid subject to publish to, if it is not.
fn subject_problem(subject: &str) -> Option<String> {
    if subject.is_empty() {
        return Some("the subject is empty".into());
    }
    if let Some(c) = subject
        .chars()
        .find(|c| c.is_whitespace() || c.is_control())
    {
        return Some(format!("a subject cannot contain {c:?}"));
    }
    for token in subject.split('.') {
        match token {
            "" => {
                return Some(
                    "a subject cannot have an empty token (a leading, trailing or doubled `.`)"
                        .into(),
                );
            }
            "*" | ">" => {
                return Some(format!(
                    "a subject to publish to cannot hold the wildcard token `{token}`"
                ));
            }
            _ => {}
        }
    }
    None
}

impl FromStr for SubjectTemplate {
    type Err = NatsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SubjectTemplate::new(s)
    }
}

impl Default for SubjectTemplate {
    fn default() -> Self {
        SubjectTemplate {
            template: Template::from_parts([
                Part::Literal("mink.".into()),
                Part::Placeholder(Placeholder::Destination),
                Part::Literal(".".into()),
                Part::Placeholder(Placeholder::Category),
            ]),
        }
    }
}

impl fmt::Debug for SubjectTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for SubjectTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mink_es::{Bytes, CodecTag, EventId, Metadata, Position, StreamId, outbox::OutboxMessage};

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
    fn the_default_renders_destination_and_category() {
        let t = SubjectTemplate::default();
        assert_eq!(t, SubjectTemplate::new(SubjectTemplate::DEFAULT).unwrap());
        assert_eq!(
            t.render(&message("order-42", "Placed")),
            "mink.orders.order"
        );
    }

    #[test]
    fn each_placeholder_is_one_token() {
        let t = SubjectTemplate::new("x.{category}.{event_type}.{stream_id}").unwrap();
        assert_eq!(
            t.render(&message("a.b-c d", "order.placed")),
            "x.a_b.order_placed.a_b-c_d"
        );
        assert_eq!(t.render(&message("-x", "*")), "x._._.-x");
        assert_eq!(t.render(&message("q>", "T")), "x.q_.T.q_");
        let fixed = SubjectTemplate::new("fixed.subject").unwrap();
        assert_eq!(fixed.render(&message("a-1", "T")), "fixed.subject");
        let glued = SubjectTemplate::new("e.{category}-{event_type}").unwrap();
        assert_eq!(glued.render(&message("a-1", "T")), "e.a-T");
    }

    #[test]
    fn bad_templates_are_refused_with_a_reason() {
        for bad in [
            "",
            "a.{x}",
            "a.{category",
            "a.category}",
            "a..b",
            ".a",
            "a.",
            "a.*",
            "a.>",
            "a b",
            "a.\t",
        ] {
            let e = SubjectTemplate::new(bad).unwrap_err();
            assert!(
                matches!(&e, NatsError::InvalidSubject { template, .. } if template == bad),
                "{bad:?}: {e}"
            );
        }
        assert!(
            SubjectTemplate::new("a.b*").is_ok(),
            "`*` inside a token is literal"
        );
    }
}
