//! The header: machine, versions, command.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use isola_bench::setup::{Setup, version};
use isola_bench::workload::CONNECTIONS;

pub fn write(setup: &Setup, duration: Duration, doc: &mut String) {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    writeln!(doc, "# Isola benchmark results\n").unwrap();
    writeln!(
        doc,
        "Regenerate with `bench/run` (this file is its output). Figures are from one run on one \
         machine; only ratios within the run mean much.\n"
    )
    .unwrap();
    writeln!(
        doc,
        "- machine: {cores} cores, {cpu_model}, Linux {}",
        version(Path::new("uname"), "-r")
    )
    .unwrap();
    writeln!(
        doc,
        "- isola: {} (`{}`; `bench/run` builds it with the `dist` profile, fat LTO)",
        version(&setup.isola, "--version"),
        setup.isola.display()
    )
    .unwrap();
    match &setup.wasmtime {
        Some(w) => writeln!(doc, "- {}", version(w, "--version")).unwrap(),
        None => writeln!(
            doc,
            "- wasmtime: not installed (WASMTIME_BIN), its rows are missing"
        )
        .unwrap(),
    }
    match &setup.workerd {
        Some(w) => writeln!(doc, "- {}", version(w, "--version")).unwrap(),
        None => writeln!(
            doc,
            "- workerd: not installed (WORKERD_BIN), its rows are missing"
        )
        .unwrap(),
    }
    writeln!(doc, "- {}", version(&setup.wrk, "-v")).unwrap();
    writeln!(
        doc,
        "- load: `wrk -t1 -c{CONNECTIONS} -d{}s --latency` after a 1 s warm-up; {}",
        duration.as_secs(),
        if setup.pin {
            "server pinned to core 0 and wrk to core 1 (`taskset`)"
        } else {
            "no pinning (`taskset` or a second core missing)"
        }
    )
    .unwrap();
    writeln!(
        doc,
        "- guests: the Rust `wasi:http/proxy` component `crates/test-programs/guests/bench` (served \
         unchanged by Isola and `wasmtime serve -S cli=y`); the JS worker `bench/workers/worker.js` \
         (built by `isola build`, and run from source by workerd). Isola gives every request a fresh \
         instance unless a row says `instance_reuse`.\n"
    )
    .unwrap();
}
