//! The Cache API (`caches.default`, `caches.open(name)`): responses keyed by
//! request URL and `Vary`, fresh for as long as their `Cache-Control` says.
//! Embedded backend: an in-memory LRU bounded by total size.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use lru::LruCache;

use crate::error::{BindingError, Result};
use crate::util::lock;

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
pub struct MemoryCache {
    max_bytes: u64,
    inner: Mutex<Inner>,
    /// Added to the wall clock; only tests move it.
    clock_offset_ms: AtomicU64,
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
            inner: Mutex::new(Inner {
                entries: LruCache::unbounded(),
                total_bytes: 0,
            }),
            clock_offset_ms: AtomicU64::new(0),
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

/// All values of header `name` (case-insensitive), joined by `", "` as
/// HTTP allows for repeated fields; `None` if absent.
pub(crate) fn header_value(headers: &Headers, name: &str) -> Option<Vec<u8>> {
    let mut values = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice());
    let first = values.next()?.to_vec();
    Some(values.fold(first, |mut acc, v| {
        acc.extend_from_slice(b", ");
        acc.extend_from_slice(v);
        acc
    }))
}

fn header_str(headers: &Headers, name: &str) -> Option<String> {
    header_value(headers, name).map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// A parsed `Cache-Control` directive: lowercase name and unquoted value.
#[derive(Debug, PartialEq)]
struct Directive {
    name: String,
    value: Option<String>,
}

/// Parses `Cache-Control` (RFC 9111 §5.2): comma-separated directives,
/// case-insensitive names, values that are tokens or quoted strings. Written
/// by hand because a quoted value may itself hold commas
/// (`private="set-cookie, x-foo"`), which a plain split breaks, and no crate
/// already in the tree parses it.
fn parse_cache_control(value: &str) -> Vec<Directive> {
    let mut directives = Vec::new();
    let mut chars = value.chars().peekable();
    loop {
        // Name: up to '=' or ','.
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            name.push(c);
            chars.next();
        }
        let mut value = None;
        if chars.peek() == Some(&'=') {
            chars.next();
            while chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
                chars.next();
            }
            let mut v = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => v.extend(chars.next()),
                        c => v.push(c),
                    }
                }
                // Skip anything between the closing quote and the comma.
                while chars.peek().is_some_and(|&c| c != ',') {
                    chars.next();
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    v.push(c);
                    chars.next();
                }
                v = v.trim().to_owned();
            }
            value = Some(v);
        }
        let name = name.trim().to_ascii_lowercase();
        if !name.is_empty() {
            directives.push(Directive { name, value });
        }
        if chars.next().is_none() {
            break; // The ',' was consumed, or the input ended.
        }
    }
    directives
}

/// Comma-separated header names (lowercased), e.g. from `Vary` or
/// `private="..."`.
fn field_names(list: &str) -> Vec<String> {
    list.split(',')
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect()
}

fn parse_seconds(value: Option<&str>) -> i64 {
    // A malformed delta-seconds makes the response stale (RFC 9111 §1.2.2).
    value
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(0, |v| v.min(i64::MAX as u64) as i64)
}

fn http_date_secs(value: &str) -> Option<i64> {
    let at = httpdate::parse_http_date(value.trim()).ok()?;
    Some(match at.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    })
}

/// How long the response may be served, in seconds, from its own headers;
/// `None` if they do not say.
fn freshness_lifetime(directives: &[Directive], headers: &Headers, now_secs: i64) -> Option<i64> {
    let directive = |name: &str| directives.iter().find(|d| d.name == name);
    if let Some(d) = directive("s-maxage").or_else(|| directive("max-age")) {
        return Some(parse_seconds(d.value.as_deref()));
    }
    let expires = header_str(headers, "expires")?;
    // An Expires that is not a date means "already expired".
    let Some(expires) = http_date_secs(&expires) else {
        return Some(0);
    };
    let date = header_str(headers, "date")
        .and_then(|d| http_date_secs(&d))
        .unwrap_or(now_secs);
    Some(expires.saturating_sub(date))
}

/// A response ready to store: what `put` decided and computed, shared by
/// every cache backend so they all store exactly the same things.
pub(crate) struct Prepared {
    pub vary: Vec<(String, Option<Vec<u8>>)>,
    pub response: CachedResponse,
    pub initial_age: u64,
    /// Seconds it stays fresh from now.
    pub remaining: u64,
    pub bytes: u64,
}

/// Decide whether `response` may be stored (`Ok(None)`: not storable) and
/// prepare it: headers it must not keep stripped, the request headers its
/// `Vary` names captured, its freshness from now (`now` in ms).
pub(crate) fn prepare_put(
    scope: &str,
    cache: &str,
    url: &str,
    request_headers: &Headers,
    response: CachedResponse,
    now: u64,
) -> Result<Option<Prepared>> {
    if response.status == 206 {
        return Err(BindingError::Invalid(
            "cannot cache a 206 Partial Content response".into(),
        ));
    }
    let vary = header_str(&response.headers, "vary")
        .map(|v| field_names(&v))
        .unwrap_or_default();
    if vary.iter().any(|n| n == "*") {
        return Err(BindingError::Invalid(
            "cannot cache a response with Vary: *".into(),
        ));
    }
    let directives =
        parse_cache_control(&header_str(&response.headers, "cache-control").unwrap_or_default());
    // `private` / `no-cache` with field names only forbid storing those
    // fields (RFC 9111 §5.2.2.4, §5.2.2.7); without, the whole response.
    let mut stripped: Vec<String> = vec!["age".into()];
    for d in &directives {
        match (d.name.as_str(), &d.value) {
            ("no-store", _) => return Ok(None),
            ("private" | "no-cache", None) => return Ok(None),
            ("private" | "no-cache", Some(fields)) => stripped.extend(field_names(fields)),
            _ => {}
        }
    }
    // Like Cloudflare: a cookie-setting response is not cached unless
    // the cookie is marked private (and then it is dropped).
    if header_value(&response.headers, "set-cookie").is_some()
        && !stripped.iter().any(|n| n == "set-cookie")
    {
        return Ok(None);
    }
    let now_secs = (now / 1000) as i64;
    let Some(lifetime) = freshness_lifetime(&directives, &response.headers, now_secs) else {
        return Ok(None);
    };
    let initial_age = parse_seconds(header_str(&response.headers, "age").as_deref()) as u64;
    let remaining = lifetime.saturating_sub(initial_age as i64);
    if remaining <= 0 {
        return Ok(None);
    }

    let mut response = response;
    response
        .headers
        .retain(|(name, _)| !stripped.iter().any(|s| name.eq_ignore_ascii_case(s)));
    let vary: Vec<(String, Option<Vec<u8>>)> = vary
        .into_iter()
        .map(|name| {
            let value = header_value(request_headers, &name);
            (name, value)
        })
        .collect();
    let bytes = (scope.len() + cache.len() + url.len() + response.body.len()) as u64
        + response
            .headers
            .iter()
            .map(|(n, v)| (n.len() + v.len()) as u64)
            .sum::<u64>()
        + vary
            .iter()
            .map(|(n, v)| (n.len() + v.as_ref().map_or(0, Vec::len)) as u64)
            .sum::<u64>();
    Ok(Some(Prepared {
        vary,
        response,
        initial_age,
        remaining: remaining as u64,
        bytes,
    }))
}

/// Whether a variant stored with `vary` answers a request with `request_headers`.
pub(crate) fn vary_matches(vary: &[(String, Option<Vec<u8>>)], request_headers: &Headers) -> bool {
    vary.iter()
        .all(|(name, value)| header_value(request_headers, name).as_ref() == value.as_ref())
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

    async fn put(
        &self,
        scope: &str,
        cache: &str,
        url: &str,
        request_headers: &Headers,
        response: CachedResponse,
    ) -> Result<bool> {
        let now = self.now_ms();
        let Some(Prepared {
            vary,
            response,
            initial_age,
            remaining,
            bytes,
        }) = prepare_put(scope, cache, url, request_headers, response, now)?
        else {
            return Ok(false);
        };
        if bytes > self.max_bytes {
            return Ok(false);
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
        let key = key(scope, cache, url);
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
        Ok(true)
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

    /// A cache under test: the memory LRU or Redis (a worker scope of its
    /// own per test on the shared server).
    struct Fixture {
        cache: std::sync::Arc<dyn CacheStore>,
        scope: String,
    }

    impl Fixture {
        fn embedded() -> Self {
            Fixture {
                cache: std::sync::Arc::new(MemoryCache::new(1 << 20)),
                scope: "w".into(),
            }
        }

        async fn distributed() -> Self {
            let url = crate::test_services::shared_redis().url();
            let conn = crate::remote::redis_connection(&url).await.unwrap();
            Fixture {
                cache: std::sync::Arc::new(crate::redis_cache::RedisCache::new(conn)),
                scope: crate::test_services::unique("w"),
            }
        }

        async fn put(&self, req: &[(&str, &str)], r: CachedResponse) -> Result<bool> {
            self.cache
                .put(&self.scope, "default", URL, &h(req), r)
                .await
        }

        async fn get(&self, req: &[(&str, &str)]) -> Option<CachedResponse> {
            self.cache
                .match_(&self.scope, "default", URL, &h(req))
                .await
                .unwrap()
        }
    }

    crate::for_each_backend!(
        fresh_responses_are_served_with_age_until_stale,
        what_is_refused,
        variants_follow_vary,
    );

    async fn fresh_responses_are_served_with_age_until_stale(f: &Fixture) {
        let r = resp(
            &[
                ("Cache-Control", "max-age=2"),
                ("Content-Type", "text/plain"),
            ],
            "hello",
        );
        assert!(f.put(&[], r.clone()).await.unwrap());
        let hit = f.get(&[]).await.unwrap();
        assert_eq!(hit.status, 200);
        assert_eq!(hit.body, "hello");
        assert_eq!(
            header_str(&hit.headers, "content-type").unwrap(),
            "text/plain"
        );
        assert_eq!(age(&hit), "0");
        // Another scope or cache name never sees it.
        let other = format!("{}-other", f.scope);
        assert!(
            f.cache
                .match_(&other, "default", URL, &[])
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            f.cache
                .match_(&f.scope, "named", URL, &[])
                .await
                .unwrap()
                .is_none()
        );
        // An Age it came with counts.
        let aged = resp(&[("cache-control", "max-age=100"), ("age", "90")], "old");
        assert!(f.put(&[("x", "1")], aged).await.unwrap());
        assert_eq!(age(&f.get(&[]).await.unwrap()), "90");
        assert!(f.cache.delete(&f.scope, "default", URL, &[]).await.unwrap());
        assert!(!f.cache.delete(&f.scope, "default", URL, &[]).await.unwrap());
        assert_eq!(f.get(&[]).await, None);
        tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
        let short = resp(&[("cache-control", "max-age=1")], "short");
        assert!(f.put(&[], short).await.unwrap());
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        assert_eq!(f.get(&[]).await, None, "stale after its max-age");
    }

    async fn what_is_refused(f: &Fixture) {
        let mut partial = resp(&[("cache-control", "max-age=60")], "");
        partial.status = 206;
        assert!(matches!(
            f.put(&[], partial).await,
            Err(BindingError::Invalid(_))
        ));
        let star = resp(&[("cache-control", "max-age=60"), ("vary", "*")], "");
        assert!(matches!(
            f.put(&[], star).await,
            Err(BindingError::Invalid(_))
        ));
        for headers in [
            vec![("cache-control", "max-age=60, no-store")],
            vec![("cache-control", "max-age=60, private")],
            vec![("cache-control", "max-age=60"), ("set-cookie", "a=b")],
            vec![],
            vec![("cache-control", "max-age=0")],
        ] {
            assert!(
                !f.put(&[], resp(&headers, "")).await.unwrap(),
                "{headers:?}"
            );
        }
        assert!(f.get(&[]).await.is_none());
        let cookie = resp(
            &[
                ("cache-control", "max-age=60, private=\"Set-Cookie\""),
                ("Set-Cookie", "a=b"),
                ("x-kept", "1"),
            ],
            "body",
        );
        assert!(f.put(&[], cookie).await.unwrap());
        let hit = f.get(&[]).await.unwrap();
        assert!(header_value(&hit.headers, "set-cookie").is_none());
        assert!(header_value(&hit.headers, "x-kept").is_some());
    }

    async fn variants_follow_vary(f: &Fixture) {
        let vary = |body: &str| {
            resp(
                &[
                    ("cache-control", "max-age=60"),
                    ("Vary", "accept-encoding, X-Lang"),
                ],
                body,
            )
        };
        f.put(
            &[("Accept-Encoding", "gzip"), ("x-lang", "en")],
            vary("gzip-en"),
        )
        .await
        .unwrap();
        f.put(
            &[("accept-encoding", "br"), ("x-lang", "en")],
            vary("br-en"),
        )
        .await
        .unwrap();
        f.put(&[("accept-encoding", "br")], vary("br-none"))
            .await
            .unwrap();
        let body = |r: Option<CachedResponse>| r.map(|r| r.body);
        assert_eq!(
            body(
                f.get(&[("ACCEPT-ENCODING", "gzip"), ("X-LANG", "en")])
                    .await
            )
            .unwrap(),
            "gzip-en"
        );
        assert_eq!(
            body(f.get(&[("x-lang", "en"), ("accept-encoding", "br")]).await).unwrap(),
            "br-en"
        );
        assert_eq!(
            body(f.get(&[("accept-encoding", "br")]).await).unwrap(),
            "br-none"
        );
        assert_eq!(body(f.get(&[("accept-encoding", "zstd")]).await), None);
        f.put(&[("accept-encoding", "br")], vary("br-none-2"))
            .await
            .unwrap();
        assert_eq!(
            body(f.get(&[("accept-encoding", "br")]).await).unwrap(),
            "br-none-2"
        );
        assert_eq!(
            body(
                f.get(&[("accept-encoding", "gzip"), ("x-lang", "en")])
                    .await
            )
            .unwrap(),
            "gzip-en",
            "replacing one variant keeps the others"
        );
        assert!(f.cache.delete(&f.scope, "default", URL, &[]).await.unwrap());
        assert_eq!(body(f.get(&[("accept-encoding", "br")]).await), None);
    }

    #[test]
    fn cache_control_parsing() {
        let d = parse_cache_control(
            r#"Public, MAX-AGE = 60 ,private="Set-Cookie, X-Foo", no-cache="a\"b",, s-maxage=10"#,
        );
        let pairs: Vec<_> = d
            .iter()
            .map(|d| (d.name.as_str(), d.value.as_deref()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("public", None),
                ("max-age", Some("60")),
                ("private", Some("Set-Cookie, X-Foo")),
                ("no-cache", Some("a\"b")),
                ("s-maxage", Some("10")),
            ]
        );
        assert!(parse_cache_control("").is_empty());
        assert_eq!(parse_seconds(Some(" 5 ")), 5);
        assert_eq!(parse_seconds(Some("-1")), 0);
        assert_eq!(parse_seconds(Some("soon")), 0);
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

        // Larger than the whole cache: not stored, nothing evicted.
        let huge = resp(&[("cache-control", "max-age=60")], &"y".repeat(4000));
        assert!(
            !c.put("w", "default", "https://e/huge", &[], huge)
                .await
                .unwrap()
        );
        assert!(present(1) && present(3) && present(4));
    }
}
