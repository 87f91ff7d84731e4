//! The plain model: what a validated `isola.toml` says, with its defaults.
//! Nothing here parses or reads a file.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::js_build::JsBuild;
use crate::outbound::OutboundRule;
use crate::route::RoutePattern;

/// Default address of the request listener.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";
/// Default directory for the compile cache and embedded state, relative to
/// the config file.
pub const DEFAULT_STATE_DIR: &str = ".isola";

/// The validated configuration of a server.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from (or a description for built-in configs).
    pub source: PathBuf,
    pub server: ServerConfig,
    pub backends: BackendsConfig,
    pub workers: Vec<WorkerConfig>,
    /// `[cluster]`: set when this node runs Durable Objects with others.
    pub cluster: Option<ClusterConfig>,
}

/// `[cluster]`: each Durable Object is owned by one node at a time, and
/// the other nodes forward its events to the owner's internal listener.
/// The nodes' shared secret comes from `ISOLA_CLUSTER_SECRET`, never the
/// file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The internal listener, which takes forwarded events.
    pub listen: SocketAddr,
    /// The URL other nodes reach the internal listener at
    /// (`http://10.0.0.5:8790`, no trailing slash); also the name this
    /// node holds its objects' leases by.
    pub advertise: String,
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
    /// How long a pooled connection to an origin stays open while idle.
    pub outbound_idle_timeout_ms: u64,
    /// Most connections open to one origin (scheme, host, port) at once.
    pub outbound_max_connections_per_origin: u32,
    /// PEM certificates outbound TLS trusts besides the web's public roots
    /// (an internal CA), resolved against the config's directory.
    pub outbound_ca_file: Option<PathBuf>,
    /// How long a request waits for a free instance slot (all
    /// `max_instances` busy) before it is answered 503 `overloaded`.
    pub queue_timeout_ms: u64,
    /// Most client connections open at once; past it, new ones wait in the
    /// kernel's accept queue.
    pub max_connections: u32,
    /// How long a Durable Object's instance stays alive without events
    /// (`durable_object_idle_s`, 1 to 3600 s); every worker's
    /// [`WorkerRun::durable_object_idle`].
    pub durable_object_idle: std::time::Duration,
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
            outbound_idle_timeout_ms: 90_000,
            outbound_max_connections_per_origin: 256,
            outbound_ca_file: None,
            queue_timeout_ms: 500,
            max_connections: 10_000,
            durable_object_idle: std::time::Duration::from_secs(30),
        }
    }
}

/// A service binding: `env.service(binding)` reaches worker `service`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceBinding {
    pub binding: String,
    pub service: String,
}

/// `durable_objects.bindings` entry (`{ name = "COUNTER", class_name =
/// "Counter", script_name = "other" }`): a Durable Object namespace bound
/// as `env.NAME`, resolved against the migrations of the worker that
/// defines the class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurableObjectBinding {
    /// `env.NAME` (Wrangler's `name`).
    pub binding: String,
    /// The class as its worker names it now (after `renamed_classes`).
    pub class_name: String,
    /// The worker that defines the class: `script_name`, or this worker.
    pub worker: String,
    /// The class's storage namespace, stable across renames.
    pub namespace: String,
    /// Created by `new_sqlite_classes` (the SQL API is on), not `new_classes`.
    pub sqlite: bool,
}

/// A Durable Object class a worker defines: what its `migrations` leave,
/// in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurableObjectClass {
    pub class_name: String,
    /// Where the class's objects are stored: `<worker>/<the class's name
    /// when a migration created it>`, so a rename keeps the data.
    pub namespace: String,
    pub sqlite: bool,
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
    /// Durable Object storage: one SQLite file per object under
    /// `state_dir` (embedded), or a schema per object in PostgreSQL.
    pub durable: Backend,
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
            durable: Backend::Embedded,
        }
    }
}

impl BackendsConfig {
    /// Whether any binding state lives outside this process's state dir.
    pub fn is_distributed(&self) -> bool {
        [
            &self.kv,
            &self.sql,
            &self.blob,
            &self.cache,
            &self.queue,
            &self.durable,
        ]
        .iter()
        .any(|b| !matches!(b, Backend::Embedded))
    }
}

/// One `[backends]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// SQLite, the filesystem or memory, under `state_dir`.
    Embedded,
    /// `redis://[user:password@]host:port[/db]` (kv, cache, queue);
    /// `rediss://` for TLS.
    Redis { url: String, tls: BackendTls },
    /// `postgres://user:password@host:port/database` (sql, durable);
    /// `?sslmode=require` or `verify-full` for TLS.
    Postgres { url: String, tls: BackendTls },
    /// One S3 bucket (blob); credentials come from the environment
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`).
    S3 {
        /// `http(s)://host:port` of an S3-compatible service; AWS when unset.
        endpoint: Option<String>,
        region: String,
        bucket: String,
        /// Only `ca_file` applies.
        tls: BackendTls,
    },
}

/// The certificate files of a `[backends]` entry reached over TLS, resolved
/// against the config file's directory and checked to be files at parse
/// time. The server's certificate is always verified: against `ca_file`
/// when set, else the system's roots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendTls {
    /// PEM file of the CA certificate(s) the server's certificate must
    /// chain to (instead of the system's roots).
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain presented to a server that asks for one
    /// (mutual TLS; Redis and PostgreSQL); set with `client_key`.
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<PathBuf>,
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
    pub queue_consumers: Vec<QueueConsumer>,
    /// `triggers.crons`.
    pub crons: Vec<CronSchedule>,
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
    /// What the runtime needs to run the worker; the fields above are the
    /// front end's (routing, building, triggering).
    pub run: WorkerRun,
}

/// What a worker needs to run, and all that the runtime is given of its
/// configuration: its env (vars, secrets, bindings, services), its limits
/// and where its requests may go. How it is routed, built and triggered
/// stays with the front end ([`WorkerConfig`]).
#[derive(Debug, Clone)]
pub struct WorkerRun {
    pub vars: BTreeMap<String, String>,
    /// Values from `ISOLA_SECRET_<NAME>` or `.dev.vars` beside the config.
    pub secrets: BTreeMap<String, Secret>,
    pub kv_namespaces: Vec<KvBinding>,
    pub d1_databases: Vec<D1Binding>,
    pub r2_buckets: Vec<R2Binding>,
    pub analytics_engine_datasets: Vec<AnalyticsBinding>,
    pub queue_producers: Vec<QueueProducer>,
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
    /// Durable Object namespaces this worker reaches (`env.NAME`).
    pub durable_objects: Vec<DurableObjectBinding>,
    /// Durable Object classes this worker defines (its migrations' result).
    pub durable_object_classes: Vec<DurableObjectClass>,
    /// How long an object's instance stays alive without events before it
    /// is evicted (its storage stays); `[server] durable_object_idle_s`.
    pub durable_object_idle: std::time::Duration,
    /// Requests one instance may serve, one after another and never at
    /// once (opt-in throughput, mostly for JS workers, whose instances cost
    /// the most to make); 0 or 1: a fresh instance per request, the default.
    pub instance_reuse: u32,
    /// With an `origin`: request bodies up to this size (sized or chunked)
    /// are kept for a pass-through replay; larger ones stream to the guest
    /// and cannot be replayed.
    pub pass_through_buffer_kb: u64,
    /// Most instances of this worker alive at once; 0: as many as the
    /// pool holds (`server.max_instances`). Set for servers of several
    /// workers, to three quarters of the pool.
    pub instance_cap: u32,
}

impl Default for WorkerRun {
    /// No env, no outbound hosts, default limits, `Server-Timing` on.
    fn default() -> Self {
        WorkerRun {
            vars: BTreeMap::new(),
            secrets: BTreeMap::new(),
            kv_namespaces: Vec::new(),
            d1_databases: Vec::new(),
            r2_buckets: Vec::new(),
            analytics_engine_datasets: Vec::new(),
            queue_producers: Vec::new(),
            trigger_cpu_ms: None,
            limits: Limits::default(),
            allowed_outbound_hosts: Vec::new(),
            outbound_override: None,
            server_timing: true,
            fuel_per_ms: None,
            origin: None,
            services: Vec::new(),
            durable_objects: Vec::new(),
            durable_object_classes: Vec::new(),
            durable_object_idle: std::time::Duration::from_secs(30),
            instance_reuse: 0,
            pass_through_buffer_kb: 1024,
            instance_cap: 0,
        }
    }
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
            queue_consumers: Vec::new(),
            crons: Vec::new(),
            build: None,
            js_build: JsBuild::default(),
            compatibility_date: None,
            compatibility_flags: Vec::new(),
            run: WorkerRun::default(),
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
        worker.run.server_timing = server.server_timing;
        worker.run.fuel_per_ms = server.fuel_per_ms;
        worker.run.durable_object_idle = server.durable_object_idle;
        Config {
            source: PathBuf::from("<command line>"),
            server,
            backends: BackendsConfig::default(),
            workers: vec![worker],
            cluster: None,
        }
    }
}
