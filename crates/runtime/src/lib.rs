//! Run wasm worker components, each request in a fresh instance.
//!
//! This is Isola's embedding API: load a [`Worker`] once from an
//! [`IsolaEngine`](isola_engine::IsolaEngine) and a
//! [`WorkerConfig`](isola_config::WorkerConfig), then call
//! [`Worker::handle`] with any `http::Request`. Every call gets a new `Store`
//! and instance made from the pre-instantiated component, with the worker's
//! limits armed; nothing a guest does survives its request.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use isola_engine::{EngineOptions, IsolaEngine};
//! use isola_config::WorkerConfig;
//! use http_body_util::{BodyExt, Empty};
//!
//! let engine = IsolaEngine::new(&EngineOptions::new(".isola/cache"))?;
//! // Where KV, SQL, blob and analytics state lives; a cache of 64 MiB.
//! let backends = isola_runtime::Backends::embedded(".isola".as_ref(), 64 << 20)?;
//! let worker = isola_runtime::Worker::load(&engine, &WorkerConfig::new("hello", "hello.wasm"), &backends)?;
//! let request = http::Request::get("http://localhost/").body(Empty::<bytes::Bytes>::new())?;
//! let response = worker.handle(request).await;
//! let body = response.into_body().collect().await?.to_bytes();
//! # Ok(()) }
//! ```

mod coalesce;
mod env_bindings;
mod failure;
mod generated;
mod guest_log;
mod handlers;
mod http_batch;
mod linker;
mod outbound;
mod pass_through;
mod report;
mod resources;
mod services;
mod source_map;
mod state;
mod triggers;

use failure::GuestError;
pub use failure::{Failure, error_response};
pub use isola_backends::Backends;
pub use pass_through::REPLAY_BUFFER_LIMIT;
pub use services::{MAX_CALL_DEPTH, SERVICE_HOST_SUFFIX, Services};
pub use triggers::{MessageOutcome, QueueMessage, TriggerError, TriggerRun};

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use isola_config::{Limits, WorkerConfig};
use isola_engine::{CacheOutcome, EngineError, IsolaEngine};
use wasmtime::Store;
use wasmtime::component::Component;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};

use outbound::{OutboundPolicy, Subrequests};
pub use report::RequestStats;
use report::{Report, within_limits};
use state::{HostState, WorkerShared};

/// The body of a response produced by a worker; it streams from the guest.
pub type Body = wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// Header naming the reason of a response the host made for a failed request.
pub const ERROR_HEADER: &str = "x-isola-error";

/// Fuel granted per millisecond of `cpu_ms` (`[server] fuel_per_ms`
/// overrides it). Calibrated on the development machine with
/// the Fuel section of `bench/run` (8.4–8.8 M): a compute-bound guest
/// burns this much fuel per millisecond of thread CPU time.
pub const DEFAULT_FUEL_PER_MS: u64 = 8_500_000;

/// The client's address. The server puts it in the request's extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub std::net::SocketAddr);

/// What the host knows about a request beyond its HTTP message (the
/// `request.cf` of Workers), given to guests through `request-info`. The
/// server puts one in the request's extensions; without it the client
/// address and protocol come from [`ClientAddr`] and the request itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestInfo {
    pub client_address: Option<std::net::IpAddr>,
    pub protocol: String,
    pub tls_version: Option<String>,
    pub colo: Option<String>,
    pub country: Option<String>,
}

/// How `request-info` names an HTTP version.
pub fn protocol_name(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// The id of a request. Put one in the request's extensions to choose it;
/// otherwise [`Worker::handle`] makes one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestId(Arc<str>);

impl RequestId {
    /// A new id, unique within the process and hard to guess across
    /// processes: 16 hex digits mixing a per-process seed with a counter.
    pub fn generate() -> Self {
        static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let seed = *SEED.get_or_init(|| {
            use std::hash::{BuildHasher, RandomState};
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64;
            RandomState::new().hash_one(nanos ^ u64::from(std::process::id()))
        });
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        RequestId(format!("{:016x}", splitmix64(seed.wrapping_add(n))).into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A bijective mixer: distinct counters give distinct, scattered ids.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Why a worker could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{path}: imports something Isola does not provide: {reason}")]
    UnknownImport { path: String, reason: String },
    #[error("{path}: does not export `wasi:http/incoming-handler` (the fetch handler): {reason}")]
    NoHandler { path: String, reason: String },
    #[error("cannot set up the host linker: {0}")]
    Linker(String),
    #[error("{path}: {reason}, but the component does not export `isola:worker/{handler}`")]
    MissingHandler {
        path: String,
        handler: &'static str,
        reason: String,
    },
    #[error("worker `{worker}`: cannot open its bindings: {reason}")]
    Bindings { worker: String, reason: String },
    #[error(
        "{path}: {reason}, but the worker's code defines no `{handler}` handler (the component's answer to `isola:worker/handlers`)"
    )]
    NotImplemented {
        path: String,
        handler: &'static str,
        reason: String,
    },
    #[error(
        "{path}: asked which handlers it implements (`isola:worker/handlers`), it failed: {reason}"
    )]
    HandlersQuestion { path: String, reason: String },
}

/// Counts a running guest task until dropped.
struct ActiveTask(Arc<std::sync::atomic::AtomicUsize>);

impl ActiveTask {
    fn start(counter: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        ActiveTask(counter.clone())
    }
}

impl Drop for ActiveTask {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A body holding `bytes`, in the worker response body type.
pub fn full_body(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A loaded worker: a compiled, pre-instantiated component plus its
/// configuration. Cheap to clone.
#[derive(Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<WorkerShared>,
    pre: ProxyPre<HostState>,
    scheduled: Option<triggers::scheduled_world::ScheduledHandlerPre<HostState>>,
    queue: Option<triggers::queue_world::QueueHandlerPre<HostState>>,
    /// CPU budget of a scheduled run or queue batch.
    trigger_cpu_ms: u64,
    limits: Limits,
    fuel: u64,
    /// Fuel between yields to the async executor, so that a spinning guest
    /// lets other requests on its thread run (about a millisecond of CPU).
    fuel_yield_interval: u64,
    wall: Duration,
    wall_ticks: u64,
    server_timing: bool,
    consume_fuel: bool,
    cache_outcome: CacheOutcome,
    origin: Option<String>,
    /// Service binding name (lower-cased) → worker name.
    bindings: Arc<std::collections::HashMap<String, String>>,
    services: std::sync::OnceLock<std::sync::Weak<Services>>,
    /// Guest tasks still running, responses sent or not.
    active: Arc<std::sync::atomic::AtomicUsize>,
    /// `instance_reuse`: requests one instance may serve (0: one).
    reuse: u32,
    /// Instances waiting for their next request (`instance_reuse`).
    idle: Arc<std::sync::Mutex<Vec<Reusable>>>,
}

/// An instance kept for another request, with the requests it has served.
struct Reusable {
    store: Store<HostState>,
    proxy: Proxy,
    served: u32,
}

impl Worker {
    /// Compile (or load from the cache) the worker's component and
    /// pre-instantiate it against everything Isola provides.
    ///
    /// `backends` hold the state behind the worker's bindings (KV, SQL,
    /// blob, cache, analytics); all workers of a process share them.
    pub fn load(
        engine: &IsolaEngine,
        config: &WorkerConfig,
        backends: &Backends,
    ) -> Result<Worker, LoadError> {
        let loaded = engine.load_component(&config.component)?;
        Self::from_component(
            engine,
            config,
            backends,
            &loaded.component,
            loaded.outcome,
            &config.component,
        )
    }

    /// Build a worker from an already compiled component (`path` names it in
    /// errors).
    pub fn from_component(
        engine: &IsolaEngine,
        config: &WorkerConfig,
        backends: &Backends,
        component: &Component,
        cache_outcome: CacheOutcome,
        path: &Path,
    ) -> Result<Worker, LoadError> {
        let path_text = || path.display().to_string();
        let linker =
            linker::linker(engine.engine()).map_err(|e| LoadError::Linker(format!("{e:#}")))?;
        let instance_pre =
            linker
                .instantiate_pre(component)
                .map_err(|e| LoadError::UnknownImport {
                    path: path_text(),
                    reason: format!("{e:#}"),
                })?;
        // The optional handlers are whatever the component exports (and,
        // for a component that says so, implements: see below).
        let scheduled =
            triggers::scheduled_world::ScheduledHandlerPre::new(instance_pre.clone()).ok();
        let queue = triggers::queue_world::QueueHandlerPre::new(instance_pre.clone()).ok();
        let pre = ProxyPre::new(instance_pre.clone()).map_err(|e| LoadError::NoHandler {
            path: path_text(),
            reason: format!("{e:#}"),
        })?;
        let mut vars = config.vars.clone();
        for (name, secret) in &config.secrets {
            vars.insert(name.clone(), secret.expose().to_owned());
        }
        let bindings =
            resources::WorkerBindings::new(config, backends).map_err(|e| LoadError::Bindings {
                worker: config.name.clone(),
                reason: e.to_string(),
            })?;
        let shared = Arc::new(WorkerShared {
            name: config.name.as_str().into(),
            environment: vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            vars,
            secret_values: config
                .secrets
                .values()
                .map(|s| s.expose().to_owned())
                .collect(),
            bindings,
            env_names: state::env_names(config),
            outbound: Arc::new(OutboundPolicy {
                rules: config.allowed_outbound_hosts.clone(),
                override_authority: config.outbound_override.clone(),
            }),
            memory_limit: usize::try_from(config.limits.memory_mb.saturating_mul(1 << 20))
                .unwrap_or(usize::MAX),
            source_map: source_map::SourceMap::beside(path),
        });
        let fuel_per_ms = config.fuel_per_ms.unwrap_or(DEFAULT_FUEL_PER_MS);
        let wall = Duration::from_millis(config.limits.wall_ms);
        let mut worker = Worker {
            inner: Arc::new(Inner {
                shared,
                pre,
                scheduled,
                queue,
                trigger_cpu_ms: config.trigger_cpu_ms.unwrap_or(config.limits.cpu_ms),
                limits: config.limits,
                fuel: config.limits.cpu_ms.saturating_mul(fuel_per_ms),
                fuel_yield_interval: fuel_per_ms,
                wall,
                wall_ticks: IsolaEngine::ticks_for(wall),
                server_timing: config.server_timing,
                consume_fuel: engine.consumes_fuel(),
                cache_outcome,
                origin: config.origin.clone(),
                bindings: Arc::new(
                    config
                        .services
                        .iter()
                        .map(|s| (s.binding.to_ascii_lowercase(), s.service.clone()))
                        .collect(),
                ),
                services: std::sync::OnceLock::new(),
                active: Arc::default(),
                reuse: config.instance_reuse,
                idle: Arc::default(),
            }),
        };
        handlers::settle(&mut worker, &instance_pre, config, path)?;
        tracing::info!(worker = %config.name, component = %path.display(), cache = ?cache_outcome, "worker loaded");
        Ok(worker)
    }

    pub fn name(&self) -> &str {
        &self.inner.shared.name
    }

    /// Let this worker's service bindings reach the workers of `services`.
    /// Done by [`Services::new`]; later calls are ignored.
    pub fn attach_services(&self, services: &Arc<Services>) {
        let _ = self.inner.services.set(Arc::downgrade(services));
    }

    /// Requests whose guest is still running, including work a guest does
    /// after its response was sent (waitUntil).
    pub fn active_tasks(&self) -> usize {
        self.inner.active.load(Ordering::Acquire)
    }

    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// Where the component came from when this worker was loaded.
    pub fn cache_outcome(&self) -> CacheOutcome {
        self.inner.cache_outcome
    }

    /// Serve one request in a fresh instance.
    ///
    /// The response head is returned as soon as the guest sets it; its body
    /// streams while the guest runs on (until it returns or `wall_ms` is
    /// up). Failures become the error responses of [`Failure`] and are
    /// logged with the request id; every request ends with one access line.
    pub async fn handle<B>(&self, request: http::Request<B>) -> http::Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let request_id = request
            .extensions()
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(RequestId::generate);
        let report = Report::new(
            self.inner.shared.name.clone(),
            request_id.0.clone(),
            request.method().clone(),
            request.uri().path().to_owned(),
            request.extensions().get::<ClientAddr>().map(|c| c.0),
        );
        let call = request
            .extensions()
            .get::<services::CallContext>()
            .cloned()
            .unwrap_or_default();
        let info = request
            .extensions()
            .get::<RequestInfo>()
            .cloned()
            .unwrap_or_else(|| RequestInfo {
                client_address: report.client.map(|c| c.ip()),
                protocol: protocol_name(request.version()).to_owned(),
                ..RequestInfo::default()
            });
        let services = services::ServiceCalls {
            services: self.inner.services.get().cloned().unwrap_or_default(),
            bindings: self.inner.bindings.clone(),
            depth: call.depth,
            locals: Arc::new(std::sync::Mutex::new(call.locals)),
            request_id: request_id.clone(),
            info,
        };
        let request = request.map(|body| body.map_err(Into::into).boxed_unsync());
        let (request, replay) = if self.inner.origin.is_some() {
            match pass_through::prepare(request).await {
                Ok(prepared) => prepared,
                Err(e) => {
                    tracing::warn!(request_id = %request_id, "reading the request body failed: {e}");
                    let mut response = Failure::BadRequest.response(&request_id);
                    report.set_status(response.status().as_u16());
                    response.extensions_mut().insert(RequestStats(report));
                    return response;
                }
            }
        } else {
            (request, None)
        };
        let mut response = match self.run(request, services, report.clone()).await {
            Ok(response) => coalesce::coalesce(response).await,
            Err(GuestError {
                failure,
                cause,
                backtrace,
                pass_through,
            }) => {
                tracing::error!(
                    worker = %self.name(),
                    request_id = %request_id,
                    reason = failure.reason(),
                    cpu_ms = format_args!("{:.3}", report.cpu_ms()),
                    wall_ms = format_args!("{:.3}", report.wall_ms()),
                    backtrace = backtrace.as_deref().unwrap_or("none"),
                    "request failed: {cause}"
                );
                report.outcome.lock().expect("report lock").limit = failure.limit();
                // A guest that fails after a store failed it answers 503:
                // the fault is the store's, and it is worth retrying.
                let failure = if failure == Failure::Exception
                    && report
                        .backend_failed
                        .load(std::sync::atomic::Ordering::Relaxed)
                {
                    Failure::Backend
                } else {
                    failure
                };
                // Limits are not exceptions: a request that ran out of CPU
                // is not replayed against the origin.
                if pass_through
                    && matches!(
                        failure,
                        Failure::Exception | Failure::NoResponse | Failure::Backend
                    )
                {
                    self.pass_through(failure, replay, &request_id).await
                } else {
                    failure.response(&request_id)
                }
            }
        };
        report.set_status(response.status().as_u16());
        response
            .extensions_mut()
            .insert(RequestStats(report.clone()));
        if self.inner.server_timing {
            let timing = format!(
                "cpu;dur={:.3}, wall;dur={:.3}",
                report.cpu_ms(),
                report.wall_ms()
            );
            if let Ok(value) = http::HeaderValue::from_str(&timing) {
                response.headers_mut().append("server-timing", value);
            }
        }
        response
    }

    /// The guest failed after asking for a pass-through: answer from the
    /// origin if that can be done.
    async fn pass_through(
        &self,
        failure: Failure,
        replay: Option<pass_through::Replay>,
        request_id: &RequestId,
    ) -> http::Response<Body> {
        let (origin, replay) = match (&self.inner.origin, replay) {
            (Some(origin), Some(replay)) => (origin, replay),
            (None, _) => {
                tracing::error!(worker = %self.name(), request_id = %request_id, reason = failure.reason(),
                    "the guest failed and asked for pass-through, but the worker has no `origin` configured");
                return failure.response(request_id);
            }
            (Some(_), None) => {
                tracing::error!(worker = %self.name(), request_id = %request_id, reason = failure.reason(),
                    "the guest failed and asked for pass-through, but the request body was not buffered (over {REPLAY_BUFFER_LIMIT} bytes or of unknown length), so it cannot be replayed");
                return failure.response(request_id);
            }
        };
        match pass_through::forward(origin, replay).await {
            Ok(response) => {
                tracing::warn!(worker = %self.name(), request_id = %request_id, reason = failure.reason(), %origin,
                    status = response.status().as_u16(), "the guest failed; passed the request through to the origin");
                response
            }
            Err(e) => {
                tracing::error!(worker = %self.name(), request_id = %request_id, %origin,
                    "the guest failed and the pass-through to the origin failed too: {e}");
                Failure::Exception.response(request_id)
            }
        }
    }

    /// A fresh store for one run with the worker's limits armed: `fuel`
    /// (when fuel is on), the epoch deadline of `wall_ms`, the memory
    /// limiter, and the subrequest budget `subrequests`.
    fn new_store(
        &self,
        services: services::ServiceCalls,
        subrequests: Subrequests,
        fuel: u64,
    ) -> Result<Store<HostState>, GuestError> {
        let inner = &self.inner;
        let state = HostState::new(inner.shared.clone(), subrequests, services);
        let mut store = Store::new(inner.pre.engine(), state);
        store.limiter(|state| state as &mut dyn wasmtime::ResourceLimiter);
        if inner.consume_fuel {
            store
                .fuel_async_yield_interval(Some(inner.fuel_yield_interval))
                .map_err(|e| GuestError::host(Failure::Exception, e))?;
        }
        self.arm(store, fuel)
    }

    /// The subrequest budget of one run, counted in `report`.
    fn subrequests(&self, report: &Report) -> Subrequests {
        Subrequests {
            used: report.subrequests.clone(),
            budget: self.inner.limits.subrequests,
            backend_failed: report.backend_failed.clone(),
        }
    }

    /// Give `store` `fuel` (when fuel is on) and a wall deadline of
    /// `wall_ms` from now.
    fn arm(&self, mut store: Store<HostState>, fuel: u64) -> Result<Store<HostState>, GuestError> {
        if self.inner.consume_fuel {
            store
                .set_fuel(fuel)
                .map_err(|e| GuestError::host(Failure::Exception, e))?;
        }
        store.set_epoch_deadline(self.inner.wall_ticks);
        Ok(store)
    }

    /// An idle instance kept by `instance_reuse`, if there is one.
    fn take_idle(&self) -> Option<Reusable> {
        if self.inner.reuse <= 1 {
            return None;
        }
        self.inner.idle.lock().expect("idle lock").pop()
    }

    /// Re-arm a reused instance for its next request: fresh fuel, a fresh
    /// wall deadline, this request's id, locals and subrequest budget.
    fn rearm(
        &self,
        mut store: Store<HostState>,
        services: services::ServiceCalls,
        report: &Report,
    ) -> Result<Store<HostState>, GuestError> {
        store
            .data_mut()
            .begin_request(self.subrequests(report), services);
        self.arm(store, self.inner.fuel)
    }

    async fn run(
        &self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        services: services::ServiceCalls,
        report: Arc<Report>,
    ) -> Result<http::Response<Body>, GuestError> {
        let inner = &self.inner;
        let request_id = services.request_id.clone();
        let (mut store, reused) = match self.take_idle() {
            Some(idle) => (
                self.rearm(idle.store, services, &report)?,
                Some((idle.proxy, idle.served)),
            ),
            None => (
                self.new_store(services, self.subrequests(&report), inner.fuel)?,
                None,
            ),
        };

        let incoming = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)
            .map_err(|e| GuestError::host(Failure::BadRequest, e))?;
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let response_sent = Arc::new(AtomicBool::new(false));
        let outparam = {
            let response_sent = response_sent.clone();
            store
                .data_mut()
                .http()
                .new_response_outparam_from_callback(move |result| {
                    response_sent.store(true, Ordering::Release);
                    let _ = sender.send(result);
                })
                .map_err(|e| GuestError::host(Failure::Exception, e))?
        };

        let pre = inner.pre.clone();
        let (fuel, wall) = (inner.fuel, inner.wall);
        let cpu_limit = Duration::from_millis(inner.limits.cpu_ms);
        let task_report = report.clone();
        let responded = response_sent.clone();
        let (reuse, idle) = (inner.reuse, inner.idle.clone());
        let guest = async move {
            let (reused_proxy, served) = match reused {
                Some((proxy, served)) => (Some(proxy), served),
                None => (None, 0),
            };
            let mut kept_proxy = None;
            let result = async {
                let proxy = match reused_proxy {
                    Some(proxy) => proxy,
                    None => {
                        let instantiating = Instant::now();
                        let proxy = pre.instantiate_async(&mut store).await?;
                        task_report.instantiate_ns.store(
                            u64::try_from(instantiating.elapsed().as_nanos()).unwrap_or(u64::MAX),
                            Ordering::Relaxed,
                        );
                        proxy
                    }
                };
                let result = proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, incoming, outparam)
                    .await;
                kept_proxy = Some(proxy);
                result
            }
            .await;
            let fuel_used = fuel.saturating_sub(store.get_fuel().unwrap_or(0));
            task_report.outcome.lock().expect("report lock").fuel_used = fuel_used;
            let memory_limit_hit = store.data().memory_limit_hit;
            let pass_through = store.data().pass_through_on_exception;
            // An instance that served its request cleanly may serve the next
            // (`instance_reuse`); one that failed in any way never does.
            let clean = result.is_ok() && responded.load(Ordering::Acquire) && !memory_limit_hit;
            match kept_proxy {
                Some(proxy) if clean && served + 1 < reuse => {
                    idle.lock().expect("idle lock").push(Reusable {
                        store,
                        proxy,
                        served: served + 1,
                    })
                }
                // Drop the instance here, inside the timed task and off
                // the response's critical path.
                _ => {
                    let dropping = Instant::now();
                    drop(store);
                    task_report.drop_ns.store(
                        u64::try_from(dropping.elapsed().as_nanos()).unwrap_or(u64::MAX),
                        Ordering::Relaxed,
                    );
                }
            }
            match result {
                Ok(()) if !responded.load(Ordering::Acquire) => Err(GuestError {
                    pass_through,
                    ..GuestError::message(
                        Failure::NoResponse,
                        "the handler returned without setting a response",
                    )
                }),
                Ok(()) => Ok(()),
                Err(e) => Err(GuestError::from_trap(e, memory_limit_hit, pass_through)),
            }
        };
        // The guest runs in its own task so that it can go on after setting
        // the response (streaming the body, waitUntil work). Epochs stop wasm
        // at the wall limit; the timeout also bounds host-side waits.
        let worker = inner.shared.name.clone();
        let id = request_id.clone();
        let active = ActiveTask::start(&inner.active);
        let limited = within_limits(guest, report.clone(), wall, cpu_limit);
        let task = tokio::spawn(async move {
            let _active = active;
            let outcome = limited.await;
            match outcome {
                Err(error) if response_sent.load(Ordering::Acquire) => {
                    report.outcome.lock().expect("report lock").limit = error.failure.limit();
                    tracing::error!(
                        worker = %worker,
                        request_id = %id,
                        reason = error.failure.reason(),
                        backtrace = error.backtrace.as_deref().unwrap_or("none"),
                        "guest cut off after its response was sent: {}",
                        error.cause
                    );
                    Ok(())
                }
                other => other,
            }
        });

        match receiver.await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(code)) => Err(GuestError::message(
                Failure::Exception,
                format!("the guest responded with an error: {code:?}"),
            )),
            Err(_) => match task.await {
                Ok(Ok(())) => Err(GuestError::message(
                    Failure::NoResponse,
                    "the handler returned without setting a response",
                )),
                Ok(Err(error)) => Err(error),
                Err(join) => Err(GuestError::message(
                    Failure::Exception,
                    format!("the guest task failed: {join}"),
                )),
            },
        }
    }
}
