//! What differs between the SQLite and PostgreSQL dialects as far as the store's SQL goes, so
//! that each statement is written once: placeholders (`?`/`?N` → `$N`), reading a column
//! whatever the row type ([`DbRow`]), and bind values the writer passes to either driver
//! ([`Arg`]). It runs nothing itself and knows no table.

use std::borrow::Cow;

use sqlx::Row;

/// SQLite's statement text, unchanged (the store's SQL is written in SQLite's dialect).
pub(crate) fn as_is(sql: &str) -> Cow<'_, str> {
    Cow::Borrowed(sql)
}

/// The statement text for PostgreSQL (see [`numbered`]).
pub(crate) fn pg(sql: &str) -> Cow<'_, str> {
    Cow::Owned(numbered(sql))
}

/// Rewrites SQLite placeholders into PostgreSQL's: `?N` becomes `$N`, and a bare `?` becomes
/// `$k` for the k-th bare one (a statement uses one style or the other). Question marks inside
/// single-quoted literals are left alone.
pub(crate) fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut next = 0;
    let mut in_literal = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_literal = !in_literal;
                out.push(c);
            }
            '?' if !in_literal => {
                out.push('$');
                if chars.peek().is_some_and(char::is_ascii_digit) {
                    while let Some(d) = chars.next_if(char::is_ascii_digit) {
                        out.push(d);
                    }
                } else {
                    next += 1;
                    out.push_str(&next.to_string());
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// PostgreSQL only: the database server's clock, in epoch milliseconds (`clock_timestamp()`,
/// the time the expression is evaluated, not the transaction's start). What the cluster's
/// presence rows are stamped and judged with, so staleness is one clock's verdict, not a
/// comparison between the clocks of several nodes.
macro_rules! pg_now_ms {
    () => {
        "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::bigint"
    };
}
pub(crate) use pg_now_ms;

/// A value bound to a writer statement, the same for both drivers.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg<'a> {
    Int(i64),
    OptInt(Option<i64>),
    Text(&'a str),
    OptText(Option<&'a str>),
    Bool(bool),
}

impl From<i64> for Arg<'_> {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}
impl From<u32> for Arg<'_> {
    fn from(v: u32) -> Self {
        Self::Int(v.into())
    }
}
impl From<u16> for Arg<'_> {
    fn from(v: u16) -> Self {
        Self::Int(v.into())
    }
}
impl From<u8> for Arg<'_> {
    fn from(v: u8) -> Self {
        Self::Int(v.into())
    }
}
impl From<Option<u32>> for Arg<'_> {
    fn from(v: Option<u32>) -> Self {
        Self::OptInt(v.map(i64::from))
    }
}
impl From<Option<i64>> for Arg<'_> {
    fn from(v: Option<i64>) -> Self {
        Self::OptInt(v)
    }
}
impl<'a> From<&'a str> for Arg<'a> {
    fn from(v: &'a str) -> Self {
        Self::Text(v)
    }
}
impl<'a> From<&'a String> for Arg<'a> {
    fn from(v: &'a String) -> Self {
        Self::Text(v)
    }
}
impl<'a> From<Option<&'a str>> for Arg<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Self::OptText(v)
    }
}
impl<'a> From<&'a Option<String>> for Arg<'a> {
    fn from(v: &'a Option<String>) -> Self {
        Self::OptText(v.as_deref())
    }
}
impl From<bool> for Arg<'_> {
    fn from(v: bool) -> Self {
        Self::Bool(v)
    }
}

impl rusqlite::ToSql for Arg<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            Self::Int(v) => v.to_sql(),
            Self::OptInt(v) => v.to_sql(),
            Self::Text(v) => v.to_sql(),
            Self::OptText(v) => v.to_sql(),
            Self::Bool(v) => v.to_sql(),
        }
    }
}

/// Binds `args` in order to a PostgreSQL query.
pub(crate) fn bind_pg<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    args: &[Arg<'q>],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    for a in args {
        q = match *a {
            Arg::Int(v) => q.bind(v),
            Arg::OptInt(v) => q.bind(v),
            Arg::Text(v) => q.bind(v),
            Arg::OptText(v) => q.bind(v),
            Arg::Bool(v) => q.bind(v),
        };
    }
    q
}

/// One result row of either driver (sqlx SQLite, sqlx PostgreSQL, rusqlite), read by column
/// index. Integers are always 64-bit (SQLite's INTEGER, PostgreSQL's BIGINT).
pub(crate) trait DbRow {
    fn int(&self, i: usize) -> Result<i64, super::StoreError>;
    fn opt_int(&self, i: usize) -> Result<Option<i64>, super::StoreError>;
    fn text(&self, i: usize) -> Result<String, super::StoreError>;
    fn opt_text(&self, i: usize) -> Result<Option<String>, super::StoreError>;
}

macro_rules! sqlx_db_row {
    ($($row:ty),*) => {$(
        impl DbRow for $row {
            fn int(&self, i: usize) -> Result<i64, super::StoreError> {
                Ok(self.try_get(i)?)
            }
            fn opt_int(&self, i: usize) -> Result<Option<i64>, super::StoreError> {
                Ok(self.try_get(i)?)
            }
            fn text(&self, i: usize) -> Result<String, super::StoreError> {
                Ok(self.try_get(i)?)
            }
            fn opt_text(&self, i: usize) -> Result<Option<String>, super::StoreError> {
                Ok(self.try_get(i)?)
            }
        }
    )*};
}
sqlx_db_row!(sqlx::sqlite::SqliteRow, sqlx::postgres::PgRow);

impl DbRow for rusqlite::Row<'_> {
    fn int(&self, i: usize) -> Result<i64, super::StoreError> {
        Ok(self.get(i)?)
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>, super::StoreError> {
        Ok(self.get(i)?)
    }
    fn text(&self, i: usize) -> Result<String, super::StoreError> {
        Ok(self.get(i)?)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>, super::StoreError> {
        Ok(self.get(i)?)
    }
}

#[cfg(test)]
mod tests {
    use super::numbered;

    #[test]
    fn placeholders_become_numbered() {
        assert_eq!(
            numbered("SELECT a FROM t WHERE b = ? AND c IN ('?', 'x') AND d = ?"),
            "SELECT a FROM t WHERE b = $1 AND c IN ('?', 'x') AND d = $2"
        );
        assert_eq!(
            numbered("UPDATE t SET a = ?1, b = ?12 WHERE c = ?1"),
            "UPDATE t SET a = $1, b = $12 WHERE c = $1"
        );
        assert_eq!(numbered("SELECT 1"), "SELECT 1");
    }
}
