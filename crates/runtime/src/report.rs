//! Per-request accounting: CPU time, fuel, subrequests, the limit hit, and
//! the one access-log line written when the request is completely done.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

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

impl Drop for Report {
    fn drop(&mut self) {
        let (cpu_ms, wall_ms) = (self.cpu_ms(), self.wall_ms());
        let outcome = self.outcome.get_mut().expect("report lock");
        tracing::info!(
            target: "isola::access",
            request_id = %self.request_id,
            worker = %self.worker,
            client = %self.client.map_or_else(|| "-".to_owned(), |c| c.to_string()),
            method = %self.method,
            path = %self.path,
            status = outcome.status.unwrap_or(0),
            cpu_ms = format_args!("{cpu_ms:.3}"),
            wall_ms = format_args!("{wall_ms:.3}"),
            instantiate_ms = format_args!(
                "{:.3}",
                self.instantiate_ns.load(Ordering::Relaxed) as f64 / 1e6
            ),
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
        let result = inner.as_mut().poll(cx);
        let spent = thread_cpu_ns().saturating_sub(before);
        let total = self.report.cpu_ns.fetch_add(spent, Ordering::Relaxed) + spent;
        if result.is_pending() && total > self.limit_ns {
            // Dropping the guest drops its store and instance.
            self.inner = None;
            return Poll::Ready(Err(GuestError::message(
                Failure::CpuLimit,
                format!(
                    "CPU time limit of {} ms exceeded (measured {:.1} ms, much of it in host calls)",
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
pub(crate) async fn within_limits<T>(
    guest: impl Future<Output = Result<T, GuestError>>,
    report: Arc<Report>,
    wall: std::time::Duration,
    cpu_limit: std::time::Duration,
) -> Result<T, GuestError> {
    match tokio::time::timeout(wall, CpuTimed::new(guest, report, cpu_limit)).await {
        Ok(result) => result,
        Err(_) => Err(GuestError::message(
            Failure::WallLimit,
            format!("wall-clock limit of {} ms reached", wall.as_millis()),
        )),
    }
}

fn thread_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    (t.tv_sec as u64).saturating_mul(1_000_000_000) + t.tv_nsec as u64
}
