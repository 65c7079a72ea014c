//! SQL for read-model queries, shared by the SQL backends (for adapter authors).
//!
//! A [`Plan`] renders to one parameterized statement per [`Dialect`]; values are
//! never spliced into the SQL text (limit and offset are integers). Identifiers come
//! from a validated [`Schema`] and are always double-quoted. The rendering is what
//! makes every backend agree:
//!
//! | concern | SQLite | PostgreSQL |
//! |---|---|---|
//! | text comparison and order | `BINARY` (the default: bytes) | `COLLATE "C"` (bytes) |
//! | nulls in `ORDER BY` | `NULLS FIRST` ascending, `NULLS LAST` descending | same |
//! | `like` | `GLOB` on [`LikePattern::to_glob`](super::LikePattern::to_glob) (case-sensitive) | `LIKE … ESCAPE '\'` on [`LikePattern::to_like`](super::LikePattern::to_like) |
//! | keyset (`after`) | expanded to `(k1 > c1) OR (k1 = c1 AND k2 > c2) …`, with the null rules | same |
//! | offset without limit | `LIMIT -1 OFFSET n` | `OFFSET n` |
//!
//! Parameters are returned as [`Value`]s, never null, in placeholder order; a backend
//! binds them as its own types (a timestamp as microseconds on SQLite, as
//! `timestamptz` on PostgreSQL, a bool as 0/1 on SQLite).

use std::fmt::Write as _;

use super::{FieldType, Plan, Pred, Schema, SortOrder, Value};

/// The SQL flavour to render.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Dialect {
    /// SQLite (3.30 or newer, for `NULLS FIRST`): `?N` placeholders, `GLOB` for `like`.
    Sqlite,
    /// PostgreSQL: `$N` placeholders, `COLLATE "C"`, `LIKE … ESCAPE`.
    Postgres,
}

/// A rendered statement and its parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct SqlStatement {
    /// The SQL text.
    pub sql: String,
    /// The parameters, in placeholder order (`?1`/`$1` first).
    pub params: Vec<Value>,
}

/// Double-quotes an identifier (the schema's names hold no quote; any quote is
/// doubled anyway).
pub fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

impl Dialect {
    /// The `n`-th placeholder (from 1).
    pub fn placeholder(self, n: usize) -> String {
        match self {
            Dialect::Sqlite => format!("?{n}"),
            Dialect::Postgres => format!("${n}"),
        }
    }

    /// `SELECT {columns} FROM {table} WHERE … ORDER BY … LIMIT … OFFSET …` for the
    /// rows `plan` selects. `table` is the quoted (qualified) table name.
    pub fn select(self, table: &str, columns: &str, schema: &Schema, plan: &Plan) -> SqlStatement {
        let mut r = Renderer::new(self, schema);
        let mut sql = format!("SELECT {columns} FROM {table}");
        let mut conds = Vec::new();
        if let Some(f) = plan.filter() {
            conds.push(r.pred(f));
        }
        if let Some(keys) = plan.keyset() {
            conds.push(r.keyset(plan, keys));
        }
        if !conds.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conds.join(" AND "));
        }
        sql.push_str(" ORDER BY ");
        let order: Vec<String> = plan
            .order()
            .iter()
            .map(|k| {
                let col = r.column(k.field);
                match k.order {
                    SortOrder::Asc => format!("{col} ASC NULLS FIRST"),
                    SortOrder::Desc => format!("{col} DESC NULLS LAST"),
                }
            })
            .collect();
        sql.push_str(&order.join(", "));
        let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        match (self, plan.limit()) {
            (_, Some(l)) => {
                let _ = write!(sql, " LIMIT {}", clamp(l));
            }
            (Dialect::Sqlite, None) if plan.offset() > 0 => sql.push_str(" LIMIT -1"),
            _ => {}
        }
        if plan.offset() > 0 {
            let _ = write!(sql, " OFFSET {}", clamp(plan.offset()));
        }
        SqlStatement {
            sql,
            params: r.params,
        }
    }

    /// `SELECT COUNT(*) FROM {table} WHERE …` over [`Plan::filter`].
    pub fn count(self, table: &str, schema: &Schema, plan: &Plan) -> SqlStatement {
        self.filtered(format!("SELECT COUNT(*) FROM {table}"), schema, plan)
    }

    /// `DELETE FROM {table} WHERE …` over [`Plan::filter`] (every row when it is
    /// `None`).
    pub fn delete(self, table: &str, schema: &Schema, plan: &Plan) -> SqlStatement {
        self.filtered(format!("DELETE FROM {table}"), schema, plan)
    }

    fn filtered(self, mut sql: String, schema: &Schema, plan: &Plan) -> SqlStatement {
        let mut r = Renderer::new(self, schema);
        if let Some(f) = plan.filter() {
            sql.push_str(" WHERE ");
            sql.push_str(&r.pred(f));
        }
        SqlStatement {
            sql,
            params: r.params,
        }
    }
}

struct Renderer<'s> {
    dialect: Dialect,
    schema: &'s Schema,
    params: Vec<Value>,
}

impl<'s> Renderer<'s> {
    fn new(dialect: Dialect, schema: &'s Schema) -> Self {
        Renderer {
            dialect,
            schema,
            params: Vec::new(),
        }
    }

    /// The column of field `i`, with the byte-order collation for text on PostgreSQL.
    fn column(&self, i: usize) -> String {
        let f = &self.schema.fields()[i];
        let col = quote(f.name());
        match (self.dialect, f.field_type()) {
            (Dialect::Postgres, FieldType::Text) => format!("{col} COLLATE \"C\""),
            _ => col,
        }
    }

    fn bare_column(&self, i: usize) -> String {
        quote(self.schema.fields()[i].name())
    }

    fn param(&mut self, v: Value) -> String {
        self.params.push(v);
        self.dialect.placeholder(self.params.len())
    }

    fn pred(&mut self, p: &Pred) -> String {
        match p {
            Pred::Const(true) => "(1 = 1)".to_owned(),
            Pred::Const(false) => "(1 = 0)".to_owned(),
            Pred::Compare { field, op, value } => {
                let col = self.column(*field);
                let ph = self.param(value.clone());
                format!("{col} {} {ph}", op.sql())
            }
            Pred::In { field, values } => {
                let col = self.column(*field);
                let phs: Vec<String> = values.iter().map(|v| self.param(v.clone())).collect();
                format!("{col} IN ({})", phs.join(", "))
            }
            Pred::Like { field, pattern } => {
                let col = self.bare_column(*field);
                match self.dialect {
                    Dialect::Sqlite => {
                        let ph = self.param(Value::Text(pattern.to_glob()));
                        format!("{col} GLOB {ph}")
                    }
                    Dialect::Postgres => {
                        let ph = self.param(Value::Text(pattern.to_like()));
                        format!("{col} LIKE {ph} ESCAPE E'\\\\'")
                    }
                }
            }
            Pred::IsNull { field } => format!("{} IS NULL", self.bare_column(*field)),
            Pred::IsNotNull { field } => format!("{} IS NOT NULL", self.bare_column(*field)),
            Pred::And(ps) => self.group(ps, " AND ", "(1 = 1)"),
            Pred::Or(ps) => self.group(ps, " OR ", "(1 = 0)"),
        }
    }

    fn group(&mut self, ps: &[Pred], sep: &str, empty: &str) -> String {
        if ps.is_empty() {
            return empty.to_owned();
        }
        let parts: Vec<String> = ps.iter().map(|p| self.pred(p)).collect();
        format!("({})", parts.join(sep))
    }

    /// Rows strictly after `keys` in the plan's order, nulls being the smallest values:
    /// `(k1 after c1) OR (k1 = c1 AND k2 after c2) OR …`.
    fn keyset(&mut self, plan: &Plan, keys: &[Value]) -> String {
        let mut disjuncts = Vec::new();
        let mut equal_prefix: Vec<String> = Vec::new();
        let n = plan.order().len().min(keys.len());
        for (i, (k, c)) in plan.order().iter().zip(keys).enumerate() {
            let col = self.column(k.field);
            let bare = self.bare_column(k.field);
            let after = match (k.order, c.is_null()) {
                (SortOrder::Asc, true) => Some(format!("{bare} IS NOT NULL")),
                (SortOrder::Asc, false) => {
                    let ph = self.param(c.clone());
                    Some(format!("{col} > {ph}"))
                }
                // Nothing sorts after a null, descending.
                (SortOrder::Desc, true) => None,
                (SortOrder::Desc, false) => {
                    let ph = self.param(c.clone());
                    Some(format!("({col} < {ph} OR {bare} IS NULL)"))
                }
            };
            if let Some(after) = after {
                if equal_prefix.is_empty() {
                    disjuncts.push(after);
                } else {
                    disjuncts.push(format!("({} AND {after})", equal_prefix.join(" AND ")));
                }
            }
            if i + 1 == n {
                break;
            }
            let eq = if c.is_null() {
                format!("{bare} IS NULL")
            } else {
                let ph = self.param(c.clone());
                format!("{col} = {ph}")
            };
            equal_prefix.push(eq);
        }
        if disjuncts.is_empty() {
            return "(1 = 0)".to_owned();
        }
        format!("({})", disjuncts.join(" OR "))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::readmodel::query::Purpose;
    use crate::readmodel::{Field, Query, ReadModel};

    #[derive(serde::Serialize, serde::Deserialize)]
    struct T {
        id: String,
        name: String,
        n: Option<i64>,
    }

    impl ReadModel for T {
        const NAME: &'static str = "t";
        const FIELDS: &'static [Field] = &[
            Field::text("id"),
            Field::text("name"),
            Field::integer("n").nullable(),
        ];
    }

    #[test]
    fn renders_each_dialect() {
        let s = Schema::of::<T>().unwrap();
        let q = Query::<T>::new()
            .like("name", r"a\_%")
            .filter(
                crate::readmodel::Filter::in_list("n", [1, 2])
                    .or(crate::readmodel::Filter::is_null("n")),
            )
            .order_desc("n")
            .limit(5)
            .offset(2);
        let q = q.clone().after(
            q.cursor_for(&T {
                id: "x".into(),
                name: "a_b".into(),
                n: Some(3),
            })
            .unwrap(),
        );
        let plan = q.plan(&s, Purpose::Find { extra: false }).unwrap();
        let pg = Dialect::Postgres.select("\"s\".\"rm_t\"", "doc", &s, &plan);
        assert_eq!(
            pg.sql,
            "SELECT doc FROM \"s\".\"rm_t\" WHERE (\"name\" LIKE $1 ESCAPE E'\\\\' AND \
             (\"n\" IN ($2, $3) OR \"n\" IS NULL)) AND ((\"n\" < $4 OR \"n\" IS NULL) OR \
             (\"n\" = $5 AND \"id\" COLLATE \"C\" > $6)) \
             ORDER BY \"n\" DESC NULLS LAST, \"id\" COLLATE \"C\" ASC NULLS FIRST LIMIT 5 OFFSET 2"
        );
        assert_eq!(pg.params[0], Value::from(r"a\_%"));
        assert_eq!(pg.params.len(), 7 - 1);
        let lite = Dialect::Sqlite.select("\"rm_t\"", "doc", &s, &plan);
        assert!(lite.sql.contains("\"name\" GLOB ?1"), "{}", lite.sql);
        assert_eq!(lite.params[0], Value::from("a_*"));

        let all = Query::<T>::new()
            .offset(3)
            .plan(&s, Purpose::Find { extra: false })
            .unwrap();
        assert!(
            Dialect::Sqlite
                .select("t", "doc", &s, &all)
                .sql
                .ends_with("LIMIT -1 OFFSET 3")
        );
        assert!(
            Dialect::Postgres
                .select("t", "doc", &s, &all)
                .sql
                .ends_with("NULLS FIRST OFFSET 3")
        );
        let del = Query::<T>::all().plan(&s, Purpose::Delete).unwrap();
        assert_eq!(Dialect::Postgres.delete("t", &s, &del).sql, "DELETE FROM t");
    }
}
