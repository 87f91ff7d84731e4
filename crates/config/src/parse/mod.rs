//! `Config::load` and `Config::parse`: from text to the model.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;

use toml::Spanned;

use crate::ConfigError;
use crate::error::line_col;
use crate::js_build;
use crate::model::{
    AnalyticsBinding, Backend, BackendsConfig, BuildConfig, Config, CronSchedule, D1Binding,
    DEFAULT_STATE_DIR, KvBinding, Limits, QueueConsumer, QueueProducer, R2Binding, Secret,
    ServerConfig, ServiceBinding, WorkerConfig,
};
use crate::outbound::OutboundRule;
use crate::raw::{RawBackend, RawBackends, RawConfig};
use crate::route::RoutePattern;
use crate::secrets::secret_value;

impl Config {
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
        server.admin_token = raw.server.admin_token.clone().map(Secret::new);
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
                secrets.insert(name.get_ref().clone(), Secret::new(value));
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
