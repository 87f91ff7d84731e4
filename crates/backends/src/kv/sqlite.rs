//! The embedded KV backend: one SQLite file, `kv.sqlite`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::{KeyInfo, KeyPage, KvStore, KvValue};
use crate::embedded::LazyConn;
use crate::error::{Result, backend_err};
use crate::util::unix_now;

/// The page query: keys from `?2` (inclusive or not) below `?3` (if
/// `bounded`) that have not expired at `?4`, at most `?5`.
fn list_sql(inclusive: bool, bounded: bool) -> String {
    let op = if inclusive { ">=" } else { ">" };
    let upper = if bounded { "key < ?3" } else { "?3 IS NULL" };
    format!(
        "SELECT key, expiration, metadata FROM kv
         WHERE namespace = ?1 AND key {op} ?2 AND {upper}
           AND (expiration IS NULL OR expiration > ?4)
         ORDER BY key LIMIT ?5"
    )
}

/// Purge expired rows once every this many puts: reads already hide them,
/// this only reclaims space.
const PURGE_EVERY_PUTS: u64 = 1000;

/// The embedded backend: `kv.sqlite`, WAL mode, one table for all namespaces.
///
/// One connection behind a mutex: SQLite allows a single writer per file
/// anyway, KV statements are short point reads and writes, and a pool would
/// add a dependency for no measurable gain on one host. The mutex is only
/// ever taken inside `spawn_blocking`, never on an async worker thread.
pub struct SqliteKv {
    conn: Arc<LazyConn>,
    puts: AtomicU64,
    purge_every: u64,
}

impl SqliteKv {
    /// The store in `path`, which is opened (and created) on first use.
    pub fn open(path: &std::path::Path) -> Result<Self> {
        Self::open_with_purge_interval(path, PURGE_EVERY_PUTS)
    }

    fn open_with_purge_interval(path: &Path, purge_every: u64) -> Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(backend_err)?;
        }
        Ok(SqliteKv {
            conn: Arc::new(LazyConn::new(path, create_schema)),
            puts: AtomicU64::new(0),
            purge_every: purge_every.max(1),
        })
    }

    async fn with_conn<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.conn.run(|conn| f(conn).map_err(backend_err)).await
    }
}

fn create_schema(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS kv (
             namespace TEXT NOT NULL,
             key TEXT NOT NULL,
             value BLOB NOT NULL,
             metadata TEXT,
             expiration INTEGER,
             PRIMARY KEY (namespace, key)
         );
         CREATE INDEX IF NOT EXISTS kv_expiration ON kv (expiration)
             WHERE expiration IS NOT NULL;",
    )
}

#[async_trait]
impl KvStore for SqliteKv {
    async fn get(&self, namespace: &str, key: &str) -> Result<Option<KvValue>> {
        let (namespace, key) = (namespace.to_owned(), key.to_owned());
        self.with_conn(move |conn| {
            conn.prepare_cached(
                "SELECT value, metadata FROM kv
                 WHERE namespace = ?1 AND key = ?2
                   AND (expiration IS NULL OR expiration > ?3)",
            )?
            .query_row(params![namespace, key, unix_now() as i64], |row| {
                Ok(KvValue {
                    data: row.get(0)?,
                    metadata: row.get(1)?,
                })
            })
            .optional()
        })
        .await
    }

    async fn put(
        &self,
        namespace: &str,
        key: &str,
        value: Vec<u8>,
        expiration: Option<u64>,
        metadata: Option<String>,
    ) -> Result<()> {
        let (namespace, key) = (namespace.to_owned(), key.to_owned());
        let purge =
            self.puts.fetch_add(1, Ordering::Relaxed) % self.purge_every == self.purge_every - 1;
        self.with_conn(move |conn| {
            conn.prepare_cached(
                "INSERT INTO kv (namespace, key, value, metadata, expiration)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (namespace, key) DO UPDATE SET
                     value = excluded.value,
                     metadata = excluded.metadata,
                     expiration = excluded.expiration",
            )?
            .execute(params![
                namespace,
                key,
                value,
                metadata,
                expiration.map(|e| e as i64)
            ])?;
            if purge {
                conn.prepare_cached("DELETE FROM kv WHERE expiration <= ?1")?
                    .execute([unix_now() as i64])?;
            }
            Ok(())
        })
        .await
    }

    async fn delete(&self, namespace: &str, key: &str) -> Result<()> {
        let (namespace, key) = (namespace.to_owned(), key.to_owned());
        self.with_conn(move |conn| {
            conn.prepare_cached("DELETE FROM kv WHERE namespace = ?1 AND key = ?2")?
                .execute(params![namespace, key])?;
            Ok(())
        })
        .await
    }

    async fn list(
        &self,
        namespace: &str,
        prefix: &str,
        limit: u32,
        after: Option<&str>,
    ) -> Result<KeyPage> {
        // Start at the prefix, or strictly after `after` when that is
        // further on; concrete bounds in the statement text (not `?4 IS NULL
        // OR key > ?4`) let SQLite seek in the primary key instead of
        // scanning the namespace from the start on every page.
        let (inclusive, from) = match after {
            Some(after) if after >= prefix => (false, after.to_owned()),
            _ => (true, prefix.to_owned()),
        };
        let upper = crate::util::prefix_successor(prefix);
        let sql = list_sql(inclusive, upper.is_some());
        let namespace = namespace.to_owned();
        let (mut keys, more) = self
            .with_conn(move |conn| {
                let mut stmt = conn.prepare_cached(&sql)?;
                // One row beyond the page tells whether another page exists.
                let keys = stmt
                    .query_map(
                        params![namespace, from, upper, unix_now() as i64, limit as i64 + 1],
                        |row| {
                            Ok(KeyInfo {
                                name: row.get(0)?,
                                expiration: row.get::<_, Option<i64>>(1)?.map(|e| e as u64),
                                metadata: row.get(2)?,
                            })
                        },
                    )?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                let more = keys.len() > limit as usize;
                Ok((keys, more))
            })
            .await?;
        keys.truncate(limit as usize);
        Ok(KeyPage { keys, more })
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::kv::{KvNamespace, PutOptions};

    fn open(dir: &tempfile::TempDir) -> Arc<SqliteKv> {
        Arc::new(SqliteKv::open(&dir.path().join("kv.sqlite")).unwrap())
    }

    fn ns(store: Arc<SqliteKv>, name: &str) -> KvNamespace {
        KvNamespace::new(store, name)
    }

    #[tokio::test]
    async fn expired_keys_are_hidden_then_purged() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(SqliteKv::open_with_purge_interval(&dir.path().join("kv.sqlite"), 3).unwrap());
        let kv = ns(store.clone(), "n");
        let past = unix_now() as i64 - 10;
        // Write rows that are already expired straight into the backend (the
        // namespace refuses such expirations).
        store
            .put("n", "old", b"x".to_vec(), Some(past as u64), None)
            .await
            .unwrap();
        kv.put(
            "ttl",
            b"y".to_vec(),
            PutOptions {
                expiration_ttl: Some(100),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(kv.get("old").await.unwrap(), None);
        let listed = kv.list(Default::default()).await.unwrap();
        let names: Vec<_> = listed.keys.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["ttl"]);
        let exp = listed.keys[0].expiration.unwrap();
        assert!((unix_now() + 99..=unix_now() + 100).contains(&exp));
        let rows = |store: &SqliteKv| {
            store
                .conn
                .with(|conn| {
                    Ok(conn
                        .query_row("SELECT count(*) FROM kv", [], |r| r.get::<_, i64>(0))
                        .unwrap())
                })
                .unwrap()
        };
        assert_eq!(rows(&store), 2, "the expired row is still on disk");
        // The third put triggers the purge.
        kv.put("third", vec![], Default::default()).await.unwrap();
        assert_eq!(rows(&store), 2, "ttl and third remain, old is gone");
        assert_eq!(kv.get("ttl").await.unwrap().unwrap().data, b"y");
    }

    #[test]
    fn list_pages_seek_in_the_primary_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        store
            .conn
            .with(|conn| {
                for inclusive in [true, false] {
                    for bounded in [true, false] {
                        let plan = crate::embedded::query_plan(
                            conn,
                            &list_sql(inclusive, bounded),
                            params!["n", "a", Some("b").filter(|_| bounded), 0, 10],
                        );
                        // SQLite prints `>=` as `>` in query plans.
                        assert!(plan.contains("(namespace=? AND key>?"), "{plan}");
                        assert!(!plan.contains("TEMP B-TREE"), "no sort: {plan}");
                    }
                }
                Ok(())
            })
            .unwrap();
    }

    /// Writes in a child process that then aborts (no unwinding, close or
    /// checkpoint), and reads the value back here. The child is this same
    /// test, run by the test binary with `ISOLA_KV_CRASH_DIR` set.
    #[test]
    fn data_survives_a_crash() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        if let Ok(dir) = std::env::var("ISOLA_KV_CRASH_DIR") {
            let kv = KvNamespace::new(
                Arc::new(SqliteKv::open(&Path::new(&dir).join("kv.sqlite")).unwrap()),
                "n",
            );
            rt.block_on(kv.put("k", b"durable".to_vec(), Default::default()))
                .unwrap();
            std::process::abort();
        }
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "kv::sqlite::tests::data_survives_a_crash",
                "--nocapture",
            ])
            .env("ISOLA_KV_CRASH_DIR", dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(!status.success(), "the child must have aborted");
        let kv = ns(open(&dir), "n");
        let got = rt.block_on(kv.get("k")).unwrap();
        assert_eq!(got.unwrap().data, b"durable");
    }

    #[tokio::test]
    async fn data_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let kv = ns(open(&dir), "n");
            kv.put("k", b"durable".to_vec(), Default::default())
                .await
                .unwrap();
            // Dropped without any explicit close or checkpoint.
        }
        let kv = ns(open(&dir), "n");
        assert_eq!(kv.get("k").await.unwrap().unwrap().data, b"durable");
    }
}
