//! Loading workers: compiling (or finding in the cache) and checking every
//! worker of a config, in parallel.

use isola_config::WorkerConfig;
use isola_engine::IsolaEngine;
use isola_runtime::{Backends, LoadError, Worker};

/// Load (compile or fetch from the cache) every worker, in parallel.
/// Workers sharing a component compile it once.
pub fn load_workers(
    engine: &IsolaEngine,
    configs: &[WorkerConfig],
    backends: &Backends,
) -> Result<Vec<Worker>, LoadError> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = configs
            .iter()
            .map(|config| scope.spawn(move || Worker::load(engine, config, backends)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker loading panicked"))
            .collect()
    })
}
