//! Per-request cost through the embedding API (no sockets): a fresh
//! instance, the handler, and the store's drop, for the Rust hello guest.
//!
//! `cargo run --release -p isola-bench --bin instantiate [REQUESTS]`

use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use isola_config::WorkerConfig;
use isola_engine::{EngineOptions, IsolaEngine};
use isola_runtime::{RequestStats, Worker};

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let requests: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let state = tempfile::tempdir().unwrap();
    let engine = IsolaEngine::new(&EngineOptions::new(state.path().join("cache"))).unwrap();
    let config = WorkerConfig::new("hello", isola_test_programs::EXAMPLE_HELLO);
    let backends = isola_runtime::Backends::embedded(state.path(), 1 << 20).unwrap();
    let worker = Worker::load(&engine, &config, &backends).unwrap();

    let mut walls = Vec::with_capacity(requests);
    let mut cpus = Vec::with_capacity(requests);
    for i in 0..requests + 200 {
        let request = http::Request::get("http://bench/")
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let started = Instant::now();
        let response = worker.handle(request).await;
        let stats = response
            .extensions()
            .get::<RequestStats>()
            .cloned()
            .unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let elapsed = started.elapsed();
        assert_eq!(&body[..], b"Hello from Isola!\n");
        // Let the guest task finish (store drop) before the next request.
        while worker.active_tasks() > 0 {
            tokio::task::yield_now().await;
        }
        if i >= 200 {
            walls.push(elapsed);
            cpus.push(stats.cpu_time());
        }
    }
    walls.sort();
    cpus.sort();
    println!("| hello, {requests} requests, one at a time | p50 µs | p99 µs |");
    println!("|---|---|---|");
    println!(
        "| request to full body (wall) | {:.1} | {:.1} |",
        percentile(&walls, 0.5),
        percentile(&walls, 0.99)
    );
    println!(
        "| guest CPU time (instantiate + handle + drop) | {:.1} | {:.1} |",
        percentile(&cpus, 0.5),
        percentile(&cpus, 0.99)
    );
}
