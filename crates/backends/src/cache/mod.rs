//! The Cache API (`caches.default`, `caches.open(name)`): responses keyed by
//! request URL and `Vary`, fresh for as long as their `Cache-Control` says.
//! What may be stored and for how long is decided here, for every
//! [`CacheStore`] backend: [`memory`] (embedded, an LRU bounded by total
//! size) and [`redis`] (shared by every node).

use std::time::UNIX_EPOCH;

use async_trait::async_trait;

use crate::error::{BindingError, Result};

pub mod memory;
pub mod redis;

#[derive(Debug, Clone, PartialEq)]
pub struct CachedResponse {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: bytes::Bytes,
}

pub type Headers = [(String, Vec<u8>)];

/// The largest body any cache backend stores: Cloudflare's Cache API limit
/// (512 MB). A backend may keep a lower one (the memory cache: its size
/// cap). A body being stored is held in host memory until it is whole, so
/// this also bounds what one `put` holds.
pub const MAX_BODY_BYTES: u64 = 512 << 20;

/// A response being stored: `write` its body, then `finish`. Dropping an
/// upload without finishing it stores nothing.
#[async_trait]
pub trait CacheUpload: Send {
    /// An `Invalid` error once the body is over the backend's limit; the
    /// upload is then dead: nothing of it is ever stored.
    async fn write(&mut self, chunk: bytes::Bytes) -> Result<()>;
    /// Store the response; `Ok(false)` if the backend decided not to keep
    /// it after all (the memory cache: larger than the whole cache).
    async fn finish(self: Box<Self>) -> Result<bool>;
}

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
    /// Start storing a response with this status and these headers, if its
    /// `Cache-Control` allows (`Ok(None)` if not): its body follows, chunk
    /// by chunk. Errors (`Invalid`) for status 206, `Vary: *`.
    async fn begin_put(
        &self,
        scope: &str,
        cache: &str,
        url: &str,
        request_headers: &Headers,
        status: u16,
        headers: Vec<(String, Vec<u8>)>,
    ) -> Result<Option<Box<dyn CacheUpload>>>;
    /// Store a whole response if its `Cache-Control` allows; `Ok(false)` if
    /// not.
    async fn put(
        &self,
        scope: &str,
        cache: &str,
        url: &str,
        request_headers: &Headers,
        response: CachedResponse,
    ) -> Result<bool> {
        let begun = self.begin_put(
            scope,
            cache,
            url,
            request_headers,
            response.status,
            response.headers,
        );
        let Some(mut upload) = begun.await? else {
            return Ok(false);
        };
        upload.write(response.body).await?;
        upload.finish().await
    }
    async fn delete(
        &self,
        scope: &str,
        cache: &str,
        url: &str,
        request_headers: &Headers,
    ) -> Result<bool>;
}

/// Where a [`Buffered`] upload goes once its body is whole.
pub(crate) type Commit =
    Box<dyn FnOnce(Prepared, bytes::Bytes) -> BoxFuture<'static, Result<bool>> + Send>;
type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// An upload that gathers the body in host memory, up to `limit` bytes,
/// then hands the whole response to its backend: every backend stores a
/// body in one piece (a memory entry, a Redis value).
pub(crate) struct Buffered {
    prepared: Prepared,
    body: bytes::BytesMut,
    limit: u64,
    /// Set once the limit is passed: the body is dropped, and nothing is
    /// stored.
    over: bool,
    commit: Option<Commit>,
}

impl Buffered {
    pub(crate) fn boxed(prepared: Prepared, limit: u64, commit: Commit) -> Box<dyn CacheUpload> {
        // A Content-Length within the limit says how much to expect: one
        // allocation instead of a doubling series (the body is host memory).
        let expected = header_str(&prepared.headers, "content-length")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&n| n <= limit)
            .unwrap_or(0);
        Box::new(Buffered {
            prepared,
            body: bytes::BytesMut::with_capacity(expected as usize),
            limit,
            over: false,
            commit: Some(commit),
        })
    }

    fn too_large(&self) -> BindingError {
        BindingError::Invalid(format!(
            "the response body is over the cache's limit of {} bytes; nothing was stored",
            self.limit
        ))
    }
}

#[async_trait]
impl CacheUpload for Buffered {
    async fn write(&mut self, chunk: bytes::Bytes) -> Result<()> {
        if self.over || (self.body.len() + chunk.len()) as u64 > self.limit {
            self.over = true;
            self.body = bytes::BytesMut::new();
            return Err(self.too_large());
        }
        self.body.extend_from_slice(&chunk);
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<bool> {
        if self.over {
            return Err(self.too_large());
        }
        let commit = self.commit.take().expect("finished once");
        let body = std::mem::take(&mut self.body).freeze();
        let prepared = self.prepared;
        commit(prepared, body).await
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

/// A response ready to store: what `begin_put` decided and computed,
/// shared by every cache backend so they all store exactly the same things.
pub(crate) struct Prepared {
    pub vary: Vec<(String, Option<Vec<u8>>)>,
    pub status: u16,
    /// Its headers, less those it must not keep.
    pub headers: Vec<(String, Vec<u8>)>,
    pub initial_age: u64,
    /// Seconds it stays fresh from when it is stored.
    pub remaining: u64,
    /// The size of the entry without its body.
    pub head_bytes: u64,
}

/// The request headers a response's `Vary` names, with their values.
pub(crate) type VaryValues = Vec<(String, Option<Vec<u8>>)>;

impl Prepared {
    /// The response with `body`, and the size of the entry it makes.
    pub(crate) fn with_body(self, body: bytes::Bytes) -> (VaryValues, CachedResponse, u64) {
        let bytes = self.head_bytes + body.len() as u64;
        let response = CachedResponse {
            status: self.status,
            headers: self.headers,
            body,
        };
        (self.vary, response, bytes)
    }
}

/// Decide whether a response with `status` and `headers` may be stored
/// (`Ok(None)`: not storable) and prepare it: headers it must not keep
/// stripped, the request headers its `Vary` names captured, its freshness
/// (`now` in ms).
pub(crate) fn prepare_put(
    scope: &str,
    cache: &str,
    url: &str,
    request_headers: &Headers,
    status: u16,
    mut headers: Vec<(String, Vec<u8>)>,
    now: u64,
) -> Result<Option<Prepared>> {
    if status == 206 {
        return Err(BindingError::Invalid(
            "cannot cache a 206 Partial Content response".into(),
        ));
    }
    let vary = header_str(&headers, "vary")
        .map(|v| field_names(&v))
        .unwrap_or_default();
    if vary.iter().any(|n| n == "*") {
        return Err(BindingError::Invalid(
            "cannot cache a response with Vary: *".into(),
        ));
    }
    let directives =
        parse_cache_control(&header_str(&headers, "cache-control").unwrap_or_default());
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
    if header_value(&headers, "set-cookie").is_some() && !stripped.iter().any(|n| n == "set-cookie")
    {
        return Ok(None);
    }
    let now_secs = (now / 1000) as i64;
    let Some(lifetime) = freshness_lifetime(&directives, &headers, now_secs) else {
        return Ok(None);
    };
    let initial_age = parse_seconds(header_str(&headers, "age").as_deref()) as u64;
    let remaining = lifetime.saturating_sub(initial_age as i64);
    if remaining <= 0 {
        return Ok(None);
    }

    headers.retain(|(name, _)| !stripped.iter().any(|s| name.eq_ignore_ascii_case(s)));
    let vary: Vec<(String, Option<Vec<u8>>)> = vary
        .into_iter()
        .map(|name| {
            let value = header_value(request_headers, &name);
            (name, value)
        })
        .collect();
    let head_bytes = (scope.len() + cache.len() + url.len()) as u64
        + headers
            .iter()
            .map(|(n, v)| (n.len() + v.len()) as u64)
            .sum::<u64>()
        + vary
            .iter()
            .map(|(n, v)| (n.len() + v.as_ref().map_or(0, Vec::len)) as u64)
            .sum::<u64>();
    Ok(Some(Prepared {
        vary,
        status,
        headers,
        initial_age,
        remaining: remaining as u64,
        head_bytes,
    }))
}

/// Whether a variant stored with `vary` answers a request with `request_headers`.
pub(crate) fn vary_matches(vary: &[(String, Option<Vec<u8>>)], request_headers: &Headers) -> bool {
    vary.iter()
        .all(|(name, value)| header_value(request_headers, name).as_ref() == value.as_ref())
}

#[cfg(test)]
mod tests;
