//! What serving a config needs before the first request: the engine, the
//! backends, and every worker compiled (or found in the cache) and loaded,
//! in parallel. `serve`, `dev`, reloads, `check`, `compile` and `trigger`
//! all load here.

use anyhow::{Context, Result};
use isola_config::{Config, WorkerConfig};
use isola_runtime::{
    Backends, ClientSettings, EngineError, EngineOptions, Handler, IsolaEngine, LoadError,
    LoadedComponent, Worker, configure_client,
};

/// Hears how loading goes, worker by worker (the command draws a progress
/// bar on a terminal). Every method may be left out; `&()` hears nothing.
pub trait Progress: Send + Sync {
    /// `total` workers start loading.
    fn start(&self, _total: usize) {}
    /// One of them is done, loaded or failed.
    fn done(&self, _worker: &WorkerConfig) {}
    /// All of them are done.
    fn finish(&self) {}
}

impl Progress for () {}

/// Load (compile or fetch from the cache) every worker, in parallel.
/// Workers sharing a component compile it once.
pub fn load_workers(
    engine: &IsolaEngine,
    configs: &[WorkerConfig],
    backends: &Backends,
    progress: &dyn Progress,
) -> Result<Vec<Worker>, LoadError> {
    each_worker(configs, progress, |config| {
        load_worker(engine, config, backends)
    })
    .into_iter()
    .collect()
}

/// Load one worker, and refuse it when its triggers need a handler its
/// code does not offer.
fn load_worker(
    engine: &IsolaEngine,
    config: &WorkerConfig,
    backends: &Backends,
) -> Result<Worker, LoadError> {
    let worker = Worker::load(
        engine,
        &config.name,
        &config.run,
        &config.component,
        backends,
    )?;
    if !config.crons.is_empty() {
        worker.require(
            Handler::Scheduled,
            format!("worker `{}` has `triggers.crons`", config.name),
        )?;
    }
    if !config.queue_consumers.is_empty() {
        worker.require(
            Handler::Queue,
            format!("worker `{}` consumes queues", config.name),
        )?;
    }
    Ok(worker)
}

/// Compile (or find in the cache) every worker's component, in parallel,
/// without loading the worker (no backends): `isola compile`. One result
/// per config, in order.
pub fn compile_components(
    engine: &IsolaEngine,
    configs: &[WorkerConfig],
    progress: &dyn Progress,
) -> Vec<Result<LoadedComponent, EngineError>> {
    each_worker(configs, progress, |config| {
        engine.load_component(&config.component)
    })
}

/// `load` for every config, each on its own thread; one result per config,
/// in order.
fn each_worker<T: Send>(
    configs: &[WorkerConfig],
    progress: &dyn Progress,
    load: impl Fn(&WorkerConfig) -> T + Sync,
) -> Vec<T> {
    progress.start(configs.len());
    let load = &load;
    let results = std::thread::scope(|scope| {
        let handles: Vec<_> = configs
            .iter()
            .map(|config| {
                scope.spawn(move || {
                    let loaded = load(config);
                    progress.done(config);
                    loaded
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker loading panicked"))
            .collect()
    });
    progress.finish();
    results
}

/// The engine for `config`: its compile cache, and an instance pool sized
/// for its largest worker.
pub fn engine_for(config: &Config) -> Result<IsolaEngine> {
    Ok(IsolaEngine::new(&engine_options(config)?)?)
}

/// The options of [`engine_for`]'s engine.
pub(crate) fn engine_options(config: &Config) -> Result<EngineOptions> {
    let mut options = EngineOptions::new(config.server.cache_dir());
    options.max_instances = config.server.max_instances;
    options.queue_timeout = std::time::Duration::from_millis(config.server.queue_timeout_ms);
    options.max_memory_bytes =
        usize::try_from(largest_memory_mb(config) << 20).context("memory_mb too large")?;
    Ok(options)
}

/// The largest `memory_mb` of `config`'s workers (128 without workers):
/// what the instance pool is sized for.
pub(crate) fn largest_memory_mb(config: &Config) -> u64 {
    config
        .workers
        .iter()
        .map(|w| w.run.limits.memory_mb)
        .max()
        .unwrap_or(128)
}

/// Set up the process's outbound HTTP client from `[server]`: its pool's
/// idle timeout, the per-origin connection cap, and the extra CA roots of
/// `outbound_ca_file` (a file that holds no certificate is an error).
pub fn outbound_client_for(config: &Config) -> Result<()> {
    let server = &config.server;
    let mut settings = ClientSettings {
        idle_timeout: std::time::Duration::from_millis(server.outbound_idle_timeout_ms),
        max_connections_per_origin: server.outbound_max_connections_per_origin as usize,
        ..ClientSettings::default()
    };
    if let Some(file) = &server.outbound_ca_file {
        let text = std::fs::read(file)
            .with_context(|| format!("server.outbound_ca_file: cannot read {}", file.display()))?;
        settings.extra_roots = isola_runtime::parse_pem_certificates(&text)
            .map_err(|e| anyhow::anyhow!("server.outbound_ca_file {}: {e}", file.display()))?;
    }
    configure_client(settings);
    Ok(())
}

/// The state behind the workers' bindings.
/// The backends `[backends]` names, connected and checked (an unreachable
/// server stops start-up with its URL, credentials redacted). Connections
/// live on the bindings' own background runtime, so this works before any
/// runtime of ours exists.
pub fn backends_for(config: &Config) -> Result<Backends> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime
        .block_on(Backends::connect(
            &config.backends,
            &config.server.state_dir,
        ))
        .with_context(|| {
            if config.backends.is_distributed() {
                format!("{}: cannot start the backends", config.source.display())
            } else {
                format!(
                    "cannot open the state in {}",
                    config.server.state_dir.display()
                )
            }
        })
}
