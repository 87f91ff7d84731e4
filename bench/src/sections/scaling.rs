//! Scaling: Rust hello on Isola and `wasmtime serve` at 1 to 256
//! connections.

use std::fmt::Write as _;
use std::time::Duration;

use isola_bench::setup::Setup;
use isola_bench::table::fmt_ratio;
use isola_bench::workload::{Workload, measure};

const SCALING: [u32; 4] = [1, 8, 64, 256];

pub fn run(setup: &Setup, duration: Duration, doc: &mut String) {
    eprintln!("scaling…");
    let hello = Workload::hello();
    let scale_duration = duration.min(Duration::from_secs(5));
    let mut scaling = String::from(
        "| connections | Isola req/s | Isola p99 ms | Isola CPU µs/req | `wasmtime serve` req/s | `wasmtime serve` p99 ms | Isola ÷ wasmtime |\n|---|---|---|---|---|---|---|\n",
    );
    {
        let isola = setup.isola("rust-scaling", &setup.rust_guest, "", &setup.rust_state());
        let wasmtime = setup.wasmtime("wasmtime-scaling", false);
        for connections in SCALING {
            eprintln!("  {connections} connections");
            let ours = measure(setup, &isola, &hello, connections, scale_duration);
            let theirs = wasmtime
                .as_ref()
                .map(|w| measure(setup, w, &hello, connections, scale_duration));
            writeln!(
                scaling,
                "| {connections} | {:.0} | {:.2} | {:.0} | {} | {} | {} |",
                ours.rps,
                ours.p99_ms,
                ours.cpu_us_per_request,
                theirs
                    .as_ref()
                    .map_or("—".into(), |t| format!("{:.0}", t.rps)),
                theirs
                    .as_ref()
                    .map_or("—".into(), |t| format!("{:.2}", t.p99_ms)),
                theirs
                    .as_ref()
                    .map_or("—".into(), |t| fmt_ratio(ours.rps, t.rps)),
            )
            .unwrap();
        }
    }
    writeln!(
        doc,
        "## Scaling, Rust hello, {}s per step\n\n{scaling}",
        scale_duration.as_secs()
    )
    .unwrap();
}
