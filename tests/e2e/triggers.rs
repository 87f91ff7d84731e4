//! Cron triggers and queues through a real guest (`guests/triggers`):
//! firings, manual triggers, producer → consumer, batching, retries,
//! dead-lettering, redelivery after a trap and after `kill -9`, and the
//! start-up errors for handlers a component does not export.

use std::time::{Duration, Instant};

use isola_backends::queue::QueueStore;
use isola_test_programs as guests;
use reqwest::StatusCode;

use crate::support::{Project, Server, client, log_field, now_ms, run_isola, stderr_of, worker};

/// The `triggers` guest: KV, a producer for `jobs`, and `extra` keys
/// (consumers, crons) after them.
fn project(extra: &str) -> Project {
    Project::new(&format!(
        "{}cpu_ms = 500\nkv_namespaces = [{{ binding = \"KV\", id = \"triggers\" }}]\n\
         queues.producers = [{{ binding = \"JOBS\", queue = \"jobs\" }}]\n{extra}\n",
        worker("triggers", guests::TRIGGERS, &["/*"])
    ))
}

const CONSUMER: &str = "queues.consumers = [{ queue = \"jobs\", max_batch_size = 5, max_batch_timeout = 1, max_retries = 2, dead_letter_queue = \"jobs-dlq\" }]";

async fn kv(server: &Server, key: &str) -> Option<String> {
    let response = client()
        .get(server.url(&format!("/kv/{}", key.replace(' ', "%20"))))
        .send()
        .await
        .unwrap();
    match response.status() {
        StatusCode::OK => Some(response.text().await.unwrap()),
        StatusCode::NOT_FOUND => None,
        other => panic!("GET /kv/{key}: {other}"),
    }
}

/// Wait (bounded) until `key` holds a value that satisfies `done`.
async fn wait_for_kv(server: &Server, key: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(value) = kv(server, key).await.filter(|v| done(v)) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{key} never got there:\n{}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn post(server: &Server, path: &str, body: &str) {
    let response = client()
        .post(server.url(path))
        .header("content-type", "text/plain")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
}

fn queues_of(project: &Project) -> isola_backends::queue::sqlite::SqliteQueues {
    isola_backends::queue::sqlite::SqliteQueues::open(&project.path(".isola/queues.sqlite"))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn cron_fires_on_schedule_and_reaches_bindings() {
    let project = project("triggers.crons = [\"* * * * * *\"]");
    let server = project.serve();
    // Every second: two firings within a few seconds, each counted in KV.
    wait_for_kv(&server, "cron:* * * * * *", |n| {
        n.parse::<u32>().unwrap() >= 2
    })
    .await;
    let last: u64 = kv(&server, "cron-last").await.unwrap().parse().unwrap();
    assert_eq!(last % 1000, 0, "scheduled_time is the due second: {last}");
    let logs = server.wait_for_log("scheduled run finished");
    let line = logs
        .lines()
        .find(|l| l.contains("scheduled run finished"))
        .unwrap();
    assert!(
        line.contains("kind=\"scheduled\"") && line.contains("outcome=\"ok\""),
        "{line}"
    );
    assert!(
        logs.contains("SCHEDULED"),
        "no access line for the firing:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cron_fires_on_demand_and_failures_are_reported() {
    let project = project("triggers.crons = [\"0 0 1 1 *\"]");
    let config = project.config();
    let config = config.to_str().unwrap();
    let output = project.trigger_cron("triggers");
    assert!(output.status.success(), "{}", stderr_of(&output));
    let output = run_isola(&[
        "trigger",
        "--config",
        config,
        "cron",
        "triggers",
        "--cron",
        "*/5 * * * *",
    ]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    let output = run_isola(&["kv", "--config", config, "get", "KV", "cron:0 0 1 1 *"]);
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "1",
        "{}",
        stderr_of(&output)
    );
    let output = run_isola(&["kv", "--config", config, "get", "KV", "cron:*/5 * * * *"]);
    assert_eq!(String::from_utf8_lossy(&output.stdout), "1");

    // The handler's error fails the command and is logged.
    let failing = Project::new(&std::fs::read_to_string(config).unwrap().replace(
        "cpu_ms = 500",
        "cpu_ms = 500\nvars = { SCHEDULED_FAIL = \"1\" }",
    ));
    let output = failing.trigger_cron("triggers");
    assert!(!output.status.success());
    assert!(
        stderr_of(&output).contains("scheduled failure on purpose"),
        "{}",
        stderr_of(&output)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_messages_reach_the_consumer_in_bounded_batches() {
    let project = project(CONSUMER);
    let server = project.serve();
    post(&server, "/send?n=12", "").await;
    for i in 0..12 {
        assert_eq!(
            wait_for_kv(&server, &format!("msg:{i}"), |_| true).await,
            "1"
        );
    }
    // 12 messages, batches of at most 5: the last two go out when
    // max_batch_timeout passes, without waiting for a full batch.
    let logs =
        server.wait_for_line(|l| l.contains("queue batch finished") && l.contains("messages=2"));
    let sizes: Vec<usize> = logs
        .lines()
        .filter(|l| l.contains("queue batch finished"))
        .map(|l| {
            let tail = &l[l.find(" messages=").unwrap() + 10..];
            tail[..tail.find(' ').unwrap()].parse().unwrap()
        })
        .collect();
    assert!(sizes.iter().all(|&n| n <= 5), "{sizes:?}");
    assert_eq!(sizes.iter().sum::<usize>(), 12, "{sizes:?}");
    assert_eq!(queues_of(&project).depth("jobs").await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn retried_messages_succeed_and_poison_lands_in_the_dead_letter_queue() {
    let project = project(CONSUMER);
    let server = project.serve();
    // Fails twice, then succeeds on its third delivery (max_retries = 2).
    post(&server, "/send-raw", r#"{"i": 7, "fail_until": 3}"#).await;
    assert_eq!(wait_for_kv(&server, "msg:7", |v| v == "3").await, "3");
    // Always retried: after 1 + max_retries deliveries it is dead-lettered.
    post(&server, "/send-raw", "poison").await;
    server.wait_for_line(|l| l.contains("queue batch finished") && l.contains("dead_lettered=1"));
    let queues = queues_of(&project);
    assert_eq!(queues.depth("jobs").await.unwrap(), 0);
    let dead = queues
        .lease("jobs-dlq", 10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body, b"poison");
    // Three deliveries on `jobs`; this lease is the fourth.
    assert_eq!(dead[0].attempts, 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trapping_consumer_gets_its_batch_again() {
    let project = project(CONSUMER);
    let server = project.serve();
    post(&server, "/send-raw", "trap").await;
    let logs =
        server.wait_for_line(|l| l.contains("queue batch failed") && l.contains("dead_lettered=1"));
    let failed: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("queue batch failed"))
        .collect();
    assert_eq!(failed.len(), 3, "one failure per delivery:\n{logs}");
    for (n, line) in failed.iter().enumerate() {
        assert!(line.contains(&format!("attempts={}", n + 1)), "{line}");
        assert!(line.contains("outcome=\"exception\""), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_message_is_lost_when_the_host_is_killed() {
    let project = project(CONSUMER);
    let queues = queues_of(&project);
    // Kill it while it holds leased messages. Batches are quick, so it may
    // finish one between the check and the kill: then a new server tries
    // again (bounded), on what is left.
    let mut held = 0;
    for attempt in 0..5 {
        let mut server = project.serve();
        if attempt == 0 {
            post(&server, "/send?n=60", "").await;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while queues.in_flight("jobs").await.unwrap() == 0 {
            assert!(Instant::now() < deadline, "no message was ever leased");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let status = std::process::Command::new("kill")
            .args(["-KILL", &server.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        server.wait(Duration::from_secs(10));
        held = queues.in_flight("jobs").await.unwrap();
        if held > 0 {
            break;
        }
    }
    assert!(
        held > 0,
        "the host was killed holding no message five times; the test proves nothing"
    );

    // The next start releases the dead process's leases: every message is
    // processed, the held ones a second time.
    let server = project.serve();
    let mut attempts = Vec::new();
    for i in 0..60 {
        let value = wait_for_kv(&server, &format!("msg:{i}"), |_| true).await;
        attempts.push(value.parse::<u32>().unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while queues.depth("jobs").await.unwrap() > 0 {
        assert!(Instant::now() < deadline, "messages left on the queue");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let again = attempts.iter().filter(|&&n| n >= 2).count() as u64;
    assert!(
        (1..=held).contains(&again),
        "the {held} messages held at the kill come back with attempts >= 2 ({again} did): {attempts:?}"
    );
}

/// Firings of an every-second cron missed while the host was down are
/// reported by the next start, counted from `cron-state.json`, and not
/// replayed.
#[tokio::test(flavor = "multi_thread")]
async fn firings_missed_while_down_are_reported_at_the_next_start() {
    let project = project("triggers.crons = [\"* * * * * *\"]");
    let server = project.serve();
    server.wait_for_log("scheduled run finished");
    let logs = server.stop();
    // A first start has nothing to report.
    assert!(!logs.contains("firings missed"), "{logs}");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(project.path(".isola/cron-state.json")).unwrap())
            .unwrap();
    let last = state["triggers * * * * * *"].as_u64().unwrap();
    assert_eq!(last % 1000, 0, "{state}");

    // Down for at least three firings.
    let down = now_ms();
    tokio::time::sleep(Duration::from_millis(3000 + 1000 - down % 1000)).await;
    let restarted = now_ms();
    let server = project.serve();
    let logs = server.wait_for_log("firings missed while the host was down are not replayed");
    let reported = now_ms();
    let line = logs.lines().find(|l| l.contains("firings missed")).unwrap();
    // The firings due after the last recorded one and before the restart
    // were missed; those due while it starts may be counted too.
    let between = |from: u64, to: u64| (from + 1..to).filter(|t| t % 1000 == 0).count() as u64;
    let missed = log_field(line, "missed").unwrap_or_else(|| panic!("{line}"));
    assert!(
        (between(last, restarted)..=between(last, reported)).contains(&missed),
        "last firing at {last}, restarted at {restarted}, reported at {reported}: {line}"
    );
    assert!(missed >= 3, "{line}");
    // Not replayed: every firing of the new process is due after its start.
    let logs = server.wait_for_log("scheduled run finished");
    for line in logs.lines().filter(|l| l.contains("scheduled run")) {
        let due = log_field(line, "due_ms").unwrap();
        assert!(due > restarted, "a missed firing ran: {line}");
    }
}

/// Without a `dead_letter_queue`, a message still retried after its last
/// delivery is dropped: gone from the queue, with a log line.
#[tokio::test(flavor = "multi_thread")]
async fn a_message_out_of_retries_without_a_dead_letter_queue_is_dropped_and_logged() {
    let project = project(
        "queues.consumers = [{ queue = \"jobs\", max_batch_size = 1, max_batch_timeout = 1, max_retries = 1 }]",
    );
    let server = project.serve();
    post(&server, "/send-raw", "poison").await;
    let logs = server.wait_for_log("message dropped after its last retry (no dead_letter_queue)");
    let line = logs
        .lines()
        .find(|l| l.contains("message dropped after its last retry"))
        .unwrap();
    // Delivered 1 + max_retries times.
    assert_eq!(log_field(line, "attempts"), Some(2), "{line}");
    assert!(line.contains("queue=jobs"), "{line}");
    // The drop is logged before the message is acked; its batch's line
    // comes after.
    let logs = server
        .wait_for_line(|l| l.contains("queue batch finished") && l.contains("dead_lettered=1"));
    let queues = queues_of(&project);
    assert_eq!(queues.depth("jobs").await.unwrap(), 0, "{logs}");
    assert_eq!(queues.in_flight("jobs").await.unwrap(), 0, "{logs}");
    // Two deliveries, both retried by the guest; the second one's batch
    // counts the drop.
    let logs = server.flushed_logs();
    let batches: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("queue batch finished"))
        .collect();
    assert_eq!(batches.len(), 2, "{logs}");
    assert_eq!(log_field(batches[0], "retried"), Some(1), "{}", batches[0]);
    assert_eq!(
        log_field(batches[1], "dead_lettered"),
        Some(1),
        "{}",
        batches[1]
    );
}

#[test]
fn handlers_a_component_does_not_export_are_start_up_errors() {
    for (extra, handler) in [
        ("triggers.crons = [\"* * * * *\"]", "scheduled"),
        (
            "queues.consumers = [{ queue = \"jobs\" }]",
            "queue-consumer",
        ),
    ] {
        let project = Project::new(&format!(
            "{}{extra}\n",
            worker("plain", guests::COUNTER, &["/*"])
        ));
        for command in ["check", "serve"] {
            let output = run_isola(&[command, project.config().to_str().unwrap()]);
            assert!(!output.status.success(), "{command} accepted {extra}");
            let stderr = stderr_of(&output);
            assert!(
                stderr.contains(&format!("does not export `isola:worker/{handler}`")),
                "{command}: {stderr}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_listener_fires_scheduled_handlers() {
    // A free loopback port for the admin listener.
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let project = project("triggers.crons = [\"0 0 1 1 *\"]");
    let config = std::fs::read_to_string(project.config()).unwrap();
    std::fs::write(
        project.config(),
        format!("[server]\nadmin = \"{admin}\"\nadmin_token = \"letmein\"\n{config}"),
    )
    .unwrap();
    let server = project.serve();
    let url = |path: &str| format!("http://{admin}{path}");
    let client = client();
    let refused = client.post(url("/__scheduled")).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let fired = client
        .post(url("/__scheduled?cron=*%2F10+*+*+*+*"))
        .bearer_auth("letmein")
        .send()
        .await
        .unwrap();
    assert_eq!(fired.status(), 200, "{}", fired.text().await.unwrap());
    assert_eq!(kv(&server, "cron:*/10 * * * *").await.as_deref(), Some("1"));
    // Without ?cron, the worker's configured expression.
    let fired = client
        .post(url("/__scheduled?worker=triggers"))
        .bearer_auth("letmein")
        .send()
        .await
        .unwrap();
    assert_eq!(fired.status(), 200);
    assert_eq!(kv(&server, "cron:0 0 1 1 *").await.as_deref(), Some("1"));
    let health = client
        .get(url("/healthz"))
        .bearer_auth("letmein")
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    // The public listener does not have the endpoint.
    let public = client
        .post(server.url("/__scheduled"))
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 404);
}
