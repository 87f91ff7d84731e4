//! The storage a worker reaches through `env`: one module per kind (KV,
//! SQL, blob, cache, analytics, queues, and the cron leases), each with a
//! trait, the embedded backend that needs no external service and the
//! distributed one (Redis, PostgreSQL, S3).
//!
//! Limits and validation that Workers documents (key sizes, value sizes,
//! bucket key rules) live in each kind's `mod.rs`, in front of its trait,
//! so every backend enforces them identically. What the backends of one
//! side share is in [`embedded`] and [`remote`]; [`connect`] picks and
//! opens them.

pub mod analytics;
pub mod blob;
pub mod cache;
pub mod connect;
pub mod durable;
pub mod embedded;
pub mod error;
pub mod kv;
pub mod lease;
pub mod queue;
pub mod remote;
pub mod sql;
#[cfg(test)]
mod tls_tests;
mod util;

use std::sync::Arc;

pub use error::{BindingError, Result};

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
    /// Durable Object storage: by default one SQLite database per object,
    /// on this node; with `[backends] durable = { type = "postgres" }` a
    /// schema per object in one PostgreSQL database that several nodes
    /// share, a `[cluster]` owning each object on one node at a time.
    pub durable: Arc<dyn durable::DurableStore>,
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
