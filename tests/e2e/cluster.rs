//! Several Isola nodes sharing Redis, PostgreSQL and S3 (moto): two
//! `isola serve` processes on their own ports and state dirs, with one
//! `[backends]` section. Each test starts its own Redis; PostgreSQL and
//! moto are shared by the tests of this process (a database and a bucket
//! of their own per test). Servers run on 127.0.0.1 and are stopped by PID.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use isola_backends::queue::QueueStore;
use isola_test_programs as guests;
use isola_test_services::{self as test_services, Redis};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Project, Server, client, now_ms, run_isola, stderr_of, worker};

/// A `[backends]` section on `redis` (kv, cache, queue), the shared
/// PostgreSQL (sql) and a fresh bucket on the shared moto (blob).
fn backends(redis: &Redis) -> String {
    let s3 = test_services::shared_s3();
    let bucket = test_services::unique("cluster");
    s3.create_bucket(&bucket);
    format!(
        "[backends]\n\
         kv = {{ type = \"redis\", url = \"{redis}\" }}\n\
         cache = {{ type = \"redis\", url = \"{redis}\" }}\n\
         queue = {{ type = \"redis\", url = \"{redis}\" }}\n\
         sql = {{ type = \"postgres\", url = \"{pg}\" }}\n\
         blob = {{ type = \"s3\", endpoint = \"{endpoint}\", region = \"us-east-1\", bucket = \"{bucket}\" }}\n",
        redis = redis.url(),
        pg = test_services::shared_postgres().url(),
        endpoint = s3.endpoint(),
    )
}

/// The S3 credentials, and `isola::trigger` at debug: a node logs each
/// cron firing it competed for and another node took.
const NODE_ENV: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", test_services::S3_KEY_ID),
    ("AWS_SECRET_ACCESS_KEY", test_services::S3_SECRET),
    ("ISOLA_LOG", "info,isola::trigger=debug"),
];

/// One node: its own directory (and so its own state dir and compile
/// cache) holding `config`.
fn node(config: &str) -> (Project, Server) {
    let project = Project::new(config);
    std::fs::write(project.path(".dev.vars"), "API_KEY=secret\n").unwrap();
    let server = Server::start_in(
        project.dir.path(),
        &["serve", "isola.toml", "--listen", "127.0.0.1:0"],
        &NODE_ENV,
    );
    (project, server)
}

/// The `bindings` guest with KV, D1 (a database of its own on the shared
/// PostgreSQL) and R2.
fn bindings_config(backends: &str) -> String {
    let database = test_services::unique("cluster").replace('-', "_");
    format!(
        "{backends}\n{}cpu_ms = 2000\nsecrets = [\"API_KEY\"]\n\
         kv_namespaces = [{{ binding = \"KV\", id = \"shared\" }}]\n\
         d1_databases = [{{ binding = \"DB\", database_name = \"{database}\" }}]\n\
         r2_buckets = [{{ binding = \"BUCKET\", bucket_name = \"uploads\" }}]\n\
         analytics_engine_datasets = [{{ binding = \"EVENTS\", dataset = \"events\" }}]\n",
        worker("bindings", guests::BINDINGS, &["/*"])
    )
}

async fn request(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, String) {
    let response = client()
        .request(method, server.url(path))
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}\nlogs:\n{}", server.logs()));
    let status = response.status();
    (status, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn two_nodes_share_kv_sql_and_objects() {
    let redis = Redis::start();
    let config = bindings_config(&backends(&redis));
    let (_a_dir, a) = node(&config);
    let (_b_dir, b) = node(&config);
    use reqwest::Method;

    // KV: written through A, read through B.
    let (status, _) = request(&a, Method::PUT, "/kv/greeting", "hello from A").await;
    assert!(status.is_success(), "{status}: {}", a.logs());
    let (status, body) = request(&b, Method::GET, "/kv/greeting", "").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "hello from A"));

    // SQL: a counter bumped 100 times, half through each node, at once.
    let (status, body) = request(
        &a,
        Method::POST,
        "/sql/exec",
        "CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL);
         INSERT INTO counter (id, n) VALUES (1, 0)",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let bump =
        json!({ "sql": "UPDATE counter SET n = n + 1 WHERE id = ? RETURNING n", "params": [1] })
            .to_string();
    let bumps = (0..100).map(|i| {
        let (server, bump) = (if i % 2 == 0 { &a } else { &b }, bump.clone());
        async move {
            let (status, body) = request(server, Method::POST, "/sql/first", bump).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            serde_json::from_str::<Value>(&body).unwrap()["n"]
                .as_i64()
                .unwrap()
        }
    });
    let seen: BTreeSet<i64> = join_all(bumps).await.into_iter().collect();
    assert_eq!(
        seen,
        (1..=100).collect(),
        "each increment saw its own value"
    );
    let read = json!({ "sql": "SELECT n FROM counter WHERE id = 1" }).to_string();
    let (_, body) = request(&b, Method::POST, "/sql/first", read).await;
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["n"], 100);

    // R2: put through A, listed and read through B.
    let response = client()
        .put(a.url("/r2/docs/report.txt"))
        .header("content-type", "text/plain")
        .body("quarterly numbers")
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{}",
        response.text().await.unwrap()
    );
    let (status, body) = request(&b, Method::GET, "/r2?prefix=docs/&delimiter=/", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let listing: Value = serde_json::from_str(&body).unwrap();
    let keys: Vec<&str> = listing["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["docs/report.txt"], "{listing}");
    let response = client()
        .get(b.url("/r2/docs/report.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/plain");
    assert_eq!(response.text().await.unwrap(), "quarterly numbers");

    // Cache API: stored through A, a hit through B (same Host, same URL).
    let cached = |server: &Server| {
        client()
            .get(server.url("/cached/page?cc=max-age%3D60"))
            .header("host", "app.test")
            .send()
    };
    let miss = cached(&a).await.unwrap();
    assert_eq!(miss.headers()["x-cache"], "miss");
    assert_eq!(miss.headers()["x-stored"], "true");
    let generated = miss.text().await.unwrap();
    let hit = cached(&b).await.unwrap();
    assert_eq!(hit.headers()["x-cache"], "hit");
    assert_eq!(hit.text().await.unwrap(), generated);
}

/// The `triggers` guest (consumer of `jobs`, crons) on shared backends.
fn triggers_config(backends: &str, extra: &str) -> String {
    format!(
        "{backends}\n{}cpu_ms = 500\nwall_ms = 2000\n\
         kv_namespaces = [{{ binding = \"KV\", id = \"triggers\" }}]\n\
         queues.producers = [{{ binding = \"JOBS\", queue = \"jobs\" }}]\n{extra}\n",
        worker("triggers", guests::TRIGGERS, &["/*"])
    )
}

const CONSUMER: &str = "queues.consumers = [{ queue = \"jobs\", max_batch_size = 5, max_batch_timeout = 1, max_retries = 2, dead_letter_queue = \"jobs-dlq\" }]";

/// The attempts each of messages `0..n` was processed with (`msg:<k>` in
/// KV), once all are there, read through `server`.
async fn processed(server: &Server, n: usize, within: Duration) -> Vec<u32> {
    let deadline = Instant::now() + within;
    let mut attempts = BTreeMap::new();
    while attempts.len() < n {
        for k in 0..n {
            if attempts.contains_key(&k) {
                continue;
            }
            let (status, body) =
                request(server, reqwest::Method::GET, &format!("/kv/msg:{k}"), "").await;
            if status == StatusCode::OK {
                attempts.insert(k, body.parse::<u32>().unwrap());
            }
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {n} messages were processed:\n{}",
            attempts.len(),
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    attempts.into_values().collect()
}

async fn queue_depth(redis: &Redis, queue: &str) -> u64 {
    let conn = isola_backends::remote::redis_connection(&redis.url())
        .await
        .unwrap();
    isola_backends::queue::redis::RedisQueues::new(conn)
        .depth(queue)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_messages_are_consumed_once_across_nodes() {
    let redis = Redis::start();
    let config = triggers_config(&backends(&redis), CONSUMER);
    let (_a_dir, a) = node(&config);
    let (_b_dir, b) = node(&config);
    let (status, body) = request(&a, reqwest::Method::POST, "/send?n=200", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let attempts = processed(&b, 200, Duration::from_secs(60)).await;
    assert!(
        attempts.iter().all(|&n| n == 1),
        "every message once, at its first delivery: {attempts:?}"
    );
    // A batch is acked (and logged) after its handler wrote to KV: wait
    // for the last acks.
    let deadline = Instant::now() + Duration::from_secs(20);
    while queue_depth(&redis, "jobs").await > 0 {
        assert!(Instant::now() < deadline, "messages left on the queue");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Delivered exactly once across the two nodes: a duplicate would show
    // here even with `attempts = 1` (each node leases its own batches).
    let (on_a, on_b) = (
        messages_delivered(&a.flushed_logs()),
        messages_delivered(&b.flushed_logs()),
    );
    assert_eq!(on_a + on_b, 200, "deliveries: A {on_a}, B {on_b}");
}

/// Messages in the queue batches a node finished (`messages=N`).
fn messages_delivered(logs: &str) -> usize {
    logs.lines()
        .filter(|l| l.contains("queue batch finished"))
        .filter_map(|l| {
            let rest = &l[l.find(" messages=")? + " messages=".len()..];
            rest.split_whitespace().next()?.parse::<usize>().ok()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn no_message_is_lost_when_a_node_is_killed_holding_messages() {
    let redis = Redis::start();
    let config = triggers_config(&backends(&redis), CONSUMER);
    let conn = isola_backends::remote::redis_connection(&redis.url())
        .await
        .unwrap();
    let queues = isola_backends::queue::redis::RedisQueues::new(conn);
    // Kill A while it holds leased messages. Batches are quick, so A may
    // finish one between the check and the kill: then a new A tries again
    // (bounded), on what is left.
    let mut a_dirs = Vec::new();
    let mut held = 0;
    for attempt in 0..5 {
        let (a_dir, mut a) = node(&config);
        a_dirs.push(a_dir);
        if attempt == 0 {
            let (status, body) = request(&a, reqwest::Method::POST, "/send?n=200", "").await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while queues.in_flight("jobs").await.unwrap() == 0 {
            assert!(Instant::now() < deadline, "A never leased a message");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let status = std::process::Command::new("kill")
            .args(["-KILL", &a.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        a.wait(Duration::from_secs(10));
        held = queues.in_flight("jobs").await.unwrap();
        if held > 0 {
            break;
        }
    }
    assert!(
        held > 0,
        "A was killed holding no message five times; the test proves nothing"
    );

    // B takes over: the rest, and A's messages once their leases run out.
    let (_b_dir, b) = node(&config);
    let attempts = processed(&b, 200, Duration::from_secs(60)).await;
    let again = attempts.iter().filter(|&&n| n > 1).count() as u64;
    assert!(
        again <= held,
        "only the {held} messages A held may be processed twice, not {again}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while queue_depth(&redis, "jobs").await > 0 {
        assert!(
            Instant::now() < deadline,
            "messages left on the queue; B's logs:\n{}",
            b.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The `due_ms` field of a log line.
fn due_ms(line: &str) -> Option<u64> {
    let tail = &line[line.find(" due_ms=")? + 8..];
    tail[..tail.find(' ').unwrap_or(tail.len())].parse().ok()
}

/// The `due_ms` of every log line of `logs` containing `message`.
fn due_times(logs: &str, message: &str) -> Vec<u64> {
    logs.lines()
        .filter(|l| l.contains(message))
        .map(|l| due_ms(l).expect("due_ms in the line"))
        .collect()
}

/// `due_ms` of every scheduled run a node's log reports.
fn firings(logs: &str) -> Vec<u64> {
    due_times(logs, "scheduled run finished")
}

/// `due_ms` of every firing a node competed for and lost to another node.
fn lost(logs: &str) -> Vec<u64> {
    due_times(logs, "another node runs this firing")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cron_firing_runs_on_exactly_one_node() {
    let redis = Redis::start();
    let config = triggers_config(&backends(&redis), "triggers.crons = [\"* * * * * *\"]");
    let (_a_dir, a) = node(&config);
    let (_b_dir, b) = node(&config);
    let started = now_ms();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (on_a, on_b) = (firings(&a.flushed_logs()), firings(&b.flushed_logs()));
    let both: BTreeSet<u64> = on_a.iter().chain(&on_b).copied().collect();
    assert_eq!(
        both.len(),
        on_a.len() + on_b.len(),
        "a firing ran twice: A {on_a:?}, B {on_b:?}"
    );
    // Every second since both were up fired somewhere.
    let window: Vec<u64> = both
        .iter()
        .copied()
        .filter(|&t| t > started + 1000)
        .collect();
    assert!(window.len() >= 3, "A {on_a:?}, B {on_b:?}");
    for pair in window.windows(2) {
        assert_eq!(pair[1] - pair[0], 1000, "a firing is missing: {window:?}");
    }
    // Both nodes competed for each of those firings: the one that did not
    // run it tried to take its lease and was told another node had it.
    for &due in &window {
        let (winner, loser) = if on_a.contains(&due) {
            (&a, &b)
        } else {
            (&b, &a)
        };
        let logs = loser.wait_for_line(|l| {
            l.contains("another node runs this firing") && due_ms(l) == Some(due)
        });
        assert!(
            !firings(&logs).contains(&due),
            "the losing node ran {due} too"
        );
        assert!(
            !lost(&winner.logs()).contains(&due),
            "the node that ran {due} was also told another node had it"
        );
    }
}

/// With Redis down a node cannot take a firing's lease: the firing is
/// skipped and logged, never run without the lease, the node keeps
/// serving, and firings resume once Redis is back.
#[tokio::test(flavor = "multi_thread")]
async fn a_cron_firing_is_skipped_while_redis_is_down() {
    let mut redis = Redis::start();
    let config = format!(
        "{}{}",
        triggers_config(&backends(&redis), "triggers.crons = [\"* * * * * *\"]"),
        worker("hello", guests::EXAMPLE_HELLO, &["hello.test/*"])
    );
    let (_dir, server) = node(&config);
    server.wait_for_log_within("scheduled run finished", Duration::from_secs(20));

    redis.stop();
    let logs = server.wait_for_log_within(
        "firing skipped: cannot take its lease",
        Duration::from_secs(30),
    );
    let skipped = due_times(&logs, "firing skipped: cannot take its lease");
    // The node keeps serving (a worker that needs no Redis).
    let response = client()
        .get(server.url("/"))
        .header("host", "hello.test")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "Hello from Isola!\n");

    redis.restart();
    let last_skipped = *skipped.iter().max().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let logs = loop {
        let logs = server.logs();
        if firings(&logs).iter().any(|&t| t > last_skipped) {
            break logs;
        }
        assert!(
            Instant::now() < deadline,
            "firings never resumed after Redis came back:\n{logs}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // No skipped firing ran (or failed) anyway, without its lease.
    let skipped = due_times(&logs, "firing skipped: cannot take its lease");
    for line in logs.lines().filter(|l| l.contains("scheduled run")) {
        assert!(
            !due_ms(line).is_some_and(|t| skipped.contains(&t)),
            "a skipped firing ran: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_outage_is_a_guest_error_and_service_recovers() {
    let mut redis = Redis::start();
    // The `bindings` guest handles binding errors (502 with the error);
    // the `triggers` guest, on host `unhandled.test`, does not.
    let config = format!(
        "{}{}kv_namespaces = [{{ binding = \"KV\", id = \"shared\" }}]\n\
         queues.producers = [{{ binding = \"JOBS\", queue = \"jobs\" }}]\n",
        bindings_config(&backends(&redis)),
        worker("unhandled", guests::TRIGGERS, &["unhandled.test/*"])
    );
    let (_dir, server) = node(&config);
    use reqwest::Method;
    let (status, _) = request(&server, Method::PUT, "/kv/k", "before").await;
    assert!(status.is_success());
    let unhandled = || async {
        let response = client()
            .get(server.url("/kv/k"))
            .header("host", "unhandled.test")
            .send()
            .await
            .unwrap();
        let reason = response
            .headers()
            .get("x-isola-error")
            .map(|v| v.to_str().unwrap().to_owned());
        (response.status(), reason, response.text().await.unwrap())
    };
    let (status, _, body) = unhandled().await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "before"));

    redis.stop();
    // The guest sees a backend error (this guest answers 502 with it).
    let (status, body) = request(&server, Method::GET, "/kv/k", "").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.contains("backend") && body.contains("redis"), "{body}");
    // A guest that lets it propagate fails with 503 `backend`.
    let (status, reason, body) = unhandled().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(reason.as_deref(), Some("backend"));
    // SQL and R2 do not depend on Redis and keep working.
    let (status, body) = request(&server, Method::POST, "/sql/exec", "SELECT 1").await;
    assert_eq!(status, StatusCode::OK, "{body}");

    redis.restart();
    // Reconnected by itself (the new server is empty: no persistence).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _) = request(&server, Method::PUT, "/kv/k", "after").await;
        if status.is_success() {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery:\n{}", server.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, body) = request(&server, Method::GET, "/kv/k", "").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "after"));
}

#[test]
fn an_unreachable_backend_stops_start_up_with_its_url_redacted() {
    let port = test_services::free_port();
    let project = Project::new(&format!(
        "[backends]\nkv = {{ type = \"redis\", url = \"redis://isola:hunter2@127.0.0.1:{port}\" }}\n{}",
        worker("bindings", guests::BINDINGS, &["/*"])
    ));
    let out = run_isola(&["check", project.config().to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(
        err.contains(&format!(
            "backends.kv: cannot connect to redis://isola:***@127.0.0.1:{port}"
        )),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
}
