//! The declared shape of a read model: [`Field`]s, their [`FieldType`]s, and the
//! validated [`Schema`] that turns models into [`Row`]s.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{ReadModel, ReadModelError, Value};
use crate::error::clip;

/// The type of a declared field: how it is stored, compared and ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FieldType {
    /// A JSON string. Compared and ordered by bytes (`COLLATE "C"` on PostgreSQL,
    /// `BINARY` on SQLite, `str` order in memory). May not contain NUL.
    Text,
    /// A JSON integer that fits `i64`.
    Integer,
    /// A JSON number, as `f64` (finite).
    Float,
    /// A JSON boolean.
    Bool,
    /// An RFC 3339 string (chrono's serde form), kept to the microsecond (truncated),
    /// years 1–9999.
    Timestamp,
    /// Any JSON value. Stored, but only `is_null`/`is_not_null` apply to it.
    Json,
}

impl FieldType {
    /// The type's name (`"text"`, `"integer"`, …).
    pub const fn name(self) -> &'static str {
        match self {
            FieldType::Text => "text",
            FieldType::Integer => "integer",
            FieldType::Float => "float",
            FieldType::Bool => "bool",
            FieldType::Timestamp => "timestamp",
            FieldType::Json => "json",
        }
    }

    /// Whether queries may compare and order values of this type.
    pub const fn is_comparable(self) -> bool {
        !matches!(self, FieldType::Json)
    }
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One declared, queryable field of a read model: a top-level key of the model's JSON
/// form.
///
/// Fields are not nullable and not indexed unless declared so. Keys of the model that
/// are not declared are stored (the whole model is kept) but cannot be queried.
///
/// ```
/// use mink_es::readmodel::{Field, FieldType};
/// const F: Field = Field::text("note").nullable().indexed();
/// assert_eq!(F.name(), "note");
/// assert_eq!(F.field_type(), FieldType::Text);
/// assert!(F.is_nullable() && F.is_indexed());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Field {
    name: &'static str,
    ty: FieldType,
    nullable: bool,
    indexed: bool,
}

impl Field {
    /// A field of type `ty`.
    pub const fn new(name: &'static str, ty: FieldType) -> Self {
        Field {
            name,
            ty,
            nullable: false,
            indexed: false,
        }
    }

    /// A [`FieldType::Text`] field.
    pub const fn text(name: &'static str) -> Self {
        Field::new(name, FieldType::Text)
    }

    /// A [`FieldType::Integer`] field.
    pub const fn integer(name: &'static str) -> Self {
        Field::new(name, FieldType::Integer)
    }

    /// A [`FieldType::Float`] field.
    pub const fn float(name: &'static str) -> Self {
        Field::new(name, FieldType::Float)
    }

    /// A [`FieldType::Bool`] field.
    pub const fn bool(name: &'static str) -> Self {
        Field::new(name, FieldType::Bool)
    }

    /// A [`FieldType::Timestamp`] field.
    pub const fn timestamp(name: &'static str) -> Self {
        Field::new(name, FieldType::Timestamp)
    }

    /// A [`FieldType::Json`] field.
    pub const fn json(name: &'static str) -> Self {
        Field::new(name, FieldType::Json)
    }

    /// The field may be null (a `None`, or a key missing from the model).
    pub const fn nullable(mut self) -> Self {
        self.nullable = true;
        self
    }

    /// SQL backends keep an index on (field, id), for filters and keyset pagination
    /// ordered by the field.
    pub const fn indexed(mut self) -> Self {
        self.indexed = true;
        self
    }

    /// The field's name (its JSON key and its column's name).
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// The field's type.
    pub const fn field_type(&self) -> FieldType {
        self.ty
    }

    /// Whether the field may be null.
    pub const fn is_nullable(&self) -> bool {
        self.nullable
    }

    /// Whether SQL backends index the field.
    pub const fn is_indexed(&self) -> bool {
        self.indexed
    }
}

/// Longest model name, in bytes (the table is `rm_<name>`; PostgreSQL identifiers hold
/// 63 bytes, and a table rebuild needs room for a suffix).
pub const MAX_MODEL_NAME_LEN: usize = 40;

/// Longest field name, in bytes (a PostgreSQL identifier).
pub const MAX_FIELD_NAME_LEN: usize = 63;

/// Column names the stores use for themselves; fields may not start with this.
pub const RESERVED_PREFIX: &str = "mink_";

/// Values per query, beyond which a query is refused (SQLite binds at most 32,766).
pub const MAX_QUERY_VALUES: usize = 30_000;

/// The largest integer a float field accepts as an exact float (2⁵³).
const MAX_EXACT_FLOAT_INT: i64 = 1 << 53;

/// A read model's validated declaration: what stores and queries work from.
///
/// Made by [`Schema::of`] from a [`ReadModel`] implementation (or [`Schema::new`]),
/// which checks every name:
///
/// * the model's name: 1–40 bytes of `[a-z0-9_]`, starting with a letter or `_`;
/// * field names: 1–63 bytes of `[A-Za-z0-9_]`, starting with a letter or `_`, unique
///   ignoring ASCII case (SQLite's identifiers ignore case), not starting with
///   `mink_` (any case);
/// * the id field: declared, [`FieldType::Text`] or [`FieldType::Integer`], not
///   nullable.
///
/// ```
/// use mink_es::readmodel::{Field, Schema};
/// let s = Schema::new("orders", "id", &[Field::text("id"), Field::float("total")]).unwrap();
/// assert_eq!(s.table(), "rm_orders");
/// assert!(Schema::new("orders", "id", &[Field::float("total")]).is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schema {
    model: &'static str,
    table: String,
    id: usize,
    fields: Vec<Field>,
    descriptor: String,
}

impl Schema {
    /// The schema of `M`.
    pub fn of<M: ReadModel>() -> Result<Self, ReadModelError> {
        Schema::new(M::NAME, M::ID, M::FIELDS)
    }

    /// Validates a declaration.
    pub fn new(model: &'static str, id: &str, fields: &[Field]) -> Result<Self, ReadModelError> {
        let bad = |reason: String| ReadModelError::InvalidModel {
            model: clip(model),
            reason,
        };
        if model.is_empty() || model.len() > MAX_MODEL_NAME_LEN {
            return Err(bad(format!(
                "the name must be 1 to {MAX_MODEL_NAME_LEN} bytes long"
            )));
        }
        let mut chars = model.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
        if !first_ok || !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
            return Err(bad(
                "the name may only hold lowercase ASCII letters, digits and '_', and must not start with a digit"
                    .to_owned(),
            ));
        }
        if fields.is_empty() {
            return Err(bad("it declares no field".to_owned()));
        }
        for (i, f) in fields.iter().enumerate() {
            let name = f.name;
            let mut chars = name.chars();
            let first_ok = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
            if name.len() > MAX_FIELD_NAME_LEN
                || !first_ok
                || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                return Err(bad(format!(
                    "field name {:?} must be 1 to {MAX_FIELD_NAME_LEN} bytes of ASCII letters, digits and '_', not starting with a digit",
                    clip(name)
                )));
            }
            if name
                .get(..RESERVED_PREFIX.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(RESERVED_PREFIX))
            {
                return Err(bad(format!(
                    "field name {name:?} starts with {RESERVED_PREFIX:?}, which is reserved for the store's columns"
                )));
            }
            if fields[..i]
                .iter()
                .any(|g| g.name.eq_ignore_ascii_case(name))
            {
                return Err(bad(format!(
                    "field {name:?} is declared twice (names are compared ignoring ASCII case)"
                )));
            }
        }
        let Some(id_index) = fields.iter().position(|f| f.name == id) else {
            return Err(bad(format!("the id field {:?} is not declared", clip(id))));
        };
        let id_field = fields[id_index];
        if !matches!(id_field.ty, FieldType::Text | FieldType::Integer) {
            return Err(bad(format!(
                "the id field {id:?} must be text or integer, not {}",
                id_field.ty
            )));
        }
        if id_field.nullable {
            return Err(bad(format!("the id field {id:?} must not be nullable")));
        }
        let mut descriptor = format!("v1;id={id}");
        for f in fields {
            descriptor.push(';');
            descriptor.push_str(f.name);
            descriptor.push(':');
            descriptor.push_str(f.ty.name());
            if f.nullable {
                descriptor.push_str(":null");
            }
            if f.indexed {
                descriptor.push_str(":index");
            }
        }
        Ok(Schema {
            model,
            table: format!("rm_{model}"),
            id: id_index,
            fields: fields.to_vec(),
            descriptor,
        })
    }

    /// The model's name.
    pub fn model(&self) -> &'static str {
        self.model
    }

    /// The name of its table or collection: `rm_<model name>`.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The declared fields, in declaration order (the order of [`Row::values`]).
    pub fn fields(&self) -> &[Field] {
        &self.fields
    }

    /// The position of the id field in [`Schema::fields`].
    pub fn id_index(&self) -> usize {
        self.id
    }

    /// The id field.
    pub fn id_field(&self) -> &Field {
        &self.fields[self.id]
    }

    /// The position of the field named `name` (exact match).
    pub fn field_index(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name == name)
    }

    /// The position of the field named `name`, or [`ReadModelError::UnknownField`].
    pub fn resolve(&self, name: &str) -> Result<usize, ReadModelError> {
        self.field_index(name)
            .ok_or_else(|| ReadModelError::UnknownField {
                model: self.model.to_owned(),
                field: clip(name),
            })
    }

    /// A canonical text form of the declaration. Two schemas with the same descriptor
    /// store rows the same way; stores record it to notice a changed declaration.
    pub fn descriptor(&self) -> &str {
        &self.descriptor
    }

    /// The name of the index SQL backends keep on `field` (and the id):
    /// `rm_<model>__<field>`, or, when that is longer than 63 bytes, the field's name
    /// replaced by a hash of it.
    pub fn index_name(&self, field: &Field) -> String {
        let plain = format!("{}__{}", self.table, field.name);
        if plain.len() <= 63 {
            return plain;
        }
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in field.name.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("{}__h{h:016x}", self.table)
    }

    /// Serializes `model` and extracts its declared fields.
    ///
    /// # Errors
    /// [`ReadModelError::Encode`] when serialization fails;
    /// [`ReadModelError::InvalidModel`] when the model is not a JSON object;
    /// [`ReadModelError::TypeMismatch`] or [`ReadModelError::InvalidValue`] when a
    /// declared field does not hold a value of its type.
    pub fn row<M: Serialize + ?Sized>(&self, model: &M) -> Result<Row, ReadModelError> {
        let json = serde_json::to_value(model).map_err(|source| ReadModelError::Encode {
            model: self.model.to_owned(),
            source,
        })?;
        let doc = serde_json::to_string(&json).map_err(|source| ReadModelError::Encode {
            model: self.model.to_owned(),
            source,
        })?;
        self.row_from_json(&json, doc)
    }

    /// Extracts the declared fields of a stored document (a model's JSON text), as
    /// [`Schema::row`] does; used to re-read stored rows under a changed declaration.
    pub fn row_from_doc(&self, doc: &str) -> Result<Row, ReadModelError> {
        let json: serde_json::Value =
            serde_json::from_str(doc).map_err(|source| ReadModelError::Decode {
                model: self.model.to_owned(),
                source,
            })?;
        self.row_from_json(&json, doc.to_owned())
    }

    fn row_from_json(&self, json: &serde_json::Value, doc: String) -> Result<Row, ReadModelError> {
        let Some(object) = json.as_object() else {
            return Err(ReadModelError::InvalidModel {
                model: self.model.to_owned(),
                reason: format!(
                    "a model must serialize to a JSON object, not {}",
                    json_kind(json)
                ),
            });
        };
        let values = self
            .fields
            .iter()
            .map(|f| self.extract(f, object.get(f.name)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Row {
            id: values[self.id].clone(),
            values,
            doc,
        })
    }

    /// The value of `field` from its JSON form (`None`: the key is missing).
    fn extract(
        &self,
        field: &Field,
        json: Option<&serde_json::Value>,
    ) -> Result<Value, ReadModelError> {
        use serde_json::Value as J;
        let mismatch = |found: &'static str| ReadModelError::TypeMismatch {
            model: self.model.to_owned(),
            field: field.name.to_owned(),
            expected: field.ty,
            found,
        };
        let value = match (field.ty, json) {
            (_, None | Some(J::Null)) => {
                if field.nullable {
                    return Ok(Value::Null);
                }
                return Err(self.invalid(
                    field,
                    "it is null or missing, and the field is not nullable (a NaN or infinite float serializes as null)",
                ));
            }
            (FieldType::Text, Some(J::String(s))) => Value::Text(s.clone()),
            (FieldType::Integer, Some(J::Number(n))) => match n.as_i64() {
                Some(i) => Value::Integer(i),
                None if n.is_u64() => {
                    return Err(self.invalid(field, "the integer does not fit i64"));
                }
                None => return Err(mismatch("float")),
            },
            (FieldType::Float, Some(J::Number(n))) => match n.as_f64() {
                Some(x) => Value::Float(x),
                None => return Err(self.invalid(field, "the number does not fit f64")),
            },
            (FieldType::Bool, Some(J::Bool(b))) => Value::Bool(*b),
            (FieldType::Timestamp, Some(J::String(s))) => match DateTime::parse_from_rfc3339(s) {
                Ok(t) => Value::Timestamp(t.with_timezone(&Utc)),
                Err(e) => {
                    return Err(self.invalid(
                        field,
                        &format!("{:?} is not an RFC 3339 timestamp: {e}", clip(s)),
                    ));
                }
            },
            (FieldType::Json, Some(j)) => Value::Json(j.clone()),
            (_, Some(j)) => return Err(mismatch(json_kind(j))),
        };
        self.check_value(field, value)
    }

    /// Checks a value of the field's own type and normalizes it (timestamps to the
    /// microsecond).
    fn check_value(&self, field: &Field, value: Value) -> Result<Value, ReadModelError> {
        match value {
            Value::Text(s) if s.contains('\0') => {
                Err(self.invalid(field, "text may not contain a NUL character"))
            }
            Value::Float(x) if !x.is_finite() => {
                Err(self.invalid(field, "a float must be finite (not NaN or infinite)"))
            }
            Value::Timestamp(t) => {
                let micros = t.timestamp_micros();
                match DateTime::from_timestamp_micros(micros) {
                    Some(t) if (MIN_MICROS..=MAX_MICROS).contains(&micros) => {
                        Ok(Value::Timestamp(t))
                    }
                    _ => {
                        Err(self
                            .invalid(field, "a timestamp must lie between the years 1 and 9999"))
                    }
                }
            }
            v => Ok(v),
        }
    }

    fn invalid(&self, field: &Field, reason: &str) -> ReadModelError {
        ReadModelError::InvalidValue {
            model: self.model.to_owned(),
            field: field.name.to_owned(),
            reason: reason.to_owned(),
        }
    }

    /// Checks a value a query compares field `index` with, and brings it to the
    /// field's type (an exactly representable integer for a float field).
    ///
    /// # Errors
    /// [`ReadModelError::InvalidQuery`] for a null (use `is_null`) or a JSON field;
    /// [`ReadModelError::TypeMismatch`] for a value of another type;
    /// [`ReadModelError::InvalidValue`] for a value no row can hold.
    pub fn query_value(&self, index: usize, value: &Value) -> Result<Value, ReadModelError> {
        let field = &self.fields[index];
        let mismatch = || ReadModelError::TypeMismatch {
            model: self.model.to_owned(),
            field: field.name.to_owned(),
            expected: field.ty,
            found: value.kind(),
        };
        if !field.ty.is_comparable() {
            return Err(ReadModelError::InvalidQuery {
                model: self.model.to_owned(),
                reason: format!(
                    "field {:?} holds JSON; only is_null and is_not_null apply to it",
                    field.name
                ),
            });
        }
        let v = match (field.ty, value) {
            (_, Value::Null) => {
                return Err(ReadModelError::InvalidQuery {
                    model: self.model.to_owned(),
                    reason: format!(
                        "field {:?} is compared with null, which matches no row; use is_null or is_not_null",
                        field.name
                    ),
                });
            }
            (FieldType::Text, Value::Text(_))
            | (FieldType::Integer, Value::Integer(_))
            | (FieldType::Float, Value::Float(_))
            | (FieldType::Bool, Value::Bool(_))
            | (FieldType::Timestamp, Value::Timestamp(_)) => value.clone(),
            (FieldType::Float, Value::Integer(n)) => {
                if n.unsigned_abs() > MAX_EXACT_FLOAT_INT.unsigned_abs() {
                    return Err(self.invalid(
                        field,
                        &format!("the integer {n} has no exact float value; pass a float"),
                    ));
                }
                // Exact: |n| ≤ 2^53.
                #[allow(clippy::cast_precision_loss)]
                Value::Float(*n as f64)
            }
            _ => return Err(mismatch()),
        };
        self.check_value(field, v)
    }

    /// Checks an id: a non-null value of the id field's type.
    ///
    /// # Errors
    /// [`ReadModelError::TypeMismatch`] or [`ReadModelError::InvalidValue`].
    pub fn id_value(&self, value: Value) -> Result<Value, ReadModelError> {
        let field = self.id_field();
        match (field.ty, &value) {
            (FieldType::Text, Value::Text(_)) | (FieldType::Integer, Value::Integer(_)) => {
                self.check_value(field, value)
            }
            _ => Err(ReadModelError::TypeMismatch {
                model: self.model.to_owned(),
                field: field.name.to_owned(),
                expected: field.ty,
                found: value.kind(),
            }),
        }
    }
}

/// 0001-01-01T00:00:00Z in unix microseconds.
const MIN_MICROS: i64 = -62_135_596_800_000_000;
/// 9999-12-31T23:59:59.999999Z in unix microseconds.
const MAX_MICROS: i64 = 253_402_300_799_999_999;

fn json_kind(j: &serde_json::Value) -> &'static str {
    match j {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "bool",
        serde_json::Value::Number(n) if n.is_f64() => "float",
        serde_json::Value::Number(_) => "integer",
        serde_json::Value::String(_) => "text",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

/// A model ready to be stored: its JSON document and the values of its declared
/// fields, checked against its [`Schema`]. Only [`Schema::row`] and
/// [`Schema::row_from_doc`] make one.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    id: Value,
    values: Vec<Value>,
    doc: String,
}

impl Row {
    /// The id (also at [`Schema::id_index`] in [`Row::values`]).
    pub fn id(&self) -> &Value {
        &self.id
    }

    /// The declared fields' values, in the schema's field order.
    pub fn values(&self) -> &[Value] {
        &self.values
    }

    /// The whole model as JSON text: what stores keep and give back.
    pub fn doc(&self) -> &str {
        &self.doc
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn schema() -> Schema {
        Schema::new(
            "things",
            "id",
            &[
                Field::text("id"),
                Field::integer("n"),
                Field::float("x").nullable(),
                Field::timestamp("at").nullable(),
                Field::json("extra").nullable(),
            ],
        )
        .unwrap()
    }

    #[test]
    fn declarations_are_checked() {
        let ok = |name, id, fields: &[Field]| Schema::new(name, id, fields).is_ok();
        assert!(ok("a_1", "id", &[Field::integer("id")]));
        assert!(!ok("", "id", &[Field::text("id")]));
        assert!(!ok("Orders", "id", &[Field::text("id")]));
        assert!(!ok("1st", "id", &[Field::text("id")]));
        assert!(!ok(
            "abcdefghijabcdefghijabcdefghijabcdefghijx",
            "id",
            &[Field::text("id")]
        ));
        assert!(!ok("t", "id", &[]));
        assert!(!ok("t", "id", &[Field::text("id"), Field::text("ID")]));
        assert!(!ok("t", "id", &[Field::text("id"), Field::text("Mink_x")]));
        assert!(!ok("t", "id", &[Field::text("id"), Field::text("a-b")]));
        assert!(!ok("t", "id", &[Field::text("id"), Field::text("")]));
        assert!(!ok("t", "id", &[Field::float("id")]));
        assert!(!ok("t", "id", &[Field::text("id").nullable()]));
        assert!(!ok("t", "key", &[Field::text("id")]));
    }

    #[test]
    fn rows_are_extracted_and_checked() {
        let s = schema();
        let row = s
            .row(&serde_json::json!({
                "id": "a", "n": -3, "x": 2, "at": "2024-05-06T07:08:09.123456789+02:00",
                "other": [1, 2]
            }))
            .unwrap();
        assert_eq!(row.id(), &Value::from("a"));
        assert_eq!(row.values()[1], Value::Integer(-3));
        assert_eq!(row.values()[2], Value::Float(2.0));
        let Value::Timestamp(t) = &row.values()[3] else {
            panic!()
        };
        assert_eq!(t.to_rfc3339(), "2024-05-06T05:08:09.123456+00:00");
        assert_eq!(row.values()[4], Value::Null);
        assert!(row.doc().contains("\"other\":[1,2]"));

        let err = |v: serde_json::Value| s.row(&v).unwrap_err();
        assert!(matches!(
            err(serde_json::json!({"id": "a", "n": 1.5})),
            ReadModelError::TypeMismatch { found: "float", .. }
        ));
        assert!(matches!(
            err(serde_json::json!({"id": "a", "n": u64::MAX})),
            ReadModelError::InvalidValue { .. }
        ));
        assert!(matches!(
            err(serde_json::json!({"id": "a"})),
            ReadModelError::InvalidValue { .. }
        ));
        assert!(matches!(
            err(serde_json::json!({"id": "a\0", "n": 1})),
            ReadModelError::InvalidValue { .. }
        ));
        assert!(matches!(
            err(serde_json::json!({"id": "a", "n": 1, "at": "yesterday"})),
            ReadModelError::InvalidValue { .. }
        ));
        assert!(matches!(
            err(serde_json::json!({"id": "a", "n": 1, "at": "+10000-01-01T00:00:00Z"})),
            ReadModelError::InvalidValue { .. }
        ));
        assert!(matches!(
            err(serde_json::json!([1])),
            ReadModelError::InvalidModel { .. }
        ));
        // NaN serializes as null.
        assert!(
            s.row(&serde_json::json!({"id": "a", "n": 1, "x": f64::NAN}))
                .is_ok()
        );
    }

    #[test]
    fn query_values_are_checked() {
        let s = schema();
        assert_eq!(
            s.query_value(2, &Value::Integer(3)).unwrap(),
            Value::Float(3.0)
        );
        assert!(s.query_value(2, &Value::Integer((1 << 53) + 1)).is_err());
        assert!(s.query_value(1, &Value::Float(1.0)).is_err());
        assert!(s.query_value(2, &Value::Float(f64::NAN)).is_err());
        assert!(s.query_value(1, &Value::Null).is_err());
        assert!(
            s.query_value(4, &Value::Json(serde_json::json!(1)))
                .is_err()
        );
        assert!(s.id_value(Value::Integer(1)).is_err());
        assert!(s.id_value(Value::from("x")).is_ok());
    }

    #[test]
    fn index_names_fit_postgres() {
        let s = Schema::new(
            "abcdefghijabcdefghijabcdefghijabcdefghij",
            "id",
            &[Field::text("id")],
        )
        .unwrap();
        let long = Field::text("a_very_long_field_name_that_goes_on");
        let name = s.index_name(&long);
        assert!(name.len() <= 63, "{name}");
        assert_eq!(schema().index_name(&Field::text("n")), "rm_things__n");
    }
}
