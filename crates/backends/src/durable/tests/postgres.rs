//! What only PostgreSQL has.

use super::*;

/// The PostgreSQL counterpart of the connection bound: a connection is
/// held only by an object whose transaction wrote, and given back at its
/// end; the others share the pool, whose idle connections are capped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_are_held_only_by_open_transactions() {
    let db = TestDb::create().await;
    let store = Arc::new(PostgresDurableStore::connect(&db.url).await.unwrap());
    assert_eq!(store.open_connections(), 1, "the check's, idle");
    let kv = |n: u32| store.object(NS, &id(n), false).unwrap();
    let first = kv(1);
    first.begin().await.unwrap();
    first.get(vec!["k".into()]).await.unwrap();
    first.put(vec![entry("k", "1")]).await.unwrap();
    for n in 2..=6 {
        kv(n).put(vec![entry("k", &n.to_string())]).await.unwrap();
        assert_eq!(store.open_connections(), 2, "one held, one shared");
    }
    first.commit().await.unwrap();
    // A transaction that only reads holds none.
    first.begin().await.unwrap();
    assert_eq!(
        first.get(vec!["k".into()]).await.unwrap(),
        [entry("k", "1")]
    );
    for n in 2..=6 {
        assert_eq!(
            kv(n).get(vec!["k".into()]).await.unwrap(),
            [entry("k", &n.to_string())]
        );
    }
    first.commit().await.unwrap();
    assert_eq!(store.open_connections(), 2);
    // Many objects in transactions at once: a connection each, and no
    // more than the idle cap kept afterwards.
    let tasks: Vec<_> = (10..50)
        .map(|n| {
            let o = kv(n);
            tokio::spawn(async move {
                o.begin().await?;
                o.put(vec![entry("k", "v")]).await?;
                tokio::time::sleep(Duration::from_millis(50)).await;
                o.commit().await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert!(
        store.open_connections() <= 16,
        "{}",
        store.open_connections()
    );
    drop(first);
    drop(store);
}

/// Keys are listed with the primary key's index, in order, never sorted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_lists_use_the_primary_key() {
    let f = Fixture::distributed().await;
    let o = f.kv(1);
    for batch in 0..16 {
        o.put(
            (0..128)
                .map(|i| entry(&format!("k{:05}", batch * 128 + i), "v"))
                .collect(),
        )
        .await
        .unwrap();
    }
    let table = format!("{}._isola_kv", schema_name(NS, &id(1)));
    let client = f.db().client().await;
    client
        .batch_execute(&format!("ANALYZE {table}"))
        .await
        .unwrap();
    for (lower, upper, sql) in crate::durable::postgres::testing::list_queries(&table) {
        let lower = lower.map(String::into_bytes);
        let upper = upper.map(String::into_bytes);
        let limit = Some(10i64);
        let rows = client
            .query_typed(
                &format!("EXPLAIN {sql}"),
                &[
                    (&lower, tokio_postgres::types::Type::BYTEA),
                    (&upper, tokio_postgres::types::Type::BYTEA),
                    (&limit, tokio_postgres::types::Type::INT8),
                ],
            )
            .await
            .unwrap();
        let plan: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        let plan = plan.join("\n");
        assert!(plan.contains("Index Scan"), "{sql}:\n{plan}");
        assert!(plan.contains("_isola_kv_pkey"), "{sql}:\n{plan}");
        assert!(!plan.contains("Sort"), "{sql}:\n{plan}");
    }
}

/// Two stores on one database, as two nodes: each sees what the other
/// committed, and an object one of them deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_nodes_share_objects() {
    let f = Fixture::distributed().await;
    let a = f.sql(1);
    let b = f.reopen().await.object(NS, &id(1), true).unwrap();
    a.put(vec![entry("k", "from a")]).await.unwrap();
    exec(
        &*a,
        "CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1)",
        vec![],
    )
    .await
    .unwrap();
    a.set_alarm(500).await.unwrap();
    assert_eq!(
        b.get(vec!["k".into()]).await.unwrap(),
        [entry("k", "from a")]
    );
    let rows = exec(&*b, "SELECT x FROM t", vec![]).await.unwrap();
    assert_eq!(rows.rows, [[Value::Integer(1)]]);
    assert_eq!(b.get_alarm().await.unwrap(), Some(500));

    // Uncommitted writes stay on their node until the commit.
    a.begin().await.unwrap();
    a.put(vec![entry("k", "in a's transaction")]).await.unwrap();
    assert_eq!(
        b.get(vec!["k".into()]).await.unwrap(),
        [entry("k", "from a")]
    );
    a.commit().await.unwrap();
    assert_eq!(
        b.get(vec!["k".into()]).await.unwrap(),
        [entry("k", "in a's transaction")]
    );

    // b deletes the object a had open: a sees it empty, and starts over.
    b.delete_all().await.unwrap();
    assert!(a.get(vec!["k".into()]).await.unwrap().is_empty());
    assert!(a.list(ListOptions::default()).await.unwrap().is_empty());
    a.put(vec![entry("again", "1")]).await.unwrap();
    assert_eq!(
        b.get(vec!["again".into()]).await.unwrap(),
        [entry("again", "1")]
    );
    assert_eq!(a.get_alarm().await.unwrap(), Some(500));
}

/// Each object is a schema named after it, commented with its namespace
/// and id; its SQL sees its own tables only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_objects_are_schemas_of_their_own() {
    let f = Fixture::distributed().await;
    let one = f.sql(1);
    let two = f.sql(2);
    one.put(vec![entry("k", "1")]).await.unwrap();
    exec(&*two, "CREATE TABLE t (x INTEGER)", vec![])
        .await
        .unwrap();
    let client = f.db().client().await;
    let rows = client
        .query(
            "SELECT nspname::text, obj_description(oid, 'pg_namespace') FROM pg_namespace
             WHERE nspname LIKE '\\_isola\\_do\\_%' ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let mut want = vec![
        (
            schema_name(NS, &id(1)),
            format!("Durable Object {NS} {}", id(1)),
        ),
        (
            schema_name(NS, &id(2)),
            format!("Durable Object {NS} {}", id(2)),
        ),
    ];
    want.sort();
    let got: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, want);
    assert_eq!(schema_name(NS, &id(1)).len(), 42);
    let err = exec(&*one, "SELECT * FROM t", vec![]).await.unwrap_err();
    assert_eq!(
        err,
        BindingError::Invalid("relation \"t\" does not exist".into())
    );
    // The guest's settings end with its call: the next call on the same
    // (pooled) connection sees its own schema again.
    exec(&*one, "CREATE TABLE t (y TEXT)", vec![])
        .await
        .unwrap();
    let cols = exec(&*two, "SELECT * FROM t", vec![]).await.unwrap();
    assert_eq!(cols.columns, ["x"]);
    two.delete_all().await.unwrap();
    assert!(!f.stored(2).await);
    assert!(f.stored(1).await);
}

/// A transaction whose connection is lost is rolled back, says so, and
/// the object goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_lost_transaction_is_rolled_back() {
    let f = Fixture::distributed().await;
    let o = f.kv(1);
    o.put(vec![entry("before", "1")]).await.unwrap();
    o.begin().await.unwrap();
    o.put(vec![entry("lost", "1")]).await.unwrap();
    let client = f.db().client().await;
    let killed: i64 = client
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let err = o.put(vec![entry("after", "1")]).await.unwrap_err();
    match err {
        BindingError::Backend(m) => assert!(m.contains("rolled back"), "{m}"),
        other => panic!("{other:?}"),
    }
    invalid_msg(o.commit().await);
    assert_eq!(
        o.get(strings(&["before", "lost", "after"])).await.unwrap(),
        [entry("before", "1")]
    );
    o.put(vec![entry("after", "1")]).await.unwrap();
}

/// Statement splitting and numbering, and the checks, without a server.
#[test]
fn postgres_sql_is_split_numbered_and_checked() {
    use crate::durable::postgres::testing::parse;
    let split = |sql: &str| parse(sql).unwrap();
    assert_eq!(
        split("SELECT ?, ?3, ?; INSERT INTO t VALUES (?) ;; -- end"),
        [
            ("SELECT $1, $3, $4".to_owned(), 4),
            (" INSERT INTO t VALUES ($1) ".to_owned(), 1),
        ]
    );
    // Inside strings, quoted names, comments and dollar quotes, `?` and
    // `;` are text.
    let text = "SELECT '?;', \"a?;\", $$ ?; $$, $t$ ?; $t$, E'\\' ?;', ? /* ?; /* ; */ */ -- ?;\n";
    let [(sql, params)] = split(text).try_into().unwrap();
    assert_eq!(params, 1);
    assert_eq!(sql, text.replacen("', ? /*", "', $1 /*", 1));
    // The same numbering as D1's translation, statement by statement.
    for statement in ["SELECT ?2, ?, ?", "SELECT $1, 'it''s ?', ?"] {
        let scanned = crate::sql::postgres::scan(statement);
        assert_eq!(
            split(statement),
            [(scanned.sql, scanned.params as usize)],
            "{statement}"
        );
    }
    for (sql, says) in [
        ("", "no statement"),
        ("VACUUM", "VACUUM"),
        ("select 1; vacuum", "VACUUM"),
        ("CREATE OR REPLACE TEMP VIEW v AS SELECT 1", "temporary"),
        (
            "CREATE TRIGGER tr AFTER INSERT ON t EXECUTE FUNCTION f()",
            "CREATE TRIGGER",
        ),
        ("CREATE VIRTUAL TABLE d USING fts5(b)", "CREATE VIRTUAL"),
        (
            "WITH x AS (SELECT 1) SELECT * FROM pg_stat_activity",
            "pg_stat_activity",
        ),
        ("SELECT \"PG_CLASS\".x FROM t", "pg_class"),
        (
            "SELECT cursor_to_xml(c, 1, false, false, '')",
            "cursor_to_xml",
        ),
        ("SELECT dblink_exec('x', 'y')", "dblink_exec"),
        ("SELECT 1 INTO UNLOGGED u", "unlogged"),
        ("u&'x'", "Unicode"),
    ] {
        let msg = invalid_msg(parse(sql));
        assert!(msg.contains(says), "{sql}: {msg}");
    }
    for sql in [
        "CREATE UNIQUE INDEX IF NOT EXISTS i ON t (x)",
        "CREATE OR REPLACE VIEW v AS SELECT x FROM t",
        "CREATE SEQUENCE s; SELECT nextval('s')",
        "ALTER TABLE t RENAME TO u; DROP TABLE u",
        "(SELECT 1) UNION (SELECT 2)",
        "VALUES (1), (2)",
        "TABLE t",
        "TRUNCATE t",
        "SELECT t.x, s.y FROM t JOIN s ON t.id = s.id",
        "SELECT temp FROM weather WHERE owner = 'to'",
        "SELECT 'pg_class', $$ pg_sleep $$ -- pg_x",
        "SELECT x$ FROM t",
    ] {
        parse(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}
