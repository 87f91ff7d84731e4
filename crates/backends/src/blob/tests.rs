//! The R2 suite, run against the filesystem backend and S3 (moto).

use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};
use md5::{Digest, Md5};

use super::fs::FsBlobStore;
use super::*;

fn store(dir: &tempfile::TempDir) -> FsBlobStore {
    FsBlobStore::new(&dir.path().join("r2")).unwrap()
}

async fn put(s: &dyn BlobStore, key: &str, body: &[u8]) -> ObjectInfo {
    let mut upload = s.put("b", key, PutOptions::default()).await.unwrap();
    upload.write(Bytes::copy_from_slice(body)).await.unwrap();
    upload.finish().await.unwrap()
}

async fn read(body: BodyStream) -> Vec<u8> {
    body.try_fold(Vec::new(), |mut acc, chunk| async move {
        acc.extend_from_slice(&chunk);
        Ok(acc)
    })
    .await
    .unwrap()
}

async fn get(s: &dyn BlobStore, key: &str, range: Option<Range>) -> Result<Vec<u8>> {
    let (_, body) = s.get("b", key, range).await?.expect("object exists");
    Ok(read(body).await)
}

/// Every regular file under `dir`, relative.
fn files(dir: &std::path::Path) -> Vec<String> {
    let mut out = vec![];
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out
}

#[test]
fn key_rules() {
    let long = "k".repeat(1025);
    for bad in [
        "", "../x", "/abs", "a/../b", "a/./b", ".", "..", "a/..", "a\0b", "a\\b", &long,
    ] {
        assert!(
            matches!(validate_key(bad), Err(BindingError::Invalid(_))),
            "{bad:?}"
        );
    }
    let msg = validate_key(&long).unwrap_err().to_string();
    assert_eq!(msg, "object key is 1025 bytes; the limit is 1024");
    for good in [
        "a",
        "a/b",
        "dir/",
        "a//b",
        "..a",
        "a..",
        "a.b/.c",
        "é ü/#1",
        &"k".repeat(1024),
    ] {
        validate_key(good).unwrap();
    }
}

#[tokio::test]
async fn bucket_names_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir);
    for bad in ["", "Up", "a_b", "../x", "a/b", "a.b"] {
        assert!(
            matches!(s.head(bad, "k").await, Err(BindingError::Invalid(_))),
            "{bad:?}"
        );
        assert!(matches!(
            s.put(bad, "k", PutOptions::default()).await.err(),
            Some(BindingError::Invalid(_))
        ));
    }
    assert!(!dir.path().join("r2/Up").exists());
}

async fn put_head_get_delete_with_metadata(f: &Fixture) {
    let s = f.store().await;
    let s = s.as_ref();
    assert_eq!(s.head("b", "k").await.unwrap(), None);
    assert!(s.get("b", "k", None).await.unwrap().is_none());
    let http = HttpMetadata {
        content_type: Some("text/plain".into()),
        cache_control: Some("max-age=60".into()),
        ..Default::default()
    };
    let custom = vec![
        ("b".to_owned(), "2".to_owned()),
        ("a".to_owned(), "1".to_owned()),
    ];
    let mut upload = s
        .put(
            "b",
            "dir/k",
            PutOptions {
                http_metadata: http.clone(),
                custom_metadata: custom.clone(),
            },
        )
        .await
        .unwrap();
    upload.write(Bytes::from_static(b"hello ")).await.unwrap();
    upload.write(Bytes::new()).await.unwrap();
    upload.write(Bytes::from_static(b"world")).await.unwrap();
    let info = upload.finish().await.unwrap();
    assert_eq!(info.key, "dir/k");
    assert_eq!(info.size, 11);
    // md5("hello world")
    assert_eq!(info.etag, "5eb63bbbe01eeed093cb22bb8f5acdc3");
    assert_eq!(info.http_metadata, http);
    assert_eq!(info.custom_metadata, custom);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(info.uploaded <= now_ms && info.uploaded + 60_000 > now_ms);

    assert_eq!(s.head("b", "dir/k").await.unwrap(), Some(info.clone()));
    let (got, body) = s.get("b", "dir/k", None).await.unwrap().unwrap();
    assert_eq!(got, info);
    assert_eq!(read(body).await, b"hello world");

    // Survives reopening: the data is on disk or in the server.
    let reopened = f.store().await;
    let s = reopened.as_ref();
    assert_eq!(s.head("b", "dir/k").await.unwrap(), Some(info));

    // An empty object.
    let empty = put(s, "empty", b"").await;
    assert_eq!(empty.size, 0);
    assert_eq!(empty.etag, "d41d8cd98f00b204e9800998ecf8427e");
    assert_eq!(get(s, "empty", None).await.unwrap(), b"");

    // `a` and `a/b`, `dir/` and `a//b` coexist: keys are not file paths.
    for key in ["a", "a/b", "dir/", "a//b"] {
        put(s, key, key.as_bytes()).await;
    }
    for key in ["a", "a/b", "dir/", "a//b"] {
        assert_eq!(get(s, key, None).await.unwrap(), key.as_bytes());
    }

    s.delete("b", &["dir/k".into(), "missing".into(), "a".into()])
        .await
        .unwrap();
    assert_eq!(s.head("b", "dir/k").await.unwrap(), None);
    assert_eq!(s.head("b", "a").await.unwrap(), None);
    assert!(s.head("b", "a/b").await.unwrap().is_some());
    assert!(matches!(
        s.delete("b", &["../x".into()]).await,
        Err(BindingError::Invalid(_))
    ));
    // Only the remaining objects' files are left.
    if let Some(dir) = f.dir() {
        assert_eq!(files(&dir.join("r2/b")).len(), 4);
    }
}

async fn overwrite_replaces_atomically_and_leaves_no_file_behind(f: &Fixture) {
    let s = f.store().await;
    let s = s.as_ref();
    let old_body = vec![b'o'; 100_000];
    put(s, "k", &old_body).await;
    // A reader that opened the old object before the overwrite.
    let (old_info, old_stream) = s.get("b", "k", None).await.unwrap().unwrap();

    let mut upload = s.put("b", "k", PutOptions::default()).await.unwrap();
    upload.write(Bytes::from(vec![b'n'; 50_000])).await.unwrap();
    // Not finished: readers still see the old object.
    assert_eq!(s.head("b", "k").await.unwrap(), Some(old_info.clone()));
    assert_eq!(get(s, "k", None).await.unwrap(), old_body);
    let new_info = upload.finish().await.unwrap();
    assert_eq!(new_info.size, 50_000);

    assert_eq!(
        read(old_stream).await,
        old_body,
        "the old reader is unaffected"
    );
    assert_eq!(get(s, "k", None).await.unwrap(), vec![b'n'; 50_000]);
    if let Some(dir) = f.dir() {
        assert_eq!(files(&dir.join("r2/b")).len(), 1);
    }
}

#[tokio::test]
async fn dropping_an_upload_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir);
    let mut upload = s.put("b", "k", PutOptions::default()).await.unwrap();
    // Enough for whole parts to reach the disk.
    for _ in 0..40 {
        upload
            .write(Bytes::from(vec![7u8; 64 * 1024]))
            .await
            .unwrap();
    }
    drop(upload);
    assert_eq!(s.head("b", "k").await.unwrap(), None);
    assert!(s.get("b", "k", None).await.unwrap().is_none());
    assert!(
        s.list("b", ListOptions::default())
            .await
            .unwrap()
            .objects
            .is_empty()
    );
    // The staging file goes on the blocking pool; give it a moment.
    let root = dir.path().join("r2/b");
    for _ in 0..100 {
        if files(&root).is_empty() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("leftover files: {:?}", files(&root));
}

async fn a_large_object_streams_both_ways(f: &Fixture) {
    let s = f.store().await;
    let s = s.as_ref();
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 320; // 20 MiB
    let chunk = |i: usize| -> Bytes {
        (0..CHUNK)
            .map(|j| (i.wrapping_mul(31) ^ j.wrapping_mul(7)) as u8)
            .collect::<Vec<u8>>()
            .into()
    };
    let mut expected = Md5::new();
    let mut upload = s.put("b", "big", PutOptions::default()).await.unwrap();
    for i in 0..CHUNKS {
        let c = chunk(i);
        expected.update(&c);
        upload.write(c).await.unwrap();
    }
    let expected = crate::util::hex(&expected.finalize());
    let info = upload.finish().await.unwrap();
    assert_eq!(info.size, (CHUNK * CHUNKS) as u64);
    if f.dir().is_some() {
        assert_eq!(info.etag, expected);
    } else {
        // Uploaded in parts: S3's multipart ETag, as head reports it.
        let (hash, parts) = info.etag.split_once('-').expect("a multipart ETag");
        assert_eq!((hash.len(), parts), (32, "4"), "{}", info.etag);
        assert_eq!(s.head("b", "big").await.unwrap().unwrap().etag, info.etag);
    }

    let (_, mut body) = s.get("b", "big", None).await.unwrap().unwrap();
    let mut hasher = Md5::new();
    let (mut total, mut largest) = (0usize, 0usize);
    while let Some(piece) = body.next().await {
        let piece = piece.unwrap();
        total += piece.len();
        largest = largest.max(piece.len());
        hasher.update(&piece);
    }
    assert_eq!(total, CHUNK * CHUNKS);
    assert_eq!(crate::util::hex(&hasher.finalize()), expected);
    assert!(
        largest <= 1024 * 1024,
        "streamed, not read whole: {largest}"
    );

    // A range from the middle of it.
    let start = 5 * CHUNK as u64 + 100;
    let got = get(
        s,
        "big",
        Some(Range {
            offset: Some(start),
            length: Some(1000),
            suffix: None,
        }),
    )
    .await
    .unwrap();
    assert_eq!(got, chunk(5)[100..1100]);
}

async fn ranges(f: &Fixture) {
    let s = f.store().await;
    let s = s.as_ref();
    put(s, "k", b"0123456789").await;
    let r = |offset, length, suffix| {
        Some(Range {
            offset,
            length,
            suffix,
        })
    };
    let cases: [(Option<Range>, &[u8]); 9] = [
        (r(Some(2), Some(3), None), b"234"),
        (r(Some(7), None, None), b"789"),
        (r(None, Some(4), None), b"0123"),
        (r(Some(8), Some(100), None), b"89"),
        (r(Some(10), None, None), b""),
        (r(Some(3), Some(0), None), b""),
        (r(None, None, Some(3)), b"789"),
        (r(None, None, Some(100)), b"0123456789"),
        (r(None, None, None), b"0123456789"),
    ];
    for (range, want) in cases {
        assert_eq!(get(s, "k", range).await.unwrap(), want, "{range:?}");
    }
    let err = get(s, "k", r(Some(11), None, None)).await.unwrap_err();
    assert_eq!(
        err,
        BindingError::Invalid("range offset 11 is beyond the end of the 10-byte object".into())
    );
    assert!(matches!(
        get(s, "k", r(Some(1), None, Some(2))).await,
        Err(BindingError::Invalid(_))
    ));
}

async fn list(
    s: &dyn BlobStore,
    prefix: &str,
    delimiter: Option<&str>,
    limit: u32,
    cursor: Option<String>,
) -> ListResult {
    s.list(
        "b",
        ListOptions {
            prefix: Some(prefix.into()),
            delimiter: delimiter.map(String::from),
            cursor,
            limit: Some(limit),
        },
    )
    .await
    .unwrap()
}

/// Every page, flattened to "key" and "prefix/" items with a marker.
async fn walk(s: &dyn BlobStore, prefix: &str, delimiter: Option<&str>, limit: u32) -> Vec<String> {
    let mut items = vec![];
    let mut cursor = None;
    for _ in 0..100 {
        let page = list(s, prefix, delimiter, limit, cursor).await;
        assert!(page.objects.len() + page.delimited_prefixes.len() <= limit as usize);
        let mut page_items: Vec<String> = page
            .objects
            .iter()
            .map(|o| o.key.clone())
            .chain(page.delimited_prefixes.iter().map(|p| format!("[{p}]")))
            .collect();
        page_items.sort_by(|a, b| a.trim_start_matches('[').cmp(b.trim_start_matches('[')));
        items.extend(page_items);
        if !page.truncated {
            assert_eq!(page.cursor, None);
            return items;
        }
        assert_eq!(
            page.objects.len() + page.delimited_prefixes.len(),
            limit as usize,
            "a truncated page is full"
        );
        cursor = Some(page.cursor.expect("a truncated page has a cursor"));
    }
    panic!("listing does not end");
}

async fn listing_with_prefix_delimiter_and_pages(f: &Fixture) {
    let s = f.store().await;
    let s = s.as_ref();
    let keys = [
        "a/1", "a/2", "a/3", "b", "c/x/1", "c/x/2", "c/y", "d", "e%", "e_", "e/", "é",
    ];
    for key in keys {
        put(s, key, key.as_bytes()).await;
    }
    let mut sorted = keys.map(String::from).to_vec();
    sorted.sort();
    for limit in [1, 2, 3, 1000] {
        assert_eq!(walk(s, "", None, limit).await, sorted, "limit {limit}");
        assert_eq!(
            walk(s, "", Some("/"), limit).await,
            ["[a/]", "b", "[c/]", "d", "e%", "[e/]", "e_", "é"],
            "limit {limit}"
        );
        assert_eq!(
            walk(s, "c/", Some("/"), limit).await,
            ["[c/x/]", "c/y"],
            "limit {limit}"
        );
        assert_eq!(walk(s, "c/x", None, limit).await, ["c/x/1", "c/x/2"]);
        // Wildcards in a prefix are literal.
        assert_eq!(walk(s, "e_", Some("/"), limit).await, ["e_"]);
    }
    // A multi-character delimiter.
    assert_eq!(walk(s, "", Some("/x/"), 1000).await.len(), keys.len() - 1);

    let page = list(s, "", Some("/"), 2, None).await;
    assert_eq!(page.delimited_prefixes, ["a/"]);
    assert_eq!(page.objects[0].key, "b");
    assert!(page.truncated);
    // The cursor after a rolled-up prefix resumes past all of it.
    let page = list(s, "", Some("/"), 1, None).await;
    assert_eq!(page.delimited_prefixes, ["a/"]);
    let next = list(s, "", Some("/"), 1, page.cursor).await;
    assert_eq!(next.objects[0].key, "b");
    // Objects carry their metadata in listings too.
    assert_eq!(next.objects[0].size, 1);

    for bad in [0, 1001] {
        let err = s
            .list(
                "b",
                ListOptions {
                    limit: Some(bad),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains(&format!("limit is {bad}")),
            "{err}"
        );
    }
    let err = s
        .list(
            "b",
            ListOptions {
                cursor: Some("nothex".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, BindingError::Invalid(_)));
    // Another bucket is empty.
    assert!(
        s.list("other", ListOptions::default())
            .await
            .unwrap()
            .objects
            .is_empty()
    );
}

#[test]
fn cursors_round_trip() {
    for resume in [
        Resume::After("a/b".into()),
        Resume::PastPrefix("é/".into()),
        Resume::After(String::new()),
    ] {
        assert_eq!(decode_cursor(&encode_cursor(&resume)).unwrap(), resume);
    }
    assert!(decode_cursor("").is_err());
    assert!(decode_cursor(&crate::util::hex(b"zkey")).is_err());
}

async fn concurrent_overwrites_leave_one_object_and_one_file(f: &Fixture) {
    let s = f.store().await;
    let tasks: Vec<_> = (0..10u8)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let mut upload = s.put("b", "k", PutOptions::default()).await.unwrap();
                for _ in 0..4 {
                    upload.write(Bytes::from(vec![i; 10_000])).await.unwrap();
                }
                upload.finish().await.unwrap()
            })
        })
        .collect();
    let mut etags = vec![];
    for t in tasks {
        etags.push(t.await.unwrap().etag);
    }
    let info = s.head("b", "k").await.unwrap().unwrap();
    assert!(etags.contains(&info.etag));
    let body = get(s.as_ref(), "k", None).await.unwrap();
    assert_eq!(body.len(), 40_000);
    assert!(
        body.iter().all(|&b| b == body[0]),
        "one writer's bytes only"
    );
    assert_eq!(crate::util::hex(&Md5::digest(&body)), info.etag);
    if let Some(dir) = f.dir() {
        assert_eq!(files(&dir.join("r2/b")).len(), 1);
    }
}

/// A blob backend under test: the filesystem one or S3 (moto), a bucket of
/// its own per test.
struct Fixture {
    dir: Option<tempfile::TempDir>,
    s3_bucket: Option<String>,
}

impl Fixture {
    fn embedded() -> Self {
        Fixture {
            dir: Some(tempfile::tempdir().unwrap()),
            s3_bucket: None,
        }
    }

    async fn distributed() -> Self {
        let bucket = isola_test_services::unique("b");
        isola_test_services::shared_s3().create_bucket(&bucket);
        Fixture {
            dir: None,
            s3_bucket: Some(bucket),
        }
    }

    fn dir(&self) -> Option<&std::path::Path> {
        self.dir.as_ref().map(|d| d.path())
    }

    /// A store on this fixture's data (a new handle each call).
    async fn store(&self) -> Arc<dyn BlobStore> {
        match (&self.dir, &self.s3_bucket) {
            (Some(dir), _) => Arc::new(store(dir)),
            (None, Some(bucket)) => {
                let s3 = isola_test_services::shared_s3();
                Arc::new(
                    super::s3::S3BlobStore::connect_with(
                        Some(&s3.endpoint()),
                        "us-east-1",
                        bucket,
                        Some((
                            isola_test_services::S3_KEY_ID,
                            isola_test_services::S3_SECRET,
                        )),
                    )
                    .await
                    .unwrap(),
                )
            }
            (None, None) => unreachable!(),
        }
    }
}

crate::for_each_backend!(
    put_head_get_delete_with_metadata,
    overwrite_replaces_atomically_and_leaves_no_file_behind,
    a_large_object_streams_both_ways,
    ranges,
    listing_with_prefix_delimiter_and_pages,
    concurrent_overwrites_leave_one_object_and_one_file,
);

/// Property tests of the key rules, the list cursor and ranges.
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

    /// Keys made of the characters the rules are about.
    fn keyish() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            proptest::sample::select(&["a", "/", ".", "..", "\\", "\0", "é", " ", "%2e"][..]),
            0..12,
        )
        .prop_map(|parts| parts.concat())
    }

    /// A key the rules accept: segments of anything but `/`, `\`, NUL, none
    /// of them `.` or `..`, not starting with `/`.
    fn valid_key() -> impl Strategy<Value = String> {
        proptest::collection::vec("[^/\\\\\u{0}]{0,8}", 1..5)
            .prop_map(|segments| {
                segments
                    .into_iter()
                    .map(|s| {
                        if s == "." || s == ".." {
                            format!("{s}x")
                        } else {
                            s
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .prop_filter("non-empty, not /-led, within the limit", |k| {
                !k.is_empty() && !k.starts_with('/') && k.len() <= MAX_KEY_BYTES
            })
    }

    fn check_key(key: &str) -> Result<(), TestCaseError> {
        match validate_key(key) {
            Ok(()) => {
                prop_assert!(!key.is_empty() && key.len() <= MAX_KEY_BYTES);
                prop_assert!(!key.contains(['\0', '\\']));
                prop_assert!(!key.starts_with('/'));
                prop_assert!(key.split('/').all(|s| s != "." && s != ".."));
            }
            Err(e) => prop_assert!(matches!(e, BindingError::Invalid(_))),
        }
        Ok(())
    }

    fn resume() -> impl Strategy<Value = Resume> {
        prop_oneof![
            any::<String>().prop_map(Resume::After),
            any::<String>().prop_map(Resume::PastPrefix),
        ]
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn accepted_keys_keep_the_rules(key in any::<String>(), near in keyish()) {
            check_key(&key)?;
            check_key(&near)?;
        }

        #[test]
        fn valid_keys_are_accepted_until_broken(
            key in valid_key(),
            at in any::<prop::sample::Index>(),
            bad in proptest::sample::select(&["\0", "\\", "/./", "/../"][..]),
        ) {
            prop_assert!(validate_key(&key).is_ok(), "{:?}", key);
            let cut = key
                .char_indices()
                .map(|(i, _)| i)
                .chain([key.len()])
                .collect::<Vec<_>>();
            let at = cut[at.index(cut.len())];
            let broken = format!("{}{bad}{}", &key[..at], &key[at..]);
            prop_assert!(validate_key(&broken).is_err(), "{:?}", broken);
            let slash_led = format!("/{key}");
            prop_assert!(validate_key(&slash_led).is_err());
            let long = format!("{key}{}", "k".repeat(MAX_KEY_BYTES + 1 - key.len()));
            prop_assert!(validate_key(&long).is_err());
        }

        #[test]
        fn cursors_round_trip(resume in resume()) {
            let cursor = encode_cursor(&resume);
            prop_assert!(cursor.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            prop_assert_eq!(decode_cursor(&cursor).unwrap(), resume);
        }

        #[test]
        fn decoded_cursors_encode_back(
            cursor in prop_oneof![any::<String>(), "[0-9a-fA-F+ -]{0,12}", "(6b|70)[0-9a-f]{0,8}"],
        ) {
            if let Ok(resume) = decode_cursor(&cursor) {
                prop_assert_eq!(encode_cursor(&resume), cursor.to_ascii_lowercase());
            }
        }

        #[test]
        fn ranges_stay_within_the_object(
            offset in proptest::option::of(prop_oneof![0u64..64, any::<u64>()]),
            length in proptest::option::of(prop_oneof![0u64..64, any::<u64>()]),
            suffix in proptest::option::of(prop_oneof![0u64..64, any::<u64>()]),
            size in prop_oneof![0u64..64, any::<u64>()],
            whole in any::<bool>(),
        ) {
            let range = (!whole).then_some(Range { offset, length, suffix });
            if let Ok(r) = resolve_range(range, size) {
                prop_assert!(r.start <= r.end && r.end <= size);
                if let Some(Range { offset: Some(o), suffix: None, .. }) = range {
                    prop_assert_eq!(r.start, o);
                }
                if let Some(Range { length: Some(l), suffix: None, .. }) = range {
                    prop_assert!(r.end - r.start <= l);
                }
                if let Some(Range { suffix: Some(s), .. }) = range {
                    prop_assert_eq!(r.end - r.start, s.min(size));
                }
            }
        }

        #[test]
        fn listings_never_start_before_their_prefix(
            prefix in prop_oneof![any::<String>(), "[ab/]{0,3}"],
            resume in proptest::option::of(prop_oneof![
                resume(),
                "[ab/]{0,4}".prop_map(Resume::After),
                "[ab/]{0,4}".prop_map(Resume::PastPrefix),
            ]),
        ) {
            match lower_bound(&prefix, resume.as_ref()) {
                Some(bound) => prop_assert!(bound.key.as_str() >= prefix.as_str()),
                None => {
                    let past = matches!(&resume, Some(Resume::PastPrefix(_)));
                    prop_assert!(past);
                }
            }
        }
    }
}
