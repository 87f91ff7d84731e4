//! Only the embedding-API part of the benchmark, for quick iterations on
//! the per-request path: the Rust bench guest's hello, one request at a
//! time, fresh instance each; and a JS component's when given, plus one
//! built with `isola build --instance-reuse` served with `instance_reuse`.
//!
//! `cargo run --release -p isola-bench --bin micro [REQUESTS] [JS.wasm [JS-REUSE.wasm]]`
//!
//! `MICRO_ONLY="JS hello"` (a table's name) runs that one alone, for
//! profiling; `MICRO_ONLY=fuel` runs only the fuel calibration and overhead;
//! `MICRO_ONLY=plugin` only the custom-world plugin call;
//! `MICRO_ONLY=profiling` what per-request profiling costs.

use std::path::Path;

use isola_bench::micro;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let requests: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(10_000);
    let js = args.next();
    let js_reuse = args.next();
    // `MICRO_WORK=dir` keeps the compile cache between runs (for profiling
    // the requests alone).
    let temp = tempfile::tempdir().unwrap();
    let work = std::env::var_os("MICRO_WORK").map_or_else(|| temp.path().to_owned(), Into::into);
    let mut guests = vec![("Rust hello", isola_test_programs::BENCH.to_owned(), 0)];
    guests.extend(js.map(|js| ("JS hello", js, 0)));
    guests.extend(js_reuse.map(|js| ("JS hello, instance_reuse", js, u32::MAX)));
    let only = std::env::var("MICRO_ONLY").ok();
    if only.as_deref() == Some("plugin") {
        let calls =
            isola_bench::plugin::per_call(&work.join("plugin"), requests / 20, requests).await;
        println!(
            "| plugin call (custom world), {requests} calls | p50 µs | p99 µs |\n|---|---|---|\n\
             | instantiate + call + drop (wall) | {:.1} | {:.1} |",
            isola_bench::percentile(&calls, 0.5),
            isola_bench::percentile(&calls, 0.99)
        );
        return;
    }
    if only.as_deref() == Some("profiling") {
        let (rows, samples) =
            isola_bench::profiling::compare(&work.join("profiling"), requests).await;
        println!(
            "| Rust hello, {requests} requests per case | guest CPU p50 µs | p99 µs | wall p50 µs |\n|---|---|---|---|"
        );
        for (case, p50, p99, wall) in rows {
            println!("| {case} | {p50:.1} | {p99:.1} | {wall:.1} |");
        }
        println!("samples per profiled request: {samples:.1}");
        return;
    }
    if only.as_deref() == Some("fuel") {
        let fuel = isola_bench::fuel::measure(&work.join("fuel")).await;
        println!(
            "fuel per CPU-ms {:.0}; CPU ms on / off {:.2} / {:.2}; overhead {:.3}x",
            fuel.fuel_per_ms,
            fuel.cpu_ms_on,
            fuel.cpu_ms_off,
            fuel.overhead()
        );
        return;
    }
    for (name, component, reuse) in guests {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let worker = micro::worker(Path::new(&component), "hello", &work.join(name), reuse);
        let samples = micro::one_at_a_time(&worker, requests / 20, requests, |status, body| {
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(body));
        })
        .await;
        println!("| {name}, {requests} requests | p50 µs | p99 µs |\n|---|---|---|");
        for (what, p50, p99) in samples.rows() {
            println!("| {what} | {p50:.1} | {p99:.1} |");
        }
    }
}
