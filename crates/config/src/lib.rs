//! `isola.toml`: its schema, validation and defaults.
//!
//! Every error names the file, the line and column, and the key at fault:
//! an unknown key, a bad route, a missing component. Nothing is silently
//! ignored: a key Isola does not implement is an unknown key.

pub mod outbound;
pub mod route;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

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
    pub workers: Vec<WorkerConfig>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Absolute, or relative to the current directory.
    pub state_dir: PathBuf,
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
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
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
        }
    }
}

/// A service binding: `env.service(binding)` reaches worker `service`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceBinding {
    pub binding: String,
    pub service: String,
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
    pub component: PathBuf,
    pub routes: Vec<RoutePattern>,
    pub vars: BTreeMap<String, String>,
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
}

impl WorkerConfig {
    /// A worker with default limits, no vars and no routes.
    pub fn new(name: impl Into<String>, component: impl Into<PathBuf>) -> Self {
        WorkerConfig {
            name: name.into(),
            component: component.into(),
            routes: Vec::new(),
            vars: BTreeMap::new(),
            limits: Limits::default(),
            allowed_outbound_hosts: Vec::new(),
            outbound_override: None,
            server_timing: true,
            fuel_per_ms: None,
            origin: None,
            services: Vec::new(),
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
            let component = base.join(w.component.get_ref());
            if !component.is_file() {
                return Err(locate(
                    Some(w.component.span()),
                    key("component"),
                    format!("component file not found: {}", component.display()),
                ));
            }
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
                    binding: binding.binding.clone(),
                    service: binding.service.get_ref().clone(),
                });
            }
            workers.push(WorkerConfig {
                name,
                component,
                routes,
                vars: w.vars,
                limits,
                allowed_outbound_hosts,
                outbound_override,
                server_timing: server.server_timing,
                fuel_per_ms: server.fuel_per_ms,
                origin,
                services,
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
        Ok(Config {
            source: path.to_owned(),
            server,
            workers,
        })
    }
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
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<Spanned<String>>,
    state_dir: Option<String>,
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorker {
    name: Spanned<String>,
    component: Spanned<String>,
    routes: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    vars: BTreeMap<String, String>,
    cpu_ms: Option<Spanned<u64>>,
    wall_ms: Option<Spanned<u64>>,
    memory_mb: Option<Spanned<u64>>,
    subrequests: Option<u32>,
    #[serde(default)]
    allowed_outbound_hosts: Vec<Spanned<String>>,
    outbound_override: Option<Spanned<String>>,
    origin: Option<Spanned<String>>,
    #[serde(default)]
    services: Vec<RawService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    binding: String,
    service: Spanned<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("app.wasm"), b"").unwrap();
            Fixture { dir }
        }
        fn parse(&self, text: &str) -> Result<Config, ConfigError> {
            Config::parse(&self.dir.path().join("isola.toml"), text)
        }
        fn error(&self, text: &str) -> String {
            let e = self.parse(text).unwrap_err();
            let file = self.dir.path().join("isola.toml");
            e.to_string()
                .replace(&file.display().to_string(), "isola.toml")
        }
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let f = Fixture::new();
        let config = f
            .parse("[[worker]]\nname = \"app\"\ncomponent = \"app.wasm\"\nvars = { GREETING = \"hi\" }\n")
            .unwrap();
        assert_eq!(config.server.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.server.state_dir, f.dir.path().join(".isola"));
        let w = &config.workers[0];
        assert_eq!(w.component, f.dir.path().join("app.wasm"));
        assert_eq!(w.routes[0].as_str(), "/*");
        assert_eq!(w.vars["GREETING"], "hi");
        assert_eq!(w.limits, Limits::default());
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let f = Fixture::new();
        assert_eq!(
            f.error("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 1\n"),
            "isola.toml:3:1: unknown field `lisen`, expected one of `listen`, `state_dir`, `max_instances`, `fuel_per_ms`, `max_header_bytes`, `max_body_mb`, `header_timeout_ms`, `server_timing`, `outbound_override`, `shutdown_grace_ms`, `colo`, `country`, `trusted_client_ip_header`"
        );
        assert_eq!(
            f.error("[[worker]]\nname = \"app\"\ncomponent = \"app.wasm\"\nroutes = [\"/ok/*\", \"/a/*/b\"]\n"),
            "isola.toml:4:20: worker[0].routes: bad route pattern `/a/*/b`: `*` may only end the path"
        );
        assert_eq!(
            f.error("[[worker]]\nname = \"app\"\ncomponent = \"missing.wasm\"\n"),
            format!(
                "isola.toml:3:13: worker[0].component: component file not found: {}",
                f.dir.path().join("missing.wasm").display()
            )
        );
        assert_eq!(
            f.error("[server]\nlisten = \"nowhere\"\n[[worker]]\nname = \"app\"\ncomponent = \"app.wasm\"\n"),
            "isola.toml:2:10: server.listen: `nowhere` is not an address such as 127.0.0.1:8787"
        );
        assert!(
            f.error("[[worker]]\nname = \"app\"\n")
                .starts_with("isola.toml:1:1: missing field `component`")
        );
        assert_eq!(
            f.error("[[worker]]\nname = \"a\"\ncomponent = \"app.wasm\"\nroutes = [\"/*\"]\n[[worker]]\nname = \"a\"\ncomponent = \"app.wasm\"\n"),
            "isola.toml:6:8: worker[1].name: worker `a` is defined twice"
        );
        assert_eq!(
            f.error("[[worker]]\nname = \"a\"\ncomponent = \"app.wasm\"\nroutes = [\"/*\"]\n[[worker]]\nname = \"b\"\ncomponent = \"app.wasm\"\nroutes = [\"/*\"]\n"),
            "isola.toml:8:11: worker[1].routes: route `/*` is already used by worker `a`"
        );
        assert_eq!(
            f.error("[[worker]]\nname = \"a\"\ncomponent = \"app.wasm\"\ncpu_ms = 0\n"),
            "isola.toml:4:10: worker[0].cpu_ms: must be at least 1"
        );
        assert_eq!(f.error(""), "isola.toml: no [[worker]] is configured");
        assert_eq!(
            f.error("[server]\ntrusted_client_ip_header = \"x real ip\"\n[[worker]]\nname = \"a\"\ncomponent = \"app.wasm\"\n"),
            "isola.toml:2:28: server.trusted_client_ip_header: `x real ip` is not a header name"
        );
        assert_eq!(
            f.error("[[worker]]\nname = \"a\"\ncomponent = \"app.wasm\"\nservices = [{ binding = \"AUTH\", service = \"nope\" }]\n"),
            "isola.toml:4:43: worker[0].services: no worker is named `nope`"
        );
        assert_eq!(
            f.error("[[worker]]\nname = \"a\"\ncomponent = \"app.wasm\"\norigin = \"ftp://x\"\n"),
            "isola.toml:4:10: worker[0].origin: `ftp://x` is not of the form http(s)://host[:port]"
        );
        assert!(f.error("[[worker]\n").starts_with("isola.toml:1:"));
    }
}
