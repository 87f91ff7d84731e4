//! Per-request cost through the embedding API, no sockets: a fresh
//! instance, the handler and the store's drop, one request at a time; and
//! what loading a component costs (compile into an empty cache, load from
//! the cache).

use std::path::Path;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use isola_runtime::{EngineOptions, IsolaEngine, RequestContext, Worker, WorkerRun};

use crate::percentile;

/// Sorted per-request samples.
pub struct Samples {
    /// Request in, to the last byte of the response body.
    pub wall: Vec<Duration>,
    /// Thread CPU time of the whole request on this one-thread runtime:
    /// the guest task (instantiate, handle, drop) and the host's handling
    /// around it. (`Outcome::cpu` is only what the guest is charged: its
    /// wasm and synchronous host calls.)
    pub guest_cpu: Vec<Duration>,
    /// The same less the store's drop, which comes after the response
    /// (`RequestStats::drop_time`): instantiate and handle.
    pub before_drop: Vec<Duration>,
    /// Instantiation alone.
    pub instantiate: Vec<Duration>,
}

impl Samples {
    pub fn rows(&self) -> [(&'static str, f64, f64); 4] {
        let row = |name, samples: &[Duration]| {
            (name, percentile(samples, 0.5), percentile(samples, 0.99))
        };
        [
            row("instantiate", &self.instantiate),
            row(
                "instantiate + handle (request thread CPU less the drop)",
                &self.before_drop,
            ),
            row(
                "instantiate + handle + drop (request thread CPU)",
                &self.guest_cpu,
            ),
            row("request to full body (wall)", &self.wall),
        ]
    }
}

/// Send `warmup + requests` GETs one at a time, each waited for until its
/// guest task is over (instance dropped), and keep the last `requests`.
/// `check` sees each response's status and body.
pub async fn one_at_a_time(
    worker: &Worker,
    warmup: usize,
    requests: usize,
    check: impl Fn(http::StatusCode, &[u8]),
) -> Samples {
    let mut samples = Samples {
        wall: Vec::with_capacity(requests),
        guest_cpu: Vec::with_capacity(requests),
        before_drop: Vec::with_capacity(requests),
        instantiate: Vec::with_capacity(requests),
    };
    for i in 0..warmup + requests {
        let request = http::Request::get("http://bench/")
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let cpu_before = thread_cpu();
        let started = Instant::now();
        let handled = worker.handle(request, RequestContext::default()).await;
        let status = handled.response.status();
        let body = handled
            .response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        let elapsed = started.elapsed();
        check(status, &body);
        let outcome = handled.outcome.await;
        let cpu = thread_cpu().saturating_sub(cpu_before);
        if i >= warmup {
            samples.wall.push(elapsed);
            samples.guest_cpu.push(cpu);
            samples.before_drop.push(cpu.saturating_sub(outcome.drop));
            samples.instantiate.push(outcome.instantiate);
        }
    }
    samples.wall.sort();
    samples.guest_cpu.sort();
    samples.before_drop.sort();
    samples.instantiate.sort();
    samples
}

/// This thread's CPU time so far.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// What loading one component costs.
pub struct LoadTimes {
    /// Compile into an empty cache (a fresh engine and cache directory).
    pub cold_compile: Duration,
    /// Median of loading it again from the on-disk cache with a fresh
    /// engine each time (read, hash, `Component::deserialize`).
    pub from_cache: Duration,
}

pub fn load_times(component: &Path, work: &Path) -> LoadTimes {
    let cache = work.join(format!(
        "load-cache-{}",
        component.file_stem().unwrap_or_default().to_string_lossy()
    ));
    let _ = std::fs::remove_dir_all(&cache);
    let engine = IsolaEngine::new(&EngineOptions::new(&cache)).expect("engine");
    let started = Instant::now();
    engine.load_component(component).expect("compiling");
    let cold_compile = started.elapsed();
    drop(engine);
    let mut loads: Vec<Duration> = (0..7)
        .map(|_| {
            let engine = IsolaEngine::new(&EngineOptions::new(&cache)).expect("engine");
            let started = Instant::now();
            engine.load_component(component).expect("loading");
            started.elapsed()
        })
        .collect();
    loads.sort();
    LoadTimes {
        cold_compile,
        from_cache: loads[loads.len() / 2],
    }
}

/// A worker for `component` on a fresh engine whose cache is in `work`;
/// `instance_reuse` as in the config (0: a fresh instance per request).
pub fn worker(component: &Path, name: &str, work: &Path, instance_reuse: u32) -> Worker {
    let engine = IsolaEngine::new(&EngineOptions::new(work.join("cache"))).expect("engine");
    let run = WorkerRun {
        instance_reuse,
        ..WorkerRun::default()
    };
    let backends = isola_runtime::Backends::embedded(work, 1 << 20).expect("state");
    Worker::load(&engine, name, &run, component, &backends).expect("the worker loads")
}
