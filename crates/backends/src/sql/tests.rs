//! The D1 suite, run against SQLite and PostgreSQL.

use super::*;

use super::sqlite::SqliteSql;

fn st(sql: &str, params: Vec<Value>) -> Statement {
    Statement {
        sql: sql.into(),
        params,
    }
}

/// A D1 backend under test: SQLite or PostgreSQL (a database name of
/// its own per test on the shared server). DDL differs by dialect, so
/// the bodies ask [`Fixture::ddl`] for it.
struct Fixture {
    backend: Arc<dyn SqlBackend>,
    postgres: bool,
    prefix: String,
    _dir: Option<tempfile::TempDir>,
}

impl Fixture {
    fn embedded() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Fixture {
            backend: Arc::new(SqliteSql::new(&dir.path().join("d1")).unwrap()),
            postgres: false,
            prefix: String::new(),
            _dir: Some(dir),
        }
    }

    async fn distributed() -> Self {
        let url = isola_test_services::shared_postgres().url();
        Fixture {
            backend: Arc::new(super::postgres::PostgresSql::connect(&url).await.unwrap()),
            postgres: true,
            prefix: isola_test_services::unique("t").replace('-', "_"),
            _dir: None,
        }
    }

    fn db(&self, name: &str) -> Arc<dyn SqlDatabase> {
        self.backend
            .open(&format!("{}{name}", self.prefix))
            .unwrap()
    }

    /// `sqlite` on SQLite, `postgres` on PostgreSQL.
    fn ddl(&self, sqlite: &str, postgres: &str) -> String {
        if self.postgres { postgres } else { sqlite }.to_owned()
    }
}

crate::for_each_backend!(
    typed_values_and_meta,
    batches_are_one_transaction,
    exec_runs_every_statement,
    a_stray_transaction_is_rolled_back,
    increments_from_many_callers_lose_nothing,
    databases_are_separate,
);

async fn typed_values_and_meta(f: &Fixture) {
    let db = f.db("app");
    db.exec(f.ddl(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b REAL, c BLOB, d TEXT)",
        "CREATE TABLE t (id BIGSERIAL PRIMARY KEY, a TEXT, b DOUBLE PRECISION, c BYTEA, d TEXT)",
    ))
    .await
    .unwrap();
    let insert = db
        .query(st(
            "INSERT INTO t (a, b, c, d) VALUES (?, ?, ?, ?)",
            vec![
                Value::Text("hé '?'".into()),
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
            "SELECT id, a, b, c, d, ?2 AS second, ?1 AS first, 'a?b' AS q FROM t WHERE id = ?1",
            vec![Value::Integer(1), Value::Integer(-7)],
        ))
        .await
        .unwrap();
    assert_eq!(
        rows.columns,
        ["id", "a", "b", "c", "d", "second", "first", "q"]
    );
    assert_eq!(
        rows.rows,
        [[
            Value::Integer(1),
            Value::Text("hé '?'".into()),
            Value::Real(1.5),
            Value::Blob(vec![0, 1, 255]),
            Value::Null,
            Value::Integer(-7),
            Value::Integer(1),
            Value::Text("a?b".into()),
        ]]
    );
    assert_eq!(rows.meta.changes, 0);
    assert!(!rows.meta.changed_db);
    assert!(rows.meta.rows_read >= 1);
    // Aggregates come back as the same kinds.
    let agg = db
        .query(st("SELECT count(*), sum(id), avg(b) FROM t", vec![]))
        .await
        .unwrap();
    assert_eq!(
        agg.rows,
        [[Value::Integer(1), Value::Integer(1), Value::Real(1.5)]]
    );
    for (sql, params) in [
        ("SELECT ?, ?", vec![Value::Null]),
        ("SELECT ?", vec![Value::Null, Value::Null]),
        ("SELECT ?3", vec![Value::Null]),
    ] {
        let err = db.query(st(sql, params)).await.unwrap_err();
        assert!(err.to_string().contains("parameters"), "{sql}: {err}");
    }
    // Updates and deletes count their rows; DDL changes nothing.
    db.exec("INSERT INTO t (a) VALUES ('x'); INSERT INTO t (a) VALUES ('y')".into())
        .await
        .unwrap();
    let update = db
        .query(st(
            "UPDATE t SET b = 2.5 WHERE id > ?",
            vec![Value::Integer(1)],
        ))
        .await
        .unwrap();
    assert_eq!((update.meta.changes, update.meta.rows_written), (2, 2));
    let ddl = db
        .query(st("CREATE TABLE u (y TEXT)", vec![]))
        .await
        .unwrap();
    assert_eq!(ddl.meta.changes, 0);
    assert!(!ddl.meta.changed_db);
    let none = db
        .query(st("DELETE FROM t WHERE id = 999", vec![]))
        .await
        .unwrap();
    assert_eq!((none.meta.changes, none.meta.rows_written), (0, 0));
}

async fn batches_are_one_transaction(f: &Fixture) {
    let db = f.db("app");
    db.exec("CREATE TABLE t (x INTEGER UNIQUE)".into())
        .await
        .unwrap();
    let err = db
        .batch(vec![
            st("INSERT INTO t VALUES (?)", vec![Value::Integer(1)]),
            st("INSERT INTO t VALUES (?)", vec![Value::Integer(1)]),
            st("INSERT INTO t VALUES (?)", vec![Value::Integer(2)]),
        ])
        .await
        .unwrap_err();
    assert!(matches!(err, BindingError::Backend(_)), "{err}");
    assert!(err.to_string().starts_with("statement 2 of 3: "), "{err}");
    if !f.postgres {
        // D1's own message, as SQLite words it.
        assert_eq!(
            err,
            BindingError::Backend("statement 2 of 3: UNIQUE constraint failed: t.x".into())
        );
    }
    let count = db
        .query(st("SELECT count(*) FROM t", vec![]))
        .await
        .unwrap();
    assert_eq!(count.rows, [[Value::Integer(0)]]);
    let ok = db
        .batch(vec![
            st("INSERT INTO t VALUES (?)", vec![Value::Integer(1)]),
            st("INSERT INTO t VALUES (?)", vec![Value::Integer(2)]),
            st("SELECT x FROM t ORDER BY x", vec![]),
        ])
        .await
        .unwrap();
    assert_eq!(ok.len(), 3);
    assert_eq!(ok[0].meta.changes, 1);
    if !f.postgres {
        // SQLite's rowid; on PostgreSQL it is `lastval()`, and `t` has
        // no sequence.
        assert_eq!(ok[1].meta.last_row_id, 2);
    }
    assert_eq!(ok[2].rows, [[Value::Integer(1)], [Value::Integer(2)]]);
    // A COMMIT inside a batch would commit its first half: refused.
    let err = db
        .batch(vec![
            st("INSERT INTO t VALUES (3)", vec![]),
            st("COMMIT", vec![]),
            st("INSERT INTO t VALUES (1)", vec![]),
        ])
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("statement 2 of 3:"), "{err}");
    let count = db
        .query(st("SELECT count(*) FROM t", vec![]))
        .await
        .unwrap();
    assert_eq!(count.rows, [[Value::Integer(2)]]);
    db.exec("BEGIN; INSERT INTO t VALUES (5); COMMIT".into())
        .await
        .unwrap();
    assert!(db.batch(vec![]).await.unwrap().is_empty());
}

async fn exec_runs_every_statement(f: &Fixture) {
    let db = f.db("app");
    let done = db
        .exec(
            "CREATE TABLE t (x TEXT);\n INSERT INTO t VALUES (';');; SELECT * FROM t; -- done\n"
                .into(),
        )
        .await
        .unwrap();
    assert_eq!(done.count, 3);
    assert_eq!(db.exec("".into()).await.unwrap().count, 0);
    let err = db.query(st("SELEC 1", vec![])).await.unwrap_err();
    assert!(
        matches!(err, BindingError::Backend(ref m) if m.contains("syntax error")),
        "{err}"
    );
    let err = db
        .query(st("SELECT * FROM nope", vec![]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, BindingError::Backend(ref m) if m.contains("nope")),
        "{err}"
    );
    let rows = db.query(st("SELECT x FROM t", vec![])).await.unwrap();
    assert_eq!(rows.rows, [[Value::Text(";".into())]]);
}

async fn a_stray_transaction_is_rolled_back(f: &Fixture) {
    let db = f.db("app");
    db.exec("CREATE TABLE t (x INTEGER)".into()).await.unwrap();
    let err = db
        .exec("BEGIN; INSERT INTO t VALUES (1)".into())
        .await
        .unwrap_err();
    assert!(
        matches!(err, BindingError::Invalid(ref m) if m.contains("batch()")),
        "{err}"
    );
    let err = db.query(st("BEGIN", vec![])).await.unwrap_err();
    assert!(matches!(err, BindingError::Invalid(_)), "{err}");
    let count = db
        .query(st("SELECT count(*) FROM t", vec![]))
        .await
        .unwrap();
    assert_eq!(count.rows, [[Value::Integer(0)]]);
}

async fn increments_from_many_callers_lose_nothing(f: &Fixture) {
    let db = f.db("app");
    db.exec("CREATE TABLE counter (n INTEGER); INSERT INTO counter VALUES (0)".into())
        .await
        .unwrap();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move { db.query(st("UPDATE counter SET n = n + 1", vec![])).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let n = db.query(st("SELECT n FROM counter", vec![])).await.unwrap();
    assert_eq!(n.rows, [[Value::Integer(50)]]);
}

async fn databases_are_separate(f: &Fixture) {
    let (a, b) = (f.db("a"), f.db("b"));
    a.exec("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1)".into())
        .await
        .unwrap();
    b.exec("CREATE TABLE t (x INTEGER)".into()).await.unwrap();
    let count = b.query(st("SELECT count(*) FROM t", vec![])).await.unwrap();
    assert_eq!(count.rows, [[Value::Integer(0)]]);
    assert!(matches!(
        f.backend.open("../x"),
        Err(BindingError::Invalid(_))
    ));
}
