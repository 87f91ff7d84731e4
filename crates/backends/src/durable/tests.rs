//! The Durable Object storage suite, on the embedded backend.

use std::path::Path;
use std::time::Duration;

use super::sqlite::SqliteDurableStore;
use super::*;

const NS: &str = "worker/Counter";

/// The id numbered `n`: 64 hex digits.
fn id(n: u32) -> String {
    format!("{n:064x}")
}

fn store(dir: &tempfile::TempDir) -> SqliteDurableStore {
    SqliteDurableStore::new(dir.path())
}

fn kv(store: &SqliteDurableStore, n: u32) -> Arc<dyn ObjectStorage> {
    store.object(NS, &id(n), false).unwrap()
}

fn sql(store: &SqliteDurableStore, n: u32) -> Arc<dyn ObjectStorage> {
    store.object(NS, &id(n), true).unwrap()
}

fn file(dir: &tempfile::TempDir, n: u32) -> std::path::PathBuf {
    dir.path().join(NS).join(format!("{}.sqlite", id(n)))
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

/// Every file under `dir`, relative.
fn files(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files(&path));
        } else {
            found.push(path.display().to_string());
        }
    }
    found
}

#[tokio::test]
async fn names_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    for bad in ["", "a/b/c", "a b", "../x", "a/", "/a", "a.b", "é", "a//b"] {
        let msg = invalid_msg(store.object(bad, &id(1), false).map(drop));
        assert!(msg.contains("namespace"), "{bad:?}: {msg}");
    }
    for good in ["w", "worker/Counter", "my-worker_2/Class-1"] {
        store.object(good, &id(1), false).unwrap();
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
        let msg = invalid_msg(store.object(NS, bad, false).map(drop));
        assert!(msg.contains("64 lowercase hex digits"), "{bad:?}: {msg}");
    }
}

#[tokio::test]
async fn get_returns_found_entries_in_the_order_asked() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let o = kv(&store, 1);
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
    assert!(kv(&store, 2).get(strings(&["a"])).await.unwrap().is_empty());
    // delete counts the keys that existed.
    assert_eq!(o.delete(strings(&["a", "nope", "a"])).await.unwrap(), 1);
    assert!(o.get(strings(&["a"])).await.unwrap().is_empty());
}

#[tokio::test]
async fn list_honours_every_option() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let o = kv(&store, 1);
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

#[tokio::test]
async fn limits_are_enforced_with_clear_messages() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let o = kv(&store, 1);
    let s = sql(&store, 2);

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

#[tokio::test]
async fn nested_transactions_are_savepoints() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let o = kv(&store, 1);
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
    drop(store);
    let again = kv(&SqliteDurableStore::new(dir.path()), 1);
    assert_eq!(again.get(vec!["kept".into()]).await.unwrap().len(), 1);
}

#[tokio::test]
async fn transactions_cover_sql_and_the_alarm() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let o = sql(&store, 1);
    exec(&*o, "CREATE TABLE t (x)", vec![]).await.unwrap();
    o.begin().await.unwrap();
    exec(&*o, "INSERT INTO t VALUES (1)", vec![]).await.unwrap();
    o.put(vec![entry("k", "v")]).await.unwrap();
    o.set_alarm(5000).await.unwrap();
    assert_eq!(o.get_alarm().await.unwrap(), Some(5000), "seen inside");
    assert!(
        store.alarms().await.unwrap().is_empty(),
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
    assert!(store.alarms().await.unwrap().is_empty());
    o.commit().await.unwrap();
    assert_eq!(o.get_alarm().await.unwrap(), Some(8000));
    assert_eq!(store.alarms().await.unwrap()[0].time_ms, 8000);
    // Outside a transaction, at once.
    o.delete_alarm().await.unwrap();
    assert!(store.alarms().await.unwrap().is_empty());
}

#[tokio::test]
async fn handles_of_one_object_share_its_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let a = kv(&store, 1);
    let b = kv(&store, 1);
    a.begin().await.unwrap();
    a.put(vec![entry("k", "v")]).await.unwrap();
    assert_eq!(b.get(vec!["k".into()]).await.unwrap().len(), 1);
    b.rollback().await.unwrap();
    assert!(a.get(vec!["k".into()]).await.unwrap().is_empty());
}

#[tokio::test]
async fn sql_runs_several_statements_with_parameters_across_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let o = sql(&store, 1);
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
    let echoed = exec(&*o, "SELECT ?, ?, ?, ?, ?, ?", values.clone())
        .await
        .unwrap();
    assert_eq!(echoed.rows, std::slice::from_ref(&values));
    exec(
        &*o,
        "CREATE TABLE v (a, b, c, d, e, f); INSERT INTO v VALUES (?, ?, ?, ?, ?, ?)",
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
            "CREATE TABLE w (x); INSERT INTO w VALUES (?)",
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
            "CREATE TABLE w (x, y); INSERT INTO w VALUES (?, ?)",
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
        "SELECT name FROM sqlite_master WHERE name = 'w'",
        vec![],
    )
    .await
    .unwrap();
    assert!(tables.rows.is_empty(), "the CREATE TABLE was rolled back");

    let msg = invalid_msg(exec(&*o, " ; -- nothing\n", vec![]).await);
    assert!(msg.contains("no statement"), "{msg}");
}

#[tokio::test]
async fn a_failing_statement_undoes_the_whole_call() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let o = sql(&store, 1);
    exec(&*o, "CREATE TABLE t (x UNIQUE)", vec![])
        .await
        .unwrap();
    let err = exec(
        &*o,
        "INSERT INTO t VALUES (1); INSERT INTO t VALUES (2); INSERT INTO t VALUES (1)",
        vec![],
    )
    .await
    .unwrap_err();
    assert_eq!(
        err,
        BindingError::Invalid("UNIQUE constraint failed: t.x".into())
    );
    let count = exec(&*o, "SELECT count(*) FROM t", vec![]).await.unwrap();
    assert_eq!(count.rows, [[Value::Integer(0)]]);

    // SQLite's own messages, as the guest's mistakes.
    let err = exec(&*o, "SELEC 1", vec![]).await.unwrap_err();
    assert_eq!(
        err,
        BindingError::Invalid("near \"SELEC\": syntax error".into())
    );
    let err = exec(&*o, "SELECT * FROM nope", vec![]).await.unwrap_err();
    assert_eq!(err, BindingError::Invalid("no such table: nope".into()));
}

#[tokio::test]
async fn sql_may_not_touch_the_storage_or_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let o = sql(&store, 1);
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
    // The authorizer refuses them too, when the textual check is not in
    // front (the backend's own handle).
    let raw = store.open_object(NS, &id(1)).unwrap();
    // SQLite checks a trigger's body when a statement fires it.
    exec(
        &*raw,
        "CREATE TABLE t2 (x); CREATE TRIGGER tr AFTER INSERT ON t2 BEGIN DELETE FROM _isola_kv; END",
        vec![],
    )
    .await
    .unwrap();
    for query in [
        "SELECT * FROM _isola_kv",
        "DELETE FROM \"_ISOLA_KV\"",
        "INSERT INTO t2 VALUES (1)",
        "CREATE VIEW v AS SELECT * FROM _isola_kv; SELECT * FROM v",
    ] {
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

    // What Workers allows still works.
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

    // A class made by `new_classes` has no SQL API.
    let msg = invalid_msg(exec(&*kv(&store, 2), "SELECT 1", vec![]).await);
    assert_eq!(
        msg,
        "the SQL API needs a class created by `new_sqlite_classes`"
    );
}

#[test]
fn the_first_keyword_skips_blanks_and_comments() {
    use super::sqlite::testing::keyword;
    assert_eq!(keyword("VACUUM is not allowed"), "VACUUM");
    assert_eq!(keyword("  \n-- x\n /* y */ vacuum INTO 'f'"), "vacuum");
    assert_eq!(keyword("/* unterminated"), "");
    assert_eq!(keyword("SELECT 1"), "SELECT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_query_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteDurableStore::with_limits(dir.path(), 8, Duration::from_millis(200));
    let o = sql(&store, 1);
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
    // The object still works afterwards.
    let one = exec(&*o, "SELECT 1", vec![]).await.unwrap();
    assert_eq!(one.rows, [[Value::Integer(1)]]);
}

#[tokio::test]
async fn delete_all_removes_keys_and_sql_but_keeps_the_alarm() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let o = sql(&store, 1);
    o.put(vec![entry("k", "v")]).await.unwrap();
    exec(&*o, "CREATE TABLE t (x); INSERT INTO t VALUES (1)", vec![])
        .await
        .unwrap();
    o.set_alarm(1234).await.unwrap();
    assert!(o.database_size().await.unwrap() > 0);
    o.begin().await.unwrap();
    o.put(vec![entry("in-tx", "v")]).await.unwrap();

    o.delete_all().await.unwrap();
    assert!(!file(&dir, 1).exists(), "the database file is gone");
    let wal = file(&dir, 1).with_extension("sqlite-wal");
    assert!(!wal.exists());
    assert!(o.list(ListOptions::default()).await.unwrap().is_empty());
    assert_eq!(o.database_size().await.unwrap(), 0);
    assert_eq!(o.get_alarm().await.unwrap(), Some(1234));
    assert_eq!(store.alarms().await.unwrap().len(), 1);
    invalid_msg(o.commit().await);
    let err = exec(&*o, "SELECT * FROM t", vec![]).await.unwrap_err();
    assert_eq!(err, BindingError::Invalid("no such table: t".into()));

    // The object starts over.
    o.put(vec![entry("new", "v")]).await.unwrap();
    assert_eq!(
        keys(&o.list(ListOptions::default()).await.unwrap()),
        ["new"]
    );
    // Also after a restart, with the connection closed.
    drop(o);
    drop(store);
    let store = SqliteDurableStore::new(dir.path());
    let o = sql(&store, 1);
    assert_eq!(
        keys(&o.list(ListOptions::default()).await.unwrap()),
        ["new"]
    );
    drop(o);
    drop(store);
    let store = SqliteDurableStore::new(dir.path());
    sql(&store, 1).delete_all().await.unwrap();
    assert!(!file(&dir, 1).exists());
    let o = sql(&store, 1);
    assert!(o.list(ListOptions::default()).await.unwrap().is_empty());
    assert_eq!(o.get_alarm().await.unwrap(), Some(1234));
}

#[tokio::test]
async fn data_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = store(&dir);
        let o = sql(&store, 1);
        o.put(vec![entry("k", "durable")]).await.unwrap();
        exec(
            &*o,
            "CREATE TABLE t (x); INSERT INTO t VALUES ('row')",
            vec![],
        )
        .await
        .unwrap();
        o.set_alarm(99).await.unwrap();
        // Dropped without any close, checkpoint or end_run.
    }
    let store = store(&dir);
    let o = sql(&store, 1);
    assert_eq!(
        o.get(vec!["k".into()]).await.unwrap(),
        [entry("k", "durable")]
    );
    let rows = exec(&*o, "SELECT x FROM t", vec![]).await.unwrap();
    assert_eq!(rows.rows, [[Value::Text("row".into())]]);
    assert_eq!(o.get_alarm().await.unwrap(), Some(99));
}

/// Writes in a child process that then aborts (no unwinding, close or
/// checkpoint), and reads the values back here. The child is this same
/// test, run by the test binary with `ISOLA_DO_CRASH_DIR` set.
#[test]
fn data_survives_a_crash() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    if let Ok(dir) = std::env::var("ISOLA_DO_CRASH_DIR") {
        let store = SqliteDurableStore::new(Path::new(&dir));
        let o = store.object(NS, &id(1), true).unwrap();
        rt.block_on(async {
            o.put(vec![entry("k", "durable")]).await.unwrap();
            o.begin().await.unwrap();
            o.put(vec![entry("committed", "yes")]).await.unwrap();
            o.commit().await.unwrap();
            o.begin().await.unwrap();
            o.put(vec![entry("uncommitted", "no")]).await.unwrap();
            o.set_alarm(42).await.unwrap();
        });
        std::process::abort();
    }
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "durable::tests::data_survives_a_crash",
            "--nocapture",
        ])
        .env("ISOLA_DO_CRASH_DIR", dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child must have aborted");
    let store = store(&dir);
    let o = sql(&store, 1);
    let got = rt
        .block_on(o.get(strings(&["k", "committed", "uncommitted"])))
        .unwrap();
    assert_eq!(got, [entry("k", "durable"), entry("committed", "yes")]);
    assert_eq!(rt.block_on(o.get_alarm()).unwrap(), None);
}

#[tokio::test]
async fn alarms_are_listed_earliest_first_across_namespaces() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    assert!(store.alarms().await.unwrap().is_empty());
    let other = store.object("other/Room", &id(9), true).unwrap();
    kv(&store, 1).set_alarm(300).await.unwrap();
    other.set_alarm(100).await.unwrap();
    kv(&store, 2).set_alarm(200).await.unwrap();
    kv(&store, 3).set_alarm(400).await.unwrap();
    kv(&store, 3).delete_alarm().await.unwrap();
    // Moving an alarm replaces it.
    kv(&store, 1).set_alarm(250).await.unwrap();
    let alarms = store.alarms().await.unwrap();
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
    assert_eq!(kv(&store, 3).get_alarm().await.unwrap(), None);
    assert_eq!(other.get_alarm().await.unwrap(), Some(100));
    // Setting an alarm creates no object database.
    assert!(!file(&dir, 1).exists());
}

#[tokio::test]
async fn reading_an_unknown_object_creates_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("state");
    let store = SqliteDurableStore::new(&root);
    for sqlite in [false, true] {
        let o = store.object(NS, &id(1), sqlite).unwrap();
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
    assert!(store.alarms().await.unwrap().is_empty());
    assert_eq!(files(&root), Vec::<String>::new());
    assert!(!root.exists());

    // A transaction opened before the first write still wraps it.
    let o = kv(&store, 1);
    o.begin().await.unwrap();
    o.put(vec![entry("k", "v")]).await.unwrap();
    o.rollback().await.unwrap();
    assert!(o.get(vec!["k".into()]).await.unwrap().is_empty());
    assert!(file_in(&root, 1).exists(), "the write made the file");
}

fn file_in(root: &Path, n: u32) -> std::path::PathBuf {
    root.join(NS).join(format!("{}.sqlite", id(n)))
}

#[tokio::test]
async fn open_connections_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteDurableStore::with_max_open(dir.path(), 2);
    // Object 1 keeps a transaction open across the others' use: it must
    // stay open, and its transaction intact.
    let first = kv(&store, 1);
    first.begin().await.unwrap();
    first.put(vec![entry("k", "1")]).await.unwrap();
    let handles: Vec<_> = (2..=6).map(|n| kv(&store, n)).collect();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_to_one_object_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(store(&dir));
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                // A handle of its own, as separate runtime paths would have.
                let o = kv(&store, 1);
                o.put(vec![entry(&format!("k{i:02}"), "v")]).await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let listed = kv(&store, 1).list(ListOptions::default()).await.unwrap();
    assert_eq!(listed.len(), 64);
}
