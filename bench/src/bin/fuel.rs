//! Fuel calibration and fuel overhead, through the embedding API.
//!
//! `cargo run -p isola-bench --bin fuel` (guest code is compiled by
//! Cranelift the same way in every profile, so the dev profile measures the
//! same fuel rate; `--release` only trims host overhead)
//!
//! 1. Calibration: a compute-bound guest (the `limits` test guest's
//!    `/checksum` loop) runs with fuel on; fuel consumed ÷ thread CPU time
//!    gives fuel per millisecond, the figure behind `DEFAULT_FUEL_PER_MS`.
//! 2. Overhead: the same requests on an engine with fuel off, interleaved
//!    with fuel on, in one run; the ratio of medians is fuel's cost.

use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use isola_config::WorkerConfig;
use isola_engine::{EngineOptions, IsolaEngine};
use isola_runtime::{RequestStats, Worker};

const ITERATIONS: u64 = 20_000_000;
const ROUNDS: usize = 15;

fn worker(state: &std::path::Path, consume_fuel: bool) -> Worker {
    let mut options = EngineOptions::new(state.join(if consume_fuel { "fuel" } else { "nofuel" }));
    options.consume_fuel = consume_fuel;
    let engine = IsolaEngine::new(&options).expect("engine");
    let mut config = WorkerConfig::new("limits", isola_test_programs::LIMITS);
    config.limits.cpu_ms = 1_000_000;
    config.limits.wall_ms = 1_000_000;
    let backends = isola_runtime::Backends::embedded(state, 1 << 20).expect("state");
    Worker::load(&engine, &config, &backends).expect("the limits guest loads")
}

/// Run one checksum request; return wall time, CPU time and fuel.
async fn run(worker: &Worker) -> (Duration, Duration, u64) {
    let request = http::Request::get(format!("http://bench/checksum?iters={ITERATIONS}"))
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let started = Instant::now();
    let response = worker.handle(request).await;
    assert_eq!(response.status(), 200);
    let stats = response
        .extensions()
        .get::<RequestStats>()
        .cloned()
        .unwrap();
    response.into_body().collect().await.unwrap();
    // The guest task records its totals as it ends, just after the body.
    tokio::time::sleep(Duration::from_millis(5)).await;
    (started.elapsed(), stats.cpu_time(), stats.fuel_used())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let state = tempfile::tempdir().unwrap();
    let fueled = worker(state.path(), true);
    let unfueled = worker(state.path(), false);
    run(&fueled).await;
    run(&unfueled).await;

    let (mut per_ms, mut on, mut off) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let (wall, cpu, fuel) = run(&fueled).await;
        per_ms.push(fuel as f64 / (cpu.as_secs_f64() * 1e3));
        on.push(wall.as_secs_f64() * 1e3);
        off.push(run(&unfueled).await.0.as_secs_f64() * 1e3);
    }
    let (per_ms, on, off) = (median(per_ms), median(on), median(off));
    println!("| measure | value |");
    println!("|---|---|");
    println!("| checksum loop, {ITERATIONS} iterations, median of {ROUNDS} | |");
    println!("| fuel per CPU-millisecond (calibration) | {per_ms:.0} |");
    println!(
        "| DEFAULT_FUEL_PER_MS in isola-runtime | {} |",
        isola_runtime::DEFAULT_FUEL_PER_MS
    );
    println!("| wall ms, fuel on | {on:.2} |");
    println!("| wall ms, fuel off | {off:.2} |");
    println!(
        "| fuel overhead (on / off) | {:.3}x (target <= 1.25x) |",
        on / off
    );
}
