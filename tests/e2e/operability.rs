//! The operator's side: admin endpoints (/metrics, /readyz, /healthz,
//! /tail), access logs as JSON, reload by SIGHUP and `isola reload`, and
//! `isola dev` readiness.

use std::process::Command;
use std::time::{Duration, Instant};

use isola_test_programs::{CHATTY, COUNTER, SLOW};

use crate::support::{Project, Server, Tail, client, get, run_isola, stderr_of, worker};

fn admin_config(extra_server: &str, workers: &str) -> String {
    format!("[server]\nadmin = \"127.0.0.1:0\"\n{extra_server}\n{workers}")
}

/// The metrics as parsed by a Prometheus text-format parser (which fails
/// on malformed text).
async fn scrape(client: &reqwest::Client, url: &str) -> prometheus_parse::Scrape {
    let response = client.get(url).send().await.expect("GET /metrics");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    for line in text.lines() {
        assert!(
            line.starts_with('#') || line.split_whitespace().count() == 2,
            "not `name{{labels}} value`: {line:?}"
        );
    }
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .unwrap_or_else(|e| panic!("invalid Prometheus text ({e}):\n{text}"))
}

/// The value of the sample `name` whose labels include `labels`.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => panic!("no summaries expected"),
        })
}

#[tokio::test]
async fn metrics_move_with_requests_and_parse_as_prometheus_text() {
    let project = Project::new(&admin_config(
        "admin_token = \"s3cret\"",
        &format!(
            "{}{}",
            worker("chatty", CHATTY, &["/print", "/fail"]),
            worker("counter", COUNTER, &["/*"])
        ),
    ));
    let server = project.serve();
    let client = client();
    let metrics = server.admin_url("/metrics");

    // The token is checked on every call, health checks included.
    for path in ["/metrics", "/healthz", "/readyz", "/tail"] {
        let response = client.get(server.admin_url(path)).send().await.unwrap();
        assert_eq!(response.status(), 401, "{path} without the token");
        let response = client
            .get(server.admin_url(path))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{path} with a wrong token");
    }
    let authed = reqwest::Client::builder()
        .default_headers(
            [(
                reqwest::header::AUTHORIZATION,
                "Bearer s3cret".parse().unwrap(),
            )]
            .into_iter()
            .collect(),
        )
        .build()
        .unwrap();
    let before = scrape(&authed, &metrics).await;
    assert_eq!(
        sample(&before, "isola_requests_total", &[("worker", "counter")]),
        None
    );
    assert_eq!(sample(&before, "isola_ready", &[]), Some(1.0));
    assert_eq!(
        sample(&before, "isola_compile_cache_total", &[]).map(|n| n >= 1.0),
        Some(true),
        "the two loads are counted as hits or misses"
    );

    for _ in 0..3 {
        assert_eq!(get(&client, &server.url("/")).await.0, 200);
    }
    assert_eq!(get(&client, &server.url("/fail")).await.0, 500);
    let responses = {
        let url = server.url("/print");
        futures_util::future::join_all((0..2).map(|_| get(&client, &url))).await
    };
    assert!(responses.iter().all(|r| r.0 == 200));

    // Access lines (and so the metrics) are written when the guest is done.
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let after = scrape(&authed, &metrics).await;
        if sample(
            &after,
            "isola_requests_total",
            &[("worker", "chatty"), ("status", "200")],
        ) == Some(2.0)
        {
            break after;
        }
        assert!(Instant::now() < deadline, "metrics never moved");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let counter = [("worker", "counter")];
    assert_eq!(
        sample(
            &after,
            "isola_requests_total",
            &[("worker", "counter"), ("status", "200")]
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &after,
            "isola_requests_total",
            &[("worker", "chatty"), ("status", "500")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&after, "isola_request_duration_seconds", &counter),
        Some(3.0),
        "a latency histogram observation per request"
    );
    assert_eq!(
        sample(&after, "isola_request_cpu_seconds", &counter),
        Some(3.0)
    );
    assert_eq!(
        sample(&after, "isola_instantiation_seconds", &counter),
        Some(3.0)
    );
    assert_eq!(sample(&after, "isola_requests_in_flight", &[]), Some(0.0));
    assert_eq!(sample(&after, "isola_guest_tasks", &[]), Some(0.0));
    assert_eq!(sample(&after, "isola_config_generation", &[]), Some(1.0));
    let text = authed
        .get(&metrics)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for family in [
        "# TYPE isola_request_duration_seconds histogram",
        "# TYPE isola_instantiation_seconds histogram",
        "# TYPE isola_requests_in_flight gauge",
    ] {
        assert!(text.contains(family), "{family} missing:\n{text}");
    }

    // A limit hit is counted by kind.
    let spin = Project::new(&admin_config(
        "",
        &format!(
            "{}cpu_ms = 5\n",
            worker("limits", isola_test_programs::LIMITS, &["/*"])
        ),
    ));
    let limited = spin.serve();
    assert_eq!(get(&client, &limited.url("/spin")).await.0, 503);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let scraped = scrape(&client, &limited.admin_url("/metrics")).await;
        if sample(
            &scraped,
            "isola_limit_hits_total",
            &[("worker", "limits"), ("limit", "cpu-limit")],
        ) == Some(1.0)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the CPU limit hit was not counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn an_admin_listener_off_loopback_without_a_token_refuses_to_start() {
    let project = Project::new(&format!(
        "[server]\nadmin = \"0.0.0.0:0\"\n{}",
        worker("counter", COUNTER, &["/*"])
    ));
    let output = run_isola(&[
        "serve",
        project.config().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "it never listened");
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("server.admin") && stderr.contains("admin_token"),
        "{stderr}"
    );
}

#[tokio::test]
async fn readyz_is_503_until_dev_has_built_and_loaded_the_workers() {
    let project = Project::new("");
    std::fs::write(
        project.config(),
        format!(
            "[server]\nadmin = \"127.0.0.1:0\"\n[[worker]]\nname = \"app\"\ncomponent = \"app.wasm\"\n\
             build = {{ command = \"sleep 2 && cp {COUNTER} app.wasm\" }}\n"
        ),
    )
    .unwrap();
    let server = Server::start_in(
        project.dir.path(),
        &["dev", "isola.toml", "--listen", "127.0.0.1:0"],
        &[],
    );
    let client = client();
    let (status, _, body) = get(&client, &server.admin_url("/readyz")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(get(&client, &server.admin_url("/healthz")).await.0, 200);
    let response = client.get(server.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["x-isola-error"], "not-ready");

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _, body) = get(&client, &server.admin_url("/readyz")).await;
        if status == 200 {
            assert!(body.contains("generation 1"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "never ready:\n{}", server.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Dev serves as serve does: a fresh instance per request.
    for _ in 0..3 {
        assert_eq!(get(&client, &server.url("/")).await.2, "1");
    }
}

#[tokio::test]
async fn access_lines_as_json() {
    let project = Project::new(&worker("counter", COUNTER, &["/*"]));
    let server = Server::start(&[
        "--log-format",
        "json",
        "serve",
        project.config().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    let (status, id, _) = get(&client(), &server.url("/hello?x=1")).await;
    assert_eq!(status, 200);
    let id = id.unwrap();
    let logs = server.wait_for_log(&id);
    let line = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["target"] == "isola::access" && l["request_id"] == id.as_str())
        .unwrap_or_else(|| panic!("no JSON access line:\n{logs}"));
    assert_eq!(line["worker"], "counter");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/hello");
    assert_eq!(line["status"], 200);
    assert_eq!(line["limit"], "none");
    for field in [
        "cpu_ms",
        "wall_ms",
        "instantiate_ms",
        "fuel",
        "subrequests",
        "client",
        "timestamp",
        "level",
    ] {
        assert!(line.get(field).is_some(), "{field} missing: {line}");
    }
    // Every line is JSON.
    for l in logs.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(l).is_ok(),
            "not JSON: {l}"
        );
    }
}

#[tokio::test]
async fn tail_streams_the_requests_made_after_it_connected_with_filters() {
    let project = Project::new(&admin_config(
        "",
        &format!(
            "{}{}",
            worker("chatty", CHATTY, &["/print", "/fail"]),
            worker("counter", COUNTER, &["/count"])
        ),
    ));
    let server = project.serve();
    let admin = server.admin_addr();
    let client = client();
    // Made before any tail connected: never shown.
    get(&client, &server.url("/count")).await;

    let all = Tail::start(admin, &["--format", "json"]);
    let errors = Tail::start(admin, &["--format", "json", "--status", "5xx"]);
    let chatty = Tail::start(admin, &["--worker", "chatty"]);

    let (_, print_id, _) = get(&client, &server.url("/print")).await;
    let (status, fail_id, _) = get(&client, &server.url("/fail")).await;
    assert_eq!(status, 500);
    get(&client, &server.url("/count")).await;
    let (status, _, _) = get(&client, &server.url("/nowhere")).await;
    assert_eq!(status, 404);

    let events: Vec<serde_json::Value> = all
        .lines(4)
        .iter()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(events.len(), 4, "{events:?}");
    let mut seen: Vec<(String, u64)> = events
        .iter()
        .map(|e| {
            (
                e["path"].as_str().unwrap().to_owned(),
                e["status"].as_u64().unwrap(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("/count".to_owned(), 200),
            ("/fail".to_owned(), 500),
            ("/nowhere".to_owned(), 404),
            ("/print".to_owned(), 200)
        ]
    );
    let print = events.iter().find(|e| e["path"] == "/print").unwrap();
    assert_eq!(print["request_id"], print_id.clone().unwrap().as_str());
    assert_eq!(print["worker"], "chatty");
    let logs = print["logs"].as_array().unwrap();
    assert!(
        logs.iter().any(|l| l["stream"] == "stdout"
            && l["message"] == format!("to stdout from {}", print_id.clone().unwrap()).as_str()),
        "{logs:?}"
    );
    assert!(logs.iter().any(|l| l["stream"] == "stderr"), "{logs:?}");

    let errors: Vec<serde_json::Value> = errors
        .lines(1)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["request_id"], fail_id.unwrap().as_str());

    // Pretty: one line per request, guest lines indented under it.
    let chatty = chatty.lines(4);
    assert!(chatty[0].contains(" chatty GET /print 200 "), "{chatty:?}");
    assert_eq!(
        chatty[1],
        format!("  stdout: to stdout from {}", print_id.unwrap())
    );
    assert!(
        chatty.iter().any(|l| l.contains(" chatty GET /fail 500 ")),
        "{chatty:?}"
    );
    assert!(
        !chatty
            .iter()
            .any(|l| l.contains("/count") || l.contains("/nowhere")),
        "{chatty:?}"
    );

    // A bad filter is refused.
    let output = run_isola(&["tail", "--admin", &admin.to_string(), "--status", "7xx"]);
    assert!(!output.status.success());
    assert!(
        stderr_of(&output).contains("bad status filter"),
        "{}",
        stderr_of(&output)
    );
}

fn hup(server: &Server) {
    let status = Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn sighup_reload_lets_in_flight_requests_finish_and_keeps_serving_on_a_bad_config() {
    let slow = |body: &str| admin_config("", &format!("{body}{}", worker("app", SLOW, &["/*"])));
    let project = Project::new(&slow(""));
    let server = project.serve();
    let client = client();
    assert_eq!(get(&client, &server.url("/?ms=1")).await.2, "slept 1 ms\n");

    // Requests in flight on the old version...
    let in_flight: Vec<_> = (0..6)
        .map(|_| {
            let client = client.clone();
            let url = server.url("/?ms=1500");
            tokio::spawn(async move { get(&client, &url).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ...while the config swaps the worker for another component.
    std::fs::write(
        project.config(),
        admin_config("", &worker("app", COUNTER, &["/*"])),
    )
    .unwrap();
    hup(&server);
    server.wait_for_log("reload done: generation 2");
    assert_eq!(
        get(&client, &server.url("/?ms=1")).await.2,
        "1",
        "new requests see the new version"
    );
    for request in in_flight {
        let (status, _, body) = request.await.unwrap();
        assert_eq!(
            (status, body.as_str()),
            (200, "slept 1500 ms\n"),
            "an in-flight request failed"
        );
    }

    // A broken config is rejected with a clear line; the old one serves on.
    std::fs::write(project.config(), "[[worker]]\nname = \"app\"\ncomponent = ").unwrap();
    hup(&server);
    let logs = server.wait_for_log("reload rejected");
    assert!(
        logs.lines().any(
            |l| l.contains("reload rejected, still serving generation 2")
                && l.contains("isola.toml:3")
        ),
        "{logs}"
    );
    assert_eq!(get(&client, &server.url("/")).await.2, "1");

    // `isola reload` says the same and fails; a component that does not
    // load is rejected as well.
    let admin = server.admin_addr().to_string();
    std::fs::write(
        project.config(),
        admin_config(
            "",
            &worker("app", project.path("isola.toml").to_str().unwrap(), &["/*"]),
        ),
    )
    .unwrap();
    let output = run_isola(&["reload", "--admin", &admin]);
    assert!(!output.status.success());
    assert!(
        stderr_of(&output).contains("reload failed, the old config keeps serving"),
        "{}",
        stderr_of(&output)
    );
    assert_eq!(get(&client, &server.url("/")).await.2, "1");

    // Settings bound to the process need a restart: refused, not half-applied.
    std::fs::write(
        project.config(),
        admin_config("max_instances = 7", &worker("app", SLOW, &["/*"])),
    )
    .unwrap();
    let output = run_isola(&["reload", "--admin", &admin]);
    assert!(
        stderr_of(&output).contains("server.max_instances"),
        "{}",
        stderr_of(&output)
    );
    assert_eq!(get(&client, &server.url("/")).await.2, "1");

    std::fs::write(project.config(), slow("")).unwrap();
    let output = run_isola(&["reload", "--admin", &admin]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("generation 3"));
    assert_eq!(get(&client, &server.url("/?ms=1")).await.2, "slept 1 ms\n");
    let metrics = scrape(&client, &server.admin_url("/metrics")).await;
    assert_eq!(sample(&metrics, "isola_config_generation", &[]), Some(3.0));
    assert_eq!(
        sample(&metrics, "isola_reloads_total", &[("outcome", "ok")]),
        Some(2.0)
    );
    assert_eq!(
        sample(&metrics, "isola_reloads_total", &[("outcome", "failed")]),
        Some(3.0)
    );
    let logs = server.stop();
    assert!(!logs.contains("panicked"), "{logs}");
}
