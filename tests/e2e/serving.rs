//! Serving requests: examples, routing, isolation, concurrency, shutdown.

use std::time::Duration;

use isola_test_programs as guests;

use crate::support::{Project, Server, cache_entries, client, get, worker};

#[tokio::test(flavor = "multi_thread")]
async fn hello_answers_and_echoes_method_path_and_body() {
    let project = Project::new(&worker("hello", guests::EXAMPLE_HELLO, &["/*"]));
    let server = project.serve();
    let client = client();

    let (status, id, body) = get(&client, &server.url("/")).await;
    assert_eq!((status, body.as_str()), (200, "Hello from Isola!\n"));
    let id = id.expect("x-request-id on every response");
    assert_eq!(id.len(), 16);

    let response = client
        .post(server.url("/echo/this?x=1&y=two"))
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
    assert_eq!(
        response.text().await.unwrap(),
        "POST /echo/this?x=1&y=two\npayload"
    );

    let (_, other_id, _) = get(&client, &server.url("/")).await;
    assert_ne!(other_id.unwrap(), id, "every request gets its own id");
}

#[tokio::test(flavor = "multi_thread")]
async fn small_bodies_go_out_whole_and_large_ones_stream_intact() {
    let project = Project::new(&worker("bench", guests::BENCH, &["/*"]));
    let server = project.serve();
    let client = client();

    // A body the guest finished right after its head is sent whole, with
    // its length, not chunked.
    for _ in 0..3 {
        let response = client.get(server.url("/")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-length"], "18");
        assert!(response.headers().get("transfer-encoding").is_none());
        assert_eq!(response.text().await.unwrap(), "Hello from Isola!\n");
    }

    // Past what is gathered (64 KiB), the rest streams behind what was.
    let response = client.get(server.url("/stream")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.bytes().await.unwrap();
    assert_eq!(body.len(), 1 << 20);
    assert!(body.iter().all(|&b| b == b'x'));

    let echoed = "{\"n\":1}".repeat(10_000);
    let response = client
        .post(server.url("/echo"))
        .header("content-type", "application/json")
        .body(echoed.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.text().await.unwrap(), echoed);
}

#[tokio::test(flavor = "multi_thread")]
async fn router_serves_json_and_reads_vars_both_ways() {
    let config = format!(
        "{}vars = {{ GREETING = \"Howdy\" }}\n",
        worker("router", guests::EXAMPLE_ROUTER, &["/api/*"])
    );
    let project = Project::new(&config);
    let server = project.serve();
    let client = client();

    let json = |text: &str| serde_json::from_str::<serde_json::Value>(text).unwrap();
    let (status, _, body) = get(&client, &server.url("/api/health")).await;
    assert_eq!(
        (status, json(&body)),
        (200, serde_json::json!({ "ok": true }))
    );

    let (status, _, body) = get(&client, &server.url("/api/greet?name=Ada")).await;
    assert_eq!(status, 200);
    assert_eq!(
        json(&body),
        serde_json::json!({ "greeting": "Howdy, Ada!" })
    );

    let response = client
        .post(server.url("/api/sum"))
        .body(r#"{"numbers":[1,2,3.5]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(
        json(&response.text().await.unwrap()),
        serde_json::json!({ "sum": 6.5, "count": 3 })
    );

    let response = client.get(server.url("/api/request")).send().await.unwrap();
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = json(&response.text().await.unwrap());
    assert_eq!(
        body["greeting_from_std_env"], "Howdy",
        "vars are WASI env vars too"
    );
    assert_eq!(
        body["request_id"],
        id.as_str(),
        "ctx.request_id matches the header"
    );
    assert_eq!(body["method"], "GET");

    let (status, _, body) = get(&client, &server.url("/api/nope")).await;
    assert_eq!(status, 404);
    assert_eq!(json(&body)["error"], "no route for GET /api/nope");
}

#[tokio::test(flavor = "multi_thread")]
async fn unrouted_urls_get_a_short_404_with_a_request_id() {
    let project = Project::new(&worker("router", guests::EXAMPLE_ROUTER, &["/api/*"]));
    let server = project.serve();
    let (status, id, body) = get(&client(), &server.url("/elsewhere")).await;
    assert_eq!(status, 404);
    assert!(id.is_some());
    assert_eq!(body, "no worker is routed for this URL\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn most_specific_route_wins() {
    let config = [
        worker("hello", guests::EXAMPLE_HELLO, &["/*"]),
        worker("router", guests::EXAMPLE_ROUTER, &["/api/*"]),
        worker("raw", guests::EXAMPLE_RAW_WASI_HTTP, &["/api/raw"]),
    ]
    .concat();
    let project = Project::new(&config);
    let server = project.serve();
    let client = client();
    assert_eq!(
        get(&client, &server.url("/")).await.2,
        "Hello from Isola!\n"
    );
    assert_eq!(
        get(&client, &server.url("/api/health")).await.2,
        r#"{"ok":true}"#
    );
    assert_eq!(
        get(&client, &server.url("/api/raw")).await.2,
        "raw wasi:http component: GET /api/raw\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_wasi_http_components_run_unchanged() {
    let server = Server::start(&[
        "run",
        guests::EXAMPLE_RAW_WASI_HTTP,
        "--listen",
        "127.0.0.1:0",
        "--state-dir",
        tempfile::tempdir().unwrap().path().to_str().unwrap(),
    ]);
    let response = client()
        .get(server.url("/any/path?q=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-served-by"], "raw-wasi-http");
    assert!(response.headers().contains_key("x-request-id"));
    assert_eq!(
        response.text().await.unwrap(),
        "raw wasi:http component: GET /any/path?q=1\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn instance_reuse_is_opt_in_and_never_shares_an_instance_at_once() {
    let project = Project::new(&format!(
        "{}instance_reuse = 3\n",
        worker("counter", guests::COUNTER, &["/*"])
    ));
    let server = project.serve();
    let client = client();
    // One request at a time: the same instance serves three, then a new one.
    let answers: Vec<String> = {
        let mut answers = Vec::new();
        for _ in 0..7 {
            let (_, id, answer) = get(&client, &server.url("/")).await;
            // The instance goes back to the pool when its task ends, just
            // after the client has the response.
            server.wait_for_access_line(&id.unwrap());
            answers.push(answer);
        }
        answers
    };
    assert_eq!(answers, ["1", "2", "3", "1", "2", "3", "1"]);
    // At once: every request has an instance of its own, each serving at
    // most three in all.
    let concurrent: Vec<_> = (0..40)
        .map(|_| {
            let (client, url) = (client.clone(), server.url("/"));
            tokio::spawn(async move { get(&client, &url).await })
        })
        .collect();
    for request in concurrent {
        let (status, _, body) = request.await.unwrap();
        assert_eq!(status, 200);
        assert!(["1", "2", "3"].contains(&body.as_str()), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_request_gets_a_fresh_instance() {
    let project = Project::new(&worker("counter", guests::COUNTER, &["/*"]));
    let server = project.serve();
    let client = client();
    for _ in 0..50 {
        assert_eq!(get(&client, &server.url("/")).await.2, "1");
    }
    let concurrent: Vec<_> = (0..100)
        .map(|_| {
            let (client, url) = (client.clone(), server.url("/"));
            tokio::spawn(async move { get(&client, &url).await })
        })
        .collect();
    for request in concurrent {
        let (status, _, body) = request.await.unwrap();
        assert_eq!((status, body.as_str()), (200, "1"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_concurrent_requests_across_two_workers() {
    let config = [
        worker("counter", guests::COUNTER, &["/count/*"]),
        worker("hello", guests::EXAMPLE_HELLO, &["/*"]),
    ]
    .concat();
    let project = Project::new(&config);
    let server = project.serve();
    let client = client();
    let requests: Vec<_> = (0..200)
        .map(|i| {
            let client = client.clone();
            let (url, expected) = if i % 2 == 0 {
                (server.url("/count/x"), "1".to_owned())
            } else {
                (
                    server.url(&format!("/item/{i}")),
                    format!("GET /item/{i}\n"),
                )
            };
            tokio::spawn(async move { (get(&client, &url).await, expected) })
        })
        .collect();
    for request in requests {
        let ((status, _, body), expected) = request.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, expected);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn guest_output_is_logged_with_worker_and_request_id() {
    let project = Project::new(&worker("chatty", guests::CHATTY, &["/*"]));
    let server = project.serve();
    let (status, id, body) = get(&client(), &server.url("/print")).await;
    assert_eq!((status, body.as_str()), (200, "printed\n"));
    let id = id.unwrap();
    let logs = server.wait_for_log("to stderr, no newline at the end");
    let line = |needle: &str| {
        logs.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?}:\n{logs}"))
            .to_owned()
    };
    let stdout = line(&format!("to stdout from {id}"));
    assert!(stdout.contains("worker=chatty") && stdout.contains(&format!("request_id={id}")));
    assert!(stdout.contains("stream=\"stdout\""), "{stdout}");
    let stderr = line("to stderr, no newline at the end");
    assert!(stderr.contains(&format!("request_id={id}")) && stderr.contains("stream=\"stderr\""));
}

#[tokio::test(flavor = "multi_thread")]
async fn guests_see_their_vars_and_nothing_of_the_host() {
    let config = format!(
        "{}vars = {{ ONLY = \"me\" }}\n",
        worker("chatty", guests::CHATTY, &["/*"])
    );
    let project = Project::new(&config);
    // The server runs in the project directory, which holds files the guest
    // must not reach, with a host environment it must not see.
    let server = crate::support::Server::start_in(
        project.dir.path(),
        &["serve", "isola.toml", "--listen", "127.0.0.1:0"],
        &[("HOST_SECRET", "do-not-leak")],
    );
    let (status, _, body) = get(&client(), &server.url("/sandbox")).await;
    assert_eq!(status, 200);
    assert_eq!(body, "env: ONLY=me\nfs /: no access\nfs .: no access\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_and_http1_are_served_on_one_listener() {
    let project = Project::new(&worker("hello", guests::EXAMPLE_HELLO, &["/*"]));
    let server = project.serve();
    for (client, expected) in [
        (
            reqwest::Client::builder()
                .http2_prior_knowledge()
                .build()
                .unwrap(),
            reqwest::Version::HTTP_2,
        ),
        (
            reqwest::Client::builder().http1_only().build().unwrap(),
            reqwest::Version::HTTP_11,
        ),
    ] {
        let response = client.get(server.url("/h")).send().await.unwrap();
        let version = response.version();
        assert_eq!(version, expected);
        assert!(response.headers().contains_key("x-request-id"));
        assert_eq!(response.text().await.unwrap(), "GET /h\n", "{version:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn handler_errors_and_panics_are_500s_logged_with_their_cause() {
    let project = Project::new(&worker("chatty", guests::CHATTY, &["/*"]));
    let server = project.serve();
    let client = client();
    for (path, cause) in [
        ("/fail", "the database is on fire"),
        ("/panic", "guest panicked on purpose"),
    ] {
        let response = client.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 500);
        assert_eq!(response.headers()["x-isola-error"], "exception");
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let body = response.text().await.unwrap();
        assert!(
            !body.contains(cause),
            "causes stay out of the response: {body}"
        );
        assert!(body.contains(&id), "{body}");
        let logs = server.wait_for_log(cause);
        assert!(
            logs.lines().any(|l| l.contains(cause) && l.contains(&id)),
            "the cause is logged with the request id:\n{logs}"
        );
        // The host's failure line follows the guest's own output.
        server.wait_for_line(|l| {
            l.contains("request failed") && l.contains(&id) && l.contains("reason=\"exception\"")
        });
    }
    // The server is unharmed.
    assert_eq!(get(&client, &server.url("/print")).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn compile_cache_is_written_reused_and_repaired() {
    let project = Project::new(&worker("hello", guests::EXAMPLE_HELLO, &["/*"]));
    let state_dir = project.path(".isola");
    let client = client();

    let server = project.serve();
    assert_eq!(get(&client, &server.url("/")).await.0, 200);
    let logs = server.stop();
    assert!(logs.contains("compile cache miss: compiled"), "{logs}");
    let entries = cache_entries(&state_dir);
    assert_eq!(entries.len(), 1, "one .cwasm written: {entries:?}");

    let server = project.serve();
    assert_eq!(get(&client, &server.url("/")).await.0, 200);
    let logs = server.stop();
    assert!(logs.contains("compile cache hit"), "{logs}");
    assert!(
        !logs.contains("compile cache miss"),
        "must not recompile:\n{logs}"
    );

    // Damage the entry in its middle, where wasmtime's header checks pass.
    let mut bytes = std::fs::read(&entries[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(&entries[0], bytes).unwrap();
    let server = project.serve();
    assert_eq!(
        get(&client, &server.url("/")).await.2,
        "Hello from Isola!\n"
    );
    let logs = server.stop();
    assert!(
        logs.contains("discarding damaged compile cache entry"),
        "{logs}"
    );
    assert!(logs.contains("compile cache miss: compiled"), "{logs}");

    let server = project.serve();
    let logs = server.stop();
    assert!(
        logs.contains("compile cache hit"),
        "repaired entry is reused:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_workers_sharing_a_component_compile_it_once() {
    let config = [
        worker("a", guests::COUNTER, &["/a/*"]),
        worker("b", guests::COUNTER, &["/b/*"]),
    ]
    .concat();
    let project = Project::new(&config);
    let server = project.serve();
    let client = client();
    assert_eq!(get(&client, &server.url("/a/")).await.2, "1");
    assert_eq!(get(&client, &server.url("/b/")).await.2, "1");
    let logs = server.stop();
    assert_eq!(
        logs.matches("compile cache miss: compiled").count(),
        1,
        "{logs}"
    );
    assert_eq!(cache_entries(&project.path(".isola")).len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_an_in_flight_request_finish_then_exits_zero() {
    let project = Project::new(&worker("slow", guests::SLOW, &["/*"]));
    let mut server = project.serve();
    let client = client();
    let url = server.url("/?ms=1500");
    let in_flight = tokio::spawn(async move { get(&client, &url).await });

    // Wait until the guest is running, then ask the server to stop.
    server.wait_for_log("worker loaded");
    tokio::time::sleep(Duration::from_millis(400)).await;
    server.terminate();

    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!((status, body.as_str()), (200, "slept 1500 ms\n"));
    let exit = server.wait(Duration::from_secs(20));
    assert!(exit.success(), "exit status {exit}");
    // The listener is closed: new connections are refused.
    assert!(reqwest::get(server.url("/?ms=0")).await.is_err());
}

/// A worker written with Spin's Rust SDK serves unchanged, both as the
/// component a `wasm32-wasip2` build makes and as the WASI preview 1 core
/// module `spin build` makes, which Isola adapts into a component as Spin
/// does. The adapted module is compiled once and then found in the cache.
#[tokio::test(flavor = "multi_thread")]
async fn spin_sdk_workers_serve_as_components_and_as_wasip1_modules() {
    for component in [guests::SPIN_HELLO, guests::SPIN_HELLO_WASIP1] {
        let project = Project::new(&worker("spin", component, &["/*"]));
        let client = client();
        let server = project.serve();

        let (status, _, body) = get(&client, &server.url("/")).await;
        assert_eq!(
            (status, body.as_str()),
            (200, "Hello, Fermyon"),
            "{component}"
        );
        let (status, _, body) = get(&client, &server.url("/hello/mars")).await;
        assert_eq!((status, body.as_str()), (200, "hello, mars"));
        let response = client
            .post(server.url("/echo"))
            .header("x-note", "n1")
            .body("posted")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        assert_eq!(response.headers()["x-note"], "n1");
        assert_eq!(response.text().await.unwrap(), "posted");
        let (status, _, body) = get(&client, &server.url("/nowhere")).await;
        assert_eq!((status, body.as_str()), (404, "no route for /nowhere"));

        let logs = server.stop();
        assert!(logs.contains("compile cache miss: compiled"), "{logs}");
        assert!(
            logs.contains("Handling request to http://"),
            "the guest's stdout is logged: {logs}"
        );
        let adapted = logs.contains("made a component of a WASI preview 1 core module");
        assert_eq!(adapted, component == guests::SPIN_HELLO_WASIP1, "{logs}");

        let server = project.serve();
        let (status, _, body) = get(&client, &server.url("/hello/venus")).await;
        assert_eq!((status, body.as_str()), (200, "hello, venus"));
        let logs = server.stop();
        assert!(logs.contains("compile cache hit"), "{logs}");
        assert!(!logs.contains("core module"), "not adapted again: {logs}");
    }
}
