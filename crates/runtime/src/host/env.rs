//! `isola:worker/env`: the worker's vars and secrets, and the names of
//! everything in its `env`.

use std::collections::BTreeMap;

use isola_config::WorkerRun;
use wasmtime::component::Linker;

use super::{HasView, HostView, View};
use crate::generated::isola::worker::env;

/// A worker's `env`: its vars and secrets by name, and every name with its
/// kind (`env.bindings`, for SDKs that build an `env` object).
pub struct EnvCtx {
    vars: BTreeMap<String, String>,
    names: Vec<env::Binding>,
    /// `env.entries-json`'s answer, made once per worker run config.
    entries_json: String,
}

impl EnvCtx {
    pub fn new(run: &WorkerRun) -> Self {
        let mut vars = run.vars.clone();
        for (name, secret) in &run.secrets {
            vars.insert(name.clone(), secret.expose().to_owned());
        }
        let names = names(run);
        let entries_json = entries_json(&names, &vars);
        EnvCtx {
            vars,
            names,
            entries_json,
        }
    }

    /// Vars and secrets by name.
    pub fn vars(&self) -> &BTreeMap<String, String> {
        &self.vars
    }
}

/// Add `isola:worker/env` to `linker`.
pub fn add_to_linker<T: HostView<EnvCtx> + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    env::add_to_linker::<T, HasView<EnvCtx>>(linker, T::view)
}

impl env::Host for View<'_, EnvCtx> {
    fn var(&mut self, name: String) -> Option<String> {
        self.ctx.vars.get(&name).cloned()
    }

    fn bindings(&mut self) -> Vec<env::Binding> {
        self.ctx.names.clone()
    }

    fn entries_json(&mut self) -> String {
        self.ctx.entries_json.clone()
    }
}

/// The names of a worker's `env`, as `env.bindings` lists them.
fn names(run: &WorkerRun) -> Vec<env::Binding> {
    use env::BindingKind as Kind;
    let mut names: Vec<(&String, Kind)> = Vec::new();
    names.extend(run.vars.keys().map(|n| (n, Kind::Var)));
    names.extend(run.secrets.keys().map(|n| (n, Kind::Secret)));
    names.extend(run.kv_namespaces.iter().map(|b| (&b.binding, Kind::Kv)));
    names.extend(run.d1_databases.iter().map(|b| (&b.binding, Kind::Sql)));
    names.extend(run.r2_buckets.iter().map(|b| (&b.binding, Kind::Blob)));
    names.extend(
        run.analytics_engine_datasets
            .iter()
            .map(|b| (&b.binding, Kind::Analytics)),
    );
    names.extend(
        run.queue_producers
            .iter()
            .map(|b| (&b.binding, Kind::Queue)),
    );
    names.extend(run.services.iter().map(|b| (&b.binding, Kind::Service)));
    names.extend(
        run.durable_objects
            .iter()
            .map(|b| (&b.binding, Kind::DurableObject)),
    );
    names
        .into_iter()
        .map(|(name, kind)| env::Binding {
            name: name.clone(),
            kind,
        })
        .collect()
}

/// `names` with the values of the vars and secrets among them, as
/// `env.entries-json` gives them.
fn entries_json(names: &[env::Binding], vars: &BTreeMap<String, String>) -> String {
    use env::BindingKind as Kind;
    let entries: Vec<serde_json::Value> = names
        .iter()
        .map(|binding| {
            let kind = match binding.kind {
                Kind::Var => "var",
                Kind::Secret => "secret",
                Kind::Kv => "kv",
                Kind::Sql => "sql",
                Kind::Blob => "blob",
                Kind::Analytics => "analytics",
                Kind::Queue => "queue",
                Kind::Service => "service",
                Kind::DurableObject => "durable-object",
            };
            let mut entry = serde_json::json!({ "name": binding.name, "kind": kind });
            if matches!(binding.kind, Kind::Var | Kind::Secret)
                && let Some(value) = vars.get(&binding.name)
            {
                entry["value"] = value.as_str().into();
            }
            entry
        })
        .collect();
    serde_json::Value::Array(entries).to_string()
}
