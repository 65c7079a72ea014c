//! The query builder ([`Query`], [`Filter`]), pagination [`Cursor`]s, and the validated
//! [`Plan`] that stores run.

use std::cmp::Ordering;
use std::fmt;
use std::marker::PhantomData;

use chrono::DateTime;

use super::like::{LikePattern, escape_like};
use super::{FieldType, ReadModel, ReadModelError, Schema, Value};
use crate::error::clip;

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CompareOp {
    /// `=`
    Eq,
    /// `<>` (a null field matches neither `eq` nor `ne`)
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl CompareOp {
    /// The SQL operator.
    pub const fn sql(self) -> &'static str {
        match self {
            CompareOp::Eq => "=",
            CompareOp::Ne => "<>",
            CompareOp::Lt => "<",
            CompareOp::Le => "<=",
            CompareOp::Gt => ">",
            CompareOp::Ge => ">=",
        }
    }

    /// Whether a field comparing as `ord` to the operand satisfies the operator.
    pub fn holds(self, ord: Ordering) -> bool {
        match self {
            CompareOp::Eq => ord == Ordering::Equal,
            CompareOp::Ne => ord != Ordering::Equal,
            CompareOp::Lt => ord == Ordering::Less,
            CompareOp::Le => ord != Ordering::Greater,
            CompareOp::Gt => ord == Ordering::Greater,
            CompareOp::Ge => ord != Ordering::Less,
        }
    }
}

/// A sort direction. Nulls sort before every value: first ascending, last descending.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SortOrder {
    /// Smallest first (nulls first).
    #[default]
    Asc,
    /// Largest first (nulls last).
    Desc,
}

impl SortOrder {
    /// The other direction.
    pub const fn reverse(self) -> Self {
        match self {
            SortOrder::Asc => SortOrder::Desc,
            SortOrder::Desc => SortOrder::Asc,
        }
    }

    fn tag(self) -> &'static str {
        match self {
            SortOrder::Asc => "asc",
            SortOrder::Desc => "desc",
        }
    }
}

/// A condition on the fields of a read model, checked against the model when the
/// query runs (or by [`Query::validate`]).
///
/// Null fields match no comparison, `in` or `like` (SQL's rule): only
/// [`Filter::is_null`] matches them.
///
/// ```
/// use mink_es::readmodel::Filter;
/// let f = Filter::eq("status", "open").or(Filter::all_of([
///     Filter::eq("status", "held"),
///     Filter::gt("total", 100),
/// ]));
/// # let _ = f;
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Filter {
    /// `field <op> value`.
    Compare {
        /// The field.
        field: String,
        /// The operator.
        op: CompareOp,
        /// The operand (of the field's type, never null).
        value: Value,
    },
    /// `field IN (values…)`; an empty list matches no row.
    In {
        /// The field.
        field: String,
        /// The values.
        values: Vec<Value>,
    },
    /// `field LIKE pattern` (text fields; see [`LikePattern`] for the syntax).
    Like {
        /// The field.
        field: String,
        /// The pattern.
        pattern: String,
    },
    /// `field IS NULL`.
    IsNull {
        /// The field.
        field: String,
    },
    /// `field IS NOT NULL`.
    IsNotNull {
        /// The field.
        field: String,
    },
    /// Every filter holds (an empty list holds for every row).
    And(Vec<Filter>),
    /// At least one filter holds (an empty list holds for no row).
    Or(Vec<Filter>),
}

impl Filter {
    fn cmp(field: impl Into<String>, op: CompareOp, value: impl Into<Value>) -> Self {
        Filter::Compare {
            field: field.into(),
            op,
            value: value.into(),
        }
    }

    /// `field = value`.
    pub fn eq(field: impl Into<String>, value: impl Into<Value>) -> Self {
        Filter::cmp(field, CompareOp::Eq, value)
    }

    /// `field <> value` (null fields do not match).
    pub fn ne(field: impl Into<String>, value: impl Into<Value>) -> Self {
        Filter::cmp(field, CompareOp::Ne, value)
    }

    /// `field < value`.
    pub fn lt(field: impl Into<String>, value: impl Into<Value>) -> Self {
        Filter::cmp(field, CompareOp::Lt, value)
    }

    /// `field <= value`.
    pub fn le(field: impl Into<String>, value: impl Into<Value>) -> Self {
        Filter::cmp(field, CompareOp::Le, value)
    }

    /// `field > value`.
    pub fn gt(field: impl Into<String>, value: impl Into<Value>) -> Self {
        Filter::cmp(field, CompareOp::Gt, value)
    }

    /// `field >= value`.
    pub fn ge(field: impl Into<String>, value: impl Into<Value>) -> Self {
        Filter::cmp(field, CompareOp::Ge, value)
    }

    /// `field IN (values…)`; an empty list matches no row.
    pub fn in_list<V: Into<Value>>(
        field: impl Into<String>,
        values: impl IntoIterator<Item = V>,
    ) -> Self {
        Filter::In {
            field: field.into(),
            values: values.into_iter().map(Into::into).collect(),
        }
    }

    /// `field LIKE pattern`: `%` any text, `_` one character, `\` escapes `%`, `_`
    /// and `\` (see [`LikePattern`]). Case-sensitive on every backend.
    pub fn like(field: impl Into<String>, pattern: impl Into<String>) -> Self {
        Filter::Like {
            field: field.into(),
            pattern: pattern.into(),
        }
    }

    /// Text starting with `prefix` (taken literally).
    pub fn starts_with(field: impl Into<String>, prefix: &str) -> Self {
        Filter::like(field, format!("{}%", escape_like(prefix)))
    }

    /// Text ending with `suffix` (taken literally).
    pub fn ends_with(field: impl Into<String>, suffix: &str) -> Self {
        Filter::like(field, format!("%{}", escape_like(suffix)))
    }

    /// Text containing `part` (taken literally).
    pub fn contains(field: impl Into<String>, part: &str) -> Self {
        Filter::like(field, format!("%{}%", escape_like(part)))
    }

    /// `field IS NULL`.
    pub fn is_null(field: impl Into<String>) -> Self {
        Filter::IsNull {
            field: field.into(),
        }
    }

    /// `field IS NOT NULL`.
    pub fn is_not_null(field: impl Into<String>) -> Self {
        Filter::IsNotNull {
            field: field.into(),
        }
    }

    /// Every one of `filters` holds.
    pub fn all_of(filters: impl IntoIterator<Item = Filter>) -> Self {
        Filter::And(filters.into_iter().collect())
    }

    /// At least one of `filters` holds.
    pub fn any_of(filters: impl IntoIterator<Item = Filter>) -> Self {
        Filter::Or(filters.into_iter().collect())
    }

    /// `self AND other`.
    pub fn and(self, other: Filter) -> Self {
        match self {
            Filter::And(mut v) => {
                v.push(other);
                Filter::And(v)
            }
            f => Filter::And(vec![f, other]),
        }
    }

    /// `self OR other`.
    pub fn or(self, other: Filter) -> Self {
        match self {
            Filter::Or(mut v) => {
                v.push(other);
                Filter::Or(v)
            }
            f => Filter::Or(vec![f, other]),
        }
    }

    /// Whether the filter names at least one field (an empty `And` does not).
    fn constrains(&self) -> bool {
        match self {
            Filter::And(v) | Filter::Or(v) => v.iter().any(Filter::constrains),
            _ => true,
        }
    }
}

/// An opaque position in the results of a query: where a page ended or began.
///
/// A cursor records the query's ordering and the sort values and id of one row.
/// [`Query::after`] continues after it, [`Query::before`] before it. It stays valid
/// while rows change (keyset pagination): rows are never skipped or repeated because
/// others were inserted or deleted. It is only valid for the model and the ordering it
/// was made for ([`ReadModelError::InvalidCursor`] otherwise). Its text form is stable
/// and safe in URLs (hex digits).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Cursor(String);

impl Cursor {
    /// A cursor from its text form ([`Cursor::as_str`]); checked when used.
    pub fn new(text: impl Into<String>) -> Self {
        Cursor(text.into())
    }

    /// The text form.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn encode(schema: &Schema, order: &[SortKey], values: &[Value]) -> Cursor {
        let keys: Vec<serde_json::Value> = values
            .iter()
            .map(|v| match v {
                Value::Text(s) => serde_json::Value::from(s.as_str()),
                Value::Integer(n) => serde_json::Value::from(*n),
                Value::Float(x) => serde_json::Value::from(*x),
                Value::Bool(b) => serde_json::Value::from(*b),
                Value::Timestamp(t) => serde_json::Value::from(t.timestamp_micros()),
                Value::Null | Value::Json(_) => serde_json::Value::Null,
            })
            .collect();
        let json = serde_json::json!({
            "m": schema.model(),
            "o": order_spec(schema, order),
            "k": keys,
        });
        let text = json.to_string();
        let mut hex = String::with_capacity(text.len() * 2);
        for b in text.bytes() {
            hex.push(char::from(HEX[usize::from(b >> 4)]));
            hex.push(char::from(HEX[usize::from(b & 15)]));
        }
        Cursor(hex)
    }

    /// The key values of the cursor, checked against the schema and the query's order.
    fn decode(&self, schema: &Schema, order: &[SortKey]) -> Result<Vec<Value>, ReadModelError> {
        let bad = |reason: &str| ReadModelError::InvalidCursor {
            model: schema.model().to_owned(),
            reason: reason.to_owned(),
        };
        let hex = self.0.as_bytes();
        if !hex.len().is_multiple_of(2) {
            return Err(bad("it is not a cursor made by mink"));
        }
        let nibble = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let bytes = hex
            .chunks(2)
            .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(|| bad("it is not a cursor made by mink"))?;
        let json: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|_| bad("it is not a cursor made by mink"))?;
        if json.get("m").and_then(|m| m.as_str()) != Some(schema.model()) {
            return Err(bad("it was made for another read model"));
        }
        if json.get("o").and_then(|o| o.as_str()) != Some(order_spec(schema, order).as_str()) {
            return Err(bad(
                "it was made for a query with another ordering; keep the query's order_by when paging",
            ));
        }
        let Some(keys) = json.get("k").and_then(|k| k.as_array()) else {
            return Err(bad("it is not a cursor made by mink"));
        };
        if keys.len() != order.len() {
            return Err(bad("it holds the wrong number of sort values"));
        }
        let mut values = Vec::with_capacity(keys.len());
        for (key, k) in order.iter().zip(keys) {
            let field = &schema.fields()[key.field];
            let v = match (field.field_type(), k) {
                (_, serde_json::Value::Null) if field.is_nullable() => Value::Null,
                (FieldType::Text, serde_json::Value::String(s)) => Value::Text(s.clone()),
                (FieldType::Integer, serde_json::Value::Number(n)) if n.is_i64() => {
                    Value::Integer(n.as_i64().unwrap_or_default())
                }
                (FieldType::Float, serde_json::Value::Number(n)) => {
                    Value::Float(n.as_f64().unwrap_or(f64::NAN))
                }
                (FieldType::Bool, serde_json::Value::Bool(b)) => Value::Bool(*b),
                (FieldType::Timestamp, serde_json::Value::Number(n)) => n
                    .as_i64()
                    .and_then(DateTime::from_timestamp_micros)
                    .map(Value::Timestamp)
                    .ok_or_else(|| bad("it holds an invalid timestamp"))?,
                _ => return Err(bad("it holds a value of the wrong type")),
            };
            if !v.is_null() {
                schema
                    .query_value(key.field, &v)
                    .map_err(|_| bad("it holds an invalid value"))?;
            }
            values.push(v);
        }
        Ok(values)
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `field:asc,field:desc,…`: the ordering a cursor belongs to.
fn order_spec(schema: &Schema, order: &[SortKey]) -> String {
    order
        .iter()
        .map(|k| format!("{}:{}", schema.fields()[k.field].name(), k.order.tag()))
        .collect::<Vec<_>>()
        .join(",")
}

impl fmt::Debug for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Cursor").field(&self.0).finish()
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Cursor {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Cursor::new(s))
    }
}

/// Which side of a cursor a query reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    After,
    Before,
}

/// A query on the rows of read model `M`: filters (ANDed), an ordering, a window
/// (limit/offset) and a keyset cursor.
///
/// Field names and value types are checked against `M`'s declaration before any I/O:
/// an unknown field is [`ReadModelError::UnknownField`] and a value of the wrong type
/// [`ReadModelError::TypeMismatch`] — a query is never widened by dropping what it
/// does not understand.
///
/// The order is always total: the rows are sorted by the `order_by` fields, then by the
/// id (ascending), so equal sort values never make pagination skip or repeat rows. With
/// no `order_by`, rows come in id order. Nulls sort before every value.
///
/// ```
/// use mink_es::readmodel::{Field, Query, ReadModel, SortOrder};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Order;
/// # impl ReadModel for Order { const NAME: &'static str = "orders";
/// #   const FIELDS: &'static [Field] = &[Field::text("id"), Field::text("status"), Field::float("total"), Field::text("customer")]; }
/// let q = Query::<Order>::new()
///     .eq("status", "open")
///     .ge("total", 100)
///     .starts_with("customer", "ACME_")
///     .order_by("total", SortOrder::Desc)
///     .limit(20);
/// assert!(q.validate().is_ok());
/// assert!(Query::<Order>::new().eq("stauts", "open").validate().is_err());
/// assert!(Query::<Order>::new().eq("total", "high").validate().is_err());
/// ```
pub struct Query<M> {
    filters: Vec<Filter>,
    everything: bool,
    order: Vec<(String, SortOrder)>,
    limit: Option<u64>,
    offset: u64,
    cursor: Option<(Side, Cursor)>,
    _model: PhantomData<fn() -> M>,
}

impl<M> Clone for Query<M> {
    fn clone(&self) -> Self {
        Query {
            filters: self.filters.clone(),
            everything: self.everything,
            order: self.order.clone(),
            limit: self.limit,
            offset: self.offset,
            cursor: self.cursor.clone(),
            _model: PhantomData,
        }
    }
}

impl<M> fmt::Debug for Query<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Query")
            .field("filters", &self.filters)
            .field("everything", &self.everything)
            .field("order", &self.order)
            .field("limit", &self.limit)
            .field("offset", &self.offset)
            .field("cursor", &self.cursor)
            .finish()
    }
}

impl<M> Default for Query<M> {
    fn default() -> Self {
        Query {
            filters: Vec::new(),
            everything: false,
            order: Vec::new(),
            limit: None,
            offset: 0,
            cursor: None,
            _model: PhantomData,
        }
    }
}

/// What a plan is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// Reading rows; `extra` asks for one row past the limit (to know whether more
    /// follow).
    Find { extra: bool },
    /// Counting or deleting: the filter only.
    Filter,
    /// Deleting: the filter only, which must not be empty unless `all()`.
    Delete,
}

impl<M: ReadModel> Query<M> {
    /// A query for every row (add filters to narrow it). Destructive operations refuse
    /// it unless it names a filter or was made by [`Query::all`].
    pub fn new() -> Self {
        Query::default()
    }

    /// A query for every row that says so explicitly: the only query without a filter
    /// that [`delete_where`](super::ReadModelRepository::delete_where) accepts.
    pub fn all() -> Self {
        Query {
            everything: true,
            ..Query::default()
        }
    }

    /// Adds a filter (ANDed with the others).
    pub fn filter(mut self, filter: Filter) -> Self {
        self.filters.push(filter);
        self
    }

    /// `field = value`.
    pub fn eq(self, field: impl Into<String>, value: impl Into<Value>) -> Self {
        self.filter(Filter::eq(field, value))
    }

    /// `field <> value` (null fields do not match).
    pub fn ne(self, field: impl Into<String>, value: impl Into<Value>) -> Self {
        self.filter(Filter::ne(field, value))
    }

    /// `field < value`.
    pub fn lt(self, field: impl Into<String>, value: impl Into<Value>) -> Self {
        self.filter(Filter::lt(field, value))
    }

    /// `field <= value`.
    pub fn le(self, field: impl Into<String>, value: impl Into<Value>) -> Self {
        self.filter(Filter::le(field, value))
    }

    /// `field > value`.
    pub fn gt(self, field: impl Into<String>, value: impl Into<Value>) -> Self {
        self.filter(Filter::gt(field, value))
    }

    /// `field >= value`.
    pub fn ge(self, field: impl Into<String>, value: impl Into<Value>) -> Self {
        self.filter(Filter::ge(field, value))
    }

    /// `field IN (values…)`; an empty list matches no row.
    pub fn in_list<V: Into<Value>>(
        self,
        field: impl Into<String>,
        values: impl IntoIterator<Item = V>,
    ) -> Self {
        self.filter(Filter::in_list(field, values))
    }

    /// `field LIKE pattern` (see [`Filter::like`]).
    pub fn like(self, field: impl Into<String>, pattern: impl Into<String>) -> Self {
        self.filter(Filter::like(field, pattern))
    }

    /// Text starting with `prefix` (taken literally).
    pub fn starts_with(self, field: impl Into<String>, prefix: &str) -> Self {
        self.filter(Filter::starts_with(field, prefix))
    }

    /// Text ending with `suffix` (taken literally).
    pub fn ends_with(self, field: impl Into<String>, suffix: &str) -> Self {
        self.filter(Filter::ends_with(field, suffix))
    }

    /// Text containing `part` (taken literally).
    pub fn contains(self, field: impl Into<String>, part: &str) -> Self {
        self.filter(Filter::contains(field, part))
    }

    /// `field IS NULL`.
    pub fn is_null(self, field: impl Into<String>) -> Self {
        self.filter(Filter::is_null(field))
    }

    /// `field IS NOT NULL`.
    pub fn is_not_null(self, field: impl Into<String>) -> Self {
        self.filter(Filter::is_not_null(field))
    }

    /// Sorts by `field` (after the fields already given). The id always ends the
    /// ordering, so ties are broken the same way on every backend.
    pub fn order_by(mut self, field: impl Into<String>, order: SortOrder) -> Self {
        self.order.push((field.into(), order));
        self
    }

    /// Sorts by `field`, ascending.
    pub fn order_asc(self, field: impl Into<String>) -> Self {
        self.order_by(field, SortOrder::Asc)
    }

    /// Sorts by `field`, descending.
    pub fn order_desc(self, field: impl Into<String>) -> Self {
        self.order_by(field, SortOrder::Desc)
    }

    /// At most `n` rows.
    pub fn limit(mut self, n: u64) -> Self {
        self.limit = Some(n);
        self
    }

    /// Skips the first `n` rows (after the cursor, if any).
    pub fn offset(mut self, n: u64) -> Self {
        self.offset = n;
        self
    }

    /// Only rows after `cursor`, in the query's order (the next page).
    pub fn after(mut self, cursor: Cursor) -> Self {
        self.cursor = Some((Side::After, cursor));
        self
    }

    /// Only rows before `cursor`, in the query's order (the previous page): with a
    /// limit, the `limit` rows just before the cursor, still in the query's order.
    pub fn before(mut self, cursor: Cursor) -> Self {
        self.cursor = Some((Side::Before, cursor));
        self
    }

    /// Checks the query against `M`'s declaration, as running it would (no I/O).
    pub fn validate(&self) -> Result<(), ReadModelError> {
        let schema = Schema::of::<M>()?;
        self.plan(&schema, Purpose::Find { extra: false })
            .map(|_| ())
    }

    /// The cursor of `model`'s row in this query's ordering: pass it to
    /// [`Query::after`] or [`Query::before`].
    pub fn cursor_for(&self, model: &M) -> Result<Cursor, ReadModelError> {
        let schema = Schema::of::<M>()?;
        let order = self.sort_keys(&schema)?;
        let row = schema.row(model)?;
        Ok(cursor_of(&schema, &order, row.values()))
    }

    /// The complete ordering (user keys up to the id, then the id), before any
    /// reversal.
    fn sort_keys(&self, schema: &Schema) -> Result<Vec<SortKey>, ReadModelError> {
        let mut keys: Vec<SortKey> = Vec::with_capacity(self.order.len() + 1);
        let mut unique = false;
        for (name, order) in &self.order {
            let field = schema.resolve(name)?;
            if !schema.fields()[field].field_type().is_comparable() {
                return Err(ReadModelError::InvalidQuery {
                    model: schema.model().to_owned(),
                    reason: format!("field {name:?} holds JSON and cannot be ordered by"),
                });
            }
            // After a unique key, further keys change nothing; a repeated key neither.
            if unique || keys.iter().any(|k| k.field == field) {
                continue;
            }
            keys.push(SortKey {
                field,
                order: *order,
            });
            unique = field == schema.id_index();
        }
        if !unique {
            keys.push(SortKey {
                field: schema.id_index(),
                order: SortOrder::Asc,
            });
        }
        Ok(keys)
    }

    /// Validates the query against `schema` and makes the plan a store runs.
    pub(crate) fn plan(&self, schema: &Schema, purpose: Purpose) -> Result<Plan, ReadModelError> {
        let invalid = |reason: &str| ReadModelError::InvalidQuery {
            model: schema.model().to_owned(),
            reason: reason.to_owned(),
        };
        let mut budget = MAX_VALUES_BUDGET;
        let preds = self
            .filters
            .iter()
            .map(|f| lower(schema, f, &mut budget))
            .collect::<Result<Vec<_>, _>>()?;
        let filter = simplify(Pred::And(preds));
        let order = self.sort_keys(schema)?;
        if !matches!(purpose, Purpose::Find { .. }) {
            if purpose == Purpose::Delete {
                if self.limit.is_some() || self.offset != 0 || self.cursor.is_some() {
                    return Err(invalid(
                        "delete_where takes no limit, offset or cursor: it deletes every matching row",
                    ));
                }
                if !self.everything && !self.filters.iter().any(Filter::constrains) {
                    return Err(invalid(
                        "delete_where needs a filter; to delete every row, pass Query::all()",
                    ));
                }
            }
            return Ok(Plan {
                filter,
                order,
                keyset: None,
                limit: None,
                offset: 0,
                reversed: false,
            });
        }
        let (keyset, reversed) = match &self.cursor {
            None => (None, false),
            Some((side, cursor)) => {
                let values = cursor.decode(schema, &order)?;
                (Some(values), *side == Side::Before)
            }
        };
        let order = if reversed {
            order
                .into_iter()
                .map(|k| SortKey {
                    field: k.field,
                    order: k.order.reverse(),
                })
                .collect()
        } else {
            order
        };
        let extra = purpose == Purpose::Find { extra: true };
        Ok(Plan {
            filter,
            order,
            keyset,
            limit: self
                .limit
                .map(|l| if extra { l.saturating_add(1) } else { l }),
            offset: self.offset,
            reversed,
        })
    }

    /// The cursor side the query reads, if any.
    pub(crate) fn reads_before(&self) -> bool {
        matches!(self.cursor, Some((Side::Before, _)))
    }

    /// Whether the query starts after a cursor or an offset (rows precede its page).
    pub(crate) fn skips_rows(&self) -> bool {
        self.offset > 0 || matches!(self.cursor, Some((Side::After, _)))
    }

    /// The limit given.
    pub(crate) fn limit_value(&self) -> Option<u64> {
        self.limit
    }

    /// The complete ordering of the query, not reversed (for cursors).
    pub(crate) fn keys(&self, schema: &Schema) -> Result<Vec<SortKey>, ReadModelError> {
        self.sort_keys(schema)
    }
}

/// How many values one query may bind.
const MAX_VALUES_BUDGET: usize = super::schema::MAX_QUERY_VALUES;

/// The cursor of a row with `values` (all declared fields) under `order`.
pub(crate) fn cursor_of(schema: &Schema, order: &[SortKey], values: &[Value]) -> Cursor {
    let keys: Vec<Value> = order.iter().map(|k| values[k.field].clone()).collect();
    Cursor::encode(schema, order, &keys)
}

fn take_budget(schema: &Schema, budget: &mut usize, n: usize) -> Result<(), ReadModelError> {
    *budget = budget
        .checked_sub(n)
        .ok_or_else(|| ReadModelError::InvalidQuery {
            model: schema.model().to_owned(),
            reason: format!(
                "the query holds more than {MAX_VALUES_BUDGET} values; split it, or filter on a range"
            ),
        })?;
    Ok(())
}

/// Checks a filter against the schema and lowers it to a predicate.
fn lower(schema: &Schema, f: &Filter, budget: &mut usize) -> Result<Pred, ReadModelError> {
    Ok(match f {
        Filter::Compare { field, op, value } => {
            let field = schema.resolve(field)?;
            take_budget(schema, budget, 1)?;
            Pred::Compare {
                field,
                op: *op,
                value: schema.query_value(field, value)?,
            }
        }
        Filter::In { field, values } => {
            let field = schema.resolve(field)?;
            if !schema.fields()[field].field_type().is_comparable() {
                // Refuse even an empty list: the field cannot be compared.
                schema.query_value(field, &Value::Null)?;
            }
            take_budget(schema, budget, values.len())?;
            let values = values
                .iter()
                .map(|v| schema.query_value(field, v))
                .collect::<Result<Vec<_>, _>>()?;
            if values.is_empty() {
                Pred::Const(false)
            } else {
                Pred::In { field, values }
            }
        }
        Filter::Like { field, pattern } => {
            let index = schema.resolve(field)?;
            let ty = schema.fields()[index].field_type();
            if ty != FieldType::Text {
                return Err(ReadModelError::TypeMismatch {
                    model: schema.model().to_owned(),
                    field: clip(field),
                    expected: ty,
                    found: "text",
                });
            }
            take_budget(schema, budget, 1)?;
            let pattern =
                LikePattern::parse(pattern).map_err(|reason| ReadModelError::InvalidQuery {
                    model: schema.model().to_owned(),
                    reason: format!("field {field:?}: {reason}"),
                })?;
            Pred::Like {
                field: index,
                pattern,
            }
        }
        Filter::IsNull { field } => Pred::IsNull {
            field: schema.resolve(field)?,
        },
        Filter::IsNotNull { field } => Pred::IsNotNull {
            field: schema.resolve(field)?,
        },
        Filter::And(fs) => Pred::And(
            fs.iter()
                .map(|f| lower(schema, f, budget))
                .collect::<Result<_, _>>()?,
        ),
        Filter::Or(fs) => Pred::Or(
            fs.iter()
                .map(|f| lower(schema, f, budget))
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// Folds constants and single-element groups; `None` means "every row".
fn simplify(p: Pred) -> Option<Pred> {
    fn go(p: Pred) -> Pred {
        match p {
            Pred::And(v) => {
                let mut out = Vec::with_capacity(v.len());
                for p in v.into_iter().map(go) {
                    match p {
                        Pred::Const(true) => {}
                        Pred::Const(false) => return Pred::Const(false),
                        Pred::And(inner) => out.extend(inner),
                        p => out.push(p),
                    }
                }
                match out.len() {
                    0 => Pred::Const(true),
                    1 => out.pop().unwrap_or(Pred::Const(true)),
                    _ => Pred::And(out),
                }
            }
            Pred::Or(v) => {
                let mut out = Vec::with_capacity(v.len());
                for p in v.into_iter().map(go) {
                    match p {
                        Pred::Const(false) => {}
                        Pred::Const(true) => return Pred::Const(true),
                        Pred::Or(inner) => out.extend(inner),
                        p => out.push(p),
                    }
                }
                match out.len() {
                    0 => Pred::Const(false),
                    1 => out.pop().unwrap_or(Pred::Const(false)),
                    _ => Pred::Or(out),
                }
            }
            p => p,
        }
    }
    match go(p) {
        Pred::Const(true) => None,
        p => Some(p),
    }
}

/// A validated filter, over field positions of a [`Schema`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Pred {
    /// Every row (`true`) or none (`false`).
    Const(bool),
    /// `field <op> value`; `value` is of the field's type and not null.
    Compare {
        /// Position of the field.
        field: usize,
        /// The operator.
        op: CompareOp,
        /// The operand.
        value: Value,
    },
    /// `field IN (values…)`, at least one value, each of the field's type.
    In {
        /// Position of the field.
        field: usize,
        /// The values.
        values: Vec<Value>,
    },
    /// `field LIKE pattern` on a text field.
    Like {
        /// Position of the field.
        field: usize,
        /// The pattern.
        pattern: LikePattern,
    },
    /// `field IS NULL`.
    IsNull {
        /// Position of the field.
        field: usize,
    },
    /// `field IS NOT NULL`.
    IsNotNull {
        /// Position of the field.
        field: usize,
    },
    /// All hold.
    And(Vec<Pred>),
    /// At least one holds.
    Or(Vec<Pred>),
}

impl Pred {
    /// Whether a row with these field values (in schema order) satisfies the
    /// predicate. A null field satisfies no comparison, `in` or `like`.
    pub fn matches(&self, values: &[Value]) -> bool {
        match self {
            Pred::Const(b) => *b,
            Pred::Compare { field, op, value } => {
                let v = &values[*field];
                !v.is_null() && v.compare(value).is_some_and(|o| op.holds(o))
            }
            Pred::In { field, values: vs } => {
                let v = &values[*field];
                !v.is_null() && vs.iter().any(|x| v.compare(x) == Some(Ordering::Equal))
            }
            Pred::Like { field, pattern } => match &values[*field] {
                Value::Text(s) => pattern.matches(s),
                _ => false,
            },
            Pred::IsNull { field } => values[*field].is_null(),
            Pred::IsNotNull { field } => !values[*field].is_null(),
            Pred::And(ps) => ps.iter().all(|p| p.matches(values)),
            Pred::Or(ps) => ps.iter().any(|p| p.matches(values)),
        }
    }
}

/// One key of a plan's ordering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SortKey {
    /// Position of the field in the schema.
    pub field: usize,
    /// The direction (nulls are smallest: first ascending, last descending).
    pub order: SortOrder,
}

/// A validated query, as a store runs it: every name resolved, every value checked.
///
/// Only the repository makes plans, after validating a [`Query`] against its model.
/// A store returns the rows that satisfy [`Plan::filter`] and come strictly after
/// [`Plan::keyset`] in [`Plan::order`], sorted by [`Plan::order`], skipping
/// [`Plan::offset`] of them and returning at most [`Plan::limit`].
///
/// The ordering, on every backend: nulls before every value (`NULLS FIRST` ascending,
/// `NULLS LAST` descending); text by bytes; numbers numerically; `false` before
/// `true`; timestamps by time. It always ends with the id, so it is total.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    filter: Option<Pred>,
    order: Vec<SortKey>,
    keyset: Option<Vec<Value>>,
    limit: Option<u64>,
    offset: u64,
    reversed: bool,
}

impl Plan {
    /// The plan that selects every row of `schema`'s model, in id order: what clearing
    /// a read model (before a rebuild) deletes.
    pub fn everything(schema: &Schema) -> Plan {
        Plan {
            filter: None,
            order: vec![SortKey {
                field: schema.id_index(),
                order: SortOrder::Asc,
            }],
            keyset: None,
            limit: None,
            offset: 0,
            reversed: false,
        }
    }

    /// The filter; `None` matches every row.
    pub fn filter(&self) -> Option<&Pred> {
        self.filter.as_ref()
    }

    /// The ordering, ending with the id field (so it is total).
    pub fn order(&self) -> &[SortKey] {
        &self.order
    }

    /// Only rows strictly after these values of the [`Plan::order`] keys (one value per
    /// key, nulls included) are returned.
    pub fn keyset(&self) -> Option<&[Value]> {
        self.keyset.as_deref()
    }

    /// Most rows to return.
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// Rows to skip (after filtering and the keyset), in order.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Whether the rows were fetched in reverse of the query's order (a `before` page).
    pub(crate) fn reversed(&self) -> bool {
        self.reversed
    }

    /// Compares two rows (their field values in schema order) in the plan's order.
    pub fn compare_rows(&self, a: &[Value], b: &[Value]) -> Ordering {
        for k in &self.order {
            let o = a[k.field].compare(&b[k.field]).unwrap_or(Ordering::Equal);
            let o = match k.order {
                SortOrder::Asc => o,
                SortOrder::Desc => o.reverse(),
            };
            if o != Ordering::Equal {
                return o;
            }
        }
        Ordering::Equal
    }

    /// Whether a row (its field values in schema order) satisfies the filter and
    /// comes after the keyset.
    pub fn matches(&self, values: &[Value]) -> bool {
        self.filter.as_ref().is_none_or(|f| f.matches(values)) && self.after_keyset(values)
    }

    /// Whether a row comes strictly after the keyset (true without a keyset).
    pub fn after_keyset(&self, values: &[Value]) -> bool {
        let Some(keys) = &self.keyset else {
            return true;
        };
        for (k, c) in self.order.iter().zip(keys) {
            let o = values[k.field].compare(c).unwrap_or(Ordering::Equal);
            let o = match k.order {
                SortOrder::Asc => o,
                SortOrder::Desc => o.reverse(),
            };
            match o {
                Ordering::Greater => return true,
                Ordering::Less => return false,
                Ordering::Equal => {}
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::readmodel::Field;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct T {
        id: String,
        n: Option<i64>,
        j: Option<serde_json::Value>,
    }

    impl ReadModel for T {
        const NAME: &'static str = "t";
        const FIELDS: &'static [Field] = &[
            Field::text("id"),
            Field::integer("n").nullable(),
            Field::json("j").nullable(),
        ];
    }

    fn plan(q: Query<T>) -> Result<Plan, ReadModelError> {
        q.plan(&Schema::of::<T>().unwrap(), Purpose::Find { extra: false })
    }

    #[test]
    fn unknown_fields_are_refused_everywhere() {
        let unknown = |q: Query<T>| matches!(plan(q), Err(ReadModelError::UnknownField { field, .. }) if field == "nn");
        assert!(unknown(Query::new().eq("nn", 1)));
        assert!(unknown(Query::new().is_null("nn")));
        assert!(unknown(Query::new().order_asc("nn")));
        assert!(unknown(Query::new().filter(Filter::any_of([
            Filter::eq("n", 1),
            Filter::all_of([Filter::in_list("nn", [1])]),
        ]))));
        assert!(unknown(Query::new().in_list("nn", Vec::<i64>::new())));
    }

    #[test]
    fn values_are_checked() {
        assert!(matches!(
            plan(Query::new().eq("n", "1")),
            Err(ReadModelError::TypeMismatch { found: "text", .. })
        ));
        assert!(matches!(
            plan(Query::new().in_list("n", [Value::from(1), Value::from(1.5)])),
            Err(ReadModelError::TypeMismatch { .. })
        ));
        assert!(matches!(
            plan(Query::new().like("n", "1%")),
            Err(ReadModelError::TypeMismatch { .. })
        ));
        assert!(matches!(
            plan(Query::new().like("id", "1\\")),
            Err(ReadModelError::InvalidQuery { .. })
        ));
        assert!(matches!(
            plan(Query::new().eq("n", Value::Null)),
            Err(ReadModelError::InvalidQuery { .. })
        ));
        assert!(matches!(
            plan(Query::new().order_asc("j")),
            Err(ReadModelError::InvalidQuery { .. })
        ));
        assert!(matches!(
            plan(Query::new().in_list("n", 0..30_001)),
            Err(ReadModelError::InvalidQuery { .. })
        ));
        assert!(plan(Query::new().is_null("j")).is_ok());
    }

    #[test]
    fn orderings_end_with_the_id() {
        let p = plan(Query::new().order_desc("n").order_asc("n")).unwrap();
        assert_eq!(
            p.order(),
            &[
                SortKey {
                    field: 1,
                    order: SortOrder::Desc
                },
                SortKey {
                    field: 0,
                    order: SortOrder::Asc
                }
            ]
        );
        let p = plan(Query::new().order_desc("id").order_asc("n")).unwrap();
        assert_eq!(
            p.order(),
            &[SortKey {
                field: 0,
                order: SortOrder::Desc
            }]
        );
        assert_eq!(plan(Query::new()).unwrap().order().len(), 1);
    }

    #[test]
    fn deletes_need_a_filter() {
        let s = Schema::of::<T>().unwrap();
        let del = |q: Query<T>| q.plan(&s, Purpose::Delete);
        assert!(del(Query::new()).is_err());
        assert!(del(Query::new().filter(Filter::all_of([]))).is_err());
        assert!(del(Query::new().filter(Filter::any_of([]))).is_err());
        assert!(del(Query::new().eq("n", 1).limit(1)).is_err());
        assert!(del(Query::all()).unwrap().filter().is_none());
        assert_eq!(
            del(Query::new().in_list("n", Vec::<i64>::new()))
                .unwrap()
                .filter(),
            Some(&Pred::Const(false))
        );
    }

    #[test]
    fn cursors_round_trip_and_are_checked() {
        let s = Schema::of::<T>().unwrap();
        let q = Query::<T>::new().order_desc("n");
        let model = T {
            id: "a\"b".into(),
            n: None,
            j: None,
        };
        let c = q.cursor_for(&model).unwrap();
        assert!(c.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        let p = plan(q.clone().after(c.clone())).unwrap();
        assert_eq!(p.keyset(), Some(&[Value::Null, Value::from("a\"b")][..]));
        let p = plan(q.clone().before(c.clone())).unwrap();
        assert_eq!(p.order()[0].order, SortOrder::Asc);
        assert!(p.reversed());
        // Another ordering, garbage, another model.
        assert!(matches!(
            plan(Query::new().order_asc("n").after(c.clone())),
            Err(ReadModelError::InvalidCursor { .. })
        ));
        assert!(matches!(
            plan(Query::new().after(Cursor::new("zz"))),
            Err(ReadModelError::InvalidCursor { .. })
        ));
        let other = Schema::new(
            "u",
            "id",
            &[Field::text("id"), Field::integer("n").nullable()],
        )
        .unwrap();
        let foreign = cursor_of(
            &other,
            &q.keys(&other).unwrap(),
            &[Value::from("x"), Value::Null],
        );
        assert!(matches!(
            q.clone()
                .after(foreign)
                .plan(&s, Purpose::Find { extra: false }),
            Err(ReadModelError::InvalidCursor { .. })
        ));
    }

    #[test]
    fn keyset_comparison_puts_nulls_first() {
        let p = plan(
            Query::new().order_asc("n").after(
                Query::<T>::new()
                    .order_asc("n")
                    .cursor_for(&T {
                        id: "m".into(),
                        n: None,
                        j: None,
                    })
                    .unwrap(),
            ),
        )
        .unwrap();
        let row = |id: &str, n: Option<i64>| vec![Value::from(id), Value::from(n), Value::Null];
        assert!(!p.matches(&row("a", None)));
        assert!(!p.matches(&row("m", None)));
        assert!(p.matches(&row("z", None)));
        assert!(p.matches(&row("a", Some(i64::MIN))));
    }
}
