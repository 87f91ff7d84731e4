//! D1: an SQLite-dialect database bound in `d1_databases`, with the shape of
//! D1's JavaScript API.
//!
//! ```ignore
//! let db = env.d1("DB")?;
//! db.exec("CREATE TABLE IF NOT EXISTS posts(id INTEGER PRIMARY KEY, title TEXT)").await?;
//! let meta = db.prepare("INSERT INTO posts(title) VALUES (?)").bind(["hello"]).run().await?;
//! let post: Option<Post> = db
//!     .prepare("SELECT * FROM posts WHERE id = ?1")
//!     .bind([meta.last_row_id])
//!     .first()
//!     .await?;
//! let all = db.prepare("SELECT id, title FROM posts").all().await?;
//! for row in all.rows() {
//!     println!("{:?} {:?}", row.get("id"), row.get("title"));
//! }
//! ```
//!
//! Every statement run (and every `batch` or `exec`) counts against the
//! request's subrequest budget.

use std::fmt;
use std::rc::Rc;

use crate::Result;
use crate::bindings::isola::worker::sql as wit;
use crate::error::check;

/// A database; see [`Env::d1`](crate::Env::d1).
#[derive(Clone)]
pub struct D1 {
    database: Rc<wit::Database>,
}

impl fmt::Debug for D1 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("D1").finish_non_exhaustive()
    }
}

impl D1 {
    pub(crate) fn open(binding: &str) -> Result<Self> {
        Ok(D1 {
            database: Rc::new(check(wit::Database::open(binding))?),
        })
    }

    /// A statement with `?` / `?NNN` placeholders; give them values with
    /// [`D1Statement::bind`], run it with `all`, `first`, `run` or `raw`.
    pub fn prepare(&self, sql: impl Into<String>) -> D1Statement {
        D1Statement {
            database: self.database.clone(),
            sql: sql.into(),
            params: Vec::new(),
        }
    }

    /// Run `statements` in one transaction: all of them take effect or, if
    /// one fails, none. One result per statement, in order. The statements
    /// run on this database whichever `D1` prepared them.
    pub async fn batch(
        &self,
        statements: impl IntoIterator<Item = D1Statement>,
    ) -> Result<Vec<D1Result>> {
        let statements: Vec<wit::Statement> = statements.into_iter().map(|s| s.to_wit()).collect();
        let results = check(self.database.batch(&statements))?;
        Ok(results.into_iter().map(D1Result::from_wit).collect())
    }

    /// Run `;`-separated statements without parameters (migrations, schema
    /// setup). Returns how many statements ran.
    pub async fn exec(&self, sql: &str) -> Result<D1ExecResult> {
        let result = check(self.database.exec(sql))?;
        Ok(D1ExecResult {
            count: result.count,
            duration: result.duration_ms,
        })
    }
}

/// A prepared statement; see [`D1::prepare`]. Cloning one is cheap, so a
/// statement can be bound with different values and run several times.
#[derive(Clone)]
pub struct D1Statement {
    database: Rc<wit::Database>,
    sql: String,
    params: Vec<D1Value>,
}

impl fmt::Debug for D1Statement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("D1Statement")
            .field("sql", &self.sql)
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl D1Statement {
    /// Give the placeholders their values, replacing any bound before:
    /// `.bind((title, body))`, `.bind([id])`, `.bind(vec![D1Value::Null])`.
    pub fn bind(mut self, params: impl D1Params) -> Self {
        self.params = params.into_params();
        self
    }

    pub fn sql(&self) -> &str {
        &self.sql
    }

    pub fn params(&self) -> &[D1Value] {
        &self.params
    }

    /// Every row, as [`D1Row`]s (or typed with [`D1Result::results`]), and
    /// the statement's [`D1Meta`].
    pub async fn all(&self) -> Result<D1Result> {
        let rows = check(self.database.query(&self.to_wit()))?;
        Ok(D1Result::from_wit(rows))
    }

    /// The first row, if any, deserialized from a JSON object of column
    /// names to values (blobs become arrays of numbers, so a `Vec<u8>`
    /// field reads them). `T` may be `serde_json::Value`.
    #[cfg(feature = "json")]
    pub async fn first<T: serde::de::DeserializeOwned>(&self) -> Result<Option<T>> {
        self.first_row()
            .await?
            .map(|row| row.deserialize())
            .transpose()
    }

    /// The first row, if any.
    pub async fn first_row(&self) -> Result<Option<D1Row>> {
        Ok(self.all().await?.into_rows().into_iter().next())
    }

    /// Run the statement for its effect: only the [`D1Meta`] comes back
    /// (`changes`, `last_row_id`...).
    pub async fn run(&self) -> Result<D1Meta> {
        Ok(self.all().await?.meta)
    }

    /// The rows as arrays of values, in column order.
    pub async fn raw(&self) -> Result<Vec<Vec<D1Value>>> {
        Ok(self.all().await?.rows)
    }

    fn to_wit(&self) -> wit::Statement {
        wit::Statement {
            sql: self.sql.clone(),
            params: self.params.iter().cloned().map(D1Value::into_wit).collect(),
        }
    }
}

/// A value in a row or bound to a placeholder: SQLite's storage classes.
#[derive(Clone, Debug, PartialEq)]
pub enum D1Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl D1Value {
    pub fn is_null(&self) -> bool {
        matches!(self, D1Value::Null)
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            D1Value::Integer(n) => Some(*n),
            _ => None,
        }
    }

    /// A real, or an integer converted to one.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            D1Value::Real(x) => Some(*x),
            D1Value::Integer(n) => Some(*n as f64),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            D1Value::Text(text) => Some(text),
            _ => None,
        }
    }

    pub fn as_blob(&self) -> Option<&[u8]> {
        match self {
            D1Value::Blob(bytes) => Some(bytes),
            _ => None,
        }
    }

    /// The value as JSON, the way [`D1Statement::first`] sees it: blobs
    /// become arrays of numbers; a NaN or infinite real becomes `null`.
    #[cfg(feature = "json")]
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match self {
            D1Value::Null => Value::Null,
            D1Value::Integer(n) => Value::from(*n),
            D1Value::Real(x) => serde_json::Number::from_f64(*x).map_or(Value::Null, Value::Number),
            D1Value::Text(text) => Value::from(text.as_str()),
            D1Value::Blob(bytes) => Value::from(bytes.as_slice()),
        }
    }

    pub(crate) fn from_wit(value: wit::Value) -> Self {
        match value {
            wit::Value::Null => D1Value::Null,
            wit::Value::Integer(n) => D1Value::Integer(n),
            wit::Value::Real(x) => D1Value::Real(x),
            wit::Value::Text(text) => D1Value::Text(text),
            wit::Value::Blob(bytes) => D1Value::Blob(bytes),
        }
    }

    pub(crate) fn into_wit(self) -> wit::Value {
        match self {
            D1Value::Null => wit::Value::Null,
            D1Value::Integer(n) => wit::Value::Integer(n),
            D1Value::Real(x) => wit::Value::Real(x),
            D1Value::Text(text) => wit::Value::Text(text),
            D1Value::Blob(bytes) => wit::Value::Blob(bytes),
        }
    }
}

#[cfg(feature = "json")]
impl serde::Serialize for D1Value {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            D1Value::Null => serializer.serialize_unit(),
            D1Value::Integer(n) => serializer.serialize_i64(*n),
            D1Value::Real(x) => serializer.serialize_f64(*x),
            D1Value::Text(text) => serializer.serialize_str(text),
            D1Value::Blob(bytes) => serializer.collect_seq(bytes),
        }
    }
}

macro_rules! d1_value_from {
    ($($ty:ty => |$v:ident| $make:expr),* $(,)?) => {$(
        impl From<$ty> for D1Value {
            fn from($v: $ty) -> Self {
                $make
            }
        }
    )*};
}

d1_value_from! {
    i64 => |n| D1Value::Integer(n),
    i32 => |n| D1Value::Integer(n.into()),
    i16 => |n| D1Value::Integer(n.into()),
    i8 => |n| D1Value::Integer(n.into()),
    u32 => |n| D1Value::Integer(n.into()),
    u16 => |n| D1Value::Integer(n.into()),
    u8 => |n| D1Value::Integer(n.into()),
    bool => |b| D1Value::Integer(b.into()),
    f64 => |x| D1Value::Real(x),
    f32 => |x| D1Value::Real(x.into()),
    String => |text| D1Value::Text(text),
    &str => |text| D1Value::Text(text.to_owned()),
    &String => |text| D1Value::Text(text.clone()),
    Vec<u8> => |bytes| D1Value::Blob(bytes),
    &[u8] => |bytes| D1Value::Blob(bytes.to_vec()),
}

/// `None` binds `NULL`.
impl<T: Into<D1Value>> From<Option<T>> for D1Value {
    fn from(value: Option<T>) -> Self {
        value.map_or(D1Value::Null, Into::into)
    }
}

/// Values for [`D1Statement::bind`]: a `Vec` or array of one type, a slice,
/// `()` for none, or a tuple of up to 12 mixed types.
pub trait D1Params {
    fn into_params(self) -> Vec<D1Value>;
}

impl<T: Into<D1Value>> D1Params for Vec<T> {
    fn into_params(self) -> Vec<D1Value> {
        self.into_iter().map(Into::into).collect()
    }
}

impl<T: Into<D1Value>, const N: usize> D1Params for [T; N] {
    fn into_params(self) -> Vec<D1Value> {
        self.into_iter().map(Into::into).collect()
    }
}

impl<T: Into<D1Value> + Clone> D1Params for &[T] {
    fn into_params(self) -> Vec<D1Value> {
        self.iter().cloned().map(Into::into).collect()
    }
}

macro_rules! d1_params_tuple {
    ($($name:ident)*) => {
        impl<$($name: Into<D1Value>),*> D1Params for ($($name,)*) {
            #[allow(non_snake_case)]
            fn into_params(self) -> Vec<D1Value> {
                let ($($name,)*) = self;
                vec![$($name.into()),*]
            }
        }
    };
}

impl D1Params for () {
    fn into_params(self) -> Vec<D1Value> {
        Vec::new()
    }
}

d1_params_tuple!(A);
d1_params_tuple!(A B);
d1_params_tuple!(A B C);
d1_params_tuple!(A B C D);
d1_params_tuple!(A B C D E);
d1_params_tuple!(A B C D E F);
d1_params_tuple!(A B C D E F G);
d1_params_tuple!(A B C D E F G H);
d1_params_tuple!(A B C D E F G H I);
d1_params_tuple!(A B C D E F G H I J);
d1_params_tuple!(A B C D E F G H I J K);
d1_params_tuple!(A B C D E F G H I J K L);

/// What a statement did.
#[derive(Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "json", derive(serde::Serialize))]
pub struct D1Meta {
    /// Rows the statement scanned or returned.
    pub rows_read: u64,
    /// Rows inserted, updated or deleted.
    pub rows_written: u64,
    /// The rowid of the last row inserted.
    pub last_row_id: i64,
    /// Rows changed by the statement.
    pub changes: u64,
    /// Milliseconds the database took.
    pub duration: f64,
    /// Whether the statement changed the database.
    pub changed_db: bool,
}

/// The rows of [`D1Statement::all`] (and of each statement in
/// [`D1::batch`]) and what the statement did.
#[derive(Clone, Debug, PartialEq)]
pub struct D1Result {
    columns: Rc<[String]>,
    rows: Vec<Vec<D1Value>>,
    meta: D1Meta,
}

impl D1Result {
    fn from_wit(rows: wit::Rows) -> Self {
        let meta = rows.meta;
        D1Result {
            columns: rows.columns.into(),
            rows: rows
                .rows
                .into_iter()
                .map(|row| row.into_iter().map(D1Value::from_wit).collect())
                .collect(),
            meta: D1Meta {
                rows_read: meta.rows_read,
                rows_written: meta.rows_written,
                last_row_id: meta.last_row_id,
                changes: meta.changes,
                duration: meta.duration_ms,
                changed_db: meta.changed_db,
            },
        }
    }

    /// The result's column names, in order.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The rows, each a map of column names to values.
    pub fn rows(&self) -> Vec<D1Row> {
        self.rows
            .iter()
            .map(|values| D1Row {
                columns: self.columns.clone(),
                values: values.clone(),
            })
            .collect()
    }

    /// The rows, each a map of column names to values.
    pub fn into_rows(self) -> Vec<D1Row> {
        let columns = self.columns;
        self.rows
            .into_iter()
            .map(|values| D1Row {
                columns: columns.clone(),
                values,
            })
            .collect()
    }

    /// The rows deserialized from JSON objects (see [`D1Statement::first`]).
    #[cfg(feature = "json")]
    pub fn results<T: serde::de::DeserializeOwned>(&self) -> Result<Vec<T>> {
        self.rows().iter().map(D1Row::deserialize).collect()
    }

    /// The rows as arrays of values, in column order.
    pub fn raw(&self) -> &[Vec<D1Value>] {
        &self.rows
    }

    pub fn into_raw(self) -> Vec<Vec<D1Value>> {
        self.rows
    }

    pub fn meta(&self) -> &D1Meta {
        &self.meta
    }
}

/// One row: column names and their values, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct D1Row {
    columns: Rc<[String]>,
    values: Vec<D1Value>,
}

impl D1Row {
    pub(crate) fn new(columns: Rc<[String]>, values: Vec<D1Value>) -> Self {
        D1Row { columns, values }
    }

    /// The value of the first column named `column`.
    pub fn get(&self, column: &str) -> Option<&D1Value> {
        let index = self.columns.iter().position(|c| c == column)?;
        self.values.get(index)
    }

    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    pub fn values(&self) -> &[D1Value] {
        &self.values
    }

    pub fn into_values(self) -> Vec<D1Value> {
        self.values
    }

    /// `(column, value)` pairs in column order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &D1Value)> {
        self.columns
            .iter()
            .map(String::as_str)
            .zip(self.values.iter())
    }

    /// The row as a JSON object (see [`D1Value::to_json`]).
    #[cfg(feature = "json")]
    pub fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        self.iter()
            .map(|(column, value)| (column.to_owned(), value.to_json()))
            .collect()
    }

    /// The row deserialized from its JSON object.
    #[cfg(feature = "json")]
    pub fn deserialize<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        Ok(serde_json::from_value(serde_json::Value::Object(
            self.to_json(),
        ))?)
    }
}

/// A JSON object of column names to values.
#[cfg(feature = "json")]
impl serde::Serialize for D1Row {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

/// What [`D1::exec`] did.
#[derive(Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "json", derive(serde::Serialize))]
pub struct D1ExecResult {
    /// Statements executed.
    pub count: u32,
    /// Milliseconds the database took.
    pub duration: f64,
}
