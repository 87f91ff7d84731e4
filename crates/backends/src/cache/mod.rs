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

#[cfg(test)]
mod tests;
