//! D1: SQLite-dialect databases. Embedded backend: one SQLite file per
//! database in WAL mode.

use std::sync::Arc;

use async_trait::async_trait;

use crate::Result;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub sql: String,
    pub params: Vec<Value>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Meta {
    pub rows_read: u64,
    pub rows_written: u64,
    pub last_row_id: i64,
    pub changes: u64,
    pub duration_ms: f64,
    pub changed_db: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
    pub meta: Meta,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExecResult {
    pub count: u32,
    pub duration_ms: f64,
}

/// Opens databases by `database_name`.
pub trait SqlBackend: Send + Sync {
    /// The database `name`, created empty on first use.
    fn open(&self, name: &str) -> Result<Arc<dyn SqlDatabase>>;
}

/// One database. SQL errors are [`crate::BindingError::Backend`] carrying
/// the database's own message.
#[async_trait]
pub trait SqlDatabase: Send + Sync {
    async fn query(&self, statement: Statement) -> Result<Rows>;
    /// All statements in one transaction: all succeed or none is applied.
    async fn batch(&self, statements: Vec<Statement>) -> Result<Vec<Rows>>;
    /// `;`-separated statements without parameters.
    async fn exec(&self, sql: String) -> Result<ExecResult>;
}

/// The embedded backend: `<dir>/<name>.sqlite`.
pub struct SqliteSql {}

impl SqliteSql {
    pub fn new(dir: &std::path::Path) -> Result<Self> {
        todo!()
    }
}
