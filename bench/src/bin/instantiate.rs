//! Per-request cost through the embedding API (no sockets): a fresh
//! instance, the handler, and the store's drop, for the Rust hello guest.
//!
//! `cargo run --release -p isola-bench --bin instantiate [REQUESTS]`

use isola_bench::percentile;
use isola_config::WorkerConfig;
use isola_engine::{EngineOptions, IsolaEngine};
use isola_runtime::Worker;

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

    let (walls, cpus) = isola_bench::one_at_a_time(&worker, 200, requests, |status, body| {
        assert_eq!((status.as_u16(), body), (200, &b"Hello from Isola!\n"[..]));
    })
    .await;
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
