//! Building the backends a `[backends]` section asks for, and what the
//! distributed ones share: connections made on a background runtime,
//! credentials redacted from every message, a node id.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use isola_config::{Backend, BackendsConfig};

use crate::{BindingError, Result, analytics, blob, cache, kv, lease, queue, sql};

/// How long a connection attempt or a command may take before the call
/// fails with a `backend` error (the guest sees the error; it never hangs
/// for its whole wall-clock budget on a dead server).
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A random id for this process, used as its Redis consumer name and as
/// the value of the cron leases it holds.
pub fn node_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let mut bytes = [0u8; 8];
        let _ = getrandom::getrandom(&mut bytes);
        format!("{}-{}", std::process::id(), crate::hex(&bytes))
    })
}

/// A runtime of its own for connection drivers (Redis, Postgres), so
/// connections made while starting up outlive whatever runtime the caller
/// had, and keep working for every runtime that uses them.
pub(crate) fn background() -> &'static tokio::runtime::Handle {
    static RUNTIME: OnceLock<tokio::runtime::Handle> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("isola-backends".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("isola-backends")
                    .enable_all()
                    .build()
                    .expect("a runtime for backend connections");
                let _ = tx.send(runtime.handle().clone());
                runtime.block_on(std::future::pending::<()>());
            })
            .expect("a thread for backend connections");
        rx.recv().expect("the backend runtime started")
    })
}

/// Run `future` on the [`background`] runtime and wait for it here.
pub(crate) async fn on_background<T, F>(future: F) -> Result<T>
where
    F: std::future::Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    background()
        .spawn(future)
        .await
        .map_err(|e| BindingError::Backend(format!("backend task failed: {e}")))?
}

/// `url` with its password (or a lone user name, which may be a token)
/// replaced by `***`: `redis://user:***@host:6379`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => format!("***@{host}"),
        },
        None => authority.to_owned(),
    };
    // A password in the query (`?password=`) is redacted as well.
    let path = match path.find("password=") {
        Some(at) => {
            let from = at + "password=".len();
            let end = path[from..].find('&').map_or(path.len(), |e| from + e);
            format!("{}***{}", &path[..from], &path[end..])
        }
        None => path.to_owned(),
    };
    format!("{scheme}://{authority}{path}")
}

/// A Redis failure as the guest sees it.
pub(crate) fn redis_err(e: redis::RedisError) -> BindingError {
    BindingError::Backend(format!("redis: {e}"))
}

/// A Redis connection that reconnects by itself: commands on a broken
/// connection fail (the caller gets a `backend` error) and the next one
/// reconnects. Every attempt and every command is bounded by
/// [`IO_TIMEOUT`].
pub async fn redis_connection(url: &str) -> Result<redis::aio::ConnectionManager> {
    let client = redis::Client::open(url).map_err(|e| {
        BindingError::Invalid(format!("redis URL {} is not valid: {e}", redact(url)))
    })?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(IO_TIMEOUT))
        .set_response_timeout(Some(IO_TIMEOUT))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    let shown = redact(url);
    on_background(async move {
        let mut conn = redis::aio::ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| BindingError::Backend(format!("cannot connect to {shown}: {e}")))?;
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| BindingError::Backend(format!("{shown} does not answer PING: {e}")))?;
        Ok(conn)
    })
    .await
}

impl crate::Backends {
    /// The backends `config` names, connected and checked: an unreachable
    /// server is an error naming the binding kind and the URL (credentials
    /// redacted). Embedded backends live under `state_dir`; analytics is
    /// always embedded (per node).
    pub async fn connect(config: &BackendsConfig, state_dir: &Path) -> Result<crate::Backends> {
        std::fs::create_dir_all(state_dir).map_err(|e| {
            BindingError::Backend(format!("cannot create {}: {e}", state_dir.display()))
        })?;
        let mut redis: HashMap<String, redis::aio::ConnectionManager> = HashMap::new();
        let mut redis_for = async |kind: &str, url: &str| {
            if let Some(conn) = redis.get(url) {
                return Ok(conn.clone());
            }
            let conn = redis_connection(url)
                .await
                .map_err(|e| BindingError::Backend(format!("backends.{kind}: {e}")))?;
            redis.insert(url.to_owned(), conn.clone());
            Ok::<_, BindingError>(conn)
        };
        let wrong = |kind: &str, backend: &Backend| {
            BindingError::Invalid(format!(
                "backends.{kind}: {backend:?} is not a {kind} backend"
            ))
        };
        let kv: Arc<dyn kv::KvStore> = match &config.kv {
            Backend::Embedded => Arc::new(kv::SqliteKv::open(&state_dir.join("kv.sqlite"))?),
            Backend::Redis { url } => {
                Arc::new(crate::redis_kv::RedisKv::new(redis_for("kv", url).await?))
            }
            other => return Err(wrong("kv", other)),
        };
        let cache: Arc<dyn cache::CacheStore> = match &config.cache {
            Backend::Embedded => Arc::new(cache::MemoryCache::new(config.cache_max_bytes)),
            Backend::Redis { url } => Arc::new(crate::redis_cache::RedisCache::new(
                redis_for("cache", url).await?,
            )),
            other => return Err(wrong("cache", other)),
        };
        let mut leases: Arc<dyn lease::LeaseStore> = Arc::new(lease::LocalLeases);
        let queues: Arc<dyn queue::QueueStore> = match &config.queue {
            Backend::Embedded => {
                Arc::new(queue::SqliteQueues::open(&state_dir.join("queues.sqlite"))?)
            }
            Backend::Redis { url } => {
                let conn = redis_for("queue", url).await?;
                leases = Arc::new(lease::RedisLeases::new(conn.clone()));
                Arc::new(crate::redis_queue::RedisQueues::new(conn))
            }
            other => return Err(wrong("queue", other)),
        };
        let sql: Arc<dyn sql::SqlBackend> = match &config.sql {
            Backend::Embedded => Arc::new(sql::SqliteSql::new(&state_dir.join("d1"))?),
            Backend::Postgres { url } => Arc::new(
                crate::pg_sql::PostgresSql::connect(url)
                    .await
                    .map_err(|e| BindingError::Backend(format!("backends.sql: {e}")))?,
            ),
            other => return Err(wrong("sql", other)),
        };
        let blob: Arc<dyn blob::BlobStore> = match &config.blob {
            Backend::Embedded => Arc::new(blob::FsBlobStore::new(&state_dir.join("r2"))?),
            Backend::S3 {
                endpoint,
                region,
                bucket,
            } => Arc::new(
                crate::s3_blob::S3BlobStore::connect(endpoint.as_deref(), region, bucket)
                    .await
                    .map_err(|e| BindingError::Backend(format!("backends.blob: {e}")))?,
            ),
            other => return Err(wrong("blob", other)),
        };
        Ok(crate::Backends {
            kv,
            sql,
            blob,
            cache,
            analytics: Arc::new(analytics::SqliteAnalytics::open(
                &state_dir.join("analytics.sqlite"),
            )?),
            queues,
            leases,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact("redis://user:secret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact("redis://:secret@host"), "redis://:***@host");
        assert_eq!(redact("redis://token@host"), "redis://***@host");
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
        assert_eq!(
            redact("postgres://isola:p%40ss@db:5432/app?sslmode=disable"),
            "postgres://isola:***@db:5432/app?sslmode=disable"
        );
        assert_eq!(
            redact("postgres://db/app?user=a&password=b&x=1"),
            "postgres://db/app?user=a&password=***&x=1"
        );
        assert_eq!(redact("not a url"), "not a url");
    }

    #[tokio::test]
    async fn an_unreachable_server_is_a_clear_error() {
        // A port nothing listens on: bind one, then free it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = BackendsConfig {
            kv: Backend::Redis {
                url: format!("redis://isola:hunter2@127.0.0.1:{port}"),
            },
            ..BackendsConfig::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let err = crate::Backends::connect(&config, dir.path())
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.starts_with(&format!(
                "backends.kv: cannot connect to redis://isola:***@127.0.0.1:{port}"
            )),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");

        let config = BackendsConfig {
            sql: Backend::Postgres {
                url: format!("postgres://isola:hunter2@127.0.0.1:{port}/app"),
            },
            ..BackendsConfig::default()
        };
        let err = crate::Backends::connect(&config, dir.path())
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.starts_with(&format!(
                "backends.sql: cannot connect to postgres://isola:***@127.0.0.1:{port}/app"
            )),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
    }

    /// The embedded stores open their files on first use: a server whose
    /// workers bind nothing creates none, and a failed open is the error of
    /// the call that needed the store.
    #[tokio::test]
    async fn embedded_stores_open_their_files_on_first_use() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let backends = crate::Backends::connect(&BackendsConfig::default(), &state)
            .await
            .unwrap();
        let files = || {
            let mut names: Vec<String> = walk(&state)
                .into_iter()
                .filter(|p| p.extension().is_some_and(|e| e == "sqlite"))
                .map(|p| p.strip_prefix(&state).unwrap().display().to_string())
                .collect();
            names.sort();
            names
        };
        assert_eq!(files(), Vec::<String>::new());
        // At start-up with no queue file, releasing old leases creates none.
        assert_eq!(backends.queues.release_all_leases().await.unwrap(), 0);
        assert_eq!(files(), Vec::<String>::new());

        assert_eq!(backends.kv.get("ns", "k").await.unwrap(), None);
        backends
            .analytics
            .write("ds", Default::default())
            .await
            .unwrap();
        assert_eq!(backends.blob.head("b", "k").await.unwrap(), None);
        backends
            .queues
            .send(
                "q",
                vec![crate::queue::OutgoingMessage {
                    body: b"m".to_vec(),
                    content_type: "text".into(),
                    delay: std::time::Duration::ZERO,
                }],
            )
            .await
            .unwrap();
        assert_eq!(
            files(),
            [
                "analytics.sqlite",
                "kv.sqlite",
                "queues.sqlite",
                "r2/index.sqlite"
            ]
        );

        // A store that cannot be opened fails the call, naming the file, and
        // the next call tries again.
        let kv_file = state.join("kv.sqlite");
        let blocked = tempfile::tempdir().unwrap();
        let backends = crate::Backends::connect(&BackendsConfig::default(), blocked.path())
            .await
            .unwrap();
        std::fs::create_dir(blocked.path().join("kv.sqlite")).unwrap();
        let err = backends.kv.get("ns", "k").await.unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "cannot open {}",
                blocked.path().join("kv.sqlite").display()
            )),
            "{err}"
        );
        std::fs::remove_dir(blocked.path().join("kv.sqlite")).unwrap();
        assert_eq!(backends.kv.get("ns", "k").await.unwrap(), None);
        assert!(kv_file.exists());
    }

    fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                found.extend(walk(&path));
            } else {
                found.push(path);
            }
        }
        found
    }
}
