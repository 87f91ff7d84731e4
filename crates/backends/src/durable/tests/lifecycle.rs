//! Deleting, reopening, crashing, alarms and concurrency, on both backends.

use super::*;

crate::for_each_backend!(
    delete_all_removes_keys_and_sql_but_keeps_the_alarm,
    data_survives_reopening,
    alarms_are_listed_earliest_first_across_namespaces,
    reading_an_unknown_object_stores_nothing,
    concurrent_writes_to_one_object_all_land,
);

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
        "durable::tests::lifecycle::data_survives_a_crash",
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
        "durable::tests::lifecycle::data_survives_a_crash_on_postgres",
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
