//! Through the embedding API, no sockets: per-request cost one request at
//! a time (Rust, JS, JS with `instance_reuse`), what loading and compiling
//! a component costs, and fuel's cost.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use isola_bench::fuel::{self, FuelResult};
use isola_bench::micro::{self, LoadTimes, Samples};
use isola_bench::plugin;
use isola_bench::setup::{Setup, build_js};
use isola_bench::workload::HELLO;

/// What the targets read from this section.
pub struct Embedding {
    pub rust: Samples,
    pub js: Samples,
    pub fuel: FuelResult,
}

/// The per-request samples and fuel's figures, measured in that order on
/// one runtime.
struct PerRequest {
    rust: Samples,
    js: Samples,
    js_reuse: Samples,
    /// A custom-world plugin call, wall time: instantiate + call + drop.
    plugin: Vec<Duration>,
    fuel: FuelResult,
}

/// The JS toolchain: a cold `isola build`, then two different JS
/// components compiled by one engine.
struct Toolchain {
    js_build: Duration,
    first_compile: Duration,
    second_compile: Duration,
}

pub fn run(setup: &Setup, requests: usize, doc: &mut String) -> Embedding {
    eprintln!("embedding API…");
    // One runtime for the per-request part, alive until the section ends.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let micro_dir = setup.work.path().join("micro");
    let per_request = per_request(&runtime, setup, requests, &micro_dir);
    let rust_load: LoadTimes = micro::load_times(&setup.rust_guest, &micro_dir);
    let js_load: LoadTimes = micro::load_times(&setup.js_guest, &micro_dir);
    let toolchain = toolchain(setup, &micro_dir);
    write_micro(&per_request, requests, doc);
    write_loading(setup, &rust_load, &js_load, &toolchain, doc);
    write_fuel(&per_request.fuel, doc);
    Embedding {
        rust: per_request.rust,
        js: per_request.js,
        fuel: per_request.fuel,
    }
}

fn per_request(
    runtime: &tokio::runtime::Runtime,
    setup: &Setup,
    requests: usize,
    micro_dir: &Path,
) -> PerRequest {
    runtime.block_on(async {
        let rust = micro::worker(&setup.rust_guest, "hello", &micro_dir.join("rust"), 0);
        let rust = micro::one_at_a_time(&rust, 500, requests, |status, body| {
            assert_eq!((status.as_u16(), body), (200, HELLO.as_bytes()));
        })
        .await;
        let js_hello = |status: http::StatusCode, body: &[u8]| {
            assert_eq!((status.as_u16(), body), (200, HELLO.as_bytes()));
        };
        let js = micro::worker(&setup.js_guest, "hello-js", &micro_dir.join("js"), 0);
        let js = micro::one_at_a_time(&js, 200, requests, js_hello).await;
        let reuse = micro::worker(
            &setup.js_reuse_guest,
            "hello-js-reuse",
            &micro_dir.join("js"),
            u32::MAX,
        );
        let js_reuse = micro::one_at_a_time(&reuse, 200, requests, js_hello).await;
        let plugin = plugin::per_call(&micro_dir.join("plugin"), 500, requests).await;
        let fuel = fuel::measure(&micro_dir.join("fuel")).await;
        PerRequest {
            rust,
            js,
            js_reuse,
            plugin,
            fuel,
        }
    })
}

fn toolchain(setup: &Setup, micro_dir: &Path) -> Toolchain {
    // A second, different JS component compiled by the same engine right
    // after the first: the incremental cache supplies the shared engine.
    let marked = [micro_dir.join("first.wasm"), micro_dir.join("second.wasm")];
    let cold_build =
        |out: &Path, marker| build_js(&setup.isola, &setup.js_main, out, marker, false);
    let js_build = cold_build(&marked[0], Some("first"));
    cold_build(&marked[1], Some("second"));
    let engine = isola_runtime::IsolaEngine::new(&isola_runtime::EngineOptions::new(
        micro_dir.join("second-cache"),
    ))
    .expect("engine");
    let started = Instant::now();
    engine.load_component(&marked[0]).expect("compiling");
    let first_compile = started.elapsed();
    let started = Instant::now();
    engine.load_component(&marked[1]).expect("compiling");
    Toolchain {
        js_build,
        first_compile,
        second_compile: started.elapsed(),
    }
}

fn micro_table(name: &str, samples: &Samples, requests: usize) -> String {
    let mut out =
        format!("| {name}, {requests} requests one at a time | p50 µs | p99 µs |\n|---|---|---|\n");
    for (what, p50, p99) in samples.rows() {
        writeln!(out, "| {what} | {p50:.1} | {p99:.1} |").unwrap();
    }
    out
}

fn write_micro(per_request: &PerRequest, requests: usize, doc: &mut String) {
    writeln!(
        doc,
        "## Through the embedding API (no sockets)\n\n{}\n{}\n{}",
        micro_table(
            "Rust hello, fresh instance each",
            &per_request.rust,
            requests
        ),
        micro_table("JS hello, fresh instance each", &per_request.js, requests),
        micro_table(
            "JS hello, `instance_reuse` (no instantiate on a reused instance)",
            &per_request.js_reuse,
            requests
        )
    )
    .unwrap();
    let calls = &per_request.plugin;
    writeln!(
        doc,
        "| plugin of a custom WIT world (`examples/plugin-host`), {} calls | p50 µs | p99 µs |\n|---|---|---|\n\
         | instantiate + call + drop (wall, one call at a time) | {:.1} | {:.1} |\n",
        calls.len(),
        isola_bench::percentile(calls, 0.5),
        isola_bench::percentile(calls, 0.99),
    )
    .unwrap();
}

fn write_loading(
    setup: &Setup,
    rust_load: &LoadTimes,
    js_load: &LoadTimes,
    toolchain: &Toolchain,
    doc: &mut String,
) {
    let js_size = std::fs::metadata(&setup.js_guest).map_or(0, |m| m.len());
    let rust_size = std::fs::metadata(&setup.rust_guest).map_or(0, |m| m.len());
    let (first, second) = (toolchain.first_compile, toolchain.second_compile);
    writeln!(
        doc,
        "| component | size | cold compile | load from the compile cache (median of 7) |\n|---|---|---|---|\n\
         | Rust hello | {:.0} KB | {:.0} ms | {:.2} ms |\n\
         | JS hello | {:.1} MB | {:.2} s | {:.2} ms |\n\n\
         | JS toolchain | value |\n|---|---|\n\
         | `isola build worker.js`, cold (esbuild + componentize-js) | {:.1} s |\n\
         | compile, first JS worker (empty cache) | {:.2} s |\n\
         | compile, second JS worker (incremental cache) | {:.2} s ({:.0}% of the first) |\n",
        rust_size as f64 / 1e3,
        rust_load.cold_compile.as_secs_f64() * 1e3,
        rust_load.from_cache.as_secs_f64() * 1e3,
        js_size as f64 / 1e6,
        js_load.cold_compile.as_secs_f64(),
        js_load.from_cache.as_secs_f64() * 1e3,
        toolchain.js_build.as_secs_f64(),
        first.as_secs_f64(),
        second.as_secs_f64(),
        100.0 * second.as_secs_f64() / first.as_secs_f64()
    )
    .unwrap();
}

fn write_fuel(fuel: &FuelResult, doc: &mut String) {
    writeln!(
        doc,
        "## Fuel\n\n| measure | value |\n|---|---|\n\
         | fuel per CPU-millisecond (calibration; `DEFAULT_FUEL_PER_MS` is {}) | {:.0} |\n\
         | 20M-step checksum, CPU ms, fuel on / off | {:.2} / {:.2} |\n\
         | fuel overhead | {:.3}× |\n",
        isola_runtime::DEFAULT_FUEL_PER_MS,
        fuel.fuel_per_ms,
        fuel.cpu_ms_on,
        fuel.cpu_ms_off,
        fuel.overhead()
    )
    .unwrap();
}
