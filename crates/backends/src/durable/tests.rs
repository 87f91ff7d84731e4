//! The Durable Object storage suite, run against the embedded backend
//! (SQLite files) and PostgreSQL (a database of its own per test on the
//! shared server), plus what only one of them has.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::postgres::{PostgresDurableStore, schema_name};
use super::sqlite::SqliteDurableStore;
use super::*;

const NS: &str = "worker/Counter";

/// The id numbered `n`: 64 hex digits.
fn id(n: u32) -> String {
    format!("{n:064x}")
}

/// A store under test, and where its data lives.
struct Fixture {
    store: Arc<dyn DurableStore>,
    backing: Backing,
}

enum Backing {
    /// The store's directory (not made until something is written).
    Sqlite {
        root: PathBuf,
        _dir: tempfile::TempDir,
    },
    Postgres(TestDb),
}

impl Fixture {
    fn embedded() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("state");
        Fixture {
            store: Arc::new(SqliteDurableStore::new(&root)),
            backing: Backing::Sqlite { root, _dir: dir },
        }
    }

    async fn distributed() -> Self {
        let db = TestDb::create().await;
        Fixture {
            store: Arc::new(PostgresDurableStore::connect(&db.url).await.unwrap()),
            backing: Backing::Postgres(db),
        }
    }

    fn postgres(&self) -> bool {
        matches!(self.backing, Backing::Postgres(_))
    }

    /// `sqlite` on SQLite, `postgres` on PostgreSQL: SQL whose dialects
    /// differ (types are required in PostgreSQL's CREATE TABLE), or
    /// messages.
    fn dialect(&self, sqlite: &str, postgres: &str) -> String {
        if self.postgres() { postgres } else { sqlite }.to_owned()
    }

    /// Another store on the same data, as after a restart (or on another
    /// node), with one `sql_exec` stopped after `sql_time_limit`.
    async fn reopen_with(&self, sql_time_limit: Duration) -> Arc<dyn DurableStore> {
        match &self.backing {
            Backing::Sqlite { root, .. } => Arc::new(SqliteDurableStore::with_limits(
                root,
                super::sqlite::DEFAULT_MAX_OPEN,
                sql_time_limit,
            )),
            Backing::Postgres(db) => Arc::new(
                PostgresDurableStore::connect_with_limits(
                    &db.url,
                    &Default::default(),
                    sql_time_limit,
                )
                .await
                .unwrap(),
            ),
        }
    }

    async fn reopen(&self) -> Arc<dyn DurableStore> {
        self.reopen_with(super::sqlite::SQL_TIME_LIMIT).await
    }

    fn kv(&self, n: u32) -> Arc<dyn ObjectStorage> {
        self.store.object(NS, &id(n), false).unwrap()
    }

    fn sql(&self, n: u32) -> Arc<dyn ObjectStorage> {
        self.store.object(NS, &id(n), true).unwrap()
    }

    /// Whether object `n` has a database: its file (or WAL), its schema.
    async fn stored(&self, n: u32) -> bool {
        match &self.backing {
            Backing::Sqlite { root, .. } => {
                let file = root.join(NS).join(format!("{}.sqlite", id(n)));
                file.exists() || file.with_extension("sqlite-wal").exists()
            }
            Backing::Postgres(db) => {
                let schema = schema_name(NS, &id(n));
                db.count(&format!(
                    "SELECT count(*) FROM pg_namespace WHERE nspname = '{schema}'"
                ))
                .await
                    > 0
            }
        }
    }

    /// Whether the store has stored nothing at all: no directory; no
    /// schema of its own (the objects', the alarms').
    async fn nothing_stored(&self) -> bool {
        match &self.backing {
            Backing::Sqlite { root, .. } => !root.exists(),
            Backing::Postgres(db) => {
                db.count("SELECT count(*) FROM pg_namespace WHERE nspname LIKE '\\_isola\\_%'")
                    .await
                    == 0
            }
        }
    }

    fn db(&self) -> &TestDb {
        match &self.backing {
            Backing::Postgres(db) => db,
            Backing::Sqlite { .. } => panic!("not PostgreSQL"),
        }
    }
}

/// A database of its own on the shared PostgreSQL server, dropped with
/// this. Its default collation is ICU's English where the server has ICU,
/// so the tests show that keys sort as bytes whatever the collation.
struct TestDb {
    name: String,
    url: String,
}

impl TestDb {
    async fn create() -> TestDb {
        let server = isola_test_services::shared_postgres();
        let name = isola_test_services::unique("do").replace('-', "_");
        let admin = pg_client(&server.url()).await;
        let icu = admin
            .batch_execute(&format!(
                "CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en'"
            ))
            .await;
        if icu.is_err() {
            admin
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .unwrap();
        }
        TestDb {
            url: format!("postgres://isola@127.0.0.1:{}/{name}", server.port),
            name,
        }
    }

    /// A connection of the test's own to the database.
    async fn client(&self) -> tokio_postgres::Client {
        pg_client(&self.url).await
    }

    /// The one integer `sql` returns.
    async fn count(&self, sql: &str) -> i64 {
        self.client()
            .await
            .query_one(sql, &[])
            .await
            .unwrap()
            .get(0)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let server = isola_test_services::shared_postgres().url();
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                pg_client(&server)
                    .await
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}: {dropped:?}", self.name);
        }
    }
}

async fn pg_client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

#[track_caller]
fn invalid_msg<T: std::fmt::Debug>(r: Result<T>) -> String {
    match r {
        Err(BindingError::Invalid(m)) => m,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

fn entry(key: &str, value: &str) -> (String, Vec<u8>) {
    (key.to_owned(), value.as_bytes().to_vec())
}

fn keys(entries: &[(String, Vec<u8>)]) -> Vec<&str> {
    entries.iter().map(|(k, _)| k.as_str()).collect()
}

fn strings(keys: &[&str]) -> Vec<String> {
    keys.iter().map(|k| (*k).to_owned()).collect()
}

async fn exec(storage: &dyn ObjectStorage, query: &str, params: Vec<Value>) -> Result<Cursor> {
    storage.sql_exec(query.into(), params).await
}

crate::for_each_backend!(
    names_are_checked,
    get_returns_found_entries_in_the_order_asked,
    list_honours_every_option,
    limits_are_enforced_with_clear_messages,
    nested_transactions_are_savepoints,
    transactions_cover_sql_and_the_alarm,
    handles_of_one_object_share_its_transactions,
    sql_runs_several_statements_with_parameters_across_them,
    a_failing_statement_undoes_the_whole_call,
    sql_may_not_touch_the_storage_or_the_host,
    a_runaway_query_is_stopped,
    delete_all_removes_keys_and_sql_but_keeps_the_alarm,
    data_survives_reopening,
    alarms_are_listed_earliest_first_across_namespaces,
    reading_an_unknown_object_stores_nothing,
    concurrent_writes_to_one_object_all_land,
);

async fn names_are_checked(f: &Fixture) {
    for bad in ["", "a/b/c", "a b", "../x", "a/", "/a", "a.b", "é", "a//b"] {
        let msg = invalid_msg(f.store.object(bad, &id(1), false).map(drop));
        assert!(msg.contains("namespace"), "{bad:?}: {msg}");
    }
    for good in ["w", "worker/Counter", "my-worker_2/Class-1"] {
        f.store.object(good, &id(1), false).unwrap();
    }
    let upper = "A".repeat(64);
    let short = "a".repeat(63);
    let long = "a".repeat(65);
    let not_hex = "g".repeat(64);
    for bad in [
        upper.as_str(),
        &short,
        &long,
        &not_hex,
        "",
        "../../etc/passwd",
    ] {
        let msg = invalid_msg(f.store.object(NS, bad, false).map(drop));
        assert!(msg.contains("64 lowercase hex digits"), "{bad:?}: {msg}");
    }
}

async fn get_returns_found_entries_in_the_order_asked(f: &Fixture) {
    let o = f.kv(1);
    o.put(vec![entry("b", "2"), entry("a", "1"), entry("c", "3")])
        .await
        .unwrap();
    let got = o.get(strings(&["c", "missing", "a", "c"])).await.unwrap();
    assert_eq!(got, [entry("c", "3"), entry("a", "1")]);
    assert!(o.get(vec![]).await.unwrap().is_empty());
    // A key put twice in one batch keeps its last value; an empty value is
    // a value.
    o.put(vec![entry("d", "x"), entry("d", "y"), entry("e", "")])
        .await
        .unwrap();
    assert_eq!(
        o.get(strings(&["d", "e"])).await.unwrap(),
        [entry("d", "y"), entry("e", "")]
    );
    // Objects are separate.
    assert!(f.kv(2).get(strings(&["a"])).await.unwrap().is_empty());
    // delete counts the keys that existed.
    assert_eq!(o.delete(strings(&["a", "nope", "a"])).await.unwrap(), 1);
    assert!(o.get(strings(&["a"])).await.unwrap().is_empty());
    // Keys are any UTF-8, NUL included.
    o.put(vec![entry("n\0ul", "1"), entry("n", "2")])
        .await
        .unwrap();
    assert_eq!(
        o.get(strings(&["n\0ul", "n"])).await.unwrap(),
        [entry("n\0ul", "1"), entry("n", "2")]
    );
}

async fn list_honours_every_option(f: &Fixture) {
    let o = f.kv(1);
    // U+FFFF sorts before U+10000 in UTF-8 byte order, after it in UTF-16.
    let all = [
        "a",
        "a/1",
        "a/2",
        "a/3",
        "ab",
        "b",
        "b/1",
        "c",
        "\u{FFFF}",
        "\u{10000}",
    ];
    o.put(all.iter().map(|k| entry(k, k)).collect())
        .await
        .unwrap();
    let list = |options: ListOptions| {
        let o = o.clone();
        async move { o.list(options).await.unwrap() }
    };
    let listed = list(ListOptions::default()).await;
    assert_eq!(keys(&listed), all);
    assert_eq!(listed[1], entry("a/1", "a/1"), "values come along");
    // Bytes, not a language's order (where `a` < `B` < `b`).
    let cased = f.kv(2);
    cased
        .put(["b", "a", "B", "_"].iter().map(|k| entry(k, k)).collect())
        .await
        .unwrap();
    let listed = cased.list(ListOptions::default()).await.unwrap();
    assert_eq!(keys(&listed), ["B", "_", "a", "b"]);

    let s = |k: &str| Some(k.to_owned());
    let cases: Vec<(ListOptions, Vec<&str>)> = vec![
        (
            ListOptions {
                start: s("a/2"),
                ..Default::default()
            },
            vec!["a/2", "a/3", "ab", "b", "b/1", "c", "\u{FFFF}", "\u{10000}"],
        ),
        (
            ListOptions {
                start_after: s("a/2"),
                ..Default::default()
            },
            vec!["a/3", "ab", "b", "b/1", "c", "\u{FFFF}", "\u{10000}"],
        ),
        (
            ListOptions {
                end: s("a/3"),
                ..Default::default()
            },
            vec!["a", "a/1", "a/2"],
        ),
        (
            ListOptions {
                start: s("a/1"),
                end: s("b"),
                ..Default::default()
            },
            vec!["a/1", "a/2", "a/3", "ab"],
        ),
        (
            ListOptions {
                prefix: s("a/"),
                ..Default::default()
            },
            vec!["a/1", "a/2", "a/3"],
        ),
        (
            ListOptions {
                prefix: s("a"),
                ..Default::default()
            },
            vec!["a", "a/1", "a/2", "a/3", "ab"],
        ),
        (
            ListOptions {
                prefix: s("\u{FFFF}"),
                ..Default::default()
            },
            vec!["\u{FFFF}"],
        ),
        (
            ListOptions {
                prefix: s("zz"),
                ..Default::default()
            },
            vec![],
        ),
        (
            ListOptions {
                reverse: true,
                ..Default::default()
            },
            all.iter().rev().copied().collect(),
        ),
        (
            ListOptions {
                limit: Some(3),
                ..Default::default()
            },
            vec!["a", "a/1", "a/2"],
        ),
        (
            ListOptions {
                reverse: true,
                limit: Some(2),
                ..Default::default()
            },
            vec!["\u{10000}", "\u{FFFF}"],
        ),
        (
            ListOptions {
                prefix: s("a/"),
                reverse: true,
                limit: Some(2),
                ..Default::default()
            },
            vec!["a/3", "a/2"],
        ),
        // The prefix and the other bounds narrow each other.
        (
            ListOptions {
                prefix: s("a/"),
                start: s("a/2"),
                ..Default::default()
            },
            vec!["a/2", "a/3"],
        ),
        (
            ListOptions {
                prefix: s("a/"),
                start_after: s("a"),
                ..Default::default()
            },
            vec!["a/1", "a/2", "a/3"],
        ),
        // At a tie, the exclusive bound wins.
        (
            ListOptions {
                prefix: s("a"),
                start_after: s("a"),
                ..Default::default()
            },
            vec!["a/1", "a/2", "a/3", "ab"],
        ),
        (
            ListOptions {
                prefix: s("a/"),
                start_after: s("a/1"),
                end: s("a/3"),
                reverse: true,
                ..Default::default()
            },
            vec!["a/2"],
        ),
        (
            ListOptions {
                prefix: s("a"),
                end: s("b/1"),
                limit: Some(10),
                ..Default::default()
            },
            vec!["a", "a/1", "a/2", "a/3", "ab"],
        ),
        (
            ListOptions {
                start: s("b"),
                end: s("a"),
                ..Default::default()
            },
            vec![],
        ),
        (
            ListOptions {
                start_after: s("c"),
                reverse: true,
                limit: Some(1),
                ..Default::default()
            },
            vec!["\u{10000}"],
        ),
    ];
    for (options, want) in cases {
        let got = list(options.clone()).await;
        assert_eq!(keys(&got), want, "{options:?}");
    }

    let msg = invalid_msg(
        o.list(ListOptions {
            start: s("a"),
            start_after: s("b"),
            ..Default::default()
        })
        .await,
    );
    assert!(msg.contains("`start` and `startAfter`"), "{msg}");
    let msg = invalid_msg(
        o.list(ListOptions {
            limit: Some(0),
            ..Default::default()
        })
        .await,
    );
    assert!(msg.contains("at least 1"), "{msg}");
}

#[test]
fn lists_seek_in_the_primary_key_and_never_sort() {
    for (bounded, plan) in super::sqlite::testing::list_plans() {
        if bounded {
            assert!(
                plan.contains("SEARCH _isola_kv USING PRIMARY KEY (key"),
                "{plan}"
            );
        } else {
            assert_eq!(plan, "SCAN _isola_kv");
        }
        assert!(!plan.contains("TEMP B-TREE"), "no sort: {plan}");
    }
}

async fn limits_are_enforced_with_clear_messages(f: &Fixture) {
    let o = f.kv(1);
    let s = f.sql(2);

    let key = "k".repeat(MAX_KEY_BYTES);
    o.put(vec![(key.clone(), vec![1])]).await.unwrap();
    assert_eq!(o.get(vec![key]).await.unwrap().len(), 1);
    let long = "k".repeat(MAX_KEY_BYTES + 1);
    for result in [
        o.put(vec![(long.clone(), vec![])]).await.map(drop),
        o.get(vec![long.clone()]).await.map(drop),
        o.delete(vec![long.clone()]).await.map(drop),
    ] {
        let msg = invalid_msg(result);
        assert!(msg.contains("2049 bytes; the limit is 2048"), "{msg}");
    }
    let msg = invalid_msg(o.put(vec![entry("", "x")]).await);
    assert!(msg.contains("empty"), "{msg}");

    let many = |n: usize| (0..n).map(|i| format!("k{i}")).collect::<Vec<_>>();
    o.get(many(128)).await.unwrap();
    o.delete(many(128)).await.unwrap();
    o.put(many(128).into_iter().map(|k| (k, vec![])).collect())
        .await
        .unwrap();
    for (result, what) in [
        (o.get(many(129)).await.map(drop), "129 keys"),
        (o.delete(many(129)).await.map(drop), "129 keys"),
        (
            o.put(many(129).into_iter().map(|k| (k, vec![])).collect())
                .await,
            "129 entries",
        ),
    ] {
        let msg = invalid_msg(result);
        assert!(
            msg.contains(what) && msg.contains("the limit is 128"),
            "{msg}"
        );
    }

    // Values: 128 KiB for `new_classes`, 2 MiB for `new_sqlite_classes`.
    o.put(vec![("v".into(), vec![0; MAX_VALUE_BYTES])])
        .await
        .unwrap();
    let msg = invalid_msg(
        o.put(vec![("big".into(), vec![0; MAX_VALUE_BYTES + 1])])
            .await,
    );
    assert!(
        msg.contains("\"big\"") && msg.contains("131073 bytes") && msg.contains("131072"),
        "{msg}"
    );
    assert!(msg.contains("new_classes"), "{msg}");
    s.put(vec![("v".into(), vec![7; MAX_SQLITE_VALUE_BYTES])])
        .await
        .unwrap();
    assert_eq!(
        s.get(vec!["v".into()]).await.unwrap()[0].1.len(),
        MAX_SQLITE_VALUE_BYTES
    );
    let msg = invalid_msg(
        s.put(vec![("big".into(), vec![0; MAX_SQLITE_VALUE_BYTES + 1])])
            .await,
    );
    assert!(
        msg.contains("\"big\"") && msg.contains("2097152") && msg.contains("new_sqlite_classes"),
        "{msg}"
    );

    // One bad entry anywhere in a batch: nothing of it is written.
    let batch = vec![
        entry("first", "1"),
        entry("second", "2"),
        ("third".into(), vec![0; MAX_VALUE_BYTES + 1]),
    ];
    invalid_msg(o.put(batch).await);
    let batch = vec![entry("first", "1"), (long, vec![])];
    invalid_msg(o.put(batch).await);
    assert!(
        o.get(strings(&["first", "second"]))
            .await
            .unwrap()
            .is_empty()
    );

    let msg = invalid_msg(o.set_alarm(u64::MAX).await);
    assert!(msg.contains("too large"), "{msg}");
}

async fn nested_transactions_are_savepoints(f: &Fixture) {
    let o = f.kv(1);
    let get = |k: &'static str| {
        let o = o.clone();
        async move { o.get(vec![k.into()]).await.unwrap() }
    };

    // An inner rollback keeps the outer transaction's writes.
    o.begin().await.unwrap();
    o.put(vec![entry("outer", "1")]).await.unwrap();
    o.begin().await.unwrap();
    o.put(vec![entry("inner", "2")]).await.unwrap();
    assert_eq!(get("inner").await.len(), 1, "visible inside");
    o.rollback().await.unwrap();
    assert!(get("inner").await.is_empty());
    assert_eq!(get("outer").await.len(), 1);
    o.commit().await.unwrap();
    assert_eq!(get("outer").await.len(), 1);
    assert!(get("inner").await.is_empty());

    // An outer rollback undoes what inner commits committed.
    o.begin().await.unwrap();
    o.put(vec![entry("x", "1")]).await.unwrap();
    o.begin().await.unwrap();
    o.put(vec![entry("y", "2")]).await.unwrap();
    o.delete(vec!["outer".into()]).await.unwrap();
    o.commit().await.unwrap();
    assert_eq!(get("y").await.len(), 1);
    o.rollback().await.unwrap();
    assert!(get("x").await.is_empty() && get("y").await.is_empty());
    assert_eq!(get("outer").await.len(), 1, "the delete is undone");

    // Nothing open: commit and rollback are the guest's mistake.
    let msg = invalid_msg(o.commit().await);
    assert!(msg.contains("no transaction is open"), "{msg}");
    let msg = invalid_msg(o.rollback().await);
    assert!(msg.contains("no transaction is open"), "{msg}");

    // The end of a run rolls back whatever is still open, at any depth.
    o.begin().await.unwrap();
    o.put(vec![entry("left", "1")]).await.unwrap();
    o.begin().await.unwrap();
    o.put(vec![entry("open", "1")]).await.unwrap();
    o.end_run().await.unwrap();
    assert!(get("left").await.is_empty() && get("open").await.is_empty());
    invalid_msg(o.commit().await);
    o.end_run().await.unwrap();

    // A committed transaction is on disk: a new store sees it.
    o.begin().await.unwrap();
    o.put(vec![entry("kept", "1")]).await.unwrap();
    o.commit().await.unwrap();
    drop(o);
    let again = f.reopen().await.object(NS, &id(1), false).unwrap();
    assert_eq!(again.get(vec!["kept".into()]).await.unwrap().len(), 1);
}

async fn transactions_cover_sql_and_the_alarm(f: &Fixture) {
    let o = f.sql(1);
    let create = f.dialect("CREATE TABLE t (x)", "CREATE TABLE t (x INTEGER)");
    exec(&*o, &create, vec![]).await.unwrap();
    o.begin().await.unwrap();
    exec(&*o, "INSERT INTO t VALUES (1)", vec![]).await.unwrap();
    o.put(vec![entry("k", "v")]).await.unwrap();
    o.set_alarm(5000).await.unwrap();
    assert_eq!(o.get_alarm().await.unwrap(), Some(5000), "seen inside");
    assert!(
        f.store.alarms().await.unwrap().is_empty(),
        "not before commit"
    );
    o.rollback().await.unwrap();
    let count = exec(&*o, "SELECT count(*) FROM t", vec![]).await.unwrap();
    assert_eq!(count.rows, [[Value::Integer(0)]]);
    assert!(o.get(vec!["k".into()]).await.unwrap().is_empty());
    assert_eq!(o.get_alarm().await.unwrap(), None);

    // Alarm changes follow savepoints, and land at the outermost commit.
    o.begin().await.unwrap();
    o.set_alarm(7000).await.unwrap();
    o.begin().await.unwrap();
    o.delete_alarm().await.unwrap();
    assert_eq!(o.get_alarm().await.unwrap(), None);
    o.rollback().await.unwrap();
    assert_eq!(o.get_alarm().await.unwrap(), Some(7000));
    o.begin().await.unwrap();
    o.set_alarm(8000).await.unwrap();
    o.commit().await.unwrap();
    assert!(f.store.alarms().await.unwrap().is_empty());
    o.commit().await.unwrap();
    assert_eq!(o.get_alarm().await.unwrap(), Some(8000));
    assert_eq!(f.store.alarms().await.unwrap()[0].time_ms, 8000);
    // Outside a transaction, at once.
    o.delete_alarm().await.unwrap();
    assert!(f.store.alarms().await.unwrap().is_empty());
}

async fn handles_of_one_object_share_its_transactions(f: &Fixture) {
    let a = f.kv(1);
    let b = f.kv(1);
    a.begin().await.unwrap();
    a.put(vec![entry("k", "v")]).await.unwrap();
    assert_eq!(b.get(vec!["k".into()]).await.unwrap().len(), 1);
    b.rollback().await.unwrap();
    assert!(a.get(vec!["k".into()]).await.unwrap().is_empty());
}

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

#[test]
fn the_first_keyword_skips_blanks_and_comments() {
    use super::sqlite::testing::keyword;
    assert_eq!(keyword("VACUUM is not allowed"), "VACUUM");
    assert_eq!(keyword("  \n-- x\n /* y */ vacuum INTO 'f'"), "vacuum");
    assert_eq!(keyword("/* unterminated"), "");
    assert_eq!(keyword("SELECT 1"), "SELECT");
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

async fn delete_all_removes_keys_and_sql_but_keeps_the_alarm(f: &Fixture) {
    let o = f.sql(1);
    o.put(vec![entry("k", "v")]).await.unwrap();
    let create = f.dialect("CREATE TABLE t (x)", "CREATE TABLE t (x INTEGER)");
    exec(&*o, &format!("{create}; INSERT INTO t VALUES (1)"), vec![])
        .await
        .unwrap();
    o.set_alarm(1234).await.unwrap();
    assert!(o.database_size().await.unwrap() > 0);
    o.begin().await.unwrap();
    o.put(vec![entry("in-tx", "v")]).await.unwrap();

    o.delete_all().await.unwrap();
    assert!(!f.stored(1).await, "the database is gone");
    assert!(o.list(ListOptions::default()).await.unwrap().is_empty());
    assert_eq!(o.database_size().await.unwrap(), 0);
    assert_eq!(o.get_alarm().await.unwrap(), Some(1234));
    assert_eq!(f.store.alarms().await.unwrap().len(), 1);
    invalid_msg(o.commit().await);
    let err = exec(&*o, "SELECT * FROM t", vec![]).await.unwrap_err();
    assert_eq!(
        err,
        BindingError::Invalid(f.dialect("no such table: t", "relation \"t\" does not exist"))
    );

    // The object starts over.
    o.put(vec![entry("new", "v")]).await.unwrap();
    assert_eq!(
        keys(&o.list(ListOptions::default()).await.unwrap()),
        ["new"]
    );
    // Also after a restart, with the connection closed.
    drop(o);
    let o = f.reopen().await.object(NS, &id(1), true).unwrap();
    assert_eq!(
        keys(&o.list(ListOptions::default()).await.unwrap()),
        ["new"]
    );
    drop(o);
    f.reopen()
        .await
        .object(NS, &id(1), true)
        .unwrap()
        .delete_all()
        .await
        .unwrap();
    assert!(!f.stored(1).await);
    let o = f.reopen().await.object(NS, &id(1), true).unwrap();
    assert!(o.list(ListOptions::default()).await.unwrap().is_empty());
    assert_eq!(o.get_alarm().await.unwrap(), Some(1234));
}

async fn data_survives_reopening(f: &Fixture) {
    {
        let store = f.reopen().await;
        let o = store.object(NS, &id(1), true).unwrap();
        o.put(vec![entry("k", "durable")]).await.unwrap();
        let create = f.dialect("CREATE TABLE t (x)", "CREATE TABLE t (x TEXT)");
        exec(
            &*o,
            &format!("{create}; INSERT INTO t VALUES ('row')"),
            vec![],
        )
        .await
        .unwrap();
        o.set_alarm(99).await.unwrap();
        // Dropped without any close, checkpoint or end_run.
    }
    let o = f.reopen().await.object(NS, &id(1), true).unwrap();
    assert_eq!(
        o.get(vec!["k".into()]).await.unwrap(),
        [entry("k", "durable")]
    );
    let rows = exec(&*o, "SELECT x FROM t", vec![]).await.unwrap();
    assert_eq!(rows.rows, [[Value::Text("row".into())]]);
    assert_eq!(o.get_alarm().await.unwrap(), Some(99));
}

/// What the child of a crash test writes before it aborts: some of it
/// committed, some in a transaction left open.
async fn write_then_crash(store: &dyn DurableStore) -> ! {
    let o = store.object(NS, &id(1), true).unwrap();
    o.put(vec![entry("k", "durable")]).await.unwrap();
    o.begin().await.unwrap();
    o.put(vec![entry("committed", "yes")]).await.unwrap();
    o.commit().await.unwrap();
    o.begin().await.unwrap();
    o.put(vec![entry("uncommitted", "no")]).await.unwrap();
    o.set_alarm(42).await.unwrap();
    std::process::abort();
}

/// Run test `name` of this binary as a child, with `var` set to `value`;
/// it must abort. Then check what it left in `store`.
fn crash_child(name: &str, var: &str, value: &str) {
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture"])
        .env(var, value)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child must have aborted");
}

async fn check_after_crash(store: &dyn DurableStore) {
    let o = store.object(NS, &id(1), true).unwrap();
    let got = o
        .get(strings(&["k", "committed", "uncommitted"]))
        .await
        .unwrap();
    assert_eq!(got, [entry("k", "durable"), entry("committed", "yes")]);
    assert_eq!(o.get_alarm().await.unwrap(), None);
}

/// Writes in a child process that then aborts (no unwinding, close or
/// checkpoint), and reads the values back here. The child is this same
/// test, run by the test binary with `ISOLA_DO_CRASH_DIR` set.
#[test]
fn data_survives_a_crash() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    if let Ok(dir) = std::env::var("ISOLA_DO_CRASH_DIR") {
        let store = SqliteDurableStore::new(Path::new(&dir));
        rt.block_on(write_then_crash(&store));
    }
    let dir = tempfile::tempdir().unwrap();
    crash_child(
        "durable::tests::data_survives_a_crash",
        "ISOLA_DO_CRASH_DIR",
        &dir.path().display().to_string(),
    );
    rt.block_on(check_after_crash(&SqliteDurableStore::new(dir.path())));
}

/// The same with PostgreSQL: the server rolls back what the dead process
/// left open.
#[test]
fn data_survives_a_crash_on_postgres() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    if let Ok(url) = std::env::var("ISOLA_DO_CRASH_PG") {
        let store = rt.block_on(PostgresDurableStore::connect(&url)).unwrap();
        rt.block_on(write_then_crash(&store));
    }
    let db = rt.block_on(TestDb::create());
    crash_child(
        "durable::tests::data_survives_a_crash_on_postgres",
        "ISOLA_DO_CRASH_PG",
        &db.url,
    );
    rt.block_on(async {
        let store = PostgresDurableStore::connect(&db.url).await.unwrap();
        check_after_crash(&store).await;
    });
}

async fn alarms_are_listed_earliest_first_across_namespaces(f: &Fixture) {
    assert!(f.store.alarms().await.unwrap().is_empty());
    let other = f.store.object("other/Room", &id(9), true).unwrap();
    f.kv(1).set_alarm(300).await.unwrap();
    other.set_alarm(100).await.unwrap();
    f.kv(2).set_alarm(200).await.unwrap();
    f.kv(3).set_alarm(400).await.unwrap();
    f.kv(3).delete_alarm().await.unwrap();
    // Moving an alarm replaces it.
    f.kv(1).set_alarm(250).await.unwrap();
    let alarms = f.store.alarms().await.unwrap();
    assert_eq!(
        alarms,
        [
            Alarm {
                namespace: "other/Room".into(),
                id: id(9),
                time_ms: 100
            },
            Alarm {
                namespace: NS.into(),
                id: id(2),
                time_ms: 200
            },
            Alarm {
                namespace: NS.into(),
                id: id(1),
                time_ms: 250
            },
        ]
    );
    assert_eq!(f.kv(3).get_alarm().await.unwrap(), None);
    assert_eq!(other.get_alarm().await.unwrap(), Some(100));
    // Setting an alarm creates no object database.
    assert!(!f.stored(1).await);
}

async fn reading_an_unknown_object_stores_nothing(f: &Fixture) {
    for sqlite in [false, true] {
        let o = f.store.object(NS, &id(1), sqlite).unwrap();
        assert!(o.get(vec!["k".into()]).await.unwrap().is_empty());
        assert!(o.list(ListOptions::default()).await.unwrap().is_empty());
        assert_eq!(o.delete(vec!["k".into()]).await.unwrap(), 0);
        assert_eq!(o.database_size().await.unwrap(), 0);
        assert_eq!(o.get_alarm().await.unwrap(), None);
        o.delete_alarm().await.unwrap();
        o.put(vec![]).await.unwrap();
        // A transaction that only reads issues nothing.
        o.begin().await.unwrap();
        assert!(o.get(vec!["k".into()]).await.unwrap().is_empty());
        o.commit().await.unwrap();
        o.begin().await.unwrap();
        o.rollback().await.unwrap();
        o.begin().await.unwrap();
        o.end_run().await.unwrap();
        o.delete_all().await.unwrap();
    }
    assert!(f.store.alarms().await.unwrap().is_empty());
    assert!(f.nothing_stored().await, "nothing was made");

    // A transaction opened before the first write still wraps it.
    let o = f.kv(1);
    o.begin().await.unwrap();
    o.put(vec![entry("k", "v")]).await.unwrap();
    o.rollback().await.unwrap();
    assert!(o.get(vec!["k".into()]).await.unwrap().is_empty());
    assert!(f.stored(1).await, "the write made the database");
}

#[tokio::test]
async fn open_connections_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteDurableStore::with_max_open(dir.path(), 2);
    let kv = |n: u32| store.object(NS, &id(n), false).unwrap();
    // Object 1 keeps a transaction open across the others' use: it must
    // stay open, and its transaction intact.
    let first = kv(1);
    first.begin().await.unwrap();
    first.put(vec![entry("k", "1")]).await.unwrap();
    let handles: Vec<_> = (2..=6).map(kv).collect();
    for (n, o) in (2..).zip(&handles) {
        o.put(vec![entry("k", &n.to_string())]).await.unwrap();
        assert!(
            store.open_connections() <= 3,
            "{}",
            store.open_connections()
        );
    }
    first.commit().await.unwrap();
    // Closed ones reopen on use, with their data.
    for (n, o) in (2..).zip(&handles) {
        let got = o.get(vec!["k".into()]).await.unwrap();
        assert_eq!(got, [entry("k", &n.to_string())]);
        assert!(
            store.open_connections() <= 2,
            "{}",
            store.open_connections()
        );
    }
    assert_eq!(
        first.get(vec!["k".into()]).await.unwrap(),
        [entry("k", "1")]
    );
    assert!(store.open_connections() <= 2);
}

async fn concurrent_writes_to_one_object_all_land(f: &Fixture) {
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let store = f.store.clone();
            tokio::spawn(async move {
                // A handle of its own, as separate runtime paths would have.
                let o = store.object(NS, &id(1), false).unwrap();
                o.put(vec![entry(&format!("k{i:02}"), "v")]).await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let listed = f.kv(1).list(ListOptions::default()).await.unwrap();
    assert_eq!(listed.len(), 64);
}

// What only PostgreSQL has.

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
    for (lower, upper, sql) in super::postgres::testing::list_queries(&table) {
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
    use super::postgres::testing::parse;
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
