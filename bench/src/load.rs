//! Servers under load: starting a server process pinned to a core, probing
//! it, driving it with `wrk`, and reading its CPU time and RSS from /proc.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The core servers run on, and the one `wrk` runs on, when `taskset` is
/// there: two cores, one each, so neither steals the other's CPU.
const SERVER_CORE: &str = "0";
pub const CLIENT_CORE: &str = "1";

/// Whether `taskset` can pin processes here (it needs at least two cores).
pub fn can_pin() -> bool {
    std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2)
        && Command::new("taskset")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// A free loopback port (bound, then released for the server to take).
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// A server process started by the benchmark; killed (by its PID, which is
/// ours) when dropped.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    /// From spawn to the first 200 on the probe path.
    pub started_in: Duration,
    log: PathBuf,
}

impl Server {
    /// Start `program args…` (pinned to the server core when `pin`), with
    /// stdout and stderr in `log`, and wait until `GET probe` answers 200.
    pub fn start(
        mut command: Command,
        addr: SocketAddr,
        probe: &str,
        log: &Path,
        pin: bool,
    ) -> Server {
        if pin {
            let program = command.get_program().to_owned();
            let args: Vec<_> = command.get_args().map(|a| a.to_owned()).collect();
            let envs: Vec<_> = command
                .get_envs()
                .map(|(k, v)| (k.to_owned(), v.map(|v| v.to_owned())))
                .collect();
            let dir = command.get_current_dir().map(Path::to_owned);
            let mut pinned = Command::new("taskset");
            pinned.args(["-c", SERVER_CORE]).arg(program).args(args);
            for (key, value) in envs {
                match value {
                    Some(value) => pinned.env(key, value),
                    None => pinned.env_remove(key),
                };
            }
            if let Some(dir) = dir {
                pinned.current_dir(dir);
            }
            command = pinned;
        }
        let out = std::fs::File::create(log).expect("creating a server log");
        let err = out.try_clone().expect("cloning a file handle");
        let started = Instant::now();
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {:?}: {e}", command.get_program()));
        let mut server = Server {
            child,
            addr,
            started_in: Duration::ZERO,
            log: log.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let Ok((200, _)) = get(addr, probe) {
                break;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "{} exited ({status}) before serving:\n{}",
                    server.name(),
                    server.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not answer 200 on {probe} within 180 s:\n{}",
                server.name(),
                server.log_text()
            );
            std::thread::sleep(Duration::from_micros(500));
        }
        server.started_in = started.elapsed();
        server
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn name(&self) -> String {
        self.log
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    pub fn log_text(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// User + system CPU time of the whole process so far.
    pub fn cpu_time(&self) -> Duration {
        cpu_time(self.pid())
    }

    /// Resident set size now, in bytes.
    pub fn rss(&self) -> u64 {
        rss(self.pid())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A one-shot `GET` returning the status and the raw response text. It is
/// only a readiness and sanity probe (status line plus a look at the
/// body), too little to justify an HTTP client dependency in the bench.
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {text:?}")))?;
    Ok((status, text))
}

fn clock_ticks_per_second() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100)
    })
}

/// utime + stime of process `pid` (all its threads), from /proc.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name: state is the first, so
    // utime and stime (fields 14 and 15 of proc(5)) are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|t| t.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    Duration::from_nanos(ticks * 1_000_000_000 / clock_ticks_per_second())
}

/// VmRSS of process `pid`, in bytes.
pub fn rss(pid: u32) -> u64 {
    proc_kib_field(&format!("/proc/{pid}/status"), "VmRSS:")
}

/// The `key  N kB` line of a /proc file, in bytes; 0 if it is missing.
fn proc_kib_field(path: &str, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Proportional set size of process `pid` (`Pss` of smaps_rollup), in
/// bytes. RSS counts a shared page once for every mapping of it: each
/// instance maps its component's memory image from the compile cache, so
/// the image pages an instance reads count again for every instance in
/// RSS, but once in all in PSS (they are one page-cache page). Walking
/// every page, it is too slow to sample as often as RSS.
pub fn pss(pid: u32) -> u64 {
    proc_kib_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:")
}

/// One load run's figures.
#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    pub requests: u64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Responses that were not 2xx/3xx plus socket errors.
    pub errors: u64,
    /// Server CPU time ÷ requests.
    pub cpu_us_per_request: f64,
    /// Server RSS right after the run.
    pub rss_bytes: u64,
    /// Highest server RSS seen during the run (sampled every 20 ms).
    pub peak_rss_bytes: u64,
    /// Highest server PSS seen during the run (sampled every 250 ms), when
    /// [`Load::sample_pss`] asked for it.
    pub peak_pss_bytes: Option<u64>,
}

/// Tracks the highest value of `read(pid)` on a thread of its own until
/// stopped.
struct PeakSampler {
    peak: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl PeakSampler {
    fn start(pid: u32, read: fn(u32) -> u64, every: Duration) -> PeakSampler {
        let peak = Arc::new(AtomicU64::new(read(pid)));
        let done = Arc::new(AtomicBool::new(false));
        let thread = {
            let (peak, done) = (peak.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    peak.fetch_max(read(pid), Ordering::Relaxed);
                    std::thread::sleep(every);
                }
            })
        };
        PeakSampler { peak, done, thread }
    }

    fn stop(self) -> u64 {
        self.done.store(true, Ordering::Relaxed);
        self.thread.join().expect("a memory sampler");
        self.peak.load(Ordering::Relaxed)
    }
}

/// How to drive a server with `wrk`.
pub struct Load<'a> {
    pub wrk: &'a Path,
    pub connections: u32,
    pub duration: Duration,
    /// A wrk Lua script (e.g. for a POST body).
    pub script: Option<&'a Path>,
    pub pin: bool,
    /// Also sample the server's PSS (costly: see [`pss`]).
    pub sample_pss: bool,
}

impl Load<'_> {
    /// Run `wrk` against `path` on `server` (after a one-second warm-up at
    /// the same concurrency) and measure the server meanwhile.
    pub fn run(&self, server: &Server, path: &str) -> LoadResult {
        self.wrk_once(server, path, Duration::from_secs(1));
        let cpu_before = server.cpu_time();
        let peak_rss = PeakSampler::start(server.pid(), rss, Duration::from_millis(20));
        let peak_pss = self
            .sample_pss
            .then(|| PeakSampler::start(server.pid(), pss, Duration::from_millis(250)));
        let output = self.wrk_once(server, path, self.duration);
        let peak_rss = peak_rss.stop();
        let peak_pss = peak_pss.map(PeakSampler::stop);
        let cpu = server.cpu_time().saturating_sub(cpu_before);
        let mut result = parse_wrk(&output);
        result.cpu_us_per_request = if result.requests == 0 {
            f64::NAN
        } else {
            cpu.as_secs_f64() * 1e6 / result.requests as f64
        };
        result.rss_bytes = server.rss();
        result.peak_rss_bytes = peak_rss.max(result.rss_bytes);
        result.peak_pss_bytes = peak_pss;
        result
    }

    fn wrk_once(&self, server: &Server, path: &str, duration: Duration) -> String {
        let mut command = if self.pin {
            let mut c = Command::new("taskset");
            c.args(["-c", CLIENT_CORE]).arg(self.wrk);
            c
        } else {
            Command::new(self.wrk)
        };
        command
            .arg("-t1")
            .arg(format!("-c{}", self.connections))
            .arg(format!("-d{}s", duration.as_secs().max(1)))
            .arg("--latency")
            .arg("--timeout")
            .arg("10s");
        if let Some(script) = self.script {
            command.arg("-s").arg(script);
        }
        let output = command.arg(server.url(path)).output().expect("running wrk");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "wrk failed: {}{}",
            text,
            String::from_utf8_lossy(&output.stderr)
        );
        text
    }
}

/// The figures of `wrk --latency` output.
pub fn parse_wrk(output: &str) -> LoadResult {
    let mut result = LoadResult::default();
    let mut in_distribution = false;
    for line in output.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        if line.starts_with("Latency Distribution") {
            in_distribution = true;
        } else if in_distribution && words.len() == 2 && words[0].ends_with('%') {
            let ms = parse_duration_ms(words[1]);
            match words[0] {
                "50%" => result.p50_ms = ms,
                "99%" => result.p99_ms = ms,
                _ => {}
            }
        } else if words.get(1) == Some(&"requests") && words.get(2) == Some(&"in") {
            in_distribution = false;
            result.requests = words[0].parse().unwrap_or(0);
        } else if let Some(rps) = line.strip_prefix("Requests/sec:") {
            result.rps = rps.trim().parse().unwrap_or(0.0);
        } else if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
            result.errors += n.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(errors) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            result.errors += errors
                .split(',')
                .filter_map(|e| e.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    result
}

/// `608.00us`, `1.23ms`, `2.00s`, `1.00m` → milliseconds.
fn parse_duration_ms(text: &str) -> f64 {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => number / 1e3,
        "ms" => number,
        "s" => number * 1e3,
        "m" => number * 60e3,
        "h" => number * 3600e3,
        _ => f64::NAN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_latency_output() {
        let output = "Running 10s test @ http://127.0.0.1:1/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.01ms  512.33us  14.20ms   90.00%
    Req/Sec    16.01k     1.02k   17.50k    80.00%
  Latency Distribution
     50%  608.00us
     75%    1.90ms
     90%    2.50ms
     99%    1.23s
  159321 requests in 10.00s, 20.51MB read
  Non-2xx or 3xx responses: 3
  Socket errors: connect 0, read 2, write 0, timeout 1
Requests/sec:  15932.10
Transfer/sec:      2.05MB
";
        let result = parse_wrk(output);
        assert_eq!(result.requests, 159_321);
        assert!((result.rps - 15_932.10).abs() < 1e-6);
        assert!((result.p50_ms - 0.608).abs() < 1e-9);
        assert!((result.p99_ms - 1230.0).abs() < 1e-9);
        assert_eq!(result.errors, 6);
    }
}
