//! `isola.toml`: its schema, validation and defaults.
//!
//! Every error names the file, the line and column, and the key at fault:
//! an unknown key, a bad route, a missing component. Nothing is silently
//! ignored: a key Isola does not implement is an unknown key.

pub mod js_build;
pub mod outbound;
pub mod route;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

pub use js_build::{JsBuild, ModuleRule, ModuleType};
pub use outbound::OutboundRule;
pub use route::{RouteError, RoutePattern};

/// Default address of the request listener.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";
/// Default directory for the compile cache and embedded state, relative to
/// the config file.
pub const DEFAULT_STATE_DIR: &str = ".isola";

/// A configuration error, located in its file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line and column; 0 when the error has no position (e.g. the
    /// file cannot be read).
    pub line: usize,
    pub column: usize,
    /// The key at fault, as a dotted path such as `worker[0].routes`.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The validated configuration of a server.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from (or a description for built-in configs).
    pub source: PathBuf,
    pub server: ServerConfig,
    pub backends: BackendsConfig,
    pub workers: Vec<WorkerConfig>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Absolute, or relative to the current directory.
    pub state_dir: PathBuf,
    /// Compiled components and Cranelift's incremental cache; `None`:
    /// `<state_dir>/cache`. Several state dirs may share one.
    pub cache_dir: Option<PathBuf>,
    /// Size of the instance pool: the most requests in flight at once.
    pub max_instances: u32,
    /// Fuel per millisecond of `cpu_ms`; `None` uses the calibrated default.
    pub fuel_per_ms: Option<u64>,
    /// Largest request head (request line and headers) accepted; over → 431.
    pub max_header_bytes: usize,
    /// Largest request body accepted; over → 413.
    pub max_body_bytes: u64,
    /// A client must finish sending its request head within this time.
    pub header_timeout_ms: u64,
    /// Add `Server-Timing: cpu;dur=…, wall;dur=…` to responses.
    pub server_timing: bool,
    /// On shutdown, how long in-flight requests and their background
    /// (waitUntil) work may take before they are cut.
    pub shutdown_grace_ms: u64,
    /// Reported to guests in their request info (`request.cf.colo`).
    pub colo: Option<String>,
    /// Reported to guests in their request info (`request.cf.country`).
    pub country: Option<String>,
    /// A header set by a trusted proxy in front of Isola that carries the
    /// real client address. Off by default: clients could forge it.
    pub trusted_client_ip_header: Option<String>,
    /// The admin listener (operator endpoints such as `POST /__scheduled`);
    /// off unless configured.
    pub admin: Option<SocketAddr>,
    /// Bearer token every admin call must carry; required when `admin` is
    /// not a loopback address.
    pub admin_token: Option<Secret>,
}

impl ServerConfig {
    /// Where compiled components are cached.
    pub fn cache_dir(&self) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("cache"))
    }

    /// Where the JavaScript worker `name` (`main = "…"`) is built to.
    pub fn js_build_path(&self, name: &str) -> PathBuf {
        self.state_dir.join("build").join(format!("{name}.wasm"))
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            cache_dir: None,
            max_instances: 1000,
            fuel_per_ms: None,
            max_header_bytes: 8 * 1024,
            max_body_bytes: 100 << 20,
            header_timeout_ms: 10_000,
            server_timing: true,
            shutdown_grace_ms: 30_000,
            colo: None,
            country: None,
            trusted_client_ip_header: None,
            admin: None,
            admin_token: None,
        }
    }
}

/// A service binding: `env.service(binding)` reaches worker `service`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceBinding {
    pub binding: String,
    pub service: String,
}

/// A secret's value. It prints as `[redacted]` so it cannot reach a log
/// line through `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself, for the guest and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// `kv_namespaces` entry: workers binding the same `id` share the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvBinding {
    pub binding: String,
    pub id: String,
}

/// `d1_databases` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct D1Binding {
    pub binding: String,
    pub database_name: String,
}

/// `r2_buckets` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct R2Binding {
    pub binding: String,
    pub bucket_name: String,
}

/// `analytics_engine_datasets` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnalyticsBinding {
    pub binding: String,
    pub dataset: String,
}

/// `queues.producers` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueProducer {
    pub binding: String,
    pub queue: String,
}

/// `queues.consumers` entry (Wrangler's keys and defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConsumer {
    pub queue: String,
    /// Most messages per batch (1..=100, default 10).
    pub max_batch_size: u32,
    /// Longest wait for a batch to fill, in seconds (0..=60, default 5).
    pub max_batch_timeout: u64,
    /// Deliveries after the first before a message is dead-lettered
    /// (0..=100, default 3).
    pub max_retries: u32,
    pub dead_letter_queue: Option<String>,
    /// Batches of this queue in flight at once (1..=250, default 1).
    pub max_concurrency: u32,
    /// Delay before a retried message is delivered again, in seconds
    /// (default 0); a retry's own delay wins.
    pub retry_delay: u64,
}

/// A validated cron expression: five fields (minute hour day month
/// weekday, UTC) or, as an Isola extension, six with seconds first.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    pub expression: String,
    pub schedule: croner::Cron,
}

impl PartialEq for CronSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.expression == other.expression
    }
}

impl CronSchedule {
    pub fn parse(expression: &str) -> Result<CronSchedule, String> {
        let fields = expression.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(format!(
                "`{expression}` has {fields} fields; a cron expression has 5 (minute hour day month weekday) or 6 (seconds first)"
            ));
        }
        let parser = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .year(croner::parser::Year::Disallowed)
            .build();
        let schedule = parser
            .parse(expression)
            .map_err(|e| format!("`{expression}` is not a valid cron expression: {e}"))?;
        Ok(CronSchedule {
            expression: expression.to_owned(),
            schedule,
        })
    }
}

/// `[backends]`: where binding state lives. A `type` Isola does not
/// implement is an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendsConfig {
    /// Size cap of the Cache API's in-memory store (LRU beyond it).
    pub cache_max_bytes: u64,
    pub kv: Backend,
    pub sql: Backend,
    pub blob: Backend,
    pub cache: Backend,
    pub queue: Backend,
}

impl Default for BackendsConfig {
    fn default() -> Self {
        BackendsConfig {
            cache_max_bytes: 64 << 20,
            kv: Backend::Embedded,
            sql: Backend::Embedded,
            blob: Backend::Embedded,
            cache: Backend::Embedded,
            queue: Backend::Embedded,
        }
    }
}

impl BackendsConfig {
    /// Whether any binding state lives outside this process's state dir.
    pub fn is_distributed(&self) -> bool {
        [&self.kv, &self.sql, &self.blob, &self.cache, &self.queue]
            .iter()
            .any(|b| !matches!(b, Backend::Embedded))
    }
}

/// One `[backends]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// SQLite, the filesystem or memory, under `state_dir`.
    Embedded,
    /// `redis://[user:password@]host:port[/db]` (kv, cache, queue).
    Redis { url: String },
    /// `postgres://user:password@host:port/database` (sql).
    Postgres { url: String },
    /// One S3 bucket (blob); credentials come from the environment
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`).
    S3 {
        /// `http(s)://host:port` of an S3-compatible service; AWS when unset.
        endpoint: Option<String>,
        region: String,
        bucket: String,
    },
}

/// Per-request limits of a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// CPU time budget, enforced with fuel.
    pub cpu_ms: u64,
    /// Wall-clock deadline, enforced with epochs and host-side timeouts.
    pub wall_ms: u64,
    /// Largest linear memory.
    pub memory_mb: u64,
    /// Outbound fetches (and binding calls) per request.
    pub subrequests: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            cpu_ms: 50,
            wall_ms: 30_000,
            memory_mb: 128,
            subrequests: 50,
        }
    }
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub name: String,
    /// Path of the component, resolved against the config file's directory.
    /// For a JavaScript worker (`main`), where its build will be written.
    pub component: PathBuf,
    /// A JavaScript worker's entry module (`main = "src/worker.js"`),
    /// resolved like `component`. `isola serve`, `dev` and `check` build it
    /// into `component` before loading.
    pub main: Option<PathBuf>,
    pub routes: Vec<RoutePattern>,
    pub vars: BTreeMap<String, String>,
    /// Values from `ISOLA_SECRET_<NAME>` or `.dev.vars` beside the config.
    pub secrets: BTreeMap<String, Secret>,
    pub kv_namespaces: Vec<KvBinding>,
    pub d1_databases: Vec<D1Binding>,
    pub r2_buckets: Vec<R2Binding>,
    pub analytics_engine_datasets: Vec<AnalyticsBinding>,
    pub queue_producers: Vec<QueueProducer>,
    pub queue_consumers: Vec<QueueConsumer>,
    /// `triggers.crons`.
    pub crons: Vec<CronSchedule>,
    /// CPU budget of a scheduled run or a queue batch (`triggers.cpu_ms`);
    /// `limits.cpu_ms` when unset.
    pub trigger_cpu_ms: Option<u64>,
    pub limits: Limits,
    /// Where the worker may send outbound HTTP requests; see
    /// [`OutboundRule`]. Empty: nowhere.
    pub allowed_outbound_hosts: Vec<OutboundRule>,
    /// Send every outbound request to this `host:port` over plain HTTP
    /// instead, keeping its `Host` header and path (tests, staging).
    pub outbound_override: Option<String>,
    /// Add `Server-Timing` to this worker's responses.
    pub server_timing: bool,
    /// Fuel per millisecond of `cpu_ms`; `None` uses the calibrated default.
    pub fuel_per_ms: Option<u64>,
    /// Where a failed request goes after `pass-through-on-exception`:
    /// `http(s)://host[:port]`.
    pub origin: Option<String>,
    /// Other workers this one may call in-process.
    pub services: Vec<ServiceBinding>,
    /// Requests one instance may serve, one after another and never at
    /// once (opt-in throughput, mostly for JS workers, whose instances cost
    /// the most to make); 0 or 1: a fresh instance per request, the default.
    pub instance_reuse: u32,
    /// How `isola dev` builds the component from its sources.
    pub build: Option<BuildConfig>,
    /// How a JavaScript worker (`main`) is bundled: `alias`, `define`,
    /// `rules`.
    pub js_build: JsBuild,
    /// Checked and kept; Isola has one behaviour, not dated ones.
    pub compatibility_date: Option<String>,
    /// Checked and kept: Node.js modules (`nodejs_compat`) are always
    /// available, and no flag changes anything.
    pub compatibility_flags: Vec<String>,
}

/// `build = { command = "...", watch = ["src/**/*.rs"], workdir = "." }`:
/// the command that makes the worker's component, which `isola dev` runs at
/// start and whenever a watched file changes.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildConfig {
    /// Run with `sh -c` in `workdir`; `None` only watches (workers whose
    /// build happens on load, such as JS workers).
    pub command: Option<String>,
    /// Glob patterns relative to `workdir`; a change to a matching file
    /// rebuilds. Empty: only the config file is watched.
    pub watch: Vec<String>,
    /// Resolved against the config file's directory (default: that directory).
    pub workdir: PathBuf,
}

impl WorkerConfig {
    /// A worker with default limits, no vars and no routes.
    pub fn new(name: impl Into<String>, component: impl Into<PathBuf>) -> Self {
        WorkerConfig {
            name: name.into(),
            component: component.into(),
            main: None,
            routes: Vec::new(),
            vars: BTreeMap::new(),
            secrets: BTreeMap::new(),
            kv_namespaces: Vec::new(),
            d1_databases: Vec::new(),
            r2_buckets: Vec::new(),
            analytics_engine_datasets: Vec::new(),
            queue_producers: Vec::new(),
            queue_consumers: Vec::new(),
            crons: Vec::new(),
            trigger_cpu_ms: None,
            limits: Limits::default(),
            allowed_outbound_hosts: Vec::new(),
            outbound_override: None,
            server_timing: true,
            fuel_per_ms: None,
            origin: None,
            services: Vec::new(),
            instance_reuse: 0,
            build: None,
            js_build: JsBuild::default(),
            compatibility_date: None,
            compatibility_flags: Vec::new(),
        }
    }
}

impl Config {
    /// The configuration of `isola run`: one component on every path.
    pub fn single(component: PathBuf, server: ServerConfig) -> Self {
        let name = component
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "worker".into());
        let mut worker = WorkerConfig::new(name, component);
        worker.routes = vec![RoutePattern::parse("/*").expect("valid pattern")];
        worker.server_timing = server.server_timing;
        worker.fuel_per_ms = server.fuel_per_ms;
        Config {
            source: PathBuf::from("<command line>"),
            server,
            backends: BackendsConfig::default(),
            workers: vec![worker],
        }
    }

    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            line: 0,
            column: 0,
            key: None,
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(path, &text)
    }

    /// Validate config text; `path` names it in errors and anchors relative
    /// paths.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let locate = |span: Option<Range<usize>>, key: Option<String>, message: String| {
            let (line, column) = span.map_or((0, 0), |s| line_col(text, s.start));
            ConfigError {
                file: path.to_owned(),
                line,
                column,
                key,
                message,
            }
        };
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| locate(e.span(), None, e.message().trim().to_owned()))?;
        let base = path.parent().unwrap_or(Path::new(""));

        let mut server = ServerConfig::default();
        if let Some(listen) = raw.server.listen {
            server.listen = listen.get_ref().parse().map_err(|_| {
                locate(
                    Some(listen.span()),
                    Some("server.listen".into()),
                    format!(
                        "`{}` is not an address such as 127.0.0.1:8787",
                        listen.get_ref()
                    ),
                )
            })?;
        }
        server.state_dir = base.join(raw.server.state_dir.unwrap_or(DEFAULT_STATE_DIR.into()));
        server.cache_dir = raw.server.cache_dir.as_ref().map(|dir| base.join(dir));
        // Counts and budgets where zero would make every request fail.
        let positive = |value: Spanned<u64>, key: String| {
            if *value.get_ref() == 0 {
                Err(locate(
                    Some(value.span()),
                    Some(key),
                    "must be at least 1".into(),
                ))
            } else {
                Ok(value.into_inner())
            }
        };
        if let Some(n) = raw.server.max_instances {
            let span = n.span();
            server.max_instances = u32::try_from(positive(n, "server.max_instances".into())?)
                .ok()
                .filter(|&n| n <= 1_000_000)
                .ok_or_else(|| {
                    locate(
                        Some(span),
                        Some("server.max_instances".into()),
                        "must be at most 1000000".into(),
                    )
                })?;
        }
        if let Some(fuel) = raw.server.fuel_per_ms {
            server.fuel_per_ms = Some(positive(fuel, "server.fuel_per_ms".into())?);
        }
        if let Some(bytes) = raw.server.max_header_bytes {
            if !(1024..=16 * 1024).contains(bytes.get_ref()) {
                return Err(locate(
                    Some(bytes.span()),
                    Some("server.max_header_bytes".into()),
                    "must be between 1024 and 16384".into(),
                ));
            }
            server.max_header_bytes = bytes.into_inner();
        }
        if let Some(mb) = raw.server.max_body_mb {
            server.max_body_bytes = mb.saturating_mul(1 << 20);
        }
        if let Some(ms) = raw.server.header_timeout_ms {
            server.header_timeout_ms = ms;
        }
        if let Some(on) = raw.server.server_timing {
            server.server_timing = on;
        }
        if let Some(ms) = raw.server.shutdown_grace_ms {
            server.shutdown_grace_ms = ms;
        }
        server.colo = raw.server.colo;
        server.country = raw.server.country;
        if let Some(header) = raw.server.trusted_client_ip_header {
            let valid = !header.get_ref().is_empty()
                && header
                    .get_ref()
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid {
                return Err(locate(
                    Some(header.span()),
                    Some("server.trusted_client_ip_header".into()),
                    format!("`{}` is not a header name", header.get_ref()),
                ));
            }
            server.trusted_client_ip_header = Some(header.into_inner().to_ascii_lowercase());
        }
        if let Some(admin) = &raw.server.admin {
            let addr: SocketAddr = admin.get_ref().parse().map_err(|_| {
                locate(
                    Some(admin.span()),
                    Some("server.admin".into()),
                    format!(
                        "`{}` is not an address such as 127.0.0.1:8788",
                        admin.get_ref()
                    ),
                )
            })?;
            if !addr.ip().is_loopback() && raw.server.admin_token.is_none() {
                return Err(locate(
                    Some(admin.span()),
                    Some("server.admin".into()),
                    "an admin listener off loopback needs `admin_token`".into(),
                ));
            }
            server.admin = Some(addr);
        }
        server.admin_token = raw.server.admin_token.clone().map(Secret);
        let server_override =
            match &raw.server.outbound_override {
                Some(o) => Some(parse_override(o).map_err(|m| {
                    locate(Some(o.span()), Some("server.outbound_override".into()), m)
                })?),
                None => None,
            };

        if raw.worker.is_empty() {
            return Err(locate(None, None, "no [[worker]] is configured".into()));
        }
        let single = raw.worker.len() == 1;
        let mut workers = Vec::new();
        let mut names = HashMap::new();
        let mut route_owner: HashMap<String, String> = HashMap::new();
        let mut service_refs = Vec::new();
        // Each queue has at most one consumer.
        let mut consumer_owner: HashMap<String, String> = HashMap::new();
        // `.dev.vars`, read when the first secret is looked up.
        let mut dev_vars: Option<BTreeMap<String, String>> = None;
        for (i, w) in raw.worker.into_iter().enumerate() {
            let key = |field: &str| Some(format!("worker[{i}].{field}"));
            let name = w.name.get_ref().clone();
            let valid_name = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid_name {
                return Err(locate(
                    Some(w.name.span()),
                    key("name"),
                    format!("`{name}` is not a valid worker name (letters, digits, `-`, `_`)"),
                ));
            }
            if names.insert(name.clone(), i).is_some() {
                return Err(locate(
                    Some(w.name.span()),
                    key("name"),
                    format!("worker `{name}` is defined twice"),
                ));
            }
            let instance_reuse = w.instance_reuse.as_ref().map_or(0, |r| *r.get_ref());
            let build = match &w.build {
                Some(b) => {
                    if let Some(command) = &b.command
                        && command.get_ref().trim().is_empty()
                    {
                        return Err(locate(
                            Some(command.span()),
                            key("build.command"),
                            "the build command is empty".into(),
                        ));
                    }
                    for pattern in &b.watch {
                        if pattern.get_ref().trim().is_empty() {
                            return Err(locate(
                                Some(pattern.span()),
                                key("build.watch"),
                                "an empty watch pattern".into(),
                            ));
                        }
                    }
                    Some(BuildConfig {
                        command: b.command.as_ref().map(|c| c.get_ref().clone()),
                        watch: b.watch.iter().map(|p| p.get_ref().clone()).collect(),
                        workdir: base.join(b.workdir.as_deref().unwrap_or(".")),
                    })
                }
                None => None,
            };
            let (component, main) = match (&w.component, &w.main) {
                (Some(component), None) => {
                    let path = base.join(component.get_ref());
                    // A worker with a build command may not be built yet
                    // (`isola dev` builds it first; `serve` reports it
                    // missing on load).
                    if build.is_none() && !path.is_file() {
                        return Err(locate(
                            Some(component.span()),
                            key("component"),
                            format!("component file not found: {}", path.display()),
                        ));
                    }
                    (path, None)
                }
                (None, Some(main)) => {
                    let path = base.join(main.get_ref());
                    if !path.is_file() {
                        return Err(locate(
                            Some(main.span()),
                            key("main"),
                            format!("worker module not found: {}", path.display()),
                        ));
                    }
                    // Built by the CLI before loading; one file per worker.
                    let built = server.js_build_path(&name);
                    (built, Some(path))
                }
                (Some(_), Some(main)) => {
                    return Err(locate(
                        Some(main.span()),
                        key("main"),
                        "give either `component` (a .wasm) or `main` (a JavaScript module), not both"
                            .into(),
                    ));
                }
                (None, None) => {
                    return Err(locate(
                        Some(w.name.span()),
                        key("component"),
                        "missing `component` (a .wasm) or `main` (a JavaScript module)".into(),
                    ));
                }
            };
            let routes = match w.routes {
                Some(routes) => routes
                    .into_iter()
                    .map(|r| {
                        let pattern = RoutePattern::parse(r.get_ref())
                            .map_err(|e| locate(Some(r.span()), key("routes"), e.to_string()))?;
                        if let Some(other) = route_owner.insert(r.get_ref().clone(), name.clone()) {
                            return Err(locate(
                                Some(r.span()),
                                key("routes"),
                                format!(
                                    "route `{}` is already used by worker `{other}`",
                                    r.get_ref()
                                ),
                            ));
                        }
                        Ok(pattern)
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                // A lone worker serves everything, as with `wrangler dev`.
                None if single => vec![RoutePattern::parse("/*").expect("valid pattern")],
                None => Vec::new(),
            };
            let mut limits = Limits::default();
            for (field, value, slot) in [
                ("cpu_ms", w.cpu_ms, &mut limits.cpu_ms),
                ("wall_ms", w.wall_ms, &mut limits.wall_ms),
                ("memory_mb", w.memory_mb, &mut limits.memory_mb),
            ] {
                if let Some(value) = value {
                    *slot = positive(value, format!("worker[{i}].{field}"))?;
                }
            }
            if let Some(n) = w.subrequests {
                limits.subrequests = n;
            }
            let allowed_outbound_hosts = w
                .allowed_outbound_hosts
                .iter()
                .map(|rule| {
                    OutboundRule::parse(rule.get_ref())
                        .map_err(|m| locate(Some(rule.span()), key("allowed_outbound_hosts"), m))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let outbound_override = match &w.outbound_override {
                Some(o) => Some(
                    parse_override(o)
                        .map_err(|m| locate(Some(o.span()), key("outbound_override"), m))?,
                ),
                None => server_override.clone(),
            };
            let origin = match &w.origin {
                Some(o) => {
                    let text = o.get_ref().trim_end_matches('/');
                    let valid = ["http://", "https://"].iter().any(|scheme| {
                        text.strip_prefix(scheme)
                            .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'))
                    });
                    if !valid {
                        return Err(locate(
                            Some(o.span()),
                            key("origin"),
                            format!("`{text}` is not of the form http(s)://host[:port]"),
                        ));
                    }
                    Some(text.to_owned())
                }
                None => None,
            };
            let mut services = Vec::new();
            for binding in &w.services {
                service_refs.push((binding.service.clone(), i));
                services.push(ServiceBinding {
                    binding: binding.binding.get_ref().clone(),
                    service: binding.service.get_ref().clone(),
                });
            }
            // Every name `env` exposes must be unique within the worker.
            let mut env_names: HashMap<String, &'static str> = HashMap::new();
            // Var names are free-form (they are WASI environment variables
            // too); they only have to leave room for the bindings.
            for name in w.vars.keys() {
                env_names.insert(name.clone(), "var");
            }
            let mut claim = |name: &Spanned<String>, kind: &'static str, field: &str| {
                if !is_binding_name(name.get_ref()) {
                    return Err(locate(
                        Some(name.span()),
                        key(field),
                        format!(
                            "`{}` is not a valid binding name (a letter or `_`, then letters, digits, `_`)",
                            name.get_ref()
                        ),
                    ));
                }
                if let Some(other) = env_names.insert(name.get_ref().clone(), kind) {
                    return Err(locate(
                        Some(name.span()),
                        key(field),
                        format!("`{}` is already bound as a {other}", name.get_ref()),
                    ));
                }
                Ok(())
            };
            for binding in &w.services {
                claim(&binding.binding, "service", "services")?;
            }
            let mut secrets = BTreeMap::new();
            for name in &w.secrets {
                claim(name, "secret", "secrets")?;
                let value = secret_value(name.get_ref(), base, &mut dev_vars)
                    .map_err(|m| locate(Some(name.span()), key("secrets"), m))?;
                secrets.insert(name.get_ref().clone(), Secret(value));
            }
            let mut kv_namespaces = Vec::new();
            for entry in &w.kv_namespaces {
                claim(&entry.binding, "KV namespace", "kv_namespaces")?;
                nonempty(&entry.id, "kv_namespaces")
                    .map_err(|(span, m)| locate(Some(span), key("kv_namespaces"), m))?;
                kv_namespaces.push(KvBinding {
                    binding: entry.binding.get_ref().clone(),
                    id: entry.id.get_ref().clone(),
                });
            }
            let mut d1_databases = Vec::new();
            for entry in &w.d1_databases {
                claim(&entry.binding, "D1 database", "d1_databases")?;
                let name = entry.database_name.get_ref();
                let valid = !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
                if !valid {
                    return Err(locate(
                        Some(entry.database_name.span()),
                        key("d1_databases"),
                        format!(
                            "`{name}` is not a valid database name (letters, digits, `-`, `_`)"
                        ),
                    ));
                }
                d1_databases.push(D1Binding {
                    binding: entry.binding.get_ref().clone(),
                    database_name: name.clone(),
                });
            }
            let mut r2_buckets = Vec::new();
            for entry in &w.r2_buckets {
                claim(&entry.binding, "R2 bucket", "r2_buckets")?;
                let name = entry.bucket_name.get_ref();
                // R2's own rule for bucket names.
                let valid = (3..=63).contains(&name.len())
                    && name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !name.starts_with('-')
                    && !name.ends_with('-');
                if !valid {
                    return Err(locate(
                        Some(entry.bucket_name.span()),
                        key("r2_buckets"),
                        format!(
                            "`{name}` is not a valid bucket name (3 to 63 lowercase letters, digits and inner `-`)"
                        ),
                    ));
                }
                r2_buckets.push(R2Binding {
                    binding: entry.binding.get_ref().clone(),
                    bucket_name: name.clone(),
                });
            }
            let mut analytics_engine_datasets = Vec::new();
            for entry in &w.analytics_engine_datasets {
                claim(
                    &entry.binding,
                    "analytics dataset",
                    "analytics_engine_datasets",
                )?;
                let name = entry.dataset.get_ref();
                if !is_binding_name(name) {
                    return Err(locate(
                        Some(entry.dataset.span()),
                        key("analytics_engine_datasets"),
                        format!(
                            "`{name}` is not a valid dataset name (a letter or `_`, then letters, digits, `_`): it is queried as an SQL table"
                        ),
                    ));
                }
                analytics_engine_datasets.push(AnalyticsBinding {
                    binding: entry.binding.get_ref().clone(),
                    dataset: name.clone(),
                });
            }
            let mut queue_producers = Vec::new();
            for entry in &w.queues.producers {
                claim(&entry.binding, "queue", "queues.producers")?;
                check_queue_name(&entry.queue)
                    .map_err(|m| locate(Some(entry.queue.span()), key("queues.producers"), m))?;
                queue_producers.push(QueueProducer {
                    binding: entry.binding.get_ref().clone(),
                    queue: entry.queue.get_ref().clone(),
                });
            }
            let mut queue_consumers = Vec::new();
            for entry in &w.queues.consumers {
                let field = key("queues.consumers");
                check_queue_name(&entry.queue)
                    .map_err(|m| locate(Some(entry.queue.span()), field.clone(), m))?;
                if let Some(other) =
                    consumer_owner.insert(entry.queue.get_ref().clone(), name.clone())
                {
                    return Err(locate(
                        Some(entry.queue.span()),
                        field,
                        format!(
                            "queue `{}` already has a consumer: worker `{other}`",
                            entry.queue.get_ref()
                        ),
                    ));
                }
                let ranged = |value: &Option<Spanned<u64>>,
                              default: u64,
                              range: std::ops::RangeInclusive<u64>,
                              what: &str| {
                    match value {
                        None => Ok(default),
                        Some(v) if range.contains(v.get_ref()) => Ok(*v.get_ref()),
                        Some(v) => Err(locate(
                            Some(v.span()),
                            key("queues.consumers"),
                            format!(
                                "{what} must be between {} and {}",
                                range.start(),
                                range.end()
                            ),
                        )),
                    }
                };
                let dead_letter_queue = match &entry.dead_letter_queue {
                    Some(dlq) => {
                        check_queue_name(dlq)
                            .map_err(|m| locate(Some(dlq.span()), key("queues.consumers"), m))?;
                        if dlq.get_ref() == entry.queue.get_ref() {
                            return Err(locate(
                                Some(dlq.span()),
                                key("queues.consumers"),
                                "a queue cannot be its own dead letter queue".into(),
                            ));
                        }
                        Some(dlq.get_ref().clone())
                    }
                    None => None,
                };
                queue_consumers.push(QueueConsumer {
                    queue: entry.queue.get_ref().clone(),
                    max_batch_size: ranged(&entry.max_batch_size, 10, 1..=100, "max_batch_size")?
                        as u32,
                    max_batch_timeout: ranged(
                        &entry.max_batch_timeout,
                        5,
                        0..=60,
                        "max_batch_timeout",
                    )?,
                    max_retries: ranged(&entry.max_retries, 3, 0..=100, "max_retries")? as u32,
                    dead_letter_queue,
                    max_concurrency: ranged(&entry.max_concurrency, 1, 1..=250, "max_concurrency")?
                        as u32,
                    retry_delay: ranged(&entry.retry_delay, 0, 0..=43_200, "retry_delay")?,
                });
            }
            let mut crons = Vec::new();
            for expression in &w.triggers.crons {
                crons.push(
                    CronSchedule::parse(expression.get_ref())
                        .map_err(|m| locate(Some(expression.span()), key("triggers.crons"), m))?,
                );
            }
            let trigger_cpu_ms = match w.triggers.cpu_ms {
                Some(ms) => Some(positive(ms, format!("worker[{i}].triggers.cpu_ms"))?),
                None => None,
            };
            let js_build = js_build::RawJsBuild {
                alias: w.alias,
                define: w.define,
                rules: w.rules,
            }
            .parse(base, main.is_some())
            .map_err(|(span, field, m)| locate(Some(span), key(&field), m))?;
            let compatibility_date = match &w.compatibility_date {
                Some(date) => Some(
                    js_build::parse_date(date.get_ref())
                        .map_err(|m| locate(Some(date.span()), key("compatibility_date"), m))?,
                ),
                None => None,
            };
            for flag in &w.compatibility_flags {
                js_build::check_flag(flag.get_ref())
                    .map_err(|m| locate(Some(flag.span()), key("compatibility_flags"), m))?;
            }
            workers.push(WorkerConfig {
                name,
                component,
                main,
                routes,
                vars: w.vars,
                secrets,
                queue_producers,
                queue_consumers,
                crons,
                trigger_cpu_ms,
                kv_namespaces,
                d1_databases,
                r2_buckets,
                analytics_engine_datasets,
                limits,
                allowed_outbound_hosts,
                outbound_override,
                server_timing: server.server_timing,
                fuel_per_ms: server.fuel_per_ms,
                origin,
                services,
                instance_reuse,
                build,
                js_build,
                compatibility_date,
                compatibility_flags: w
                    .compatibility_flags
                    .into_iter()
                    .map(Spanned::into_inner)
                    .collect(),
            });
        }
        for (service, i) in service_refs {
            if !names.contains_key(service.get_ref()) {
                return Err(locate(
                    Some(service.span()),
                    Some(format!("worker[{i}].services")),
                    format!("no worker is named `{}`", service.get_ref()),
                ));
            }
        }
        let backends = parse_backends(&raw.backends)
            .map_err(|(span, key, message)| locate(span, Some(key), message))?;
        Ok(Config {
            source: path.to_owned(),
            server,
            backends,
            workers,
        })
    }
}

/// Names `env` exposes: usable as JS properties and Rust strings alike.
fn is_binding_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Queue names as Cloudflare allows them: letters, digits, `-`, `_`.
fn check_queue_name(name: &Spanned<String>) -> Result<(), String> {
    let text = name.get_ref();
    let valid = (1..=63).contains(&text.len())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{text}` is not a valid queue name (1 to 63 letters, digits, `-`, `_`)"
        ))
    }
}

fn nonempty(value: &Spanned<String>, what: &str) -> Result<(), (Range<usize>, String)> {
    if value.get_ref().is_empty() {
        Err((value.span(), format!("an empty name in `{what}`")))
    } else {
        Ok(())
    }
}

/// Environment variable that supplies the secret `name`.
pub fn secret_env_var(name: &str) -> String {
    format!("ISOLA_SECRET_{name}")
}

/// A secret's value: the environment first, then `.dev.vars` beside the
/// config (Wrangler's file for local secrets). The message never contains
/// a value.
fn secret_value(
    name: &str,
    base: &Path,
    dev_vars: &mut Option<BTreeMap<String, String>>,
) -> Result<String, String> {
    let variable = secret_env_var(name);
    if let Some(value) = std::env::var_os(&variable) {
        return value
            .into_string()
            .map_err(|_| format!("secret `{name}`: ${variable} is not valid UTF-8"));
    }
    let file = base.join(".dev.vars");
    if dev_vars.is_none() {
        let mut values = BTreeMap::new();
        if file.is_file() {
            let entries = dotenvy::from_path_iter(&file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            for (n, entry) in entries.enumerate() {
                // dotenvy's parse error quotes the whole line, which may hold
                // a secret: say where, never what.
                let (k, v) = entry.map_err(|e| match e {
                    dotenvy::Error::LineParse(..) => format!(
                        "{}: entry {} is not NAME=value (dotenv syntax)",
                        file.display(),
                        n + 1
                    ),
                    other => format!("cannot read {}: {other}", file.display()),
                })?;
                values.insert(k, v);
            }
        }
        *dev_vars = Some(values);
    }
    dev_vars
        .as_ref()
        .and_then(|values| values.get(name))
        .cloned()
        .ok_or_else(|| {
            format!(
                "secret `{name}` has no value: set ${variable} or add `{name}=...` to {}",
                file.display()
            )
        })
}

type BackendError = (Option<Range<usize>>, String, String);

/// A `[backends]` field, where it is, and the backend types that have it.
type FieldRule<'a> = (&'a str, Option<Range<usize>>, &'a [&'a str]);

fn parse_backends(raw: &RawBackends) -> Result<BackendsConfig, BackendError> {
    let mut config = BackendsConfig::default();
    let kinds: [(&str, &Option<RawBackend>, &[&str]); 5] = [
        ("kv", &raw.kv, &["sqlite", "redis"]),
        ("sql", &raw.sql, &["sqlite", "postgres"]),
        ("blob", &raw.blob, &["fs", "s3"]),
        ("cache", &raw.cache, &["memory", "redis"]),
        ("queue", &raw.queue, &["sqlite", "redis"]),
    ];
    for (kind, backend, available) in kinds {
        let Some(backend) = backend else { continue };
        let key = format!("backends.{kind}");
        let kind_name = backend.r#type.get_ref();
        if !available.contains(&kind_name.as_str()) {
            return Err((
                Some(backend.r#type.span()),
                format!("{key}.type"),
                format!(
                    "`{kind_name}` is not an available {kind} backend (available: {})",
                    available.join(", ")
                ),
            ));
        }
        // Every field but `type` belongs to some backend types only.
        let fields: [FieldRule; 5] = [
            (
                "max_mb",
                backend.max_mb.as_ref().map(Spanned::span),
                &["memory"],
            ),
            (
                "url",
                backend.url.as_ref().map(Spanned::span),
                &["redis", "postgres"],
            ),
            (
                "endpoint",
                backend.endpoint.as_ref().map(Spanned::span),
                &["s3"],
            ),
            (
                "region",
                backend.region.as_ref().map(Spanned::span),
                &["s3"],
            ),
            (
                "bucket",
                backend.bucket.as_ref().map(Spanned::span),
                &["s3"],
            ),
        ];
        for (field, span, types) in fields {
            if let Some(span) = span
                && !types.contains(&kind_name.as_str())
            {
                let message = if field == "max_mb" {
                    "only the cache backend has a size cap".to_owned()
                } else {
                    format!("a `{kind_name}` backend has no `{field}`")
                };
                return Err((Some(span), format!("{key}.{field}"), message));
            }
        }
        let required = |value: &Option<Spanned<String>>, field: &str| {
            value
                .as_ref()
                .map(|v| v.get_ref().clone())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| {
                    (
                        Some(backend.r#type.span()),
                        format!("{key}.{field}"),
                        format!("a `{kind_name}` backend needs `{field}`"),
                    )
                })
        };
        let parsed = match kind_name.as_str() {
            "redis" | "postgres" => {
                let url = required(&backend.url, "url")?;
                let scheme = if kind_name == "redis" {
                    ["redis://", "rediss://"].as_slice()
                } else {
                    ["postgres://", "postgresql://"].as_slice()
                };
                if !scheme.iter().any(|s| url.starts_with(s)) {
                    return Err((
                        backend.url.as_ref().map(Spanned::span),
                        format!("{key}.url"),
                        format!("must start with {}", scheme.join(" or ")),
                    ));
                }
                if kind_name == "redis" {
                    Backend::Redis { url }
                } else {
                    Backend::Postgres { url }
                }
            }
            "s3" => {
                let endpoint = backend.endpoint.as_ref().map(|e| e.get_ref().clone());
                if let Some(e) = &backend.endpoint
                    && !(e.get_ref().starts_with("http://") || e.get_ref().starts_with("https://"))
                {
                    return Err((
                        Some(e.span()),
                        format!("{key}.endpoint"),
                        "must start with http:// or https://".into(),
                    ));
                }
                Backend::S3 {
                    endpoint,
                    region: backend
                        .region
                        .as_ref()
                        .map_or_else(|| "us-east-1".to_owned(), |r| r.get_ref().clone()),
                    bucket: required(&backend.bucket, "bucket")?,
                }
            }
            _ => Backend::Embedded,
        };
        if let Some(mb) = &backend.max_mb {
            if *mb.get_ref() == 0 {
                return Err((
                    Some(mb.span()),
                    format!("{key}.max_mb"),
                    "must be at least 1".into(),
                ));
            }
            config.cache_max_bytes = mb.get_ref().saturating_mul(1 << 20);
        }
        *match kind {
            "kv" => &mut config.kv,
            "sql" => &mut config.sql,
            "blob" => &mut config.blob,
            "cache" => &mut config.cache,
            _ => &mut config.queue,
        } = parsed;
    }
    Ok(config)
}

/// `outbound_override` must be a plain `http://host:port`.
fn parse_override(value: &Spanned<String>) -> Result<String, String> {
    let text = value.get_ref();
    let authority = text
        .strip_prefix("http://")
        .map(|rest| rest.trim_end_matches('/'))
        .filter(|a| !a.is_empty() && !a.contains('/'))
        .ok_or_else(|| format!("`{text}` is not of the form http://host:port"))?;
    Ok(authority.to_owned())
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    worker: Vec<RawWorker>,
    #[serde(default)]
    backends: RawBackends,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBackends {
    kv: Option<RawBackend>,
    sql: Option<RawBackend>,
    blob: Option<RawBackend>,
    cache: Option<RawBackend>,
    queue: Option<RawBackend>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    r#type: Spanned<String>,
    max_mb: Option<Spanned<u64>>,
    url: Option<Spanned<String>>,
    endpoint: Option<Spanned<String>>,
    region: Option<Spanned<String>>,
    bucket: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<Spanned<String>>,
    state_dir: Option<String>,
    cache_dir: Option<String>,
    max_instances: Option<Spanned<u64>>,
    fuel_per_ms: Option<Spanned<u64>>,
    max_header_bytes: Option<Spanned<usize>>,
    max_body_mb: Option<u64>,
    header_timeout_ms: Option<u64>,
    server_timing: Option<bool>,
    outbound_override: Option<Spanned<String>>,
    shutdown_grace_ms: Option<u64>,
    colo: Option<String>,
    country: Option<String>,
    trusted_client_ip_header: Option<Spanned<String>>,
    admin: Option<Spanned<String>>,
    admin_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorker {
    name: Spanned<String>,
    component: Option<Spanned<String>>,
    main: Option<Spanned<String>>,
    routes: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    vars: BTreeMap<String, String>,
    cpu_ms: Option<Spanned<u64>>,
    wall_ms: Option<Spanned<u64>>,
    memory_mb: Option<Spanned<u64>>,
    subrequests: Option<u32>,
    instance_reuse: Option<Spanned<u32>>,
    #[serde(default)]
    allowed_outbound_hosts: Vec<Spanned<String>>,
    outbound_override: Option<Spanned<String>>,
    origin: Option<Spanned<String>>,
    #[serde(default)]
    services: Vec<RawService>,
    #[serde(default)]
    secrets: Vec<Spanned<String>>,
    #[serde(default)]
    kv_namespaces: Vec<RawKv>,
    #[serde(default)]
    d1_databases: Vec<RawD1>,
    #[serde(default)]
    r2_buckets: Vec<RawR2>,
    #[serde(default)]
    analytics_engine_datasets: Vec<RawAnalytics>,
    #[serde(default)]
    queues: RawQueues,
    #[serde(default)]
    triggers: RawTriggers,
    build: Option<RawBuild>,
    // Wrangler's build keys: see `js_build`.
    alias: Option<Spanned<BTreeMap<String, Spanned<toml::Value>>>>,
    define: Option<Spanned<BTreeMap<String, Spanned<toml::Value>>>>,
    rules: Option<Spanned<Vec<Spanned<js_build::RawRule>>>>,
    compatibility_date: Option<Spanned<toml::Value>>,
    #[serde(default)]
    compatibility_flags: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBuild {
    command: Option<Spanned<String>>,
    #[serde(default)]
    watch: Vec<Spanned<String>>,
    workdir: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawQueues {
    #[serde(default)]
    producers: Vec<RawProducer>,
    #[serde(default)]
    consumers: Vec<RawConsumer>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProducer {
    binding: Spanned<String>,
    queue: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsumer {
    queue: Spanned<String>,
    max_batch_size: Option<Spanned<u64>>,
    max_batch_timeout: Option<Spanned<u64>>,
    max_retries: Option<Spanned<u64>>,
    dead_letter_queue: Option<Spanned<String>>,
    max_concurrency: Option<Spanned<u64>>,
    retry_delay: Option<Spanned<u64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTriggers {
    #[serde(default)]
    crons: Vec<Spanned<String>>,
    cpu_ms: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    binding: Spanned<String>,
    service: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKv {
    binding: Spanned<String>,
    id: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawD1 {
    binding: Spanned<String>,
    database_name: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawR2 {
    binding: Spanned<String>,
    bucket_name: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAnalytics {
    binding: Spanned<String>,
    dataset: Spanned<String>,
}

#[cfg(test)]
mod tests;
