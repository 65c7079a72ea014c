//! Global feed positions.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// A place in the global feed of a store.
///
/// A position is opaque and totally ordered: compare it, store it and resume from it,
/// but do not do arithmetic on it. It is made of two numbers compared in order
/// (`major`, then `minor`): the embedded stores use only `minor` (a sequence), while the
/// PostgreSQL store puts the writing transaction's id in `major` so that its feed never
/// skips a late commit.
///
/// Its stable text form is `"<major>:<minor>"` (or just `"<minor>"` when `major` is 0),
/// and its stable byte form is 16 big-endian bytes that sort like the positions do.
///
/// ```
/// use mink_es::Position;
/// let p = Position::new(0, 42);
/// assert_eq!(p.to_string(), "42");
/// assert_eq!("42".parse::<Position>().unwrap(), p);
/// assert!(Position::START < p);
/// assert_eq!(Position::from_bytes(&p.to_bytes()).unwrap(), p);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Position {
    major: u64,
    minor: u64,
}

impl Position {
    /// The position before the first event. Reading "after `START`" reads everything.
    pub const START: Position = Position { major: 0, minor: 0 };

    /// Builds a position from its two parts. Meant for store implementations.
    pub const fn new(major: u64, minor: u64) -> Self {
        Position { major, minor }
    }

    /// The major part (a transaction id on PostgreSQL, 0 elsewhere). Meant for store
    /// implementations.
    pub const fn major(&self) -> u64 {
        self.major
    }

    /// The minor part (the store's global sequence number). Meant for store
    /// implementations and for display; it is not guaranteed to be gap-free.
    pub const fn minor(&self) -> u64 {
        self.minor
    }

    /// The 16-byte big-endian form, which sorts as positions do.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.major.to_be_bytes());
        out[8..].copy_from_slice(&self.minor.to_be_bytes());
        out
    }

    /// Reads the form written by [`Position::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let arr: [u8; 16] = bytes
            .try_into()
            .map_err(|_| Error::InvalidPosition(format!("{} bytes", bytes.len())))?;
        let (hi, lo) = arr.split_at(8);
        let major = u64::from_be_bytes(hi.try_into().unwrap_or_default());
        let minor = u64::from_be_bytes(lo.try_into().unwrap_or_default());
        Ok(Position { major, minor })
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.major == 0 {
            write!(f, "{}", self.minor)
        } else {
            write!(f, "{}:{}", self.major, self.minor)
        }
    }
}

impl fmt::Debug for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Position({self})")
    }
}

impl FromStr for Position {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::InvalidPosition(crate::error::clip(s));
        let parse = |t: &str| {
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            t.parse::<u64>().map_err(|_| bad())
        };
        match s.split_once(':') {
            Some((major, minor)) => Ok(Position::new(parse(major)?, parse(minor)?)),
            None => Ok(Position::new(0, parse(s)?)),
        }
    }
}

impl serde::Serialize for Position {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Position {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_major_then_minor() {
        assert!(Position::new(1, 0) > Position::new(0, 99));
        assert!(Position::new(1, 5) < Position::new(1, 6));
    }

    #[test]
    fn text_round_trip() {
        for p in [
            Position::START,
            Position::new(0, 7),
            Position::new(9, 7),
            Position::new(u64::MAX, u64::MAX),
        ] {
            assert_eq!(p.to_string().parse::<Position>().unwrap(), p);
            assert_eq!(Position::from_bytes(&p.to_bytes()).unwrap(), p);
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(serde_json::from_str::<Position>(&json).unwrap(), p);
        }
    }

    #[test]
    fn bytes_sort_like_positions() {
        let a = Position::new(1, u64::MAX);
        let b = Position::new(2, 0);
        assert!(a.to_bytes() < b.to_bytes());
    }

    #[test]
    fn bad_text_is_refused() {
        for s in [
            "",
            ":",
            "1:",
            ":1",
            "-1",
            "a",
            "1:2:3",
            "+1",
            "99999999999999999999",
        ] {
            assert!(
                matches!(s.parse::<Position>(), Err(Error::InvalidPosition(_))),
                "{s}"
            );
        }
        assert!(Position::from_bytes(&[0; 3]).is_err());
    }
}
