//! Which handlers a component's code implements, asked of the component
//! itself (`isola:worker/handlers`). Some toolchains fix a component's
//! exports before any of its code runs: `isola build` gives every
//! JavaScript worker all the handlers, because which ones a module defines
//! is only known by running the module, and a worker's code runs nowhere
//! but inside wasm. So the host asks, once per load, in a fresh instance
//! under the worker's limits, and offers only what the answer names.

use std::path::Path;
use std::sync::Arc;

use isola_config::WorkerConfig;

use wasmtime::component::InstancePre;

use crate::outbound::Subrequests;
use crate::state::HostState;
use crate::{LoadError, RequestId, RequestInfo, Worker, services};

mod handlers_world {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "isola:worker/handlers-export",
        exports: { default: async },
    });
}

use handlers_world::HandlersExportPre;

/// Settle which handlers `worker` offers: those its component exports,
/// narrowed to what it says it implements when it answers
/// `isola:worker/handlers`. A config that needs a handler the worker lacks
/// (crons, queue consumers) is refused here, at load.
pub(crate) fn settle(
    worker: &mut Worker,
    pre: &InstancePre<HostState>,
    config: &WorkerConfig,
    path: &Path,
) -> Result<(), LoadError> {
    let path_text = || path.display().to_string();
    if let Some(implemented) =
        implemented(worker, pre).map_err(|reason| LoadError::HandlersQuestion {
            path: path_text(),
            reason,
        })?
    {
        let implements = |name: &str| implemented.iter().any(|n| n == name);
        for (handler, wanted) in [
            ("scheduled", !config.crons.is_empty()),
            ("queue", !config.queue_consumers.is_empty()),
        ] {
            if wanted && !implements(handler) {
                return Err(LoadError::NotImplemented {
                    path: path_text(),
                    handler,
                    reason: if handler == "scheduled" {
                        format!("worker `{}` has `triggers.crons`", config.name)
                    } else {
                        format!("worker `{}` consumes queues", config.name)
                    },
                });
            }
        }
        let inner = Arc::get_mut(&mut worker.inner).expect("the worker is not shared yet");
        if !implements("scheduled") {
            inner.scheduled = None;
        }
        if !implements("queue") {
            inner.queue = None;
        }
    }
    if !config.crons.is_empty() && worker.inner.scheduled.is_none() {
        return Err(LoadError::MissingHandler {
            path: path_text(),
            handler: "scheduled",
            reason: format!("worker `{}` has `triggers.crons`", config.name),
        });
    }
    if !config.queue_consumers.is_empty() && worker.inner.queue.is_none() {
        return Err(LoadError::MissingHandler {
            path: path_text(),
            handler: "queue-consumer",
            reason: format!("worker `{}` consumes queues", config.name),
        });
    }
    Ok(())
}

/// The handlers a component says it implements, or `None` when it does not
/// export `isola:worker/handlers` (then its exports say it all).
fn implemented(
    worker: &Worker,
    pre: &InstancePre<HostState>,
) -> Result<Option<Vec<String>>, String> {
    let Ok(pre) = HandlersExportPre::new(pre.clone()) else {
        return Ok(None);
    };
    // Loading is synchronous and may happen on any thread, inside a tokio
    // runtime or not: the question gets a thread and a runtime of its own
    // (its timers and any host I/O the guest starts need one).
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("cannot start a runtime: {e}"))?;
                runtime.block_on(ask(worker, pre))
            })
            .join()
            .unwrap_or_else(|_| Err("the question panicked".to_owned()))
    })
    .map(Some)
}

async fn ask(worker: &Worker, pre: HandlersExportPre<HostState>) -> Result<Vec<String>, String> {
    let inner = &worker.inner;
    let request_id = RequestId::generate();
    let services = services::ServiceCalls {
        services: std::sync::Weak::new(),
        bindings: Arc::default(),
        depth: 0,
        locals: Arc::default(),
        request_id,
        info: RequestInfo::default(),
    };
    // No subrequests: answering needs none.
    let subrequests = Subrequests {
        used: Arc::default(),
        budget: 0,
        backend_failed: Arc::default(),
    };
    let mut store = worker
        .new_store(services, subrequests, inner.fuel)
        .map_err(|e| e.cause)?;
    let call = async {
        let instance = pre.instantiate_async(&mut store).await?;
        instance
            .isola_worker_handlers()
            .call_implemented(&mut store)
            .await
    };
    match tokio::time::timeout(inner.wall, call).await {
        Ok(Ok(names)) => Ok(names),
        Ok(Err(trap)) => Err(format!("{trap:#}")),
        Err(_) => Err(format!("no answer within wall_ms ({:?})", inner.wall)),
    }
}
