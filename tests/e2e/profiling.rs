//! CPU profiles of single requests (`POST /profile`, `isola profile`): the
//! profiled request's samples name the guest's hot function; requests that
//! do not match, or come after the count, are not profiled; bad input is a
//! clear 4xx.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};

use isola_test_programs as guests;

use crate::js::{shared_cache, warm_up};
use crate::support::{Project, Server, client, get, isola, worker};

fn project(workers: &str) -> Project {
    Project::new(&format!(
        "[server]\nadmin = \"127.0.0.1:0\"\ncache_dir = {:?}\n\n{workers}",
        shared_cache().display().to_string()
    ))
}

/// `isola profile` as a child, once it says the worker is armed.
fn start_profile(server: &Server, out: &Path, args: &[&str]) -> Child {
    let mut child = isola()
        .args(["profile", "--admin", &server.admin_addr().to_string()])
        .arg("--out")
        .arg(out)
        .args(["--timeout", "60"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting isola profile");
    let mut first = String::new();
    BufReader::new(child.stderr.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("armed: "), "{first:?}");
    child
}

/// Wait for `isola profile` to finish; its stdout lines (one per profile).
fn finish_profile(child: Child) -> Vec<String> {
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "isola profile failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout.lines().map(str::to_owned).collect()
}

/// The profile files in `dir`.
fn profiles_in(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

/// The number in `(N samples)` at the end of an `isola profile` line.
fn samples_of(line: &str) -> u64 {
    let start = line.rfind('(').expect("a sample count") + 1;
    line[start..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("{line}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_profiled_request_names_the_guests_hot_function_and_others_pay_nothing() {
    let project = project(&format!(
        "{}cpu_ms = 10000\nwall_ms = 20000\n",
        worker("limits", guests::LIMITS, &["/*"])
    ));
    let server = project.serve();
    let client = client();
    let out = tempfile::tempdir().unwrap();
    let profile = start_profile(
        &server,
        out.path(),
        &["--worker", "limits", "--path", "/checksum", "-n", "1"],
    );

    // Not under the path: not profiled.
    let (status, _, _) = get(&client, &server.url("/compute?ms=20")).await;
    assert_eq!(status, 200);
    // The one profiled request: some 100 ms in `checksum`.
    let (status, id, _) = get(&client, &server.url("/checksum?iters=100000000")).await;
    assert_eq!(status, 200);
    let id = id.unwrap();
    let lines = finish_profile(profile);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("GET /checksum"), "{lines:?}");
    assert!(samples_of(&lines[0]) >= 10, "{lines:?}");

    let files = profiles_in(out.path());
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.contains(&format!("-limits-{id}.json")), "{name}");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).expect("the profile is JSON");
    assert!(
        json["threads"].as_array().is_some_and(|t| !t.is_empty()),
        "not a processed profile: {}",
        &text[..text.len().min(500)]
    );
    // Only sampled functions are named: the hot one is, one this request
    // never ran is not.
    assert!(text.contains("limits::checksum"), "no checksum frame");
    assert!(!text.contains("limits::recurse"), "a frame never run");

    // The count is spent: later requests are not profiled.
    let (status, _, _) = get(&client, &server.url("/checksum?iters=1000")).await;
    assert_eq!(status, 200);
    let (status, _, listed) = get(&client, &server.admin_url("/profiles?worker=limits")).await;
    assert_eq!(status, 200);
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["request_id"], id.as_str());
    assert_eq!(listed[0]["path"], "/checksum");
    // Downloaded from the admin listener, it is the same file.
    let file = listed[0]["file"].as_str().unwrap();
    let (status, _, downloaded) =
        get(&client, &server.admin_url(&format!("/profiles/{file}"))).await;
    assert_eq!((status, downloaded), (200, text));
    assert!(
        server
            .wait_for_log("request profiled")
            .contains(&format!("request_id={id}"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn profiled_requests_keep_their_cpu_and_wall_limits() {
    let project = project(&format!(
        "{}cpu_ms = 50\nwall_ms = 10000\n{}cpu_ms = 5000\nwall_ms = 300\n",
        worker("cpu", guests::LIMITS, &["/cpu/*"]),
        worker("wall", guests::LIMITS, &["/wall/*"]),
    ));
    let server = project.serve();
    let client = client();
    let out = tempfile::tempdir().unwrap();
    // Spinning wasm: one worker runs out of CPU, the other of wall time
    // (its epoch deadline now drives the sampler, which must end it).
    for (name, status, reason) in [("cpu", 503, "cpu-limit"), ("wall", 504, "wall-limit")] {
        let profile = start_profile(&server, out.path(), &["--worker", name, "-n", "1"]);
        let response = client
            .get(server.url(&format!("/{name}/spin")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{name}");
        assert_eq!(response.headers()["x-isola-error"], reason, "{name}");
        let lines = finish_profile(profile);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(samples_of(&lines[0]) > 0, "{lines:?}");
    }
    assert_eq!(profiles_in(out.path()).len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_javascript_request_is_profiled_too() {
    warm_up();
    let apis = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/js/apis.js");
    let project = project(&format!(
        "[[worker]]\nname = \"js\"\nmain = {:?}\nroutes = [\"/*\"]\ncpu_ms = 5000\nwall_ms = 10000\n",
        apis.display().to_string()
    ));
    let server = project.serve();
    let out = tempfile::tempdir().unwrap();
    let profile = start_profile(&server, out.path(), &["--worker", "js", "-n", "1"]);
    let (status, _, body) = get(&client(), &server.url("/work?n=1000")).await;
    assert_eq!(status, 200, "{body}\n{}", server.logs());
    let lines = finish_profile(profile);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(samples_of(&lines[0]) >= 10, "{lines:?}");
    // The frames are StarlingMonkey's own functions (the JS interpreter
    // running the loop), which its build leaves unnamed: wasm function
    // indices.
    let text = std::fs::read_to_string(&profiles_in(out.path())[0]).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).expect("the profile is JSON");
    assert!(json["threads"].as_array().is_some_and(|t| !t.is_empty()));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_profile_requests_are_refused_clearly() {
    let project = project(&worker("limits", guests::LIMITS, &["/*"]));
    let server = project.serve();
    let client = client();
    for (query, status, says) in [
        ("", 400, "add ?worker=NAME"),
        ("worker=nope", 404, "no worker `nope`"),
        ("worker=limits&count=0", 400, "count=0"),
        ("worker=limits&count=1000", 400, "count=1000"),
        ("worker=limits&interval_ms=5000", 400, "interval_ms=5000"),
        ("worker=limits&path=checksum", 400, "starting with `/`"),
    ] {
        let response = client
            .post(server.admin_url(&format!("/profile?{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{query}");
        let body = response.text().await.unwrap();
        assert!(body.contains(says), "{query}: {body}");
    }
    for path in [
        "/profiles/..%2Fconfig.json",
        "/profiles/x.meta.json",
        "/profiles/nope.json",
    ] {
        let response = client.get(server.admin_url(path)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{path}");
    }
    // Nothing was armed by the refusals.
    let (status, _, _) = get(&client, &server.url("/checksum?iters=1000")).await;
    assert_eq!(status, 200);
    let (status, _, listed) = get(&client, &server.admin_url("/profiles")).await;
    assert_eq!((status, listed.as_str()), (200, "[]"));
    // The command line says what is wrong and fails.
    let output = isola()
        .args(["profile", "--admin", &server.admin_addr().to_string()])
        .args(["--worker", "nope"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("no worker `nope`"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
