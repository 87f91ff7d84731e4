//! Workers KV: namespaces of keys with values up to 25 MiB, metadata and
//! expiry. Embedded backend: one SQLite file.

use std::sync::Arc;

use async_trait::async_trait;

use crate::{BindingError, Result};

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
        todo!()
    }
    pub async fn get(&self, key: &str) -> Result<Option<KvValue>> {
        todo!()
    }
    pub async fn put(&self, key: &str, value: Vec<u8>, options: PutOptions) -> Result<()> {
        todo!()
    }
    pub async fn delete(&self, key: &str) -> Result<()> {
        todo!()
    }
    pub async fn list(&self, options: ListOptions) -> Result<ListResult> {
        todo!()
    }
}

/// The embedded backend: `kv.sqlite`, WAL mode, one table for all namespaces.
pub struct SqliteKv {}

impl SqliteKv {
    pub fn open(path: &std::path::Path) -> Result<Self> {
        todo!()
    }
}
