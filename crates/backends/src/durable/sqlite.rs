//! The embedded Durable Object storage: one SQLite file per object,
//! `<dir>/<namespace>/<id>.sqlite`, and one index of every object's alarm,
//! `<dir>/alarms.sqlite`.
//!
//! An object's keys and values are the table `_isola_kv` of its database,
//! next to the guest's own SQL tables, so a transaction covers both. Its
//! alarm is in the shared index instead, where the scheduler finds every
//! alarm with one query after a restart and `delete_all` (which deletes
//! the object's file) leaves it alone.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, TryLockError, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fallible_iterator::FallibleIterator;
use lru::LruCache;
use rusqlite::config::DbConfig;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, ErrorCode, OptionalExtension, StatementStatus, params};

use super::{Alarm, Cursor, DurableStore, ListOptions, ObjectStorage};
use crate::embedded::{LazyConn, blocking, open_sqlite};
use crate::error::{BindingError, Result, backend_err};
use crate::sql::Value;
use crate::sql::sqlite::from_sqlite;
use crate::util::{lock, prefix_successor};

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

/// One object: its database connection, opened on first use, and its
/// open transactions.
struct Object {
    key: Key,
    path: PathBuf,
    shared: Weak<Shared>,
    alarms: Arc<LazyConn>,
    sql_time_limit: Duration,
    /// Only ever locked on the blocking pool (or with `try_lock`).
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    db: Option<Db>,
    /// Transactions the guest has open.
    depth: usize,
    /// How many of them (the outermost ones) have their savepoint on `db`.
    /// A transaction's `SAVEPOINT` waits for the first call that needs the
    /// database, so a transaction that only reads an object that was never
    /// written creates no file. Nothing observable changes: the object is
    /// the connection's only user.
    issued: usize,
    /// The alarm change made in each open transaction (`Some(None)`:
    /// deleted), applied to the index when the outermost one commits.
    alarm_changes: Vec<Option<Option<u64>>>,
}

/// An object's open connection and what its hooks consult.
struct Db {
    conn: Connection,
    guard: Arc<Guard>,
}

/// Handed out by [`SqliteDurableStore::open_object`]; all handles of one
/// object share it.
struct Handle(Arc<Object>);

impl Object {
    fn is_open(&self) -> bool {
        match self.state.try_lock() {
            Ok(state) => state.db.is_some(),
            // In use right now: it has a connection or is opening one.
            Err(_) => true,
        }
    }

    /// The connection, opened if need be, with every open transaction's
    /// savepoint issued on it. `None` when the object has no file and
    /// `create` is false: there is nothing to read.
    fn db<'s>(&self, state: &'s mut State, create: bool) -> Result<Option<&'s mut Db>> {
        state.check_not_rolled_back()?;
        if state.db.is_none() {
            if !create && !self.path.exists() {
                return Ok(None);
            }
            state.db = Some(Db::open(&self.path, self.sql_time_limit)?);
            state.issued = 0;
        }
        let State {
            db, depth, issued, ..
        } = state;
        let Some(db) = db.as_mut() else {
            return Ok(None);
        };
        while *issued < *depth {
            db.conn
                .execute_batch(&format!("SAVEPOINT isola_tx_{}", *issued + 1))
                .map_err(backend_err)?;
            *issued += 1;
        }
        Ok(Some(db))
    }

    fn get(&self, state: &mut State, keys: Vec<String>) -> Result<Vec<(String, Vec<u8>)>> {
        let Some(db) = self.db(state, false)? else {
            return Ok(Vec::new());
        };
        let mut stmt = db
            .conn
            .prepare_cached("SELECT value FROM _isola_kv WHERE key = ?1")
            .map_err(backend_err)?;
        let mut seen = HashSet::new();
        let mut found = Vec::new();
        for key in keys {
            if !seen.insert(key.clone()) {
                continue;
            }
            let value: Option<Vec<u8>> = stmt
                .query_row([&key], |row| row.get(0))
                .optional()
                .map_err(backend_err)?;
            if let Some(value) = value {
                found.push((key, value));
            }
        }
        Ok(found)
    }

    fn put(&self, state: &mut State, entries: Vec<(String, Vec<u8>)>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let Some(db) = self.db(state, true)? else {
            return Err(no_db());
        };
        atomically(&db.conn, || {
            let mut stmt = db
                .conn
                .prepare_cached(
                    "INSERT INTO _isola_kv (key, value) VALUES (?1, ?2)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                )
                .map_err(backend_err)?;
            for (key, value) in &entries {
                stmt.execute(params![key, value]).map_err(backend_err)?;
            }
            Ok(())
        })
    }

    fn delete(&self, state: &mut State, keys: Vec<String>) -> Result<u32> {
        let Some(db) = self.db(state, false)? else {
            return Ok(0);
        };
        atomically(&db.conn, || {
            let mut stmt = db
                .conn
                .prepare_cached("DELETE FROM _isola_kv WHERE key = ?1")
                .map_err(backend_err)?;
            let mut deleted = 0u32;
            for key in &keys {
                let n = stmt.execute([key]).map_err(backend_err)?;
                deleted += u32::try_from(n).unwrap_or(u32::MAX);
            }
            Ok(deleted)
        })
    }

    fn list(&self, state: &mut State, options: ListOptions) -> Result<Vec<(String, Vec<u8>)>> {
        let Some(db) = self.db(state, false)? else {
            return Ok(Vec::new());
        };
        let bounds = Bounds::of(&options);
        let limit = options.limit.map_or(-1, i64::from);
        let mut stmt = db
            .conn
            .prepare_cached(&list_sql(&bounds, options.reverse))
            .map_err(backend_err)?;
        let lower = bounds.lower.as_ref().map(|(key, _)| key.as_str());
        let rows = stmt
            .query_map(params![lower, bounds.upper, limit], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .map_err(backend_err)?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(backend_err)
    }

    /// Roll back, checkpoint so the file holds every commit, close, and
    /// delete the file: a crash at any point leaves either the whole
    /// database or none of it, never the database without its WAL.
    fn delete_all(&self, state: &mut State) -> Result<()> {
        state.depth = 0;
        state.issued = 0;
        state.alarm_changes.clear();
        let db = match state.db.take() {
            Some(db) => db,
            None if self.path.exists() => Db::open(&self.path, self.sql_time_limit)?,
            None => return Ok(()),
        };
        if !db.conn.is_autocommit() {
            db.conn.execute_batch("ROLLBACK").map_err(backend_err)?;
        }
        let busy: i64 = db
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))
            .map_err(backend_err)?;
        if busy != 0 {
            state.db = Some(db);
            return Err(BindingError::Backend(format!(
                "cannot delete {}: another connection is using it",
                self.path.display()
            )));
        }
        drop(db);
        for suffix in ["-wal", "-shm", ""] {
            let mut path = self.path.clone().into_os_string();
            path.push(suffix);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(BindingError::Backend(format!(
                        "cannot delete {}: {e}",
                        Path::new(&path).display()
                    )));
                }
            }
        }
        Ok(())
    }

    fn commit(&self, state: &mut State) -> Result<()> {
        state.check_not_rolled_back()?;
        let level = state.depth;
        if level == 0 {
            return Err(BindingError::Invalid(
                "commit: no transaction is open".into(),
            ));
        }
        if state.issued == level {
            let Some(db) = &state.db else {
                return Err(no_db());
            };
            // Outermost: the commit. A failure leaves the transaction open,
            // for the guest to roll back (or the end of the run).
            db.conn
                .execute_batch(&format!("RELEASE isola_tx_{level}"))
                .map_err(backend_err)?;
            state.issued -= 1;
        }
        state.depth -= 1;
        if let Some(change) = state.alarm_changes.pop().flatten() {
            match state.alarm_changes.last_mut() {
                Some(outer) => *outer = Some(change),
                None => self.write_alarm(change)?,
            }
        }
        Ok(())
    }

    fn rollback(&self, state: &mut State) -> Result<()> {
        state.check_not_rolled_back()?;
        let level = state.depth;
        if level == 0 {
            return Err(BindingError::Invalid(
                "rollback: no transaction is open".into(),
            ));
        }
        if state.issued == level {
            let Some(db) = &state.db else {
                return Err(no_db());
            };
            db.conn
                .execute_batch(&format!(
                    "ROLLBACK TO isola_tx_{level}; RELEASE isola_tx_{level}"
                ))
                .map_err(backend_err)?;
            state.issued -= 1;
        }
        state.depth -= 1;
        state.alarm_changes.pop();
        Ok(())
    }

    fn end_run(&self, state: &mut State) {
        if state.issued > 0
            && let Some(db) = &state.db
            && let Err(e) = db.conn.execute_batch("ROLLBACK")
        {
            // Closing the connection rolls the transaction back too.
            tracing::warn!(path = %self.path.display(), "ROLLBACK failed ({e}); closing the database");
            state.db = None;
        }
        state.depth = 0;
        state.issued = 0;
        state.alarm_changes.clear();
    }

    fn sql_exec(&self, state: &mut State, query: &str, params: &[Value]) -> Result<Cursor> {
        let Some(db) = self.db(state, true)? else {
            return Err(no_db());
        };
        atomically(&db.conn, || {
            let _user = UserSql::enter(&db.guard);
            run_sql(&db.conn, &db.guard, query, params)
        })
    }

    fn database_size(&self, state: &mut State) -> Result<u64> {
        let Some(db) = self.db(state, false)? else {
            return Ok(0);
        };
        let pragma = |name: &str| {
            db.conn
                .query_row(&format!("PRAGMA {name}"), [], |row| row.get::<_, i64>(0))
                .map_err(backend_err)
        };
        Ok((pragma("page_count")? * pragma("page_size")?).max(0) as u64)
    }

    fn get_alarm(&self, state: &State) -> Result<Option<u64>> {
        if let Some(change) = state.alarm_changes.iter().rev().find_map(|c| *c) {
            return Ok(change);
        }
        if !self.alarms.exists() {
            return Ok(None);
        }
        let (namespace, id) = &self.key;
        self.alarms.with(|conn| {
            conn.prepare_cached("SELECT time_ms FROM alarms WHERE namespace = ?1 AND id = ?2")
                .and_then(|mut stmt| {
                    stmt.query_row([namespace, id], |row| row.get::<_, i64>(0))
                        .optional()
                })
                .map(|at| at.map(|at| at.max(0) as u64))
                .map_err(backend_err)
        })
    }

    fn change_alarm(&self, state: &mut State, change: Option<u64>) -> Result<()> {
        match state.alarm_changes.last_mut() {
            Some(pending) => {
                *pending = Some(change);
                Ok(())
            }
            None => self.write_alarm(change),
        }
    }

    fn write_alarm(&self, change: Option<u64>) -> Result<()> {
        if change.is_none() && !self.alarms.exists() {
            return Ok(());
        }
        let (namespace, id) = &self.key;
        self.alarms.with(|conn| {
            match change {
                Some(at) => conn
                    .prepare_cached(
                        "INSERT INTO alarms (namespace, id, time_ms) VALUES (?1, ?2, ?3)
                         ON CONFLICT (namespace, id) DO UPDATE SET time_ms = excluded.time_ms",
                    )
                    .and_then(|mut stmt| {
                        // Checked against i64::MAX by `Checked::set_alarm`.
                        stmt.execute(params![
                            namespace,
                            id,
                            i64::try_from(at).unwrap_or(i64::MAX)
                        ])
                    }),
                None => conn
                    .prepare_cached("DELETE FROM alarms WHERE namespace = ?1 AND id = ?2")
                    .and_then(|mut stmt| stmt.execute([namespace, id])),
            }
            .map(drop)
            .map_err(backend_err)
        })
    }

    /// Close the connection if nothing is using it and no transaction is
    /// open; hand it back to be dropped (closing does I/O). `Err` when the
    /// object must stay open.
    fn take_idle_db(&self) -> std::result::Result<Option<Db>, ()> {
        let mut state = match self.state.try_lock() {
            Ok(state) => state,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return Err(()),
        };
        if state.issued > 0 {
            return Err(());
        }
        Ok(state.db.take())
    }
}

impl State {
    /// SQLite rolls a whole transaction back by itself after some errors
    /// (a full disk, an interrupt); the guest's open transactions are gone
    /// then, and saying so beats failing later on a missing savepoint.
    fn check_not_rolled_back(&mut self) -> Result<()> {
        let rolled_back =
            self.issued > 0 && self.db.as_ref().is_some_and(|db| db.conn.is_autocommit());
        if rolled_back {
            self.depth = 0;
            self.issued = 0;
            self.alarm_changes.clear();
            return Err(BindingError::Backend(
                "the open transaction was rolled back after an error".into(),
            ));
        }
        Ok(())
    }

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
}

fn no_db() -> BindingError {
    BindingError::Backend("the object's database is not open".into())
}

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

impl Db {
    /// Open (creating) the object's file: WAL and `synchronous=NORMAL`
    /// ([`open_sqlite`]: a call that returned survives a process crash),
    /// defensive mode (no writes to the schema tables), the guest SQL's
    /// authorizer and time limit, and the key-value table.
    fn open(path: &Path, sql_time_limit: Duration) -> Result<Db> {
        let opened = || -> Result<Db> {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(backend_err)?;
            }
            let mut conn = open_sqlite(path).map_err(backend_err)?;
            conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)
                .map_err(backend_err)?;
            conn.execute_batch(&format!("PRAGMA cache_size = -{CACHE_KIB};"))
                .map_err(backend_err)?;
            let guard = Arc::new(Guard {
                user: AtomicBool::new(false),
                denied: Mutex::new(None),
                deadline: Mutex::new(None),
                time_limit: sql_time_limit,
            });
            let hook = guard.clone();
            conn.authorizer(Some(move |ctx: AuthContext<'_>| hook.authorize(ctx)))
                .map_err(backend_err)?;
            let hook = guard.clone();
            conn.progress_handler(10_000, Some(move || hook.overdue()))
                .map_err(backend_err)?;
            conn.execute_batch(
                "CREATE TABLE IF NOT EXISTS _isola_kv (
                     key TEXT PRIMARY KEY,
                     value BLOB NOT NULL
                 ) WITHOUT ROWID;",
            )
            .map_err(backend_err)?;
            Ok(Db { conn, guard })
        };
        opened().map_err(|e| BindingError::Backend(format!("cannot open {}: {e}", path.display())))
    }
}

/// Run `f` under a savepoint: all of its writes or none. Works inside and
/// outside a transaction; outside, the release is the commit.
fn atomically<T>(conn: &Connection, f: impl FnOnce() -> Result<T>) -> Result<T> {
    conn.execute_batch("SAVEPOINT isola_call")
        .map_err(backend_err)?;
    let result = f().and_then(|value| {
        conn.execute_batch("RELEASE isola_call")
            .map_err(backend_err)?;
        Ok(value)
    });
    if result.is_err() {
        // After some errors SQLite has rolled back already and the
        // savepoint is gone; nothing is left to undo then.
        let _ = conn.execute_batch("ROLLBACK TO isola_call; RELEASE isola_call");
    }
    result
}

/// A list's bounds: the greatest lower bound and least upper bound of
/// `start`/`startAfter`, `end` and the prefix's range.
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

/// The list query for `bounds`: `?1` the lower bound, `?2` the upper, `?3`
/// the limit (-1: none). The bounds are in the statement's text, not `?1 IS
/// NULL OR …`, so SQLite seeks in the primary key, either way.
fn list_sql(bounds: &Bounds, reverse: bool) -> String {
    let lower = match bounds.lower {
        Some((_, true)) => "key >= ?1",
        Some((_, false)) => "key > ?1",
        None => "?1 IS NULL",
    };
    let upper = if bounds.upper.is_some() {
        "key < ?2"
    } else {
        "?2 IS NULL"
    };
    let order = if reverse { "DESC" } else { "ASC" };
    format!(
        "SELECT key, value FROM _isola_kv WHERE {lower} AND {upper} ORDER BY key {order} LIMIT ?3"
    )
}

/// What an object connection's hooks consult: whether the guest's SQL is
/// being prepared or run (our own statements are trusted), why the
/// authorizer refused it, and when to interrupt it.
struct Guard {
    user: AtomicBool,
    denied: Mutex<Option<String>>,
    deadline: Mutex<Option<Instant>>,
    time_limit: Duration,
}

impl Guard {
    fn authorize(&self, ctx: AuthContext<'_>) -> Authorization {
        if !self.user.load(Ordering::Relaxed) {
            return Authorization::Allow;
        }
        match check_action(&ctx) {
            Ok(()) => Authorization::Allow,
            Err(reason) => {
                lock(&self.denied).get_or_insert(reason);
                Authorization::Deny
            }
        }
    }

    fn overdue(&self) -> bool {
        lock(&self.deadline).is_some_and(|deadline| Instant::now() >= deadline)
    }

    /// `e` from the guest's SQL as the guest sees it: an authorizer refusal
    /// or the time limit with our reason; SQLite's message otherwise,
    /// [`BindingError::Invalid`] when the SQL is at fault (syntax, names,
    /// constraints, types) and [`BindingError::Backend`] when the store is
    /// (I/O, a full disk, corruption, a lock held elsewhere).
    fn error(&self, e: rusqlite::Error) -> BindingError {
        let (code, message) = match e {
            rusqlite::Error::SqliteFailure(error, message) => (error.code, message),
            rusqlite::Error::SqlInputError { error, msg, .. } => (error.code, Some(msg)),
            other => return backend_err(other),
        };
        let message = message.unwrap_or_else(|| format!("{code:?}"));
        match code {
            ErrorCode::AuthorizationForStatementDenied => BindingError::Invalid(
                lock(&self.denied)
                    .take()
                    .unwrap_or_else(|| format!("the SQL is not allowed: {message}")),
            ),
            ErrorCode::OperationInterrupted => BindingError::Invalid(format!(
                "the SQL ran longer than {:?} and was stopped",
                self.time_limit
            )),
            ErrorCode::Unknown
            | ErrorCode::ConstraintViolation
            | ErrorCode::TypeMismatch
            | ErrorCode::TooBig
            | ErrorCode::ParameterOutOfRange => BindingError::Invalid(message),
            _ => BindingError::Backend(message),
        }
    }
}

/// The guest's SQL is running while this lives.
struct UserSql<'g>(&'g Guard);

impl<'g> UserSql<'g> {
    fn enter(guard: &'g Guard) -> Self {
        *lock(&guard.denied) = None;
        *lock(&guard.deadline) = Some(Instant::now() + guard.time_limit);
        guard.user.store(true, Ordering::Relaxed);
        UserSql(guard)
    }
}

impl Drop for UserSql<'_> {
    fn drop(&mut self) {
        self.0.user.store(false, Ordering::Relaxed);
        *lock(&self.0.deadline) = None;
    }
}

/// Whether `name` is one of the storage's own (`_isola_…`, any case).
fn reserved(name: &str) -> bool {
    let prefix = super::RESERVED_SQL_PREFIX.as_bytes();
    name.as_bytes()
        .get(..prefix.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
}

/// Pragmas the guest may run: reading the schema and toggling checks, as
/// Workers allows; none that changes durability, the journal or the file.
fn pragma_allowed(name: &str, value: Option<&str>) -> bool {
    let unquoted = value.map(|v| v.trim_matches(|c| c == '\'' || c == '"'));
    match name.to_ascii_lowercase().as_str() {
        "data_version" | "page_size" | "page_count" | "freelist_count" => value.is_none(),
        "table_list" => true,
        "table_info" | "table_xinfo" | "index_list" | "index_info" | "index_xinfo"
        | "foreign_key_list" => unquoted.is_some_and(|v| !reserved(v)),
        "foreign_key_check" | "quick_check" | "integrity_check" => {
            unquoted.is_none_or(|v| !reserved(v))
        }
        "case_sensitive_like"
        | "foreign_keys"
        | "defer_foreign_keys"
        | "ignore_check_constraints"
        | "legacy_alter_table"
        | "recursive_triggers"
        | "reverse_unordered_selects" => unquoted.is_none_or(|v| {
            ["true", "false", "yes", "no", "on", "off", "1", "0"]
                .iter()
                .any(|b| v.eq_ignore_ascii_case(b))
        }),
        "optimize" => unquoted.is_none_or(|v| v.parse::<i64>().is_ok()),
        _ => false,
    }
}

/// Whether the guest's SQL may do `ctx`; the reason when not.
fn check_action(ctx: &AuthContext<'_>) -> std::result::Result<(), String> {
    if let Some(database) = ctx.database_name
        && database != "main"
    {
        return Err(format!(
            "the SQL uses the database `{database}`; an object has only its own (`main`): no \
             temporary or attached databases"
        ));
    }
    let names: &[&str] = match ctx.action {
        AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } => {
            return Err(
                "BEGIN, COMMIT, ROLLBACK, SAVEPOINT and RELEASE are not allowed in \
                        SQL: transactions go through the storage API (`transaction()`)"
                    .into(),
            );
        }
        AuthAction::Attach { .. } | AuthAction::Detach { .. } => {
            return Err("ATTACH and DETACH are not allowed: an object has one database".into());
        }
        AuthAction::CreateTempTable { .. }
        | AuthAction::CreateTempIndex { .. }
        | AuthAction::CreateTempTrigger { .. }
        | AuthAction::CreateTempView { .. }
        | AuthAction::DropTempTable { .. }
        | AuthAction::DropTempIndex { .. }
        | AuthAction::DropTempTrigger { .. }
        | AuthAction::DropTempView { .. } => {
            return Err("temporary tables, indexes, triggers and views are not supported".into());
        }
        AuthAction::Pragma {
            pragma_name,
            pragma_value,
        } => {
            return if pragma_allowed(pragma_name, pragma_value) {
                Ok(())
            } else {
                Err(format!("PRAGMA {pragma_name} is not allowed"))
            };
        }
        AuthAction::CreateVtable {
            table_name,
            module_name,
        }
        | AuthAction::DropVtable {
            table_name,
            module_name,
        } => {
            let known = ["fts5", "fts5vocab", "rtree", "rtree_i32"]
                .iter()
                .any(|m| module_name.eq_ignore_ascii_case(m));
            if !known {
                return Err(format!(
                    "virtual tables of module `{module_name}` are not allowed (fts5 and rtree are)"
                ));
            }
            &[table_name]
        }
        AuthAction::Function { function_name } => {
            let unsafe_fn = ["load_extension", "fts3_tokenizer"]
                .iter()
                .any(|f| function_name.eq_ignore_ascii_case(f));
            if unsafe_fn {
                return Err(format!("the function {function_name}() is not allowed"));
            }
            &[]
        }
        AuthAction::CreateIndex {
            index_name: a,
            table_name: b,
        }
        | AuthAction::DropIndex {
            index_name: a,
            table_name: b,
        }
        | AuthAction::CreateTrigger {
            trigger_name: a,
            table_name: b,
        }
        | AuthAction::DropTrigger {
            trigger_name: a,
            table_name: b,
        } => &[a, b],
        AuthAction::CreateTable { table_name: a }
        | AuthAction::DropTable { table_name: a }
        | AuthAction::Insert { table_name: a }
        | AuthAction::Delete { table_name: a }
        | AuthAction::Read { table_name: a, .. }
        | AuthAction::Update { table_name: a, .. }
        | AuthAction::AlterTable { table_name: a, .. }
        | AuthAction::CreateView { view_name: a }
        | AuthAction::DropView { view_name: a }
        | AuthAction::Reindex { index_name: a } => &[a],
        // ANALYZE without a name analyzes every table, ours too: it only
        // records index statistics, no data.
        AuthAction::Analyze { .. } | AuthAction::Select | AuthAction::Recursive => &[],
        _ => return Err("the SQL does something the storage does not allow".into()),
    };
    match names.iter().find(|name| reserved(name)) {
        Some(name) => Err(format!(
            "`{name}` belongs to the storage itself: names starting with `{}` are reserved",
            super::RESERVED_SQL_PREFIX
        )),
        None => Ok(()),
    }
}

/// The first keyword of a statement's text, after blanks and comments.
fn first_keyword(sql: &str) -> &str {
    let mut rest = sql;
    loop {
        rest = rest.trim_start();
        if let Some(comment) = rest.strip_prefix("--") {
            rest = comment.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(comment) = rest.strip_prefix("/*") {
            rest = comment.split_once("*/").map_or("", |(_, after)| after);
        } else {
            break;
        }
    }
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    &rest[..end]
}

/// Prepare and run each statement of `query` in turn (a statement is
/// prepared after the previous one ran, so it may use the tables that one
/// made), binding the next `?`s of `params` to it. The cursor holds the
/// last statement's rows; `rows_read` is approximate, as in D1's backend:
/// the rows the statements returned plus SQLite's full-scan steps (one per
/// row passed over in a table scan), not rows reached through an index and
/// skipped; `rows_written` counts every row inserted, updated or deleted,
/// triggers included.
fn run_sql(conn: &Connection, guard: &Guard, query: &str, params: &[Value]) -> Result<Cursor> {
    let changes_before = conn.total_changes();
    let mut statements = rusqlite::Batch::new(conn, query);
    let mut cursor = Cursor::default();
    let mut bound = 0usize;
    let mut count = 0usize;
    while let Some(mut stmt) = statements.next().map_err(|e| guard.error(e))? {
        count += 1;
        // VACUUM asks the authorizer nothing, and `VACUUM INTO 'file'`
        // writes wherever the host may.
        let text = stmt.expanded_sql().ok_or_else(|| {
            BindingError::Backend("SQLite could not show the statement's text".into())
        })?;
        if first_keyword(&text).eq_ignore_ascii_case("VACUUM") {
            return Err(BindingError::Invalid(
                "VACUUM is not allowed: the storage manages the file".into(),
            ));
        }
        let wanted = stmt.parameter_count();
        let Some(mine) = params.get(bound..bound + wanted) else {
            return Err(BindingError::Invalid(format!(
                "statement {count} of the SQL takes {wanted} parameters, but only {} of the {} \
                 given are left for it",
                params.len() - bound,
                params.len()
            )));
        };
        for (i, value) in mine.iter().enumerate() {
            stmt.raw_bind_parameter(i + 1, to_sqlite(value))
                .map_err(|e| guard.error(e))?;
        }
        bound += wanted;
        cursor.columns = stmt.column_names().map(String::from).collect();
        cursor.rows.clear();
        let mut size = 0usize;
        {
            let mut rows = stmt.raw_query();
            while let Some(row) = rows.next().map_err(|e| guard.error(e))? {
                let values = (0..cursor.columns.len())
                    .map(|i| row.get_ref(i).map(from_sqlite))
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(|e| guard.error(e))?;
                size += values.iter().map(value_size).sum::<usize>();
                if size > MAX_CURSOR_BYTES {
                    return Err(BindingError::Invalid(format!(
                        "statement {count} of the SQL returns more than {} MiB; select fewer \
                         rows or columns",
                        MAX_CURSOR_BYTES / (1024 * 1024)
                    )));
                }
                cursor.rows.push(values);
            }
        }
        let scanned = stmt.get_status(StatementStatus::FullscanStep).max(0) as u64;
        cursor.rows_read += cursor.rows.len() as u64 + scanned;
    }
    if count == 0 {
        return Err(BindingError::Invalid("the SQL holds no statement".into()));
    }
    if bound != params.len() {
        return Err(BindingError::Invalid(format!(
            "the SQL takes {bound} parameters, but {} were given",
            params.len()
        )));
    }
    cursor.rows_written = conn.total_changes() - changes_before;
    Ok(cursor)
}

fn to_sqlite(value: &Value) -> ToSqlOutput<'_> {
    ToSqlOutput::Borrowed(match value {
        Value::Null => ValueRef::Null,
        Value::Integer(i) => ValueRef::Integer(*i),
        Value::Real(f) => ValueRef::Real(*f),
        Value::Text(s) => ValueRef::Text(s.as_bytes()),
        Value::Blob(b) => ValueRef::Blob(b),
    })
}

/// Roughly what `value` costs in memory.
fn value_size(value: &Value) -> usize {
    match value {
        Value::Text(s) => s.len() + 8,
        Value::Blob(b) => b.len() + 8,
        _ => 8,
    }
}

#[cfg(test)]
pub(super) mod testing {
    use super::*;

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
