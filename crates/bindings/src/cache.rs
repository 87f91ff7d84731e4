//! The Cache API (`caches.default`, `caches.open(name)`): responses keyed by
//! request URL and `Vary`, fresh for as long as their `Cache-Control` says.
//! Embedded backend: an in-memory LRU bounded by total size.

use async_trait::async_trait;

use crate::Result;

#[derive(Debug, Clone, PartialEq)]
pub struct CachedResponse {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: bytes::Bytes,
}

pub type Headers = [(String, Vec<u8>)];

/// A cache backend. `scope` separates workers (one worker cannot read or
/// poison another's cache); `cache` is the cache name (`default`).
#[async_trait]
pub trait CacheStore: Send + Sync {
    /// The fresh response stored for `url` whose `Vary` headers match
    /// `request_headers`.
    async fn match_(
        &self,
        scope: &str,
        cache: &str,
        url: &str,
        request_headers: &Headers,
    ) -> Result<Option<CachedResponse>>;
    /// Store the response if its `Cache-Control` allows; `Ok(false)` if not.
    /// Errors (`Invalid`) for status 206, `Vary: *`.
    async fn put(
        &self,
        scope: &str,
        cache: &str,
        url: &str,
        request_headers: &Headers,
        response: CachedResponse,
    ) -> Result<bool>;
    async fn delete(
        &self,
        scope: &str,
        cache: &str,
        url: &str,
        request_headers: &Headers,
    ) -> Result<bool>;
}

pub struct MemoryCache {}

impl MemoryCache {
    pub fn new(max_bytes: u64) -> Self {
        todo!()
    }
}
