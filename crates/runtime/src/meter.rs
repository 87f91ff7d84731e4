//! The guest's CPU time, as charged to `cpu_ms`: time executing its wasm,
//! and time in the host calls it makes synchronously on its behalf. Not
//! charged: time waiting (between polls of the guest's task), the host's
//! own work for the guest's I/O (the HTTP client and TLS run in tasks of
//! their own; the `wasi:io` stream and poll calls, which move body bytes
//! between host streams and wait, are marked [`uncharged`](CpuMeter::uncharged)
//! here, as are the binding calls into backends), and making or dropping
//! the instance (reported apart, as `instantiate` and `drop`).
//!
//! wasmtime's call hook tells every crossing between wasm and the host;
//! the meter reads the monotonic clock (vDSO, no system call) on the
//! crossings where charging starts or stops, and once on entering a host
//! call (so that an uncharged call is uncharged from its start, its
//! arguments' copy included). [`crate::report::CpuTimed`] opens and closes
//! the meter around each poll and takes what it charged.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};

use wasmtime::CallHook;
use wasmtime::component::{HasData, Linker, ResourceTable};

use crate::state::RunState;

/// One store's meter, shared by its call hook and the run's `CpuTimed`.
/// Only the thread polling the guest touches it, one at a time (the task's
/// hand-over between threads orders those), so relaxed loads and stores do.
#[derive(Default)]
pub(crate) struct CpuMeter {
    /// How many calls deep the store is (wasm and host calls nest: a host
    /// call lowering a list calls the guest's `cabi_realloc`).
    depth: AtomicU32,
    /// Bit `i` set: level `i` is a host call (else wasm).
    hosts: AtomicU64,
    /// Bit `i` set: the host call at level `i` is uncharged.
    free: AtomicU64,
    /// Whether the guest's task is being polled: only then is time charged.
    polling: AtomicBool,
    /// Monotonic nanoseconds at which the current charged stretch began.
    since: AtomicU64,
    /// Monotonic nanoseconds at which the innermost host call was entered.
    host_at: AtomicU64,
    /// Charged nanoseconds not yet taken by [`CpuMeter::poll_end`].
    charged: AtomicU64,
}

impl CpuMeter {
    /// Whether time is being charged now.
    fn charging(&self) -> bool {
        let depth = self.depth.load(Relaxed);
        if depth == 0 || !self.polling.load(Relaxed) {
            return false;
        }
        let bit = 1u64 << (depth - 1).min(63);
        self.hosts.load(Relaxed) & bit == 0 || self.free.load(Relaxed) & bit == 0
    }

    fn charge(&self, nanos: u64) {
        self.charged
            .store(self.charged.load(Relaxed) + nanos, Relaxed);
    }

    /// The store's call hook: a crossing between wasm and the host.
    pub fn hook(&self, kind: CallHook) {
        let before = self.charging();
        let depth = self.depth.load(Relaxed);
        match kind {
            CallHook::CallingWasm | CallHook::CallingHost => {
                let bit = 1u64 << depth.min(63);
                let hosts = self.hosts.load(Relaxed);
                if matches!(kind, CallHook::CallingHost) {
                    self.hosts.store(hosts | bit, Relaxed);
                    if before {
                        self.host_at.store(now(), Relaxed);
                    }
                } else {
                    self.hosts.store(hosts & !bit, Relaxed);
                }
                self.free.store(self.free.load(Relaxed) & !bit, Relaxed);
                self.depth.store(depth + 1, Relaxed);
            }
            CallHook::ReturningFromWasm | CallHook::ReturningFromHost => {
                self.depth.store(depth.saturating_sub(1), Relaxed);
            }
        }
        match (before, self.charging()) {
            (false, true) => self.since.store(now(), Relaxed),
            (true, false) => self.charge(now().saturating_sub(self.since.load(Relaxed))),
            _ => {}
        }
    }

    /// The host call being made is the host's work, not the guest's: its
    /// time, from its start to its return, is not charged. Called by the
    /// linker's getters of uncharged interfaces, which every call of theirs
    /// goes through first.
    pub fn uncharged(&self) {
        let depth = self.depth.load(Relaxed);
        if depth == 0 {
            return;
        }
        let bit = 1u64 << (depth - 1).min(63);
        if self.hosts.load(Relaxed) & bit == 0 {
            return;
        }
        if self.charging() {
            // Charged up to the call's start; a stretch that began after it
            // (a new poll within the call) is the call's own time.
            let since = self.since.load(Relaxed);
            self.charge(self.host_at.load(Relaxed).saturating_sub(since));
        }
        self.free.store(self.free.load(Relaxed) | bit, Relaxed);
    }

    /// A poll of the guest's task begins at `at` (monotonic nanoseconds).
    pub fn poll_start(&self, at: u64) {
        self.polling.store(true, Relaxed);
        if self.charging() {
            self.since.store(at, Relaxed);
        }
    }

    /// The poll ends at `at`: the nanoseconds charged since the last poll's
    /// end. Time until the next poll (waiting) is not charged.
    pub fn poll_end(&self, at: u64) -> u64 {
        if self.charging() {
            self.charge(at.saturating_sub(self.since.load(Relaxed)));
        }
        self.polling.store(false, Relaxed);
        self.charged.swap(0, Relaxed)
    }
}

/// Monotonic nanoseconds (the vDSO's clock: no system call).
pub(crate) fn now() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64).saturating_mul(1_000_000_000) + t.tv_nsec as u64
}

/// Store data with a [`RunState`] (a worker's and a plugin's).
pub(crate) trait HasRunState {
    fn run_state(&mut self) -> &mut RunState;
}

/// The table, for a call that is not charged.
fn uncharged_table<T: HasRunState>(data: &mut T) -> &mut ResourceTable {
    let run = data.run_state();
    run.meter.uncharged();
    &mut run.table
}

struct UnchargedIo;

impl HasData for UnchargedIo {
    type Data<'a> = &'a mut ResourceTable;
}

/// Replace `wasi:io/poll` and `wasi:io/streams` in `linker` (which has
/// them from `wasmtime_wasi`) by the same functions through a getter that
/// marks each call uncharged: they wait, or move body bytes between the
/// guest and host streams (reading and writing request, response and
/// fetch bodies, splicing one into another), which is the host's work.
pub(crate) fn add_uncharged_io<T: HasRunState + Send + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let added = wasmtime_wasi::p2::bindings::io::poll::add_to_linker::<T, UnchargedIo>(
        linker,
        uncharged_table,
    )
    .and_then(|()| {
        wasmtime_wasi::p2::bindings::io::streams::add_to_linker::<T, UnchargedIo>(
            linker,
            uncharged_table,
        )
    });
    linker.allow_shadowing(false);
    added
}
