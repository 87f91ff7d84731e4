//! The cache suite, run against the memory LRU and Redis.

use super::*;

use super::memory::MemoryCache;

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

/// About the largest body the fixtures' caches store.
const LIMIT: u64 = 1 << 20;

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
            // A cap a little over LIMIT: the body's limit is the cap less
            // the entry's head.
            cache: std::sync::Arc::new(MemoryCache::new(LIMIT + 4096)),
            scope: "w".into(),
        }
    }

    async fn distributed() -> Self {
        let url = isola_test_services::shared_redis().url();
        let conn = crate::remote::redis_connection(&url).await.unwrap();
        Fixture {
            cache: std::sync::Arc::new(
                super::redis::RedisCache::new(conn).with_max_body_bytes(LIMIT),
            ),
            scope: isola_test_services::unique("w"),
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
    bodies_stream_in_and_one_over_the_limit_stores_nothing,
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

async fn bodies_stream_in_and_one_over_the_limit_stores_nothing(f: &Fixture) {
    let head = || h(&[("cache-control", "max-age=60"), ("content-type", "a/b")]);
    let begin = |req: Vec<(String, Vec<u8>)>| {
        let cache = f.cache.clone();
        let scope = f.scope.clone();
        async move {
            cache
                .begin_put(&scope, "default", URL, &req, 200, head())
                .await
                .unwrap()
                .expect("storable")
        }
    };
    // A body in chunks is stored whole, in order.
    let chunk = |n: usize, byte: u8| bytes::Bytes::from(vec![byte; n]);
    let mut upload = begin(vec![]).await;
    for byte in 0..8u8 {
        upload.write(chunk(64 << 10, byte)).await.unwrap();
    }
    assert!(upload.finish().await.unwrap());
    let hit = f.get(&[]).await.unwrap();
    assert_eq!(hit.body.len(), 8 * (64 << 10));
    assert!(
        hit.body
            .chunks(64 << 10)
            .enumerate()
            .all(|(i, c)| c.iter().all(|&b| b == i as u8))
    );

    // Past the limit: a clear error, the upload stays dead, and what was
    // stored before is untouched.
    let mut upload = begin(vec![]).await;
    upload.write(chunk(LIMIT as usize / 2, 1)).await.unwrap();
    let error = upload.write(chunk(LIMIT as usize, 2)).await.unwrap_err();
    assert!(
        matches!(&error, BindingError::Invalid(m) if m.contains("over the cache's limit") && m.contains("nothing was stored")),
        "{error:?}"
    );
    assert!(upload.write(chunk(1, 3)).await.is_err());
    assert!(matches!(
        upload.finish().await,
        Err(BindingError::Invalid(_))
    ));
    assert_eq!(f.get(&[]).await.unwrap().body, hit.body);

    // An upload dropped before it finished stores nothing either.
    assert!(f.cache.delete(&f.scope, "default", URL, &[]).await.unwrap());
    let mut upload = begin(vec![]).await;
    upload.write(chunk(10, 4)).await.unwrap();
    drop(upload);
    assert_eq!(f.get(&[]).await, None);

    // What may not be stored is known before any of the body.
    let refused = f
        .cache
        .begin_put(
            &f.scope,
            "default",
            URL,
            &[],
            200,
            h(&[("cache-control", "no-store")]),
        )
        .await
        .unwrap();
    assert!(refused.is_none());
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
