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
use crate::meter::{self, CpuMeter};
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
    /// The guest's CPU time, as charged to `cpu_ms`: time executing its
    /// wasm and in the host calls it made synchronously, not time awaiting
    /// I/O nor the host's own I/O work (moving body bytes, the HTTP client,
    /// backends), nor making or dropping the instance (see
    /// [`instantiate`](Self::instantiate) and [`drop`](Self::drop)).
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
    /// The guest's charged CPU time (see [`Outcome::cpu`]), in nanoseconds.
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

/// Charges the guest's CPU time to the report, poll by poll: what its
/// store's [`CpuMeter`] charged during the poll (the fuel its wasm burnt,
/// as time, and the time of the host calls it made synchronously, not the
/// host's I/O work; see [`crate::meter`]). Time between polls, awaiting
/// I/O, is never charged.
///
/// Running out of fuel stops wasm code at the limit by itself; this is the
/// limit on the sum, for guests that spend their CPU inside host calls,
/// which burn no fuel. It is checked whenever the guest yields (fuel yields
/// come about every millisecond of wasm execution). It cannot be reached by
/// moving bytes or awaiting I/O, however much: those calls are not charged
/// at all.
///
/// The meter times host calls by the wall clock, which also runs while the
/// thread waits to be scheduled: a busy machine would charge a guest for
/// other threads' time. A poll of [`SHORT_POLL`] or more of wall time is
/// therefore charged at most its thread CPU time for the clock's part (a
/// system call, so read only for those: a shorter poll cannot have lost the
/// CPU for a scheduler slice, which is far longer). Each poll reads the
/// thread CPU clock before it runs, as before the meter was added.
pub(crate) struct CpuTimed<F> {
    inner: Option<Pin<Box<F>>>,
    meter: Arc<CpuMeter>,
    /// The run's charged CPU time so far, in nanoseconds.
    cpu_ns: Arc<AtomicU64>,
    limit_ns: u64,
}

impl<F> CpuTimed<F> {
    pub fn new(
        inner: F,
        meter: Arc<CpuMeter>,
        cpu_ns: Arc<AtomicU64>,
        limit: std::time::Duration,
    ) -> Self {
        CpuTimed {
            inner: Some(Box::pin(inner)),
            meter,
            cpu_ns,
            limit_ns: u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX),
        }
    }
}

impl<T, F: Future<Output = Result<T, GuestError>>> Future for CpuTimed<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            // Already cut off at the limit and reported: nothing more comes.
            return Poll::Pending;
        };
        let thread_before = thread_cpu_ns();
        let started = meter::now();
        this.meter.poll_start(started);
        let result = inner.as_mut().poll(cx);
        let ended = meter::now();
        let mut spent = this.meter.poll_end(ended);
        if ended.saturating_sub(started) >= SHORT_POLL_NS {
            spent = spent.min(thread_cpu_ns().saturating_sub(thread_before));
        }
        let total = this.cpu_ns.fetch_add(spent, Ordering::Relaxed) + spent;
        if result.is_pending() && total > this.limit_ns {
            // Dropping the guest drops its store and instance.
            this.inner = None;
            return Poll::Ready(Err(GuestError::message(
                Failure::CpuLimit,
                format!(
                    "CPU time limit of {} ms exceeded (charged {:.1} ms, more than its fuel shows: time in host calls)",
                    this.limit_ns / 1_000_000,
                    total as f64 / 1e6
                ),
            )));
        }
        result
    }
}

/// Run `guest` under the wall-clock limit (which also bounds host-side
/// waits) and the CPU-time backstop, charging the CPU time `meter` (its
/// store's) measures to `cpu_ns`.
///
/// `guest` is boxed here, before the returned future is spawned: a task
/// holding it unboxed would be memcpy'd whole when spawned and when it
/// stores its output (~1.5% of a hello request's server CPU).
pub(crate) fn within_limits<T>(
    guest: impl Future<Output = Result<T, GuestError>>,
    meter: Arc<CpuMeter>,
    cpu_ns: Arc<AtomicU64>,
    wall: std::time::Duration,
    cpu_limit: std::time::Duration,
) -> impl Future<Output = Result<T, GuestError>> {
    let limited = tokio::time::timeout(wall, CpuTimed::new(guest, meter, cpu_ns, cpu_limit));
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

/// Polls this long or longer are charged at most their thread CPU time;
/// see [`CpuTimed`].
const SHORT_POLL: std::time::Duration = std::time::Duration::from_micros(100);
const SHORT_POLL_NS: u64 = SHORT_POLL.as_nanos() as u64;

fn thread_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    (t.tv_sec as u64).saturating_mul(1_000_000_000) + t.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use wasmtime::CallHook;

    /// Spin the thread for `each`.
    fn spin(each: Duration) {
        let started = Instant::now();
        while started.elapsed() < each {
            std::hint::spin_loop();
        }
    }

    /// A guest in wasm that, `polls` times, blocks its thread for `each`
    /// (no CPU) and then yields from a host call, as a fuel yield does.
    async fn blocked(meter: Arc<CpuMeter>, polls: u32, each: Duration) -> Result<(), GuestError> {
        meter.hook(CallHook::CallingWasm);
        for _ in 0..polls {
            std::thread::sleep(each);
            meter.hook(CallHook::CallingHost);
            tokio::task::yield_now().await;
            meter.hook(CallHook::ReturningFromHost);
        }
        meter.hook(CallHook::ReturningFromWasm);
        Ok(())
    }

    /// A guest in wasm making `polls` host calls that each burn `each` of
    /// CPU and yield; the calls are `uncharged` or not.
    async fn spinning(
        meter: Arc<CpuMeter>,
        polls: u32,
        each: Duration,
        uncharged: bool,
    ) -> Result<(), GuestError> {
        meter.hook(CallHook::CallingWasm);
        for _ in 0..polls {
            meter.hook(CallHook::CallingHost);
            if uncharged {
                meter.uncharged();
            }
            spin(each);
            tokio::task::yield_now().await;
            meter.hook(CallHook::ReturningFromHost);
        }
        meter.hook(CallHook::ReturningFromWasm);
        Ok(())
    }

    /// Run `guest` (given its meter) under a 20 ms CPU limit: its result
    /// and the time charged.
    async fn timed<F: Future<Output = Result<(), GuestError>>>(
        guest: impl FnOnce(Arc<CpuMeter>) -> F,
    ) -> (Result<(), GuestError>, Duration) {
        let meter = Arc::new(CpuMeter::default());
        let cpu_ns = Arc::new(AtomicU64::new(0));
        let timed = CpuTimed::new(
            guest(meter.clone()),
            meter,
            cpu_ns.clone(),
            Duration::from_millis(20),
        );
        let result = timed.await;
        (result, Duration::from_nanos(cpu_ns.load(Ordering::Relaxed)))
    }

    #[tokio::test(flavor = "current_thread")]
    async fn time_blocked_inside_a_poll_is_not_cpu_time() {
        // 10 × 5 ms blocked "in wasm": the meter's wall clock sees 50 ms,
        // the thread CPU clock almost nothing, and polls that long are
        // charged no more than their thread CPU time.
        let (result, charged) = timed(|meter| blocked(meter, 10, Duration::from_millis(5))).await;
        assert!(result.is_ok());
        assert!(charged < Duration::from_millis(5), "{charged:?}");
    }

    /// A guest spinning `each` per poll in charged host calls is cut off at
    /// the 20 ms CPU limit, with more than 20 ms charged.
    async fn assert_spinning_is_cut_off(each: Duration) {
        let (result, charged) = timed(|meter| spinning(meter, u32::MAX, each, false)).await;
        assert_eq!(result.expect_err("cut off").failure, Failure::CpuLimit);
        assert!(charged > Duration::from_millis(20), "{charged:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn cpu_burnt_in_host_calls_is_cut_off_at_the_limit() {
        assert_spinning_is_cut_off(Duration::from_millis(2)).await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn short_polls_are_counted_too() {
        // Polls well under SHORT_POLL are charged what the meter saw: many
        // of them still add up to the limit.
        assert_spinning_is_cut_off(Duration::from_micros(20)).await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn uncharged_host_calls_are_not_cpu_time() {
        // 50 × 2 ms of CPU in uncharged calls (moving bytes, say): five
        // times the limit burnt, nothing of it charged.
        let (result, charged) =
            timed(|meter| spinning(meter, 50, Duration::from_millis(2), true)).await;
        assert!(result.is_ok());
        assert!(charged < Duration::from_millis(5), "{charged:?}");
    }

    /// One poll of a guest that spends `spent` in wasm burning `fuel` (at
    /// a million per ms): the time charged.
    async fn wasm_poll(spent: Duration, fuel: u64) -> Duration {
        let (result, charged) = timed(|meter| async move {
            meter.cap_wasm_by_fuel(1_000_000);
            meter.armed(50_000_000);
            meter.fuel_left(50_000_000);
            meter.hook(CallHook::CallingWasm);
            spin(spent);
            meter.fuel_left(50_000_000 - fuel);
            meter.hook(CallHook::ReturningFromWasm);
            Ok(())
        })
        .await;
        assert!(result.is_ok());
        charged
    }

    #[tokio::test(flavor = "current_thread")]
    async fn wasm_is_charged_its_time_up_to_five_times_its_fuel() {
        // 2 ms of wasm burning 1 ms worth of fuel: its time (as the thread
        // CPU clock has it, which may be a little less).
        let charged = wasm_poll(Duration::from_millis(2), 1_000_000).await;
        assert!(
            charged >= Duration::from_micros(1500) && charged < Duration::from_millis(4),
            "{charged:?}"
        );
        // 20 ms for the same fuel (a guest whose caches went cold while it
        // waited): five times its fuel's time.
        let charged = wasm_poll(Duration::from_millis(20), 1_000_000).await;
        assert!(
            charged >= Duration::from_millis(5) && charged < Duration::from_millis(6),
            "{charged:?}"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn wasm_and_host_call_time_add_up_to_the_limit() {
        // Each poll spends 1 ms in wasm (burning as much fuel) and 1 ms in
        // a charged host call: cut off at the 20 ms limit after about ten.
        let (result, charged) = timed(|meter| async move {
            meter.cap_wasm_by_fuel(1_000_000);
            let mut left = 1_000_000_000;
            meter.armed(left);
            meter.hook(CallHook::CallingWasm);
            for _ in 0..1000 {
                spin(Duration::from_millis(1));
                left -= 1_000_000;
                meter.fuel_left(left);
                meter.hook(CallHook::CallingHost);
                spin(Duration::from_millis(1));
                tokio::task::yield_now().await;
                meter.hook(CallHook::ReturningFromHost);
            }
            meter.hook(CallHook::ReturningFromWasm);
            Ok(())
        })
        .await;
        assert_eq!(result.expect_err("cut off").failure, Failure::CpuLimit);
        assert!(
            charged > Duration::from_millis(20) && charged < Duration::from_millis(30),
            "{charged:?}"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn waiting_between_polls_is_not_cpu_time() {
        // A charged host call that awaits a timer 10 × 5 ms: the waits are
        // between polls.
        let (result, charged) = timed(|meter| async move {
            meter.hook(CallHook::CallingWasm);
            meter.hook(CallHook::CallingHost);
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            meter.hook(CallHook::ReturningFromHost);
            meter.hook(CallHook::ReturningFromWasm);
            Ok(())
        })
        .await;
        assert!(result.is_ok());
        assert!(charged < Duration::from_millis(5), "{charged:?}");
    }
}
