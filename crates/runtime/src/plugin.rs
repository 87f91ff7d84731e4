//! Plugins: components that export a world of the embedder's own, called
//! with the machinery of a worker request.
//!
//! Each call gets a fresh instance made from the pre-instantiated
//! component (or, opted in with `instance_reuse`, one kept from an earlier
//! call), fuel for its CPU time, an epoch deadline for its wall time and a
//! cap on its memory; the compiled component is cached on disk by the
//! engine. A call that hits a limit ends with a [`CallError`] naming it.
//!
//! The embedder's store data `T` sits in [`PluginState`]; its host
//! functions are added with the `add_to_linker` that
//! `wasmtime::component::bindgen!` generates for its world, and Isola's own
//! capabilities with [`crate::host`]'s (`host::kv::add_to_linker`, ...) and
//! [`add_http_to_linker`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use isola_runtime::plugin::{self, Plugin, PluginState};
//! use isola_runtime::{Backends, EngineOptions, IsolaEngine, WorkerRun};
//!
//! // The plugin's world, say `export greet: func(name: string) -> string;`.
//! isola_runtime::wasmtime::component::bindgen!({
//!     inline: "package demo:greeter; world greeter { export greet: func(name: string) -> string; }",
//!     exports: { default: async },
//!     wasmtime_crate: isola_runtime::wasmtime,
//! });
//!
//! let engine = IsolaEngine::new(&EngineOptions::new(".isola/cache"))?;
//! let linker = plugin::linker::<()>(&engine)?;
//! let backends = Backends::embedded(".isola".as_ref(), 0)?;
//! let mut run = WorkerRun::default();
//! run.limits.cpu_ms = 10;
//! let greeter: Plugin<()> =
//!     Plugin::load(&engine, &linker, "greeter", &run, "greeter.wasm".as_ref(), &backends)?;
//! let greeting = greeter
//!     .call((), async |store, instance| {
//!         Greeter::new(&mut *store, instance)?.call_greet(store, "Ada").await
//!     })
//!     .await?;
//! # Ok(()) }
//! ```

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use isola_backends::Backends;
use isola_config::{Limits, WorkerRun};
use isola_engine::{CacheOutcome, IsolaEngine};
use wasmtime::Store;
use wasmtime::component::{Instance, InstancePre, Linker};

use crate::backtrace::Backtrace;
use crate::failure::{Failure, GuestError, Limit};
use crate::limits::Budget;
use crate::load_error::LoadError;
use crate::outbound::Subrequests;
use crate::report::within_limits;
use crate::request::RequestId;
use crate::services::ServiceCalls;
use crate::state::{RunState, WorkerShared, run_state_views};

/// The data of a plugin call's `Store`: Isola's part (WASI, the memory
/// limiter, the capabilities) and the embedder's `T`.
pub struct PluginState<T> {
    pub(crate) run: RunState,
    data: T,
}

impl<T> PluginState<T> {
    /// The embedder's data for this call.
    pub fn data(&self) -> &T {
        &self.data
    }

    pub fn data_mut(&mut self) -> &mut T {
        &mut self.data
    }
}

run_state_views!([T: Send] PluginState<T>);

/// A linker for plugins whose store data is `T`, with WASI 0.2 in it
/// (cargo's `wasm32-wasip2` output imports it): no files, no sockets, no
/// environment but the plugin's vars. Add the world's imports to it.
pub fn linker<T: Send + 'static>(engine: &IsolaEngine) -> wasmtime::Result<Linker<PluginState<T>>> {
    let mut linker = Linker::new(engine.engine());
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    crate::meter::add_uncharged_io(&mut linker)?;
    Ok(linker)
}

/// Let plugins send HTTP requests (`wasi:http/outgoing-handler`), to the
/// hosts their `allowed_outbound_hosts` allow and within their subrequest
/// budget, as workers do.
pub fn add_http_to_linker<T: Send + 'static>(
    linker: &mut Linker<PluginState<T>>,
) -> wasmtime::Result<()> {
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)
}

/// Why a plugin call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The call used its CPU time (`limits.cpu_ms`).
    #[error("the plugin used up its CPU time ({cpu_ms} ms)")]
    CpuLimit { cpu_ms: u64 },
    /// The call ran past its wall-clock deadline (`limits.wall_ms`).
    #[error("the plugin ran past its wall-clock limit ({wall_ms} ms)")]
    WallLimit { wall_ms: u64 },
    /// The plugin asked for more memory than `limits.memory_mb`.
    #[error("the plugin asked for more memory than its limit ({memory_mb} MiB)")]
    MemoryLimit { memory_mb: u64 },
    /// Every instance slot of the engine stayed busy for its queue
    /// timeout: the call did not run.
    #[error("overloaded: no instance slot freed within {queue_ms} ms")]
    Overloaded { queue_ms: u64 },
    /// The plugin trapped (a panic, say), or a host function or the
    /// embedder's call code returned an error.
    #[error("the plugin failed: {cause}")]
    Failed {
        cause: String,
        /// The plugin's stack when it trapped.
        backtrace: Option<Backtrace>,
    },
}

impl CallError {
    /// The limit that ended the call, if one did.
    pub fn limit(&self) -> Option<Limit> {
        match self {
            CallError::CpuLimit { .. } => Some(Limit::Cpu),
            CallError::WallLimit { .. } => Some(Limit::Wall),
            CallError::MemoryLimit { .. } => Some(Limit::Memory),
            CallError::Failed { .. } | CallError::Overloaded { .. } => None,
        }
    }

    fn new(error: GuestError, budget: &Budget) -> Self {
        let limits = &budget.limits;
        match error.failure {
            Failure::CpuLimit => CallError::CpuLimit {
                cpu_ms: limits.cpu_ms,
            },
            Failure::WallLimit => CallError::WallLimit {
                wall_ms: limits.wall_ms,
            },
            Failure::MemoryLimit => CallError::MemoryLimit {
                memory_mb: limits.memory_mb,
            },
            Failure::Overloaded => CallError::Overloaded {
                queue_ms: budget.slots.queue_timeout().as_millis() as u64,
            },
            _ => CallError::Failed {
                cause: error.cause,
                backtrace: error.backtrace,
            },
        }
    }
}

/// A loaded plugin: a compiled, pre-instantiated component, its limits and
/// capabilities. Cheap to clone; calls may run concurrently.
pub struct Plugin<T: 'static> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for Plugin<T> {
    fn clone(&self) -> Self {
        Plugin {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<T: 'static> {
    shared: Arc<WorkerShared>,
    pre: InstancePre<PluginState<T>>,
    budget: Budget,
    cache_outcome: CacheOutcome,
    /// `instance_reuse`: calls one instance may serve (0 or 1: one).
    reuse: u32,
    idle: Mutex<Vec<Idle<T>>>,
}

/// An instance kept for another call, with the calls it has served.
struct Idle<T: 'static> {
    store: Store<PluginState<T>>,
    instance: Instance,
    served: u32,
    /// The pool slot its instance holds while it waits.
    slot: crate::limits::Slot,
}

impl<T: Send + 'static> Plugin<T> {
    /// Compile (or load from the engine's cache) `component`, link it
    /// against `linker` and pre-instantiate it. `run` gives the plugin's
    /// limits, vars and secrets, bindings, outbound rules and
    /// `instance_reuse`; `backends` hold the state behind its bindings.
    pub fn load(
        engine: &IsolaEngine,
        linker: &Linker<PluginState<T>>,
        name: &str,
        run: &WorkerRun,
        component: &Path,
        backends: &Backends,
    ) -> Result<Self, LoadError> {
        let loaded = engine.load_component(component)?;
        let pre =
            linker
                .instantiate_pre(&loaded.component)
                .map_err(|e| LoadError::UnknownImport {
                    path: component.display().to_string(),
                    reason: format!("{e:#}"),
                })?;
        let shared = Arc::new(WorkerShared::new(name, run, backends, component)?);
        tracing::info!(plugin = %name, component = %component.display(), cache = ?loaded.outcome, "plugin loaded");
        Ok(Plugin {
            inner: Arc::new(Inner {
                shared,
                pre,
                budget: Budget::new(run, engine),
                cache_outcome: loaded.outcome,
                reuse: run.instance_reuse,
                idle: Mutex::default(),
            }),
        })
    }

    /// Where the component came from when the plugin was loaded.
    pub fn cache_outcome(&self) -> CacheOutcome {
        self.inner.cache_outcome
    }

    pub fn limits(&self) -> Limits {
        self.inner.budget.limits
    }

    /// Make one call: `f` gets a store holding `data` with the limits
    /// armed, and the plugin's instance, and calls its exports (through
    /// the bindings `bindgen!` made for the world). The instance is
    /// dropped afterwards, or kept for another call with `instance_reuse`
    /// when the call succeeded.
    pub async fn call<R>(
        &self,
        data: T,
        f: impl AsyncFnOnce(&mut Store<PluginState<T>>, &Instance) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        let inner = &self.inner;
        let limits = &inner.budget.limits;
        let id = RequestId::generate();
        let meter = Subrequests::new(limits.subrequests);
        let services = ServiceCalls::none(id);
        let (mut store, kept, served, slot) = match self.take_idle() {
            Some(mut idle) => {
                let state = idle.store.data_mut();
                state.run.begin(meter, services);
                state.data = data;
                (idle.store, Some(idle.instance), idle.served, idle.slot)
            }
            None => {
                let slot =
                    (inner.budget.admit().await).map_err(|e| CallError::new(e, &inner.budget))?;
                (self.new_store(data, meter, services)?, None, 0, slot)
            }
        };
        inner
            .budget
            .arm(&mut store, inner.budget.fuel)
            .map_err(|e| CallError::new(GuestError::host(Failure::Exception, e), &inner.budget))?;

        let meter = store.data().run.meter.clone();
        let guest = async {
            let instance = match kept {
                Some(instance) => instance,
                None => inner.pre.instantiate_async(&mut store).await?,
            };
            let value = f(&mut store, &instance).await?;
            Ok((value, instance))
        };
        let outcome = within_limits(
            async { Ok::<_, GuestError>(guest.await) },
            meter,
            Arc::new(AtomicU64::new(0)),
            inner.budget.wall,
            Duration::from_millis(limits.cpu_ms),
        )
        .await;
        let memory_limit_hit = store.data().run.memory_limit_hit;
        let panic = store.data().run.panic.get();
        let (result, kept) = match outcome {
            Ok(Ok((value, instance))) => (Ok(value), Some(instance)),
            Ok(Err(trap)) => {
                let error = GuestError::from_trap(trap, memory_limit_hit, false, panic);
                (Err(CallError::new(error, &inner.budget)), None)
            }
            Err(cut_off) => (Err(CallError::new(cut_off, &inner.budget)), None),
        };
        match kept {
            Some(instance) if !memory_limit_hit && served + 1 < inner.reuse => {
                inner.idle.lock().expect("idle lock").push(Idle {
                    store,
                    instance,
                    served: served + 1,
                    slot,
                });
            }
            // The instance goes before its slot is given back.
            _ => {
                drop(store);
                drop(slot);
            }
        }
        result
    }

    fn take_idle(&self) -> Option<Idle<T>> {
        if self.inner.reuse <= 1 {
            return None;
        }
        self.inner.idle.lock().expect("idle lock").pop()
    }

    /// A fresh store holding `data`, with the memory limiter on and fuel
    /// yields set (the fuel and deadline are armed per call).
    fn new_store(
        &self,
        data: T,
        meter: Subrequests,
        services: ServiceCalls,
    ) -> Result<Store<PluginState<T>>, CallError> {
        let inner = &self.inner;
        let state = PluginState {
            run: RunState::new(inner.shared.clone(), meter, services),
            data,
        };
        inner
            .budget
            .store(inner.pre.engine(), state)
            .map_err(|e| CallError::new(GuestError::host(Failure::Exception, e), &inner.budget))
    }
}
