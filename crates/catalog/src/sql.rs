//! The one way the catalog's logic talks to a database, whichever it is: SQL
//! text with `?N` placeholders, values of SQLite's four kinds, rows read by
//! column index. The logic (the modules beside this one) is written once against
//! [`Db`]; each engine (`engine::sqlite`, `engine::postgres`) answers it. The
//! calls mirror rusqlite's (`prepare_cached`, `query_row`, `query_map`,
//! `execute`, `params!`, `optional`) so that the logic reads as plain SQL code.

use crate::error::{CatalogError, Result};

/// A value bound to a statement or read from a row. Booleans travel as 0 and 1
/// (SQLite's way); the PostgreSQL engine converts to and from BOOLEAN columns.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

/// A database as the catalog's logic uses it: inside a transaction the engine
/// opened (one that writes, or a consistent snapshot that reads).
pub trait Db {
    /// Runs a statement that returns rows; all of them (queries are bounded by
    /// their LIMIT or by what they select).
    fn rows(&self, sql: &str, args: Vec<Value>) -> Result<Vec<Row>>;
    /// Runs a statement and returns how many rows it changed.
    fn run(&self, sql: &str, args: Vec<Value>) -> Result<usize>;
    /// Which SQL dialect answers, for the few clauses only one of them has.
    fn dialect(&self) -> Dialect;
}

/// The SQL dialects the catalog speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl<'a> dyn Db + 'a {
    /// A statement to run (engines cache the prepared form by its text).
    pub fn prepare_cached(&self, sql: &str) -> Result<Stmt<'_, 'a>> {
        Ok(Stmt {
            db: self,
            sql: sql.to_owned(),
        })
    }

    /// Runs `sql` with `args`, as rusqlite's `Connection::execute`.
    pub fn execute(&self, sql: &str, args: impl Params) -> Result<usize> {
        self.run(sql, args.into_values())
    }

    /// `FOR UPDATE SKIP LOCKED` where rows can be locked one by one
    /// (PostgreSQL); nothing on SQLite, whose writers take turns anyway.
    pub fn skip_locked(&self) -> &'static str {
        match self.dialect() {
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
            Dialect::Sqlite => "",
        }
    }
}

/// A statement bound to a database.
pub struct Stmt<'d, 'a> {
    db: &'d (dyn Db + 'a),
    sql: String,
}

impl Stmt<'_, '_> {
    pub fn execute(&mut self, args: impl Params) -> Result<usize> {
        self.db.run(&self.sql, args.into_values())
    }

    /// The first row, mapped; [`RowError::Missing`] when there is none.
    pub fn query_row<T>(
        &mut self,
        args: impl Params,
        f: impl FnOnce(&Row) -> Result<T>,
    ) -> std::result::Result<T, RowError> {
        let rows = self
            .db
            .rows(&self.sql, args.into_values())
            .map_err(RowError::Failed)?;
        let row = rows.first().ok_or(RowError::Missing)?;
        f(row).map_err(RowError::Failed)
    }

    /// Every row, mapped.
    pub fn query_map<T>(
        &mut self,
        args: impl Params,
        mut f: impl FnMut(&Row) -> Result<T>,
    ) -> Result<std::vec::IntoIter<Result<T>>> {
        let rows = self.db.rows(&self.sql, args.into_values())?;
        Ok(rows.iter().map(&mut f).collect::<Vec<_>>().into_iter())
    }
}

/// Why `query_row` has no answer.
#[derive(Debug)]
pub enum RowError {
    Missing,
    Failed(CatalogError),
}

impl From<RowError> for CatalogError {
    fn from(e: RowError) -> Self {
        match e {
            RowError::Missing => {
                CatalogError::Corrupt("a row the catalog refers to is missing".into())
            }
            RowError::Failed(e) => e,
        }
    }
}

/// `query_row(...).optional()`: no row is `None`, not an error.
pub trait OptionalExtension<T> {
    fn optional(self) -> Result<Option<T>>;
}

impl<T> OptionalExtension<T> for std::result::Result<T, RowError> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(RowError::Missing) => Ok(None),
            Err(RowError::Failed(e)) => Err(e),
        }
    }
}

/// One row of a result.
#[derive(Debug, Clone)]
pub struct Row(pub Vec<Value>);

/// A column position (a trait so that `r.get::<_, T>(0)` reads as rusqlite's).
pub trait RowIndex {
    fn index(self) -> usize;
}

impl RowIndex for usize {
    fn index(self) -> usize {
        self
    }
}

impl Row {
    pub fn get<I: RowIndex, T: FromValue>(&self, i: I) -> Result<T> {
        let i = i.index();
        let v = self
            .0
            .get(i)
            .ok_or_else(|| CatalogError::Corrupt(format!("no column {i} in a catalog row")))?;
        T::from_value(v)
            .map_err(|kind| CatalogError::Corrupt(format!("column {i} is {v:?}, not {kind}")))
    }
}

/// Arguments of a statement.
pub trait Params {
    fn into_values(self) -> Vec<Value>;
}

impl Params for Vec<Value> {
    fn into_values(self) -> Vec<Value> {
        self
    }
}

impl<T: ToValue, const N: usize> Params for [T; N] {
    fn into_values(self) -> Vec<Value> {
        self.iter().map(ToValue::to_value).collect()
    }
}

/// `params![a, b, c]`: arguments of mixed types.
#[macro_export]
#[doc(hidden)]
macro_rules! params {
    ($($x:expr),* $(,)?) => {
        vec![$($crate::sql::ToValue::to_value(&$x)),*] as Vec<$crate::sql::Value>
    };
}

pub trait ToValue {
    fn to_value(&self) -> Value;
}

impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}

impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value {
        self.as_ref().map_or(Value::Null, ToValue::to_value)
    }
}

impl ToValue for i64 {
    fn to_value(&self) -> Value {
        Value::Int(*self)
    }
}

impl ToValue for i32 {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}

impl ToValue for u32 {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}

impl ToValue for bool {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}

impl ToValue for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_owned())
    }
}

impl ToValue for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}

impl ToValue for [u8] {
    fn to_value(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}

impl ToValue for Vec<u8> {
    fn to_value(&self) -> Value {
        Value::Blob(self.clone())
    }
}

impl ToValue for Value {
    fn to_value(&self) -> Value {
        self.clone()
    }
}

/// A Rust value read from a column; the error names the kind expected.
pub trait FromValue: Sized {
    fn from_value(v: &Value) -> std::result::Result<Self, &'static str>;
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: &Value) -> std::result::Result<Self, &'static str> {
        match v {
            Value::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}

impl FromValue for i64 {
    fn from_value(v: &Value) -> std::result::Result<Self, &'static str> {
        match v {
            Value::Int(i) => Ok(*i),
            _ => Err("an integer"),
        }
    }
}

impl FromValue for i32 {
    fn from_value(v: &Value) -> std::result::Result<Self, &'static str> {
        i64::from_value(v).and_then(|i| i32::try_from(i).map_err(|_| "a 32-bit integer"))
    }
}

impl FromValue for u32 {
    fn from_value(v: &Value) -> std::result::Result<Self, &'static str> {
        i64::from_value(v).and_then(|i| u32::try_from(i).map_err(|_| "a 32-bit count"))
    }
}

impl FromValue for bool {
    fn from_value(v: &Value) -> std::result::Result<Self, &'static str> {
        i64::from_value(v).map(|i| i != 0).map_err(|_| "a boolean")
    }
}

impl FromValue for String {
    fn from_value(v: &Value) -> std::result::Result<Self, &'static str> {
        match v {
            Value::Text(s) => Ok(s.clone()),
            _ => Err("text"),
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(v: &Value) -> std::result::Result<Self, &'static str> {
        match v {
            Value::Blob(b) => Ok(b.clone()),
            _ => Err("bytes"),
        }
    }
}

/// `?N` placeholders as PostgreSQL's `$N`, outside quoted text.
pub fn dollar_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' {
            quoted = !quoted;
        }
        if c == '?' && !quoted && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_dollars_outside_quotes() {
        assert_eq!(
            dollar_placeholders("SELECT a FROM t WHERE b = ?1 AND c = '?2' AND d IN (?12)"),
            "SELECT a FROM t WHERE b = $1 AND c = '?2' AND d IN ($12)"
        );
    }
}
