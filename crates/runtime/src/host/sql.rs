//! `isola:worker/sql`: D1 databases.

use std::collections::HashMap;
use std::sync::Arc;

use isola_backends::{self as backend, Backends, BindingError};
use isola_config::WorkerRun;
use wasmtime::component::{Linker, Resource};

use super::handles::SqlHandle;
use super::{CallResult, HasView, HostView, View, add_types, call, unbound};
use crate::generated::isola::worker::sql;

/// The SQL databases a worker has bound, by binding name, opened at load.
pub struct SqlCtx {
    databases: HashMap<String, Arc<dyn backend::sql::SqlDatabase>>,
}

impl SqlCtx {
    pub fn new(run: &WorkerRun, backends: &Backends) -> Result<Self, BindingError> {
        let mut databases = HashMap::new();
        for d1 in &run.d1_databases {
            databases.insert(d1.binding.clone(), backends.sql.open(&d1.database_name)?);
        }
        Ok(SqlCtx { databases })
    }
}

/// Add `isola:worker/sql` to `linker`.
pub fn add_to_linker<T: HostView<SqlCtx> + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    add_types::<T, SqlCtx>(linker)?;
    sql::add_to_linker::<T, HasView<SqlCtx>>(linker, T::view)
}

pub(super) fn value_in(value: sql::Value) -> backend::sql::Value {
    use backend::sql::Value as V;
    match value {
        sql::Value::Null => V::Null,
        sql::Value::Integer(i) => V::Integer(i),
        sql::Value::Real(r) => V::Real(r),
        sql::Value::Text(t) => V::Text(t),
        sql::Value::Blob(b) => V::Blob(b),
    }
}

pub(super) fn value_out(value: backend::sql::Value) -> sql::Value {
    use backend::sql::Value as V;
    match value {
        V::Null => sql::Value::Null,
        V::Integer(i) => sql::Value::Integer(i),
        V::Real(r) => sql::Value::Real(r),
        V::Text(t) => sql::Value::Text(t),
        V::Blob(b) => sql::Value::Blob(b),
    }
}

fn statement_in(statement: sql::Statement) -> backend::sql::Statement {
    backend::sql::Statement {
        sql: statement.sql,
        params: statement.params.into_iter().map(value_in).collect(),
    }
}

fn rows_out(rows: backend::sql::Rows) -> sql::Rows {
    let m = rows.meta;
    sql::Rows {
        columns: rows.columns,
        rows: rows
            .rows
            .into_iter()
            .map(|row| row.into_iter().map(value_out).collect())
            .collect(),
        meta: sql::Meta {
            rows_read: m.rows_read,
            rows_written: m.rows_written,
            last_row_id: m.last_row_id,
            changes: m.changes,
            duration_ms: m.duration_ms,
            changed_db: m.changed_db,
        },
    }
}

impl sql::Host for View<'_, SqlCtx> {}

impl sql::HostDatabase for View<'_, SqlCtx> {
    async fn open(&mut self, binding: String) -> CallResult<Resource<SqlHandle>> {
        let Some(database) = self.ctx.databases.get(&binding).cloned() else {
            return Ok(Err(unbound("D1 database", &binding)));
        };
        Ok(Ok(self.table.push(SqlHandle(database))?))
    }

    async fn query(
        &mut self,
        this: Resource<SqlHandle>,
        statement: sql::Statement,
    ) -> CallResult<sql::Rows> {
        let database = self.table.get(&this)?.0.clone();
        let result: CallResult<_> = call!(self, database.query(statement_in(statement)));
        Ok(result?.map(rows_out))
    }

    async fn batch(
        &mut self,
        this: Resource<SqlHandle>,
        statements: Vec<sql::Statement>,
    ) -> CallResult<Vec<sql::Rows>> {
        let database = self.table.get(&this)?.0.clone();
        let statements = statements.into_iter().map(statement_in).collect();
        let result: CallResult<_> = call!(self, database.batch(statements));
        Ok(result?.map(|all| all.into_iter().map(rows_out).collect()))
    }

    async fn exec(
        &mut self,
        this: Resource<SqlHandle>,
        sql: String,
    ) -> CallResult<sql::ExecResult> {
        let database = self.table.get(&this)?.0.clone();
        let result: CallResult<_> = call!(self, database.exec(sql));
        Ok(result?.map(|r| sql::ExecResult {
            count: r.count,
            duration_ms: r.duration_ms,
        }))
    }

    async fn drop(&mut self, this: Resource<SqlHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}
