//! Durable Object storage in PostgreSQL, shared by every node that points
//! `backends.durable` at the same database.
//!
//! Each object is a schema of its own, `_isola_do_<32 hex digits>` (the MD5
//! of `<namespace>/<id>`: see [`schema_name`]), made on the object's first
//! write and commented with the object's namespace and id. It holds the
//! keys and values, `_isola_kv (key BYTEA PRIMARY KEY, value BYTEA)` (keys
//! as their UTF-8 bytes, so they sort as bytes whatever the database's
//! collation, and may hold NUL), and the tables of the object's SQL API:
//! the guest's SQL runs with `search_path` set to the schema, so its
//! unqualified names are the object's own. Every alarm is a row of the
//! shared `_isola_durable.alarms`, where the scheduler finds them all with
//! one query and `delete_all` (which drops the object's schema) leaves it.
//!
//! Transactions: outside one, each call is its own PostgreSQL transaction.
//! While the guest has one open, the first call that writes takes a
//! connection for the object and opens a PostgreSQL transaction on it;
//! nested transactions are savepoints, and the outermost commit is
//! PostgreSQL's `COMMIT`, with the alarm change the transaction made
//! written inside it. Reads before that first write need no transaction
//! (the object's committed state is what they would see anyway), so a
//! transaction that only reads holds no connection.
//!
//! The guest's SQL is SQLite's dialect, run on PostgreSQL as D1 on
//! PostgreSQL runs it (`?` placeholders, values typed from what is bound,
//! results as SQLite's five kinds: see [`crate::sql::postgres`]). Since it
//! runs with this store's database role, it is confined to the object's
//! schema by checks of its text before it runs (`check_statement`): the
//! statements a SQLite object may run (queries, writes, and tables,
//! indexes, views and sequences), never PostgreSQL's catalogs (`pg_…`,
//! `information_schema`), the storage's own schemas (`_isola_…`, the
//! shared check), other schemas named outright (`public`, D1's `d1_…`),
//! nor functions that run SQL text or change settings. Names computed
//! while the SQL runs (`nextval('…' || …)`) are beyond a textual check:
//! give `backends.durable` a database of its own.
//!
//! What differs from the SQLite backend: `rows_read` counts the rows the
//! statements returned plus the rows they wrote (PostgreSQL does not say
//! how many it scanned), and `rows_written` the rows the statements
//! report (not rows changed by triggers, which an object cannot create
//! here: they need functions); a `COMMIT` that fails (a deferred
//! constraint) ends the transaction instead of leaving it open; a call
//! that writes in a transaction and is interrupted (its future dropped
//! while a statement of it was on its way) leaves the transaction in a
//! state no one knows, so the next call rolls it back and says so.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use futures_util::{TryStreamExt, pin_mut};
use lru::LruCache;
use md5::{Digest, Md5};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{IsNull, Kind, ToSql, Type};
use tokio_postgres::{Client, NoTls};

use super::{Alarm, Cursor, DurableStore, ListOptions, ObjectStorage};
use crate::error::{BindingError, Result};
use crate::remote::{IO_TIMEOUT, background, is_tls_failure, on_background, redact};
use crate::sql::Value;
use crate::util::{hex, lock, prefix_successor};

// The TLS of D1 on PostgreSQL (`sslmode=require` / `verify-full`, always
// verified), compiled once more here: it is private to `crate::sql`
// (making it `pub(crate)` there would let this be a `use`).
#[allow(clippy::duplicate_mod)]
#[path = "../sql/pg_tls.rs"]
mod pg_tls;
use pg_tls::{PgTls, split_mode};

pub use super::sqlite::SQL_TIME_LIMIT;

/// Idle connections kept for calls outside transactions.
const MAX_IDLE: usize = 16;

/// How many objects whose schema is known to exist are remembered (each
/// saves one query on its next first call).
const KNOWN_SCHEMAS: usize = 65_536;

/// Every object schema's name starts with this (and so with
/// [`super::RESERVED_SQL_PREFIX`], which the guest's SQL may not name).
pub const SCHEMA_PREFIX: &str = "_isola_do_";

/// The schema of every object's alarm.
pub const ALARMS_SCHEMA: &str = "_isola_durable";

/// The most a cursor may hold (the sum of its values' sizes), as embedded.
const MAX_CURSOR_BYTES: usize = 64 * 1024 * 1024;

/// Transactions nest at most this deep (each is a savepoint), as embedded.
const MAX_TRANSACTION_DEPTH: usize = 256;

type Key = (String, String);

/// The schema of object `id` of `namespace`: `_isola_do_` and the MD5 of
/// `<namespace>/<id>` in hex (42 bytes, inside PostgreSQL's 63). MD5 is
/// enough here: names are not secrets, and ids are hashes (SHA-256 of a
/// name, or random) that no one chooses bytewise, so a collision would
/// take a generic 2^64 search.
pub fn schema_name(namespace: &str, id: &str) -> String {
    let digest = Md5::digest(format!("{namespace}/{id}").as_bytes());
    format!("{SCHEMA_PREFIX}{}", hex(&digest))
}

/// The store: a pool of connections to one PostgreSQL database, and the
/// objects some handle refers to. Connecting creates nothing; the alarm
/// table is made with the first alarm, an object's schema with its first
/// write.
pub struct PostgresDurableStore {
    shared: Arc<Shared>,
}

struct Shared {
    pool: Arc<Pool>,
    /// Every object some handle still refers to, so all handles of one
    /// object share its open transactions.
    objects: Mutex<Objects>,
    /// Schemas known to exist (made or seen by this process).
    known: Mutex<LruCache<String, ()>>,
    /// Whether `_isola_durable.alarms` is known to exist.
    alarms_made: AtomicBool,
    sql_time_limit: Duration,
}

#[derive(Default)]
struct Objects {
    live: HashMap<Key, Weak<Object>>,
    /// Drop the entries of dropped objects when `live` grows past this.
    prune_at: usize,
}

impl PostgresDurableStore {
    /// Connect once to check the server answers.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, &isola_config::BackendTls::default()).await
    }

    /// As [`PostgresDurableStore::connect`]; with `sslmode=require` or
    /// `verify-full` in the URL, over TLS verified against `tls`' files, as
    /// `backends.sql` does.
    pub async fn connect_with(url: &str, tls: &isola_config::BackendTls) -> Result<Self> {
        Self::connect_with_limits(url, tls, SQL_TIME_LIMIT).await
    }

    /// [`PostgresDurableStore::connect_with`], with one `sql_exec` stopped
    /// after `sql_time_limit` (PostgreSQL's `statement_timeout`) instead of
    /// [`SQL_TIME_LIMIT`].
    pub async fn connect_with_limits(
        url: &str,
        tls: &isola_config::BackendTls,
        sql_time_limit: Duration,
    ) -> Result<Self> {
        let shown = redact(url);
        let (parsed, verified) = split_mode(url)?;
        let mut config: tokio_postgres::Config = parsed.parse().map_err(|e| {
            BindingError::Invalid(format!("postgres URL {shown} is not valid: {e}"))
        })?;
        config.connect_timeout(IO_TIMEOUT);
        if config.get_application_name().is_none() {
            config.application_name("isola-durable-objects");
        }
        let tls = if verified {
            Some(PgTls::new(tls)?)
        } else {
            None
        };
        let pool = Arc::new(Pool {
            config,
            tls,
            url: shown.clone(),
            idle: Mutex::new(Vec::new()),
            open: Arc::new(AtomicUsize::new(0)),
        });
        let conn = pool.get().await?;
        conn.client()
            .simple_query("SELECT 1")
            .await
            .map_err(|e| BindingError::Backend(format!("{shown}: {}", pg_message(&e))))?;
        drop(conn);
        Ok(PostgresDurableStore {
            shared: Arc::new(Shared {
                pool,
                objects: Mutex::default(),
                known: Mutex::new(LruCache::new(
                    NonZeroUsize::new(KNOWN_SCHEMAS).expect("not zero"),
                )),
                alarms_made: AtomicBool::new(false),
                sql_time_limit,
            }),
        })
    }

    /// Connections open now: idle ones and those in use, each open
    /// transaction's included.
    pub fn open_connections(&self) -> usize {
        self.shared.pool.open.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl DurableStore for PostgresDurableStore {
    fn open_object(&self, namespace: &str, id: &str) -> Result<Arc<dyn ObjectStorage>> {
        let key = (namespace.to_owned(), id.to_owned());
        let mut objects = lock(&self.shared.objects);
        if let Some(object) = objects.live.get(&key).and_then(Weak::upgrade) {
            return Ok(Arc::new(Handle(object)));
        }
        if objects.live.len() >= objects.prune_at {
            objects.live.retain(|_, object| object.strong_count() > 0);
            objects.prune_at = (objects.live.len() * 2).max(1024);
        }
        let schema = schema_name(namespace, id);
        let object = Arc::new(Object {
            quoted: quote_ident(&schema),
            schema,
            namespace: namespace.to_owned(),
            id: id.to_owned(),
            shared: self.shared.clone(),
            state: tokio::sync::Mutex::default(),
        });
        objects.live.insert(key, Arc::downgrade(&object));
        Ok(Arc::new(Handle(object)))
    }

    async fn alarms(&self) -> Result<Vec<Alarm>> {
        let conn = self.shared.pool.get().await?;
        let rows = conn
            .client()
            .query_typed(
                &format!(
                    "SELECT namespace, id, time_ms FROM {ALARMS_SCHEMA}.alarms
                     ORDER BY time_ms, namespace, id"
                ),
                &[],
            )
            .await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) if is_missing(&e) => return Ok(Vec::new()),
            Err(e) => return Err(pg_err(&e)),
        };
        rows.iter()
            .map(|row| {
                Ok(Alarm {
                    namespace: row.try_get(0).map_err(|e| pg_err(&e))?,
                    id: row.try_get(1).map_err(|e| pg_err(&e))?,
                    time_ms: row.try_get::<_, i64>(2).map_err(|e| pg_err(&e))?.max(0) as u64,
                })
            })
            .collect()
    }
}

/// A few connections, made when needed; a broken one is dropped, so the
/// next call reconnects.
struct Pool {
    config: tokio_postgres::Config,
    tls: Option<PgTls>,
    /// Redacted.
    url: String,
    idle: Mutex<Vec<PgClient>>,
    /// Connections open now.
    open: Arc<AtomicUsize>,
}

/// A connection, counted in [`Pool::open`] while it lives.
struct PgClient {
    client: Client,
    _open: OpenCount,
}

struct OpenCount(Arc<AtomicUsize>);

impl Drop for OpenCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection taken from the pool. It goes back when dropped if it is
/// still open and clean: a connection marked dirty (a transaction may be
/// open on it, say because the call was dropped halfway) is closed
/// instead, which rolls that transaction back.
struct Conn {
    client: Option<PgClient>,
    pool: Arc<Pool>,
    clean: bool,
}

impl Conn {
    fn client(&self) -> &Client {
        &self.client.as_ref().expect("present until dropped").client
    }

    fn is_closed(&self) -> bool {
        self.client().is_closed()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(client) = self.client.take()
            && self.clean
            && !client.client.is_closed()
        {
            let mut idle = lock(&self.pool.idle);
            if idle.len() < MAX_IDLE {
                idle.push(client);
            }
        }
    }
}

impl Pool {
    async fn get(self: &Arc<Self>) -> Result<Conn> {
        loop {
            let Some(client) = lock(&self.idle).pop() else {
                break;
            };
            if !client.client.is_closed() {
                return Ok(Conn {
                    client: Some(client),
                    pool: self.clone(),
                    clean: true,
                });
            }
        }
        let config = self.config.clone();
        let url = self.url.clone();
        let tls = self.tls.clone();
        let client = on_background(async move {
            let failed = |e: tokio_postgres::Error, hint: &str| {
                // A TLS error's reason is in its sources, which `e` does not show.
                let message = crate::remote::with_sources(&e);
                let hint = if is_tls_failure(&message) { hint } else { "" };
                BindingError::Backend(format!("cannot connect to {url}: {message}{hint}"))
            };
            let client = match tls {
                Some(tls) => {
                    let hint = tls.hint.clone();
                    let (client, connection) =
                        config.connect(tls).await.map_err(|e| failed(e, &hint))?;
                    background().spawn(drive(connection));
                    client
                }
                None => {
                    let (client, connection) =
                        config.connect(NoTls).await.map_err(|e| failed(e, ""))?;
                    background().spawn(drive(connection));
                    client
                }
            };
            Ok(client)
        })
        .await?;
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(Conn {
            client: Some(PgClient {
                client,
                _open: OpenCount(self.open.clone()),
            }),
            pool: self.clone(),
            clean: true,
        })
    }
}

/// Run a connection until it ends.
async fn drive<T>(connection: tokio_postgres::Connection<tokio_postgres::Socket, T>)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(e) = connection.await {
        tracing::debug!("postgres connection ended: {e}");
    }
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => format!("postgres: {}", crate::remote::with_sources(e)),
    }
}

/// An error of the storage's own statements: the store's fault.
fn pg_err(e: &tokio_postgres::Error) -> BindingError {
    BindingError::Backend(pg_message(e))
}

/// Whether `e` says a table or schema does not exist.
fn is_missing(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(&SqlState::UNDEFINED_TABLE | &SqlState::INVALID_SCHEMA_NAME)
    )
}

/// An error of the guest's SQL as the guest sees it: PostgreSQL's message,
/// [`BindingError::Invalid`] when the SQL is at fault (syntax, names,
/// types, constraints, data, limits of a statement) and
/// [`BindingError::Backend`] when the store is (connections, resources,
/// the server shutting down, serialization failures, internal errors).
fn guest_err(e: &tokio_postgres::Error, time_limit: Duration) -> BindingError {
    let Some(db) = e.as_db_error() else {
        return BindingError::Backend(pg_message(e));
    };
    if *db.code() == SqlState::QUERY_CANCELED {
        return BindingError::Invalid(format!(
            "the SQL ran longer than {time_limit:?} and was stopped"
        ));
    }
    let class = db.code().code().get(..2).unwrap_or_default();
    match class {
        // Cardinality, data, integrity, transaction state, SQL routine and
        // external routine exceptions, syntax or access rules, WITH CHECK
        // OPTION, feature not supported, invalid schema or catalog name,
        // program limits (a statement too complex), PL/pgSQL.
        "21" | "22" | "23" | "25" | "2F" | "38" | "39" | "3D" | "3F" | "42" | "44" | "0A"
        | "54" | "P0" => BindingError::Invalid(db.message().to_owned()),
        _ => BindingError::Backend(db.message().to_owned()),
    }
}

/// One object: its schema and its open transactions.
struct Object {
    namespace: String,
    id: String,
    /// `_isola_do_…`.
    schema: String,
    /// The same, quoted for SQL text.
    quoted: String,
    shared: Arc<Shared>,
    state: tokio::sync::Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Transactions the guest has open.
    depth: usize,
    /// How many of them (the outermost ones) are open on `tx`: level 1 is
    /// PostgreSQL's transaction, level `n > 1` savepoint `isola_tx_<n>`.
    issued: usize,
    /// The connection of the PostgreSQL transaction, while `issued > 0`.
    tx: Option<Conn>,
    /// The alarm change made in each open transaction (`Some(None)`:
    /// deleted), applied when the outermost one commits.
    alarm_changes: Vec<Option<Option<u64>>>,
    /// A call on `tx` is under way. Still set when the next call starts:
    /// that call was dropped halfway, leaving `tx` in a state unknown.
    busy: bool,
}

/// Handed out by [`PostgresDurableStore::open_object`]; all handles of one
/// object share it.
struct Handle(Arc<Object>);

/// The connection a call runs on: the open transaction's, or one of the
/// pool's.
enum Using<'s> {
    Tx(&'s Conn),
    Pooled(Conn),
}

impl Using<'_> {
    fn client(&self) -> &Client {
        match self {
            Using::Tx(conn) => conn.client(),
            Using::Pooled(conn) => conn.client(),
        }
    }
}

impl State {
    fn begin(&mut self) -> Result<()> {
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
    fn abandon(&mut self, why: &str) -> BindingError {
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
    async fn roll_back_all(&mut self) {
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
    async fn exists(&self, client: &Client) -> std::result::Result<bool, tokio_postgres::Error> {
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
    async fn make_schema(&self, state: &mut State) -> Result<()> {
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
    async fn issue<'s>(&self, state: &'s mut State) -> Result<&'s Conn> {
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
    async fn tx_batch(&self, state: &mut State, sql: &str) -> Result<()> {
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
    async fn reader<'s>(&self, state: &'s mut State) -> Result<Using<'s>> {
        if state.issued > 0 {
            Ok(Using::Tx(self.issue(state).await?))
        } else {
            Ok(Using::Pooled(self.shared.pool.get().await?))
        }
    }

    /// `e` from one of our statements on `using`: a transaction it aborted
    /// is gone; a schema another node dropped is forgotten.
    fn failed(&self, state: &mut State, tx: bool, e: &tokio_postgres::Error) -> BindingError {
        if is_missing(e) {
            self.forget();
        }
        if tx {
            state.abandon(&pg_message(e))
        } else {
            pg_err(e)
        }
    }

    async fn get(&self, state: &mut State, keys: Vec<String>) -> Result<Vec<(String, Vec<u8>)>> {
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

    async fn put(&self, state: &mut State, entries: Vec<(String, Vec<u8>)>) -> Result<()> {
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
    async fn write(
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

    async fn delete(&self, state: &mut State, keys: Vec<String>) -> Result<u32> {
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

    async fn list(
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
    async fn delete_all(&self, state: &mut State) -> Result<()> {
        state.roll_back_all().await;
        let conn = self.shared.pool.get().await?;
        conn.client()
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.quoted))
            .await
            .map_err(|e| pg_err(&e))?;
        self.forget();
        Ok(())
    }

    async fn commit(&self, state: &mut State) -> Result<()> {
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

    async fn rollback(&self, state: &mut State) -> Result<()> {
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

    async fn sql_exec(&self, state: &mut State, query: &str, params: &[Value]) -> Result<Cursor> {
        // Here too, not only in front: PostgreSQL has no authorizer to
        // catch what the check in front would have.
        super::check_sql(query)?;
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

    async fn database_size(&self, state: &mut State) -> Result<u64> {
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

    async fn get_alarm(&self, state: &State) -> Result<Option<u64>> {
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

    async fn change_alarm(&self, state: &mut State, change: Option<u64>) -> Result<()> {
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

/// Run DDL that creates things if they do not exist. Two sessions making
/// the same thing at once can fail with a unique violation (PostgreSQL
/// checks `IF NOT EXISTS` before taking its locks); then it exists.
async fn create(client: &Client, sql: &str) -> Result<()> {
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
async fn run_ours(
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

impl Handle {
    async fn state(&self) -> tokio::sync::MutexGuard<'_, State> {
        self.0.state.lock().await
    }
}

#[async_trait]
impl ObjectStorage for Handle {
    async fn get(&self, keys: Vec<String>) -> Result<Vec<(String, Vec<u8>)>> {
        let mut state = self.state().await;
        self.0.get(&mut state, keys).await
    }

    async fn put(&self, entries: Vec<(String, Vec<u8>)>) -> Result<()> {
        let mut state = self.state().await;
        self.0.put(&mut state, entries).await
    }

    async fn delete(&self, keys: Vec<String>) -> Result<u32> {
        let mut state = self.state().await;
        self.0.delete(&mut state, keys).await
    }

    async fn list(&self, options: ListOptions) -> Result<Vec<(String, Vec<u8>)>> {
        let mut state = self.state().await;
        self.0.list(&mut state, options).await
    }

    async fn delete_all(&self) -> Result<()> {
        let mut state = self.state().await;
        self.0.delete_all(&mut state).await
    }

    async fn begin(&self) -> Result<()> {
        self.state().await.begin()
    }

    async fn commit(&self) -> Result<()> {
        let mut state = self.state().await;
        self.0.commit(&mut state).await
    }

    async fn rollback(&self) -> Result<()> {
        let mut state = self.state().await;
        self.0.rollback(&mut state).await
    }

    async fn end_run(&self) -> Result<()> {
        if let Ok(state) = self.0.state.try_lock()
            && state.depth == 0
            && state.tx.is_none()
        {
            return Ok(());
        }
        self.state().await.roll_back_all().await;
        Ok(())
    }

    async fn sql_exec(&self, query: String, params: Vec<Value>) -> Result<Cursor> {
        let mut state = self.state().await;
        self.0.sql_exec(&mut state, &query, &params).await
    }

    async fn database_size(&self) -> Result<u64> {
        let mut state = self.state().await;
        self.0.database_size(&mut state).await
    }

    async fn get_alarm(&self) -> Result<Option<u64>> {
        let state = self.state().await;
        self.0.get_alarm(&state).await
    }

    async fn set_alarm(&self, time_ms: u64) -> Result<()> {
        let mut state = self.state().await;
        self.0.change_alarm(&mut state, Some(time_ms)).await
    }

    async fn delete_alarm(&self) -> Result<()> {
        let mut state = self.state().await;
        self.0.change_alarm(&mut state, None).await
    }
}

/// A list's bounds, as the embedded backend computes them: the greatest
/// lower bound and least upper bound of `start`/`startAfter`, `end` and
/// the prefix's range.
struct Bounds {
    /// The key and whether it is included.
    lower: Option<(String, bool)>,
    /// Excluded.
    upper: Option<String>,
}

impl Bounds {
    fn of(options: &ListOptions) -> Bounds {
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
fn list_sql(table: &str, bounds: &Bounds, reverse: bool) -> String {
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

// ---------------------------------------------------------------------
// The guest's SQL: split into statements, checked, placeholders numbered.
// ---------------------------------------------------------------------

/// One statement of the guest's SQL, checked and ready for PostgreSQL.
#[derive(Debug, Clone, PartialEq)]
struct GuestStatement {
    /// The text, with `?` / `?NNN` turned into `$n`.
    sql: String,
    /// The parameters it takes: its largest placeholder number.
    params: usize,
    /// Whether it writes rows (INSERT, UPDATE, DELETE or MERGE first, or
    /// in a WITH), for `rows_written`.
    writes: bool,
}

/// A token of the guest's SQL, as far as the checks care.
#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// An unquoted name or keyword, as written.
    Word(String),
    /// A quoted name's text (a `""` inside splits it in two tokens).
    Quoted(String),
    /// A string, a dollar-quoted string.
    Literal,
    /// Anything else, one byte at a time (digits included).
    Punct(u8),
}

/// A name's byte: PostgreSQL's identifiers take letters, digits, `_`, `$`
/// (not first) and every non-ASCII byte.
fn ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

fn ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

/// Split `sql` into statements (at `;` outside strings, quoted names,
/// comments and dollar quotes), number the placeholders of each (a bare
/// `?` takes the number after the largest so far, as in SQLite; each
/// statement numbers its own), and check each. Tokens follow
/// PostgreSQL's lexer, so what the checks see is what PostgreSQL runs.
fn parse_sql(sql: &str) -> Result<Vec<GuestStatement>> {
    // `U&"…"` and `U&'…'` spell names and strings with escapes, so a name
    // could be written without its letters.
    let bytes = sql.as_bytes();
    if bytes.windows(3).any(|w| {
        w[0].eq_ignore_ascii_case(&b'u') && w[1] == b'&' && (w[2] == b'\'' || w[2] == b'"')
    }) {
        return Err(BindingError::Invalid(
            "Unicode escapes (`U&'…'`, `U&\"…\"`) are not allowed in an object's SQL".into(),
        ));
    }
    let mut statements = Vec::new();
    let mut tokens = Vec::new();
    let mut out = String::with_capacity(sql.len() + 8);
    let mut largest = 0u32;
    let mut copy_from = 0;
    let mut i = 0;
    let mut finish = |tokens: &mut Vec<Token>, out: &mut String, largest: &mut u32| -> Result<()> {
        if !tokens.is_empty() {
            let writes = check_statement(tokens)?;
            statements.push(GuestStatement {
                sql: std::mem::take(out),
                params: *largest as usize,
                writes,
            });
        }
        tokens.clear();
        out.clear();
        *largest = 0;
        Ok(())
    };
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'\'' => {
                // E'...' strings take backslash escapes.
                let escapes = i > 0
                    && matches!(bytes[i - 1], b'e' | b'E')
                    && (i < 2 || !ident_byte(bytes[i - 2]));
                i += 1;
                while i < bytes.len() {
                    if escapes && bytes[i] == b'\\' {
                        i += 2;
                        continue;
                    }
                    if bytes[i] == b'\'' {
                        if bytes.get(i + 1) == Some(&b'\'') {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
                tokens.push(Token::Literal);
            }
            b'"' => {
                let start = i + 1;
                i = start;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += 1;
                }
                tokens.push(Token::Quoted(
                    String::from_utf8_lossy(&bytes[start..i.min(bytes.len())]).into_owned(),
                ));
                i += 1;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < bytes.len() {
                    if bytes[i..].starts_with(b"/*") {
                        depth += 1;
                        i += 2;
                    } else if bytes[i..].starts_with(b"*/") {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'$' => {
                // A dollar quote: $tag$ ... $tag$, the tag a name without
                // `$` (so not `$1`, a parameter). A `$` inside a name was
                // taken with the name.
                let tag_len = if bytes.get(i + 1).copied().is_some_and(ident_start) {
                    bytes[i + 1..]
                        .iter()
                        .position(|&c| !(ident_byte(c) && c != b'$'))
                        .unwrap_or(bytes.len() - i - 1)
                } else {
                    0
                };
                let end = i + 1 + tag_len;
                if bytes.get(end) == Some(&b'$') {
                    let tag = &bytes[i..=end];
                    let body = end + 1;
                    i = bytes[body..]
                        .windows(tag.len())
                        .position(|w| w == tag)
                        .map_or(bytes.len(), |p| body + p + tag.len());
                    tokens.push(Token::Literal);
                } else {
                    tokens.push(Token::Punct(b'$'));
                    i += 1;
                }
            }
            b'?' => {
                out.push_str(&sql[copy_from..i]);
                let digits = bytes[i + 1..]
                    .iter()
                    .take_while(|c| c.is_ascii_digit())
                    .count();
                let n = if digits > 0 {
                    sql[i + 1..i + 1 + digits].parse().unwrap_or(u32::MAX)
                } else {
                    largest.saturating_add(1)
                };
                largest = largest.max(n);
                out.push('$');
                out.push_str(&n.to_string());
                i += 1 + digits;
                copy_from = i;
                tokens.push(Token::Punct(b'?'));
            }
            b';' => {
                out.push_str(&sql[copy_from..i]);
                i += 1;
                copy_from = i;
                finish(&mut tokens, &mut out, &mut largest)?;
            }
            b if ident_start(b) => {
                let start = i;
                while i < bytes.len() && ident_byte(bytes[i]) {
                    i += 1;
                }
                tokens.push(Token::Word(
                    String::from_utf8_lossy(&bytes[start..i]).into_owned(),
                ));
            }
            b if b.is_ascii_whitespace() || b == 0x0b => i += 1,
            _ => {
                tokens.push(Token::Punct(b));
                i += 1;
            }
        }
    }
    out.push_str(&sql[copy_from.min(sql.len())..]);
    finish(&mut tokens, &mut out, &mut largest)?;
    if statements.is_empty() {
        return Err(BindingError::Invalid("the SQL holds no statement".into()));
    }
    Ok(statements)
}

/// The kinds of things an object's SQL may create, alter and drop.
const OBJECT_KINDS: [&str; 4] = ["TABLE", "INDEX", "VIEW", "SEQUENCE"];

/// Functions that run SQL given as text, or change settings or large
/// objects, out of the checks' sight (`…_to_xml…`, `dblink…` and `pg_…`
/// are refused by pattern).
const FORBIDDEN_FUNCTIONS: [&str; 20] = [
    "set_config",
    "ts_stat",
    "ts_rewrite",
    "lo_import",
    "lo_export",
    "lo_get",
    "lo_put",
    "lo_from_bytea",
    "lo_create",
    "lo_creat",
    "lo_unlink",
    "lo_open",
    "lo_close",
    "loread",
    "lowrite",
    "lo_lseek",
    "lo_lseek64",
    "lo_tell",
    "lo_truncate",
    "lo_truncate64",
];

/// Whether one statement's tokens may run on the object's schema; whether
/// it writes rows. The allowed statements are those of a SQLite object
/// that PostgreSQL also has: queries, writes, and tables, indexes, views
/// and sequences. Refused with the reason otherwise.
fn check_statement(tokens: &[Token]) -> Result<bool> {
    let invalid = |m: String| Err(BindingError::Invalid(m));
    let upper = |t: Option<&Token>| match t {
        Some(Token::Word(w)) => w.to_ascii_uppercase(),
        _ => String::new(),
    };
    let first = upper(tokens.first());
    let mut writes = matches!(first.as_str(), "INSERT" | "UPDATE" | "DELETE" | "MERGE");
    let mut ddl = false;
    match first.as_str() {
        "SELECT" | "VALUES" | "TABLE" | "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "TRUNCATE" => {}
        "WITH" => {
            writes = tokens.iter().any(|t| {
                matches!(t, Token::Word(w) if ["INSERT", "UPDATE", "DELETE", "MERGE"]
                    .iter()
                    .any(|k| w.eq_ignore_ascii_case(k)))
            });
        }
        "" if tokens.first() == Some(&Token::Punct(b'(')) => {}
        "BEGIN" | "START" | "COMMIT" | "END" | "ROLLBACK" | "ABORT" | "SAVEPOINT" | "RELEASE" => {
            return invalid(
                "BEGIN, COMMIT, ROLLBACK, SAVEPOINT and RELEASE are not allowed in SQL: \
                 transactions go through the storage API (`transaction()`)"
                    .into(),
            );
        }
        "VACUUM" => {
            return invalid("VACUUM is not allowed: the storage manages the tables".into());
        }
        "ATTACH" | "DETACH" => {
            return invalid("ATTACH and DETACH are not allowed: an object has one database".into());
        }
        "PRAGMA" => {
            return invalid(format!(
                "PRAGMA {} is not allowed: this object's storage is PostgreSQL, which has no \
                 PRAGMAs",
                upper(tokens.get(1)).to_ascii_lowercase()
            ));
        }
        "CREATE" | "ALTER" | "DROP" => {
            ddl = true;
            let mut kind = 1;
            while first == "CREATE"
                && matches!(
                    upper(tokens.get(kind)).as_str(),
                    "OR" | "REPLACE" | "UNIQUE"
                )
            {
                kind += 1;
            }
            match upper(tokens.get(kind)).as_str() {
                k if OBJECT_KINDS.contains(&k) => {}
                "TEMP" | "TEMPORARY" | "GLOBAL" | "LOCAL" => {
                    return invalid(
                        "temporary tables, indexes, triggers and views are not supported".into(),
                    );
                }
                "UNLOGGED" => return invalid(unlogged()),
                other => {
                    return invalid(format!(
                        "{first} {other} is not allowed in an object's SQL: {ALLOWED}"
                    ));
                }
            }
        }
        other => {
            let shown = if other.is_empty() {
                "this statement".to_owned()
            } else {
                other.to_owned()
            };
            return invalid(format!(
                "{shown} is not allowed in an object's SQL: {ALLOWED}"
            ));
        }
    }
    for (i, token) in tokens.iter().enumerate() {
        let name = match token {
            Token::Word(w) => w.to_ascii_lowercase(),
            Token::Quoted(q) => q.to_ascii_lowercase(),
            _ => continue,
        };
        if name.starts_with("pg_") || name == "information_schema" {
            return invalid(format!(
                "`{name}` is not available to an object's SQL: PostgreSQL's catalogs and `pg_` \
                 functions reach beyond the object"
            ));
        }
        if FORBIDDEN_FUNCTIONS.contains(&name.as_str())
            || name.contains("_to_xml")
            || name.starts_with("dblink")
        {
            return invalid(format!(
                "`{name}` is not available to an object's SQL: it runs SQL text, changes \
                 settings or reads files out of the storage's sight"
            ));
        }
        let qualifies = tokens.get(i + 1) == Some(&Token::Punct(b'.'));
        if qualifies && (name == "public" || name.starts_with("d1_")) {
            return invalid(format!(
                "`{name}.…` names another schema: an object's SQL reaches its own tables only"
            ));
        }
        if let Token::Word(word) = token {
            let next = upper(tokens.get(i + 1));
            if word.eq_ignore_ascii_case("INTO")
                && matches!(next.as_str(), "TEMP" | "TEMPORARY" | "UNLOGGED")
            {
                return invalid(
                    "temporary and unlogged tables are not supported: an object's tables are \
                     durable"
                        .into(),
                );
            }
            if ddl {
                let pair = (word.to_ascii_uppercase(), next);
                match (pair.0.as_str(), pair.1.as_str()) {
                    ("UNLOGGED", _) => return invalid(unlogged()),
                    ("TABLESPACE", _) | ("SET", "SCHEMA") | ("OWNER", "TO") => {
                        return invalid(format!(
                            "{} {} is not allowed in an object's SQL: the storage places and \
                             owns the object's tables",
                            pair.0, pair.1
                        ));
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(writes)
}

const ALLOWED: &str = "on PostgreSQL it may run SELECT, VALUES, TABLE, WITH, INSERT, UPDATE, \
                       DELETE, MERGE and TRUNCATE, and CREATE, ALTER and DROP of tables, \
                       indexes, views and sequences";

fn unlogged() -> String {
    "unlogged tables are not allowed: an object's tables are durable".into()
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

/// Roughly what `value` costs in memory.
fn value_size(value: &Value) -> usize {
    match value {
        Value::Text(s) => s.len() + 8,
        Value::Blob(b) => b.len() + 8,
        _ => 8,
    }
}

/// A bound value, encoded as the type its placeholder was declared with
/// (as D1 on PostgreSQL binds them).
struct Param<'a>(&'a Value);

impl std::fmt::Debug for Param<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl ToSql for Param<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self.0 {
            Value::Null => return Ok(IsNull::Yes),
            Value::Integer(i) => match *ty {
                Type::INT2 => out.extend_from_slice(&i16::try_from(*i)?.to_be_bytes()),
                Type::INT4 => out.extend_from_slice(&i32::try_from(*i)?.to_be_bytes()),
                Type::FLOAT8 => out.extend_from_slice(&(*i as f64).to_be_bytes()),
                Type::BOOL => out.extend_from_slice(&[u8::from(*i != 0)]),
                Type::TEXT | Type::VARCHAR => out.extend_from_slice(i.to_string().as_bytes()),
                _ => out.extend_from_slice(&i.to_be_bytes()),
            },
            Value::Real(f) => out.extend_from_slice(&f.to_be_bytes()),
            Value::Text(s) => out.extend_from_slice(s.as_bytes()),
            Value::Blob(b) => out.extend_from_slice(b),
        }
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

fn param_type(value: &Value) -> Type {
    match value {
        Value::Integer(_) => Type::INT8,
        Value::Real(_) => Type::FLOAT8,
        Value::Text(_) => Type::TEXT,
        Value::Blob(_) => Type::BYTEA,
        // Oid 0: unspecified, PostgreSQL infers it from the context.
        Value::Null => Type::new("unspecified".into(), 0, Kind::Pseudo, "pg_catalog".into()),
    }
}

/// A column value in one of SQLite's five kinds, as D1 on PostgreSQL
/// returns them.
struct Column(Value);

impl<'a> tokio_postgres::types::FromSql<'a> for Column {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let int = |n: i64| Ok(Column(Value::Integer(n)));
        match *ty {
            Type::BOOL => int(i64::from(raw.first().copied().unwrap_or(0) != 0)),
            Type::INT2 => int(i16::from_be_bytes(raw.try_into()?).into()),
            Type::INT4 => int(i32::from_be_bytes(raw.try_into()?).into()),
            Type::INT8 => int(i64::from_be_bytes(raw.try_into()?)),
            Type::OID => int(u32::from_be_bytes(raw.try_into()?).into()),
            Type::FLOAT4 => Ok(Column(Value::Real(
                f32::from_be_bytes(raw.try_into()?).into(),
            ))),
            Type::FLOAT8 => Ok(Column(Value::Real(f64::from_be_bytes(raw.try_into()?)))),
            Type::NUMERIC => Ok(Column(numeric(raw).ok_or("malformed numeric")?)),
            Type::BYTEA => Ok(Column(Value::Blob(raw.to_vec()))),
            Type::JSONB => Ok(Column(Value::Text(
                std::str::from_utf8(raw.get(1..).unwrap_or_default())?.to_owned(),
            ))),
            Type::TEXT
            | Type::VARCHAR
            | Type::BPCHAR
            | Type::NAME
            | Type::UNKNOWN
            | Type::JSON
            | Type::XML => Ok(Column(Value::Text(std::str::from_utf8(raw)?.to_owned()))),
            ref other => Err(format!(
                "column type {} is not supported; cast it (e.g. `::text`)",
                other.name()
            )
            .into()),
        }
    }

    fn from_sql_null(
        _: &Type,
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Column(Value::Null))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// PostgreSQL's binary NUMERIC: an integer when it has no fractional
/// digits and fits, else a real.
fn numeric(raw: &[u8]) -> Option<Value> {
    let word =
        |i: usize| -> Option<u16> { Some(u16::from_be_bytes(raw.get(i..i + 2)?.try_into().ok()?)) };
    let ndigits = word(0)? as usize;
    let weight = word(2)? as i16 as i32;
    let sign = word(4)?;
    let dscale = word(6)?;
    if sign == 0xC000 {
        return Some(Value::Real(f64::NAN));
    }
    let digits: Vec<u16> = (0..ndigits)
        .map(|d| word(8 + 2 * d))
        .collect::<Option<_>>()?;
    let negative = sign == 0x4000;
    if dscale == 0 {
        let mut n: i128 = 0;
        for (d, &digit) in digits.iter().enumerate() {
            let exponent = weight - d as i32;
            if exponent < 0 {
                break;
            }
            n = n.checked_add(
                i128::from(digit).checked_mul(10_000i128.checked_pow(exponent as u32)?)?,
            )?;
        }
        let n = if negative { -n } else { n };
        if let Ok(n) = i64::try_from(n) {
            return Some(Value::Integer(n));
        }
    }
    let mut f = 0f64;
    for (d, &digit) in digits.iter().enumerate() {
        f += f64::from(digit) * 10_000f64.powi(weight - d as i32);
    }
    Some(Value::Real(if negative { -f } else { f }))
}

#[cfg(test)]
pub(super) mod testing {
    use super::*;

    /// What the checks make of `sql`: each statement's text and
    /// parameter count, or the refusal.
    pub fn parse(sql: &str) -> Result<Vec<(String, usize)>> {
        Ok(parse_sql(sql)?
            .into_iter()
            .map(|s| (s.sql, s.params))
            .collect())
    }

    /// The list query of every variant on `table`, with the bounds it
    /// takes (`$1`, `$2`).
    pub fn list_queries(table: &str) -> Vec<(Option<String>, Option<String>, String)> {
        let mut queries = Vec::new();
        for lower in [
            None,
            Some(("a".to_owned(), true)),
            Some(("a".to_owned(), false)),
        ] {
            for upper in [None, Some("b".to_owned())] {
                for reverse in [false, true] {
                    let bounds = Bounds {
                        lower: lower.clone(),
                        upper: upper.clone(),
                    };
                    queries.push((
                        lower.clone().map(|(key, _)| key),
                        upper.clone(),
                        list_sql(table, &bounds, reverse),
                    ));
                }
            }
        }
        queries
    }
}
