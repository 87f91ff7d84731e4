//! `env` bindings through a real guest (`guests/bindings`) on the embedded
//! backends: KV, D1, R2, the Cache API, Analytics Engine, vars and secrets —
//! each operation, their limits and errors, concurrency, and durability
//! across a `kill -9`.

use std::time::Duration;

use futures_util::future::join_all;
use isola_test_programs as guests;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{Project, Server, client, run_isola, stderr_of, worker};

const SECRET: &str = "s3cr3t-value-that-must-not-leak";

/// The `bindings` guest with every binding kind, its secret in `.dev.vars`;
/// `extra` adds keys to the worker. The CPU limit is raised: these tests
/// move megabytes through a guest in a debug build.
fn project(extra: &str) -> Project {
    project_with("", extra)
}

/// As [`project`], with `top` (such as `[backends]`) before the worker.
fn project_with(top: &str, extra: &str) -> Project {
    let config = format!(
        "{top}\n{}cpu_ms = 2000\nsecrets = [\"API_KEY\"]\n\
         kv_namespaces = [{{ binding = \"KV\", id = \"test-kv\" }}]\n\
         d1_databases = [{{ binding = \"DB\", database_name = \"test\" }}]\n\
         r2_buckets = [{{ binding = \"BUCKET\", bucket_name = \"uploads\" }}]\n\
         analytics_engine_datasets = [{{ binding = \"EVENTS\", dataset = \"events\" }}]\n\
         {extra}\n",
        worker("bindings", guests::BINDINGS, &["/*"])
    );
    let project = Project::new(&config);
    std::fs::write(project.path(".dev.vars"), format!("API_KEY={SECRET}\n")).unwrap();
    project
}

struct Reply {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

async fn send(
    server: &Server,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<reqwest::Body>,
) -> Reply {
    let mut request = client().request(method, server.url(path)).body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    Reply {
        status: response.status(),
        headers: response.headers().clone(),
        body: response.bytes().await.unwrap().to_vec(),
    }
}

async fn get(server: &Server, path: &str) -> Reply {
    send(server, Method::GET, path, &[], Vec::new()).await
}

async fn put(server: &Server, path: &str, body: impl Into<reqwest::Body>) -> Reply {
    send(server, Method::PUT, path, &[], body).await
}

async fn post_json(server: &Server, path: &str, body: &Value) -> Reply {
    send(
        server,
        Method::POST,
        path,
        &[("content-type", "application/json")],
        body.to_string(),
    )
    .await
}

/// Send bytes as they are and return everything the server answers.
async fn raw_request(server: &Server, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

fn expect(reply: &Reply, status: u16) {
    assert_eq!(reply.status.as_u16(), status, "{}", reply.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn kv_operations_metadata_and_pagination() {
    let project = project("");
    let server = project.serve();

    expect(&get(&server, "/kv/missing").await, 404);
    let metadata = "%7B%22owner%22%3A%22ada%22%7D"; // {"owner":"ada"}
    expect(
        &put(
            &server,
            &format!("/kv/greeting?metadata={metadata}"),
            "hello",
        )
        .await,
        204,
    );
    let reply = get(&server, "/kv/greeting").await;
    expect(&reply, 200);
    assert_eq!(reply.text(), "hello");
    assert_eq!(reply.header("x-metadata"), Some(r#"{"owner":"ada"}"#));

    expect(&put(&server, "/kv/config", r#"{"a": [1, 2]}"#).await, 204);
    let reply = get(&server, "/kv/config?type=json").await;
    expect(&reply, 200);
    assert_eq!(reply.json(), json!({"a": [1, 2]}));

    // Binary values round-trip byte for byte.
    let binary: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    expect(&put(&server, "/kv/binary", binary.clone()).await, 204);
    assert_eq!(get(&server, "/kv/binary").await.body, binary);

    // Overwrite, then delete.
    expect(&put(&server, "/kv/greeting", "bye").await, 204);
    assert_eq!(get(&server, "/kv/greeting").await.text(), "bye");
    expect(
        &send(&server, Method::DELETE, "/kv/greeting", &[], Vec::new()).await,
        204,
    );
    expect(&get(&server, "/kv/greeting").await, 404);

    // Seven keys under a prefix, listed three at a time in byte order.
    for i in 0..7 {
        expect(&put(&server, &format!("/kv/page%2F{i}"), "x").await, 204);
    }
    let mut names = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = "/kv?prefix=page%2F&limit=3".to_owned();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = get(&server, &path).await;
        expect(&page, 200);
        let page = page.json();
        pages += 1;
        let keys = page["keys"].as_array().unwrap();
        assert!(keys.len() <= 3, "{page}");
        names.extend(keys.iter().map(|k| k["name"].as_str().unwrap().to_owned()));
        if page["list_complete"] == json!(true) {
            break;
        }
        cursor = Some(page["cursor"].as_str().expect("a cursor").to_owned());
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..7).map(|i| format!("page/{i}")).collect();
    assert_eq!(names, expected);
    // Metadata shows in listings too.
    expect(
        &put(&server, &format!("/kv/meta-key?metadata={metadata}"), "v").await,
        204,
    );
    let listed = get(&server, "/kv?prefix=meta-").await.json();
    assert_eq!(
        listed["keys"][0]["metadata"],
        json!({"owner": "ada"}),
        "{listed}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kv_keys_expire() {
    let project = project("");
    let server = project.serve();
    expect(&put(&server, "/kv/short?ttl=2", "soon gone").await, 204);
    assert_eq!(get(&server, "/kv/short").await.text(), "soon gone");
    expect(&put(&server, "/kv/long?ttl=3600", "stays").await, 204);
    let listed = get(&server, "/kv?prefix=long").await.json();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expiration = listed["keys"][0]["expiration"]
        .as_u64()
        .expect("an expiration");
    assert!((now + 3590..=now + 3600).contains(&expiration), "{listed}");

    tokio::time::sleep(Duration::from_millis(3100)).await;
    expect(&get(&server, "/kv/short").await, 404);
    let listed = get(&server, "/kv").await.json();
    let names: Vec<&str> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["long"], "an expired key was listed");

    // An absolute expiration in the past is refused, not stored.
    let reply = put(&server, "/kv/past?expiration=1000", "x").await;
    expect(&reply, 400);
    assert!(reply.text().starts_with("invalid: "), "{}", reply.text());
    expect(&get(&server, "/kv/past").await, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn kv_limits_give_clear_errors() {
    let project = project("");
    let server = project.serve();
    let long_key = "k".repeat(513);
    let reply = put(&server, &format!("/kv/{long_key}"), "x").await;
    expect(&reply, 400);
    assert!(
        reply.text().contains("513") && reply.text().contains("512"),
        "{}",
        reply.text()
    );
    // A key at the limit is fine.
    expect(
        &put(&server, &format!("/kv/{}", "k".repeat(512)), "x").await,
        204,
    );

    let too_big = vec![b'v'; 25 * 1024 * 1024 + 1];
    let reply = put(&server, "/kv/big", too_big).await;
    expect(&reply, 400);
    assert!(
        reply.text().contains("25 MiB") || reply.text().contains("26214400"),
        "{}",
        reply.text()
    );
    expect(&get(&server, "/kv/big").await, 404);

    let metadata = format!("%22{}%22", "m".repeat(1100));
    let reply = put(&server, &format!("/kv/meta?metadata={metadata}"), "x").await;
    expect(&reply, 400);
    assert!(reply.text().contains("1024"), "{}", reply.text());
    let reply = put(&server, "/kv/meta?metadata=not%20json", "x").await;
    expect(&reply, 400);
    expect(&get(&server, "/kv/meta").await, 404);

    // `.` and `..` as keys: sent raw, since HTTP clients normalise them away.
    for bad in ["..", "."] {
        let head = raw_request(&server, &format!("PUT /kv/{bad} HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\nconnection: close\r\n\r\nx")).await;
        assert!(head.starts_with("HTTP/1.1 400"), "{bad}: {head}");
        assert!(head.contains("invalid: "), "{bad}: {head}");
    }
    // Nothing above disturbed what was stored.
    expect(
        &get(&server, &format!("/kv/{}", "k".repeat(512))).await,
        200,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn d1_statements_batches_and_errors() {
    let project = project("");
    let server = project.serve();
    let exec = send(
        &server,
        Method::POST,
        "/sql/exec",
        &[],
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, score REAL, avatar BLOB);\n\
         CREATE INDEX users_score ON users(score);",
    )
    .await;
    expect(&exec, 200);
    assert_eq!(exec.json()["count"], 2);

    let insert = "INSERT INTO users (name, score, avatar) VALUES (?, ?, ?)";
    let run = post_json(
        &server,
        "/sql/run",
        &json!({"sql": insert, "params": ["ada", 9.5, {"blob": [1, 2, 255]}]}),
    )
    .await;
    expect(&run, 200);
    let meta = &run.json()["meta"];
    assert_eq!(meta["changes"], 1, "{meta}");
    assert_eq!(meta["last_row_id"], 1, "{meta}");
    assert_eq!(meta["rows_written"], 1, "{meta}");
    assert_eq!(meta["changed_db"], true, "{meta}");
    assert!(meta["duration"].as_f64().is_some(), "{meta}");
    expect(
        &post_json(
            &server,
            "/sql/run",
            &json!({"sql": insert, "params": ["grace", 7, null]}),
        )
        .await,
        200,
    );

    let all = post_json(
        &server,
        "/sql/all",
        &json!({"sql": "SELECT id, name, score, avatar FROM users ORDER BY id", "params": []}),
    )
    .await;
    expect(&all, 200);
    let all = all.json();
    assert_eq!(
        all["results"],
        json!([
            {"id": 1, "name": "ada", "score": 9.5, "avatar": {"blob": [1, 2, 255]}},
            {"id": 2, "name": "grace", "score": 7.0, "avatar": null},
        ])
    );
    assert!(all["meta"]["rows_read"].as_u64().unwrap() >= 2, "{all}");
    assert_eq!(all["meta"]["rows_written"], 0, "{all}");

    let first = post_json(
        &server,
        "/sql/first",
        &json!({"sql": "SELECT name FROM users WHERE score > ?1 ORDER BY score", "params": [8]}),
    )
    .await;
    assert_eq!(first.json(), json!({"name": "ada"}));
    let none = post_json(
        &server,
        "/sql/first",
        &json!({"sql": "SELECT name FROM users WHERE id = ?", "params": [99]}),
    )
    .await;
    assert_eq!(none.json(), Value::Null);
    let raw = post_json(
        &server,
        "/sql/raw",
        &json!({"sql": "SELECT id, name FROM users ORDER BY id", "params": []}),
    )
    .await;
    assert_eq!(raw.json(), json!([[1, "ada"], [2, "grace"]]));
    let query = post_json(
        &server,
        "/sql/query",
        &json!({"sql": "SELECT count(*) AS n FROM users", "params": []}),
    )
    .await;
    assert_eq!(query.json()["columns"], json!(["n"]));
    assert_eq!(query.json()["rows"], json!([[2]]));

    // A batch is one transaction: the failing third statement undoes the
    // first two.
    let batch = post_json(
        &server,
        "/sql/batch",
        &json!([
            {"sql": "INSERT INTO users (name) VALUES (?)", "params": ["linus"]},
            {"sql": "UPDATE users SET score = 0", "params": []},
            {"sql": "INSERT INTO users (name) VALUES (?)", "params": ["ada"]},
        ]),
    )
    .await;
    expect(&batch, 502);
    assert!(
        batch
            .text()
            .contains("UNIQUE constraint failed: users.name"),
        "{}",
        batch.text()
    );
    let after = post_json(
        &server,
        "/sql/raw",
        &json!({"sql": "SELECT name, score FROM users ORDER BY id", "params": []}),
    )
    .await;
    assert_eq!(after.json(), json!([["ada", 9.5], ["grace", 7.0]]));

    // A good batch applies every statement and returns each result.
    let batch = post_json(
        &server,
        "/sql/batch",
        &json!([
            {"sql": "INSERT INTO users (name) VALUES (?)", "params": ["linus"]},
            {"sql": "SELECT count(*) AS n FROM users", "params": []},
        ]),
    )
    .await;
    expect(&batch, 200);
    assert_eq!(batch.json()[1]["results"], json!([{"n": 3}]));

    // SQL errors are the guest's to handle, with SQLite's message.
    let reply = post_json(
        &server,
        "/sql/all",
        &json!({"sql": "SELEC nonsense", "params": []}),
    )
    .await;
    expect(&reply, 502);
    assert!(reply.text().contains("syntax error"), "{}", reply.text());
    let reply = post_json(
        &server,
        "/sql/all",
        &json!({"sql": "SELECT * FROM nowhere", "params": []}),
    )
    .await;
    expect(&reply, 502);
    assert!(
        reply.text().contains("no such table: nowhere"),
        "{}",
        reply.text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_writers_lose_nothing() {
    let project = project("");
    let server = project.serve();
    expect(
        &send(&server, Method::POST, "/counter", &[], Vec::new()).await,
        200,
    );
    let server = &server;
    let counters = (0..50).map(|_| async move {
        let reply = send(server, Method::POST, "/counter", &[], Vec::new()).await;
        expect(&reply, 200);
        reply.text().parse::<u64>().unwrap()
    });
    let kv_puts = (0..50).map(|i| async move {
        expect(
            &put(server, &format!("/kv/concurrent-{i:02}"), format!("{i}")).await,
            204,
        );
    });
    let (mut seen, _) = tokio::join!(
        join_all(counters.collect::<Vec<_>>()),
        join_all(kv_puts.collect::<Vec<_>>())
    );
    seen.sort();
    // Every increment saw a distinct value: none was lost or doubled.
    assert_eq!(seen, (2..=51).collect::<Vec<_>>());
    let listed = get(server, "/kv?prefix=concurrent-").await.json();
    assert_eq!(listed["keys"].as_array().unwrap().len(), 50, "{listed}");
    for i in [0, 17, 49] {
        assert_eq!(
            get(server, &format!("/kv/concurrent-{i:02}")).await.text(),
            i.to_string()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn r2_streams_ranges_metadata_and_listing() {
    let project = project("");
    let server = project.serve();

    // 5 MiB streamed in, then out, with its MD5 as the ETag.
    let body: Vec<u8> = (0..5 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let reply = send(
        &server,
        Method::PUT,
        "/r2/photos/cat.bin",
        &[("content-type", "image/x-cat"), ("x-meta-owner", "ada")],
        body.clone(),
    )
    .await;
    expect(&reply, 200);
    let object = reply.json();
    let md5 = md5_hex(&body);
    assert_eq!(object["etag"], md5.as_str(), "{object}");
    assert_eq!(object["size"], body.len());
    assert_eq!(object["custom_metadata"], json!({"owner": "ada"}));

    let reply = get(&server, "/r2/photos/cat.bin").await;
    expect(&reply, 200);
    assert!(reply.body == body, "the body changed on the way");
    assert_eq!(
        reply.header("etag").map(|e| e.trim_matches('"')),
        Some(md5.as_str())
    );
    assert_eq!(reply.header("content-type"), Some("image/x-cat"));
    assert_eq!(reply.header("x-meta-owner"), Some("ada"));

    for (range, expected) in [
        ("bytes=10-19", &body[10..20]),
        ("bytes=5242870-", &body[5_242_870..]),
        ("bytes=-7", &body[body.len() - 7..]),
    ] {
        let reply = send(
            &server,
            Method::GET,
            "/r2/photos/cat.bin",
            &[("range", range)],
            Vec::new(),
        )
        .await;
        expect(&reply, 206);
        assert_eq!(reply.body, expected, "{range}");
    }

    let head = send(&server, Method::HEAD, "/r2/photos/cat.bin", &[], Vec::new()).await;
    expect(&head, 200);
    assert_eq!(head.header("content-length"), Some("5242880"));
    assert_eq!(
        head.header("etag").map(|e| e.trim_matches('"')),
        Some(md5.as_str())
    );
    assert_eq!(head.header("x-meta-owner"), Some("ada"));
    assert!(head.body.is_empty());
    expect(
        &send(&server, Method::HEAD, "/r2/photos/dog.bin", &[], Vec::new()).await,
        404,
    );
    expect(&get(&server, "/r2/photos/dog.bin").await, 404);

    for key in [
        "photos/dog.bin",
        "photos/2024/a.jpg",
        "photos/2024/b.jpg",
        "notes.txt",
    ] {
        expect(
            &put(&server, &format!("/r2/{key}"), key.to_owned()).await,
            200,
        );
    }
    let listed = get(&server, "/r2?prefix=photos%2F&delimiter=%2F")
        .await
        .json();
    let keys: Vec<&str> = listed["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["photos/cat.bin", "photos/dog.bin"], "{listed}");
    assert_eq!(listed["delimited_prefixes"], json!(["photos/2024/"]));

    // Pagination over the whole bucket, two at a time.
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let mut path = "/r2?limit=2".to_owned();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={}", urlencode(c)));
        }
        let page = get(&server, &path).await.json();
        all.extend(
            page["objects"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["key"].as_str().unwrap().to_owned()),
        );
        if page["truncated"] == json!(false) {
            break;
        }
        cursor = Some(page["cursor"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        all,
        [
            "notes.txt",
            "photos/2024/a.jpg",
            "photos/2024/b.jpg",
            "photos/cat.bin",
            "photos/dog.bin"
        ]
    );

    expect(
        &send(
            &server,
            Method::DELETE,
            "/r2/photos/cat.bin",
            &[],
            Vec::new(),
        )
        .await,
        204,
    );
    expect(&get(&server, "/r2/photos/cat.bin").await, 404);

    // Keys that would escape the bucket are refused.
    for bad in [
        "..%2Fescape",
        "a%2F..%2F..%2Fb",
        "%2Fabsolute",
        "nul%00byte",
    ] {
        let reply = put(&server, &format!("/r2/{bad}"), "x").await;
        expect(&reply, 400);
        assert!(
            reply.text().starts_with("invalid: "),
            "{bad}: {}",
            reply.text()
        );
    }
    let escaped = project.dir.path().join(".isola/r2/escape");
    assert!(!escaped.exists());
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn md5_hex(data: &[u8]) -> String {
    let output = std::process::Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(data)?;
            child.wait_with_output()
        })
        .expect("md5sum");
    String::from_utf8(output.stdout).unwrap()[..32].to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_api_honours_cache_control_and_vary() {
    let project = project("");
    let server = project.serve();

    let first = get(&server, "/cached/a?cc=max-age%3D60").await;
    expect(&first, 200);
    assert_eq!(first.header("x-cache"), Some("miss"));
    assert_eq!(first.header("x-stored"), Some("true"));
    let second = get(&server, "/cached/a?cc=max-age%3D60").await;
    assert_eq!(second.header("x-cache"), Some("hit"));
    assert_eq!(second.text(), first.text());

    // Not stored: no-store, private, no freshness at all.
    for cc in ["no-store", "private%2C%20max-age%3D60", "public"] {
        let path = format!("/cached/b?cc={cc}");
        assert_eq!(
            get(&server, &path).await.header("x-stored"),
            Some("false"),
            "{cc}"
        );
        assert_eq!(
            get(&server, &path).await.header("x-cache"),
            Some("miss"),
            "{cc}"
        );
    }

    // s-maxage wins over max-age; an expired entry is not returned.
    let path = "/cached/c?cc=max-age%3D600%2C%20s-maxage%3D1";
    assert_eq!(get(&server, path).await.header("x-stored"), Some("true"));
    assert_eq!(get(&server, path).await.header("x-cache"), Some("hit"));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(get(&server, path).await.header("x-cache"), Some("miss"));

    // Vary: a different Accept-Language is a different entry.
    let path = "/cached/d?cc=max-age%3D60&vary=accept-language";
    let english = send(
        &server,
        Method::GET,
        path,
        &[("accept-language", "en")],
        Vec::new(),
    )
    .await;
    assert_eq!(english.header("x-cache"), Some("miss"));
    let again = send(
        &server,
        Method::GET,
        path,
        &[("accept-language", "en")],
        Vec::new(),
    )
    .await;
    assert_eq!(again.header("x-cache"), Some("hit"));
    assert_eq!(again.text(), english.text());
    let french = send(
        &server,
        Method::GET,
        path,
        &[("accept-language", "fr")],
        Vec::new(),
    )
    .await;
    assert_eq!(french.header("x-cache"), Some("miss"));

    // Delete.
    let deleted = send(
        &server,
        Method::DELETE,
        "/cached/a?cc=max-age%3D60",
        &[],
        Vec::new(),
    )
    .await;
    assert_eq!(deleted.text(), "true");
    let deleted = send(
        &server,
        Method::DELETE,
        "/cached/a?cc=max-age%3D60",
        &[],
        Vec::new(),
    )
    .await;
    assert_eq!(deleted.text(), "false");
    assert_eq!(
        get(&server, "/cached/a?cc=max-age%3D60")
            .await
            .header("x-cache"),
        Some("miss")
    );

    // Vary: * cannot be cached: an error the guest sees.
    let reply = get(&server, "/cached/e?cc=max-age%3D60&vary=*").await;
    expect(&reply, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_is_bounded_by_its_size_cap() {
    let project = project_with(
        "[backends]\ncache = { type = \"memory\", max_mb = 1 }\n",
        "",
    );
    let server = project.serve();
    // Each generated body is tiny, so fill the cache with many URLs: the
    // oldest fall out once 1 MiB of entries (URL + headers + body) is held.
    // (Request heads are capped at 8 KiB, so many 3 KB URLs.)
    let long = "x".repeat(3000);
    for i in 0..500 {
        let reply = get(&server, &format!("/cached/{i}-{long}?cc=max-age%3D600")).await;
        assert_eq!(reply.header("x-stored"), Some("true"));
    }
    let newest = get(&server, &format!("/cached/499-{long}?cc=max-age%3D600")).await;
    assert_eq!(newest.header("x-cache"), Some("hit"));
    let oldest = get(&server, &format!("/cached/0-{long}?cc=max-age%3D600")).await;
    assert_eq!(
        oldest.header("x-cache"),
        Some("miss"),
        "the LRU entry was not evicted"
    );
}

/// A Rust guest with 16 MiB of memory stores 64 MiB in the cache, made
/// and written chunk by chunk, and serves it from the cache streamed: the
/// client gets every byte. A body over the cache's limit is refused with
/// the reason and nothing of it is stored.
#[tokio::test(flavor = "multi_thread")]
async fn cache_bodies_larger_than_the_guest_memory_stream_both_ways() {
    let project = project_with(
        "[backends]\ncache = { type = \"memory\", max_mb = 80 }\n",
        "memory_mb = 16\n",
    );
    let server = project.serve();
    let stored = get(&server, "/cached-big/a?mib=64").await;
    expect(&stored, 200);
    assert_eq!(
        (stored.header("x-cache"), stored.header("x-stored")),
        (Some("miss"), Some("true"))
    );
    let hit = get(&server, "/cached-big/a?mib=64").await;
    expect(&hit, 200);
    assert_eq!(hit.header("x-cache"), Some("hit"));
    assert_eq!(hit.body.len(), 64 << 20);
    let wrong = hit
        .body
        .iter()
        .enumerate()
        .position(|(i, &b)| b != 33 + (i % 89) as u8);
    assert_eq!(wrong, None, "the first byte that differs");

    // Over the 80 MiB cache: a clear error, and no entry.
    let over = get(&server, "/cached-big/b?mib=96").await;
    expect(&over, 400);
    assert!(
        over.text().contains("over the cache's limit")
            && over.text().contains("nothing was stored"),
        "{}",
        over.text()
    );
    let after = get(&server, "/cached-big/b?mib=1").await;
    assert_eq!(after.header("x-cache"), Some("miss"), "nothing was stored");
}

#[tokio::test(flavor = "multi_thread")]
async fn analytics_points_are_queryable_from_the_cli() {
    let project = project("");
    let server = project.serve();
    for (city, temp) in [("paris", 11.5), ("oslo", -3.0), ("paris", 12.5)] {
        let reply = post_json(
            &server,
            "/analytics",
            &json!({"blobs": [city, "sensor"], "doubles": [temp, 1], "indexes": [city]}),
        )
        .await;
        expect(&reply, 204);
    }
    let reply = post_json(
        &server,
        "/analytics",
        &json!({"blobs": (0..21).map(|i| i.to_string()).collect::<Vec<_>>(), "doubles": [], "indexes": []}),
    )
    .await;
    expect(&reply, 400);
    assert!(reply.text().contains("20"), "{}", reply.text());

    let output = run_isola(&[
        "analytics",
        "--config",
        project.config().to_str().unwrap(),
        "query",
        "SELECT blob1 AS city, SUM(double1) AS total, COUNT(*) AS n FROM events GROUP BY blob1 ORDER BY blob1",
    ]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    let lines: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines,
        [
            json!({"city": "oslo", "total": -3.0, "n": 1}),
            json!({"city": "paris", "total": 24.0, "n": 2}),
        ]
    );
    // The query is read-only.
    let output = run_isola(&[
        "analytics",
        "--config",
        project.config().to_str().unwrap(),
        "query",
        "DELETE FROM events",
    ]);
    assert!(!output.status.success());
    drop(server);
}

#[tokio::test(flavor = "multi_thread")]
async fn state_survives_kill_9() {
    let project = project("");
    let mut server = project.serve();
    expect(&put(&server, "/kv/durable", "still here").await, 204);
    expect(
        &send(&server, Method::POST, "/counter", &[], Vec::new()).await,
        200,
    );
    expect(
        &send(&server, Method::POST, "/counter", &[], Vec::new()).await,
        200,
    );
    expect(&put(&server, "/r2/kept.txt", "object body").await, 200);

    let status = std::process::Command::new("kill")
        .args(["-KILL", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    server.wait(Duration::from_secs(10));

    let server = project.serve();
    assert_eq!(get(&server, "/kv/durable").await.text(), "still here");
    let reply = send(&server, Method::POST, "/counter", &[], Vec::new()).await;
    assert_eq!(reply.text(), "3");
    assert_eq!(get(&server, "/r2/kept.txt").await.text(), "object body");
}

#[tokio::test(flavor = "multi_thread")]
async fn binding_calls_count_against_the_subrequest_budget() {
    let project = project("subrequests = 5");
    let server = project.serve();
    let reply = get(&server, "/budget?n=8").await;
    expect(&reply, 200);
    let result = reply.json();
    assert_eq!(result["ok"], 5, "{result}");
    let error = result["error"].as_str().unwrap();
    assert!(error.starts_with("subrequest-limit: "), "{error}");
    assert!(error.contains('5'), "{error}");
    // The access line counts them.
    let logs = server.wait_for_log("subrequests=5");
    assert!(logs.contains("isola::access"), "{logs}");
    // Each request has its own budget.
    assert_eq!(get(&server, "/budget?n=5").await.json()["ok"], 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_reach_the_guest_but_never_the_logs() {
    let project = project("");
    let server = project.serve();
    let reply = get(&server, "/secret").await;
    expect(&reply, 200);
    assert_eq!(reply.text(), SECRET.len().to_string());
    expect(&get(&server, "/secret/log").await, 200);
    expect(&get(&server, "/secret/fail").await, 500);
    server.wait_for_log("failed with key");
    let logs = server.stop();
    assert!(logs.contains("the key is [secret]"), "{logs}");
    assert!(
        !logs.contains(SECRET),
        "a secret value reached the logs:\n{logs}"
    );

    // The environment wins over `.dev.vars`.
    let server = Server::start_in(
        project.dir.path(),
        &["serve", "isola.toml", "--listen", "127.0.0.1:0"],
        &[("ISOLA_SECRET_API_KEY", "from-env")],
    );
    assert_eq!(get(&server, "/secret").await.text(), "8");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_secret_fails_start_up() {
    let project = project("");
    std::fs::remove_file(project.path(".dev.vars")).unwrap();
    for command in ["serve", "check"] {
        let output = run_isola(&[command, project.config().to_str().unwrap()]);
        assert!(
            !output.status.success(),
            "{command} started without its secret"
        );
        let stderr = stderr_of(&output);
        assert!(
            stderr.contains(
                "worker[0].secrets: secret `API_KEY` has no value: set $ISOLA_SECRET_API_KEY"
            ),
            "{command}: {stderr}"
        );
    }
    // An unbound name is a clear error to the guest, not a trap.
    let bare = Project::new(&worker("bindings", guests::BINDINGS, &["/*"]));
    let server = bare.serve();
    let reply = get(&server, "/kv/x").await;
    expect(&reply, 400);
    assert!(
        reply.text().contains("no KV namespace is bound as `KV`"),
        "{}",
        reply.text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn operators_seed_and_inspect_state_from_the_cli() {
    let project = project("");
    let config = project.config();
    let config = config.to_str().unwrap();
    let migrations = project.path("migrations.sql");
    std::fs::write(
        &migrations,
        "CREATE TABLE posts (id INTEGER PRIMARY KEY, title TEXT);\nINSERT INTO posts (title) VALUES ('seeded');\n",
    )
    .unwrap();
    let ok = |args: &[&str]| {
        let output = run_isola(args);
        assert!(output.status.success(), "{args:?}: {}", stderr_of(&output));
        String::from_utf8(output.stdout).unwrap()
    };
    ok(&[
        "sql",
        "--config",
        config,
        "DB",
        "--file",
        migrations.to_str().unwrap(),
    ]);
    ok(&[
        "kv",
        "--config",
        config,
        "put",
        "KV",
        "seeded-key",
        "seeded value",
        "--metadata",
        r#"{"by":"cli"}"#,
    ]);

    // The worker sees what the CLI wrote...
    let server = project.serve();
    let rows = post_json(
        &server,
        "/sql/raw",
        &json!({"sql": "SELECT title FROM posts", "params": []}),
    )
    .await;
    assert_eq!(rows.json(), json!([["seeded"]]));
    assert_eq!(get(&server, "/kv/seeded-key").await.text(), "seeded value");
    // ...and the CLI sees what the worker writes, while it runs.
    expect(&put(&server, "/kv/from-worker", "w").await, 204);
    assert_eq!(
        ok(&["kv", "--config", config, "get", "test-kv", "from-worker"]),
        "w"
    );
    let listed: Value =
        serde_json::from_str(&ok(&["kv", "--config", config, "list", "KV"])).unwrap();
    assert_eq!(
        listed,
        json!([{"name": "from-worker"}, {"name": "seeded-key", "metadata": {"by": "cli"}}])
    );
    let out = ok(&[
        "sql",
        "--config",
        config,
        "test",
        "SELECT count(*) AS n FROM posts",
    ]);
    assert_eq!(out.trim(), r#"{"n":1}"#);

    // Errors are clear.
    let output = run_isola(&["kv", "--config", config, "get", "KV", "absent"]);
    assert!(!output.status.success());
    assert!(stderr_of(&output).contains("key `absent` not found"));
    let output = run_isola(&["sql", "--config", config, "nope", "SELECT 1"]);
    assert!(stderr_of(&output).contains("no D1 database has the name or binding `nope`"));
    let output = run_isola(&["sql", "--config", config, "DB", "SELEC 1"]);
    assert!(
        stderr_of(&output).contains("syntax error"),
        "{}",
        stderr_of(&output)
    );
}
