//! The data of a run's `Store`: WASI contexts, outbound HTTP, the memory
//! limiter and the `isola:worker` capabilities (`host`). [`RunState`] is
//! what every run has; a worker request adds its request context
//! ([`HostState`]), a plugin call the embedder's data
//! ([`crate::plugin::PluginState`]).

use std::path::Path;
use std::sync::Arc;

use isola_backends::Backends;
use isola_config::WorkerRun;

use crate::load_error::LoadError;
use crate::services::ServiceCalls;
use crate::source_map::SourceMap;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpHooks};

use crate::guest_log::{GuestLog, PanicNote, Stream};
use crate::host::ctx::{AbortReports, RequestCtx};
use crate::host::durable::ObjectRunCtx;
use crate::host::{Capabilities, HostView, View};
use crate::meter::CpuMeter;
use crate::outbound::{OutboundPolicy, Subrequests};
use crate::profile::ActiveProfile;

/// What a worker's (or plugin's) runs share, built once at load time.
pub(crate) struct WorkerShared {
    pub name: Arc<str>,
    /// Vars and secrets as WASI environment variables, so `std::env::var`
    /// works too.
    pub environment: Vec<(String, String)>,
    pub capabilities: Capabilities,
    pub outbound: Arc<OutboundPolicy>,
    /// Largest linear memory, in bytes.
    pub memory_limit: usize,
    /// How guest log lines and uncaught exceptions are told: secret values
    /// masked, JavaScript positions mapped through the bundle's source map
    /// (`<component>.map`, read once at load).
    pub reports: AbortReports,
}

impl WorkerShared {
    /// What the runs of worker (or plugin) `name` share, from its
    /// configuration `run`; `component` is where source maps are looked for
    /// and what errors name.
    pub fn new(
        name: &str,
        run: &WorkerRun,
        backends: &Backends,
        component: &Path,
    ) -> Result<Self, LoadError> {
        let capabilities =
            Capabilities::new(name, run, backends).map_err(|e| LoadError::Bindings {
                worker: name.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(WorkerShared {
            name: name.into(),
            environment: capabilities
                .env
                .vars()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            capabilities,
            outbound: Arc::new(OutboundPolicy {
                rules: run.allowed_outbound_hosts.clone(),
                override_authority: run.outbound_override.clone(),
            }),
            memory_limit: usize::try_from(run.limits.memory_mb.saturating_mul(1 << 20))
                .unwrap_or(usize::MAX),
            reports: AbortReports {
                source_map: SourceMap::beside(component),
                secrets: run
                    .secrets
                    .values()
                    .map(|s| s.expose().to_owned())
                    .collect(),
            },
        })
    }
}

/// What every run's store holds.
pub(crate) struct RunState {
    pub wasi: WasiCtx,
    pub http: WasiHttpCtx,
    pub table: ResourceTable,
    pub hooks: IsolaHttpHooks,
    pub shared: Arc<WorkerShared>,
    /// What the guest's stdout and stderr lines are tagged with.
    log_request_id: Arc<std::sync::RwLock<Arc<str>>>,
    /// The last panic the guest printed on stderr in this run.
    pub panic: PanicNote,
    /// The profiler sampling this run, when it is profiled.
    pub profile: Option<Box<ActiveProfile>>,
    /// Set when the guest asked for more memory than its limit.
    pub memory_limit_hit: bool,
    /// Bytes of linear memory the instance holds (all its memories, as the
    /// limiter granted them), and how many it held once instantiated:
    /// `instance_reuse` retires an instance that has grown too far.
    pub memory_bytes: usize,
    pub memory_at_start: usize,
    /// The guest's CPU time, told by the store's call hook.
    pub meter: Arc<CpuMeter>,
}

impl RunState {
    pub fn new(
        shared: Arc<WorkerShared>,
        subrequests: Subrequests,
        services: ServiceCalls,
    ) -> Self {
        let log_request_id = Arc::new(std::sync::RwLock::new(services.request_id.0.clone()));
        let panic = PanicNote::default();
        let log = |stream| GuestLog {
            worker: shared.name.clone(),
            request_id: log_request_id.clone(),
            secrets: shared.reports.secrets.clone(),
            source_map: shared.reports.source_map.clone(),
            stream,
            panic: panic.clone(),
        };
        // No preopened directories, no inherited environment, no network:
        // the guest sees its vars and nothing of the host.
        let wasi = WasiCtx::builder()
            .envs(&shared.environment)
            .stdout(log(Stream::Stdout))
            .stderr(log(Stream::Stderr))
            .build();
        RunState {
            wasi,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: IsolaHttpHooks {
                policy: shared.outbound.clone(),
                subrequests,
                services,
                cache_endpoints: shared.capabilities.cache.endpoints(),
            },
            shared,
            log_request_id,
            panic,
            profile: None,
            memory_limit_hit: false,
            memory_bytes: 0,
            memory_at_start: 0,
            meter: Arc::default(),
        }
    }

    /// Point a reused instance at its next run: its id, its subrequest
    /// budget and service calls are that run's; nothing of the last one
    /// remains on the host side.
    pub fn begin(&mut self, subrequests: Subrequests, services: ServiceCalls) {
        *self.log_request_id.write().expect("request id lock") = services.request_id.0.clone();
        self.hooks.subrequests = subrequests;
        self.hooks.services = services;
        self.memory_limit_hit = false;
        self.panic.clear();
    }

    /// The memory limiter's answer to a guest growing a memory from
    /// `current` to `desired` bytes (from 0 when it is made).
    pub fn memory_growing(&mut self, current: usize, desired: usize) -> bool {
        if desired > self.shared.memory_limit {
            self.memory_limit_hit = true;
            return false;
        }
        self.memory_bytes = self
            .memory_bytes
            .saturating_add(desired.saturating_sub(current));
        true
    }

    /// Bytes of linear memory the instance has grown by since it was made.
    pub fn memory_grown(&self) -> usize {
        self.memory_bytes.saturating_sub(self.memory_at_start)
    }

    /// Each table element costs a pointer; tables are held to the same
    /// budget as memory.
    pub fn table_growing(&self, desired: usize) -> bool {
        desired.saturating_mul(std::mem::size_of::<usize>()) <= self.shared.memory_limit
    }
}

/// The data of one worker request's `Store`.
pub(crate) struct HostState {
    pub run: RunState,
    pub request: RequestCtx,
    /// The worker's Durable Object namespaces, and the object this run
    /// serves, if any.
    pub object: ObjectRunCtx,
}

impl HostState {
    pub fn new(
        shared: Arc<WorkerShared>,
        subrequests: Subrequests,
        services: ServiceCalls,
    ) -> Self {
        let request = request_ctx(&shared, &services);
        let object = ObjectRunCtx::new(&shared.capabilities.durable, services.object.clone());
        HostState {
            run: RunState::new(shared, subrequests, services),
            request,
            object,
        }
    }

    /// Point a reused instance's host state at its next request: what the
    /// guest sees of the request (id, info, locals) and what it is charged
    /// (subrequests) are that request's.
    pub fn begin_request(&mut self, subrequests: Subrequests, services: ServiceCalls) {
        self.request = request_ctx(&self.run.shared, &services);
        self.object = ObjectRunCtx::new(
            &self.run.shared.capabilities.durable,
            services.object.clone(),
        );
        self.run.begin(subrequests, services);
    }
}

/// The request context of a run making `services`' calls.
fn request_ctx(shared: &WorkerShared, services: &ServiceCalls) -> RequestCtx {
    RequestCtx {
        request_id: services.request_id.0.clone(),
        info: services.info.clone(),
        locals: services.locals.clone(),
        pass_through: Default::default(),
        reports: shared.reports.clone(),
    }
}

/// For store data with a `run: RunState` field: WASI, `wasi:http`, the
/// memory limiter, and each capability's view (its context, this store's
/// table, this run's subrequest budget).
macro_rules! run_state_views {
    ([$($generics:tt)*] $data:ty) => {
        impl<$($generics)*> wasmtime_wasi::WasiView for $data {
            fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
                wasmtime_wasi::WasiCtxView {
                    ctx: &mut self.run.wasi,
                    table: &mut self.run.table,
                }
            }
        }

        impl<$($generics)*> wasmtime_wasi_http::WasiHttpView for $data {
            fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
                // Every `wasi:http` call goes through here first: they are
                // the HTTP client's and server's work (fields, requests,
                // responses, bodies), the host's, not charged to `cpu_ms`.
                // (Outside a host call, as when the runtime makes a
                // request, this marks nothing.)
                self.run.meter.uncharged();
                wasmtime_wasi_http::WasiHttpCtxView {
                    ctx: &mut self.run.http,
                    table: &mut self.run.table,
                    hooks: &mut self.run.hooks,
                }
            }
        }

        impl<$($generics)*> $crate::meter::HasRunState for $data {
            fn run_state(&mut self) -> &mut $crate::state::RunState {
                &mut self.run
            }
        }

        impl<$($generics)*> wasmtime::ResourceLimiter for $data {
            fn memory_growing(
                &mut self,
                current: usize,
                desired: usize,
                _maximum: Option<usize>,
            ) -> wasmtime::Result<bool> {
                Ok(self.run.memory_growing(current, desired))
            }

            fn table_growing(
                &mut self,
                _current: usize,
                desired: usize,
                _maximum: Option<usize>,
            ) -> wasmtime::Result<bool> {
                Ok(self.run.table_growing(desired))
            }
        }

        // `charged`: env's calls are the guest's (sync, in memory). The
        // others call into backends (async): the host's work, like I/O,
        // not charged to `cpu_ms` (the subrequest budget counts them).
        $crate::state::run_state_views!(@caps [$($generics)*] $data;
            $crate::host::env::EnvCtx => env, charged,
            $crate::host::kv::KvCtx => kv, uncharged,
            $crate::host::sql::SqlCtx => sql, uncharged,
            $crate::host::blob::BlobCtx => blob, uncharged,
            $crate::host::cache::CacheCtx => cache, uncharged,
            $crate::host::analytics::AnalyticsCtx => analytics, uncharged,
            $crate::host::queue::QueueCtx => queue, uncharged,
        );
    };
    (@caps $generics:tt $data:ty; $($ctx:ty => $field:ident, $charge:ident),* $(,)?) => {$(
        $crate::state::run_state_views!(@cap $generics $data; $ctx => $field, $charge);
    )*};
    (@charge charged $self:ident) => {};
    (@charge uncharged $self:ident) => {
        $self.run.meter.uncharged();
    };
    (@cap [$($generics:tt)*] $data:ty; $ctx:ty => $field:ident, $charge:ident) => {
        impl<$($generics)*> $crate::host::HostView<$ctx> for $data {
            fn view(&mut self) -> $crate::host::View<'_, $ctx> {
                $crate::state::run_state_views!(@charge $charge self);
                $crate::host::View {
                    ctx: &self.run.shared.capabilities.$field,
                    table: &mut self.run.table,
                    meter: &self.run.hooks.subrequests,
                }
            }
        }
    };
}
pub(crate) use run_state_views;

run_state_views!([] HostState);

impl HostView<ObjectRunCtx> for HostState {
    fn view(&mut self) -> View<'_, ObjectRunCtx> {
        View {
            ctx: &self.object,
            table: &mut self.run.table,
            meter: &self.run.hooks.subrequests,
        }
    }
}

impl HostView<RequestCtx> for HostState {
    fn view(&mut self) -> View<'_, RequestCtx> {
        View {
            ctx: &self.request,
            table: &mut self.run.table,
            meter: &self.run.hooks.subrequests,
        }
    }
}

/// Outbound HTTP goes through the worker's allow-list and the request's
/// subrequest budget; a worker granted no hosts reaches nothing.
pub(crate) struct IsolaHttpHooks {
    policy: Arc<OutboundPolicy>,
    pub subrequests: Subrequests,
    services: ServiceCalls,
    cache_endpoints: Arc<crate::host::cache::Endpoints>,
}

impl WasiHttpHooks for IsolaHttpHooks {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = wasmtime_wasi_http::Result<(
                    http::Response<wasmtime_wasi_http::WasiBody>,
                    Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                )>,
            > + Send,
    > {
        Box::new(crate::outbound::send(
            self.policy.clone(),
            self.subrequests.clone(),
            self.services.clone(),
            self.cache_endpoints.clone(),
            request,
            options,
        ))
    }
}
