//! The Durable Object storage suite, run against the embedded backend
//! (SQLite files) and PostgreSQL (a database of its own per test on the
//! shared server), plus what only one of them has.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::postgres::{PostgresDurableStore, schema_name};
use super::sqlite::SqliteDurableStore;
use super::*;

mod kv;
mod lifecycle;
mod postgres;
mod sql;
mod sqlite;

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
