//! JavaScript workers: what building, compiling and serving one costs.
//!
//! `cargo build --release -p isola && cargo run --release -p isola-bench --bin js [REQUESTS]`
//!
//! Prints one table: component size and `isola build` time (a cold build:
//! the worker gets a unique marker so the build cache cannot answer), the
//! Cranelift compile of the first JS component into an empty cache and of a
//! second, different one (which reuses the first one's functions through
//! the incremental cache), and the per-request cost through the embedding
//! API (no sockets) with a fresh instance per request. (`instance_reuse` is
//! refused for JS workers: StarlingMonkey serves one fetch event per
//! instance.)

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use isola_bench::percentile;
use isola_config::WorkerConfig;
use isola_engine::{EngineOptions, IsolaEngine};
use isola_runtime::Worker;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Build `main` with a unique marker appended (a cold build), into `out`.
fn cold_build(isola: &Path, main: &Path, work: &Path, out: &Path) -> Duration {
    let source = std::fs::read_to_string(main).unwrap();
    let nonce = format!(
        "{:?}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
    );
    let copy = main.with_file_name(format!("bench-{}.js", std::process::id()));
    std::fs::write(
        &copy,
        format!("{source}\nglobalThis.__isolaBenchBuild = {nonce:?};\n"),
    )
    .unwrap();
    let started = Instant::now();
    let output = Command::new(isola)
        .arg("build")
        .arg(&copy)
        .arg("-o")
        .arg(out)
        .current_dir(work)
        .output()
        .expect("running isola build");
    let elapsed = started.elapsed();
    let _ = std::fs::remove_file(&copy);
    assert!(
        output.status.success(),
        "isola build failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    elapsed
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let requests: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000);
    let isola = std::env::var_os("ISOLA_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/release/isola"));
    assert!(
        isola.is_file(),
        "{} not found: `cargo build --release -p isola` first (or set ISOLA_BIN)",
        isola.display()
    );
    let work = tempfile::tempdir().unwrap();
    let hello = work.path().join("hello.wasm");
    let second = work.path().join("page-views.wasm");
    let build = cold_build(
        &isola,
        &repo().join("guest-examples/js/hello/worker.js"),
        work.path(),
        &hello,
    );
    cold_build(
        &isola,
        &repo().join("guest-examples/js/page-views/worker.js"),
        work.path(),
        &second,
    );
    let size = std::fs::metadata(&hello).unwrap().len();

    let engine = IsolaEngine::new(&EngineOptions::new(work.path().join("cache"))).unwrap();
    let started = Instant::now();
    engine.load_component(&hello).unwrap();
    let first_compile = started.elapsed();
    let started = Instant::now();
    engine.load_component(&second).unwrap();
    let second_compile = started.elapsed();

    let backends = isola_runtime::Backends::embedded(work.path(), 1 << 20).unwrap();
    let config = WorkerConfig::new("hello-js", &hello);
    let fresh = Worker::load(&engine, &config, &backends).unwrap();
    let (walls, cpus) = isola_bench::one_at_a_time(&fresh, 100, requests, |status, body| {
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(body));
    })
    .await;

    println!("| JS hello (componentize-js 0.23.0) | value |");
    println!("|---|---|");
    println!("| component size | {:.1} MB |", size as f64 / 1e6);
    println!("| `isola build` (cold) | {:.1} s |", build.as_secs_f64());
    println!(
        "| compile, first JS worker (empty cache) | {:.2} s |",
        first_compile.as_secs_f64()
    );
    println!(
        "| compile, second JS worker (incremental cache) | {:.2} s ({:.0}% of the first) |",
        second_compile.as_secs_f64(),
        100.0 * second_compile.as_secs_f64() / first_compile.as_secs_f64()
    );
    println!();
    println!("| {requests} requests, one at a time, fresh instance each | p50 µs | p99 µs |");
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
