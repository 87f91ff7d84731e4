//! Past its capacity the server refuses quickly instead of collapsing: a
//! request waits `queue_timeout_ms` at most for an instance slot, then gets
//! `503 overloaded` with `Retry-After`; nothing hangs, memory stays that of
//! the pool, another worker keeps answering, and `/readyz` and the metrics
//! say so. Idle connections do not stop others from being served.

use std::time::{Duration, Instant};

use isola_test_programs as guests;

use crate::support::{Project, client, get, rss_kib, worker};

#[tokio::test(flavor = "multi_thread")]
async fn past_the_pool_requests_are_refused_quickly_and_another_worker_keeps_answering() {
    let project = Project::new(&format!(
        "[server]\nadmin = \"127.0.0.1:0\"\nmax_instances = 8\nqueue_timeout_ms = 200\n{}wall_ms = 10000\n{}",
        worker("slow", guests::LIMITS, &["/sleep"]),
        worker("hello", guests::EXAMPLE_HELLO, &["/*"]),
    ));
    let server = project.serve();
    let client = client();
    let rss_before = rss_kib(server.pid());

    // 200 requests that each hold an instance for three seconds.
    let started = Instant::now();
    let storm: Vec<_> = (0..200)
        .map(|_| {
            let (client, url) = (client.clone(), server.url("/sleep?ms=3000"));
            tokio::spawn(async move {
                let response = client.get(&url).send().await.unwrap();
                let status = response.status().as_u16();
                let reason = response
                    .headers()
                    .get("x-isola-error")
                    .map(|v| v.to_str().unwrap().to_owned());
                let retry_after = response.headers().get("retry-after").cloned();
                let _ = response.bytes().await;
                (status, reason, retry_after, started.elapsed())
            })
        })
        .collect();

    // Meanwhile the other worker answers: with several workers none may
    // hold more than three quarters of the pool (6 of 8 here).
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..20 {
        let (status, _, body) = get(&client, &server.url(&format!("/hello/{i}"))).await;
        assert_eq!(status, 200, "{body}");
    }
    let readyz = client
        .get(server.admin_url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        readyz.status(),
        503,
        "readyz says overloaded during the storm"
    );
    assert!(readyz.text().await.unwrap().contains("overloaded"));

    let (mut served, mut refused) = (Vec::new(), Vec::new());
    for request in storm {
        // Nobody hangs (the client's timeout would fail it).
        let (status, reason, retry_after, took) = request.await.unwrap();
        match status {
            200 => served.push(took),
            503 => {
                assert_eq!(reason.as_deref(), Some("overloaded"));
                assert_eq!(retry_after.unwrap(), "1");
                refused.push(took);
            }
            other => panic!("unexpected status {other}"),
        }
    }
    // Refused after the queue time, not after waiting for a slot: every
    // refusal came before the first request holding a slot was done.
    let first_served = served.iter().min().unwrap();
    let last_refused = refused.iter().max().unwrap();
    assert!(
        last_refused < first_served,
        "a refusal came at {last_refused:?}, after a slot was freed at {first_served:?}"
    );
    let (served, refused) = (served.len(), refused.len());
    assert_eq!(served + refused, 200);
    assert!(served >= 6, "the worker's own slots were used: {served}");
    assert!(refused > 100, "most of the storm was refused: {refused}");

    let metrics = client
        .get(server.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!(
            "isola_overloaded_total{{worker=\"slow\"}} {refused}"
        )),
        "{metrics}"
    );
    // docs/reference/limits.md, Overload: refusals cost no instance
    // memory, "200 requests at once on a pool of 8 grow the process by
    // under 32 MiB".
    let grown_mib = rss_kib(server.pid()).saturating_sub(rss_before) / 1024;
    assert!(grown_mib < 32, "RSS grew by {grown_mib} MiB");
    // Once the storm is over the server is ready again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let readyz = client
        .get(server.admin_url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(readyz.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_do_not_stop_others_from_being_served() {
    let project = Project::new(&format!(
        "[server]\nheader_timeout_ms = 60000\n{}",
        worker("hello", guests::EXAMPLE_HELLO, &["/*"])
    ));
    let server = project.serve();
    // Connections that never send a byte, more than most clients open
    // (the header timeout is long, so none is closed during the test).
    let mut idle = Vec::new();
    for _ in 0..500 {
        idle.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    // Served while all of them are still open: the header timeout has not
    // closed any yet (a closed one would read end-of-stream).
    let (status, _, body) = get(&client(), &server.url("/")).await;
    assert_eq!(status, 200, "{body}");
    for connection in &idle {
        let mut byte = [0u8; 1];
        match connection.try_read(&mut byte) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("an idle connection was closed first: {other:?}"),
        }
    }
    drop(idle);
}

#[tokio::test(flavor = "multi_thread")]
async fn past_the_connection_cap_new_connections_wait_for_a_free_one() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let project = Project::new(&format!(
        "[server]\nmax_connections = 4\nheader_timeout_ms = 1000\n{}",
        worker("hello", guests::EXAMPLE_HELLO, &["/*"])
    ));
    let server = project.serve();
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    // The fifth is accepted by the kernel but not served until the header
    // timeout closes an idle one.
    let mut fifth = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let started = Instant::now();
    fifth
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    fifth.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "it waited for a slot: {waited:?}"
    );
    drop(idle);
}
