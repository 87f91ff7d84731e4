//! The runtime's behaviour, in-process through the embedding API: limits as
//! typed outcomes, fresh instances and `instance_reuse`, pass-through to the
//! origin, service bindings, and waitUntil work that outlives the response.
//! (The binary's own behaviour — routing, reload, the admin listener — is
//! tested end to end in `tests/e2e`.)

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use isola_runtime::{
    Backends, EngineOptions, Failure, Handled, IsolaEngine, Limit, OutboundRule, RequestContext,
    ServiceBinding, Services, Worker, WorkerRun,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An engine and backends in a temporary state directory.
struct Host {
    engine: IsolaEngine,
    backends: Backends,
    _state: tempfile::TempDir,
}

impl Host {
    fn new() -> Self {
        let state = tempfile::tempdir().unwrap();
        Host {
            engine: IsolaEngine::new(&EngineOptions::new(state.path().join("cache"))).unwrap(),
            backends: Backends::embedded(state.path(), 1 << 20).unwrap(),
            _state: state,
        }
    }

    fn load(&self, name: &str, component: &str, run: &WorkerRun) -> Worker {
        Worker::load(
            &self.engine,
            name,
            run,
            Path::new(component),
            &self.backends,
        )
        .unwrap()
    }
}

async fn get(worker: &Worker, path: &str) -> Handled {
    get_with(worker, http::Request::get(format!("http://test{path}"))).await
}

async fn get_with(worker: &Worker, request: http::request::Builder) -> Handled {
    let request = request.body(Empty::<Bytes>::new()).unwrap();
    worker.handle(request, RequestContext::default()).await
}

/// The response's status, `x-isola-error` and body.
async fn read(handled: Handled) -> (u16, Option<String>, String, isola_runtime::Outcome) {
    let response = handled.response;
    let status = response.status().as_u16();
    let reason = response
        .headers()
        .get(isola_runtime::ERROR_HEADER)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let outcome = handled.outcome.await;
    (
        status,
        reason,
        String::from_utf8_lossy(&body).into_owned(),
        outcome,
    )
}

fn limited(cpu_ms: u64, wall_ms: u64, memory_mb: u64) -> WorkerRun {
    let mut run = WorkerRun::default();
    run.limits.cpu_ms = cpu_ms;
    run.limits.wall_ms = wall_ms;
    run.limits.memory_mb = memory_mb;
    run
}

#[tokio::test]
async fn each_limit_ends_its_request_with_a_typed_outcome_and_the_next_request_is_fine() {
    let host = Host::new();
    let worker = host.load("limits", isola_test_programs::LIMITS, &limited(50, 500, 32));
    for (path, status, reason, limit) in [
        ("/spin", 503, "cpu-limit", Limit::Cpu),
        ("/memory-bomb", 503, "memory-limit", Limit::Memory),
        ("/sleep?ms=2000", 504, "wall-limit", Limit::Wall),
    ] {
        let (got_status, got_reason, _, outcome) = read(get(&worker, path).await).await;
        assert_eq!(got_status, status, "{path}");
        assert_eq!(got_reason.as_deref(), Some(reason), "{path}");
        assert_eq!(outcome.limit, Some(limit), "{path}");
        assert_eq!(
            outcome.failure.and_then(Failure::limit),
            Some(limit),
            "{path}"
        );
        assert_eq!(outcome.status, Some(status), "{path}");
    }
    let (status, reason, body, outcome) = read(get(&worker, "/checksum?iters=1000").await).await;
    assert_eq!((status, reason), (200, None));
    assert!(!body.is_empty());
    assert_eq!(outcome.limit, None);
    assert!(
        outcome.fuel > 0 && outcome.cpu > Duration::ZERO,
        "{outcome:?}"
    );
}

#[tokio::test]
async fn every_request_gets_a_fresh_instance_unless_reuse_is_asked_for() {
    let host = Host::new();
    let fresh = host.load("fresh", isola_test_programs::COUNTER, &WorkerRun::default());
    for _ in 0..3 {
        let (_, _, body, outcome) = read(get(&fresh, "/").await).await;
        assert_eq!(body, "1");
        assert!(outcome.instantiate > Duration::ZERO);
    }
    let reused = host.load(
        "reused",
        isola_test_programs::COUNTER,
        &WorkerRun {
            instance_reuse: 3,
            ..WorkerRun::default()
        },
    );
    let mut served = Vec::new();
    for _ in 0..4 {
        served.push(read(get(&reused, "/").await).await.2);
    }
    // Three requests per instance, one after another, then a new one.
    assert_eq!(served, ["1", "2", "3", "1"]);
}

/// An HTTP/1.1 origin on 127.0.0.1 that answers every request with
/// `body` and records the request lines it saw.
async fn origin(body: &'static str) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                log.lock()
                    .unwrap()
                    .push(head.lines().next().unwrap_or_default().to_owned());
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    (url, seen)
}

#[tokio::test]
async fn a_guest_that_asked_for_pass_through_and_failed_is_answered_by_the_origin() {
    let host = Host::new();
    let (url, seen) = origin("from the origin").await;
    let run = WorkerRun {
        origin: Some(url),
        ..WorkerRun::default()
    };
    let worker = host.load("fail-open", isola_test_programs::LIFECYCLE, &run);
    for mode in ["trap", "error"] {
        let (status, _, body, outcome) =
            read(get(&worker, &format!("/pass-through?mode={mode}")).await).await;
        assert_eq!((status, body.as_str()), (200, "from the origin"), "{mode}");
        assert_eq!(outcome.failure, Some(Failure::Exception), "{mode}");
    }
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        [
            "GET /pass-through?mode=trap HTTP/1.1",
            "GET /pass-through?mode=error HTTP/1.1"
        ]
    );
    // Without the guest's request, a failure is the client's 500.
    let (status, reason, _, _) = read(get(&worker, "/pass-through?mode=none").await).await;
    assert_eq!((status, reason.as_deref()), (500, Some("exception")));
    let (status, _, body, _) = read(get(&worker, "/pass-through?mode=ok").await).await;
    assert_eq!((status, body.as_str()), (200, "handled by the worker\n"));
}

#[tokio::test]
async fn service_bindings_call_other_workers_in_process_with_the_callers_locals() {
    let host = Host::new();
    let bound = |pairs: &[(&str, &str)]| WorkerRun {
        services: pairs
            .iter()
            .map(|(binding, service)| ServiceBinding {
                binding: (*binding).into(),
                service: (*service).into(),
            })
            .collect(),
        ..WorkerRun::default()
    };
    let workers = [
        host.load(
            "auth",
            isola_test_programs::LIFECYCLE,
            &bound(&[("TENANT", "tenant")]),
        ),
        host.load(
            "tenant",
            isola_test_programs::LIFECYCLE,
            &bound(&[("APP", "app")]),
        ),
        host.load("app", isola_test_programs::LIFECYCLE, &WorkerRun::default()),
        host.load(
            "looping",
            isola_test_programs::LIFECYCLE,
            &bound(&[("SELF", "looping")]),
        ),
    ];
    let _services = Services::new(&workers);
    let id = isola_runtime::RequestId::from("chain-1");
    let request = http::Request::get("http://test/auth")
        .header("x-user", "ada")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let handled = workers[0]
        .handle(request, RequestContext::default().with_id(id))
        .await;
    let (status, _, body, outcome) = read(handled).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        "user=ada tenant=tenant-of-ada big=65536 protocol=internal id=chain-1\n"
    );
    // Its one call (to `tenant`) was its subrequest; the next is tenant's.
    assert_eq!(outcome.subrequests, 1);

    let (status, reason, _, _) = read(get(&workers[3], "/loop").await).await;
    assert_eq!(status, 508, "a chain deeper than MAX_CALL_DEPTH is cut");
    assert_eq!(reason.as_deref(), Some("loop-detected"));
}

#[tokio::test]
async fn wait_until_work_runs_after_the_response_and_the_outcome_waits_for_it() {
    let host = Host::new();
    let (url, seen) = origin("ok").await;
    let run = WorkerRun {
        allowed_outbound_hosts: vec![OutboundRule::parse(&url).unwrap()],
        ..WorkerRun::default()
    };
    let worker = host.load("background", isola_test_programs::LIFECYCLE, &run);
    let started = Instant::now();
    let handled = get(&worker, &format!("/wait-until?upstream={url}&delay=300")).await;
    let body = handled
        .response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    let responded = started.elapsed();
    assert_eq!(body, "responded\n");
    assert!(seen.lock().unwrap().is_empty(), "the work had not run yet");
    let outcome = handled.outcome.await;
    assert!(outcome.wall > responded, "{outcome:?}");
    assert!(outcome.wall >= Duration::from_millis(300), "{outcome:?}");
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        ["GET /background HTTP/1.1"]
    );
    assert_eq!(outcome.subrequests, 1);
    assert_eq!(worker.active_tasks(), 0);
}

/// An origin that answers `got N bytes` with the length of each request's
/// body, and records the lengths.
async fn echo_origin() -> (String, Arc<Mutex<Vec<usize>>>) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        let log = log.clone();
                        async move {
                            let body = request.into_body().collect().await?.to_bytes();
                            log.lock().unwrap().push(body.len());
                            let answer = format!("got {} bytes", body.len());
                            Ok::<_, hyper::Error>(http::Response::new(http_body_util::Full::new(
                                Bytes::from(answer),
                            )))
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(socket), service)
                    .await;
            });
        }
    });
    (url, seen)
}

/// A POST to `path` whose body of `size` bytes comes in 4 KiB chunks with
/// no length given (`transfer-encoding: chunked` on the wire).
async fn post_chunked(worker: &Worker, path: &str, size: usize) -> Handled {
    use http_body::Frame;
    let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![b'x'; size]
        .chunks(4096)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
    let request = http::Request::post(format!("http://test{path}"))
        .body(body)
        .unwrap();
    worker.handle(request, RequestContext::default()).await
}

#[tokio::test]
async fn chunked_bodies_within_the_buffer_are_replayed_and_larger_ones_still_reach_the_guest() {
    let host = Host::new();
    let (url, seen) = echo_origin().await;
    let run = WorkerRun {
        origin: Some(url),
        pass_through_buffer_kb: 64,
        ..WorkerRun::default()
    };
    let worker = host.load("fail-open", isola_test_programs::LIFECYCLE, &run);

    let (status, _, body, _) =
        read(post_chunked(&worker, "/pass-through?mode=trap", 48 << 10).await).await;
    assert_eq!((status, body.as_str()), (200, "got 49152 bytes"));

    // Over the buffer: the guest still reads all of it, as it streams...
    let (status, _, body, _) = read(post_chunked(&worker, "/hash", 100 << 10).await).await;
    assert_eq!(status, 200);
    assert!(body.starts_with("bytes=102400 "), "{body}");
    // ...but it cannot be replayed.
    let (status, reason, _, _) =
        read(post_chunked(&worker, "/pass-through?mode=trap", 100 << 10).await).await;
    assert_eq!((status, reason.as_deref()), (500, Some("exception")));
    assert_eq!(seen.lock().unwrap().as_slice(), [48 << 10]);
}

#[tokio::test]
async fn a_compute_loop_is_stopped_by_its_fuel_budget_to_the_unit() {
    let host = Host::new();
    // 50 M fuel runs out after ~6 ms of wasm, long before the 500 ms
    // thread-CPU backstop could, even on a slow and busy machine: the limit
    // that fires is the fuel budget itself.
    let mut run = limited(500, 10_000, 32);
    run.fuel_per_ms = Some(100_000);
    let worker = host.load("spinner", isola_test_programs::LIMITS, &run);
    let (status, reason, _, outcome) = read(get(&worker, "/spin").await).await;
    assert_eq!((status, reason.as_deref()), (503, Some("cpu-limit")));
    assert_eq!(outcome.limit, Some(Limit::Cpu));
    assert_eq!(outcome.fuel, 500 * 100_000, "all of cpu_ms × fuel_per_ms");
    assert!(outcome.cpu < Duration::from_millis(500), "{outcome:?}");
}

#[tokio::test]
async fn a_run_cut_off_by_the_cpu_backstop_still_reports_the_fuel_it_burned() {
    let host = Host::new();
    // Far more fuel than 20 ms of wasm can burn: the thread-CPU backstop
    // ends the run, dropping its store mid-call.
    let mut run = limited(20, 10_000, 32);
    run.fuel_per_ms = Some(1_000_000_000);
    let worker = host.load("spinner", isola_test_programs::LIMITS, &run);
    let (status, reason, _, outcome) = read(get(&worker, "/spin").await).await;
    assert_eq!((status, reason.as_deref()), (503, Some("cpu-limit")));
    assert!(outcome.cpu >= Duration::from_millis(20), "{outcome:?}");
    assert!(
        outcome.fuel > 0 && outcome.fuel < 20 * 1_000_000_000,
        "the fuel burned before the cut: {outcome:?}"
    );
}

/// Counts the runs it hears of.
#[derive(Default)]
struct Runs(std::sync::atomic::AtomicUsize);

impl isola_runtime::Observer for Runs {
    fn finished(&self, _outcome: &isola_runtime::Outcome) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_chain_of_service_calls_may_nest_sixteen_deep_and_no_deeper() {
    let host = Host::new();
    let run = WorkerRun {
        services: vec![ServiceBinding {
            binding: "SELF".into(),
            service: "looping".into(),
        }],
        ..WorkerRun::default()
    };
    let worker = host.load("looping", isola_test_programs::LIFECYCLE, &run);
    let runs = Arc::new(Runs::default());
    worker.observe(runs.clone());
    let _services = Services::new(std::slice::from_ref(&worker));
    // `/loop` calls itself through `SELF` until a call is refused.
    let (status, reason, _, _) = read(get(&worker, "/loop").await).await;
    assert_eq!((status, reason.as_deref()), (508, Some("loop-detected")));
    assert_eq!(
        isola_runtime::MAX_CALL_DEPTH,
        16,
        "docs/reference/errors.md and this test say 16"
    );
    // The request itself and the 16 nested calls ran; the 17th did not.
    assert_eq!(runs.0.load(std::sync::atomic::Ordering::SeqCst), 17);
}

/// Whether this kernel has `PAGEMAP_SCAN` (Linux 6.7), without which
/// wasmtime keeps the first `keep_resident_bytes` of every memory whatever
/// was dirtied.
fn kernel_has_pagemap_scan() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0)) >= (6, 7)
}

#[tokio::test]
async fn an_instance_that_dirtied_more_than_keep_resident_leaves_its_slot_holding_nothing() {
    if !kernel_has_pagemap_scan() {
        eprintln!("skipped: no PAGEMAP_SCAN (Linux before 6.7)");
        return;
    }
    let host = Host::new();
    let keep = EngineOptions::new("unused").keep_resident_bytes;
    let worker = host.load(
        "limits",
        isola_test_programs::LIMITS,
        &limited(200, 5000, 32),
    );
    let resident = || {
        host.engine
            .engine()
            .pooling_allocator_metrics()
            .expect("a pooling allocator")
            .unused_memory_bytes_resident()
    };
    let small = |label: &'static str| {
        let worker = &worker;
        async move {
            let (status, ..) = read(get(worker, "/checksum?iters=1000").await).await;
            assert_eq!(status, 200, "{label}");
            let kept = resident();
            // A small instance's dirty pages stay resident in its slot, so
            // that the next instance there starts without page faults.
            assert!(kept > 0 && kept < keep, "{label}: {kept} bytes kept");
        }
    };
    small("before the bomb").await;
    // The bomb grows its memory to the 32 MiB limit, dirtying all of it,
    // in the same (module-affine) slot; its pages are all let go.
    let (status, reason, ..) = read(get(&worker, "/memory-bomb").await).await;
    assert_eq!((status, reason.as_deref()), (503, Some("memory-limit")));
    assert_eq!(resident(), 0, "bytes kept after the memory bomb");
    small("after the bomb").await;
}
