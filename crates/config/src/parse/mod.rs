//! From `isola.toml`'s text to the model: the raw types (`document`, past
//! every unknown key and mistyped value), then one section at a time:
//! `[server]`, each `[[worker]]` (see `worker`; Durable Object bindings
//! once every worker's migrations are read, see `durable`), then
//! `[backends]`. Every
//! check records a [`Fault`] that names its span and key, and checking goes
//! on, so that one run finds every independent error; only here are they
//! placed at a line and column of the file.

mod backends;
mod bindings;
mod checks;
mod cluster;
mod document;
mod durable;
mod server;
mod source;
mod triggers;
mod worker;

use std::path::Path;

use crate::error::{ConfigErrors, Faults, unreadable};
use crate::model::Config;

impl Config {
    /// Read and validate a config file. The error holds every error found,
    /// in file order.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| unreadable(path, &e))?;
        Self::parse(path, &text)
    }

    /// [`Config::load`] for tools that need the names of a worker's
    /// secrets, not their values (`isola types`): no secret is looked up,
    /// each is the empty string. Never serve what this returns.
    pub fn load_without_secrets(path: &Path) -> Result<Self, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| unreadable(path, &e))?;
        parse(path, &text, false)
    }

    /// Validate config text; `path` names it in errors and anchors relative
    /// paths.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigErrors> {
        parse(path, text, true)
    }
}

/// `secret_values`: look up each secret's value (else each is empty).
fn parse(path: &Path, text: &str, secret_values: bool) -> Result<Config, ConfigErrors> {
    let mut faults = Faults::default();
    let config = document::read(text, &mut faults).map(|raw| {
        let base = path.parent().unwrap_or(Path::new(""));
        let (server, outbound_override) = server::parse_server(raw.server, base, &mut faults);
        let mut workers = worker::parse_workers(
            raw.worker,
            base,
            &server,
            outbound_override,
            secret_values,
            &mut faults,
        );
        // Beside other workers, one may hold at most three quarters of the
        // instance pool, so an overloaded one cannot starve the rest.
        if workers.len() > 1 {
            let cap = (server.max_instances - server.max_instances / 4).max(1);
            for worker in &mut workers {
                worker.run.instance_cap = cap;
            }
        }
        let backends = backends::parse_backends(&raw.backends, base, &mut faults);
        let cluster = cluster::parse_cluster(raw.cluster, &backends, &mut faults);
        Config {
            source: path.to_owned(),
            server,
            backends,
            workers,
            cluster,
        }
    });
    // `document::read` answers `None` only with a fault recorded.
    match (config, faults.locate(path, text)) {
        (_, Some(errors)) => Err(errors),
        (Some(config), None) => Ok(config),
        (None, None) => unreachable!("a config that was not read has a fault"),
    }
}
