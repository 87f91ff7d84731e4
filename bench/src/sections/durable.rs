//! Durable Objects (issue 34), embedded storage: a counter object per
//! name, incremented by `POST /counter/<name>/increment` through a stub,
//! under `wrk` at [`CONNECTIONS`] connections: every request to one hot
//! object, then spread at random over [`OBJECTS`] objects. Isola serves
//! the Rust example `guest-examples/rust/durable-counter` and the JS worker
//! `bench/workers/durable.js` (fresh and reused instances for the worker's
//! own requests; an object always keeps its instance); workerd serves the
//! same JS file (`bench/workerd/durable.capnp`), so the JS rows have a
//! ratio. All the servers run at once and each workload runs on each in
//! [`ROUNDS`] interleaved rounds. Before each load a GET of every name it
//! uses makes the objects; after it, a GET of each reads its count and how
//! many events its live instance has served, which says how many objects
//! kept one instance throughout and checks that no acknowledged increment
//! was lost.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use isola_bench::load::{self, LoadResult, Server};
use isola_bench::setup::{Setup, repo, try_build_js, version};
use isola_bench::table::MIB;
use isola_bench::workload::CONNECTIONS;

/// Objects the spread workload picks from.
pub const OBJECTS: u32 = 1000;

/// The worker keys that give a worker its `COUNTER` namespace, as
/// `guest-examples/isola.toml` has them for the Rust example.
const DURABLE_KEYS: &str = "durable_objects = { bindings = [{ name = \"COUNTER\", class_name = \"Counter\" }] }\n\
     migrations = [{ tag = \"v1\", new_sqlite_classes = [\"Counter\"] }]";

/// Every server answers 200 on it once it serves objects (a GET of the
/// object `probe`).
const PROBE: &str = "/counter/probe";

const HOT: &str = "one hot object";
const SPREAD: &str = "1,000 objects";
const WORKERD: &str = "workerd";

/// A workload: the objects its requests go to, and the wrk script.
struct Workload {
    name: &'static str,
    /// The URL wrk is given (the spread script makes its own paths).
    path: String,
    script: PathBuf,
    objects: Vec<String>,
}

fn workloads(work: &Path) -> [Workload; 2] {
    let write = |file: &str, text: String| {
        let path = work.join(file);
        std::fs::write(&path, text).expect("writing a wrk script");
        path
    };
    [
        Workload {
            name: HOT,
            path: "/counter/hot/increment".into(),
            script: write("durable-hot.lua", "wrk.method = \"POST\"\n".into()),
            objects: vec!["hot".into()],
        },
        Workload {
            name: SPREAD,
            path: "/counter/n0/increment".into(),
            script: write(
                "durable-spread.lua",
                format!(
                    "wrk.method = \"POST\"\n\
                     request = function()\n  \
                     return wrk.format(nil, \"/counter/n\" .. math.random(0, {}) .. \"/increment\")\n\
                     end\n",
                    OBJECTS - 1
                ),
            ),
            objects: (0..OBJECTS).map(|i| format!("n{i}")).collect(),
        },
    ]
}

/// What a GET of each object said after a load.
#[derive(Default)]
struct Tally {
    objects: usize,
    /// Objects whose live instance served every event they had since the
    /// GET before the load (no eviction, no reset).
    kept_instance: usize,
    /// What the counts grew by in all (the warm-up's increments too).
    added: u64,
    /// GETs that did not answer 200 with both headers.
    failed: usize,
}

/// GET `/counter/<name>` of every name (eight at a time): its `x-count`
/// and `x-served-by-live-instance`, `None` if it did not answer them.
fn read_all(server: &Server, names: &[String]) -> Vec<Option<(u64, u64)>> {
    let chunk = names.len().div_ceil(8).max(1);
    std::thread::scope(|scope| {
        let parts: Vec<_> = names
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|name| read(server, name))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|p| p.join().expect("a reader thread"))
            .collect()
    })
}

fn read(server: &Server, name: &str) -> Option<(u64, u64)> {
    let (status, text) = load::get(server.addr, &format!("/counter/{name}")).ok()?;
    if status != 200 {
        return None;
    }
    let head = text.split("\r\n\r\n").next()?;
    let header = |key: &str| -> Option<u64> {
        head.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(key)
                .then(|| v.trim().parse().ok())?
        })
    };
    Some((header("x-count")?, header("x-served-by-live-instance")?))
}

/// Make the objects (a GET each), load them, then read them back.
fn measure(
    setup: &Setup,
    server: &Server,
    workload: &Workload,
    duration: Duration,
) -> (LoadResult, Tally) {
    let before = read_all(server, &workload.objects);
    assert!(
        before.iter().all(Option::is_some),
        "{} did not answer GET /counter/<name> with x-count and x-served-by-live-instance:\n{}",
        server.addr,
        server.log_text()
    );
    let mut load = setup.load(CONNECTIONS, duration);
    load.script = Some(&workload.script);
    let result = load.run(server, &workload.path);
    let mut tally = Tally::default();
    for (after, before) in read_all(server, &workload.objects).iter().zip(&before) {
        let (Some((count, served)), Some((count_before, served_before))) = (after, before) else {
            tally.failed += 1;
            continue;
        };
        tally.objects += 1;
        tally.added += count.saturating_sub(*count_before);
        // One instance throughout: it served the GET before, every
        // increment since and the GET after, one event each.
        let increments = count.checked_sub(*count_before);
        if increments.is_some() && served.checked_sub(*served_before) == increments.map(|i| i + 1) {
            tally.kept_instance += 1;
        }
    }
    (result, tally)
}

/// Rounds of each workload on each server, interleaved as the hello rows
/// are: on the shared 2-core VM two runs of one server here differed by
/// 2× under other builds' load, so a row is the server's median round and
/// a ratio the median of the per-round (back-to-back) ratios.
pub const ROUNDS: usize = 3;

/// One workload on one server, round after round.
struct Series {
    workload: &'static str,
    guest: &'static str,
    server: &'static str,
    rounds: Vec<(LoadResult, Tally)>,
}

impl Series {
    /// The median round by req/s.
    fn median(&self) -> &(LoadResult, Tally) {
        let mut by_rps: Vec<&(LoadResult, Tally)> = self.rounds.iter().collect();
        by_rps.sort_by(|a, b| a.0.rps.total_cmp(&b.0.rps));
        by_rps[by_rps.len() / 2]
    }

    /// This series' req/s ÷ `peer`'s, round by round, and their median.
    fn ratios(&self, peer: &Series) -> (Vec<f64>, f64) {
        let ratios: Vec<f64> = self
            .rounds
            .iter()
            .zip(&peer.rounds)
            .map(|(ours, theirs)| ours.0.rps / theirs.0.rps)
            .collect();
        let mut sorted = ratios.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN);
        (ratios, median)
    }
}

/// A server to measure: the guest it serves, its name in the table, and
/// how to start it.
struct Contender {
    guest: &'static str,
    server: &'static str,
    start: Start,
}

enum Start {
    /// `isola serve` of `component` with `extra` worker keys, its log and
    /// state directory named `log`.
    Isola {
        log: &'static str,
        component: PathBuf,
        extra: String,
    },
    /// workerd with `bench/workerd/durable.capnp`, storing its objects in
    /// the work directory.
    Workerd,
}

impl Contender {
    fn start(&self, setup: &Setup) -> Option<Server> {
        let work = setup.work.path();
        match &self.start {
            Start::Isola {
                log,
                component,
                extra,
            } => Some(setup.isola_probing(log, component, extra, &work.join(log), PROBE)),
            Start::Workerd => {
                let disk = work.join("workerd-do-disk");
                std::fs::create_dir_all(&disk).expect("workerd's storage directory");
                let disk = format!("do-disk={}", disk.display());
                setup.workerd_with(
                    "workerd-durable",
                    &repo().join("bench/workerd/durable.capnp"),
                    &[OsStr::new("--directory-path"), OsStr::new(&disk)],
                    PROBE,
                )
            }
        }
    }
}

/// Build `guest-examples/rust/durable-counter`; its component's path.
fn build_rust_counter() -> Result<PathBuf, String> {
    let examples = repo().join("guest-examples");
    let output = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--release", "--target", "wasm32-wasip2", "-p"])
        .arg("durable-counter")
        .arg("--manifest-path")
        .arg(examples.join("Cargo.toml"))
        .output()
        .map_err(|e| format!("running cargo: {e}"))?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| examples.join("target"), PathBuf::from);
    let wasm = target.join("wasm32-wasip2/release/durable_counter.wasm");
    wasm.is_file()
        .then_some(wasm)
        .ok_or_else(|| "cargo built durable-counter, but not where expected".into())
}

/// The first line of a build's error output, for a note.
fn first_line(text: &str) -> &str {
    text.lines()
        .find(|l| l.contains("rror"))
        .or_else(|| text.lines().find(|l| !l.trim().is_empty()))
        .unwrap_or("")
        .trim()
}

/// The 1-minute load average now.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

/// Run the section; `alone` is the note a run of this section alone
/// writes first (its command, date and versions), since the document's
/// header then is another run's.
pub fn run(setup: &Setup, duration: Duration, alone: Option<&str>, doc: &mut String) {
    eprintln!("Durable Objects…");
    let load_before = load_average();
    let work = setup.work.path();
    let workloads = workloads(work);
    let mut notes = Vec::new();

    eprintln!("  building guest-examples/rust/durable-counter…");
    let rust = build_rust_counter()
        .map_err(|e| {
            notes.push(format!(
                "Rust rows missing: building durable-counter failed: {}",
                first_line(&e)
            ))
        })
        .ok();
    eprintln!("  building bench/workers/durable.js…");
    let js_main = repo().join("bench/workers/durable.js");
    let js = work.join("durable.wasm");
    // An object keeps its instance across events, which takes a component
    // built for reuse (`isola serve` builds a `main` with objects so).
    let js = try_build_js(&setup.isola, &js_main, &js, None, true)
        .map(|_| js)
        .map_err(|e| {
            notes.push(format!(
                "Isola JS rows missing: `isola build` failed: {}",
                first_line(&e)
            ))
        })
        .ok();

    let mut servers = Vec::new();
    if let Some(rust) = rust {
        servers.push(Contender {
            guest: "Rust",
            server: "isola",
            start: Start::Isola {
                log: "durable-rust",
                component: rust,
                extra: DURABLE_KEYS.into(),
            },
        });
    }
    if let Some(js) = js {
        servers.push(Contender {
            guest: "JS",
            server: "isola",
            start: Start::Isola {
                log: "durable-js",
                component: js.clone(),
                extra: DURABLE_KEYS.into(),
            },
        });
        servers.push(Contender {
            guest: "JS",
            server: "isola, instance_reuse",
            start: Start::Isola {
                log: "durable-js-reuse",
                component: js,
                extra: format!("{DURABLE_KEYS}\ninstance_reuse = 1000000"),
            },
        });
    }
    if setup.workerd.is_some() {
        servers.push(Contender {
            guest: "JS",
            server: WORKERD,
            start: Start::Workerd,
        });
    } else {
        notes.push("workerd rows missing: workerd is not installed (WORKERD_BIN)".into());
    }

    // Every server up at once, so that the rounds can interleave.
    let started: Vec<(&Contender, Server)> = servers
        .iter()
        .filter_map(|contender| Some((contender, contender.start(setup)?)))
        .collect();
    let mut series: Vec<Series> = workloads
        .iter()
        .flat_map(|workload| {
            started.iter().map(|(contender, _)| Series {
                workload: workload.name,
                guest: contender.guest,
                server: contender.server,
                rounds: Vec::new(),
            })
        })
        .collect();
    for round in 1..=ROUNDS {
        // Every other round in reverse order, so that no server always
        // runs right after the same neighbour.
        let mut order: Vec<usize> = (0..started.len()).collect();
        if round % 2 == 0 {
            order.reverse();
        }
        for (w, workload) in workloads.iter().enumerate() {
            for &i in &order {
                let (contender, server) = &started[i];
                let (guest, name) = (contender.guest, contender.server);
                eprintln!("  {} on {name} ({guest}), round {round}", workload.name);
                let (result, tally) = measure(setup, server, workload, duration);
                if tally.failed > 0 {
                    notes.push(format!(
                        "{name} ({guest}), {}, round {round}: {} objects did not answer the GET \
                         after the load",
                        workload.name, tally.failed
                    ));
                }
                let acknowledged = result.requests.saturating_sub(result.errors);
                if tally.added < acknowledged {
                    notes.push(format!(
                        "**{name} ({guest}), {}, round {round}: the counts grew by {}, less than \
                         the {acknowledged} increments wrk saw answered**",
                        workload.name, tally.added
                    ));
                }
                series[w * started.len() + i].rounds.push((result, tally));
            }
        }
    }
    drop(started);

    writeln!(doc, "## Durable Objects, {CONNECTIONS} connections\n").unwrap();
    if let Some(alone) = alone {
        writeln!(doc, "{alone}\n").unwrap();
    }
    writeln!(
        doc,
        "`POST /counter/<name>/increment`: the worker calls the counter object `<name>` through \
         a stub, which adds 1 to its count and stores it, in SQLite on local disk: Isola's \
         embedded storage (one database per object, WAL with `synchronous=NORMAL`: a commit \
         survives a crash of the process, with no fsync of its own) and workerd's `localDisk` \
         storage for `enableSql` objects (which fsyncs each write before it answers). Rows \
         \"{HOT}\": every request to the object `hot`; \"{SPREAD}\": each to `n<random \
         0..{}>` (a wrk Lua script). Guests: Rust is `guest-examples/rust/durable-counter` (the \
         increment in a `transaction`, the count cached in the object's value), JS is \
         `bench/workers/durable.js` (`await stub.increment()` over RPC; `ctx.storage.get` once, \
         then a `put` each), the same file on Isola and workerd. Isola's `instance_reuse` row \
         reuses the instances of the worker's own requests; an object keeps its one instance on \
         every server. \"Kept its instance\": objects whose one live instance served every \
         event from the GET that made them before the load to the GET after it. Load average \
         (1 min, {} cores) when the section started: {load_before}; when it ended: {}.\n",
        OBJECTS - 1,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    )
    .unwrap();
    writeln!(
        doc,
        "Each row is the server's median of {ROUNDS} interleaved rounds (by req/s); its ratio is \
         the median of the per-round ratios below. Every server runs throughout, so its RSS \
         after a load also holds what earlier rounds' objects left.\n\n\
         | objects | guest | server | req/s | p50 ms | p99 ms | server CPU µs/req | RSS MiB | kept its instance | Isola ÷ workerd |\n\
         |---|---|---|---|---|---|---|---|---|---|"
    )
    .unwrap();
    let workerd = |workload: &str| {
        series
            .iter()
            .find(|s| s.workload == workload && s.server == WORKERD)
    };
    let mut ratio_rows = String::new();
    for row in &series {
        let ratio = match workerd(row.workload) {
            Some(peer) if row.guest == "JS" && row.server != WORKERD => {
                let (ratios, median) = row.ratios(peer);
                let cells: String = ratios.iter().map(|r| format!(" {r:.2}× |")).collect();
                writeln!(
                    ratio_rows,
                    "| {} | {} |{cells} **{median:.2}×** |",
                    row.workload, row.server
                )
                .unwrap();
                format!("{median:.2}×")
            }
            _ => String::new(),
        };
        let (result, tally) = row.median();
        let errors = if result.errors > 0 {
            format!(" ({} errors)", result.errors)
        } else {
            String::new()
        };
        writeln!(
            doc,
            "| {} | {} | {} | {:.0}{errors} | {:.2} | {:.2} | {:.0} | {:.0} | {} of {} | {ratio} |",
            row.workload,
            row.guest,
            row.server,
            result.rps,
            result.p50_ms,
            result.p99_ms,
            result.cpu_us_per_request,
            result.rss_bytes as f64 / MIB,
            tally.kept_instance,
            tally.objects,
        )
        .unwrap();
    }
    let rounds: String = (1..=ROUNDS).map(|r| format!(" round {r} |")).collect();
    writeln!(
        doc,
        "\nreq/s, round by round:\n\n| objects | guest | server |{rounds}\n|---|---|---|{}",
        "---|".repeat(ROUNDS)
    )
    .unwrap();
    for row in &series {
        let cells: String = row
            .rounds
            .iter()
            .map(|(result, _)| format!(" {:.0} |", result.rps))
            .collect();
        writeln!(
            doc,
            "| {} | {} | {} |{cells}",
            row.workload, row.guest, row.server
        )
        .unwrap();
    }
    if !ratio_rows.is_empty() {
        // `ratio_rows` ends the table's last line.
        write!(
            doc,
            "\nJS, Isola's req/s ÷ workerd's in the same round:\n\n\
             | objects | Isola server |{rounds} median |\n|---|---|{}---|\n{ratio_rows}",
            "---|".repeat(ROUNDS)
        )
        .unwrap();
    }
    writeln!(doc).unwrap();
    for note in &notes {
        writeln!(doc, "- {note}").unwrap();
    }
    if !notes.is_empty() {
        writeln!(doc).unwrap();
    }
}

/// The note atop a run of this section alone.
pub fn alone_note(setup: &Setup, command: &str, duration: Duration) -> String {
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let workerd = setup
        .workerd
        .as_ref()
        .map_or_else(|| "no workerd".into(), |w| version(w, "--version"));
    format!(
        "Run alone, not with the tables above: `{command}`, {date}; {} (`{}`), {workerd}; \
         `wrk -t1 -c{CONNECTIONS} -d{}s` after a 1 s warm-up, {}.",
        version(&setup.isola, "--version"),
        setup.isola.display(),
        duration.as_secs(),
        if setup.pin {
            "server on core 0 and wrk on core 1"
        } else {
            "no pinning"
        }
    )
}
