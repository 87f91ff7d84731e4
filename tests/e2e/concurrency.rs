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

/// When each of `paths` reached `upstream` (waiting for them), and the
/// spread between the first and the last.
async fn arrival_spread(upstream: &Upstream, paths: &[String]) -> Duration {
    let mut arrivals = Vec::new();
    for path in paths {
        arrivals.push(upstream.wait_for(path).await);
    }
    let first = arrivals.iter().min().unwrap();
    let last = arrivals.iter().max().unwrap();
    last.duration_since(*first)
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
    // One request first, so the measured one does not pay for a cold start.
    let warm = format!("/fan-out?n=1&upstream={}", upstream.url("/warm"));
    assert_eq!(timed(&server, &warm).await.0, 200);

    let path = format!("/fan-out?n=10&upstream={}", upstream.url(""));
    let (status, body, total) = timed(&server, &path).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(field(&body, "count"), 10, "{body}");
    let elapsed = field(&body, "elapsed_ms");
    eprintln!("ten concurrent 100 ms fetches: {elapsed} ms in the guest, {total:?} in all");
    assert!(elapsed >= 100, "the guest waited for its upstream: {body}");
    // One after another they take at least 10 × 100 ms.
    assert!(
        elapsed < 600,
        "ten 100 ms fetches took {elapsed} ms: {body}"
    );
    assert!(
        total < Duration::from_millis(600),
        "the request took {total:?}"
    );
    // All ten were sent before the first was answered.
    let paths: Vec<String> = (0..10).map(|i| format!("/item/{i}")).collect();
    let spread = arrival_spread(&upstream, &paths).await;
    assert!(
        spread < Duration::from_millis(100),
        "the ten requests reached the upstream {spread:?} apart"
    );

    // `futures::join!` too.
    let path = format!("/pair?upstream={}", upstream.url(""));
    let (status, body, _) = timed(&server, &path).await;
    assert_eq!((status, field(&body, "count")), (200, 2), "{body}");
    let spread = arrival_spread(&upstream, &["/pair/a".into(), "/pair/b".into()]).await;
    assert!(spread < Duration::from_millis(100), "{spread:?} apart");
}

#[tokio::test(flavor = "multi_thread")]
async fn many_fetches_awaited_together_wake_each_other() {
    // `join_all` of more than 30 futures is a `FuturesOrdered`, which polls
    // only the futures whose wakers fired: the wakers must be real.
    let upstream = Upstream::start(Duration::from_millis(100)).await;
    let project = project(&upstream, "");
    let server = project.serve();
    let path = format!("/fan-out?n=40&upstream={}", upstream.url(""));
    let (status, body, _) = timed(&server, &path).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(field(&body, "count"), 40, "{body}");
    let elapsed = field(&body, "elapsed_ms");
    assert!(elapsed < 2000, "forty 100 ms fetches took {elapsed} ms");
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_until_tasks_run_concurrently() {
    let upstream = Upstream::start(Duration::from_millis(100)).await;
    let project = project(&upstream, "");
    let server = project.serve();

    // Five tasks each fetching a 100 ms upstream: one after another their
    // requests would arrive at least 100 ms apart.
    let path = format!("/wait-until?mode=fetch&n=5&upstream={}", upstream.url(""));
    let (status, body, _) = timed(&server, &path).await;
    assert_eq!((status, body.as_str()), (200, "responded\n"));
    let paths: Vec<String> = (0..5).map(|i| format!("/bg/{i}")).collect();
    let spread = arrival_spread(&upstream, &paths).await;
    assert!(
        spread < Duration::from_millis(100),
        "the wait_until fetches reached the upstream {spread:?} apart"
    );

    // Five tasks each sleeping 300 ms, then fetching: together they all
    // wake at about the same time.
    let path = format!(
        "/wait-until?mode=sleep&ms=300&n=5&upstream={}",
        upstream.url("")
    );
    let responded = Instant::now();
    let (status, body, _) = timed(&server, &path).await;
    assert_eq!((status, body.as_str()), (200, "responded\n"));
    let paths: Vec<String> = (0..5).map(|i| format!("/slept/{i}")).collect();
    let spread = arrival_spread(&upstream, &paths).await;
    assert!(
        spread < Duration::from_millis(150),
        "the tasks woke {spread:?} apart"
    );
    let woke = upstream.wait_for("/slept/0").await;
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

    let url = server.url(&format!("/fan-out?n=10&upstream={}", upstream.url("")));
    let response = client.get(&url).send().await.unwrap();
    let status = response.status().as_u16();
    let cpu = cpu_ms(&response);
    let body = response.text().await.unwrap();
    assert_eq!((status, field(&body, "count")), (200, 10), "{body}");
    let elapsed = field(&body, "elapsed_ms");
    assert!(elapsed >= 1000, "the guest waited for its upstream: {body}");
    assert!(elapsed < 6000, "ten 1 s fetches took {elapsed} ms: {body}");
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
    assert!(
        (1000..6000).contains(&elapsed),
        "ten 1 s sleeps took {elapsed} ms"
    );
    eprintln!("ten concurrent 1 s sleeps: {elapsed} ms, {cpu} ms of CPU");
    assert!(cpu < 10.0, "sleeping 1 s cost {cpu} ms of CPU");

    let path = format!(
        "/wait-until?mode=sleep&ms=1000&n=5&upstream={}",
        upstream.url("")
    );
    let (status, id, body) = get(&client, &server.url(&path)).await;
    assert_eq!((status, body.as_str()), (200, "responded\n"));
    for i in 0..5 {
        upstream.wait_for(&format!("/slept/{i}")).await;
    }
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
