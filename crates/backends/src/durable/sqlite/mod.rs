//! The embedded Durable Object storage: one SQLite file per object,
//! `<dir>/<namespace>/<id>.sqlite`, and one index of every object's alarm,
//! `<dir>/alarms.sqlite`.
//!
//! An object's keys and values are the table `_isola_kv` of its database,
//! next to the guest's own SQL tables, so a transaction covers both. Its
//! alarm is in the shared index instead, where the scheduler finds every
//! alarm with one query after a restart and `delete_all` (which deletes
//! the object's file) leaves it alone.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use lru::LruCache;
use rusqlite::Connection;

use super::{Alarm, Cursor, DurableStore, ListOptions, ObjectStorage};
use crate::embedded::{LazyConn, blocking};
use crate::error::{Result, backend_err};
use crate::sql::Value;
use crate::util::lock;

mod object;
mod sql;

use object::{Object, State};

/// Objects whose database connection stays open at once, by default.
///
/// An open connection holds three file descriptors (the database, its WAL
/// and the WAL index) and up to 512 KiB of page cache (`CACHE_KIB`): 256
/// of them are 768 descriptors and at most 128 MiB, inside the common 1024
/// descriptor limit with room left for sockets. Reopening one that was
/// closed costs about half a millisecond (measured: 0.5 ms against 0.06 ms
/// for a read of an open one, most of it the hop to the blocking pool).
pub const DEFAULT_MAX_OPEN: usize = 256;

/// Page cache per object connection, in KiB (SQLite's default is 2000):
/// objects are many and mostly small, and the OS caches their files too.
const CACHE_KIB: u32 = 512;

/// How long one `sql_exec` may run before SQLite interrupts it: the SQL
/// runs on the host, outside the guest's CPU limit, so a runaway query
/// (an endless recursive CTE) must end somewhere. Workers' default CPU
/// limit per request is 30 s.
pub const SQL_TIME_LIMIT: Duration = Duration::from_secs(30);

/// The most a cursor may hold (the sum of its values' sizes): it is built
/// in host memory before the guest gets it.
const MAX_CURSOR_BYTES: usize = 64 * 1024 * 1024;

/// Transactions nest at most this deep (each is a savepoint).
const MAX_TRANSACTION_DEPTH: usize = 256;

type Key = (String, String);

/// The embedded store: `<dir>/<namespace>/<id>.sqlite` per object and
/// `<dir>/alarms.sqlite`. Nothing is created until an object is written.
pub struct SqliteDurableStore {
    shared: Arc<Shared>,
}

struct Shared {
    dir: PathBuf,
    alarms: Arc<LazyConn>,
    /// Every object some handle still refers to, so all handles of one
    /// object share its connection and its open transactions.
    objects: Mutex<Objects>,
    /// The objects whose connection is open, least recently used first;
    /// it keeps them alive between runs (a runtime that drops its handle
    /// after each event does not reopen the file each time) and bounds
    /// the open connections to `max_open`.
    open: Mutex<LruCache<Key, Arc<Object>>>,
    max_open: usize,
    sql_time_limit: Duration,
}

#[derive(Default)]
struct Objects {
    live: HashMap<Key, Weak<Object>>,
    /// Drop the entries of dropped objects when `live` grows past this.
    prune_at: usize,
}

impl SqliteDurableStore {
    /// The store in `dir`, keeping at most [`DEFAULT_MAX_OPEN`] object
    /// connections open.
    pub fn new(dir: &Path) -> Self {
        Self::with_max_open(dir, DEFAULT_MAX_OPEN)
    }

    /// The store in `dir`, keeping at most `max_open` (at least 1) object
    /// connections open. An object in the middle of a call or with a
    /// transaction open is never closed, so the bound can be exceeded
    /// briefly.
    pub fn with_max_open(dir: &Path, max_open: usize) -> Self {
        Self::with_limits(dir, max_open, SQL_TIME_LIMIT)
    }

    /// [`SqliteDurableStore::with_max_open`], with one `sql_exec` stopped
    /// after `sql_time_limit` instead of [`SQL_TIME_LIMIT`].
    pub fn with_limits(dir: &Path, max_open: usize, sql_time_limit: Duration) -> Self {
        SqliteDurableStore {
            shared: Arc::new(Shared {
                dir: dir.to_owned(),
                alarms: Arc::new(LazyConn::new(
                    &dir.join("alarms.sqlite"),
                    create_alarm_schema,
                )),
                objects: Mutex::default(),
                open: Mutex::new(LruCache::unbounded()),
                max_open: max_open.max(1),
                sql_time_limit,
            }),
        }
    }

    /// How many object connections are open now.
    pub fn open_connections(&self) -> usize {
        lock(&self.shared.open)
            .iter()
            .filter(|(_, object)| object.is_open())
            .count()
    }
}

fn create_alarm_schema(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS alarms (
             namespace TEXT NOT NULL,
             id TEXT NOT NULL,
             time_ms INTEGER NOT NULL,
             PRIMARY KEY (namespace, id)
         ) WITHOUT ROWID;
         CREATE INDEX IF NOT EXISTS alarms_time ON alarms (time_ms);",
    )
}

#[async_trait]
impl DurableStore for SqliteDurableStore {
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
        let object = Arc::new(Object {
            path: self.shared.dir.join(namespace).join(format!("{id}.sqlite")),
            key: key.clone(),
            shared: Arc::downgrade(&self.shared),
            alarms: self.shared.alarms.clone(),
            sql_time_limit: self.shared.sql_time_limit,
            state: Mutex::default(),
        });
        objects.live.insert(key, Arc::downgrade(&object));
        Ok(Arc::new(Handle(object)))
    }

    async fn alarms(&self) -> Result<Vec<Alarm>> {
        let alarms = self.shared.alarms.clone();
        if !alarms.exists() {
            return Ok(Vec::new());
        }
        alarms
            .run(|conn| {
                let read = || -> rusqlite::Result<Vec<Alarm>> {
                    conn.prepare_cached(
                        "SELECT namespace, id, time_ms FROM alarms
                         ORDER BY time_ms, namespace, id",
                    )?
                    .query_map([], |row| {
                        Ok(Alarm {
                            namespace: row.get(0)?,
                            id: row.get(1)?,
                            time_ms: row.get::<_, i64>(2)?.max(0) as u64,
                        })
                    })?
                    .collect()
                };
                read().map_err(backend_err)
            })
            .await
    }
}

/// Handed out by [`SqliteDurableStore::open_object`]; all handles of one
/// object share it.
struct Handle(Arc<Object>);

impl Handle {
    /// Run `f` on the object's state on the blocking pool, then tell the
    /// store the object was used (which may close the connections of the
    /// least recently used others).
    async fn run<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&Object, &mut State) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let object = self.0.clone();
        blocking(move || {
            let (result, was_open, is_open) = {
                let mut state = lock(&object.state);
                let was_open = state.db.is_some();
                let result = f(&object, &mut state);
                (result, was_open, state.db.is_some())
            };
            if is_open {
                note_use(&object, !was_open);
            }
            result
        })
        .await
    }

    /// `f` on the state right here when it is free (no I/O in `f`), else on
    /// the blocking pool: for calls the runtime makes on every run.
    async fn quick<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&Object, &mut State) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        if let Ok(mut state) = self.0.state.try_lock() {
            return f(&self.0, &mut state);
        }
        self.run(f).await
    }
}

/// Mark `object` most recently used (or add it, `opened`), and close the
/// least recently used connections beyond the store's bound.
fn note_use(object: &Arc<Object>, opened: bool) {
    let Some(shared) = object.shared.upgrade() else {
        return;
    };
    let mut closed = Vec::new();
    {
        let mut open = lock(&shared.open);
        if opened {
            open.put(object.key.clone(), object.clone());
        } else {
            open.promote(&object.key);
        }
        let mut in_use = Vec::new();
        while open.len() > shared.max_open {
            let Some((key, victim)) = open.pop_lru() else {
                break;
            };
            match victim.take_idle_db() {
                Ok(db) => closed.push((victim, db)),
                Err(()) => in_use.push((key, victim)),
            }
        }
        for (key, victim) in in_use {
            open.put(key, victim);
        }
    }
    // Closing (and maybe dropping the last handle) outside the lock.
    drop(closed);
}

#[async_trait]
impl ObjectStorage for Handle {
    async fn get(&self, keys: Vec<String>) -> Result<Vec<(String, Vec<u8>)>> {
        self.run(move |object, state| object.get(state, keys)).await
    }

    async fn put(&self, entries: Vec<(String, Vec<u8>)>) -> Result<()> {
        self.run(move |object, state| object.put(state, entries))
            .await
    }

    async fn delete(&self, keys: Vec<String>) -> Result<u32> {
        self.run(move |object, state| object.delete(state, keys))
            .await
    }

    async fn list(&self, options: ListOptions) -> Result<Vec<(String, Vec<u8>)>> {
        self.run(move |object, state| object.list(state, options))
            .await
    }

    async fn delete_all(&self) -> Result<()> {
        self.run(|object, state| object.delete_all(state)).await
    }

    async fn begin(&self) -> Result<()> {
        self.quick(|_, state| state.begin()).await
    }

    async fn commit(&self) -> Result<()> {
        self.run(|object, state| object.commit(state)).await
    }

    async fn rollback(&self) -> Result<()> {
        self.run(|object, state| object.rollback(state)).await
    }

    async fn end_run(&self) -> Result<()> {
        if let Ok(state) = self.0.state.try_lock()
            && state.depth == 0
        {
            return Ok(());
        }
        self.run(|object, state| {
            object.end_run(state);
            Ok(())
        })
        .await
    }

    async fn sql_exec(&self, query: String, params: Vec<Value>) -> Result<Cursor> {
        self.run(move |object, state| object.sql_exec(state, &query, &params))
            .await
    }

    async fn database_size(&self) -> Result<u64> {
        self.run(|object, state| object.database_size(state)).await
    }

    async fn get_alarm(&self) -> Result<Option<u64>> {
        self.run(|object, state| object.get_alarm(state)).await
    }

    async fn set_alarm(&self, time_ms: u64) -> Result<()> {
        self.run(move |object, state| object.change_alarm(state, Some(time_ms)))
            .await
    }

    async fn delete_alarm(&self) -> Result<()> {
        self.run(|object, state| object.change_alarm(state, None))
            .await
    }
}

#[cfg(test)]
pub(super) mod testing {
    use rusqlite::{Connection, params};

    use super::object::{Bounds, list_sql};
    use super::sql::first_keyword;

    /// The first keyword of `sql`, for the unit test of the VACUUM check.
    pub fn keyword(sql: &str) -> &str {
        first_keyword(sql)
    }

    /// The query plan of every list variant, and whether it has a bound,
    /// for the test that lists seek.
    pub fn list_plans() -> Vec<(bool, String)> {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE _isola_kv (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID",
        )
        .unwrap();
        let mut plans = Vec::new();
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
                    let lower_key = lower.as_ref().map(|(k, _)| k.clone());
                    let bounded = lower.is_some() || upper.is_some();
                    plans.push((
                        bounded,
                        crate::embedded::query_plan(
                            &conn,
                            &list_sql(&bounds, reverse),
                            params![lower_key, upper, 10],
                        ),
                    ));
                }
            }
        }
        plans
    }
}
