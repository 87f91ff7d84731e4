//! A loaded worker and how it serves a request: the request's context
//! and accounting, the failure responses, pass-through to the origin. How
//! one run's instance is made, armed and dropped is in `instance`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::BodyExt;
use isola_backends::Backends;
use isola_config::{DurableObjectBinding, Limits, WorkerRun};
use isola_engine::{CacheOutcome, IsolaEngine};
use wasmtime::Store;
use wasmtime::component::{Component, InstancePre};
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};

use crate::body::{Body, BodyError};
use crate::failure::{Failure, GuestError};
use crate::handlers::{self, Handler};
use crate::instance::Home;
use crate::limits::Budget;
use crate::load_error::LoadError;
use crate::objects::serve::ObjectRun;
use crate::objects::{ObjectCall, Objects};
use crate::outbound::Subrequests;
use crate::pass_through;
use crate::profile::{ProfileRequest, Profiling};
use crate::report::{Observer, PendingOutcome, Report};
use crate::request::{RequestContext, RequestId, RequestInfo, protocol_name};
use crate::services::{Callees, ServiceCalls};
use crate::state::{HostState, WorkerShared};
use crate::{coalesce, generated, linker};

/// A worker's answer to a request: the response (its body streams from the
/// guest) and the request's [`Outcome`](crate::Outcome), which arrives once
/// the guest is done.
pub struct Handled {
    pub response: http::Response<Body>,
    pub outcome: PendingOutcome,
}

/// A loaded worker: a compiled, pre-instantiated component plus its
/// configuration. Cheap to clone.
#[derive(Clone)]
pub struct Worker {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) shared: Arc<WorkerShared>,
    pub(crate) pre: ProxyPre<HostState>,
    pub(crate) scheduled: Option<generated::scheduled_world::ScheduledHandlerPre<HostState>>,
    pub(crate) queue: Option<generated::queue_world::QueueHandlerPre<HostState>>,
    /// CPU budget of a scheduled run or queue batch.
    pub(crate) trigger_cpu_ms: u64,
    pub(crate) budget: Budget,
    pub(crate) server_timing: bool,
    pub(crate) cache_outcome: CacheOutcome,
    pub(crate) origin: Option<String>,
    /// Largest request body kept for a pass-through replay, in bytes.
    pub(crate) replay_limit: u64,
    /// Service binding name (lower-cased) → worker name.
    pub(crate) bindings: Arc<std::collections::HashMap<String, String>>,
    pub(crate) services: std::sync::OnceLock<std::sync::Weak<dyn Callees>>,
    pub(crate) observer: std::sync::OnceLock<Arc<dyn Observer>>,
    /// Guest tasks still running, responses sent or not.
    pub(crate) active: Arc<std::sync::atomic::AtomicUsize>,
    /// `instance_reuse`: requests one instance may serve (0: one).
    pub(crate) reuse: u32,
    /// Instances waiting for their next request (`instance_reuse`).
    pub(crate) idle: Arc<std::sync::Mutex<Vec<Reusable>>>,
    /// The component's path, for errors.
    pub(crate) component: std::path::PathBuf,
    /// Handlers the component exports but its code does not define (its
    /// answer to `isola:worker/handlers`).
    pub(crate) declined: Vec<Handler>,
    /// Requests armed for profiling ([`Worker::profile_next`]).
    pub(crate) profiling: Profiling,
    /// Durable Object namespace binding name (lower-cased) → namespace.
    pub(crate) object_bindings: Arc<std::collections::HashMap<String, DurableObjectBinding>>,
    /// The live objects of the classes this worker defines; `None` when it
    /// defines none.
    pub(crate) objects: Option<Arc<Objects>>,
}

/// An instance kept for another request, with the requests it has served.
pub(crate) struct Reusable {
    pub(crate) store: Store<HostState>,
    pub(crate) proxy: Proxy,
    pub(crate) served: u32,
    /// The pool slot its instance holds while it waits.
    pub(crate) slot: crate::limits::Slot,
}

impl Worker {
    /// Compile (or load from the cache) the worker's component and
    /// pre-instantiate it against everything Isola provides.
    ///
    /// `backends` hold the state behind the worker's bindings (KV, SQL,
    /// blob, cache, analytics); all workers of a process share them.
    pub fn load(
        engine: &IsolaEngine,
        name: &str,
        config: &WorkerRun,
        component: &Path,
        backends: &Backends,
    ) -> Result<Worker, LoadError> {
        let loaded = engine.load_component(component)?;
        Self::from_component(
            engine,
            name,
            config,
            backends,
            &loaded.component,
            loaded.outcome,
            component,
        )
    }

    /// Build a worker from an already compiled component (`path` names it in
    /// errors).
    pub fn from_component(
        engine: &IsolaEngine,
        name: &str,
        config: &WorkerRun,
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
            generated::scheduled_world::ScheduledHandlerPre::new(instance_pre.clone()).ok();
        let queue = generated::queue_world::QueueHandlerPre::new(instance_pre.clone()).ok();
        let pre = ProxyPre::new(instance_pre.clone()).map_err(|e| LoadError::NoHandler {
            path: path_text(),
            reason: format!("{e:#}"),
        })?;
        let shared = Arc::new(WorkerShared::new(name, config, backends, path)?);
        let mut worker = Worker {
            inner: Arc::new(Inner {
                shared,
                pre,
                scheduled,
                queue,
                trigger_cpu_ms: config.trigger_cpu_ms.unwrap_or(config.limits.cpu_ms),
                budget: Budget::new(config, engine),
                server_timing: config.server_timing,
                cache_outcome,
                origin: config.origin.clone(),
                replay_limit: config.pass_through_buffer_kb.saturating_mul(1024),
                bindings: Arc::new(
                    config
                        .services
                        .iter()
                        .map(|s| (s.binding.to_ascii_lowercase(), s.service.clone()))
                        .collect(),
                ),
                services: std::sync::OnceLock::new(),
                observer: std::sync::OnceLock::new(),
                active: Arc::default(),
                reuse: config.instance_reuse,
                idle: Arc::default(),
                component: path.to_owned(),
                declined: Vec::new(),
                profiling: Profiling::default(),
                object_bindings: Arc::new(
                    config
                        .durable_objects
                        .iter()
                        .map(|b| (b.binding.to_ascii_lowercase(), b.clone()))
                        .collect(),
                ),
                objects: (!config.durable_object_classes.is_empty()).then(|| {
                    Arc::new(Objects::new(
                        &config.durable_object_classes,
                        backends.durable.clone(),
                        config.durable_object_idle,
                    ))
                }),
            }),
        };
        worker.settle_handlers(&instance_pre, path)?;
        tracing::info!(worker = %name, component = %path.display(), cache = ?cache_outcome, "worker loaded");
        Ok(worker)
    }

    /// Narrow the optional handlers to those the component says it
    /// implements, when it answers `isola:worker/handlers` (a JS build
    /// exports them all; only its code knows which it defines).
    fn settle_handlers(
        &mut self,
        pre: &InstancePre<HostState>,
        path: &Path,
    ) -> Result<(), LoadError> {
        let fresh_store = || {
            // No subrequests: answering needs none.
            let nothing = Subrequests::new(0);
            let services = ServiceCalls::none(RequestId::generate());
            self.new_store(services, nothing, self.inner.budget.fuel)
                .map_err(|e| e.cause)
        };
        let answer = handlers::implemented(pre, fresh_store, self.inner.budget.wall);
        let Some(implemented) = answer.map_err(|reason| LoadError::HandlersQuestion {
            path: path.display().to_string(),
            reason,
        })?
        else {
            return Ok(());
        };
        let implements = |name: &str| implemented.iter().any(|n| n == name);
        let inner = Arc::get_mut(&mut self.inner).expect("the worker is not shared yet");
        if !implements("scheduled") && inner.scheduled.take().is_some() {
            inner.declined.push(Handler::Scheduled);
        }
        if !implements("queue") && inner.queue.take().is_some() {
            inner.declined.push(Handler::Queue);
        }
        Ok(())
    }

    /// Refuse this worker unless it offers `handler`, which the caller
    /// needs because of `reason` (say "worker `x` has `triggers.crons`").
    /// The error says whether the component lacks the export or its code
    /// said it does not define the handler.
    pub fn require(&self, handler: Handler, reason: impl Into<String>) -> Result<(), LoadError> {
        let offered = match handler {
            Handler::Scheduled => self.inner.scheduled.is_some(),
            Handler::Queue => self.inner.queue.is_some(),
        };
        if offered {
            return Ok(());
        }
        let path = self.inner.component.display().to_string();
        let reason = reason.into();
        Err(if self.inner.declined.contains(&handler) {
            LoadError::NotImplemented {
                path,
                handler: match handler {
                    Handler::Scheduled => "scheduled",
                    Handler::Queue => "queue",
                },
                reason,
            }
        } else {
            LoadError::MissingHandler {
                path,
                handler: match handler {
                    Handler::Scheduled => "scheduled",
                    Handler::Queue => "queue-consumer",
                },
                reason,
            }
        })
    }

    pub fn name(&self) -> &str {
        &self.inner.shared.name
    }

    /// Let this worker's service bindings reach `callees` (done by
    /// [`Services::new`](crate::Services::new); later calls are ignored).
    pub(crate) fn attach_callees(&self, callees: std::sync::Weak<dyn Callees>) {
        let _ = self.inner.services.set(callees);
    }

    /// Tell `observer` the [`Outcome`](crate::Outcome) of every run of this
    /// worker from now on: requests, service-binding calls into it, cron and
    /// queue runs. Later calls are ignored.
    pub fn observe(&self, observer: Arc<dyn Observer>) {
        let _ = self.inner.observer.set(observer);
    }

    /// Requests whose guest is still running, including work a guest does
    /// after its response was sent (waitUntil).
    pub fn active_tasks(&self) -> usize {
        self.inner.active.load(Ordering::Acquire)
    }

    pub fn limits(&self) -> Limits {
        self.inner.budget.limits
    }

    /// Profile the next `request.count` requests (those under
    /// `request.path_prefix` only, when given) and hand each profile to
    /// `request.sink`. Replaces what was armed before; `count = 0` disarms.
    pub fn profile_next(&self, request: ProfileRequest) {
        self.inner.profiling.arm(request);
    }

    /// Requests still to be profiled.
    pub fn profiles_pending(&self) -> u32 {
        self.inner.profiling.remaining()
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
    /// logged with the request id. The request's [`Outcome`](crate::Outcome)
    /// arrives when the guest is done; it is also written to the access log
    /// and told to the worker's [`Observer`].
    pub async fn handle<B>(&self, request: http::Request<B>, context: RequestContext) -> Handled
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BodyError>,
    {
        self.serve(request, context, Ok(None)).await
    }

    /// Live Durable Objects of this worker's classes (with an instance, or
    /// waiting for one).
    pub fn live_objects(&self) -> usize {
        self.inner.objects.as_ref().map_or(0, |o| o.live_objects())
    }

    /// `object`: `Ok(None)` for a request, `Ok(Some(run))` for an object's
    /// event admitted here, `Err(call)` for one this worker has no objects
    /// for.
    pub(crate) async fn serve<B>(
        &self,
        request: http::Request<B>,
        context: RequestContext,
        object: Result<Option<ObjectRun>, ObjectCall>,
    ) -> Handled
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BodyError>,
    {
        let request_id = context.id.unwrap_or_else(RequestId::generate);
        let report = Report::new(
            self.inner.shared.name.clone(),
            request_id.clone(),
            request.method().clone(),
            request.uri().path().to_owned(),
            context.client,
            self.inner.observer.get().cloned(),
        );
        let outcome = report.pending();
        let call = context.call;
        let info = context.info.unwrap_or_else(|| RequestInfo {
            client_address: report.client.map(|c| c.ip()),
            protocol: protocol_name(request.version()).to_owned(),
            ..RequestInfo::default()
        });
        let services = ServiceCalls {
            services: self.inner.services.get().cloned(),
            bindings: self.inner.bindings.clone(),
            depth: call.depth,
            locals: Arc::new(std::sync::Mutex::new(call.locals)),
            request_id: request_id.clone(),
            info,
            object_bindings: self.inner.object_bindings.clone(),
            object: None,
        };
        let request = request.map(|body| body.map_err(Into::into).boxed_unsync());
        let (request, replay) = if self.inner.origin.is_some() {
            match pass_through::prepare(request, self.inner.replay_limit).await {
                Ok(prepared) => prepared,
                Err(e) => {
                    tracing::warn!(request_id = %request_id, "reading the request body failed: {e}");
                    let response = Failure::BadRequest.response(&request_id);
                    report.set_status(response.status().as_u16());
                    report.set_failure(Failure::BadRequest);
                    return Handled { response, outcome };
                }
            }
        } else {
            (request, None)
        };
        let profile = self.inner.profiling.claim(request.uri().path());
        let run = match object {
            Ok(None) => {
                self.run(request, services, report.clone(), profile, Home::Pool)
                    .await
            }
            Ok(Some(object)) => {
                self.run_object(request, services, report.clone(), profile, object)
                    .await
            }
            Err(_) => Err(GuestError::message(
                Failure::Exception,
                format!(
                    "worker `{}` defines no Durable Object classes (its `migrations` create none)",
                    self.name()
                ),
            )),
        };
        let mut response = match run {
            Ok(response) => coalesce::coalesce(response).await,
            Err(error) => {
                tracing::error!(
                    worker = %self.name(),
                    request_id = %request_id,
                    reason = error.failure.reason(),
                    cpu_ms = format_args!("{:.3}", report.cpu_ms()),
                    wall_ms = format_args!("{:.3}", report.wall_ms()),
                    backtrace = error.backtrace_text().as_str(),
                    "request failed: {}",
                    error.cause
                );
                report.set_error(&error);
                let GuestError {
                    failure,
                    pass_through,
                    ..
                } = error;
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
                report.set_failure(failure);
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
        Handled { response, outcome }
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
                    "the guest failed and asked for pass-through, but the request body was over pass_through_buffer_kb ({} KiB), so it cannot be replayed", self.inner.replay_limit / 1024);
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
}
