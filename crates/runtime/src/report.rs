//! Per-run accounting: CPU time, fuel, subrequests, the limit hit; and the
//! run's [`Outcome`], told when the run is completely done (its response
//! streamed, its waitUntil work finished) to the access log, the worker's
//! [`Observer`] and whoever holds the [`PendingOutcome`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::backtrace::Backtrace;
use crate::failure::{Failure, GuestError, Limit};
use crate::request::RequestId;

/// How one run of a worker went: a request, a service-binding call, a cron
/// firing or a queue batch. Final: it is made when the guest is done.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub worker: Arc<str>,
    pub request_id: RequestId,
    /// The request's method; `SCHEDULED` or `QUEUE` for trigger runs.
    pub method: http::Method,
    /// The request's path; the cron or the queue for trigger runs.
    pub path: String,
    pub client: Option<std::net::SocketAddr>,
    /// The status sent; `None` when no response was sent.
    pub status: Option<u16>,
    /// Why the host answered (or cut the guest off) instead of the guest.
    pub failure: Option<Failure>,
    /// The limit that ended the run, if one did.
    pub limit: Option<Limit>,
    /// Thread CPU time spent running the guest (and host code on its
    /// behalf), instantiation and the instance's drop included.
    pub cpu: Duration,
    pub wall: Duration,
    /// Time spent making the instance; zero for a reused one.
    pub instantiate: Duration,
    /// Time spent dropping the store and instance after the handler
    /// returned (off the response's path); zero for a kept instance.
    pub drop: Duration,
    /// Fuel the guest consumed (0 when fuel is off).
    pub fuel: u64,
    /// Outbound fetches, service calls and binding calls made.
    pub subrequests: u32,
    /// What the guest did wrong, when the run failed in the guest.
    pub error: Option<RunError>,
}

/// Why a run failed in the guest: the cause (a trap's message, with the
/// Rust panic that led to it), and the guest's stack for a trap.
#[derive(Clone, Debug)]
pub struct RunError {
    pub cause: String,
    pub backtrace: Option<Backtrace>,
}

/// Hears of every finished run of a worker (see [`Outcome`]), on the thread
/// that finished it: keep it quick. The server's metrics and `isola tail`
/// are fed this way.
pub trait Observer: Send + Sync {
    fn finished(&self, outcome: &Outcome);
}

/// A run's [`Outcome`], which arrives once the run is done: after the
/// response body has been read (or dropped) and waitUntil work has ended.
pub struct PendingOutcome(tokio::sync::oneshot::Receiver<Outcome>);

impl Future for PendingOutcome {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|sent| sent.expect("a run's report always sends its outcome"))
    }
}

/// Shared by the request path and the guest task; whichever lets go last
/// ends the run: it makes the [`Outcome`] and tells it.
pub(crate) struct Report {
    pub worker: Arc<str>,
    pub request_id: RequestId,
    pub method: http::Method,
    pub path: String,
    pub client: Option<std::net::SocketAddr>,
    pub started: Instant,
    /// Thread CPU time spent running the guest, in nanoseconds.
    pub cpu_ns: Arc<AtomicU64>,
    /// Time spent making the instance (store set up excluded), in
    /// nanoseconds; 0 when no instance was made.
    pub instantiate_ns: AtomicU64,
    /// Time spent dropping the store (and with it the instance), in
    /// nanoseconds; 0 when the instance was kept for another request.
    pub drop_ns: AtomicU64,
    pub subrequests: Arc<AtomicU32>,
    /// A binding call got a `backend` error (see [`Failure::Backend`]).
    pub backend_failed: Arc<std::sync::atomic::AtomicBool>,
    pub outcome: Mutex<Settled>,
    observer: Option<Arc<dyn Observer>>,
    pending: Mutex<Option<tokio::sync::oneshot::Sender<Outcome>>>,
}

/// What is settled as the run goes.
#[derive(Default)]
pub(crate) struct Settled {
    pub status: Option<u16>,
    pub fuel_used: u64,
    pub failure: Option<Failure>,
    pub error: Option<RunError>,
}

impl Report {
    /// A run starting now; nothing spent yet.
    pub fn new(
        worker: Arc<str>,
        request_id: RequestId,
        method: http::Method,
        path: String,
        client: Option<std::net::SocketAddr>,
        observer: Option<Arc<dyn Observer>>,
    ) -> Arc<Report> {
        Arc::new(Report {
            worker,
            request_id,
            method,
            path,
            client,
            started: Instant::now(),
            cpu_ns: Arc::default(),
            instantiate_ns: AtomicU64::new(0),
            drop_ns: AtomicU64::new(0),
            subrequests: Arc::default(),
            backend_failed: Arc::default(),
            outcome: Mutex::new(Settled::default()),
            observer,
            pending: Mutex::new(None),
        })
    }

    /// The outcome of this run, once it is done.
    pub fn pending(&self) -> PendingOutcome {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        *self.pending.lock().expect("report lock") = Some(sender);
        PendingOutcome(receiver)
    }

    pub fn cpu_ms(&self) -> f64 {
        self.cpu_ns.load(Ordering::Relaxed) as f64 / 1e6
    }

    pub fn wall_ms(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * 1e3
    }

    pub fn set_status(&self, status: u16) {
        self.outcome.lock().expect("report lock").status = Some(status);
    }

    /// The run failed with `failure` (the host answered for the guest, or
    /// cut it off after it answered).
    pub fn set_failure(&self, failure: Failure) {
        self.outcome.lock().expect("report lock").failure = Some(failure);
    }

    /// What the guest did wrong, for the outcome (`isola tail` shows it).
    pub fn set_error(&self, error: &GuestError) {
        self.outcome.lock().expect("report lock").error = Some(RunError {
            cause: error.cause.clone(),
            backtrace: error.backtrace.clone(),
        });
    }
}

/// Milliseconds to the microsecond, as a number: the log shows `0.057`.
fn millis(duration: Duration) -> f64 {
    (duration.as_nanos() as f64 / 1e3).round() / 1e3
}

/// A client address as the log shows it: `-` when unknown.
struct Client(Option<std::net::SocketAddr>);

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("-"),
        }
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        let settled = std::mem::take(self.outcome.get_mut().expect("report lock"));
        let nanos = |n: &AtomicU64| Duration::from_nanos(n.load(Ordering::Relaxed));
        let outcome = Outcome {
            worker: self.worker.clone(),
            request_id: self.request_id.clone(),
            method: std::mem::take(&mut self.method),
            path: std::mem::take(&mut self.path),
            client: self.client,
            status: settled.status,
            failure: settled.failure,
            limit: settled.failure.and_then(Failure::limit),
            cpu: nanos(&self.cpu_ns),
            wall: self.started.elapsed(),
            instantiate: nanos(&self.instantiate_ns),
            drop: nanos(&self.drop_ns),
            fuel: settled.fuel_used,
            subrequests: self.subrequests.load(Ordering::Relaxed),
            error: settled.error,
        };
        tracing::info!(
            target: "isola::access",
            request_id = %outcome.request_id,
            worker = %outcome.worker,
            client = %Client(outcome.client),
            method = %outcome.method,
            path = %outcome.path,
            status = outcome.status.unwrap_or(0),
            cpu_ms = millis(outcome.cpu),
            wall_ms = millis(outcome.wall),
            instantiate_ms = millis(outcome.instantiate),
            fuel = outcome.fuel,
            subrequests = outcome.subrequests,
            limit = %outcome.limit.map_or("none", Limit::as_str),
            "request"
        );
        if let Some(observer) = &self.observer {
            observer.finished(&outcome);
        }
        if let Some(sender) = self.pending.get_mut().expect("report lock").take() {
            let _ = sender.send(outcome);
        }
    }
}

/// Adds the thread CPU time of every poll of the guest to the report: time
/// spent awaiting I/O is not CPU time, time running wasm (or host code on
/// its behalf) is.
///
/// Fuel is the CPU limit for wasm code; this is the backstop for guests that
/// spend their CPU inside host calls, which burn no fuel. It is checked
/// whenever the guest yields (fuel yields come about every millisecond of
/// wasm execution).
///
/// The thread CPU clock is a system call (with the wall clock, ~4% of a
/// hello request's server CPU), so it is read before each poll and after
/// it only when the poll took [`SHORT_POLL`] or more of wall time. A
/// shorter poll is charged its wall time, overcharged at most by interrupts
/// or a short blocking wait inside it: a thread that loses the CPU is away
/// for a scheduler slice, far longer than that. Counting every poll by its
/// wall time was tried and dropped: a long poll on a busy machine, such as
/// a first poll that streams an upload into a binding, was charged for the
/// time its thread waited to run, and an e2e upload hit `cpu-limit`.
pub(crate) struct CpuTimed<F> {
    inner: Option<Pin<Box<F>>>,
    /// The run's CPU time so far, in nanoseconds.
    cpu_ns: Arc<AtomicU64>,
    limit_ns: u64,
}

impl<F> CpuTimed<F> {
    pub fn new(inner: F, cpu_ns: Arc<AtomicU64>, limit: std::time::Duration) -> Self {
        CpuTimed {
            inner: Some(Box::pin(inner)),
            cpu_ns,
            limit_ns: u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX),
        }
    }
}

impl<T, F: Future<Output = Result<T, GuestError>>> Future for CpuTimed<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let Some(inner) = self.inner.as_mut() else {
            // Already cut off at the limit and reported: nothing more comes.
            return Poll::Pending;
        };
        let before = thread_cpu_ns();
        let started = Instant::now();
        let result = inner.as_mut().poll(cx);
        let wall = started.elapsed();
        let spent = if wall < SHORT_POLL {
            wall.as_nanos() as u64
        } else {
            thread_cpu_ns().saturating_sub(before)
        };
        let total = self.cpu_ns.fetch_add(spent, Ordering::Relaxed) + spent;
        if result.is_pending() && total > self.limit_ns {
            // Dropping the guest drops its store and instance.
            self.inner = None;
            return Poll::Ready(Err(GuestError::message(
                Failure::CpuLimit,
                format!(
                    "CPU time limit of {} ms exceeded (measured {:.1} ms, more than its fuel shows: time in host calls or in the kernel)",
                    self.limit_ns / 1_000_000,
                    total as f64 / 1e6
                ),
            )));
        }
        result
    }
}

/// Run `guest` under the wall-clock limit (which also bounds host-side
/// waits) and the CPU-time backstop, accounting its CPU time in `cpu_ns`.
///
/// `guest` is boxed here, before the returned future is spawned: a task
/// holding it unboxed would be memcpy'd whole when spawned and when it
/// stores its output (~1.5% of a hello request's server CPU).
pub(crate) fn within_limits<T>(
    guest: impl Future<Output = Result<T, GuestError>>,
    cpu_ns: Arc<AtomicU64>,
    wall: std::time::Duration,
    cpu_limit: std::time::Duration,
) -> impl Future<Output = Result<T, GuestError>> {
    let limited = tokio::time::timeout(wall, CpuTimed::new(guest, cpu_ns, cpu_limit));
    async move {
        match limited.await {
            Ok(result) => result,
            Err(_) => Err(GuestError::message(
                Failure::WallLimit,
                format!("wall-clock limit of {} ms reached", wall.as_millis()),
            )),
        }
    }
}

/// A run's store that writes the fuel it consumed to the run's report
/// however the run ends. The CPU backstop and the wall limit end a run by
/// dropping its guest future, store and all, mid-call: without this, such a
/// run would report 0 fuel.
pub(crate) struct Metered {
    store: Option<wasmtime::Store<crate::state::HostState>>,
    granted: u64,
    report: Arc<Report>,
}

impl Metered {
    /// `store`, armed with `granted` fuel, running for `report`.
    pub fn new(
        store: wasmtime::Store<crate::state::HostState>,
        granted: u64,
        report: Arc<Report>,
    ) -> Self {
        Metered {
            store: Some(store),
            granted,
            report,
        }
    }

    /// Record the fuel used and give the store back (to keep the instance).
    pub fn into_inner(mut self) -> wasmtime::Store<crate::state::HostState> {
        self.record();
        self.store
            .take()
            .expect("a metered store holds its store until dropped")
    }

    fn record(&self) {
        if let Some(store) = &self.store {
            let used = self.granted.saturating_sub(store.get_fuel().unwrap_or(0));
            self.report.outcome.lock().expect("report lock").fuel_used = used;
        }
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        self.record();
    }
}

impl std::ops::Deref for Metered {
    type Target = wasmtime::Store<crate::state::HostState>;
    fn deref(&self) -> &Self::Target {
        self.store
            .as_ref()
            .expect("a metered store holds its store until dropped")
    }
}

impl std::ops::DerefMut for Metered {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.store
            .as_mut()
            .expect("a metered store holds its store until dropped")
    }
}

impl wasmtime::AsContext for Metered {
    type Data = crate::state::HostState;
    fn as_context(&self) -> wasmtime::StoreContext<'_, Self::Data> {
        (**self).as_context()
    }
}

impl wasmtime::AsContextMut for Metered {
    fn as_context_mut(&mut self) -> wasmtime::StoreContextMut<'_, Self::Data> {
        (**self).as_context_mut()
    }
}

/// Polls shorter than this are charged their wall time; see [`CpuTimed`].
const SHORT_POLL: std::time::Duration = std::time::Duration::from_micros(100);

fn thread_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    (t.tv_sec as u64).saturating_mul(1_000_000_000) + t.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn counter() -> Arc<AtomicU64> {
        Arc::default()
    }

    /// A guest that spends `polls` polls blocked (no CPU) for `each`.
    async fn blocked(polls: u32, each: Duration) -> Result<(), GuestError> {
        for _ in 0..polls {
            std::thread::sleep(each);
            tokio::task::yield_now().await;
        }
        Ok(())
    }

    /// A guest that burns CPU in "host calls" (no fuel) for `each` per poll.
    async fn spinning(each: Duration) -> Result<(), GuestError> {
        loop {
            let started = Instant::now();
            while started.elapsed() < each {
                std::hint::spin_loop();
            }
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn time_blocked_inside_a_poll_is_not_cpu_time() {
        // 10 × 5 ms blocked: wall-time counting would see 50 ms and cut it
        // off at the 20 ms limit; the thread CPU clock sees almost nothing.
        let cpu_ns = counter();
        let timed = CpuTimed::new(
            blocked(10, Duration::from_millis(5)),
            cpu_ns.clone(),
            Duration::from_millis(20),
        );
        assert!(timed.await.is_ok());
        let counted = Duration::from_nanos(cpu_ns.load(Ordering::Relaxed));
        assert!(counted < Duration::from_millis(5), "{counted:?}");
    }

    /// A guest spinning `each` per poll is cut off at a 20 ms CPU limit,
    /// with more than 20 ms counted.
    async fn assert_spinning_is_cut_off(each: Duration) {
        let cpu_ns = counter();
        let timed = CpuTimed::new(spinning(each), cpu_ns.clone(), Duration::from_millis(20));
        let error = timed.await.expect_err("cut off");
        assert_eq!(error.failure, Failure::CpuLimit);
        let counted = Duration::from_nanos(cpu_ns.load(Ordering::Relaxed));
        assert!(counted > Duration::from_millis(20), "{counted:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn cpu_burnt_in_host_calls_is_cut_off_at_the_limit() {
        assert_spinning_is_cut_off(Duration::from_millis(2)).await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn short_polls_are_counted_too() {
        // Polls well under SHORT_POLL are charged their wall time: many of
        // them still add up to the limit.
        assert_spinning_is_cut_off(Duration::from_micros(20)).await;
    }
}
