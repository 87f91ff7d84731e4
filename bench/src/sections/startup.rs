//! Start-up: process start to first 200, with an empty compile cache and
//! a warm one; `wasmtime serve` and workerd beside.

use std::fmt::Write as _;
use std::time::Duration;

use isola_bench::setup::Setup;
use isola_bench::table::MIB;

/// What the targets read from this section.
pub struct Startup {
    /// Start to first 200 with a warm cache, ms: Rust, then JS.
    pub start_ms: [f64; 2],
    /// RSS once the first response is out, after a warm start: the idle
    /// footprint of a server that did not have to compile. Rust, then JS.
    pub warm_idle_rss: [u64; 2],
}

pub fn run(setup: &Setup, doc: &mut String) -> Startup {
    eprintln!("start-up…");
    let mut startup = String::from(
        "| server | guest | compile cache | start to first 200 ms | RSS then MiB |\n|---|---|---|---|---|\n",
    );
    let mut start_ms = [f64::NAN; 2];
    let mut warm_idle_rss = [0u64; 2];
    for (i, (guest, component, extra)) in setup.isola_guests().into_iter().enumerate() {
        let state = setup.work.path().join(format!("isola-start-{guest}"));
        // The cold server keeps running while the warm ones start.
        let cold = setup.isola(&format!("start-{guest}"), component, extra, &state);
        let (cold, cold_rss) = (cold.started_in, cold.rss());
        let (mut warm, mut warm_rss): (Vec<Duration>, Vec<u64>) = (0..5)
            .map(|_| {
                let server = setup.isola(&format!("start-{guest}"), component, extra, &state);
                (server.started_in, server.rss())
            })
            .unzip();
        warm.sort();
        warm_rss.sort();
        warm_idle_rss[i] = warm_rss[warm_rss.len() / 2];
        let warm = warm[warm.len() / 2];
        start_ms[i] = warm.as_secs_f64() * 1e3;
        writeln!(
            startup,
            "| isola | {guest} | empty | {:.1} | {:.1} |",
            cold.as_secs_f64() * 1e3,
            cold_rss as f64 / MIB
        )
        .unwrap();
        writeln!(
            startup,
            "| isola | {guest} | warm (median of 5) | {:.1} | {:.1} |",
            warm.as_secs_f64() * 1e3,
            warm_idle_rss[i] as f64 / MIB
        )
        .unwrap();
    }
    if let Some(w) = setup.wasmtime("wasmtime-start", false) {
        writeln!(
            startup,
            "| `wasmtime serve` | Rust | its default cache, warm | {:.1} | {:.1} |",
            w.started_in.as_secs_f64() * 1e3,
            w.rss() as f64 / MIB
        )
        .unwrap();
    }
    if let Some(w) = setup.workerd() {
        writeln!(
            startup,
            "| workerd | JS | — | {:.1} | {:.1} |",
            w.started_in.as_secs_f64() * 1e3,
            w.rss() as f64 / MIB
        )
        .unwrap();
    }
    writeln!(doc, "## Start-up\n\n{startup}").unwrap();
    Startup {
        start_ms,
        warm_idle_rss,
    }
}
