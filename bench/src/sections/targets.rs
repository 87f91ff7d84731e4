//! The targets, met or not, from the figures every other section measured.

use std::fmt::Write as _;

use isola_bench::percentile;
use isola_bench::table::{MIB, result_of};
use isola_bench::workload::CONNECTIONS;

use super::embedding::Embedding;
use super::js::Js;
use super::memory::Memory;
use super::side_by_side::Rust;
use super::startup::Startup;

/// A target line: what, the figure, met or not.
struct Target {
    what: String,
    figure: String,
    met: Option<bool>,
}

fn target(what: impl Into<String>, figure: impl Into<String>, met: Option<bool>) -> Target {
    Target {
        what: what.into(),
        figure: figure.into(),
        met,
    }
}

/// Met when the median paired `ours ÷ peer` reaches `goal`; not measured
/// without the peer.
fn ratio_target(title: String, ratio: Option<f64>, goal: f64, missing: &str) -> Target {
    match ratio {
        Some(ratio) => target(title, format!("{ratio:.2}×"), Some(ratio >= goal)),
        None => target(title, missing, None),
    }
}

/// Appends the targets table to `doc`.
pub fn write(
    rust: &Rust,
    js: &Js,
    memory: &Memory,
    startup: &Startup,
    embedding: &Embedding,
    doc: &mut String,
) {
    let mut targets = rust_targets(rust, embedding);
    targets.extend(js_targets(js, embedding));
    targets.extend(footprint_targets(rust, js, memory, startup));
    targets.push(target(
        "fuel overhead ≤ 1.25×",
        format!("{:.3}×", embedding.fuel.overhead()),
        Some(embedding.fuel.overhead() <= 1.25),
    ));
    let mut summary = String::from("| target | this run | |\n|---|---|---|\n");
    for t in &targets {
        let verdict = match t.met {
            Some(true) => "met",
            Some(false) => "**not met**",
            None => "not measured",
        };
        writeln!(summary, "| {} | {} | {verdict} |", t.what, t.figure).unwrap();
    }
    write!(doc, "## Targets\n\n{summary}").unwrap();
}

/// Rust hello beside its peers, the server's CPU and p99, and the
/// embedding API's instantiate and per-request cost.
fn rust_targets(rust: &Rust, embedding: &Embedding) -> Vec<Target> {
    let isola_hello_result = result_of(&rust.rows, "hello", "isola");
    let isola_cpu = isola_hello_result.map_or(f64::NAN, |r| r.cpu_us_per_request);
    let p99_at_32 = isola_hello_result.map_or(f64::NAN, |r| r.p99_ms);
    let rust_vs = |peer: &str, goal: f64, what: &str| {
        ratio_target(
            format!("Rust hello rps ≥ {goal}× {what}"),
            rust.hello
                .paired_ratios("isola", peer)
                .map(|(_, median)| median),
            goal,
            "peer not installed",
        )
    };
    let rust_inst = percentile(&embedding.rust.instantiate, 0.5);
    let rust_total = percentile(&embedding.rust.guest_cpu, 0.5);
    vec![
        rust_vs("wasmtime serve", 2.0, "`wasmtime serve` (fresh)"),
        rust_vs("wasmtime serve, reuse", 0.9, "`wasmtime serve` (reuse)"),
        rust_vs("native hyper", 0.6, "native hyper"),
        target(
            "server CPU per request, Rust hello ≤ 60 µs",
            format!("{isola_cpu:.0} µs"),
            Some(isola_cpu <= 60.0),
        ),
        target(
            "instantiate p50 ≤ 10 µs (embedding API)",
            format!("{rust_inst:.1} µs"),
            Some(rust_inst <= 10.0),
        ),
        target(
            "instantiate + handle + drop p50 ≤ 40 µs",
            format!("{rust_total:.1} µs"),
            Some(rust_total <= 40.0),
        ),
        target(
            format!("p99, Rust hello at {CONNECTIONS} connections ≤ 10 ms"),
            format!("{p99_at_32:.2} ms"),
            Some(p99_at_32 <= 10.0),
        ),
    ]
}

/// JS hello beside workerd, and the embedding API's JS per-request cost.
fn js_targets(js: &Js, embedding: &Embedding) -> Vec<Target> {
    let js_vs_workerd = |ours: &str| {
        js.hello
            .paired_ratios(ours, "workerd")
            .map(|(_, median)| median)
    };
    let js_total = percentile(&embedding.js.guest_cpu, 0.5);
    let js_before_drop = percentile(&embedding.js.before_drop, 0.5);
    vec![
        ratio_target(
            "JS hello rps, fresh instances ≥ 0.5× workerd".into(),
            js_vs_workerd("isola"),
            0.5,
            "workerd not installed",
        ),
        ratio_target(
            "JS hello rps with `instance_reuse` ≥ 1.5× workerd".into(),
            js_vs_workerd("isola, instance_reuse"),
            1.5,
            "workerd not installed",
        ),
        target(
            "JS instantiate + handle p50 ≤ 200 µs",
            format!(
                "{js_before_drop:.0} µs ({js_total:.0} µs with the store drop after the response)"
            ),
            Some(js_before_drop <= 200.0),
        ),
    ]
}

/// Start-up time and memory: per in-flight instance and idle.
fn footprint_targets(rust: &Rust, js: &Js, memory: &Memory, startup: &Startup) -> Vec<Target> {
    let start_ms = startup.start_ms;
    let warm_idle_rss = startup.warm_idle_rss;
    let per_instance = memory.per_instance;
    vec![
        target(
            "start to first 200, warm cache, Rust ≤ 15 ms",
            format!("{:.1} ms", start_ms[0]),
            Some(start_ms[0] <= 15.0),
        ),
        target(
            "start to first 200, warm cache, JS ≤ 50 ms",
            format!("{:.1} ms", start_ms[1]),
            Some(start_ms[1] <= 50.0),
        ),
        target(
            "RSS per in-flight Rust instance ≤ 256 KiB",
            format!(
                "{:.0} KiB (PSS {:.0} KiB)",
                per_instance[0].0, per_instance[0].1
            ),
            Some(per_instance[0].0 <= 256.0),
        ),
        target(
            "RSS per in-flight JS instance ≤ 4 MiB",
            format!(
                "{:.0} KiB (PSS {:.0} KiB)",
                per_instance[1].0, per_instance[1].1
            ),
            Some(per_instance[1].0 <= 4096.0),
        ),
        // Judged on the Rust server started with a warm cache; the JS
        // server's idle footprint is mostly the JS engine's image.
        target(
            "idle RSS ≤ 30 MiB (Rust, warm start)",
            format!(
                "{:.1} MiB; JS {:.1} MiB; after compiling at start: Rust {:.1} MiB, JS {:.1} MiB",
                warm_idle_rss[0] as f64 / MIB,
                warm_idle_rss[1] as f64 / MIB,
                rust.idle_rss as f64 / MIB,
                js.idle_rss as f64 / MIB
            ),
            Some(warm_idle_rss[0] as f64 <= 30.0 * MIB),
        ),
    ]
}
