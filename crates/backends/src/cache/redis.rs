//! The Cache API on Redis, shared by every node.
//!
//! Storage rules (what is storable, which headers are dropped, freshness,
//! `Vary`) are the embedded cache's own ([`crate::cache::prepare_put`]).
//! One Redis hash per (worker, cache name, URL): a field per variant, keyed
//! by the request header values its `Vary` names, holding the response and
//! its freshness. The hash expires when its freshest variant does; stale
//! variants are skipped on reads and dropped on writes. Eviction is Redis's
//! own: give the cache server a `maxmemory` and `maxmemory-policy
//! allkeys-lru` (the `max_mb` of the memory cache does not apply).
//!
//! A body being stored is gathered in host memory and sent in one `HSET`
//! once whole, so it is bounded: [`MAX_BODY_BYTES`] by default, which is
//! also Redis's default largest value (`proto-max-bulk-len`, 512 MB) less
//! room for the headers; past it the `put` fails and nothing is stored.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redis::aio::ConnectionManager;

use super::{
    Buffered, CacheStore, CacheUpload, CachedResponse, Headers, MAX_BODY_BYTES, Prepared,
    prepare_put, vary_matches,
};
use crate::error::Result;
use crate::remote::redis_err;

pub struct RedisCache {
    conn: ConnectionManager,
    max_body_bytes: u64,
}

/// Room left in a Redis value for what is stored with the body.
const HEAD_ROOM: u64 = 1 << 20;

impl RedisCache {
    pub fn new(conn: ConnectionManager) -> Self {
        RedisCache {
            conn,
            max_body_bytes: MAX_BODY_BYTES - HEAD_ROOM,
        }
    }

    /// Store bodies of at most `bytes` (tests use a small one).
    pub fn with_max_body_bytes(mut self, bytes: u64) -> Self {
        self.max_body_bytes = bytes.min(MAX_BODY_BYTES - HEAD_ROOM);
        self
    }
}

fn key(scope: &str, cache: &str, url: &str) -> String {
    format!(
        "isola:cache:{}:{scope}:{}:{cache}:{url}",
        scope.len(),
        cache.len()
    )
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Length-prefixed byte strings, so any header value round-trips.
fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u64(&mut self) -> Option<u64> {
        let (head, rest) = self.0.split_at_checked(8)?;
        self.0 = rest;
        Some(u64::from_be_bytes(head.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(4)?;
        let len = u32::from_be_bytes(head.try_into().ok()?) as usize;
        let (bytes, rest) = rest.split_at_checked(len)?;
        self.0 = rest;
        Some(bytes)
    }
}

/// A hash field: the `Vary` names and the request's values for them.
fn encode_vary(vary: &[(String, Option<Vec<u8>>)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(vary.len() as u64).to_be_bytes());
    for (name, value) in vary {
        put_bytes(&mut out, name.as_bytes());
        match value {
            Some(v) => {
                out.push(1);
                put_bytes(&mut out, v);
            }
            None => out.push(0),
        }
    }
    out
}

fn decode_vary(mut bytes: &[u8]) -> Option<Vec<(String, Option<Vec<u8>>)>> {
    let mut r = Reader(bytes);
    let n = r.u64()?;
    let mut vary = Vec::new();
    for _ in 0..n {
        let name = String::from_utf8(r.bytes()?.to_vec()).ok()?;
        let (flag, rest) = r.0.split_first()?;
        r.0 = rest;
        let value = if *flag == 1 {
            Some(r.bytes()?.to_vec())
        } else {
            None
        };
        vary.push((name, value));
    }
    bytes = r.0;
    bytes.is_empty().then_some(vary)
}

struct Stored {
    stored_at_ms: u64,
    fresh_until_ms: u64,
    initial_age: u64,
    response: CachedResponse,
}

fn encode_stored(s: &Stored) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.response.body.len() + 256);
    for n in [
        s.stored_at_ms,
        s.fresh_until_ms,
        s.initial_age,
        u64::from(s.response.status),
        s.response.headers.len() as u64,
    ] {
        out.extend_from_slice(&n.to_be_bytes());
    }
    for (name, value) in &s.response.headers {
        put_bytes(&mut out, name.as_bytes());
        put_bytes(&mut out, value);
    }
    put_bytes(&mut out, &s.response.body);
    out
}

fn decode_stored(bytes: &[u8]) -> Option<Stored> {
    let mut r = Reader(bytes);
    let (stored_at_ms, fresh_until_ms, initial_age) = (r.u64()?, r.u64()?, r.u64()?);
    let status = u16::try_from(r.u64()?).ok()?;
    let n = r.u64()?;
    let mut headers = Vec::new();
    for _ in 0..n {
        let name = String::from_utf8(r.bytes()?.to_vec()).ok()?;
        headers.push((name, r.bytes()?.to_vec()));
    }
    let body = bytes::Bytes::copy_from_slice(r.bytes()?);
    Some(Stored {
        stored_at_ms,
        fresh_until_ms,
        initial_age,
        response: CachedResponse {
            status,
            headers,
            body,
        },
    })
}

type Variants = HashMap<Vec<u8>, Vec<u8>>;

/// Store a whole response under `key`, replacing the variant the same
/// request headers matched (and stale ones).
async fn store(
    mut conn: ConnectionManager,
    key: String,
    request_headers: Vec<(String, Vec<u8>)>,
    prepared: Prepared,
    body: bytes::Bytes,
) -> Result<bool> {
    let now = now_ms();
    let (initial_age, remaining) = (prepared.initial_age, prepared.remaining);
    let (vary, response, _) = prepared.with_body(body);
    // Variants this request replaces, and stale ones.
    let existing: Variants = redis::cmd("HGETALL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .map_err(redis_err)?;
    let replaced: Vec<&Vec<u8>> = existing
        .iter()
        .filter(|(field, value)| {
            let stale = decode_stored(value).is_none_or(|s| s.fresh_until_ms <= now);
            stale || decode_vary(field).is_none_or(|v| vary_matches(&v, &request_headers))
        })
        .map(|(field, _)| field)
        .collect();
    let fresh_until_ms = now.saturating_add(remaining.saturating_mul(1000));
    let stored = Stored {
        stored_at_ms: now,
        fresh_until_ms,
        initial_age,
        response,
    };
    let mut pipe = redis::pipe();
    pipe.atomic();
    for field in replaced {
        pipe.hdel(&key, field).ignore();
    }
    pipe.hset(&key, encode_vary(&vary), encode_stored(&stored))
        .ignore()
        // The hash lives as long as its freshest variant.
        .cmd("PEXPIREAT")
        .arg(&key)
        .arg(fresh_until_ms)
        .arg("NX")
        .ignore()
        .cmd("PEXPIREAT")
        .arg(&key)
        .arg(fresh_until_ms)
        .arg("GT")
        .ignore();
    let () = pipe.query_async(&mut conn).await.map_err(redis_err)?;
    Ok(true)
}

#[async_trait]
impl CacheStore for RedisCache {
    async fn match_(
        &self,
        scope: &str,
        cache: &str,
        url: &str,
        request_headers: &Headers,
    ) -> Result<Option<CachedResponse>> {
        let mut conn = self.conn.clone();
        let variants: Variants = redis::cmd("HGETALL")
            .arg(key(scope, cache, url))
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        let now = now_ms();
        let found = variants.iter().find_map(|(field, value)| {
            let vary = decode_vary(field)?;
            let stored = decode_stored(value)?;
            (stored.fresh_until_ms > now && vary_matches(&vary, request_headers)).then_some(stored)
        });
        Ok(found.map(|stored| {
            let mut response = stored.response;
            let age = stored.initial_age + now.saturating_sub(stored.stored_at_ms) / 1000;
            response
                .headers
                .push(("age".to_owned(), age.to_string().into_bytes()));
            response
        }))
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
            now_ms(),
        )?;
        let Some(prepared) = prepared else {
            return Ok(None);
        };
        let conn = self.conn.clone();
        let key = key(scope, cache, url);
        let request_headers = request_headers.to_vec();
        Ok(Some(Buffered::boxed(
            prepared,
            self.max_body_bytes,
            Box::new(move |prepared, body| {
                Box::pin(store(conn, key, request_headers, prepared, body))
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
        let mut conn = self.conn.clone();
        let removed: u64 = redis::cmd("DEL")
            .arg(key(scope, cache, url))
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        Ok(removed > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_round_trip() {
        let vary = vec![
            ("accept".to_owned(), Some(b"a, b".to_vec())),
            ("x-none".to_owned(), None),
        ];
        assert_eq!(decode_vary(&encode_vary(&vary)).unwrap(), vary);
        assert_eq!(decode_vary(&encode_vary(&[])).unwrap(), vec![]);
        let stored = Stored {
            stored_at_ms: 1,
            fresh_until_ms: 2,
            initial_age: 3,
            response: CachedResponse {
                status: 203,
                headers: vec![("a".into(), vec![0, 255])],
                body: bytes::Bytes::from_static(b"body"),
            },
        };
        let back = decode_stored(&encode_stored(&stored)).unwrap();
        assert_eq!(
            (back.stored_at_ms, back.fresh_until_ms, back.initial_age),
            (1, 2, 3)
        );
        assert_eq!(back.response, stored.response);
        assert!(decode_stored(b"short").is_none());
    }
}
