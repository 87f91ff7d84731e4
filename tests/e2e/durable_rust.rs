//! Durable Objects written in Rust: the `durable-counter` guest example
//! (`guest-examples/rust/durable-counter`), a `Counter` class registered
//! with `#[isola_sdk::durable_object]` and reached through
//! `env.durable_object("COUNTER")` stubs.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use isola_test_programs as guests;
use serde_json::Value;

use crate::support::{Project, Server, client, worker};

fn counter_project() -> Project {
    Project::new(&format!(
        "{}durable_objects = {{ bindings = [{{ name = \"COUNTER\", class_name = \"Counter\" }}] }}\n\
         migrations = [{{ tag = \"v1\", new_sqlite_classes = [\"Counter\"] }}]\n",
        worker(
            "durable-counter",
            guests::EXAMPLE_DURABLE_COUNTER,
            &["/counter/*"]
        ),
    ))
}

/// Status, `x-served-by-live-instance` and the JSON body (a body that is
/// not JSON comes as a JSON string).
async fn call(client: &reqwest::Client, method: &str, url: &str) -> (u16, u64, Value) {
    let request = match method {
        "GET" => client.get(url),
        "POST" => client.post(url),
        other => panic!("no {other} here"),
    };
    let response = request.send().await.expect("request sent");
    let status = response.status().as_u16();
    let served = response
        .headers()
        .get("x-served-by-live-instance")
        .map_or(0, |v| v.to_str().unwrap().parse().unwrap());
    let text = response.text().await.expect("body read");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, served, body)
}

async fn count_of(client: &reqwest::Client, server: &Server, name: &str) -> (u64, u64) {
    let (status, served, body) =
        call(client, "GET", &server.url(&format!("/counter/{name}"))).await;
    assert_eq!(status, 200, "{body}");
    (body["count"].as_u64().expect("a count"), served)
}

#[tokio::test(flavor = "multi_thread")]
async fn rust_counter_counts_100_concurrent_increments_and_keeps_its_instance() {
    let project = counter_project();
    let server = project.serve();
    let client = client();

    // 100 increments at once, all to the object called "a": the host
    // delivers them one at a time, so each sees the count the one before
    // left, and the answers are exactly 1..=100.
    let url = server.url("/counter/a/increment");
    let increments = (0..100).map(|_| call(&client, "POST", &url));
    let answers = join_all(increments).await;
    let mut counts = BTreeSet::new();
    for (status, _, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["name"], "a", "{body}");
        counts.insert(body["count"].as_u64().unwrap());
    }
    assert_eq!(counts, (1..=100).collect::<BTreeSet<u64>>());
    let id = answers[0].2["id"].as_str().unwrap().to_owned();
    assert!(
        id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    assert!(answers.iter().all(|(_, _, body)| body["id"] == id.as_str()));

    // One instance served all 100 and serves the next request too: its
    // cached count and event counter lived across the events.
    let (count, served) = count_of(&client, &server, "a").await;
    assert_eq!(count, 100);
    assert_eq!(served, 101, "the object's instance did not persist");
    let (_, served_next) = count_of(&client, &server, "a").await;
    assert_eq!(served_next, 102);

    // Another name is another object, with its own storage and instance.
    assert_eq!(count_of(&client, &server, "b").await, (0, 1));
    let (status, served, body) =
        call(&client, "POST", &server.url("/counter/b/increment?by=5")).await;
    assert_eq!((status, served, &body["count"]), (200, 2, &Value::from(5)));
    assert_ne!(body["id"], id.as_str());
    assert_eq!(count_of(&client, &server, "a").await.0, 100);
    let (status, _, _) = call(&client, "POST", &server.url("/counter/b/increment?by=x")).await;
    assert_eq!(status, 400);

    // A killed server loses the instances, never the storage.
    drop(server);
    let server = project.serve();
    assert_eq!(count_of(&client, &server, "a").await, (100, 1));
    assert_eq!(count_of(&client, &server, "b").await, (5, 1));
}

/// Poll the object's alarm record until `done` says so.
async fn wait_for_alarm(
    client: &reqwest::Client,
    server: &Server,
    name: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (status, _, body) = call(
            client,
            "GET",
            &server.url(&format!("/counter/{name}/alarm")),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        if done(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "the alarm did not get there in {within:?}: {body}\n{}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rust_counter_alarm_fires_and_is_retried_after_an_error() {
    let project = counter_project();
    let server = project.serve();
    let client = client();

    // An alarm 300 ms from now fires once and is then cleared.
    let (status, _, body) = call(
        &client,
        "POST",
        &server.url("/counter/timer/alarm?in_ms=300"),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let scheduled = body["scheduled"].as_u64().unwrap();
    let (_, _, pending) = call(&client, "GET", &server.url("/counter/timer/alarm")).await;
    assert_eq!(pending["scheduled"], scheduled, "{pending}");
    let body = wait_for_alarm(&client, &server, "timer", Duration::from_secs(15), |body| {
        !body["fired"].as_array().unwrap().is_empty() && body["scheduled"].is_null()
    })
    .await;
    let fired = body["fired"].as_array().unwrap();
    assert_eq!(fired.len(), 1, "{body}");
    assert_eq!(fired[0]["outcome"], "ok");
    assert_eq!(fired[0]["retry_count"], 0);
    assert!(
        fired[0]["fired_at"].as_u64().unwrap() + 50 >= scheduled,
        "fired before it was due: {body}"
    );

    // An alarm whose first try fails (the handler returns Err, the SDK
    // answers 500) is tried again about 2 s later, with retry_count 1.
    let (status, _, _) = call(
        &client,
        "POST",
        &server.url("/counter/flaky/alarm?in_ms=0&fail=1"),
    )
    .await;
    assert_eq!(status, 202);
    let body = wait_for_alarm(&client, &server, "flaky", Duration::from_secs(20), |body| {
        body["fired"].as_array().unwrap().len() >= 2 && body["scheduled"].is_null()
    })
    .await;
    let fired = body["fired"].as_array().unwrap();
    assert_eq!(
        (
            &fired[0]["outcome"],
            &fired[0]["retry_count"],
            &fired[1]["outcome"],
            &fired[1]["retry_count"]
        ),
        (
            &Value::from("failed"),
            &Value::from(0),
            &Value::from("ok"),
            &Value::from(1)
        ),
        "{body}"
    );
    let gap = fired[1]["fired_at"].as_u64().unwrap() - fired[0]["fired_at"].as_u64().unwrap();
    assert!(
        (1_800..10_000).contains(&gap),
        "retried {gap} ms after the failure"
    );
    assert_eq!(fired.len(), 2, "{body}");
}

/// The `durable-storage` test guest: classes `Store` and `Echo`
/// registered, `Ghost` configured but registered by no code.
fn storage_project() -> Project {
    Project::new(&format!(
        "{}durable_objects = {{ bindings = [\
         {{ name = \"STORE\", class_name = \"Store\" }}, \
         {{ name = \"ECHO\", class_name = \"Echo\" }}, \
         {{ name = \"GHOST\", class_name = \"Ghost\" }}] }}\n\
         migrations = [{{ tag = \"v1\", new_sqlite_classes = [\"Store\", \"Echo\", \"Ghost\"] }}]\n",
        worker("durable-storage", guests::DURABLE_STORAGE, &["/*"]),
    ))
}

fn is_id(value: &Value) -> bool {
    value.as_str().is_some_and(|id| {
        id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn rust_sdk_ids_stubs_and_dispatch_to_registered_classes() {
    let project = storage_project();
    let server = project.serve();
    let client = client();

    let (status, _, ids) = call(&client, "GET", &server.url("/ids")).await;
    assert_eq!(status, 200, "{ids}");
    assert!(is_id(&ids["a"]) && is_id(&ids["unique"]), "{ids}");
    assert_eq!(ids["a_name"], "a");
    assert_eq!(ids["same"], true);
    assert_eq!(ids["b_differs"], true);
    assert_ne!(ids["unique"], ids["a"]);
    assert!(ids["unique_name"].is_null());
    assert_eq!(ids["parsed_equals"], true);
    assert_eq!(ids["parsed"], ids["a"]);
    assert_eq!(ids["bad_hex"], "invalid");
    assert_eq!(ids["unknown_binding"], "invalid");

    let (status, _, body) = call(&client, "GET", &server.url("/outside")).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.as_str().unwrap().starts_with("invalid: "), "{body}");

    // The object sees its class, id and name, and none of the stub's
    // addressing headers; its value lives across its events.
    for events in 1..=2 {
        let (status, _, who) = call(&client, "GET", &server.url("/store/a/whoami")).await;
        assert_eq!(status, 200, "{who}");
        assert_eq!(
            (&who["class"], &who["id"], &who["name"], &who["events"]),
            (
                &Value::from("Store"),
                &ids["a"],
                &Value::from("a"),
                &Value::from(events)
            ),
            "{who}"
        );
        assert_eq!(who["leaked_headers"], serde_json::json!([]), "{who}");
    }
    // A fetch that returns Err traps: a 500, and the next event finds a
    // fresh instance (its value made again), the storage untouched.
    let put = client
        .post(server.url("/store/a/put"))
        .body("k=kept")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 204);
    let (status, _, _) = call(&client, "GET", &server.url("/store/a/fail")).await;
    assert_eq!(status, 500);
    let (_, _, who) = call(&client, "GET", &server.url("/store/a/whoami")).await;
    assert_eq!(who["events"], 1, "{who}");
    let (status, _, kept) = call(&client, "GET", &server.url("/store/a/get?key=k")).await;
    assert_eq!((status, kept), (200, Value::from("kept")));

    // An id from new_unique_id has no name.
    let (_, _, who) = call(&client, "GET", &server.url("/unique/whoami")).await;
    assert!(is_id(&who["id"]) && who["id"] != ids["a"], "{who}");
    assert!(who["name"].is_null(), "{who}");

    // Method, path, query, headers and body go through the stub; the name
    // travels percent-encoded and arrives whole.
    let echo = client
        .post(server.url("/echo/caf%C3%A9%20x%2Fy/some/path?q=1"))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(echo.status(), 200);
    let echo: Value = echo.json().await.unwrap();
    assert_eq!(
        echo,
        serde_json::json!({
            "class": "Echo", "name": "café x/y", "method": "POST", "path": "/some/path",
            "query": "q=1", "x-test": "through the stub", "body": "hello",
        })
    );

    // A class the config defines but no code registered.
    let (status, _, body) = call(&client, "GET", &server.url("/ghost/x")).await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body.as_str()
            .unwrap()
            .contains("no Durable Object class `Ghost` is registered in this worker (registered: "),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rust_sdk_storage_calls_transactions_sql_and_alarms() {
    let project = storage_project();
    let server = project.serve();
    let client = client();
    let (status, _, mut script) = call(&client, "POST", &server.url("/store/s/script")).await;
    assert_eq!(status, 200, "{script}");
    // A binding error, whose kind is the host's to choose: the message is
    // SQLite's.
    let sql_error = script["sql_error"].take();
    assert!(
        sql_error
            .as_str()
            .is_some_and(|e| e.ends_with(": no such table: nowhere")),
        "{sql_error}"
    );
    assert_eq!(
        script,
        serde_json::json!({
            "get": "1",
            "get_missing": null,
            "get_json": {"n": 1, "s": "two"},
            "get_many": ["c", "a"],
            "list": ["a", "b", "c", "json", "p:x", "p:y"],
            "list_json": [["json", {"n": 1, "s": "two"}]],
            "list_prefix_keys": ["p:x", "p:y"],
            "list_range": ["b", "c", "json"],
            "list_after": ["b", "c"],
            "list_reverse": ["p:y", "p:x"],
            "delete": true,
            "delete_again": false,
            "delete_many": 2,
            "txn_err": "no",
            "after_err": null,
            "txn_ok": 7,
            "after_ok": "ok",
            "after_rollback": "ok",
            "nested": ["kept", null],
            "sql_written": 2,
            "sql_columns": ["id", "label", "weight"],
            "sql_items": [[1, "one", 1.5], [2, "two", 2.0]],
            "sql_one": 2,
            "sql_not_one": "expected exactly one row, got 2",
            "sql_raw": [2, 3.5],
            "sql_error": null,
            "size_positive": true,
            "alarm_set": true,
            "alarm_deleted": null,
            "after_delete_all": [],
            "table_after_delete_all": true,
        })
    );
    // The script runs again on the same object: delete_all left nothing
    // behind (the table is made anew).
    let (status, _, mut again) = call(&client, "POST", &server.url("/store/s/script")).await;
    again["sql_error"].take();
    assert_eq!((status, again), (200, script));
}
