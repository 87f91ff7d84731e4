//! The walls around guests: CPU (fuel), wall clock (epochs), memory, traps,
//! outbound HTTP and request size, each with its status, `x-isola-error`,
//! log line, and a server that keeps serving.

use std::time::Duration;

use isola_test_programs as guests;

use crate::support::{Project, Server, Upstream, client, get, worker};

/// One `limits` worker on `/*` with extra worker keys.
fn limits_project(extra: &str) -> Project {
    Project::new(&format!(
        "{}{extra}\n",
        worker("limits", guests::LIMITS, &["/*"])
    ))
}

/// GET `path` and check status, `x-isola-error` and the failure log line.
async fn expect_failure(server: &Server, path: &str, status: u16, reason: &str) -> String {
    let response = client().get(server.url(path)).send().await.unwrap();
    assert_eq!(response.status(), status, "{path}");
    assert_eq!(response.headers()["x-isola-error"], reason, "{path}");
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = response.text().await.unwrap();
    assert!(body.contains(&id) && body.contains(reason), "{body}");
    let logs = server.wait_for_log(&format!("request_id={id} worker=limits"));
    let failure = logs
        .lines()
        .find(|l| l.contains("request failed") && l.contains(&id))
        .unwrap_or_else(|| panic!("no failure line for {path}:\n{logs}"))
        .to_owned();
    assert!(
        failure.contains(&format!("reason=\"{reason}\"")),
        "{failure}"
    );
    let access = logs
        .lines()
        .find(|l| l.contains("isola::access") && l.contains(&id))
        .unwrap_or_else(|| panic!("no access line for {path}:\n{logs}"))
        .to_owned();
    assert!(access.contains(&format!("status={status}")), "{access}");
    failure
}

async fn still_serving(server: &Server) {
    let (status, _, body) = get(&client(), &server.url("/checksum?iters=10")).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn compute_loops_run_out_of_fuel() {
    let project = limits_project("cpu_ms = 20");
    let server = project.serve();
    for path in ["/spin", "/compute?ms=200"] {
        let line = expect_failure(&server, path, 503, "cpu-limit").await;
        // Fuel usually runs out first; for loops that burn fuel slowly the
        // measured CPU time may win the race. Either is the CPU limit.
        assert!(
            line.contains("all fuel consumed") || line.contains("CPU time limit of 20 ms"),
            "{line}"
        );
        still_serving(&server).await;
    }
    // A loop that spends its time in host calls burns little fuel; the
    // measured CPU time stops it, close to its budget.
    let line = expect_failure(&server, "/spin-host", 503, "cpu-limit").await;
    assert!(line.contains("CPU time limit of 20 ms exceeded"), "{line}");
    let measured: f64 = line
        .split("cpu_ms=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(
        measured < 200.0,
        "stopped near the budget, not far past it: {line}"
    );
    still_serving(&server).await;
    let access = server.wait_for_log("limit=cpu-limit");
    assert!(access.contains("fuel="), "{access}");
}

#[tokio::test(flavor = "multi_thread")]
async fn awaiting_io_is_not_cpu_time() {
    // A 2 s upstream under a 10 ms CPU budget succeeds; a 50 ms compute
    // loop under the same budget does not.
    let upstream = Upstream::start(Duration::from_secs(2)).await;
    let project = limits_project(&format!(
        "cpu_ms = 10\nallowed_outbound_hosts = [\"http://127.0.0.1:{}\"]",
        upstream.addr.port()
    ));
    let server = project.serve();
    let url = server.url(&format!("/fetch?url={}", upstream.url("/slow")));
    let (status, _, body) = get(&client(), &url).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("ok=1\nerror=none\nbody=upstream says hi"),
        "{body}"
    );
    let (status, _, _) = get(&client(), &server.url("/sleep?ms=300")).await;
    assert_eq!(status, 200, "sleeping is not CPU time either");

    expect_failure(&server, "/compute?ms=50", 503, "cpu-limit").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wall_clock_deadline_interrupts_guests_and_host_waits() {
    let project = Project::new(&format!(
        "{}cpu_ms = 100000\nwall_ms = 300\n{}cpu_ms = 100000\nwall_ms = 300\n",
        worker("limits", guests::LIMITS, &["/*"]),
        worker(
            "raw",
            guests::RAWLIMITS,
            &["/raw/*", "/hang", "/no-response", "/respond-then-spin"]
        ),
    ));
    let server = project.serve();
    // Spinning wasm is interrupted by the epoch deadline.
    expect_failure(&server, "/spin", 504, "wall-limit").await;
    // A guest blocked in a host wait (a timer) is cut by the same deadline.
    let response = client().get(server.url("/hang")).send().await.unwrap();
    assert_eq!(response.status(), 504);
    assert_eq!(response.headers()["x-isola-error"], "wall-limit");
    still_serving(&server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_beyond_the_limit_fails_the_guest() {
    let project = limits_project("memory_mb = 16");
    let server = project.serve();
    expect_failure(&server, "/memory-bomb", 503, "memory-limit").await;
    still_serving(&server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn traps_are_500s_with_a_named_backtrace_in_the_log() {
    let project = limits_project("");
    let server = project.serve();
    let line = expect_failure(&server, "/unreachable", 500, "exception").await;
    assert!(line.contains("unreachable"), "{line}");
    // Guests built without stripping keep their name section: frames are
    // named, not `<wasm function N>`.
    assert!(
        line.contains("limits.wasm!isola_sdk::"),
        "named frames: {line}"
    );
    assert!(!line.contains("<wasm function"), "{line}");
    // Built without DWARF: frames have names but no source lines.
    assert!(!line.contains(".rs:"), "{line}");
    let line = expect_failure(&server, "/stack-overflow", 500, "exception").await;
    // Rust keeps its stack in linear memory: overflowing it runs off the
    // bottom of memory before wasm's own call stack is exhausted.
    assert!(
        line.contains("call stack exhausted") || line.contains("out of bounds memory access"),
        "{line}"
    );
    assert!(line.contains("limits::recurse"), "{line}");
    still_serving(&server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn handlers_that_never_respond() {
    let project = Project::new(&format!(
        "{}cpu_ms = 20\nwall_ms = 500\n",
        worker("limits", guests::RAWLIMITS, &["/*"])
    ));
    let server = project.serve();
    expect_failure(&server, "/no-response", 500, "no-response").await;
    expect_failure(&server, "/hang", 504, "wall-limit").await;

    // The response is out before the spinning starts: the client gets it
    // whole, and the instance is cut at the CPU limit and logged.
    let (status, id, body) = get(&client(), &server.url("/respond-then-spin")).await;
    assert_eq!((status, body.as_str()), (200, "sent before spinning\n"));
    let id = id.unwrap();
    let logs = server.wait_for_log("guest cut off after its response was sent");
    let line = logs
        .lines()
        .find(|l| l.contains("guest cut off") && l.contains(&id))
        .unwrap_or_else(|| panic!("{logs}"));
    assert!(line.contains("reason=\"cpu-limit\""), "{line}");
    let access = server.wait_for_log(&format!("request_id={id} worker=limits"));
    assert!(
        access
            .lines()
            .any(|l| l.contains(&id) && l.contains("status=200") && l.contains("limit=cpu-limit")),
        "{access}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn outbound_fetches_obey_the_allow_list_and_budget() {
    let upstream = Upstream::start(Duration::ZERO).await;
    let port = upstream.addr.port();
    let project = Project::new(
        &[
            worker("budget", guests::LIMITS, &["/budget/*"]),
            format!("allowed_outbound_hosts = [\"http://127.0.0.1:{port}\"]\n"),
            worker("elsewhere", guests::LIMITS, &["/elsewhere/*"]),
            "allowed_outbound_hosts = [\"https://example.com\"]\n".into(),
            worker("wildcard", guests::LIMITS, &["/wildcard/*"]),
            "allowed_outbound_hosts = [\"*\"]\n".into(),
            worker("nothing", guests::LIMITS, &["/*"]),
        ]
        .concat(),
    );
    let server = project.serve();
    let client = client();
    let fetch = |prefix: &str, n: u32| {
        server.url(&format!("{prefix}/fetch?url={}&n={n}", upstream.url("/x")))
    };

    let (status, _, body) = get(&client, &fetch("/budget", 60)).await;
    assert_eq!(status, 200);
    assert!(body.starts_with("ok=50\nerror="), "{body}");
    assert!(
        body.contains("subrequest limit reached: this request may make at most 50 subrequests"),
        "{body}"
    );
    assert_eq!(
        upstream.hosts.lock().unwrap().len(),
        50,
        "the 51st never left the host"
    );

    for (prefix, expected) in [
        ("/elsewhere", "HttpRequestDenied"),
        ("/wildcard", "DestinationIpProhibited"),
        ("", "HttpRequestDenied"),
    ] {
        let (status, _, body) = get(&client, &fetch(prefix, 1)).await;
        assert_eq!(
            status, 200,
            "a denied fetch is an error inside the guest, not a trap"
        );
        assert!(
            body.starts_with("ok=0\nerror=") && body.contains(expected),
            "{prefix}: {body}"
        );
    }
    assert_eq!(upstream.hosts.lock().unwrap().len(), 50);
    // The log is read apart from the responses: wait for the later of the
    // two denials (`/wildcard`'s comes after `/elsewhere`'s).
    let logs = server.wait_for_log("does not cover loopback or private addresses");
    assert!(logs.contains("not in allowed_outbound_hosts"), "{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn outbound_override_redirects_connections_but_keeps_host_and_path() {
    let upstream = Upstream::start(Duration::ZERO).await;
    let project = limits_project(&format!(
        "allowed_outbound_hosts = [\"https://api.example.com\"]\noutbound_override = \"http://127.0.0.1:{}\"",
        upstream.addr.port()
    ));
    let server = project.serve();
    let (status, _, body) = get(
        &client(),
        &server.url("/fetch?url=https://api.example.com/v1/things"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        body.starts_with("ok=1\nerror=none\nbody=upstream says hi"),
        "{body}"
    );
    assert_eq!(
        *upstream.hosts.lock().unwrap(),
        ["api.example.com /v1/things"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_requests_are_refused_by_the_host() {
    let project = Project::new(&format!(
        "[server]\nmax_body_mb = 1\n{}",
        worker("hello", guests::EXAMPLE_HELLO, &["/*"])
    ));
    let server = project.serve();
    let client = client();

    let response = client
        .get(server.url("/"))
        .header("x-big", "a".repeat(9 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 431);
    assert_eq!(response.headers()["x-isola-error"], "header-size");

    // A declared length over the limit is refused before any of the body
    // is read (sent raw: an HTTP client would still be writing the body
    // when the 413 arrives, and fail on the closed connection).
    let head = declared_upload(server.addr, 2 << 20).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("x-isola-error: body-size"), "{head}");

    // Without a length the body is counted as it streams.
    let head = chunked_upload(server.addr, 2 << 20).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("x-isola-error: body-size"), "{head}");

    // Access lines go out in batches, read apart from the responses: wait
    // for the later one (the 413's comes after the 431's).
    let logs = server.wait_for_log("status=413");
    assert!(logs.contains("status=431"), "{logs}");

    let (status, _, body) = get(&client, &server.url("/")).await;
    assert_eq!((status, body.as_str()), (200, "Hello from Isola!\n"));
    let response = client
        .post(server.url("/echo"))
        .body("small")
        .send()
        .await
        .unwrap();
    assert_eq!(response.text().await.unwrap(), "POST /echo\nsmall");
}

/// POST `total` bytes with chunked transfer encoding over a raw connection
/// and return the response head.
/// Send only the head of a POST declaring `length` bytes; return the
/// response head.
async fn declared_upload(addr: std::net::SocketAddr, length: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head =
        format!("POST /echo HTTP/1.1\r\nhost: localhost\r\ncontent-length: {length}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut response))
        .await
        .expect("a response before the body")
        .unwrap();
    String::from_utf8_lossy(&response[..n]).into_owned()
}

async fn chunked_upload(addr: std::net::SocketAddr, total: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0;
    while sent < total {
        let frame = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
        // The server may answer and close before everything is sent.
        if stream.write_all(&frame).await.is_err() {
            break;
        }
        sent += chunk.len();
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut response = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut response))
        .await
        .expect("a response in time")
        .unwrap();
    String::from_utf8_lossy(&response[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn responses_carry_server_timing() {
    let project = limits_project("");
    let server = project.serve();
    let response = client()
        .get(server.url("/checksum?iters=1000"))
        .send()
        .await
        .unwrap();
    let timing = response.headers()["server-timing"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        timing.starts_with("cpu;dur=") && timing.contains(", wall;dur="),
        "{timing}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_noisy_neighbour_does_not_starve_a_healthy_worker() {
    // Four spinners, each allowed 3 s of CPU, on a server with fewer
    // threads than that: if guests never yielded, they would hold every
    // thread until cut off and the healthy requests would wait for them.
    // (With 2 s and 20 healthy requests, a full suite's load once let a
    // spinner finish first: the healthy ones took 1.8 s.)
    let project = Project::new(
        &[
            worker("spinner", guests::LIMITS, &["/spin"]),
            "cpu_ms = 3000\nwall_ms = 20000\n".into(),
            worker("hello", guests::EXAMPLE_HELLO, &["/*"]),
        ]
        .concat(),
    );
    let server = project.serve();
    let noisy: Vec<_> = (0..4)
        .map(|_| {
            let (client, url) = (client(), server.url("/spin"));
            tokio::spawn(async move { client.get(&url).send().await.unwrap().status() })
        })
        .collect();
    // Let them start spinning.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = client();
    let started = std::time::Instant::now();
    for i in 0..10 {
        let (status, _, body) = get(&client, &server.url(&format!("/ok/{i}"))).await;
        assert_eq!(status, 200, "{body}");
    }
    // Every healthy request was answered while all spinners still ran.
    assert!(
        noisy.iter().all(|spinner| !spinner.is_finished()),
        "a spinner finished before the healthy requests did ({:?}):\n{}",
        started.elapsed(),
        server.logs()
    );
    for spinner in noisy {
        assert_eq!(spinner.await.unwrap(), 503, "cut off at its CPU limit");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_that_send_headers_too_slowly_are_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let project = Project::new(&format!(
        "[server]\nheader_timeout_ms = 300\n{}",
        worker("hello", guests::EXAMPLE_HELLO, &["/*"])
    ));
    let server = project.serve();
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the connection must be closed by the server");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "closed after the timeout, not before: {waited:?}"
    );
    assert!(
        !String::from_utf8_lossy(&rest).contains("200 OK"),
        "no request was served"
    );
    // Others are served meanwhile and after.
    assert_eq!(get(&client(), &server.url("/")).await.0, 200);
}

/// `wall_ms` bounds a guest waiting for a request body that a client sends
/// slowly: the client gets `504 wall-limit` while it still holds back most
/// of the body it announced.
#[tokio::test(flavor = "multi_thread")]
async fn wall_ms_bounds_a_slow_upload() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let project = Project::new(&format!(
        "{}wall_ms = 1000\n",
        worker("hello", guests::EXAMPLE_HELLO, &["/*"])
    ));
    let server = project.serve();
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // The guest reads (and echoes) the whole body; 10 of 1000 bytes come.
    slow.write_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n0123456789")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    // The timeout only stops a hung test: the client never sends the rest.
    tokio::time::timeout(Duration::from_secs(60), async {
        while !head.ends_with(b"\r\n\r\n") {
            let n = slow.read(&mut byte).await.unwrap();
            assert_eq!(
                n,
                1,
                "closed without an answer: {:?}",
                String::from_utf8_lossy(&head)
            );
            head.push(byte[0]);
        }
    })
    .await
    .expect("no answer while the body was held back");
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                let (key, value) = l.split_once(':')?;
                key.eq_ignore_ascii_case(name)
                    .then(|| value.trim().to_owned())
            })
            .unwrap_or_else(|| panic!("no {name} in {head}"))
    };
    assert_eq!(header("x-isola-error"), "wall-limit");
    let id = header("x-request-id");
    let logs = server.wait_for_line(|l| l.contains("request failed") && l.contains(&id));
    let line = logs
        .lines()
        .find(|l| l.contains("request failed") && l.contains(&id))
        .unwrap();
    assert!(
        line.contains("wall-clock limit of 1000 ms reached"),
        "{line}"
    );
    assert_eq!(get(&client(), &server.url("/")).await.0, 200);
    drop(slow);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_configured_header_limit_is_the_one_enforced() {
    let project = Project::new(&format!(
        "[server]\nmax_header_bytes = 2048\n{}",
        worker("hello", guests::EXAMPLE_HELLO, &["/*"])
    ));
    let server = project.serve();
    let client = client();
    // Under the default 8 KiB but over the configured 2 KiB: refused.
    let response = client
        .get(server.url("/"))
        .header("x-big", "a".repeat(3 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 431);
    assert_eq!(response.headers()["x-isola-error"], "header-size");
    // Under the configured limit: served.
    let response = client
        .get(server.url("/"))
        .header("x-big", "a".repeat(1024))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn wall_ms_bounds_a_fetch_to_a_slow_origin() {
    let origin = Upstream::start(Duration::from_secs(30)).await;
    let project = limits_project(&format!(
        "wall_ms = 500\nallowed_outbound_hosts = [\"{}\"]",
        origin.url("")
    ));
    let server = project.serve();
    let url = format!("/fetch?url={}", origin.url("/slow"));
    expect_failure(&server, &url, 504, "wall-limit").await;
    // Cut at the deadline, while the origin was still holding its answer.
    assert_eq!(origin.paths(), ["/slow"]);
    assert!(origin.answered().is_empty(), "{:?}", origin.answered());
    still_serving(&server).await;
}
