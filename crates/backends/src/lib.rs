//! The binding kinds a worker reaches through `env`: one module per kind,
//! each with a trait (so distributed backends can slot in later) and the
//! embedded backend that needs no external service.
//!
//! Limits and validation that Workers documents (key sizes, value sizes,
//! bucket key rules) live in the handle types here, in front of the traits,
//! so every backend enforces them identically.

pub mod analytics;
pub mod blob;
pub mod cache;
pub mod connect;
pub mod kv;
pub mod lease;
pub mod pg_sql;
pub mod queue;
pub mod redis_cache;
pub mod redis_kv;
pub mod redis_queue;
pub mod s3_blob;
pub mod sql;
#[cfg(any(test, feature = "test-services"))]
pub mod test_services;

use std::path::Path;
use std::sync::Arc;

/// Why a binding call failed, as the guest sees it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BindingError {
    /// The caller broke a documented rule or limit; the message says which.
    #[error("{0}")]
    Invalid(String),
    /// The backend failed (I/O, SQLite's message, ...).
    #[error("{0}")]
    Backend(String),
}

pub type Result<T, E = BindingError> = std::result::Result<T, E>;

/// The backends of one host process, shared by all its workers.
#[derive(Clone)]
pub struct Backends {
    pub kv: Arc<dyn kv::KvStore>,
    pub sql: Arc<dyn sql::SqlBackend>,
    pub blob: Arc<dyn blob::BlobStore>,
    pub cache: Arc<dyn cache::CacheStore>,
    pub analytics: Arc<dyn analytics::AnalyticsSink>,
    pub queues: Arc<dyn queue::QueueStore>,
    /// Who runs a cron firing: every node in embedded mode, one node of the
    /// cluster with a Redis queue backend.
    pub leases: Arc<dyn lease::LeaseStore>,
}

impl Backends {
    /// The embedded backends, all under `state_dir`: `kv.sqlite`,
    /// `d1/<database>.sqlite`, `r2/<bucket>/`, `analytics.sqlite`, and an
    /// in-memory cache of at most `cache_max_bytes`.
    pub fn embedded(state_dir: &Path, cache_max_bytes: u64) -> Result<Backends> {
        std::fs::create_dir_all(state_dir).map_err(|e| {
            BindingError::Backend(format!("cannot create {}: {e}", state_dir.display()))
        })?;
        Ok(Backends {
            kv: Arc::new(kv::SqliteKv::open(&state_dir.join("kv.sqlite"))?),
            sql: Arc::new(sql::SqliteSql::new(&state_dir.join("d1"))?),
            blob: Arc::new(blob::FsBlobStore::new(&state_dir.join("r2"))?),
            cache: Arc::new(cache::MemoryCache::new(cache_max_bytes)),
            analytics: Arc::new(analytics::SqliteAnalytics::open(
                &state_dir.join("analytics.sqlite"),
            )?),
            queues: Arc::new(queue::SqliteQueues::open(&state_dir.join("queues.sqlite"))?),
            leases: Arc::new(lease::LocalLeases),
        })
    }
}

/// A [`BindingError::Backend`] carrying `e`'s message.
pub(crate) fn backend_err(e: impl std::fmt::Display) -> BindingError {
    BindingError::Backend(e.to_string())
}

/// Run blocking work (SQLite, filesystem) off the async worker threads.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BindingError::Backend(format!("blocking task failed: {e}")))?
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Opens (creating) a read-write SQLite file the way every embedded backend
/// wants it: WAL so readers never block the writer, `synchronous=NORMAL`
/// (in WAL mode a committed transaction survives a process crash; only an
/// OS crash or power loss can lose the last few commits, never corrupt the
/// file), and a busy timeout so a second process sharing the state dir waits
/// for the write lock instead of failing at once.
pub(crate) fn open_sqlite(path: &Path) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // journal_mode returns the resulting mode as a row.
    conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
    conn.execute_batch("PRAGMA synchronous=NORMAL;")?;
    Ok(conn)
}

/// An SQLite connection opened, and its schema set up, on first use.
///
/// A server whose workers bind no KV namespace, queue, bucket or dataset
/// never touches those files: opening the four embedded stores at start-up
/// (WAL, pragmas, schema) was ~2 ms of a ~12 ms start to the first 200, and
/// created files in the state dir for bindings nobody had. Callers are on
/// the blocking pool, so opening here blocks nothing async. A failed open
/// is returned to its caller and the next call tries again.
pub(crate) struct LazyConn {
    path: std::path::PathBuf,
    setup: fn(&rusqlite::Connection) -> rusqlite::Result<()>,
    conn: std::sync::Mutex<Option<rusqlite::Connection>>,
}

impl LazyConn {
    /// `setup` runs once, after [`open_sqlite`], on the new connection.
    pub(crate) fn new(
        path: &Path,
        setup: fn(&rusqlite::Connection) -> rusqlite::Result<()>,
    ) -> Self {
        LazyConn {
            path: path.to_owned(),
            setup,
            conn: std::sync::Mutex::new(None),
        }
    }

    /// Run `f` on the connection, holding it alone, opening it first.
    pub(crate) fn with<T>(
        &self,
        f: impl FnOnce(&mut rusqlite::Connection) -> Result<T>,
    ) -> Result<T> {
        let mut slot = lock(&self.conn);
        let conn = match &mut *slot {
            Some(conn) => conn,
            empty => empty.insert(self.open()?),
        };
        f(conn)
    }

    /// [`LazyConn::with`] on the blocking pool, where SQLite's I/O belongs.
    pub(crate) async fn run<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        F: FnOnce(&mut rusqlite::Connection) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let this = self.clone();
        blocking(move || this.with(f)).await
    }

    /// Whether the file exists (it does once the connection is open).
    pub(crate) fn exists(&self) -> bool {
        self.path.exists()
    }

    fn open(&self) -> Result<rusqlite::Connection> {
        let opened = || {
            if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(backend_err)?;
            }
            let conn = open_sqlite(&self.path).map_err(backend_err)?;
            (self.setup)(&conn).map_err(backend_err)?;
            Ok(conn)
        };
        opened().map_err(|e: BindingError| {
            BindingError::Backend(format!("cannot open {}: {e}", self.path.display()))
        })
    }
}

/// Locks a mutex, ignoring poisoning: the guarded SQLite connection stays
/// consistent even if a thread panicked while holding it (SQLite rolls back
/// an unfinished statement itself).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Inverse of [`hex`]; `None` for anything else.
pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The smallest string greater than every string that starts with `prefix`
/// (`None` if there is none). SQLite's BINARY collation compares UTF-8 bytes,
/// and UTF-8 byte order is code point order, so `key >= prefix AND key <
/// successor` selects exactly the keys with that prefix and can use the
/// index, with no LIKE wildcards to escape.
pub(crate) fn prefix_successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last as u32 + 1 {
            0xD800 => Some('\u{E000}'),
            n => char::from_u32(n),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// SQLite's plan for `sql` with `params` bound, its steps joined by "; ",
/// for tests that check a statement seeks in an index instead of scanning
/// or sorting.
#[cfg(test)]
pub(crate) fn query_plan(
    conn: &rusqlite::Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> String {
    conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .unwrap()
        .query_map(params, |row| row.get::<_, String>(3))
        .unwrap()
        .map(Result::unwrap)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Runs each named test body (`async fn body(f: &Fixture)`) against the
/// embedded backend and the distributed one: `Fixture::embedded()` and
/// `Fixture::distributed().await` of the calling test module. One suite,
/// two backends, so both keep the same guest-visible semantics.
#[cfg(test)]
#[macro_export]
macro_rules! for_each_backend {
    ($($body:ident),* $(,)?) => { $(
        mod $body {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::$body(&super::Fixture::embedded()).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn distributed() {
                super::$body(&super::Fixture::distributed().await).await;
            }
        }
    )* };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successor_bounds_exactly_the_prefixed_strings() {
        assert_eq!(prefix_successor("ab").as_deref(), Some("ac"));
        assert_eq!(prefix_successor("a\u{D7FF}").as_deref(), Some("a\u{E000}"));
        assert_eq!(prefix_successor("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_successor("\u{10FFFF}"), None);
        assert_eq!(prefix_successor(""), None);
        let succ = prefix_successor("a/").unwrap();
        for key in ["a/", "a/b", "a/\u{10FFFF}\u{10FFFF}"] {
            assert!(key.as_bytes() < succ.as_bytes(), "{key}");
        }
        for key in ["a0", "b", "a\u{10FFFF}"] {
            assert!(key.as_bytes() >= succ.as_bytes(), "{key}");
        }
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(hex(&[0, 0xab, 0xff]), "00abff");
        assert_eq!(unhex("00abff"), Some(vec![0, 0xab, 0xff]));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex("é0"), None);
    }

    #[tokio::test]
    async fn embedded_creates_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("nested").join("state");
        let backends = Backends::embedded(&state, 1 << 20).unwrap();
        assert!(state.join("d1").is_dir());
        // Stores open their files on first use.
        assert!(!state.join("kv.sqlite").exists());
        let kv = kv::KvNamespace::new(backends.kv.clone(), "ns");
        kv.put("k", b"v".to_vec(), Default::default())
            .await
            .unwrap();
        assert!(state.join("kv.sqlite").exists());
        assert_eq!(kv.get("k").await.unwrap().unwrap().data, b"v");
        let db = backends.sql.open("app").unwrap();
        db.exec("CREATE TABLE t (x)".into()).await.unwrap();
        assert!(state.join("d1").join("app.sqlite").exists());
    }
}
