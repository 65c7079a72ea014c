//! `like` patterns: one syntax, one meaning, on every backend.
//!
//! A pattern matches a whole text value, case-sensitively, character by character
//! (Unicode scalar values, not bytes):
//!
//! | in the pattern | matches |
//! |---|---|
//! | `%` | any sequence of characters, also the empty one |
//! | `_` | exactly one character |
//! | `\%`, `\_`, `\\` | a literal `%`, `_`, `\` |
//! | any other character | itself (case-sensitive) |
//!
//! A `\` followed by anything else, or at the end of the pattern, is refused
//! ([`ReadModelError::InvalidQuery`](super::ReadModelError::InvalidQuery)).
//! [`escape_like`] escapes text so that it matches only itself.
//!
//! Backends: memory runs [`LikePattern::matches`]; PostgreSQL runs
//! `LIKE … ESCAPE '\'` with the pattern of [`LikePattern::to_like`] (case-sensitive);
//! SQLite runs `GLOB` with the pattern of [`LikePattern::to_glob`], because SQLite's
//! `LIKE` ignores ASCII case.

/// One element of a parsed pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    /// `%`
    Any,
    /// `_`
    One,
    /// A literal character.
    Char(char),
}

/// A validated `like` pattern (see the [read-model docs](crate::readmodel) for the syntax).
///
/// ```
/// use mink_es::readmodel::LikePattern;
/// let p = LikePattern::parse(r"a\_b%").unwrap();
/// assert!(p.matches("a_b"));
/// assert!(p.matches("a_bcd"));
/// assert!(!p.matches("axb"));
/// assert!(!LikePattern::parse("A%").unwrap().matches("abc"));
/// assert!(LikePattern::parse(r"oops\").is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LikePattern {
    tokens: Vec<Token>,
}

impl LikePattern {
    /// Parses a pattern; the error says what is wrong with it.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let mut tokens = Vec::with_capacity(pattern.len());
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            match c {
                '%' => {
                    // Consecutive `%` mean the same as one.
                    if tokens.last() != Some(&Token::Any) {
                        tokens.push(Token::Any);
                    }
                }
                '_' => tokens.push(Token::One),
                '\\' => match chars.next() {
                    Some(e @ ('%' | '_' | '\\')) => tokens.push(Token::Char(e)),
                    Some(other) => {
                        return Err(format!(
                            "the like pattern has '\\' before {other:?}; only %, _ and \\ may be escaped"
                        ));
                    }
                    None => return Err("the like pattern ends with a lone '\\'".to_owned()),
                },
                '\0' => return Err("the like pattern contains a NUL character".to_owned()),
                c => tokens.push(Token::Char(c)),
            }
        }
        Ok(LikePattern { tokens })
    }

    /// Whether `text` matches the whole pattern.
    pub fn matches(&self, text: &str) -> bool {
        let t: Vec<char> = text.chars().collect();
        let p = &self.tokens;
        let (mut ti, mut pi) = (0usize, 0usize);
        // Where the last `%` was, and the text position it is currently matched up to.
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            match p.get(pi) {
                Some(Token::One) => {
                    ti += 1;
                    pi += 1;
                }
                Some(Token::Char(c)) if *c == t[ti] => {
                    ti += 1;
                    pi += 1;
                }
                Some(Token::Any) => {
                    star = Some((pi, ti));
                    pi += 1;
                }
                _ => match star {
                    // Let the last `%` swallow one more character and retry.
                    Some((sp, st)) => {
                        star = Some((sp, st + 1));
                        pi = sp + 1;
                        ti = st + 1;
                    }
                    None => return false,
                },
            }
        }
        p[pi.min(p.len())..].iter().all(|tok| *tok == Token::Any)
    }

    /// The pattern for SQL `LIKE … ESCAPE '\'` (PostgreSQL), in canonical form.
    pub fn to_like(&self) -> String {
        let mut s = String::with_capacity(self.tokens.len());
        for tok in &self.tokens {
            match tok {
                Token::Any => s.push('%'),
                Token::One => s.push('_'),
                Token::Char(c @ ('%' | '_' | '\\')) => {
                    s.push('\\');
                    s.push(*c);
                }
                Token::Char(c) => s.push(*c),
            }
        }
        s
    }

    /// The same pattern for SQLite's case-sensitive `GLOB`: `%` → `*`, `_` → `?`, and
    /// the characters special to `GLOB` (`*`, `?`, `[`) as one-character classes.
    pub fn to_glob(&self) -> String {
        let mut s = String::with_capacity(self.tokens.len());
        for tok in &self.tokens {
            match tok {
                Token::Any => s.push('*'),
                Token::One => s.push('?'),
                Token::Char(c @ ('*' | '?' | '[')) => {
                    s.push('[');
                    s.push(*c);
                    s.push(']');
                }
                Token::Char(c) => s.push(*c),
            }
        }
        s
    }
}

/// Escapes `literal` for a `like` pattern (`%`, `_` and `\` get a `\`), so that it
/// matches exactly itself.
///
/// ```
/// use mink_es::readmodel::{LikePattern, escape_like};
/// assert_eq!(escape_like(r"50%_off\"), r"50\%\_off\\");
/// let p = LikePattern::parse(&format!("{}%", escape_like("a_b"))).unwrap();
/// assert!(p.matches("a_bc") && !p.matches("axbc"));
/// ```
pub fn escape_like(literal: &str) -> String {
    let mut s = String::with_capacity(literal.len());
    for c in literal.chars() {
        if matches!(c, '%' | '_' | '\\') {
            s.push('\\');
        }
        s.push(c);
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn m(p: &str, t: &str) -> bool {
        LikePattern::parse(p).unwrap().matches(t)
    }

    #[test]
    fn matching() {
        assert!(m("", ""));
        assert!(!m("", "a"));
        assert!(m("%", ""));
        assert!(m("%", "anything"));
        assert!(m("_", "é"), "one character, not one byte");
        assert!(m("_", "😀"));
        assert!(!m("_", ""));
        assert!(!m("__", "é"));
        assert!(m("a%c", "abbbc"));
        assert!(m("a%c", "ac"));
        assert!(!m("a%c", "acb"));
        assert!(m("%a%a%", "banana"));
        assert!(!m("abc", "ABC"), "case-sensitive");
        assert!(m(r"100\%", "100%"));
        assert!(!m(r"100\%", "1000"));
        assert!(m(r"a\\b", r"a\b"));
        assert!(m("%%%", ""));
    }

    #[test]
    fn refused_patterns() {
        assert!(LikePattern::parse(r"\").is_err());
        assert!(LikePattern::parse(r"a\b").is_err());
        assert!(LikePattern::parse("a\0").is_err());
    }

    #[test]
    fn renderings() {
        let p = LikePattern::parse(r"a%_\%\_\\*?[]").unwrap();
        assert_eq!(p.to_like(), r"a%_\%\_\\*?[]");
        assert_eq!(p.to_glob(), r"a*?%_\[*][?][[]]");
        assert_eq!(LikePattern::parse("a%%b").unwrap().to_like(), "a%b");
    }

    /// A reference matcher: plain recursion over the pattern.
    fn reference(p: &[Token], t: &[char]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some((Token::Any, rest)) => (0..=t.len()).any(|i| reference(rest, &t[i..])),
            Some((Token::One, rest)) => !t.is_empty() && reference(rest, &t[1..]),
            Some((Token::Char(c), rest)) => t.first() == Some(c) && reference(rest, &t[1..]),
        }
    }

    proptest! {
        #[test]
        fn matches_agrees_with_the_reference(
            pattern in r"[ab%_é]{0,6}|[ab%_]{0,3}\\[%_\\][ab%]{0,3}",
            text in "[abé%_\\\\]{0,8}",
        ) {
            let p = LikePattern::parse(&pattern).unwrap();
            let t: Vec<char> = text.chars().collect();
            prop_assert_eq!(p.matches(&text), reference(&p.tokens, &t));
        }

        #[test]
        fn escaped_text_matches_only_itself(a in "[a%_\\\\é]{0,6}", b in "[a%_\\\\é]{0,6}") {
            let p = LikePattern::parse(&escape_like(&a)).unwrap();
            prop_assert!(p.matches(&a));
            prop_assert_eq!(p.matches(&b), a == b);
        }
    }
}
