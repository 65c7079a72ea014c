//! Expected-version semantics for appends.

use std::fmt;

/// What an append expects of the stream's current version.
///
/// Stream versions count events from 1; a stream that does not exist is at version 0.
///
/// | variant | the append succeeds when |
/// |---|---|
/// | `Any` | always (no check) |
/// | `NoStream` | the stream does not exist yet |
/// | `StreamExists` | the stream exists (has at least one event) |
/// | `Exact(n)` | the stream's version is exactly `n` (`Exact(0)` is the same as `NoStream`) |
///
/// Any other case fails with [`crate::Error::Conflict`], which carries the actual version.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub enum ExpectedVersion {
    /// No check.
    #[default]
    Any,
    /// The stream must not exist.
    NoStream,
    /// The stream must exist.
    StreamExists,
    /// The stream must be at exactly this version.
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream at `current` (0 = no stream) satisfies this expectation.
    pub fn accepts(&self, current: u64) -> bool {
        match *self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current == 0,
            ExpectedVersion::StreamExists => current > 0,
            ExpectedVersion::Exact(n) => current == n,
        }
    }

    /// The expectation for a stream last seen at `version`: `NoStream` for 0, else `Exact`.
    pub fn from_version(version: u64) -> Self {
        if version == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(version)
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::StreamExists => f.write_str("stream exists"),
            ExpectedVersion::Exact(n) => write!(f, "version {n}"),
        }
    }
}

pub(crate) fn describe_version(v: u64) -> String {
    if v == 0 {
        "no stream".to_owned()
    } else {
        format!("version {v}")
    }
}

#[cfg(test)]
mod tests {
    use super::ExpectedVersion::*;

    #[test]
    fn matrix() {
        // (expectation, current, accepted)
        let cases = [
            (Any, 0, true),
            (Any, 3, true),
            (NoStream, 0, true),
            (NoStream, 1, false),
            (StreamExists, 0, false),
            (StreamExists, 1, true),
            (Exact(0), 0, true),
            (Exact(0), 1, false),
            (Exact(2), 2, true),
            (Exact(2), 1, false),
            (Exact(2), 3, false),
        ];
        for (e, cur, ok) in cases {
            assert_eq!(e.accepts(cur), ok, "{e:?} at {cur}");
        }
    }
}
