//! What a worker's `env` holds besides its vars: `services`, `secrets`,
//! `kv_namespaces`, `d1_databases`, `r2_buckets`,
//! `analytics_engine_datasets`, `queues.producers` and
//! `durable_objects.bindings` (whose classes are looked up later, in
//! `durable`). Every name `env` exposes is unique within the worker.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::Path;

use toml::Spanned;

use super::checks::{check_queue_name, is_binding_name};
use super::durable::DurableRef;
use crate::error::{Faults, WorkerKeys};
use crate::model::{
    AnalyticsBinding, D1Binding, KvBinding, QueueProducer, R2Binding, Secret, ServiceBinding,
};
use crate::raw::{RawAnalytics, RawD1, RawDurableBinding, RawKv, RawProducer, RawR2, RawWorker};
use crate::secrets::{DevVars, secret_value};

/// A worker's bindings, each kind in the order written.
pub(super) struct Bindings {
    pub(super) services: Vec<ServiceBinding>,
    pub(super) secrets: BTreeMap<String, Secret>,
    pub(super) kv_namespaces: Vec<KvBinding>,
    pub(super) d1_databases: Vec<D1Binding>,
    pub(super) r2_buckets: Vec<R2Binding>,
    pub(super) analytics_engine_datasets: Vec<AnalyticsBinding>,
    pub(super) queue_producers: Vec<QueueProducer>,
    /// Every entry, its name at fault or not: its class is checked apart.
    pub(super) durable_objects: Vec<DurableRef>,
}

/// The bindings of `w`; secrets come from the environment or `.dev.vars`
/// beside the config (`dev_vars`, read once); without `dev_vars` they are
/// not looked up, and each is empty. A binding at fault is left out.
pub(super) fn parse_bindings(
    keys: WorkerKeys,
    w: &RawWorker,
    base: &Path,
    mut dev_vars: Option<&mut DevVars>,
    faults: &mut Faults,
) -> Bindings {
    let services = w
        .services
        .iter()
        .map(|binding| ServiceBinding {
            binding: binding.binding.get_ref().clone(),
            service: binding.service.get_ref().clone(),
        })
        .collect();
    let mut env = EnvNames::new(keys, w.vars.keys(), faults);
    for binding in &w.services {
        env.claim(&binding.binding, "service", "services");
    }
    let mut secrets = BTreeMap::new();
    for name in &w.secrets {
        if !env.claim(name, "secret", "secrets") {
            continue;
        }
        let value = match dev_vars.as_deref_mut() {
            Some(dev_vars) => match secret_value(name.get_ref(), base, dev_vars) {
                Ok(value) => value,
                Err(m) => env.fault(name.span(), "secrets", m),
            },
            None => None,
        };
        secrets.insert(
            name.get_ref().clone(),
            Secret::new(value.unwrap_or_default()),
        );
    }
    Bindings {
        services,
        secrets,
        kv_namespaces: env.each(&w.kv_namespaces, kv_namespace),
        d1_databases: env.each(&w.d1_databases, d1_database),
        r2_buckets: env.each(&w.r2_buckets, r2_bucket),
        analytics_engine_datasets: env.each(&w.analytics_engine_datasets, analytics_dataset),
        queue_producers: env.each(&w.queues.producers, queue_producer),
        durable_objects: env.each(&w.durable_objects.bindings, durable_object),
    }
}

/// Every name `env` exposes, and what it is bound as; the faults found.
struct EnvNames<'a> {
    keys: WorkerKeys,
    names: HashMap<String, &'static str>,
    faults: &'a mut Faults,
}

impl<'a> EnvNames<'a> {
    /// Var names are free-form (they are WASI environment variables too);
    /// they only have to leave room for the bindings.
    fn new<'v>(
        keys: WorkerKeys,
        vars: impl Iterator<Item = &'v String>,
        faults: &'a mut Faults,
    ) -> Self {
        EnvNames {
            keys,
            names: vars.map(|name| (name.clone(), "var")).collect(),
            faults,
        }
    }

    /// Bind `name` as a `kind`: a valid name, not bound yet. False (with
    /// the fault recorded) if not.
    fn claim(&mut self, name: &Spanned<String>, kind: &'static str, field: &str) -> bool {
        if !is_binding_name(name.get_ref()) {
            self.fault::<()>(
                name.span(),
                field,
                format!(
                    "`{}` is not a valid binding name (a letter or `_`, then letters, digits, `_`)",
                    name.get_ref()
                ),
            );
            return false;
        }
        if let Some(other) = self.names.insert(name.get_ref().clone(), kind) {
            self.fault::<()>(
                name.span(),
                field,
                format!("`{}` is already bound as a {other}", name.get_ref()),
            );
            return false;
        }
        true
    }

    /// Record a fault in `field`; nothing comes of it.
    fn fault<T>(
        &mut self,
        span: Range<usize>,
        field: &str,
        message: impl Into<String>,
    ) -> Option<T> {
        self.faults.push(self.keys.fault(span, field, message));
        None
    }

    /// Each entry that `parse` accepts.
    fn each<R, T>(&mut self, entries: &[R], parse: fn(&mut Self, &R) -> Option<T>) -> Vec<T> {
        entries
            .iter()
            .filter_map(|entry| parse(self, entry))
            .collect()
    }
}

// Each binding's name and value are checked apart: both may be at fault.

fn kv_namespace(env: &mut EnvNames, entry: &RawKv) -> Option<KvBinding> {
    let bound = env.claim(&entry.binding, "KV namespace", "kv_namespaces");
    if entry.id.get_ref().is_empty() {
        return env.fault(
            entry.id.span(),
            "kv_namespaces",
            "an empty name in `kv_namespaces`",
        );
    }
    bound.then(|| KvBinding {
        binding: entry.binding.get_ref().clone(),
        id: entry.id.get_ref().clone(),
    })
}

fn d1_database(env: &mut EnvNames, entry: &RawD1) -> Option<D1Binding> {
    let bound = env.claim(&entry.binding, "D1 database", "d1_databases");
    let name = entry.database_name.get_ref();
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return env.fault(
            entry.database_name.span(),
            "d1_databases",
            format!("`{name}` is not a valid database name (letters, digits, `-`, `_`)"),
        );
    }
    bound.then(|| D1Binding {
        binding: entry.binding.get_ref().clone(),
        database_name: name.clone(),
    })
}

fn r2_bucket(env: &mut EnvNames, entry: &RawR2) -> Option<R2Binding> {
    let bound = env.claim(&entry.binding, "R2 bucket", "r2_buckets");
    let name = entry.bucket_name.get_ref();
    // R2's own rule for bucket names.
    let valid = (3..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !valid {
        return env.fault(
            entry.bucket_name.span(),
            "r2_buckets",
            format!(
                "`{name}` is not a valid bucket name (3 to 63 lowercase letters, digits and inner `-`)"
            ),
        );
    }
    bound.then(|| R2Binding {
        binding: entry.binding.get_ref().clone(),
        bucket_name: name.clone(),
    })
}

fn analytics_dataset(env: &mut EnvNames, entry: &RawAnalytics) -> Option<AnalyticsBinding> {
    let bound = env.claim(
        &entry.binding,
        "analytics dataset",
        "analytics_engine_datasets",
    );
    let name = entry.dataset.get_ref();
    if !is_binding_name(name) {
        return env.fault(
            entry.dataset.span(),
            "analytics_engine_datasets",
            format!(
                "`{name}` is not a valid dataset name (a letter or `_`, then letters, digits, `_`): it is queried as an SQL table"
            ),
        );
    }
    bound.then(|| AnalyticsBinding {
        binding: entry.binding.get_ref().clone(),
        dataset: name.clone(),
    })
}

fn queue_producer(env: &mut EnvNames, entry: &RawProducer) -> Option<QueueProducer> {
    let bound = env.claim(&entry.binding, "queue", "queues.producers");
    if let Err(m) = check_queue_name(&entry.queue) {
        return env.fault(entry.queue.span(), "queues.producers", m);
    }
    bound.then(|| QueueProducer {
        binding: entry.binding.get_ref().clone(),
        queue: entry.queue.get_ref().clone(),
    })
}

fn durable_object(env: &mut EnvNames, entry: &RawDurableBinding) -> Option<DurableRef> {
    let bound = env.claim(
        &entry.name,
        "Durable Object namespace",
        "durable_objects.bindings",
    );
    Some(DurableRef {
        binding: bound.then(|| entry.name.get_ref().clone()),
        class_name: entry.class_name.clone(),
        script_name: entry.script_name.clone(),
    })
}
