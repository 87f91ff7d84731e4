//! Realistic JS workloads side by side (issue 30, point 1): the same
//! sources on Isola (fresh instances and `instance_reuse`) and workerd, at
//! [`CONNECTIONS`] connections. Workers, all under `bench/workers/`:
//! `worker.js` (the hello, for the targets' ratios in the same run),
//! `hono.js` (a Hono app: ~20 routes, a middleware chain, a JSON API that
//! validates its body), `render.js` (a ~50 KB HTML table of 500 rows from
//! template literals) and `hmac.js` (SHA-256 and HMAC-SHA-256 of a 4 KiB
//! body with `crypto.subtle`). npm packages (hono, and esbuild at the
//! version `isola build` bundles with) come from `bench/workers/package.json`
//! and its lockfile, installed into `bench/workers/node_modules`.
//!
//! Isola gets each worker from `isola build` (plain and
//! `--instance-reuse`), and from `isola check` of a config whose worker
//! lists its benchmarked requests as `warm_up` (fresh instances that start
//! from a snapshot in which those requests ran once); workerd gets the same source bundled by that esbuild
//! with `isola build`'s options into one module (esbuild only bundles: the
//! worker's code never runs on the host). Before any load every workload's
//! request goes once to every server: a row is measured only if its status
//! and body are the same on all of them (and the status is the expected
//! one). Each workload then runs on each server in [`HELLO_ROUNDS`]
//! interleaved rounds; a row is the server's median round and a ratio the
//! median of the per-round (back-to-back) ratios.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use isola_bench::load::Server;
use isola_bench::rounds::{HELLO_ROUNDS, Rounds};
use isola_bench::setup::{Setup, repo, try_build_js};
use isola_bench::table::MIB;
use isola_bench::workload::{CONNECTIONS, HELLO, Workload};

use super::durable::load_average;

const FRESH: &str = "isola";
const REUSE: &str = "isola, instance_reuse";
const WARM: &str = "isola, warm_up";
const WORKERD: &str = "workerd";

/// One request of a workload: what wrk sends, and what it must answer.
struct Request {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    content_type: Option<&'static str>,
    body: Option<String>,
    status: u16,
}

/// A worker source and the workloads it serves.
struct Worker {
    /// Its file under `bench/workers/`.
    file: &'static str,
    /// A GET path it answers 200 on once it serves.
    probe: &'static str,
    requests: Vec<Request>,
}

/// The JSON body of the Hono app's `POST /api/users` (valid: 201).
const NEW_USER: &str = r#"{"name":" Ada Lovelace ","email":"Ada@Example.com","age":36,"roles":["dev","admin","dev"],"address":{"street":"12 St James's Square","city":"London","zip":"SW1Y 4JH"}}"#;

fn workers() -> Vec<Worker> {
    // 4 KiB of text to sign, the same on every request.
    let to_sign: String = (0..)
        .map(|i| format!("line {i}: the quick brown fox jumps over the lazy dog\n"))
        .scan(0, |len, line| {
            *len += line.len();
            (*len <= 4096).then_some(line)
        })
        .collect();
    vec![
        Worker {
            file: "worker.js",
            probe: "/",
            requests: vec![Request {
                name: "JS hello",
                method: "GET",
                path: "/",
                content_type: None,
                body: None,
                status: 200,
            }],
        },
        Worker {
            file: "hono.js",
            probe: "/",
            requests: vec![
                Request {
                    name: "Hono, GET /api/users/:id",
                    method: "GET",
                    path: "/api/users/7",
                    content_type: None,
                    body: None,
                    status: 200,
                },
                Request {
                    name: "Hono JSON API, POST /api/users (validated)",
                    method: "POST",
                    path: "/api/users",
                    content_type: Some("application/json"),
                    body: Some(NEW_USER.into()),
                    status: 201,
                },
            ],
        },
        Worker {
            file: "render.js",
            probe: "/render",
            requests: vec![Request {
                name: "HTML render, 500 rows",
                method: "GET",
                path: "/render",
                content_type: None,
                body: None,
                status: 200,
            }],
        },
        Worker {
            file: "hmac.js",
            probe: "/",
            requests: vec![Request {
                name: "SHA-256 + HMAC of 4 KiB (crypto.subtle)",
                method: "POST",
                path: "/sign",
                content_type: Some("application/octet-stream"),
                body: Some(to_sign),
                status: 200,
            }],
        },
    ]
}

/// Build `source` into `out` with every one of `requests` as its
/// `warm_up`, through `isola check` of a config naming it as `main` (the
/// command line's `--warm-up` takes GET paths only; these have bodies).
fn build_warm(
    setup: &Setup,
    source: &Path,
    out: &Path,
    requests: &[Request],
) -> Result<(), String> {
    let entries: Vec<String> = requests
        .iter()
        .map(|r| {
            let headers = r.content_type.map_or(String::new(), |t| {
                format!(", headers = {{ \"content-type\" = {t:?} }}")
            });
            // Rust's escapes of these ASCII strings are TOML's.
            let body = r
                .body
                .as_ref()
                .map_or(String::new(), |b| format!(", body = {b:?}"));
            format!(
                "{{ method = {:?}, url = {:?}{headers}{body} }}",
                r.method, r.path
            )
        })
        .collect();
    let dir = out.with_extension("d");
    let state = dir.join("state");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let config = dir.join("isola.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nstate_dir = {state:?}\n\n[[worker]]\nname = \"warm\"\nmain = {source:?}\nwarm_up = [{}]\n",
            entries.join(", ")
        ),
    )
    .map_err(|e| e.to_string())?;
    let output = Command::new(&setup.isola)
        .arg("check")
        .arg(&config)
        .arg("--state-dir")
        .arg(&state)
        .output()
        .map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    // A `main` worker's component is built into `<state_dir>/build/`.
    std::fs::copy(state.join("build/warm.wasm"), out).map_err(|e| e.to_string())?;
    Ok(())
}

/// `bench/workers/node_modules` from the lockfile, unless it is already
/// installed from this very lockfile (a stamp holds the lockfile's text).
fn install_packages(workers: &Path) -> Result<(), String> {
    let lock = std::fs::read_to_string(workers.join("package-lock.json"))
        .map_err(|e| format!("reading bench/workers/package-lock.json: {e}"))?;
    let stamp = workers.join("node_modules/.isola-bench-lock");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(lock.as_str()) {
        return Ok(());
    }
    eprintln!("  npm install in bench/workers…");
    // `npm ci` rejects lockfiles that list other platforms' optional
    // packages (esbuild's); `install` honours the lockfile all the same.
    let output = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(workers)
        .output()
        .map_err(|e| format!("running npm: {e}"))?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    std::fs::write(&stamp, lock).map_err(|e| format!("writing {}: {e}", stamp.display()))
}

/// `source` bundled for workerd into `out`: esbuild with the options
/// `isola build` bundles a worker with (`sdk/js/src/build.mjs`).
fn bundle_for_workerd(workers: &Path, source: &Path, out: &Path) -> Result<(), String> {
    let esbuild = workers.join("node_modules/esbuild/bin/esbuild");
    let output = Command::new(&esbuild)
        .arg(source)
        .args([
            "--bundle",
            "--format=esm",
            "--platform=neutral",
            "--target=es2022",
            "--conditions=workerd,worker,browser",
            "--main-fields=browser,module,main",
            "--charset=utf8",
            "--define:global=globalThis",
            "--log-level=error",
        ])
        .arg(format!("--outfile={}", out.display()))
        .output()
        .map_err(|e| format!("running {}: {e}", esbuild.display()))?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(())
}

/// A workerd config serving `module` (a file beside it) alone.
fn workerd_config(dir: &Path, stem: &str, module: &str) -> PathBuf {
    let config = dir.join(format!("{stem}.capnp"));
    std::fs::write(
        &config,
        format!(
            "using Workerd = import \"/workerd/workerd.capnp\";\n\
             const config :Workerd.Config = (\n  \
             services = [(name = \"main\", worker = .w)],\n  \
             sockets = [(name = \"http\", address = \"127.0.0.1:8787\", http = (), service = \"main\")],\n\
             );\n\
             const w :Workerd.Worker = (\n  \
             modules = [(name = \"{module}\", esModule = embed \"{module}\")],\n  \
             compatibilityDate = \"2025-09-01\",\n\
             );\n"
        ),
    )
    .expect("writing a workerd config");
    config
}

/// A server's answer: its status and body, or why there is none.
type Answer = Result<(u16, Vec<u8>), String>;

/// One request, answered with its status and body (chunked bodies
/// decoded). As [`isola_bench::load::get`], too little for an HTTP client
/// dependency.
fn send(addr: SocketAddr, request: &Request) -> Answer {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .map_err(|e| format!("connecting: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let body = request.body.as_deref().unwrap_or("");
    let mut head = format!(
        "{} {} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        request.method,
        request.path,
        body.len()
    );
    if let Some(content_type) = request.content_type {
        write!(head, "content-type: {content_type}\r\n").unwrap();
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body.as_bytes()))
        .map_err(|e| format!("sending: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| format!("reading: {e}"))?;
    parse_response(&response)
}

fn parse_response(response: &[u8]) -> Answer {
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = String::from_utf8_lossy(&response[..split]).to_ascii_lowercase();
    let body = &response[split + 4..];
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {head:?}"))?;
    let chunked = head
        .lines()
        .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
    if !chunked {
        return Ok((status, body.to_vec()));
    }
    let (mut rest, mut out) = (body, Vec::new());
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("a chunk without its size line")?;
        let size_text = String::from_utf8_lossy(&rest[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| format!("chunk size {size_text:?}: {e}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok((status, out));
        }
        let chunk = rest.get(..size).ok_or("a chunk cut short")?;
        out.extend_from_slice(chunk);
        rest = rest.get(size + 2..).ok_or("a chunk without its CRLF")?;
    }
}

/// A wrk script sending `request`'s method, headers and body.
fn wrk_script(dir: &Path, index: usize, request: &Request) -> Option<PathBuf> {
    if request.method == "GET" {
        return None;
    }
    let mut script = format!("wrk.method = \"{}\"\n", request.method);
    if let Some(content_type) = request.content_type {
        writeln!(script, "wrk.headers[\"content-type\"] = \"{content_type}\"").unwrap();
    }
    if let Some(body) = &request.body {
        writeln!(script, "wrk.body = [==[{body}]==]").unwrap();
    }
    let path = dir.join(format!("js-workload-{index}.lua"));
    std::fs::write(&path, script).expect("writing a wrk script");
    Some(path)
}

/// What one workload gave: its rounds, or why it has none.
struct Measured {
    name: &'static str,
    worker: &'static str,
    /// What the servers answered (the same on all): status and body size.
    answer: Option<(u16, usize)>,
    rounds: Option<Rounds>,
}

/// What a run carries from worker to worker.
struct Run<'a> {
    setup: &'a Setup,
    workers_dir: PathBuf,
    duration: Duration,
    /// Numbers the wrk scripts.
    index: usize,
    notes: Vec<String>,
    measured: Vec<Measured>,
}

/// Run the section; `alone` is the note a run of this section alone
/// writes first (its command, date and versions).
pub fn run(setup: &Setup, duration: Duration, alone: Option<&str>, doc: &mut String) {
    eprintln!("JS workloads…");
    let load_before = load_average();
    let mut run = Run {
        setup,
        workers_dir: repo().join("bench/workers"),
        duration,
        index: 0,
        notes: Vec::new(),
        measured: Vec::new(),
    };
    if setup.workerd.is_none() {
        run.notes
            .push("workerd rows missing: workerd is not installed (WORKERD_BIN)".to_string());
    }
    match install_packages(&run.workers_dir) {
        Err(e) => run.notes.push(format!(
            "no rows: installing bench/workers' npm packages failed: {}",
            e.lines().next().unwrap_or("")
        )),
        Ok(()) => {
            for worker in workers() {
                run.worker(worker);
            }
        }
    }
    write(doc, alone, &run.measured, &run.notes, &load_before);
}

impl Run<'_> {
    /// Build `worker`, start it on every server, check and load each of
    /// its workloads.
    fn worker(&mut self, worker: Worker) {
        let (setup, work) = (self.setup, self.setup.work.path());
        let source = self.workers_dir.join(worker.file);
        let stem = worker.file.trim_end_matches(".js");
        eprintln!("  building bench/workers/{}…", worker.file);
        let fresh = work.join(format!("{stem}-jw.wasm"));
        let reuse = work.join(format!("{stem}-jw-reuse.wasm"));
        let built = try_build_js(&setup.isola, &source, &fresh, None, false)
            .and_then(|_| try_build_js(&setup.isola, &source, &reuse, None, true));
        if let Err(e) = built {
            self.notes.push(format!(
                "{}: no rows: `isola build` failed: {}",
                worker.file,
                e.lines().find(|l| l.contains("rror")).unwrap_or("")
            ));
            return;
        }
        let warm = work.join(format!("{stem}-jw-warm.wasm"));
        let warm_built = build_warm(setup, &source, &warm, &worker.requests);

        let mut servers: Vec<(&str, Server)> = vec![
            (
                FRESH,
                setup.isola_probing(
                    &format!("jw-{stem}"),
                    &fresh,
                    "",
                    &work.join(format!("jw-{stem}")),
                    worker.probe,
                ),
            ),
            (
                REUSE,
                setup.isola_probing(
                    &format!("jw-{stem}-reuse"),
                    &reuse,
                    "instance_reuse = 1000000",
                    &work.join(format!("jw-{stem}-reuse")),
                    worker.probe,
                ),
            ),
        ];
        match warm_built {
            Ok(()) => servers.push((
                WARM,
                setup.isola_probing(
                    &format!("jw-{stem}-warm"),
                    &warm,
                    "",
                    &work.join(format!("jw-{stem}-warm")),
                    worker.probe,
                ),
            )),
            Err(e) => self.notes.push(format!(
                "{}: no warm_up row: the build failed: {}",
                worker.file,
                e.lines().find(|l| l.contains("rror")).unwrap_or("")
            )),
        }
        if setup.workerd.is_some() {
            let module = format!("{stem}.bundle.mjs");
            match bundle_for_workerd(&self.workers_dir, &source, &work.join(&module)) {
                Ok(()) => {
                    let config = workerd_config(work, &format!("jw-{stem}"), &module);
                    let name = format!("jw-{stem}-workerd");
                    if let Some(server) = setup.workerd_with(&name, &config, &[], worker.probe) {
                        servers.push((WORKERD, server));
                    }
                }
                Err(e) => self.notes.push(format!(
                    "{}: no workerd rows: esbuild failed: {}",
                    worker.file,
                    e.lines().next().unwrap_or("")
                )),
            }
        }
        for request in &worker.requests {
            self.request(worker.file, &servers, request);
        }
    }

    /// Check that every server answers `request` alike, then load it.
    fn request(&mut self, file: &'static str, servers: &[(&str, Server)], request: &Request) {
        self.index += 1;
        let answers: Vec<(&str, Answer)> = servers
            .iter()
            .map(|(name, server)| (*name, send(server.addr, request)))
            .collect();
        let first = &answers[0].1;
        let agree = answers.iter().all(|(_, answer)| answer == first);
        let expected = matches!(first, Ok((status, _)) if *status == request.status);
        if !agree || !expected {
            let what: Vec<String> = answers
                .iter()
                .map(|(name, answer)| match answer {
                    Ok((status, body)) => format!(
                        "{name}: {status}, {} bytes {:?}",
                        body.len(),
                        String::from_utf8_lossy(&body[..body.len().min(120)])
                    ),
                    Err(e) => format!("{name}: {e}"),
                })
                .collect();
            self.notes.push(format!(
                "**{}: not measured, the answers differ or are not {}**: {}",
                request.name,
                request.status,
                what.join("; ")
            ));
            self.measured.push(Measured {
                name: request.name,
                worker: file,
                answer: None,
                rounds: None,
            });
            return;
        }
        let answer = first.as_ref().ok().map(|(s, b)| (*s, b.len()));
        if request.name == "JS hello" {
            assert!(
                matches!(first, Ok((_, body)) if body == HELLO.as_bytes()),
                "the hello's body: {first:?}"
            );
        }
        let workload = Workload {
            name: request.name,
            path: request.path,
            script: wrk_script(self.setup.work.path(), self.index, request),
            // Checked above, byte for byte across the servers.
            expect: "",
        };
        let list: Vec<(&str, &Server)> = servers.iter().map(|(n, s)| (*n, s)).collect();
        let rounds = Rounds::run(self.setup, &list, &workload, self.duration);
        self.measured.push(Measured {
            name: request.name,
            worker: file,
            answer,
            rounds: Some(rounds),
        });
    }
}

fn write(
    doc: &mut String,
    alone: Option<&str>,
    measured: &[Measured],
    notes: &[String],
    load_before: &str,
) {
    writeln!(doc, "## JS workloads, {CONNECTIONS} connections\n").unwrap();
    if let Some(alone) = alone {
        writeln!(doc, "{alone}\n").unwrap();
    }
    writeln!(
        doc,
        "The same sources (`bench/workers/`) on Isola, built by `isola build` (fresh instances, \
         and `--instance-reuse` served with `instance_reuse`) and with the benchmarked requests \
         as the worker's `warm_up` (fresh instances from a snapshot in which each ran once), and \
         on workerd, bundled by the \
         same esbuild with the same options into one module. `worker.js`: the hello; `hono.js`: \
         a Hono app (~20 routes in two routers; a timing header, CORS, secure headers and an \
         `/api` header on every request; the POST validates a JSON body against a schema and \
         answers 201 with the normalised user); `render.js`: a 500-row HTML table from template \
         literals, every field escaped; `hmac.js`: `crypto.subtle` SHA-256 and HMAC-SHA-256 \
         (key imported per request) of a 4 KiB body, answered as hex in JSON. Each request was \
         sent once to every server first and its status and body compared byte for byte: a \
         workload whose answers differ is not measured. Each row is the server's median of \
         {HELLO_ROUNDS} interleaved rounds (by req/s); \"÷ workerd\" is the median of the \
         per-round ratios of that server's req/s to workerd's. Load average (1 min, {} cores) \
         when the section started: {load_before}; when it ended: {}.\n\n\
         | workload | worker: status, body | server | req/s | p50 ms | p99 ms | server CPU µs/req | RSS MiB | ÷ workerd |\n\
         |---|---|---|---|---|---|---|---|---|",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    )
    .unwrap();
    let mut ratio_rows = String::new();
    for m in measured {
        let Some(rounds) = &m.rounds else {
            writeln!(
                doc,
                "| {} | `{}`: answers differ, not measured | | | | | | | |",
                m.name, m.worker
            )
            .unwrap();
            continue;
        };
        let answer = m.answer.map_or(String::new(), |(status, len)| {
            format!("`{}`: {status}, {len} B", m.worker)
        });
        for row in rounds.median_rows(m.name) {
            let ratio = match rounds.paired_ratios(&row.server, WORKERD) {
                Some((ratios, median)) if row.server != WORKERD => {
                    let cells: String = ratios.iter().map(|r| format!(" {r:.2}× |")).collect();
                    writeln!(
                        ratio_rows,
                        "| {} | {} |{cells} **{median:.2}×** |",
                        m.name, row.server
                    )
                    .unwrap();
                    format!("**{median:.2}×**")
                }
                _ => String::new(),
            };
            let r = &row.result;
            let errors = if r.errors > 0 {
                format!(" ({} errors)", r.errors)
            } else {
                String::new()
            };
            writeln!(
                doc,
                "| {} | {answer} | {} | {:.0}{errors} | {:.2} | {:.2} | {:.0} | {:.0} | {ratio} |",
                m.name,
                row.server,
                r.rps,
                r.p50_ms,
                r.p99_ms,
                r.cpu_us_per_request,
                r.rss_bytes as f64 / MIB,
            )
            .unwrap();
        }
    }
    if !ratio_rows.is_empty() {
        let rounds: String = (1..=HELLO_ROUNDS)
            .map(|r| format!(" round {r} |"))
            .collect();
        write!(
            doc,
            "\nIsola's req/s ÷ workerd's in the same round:\n\n\
             | workload | Isola server |{rounds} median |\n|---|---|{}---|\n{ratio_rows}",
            "---|".repeat(HELLO_ROUNDS)
        )
        .unwrap();
    }
    if measured.is_empty() {
        writeln!(doc, "\n(no workload ran)").unwrap();
    }
    writeln!(doc).unwrap();
    for note in notes {
        writeln!(doc, "- {note}").unwrap();
    }
    if !notes.is_empty() {
        writeln!(doc).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::parse_response;

    #[test]
    fn reads_plain_and_chunked_bodies() {
        let plain = b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok";
        assert_eq!(parse_response(plain).unwrap(), (201, b"ok".to_vec()));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                        3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), (200, b"abcde".to_vec()));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
    }
}
