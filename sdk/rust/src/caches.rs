//! The Cache API: `caches.default` and `caches.open(name)`, kept per worker.
//!
//! ```ignore
//! use isola_sdk::caches;
//!
//! let cache = caches::default()?;
//! if let Some(hit) = cache.match_(&req).await? {
//!     return Ok(hit);
//! }
//! let response = Response::text("expensive").with_header("cache-control", "max-age=60");
//! cache.put(&req, &response).await?;
//! Ok(response)
//! ```
//!
//! Entries are keyed by URL (GET only) and, where the response says `Vary`,
//! by the named request headers. A response is stored only when its
//! `Cache-Control` allows (`max-age` / `s-maxage`, not `no-store` or
//! `private`). Every call counts against the request's subrequest budget.
//!
//! Bodies stream: a hit's body is read from the host chunk by chunk as the
//! response is sent, and [`Cache::put_stream`] stores a streamed response
//! chunk by chunk, so neither needs the whole body in the guest's memory.
//! The host holds a body being stored, up to 512 MiB (less with the memory
//! cache: its size); past that the put fails and nothing is stored.

use std::fmt;

use crate::bindings::isola::worker::cache as wit;
use crate::error::check;
use crate::{
    HeaderMap, HeaderName, HeaderValue, OutboundRequest, Request, Response, Result, StatusCode,
};

/// The worker's default cache: `caches.default`.
pub fn default() -> Result<Cache> {
    open("default")
}

/// The worker's cache called `name`: `caches.open(name)`. Each name is a
/// separate cache; `"default"` is [`default`].
pub fn open(name: &str) -> Result<Cache> {
    Ok(Cache {
        cache: check(wit::Cache::open(name))?,
    })
}

/// A cache; see [`default`] and [`open`].
pub struct Cache {
    cache: wit::Cache,
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache").finish_non_exhaustive()
    }
}

/// How much of a body one host call moves.
const CHUNK: u32 = 64 * 1024;

impl Cache {
    /// The fresh response stored for `request` (a [`Request`], whose
    /// headers count for `Vary`, or a URL), if any. Its body streams from
    /// the cache as the response is sent.
    pub async fn match_(&self, request: impl CacheKey) -> Result<Option<Response>> {
        let (url, headers) = request.cache_key();
        let Some((head, body)) = check(self.cache.match_(&url, &headers))? else {
            return Ok(None);
        };
        let chunks = std::iter::from_fn(move || match check(body.read(CHUNK)) {
            Ok(chunk) if chunk.is_empty() => None,
            Ok(chunk) => Some(Ok(chunk)),
            Err(e) => Some(Err(e)),
        });
        response_from_wit(head, Response::try_stream(chunks)).map(Some)
    }

    /// Store `response` for `request` as its `Cache-Control` allows; `false`
    /// when it may not be stored (`no-store`, `private`, no freshness). The
    /// response must have a buffered body (for one made by
    /// [`Response::stream`], use [`Cache::put_stream`]); a 206 or `Vary: *`
    /// is an [`Invalid`](crate::BindingError::Invalid) error, and so is a
    /// body over the cache's limit.
    pub async fn put(&self, request: impl CacheKey, response: &Response) -> Result<bool> {
        let (url, headers) = request.cache_key();
        let Some(body) = response.body() else {
            crate::bail!("cache put {url}: a streamed response needs Cache::put_stream");
        };
        let Some(upload) = self.begin(&url, &headers, response)? else {
            return Ok(false);
        };
        for chunk in body.chunks(CHUNK as usize) {
            check(upload.write(chunk))?;
        }
        check(wit::Upload::finish(upload))
    }

    /// Like [`Cache::put`], for any response, which it consumes: a streamed
    /// body ([`Response::stream`]) is stored chunk by chunk as it is made,
    /// never whole in memory. `false` (and the body not made) when it may
    /// not be stored.
    pub async fn put_stream(&self, request: impl CacheKey, response: Response) -> Result<bool> {
        let (url, headers) = request.cache_key();
        let Some(upload) = self.begin(&url, &headers, &response)? else {
            return Ok(false);
        };
        for chunk in response.into_chunks() {
            let chunk = chunk?;
            for piece in chunk.chunks(CHUNK as usize) {
                check(upload.write(piece))?;
            }
        }
        check(wit::Upload::finish(upload))
    }

    /// The upload of `response`'s body, if it may be stored.
    fn begin(
        &self,
        url: &str,
        headers: &[(String, Vec<u8>)],
        response: &Response,
    ) -> Result<Option<wit::Upload>> {
        let head = wit::Response {
            status: response.status().as_u16(),
            headers: wit_headers(response.headers()),
        };
        check(self.cache.put(url, headers, &head))
    }

    /// Remove what is stored for `request`; `true` when something was.
    pub async fn delete(&self, request: impl CacheKey) -> Result<bool> {
        let (url, headers) = request.cache_key();
        check(self.cache.delete(&url, &headers))
    }
}

/// What a cache entry is looked up by: a URL, or a request (its URL, and its
/// headers for `Vary`).
pub trait CacheKey {
    /// The URL and the request headers.
    fn cache_key(self) -> (String, Vec<(String, Vec<u8>)>);
}

impl CacheKey for &Request {
    fn cache_key(self) -> (String, Vec<(String, Vec<u8>)>) {
        (self.url().to_owned(), wit_headers(self.headers()))
    }
}

impl CacheKey for &OutboundRequest {
    fn cache_key(self) -> (String, Vec<(String, Vec<u8>)>) {
        (self.url.clone(), wit_headers(&self.headers))
    }
}

impl CacheKey for &str {
    fn cache_key(self) -> (String, Vec<(String, Vec<u8>)>) {
        (self.to_owned(), Vec::new())
    }
}

impl CacheKey for String {
    fn cache_key(self) -> (String, Vec<(String, Vec<u8>)>) {
        (self, Vec::new())
    }
}

impl CacheKey for &String {
    fn cache_key(self) -> (String, Vec<(String, Vec<u8>)>) {
        (self.clone(), Vec::new())
    }
}

fn wit_headers(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect()
}

fn response_from_wit(head: wit::Response, mut response: Response) -> Result<Response> {
    response.status = StatusCode::from_u16(head.status)?;
    let headers = response.headers_mut();
    for (name, value) in head.headers {
        headers.append(
            HeaderName::from_bytes(name.as_bytes())?,
            HeaderValue::from_bytes(&value)?,
        );
    }
    Ok(response)
}
