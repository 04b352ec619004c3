//! Subject templates: where a relay publishes each event, such as `shop.{category}.{event_type}`.

use std::fmt::{self, Write as _};

use crate::store::RecordedEvent;

/// Where a relay publishes each event: a subject with placeholders filled in from the event.
///
/// Placeholders: `{category}`, `{event_type}`, `{stream}` (the stream id), `{schema_version}`.
/// A filled-in value is one subject token: characters that NATS reserves in subjects (`.`,
/// `*`, `>`, white space and control characters) become `_`, and an empty value becomes `_`.
/// The exact values travel in the message's headers.
///
/// ```
/// use tidings::broker::SubjectTemplate;
/// let t = SubjectTemplate::parse("shop.{category}.{event_type}")?;
/// assert_eq!(t.render_parts("order", "OrderPlaced", "order-42", 1), "shop.order.OrderPlaced");
/// assert!(SubjectTemplate::parse("shop.{colour}").is_err());
/// # Ok::<(), tidings::broker::SubjectTemplateError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubjectTemplate {
    source: String,
    pieces: Vec<Piece>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Category,
    EventType,
    Stream,
    SchemaVersion,
}

/// Why a subject template was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubjectTemplateError {
    /// A `{name}` that is not one of the placeholders. Fix the template.
    #[error("unknown placeholder {{{0}}} in the subject template (known: category, event_type, stream, schema_version)")]
    UnknownPlaceholder(String),
    /// A `{` without its `}` or the reverse. Fix the template.
    #[error("unbalanced braces in the subject template {0:?}")]
    Unbalanced(String),
    /// The template is not a valid subject: empty, an empty token (`a..b`), a wildcard, or
    /// white space. Fix the template.
    #[error("the subject template {0:?} is not a valid subject")]
    InvalidSubject(String),
}

impl SubjectTemplate {
    /// Parses a template.
    pub fn parse(template: &str) -> Result<Self, SubjectTemplateError> {
        let invalid = || SubjectTemplateError::InvalidSubject(template.to_owned());
        if template.is_empty() || template.split('.').any(str::is_empty) {
            return Err(invalid());
        }
        let mut pieces = Vec::new();
        let mut rest = template;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                Some(i) if rest.as_bytes()[i] == b'}' => {
                    return Err(SubjectTemplateError::Unbalanced(template.to_owned()))
                }
                Some(i) => {
                    if i > 0 {
                        pieces.push(Piece::Literal(rest[..i].to_owned()));
                    }
                    let Some(end) = rest[i..].find('}') else {
                        return Err(SubjectTemplateError::Unbalanced(template.to_owned()));
                    };
                    let name = &rest[i + 1..i + end];
                    pieces.push(match name {
                        "category" => Piece::Category,
                        "event_type" => Piece::EventType,
                        "stream" => Piece::Stream,
                        "schema_version" => Piece::SchemaVersion,
                        other if other.contains('{') => {
                            return Err(SubjectTemplateError::Unbalanced(template.to_owned()))
                        }
                        other => {
                            return Err(SubjectTemplateError::UnknownPlaceholder(other.into()))
                        }
                    });
                    rest = &rest[i + end + 1..];
                }
                None => {
                    pieces.push(Piece::Literal(rest.to_owned()));
                    rest = "";
                }
            }
        }
        let literal_ok = |l: &str| !l.chars().any(|c| matches!(c, '*' | '>') || reserved(c));
        if !pieces.iter().all(|p| match p {
            Piece::Literal(l) => literal_ok(l),
            _ => true,
        }) {
            return Err(invalid());
        }
        Ok(SubjectTemplate {
            source: template.to_owned(),
            pieces,
        })
    }

    /// The subject for `event`.
    pub fn render(&self, event: &RecordedEvent) -> String {
        self.render_parts(
            &event.category,
            &event.event_type,
            &event.stream_id,
            event.schema_version,
        )
    }

    /// The subject for an event with these values.
    pub fn render_parts(
        &self,
        category: &str,
        event_type: &str,
        stream: &str,
        schema_version: u32,
    ) -> String {
        let mut out = String::with_capacity(self.source.len() + 32);
        for piece in &self.pieces {
            match piece {
                Piece::Literal(l) => out.push_str(l),
                Piece::Category => push_token(&mut out, category),
                Piece::EventType => push_token(&mut out, event_type),
                Piece::Stream => push_token(&mut out, stream),
                Piece::SchemaVersion => {
                    let _ = write!(out, "{schema_version}");
                }
            }
        }
        out
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl fmt::Display for SubjectTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Characters that may not appear in a subject token.
fn reserved(c: char) -> bool {
    c.is_whitespace() || c.is_control()
}

/// Appends `value` as one subject token.
fn push_token(out: &mut String, value: &str) {
    if value.is_empty() {
        out.push('_');
        return;
    }
    out.extend(value.chars().map(|c| {
        if matches!(c, '.' | '*' | '>') || reserved(c) {
            '_'
        } else {
            c
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled_in_and_reserved_characters_replaced() {
        let t = SubjectTemplate::parse("out.{category}.{stream}.v{schema_version}").unwrap();
        assert_eq!(
            t.render_parts("order", "X", "order-4.2 *>", 3),
            "out.order.order-4_2___.v3"
        );
        assert_eq!(t.render_parts("", "X", "", 1), "out._._.v1");
    }

    #[test]
    fn bad_templates_are_refused() {
        for bad in [
            "",
            "a..b",
            "a.*",
            "a.>",
            "a b",
            "a.{x}",
            "a.{category",
            "a.}",
            "a.{{category}}",
        ] {
            assert!(SubjectTemplate::parse(bad).is_err(), "{bad}");
        }
    }
}
