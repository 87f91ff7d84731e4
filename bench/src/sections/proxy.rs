//! Proxying (issue 29): every server forwards each request to one origin
//! on loopback (a keep-alive hyper server in this process, see
//! [`Origin`]) and streams its answer back, under `wrk` at
//! [`CONNECTIONS`] connections. The Rust bench guest's `/proxy/` (plain
//! `wasi:http/outgoing-handler`) runs unchanged on Isola and `wasmtime
//! serve`; `bench/workers/proxy.js` runs on Isola (fresh instances, the
//! default) and workerd (`bench/workerd/proxy.capnp`): `/fetch`
//! is `return fetch(origin)`, `/seed` the seeds' proxy (add a header, put
//! a clone into `caches.default` in `ctx.waitUntil`); both also run on
//! Isola with `instance_reuse` (one instance serving request after request,
//! as a workerd isolate does), a row without a target. Isola's own Rust
//! hello runs in the same rounds, for the proxy ÷ hello ratio. Every case
//! runs in [`HELLO_ROUNDS`] interleaved rounds; the origin counts the
//! connections it accepts in each run.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::time::Duration;

use isola_bench::load::{LoadResult, Server};
use isola_bench::origin::{self, Origin, Tally};
use isola_bench::rounds::HELLO_ROUNDS;
use isola_bench::setup::{Setup, build_js, repo};
use isola_bench::workload::{CONNECTIONS, HELLO, Workload, measure};

use super::durable;

const HELLO_ROW: &str = "Rust hello (no origin)";
const RUST: &str = "Rust proxy";
const FETCH: &str = "JS `return fetch(origin)`";
const SEED: &str = "JS seed proxy (header + cache.put in waitUntil)";

const ISOLA: &str = "isola";
const ISOLA_REUSE: &str = "isola, `instance_reuse`";
const WASMTIME: &str = "wasmtime serve";
const WORKERD: &str = "workerd";

/// A case: (workload, server).
type Key = (&'static str, &'static str);

/// A ratio of two cases' req/s, and its target if it has one.
struct Ratio {
    what: &'static str,
    ours: Key,
    theirs: Key,
    at_least: Option<f64>,
}

/// Issue 29's targets, and how `instance_reuse` compares.
const RATIOS: [Ratio; 6] = [
    Ratio {
        what: "Rust proxy ÷ Isola's own Rust hello",
        ours: (RUST, ISOLA),
        theirs: (HELLO_ROW, ISOLA),
        at_least: Some(0.6),
    },
    Ratio {
        what: "Rust proxy, Isola ÷ `wasmtime serve`",
        ours: (RUST, ISOLA),
        theirs: (RUST, WASMTIME),
        at_least: Some(3.0),
    },
    Ratio {
        what: "JS `return fetch(origin)`, Isola ÷ workerd",
        ours: (FETCH, ISOLA),
        theirs: (FETCH, WORKERD),
        at_least: Some(0.6),
    },
    Ratio {
        what: "JS seed proxy, Isola ÷ workerd",
        ours: (SEED, ISOLA),
        theirs: (SEED, WORKERD),
        at_least: Some(0.6),
    },
    Ratio {
        what: "JS `return fetch(origin)`, Isola with `instance_reuse` ÷ workerd",
        ours: (FETCH, ISOLA_REUSE),
        theirs: (FETCH, WORKERD),
        at_least: None,
    },
    Ratio {
        what: "JS seed proxy, Isola with `instance_reuse` ÷ workerd",
        ours: (SEED, ISOLA_REUSE),
        theirs: (SEED, WORKERD),
        at_least: None,
    },
];

/// Origin connections a 10 s run at 32 client connections may open.
const MAX_ORIGIN_CONNECTIONS: u64 = 64;

/// One workload on one server, and its rounds.
struct Case<'a> {
    workload: &'static str,
    server: &'static str,
    on: &'a Server,
    path: &'static str,
    expect: &'static str,
    runs: Vec<(LoadResult, Tally)>,
}

impl Case<'_> {
    fn rps(&self) -> Vec<f64> {
        self.runs.iter().map(|(r, _)| r.rps).collect()
    }

    /// The median round by req/s.
    fn median(&self) -> &(LoadResult, Tally) {
        let mut by_rps: Vec<&(LoadResult, Tally)> = self.runs.iter().collect();
        by_rps.sort_by(|a, b| a.0.rps.total_cmp(&b.0.rps));
        by_rps[by_rps.len() / 2]
    }

    /// The origin's figures over all rounds.
    fn origin_total(&self) -> Tally {
        self.runs
            .iter()
            .fold(Tally::default(), |sum, (_, t)| Tally {
                connections: sum.connections + t.connections,
                requests: sum.requests + t.requests,
            })
    }

    fn most_connections_in_a_run(&self) -> u64 {
        self.runs
            .iter()
            .map(|(_, t)| t.connections)
            .max()
            .unwrap_or(0)
    }

    fn uses_origin(&self) -> bool {
        self.workload != HELLO_ROW
    }
}

/// `ours ÷ theirs` per round and the median.
fn paired(cases: &[Case], ours: Key, theirs: Key) -> Option<(Vec<f64>, f64)> {
    let find = |(workload, server): (&str, &str)| {
        cases
            .iter()
            .find(|c| c.workload == workload && c.server == server)
    };
    let (ours, theirs) = (find(ours)?, find(theirs)?);
    let ratios: Vec<f64> = ours
        .rps()
        .iter()
        .zip(theirs.rps())
        .map(|(o, t)| o / t)
        .collect();
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    Some((ratios, median))
}

pub fn run(setup: &Setup, duration: Duration, alone: Option<&str>, doc: &mut String) {
    eprintln!("Proxying…");
    let load_before = durable::load_average();
    let origin = Origin::start(setup.pin);
    let url = origin.url();
    let work = setup.work.path();
    let outbound = format!("vars = {{ ORIGIN = {url:?} }}\nallowed_outbound_hosts = [{url:?}]");

    eprintln!("  building bench/workers/proxy.js…");
    let js_main = repo().join("bench/workers/proxy.js");
    let js = work.join("proxy.wasm");
    build_js(&setup.isola, &js_main, &js, None, false);
    let js_reuse = work.join("proxy-reuse.wasm");
    build_js(&setup.isola, &js_main, &js_reuse, None, true);

    let rust = setup.isola(
        "proxy-rust",
        &setup.rust_guest,
        &outbound,
        &work.join("isola-proxy-rust"),
    );
    // `wasmtime serve` lets a guest's wasi:http requests reach any address
    // (it has no allow-list); ORIGIN reaches the guest through wasi:cli's
    // environment, which `-S cli=y` provides.
    let env = format!("ORIGIN={url}");
    let wasmtime = setup.wasmtime_with("proxy-wasmtime", &["--env", &env]);
    let isola_js = setup.isola("proxy-js", &js, &outbound, &work.join("isola-proxy-js"));
    let isola_js_reuse = setup.isola(
        "proxy-js-reuse",
        &js_reuse,
        &format!("{outbound}\ninstance_reuse = 1000000"),
        &work.join("isola-proxy-js-reuse"),
    );
    let workerd = setup.workerd_env(
        "proxy-workerd",
        &repo().join("bench/workerd/proxy.capnp"),
        &[] as &[&OsStr],
        &[("ORIGIN", &url)],
        "/",
    );

    let case = |workload, server, on, path, expect| Case {
        workload,
        server,
        on,
        path,
        expect,
        runs: Vec::new(),
    };
    let mut cases = vec![
        case(HELLO_ROW, ISOLA, &rust, "/", HELLO),
        case(RUST, ISOLA, &rust, "/proxy/", origin::BODY),
    ];
    if let Some(wasmtime) = &wasmtime {
        cases.push(case(HELLO_ROW, WASMTIME, wasmtime, "/", HELLO));
        cases.push(case(RUST, WASMTIME, wasmtime, "/proxy/", origin::BODY));
    }
    for (workload, path) in [(FETCH, "/fetch"), (SEED, "/seed")] {
        cases.push(case(workload, ISOLA, &isola_js, path, origin::BODY));
        cases.push(case(
            workload,
            ISOLA_REUSE,
            &isola_js_reuse,
            path,
            origin::BODY,
        ));
        if let Some(workerd) = &workerd {
            cases.push(case(workload, WORKERD, workerd, path, origin::BODY));
        }
    }

    for round in 1..=HELLO_ROUNDS {
        // Every other round in reverse order, as in the hello rounds.
        let mut order: Vec<usize> = (0..cases.len()).collect();
        if round % 2 == 0 {
            order.reverse();
        }
        for i in order {
            let case = &mut cases[i];
            eprintln!("  {} on {}, round {round}", case.workload, case.server);
            let workload = Workload {
                name: case.workload,
                path: case.path,
                script: None,
                expect: case.expect,
            };
            let before = origin.tally();
            let result = measure(setup, case.on, &workload, CONNECTIONS, duration);
            case.runs.push((result, origin.tally() - before));
        }
    }
    let load = format!("{load_before} / {}", durable::load_average());
    write(doc, &cases, duration, alone, &load);
}

fn write(doc: &mut String, cases: &[Case], duration: Duration, alone: Option<&str>, load: &str) {
    writeln!(doc, "## Proxying, {CONNECTIONS} connections\n").unwrap();
    if let Some(note) = alone {
        writeln!(doc, "{note}\n").unwrap();
    }
    writeln!(
        doc,
        "Each server forwards every request to one origin on 127.0.0.1 (a keep-alive \
         HTTP/1.1 hyper server inside the benchmark, answering {} bytes, on the client's \
         core beside wrk) and streams the answer back. Rust: the bench guest's `/proxy/` \
         (`wasi:http/outgoing-handler`), the same component on Isola and `wasmtime serve`. \
         JS: `bench/workers/proxy.js` on Isola and workerd (`bench/workerd/proxy.capnp`: \
         fetch through a network service allowed to reach loopback; `caches.default` backed \
         by an in-memory cache service, as Isola's default cache is in memory); \
         `isola, instance_reuse`: the same worker built with `--instance-reuse` and served \
         with `instance_reuse`, one instance serving request after request. Rows: the \
         median of {HELLO_ROUNDS} interleaved rounds of {} s each; origin connections: the \
         most any one run (1 s warm-up + the measured run) opened, and per 1,000 requests \
         the origin answered over all rounds. Load average (1 min) before / after the \
         section: {load}.\n",
        origin::BODY.len(),
        duration.as_secs(),
    )
    .unwrap();
    writeln!(
        doc,
        "| workload | server | req/s | p50 ms | p99 ms | server CPU µs/req | origin conns, most in a run | origin conns / 1,000 req |\n\
         |---|---|---|---|---|---|---|---|"
    )
    .unwrap();
    for case in cases {
        let (result, _) = case.median();
        let errors = if result.errors > 0 {
            format!(" ({} errors)", result.errors)
        } else {
            String::new()
        };
        let (most, per_thousand) = if case.uses_origin() {
            (
                case.most_connections_in_a_run().to_string(),
                format!("{:.2}", case.origin_total().per_thousand()),
            )
        } else {
            ("—".into(), "—".into())
        };
        writeln!(
            doc,
            "| {} | {} | {:.0}{errors} | {:.2} | {:.2} | {:.0} | {most} | {per_thousand} |",
            case.workload,
            case.server,
            result.rps,
            result.p50_ms,
            result.p99_ms,
            result.cpu_us_per_request,
        )
        .unwrap();
    }

    let rounds: String = (1..=HELLO_ROUNDS)
        .map(|r| format!(" round {r} |"))
        .collect();
    writeln!(
        doc,
        "\nRatios of req/s in the same round (runs back to back), and their median:\n\n\
         | ratio | target |{rounds} median | met |\n|---|---|{}---|---|",
        "---|".repeat(HELLO_ROUNDS)
    )
    .unwrap();
    for Ratio {
        what,
        ours,
        theirs,
        at_least,
    } in &RATIOS
    {
        let target = at_least.map_or("—".into(), |t| format!("≥ {t}×"));
        match paired(cases, *ours, *theirs) {
            Some((ratios, median)) => {
                let cells: String = ratios.iter().map(|r| format!(" {r:.2}× |")).collect();
                let met = at_least.map_or("", |t| if median >= t { "yes" } else { "**no**" });
                writeln!(
                    doc,
                    "| {what} | {target} |{cells} **{median:.2}×** | {met} |"
                )
                .unwrap();
            }
            None => {
                let cells = " — |".repeat(HELLO_ROUNDS);
                writeln!(doc, "| {what} | {target} |{cells} — | peer missing |").unwrap();
            }
        }
    }

    writeln!(
        doc,
        "\nOrigin connections (target: ≤ {MAX_ORIGIN_CONNECTIONS} opened in a 10 s run at \
         {CONNECTIONS} client connections; a run here is a 1 s warm-up and {} s):\n",
        duration.as_secs()
    )
    .unwrap();
    for case in cases.iter().filter(|c| c.uses_origin()) {
        let most = case.most_connections_in_a_run();
        let verdict = if most <= MAX_ORIGIN_CONNECTIONS {
            "within"
        } else {
            "**over**"
        };
        let total = case.origin_total();
        writeln!(
            doc,
            "- {} on {}: at most {most} in a run ({verdict}); {} over all rounds for {} origin requests",
            case.workload, case.server, total.connections, total.requests
        )
        .unwrap();
    }
    if !cases.iter().any(|c| c.server == WASMTIME) {
        writeln!(
            doc,
            "- `wasmtime serve` rows missing: WASMTIME_BIN is not set"
        )
        .unwrap();
    }
    if !cases.iter().any(|c| c.server == WORKERD) {
        writeln!(doc, "- workerd rows missing: WORKERD_BIN is not set").unwrap();
    }
    writeln!(doc).unwrap();
}
