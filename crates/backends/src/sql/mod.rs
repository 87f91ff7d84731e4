//! D1: SQLite-dialect databases. Database names are checked here, in
//! front of the [`SqlBackend`]s: [`sqlite`] (embedded, one SQLite file per
//! database) and [`postgres`] (a schema per database, shared by every
//! node).

use std::sync::Arc;

use async_trait::async_trait;

use crate::error::{BindingError, Result};

pub(crate) mod pg_tls;
pub mod postgres;
pub mod sqlite;

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
    /// The database `name`, created empty on first use. The name is
    /// checked here, for every backend.
    fn open(&self, name: &str) -> Result<Arc<dyn SqlDatabase>> {
        check_database_name(name)?;
        self.open_database(name)
    }

    /// [`SqlBackend::open`] with the name already checked: what each
    /// backend implements.
    fn open_database(&self, name: &str) -> Result<Arc<dyn SqlDatabase>>;
}

/// A database name is made of ASCII letters, digits, `_` and `-`: it
/// becomes a file name (SQLite) or part of a schema name (PostgreSQL).
fn check_database_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(BindingError::Invalid(format!(
            "database name {name:?} must be made of letters, digits, '_' and '-'"
        )))
    }
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

#[cfg(test)]
mod tests;
