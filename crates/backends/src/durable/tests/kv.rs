//! Keys and values, and transactions, on both backends.

use super::*;

crate::for_each_backend!(
    names_are_checked,
    get_returns_found_entries_in_the_order_asked,
    list_honours_every_option,
    limits_are_enforced_with_clear_messages,
    nested_transactions_are_savepoints,
    transactions_cover_sql_and_the_alarm,
    handles_of_one_object_share_its_transactions,
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
