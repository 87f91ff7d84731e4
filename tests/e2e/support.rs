//! Starting the real `isola` binary and talking to it over real HTTP.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn isola() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_isola"));
    command.env("ISOLA_LOG", "info");
    command
}

/// Run `isola <args>` to completion.
pub fn run_isola(args: &[&str]) -> Output {
    isola().args(args).output().expect("running isola")
}

pub fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The absolute path of `<relative>` in the repository, which must exist.
pub fn repo_path(relative: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative)
        .canonicalize()
        .unwrap_or_else(|e| panic!("{relative}: {e}"))
        .display()
        .to_string()
}

/// The absolute path of `tests/js/<relative>`, a JavaScript test worker.
pub fn js_fixture(relative: &str) -> String {
    repo_path(&format!("tests/js/{relative}"))
}

fn is_access_line_of(line: &str, id: &str) -> bool {
    line.contains("isola::access") && line.contains(id)
}

/// The number in a log line's `name=N` field.
pub fn log_field(line: &str, name: &str) -> Option<u64> {
    let tail = &line[line.find(&format!(" {name}="))? + name.len() + 2..];
    tail[..tail.find(' ').unwrap_or(tail.len())].parse().ok()
}

/// A scratch directory holding an `isola.toml`.
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    pub fn new(config: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("isola.toml"), config).expect("writing isola.toml");
        Project { dir }
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("isola.toml")
    }

    /// Fire `worker`'s first cron once with `isola trigger cron`.
    pub fn trigger_cron(&self, worker: &str) -> Output {
        let config = self.config();
        run_isola(&[
            "trigger",
            "--config",
            config.to_str().unwrap(),
            "cron",
            worker,
        ])
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn serve(&self) -> Server {
        Server::start(&[
            "serve",
            self.config().to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
    }
}

/// A `[[worker]]` table for a component at an absolute path.
pub fn worker(name: &str, component: &str, routes: &[&str]) -> String {
    let routes: Vec<String> = routes.iter().map(|r| format!("{r:?}")).collect();
    format!(
        "[[worker]]\nname = {name:?}\ncomponent = {component:?}\nroutes = [{}]\n",
        routes.join(", ")
    )
}

/// A running `isola serve` or `isola run`, killed when dropped.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    logs: Arc<Mutex<String>>,
    /// Lines on stdout after the first.
    stdout: Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub fn start(args: &[&str]) -> Server {
        Self::spawn(isola().args(args))
    }

    /// Start in `dir` with extra host environment variables.
    pub fn start_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut command = isola();
        command
            .current_dir(dir)
            .args(args)
            .envs(env.iter().copied());
        Self::spawn(&mut command)
    }

    fn spawn(command: &mut Command) -> Server {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting isola");
        let logs = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut logs = sink.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        stdout
            .read_line(&mut first)
            .expect("reading isola's stdout");
        let Some(addr) = first.trim().strip_prefix("listening on http://") else {
            // It may still be running (a wrong first line): stop it.
            let _ = child.kill();
            let status = child.wait().ok();
            std::thread::sleep(Duration::from_millis(100));
            panic!(
                "isola did not start (stdout {first:?}, exit {status:?}); logs:\n{}",
                logs.lock().unwrap()
            );
        };
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Server {
            addr: addr.parse().expect("a socket address"),
            child,
            logs,
            stdout: lines,
        }
    }

    /// The admin listener's address, from the `admin listening on` line.
    pub fn admin_addr(&self) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(addr) = self
                .stdout
                .lock()
                .unwrap()
                .iter()
                .find_map(|l| l.strip_prefix("admin listening on http://"))
            {
                return addr.parse().expect("a socket address");
            }
            assert!(
                Instant::now() < deadline,
                "no `admin listening on` line; logs:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// The logs once every line already logged has been written out: the
    /// server writes info lines in batches, at most 50 ms apart. For
    /// counting lines; [`Server::wait_for_log`] waits for one.
    pub fn flushed_logs(&self) -> String {
        std::thread::sleep(Duration::from_millis(250));
        self.logs()
    }

    /// Wait until the logs contain `needle` (logging is asynchronous to the
    /// responses), or panic after a few seconds.
    pub fn wait_for_log(&self, needle: &str) -> String {
        self.wait_for_log_within(needle, Duration::from_secs(10))
    }

    /// [`Server::wait_for_log`] with a deadline of its own.
    pub fn wait_for_log_within(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let logs = self.logs();
            if logs.contains(needle) {
                return logs;
            }
            assert!(
                Instant::now() < deadline,
                "log never showed {needle:?}:\n{logs}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The fuel (wasm instructions) on the access line of request `id`.
    pub fn fuel_of(&self, id: &str) -> u64 {
        let logs = self.wait_for_access_line(id);
        let line = logs.lines().find(|l| is_access_line_of(l, id)).unwrap();
        log_field(line, "fuel").unwrap_or_else(|| panic!("no fuel on {line}"))
    }

    /// Wait for request `id`'s access line, which the server writes once
    /// the request's guest run is over: an instance kept by
    /// `instance_reuse` is back among the idle ones by then (the client
    /// can have the whole response a little earlier).
    pub fn wait_for_access_line(&self, id: &str) -> String {
        self.wait_for_line(|l| is_access_line_of(l, id))
    }

    /// Wait until some log line satisfies `matches`, or panic after a few
    /// seconds.
    pub fn wait_for_line(&self, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let logs = self.logs();
            if logs.lines().any(&matches) {
                return logs;
            }
            assert!(Instant::now() < deadline, "no matching log line:\n{logs}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send SIGTERM, as an init system would.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success());
    }

    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for isola") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "isola did not exit in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop with SIGTERM and return the complete logs.
    pub fn stop(mut self) -> String {
        self.terminate();
        let status = self.wait(Duration::from_secs(20));
        assert!(status.success(), "isola exited with {status}");
        // Let the stderr thread drain what was written before exit.
        std::thread::sleep(Duration::from_millis(50));
        self.logs()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client")
}

/// GET a URL and return status, `x-request-id` and body text.
pub async fn get(client: &reqwest::Client, url: &str) -> (u16, Option<String>, String) {
    let response = client.get(url).send().await.expect("request sent");
    let status = response.status().as_u16();
    let id = response
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, id, response.text().await.expect("body read"))
}

pub fn cache_entries(state_dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(state_dir.join("cache")) {
        Ok(entries) => entries
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// A real HTTP server standing in for an upstream or an origin. It
/// remembers the `Host` header and path of each request (`host path`),
/// when each path arrived, and which paths it has answered.
///
/// A request to `/gate/<label><n>/...` (`/gate/10/...`, `/gate/a5/...`)
/// is held until `n` requests under that same `/gate/<label><n>/` have
/// arrived: answered at all, they were all in flight at
/// once. (After 20 s it is answered anyway, so that nothing hangs, and
/// counted in [`Upstream::gate_timeouts`].)
pub struct Upstream {
    pub addr: SocketAddr,
    pub hosts: Arc<Mutex<Vec<String>>>,
    pub arrivals: Arc<Mutex<Vec<(String, Instant)>>>,
    seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

/// What an [`Upstream`] records.
#[derive(Default)]
struct Seen {
    hosts: Arc<Mutex<Vec<String>>>,
    arrivals: Arc<Mutex<Vec<(String, Instant)>>>,
    answered: Mutex<Vec<String>>,
    gate_timeouts: Mutex<Vec<String>>,
}

impl Upstream {
    /// Answers `upstream says hi` to everything, after `delay`.
    pub async fn start(delay: Duration) -> Upstream {
        Self::serve(delay, false).await
    }

    /// Answers with what it received: method, path and query, the `x-test`
    /// header and the body.
    pub async fn echo() -> Upstream {
        Self::serve(Duration::ZERO, true).await
    }

    async fn serve(delay: Duration, echo: bool) -> Upstream {
        use hyper_util::rt::TokioIo;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let recorder = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let recorder = recorder.clone();
                let service = hyper::service::service_fn(move |request| {
                    let recorder = recorder.clone();
                    async move {
                        let reply = answer(request, &recorder, delay, echo).await;
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(reply)),
                        ))
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            hosts: seen.hosts.clone(),
            arrivals: seen.arrivals.clone(),
            seen,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Paths seen so far.
    pub fn paths(&self) -> Vec<String> {
        self.arrivals
            .lock()
            .unwrap()
            .iter()
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// Paths answered so far (after their delay or gate).
    pub fn answered(&self) -> Vec<String> {
        self.seen.answered.lock().unwrap().clone()
    }

    /// Gated paths answered because their gate timed out: their `n`
    /// requests were never all in flight at once.
    pub fn gate_timeouts(&self) -> Vec<String> {
        self.seen.gate_timeouts.lock().unwrap().clone()
    }

    /// Wait (ten seconds at most) until `path` arrives; return when it did.
    pub async fn wait_for(&self, path: &str) -> Instant {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let arrived = self
                .arrivals
                .lock()
                .unwrap()
                .iter()
                .find(|(p, _)| p == path)
                .map(|(_, at)| *at);
            if let Some(at) = arrived {
                return at;
            }
            assert!(
                Instant::now() < deadline,
                "{path} never reached the upstream: {:?}",
                self.paths()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// For `/gate/<label><n>/...`: its prefix `/gate/<label><n>/` and `n`.
fn gate(path: &str) -> Option<(String, usize)> {
    let name = path.strip_prefix("/gate/")?.split('/').next()?;
    let label = name.trim_end_matches(|c: char| c.is_ascii_digit());
    Some((format!("/gate/{name}/"), name[label.len()..].parse().ok()?))
}

async fn answer(
    request: hyper::Request<hyper::body::Incoming>,
    seen: &Seen,
    delay: Duration,
    echo: bool,
) -> String {
    use http_body_util::BodyExt;
    let path = request.uri().to_string();
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap_or("").to_owned())
            .unwrap_or_default()
    };
    let (host, test) = (header("host"), header("x-test"));
    seen.hosts.lock().unwrap().push(format!("{host} {path}"));
    seen.arrivals
        .lock()
        .unwrap()
        .push((path.clone(), Instant::now()));
    if let Some((prefix, n)) = gate(&path) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let arrived = seen
                .arrivals
                .lock()
                .unwrap()
                .iter()
                .filter(|(p, _)| p.starts_with(&prefix))
                .count();
            if arrived >= n {
                break;
            }
            if Instant::now() >= deadline {
                seen.gate_timeouts.lock().unwrap().push(path.clone());
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    tokio::time::sleep(delay).await;
    if !echo {
        seen.answered.lock().unwrap().push(path.clone());
        return "upstream says hi".to_owned();
    }
    let method = request.method().clone();
    let body = request.into_body().collect().await.unwrap().to_bytes();
    seen.answered.lock().unwrap().push(path.clone());
    format!(
        "origin got {method} {path}\nx-test={test}\nbody={}",
        String::from_utf8_lossy(&body)
    )
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `isola tail` as a child process; its stdout lines collected.
pub struct Tail {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Tail {
    pub fn start(admin: std::net::SocketAddr, args: &[&str]) -> Tail {
        let mut child = isola()
            .args(["tail", "--admin", &admin.to_string()])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting isola tail");
        // Connected once it says so on stderr.
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut first = String::new();
        stderr.read_line(&mut first).unwrap();
        assert!(first.starts_with("tailing "), "{first:?}");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Tail { child, lines }
    }

    /// Wait until `n` lines arrived (then a little longer, for extra ones).
    pub fn lines(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.lines.lock().unwrap().len() < n {
            assert!(
                Instant::now() < deadline,
                "only {:?}",
                self.lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        self.lines.lock().unwrap().clone()
    }
    /// The event (with `--format json`) of the request to `path`, waiting
    /// ten seconds at most.
    pub fn event_for(&self, path: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self.lines.lock().unwrap().iter().find_map(|line| {
                let event: serde_json::Value = serde_json::from_str(line).ok()?;
                (event["path"] == path).then_some(event)
            });
            if let Some(event) = found {
                return event;
            }
            assert!(
                Instant::now() < deadline,
                "no tail event for {path}: {:?}",
                self.lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The resident memory of process `pid`, in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Milliseconds since the Unix epoch of a log line's leading timestamp
/// (`2026-01-02T03:04:05.678901Z`, as the server writes them).
pub fn log_time_ms(line: &str) -> Option<u64> {
    let stamp = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut ymd = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, d) = (ymd.next()?.ok()?, ymd.next()?.ok()?, ymd.next()?.ok()?);
    let (hms, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let mut parts = hms.split(':').map(|p| p.parse::<i64>());
    let (h, min, sec) = (
        parts.next()?.ok()?,
        parts.next()?.ok()?,
        parts.next()?.ok()?,
    );
    let millis: i64 = format!("{fraction:0<3}")[..3].parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from((((days * 24 + h) * 60 + min) * 60 + sec) * 1000 + millis).ok()
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
