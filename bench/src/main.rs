//! Isola's benchmark, all of it in one run: Isola beside `wasmtime serve`
//! (fresh and reused instances), workerd and a native hyper server under
//! `wrk`; scaling and memory; start-up; per-request cost through the
//! embedding API; fuel's cost; and the targets, met or not. Every ratio
//! compares figures from this one run.
//!
//! `bench/run` installs the peers and builds everything, then runs this:
//! `isola-bench [--duration SECS] [--quick] [--out bench/RESULTS.md]`.
//! Peers it cannot find (`WASMTIME_BIN`, `WORKERD_BIN` unset or missing)
//! are left out of the tables, and their targets say so.

use std::path::PathBuf;
use std::time::Duration;

use isola_bench::setup::{Setup, repo};

mod sections;

use sections::{embedding, header, js, memory, scaling, side_by_side, startup, targets};

struct Options {
    duration: Duration,
    micro_requests: usize,
    out: PathBuf,
}

fn options() -> Options {
    let mut options = Options {
        duration: Duration::from_secs(10),
        micro_requests: 10_000,
        out: repo().join("bench/RESULTS.md"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--duration" => {
                let secs = args.next().and_then(|s| s.parse().ok());
                options.duration = Duration::from_secs(secs.expect("--duration SECS"));
            }
            "--quick" => {
                options.duration = Duration::from_secs(3);
                options.micro_requests = 2_000;
            }
            "--out" => options.out = PathBuf::from(args.next().expect("--out PATH")),
            other => panic!("unknown argument {other}; see the comment atop bench/src/main.rs"),
        }
    }
    options
}

fn main() {
    let options = options();
    let setup = Setup::prepare();
    let duration = options.duration;
    let mut doc = String::new();
    header::write(&setup, duration, &mut doc);
    let rust = side_by_side::run(&setup, duration, &mut doc);
    let js = js::run(&setup, duration, &mut doc);
    scaling::run(&setup, duration, &mut doc);
    let memory = memory::run(&setup, duration, &mut doc);
    let startup = startup::run(&setup, &mut doc);
    let embedding = embedding::run(&setup, options.micro_requests, &mut doc);
    targets::write(&rust, &js, &memory, &startup, &embedding, &mut doc);
    print!("{doc}");
    let previous = std::fs::read_to_string(&options.out).unwrap_or_default();
    // Keep any hand-written analysis below the generated part.
    let analysis = previous
        .find("\n## Analysis")
        .map_or(String::new(), |i| previous[i..].to_owned());
    std::fs::write(&options.out, format!("{doc}{analysis}")).expect("writing RESULTS.md");
    eprintln!("wrote {}", options.out.display());
}
