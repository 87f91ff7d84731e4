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
pub mod kv;
pub mod sql;

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
}

impl Backends {
    /// The embedded backends, all under `state_dir`: `kv.sqlite`,
    /// `d1/<database>.sqlite`, `r2/<bucket>/`, `analytics.sqlite`, and an
    /// in-memory cache of at most `cache_max_bytes`.
    pub fn embedded(state_dir: &Path, cache_max_bytes: u64) -> Result<Backends> {
        Ok(Backends {
            kv: Arc::new(kv::SqliteKv::open(&state_dir.join("kv.sqlite"))?),
            sql: Arc::new(sql::SqliteSql::new(&state_dir.join("d1"))?),
            blob: Arc::new(blob::FsBlobStore::new(&state_dir.join("r2"))?),
            cache: Arc::new(cache::MemoryCache::new(cache_max_bytes)),
            analytics: Arc::new(analytics::SqliteAnalytics::open(
                &state_dir.join("analytics.sqlite"),
            )?),
        })
    }
}
