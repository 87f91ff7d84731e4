//! One run's instance: a fresh store with the worker's budget armed (or
//! an instance kept by `instance_reuse`, re-armed), the guest in a task of
//! its own under the wall and CPU limits, and the instance dropped (or
//! kept) when the guest is done.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wasmtime::Store;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

use crate::body::Body;
use crate::failure::{Failure, GuestError};
use crate::objects::Turn;
use crate::outbound::Subrequests;
use crate::profile;
use crate::report::{Metered, Report, within_limits};
use crate::services::ServiceCalls;
use crate::state::HostState;
use crate::worker::{Reusable, Worker};

/// Counts a running guest task until dropped.
pub(crate) struct ActiveTask(Arc<std::sync::atomic::AtomicUsize>);

impl ActiveTask {
    pub fn start(counter: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        ActiveTask(counter.clone())
    }
}

impl Drop for ActiveTask {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How far a reused instance's linear memory may grow past its size when
/// instantiated before `instance_reuse` retires it (after its response,
/// like any instance it does not keep).
///
/// A reused JS instance's heap grows with every request until SpiderMonkey
/// collects it whole, in one go, inside whichever request crosses its
/// threshold; measured on the JS hello (release build, 32 connections):
/// ~2.3 KB of growth a request, and a collection at ~70 MB of growth (every
/// ~33k requests) that cost more than cpu_ms = 50 (a 503). StarlingMonkey
/// offers no way to collect between requests, so the instance is replaced
/// before it gets there instead. SpiderMonkey's first full collection
/// comes when its heap reaches max(27 MB, 1.5x its size after the last
/// one, which the build's snapshot made): at least ~9 MB of growth
/// whatever that size; 4 MiB stays under it with room for free space the
/// snapshot left in its chunks. A retirement costs one instantiation and
/// one drop (~0.1 ms for a JS hello), every ~1,800 hello requests.
pub(crate) const REUSE_MEMORY_GROWTH: usize = 4 << 20;

/// Whether an instance kept by `instance_reuse` that has served `served`
/// requests and grown its memory by `grown` bytes is retired.
fn outgrown(worker: &str, served: u32, grown: usize) -> bool {
    if grown <= REUSE_MEMORY_GROWTH {
        return false;
    }
    tracing::info!(
        worker = %worker,
        served,
        grown_mib = grown >> 20,
        "a reused instance is retired: its memory grew past the reuse limit"
    );
    true
}

/// Where a run's instance comes from and goes back to.
pub(crate) enum Home {
    /// A fresh instance, or one kept by `instance_reuse`.
    Pool,
    /// A Durable Object's live instance (made when it has none), kept for
    /// its next event if the run ends cleanly; the turn is held until the
    /// guest is done.
    Object(Turn),
}

impl Worker {
    /// A fresh store for one run with the worker's limits armed: `fuel`
    /// (when fuel is on), the epoch deadline of `wall_ms`, the memory
    /// limiter, and the subrequest budget `subrequests`.
    pub(crate) fn new_store(
        &self,
        services: ServiceCalls,
        subrequests: Subrequests,
        fuel: u64,
    ) -> Result<Store<HostState>, GuestError> {
        let inner = &self.inner;
        let state = HostState::new(inner.shared.clone(), subrequests, services);
        let store = inner
            .budget
            .store(inner.pre.engine(), state)
            .map_err(|e| GuestError::host(Failure::Exception, e))?;
        self.arm(store, fuel)
    }

    /// The subrequest budget of one run, counted in `report`.
    pub(crate) fn subrequests(&self, report: &Report) -> Subrequests {
        Subrequests {
            used: report.subrequests.clone(),
            budget: self.inner.budget.limits.subrequests,
            backend_failed: report.backend_failed.clone(),
        }
    }

    /// Give `store` `fuel` (when fuel is on) and a wall deadline of
    /// `wall_ms` from now.
    fn arm(&self, mut store: Store<HostState>, fuel: u64) -> Result<Store<HostState>, GuestError> {
        self.inner
            .budget
            .arm(&mut store, fuel)
            .map_err(|e| GuestError::host(Failure::Exception, e))?;
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
        services: ServiceCalls,
        report: &Report,
    ) -> Result<Store<HostState>, GuestError> {
        store
            .data_mut()
            .begin_request(self.subrequests(report), services);
        self.arm(store, self.inner.budget.fuel)
    }

    pub(crate) async fn run(
        &self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        services: ServiceCalls,
        report: Arc<Report>,
        profile: Option<profile::Claim>,
        mut home: Home,
    ) -> Result<http::Response<Body>, GuestError> {
        let inner = &self.inner;
        let request_id = services.request_id.clone();
        // A kept instance holds its slot of the pool; a new one waits for
        // one, a short while, and the request is refused when none frees.
        let kept = match &mut home {
            Home::Pool => self.take_idle(),
            Home::Object(turn) => turn.take_live(),
        };
        let (mut store, reused, slot) = match kept {
            Some(idle) => (
                self.rearm(idle.store, services, &report)?,
                Some((idle.proxy, idle.served)),
                idle.slot,
            ),
            None => {
                let slot = inner.budget.admit().await?;
                let store =
                    self.new_store(services, self.subrequests(&report), inner.budget.fuel)?;
                (store, None, slot)
            }
        };

        if let Some(claim) = profile {
            let component = inner.pre.instance_pre().component();
            let subject = profile::Subject {
                worker: &report.worker,
                request_id: &report.request_id,
                method: &report.method,
                path: &report.path,
            };
            profile::start(&mut store, component, subject, claim, inner.budget.wall)
                .map_err(|e| GuestError::host(Failure::Exception, e))?;
        }
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
        let (fuel, wall) = (inner.budget.fuel, inner.budget.wall);
        let cpu_limit = Duration::from_millis(inner.budget.limits.cpu_ms);
        let task_report = report.clone();
        let responded = response_sent.clone();
        let (reuse, idle) = (inner.reuse, inner.idle.clone());
        let name = inner.shared.name.clone();
        let meter = store.data().run.meter.clone();
        let mut store = Metered::new(store, fuel, task_report.clone());
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
                        let run = &mut store.data_mut().run;
                        run.memory_at_start = run.memory_bytes;
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
            profile::finish(&mut store);
            let memory_limit_hit = store.data().run.memory_limit_hit;
            let panic = store.data().run.panic.get();
            let pass_through = store.data().request.pass_through_on_exception();
            // An instance that served its request cleanly may serve the next
            // (`instance_reuse`); one that failed in any way never does.
            let clean = result.is_ok() && responded.load(Ordering::Acquire) && !memory_limit_hit;
            // An object keeps its instance for as long as it runs cleanly.
            let keep = match &home {
                Home::Pool => {
                    served + 1 < reuse
                        && !outgrown(&name, served + 1, store.data().run.memory_grown())
                }
                Home::Object(_) => true,
            };
            match kept_proxy {
                Some(proxy) if clean && keep => {
                    let kept = Reusable {
                        store: store.into_inner(),
                        proxy,
                        served: served + 1,
                        slot,
                    };
                    match &mut home {
                        Home::Pool => idle.lock().expect("idle lock").push(kept),
                        Home::Object(turn) => turn.keep(kept),
                    }
                }
                // Drop the instance here, inside the timed task and off
                // the response's critical path.
                _ => {
                    let dropping = Instant::now();
                    drop(store);
                    drop(slot);
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
                Err(e) => Err(GuestError::from_trap(
                    e,
                    memory_limit_hit,
                    pass_through,
                    panic,
                )),
            }
        };
        // The guest runs in its own task so that it can go on after setting
        // the response (streaming the body, waitUntil work). Epochs stop wasm
        // at the wall limit; the timeout also bounds host-side waits.
        let worker = inner.shared.name.clone();
        let id = request_id.clone();
        let active = ActiveTask::start(&inner.active);
        let limited = within_limits(guest, meter, report.cpu_ns.clone(), wall, cpu_limit);
        let task = tokio::spawn(async move {
            let _active = active;
            let outcome = limited.await;
            match outcome {
                Err(error) if response_sent.load(Ordering::Acquire) => {
                    report.set_failure(error.failure);
                    report.set_error(&error);
                    tracing::error!(
                        worker = %worker,
                        request_id = %id,
                        reason = error.failure.reason(),
                        backtrace = error.backtrace_text().as_str(),
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
