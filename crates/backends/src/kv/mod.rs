//! Workers KV: namespaces of keys with values up to 25 MiB, metadata and
//! expiry. [`KvNamespace`] enforces Workers' limits and owns the list
//! cursor, in front of the [`KvStore`] backends: [`sqlite`] (embedded, one
//! file) and [`redis`] (shared by every node).

use std::sync::Arc;

use async_trait::async_trait;

use crate::error::{BindingError, Result};
use crate::util::{hex, unhex, unix_now};

pub mod redis;
pub mod sqlite;

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

/// One page of keys as a backend lists it: at most the limit asked for,
/// and whether more follow. [`KvNamespace::list`] makes the cursor.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyPage {
    pub keys: Vec<KeyInfo>,
    pub more: bool,
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
    /// Keys starting with `prefix` in byte order, strictly after `after`
    /// (the last key of the previous page) when given, at most `limit`
    /// (already clamped).
    async fn list(
        &self,
        namespace: &str,
        prefix: &str,
        limit: u32,
        after: Option<&str>,
    ) -> Result<KeyPage>;
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
        let after = match options.cursor.as_deref().filter(|c| !c.is_empty()) {
            Some(cursor) => Some(decode_cursor(cursor)?),
            None => None,
        };
        let page = self
            .store
            .list(&self.namespace, prefix, limit, after.as_deref())
            .await?;
        let cursor = match (page.more, page.keys.last()) {
            (true, Some(last)) => Some(encode_cursor(&last.name)),
            _ => None,
        };
        Ok(ListResult {
            keys: page.keys,
            list_complete: !page.more,
            cursor,
        })
    }
}

/// A list cursor is the hex of the last key returned; the next page starts
/// strictly after it.
fn encode_cursor(last_key: &str) -> String {
    hex(last_key.as_bytes())
}

/// The key a cursor from [`encode_cursor`] names.
fn decode_cursor(cursor: &str) -> Result<String> {
    unhex(cursor)
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| invalid(format!("KV list cursor {cursor:?} is not valid")))
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

#[cfg(test)]
mod tests;
