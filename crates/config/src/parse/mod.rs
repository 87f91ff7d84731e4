//! From `isola.toml`'s text to the model, one section at a time: `[server]`,
//! each `[[worker]]` (see `worker`), then `[backends]`. Every step answers
//! with a [`Fault`] that names its span and key; only here is it placed at a
//! line and column of the file.

mod backends;
mod bindings;
mod checks;
mod server;
mod source;
mod triggers;
mod worker;

use std::path::Path;

use crate::error::{ConfigError, Fault};
use crate::model::Config;
use crate::raw::RawConfig;

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

    /// [`Config::load`] for tools that need the names of a worker's
    /// secrets, not their values (`isola types`): no secret is looked up,
    /// each is the empty string. Never serve what this returns.
    pub fn load_without_secrets(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            line: 0,
            column: 0,
            key: None,
            message: format!("cannot read: {e}"),
        })?;
        parse(path, &text, false).map_err(|fault| fault.locate(path, &text))
    }

    /// Validate config text; `path` names it in errors and anchors relative
    /// paths.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        parse(path, text, true).map_err(|fault| fault.locate(path, text))
    }
}

/// `secret_values`: look up each secret's value (else each is empty).
fn parse(path: &Path, text: &str, secret_values: bool) -> Result<Config, Fault> {
    let raw: RawConfig =
        toml::from_str(text).map_err(|e| Fault::new(e.span(), None, e.message().trim()))?;
    let base = path.parent().unwrap_or(Path::new(""));
    let (server, outbound_override) = server::parse_server(raw.server, base)?;
    let mut workers =
        worker::parse_workers(raw.worker, base, &server, outbound_override, secret_values)?;
    // Beside other workers, one may hold at most three quarters of the
    // instance pool, so an overloaded one cannot starve the rest.
    if workers.len() > 1 {
        let cap = (server.max_instances - server.max_instances / 4).max(1);
        for worker in &mut workers {
            worker.run.instance_cap = cap;
        }
    }
    let backends = backends::parse_backends(&raw.backends, base)?;
    Ok(Config {
        source: path.to_owned(),
        server,
        backends,
        workers,
    })
}
