//! Embedding Isola: a Rust service runs untrusted text-filter plugins.
//!
//! The plugin exports `filter` (see `wit/filter.wit`) and imports one host
//! function, `is-banned`, which this program implements. Each call runs in a
//! fresh instance with a CPU, wall-clock and memory budget; a plugin that
//! overruns one ends its call with a typed [`CallError`], never the host.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use isola_runtime::plugin::{self, CallError, Plugin, PluginState};
use isola_runtime::wasmtime::component::HasSelf;
use isola_runtime::{Backends, EngineOptions, IsolaEngine, Limits, WorkerRun};

isola_runtime::wasmtime::component::bindgen!({
    path: "wit",
    world: "filter",
    exports: { default: async },
    wasmtime_crate: isola_runtime::wasmtime,
});

/// What the host hands each call: the words to mask.
pub struct Host {
    banned: Arc<HashSet<String>>,
}

impl FilterImports for Host {
    fn is_banned(&mut self, word: String) -> bool {
        self.banned.contains(&word.to_lowercase())
    }
}

/// A loaded filter plugin and the words it masks.
pub struct Filters {
    plugin: Plugin<Host>,
    banned: Arc<HashSet<String>>,
}

impl Filters {
    /// Load the plugin at `component` (compiled once, cached under
    /// `state_dir`), to run under `limits`.
    pub fn load(
        component: &Path,
        state_dir: &Path,
        limits: Limits,
        banned: &[&str],
    ) -> anyhow::Result<Self> {
        let engine = IsolaEngine::new(&EngineOptions::new(state_dir.join("cache")))?;
        let mut linker = plugin::linker::<Host>(&engine)?;
        Filter::add_to_linker::<_, HasSelf<Host>>(&mut linker, PluginState::data_mut)?;
        let backends = Backends::embedded(state_dir, 0)?;
        let run = WorkerRun {
            limits,
            ..WorkerRun::default()
        };
        let plugin = Plugin::load(&engine, &linker, "filter", &run, component, &backends)?;
        Ok(Filters {
            plugin,
            banned: Arc::new(banned.iter().map(|w| w.to_lowercase()).collect()),
        })
    }

    /// Filter `input` in a fresh instance: the plugin's answer (its text,
    /// or its own refusal), or why the call was ended.
    pub async fn filter(&self, input: &str) -> Result<Result<String, String>, CallError> {
        let host = Host {
            banned: self.banned.clone(),
        };
        self.plugin
            .call(host, async |store, instance| {
                Filter::new(&mut *store, instance)?
                    .call_filter(store, input)
                    .await
            })
            .await
    }
}
