//! The embedded cache: every worker's responses in one in-memory LRU.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use lru::LruCache;

use super::{
    Buffered, CacheStore, CacheUpload, CachedResponse, Headers, MAX_BODY_BYTES, Prepared,
    prepare_put, vary_matches,
};
use crate::error::Result;
use crate::util::lock;

/// The embedded cache: every worker's responses in one in-memory LRU whose
/// total size (bodies, headers, URLs) stays at most `max_bytes`.
///
/// `lru::LruCache` gives O(1) lookups that also mark an entry as recently
/// used and O(1) removal of the least recently used one; hand-rolling that
/// needs an intrusive linked list (unsafe, or index juggling). It is used
/// unbounded in count because the bound here is bytes, enforced by
/// [`MemoryCache::evict`].
///
/// Freshness: `s-maxage`, else `max-age`, else `Expires` minus `Date` (or
/// minus now without a `Date`), less any `Age` the response already has. A
/// response with none of these is not stored: there is no heuristic
/// freshness, so nothing is kept that the origin did not ask to keep.
///
/// A body being stored is gathered in host memory first, up to the cache's
/// size cap (and [`MAX_BODY_BYTES`]); past that the `put` fails and
/// nothing is stored. Clones share the cache (an upload holds one).
#[derive(Clone)]
pub struct MemoryCache {
    max_bytes: u64,
    inner: Arc<Mutex<Inner>>,
    /// Added to the wall clock; only tests move it.
    clock_offset_ms: Arc<AtomicU64>,
}

struct Inner {
    entries: LruCache<Key, Entry>,
    total_bytes: u64,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    scope: String,
    cache: String,
    url: String,
}

#[derive(Default)]
struct Entry {
    variants: Vec<Variant>,
    bytes: u64,
}

struct Variant {
    /// The request headers the response's `Vary` names (lowercase) and
    /// their values in the request that stored it (`None`: absent).
    vary: Vec<(String, Option<Vec<u8>>)>,
    response: CachedResponse,
    stored_at_ms: u64,
    fresh_until_ms: u64,
    /// The `Age` the response already had when stored, in seconds.
    initial_age: u64,
    bytes: u64,
}

impl Variant {
    fn matches(&self, request_headers: &Headers) -> bool {
        vary_matches(&self.vary, request_headers)
    }
}

impl MemoryCache {
    pub fn new(max_bytes: u64) -> Self {
        MemoryCache {
            max_bytes,
            inner: Arc::new(Mutex::new(Inner {
                entries: LruCache::unbounded(),
                total_bytes: 0,
            })),
            clock_offset_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn now_ms(&self) -> u64 {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        wall + self.clock_offset_ms.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    fn advance(&self, by: std::time::Duration) {
        self.clock_offset_ms
            .fetch_add(by.as_millis() as u64, Ordering::Relaxed);
    }

    /// Store a whole response under `key`: it replaces the variant the same
    /// request headers matched, and the least recently used entries go
    /// until the total fits. False if it is larger than the whole cache.
    fn store(
        &self,
        key: Key,
        request_headers: &Headers,
        prepared: Prepared,
        body: bytes::Bytes,
    ) -> bool {
        let now = self.now_ms();
        let (initial_age, remaining) = (prepared.initial_age, prepared.remaining);
        let (vary, response, bytes) = prepared.with_body(body);
        if bytes > self.max_bytes {
            return false;
        }
        let variant = Variant {
            vary,
            response,
            stored_at_ms: now,
            fresh_until_ms: now.saturating_add(remaining.saturating_mul(1000)),
            initial_age,
            bytes,
        };

        let mut inner = lock(&self.inner);
        let mut entry = inner.entries.pop(&key).unwrap_or_default();
        inner.total_bytes -= entry.bytes;
        // The new response replaces what the same request matched before,
        // and stale variants go while we are here.
        entry
            .variants
            .retain(|v| v.fresh_until_ms > now && !v.matches(request_headers));
        entry.variants.push(variant);
        // Keep one URL's variants within the budget on their own: the
        // oldest go first.
        let mut bytes: u64 = entry.variants.iter().map(|v| v.bytes).sum();
        while bytes > self.max_bytes {
            bytes -= entry.variants.remove(0).bytes;
        }
        entry.bytes = bytes;
        inner.total_bytes += bytes;
        inner.entries.put(key, entry);
        self.evict(&mut inner);
        true
    }

    /// Drop least recently used entries until the total fits.
    fn evict(&self, inner: &mut Inner) {
        while inner.total_bytes > self.max_bytes {
            match inner.entries.pop_lru() {
                Some((_, entry)) => inner.total_bytes -= entry.bytes,
                None => break,
            }
        }
    }
}

fn key(scope: &str, cache: &str, url: &str) -> Key {
    Key {
        scope: scope.into(),
        cache: cache.into(),
        url: url.into(),
    }
}

#[async_trait]
impl CacheStore for MemoryCache {
    async fn match_(
        &self,
        scope: &str,
        cache: &str,
        url: &str,
        request_headers: &Headers,
    ) -> Result<Option<CachedResponse>> {
        let now = self.now_ms();
        let key = key(scope, cache, url);
        let mut inner = lock(&self.inner);
        let Some(entry) = inner.entries.get_mut(&key) else {
            return Ok(None);
        };
        // Forget stale variants on the way.
        let before = entry.bytes;
        entry.variants.retain(|v| v.fresh_until_ms > now);
        entry.bytes = entry.variants.iter().map(|v| v.bytes).sum();
        let freed = before - entry.bytes;
        let found = entry
            .variants
            .iter()
            .find(|v| v.matches(request_headers))
            .map(|v| {
                let mut response = v.response.clone();
                let age = v.initial_age + now.saturating_sub(v.stored_at_ms) / 1000;
                response
                    .headers
                    .push(("age".to_owned(), age.to_string().into_bytes()));
                response
            });
        let empty = entry.variants.is_empty();
        inner.total_bytes -= freed;
        if empty {
            inner.entries.pop(&key);
        }
        Ok(found)
    }

    async fn begin_put(
        &self,
        scope: &str,
        cache: &str,
        url: &str,
        request_headers: &Headers,
        status: u16,
        headers: Vec<(String, Vec<u8>)>,
    ) -> Result<Option<Box<dyn CacheUpload>>> {
        let prepared = prepare_put(
            scope,
            cache,
            url,
            request_headers,
            status,
            headers,
            self.now_ms(),
        )?;
        let Some(prepared) = prepared else {
            return Ok(None);
        };
        let limit = self
            .max_bytes
            .saturating_sub(prepared.head_bytes)
            .min(MAX_BODY_BYTES);
        let this = self.clone();
        let key = key(scope, cache, url);
        let request_headers = request_headers.to_vec();
        Ok(Some(Buffered::boxed(
            prepared,
            limit,
            Box::new(move |prepared, body| {
                Box::pin(async move { Ok(this.store(key, &request_headers, prepared, body)) })
            }),
        )))
    }

    async fn delete(
        &self,
        scope: &str,
        cache: &str,
        url: &str,
        _request_headers: &Headers,
    ) -> Result<bool> {
        let mut inner = lock(&self.inner);
        match inner.entries.pop(&key(scope, cache, url)) {
            Some(entry) => {
                inner.total_bytes -= entry.bytes;
                Ok(!entry.variants.is_empty())
            }
            None => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {

    use std::time::Duration;

    use super::*;
    use crate::cache::{header_str, header_value};
    use crate::error::BindingError;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    fn resp(headers: &[(&str, &str)], body: &str) -> CachedResponse {
        CachedResponse {
            status: 200,
            headers: h(headers),
            body: bytes::Bytes::from(body.to_owned()),
        }
    }

    const URL: &str = "https://example.com/a";

    async fn put(c: &MemoryCache, req: &[(&str, &str)], r: CachedResponse) -> Result<bool> {
        c.put("w", "default", URL, &h(req), r).await
    }

    async fn get(c: &MemoryCache, req: &[(&str, &str)]) -> Option<CachedResponse> {
        c.match_("w", "default", URL, &h(req)).await.unwrap()
    }

    fn age(r: &CachedResponse) -> String {
        let v = header_value(&r.headers, "age").unwrap();
        String::from_utf8(v).unwrap()
    }

    #[tokio::test]
    async fn stores_fresh_responses_and_adds_age() {
        let c = MemoryCache::new(1 << 20);
        let r = resp(
            &[
                ("Cache-Control", "max-age=60"),
                ("Content-Type", "text/plain"),
            ],
            "hello",
        );
        assert!(put(&c, &[], r.clone()).await.unwrap());
        let hit = get(&c, &[]).await.unwrap();
        assert_eq!(hit.status, 200);
        assert_eq!(hit.body, "hello");
        assert_eq!(
            header_str(&hit.headers, "content-type").unwrap(),
            "text/plain"
        );
        assert_eq!(age(&hit), "0");
        c.advance(Duration::from_secs(30));
        assert_eq!(age(&get(&c, &[]).await.unwrap()), "30");
        c.advance(Duration::from_secs(31));
        assert_eq!(get(&c, &[]).await, None, "stale after 60 s");
        assert_eq!(lock(&c.inner).total_bytes, 0, "stale entry dropped");

        // Another scope or cache name never sees it.
        assert!(put(&c, &[], r).await.unwrap());
        assert!(
            c.match_("other", "default", URL, &[])
                .await
                .unwrap()
                .is_none()
        );
        assert!(c.match_("w", "named", URL, &[]).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn freshness_sources() {
        let c = MemoryCache::new(1 << 20);
        // s-maxage wins over max-age.
        put(
            &c,
            &[],
            resp(&[("cache-control", "max-age=1000, s-maxage=10")], ""),
        )
        .await
        .unwrap();
        c.advance(Duration::from_secs(11));
        assert!(get(&c, &[]).await.is_none());
        // An Age the response already had counts.
        put(
            &c,
            &[],
            resp(&[("cache-control", "max-age=100"), ("age", "90")], ""),
        )
        .await
        .unwrap();
        assert_eq!(age(&get(&c, &[]).await.unwrap()), "90");
        c.advance(Duration::from_secs(11));
        assert!(get(&c, &[]).await.is_none());
        // Expires minus Date.
        let date = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let r = resp(
            &[
                ("date", &httpdate::fmt_http_date(date)),
                (
                    "expires",
                    &httpdate::fmt_http_date(date + Duration::from_secs(20)),
                ),
            ],
            "",
        );
        assert!(put(&c, &[], r).await.unwrap());
        c.advance(Duration::from_secs(19));
        assert!(get(&c, &[]).await.is_some());
        c.advance(Duration::from_secs(2));
        assert!(get(&c, &[]).await.is_none());
        // Expires without Date is measured from now.
        let in_a_minute = SystemTime::UNIX_EPOCH + Duration::from_millis(c.now_ms() + 60_000);
        let r = resp(&[("expires", &httpdate::fmt_http_date(in_a_minute))], "");
        assert!(put(&c, &[], r).await.unwrap());
        assert!(get(&c, &[]).await.is_some());
        // Not storable: nothing says how long, zero, past, or garbage.
        for headers in [
            vec![],
            vec![("cache-control", "public")],
            vec![("cache-control", "max-age=0")],
            vec![("cache-control", "max-age=nope")],
            vec![("expires", "Thu, 01 Jan 1970 00:00:00 GMT")],
            vec![("expires", "0")],
            vec![("cache-control", "max-age=10"), ("age", "10")],
        ] {
            assert!(
                !put(&c, &[], resp(&headers, "")).await.unwrap(),
                "{headers:?}"
            );
        }
    }

    #[tokio::test]
    async fn refusals() {
        let c = MemoryCache::new(1 << 20);
        let mut partial = resp(&[("cache-control", "max-age=60")], "");
        partial.status = 206;
        assert!(matches!(
            put(&c, &[], partial).await,
            Err(BindingError::Invalid(_))
        ));
        let star = resp(
            &[("cache-control", "max-age=60"), ("vary", "Accept, *")],
            "",
        );
        assert!(matches!(
            put(&c, &[], star).await,
            Err(BindingError::Invalid(_))
        ));
        for cc in [
            "max-age=60, no-store",
            "max-age=60, Private",
            "no-cache, max-age=60",
        ] {
            assert!(
                !put(&c, &[], resp(&[("Cache-Control", cc)], ""))
                    .await
                    .unwrap(),
                "{cc}"
            );
        }
        let cookie = resp(
            &[("cache-control", "max-age=60"), ("set-cookie", "a=b")],
            "",
        );
        assert!(!put(&c, &[], cookie).await.unwrap());
        assert!(get(&c, &[]).await.is_none());

        // A cookie marked private is dropped and the rest is stored.
        let cookie = resp(
            &[
                ("cache-control", "max-age=60, private=\"Set-Cookie\""),
                ("Set-Cookie", "a=b"),
                ("x-kept", "1"),
            ],
            "body",
        );
        assert!(put(&c, &[], cookie).await.unwrap());
        let hit = get(&c, &[]).await.unwrap();
        assert!(header_value(&hit.headers, "set-cookie").is_none());
        assert!(header_value(&hit.headers, "x-kept").is_some());
    }

    #[tokio::test]
    async fn vary_selects_the_variant() {
        let c = MemoryCache::new(1 << 20);
        let vary = |body: &str| {
            resp(
                &[
                    ("cache-control", "max-age=60"),
                    ("Vary", "accept-encoding, X-Lang"),
                ],
                body,
            )
        };
        put(
            &c,
            &[("Accept-Encoding", "gzip"), ("x-lang", "en")],
            vary("gzip-en"),
        )
        .await
        .unwrap();
        put(
            &c,
            &[("accept-encoding", "br"), ("x-lang", "en")],
            vary("br-en"),
        )
        .await
        .unwrap();
        put(&c, &[("accept-encoding", "br")], vary("br-none"))
            .await
            .unwrap();
        let body = |r: Option<CachedResponse>| r.map(|r| r.body);
        assert_eq!(
            body(get(&c, &[("ACCEPT-ENCODING", "gzip"), ("X-LANG", "en")]).await).unwrap(),
            "gzip-en"
        );
        assert_eq!(
            body(get(&c, &[("x-lang", "en"), ("accept-encoding", "br")]).await).unwrap(),
            "br-en"
        );
        assert_eq!(
            body(get(&c, &[("accept-encoding", "br")]).await).unwrap(),
            "br-none"
        );
        assert_eq!(body(get(&c, &[("accept-encoding", "zstd")]).await), None);
        // Same request again: replaces, does not add.
        put(&c, &[("accept-encoding", "br")], vary("br-none-2"))
            .await
            .unwrap();
        assert_eq!(
            body(get(&c, &[("accept-encoding", "br")]).await).unwrap(),
            "br-none-2"
        );
        assert_eq!(
            lock(&c.inner)
                .entries
                .peek(&key("w", "default", URL))
                .unwrap()
                .variants
                .len(),
            3
        );

        assert!(c.delete("w", "default", URL, &[]).await.unwrap());
        assert!(!c.delete("w", "default", URL, &[]).await.unwrap());
        assert_eq!(body(get(&c, &[("accept-encoding", "br")]).await), None);
        assert_eq!(lock(&c.inner).total_bytes, 0);
    }

    #[tokio::test]
    async fn evicts_least_recently_used_within_the_byte_budget() {
        let body = "x".repeat(1000);
        let size = |url: &str| {
            ("w".len()
                + "default".len()
                + url.len()
                + body.len()
                + "cache-control".len()
                + "max-age=60".len()) as u64
        };
        let c = MemoryCache::new(size("https://e/1") * 3);
        let r = resp(&[("cache-control", "max-age=60")], &body);
        for i in 1..=3 {
            assert!(
                c.put("w", "default", &format!("https://e/{i}"), &[], r.clone())
                    .await
                    .unwrap()
            );
        }
        assert_eq!(lock(&c.inner).total_bytes, size("https://e/1") * 3);
        // Touch 1, so 2 is the least recently used when 4 arrives.
        assert!(
            c.match_("w", "default", "https://e/1", &[])
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            c.put("w", "default", "https://e/4", &[], r.clone())
                .await
                .unwrap()
        );
        let present = |i| {
            let url = format!("https://e/{i}");
            let inner = lock(&c.inner);
            inner.entries.peek(&key("w", "default", &url)).is_some()
        };
        assert!(present(1) && !present(2) && present(3) && present(4));
        assert!(lock(&c.inner).total_bytes <= c.max_bytes);

        // Larger than the whole cache: refused, nothing evicted.
        let huge = resp(&[("cache-control", "max-age=60")], &"y".repeat(4000));
        assert!(matches!(
            c.put("w", "default", "https://e/huge", &[], huge).await,
            Err(BindingError::Invalid(_))
        ));
        assert!(present(1) && present(3) && present(4));
    }
}
