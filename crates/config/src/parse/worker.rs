//! `[[worker]]`: each worker's name, routes, limits and outbound rules
//! here; its bindings, triggers and sources in their own modules. Names,
//! routes and queue consumers are unique across workers; a service binding
//! names a worker of the file, and so does a Durable Object binding's
//! `script_name` (see `durable`).

use std::collections::HashMap;
use std::path::Path;

use toml::Spanned;

use super::checks::positive;
use super::durable::{self, Durable};
use super::{bindings, source, triggers};
use crate::error::{Fault, Faults, WorkerKeys};
use crate::js_build;
use crate::model::{Limits, ServerConfig, WorkerConfig, WorkerRun};
use crate::outbound::{OutboundRule, parse_override};
use crate::raw::RawWorker;
use crate::route::RoutePattern;
use crate::secrets::DevVars;

/// Every `[[worker]]`. A worker at fault is still checked to the end
/// (with its values at fault left at their defaults), so that every error
/// is found; what this returns is only served when there is none.
pub(super) fn parse_workers(
    raw: Vec<RawWorker>,
    base: &Path,
    server: &ServerConfig,
    outbound_override: Option<String>,
    secret_values: bool,
    faults: &mut Faults,
) -> Vec<WorkerConfig> {
    if raw.is_empty() {
        faults.push(Fault::new(None, None, "no [[worker]] is configured"));
    }
    let mut workers = Workers {
        base,
        server,
        outbound_override,
        single: raw.len() == 1,
        names: HashMap::new(),
        route_owner: HashMap::new(),
        consumer_owner: HashMap::new(),
        service_refs: Vec::new(),
        durable: Vec::new(),
        dev_vars: DevVars::default(),
        secret_values,
        faults,
    };
    let mut parsed: Vec<WorkerConfig> = raw
        .into_iter()
        .enumerate()
        .map(|(i, w)| workers.parse(WorkerKeys(i), w))
        .collect();
    for (service, keys) in &workers.service_refs {
        if !workers.names.contains_key(service.get_ref()) {
            workers.faults.push(keys.fault(
                service.span(),
                "services",
                format!("no worker is named `{}`", service.get_ref()),
            ));
        }
    }
    let resolved = durable::resolve(&workers.durable, &workers.names, workers.faults);
    for (worker, (bindings, classes)) in parsed.iter_mut().zip(resolved) {
        worker.run.durable_objects = bindings;
        worker.run.durable_object_classes = classes;
    }
    parsed
}

/// What each worker is checked against: the server's defaults and the
/// workers before it.
struct Workers<'a> {
    base: &'a Path,
    server: &'a ServerConfig,
    /// `server.outbound_override`, the default of every worker.
    outbound_override: Option<String>,
    /// A lone worker serves everything, as with `wrangler dev`.
    single: bool,
    names: HashMap<String, usize>,
    route_owner: HashMap<String, String>,
    /// Each queue has at most one consumer.
    consumer_owner: HashMap<String, String>,
    /// Checked once every worker is named.
    service_refs: Vec<(Spanned<String>, WorkerKeys)>,
    /// Each worker's migrations and Durable Object bindings, resolved once
    /// every worker's classes are known.
    durable: Vec<Durable>,
    /// `.dev.vars`, read when the first secret is looked up.
    dev_vars: DevVars,
    /// Look secrets' values up; else each is empty (`isola types`).
    secret_values: bool,
    faults: &'a mut Faults,
}

impl Workers<'_> {
    fn parse(&mut self, keys: WorkerKeys, w: RawWorker) -> WorkerConfig {
        let name = self.claim_name(keys, &w.name);
        let instance_reuse = w.instance_reuse.as_ref().map_or(0, |r| *r.get_ref());
        let pass_through_buffer_kb = w
            .pass_through_buffer_kb
            .as_ref()
            .and_then(|kb| {
                self.faults
                    .ok(positive(kb, keys.key("pass_through_buffer_kb")))
            })
            .unwrap_or(1024);
        let build = source::parse_build(keys, w.build.as_ref(), self.base, self.faults);
        let built = self.server.js_build_path(&name);
        let (component, main) =
            source::parse_source(keys, &w, build.is_some(), self.base, built, self.faults);
        let routes = self.routes(keys, w.routes.as_deref(), &name);
        let limits = parse_limits(keys, &w, self.faults);
        let (allowed_outbound_hosts, outbound_override) =
            parse_outbound(keys, &w, self.outbound_override.as_ref(), self.faults);
        let origin = parse_origin(keys, w.origin.as_ref(), self.faults);
        self.service_refs
            .extend(w.services.iter().map(|b| (b.service.clone(), keys)));
        let bindings = bindings::parse_bindings(
            keys,
            &w,
            self.base,
            self.secret_values.then_some(&mut self.dev_vars),
            self.faults,
        );
        self.durable.push(Durable {
            keys,
            worker: name.clone(),
            classes: durable::parse_migrations(keys, &w.migrations, self.faults),
            refs: bindings.durable_objects,
        });
        let queue_consumers = triggers::parse_consumers(
            keys,
            &w.queues.consumers,
            &name,
            &mut self.consumer_owner,
            self.faults,
        );
        let (crons, trigger_cpu_ms) = triggers::parse_triggers(keys, &w.triggers, self.faults);
        // Whether the keys apply follows from `main` being written, found
        // or not.
        let (js_build, build_faults) = js_build::RawJsBuild {
            alias: w.alias,
            define: w.define,
            rules: w.rules,
            warm_up: w.warm_up,
        }
        .parse(self.base, w.main.is_some());
        for (span, field, m) in build_faults {
            self.faults.push(keys.fault(span, &field, m));
        }
        let compatibility_date =
            source::compatibility_date(keys, w.compatibility_date.as_ref(), self.faults);
        let compatibility_flags =
            source::compatibility_flags(keys, w.compatibility_flags, self.faults);
        WorkerConfig {
            name,
            component,
            main,
            routes,
            queue_consumers,
            crons,
            build,
            js_build,
            compatibility_date,
            compatibility_flags,
            run: WorkerRun {
                vars: w.vars,
                secrets: bindings.secrets,
                kv_namespaces: bindings.kv_namespaces,
                d1_databases: bindings.d1_databases,
                r2_buckets: bindings.r2_buckets,
                analytics_engine_datasets: bindings.analytics_engine_datasets,
                queue_producers: bindings.queue_producers,
                trigger_cpu_ms,
                limits,
                allowed_outbound_hosts,
                outbound_override,
                server_timing: self.server.server_timing,
                fuel_per_ms: self.server.fuel_per_ms,
                origin,
                services: bindings.services,
                // Filled in by `durable::resolve`, which needs every
                // worker's migrations.
                durable_objects: Vec::new(),
                durable_object_classes: Vec::new(),
                durable_object_idle: self.server.durable_object_idle,
                instance_reuse,
                pass_through_buffer_kb,
                instance_cap: 0,
            },
        }
    }

    /// The worker's name; a fault unless it is valid and not taken by a
    /// worker before this one.
    fn claim_name(&mut self, keys: WorkerKeys, name: &Spanned<String>) -> String {
        let text = name.get_ref();
        let valid = !text.is_empty()
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            self.faults.push(keys.fault(
                name.span(),
                "name",
                format!("`{text}` is not a valid worker name (letters, digits, `-`, `_`)"),
            ));
        } else if self.names.insert(text.clone(), keys.0).is_some() {
            self.faults.push(keys.fault(
                name.span(),
                "name",
                format!("worker `{text}` is defined twice"),
            ));
        }
        text.clone()
    }

    /// `routes`: valid patterns that no other worker uses.
    fn routes(
        &mut self,
        keys: WorkerKeys,
        routes: Option<&[Spanned<String>]>,
        name: &str,
    ) -> Vec<RoutePattern> {
        let Some(routes) = routes else {
            return if self.single {
                vec![RoutePattern::parse("/*").expect("valid pattern")]
            } else {
                Vec::new()
            };
        };
        let mut patterns = Vec::new();
        for r in routes {
            let pattern = match RoutePattern::parse(r.get_ref()) {
                Ok(pattern) => pattern,
                Err(e) => {
                    self.faults
                        .push(keys.fault(r.span(), "routes", e.to_string()));
                    continue;
                }
            };
            if let Some(other) = self.route_owner.insert(r.get_ref().clone(), name.into()) {
                self.faults.push(keys.fault(
                    r.span(),
                    "routes",
                    format!(
                        "route `{}` is already used by worker `{other}`",
                        r.get_ref()
                    ),
                ));
            }
            patterns.push(pattern);
        }
        patterns
    }
}

/// `cpu_ms`, `wall_ms`, `memory_mb`, `subrequests`.
fn parse_limits(keys: WorkerKeys, w: &RawWorker, faults: &mut Faults) -> Limits {
    let mut limits = Limits::default();
    for (field, value, slot) in [
        ("cpu_ms", &w.cpu_ms, &mut limits.cpu_ms),
        ("wall_ms", &w.wall_ms, &mut limits.wall_ms),
        ("memory_mb", &w.memory_mb, &mut limits.memory_mb),
    ] {
        if let Some(value) = value
            && let Some(value) = faults.ok(positive(value, keys.key(field)))
        {
            *slot = value;
        }
    }
    if let Some(n) = w.subrequests {
        limits.subrequests = n;
    }
    limits
}

/// `allowed_outbound_hosts`, and `outbound_override` (the server's when
/// the worker has none).
fn parse_outbound(
    keys: WorkerKeys,
    w: &RawWorker,
    server_override: Option<&String>,
    faults: &mut Faults,
) -> (Vec<OutboundRule>, Option<String>) {
    let allowed = w
        .allowed_outbound_hosts
        .iter()
        .filter_map(|rule| {
            faults.ok(OutboundRule::parse(rule.get_ref())
                .map_err(|m| keys.fault(rule.span(), "allowed_outbound_hosts", m)))
        })
        .collect();
    let outbound_override = match &w.outbound_override {
        Some(o) => faults
            .ok(parse_override(o.get_ref())
                .map_err(|m| keys.fault(o.span(), "outbound_override", m))),
        None => server_override.cloned(),
    };
    (allowed, outbound_override)
}

/// `origin = "http(s)://host[:port]"`, without a trailing `/`.
fn parse_origin(
    keys: WorkerKeys,
    origin: Option<&Spanned<String>>,
    faults: &mut Faults,
) -> Option<String> {
    let o = origin?;
    let text = o.get_ref().trim_end_matches('/');
    let valid = ["http://", "https://"].iter().any(|scheme| {
        text.strip_prefix(scheme)
            .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'))
    });
    if !valid {
        faults.push(keys.fault(
            o.span(),
            "origin",
            format!("`{text}` is not of the form http(s)://host[:port]"),
        ));
        return None;
    }
    Some(text.to_owned())
}
