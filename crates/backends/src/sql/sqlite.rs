//! The embedded D1 backend: one SQLite file per database in WAL mode,
//! `<dir>/<name>.sqlite`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use fallible_iterator::FallibleIterator;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, StatementStatus, TransactionBehavior};

use super::{ExecResult, Meta, Rows, SqlBackend, SqlDatabase, Statement, Value};
use crate::embedded::blocking;
use crate::error::{BindingError, Result, backend_err};
use crate::util::lock;

/// The embedded backend: `<dir>/<name>.sqlite`.
pub struct SqliteSql {
    dir: PathBuf,
    /// One handle per database, shared by every caller, so all of them are
    /// serialized on the same connection (no `SQLITE_BUSY` between our own
    /// callers) and see each other's writes at once.
    open: Mutex<HashMap<String, Arc<SqliteDatabase>>>,
}

impl SqliteSql {
    pub fn new(dir: &std::path::Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| BindingError::Backend(format!("cannot create {}: {e}", dir.display())))?;
        Ok(SqliteSql {
            dir: dir.to_owned(),
            open: Mutex::new(HashMap::new()),
        })
    }
}

impl SqlBackend for SqliteSql {
    fn open_database(&self, name: &str) -> Result<Arc<dyn SqlDatabase>> {
        // Holding the map's lock while opening makes two first callers share
        // one handle; opening a SQLite file takes well under a millisecond.
        let mut open = lock(&self.open);
        if let Some(db) = open.get(name) {
            return Ok(db.clone());
        }
        let db = Arc::new(SqliteDatabase::open(
            &self.dir.join(format!("{name}.sqlite")),
        )?);
        open.insert(name.to_owned(), db.clone());
        Ok(db)
    }
}

/// One database file behind one connection.
///
/// A mutex rather than a pool: SQLite admits one writer at a time anyway,
/// one connection means a batch's transaction can never wait on another of
/// our own connections, and D1 itself runs a database's queries one at a
/// time. The mutex is only taken inside `spawn_blocking`.
struct SqliteDatabase {
    conn: Arc<Mutex<Connection>>,
    /// Set while a batch runs: the authorizer then refuses transaction
    /// statements, so a `COMMIT` inside a batch cannot commit half of it.
    in_batch: Arc<AtomicBool>,
}

impl SqliteDatabase {
    fn open(path: &std::path::Path) -> Result<Self> {
        let mut conn = crate::embedded::open_sqlite(path).map_err(sql_err)?;
        conn.execute_batch("PRAGMA foreign_keys=ON;")
            .map_err(sql_err)?;
        let in_batch = Arc::new(AtomicBool::new(false));
        let flag = in_batch.clone();
        conn.authorizer(Some(move |ctx: AuthContext<'_>| {
            if flag.load(Ordering::Relaxed) && matches!(ctx.action, AuthAction::Transaction { .. })
            {
                Authorization::Deny
            } else {
                Authorization::Allow
            }
        }))
        .map_err(sql_err)?;
        Ok(SqliteDatabase {
            conn: Arc::new(Mutex::new(conn)),
            in_batch,
        })
    }
}

/// Clears the batch flag however the batch ends, before its transaction
/// commits or rolls back (those statements must pass the authorizer).
struct BatchFlag(Arc<AtomicBool>);

impl BatchFlag {
    fn set(flag: &Arc<AtomicBool>) -> Self {
        flag.store(true, Ordering::Relaxed);
        BatchFlag(flag.clone())
    }
}

impl Drop for BatchFlag {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

#[async_trait]
impl SqlDatabase for SqliteDatabase {
    async fn query(&self, statement: Statement) -> Result<Rows> {
        let conn = self.conn.clone();
        blocking(move || {
            let conn = lock(&conn);
            let result = run(&conn, &statement);
            end_stray_transaction(&conn, result)
        })
        .await
    }

    async fn batch(&self, statements: Vec<Statement>) -> Result<Vec<Rows>> {
        let conn = self.conn.clone();
        let in_batch = self.in_batch.clone();
        blocking(move || {
            let mut conn = lock(&conn);
            // IMMEDIATE takes the write lock up front: a deferred transaction
            // that reads and then writes can fail with SQLITE_BUSY at once
            // when another process wrote in between.
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql_err)?;
            let flag = BatchFlag::set(&in_batch);
            let n = statements.len();
            let mut results = Vec::with_capacity(n);
            for (i, statement) in statements.iter().enumerate() {
                let rows = run(&tx, statement).map_err(|e| match e {
                    BindingError::Invalid(m) => {
                        BindingError::Invalid(format!("statement {} of {n}: {m}", i + 1))
                    }
                    BindingError::Backend(m) => {
                        BindingError::Backend(format!("statement {} of {n}: {m}", i + 1))
                    }
                })?; // Dropping `tx` rolls back.
                results.push(rows);
            }
            drop(flag);
            tx.commit().map_err(sql_err)?;
            Ok(results)
        })
        .await
    }

    async fn exec(&self, sql: String) -> Result<ExecResult> {
        let conn = self.conn.clone();
        blocking(move || {
            let conn = lock(&conn);
            let start = Instant::now();
            let result = (|| -> rusqlite::Result<u32> {
                let mut statements = rusqlite::Batch::new(&conn, &sql);
                let mut count = 0u32;
                while let Some(mut stmt) = statements.next()? {
                    let mut rows = stmt.raw_query();
                    while rows.next()?.is_some() {}
                    count += 1;
                }
                Ok(count)
            })()
            .map_err(sql_err);
            let count = end_stray_transaction(&conn, result)?;
            Ok(ExecResult {
                count,
                duration_ms: start.elapsed().as_secs_f64() * 1000.0,
            })
        })
        .await
    }
}

/// The handle is shared by every caller, so a `BEGIN` without its `COMMIT`
/// must not outlive the call: roll it back and say so (use `batch` for
/// transactions, as D1 asks).
fn end_stray_transaction<T>(conn: &Connection, result: Result<T>) -> Result<T> {
    if conn.is_autocommit() {
        return result;
    }
    let rolled_back = conn.execute_batch("ROLLBACK");
    result?;
    rolled_back.map_err(sql_err)?;
    Err(BindingError::Invalid(
        "the SQL left a transaction open, so it was rolled back; use batch() for transactions"
            .into(),
    ))
}

/// SQLite's own message for a failed statement (rusqlite's `Display` adds
/// the SQL text and offset for syntax errors).
fn sql_err(e: rusqlite::Error) -> BindingError {
    match e {
        rusqlite::Error::SqliteFailure(_, Some(msg))
        | rusqlite::Error::SqlInputError { msg, .. } => BindingError::Backend(msg),
        rusqlite::Error::Empty => BindingError::Invalid("the SQL holds no statement".into()),
        rusqlite::Error::MultipleStatement => BindingError::Invalid(
            "the SQL holds more than one statement; use exec() or batch()".into(),
        ),
        other => backend_err(other),
    }
}

/// Prepare, bind, step through every row. `rows_read` is approximate: the
/// rows returned plus SQLite's `SQLITE_STMTSTATUS_FULLSCAN_STEP` counter
/// (the steps from one row to the next in full table scans, so a scan of n
/// rows adds n - 1); rows reached through an index without being returned
/// are not counted.
fn run(conn: &Connection, statement: &Statement) -> Result<Rows> {
    let start = Instant::now();
    let mut stmt = conn.prepare(&statement.sql).map_err(sql_err)?;
    let expected = stmt.parameter_count();
    if statement.params.len() != expected {
        return Err(BindingError::Invalid(format!(
            "the statement takes {expected} parameters but {} were bound",
            statement.params.len()
        )));
    }
    for (i, value) in statement.params.iter().enumerate() {
        stmt.raw_bind_parameter(i + 1, to_sqlite(value))
            .map_err(sql_err)?;
    }
    let readonly = stmt.readonly();
    let columns: Vec<String> = stmt.column_names().map(String::from).collect();
    let changes_before = conn.total_changes();
    let mut rows = Vec::new();
    {
        let mut cursor = stmt.raw_query();
        while let Some(row) = cursor.next().map_err(sql_err)? {
            let values = (0..columns.len())
                .map(|i| row.get_ref(i).map(from_sqlite))
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(sql_err)?;
            rows.push(values);
        }
    }
    let scanned = stmt.get_status(StatementStatus::FullscanStep).max(0) as u64;
    let mut meta = Meta {
        rows_read: rows.len() as u64 + scanned,
        ..Meta::default()
    };
    if !readonly {
        // total_changes also counts rows changed by triggers and, unlike
        // changes(), is not left over from an earlier statement when this
        // one is DDL.
        meta.rows_written = conn.total_changes() - changes_before;
        meta.changes = if meta.rows_written > 0 {
            conn.changes()
        } else {
            0
        };
        meta.last_row_id = conn.last_insert_rowid();
        meta.changed_db = meta.rows_written > 0;
    }
    meta.duration_ms = start.elapsed().as_secs_f64() * 1000.0;
    Ok(Rows {
        columns,
        rows,
        meta,
    })
}

fn to_sqlite(value: &Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as V;
    match value {
        Value::Null => V::Null,
        Value::Integer(i) => V::Integer(*i),
        Value::Real(f) => V::Real(*f),
        Value::Text(s) => V::Text(s.clone()),
        Value::Blob(b) => V::Blob(b.clone()),
    }
}

pub(crate) fn from_sqlite(value: ValueRef<'_>) -> Value {
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(f) => Value::Real(f),
        // SQLite does not enforce UTF-8 in TEXT; keep the bytes faithfully.
        ValueRef::Text(t) => match std::str::from_utf8(t) {
            Ok(s) => Value::Text(s.to_owned()),
            Err(_) => Value::Blob(t.to_vec()),
        },
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn st(sql: &str, params: Vec<Value>) -> Statement {
        Statement {
            sql: sql.into(),
            params,
        }
    }

    fn db(dir: &tempfile::TempDir) -> Arc<dyn SqlDatabase> {
        SqliteSql::new(&dir.path().join("d1"))
            .unwrap()
            .open("app")
            .unwrap()
    }

    #[tokio::test]
    async fn names_are_checked_and_handles_shared() {
        let dir = tempfile::tempdir().unwrap();
        let sql = SqliteSql::new(&dir.path().join("d1")).unwrap();
        for bad in ["", "../x", "a b", "a.b", "é"] {
            assert!(
                matches!(sql.open(bad), Err(BindingError::Invalid(_))),
                "{bad:?}"
            );
        }
        let a = sql.open("My_db-1").unwrap();
        let b = sql.open("My_db-1").unwrap();
        assert!(std::ptr::addr_eq(Arc::as_ptr(&a), Arc::as_ptr(&b)));
        assert!(dir.path().join("d1/My_db-1.sqlite").exists());
        a.exec("CREATE TABLE t (x)".into()).await.unwrap();
        let mode = b.query(st("PRAGMA journal_mode", vec![])).await.unwrap();
        assert_eq!(mode.rows, [[Value::Text("wal".into())]]);
        let fk = b.query(st("PRAGMA foreign_keys", vec![])).await.unwrap();
        assert_eq!(fk.rows, [[Value::Integer(1)]]);
    }

    #[tokio::test]
    async fn values_round_trip_and_params_bind() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(&dir);
        db.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, a, b, c, d)".into())
            .await
            .unwrap();
        let insert = db
            .query(st(
                "INSERT INTO t (a, b, c, d) VALUES (?, ?, ?, ?)",
                vec![
                    Value::Text("hé".into()),
                    Value::Real(1.5),
                    Value::Blob(vec![0, 1, 255]),
                    Value::Null,
                ],
            ))
            .await
            .unwrap();
        assert_eq!(insert.meta.changes, 1);
        assert_eq!(insert.meta.rows_written, 1);
        assert_eq!(insert.meta.last_row_id, 1);
        assert!(insert.meta.changed_db);
        assert!(insert.columns.is_empty() && insert.rows.is_empty());

        let rows = db
            .query(st(
                "SELECT id, a, b, c, d, ?2 AS second, ?1 AS first FROM t WHERE id = ?1",
                vec![Value::Integer(1), Value::Integer(-7)],
            ))
            .await
            .unwrap();
        assert_eq!(rows.columns, ["id", "a", "b", "c", "d", "second", "first"]);
        assert_eq!(
            rows.rows,
            [[
                Value::Integer(1),
                Value::Text("hé".into()),
                Value::Real(1.5),
                Value::Blob(vec![0, 1, 255]),
                Value::Null,
                Value::Integer(-7),
                Value::Integer(1),
            ]]
        );
        assert_eq!(rows.meta.changes, 0);
        assert_eq!(rows.meta.rows_written, 0);
        assert!(!rows.meta.changed_db);
        assert!(rows.meta.rows_read >= 1);
        assert!(rows.meta.duration_ms >= 0.0);

        for (sql, params) in [
            ("SELECT ?, ?", vec![Value::Null]),
            ("SELECT ?", vec![Value::Null, Value::Null]),
            ("SELECT ?3", vec![Value::Null]),
        ] {
            let err = db.query(st(sql, params)).await.unwrap_err();
            assert!(err.to_string().contains("parameters"), "{err}");
        }
    }

    #[tokio::test]
    async fn meta_counts_reads_and_writes() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(&dir);
        db.exec(
            "CREATE TABLE t (x); INSERT INTO t VALUES (1), (2), (3), (4);
             CREATE TABLE log (x); CREATE TRIGGER tr AFTER UPDATE ON t BEGIN INSERT INTO log VALUES (new.x); END;"
                .into(),
        )
        .await
        .unwrap();
        // A full scan of four rows that returns one: 1 + 3 steps.
        let scan = db
            .query(st("SELECT x FROM t WHERE x = 3", vec![]))
            .await
            .unwrap();
        assert_eq!(scan.rows.len(), 1);
        assert_eq!(scan.meta.rows_read, 1 + 3);
        let update = db
            .query(st("UPDATE t SET x = x + 10 WHERE x > 2", vec![]))
            .await
            .unwrap();
        assert_eq!(update.meta.changes, 2);
        assert_eq!(
            update.meta.rows_written, 4,
            "two updates, two trigger inserts"
        );
        // DDL after DML does not inherit the previous statement's changes.
        let ddl = db.query(st("CREATE TABLE u (y)", vec![])).await.unwrap();
        assert_eq!(ddl.meta.changes, 0);
        assert!(!ddl.meta.changed_db);
        let none = db
            .query(st("DELETE FROM t WHERE x = 999", vec![]))
            .await
            .unwrap();
        assert_eq!((none.meta.changes, none.meta.rows_written), (0, 0));
    }

    #[tokio::test]
    async fn exec_counts_statements_and_errors_are_sqlite_messages() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(&dir);
        let done = db
            .exec(
                "CREATE TABLE t (x);\n INSERT INTO t VALUES (1);; SELECT * FROM t; -- done\n"
                    .into(),
            )
            .await
            .unwrap();
        assert_eq!(done.count, 3);
        assert_eq!(db.exec("".into()).await.unwrap().count, 0);

        let err = db.query(st("SELEC 1", vec![])).await.unwrap_err();
        assert_eq!(
            err,
            BindingError::Backend("near \"SELEC\": syntax error".into())
        );
        let err = db
            .query(st("SELECT * FROM nope", vec![]))
            .await
            .unwrap_err();
        assert_eq!(err, BindingError::Backend("no such table: nope".into()));
        let err = db
            .exec("INSERT INTO t VALUES (2); INSERT INTO nope VALUES (1)".into())
            .await
            .unwrap_err();
        assert_eq!(err, BindingError::Backend("no such table: nope".into()));
    }

    #[tokio::test]
    async fn a_stray_begin_is_rolled_back() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(&dir);
        db.exec("CREATE TABLE t (x)".into()).await.unwrap();
        let err = db
            .exec("BEGIN; INSERT INTO t VALUES (1)".into())
            .await
            .unwrap_err();
        assert!(
            matches!(err, BindingError::Invalid(ref m) if m.contains("batch()")),
            "{err}"
        );
        let err = db.query(st("BEGIN", vec![])).await.unwrap_err();
        assert!(matches!(err, BindingError::Invalid(_)));
        let count = db
            .query(st("SELECT count(*) FROM t", vec![]))
            .await
            .unwrap();
        assert_eq!(count.rows, [[Value::Integer(0)]]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_increments_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(&dir);
        db.exec("CREATE TABLE counter (n INTEGER); INSERT INTO counter VALUES (0)".into())
            .await
            .unwrap();
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let db = db.clone();
                tokio::spawn(
                    async move { db.query(st("UPDATE counter SET n = n + 1", vec![])).await },
                )
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let n = db.query(st("SELECT n FROM counter", vec![])).await.unwrap();
        assert_eq!(n.rows, [[Value::Integer(50)]]);
    }
}
