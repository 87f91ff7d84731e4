//! Durable Objects from JavaScript (issue 34): the test worker
//! `tests/js/durable.js` routes to its `Counter`, `Plain` and `Silent`
//! classes through stubs; real `isola serve`, real HTTP on 127.0.0.1.
//!
//! Each object has one live instance that serves its events one at a time;
//! its storage (keys, SQL, the alarm) is one SQLite database under the
//! state dir, so it survives the instance, a restart and a `kill -9`.

use std::collections::BTreeSet;
use std::sync::Once;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::{Value, json};

use crate::support::{Project, Server, client, get, repo_path, run_isola, stderr_of};

/// The `objects` worker: `tests/js/durable.js` with its three classes.
fn objects_worker() -> String {
    format!(
        "[[worker]]\nname = \"objects\"\nmain = {:?}\nroutes = [\"/*\"]\n\
         vars = {{ GREETING = \"hi from vars\" }}\n\
         durable_objects = {{ bindings = [\
           {{ name = \"COUNTER\", class_name = \"Counter\" }}, \
           {{ name = \"PLAIN\", class_name = \"Plain\" }}, \
           {{ name = \"SILENT\", class_name = \"Silent\" }}] }}\n\
         migrations = [\
           {{ tag = \"v1\", new_sqlite_classes = [\"Counter\", \"Silent\"] }}, \
           {{ tag = \"v2\", new_classes = [\"Plain\"] }}]\n",
        repo_path("tests/js/durable.js")
    )
}

/// `caller`: the same module as a worker that defines no classes and
/// reaches `objects`' through `script_name` (built as a fresh instance per
/// request, unlike `objects`).
fn caller_worker() -> String {
    format!(
        "[[worker]]\nname = \"caller\"\nmain = {:?}\nroutes = [\"/*\"]\n\
         durable_objects = {{ bindings = [\
           {{ name = \"COUNTER\", class_name = \"Counter\", script_name = \"objects\" }}, \
           {{ name = \"PLAIN\", class_name = \"Plain\", script_name = \"objects\" }}, \
           {{ name = \"SILENT\", class_name = \"Silent\", script_name = \"objects\" }}] }}\n",
        repo_path("tests/js/durable.js")
    )
}

/// The rate limiter of guest-examples, as guest-examples/isola.toml has it.
fn limiter_worker() -> String {
    format!(
        "[[worker]]\nname = \"js-rate-limiter\"\nmain = {:?}\nroutes = [\"/js/limited\", \"/js/limited/*\"]\n\
         vars = {{ CAPACITY = \"5\", REFILL_PER_SECOND = \"1\" }}\n\
         durable_objects.bindings = [{{ name = \"LIMITER\", class_name = \"RateLimiter\" }}]\n\
         migrations = [{{ tag = \"v1\", new_sqlite_classes = [\"RateLimiter\"] }}]\n",
        repo_path("guest-examples/js/rate-limiter/worker.js")
    )
}

/// `[server]` with the JS tests' shared compile cache and `server`'s
/// extra keys, then `workers`.
fn project_with(server: &str, workers: &str) -> Project {
    Project::new(&format!(
        "[server]\ncache_dir = {:?}\n{server}\n\n{workers}",
        crate::js::shared_cache().display().to_string()
    ))
}

fn project(server: &str) -> Project {
    project_with(server, &objects_worker())
}

/// Build and compile the workers of these tests once, before any serves.
fn warm_up() {
    static WARM: Once = Once::new();
    WARM.call_once(|| {
        let project = project_with(
            "",
            &format!(
                "{}\n{}\n{}",
                objects_worker().replace("routes = [\"/*\"]", "routes = [\"/objects/*\"]"),
                caller_worker(),
                limiter_worker()
            ),
        );
        let output = run_isola(&["compile", project.config().to_str().unwrap()]);
        assert!(
            output.status.success(),
            "building the Durable Object workers failed:\n{}",
            stderr_of(&output)
        );
    });
}

fn serve(project: &Project) -> Server {
    warm_up();
    project.serve()
}

/// GET `path`, expecting `status`; the body as text.
async fn text(server: &Server, path: &str, status: u16) -> String {
    let (got, _, body) = get(&client(), &server.url(path)).await;
    assert_eq!(
        got,
        status,
        "GET {path} answered {got}: {body}\nlogs:\n{}",
        server.logs()
    );
    body
}

/// GET `path`, expecting `status`; the body as JSON.
async fn json_at(server: &Server, path: &str, status: u16) -> Value {
    let body = text(server, path, status).await;
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_concurrent_increments_of_one_object_end_at_exactly_200() {
    let project = project("");
    let server = serve(&project);
    let server = &server;
    let bumps = (0..200).map(|_| async move {
        let (status, _, body) = get(&client(), &server.url("/counter/hot/increment")).await;
        assert_eq!(status, 200, "{body}\nlogs:\n{}", server.logs());
        body.parse::<u64>().unwrap()
    });
    let seen: BTreeSet<u64> = join_all(bumps).await.into_iter().collect();
    // Each increment saw a count no other saw: one event at a time.
    assert_eq!(seen, (1..=200).collect::<BTreeSet<_>>());
    let state = json_at(server, "/counter/hot", 200).await;
    assert_eq!(state["count"], 200, "{state}");
    // One live instance served them all: constructed once, its in-memory
    // count kept across the 200 events.
    assert_eq!(state["constructed"], 1, "{state}");
    assert_eq!(state["hits"], 200, "{state}");
    assert_eq!(state["name"], "hot", "{state}");

    // Other names are other objects, with storage of their own.
    for _ in 0..3 {
        text(server, "/counter/cold/increment", 200).await;
    }
    assert_eq!(
        text(server, "/counter/cold%20one/increment?by=5", 200).await,
        "5"
    );
    assert_eq!(json_at(server, "/counter/cold", 200).await["count"], 3);
    assert_eq!(json_at(server, "/counter/hot", 200).await["count"], 200);
    let spaced = json_at(server, "/counter/cold%20one", 200).await;
    assert_eq!(spaced["count"], 5, "{spaced}");
    assert_eq!(spaced["name"], "cold one", "{spaced}");
    // RPC and fetch reach the same object.
    assert_eq!(
        text(server, "/counter/cold/rpc-increment?by=10", 200).await,
        "13"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ids_are_stable_per_name_and_bad_or_foreign_ids_are_refused() {
    let project = project("");
    let server = serve(&project);
    let ids = json_at(&server, "/ids", 200).await;
    let hex = ids["hex"].as_str().unwrap();
    assert_eq!(hex.len(), 64, "{ids}");
    assert!(
        hex.chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
        "{ids}"
    );
    assert_eq!(ids["name"], "alice");
    assert_eq!(ids["sameName"], true);
    assert_eq!(ids["otherName"], false);
    assert_eq!(ids["otherNamespace"], false, "{ids}");
    assert_eq!(ids["uniqueName"], Value::Null);
    assert_eq!(ids["uniqueAgain"], false);
    assert_eq!(ids["parsed"], ids["unique"], "{ids}");
    assert_eq!(ids["parsedEquals"], true);
    assert_eq!(ids["stubId"], ids["hex"]);
    assert_eq!(ids["stubName"], "alice");

    // The same name gives the same id on every run.
    assert_eq!(json_at(&server, "/ids", 200).await["hex"], ids["hex"]);

    // A unique id reaches its object through idFromString.
    let unique = ids["unique"].as_str().unwrap();
    assert_eq!(text(&server, &format!("/unique/{unique}"), 200).await, "1");
    assert_eq!(text(&server, &format!("/unique/{unique}"), 200).await, "2");

    for garbled in ["not-hex", "abc", &"g".repeat(64), &format!("{hex}00")] {
        let refused = json_at(&server, &format!("/id-from-string?id={garbled}"), 400).await;
        assert_eq!(
            refused["error"]["name"], "TypeError",
            "{garbled}: {refused}"
        );
        let message = refused["error"]["message"].as_str().unwrap();
        assert!(!message.is_empty(), "{refused}");
    }
    // Another namespace's id is refused too.
    let foreign = json_at(&server, "/foreign-id", 400).await;
    assert_eq!(foreign["error"]["name"], "TypeError", "{foreign}");
    // A hand-made request with a garbled id never reaches an object.
    let (status, _, body) = get(&client(), &server.url("/raw-bad-id")).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.starts_with("bad-object-id: ") && body.contains("64 hex digits"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stubs_fetch_delivers_the_request_and_rethrows_the_objects_error() {
    let project = project("");
    let server = serve(&project);
    let echo = json_at(&server, "/counter/echo/echo", 200).await;
    assert_eq!(echo["method"], "POST", "{echo}");
    assert_eq!(echo["body"], "the body", "{echo}");
    assert_eq!(
        echo["url"], "http://counter.object.isola.internal/echo?q=1",
        "{echo}"
    );
    let headers = echo["headers"].as_object().unwrap();
    assert_eq!(headers["x-note"], "from the caller", "{echo}");
    // The addressing headers are the host's, taken off before the object;
    // a caller's `isola-object-rpc` never turns a fetch into an RPC call.
    for name in ["isola-object-id", "isola-object-name", "isola-object-rpc"] {
        assert!(
            !headers.contains_key(name),
            "{name} reached the object: {echo}"
        );
    }
    assert_eq!(json_at(&server, "/counter/echo", 200).await["count"], 0);

    assert_eq!(
        json_at(&server, "/counter/echo/redirect", 200).await,
        json!({ "status": 302, "location": "https://example.com/elsewhere" })
    );

    let thrown = json_at(&server, "/counter/thrower/throw", 200).await;
    assert_eq!(
        thrown["thrown"],
        json!({ "name": "RangeError", "message": "the object's fetch threw", "remote": true }),
        "{thrown}"
    );
    assert_eq!(thrown["isRangeError"], true);
    // The object lives on after its handler threw.
    assert_eq!(text(&server, "/counter/thrower/increment", 200).await, "1");

    // A class with neither fetch() nor alarm(): RPC works, fetch throws.
    let silent = json_at(&server, "/silent/quiet", 200).await;
    assert_eq!(silent["pong"], "pong 7", "{silent}");
    let message = silent["fetchError"]["message"].as_str().unwrap();
    assert!(message.contains("has no fetch() handler"), "{silent}");

    // An old-style class: `new Plain(state, env)`, its state loaded in
    // blockConcurrencyWhile before its first event.
    let first = json_at(&server, "/plain/p1", 200).await;
    assert_eq!(first["visits"], 1, "{first}");
    assert_eq!(first["name"], "p1");
    assert_eq!(first["greeting"], "hi from vars");
    assert_eq!(json_at(&server, "/plain/p1", 200).await["visits"], 2);
    // A class without alarm() cannot set one.
    let alarm = text(&server, "/plain/p1/alarm", 400).await;
    assert!(alarm.contains("must have an alarm() handler"), "{alarm}");
}

#[tokio::test(flavor = "multi_thread")]
async fn storage_lists_with_every_option_and_transactions_roll_back() {
    let project = project("");
    let server = serve(&project);
    let report = json_at(&server, "/counter/store/storage", 200).await;
    let expect = |key: &str, value: Value| {
        assert_eq!(report[key], value, "{key}: {report}");
    };
    expect("all", json!(["a/1", "a/2", "a/3", "b/1", "c"]));
    expect("prefix", json!(["a/1", "a/2", "a/3"]));
    expect("reverse", json!(["a/3", "a/2", "a/1"]));
    expect("limit", json!(["a/1", "a/2"]));
    expect("startEnd", json!(["a/2", "a/3"]));
    expect("startAfter", json!(["a/3", "b/1", "c"]));
    expect("reverseLimit", json!(["c", "b/1"]));
    expect("getMany", json!({ "a/1": 1, "c": { "nested": [1, 2] } }));
    expect("getMissing", json!(true));
    expect("deleteOne", json!(true));
    expect("deleteAgain", json!(false));
    expect("deleteMany", json!(2));
    expect("afterDelete", json!(["b/1", "c"]));
    expect(
        "bothStarts",
        json!("TypeError: list() cannot be called with both start and startAfter values."),
    );
    expect(
        "putUndefined",
        json!("TypeError: put() called with undefined value."),
    );
    expect("thrownOut", json!("abort the transfer"));
    expect("afterThrow", json!({ "balance": 100, "ghost": null }));
    expect(
        "rollback",
        json!({ "returned": "rolled back", "balance": 100 }),
    );
    expect("committed", json!({ "balance": 70, "spent": 30 }));
    expect("syncThrown", json!("undo the insert"));
    expect("syncRows", json!(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_exec_gives_rows_columns_and_counts() {
    let project = project("");
    let server = serve(&project);
    let report = json_at(&server, "/counter/sql/sql", 200).await;
    assert_eq!(
        report["columnNames"],
        json!(["id", "name", "price", "data"]),
        "{report}"
    );
    assert_eq!(
        report["rows"],
        json!([
            { "id": 1, "name": "apple", "price": 1.5, "data": [1, 2, 3] },
            { "id": 2, "name": "pear", "price": 2, "data": null },
        ]),
        "{report}"
    );
    assert_eq!(report["raw"], json!([["apple", 1.5], ["pear", 2]]));
    assert_eq!(report["iterated"], json!(["pear", "apple"]));
    assert_eq!(report["one"], json!({ "name": "pear" }));
    assert_eq!(
        report["oneError"],
        "Expected exactly one result from SQL query, but got multiple results."
    );
    assert!(
        report["badSql"]
            .as_str()
            .unwrap()
            .contains("no such table: no_such_table"),
        "{report}"
    );
    assert_eq!(report["rowsWritten"], 2, "{report}");
    assert!(report["rowsRead"].as_u64().unwrap() >= 2, "{report}");
    assert_eq!(report["databaseSize"], true);

    // `new_classes` (not `new_sqlite_classes`): no SQL API.
    let refused = text(&server, "/plain/nosql/sql", 400).await;
    assert!(refused.starts_with("TypeError: "), "{refused}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rpc_carries_structured_clone_values_and_rethrows_errors() {
    let project = project("");
    let server = serve(&project);
    let report = json_at(&server, "/rpc/caller", 200).await;
    let described = &report["described"];
    assert_eq!(
        described["mapEntries"],
        json!([["a", 1], ["b", 2]]),
        "{report}"
    );
    assert_eq!(described["mapIsMap"], true);
    assert_eq!(described["setSize"], 3);
    assert_eq!(described["dateIso"], "2026-01-02T03:04:05.000Z");
    assert_eq!(described["big"], "42");
    assert_eq!(
        described["echoed"],
        json!([["a", { "doubled": 2 }], ["b", { "doubled": 4 }]])
    );
    assert_eq!(described["echoedIsMap"], true);
    assert_eq!(
        report["fail"],
        json!({ "name": "TypeError", "message": "bad input", "remote": true }),
        "{report}"
    );
    assert_eq!(report["failIsTypeError"], true);
    assert_eq!(
        report["failCustom"],
        json!({ "name": "QuotaError", "message": "over quota", "remote": true })
    );
    assert_eq!(report["missing"]["name"], "TypeError", "{report}");
    assert_eq!(
        report["missing"]["message"],
        "The RPC receiver does not implement the method \"noSuchMethod\"."
    );
    assert_eq!(
        report["functionArgument"]["name"], "DataCloneError",
        "{report}"
    );
    assert_eq!(report["awaitedStubIsStub"], true);

    let clone = json_at(&server, "/clone/values", 200).await;
    let expected = json!({
        "nums": ["NaN", "Infinity", "-Infinity", "-0", "0", "1.5"],
        "hasUndef": true,
        "nil": null,
        "big": "12345678901234567890",
        "date": 0,
        "re": "a+b/gi",
        "bytes": [1, 2, 255],
        "floats": [0.5, -2],
        "buffer": [9, 8],
        "view": 5,
        "mapKey": 1,
        "mapSet": ["x"],
        "nested": ["ok", true, false],
        "cycle": true,
        "shared": true,
        "error": "kept",
    });
    // Through RPC both ways, and through storage.
    assert_eq!(clone["echoed"], expected, "{clone}");
    assert_eq!(clone["stored"], expected, "{clone}");
    assert_eq!(clone["cloneError"]["name"], "DataCloneError", "{clone}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_binding_with_script_name_reaches_another_workers_objects() {
    // `objects` defines the classes and serves no route of its own here.
    let objects = objects_worker().replace("routes = [\"/*\"]", "routes = [\"/objects/*\"]");
    let project = project_with("", &format!("{objects}\n{}", caller_worker()));
    let server = serve(&project);
    for expected in 1..=3 {
        assert_eq!(
            text(&server, "/counter/shared/increment", 200).await,
            expected.to_string()
        );
    }
    assert_eq!(
        text(&server, "/counter/shared/rpc-increment?by=4", 200).await,
        "7"
    );
    let state = json_at(&server, "/counter/shared", 200).await;
    assert_eq!(state["count"], 7, "{state}");
    // One object, one instance, in `objects`, whoever calls it.
    assert_eq!(
        (state["hits"].clone(), state["constructed"].clone()),
        (json!(4), json!(1))
    );
    let report = json_at(&server, "/rpc/remote", 200).await;
    assert_eq!(report["failIsTypeError"], true, "{report}");
    let ids = json_at(&server, "/ids", 200).await;
    assert_eq!(ids["sameName"], true, "{ids}");
    // Access lines are written once a run is done, in batches, and read
    // apart from the responses: wait for them.
    server.wait_for_log("worker=objects");
    server.wait_for_log("worker=caller");
}

/// Increment `name` `n` times at once; how many were acknowledged (200).
async fn increments(server: &Server, name: &str, n: usize) -> usize {
    let client = client();
    let url = server.url(&format!("/counter/{name}/increment"));
    let sent = (0..n).map(|_| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            match client.get(&url).send().await {
                Ok(response) if response.status() == 200 => response
                    .text()
                    .await
                    .is_ok_and(|t| t.parse::<u64>().is_ok()),
                _ => false,
            }
        }
    });
    join_all(sent).await.into_iter().filter(|ok| *ok).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_count_survives_a_restart_and_a_kill_9() {
    let project = project("");
    let server = serve(&project);
    assert_eq!(increments(&server, "kept", 25).await, 25);
    server.stop();

    let server = serve(&project);
    let state = json_at(&server, "/counter/kept", 200).await;
    assert_eq!(state["count"], 25, "{state}");
    // A new process, a new instance: module state started over.
    assert_eq!(state["hits"], 0, "{state}");

    // Increments in flight when the process dies: every acknowledged one
    // is kept, none is counted twice.
    let mut server = server;
    let killer = {
        let pid = server.pid();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let status = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .unwrap();
            assert!(status.success());
        })
    };
    let mut acknowledged = 0;
    let started = Instant::now();
    // Rounds of concurrent increments until the server is gone.
    loop {
        let acked = increments(&server, "kept", 20).await;
        acknowledged += acked;
        if acked < 20 || started.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    killer.await.unwrap();
    server.wait(Duration::from_secs(10));
    assert!(
        acknowledged > 0,
        "no increment was acknowledged before the kill"
    );

    let server = serve(&project);
    let count = json_at(&server, "/counter/kept", 200).await["count"]
        .as_u64()
        .unwrap() as usize;
    assert!(
        count >= 25 + acknowledged,
        "{acknowledged} acknowledged increments after 25, but the count is {count}"
    );
    // At most the in-flight ones (one round of 20) were applied without an
    // acknowledgement.
    assert!(count <= 25 + acknowledged + 20, "count {count}");
}

/// Poll `name`'s alarm status until `done` holds; panics after `within`.
async fn alarm_status_until(
    server: &Server,
    name: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let status = json_at(server, &format!("/counter/{name}/alarm-status"), 200).await;
        if done(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the alarm of {name} never got there: {status}\nlogs:\n{}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_alarm_fires_and_one_that_throws_is_retried() {
    let project = project("");
    let server = serve(&project);
    let set = json_at(&server, "/counter/waker/alarm?in=300", 200).await;
    assert!(set["at"].as_u64().is_some(), "{set}");
    let fired = alarm_status_until(&server, "waker", Duration::from_secs(10), |s| {
        !s["log"].as_array().unwrap().is_empty()
    })
    .await;
    assert_eq!(
        fired["log"],
        json!([{ "retryCount": 0, "isRetry": false, "sawAlarm": null }]),
        "{fired}"
    );
    // Delivered once, then cleared.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = json_at(&server, "/counter/waker/alarm-status", 200).await;
    assert_eq!(after["log"].as_array().unwrap().len(), 1, "{after}");
    assert_eq!(after["alarm"], Value::Null, "{after}");

    // The first try throws: logged, retried about 2 s later, and the retry
    // knows it is one.
    json_at(&server, "/counter/flaky/alarm?in=0&fail", 200).await;
    let retried = alarm_status_until(&server, "flaky", Duration::from_secs(15), |s| {
        s["log"].as_array().unwrap().len() >= 2
    })
    .await;
    assert_eq!(
        retried["log"],
        json!([
            { "retryCount": 0, "isRetry": false, "sawAlarm": null },
            { "retryCount": 1, "isRetry": true, "sawAlarm": null },
        ]),
        "{retried}"
    );
    server.wait_for_log("the alarm's first try fails");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let settled = json_at(&server, "/counter/flaky/alarm-status", 200).await;
    assert_eq!(settled["log"].as_array().unwrap().len(), 2, "{settled}");
    assert_eq!(settled["alarm"], Value::Null, "{settled}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_object_loses_its_memory_but_not_its_storage() {
    let project = project("durable_object_idle_s = 1");
    let server = serve(&project);
    for _ in 0..3 {
        text(&server, "/counter/sleepy/increment", 200).await;
    }
    let awake = json_at(&server, "/counter/sleepy", 200).await;
    assert_eq!(
        (awake["count"].clone(), awake["hits"].clone()),
        (json!(3), json!(3))
    );
    // Kept alive while in use: events less than the idle time apart.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        json_at(&server, "/counter/sleepy", 200).await;
    }
    assert_eq!(json_at(&server, "/counter/sleepy", 200).await["hits"], 3);

    tokio::time::sleep(Duration::from_millis(3000)).await;
    let woken = json_at(&server, "/counter/sleepy", 200).await;
    assert_eq!(woken["count"], 3, "{woken}");
    assert_eq!(woken["hits"], 0, "the instance was not evicted: {woken}");
    assert_eq!(text(&server, "/counter/sleepy/increment", 200).await, "4");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rate_limiter_example_answers_429_after_its_budget() {
    let project = project_with("", &limiter_worker());
    let server = serve(&project);
    let client = client();
    let ask = |key: &'static str| {
        let client = client.clone();
        let url = server.url("/js/limited");
        async move {
            let response = client
                .get(url)
                .header("x-client-key", key)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            (status, retry_after, response.text().await.unwrap())
        }
    };
    // Ten at once for one key: the bucket holds five tokens, and its
    // object hands each out once.
    let burst = join_all((0..10).map(|_| ask("ada"))).await;
    let allowed = burst.iter().filter(|(s, _, _)| *s == 200).count();
    let limited: Vec<_> = burst.iter().filter(|(s, _, _)| *s == 429).collect();
    assert_eq!(allowed, 5, "{burst:?}\nlogs:\n{}", server.logs());
    assert_eq!(limited.len(), 5, "{burst:?}");
    assert_eq!(limited[0].1.as_deref(), Some("1"), "{burst:?}");
    // Another key has its own bucket.
    assert_eq!(ask("grace").await.0, 200);
    // A token comes back after a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(ask("ada").await.0, 200);
    assert_eq!(ask("ada").await.0, 429);
}
