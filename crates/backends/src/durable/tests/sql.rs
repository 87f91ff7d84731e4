//! The SQL API on both backends.

use super::*;

crate::for_each_backend!(
    sql_runs_several_statements_with_parameters_across_them,
    a_failing_statement_undoes_the_whole_call,
    sql_may_not_touch_the_storage_or_the_host,
    a_runaway_query_is_stopped,
);

async fn sql_runs_several_statements_with_parameters_across_them(f: &Fixture) {
    let o = f.sql(1);
    let cursor = exec(
        &*o,
        "CREATE TABLE t (n INTEGER, label TEXT);
         INSERT INTO t VALUES (?, ?);
         INSERT INTO t VALUES (?2, ?1); -- numbered: this statement's own
         SELECT n AS number, label FROM t WHERE n > ? ORDER BY n",
        vec![
            Value::Integer(1),
            Value::Text("one".into()),
            Value::Text("two".into()),
            Value::Integer(2),
            Value::Integer(0),
        ],
    )
    .await
    .unwrap();
    assert_eq!(cursor.columns, ["number", "label"]);
    assert_eq!(
        cursor.rows,
        [
            [Value::Integer(1), Value::Text("one".into())],
            [Value::Integer(2), Value::Text("two".into())]
        ]
    );
    assert_eq!(cursor.rows_written, 2);
    assert!(cursor.rows_read >= 2, "{}", cursor.rows_read);

    let update = exec(&*o, "UPDATE t SET n = n * 10", vec![]).await.unwrap();
    assert_eq!(update.rows_written, 2);
    assert!(update.columns.is_empty() && update.rows.is_empty());
    let read = exec(&*o, "SELECT * FROM t", vec![]).await.unwrap();
    assert_eq!(read.rows_written, 0);
    assert_eq!(read.columns, ["n", "label"]);

    // Every value type round-trips.
    let values = vec![
        Value::Null,
        Value::Integer(i64::MIN),
        Value::Real(-1.5),
        Value::Text("hé \u{10FFFF}".into()),
        Value::Blob(vec![0, 1, 255]),
        Value::Blob(vec![]),
    ];
    // (PostgreSQL needs a type for a NULL with nothing around it.)
    let echo = f.dialect("SELECT ?, ?, ?, ?, ?, ?", "SELECT ?::text, ?, ?, ?, ?, ?");
    let echoed = exec(&*o, &echo, values.clone()).await.unwrap();
    assert_eq!(echoed.rows, std::slice::from_ref(&values));
    let create = f.dialect(
        "CREATE TABLE v (a, b, c, d, e, f)",
        "CREATE TABLE v (a TEXT, b BIGINT, c DOUBLE PRECISION, d TEXT, e BYTEA, f BYTEA)",
    );
    exec(
        &*o,
        &format!("{create}; INSERT INTO v VALUES (?, ?, ?, ?, ?, ?)"),
        values.clone(),
    )
    .await
    .unwrap();
    let stored = exec(&*o, "SELECT * FROM v", vec![]).await.unwrap();
    assert_eq!(stored.rows, [values]);

    // Too many or too few parameters: an error, and nothing applied.
    let msg = invalid_msg(
        exec(
            &*o,
            &f.dialect(
                "CREATE TABLE w (x); INSERT INTO w VALUES (?)",
                "CREATE TABLE w (x BIGINT); INSERT INTO w VALUES (?)",
            ),
            vec![Value::Integer(1), Value::Integer(2)],
        )
        .await,
    );
    assert!(
        msg.contains("takes 1 parameters, but 2 were given"),
        "{msg}"
    );
    let msg = invalid_msg(
        exec(
            &*o,
            &f.dialect(
                "CREATE TABLE w (x, y); INSERT INTO w VALUES (?, ?)",
                "CREATE TABLE w (x BIGINT, y BIGINT); INSERT INTO w VALUES (?, ?)",
            ),
            vec![Value::Integer(1)],
        )
        .await,
    );
    assert!(
        msg.contains("statement 2") && msg.contains("takes 2"),
        "{msg}"
    );
    let tables = exec(
        &*o,
        &f.dialect(
            "SELECT name FROM sqlite_master WHERE name = 'w'",
            "SELECT name FROM (SELECT to_regclass('w')::text AS name) n WHERE name IS NOT NULL",
        ),
        vec![],
    )
    .await
    .unwrap();
    assert!(tables.rows.is_empty(), "the CREATE TABLE was rolled back");

    let msg = invalid_msg(exec(&*o, " ; -- nothing\n", vec![]).await);
    assert!(msg.contains("no statement"), "{msg}");
}

async fn a_failing_statement_undoes_the_whole_call(f: &Fixture) {
    let o = f.sql(1);
    let create = f.dialect(
        "CREATE TABLE t (x UNIQUE)",
        "CREATE TABLE t (x INTEGER UNIQUE)",
    );
    exec(&*o, &create, vec![]).await.unwrap();
    let err = exec(
        &*o,
        "INSERT INTO t VALUES (1); INSERT INTO t VALUES (2); INSERT INTO t VALUES (1)",
        vec![],
    )
    .await
    .unwrap_err();
    assert_eq!(
        err,
        BindingError::Invalid(f.dialect(
            "UNIQUE constraint failed: t.x",
            "duplicate key value violates unique constraint \"t_x_key\""
        ))
    );
    let count = exec(&*o, "SELECT count(*) FROM t", vec![]).await.unwrap();
    assert_eq!(count.rows, [[Value::Integer(0)]]);

    // The database's own messages, as the guest's mistakes (a statement
    // PostgreSQL could not be given is refused before it runs).
    let err = exec(&*o, "SELEC 1", vec![]).await.unwrap_err();
    assert_eq!(
        err,
        BindingError::Invalid(f.dialect(
            "near \"SELEC\": syntax error",
            "SELEC is not allowed in an object's SQL: on PostgreSQL it may run SELECT, VALUES, \
             TABLE, WITH, INSERT, UPDATE, DELETE, MERGE and TRUNCATE, and CREATE, ALTER and DROP \
             of tables, indexes, views and sequences"
        ))
    );
    let err = exec(&*o, "SELECT * FROM nope WHERE", vec![])
        .await
        .unwrap_err();
    assert_eq!(
        err,
        BindingError::Invalid(f.dialect("incomplete input", "syntax error at end of input"))
    );
    let err = exec(&*o, "SELECT * FROM nope", vec![]).await.unwrap_err();
    assert_eq!(
        err,
        BindingError::Invalid(f.dialect("no such table: nope", "relation \"nope\" does not exist"))
    );
}

async fn sql_may_not_touch_the_storage_or_the_host(f: &Fixture) {
    let o = f.sql(1);
    o.put(vec![entry("secret", "x")]).await.unwrap();

    for query in [
        "SELECT * FROM _isola_kv",
        "select value from _ISOLA_KV",
        "DROP TABLE _Isola_kv",
        "CREATE TABLE t (x); ALTER TABLE t RENAME TO _isola_t",
    ] {
        let msg = invalid_msg(exec(&*o, query, vec![]).await);
        assert!(msg.contains("_isola_"), "{query}: {msg}");
    }
    // The backend refuses them too, when the textual check is not in
    // front (its own handle): SQLite's authorizer; PostgreSQL's backend
    // runs the check itself.
    let raw = f.store.open_object(NS, &id(1)).unwrap();
    let mut reserved = vec![
        "SELECT * FROM _isola_kv",
        "DELETE FROM \"_ISOLA_KV\"",
        "CREATE VIEW v AS SELECT * FROM _isola_kv; SELECT * FROM v",
    ];
    if f.postgres() {
        // A trigger needs a function, which an object may not create.
        let msg = invalid_msg(
            exec(
                &*raw,
                "CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$",
                vec![],
            )
            .await,
        );
        assert!(msg.contains("CREATE FUNCTION is not allowed"), "{msg}");
    } else {
        // SQLite checks a trigger's body when a statement fires it.
        exec(
            &*raw,
            "CREATE TABLE t2 (x); CREATE TRIGGER tr AFTER INSERT ON t2 BEGIN DELETE FROM _isola_kv; END",
            vec![],
        )
        .await
        .unwrap();
        reserved.push("INSERT INTO t2 VALUES (1)");
    }
    for query in reserved {
        let msg = invalid_msg(exec(&*raw, query, vec![]).await);
        assert!(msg.contains("reserved"), "{query}: {msg}");
    }
    assert_eq!(o.get(vec!["secret".into()]).await.unwrap().len(), 1);

    for query in [
        "BEGIN",
        "BEGIN IMMEDIATE; SELECT 1",
        "COMMIT",
        "ROLLBACK",
        "SAVEPOINT s",
        "RELEASE s",
        "END",
    ] {
        let msg = invalid_msg(exec(&*o, query, vec![]).await);
        assert!(
            msg.contains("transactions go through the storage API"),
            "{query}: {msg}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside.sqlite");
    let outside_sql = outside.display().to_string().replace('\'', "''");
    for (query, says) in [
        (format!("ATTACH '{outside_sql}' AS other"), "ATTACH"),
        (
            format!("VACUUM INTO '{outside_sql}'"),
            "VACUUM is not allowed",
        ),
        (
            format!("/* hi */ vacuum main into '{outside_sql}'"),
            "VACUUM",
        ),
        ("PRAGMA journal_mode = DELETE".into(), "PRAGMA journal_mode"),
        ("PRAGMA synchronous = OFF".into(), "PRAGMA synchronous"),
        (
            "PRAGMA writable_schema = ON".into(),
            "PRAGMA writable_schema",
        ),
        ("CREATE TEMP TABLE tt (x)".into(), "temporary"),
        ("SELECT load_extension('x')".into(), "load_extension"),
    ] {
        let msg = invalid_msg(exec(&*o, &query, vec![]).await);
        assert!(msg.contains(says), "{query}: {msg}");
    }
    assert!(!outside.exists());

    if f.postgres() {
        postgres_sql_stays_in_its_schema(&*o).await;
    }

    // What Workers allows still works.
    if f.postgres() {
        exec(
            &*o,
            "CREATE TABLE t (x INTEGER); CREATE INDEX t_x ON t (x); \
             CREATE VIEW tv AS SELECT x FROM t; ALTER TABLE t ADD COLUMN y TEXT; \
             DROP VIEW tv; INSERT INTO t VALUES (1, 'one')",
            vec![],
        )
        .await
        .unwrap();
        let deleted = exec(
            &*o,
            "WITH d AS (DELETE FROM t RETURNING x) SELECT count(*) FROM d",
            vec![],
        )
        .await
        .unwrap();
        assert_eq!(deleted.rows, [[Value::Integer(1)]]);
        assert_eq!(deleted.rows_written, 1);
        exec(
            &*o,
            "CREATE TABLE docs (body TEXT); INSERT INTO docs VALUES ('hello world')",
            vec![],
        )
        .await
        .unwrap();
        let hit = exec(
            &*o,
            "SELECT body FROM docs WHERE to_tsvector('simple', body) @@ to_tsquery('simple', 'hello')",
            vec![],
        )
        .await
        .unwrap();
        assert_eq!(hit.rows.len(), 1);
    } else {
        exec(&*o, "CREATE TABLE t (x)", vec![]).await.unwrap();
        let info = exec(&*o, "PRAGMA table_info(t)", vec![]).await.unwrap();
        assert_eq!(info.rows.len(), 1);
        exec(&*o, "PRAGMA foreign_keys = ON", vec![]).await.unwrap();
        exec(&*o, "PRAGMA table_list", vec![]).await.unwrap();
        exec(
            &*o,
            "CREATE VIRTUAL TABLE docs USING fts5(body); INSERT INTO docs VALUES ('hello world')",
            vec![],
        )
        .await
        .unwrap();
        let hit = exec(
            &*o,
            "SELECT body FROM docs WHERE docs MATCH 'hello'",
            vec![],
        )
        .await
        .unwrap();
        assert_eq!(hit.rows.len(), 1);
    }

    // A class made by `new_classes` has no SQL API.
    let msg = invalid_msg(exec(&*f.kv(2), "SELECT 1", vec![]).await);
    assert_eq!(
        msg,
        "the SQL API needs a class created by `new_sqlite_classes`"
    );
}

/// What PostgreSQL would let the guest's SQL reach beyond its schema, and
/// the checks refuse before it runs.
async fn postgres_sql_stays_in_its_schema(o: &dyn ObjectStorage) {
    let other = schema_name(NS, &id(2));
    for (query, says) in [
        ("SELECT * FROM pg_catalog.pg_class".to_owned(), "pg_catalog"),
        ("SELECT relname FROM pg_class".into(), "pg_class"),
        ("SELECT pg_read_file('/etc/passwd')".into(), "pg_read_file"),
        ("SELECT pg_sleep(0)".into(), "pg_sleep"),
        (
            "SELECT * FROM information_schema.tables".into(),
            "information_schema",
        ),
        ("SET search_path TO public".into(), "SET is not allowed"),
        ("RESET ROLE".into(), "RESET is not allowed"),
        ("SHOW data_directory".into(), "SHOW is not allowed"),
        (
            "SELECT set_config('search_path', 'public', true)".into(),
            "set_config",
        ),
        ("DO $$ BEGIN PERFORM 1; END $$".into(), "DO is not allowed"),
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'".into(),
            "CREATE FUNCTION",
        ),
        ("CREATE SCHEMA s".into(), "CREATE SCHEMA"),
        ("DROP SCHEMA public CASCADE".into(), "DROP SCHEMA"),
        ("COPY t TO PROGRAM 'id'".into(), "COPY is not allowed"),
        ("LISTEN x".into(), "LISTEN is not allowed"),
        ("EXPLAIN SELECT 1".into(), "EXPLAIN is not allowed"),
        ("GRANT ALL ON t TO PUBLIC".into(), "GRANT is not allowed"),
        (
            "SELECT query_to_xml('SELECT 1', true, false, '')".into(),
            "query_to_xml",
        ),
        (
            "SELECT * FROM ts_stat('SELECT to_tsvector(1)')".into(),
            "ts_stat",
        ),
        ("SELECT lo_import('/etc/passwd')".into(), "lo_import"),
        (
            "CREATE TABLE public.escape (x INTEGER)".into(),
            "names another schema",
        ),
        (
            "SELECT * FROM \"public\".\"t\"".into(),
            "names another schema",
        ),
        ("SELECT * FROM d1_app.users".into(), "names another schema"),
        (format!("SELECT * FROM {other}.t"), "_isola_"),
        ("ALTER TABLE t SET SCHEMA x".into(), "SET SCHEMA"),
        ("ALTER TABLE t OWNER TO x".into(), "OWNER TO"),
        (
            "CREATE TABLE t2 (x INTEGER) TABLESPACE x".into(),
            "TABLESPACE",
        ),
        ("CREATE UNLOGGED TABLE u (x INTEGER)".into(), "unlogged"),
        ("ALTER TABLE t SET UNLOGGED".into(), "unlogged"),
        ("SELECT 1 INTO TEMP tt".into(), "temporary"),
        ("CREATE TEMPORARY VIEW tv AS SELECT 1".into(), "temporary"),
        (
            "CREATE MATERIALIZED VIEW m AS SELECT 1".into(),
            "CREATE MATERIALIZED",
        ),
        (
            "SELECT * FROM U&\"\\005fisola_kv\"".into(),
            "Unicode escapes",
        ),
        // `$` inside a name is part of it, not a dollar quote hiding what
        // follows.
        ("SELECT a$$, pg_sleep(1), b$$ FROM t".into(), "pg_sleep"),
        // Nor does a comment or a string end early.
        ("SELECT '/*', pg_sleep(1) -- */".into(), "pg_sleep"),
        ("SELECT E'\\'', pg_sleep(1), ''".into(), "pg_sleep"),
    ] {
        let msg = invalid_msg(exec(o, &query, vec![]).await);
        assert!(msg.contains(says), "{query}: {msg}");
    }
}

async fn a_runaway_query_is_stopped(f: &Fixture) {
    let store = f.reopen_with(Duration::from_millis(200)).await;
    let o = store.object(NS, &id(1), true).unwrap();
    let started = std::time::Instant::now();
    let msg = invalid_msg(
        exec(
            &*o,
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
            vec![],
        )
        .await,
    );
    assert!(msg.contains("was stopped"), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // The object still works afterwards, in a transaction too.
    let one = exec(&*o, "SELECT 1", vec![]).await.unwrap();
    assert_eq!(one.rows, [[Value::Integer(1)]]);
    o.begin().await.unwrap();
    o.put(vec![entry("k", "v")]).await.unwrap();
    let msg = invalid_msg(
        exec(
            &*o,
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
            vec![],
        )
        .await,
    );
    assert!(msg.contains("was stopped"), "{msg}");
    o.commit().await.unwrap();
    assert_eq!(o.get(vec!["k".into()]).await.unwrap(), [entry("k", "v")]);
}
