//! The Rust SDK's async is concurrent: fetches awaited together take one
//! round-trip, not one each; `wait_until` tasks overlap; and waiting, for an
//! upstream or a timer, is not CPU time.

use std::time::{Duration, Instant};

use isola_test_programs as guests;

use crate::support::{Project, Server, Upstream, client, get, worker};

/// A `concurrent` worker on `/*` that may reach `upstream`, with extra keys.
fn project(upstream: &Upstream, extra: &str) -> Project {
    Project::new(&format!(
        "{}allowed_outbound_hosts = [\"http://127.0.0.1:{}\"]\n{extra}\n",
        worker("concurrent", guests::CONCURRENT, &["/*"]),
        upstream.addr.port()
    ))
}

/// The number after `name=` in a `name=value` line of `body`.
fn field(body: &str, name: &str) -> u64 {
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {name}= in {body:?}"))
}

/// Wait until every one of `paths` has reached `upstream`, then check
/// that none was answered through a gate's timeout: the gated requests were
/// all in flight at once (see [`Upstream`]).
async fn all_in_flight_at_once(upstream: &Upstream, paths: &[String]) {
    for path in paths {
        upstream.wait_for(path).await;
    }
    let timeouts = upstream.gate_timeouts();
    assert!(
        timeouts.is_empty(),
        "answered only after the gate gave up waiting for the others: {timeouts:?}"
    );
}

/// The `cpu;dur=` of a response's `Server-Timing`, in milliseconds.
fn cpu_ms(response: &reqwest::Response) -> f64 {
    let timing = response.headers()["server-timing"].to_str().unwrap();
    timing
        .strip_prefix("cpu;dur=")
        .and_then(|rest| rest.split(',').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no cpu;dur in {timing:?}"))
}

/// GET `path`, returning status, body and how long it took.
async fn timed(server: &Server, path: &str) -> (u16, String, Duration) {
    let started = Instant::now();
    let (status, _, body) = get(&client(), &server.url(path)).await;
    (status, body, started.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_fetches_awaited_together_take_one_round_trip() {
    let upstream = Upstream::start(Duration::from_millis(100)).await;
    let project = project(&upstream, "");
    let server = project.serve();
    // The upstream answers none of the ten until all ten have arrived: one
    // after another, the first would wait for the others that never come.
    let path = format!("/fan-out?n=10&upstream={}", upstream.url("/gate/10"));
    let (status, body, total) = timed(&server, &path).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(field(&body, "count"), 10, "{body}");
    let elapsed = field(&body, "elapsed_ms");
    eprintln!("ten concurrent 100 ms fetches: {elapsed} ms in the guest, {total:?} in all");
    assert!(elapsed >= 100, "the guest waited for its upstream: {body}");
    let paths: Vec<String> = (0..10).map(|i| format!("/gate/10/item/{i}")).collect();
    all_in_flight_at_once(&upstream, &paths).await;

    // `futures::join!` too.
    let path = format!("/pair?upstream={}", upstream.url("/gate/2"));
    let (status, body, _) = timed(&server, &path).await;
    assert_eq!((status, field(&body, "count")), (200, 2), "{body}");
    all_in_flight_at_once(
        &upstream,
        &["/gate/2/pair/a".into(), "/gate/2/pair/b".into()],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn many_fetches_awaited_together_wake_each_other() {
    // `join_all` of more than 30 futures is a `FuturesOrdered`, which polls
    // only the futures whose wakers fired: the wakers must be real.
    let upstream = Upstream::start(Duration::from_millis(100)).await;
    let project = project(&upstream, "");
    let server = project.serve();
    let path = format!("/fan-out?n=40&upstream={}", upstream.url("/gate/40"));
    let (status, body, _) = timed(&server, &path).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(field(&body, "count"), 40, "{body}");
    let paths: Vec<String> = (0..40).map(|i| format!("/gate/40/item/{i}")).collect();
    all_in_flight_at_once(&upstream, &paths).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_until_tasks_run_concurrently() {
    let upstream = Upstream::start(Duration::from_millis(100)).await;
    let project = project(&upstream, "");
    let server = project.serve();

    // Five tasks each fetching: the upstream holds each fetch until all
    // five are in flight.
    let path = format!(
        "/wait-until?mode=fetch&n=5&upstream={}",
        upstream.url("/gate/bg5")
    );
    let (status, body, _) = timed(&server, &path).await;
    assert_eq!((status, body.as_str()), (200, "responded\n"));
    let paths: Vec<String> = (0..5).map(|i| format!("/gate/bg5/bg/{i}")).collect();
    all_in_flight_at_once(&upstream, &paths).await;

    // Five tasks each sleeping 300 ms, then fetching: one after another,
    // the first task's fetch would be held until the gate gave up.
    let path = format!(
        "/wait-until?mode=sleep&ms=300&n=5&upstream={}",
        upstream.url("/gate/slept5")
    );
    let responded = Instant::now();
    let (status, body, _) = timed(&server, &path).await;
    assert_eq!((status, body.as_str()), (200, "responded\n"));
    let paths: Vec<String> = (0..5).map(|i| format!("/gate/slept5/slept/{i}")).collect();
    all_in_flight_at_once(&upstream, &paths).await;
    let woke = upstream.wait_for("/gate/slept5/slept/0").await;
    assert!(
        woke.duration_since(responded) >= Duration::from_millis(300),
        "the tasks slept"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn waiting_is_not_cpu_time() {
    // Under a 10 ms CPU budget, ten fetches of a 1 s upstream, ten 1 s
    // sleeps and five sleeping wait_until tasks all finish: waiting blocks
    // in the host instead of polling in the guest.
    let upstream = Upstream::start(Duration::from_secs(1)).await;
    let project = project(&upstream, "cpu_ms = 10");
    let server = project.serve();
    let client = client();

    let url = server.url(&format!(
        "/fan-out?n=10&upstream={}",
        upstream.url("/gate/10")
    ));
    let response = client.get(&url).send().await.unwrap();
    let status = response.status().as_u16();
    let cpu = cpu_ms(&response);
    let body = response.text().await.unwrap();
    assert_eq!((status, field(&body, "count")), (200, 10), "{body}");
    let elapsed = field(&body, "elapsed_ms");
    assert!(elapsed >= 1000, "the guest waited for its upstream: {body}");
    let paths: Vec<String> = (0..10).map(|i| format!("/gate/10/item/{i}")).collect();
    all_in_flight_at_once(&upstream, &paths).await;
    eprintln!("ten concurrent 1 s fetches: {elapsed} ms, {cpu} ms of CPU");
    assert!(cpu < 10.0, "waiting 1 s on fetches cost {cpu} ms of CPU");

    let response = client
        .get(server.url("/sleep?ms=1000&n=10"))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let cpu = cpu_ms(&response);
    let body = response.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
    let elapsed = field(&body, "elapsed_ms");
    // Not a time allowance: one after another, ten 1 s sleeps cannot end
    // in under 10 s, however fast or loaded the machine.
    assert!(
        (1000..10_000).contains(&elapsed),
        "ten 1 s sleeps took {elapsed} ms: they did not overlap"
    );
    eprintln!("ten concurrent 1 s sleeps: {elapsed} ms, {cpu} ms of CPU");
    assert!(cpu < 10.0, "sleeping 1 s cost {cpu} ms of CPU");

    let path = format!(
        "/wait-until?mode=sleep&ms=1000&n=5&upstream={}",
        upstream.url("/gate/slept5")
    );
    let (status, id, body) = get(&client, &server.url(&path)).await;
    assert_eq!((status, body.as_str()), (200, "responded\n"));
    let paths: Vec<String> = (0..5).map(|i| format!("/gate/slept5/slept/{i}")).collect();
    all_in_flight_at_once(&upstream, &paths).await;
    let id = id.unwrap();
    // The access line comes when the background work is done; no limit cut
    // it.
    let logs = server.wait_for_line(|l| l.contains(&id) && l.contains("cpu_ms="));
    let line = logs
        .lines()
        .find(|l| l.contains(&id) && l.contains("cpu_ms="))
        .unwrap();
    assert!(line.contains("limit=none"), "{line}");
    assert!(!logs.contains("guest cut off"), "{logs}");
}
