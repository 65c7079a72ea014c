//! Conformance tests for read-model stores: every [`ReadModelStore`] (memory, SQLite,
//! PostgreSQL, …) runs them through [`readmodel_tests!`](crate::readmodel_tests), so
//! that the same calls give the same results on every backend.
//!
//! The query tests compare the store's answers, row for row, with a reference computed
//! in plain Rust (independently of `mink_es`'s own filter and ordering code) over a
//! generated dataset: ties, nulls, missing keys, unicode and `LIKE`-special text,
//! `-0.0` and extreme floats, `i64` extremes, booleans, and timestamps with ties at the
//! microsecond.
//!
//! ```no_run
//! use mink_es::readmodel::MemoryReadModelStore;
//! use mink_testing::readmodel::ReadModelFactory;
//!
//! struct Memory;
//!
//! impl ReadModelFactory for Memory {
//!     type Store = MemoryReadModelStore;
//!
//!     async fn create(&self) -> MemoryReadModelStore {
//!         MemoryReadModelStore::new()
//!     }
//! }
//!
//! // In a `tests/` file: one `#[tokio::test]` per conformance test.
//! mink_testing::readmodel_tests!(async { Some(Memory) });
//! # fn main() {}
//! ```

use std::cmp::Ordering;
use std::fmt;
use std::future::Future;

use chrono::{DateTime, Utc};
use mink_es::readmodel::{
    Cursor, Field, Filter, Plan, Query, ReadModel, ReadModelError, ReadModelRepository,
    ReadModelStore, Schema, SortOrder, Value, Versioned,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Makes fresh, empty read-model stores: one per test.
///
/// ```ignore
/// struct Pg { /* connection settings */ }
///
/// impl mink_testing::readmodel::ReadModelFactory for Pg {
///     type Store = PgReadModelStore;
///     async fn create(&self) -> PgReadModelStore {
///         // a new schema, or a new database file, per call
///     }
/// }
/// ```
pub trait ReadModelFactory: Send + Sync + 'static {
    /// The store.
    type Store: ReadModelStore + 'static;

    /// A new store with no table: nothing ensured, no rows. Tests call it once (a
    /// test needing two models ensures both on the same store).
    fn create(&self) -> impl Future<Output = Self::Store> + Send;
}

/// Generates one `#[tokio::test]` per read-model conformance test. The argument is a
/// future of `Option<F: ReadModelFactory>`, awaited once per test; `None` skips the
/// test (for example when a server is not available).
///
/// ```ignore
/// mod readmodels {
///     mink_testing::readmodel_tests!(async { Some(super::MyFactory::new()) });
/// }
/// ```
#[macro_export]
macro_rules! readmodel_tests {
    ($factory:expr) => {
        $crate::readmodel_tests!(@tests $factory;
            readmodel_crud_and_versions,
            readmodel_integer_ids_and_modify,
            readmodel_ensure_table_is_idempotent_and_rebuilds_on_a_changed_declaration,
            readmodel_operations_before_ensure_table_are_refused,
            readmodel_bad_input_is_refused_and_changes_nothing,
            readmodel_documents_round_trip_exactly,
            readmodel_text_comparisons_match_the_reference,
            readmodel_integer_comparisons_match_the_reference,
            readmodel_float_comparisons_match_the_reference,
            readmodel_bool_and_timestamp_comparisons_match_the_reference,
            readmodel_in_lists_and_null_checks_match_the_reference,
            readmodel_like_patterns_match_the_reference,
            readmodel_starts_ends_contains_match_the_reference,
            readmodel_orderings_and_windows_match_the_reference,
            readmodel_nested_filters_match_the_reference,
            readmodel_keyset_pagination_never_skips_or_repeats,
            readmodel_keyset_pagination_page_sizes,
            readmodel_keyset_cursors_survive_writes_between_pages,
            readmodel_cursors_are_bound_to_their_model_and_ordering,
            readmodel_delete_where_and_count_match_the_reference,
            readmodel_concurrent_modify_loses_no_update,
        );
    };
    (@tests $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(f) = $factory.await {
                    $crate::readmodel::$name(&f).await;
                }
            }
        )*
    };
}

// ---------------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------------

/// The model of the query tests: one field of each type, most nullable; `name` and
/// `flag` are left out of the document when `None` (a missing key is a null).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Item {
    /// Text id.
    pub id: String,
    /// Nullable, indexed text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Nullable integer.
    pub n: Option<i64>,
    /// Nullable float.
    pub x: Option<f64>,
    /// Nullable boolean.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flag: Option<bool>,
    /// Nullable timestamp.
    pub at: Option<DateTime<Utc>>,
    /// Non-null integer with many ties (an SQL keyword as a field name).
    pub group: i64,
    /// Nullable JSON.
    pub meta: Option<serde_json::Value>,
    /// Not declared: stored, returned, not queryable.
    pub extra: serde_json::Value,
}

impl ReadModel for Item {
    const NAME: &'static str = "conformance_items";
    const FIELDS: &'static [Field] = &[
        Field::text("id"),
        Field::text("name").nullable().indexed(),
        Field::integer("n").nullable(),
        Field::float("x").nullable(),
        Field::bool("flag").nullable(),
        Field::timestamp("at").nullable().indexed(),
        Field::integer("group"),
        Field::json("meta").nullable(),
    ];
}

/// A model with an integer id.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Counter {
    /// Integer id.
    pub id: i64,
    /// Text.
    pub label: String,
    /// A count.
    pub hits: i64,
}

impl ReadModel for Counter {
    const NAME: &'static str = "conformance_counters";
    const FIELDS: &'static [Field] = &[
        Field::integer("id"),
        Field::text("label"),
        Field::integer("hits").indexed(),
    ];
}

/// Three declarations of one model name (`conformance_evolving`), to test rebuilds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct EvolvingV1 {
    /// Id.
    pub id: String,
    /// Declared in every version.
    pub a: i64,
    /// Declared from V2 on.
    pub note: Option<String>,
}

impl ReadModel for EvolvingV1 {
    const NAME: &'static str = "conformance_evolving";
    const FIELDS: &'static [Field] = &[Field::text("id"), Field::integer("a")];
}

/// V2 of [`EvolvingV1`]: `a` indexed, `note` declared.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct EvolvingV2 {
    /// Id.
    pub id: String,
    /// Declared in every version.
    pub a: i64,
    /// Declared from V2 on.
    pub note: Option<String>,
}

impl ReadModel for EvolvingV2 {
    const NAME: &'static str = "conformance_evolving";
    const FIELDS: &'static [Field] = &[
        Field::text("id"),
        Field::integer("a").indexed(),
        Field::text("note").nullable(),
    ];
}

/// V3 of [`EvolvingV1`]: declares a non-null field the stored documents lack, so a
/// rebuild for it must fail and leave the table as it was.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct EvolvingV3 {
    /// Id.
    pub id: String,
    /// Declared in every version.
    pub a: i64,
    /// Required, missing from every stored document.
    pub must: i64,
}

impl ReadModel for EvolvingV3 {
    const NAME: &'static str = "conformance_evolving";
    const FIELDS: &'static [Field] = &[
        Field::text("id"),
        Field::integer("a"),
        Field::integer("must"),
    ];
}

type Repo<'a, M, S> = ReadModelRepository<M, &'a S>;

fn repo<M: ReadModel, S: ReadModelStore>(store: &S) -> Repo<'_, M, S> {
    ReadModelRepository::new(store)
}

/// The read-model error of a call that must fail.
#[track_caller]
fn refused<T: fmt::Debug>(r: mink_es::Result<T>, what: &str) -> ReadModelError {
    match r {
        Ok(v) => panic!("{what}: expected a read-model error, got Ok({v:?})"),
        Err(mink_es::Error::ReadModel(e)) => e,
        Err(e) => panic!("{what}: expected a read-model error, got {e:?}"),
    }
}

#[track_caller]
fn ok<T>(r: mink_es::Result<T>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn doc<M: Serialize>(m: &M) -> String {
    serde_json::to_string(m).expect("serializable")
}

fn ts(s: &str) -> DateTime<Utc> {
    s.parse().expect("a valid timestamp literal")
}

// ---------------------------------------------------------------------------------
// The dataset
// ---------------------------------------------------------------------------------

/// splitmix64: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

const TEXTS: &[&str] = &[
    "",
    "a",
    "A",
    "b",
    "B",
    "Z",
    "z",
    "é",
    "É",
    "e\u{301}",
    "😀",
    "a😀b",
    "100%",
    "50%_off",
    "a_b",
    "axb",
    "a\\b",
    "\\",
    "%",
    "_",
    "ACME_1",
    "ACMEx",
    "ACME_2",
    "acme_1",
    "mixedCase",
    "MIXEDCASE",
    "ñandú",
    "日本語",
    " spaced ",
    "*",
    "?",
    "[",
    "[ab]",
    "a*b",
    "x?y",
    "it's",
    "\"quoted\"",
    "line\nbreak",
    "ß",
    "ẞ",
];

const INTS: &[i64] = &[
    i64::MIN,
    i64::MIN + 1,
    -(1 << 53),
    -1,
    0,
    1,
    2,
    3,
    42,
    1 << 53,
    (1 << 53) + 1,
    i64::MAX - 1,
    i64::MAX,
];

const FLOATS: &[f64] = &[
    -0.0,
    0.0,
    1.5,
    -1.5,
    3.0,
    0.1,
    0.300_000_000_000_000_04,
    f64::MAX,
    f64::MIN,
    f64::MIN_POSITIVE,
    -f64::MIN_POSITIVE,
    5e-324,
    1e300,
    -1e-300,
    9_007_199_254_740_992.0,
    2.5,
];

const TIMESTAMPS: &[&str] = &[
    "0001-01-01T00:00:00Z",
    "1969-12-31T23:59:59.999999Z",
    "1969-12-31T23:59:59.999999500Z",
    "1970-01-01T00:00:00Z",
    "2024-02-29T12:00:00Z",
    "2024-02-29T12:00:00.123456Z",
    "2024-02-29T12:00:00.123456789Z",
    "2024-02-29T12:00:00.123457Z",
    "2038-01-19T03:14:08Z",
    "9999-12-31T23:59:59.999999Z",
];

const ID_PREFIXES: &[&str] = &["a", "B", "é", "Z", "z", "😀", "_", "%", "A"];

/// Rows in the dataset.
const ROWS: usize = 240;

/// The dataset: `ROWS` items from a fixed seed; the first rows take every pool value
/// in turn, so each appears at least once, then values are drawn (with nulls).
fn dataset() -> Vec<Item> {
    let mut r = Rng(0x6d69_6e6b_2d72_6d31);
    (0..ROWS)
        .map(|i| {
            let name = match TEXTS.get(i) {
                Some(t) => Some((*t).to_owned()),
                None if r.chance(12) => None,
                None => Some((*r.pick(TEXTS)).to_owned()),
            };
            let n = match INTS.get(i) {
                Some(v) => Some(*v),
                None if r.chance(15) => None,
                None => Some(*r.pick(INTS)),
            };
            let x = match FLOATS.get(i) {
                Some(v) => Some(*v),
                None if r.chance(15) => None,
                None => Some(*r.pick(FLOATS)),
            };
            let flag = if r.chance(20) {
                None
            } else {
                Some(r.chance(50))
            };
            let at = match TIMESTAMPS.get(i) {
                Some(t) => Some(ts(t)),
                None if r.chance(15) => None,
                None => Some(ts(TIMESTAMPS[r.below(TIMESTAMPS.len())])),
            };
            let meta = match r.below(4) {
                0 => None,
                1 => Some(json!({ "k": i })),
                2 => Some(json!([1, "two", null])),
                _ => Some(json!("text")),
            };
            Item {
                id: format!("{}{i:03}", ID_PREFIXES[i % ID_PREFIXES.len()]),
                name,
                n,
                x,
                flag,
                at,
                group: r.below(6) as i64,
                meta,
                extra: json!({ "seq": i, "note": TEXTS[i % TEXTS.len()] }),
            }
        })
        .collect()
}

async fn load<'a, S: ReadModelStore>(store: &'a S, rows: &[Item]) -> Repo<'a, Item, S> {
    use futures::StreamExt;
    let items = repo::<Item, S>(store);
    ok(items.ensure_table().await, "ensure_table");
    // Several inserts in flight: a store with a pool loads the dataset faster.
    let items_ref = &items;
    let versions: Vec<u64> = futures::stream::iter(rows)
        .map(|it| async move { ok(items_ref.insert(it).await, "insert") })
        .buffered(16)
        .collect()
        .await;
    assert!(versions.iter().all(|v| *v == 1));
    assert_eq!(
        ok(items.count(&Query::new()).await, "count"),
        rows.len() as u64
    );
    items
}

// ---------------------------------------------------------------------------------
// The reference: filters and orderings evaluated in plain Rust
// ---------------------------------------------------------------------------------

/// A field of [`Item`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Col {
    Id,
    Name,
    N,
    X,
    Flag,
    At,
    Group,
    Meta,
}

const COMPARABLE: &[Col] = &[
    Col::Id,
    Col::Name,
    Col::N,
    Col::X,
    Col::Flag,
    Col::At,
    Col::Group,
];

impl Col {
    fn name(self) -> &'static str {
        match self {
            Col::Id => "id",
            Col::Name => "name",
            Col::N => "n",
            Col::X => "x",
            Col::Flag => "flag",
            Col::At => "at",
            Col::Group => "group",
            Col::Meta => "meta",
        }
    }
}

/// A reference value. Timestamps are in microseconds (the stores' precision).
#[derive(Clone, Debug, PartialEq)]
enum Rv {
    Null,
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Ts(i64),
    Json,
}

fn text(s: &str) -> Rv {
    Rv::Text(s.to_owned())
}

fn tsv(s: &str) -> Rv {
    Rv::Ts(ts(s).timestamp_micros())
}

fn get(it: &Item, c: Col) -> Rv {
    match c {
        Col::Id => Rv::Text(it.id.clone()),
        Col::Name => it.name.clone().map_or(Rv::Null, Rv::Text),
        Col::N => it.n.map_or(Rv::Null, Rv::Int),
        Col::X => it.x.map_or(Rv::Null, Rv::Float),
        Col::Flag => it.flag.map_or(Rv::Null, Rv::Bool),
        Col::At => it.at.map_or(Rv::Null, |t| Rv::Ts(t.timestamp_micros())),
        Col::Group => Rv::Int(it.group),
        Col::Meta => {
            if it.meta.is_some() {
                Rv::Json
            } else {
                Rv::Null
            }
        }
    }
}

/// The documented order: null first, text by bytes, numbers numerically (`-0.0 =
/// 0.0`; an integer operand of a float field as a float), `false < true`, time.
fn rcmp(a: &Rv, b: &Rv) -> Ordering {
    match (a, b) {
        (Rv::Null, Rv::Null) => Ordering::Equal,
        (Rv::Null, _) => Ordering::Less,
        (_, Rv::Null) => Ordering::Greater,
        (Rv::Text(a), Rv::Text(b)) => a.as_bytes().cmp(b.as_bytes()),
        (Rv::Int(a), Rv::Int(b)) => a.cmp(b),
        (Rv::Float(a), Rv::Float(b)) => a.partial_cmp(b).expect("finite floats"),
        (Rv::Float(a), Rv::Int(b)) => a.partial_cmp(&(*b as f64)).expect("finite floats"),
        (Rv::Bool(a), Rv::Bool(b)) => a.cmp(b),
        (Rv::Ts(a), Rv::Ts(b)) => a.cmp(b),
        _ => panic!("the reference cannot compare {a:?} with {b:?}"),
    }
}

fn value(v: &Rv) -> Value {
    match v {
        Rv::Null => Value::Null,
        Rv::Text(s) => Value::Text(s.clone()),
        Rv::Int(n) => Value::Integer(*n),
        Rv::Float(x) => Value::Float(*x),
        Rv::Bool(b) => Value::Bool(*b),
        Rv::Ts(m) => Value::Timestamp(DateTime::from_timestamp_micros(*m).expect("in range")),
        Rv::Json => panic!("JSON operands are not compared"),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

const OPS: [Op; 6] = [Op::Eq, Op::Ne, Op::Lt, Op::Le, Op::Gt, Op::Ge];

impl Op {
    fn holds(self, o: Ordering) -> bool {
        match self {
            Op::Eq => o == Ordering::Equal,
            Op::Ne => o != Ordering::Equal,
            Op::Lt => o == Ordering::Less,
            Op::Le => o != Ordering::Greater,
            Op::Gt => o == Ordering::Greater,
            Op::Ge => o != Ordering::Less,
        }
    }

    fn filter(self, field: &str, v: Value) -> Filter {
        match self {
            Op::Eq => Filter::eq(field, v),
            Op::Ne => Filter::ne(field, v),
            Op::Lt => Filter::lt(field, v),
            Op::Le => Filter::le(field, v),
            Op::Gt => Filter::gt(field, v),
            Op::Ge => Filter::ge(field, v),
        }
    }
}

/// A filter with its reference meaning.
#[derive(Clone, Debug)]
enum Fl {
    Cmp(Col, Op, Rv),
    /// A timestamp operand with digits below the microsecond (truncated).
    AtFine(Op, DateTime<Utc>),
    In(Col, Vec<Rv>),
    Like(Col, &'static str),
    Starts(Col, &'static str),
    Ends(Col, &'static str),
    Contains(Col, &'static str),
    IsNull(Col),
    NotNull(Col),
    All(Vec<Fl>),
    Any(Vec<Fl>),
}

impl Fl {
    fn filter(&self) -> Filter {
        match self {
            Fl::Cmp(c, op, v) => op.filter(c.name(), value(v)),
            Fl::AtFine(op, t) => op.filter("at", Value::Timestamp(*t)),
            Fl::In(c, vs) => Filter::in_list(c.name(), vs.iter().map(value)),
            Fl::Like(c, p) => Filter::like(c.name(), *p),
            Fl::Starts(c, s) => Filter::starts_with(c.name(), s),
            Fl::Ends(c, s) => Filter::ends_with(c.name(), s),
            Fl::Contains(c, s) => Filter::contains(c.name(), s),
            Fl::IsNull(c) => Filter::is_null(c.name()),
            Fl::NotNull(c) => Filter::is_not_null(c.name()),
            Fl::All(fs) => Filter::all_of(fs.iter().map(Fl::filter)),
            Fl::Any(fs) => Filter::any_of(fs.iter().map(Fl::filter)),
        }
    }

    fn eval(&self, it: &Item) -> bool {
        let text_of = |c: &Col| match get(it, *c) {
            Rv::Text(s) => Some(s),
            _ => None,
        };
        match self {
            Fl::Cmp(c, op, v) => {
                let x = get(it, *c);
                x != Rv::Null && op.holds(rcmp(&x, v))
            }
            Fl::AtFine(op, t) => it
                .at
                .is_some_and(|a| op.holds(a.timestamp_micros().cmp(&t.timestamp_micros()))),
            Fl::In(c, vs) => {
                let x = get(it, *c);
                x != Rv::Null && vs.iter().any(|v| rcmp(&x, v) == Ordering::Equal)
            }
            Fl::Like(c, p) => text_of(c).is_some_and(|s| like(p, &s)),
            Fl::Starts(c, p) => text_of(c).is_some_and(|s| s.starts_with(p)),
            Fl::Ends(c, p) => text_of(c).is_some_and(|s| s.ends_with(p)),
            Fl::Contains(c, p) => text_of(c).is_some_and(|s| s.contains(p)),
            Fl::IsNull(c) => get(it, *c) == Rv::Null,
            Fl::NotNull(c) => get(it, *c) != Rv::Null,
            Fl::All(fs) => fs.iter().all(|f| f.eval(it)),
            Fl::Any(fs) => fs.iter().any(|f| f.eval(it)),
        }
    }
}

/// `LIKE` as documented: whole value, case-sensitive, per character; `\` escapes.
fn like(pattern: &str, s: &str) -> bool {
    #[derive(Clone, Copy, PartialEq)]
    enum T {
        Any,
        One,
        C(char),
    }
    fn go(t: &[T], s: &[char]) -> bool {
        match t.split_first() {
            None => s.is_empty(),
            Some((T::Any, rest)) => (0..=s.len()).any(|i| go(rest, &s[i..])),
            Some((T::One, rest)) => !s.is_empty() && go(rest, &s[1..]),
            Some((T::C(c), rest)) => s.first() == Some(c) && go(rest, &s[1..]),
        }
    }
    let mut tokens = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        tokens.push(match c {
            '%' => T::Any,
            '_' => T::One,
            '\\' => T::C(chars.next().expect("a valid pattern")),
            c => T::C(c),
        });
    }
    let s: Vec<char> = s.chars().collect();
    go(&tokens, &s)
}

fn ref_cmp(order: &[(Col, SortOrder)], a: &Item, b: &Item) -> Ordering {
    for (c, o) in order {
        let x = rcmp(&get(a, *c), &get(b, *c));
        let x = if *o == SortOrder::Desc {
            x.reverse()
        } else {
            x
        };
        if x != Ordering::Equal {
            return x;
        }
    }
    a.id.as_bytes().cmp(b.id.as_bytes())
}

/// A query and its reference result.
#[derive(Clone, Debug)]
struct Case {
    filter: Option<Fl>,
    order: Vec<(Col, SortOrder)>,
    limit: Option<u64>,
    offset: u64,
}

impl Case {
    fn filtered(f: Fl) -> Self {
        Case {
            filter: Some(f),
            order: Vec::new(),
            limit: None,
            offset: 0,
        }
    }

    fn ordered(mut self, order: &[(Col, SortOrder)]) -> Self {
        self.order = order.to_vec();
        self
    }

    fn query(&self) -> Query<Item> {
        let mut q = Query::new();
        if let Some(f) = &self.filter {
            q = q.filter(f.filter());
        }
        for (c, o) in &self.order {
            q = q.order_by(c.name(), *o);
        }
        if let Some(l) = self.limit {
            q = q.limit(l);
        }
        if self.offset > 0 {
            q = q.offset(self.offset);
        }
        q
    }

    fn matching<'a>(&self, data: &'a [Item]) -> Vec<&'a Item> {
        let mut rows: Vec<&Item> = data
            .iter()
            .filter(|it| self.filter.as_ref().is_none_or(|f| f.eval(it)))
            .collect();
        rows.sort_by(|a, b| ref_cmp(&self.order, a, b));
        rows
    }

    fn expect<'a>(&self, data: &'a [Item]) -> Vec<&'a Item> {
        let rows = self.matching(data);
        let limit = self.limit.map_or(usize::MAX, |l| l as usize);
        rows.into_iter()
            .skip(self.offset as usize)
            .take(limit)
            .collect()
    }
}

/// Runs the case's `find` and `count` and compares them with the reference: the same
/// ids in the same order, the same models, the same count.
async fn check<S: ReadModelStore>(items: &Repo<'_, Item, S>, data: &[Item], case: &Case) {
    check_with(items, data, case, true).await;
}

/// [`check`], with the count compared only when `count` is set (to keep tests fast).
async fn check_with<S: ReadModelStore>(
    items: &Repo<'_, Item, S>,
    data: &[Item],
    case: &Case,
    count: bool,
) {
    let got = ok(items.find(&case.query()).await, &format!("find {case:?}"));
    let matching = case.matching(data);
    let limit = case.limit.map_or(usize::MAX, |l| l as usize);
    let want: Vec<&Item> = matching
        .iter()
        .copied()
        .skip(case.offset as usize)
        .take(limit)
        .collect();
    let got_ids: Vec<&str> = got.iter().map(|v| v.model.id.as_str()).collect();
    let want_ids: Vec<&str> = want.iter().map(|it| it.id.as_str()).collect();
    assert_eq!(got_ids, want_ids, "rows of {case:?}");
    for (g, w) in got.iter().zip(&want) {
        assert!(
            g.model == **w,
            "model {:?} in {case:?}: {:?}",
            w.id,
            g.model
        );
        assert_eq!(g.version, 1);
    }
    if !count {
        return;
    }
    let count = ok(items.count(&case.query()).await, &format!("count {case:?}"));
    assert_eq!(
        count,
        matching.len() as u64,
        "count of {case:?} (ignores order and window)"
    );
}

const ORDERS: &[&[(Col, SortOrder)]] = &[
    &[],
    &[(Col::Group, SortOrder::Asc)],
    &[(Col::Group, SortOrder::Desc), (Col::Name, SortOrder::Asc)],
    &[(Col::X, SortOrder::Desc)],
    &[(Col::X, SortOrder::Asc)],
    &[(Col::At, SortOrder::Asc), (Col::Flag, SortOrder::Desc)],
    &[(Col::N, SortOrder::Asc)],
    &[(Col::N, SortOrder::Desc)],
    &[(Col::Name, SortOrder::Desc), (Col::N, SortOrder::Desc)],
    &[(Col::Id, SortOrder::Desc)],
    &[
        (Col::Flag, SortOrder::Asc),
        (Col::Id, SortOrder::Desc),
        (Col::Group, SortOrder::Asc),
    ],
    &[(Col::Name, SortOrder::Asc)],
    &[(Col::At, SortOrder::Desc), (Col::X, SortOrder::Asc)],
];

/// Operands for comparisons on each field: values present in the data and absent
/// ones, extremes included.
fn operands(c: Col) -> Vec<Rv> {
    match c {
        Col::Id => vec![text("a000"), text("Z"), text("é"), text("")],
        Col::Name => vec![
            text(""),
            text("a"),
            text("A"),
            text("é"),
            text("ACME_1"),
            text("zzz"),
            text("😀"),
        ],
        Col::N => vec![
            Rv::Int(i64::MIN),
            Rv::Int(-1),
            Rv::Int(0),
            Rv::Int(1 << 53),
            Rv::Int(7),
            Rv::Int(i64::MAX),
        ],
        Col::X => vec![
            Rv::Float(0.0),
            Rv::Float(-0.0),
            Rv::Float(1.5),
            Rv::Float(f64::MIN),
            Rv::Float(f64::MAX),
            Rv::Float(5e-324),
            Rv::Float(0.2),
            // Integer operands on a float field are taken as floats.
            Rv::Int(3),
            Rv::Int(0),
            Rv::Int(-(1 << 53)),
        ],
        Col::Flag => vec![Rv::Bool(false), Rv::Bool(true)],
        Col::At => vec![
            tsv("0001-01-01T00:00:00Z"),
            tsv("1969-12-31T23:59:59.999999Z"),
            tsv("2024-02-29T12:00:00.123456Z"),
            tsv("2000-01-01T00:00:00Z"),
            tsv("9999-12-31T23:59:59.999999Z"),
        ],
        Col::Group => vec![Rv::Int(0), Rv::Int(3), Rv::Int(-1)],
        Col::Meta => Vec::new(),
    }
}

fn random_atom(r: &mut Rng) -> Fl {
    let c = *r.pick(&[
        Col::Id,
        Col::Name,
        Col::N,
        Col::X,
        Col::Flag,
        Col::At,
        Col::Group,
        Col::Meta,
    ]);
    if c == Col::Meta || r.chance(15) {
        return if r.chance(50) {
            Fl::IsNull(c)
        } else {
            Fl::NotNull(c)
        };
    }
    let pool = operands(c);
    match r.below(10) {
        0 | 1 => {
            let k = r.below(4);
            Fl::In(c, (0..k).map(|_| r.pick(&pool).clone()).collect())
        }
        2 if matches!(c, Col::Name | Col::Id) => Fl::Like(c, LIKES[r.below(LIKES.len())]),
        3 if matches!(c, Col::Name | Col::Id) => Fl::Contains(c, PARTS[r.below(PARTS.len())]),
        _ => Fl::Cmp(c, *r.pick(&OPS), r.pick(&pool).clone()),
    }
}

fn random_filter(r: &mut Rng, depth: usize) -> Fl {
    if depth == 0 || r.chance(35) {
        return random_atom(r);
    }
    let k = r.below(4);
    let children = (0..k).map(|_| random_filter(r, depth - 1)).collect();
    if r.chance(50) {
        Fl::All(children)
    } else {
        Fl::Any(children)
    }
}

const LIKES: &[&str] = &[
    "%", "", "a", "A%", "a%", "%b", "_", "__", "___", "%\\%%", "%\\_%", "%\\\\%", "a\\_b", "a_b",
    "a\\\\b", "%😀%", "_😀_", "é%", "e%", "É", "%[%", "[ab]", "%*%", "%?%", "a*b", "ACME\\_%",
    "ACME_%", "%_", "%%%", "\\%", "%\\%", "_____", "%n%", "%\n%", "z%", "%0%",
];

const PARTS: &[&str] = &[
    "", "%", "_", "\\", "50%_", "a_", "ACME_", "😀", "É", "é", "b", "B", "*", "?", "[", "'", "\"",
    "0",
];

// ---------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------

fn item(id: &str, name: Option<&str>, group: i64) -> Item {
    Item {
        id: id.to_owned(),
        name: name.map(str::to_owned),
        n: Some(1),
        x: Some(0.5),
        flag: Some(true),
        at: Some(ts("2024-01-02T03:04:05.678901Z")),
        group,
        meta: None,
        extra: json!({ "kept": [1, 2, 3] }),
    }
}

/// get/insert/update/upsert/delete with versions; conflicts and bad models write
/// nothing; writes move the queried columns, not only the document.
pub async fn readmodel_crud_and_versions<F: ReadModelFactory>(f: &F) {
    let store = f.create().await;
    let items = repo::<Item, _>(&store);
    ok(items.ensure_table().await, "ensure_table");

    assert_eq!(ok(items.get("k1").await, "get"), None);
    let k1 = item("k1", Some("first"), 1);
    assert_eq!(ok(items.insert(&k1).await, "insert"), 1);
    let got = ok(items.get("k1").await, "get").expect("stored");
    assert_eq!(got.version, 1);
    assert_eq!(got.model, k1);

    // A second insert is refused and writes nothing.
    let mut other = k1.clone();
    other.name = Some("overwritten".into());
    let e = refused(items.insert(&other).await, "insert twice");
    assert!(
        matches!(&e, ReadModelError::AlreadyExists { id, .. } if id.contains("k1")),
        "{e:?}"
    );
    assert_eq!(
        ok(items.get("k1").await, "get"),
        Some(Versioned {
            model: k1.clone(),
            version: 1
        })
    );

    // Optimistic update.
    let mut v2 = k1.clone();
    v2.name = Some("second".into());
    v2.group = 2;
    assert_eq!(ok(items.update(&v2, 1).await, "update"), 2);
    let mut stale = v2.clone();
    stale.name = Some("stale".into());
    let e = refused(items.update(&stale, 1).await, "stale update");
    assert!(
        matches!(
            e,
            ReadModelError::VersionConflict {
                expected: 1,
                actual: 2,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.is_version_conflict());
    let e = refused(items.update(&stale, 3).await, "update from the future");
    assert!(
        matches!(
            e,
            ReadModelError::VersionConflict {
                expected: 3,
                actual: 2,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        ok(items.get("k1").await, "get"),
        Some(Versioned {
            model: v2.clone(),
            version: 2
        })
    );
    let e = refused(
        items.update(&item("missing", None, 0), 1).await,
        "update of a missing row",
    );
    assert!(matches!(e, ReadModelError::NotFound { .. }), "{e:?}");
    assert_eq!(ok(items.get("missing").await, "get"), None);

    // The columns moved with the document.
    let items_ref = &items;
    let names = |q: Query<Item>| async move {
        ok(items_ref.find(&q).await, "find")
            .into_iter()
            .map(|v| v.model.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(names(Query::new().eq("name", "second")).await, ["k1"]);
    assert!(names(Query::new().eq("name", "first")).await.is_empty());
    assert_eq!(names(Query::new().eq("group", 2)).await, ["k1"]);

    // Upsert: new at 1, then one up each time.
    let mut k2 = item("k2", None, 5);
    assert_eq!(ok(items.upsert(&k2).await, "upsert new"), 1);
    k2.name = Some("named".into());
    assert_eq!(ok(items.upsert(&k2).await, "upsert"), 2);
    assert_eq!(ok(items.upsert(&v2).await, "upsert existing"), 3);
    assert_eq!(ok(items.get("k2").await, "get").map(|v| v.version), Some(2));
    assert_eq!(names(Query::new().eq("name", "named")).await, ["k2"]);
    assert_eq!(
        names(Query::new().is_null("name")).await,
        Vec::<String>::new()
    );

    // Delete.
    assert!(ok(items.delete("k1").await, "delete"));
    assert!(!ok(items.delete("k1").await, "delete again"));
    assert_eq!(ok(items.get("k1").await, "get"), None);
    assert_eq!(ok(items.count(&Query::new()).await, "count"), 1);
    assert_eq!(
        ok(items.insert(&k1).await, "insert after delete"),
        1,
        "a new row"
    );

    // Ids of the wrong type.
    let e = refused(items.get(7).await, "get by an integer");
    assert!(matches!(e, ReadModelError::TypeMismatch { .. }), "{e:?}");
    let e = refused(items.delete(7).await, "delete by an integer");
    assert!(matches!(e, ReadModelError::TypeMismatch { .. }), "{e:?}");

    // Models that do not fit write nothing.
    let before = ok(items.find(&Query::new()).await, "find");
    let mut nul = k2.clone();
    nul.name = Some("nul\0char".into());
    let mut far = k2.clone();
    far.at = Some(ts("+10000-01-01T00:00:00Z"));
    let mut nul_id = k2.clone();
    nul_id.id = "id\0".into();
    for (bad, what) in [
        (&nul, "NUL in text"),
        (&far, "year 10000"),
        (&nul_id, "NUL in id"),
    ] {
        let e = refused(items.upsert(bad).await, what);
        assert!(
            matches!(e, ReadModelError::InvalidValue { .. }),
            "{what}: {e:?}"
        );
        let e = refused(items.update(bad, 2).await, what);
        assert!(
            matches!(e, ReadModelError::InvalidValue { .. }),
            "{what}: {e:?}"
        );
        let mut fresh = bad.clone();
        if fresh.id == k2.id {
            fresh.id = "k3".into();
        }
        let e = refused(items.insert(&fresh).await, what);
        assert!(
            matches!(e, ReadModelError::InvalidValue { .. }),
            "{what}: {e:?}"
        );
    }
    assert_eq!(ok(items.find(&Query::new()).await, "find"), before);
}

/// Integer ids (with the `i64` extremes) order numerically; `modify` retries from
/// the read and refuses to change the id.
pub async fn readmodel_integer_ids_and_modify<F: ReadModelFactory>(f: &F) {
    let store = f.create().await;
    let counters = repo::<Counter, _>(&store);
    ok(counters.ensure_table().await, "ensure_table");
    let ids = [i64::MAX, 0, i64::MIN, -1, 1, i64::MIN + 1];
    for id in ids {
        let c = Counter {
            id,
            label: format!("c{id}"),
            hits: 0,
        };
        assert_eq!(ok(counters.insert(&c).await, "insert"), 1);
    }
    let asc: Vec<i64> = ok(counters.find(&Query::new()).await, "find")
        .into_iter()
        .map(|v| v.model.id)
        .collect();
    assert_eq!(asc, [i64::MIN, i64::MIN + 1, -1, 0, 1, i64::MAX]);
    let desc: Vec<i64> = ok(counters.find(&Query::new().order_desc("id")).await, "find")
        .into_iter()
        .map(|v| v.model.id)
        .collect();
    assert_eq!(desc, [i64::MAX, 1, 0, -1, i64::MIN + 1, i64::MIN]);
    let neg: Vec<i64> = ok(counters.find(&Query::new().lt("id", 0)).await, "find")
        .into_iter()
        .map(|v| v.model.id)
        .collect();
    assert_eq!(neg, [i64::MIN, i64::MIN + 1, -1]);
    assert_eq!(
        ok(counters.get(i64::MIN).await, "get").map(|v| v.model.label),
        Some(format!("c{}", i64::MIN))
    );
    let e = refused(counters.get("0").await, "a text id");
    assert!(matches!(e, ReadModelError::TypeMismatch { .. }), "{e:?}");

    let m = ok(counters.modify(i64::MAX, |c| c.hits += 5).await, "modify");
    assert_eq!((m.version, m.model.hits), (2, 5));
    let m = ok(counters.modify(i64::MAX, |c| c.hits += 1).await, "modify");
    assert_eq!((m.version, m.model.hits), (3, 6));
    assert_eq!(
        ok(counters.find(&Query::new().eq("hits", 6)).await, "find").len(),
        1
    );
    let e = refused(counters.modify(42, |c| c.hits += 1).await, "modify missing");
    assert!(matches!(e, ReadModelError::NotFound { .. }), "{e:?}");
    let e = refused(counters.modify(0, |c| c.id = 99).await, "modify the id");
    assert!(matches!(e, ReadModelError::InvalidValue { .. }), "{e:?}");
    assert_eq!(ok(counters.get(99).await, "get"), None);
    assert_eq!(ok(counters.get(0).await, "get").map(|v| v.version), Some(1));
    assert_eq!(ok(counters.count(&Query::new()).await, "count"), 6);
}

/// `ensure_table` twice changes nothing; a changed declaration (another model type
/// with the same NAME) rebuilds the table keeping documents and versions; a rebuild
/// that cannot fit the documents fails and leaves the table as it was.
pub async fn readmodel_ensure_table_is_idempotent_and_rebuilds_on_a_changed_declaration<
    F: ReadModelFactory,
>(
    f: &F,
) {
    let store = f.create().await;
    let v1 = repo::<EvolvingV1, _>(&store);
    let v2 = repo::<EvolvingV2, _>(&store);
    let v3 = repo::<EvolvingV3, _>(&store);
    ok(v1.ensure_table().await, "ensure v1");
    ok(v1.ensure_table().await, "ensure v1 again");
    let rows = [
        EvolvingV1 {
            id: "r1".into(),
            a: 3,
            note: Some("keep".into()),
        },
        EvolvingV1 {
            id: "r2".into(),
            a: 1,
            note: None,
        },
        EvolvingV1 {
            id: "r3".into(),
            a: 2,
            note: Some("keep".into()),
        },
    ];
    for r in &rows {
        ok(v1.insert(r).await, "insert");
    }
    let mut r2 = rows[1].clone();
    r2.note = Some("changed".into());
    assert_eq!(ok(v1.update(&r2, 1).await, "update"), 2);
    ok(v1.ensure_table().await, "ensure v1 a third time");
    assert_eq!(ok(v1.count(&Query::new()).await, "count"), 3);
    assert_eq!(ok(v1.get("r2").await, "get").map(|v| v.version), Some(2));
    let e = refused(
        v1.find(&Query::new().eq("note", "keep")).await,
        "note is not declared in v1",
    );
    assert!(matches!(e, ReadModelError::UnknownField { .. }), "{e:?}");

    // Rebuild for V2: the documents and versions stay; note is now queryable.
    ok(v2.ensure_table().await, "ensure v2");
    ok(v2.ensure_table().await, "ensure v2 again");
    let all = ok(v2.find(&Query::new()).await, "find v2");
    let seen: Vec<(String, i64, Option<String>, u64)> = all
        .into_iter()
        .map(|v| (v.model.id, v.model.a, v.model.note, v.version))
        .collect();
    assert_eq!(
        seen,
        [
            ("r1".to_owned(), 3, Some("keep".to_owned()), 1),
            ("r2".to_owned(), 1, Some("changed".to_owned()), 2),
            ("r3".to_owned(), 2, Some("keep".to_owned()), 1),
        ]
    );
    let keep: Vec<String> = ok(
        v2.find(&Query::new().eq("note", "keep").order_desc("a"))
            .await,
        "find on note",
    )
    .into_iter()
    .map(|v| v.model.id)
    .collect();
    assert_eq!(keep, ["r1", "r3"]);

    // The old declaration is no longer the table's.
    let e = refused(v1.get("r1").await, "v1 after the rebuild");
    assert!(matches!(e, ReadModelError::NotEnsured { .. }), "{e:?}");

    // A rebuild whose declaration the documents do not fit fails, changing nothing.
    let e = refused(v3.ensure_table().await, "ensure v3");
    assert!(
        matches!(
            e,
            ReadModelError::InvalidValue { .. }
                | ReadModelError::TypeMismatch { .. }
                | ReadModelError::InvalidModel { .. }
        ),
        "{e:?}"
    );
    let e = refused(v3.get("r1").await, "v3 after its failed ensure");
    assert!(matches!(e, ReadModelError::NotEnsured { .. }), "{e:?}");
    assert_eq!(ok(v2.count(&Query::new()).await, "count v2"), 3);
    assert_eq!(
        ok(v2.count(&Query::new().eq("note", "keep")).await, "count"),
        2
    );
    ok(
        v2.insert(&EvolvingV2 {
            id: "r4".into(),
            a: 9,
            note: Some("new".into()),
        })
        .await,
        "insert v2",
    );

    // And back to V1.
    ok(v1.ensure_table().await, "ensure v1 after v2");
    assert_eq!(ok(v1.count(&Query::new()).await, "count v1"), 4);
    assert_eq!(ok(v1.get("r2").await, "get").map(|v| v.version), Some(2));
    let a: Vec<i64> = ok(v1.find(&Query::new().order_asc("a")).await, "find")
        .into_iter()
        .map(|v| v.model.a)
        .collect();
    assert_eq!(a, [1, 2, 3, 9]);
    assert_eq!(
        ok(v1.get("r4").await, "get").map(|v| v.model.note),
        Some(Some("new".to_owned())),
        "undeclared keys survive the rebuilds"
    );
}

/// Every operation on a model whose table was not ensured through this handle is
/// [`ReadModelError::NotEnsured`]; ensuring one model does not ensure another.
pub async fn readmodel_operations_before_ensure_table_are_refused<F: ReadModelFactory>(f: &F) {
    let store = f.create().await;
    let items = repo::<Item, _>(&store);
    let it = item("k", Some("n"), 1);
    let not_ensured = |e: ReadModelError, what: &str| {
        assert!(
            matches!(e, ReadModelError::NotEnsured { .. }),
            "{what}: {e:?}"
        );
    };
    not_ensured(refused(items.get("k").await, "get"), "get");
    not_ensured(refused(items.insert(&it).await, "insert"), "insert");
    not_ensured(refused(items.upsert(&it).await, "upsert"), "upsert");
    not_ensured(refused(items.update(&it, 1).await, "update"), "update");
    not_ensured(refused(items.delete("k").await, "delete"), "delete");
    not_ensured(refused(items.find(&Query::new()).await, "find"), "find");
    not_ensured(
        refused(items.page(&Query::new().limit(2)).await, "page"),
        "page",
    );
    not_ensured(refused(items.count(&Query::new()).await, "count"), "count");
    not_ensured(
        refused(items.delete_where(&Query::all()).await, "delete_where"),
        "delete_where",
    );

    ok(items.ensure_table().await, "ensure_table");
    assert_eq!(ok(items.insert(&it).await, "insert"), 1);
    let counters = repo::<Counter, _>(&store);
    not_ensured(refused(counters.get(1).await, "counter get"), "counter get");
    not_ensured(
        refused(counters.count(&Query::new()).await, "counter count"),
        "counter count",
    );
    assert_eq!(ok(items.count(&Query::new()).await, "count"), 1);
}

/// Unknown fields, type mismatches and malformed queries are typed errors, before any
/// I/O: a misspelled field in `delete_where` deletes no row, a query without a filter
/// deletes nothing unless it is `Query::all()`.
pub async fn readmodel_bad_input_is_refused_and_changes_nothing<F: ReadModelFactory>(f: &F) {
    let store = f.create().await;
    let data: Vec<Item> = dataset().into_iter().take(60).collect();
    let items = load(&store, &data).await;
    let snapshot = ok(items.find(&Query::new()).await, "find");
    assert_eq!(snapshot.len(), data.len());

    type Kind = fn(&ReadModelError) -> bool;
    let unknown: Kind = |e| matches!(e, ReadModelError::UnknownField { .. });
    let mismatch: Kind = |e| matches!(e, ReadModelError::TypeMismatch { .. });
    let invalid_value: Kind = |e| matches!(e, ReadModelError::InvalidValue { .. });
    let invalid_query: Kind = |e| matches!(e, ReadModelError::InvalidQuery { .. });
    let too_many: Vec<i64> = (0..30_001).collect();
    let bad_filters: Vec<(Filter, Kind, &str)> = vec![
        (Filter::eq("nme", "a"), unknown, "misspelled field"),
        (Filter::eq("Name", "a"), unknown, "field names are exact"),
        (
            Filter::any_of([Filter::eq("group", 1), Filter::eq("grp", 2)]),
            unknown,
            "misspelled field inside OR",
        ),
        (
            Filter::all_of([Filter::is_null("nmae")]),
            unknown,
            "misspelled null check",
        ),
        (Filter::eq("group", "two"), mismatch, "text for an integer"),
        (Filter::eq("n", 1.5), mismatch, "float for an integer"),
        (Filter::eq("flag", 1), mismatch, "integer for a bool"),
        (
            Filter::eq("at", "2024-01-01"),
            mismatch,
            "text for a timestamp",
        ),
        (Filter::eq("id", 3), mismatch, "integer for a text id"),
        (
            Filter::in_list("group", [Value::from(1), Value::from("x")]),
            mismatch,
            "mixed in-list",
        ),
        (Filter::like("n", "1%"), mismatch, "like on an integer"),
        (
            Filter::eq("x", (1_i64 << 53) + 1),
            invalid_value,
            "integer with no exact float",
        ),
        (Filter::eq("x", f64::NAN), invalid_value, "NaN operand"),
        (
            Filter::lt("x", f64::INFINITY),
            invalid_value,
            "infinite operand",
        ),
        (
            Filter::eq("name", "a\0b"),
            invalid_value,
            "NUL in an operand",
        ),
        (
            Filter::eq("at", ts("+10000-01-01T00:00:00Z")),
            invalid_value,
            "timestamp after 9999",
        ),
        (
            Filter::eq("name", Value::Null),
            invalid_query,
            "compared with null",
        ),
        (Filter::ne("n", None::<i64>), invalid_query, "ne null"),
        (
            Filter::eq("meta", json!(1)),
            invalid_query,
            "comparison on JSON",
        ),
        (
            Filter::in_list("meta", Vec::<Value>::new()),
            invalid_query,
            "in on JSON",
        ),
        (
            Filter::like("name", "a\\"),
            invalid_query,
            "dangling escape",
        ),
        (
            Filter::like("name", "\\a"),
            invalid_query,
            "escape of a letter",
        ),
        (
            Filter::in_list("n", too_many),
            invalid_query,
            "too many values",
        ),
    ];
    for (filter, kind, what) in &bad_filters {
        let q = Query::<Item>::new().filter(filter.clone());
        let e = refused(items.find(&q).await, what);
        assert!(kind(&e), "find, {what}: {e:?}");
        let e = refused(items.count(&q).await, what);
        assert!(kind(&e), "count, {what}: {e:?}");
        let e = refused(items.page(&q.clone().limit(3)).await, what);
        assert!(kind(&e), "page, {what}: {e:?}");
        let e = refused(items.delete_where(&q).await, what);
        assert!(kind(&e), "delete_where, {what}: {e:?}");
        assert!(q.validate().is_err(), "validate, {what}");
    }
    let bad_orders: Vec<(Query<Item>, Kind, &str)> = vec![
        (Query::new().order_asc("nme"), unknown, "order by unknown"),
        (
            Query::new().order_desc("meta"),
            invalid_query,
            "order by JSON",
        ),
    ];
    for (q, kind, what) in &bad_orders {
        let e = refused(items.find(q).await, what);
        assert!(kind(&e), "{what}: {e:?}");
    }
    // delete_where needs a filter (or Query::all()), and takes no window or cursor.
    let cursor = ok(items.page(&Query::new().limit(2)).await, "page")
        .next
        .expect("more rows");
    let refused_deletes: Vec<(Query<Item>, &str)> = vec![
        (Query::new(), "no filter"),
        (Query::new().filter(Filter::all_of([])), "empty AND"),
        (
            Query::new().filter(Filter::any_of([Filter::all_of([])])),
            "nested empty filters",
        ),
        (Query::new().order_asc("group"), "only an ordering"),
        (Query::new().eq("group", 1).limit(1), "a limit"),
        (Query::new().eq("group", 1).offset(1), "an offset"),
        (Query::new().eq("group", 1).after(cursor), "a cursor"),
    ];
    for (q, what) in &refused_deletes {
        let e = refused(items.delete_where(q).await, what);
        assert!(invalid_query(&e), "delete_where with {what}: {e:?}");
    }
    assert_eq!(
        ok(items.find(&Query::new()).await, "find"),
        snapshot,
        "nothing changed"
    );

    // A correct delete deletes exactly its rows; Query::all() deletes the rest.
    let ones = data.iter().filter(|it| it.group == 1).count() as u64;
    assert!(ones > 0);
    assert_eq!(
        ok(
            items.delete_where(&Query::new().eq("group", 1)).await,
            "delete"
        ),
        ones
    );
    let left = data.len() as u64 - ones;
    assert_eq!(ok(items.count(&Query::new()).await, "count"), left);
    assert_eq!(
        ok(items.delete_where(&Query::all()).await, "delete all"),
        left
    );
    assert_eq!(ok(items.count(&Query::new()).await, "count"), 0);
    assert_eq!(ok(items.delete_where(&Query::all()).await, "delete all"), 0);
}

/// The store gives back each document exactly as written (undeclared keys, key
/// order, number spelling, escapes), from `get` and `find`, after insert, update and
/// upsert.
pub async fn readmodel_documents_round_trip_exactly<F: ReadModelFactory>(f: &F) {
    let store = f.create().await;
    let items = repo::<Item, _>(&store);
    ok(items.ensure_table().await, "ensure_table");
    let schema = Schema::of::<Item>().expect("valid");
    let mut rich = item("rich", Some("é😀\u{1}\t\"\\/"), 4);
    rich.x = Some(-0.0);
    rich.n = Some(i64::MIN);
    rich.meta = Some(json!({ "z": 1, "a": [1.0, -0.0, 1e300, "\u{7f}"], "m": {} }));
    rich.extra = json!({
        "big": u64::MAX,
        "neg": i64::MIN,
        "float": 0.1,
        "one": 1.0,
        "tiny": 5e-324,
        "text": "line\nbreak \u{2028} \u{0} nul is fine in undeclared keys",
        "empty": [],
        "nested": { "deep": [[[]]], "é": "😀" },
    });
    let mut plain = item("plain", None, 0);
    plain.flag = None;
    plain.at = None;
    plain.extra = json!(null);
    for it in [&rich, &plain] {
        ok(items.insert(it).await, "insert");
    }
    let check_docs = |want: Vec<(&'static str, String, u64)>| {
        let store = &store;
        let schema = &schema;
        async move {
            for (id, d, version) in &want {
                let row =
                    ok(store.get(schema, &Value::from(*id)).await, "store get").expect("stored");
                assert_eq!(&row.doc, d, "document of {id} (get)");
                assert_eq!(row.version, *version, "version of {id}");
            }
            let mut all = ok(
                store.find(schema, &Plan::everything(schema)).await,
                "store find",
            );
            all.sort_by(|a, b| a.doc.cmp(&b.doc));
            let mut docs: Vec<String> = want.iter().map(|(_, d, _)| d.clone()).collect();
            docs.sort();
            assert_eq!(
                all.into_iter().map(|r| r.doc).collect::<Vec<_>>(),
                docs,
                "documents (find)"
            );
        }
    };
    let row_doc = |it: &Item| schema.row(it).expect("fits").doc().to_owned();
    check_docs(vec![
        ("rich", row_doc(&rich), 1),
        ("plain", row_doc(&plain), 1),
    ])
    .await;
    let got = ok(items.get("rich").await, "get").expect("stored").model;
    assert_eq!(doc(&got), doc(&rich));
    assert!(
        got.x.expect("set").is_sign_negative(),
        "-0.0 keeps its sign"
    );

    rich.extra["added"] = json!("after update");
    assert_eq!(ok(items.update(&rich, 1).await, "update"), 2);
    plain.extra = json!({ "now": "an object" });
    assert_eq!(ok(items.upsert(&plain).await, "upsert"), 2);
    check_docs(vec![
        ("rich", row_doc(&rich), 2),
        ("plain", row_doc(&plain), 2),
    ])
    .await;
    let found = ok(items.find(&Query::new().eq("x", 0.0)).await, "find");
    assert_eq!(
        found.iter().map(|v| doc(&v.model)).collect::<Vec<_>>(),
        [doc(&rich)],
        "-0.0 = 0.0"
    );
    // A missing key is a null.
    let nulls = ok(
        items
            .find(&Query::new().is_null("flag").is_null("name"))
            .await,
        "find",
    );
    assert_eq!(
        nulls.into_iter().map(|v| v.model.id).collect::<Vec<_>>(),
        ["plain"]
    );
}

/// Every comparison operator with every operand of `cols`, against the reference.
async fn comparisons<F: ReadModelFactory>(f: &F, cols: &[Col]) {
    let store = f.create().await;
    let data = dataset();
    let items = load(&store, &data).await;
    let mut n = 0usize;
    for c in cols {
        for v in operands(*c) {
            for op in OPS {
                let case =
                    Case::filtered(Fl::Cmp(*c, op, v.clone())).ordered(ORDERS[n % ORDERS.len()]);
                check_with(&items, &data, &case, n.is_multiple_of(3)).await;
                n += 1;
            }
        }
    }
    if cols.contains(&Col::At) {
        // Operands below the microsecond are truncated, like stored timestamps.
        for op in OPS {
            for t in [
                "2024-02-29T12:00:00.123456999Z",
                "1969-12-31T23:59:59.999999999Z",
            ] {
                check_with(&items, &data, &Case::filtered(Fl::AtFine(op, ts(t))), false).await;
            }
        }
    }
}

/// Every comparison operator on text fields (the text id and a nullable text):
/// byte order, case, unicode, the empty string.
pub async fn readmodel_text_comparisons_match_the_reference<F: ReadModelFactory>(f: &F) {
    comparisons(f, &[Col::Id, Col::Name]).await;
}

/// Every comparison operator on integer fields, `i64` extremes included.
pub async fn readmodel_integer_comparisons_match_the_reference<F: ReadModelFactory>(f: &F) {
    comparisons(f, &[Col::N, Col::Group]).await;
}

/// Every comparison operator on a float field: `-0.0 = 0.0`, extremes, subnormals,
/// integer operands taken as floats.
pub async fn readmodel_float_comparisons_match_the_reference<F: ReadModelFactory>(f: &F) {
    comparisons(f, &[Col::X]).await;
}

/// Every comparison operator on booleans and timestamps (ties at the microsecond,
/// operands truncated to it).
pub async fn readmodel_bool_and_timestamp_comparisons_match_the_reference<F: ReadModelFactory>(
    f: &F,
) {
    comparisons(f, &[Col::Flag, Col::At]).await;
}

/// `in` lists (empty, single, duplicates, absent values) on every comparable field,
/// and null checks on every field, against the reference.
pub async fn readmodel_in_lists_and_null_checks_match_the_reference<F: ReadModelFactory>(f: &F) {
    let store = f.create().await;
    let data = dataset();
    let items = load(&store, &data).await;
    for c in COMPARABLE {
        let pool = operands(*c);
        let lists: Vec<Vec<Rv>> = vec![
            Vec::new(),
            vec![pool[0].clone()],
            pool.clone(),
            vec![pool[1].clone(), pool[1].clone(), pool[0].clone()],
        ];
        for l in lists {
            check(&items, &data, &Case::filtered(Fl::In(*c, l))).await;
        }
    }
    let texts: Vec<Rv> = TEXTS.iter().map(|t| text(t)).collect();
    check(&items, &data, &Case::filtered(Fl::In(Col::Name, texts))).await;
    for c in [
        Col::Id,
        Col::Name,
        Col::N,
        Col::X,
        Col::Flag,
        Col::At,
        Col::Group,
        Col::Meta,
    ] {
        check(&items, &data, &Case::filtered(Fl::IsNull(c))).await;
        check(&items, &data, &Case::filtered(Fl::NotNull(c))).await;
    }
}

/// `like` patterns (`%`, `_`, escapes, unicode, case, the characters special to
/// GLOB) against the reference.
pub async fn readmodel_like_patterns_match_the_reference<F: ReadModelFactory>(f: &F) {
    let store = f.create().await;
    let data = dataset();
    let items = load(&store, &data).await;
    for (i, p) in LIKES.iter().copied().enumerate() {
        check_with(
            &items,
            &data,
            &Case::filtered(Fl::Like(Col::Name, p)),
            i.is_multiple_of(4),
        )
        .await;
    }
    for p in [
        "%", "_%", r"%\\%", r"\%%", r"\_%", "é%", "%0_", "😀%", "a___", "%A%",
    ] {
        check_with(&items, &data, &Case::filtered(Fl::Like(Col::Id, p)), false).await;
    }
}

/// `starts_with`, `ends_with` and `contains` take their text literally (`%`, `_`,
/// `\`, GLOB's `*?[` included), against the reference.
pub async fn readmodel_starts_ends_contains_match_the_reference<F: ReadModelFactory>(f: &F) {
    let store = f.create().await;
    let data = dataset();
    let items = load(&store, &data).await;
    for (i, p) in PARTS.iter().copied().enumerate() {
        let count = i.is_multiple_of(4);
        check_with(
            &items,
            &data,
            &Case::filtered(Fl::Starts(Col::Name, p)),
            count,
        )
        .await;
        check_with(
            &items,
            &data,
            &Case::filtered(Fl::Ends(Col::Name, p)),
            false,
        )
        .await;
        check_with(
            &items,
            &data,
            &Case::filtered(Fl::Contains(Col::Name, p)),
            false,
        )
        .await;
    }
    for p in ["%", "_", "😀", "é", "0", "A"] {
        check_with(
            &items,
            &data,
            &Case::filtered(Fl::Starts(Col::Id, p)),
            false,
        )
        .await;
        check_with(&items, &data, &Case::filtered(Fl::Ends(Col::Id, p)), false).await;
        check_with(
            &items,
            &data,
            &Case::filtered(Fl::Contains(Col::Id, p)),
            false,
        )
        .await;
    }
    for t in TEXTS.iter().copied().step_by(3) {
        check_with(
            &items,
            &data,
            &Case::filtered(Fl::Starts(Col::Name, t)),
            false,
        )
        .await;
    }
}

const WINDOWS: &[(Option<u64>, u64)] = &[
    (None, 0),
    (Some(0), 0),
    (Some(10), 0),
    (Some(7), 5),
    (None, 17),
    (None, 250),
    (Some(1000), 3),
    (Some(5), (ROWS - 2) as u64),
    (Some(1), 0),
];

/// Multi-key orderings (ascending and descending, nulls, ties, the id as a key) with
/// limit/offset windows, against the reference.
pub async fn readmodel_orderings_and_windows_match_the_reference<F: ReadModelFactory>(f: &F) {
    let store = f.create().await;
    let data = dataset();
    let items = load(&store, &data).await;
    for (i, order) in ORDERS.iter().enumerate() {
        for j in 0..3 {
            let (limit, offset) = WINDOWS[(i * 3 + j) % WINDOWS.len()];
            let mut case = Case {
                filter: None,
                order: order.to_vec(),
                limit,
                offset,
            };
            check_with(&items, &data, &case, false).await;
            if j == 0 {
                case.filter = Some(Fl::Cmp(Col::Group, Op::Ge, Rv::Int(2)));
                check(&items, &data, &case).await;
            }
        }
    }
}

/// Random AND/OR trees (empty groups included) over every kind of condition, with
/// orderings and windows, against the reference.
pub async fn readmodel_nested_filters_match_the_reference<F: ReadModelFactory>(f: &F) {
    let store = f.create().await;
    let data = dataset();
    let items = load(&store, &data).await;
    let mut r = Rng(0x0a0b_0c0d);
    for i in 0..60 {
        let (limit, offset) = WINDOWS[i % WINDOWS.len()];
        let case = Case {
            filter: Some(random_filter(&mut r, 3)),
            order: ORDERS[r.below(ORDERS.len())].to_vec(),
            limit,
            offset,
        };
        check_with(&items, &data, &case, i.is_multiple_of(2)).await;
    }
    // Explicit shapes: empty groups, nested negation-free logic, null checks mixed in.
    let shapes = [
        Fl::All(Vec::new()),
        Fl::Any(Vec::new()),
        Fl::All(vec![Fl::Any(Vec::new()), Fl::IsNull(Col::Name)]),
        Fl::Any(vec![Fl::All(Vec::new()), Fl::IsNull(Col::Name)]),
        Fl::Any(vec![
            Fl::IsNull(Col::X),
            Fl::All(vec![
                Fl::Cmp(Col::X, Op::Ge, Rv::Int(0)),
                Fl::Cmp(Col::Group, Op::Ne, Rv::Int(3)),
            ]),
        ]),
        Fl::All(vec![
            Fl::Any(vec![Fl::Starts(Col::Name, "a"), Fl::Starts(Col::Name, "A")]),
            Fl::Any(vec![
                Fl::IsNull(Col::Flag),
                Fl::Cmp(Col::Flag, Op::Eq, Rv::Bool(true)),
            ]),
        ]),
        Fl::Any(vec![
            Fl::In(Col::N, vec![Rv::Int(i64::MIN), Rv::Int(i64::MAX)]),
            Fl::Cmp(Col::At, Op::Lt, tsv("1970-01-01T00:00:00Z")),
            Fl::Like(Col::Id, "%0_"),
        ]),
    ];
    for (i, s) in shapes.into_iter().enumerate() {
        let case = Case::filtered(s).ordered(ORDERS[i % ORDERS.len()]);
        check(&items, &data, &case).await;
    }
}

fn ids(items: &[Versioned<Item>]) -> Vec<String> {
    items.iter().map(|v| v.model.id.clone()).collect()
}

/// Pages forward through the whole result and back again; both directions must give
/// the reference order exactly, without a skipped or repeated row.
async fn walk<S: ReadModelStore>(
    items: &Repo<'_, Item, S>,
    case: &Case,
    size: u64,
    want: &[String],
) {
    let base = case.query().limit(size);
    let label = format!("{case:?} in pages of {size}");
    let mut page = ok(items.page(&base).await, &label);
    assert!(page.prev.is_none(), "the first page has no prev: {label}");
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(page.items.len() as u64 <= size, "{label}");
        seen.extend(ids(&page.items));
        let Some(next) = page.next.clone() else {
            break;
        };
        assert_eq!(
            page.items.len() as u64,
            size,
            "only the last page is short: {label}"
        );
        page = ok(items.page(&base.clone().after(next)).await, &label);
        assert!(page.prev.is_some(), "later pages have a prev: {label}");
        assert!(pages <= want.len() + 1, "paging does not end: {label}");
    }
    assert_eq!(seen, want, "forward: {label}");
    let mut back = ids(&page.items);
    let mut prev = page.prev.clone();
    let mut pages = 0;
    while let Some(cursor) = prev {
        pages += 1;
        let p = ok(items.page(&base.clone().before(cursor)).await, &label);
        assert!(!p.items.is_empty(), "a prev cursor leads to rows: {label}");
        assert!(p.items.len() as u64 <= size, "{label}");
        assert!(
            p.next.is_some(),
            "a page read backwards has a next: {label}"
        );
        back.splice(0..0, ids(&p.items));
        prev = p.prev;
        assert!(pages <= want.len() + 1, "paging does not end: {label}");
    }
    assert_eq!(back, want, "backward: {label}");
}

fn unfiltered(order: &[(Col, SortOrder)]) -> Case {
    Case {
        filter: None,
        order: order.to_vec(),
        limit: None,
        offset: 0,
    }
}

/// Keyset pagination, forwards then backwards, with orderings that have nulls and
/// ties in their keys, agrees with the unpaged order.
pub async fn readmodel_keyset_pagination_never_skips_or_repeats<F: ReadModelFactory>(f: &F) {
    let store = f.create().await;
    let data = dataset();
    let items = load(&store, &data).await;
    let plans: Vec<(Case, Vec<u64>)> = vec![
        (unfiltered(&[(Col::Group, SortOrder::Asc)]), vec![16, 1000]),
        (unfiltered(&[]), vec![60]),
        (unfiltered(&[(Col::X, SortOrder::Desc)]), vec![30]),
        (
            unfiltered(&[(Col::At, SortOrder::Asc), (Col::Flag, SortOrder::Desc)]),
            vec![24],
        ),
        (
            unfiltered(&[(Col::N, SortOrder::Desc), (Col::Name, SortOrder::Desc)]),
            vec![40],
        ),
        (
            Case::filtered(Fl::NotNull(Col::Flag))
                .ordered(&[(Col::Flag, SortOrder::Asc), (Col::Id, SortOrder::Desc)]),
            vec![30],
        ),
        (
            Case::filtered(Fl::Cmp(Col::Group, Op::Eq, Rv::Int(-1))),
            vec![5],
        ),
    ];
    for (case, sizes) in &plans {
        let want: Vec<String> = case
            .expect(&data)
            .into_iter()
            .map(|it| it.id.clone())
            .collect();
        for size in sizes {
            walk(&items, case, *size, &want).await;
        }
    }
}

/// Keyset pagination with small pages (down to one row), and cursors made from a
/// model with [`Query::cursor_for`].
pub async fn readmodel_keyset_pagination_page_sizes<F: ReadModelFactory>(f: &F) {
    let store = f.create().await;
    let data = dataset();
    let items = load(&store, &data).await;
    let case = Case::filtered(Fl::Cmp(Col::Group, Op::Eq, Rv::Int(1)))
        .ordered(&[(Col::Name, SortOrder::Asc)]);
    let want: Vec<String> = case
        .expect(&data)
        .into_iter()
        .map(|it| it.id.clone())
        .collect();
    assert!(want.len() > 20, "enough rows to page through");
    for size in [1, 7, want.len() as u64, want.len() as u64 + 1] {
        walk(&items, &case, size, &want).await;
    }
    // A cursor made from a model (Query::cursor_for) continues after that row.
    let q = Query::<Item>::new().order_desc("x");
    let case = Case {
        filter: None,
        order: vec![(Col::X, SortOrder::Desc)],
        limit: None,
        offset: 0,
    };
    let want = case.expect(&data);
    let pivot = want[100];
    let after = ok(
        items
            .find(&q.clone().after(q.cursor_for(pivot).expect("cursor")))
            .await,
        "after cursor_for",
    );
    assert_eq!(
        ids(&after),
        want[101..]
            .iter()
            .map(|it| it.id.clone())
            .collect::<Vec<_>>()
    );
    let before = ok(
        items
            .find(&q.clone().before(q.cursor_for(pivot).expect("cursor")))
            .await,
        "before cursor_for",
    );
    assert_eq!(
        ids(&before),
        want[..100]
            .iter()
            .map(|it| it.id.clone())
            .collect::<Vec<_>>()
    );
}

/// Rows written between pages: a keyset cursor neither skips nor repeats the rows
/// that stay, and sees the new rows after it (and not those before it).
pub async fn readmodel_keyset_cursors_survive_writes_between_pages<F: ReadModelFactory>(f: &F) {
    let store = f.create().await;
    let mut data = dataset();
    let items = load(&store, &data).await;
    let order = [(Col::Group, SortOrder::Asc), (Col::Name, SortOrder::Desc)];
    let q = Case {
        filter: None,
        order: order.to_vec(),
        limit: None,
        offset: 0,
    }
    .query()
    .limit(20);
    let mut page = ok(items.page(&q).await, "page");
    let mut r = Rng(99);
    let mut round = 0;
    while let Some(next) = page.next.clone() {
        round += 1;
        // Before the next page: delete an unseen row, add one before and one after the
        // cursor, and move a seen row to the end.
        let last = page.items.last().expect("a full page").model.clone();
        data.sort_by(|a, b| ref_cmp(&order, a, b));
        let pos = data
            .iter()
            .position(|it| it.id == last.id)
            .expect("present");
        if pos + 5 < data.len() {
            let victim = data.remove(pos + 1 + r.below(data.len() - pos - 1));
            assert!(ok(items.delete(victim.id.as_str()).await, "delete"));
        }
        let mut before = item(&format!("new-before-{round}"), Some("zz"), -5);
        before.extra = json!(round);
        let mut after = item(&format!("new-after-{round}"), None, 99);
        after.extra = json!(round);
        for it in [&before, &after] {
            ok(items.insert(it).await, "insert");
            data.push(it.clone());
        }
        let first_seen = page.items[0].model.id.clone();
        if let Some(mv) = data
            .iter_mut()
            .find(|it| it.id == first_seen && it.group < 50)
        {
            mv.group = 50 + round;
            ok(items.upsert(mv).await, "upsert");
        }
        // What remains after the cursor, by the reference, now.
        data.sort_by(|a, b| ref_cmp(&order, a, b));
        let cut = data
            .iter()
            .position(|it| ref_cmp(&order, it, &last) == Ordering::Greater)
            .unwrap_or(data.len());
        let rest: Vec<String> = data[cut..].iter().map(|it| it.id.clone()).collect();
        page = ok(items.page(&q.clone().after(next)).await, "next page");
        let got = ids(&page.items);
        assert_eq!(
            got,
            rest[..rest.len().min(20)],
            "page {round} after writes between pages"
        );
        assert!(round < 100, "paging does not end");
    }
    assert!(round >= 10, "several pages were read");
}

/// A cursor only works with the model and ordering it was made for; malformed
/// cursors are [`ReadModelError::InvalidCursor`]; the filter may change.
pub async fn readmodel_cursors_are_bound_to_their_model_and_ordering<F: ReadModelFactory>(f: &F) {
    let store = f.create().await;
    let data = dataset();
    let items = load(&store, &data).await;
    let counters = repo::<Counter, _>(&store);
    ok(counters.ensure_table().await, "ensure counters");
    let q = Query::<Item>::new().order_asc("group").limit(5);
    let page = ok(items.page(&q).await, "page");
    let next = page.next.clone().expect("more rows");
    let invalid = |e: ReadModelError, what: &str| {
        assert!(
            matches!(e, ReadModelError::InvalidCursor { .. }),
            "{what}: {e:?}"
        );
    };
    let others: Vec<(Query<Item>, &str)> = vec![
        (Query::new().order_desc("group"), "reversed ordering"),
        (Query::new().order_asc("name"), "another field"),
        (Query::new(), "no ordering"),
        (
            Query::new().order_asc("group").order_asc("name"),
            "an extra key",
        ),
    ];
    for (other, what) in others {
        invalid(
            refused(items.find(&other.clone().after(next.clone())).await, what),
            what,
        );
        invalid(
            refused(items.page(&other.before(next.clone())).await, what),
            what,
        );
    }
    invalid(
        refused(
            counters
                .find(&Query::new().order_asc("hits").after(next.clone()))
                .await,
            "another model",
        ),
        "another model",
    );
    for garbage in ["", "zz", "0", "7b7d", "not a cursor", "7b226d223a317d"] {
        invalid(
            refused(
                items
                    .find(&Query::new().order_asc("group").after(Cursor::new(garbage)))
                    .await,
                garbage,
            ),
            garbage,
        );
    }
    // The same ordering with another filter accepts it; the text form round-trips.
    let text: Cursor = next.as_str().parse().expect("infallible");
    let filtered: Vec<Versioned<Item>> = ok(
        items
            .find(&Query::new().order_asc("group").eq("flag", true).after(text))
            .await,
        "same ordering, other filter",
    );
    let mut all: Vec<&Item> = data.iter().collect();
    all.sort_by(|a, b| ref_cmp(&[(Col::Group, SortOrder::Asc)], a, b));
    let last = page.items.last().expect("a page").model.clone();
    let want: Vec<String> = all
        .into_iter()
        .filter(|it| ref_cmp(&[(Col::Group, SortOrder::Asc)], it, &last) == Ordering::Greater)
        .filter(|it| it.flag == Some(true))
        .map(|it| it.id.clone())
        .collect();
    assert_eq!(ids(&filtered), want);
}

/// `delete_where` deletes exactly the reference's rows and says how many; `count`
/// follows.
pub async fn readmodel_delete_where_and_count_match_the_reference<F: ReadModelFactory>(f: &F) {
    let store = f.create().await;
    let mut data = dataset();
    let items = load(&store, &data).await;
    let deletes = [
        Fl::Cmp(Col::Group, Op::Eq, Rv::Int(2)),
        Fl::In(Col::Name, vec![text("%"), text("_"), text("\\"), text("é")]),
        Fl::Starts(Col::Name, "a_"),
        Fl::Any(vec![
            Fl::Cmp(Col::N, Op::Eq, Rv::Int(i64::MIN)),
            Fl::All(vec![
                Fl::IsNull(Col::X),
                Fl::Cmp(Col::Flag, Op::Eq, Rv::Bool(false)),
            ]),
        ]),
        Fl::Cmp(Col::At, Op::Le, tsv("1970-01-01T00:00:00Z")),
        Fl::In(Col::Group, Vec::new()),
        Fl::Like(Col::Id, "\\%%"),
        Fl::Cmp(Col::X, Op::Eq, Rv::Int(0)),
    ];
    for d in &deletes {
        let want = data.iter().filter(|it| d.eval(it)).count() as u64;
        let q = Query::<Item>::new().filter(d.filter());
        assert_eq!(ok(items.count(&q).await, "count"), want, "count {d:?}");
        assert_eq!(
            ok(items.delete_where(&q).await, "delete_where"),
            want,
            "{d:?}"
        );
        data.retain(|it| !d.eval(it));
        assert_eq!(
            ok(items.count(&q).await, "count"),
            0,
            "after deleting {d:?}"
        );
        let left: Vec<String> = ok(items.find(&Query::new()).await, "find")
            .into_iter()
            .map(|v| v.model.id)
            .collect();
        let mut want_left: Vec<&Item> = data.iter().collect();
        want_left.sort_by(|a, b| ref_cmp(&[], a, b));
        assert_eq!(
            left,
            want_left.iter().map(|it| it.id.clone()).collect::<Vec<_>>(),
            "rows left after {d:?}"
        );
    }
    assert_eq!(
        ok(items.count(&Query::new()).await, "count"),
        data.len() as u64
    );
    assert_eq!(
        ok(items.delete_where(&Query::all()).await, "delete all"),
        data.len() as u64
    );
    assert_eq!(ok(items.count(&Query::new()).await, "count"), 0);
}

/// Concurrent `modify` calls on one row lose no update.
pub async fn readmodel_concurrent_modify_loses_no_update<F: ReadModelFactory>(f: &F) {
    let store = f.create().await;
    let counters = repo::<Counter, _>(&store);
    ok(counters.ensure_table().await, "ensure_table");
    let c = Counter {
        id: 1,
        label: "shared".into(),
        hits: 0,
    };
    ok(counters.insert(&c).await, "insert");
    let workers = (0..6).map(|_| {
        let counters = counters.clone();
        async move {
            for _ in 0..8 {
                ok(counters.modify(1, |c| c.hits += 1).await, "modify");
            }
        }
    });
    futures::future::join_all(workers).await;
    let got = ok(counters.get(1).await, "get").expect("stored");
    assert_eq!(got.model.hits, 48);
    assert_eq!(got.version, 49);
}
