//! `warm_up`: requests a JavaScript worker's build runs through the
//! worker's own fetch inside the Wizer snapshot step, so that every fresh
//! instance starts with their code compiled. The worker is
//! `tests/js/warm-up.js`.

use crate::js::shared_cache;
use crate::support::{Project, Server, client, get, js_fixture, run_isola, stderr_of};

fn fixture() -> String {
    js_fixture("warm-up.js")
}

/// A project of the one worker `warm`, built from the fixture with `keys`
/// added, on the shared compile cache.
fn project(keys: &str) -> Project {
    project_of("warm", &fixture(), keys)
}

/// A project of the one worker `name`, built from `main` with `keys`
/// added, on the shared compile cache.
fn project_of(name: &str, main: &str, keys: &str) -> Project {
    Project::new(&format!(
        "[server]\ncache_dir = {:?}\n\n[[worker]]\nname = {name:?}\nmain = {main:?}\n{keys}\n",
        shared_cache().display().to_string(),
    ))
}

/// The fuel of GET `path` on fresh instances (the same on each: checked),
/// and the counter `GET /` answers.
async fn measure(server: &Server, path: &str) -> (u64, String) {
    let client = client();
    let mut fuels = Vec::new();
    for _ in 0..3 {
        let (status, id, body) = get(&client, &server.url(path)).await;
        assert_eq!(status, 200, "{body}\n{}", server.logs());
        assert!(body.starts_with("{\"user\":{\"id\":7,"), "{body}");
        fuels.push(server.fuel_of(&id.unwrap()));
    }
    let spread = fuels.iter().max().unwrap() - fuels.iter().min().unwrap();
    assert!(
        spread * 50 < fuels[0],
        "fresh instances run the same code: {fuels:?}"
    );
    let (status, _, counter) = get(&client, &server.url("/")).await;
    assert_eq!(status, 200);
    (fuels[0], counter)
}

#[tokio::test(flavor = "multi_thread")]
async fn warm_up_requests_run_in_the_snapshot_and_cut_a_fresh_requests_work() {
    // Without warm_up: the module's top level is all the snapshot holds.
    let cold = project("").serve();
    let (cold_fuel, cold_counter) = measure(&cold, "/api/users/7").await;
    // Each request is a fresh instance: the counter never moves.
    assert_eq!(cold_counter, "0");
    assert_eq!(get(&client(), &cold.url("/")).await.2, "0");
    drop(cold);

    // The same module with warm-up requests: GET / once, the user route
    // with another id, a POST with headers and a body, and a route that
    // uses `ctx` and `request.cf`. The build cache keys on the list: this
    // is a build of its own.
    let warm = project(concat!(
        "vars = { GREETING = \"hello\" }\n",
        "warm_up = [\n",
        "  \"/\",\n",
        "  \"http://example.com/api/users/3?x=1\",\n",
        "  { method = \"POST\", url = \"/api/users\", headers = { \"content-type\" = \"application/json\" }, body = '{\"name\":\"Ada\",\"email\":\"ada@example.com\"}' },\n",
        "  \"/ctx\",\n",
        "]\n",
    ))
    .serve();
    let (warm_fuel, warm_counter) = measure(&warm, "/api/users/7").await;
    // The warm-up's GET / ran inside the snapshot every fresh instance
    // starts from: its module state is there (and only that one request's).
    assert_eq!(warm_counter, "1", "{}", warm.logs());
    assert_eq!(get(&client(), &warm.url("/")).await.2, "1");
    // The warm-up left no request state behind: `ctx`, `env` and `cf` are
    // the real request's.
    let (status, _, body) = get(&client(), &warm.url("/ctx")).await;
    assert_eq!(status, 200);
    let ctx: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_ne!(ctx["requestId"], "warm-up", "{body}");
    assert_eq!(ctx["cfRequestId"], ctx["requestId"], "{body}");
    assert_eq!(ctx["greeting"], "hello", "{body}");
    // `cloudflare:workers`' env did not keep the warm-up's.
    assert_eq!(ctx["workersGreeting"], "hello", "{body}");

    // The route's code was compiled at build time.
    eprintln!("fuel of GET /api/users/7: {cold_fuel} cold, {warm_fuel} after warm_up");
    assert!(
        warm_fuel * 10 <= cold_fuel * 7,
        "warm_up should save at least 30% of the instructions: {warm_fuel} vs {cold_fuel}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_worker_scripts_listener_is_warmed_up_as_a_request_would_be() {
    let project = project_of(
        "sw",
        &js_fixture("warm-up-sw.js"),
        "warm_up = [\"/\", \"/again\"]",
    );
    let server = project.serve();
    // Both warm-up requests reached the listener, inside the snapshot; each
    // real request is a fresh instance of it.
    for _ in 0..2 {
        let (status, _, body) = get(&client(), &server.url("/")).await;
        assert_eq!(
            (status, body.as_str()),
            (200, "answered before: 2"),
            "{}",
            server.logs()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reused_instance_starts_from_the_warmed_snapshot_too() {
    // Built with `--instance-reuse` (the shim serves wasi:http itself):
    // each new instance starts from the snapshot the warm-up ran in.
    let server = project("instance_reuse = 2\nwarm_up = [\"/\", \"/api/users/3\"]").serve();
    let mut counters = Vec::new();
    for _ in 0..4 {
        let (status, id, body) = get(&client(), &server.url("/")).await;
        assert_eq!(status, 200, "{}", server.logs());
        // The next request finds the instance idle again.
        server.wait_for_access_line(&id.unwrap());
        counters.push(body);
    }
    assert_eq!(counters, ["1", "2", "1", "2"]);
    let (status, _, body) = get(&client(), &server.url("/api/users/7")).await;
    assert_eq!(status, 200);
    assert!(body.starts_with("{\"user\":{\"id\":7,"), "{body}");
}

/// `isola build` of the fixture with `--warm-up` targets; fails.
fn build_fails(main: &str, warm_up: &[&str]) -> String {
    let out = tempfile::tempdir().unwrap();
    let out_file = out.path().join("w.wasm");
    let mut args = vec!["build", main, "-o", out_file.to_str().unwrap()];
    for target in warm_up {
        args.extend(["--warm-up", target]);
    }
    let output = run_isola(&args);
    assert!(!output.status.success(), "{args:?} built");
    assert!(!out_file.exists());
    stderr_of(&output)
}

#[test]
fn a_warm_up_request_that_fails_fails_the_build_naming_the_request() {
    let main = fixture();
    // A binding: the host's imports do not exist at build time; the shim's
    // env says so before any call could trap the build.
    let error = build_fails(&main, &["/", "/kv"]);
    assert!(
        error.contains(
            "warm_up request GET http://localhost/kv failed: Error: env.SOME_KV is not available during warm-up: a warm_up request runs when the worker is built, where it has no bindings, vars or secrets"
        ),
        "{error}"
    );
    assert!(!error.contains("wasm backtrace"), "{error}");

    // A host import called past the shim (the module imports the WIT
    // interface itself): Wizer traps, and the build names the request and
    // the import rather than the trap's wasm backtrace.
    let error = build_fails(&main, &["/host-import"]);
    assert!(
        error.contains(
            "warm_up request GET http://localhost/host-import failed: it called isola:worker/env@0.1.0 `bindings`, a host import, which is not available during warm-up"
        ),
        "{error}"
    );
    assert!(!error.contains("wasm backtrace"), "{error}");

    // An outbound fetch.
    let error = build_fails(&main, &["/outbound"]);
    assert!(
        error.contains(
            "warm_up request GET http://localhost/outbound failed: Error: fetch(http://example.com/) is not available during warm-up"
        ),
        "{error}"
    );

    // A handler that throws: the request and the error, with the worker's
    // frame.
    let error = build_fails(&main, &["https://example.com/throw"]);
    assert!(
        error.contains(
            "warm_up request GET https://example.com/throw failed: Error: the warm-up route failed on purpose"
        ),
        "{error}"
    );
    assert!(!error.contains("Failed to initialize component"), "{error}");

    // A request that never finishes: Wizer would snapshot it halfway.
    let error = build_fails(&main, &["/never"]);
    assert!(
        error.contains(
            "warm_up request GET http://localhost/never never finished: it (its response body or its waitUntil work) waited for something that does not happen at build time"
        ),
        "{error}"
    );

    // An answer that is not 2xx or 3xx.
    let error = build_fails(&main, &["/missing"]);
    assert!(
        error.contains(
            "warm_up request GET http://localhost/missing answered 404; a warm-up request must succeed (2xx or 3xx). Its body: {\"error\":\"not here\"}"
        ),
        "{error}"
    );

    // A service-worker script's listener runs too, without the bindings
    // it would have as globals.
    let service_worker = js_fixture("service-worker.js");
    let error = build_fails(&service_worker, &["/peek"]);
    assert!(
        error.contains(
            "warm_up request GET http://localhost/peek failed: ReferenceError: KV is not defined"
        ),
        "{error}"
    );

    // A target that is neither a path nor an http(s) URL.
    let error = build_fails(&main, &["ftp://example.com/"]);
    assert!(
        error.contains("--warm-up ftp://example.com/: `ftp://example.com/` is neither a path"),
        "{error}"
    );
}

#[test]
fn warm_up_in_isola_toml_is_checked_and_its_failures_name_the_worker() {
    // A failing request, from the config: the worker and the request.
    let failing = project("warm_up = [\"/\", \"/throw\"]");
    let output = run_isola(&["check", failing.config().to_str().unwrap()]);
    let error = stderr_of(&output);
    assert!(!output.status.success());
    assert!(error.contains("worker `warm`: cannot build "), "{error}");
    assert!(
        error.contains(
            "warm_up request GET http://localhost/throw failed: Error: the warm-up route failed on purpose"
        ),
        "{error}"
    );

    // Config errors point at the entry and its key.
    let bad = project(concat!(
        "warm_up = [\n",
        "  { method = \"GE T\", url = \"/\" },\n",
        "  \"ftp://example.com/x\",\n",
        "]\n",
    ));
    let output = run_isola(&["check", bad.config().to_str().unwrap()]);
    let error = stderr_of(&output);
    assert!(!output.status.success());
    assert!(
        error.contains(
            "isola.toml:8:3: error: worker[0].warm_up[0].method: `GE T` is not an HTTP method (such as GET or POST)"
        ),
        "{error}"
    );
    assert!(
        error.contains(
            "isola.toml:9:3: error: worker[0].warm_up[1]: `ftp://example.com/x` is neither a path"
        ),
        "{error}"
    );

    // Only a JavaScript worker has a fetch to run at build time.
    let rust =
        Project::new("[[worker]]\nname = \"rs\"\ncomponent = \"app.wasm\"\nwarm_up = [\"/\"]\n");
    std::fs::write(rust.path("app.wasm"), "").unwrap();
    let output = run_isola(&["check", rust.config().to_str().unwrap()]);
    let error = stderr_of(&output);
    assert!(!output.status.success());
    assert!(
        error.contains(
            "isola.toml:4:11: error: worker[0].warm_up: `warm_up` runs requests through a JavaScript worker's fetch when it is built; this worker has a `component`, not a `main` module"
        ),
        "{error}"
    );
}
