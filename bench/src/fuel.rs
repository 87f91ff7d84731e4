//! Fuel calibration and fuel's overhead, through the embedding API.
//!
//! 1. Calibration: a compute-bound guest (the `limits` test guest's
//!    `/checksum` loop) runs with fuel on; fuel consumed ÷ thread CPU time
//!    gives fuel per millisecond, the figure behind `DEFAULT_FUEL_PER_MS`.
//! 2. Overhead: the same requests on an engine with fuel off, interleaved
//!    with fuel on, in one run; the ratio of median thread CPU times is
//!    fuel's cost (CPU rather than wall time, so a neighbour taking the
//!    core does not count against either side).

use std::path::Path;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use isola_runtime::{EngineOptions, IsolaEngine, RequestContext, Worker, WorkerRun};

const ITERATIONS: u64 = 20_000_000;
const ROUNDS: usize = 15;

/// Medians over the rounds.
pub struct FuelResult {
    pub fuel_per_ms: f64,
    pub cpu_ms_on: f64,
    pub cpu_ms_off: f64,
}

impl FuelResult {
    pub fn overhead(&self) -> f64 {
        self.cpu_ms_on / self.cpu_ms_off
    }
}

fn worker(state: &Path, consume_fuel: bool) -> Worker {
    let mut options = EngineOptions::new(state.join(if consume_fuel { "fuel" } else { "nofuel" }));
    options.consume_fuel = consume_fuel;
    let engine = IsolaEngine::new(&options).expect("engine");
    let mut run = WorkerRun::default();
    run.limits.cpu_ms = 1_000_000;
    run.limits.wall_ms = 1_000_000;
    let backends = isola_runtime::Backends::embedded(state, 1 << 20).expect("state");
    let component = Path::new(isola_test_programs::LIMITS);
    Worker::load(&engine, "limits", &run, component, &backends).expect("the limits guest loads")
}

/// Run one checksum request; return wall time, CPU time and fuel.
async fn run(worker: &Worker) -> (Duration, Duration, u64) {
    let request = http::Request::get(format!("http://bench/checksum?iters={ITERATIONS}"))
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let started = Instant::now();
    let handled = worker.handle(request, RequestContext::default()).await;
    assert_eq!(handled.response.status(), 200);
    handled.response.into_body().collect().await.unwrap();
    let elapsed = started.elapsed();
    let outcome = handled.outcome.await;
    (elapsed, outcome.cpu, outcome.fuel)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

pub async fn measure(state: &Path) -> FuelResult {
    let fueled = worker(state, true);
    let unfueled = worker(state, false);
    run(&fueled).await;
    run(&unfueled).await;
    let (mut per_ms, mut on, mut off) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let (_, cpu, fuel) = run(&fueled).await;
        per_ms.push(fuel as f64 / (cpu.as_secs_f64() * 1e3));
        on.push(cpu.as_secs_f64() * 1e3);
        off.push(run(&unfueled).await.1.as_secs_f64() * 1e3);
    }
    FuelResult {
        fuel_per_ms: median(per_ms),
        cpu_ms_on: median(on),
        cpu_ms_off: median(off),
    }
}
