//! One object: its schema, its open transactions, and its keys and values.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::{TryStreamExt, pin_mut};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};

use super::pool::{Conn, is_missing, pg_err, pg_message};
use super::{MAX_TRANSACTION_DEPTH, Shared};
use crate::durable::ListOptions;
use crate::error::{BindingError, Result};
use crate::util::{lock, prefix_successor};

/// One object: its schema and its open transactions.
pub(super) struct Object {
    pub(super) namespace: String,
    pub(super) id: String,
    /// `_isola_do_…`.
    pub(super) schema: String,
    /// The same, quoted for SQL text.
    pub(super) quoted: String,
    pub(super) shared: Arc<Shared>,
    pub(super) state: tokio::sync::Mutex<State>,
}

#[derive(Default)]
pub(super) struct State {
    /// Transactions the guest has open.
    pub(super) depth: usize,
    /// How many of them (the outermost ones) are open on `tx`: level 1 is
    /// PostgreSQL's transaction, level `n > 1` savepoint `isola_tx_<n>`.
    pub(super) issued: usize,
    /// The connection of the PostgreSQL transaction, while `issued > 0`.
    pub(super) tx: Option<Conn>,
    /// The alarm change made in each open transaction (`Some(None)`:
    /// deleted), applied when the outermost one commits.
    pub(super) alarm_changes: Vec<Option<Option<u64>>>,
    /// A call on `tx` is under way. Still set when the next call starts:
    /// that call was dropped halfway, leaving `tx` in a state unknown.
    pub(super) busy: bool,
}

/// The connection a call runs on: the open transaction's, or one of the
/// pool's.
pub(super) enum Using<'s> {
    Tx(&'s Conn),
    Pooled(Conn),
}

impl Using<'_> {
    pub(super) fn client(&self) -> &Client {
        match self {
            Using::Tx(conn) => conn.client(),
            Using::Pooled(conn) => conn.client(),
        }
    }
}

impl State {
    pub(super) fn begin(&mut self) -> Result<()> {
        if self.depth >= MAX_TRANSACTION_DEPTH {
            return Err(BindingError::Invalid(format!(
                "transactions nest at most {MAX_TRANSACTION_DEPTH} deep"
            )));
        }
        self.depth += 1;
        self.alarm_changes.push(None);
        Ok(())
    }

    /// Forget every open transaction; PostgreSQL rolls back whatever is
    /// open on `tx` when it is closed (dropped dirty). Says so, after
    /// `why`.
    pub(super) fn abandon(&mut self, why: &str) -> BindingError {
        if let Some(mut conn) = self.tx.take() {
            conn.clean = false;
        }
        self.depth = 0;
        self.issued = 0;
        self.busy = false;
        self.alarm_changes.clear();
        BindingError::Backend(format!("{why}; the open transaction was rolled back"))
    }

    /// Roll back whatever is open; the connection goes back to the pool
    /// when that worked.
    pub(super) async fn roll_back_all(&mut self) {
        if let Some(mut conn) = self.tx.take() {
            match conn.client().batch_execute("ROLLBACK").await {
                Ok(()) => conn.clean = true,
                Err(e) => {
                    // Closing the connection rolls the transaction back too.
                    tracing::warn!("ROLLBACK failed ({e}); closing the connection");
                    conn.clean = false;
                }
            }
        }
        self.depth = 0;
        self.issued = 0;
        self.busy = false;
        self.alarm_changes.clear();
    }
}

impl Object {
    fn key_table(&self) -> String {
        format!("{}._isola_kv", self.quoted)
    }

    fn is_known(&self) -> bool {
        lock(&self.shared.known).get(&self.schema).is_some()
    }

    fn remember(&self) {
        lock(&self.shared.known).put(self.schema.clone(), ());
    }

    fn forget(&self) {
        lock(&self.shared.known).pop(&self.schema);
    }

    /// Whether the object's schema exists, asked on `client` unless known.
    pub(super) async fn exists(
        &self,
        client: &Client,
    ) -> std::result::Result<bool, tokio_postgres::Error> {
        if self.is_known() {
            return Ok(true);
        }
        let table = self.key_table();
        let row = client
            .query_typed_one(
                "SELECT to_regclass($1) IS NOT NULL",
                &[(&table, Type::TEXT)],
            )
            .await?;
        let exists: bool = row.try_get(0)?;
        if exists {
            self.remember();
        }
        Ok(exists)
    }

    /// Make the object's schema if it does not exist, on a connection of
    /// its own outside any transaction (like the embedded backend's file,
    /// it stays when a transaction that wrote to it rolls back).
    pub(super) async fn make_schema(&self, state: &mut State) -> Result<()> {
        if self.is_known() {
            return Ok(());
        }
        if let Some(conn) = &state.tx {
            // Known to the transaction (it wrote), forgotten here since.
            state.busy = true;
            let exists = self.exists(conn.client()).await;
            state.busy = false;
            match exists {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(state.abandon(&pg_message(&e))),
            }
        }
        let conn = self.shared.pool.get().await?;
        if self.exists(conn.client()).await.map_err(|e| pg_err(&e))? {
            return Ok(());
        }
        let quoted = &self.quoted;
        let sql = format!(
            "CREATE SCHEMA IF NOT EXISTS {quoted};
             CREATE TABLE IF NOT EXISTS {quoted}._isola_kv (
                 key BYTEA PRIMARY KEY,
                 value BYTEA NOT NULL
             );
             COMMENT ON SCHEMA {quoted} IS 'Durable Object {} {}';",
            self.namespace, self.id
        );
        create(conn.client(), &sql).await?;
        self.remember();
        Ok(())
    }

    /// The transaction's connection with every open level issued on it,
    /// taken from the pool when the transaction had none. For calls that
    /// write inside a transaction.
    pub(super) async fn issue<'s>(&self, state: &'s mut State) -> Result<&'s Conn> {
        if state.busy {
            return Err(state.abandon("a call on the open transaction was interrupted"));
        }
        if state.tx.as_ref().is_some_and(Conn::is_closed) {
            return Err(state.abandon("the connection of the open transaction was lost"));
        }
        if state.issued < state.depth {
            let mut sql = String::new();
            if state.tx.is_none() {
                let mut conn = self.shared.pool.get().await?;
                conn.clean = false;
                state.tx = Some(conn);
                state.issued = 0;
                sql.push_str("BEGIN;");
            }
            for level in (state.issued + 1).max(2)..=state.depth {
                sql.push_str(&format!(" SAVEPOINT isola_tx_{level};"));
            }
            state.busy = true;
            let conn = state.tx.as_ref().expect("set above");
            if let Err(e) = conn.client().batch_execute(&sql).await {
                return Err(state.abandon(&pg_message(&e)));
            }
            state.busy = false;
            state.issued = state.depth;
        }
        Ok(state.tx.as_ref().expect("issued"))
    }

    /// Run `sql` (ours) on the transaction's connection, every open level
    /// issued; a failure loses the transaction.
    pub(super) async fn tx_batch(&self, state: &mut State, sql: &str) -> Result<()> {
        self.issue(state).await?;
        state.busy = true;
        let result = state
            .tx
            .as_ref()
            .expect("issued")
            .client()
            .batch_execute(sql)
            .await;
        state.busy = false;
        result.map_err(|e| state.abandon(&pg_message(&e)))
    }

    /// The connection for a read: the transaction's when one is issued
    /// (it may have written), else the pool's.
    pub(super) async fn reader<'s>(&self, state: &'s mut State) -> Result<Using<'s>> {
        if state.issued > 0 {
            Ok(Using::Tx(self.issue(state).await?))
        } else {
            Ok(Using::Pooled(self.shared.pool.get().await?))
        }
    }

    /// `e` from one of our statements on `using`: a transaction it aborted
    /// is gone; a schema another node dropped is forgotten.
    pub(super) fn failed(
        &self,
        state: &mut State,
        tx: bool,
        e: &tokio_postgres::Error,
    ) -> BindingError {
        if is_missing(e) {
            self.forget();
        }
        if tx {
            state.abandon(&pg_message(e))
        } else {
            pg_err(e)
        }
    }

    pub(super) async fn get(
        &self,
        state: &mut State,
        keys: Vec<String>,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let mut unique = Vec::with_capacity(keys.len());
        for key in keys {
            if !unique.contains(&key) {
                unique.push(key);
            }
        }
        if unique.is_empty() {
            return Ok(Vec::new());
        }
        let using = self.reader(state).await?;
        let tx = matches!(using, Using::Tx(_));
        type Found = HashMap<Vec<u8>, Vec<u8>>;
        let result: std::result::Result<Option<Found>, tokio_postgres::Error> = async {
            if !self.exists(using.client()).await? {
                return Ok(None);
            }
            let wanted: Vec<&[u8]> = unique.iter().map(|k| k.as_bytes()).collect();
            let rows = using
                .client()
                .query_typed(
                    &format!(
                        "SELECT key, value FROM {} WHERE key = ANY($1)",
                        self.key_table()
                    ),
                    &[(&wanted, Type::BYTEA_ARRAY)],
                )
                .await?;
            let mut found = HashMap::with_capacity(rows.len());
            for row in rows {
                found.insert(row.try_get::<_, Vec<u8>>(0)?, row.try_get::<_, Vec<u8>>(1)?);
            }
            Ok(Some(found))
        }
        .await;
        drop(using);
        let mut found = match result {
            Ok(Some(found)) => found,
            Ok(None) => return Ok(Vec::new()),
            Err(e) if !tx && is_missing(&e) => {
                self.forget();
                return Ok(Vec::new());
            }
            Err(e) => return Err(self.failed(state, tx, &e)),
        };
        Ok(unique
            .into_iter()
            .filter_map(|key| {
                let value = found.remove(key.as_bytes())?;
                Some((key, value))
            })
            .collect())
    }

    pub(super) async fn put(
        &self,
        state: &mut State,
        entries: Vec<(String, Vec<u8>)>,
    ) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        // The last value of a key named twice (one INSERT may not touch a
        // row twice).
        let mut last: HashMap<&str, usize> = HashMap::with_capacity(entries.len());
        for (i, (key, _)) in entries.iter().enumerate() {
            last.insert(key, i);
        }
        let mut keys: Vec<&[u8]> = Vec::with_capacity(last.len());
        let mut values: Vec<&[u8]> = Vec::with_capacity(last.len());
        for (i, (key, value)) in entries.iter().enumerate() {
            if last.get(key.as_str()) == Some(&i) {
                keys.push(key.as_bytes());
                values.push(value);
            }
        }
        let sql = format!(
            "INSERT INTO {} (key, value) SELECT * FROM unnest($1::bytea[], $2::bytea[])
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            self.key_table()
        );
        let params: [(&(dyn ToSql + Sync), Type); 2] =
            [(&keys, Type::BYTEA_ARRAY), (&values, Type::BYTEA_ARRAY)];
        self.write(state, &sql, &params).await.map(drop)
    }

    /// Run one statement of ours that writes, in the open transaction if
    /// there is one, making the schema first; the rows it affected.
    pub(super) async fn write(
        &self,
        state: &mut State,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<u64> {
        self.make_schema(state).await?;
        if state.depth > 0 {
            self.issue(state).await?;
            state.busy = true;
            let client = state.tx.as_ref().expect("issued").client();
            let result = run_ours(client, sql, params).await;
            state.busy = false;
            return result.map_err(|e| self.failed(state, true, &e));
        }
        let conn = self.shared.pool.get().await?;
        match run_ours(conn.client(), sql, params).await {
            // Dropped by another node since: once more, from the start.
            Err(e) if is_missing(&e) => {
                self.forget();
                self.make_schema(state).await?;
                run_ours(conn.client(), sql, params)
                    .await
                    .map_err(|e| pg_err(&e))
            }
            result => result.map_err(|e| pg_err(&e)),
        }
    }

    pub(super) async fn delete(&self, state: &mut State, keys: Vec<String>) -> Result<u32> {
        if keys.is_empty() {
            return Ok(0);
        }
        {
            let using = self.reader(state).await?;
            let tx = matches!(using, Using::Tx(_));
            let exists = self.exists(using.client()).await;
            drop(using);
            match exists {
                Ok(true) => {}
                Ok(false) => return Ok(0),
                Err(e) => return Err(self.failed(state, tx, &e)),
            }
        }
        let keys: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
        let sql = format!("DELETE FROM {} WHERE key = ANY($1)", self.key_table());
        let deleted = self
            .write(state, &sql, &[(&keys, Type::BYTEA_ARRAY)])
            .await?;
        Ok(u32::try_from(deleted).unwrap_or(u32::MAX))
    }

    pub(super) async fn list(
        &self,
        state: &mut State,
        options: ListOptions,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let bounds = Bounds::of(&options);
        let sql = list_sql(&self.key_table(), &bounds, options.reverse);
        let lower = bounds.lower.as_ref().map(|(key, _)| key.as_bytes());
        let upper = bounds.upper.as_deref().map(str::as_bytes);
        let limit = options.limit.map(i64::from);
        let using = self.reader(state).await?;
        let tx = matches!(using, Using::Tx(_));
        let result: std::result::Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> = async {
            if !self.exists(using.client()).await? {
                return Ok(Vec::new());
            }
            using
                .client()
                .query_typed(
                    &sql,
                    &[
                        (&lower, Type::BYTEA),
                        (&upper, Type::BYTEA),
                        (&limit, Type::INT8),
                    ],
                )
                .await
        }
        .await;
        drop(using);
        let rows = match result {
            Ok(rows) => rows,
            Err(e) if !tx && is_missing(&e) => {
                self.forget();
                return Ok(Vec::new());
            }
            Err(e) => return Err(self.failed(state, tx, &e)),
        };
        rows.into_iter()
            .map(|row| {
                let key: Vec<u8> = row.try_get(0).map_err(|e| pg_err(&e))?;
                let key = String::from_utf8(key).map_err(|e| {
                    BindingError::Backend(format!("a stored key is not UTF-8: {e}"))
                })?;
                Ok((key, row.try_get(1).map_err(|e| pg_err(&e))?))
            })
            .collect()
    }

    /// Roll back, then drop the schema: its tables go with it, in one
    /// PostgreSQL transaction, so the object is either whole or empty.
    pub(super) async fn delete_all(&self, state: &mut State) -> Result<()> {
        state.roll_back_all().await;
        let conn = self.shared.pool.get().await?;
        conn.client()
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.quoted))
            .await
            .map_err(|e| pg_err(&e))?;
        self.forget();
        Ok(())
    }
}

/// Run DDL that creates things if they do not exist. Two sessions making
/// the same thing at once can fail with a unique violation (PostgreSQL
/// checks `IF NOT EXISTS` before taking its locks); then it exists.
pub(super) async fn create(client: &Client, sql: &str) -> Result<()> {
    let mut tries = 0;
    loop {
        tries += 1;
        match client.batch_execute(sql).await {
            Ok(()) => return Ok(()),
            Err(e) if tries < 3 && e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {}
            Err(e) => return Err(pg_err(&e)),
        }
    }
}

/// One statement of ours; the rows it affected.
pub(super) async fn run_ours(
    client: &Client,
    sql: &str,
    params: &[(&(dyn ToSql + Sync), Type)],
) -> std::result::Result<u64, tokio_postgres::Error> {
    let stream = client
        .query_typed_raw(sql, params.iter().map(|(v, t)| (*v, t.clone())))
        .await?;
    pin_mut!(stream);
    while stream.try_next().await?.is_some() {}
    Ok(stream.rows_affected().unwrap_or(0))
}

/// A list's bounds, as the embedded backend computes them: the greatest
/// lower bound and least upper bound of `start`/`startAfter`, `end` and
/// the prefix's range.
pub(super) struct Bounds {
    /// The key and whether it is included.
    pub(super) lower: Option<(String, bool)>,
    /// Excluded.
    pub(super) upper: Option<String>,
}

impl Bounds {
    pub(super) fn of(options: &ListOptions) -> Bounds {
        let lowers = [
            options.start.clone().map(|k| (k, true)),
            options.start_after.clone().map(|k| (k, false)),
            options.prefix.clone().map(|k| (k, true)),
        ];
        // The greatest; at a tie, the exclusive one.
        let lower = lowers
            .into_iter()
            .flatten()
            .max_by(|(a, a_in), (b, b_in)| a.as_bytes().cmp(b.as_bytes()).then(b_in.cmp(a_in)));
        let uppers = [
            options.end.clone(),
            options.prefix.as_deref().and_then(prefix_successor),
        ];
        let upper = uppers
            .into_iter()
            .flatten()
            .min_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        Bounds { lower, upper }
    }
}

/// The list query on `table` for `bounds`: `$1` the lower bound, `$2` the
/// upper, `$3` the limit (NULL: none). Keys are `bytea`, which compares
/// bytes, so the order is UTF-8 byte order, as embedded.
pub(super) fn list_sql(table: &str, bounds: &Bounds, reverse: bool) -> String {
    let lower = match bounds.lower {
        Some((_, true)) => "key >= $1",
        Some((_, false)) => "key > $1",
        None => "$1::bytea IS NULL",
    };
    let upper = if bounds.upper.is_some() {
        "key < $2"
    } else {
        "$2::bytea IS NULL"
    };
    let order = if reverse { "DESC" } else { "ASC" };
    format!(
        "SELECT key, value FROM {table} WHERE {lower} AND {upper} ORDER BY key {order} LIMIT $3"
    )
}
