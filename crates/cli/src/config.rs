//! Reading the configs that are served, checked and compiled: a config
//! file's JavaScript workers are built as it is read.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use isola_config::{Config, ServerConfig};

use crate::js;

/// Read a config file for serving: parse and validate it, then build its
/// JavaScript workers (`main = "….js"`) into components. Every config that
/// is served (serve, dev, check, compile, reload, SIGHUP) is read here.
pub fn load_config(path: &Path) -> Result<Config> {
    let config = Config::load(path)?;
    js::build_workers(&config)?;
    Ok(config)
}

/// [`load_config`], with `--listen` (when given) in place of `[server] listen`.
pub fn load_config_listening(path: &Path, listen: Option<SocketAddr>) -> Result<Config> {
    let config = read_config_listening(path, listen)?;
    js::build_workers(&config)?;
    Ok(config)
}

/// [`load_config_listening`] without building the JavaScript workers: for
/// `dev`, whose watcher builds them (and installs them) in its first round.
pub fn read_config_listening(path: &Path, listen: Option<SocketAddr>) -> Result<Config> {
    let mut config = Config::load(path)?;
    if let Some(listen) = listen {
        config.server.listen = listen;
    }
    Ok(config)
}

/// Configs named on the command line: a `.toml` is read as a config file,
/// anything else is taken as a component.
pub fn configs_for(inputs: &[PathBuf], state_dir: &Path) -> Result<Vec<Config>> {
    inputs
        .iter()
        .map(|input| {
            if input.extension().is_some_and(|e| e == "toml") {
                load_config(input)
            } else if input.is_file() {
                let server = ServerConfig {
                    state_dir: state_dir.to_owned(),
                    ..ServerConfig::default()
                };
                Ok(Config::single(input.clone(), server))
            } else {
                bail!("{}: file not found", input.display())
            }
        })
        .collect()
}
