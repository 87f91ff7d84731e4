//! The guest's CPU time, as charged to `cpu_ms`: its wasm execution, and
//! time in the host calls it makes synchronously on its behalf. Not
//! charged: time waiting (between polls of the guest's task), the host's
//! own work for the guest's I/O (the HTTP client and TLS run in tasks of
//! their own; the `wasi:io` stream and poll calls, which move body bytes
//! between host streams and wait, are marked [`uncharged`](CpuMeter::uncharged)
//! here, as are the binding calls into backends), and making or dropping
//! the instance (reported apart, as `instantiate` and `drop`).
//!
//! wasmtime's call hook tells every crossing between wasm and the host;
//! the meter reads the monotonic clock (vDSO, no system call) on the
//! crossings that start, stop or switch what is charged (wasm or a host
//! call), and [`crate::report::CpuTimed`] opens and closes it around each
//! poll and takes what it charged.
//!
//! Wasm's clocked time is capped by its fuel: a poll's wasm is charged at
//! most [`FUEL_TIME_SLACK`] times the time its fuel stands for at the
//! worker's `fuel_per_ms`. The clock also charges a guest for what other
//! work on the machine does to it: one that wakes after a long wait finds
//! its memory evicted from the CPU caches by whatever ran meanwhile, and on
//! a 2-core VM that refill took ~100 µs per wake for ~26k fuel of work
//! (3 µs at the calibration's rate), so 100 fetches to an origin 35 ms away
//! cost 10 ms by the clock alone. The cap bounds what a wake can cost
//! whatever the neighbours do, while ordinary code, which runs within a few
//! times the calibration's rate, is charged its measured time.

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
    /// Nanoseconds charged to host calls, not yet taken by
    /// [`CpuMeter::poll_end`].
    host_ns: AtomicU64,
    /// Nanoseconds of wasm execution, not yet taken.
    wasm_ns: AtomicU64,
    /// Fuel per millisecond, to cap wasm's clocked time by its fuel; 0:
    /// fuel is off and wasm is charged its clocked time.
    fuel_per_ms: AtomicU64,
    /// The store's fuel left, as of the last crossing (or arming).
    fuel_left: AtomicU64,
    /// The fuel left when the last poll ended (or the store was armed):
    /// what was burnt since is charged at the next poll's end.
    fuel_mark: AtomicU64,
}

impl CpuMeter {
    /// Cap wasm's clocked time by its fuel burnt, at `fuel_per_ms` (for a
    /// store that consumes fuel).
    pub fn cap_wasm_by_fuel(&self, fuel_per_ms: u64) {
        self.fuel_per_ms.store(fuel_per_ms, Relaxed);
    }

    /// The store was given `fuel` for a new run: none of it is burnt yet.
    pub fn armed(&self, fuel: u64) {
        self.fuel_left.store(fuel, Relaxed);
        self.fuel_mark.store(fuel, Relaxed);
    }

    /// The store's fuel left, read at a crossing.
    pub fn fuel_left(&self, left: u64) {
        self.fuel_left.store(left, Relaxed);
    }

    /// What is being charged now, if anything.
    fn charging(&self) -> Option<Charged> {
        let depth = self.depth.load(Relaxed);
        if depth == 0 || !self.polling.load(Relaxed) {
            return None;
        }
        let bit = 1u64 << (depth - 1).min(63);
        if self.hosts.load(Relaxed) & bit == 0 {
            Some(Charged::Wasm)
        } else if self.free.load(Relaxed) & bit == 0 {
            Some(Charged::Host)
        } else {
            None
        }
    }

    /// Charge the stretch from `since` to `at` to `what`.
    fn charge(&self, what: Charged, at: u64) {
        let counter = match what {
            Charged::Wasm => &self.wasm_ns,
            Charged::Host => &self.host_ns,
        };
        let nanos = at.saturating_sub(self.since.load(Relaxed));
        counter.store(counter.load(Relaxed) + nanos, Relaxed);
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
        let after = self.charging();
        if before.is_none() && after.is_none() {
            return;
        }
        let at = now();
        if let Some(what) = before {
            self.charge(what, at);
        }
        if after.is_some() {
            self.since.store(at, Relaxed);
        }
    }

    /// The host call being made is the host's work, not the guest's: its
    /// time, from its start to its return, is not charged. Called by the
    /// linker's getters of uncharged interfaces, which every call of theirs
    /// goes through first. (The call's entry ended wasm's stretch, so
    /// nothing charged is lost.)
    pub fn uncharged(&self) {
        let depth = self.depth.load(Relaxed);
        if depth == 0 {
            return;
        }
        let bit = 1u64 << (depth - 1).min(63);
        if self.hosts.load(Relaxed) & bit == 0 {
            return;
        }
        self.free.store(self.free.load(Relaxed) | bit, Relaxed);
    }

    /// A poll of the guest's task begins at `at` (monotonic nanoseconds).
    pub fn poll_start(&self, at: u64) {
        self.polling.store(true, Relaxed);
        if self.charging().is_some() {
            self.since.store(at, Relaxed);
        }
    }

    /// The poll ends at `at`: the nanoseconds charged since the last poll's
    /// end (host calls' time, and wasm's capped by its fuel). Time until
    /// the next poll (waiting) is not charged.
    pub fn poll_end(&self, at: u64) -> u64 {
        if let Some(what) = self.charging() {
            self.charge(what, at);
        }
        self.polling.store(false, Relaxed);
        let left = self.fuel_left.load(Relaxed);
        let burnt = self.fuel_mark.swap(left, Relaxed).saturating_sub(left);
        let wasm_ns = self.wasm_ns.swap(0, Relaxed);
        let wasm_ns = match self.fuel_per_ms.load(Relaxed) {
            0 => wasm_ns,
            per_ms => {
                let fuel_ns = u128::from(burnt) * 1_000_000 / u128::from(per_ms);
                let cap = u64::try_from(fuel_ns * u128::from(FUEL_TIME_SLACK)).unwrap_or(u64::MAX);
                wasm_ns.min(cap)
            }
        };
        self.host_ns.swap(0, Relaxed).saturating_add(wasm_ns)
    }
}

/// Wasm is charged at most this many times the time its fuel stands for.
/// The calibration's compute loop sets `fuel_per_ms`; the slowest code per
/// unit of fuel measured here, an empty loop (one unit per iteration, each
/// waiting on the last), runs 4.5 times slower than it (1.9 M fuel per ms,
/// release build, 2-core VM), so ordinary code is charged its clocked time.
pub(crate) const FUEL_TIME_SLACK: u64 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Charged {
    Wasm,
    Host,
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
