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

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use isola_bench::load::{self, Load, LoadResult, Server};
use isola_bench::micro::{self, LoadTimes, Samples};
use isola_bench::{fuel, percentile};

const MIB: f64 = 1024.0 * 1024.0;
const CONNECTIONS: u32 = 32;
const SCALING: [u32; 4] = [1, 8, 64, 256];
const SLOW_REQUESTS: u32 = 1000;
const HELLO: &str = "Hello from Isola!\n";
/// Rounds of each hello workload, interleaved across its servers. On this
/// 2-core VM two 10 s runs of one server can differ by 30%, and the hello
/// ratios are the targets: each is judged on the median of its per-round
/// (paired, back-to-back) ratios, not on one run per server. Three rounds
/// still let one slow round move the median (session 9's reuse ratio read
/// 1.16/0.55/0.82×); five cost ~3 min more.
const HELLO_ROUNDS: usize = 5;

struct Options {
    duration: Duration,
    micro_requests: usize,
    out: PathBuf,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("the repository root")
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

/// A program from the environment variable `var`, or `default` (a path,
/// or a name looked up in `PATH`); `None` when it is not there.
fn tool(var: &str, default: Option<PathBuf>) -> Option<PathBuf> {
    let path = std::env::var_os(var).map(PathBuf::from).or(default)?;
    if path.components().count() > 1 {
        return path.is_file().then_some(path);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(&path))
        .find(|candidate| candidate.is_file())
}

fn version(program: &Path, arg: &str) -> String {
    Command::new(program)
        .arg(arg)
        .output()
        .map(|o| {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            text.lines().next().unwrap_or("").trim().to_owned()
        })
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// Everything the run uses.
struct Setup {
    isola: PathBuf,
    native: PathBuf,
    wrk: PathBuf,
    wasmtime: Option<PathBuf>,
    workerd: Option<PathBuf>,
    workerd_config: PathBuf,
    rust_guest: PathBuf,
    js_guest: PathBuf,
    /// The same worker built with `--instance-reuse`.
    js_reuse_guest: PathBuf,
    work: tempfile::TempDir,
    pin: bool,
}

impl Setup {
    fn load(&self, connections: u32, duration: Duration) -> Load<'_> {
        Load {
            wrk: &self.wrk,
            connections,
            duration,
            script: None,
            pin: self.pin,
            sample_pss: false,
        }
    }

    fn log(&self, name: &str) -> PathBuf {
        self.work.path().join(format!("{name}.log"))
    }

    /// `isola serve` of one worker on every path, with `extra` worker keys.
    fn isola(&self, name: &str, component: &Path, extra: &str, state: &Path) -> Server {
        let addr = load::free_addr();
        let config = self.work.path().join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"{addr}\"\nstate_dir = {state:?}\nmax_instances = 2000\n\n\
                 [[worker]]\nname = \"{name}\"\ncomponent = {component:?}\nroutes = [\"/*\"]\n{extra}\n"
            ),
        )
        .expect("writing an isola config");
        let mut command = Command::new(&self.isola);
        command.arg("serve").arg(&config);
        Server::start(command, addr, "/", &self.log(name), self.pin)
    }

    fn wasmtime(&self, name: &str, reuse: bool) -> Option<Server> {
        let wasmtime = self.wasmtime.as_ref()?;
        let addr = load::free_addr();
        let mut command = Command::new(wasmtime);
        command
            .args(["serve", "-S", "cli=y", "--addr"])
            .arg(addr.to_string());
        if reuse {
            command.args(["--max-instance-reuse-count", "1000000"]);
        }
        command.arg(&self.rust_guest);
        Some(Server::start(command, addr, "/", &self.log(name), self.pin))
    }

    fn workerd(&self) -> Option<Server> {
        let workerd = self.workerd.as_ref()?;
        let addr = load::free_addr();
        let mut command = Command::new(workerd);
        command
            .arg("serve")
            .arg(&self.workerd_config)
            .arg("--socket-addr")
            .arg(format!("http={addr}"));
        Some(Server::start(
            command,
            addr,
            "/",
            &self.log("workerd"),
            self.pin,
        ))
    }

    fn native(&self) -> Server {
        let addr = load::free_addr();
        let mut command = Command::new(&self.native);
        command.arg(addr.to_string());
        Server::start(command, addr, "/", &self.log("native-hello"), self.pin)
    }
}

/// A row of a side-by-side table.
struct Row {
    workload: &'static str,
    server: String,
    result: LoadResult,
}

/// A workload: its name, path, wrk script, and what the body must hold.
struct Workload {
    name: &'static str,
    path: &'static str,
    script: Option<PathBuf>,
    expect: &'static str,
}

/// Check `path` once by hand (status 200, body holds `expect`), then
/// load it.
fn measure(
    setup: &Setup,
    server: &Server,
    workload: &Workload,
    connections: u32,
    duration: Duration,
) -> LoadResult {
    measure_with_pss(setup, server, workload, connections, duration, false)
}

fn measure_with_pss(
    setup: &Setup,
    server: &Server,
    workload: &Workload,
    connections: u32,
    duration: Duration,
    sample_pss: bool,
) -> LoadResult {
    if workload.script.is_none() {
        let (status, text) = load::get(server.addr, workload.path).expect("probing the server");
        assert!(
            status == 200 && text.contains(workload.expect),
            "{} {} answered {status}: {text:.300}",
            server.addr,
            workload.path
        );
    }
    let mut load = setup.load(connections, duration);
    load.script = workload.script.as_deref();
    load.sample_pss = sample_pss;
    let result = load.run(server, workload.path);
    assert!(
        result.requests > 0,
        "no requests completed on {}",
        workload.path
    );
    result
}

/// One workload on several servers in `HELLO_ROUNDS` interleaved rounds.
struct Rounds {
    /// Per server, its results in round order.
    servers: Vec<(String, Vec<LoadResult>)>,
}

impl Rounds {
    fn run(
        setup: &Setup,
        servers: &[(&str, &Server)],
        workload: &Workload,
        duration: Duration,
    ) -> Rounds {
        let mut results: Vec<(String, Vec<LoadResult>)> = servers
            .iter()
            .map(|(name, _)| (name.to_string(), Vec::new()))
            .collect();
        for round in 1..=HELLO_ROUNDS {
            // Every other round in reverse order, so that no server always
            // runs right after the same neighbour.
            let mut order: Vec<usize> = (0..servers.len()).collect();
            if round % 2 == 0 {
                order.reverse();
            }
            for i in order {
                let (name, server) = servers[i];
                eprintln!("  {} on {name}, round {round}", workload.name);
                let result = measure(setup, server, workload, CONNECTIONS, duration);
                results[i].1.push(result);
            }
        }
        Rounds { servers: results }
    }

    fn results(&self, server: &str) -> Option<&[LoadResult]> {
        self.servers
            .iter()
            .find(|(name, _)| name == server)
            .map(|(_, results)| results.as_slice())
    }

    /// Each server's median round (by req/s), as a table row.
    fn median_rows(&self, workload: &'static str) -> Vec<Row> {
        self.servers
            .iter()
            .map(|(name, results)| {
                let mut by_rps: Vec<&LoadResult> = results.iter().collect();
                by_rps.sort_by(|a, b| a.rps.total_cmp(&b.rps));
                Row {
                    workload,
                    server: name.clone(),
                    result: by_rps[by_rps.len() / 2].clone(),
                }
            })
            .collect()
    }

    /// `ours ÷ peer` per round (runs back to back), and their median.
    fn paired_ratios(&self, ours: &str, peer: &str) -> Option<(Vec<f64>, f64)> {
        let (ours, peer) = (self.results(ours)?, self.results(peer)?);
        let ratios: Vec<f64> = ours.iter().zip(peer).map(|(o, p)| o.rps / p.rps).collect();
        let mut sorted = ratios.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        Some((ratios, median))
    }

    /// A markdown table of `ours ÷ peer` per round for each other server.
    fn ratio_table(&self, ours: &str) -> String {
        let rounds: String = (1..=HELLO_ROUNDS)
            .map(|r| format!(" round {r} |"))
            .collect();
        let mut out = format!(
            "| {ours} ÷ |{rounds} median |\n|---|{}---|\n",
            "---|".repeat(HELLO_ROUNDS)
        );
        for (peer, _) in &self.servers {
            if let Some((ratios, median)) = self.paired_ratios(ours, peer).filter(|_| peer != ours)
            {
                let cells: String = ratios.iter().map(|r| format!(" {r:.2}× |")).collect();
                writeln!(out, "| {peer} |{cells} **{median:.2}×** |").unwrap();
            }
        }
        out
    }
}

/// A wrk script POSTing 10 KiB of JSON.
fn echo_script(work: &Path) -> PathBuf {
    let mut json = String::from("{\"items\":[");
    let mut i = 0;
    while json.len() < 10 * 1024 - 64 {
        if i > 0 {
            json.push(',');
        }
        write!(
            json,
            "{{\"id\":{i},\"name\":\"item-{i}\",\"tags\":[\"a\",\"b\"]}}"
        )
        .unwrap();
        i += 1;
    }
    json.push_str("]}");
    let script = work.join("echo.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.headers[\"content-type\"] = \"application/json\"\nwrk.body = [==[{json}]==]\n"
        ),
    )
    .expect("writing the wrk script");
    script
}

fn fmt_ratio(numerator: f64, denominator: f64) -> String {
    if denominator > 0.0 && numerator.is_finite() {
        format!("{:.2}×", numerator / denominator)
    } else {
        "—".into()
    }
}

fn table(rows: &[Row], base_server: &str) -> String {
    let mut out = String::from(
        "| workload | server | req/s | p50 ms | p99 ms | server CPU µs/req | RSS MiB | Isola ÷ this |\n|---|---|---|---|---|---|---|---|\n",
    );
    for row in rows {
        let base = rows
            .iter()
            .find(|r| r.workload == row.workload && r.server == base_server)
            .map_or(f64::NAN, |r| r.result.rps);
        let ratio = if row.server == base_server {
            String::new()
        } else {
            fmt_ratio(base, row.result.rps)
        };
        let errors = if row.result.errors > 0 {
            format!(" ({} errors)", row.result.errors)
        } else {
            String::new()
        };
        writeln!(
            out,
            "| {} | {} | {:.0}{errors} | {:.2} | {:.2} | {:.0} | {:.0} | {ratio} |",
            row.workload,
            row.server,
            row.result.rps,
            row.result.p50_ms,
            row.result.p99_ms,
            row.result.cpu_us_per_request,
            row.result.rss_bytes as f64 / MIB,
        )
        .unwrap();
    }
    out
}

fn result_of<'a>(rows: &'a [Row], workload: &str, server: &str) -> Option<&'a LoadResult> {
    rows.iter()
        .find(|r| r.workload == workload && r.server == server)
        .map(|r| &r.result)
}

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

/// Build the JS worker with `isola build` (`--instance-reuse` when asked);
/// a unique marker makes it a cold build (the build cache cannot answer)
/// and a distinct component.
fn build_js(
    isola: &Path,
    main: &Path,
    out: &Path,
    marker: Option<&str>,
    instance_reuse: bool,
) -> Duration {
    let source = std::fs::read_to_string(main).expect("reading the JS worker");
    let entry = match marker {
        Some(marker) => {
            let copy = main.with_file_name(format!("bench-{}-{marker}.js", std::process::id()));
            std::fs::write(
                &copy,
                format!("{source}\nglobalThis.__isolaBenchBuild = {marker:?};\n"),
            )
            .expect("writing the marked copy");
            copy
        }
        None => main.to_owned(),
    };
    let started = Instant::now();
    let mut command = Command::new(isola);
    command.arg("build").arg(&entry).arg("-o").arg(out);
    if instance_reuse {
        command.arg("--instance-reuse");
    }
    let output = command.output().expect("running isola build");
    let elapsed = started.elapsed();
    if marker.is_some() {
        let _ = std::fs::remove_file(&entry);
    }
    assert!(
        output.status.success(),
        "isola build failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    elapsed
}

fn micro_table(name: &str, samples: &Samples, requests: usize) -> String {
    let mut out =
        format!("| {name}, {requests} requests one at a time | p50 µs | p99 µs |\n|---|---|---|\n");
    for (what, p50, p99) in samples.rows() {
        writeln!(out, "| {what} | {p50:.1} | {p99:.1} |").unwrap();
    }
    out
}

fn main() {
    let options = options();
    let repo = repo();
    let release = std::env::current_exe()
        .expect("the bench's own path")
        .parent()
        .expect("its directory")
        .to_owned();
    let isola = tool("ISOLA_BIN", Some(release.join("isola")))
        .expect("isola not found: `cargo build --profile dist -p isola` and set ISOLA_BIN");
    let work = tempfile::tempdir().expect("a work directory");
    let js_main = repo.join("bench/workers/worker.js");
    let js_guest = work.path().join("worker.wasm");
    let js_reuse_guest = work.path().join("worker-reuse.wasm");
    eprintln!("building the JS worker…");
    build_js(&isola, &js_main, &js_guest, None, false);
    build_js(&isola, &js_main, &js_reuse_guest, None, true);
    let setup = Setup {
        isola,
        native: release.join("native-hello"),
        wrk: tool("WRK_BIN", Some("wrk".into())).expect("wrk not found: apt-get install wrk"),
        wasmtime: tool("WASMTIME_BIN", None),
        workerd: tool("WORKERD_BIN", None),
        workerd_config: repo.join("bench/workerd/config.capnp"),
        rust_guest: PathBuf::from(isola_test_programs::BENCH),
        js_guest,
        js_reuse_guest,
        work,
        pin: load::can_pin(),
    };
    let duration = options.duration;
    let mut doc = String::new();

    // Header: machine, versions, command.
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

    // Rust workloads, side by side.
    eprintln!("Rust workloads…");
    let workloads = [
        Workload {
            name: "hello",
            path: "/",
            script: None,
            expect: HELLO,
        },
        Workload {
            name: "compute (1M-step loop)",
            path: "/compute",
            script: None,
            expect: "\n",
        },
        Workload {
            name: "JSON echo, 10 KiB",
            path: "/echo",
            script: Some(echo_script(setup.work.path())),
            expect: "",
        },
        Workload {
            name: "1 MiB streamed response",
            path: "/stream",
            script: None,
            expect: "xxxx",
        },
    ];
    let isola_state = setup.work.path().join("isola-rust");
    let isola = setup.isola("rust", &setup.rust_guest, "", &isola_state);
    let idle_rss = isola.rss();
    let wasmtime_fresh = setup.wasmtime("wasmtime-fresh", false);
    let wasmtime_reuse = setup.wasmtime("wasmtime-reuse", true);
    let isola_reuse = setup.isola(
        "rust-reuse",
        &setup.rust_guest,
        "instance_reuse = 1000000",
        &setup.work.path().join("isola-rust-reuse"),
    );
    let native = setup.native();
    let mut peers: Vec<(&str, &Server)> = Vec::new();
    if let Some(server) = &wasmtime_fresh {
        peers.push(("wasmtime serve", server));
    }
    if let Some(server) = &wasmtime_reuse {
        peers.push(("wasmtime serve, reuse", server));
    }
    let mut hello_servers = vec![("isola", &isola)];
    hello_servers.extend(peers.iter().copied());
    hello_servers.push(("isola, instance_reuse", &isola_reuse));
    hello_servers.push(("native hyper", &native));
    let rust_hello = Rounds::run(&setup, &hello_servers, &workloads[0], duration);
    let mut rows = rust_hello.median_rows(workloads[0].name);
    for workload in &workloads[1..] {
        for (name, server) in std::iter::once(("isola", &isola)).chain(peers.iter().copied()) {
            eprintln!("  {} on {name}", workload.name);
            rows.push(Row {
                workload: workload.name,
                server: name.into(),
                result: measure(&setup, server, workload, CONNECTIONS, duration),
            });
        }
    }
    drop((isola, wasmtime_fresh, wasmtime_reuse, isola_reuse, native));
    rows.sort_by_key(|r| workloads.iter().position(|w| w.name == r.workload));
    writeln!(
        doc,
        "## Side by side, Rust guest, {CONNECTIONS} connections\n\n\
         Hello rows: the median of {HELLO_ROUNDS} interleaved rounds per server.\n\n{}\n\
         Rust hello, Isola's req/s ÷ each server's in the same round (the targets use the median):\n\n{}",
        table(&rows, "isola"),
        rust_hello.ratio_table("isola")
    )
    .unwrap();

    // JS workloads.
    eprintln!("JS workloads…");
    let js_workloads = [
        Workload {
            name: "JS hello",
            path: "/",
            script: None,
            expect: HELLO,
        },
        Workload {
            name: "JS KV read (1 KiB)",
            path: "/kv",
            script: None,
            expect: "xxxx",
        },
    ];
    let kv = "kv_namespaces = [{ binding = \"KV\", id = \"bench\" }]";
    let js_state = setup.work.path().join("isola-js");
    let mut js_rows = Vec::new();
    let mut js_servers = vec![(
        "isola".to_string(),
        setup.isola("js", &setup.js_guest, kv, &js_state),
    )];
    let js_idle_rss = js_servers[0].1.rss();
    js_servers.push((
        "isola, instance_reuse".to_string(),
        setup.isola(
            "js-reuse",
            &setup.js_reuse_guest,
            &format!("{kv}\ninstance_reuse = 1000000"),
            &setup.work.path().join("isola-js-reuse"),
        ),
    ));
    if let Some(s) = setup.workerd() {
        js_servers.push(("workerd".into(), s));
    }
    let js_hello_rounds = {
        let servers: Vec<(&str, &Server)> = js_servers
            .iter()
            .map(|(name, server)| (name.as_str(), server))
            .collect();
        Rounds::run(&setup, &servers, &js_workloads[0], duration)
    };
    js_rows.extend(js_hello_rounds.median_rows(js_workloads[0].name));
    for workload in &js_workloads[1..] {
        for (name, server) in &js_servers {
            eprintln!("  {} on {name}", workload.name);
            js_rows.push(Row {
                workload: workload.name,
                server: name.clone(),
                result: measure(&setup, server, workload, CONNECTIONS, duration),
            });
        }
    }
    drop(js_servers);
    writeln!(
        doc,
        "## Side by side, JS worker, {CONNECTIONS} connections\n\n\
         JS hello rows: the median of {HELLO_ROUNDS} interleaved rounds per server.\n\n{}\n\
         JS hello, each Isola server's req/s ÷ the others' in the same round:\n\n{}\n{}",
        table(&js_rows, "isola"),
        js_hello_rounds.ratio_table("isola"),
        js_hello_rounds.ratio_table("isola, instance_reuse")
    )
    .unwrap();

    // Scaling.
    eprintln!("scaling…");
    let scale_duration = duration.min(Duration::from_secs(5));
    let mut scaling = String::from(
        "| connections | Isola req/s | Isola p99 ms | Isola CPU µs/req | `wasmtime serve` req/s | `wasmtime serve` p99 ms | Isola ÷ wasmtime |\n|---|---|---|---|---|---|---|\n",
    );
    {
        let isola = setup.isola("rust-scaling", &setup.rust_guest, "", &isola_state);
        let wasmtime = setup.wasmtime("wasmtime-scaling", false);
        for connections in SCALING {
            eprintln!("  {connections} connections");
            let ours = measure(&setup, &isola, &workloads[0], connections, scale_duration);
            let theirs = wasmtime
                .as_ref()
                .map(|w| measure(&setup, w, &workloads[0], connections, scale_duration));
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

    // Memory per in-flight instance.
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
    let isola_guests = [("Rust", &setup.rust_guest, ""), ("JS", &setup.js_guest, kv)];
    for (i, (name, component, extra)) in isola_guests.into_iter().enumerate() {
        let server = setup.isola(
            &format!("memory-{name}"),
            component,
            extra,
            &setup.work.path().join(format!("isola-memory-{name}")),
        );
        let (before, pss_before) = (server.rss(), load::pss(server.pid()));
        let result = measure_with_pss(
            &setup,
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

    // Start-up: process start to first 200.
    eprintln!("start-up…");
    let mut startup = String::from(
        "| server | guest | compile cache | start to first 200 ms | RSS then MiB |\n|---|---|---|---|---|\n",
    );
    let mut start_ms = [f64::NAN; 2];
    // RSS once the first response is out, after a warm start: the idle
    // footprint of a server that did not have to compile.
    let mut warm_idle_rss = [0u64; 2];
    for (i, (guest, component, extra)) in isola_guests.into_iter().enumerate() {
        let state = setup.work.path().join(format!("isola-start-{guest}"));
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

    // Through the embedding API.
    eprintln!("embedding API…");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let requests = options.micro_requests;
    let micro_dir = setup.work.path().join("micro");
    let (rust_samples, js_samples, js_reuse_samples, fuel_result) = runtime.block_on(async {
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
        let reuse = micro::one_at_a_time(&reuse, 200, requests, js_hello).await;
        let fuel = fuel::measure(&micro_dir.join("fuel")).await;
        (rust, js, reuse, fuel)
    });
    let rust_load: LoadTimes = micro::load_times(&setup.rust_guest, &micro_dir);
    let js_load: LoadTimes = micro::load_times(&setup.js_guest, &micro_dir);
    // A second, different JS component compiled by the same engine right
    // after the first: the incremental cache supplies the shared engine.
    let marked = [micro_dir.join("first.wasm"), micro_dir.join("second.wasm")];
    let js_build = build_js(&setup.isola, &js_main, &marked[0], Some("first"), false);
    build_js(&setup.isola, &js_main, &marked[1], Some("second"), false);
    let (first_compile, second_compile) = {
        let engine = isola_engine::IsolaEngine::new(&isola_engine::EngineOptions::new(
            micro_dir.join("second-cache"),
        ))
        .expect("engine");
        let started = Instant::now();
        engine.load_component(&marked[0]).expect("compiling");
        let first = started.elapsed();
        let started = Instant::now();
        engine.load_component(&marked[1]).expect("compiling");
        (first, started.elapsed())
    };
    let js_size = std::fs::metadata(&setup.js_guest).map_or(0, |m| m.len());
    let rust_size = std::fs::metadata(&setup.rust_guest).map_or(0, |m| m.len());
    writeln!(
        doc,
        "## Through the embedding API (no sockets)\n\n{}\n{}\n{}",
        micro_table("Rust hello, fresh instance each", &rust_samples, requests),
        micro_table("JS hello, fresh instance each", &js_samples, requests),
        micro_table(
            "JS hello, `instance_reuse` (no instantiate on a reused instance)",
            &js_reuse_samples,
            requests
        )
    )
    .unwrap();
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
        js_build.as_secs_f64(),
        first_compile.as_secs_f64(),
        second_compile.as_secs_f64(),
        100.0 * second_compile.as_secs_f64() / first_compile.as_secs_f64()
    )
    .unwrap();
    writeln!(
        doc,
        "## Fuel\n\n| measure | value |\n|---|---|\n\
         | fuel per CPU-millisecond (calibration; `DEFAULT_FUEL_PER_MS` is {}) | {:.0} |\n\
         | 20M-step checksum, CPU ms, fuel on / off | {:.2} / {:.2} |\n\
         | fuel overhead | {:.3}× |\n",
        isola_runtime::DEFAULT_FUEL_PER_MS,
        fuel_result.fuel_per_ms,
        fuel_result.cpu_ms_on,
        fuel_result.cpu_ms_off,
        fuel_result.overhead()
    )
    .unwrap();

    // Targets.
    let isola_hello_result = result_of(&rows, "hello", "isola");
    let isola_cpu = isola_hello_result.map_or(f64::NAN, |r| r.cpu_us_per_request);
    let p99_at_32 = isola_hello_result.map_or(f64::NAN, |r| r.p99_ms);
    // Met when the median paired `ours ÷ peer` reaches `goal`; not measured
    // without the peer.
    let ratio_target = |title: String, ratio: Option<f64>, goal: f64, missing: &str| match ratio {
        Some(ratio) => target(title, format!("{ratio:.2}×"), Some(ratio >= goal)),
        None => target(title, missing, None),
    };
    let rust_vs = |peer: &str, goal: f64, what: &str| {
        ratio_target(
            format!("Rust hello rps ≥ {goal}× {what}"),
            rust_hello
                .paired_ratios("isola", peer)
                .map(|(_, median)| median),
            goal,
            "peer not installed",
        )
    };
    let js_vs_workerd = |ours: &str| {
        js_hello_rounds
            .paired_ratios(ours, "workerd")
            .map(|(_, median)| median)
    };
    let rust_inst = percentile(&rust_samples.instantiate, 0.5);
    let rust_total = percentile(&rust_samples.guest_cpu, 0.5);
    let js_total = percentile(&js_samples.guest_cpu, 0.5);
    let js_before_drop = percentile(&js_samples.before_drop, 0.5);
    let targets = [
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
                idle_rss as f64 / MIB,
                js_idle_rss as f64 / MIB
            ),
            Some(warm_idle_rss[0] as f64 <= 30.0 * MIB),
        ),
        target(
            "fuel overhead ≤ 1.25×",
            format!("{:.3}×", fuel_result.overhead()),
            Some(fuel_result.overhead() <= 1.25),
        ),
    ];
    let mut summary = String::from("| target | this run | |\n|---|---|---|\n");
    for t in &targets {
        let verdict = match t.met {
            Some(true) => "met",
            Some(false) => "**not met**",
            None => "not measured",
        };
        writeln!(summary, "| {} | {} | {verdict} |", t.what, t.figure).unwrap();
    }
    let doc = format!("{doc}## Targets\n\n{summary}");
    print!("{doc}");
    let previous = std::fs::read_to_string(&options.out).unwrap_or_default();
    // Keep any hand-written analysis below the generated part.
    let analysis = previous
        .find("\n## Analysis")
        .map_or(String::new(), |i| previous[i..].to_owned());
    std::fs::write(&options.out, format!("{doc}{analysis}")).expect("writing RESULTS.md");
    eprintln!("wrote {}", options.out.display());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rounds(servers: &[(&str, [f64; HELLO_ROUNDS])]) -> Rounds {
        Rounds {
            servers: servers
                .iter()
                .map(|(name, rps)| {
                    let results = rps
                        .iter()
                        .map(|&rps| LoadResult {
                            rps,
                            ..LoadResult::default()
                        })
                        .collect();
                    (name.to_string(), results)
                })
                .collect(),
        }
    }

    #[test]
    fn ratios_are_paired_by_round_and_the_median_is_taken() {
        // A slow second round for both servers: paired ratios stay steady
        // where the ratio of the two medians would not.
        let r = rounds(&[
            ("isola", [20_000.0, 10_000.0, 21_000.0, 18_000.0, 22_000.0]),
            ("peer", [25_000.0, 12_000.0, 20_000.0, 20_000.0, 20_000.0]),
        ]);
        let (ratios, median) = r.paired_ratios("isola", "peer").unwrap();
        assert_eq!(ratios.len(), HELLO_ROUNDS);
        assert!((ratios[0] - 0.8).abs() < 1e-9);
        assert!((median - 0.9).abs() < 1e-9, "{median}");
        assert!(r.paired_ratios("isola", "absent").is_none());

        let rows = r.median_rows("hello");
        assert_eq!(rows[0].server, "isola");
        assert_eq!(rows[0].result.rps, 20_000.0);
        assert_eq!(rows[1].result.rps, 20_000.0);

        let table = r.ratio_table("isola");
        assert!(
            table.contains("| peer | 0.80× | 0.83× | 1.05× | 0.90× | 1.10× | **0.90×** |"),
            "{table}"
        );
        assert!(!table.contains("| isola |"), "{table}");
    }
}
