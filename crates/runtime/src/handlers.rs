//! Which handlers a component's code implements, asked of the component
//! itself (`isola:worker/handlers`). Some toolchains fix a component's
//! exports before any of its code runs: `isola build` gives every
//! JavaScript worker all the handlers, because which ones a module defines
//! is only known by running the module, and a worker's code runs nowhere
//! but inside wasm. So the host asks, once per load, in a fresh instance
//! under the worker's limits, and offers only what the answer names.

use std::time::Duration;

use wasmtime::Store;
use wasmtime::component::InstancePre;

use crate::state::HostState;

mod handlers_world {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "isola:worker/handlers-export",
        exports: { default: async },
    });
}

use handlers_world::HandlersExportPre;

/// A handler besides `fetch` that a worker may offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    /// `scheduled`, for cron triggers.
    Scheduled,
    /// `queue`, for queue consumers.
    Queue,
}

/// The handlers a component says it implements, or `None` when it does not
/// export `isola:worker/handlers` (then its exports say it all). The
/// question runs in the store `fresh_store` makes (a fresh one, the
/// worker's limits armed), and is given `wall` to answer.
pub(crate) fn implemented(
    pre: &InstancePre<HostState>,
    fresh_store: impl FnOnce() -> Result<Store<HostState>, String> + Send,
    wall: Duration,
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
                runtime.block_on(ask(pre, fresh_store()?, wall))
            })
            .join()
            .unwrap_or_else(|_| Err("the question panicked".to_owned()))
    })
    .map(Some)
}

async fn ask(
    pre: HandlersExportPre<HostState>,
    mut store: Store<HostState>,
    wall: Duration,
) -> Result<Vec<String>, String> {
    let call = async {
        let instance = pre.instantiate_async(&mut store).await?;
        instance
            .isola_worker_handlers()
            .call_implemented(&mut store)
            .await
    };
    match tokio::time::timeout(wall, call).await {
        Ok(Ok(names)) => Ok(names),
        Ok(Err(trap)) => Err(format!("{trap:#}")),
        Err(_) => Err(format!("no answer within wall_ms ({wall:?})")),
    }
}
