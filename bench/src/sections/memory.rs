//! Memory per in-flight instance: a thousand requests held in flight at
//! once, RSS and PSS before and at their peak.

use std::fmt::Write as _;
use std::time::Duration;

use isola_bench::load;
use isola_bench::setup::Setup;
use isola_bench::table::MIB;
use isola_bench::workload::{Workload, measure_with_pss};

const SLOW_REQUESTS: u32 = 1000;

/// What the targets read from this section.
pub struct Memory {
    /// RSS and PSS per in-flight instance, KiB: Rust, then JS.
    pub per_instance: [(f64, f64); 2],
}

pub fn run(setup: &Setup, duration: Duration, doc: &mut String) -> Memory {
    eprintln!("memory…");
    let mut memory = format!(
        "{SLOW_REQUESTS} connections each keeping one `GET /sleep?ms=1000` in flight; bytes per \
         instance = (peak RSS − RSS before) ÷ {SLOW_REQUESTS}. RSS counts a page shared by \
         several mappings once per mapping: every instance maps its component's memory image \
         from the compile cache, and the image pages it reads count again for each instance. \
         PSS (`smaps_rollup`, sampled every 250 ms) counts them once in all, so its figure \
         per instance is the memory an instance really adds.\n\n\
         | guest | RSS before MiB | peak RSS MiB | RSS per in-flight instance KiB | PSS per in-flight instance KiB | req/s (≈ in flight ÷ 1 s) |\n|---|---|---|---|---|---|\n"
    );
    let sleep = Workload {
        name: "sleep",
        path: "/sleep?ms=1000",
        script: None,
        expect: "slept",
    };
    // RSS and PSS per in-flight instance, KiB.
    let mut per_instance = [(f64::NAN, f64::NAN); 2];
    for (i, (name, component, extra)) in setup.isola_guests().into_iter().enumerate() {
        let server = setup.isola(
            &format!("memory-{name}"),
            component,
            extra,
            &setup.work.path().join(format!("isola-memory-{name}")),
        );
        let (before, pss_before) = (server.rss(), load::pss(server.pid()));
        let result = measure_with_pss(
            setup,
            &server,
            &sleep,
            SLOW_REQUESTS,
            Duration::from_secs(4).min(duration),
            true,
        );
        let bytes = result.peak_rss_bytes.saturating_sub(before) as f64 / f64::from(SLOW_REQUESTS);
        let pss_bytes = result
            .peak_pss_bytes
            .unwrap_or(0)
            .saturating_sub(pss_before) as f64
            / f64::from(SLOW_REQUESTS);
        per_instance[i] = (bytes / 1024.0, pss_bytes / 1024.0);
        writeln!(
            memory,
            "| {name} | {:.1} | {:.1} | {:.0} | {:.0} | {:.0} |",
            before as f64 / MIB,
            result.peak_rss_bytes as f64 / MIB,
            bytes / 1024.0,
            pss_bytes / 1024.0,
            result.rps
        )
        .unwrap();
    }
    writeln!(doc, "## Memory\n\n{memory}").unwrap();
    Memory { per_instance }
}
