//! JavaScript workers: Cloudflare-style modules configured with
//! `main = "….js"`, built by `isola` through esbuild and componentize-js,
//! then served like any component: a fresh instance per request unless
//! the worker sets `instance_reuse`.
//!
//! Every JS component is ~14 MB and takes seconds to compile, so the tests
//! share one compile cache (`[server] cache_dir`), filled once by
//! [`warm_up`] before the first test serves.

use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

use crate::support::{
    Project, Server, Upstream, client, get, repo_path, run_isola, stderr_of, worker,
};

fn apis() -> String {
    repo_path("tests/js/apis.js")
}

fn node() -> String {
    repo_path("tests/js/node.js")
}

fn entrypoint() -> String {
    repo_path("tests/js/entrypoint.js")
}

fn service_worker() -> String {
    repo_path("tests/js/service-worker.js")
}

fn example(name: &str) -> String {
    repo_path(&format!("guest-examples/js/{name}/worker.js"))
}

pub(crate) fn shared_cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("js-compile-cache")
}

/// `[server]` with the shared compile cache, then `workers`.
fn js_project(workers: &str) -> Project {
    let project = Project::new(&format!(
        "[server]\ncache_dir = {:?}\n\n{workers}",
        shared_cache().display().to_string()
    ));
    std::fs::write(project.path(".dev.vars"), "API_KEY=sk-live-0123456789\n").unwrap();
    project
}

fn js_worker(name: &str, main: &str, routes: &[&str]) -> String {
    let routes: Vec<String> = routes.iter().map(|r| format!("{r:?}")).collect();
    format!(
        "[[worker]]\nname = {name:?}\nmain = {main:?}\nroutes = [{}]\n",
        routes.join(", ")
    )
}

/// Build and compile every JS worker of these tests once, one at a time,
/// before any test serves one.
pub(crate) fn warm_up() {
    static WARM: Once = Once::new();
    WARM.call_once(|| {
        let mut workers = js_worker("apis", &apis(), &[]);
        workers.push_str(&js_worker("node", &node(), &[]));
        workers.push_str(&js_worker("entrypoint", &entrypoint(), &[]));
        workers.push_str(&js_worker("service-worker", &service_worker(), &[]));
        // For wasmtime_patch.rs.
        workers.push_str(&js_worker("tables", &repo_path("tests/js/tables.js"), &[]));
        for name in [
            "hello",
            "proxy-cache",
            "fail-open",
            "page-views",
            "kv-cache",
            "middleware",
            "scheduled",
            "queue",
        ] {
            workers.push_str(&js_worker(name, &example(name), &[]));
        }
        let project = js_project(&workers);
        let output = run_isola(&["compile", project.config().to_str().unwrap()]);
        assert!(
            output.status.success(),
            "building the JS workers failed:\n{}",
            stderr_of(&output)
        );
    });
}

fn serve(project: &Project) -> Server {
    warm_up();
    project.serve()
}

/// The `apis` test worker with every binding kind, and `auth` (the same
/// module) behind a service binding.
fn apis_project(extra: &str) -> Project {
    apis_project_with_vars("", extra)
}

/// As [`apis_project`], with more `vars` entries (`NAME = "value", `).
fn apis_project_with_vars(vars: &str, extra: &str) -> Project {
    js_project(&format!(
        "{}vars = {{ {vars}GREETING = \"hi from vars\" }}\nsecrets = [\"API_KEY\"]\n\
         kv_namespaces = [{{ binding = \"KV\", id = \"js-kv\" }}]\n\
         d1_databases = [{{ binding = \"DB\", database_name = \"js\" }}]\n\
         r2_buckets = [{{ binding = \"BUCKET\", bucket_name = \"js-files\" }}]\n\
         queues.producers = [{{ binding = \"JOBS\", queue = \"js-jobs\" }}]\n\
         services = [{{ binding = \"AUTH\", service = \"auth\" }}]\n{extra}\n{}",
        js_worker("apis", &apis(), &["/*"]),
        js_worker("auth", &apis(), &[]),
    ))
}

/// GET `path` until its body is `expected` (work done in `waitUntil` lands
/// after the response); panics after five seconds with the last body.
async fn body_becomes(server: &Server, path: &str, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, _, body) = get(&client(), &server.url(path)).await;
        if body == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "GET {path} never answered {expected:?}; last {body:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn json(server: &Server, path: &str) -> serde_json::Value {
    let response = client().get(server.url(path)).send().await.unwrap();
    assert_eq!(
        response.status(),
        200,
        "GET {path}; logs:\n{}",
        server.logs()
    );
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn hello_example_serves_and_module_state_never_survives_a_request() {
    let project = js_project(&format!(
        "{}{}",
        js_worker("hello", &example("hello"), &["/hello/*"]),
        js_worker("apis", &apis(), &["/*"])
    ));
    let server = serve(&project);
    let client = client();
    let (status, _, body) = get(&client, &server.url("/hello/there")).await;
    assert_eq!(
        (status, body.as_str()),
        (
            200,
            "Hello from JavaScript on Isola! You asked for /hello/there\n"
        )
    );
    for _ in 0..3 {
        let (status, _, body) = get(&client, &server.url("/counter")).await;
        assert_eq!((status, body.as_str()), (200, "1"));
    }
    // A worker importing a sibling module was bundled and runs.
    let (_, _, body) = get(&client, &server.url("/sibling")).await;
    assert_eq!(body, "hello isola from a sibling module");
}

#[tokio::test(flavor = "multi_thread")]
async fn instance_reuse_keeps_module_state_for_n_requests_and_a_failure_retires_the_instance() {
    let project = apis_project("instance_reuse = 3\n");
    let server = serve(&project);
    let client = client();
    let mut counts = Vec::new();
    for _ in 0..5 {
        let (_, id, count) = get(&client, &server.url("/counter")).await;
        // The next request finds the instance idle again.
        server.wait_for_access_line(&id.unwrap());
        counts.push(count);
    }
    assert_eq!(counts, ["1", "2", "3", "1", "2"], "{}", server.logs());

    // A failed request retires its instance: the next starts afresh.
    let (status, _, _) = get(&client, &server.url("/throw")).await;
    assert_eq!(status, 500);
    assert_eq!(get(&client, &server.url("/counter")).await.2, "1");

    // Later requests on the same instance get their own method, URL,
    // headers and streamed body, both ways.
    for (note, size) in [("first", 300 * 1024), ("second", 17)] {
        let body: String = (0..size).map(|i| (b'a' + (i % 26) as u8) as char).collect();
        let response = client
            .post(server.url(&format!("/echo?note={note}")))
            .header("x-note", note)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        assert_eq!(
            response.headers()["x-echo"],
            format!("POST /echo?note={note} {note}").as_str()
        );
        assert!(
            response.text().await.unwrap() == body,
            "{note}: body differs"
        );
    }
    // That instance has served three requests: this one is fresh.
    assert_eq!(get(&client, &server.url("/counter")).await.2, "1");
    // env and ctx still work on a reused instance.
    assert_eq!(json(&server, "/env").await["greeting"], "hi from vars");
}

/// What a client sees of one `/reply?as=SHAPE` answer: status, the headers
/// the worker may set, and the body, with the server's address as `ADDR`.
async fn reply(server: &Server, shape: &str) -> (u16, Vec<(String, Vec<u8>)>, String) {
    // Redirects are part of what is compared, not followed.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = client
        .get(server.url(&format!("/reply?as={shape}")))
        .header("x-multi", "a")
        .header("x-multi", "b")
        .header(
            "x-latin1",
            reqwest::header::HeaderValue::from_bytes(b"caf\xe9").unwrap(),
        )
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let names = [
        "content-type",
        "location",
        "set-cookie",
        "x-latin1",
        "x-empty",
        "x-streamed",
    ];
    let mut seen = Vec::new();
    for name in names {
        for value in response.headers().get_all(name) {
            seen.push((name.to_owned(), value.as_bytes().to_vec()));
        }
    }
    let addr = server.url("");
    let addr = addr.trim_start_matches("http://");
    let body = response.text().await.unwrap().replace(addr, "ADDR");
    (status, seen, body)
}

/// The values of header `name` among `reply`'s headers, in order.
fn values<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Vec<&'a [u8]> {
    headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_slice())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reused_instance_sends_every_response_shape_as_a_fresh_one_does() {
    let fresh = serve(&apis_project(""));
    let reused = serve(&apis_project("instance_reuse = 100\n"));
    // Twice: the second round is served by an instance that has served.
    for round in 0..2 {
        for shape in ["head", "bytes", "json", "empty", "redirect", "stream"] {
            assert_eq!(
                reply(&reused, shape).await,
                reply(&fresh, shape).await,
                "{shape}, round {round}; reused logs:\n{}",
                reused.logs()
            );
        }
    }
    let (status, headers, body) = reply(&reused, "head").await;
    assert_eq!(status, 299);
    assert_eq!(values(&headers, "set-cookie"), [b"a=1".as_slice(), b"b=2"]);
    assert_eq!(values(&headers, "x-latin1"), [b"caf\xe9".as_slice()]);
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["method"], "GET");
    assert_eq!(seen["url"], "http://ADDR/reply?as=head");
    assert_eq!(seen["constructorIsResponse"], true);
    let request_headers = seen["headers"].as_array().unwrap();
    // `host` is not among them: `wasi:http` keeps it from guests.
    for (name, value) in [("x-multi", "a, b"), ("x-latin1", "caf\u{e9}")] {
        assert!(
            request_headers.contains(&serde_json::json!([name, value])),
            "{name}: {value} not in {request_headers:?}"
        );
    }
    assert_eq!(reply(&reused, "bytes").await.2, "\u{2}\u{3}");
    let (status, headers, body) = reply(&reused, "json").await;
    assert_eq!(
        (status, body.as_str()),
        (202, r#"{"shape":"json","list":[1,"two"]}"#)
    );
    assert!(
        headers.contains(&("content-type".to_owned(), b"application/json".to_vec())),
        "{headers:?}"
    );
    let (_, headers, body) = reply(&reused, "stream").await;
    assert_eq!(body, "streamed, in two chunks");
    assert_eq!(values(&headers, "set-cookie"), [b"a=1".as_slice(), b"b=2"]);
    assert_eq!(values(&headers, "x-latin1"), [b"caf\xe9".as_slice()]);

    // A response the host refuses is a 500 with the reason in the log,
    // and the instance goes on serving.
    let (status, _, _) = reply(&reused, "bad-length").await;
    assert_eq!(status, 500);
    reused.wait_for_log("content-length \"5\" does not match the body's 4 bytes");
    assert_eq!(reply(&reused, "empty").await.0, 204);
    // So is a streamed one, refused before its body.
    let (status, _, _) = reply(&reused, "bad-stream-length").await;
    assert_eq!(status, 500);
    reused.wait_for_log("could not be sent: header \"content-length\": invalid header value");
    assert_eq!(reply(&reused, "stream").await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn identities_headers_and_cf_hold_whatever_reads_them_first() {
    // With `instance_reuse` the shim makes the request (its headers packed
    // until read, `cf` asked of the host when read) and replaces the
    // global Request and Response; a fresh instance's come from the
    // engine. Both must look the same to the worker, on a reused
    // instance's later requests too.
    let fresh = serve(&apis_project(""));
    let reused = serve(&apis_project("instance_reuse = 100\n"));
    let client = client();
    for (name, server) in [("fresh", &fresh), ("reused", &reused)] {
        for round in 0..2 {
            for first in ["copy", "init", "clone", "late", "plain"] {
                let response = client
                    .get(server.url(&format!("/identity?first={first}")))
                    .header("x-probe", format!("{first}-{round}"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200, "{name}: {}", server.logs());
                let seen: serde_json::Value = response.json().await.unwrap();
                let probe = format!("{first}-{round}");
                let what = format!("{name}, {first}, round {round}: {seen}");
                assert_eq!(seen["probe"], probe.as_str(), "{what}");
                assert_eq!(seen["again"], probe.as_str(), "{what}");
                assert_eq!(seen["cf"]["protocol"], "HTTP/1.1", "{what}");
                assert_eq!(
                    seen["cf"]["requestId"].as_str().unwrap().len(),
                    16,
                    "{what}"
                );
                assert_eq!(seen["cf"]["same"], true, "{what}");
                assert_eq!(seen["cf"]["in"], true, "{what}");
                assert_eq!(seen["madeCf"], serde_json::json!([true, 5]), "{what}");
                assert_eq!(
                    seen["responses"],
                    serde_json::json!([true, true, true, true]),
                    "{what}"
                );
                assert_eq!(seen["mine"], true, "{what}");
                assert_eq!(
                    seen["requests"],
                    serde_json::json!([true, true, true]),
                    "{what}"
                );
                assert_eq!(
                    seen["names"],
                    serde_json::json!(["Response", "Request"]),
                    "{what}"
                );
                assert_eq!(seen["called"], "TypeError", "{what}");
            }
        }
    }
    // A service binding's callee on a reused instance reads the headers the
    // caller set, in both directions of reuse.
    let project = js_project(&format!(
        "{}instance_reuse = 100\nservices = [{{ binding = \"AUTH\", service = \"auth\" }}]\n{}instance_reuse = 100\n",
        js_worker("apis", &apis(), &["/*"]),
        js_worker("auth", &apis(), &[]),
    ));
    let server = serve(&project);
    for _ in 0..3 {
        let (status, _, body) = get(&client, &server.url("/service")).await;
        assert_eq!((status, body.as_str()), (200, "200 you are ann at /whoami"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn only_a_component_built_with_instance_reuse_serves_many_requests_per_instance() {
    warm_up();
    let dir = tempfile::tempdir().unwrap();
    let hello = |path: &str| format!("Hello from JavaScript on Isola! You asked for {path}\n");
    for reusable in [false, true] {
        let component = dir.path().join(format!("hello-{reusable}.wasm"));
        let mut args = vec!["build", "-o", component.to_str().unwrap()];
        if reusable {
            args.push("--instance-reuse");
        }
        let main = example("hello");
        args.push(&main);
        let output = run_isola(&args);
        assert!(output.status.success(), "{}", stderr_of(&output));
        let project = js_project(&format!(
            "{}instance_reuse = 3\n",
            worker("hello", component.to_str().unwrap(), &["/*"])
        ));
        let server = project.serve();
        let client = client();
        let (status, _, body) = get(&client, &server.url("/one")).await;
        assert_eq!((status, body), (200, hello("/one")));
        let (status, _, body) = get(&client, &server.url("/two")).await;
        if reusable {
            assert_eq!((status, body), (200, hello("/two")));
        } else {
            // A fresh-instance build cannot take a second request on the
            // same instance: that one fails with the reason, and the
            // instance is retired so the next one is served.
            assert_eq!(status, 500);
            server.wait_for_log("build it with `isola build --instance-reuse`");
        }
        let (status, _, body) = get(&client, &server.url("/three")).await;
        assert_eq!((status, body), (200, hello("/three")));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn env_holds_vars_secrets_bindings_and_request_cf() {
    let project = apis_project("");
    let server = serve(&project);
    let env = json(&server, "/env").await;
    // `env` is read from the host when first touched; it still enumerates
    // and answers `in` like the plain object of Workers.
    let keys: Vec<&str> = env["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    for name in ["GREETING", "API_KEY", "KV", "DB", "BUCKET", "JOBS", "AUTH"] {
        assert!(keys.contains(&name), "{name} missing from {keys:?}");
    }
    assert_eq!(env["spreadKeys"], keys.len());
    assert_eq!(
        (env["hasKv"].as_bool(), env["hasMissing"].as_bool()),
        (Some(true), Some(false))
    );
    assert_eq!(env["cfEnumerable"], true);
    assert_eq!(env["greeting"], "hi from vars");
    assert_eq!(env["secretLength"], "sk-live-0123456789".len());
    assert_eq!(
        env["kinds"],
        serde_json::json!({"KV": "KVNamespace", "DB": "D1Database", "BUCKET": "R2Bucket",
                           "JOBS": "WorkerQueue", "AUTH": "Fetcher"})
    );
    assert_eq!(env["cf"]["httpProtocol"], "HTTP/1.1");
    assert_eq!(env["cf"]["clientAddress"], "127.0.0.1");
    assert_eq!(env["cf"]["requestId"].as_str().unwrap().len(), 16);
}

/// A fresh instance's first read of `env` or `request.cf` goes through
/// componentize-js's import glue, whose realm the build resolves in the
/// snapshot (`sdk/js/src/glue-realm.js`), and `env` is one host call
/// (`env.entries-json`), filled in an indexed loop; `request.cf` is one
/// too (`request-info.get-json`). Fuel counts wasm instructions, so the
/// costs are the same on every machine: before, reading one var of this
/// worker's seven bindings cost ~0.68 M instructions more than `/counter`
/// (whose whole request is ~0.3 M), now ~0.26 M, and reading `request.cf`
/// ~0.4 M more, then ~0.14 M, now ~0.06 M.
#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_instances_env_cf_request_copies_and_binding_calls_cost_little_fuel() {
    let project = apis_project("");
    let server = serve(&project);
    let client = client();
    let fuel = |path: &'static str, expected: &'static str| {
        let (server, client) = (&server, &client);
        async move {
            let (status, id, body) = get(client, &server.url(path)).await;
            assert_eq!((status, body.as_str()), (200, expected), "{path}");
            server.fuel_of(&id.unwrap())
        }
    };
    let counter = fuel("/counter", "1").await;
    let greeting = fuel("/greeting", "hi from vars").await;
    let protocol = fuel("/protocol", "HTTP/1.1").await;
    let copy = fuel("/request-copy", "POST d").await;
    let one_read = fuel("/kv-misses?n=1", "0 of 1").await;
    let eleven_reads = fuel("/kv-misses?n=11", "0 of 11").await;
    assert!(
        greeting < counter + 320_000,
        "env: {greeting} instructions against {counter}"
    );
    // `request.cf` is one JSON string (`request-info.get-json`): ~63 k
    // over `/counter`; the `info` record, lifted field by field by the
    // glue, cost ~137 k.
    assert!(
        protocol < counter + 110_000,
        "request.cf: {protocol} instructions against {counter}"
    );
    // The copy's RequestInit members are gathered in indexed loops: with
    // `for…of` (the shim's loops before), each of the 2 × 15 members cost
    // ~20 k instructions of the self-hosted array iterator.
    assert!(
        copy < counter + 400_000,
        "new Request(request, init): {copy} instructions against {counter}"
    );
    // A binding call without the glue's trace calls (`withoutTraceCalls`
    // in sdk/js/src/snapshot.mjs): ~126 k instructions a KV read, ~144 k
    // with them.
    let per_read = (eleven_reads - one_read) / 10;
    assert!(per_read < 135_000, "a KV read: {per_read} instructions");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reused_instance_streams_a_response_for_few_binding_calls() {
    // With `instance_reuse` the shim sends a Response whose body is a
    // stream (a fetched one, say) itself. Its head, body and stream come
    // from one `http-batch` call: through `wasi:http` (a response, its
    // fields, status, body, stream and outparam) the piped body cost
    // ~0.52 M instructions more than the whole one, ~0.22 M now.
    let server = serve(&apis_project("instance_reuse = 100\n"));
    let client = client();
    // The least of a few rounds: an instance that has served both shapes
    // already (a request may find a new instance, whose first of each
    // shape costs more).
    let (mut whole, mut piped) = (u64::MAX, u64::MAX);
    for _ in 0..4 {
        for (shape, least) in [("bytes", &mut whole), ("piped", &mut piped)] {
            let (status, id, body) = get(&client, &server.url(&format!("/reply?as={shape}"))).await;
            assert_eq!(status, 200, "{shape}: {body}");
            *least = (*least).min(server.fuel_of(&id.unwrap()));
        }
    }
    assert_eq!(
        get(&client, &server.url("/reply?as=piped")).await.2,
        "piped body"
    );
    assert!(
        piped < whole + 350_000,
        "a piped body: {piped} instructions against {whole} for a whole one"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kv_api_matches_workers_kv() {
    let project = apis_project("");
    let server = serve(&project);
    let kv = json(&server, "/kv").await;
    assert_eq!(kv["text"], "hello");
    assert_eq!(kv["json"], serde_json::json!({"a": 1}));
    assert_eq!(kv["jsonOpt"], serde_json::json!({"a": 1}));
    assert_eq!(kv["bytes"], serde_json::json!([1, 2, 3]));
    assert_eq!(kv["stream"], "streamed value");
    assert_eq!(
        kv["withMeta"],
        serde_json::json!({"value": {"a": 1}, "metadata": {"v": 2}, "cacheStatus": null})
    );
    assert_eq!(kv["missing"], serde_json::Value::Null);
    assert_eq!(kv["page1"], serde_json::json!(["bytes", "json"]));
    assert_eq!(kv["complete1"], false);
    assert_eq!(kv["page2"], serde_json::json!(["stream", "text", "ttl"]));
    assert_eq!(kv["ttlExpires"], true);
    assert_eq!(kv["deleted"], serde_json::Value::Null);
    assert!(
        kv["badKey"].as_str().unwrap().starts_with("TypeError: "),
        "{}",
        kv["badKey"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn d1_api_matches_workers_d1() {
    let project = apis_project("");
    let server = serve(&project);
    let d1 = json(&server, "/d1").await;
    assert_eq!(
        d1["runMeta"],
        serde_json::json!({"changes": 1, "lastRowId": 1, "success": true})
    );
    assert_eq!(d1["batchLength"], 2);
    assert_eq!(
        d1["all"],
        serde_json::json!([
            {"id": 1, "name": "ann", "score": 1.5, "data": [7, 8]},
            {"id": 2, "name": "bob", "score": 2, "data": null},
            {"id": 3, "name": "cy", "score": 3.25, "data": null},
        ])
    );
    assert_eq!(d1["first"], serde_json::json!({"name": "bob"}));
    assert_eq!(d1["firstColumn"], 3);
    assert_eq!(
        d1["raw"],
        serde_json::json!([["id", "name"], [1, "ann"], [2, "bob"], [3, "cy"]])
    );
    assert_eq!(d1["none"], serde_json::Value::Null);
    assert!(
        d1["error"]
            .as_str()
            .unwrap()
            .contains("no such table: missing_table"),
        "{}",
        d1["error"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn r2_queue_service_and_cache_apis_work() {
    let project = apis_project("");
    let server = serve(&project);
    let r2 = json(&server, "/r2").await;
    assert_eq!(
        r2,
        serde_json::json!({
            "putSize": 12, "etagQuoted": true, "text": "hello object",
            "contentType": "text/plain", "owner": "ann", "uploadedIsDate": true,
            "range": "object", "headSize": 15, "objects": ["top.txt"],
            "prefixes": ["dir/"], "afterDelete": null,
        })
    );

    let client = client();
    let (status, _, body) = get(&client, &server.url("/queue")).await;
    assert_eq!((status, body.as_str()), (200, "sent 3\n"));

    let (_, _, body) = get(&client, &server.url("/service")).await;
    assert_eq!(body, "200 you are ann at /whoami");

    let cache = json(&server, "/cache").await;
    assert_eq!(
        cache,
        serde_json::json!({"before": true, "after": "cached body", "deleted": true,
                           "gone": true, "defaultIsCache": true})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn web_platform_apis_are_there() {
    let project = apis_project("");
    let server = serve(&project);
    let web = json(&server, "/web").await;
    assert_eq!(web["hmacLength"], 32);
    assert_eq!(web["verified"], true);
    assert_eq!(
        web["digestHex"],
        "ab530a13e45914982b79f9b7e3fba994cfd1f3fb22f71cea1afbf02b460c6d1d"
    );
    assert_eq!(web["equal"], true);
    assert_eq!(web["unequal"], false);
    assert_eq!(web["randomLength"], 8);
    assert_eq!(web["uuid"], true);
    assert_eq!(web["base64"], "aXNvbGE=");
    assert_eq!(web["decoded"], "isola");
    assert_eq!(
        web["cloned"],
        serde_json::json!({"nested": {"list": [1, 2]}})
    );
    assert_eq!(web["transformed"], "SHOUT");
    assert_eq!(web["params"], serde_json::json!({"a": "1", "b": "two"}));
    assert_eq!(web["userAgent"], "Cloudflare-Workers");
    assert_eq!(web["schedulerWaited"], true);
    assert_eq!(web["fromIterable"], "caf\u{e9} \u{1f600}");
    assert_eq!(web["decodedParts"], serde_json::json!(["\u{20ac}"]));
}

/// Workers' `nodejs_compat`: Node.js's built-in modules, imported with or
/// without `node:`, and the `Buffer` and `process` globals.
#[tokio::test(flavor = "multi_thread")]
async fn node_built_in_modules_work_as_with_nodejs_compat() {
    // A request to /node runs much JavaScript for the first time: 22-27 ms
    // of CPU on the machine it was written on, half the default 50 ms.
    let project = js_project(&format!(
        "{}cpu_ms = 1000\n",
        js_worker("node", &node(), &["/*"])
    ));
    let server = serve(&project);
    let client = client();

    let node = json(&server, "/node").await;
    let expected = serde_json::json!({
        "freeGlobals": ["ZnJlZQ==", "function", "function"],
        "bufferHex": "68c3a96c6c6f",
        "bufferBase64": "aXNvbGE=",
        "bufferConcat": "abc",
        "bufferReads": ["deadbeef", "1234", "deadbeef3412"],
        "byteLength": 3,
        "isBuffer": [true, false],
        "events": [5, "done", 1, "function"],
        "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        "sha256Chunks": "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=",
        "sha1": "a9993e364706816aba3e25717850c26c9cd0d89d",
        "md5": "d41d8cd98f00b204e9800998ecf8427e",
        "sha512Length": 64,
        "hmac": "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8",
        "oneShot": "a9993e364706816aba3e25717850c26c9cd0d89d",
        "pbkdf2": "120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b",
        "unknownDigest": "ERR_CRYPTO_INVALID_DIGEST",
        "randomBytes": 16,
        "randomUUID": true,
        "timingSafeEqual": [true, false],
        "path": ["/b/c.txt", ".gz", "q"],
        "format": "n=42 {\"ok\":true}",
        "promisified": 2,
        "isDate": true,
        "stringDecoder": "\u{20ac}",
        "stream": "NODE STREAMS",
        "querystring": "q=a%20b&n=1",
        "asyncLocalStorage": "inside",
        "assert": "AssertionError",
        "processEnv": "object",
        "nextTick": "ticked",
    });
    assert_eq!(node, expected);

    // HTTP Basic authentication as Workers' example does it: node:buffer's
    // base64 and `crypto.subtle.timingSafeEqual`.
    let admin = server.url("/admin");
    let response = client.get(&admin).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["www-authenticate"],
        "Basic realm=\"isola\", charset=\"UTF-8\""
    );
    let response = client
        .get(&admin)
        .basic_auth("admin", Some("s3cr\u{e9}t"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "Welcome, admin");
    let response = client
        .get(&admin)
        .basic_auth("admin", Some("guess"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    // What no polyfill implements fails when called, saying what it is.
    let (status, id, _) = get(&client, &server.url("/fs")).await;
    assert_eq!(status, 500);
    let line = server.wait_for_log(&id.unwrap());
    assert!(
        line.contains("fs.readFileSync is not implemented yet"),
        "{line}"
    );
}

/// A `WorkerEntrypoint` class from `cloudflare:workers` as the default
/// export: `this.env`, `this.ctx`, the module-level `env` and `waitUntil`,
/// and its `scheduled` method found and run by a cron trigger.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_entrypoint_class_serves_fetch_and_scheduled() {
    let project = js_project(&format!(
        "{}vars = {{ GREETING = \"hello, class\" }}\n\
         kv_namespaces = [{{ binding = \"KV\", id = \"entrypoint\" }}]\n\
         triggers.crons = [\"0 * * * *\"]\n",
        js_worker("entrypoint", &entrypoint(), &["/*"]),
    ));
    let server = serve(&project);
    let client = client();

    let answer = json(&server, "/").await;
    assert_eq!(
        answer,
        serde_json::json!({"greeting": "hello, class", "moduleEnv": "hello, class", "ctx": "function"})
    );
    let (status, _, body) = get(&client, &server.url("/later")).await;
    assert_eq!((status, body.as_str()), (202, "accepted"));
    // waitUntil's task runs after the response.
    body_becomes(&server, "/read?key=later", "done").await;
    drop(server);

    let output = project.trigger_cron("entrypoint");
    assert!(output.status.success(), "{}", stderr_of(&output));
    let server = serve(&project);
    let (_, _, cron) = get(&client, &server.url("/read?key=cron")).await;
    assert_eq!(cron, "0 * * * *");
}

/// A service-worker style script: bindings as globals, `request.cf`,
/// `event.waitUntil` and `event.passThroughOnException()`.
#[tokio::test(flavor = "multi_thread")]
async fn a_service_worker_script_gets_its_bindings_as_globals() {
    let upstream = Upstream::echo().await;
    let project = js_project(&format!(
        "{}vars = {{ GREETING = \"hello, script\" }}\n\
         kv_namespaces = [{{ binding = \"KV\", id = \"service-worker\" }}]\n\
         origin = \"http://127.0.0.1:{}\"\n",
        js_worker("sw", &service_worker(), &["/*"]),
        upstream.addr.port(),
    ));
    let server = serve(&project);
    let client = client();
    let (status, _, body) = get(&client, &server.url("/")).await;
    assert_eq!((status, body.as_str()), (200, "hello, script via HTTP/1.1"));
    assert_eq!(get(&client, &server.url("/count")).await.2, "1");
    // The count is stored by waitUntil, after its response: read back by a
    // request that writes nothing, so a lost write cannot be made good by
    // the polling itself.
    body_becomes(&server, "/peek", "1").await;
    assert_eq!(get(&client, &server.url("/count")).await.2, "2");
    body_becomes(&server, "/peek", "2").await;
    // Thrown after passThroughOnException(): the origin answers.
    let (status, _, body) = get(&client, &server.url("/throw")).await;
    assert_eq!(status, 200);
    assert!(body.starts_with("origin got GET /throw\n"), "{body}");
    server.wait_for_log("thrown after passThroughOnException");
}

/// `isola run` given a TypeScript module, as Workers' TypeScript examples
/// are written (type-only imports, `satisfies ExportedHandler<Env>`):
/// built, then served on every path.
#[tokio::test(flavor = "multi_thread")]
async fn run_builds_and_serves_a_typescript_worker_module() {
    warm_up();
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("index.ts");
    std::fs::write(
        &main,
        "import type { ExecutionContext } from \"@cloudflare/workers-types\";\n\
         interface Env { GREETING?: string }\n\
         export default {\n\
           async fetch(request: Request, env: Env, ctx: ExecutionContext): Promise<Response> {\n\
             const name: string = new URL(request.url).searchParams.get(\"name\") ?? \"world\";\n\
             return new Response(`${env.GREETING ?? \"hello\"}, ${name} at ${new URL(request.url).pathname}`);\n\
           },\n\
         } satisfies ExportedHandler<Env>;\n",
    )
    .unwrap();
    // The compile cache is the tests' shared one, so the JS engine's code
    // compiled for the other workers is reused.
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::os::unix::fs::symlink(shared_cache(), state.join("cache")).unwrap();
    let server = Server::start(&[
        "run",
        main.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    let (status, _, body) = get(&client(), &server.url("/any/path?name=ts")).await;
    assert_eq!((status, body.as_str()), (200, "hello, ts at /any/path"));
    assert!(state.join("build/index.wasm").is_file());
}

#[test]
fn an_unknown_node_module_fails_the_build_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("worker.js");
    std::fs::write(
        &main,
        "import { frob } from \"node:frobnicate\";\n\
         export default { fetch() { return new Response(frob()); } };\n",
    )
    .unwrap();
    let out = dir.path().join("worker.wasm");
    let output = run_isola(&["build", main.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains(
            "worker.js:1:22: error: Node.js module \"node:frobnicate\" is not available on Isola"
        ),
        "{stderr}"
    );
    assert!(!out.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_until_runs_after_the_response_and_console_lines_carry_the_request_id() {
    let project = apis_project("");
    let server = serve(&project);
    let client = client();
    let response = client.get(server.url("/wait-until")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "answered first\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, _, body) = get(&client, &server.url("/waited")).await;
        if body == "done after the response" {
            break;
        }
        assert!(Instant::now() < deadline, "waitUntil work never landed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A rejected waitUntil task is logged and fails nothing else.
    server.wait_for_log("waitUntil task failed: Error: one failed task");

    let response = client.get(server.url("/log")).send().await.unwrap();
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let line = server.wait_for_line(|l| l.contains("hello from console.log"));
    assert!(line.contains(&format!("request_id={id}")), "{line}");
    let line = server.wait_for_line(|l| l.contains("and from console.error"));
    assert!(line.contains("stream=\"stderr\""), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cpu_limit_stops_a_busy_loop_while_awaiting_a_slow_upstream_is_free() {
    let upstream = Upstream::start(Duration::from_millis(400)).await;
    let project = apis_project_with_vars(
        &format!("SLOW_URL = {:?}, ", upstream.url("/slow")),
        &format!(
            "cpu_ms = 30\nallowed_outbound_hosts = [{:?}]\n",
            upstream.url("")
        ),
    );
    let server = serve(&project);
    let client = client();
    let response = client.get(server.url("/busy")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["x-isola-error"], "cpu-limit");

    let started = Instant::now();
    let (status, _, body) = get(&client, &server.url("/slow-upstream")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("upstream said "), "{body}");
    assert!(started.elapsed() >= Duration::from_millis(400));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_uncaught_exception_is_a_500_with_the_stack_in_the_log() {
    let project = apis_project("");
    let server = serve(&project);
    let client = client();
    for (path, message) in [
        ("/throw", "Uncaught Error: something broke in the worker"),
        ("/reject", "Uncaught TypeError: rejected on purpose"),
    ] {
        let response = client.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 500, "{path}");
        assert_eq!(response.headers()["x-isola-error"], "exception");
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        // One log event, but the stack makes it several lines, read one at
        // a time: the message comes first, the fields (the request id) after
        // the last frame.
        let end = format!("request_id={id} ");
        let logs = server.wait_for_line(|l| l.contains(&end) && l.contains("reason=\"exception\""));
        let start = logs
            .find(message)
            .unwrap_or_else(|| panic!("no {message:?}:\n{logs}"));
        let line = &logs[start..start + logs[start..].find(&end).unwrap()];
        // The stack names the worker's own file, line and column (the
        // source map beside the component maps the bundle's positions).
        assert!(line.contains("apis.js:"), "{line}");
    }
}

#[test]
fn a_syntax_error_fails_build_and_check_with_file_line_and_column() {
    let broken = repo_path("tests/js/broken.js");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("broken.wasm");
    let output = run_isola(&["build", &broken, "-o", out.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("broken.js:4:3: error: Expected \")\" but found \"}\""),
        "{stderr}"
    );
    assert!(!out.exists());

    let project = js_project(&js_worker("broken", &broken, &["/*"]));
    let output = run_isola(&["check", project.config().to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = stderr_of(&output);
    assert!(stderr.contains("worker `broken`: cannot build"), "{stderr}");
    assert!(stderr.contains("broken.js:4:3: error:"), "{stderr}");
}

#[test]
fn build_writes_a_component_file_and_reuses_its_build_cache() {
    warm_up();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hello.wasm");
    let output = run_isola(&["build", &example("hello"), "-o", out.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    let wasm = std::fs::read(&out).unwrap();
    assert_eq!(&wasm[..4], b"\0asm");
    assert!(wasm.len() > 1_000_000, "{} bytes", wasm.len());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("cached"), "{stdout}");
}

// ------------------------------------------------------------ the examples

#[tokio::test(flavor = "multi_thread")]
async fn proxy_cache_example_adds_a_header_and_caches_in_wait_until() {
    let upstream = Upstream::start(Duration::ZERO).await;
    let origin = upstream.url("");
    let project = js_project(&format!(
        "{}vars = {{ ORIGIN_URL = {origin:?} }}\nallowed_outbound_hosts = [{origin:?}]\n",
        js_worker("proxy", &example("proxy-cache"), &["/js/proxy/*"]),
    ));
    let server = serve(&project);
    let client = client();
    let response = client
        .get(server.url("/js/proxy/page?x=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", server.logs());
    assert_eq!(response.headers()["x-foo"], "bar");
    assert_eq!(response.headers()["x-cache"], "MISS");
    assert_eq!(response.text().await.unwrap(), "upstream says hi");
    // The cache.put in waitUntil lands after the response; then the
    // upstream is no longer asked.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = client
            .get(server.url("/js/proxy/page?x=1"))
            .send()
            .await
            .unwrap();
        if response.headers()["x-cache"] == "HIT" {
            assert_eq!(response.headers()["x-foo"], "bar");
            assert_eq!(response.text().await.unwrap(), "upstream says hi");
            break;
        }
        assert!(Instant::now() < deadline, "never served from the cache");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let asked = upstream.paths().len();
    let (_, _, _) = get(&client, &server.url("/js/proxy/page?x=1")).await;
    assert_eq!(upstream.paths().len(), asked);
}

#[tokio::test(flavor = "multi_thread")]
async fn fail_open_example_passes_through_to_the_origin_when_it_throws() {
    let origin = Upstream::echo().await;
    let project = js_project(&format!(
        "{}origin = \"http://127.0.0.1:{}\"\n",
        js_worker("fail-open", &example("fail-open"), &["/*"]),
        origin.addr.port()
    ));
    let server = serve(&project);
    let client = client();
    let (status, _, body) = get(&client, &server.url("/a")).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "enriched by the worker: GET /a (0 bytes)\n")
    );
    let (status, _, body) = get(&client, &server.url("/a?crash")).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "origin got GET /a?crash\nx-test=\nbody=")
    );
    let response = client
        .post(server.url("/b"))
        .header("x-test", "kept")
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.text().await.unwrap(),
        "origin got POST /b\nx-test=kept\nbody=not json"
    );
    server.wait_for_log("Uncaught SyntaxError");
}

#[tokio::test(flavor = "multi_thread")]
async fn page_views_example_upserts_in_wait_until() {
    let project = js_project(&format!(
        "{}d1_databases = [{{ binding = \"DB\", database_name = \"views\" }}]\n",
        js_worker("views", &example("page-views"), &["/js/views/*"]),
    ));
    let server = serve(&project);
    let client = client();
    for path in ["/js/views/a", "/js/views/b", "/js/views/a", "/js/views/a"] {
        let (status, _, body) = get(&client, &server.url(path)).await;
        assert_eq!((status, body), (200, format!("you are on {path}\n")));
    }
    let expected = serde_json::json!([
        {"path": "/js/views/a", "views": 3},
        {"path": "/js/views/b", "views": 1},
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if json(&server, "/js/views/top").await == expected {
            break;
        }
        assert!(Instant::now() < deadline, "the upserts never all landed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kv_cache_example_warms_kv_with_an_hour_ttl() {
    let upstream = Upstream::start(Duration::ZERO).await;
    let origin = upstream.url("");
    let project = js_project(&format!(
        "{}vars = {{ ORIGIN_URL = {origin:?} }}\nallowed_outbound_hosts = [{origin:?}]\n\
         kv_namespaces = [{{ binding = \"CACHE\", id = \"warm\" }}]\n",
        js_worker("kv-cache", &example("kv-cache"), &["/js/kv/*"]),
    ));
    let server = serve(&project);
    let client = client();
    let response = client.get(server.url("/js/kv/item")).send().await.unwrap();
    assert_eq!(response.headers()["x-kv"], "miss");
    let entry = serde_json::json!({"status": 200, "body": "upstream says hi"});
    assert_eq!(response.json::<serde_json::Value>().await.unwrap(), entry);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = client.get(server.url("/js/kv/item")).send().await.unwrap();
        if response.headers()["x-kv"] == "hit" {
            assert!(response.headers().contains_key("x-fetched-at"));
            assert_eq!(response.json::<serde_json::Value>().await.unwrap(), entry);
            break;
        }
        assert!(Instant::now() < deadline, "never answered from KV");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(upstream.paths(), ["/item"]);
    // The operator's view: the key expires in an hour.
    let output = run_isola(&[
        "kv",
        "--config",
        project.config().to_str().unwrap(),
        "list",
        "CACHE",
    ]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    let keys: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let listed = &keys[0];
    assert_eq!(listed["name"], "/item", "{keys}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expiration = listed["expiration"].as_u64().unwrap();
    assert!((now + 3590..=now + 3610).contains(&expiration), "{listed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn middleware_example_passes_a_typed_context_down_the_chain() {
    let main = example("middleware");
    let project = js_project(&format!(
        "{}vars = {{ ROLE = \"auth\" }}\nservices = [{{ binding = \"TENANT\", service = \"tenant\" }}]\n\
         {}vars = {{ ROLE = \"tenant\" }}\nservices = [{{ binding = \"APP\", service = \"app\" }}]\n\
         {}vars = {{ ROLE = \"app\" }}\n",
        js_worker("auth", &main, &["/js/chain/*"]),
        js_worker("tenant", &main, &[]),
        js_worker("app", &main, &["/js/app/*"]),
    ));
    let server = serve(&project);
    let client = client();
    let response = client
        .get(server.url("/js/chain/me"))
        .header("authorization", "Bearer token-alice")
        .header("x-tenant", "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!({"user": {"id": "alice", "role": "admin"}, "tenant": "acme",
                           "trail": ["auth", "tenant", "app"]})
    );
    let (status, _, _) = get(&client, &server.url("/js/chain/me")).await;
    assert_eq!(status, 401);
    // A context that would not fit the 5 KB header guard is a 400.
    let note = "n".repeat(5000);
    let response = client
        .get(server.url(&format!("/js/chain/me?note={note}")))
        .header("authorization", "Bearer token-bob")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .starts_with("bad request: context payload is ")
    );
    // Reaching the last step without the header is the callee's 400.
    let (status, _, body) = get(&client, &server.url("/js/app/x")).await;
    assert_eq!(
        (status, body.as_str()),
        (400, "bad request: missing x-cf-ctx-payload\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn scheduled_example_runs_on_a_cron_firing() {
    let project = js_project(&format!(
        "{}kv_namespaces = [{{ binding = \"KV\", id = \"cron\" }}]\ntriggers.crons = [\"*/5 * * * *\"]\n",
        js_worker("cron", &example("scheduled"), &["/js/cron"]),
    ));
    warm_up();
    let output = project.trigger_cron("cron");
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert!(stderr_of(&output).contains("cron */5 * * * * fired for "));
    let server = serve(&project);
    let last = json(&server, "/js/cron").await;
    assert_eq!(last["lastRun"]["cron"], "*/5 * * * *");
    let at = last["lastRun"]["scheduledTime"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(at <= now && now - at < 120_000, "{at} vs {now}");
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_example_consumes_acks_and_dead_letters() {
    let project = js_project(&format!(
        "{}kv_namespaces = [{{ binding = \"STATE\", id = \"jobs\" }}]\n\
         queues.producers = [{{ binding = \"JOBS\", queue = \"js-jobs\" }}]\n\
         queues.consumers = [{{ queue = \"js-jobs\", max_batch_size = 10, max_batch_timeout = 1, max_retries = 2, dead_letter_queue = \"js-jobs-dlq\" }}]\n",
        js_worker("jobs", &example("queue"), &["/js/jobs"]),
    ));
    let server = serve(&project);
    let client = client();
    let response = client
        .post(server.url("/js/jobs?n=5"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if json(&server, "/js/jobs").await == serde_json::json!({"total": 15, "handled": 5}) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the jobs were never all consumed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let response = client
        .post(server.url("/js/jobs?n=1&fail"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    server.wait_for_line(|l| l.contains("queue batch finished") && l.contains("dead_lettered=1"));
    assert!(server.logs().contains("job 1 failed (attempt 3)"));
    assert_eq!(
        json(&server, "/js/jobs").await,
        serde_json::json!({"total": 15, "handled": 5})
    );
}
