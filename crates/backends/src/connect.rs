//! Picking and opening the backends: the embedded set under a state dir,
//! or the ones a `[backends]` section names.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use isola_config::{Backend, BackendsConfig};

use crate::error::{BindingError, Result};
use crate::remote::redis_connection_with;
use crate::{analytics, blob, cache, durable, kv, lease, queue, sql};

impl crate::Backends {
    /// The embedded backends, all under `state_dir`: `kv.sqlite`,
    /// `d1/<database>.sqlite`, `r2/<bucket>/`, `analytics.sqlite`, and an
    /// in-memory cache of at most `cache_max_bytes`.
    pub fn embedded(state_dir: &Path, cache_max_bytes: u64) -> Result<crate::Backends> {
        std::fs::create_dir_all(state_dir).map_err(|e| {
            BindingError::Backend(format!("cannot create {}: {e}", state_dir.display()))
        })?;
        Ok(crate::Backends {
            kv: Arc::new(kv::sqlite::SqliteKv::open(&state_dir.join("kv.sqlite"))?),
            sql: Arc::new(sql::sqlite::SqliteSql::new(&state_dir.join("d1"))?),
            blob: Arc::new(blob::fs::FsBlobStore::new(&state_dir.join("r2"))?),
            cache: Arc::new(cache::memory::MemoryCache::new(cache_max_bytes)),
            analytics: Arc::new(analytics::SqliteAnalytics::open(
                &state_dir.join("analytics.sqlite"),
            )?),
            queues: Arc::new(queue::sqlite::SqliteQueues::open(
                &state_dir.join("queues.sqlite"),
            )?),
            leases: Arc::new(lease::LocalLeases),
            durable: Arc::new(durable::sqlite::SqliteDurableStore::new(
                &state_dir.join("durable-objects"),
            )),
        })
    }

    /// The backends `config` names, connected and checked: an unreachable
    /// server is an error naming the binding kind and the URL (credentials
    /// redacted). Embedded backends live under `state_dir` (Durable
    /// Objects in `durable-objects/`); analytics is always embedded (per
    /// node).
    pub async fn connect(config: &BackendsConfig, state_dir: &Path) -> Result<crate::Backends> {
        std::fs::create_dir_all(state_dir).map_err(|e| {
            BindingError::Backend(format!("cannot create {}: {e}", state_dir.display()))
        })?;
        let mut redis: HashMap<String, redis::aio::ConnectionManager> = HashMap::new();
        let mut redis_for = async |kind: &str, url: &str, tls: &isola_config::BackendTls| {
            // One connection per server and set of certificate files.
            let key = format!("{url} {tls:?}");
            if let Some(conn) = redis.get(&key) {
                return Ok(conn.clone());
            }
            let conn = redis_connection_with(url, tls)
                .await
                .map_err(|e| BindingError::Backend(format!("backends.{kind}: {e}")))?;
            redis.insert(key, conn.clone());
            Ok::<_, BindingError>(conn)
        };
        let wrong = |kind: &str, backend: &Backend| {
            BindingError::Invalid(format!(
                "backends.{kind}: {backend:?} is not a {kind} backend"
            ))
        };
        let kv: Arc<dyn kv::KvStore> = match &config.kv {
            Backend::Embedded => {
                Arc::new(kv::sqlite::SqliteKv::open(&state_dir.join("kv.sqlite"))?)
            }
            Backend::Redis { url, tls } => {
                Arc::new(kv::redis::RedisKv::new(redis_for("kv", url, tls).await?))
            }
            other => return Err(wrong("kv", other)),
        };
        let cache: Arc<dyn cache::CacheStore> = match &config.cache {
            Backend::Embedded => Arc::new(cache::memory::MemoryCache::new(config.cache_max_bytes)),
            Backend::Redis { url, tls } => Arc::new(cache::redis::RedisCache::new(
                redis_for("cache", url, tls).await?,
            )),
            other => return Err(wrong("cache", other)),
        };
        let mut leases: Arc<dyn lease::LeaseStore> = Arc::new(lease::LocalLeases);
        let queues: Arc<dyn queue::QueueStore> = match &config.queue {
            Backend::Embedded => Arc::new(queue::sqlite::SqliteQueues::open(
                &state_dir.join("queues.sqlite"),
            )?),
            Backend::Redis { url, tls } => {
                let conn = redis_for("queue", url, tls).await?;
                leases = Arc::new(lease::RedisLeases::new(conn.clone()));
                Arc::new(queue::redis::RedisQueues::new(conn))
            }
            other => return Err(wrong("queue", other)),
        };
        let sql: Arc<dyn sql::SqlBackend> = match &config.sql {
            Backend::Embedded => Arc::new(sql::sqlite::SqliteSql::new(&state_dir.join("d1"))?),
            Backend::Postgres { url, tls } => Arc::new(
                sql::postgres::PostgresSql::connect_with(url, tls)
                    .await
                    .map_err(|e| BindingError::Backend(format!("backends.sql: {e}")))?,
            ),
            other => return Err(wrong("sql", other)),
        };
        let blob: Arc<dyn blob::BlobStore> = match &config.blob {
            Backend::Embedded => Arc::new(blob::fs::FsBlobStore::new(&state_dir.join("r2"))?),
            Backend::S3 {
                endpoint,
                region,
                bucket,
                tls,
            } => Arc::new(
                blob::s3::S3BlobStore::connect_tls(
                    endpoint.as_deref(),
                    region,
                    bucket,
                    None,
                    tls.ca_file.as_deref(),
                )
                .await
                .map_err(|e| BindingError::Backend(format!("backends.blob: {e}")))?,
            ),
            other => return Err(wrong("blob", other)),
        };
        let durable: Arc<dyn durable::DurableStore> = match &config.durable {
            Backend::Embedded => Arc::new(durable::sqlite::SqliteDurableStore::new(
                &state_dir.join("durable-objects"),
            )),
            Backend::Postgres { url, tls } => Arc::new(
                durable::postgres::PostgresDurableStore::connect_with(url, tls)
                    .await
                    .map_err(|e| BindingError::Backend(format!("backends.durable: {e}")))?,
            ),
            other => return Err(wrong("durable", other)),
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
            durable,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn embedded_creates_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("nested").join("state");
        let backends = crate::Backends::embedded(&state, 1 << 20).unwrap();
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
                tls: Default::default(),
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
                tls: Default::default(),
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

        let config = BackendsConfig {
            durable: Backend::Postgres {
                url: format!("postgres://isola:hunter2@127.0.0.1:{port}/objects"),
                tls: Default::default(),
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
                "backends.durable: cannot connect to postgres://isola:***@127.0.0.1:{port}/objects"
            )),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
        let config = BackendsConfig {
            durable: Backend::Redis {
                url: "redis://127.0.0.1:1".into(),
                tls: Default::default(),
            },
            ..BackendsConfig::default()
        };
        let err = crate::Backends::connect(&config, dir.path())
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(err.starts_with("backends.durable: Redis"), "{err}");
    }

    /// `durable = { type = "postgres" }`: objects live in the database,
    /// nothing under the state dir.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn durable_objects_on_postgres() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let config = BackendsConfig {
            durable: Backend::Postgres {
                url: isola_test_services::shared_postgres().url(),
                tls: Default::default(),
            },
            ..BackendsConfig::default()
        };
        let backends = crate::Backends::connect(&config, &state).await.unwrap();
        let namespace = isola_test_services::unique("connect").replace('-', "_");
        let id = format!("{:064x}", 7);
        let object = backends.durable.object(&namespace, &id, true).unwrap();
        object.put(vec![("k".into(), b"v".to_vec())]).await.unwrap();
        let again = backends.durable.object(&namespace, &id, true).unwrap();
        assert_eq!(
            again.get(vec!["k".into()]).await.unwrap(),
            [("k".to_owned(), b"v".to_vec())]
        );
        assert!(!state.join("durable-objects").exists());
        object.delete_all().await.unwrap();
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

    /// `durable` over TLS as `sql` has it: a server that takes only TLS
    /// sessions with a client certificate, verified against the test CA;
    /// another CA is refused at start-up, saying which.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn durable_objects_on_postgres_over_tls() {
        let certs = isola_test_services::Certs::generate();
        let pg = isola_test_services::Postgres::start_tls(&certs, true);
        let url = format!("{}?sslmode=verify-full", pg.url());
        let tls = |certs: &isola_test_services::Certs| isola_config::BackendTls {
            ca_file: Some(certs.path("ca.pem")),
            client_cert: Some(certs.path("client.pem")),
            client_key: Some(certs.path("client.key")),
        };
        let on = |tls| BackendsConfig {
            durable: Backend::Postgres {
                url: url.clone(),
                tls,
            },
            ..BackendsConfig::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let backends = crate::Backends::connect(&on(tls(&certs)), dir.path())
            .await
            .unwrap();
        let object = backends
            .durable
            .object("w/C", &format!("{:064x}", 1), false)
            .unwrap();
        object
            .put(vec![("k".into(), b"over tls".to_vec())])
            .await
            .unwrap();
        assert_eq!(
            object.get(vec!["k".into()]).await.unwrap(),
            [("k".to_owned(), b"over tls".to_vec())]
        );

        let other = isola_test_services::Certs::generate();
        let err = crate::Backends::connect(&on(tls(&other)), dir.path())
            .await
            .err()
            .expect("a server certificate another CA signed is refused")
            .to_string();
        assert!(
            err.starts_with(&format!(
                "backends.durable: cannot connect to {}",
                crate::remote::redact(&url)
            )),
            "{err}"
        );
        assert!(
            err.contains("invalid peer certificate: UnknownIssuer"),
            "{err}"
        );
        assert!(
            err.ends_with(&format!(
                "(PostgreSQL TLS: server certificate checked against CA file {}, client \
                 certificate {})",
                other.path("ca.pem").display(),
                other.path("client.pem").display()
            )),
            "{err}"
        );
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
