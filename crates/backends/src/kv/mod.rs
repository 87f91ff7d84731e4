//! Workers KV: namespaces of keys with values up to 25 MiB, metadata and
//! expiry. Embedded backend: one SQLite file.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use crate::embedded::LazyConn;
use crate::error::{BindingError, Result, backend_err};
use crate::util::unix_now;

pub const MAX_KEY_BYTES: usize = 512;
pub const MAX_VALUE_BYTES: usize = 25 * 1024 * 1024;
pub const MAX_METADATA_BYTES: usize = 1024;
pub const MAX_LIST_LIMIT: u32 = 1000;

#[derive(Debug, Clone, PartialEq)]
pub struct KvValue {
    pub data: Vec<u8>,
    /// JSON text.
    pub metadata: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    /// Seconds from now.
    pub expiration_ttl: Option<u64>,
    /// Seconds since the Unix epoch.
    pub expiration: Option<u64>,
    /// JSON text.
    pub metadata: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    pub prefix: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct KeyInfo {
    pub name: String,
    /// Seconds since the Unix epoch.
    pub expiration: Option<u64>,
    pub metadata: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListResult {
    pub keys: Vec<KeyInfo>,
    pub list_complete: bool,
    pub cursor: Option<String>,
}

/// A KV backend. Arguments reach it already validated by [`KvNamespace`];
/// `expiration` is absolute (seconds since the epoch) by then.
#[async_trait]
pub trait KvStore: Send + Sync {
    async fn get(&self, namespace: &str, key: &str) -> Result<Option<KvValue>>;
    async fn put(
        &self,
        namespace: &str,
        key: &str,
        value: Vec<u8>,
        expiration: Option<u64>,
        metadata: Option<String>,
    ) -> Result<()>;
    async fn delete(&self, namespace: &str, key: &str) -> Result<()>;
    /// Keys in byte order after `cursor`, at most `limit` (already clamped).
    async fn list(
        &self,
        namespace: &str,
        prefix: &str,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<ListResult>;
}

/// One namespace (a `kv_namespaces` entry's `id`), with Workers' limits
/// enforced in front of the backend.
#[derive(Clone)]
pub struct KvNamespace {
    store: Arc<dyn KvStore>,
    namespace: Arc<str>,
}

impl KvNamespace {
    pub fn new(store: Arc<dyn KvStore>, namespace: &str) -> Self {
        KvNamespace {
            store,
            namespace: namespace.into(),
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<KvValue>> {
        validate_key(key)?;
        self.store.get(&self.namespace, key).await
    }

    /// Stores `value` under `key`.
    ///
    /// `expiration_ttl` must be at least 1 second. Workers requires at least
    /// 60; we accept shorter TTLs so tests and local development need not
    /// wait a minute. When both `expiration_ttl` and `expiration` are given,
    /// the TTL wins (as in Miniflare).
    pub async fn put(&self, key: &str, value: Vec<u8>, options: PutOptions) -> Result<()> {
        validate_key(key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(invalid(format!(
                "KV value is {} bytes; the limit is {MAX_VALUE_BYTES}",
                value.len()
            )));
        }
        if let Some(metadata) = &options.metadata {
            validate_metadata(metadata)?;
        }
        let expiration = absolute_expiration(&options, unix_now())?;
        self.store
            .put(&self.namespace, key, value, expiration, options.metadata)
            .await
    }

    pub async fn delete(&self, key: &str) -> Result<()> {
        validate_key(key)?;
        self.store.delete(&self.namespace, key).await
    }

    pub async fn list(&self, options: ListOptions) -> Result<ListResult> {
        let limit = options.limit.unwrap_or(MAX_LIST_LIMIT);
        if !(1..=MAX_LIST_LIMIT).contains(&limit) {
            return Err(invalid(format!(
                "KV list limit is {limit}; it must be between 1 and {MAX_LIST_LIMIT}"
            )));
        }
        let prefix = options.prefix.as_deref().unwrap_or("");
        let cursor = options.cursor.as_deref().filter(|c| !c.is_empty());
        self.store
            .list(&self.namespace, prefix, limit, cursor)
            .await
    }
}

fn invalid(message: String) -> BindingError {
    BindingError::Invalid(message)
}

fn validate_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(invalid("KV key is empty".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(invalid(format!(
            "KV key is {} bytes; the limit is {MAX_KEY_BYTES}",
            key.len()
        )));
    }
    if key == "." || key == ".." {
        return Err(invalid(format!("KV key {key:?} is not allowed")));
    }
    Ok(())
}

fn validate_metadata(metadata: &str) -> Result<()> {
    if metadata.len() > MAX_METADATA_BYTES {
        return Err(invalid(format!(
            "KV metadata is {} bytes; the limit is {MAX_METADATA_BYTES}",
            metadata.len()
        )));
    }
    serde_json::from_str::<serde_json::Value>(metadata)
        .map_err(|e| invalid(format!("KV metadata is not valid JSON: {e}")))?;
    Ok(())
}

/// The absolute expiry (seconds since the epoch) `options` ask for.
fn absolute_expiration(options: &PutOptions, now: u64) -> Result<Option<u64>> {
    let expiration =
        match (options.expiration_ttl, options.expiration) {
            (Some(0), _) => {
                return Err(invalid(
                    "KV expiration_ttl is 0 seconds; it must be at least 1".into(),
                ));
            }
            (Some(ttl), _) => Some(now.checked_add(ttl).ok_or_else(|| {
                invalid(format!("KV expiration_ttl of {ttl} seconds is too large"))
            })?),
            (None, Some(at)) if at <= now => {
                return Err(invalid(format!(
                    "KV expiration {at} is not in the future (now is {now})"
                )));
            }
            (None, at) => at,
        };
    // SQLite stores INTEGER as i64.
    if let Some(at) = expiration
        && at > i64::MAX as u64
    {
        return Err(invalid(format!("KV expiration {at} is too large")));
    }
    Ok(expiration)
}

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
        cursor: Option<&str>,
    ) -> Result<ListResult> {
        // The cursor is the hex of the last key returned; the next page
        // starts strictly after it.
        let after = match cursor {
            None => None,
            Some(c) => Some(
                crate::util::unhex(c)
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| invalid(format!("KV list cursor {c:?} is not valid")))?,
            ),
        };
        // Start at the prefix, or strictly after the cursor when that is
        // further on; concrete bounds in the statement text (not `?4 IS NULL
        // OR key > ?4`) let SQLite seek in the primary key instead of
        // scanning the namespace from the start on every page.
        let (inclusive, from) = match after {
            Some(after) if after.as_str() >= prefix => (false, after),
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
        let cursor = match (more, keys.last()) {
            (true, Some(last)) => Some(crate::util::hex(last.name.as_bytes())),
            _ => None,
        };
        Ok(ListResult {
            keys,
            list_complete: !more,
            cursor,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &tempfile::TempDir) -> Arc<SqliteKv> {
        Arc::new(SqliteKv::open(&dir.path().join("kv.sqlite")).unwrap())
    }

    /// A KV backend under test: the embedded one or Redis. Tests of both
    /// take their namespaces from here (unique per test on the shared
    /// Redis).
    struct Fixture {
        store: Arc<dyn KvStore>,
        prefix: String,
        _dir: Option<tempfile::TempDir>,
    }

    impl Fixture {
        fn embedded() -> Self {
            let dir = tempfile::tempdir().unwrap();
            Fixture {
                store: open(&dir),
                prefix: String::new(),
                _dir: Some(dir),
            }
        }

        async fn distributed() -> Self {
            let url = crate::test_services::shared_redis().url();
            let conn = crate::remote::redis_connection(&url).await.unwrap();
            Fixture {
                store: Arc::new(crate::redis_kv::RedisKv::new(conn)),
                prefix: crate::test_services::unique("kv"),
                _dir: None,
            }
        }

        fn ns(&self, name: &str) -> KvNamespace {
            KvNamespace::new(self.store.clone(), &format!("{}{name}", self.prefix))
        }
    }

    crate::for_each_backend!(
        put_get_delete_and_namespaces_are_separate,
        limits_are_enforced_with_clear_messages,
        expired_keys_are_never_returned,
        list_pages_in_byte_order_with_prefix,
        concurrent_puts_all_land,
        large_values_round_trip,
    );

    fn ns(store: Arc<SqliteKv>, name: &str) -> KvNamespace {
        KvNamespace::new(store, name)
    }

    fn invalid_msg(r: Result<impl std::fmt::Debug>) -> String {
        match r {
            Err(BindingError::Invalid(m)) => m,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    async fn put_get_delete_and_namespaces_are_separate(f: &Fixture) {
        let a = f.ns("a");
        let b = f.ns("b");
        a.put(
            "k",
            b"one".to_vec(),
            PutOptions {
                metadata: Some(r#"{"v":1}"#.into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(
            a.get("k").await.unwrap(),
            Some(KvValue {
                data: b"one".to_vec(),
                metadata: Some(r#"{"v":1}"#.into())
            })
        );
        assert_eq!(b.get("k").await.unwrap(), None);
        a.put("k", b"two".to_vec(), Default::default())
            .await
            .unwrap();
        assert_eq!(
            a.get("k").await.unwrap(),
            Some(KvValue {
                data: b"two".to_vec(),
                metadata: None
            })
        );
        a.delete("k").await.unwrap();
        a.delete("missing").await.unwrap();
        assert_eq!(a.get("k").await.unwrap(), None);
    }

    async fn limits_are_enforced_with_clear_messages(f: &Fixture) {
        let kv = f.ns("n");
        let long = "k".repeat(600);
        assert_eq!(
            invalid_msg(kv.get(&long).await),
            "KV key is 600 bytes; the limit is 512"
        );
        kv.put(&"k".repeat(512), vec![], Default::default())
            .await
            .unwrap();
        assert!(invalid_msg(kv.get("").await).contains("empty"));
        assert!(invalid_msg(kv.put(".", vec![], Default::default()).await).contains("\".\""));
        assert!(invalid_msg(kv.delete("..").await).contains("\"..\""));
        let big = vec![0u8; MAX_VALUE_BYTES + 1];
        assert_eq!(
            invalid_msg(kv.put("k", big, Default::default()).await),
            format!(
                "KV value is {} bytes; the limit is {MAX_VALUE_BYTES}",
                MAX_VALUE_BYTES + 1
            )
        );
        let meta = |m: &str| PutOptions {
            metadata: Some(m.into()),
            ..Default::default()
        };
        let big_meta = format!("\"{}\"", "x".repeat(1100));
        assert!(
            invalid_msg(kv.put("k", vec![], meta(&big_meta)).await)
                .starts_with("KV metadata is 1102 bytes; the limit is 1024")
        );
        assert!(invalid_msg(kv.put("k", vec![], meta("{nope")).await).contains("not valid JSON"));
        let ttl = |t| PutOptions {
            expiration_ttl: Some(t),
            ..Default::default()
        };
        assert!(invalid_msg(kv.put("k", vec![], ttl(0)).await).contains("at least 1"));
        let at = |t| PutOptions {
            expiration: Some(t),
            ..Default::default()
        };
        assert!(
            invalid_msg(kv.put("k", vec![], at(unix_now())).await).contains("not in the future")
        );
        assert!(invalid_msg(kv.put("k", vec![], at(u64::MAX)).await).contains("too large"));
        for limit in [0, 1001] {
            let msg = invalid_msg(
                kv.list(ListOptions {
                    limit: Some(limit),
                    ..Default::default()
                })
                .await,
            );
            assert!(msg.contains(&format!("limit is {limit}")), "{msg}");
        }
        assert!(
            invalid_msg(
                kv.list(ListOptions {
                    cursor: Some("xyz".into()),
                    ..Default::default()
                })
                .await
            )
            .contains("cursor")
        );
    }

    #[test]
    fn ttl_becomes_an_absolute_expiration() {
        let opts = PutOptions {
            expiration_ttl: Some(30),
            expiration: Some(5),
            ..Default::default()
        };
        assert_eq!(absolute_expiration(&opts, 1000).unwrap(), Some(1030));
        let opts = PutOptions {
            expiration: Some(2000),
            ..Default::default()
        };
        assert_eq!(absolute_expiration(&opts, 1000).unwrap(), Some(2000));
        assert_eq!(
            absolute_expiration(&Default::default(), 1000).unwrap(),
            None
        );
    }

    async fn expired_keys_are_never_returned(f: &Fixture) {
        let kv = f.ns("n");
        let past = unix_now() - 10;
        // Straight into the backend: the namespace refuses past expirations.
        f.store
            .put(
                &format!("{}n", f.prefix),
                "old",
                b"x".to_vec(),
                Some(past),
                None,
            )
            .await
            .unwrap();
        kv.put(
            "soon",
            b"s".to_vec(),
            PutOptions {
                expiration_ttl: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        kv.put(
            "ttl",
            b"y".to_vec(),
            PutOptions {
                expiration_ttl: Some(100),
                metadata: Some("[1]".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(kv.get("old").await.unwrap(), None);
        assert_eq!(kv.get("soon").await.unwrap().unwrap().data, b"s");
        tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
        assert_eq!(kv.get("soon").await.unwrap(), None);
        let listed = kv.list(Default::default()).await.unwrap();
        let names: Vec<_> = listed.keys.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["ttl"]);
        let exp = listed.keys[0].expiration.unwrap();
        assert!((unix_now() + 97..=unix_now() + 100).contains(&exp));
        assert_eq!(listed.keys[0].metadata.as_deref(), Some("[1]"));
        // A put without expiry clears the old one.
        kv.put("ttl", b"z".to_vec(), Default::default())
            .await
            .unwrap();
        let listed = kv.list(Default::default()).await.unwrap();
        assert_eq!(listed.keys[0].expiration, None);
        assert_eq!(listed.keys[0].metadata, None);
    }

    async fn large_values_round_trip(f: &Fixture) {
        let kv = f.ns("n");
        let big: Vec<u8> = (0..MAX_VALUE_BYTES).map(|i| (i % 251) as u8).collect();
        kv.put("big", big.clone(), Default::default())
            .await
            .unwrap();
        assert_eq!(kv.get("big").await.unwrap().unwrap().data, big);
        kv.put("bin", vec![0, 255, 10, 13], Default::default())
            .await
            .unwrap();
        assert_eq!(kv.get("bin").await.unwrap().unwrap().data, [0, 255, 10, 13]);
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

    async fn list_pages_in_byte_order_with_prefix(f: &Fixture) {
        let kv = f.ns("n");
        let keys = [
            "a",
            "a%",
            "a_",
            "a_b",
            "ab",
            "b",
            "é",
            "a\u{10FFFF}",
            "A",
            "a/1",
            "a/2",
            "a/3",
        ];
        for k in keys {
            kv.put(k, k.as_bytes().to_vec(), Default::default())
                .await
                .unwrap();
        }
        f.ns("other")
            .put("a/0", vec![], Default::default())
            .await
            .unwrap();
        let mut sorted: Vec<&str> = keys.to_vec();
        sorted.sort_by(|x, y| x.as_bytes().cmp(y.as_bytes()));

        // Pages of 5 walk every key exactly once, in byte order.
        let mut seen = vec![];
        let mut cursor = None;
        loop {
            let page = kv
                .list(ListOptions {
                    limit: Some(5),
                    cursor: cursor.clone(),
                    ..Default::default()
                })
                .await
                .unwrap();
            seen.extend(page.keys.iter().map(|k| k.name.clone()));
            if page.list_complete {
                assert_eq!(page.cursor, None);
                break;
            }
            assert_eq!(page.keys.len(), 5);
            cursor = Some(page.cursor.unwrap());
        }
        assert_eq!(seen, sorted);

        // LIKE wildcards in the prefix are literal.
        let page = kv
            .list(ListOptions {
                prefix: Some("a_".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        let names: Vec<_> = page.keys.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["a_", "a_b"]);
        assert!(page.list_complete);

        let page = kv
            .list(ListOptions {
                prefix: Some("a/".into()),
                limit: Some(2),
                ..Default::default()
            })
            .await
            .unwrap();
        let names: Vec<_> = page.keys.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["a/1", "a/2"]);
        assert!(!page.list_complete);
        let page = kv
            .list(ListOptions {
                prefix: Some("a/".into()),
                limit: Some(2),
                cursor: page.cursor,
            })
            .await
            .unwrap();
        let names: Vec<_> = page.keys.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["a/3"]);
        assert!(page.list_complete);

        // Exactly `limit` keys left: complete, no cursor.
        let page = kv
            .list(ListOptions {
                prefix: Some("a/".into()),
                limit: Some(3),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(page.keys.len(), 3);
        assert!(page.list_complete);
        assert_eq!(page.cursor, None);
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

    async fn concurrent_puts_all_land(f: &Fixture) {
        let kv = f.ns("n");
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let kv = kv.clone();
                tokio::spawn(async move {
                    kv.put(&format!("key{i:02}"), vec![i as u8], Default::default())
                        .await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let page = kv.list(Default::default()).await.unwrap();
        assert_eq!(page.keys.len(), 50);
        for i in 0..50u8 {
            assert_eq!(
                kv.get(&format!("key{i:02}")).await.unwrap().unwrap().data,
                [i]
            );
        }
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
            .args(["--exact", "kv::tests::data_survives_a_crash", "--nocapture"])
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
