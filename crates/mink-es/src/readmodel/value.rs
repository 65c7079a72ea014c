//! [`Value`]: one field's value, as stored, compared and bound to a query.

use std::cmp::Ordering;
use std::fmt;

use chrono::{DateTime, Utc};

/// The value of one field of a read model, or a value a query compares a field with.
///
/// Values of a field are always of the field's [`FieldType`](super::FieldType) (or
/// [`Value::Null`] for a nullable field): a value of another type is refused with
/// [`ReadModelError::TypeMismatch`](super::ReadModelError::TypeMismatch), except that an
/// integer compared with a float field is taken as that float when it is exactly
/// representable (|n| ≤ 2⁵³).
///
/// ```
/// use mink_es::readmodel::Value;
/// assert_eq!(Value::from("open"), Value::Text("open".into()));
/// assert_eq!(Value::from(7), Value::Integer(7));
/// assert_eq!(Value::from(None::<i64>), Value::Null);
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Value {
    /// No value (a nullable field that is `None`, or missing from the model).
    Null,
    /// UTF-8 text without NUL characters. Ordered by bytes (= by code points).
    Text(String),
    /// A 64-bit signed integer.
    Integer(i64),
    /// A finite 64-bit float (NaN and infinities are refused). `-0.0` equals `0.0`.
    Float(f64),
    /// A boolean; `false` orders before `true`.
    Bool(bool),
    /// An instant, kept to the microsecond, between the years 1 and 9999.
    Timestamp(DateTime<Utc>),
    /// Any JSON value (fields of type [`FieldType::Json`](super::FieldType::Json)); only
    /// null checks apply to it in queries.
    Json(serde_json::Value),
}

impl Value {
    /// The name of the value's kind, as used in error messages (`"text"`, `"null"`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Text(_) => "text",
            Value::Integer(_) => "integer",
            Value::Float(_) => "float",
            Value::Bool(_) => "bool",
            Value::Timestamp(_) => "timestamp",
            Value::Json(_) => "json",
        }
    }

    /// True for [`Value::Null`].
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The order of two values of one field, as every backend sorts them: `Null`
    /// before everything else, text by bytes, numbers numerically, `false` before
    /// `true`, timestamps by time.
    ///
    /// `None` when the two cannot be compared (different kinds, JSON, a NaN).
    ///
    /// ```
    /// use std::cmp::Ordering;
    /// use mink_es::readmodel::Value;
    /// assert_eq!(Value::Null.compare(&Value::from(-5)), Some(Ordering::Less));
    /// assert_eq!(Value::from("Z").compare(&Value::from("a")), Some(Ordering::Less));
    /// assert_eq!(Value::from(-0.0).compare(&Value::from(0.0)), Some(Ordering::Equal));
    /// assert_eq!(Value::from(1).compare(&Value::from("1")), None);
    /// ```
    pub fn compare(&self, other: &Value) -> Option<Ordering> {
        match (self, other) {
            (Value::Null, Value::Null) => Some(Ordering::Equal),
            (Value::Null, _) => Some(Ordering::Less),
            (_, Value::Null) => Some(Ordering::Greater),
            (Value::Text(a), Value::Text(b)) => Some(a.as_bytes().cmp(b.as_bytes())),
            (Value::Integer(a), Value::Integer(b)) => Some(a.cmp(b)),
            (Value::Float(a), Value::Float(b)) => a.partial_cmp(b),
            (Value::Bool(a), Value::Bool(b)) => Some(a.cmp(b)),
            (Value::Timestamp(a), Value::Timestamp(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }
}

impl fmt::Display for Value {
    /// Text is shown quoted; other values as literals.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Text(s) => write!(f, "{:?}", crate::error::clip(s)),
            Value::Integer(n) => write!(f, "{n}"),
            Value::Float(x) => write!(f, "{x:?}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Timestamp(t) => write!(f, "{}", t.to_rfc3339()),
            Value::Json(j) => write!(f, "{}", crate::error::clip(&j.to_string())),
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Text(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Text(s)
    }
}

impl From<&String> for Value {
    fn from(s: &String) -> Self {
        Value::Text(s.clone())
    }
}

macro_rules! from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(n: $t) -> Self {
                Value::Integer(i64::from(n))
            }
        }
    )*};
}
from_int!(i8, i16, i32, i64, u8, u16, u32);

impl From<f64> for Value {
    fn from(x: f64) -> Self {
        Value::Float(x)
    }
}

impl From<f32> for Value {
    fn from(x: f32) -> Self {
        Value::Float(f64::from(x))
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl From<DateTime<Utc>> for Value {
    fn from(t: DateTime<Utc>) -> Self {
        Value::Timestamp(t)
    }
}

impl From<serde_json::Value> for Value {
    /// Always a [`Value::Json`] (even for a JSON number or string).
    fn from(j: serde_json::Value) -> Self {
        Value::Json(j)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}
