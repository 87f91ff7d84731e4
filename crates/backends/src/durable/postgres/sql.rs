//! The object's SQL API: the guest's SQL, checked, run in its schema.

use std::time::Duration;

use futures_util::{TryStreamExt, pin_mut};
use tokio_postgres::Client;
use tokio_postgres::types::Type;

use super::MAX_CURSOR_BYTES;
use super::object::{Object, State, Using};
use super::pool::{guest_err, pg_err, pg_message};
use super::sql_check::{GuestStatement, parse_sql};
use super::values::{Column, Param, param_type, value_size};
use crate::durable::Cursor;
use crate::error::{BindingError, Result};
use crate::sql::Value;

impl Object {
    pub(super) async fn sql_exec(
        &self,
        state: &mut State,
        query: &str,
        params: &[Value],
    ) -> Result<Cursor> {
        // Here too, not only in front: PostgreSQL has no authorizer to
        // catch what the check in front would have.
        crate::durable::check_sql(query)?;
        let statements = parse_sql(query)?;
        self.make_schema(state).await?;
        let time_limit = self.shared.sql_time_limit;
        let setup = format!(
            "SET LOCAL search_path TO {}; SET LOCAL statement_timeout = {}; \
             SET LOCAL standard_conforming_strings = on;",
            self.quoted,
            time_limit.as_millis().max(1)
        );
        if state.depth == 0 {
            let mut conn = self.shared.pool.get().await?;
            conn.clean = false;
            conn.client()
                .batch_execute(&format!("BEGIN; {setup}"))
                .await
                .map_err(|e| pg_err(&e))?;
            let result = run_sql(conn.client(), &statements, params, time_limit).await;
            let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
            let ended = conn.client().batch_execute(end).await;
            // The transaction is over either way when the server answered.
            conn.clean = ended
                .as_ref()
                .err()
                .is_none_or(|e| e.as_db_error().is_some());
            let cursor = result?;
            ended.map_err(|e| guest_err(&e, time_limit))?;
            return Ok(cursor);
        }
        self.issue(state).await?;
        state.busy = true;
        let client = state.tx.as_ref().expect("issued").client();
        // A savepoint, so a failing call undoes itself and no more.
        let outcome = match client
            .batch_execute(&format!("SAVEPOINT isola_call; {setup}"))
            .await
        {
            Ok(()) => {
                let result = run_sql(client, &statements, params, time_limit).await;
                let end = if result.is_ok() {
                    "RELEASE isola_call"
                } else {
                    "ROLLBACK TO isola_call; RELEASE isola_call"
                };
                client.batch_execute(end).await.map(|()| result)
            }
            Err(e) => Err(e),
        };
        state.busy = false;
        match outcome {
            Ok(result) => result,
            Err(e) => Err(state.abandon(&pg_message(&e))),
        }
    }

    pub(super) async fn database_size(&self, state: &mut State) -> Result<u64> {
        let using = self.reader(state).await?;
        let tx = matches!(using, Using::Tx(_));
        let result = using
            .client()
            .query_typed_one(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::int8
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relkind IN ('r', 'm', 'S')",
                &[(&self.schema, Type::TEXT)],
            )
            .await
            .and_then(|row| row.try_get::<_, i64>(0));
        drop(using);
        match result {
            Ok(size) => Ok(size.max(0) as u64),
            Err(e) => Err(self.failed(state, tx, &e)),
        }
    }
}

/// Run each statement in turn (prepared after the previous one ran, so it
/// may use the tables that one made), binding the next `?`s of `params`
/// to it, as embedded. The cursor holds the last statement's rows.
async fn run_sql(
    client: &Client,
    statements: &[GuestStatement],
    params: &[Value],
    time_limit: Duration,
) -> Result<Cursor> {
    let err = |e: tokio_postgres::Error| guest_err(&e, time_limit);
    let mut cursor = Cursor::default();
    let mut bound = 0usize;
    for (n, statement) in statements.iter().enumerate() {
        let count = n + 1;
        let wanted = statement.params;
        let Some(mine) = params.get(bound..bound.saturating_add(wanted)) else {
            return Err(BindingError::Invalid(format!(
                "statement {count} of the SQL takes {wanted} parameters, but only {} of the {} \
                 given are left for it",
                params.len() - bound,
                params.len()
            )));
        };
        bound += wanted;
        let types: Vec<Type> = mine.iter().map(param_type).collect();
        let prepared = client
            .prepare_typed(&statement.sql, &types)
            .await
            .map_err(err)?;
        cursor.columns = prepared
            .columns()
            .iter()
            .map(|c| c.name().to_owned())
            .collect();
        cursor.rows.clear();
        let stream = client
            .query_raw(&prepared, mine.iter().map(Param))
            .await
            .map_err(err)?;
        pin_mut!(stream);
        let mut size = 0usize;
        while let Some(row) = stream.try_next().await.map_err(err)? {
            let values = (0..cursor.columns.len())
                .map(|i| row.try_get::<_, Column>(i).map(|c| c.0))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| BindingError::Invalid(crate::remote::with_sources(&e)))?;
            size += values.iter().map(value_size).sum::<usize>();
            if size > MAX_CURSOR_BYTES {
                return Err(BindingError::Invalid(format!(
                    "statement {count} of the SQL returns more than {} MiB; select fewer rows or \
                     columns",
                    MAX_CURSOR_BYTES / (1024 * 1024)
                )));
            }
            cursor.rows.push(values);
        }
        let written = if statement.writes {
            stream.rows_affected().unwrap_or(0)
        } else {
            0
        };
        cursor.rows_written += written;
        cursor.rows_read += cursor.rows.len() as u64 + written;
    }
    if bound != params.len() {
        return Err(BindingError::Invalid(format!(
            "the SQL takes {bound} parameters, but {} were given",
            params.len()
        )));
    }
    Ok(cursor)
}
