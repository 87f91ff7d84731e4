//! Ending the guest's transactions, and the alarm (whose change a
//! transaction makes is written when the outermost one commits).

use std::sync::atomic::Ordering;

use tokio_postgres::Client;
use tokio_postgres::types::Type;

use super::ALARMS_SCHEMA;
use super::object::{Object, State, create, run_ours};
use super::pool::{guest_err, is_missing, pg_err};
use crate::error::{BindingError, Result};

impl Object {
    pub(super) async fn commit(&self, state: &mut State) -> Result<()> {
        let level = state.depth;
        if level == 0 {
            return Err(BindingError::Invalid(
                "commit: no transaction is open".into(),
            ));
        }
        let change = state.alarm_changes.last().copied().flatten();
        if level > 1 {
            if state.issued == level {
                self.tx_batch(state, &format!("RELEASE isola_tx_{level}"))
                    .await?;
                state.issued -= 1;
            }
            state.depth -= 1;
            state.alarm_changes.pop();
            if let Some(change) = change
                && let Some(outer) = state.alarm_changes.last_mut()
            {
                *outer = Some(change);
            }
            return Ok(());
        }
        // The outermost: PostgreSQL's COMMIT, with the alarm change.
        if state.issued == 0 {
            if let Some(change) = change {
                // A failure leaves the transaction open, to retry or roll
                // back.
                self.write_alarm(None, change).await?;
            }
            state.depth = 0;
            state.alarm_changes.clear();
            return Ok(());
        }
        if let Some(change) = change {
            if change.is_some() {
                self.make_alarms().await?;
            }
            self.issue(state).await?;
            state.busy = true;
            let client = state.tx.as_ref().expect("issued").client();
            let written = self.write_alarm(Some(client), change).await;
            state.busy = false;
            if let Err(e) = written {
                return Err(state.abandon(&e.to_string()));
            }
        }
        self.issue(state).await?;
        state.busy = true;
        let committed = state
            .tx
            .as_ref()
            .expect("issued")
            .client()
            .batch_execute("COMMIT")
            .await;
        state.busy = false;
        let mut conn = state.tx.take().expect("issued");
        state.depth = 0;
        state.issued = 0;
        state.alarm_changes.clear();
        match committed {
            Ok(()) => {
                conn.clean = true;
                Ok(())
            }
            Err(e) => {
                // A COMMIT that fails ends the transaction all the same
                // (PostgreSQL rolls it back); when the server said so, the
                // connection is clean.
                conn.clean = e.as_db_error().is_some();
                Err(match guest_err(&e, self.shared.sql_time_limit) {
                    BindingError::Invalid(m) => {
                        BindingError::Invalid(format!("{m}; the transaction was rolled back"))
                    }
                    BindingError::Backend(m) => {
                        BindingError::Backend(format!("{m}; the transaction was rolled back"))
                    }
                })
            }
        }
    }

    pub(super) async fn rollback(&self, state: &mut State) -> Result<()> {
        let level = state.depth;
        if level == 0 {
            return Err(BindingError::Invalid(
                "rollback: no transaction is open".into(),
            ));
        }
        if state.issued == level {
            if level == 1 {
                state.roll_back_all().await;
                return Ok(());
            }
            self.tx_batch(
                state,
                &format!("ROLLBACK TO isola_tx_{level}; RELEASE isola_tx_{level}"),
            )
            .await?;
            state.issued -= 1;
        }
        state.depth -= 1;
        state.alarm_changes.pop();
        Ok(())
    }

    pub(super) async fn get_alarm(&self, state: &State) -> Result<Option<u64>> {
        if let Some(change) = state.alarm_changes.iter().rev().find_map(|c| *c) {
            return Ok(change);
        }
        let conn = self.shared.pool.get().await?;
        let row = conn
            .client()
            .query_typed_opt(
                &format!(
                    "SELECT time_ms FROM {ALARMS_SCHEMA}.alarms WHERE namespace = $1 AND id = $2"
                ),
                &[(&self.namespace, Type::TEXT), (&self.id, Type::TEXT)],
            )
            .await;
        match row {
            Ok(Some(row)) => Ok(Some(
                row.try_get::<_, i64>(0).map_err(|e| pg_err(&e))?.max(0) as u64,
            )),
            Ok(None) => Ok(None),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(pg_err(&e)),
        }
    }

    pub(super) async fn change_alarm(&self, state: &mut State, change: Option<u64>) -> Result<()> {
        match state.alarm_changes.last_mut() {
            Some(pending) => {
                *pending = Some(change);
                Ok(())
            }
            None => self.write_alarm(None, change).await,
        }
    }

    /// Make `_isola_durable.alarms` unless this process knows it exists.
    async fn make_alarms(&self) -> Result<()> {
        if self.shared.alarms_made.load(Ordering::Relaxed) {
            return Ok(());
        }
        let conn = self.shared.pool.get().await?;
        // Made already (by another node, or before a restart)? Asked first:
        // `CREATE INDEX IF NOT EXISTS` locks the table before it looks, and
        // would wait for every alarm being written.
        let exists = conn
            .client()
            .query_typed_one(
                "SELECT to_regclass($1) IS NOT NULL",
                &[(&format!("{ALARMS_SCHEMA}.alarms"), Type::TEXT)],
            )
            .await
            .and_then(|row| row.try_get::<_, bool>(0))
            .map_err(|e| pg_err(&e))?;
        if exists {
            self.shared.alarms_made.store(true, Ordering::Relaxed);
            return Ok(());
        }
        create(
            conn.client(),
            &format!(
                "CREATE SCHEMA IF NOT EXISTS {ALARMS_SCHEMA};
                 CREATE TABLE IF NOT EXISTS {ALARMS_SCHEMA}.alarms (
                     namespace TEXT COLLATE \"C\" NOT NULL,
                     id TEXT COLLATE \"C\" NOT NULL,
                     time_ms BIGINT NOT NULL,
                     PRIMARY KEY (namespace, id)
                 );
                 CREATE INDEX IF NOT EXISTS alarms_time ON {ALARMS_SCHEMA}.alarms (time_ms);"
            ),
        )
        .await?;
        self.shared.alarms_made.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Store `change` on `client` (the committing transaction's), or on a
    /// connection of the pool.
    async fn write_alarm(&self, client: Option<&Client>, change: Option<u64>) -> Result<()> {
        if change.is_some() {
            self.make_alarms().await?;
        }
        let pooled;
        let client = match client {
            Some(client) => client,
            None => {
                pooled = self.shared.pool.get().await?;
                pooled.client()
            }
        };
        let result = match change {
            Some(at) => {
                // Checked against i64::MAX by `Checked::set_alarm`.
                let at = i64::try_from(at).unwrap_or(i64::MAX);
                run_ours(
                    client,
                    &format!(
                        "INSERT INTO {ALARMS_SCHEMA}.alarms (namespace, id, time_ms)
                         VALUES ($1, $2, $3)
                         ON CONFLICT (namespace, id) DO UPDATE SET time_ms = excluded.time_ms"
                    ),
                    &[
                        (&self.namespace, Type::TEXT),
                        (&self.id, Type::TEXT),
                        (&at, Type::INT8),
                    ],
                )
                .await
            }
            None => {
                if !self.shared.alarms_made.load(Ordering::Relaxed) {
                    // No table, no alarm to delete (and no table made).
                    let exists = client
                        .query_typed_one(
                            "SELECT to_regclass($1) IS NOT NULL",
                            &[(&format!("{ALARMS_SCHEMA}.alarms"), Type::TEXT)],
                        )
                        .await
                        .and_then(|row| row.try_get::<_, bool>(0))
                        .map_err(|e| pg_err(&e))?;
                    if !exists {
                        return Ok(());
                    }
                    self.shared.alarms_made.store(true, Ordering::Relaxed);
                }
                run_ours(
                    client,
                    &format!("DELETE FROM {ALARMS_SCHEMA}.alarms WHERE namespace = $1 AND id = $2"),
                    &[(&self.namespace, Type::TEXT), (&self.id, Type::TEXT)],
                )
                .await
            }
        };
        result.map(drop).map_err(|e| pg_err(&e))
    }
}
