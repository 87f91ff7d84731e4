//! One object: its database, opened on first use, its keys and values,
//! its open transactions and its alarm.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, TryLockError, Weak};
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::hooks::AuthContext;
use rusqlite::{Connection, OptionalExtension, params};

use super::sql::{Guard, UserSql, run_sql};
use super::{CACHE_KIB, Key, MAX_TRANSACTION_DEPTH, Shared};
use crate::durable::{Cursor, ListOptions};
use crate::embedded::{LazyConn, open_sqlite};
use crate::error::{BindingError, Result, backend_err};
use crate::sql::Value;
use crate::util::prefix_successor;

/// One object: its database connection, opened on first use, and its
/// open transactions.
pub(super) struct Object {
    pub(super) key: Key,
    pub(super) path: PathBuf,
    pub(super) shared: Weak<Shared>,
    pub(super) alarms: Arc<LazyConn>,
    pub(super) sql_time_limit: Duration,
    /// Only ever locked on the blocking pool (or with `try_lock`).
    pub(super) state: Mutex<State>,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) db: Option<Db>,
    /// Transactions the guest has open.
    pub(super) depth: usize,
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
pub(super) struct Db {
    pub(super) conn: Connection,
    pub(super) guard: Arc<Guard>,
}

impl Object {
    pub(super) fn is_open(&self) -> bool {
        match self.state.try_lock() {
            Ok(state) => state.db.is_some(),
            // In use right now: it has a connection or is opening one.
            Err(_) => true,
        }
    }

    /// The connection, opened if need be, with every open transaction's
    /// savepoint issued on it. `None` when the object has no file and
    /// `create` is false: there is nothing to read.
    pub(super) fn db<'s>(&self, state: &'s mut State, create: bool) -> Result<Option<&'s mut Db>> {
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

    pub(super) fn get(
        &self,
        state: &mut State,
        keys: Vec<String>,
    ) -> Result<Vec<(String, Vec<u8>)>> {
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

    pub(super) fn put(&self, state: &mut State, entries: Vec<(String, Vec<u8>)>) -> Result<()> {
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

    pub(super) fn delete(&self, state: &mut State, keys: Vec<String>) -> Result<u32> {
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

    pub(super) fn list(
        &self,
        state: &mut State,
        options: ListOptions,
    ) -> Result<Vec<(String, Vec<u8>)>> {
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
    pub(super) fn delete_all(&self, state: &mut State) -> Result<()> {
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

    pub(super) fn commit(&self, state: &mut State) -> Result<()> {
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

    pub(super) fn rollback(&self, state: &mut State) -> Result<()> {
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

    pub(super) fn end_run(&self, state: &mut State) {
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

    pub(super) fn sql_exec(
        &self,
        state: &mut State,
        query: &str,
        params: &[Value],
    ) -> Result<Cursor> {
        let Some(db) = self.db(state, true)? else {
            return Err(no_db());
        };
        atomically(&db.conn, || {
            let _user = UserSql::enter(&db.guard);
            run_sql(&db.conn, &db.guard, query, params)
        })
    }

    pub(super) fn database_size(&self, state: &mut State) -> Result<u64> {
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

    pub(super) fn get_alarm(&self, state: &State) -> Result<Option<u64>> {
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

    pub(super) fn change_alarm(&self, state: &mut State, change: Option<u64>) -> Result<()> {
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
    pub(super) fn take_idle_db(&self) -> std::result::Result<Option<Db>, ()> {
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
}

fn no_db() -> BindingError {
    BindingError::Backend("the object's database is not open".into())
}

impl Db {
    /// Open (creating) the object's file: WAL and `synchronous=NORMAL`
    /// ([`open_sqlite`]: a call that returned survives a process crash),
    /// defensive mode (no writes to the schema tables), the guest SQL's
    /// authorizer and time limit, and the key-value table.
    pub(super) fn open(path: &Path, sql_time_limit: Duration) -> Result<Db> {
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

/// The list query for `bounds`: `?1` the lower bound, `?2` the upper, `?3`
/// the limit (-1: none). The bounds are in the statement's text, not `?1 IS
/// NULL OR …`, so SQLite seeks in the primary key, either way.
pub(super) fn list_sql(bounds: &Bounds, reverse: bool) -> String {
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
