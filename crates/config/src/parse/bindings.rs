//! What a worker's `env` holds besides its vars: `services`, `secrets`,
//! `kv_namespaces`, `d1_databases`, `r2_buckets`,
//! `analytics_engine_datasets` and `queues.producers`. Every name `env`
//! exposes is unique within the worker.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use toml::Spanned;

use super::checks::{check_queue_name, is_binding_name};
use crate::error::{Fault, WorkerKeys};
use crate::model::{
    AnalyticsBinding, D1Binding, KvBinding, QueueProducer, R2Binding, Secret, ServiceBinding,
};
use crate::raw::{RawAnalytics, RawD1, RawKv, RawProducer, RawR2, RawWorker};
use crate::secrets::secret_value;

/// A worker's bindings, each kind in the order written.
pub(super) struct Bindings {
    pub(super) services: Vec<ServiceBinding>,
    pub(super) secrets: BTreeMap<String, Secret>,
    pub(super) kv_namespaces: Vec<KvBinding>,
    pub(super) d1_databases: Vec<D1Binding>,
    pub(super) r2_buckets: Vec<R2Binding>,
    pub(super) analytics_engine_datasets: Vec<AnalyticsBinding>,
    pub(super) queue_producers: Vec<QueueProducer>,
}

/// The bindings of `w`; secrets come from the environment or `.dev.vars`
/// beside the config (`dev_vars`, read once); without `dev_vars` they are
/// not looked up, and each is empty.
pub(super) fn parse_bindings(
    keys: WorkerKeys,
    w: &RawWorker,
    base: &Path,
    mut dev_vars: Option<&mut Option<BTreeMap<String, String>>>,
) -> Result<Bindings, Fault> {
    let services = w
        .services
        .iter()
        .map(|binding| ServiceBinding {
            binding: binding.binding.get_ref().clone(),
            service: binding.service.get_ref().clone(),
        })
        .collect();
    let mut env = EnvNames::new(keys, w.vars.keys());
    for binding in &w.services {
        env.claim(&binding.binding, "service", "services")?;
    }
    let mut secrets = BTreeMap::new();
    for name in &w.secrets {
        env.claim(name, "secret", "secrets")?;
        let value = match dev_vars.as_deref_mut() {
            Some(dev_vars) => secret_value(name.get_ref(), base, dev_vars)
                .map_err(|m| keys.fault(name.span(), "secrets", m))?,
            None => String::new(),
        };
        secrets.insert(name.get_ref().clone(), Secret::new(value));
    }
    Ok(Bindings {
        services,
        secrets,
        kv_namespaces: collect(&w.kv_namespaces, |e| kv_namespace(&mut env, e))?,
        d1_databases: collect(&w.d1_databases, |e| d1_database(&mut env, e))?,
        r2_buckets: collect(&w.r2_buckets, |e| r2_bucket(&mut env, e))?,
        analytics_engine_datasets: collect(&w.analytics_engine_datasets, |e| {
            analytics_dataset(&mut env, e)
        })?,
        queue_producers: collect(&w.queues.producers, |e| queue_producer(&mut env, e))?,
    })
}

fn collect<R, T>(
    entries: &[R],
    parse: impl FnMut(&R) -> Result<T, Fault>,
) -> Result<Vec<T>, Fault> {
    entries.iter().map(parse).collect()
}

/// Every name `env` exposes, and what it is bound as.
struct EnvNames {
    keys: WorkerKeys,
    names: HashMap<String, &'static str>,
}

impl EnvNames {
    /// Var names are free-form (they are WASI environment variables too);
    /// they only have to leave room for the bindings.
    fn new<'a>(keys: WorkerKeys, vars: impl Iterator<Item = &'a String>) -> Self {
        EnvNames {
            keys,
            names: vars.map(|name| (name.clone(), "var")).collect(),
        }
    }

    /// Bind `name` as a `kind`: a valid name, not bound yet.
    fn claim(
        &mut self,
        name: &Spanned<String>,
        kind: &'static str,
        field: &str,
    ) -> Result<(), Fault> {
        if !is_binding_name(name.get_ref()) {
            return Err(self.keys.fault(
                name.span(),
                field,
                format!(
                    "`{}` is not a valid binding name (a letter or `_`, then letters, digits, `_`)",
                    name.get_ref()
                ),
            ));
        }
        if let Some(other) = self.names.insert(name.get_ref().clone(), kind) {
            return Err(self.keys.fault(
                name.span(),
                field,
                format!("`{}` is already bound as a {other}", name.get_ref()),
            ));
        }
        Ok(())
    }
}

fn kv_namespace(env: &mut EnvNames, entry: &RawKv) -> Result<KvBinding, Fault> {
    env.claim(&entry.binding, "KV namespace", "kv_namespaces")?;
    if entry.id.get_ref().is_empty() {
        return Err(env.keys.fault(
            entry.id.span(),
            "kv_namespaces",
            "an empty name in `kv_namespaces`",
        ));
    }
    Ok(KvBinding {
        binding: entry.binding.get_ref().clone(),
        id: entry.id.get_ref().clone(),
    })
}

fn d1_database(env: &mut EnvNames, entry: &RawD1) -> Result<D1Binding, Fault> {
    env.claim(&entry.binding, "D1 database", "d1_databases")?;
    let name = entry.database_name.get_ref();
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return Err(env.keys.fault(
            entry.database_name.span(),
            "d1_databases",
            format!("`{name}` is not a valid database name (letters, digits, `-`, `_`)"),
        ));
    }
    Ok(D1Binding {
        binding: entry.binding.get_ref().clone(),
        database_name: name.clone(),
    })
}

fn r2_bucket(env: &mut EnvNames, entry: &RawR2) -> Result<R2Binding, Fault> {
    env.claim(&entry.binding, "R2 bucket", "r2_buckets")?;
    let name = entry.bucket_name.get_ref();
    // R2's own rule for bucket names.
    let valid = (3..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !valid {
        return Err(env.keys.fault(
            entry.bucket_name.span(),
            "r2_buckets",
            format!(
                "`{name}` is not a valid bucket name (3 to 63 lowercase letters, digits and inner `-`)"
            ),
        ));
    }
    Ok(R2Binding {
        binding: entry.binding.get_ref().clone(),
        bucket_name: name.clone(),
    })
}

fn analytics_dataset(env: &mut EnvNames, entry: &RawAnalytics) -> Result<AnalyticsBinding, Fault> {
    env.claim(
        &entry.binding,
        "analytics dataset",
        "analytics_engine_datasets",
    )?;
    let name = entry.dataset.get_ref();
    if !is_binding_name(name) {
        return Err(env.keys.fault(
            entry.dataset.span(),
            "analytics_engine_datasets",
            format!(
                "`{name}` is not a valid dataset name (a letter or `_`, then letters, digits, `_`): it is queried as an SQL table"
            ),
        ));
    }
    Ok(AnalyticsBinding {
        binding: entry.binding.get_ref().clone(),
        dataset: name.clone(),
    })
}

fn queue_producer(env: &mut EnvNames, entry: &RawProducer) -> Result<QueueProducer, Fault> {
    env.claim(&entry.binding, "queue", "queues.producers")?;
    check_queue_name(&entry.queue)
        .map_err(|m| env.keys.fault(entry.queue.span(), "queues.producers", m))?;
    Ok(QueueProducer {
        binding: entry.binding.get_ref().clone(),
        queue: entry.queue.get_ref().clone(),
    })
}
