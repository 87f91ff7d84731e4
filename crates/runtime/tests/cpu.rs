//! What a run is charged against `cpu_ms`: the guest's own execution and
//! the host calls it makes synchronously, not the host's work moving its
//! body bytes; a compute loop is still stopped. (Sequential fetches under
//! the same budget: outbound.rs.)

use std::convert::Infallible;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use isola_runtime::{
    Backends, EngineOptions, IsolaEngine, Limit, Outcome, RequestContext, Worker, WorkerRun,
};

/// `component` as a worker allowed `cpu_ms` of CPU and `memory_mb` of
/// memory.
fn worker(state: &Path, component: &str, cpu_ms: u64, memory_mb: u64) -> Worker {
    let engine = IsolaEngine::new(&EngineOptions::new(state.join("cache"))).unwrap();
    let backends = Backends::embedded(state, 1 << 20).unwrap();
    let mut run = WorkerRun::default();
    run.limits.cpu_ms = cpu_ms;
    run.limits.memory_mb = memory_mb;
    Worker::load(&engine, "cpu", &run, Path::new(component), &backends).unwrap()
}

/// The `cpu` figure of a `Server-Timing` header, in milliseconds.
fn server_timing_cpu(response: &http::Response<isola_runtime::Body>) -> f64 {
    let timing = response.headers()["server-timing"].to_str().unwrap();
    timing
        .strip_prefix("cpu;dur=")
        .and_then(|rest| rest.split(',').next())
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no cpu figure in {timing}"))
}

/// The charged CPU time of `outcome`, in milliseconds.
fn charged_ms(outcome: &Outcome) -> f64 {
    outcome.cpu.as_secs_f64() * 1e3
}

const CHUNK: usize = 64 << 10;
const BODY: usize = 100 << 20;

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_mib_body_streams_through_a_guest_on_ten_ms_of_cpu() {
    // The guest reads the request body into its memory and writes it out
    // (/echo), or splices it across (/splice): 100 MiB moved by the host,
    // 1,600 chunks handled by the guest, in 8 MiB of memory.
    for path in ["/echo", "/splice"] {
        let state = tempfile::tempdir().unwrap();
        let worker = worker(state.path(), isola_test_programs::RAWLIMITS, 10, 8);
        let chunk = Bytes::from(vec![7u8; CHUNK]);
        let frames =
            (0..BODY / CHUNK).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone())));
        let request = http::Request::post(format!("http://test{path}"))
            .body(StreamBody::new(futures_util::stream::iter(frames)))
            .unwrap();
        let handled = worker.handle(request, RequestContext::default()).await;
        assert_eq!(handled.response.status(), 200, "{path}");
        let timing = server_timing_cpu(&handled.response);
        let mut body = handled.response.into_body();
        let mut received = 0;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                assert!(data.iter().all(|&b| b == 7), "{path}");
                received += data.len();
            }
        }
        assert_eq!(received, BODY, "{path}");
        let outcome = handled.outcome.await;
        assert_eq!(outcome.limit, None, "{path}: {outcome:?}");
        // Under the budget: the bytes' copies are the host's work. (What is
        // charged is the guest's loop over 1,600 chunks and the crossings
        // into the host: 5.8 ms for /echo in the unoptimised test build at
        // a load of 20 on 2 cores, 0.1 ms of it as fuel.)
        assert!(charged_ms(&outcome) < 10.0, "{path}: {outcome:?}");
        // Server-Timing reports what was charged when the head was sent;
        // the access line (the outcome) all of it.
        assert!(timing <= charged_ms(&outcome) + 0.001, "{path}: {timing}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn compute_loops_are_still_stopped_at_the_cpu_limit() {
    let state = tempfile::tempdir().unwrap();
    let worker = worker(state.path(), isola_test_programs::LIMITS, 10, 128);
    // A loop in wasm (fuel) and one calling into the host (the meter).
    for path in ["/compute?ms=50", "/spin-host"] {
        let request = http::Request::get(format!("http://test{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let handled = worker.handle(request, RequestContext::default()).await;
        assert_eq!(handled.response.status(), 503, "{path}");
        assert_eq!(
            handled.response.headers()[isola_runtime::ERROR_HEADER],
            "cpu-limit",
            "{path}"
        );
        let outcome = handled.outcome.await;
        assert_eq!(outcome.limit, Some(Limit::Cpu), "{path}: {outcome:?}");
        assert!(outcome.cpu > Duration::ZERO, "{path}: {outcome:?}");
    }
}
