//! Per-request accounting: CPU time, fuel, subrequests, the limit hit, and
//! the one access-log line written when the request is completely done.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::{Failure, GuestError};

/// Shared by the request path and the guest task; whichever lets go last
/// writes the access line, so it covers work done after the response too.
pub(crate) struct Report {
    pub worker: Arc<str>,
    pub request_id: Arc<str>,
    pub method: http::Method,
    pub path: String,
    pub client: Option<std::net::SocketAddr>,
    pub started: Instant,
    /// Thread CPU time spent running the guest, in nanoseconds.
    pub cpu_ns: AtomicU64,
    /// Time spent making the instance (store set up excluded), in
    /// nanoseconds; 0 when no instance was made.
    pub instantiate_ns: AtomicU64,
    /// Time spent dropping the store (and with it the instance), in
    /// nanoseconds; 0 when the instance was kept for another request.
    pub drop_ns: AtomicU64,
    pub subrequests: Arc<AtomicU32>,
    /// A binding call got a `backend` error (see [`Failure::Backend`]).
    pub backend_failed: Arc<std::sync::atomic::AtomicBool>,
    pub outcome: Mutex<Outcome>,
}

#[derive(Default)]
pub(crate) struct Outcome {
    pub status: Option<u16>,
    pub fuel_used: u64,
    pub limit: Option<&'static str>,
}

impl Report {
    /// A run starting now; nothing spent yet.
    pub fn new(
        worker: Arc<str>,
        request_id: Arc<str>,
        method: http::Method,
        path: String,
        client: Option<std::net::SocketAddr>,
    ) -> Arc<Report> {
        Arc::new(Report {
            worker,
            request_id,
            method,
            path,
            client,
            started: Instant::now(),
            cpu_ns: AtomicU64::new(0),
            instantiate_ns: AtomicU64::new(0),
            drop_ns: AtomicU64::new(0),
            subrequests: Arc::default(),
            backend_failed: Arc::default(),
            outcome: Mutex::new(Outcome::default()),
        })
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
}

/// Milliseconds to the microsecond, as a number: the log shows `0.057`,
/// and the metrics read it without parsing text back.
fn millis(nanos: f64) -> f64 {
    (nanos / 1e3).round() / 1e3
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
        let wall_ns = self.started.elapsed().as_nanos() as f64;
        let outcome = self.outcome.get_mut().expect("report lock");
        tracing::info!(
            target: "isola::access",
            request_id = %self.request_id,
            worker = %self.worker,
            client = %Client(self.client),
            method = %self.method,
            path = %self.path,
            status = outcome.status.unwrap_or(0),
            cpu_ms = millis(self.cpu_ns.load(Ordering::Relaxed) as f64),
            wall_ms = millis(wall_ns),
            instantiate_ms = millis(self.instantiate_ns.load(Ordering::Relaxed) as f64),
            fuel = outcome.fuel_used,
            subrequests = self.subrequests.load(Ordering::Relaxed),
            limit = %outcome.limit.unwrap_or("none"),
            "request"
        );
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
    report: Arc<Report>,
    limit_ns: u64,
}

impl<F> CpuTimed<F> {
    pub fn new(inner: F, report: Arc<Report>, limit: std::time::Duration) -> Self {
        CpuTimed {
            inner: Some(Box::pin(inner)),
            report,
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
        let total = self.report.cpu_ns.fetch_add(spent, Ordering::Relaxed) + spent;
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
/// waits) and the CPU-time backstop, accounting its CPU time in `report`.
///
/// `guest` is boxed here, before the returned future is spawned: a task
/// holding it unboxed would be memcpy'd whole when spawned and when it
/// stores its output (~1.5% of a hello request's server CPU).
pub(crate) fn within_limits<T>(
    guest: impl Future<Output = Result<T, GuestError>>,
    report: Arc<Report>,
    wall: std::time::Duration,
    cpu_limit: std::time::Duration,
) -> impl Future<Output = Result<T, GuestError>> {
    let limited = tokio::time::timeout(wall, CpuTimed::new(guest, report, cpu_limit));
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

    fn report() -> Arc<Report> {
        Report::new("w".into(), "id".into(), http::Method::GET, "/".into(), None)
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
        let report = report();
        let timed = CpuTimed::new(
            blocked(10, Duration::from_millis(5)),
            report.clone(),
            Duration::from_millis(20),
        );
        assert!(timed.await.is_ok());
        let counted = Duration::from_nanos(report.cpu_ns.load(Ordering::Relaxed));
        assert!(counted < Duration::from_millis(5), "{counted:?}");
    }

    /// A guest spinning `each` per poll is cut off at a 20 ms CPU limit,
    /// with more than 20 ms counted.
    async fn assert_spinning_is_cut_off(each: Duration) {
        let report = report();
        let timed = CpuTimed::new(spinning(each), report.clone(), Duration::from_millis(20));
        let error = timed.await.expect_err("cut off");
        assert_eq!(error.failure, Failure::CpuLimit);
        let counted = Duration::from_nanos(report.cpu_ns.load(Ordering::Relaxed));
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

/// What a request cost, read from a response's extensions. CPU time and
/// fuel are final once the guest is done (the body fully read).
#[derive(Clone)]
pub struct RequestStats(pub(crate) Arc<Report>);

impl RequestStats {
    /// Thread CPU time spent running the guest.
    pub fn cpu_time(&self) -> Duration {
        Duration::from_nanos(self.0.cpu_ns.load(Ordering::Relaxed))
    }

    /// Time spent instantiating the component (zero for a reused
    /// instance).
    pub fn instantiate_time(&self) -> Duration {
        Duration::from_nanos(self.0.instantiate_ns.load(Ordering::Relaxed))
    }

    /// Time spent dropping the request's store and instance, after the
    /// handler returned (zero for an instance kept by `instance_reuse`).
    /// It is part of [`cpu_time`](Self::cpu_time), but off the response's
    /// critical path: the guest task drops the store after responding.
    pub fn drop_time(&self) -> Duration {
        Duration::from_nanos(self.0.drop_ns.load(Ordering::Relaxed))
    }

    /// Fuel the guest consumed (0 when fuel is off).
    pub fn fuel_used(&self) -> u64 {
        self.0.outcome.lock().expect("report lock").fuel_used
    }

    /// Outbound fetches and binding calls made.
    pub fn subrequests(&self) -> u32 {
        self.0.subrequests.load(Ordering::Relaxed)
    }
}
