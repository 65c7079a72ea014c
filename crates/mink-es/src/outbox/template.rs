//! Destination templates: text with placeholders filled from each message, the common
//! ground of NATS subjects, RabbitMQ routing keys and Kafka topic names.
//!
//! | placeholder | value |
//! |---|---|
//! | `{destination}` | the outbox route's destination name |
//! | `{category}` | the stream's category (the text before the first `-` of the stream id) |
//! | `{event_type}` | the event type name |
//! | `{stream_id}` | the whole stream id |
//!
//! `{` and `}` only enclose a placeholder: a template with any other braces does not
//! parse. A template without placeholders is a fixed name.
//!
//! A [`Template`] knows nothing of a transport's naming rules: each publisher renders
//! with a sanitiser of its own (what a value may hold inside a NATS subject token, a
//! routing key word, a topic name) and checks the result.
//!
//! ```
//! use mink_es::outbox::{Placeholder, Template};
//! let t: Template = "shop.{category}.{event_type}".parse()?;
//! assert_eq!(
//!     t.placeholders().collect::<Vec<_>>(),
//!     [Placeholder::Category, Placeholder::EventType]
//! );
//! // A sanitiser that keeps each value in one dot-separated token.
//! let one_token = |out: &mut String, value: &str| out.extend(value.chars().map(|c| if c == '.' { '_' } else { c }));
//! let rendered = t.render_with(
//!     |p| match p {
//!         Placeholder::Category => "order",
//!         _ => "order.placed",
//!     },
//!     one_token,
//! );
//! assert_eq!(rendered, "shop.order.order_placed");
//! assert!(Template::parse("shop.{nope}").is_err());
//! # Ok::<(), mink_es::outbox::TemplateError>(())
//! ```

use std::fmt;
use std::str::FromStr;

use super::OutboxMessage;

/// A value a [`Template`] takes from each message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Placeholder {
    /// `{destination}`: the outbox route's destination name.
    Destination,
    /// `{category}`: the stream's category.
    Category,
    /// `{event_type}`: the event type name.
    EventType,
    /// `{stream_id}`: the whole stream id.
    StreamId,
}

impl Placeholder {
    /// Every placeholder.
    pub const ALL: [Placeholder; 4] = [
        Placeholder::Destination,
        Placeholder::Category,
        Placeholder::EventType,
        Placeholder::StreamId,
    ];

    /// Its name between the braces: `destination`, `category`, `event_type`,
    /// `stream_id`.
    pub fn name(self) -> &'static str {
        match self {
            Placeholder::Destination => "destination",
            Placeholder::Category => "category",
            Placeholder::EventType => "event_type",
            Placeholder::StreamId => "stream_id",
        }
    }

    /// The placeholder of that name (without braces).
    pub fn from_name(name: &str) -> Option<Placeholder> {
        Placeholder::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Its value for `message`.
    pub fn value(self, message: &OutboxMessage) -> &str {
        match self {
            Placeholder::Destination => &message.destination,
            Placeholder::Category => message.stream_id.category(),
            Placeholder::EventType => &message.event_type,
            Placeholder::StreamId => message.stream_id.as_str(),
        }
    }
}

impl fmt::Display for Placeholder {
    /// The placeholder as written in a template: `{destination}`, ….
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{{}}}", self.name())
    }
}

/// A piece of a [`Template`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Part {
    /// Text taken as it is.
    Literal(String),
    /// A value from the message.
    Placeholder(Placeholder),
}

/// Why a template does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    /// A `}` that closes nothing.
    #[error("a `}}` without its `{{` (at byte {at})")]
    UnmatchedClose {
        /// Its byte offset in the template.
        at: usize,
    },
    /// A `{` that is never closed.
    #[error("a `{{` without its `}}` (at byte {at})")]
    UnmatchedOpen {
        /// Its byte offset in the template.
        at: usize,
    },
    /// Braces around a name that is no placeholder.
    #[error(
        "unknown placeholder {{{name}}} (known: {{destination}}, {{category}}, {{event_type}}, {{stream_id}})"
    )]
    UnknownPlaceholder {
        /// The name between the braces.
        name: String,
    },
}

/// Text with [placeholders](Placeholder) filled from each message: see the
/// [module](self) docs.
///
/// Parsing checks only the placeholders; rendering passes each value through a
/// sanitiser the caller supplies, and the caller checks the result against its
/// transport's rules.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

impl Template {
    /// Parses a template.
    ///
    /// # Errors
    /// A [`TemplateError`] for an unknown placeholder or an unmatched brace.
    pub fn parse(template: impl Into<String>) -> Result<Template, TemplateError> {
        let source = template.into();
        let mut parts = Vec::new();
        let mut at = 0;
        while at < source.len() {
            let rest = &source[at..];
            let Some(i) = rest.find(['{', '}']) else {
                parts.push(Part::Literal(rest.to_owned()));
                break;
            };
            if i > 0 {
                parts.push(Part::Literal(rest[..i].to_owned()));
            }
            if rest[i..].starts_with('}') {
                return Err(TemplateError::UnmatchedClose { at: at + i });
            }
            let after = &rest[i + 1..];
            let end = after
                .find(['{', '}'])
                .filter(|&e| after[e..].starts_with('}'))
                .ok_or(TemplateError::UnmatchedOpen { at: at + i })?;
            let name = &after[..end];
            let placeholder =
                Placeholder::from_name(name).ok_or_else(|| TemplateError::UnknownPlaceholder {
                    name: name.to_owned(),
                })?;
            parts.push(Part::Placeholder(placeholder));
            at += i + 1 + end + 1;
        }
        Ok(Template { source, parts })
    }

    /// The template made of `parts` (adjacent literals are joined, empty ones dropped),
    /// for templates built in code; its text writes each placeholder in braces.
    ///
    /// A literal holding `{` or `}` gives a template whose text does not parse back.
    pub fn from_parts(parts: impl IntoIterator<Item = Part>) -> Template {
        let mut source = String::new();
        let mut joined: Vec<Part> = Vec::new();
        for part in parts {
            match part {
                Part::Literal(s) if s.is_empty() => {}
                Part::Literal(s) => {
                    source.push_str(&s);
                    match joined.last_mut() {
                        Some(Part::Literal(prev)) => prev.push_str(&s),
                        _ => joined.push(Part::Literal(s)),
                    }
                }
                Part::Placeholder(p) => {
                    source.push_str(&p.to_string());
                    joined.push(Part::Placeholder(p));
                }
            }
        }
        Template {
            source,
            parts: joined,
        }
    }

    /// The template text.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Its pieces, in order.
    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// Its placeholders, in order (repeats included).
    pub fn placeholders(&self) -> impl Iterator<Item = Placeholder> + '_ {
        self.parts.iter().filter_map(|p| match p {
            Part::Placeholder(p) => Some(*p),
            Part::Literal(_) => None,
        })
    }

    /// True for a template without placeholders: it always renders as its text.
    pub fn is_fixed(&self) -> bool {
        self.placeholders().next().is_none()
    }

    /// The bytes of its literal text (the part of every rendering that does not depend
    /// on the message).
    pub fn literal_len(&self) -> usize {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Literal(s) => s.len(),
                Part::Placeholder(_) => 0,
            })
            .sum()
    }

    /// The text for `message`: literals as they are, and each placeholder's value
    /// appended by `sanitize(out, value)` (use [`verbatim`] to take values as they are).
    pub fn render(
        &self,
        message: &OutboxMessage,
        sanitize: impl FnMut(&mut String, &str),
    ) -> String {
        self.render_with(|p| p.value(message), sanitize)
    }

    /// Like [`render`](Self::render) with the values given by `value` (to render
    /// without a message, or a sample to check a template against a transport's rules).
    pub fn render_with<'v>(
        &self,
        mut value: impl FnMut(Placeholder) -> &'v str,
        mut sanitize: impl FnMut(&mut String, &str),
    ) -> String {
        let mut out = String::with_capacity(self.source.len() + 32);
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Placeholder(p) => sanitize(&mut out, value(*p)),
            }
        }
        out
    }
}

/// The sanitiser that takes a value as it is.
pub fn verbatim(out: &mut String, value: &str) {
    out.push_str(value);
}

impl FromStr for Template {
    type Err = TemplateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Template::parse(s)
    }
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.source, f)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Bytes, CodecTag, EventId, Metadata, Position, StreamId};

    fn message(stream: &str, event_type: &str) -> OutboxMessage {
        OutboxMessage {
            id: uuid::Uuid::nil(),
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
    fn every_placeholder_parses_and_renders() {
        let t = Template::parse("x.{destination}.{category}.{event_type}.{stream_id}").unwrap();
        assert_eq!(
            t.as_str(),
            "x.{destination}.{category}.{event_type}.{stream_id}"
        );
        assert_eq!(t.to_string(), t.as_str());
        assert_eq!(
            t.placeholders().collect::<Vec<_>>(),
            Placeholder::ALL.to_vec()
        );
        assert!(!t.is_fixed());
        assert_eq!(t.literal_len(), 5);
        assert_eq!(
            t.render(&message("order-42", "Placed"), verbatim),
            "x.orders.order.Placed.order-42"
        );
        for p in Placeholder::ALL {
            assert_eq!(Placeholder::from_name(p.name()), Some(p));
            assert_eq!(
                Template::parse(p.to_string()).unwrap().parts(),
                [Part::Placeholder(p)]
            );
        }
    }

    #[test]
    fn fixed_glued_repeated_and_empty_templates() {
        let fixed = Template::parse("all.orders").unwrap();
        assert!(fixed.is_fixed());
        assert_eq!(fixed.render(&message("a-1", "T"), verbatim), "all.orders");
        let empty = Template::parse("").unwrap();
        assert!(empty.is_fixed() && empty.parts().is_empty());
        assert_eq!(empty.render(&message("a-1", "T"), verbatim), "");
        let glued = Template::parse("{category}-{event_type}{category}").unwrap();
        assert_eq!(glued.render(&message("a-1", "T"), verbatim), "a-Ta");
        assert_eq!(glued.placeholders().count(), 3);
    }

    #[test]
    fn bad_templates_name_what_is_wrong() {
        assert_eq!(
            Template::parse("a.{x}"),
            Err(TemplateError::UnknownPlaceholder { name: "x".into() })
        );
        assert_eq!(
            Template::parse("a.{}"),
            Err(TemplateError::UnknownPlaceholder { name: "".into() })
        );
        assert_eq!(
            Template::parse("a.{Category}"),
            Err(TemplateError::UnknownPlaceholder {
                name: "Category".into()
            }),
            "names are exact"
        );
        assert_eq!(
            Template::parse("a.{category"),
            Err(TemplateError::UnmatchedOpen { at: 2 })
        );
        assert_eq!(
            Template::parse("a.{{category}}"),
            Err(TemplateError::UnmatchedOpen { at: 2 })
        );
        assert_eq!(
            Template::parse("{category}.b}"),
            Err(TemplateError::UnmatchedClose { at: 12 })
        );
        assert_eq!(
            Template::parse("}"),
            Err(TemplateError::UnmatchedClose { at: 0 })
        );
        let e = Template::parse("a.{nope}").unwrap_err().to_string();
        assert!(e.contains("{nope}") && e.contains("{event_type}"), "{e}");
        assert!("{a".parse::<Template>().is_err());
    }

    #[test]
    fn the_sanitiser_sees_each_value_and_only_values() {
        let t = Template::parse("lit.{event_type}.{stream_id}").unwrap();
        let mut seen = Vec::new();
        let out = t.render(&message("a.b-c d", "order.placed"), |out, v| {
            seen.push(v.to_owned());
            if v.is_empty() {
                out.push('_');
            } else {
                out.extend(
                    v.chars()
                        .map(|c| if c == '.' || c == ' ' { '_' } else { c }),
                );
            }
        });
        assert_eq!(out, "lit.order_placed.a_b-c_d", "the literal dot stays");
        assert_eq!(seen, ["order.placed", "a.b-c d"]);

        let empty_category = Template::parse("{category}.x").unwrap();
        let out = empty_category.render(&message("-42", "T"), |out, v| {
            out.push_str(if v.is_empty() { "_" } else { v })
        });
        assert_eq!(out, "_.x");

        let sample = t.render_with(|_| "x", verbatim);
        assert_eq!(sample, "lit.x.x");
    }

    #[test]
    fn templates_built_from_parts_equal_parsed_ones() {
        let built = Template::from_parts([
            Part::Literal("mink".into()),
            Part::Literal(".".into()),
            Part::Literal(String::new()),
            Part::Placeholder(Placeholder::Destination),
            Part::Literal(".".into()),
            Part::Placeholder(Placeholder::Category),
        ]);
        assert_eq!(built.as_str(), "mink.{destination}.{category}");
        assert_eq!(
            built,
            Template::parse("mink.{destination}.{category}").unwrap()
        );
        assert_eq!(format!("{built:?}"), "\"mink.{destination}.{category}\"");
    }
}
