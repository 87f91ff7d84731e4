//! The KV suite, run against the embedded backend and Redis.

use super::*;

use super::sqlite::SqliteKv;

fn open(dir: &tempfile::TempDir) -> Arc<SqliteKv> {
    Arc::new(SqliteKv::open(&dir.path().join("kv.sqlite")).unwrap())
}

/// A KV backend under test: the embedded one or Redis. Tests of both
/// take their namespaces from here (unique per test on the shared
/// Redis).
struct Fixture {
    store: Arc<dyn KvStore>,
    prefix: String,
    _dir: Option<tempfile::TempDir>,
}

impl Fixture {
    fn embedded() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Fixture {
            store: open(&dir),
            prefix: String::new(),
            _dir: Some(dir),
        }
    }

    async fn distributed() -> Self {
        let url = isola_test_services::shared_redis().url();
        let conn = crate::remote::redis_connection(&url).await.unwrap();
        Fixture {
            store: Arc::new(super::redis::RedisKv::new(conn)),
            prefix: isola_test_services::unique("kv"),
            _dir: None,
        }
    }

    fn ns(&self, name: &str) -> KvNamespace {
        KvNamespace::new(self.store.clone(), &format!("{}{name}", self.prefix))
    }
}

crate::for_each_backend!(
    put_get_delete_and_namespaces_are_separate,
    limits_are_enforced_with_clear_messages,
    expired_keys_are_never_returned,
    list_pages_in_byte_order_with_prefix,
    concurrent_puts_all_land,
    large_values_round_trip,
);

fn invalid_msg(r: Result<impl std::fmt::Debug>) -> String {
    match r {
        Err(BindingError::Invalid(m)) => m,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

async fn put_get_delete_and_namespaces_are_separate(f: &Fixture) {
    let a = f.ns("a");
    let b = f.ns("b");
    a.put(
        "k",
        b"one".to_vec(),
        PutOptions {
            metadata: Some(r#"{"v":1}"#.into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        a.get("k").await.unwrap(),
        Some(KvValue {
            data: b"one".to_vec(),
            metadata: Some(r#"{"v":1}"#.into())
        })
    );
    assert_eq!(b.get("k").await.unwrap(), None);
    a.put("k", b"two".to_vec(), Default::default())
        .await
        .unwrap();
    assert_eq!(
        a.get("k").await.unwrap(),
        Some(KvValue {
            data: b"two".to_vec(),
            metadata: None
        })
    );
    a.delete("k").await.unwrap();
    a.delete("missing").await.unwrap();
    assert_eq!(a.get("k").await.unwrap(), None);
}

async fn limits_are_enforced_with_clear_messages(f: &Fixture) {
    let kv = f.ns("n");
    let long = "k".repeat(600);
    assert_eq!(
        invalid_msg(kv.get(&long).await),
        "KV key is 600 bytes; the limit is 512"
    );
    kv.put(&"k".repeat(512), vec![], Default::default())
        .await
        .unwrap();
    assert!(invalid_msg(kv.get("").await).contains("empty"));
    assert!(invalid_msg(kv.put(".", vec![], Default::default()).await).contains("\".\""));
    assert!(invalid_msg(kv.delete("..").await).contains("\"..\""));
    let big = vec![0u8; MAX_VALUE_BYTES + 1];
    assert_eq!(
        invalid_msg(kv.put("k", big, Default::default()).await),
        format!(
            "KV value is {} bytes; the limit is {MAX_VALUE_BYTES}",
            MAX_VALUE_BYTES + 1
        )
    );
    let meta = |m: &str| PutOptions {
        metadata: Some(m.into()),
        ..Default::default()
    };
    let big_meta = format!("\"{}\"", "x".repeat(1100));
    assert!(
        invalid_msg(kv.put("k", vec![], meta(&big_meta)).await)
            .starts_with("KV metadata is 1102 bytes; the limit is 1024")
    );
    assert!(invalid_msg(kv.put("k", vec![], meta("{nope")).await).contains("not valid JSON"));
    let ttl = |t| PutOptions {
        expiration_ttl: Some(t),
        ..Default::default()
    };
    assert!(invalid_msg(kv.put("k", vec![], ttl(0)).await).contains("at least 1"));
    let at = |t| PutOptions {
        expiration: Some(t),
        ..Default::default()
    };
    assert!(invalid_msg(kv.put("k", vec![], at(unix_now())).await).contains("not in the future"));
    assert!(invalid_msg(kv.put("k", vec![], at(u64::MAX)).await).contains("too large"));
    for limit in [0, 1001] {
        let msg = invalid_msg(
            kv.list(ListOptions {
                limit: Some(limit),
                ..Default::default()
            })
            .await,
        );
        assert!(msg.contains(&format!("limit is {limit}")), "{msg}");
    }
    assert!(
        invalid_msg(
            kv.list(ListOptions {
                cursor: Some("xyz".into()),
                ..Default::default()
            })
            .await
        )
        .contains("cursor")
    );
}

#[test]
fn ttl_becomes_an_absolute_expiration() {
    let opts = PutOptions {
        expiration_ttl: Some(30),
        expiration: Some(5),
        ..Default::default()
    };
    assert_eq!(absolute_expiration(&opts, 1000).unwrap(), Some(1030));
    let opts = PutOptions {
        expiration: Some(2000),
        ..Default::default()
    };
    assert_eq!(absolute_expiration(&opts, 1000).unwrap(), Some(2000));
    assert_eq!(
        absolute_expiration(&Default::default(), 1000).unwrap(),
        None
    );
}

async fn expired_keys_are_never_returned(f: &Fixture) {
    let kv = f.ns("n");
    let past = unix_now() - 10;
    // Straight into the backend: the namespace refuses past expirations.
    f.store
        .put(
            &format!("{}n", f.prefix),
            "old",
            b"x".to_vec(),
            Some(past),
            None,
        )
        .await
        .unwrap();
    kv.put(
        "soon",
        b"s".to_vec(),
        PutOptions {
            expiration_ttl: Some(1),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    kv.put(
        "ttl",
        b"y".to_vec(),
        PutOptions {
            expiration_ttl: Some(100),
            metadata: Some("[1]".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(kv.get("old").await.unwrap(), None);
    assert_eq!(kv.get("soon").await.unwrap().unwrap().data, b"s");
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(kv.get("soon").await.unwrap(), None);
    let listed = kv.list(Default::default()).await.unwrap();
    let names: Vec<_> = listed.keys.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["ttl"]);
    let exp = listed.keys[0].expiration.unwrap();
    assert!((unix_now() + 97..=unix_now() + 100).contains(&exp));
    assert_eq!(listed.keys[0].metadata.as_deref(), Some("[1]"));
    // A put without expiry clears the old one.
    kv.put("ttl", b"z".to_vec(), Default::default())
        .await
        .unwrap();
    let listed = kv.list(Default::default()).await.unwrap();
    assert_eq!(listed.keys[0].expiration, None);
    assert_eq!(listed.keys[0].metadata, None);
}

async fn large_values_round_trip(f: &Fixture) {
    let kv = f.ns("n");
    let big: Vec<u8> = (0..MAX_VALUE_BYTES).map(|i| (i % 251) as u8).collect();
    kv.put("big", big.clone(), Default::default())
        .await
        .unwrap();
    assert_eq!(kv.get("big").await.unwrap().unwrap().data, big);
    kv.put("bin", vec![0, 255, 10, 13], Default::default())
        .await
        .unwrap();
    assert_eq!(kv.get("bin").await.unwrap().unwrap().data, [0, 255, 10, 13]);
}

async fn list_pages_in_byte_order_with_prefix(f: &Fixture) {
    let kv = f.ns("n");
    let keys = [
        "a",
        "a%",
        "a_",
        "a_b",
        "ab",
        "b",
        "é",
        "a\u{10FFFF}",
        "A",
        "a/1",
        "a/2",
        "a/3",
    ];
    for k in keys {
        kv.put(k, k.as_bytes().to_vec(), Default::default())
            .await
            .unwrap();
    }
    f.ns("other")
        .put("a/0", vec![], Default::default())
        .await
        .unwrap();
    let mut sorted: Vec<&str> = keys.to_vec();
    sorted.sort_by(|x, y| x.as_bytes().cmp(y.as_bytes()));

    // Pages of 5 walk every key exactly once, in byte order.
    let mut seen = vec![];
    let mut cursor = None;
    loop {
        let page = kv
            .list(ListOptions {
                limit: Some(5),
                cursor: cursor.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        seen.extend(page.keys.iter().map(|k| k.name.clone()));
        if page.list_complete {
            assert_eq!(page.cursor, None);
            break;
        }
        assert_eq!(page.keys.len(), 5);
        cursor = Some(page.cursor.unwrap());
    }
    assert_eq!(seen, sorted);

    // LIKE wildcards in the prefix are literal.
    let page = kv
        .list(ListOptions {
            prefix: Some("a_".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let names: Vec<_> = page.keys.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["a_", "a_b"]);
    assert!(page.list_complete);

    let page = kv
        .list(ListOptions {
            prefix: Some("a/".into()),
            limit: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    let names: Vec<_> = page.keys.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["a/1", "a/2"]);
    assert!(!page.list_complete);
    let page = kv
        .list(ListOptions {
            prefix: Some("a/".into()),
            limit: Some(2),
            cursor: page.cursor,
        })
        .await
        .unwrap();
    let names: Vec<_> = page.keys.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["a/3"]);
    assert!(page.list_complete);

    // Exactly `limit` keys left: complete, no cursor.
    let page = kv
        .list(ListOptions {
            prefix: Some("a/".into()),
            limit: Some(3),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.keys.len(), 3);
    assert!(page.list_complete);
    assert_eq!(page.cursor, None);
}

async fn concurrent_puts_all_land(f: &Fixture) {
    let kv = f.ns("n");
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let kv = kv.clone();
            tokio::spawn(async move {
                kv.put(&format!("key{i:02}"), vec![i as u8], Default::default())
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let page = kv.list(Default::default()).await.unwrap();
    assert_eq!(page.keys.len(), 50);
    for i in 0..50u8 {
        assert_eq!(
            kv.get(&format!("key{i:02}")).await.unwrap().unwrap().data,
            [i]
        );
    }
}

/// Property tests of the list cursor and the key rules.
mod proptests {
    use proptest::prelude::*;

    use super::*;

    fn config() -> ProptestConfig {
        ProptestConfig {
            cases: 256,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn cursors_round_trip(key in any::<String>()) {
            let cursor = encode_cursor(&key);
            prop_assert_eq!(cursor.len(), 2 * key.len());
            prop_assert!(cursor.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            prop_assert_eq!(decode_cursor(&cursor).unwrap(), key);
        }

        #[test]
        fn decoded_cursors_encode_back(
            cursor in prop_oneof![any::<String>(), "[0-9a-fA-F+ -]{0,12}", "([2-7][0-9a-f]){0,6}"],
        ) {
            match decode_cursor(&cursor) {
                Ok(key) => prop_assert_eq!(encode_cursor(&key), cursor.to_ascii_lowercase()),
                Err(e) => prop_assert!(matches!(e, BindingError::Invalid(_))),
            }
        }

        #[test]
        fn accepted_keys_keep_the_rules(
            key in prop_oneof![
                any::<String>(),
                "[.]{0,3}",
                (0usize..4).prop_map(|n| "k".repeat(MAX_KEY_BYTES - 2 + n)),
            ],
        ) {
            let ok = validate_key(&key).is_ok();
            prop_assert_eq!(
                ok,
                !key.is_empty() && key.len() <= MAX_KEY_BYTES && key != "." && key != ".."
            );
        }

        #[test]
        fn expirations_are_in_the_future_or_refused(
            ttl in proptest::option::of(prop_oneof![0u64..5, any::<u64>()]),
            at in proptest::option::of(any::<u64>()),
            now in prop_oneof![Just(1_700_000_000u64), any::<u64>()],
        ) {
            let options = PutOptions {
                expiration_ttl: ttl,
                expiration: at,
                metadata: None,
            };
            if let Ok(Some(expiry)) = absolute_expiration(&options, now) {
                prop_assert!(expiry > now);
                prop_assert!(expiry <= i64::MAX as u64);
            }
        }
    }
}
