//! Source-mapped errors: a TypeScript worker's stack frames name its own
//! files, lines and columns (`explode@fail.ts:6:24`) in the log and in
//! `isola tail`, not positions in the bundle StarlingMonkey runs; without
//! the map beside the component they name the bundle, as before.
//!
//! One worker, `tests/js/ts-errors`: `src/index.ts` calls helpers of
//! `src/fail.ts`. The expected positions are those of the sources (lines
//! 1-based, columns 1-based, pointing at `new` or at the call).

use crate::js::shared_cache;
use crate::support::{Project, Tail, client, get, js_fixture, run_isola, stderr_of, worker};

fn ts_errors() -> String {
    js_fixture("ts-errors/src/index.ts")
}

/// Frames of each route, top first: where the error was made, then its
/// caller in index.ts.
const THROW: [&str; 2] = ["explode@fail.ts:6:24", "fetch@index.ts:12:28"];
const CONSOLE: [&str; 2] = ["describe@fail.ts:11:24", "fetch@index.ts:14:21"];
const WAIT_UNTIL: [&str; 2] = ["rejectLater@fail.ts:17:28", "fetch@index.ts:18:21"];

#[tokio::test(flavor = "multi_thread")]
async fn a_typescript_workers_errors_name_its_own_files_in_the_log_and_in_tail() {
    let project = Project::new(&format!(
        "[server]\ncache_dir = {:?}\nadmin = \"127.0.0.1:0\"\n\n\
         [[worker]]\nname = \"ts-errors\"\nmain = {:?}\nroutes = [\"/*\"]\n",
        shared_cache().display().to_string(),
        ts_errors(),
    ));
    let server = project.serve();
    let tail = Tail::start(server.admin_addr(), &["--format", "json"]);
    let client = client();

    // An uncaught exception: the host logs it with the stack.
    let (status, _, _) = get(&client, &server.url("/throw")).await;
    assert_eq!(status, 500);
    // One log event, but the stack makes it several lines, read one at a
    // time: wait for the last frame asserted.
    let logs = server.wait_for_log(THROW[1]);
    assert!(
        logs.contains("Uncaught Error: exploded: uncaught"),
        "{logs}"
    );
    assert!(logs.contains(THROW[0]), "{logs}");

    // `console.error(error)` prints the error's stack.
    let (status, _, body) = get(&client, &server.url("/console")).await;
    assert_eq!((status, body.as_str()), (200, "logged\n"));
    // Each line of the stack is a log line of its own: wait for the last.
    let logs = server.wait_for_log(CONSOLE[1]);
    assert!(logs.contains("Error: logged: console.error"), "{logs}");
    assert!(logs.contains(CONSOLE[0]), "{logs}");

    // A rejected waitUntil task, logged by the shim after the response.
    let (status, _, body) = get(&client, &server.url("/wait-until")).await;
    assert_eq!((status, body.as_str()), (200, "answered\n"));
    let logs = server.wait_for_log(WAIT_UNTIL[1]);
    assert!(
        logs.contains("waitUntil task failed: TypeError: rejected: waitUntil"),
        "{logs}"
    );
    assert!(logs.contains(WAIT_UNTIL[0]), "{logs}");

    // No frame of the worker's functions names the bundle.
    for function in ["explode", "describe", "rejectLater", "fetch"] {
        assert!(
            !logs.contains(&format!("{function}@worker.js:")),
            "{function} at a bundle position:\n{logs}"
        );
    }

    // `isola tail` shows the same lines as the log.
    let event = tail.event_for("/console");
    let messages: Vec<&str> = event["logs"]
        .as_array()
        .expect("the event's guest lines")
        .iter()
        .filter_map(|line| line["message"].as_str())
        .collect();
    for frame in CONSOLE {
        assert!(messages.contains(&frame), "{frame} not in {messages:?}");
    }
    // And, for the failed request, the host's line with the cause, the
    // reason and the mapped stack.
    let event = tail.event_for("/throw");
    assert_eq!(event["status"], 500, "{event}");
    let host: Vec<&str> = event["logs"]
        .as_array()
        .expect("the event's lines")
        .iter()
        .filter(|line| line["stream"] == "host")
        .filter_map(|line| line["message"].as_str())
        .collect();
    let failure = host
        .iter()
        .find(|message| message.contains("Uncaught Error: exploded: uncaught"))
        .unwrap_or_else(|| panic!("no failure line in {event}"));
    assert!(failure.contains("[exception]"), "{failure}");
    for frame in THROW {
        assert!(failure.contains(frame), "{frame} not in {failure}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_build_cache_keeps_the_map_and_a_component_without_one_logs_bundle_positions() {
    let dir = tempfile::tempdir().unwrap();
    let component = dir.path().join("ts-errors.wasm");
    let map = dir.path().join("ts-errors.wasm.map");
    let build = || {
        let output = run_isola(&["build", &ts_errors(), "-o", component.to_str().unwrap()]);
        assert!(output.status.success(), "{}", stderr_of(&output));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    build();
    assert!(map.is_file(), "no source map beside the component");
    // A build taken from the cache brings the map too.
    std::fs::remove_file(&component).unwrap();
    std::fs::remove_file(&map).unwrap();
    let stdout = build();
    assert!(stdout.contains("cached"), "{stdout}");
    let sources: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&map).expect("the cached build's map")).unwrap();
    let sources = sources["sources"].as_array().unwrap();
    assert!(
        sources.contains(&"fail.ts".into()) && sources.contains(&"index.ts".into()),
        "{sources:?}"
    );

    // Without its map, the component serves as before and its frames name
    // the bundle.
    std::fs::remove_file(&map).unwrap();
    let project = Project::new(&format!(
        "[server]\ncache_dir = {:?}\n\n{}",
        shared_cache().display().to_string(),
        worker("ts-errors", component.to_str().unwrap(), &["/*"])
    ));
    let server = project.serve();
    let client = client();
    let (status, _, body) = get(&client, &server.url("/console")).await;
    assert_eq!((status, body.as_str()), (200, "logged\n"));
    let (status, _, _) = get(&client, &server.url("/throw")).await;
    assert_eq!(status, 500);
    server.wait_for_log("describe@worker.js:");
    let logs = server.wait_for_log("explode@worker.js:");
    assert!(!logs.contains("fail.ts"), "{logs}");
}
