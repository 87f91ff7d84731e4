//! The `ctx` lifecycle: waitUntil, passThroughOnException, streaming both
//! ways, request info, service bindings and ctx locals.

use std::time::{Duration, Instant};

use isola_test_programs as guests;

use crate::support::{Project, Upstream, client, get, log_time_ms, now_ms, rss_kib, worker};

/// A `lifecycle` worker on `/*` that may reach `upstream`, with extra keys.
fn lifecycle_project(upstream: &Upstream, extra: &str) -> Project {
    Project::new(&format!(
        "{}allowed_outbound_hosts = [\"http://127.0.0.1:{}\"]\n{extra}\n",
        worker("lifecycle", guests::LIFECYCLE, &["/*"]),
        upstream.addr.port()
    ))
}

/// A `lifecycle` worker on `/*` whose origin is `origin`.
fn with_origin(origin: &Upstream) -> Project {
    Project::new(&format!(
        "{}origin = \"http://127.0.0.1:{}\"\n",
        worker("lifecycle", guests::LIFECYCLE, &["/*"]),
        origin.addr.port()
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_until_work_runs_after_the_client_has_its_response() {
    let upstream = Upstream::start(Duration::ZERO).await;
    let project = lifecycle_project(&upstream, "");
    let server = project.serve();
    let url = server.url(&format!(
        "/wait-until?upstream={}&delay=300",
        upstream.url("")
    ));
    let (status, _, body) = get(&client(), &url).await;
    let responded = Instant::now();
    assert_eq!((status, body.as_str()), (200, "responded\n"));
    let background = upstream.wait_for("/background").await;
    assert!(
        background > responded,
        "the background call came after the full response"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_failing_wait_until_task_does_not_cancel_the_others() {
    let upstream = Upstream::start(Duration::ZERO).await;
    let project = lifecycle_project(&upstream, "");
    let server = project.serve();
    let url = server.url(&format!("/wait-until-many?upstream={}", upstream.url("")));
    let (status, id, _) = get(&client(), &url).await;
    assert_eq!(status, 200);
    upstream.wait_for("/a").await;
    upstream.wait_for("/c").await;
    let logs = server.wait_for_log("background failure on purpose");
    let id = id.unwrap();
    assert!(
        logs.lines()
            .any(|l| l.contains("background failure on purpose") && l.contains(&id)),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_until_work_is_cut_at_the_wall_limit() {
    let upstream = Upstream::start(Duration::ZERO).await;
    let project = lifecycle_project(&upstream, "wall_ms = 2000");
    let server = project.serve();
    let (status, id, body) = get(&client(), &server.url("/wait-until-forever")).await;
    let received = now_ms();
    assert_eq!((status, body.as_str()), (200, "responded\n"));
    let logs = server.wait_for_log("guest cut off after its response was sent");
    let id = id.unwrap();
    let cut = logs
        .lines()
        .find(|l| l.contains("guest cut off") && l.contains(&id) && l.contains("wall-limit"))
        .unwrap_or_else(|| panic!("{logs}"));
    // The client had the whole response before the background work was cut
    // (by the server's clock): a response that waited for that work would
    // have come after the cut.
    let cut_at = log_time_ms(cut).unwrap();
    assert!(
        received <= cut_at,
        "the response came at {received}, after the cut at {cut_at}: {cut}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_waits_for_wait_until_work() {
    let upstream = Upstream::start(Duration::ZERO).await;
    let project = lifecycle_project(&upstream, "");
    let mut server = project.serve();
    let url = server.url(&format!(
        "/wait-until?upstream={}&delay=800",
        upstream.url("")
    ));
    assert_eq!(get(&client(), &url).await.0, 200);
    server.terminate();
    upstream.wait_for("/background").await;
    assert!(server.wait(Duration::from_secs(20)).success());
    assert!(
        server
            .wait_for_log("all guest work finished")
            .contains("shutting down")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_cuts_background_work_after_the_grace_period() {
    let project = Project::new(&format!(
        "[server]\nshutdown_grace_ms = 300\n{}wall_ms = 60000\n",
        worker("lifecycle", guests::LIFECYCLE, &["/*"])
    ));
    let mut server = project.serve();
    assert_eq!(
        get(&client(), &server.url("/wait-until-forever")).await.0,
        200
    );
    server.terminate();
    // The task would run for 60 s (its wall limit): the server cuts it once
    // the grace period is over, and exits.
    assert!(server.wait(Duration::from_secs(20)).success());
    server.wait_for_log("cutting 1 guest task(s) still running");
}

#[tokio::test(flavor = "multi_thread")]
async fn pass_through_on_exception_forwards_the_original_request_to_the_origin() {
    let origin = Upstream::echo().await;
    let project = with_origin(&origin);
    let server = project.serve();
    let client = client();
    for mode in ["trap", "error"] {
        let response = client
            .post(server.url(&format!("/shop/pass-through?mode={mode}")))
            .header("x-test", format!("header-{mode}"))
            .body(format!("body-{mode}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{mode}");
        assert!(response.headers().contains_key("x-request-id"));
        assert_eq!(
            response.text().await.unwrap(),
            format!(
                "origin got POST /shop/pass-through?mode={mode}\nx-test=header-{mode}\nbody=body-{mode}"
            )
        );
    }
    assert!(
        server
            .wait_for_log("passed the request through to the origin")
            .contains("reason=\"exception\"")
    );

    // Success, or a failure without asking: the origin is not involved.
    let (status, _, body) = get(&client, &server.url("/pass-through?mode=ok")).await;
    assert_eq!((status, body.as_str()), (200, "handled by the worker\n"));
    let response = client
        .get(server.url("/pass-through?mode=none"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    assert_eq!(origin.paths().len(), 2, "{:?}", origin.paths());
}

#[tokio::test(flavor = "multi_thread")]
async fn pass_through_without_an_origin_is_a_500_that_says_why() {
    let upstream = Upstream::start(Duration::ZERO).await;
    let project = lifecycle_project(&upstream, "");
    let server = project.serve();
    let response = client()
        .get(server.url("/pass-through?mode=trap"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    assert_eq!(response.headers()["x-isola-error"], "exception");
    server.wait_for_log("asked for pass-through, but the worker has no `origin` configured");
}

#[tokio::test(flavor = "multi_thread")]
async fn response_bodies_stream_before_the_guest_is_done() {
    let upstream = Upstream::start(Duration::ZERO).await;
    let project = lifecycle_project(&upstream, "");
    let server = project.serve();
    let started = Instant::now();
    let mut response = client()
        .get(server.url("/stream?chunks=3&delay=1000"))
        .send()
        .await
        .unwrap();
    let first = response.chunk().await.unwrap().unwrap();
    let first_at = started.elapsed();
    assert_eq!(&first[..], b"chunk 0\n");
    let mut rest = Vec::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    let total = started.elapsed();
    assert_eq!(rest, b"chunk 1\nchunk 2\n");
    // The guest sleeps 1 s before each later chunk, so the first chunk
    // arrived while the guest was still working (a loaded machine can only
    // delay the first chunk, shrinking this gap, hence the margin).
    let gap = total - first_at;
    assert!(
        gap >= Duration::from_millis(1000),
        "first chunk at {first_at:?}, all at {total:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn large_uploads_stream_into_the_guest_without_piling_up_in_the_host() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let project = Project::new(&format!(
        "[server]\nmax_body_mb = 300\n{}cpu_ms = 60000\nwall_ms = 120000\n",
        worker("lifecycle", guests::LIFECYCLE, &["/*"])
    ));
    let server = project.serve();
    let rss_before = rss_kib(server.pid());

    const TOTAL: usize = 200 << 20;
    let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /hash HTTP/1.1\r\nhost: localhost\r\ncontent-length: {TOTAL}\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (mut hash, mut peak) = (0xcbf2_9ce4_8422_2325u64, rss_before);
    for i in 0..TOTAL / chunk.len() {
        stream.write_all(&chunk).await.unwrap();
        for &byte in &chunk {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        if i % 256 == 0 {
            peak = peak.max(rss_kib(server.pid()));
        }
    }
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    peak = peak.max(rss_kib(server.pid()));
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains(&format!("bytes={TOTAL} fnv={hash:016x}\n")),
        "{response}"
    );
    let growth_mib = (peak.saturating_sub(rss_before)) / 1024;
    // docs/guides/request-lifecycle.md, Streaming: "a 200 MiB body costs
    // the host a few MiB (under 16 MiB)".
    assert!(
        growth_mib < 16,
        "host RSS grew {growth_mib} MiB for a 200 MiB upload"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_client_holds_back_a_large_streamed_response() {
    let project = Project::new(&format!(
        "{}cpu_ms = 60000\nwall_ms = 120000\n",
        worker("lifecycle", guests::LIFECYCLE, &["/*"])
    ));
    let server = project.serve();
    let rss_before = rss_kib(server.pid());
    let mut response = client()
        .get(server.url("/big?mb=200"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut received = response.chunk().await.unwrap().unwrap().len();
    // Without back-pressure the guest would now produce all 200 MiB into the
    // host's memory; with it, the guest waits for this client.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let growth_mib = rss_kib(server.pid()).saturating_sub(rss_before) / 1024;
    // docs/guides/request-lifecycle.md, Streaming: "a 200 MiB body costs
    // the host a few MiB (under 16 MiB)".
    assert!(
        growth_mib < 16,
        "host RSS grew {growth_mib} MiB while the client paused"
    );
    while received < 8 << 20 {
        received += response.chunk().await.unwrap().unwrap().len();
    }
    drop(response);
    // The server goes on serving.
    assert_eq!(get(&client(), &server.url("/info")).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn request_info_reports_client_protocol_and_placement() {
    let project = Project::new(&format!(
        "[server]\ncolo = \"TST\"\ncountry = \"NL\"\ntrusted_client_ip_header = \"x-real-ip\"\n{}",
        worker("lifecycle", guests::LIFECYCLE, &["/*"])
    ));
    let server = project.serve();
    let response = client()
        .get(server.url("/info"))
        .header("x-real-ip", "203.0.113.9")
        .send()
        .await
        .unwrap();
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        response.text().await.unwrap(),
        format!(
            "client=203.0.113.9\nprotocol=HTTP/1.1\ntls=none\nrequest_id={id}\ncolo=TST\ncountry=NL\n"
        )
    );
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let body = h2
        .get(server.url("/info"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        body.starts_with("client=127.0.0.1\nprotocol=HTTP/2\n"),
        "{body}"
    );

    // Without `trusted_client_ip_header`, the header is just a header.
    let plain = Project::new(&worker("lifecycle", guests::LIFECYCLE, &["/*"]));
    let server = plain.serve();
    let response = client()
        .get(server.url("/info"))
        .header("x-real-ip", "203.0.113.9")
        .send()
        .await
        .unwrap();
    let body = response.text().await.unwrap();
    assert!(
        body.starts_with("client=127.0.0.1\n") && body.contains("colo=none\ncountry=none\n"),
        "{body}"
    );
}

fn chain_project() -> Project {
    Project::new(
        &[
            worker("auth", guests::LIFECYCLE, &["/auth"]),
            "services = [{ binding = \"TENANT\", service = \"tenant\" }]\n".into(),
            worker("tenant", guests::LIFECYCLE, &[]),
            "services = [{ binding = \"APP\", service = \"app\" }]\n".into(),
            worker("app", guests::LIFECYCLE, &["/app"]),
            worker("looper", guests::LIFECYCLE, &["/loop"]),
            "services = [{ binding = \"SELF\", service = \"looper\" }]\n".into(),
        ]
        .concat(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn ctx_locals_travel_through_a_chain_of_service_bindings() {
    let project = chain_project();
    let server = project.serve();
    let client = client();
    let response = client
        .get(server.url("/auth"))
        .header("x-user", "ada")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        response.text().await.unwrap(),
        format!("user=ada tenant=tenant-of-ada big=65536 protocol=internal id={id}\n")
    );
    // Each hop is its own request of its own worker, under the same id.
    for hop in ["tenant", "app"] {
        server.wait_for_log(&format!("request_id={id} worker={hop}"));
    }
    let logs = server.wait_for_log(&format!("request_id={id} worker=auth"));
    assert!(
        logs.lines()
            .any(|l| l.contains(&format!("request_id={id} worker=auth"))
                && l.contains("subrequests=1")),
        "{logs}"
    );

    let (status, _, _) = get(&client, &server.url("/auth")).await;
    assert_eq!(status, 401);
    // The app rejects a request that skipped the chain.
    let (status, _, body) = get(&client, &server.url("/app")).await;
    assert_eq!(
        (status, body.as_str()),
        (400, "missing local `user` or `tenant`\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn service_binding_loops_stop_at_the_depth_limit() {
    let project = chain_project();
    let server = project.serve();
    let response = client().get(server.url("/loop")).send().await.unwrap();
    assert_eq!(response.status(), 508);
    assert_eq!(response.headers()["x-isola-error"], "loop-detected");
    server.wait_for_log("chain deeper than 16");
}

#[tokio::test(flavor = "multi_thread")]
async fn pass_through_is_impossible_for_bodies_too_large_to_buffer() {
    let origin = Upstream::echo().await;
    let project = with_origin(&origin);
    let server = project.serve();
    let body = vec![b'x'; (isola_runtime::REPLAY_BUFFER_LIMIT + 1) as usize];
    let response = client()
        .post(server.url("/pass-through?mode=trap"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    assert_eq!(response.headers()["x-isola-error"], "exception");
    server.wait_for_log("so it cannot be replayed");
    assert!(origin.paths().is_empty());
}
