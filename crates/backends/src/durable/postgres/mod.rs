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
use lru::LruCache;
use md5::{Digest, Md5};

use super::{Alarm, Cursor, DurableStore, ListOptions, ObjectStorage};
use crate::error::{BindingError, Result};
use crate::remote::{IO_TIMEOUT, redact};
use crate::sql::Value;
use crate::sql::pg_tls::{PgTls, split_mode};
use crate::util::{hex, lock};

mod commit;
mod object;
mod pool;
mod sql;
mod sql_check;
mod values;

use object::{Object, State};
use pool::{Pool, is_missing, pg_err, pg_message, quote_ident};

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

/// Handed out by [`PostgresDurableStore::open_object`]; all handles of one
/// object share it.
struct Handle(Arc<Object>);

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

#[cfg(test)]
pub(super) mod testing {
    use super::object::{Bounds, list_sql};
    use super::sql_check::parse_sql;
    use crate::error::Result;

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
